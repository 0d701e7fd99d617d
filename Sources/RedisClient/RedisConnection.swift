import CHiredis
import Glibc
import InvalidationCore

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

/// One blocking connection to one Redis server. hiredis is the protocol codec only
/// (`redisFormatCommandArgv` to encode, a `redisReader` to decode); the bytes travel through our
/// own `RedisTransport` (TCP, a Unix socket, or TLS through OpenSSL, which hiredis 0.14 lacks).
///
/// Keys travel as binary-safe arguments with explicit lengths, never through the printf-style
/// API, so no byte of a key can change the command. Not thread-safe: lives on the worker's own
/// thread. After any `.connectionLost` error the connection is unusable and must be dropped.
public final class RedisConnection {
    private let transport: RedisTransport
    private let reader: UnsafeMutablePointer<redisReader>
    public let address: RedisAddress

    public init(address: RedisAddress, tls: TLSConfiguration? = nil, timeoutMilliseconds: Int = 2000) throws(RedisError) {
        guard let reader = redisReaderCreate() else { throw RedisError(code: .connectionFailed, message: "out of memory", target: address.description) }
        do {
            transport = try RedisTransport.connect(address, tls: tls, timeoutMilliseconds: timeoutMilliseconds)
        } catch {
            redisReaderFree(reader)
            throw error
        }
        self.reader = reader
        self.address = address
    }

    deinit { redisReaderFree(reader) }

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

    /// Many commands in one round trip: all are written in one buffer, then all replies are
    /// read, in order.
    public func pipeline(_ commands: [[[UInt8]]]) throws(RedisError) -> [RedisReply] {
        try send(commands)
        return try receive(commands.count)
    }

    /// Writes commands without reading their replies: several servers can then work on their
    /// share at once (a cluster), and each share's replies are read after (`receive`).
    public func send(_ commands: [[[UInt8]]]) throws(RedisError) {
        var bytes: [UInt8] = []
        for arguments in commands { try RedisConnection.encode(arguments, into: &bytes) }
        try transport.writeAll(bytes)
    }

    /// Reads `count` replies, in order.
    public func receive(_ count: Int) throws(RedisError) -> [RedisReply] {
        var replies: [RedisReply] = []
        replies.reserveCapacity(count)
        try withUnsafeTemporaryAllocation(byteCount: 16_384, alignment: 1) { (buffer) throws(RedisError) in
            while replies.count < count {
                var raw: UnsafeMutableRawPointer? = nil
                guard redisReaderGetReply(reader, &raw) == REDIS_OK else {
                    throw RedisError(code: .connectionLost, message: "the server's reply is not valid RESP: \(readerError)", target: address.description)
                }
                if let raw {
                    replies.append(RedisReply(copying: raw.assumingMemoryBound(to: redisReply.self)))
                    freeReplyObject(raw)
                    continue
                }
                let read = try transport.read(into: buffer)
                guard redisReaderFeed(reader, buffer.baseAddress!.assumingMemoryBound(to: CChar.self), read) == REDIS_OK else {
                    throw RedisError(code: .connectionLost, message: "the server's reply is not valid RESP: \(readerError)", target: address.description)
                }
            }
        }
        return replies
    }

    private var readerError: String {
        withUnsafeBytes(of: reader.pointee.errstr) { raw in String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self) }
    }

    /// Appends one command in RESP (hiredis's encoder, lengths explicit).
    static func encode(_ arguments: [[UInt8]], into bytes: inout [UInt8]) throws(RedisError) {
        // One contiguous buffer for the argument bytes, with pointers and lengths into it.
        let total = arguments.reduce(0) { $0 + $1.count }
        var target: UnsafeMutablePointer<CChar>? = nil
        let length: Int32 = withUnsafeTemporaryAllocation(of: UInt8.self, capacity: max(total, 1)) { storage in
            var offset = 0
            var pointers: [UnsafePointer<CChar>?] = []
            var lengths: [Int] = []
            pointers.reserveCapacity(arguments.count)
            lengths.reserveCapacity(arguments.count)
            let base = storage.baseAddress!
            for argument in arguments {
                argument.withUnsafeBufferPointer { source in
                    if let start = source.baseAddress { (base + offset).update(from: start, count: source.count) }
                }
                pointers.append(UnsafeRawPointer(base + offset).assumingMemoryBound(to: CChar.self))
                lengths.append(argument.count)
                offset += argument.count
            }
            return pointers.withUnsafeMutableBufferPointer { p in
                lengths.withUnsafeBufferPointer { l in redisFormatCommandArgv(&target, Int32(arguments.count), p.baseAddress, l.baseAddress) }
            }
        }
        guard length > 0, let target else { throw RedisError(code: .connectionLost, message: "cannot encode the command (out of memory)") }
        defer { redisFreeCommand(target) }
        bytes.append(contentsOf: UnsafeRawBufferPointer(start: target, count: Int(length)))
    }
}
