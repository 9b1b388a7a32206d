import DmirrCore
import DmirrWire
import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import X509

/// Builds the channel pipeline both ends use and runs the `Hello` exchange (proto/PROTOCOL.md).
enum PeerChannel {
    typealias Async = NIOAsyncChannel<ByteBuffer, ByteBuffer>

    /// TLS, the `Hello` deadline, framing, and the async bridge. Inbound: TLS → frames → deadline → async.
    static func configure(
        _ channel: any Channel, tls: NIOSSLContext, server: Bool, frameLimit: Int, helloDeadline: TimeAmount,
        idleDeadline: TimeAmount? = nil
    ) throws -> Async {
        let ops = channel.pipeline.syncOperations
        if server {
            try ops.addHandler(NIOSSLServerHandler(context: tls))
        } else {
            try ops.addHandler(try NIOSSLClientHandler(context: tls, serverHostname: nil))
        }
        try ops.addHandler(ByteToMessageHandler(FrameDecoder(limit: frameLimit)))
        try ops.addHandler(MessageToByteHandler(FrameEncoder(limit: frameLimit)))
        if let idleDeadline {
            try ops.addHandler(IdleStateHandler(readTimeout: idleDeadline))
            try ops.addHandler(IdleCloser(deadline: idleDeadline))
        }
        try ops.addHandler(HelloDeadlineHandler(deadline: helloDeadline))
        return try Async(wrappingChannelSynchronously: channel)
    }

    static func hello(for identity: PeerIdentity, rsyncURL: String) -> WireEnvelope {
        var envelope = WireEnvelope()
        envelope.hello = .with {
            $0.protocolMajor = WireVersion.major
            $0.protocolMinor = WireVersion.minor
            $0.fleet = identity.fleet
            $0.node = identity.name
            $0.rsyncURL = rsyncURL
            $0.capabilities = identity.role == .node ? ["gossip", "status"] : ["status"]
            // The host's own clock, uncorrected: peers estimate how far theirs is from it (``ClockOffset``).
            $0.wallUnixMs = UInt64(max(0, Date().timeIntervalSince1970 * 1000))
        }
        return envelope
    }

    /// Reads and checks the peer's `Hello`: the first frame, from a certificate-authenticated peer of our fleet.
    /// On any violation sends the error frame and throws.
    static func receiveHello(
        frames: inout NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator, channel: any Channel,
        outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>, tls: FleetTLS
    ) async throws -> (PeerIdentity, WireHello, Certificate?) {
        func reject(_ code: WireErrorFrame.Code, _ message: String) async -> NetError {
            if let payload = try? WireMessages.encode(WireMessages.error(code, message)) {
                try? await outbound.write(payload)
            }
            return NetError(.protocolViolation, message)
        }
        let frame: ByteBuffer
        do {
            guard let first = try await frames.next() else {
                throw NetError(.connection, "the peer closed the connection before its Hello")
            }
            frame = first
        } catch let error as FrameError {
            throw await reject(error.wireCode, error.description)
        }
        guard let envelope = try? WireMessages.decode(frame) else {
            throw await reject(.malformed, "the first message is not a valid message")
        }
        guard case .hello(let hello) = envelope.body else {
            throw await reject(.helloRequired, "the first message must be a Hello")
        }
        let checked: FleetVerifier.Checked?
        switch await tls.check(peer: try await channel.nioSSL_peerCertificate().get()) {
        case .success(let c): checked = c
        case .failure(let rejection):
            if case .revoked = rejection { throw await reject(.revoked, "\(rejection)") }
            throw await reject(.forbidden, "\(rejection)")
        }
        let claim = HelloPolicy.Claim(protocolMajor: hello.protocolMajor, fleet: hello.fleet, node: hello.node)
        switch HelloPolicy.check(claim, certificate: checked?.identity, fleet: tls.identity.fleet, major: WireVersion.major) {
        case .success(let peer):
            return (peer, hello, checked?.certificate)
        case .failure(let rejection):
            let code: WireErrorFrame.Code
            switch rejection {
            case .unsupportedVersion: code = .unsupportedVersion
            case .wrongFleet: code = .wrongFleet
            case .identityMismatch, .noIdentity: code = .identityMismatch
            }
            throw await reject(code, rejection.description)
        }
    }
}

/// Closes a connection that has sent nothing for its idle deadline (the `IdleStateHandler` before it says when), after
/// an error frame saying why.
final class IdleCloser: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = ByteBuffer
    private let deadline: TimeAmount

    init(deadline: TimeAmount) { self.deadline = deadline }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .read {
            let message = "nothing received for \(deadline.nanoseconds / 1_000_000_000) s"
            if let payload = try? WireMessages.encode(WireMessages.error(.helloTimeout, message)) {
                context.writeAndFlush(NIOAny(payload), promise: nil)
            }
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }
}

/// Closes a connection whose first frame has not arrived within the deadline, counted from when the connection was
/// set up, so a slow TLS handshake counts too (slowloris). Sends `HELLO_TIMEOUT` first when it can.
final class HelloDeadlineHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let deadline: TimeAmount
    private var timer: Scheduled<Void>?
    private var seenFrame = false

    init(deadline: TimeAmount) {
        self.deadline = deadline
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: deadline) {
            let (handler, context) = bound.value
            handler.expire(context: context)
        }
    }

    private func expire(context: ChannelHandlerContext) {
        guard !seenFrame else { return }
        let message = "no Hello within \(deadline.nanoseconds / 1_000_000) ms"
        if let payload = try? WireMessages.encode(WireMessages.error(.helloTimeout, message)) {
            context.writeAndFlush(NIOAny(payload), promise: nil)
        }
        context.close(promise: nil)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if !seenFrame {
            seenFrame = true
            timer?.cancel()
        }
        context.fireChannelRead(data)
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        context.fireChannelInactive()
    }
}
