import Glibc
import InvalidationCore

/// A connected byte stream to one Redis server (TCP or a Unix socket, optionally TLS over TCP),
/// blocking, with the timeout on every read and write (`SO_RCVTIMEO`, `SO_SNDTIMEO`): a stalled
/// server fails the call instead of freezing the worker. Owns its descriptor.
final class RedisTransport {
    private let descriptor: Int32
    private var tls: TLSSession?
    let address: RedisAddress

    private init(descriptor: Int32, address: RedisAddress) {
        self.descriptor = descriptor
        self.address = address
    }

    deinit {
        tls = nil  // SSL_free before the descriptor goes
        close(descriptor)
    }

    static func connect(_ address: RedisAddress, tls: TLSConfiguration?, timeoutMilliseconds: Int) throws(RedisError) -> RedisTransport {
        let transport: RedisTransport
        switch address {
        case .tcp(let host, let port):
            transport = RedisTransport(descriptor: try connectTCP(host: host, port: port, timeoutMilliseconds: timeoutMilliseconds, address: address), address: address)
            var on: Int32 = 1
            _ = setsockopt(transport.descriptor, Int32(IPPROTO_TCP), TCP_NODELAY, &on, socklen_t(MemoryLayout<Int32>.size))
            _ = setsockopt(transport.descriptor, SOL_SOCKET, SO_KEEPALIVE, &on, socklen_t(MemoryLayout<Int32>.size))
            var idle: Int32 = 15
            _ = setsockopt(transport.descriptor, Int32(IPPROTO_TCP), TCP_KEEPIDLE, &idle, socklen_t(MemoryLayout<Int32>.size))
        case .unix(let path):
            if tls != nil { throw RedisError(code: .connectionFailed, message: "TLS over a Unix socket is not supported", target: address.description) }
            transport = RedisTransport(descriptor: try connectUnix(path: path, timeoutMilliseconds: timeoutMilliseconds, address: address), address: address)
        }
        try transport.setTimeouts(milliseconds: timeoutMilliseconds)
        if let tls, case .tcp(let host, _) = address {
            transport.tls = try TLSSession(descriptor: transport.descriptor, configuration: tls, host: host, target: address.description)
        }
        return transport
    }

    /// Writes every byte, or throws (the connection is then unusable).
    func writeAll(_ bytes: [UInt8]) throws(RedisError) {
        var offset = 0
        while offset < bytes.count {
            let written: Int = bytes.withUnsafeBytes { raw in
                let chunk = UnsafeRawBufferPointer(rebasing: raw[offset...])
                if let tls { return tls.write(chunk) }
                return send(descriptor, chunk.baseAddress, chunk.count, Int32(MSG_NOSIGNAL))
            }
            if written > 0 { offset += written; continue }
            if written < 0 && errno == EINTR && tls == nil { continue }
            throw lost(written == 0 ? "connection closed while writing" : "write: \(tls?.lastError ?? Self.errnoText())")
        }
    }

    /// Reads what is available (at least one byte), or throws on a timeout or a closed connection.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws(RedisError) -> Int {
        while true {
            let count = tls.map { $0.read(buffer) } ?? recv(descriptor, buffer.baseAddress, buffer.count, 0)
            if count > 0 { return count }
            if count == 0 { throw lost("connection closed by the server") }
            if errno == EINTR && tls == nil { continue }
            if errno == EAGAIN || errno == EWOULDBLOCK { throw RedisError(code: .connectionLost, message: "timed out waiting for the server's reply", target: address.description) }
            throw lost("read: \(tls?.lastError ?? Self.errnoText())")
        }
    }

    private func lost(_ message: String) -> RedisError {
        RedisError(code: .connectionLost, message: message, target: address.description)
    }

    private func setTimeouts(milliseconds: Int) throws(RedisError) {
        var tv = timeval(tv_sec: milliseconds / 1000, tv_usec: (milliseconds % 1000) * 1000)
        guard setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size)) == 0,
              setsockopt(descriptor, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size)) == 0 else {
            throw RedisError(code: .connectionFailed, message: "cannot set the socket timeouts: \(Self.errnoText())", target: address.description)
        }
    }

    static func errnoText() -> String { String(cString: strerror(errno)) }

    /// Each address the name resolves to in turn, each connect bounded by the timeout.
    private static func connectTCP(host: String, port: Int, timeoutMilliseconds: Int, address: RedisAddress) throws(RedisError) -> Int32 {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &list)
        guard status == 0, let first = list else {
            throw RedisError(code: .connectionFailed, message: "cannot resolve \(host): \(String(cString: gai_strerror(status)))", target: address.description)
        }
        defer { freeaddrinfo(list) }
        var lastError = "no address"
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let current = entry {
            entry = current.pointee.ai_next
            let fd = socket(current.pointee.ai_family, current.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), current.pointee.ai_protocol)
            guard fd >= 0 else { lastError = errnoText(); continue }
            if let error = connectBounded(fd, current.pointee.ai_addr, current.pointee.ai_addrlen, timeoutMilliseconds: timeoutMilliseconds) {
                lastError = error
                close(fd)
                continue
            }
            return fd
        }
        throw RedisError(code: .connectionFailed, message: lastError, target: address.description)
    }

    private static func connectUnix(path: String, timeoutMilliseconds: Int, address: RedisAddress) throws(RedisError) -> Int32 {
        var socketAddress = sockaddr_un()
        socketAddress.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: socketAddress.sun_path)
        guard path.utf8.count < capacity else {
            throw RedisError(code: .connectionFailed, message: "socket path longer than \(capacity - 1) bytes", target: address.description)
        }
        withUnsafeMutableBytes(of: &socketAddress.sun_path) { raw in
            for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw RedisError(code: .connectionFailed, message: errnoText(), target: address.description) }
        let error = withUnsafePointer(to: &socketAddress) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connectBounded(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size), timeoutMilliseconds: timeoutMilliseconds)
            }
        }
        if let error {
            close(fd)
            throw RedisError(code: .connectionFailed, message: error, target: address.description)
        }
        return fd
    }

    /// A non-blocking connect waited for with `poll`; the socket is blocking again after.
    /// Returns nil when connected, else the reason.
    private static func connectBounded(_ fd: Int32, _ address: UnsafePointer<sockaddr>?, _ length: socklen_t, timeoutMilliseconds: Int) -> String? {
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        if Glibc.connect(fd, address, length) != 0 {
            guard errno == EINPROGRESS else { return errnoText() }
            var entry = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            var ready: Int32
            repeat { ready = poll(&entry, 1, Int32(timeoutMilliseconds)) } while ready < 0 && errno == EINTR
            if ready == 0 { return "connect timed out after \(timeoutMilliseconds) ms" }
            var error: Int32 = 0
            var size = socklen_t(MemoryLayout<Int32>.size)
            if ready < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &size) != 0 { return errnoText() }
            if error != 0 { return String(cString: strerror(error)) }
        }
        _ = fcntl(fd, F_SETFL, flags)
        return nil
    }
}
