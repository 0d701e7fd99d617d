import Foundation

/// One line of a rule: a key (or a key pattern) to delete, and when it applies.
public struct KeyRule: Sendable, Equatable {
    public enum Target: Sendable, Equatable {
        /// An exact key, sent to Redis as one binary-safe argument.
        case key(KeyTemplate)
        /// A `SCAN MATCH` glob; only its literal text may hold wildcards, payload values are escaped.
        case pattern(KeyTemplate)
    }

    public var target: Target
    /// Each named payload field must equal one of the listed values.
    public var when: [String: [String]]
    /// Each named payload field must be present (non-null, non-empty), in addition to the placeholders.
    public var requires: [String]

    public init(target: Target, when: [String: [String]] = [:], requires: [String] = []) {
        self.target = target
        self.when = when
        self.requires = requires
    }

    func applies(to fields: [String: String]) -> Bool {
        for name in requires where fields[name]?.isEmpty ?? true { return false }
        for (name, allowed) in when {
            guard let value = fields[name], allowed.contains(where: { $0.utf8.elementsEqual(value.utf8) }) else { return false }
        }
        return true
    }
}

/// The mapping from event kind to the keys it makes stale: data, not code, so ops can
/// change it with a file (`--rules`) and a restart, no rebuild.
public struct RuleSet: Sendable, Equatable {
    public private(set) var rules: [EventKind: [KeyRule]]

    public init(rules: [EventKind: [KeyRule]]) {
        self.rules = rules
    }

    /// The rules the product ships with: the SPEC's table, embedded so a bare binary works.
    public static func defaults() -> RuleSet {
        // The embedded text is also shipped as rules/default-rules.json; a test keeps them equal.
        do {
            return try RulesLoader.parse(Data(DefaultRules.json.utf8), source: "built-in default rules")
        } catch {
            preconditionFailure("the built-in default rules do not load: \(error)")
        }
    }
}

/// What one batch of events asks of Redis, with the prefix applied and duplicates removed.
public struct InvalidationPlan: Sendable, Equatable {
    /// Exact keys, each once, in first-seen order.
    public private(set) var keys: [String] = []
    /// `SCAN MATCH` patterns, each once.
    public private(set) var patterns: [String] = []
    // Bytes, not String: Swift's String equality is canonical equivalence, so "café" written
    // with U+00E9 and with e + U+0301 would compare equal, yet they are two keys in Redis.
    private var seenKeys: Set<[UInt8]> = []
    private var seenPatterns: Set<[UInt8]> = []

    public init() {}

    public var isEmpty: Bool { keys.isEmpty && patterns.isEmpty }

    public mutating func add(key: String) {
        if seenKeys.insert(Array(key.utf8)).inserted { keys.append(key) }
    }

    public mutating func add(pattern: String) {
        if seenPatterns.insert(Array(pattern.utf8)).inserted { patterns.append(pattern) }
    }

    public static func == (lhs: InvalidationPlan, rhs: InvalidationPlan) -> Bool {
        lhs.keys.map { Array($0.utf8) } == rhs.keys.map { Array($0.utf8) }
            && lhs.patterns.map { Array($0.utf8) } == rhs.patterns.map { Array($0.utf8) }
    }
}

extension RuleSet {
    /// Adds the keys and patterns `event` makes stale to `plan`, under `prefix`.
    ///
    /// The prefix is escaped in patterns too, so a prefix containing `*` cannot widen a scan.
    /// Returns how many keys and patterns this event asked for (before de-duplication).
    @discardableResult
    public func apply(_ event: InvalidationEvent, prefix: String, to plan: inout InvalidationPlan) -> (keys: Int, patterns: Int) {
        guard let list = rules[event.kind] else { return (0, 0) }
        var counts = (keys: 0, patterns: 0)
        for rule in list where rule.applies(to: event.fields) {
            switch rule.target {
            case .key(let template):
                if let key = template.render(event.fields) { plan.add(key: prefix + key); counts.keys += 1 }
            case .pattern(let template):
                if let pattern = template.render(event.fields, escapingValuesForGlob: true) {
                    plan.add(pattern: GlobPattern.escape(prefix) + pattern)
                    counts.patterns += 1
                }
            }
        }
        return counts
    }

    /// The plan for a single event (for `replay --dry-run`, tests and debug logs).
    public func plan(for event: InvalidationEvent, prefix: String) -> InvalidationPlan {
        var plan = InvalidationPlan()
        apply(event, prefix: prefix, to: &plan)
        return plan
    }
}
