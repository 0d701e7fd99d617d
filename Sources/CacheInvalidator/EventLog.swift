import InvalidationCore
import PostgresClient

/// The worker's SQL against `cache_invalidation.events`: listen, fetch pending, acknowledge.
/// All values go through parameters; nothing from a row or a notification is formatted into SQL.
struct EventLog {
    let connection: PGConnection
    let channel: String
    /// Whether Postgres records commit timestamps (`track_commit_timestamp = on`), which makes
    /// the lag start point the true commit time instead of the trigger's write time.
    let commitTimestamps: Bool
    /// Whether 0005_pending_queue is applied: pending events are the ids in
    /// cache_invalidation.pending, and acknowledging one deletes it there. Without it, pending
    /// events are the log's rows whose processed_at is NULL. Fixed for the life of this session;
    /// the worker reconnects when the schema changes (`backlog` tells).
    let queue: Bool
    private let knownKinds: String
    private let mark = AcknowledgementMark()

    /// This session's records in cache_invalidation.acknowledged (`markAcknowledging`), in a box:
    /// the log is a value copied into the session, and every copy must see the same records.
    private final class AcknowledgementMark {
        var marks = AcknowledgementMarks(periodNanoseconds: EventLog.markPeriodNanoseconds)
    }

    /// How often, at least, the lowest acknowledged id is recorded while the worker acknowledges.
    static let markPeriodNanoseconds: UInt64 = 1_000_000_000
    /// How far before `replay --since T` the replay looks for those records: the period, with room
    /// for the worker's clock and the database's to disagree about how long a second is.
    static let markLookbackSeconds = 10

    init(connection: PGConnection, channel: String, statementTimeoutMilliseconds: Int = 8000) throws(PostgresError) {
        self.connection = connection
        self.channel = channel
        // Bound every query: a DBA's open transaction holding the event log, or a lock queue
        // behind an ALTER, must not freeze the worker (it could not stop, and a listener stuck
        // inside a statement holds back the server's notification queue for every session).
        //
        // The client-side deadline is longer than statement_timeout, so a slow statement fails on
        // the server (and the connection stays usable) before the worker gives up on the
        // connection. The tcp_* settings make the server, too, notice a vanished worker within
        // seconds: its session (and with it the leader lock) is then released for a standby.
        //
        // synchronous_commit = off for this session only (never the bot's): an acknowledgement
        // then does not wait for its WAL flush. If Postgres crashes, the last acknowledgements may
        // be lost and those events are invalidated again (at-least-once; deletions are
        // idempotent); nothing else this session writes. Waiting for the flush would hold the
        // worker ~1 ms per batch and add an fsync that competes with the bot's commits.
        //
        // plan_cache_mode = force_generic_plan: PostgreSQL otherwise re-plans a prepared poll on
        // every call when it guesses that the parameter values deserve a custom plan, and a poll
        // is planned in ~0.1-0.6 ms but runs in 10-40 µs. Polling at 2,000 events/s, planning was
        // ~2/3 of the worker's backend CPU (pg_stat_statements with track_planning: plans ==
        // calls). The generic plans are the right ones for every prepared statement here: index
        // scans of the pending index or the primary key, bounded by the parameters. (It applies
        // to the unnamed statements with parameters too: prune is written for it.)
        //
        // jit = off: a generic plan's row estimates are guesses (a third of the table for a
        // range), which can cross jit_above_cost; compiling then takes 5-10 ms for a statement
        // that runs in one.
        try connection.execute("""
            SET statement_timeout = \(statementTimeoutMilliseconds); SET lock_timeout = '5s'; SET idle_in_transaction_session_timeout = '60s';
            SET synchronous_commit = off; SET plan_cache_mode = force_generic_plan; SET jit = off;
            SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3; SET tcp_user_timeout = 10000
            """)
        connection.queryTimeoutSeconds = EventLog.queryTimeoutSeconds
        let setting = try connection.execute("SELECT current_setting('track_commit_timestamp')")
        self.commitTimestamps = setting[0, 0] == "on"
        let queue = try EventLog.usesPendingQueue(on: connection)
        self.queue = queue
        let columns = EventLog.columns(commitTimestamps: commitTimestamps)
        // Where pending events are, and how one is acknowledged: with 0005 the ids in
        // cache_invalidation.pending (acknowledged by deleting them there; the log is append-only),
        // before it the rows of the log whose processed_at is NULL (acknowledged by setting it).
        // `key` is what the cursor and the ids are compared with: the pending table's primary key
        // with 0005, the log's before. With 0005 each pending id is looked up in the log by
        // primary key (a nested loop, forced by the LATERAL subquery that is not pulled up): the
        // generic plan otherwise merges the queue with the whole log's primary key from its
        // first entry, on every batch (17,000 events/s on a 1,000,000 backlog), and a sweep
        // would walk every event since the oldest one still queued.
        let source = queue ? Self.queuedEvents : "cache_invalidation.events e"
        let pending = queue ? "true" : "e.processed_at IS NULL"
        let key = queue ? "p.id" : "e.id"
        // Pending means "not acknowledged", not "id above the last one seen": an event whose
        // transaction commits after a later id is still found, and no long transaction elsewhere
        // can hold the fast path back. Unknown kinds (from a newer migration) stay pending for a
        // newer worker instead of being dropped. The cursor ($3) only moves forward within one
        // drain pass, so a large backlog is not rescanned from its start for every batch.
        //
        // Each batch acknowledges the previous one ($4, empty for the first) in the same
        // statement. The SELECT does not see the acknowledgement (one snapshot), and needs not:
        // those ids are all at or below the cursor.
        //
        // The acknowledgement, of the ids in parameter $n; only after Redis confirmed them.
        func acknowledging(_ n: Int) -> String {
            queue
                ? "DELETE FROM cache_invalidation.pending WHERE id = ANY($\(n)::int8[])"
                : "UPDATE cache_invalidation.events SET processed_at = clock_timestamp() WHERE id = ANY($\(n)::int8[]) AND processed_at IS NULL"
        }
        try connection.prepare("ci_fetch_pending", """
            WITH acknowledged AS (\(acknowledging(4)))
            SELECT \(columns) FROM \(source)
            WHERE \(pending) AND e.kind = ANY($2::text[]) AND \(key) > $3
            ORDER BY \(key) LIMIT $1
            """, parameterCount: 4)
        // The polling pace: what is new above the cursor, plus ids the cursor passed without
        // seeing them (their transactions had not committed yet, or rolled back), by primary key.
        // Two scans, not one with an OR: with the OR the plan walks the pending index from its
        // start, through every entry acknowledged since the last vacuum (hundreds of thousands
        // under load), on every poll; the lag under load then grew by the minute. The outer
        // LIMIT may cut rows above the cursor; they are above the new cursor too, so the next
        // poll returns them.
        //
        // Each poll acknowledges the previous poll's events ($5, deleted in Redis since; empty if
        // there were none). Those ids are at or below the cursor and no longer among the skipped
        // ones, so the SELECT (which does not see the acknowledgement) does not return them.
        try connection.prepare("ci_poll", """
            WITH acknowledged AS (\(acknowledging(5)))
            SELECT * FROM (
                (SELECT \(columns) FROM \(source)
                 WHERE \(pending) AND e.kind = ANY($2::text[]) AND \(key) > $3
                 ORDER BY \(key) LIMIT $1)
                UNION ALL
                (SELECT \(columns) FROM \(source)
                 WHERE \(pending) AND e.kind = ANY($2::text[]) AND \(key) = ANY($4::int8[]) AND \(key) <= $3)
            ) polled ORDER BY 1 LIMIT $1
            """, parameterCount: 5)
        // The fast path: the events notifications named, by primary key. Scanning the pending
        // index instead would walk every entry acknowledged since the last vacuum.
        try connection.prepare("ci_fetch_ids", """
            SELECT \(columns) FROM \(source)
            WHERE \(key) = ANY($1::int8[]) AND \(pending) AND e.kind = ANY($2::text[])
            ORDER BY \(key)
            """, parameterCount: 2)
        try connection.prepare("ci_ack", acknowledging(1), parameterCount: 1)
        if queue {
            try connection.prepare("ci_mark", "INSERT INTO cache_invalidation.acknowledged (min_id) VALUES ($1::int8)", parameterCount: 1)
        }
        // Events the private channel carried (0004): acknowledged only where the log holds that
        // very event. The payload is compared as jsonb's text, which is what emit() sent, so
        // nothing from a notification is ever cast or parsed by Postgres. `= ANY($1)` keeps the
        // generic plan on the primary key (a bare join with unnest could scan the whole log).
        let start = commitTimestamps ? "COALESCE(pg_xact_commit_timestamp(e.xmin), e.created_at)" : "e.created_at"
        try connection.prepare("ci_ack_notified", queue ? """
            DELETE FROM cache_invalidation.pending p
            USING unnest($1::int8[], $2::text[], $3::text[]) AS n(id, kind, payload), cache_invalidation.events e
            WHERE p.id = ANY($1::int8[]) AND p.id = n.id AND e.id = p.id
              AND e.kind = n.kind AND e.payload::text = n.payload
            RETURNING p.id, (extract(epoch FROM \(start)) * 1000000)::int8
            """ : """
            UPDATE cache_invalidation.events e SET processed_at = clock_timestamp()
            FROM unnest($1::int8[], $2::text[], $3::text[]) AS n(id, kind, payload)
            WHERE e.id = ANY($1::int8[]) AND e.id = n.id AND e.processed_at IS NULL
              AND e.kind = n.kind AND e.payload::text = n.payload
            RETURNING e.id, (extract(epoch FROM \(start)) * 1000000)::int8
            """, parameterCount: 3)
        self.knownKinds = PostgresArray.text(EventKind.allNames)
    }

    /// The queued events (0005) as `e`, with the queue as `p`: each id looked up in the log by
    /// primary key, so the cost follows the queue's length, never the log's (see init).
    static let queuedEvents = """
        cache_invalidation.pending p CROSS JOIN LATERAL (
            SELECT l.id, l.kind, l.payload, l.created_at, l.xmin AS xmin FROM cache_invalidation.events l WHERE l.id = p.id OFFSET 0) e
        """

    /// Whether the pending queue of 0005_pending_queue exists.
    static func usesPendingQueue(on connection: PGConnection) throws(PostgresError) -> Bool {
        try connection.execute("SELECT to_regclass('cache_invalidation.pending') IS NOT NULL")[0, 0] == "t"
    }

    /// How long any query of the worker may take before its connection is treated as lost.
    static let queryTimeoutSeconds = 10.0
    /// The highest migration applied (public.cache_invalidator_schema_migrations), or nil when
    /// that table is missing or this role may not read it (the worker needs no grant on it).
    static func schemaVersion(on connection: PGConnection) throws(PostgresError) -> Int64? {
        // Two statements: a query naming a table that does not exist fails at parse time.
        let readable = try connection.execute("""
            SELECT to_regclass('public.cache_invalidator_schema_migrations') IS NOT NULL
                   AND has_table_privilege('public.cache_invalidator_schema_migrations', 'SELECT')
            """)
        guard readable[0, 0] == "t" else { return nil }
        let version = try connection.execute("SELECT coalesce(max(version), 0) FROM public.cache_invalidator_schema_migrations")
        return Int64(version[0, 0] ?? "")
    }

    /// A cheap round trip with a short deadline: proves the connection still delivers.
    func heartbeat(timeoutSeconds: Double) throws(PostgresError) {
        try connection.execute("SELECT 1", timeoutSeconds: timeoutSeconds)
    }

    func listen() throws(PostgresError) {
        try connection.execute("LISTEN \(try connection.escapeIdentifier(channel))")
    }

    /// The private channel of 0004_private_channel, as far as this session can use it.
    enum PrivateChannel: Equatable {
        /// Subscribed: notifications on this channel carry whole events.
        case listening(String)
        /// 0004 is not applied: the public channel's ids are all there is.
        case notInstalled
        /// 0004 is applied but this role may not call listen_privately().
        case notGranted
    }

    /// LISTENs on the private channel through listen_privately(), which keeps its name out of
    /// this session's statements (pg_stat_activity, the server log).
    func listenPrivately() throws(PostgresError) -> PrivateChannel {
        let installed = try connection.execute("""
            SELECT p IS NOT NULL, p IS NOT NULL AND has_function_privilege(p, 'EXECUTE')
            FROM to_regprocedure('cache_invalidation.listen_privately()') AS p
            """)
        guard installed[0, 0] == "t" else { return .notInstalled }
        guard installed[0, 1] == "t" else { return .notGranted }
        guard let name = try connection.execute("SELECT cache_invalidation.listen_privately()")[0, 0] else { return .notInstalled }
        return .listening(name)
    }

    /// With the pending queue, before acknowledging `ids`: records the lowest of them in
    /// cache_invalidation.acknowledged, unless this session's record from the last second already
    /// bounds it. processed_at used to tell `replay --since T` which events were processed after T;
    /// these records keep that answer (every id acknowledged after T is at or above the lowest
    /// recorded from one period before T on) for one small row per second instead of one UPDATE
    /// per event. Recorded first, so no acknowledgement is ever without its record, even if the
    /// server crashes between the two (this session's commits reach the WAL in order).
    private func markAcknowledging(_ ids: [Int64]) throws(PostgresError) {
        let now = monotonicNanoseconds()
        guard queue, let lowest = mark.marks.due(acknowledging: ids, now: now) else { return }
        try connection.execute(prepared: "ci_mark", [String(lowest)])
        mark.marks.recorded(lowest, now: now)
    }

    /// Pending events with ids above `after`, oldest first (a drain pass), acknowledging
    /// `acknowledging` (all at or below `after`) in the same statement. Sends it and returns at
    /// once; its rows are received on a helper thread while the worker deletes the previous
    /// batch in Redis, and `PendingRows.wait()` hands them over undecoded (`decode` them; the
    /// last row has the highest id, which is where the next batch starts). Nothing else may use
    /// the connection before that.
    func fetchPending(after: Int64, limit: Int, acknowledging batches: [ConfirmedBatch]) throws(PostgresError) -> PendingRows {
        let acknowledging = batches.flatMap(\.ids)
        try markAcknowledging(acknowledging)
        try connection.send(prepared: "ci_fetch_pending", [String(limit), knownKinds, String(after), PostgresArray.integers(acknowledging)])
        return connection.receiveConcurrently()
    }

    /// One poll: pending events above `after`, and those among `skipped` that are pending now;
    /// acknowledges `acknowledging` (the previous poll's events) in the same statement.
    func poll(after: Int64, skipped: [Int64], limit: Int, acknowledging batch: ConfirmedBatch?) throws(PostgresError) -> FetchedEvents {
        let acknowledging = batch?.ids ?? []
        try markAcknowledging(acknowledging)
        return FetchedEvents(try connection.execute(prepared: "ci_poll", [String(limit), knownKinds, String(after), PostgresArray.integers(skipped), PostgresArray.integers(acknowledging)]))
    }

    /// The named events that are still pending (the fast path after notifications).
    func fetchPending(ids: [Int64]) throws(PostgresError) -> FetchedEvents {
        FetchedEvents(try connection.execute(prepared: "ci_fetch_ids", [PostgresArray.integers(ids), knownKinds]))
    }

    /// The select list `decode` reads: id, kind, payload, and the lag start in microseconds
    /// (the commit timestamp when Postgres tracks it, else the trigger's write time).
    static func columns(commitTimestamps: Bool) -> String {
        let start = commitTimestamps ? "COALESCE(pg_xact_commit_timestamp(e.xmin), e.created_at)" : "e.created_at"
        return "e.id, e.kind, e.payload::text, (extract(epoch FROM \(start)) * 1000000)::int8"
    }

    /// Marks events processed. Only called after Redis confirmed every deletion they asked for.
    func acknowledge(_ batches: [ConfirmedBatch]) throws(PostgresError) {
        let ids = batches.flatMap(\.ids)
        guard !ids.isEmpty else { return }
        try markAcknowledging(ids)
        try connection.execute(prepared: "ci_ack", [PostgresArray.integers(ids)])
    }

    /// Acknowledges the notified events the log holds exactly as notified (`payloads` beside the
    /// batch's events, as the private channel carried them); returns their ids with the lag start
    /// (as `columns` computes it).
    func acknowledgeNotified(_ batch: ConfirmedBatch, payloads: [String]) throws(PostgresError) -> [Int64: Int64] {
        precondition(batch.events.count == payloads.count && batch.ids.count == payloads.count, "a payload for each notified event")
        guard !batch.ids.isEmpty else { return [:] }
        let ids = batch.ids
        try markAcknowledging(ids)
        let rows = try connection.execute(prepared: "ci_ack_notified", [
            PostgresArray.integers(ids), PostgresArray.text(batch.events.map(\.kind.rawValue)), PostgresArray.text(payloads)])
        var starts: [Int64: Int64] = [:]
        for row in rows.rows {
            if let id = row[0].flatMap({ Int64($0) }) { starts[id] = row[1].flatMap { Int64($0) } ?? 0 }
        }
        return starts
    }

    /// The ids of the events acknowledged within `seconds` before the last acknowledgement (by
    /// any worker), as one range (nil when there were none): what a new lead owes a second
    /// deletion, however long the log went without a leader. With the pending queue the records
    /// `markAcknowledging` keeps (one a second while acknowledging) bound it from below, with one
    /// period of slack: a few events acknowledged a little earlier may be deleted again too.
    /// Before it, `processed_at` does, within the last minute only (`created_at` bounds the scan
    /// through its BRIN index; there is no index on `processed_at`).
    func recentlyAcknowledged(withinSeconds seconds: Double) throws(PostgresError) -> ClosedRange<Int64>? {
        let slack = Self.markPeriodNanoseconds / 1_000_000_000 + 1
        let low = queue
            ? """
              SELECT min(a.min_id) FROM cache_invalidation.acknowledged a
              WHERE a.at >= (SELECT max(at) FROM cache_invalidation.acknowledged) - make_interval(secs => $1::float8 + \(slack))
              """
            : """
              SELECT min(e.id) FROM cache_invalidation.events e
              WHERE e.created_at >= now() - make_interval(secs => $1::float8 + 60)
                AND e.processed_at >= now() - make_interval(secs => $1::float8 + 60)
              """
        // The newest acknowledged event, not the newest event: a backlog still pending above the
        // acknowledged ones would otherwise widen the range past the takeover bound and push the
        // events that owe a second deletion out of it.
        let acknowledged = queue
            ? "NOT EXISTS (SELECT 1 FROM cache_invalidation.pending p WHERE p.id = e.id)"
            : "e.processed_at IS NOT NULL"
        let high = "SELECT e.id FROM cache_invalidation.events e WHERE \(acknowledged) ORDER BY e.id DESC LIMIT 1"
        let row = try connection.execute("SELECT (\(low)), (\(high))", [String(seconds)]).rows.first
        guard let lowText = row?[0], let low = Int64(lowText), let highText = row?[1], let high = Int64(highText), low <= high else { return nil }
        return low...high
    }

    /// The acknowledged events with ids in `range` above `after`, oldest first, at most `limit`:
    /// a page of a recorded range, for its second deletion. Pending ones are left to the worker's
    /// first deletion.
    func acknowledgedEvents(in range: ClosedRange<Int64>, after: Int64, limit: Int) throws(PostgresError) -> FetchedEvents {
        let acknowledged = queue
            ? "NOT EXISTS (SELECT 1 FROM cache_invalidation.pending p WHERE p.id = e.id)"
            : "e.processed_at IS NOT NULL"
        return FetchedEvents(try connection.execute("""
            SELECT \(Self.columns(commitTimestamps: false)) FROM cache_invalidation.events e
            WHERE e.id > $1::int8 AND e.id <= $2::int8 AND \(acknowledged) AND e.kind = ANY($3::text[])
            ORDER BY e.id LIMIT $4
            """, [String(max(after, range.lowerBound - 1)), String(range.upperBound), knownKinds, String(limit)]))
    }

    /// Of the ids notifications named, those the log has never held: forged or mistaken notifications.
    func missing(_ ids: [Int64]) throws(PostgresError) -> [Int64] {
        guard !ids.isEmpty else { return [] }
        let rows = try connection.execute(
            "SELECT n FROM unnest($1::int8[]) AS n WHERE NOT EXISTS (SELECT 1 FROM cache_invalidation.events e WHERE e.id = n) ORDER BY n",
            [PostgresArray.integers(ids)])
        return rows.rows.compactMap { $0[0].flatMap { Int64($0) } }
    }

    struct Backlog {
        var pending: Int64
        var oldestAgeSeconds: Double
        var unknownKind: Int64
        /// pg_notification_queue_usage(): when the server's queue is full, notifying commits fail.
        var queueUsage: Double
        /// The event log's size on disk (table, indexes, TOAST; and the pending queue's).
        var logBytes: Int64
        /// Whether the pending queue (0005) exists now: the worker reconnects when this is not
        /// what its session was prepared for.
        var queue: Bool
    }

    func backlog() throws(PostgresError) -> Backlog {
        try Self.backlog(on: connection, queue: queue)
    }

    /// Also for `check`, on a connection of its own (`queue`: `usesPendingQueue`).
    static func backlog(on connection: PGConnection, queue: Bool) throws(PostgresError) -> Backlog {
        let knownKinds = PostgresArray.text(EventKind.allNames)
        let rows = try connection.execute("""
            SELECT count(*),
                   COALESCE(extract(epoch FROM clock_timestamp() - min(e.created_at)), 0)::float8,
                   count(*) FILTER (WHERE e.kind <> ALL($1::text[])),
                   pg_notification_queue_usage(),
                   pg_total_relation_size('cache_invalidation.events')
                     + COALESCE(pg_total_relation_size(to_regclass('cache_invalidation.pending')), 0),
                   to_regclass('cache_invalidation.pending') IS NOT NULL
            FROM \(queue ? Self.queuedEvents : "cache_invalidation.events e WHERE e.processed_at IS NULL")
            """, [knownKinds])
        return Backlog(
            pending: rows[0, 0].flatMap { Int64($0) } ?? 0,
            oldestAgeSeconds: rows[0, 1].flatMap { Double($0) } ?? 0,
            unknownKind: rows[0, 2].flatMap { Int64($0) } ?? 0,
            queueUsage: rows[0, 3].flatMap { Double($0) } ?? 0,
            logBytes: rows[0, 4].flatMap { Int64($0) } ?? 0,
            queue: rows[0, 5] == "t")
    }
}

extension EventLog {
    /// Expected triggers that are missing or disabled, as "name missing on public.table".
    static func triggerProblems(on connection: PGConnection) throws(PostgresError) -> (problems: [String], expected: Int) {
        let rows = try connection.execute("""
            SELECT x.table_name, x.trigger_name, t.tgenabled
            FROM cache_invalidation.expected_triggers x
            LEFT JOIN pg_trigger t ON t.tgname = x.trigger_name AND t.tgrelid = to_regclass(format('public.%I', x.table_name))
            ORDER BY x.table_name, x.trigger_name
            """)
        var problems: [String] = []
        for row in rows.rows {
            let table = row[0] ?? "?", name = row[1] ?? "?"
            switch row[2] {
            case nil: problems.append("\(name) missing on public.\(table)")
            case "O"?, "A"?: break  // fires in ordinary sessions
            case "D"?: problems.append("\(name) disabled on public.\(table)")
            case let state?: problems.append("\(name) enabled only for replication sessions (tgenabled=\(state)) on public.\(table)")
            }
        }
        if rows.rows.isEmpty { problems.append("cache_invalidation.expected_triggers is empty") }
        return (problems, rows.rows.count)
    }

    /// Deletes up to `limit` events processed before the retention window; returns how many.
    /// Small batches, each its own statement: no long lock, no long transaction.
    func prune(olderThanSeconds seconds: UInt64, limit: Int) throws(PostgresError) -> Int {
        // now(), not clock_timestamp(): a stable cutoff is what lets the BRIN index on
        // created_at serve the scan (a volatile one forces a sequential scan of the whole log).
        // `= ANY(ARRAY(...))`, not `IN (...)`: under the session's generic plans (see init) the
        // IN became a hash semi-join over a sequential scan of the whole log, 256-400 ms per
        // step on 2,000,000 rows and growing with the log; this form deletes by primary key.
        //
        // With the pending queue (0005) an event is processed when its id has left the queue;
        // its processed_at stays NULL, so its age is its creation's. Events processed before
        // 0005 keep their processed_at, and the rule they had.
        let processed = queue
            ? "NOT EXISTS (SELECT 1 FROM cache_invalidation.pending p WHERE p.id = e.id) AND (e.processed_at IS NULL OR e.processed_at < now() - make_interval(secs => $1::float8))"
            : "e.processed_at < now() - make_interval(secs => $1::float8)"
        return try connection.execute("""
            DELETE FROM cache_invalidation.events WHERE id = ANY(ARRAY(
                SELECT e.id FROM cache_invalidation.events e
                WHERE e.created_at < now() - make_interval(secs => $1::float8)
                  AND \(processed)
                LIMIT $2 FOR UPDATE OF e SKIP LOCKED))
            """, [String(seconds), String(limit)]).affected
    }

    /// With the pending queue: deletes the acknowledgement records past the retention window
    /// (a replay cannot reach further back than the log it replays).
    func pruneMarks(olderThanSeconds seconds: UInt64) throws(PostgresError) {
        guard queue else { return }
        try connection.execute("DELETE FROM cache_invalidation.acknowledged WHERE at < now() - make_interval(secs => $1::float8)", [String(seconds)])
    }
}

extension FetchedEvents {
    /// The rows of a statement that selects `EventLog.columns`.
    init(_ rows: PGRows) { self.init(rows: rows.rows) }
}
