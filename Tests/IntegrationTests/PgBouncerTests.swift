import CacheInvalidator
import Foundation
import Glibc
import PostgresClient
import Testing

/// The worker behind PgBouncer: in session mode a session is a server connection of its own and
/// everything works; in transaction mode LISTEN hears nothing (and session locks are shared),
/// which the worker must refuse loudly rather than run as if all were well.
@Suite("Behind PgBouncer")
struct PgBouncerTests {
    /// One PgBouncer per mode for the whole suite, in front of the shared test server.
    static let session = Result { try PgBouncer(poolMode: .session, backendPort: try TestServers.get().postgresPort) }
    static let transaction = Result { try PgBouncer(poolMode: .transaction, backendPort: try TestServers.get().postgresPort) }

    @Test func inTransactionModeTheWorkerRefusesAndSaysWhy() throws {
        let bouncer = try Self.transaction.get()
        let harness = try Harness()
        harness.startWorker { config in
            config.databaseURL = bouncer.url(database: harness.databaseName)
            config.listenProbeTimeoutSeconds = 1
            config.reconnectMaximumMilliseconds = 300
        }
        try harness.waitFor("refused") { $0.postgresUnfit != nil }
        let readiness = Readiness.of(harness.worker!.statistics.snapshot)
        #expect(!readiness.ready && readiness.reason.contains("LISTEN does not work"), "\(readiness)")
        try harness.waitForLogLines(containing: "LISTEN does not work through", count: 1)
        let line = try #require(harness.logs.captured.first { $0.contains("LISTEN does not work through") })
        #expect(line.contains("level=error") && line.contains("session mode"), "\(line)")
        // It never led: no lock taken, no LISTEN, nothing acknowledged through the pooler.
        try harness.sql(DeliveryTests.settledTrade(5, "0xbounced"))
        usleep(1_500_000)
        let snapshot = harness.worker!.statistics.snapshot
        #expect(snapshot.takeovers == 0 && snapshot.eventsProcessed == 0 && !snapshot.active, "\(snapshot)")
        #expect(try harness.pendingCount == 1)
        #expect(harness.logs.captured.filter { $0.contains("LISTEN does not work through") && !$0.contains("level=debug") }.count == 1, "once per outage")

        var check = HealthCheck(configuration: harness.configuration())
        check.configuration.databaseURL = bouncer.url(database: harness.databaseName)
        check.configuration.listenProbeTimeoutSeconds = 1
        let listen = check.run().first { $0.subject == "listen" }
        #expect(listen?.ok == false && listen?.detail.contains("pool_mode") == true, "\(String(describing: listen))")
        harness.stopWorker()
    }

    @Test(arguments: RuleTableTests.cases + RuleTableTests.truncateCases)
    func inSessionModeEveryRowOfTheRuleTablePasses(_ testCase: RuleTableTests.Case) throws {
        let bouncer = try Self.session.get()
        try RuleTableTests.check(testCase) { bouncer.url(database: $0) }
    }

    @Test func inSessionModeCheckPasses() throws {
        let bouncer = try Self.session.get()
        let harness = try Harness()
        var check = HealthCheck(configuration: harness.configuration())
        check.configuration.databaseURL = bouncer.url(database: harness.databaseName)
        let findings = check.run()
        #expect(findings.first { $0.subject == "listen" }?.ok == true, "\(findings)")
        #expect(findings.first { $0.subject == "primary" }?.ok == true, "\(findings)")
    }
}
