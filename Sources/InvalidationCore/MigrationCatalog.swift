/// One numbered migration: `NNNN_name.up.sql` and its `NNNN_name.down.sql`.
public struct Migration: Sendable, Equatable {
    public var version: Int64
    public var name: String
    public var upFile: String
    public var downFile: String
}

/// Finds the migrations in a directory listing, golang-migrate style, and refuses a listing
/// that would apply something other than what the DBA expects (a missing down file, two files
/// with one version, a name that is not `NNNN_name.(up|down).sql`).
public enum MigrationCatalog {
    public struct Problem: Error, Equatable, CustomStringConvertible {
        public var reason: String
        public var description: String { reason }
    }

    public static func parse(fileNames: [String]) throws(Problem) -> [Migration] {
        var ups: [Int64: (name: String, file: String)] = [:]
        var downs: [Int64: (name: String, file: String)] = [:]
        for file in fileNames.sorted() where file.hasSuffix(".sql") {
            let direction: String
            let stem: Substring
            if file.hasSuffix(".up.sql") {
                direction = "up"; stem = file.dropLast(".up.sql".count)
            } else if file.hasSuffix(".down.sql") {
                direction = "down"; stem = file.dropLast(".down.sql".count)
            } else {
                throw Problem(reason: "\(file): a migration file must end in .up.sql or .down.sql")
            }
            guard let underscore = stem.firstIndex(of: "_") else {
                throw Problem(reason: "\(file): expected NNNN_name.\(direction).sql")
            }
            let digits = stem[..<underscore]
            let name = String(stem[stem.index(after: underscore)...])
            guard digits.count >= 4, digits.allSatisfy(\.isASCII), digits.allSatisfy(\.isNumber), let version = Int64(digits), version > 0 else {
                throw Problem(reason: "\(file): the version must be a zero-padded number of at least 4 digits, e.g. 0003_name.\(direction).sql")
            }
            guard !name.isEmpty, name.unicodeScalars.allSatisfy({ ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "_" }) else {
                throw Problem(reason: "\(file): the name must be lower-case letters, digits and _")
            }
            if direction == "up" {
                if let other = ups[version] { throw Problem(reason: "\(file) and \(other.file) share version \(version)") }
                ups[version] = (name, file)
            } else {
                if let other = downs[version] { throw Problem(reason: "\(file) and \(other.file) share version \(version)") }
                downs[version] = (name, file)
            }
        }
        var migrations: [Migration] = []
        for version in Set(ups.keys).union(downs.keys).sorted() {
            guard let up = ups[version] else { throw Problem(reason: "\(downs[version]!.file) has no matching .up.sql") }
            guard let down = downs[version] else { throw Problem(reason: "\(up.file) has no matching .down.sql (every migration must be reversible)") }
            guard up.name == down.name else { throw Problem(reason: "\(up.file) and \(down.file) have different names") }
            migrations.append(Migration(version: version, name: up.name, upFile: up.file, downFile: down.file))
        }
        return migrations
    }
}
