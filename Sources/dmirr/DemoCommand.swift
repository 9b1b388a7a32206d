import ArgumentParser
import DmirrAgent
import DmirrCore
import DmirrFixtures
import DmirrNet
import DmirrWire
import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// `dmirr demo`: a whole fleet on this machine. A real upstream (yum repo served by `rsync --daemon` with a small
/// connection limit), a fleet CA, and four `dmirr agent` processes, each serving its mirror through its own rsync
/// daemon. It shows a push propagating (who pulls from whom) and cleans up.
struct DemoCommand: AsyncParsableCommand {
    /// Whether a status answer shows `members` members, every one alive and in sync on `token`.
    static func showsConverged(_ status: WireStatusResponse, on token: String, members: Int) -> Bool {
        status.members.count == members && status.members.allSatisfy {
            $0.liveness == "alive" && $0.record.publishedToken == token && $0.record.syncState == .inSync
        }
    }

    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run an upstream and a fleet of mirror agents on this machine and show a push propagate.",
        discussion: """
            Builds a real yum repo (rpmbuild + createrepo_c), serves it with `rsync --daemon` (max connections = 2) on a \
            free loopback port, makes a fleet CA and certificates, starts four agents (mutual TLS, gossip, each with its \
            own rsync daemon for peers; [upstream] slots = 1), pushes an update upstream, announces it, and prints who \
            pulled what from whom. Needs rsync, rpm and createrepo-c (Debian packages). Exit 0 when every mirror ends \
            on the pushed token.
            """
    )

    @Option(help: "Work directory (default: a new directory under /tmp).")
    var dir: String?

    @Flag(help: "Keep the work directory afterwards.")
    var keep = false

    @Option(help: "How many mirrors (2…12).")
    var mirrors: Int = 4

    func validate() throws {
        guard (2...12).contains(mirrors) else { throw ValidationError("--mirrors must be between 2 and 12") }
    }

    func run() async throws {
        let root = dir ?? (NSTemporaryDirectory() + "dmirr-demo-\(ProcessInfo.processInfo.processIdentifier)")
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        var fleet = DemoFleet(root: root, size: mirrors)
        // The agents and daemons lead their own process groups, so ^C on the terminal does not reach them: stop them
        // ourselves on SIGINT/SIGTERM.
        let reaper = ChildReaper(root: keep || dir != nil ? nil : root)
        fleet.reaper = reaper
        defer {
            fleet.stop()
            if keep || dir != nil {
                print("\nwork directory kept: \(root) (agent logs in \(root)/logs)")
            } else {
                try? FileManager.default.removeItem(atPath: root)
            }
        }
        print("== dmirr demo: one upstream and a fleet of \(mirrors) mirrors, on this machine")
        try fleet.setUp()
        print("\n-- waiting for the fleet to form and take push-1 (upstream slots = 1: one mirror pulls from upstream at a time;")
        print("   peers serve a token once 2 mirrors attest it from their own upstream pulls, [peers] attestations = 2)")
        guard try await fleet.follow(token: "push-1", seconds: 120) else {
            print("!! the fleet did not converge on push-1; agent logs: \(root)/logs")
            throw ExitCode(1)
        }

        print("\n-- upstream push: add alpha 1.1 and delta 1.0 (256 KiB each), remove beta 1.0, new token push-2")
        try fleet.push()
        print("-- dmirr announce: tell the fleet at once instead of waiting for a poll")
        try await fleet.announce(token: "push-2")
        guard try await fleet.follow(token: "push-2", seconds: 120) else {
            print("!! the fleet did not converge on push-2; agent logs: \(root)/logs")
            throw ExitCode(1)
        }
        print("\n-- dmirr status -c \(fleet.configPath(fleet.names[0]))")
        // Every mirror holds push-2 by its own word; the table is one member's view, which gossip brings up to date
        // a round or two later. Print it once that view shows every member in sync on push-2.
        var status = try await ControlClient.status(path: fleet.controlPath(fleet.names[0]))
        let viewDeadline = ContinuousClock.now + .seconds(20)
        while !Self.showsConverged(status, on: "push-2", members: fleet.names.count), ContinuousClock.now < viewDeadline {
            try await Task.sleep(for: .milliseconds(200))
            status = try await ControlClient.status(path: fleet.controlPath(fleet.names[0]))
        }
        print(FleetStatusView(status).table(color: false).split(separator: "\n").map { "   " + $0 }.joined(separator: "\n"))
        let sources = fleet.pulls.filter { $0.token == "push-2" }
        let fromUpstream = sources.filter { $0.source == "upstream" }.count
        print("\n== demo done: all \(mirrors) mirrors hold push-2; \(fromUpstream) pulled it from upstream, "
              + "\(sources.count - fromUpstream) from peers")
    }
}

/// The demo's processes and what it has seen of them.
struct DemoFleet {
    let root: String
    let size: Int
    var names: [String] { (0..<size).map { "mirror-\(Character(UnicodeScalar(UInt8(97 + $0))))" } }
    var upstreamDaemon: RsyncDaemon?
    var servers: [String: RsyncDaemon] = [:]
    var agents: [String: Process] = [:]
    var ports: [String: Int] = [:]
    /// Each agent's HTTP listener: metrics, status.json and the fleet page.
    var httpPorts: [String: Int] = [:]
    /// (node, token, source) of every pull seen starting.
    var pulls: [(node: String, token: String, source: String)] = []
    var reaper: ChildReaper?
    private var lastSeen: [String: String] = [:]
    private let started = ContinuousClock.now

    init(root: String, size: Int) {
        self.root = root
        self.size = size
    }

    var upstream: String { root + "/upstream" }
    func configPath(_ name: String) -> String { root + "/\(name).toml" }
    func controlPath(_ name: String) -> String { root + "/state-\(name)/control.sock" }

    mutating func setUp() throws {
        print("-- building a yum repo with rpmbuild + createrepo_c in \(upstream)")
        try YumRepo.make(
            at: upstream,
            packages: [.init("alpha", "1.0", sizeKB: 256), .init("beta", "1.0", sizeKB: 256), .init("gamma", "1.0", sizeKB: 256)],
            token: "push-1")
        let daemon = try RsyncDaemon(directory: root + "/rsyncd-upstream", modules: [.init(name: "repo", path: upstream, maxConnections: 2)])
        upstreamDaemon = daemon
        reaper?.add(daemon.pid)
        print("-- upstream serving \(daemon.url("repo")) (rsync --daemon, max connections = 2)")

        try FileManager.default.createDirectory(atPath: root + "/certs", withIntermediateDirectories: true)
        let ca = try FleetPKI.makeCA(fleet: "demo")
        try FleetPKI.write(ca.certificatePEM, to: root + "/certs/ca.pem", secret: false, force: true)
        for name in names + ["operator"] {
            let role: PeerIdentity.Role = name == "operator" ? .operator : .node
            let leaf = try FleetPKI.issue(caCertificatePEM: ca.certificatePEM, caKeyPEM: ca.privateKeyPEM,
                                          identity: PeerIdentity(fleet: "demo", role: role, name: name), ips: ["127.0.0.1"])
            try FleetPKI.write(leaf.certificatePEM, to: root + "/certs/\(name).pem", secret: false, force: true)
            try FleetPKI.write(leaf.privateKeyPEM, to: root + "/certs/\(name).key", secret: true, force: true)
        }
        print("-- fleet CA and certificates in \(root)/certs (what `dmirr cert ca` and `dmirr cert issue` write)")

        for name in names {
            try FileManager.default.createDirectory(atPath: root + "/mirror-\(name)", withIntermediateDirectories: true)
            let server = try RsyncDaemon(directory: root + "/rsyncd-\(name)",
                                         modules: [.init(name: "mirror", path: root + "/mirror-\(name)", maxConnections: 2)])
            servers[name] = server
            reaper?.add(server.pid)
            ports[name] = try FreePort.pick()
            httpPorts[name] = try FreePort.pick()
        }
        try FileManager.default.createDirectory(atPath: root + "/logs", withIntermediateDirectories: true)
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        for (i, name) in names.enumerated() {
            let seed = names[(i + size - 1) % size]
            try config(name, seed: seed).write(toFile: configPath(name), atomically: true, encoding: .utf8)
            let process = Process()
            process.executableURL = URL(fileURLWithPath: executable)
            process.arguments = ["agent", "-c", configPath(name)]
            _ = FileManager.default.createFile(atPath: root + "/logs/\(name).log", contents: nil)
            process.standardError = FileHandle(forWritingAtPath: root + "/logs/\(name).log")
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            agents[name] = process
            reaper?.add(process.processIdentifier)
            print("   \(name): agent pid \(process.processIdentifier), peers at 127.0.0.1:\(ports[name]!), "
                  + "serves \(servers[name]!.url("mirror"))")
        }
        print("-- \(size) agents started with [upstream] slots = 1, [mirror] serve_slots = 2 (config: \(configPath(names[0])))")
        print("   the fleet page: http://127.0.0.1:\(httpPorts[names[0]]!)/ (any agent's; Prometheus metrics at /metrics)")
    }

    func config(_ name: String, seed: String) -> String {
        """
        node  = "\(name)"
        fleet = "demo"

        [upstream]
        url   = "\(upstreamDaemon!.url("repo"))"
        poll  = "2s"
        slots = 1

        [mirror]
        path        = "\(root)/mirror-\(name)"
        rsync_url   = "\(servers[name]!.url("mirror"))"
        serve_slots = 2

        [listen]
        peer    = "127.0.0.1:\(ports[name]!)"
        metrics = "127.0.0.1:\(httpPorts[name]!)"

        [tls]
        ca   = "\(root)/certs/ca.pem"
        cert = "\(root)/certs/\(name).pem"
        key  = "\(root)/certs/\(name).key"

        [peers]
        seeds         = ["127.0.0.1:\(ports[seed]!)"]
        gossip        = "250ms"
        suspect_after = "3s"
        down_after    = "10s"

        [state]
        dir = "\(root)/state-\(name)"

        """
    }

    func push() throws {
        try YumRepo.buildRPMs([.init("alpha", "1.1", sizeKB: 256), .init("delta", "1.0", sizeKB: 256)], into: upstream + "/Packages")
        try FileManager.default.removeItem(atPath: upstream + "/Packages/beta-1.0-1.noarch.rpm")
        try YumRepo.createrepo(upstream)
        try "push-2\n".write(toFile: upstream + "/CURRENT", atomically: true, encoding: .utf8)
    }

    func announce(token: String) async throws {
        let tls = try FleetTLS(caPath: root + "/certs/ca.pem", certPath: root + "/certs/operator.pem", keyPath: root + "/certs/operator.key")
        let ack = try await FleetClient.announce(to: HostPort(host: "127.0.0.1", port: ports[names[0]]!), token: token, tls: tls)
        print("   told \(ack.node)")
    }

    /// Prints each mirror's transitions until all hold `token` (true) or `seconds` pass (false).
    mutating func follow(token: String, seconds: Double) async throws -> Bool {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while ContinuousClock.now < deadline {
            var done = 0
            for name in names {
                guard let status = try? await ControlClient.status(path: controlPath(name)),
                    let me = status.members.first(where: { $0.record.node == name })?.record
                else { continue }
                let state = FleetStatusView.stateName(me.syncState)
                let line: String
                switch state {
                case "syncing": line = "pulling \(me.targetToken) from \(me.source)"
                case "in_sync": line = "in sync on \(me.publishedToken)"
                default: line = state + (me.lastError.isEmpty ? "" : " (\(me.lastError.prefix(80)))")
                }
                if lastSeen[name] != line {
                    lastSeen[name] = line
                    let elapsed = (ContinuousClock.now - started).components
                    let at = Double(elapsed.seconds) + Double(elapsed.attoseconds) / 1e18
                    print(String(format: "   [%6.1fs] ", at) + "\(name)  \(line)")
                    if state == "syncing" { pulls.append((name, me.targetToken, me.source)) }
                }
                if me.publishedToken == token { done += 1 }
            }
            if done == size { return true }
            try await Task.sleep(for: .milliseconds(100))
        }
        return false
    }

    mutating func stop() {
        for process in agents.values where process.isRunning { kill(process.processIdentifier, SIGTERM) }
        // Agents drain within a few seconds; one that does not is killed rather than left to hang the demo.
        let deadline = ContinuousClock.now + .seconds(10)
        while agents.values.contains(where: \.isRunning), ContinuousClock.now < deadline { usleep(50_000) }
        for process in agents.values where process.isRunning { kill(-process.processIdentifier, SIGKILL) }
        for process in agents.values { process.waitUntilExit() }
        agents = [:]
        for server in servers.values { server.stop() }
        upstreamDaemon?.stop()
    }
}

/// Stops the demo's children when the demo itself is interrupted.
final class ChildReaper: Sendable {
    /// The children to stop; shared with the signal handlers.
    final class Children: Sendable {
        let pids = Mutex<[Int32]>([])
    }
    private let children = Children()
    private let sources: Mutex<[any DispatchSourceSignal]>

    init(root: String?) {
        var sources: [any DispatchSourceSignal] = []
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler { [children] in
                let pids = children.pids.withLock { $0 }
                print("\n-- interrupted: stopping the demo's agents and daemons")
                for pid in pids { kill(pid, SIGTERM) }
                usleep(1_500_000)
                for pid in pids { kill(pid, SIGKILL) }
                if let root { try? FileManager.default.removeItem(atPath: root) }
                exit(130)
            }
            source.resume()
            sources.append(source)
        }
        self.sources = Mutex(sources)
    }

    func add(_ pid: Int32) { children.pids.withLock { $0.append(pid) } }
}
