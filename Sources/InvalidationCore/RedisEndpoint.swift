import Foundation

/// Where and how to reach Redis, parsed from `REDIS_URL`.
///
/// Forms: `redis://[user[:password]@]host[:port][/db]` and `unix:///path/to/redis.sock[?db=N]`.
/// `rediss://` is refused with a clear reason: hiredis 0.14 on this platform has no TLS.
public struct RedisEndpoint: Sendable, Equatable, CustomStringConvertible {
    public enum Address: Sendable, Equatable {
        case tcp(host: String, port: Int)
        case unix(path: String)
    }

    public var address: Address
    public var username: String?
    public var password: String?
    public var database: Int

    public init(address: Address, username: String? = nil, password: String? = nil, database: Int = 0) {
        self.address = address
        self.username = username
        self.password = password
        self.database = database
    }

    /// The URL with the password replaced, safe for logs and error messages.
    public var description: String {
        let auth: String
        switch (username, password) {
        case (let user?, _?): auth = "\(user):***@"
        case (nil, _?): auth = ":***@"
        case (let user?, nil): auth = "\(user)@"
        case (nil, nil): auth = ""
        }
        switch address {
        case .tcp(let host, let port):
            let shownHost = host.contains(":") ? "[\(host)]" : host
            return "redis://\(auth)\(shownHost):\(port)/\(database)"
        case .unix(let path):
            return "unix://\(auth)\(path)?db=\(database)"
        }
    }

    public struct ParseError: Error, Equatable, CustomStringConvertible {
        public var reason: String
        public var description: String { "REDIS_URL \(reason)" }
    }

    public static func parse(_ text: String) throws(ParseError) -> RedisEndpoint {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard !trimmed.isEmpty else {
            throw ParseError(reason: "is empty; expected redis://[user:password@]host[:port][/db]")
        }
        guard !trimmed.contains(where: { $0.isNewline || $0 == "\0" }) else {
            throw ParseError(reason: "contains a control character")
        }
        guard let components = URLComponents(string: trimmed), let scheme = components.scheme?.lowercased() else {
            throw ParseError(reason: "is not a URL; expected redis://[user:password@]host[:port][/db]")
        }
        let username = components.percentEncodedUser.flatMap { $0.isEmpty ? nil : $0.removingPercentEncoding }
        let password = components.percentEncodedPassword.flatMap { $0.removingPercentEncoding }
        if components.percentEncodedUser != nil && username == nil && components.percentEncodedUser != "" {
            throw ParseError(reason: "has a user name with invalid percent-encoding")
        }
        if components.percentEncodedPassword != nil && password == nil {
            throw ParseError(reason: "has a password with invalid percent-encoding")
        }
        switch scheme {
        case "redis":
            guard let host = components.host, !host.isEmpty else {
                throw ParseError(reason: "has no host; expected redis://host:6379")
            }
            let port = components.port ?? 6379
            guard (1...65535).contains(port) else { throw ParseError(reason: "has port \(port); expected 1-65535") }
            let path = components.path
            var database = 0
            if !path.isEmpty && path != "/" {
                let digits = path.dropFirst()
                guard digits.allSatisfy({ $0.isASCII && $0.isNumber }), let db = Int(digits), db <= 65535 else {
                    throw ParseError(reason: "has database \(String(digits).debugDescription); expected a number such as /0")
                }
                database = db
            }
            if let query = components.queryItems, !query.isEmpty {
                throw ParseError(reason: "has query parameters (\(query.map(\.name).joined(separator: ", "))), which are not supported for redis://")
            }
            let unbracketed = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
            return RedisEndpoint(address: .tcp(host: unbracketed, port: port), username: username, password: password, database: database)
        case "unix", "redis+unix":
            let path = components.path
            guard path.hasPrefix("/") else {
                throw ParseError(reason: "has no socket path; expected unix:///run/redis/redis.sock")
            }
            var database = 0
            for item in components.queryItems ?? [] {
                switch item.name {
                case "db":
                    guard let value = item.value, let db = Int(value), db >= 0, db <= 65535 else {
                        throw ParseError(reason: "has db=\(item.value ?? ""); expected a number")
                    }
                    database = db
                default:
                    throw ParseError(reason: "has unknown parameter \"\(item.name)\" (only db is supported)")
                }
            }
            return RedisEndpoint(address: .unix(path: path), username: username, password: password, database: database)
        case "rediss":
            throw ParseError(reason: "uses rediss:// (TLS), which this build cannot speak: hiredis 0.14 has no TLS. Use redis:// over a private network, a unix socket, or a local TLS tunnel (stunnel) and point REDIS_URL at it")
        default:
            throw ParseError(reason: "has scheme \"\(scheme)\"; expected redis:// or unix://")
        }
    }
}
