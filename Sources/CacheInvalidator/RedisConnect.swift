import InvalidationCore
import RedisClient

extension RedisEndpoint {
    /// Connects and finds out what is there: a Redis Cluster (`CLUSTER SLOTS` answers a slot
    /// map) or one server. Starts from the URL's node(s), then `knownNodes` (the masters seen
    /// last time: the URL's node may be the one that failed). With Sentinel, the master.
    func open(timeoutMilliseconds: Int, knownNodes: [ClusterTopology.Node] = []) throws(RedisError) -> RedisTarget {
        guard sentinel == nil, case .tcp(let host, let port) = address else {
            return .single(try connect(timeoutMilliseconds: timeoutMilliseconds))
        }
        var candidates = [ClusterTopology.Node(host: host, port: port)] + seeds.map { ClusterTopology.Node(host: $0.host, port: $0.port) }
        for node in knownNodes where !candidates.contains(node) { candidates.append(node) }
        var lastError: RedisError?
        for node in candidates {
            do throws(RedisError) {
                let connection = try RedisConnection(address: .tcp(host: node.host, port: node.port), tls: tls, timeoutMilliseconds: timeoutMilliseconds)
                try connection.handshake(username: username, password: password, database: 0)
                let reply = try connection.command(["CLUSTER", "SLOTS"].map { Array($0.utf8) })
                if case .error(let message) = reply {
                    // Not a cluster (or the user may not ask, as before +cluster|slots): one server.
                    guard message.contains("cluster support disabled") || message.hasPrefix("NOPERM") else {
                        throw RedisError(code: .commandFailed, message: "CLUSTER SLOTS: \(message)", target: node.description)
                    }
                    try connection.handshake(username: nil, password: nil, database: database)
                    return .single(connection)
                }
                guard let topology = RedisCluster.topology(from: reply), !topology.masters.isEmpty else {
                    throw RedisError(code: .unexpectedReply, message: "CLUSTER SLOTS answered no slot map", target: node.description)
                }
                guard database == 0 else {
                    throw RedisError(code: .commandFailed, message: "REDIS_URL names database \(database), but a Redis Cluster has only database 0", target: node.description)
                }
                return .cluster(RedisCluster(seed: node, connection: connection, topology: topology, endpoint: self, timeoutMilliseconds: timeoutMilliseconds))
            } catch {
                lastError = error
                if error.code == .commandFailed || error.code == .authenticationFailed || error.code == .tlsFailed { throw error }
            }
        }
        throw lastError ?? RedisError(code: .connectionFailed, message: "no node to connect to")
    }

    /// Connects and authenticates (AUTH, SELECT) with this endpoint's credentials. With
    /// sentinels, to the master they name, checked with ROLE.
    func connect(timeoutMilliseconds: Int) throws(RedisError) -> RedisConnection {
        let target: RedisAddress
        if let sentinel {
            target = try resolveMaster(sentinel, timeoutMilliseconds: timeoutMilliseconds)
        } else {
            switch address {
            case .tcp(let host, let port): target = .tcp(host: host, port: port)
            case .unix(let path): target = .unix(path: path)
            }
        }
        let connection = try RedisConnection(address: target, tls: tls, timeoutMilliseconds: timeoutMilliseconds)
        try connection.handshake(username: username, password: password, database: database)
        if sentinel != nil {
            // A sentinel's answer can be a moment stale during a failover: the server itself says.
            let role = try connection.command([Array("ROLE".utf8)])
            guard case .array(let fields) = role, case .bulk(let name)? = fields.first else {
                throw RedisError(code: .unexpectedReply, message: "ROLE answered \(role); the user needs +role", target: target.description)
            }
            guard name == Array("master".utf8) else {
                throw RedisError(code: .connectionFailed, message: "the sentinels name \(target) as master \(sentinel!.masterName), but it is a \(String(decoding: name, as: UTF8.self)) (a failover in progress?); asking again", target: target.description)
            }
        }
        return connection
    }


    /// Asks each sentinel in turn for the master's address (`SENTINEL get-master-addr-by-name`).
    private func resolveMaster(_ sentinel: Sentinel, timeoutMilliseconds: Int) throws(RedisError) -> RedisAddress {
        var failures: [String] = []
        for node in sentinel.nodes {
            do {
                let connection = try RedisConnection(address: .tcp(host: node.host, port: node.port), tls: tls, timeoutMilliseconds: timeoutMilliseconds)
                try connection.handshake(username: sentinel.username, password: sentinel.password, database: 0)
                let reply = try connection.command(["SENTINEL", "get-master-addr-by-name", sentinel.masterName].map { Array($0.utf8) })
                switch reply {
                case .array(let fields) where fields.count == 2:
                    guard case .bulk(let host) = fields[0], case .bulk(let portText) = fields[1],
                          let port = Int(String(decoding: portText, as: UTF8.self)), (1...65535).contains(port), !host.isEmpty else {
                        failures.append("\(node): unexpected answer \(reply)")
                        continue
                    }
                    return .tcp(host: String(decoding: host, as: UTF8.self), port: port)
                case .null, .array:
                    failures.append("\(node): knows no master named \(sentinel.masterName)")
                case .error(let message):
                    failures.append("\(node): \(message)")
                default:
                    failures.append("\(node): unexpected answer \(reply)")
                }
            } catch {
                failures.append("\(node): \(error.message)")
            }
        }
        throw RedisError(code: .connectionFailed, message: "no sentinel named the master \(sentinel.masterName): \(failures.joined(separator: "; "))", target: "sentinels \(sentinel.nodes.map(\.description).joined(separator: ","))")
    }
}
