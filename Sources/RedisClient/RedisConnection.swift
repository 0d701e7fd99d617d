import CHiredis
import Glibc

/// A Redis reply, copied out of hiredis so the `redisReply` tree is freed at once.
public indirect enum RedisReply: Sendable, Equatable {
    case status(String)
    case error(String)
    case integer(Int64)
    case bulk([UInt8])
    case array([RedisReply])
    case null

    init(copying reply: UnsafePointer<redisReply>) {
        let r = reply.pointee
        switch r.type {
        case REDIS_REPLY_STATUS:
            self = .status(RedisReply.text(r))
        case REDIS_REPLY_ERROR:
            self = .error(RedisReply.text(r))
        case REDIS_REPLY_INTEGER:
            self = .integer(Int64(r.integer))
        case REDIS_REPLY_STRING:
            self = .bulk(r.str.map { Array(UnsafeRawBufferPointer(start: $0, count: Int(r.len))) } ?? [])
        case REDIS_REPLY_ARRAY:
            var elements: [RedisReply] = []
            elements.reserveCapacity(Int(r.elements))
            for i in 0..<Int(r.elements) {
                if let element = r.element[i] { elements.append(RedisReply(copying: element)) } else { elements.append(.null) }
            }
            self = .array(elements)
        default:
            self = .null
        }
    }

    private static func text(_ r: redisReply) -> String {
        guard let str = r.str else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: str, count: Int(r.len)), as: UTF8.self)
    }
}

/// Where to connect; kept free of credentials so it can be logged.
public enum RedisAddress: Sendable, Equatable, CustomStringConvertible {
    case tcp(host: String, port: Int)
    case unix(path: String)

    public var description: String {
        switch self {
        case .tcp(let host, let port): return "\(host):\(port)"
        case .unix(let path): return "unix:\(path)"
        }
    }
}

/// One blocking hiredis connection, owned: `redisFree` runs exactly once, in `deinit`.
///
/// Keys travel as binary-safe arguments (`redisAppendCommandArgv` with explicit lengths),
/// never through the printf-style API, so no byte of a key can change the command.
/// Not thread-safe: lives on the worker's own thread. After any `.connectionLost` error the
/// connection is unusable and must be dropped.
public final class RedisConnection {
    private let context: UnsafeMutablePointer<redisContext>
    public let address: RedisAddress

    public init(address: RedisAddress, timeoutMilliseconds: Int = 2000) throws(RedisError) {
        let tv = timeval(tv_sec: timeoutMilliseconds / 1000, tv_usec: (timeoutMilliseconds % 1000) * 1000)
        let raw: UnsafeMutablePointer<redisContext>?
        switch address {
        case .tcp(let host, let port): raw = redisConnectWithTimeout(host, Int32(port), tv)
        case .unix(let path): raw = redisConnectUnixWithTimeout(path, tv)
        }
        guard let raw else { throw RedisError(code: .connectionFailed, message: "out of memory", target: address.description) }
        if raw.pointee.err != 0 {
            let message = RedisConnection.errorString(raw)
            redisFree(raw)
            throw RedisError(code: .connectionFailed, message: message, target: address.description)
        }
        // The connect timeout does not cover commands; without this a stalled server blocks forever.
        guard redisSetTimeout(raw, tv) == REDIS_OK else {
            let message = RedisConnection.errorString(raw)
            redisFree(raw)
            throw RedisError(code: .connectionFailed, message: "cannot set the command timeout: \(message)", target: address.description)
        }
        if case .tcp = address { _ = redisEnableKeepAlive(raw) }
        self.context = raw
        self.address = address
    }

    deinit { redisFree(context) }

    /// Sends AUTH (when a password is given) and SELECT (when the database is not 0).
    public func handshake(username: String?, password: String?, database: Int) throws(RedisError) {
        if let password {
            var args: [[UInt8]] = [Array("AUTH".utf8)]
            if let username { args.append(Array(username.utf8)) }
            args.append(Array(password.utf8))
            // The server's answer never echoes the password, so its message is safe to keep.
            if case .error(let message) = try command(args) {
                throw RedisError(code: .authenticationFailed, message: message, target: address.description)
            }
        }
        if database != 0 {
            if case .error(let message) = try command([Array("SELECT".utf8), Array(String(database).utf8)]) {
                throw RedisError(code: .commandFailed, message: "SELECT \(database) (the /db of REDIS_URL): \(message)", target: address.description)
            }
        }
    }

    /// One command, one round trip. An error reply is returned, not thrown: callers decide.
    public func command(_ arguments: [[UInt8]]) throws(RedisError) -> RedisReply {
        try pipeline([arguments])[0]
    }

    /// Many commands in one round trip: all are written, then all replies are read, in order.
    public func pipeline(_ commands: [[[UInt8]]]) throws(RedisError) -> [RedisReply] {
        for arguments in commands { try append(arguments) }
        var replies: [RedisReply] = []
        replies.reserveCapacity(commands.count)
        for _ in commands {
            var raw: UnsafeMutableRawPointer? = nil
            guard redisGetReply(context, &raw) == REDIS_OK, let raw else {
                throw RedisError(code: .connectionLost, message: RedisConnection.errorString(context), target: address.description)
            }
            let reply = raw.assumingMemoryBound(to: redisReply.self)
            replies.append(RedisReply(copying: reply))
            freeReplyObject(raw)
        }
        return replies
    }

    private func append(_ arguments: [[UInt8]]) throws(RedisError) {
        // One contiguous buffer for the argument bytes, with pointers and lengths into it.
        let total = arguments.reduce(0) { $0 + $1.count }
        let status: Int32 = withUnsafeTemporaryAllocation(of: UInt8.self, capacity: max(total, 1)) { storage in
            var offset = 0
            var pointers: [UnsafePointer<CChar>?] = []
            var lengths: [Int] = []
            pointers.reserveCapacity(arguments.count)
            lengths.reserveCapacity(arguments.count)
            let base = storage.baseAddress!
            for argument in arguments {
                argument.withUnsafeBufferPointer { bytes in
                    if let source = bytes.baseAddress { (base + offset).update(from: source, count: bytes.count) }
                }
                pointers.append(UnsafeRawPointer(base + offset).assumingMemoryBound(to: CChar.self))
                lengths.append(argument.count)
                offset += argument.count
            }
            return pointers.withUnsafeMutableBufferPointer { p in
                lengths.withUnsafeBufferPointer { l in
                    redisAppendCommandArgv(context, Int32(arguments.count), p.baseAddress, l.baseAddress)
                }
            }
        }
        guard status == REDIS_OK else {
            throw RedisError(code: .connectionLost, message: RedisConnection.errorString(context), target: address.description)
        }
    }

    private static func errorString(_ context: UnsafeMutablePointer<redisContext>) -> String {
        let message = withUnsafeBytes(of: context.pointee.errstr) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        return message.isEmpty ? "connection closed" : message
    }
}
