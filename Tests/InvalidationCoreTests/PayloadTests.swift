import Foundation
import Testing
@testable import InvalidationCore

@Suite("EventPayload.decode")
struct EventPayloadTests {
    @Test func stringsAreKept() throws {
        let fields = try EventPayload.decode(#"{"telegram_id":"42","wallet_address":"0xAbC","side":"sell"}"#)
        #expect(fields == ["telegram_id": "42", "wallet_address": "0xAbC", "side": "sell"])
    }

    @Test func nullsAndEmptyStringsAreDropped() throws {
        let fields = try EventPayload.decode(#"{"telegram_id":"42","tx_hash":null,"sell_id":"","side":" "}"#)
        #expect(fields == ["telegram_id": "42", "side": " "])
    }

    @Test func emptyObjectIsNoFields() throws {
        #expect(try EventPayload.decode("{}") == [:])
        #expect(try EventPayload.decode(" \n{ }\t") == [:])
    }

    @Test(arguments: [
        (#"{"telegram_id":42}"#, "42"),
        (#"{"telegram_id":-7}"#, "-7"),
        (#"{"telegram_id":0}"#, "0"),
        (#"{"telegram_id":9007199254740993}"#, "9007199254740993"),
        (#"{"telegram_id":9223372036854775807}"#, "9223372036854775807"),
        (#"{"telegram_id":1.5}"#, "1.5"),
    ])
    func numbersBecomeTheirText(json: String, text: String) throws {
        #expect(try EventPayload.decode(json) == ["telegram_id": text])
    }

    @Test func booleansBecomeTheirText() throws {
        // The doc comment promises "numbers and booleans are accepted as their text".
        let fields = try EventPayload.decode(#"{"a":true,"b":false}"#)
        #expect(fields.count == 2)
        #expect(fields == ["a": "true", "b": "false"])
    }

    @Test func unicodeIsPreserved() throws {
        let fields = try EventPayload.decode(#"{"a":"🚀 ü \u202Eabc","b":"\u00e9\n\"x\"","c":"e\u0301"}"#)
        #expect(fields["a"] == "🚀 ü \u{202E}abc")
        #expect(fields["b"] == "é\n\"x\"")
        #expect(fields["c"]?.unicodeScalars.map(\.value) == [0x65, 0x301])
    }

    @Test(arguments: [
        (#"{"telegram_id":"1","extra":{"a":"b"}}"#, "extra"),
        (#"{"tags":["a","b"]}"#, "tags"),
        (#"{"tags":[]}"#, "tags"),
        (#"{"o":{}}"#, "o"),
    ])
    func nestedValuesAreRefused(json: String, field: String) {
        let error = #expect(throws: PayloadError.self) { try EventPayload.decode(json) }
        #expect(error?.reason == "field \"\(field)\" is nested (only strings, numbers and null are allowed)")
        #expect(error?.description == "event payload field \"\(field)\" is nested (only strings, numbers and null are allowed)")
    }

    @Test(arguments: ["[]", #"["telegram_id","1"]"#, #""telegram_id""#, "42", "null", "true"])
    func nonObjectsAreRefused(json: String) {
        let error = #expect(throws: PayloadError.self) { try EventPayload.decode(json) }
        #expect(error?.reason == "is not a JSON object")
    }

    @Test(arguments: ["", "{", #"{"a":}"#, "{'a':'b'}", #"{"a":"b"} x"#, "telegram_id=1", #"{"a":"\ud800"}"#])
    func invalidJSONIsRefused(json: String) {
        let error = #expect(throws: PayloadError.self) { try EventPayload.decode(json) }
        #expect(error?.reason == "is not valid JSON")
    }

    @Test func sizeLimitIsOneMebibyte() throws {
        let overhead = #"{"a":""}"#.utf8.count
        let atLimit = #"{"a":""# + String(repeating: "x", count: EventPayload.maximumBytes - overhead) + #""}"#
        #expect(atLimit.utf8.count == 1 << 20)
        #expect(try EventPayload.decode(atLimit)["a"]?.count == (1 << 20) - overhead)

        let over = #"{"a":""# + String(repeating: "x", count: EventPayload.maximumBytes - overhead + 1) + #""}"#
        let error = #expect(throws: PayloadError.self) { try EventPayload.decode(over) }
        #expect(error?.reason == "is 1048577 bytes, over the 1048576-byte limit")
    }

    @Test func sizeIsCountedInUTF8Bytes() {
        // 300 000 four-byte scalars: 1.2 MB though only 300 000 characters.
        let over = #"{"a":""# + String(repeating: "🚀", count: 300_000) + #""}"#
        let error = #expect(throws: PayloadError.self) { try EventPayload.decode(over) }
        #expect(error?.reason.hasPrefix("is 1200008 bytes") == true)
    }
}

@Suite("NotificationPayload")
struct NotificationPayloadTests {
    @Test(arguments: [("1", Int64(1)), ("42", 42), ("9223372036854775807", Int64.max), ("1000000000000000000", 1_000_000_000_000_000_000)])
    func validIDs(text: String, id: Int64) throws {
        #expect(try NotificationPayload.parseEventID(text) == id)
    }

    struct Refusal: Sendable, CustomTestStringConvertible {
        var payload: String
        var reasonCode: String
        var testDescription: String { payload.debugDescription.count > 40 ? "\(payload.utf8.count) bytes" : payload.debugDescription }
    }

    @Test(arguments: [
        Refusal(payload: "", reasonCode: "empty"),
        Refusal(payload: "0", reasonCode: "not_an_id"),
        Refusal(payload: "-1", reasonCode: "not_an_id"),
        Refusal(payload: "+1", reasonCode: "not_an_id"),
        Refusal(payload: " 1", reasonCode: "not_an_id"),
        Refusal(payload: "1 ", reasonCode: "not_an_id"),
        Refusal(payload: "01", reasonCode: "not_an_id"),
        Refusal(payload: "00", reasonCode: "not_an_id"),
        Refusal(payload: "1.0", reasonCode: "not_an_id"),
        Refusal(payload: "1e3", reasonCode: "not_an_id"),
        Refusal(payload: "0x1", reasonCode: "not_an_id"),
        Refusal(payload: "12345678901234567890", reasonCode: "too_long"),
        Refusal(payload: "9223372036854775808", reasonCode: "out_of_range"),
        Refusal(payload: "9999999999999999999", reasonCode: "out_of_range"),
        Refusal(payload: #"{"id":1}"#, reasonCode: "not_an_id"),
        Refusal(payload: #"{"kind":"table_truncated","table":"wallets"}"#, reasonCode: "too_long"),
        Refusal(payload: String(repeating: "7", count: 10_240), reasonCode: "too_long"),
        Refusal(payload: "1\n", reasonCode: "not_an_id"),
        Refusal(payload: "\n", reasonCode: "not_an_id"),
        Refusal(payload: "1\u{0}", reasonCode: "not_an_id"),
        Refusal(payload: "\u{0}", reasonCode: "not_an_id"),
        Refusal(payload: "١٢", reasonCode: "not_an_id"),
        Refusal(payload: "１２", reasonCode: "not_an_id"),
        Refusal(payload: "*", reasonCode: "not_an_id"),
    ])
    func refused(_ refusal: Refusal) {
        let error = #expect(throws: NotificationPayload.Malformed.self) { try NotificationPayload.parseEventID(refusal.payload) }
        #expect(error?.reasonCode == refusal.reasonCode)
    }

    @Test func refusalsCarryABoundedPreview() {
        #expect(throws: NotificationPayload.Malformed.notAnEventID(preview: #""-1""#)) { try NotificationPayload.parseEventID("-1") }
        #expect(throws: NotificationPayload.Malformed.outOfRange(preview: #""9223372036854775808""#)) {
            try NotificationPayload.parseEventID("9223372036854775808")
        }
        #expect(throws: NotificationPayload.Malformed.tooLong(bytes: 10_240)) {
            try NotificationPayload.parseEventID(String(repeating: "x", count: 10_240))
        }
        #expect(throws: NotificationPayload.Malformed.empty) { try NotificationPayload.parseEventID("") }
        #expect(throws: NotificationPayload.Malformed.notAnEventID(preview: #""1\n""#)) { try NotificationPayload.parseEventID("1\n") }
    }

    @Test func descriptions() {
        #expect(NotificationPayload.Malformed.empty.description == "empty payload (expected a decimal event id)")
        #expect(NotificationPayload.Malformed.tooLong(bytes: 44).description == "payload of 44 bytes (an event id has at most 19 digits)")
        #expect(NotificationPayload.Malformed.notAnEventID(preview: #""x""#).description == #"payload "x" is not a decimal event id"#)
        #expect(NotificationPayload.Malformed.outOfRange(preview: #""9""#).description == #"payload "9" is not a positive 64-bit event id"#)
    }

    @Test func reasonCodesNeverContainThePayload() {
        let codes = [NotificationPayload.Malformed.empty, .tooLong(bytes: 99), .notAnEventID(preview: "secret"), .outOfRange(preview: "secret")]
            .map(\.reasonCode)
        #expect(codes == ["empty", "too_long", "not_an_id", "out_of_range"])
    }

    @Test(arguments: [
        ("plain", #""plain""#),
        (#"a"b"#, #""a\"b""#),
        (#"a\b"#, #""a\\b""#),
        ("a\nb\rc\td", #""a\nb\rc\td""#),
        ("\u{0}\u{1}\u{1B}\u{1F}\u{7F}", #""\u{0}\u{1}\u{1b}\u{1f}\u{7f}""#),
        ("é🚀\u{202E}", "\"é🚀\u{202E}\""),
        ("", #""""#),
    ])
    func previewEscapes(text: String, expected: String) {
        #expect(NotificationPayload.preview(text) == expected)
    }

    @Test func previewTruncatesAt64Scalars() {
        #expect(NotificationPayload.preview(String(repeating: "a", count: 64)) == "\"" + String(repeating: "a", count: 64) + "\"")
        #expect(NotificationPayload.preview(String(repeating: "a", count: 65)) == "\"" + String(repeating: "a", count: 64) + "…\"")
        #expect(NotificationPayload.preview(String(repeating: "🚀", count: 100)) == "\"" + String(repeating: "🚀", count: 64) + "…\"")
        // Scalars, not characters: "e" + combining acute is two scalars.
        #expect(NotificationPayload.preview(String(repeating: "e\u{301}", count: 40)) == "\"" + String(repeating: "e\u{301}", count: 32) + "…\"")
        // Escaping happens after the cut: 64 newlines become 128 characters of text, still bounded.
        #expect(NotificationPayload.preview(String(repeating: "\n", count: 1000)) == "\"" + String(repeating: "\\n", count: 64) + "…\"")
        #expect(NotificationPayload.preview("abcdef", limit: 3) == #""abc…""#)
    }
}
