/// When to (re)connect to one server and what to tell ops about it: the connection state machine
/// of the worker, kept free of I/O so it is tested without sockets.
///
/// A connection counts as healthy only after a real round trip worked, not when it opened: a
/// database without the migrations, a read-only Redis replica or a missing privilege accept the
/// connection and fail the first command. Backoff is reset and "up" reported only then, so such
/// a failure backs off and is reported once instead of reconnecting every 100 ms.
///
/// A healthy connection that drops (an idle timeout, a proxy, a failover) after working for a while
/// is retried at once, before backing off: the next event should not pay a backoff for a routine
/// reconnect.
public struct ReconnectPolicy: Sendable {
    public private(set) var health = HealthTracker()
    public private(set) var backoff: Backoff
    /// Monotonic time before which no connection attempt is made.
    public private(set) var retryAt: UInt64 = 0
    /// A round trip has worked since the connection opened.
    public private(set) var verified = false
    private var verifiedAt: UInt64 = 0
    /// A connection must have worked this long before its drop earns an immediate retry: a
    /// server or proxy that kills every session at once gets backoff, not a reconnect storm.
    public var immediateRetryMinimumUptimeNanoseconds: UInt64

    public init(backoff: Backoff, immediateRetryAfterUptimeNanoseconds: UInt64 = 30_000_000_000) {
        self.backoff = backoff
        self.immediateRetryMinimumUptimeNanoseconds = immediateRetryAfterUptimeNanoseconds
    }

    public func mayConnect(now: UInt64) -> Bool { now >= retryAt }

    /// A connection opened; it is not trusted until `roundTripSucceeded`.
    public mutating func opened() {
        verified = false
    }

    /// A round trip worked. Returns `.cameUp` once per outage (the line ops read), nil otherwise.
    public mutating func roundTripSucceeded(now: UInt64) -> HealthTracker.Transition? {
        guard !verified else { return nil }
        verified = true
        verifiedAt = now
        backoff.reset()
        return health.succeeded(now: now)
    }

    public enum FailureAction: Sendable, Equatable {
        /// Reconnect now, quietly: a working connection dropped for the first time.
        case retryNow
        /// Wait `delay` nanoseconds; `report` is true when this failure starts an outage (log it
        /// as an error); later failures of the same outage are debug-level.
        case backOff(delayNanoseconds: UInt64, report: Bool)
    }

    /// The connection failed. `connectionDropped` is true when the connection itself broke
    /// (as opposed to the server refusing a command or a connection attempt failing).
    public mutating func failed<R: RandomNumberGenerator>(now: UInt64, connectionDropped: Bool, using generator: inout R) -> FailureAction {
        if verified && connectionDropped && now &- verifiedAt >= immediateRetryMinimumUptimeNanoseconds {
            verified = false
            retryAt = now
            return .retryNow
        }
        verified = false
        let delay = backoff.nextDelay(using: &generator)
        retryAt = now &+ delay
        return .backOff(delayNanoseconds: delay, report: health.failed(now: now) != nil)
    }

    public mutating func failed(now: UInt64, connectionDropped: Bool) -> FailureAction {
        var generator = SystemRandomNumberGenerator()
        return failed(now: now, connectionDropped: connectionDropped, using: &generator)
    }
}
