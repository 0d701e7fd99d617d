/// A failure talking to Redis, with the system's, OpenSSL's or the server's message and no
/// secrets in it.
public struct RedisError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        /// The server could not be reached.
        case connectionFailed
        /// The connection broke or timed out mid-command; the context must be discarded.
        case connectionLost
        /// AUTH or SELECT was refused.
        case authenticationFailed
        /// The server answered a command with an error (NOPERM, READONLY, OOM...).
        case commandFailed
        /// The server's answer did not have the expected shape.
        case unexpectedReply
        /// The TLS handshake failed or the server's certificate was refused.
        case tlsFailed
    }

    public var code: Code
    public var message: String
    public var target: String?

    public init(code: Code, message: String, target: String? = nil) {
        self.code = code
        self.message = message
        self.target = target
    }

    public var description: String {
        var text = "redis \(code.rawValue)"
        if let target { text += " (\(target))" }
        text += ": \(message)"
        if let hint { text += " — \(hint)" }
        return text
    }

    /// What an operator should do about it.
    public var hint: String? {
        switch code {
        case .connectionFailed: return "check that Redis is running and REDIS_URL's host and port are right"
        case .authenticationFailed: return "check the user and password in REDIS_URL against the server's users (ACL LIST)"
        case .commandFailed where message.hasPrefix("NOPERM"):
            return "the Redis user may not run this command or touch this key: it needs UNLINK or DEL, SCAN and PING on keys under the prefix"
        case .commandFailed where message.contains("MOVED "):
            return "Redis Cluster redirected a key, but the worker does not see the cluster: its user needs +cluster|slots (deploy/redis/users.acl)"
        case .commandFailed where message.hasPrefix("READONLY"):
            return "REDIS_URL points at a read-only replica; point it at the primary"
        case .connectionLost where message.hasPrefix("timed out"):
            return "no reply within REDIS_TIMEOUT; Redis is overloaded or the network drops packets"
        default: return nil
        }
    }
}
