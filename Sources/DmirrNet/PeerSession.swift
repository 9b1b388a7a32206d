import DmirrCore
import DmirrWire
import NIOCore
import X509

/// One authenticated connection after both `Hello`s: who the peer is, and its messages in both directions.
public struct PeerSession: Sendable {
    /// The peer's identity, from its certificate and confirmed by its `Hello`.
    public let peer: PeerIdentity
    public let peerHello: WireHello
    /// The certificate the peer presented, as checked after the handshake (revocation lists are matched against it).
    public let certificate: Certificate?
    let channel: any Channel
    let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    /// Where messages to the peer queue up; see ``PeerOutbox``.
    public let outbox: PeerOutbox
    /// Where received frames are reported.
    var traffic: PeerTraffic = .none

    /// The connection's identity object, to tell two sessions with the same peer apart.
    public var channelIdentity: AnyObject { channel as AnyObject }

    /// Queues one message for the connection's writer and returns at once (false: the connection is closed, or was
    /// closed now because the peer does not read). Code that holds shared state uses this, never a waiting send.
    @discardableResult
    public func enqueue(_ envelope: WireEnvelope) -> Bool {
        outbox.enqueue(envelope)
    }

    /// Writes one message and waits until the socket took it: only for a task that owns nothing but this connection
    /// (test clients, the handshake). Messages sent this way are not ordered with queued ones.
    public func send(_ envelope: WireEnvelope) async throws {
        try await outbound.write(try WireMessages.encode(envelope, allocator: channel.allocator))
    }

    /// Closes the connection (the reader's loop then ends).
    public func close() {
        channel.close(promise: nil)
    }

    /// Queues an error frame; the caller then returns, which closes the connection once it is written (or after a
    /// short grace period).
    public func reject(_ code: WireErrorFrame.Code, _ message: String) {
        outbox.enqueue(WireMessages.error(code, message))
    }

    /// Runs `body` beside the connection's writer; when `body` ends, what is queued gets up to `grace` to be written,
    /// then the connection is closed.
    static func withWriter<Outcome: Sendable>(
        _ session: PeerSession, messages: sending PeerMessages, grace: TimeAmount = .seconds(1),
        _ handler: (PeerSession, sending PeerMessages) async throws -> Outcome
    ) async throws -> Outcome {
        async let writer: Void = session.outbox.run(session.outbound)
        let outcome: Result<Outcome, any Error>
        do { outcome = .success(try await handler(session, messages)) } catch { outcome = .failure(error) }
        session.outbox.finish()
        // A pending write to a peer that does not read fails when the channel closes; the writer then ends.
        let channel = session.channel
        let closer = channel.eventLoop.scheduleTask(in: grace) { channel.close(promise: nil) }
        await writer
        closer.cancel()
        return try outcome.get()
    }
}

/// The peer's messages after its `Hello`; iterate it once. A frame that does not decode ends the sequence with
/// ``NetError`` after an error frame is sent.
public struct PeerMessages: AsyncSequence {
    public typealias Element = WireEnvelope
    /// The connection's one frame iterator (NIO allows only one), already past the `Hello`.
    let frames: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator
    let session: PeerSession

    /// Frames a second one link may deliver, sustained, and the burst it may send at once. Past them the next frame is
    /// read only when the pace allows: reads stop, NIO stops reading the socket, and the peer's writes wait. An honest
    /// peer sends a few frames a gossip round (a fleet of 10,000 catching up sends about 40 batches of records), so a
    /// flood of valid frames from one member costs the agent at most this pace, whatever its sender can do.
    public static let framesPerSecond = 100.0
    public static let frameBurst = 500.0

    /// A token bucket over one link's frames.
    struct Pace {
        var tokens = PeerMessages.frameBurst
        var last: ContinuousClock.Instant

        init(at start: ContinuousClock.Instant = .now) { last = start }

        /// How long to wait before the next frame may be handled.
        mutating func take(now: ContinuousClock.Instant) -> Duration {
            tokens = Swift.min(PeerMessages.frameBurst, tokens + Double((now - last) / .milliseconds(1)) * PeerMessages.framesPerSecond / 1000)
            last = now
            tokens -= 1
            return tokens >= 0 ? .zero : .milliseconds(-tokens * 1000 / PeerMessages.framesPerSecond)
        }
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        var frames: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator
        let session: PeerSession
        var pace = Pace()

        public mutating func next() async throws -> WireEnvelope? {
            let wait = pace.take(now: .now)
            if wait > .zero { try await Task.sleep(for: wait) }
            let frame: ByteBuffer?
            do {
                frame = try await frames.next()
            } catch let error as FrameError {
                session.reject(error.wireCode, error.description)
                throw NetError(.protocolViolation, "\(session.peer): \(error)")
            }
            guard let frame else { return nil }
            session.traffic.received(frame.readableBytes)
            do {
                return try WireMessages.decode(frame)
            } catch {
                session.reject(.malformed, error.description)
                throw NetError(.protocolViolation, "\(session.peer) sent a malformed message: \(error)")
            }
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(frames: frames, session: session)
    }
}

extension FrameError {
    /// The error frame code that reports this framing error to the peer.
    var wireCode: WireErrorFrame.Code {
        switch self {
        case .emptyFrame: .emptyFrame
        case .frameTooLarge: .frameTooLarge
        case .truncated: .malformed
        }
    }
}
