import Foundation
import Glibc

/// Where the HTTP endpoint (`/metrics`, `/healthz`, `/readyz`) listens: `IP:PORT` or
/// `[IPv6]:PORT`, or `off`. An IP address, not a host name: a name that resolves differently
/// tomorrow would silently expose the endpoint somewhere else.
public struct ListenAddress: Sendable, Equatable, CustomStringConvertible {
    public enum Family: Sendable, Equatable { case ipv4, ipv6 }
    public var family: Family
    public var ip: String
    public var port: UInt16

    public init(family: Family, ip: String, port: UInt16) {
        self.family = family
        self.ip = ip
        self.port = port
    }

    public var description: String { family == .ipv6 ? "[\(ip)]:\(port)" : "\(ip):\(port)" }

    public struct ParseError: Error, CustomStringConvertible {
        public var description: String
    }

    /// nil for `off`.
    public static func parse(_ text: String) throws(ParseError) -> ListenAddress? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if trimmed.lowercased() == "off" { return nil }
        func refuse(_ why: String) -> ParseError {
            ParseError(description: "\(text.debugDescription) is not a listen address: \(why); expected IP:PORT such as 127.0.0.1:9187, 0.0.0.0:9187 or [::1]:9187, or off")
        }
        guard trimmed.utf8.count <= 64, !trimmed.contains(where: { $0.isWhitespace || $0.asciiValue == nil }) else { throw refuse("unexpected characters") }
        let host: Substring, portText: Substring
        if trimmed.hasPrefix("[") {
            guard let close = trimmed.firstIndex(of: "]") else { throw refuse("an IPv6 address needs a closing ]") }
            host = trimmed[trimmed.index(after: trimmed.startIndex)..<close]
            let rest = trimmed[trimmed.index(after: close)...]
            guard rest.hasPrefix(":") else { throw refuse("the port is missing after ]") }
            portText = rest.dropFirst()
        } else {
            guard let colon = trimmed.lastIndex(of: ":") else { throw refuse("the port is missing") }
            host = trimmed[..<colon]
            portText = trimmed[trimmed.index(after: colon)...]
            guard !host.contains(":") else { throw refuse("write an IPv6 address in brackets") }
        }
        guard !portText.isEmpty, portText.allSatisfy({ $0.isASCII && $0.isNumber }), portText.count <= 5,
              let port = UInt16(portText), port > 0 else { throw refuse("the port must be a number from 1 to 65535") }
        let ip = String(host)
        if trimmed.hasPrefix("[") {
            var storage = in6_addr()
            guard inet_pton(AF_INET6, ip, &storage) == 1 else { throw refuse("\(ip.debugDescription) is not an IPv6 address") }
            return ListenAddress(family: .ipv6, ip: ip, port: port)
        }
        var storage = in_addr()
        // inet_pton accepts only the four-part dotted form, not "127.1" or names.
        guard inet_pton(AF_INET, ip, &storage) == 1 else { throw refuse("\(ip.debugDescription) is not an IPv4 address (host names are not accepted)") }
        return ListenAddress(family: .ipv4, ip: ip, port: port)
    }
}
