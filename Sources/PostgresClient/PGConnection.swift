import CLibPQ
import Foundation
import Glibc

/// A notification received on a LISTENed channel.
public struct PGNotification: Sendable, Equatable {
    public var channel: String
    public var payload: String
    public var senderPID: Int32
}

/// The rows of a query result, copied out of libpq so the `PGresult` is freed at once.
public struct PGRows: Sendable {
    public var columns: [String]
    public var rows: [[String?]]
    /// Rows affected by INSERT/UPDATE/DELETE (PQcmdTuples), 0 otherwise.
    public var affected: Int

    public subscript(row: Int, column: Int) -> String? { rows[row][column] }
}

/// Host, port and database of a connection string, without user or password: safe to log.
public struct ConnectionTarget: Sendable, CustomStringConvertible {
    public var host: String
    public var port: String
    public var database: String
    public var user: String
    public var description: String { "host=\(host) port=\(port) dbname=\(database) user=\(user)" }

    /// Parses a libpq connection string or URL (`PQconninfoParse`) without connecting.
    public static func parse(_ conninfo: String) throws(PostgresError) -> ConnectionTarget {
        var errorMessage: UnsafeMutablePointer<CChar>? = nil
        guard let options = PQconninfoParse(conninfo, &errorMessage) else {
            let message = errorMessage.map { String(cString: $0) } ?? "out of memory"
            if let errorMessage { PQfreemem(errorMessage) }
            // libpq quotes the offending token, which may be part of the password.
            throw PostgresError(code: .invalidConnectionString, message: "DATABASE_URL is not a valid connection string: \(Secrets.redact(message, in: conninfo, includingFragments: true))")
        }
        defer { PQconninfoFree(options) }
        var values: [String: String] = [:]
        var cursor = options
        while let keyword = cursor.pointee.keyword {
            if let value = cursor.pointee.val { values[String(cString: keyword)] = String(cString: value) }
            cursor += 1
        }
        // PQconninfoParse checks keywords, not values; a typo here would otherwise make the
        // worker retry a connection that can never succeed instead of refusing to start.
        if let port = values["port"], !port.isEmpty {
            for part in port.split(separator: ",", omittingEmptySubsequences: false) {
                guard let number = Int(part), (1...65535).contains(number) else {
                    throw PostgresError(code: .invalidConnectionString, message: "DATABASE_URL has port \(Secrets.redact(String(part), in: conninfo).debugDescription); expected a number from 1 to 65535")
                }
            }
        }
        let sslModes = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
        if let mode = values["sslmode"], !sslModes.contains(mode) {
            throw PostgresError(code: .invalidConnectionString, message: "DATABASE_URL has sslmode \(mode.debugDescription); expected one of \(sslModes.joined(separator: ", "))")
        }
        return ConnectionTarget(
            host: values["host"] ?? values["hostaddr"] ?? "(default socket)",
            port: values["port"] ?? "5432",
            database: values["dbname"] ?? values["user"] ?? "(default)",
            user: values["user"] ?? "(default)"
        )
    }
}

/// One libpq connection, owned: `PQfinish` runs exactly once, in `deinit`.
///
/// Not thread-safe and not `Sendable`: a connection is used by one thread at a time, the
/// worker's own, or a helper receiving rows for it (`receiveConcurrently()`). Every call may
/// block on the network, so none of this may run on Swift's cooperative pool.
public final class PGConnection {
    private let conn: OpaquePointer
    public let target: ConnectionTarget

    /// Connection parameters applied unless the connection string sets them: a bounded
    /// connect, TCP keepalives and a user timeout so a half-open connection is noticed
    /// within seconds instead of hours.
    public static let defaultParameters: [(String, String)] = [
        ("connect_timeout", "5"),
        ("keepalives", "1"),
        ("keepalives_idle", "5"),
        ("keepalives_interval", "2"),
        ("keepalives_count", "3"),
        ("tcp_user_timeout", "10000"),
    ]

    /// Connects (blocking, bounded by `connect_timeout`). `overriding` parameters are applied
    /// after the URL (another session to the very server a multi-host URL chose: `host`, `port`).
    public init(conninfo: String, applicationName: String = "cache-invalidator", overriding: [(String, String)] = []) throws(PostgresError) {
        let target = try ConnectionTarget.parse(conninfo)
        // Defaults come first and the URL (expanded from "dbname") after it, so that whatever
        // the operator wrote in DATABASE_URL wins over our defaults.
        var pairs = PGConnection.defaultParameters
        pairs.append(("application_name", applicationName))
        pairs.append(("dbname", conninfo))
        // After the URL, so nothing overrides it: keys are built from text, and a LATIN1
        // database must still hand us UTF-8, or a non-ASCII address becomes another key.
        pairs.append(("client_encoding", "UTF8"))
        pairs += overriding
        let keywords = pairs.map { strdup($0.0) }
        let values = pairs.map { strdup($0.1) }
        defer {
            keywords.forEach { free($0) }
            values.forEach { free($0) }
        }
        var keywordPointers: [UnsafePointer<CChar>?] = keywords.map { UnsafePointer($0) }
        var valuePointers: [UnsafePointer<CChar>?] = values.map { UnsafePointer($0) }
        keywordPointers.append(nil)
        valuePointers.append(nil)
        let raw: OpaquePointer? = PQconnectdbParams(keywordPointers, valuePointers, 1)
        guard let raw else {
            throw PostgresError(code: .connectionFailed, message: "out of memory", target: target.description)
        }
        if PQstatus(raw) != CONNECTION_OK {
            let message = Secrets.redact(String(cString: PQerrorMessage(raw)), in: conninfo)
            PQfinish(raw)
            throw PostgresError(code: .connectionFailed, message: message, target: target.description)
        }
        // libpq prints server NOTICEs to stderr by default ("relation already exists, skipping"),
        // which would bypass the structured log; they carry nothing an operator needs.
        PQsetNoticeProcessor(raw, { _, _ in }, nil)
        self.conn = raw
        self.target = target
    }

    deinit { PQfinish(conn) }

    /// The socket to `poll` for readability (notifications, server messages).
    public var socket: Int32 { PQsocket(conn) }

    public var isHealthy: Bool { PQstatus(conn) == CONNECTION_OK }

    /// The server this connection reached (of the hosts a multi-host URL lists): `host` and
    /// `port` parameters that connect another session to it; `hostaddr` too when the URL gave one.
    public var reachedServer: [(String, String)] {
        var parameters = [("host", String(cString: PQhost(conn))), ("port", String(cString: PQport(conn)))]
        if let address = PQhostaddr(conn), address.pointee != 0 { parameters.append(("hostaddr", String(cString: address))) }
        return parameters
    }

    /// Waits up to `timeoutSeconds` for notifications and returns those received (maybe none).
    public func awaitNotifications(timeoutSeconds: Double) throws(PostgresError) -> [PGNotification] {
        let deadline = monotonicSeconds() + timeoutSeconds
        while true {
            try consumeInput()
            let received = notifications()
            let remaining = deadline - monotonicSeconds()
            if !received.isEmpty || remaining <= 0 { return received }
            var descriptor = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
            let result = poll(&descriptor, 1, Int32(max(1, (remaining * 1000).rounded(.up))))
            if result < 0 && errno != EINTR { throw PostgresError(code: .connectionLost, message: "poll: \(String(cString: strerror(errno)))", target: target.description) }
        }
    }

    /// The server's process id for this connection (for `pg_terminate_backend` in tests and ops).
    public var backendPID: Int32 { PQbackendPID(conn) }

    /// How long a query may wait for the server's answer before the connection is declared lost
    /// (nil: wait as long as it takes, for migrations). A connection that silently stopped
    /// delivering (a half-open TCP connection, a frozen middlebox) otherwise blocks forever:
    /// TCP keepalives only notice a peer that stopped acknowledging, not one that acknowledges
    /// and never answers.
    public var queryTimeoutSeconds: Double? = nil

    /// Runs one or more statements with the simple query protocol (migrations, LISTEN).
    /// Returns the rows of the last statement.
    @discardableResult
    public func execute(_ sql: String, timeoutSeconds: Double? = nil) throws(PostgresError) -> PGRows {
        guard PQsendQuery(conn, sql) == 1 else { throw lostOrFailed(nil) }
        return try awaitResult(timeoutSeconds: timeoutSeconds ?? queryTimeoutSeconds)
    }

    /// Runs one statement with parameters sent separately from the SQL text (never formatted in).
    @discardableResult
    public func execute(_ sql: String, _ parameters: [String?]) throws(PostgresError) -> PGRows {
        try send(parameters) { PQsendQueryParams(conn, sql, $0, nil, $1, nil, nil, 0) }
    }

    /// Parses and plans `sql` once on this connection; run it with `execute(prepared:_:)`.
    /// Saves the parse and plan (a few hundred microseconds) on every call of a hot query.
    public func prepare(_ name: String, _ sql: String, parameterCount: Int) throws(PostgresError) {
        guard PQsendPrepare(conn, name, sql, Int32(parameterCount), nil) == 1 else { throw lostOrFailed(nil) }
        _ = try awaitResult(timeoutSeconds: queryTimeoutSeconds)
    }

    /// Runs a statement prepared with `prepare`; parameters are sent apart from the SQL text.
    @discardableResult
    public func execute(prepared name: String, _ parameters: [String?]) throws(PostgresError) -> PGRows {
        try send(parameters) { PQsendQueryPrepared(conn, name, $0, $1, nil, nil, 0) }
    }

    /// Sends a prepared statement and returns at once; `receive()` waits for its rows. The caller
    /// can work meanwhile (delete one batch in Redis while Postgres reads the next). Nothing else
    /// may be sent on this connection until `receive()` has returned or thrown.
    public func send(prepared name: String, _ parameters: [String?]) throws(PostgresError) {
        try sendOnly(parameters) { PQsendQueryPrepared(conn, name, $0, $1, nil, nil, 0) }
    }

    /// The rows of the statement `send(prepared:_:)` sent.
    public func receive() throws(PostgresError) -> PGRows {
        try awaitResult(timeoutSeconds: queryTimeoutSeconds)
    }

    /// Receives the rows of the statement `send(prepared:_:)` sent on a helper thread, while the
    /// caller works; `PendingRows.wait()` hands them over. A caller that reads a large result only
    /// after its own work would leave the server blocked on a full socket buffer meanwhile, and
    /// that time counts against the statement's `statement_timeout`: a slow piece of work (a
    /// Redis SCAN over a large keyspace) would get the statement in flight cancelled.
    /// The connection belongs to the helper until `wait()` returns: nothing else may use it.
    public func receiveConcurrently() -> PendingRows {
        let pending = PendingRows(connection: self)
        DispatchQueue.global().async { pending.receive() }
        return pending
    }

    private func send(_ parameters: [String?], _ call: (Int32, [UnsafePointer<CChar>?]) -> Int32) throws(PostgresError) -> PGRows {
        try sendOnly(parameters, call)
        return try awaitResult(timeoutSeconds: queryTimeoutSeconds)
    }

    /// Parameters as C strings (text format; nil is SQL NULL) for the duration of one libpq call.
    private func sendOnly(_ parameters: [String?], _ call: (Int32, [UnsafePointer<CChar>?]) -> Int32) throws(PostgresError) {
        let cStrings: [UnsafeMutablePointer<CChar>?] = parameters.map { $0.map { strdup($0) } ?? nil }
        defer { cStrings.forEach { free($0) } }
        guard call(Int32(parameters.count), cStrings.map { $0.map { UnsafePointer($0) } }) == 1 else { throw lostOrFailed(nil) }
    }

    /// Waits (with `poll`, bounded by the timeout) until the query sent last has completed, and
    /// returns its last result; the first error wins, as with PQexec. Notifications that arrive
    /// meanwhile stay queued for `notifications()`.
    private func awaitResult(timeoutSeconds: Double?) throws(PostgresError) -> PGRows {
        let deadline = timeoutSeconds.map { monotonicSeconds() + $0 }
        var outcome: Result<PGRows, PostgresError>? = nil
        // A multi-statement string yields one result per statement, each of which may need a wait.
        while true {
            while PQisBusy(conn) == 1 {
                var descriptor = pollfd(fd: PQsocket(conn), events: Int16(POLLIN), revents: 0)
                var wait: Int32 = -1
                if let deadline {
                    let remaining = deadline - monotonicSeconds()
                    if remaining <= 0 {
                        throw PostgresError(code: .connectionLost, message: "no answer from the server within \(formatTimeout(timeoutSeconds ?? 0)) s; the connection is treated as lost (half-open TCP connection, or a server that stopped answering)", target: target.description)
                    }
                    wait = Int32(min(remaining * 1000 + 1, 60_000))
                }
                if poll(&descriptor, 1, wait) < 0 && errno != EINTR { throw lostOrFailed(nil) }
                if PQconsumeInput(conn) == 0 { throw lostOrFailed(nil) }
            }
            guard let result = PQgetResult(conn) else { break }
            let rows = Result { () throws(PostgresError) -> PGRows in try consume(result) }
            if case .failure? = outcome {} else { outcome = rows }
        }
        guard let outcome else { throw lostOrFailed(nil) }
        return try outcome.get()
    }

    private func monotonicSeconds() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }

    private func formatTimeout(_ seconds: Double) -> String {
        seconds == seconds.rounded() ? String(Int(seconds)) : String(format: "%.1f", seconds)
    }

    /// Reads whatever the server sent (non-blocking) so that `notifications()` sees it.
    public func consumeInput() throws(PostgresError) {
        if PQconsumeInput(conn) == 0 { throw lostOrFailed(nil) }
    }

    /// Notifications received so far; each `PGnotify` is freed as it is copied.
    public func notifications() -> [PGNotification] {
        var received: [PGNotification] = []
        while let notify = PQnotifies(conn) {
            received.append(PGNotification(
                channel: String(cString: notify.pointee.relname),
                payload: String(cString: notify.pointee.extra),
                senderPID: notify.pointee.be_pid
            ))
            PQfreemem(notify)
        }
        return received
    }

    /// Quotes an identifier (a channel name) for use in SQL text.
    public func escapeIdentifier(_ identifier: String) throws(PostgresError) -> String {
        guard let escaped = PQescapeIdentifier(conn, identifier, identifier.utf8.count) else {
            throw PostgresError(code: .queryFailed, message: String(cString: PQerrorMessage(conn)), target: target.description)
        }
        defer { PQfreemem(escaped) }
        return String(cString: escaped)
    }

    private func consume(_ result: OpaquePointer) throws(PostgresError) -> PGRows {
        defer { PQclear(result) }
        switch PQresultStatus(result) {
        case PGRES_COMMAND_OK, PGRES_TUPLES_OK, PGRES_EMPTY_QUERY:
            let columnCount = Int(PQnfields(result))
            let rowCount = Int(PQntuples(result))
            var columns: [String] = []
            columns.reserveCapacity(columnCount)
            for c in 0..<columnCount { columns.append(String(cString: PQfname(result, Int32(c)))) }
            var rows: [[String?]] = []
            rows.reserveCapacity(rowCount)
            for r in 0..<rowCount {
                var row: [String?] = []
                row.reserveCapacity(columnCount)
                for c in 0..<columnCount {
                    if PQgetisnull(result, Int32(r), Int32(c)) != 0 {
                        row.append(nil)
                    } else {
                        row.append(String(cString: PQgetvalue(result, Int32(r), Int32(c))))
                    }
                }
                rows.append(row)
            }
            let affected = Int(String(cString: PQcmdTuples(result))) ?? 0
            return PGRows(columns: columns, rows: rows, affected: affected)
        default:
            throw lostOrFailed(result)
        }
    }

    private func lostOrFailed(_ result: OpaquePointer?) -> PostgresError {
        let sqlState = result.flatMap { PQresultErrorField($0, Int32(UInt8(ascii: "C"))) }.map { String(cString: $0) }
        let message = result.map { String(cString: PQresultErrorMessage($0)) } ?? String(cString: PQerrorMessage(conn))
        let lost = PQstatus(conn) != CONNECTION_OK || sqlState?.hasPrefix("08") == true || sqlState == "57P01" || sqlState == "57P02" || sqlState == "57P03"
        return PostgresError(code: lost ? .connectionLost : .queryFailed, message: message.isEmpty ? "no result from server" : message, sqlState: sqlState, target: target.description)
    }
}

/// The rows of a statement being received on a helper thread (`receiveConcurrently()`).
/// Unchecked `Sendable`: the connection is used by the helper alone until `done` is signalled,
/// and `outcome` is written before that and read only after it. The helper holds this (and so
/// the connection) until it is done, so the connection cannot be closed under it.
public final class PendingRows: @unchecked Sendable {
    private let connection: PGConnection
    private let done = DispatchSemaphore(value: 0)
    private var outcome: Result<PGRows, PostgresError>? = nil
    private var handedOver = false

    fileprivate init(connection: PGConnection) {
        self.connection = connection
    }

    fileprivate func receive() {
        outcome = Result { () throws(PostgresError) -> PGRows in try connection.receive() }
        done.signal()
    }

    /// Blocks until the rows are in (bounded by the connection's query timeout) and returns them;
    /// the connection is the caller's again. Call it once.
    public func wait() throws(PostgresError) -> PGRows {
        precondition(!handedOver, "PendingRows.wait() called twice")
        handedOver = true
        done.wait()
        return try outcome!.get()
    }

    // Dropped without `wait()`, the caller may have used the connection while the helper did.
    deinit { assert(handedOver, "PendingRows dropped without wait(): its connection was in use by a helper") }
}

/// Scrubs a connection string's password out of a message before it can reach a log.
///
/// Works on UTF-8 bytes, never on Swift characters: a password that begins with a combining mark
/// forms one Character with the `=` or `:` before it, and a Character-wise search would then not
/// find it (and a Character-wise prefix test would not see `password=`).
public enum Secrets {
    /// Candidate secrets of a connection string: the URL's password and any `password=` value.
    static func candidates(in conninfo: String) -> [[UInt8]] {
        let bytes = Array(conninfo.utf8)
        var found: [[UInt8]] = []
        if let schemeEnd = bytes.firstRange(of: Array("://".utf8)) {
            let rest = bytes[schemeEnd.upperBound...]
            if let at = rest.lastIndex(of: UInt8(ascii: "@")) {
                let userinfo = rest[..<at]
                if let colon = userinfo.firstIndex(of: UInt8(ascii: ":")) {
                    found.append(Array(userinfo[(colon + 1)...]))
                }
            }
            if let query = rest.firstIndex(of: UInt8(ascii: "?")) {
                for pair in rest[(query + 1)...].split(separator: UInt8(ascii: "&")) where hasPasswordKey(pair) {
                    found.append(Array(pair.dropFirst(passwordKey.count)))
                }
            }
        } else {
            let separators: Set<UInt8> = [UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\n")]
            for word in bytes.split(whereSeparator: { separators.contains($0) }) where hasPasswordKey(word) {
                var value = Array(word.dropFirst(passwordKey.count))
                while value.first == UInt8(ascii: "'") { value.removeFirst() }
                while value.last == UInt8(ascii: "'") { value.removeLast() }
                found.append(value)
            }
        }
        return found.filter { !$0.isEmpty }
    }

    private static let passwordKey = Array("password=".utf8)
    private static let redacted = Array("***".utf8)

    /// `password=`, in any ASCII case.
    private static func hasPasswordKey(_ word: ArraySlice<UInt8>) -> Bool {
        word.count >= passwordKey.count
            && zip(word.prefix(passwordKey.count), passwordKey).allSatisfy { ($0 | 0x20) == $1 }
    }

    /// `message` with every candidate secret of `conninfo` replaced by `***`; with
    /// `includingFragments`, each half of it too (a parse error quotes a fragment of a bad token).
    /// Halves are cut between scalars, so what remains is still valid UTF-8.
    public static func redact(_ message: String, in conninfo: String, includingFragments: Bool = false) -> String {
        var text = Array(message.utf8)
        for secret in candidates(in: conninfo).sorted(by: { $0.count > $1.count }) {
            text = text.replacing(secret, with: redacted)
            let scalars = Array(String(decoding: secret, as: UTF8.self).unicodeScalars)
            if includingFragments && scalars.count >= 6 {
                let half = scalars.count / 2
                for part in [scalars[..<half], scalars[half...]] {
                    var fragment = ""
                    fragment.unicodeScalars.append(contentsOf: part)
                    text = text.replacing(Array(fragment.utf8), with: redacted)
                }
            }
        }
        return String(decoding: text, as: UTF8.self)
    }
}
