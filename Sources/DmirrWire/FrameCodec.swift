import NIOCore

/// dmirr's framing (proto/PROTOCOL.md): a 4-byte big-endian length N, then N bytes of one message, 1 ≤ N ≤ limit.
public enum Framing {
    /// The default maximum frame length: 1 MiB.
    public static let defaultLimit = 1 << 20
    /// Bytes of the length prefix.
    public static let headerLength = 4

    /// Takes one complete frame's payload off the front of `buffer`, or returns nil (leaving `buffer` untouched) when
    /// it does not hold a whole frame yet. Throws as soon as the header shows a length out of range, without waiting
    /// for (or buffering) the body.
    public static func nextFrame(from buffer: inout ByteBuffer, limit: Int) throws(FrameError) -> ByteBuffer? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, endianness: .big, as: UInt32.self) else { return nil }
        guard length > 0 else { throw FrameError.emptyFrame }
        guard UInt64(length) <= UInt64(limit) else { throw FrameError.frameTooLarge(length: Int(length), limit: limit) }
        guard buffer.readableBytes >= headerLength + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: headerLength)
        return buffer.readSlice(length: Int(length))
    }

    /// Writes `payload` as one frame. Throws for an empty payload or one over `limit`, which the peer would refuse.
    public static func writeFrame(_ payload: ByteBuffer, into out: inout ByteBuffer, limit: Int) throws(FrameError) {
        guard payload.readableBytes > 0 else { throw FrameError.emptyFrame }
        guard payload.readableBytes <= limit else { throw FrameError.frameTooLarge(length: payload.readableBytes, limit: limit) }
        out.writeInteger(UInt32(payload.readableBytes), endianness: .big)
        out.writeImmutableBuffer(payload)
    }
}

/// Why a byte stream is not valid framing. Each closes the connection after an error frame.
public enum FrameError: Error, Sendable, Equatable, CustomStringConvertible {
    case emptyFrame
    case frameTooLarge(length: Int, limit: Int)
    /// The stream ended in the middle of a frame.
    case truncated(bufferedBytes: Int)

    public var description: String {
        switch self {
        case .emptyFrame: "zero-length frame"
        case .frameTooLarge(let length, let limit): "frame of \(length) bytes is over the limit of \(limit) bytes"
        case .truncated(let n): "connection closed in the middle of a frame (\(n) bytes buffered)"
        }
    }
}

/// NIO decoder for ``Framing``: emits each frame's payload. The limit is explicit and checked on the header alone,
/// so an oversize frame is refused before its body is buffered.
public struct FrameDecoder: ByteToMessageDecoder {
    public typealias InboundOut = ByteBuffer
    public let limit: Int

    public init(limit: Int = Framing.defaultLimit) {
        self.limit = limit
    }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = try Framing.nextFrame(from: &buffer, limit: limit) else { return .needMoreData }
        context.fireChannelRead(Self.wrapInboundOut(frame))
        return .continue
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws
        -> DecodingState
    {
        if try decode(context: context, buffer: &buffer) == .continue { return .continue }
        if buffer.readableBytes > 0 { throw FrameError.truncated(bufferedBytes: buffer.readableBytes) }
        return .needMoreData
    }
}

/// NIO encoder for ``Framing``.
public struct FrameEncoder: MessageToByteEncoder {
    public typealias OutboundIn = ByteBuffer
    public let limit: Int

    public init(limit: Int = Framing.defaultLimit) {
        self.limit = limit
    }

    public func encode(data: ByteBuffer, out: inout ByteBuffer) throws {
        try Framing.writeFrame(data, into: &out, limit: limit)
    }
}
