import DmirrCore
import DmirrWire
import NIOCore

/// One authenticated connection after both `Hello`s: who the peer is, and its messages in both directions.
public struct PeerSession: Sendable {
    /// The peer's identity, from its certificate and confirmed by its `Hello`.
    public let peer: PeerIdentity
    public let peerHello: WireHello
    let channel: any Channel
    let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>

    /// The connection's identity object, to tell two sessions with the same peer apart.
    public var channelIdentity: AnyObject { channel as AnyObject }

    /// Sends one message.
    public func send(_ envelope: WireEnvelope) async throws {
        try await outbound.write(try WireMessages.encode(envelope, allocator: channel.allocator))
    }

    /// Closes the connection (the reader's loop then ends).
    public func close() async {
        try? await channel.close()
    }

    /// Sends an error frame; the caller then returns, which closes the connection.
    public func reject(_ code: WireErrorFrame.Code, _ message: String) async {
        try? await send(WireMessages.error(code, message))
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
                await session.reject(error.wireCode, error.description)
                throw NetError(.protocolViolation, "\(session.peer): \(error)")
            }
            guard let frame else { return nil }
            do {
                return try WireMessages.decode(frame)
            } catch {
                await session.reject(.malformed, error.description)
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
