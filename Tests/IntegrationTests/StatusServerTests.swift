import CacheInvalidator
import Foundation
import Glibc
import InvalidationCore
import Logging
import Testing

/// `/metrics`, `/healthz`, `/readyz` as Prometheus and a load balancer see them, over a real
/// socket, next to a worker doing real work.
@Suite("HTTP: metrics and health")
struct StatusServerTests {
    struct Response {
        var status: Int
        var body: String
    }

    /// One request over a fresh connection; `raw` is sent as is (hostile requests included).
    static func request(port: Int, raw: [UInt8]) -> Response? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        let connected = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard connected == 0 else { return nil }
        _ = raw.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var data: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { break }
            data += buffer[0..<n]
        }
        let text = String(decoding: data, as: UTF8.self)
        guard text.hasPrefix("HTTP/1.1 "), let code = Int(text.dropFirst(9).prefix(3)) else { return nil }
        let body = text.range(of: "\r\n\r\n").map { String(text[$0.upperBound...]) } ?? ""
        return Response(status: code, body: body)
    }

    static func get(_ path: String, port: Int) -> Response? {
        request(port: port, raw: Array("GET \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".utf8))
    }

    /// Value of a sample line `name{labels} value`.
    static func sample(_ exposition: String, _ series: String) -> Double? {
        for line in exposition.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.dropFirst(series.count + 1))
        }
        return nil
    }

    @Test func metricsFollowPrometheusConventionsAndCountRealWork() throws {
        let harness = try Harness()
        let redisPort = try harness.servers.startExtraRedis()
        defer { harness.servers.stopExtraRedis(port: redisPort) }
        var config = harness.configuration()
        config.redis = try RedisEndpoint.parse("redis://127.0.0.1:\(redisPort)/0")
        config.summaryIntervalNanoseconds = 200_000_000
        let statistics = WorkerStatistics()
        let metrics = WorkerMetrics(version: BuildInfo.version)
        let port = TestServers.freePort()
        let server = try StatusServer.start(address: try #require(try ListenAddress.parse("127.0.0.1:\(port)")), statistics: statistics, metrics: metrics)
        defer { server.stop() }
        #expect(Self.get("/healthz", port: port)?.status == 200, "alive before the worker even starts")
        #expect(Self.get("/readyz", port: port)?.status == 503, "not ready before it has connected")

        let handle = WorkerHandle.start(configuration: config, logger: Harness.workerLogger(harness.logs, level: .info), statistics: statistics, metrics: metrics)
        defer { handle.stop(); _ = handle.wait(seconds: 10) }
        for i in 1...5 { try harness.sql(DeliveryTests.settledTrade(7000 + i, "0xmetric\(i)")) }
        try harness.sql("INSERT INTO wallets (telegram_id, address) VALUES (7100, '0xMW')")
        try harness.waitUntilProcessed()
        // Connected too: on a loaded machine (the whole suite in parallel on two cores) a starved
        // worker thread can miss a heartbeat deadline and be reconnecting at the moment of the scrape.
        func ready(_ s: WorkerStatistics.Snapshot) -> Bool { s.redisInfo != nil && s.eventsProcessed >= 6 && s.active && s.listening && s.postgresUp && s.redisUp }
        let deadline = Date().addingTimeInterval(20)
        while !ready(statistics.snapshot) && Date() < deadline { usleep(10_000) }
        #expect(ready(statistics.snapshot), "worker log tail:\n\(harness.logs.captured.suffix(20).joined(separator: "\n"))")

        let response = try #require(Self.get("/metrics", port: port))
        #expect(response.status == 200)
        let text = response.body
        #expect(Self.sample(text, #"cache_invalidator_events_total{kind="trade_settled"}"#) == 5)
        #expect(Self.sample(text, #"cache_invalidator_events_total{kind="wallet_created"}"#) == 1)
        #expect(Self.sample(text, #"cache_invalidator_events_total{kind="table_truncated"}"#) == 0, "every kind is exported from the start")
        // trade_settled deletes wallet_balance, portfolio, main_menu, user_state and tx: 5 keys each.
        #expect(Self.sample(text, #"cache_invalidator_keys_total{kind="trade_settled"}"#) == 25)
        #expect(Self.sample(text, "cache_invalidator_lag_seconds_count") == 6)
        #expect(Self.sample(text, #"cache_invalidator_lag_seconds_bucket{le="300.0"}"#) == 6)
        #expect(Self.sample(text, "cache_invalidator_active") == 1)
        #expect(Self.sample(text, "cache_invalidator_listening") == 1)
        #expect(Self.sample(text, "cache_invalidator_redis_up") == 1)
        #expect(Self.sample(text, "cache_invalidator_postgres_up") == 1)
        #expect(Self.sample(text, "cache_invalidator_backlog_events") == 0)
        #expect((Self.sample(text, "cache_invalidator_redis_used_memory_bytes") ?? 0) > 0, "the cache's INFO figures are exported")
        #expect(Self.sample(text, "cache_invalidator_redis_connected_clients") != nil)
        #expect(Self.sample(text, #"cache_invalidator_build_info{version="\#(BuildInfo.version)"}"#) == 1)

        // Conventions: one prefix, help and type on every family, _total on counters, no keys or ids.
        var types: [String: String] = [:]
        var helped: Set<String> = []
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ", maxSplits: 3)
            if line.hasPrefix("# TYPE ") { types[String(parts[2])] = String(parts[3]) }
            if line.hasPrefix("# HELP "), parts.count == 4, !parts[3].isEmpty { helped.insert(String(parts[2])) }
            if !line.hasPrefix("#") { #expect(line.hasPrefix("cache_invalidator_"), "\(line)") }
        }
        #expect(types.count >= 30, "\(types.keys.sorted())")
        for (name, type) in types {
            #expect(helped.contains(name), "\(name) has no help text")
            if type == "counter" { #expect(name.hasSuffix("_total"), "counter \(name) lacks _total") }
        }
        #expect(!text.contains("0xmetric") && !text.contains("7001") && !text.contains(harness.prefix), "no cache keys or user ids in metrics")

        // Redis goes away: not ready, and says why; still alive.
        harness.servers.stopExtraRedis(port: redisPort)
        try harness.sql(DeliveryTests.settledTrade(7009, "0xmetric9"))
        let notReadyBy = Date().addingTimeInterval(10)
        var readiness = Self.get("/readyz", port: port)
        while readiness?.status != 503 && Date() < notReadyBy { usleep(20_000); readiness = Self.get("/readyz", port: port) }
        #expect(readiness?.status == 503 && readiness?.body.contains("redis unreachable") == true, "\(String(describing: readiness))")
        #expect(Self.get("/healthz", port: port)?.status == 200)
        #expect(Self.sample(Self.get("/metrics", port: port)?.body ?? "", "cache_invalidator_redis_up") == 0)
        _ = try harness.servers.startExtraRedis(port: redisPort)
        let readyBy = Date().addingTimeInterval(10)
        while Self.get("/readyz", port: port)?.status != 200 && Date() < readyBy { usleep(20_000) }
        #expect(Self.get("/readyz", port: port)?.status == 200)
    }

    /// Garbage, oversized and truncated requests get an error or a closed connection, and the
    /// next scrape is answered as usual.
    @Test func hostileRequestsDoNotBreakTheEndpoint() throws {
        let statistics = WorkerStatistics()
        let port = TestServers.freePort()
        let server = try StatusServer.start(address: try #require(try ListenAddress.parse("127.0.0.1:\(port)")), statistics: statistics, metrics: WorkerMetrics(version: "test"))
        defer { server.stop() }
        // Each hostile request, and what may come back (nil: the connection is closed unanswered).
        let hostile: [([UInt8], Set<Int?>)] = [
            ([0, 1, 2, 255, 254] + Array("GARBAGE\r\n\r\n".utf8), [400]),
            (Array("GET /metrics HTTP/1.1\r\nX-Big: \(String(repeating: "a", count: 200_000))\r\n\r\n".utf8), [431, nil]),
            (Array("GET /metrics HTTP/1.1\r\nHost: x".utf8), [nil]),
            (Array("POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello".utf8), [405]),
            (Array("GET /../../etc/passwd HTTP/1.1\r\n\r\n".utf8), [404]),
            (Array("GET /metrics HTTP/9.9\r\n\r\n".utf8), [505]),
            (Array("GET http://evil/metrics HTTP/1.1\r\n\r\n".utf8), [400]),
            (Array("GET  /metrics HTTP/1.1\r\n\r\n".utf8), [400]),
            (Array("get /metrics HTTP/1.1\r\n\r\n".utf8), [400]),
            (Array("\r\n\r\n".utf8), [400]),
        ]
        for (raw, allowed) in hostile {
            let started = Date()
            let response = Self.request(port: port, raw: raw)
            #expect(allowed.contains(response?.status), "\(String(decoding: raw.prefix(40), as: UTF8.self).debugDescription) got \(String(describing: response?.status))")
            #expect(Date().timeIntervalSince(started) < 4, "a hostile request is cut off within the read timeout")
            #expect(response?.body.contains("root:") != true, "never serves files")
            #expect(Self.get("/healthz", port: port)?.status == 200, "still answering after \(String(decoding: raw.prefix(40), as: UTF8.self).debugDescription)")
        }
        #expect(Self.get("/metrics?x=1", port: port)?.status == 200, "a query string is ignored")
        #expect(Self.get("/nope", port: port)?.status == 404)
    }

    @Test func aTakenPortIsRefusedWithTheReason() throws {
        let port = TestServers.freePort()
        let address = try #require(try ListenAddress.parse("127.0.0.1:\(port)"))
        let first = try StatusServer.start(address: address, statistics: WorkerStatistics(), metrics: WorkerMetrics(version: "test"))
        defer { first.stop() }
        #expect {
            _ = try StatusServer.start(address: address, statistics: WorkerStatistics(), metrics: WorkerMetrics(version: "test"))
        } throws: { error in
            "\(error)".contains("cannot listen on 127.0.0.1:\(port)") && "\(error)".contains("--metrics-address")
        }
    }
}
