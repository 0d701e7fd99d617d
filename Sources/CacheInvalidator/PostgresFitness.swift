import Foundation
import InvalidationCore
import PostgresClient

/// Why a session that opened cannot be the worker's: it reached a standby, or notifications do
/// not come back through it. Both are refused before the session takes a lock or LISTENs.
enum PostgresUnfit: Error, Sendable, Equatable, CustomStringConvertible {
    /// The server is in recovery: read-only, and LISTEN is refused there.
    case standby(server: String)
    /// A notification sent by another session never arrived: a pooler in transaction or
    /// statement mode (PgBouncer, pgcat, a cloud proxy) multiplexes sessions, so LISTEN hears
    /// nothing, and the session-level advisory locks are shared with strangers too.
    case listenBroken(server: String, waitedSeconds: Double)

    var description: String {
        switch self {
        case .standby(let server):
            return "\(server) is a standby (in recovery): the worker needs the primary to LISTEN and acknowledge; point DATABASE_URL at the primary, or list every host so libpq finds it: postgres://host1,host2/db?target_session_attrs=read-write"
        case .listenBroken(let server, let waited):
            return "LISTEN does not work through \(server): a notification sent by another session did not arrive within \(String(format: "%.1f", waited)) s; a pooler in transaction or statement mode (PgBouncer's pool_mode) passes no notifications and shares session locks; connect the worker directly to PostgreSQL, or through a pool in session mode"
        }
    }

    /// The short reason `/readyz` gives.
    var readiness: String {
        switch self {
        case .standby(let server): return "postgres \(server) is a standby, not the primary"
        case .listenBroken(let server, _): return "LISTEN does not work through \(server) (a pooler in transaction mode?)"
        }
    }
}

/// What the worker verifies of every new session before trusting it.
enum PostgresFitness {
    struct Server: Sendable, Equatable {
        var inRecovery: Bool
        /// nil on a standby, or when the server would not say.
        var identity: PrimaryIdentity?
    }

    /// "host:port" of the server the connection reached (of those a multi-host URL lists).
    static func reached(_ connection: PGConnection) -> String {
        let parameters = Dictionary(connection.reachedServer, uniquingKeysWith: { first, _ in first })
        return "\(parameters["host"] ?? "?"):\(parameters["port"] ?? "?")"
    }

    /// Whether the server is a primary, and which history it is on (every function used here is
    /// executable by any role).
    static func identify(_ connection: PGConnection) throws(PostgresError) -> Server {
        guard try connection.execute("SELECT pg_is_in_recovery()")[0, 0] == "f" else { return Server(inRecovery: true, identity: nil) }
        do {
            let rows = try connection.execute("SELECT (SELECT system_identifier FROM pg_control_system()), pg_walfile_name(pg_current_wal_lsn())")
            return Server(inRecovery: false, identity: PrimaryIdentity.parse(systemIdentifier: rows[0, 0], walFileName: rows[0, 1]))
        } catch where error.code == .queryFailed {
            // A server that will not say (a fork, a managed service's restriction) is still a
            // primary: only the replay after a failover is lost.
            return Server(inRecovery: false, identity: nil)
        }
    }

    /// Proves that this session hears notifications other sessions send: LISTENs on a channel of
    /// its own, has a second, short-lived session to the same server notify it, and waits.
    /// A session's notification to itself would prove nothing: behind a pooler the sender's
    /// statement can run on the very server connection that ran the LISTEN. Returns how long the
    /// notification took; throws `PostgresUnfit.listenBroken` when it did not come in time.
    static func proveListen(on connection: PGConnection, conninfo: String, timeoutSeconds: Double) throws -> Double {
        var random = SystemRandomNumberGenerator()
        let channel = "cache_invalidator_probe_" + String(random.next(), radix: 16)
        let nonce = String(random.next(), radix: 16)
        try connection.execute("LISTEN \(channel)")
        do {
            let sender = try PGConnection(conninfo: conninfo, applicationName: "cache-invalidator listen probe",
                                          overriding: connection.reachedServer + [("target_session_attrs", "any")])
            try sender.execute("SELECT pg_notify($1, $2)", [channel, nonce])
        }
        // From the commit on: connecting the sender (authentication, TLS) is not the delivery.
        let started = Date()
        while true {
            let remaining = timeoutSeconds - Date().timeIntervalSince(started)
            let received = try connection.awaitNotifications(timeoutSeconds: max(0, remaining))
            if received.contains(where: { $0.channel == channel && $0.payload == nonce }) {
                try connection.execute("UNLISTEN \(channel)")
                return Date().timeIntervalSince(started)
            }
            if remaining <= 0 { throw PostgresUnfit.listenBroken(server: reached(connection), waitedSeconds: timeoutSeconds) }
        }
    }
}
