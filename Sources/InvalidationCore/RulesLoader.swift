import Foundation

/// A rules file that cannot be used, with the place and the reason, e.g.
/// `rules.json: events.trade_settled[2]: placeholder {wallet} is not a field of trade_settled (...)`.
public struct RulesError: Error, Equatable, CustomStringConvertible {
    public var source: String
    public var place: String
    public var reason: String

    public var description: String {
        place.isEmpty ? "\(source): \(reason)" : "\(source): \(place): \(reason)"
    }
}

/// Reads and validates a rules file (JSON).
///
/// ```json
/// { "events": {
///     "trade_settled": [
///       "wallet_balance:{wallet_address}",
///       { "key": "temp_sell_data:{telegram_id}:{sell_id}", "when": { "side": "sell" } } ],
///     "wallet_deleted": [ { "pattern": "temp_sell_data:{telegram_id}:*" } ],
///     ... every kind must be listed; [] deletes nothing on purpose ... } }
/// ```
public enum RulesLoader {
    /// Larger files are refused before parsing: a rules file is a page of text.
    public static let maximumFileBytes = 1 << 20

    public static func load(path: String) throws(RulesError) -> RuleSet {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw RulesError(source: path, place: "", reason: "cannot be read (\(describe(error))); check the path given to --rules / RULES")
        }
        return try parse(data, source: path)
    }

    public static func parse(_ data: Data, source: String) throws(RulesError) -> RuleSet {
        func fail(_ place: String, _ reason: String) -> RulesError {
            RulesError(source: source, place: place, reason: reason)
        }
        guard data.count <= maximumFileBytes else {
            throw fail("", "is \(data.count) bytes; a rules file is at most \(maximumFileBytes) bytes")
        }
        let root: Any
        do {
            root = try JSONSerialization.jsonObject(with: data)
        } catch {
            throw fail("", "is not valid JSON (\(describe(error)))")
        }
        guard let object = root as? [String: Any] else { throw fail("", "the top level must be a JSON object with an \"events\" object") }
        for key in object.keys where key != "events" && key != "comment" && key != "version" {
            throw fail(key, "unknown top-level key (expected \"events\", optionally \"version\" and \"comment\")")
        }
        if let version = object["version"] {
            // JSON true and 1.0 also arrive as NSNumber; only the integer 1 is version 1.
            guard let number = version as? NSNumber, ["i", "l", "q", "s"].contains(String(cString: number.objCType)), number.intValue == 1 else {
                throw fail("version", "unsupported rules version \(version) (this worker reads version 1)")
            }
        }
        guard let events = object["events"] as? [String: Any] else {
            throw fail("events", "missing or not an object mapping event kinds to lists of keys")
        }
        var rules: [EventKind: [KeyRule]] = [:]
        for name in events.keys.sorted() {
            guard let kind = EventKind(rawValue: name) else {
                throw fail("events.\(name)", "unknown event kind (known: \(EventKind.allNames.joined(separator: ", ")))")
            }
            guard let list = events[name] as? [Any] else {
                throw fail("events.\(name)", "must be a list of keys (use [] to delete nothing)")
            }
            var parsed: [KeyRule] = []
            for (index, entry) in list.enumerated() {
                parsed.append(try parseRule(entry, kind: kind, place: "events.\(name)[\(index)]", fail: fail))
            }
            rules[kind] = parsed
        }
        let missing = EventKind.allCases.filter { rules[$0] == nil }.map(\.rawValue)
        if !missing.isEmpty {
            throw fail("events", "no rules for \(missing.joined(separator: ", ")); list every kind, with [] to delete nothing on purpose")
        }
        return RuleSet(rules: rules)
    }

    private static func parseRule(
        _ entry: Any, kind: EventKind, place: String, fail: (String, String) -> RulesError
    ) throws(RulesError) -> KeyRule {
        let known = kind.payloadFields
        func checkField(_ name: String, _ where_: String) throws(RulesError) {
            guard known.contains(name) else {
                throw fail(place, "\(where_) \"\(name)\" is not a field of \(kind.rawValue) (fields: \(known.joined(separator: ", ")))")
            }
        }
        func template(_ text: String) throws(RulesError) -> KeyTemplate {
            let parsed: KeyTemplate
            do { parsed = try KeyTemplate(text) } catch { throw fail(place, error.reason) }
            for name in parsed.fieldNames { try checkField(name, "placeholder") }
            return parsed
        }
        if let text = entry as? String {
            let parsed = try template(text)
            try refuseWildcards(parsed, place: place, fail: fail)
            return KeyRule(target: .key(parsed))
        }
        guard let object = entry as? [String: Any] else {
            throw fail(place, "must be a key string or an object with \"key\" or \"pattern\"")
        }
        for key in object.keys where !["key", "pattern", "when", "requires"].contains(key) {
            throw fail(place, "unknown property \"\(key)\" (expected key, pattern, when, requires)")
        }
        let target: KeyRule.Target
        switch (object["key"], object["pattern"]) {
        case (let key as String, nil):
            let parsed = try template(key)
            try refuseWildcards(parsed, place: place, fail: fail)
            target = .key(parsed)
        case (nil, let pattern as String):
            let parsed = try template(pattern)
            // Scalars, not Characters: a `*` followed by a combining mark is one Character.
            guard parsed.segments.contains(where: { if case .literal(let t) = $0 { return t.unicodeScalars.contains { "*?[".unicodeScalars.contains($0) } } else { return false } }) else {
                throw fail(place, "pattern \(pattern.debugDescription) has no wildcard; use \"key\" for an exact key (cheaper: no SCAN)")
            }
            target = .pattern(parsed)
        default:
            throw fail(place, "needs exactly one of \"key\" or \"pattern\", as a string")
        }
        var when: [String: [String]] = [:]
        if let raw = object["when"] {
            guard let conditions = raw as? [String: Any] else {
                throw fail(place, "\"when\" must map field names to a value or a list of values")
            }
            for (name, value) in conditions {
                try checkField(name, "when-field")
                if let single = value as? String {
                    when[name] = [single]
                } else if let many = value as? [Any], !many.isEmpty, many.allSatisfy({ $0 is String }) {
                    when[name] = many.map { $0 as! String }
                } else {
                    throw fail(place, "when.\(name) must be a string or a non-empty list of strings")
                }
            }
        }
        var requires: [String] = []
        if let raw = object["requires"] {
            guard let names = raw as? [Any], names.allSatisfy({ $0 is String }) else {
                throw fail(place, "\"requires\" must be a list of field names")
            }
            for name in names.map({ $0 as! String }) {
                try checkField(name, "required field")
                requires.append(name)
            }
        }
        return KeyRule(target: target, when: when, requires: requires)
    }

    /// An exact key with `*` would be deleted literally, which is never what the author meant.
    private static func refuseWildcards(_ template: KeyTemplate, place: String, fail: (String, String) -> RulesError) throws(RulesError) {
        for case .literal(let text) in template.segments where text.unicodeScalars.contains(where: { $0 == "*" || $0 == "?" }) {
            throw fail(place, "key \(template.source.debugDescription) contains a wildcard; write {\"pattern\": ...} for a SCAN deletion")
        }
    }

    static func describe(_ error: any Error) -> String {
        let text = (error as NSError).localizedDescription
        return text.isEmpty ? String(describing: error) : text
    }
}
