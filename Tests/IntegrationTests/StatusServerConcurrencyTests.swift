import CacheInvalidator
import Dispatch
import Foundation
import Glibc
import InvalidationCore
import Synchronization
import Testing

/// The status endpoint beside idle sockets, port scanners and slow-loris clients, over real
/// loopback sockets: a Kubernetes probe with a 1 s timeout must never be the one kept waiting.
/// `.serialized`: the 100 ms bounds are about the server, not about other tests of this suite
/// competing for the two cores.
@Suite("HTTP: many clients at once", .serialized)
struct StatusServerConcurrencyTests {
    /// The default head deadline (`StatusServer.Limits`), which these tests measure.
    static let headDeadline = 2.0

    static func start(_ limits: StatusServer.Limits = StatusServer.Limits()) throws -> (StatusServer, Int) {
        let port = TestServers.freePort()
        let server = try StatusServer.start(address: try #require(try ListenAddress.parse("127.0.0.1:\(port)")), statistics: WorkerStatistics(), metrics: WorkerMetrics(version: "test"), limits: limits)
        return (server, port)
    }

    /// One request, timed from connect to the server's close.
    static func timedGet(_ path: String, port: Int) -> (StatusServerTests.Response?, Duration) {
        var response: StatusServerTests.Response?
        let took = ContinuousClock().measure { response = StatusServerTests.get(path, port: port) }
        return (response, took)
    }

    @Test func probesAreAnsweredWithinAHundredMillisecondsBesideAHundredIdleClientsAndASlowLoris() throws {
        let (server, port) = try Self.start()
        defer { server.stop() }
        let opened = ContinuousClock.now
        let idle = (0..<100).compactMap { _ in TestSocket.connect(port: port) }
        defer { idle.forEach { close($0) } }
        #expect(idle.count == 100, "every idle client connects")
        let slow = SlowLoris(port: port)
        #expect(slow != nil, "the slow-loris connects")
        defer { slow?.stop() }
        usleep(500_000)  // the slow-loris has sent a few bytes

        for round in 1...5 {
            for (path, status) in [("/readyz", 503), ("/metrics", 200)] {
                let (response, took) = Self.timedGet(path, port: port)
                #expect(response?.status == status, "\(path), round \(round)")
                #expect(took < .milliseconds(100), "\(path), round \(round), took \(took)")
            }
        }
        #expect(idle.filter { !TestSocket.closedByPeer($0, waitingUpTo: 0) }.count == 100, "the idle clients were all still connected during the probes")
        let loris = try #require(slow)
        #expect(loris.outcome.closedAfter == nil && loris.outcome.sent >= 2, "the slow-loris was still dribbling during the probes: \(loris.outcome)")

        // Then the head deadline closes them all, the slow-loris included though it never stopped sending.
        let lateBy = opened + .milliseconds(Int((Self.headDeadline + 1.5) * 1000))
        let open = idle.filter { !TestSocket.closedByPeer($0, waitingUpTo: max(0, (lateBy - ContinuousClock.now) / .seconds(1))) }
        #expect(open.isEmpty, "\(open.count) idle clients still open \(Self.headDeadline + 1.5) s after they connected")
        let allClosed = (ContinuousClock.now - opened) / .seconds(1)
        #expect(allClosed >= Self.headDeadline - 0.05, "idle clients closed \(allClosed) s after they connected")
        let lorisClosed = try #require(loris.waitUntilClosed(seconds: 3), "the slow-loris is cut off: \(loris.outcome)")
        #expect(lorisClosed >= Self.headDeadline - 0.05 && lorisClosed < Self.headDeadline + 1.5, "slow-loris closed after \(lorisClosed) s: \(loris.outcome)")
        #expect(loris.outcome.received == 0, "an unfinished head gets no answer")
        #expect(StatusServerTests.get("/healthz", port: port)?.status == 200)
    }

    @Test func anIdleClientAndAnUnfinishedHeadAreClosedAtTheHeadDeadline() throws {
        let (server, port) = try Self.start()
        defer { server.stop() }
        let idle = try #require(TestSocket.connect(port: port))
        defer { close(idle) }
        let partial = try #require(TestSocket.connect(port: port))
        defer { close(partial) }
        let connected = ContinuousClock.now
        #expect(TestSocket.send(partial, Array("GET /readyz HTTP/1.1\r\nHost: x".utf8)))
        #expect(!TestSocket.closedByPeer(idle, waitingUpTo: Self.headDeadline - 0.3), "not before the deadline")
        #expect(TestSocket.closedByPeer(idle, waitingUpTo: 1.3), "closed by the server at the deadline")
        #expect(TestSocket.closedByPeer(partial, waitingUpTo: 0.5), "an unfinished head is closed at the same deadline")
        let closedAfter = (ContinuousClock.now - connected) / .seconds(1)
        #expect(closedAfter >= Self.headDeadline - 0.05 && closedAfter < Self.headDeadline + 1.0, "\(closedAfter) s")
    }

    @Test(arguments: [9_000, 1_000_000])
    func anOversizedHeadIsAnswered431AndClosed(size: Int) throws {
        let (server, port) = try Self.start()
        defer { server.stop() }
        let raw = Array("GET /metrics HTTP/1.1\r\nX-Big: ".utf8) + [UInt8](repeating: UInt8(ascii: "a"), count: size) + Array("\r\n\r\n".utf8)
        var response: StatusServerTests.Response?
        let took = ContinuousClock().measure { response = StatusServerTests.request(port: port, raw: raw) }
        // request() reads until the server closes, so it returning means the close came too.
        #expect(response?.status == 431, "the refusal arrives, not a reset, however much more the client sent")
        #expect(response?.body == "request head over 8192 bytes\n")
        #expect(took < .seconds(1), "answered and closed at once, not at a deadline: \(took)")
        #expect(StatusServerTests.get("/healthz", port: port)?.status == 200)
    }

    @Test func whenFullTheOldestIdleConnectionMakesRoomForAProbe() throws {
        let (server, port) = try Self.start(StatusServer.Limits(maximumConnections: 8))
        defer { server.stop() }
        var idle: [Int32] = []
        defer { idle.forEach { close($0) } }
        for _ in 0..<8 {
            idle.append(try #require(TestSocket.connect(port: port)))
            usleep(5_000)  // accepted in this order, so the first is the oldest
        }
        for round in 1...3 {
            let (response, took) = Self.timedGet("/readyz", port: port)
            #expect(response?.status == 503 && response?.body.hasPrefix("not ready") == true, "round \(round): \(String(describing: response))")
            #expect(took < .milliseconds(100), "round \(round) took \(took)")
        }
        // Each probe took the slot of the oldest idle connection; the answered probe left at once.
        #expect(TestSocket.closedByPeer(idle[0], waitingUpTo: 0.5), "the oldest idle client was dropped")
        #expect(!TestSocket.closedByPeer(idle[7], waitingUpTo: 0), "the newest idle client was kept")
    }
}

/// Blocking loopback sockets for the tests above.
enum TestSocket {
    /// A connected socket, or nil within a second (a full accept queue does not hang the test).
    static func connect(port: Int) -> Int32? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        let connected = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard connected == 0 else {
            close(fd)
            return nil
        }
        return fd
    }

    static func send(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } == bytes.count
    }

    /// Whether the server closed (or reset) the connection, waiting for it up to `seconds`.
    /// Bytes the server sends meanwhile are read and dropped.
    static func closedByPeer(_ fd: Int32, waitingUpTo seconds: Double) -> Bool {
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let left = max(0, (deadline - ContinuousClock.now) / .milliseconds(1))
            var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&descriptor, 1, Int32(left)) > 0 else { return false }
            let n = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
            if n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) { return true }
        }
    }
}

/// A client that sends its request head one byte every 200 ms, on a thread of its own, and
/// notes when the server cuts it off.
final class SlowLoris: Sendable {
    struct Outcome: Sendable, CustomStringConvertible {
        var sent = 0
        var received = 0
        /// Seconds from connect to the server's close; nil while connected.
        var closedAfter: Double?
        var description: String { "sent \(sent) bytes, received \(received), closed after \(closedAfter.map { "\($0) s" } ?? "-")" }
    }

    private let fd: Int32
    private let state = Mutex(Outcome())
    private let stopping = Atomic<Bool>(false)
    private let finished = DispatchSemaphore(value: 0)

    init?(port: Int) {
        guard let fd = TestSocket.connect(port: port) else { return nil }
        self.fd = fd
        let thread = Thread { [self] in self.run() }
        thread.start()
    }

    var outcome: Outcome { state.withLock { $0 } }

    /// Seconds from connect to the server's close, once it has closed.
    func waitUntilClosed(seconds: Double) -> Double? {
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while outcome.closedAfter == nil && ContinuousClock.now < deadline { usleep(10_000) }
        return outcome.closedAfter
    }

    func stop() {
        stopping.store(true, ordering: .relaxed)
        finished.wait()
        close(fd)
    }

    private func run() {
        defer { finished.signal() }
        let started = ContinuousClock.now
        // Long enough to take 12 s at this pace: the server must not wait for the end.
        let head = Array("GET /readyz HTTP/1.1\r\nX-Slow: \(String(repeating: "a", count: 30))\r\n\r\n".utf8)
        var buffer = [UInt8](repeating: 0, count: 4096)
        for byte in head where !stopping.load(ordering: .relaxed) {
            guard TestSocket.send(fd, [byte]) else { break }
            state.withLock { $0.sent += 1 }
            var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&descriptor, 1, 200) > 0 else { continue }
            let n = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
            if n > 0 {
                state.withLock { $0.received += n }
            } else if n == 0 || (errno != EAGAIN && errno != EINTR) {
                break
            }
            usleep(200_000)
        }
        guard !stopping.load(ordering: .relaxed) else { return }
        state.withLock { $0.closedAfter = (ContinuousClock.now - started) / .seconds(1) }
    }
}
