import Histogram

/// Commit-to-deletion lag over one reporting interval, with the percentiles the summary line logs.
///
/// HdrHistogram keeps percentiles exact to 3 significant digits in constant memory,
/// whatever the event rate: no per-event allocation that grows with uptime.
public struct LagStatistics: Sendable {
    private var histogram = Histogram<UInt64>(highestTrackableValue: 3_600_000_000_000, numberOfSignificantValueDigits: .three)
    public private(set) var events: UInt64 = 0
    public private(set) var keys: UInt64 = 0
    /// Lags below zero (clock skew between the database host and the worker) are recorded as zero and counted.
    public private(set) var negativeLags: UInt64 = 0

    public init() { histogram.autoResize = true }

    /// Records one event's lag in nanoseconds.
    public mutating func record(lagNanoseconds: Int64) {
        events += 1
        if lagNanoseconds < 0 { negativeLags += 1 }
        _ = histogram.record(UInt64(max(0, lagNanoseconds)))
    }

    public mutating func add(keys count: Int) { keys += UInt64(count) }

    public struct Summary: Sendable, Equatable {
        public var events: UInt64
        public var keys: UInt64
        public var p50Nanoseconds: UInt64
        public var p99Nanoseconds: UInt64
        public var maxNanoseconds: UInt64
    }

    public var summary: Summary {
        guard events > 0 else { return Summary(events: 0, keys: keys, p50Nanoseconds: 0, p99Nanoseconds: 0, maxNanoseconds: 0) }
        return Summary(
            events: events, keys: keys,
            p50Nanoseconds: histogram.valueAtPercentile(50),
            p99Nanoseconds: histogram.valueAtPercentile(99),
            maxNanoseconds: histogram.max
        )
    }

    public func valueAtPercentile(_ percentile: Double) -> UInt64 { histogram.valueAtPercentile(percentile) }

    public mutating func reset() {
        histogram.reset()
        events = 0
        keys = 0
        negativeLags = 0
    }
}

/// Formats nanoseconds as milliseconds with three decimals (microsecond resolution), for logs.
public func formatMilliseconds(_ nanoseconds: UInt64) -> String {
    let micros = nanoseconds / 1000 + (nanoseconds % 1000 >= 500 ? 1 : 0)
    let whole = micros / 1000
    let frac = micros % 1000
    let padded = String(frac)
    return "\(whole)." + String(repeating: "0", count: 3 - padded.count) + padded
}
