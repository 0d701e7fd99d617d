/// Which master serves each of the 16,384 slots of a Redis Cluster, from `CLUSTER SLOTS`, and
/// what a redirection says. Pure: the client asks it where to send, and tells it what moved.
public struct ClusterTopology: Sendable, Equatable {
    public struct Node: Sendable, Hashable, CustomStringConvertible, Comparable {
        public var host: String
        public var port: Int
        public init(host: String, port: Int) { self.host = host; self.port = port }
        public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
        public static func < (a: Node, b: Node) -> Bool { (a.host, a.port) < (b.host, b.port) }
    }

    public struct Range: Sendable, Equatable {
        public var slots: ClosedRange<Int>
        public var master: Node
        public init(slots: ClosedRange<Int>, master: Node) { self.slots = slots; self.master = master }
    }

    /// The master of each slot; nil where no master serves it (the cluster is then down there).
    private var owners: [Node?]

    public init(ranges: [Range]) {
        owners = Array(repeating: nil, count: HashSlot.count)
        for range in ranges where range.slots.lowerBound >= 0 && range.slots.upperBound < HashSlot.count {
            for slot in range.slots { owners[slot] = range.master }
        }
    }

    public func master(of slot: Int) -> Node? { (0..<HashSlot.count).contains(slot) ? owners[slot] : nil }

    /// Every master serving at least one slot, in a stable order.
    public var masters: [Node] { Array(Set(owners.compactMap { $0 })).sorted() }

    /// Slots no master serves.
    public var uncovered: Int { owners.reduce(0) { $0 + ($1 == nil ? 1 : 0) } }

    /// `MOVED slot host:port`: the slot now lives there for good.
    public mutating func moved(slot: Int, to node: Node) {
        guard (0..<HashSlot.count).contains(slot) else { return }
        owners[slot] = node
    }

    /// A redirection in an error reply: `MOVED 3999 127.0.0.1:6381` or `ASK 3999 127.0.0.1:6381`.
    public enum Redirection: Sendable, Equatable {
        case moved(slot: Int, to: Node)
        case ask(slot: Int, to: Node)

        /// nil for any other error, or a redirection that does not parse.
        public static func parse(_ message: String) -> Redirection? {
            let parts = message.split(separator: " ", omittingEmptySubsequences: false)
            guard parts.count == 3, parts[0] == "MOVED" || parts[0] == "ASK",
                  parts[1].count <= 5, parts[1].allSatisfy({ $0.isASCII && $0.isNumber }),
                  let slot = Int(parts[1]), (0..<HashSlot.count).contains(slot),
                  let colon = parts[2].lastIndex(of: ":") else { return nil }
            var host = parts[2][..<colon]
            if host.hasPrefix("[") && host.hasSuffix("]") { host = host.dropFirst().dropLast() }
            let portText = parts[2][parts[2].index(after: colon)...]
            guard !host.isEmpty, host.allSatisfy({ $0.isASCII && !$0.isWhitespace }),
                  portText.count <= 5, portText.allSatisfy({ $0.isASCII && $0.isNumber }),
                  let port = Int(portText), (1...65535).contains(port) else { return nil }
            let node = Node(host: String(host), port: port)
            return parts[0] == "MOVED" ? .moved(slot: slot, to: node) : .ask(slot: slot, to: node)
        }
    }
}
