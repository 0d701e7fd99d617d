/// Gathers a request head as its bytes arrive, whatever their slicing, and says when it is
/// complete or refused. Keeps at most `HTTPRequestHead.maximumBytes`, so a client that sends
/// megabytes costs 8 KiB; parses again only when a chunk brings a line end (or the cap), so a
/// client dribbling one byte at a time costs a scan per line, not per byte.
public struct HTTPHeadReader: Sendable {
    public private(set) var bytes: [UInt8] = []

    public init() {}

    /// Takes the next bytes read from the connection; `.incomplete` until the head ends.
    public mutating func append(_ chunk: some Collection<UInt8>) -> HTTPRequestHead.Outcome {
        let room = HTTPRequestHead.maximumBytes - bytes.count
        // A head that ends within the first maximumBytes is found in them; one that does not is
        // refused (431) with or without the rest, so the rest need not be kept.
        bytes += chunk.prefix(room)
        guard chunk.contains(UInt8(ascii: "\n")) || bytes.count >= HTTPRequestHead.maximumBytes else { return .incomplete }
        return HTTPRequestHead.parse(bytes)
    }
}
