import Testing
@testable import InvalidationCore

/// The two notification formats, against hostile text: anyone who can connect can NOTIFY on the
/// public channel, and the private one is parsed just as defensively.
@Suite("Notification payloads")
struct NotificationPayloadTests {
    @Test func anEventIDIsParsed() throws {
        #expect(try NotificationPayload.parseEventID("1") == 1)
        #expect(try NotificationPayload.parseEventID("9223372036854775807") == Int64.max)
    }

    @Test(arguments: [
        ("", "empty"), ("0", "not_an_id"), ("007", "not_an_id"), ("-1", "not_an_id"), ("+1", "not_an_id"),
        (" 1", "not_an_id"), ("1 ", "not_an_id"), ("1.5", "not_an_id"), ("١٢", "not_an_id"),
        ("9223372036854775808", "out_of_range"), ("12345678901234567890", "too_long"),
        ("1 trade_settled {}", "not_an_id"),
    ])
    func badEventIDsAreRefused(payload: String, reason: String) {
        #expect(throws: NotificationPayload.Malformed.self) { try NotificationPayload.parseEventID(payload) }
        do { _ = try NotificationPayload.parseEventID(payload) } catch { #expect(error.reasonCode == reason) }
    }

    @Test func anEventIsSplitIntoItsFields() throws {
        let payload = #"42 trade_settled {"side": "sell", "tx_hash": "0x h", "telegram_id": "7"}"#
        let event = try NotificationPayload.parseEvent(payload)
        #expect(event == NotifiedEvent(id: 42, kind: "trade_settled", payload: #"{"side": "sell", "tx_hash": "0x h", "telegram_id": "7"}"#))
        // The payload is everything after the second space, spaces and all.
        #expect(try NotificationPayload.parseEvent("1 k  x ").payload == " x ")
        // A combining mark after a separator belongs to what follows it.
        #expect(try NotificationPayload.parseEvent("1 k \u{301}x") == NotifiedEvent(id: 1, kind: "k", payload: "\u{301}x"))
    }

    @Test(arguments: [
        ("", "empty"),
        ("42", "not_an_event"), ("42 trade_settled", "not_an_event"), ("42 trade_settled ", "not_an_event"),
        ("0 trade_settled {}", "not_an_id"), ("-42 trade_settled {}", "not_an_id"), ("x trade_settled {}", "not_an_id"),
        ("99999999999999999999 trade_settled {}", "too_long"), ("١٢ trade_settled {}", "not_an_id"),
        ("42  trade_settled {}", "not_an_event"), ("42 Trade_Settled {}", "not_an_event"),
        ("42 trade-settled {}", "not_an_event"), ("42 trade_settled\n {}", "not_an_event"),
        ("42 \(String(repeating: "k", count: 64)) {}", "not_an_event"), ("42 trade_settled\u{301} {}", "not_an_event"),
        ("{\"id\":42}", "not_an_event"),
    ])
    func malformedEventsAreRefused(payload: String, reason: String) {
        #expect(throws: NotificationPayload.Malformed.self) { try NotificationPayload.parseEvent(payload) }
        do { _ = try NotificationPayload.parseEvent(payload) } catch {
            #expect(error.reasonCode == reason, "\(payload.debugDescription): \(error)")
            #expect(!error.description.contains("\n"), "one line for the log")
        }
    }

    /// Whatever the payload holds, the parser only splits it: an injected rule or a huge value is
    /// the JSON reader's and the rules' business (tested with them), never a crash here.
    @Test func oddPayloadsAreHandedOnUntouched() throws {
        for payload in [#"{"keys":["*"]}"#, "not json", String(repeating: "9", count: 7_900), "\u{0}"] {
            #expect(try NotificationPayload.parseEvent("5 wallet_created " + payload).payload == payload)
        }
    }

    @Test func onlyPatternRulesKeepAnEventOffTheFastPath() {
        let rules = RuleSet.defaults()
        #expect(rules.deletesByPattern(.walletDeleted))
        #expect(rules.deletesByPattern(.tableTruncated))
        for kind in [EventKind.tradeSettled, .transferSettled, .settingsChanged, .walletCreated, .walletChanged, .manualRefresh] {
            #expect(!rules.deletesByPattern(kind), "\(kind)")
        }
    }
}
