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

    @Option(help: ArgumentHelp("Events created or processed at or after this time, and all pending ones: a duration ago (15m, 2h) or a timestamp Postgres accepts.", valueName: "time"))
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
        var range = Replayer.Range(fromID: fromID, toID: toID)
        if let since, let nanoseconds = DurationText.parse(since), since.last?.isLetter == true {
            // "15m" means fifteen minutes ago (on the database's clock); anything else is a
            // timestamp for Postgres to parse.
            range.sinceMillisecondsAgo = Int64(nanoseconds / 1_000_000)
        } else {
            range.since = since
        }
        let replayer = Replayer(configuration: configuration)
        let summary: Replayer.Summary
        do {
            summary = try replayer.run(range, dryRun: dryRun) { print($0) }
        } catch {
            FileHandle.standardError.write(Data("cache-invalidator replay: \(error)\n".utf8))
            throw ExitCode(1)
        }
        var scope = summary.firstID.map { "ids \($0)-\(summary.lastID ?? $0)" } ?? "no events in the range"
        if let cutoff = summary.cutoff { scope += ", since \(cutoff)" }
        if dryRun {
            print("dry run: \(summary.events) events (\(scope)) would delete \(summary.keys) keys and scan \(summary.patterns) patterns")
        } else {
            print("replayed \(summary.events) events (\(scope)): \(summary.keys) keys deleted (\(summary.removed) existed), \(summary.patterns) patterns scanned")
        }
    }
}
