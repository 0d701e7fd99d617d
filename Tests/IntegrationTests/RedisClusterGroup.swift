import Foundation
import Glibc
import InvalidationCore
import RedisClient
import Synchronization
import Testing

/// A Redis Cluster of three masters with one replica each, on free loopback ports
/// (`cluster-node-timeout` 1000 ms, so a killed master is replaced within seconds), made with
/// `redis-cli --cluster create`. Pid files `redis-cluster-group-*.pid` in the shared test
/// directory: `TestServers`' exit hook kills whatever a crashed test left. Not shared: each test
/// makes its own.
///
/// The test's own reads and writes go to the master of each key's slot (`connection(for:)`),
/// computed with the worker's own `HashSlot` and the cluster's `CLUSTER SLOTS`.
final class RedisClusterGroup: Sendable {
    typealias FixtureError = TestServers.TestServerError

    let directory: String
    let ports: [Int]
    private let pidDirectory: String
    private let tag: String
    private let stopped = Mutex(false)
    private static let instanceCounter = Atomic<Int>(0)

    init(timeout: Double = 60) throws {
        let servers = try TestServers.get()
        let number = RedisClusterGroup.instanceCounter.add(1, ordering: .relaxed).newValue
        tag = "redis-cluster-group-\(number)"
        pidDirectory = servers.directory
        directory = servers.directory + "/cluster-group-\(number)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var ports: [Int] = []
        // A node also listens on its port + 10000 (the cluster bus), so the port must be at most
        // 55535 and both must be free.
        while ports.count < 6 {
            let port = TestServers.freePort()
            guard port <= 55_535, port != servers.redisPort, port != servers.postgresPort, !ports.contains(port), !ports.contains(port + 10_000),
                  !ports.contains(port - 10_000), RedisClusterGroup.canBind(port + 10_000) else { continue }
            ports.append(port)
        }
        self.ports = ports
        let redisServer = TestServers.which("redis-server") ?? "/usr/bin/redis-server"
        for port in ports {
            let node = directory + "/\(port)"
            try FileManager.default.createDirectory(atPath: node, withIntermediateDirectories: true)
            let status = try TestServers.spawnAndWait(redisServer, [
                "--port", "\(port)", "--bind", "127.0.0.1", "--cluster-enabled", "yes", "--cluster-config-file", node + "/nodes.conf",
                // A replica must have synced to be promoted: no 5 s wait for more replicas before
                // the transfer, and promotion whatever the age of its data (a test's failover).
                "--cluster-node-timeout", "1000", "--repl-diskless-sync-delay", "0", "--cluster-replica-validity-factor", "0", "--save", "", "--appendonly", "no", "--dir", node, "--daemonize", "yes",
                "--logfile", node + "/redis.log", "--pidfile", pidDirectory + "/\(tag)-\(port).pid",
            ], outputPath: directory + "/start.log")
            guard status == 0 else { throw FixtureError(description: "redis-server (cluster node \(port)) exited \(status)") }
        }
        for port in ports {
            try awaitValue("cluster node \(port) answers", timeout: timeout) { seen -> Bool? in
                let reply = try? RedisConnection(address: .tcp(host: "127.0.0.1", port: port)).command([Array("PING".utf8)])
                seen = "\(String(describing: reply))"
                return reply == .status("PONG") ? true : nil
            }
        }
        let cli = TestServers.which("redis-cli") ?? "/usr/bin/redis-cli"
        let (status, output) = try TestServers.runBounded(cli, ["--cluster", "create"] + ports.map { "127.0.0.1:\($0)" } + ["--cluster-replicas", "1", "--cluster-yes"],
                                                           environment: [:], timeout: timeout, what: "redis-cli --cluster create")
        guard status == 0 else { throw FixtureError(description: "redis-cli --cluster create failed: \(output)") }
        try waitUntilHealthy(timeout: timeout)
    }

    deinit { stop() }

    static func canBind(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        return withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } } == 0
    }

    /// Every node says `cluster_state:ok` and three masters cover every slot.
    func waitUntilHealthy(timeout: Double = 60) throws {
        try awaitCondition("the cluster is healthy", timeout: timeout, interval: 50_000) { seen in
            for port in livePorts {
                guard case .bulk(let text)? = try? RedisConnection(address: .tcp(host: "127.0.0.1", port: port)).command(["CLUSTER", "INFO"].map { Array($0.utf8) }) else {
                    seen = "\(port) does not answer CLUSTER INFO"
                    return false
                }
                let info = String(decoding: text, as: UTF8.self)
                guard info.contains("cluster_state:ok") else { seen = "\(port): \(info.prefix(200))"; return false }
                guard case .bulk(let replication)? = try? RedisConnection(address: .tcp(host: "127.0.0.1", port: port)).command(["INFO", "replication"].map { Array($0.utf8) }) else { return false }
                let roles = String(decoding: replication, as: UTF8.self)
                if roles.contains("role:slave") && !roles.contains("master_link_status:up") { seen = "replica \(port) has not synced"; return false }
            }
            let topology = try? self.topology()
            seen = "topology: \(String(describing: topology?.masters)), uncovered \(String(describing: topology?.uncovered))"
            return topology?.uncovered == 0 && topology?.masters.count == 3
        }
    }

    /// Nodes not killed by the test.
    var livePorts: [Int] { ports.filter { isAlive(port: $0) } }

    func isAlive(port: Int) -> Bool {
        (try? RedisConnection(address: .tcp(host: "127.0.0.1", port: port), timeoutMilliseconds: 500).command([Array("PING".utf8)])) == .status("PONG")
    }

    /// The slot map, as a live node sees it.
    func topology() throws -> ClusterTopology {
        for port in livePorts {
            guard let reply = try? RedisConnection(address: .tcp(host: "127.0.0.1", port: port)).command(["CLUSTER", "SLOTS"].map { Array($0.utf8) }),
                  case .array(let entries) = reply else { continue }
            var ranges: [ClusterTopology.Range] = []
            for case .array(let fields) in entries {
                guard fields.count >= 3, case .integer(let start) = fields[0], case .integer(let end) = fields[1],
                      case .array(let master) = fields[2], master.count >= 2, case .bulk(let host) = master[0], case .integer(let port) = master[1] else { continue }
                ranges.append(.init(slots: Int(start)...Int(end), master: .init(host: String(decoding: host, as: UTF8.self), port: Int(port))))
            }
            return ClusterTopology(ranges: ranges)
        }
        throw FixtureError(description: "no cluster node answers CLUSTER SLOTS")
    }

    /// The master of a key's slot.
    func connection(for key: String) throws -> RedisConnection {
        guard let node = try topology().master(of: HashSlot.of(Array(key.utf8))) else { throw FixtureError(description: "no master serves \(key)") }
        return try RedisConnection(address: .tcp(host: node.host, port: node.port))
    }

    func set(_ keys: [String]) throws {
        for key in keys {
            let reply = try connection(for: key).command(["SET", key, "cached"].map { Array($0.utf8) })
            guard reply == .status("OK") else { throw FixtureError(description: "SET \(key): \(reply)") }
        }
    }

    func exists(_ key: String) throws -> Bool {
        try connection(for: key).command(["EXISTS", key].map { Array($0.utf8) }) == .integer(1)
    }

    /// The URL of one node, for the worker: it finds the rest by itself.
    func url(port: Int? = nil) -> String { "redis://127.0.0.1:\(port ?? ports[0])/0" }

    /// SIGKILL a node (the master of a slot, say): its replica is promoted after the node timeout.
    func kill(port: Int) {
        if let text = try? String(contentsOfFile: pidDirectory + "/\(tag)-\(port).pid", encoding: .utf8),
           let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
            Glibc.kill(pid, SIGKILL)
        }
    }

    func stop() {
        let already = stopped.withLock { stopped -> Bool in defer { stopped = true }; return stopped }
        guard !already else { return }
        for port in ports { kill(port: port) }
    }
}
