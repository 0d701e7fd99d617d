import InvalidationCore
import RedisClient

/// Where deletions go: one server (direct or the master Sentinel names), or a cluster's masters.
enum RedisTarget {
    case single(RedisConnection)
    case cluster(RedisCluster)

    /// A connection for PING and INFO: the server, or the first master of the cluster.
    func anyConnection() throws(RedisError) -> RedisConnection {
        switch self {
        case .single(let connection): return connection
        case .cluster(let cluster): return try cluster.connection(to: cluster.topology.masters.first ?? cluster.seed)
        }
    }

    /// What changes when a failover happens: the server, or the set of masters.
    func master(runID: String?) -> RedisMaster {
        switch self {
        case .single(let connection): return RedisMaster(address: connection.address.description, runID: runID)
        case .cluster(let cluster): return RedisMaster(address: cluster.topology.masters.map(\.description).joined(separator: ","), runID: nil)
        }
    }
}

/// The masters of a Redis Cluster, a connection to each (opened when first needed), and the slot
/// map (`ClusterTopology`). A batch is routed by slot and written to every master before any
/// reply is read, so it costs the slowest master's round trip, not the sum.
final class RedisCluster {
    private let endpoint: RedisEndpoint
    private let timeoutMilliseconds: Int
    let seed: ClusterTopology.Node
    private(set) var topology: ClusterTopology
    private var connections: [ClusterTopology.Node: RedisConnection] = [:]
    /// Redirections followed (MOVED and ASK) since the statistics last took them.
    private var redirections = 0
    static let maximumRedirectionRounds = 5

    init(seed: ClusterTopology.Node, connection: RedisConnection, topology: ClusterTopology, endpoint: RedisEndpoint, timeoutMilliseconds: Int) {
        self.seed = seed
        self.topology = topology
        self.endpoint = endpoint
        self.timeoutMilliseconds = timeoutMilliseconds
        connections[seed] = connection
    }

    /// The slot map of a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, ...], replicas...], ...]`;
    /// nil when it is not one.
    static func topology(from reply: RedisReply) -> ClusterTopology? {
        guard case .array(let entries) = reply else { return nil }
        var ranges: [ClusterTopology.Range] = []
        for entry in entries {
            guard case .array(let fields) = entry, fields.count >= 3,
                  case .integer(let start) = fields[0], case .integer(let end) = fields[1], start <= end,
                  start >= 0, end < HashSlot.count,
                  case .array(let master) = fields[2], master.count >= 2,
                  case .bulk(let host) = master[0], case .integer(let port) = master[1], (1...65535).contains(port) else { return nil }
            ranges.append(.init(slots: Int(start)...Int(end), master: .init(host: String(decoding: host, as: UTF8.self), port: Int(port))))
        }
        return ClusterTopology(ranges: ranges)
    }

    func takeRedirections() -> Int {
        defer { redirections = 0 }
        return redirections
    }

    func connection(to node: ClusterTopology.Node) throws(RedisError) -> RedisConnection {
        if let connection = connections[node] { return connection }
        let connection = try RedisConnection(address: .tcp(host: node.host, port: node.port), tls: endpoint.tls, timeoutMilliseconds: timeoutMilliseconds)
        try connection.handshake(username: endpoint.username, password: endpoint.password, database: 0)
        connections[node] = connection
        return connection
    }

    /// Every master with its connection: pattern deletions SCAN each.
    func masterConnections() throws(RedisError) -> [RedisConnection] {
        var result: [RedisConnection] = []
        for node in topology.masters { result.append(try connection(to: node)) }
        return result
    }

    /// Each command (whose keys all hash to `slots[i]`) to the master of its slot, replies in the
    /// commands' order. `MOVED` teaches the map and sends the command again to the new owner;
    /// `ASK` sends it once to the node named, after `ASKING`. Any other reply, errors included,
    /// is returned for the caller to judge.
    func pipeline(_ commands: [[[UInt8]]], slots: [Int]) throws(RedisError) -> [RedisReply] {
        var replies = [RedisReply](repeating: .null, count: commands.count)
        var pending: [(index: Int, node: ClusterTopology.Node, asking: Bool)] = []
        for (index, slot) in slots.enumerated() {
            guard let node = topology.master(of: slot) else {
                throw RedisError(code: .commandFailed, message: "CLUSTERDOWN no master serves slot \(slot)", target: "cluster")
            }
            pending.append((index, node, false))
        }
        for _ in 0..<Self.maximumRedirectionRounds {
            if pending.isEmpty { return replies }
            var groups: [ClusterTopology.Node: [(index: Int, asking: Bool)]] = [:]
            for item in pending { groups[item.node, default: []].append((item.index, item.asking)) }
            let order = groups.sorted { $0.key < $1.key }
            for (node, items) in order {
                var batch: [[[UInt8]]] = []
                batch.reserveCapacity(items.count)
                for item in items {
                    if item.asking { batch.append([Array("ASKING".utf8)]) }
                    batch.append(commands[item.index])
                }
                try connection(to: node).send(batch)
            }
            var next: [(index: Int, node: ClusterTopology.Node, asking: Bool)] = []
            for (node, items) in order {
                let received = try connection(to: node).receive(items.count + items.filter(\.asking).count)
                var position = 0
                for item in items {
                    if item.asking { position += 1 }  // ASKING's +OK
                    let reply = received[position]
                    position += 1
                    if case .error(let message) = reply, let redirection = ClusterTopology.Redirection.parse(message) {
                        redirections += 1
                        switch redirection {
                        case .moved(let slot, let owner):
                            topology.moved(slot: slot, to: owner)
                            next.append((item.index, owner, false))
                        case .ask(_, let node):
                            next.append((item.index, node, true))
                        }
                    } else {
                        replies[item.index] = reply
                    }
                }
            }
            pending = next
        }
        throw RedisError(code: .commandFailed, message: "TRYAGAIN still redirected after \(Self.maximumRedirectionRounds) rounds (slots moving?)", target: "cluster")
    }
}
