import Glibc
import InvalidationCore
import NIOCore
import NIOPosix
import Synchronization

/// The build's version, for `--version` and `cache_invalidator_build_info`.
public enum BuildInfo {
    public static let version = "0.3.0"
}

/// Whether the worker can do its job, from its statistics alone (no I/O, so a stuck server
/// can never make the probe itself hang).
public struct Readiness: Sendable, Equatable {
    public var ready: Bool
    public var reason: String

    public static func of(_ s: WorkerStatistics.Snapshot) -> Readiness {
        var problems: [String] = []
        if let unfit = s.postgresUnfit { problems.append(unfit) } else if !s.postgresUp { problems.append("postgres unreachable") }
        if !s.redisUp { problems.append("redis unreachable") }
        guard problems.isEmpty else { return Readiness(ready: false, reason: "not ready: " + problems.joined(separator: ", ")) }
        return Readiness(ready: true, reason: s.active ? "ready: active, listening, redis answers" : "ready: standby (another worker is active), postgres and redis answer")
    }
}

/// `GET /metrics`, `/healthz` and `/readyz` over HTTP/1.1, on an event-loop thread of its own
/// (SwiftNIO): the worker blocks in libpq and hiredis on its thread, so a stuck database can
/// stall the worker but never these answers (they read only the statistics).
///
/// Many clients at once: one request per connection (`Connection: close`), each connection with
/// its own deadlines (the head within `Limits.headDeadline`, the answer and close within
/// `Limits.answerDeadline`), heads of at most `HTTPRequestHead.maximumBytes`, and at most
/// `Limits.maximumConnections` open (see `HTTPConnectionTable` for whom it drops when full). Idle
/// sockets, port scanners and slow-loris clients therefore cost a slot each for two seconds,
/// never a probe's answer.
public final class StatusServer: Sendable {
    public let address: ListenAddress
    private let group: MultiThreadedEventLoopGroup
    private let listener: any Channel
    private let stopped = Atomic<Bool>(false)

    /// Per-connection bounds. The defaults suit a scraper and a probe on loopback or a cluster
    /// network; tests shorten them.
    public struct Limits: Sendable {
        /// From accept to the empty line ending the request head; then the connection is closed
        /// unanswered. A probe sends its head in one packet at once.
        public var headDeadline: Duration
        /// From the head to the close: sending the answer, then waiting for the client to close
        /// its end (a client that does not read its answer, or never closes, is cut off here).
        public var answerDeadline: Duration
        /// Open connections at most; see `HTTPConnectionTable` for the policy when full.
        public var maximumConnections: Int

        public init(headDeadline: Duration = .seconds(2), answerDeadline: Duration = .seconds(5), maximumConnections: Int = 256) {
            self.headDeadline = headDeadline
            self.answerDeadline = answerDeadline
            self.maximumConnections = maximumConnections
        }
    }

    public struct StartError: Error, CustomStringConvertible {
        public var description: String
    }

    /// Binds and starts serving; throws, saying why, if the address cannot be used.
    public static func start(address: ListenAddress, statistics: WorkerStatistics, metrics: WorkerMetrics, limits: Limits = Limits()) throws(StartError) -> StatusServer {
        let fd = try bind(address)
        // One thread is plenty: an answer is rendered in well under a millisecond, and nothing
        // here blocks. It is NIO's own thread, not Swift's cooperative pool.
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let connections = StatusConnections(capacity: limits.maximumConnections)
        let route: @Sendable (HTTPRequestHead) -> HTTPResponse = { head in Self.route(head, statistics: statistics, metrics: metrics) }
        let bootstrap = ServerBootstrap(group: group)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    // NIO accepts without SOCK_CLOEXEC: without this, a process spawned meanwhile
                    // (the test fixtures' servers) would hold the socket open after we close it.
                    _ = try channel.pipeline.syncOperations.withUnsafeTransportIfAvailable(of: NIOBSDSocket.Handle.self) { fcntl($0, F_SETFD, FD_CLOEXEC) }
                    let handler = StatusConnectionHandler(admission: connections.admit(channel), connections: connections, limits: limits, route: route)
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
        do {
            // Our own socket (close-on-exec, and refused with the reason above), served by NIO.
            let listener = try bootstrap.withBoundSocket(fd).wait()
            return StatusServer(address: address, group: group, listener: listener)
        } catch {
            // Not reached in practice (our listen succeeded); NIO owns the descriptor by now.
            try? group.syncShutdownGracefully()
            throw StartError(description: "cannot serve /metrics on \(address): \(error)")
        }
    }

    /// A listening socket, close-on-exec, bound to `address`.
    private static func bind(_ address: ListenAddress) throws(StartError) -> Int32 {
        let family = address.family == .ipv4 ? AF_INET : AF_INET6
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw StartError(description: "cannot open a socket for \(address): \(String(cString: strerror(errno)))") }
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var result: Int32
        if address.family == .ipv4 {
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = in_port_t(address.port.bigEndian)
            inet_pton(AF_INET, address.ip, &sin.sin_addr)
            result = withUnsafePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        } else {
            var sin6 = sockaddr_in6()
            sin6.sin6_family = sa_family_t(AF_INET6)
            sin6.sin6_port = in_port_t(address.port.bigEndian)
            inet_pton(AF_INET6, address.ip, &sin6.sin6_addr)
            result = withUnsafePointer(to: &sin6) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
        }
        // NIO calls listen again with its own backlog (128); this one makes a taken port fail here.
        if result == 0 { result = listen(fd, 128) }
        guard result == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw StartError(description: "cannot listen on \(address) for /metrics: \(reason); is another cache-invalidator (or exporter) using that port? Choose another with --metrics-address, or turn it off with --metrics-address off")
        }
        return fd
    }

    private init(address: ListenAddress, group: MultiThreadedEventLoopGroup, listener: any Channel) {
        self.address = address
        self.group = group
        self.listener = listener
    }

    /// Stops listening, closes every open connection and ends the event-loop thread; returns once
    /// it has. Idempotent. Must not be called from the server's own event loop.
    public func stop() {
        guard !stopped.exchange(true, ordering: .sequentiallyConsistent) else { return }
        try? listener.close().wait()
        // Closes the connections still open, then ends the thread.
        try? group.syncShutdownGracefully()
    }

    static func route(_ head: HTTPRequestHead, statistics: WorkerStatistics, metrics: WorkerMetrics) -> HTTPResponse {
        switch (head.method, head.path) {
        case ("GET", "/metrics"):
            return HTTPResponse(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", body: metrics.exposition(statistics.snapshot))
        case ("GET", "/healthz"):
            return .text(200, "ok")
        case ("GET", "/readyz"):
            let readiness = Readiness.of(statistics.snapshot)
            return .text(readiness.ready ? 200 : 503, readiness.reason)
        case (_, "/metrics"), (_, "/healthz"), (_, "/readyz"):
            return .text(405, "only GET")
        default:
            return .text(404, "not found; try /metrics, /healthz or /readyz")
        }
    }
}
