/// Rows of the event log decoded into events: what the worker deletes, what it acknowledges with
/// nothing deleted (rows it cannot read, which would otherwise come back in every fetch), and
/// what it logs. Pure, so hostile rows are tested without a server.
///
/// A row is `id, kind, payload, lag start in microseconds`, as `EventLog.columns` selects them.
public struct FetchedEvents: Sendable {
    public var events: [InvalidationEvent] = []
    /// Rows whose payload could not be decoded: acknowledged with nothing deleted, and logged.
    public var undecodable: [(id: Int64, kind: String, error: PayloadError)] = []
    /// Events with field values too large to be keys: processed without those fields, and logged.
    public var oversized: [(id: Int64, kind: String, fields: [String])] = []
    public var rowCount = 0
    /// The highest id among the rows (decodable or not): where the next drain batch starts.
    public var maxID: Int64 = 0

    public init() {}

    public init(rows: [[String?]]) {
        rowCount = rows.count
        events.reserveCapacity(rows.count)
        for row in rows {
            let id = row.first.flatMap { $0 }.flatMap { Int64($0) }
            if let id { maxID = max(maxID, id) }
            let kindName = row.count > 1 ? row[1] : nil
            guard let id, let kindName, let kind = EventKind(rawValue: kindName) else {
                // Cannot happen (the queries filter known kinds; ids are bigint), but a row
                // skipped here would come back in every fetch forever.
                if let id { undecodable.append((id, kindName ?? "", PayloadError(reason: "belongs to an event the worker cannot read"))) }
                continue
            }
            let start = (row.count > 3 ? row[3] : nil).flatMap { Int64($0) } ?? 0
            do {
                let decoded = try EventPayload.decodeReportingOversized((row.count > 2 ? row[2] : nil) ?? "")
                events.append(InvalidationEvent(id: id, kind: kind, fields: decoded.fields, startMicros: start))
                if !decoded.oversized.isEmpty { oversized.append((id, kindName, decoded.oversized)) }
            } catch {
                undecodable.append((id, kindName, error))
            }
        }
    }

    /// Every id to acknowledge: the events and the rows that could not be decoded.
    public var ids: [Int64] { events.map(\.id) + undecodable.map(\.id) }
}

/// When the worker records, in `cache_invalidation.acknowledged`, the lowest id it is about to
/// acknowledge: `replay --since T` finds every event acknowledged after T at or above the lowest
/// id recorded from one period before T on, and a new lead finds the second deletions it owes.
/// One small row per period instead of one per event; recorded again at once when a lower id is
/// acknowledged (a late commit), which the last record does not bound.
public struct AcknowledgementMarks: Sendable, Equatable {
    public let periodNanoseconds: UInt64
    private var recordedAt: UInt64?
    private var minID = Int64.max

    public init(periodNanoseconds: UInt64) {
        self.periodNanoseconds = periodNanoseconds
    }

    /// The id to record before acknowledging `ids` at `now`, or nil when the last record still
    /// bounds them.
    public func due(acknowledging ids: [Int64], now: UInt64) -> Int64? {
        guard let lowest = ids.min() else { return nil }
        if let recordedAt, lowest >= minID, now &- recordedAt < periodNanoseconds { return nil }
        return lowest
    }

    /// `id` was recorded at `now` (after the record's statement succeeded).
    public mutating func recorded(_ id: Int64, now: UInt64) {
        recordedAt = now
        minID = id
    }
}
