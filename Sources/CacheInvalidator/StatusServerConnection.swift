import InvalidationCore
import NIOCore
import Synchronization

/// The open connections of one `StatusServer`: the `HTTPConnectionTable` decides, this executes
/// (closes whom it drops). Touched only from the server's single event loop, so the lock is
/// never contended; it is there to make the type `Sendable`.
final class StatusConnections: Sendable {
    private struct State {
        var table: HTTPConnectionTable
        var channels: [HTTPConnectionTable.ID: any Channel] = [:]
    }

    private let state: Mutex<State>

    init(capacity: Int) {
        state = Mutex(State(table: HTTPConnectionTable(capacity: capacity)))
    }

    /// Admits a newly accepted connection, closing the one the table drops for it; nil: refused.
    func admit(_ channel: any Channel) -> HTTPConnectionTable.ID? {
        let (id, evicted): (HTTPConnectionTable.ID?, (any Channel)?) = state.withLock { state in
            switch state.table.admit() {
            case .admitted(let id):
                state.channels[id] = channel
                return (id, nil)
            case .admittedEvicting(let id, let evictedID):
                state.channels[id] = channel
                return (id, state.channels.removeValue(forKey: evictedID))
            case .refused:
                return (nil, nil)
            }
        }
        evicted?.close(promise: nil)
        return id
    }

    func answering(_ id: HTTPConnectionTable.ID) {
        state.withLock { $0.table.answering(id) }
    }

    func answered(_ id: HTTPConnectionTable.ID) {
        state.withLock { $0.table.answered(id) }
    }

    func closed(_ id: HTTPConnectionTable.ID) {
        state.withLock { state in
            state.table.closed(id)
            state.channels[id] = nil
        }
    }
}

/// One connection of the status endpoint: reads a request head within its deadline, answers
/// once, and closes. A connection the table refused is answered `503` at once and closed.
///
/// After the answer it closes its sending side and waits (within the answer deadline) for the
/// client to close, reading and discarding what else it sent: closing with unread bytes would
/// send a reset, which can destroy the answer before the client reads it (a `POST` with a body,
/// an oversized head).
final class StatusConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let id: HTTPConnectionTable.ID?
    private let connections: StatusConnections
    private let limits: StatusServer.Limits
    private let route: @Sendable (HTTPRequestHead) -> HTTPResponse
    private var reader = HTTPHeadReader()
    private var answered = false
    private var deadline: Scheduled<Void>?

    init(admission id: HTTPConnectionTable.ID?, connections: StatusConnections, limits: StatusServer.Limits, route: @escaping @Sendable (HTTPRequestHead) -> HTTPResponse) {
        self.id = id
        self.connections = connections
        self.limits = limits
        self.route = route
    }

    func channelActive(context: ChannelHandlerContext) {
        if id == nil {
            answer(context, .text(503, "too many connections (\(limits.maximumConnections)) are being answered; retry"))
        } else {
            arm(context, limits.headDeadline)
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Whatever follows the head (a body, a second request) is read and dropped: one request per connection.
        guard !answered else { return }
        let buffer = unwrapInboundIn(data)
        switch reader.append(buffer.readableBytesView) {
        case .incomplete:
            return
        case .complete(let head):
            answer(context, route(head))
        case .refused(let status, let reason):
            answer(context, .text(status, reason))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        deadline?.cancel()
        if let id { connections.closed(id) }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A reset by the peer, mostly; there is no one left to answer.
        context.close(promise: nil)
    }

    private func answer(_ context: ChannelHandlerContext, _ response: HTTPResponse) {
        answered = true
        arm(context, limits.answerDeadline)
        if let id { connections.answering(id) }
        let channel = context.channel
        let written = context.writeAndFlush(wrapOutboundOut(channel.allocator.buffer(bytes: response.bytes)))
        guard let id else {
            written.whenComplete { _ in channel.close(promise: nil) }
            return
        }
        let connections = self.connections
        written.whenComplete { result in
            guard case .success = result else { return channel.close(promise: nil) }
            connections.answered(id)
            // The client's end of file then closes the channel (half-closure is not allowed).
            channel.close(mode: .output).whenFailure { _ in channel.close(promise: nil) }
        }
    }

    /// Closes the connection when `duration` has passed, replacing the deadline armed before.
    private func arm(_ context: ChannelHandlerContext, _ duration: Duration) {
        deadline?.cancel()
        let channel = context.channel
        deadline = context.eventLoop.scheduleTask(in: TimeAmount(duration)) { channel.close(promise: nil) }
    }
}
