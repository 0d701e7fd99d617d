import Glibc
import Synchronization

/// A self-pipe that interrupts the worker's `poll`: a signal handler, a test or `stop()`
/// writes a byte and the worker thread wakes at once instead of at its next timeout.
public final class WakeSignal: Sendable {
    let readFD: Int32
    let writeFD: Int32

    public init() {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else {
            fatalError("pipe failed: \(String(cString: strerror(errno))); the process is out of file descriptors")
        }
        for fd in fds {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        readFD = fds[0]
        writeFD = fds[1]
    }

    deinit {
        close(readFD)
        close(writeFD)
    }

    /// Async-signal-safe and non-blocking: a full pipe already means "wake up".
    public func wake() {
        var byte: UInt8 = 1
        _ = write(writeFD, &byte, 1)
    }

    func drain() {
        var buffer = [UInt8](repeating: 0, count: 64)
        while read(readFD, &buffer, buffer.count) > 0 {}
    }
}

/// Waits until one of the descriptors is readable, the wake signal fires, or the timeout passes.
/// Retries on EINTR with the remaining time. Returns the readable descriptors.
func waitReadable(_ descriptors: [Int32], wake: WakeSignal, timeoutNanoseconds: UInt64) -> Set<Int32> {
    var fds = descriptors.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
    fds.append(pollfd(fd: wake.readFD, events: Int16(POLLIN), revents: 0))
    let deadline = monotonicNanoseconds() &+ timeoutNanoseconds
    while true {
        let now = monotonicNanoseconds()
        let remaining = deadline > now ? deadline - now : 0
        var result: Int32
        if remaining > 0 && remaining < 1_000_000 {
            // The polling pace waits fractions of a millisecond, which poll's millisecond timeout
            // cannot express (and ppoll is not exported to Swift): look, sleep, look again.
            result = poll(&fds, nfds_t(fds.count), 0)
            if result == 0 {
                var pause = timespec(tv_sec: 0, tv_nsec: Int(remaining))
                nanosleep(&pause, nil)
                result = poll(&fds, nfds_t(fds.count), 0)
            }
        } else {
            let milliseconds = Int32(min((remaining + 999_999) / 1_000_000, UInt64(Int32.max)))
            result = poll(&fds, nfds_t(fds.count), milliseconds)
        }
        if result < 0 && errno == EINTR { continue }
        var ready: Set<Int32> = []
        if result > 0 {
            for entry in fds where entry.revents != 0 {
                if entry.fd == wake.readFD { wake.drain() } else { ready.insert(entry.fd) }
            }
        }
        return ready
    }
}

/// A stop request visible across threads.
public final class StopFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    public init() {}
    public var isSet: Bool { flag.load(ordering: .acquiring) }
    public func set() { flag.store(true, ordering: .releasing) }
}
