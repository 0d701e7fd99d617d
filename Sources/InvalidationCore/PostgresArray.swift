/// Postgres array literals for parameters (`{1,2,3}`, `{"a","b"}`), so a list is one parameter.
public enum PostgresArray {
    public static func integers(_ values: [Int64]) -> String {
        "{" + values.map(String.init).joined(separator: ",") + "}"
    }

    /// Every element quoted, `"` and `\` escaped. Escaped scalar by scalar, never by Swift
    /// character: a quote followed by a combining mark is one Character, which a Character-wise
    /// replacement would leave unescaped, and the literal would then be malformed (or, for a
    /// backslash, silently different). Values come from rows and notifications.
    public static func text(_ values: [String]) -> String {
        var out = "{"
        out.reserveCapacity(values.reduce(2) { $0 + $1.utf8.count + 3 })
        for (index, value) in values.enumerated() {
            if index > 0 { out.unicodeScalars.append(",") }
            out.unicodeScalars.append("\"")
            for scalar in value.unicodeScalars {
                if scalar == "\"" || scalar == "\\" { out.unicodeScalars.append("\\") }
                out.unicodeScalars.append(scalar)
            }
            out.unicodeScalars.append("\"")
        }
        out.unicodeScalars.append("}")
        return out
    }
}
