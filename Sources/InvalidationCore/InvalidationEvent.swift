/// One row of the durable event log, decoded: what happened and the values the rules need.
public struct InvalidationEvent: Sendable, Equatable {
    /// Primary key in `cache_invalidation.events`; the unit of acknowledgement.
    public var id: Int64
    public var kind: EventKind
    /// Payload fields with JSON null and empty strings already dropped, so "absent" has one meaning.
    public var fields: [String: String]
    /// Start point of the lag measurement, microseconds since the Unix epoch: the commit
    /// timestamp when Postgres tracks it, otherwise the moment the trigger wrote the row.
    public var startMicros: Int64

    public init(id: Int64, kind: EventKind, fields: [String: String], startMicros: Int64) {
        self.id = id
        self.kind = kind
        self.fields = fields
        self.startMicros = startMicros
    }
}
