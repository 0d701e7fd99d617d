import Foundation

/// Where and how to reach Redis, parsed from `REDIS_URL`.
///
/// Forms:
/// - `redis://[user[:password]@]host[:port][/db]`;
/// - `rediss://...` the same over TLS, with `?cacert=PATH&cert=PATH&key=PATH&sni=NAME`
///   (the names of redis-cli's flags; all optional: the system's CAs and the host's name);
/// - `unix:///path/to/redis.sock[?db=N]`;
/// - `redis://host1:port1,host2:port2[/db]`: several nodes of a Redis Cluster to start from (any
///   one node is enough: a cluster is detected by itself);
/// - `redis-sentinel://[user[:password]@]host1[:26379][,host2[:26379]...]/master[/db]`
///   (`rediss-sentinel://` over TLS), with `?sentinel_user=U&sentinel_password=P` when the
///   sentinels require their own credentials; the user and password are the master's.
public struct RedisEndpoint: Sendable, Equatable, CustomStringConvertible {
    public enum Address: Sendable, Equatable {
        case tcp(host: String, port: Int)
        case unix(path: String)
    }

    /// TLS settings (`rediss://`): the CA file to trust (nil: the system's), a client
    /// certificate and key, the name to verify (nil: the host).
    public struct TLS: Sendable, Equatable {
        public var caFile: String?
        public var certificateFile: String?
        public var keyFile: String?
        public var serverName: String?
        public init(caFile: String? = nil, certificateFile: String? = nil, keyFile: String? = nil, serverName: String? = nil) {
            self.caFile = caFile
            self.certificateFile = certificateFile
            self.keyFile = keyFile
            self.serverName = serverName
        }
    }

    /// A host and port of a multi-host URL (sentinels, cluster seeds).
    public struct Node: Sendable, Equatable, CustomStringConvertible {
        public var host: String
        public var port: Int
        public init(host: String, port: Int) { self.host = host; self.port = port }
        public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
    }

    /// The sentinels to ask for the master, and the master's name there.
    public struct Sentinel: Sendable, Equatable {
        public typealias Node = RedisEndpoint.Node
        public var nodes: [Node]
        public var masterName: String
        public var username: String?
        public var password: String?
        public init(nodes: [Node], masterName: String, username: String? = nil, password: String? = nil) {
            self.nodes = nodes
            self.masterName = masterName
            self.username = username
            self.password = password
        }
    }

    /// The server (direct), or the first sentinel (with `sentinel`, which says whom to ask).
    public var address: Address
    public var username: String?
    public var password: String?
    public var database: Int
    public var tls: TLS?
    public var sentinel: Sentinel?
    /// More nodes of a cluster to start from (`redis://h1:7000,h2:7001`), after `address`.
    public var seeds: [Node]

    public init(address: Address, username: String? = nil, password: String? = nil, database: Int = 0, tls: TLS? = nil,
                sentinel: Sentinel? = nil, seeds: [Node] = []) {
        self.address = address
        self.username = username
        self.password = password
        self.database = database
        self.tls = tls
        self.sentinel = sentinel
        self.seeds = seeds
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
        if let sentinel {
            return "\(tls == nil ? "redis" : "rediss")-sentinel://\(auth)\(sentinel.nodes.map(\.description).joined(separator: ","))/\(sentinel.masterName)/\(database)"
        }
        switch address {
        case .tcp(let host, let port):
            let shownHost = ([Node(host: host, port: port)] + seeds).map(\.description).joined(separator: ",")
            return "\(tls == nil ? "redis" : "rediss")://\(auth)\(shownHost)/\(database)"
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
        let lowered = trimmed.lowercased()
        if lowered.hasPrefix("redis-sentinel://") || lowered.hasPrefix("rediss-sentinel://") {
            return try parseMultiHost(trimmed, tls: lowered.hasPrefix("rediss"), sentinel: true)
        }
        if lowered.hasPrefix("redis://") || lowered.hasPrefix("rediss://") {
            let authority = trimmed.split(separator: "/", maxSplits: 3, omittingEmptySubsequences: false).dropFirst(2).first ?? ""
            if authority.split(separator: "@").last?.contains(",") == true {
                return try parseMultiHost(trimmed, tls: lowered.hasPrefix("rediss"), sentinel: false)
            }
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
        case "redis", "rediss":
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
            var tls: TLS? = nil
            if scheme == "rediss" {
                tls = try parseTLS(components.queryItems ?? [], allowing: [])
            } else if let query = components.queryItems, !query.isEmpty {
                throw ParseError(reason: "has query parameters (\(query.map(\.name).joined(separator: ", "))), which are not supported for redis:// (TLS settings go with rediss://)")
            }
            let unbracketed = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
            return RedisEndpoint(address: .tcp(host: unbracketed, port: port), username: username, password: password, database: database, tls: tls)
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
        default:
            throw ParseError(reason: "has scheme \"\(scheme)\"; expected redis://, rediss://, unix:// or redis-sentinel://")
        }
    }

    static let tlsParameters = ["cacert", "cert", "key", "sni"]

    /// The TLS parameters of a `rediss` URL; any other name (bar `allowing`) is refused.
    private static func parseTLS(_ items: [URLQueryItem], allowing others: Set<String>) throws(ParseError) -> TLS {
        var tls = TLS()
        for item in items where !others.contains(item.name) {
            guard let value = item.value, !value.isEmpty else {
                throw ParseError(reason: "has an empty \(item.name)=; expected \(item.name == "sni" ? "a host name" : "a file path")")
            }
            switch item.name {
            case "cacert": tls.caFile = value
            case "cert": tls.certificateFile = value
            case "key": tls.keyFile = value
            case "sni": tls.serverName = value
            default:
                throw ParseError(reason: "has unknown parameter \"\(item.name)\" (rediss:// takes \(tlsParameters.joined(separator: ", ")))")
            }
        }
        if tls.keyFile != nil && tls.certificateFile == nil {
            throw ParseError(reason: "has key= without cert=; a client key goes with its certificate")
        }
        return tls
    }

    /// `redis-sentinel://[user[:password]@]host[:port][,host[:port]...]/master[/db][?...]`, and
    /// a cluster's seeds `redis://[user[:password]@]host:port,host:port[/db][?...]`: several hosts,
    /// which URLComponents cannot parse, so they are taken apart here.
    private static func parseMultiHost(_ text: String, tls: Bool, sentinel isSentinel: Bool) throws(ParseError) -> RedisEndpoint {
        let scheme = (tls ? "rediss" : "redis") + (isSentinel ? "-sentinel" : "")
        let form = isSentinel ? "expected \(scheme)://[user:password@]host1:26379,host2:26379/master-name[/db]"
                              : "expected \(scheme)://[user:password@]host1:6379,host2:6379[/db]"
        let rest = text[text.index(text.firstIndex(of: ":")!, offsetBy: 3)...]
        let (beforeQuery, query) = rest.firstIndex(of: "?").map { (rest[..<$0], String(rest[rest.index(after: $0)...])) } ?? (rest, "")
        let slash = beforeQuery.firstIndex(of: "/")
        if isSentinel && slash == nil { throw ParseError(reason: "names no master; \(form)") }
        let authority = beforeQuery[..<(slash ?? beforeQuery.endIndex)]
        let path = slash.map { beforeQuery[beforeQuery.index(after: $0)...] } ?? ""
        var username: String? = nil, password: String? = nil
        var hostList = authority
        if let at = authority.lastIndex(of: "@") {
            let userinfo = authority[..<at]
            hostList = authority[authority.index(after: at)...]
            let parts = userinfo.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            guard let user = String(parts[0]).removingPercentEncoding else { throw ParseError(reason: "has a user name with invalid percent-encoding") }
            username = user.isEmpty ? nil : user
            if parts.count == 2 {
                guard let secret = String(parts[1]).removingPercentEncoding else { throw ParseError(reason: "has a password with invalid percent-encoding") }
                password = secret
            }
        }
        var nodes: [Node] = []
        for entry in hostList.split(separator: ",", omittingEmptySubsequences: false) {
            guard let node = parseHostPort(entry, defaultPort: isSentinel ? 26379 : 6379) else {
                throw ParseError(reason: "has \(isSentinel ? "sentinel" : "host") \(String(entry).debugDescription); \(form)")
            }
            nodes.append(node)
        }
        if !isSentinel {
            var database = 0
            if !path.isEmpty {
                guard path.allSatisfy({ $0.isASCII && $0.isNumber }), let db = Int(path), db <= 65535 else {
                    throw ParseError(reason: "has database \(String(path).debugDescription); expected a number such as /0")
                }
                database = db
            }
            var items: [URLQueryItem] = []
            if !query.isEmpty {
                guard let parsed = URLComponents(string: "x://h?" + query)?.queryItems else { throw ParseError(reason: "has a query that is not name=value&...") }
                items = parsed
            }
            if !tls && !items.isEmpty {
                throw ParseError(reason: "has query parameters (\(items.map(\.name).joined(separator: ", "))), which are not supported for redis:// (TLS settings go with rediss://)")
            }
            return RedisEndpoint(address: .tcp(host: nodes[0].host, port: nodes[0].port), username: username, password: password, database: database,
                                 tls: tls ? try parseTLS(items, allowing: []) : nil, seeds: Array(nodes.dropFirst()))
        }
        let segments = path.split(separator: "/", omittingEmptySubsequences: false)
        guard let first = segments.first, !first.isEmpty, let master = String(first).removingPercentEncoding, !master.isEmpty,
              master.allSatisfy({ !$0.isWhitespace && !$0.isNewline }) else {
            throw ParseError(reason: "names no master; \(form)")
        }
        var database = 0
        if segments.count == 2 && !segments[1].isEmpty {
            guard segments[1].allSatisfy({ $0.isASCII && $0.isNumber }), let db = Int(segments[1]), db <= 65535 else {
                throw ParseError(reason: "has database \(String(segments[1]).debugDescription); expected a number such as /0")
            }
            database = db
        } else if segments.count > 2 {
            throw ParseError(reason: "has a path with more than master/db; \(form)")
        }
        var items: [URLQueryItem] = []
        if !query.isEmpty {
            guard let parsed = URLComponents(string: "x://h?" + query)?.queryItems else { throw ParseError(reason: "has a query that is not name=value&...") }
            items = parsed
        }
        var sentinel = Sentinel(nodes: nodes, masterName: master)
        for item in items {
            switch item.name {
            case "sentinel_user": sentinel.username = item.value
            case "sentinel_password": sentinel.password = item.value
            case _ where tls && tlsParameters.contains(item.name): continue
            default:
                throw ParseError(reason: "has unknown parameter \"\(item.name)\" (\(tls ? "rediss" : "redis")-sentinel:// takes sentinel_user, sentinel_password\(tls ? ", " + tlsParameters.joined(separator: ", ") : ""))")
            }
        }
        let tlsSettings = tls ? try parseTLS(items, allowing: ["sentinel_user", "sentinel_password"]) : nil
        return RedisEndpoint(address: .tcp(host: nodes[0].host, port: nodes[0].port), username: username, password: password,
                             database: database, tls: tlsSettings, sentinel: sentinel)
    }

    /// `host`, `host:port`, `[v6]` or `[v6]:port`; nil for anything else.
    private static func parseHostPort(_ text: Substring, defaultPort: Int) -> Node? {
        var host: Substring
        var portText: Substring? = nil
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            let after = text[text.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { return nil }
                portText = after.dropFirst()
            }
        } else {
            let parts = text.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count <= 2 else { return nil }
            host = parts[0]
            if parts.count == 2 { portText = parts[1] }
        }
        guard !host.isEmpty, host.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-._:%".contains($0)) }) else { return nil }
        var port = defaultPort
        if let portText {
            guard !portText.isEmpty, portText.count <= 5, portText.allSatisfy({ $0.isASCII && $0.isNumber }),
                  let value = Int(portText), (1...65535).contains(value) else { return nil }
            port = value
        }
        return Node(host: String(host), port: port)
    }
}
