import Testing
@testable import InvalidationCore

@Suite("ReconnectPolicy")
struct ReconnectPolicyTests {
    struct Fixed: RandomNumberGenerator {
        var state: UInt64 = 42
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            return z ^ (z >> 27)
        }
    }

    static let ms: UInt64 = 1_000_000

    @Test func firstConnectFailureIsReportedOnceAndBacksOffMore() {
        var policy = ReconnectPolicy(backoff: Backoff(initialMilliseconds: 100, maximumMilliseconds: 10_000))
        var rng = Fixed()
        guard case .backOff(let first, true) = policy.failed(now: 0, connectionDropped: false, using: &rng) else {
            Issue.record("the first failure must be reported"); return
        }
        #expect((50 * Self.ms...100 * Self.ms).contains(first))
        #expect(policy.retryAt == first)
        #expect(!policy.mayConnect(now: first - 1) && policy.mayConnect(now: first))
        var previousWindowCap = 100 * Self.ms
        for attempt in 1...8 {
            guard case .backOff(let delay, let report) = policy.failed(now: 1, connectionDropped: false, using: &rng) else {
                Issue.record("attempt \(attempt) must back off"); return
            }
            #expect(!report, "later failures of the same outage are not reported")
            previousWindowCap = min(previousWindowCap * 2, 10_000 * Self.ms)
            #expect(delay >= previousWindowCap / 2 && delay <= previousWindowCap)
        }
    }

    /// Connecting is not enough: a connection that opens but fails its first command (a read-only
    /// replica, a missing schema) keeps backing off and is not reported as up.
    @Test func openingIsNotSuccess() {
        var policy = ReconnectPolicy(backoff: Backoff(initialMilliseconds: 100, maximumMilliseconds: 10_000))
        var rng = Fixed()
        _ = policy.failed(now: 0, connectionDropped: false, using: &rng)
        var delays: [UInt64] = []
        for _ in 0..<6 {
            policy.opened()
            if case .backOff(let delay, let report) = policy.failed(now: 0, connectionDropped: false, using: &rng) {
                #expect(!report)
                delays.append(delay)
            } else {
                Issue.record("an unverified connection must never get an immediate retry")
            }
        }
        #expect(delays.last! > 1_000 * Self.ms, "backoff kept growing: \(delays)")
        #expect(policy.health.state == .down)
    }

    @Test func roundTripReportsUpOnceAndResetsBackoff() {
        var policy = ReconnectPolicy(backoff: Backoff(initialMilliseconds: 100, maximumMilliseconds: 10_000))
        var rng = Fixed()
        for _ in 0..<3 { _ = policy.failed(now: 10, connectionDropped: false, using: &rng) }
        policy.opened()
        #expect(policy.roundTripSucceeded(now: 5_000) == .cameUp(afterFailures: 3, downForNanoseconds: 4_990))
        #expect(policy.roundTripSucceeded(now: 6_000) == nil, "reported once")
        #expect(policy.backoff.attempts == 0)
    }

    static let minute: UInt64 = 60_000_000_000

    @Test func droppedHealthyConnectionRetriesAtOnceOnlyOnce() {
        var policy = ReconnectPolicy(backoff: Backoff(initialMilliseconds: 100, maximumMilliseconds: 10_000))
        var rng = Fixed()
        policy.opened()
        _ = policy.roundTripSucceeded(now: 0)
        #expect(policy.failed(now: Self.minute, connectionDropped: true, using: &rng) == .retryNow)
        #expect(policy.mayConnect(now: Self.minute))
        policy.opened()
        // Dropped again before any round trip worked: now it is an outage.
        guard case .backOff(_, true) = policy.failed(now: Self.minute + 200, connectionDropped: true, using: &rng) else {
            Issue.record("a second drop without a working round trip must back off and be reported"); return
        }
    }

    /// A server or proxy that kills every session right after it works must meet backoff, not
    /// an immediate reconnect each time.
    @Test func shortLivedConnectionsDoNotEarnImmediateRetries() {
        var policy = ReconnectPolicy(backoff: Backoff(initialMilliseconds: 100, maximumMilliseconds: 10_000))
        var rng = Fixed()
        policy.opened()
        _ = policy.roundTripSucceeded(now: 0)
        guard case .backOff(_, true) = policy.failed(now: 1_000_000_000, connectionDropped: true, using: &rng) else {
            Issue.record("a drop after 1 s of uptime must back off"); return
        }
    }

    @Test func refusedCommandOnAHealthyConnectionIsAnOutage() {
        var policy = ReconnectPolicy(backoff: Backoff(initialMilliseconds: 100, maximumMilliseconds: 10_000))
        var rng = Fixed()
        policy.opened()
        _ = policy.roundTripSucceeded(now: 0)
        guard case .backOff(_, true) = policy.failed(now: Self.minute, connectionDropped: false, using: &rng) else {
            Issue.record("READONLY/NOPERM is not a routine drop"); return
        }
    }
}
