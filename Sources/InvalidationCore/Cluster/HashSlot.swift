/// Redis Cluster's key-to-slot function: CRC16 (XMODEM: polynomial 0x1021, initial 0) of the
/// key, or of its hash tag (the bytes between the first `{` and the next `}`, when not empty),
/// modulo 16384.
public enum HashSlot {
    public static let count = 16_384

    public static func of(_ key: [UInt8]) -> Int {
        Int(crc16(tagged(key)) % UInt16(count))
    }

    /// The part of the key that is hashed.
    static func tagged(_ key: [UInt8]) -> ArraySlice<UInt8> {
        guard let open = key.firstIndex(of: UInt8(ascii: "{")),
              let close = key[(open + 1)...].firstIndex(of: UInt8(ascii: "}")), close > open + 1 else { return key[...] }
        return key[(open + 1)..<close]
    }

    static func crc16(_ bytes: ArraySlice<UInt8>) -> UInt16 {
        var crc: UInt16 = 0
        for byte in bytes { crc = (crc << 8) ^ table[Int((crc >> 8) ^ UInt16(byte))] }
        return crc
    }

    private static let table: [UInt16] = (0..<256).map { index -> UInt16 in
        var crc = UInt16(index) << 8
        for _ in 0..<8 { crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1 }
        return crc
    }
}
