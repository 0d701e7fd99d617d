import ArgumentParser
import CMalloc
import CacheInvalidator
import Dispatch
import Foundation
import Glibc
import InvalidationCore
import Logging
import Synchronization

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the worker: LISTEN for committed changes, delete their cache keys, log the lag.",
        discussion: """
            Starts by draining every event the log holds unacknowledged (changes committed while no worker ran), then follows notifications. Reconnects to Postgres and Redis with capped exponential backoff; events wait in the log meanwhile. SIGTERM or SIGINT finishes the batch in flight, acknowledges it and exits 0.

            Every option can also be set by the environment variable shown in brackets; a flag wins over the environment. Durations take a unit: 250us, 100ms, 1.5s, 2m.

            Example:
              DATABASE_URL=postgres://worker:secret@db/app REDIS_URL=redis://cache:6379 cache-invalidator run
            """)

    @OptionGroup var servers: ServerOptions
    @Option(help: ArgumentHelp(.batchSize, valueName: "n"))
    var batchSize: String?
    @Option(help: ArgumentHelp(.slowThreshold, valueName: "duration"))
    var slowThreshold: String?
    @Option(help: ArgumentHelp(.summaryInterval, valueName: "duration"))
    var summaryInterval: String?
    @Option(help: ArgumentHelp(.redisTimeout, valueName: "duration"))
    var redisTimeout: String?
    @Option(help: ArgumentHelp(.redisWaitReplicas, valueName: "n"))
    var redisWaitReplicas: String?
    @Option(help: ArgumentHelp(.reconnectMax, valueName: "duration"))
    var reconnectMax: String?
    @Option(help: ArgumentHelp(.retention, valueName: "duration"))
    var retention: String?
    @Option(help: ArgumentHelp(.redeleteAfter, valueName: "duration"))
    var redeleteAfter: String?
    @Option(help: ArgumentHelp(.failoverReplay, valueName: "duration"))
    var failoverReplay: String?
    @Option(help: ArgumentHelp(.metricsAddress, valueName: "ip:port"))
    var metricsAddress: String?
    @Option(help: ArgumentHelp(.warnBacklog, valueName: "n"))
    var warnBacklog: String?
    @Option(help: ArgumentHelp(.warnAge, valueName: "duration"))
    var warnAge: String?
    @OptionGroup var logging: LoggingOptions

    func run() throws {
        var flags = logging.flags.merging(servers.flags) { $1 }
        flags[.batchSize] = batchSize
        flags[.slowThreshold] = slowThreshold
        flags[.summaryInterval] = summaryInterval
        flags[.redisTimeout] = redisTimeout
        flags[.redisWaitReplicas] = redisWaitReplicas
        flags[.reconnectMax] = reconnectMax
        flags[.retention] = retention
        flags[.redeleteAfter] = redeleteAfter
        flags[.failoverReplay] = failoverReplay
        flags[.metricsAddress] = metricsAddress
        flags[.warnBacklog] = warnBacklog
        flags[.warnAge] = warnAge
        let resolver = SettingsResolver(flags: flags)
        let configuration: WorkerConfiguration
        let logger: Logger
        let listenAddress: ListenAddress?
        do {
            logger = try bootstrapLogging(resolver)
            configuration = try resolver.workerConfiguration()
            listenAddress = try resolver.metricsAddress()
        } catch {
            fail(error)
        }
        let statistics = WorkerStatistics()
        let metrics = WorkerMetrics(version: BuildInfo.version)
        // Before the worker: a port already taken is a configuration error, said at once.
        var statusServer: StatusServer? = nil
        if let listenAddress {
            do {
                statusServer = try StatusServer.start(address: listenAddress, statistics: statistics, metrics: metrics)
                logger.info("serving /metrics, /healthz and /readyz", metadata: ["address": "\(listenAddress)"])
            } catch {
                fail(ConfigurationError(error.description))
            }
        }

        // Signals are handled on a dispatch queue, never in the middle of a libpq call, and are
        // in place before the worker starts so an early SIGTERM is not lost. The first asks for a
        // graceful stop; a second one ends the process at once (the batch in flight is redone by
        // the next start, which is harmless).
        let stopper = Stopper()
        let signalQueue = DispatchQueue(label: "signals")
        var sources: [DispatchSourceSignal] = []
        for signalNumber in [SIGTERM, SIGINT] {
            signal(signalNumber, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: signalQueue)
            let name = signalNumber == SIGTERM ? "SIGTERM" : "SIGINT"
            source.setEventHandler {
                if stopper.signalReceived() > 1 {
                    logger.warning("second signal, exiting without finishing the batch in flight (it will be redone)", metadata: ["signal": "\(name)"])
                    // _exit, not exit: atexit handlers must not run while the worker thread is inside libpq.
                    _exit(128 + signalNumber)
                }
                logger.info("signal received, finishing the batch in flight", metadata: ["signal": "\(name)"])
                stopper.stop()
            }
            source.resume()
            sources.append(source)
        }
        // One malloc arena for every thread. glibc otherwise gives the thread that receives a
        // drain's next batch an arena of its own, whose freed pages the worker's thread cannot
        // reuse: ~1 MB more peak RSS on a 1,000,000-event drain (31.8 against 30.7-31.0 MB,
        // scripts/bench), for no gain with two busy threads. MALLOC_ARENA_MAX still overrides.
        if getenv("MALLOC_ARENA_MAX") == nil { _ = mallopt(M_ARENA_MAX, 1) }
        // free() gives memory back to the system only from the top of the heap; pages freed
        // below a live allocation stay resident, and after a drain they are most of the heap:
        // after 300,000 events and 90 s at 2,000/s, 7.4 MB of heap (RssAnon) without this and
        // 3.5 MB with it, of which malloc held ~0.9 MB live. Every 10 s, one walk of the free lists.
        Thread.detachNewThread {
            while true {
                sleep(10)
                _ = malloc_trim(0)
            }
        }
        let handle = WorkerHandle.start(configuration: configuration, logger: logger, statistics: statistics, metrics: metrics)
        stopper.attach(handle)
        handle.wait()
        statusServer?.stop()
        withExtendedLifetime(sources) {}
    }
}

/// Connects signal handlers to the worker, which may not exist yet when the first signal comes.
final class Stopper: Sendable {
    private struct State {
        var signals = 0
        var stopRequested = false
        var handle: WorkerHandle?
    }
    private let state = Mutex(State())

    func signalReceived() -> Int { state.withLock { $0.signals += 1; return $0.signals } }

    func stop() {
        let handle = state.withLock { $0.stopRequested = true; return $0.handle }
        handle?.stop()
    }

    func attach(_ handle: WorkerHandle) {
        let stopNow = state.withLock { $0.handle = handle; return $0.stopRequested }
        if stopNow { handle.stop() }
    }
}
