/// One answer of the status endpoint, and its bytes on the wire: HTTP/1.1, a length, and
/// `Connection: close` (the endpoint answers one request per connection).
public struct HTTPResponse: Sendable, Equatable {
    public var status: Int
    public var contentType: String
    public var body: [UInt8]

    public init(status: Int, contentType: String, body: [UInt8]) {
        self.status = status
        self.contentType = contentType
        self.body = body
    }

    /// A `text/plain` answer of one line.
    public static func text(_ status: Int, _ line: String) -> HTTPResponse {
        HTTPResponse(status: status, contentType: "text/plain", body: Array((line + "\n").utf8))
    }

    /// The reason phrases of the statuses the endpoint sends.
    static let reasons = [
        200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 431: "Request Header Fields Too Large",
        503: "Service Unavailable", 505: "HTTP Version Not Supported",
    ]

    /// Status line, headers and body, ready to send.
    public var bytes: [UInt8] {
        let reason = Self.reasons[status] ?? "Error"
        var bytes = Array("HTTP/1.1 \(status) \(reason)\r\nContent-Type: \(contentType)\r\nContent-Length: \(body.count)\r\nConnection: close\r\n\r\n".utf8)
        bytes += body
        return bytes
    }
}
