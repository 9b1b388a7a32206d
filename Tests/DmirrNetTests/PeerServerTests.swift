import DmirrCore
import DmirrFixtures
import DmirrTestSupport
import DmirrWire
import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import Testing

@testable import DmirrNet

/// Certificates for one test fleet, made with the real PKI code at test time.
struct TestFleet {
    let dir: TestDirectory

    init() throws {
        dir = try TestDirectory("fleet")
        let ca = try FleetPKI.makeCA(fleet: "ius")
        try write(ca, "ca")
        func issue(_ name: String, role: PeerIdentity.Role = .node, now: Date = Date(), days: Int = 90, with authority: FleetPKI.Issued = ca, fleet: String = "ius") throws -> FleetPKI.Issued {
            try FleetPKI.issue(caCertificatePEM: authority.certificatePEM, caKeyPEM: authority.privateKeyPEM,
                               identity: PeerIdentity(fleet: fleet, role: role, name: name), ips: ["127.0.0.1"], days: days, now: now)
        }
        try write(issue("server"), "server")
        try write(issue("good"), "good")
        try write(issue("alice", role: .operator), "alice")
        try write(issue("expired", now: Date().addingTimeInterval(-200 * 86400)), "expired")
        let impostorCA = try FleetPKI.makeCA(fleet: "ius")  // same fleet name, another key
        try write(issue("server", with: impostorCA), "impostor")
        let epel = try FleetPKI.makeCA(fleet: "epel")
        try write(issue("server", with: epel, fleet: "epel"), "epel")
    }

    private func write(_ issued: FleetPKI.Issued, _ name: String) throws {
        try FleetPKI.write(issued.certificatePEM, to: dir.sub("\(name).pem"), secret: false, force: true)
        try FleetPKI.write(issued.privateKeyPEM, to: dir.sub("\(name).key"), secret: true, force: true)
    }

    func tls(_ name: String) throws -> FleetTLS {
        try FleetTLS(caPath: dir.sub("ca.pem"), certPath: dir.sub("\(name).pem"), keyPath: dir.sub("\(name).key"))
    }

    /// A client TLS context with the given certificate (nil: none) that trusts our CA, TLS 1.3.
    func rawClientContext(cert: String?) throws -> NIOSSLContext {
        var config = TLSConfiguration.makeClientConfiguration()
        config.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(dir.sub("ca.pem")))
        config.certificateVerification = .noHostnameVerification
        config.minimumTLSVersion = .tlsv13
        if let cert {
            config.certificateChain = try NIOSSLCertificate.fromPEMFile(dir.sub("\(cert).pem")).map { .certificate($0) }
            config.privateKey = .privateKey(try NIOSSLPrivateKey(file: dir.sub("\(cert).key"), format: .pem))
        }
        return try NIOSSLContext(configuration: config)
    }
}

/// A deliberately bad client: TLS (or not) with any certificate, writes raw bytes, and collects everything it reads
/// until the server closes (or `timeout`).
enum RawPeer {
    final class Collector: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        var received = ByteBuffer()
        var error: (any Error)?
        let closed: EventLoopPromise<Void>
        init(closed: EventLoopPromise<Void>) { self.closed = closed }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var b = unwrapInboundIn(data)
            received.writeBuffer(&b)
        }
        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            self.error = error
            context.close(promise: nil)
        }
        func channelInactive(context: ChannelHandlerContext) { closed.succeed() }
    }

    struct Result {
        var bytes: ByteBuffer
        var closedByServer: Bool
        var error: (any Error)?
        /// The error frames in what was received.
        var errorCodes: [WireErrorFrame.Code] {
            var b = bytes
            var codes: [WireErrorFrame.Code] = []
            while let frame = try? Framing.nextFrame(from: &b, limit: 1 << 20) {
                if let env = try? WireMessages.decode(frame), case .error(let e) = env.body { codes.append(e.code) }
            }
            return codes
        }
        var sawHello: Bool {
            var b = bytes
            while let frame = try? Framing.nextFrame(from: &b, limit: 1 << 20) {
                if let env = try? WireMessages.decode(frame), case .hello = env.body { return true }
            }
            return false
        }
    }

    /// - Parameter source: the local address to connect from (any 127.x address is this host), or the system's choice.
    static func exchange(port: Int, tls: NIOSSLContext?, send: [ByteBuffer], timeout: TimeAmount = .seconds(5), from source: String? = nil) async throws -> Result {
        let group = MultiThreadedEventLoopGroup.singleton
        let promise = group.next().makePromise(of: Void.self)
        let collector = Collector(closed: promise)
        var bootstrap = ClientBootstrap(group: group)
        if let source { bootstrap = bootstrap.bind(to: try SocketAddress(ipAddress: source, port: 0)) }
        let channel = try await bootstrap.channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                if let tls { try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: tls, serverHostname: nil)) }
                try channel.pipeline.syncOperations.addHandler(collector)
            }
        }.connect(host: "127.0.0.1", port: port).get()
        for chunk in send { try? await channel.writeAndFlush(chunk) }
        let timer = channel.eventLoop.scheduleTask(in: timeout) { promise.succeed() }
        try await promise.futureResult.get()
        timer.cancel()
        let closed = !channel.isActive
        try? await channel.close()
        return try await channel.eventLoop.submit { Result(bytes: collector.received, closedByServer: closed, error: collector.error) }.get()
    }

    static func frame(_ envelope: WireEnvelope) throws -> ByteBuffer {
        var out = ByteBuffer()
        try Framing.writeFrame(try WireMessages.encode(envelope), into: &out, limit: 1 << 20)
        return out
    }

    static func hello(fleet: String = "ius", node: String, major: UInt32 = WireVersion.major) -> WireEnvelope {
        var e = WireEnvelope()
        e.hello = .with {
            $0.protocolMajor = major
            $0.fleet = fleet
            $0.node = node
        }
        return e
    }
}

@Suite(.serialized) struct PeerServerTests {
    /// A server whose handler answers status requests. Deadlines are generous by default: the whole suite runs in
    /// parallel on two cores (live agent fleets included), and these tests are about behaviour, not timing; only the
    /// slowloris test sets a short one. A server whose handler answers status requests and refuses gossip from operators, as the agent will.
    static func withServer(
        _ fleet: TestFleet, helloDeadline: TimeAmount = .seconds(60), tls: FleetTLS? = nil,
        configure: (inout PeerServer.Configuration) -> Void = { _ in }, _ body: @Sendable (Int) async throws -> Void
    ) async throws {
        var logger = Logger(label: "test.server")
        logger.logLevel = .critical
        var config = PeerServer.Configuration(host: "127.0.0.1", port: 0, tls: try tls ?? fleet.tls("server"), rsyncURL: "rsync://127.0.0.1/ius")
        config.helloDeadline = helloDeadline
        configure(&config)
        let server = PeerServer(configuration: config, logger: logger)
        let port = AsyncStream<Int>.makeStream()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await server.run(onBound: { port.continuation.yield($0.port ?? 0) }) { session, messages in
                    for try await message in messages {
                        switch message.body {
                        case .statusRequest:
                            var response = WireEnvelope()
                            response.statusResponse = .with {
                                $0.fleet = "ius"
                                $0.node = "server"
                            }
                            try await session.send(response)
                        case .digest, .records:
                            guard HelloPolicy.permits(session.peer, .gossip) else {
                                session.reject(.forbidden, "operators may not gossip")
                                return
                            }
                        default:
                            break
                        }
                    }
                }
            }
            var ports = port.stream.makeAsyncIterator()
            let bound = try #require(await ports.next())
            try await body(bound)
            group.cancelAll()
        }
    }

    /// Where the rejection tests point their bad clients: the listener in this process (with a short Hello deadline
    /// for the slowloris case), or a real `dmirr agent` process with the "server" certificate and its default 10 s
    /// deadline. Both must behave the same; the agent is the one operators run.
    enum Target: CaseIterable, CustomStringConvertible {
        case inProcess
        case agent
        var description: String { self == .inProcess ? "in-process listener" : "dmirr agent" }
    }

    static func with(_ target: Target, _ fleet: TestFleet, helloDeadline: TimeAmount = .seconds(60), _ body: @Sendable (Int) async throws -> Void) async throws {
        switch target {
        case .inProcess:
            try await withServer(fleet, helloDeadline: helloDeadline, body)
        case .agent:
            try await withAgent(fleet, body)
        }
    }

    static func withAgent(_ fleet: TestFleet, _ body: @Sendable (Int) async throws -> Void) async throws {
        let port = try FreePort.pick()
        let config = """
            node = "server"
            fleet = "ius"
            [upstream]
            url = "\(fleet.dir.sub("no-upstream"))"
            poll = "1h"
            [mirror]
            path = "\(fleet.dir.sub("mirror"))"
            [listen]
            peer = "127.0.0.1:\(port)"
            [tls]
            ca = "\(fleet.dir.sub("ca.pem"))"
            cert = "\(fleet.dir.sub("server.pem"))"
            key = "\(fleet.dir.sub("server.key"))"
            [state]
            dir = "\(fleet.dir.sub("state"))"
            """
        try config.write(toFile: fleet.dir.sub("server.toml"), atomically: true, encoding: .utf8)
        let agent = try SpawnedDmirr(["agent", "-c", fleet.dir.sub("server.toml")], logDirectory: fleet.dir.path)
        defer { agent.killGroup() }
        guard FreePort.waitUntilAccepting(port: port, seconds: 30) else { throw TestFailure("the agent never listened:\n\(agent.stderr)") }
        try await body(port)
        #expect(agent.process.isRunning, "the agent died:\n\(agent.stderr.suffix(2000))")
        // The bad clients reached this agent (not something else on the port): it logged closing them.
        #expect(agent.stderr.contains("closed a peer connection"), "\(agent.stderr.suffix(2000))")
    }

    /// A real status query over mTLS: proves the server is still serving.
    static func statusWorks(_ fleet: TestFleet, port: Int, as name: String = "alice") async throws -> Bool {
        // The in-process server shares this test process's cooperative thread pool with the CPU-bound simulator suites
        // that run beside it; starved long enough, its session task misses the Hello deadline and the server closes
        // the connection before its Hello (seen twice in loaded full-suite runs). That is the test process's load,
        // not the behaviour under test, so such a closure is retried, twice at most; any other failure is not.
        for attempt in 1...3 {
            do {
                return try await statusOnce(fleet, port: port, as: name)
            } catch let error as NetError where attempt < 3 && error.message.contains("closed the connection before its Hello") {
                print("statusWorks: attempt \(attempt) closed before the Hello; retrying")
            }
        }
        return false
    }

    static func statusOnce(_ fleet: TestFleet, port: Int, as name: String) async throws -> Bool {
        let answered = ManagedFlag()
        try await PeerClient.connect(host: "127.0.0.1", port: port, tls: try fleet.tls(name), helloDeadline: .seconds(60)) { session, messages in
            #expect(session.peer == PeerIdentity(fleet: "ius", role: .node, name: "server"))
            var request = WireEnvelope()
            request.statusRequest = .init()
            try await session.send(request)
            for try await message in messages {
                if case .statusResponse(let r) = message.body, r.node == "server" { answered.set(); return }
            }
        }
        return answered.value
    }

    @Test func goodPeersAndOperatorsGetStatus() async throws {
        let fleet = try TestFleet()
        defer { fleet.dir.remove() }
        try await Self.withServer(fleet) { port in
            let asNode = try await Self.statusWorks(fleet, port: port, as: "good")
            let asOperator = try await Self.statusWorks(fleet, port: port, as: "alice")
            #expect(asNode && asOperator)
        }
    }

    @Test func aRevokedCertificateIsRefusedAfterTheHandshakeOnBothSides() async throws {
        let fleet = try TestFleet()
        defer { fleet.dir.remove() }
        let caKey = try String(contentsOfFile: fleet.dir.sub("ca.key"), encoding: .utf8)
        let tls = try fleet.tls("server")
        let list = RevocationList(fleet: "ius", number: 1, issuedMillis: 0, entries: [
            .init(target: .identity(role: .node, name: "good"), revokedMillis: Int64(Date().timeIntervalSince1970 * 1000) + 1000),
        ])
        #expect(tls.verifier.adopt(try tls.verifier.openRevocations(FleetVerifier.signRevocations(list, caKeyPEM: caKey)).get()))
        try await Self.withServer(fleet, tls: tls) { port in
            // The handshake itself succeeds (the chain is fine); the Hello is answered with REVOKED and the link closed.
            let result = try await RawPeer.exchange(port: port, tls: try fleet.rawClientContext(cert: "good"), send: [try RawPeer.frame(RawPeer.hello(node: "good"))])
            #expect(result.errorCodes == [.revoked], "got \(result.errorCodes)")
            #expect(result.closedByServer && !result.sawHello)
            // Others still get in.
            #expect(try await Self.statusWorks(fleet, port: port, as: "alice"))
            // And a dialer whose list revokes the server it reaches refuses that server.
            let dialer = try fleet.tls("alice")
            let revokesServer = RevocationList(fleet: "ius", number: 1, issuedMillis: 0, entries: [
                .init(target: .identity(role: .node, name: "server"), revokedMillis: Int64(Date().timeIntervalSince1970 * 1000) + 1000),
            ])
            dialer.verifier.adopt(try dialer.verifier.openRevocations(FleetVerifier.signRevocations(revokesServer, caKeyPEM: caKey)).get())
            do {
                try await PeerClient.connect(host: "127.0.0.1", port: port, tls: dialer) { _, _ in }
                Issue.record("connected to a revoked server")
            } catch {
                #expect("\(error)".contains("revoked"), "\(error)")
            }
        }
    }

    /// A plain TCP connection from `source` (any 127.x address is this host) to the listener; -1 on failure.
    static func tcp(from source: String, to port: Int) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return -1 }
        var local = sockaddr_in()
        local.sin_family = sa_family_t(AF_INET)
        inet_pton(AF_INET, source, &local.sin_addr)
        var remote = sockaddr_in()
        remote.sin_family = sa_family_t(AF_INET)
        remote.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, "127.0.0.1", &remote.sin_addr)
        let ok = withUnsafePointer(to: &local) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } } == 0
            && withUnsafePointer(to: &remote) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } } == 0
        if !ok { close(fd); return -1 }
        return fd
    }

    /// Whether the server closed `fd` within `seconds` (end of stream or a reset).
    static func closedByServer(_ fd: Int32, within seconds: Double) -> Bool {
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, Int32(seconds * 1000)) == 1 else { return false }
        var byte: UInt8 = 0
        return recv(fd, &byte, 1, 0) <= 0
    }

    @Test func connectionsOverTheCapsAreClosedAtAcceptAndOthersStillServed() async throws {
        let fleet = try TestFleet()
        defer { fleet.dir.remove() }
        try await Self.withServer(fleet, configure: { $0.connections = .init(perAddress: 3, total: 5) }) { port in
            var open: [Int32] = []
            defer { for fd in open { close(fd) } }
            for _ in 0..<3 { open.append(Self.tcp(from: "127.0.0.1", to: port)) }
            #expect(open.allSatisfy { $0 >= 0 })
            #expect(!open.contains { Self.closedByServer($0, within: 0.3) }, "the first three from one address are served")
            let fourth = Self.tcp(from: "127.0.0.1", to: port)
            #expect(Self.closedByServer(fourth, within: 2), "a fourth from the same address is closed at accept")
            close(fourth)
            // Another address still gets in, up to the total.
            open.append(Self.tcp(from: "127.0.0.2", to: port))
            open.append(Self.tcp(from: "127.0.0.3", to: port))
            #expect(!Self.closedByServer(open[3], within: 0.3) && !Self.closedByServer(open[4], within: 0.3))
            let overTotal = Self.tcp(from: "127.0.0.4", to: port)
            #expect(Self.closedByServer(overTotal, within: 2), "a sixth connection is over the total")
            close(overTotal)
            // Closing connections frees their slots: a real session from 127.0.0.1 is served again.
            for fd in open { close(fd) }
            open = []
            try await Task.sleep(for: .milliseconds(300))
            #expect(try await Self.statusWorks(fleet, port: port, as: "alice"))
        }
    }

    /// The pace one link's frames are handled at: a burst, then `framesPerSecond`, whatever the sender does.
    @Test func aLinksFramesAreTakenAtTheCappedPace() {
        let start = ContinuousClock.now
        var pace = PeerMessages.Pace(at: start)
        let burst = Int(PeerMessages.frameBurst)
        // The burst goes through at once.
        for i in 0..<burst { #expect(pace.take(now: start) == .zero, "frame \(i) of the burst waited") }
        // Then each frame waits for its share of a second; a sender that keeps sending at once is held to the pace.
        var at = start
        for _ in 0..<1000 { at += pace.take(now: at) }
        let rate = 1000 / ((at - start) / .seconds(1))
        #expect(abs(rate - PeerMessages.framesPerSecond) < 1, "\(rate) frames a second")
        // A quiet link earns its burst back, and no more.
        at += .seconds(3600)
        for _ in 0..<burst { #expect(pace.take(now: at) == .zero) }
        #expect(pace.take(now: at) > .zero)
    }

    /// The same, live: a peer that sends status requests as fast as it can is answered at the capped pace, and the
    /// server's reads stop meanwhile (the requests wait in the sockets, not in the server).
    @Test func aFloodingPeerIsReadAtTheCappedPace() async throws {
        let fleet = try TestFleet()
        defer { fleet.dir.remove() }
        try await Self.withServer(fleet) { port in
            let sent = 2 * Int(PeerMessages.frameBurst)
            let answers = ManagedCounter()
            let tls = try fleet.tls("alice")
            let started = ContinuousClock.now
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    try await PeerClient.connect(host: "127.0.0.1", port: port, tls: tls) { session, messages in
                        var request = WireEnvelope()
                        request.statusRequest = .init()
                        for _ in 0..<sent { try await session.send(request) }
                        for try await message in messages where message.statusResponse.node == "server" {
                            if answers.increment() == sent { return }
                        }
                    }
                }
                group.addTask { try await Task.sleep(for: .seconds(30)) }
                try await group.next()
                group.cancelAll()
            }
            // All answered, and no sooner than the pace allows: the burst at once, the rest at `framesPerSecond`.
            let seconds = (ContinuousClock.now - started) / .seconds(1)
            let least = (Double(sent) - PeerMessages.frameBurst) / PeerMessages.framesPerSecond
            #expect(answers.value == sent, "\(answers.value) of \(sent) answered in \(seconds) s")
            #expect(seconds >= least * 0.95, "\(sent) frames handled in \(seconds) s; the pace allows no less than \(least) s")
        }
    }

    @Test func aSessionThatSendsNothingIsClosedAtItsIdleDeadline() async throws {
        let fleet = try TestFleet()
        defer { fleet.dir.remove() }
        try await Self.withServer(fleet, configure: { $0.idleDeadline = .seconds(1) }) { port in
            let said = ManagedFlag()
            let started = ContinuousClock.now
            // An operator that says Hello and then nothing. Bounded: without the deadline the server would wait for ever.
            let tls = try fleet.tls("alice")
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    try await PeerClient.connect(host: "127.0.0.1", port: port, tls: tls) { _, messages in
                        for try await message in messages {
                            if case .error(let e) = message.body, e.message.contains("nothing received for 1 s") { said.set() }
                        }
                    }
                }
                group.addTask { try await Task.sleep(for: .seconds(10)) }
                try await group.next()
                group.cancelAll()
            }
            let took = ContinuousClock.now - started
            #expect(said.value, "no error frame naming the idle deadline")
            #expect(took < .seconds(5), "closed after \(took)")
        }
    }

    @Test(arguments: Target.allCases) func tlsLevelRejections(_ target: Target) async throws {
        let fleet = try TestFleet()
        defer { fleet.dir.remove() }
        try await Self.with(target, fleet) { port in
            let hello = try RawPeer.frame(RawPeer.hello(node: "good"))
            // No client certificate; a certificate from another CA of the same fleet name; an expired certificate;
            // another fleet's CA.
            for cert in [nil, "impostor", "expired", "epel"] as [String?] {
                let result = try await RawPeer.exchange(port: port, tls: try fleet.rawClientContext(cert: cert), send: [hello])
                #expect(!result.sawHello, "\(cert ?? "no cert") got a Hello")
                #expect(result.closedByServer, "\(cert ?? "no cert") was not closed")
                #expect(try await Self.statusWorks(fleet, port: port), "server stopped serving after \(cert ?? "no cert")")
            }
            // And the dialer refuses a server outside the fleet in the same way (here: our own client with a foreign CA).
            let foreign = try FleetTLS(caPath: fleet.dir.sub("ca.pem"), certPath: fleet.dir.sub("impostor.pem"), keyPath: fleet.dir.sub("impostor.key"))
            await #expect(throws: (any Error).self) {
                try await PeerClient.connect(host: "127.0.0.1", port: port, tls: foreign) { _, _ in }
            }
        }
    }

    @Test(arguments: Target.allCases) func protocolRejectionsSendAnErrorFrameAndClose(_ target: Target) async throws {
        let fleet = try TestFleet()
        defer { fleet.dir.remove() }
        try await Self.with(target, fleet) { port in
            let good = try fleet.rawClientContext(cert: "good")
            var oversize = ByteBuffer()
            oversize.writeInteger(UInt32(Framing.defaultLimit + 1), endianness: .big)
            var garbage = ByteBuffer()
            garbage.writeInteger(UInt32(16), endianness: .big)
            garbage.writeBytes(Array(repeating: 0xFF, count: 16))
            var status = WireEnvelope()
            status.statusRequest = .init()
            var digest = WireEnvelope()
            digest.digest = .init()

            let cases: [(String, NIOSSLContext, [ByteBuffer], WireErrorFrame.Code)] = [
                ("Hello node differs from the certificate", good, [try RawPeer.frame(RawPeer.hello(node: "server"))], .identityMismatch),
                ("wrong fleet in Hello", good, [try RawPeer.frame(RawPeer.hello(fleet: "epel", node: "good"))], .wrongFleet),
                ("unknown major version", good, [try RawPeer.frame(RawPeer.hello(node: "good", major: 9))], .unsupportedVersion),
                ("something before Hello", good, [try RawPeer.frame(status)], .helloRequired),
                ("oversize frame", good, [oversize], .frameTooLarge),
                ("zero-length frame", good, [ByteBuffer(bytes: [0, 0, 0, 0])], .emptyFrame),
                ("random bytes", good, [garbage], .malformed),
                ("operator gossiping", try fleet.rawClientContext(cert: "alice"), [try RawPeer.frame(RawPeer.hello(node: "alice")), try RawPeer.frame(digest)], .forbidden),
                ("oversize frame after Hello", good, [try RawPeer.frame(RawPeer.hello(node: "good")), oversize], .frameTooLarge),
            ]
            for (name, tls, bytes, code) in cases {
                let result = try await RawPeer.exchange(port: port, tls: tls, send: bytes)
                #expect(result.errorCodes == [code], "\(name): got \(result.errorCodes)")
                #expect(result.closedByServer, "\(name): not closed")
                #expect(try await Self.statusWorks(fleet, port: port), "server stopped serving after: \(name)")
            }

            // A truncated frame, then the client closes: nothing to answer, and the server carries on.
            var truncated = try RawPeer.frame(RawPeer.hello(node: "good"))
            truncated.moveWriterIndex(to: truncated.writerIndex - 3)
            _ = try await RawPeer.exchange(port: port, tls: good, send: [truncated], timeout: .milliseconds(200))
            #expect(try await Self.statusWorks(fleet, port: port))
        }
    }

    @Test(arguments: Target.allCases) func slowlorisAndManyIdleConnectionsAreCutAtTheDeadline(_ target: Target) async throws {
        let fleet = try TestFleet()
        defer { fleet.dir.remove() }
        // In process the deadline is 0.8 s; the agent has its default, 10 s.
        let deadline: Duration = target == .inProcess ? .milliseconds(800) : .seconds(10)
        let wait: TimeAmount = target == .inProcess ? .seconds(5) : .seconds(20)
        try await Self.with(target, fleet, helloDeadline: .milliseconds(800)) { port in
            // TLS done, but no Hello: HELLO_TIMEOUT, then closed.
            let started = ContinuousClock.now
            let slow = try await RawPeer.exchange(port: port, tls: try fleet.rawClientContext(cert: "good"), send: [], timeout: wait)
            #expect(slow.errorCodes == [.helloTimeout])
            #expect(slow.closedByServer)
            let took = ContinuousClock.now - started
            #expect(took >= deadline && took < deadline + .seconds(4), "cut after \(took)")

            // 200 idle TCP connections (not even TLS) at once, from eight addresses so that each stays under the cap
            // per address (32): status still works while they are open, and all are closed by the deadline.
            let idle = try await withThrowingTaskGroup(of: RawPeer.Result.self) { group in
                for i in 0..<200 {
                    group.addTask { try await RawPeer.exchange(port: port, tls: nil, send: [], timeout: wait, from: "127.0.0.\(2 + i % 8)") }
                }
                let servingMeanwhile = try await Self.statusWorks(fleet, port: port)
                #expect(servingMeanwhile)
                var results: [RawPeer.Result] = []
                for try await r in group { results.append(r) }
                return results
            }
            #expect(idle.count == 200)
            let allClosed = idle.filter { !$0.closedByServer }.isEmpty
            #expect(allClosed)
            #expect(try await Self.statusWorks(fleet, port: port))
        }
    }
}
