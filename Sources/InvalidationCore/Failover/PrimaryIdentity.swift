/// Which PostgreSQL history a session is on: the cluster (its system identifier) and the
/// timeline. A promoted standby keeps the identifier and starts a new timeline; a cluster
/// restored into a fresh `initdb`, or another cluster behind the same address, has another
/// identifier. Either way, writes the worker saw committed before may not exist there.
public struct PrimaryIdentity: Sendable, Equatable, CustomStringConvertible {
    public var systemIdentifier: UInt64
    public var timeline: UInt32

    public init(systemIdentifier: UInt64, timeline: UInt32) {
        self.systemIdentifier = systemIdentifier
        self.timeline = timeline
    }

    /// From `pg_control_system().system_identifier` and the name of the WAL file being written
    /// (`pg_walfile_name(pg_current_wal_lsn())`), whose first 8 hex digits are the timeline the
    /// server writes on now. (`pg_control_checkpoint()` would lag: a promoted standby records its
    /// new timeline there only at its next checkpoint.) nil for anything else.
    public static func parse(systemIdentifier: String?, walFileName: String?) -> PrimaryIdentity? {
        guard let systemIdentifier, let system = UInt64(systemIdentifier), system != 0,
              let walFileName, walFileName.utf8.count == 24,
              walFileName.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) || (UInt8(ascii: "A")...UInt8(ascii: "F")).contains($0) }),
              let timeline = UInt32(walFileName.prefix(8), radix: 16), timeline != 0
        else { return nil }
        return PrimaryIdentity(systemIdentifier: system, timeline: timeline)
    }

    public var description: String { "system \(systemIdentifier) timeline \(timeline)" }
}

/// Whether the primary the worker reached is the one it wrote through before.
public struct PrimaryWatch: Sendable {
    public enum Change: Sendable, Equatable {
        /// The first primary this process reached: nothing to compare with.
        case first
        case same
        /// A promoted standby (or a server rewound onto another branch): the same cluster, another history.
        case newTimeline(from: UInt32, to: UInt32)
        /// Another cluster altogether (restored from a backup, re-initialized).
        case otherSystem(from: UInt64, to: UInt64)

        /// Writes acknowledged before may be missing on this primary.
        public var mayHaveLostWrites: Bool {
            switch self {
            case .first, .same: return false
            case .newTimeline, .otherSystem: return true
            }
        }
    }

    public private(set) var last: PrimaryIdentity?

    public init() {}

    public mutating func connected(to identity: PrimaryIdentity) -> Change {
        defer { last = identity }
        guard let last else { return .first }
        if last.systemIdentifier != identity.systemIdentifier { return .otherSystem(from: last.systemIdentifier, to: identity.systemIdentifier) }
        if last.timeline != identity.timeline { return .newTimeline(from: last.timeline, to: identity.timeline) }
        return .same
    }
}

/// The Redis master the worker deletes on: its address and, when INFO is allowed, its `run_id`.
/// Another address (a Sentinel failover) or another process behind the same address (a restart
/// from a snapshot, a replacement) may hold keys whose deletion the previous one confirmed.
public struct RedisMaster: Sendable, Equatable, CustomStringConvertible {
    public var address: String
    public var runID: String?

    public init(address: String, runID: String?) {
        self.address = address
        self.runID = runID
    }

    /// Whether deletions confirmed by `previous` may be missing here. Without run ids (INFO not
    /// allowed) only the address can tell.
    public func replaces(_ previous: RedisMaster) -> Bool {
        if address != previous.address { return true }
        if let runID, let before = previous.runID { return runID != before }
        return false
    }

    public var description: String { runID.map { "\(address) (run_id \($0.prefix(8)))" } ?? address }
}
