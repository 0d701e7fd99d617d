import Foundation
import Testing
@testable import InvalidationCore

@Suite("RedisEndpoint.parse")
struct RedisEndpointTests {
    @Test(arguments: [
        ("redis://localhost", RedisEndpoint(address: .tcp(host: "localhost", port: 6379))),
        ("redis://localhost/", RedisEndpoint(address: .tcp(host: "localhost", port: 6379))),
        ("  redis://cache.internal:6380  ", RedisEndpoint(address: .tcp(host: "cache.internal", port: 6380))),
        ("REDIS://h", RedisEndpoint(address: .tcp(host: "h", port: 6379))),
        ("redis://h:1/15", RedisEndpoint(address: .tcp(host: "h", port: 1), database: 15)),
        ("redis://h:65535/0", RedisEndpoint(address: .tcp(host: "h", port: 65535))),
        ("redis://worker:p%40ss@10.0.0.5:6379/2",
         RedisEndpoint(address: .tcp(host: "10.0.0.5", port: 6379), username: "worker", password: "p@ss", database: 2)),
        ("redis://w%3Aer:p%2F%3A%20s@h", RedisEndpoint(address: .tcp(host: "h", port: 6379), username: "w:er", password: "p/: s")),
        ("redis://:secret@h", RedisEndpoint(address: .tcp(host: "h", port: 6379), password: "secret")),
        ("redis://invalidator@h", RedisEndpoint(address: .tcp(host: "h", port: 6379), username: "invalidator")),
        ("redis://[::1]", RedisEndpoint(address: .tcp(host: "::1", port: 6379))),
        ("redis://[::1]:6380/3", RedisEndpoint(address: .tcp(host: "::1", port: 6380), database: 3)),
        ("redis://u:pw@[fe80::1]:7000", RedisEndpoint(address: .tcp(host: "fe80::1", port: 7000), username: "u", password: "pw")),
        ("unix:///run/redis/redis.sock", RedisEndpoint(address: .unix(path: "/run/redis/redis.sock"))),
        ("unix:///tmp/redis.sock?db=3", RedisEndpoint(address: .unix(path: "/tmp/redis.sock"), database: 3)),
        ("redis+unix:///tmp/redis.sock?db=0", RedisEndpoint(address: .unix(path: "/tmp/redis.sock"))),
        ("rediss://u:pw@h:6380", RedisEndpoint(address: .tcp(host: "h", port: 6380), username: "u", password: "pw", tls: .init())),
        ("rediss://h/2?cacert=/etc/ssl/ca.pem&cert=/c.pem&key=/k.pem&sni=cache.example",
         RedisEndpoint(address: .tcp(host: "h", port: 6379), database: 2,
                       tls: .init(caFile: "/etc/ssl/ca.pem", certificateFile: "/c.pem", keyFile: "/k.pem", serverName: "cache.example"))),
        ("rediss://h?cacert=/a%20b/ca.pem", RedisEndpoint(address: .tcp(host: "h", port: 6379), tls: .init(caFile: "/a b/ca.pem"))),
        ("redis-sentinel://s1,s2:26380,[::1]:26381/mymaster",
         RedisEndpoint(address: .tcp(host: "s1", port: 26379),
                       sentinel: .init(nodes: [.init(host: "s1", port: 26379), .init(host: "s2", port: 26380), .init(host: "::1", port: 26381)], masterName: "mymaster"))),
        ("redis-sentinel://worker:p%40ss@10.0.0.1:26379/cache/3?sentinel_user=sen&sentinel_password=s%26p",
         RedisEndpoint(address: .tcp(host: "10.0.0.1", port: 26379), username: "worker", password: "p@ss", database: 3,
                       sentinel: .init(nodes: [.init(host: "10.0.0.1", port: 26379)], masterName: "cache", username: "sen", password: "s&p"))),
        ("rediss-sentinel://s1/m?cacert=/ca.pem&sentinel_password=x",
         RedisEndpoint(address: .tcp(host: "s1", port: 26379), tls: .init(caFile: "/ca.pem"),
                       sentinel: .init(nodes: [.init(host: "s1", port: 26379)], masterName: "m", password: "x"))),
    ])
    func parses(url: String, expected: RedisEndpoint) throws {
        #expect(try RedisEndpoint.parse(url) == expected)
    }

    @Test(arguments: [
        ("", "is empty"),
        ("   ", "is empty"),
        ("http://h", #"has scheme "http"; expected redis://, rediss://, unix:// or redis-sentinel://"#),
        ("rediss://h?ca=/x", #"has unknown parameter "ca" (rediss:// takes cacert, cert, key, sni)"#),
        ("rediss://h?cacert=", "has an empty cacert="),
        ("rediss://h?key=/k.pem", "has key= without cert="),
        ("redis://h?cacert=/x", "TLS settings go with rediss://"),
        ("redis-sentinel://s1", "names no master"),
        ("redis-sentinel://s1/", "names no master"),
        ("redis-sentinel:///m", #"has sentinel """#),
        ("redis-sentinel://s1,,s2/m", #"has sentinel """#),
        ("redis-sentinel://s1:0/m", #"has sentinel "s1:0""#),
        ("redis-sentinel://s1:99999/m", #"has sentinel "s1:99999""#),
        ("redis-sentinel://s1:2:3/m", #"has sentinel "s1:2:3""#),
        ("redis-sentinel://[::1/m", "has sentinel"),
        ("redis-sentinel://s 1/m", "has sentinel"),
        ("redis-sentinel://s1/m/x", #"has database "x""#),
        ("redis-sentinel://s1/m/1/2", "more than master/db"),
        ("redis-sentinel://s1/m?cacert=/ca.pem", #"has unknown parameter "cacert""#),
        ("redis-sentinel://s1/m?db=2", #"has unknown parameter "db""#),
        ("rediss-sentinel://s1/m?key=/k", "has key= without cert="),
        ("redis://", "has no host"),
        ("redis:///0", "has no host"),
        ("redis://h:0", "has port 0; expected 1-65535"),
        ("redis://h:70000", "has port 70000; expected 1-65535"),
        ("redis://h:abc", "is not a URL"),
        ("redis://h/x", #"has database "x"; expected a number such as /0"#),
        ("redis://h/-1", #"has database "-1""#),
        ("redis://h/1/2", #"has database "1/2""#),
        ("redis://h/70000", #"has database "70000""#),
        ("redis://h?db=1", "has query parameters (db), which are not supported for redis://"),
        ("redis://h\n", "contains a control character"),
        ("redis://h\nFLUSHALL", "contains a control character"),
        ("redis://h\u{0}", "contains a control character"),
        ("not a url", "is not a URL"),
        ("localhost:6379", #"has scheme "localhost""#),
        ("unix://", "has no socket path"),
        ("unix:///tmp/r.sock?db=x", "has db=x"),
        ("unix:///tmp/r.sock?timeout=1", #"has unknown parameter "timeout" (only db is supported)"#),
    ])
    func refuses(url: String, reason: String) {
        let error = #expect(throws: RedisEndpoint.ParseError.self) { try RedisEndpoint.parse(url) }
        #expect(error?.reason.contains(reason) == true, "reason \(error?.reason.debugDescription ?? "nil") lacks \(reason.debugDescription)")
        #expect(error?.description.hasPrefix("REDIS_URL ") == true)
    }

    @Test(arguments: [
        ("redis://worker:s3cr3t-Pa55@h:6379/1", "redis://worker:***@h:6379/1"),
        ("redis://:s3cr3t-Pa55@h", "redis://:***@h:6379/0"),
        ("redis://u:s3cr3t%2DPa55@[::1]:6380", "redis://u:***@[::1]:6380/0"),
        ("unix://u:s3cr3t-Pa55@/tmp/r.sock?db=2", "unix://u:***@/tmp/r.sock?db=2"),
        ("redis://u@h", "redis://u@h:6379/0"),
        ("redis://h", "redis://h:6379/0"),
        ("rediss://u:s3cr3t-Pa55@h?cacert=/ca.pem", "rediss://u:***@h:6379/0"),
        ("redis-sentinel://u:s3cr3t-Pa55@s1,s2:26380/mymaster/1?sentinel_password=s3cr3t-Pa55", "redis-sentinel://u:***@s1:26379,s2:26380/mymaster/1"),
    ])
    func descriptionHidesThePassword(url: String, expected: String) throws {
        let endpoint = try RedisEndpoint.parse(url)
        #expect(endpoint.description == expected)
        #expect(!endpoint.description.contains("s3cr3t"))
        #expect(!String(describing: endpoint).contains("s3cr3t"))
    }

    @Test func descriptionHidesAnyPassword() {
        for password in ["hunter2", "p@ss", "***", ":", "h"] {
            let endpoint = RedisEndpoint(address: .tcp(host: "cache", port: 6379), username: "u", password: password)
            #expect(endpoint.description == "redis://u:***@cache:6379/0")
        }
        #expect(RedisEndpoint(address: .unix(path: "/s"), password: "hunter2").description == "unix://:***@/s?db=0")
    }

    @Test(arguments: [
        "http://u:topsecret@h", "redis://u:topsecret@h:0", "redis://u:topsecret@h/x",
        "redis://u:topsecret@h?x=1", "redis://u:topsecret@h\n", "unix://u:topsecret@/tmp/s?foo=1", "redis://u:topsecret@h:abc",
        "redis://u:topsecret@", "rediss://u:topsecret@h?bad=1", "redis-sentinel://u:topsecret@s1", "redis-sentinel://u:topsecret@s1/m?x=topsecret",
        "redis-sentinel://u:topsecret@s1:0/m", "rediss-sentinel://u:topsecret@s1/m?key=/k",
    ])
    func errorsNeverContainThePassword(url: String) {
        let error = #expect(throws: RedisEndpoint.ParseError.self) { try RedisEndpoint.parse(url) }
        #expect(error.map { !$0.description.contains("topsecret") } == true)
    }
}

@Suite("MigrationCatalog.parse")
struct MigrationCatalogTests {
    @Test func pairsSortedByVersion() throws {
        let migrations = try MigrationCatalog.parse(fileNames: [
            "0002_ack_role.down.sql", "README.md", "0001_events.up.sql", "0010_partitions.up.sql",
            "0002_ack_role.up.sql", "0001_events.down.sql", "0010_partitions.down.sql", ".DS_Store", "notes.txt",
        ])
        #expect(migrations == [
            Migration(version: 1, name: "events", upFile: "0001_events.up.sql", downFile: "0001_events.down.sql"),
            Migration(version: 2, name: "ack_role", upFile: "0002_ack_role.up.sql", downFile: "0002_ack_role.down.sql"),
            Migration(version: 10, name: "partitions", upFile: "0010_partitions.up.sql", downFile: "0010_partitions.down.sql"),
        ])
    }

    @Test func versionsSortNumericallyNotAsText() throws {
        let migrations = try MigrationCatalog.parse(fileNames: ["10000_b.up.sql", "10000_b.down.sql", "9999_a.up.sql", "9999_a.down.sql"])
        #expect(migrations.map(\.version) == [9999, 10000])
    }

    @Test func emptyListingIsNoMigrations() throws {
        #expect(try MigrationCatalog.parse(fileNames: []) == [])
        #expect(try MigrationCatalog.parse(fileNames: ["README.md", "up.sql.bak"]) == [])
    }

    @Test(arguments: [
        (["0001_events.up.sql"], "0001_events.up.sql has no matching .down.sql"),
        (["0001_events.down.sql"], "0001_events.down.sql has no matching .up.sql"),
        (["1_x.up.sql", "1_x.down.sql"], "1_x.down.sql: the version must be a zero-padded number of at least 4 digits"),
        (["abcd_x.up.sql"], "abcd_x.up.sql: the version must be a zero-padded number"),
        (["0000_x.up.sql"], "0000_x.up.sql: the version must be"),
        (["０００１_x.up.sql"], "the version must be"),
        (["0001_a.up.sql", "0001_b.up.sql", "0001_a.down.sql"], "0001_b.up.sql and 0001_a.up.sql share version 1"),
        (["0001_a.up.sql", "0001_a.down.sql", "00001_a.down.sql"], "share version 1"),
        (["0001_events.up.sql", "0001_event.down.sql"], "0001_events.up.sql and 0001_event.down.sql have different names"),
        (["0001_Events.up.sql", "0001_Events.down.sql"], "the name must be lower-case letters, digits and _"),
        (["0001_my-events.up.sql"], "the name must be lower-case letters, digits and _"),
        (["0001_.up.sql"], "0001_.up.sql: the name must be"),
        (["0001_events.sql"], "0001_events.sql: a migration file must end in .up.sql or .down.sql"),
        (["0001.up.sql"], "0001.up.sql: expected NNNN_name.up.sql"),
    ])
    func refuses(files: [String], reason: String) {
        let error = #expect(throws: MigrationCatalog.Problem.self) { try MigrationCatalog.parse(fileNames: files) }
        #expect(error?.reason.contains(reason) == true, "reason \(error?.reason.debugDescription ?? "nil") lacks \(reason.debugDescription)")
    }

    @Test func shippedMigrationsAreACompleteCatalog() throws {
        let directory = Fixture.repositoryRoot().appendingPathComponent("migrations").path
        let files = try FileManager.default.contentsOfDirectory(atPath: directory)
        let migrations = try MigrationCatalog.parse(fileNames: files)
        #expect(!migrations.isEmpty)
        #expect(migrations.first?.version == 1)
    }
}
