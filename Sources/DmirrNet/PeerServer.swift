import DmirrCore
import DmirrWire
import Logging
import NIOCore
import NIOPosix
import NIOSSL

/// The peer listener: accepts mTLS connections, enforces the `Hello` rules, and hands each authenticated session to a
/// handler. A misbehaving connection is answered with an error frame and closed; it never affects the others.
public struct PeerServer: Sendable {
    public struct Configuration: Sendable {
        public var host: String
        public var port: Int
        /// Read at each accept, so a reload (SIGHUP) applies to the next connection.
        public var credentials: FleetCredentials
        public var tls: FleetTLS { credentials.current }
        /// Advertised in our `Hello`.
        public var rsyncURL: String
        public var frameLimit: Int = Framing.defaultLimit
        /// TLS handshake plus the peer's `Hello`, from accept.
        public var helloDeadline: TimeAmount = .seconds(10)
        /// Each session's outbound queue (``PeerOutbox``).
        public var outbound = OutboundQueueStateMachine<ByteBuffer>.Limits()
        /// Connections open at once, per remote address and in total; more are closed at accept, before TLS.
        public var connections = ConnectionLimiter.Limits()
        /// A connection that sends nothing for this long is closed (node links carry a frame at least every
        /// `suspect_after / 3`; an operator session or a member that stopped talking does not keep a slot).
        public var idleDeadline: TimeAmount = .minutes(5)
        /// Where each session reports the frames it carries (the agent's metrics).
        public var traffic = PeerTraffic.none

        public init(host: String, port: Int, tls: FleetTLS, rsyncURL: String) {
            self.init(host: host, port: port, credentials: FleetCredentials(tls, caPath: "", keyPath: ""), rsyncURL: rsyncURL)
        }

        public init(host: String, port: Int, credentials: FleetCredentials, rsyncURL: String) {
            self.host = host
            self.port = port
            self.credentials = credentials
            self.rsyncURL = rsyncURL
        }
    }

    /// Serves one authenticated session; return (or throw) to close it.
    public typealias Handler = @Sendable (PeerSession, sending PeerMessages) async throws -> Void

    public let configuration: Configuration
    public let logger: Logger
    let group: any EventLoopGroup

    public init(configuration: Configuration, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger) {
        self.configuration = configuration
        self.group = group
        self.logger = logger
    }

    /// Binds, calls `onBound` with the bound address (port 0 picks a free one), then serves until the task is cancelled.
    public func run(onBound: @Sendable (SocketAddress) -> Void = { _ in }, handler: @escaping Handler) async throws {
        let config = configuration
        let limiter = ConnectionLimiter(config.connections)
        let logger = self.logger
        let server = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .bind(host: config.host, port: config.port) { channel in
                let address = ConnectionLimiter.key(of: channel)
                if let refusal = limiter.admit(address) {
                    // Closed before any TLS work. (Failing the initializer instead would surface on the listening
                    // channel.) Logged once per burst, so a flood cannot flood the log too.
                    if limiter.noteRefusal() { logger.warning("refused connections over the cap", metadata: ["peer.remote": "\(address)", "reason": "\(refusal)"]) }
                    return channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(RefusedAtAccept())
                        let wrapped = try PeerChannel.Async(wrappingChannelSynchronously: channel)
                        channel.eventLoop.execute { channel.close(promise: nil) }
                        return wrapped
                    }
                }
                channel.closeFuture.whenComplete { _ in limiter.release(address) }
                return channel.eventLoop.makeCompletedFuture {
                    try PeerChannel.configure(
                        channel, tls: config.tls.serverContext, server: true, frameLimit: config.frameLimit,
                        helloDeadline: config.helloDeadline, idleDeadline: config.idleDeadline)
                }
            }
        if let address = server.channel.localAddress { onBound(address) }
        logger.info("listening for peers", metadata: ["peer.address": "\(server.channel.localAddress.map { "\($0)" } ?? "?")"])
        try await withThrowingDiscardingTaskGroup { group in
            try await server.executeThenClose { inbound in
                for try await connection in inbound {
                    group.addTask { await serve(connection, handler: handler) }
                }
            }
        }
    }

    func serve(_ connection: PeerChannel.Async, handler: @escaping Handler) async {
        // Refused at accept (over a cap): already closed or closing, and already logged.
        // (Not `isActive`: a child channel can be handed over before its registration completes, and an accepted
        // connection must never be dropped for that.)
        let refused = (try? await connection.channel.pipeline.handler(type: RefusedAtAccept.self).get()) != nil
        guard !refused else {
            // The async wrapper must still be finished, or NIO traps on its writer.
            try? await connection.executeThenClose { _, _ in }
            return
        }
        let remote = connection.channel.remoteAddress.map { "\($0)" } ?? "?"
        var logger = self.logger
        logger[metadataKey: "peer.remote"] = "\(remote)"
        do {
            try await connection.executeThenClose { inbound, outbound in
                var frames = inbound.makeAsyncIterator()
                let (peer, hello, certificate) = try await PeerChannel.receiveHello(
                    frames: &frames, channel: connection.channel, outbound: outbound, tls: configuration.tls)
                logger[metadataKey: "peer.identity"] = "\(peer)"
                let session = PeerSession(peer: peer, peerHello: hello, certificate: certificate, channel: connection.channel, outbound: outbound,
                                          outbox: PeerOutbox(channel: connection.channel, limits: configuration.outbound, traffic: configuration.traffic),
                                          traffic: configuration.traffic)
                try await session.send(PeerChannel.hello(for: configuration.tls.identity, rsyncURL: configuration.rsyncURL))
                logger.debug("peer connected")
                try await PeerSession.withWriter(session, messages: PeerMessages(frames: frames, session: session), handler)
                if let reason = session.outbox.closeReason, reason != .finished {
                    logger.notice("closed a peer connection", metadata: ["error": "\(reason)"])
                }
            }
        } catch let error as NetError {
            logger.notice("closed a peer connection", metadata: ["error": "\(error)"])
        } catch {
            // TLS failures (unknown CA, no certificate, expired) and resets land here.
            logger.notice("closed a peer connection", metadata: ["error": "\(error)"])
        }
    }
}

/// Dials a peer: TLS with our certificate, our `Hello`, then the peer's `Hello` checked like the server checks ours.
public enum PeerClient {
    public static func connect<Outcome: Sendable>(
        host: String, port: Int, tls: FleetTLS, rsyncURL: String = "", frameLimit: Int = Framing.defaultLimit,
        helloDeadline: TimeAmount = .seconds(10), outboundLimits: OutboundQueueStateMachine<ByteBuffer>.Limits = .init(),
        traffic: PeerTraffic = .none, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        _ body: @Sendable (PeerSession, sending PeerMessages) async throws -> Outcome
    ) async throws -> Outcome {
        let connection: PeerChannel.Async
        do {
            connection = try await ClientBootstrap(group: group)
                .connectTimeout(helloDeadline)
                .channelOption(.tcpOption(.tcp_nodelay), value: 1)
                .connect(host: host, port: port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try PeerChannel.configure(channel, tls: tls.clientContext, server: false, frameLimit: frameLimit, helloDeadline: helloDeadline)
                    }
                }
        } catch {
            throw NetError(.connection, "cannot connect to \(host):\(port)", underlying: error)
        }
        return try await connection.executeThenClose { inbound, outbound in
            let hello = PeerChannel.hello(for: tls.identity, rsyncURL: rsyncURL)
            try await outbound.write(try WireMessages.encode(hello))
            var frames = inbound.makeAsyncIterator()
            let first: ByteBuffer?
            do { first = try await frames.next() } catch {
                throw NetError(.connection, "\(host):\(port) closed the connection during the handshake", underlying: error)
            }
            guard let first else { throw NetError(.connection, "\(host):\(port) closed the connection before its Hello") }
            let envelope = try WireMessages.decode(first)
            if case .error(let e) = envelope.body {
                throw NetError(.rejected, "\(host):\(port) refused us: \(e.message) (\(e.code))")
            }
            guard case .hello(let peerHello) = envelope.body else {
                throw NetError(.protocolViolation, "\(host):\(port) did not answer with a Hello")
            }
            let checked: FleetVerifier.Checked?
            switch await tls.check(peer: try await connection.channel.nioSSL_peerCertificate().get()) {
            case .success(let c): checked = c
            case .failure(let rejection): throw NetError(.protocolViolation, "\(host):\(port): \(rejection)")
            }
            let claim = HelloPolicy.Claim(protocolMajor: peerHello.protocolMajor, fleet: peerHello.fleet, node: peerHello.node)
            let peer: PeerIdentity
            switch HelloPolicy.check(claim, certificate: checked?.identity, fleet: tls.identity.fleet, major: WireVersion.major) {
            case .success(let p): peer = p
            case .failure(let rejection): throw NetError(.protocolViolation, "\(host):\(port): \(rejection)")
            }
            let session = PeerSession(peer: peer, peerHello: peerHello, certificate: checked?.certificate, channel: connection.channel, outbound: outbound,
                                      outbox: PeerOutbox(channel: connection.channel, limits: outboundLimits, traffic: traffic),
                                      traffic: traffic)
            return try await PeerSession.withWriter(session, messages: PeerMessages(frames: frames, session: session), body)
        }
    }
}

/// Marks a connection the listener refused at accept (over a cap): it is closed without TLS and not served.
final class RefusedAtAccept: ChannelInboundHandler, RemovableChannelHandler, Sendable {
    typealias InboundIn = ByteBuffer
}
