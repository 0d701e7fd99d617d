import Testing
@testable import InvalidationCore

@Suite("LagStatistics")
struct LagStatisticsTests {
    /// HdrHistogram with 3 significant digits: a reported value is within 0.1% of the true one.
    func close(_ value: UInt64, to expected: UInt64) -> Bool {
        let difference = value > expected ? value - expected : expected - value
        return Double(difference) <= Double(expected) / 1000
    }

    @Test func percentilesOfKnownValues() {
        var stats = LagStatistics()
        for milliseconds in 1...100 {
            stats.record(lagNanoseconds: Int64(milliseconds) * 1_000_000)
        }
        stats.add(keys: 3)
        stats.add(keys: 4)
        let summary = stats.summary
        #expect(summary.events == 100)
        #expect(summary.keys == 7)
        #expect(close(summary.p50Nanoseconds, to: 50_000_000), "p50 \(summary.p50Nanoseconds)")
        #expect(close(summary.p99Nanoseconds, to: 99_000_000), "p99 \(summary.p99Nanoseconds)")
        #expect(close(summary.maxNanoseconds, to: 100_000_000), "max \(summary.maxNanoseconds)")
        #expect(close(stats.valueAtPercentile(90), to: 90_000_000))
        #expect(stats.negativeLags == 0)
    }

    @Test func skewedDistribution() {
        var stats = LagStatistics()
        for _ in 0..<990 { stats.record(lagNanoseconds: 250_000) }  // 0.25 ms
        for _ in 0..<10 { stats.record(lagNanoseconds: 2_000_000_000) }  // 2 s
        #expect(close(stats.summary.p50Nanoseconds, to: 250_000))
        #expect(close(stats.summary.p99Nanoseconds, to: 250_000))
        #expect(close(stats.valueAtPercentile(99.5), to: 2_000_000_000))
        #expect(close(stats.summary.maxNanoseconds, to: 2_000_000_000))
    }

    @Test func negativeLagIsCountedAndRecordedAsZero() {
        var stats = LagStatistics()
        stats.record(lagNanoseconds: -5_000_000)
        stats.record(lagNanoseconds: -1)
        #expect(stats.events == 2)
        #expect(stats.negativeLags == 2)
        #expect(stats.summary.maxNanoseconds == 0)
        #expect(stats.summary.p50Nanoseconds == 0)
        stats.record(lagNanoseconds: 3_000_000)
        #expect(stats.negativeLags == 2)
        #expect(close(stats.summary.maxNanoseconds, to: 3_000_000))
        #expect(stats.summary.p50Nanoseconds == 0)
    }

    @Test func hugeLagsAreRecorded() {
        // A row with no start time gives a lag of ~54 years (start = epoch); it must not trap.
        var stats = LagStatistics()
        stats.record(lagNanoseconds: 1_700_000_000_000_000_000)
        stats.record(lagNanoseconds: Int64.max)
        #expect(stats.events == 2)
        #expect(close(stats.summary.p50Nanoseconds, to: 1_700_000_000_000_000_000))
        #expect(close(stats.summary.maxNanoseconds, to: UInt64(Int64.max)))
    }

    @Test func emptyAndReset() {
        var stats = LagStatistics()
        #expect(stats.summary == LagStatistics.Summary(events: 0, keys: 0, p50Nanoseconds: 0, p99Nanoseconds: 0, maxNanoseconds: 0))
        stats.add(keys: 5)
        #expect(stats.summary == LagStatistics.Summary(events: 0, keys: 5, p50Nanoseconds: 0, p99Nanoseconds: 0, maxNanoseconds: 0))
        stats.record(lagNanoseconds: 7_000_000)
        stats.record(lagNanoseconds: -3)
        stats.reset()
        #expect(stats.events == 0)
        #expect(stats.keys == 0)
        #expect(stats.negativeLags == 0)
        #expect(stats.summary == LagStatistics.Summary(events: 0, keys: 0, p50Nanoseconds: 0, p99Nanoseconds: 0, maxNanoseconds: 0))
        // The histogram itself was cleared, not just the counters.
        stats.record(lagNanoseconds: 1_000)
        #expect(close(stats.summary.maxNanoseconds, to: 1_000))
        #expect(close(stats.summary.p99Nanoseconds, to: 1_000))
    }

    @Test(arguments: [
        (UInt64(0), "0.000"),
        (499, "0.000"),
        (500, "0.001"),
        (1_000, "0.001"),
        (1_234_567, "1.235"),
        (10_000_000, "10.000"),
        (100_000_000, "100.000"),
        (999_999_500, "1000.000"),
        (12_345_678_901, "12345.679"),
        (UInt64(Int64.max), "9223372036854.776"),
    ])
    func formatsMilliseconds(nanoseconds: UInt64, text: String) {
        #expect(formatMilliseconds(nanoseconds) == text)
    }
}

@Suite("Backoff")
struct BackoffTests {
    @Test func windowsDoubleUpToTheCapWithEqualJitter() {
        var backoff = Backoff(initialMilliseconds: 100, maximumMilliseconds: 10_000)
        var generator = SeededGenerator(seed: 0xC0FFEE)
        var previous: UInt64 = 0
        for attempt in 0..<30 {
            let window = min(100_000_000 * (UInt64(1) << UInt64(min(attempt, 40))), 10_000_000_000)
            let delay = backoff.nextDelay(using: &generator)
            #expect(delay >= window / 2 && delay <= window, "attempt \(attempt): \(delay) outside [\(window / 2), \(window)]")
            #expect(delay <= 10_000_000_000)
            if window < 10_000_000_000 {
                #expect(delay >= previous, "attempt \(attempt): delay shrank from \(previous) to \(delay)")
            }
            previous = delay
        }
        #expect(backoff.attempts == 30)
    }

    @Test func firstDelaysFollowTheWindows() {
        var backoff = Backoff()  // 100 ms, 10 s
        var generator = SeededGenerator(seed: 1)
        let delays = (0..<8).map { _ in backoff.nextDelay(using: &generator) }
        let windowsMs: [UInt64] = [100, 200, 400, 800, 1_600, 3_200, 6_400, 10_000]
        for (delay, window) in zip(delays, windowsMs) {
            #expect((window * 500_000...window * 1_000_000).contains(delay))
        }
    }

    @Test func jitterActuallyVaries() {
        var backoff = Backoff(initialMilliseconds: 1_000, maximumMilliseconds: 1_000)
        var generator = SeededGenerator(seed: 42)
        let delays = (0..<50).map { _ in backoff.nextDelay(using: &generator) }
        #expect(Set(delays).count > 40)
        #expect(delays.allSatisfy { (500_000_000...1_000_000_000).contains($0) })
    }

    @Test func sameSeedSameSequence() {
        var a = Backoff(), b = Backoff()
        var ga = SeededGenerator(seed: 7), gb = SeededGenerator(seed: 7)
        #expect((0..<20).map { _ in a.nextDelay(using: &ga) } == (0..<20).map { _ in b.nextDelay(using: &gb) })
    }

    @Test func resetStartsOver() {
        var backoff = Backoff(initialMilliseconds: 100, maximumMilliseconds: 10_000)
        var generator = SeededGenerator(seed: 3)
        for _ in 0..<12 { _ = backoff.nextDelay(using: &generator) }
        #expect(backoff.nextDelay(using: &generator) >= 5_000_000_000)
        backoff.reset()
        #expect(backoff.attempts == 0)
        #expect((50_000_000...100_000_000).contains(backoff.nextDelay(using: &generator)))
        #expect(backoff.attempts == 1)
    }

    @Test func hugeAttemptCountsDoNotOverflow() {
        // A cap near UInt64.max nanoseconds makes initial << attempts overflow; the window must clamp.
        let capMs = UInt64.max / 1_000_000
        var backoff = Backoff(initialMilliseconds: 1_000, maximumMilliseconds: capMs)
        var generator = SeededGenerator(seed: 99)
        var last: UInt64 = 0
        for _ in 0..<10_000 { last = backoff.nextDelay(using: &generator) }
        #expect(backoff.attempts == 10_000)
        #expect(last <= capMs * 1_000_000)
        #expect(last >= capMs * 1_000_000 / 2)

        var normal = Backoff()
        for _ in 0..<100_000 { last = normal.nextDelay(using: &generator) }
        #expect((5_000_000_000...10_000_000_000).contains(last))
    }

    @Test func capBelowInitialIsRaisedToInitial() {
        let backoff = Backoff(initialMilliseconds: 500, maximumMilliseconds: 10)
        #expect(backoff.initialNanoseconds == 500_000_000)
        #expect(backoff.maximumNanoseconds == 500_000_000)
    }

    @Test func systemRandomVariantStaysInTheWindow() {
        var backoff = Backoff(initialMilliseconds: 10, maximumMilliseconds: 40)
        let delays = (0..<6).map { _ in backoff.nextDelay() }
        #expect((5_000_000...10_000_000).contains(delays[0]))
        #expect(delays.dropFirst(2).allSatisfy { (20_000_000...40_000_000).contains($0) })
    }
}

@Suite("HealthTracker")
struct HealthTrackerTests {
    @Test func initialConnectReportsCameUpWithNoFailures() {
        var tracker = HealthTracker()
        #expect(tracker.state == .connecting)
        #expect(tracker.succeeded(now: 1_000) == .cameUp(afterFailures: 0, downForNanoseconds: nil))
        #expect(tracker.state == .up)
        #expect(tracker.succeeded(now: 2_000) == nil)
        #expect(tracker.succeeded(now: 3_000) == nil)
    }

    @Test func outageIsReportedOnceEachWay() {
        var tracker = HealthTracker()
        _ = tracker.succeeded(now: 0)
        #expect(tracker.failed(now: 1_000) == .wentDown)
        #expect(tracker.failed(now: 2_000) == nil)
        #expect(tracker.failed(now: 3_000) == nil)
        #expect(tracker.state == .down)
        #expect(tracker.failures == 3)
        #expect(tracker.downSinceNanoseconds == 1_000)
        #expect(tracker.succeeded(now: 10_000) == .cameUp(afterFailures: 3, downForNanoseconds: 9_000))
        #expect(tracker.state == .up)
        #expect(tracker.failures == 0)
        #expect(tracker.downSinceNanoseconds == nil)
        #expect(tracker.succeeded(now: 11_000) == nil)
        // A second outage is measured from its own start.
        #expect(tracker.failed(now: 20_000) == .wentDown)
        #expect(tracker.succeeded(now: 25_000) == .cameUp(afterFailures: 1, downForNanoseconds: 5_000))
    }

    @Test func failingBeforeTheFirstConnect() {
        var tracker = HealthTracker()
        #expect(tracker.failed(now: 100) == .wentDown)
        #expect(tracker.failed(now: 200) == nil)
        #expect(tracker.succeeded(now: 700) == .cameUp(afterFailures: 2, downForNanoseconds: 600))
    }
}
