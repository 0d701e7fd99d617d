/// Capped exponential backoff with jitter, for reconnecting to Postgres and Redis.
///
/// Jitter spreads the retries of many workers (or of one worker's two connections) so a
/// recovering server is not hit by a synchronized wave. The delay is drawn from the upper
/// half of the window ("equal jitter"), so a retry never comes immediately after a failure.
public struct Backoff: Sendable, Equatable {
    public var initialNanoseconds: UInt64
    public var maximumNanoseconds: UInt64
    public private(set) var attempts: Int = 0

    public init(initialMilliseconds: UInt64 = 100, maximumMilliseconds: UInt64 = 10_000) {
        self.initialNanoseconds = initialMilliseconds * 1_000_000
        self.maximumNanoseconds = max(initialMilliseconds, maximumMilliseconds) * 1_000_000
    }

    /// The delay before the next attempt; each call doubles the window up to the cap.
    public mutating func nextDelay<R: RandomNumberGenerator>(using generator: inout R) -> UInt64 {
        let shift = min(attempts, 40)
        attempts += 1
        let (scaled, overflow) = initialNanoseconds.multipliedReportingOverflow(by: UInt64(1) << UInt64(shift))
        let window = overflow ? maximumNanoseconds : min(scaled, maximumNanoseconds)
        let half = window / 2
        return half + UInt64.random(in: 0...(window - half), using: &generator)
    }

    public mutating func nextDelay() -> UInt64 {
        var generator = SystemRandomNumberGenerator()
        return nextDelay(using: &generator)
    }

    public mutating func reset() { attempts = 0 }
}
