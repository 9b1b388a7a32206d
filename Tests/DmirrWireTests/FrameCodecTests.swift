import DmirrWire
import NIOCore
import NIOEmbedded
import NIOTestUtils
import Testing

@Suite struct FrameCodecTests {
    static func frame(_ payload: [UInt8]) -> ByteBuffer {
        var b = ByteBuffer()
        b.writeInteger(UInt32(payload.count), endianness: .big)
        b.writeBytes(payload)
        return b
    }

    /// NIO's verifier feeds each input whole, byte by byte, and many inputs in one read, and checks the same frames
    /// come out every way.
    @Test func decoderPassesNIOsVerifier() throws {
        let pairs: [(ByteBuffer, [ByteBuffer])] = [
            (Self.frame([1]), [ByteBuffer(bytes: [1])]),
            (Self.frame(Array(repeating: 7, count: 300)), [ByteBuffer(bytes: Array(repeating: 7, count: 300))]),
            (Self.frame(Array("hello".utf8)), [ByteBuffer(string: "hello")]),
        ]
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs) { FrameDecoder(limit: 1024) }
    }

    @Test func manyFramesInOneReadAndOneFrameAcrossManyReads() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(FrameDecoder(limit: 64)))
        var all = ByteBuffer()
        for i in 1...50 { all.writeImmutableBuffer(Self.frame(Array(repeating: UInt8(i), count: i))) }
        try channel.writeInbound(all)
        for i in 1...50 {
            let got = try #require(try channel.readInbound(as: ByteBuffer.self))
            #expect(got == ByteBuffer(bytes: Array(repeating: UInt8(i), count: i)))
        }
        #expect(try channel.readInbound(as: ByteBuffer.self) == nil)

        // One frame dribbled in a byte at a time: nothing until the last byte.
        let one = Self.frame(Array(0..<40))
        for (n, byte) in one.readableBytesView.enumerated() {
            try channel.writeInbound(ByteBuffer(bytes: [byte]))
            let out = try channel.readInbound(as: ByteBuffer.self)
            #expect((out != nil) == (n == one.readableBytes - 1))
        }
        #expect(try channel.finish().isClean)
    }

    @Test func oversizeIsRefusedFromTheHeaderAlone() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(FrameDecoder(limit: 1024)))
        var header = ByteBuffer()
        header.writeInteger(UInt32(1025), endianness: .big)  // no body sent at all
        #expect(throws: FrameError.frameTooLarge(length: 1025, limit: 1024)) { try channel.writeInbound(header) }
        var huge = ByteBuffer()
        huge.writeInteger(UInt32.max, endianness: .big)
        var b = huge
        #expect(throws: FrameError.frameTooLarge(length: Int(UInt32.max), limit: 1024)) {
            _ = try Framing.nextFrame(from: &b, limit: 1024)
        }
    }

    @Test func zeroLengthAndTruncationAreErrors() throws {
        let zero = EmbeddedChannel(handler: ByteToMessageHandler(FrameDecoder()))
        #expect(throws: FrameError.emptyFrame) { try zero.writeInbound(ByteBuffer(bytes: [0, 0, 0, 0])) }

        let truncated = EmbeddedChannel(handler: ByteToMessageHandler(FrameDecoder()))
        try truncated.writeInbound(ByteBuffer(bytes: [0, 0, 0, 9, 1, 2, 3]))
        #expect(try truncated.readInbound(as: ByteBuffer.self) == nil)
        #expect(throws: FrameError.truncated(bufferedBytes: 7)) { _ = try truncated.finish() }

        // A partial header is not yet an error, nor a frame.
        var partial = ByteBuffer(bytes: [0, 0])
        #expect(try Framing.nextFrame(from: &partial, limit: 10) == nil)
        #expect(partial.readableBytes == 2)
    }

    @Test func encoderWritesTheHeaderAndRefusesWhatThePeerWould() throws {
        var out = ByteBuffer()
        try Framing.writeFrame(ByteBuffer(string: "abc"), into: &out, limit: 3)
        #expect(Array(out.readableBytesView) == [0, 0, 0, 3] + Array("abc".utf8))
        #expect(throws: FrameError.emptyFrame) { try Framing.writeFrame(ByteBuffer(), into: &out, limit: 3) }
        #expect(throws: FrameError.frameTooLarge(length: 4, limit: 3)) { try Framing.writeFrame(ByteBuffer(string: "abcd"), into: &out, limit: 3) }
    }
}

@Suite struct WireMessagesTests {
    @Test func helloRoundTrips() throws {
        var envelope = WireEnvelope()
        envelope.hello = .with {
            $0.protocolMajor = WireVersion.major
            $0.fleet = "ius"
            $0.node = "mirror-a"
            $0.rsyncURL = "rsync://mirror-a/ius"
            $0.capabilities = ["gossip"]
        }
        let payload = try WireMessages.encode(envelope)
        #expect(payload.readableBytes < 64)
        #expect(try WireMessages.decode(payload) == envelope)
    }

    @Test func garbageAndEmptyBodiesAreMalformed() {
        #expect(throws: WireDecodeError.self) { _ = try WireMessages.decode(ByteBuffer(bytes: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF])) }
        // Valid protobuf with only an unknown field: no body we know.
        #expect(throws: WireDecodeError.self) { _ = try WireMessages.decode(ByteBuffer(bytes: [0x78, 0x01])) }
        // A length-delimited field claiming more bytes than there are.
        #expect(throws: WireDecodeError.self) { _ = try WireMessages.decode(ByteBuffer(bytes: [0x0A, 0x7F, 0x01])) }
    }
}
