/// A failure talking to PostgreSQL, with libpq's message and no secrets in it.
///
/// libpq's own messages never contain the password; the connection URL is never part of
/// the description (only host, port and database, via `ConnectionTarget`).
public struct PostgresError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        /// DATABASE_URL could not be parsed.
        case invalidConnectionString
        /// The server could not be reached or refused the login.
        case connectionFailed
        /// The connection broke (server restart, network, terminated backend).
        case connectionLost
        /// The server rejected a statement; the connection is still usable.
        case queryFailed
    }

    public var code: Code
    public var message: String
    /// SQLSTATE of a server error (e.g. 42501 for a missing privilege), when there is one.
    public var sqlState: String?
    public var target: String?

    public init(code: Code, message: String, sqlState: String? = nil, target: String? = nil) {
        self.code = code
        self.message = message.trimmingTrailingWhitespace()
        self.sqlState = sqlState
        self.target = target
    }

    public var description: String {
        var text = "postgres \(code.rawValue)"
        if let target { text += " (\(target))" }
        if let sqlState { text += " [\(sqlState)]" }
        text += ": \(message)"
        if let hint { text += " — \(hint)" }
        return text
    }

    /// What an operator should do about it.
    public var hint: String? {
        switch (code, sqlState) {
        case (.invalidConnectionString, _):
            return "set DATABASE_URL to postgres://user:password@host:5432/dbname"
        case (.connectionFailed, _) where message.contains("read-only") || message.contains("hot standby"):
            return "no host DATABASE_URL lists is a primary now (target_session_attrs=read-write): a failover in progress, or the primary is missing from the list; retrying"
        case (.connectionFailed, _):
            return "check that Postgres is running and that DATABASE_URL's host, port, user and password are right"
        case (_, "42501"?):
            return "the role lacks a privilege; see deploy/postgres/roles.sql or run the migrations as the table owner"
        case (_, "3F000"?), (_, "42P01"?):
            return "the cache_invalidation schema is missing; apply the migrations (cache-invalidator migrate)"
        case (_, "55P03"?):
            return "a lock could not be taken within lock_timeout; a long transaction holds the table, retry when it ends"
        default:
            return nil
        }
    }
}

extension String {
    func trimmingTrailingWhitespace() -> String {
        var s = Substring(self)
        while let last = s.last, last.isWhitespace { s = s.dropLast() }
        return String(s)
    }
}
