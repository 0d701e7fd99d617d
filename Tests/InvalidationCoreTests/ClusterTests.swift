import Testing
@testable import InvalidationCore

@Suite("HashSlot")
struct HashSlotTests {
    @Test func crc16IsXMODEM() {
        #expect(HashSlot.crc16(Array("123456789".utf8)[...]) == 0x31C3, "the check value of CRC-16/XMODEM")
    }

    @Test(arguments: [("foo", 12182), ("bar", 5061), ("hello", 866), ("", 0)])
    func knownSlots(_ key: String, _ slot: Int) {
        #expect(HashSlot.of(Array(key.utf8)) == slot)
    }

    /// The hash tag rules of the cluster specification, case by case.
    @Test func hashTags() {
        func slot(_ key: String) -> Int { HashSlot.of(Array(key.utf8)) }
        #expect(slot("{user1000}.following") == slot("user1000"))
        #expect(slot("{user1000}.followers") == slot("user1000"))
        #expect(slot("foo{}{bar}") == HashSlot.of(Array("foo{}{bar}".utf8)), "an empty tag: the whole key")
        #expect(HashSlot.tagged(Array("foo{}{bar}".utf8)) == Array("foo{}{bar}".utf8)[...])
        #expect(HashSlot.tagged(Array("foo{{bar}}zap".utf8)) == Array("{bar".utf8)[...], "from the first { to the first } after it")
        #expect(HashSlot.tagged(Array("foo{bar}{zap}".utf8)) == Array("bar".utf8)[...], "only the first tag")
        #expect(HashSlot.tagged(Array("foo{bar".utf8)) == Array("foo{bar".utf8)[...], "no closing brace: the whole key")
        #expect(HashSlot.tagged(Array("}{".utf8)) == Array("}{".utf8)[...])
    }

    @Test func everyByteValueIsHashedAndStaysInRange() {
        for byte in UInt8.min...UInt8.max {
            #expect((0..<HashSlot.count).contains(HashSlot.of([byte, 0, 0xff, byte])))
        }
    }
}

@Suite("ClusterTopology")
struct ClusterTopologyTests {
    static let a = ClusterTopology.Node(host: "10.0.0.1", port: 7000)
    static let b = ClusterTopology.Node(host: "10.0.0.2", port: 7001)

    @Test func rangesMapSlotsToMastersAndMovedUpdatesOne() {
        var topology = ClusterTopology(ranges: [.init(slots: 0...8191, master: Self.a), .init(slots: 8192...16383, master: Self.b)])
        #expect(topology.master(of: 0) == Self.a && topology.master(of: 8192) == Self.b && topology.master(of: 16383) == Self.b)
        #expect(topology.masters == [Self.a, Self.b] && topology.uncovered == 0)
        topology.moved(slot: 100, to: Self.b)
        #expect(topology.master(of: 100) == Self.b && topology.master(of: 101) == Self.a)
        #expect(topology.master(of: -1) == nil && topology.master(of: 16384) == nil)
    }

    @Test func slotsNoMasterServesAreCounted() {
        let topology = ClusterTopology(ranges: [.init(slots: 0...99, master: Self.a), .init(slots: 16384...20000, master: Self.b)])
        #expect(topology.uncovered == 16384 - 100 && topology.master(of: 100) == nil && topology.masters == [Self.a])
    }

    @Test func redirectionsParse() {
        #expect(ClusterTopology.Redirection.parse("MOVED 3999 127.0.0.1:6381") == .moved(slot: 3999, to: .init(host: "127.0.0.1", port: 6381)))
        #expect(ClusterTopology.Redirection.parse("ASK 0 cache-2:7002") == .ask(slot: 0, to: .init(host: "cache-2", port: 7002)))
        #expect(ClusterTopology.Redirection.parse("MOVED 16383 [::1]:7000") == .moved(slot: 16383, to: .init(host: "::1", port: 7000)))
    }

    @Test(arguments: ["", "MOVED", "MOVED 1", "MOVED 1 h", "MOVED 16384 h:1", "MOVED -1 h:1", "MOVED 1 h:0", "MOVED 1 h:65536",
                      "MOVED 1 :7000", "MOVED 1 h:7000 extra", "moved 1 h:7000", "ERR MOVED 1 h:7000", "MOVED 1 h:70a0",
                      "MOVED 0001111 h:1", "MOVED 1 h h:1", "CLUSTERDOWN The cluster is down", "TRYAGAIN Multiple keys request during rehashing of slot"])
    func anythingElseIsNoRedirection(_ message: String) {
        #expect(ClusterTopology.Redirection.parse(message) == nil)
    }
}
