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

    @Test func oversizedFieldsAreDroppedAndReportedNotTheEvent() throws {
        let limit = EventPayload.maximumFieldBytes
        let atLimit = String(repeating: "x", count: limit)
        let over = String(repeating: "y", count: limit + 1)
        let json = #"{"telegram_id":"42","a":""# + atLimit + #"","b":""# + over + #""}"#
        let decoded = try EventPayload.decodeReportingOversized(json)
        #expect(decoded.fields == ["telegram_id": "42", "a": atLimit])
        #expect(decoded.oversized == ["b"])
        #expect(try EventPayload.decode(json) == ["telegram_id": "42", "a": atLimit])
    }

    @Test func sizeIsCountedInUTF8Bytes() throws {
        // 20 000 four-byte scalars: 80 kB though only 20 000 characters.
        let json = #"{"telegram_id":"7","a":""# + String(repeating: "🚀", count: 20_000) + #""}"#
        let decoded = try EventPayload.decodeReportingOversized(json)
        #expect(decoded.oversized == ["a"])
        #expect(decoded.fields == ["telegram_id": "7"])
    }
}
