import Foundation
import Glibc
import InvalidationCore
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
        if !s.postgresUp { problems.append("postgres unreachable") }
        if !s.redisUp { problems.append("redis unreachable") }
        guard problems.isEmpty else { return Readiness(ready: false, reason: "not ready: " + problems.joined(separator: ", ")) }
        return Readiness(ready: true, reason: s.active ? "ready: active, listening, redis answers" : "ready: standby (another worker is active), postgres and redis answer")
    }
}

/// `GET /metrics`, `/healthz` and `/readyz` over HTTP/1.1, on a thread of its own: the worker
/// blocks in libpq and hiredis on its thread, so a stuck database can stall the worker but never
/// these answers (they read only the statistics).
///
/// Deliberately small: one request per connection (`Connection: close`), heads of at most 8 KiB
/// read within 2 s, one connection at a time. That is all a scraper and a probe need, and it
/// keeps the runtime image free of anything but libpq and hiredis.
public final class StatusServer: Sendable {
    public let address: ListenAddress
    private let listener: Int32
    private let stopped = Atomic<Bool>(false)
    private let finished = DispatchSemaphore(value: 0)
    private let statistics: WorkerStatistics
    private let metrics: WorkerMetrics
    static let readTimeoutSeconds = 2

    public struct StartError: Error, CustomStringConvertible {
        public var description: String
    }

    /// Binds and starts serving; throws, saying why, if the address cannot be used.
    public static func start(address: ListenAddress, statistics: WorkerStatistics, metrics: WorkerMetrics) throws(StartError) -> StatusServer {
        let fd = try bind(address)
        let server = StatusServer(address: address, listener: fd, statistics: statistics, metrics: metrics)
        let thread = Thread { [server] in server.serve() }
        thread.name = "status-http"
        thread.stackSize = 1 << 20
        thread.start()
        return server
    }

    private init(address: ListenAddress, listener: Int32, statistics: WorkerStatistics, metrics: WorkerMetrics) {
        self.address = address
        self.listener = listener
        self.statistics = statistics
        self.metrics = metrics
    }

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
        if result == 0 { result = listen(fd, 64) }
        guard result == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw StartError(description: "cannot listen on \(address) for /metrics: \(reason); is another cache-invalidator (or exporter) using that port? Choose another with --metrics-address, or turn it off with --metrics-address off")
        }
        return fd
    }

    public func stop() {
        guard !stopped.exchange(true, ordering: .sequentiallyConsistent) else { return }
        // Wakes the accept loop's poll; the thread closes the socket on its way out.
        shutdown(listener, Int32(SHUT_RDWR))
        _ = finished.wait(timeout: .now() + 3)
    }

    private func serve() {
        defer { close(listener); finished.signal() }
        while !stopped.load(ordering: .relaxed) {
            var descriptor = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            guard poll(&descriptor, 1, 500) > 0, !stopped.load(ordering: .relaxed) else { continue }
            let client = accept(listener, nil, nil)
            guard client >= 0 else { continue }
            _ = fcntl(client, F_SETFD, FD_CLOEXEC)
            handle(client)
            close(client)
        }
    }

    private func handle(_ client: Int32) {
        var timeout = timeval(tv_sec: Self.readTimeoutSeconds, tv_usec: 0)
        setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var request: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        let deadline = Date().addingTimeInterval(Double(Self.readTimeoutSeconds))
        while true {
            switch HTTPRequestHead.parse(request) {
            case .complete(let head):
                respond(client, route(head))
                return
            case .refused(let status, let reason):
                respond(client, (status, "text/plain", Array((reason + "\n").utf8)))
                return
            case .incomplete:
                guard Date() < deadline else { return }
                let n = recv(client, &buffer, buffer.count, 0)
                guard n > 0 else { return }
                request += buffer[0..<n]
            }
        }
    }

    private func route(_ head: HTTPRequestHead) -> (Int, String, [UInt8]) {
        switch (head.method, head.path) {
        case ("GET", "/metrics"):
            return (200, "text/plain; version=0.0.4; charset=utf-8", metrics.exposition(statistics.snapshot))
        case ("GET", "/healthz"):
            return (200, "text/plain", Array("ok\n".utf8))
        case ("GET", "/readyz"):
            let readiness = Readiness.of(statistics.snapshot)
            return (readiness.ready ? 200 : 503, "text/plain", Array((readiness.reason + "\n").utf8))
        case (_, "/metrics"), (_, "/healthz"), (_, "/readyz"):
            return (405, "text/plain", Array("only GET\n".utf8))
        default:
            return (404, "text/plain", Array("not found; try /metrics, /healthz or /readyz\n".utf8))
        }
    }

    private func respond(_ client: Int32, _ response: (status: Int, type: String, body: [UInt8])) {
        let reasons = [200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 431: "Request Header Fields Too Large",
                       503: "Service Unavailable", 505: "HTTP Version Not Supported"]
        var bytes = Array("HTTP/1.1 \(response.status) \(reasons[response.status] ?? "Error")\r\nContent-Type: \(response.type)\r\nContent-Length: \(response.body.count)\r\nConnection: close\r\n\r\n".utf8)
        bytes += response.body
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { send(client, $0.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return }
            sent += n
        }
    }
}
