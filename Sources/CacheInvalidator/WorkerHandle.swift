import Foundation
import Glibc
import Logging
import Synchronization

/// A running worker: its own thread, a way to stop it, and its statistics.
///
/// The worker thread is a plain OS thread, not a task: libpq and hiredis block, and a blocking
/// call on Swift's cooperative pool (two threads on two cores) would stall everything else.
public final class WorkerHandle: Sendable {
    public let statistics: WorkerStatistics
    private let wake = WakeSignal()
    private let stopRequested = StopFlag()
    private let finished = DispatchSemaphore(value: 0)

    private init(statistics: WorkerStatistics) {
        self.statistics = statistics
    }

    /// Starts the worker thread and returns at once.
    public static func start(configuration: WorkerConfiguration, logger: Logger, statistics: WorkerStatistics = WorkerStatistics(), metrics: WorkerMetrics? = nil) -> WorkerHandle {
        // hiredis writes with write(2): a Redis that closed the socket must give EPIPE, not kill us.
        signal(SIGPIPE, SIG_IGN)
        let handle = WorkerHandle(statistics: statistics)
        let thread = Thread { [handle] in
            let worker = Worker(config: configuration, logger: logger, statistics: handle.statistics, wake: handle.wake, stopRequested: handle.stopRequested, metrics: metrics)
            worker.run()
            handle.finished.signal()
        }
        thread.name = "invalidation-worker"
        thread.stackSize = 1 << 20
        thread.start()
        return handle
    }

    /// Asks the worker to stop after the batch in flight (which it finishes and acknowledges).
    public func stop() {
        stopRequested.set()
        wake.wake()
    }

    /// Blocks until the worker thread has exited.
    public func wait() {
        finished.wait()
        finished.signal()
    }

    /// Waits up to `seconds`; returns whether the worker exited.
    public func wait(seconds: Double) -> Bool {
        guard finished.wait(timeout: .now() + seconds) == .success else { return false }
        finished.signal()
        return true
    }
}
