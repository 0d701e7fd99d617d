import InvalidationCore
import Logging
import PostgresClient

// Notifications: what they name becomes pending work of the active session (`PendingWork`).
// A notification is only ever a hint: the log decides what is deleted.
extension Worker {
    /// Reads every notification received so far. Runs even while Redis is down, so that the
    /// server's notification queue never backs up behind this listener.
    func readNotifications() {
        guard let connection = session?.connection.log.connection else { return }
        do {
            try connection.consumeInput()
        } catch {
            postgresFailed(error)
            return
        }
        handleBufferedNotifications()
    }

    /// Notifications libpq has already parsed; no socket read.
    func handleBufferedNotifications() {
        guard let connection = session?.connection.log.connection else { return }
        let received = connection.notifications()
        guard !received.isEmpty else { return }
        statistics.update { $0.notificationsReceived += UInt64(received.count) }
        for notification in received { handle(notification) }
    }

    private func handle(_ notification: PGNotification) {
        if let channel = active?.privateChannel, notification.channel == channel {
            handlePrivate(notification)
            return
        }
        do {
            let id = try NotificationPayload.parseEventID(notification.payload)
            admit { $0.name(id) }
        } catch {
            statistics.update { $0.malformedNotifications += 1 }
            logger.warning("ignored malformed notification", metadata: [
                LogKey.reason: "\(error.reasonCode)",
                LogKey.error: "\(error)",
                LogKey.senderPID: "\(notification.senderPID)",
            ])
        }
    }

    /// A whole event from the private channel, which only emit() can send on (its name is a
    /// secret). Deleted straight from the notification when that is safe; anything unusual (a
    /// pattern or whole-family rule, a kind this worker does not know, a payload the log path
    /// would log about) is read from the log instead, by id, as on the public channel. Nothing
    /// here can keep an event from being read from the log: it is acknowledged only if the log
    /// holds this very event (`invalidateNotified`).
    private func handlePrivate(_ notification: PGNotification) {
        do {
            let notified = try NotificationPayload.parseEvent(notification.payload)
            if let kind = EventKind(rawValue: notified.kind), !patternKinds.contains(kind),
               let decoded = try? EventPayload.decodeReportingOversized(notified.payload), decoded.oversized.isEmpty {
                // The start point comes from the log with the acknowledgement.
                let event = CarriedEvent(event: InvalidationEvent(id: notified.id, kind: kind, fields: decoded.fields, startMicros: 0), payload: notified.payload)
                admit { $0.notify(event) }
            } else {
                admit { $0.name(notified.id) }
            }
        } catch {
            // Only emit() knows the channel, so this is a bug or a leaked name, not noise. The
            // payload is not logged: on this channel it may be a user's data.
            statistics.update { $0.malformedNotifications += 1 }
            logger.error("ignored a malformed notification on the private channel", metadata: [
                LogKey.reason: "\(error.reasonCode)",
                LogKey.error: "payload of \(notification.payload.utf8.count) bytes",
                LogKey.senderPID: "\(notification.senderPID)",
            ])
        }
    }

    /// Adds what a notification named to the pending work, within its bound.
    private func admit(_ add: (inout PendingWork) -> PendingWork.Admission) {
        guard session?.active != nil else { return }
        // While Redis is away nothing is fetched, and reconnecting drains the whole log:
        // remembering ids meanwhile would only let a flood of notifications grow memory.
        guard invalidator != nil else {
            session?.active?.work.requestDrain()
            return
        }
        if add(&session!.active!.work) == .overflowed {
            // A flood (forged ids, or notifications faster than Redis for long): the log, read
            // in a drain, finds every real event.
            logger.warning("too many notified events waiting; draining the log instead of fetching them by id")
        }
    }
}
