import InvalidationCore
import Logging
import PostgresClient

// The pace (with migration 0003): `PaceMachine` decides, this executes its actions against the
// event log and reports each result back, until the machine has nothing more for this turn.
extension Worker {
    func pace() {
        let now = monotonicNanoseconds()
        guard let log = session?.connection.log, var action = session?.active?.pace?.tick(now: now) else { return }
        do {
            while true {
                guard let next = try execute(action, log: log, now: now) else { return }
                action = next
            }
        } catch {
            postgresFailed(error)
        }
    }

    /// Executes one action and reports its result; returns the machine's next action, if any.
    private func execute(_ action: PaceMachine.Action, log: EventLog, now: UInt64) throws(PostgresError) -> PaceMachine.Action? {
        switch action {
        case .takeW:
            let before = session?.active?.pace?.pace
            let taken = try log.startPolling()
            let next = session?.active?.pace?.wTaken(taken, now: now)
            if before == .notified && session?.active?.pace?.pace == .polling {
                statistics.update { $0.pollingEntries += 1 }
                if debugEnabled { logger.debug("polling the log: writers skip their NOTIFY") }
            }
            return next
        case .poll(let cursor, let skipped):
            // The previous poll's events go out acknowledged with this poll's statement.
            let acknowledged = session?.connection.deferred
            session?.connection.deferred = nil
            let fetched = try log.poll(after: cursor, skipped: skipped, limit: config.batchSize, acknowledging: acknowledged)
            postgresRoundTripSucceeded()
            if let acknowledged { record(acknowledged) }
            if fetched.rowCount > 0 {
                // Acknowledged by the next poll's statement (or before anything else reads the
                // log: acknowledgeDeferred).
                guard let deleted = delete(fetched) else { return nil }
                session?.connection.deferred = deleted
            }
            let ids = fetched.ids
            guard let step = session?.active?.pace?.polled(PaceMachine.Poll(ids: ids), now: now) else { return nil }
            if step.drain { session?.active?.work.requestDrain() }
            return step.next
        case .releaseW:
            try log.stopPolling()
            return session?.active?.pace?.wReleased(now: now)
        case .probeG:
            let free = try log.noQuietWriterInFlight()
            if session?.active?.pace?.gProbed(free: free, now: now) == true {
                // Every writer that skipped its NOTIFY has ended: one full read finds what they
                // committed, and from now on writers notify.
                session?.active?.work.requestDrain()
                if debugEnabled { logger.debug("notified again: writers NOTIFY") }
            }
            return nil
        }
    }
}
