/// The health of one connection (Postgres or Redis) as ops see it, changing only on transitions.
///
/// The worker retries every few seconds during an outage; logging each retry would flood
/// the logs. `HealthTracker` reports a transition only when the state actually changes,
/// and the worker logs exactly those, so an hour-long outage is two lines: down, then up.
public enum ConnectionHealth: String, Sendable, Equatable {
    case connecting
    case up
    case down
}

public struct HealthTracker: Sendable {
    public private(set) var state: ConnectionHealth = .connecting
    /// Consecutive failures since the last success, for the "up again after N attempts" line.
    public private(set) var failures: Int = 0
    /// When the current outage began (caller's clock), for the "down for N s" line.
    public private(set) var downSinceNanoseconds: UInt64? = nil

    public init() {}

    public enum Transition: Sendable, Equatable {
        case wentDown
        case cameUp(afterFailures: Int, downForNanoseconds: UInt64?)
    }

    public mutating func succeeded(now: UInt64) -> Transition? {
        defer { state = .up; failures = 0; downSinceNanoseconds = nil }
        guard state != .up else { return nil }
        return .cameUp(afterFailures: failures, downForNanoseconds: downSinceNanoseconds.map { now &- $0 })
    }

    public mutating func failed(now: UInt64) -> Transition? {
        failures += 1
        guard state != .down else { return nil }
        state = .down
        downSinceNanoseconds = now
        return .wentDown
    }
}
