import InvalidationCore
import PostgresClient
import RedisClient

/// `cache-invalidator check`: everything the worker depends on, verified once, one line per
/// finding, so it can gate a deploy or run from cron.
public struct HealthCheck {
    public struct Finding: Sendable, Equatable, CustomStringConvertible {
        public var ok: Bool
        public var subject: String
        public var detail: String
        public var description: String { "\(ok ? "ok  " : "FAIL") \(subject): \(detail)" }
    }

    /// The schema version this worker reads (0002_cache_invalidation).
    public static let requiredSchemaVersion: Int64 = 2
    /// The newest schema version shipped (0005_pending_queue).
    public static let latestSchemaVersion: Int64 = 5

    public var configuration: WorkerConfiguration
    public var maximumBacklog: Int64 = 10_000
    public var maximumOldestAgeSeconds: Double = 60
    public var maximumQueueUsage: Double = 0.5

    public init(configuration: WorkerConfiguration) {
        self.configuration = configuration
    }

    public func run() -> [Finding] {
        var findings = postgresFindings()
        findings.append(redisFinding())
        return findings
    }

    private func postgresFindings() -> [Finding] {
        let connection: PGConnection
        do {
            connection = try PGConnection(conninfo: configuration.databaseURL, applicationName: "cache-invalidator check")
        } catch {
            return [Finding(ok: false, subject: "postgres", detail: "\(error)")]
        }
        var findings: [Finding] = []
        func query(_ sql: String, _ parameters: [String?] = []) throws(PostgresError) -> PGRows {
            parameters.isEmpty ? try connection.execute(sql) : try connection.execute(sql, parameters)
        }
        do {
            let version = try query("SELECT current_setting('server_version'), current_user")
            findings.append(Finding(ok: true, subject: "postgres", detail: "connected to \(connection.target) as \(version[0, 1] ?? "?") (PostgreSQL \(version[0, 0] ?? "?"))"))
            findings += try sessionFindings(connection)
            let schema = try query("SELECT to_regclass('cache_invalidation.events') IS NOT NULL")
            guard schema[0, 0] == "t" else {
                findings.append(Finding(ok: false, subject: "migrations", detail: "cache_invalidation.events does not exist (or this role cannot see it); apply the migrations: cache-invalidator migrate"))
                return findings
            }
            switch try EventLog.schemaVersion(on: connection) {
            case nil:
                findings.append(Finding(ok: true, subject: "migrations", detail: "event log present (version table not readable by this role)"))
            case let version? where version > Self.latestSchemaVersion:
                findings.append(Finding(ok: false, subject: "migrations", detail: "schema version \(version) is newer than this release knows (up to \(Self.latestSchemaVersion)); upgrade cache-invalidator to the release that ships migration \(version) (the worker keeps working meanwhile, but may not follow what that migration changed)"))
            case let version? where version < Self.requiredSchemaVersion:
                findings.append(Finding(ok: false, subject: "migrations", detail: "schema version \(version), this worker needs \(Self.requiredSchemaVersion); apply the migrations: cache-invalidator migrate up"))
            case let version?:
                findings.append(Finding(ok: true, subject: "migrations", detail: "schema version \(version)" + (version < Self.latestSchemaVersion ? " (works; apply the pending migrations: 0003 quiet_notify spares the bot's writes their NOTIFY while the worker is busy, 0004 private_channel saves a round trip of lag per event, 0005 pending_queue makes acknowledging an event a delete from a narrow queue instead of an update of the log)" : "")))
            }
        } catch {
            findings.append(Finding(ok: false, subject: "postgres", detail: "\(error)"))
            return findings
        }
        // Each section on its own: one failing query must not hide the other findings.
        func section(_ subject: String, _ body: () throws(PostgresError) -> [Finding]) {
            do { findings += try body() } catch { findings.append(Finding(ok: false, subject: subject, detail: "\(error)")) }
        }
        // With 0005 the worker acknowledges in the pending queue; before it, in processed_at.
        var queue = false
        section("schema") { () throws(PostgresError) -> [Finding] in
            queue = try EventLog.usesPendingQueue(on: connection)
            return []
        }
        section("privileges") { () throws(PostgresError) -> [Finding] in
            let privileges = try query("""
                SELECT has_schema_privilege('cache_invalidation', 'USAGE'),
                       has_table_privilege('cache_invalidation.events', 'SELECT'),
                       has_column_privilege('cache_invalidation.events', 'processed_at', 'UPDATE'),
                       coalesce((SELECT has_table_privilege(q, 'SELECT') AND has_table_privilege(q, 'DELETE')
                                        AND has_table_privilege(a, 'SELECT') AND has_table_privilege(a, 'INSERT')
                                        AND has_table_privilege(a, 'DELETE')
                                 FROM to_regclass('cache_invalidation.pending') AS q, to_regclass('cache_invalidation.acknowledged') AS a
                                 WHERE q IS NOT NULL AND a IS NOT NULL), false),
                       has_table_privilege('cache_invalidation.events', 'DELETE'),
                       -- Without 0004 there is nothing to grant: counted as granted.
                       coalesce((SELECT has_function_privilege(p, 'EXECUTE')
                                 FROM to_regprocedure('cache_invalidation.listen_privately()') AS p WHERE p IS NOT NULL), true)
                """)
            // One entry per column above, in order, and whether this configuration needs it.
            let needed: [(privilege: String, applies: Bool)] = [
                ("USAGE on schema cache_invalidation", true),
                ("SELECT on cache_invalidation.events", true),
                ("UPDATE (processed_at) on cache_invalidation.events", !queue),
                ("SELECT, DELETE on cache_invalidation.pending and SELECT, INSERT, DELETE on cache_invalidation.acknowledged", queue),
                ("DELETE on cache_invalidation.events (for --retention)", configuration.retentionSeconds > 0),
                ("EXECUTE on function cache_invalidation.listen_privately() (without it every event costs one more round trip of lag)", true),
            ]
            let missing = zip(needed, privileges.rows[0]).filter { $0.0.applies && $0.1 != "t" }.map(\.0.privilege)
            return [Finding(ok: missing.isEmpty, subject: "privileges",
                            detail: missing.isEmpty ? "can read, acknowledge\(configuration.retentionSeconds > 0 ? " and prune" : "") events" : "missing \(missing.joined(separator: ", ")); apply deploy/postgres/roles.sql")]
        }
        section("triggers") { () throws(PostgresError) -> [Finding] in try triggerFindings(connection) }
        section("private channel") { () throws(PostgresError) -> [Finding] in try privateChannelFindings(connection) }
        section("backlog") { () throws(PostgresError) -> [Finding] in
            let backlog = try EventLog.backlog(on: connection, queue: queue)
            let age = String(format: "%.1f", backlog.oldestAgeSeconds)
            let usage = String(format: "%.4f", backlog.queueUsage * 100)
            let backlogOK = backlog.pending <= maximumBacklog && backlog.oldestAgeSeconds <= maximumOldestAgeSeconds
            let queueOK = backlog.queueUsage <= maximumQueueUsage
            var backlogDetail = "\(backlog.pending) events pending, oldest \(age) s"
            if !backlogOK {
                backlogDetail += " (limits: \(maximumBacklog) events, \(Int(maximumOldestAgeSeconds)) s); is a worker running and Redis reachable?"
            }
            var queueDetail = "\(usage) % used"
            if !queueOK {
                queueDetail += "; a listener is not reading (a stuck session LISTENing?): when full, the bot's commits fail"
            }
            return [Finding(ok: backlogOK, subject: "backlog", detail: backlogDetail),
                    Finding(ok: queueOK, subject: "notify queue", detail: queueDetail)]
        }
        return findings

    }

    /// What the worker verifies of every session before using it: a primary, and LISTEN that
    /// hears other sessions (`PostgresFitness`).
    private func sessionFindings(_ connection: PGConnection) throws(PostgresError) -> [Finding] {
        let server = try PostgresFitness.identify(connection)
        if server.inRecovery {
            return [Finding(ok: false, subject: "primary", detail: "\(PostgresUnfit.standby(server: PostgresFitness.reached(connection)))")]
        }
        var findings = [Finding(ok: true, subject: "primary", detail: "\(PostgresFitness.reached(connection)) is the primary" + (server.identity.map { " (\($0))" } ?? ""))]
        do {
            let took = try PostgresFitness.proveListen(on: connection, conninfo: configuration.databaseURL, timeoutSeconds: configuration.listenProbeTimeoutSeconds)
            findings.append(Finding(ok: true, subject: "listen", detail: "a notification from another session arrived in \(formatMilliseconds(UInt64(took * 1e9))) ms"))
        } catch let error as PostgresError {
            throw error
        } catch {
            findings.append(Finding(ok: false, subject: "listen", detail: "\(error)"))
        }
        return findings
    }

    /// With 0004: the private channel's name is still hidden from every other role. A DBA who
    /// disables row-level security or grants the table to a reporting role hands that role the
    /// capability to read users' events off the channel and to forge deletions.
    private func privateChannelFindings(_ connection: PGConnection) throws(PostgresError) -> [Finding] {
        let rows = try connection.execute("""
            SELECT c.relrowsecurity,
                   NOT EXISTS (SELECT 1 FROM aclexplode(c.relacl) a WHERE a.grantee <> c.relowner),
                   c.relowner = e.proowner,
                   coalesce('trace_notify=off' = ANY(e.proconfig), false),
                   coalesce((SELECT 'trace_notify=off' = ANY(l.proconfig) FROM pg_proc l
                             WHERE l.oid = to_regprocedure('cache_invalidation.listen_privately()')), false),
                   c.relpersistence = 'u',
                   -- pg_stat_statements.track = all records statements run inside functions, the
                   -- LISTEN included, for every role with pg_read_all_stats to read.
                   coalesce(current_setting('pg_stat_statements.track', true), 'top') <> 'all'
                   OR coalesce(current_setting('pg_stat_statements.track_utility', true), 'on') = 'off'
            FROM pg_class c, pg_proc e
            WHERE c.oid = to_regclass('cache_invalidation.private_channel')
              AND e.oid = to_regprocedure('cache_invalidation.emit(text,jsonb)')
            """)
        guard let row = rows.rows.first else { return [] }  // 0004 not applied
        let schemaProblems = zip([
            "row-level security is off on cache_invalidation.private_channel",
            "cache_invalidation.private_channel is granted to other roles",
            "cache_invalidation.private_channel does not belong to emit()'s owner",
            "emit() does not run with trace_notify = off",
            "listen_privately() does not run with trace_notify = off",
            "cache_invalidation.private_channel is not unlogged (replicas and change-data-capture carry its name)",
        ], row).filter { $0.1 != "t" }.map(\.0)
        var problems = schemaProblems
        if row[6] != "t" {
            problems.append("pg_stat_statements.track = all records the name for roles with pg_read_all_stats (set it to top, or pg_stat_statements.track_utility = off)")
        }
        guard !problems.isEmpty else {
            return [Finding(ok: true, subject: "private channel", detail: "its name is hidden from other roles (row-level security, no grants, unlogged, trace_notify off)")]
        }
        var detail = problems.joined(separator: "; ") + ": other roles may read users' events off the channel or forge deletions"
        if !schemaProblems.isEmpty { detail += "; re-apply migrations/0004_private_channel.up.sql" }
        return [Finding(ok: false, subject: "private channel", detail: detail)]
    }

    /// Every expected trigger exists on its table and is enabled: a DBA who recreates or alters a
    /// table can silently lose them, and then nothing is invalidated for that table.
    private func triggerFindings(_ connection: PGConnection) throws(PostgresError) -> [Finding] {
        let (problems, expected) = try EventLog.triggerProblems(on: connection)
        return problems.isEmpty
            ? [Finding(ok: true, subject: "triggers", detail: "all \(expected) in place and enabled")]
            : problems.map { Finding(ok: false, subject: "triggers", detail: "\($0); re-apply migrations/0002_cache_invalidation.up.sql (or ALTER TABLE ... ENABLE TRIGGER)") }
    }

    private func redisFinding() -> Finding {
        let endpoint = configuration.redis
        do {
            let target = try endpoint.open(timeoutMilliseconds: configuration.redisTimeoutMilliseconds)
            let connection = try target.anyConnection()
            // Deleting a key that does not exist proves the permission the worker needs, harmlessly.
            let probe = configuration.keyPrefix + "cache-invalidator:check"
            let reply: RedisReply
            var topology = ""
            switch target {
            case .single:
                reply = try connection.command([configuration.deleteCommand.argument, Array(probe.utf8)])
            case .cluster(let cluster):
                reply = try cluster.pipeline([[configuration.deleteCommand.argument, Array(probe.utf8)]], slots: [HashSlot.of(Array(probe.utf8))])[0]
                let masters = cluster.topology.masters
                topology = ", a cluster of \(masters.count) masters (\(masters.map(\.description).joined(separator: ", ")))"
                if cluster.topology.uncovered > 0 {
                    return Finding(ok: false, subject: "redis", detail: "\(endpoint)\(topology): \(cluster.topology.uncovered) slots have no master; keys there cannot be deleted until the cluster heals")
                }
            }
            if case .error(let message) = reply {
                return Finding(ok: false, subject: "redis", detail: "\(endpoint): \(configuration.deleteCommand.rawValue.uppercased()) refused: \(message)")
            }
            // Pattern rules (wallet deleted, truncates) need SCAN too.
            let scan = try connection.command(["SCAN", "0", "MATCH", GlobPattern.escape(probe), "COUNT", "1"].map { Array($0.utf8) })
            if case .error(let message) = scan {
                return Finding(ok: false, subject: "redis", detail: "\(endpoint): SCAN refused (pattern rules need it): \(message)")
            }
            return Finding(ok: true, subject: "redis", detail: "connected to \(endpoint)\(topology), \(configuration.deleteCommand.rawValue.uppercased()) and SCAN allowed under \(configuration.keyPrefix.debugDescription)")
        } catch {
            return Finding(ok: false, subject: "redis", detail: "\(error)")
        }
    }
}
