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

    /// Whether any rule of `kind` deletes by pattern (a `SCAN MATCH`, or a whole family). Such
    /// an event is only ever taken from the log, never from a notification.
    public func deletesByPattern(_ kind: EventKind) -> Bool {
        rules[kind]?.contains { if case .pattern = $0.target { return true } else { return false } } ?? false
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
    /// Exact keys as Redis receives them, each once, in first-seen order.
    // Bytes, not String: Swift's String equality is canonical equivalence, so "café" written
    // with U+00E9 and with e + U+0301 would compare equal, yet they are two keys in Redis. Bytes
    // also go to Redis as they are, without a conversion per key.
    public private(set) var keyBytes: [[UInt8]] = []
    /// `SCAN MATCH` patterns, each once.
    public private(set) var patterns: [String] = []
    private var seenKeys: Set<Bytes> = []
    private var seenPatterns: Set<Bytes> = []

    /// Hashes its bytes in one call: `[UInt8]`'s own hashing feeds the hasher byte by byte,
    /// which was a tenth of the worker's CPU while draining a backlog. Shares the array's
    /// storage with `keyBytes`.
    private struct Bytes: Hashable {
        let bytes: [UInt8]
        func hash(into hasher: inout Hasher) {
            bytes.withUnsafeBytes { hasher.combine(bytes: $0) }
        }
    }

    public init() {}

    /// Room for `keys` exact keys without growing (a batch's plan is built key by key).
    public mutating func reserveCapacity(keys: Int) {
        keyBytes.reserveCapacity(keys)
        seenKeys.reserveCapacity(keys)
    }

    /// The exact keys as text (for people: dry runs, logs, tests).
    public var keys: [String] { keyBytes.map { String(decoding: $0, as: UTF8.self) } }

    public var isEmpty: Bool { keyBytes.isEmpty && patterns.isEmpty }

    public mutating func add(key: String) {
        add(keyBytes: Array(key.utf8))
    }

    public mutating func add(keyBytes key: [UInt8]) {
        if seenKeys.insert(Bytes(bytes: key)).inserted { keyBytes.append(key) }
    }

    public mutating func add(pattern: String) {
        if seenPatterns.insert(Bytes(bytes: Array(pattern.utf8))).inserted { patterns.append(pattern) }
    }

    public static func == (lhs: InvalidationPlan, rhs: InvalidationPlan) -> Bool {
        lhs.keyBytes == rhs.keyBytes && lhs.patterns.map { Array($0.utf8) } == rhs.patterns.map { Array($0.utf8) }
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
                var key: [UInt8] = []
                key.reserveCapacity(prefix.utf8.count + 48)
                key.append(contentsOf: prefix.utf8)
                if template.render(event.fields, appendingTo: &key) { plan.add(keyBytes: key); counts.keys += 1 }
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
