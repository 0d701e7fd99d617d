import InvalidationCore
import Testing

@Suite("ListenAddress.parse")
struct ListenAddressTests {
    @Test func acceptsAddressesAndOff() throws {
        #expect(try ListenAddress.parse("127.0.0.1:9187") == ListenAddress(family: .ipv4, ip: "127.0.0.1", port: 9187))
        #expect(try ListenAddress.parse(" 0.0.0.0:80 ") == ListenAddress(family: .ipv4, ip: "0.0.0.0", port: 80))
        #expect(try ListenAddress.parse("[::1]:9187") == ListenAddress(family: .ipv6, ip: "::1", port: 9187))
        #expect(try ListenAddress.parse("[::]:65535")?.port == 65535)
        #expect(try ListenAddress.parse("off") == nil)
        #expect(try ListenAddress.parse("OFF") == nil)
        #expect(try ListenAddress.parse("[::1]:9187")?.description == "[::1]:9187")
    }

    @Test(arguments: [
        ("", "the port is missing"), ("9187", "the port is missing"), ("127.0.0.1", "the port is missing"),
        ("127.0.0.1:", "from 1 to 65535"), ("127.0.0.1:0", "from 1 to 65535"), ("127.0.0.1:65536", "from 1 to 65535"),
        ("127.0.0.1:-1", "from 1 to 65535"), ("127.0.0.1:+80", "from 1 to 65535"), ("127.0.0.1:99999999999999999999", "from 1 to 65535"),
        ("localhost:9187", "host names are not accepted"), ("127.1:9187", "not an IPv4 address"), ("256.0.0.1:9187", "not an IPv4 address"),
        ("::1:9187", "in brackets"), ("[::1:9187", "closing ]"), ("[::1]9187", "port is missing"), ("[zz]:9187", "not an IPv6 address"),
        ("127.0.0.1 :9187", "unexpected characters"), ("127.0.0.1:9187\n", "unexpected characters"), ("127.0.0.１:9187", "unexpected characters"),
        (String(repeating: "1", count: 100) + ":1", "unexpected characters"), (":9187", "not an IPv4 address"),
    ])
    func refusesWithTheReason(_ text: String, _ reason: String) {
        #expect {
            _ = try ListenAddress.parse(text)
        } throws: { error in
            "\(error)".contains(reason) && "\(error)".contains("127.0.0.1:9187")
        }
    }
}

@Suite("RedisInfo.parse")
struct RedisInfoTests {
    @Test func readsTheFiguresFromARealShapedReply() {
        let text = "# Server\r\nredis_version:7.0.15\r\n\r\n# Clients\r\nconnected_clients:3\r\n# Memory\r\nused_memory:1048576\r\nmaxmemory:0\r\n# Stats\r\nkeyspace_hits:10\r\nkeyspace_misses:2\r\nevicted_keys:0\r\nexpired_keys:7\r\n"
        let info = RedisInfo.parse(text)
        #expect(info.connectedClients == 3)
        #expect(info.usedMemoryBytes == 1_048_576)
        #expect(info.maxmemoryBytes == 0)
        #expect(info.keyspaceHits == 10 && info.keyspaceMisses == 2)
        #expect(info.evictedKeys == 0 && info.expiredKeys == 7)
    }

    @Test(arguments: ["", "garbage", "keyspace_hits", "keyspace_hits:", "keyspace_hits:-5", "keyspace_hits:1e400", "keyspace_hits:nan",
                      "keyspace_hits:inf", "keyspace_hits:12 ", "keyspace_hits:0x10", "keyspace_hits:" + String(repeating: "9", count: 400),
                      "keyspace_hits:1\u{0}2", "# keyspace_hits:5", "\u{FEFF}keyspace_hits:5"])
    func hostileValuesAreAbsentNeverGuessed(_ text: String) {
        #expect(RedisInfo.parse(text).keyspaceHits == nil)
    }

    @Test func lfOnlyAndDuplicateFieldsAreHandled() {
        #expect(RedisInfo.parse("keyspace_hits:1\nkeyspace_hits:2\n").keyspaceHits == 2)
        #expect(RedisInfo.parse("used_memory:5\rmaxmemory:6").maxmemoryBytes == 6)
    }
}

@Suite("HTTPRequestHead.parse")
struct HTTPRequestHeadTests {
    @Test func parsesWhatScrapersAndProbesSend() {
        #expect(HTTPRequestHead.parse(Array("GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n".utf8)) == .complete(HTTPRequestHead(method: "GET", path: "/metrics")))
        #expect(HTTPRequestHead.parse(Array("GET /readyz?verbose=1 HTTP/1.0\n\n".utf8)) == .complete(HTTPRequestHead(method: "GET", path: "/readyz")))
        #expect(HTTPRequestHead.parse(Array("GET /metrics HTTP/1.1\r\nHost: x\r\n".utf8)) == .incomplete)
        #expect(HTTPRequestHead.parse([]) == .incomplete)
    }

    @Test(arguments: [
        ("\0\0\0\r\n\r\n", 400), ("GET\r\n\r\n", 400), ("GET /metrics\r\n\r\n", 400), ("GET /metrics HTTP/1.1 extra\r\n\r\n", 400),
        ("GET  /metrics HTTP/1.1\r\n\r\n", 400), ("get /metrics HTTP/1.1\r\n\r\n", 400), ("GET metrics HTTP/1.1\r\n\r\n", 400),
        ("GET http://x/metrics HTTP/1.1\r\n\r\n", 400), ("GET /metrics HTTP/2\r\n\r\n", 505), ("GET /metrics SPDY/3\r\n\r\n", 505),
        ("GET /m\u{e9}trics HTTP/1.1\r\n\r\n", 400), ("G\u{7f}T /metrics HTTP/1.1\r\n\r\n", 400),
    ])
    func refusesMalformedRequestLines(_ text: String, _ status: Int) {
        guard case .refused(let got, _) = HTTPRequestHead.parse(Array(text.utf8)) else {
            Issue.record("\(text.debugDescription) was not refused")
            return
        }
        #expect(got == status)
    }

    @Test func oversizedHeadsAreRefusedWithoutWaitingForTheEnd() {
        let endless = Array("GET /metrics HTTP/1.1\r\nX: ".utf8) + Array(repeating: UInt8(ascii: "a"), count: HTTPRequestHead.maximumBytes)
        #expect(HTTPRequestHead.parse(endless) == .refused(status: 431, reason: "request head over 8192 bytes"))
        let long = Array("GET /metrics HTTP/1.1\r\nX: ".utf8) + Array(repeating: UInt8(ascii: "a"), count: 9000) + Array("\r\n\r\n".utf8)
        guard case .refused(431, _) = HTTPRequestHead.parse(long) else { Issue.record("not refused"); return }
    }
}
