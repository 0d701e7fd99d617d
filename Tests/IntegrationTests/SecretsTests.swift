import PostgresClient
import Testing

/// Passwords never reach a log: `Secrets.redact` scrubs every candidate secret of a connection
/// string out of a message, whatever Unicode the password holds.
@Suite("Secrets")
struct SecretsTests {
    @Test(arguments: [
        "s3cr3t-Pa55", "\u{301}pw-XYZ", "pw\u{301}\u{301}", "\u{600}x\"y", "e\u{301}té", "🇫🇷🏽pw", "a b",
    ])
    func aPasswordIsScrubbedFromEveryForm(password: String) {
        for conninfo in ["postgresql://worker:\(password)@db:5432/app", "host=db password=\(password) user=worker",
                         "host=db PASSWORD='\(password)' user=worker", "postgresql://db/app?user=w&password=\(password)"] {
            // A password with a space only fits the quoted keyword form.
            guard !password.contains(" ") || conninfo.contains("'") else { continue }
            for message in ["connection to db failed: \(password)", "x=\(password)", "\(password)", "=\(password)="] {
                let redacted = Secrets.redact(message, in: conninfo)
                #expect(!redacted.utf8.elementsEqual(message.utf8), "\(conninfo.debugDescription): \(redacted.debugDescription)")
                #expect(!contains(redacted, password), "\(conninfo.debugDescription): \(redacted.debugDescription)")
                #expect(redacted.contains("***"))
            }
        }
    }

    /// A parse error may quote only part of a bad token: each half goes too, cut between scalars.
    @Test func fragmentsGoToo() {
        let password = "\u{301}abcdef\u{301}"
        let conninfo = "host=db password=\(password)"
        let halves = ["\u{301}abc", "def\u{301}"]
        for half in halves {
            let redacted = Secrets.redact("near \"\(half)\"", in: conninfo, includingFragments: true)
            #expect(!contains(redacted, half), "\(redacted.debugDescription)")
        }
        #expect(Secrets.redact("nothing secret here", in: conninfo, includingFragments: true) == "nothing secret here")
    }

    /// Byte-wise containment: what a log line would hold, whatever Swift's Character grouping.
    private func contains(_ text: String, _ part: String) -> Bool {
        Array(text.utf8).firstRange(of: Array(part.utf8)) != nil
    }
}
