import ArgumentParser
import CacheInvalidator
import Foundation

struct Replay: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the invalidation of logged events again, for an id or time range.",
        discussion: """
            For when Redis came back from a snapshot older than some deletions, or rules changed: the keys of every event in the range are deleted again (processed or not; deletions are idempotent). The log is only read. Processed events are kept for --retention (default 24h) by the worker, so that is how far back a replay can reach.

            Examples:
              cache-invalidator replay --since 15m
              cache-invalidator replay --since '2026-11-21 10:00+00'
              cache-invalidator replay --from-id 90211 --to-id 90500 --dry-run
            """)

    @Option(help: ArgumentHelp("Events created at or after this time: a duration ago (15m, 2h) or a timestamp Postgres accepts.", valueName: "time"))
    var since: String?
    @Option(help: "First event id of the range.") var fromID: Int64?
    @Option(help: "Last event id of the range.") var toID: Int64?
    @Flag(help: "List the keys and patterns instead of deleting them.") var dryRun = false
    @OptionGroup var servers: ServerOptions

    func validate() throws {
        guard since != nil || fromID != nil else {
            throw ValidationError("give a range: --since TIME or --from-id N (with --to-id M to bound it)")
        }
        if let fromID, let toID, toID < fromID { throw ValidationError("--to-id \(toID) is below --from-id \(fromID)") }
        if let fromID, fromID < 1 { throw ValidationError("--from-id must be at least 1") }
    }

    func run() throws {
        let configuration = servers.configuration()
        var sinceTimestamp = since
        if let since, let nanoseconds = DurationText.parse(since), since.last?.isLetter == true {
            // "15m" means fifteen minutes ago; anything else is left to Postgres to parse.
            let date = Date().addingTimeInterval(-Double(nanoseconds) / 1e9)
            sinceTimestamp = date.formatted(.iso8601)
        }
        let replayer = Replayer(configuration: configuration)
        let summary: Replayer.Summary
        do {
            summary = try replayer.run(.init(fromID: fromID, toID: toID, since: sinceTimestamp), dryRun: dryRun) { print($0) }
        } catch {
            FileHandle.standardError.write(Data("cache-invalidator replay: \(error)\n".utf8))
            throw ExitCode(1)
        }
        let range = summary.firstID.map { "ids \($0)-\(summary.lastID ?? $0)" } ?? "no events in the range"
        if dryRun {
            print("dry run: \(summary.events) events (\(range)) would delete \(summary.keys) keys and scan \(summary.patterns) patterns")
        } else {
            print("replayed \(summary.events) events (\(range)): \(summary.keys) keys deleted (\(summary.removed) existed), \(summary.patterns) patterns scanned")
        }
    }
}
