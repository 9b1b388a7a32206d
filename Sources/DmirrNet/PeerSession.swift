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

    public struct AsyncIterator: AsyncIteratorProtocol {
        var frames: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator
        let session: PeerSession

        public mutating func next() async throws -> WireEnvelope? {
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
