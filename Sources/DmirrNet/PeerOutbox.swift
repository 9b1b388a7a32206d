import DmirrCore
import DmirrWire
import NIOCore
import Synchronization

/// The outbound side of one peer connection: ``OutboundQueueStateMachine`` behind a lock, and the connection's one
/// writer task (``run(_:)``). ``enqueue(_:)`` never waits, so the agent's actor never awaits a socket write; a peer that
/// stops reading overflows or stalls its own queue and has its connection closed.
public final class PeerOutbox: Sendable {
    private let machine: Mutex<OutboundQueueStateMachine<ByteBuffer>>
    private let frames: AsyncStream<ByteBuffer>
    private let continuation: AsyncStream<ByteBuffer>.Continuation
    private let channel: any Channel
    private let clock = ContinuousClock()
    private let started: ContinuousClock.Instant
    private let reason = Mutex<OutboundQueueStateMachine<ByteBuffer>.CloseReason?>(nil)
    private let traffic: PeerTraffic

    init(channel: any Channel, limits: OutboundQueueStateMachine<ByteBuffer>.Limits, traffic: PeerTraffic = .none) {
        self.channel = channel
        self.traffic = traffic
        machine = Mutex(OutboundQueueStateMachine(limits: limits))
        (frames, continuation) = AsyncStream.makeStream(of: ByteBuffer.self)
        started = clock.now
    }

    private var now: Duration { clock.now - started }

    /// Why the outbox closed the connection, if it did.
    public var closeReason: OutboundQueueStateMachine<ByteBuffer>.CloseReason? { reason.withLock { $0 } }

    /// Queues one message. False when the connection is closed, or closes now because the peer does not read.
    @discardableResult
    public func enqueue(_ envelope: WireEnvelope) -> Bool {
        guard let buffer = try? WireMessages.encode(envelope, allocator: channel.allocator) else { return false }
        traffic.sent(buffer.readableBytes)
        let now = self.now
        let action = machine.withLock { $0.enqueue(buffer, bytes: buffer.readableBytes, now: now) }
        perform(action)
        if case .close = action { return false }
        return !machine.withLock { $0.isClosed }
    }

    /// Closes the connection if a write has been pending past the stall limit; returns why it did.
    public func check() -> OutboundQueueStateMachine<ByteBuffer>.CloseReason? {
        let now = self.now
        let action = machine.withLock { $0.check(now: now) }
        perform(action)
        if case .close(let r) = action { return r }
        return nil
    }

    /// No more messages: the writer ends once the queue is written.
    func finish() {
        perform(machine.withLock { $0.finish() })
    }

    /// The connection's writer: writes frames one at a time, in order, until the outbox closes or a write fails.
    func run(_ outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>) async {
        for await frame in frames {
            do {
                try await outbound.write(frame)
            } catch {
                // The socket is gone (or the frame was refused): end the connection, so that its reader ends too and
                // the session is detached, rather than keep a link nothing can be sent on.
                machine.withLock { $0.closed() }
                continuation.finish()
                channel.close(promise: nil)
                return
            }
            let now = self.now
            perform(machine.withLock { $0.writeCompleted(now: now) })
        }
    }

    private func perform(_ action: OutboundQueueStateMachine<ByteBuffer>.Action) {
        switch action {
        case .write(let frame):
            continuation.yield(frame)
        case .close(let why):
            reason.withLock { if $0 == nil { $0 = why } }
            continuation.finish()
            if why != .finished { channel.close(promise: nil) }
        case .none:
            break
        }
    }
}
