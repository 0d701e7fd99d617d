import Foundation
import Glibc
import Testing

/// `scripts/bench` refuses a bad knob before it starts anything, naming the variable. PG_SETTINGS
/// above all: pg_ctl hands PostgreSQL's options to a shell, so only plain `name=value` may pass.
@Suite("scripts/bench knobs")
struct BenchKnobTests {
    static let bench = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("scripts/bench").path

    /// Runs the bench with `environment` (plus PATH): a refused knob ends it within a second, so
    /// one accepted by mistake (which starts servers and builds) is killed after 30 s.
    static func run(_ environment: [String: String]) throws -> (status: Int32, output: String) {
        try TestServers.runBounded("/bin/bash", [bench], environment: environment, what: "scripts/bench with \(environment) (the knob was accepted)")
    }

    @Test(arguments: [
        ["PG_SETTINGS": "shared_buffers=1GB;touch /tmp/bench-pwned"],
        ["PG_SETTINGS": "work_mem=$(id)"],
        ["PG_SETTINGS": "max_wal_size=4GB `id`"],
        ["PG_SETTINGS": "shared_buffers"],
        ["PG_SETTINGS": "=1GB"],
        ["PG_SETTINGS": "Shared_Buffers=1GB"],
        ["PG_SETTINGS": "work_mem='64MB'"],
        ["PG_SETTINGS": "work_mem=*"],
        ["PROBES": "3e3"],
        ["PROBES": "-1"],
        ["PROBES": "0"],
        ["CLIENTS": "8 x"],
        ["CLIENTS": "0"],
        ["CLIENTS": " "],
        ["DRAIN_SIZES": "1,000,000"],
        ["SKIP_LAG": "yes"],
        ["SKIP_BOT_LATENCY": "true"],
        ["BOT_LATENCY_SECONDS": "5s"],
        ["BOT_LATENCY_ROUNDS": "0"],
        ["LOAD_PROFILE": "pg"],
        ["PROFILE_CONNECTIONS": "0"],
        ["PROFILE_CLIENTS": "8x"],
        ["PROFILE_USERS": "1e4"],
        ["PROFILE_CONNECTIONS": "87"],
        ["DRAIN_KEYS": "yes"],
        ["REDIS_CLUSTER": "yes"],
        ["REDIS_CLUSTER": "2"],
    ])
    func badKnobsAreRefusedByName(_ environment: [String: String]) throws {
        let (status, output) = try Self.run(environment)
        let name = environment.keys.first!
        #expect(status == 1, "exit \(status): \(output)")
        #expect(output.contains("bench: error: \(name)"), "\(output)")
        #expect(!FileManager.default.fileExists(atPath: "/tmp/bench-pwned"))
    }

    /// Plain settings pass their check: the first refusal is then the later, bad knob's.
    @Test func plainSettingsPass() throws {
        let (status, output) = try Self.run(["PG_SETTINGS": "shared_buffers=1GB max_wal_size=4GB autovacuum=off checkpoint_timeout=15min", "SKIP_LAG": "yes"])
        #expect(status == 1)
        #expect(output.contains("bench: error: SKIP_LAG"), "\(output)")
    }
}
