import InvalidationCore
import PostgresClient

// The advisory locks: the leader lock (one active worker), and W and G of quiet NOTIFY (0003).
// Every lock here is tried, never waited for: a queued exclusive request would stall writers.
extension EventLog {
    /// The key of the session-level advisory lock the active worker holds ("cacheinv" in ASCII).
    /// In pg_locks: locktype advisory, classid 1667326824, objid 1701408374, objsubid 1.
    public static let leaderLockKey: Int64 = 0x6361_6368_6569_6E76

    /// G, "writer in flight" (0003_quiet_notify): held shared by every writer until it ends.
    public static let writersLockKey: Int64 = leaderLockKey + 1
    /// W, "worker polling" (0003_quiet_notify): held by the active worker while it polls the log;
    /// writers skip their NOTIFY meanwhile.
    public static let pollingLockKey: Int64 = leaderLockKey + 2

    /// Whether emit() skips its NOTIFY while W is held (migration 0003 applied).
    func hasQuietNotify() throws(PostgresError) -> Bool {
        try connection.execute("""
            SELECT coalesce(bool_or(p.prosrc LIKE '%' || $1 || '%'), false) FROM pg_proc p
            WHERE p.oid = to_regprocedure('cache_invalidation.emit(text,jsonb)')
            """, [String(Self.pollingLockKey)])[0, 0] == "t"
    }

    /// Ends a session that holds W although this one leads: a previous leader that vanished
    /// (crashed host, half-open connection) and that the server has not noticed yet. While it
    /// holds W, writers skip their NOTIFY for a worker that no longer polls. Returns how many
    /// were ended; a session of another role cannot be ended by this one (42501).
    func endStalePollingHolders() throws(PostgresError) -> Int {
        let key = UInt64(bitPattern: Self.pollingLockKey)
        return try connection.execute("""
            SELECT count(*) FILTER (WHERE pg_terminate_backend(l.pid)) FROM pg_locks l
            WHERE l.locktype = 'advisory' AND l.mode = 'ExclusiveLock' AND l.granted
              AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND l.classid = $1::int8::oid AND l.objid = $2::int8::oid AND l.objsubid = 1
              AND l.pid <> pg_backend_pid()
            """, [String(key >> 32), String(key & 0xFFFF_FFFF)]).rows.first?[0].flatMap { Int($0) } ?? 0
    }

    /// Takes W without waiting; false while a writer that is notifying still holds it shared.
    func startPolling() throws(PostgresError) -> Bool {
        try tryLock(Self.pollingLockKey)
    }

    func stopPolling() throws(PostgresError) {
        try connection.execute("SELECT pg_advisory_unlock($1::int8)", [String(Self.pollingLockKey)])
    }

    /// True when no writer holds G: every transaction that skipped its NOTIFY has ended. Takes
    /// G for an instant without ever waiting (a queued exclusive request would stall writers).
    func noQuietWriterInFlight() throws(PostgresError) -> Bool {
        try connection.execute("SELECT CASE WHEN pg_try_advisory_lock($1::int8) THEN pg_advisory_unlock($1::int8) ELSE false END",
                               [String(Self.writersLockKey)])[0, 0] == "t"
    }

    /// Tries to become the active worker; the lock lives as long as this session.
    func tryLead() throws(PostgresError) -> Bool {
        try tryLock(Self.leaderLockKey)
    }

    /// A session-level advisory lock, exclusive, never waited for.
    private func tryLock(_ key: Int64) throws(PostgresError) -> Bool {
        try connection.execute("SELECT pg_try_advisory_lock($1::int8)", [String(key)])[0, 0] == "t"
    }

    /// Ends this worker's own previous session if the server still keeps it: after a half-open
    /// connection the server may not have noticed yet, and that session still holds the leader
    /// lock (and a place in the notification queue). Only a session of the same role and
    /// application that started before this one, so a reused pid is never hit. A role may end its
    /// own sessions without further privilege.
    func terminateAbandonedSession(pid: Int32) throws(PostgresError) -> Bool {
        try connection.execute("""
            SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a
            WHERE a.pid = $1::int4 AND a.pid <> pg_backend_pid() AND a.usename = current_user
              AND a.application_name = current_setting('application_name')
              AND a.backend_start < (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())
            """, [String(pid)]).rows.first?[0] == "t"
    }
}
