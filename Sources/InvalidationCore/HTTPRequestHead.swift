/// The request line of an HTTP/1.x request, as the status endpoint needs it: method and path.
/// Strict and bounded, because anyone who can reach the port can send anything.
public struct HTTPRequestHead: Sendable, Equatable {
    public var method: String
    public var path: String

    public init(method: String, path: String) {
        self.method = method
        self.path = path
    }

    /// The most the endpoint reads of a request head.
    public static let maximumBytes = 8192

    public enum Outcome: Sendable, Equatable {
        /// The head is complete (ends in an empty line) and well formed.
        case complete(HTTPRequestHead)
        /// More bytes are needed.
        case incomplete
        /// Not a request the endpoint will answer: 400, 414 or 505, with the reason.
        case refused(status: Int, reason: String)
    }

    public static func parse(_ bytes: [UInt8]) -> Outcome {
        guard let end = headEnd(bytes) else {
            return bytes.count >= maximumBytes ? .refused(status: 431, reason: "request head over \(maximumBytes) bytes") : .incomplete
        }
        guard end <= maximumBytes else { return .refused(status: 431, reason: "request head over \(maximumBytes) bytes") }
        let lineEnd = bytes[..<end].firstIndex(of: UInt8(ascii: "\r")) ?? bytes[..<end].firstIndex(of: UInt8(ascii: "\n")) ?? end
        let line = bytes[..<lineEnd]
        guard line.allSatisfy({ $0 >= 0x20 && $0 < 0x7f }) else { return .refused(status: 400, reason: "request line is not printable ASCII") }
        let parts = line.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, !parts[1].isEmpty else { return .refused(status: 400, reason: "request line is not METHOD PATH VERSION") }
        let method = String(decoding: parts[0], as: UTF8.self)
        let target = String(decoding: parts[1], as: UTF8.self)
        let version = String(decoding: parts[2], as: UTF8.self)
        guard method.allSatisfy({ $0.isUppercase && $0.isLetter }) else { return .refused(status: 400, reason: "bad method") }
        guard version == "HTTP/1.1" || version == "HTTP/1.0" else { return .refused(status: 505, reason: "only HTTP/1.0 and HTTP/1.1") }
        guard target.hasPrefix("/") else { return .refused(status: 400, reason: "target must be a path") }
        // The query string does not select anything here; Prometheus may add one.
        let path = target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? target
        return .complete(HTTPRequestHead(method: method, path: path))
    }

    /// Index just past the first empty line (CRLF CRLF, or LF LF from sloppy clients).
    private static func headEnd(_ bytes: [UInt8]) -> Int? {
        var i = 0
        while i < bytes.count {
            if bytes[i] == UInt8(ascii: "\n") {
                if i + 1 < bytes.count && bytes[i + 1] == UInt8(ascii: "\n") { return i + 2 }
                if i + 2 < bytes.count && bytes[i + 1] == UInt8(ascii: "\r") && bytes[i + 2] == UInt8(ascii: "\n") { return i + 3 }
            }
            i += 1
        }
        return nil
    }
}
