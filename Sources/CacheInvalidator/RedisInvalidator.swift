import InvalidationCore
import RedisClient

/// Executes an `InvalidationPlan` against Redis: exact keys in one pipelined round trip,
/// patterns by `SCAN ... MATCH` (never `KEYS`, which blocks Redis on a large keyspace).
struct RedisInvalidator {
    let connection: RedisConnection
    let deleteCommand: WorkerConfiguration.DeleteCommand
    /// Keys per DEL/UNLINK command: bounds the size of one command while keeping one round trip.
    static let keysPerCommand = 512
    static let scanCount = "1000"

    struct Outcome {
        /// Keys that existed and were removed (the sum of the integer replies).
        var removed: Int64 = 0
        var scanned = 0
    }

    /// Throws unless Redis confirmed every deletion: the caller acknowledges only on success.
    func execute(_ plan: InvalidationPlan) throws(RedisError) -> Outcome {
        var outcome = Outcome()
        if !plan.keyBytes.isEmpty {
            var commands: [[[UInt8]]] = []
            commands.reserveCapacity(plan.keyBytes.count / Self.keysPerCommand + 1)
            var index = 0
            while index < plan.keyBytes.count {
                let end = min(index + Self.keysPerCommand, plan.keyBytes.count)
                var command: [[UInt8]] = [deleteCommand.argument]
                command.reserveCapacity(end - index + 1)
                command.append(contentsOf: plan.keyBytes[index..<end])
                commands.append(command)
                index = end
            }
            outcome.removed += try confirm(connection.pipeline(commands))
        }
        for pattern in plan.patterns {
            outcome.removed += try deleteMatching(pattern)
            outcome.scanned += 1
        }
        return outcome
    }

    private func deleteMatching(_ pattern: String) throws(RedisError) -> Int64 {
        var cursor: [UInt8] = Array("0".utf8)
        var removed: Int64 = 0
        repeat {
            let reply = try connection.command([Array("SCAN".utf8), cursor, Array("MATCH".utf8), Array(pattern.utf8), Array("COUNT".utf8), Array(Self.scanCount.utf8)])
            guard case .array(let parts) = reply, parts.count == 2, case .bulk(let next) = parts[0], case .array(let found) = parts[1] else {
                if case .error(let message) = reply { throw RedisError(code: .commandFailed, message: "SCAN: \(message)") }
                throw RedisError(code: .unexpectedReply, message: "SCAN answered \(reply)")
            }
            var keys: [[UInt8]] = []
            for case .bulk(let key) in found { keys.append(key) }
            if !keys.isEmpty {
                removed += try confirm(connection.pipeline([[deleteCommand.argument] + keys]))
            }
            cursor = next
        } while cursor != Array("0".utf8)
        return removed
    }

    private func confirm(_ replies: [RedisReply]) throws(RedisError) -> Int64 {
        var removed: Int64 = 0
        for reply in replies {
            switch reply {
            case .integer(let n): removed += n
            case .error(let message): throw RedisError(code: .commandFailed, message: "\(deleteCommand.rawValue.uppercased()): \(message)")
            default: throw RedisError(code: .unexpectedReply, message: "\(deleteCommand.rawValue.uppercased()) answered \(reply)")
            }
        }
        return removed
    }
}
