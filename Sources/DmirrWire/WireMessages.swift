import NIOCore
import SwiftProtobuf

/// The protocol's version (proto/PROTOCOL.md). A peer with another major version is refused.
public enum WireVersion {
    public static let major: UInt32 = 2
    /// 2: the control socket's SyncRequest and the status's last poll (proto/PROTOCOL.md, "Versioning").
    public static let minor: UInt32 = 6
}

/// Encoding and decoding of ``WireEnvelope`` payloads (one per frame).
public enum WireMessages {
    /// Serializes `envelope` into a frame payload.
    public static func encode(_ envelope: WireEnvelope, allocator: ByteBufferAllocator = .init()) throws -> ByteBuffer {
        let bytes: [UInt8] = try envelope.serializedBytes()
        return allocator.buffer(bytes: bytes)
    }

    /// Parses a frame payload. Anything that is not exactly one known envelope is `MALFORMED`.
    public static func decode(_ payload: ByteBuffer) throws(WireDecodeError) -> WireEnvelope {
        let envelope: WireEnvelope
        do {
            envelope = try WireEnvelope(serializedBytes: Array(payload.readableBytesView))
        } catch {
            throw WireDecodeError(reason: "not a valid message: \(error)")
        }
        guard envelope.body != nil else { throw WireDecodeError(reason: "a message with no known body") }
        return envelope
    }

    /// An error frame, for the peer to read before the connection closes.
    public static func error(_ code: WireErrorFrame.Code, _ message: String) -> WireEnvelope {
        var envelope = WireEnvelope()
        envelope.error = .with {
            $0.code = code
            $0.message = message
        }
        return envelope
    }
}

public struct WireDecodeError: Error, Sendable, CustomStringConvertible {
    public var reason: String
    public var description: String { reason }
}
