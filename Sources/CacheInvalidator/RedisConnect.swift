import InvalidationCore
import RedisClient

extension RedisEndpoint {
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
        let connection = try RedisConnection(address: target, tls: tlsConfiguration, timeoutMilliseconds: timeoutMilliseconds)
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

    var tlsConfiguration: TLSConfiguration? {
        tls.map { TLSConfiguration(caFile: $0.caFile, certificateFile: $0.certificateFile, keyFile: $0.keyFile, serverName: $0.serverName) }
    }

    /// Asks each sentinel in turn for the master's address (`SENTINEL get-master-addr-by-name`).
    private func resolveMaster(_ sentinel: Sentinel, timeoutMilliseconds: Int) throws(RedisError) -> RedisAddress {
        var failures: [String] = []
        for node in sentinel.nodes {
            do {
                let connection = try RedisConnection(address: .tcp(host: node.host, port: node.port), tls: tlsConfiguration, timeoutMilliseconds: timeoutMilliseconds)
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
