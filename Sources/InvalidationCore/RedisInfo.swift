/// The figures of Redis's `INFO` reply that describe the cache's health, exported beside the
/// worker's own metrics. Parsing is strict per field and lenient per reply: a field that is
/// missing or not a number is absent, never a guess, and nothing else in the reply matters.
public struct RedisInfo: Sendable, Equatable {
    public var keyspaceHits: Double?
    public var keyspaceMisses: Double?
    public var usedMemoryBytes: Double?
    public var maxmemoryBytes: Double?
    public var evictedKeys: Double?
    public var expiredKeys: Double?
    public var connectedClients: Double?
    /// The server process's random identifier (`run_id`, 40 hex digits): another one behind the
    /// same address is another process (a restart, a replacement).
    public var runID: String?

    public init() {}

    /// Parses the text of `INFO` (`# Section` headers, `field:value` lines, CRLF or LF).
    public static func parse(_ text: String) -> RedisInfo {
        var fields: [Substring: Substring] = [:]
        for line in text.split(whereSeparator: { $0 == "\n" || $0 == "\r\n" || $0 == "\r" }) {
            guard !line.hasPrefix("#"), let colon = line.firstIndex(of: ":") else { continue }
            fields[line[..<colon]] = line[line.index(after: colon)...]
        }
        func number(_ name: Substring) -> Double? {
            guard let value = fields[name], !value.isEmpty, value.count <= 20,
                  value.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }),
                  let parsed = Double(value), parsed.isFinite else { return nil }
            return parsed
        }
        var info = RedisInfo()
        info.keyspaceHits = number("keyspace_hits")
        info.keyspaceMisses = number("keyspace_misses")
        info.usedMemoryBytes = number("used_memory")
        info.maxmemoryBytes = number("maxmemory")
        info.evictedKeys = number("evicted_keys")
        info.expiredKeys = number("expired_keys")
        info.connectedClients = number("connected_clients")
        if let runID = fields["run_id"], runID.count == 40, runID.allSatisfy({ $0.isHexDigit && $0.isASCII }) { info.runID = String(runID) }
        return info
    }
}
