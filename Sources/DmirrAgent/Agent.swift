import DmirrCore
import DmirrNet
import DmirrStore
import DmirrSync
import DmirrWire
import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization

/// `dmirr agent`: the peer listener, the dialer, gossip, the upstream poller with the sync pipeline, and the control
/// socket, run as one ServiceGroup under structured concurrency. SIGTERM/SIGINT drain it: listeners stop, a running
/// rsync is cancelled (the published token never moves without a finished, verified sync), state is on disk.
public struct Agent: Sendable {
    public let config: Config
    public let logger: Logger
    public let clock: any AgentClock

    public init(config: Config, logger: Logger, clock: any AgentClock = SystemAgentClock()) {
        self.config = config
        self.logger = logger
        self.clock = clock
    }

    /// Where the control socket lives: `[listen] control`, else `<state dir>/control.sock`.
    public static func controlPath(_ config: Config) -> String {
        config.listen.control ?? config.state.dir + "/control.sock"
    }

    public func run() async throws {
        // Every service works in the fleet's time: this host's clock corrected by its peers' (``ClockOffset``).
        let clock = FleetTimeClock(base: self.clock)
        guard let tlsConfig = config.tls else { throw AgentError("[tls] ca, cert and key are required for the agent") }
        guard let listen = config.listen.peer.flatMap(HostPort.init) else { throw AgentError("[listen] peer is required for the agent") }
        let tls = try FleetTLS(caPath: tlsConfig.ca, certPath: tlsConfig.cert, keyPath: tlsConfig.key)
        guard tls.identity.name == config.node, tls.identity.fleet == config.fleet, tls.identity.role == .node else {
            throw AgentError("the certificate \(tlsConfig.cert) is for \(tls.identity), but the config says node '\(config.node)' of fleet '\(config.fleet)'")
        }
        // One verifier for handshakes and records, so a revocation list adopted from any source applies to both.
        let signer = try RecordSigner(caPath: tlsConfig.ca, certPath: tlsConfig.cert, keyPath: tlsConfig.key, verifier: tls.verifier)
        try FileManager.default.createDirectory(atPath: config.state.dir, withIntermediateDirectories: true)
        // The process's one connection pool to the state database (GRDB's rule: one per file), for every service.
        let store = try StateStore(directory: config.state.dir, check: true)
        var membershipConfig = Membership.Configuration()
        membershipConfig.gossipInterval = config.peers.gossip
        membershipConfig.suspectAfter = config.peers.suspectAfter
        membershipConfig.downAfter = config.peers.downAfter
        // Newer than every generation this node signed before, even when the clock went back since (put right after
        // running fast): members keep the newest generation's record, so a lower one would go unheard until the
        // older record expired.
        let previous = (try? store.members())?.first { $0.node == tls.identity.name }?.generation ?? 0
        let generation = max(UInt64(max(0, clock.wallMillis)), previous &+ 1)
        let node = FleetNode(identity: tls.identity, generation: generation, configuration: membershipConfig, signer: signer,
                             store: store, logger: logger, clock: clock)
        let credentials = FleetCredentials(tls, caPath: tlsConfig.ca, keyPath: tlsConfig.key)
        await node.useCertificate(path: tlsConfig.cert, notAfter: tls.certificate.notValidAfter)
        await node.restore()
        if let crl = tlsConfig.crl { try await node.watchRevocations(at: crl) }
        let published = try? store.published()
        let rsyncURL = config.mirror.rsyncURL ?? ""
        await node.updateOwn {
            $0.rsyncURL = rsyncURL
            $0.publicURL = config.mirror.publicURL ?? ""
            $0.region = config.mirror.region ?? ""
            $0.publishedToken = published?.token ?? ""
            // Never later than now (a publish stamped while this host's clock ran fast); the sync service stamps it
            // again in the fleet's time once peers have shown how far this clock is off.
            $0.lastSyncMillis = published.map { min(Int64($0.at.timeIntervalSince1970 * 1000), clock.wallMillis) }
            $0.syncState = .behind
        }

        let metrics = AgentMetrics()
        let traffic = PeerTraffic(received: { metrics.gossip(received: $0) }, sent: { metrics.gossip(sent: $0) })
        let readiness = Readiness()
        let listener = PeerListenerService(config: config, listen: listen, credentials: credentials, node: node, readiness: readiness, traffic: traffic,
                                           logger: logger)
        var services: [any Service] = [
            listener,
            ReadinessService(readiness: readiness, node: node, notifier: SystemdNotifier(), gossipInterval: config.peers.gossip,
                             clock: clock, logger: logger),
            DialerService(config: config, credentials: credentials, node: node, clock: clock, traffic: traffic, logger: logger),
            CredentialReloadService(credentials: credentials, node: node, logger: logger),
            GossipService(interval: config.peers.gossip, node: node, clock: clock),
            SyncService(config: config, node: node, store: store, clock: clock, metrics: metrics, logger: logger),
            ControlSocketService(path: Self.controlPath(config), node: node, logger: logger),
        ]
        if let address = config.listen.metrics {
            guard let http = HostPort(address) else { throw AgentError("[listen] metrics: '\(address)' is not HOST:PORT") }
            let limits = ClientLists.Limits(rate: Double(config.listen.clientRate), burst: Double(config.listen.clientBurst))
            let lists = ClientLists(node: node, clock: clock, tree: config.mirror.path, attestations: config.peers.attestations,
                                    limits: limits)
            services.append(HTTPService.make(address: http, node: node, metrics: metrics, lists: lists, clock: clock, logger: logger))
        }
        let group = ServiceGroup(configuration: .init(
            services: services.map { .init(service: $0) }, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        logger.info("agent starting", metadata: ["fleet.node": "\(tls.identity)", "peer.listen": "\(listen)"])
        try await group.run()
        logger.info("agent stopped")
    }
}

public struct AgentError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ d: String) { description = d }
}

/// Accepts peers; each session feeds the fleet node until it closes.
struct PeerListenerService: Service {
    let config: Config
    let listen: HostPort
    let credentials: FleetCredentials
    let node: FleetNode
    let readiness: Readiness
    let traffic: PeerTraffic
    let logger: Logger

    func run() async throws {
        var serverConfig = PeerServer.Configuration(host: listen.host, port: listen.port, credentials: credentials, rsyncURL: config.mirror.rsyncURL ?? "")
        serverConfig.traffic = traffic
        // A peer that stops reading loses its link once a write has waited suspect_after (or its queue overflows).
        serverConfig.outbound.stallAfter = config.peers.suspectAfter
        // Node links carry a frame every suspect_after / 3; this only ends sessions that stopped talking.
        let suspectAfter = config.peers.suspectAfter.components.seconds
        serverConfig.idleDeadline = .seconds(max(300, suspectAfter * 3))
        let server = PeerServer(configuration: serverConfig, logger: logger)
        let advertise = config.listen.advertise
        let listenHost = listen.host
        let node = self.node
        let readiness = self.readiness
        try await untilGracefulShutdown {
            try await server.run(onBound: { address in
                readiness.listening(at: advertise ?? HostPort(host: listenHost, port: address.port ?? 0).description)
            }) { session, messages in
                try await node.serve(session, messages)
            }
        }
    }
}

/// Keeps a few outgoing connections (not a full mesh): to known members first, else to the seeds. While the peers'
/// clocks disagree too much to say where the fleet's time is, it links to one more peer a round (up to
/// ``maxForClock`` links in all), for more `Hello`s to compare clocks with (``ClockOffset/determined``).
struct DialerService: Service {
    let config: Config
    let credentials: FleetCredentials
    let node: FleetNode
    let clock: any AgentClock
    let traffic: PeerTraffic
    let logger: Logger
    static let fanout = 4
    static let maxForClock = 4 * fanout

    func run() async throws {
        let dialing = Dialing()
        // Cancelled as a whole on graceful shutdown, open connections included.
        await cancelWhenGracefulShutdown { [node, credentials, logger, config, clock, traffic] in
        await withDiscardingTaskGroup { group in
            var round = 0
            // Rotate one link every minute of gossip rounds (at least 10 s), so the topology keeps changing.
            let rotateEvery = max(.seconds(10), config.peers.gossip * 60)
            var lastRotation = clock.now
            var wantedSamples = false
            while !Task.isCancelled && !Task.isShuttingDownGracefully {
                if clock.now - lastRotation >= rotateEvery {
                    lastRotation = clock.now
                    if let peer = await node.rotate(olderThan: rotateEvery) {
                        logger.info("rotated a peer link", metadata: ["peer.node": "\(peer)"])
                    }
                }
                let connected = await node.connectedPeers
                let wantSamples = await node.clockWantsSamples
                if wantSamples != wantedSamples {
                    wantedSamples = wantSamples
                    if wantSamples {
                        logger.notice("the clocks of this host's peers disagree too much to say the fleet's time: linking to more peers to compare with",
                                      metadata: ["peers.connected": "\(connected.count)"])
                    } else {
                        logger.info("the peers' clocks agree on the fleet's time again", metadata: ["peers.connected": "\(connected.count)"])
                    }
                }
                let wanted = wantSamples ? max(Self.fanout, min(connected.count + 1, Self.maxForClock)) : Self.fanout
                let own = await node.own.peerAddress
                let known = await node.knownAddresses
                let connectedAddresses = Set(known.filter { connected.contains($0.node) }.map(\.address))
                // Seeds we are not already connected to come first: two groups that each started from an incoming
                // connection must still reach the seeds that join them.
                var candidates = config.peers.seeds.filter { !connectedAddresses.contains($0) }
                candidates += known.filter { !connected.contains($0.node) }.map(\.address)
                let busy = dialing.addresses
                candidates = candidates.filter { $0 != own && !busy.contains($0) }
                candidates = candidates.rotated(by: round)
                round += 1
                for address in candidates.prefix(max(0, wanted - connected.count - busy.count)) {
                    guard let target = HostPort(address) else { continue }
                    dialing.insert(address)
                    // Read per dial: a reload (SIGHUP) applies to the next connection.
                    let tls = credentials.current
                    group.addTask { [node, logger, config, traffic] in
                        defer { dialing.remove(address) }
                        do {
                            try await PeerClient.connect(
                                host: target.host, port: target.port, tls: tls, rsyncURL: config.mirror.rsyncURL ?? "",
                                outboundLimits: .init(stallAfter: config.peers.suspectAfter), traffic: traffic
                            ) { session, messages in
                                try await node.serve(session, messages)
                            }
                        } catch let error as NetError where error.code == .rejected {
                            // The peer answered and refused us (another fleet or version, a revoked certificate):
                            // the operator must hear of it.
                            logger.warning("a peer refused our connection", metadata: ["peer.address": "\(address)", "error": "\(error)"])
                        } catch {
                            logger.debug("dial failed", metadata: ["peer.address": "\(address)", "error": "\(error)"])
                        }
                    }
                }
                try? await clock.sleep(for: .seconds(1))
            }
        }
        }
    }
}

/// Re-reads `[tls] cert`, `key` and `ca` on SIGHUP and puts them in force without a restart: new connections use
/// them, our records carry the new certificate, and the state, the sessions that still pass and the sync in progress
/// stay. Files that do not load, or a certificate the fleet would refuse, leave the old credentials in force.
struct CredentialReloadService: Service {
    let credentials: FleetCredentials
    let node: FleetNode
    let logger: Logger

    func run() async throws {
        let hangups = SignalStream(SIGHUP)
        defer { hangups.cancel() }
        let signals = hangups.signals
        await cancelWhenGracefulShutdown {
            for await _ in signals {
                let before = credentials.current
                do {
                    let (tls, signer) = try await credentials.reload(now: node.clock.wallNow)
                    await node.rotate(to: tls, signer: signer)
                    logger.notice("SIGHUP: reloaded the certificate, key and CA bundle", metadata: [
                        "tls.cert": "\(tls.certPath)", "tls.serial": "\(tls.certificate.serialNumber)",
                        "tls.not_after": "\(tls.certificate.notValidAfter.formatted(.iso8601))",
                        "tls.previous_serial": "\(before.certificate.serialNumber)",
                    ])
                } catch {
                    logger.error("SIGHUP: kept the certificate in force; the new files were not taken", metadata: ["error": "\(error)"])
                }
            }
        }
    }
}

/// One signal as an async sequence: from creation on, it no longer has its default effect (SIGHUP would end the
/// process).
final class SignalStream {
    let signals: AsyncStream<Void>
    private let source: any DispatchSourceSignal

    init(_ signo: Int32) {
        signal(signo, SIG_IGN)
        let (stream, continuation) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        signals = stream
        source = DispatchSource.makeSignalSource(signal: signo, queue: .global())
        source.setEventHandler { continuation.yield() }
        source.setCancelHandler { continuation.finish() }
        source.resume()
    }

    func cancel() { source.cancel() }
}

/// Runs `body` until it returns or a graceful shutdown begins; the cancellation a shutdown causes is a normal end of
/// the service, not a failure of the group.
func untilGracefulShutdown(_ body: @escaping @Sendable () async throws -> Void) async throws {
    do {
        try await cancelWhenGracefulShutdown(body)
    } catch is CancellationError where Task.isShuttingDownGracefully || Task.isCancelled {
    } catch let error as ChannelError where Task.isShuttingDownGracefully {
        _ = error
    }
}

/// The addresses being dialed, shared by the dialer loop and its connection tasks.
final class Dialing: Sendable {
    private let items = Mutex<Set<String>>([])
    var addresses: Set<String> { items.withLock { $0 } }
    func insert(_ address: String) { _ = items.withLock { $0.insert(address) } }
    func remove(_ address: String) { _ = items.withLock { $0.remove(address) } }
}

extension Array {
    func rotated(by n: Int) -> [Element] {
        guard !isEmpty else { return self }
        let k = n % count
        return Array(self[k...] + self[..<k])
    }
}

/// Ticks the membership machine every gossip interval.
struct GossipService: Service {
    let interval: Duration
    let node: FleetNode
    let clock: any AgentClock

    func run() async throws {
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            await node.tick()
            try? await clock.sleep(for: interval)
        }
    }
}
