import DmirrCore
import DmirrFixtures
import DmirrNet
import DmirrTestSupport
import DmirrWire
import Foundation
import Testing

/// Real agent processes on loopback with certificates from `dmirr cert` and a real upstream rsync daemon.
@Suite(.serialized) struct FleetTests {
    /// Flips one byte in the middle of a file and puts its mtime back: same size and mtime, so only a checksum (the
    /// packages-level verification) can tell.
    static func corruptKeepingSizeAndMtime(_ path: String) throws {
        let mtime = try FileManager.default.attributesOfItem(atPath: path)[.modificationDate] as! Date
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        bytes[bytes.count / 2] ^= 0xFF
        try bytes.write(to: URL(fileURLWithPath: path))
        try FileManager.default.setAttributes([.modificationDate: mtime], ofItemAtPath: path)
    }

    final class Fleet: @unchecked Sendable {
        let dir: TestDirectory
        let upstream: Upstream
        var names: [String] = []
        var ports: [String: Int] = [:]
        var agents: [String: SpawnedDmirr] = [:]

        let mirrorExtra: String
        let upstreamSlots: Int
        /// Each agent's own rsync daemon serving its mirror to peers (when the fleet serves).
        var servers: [String: RsyncDaemon] = [:]

        /// - Parameter serving: give every agent an rsync daemon for its mirror and advertise it (`rsync_url`).
        let poll: String

        /// Per-member `[upstream] url` where it is not upstream's own module.
        var upstreamURLs: [String: String] = [:]
        /// Extra lines for every member's `[peers]` table.
        let peersExtra: String
        /// Extra lines for one member's `[tls]` table.
        var tlsExtra: [String: String] = [:]
        /// Extra lines for one member's `[mirror]` table.
        let mirrorExtraFor: [String: String]
        /// Each member's HTTP listener (`[listen] metrics`) port, when the fleet has them.
        var httpPorts: [String: Int] = [:]
        /// Extra lines for every member's `[listen]` table.
        let listenExtra: String
        /// `[peers] suspect_after` and `down_after`: short, so that tests of failure detection finish quickly.
        let suspectAfter: String
        let downAfter: String
        /// Separate hosts: upstream (host `upstream`) and every member in a network namespace of their own, so that the
        /// fault campaigns can cut links. Nil: everything on loopback.
        let lab: NetLab?
        /// Slow, lossy links (``LinkProxy``): every connection to a member's peer port, to its rsync daemon and to
        /// upstream goes through a proxy of its own with this profile, and members advertise and dial the proxies.
        let links: LinkProxy.Profile?
        /// "peer-m0", "rsync-m0", …, "upstream": the proxies, when `links` is set.
        var proxies: [String: LinkProxy] = [:]

        /// - Parameters:
        ///   - upstreamMaxConnections: the upstream daemon's own `max connections` (0: none).
        ///   - extraModules: more modules on upstream's daemon (point a member at one with ``upstreamURLs``).
        init(size: Int, mirrorExtra: String = "", serving: Bool = false, upstreamSlots: Int = 2, poll: String = "1s",
             upstreamMaxConnections: Int = 0, extraModules: [RsyncDaemon.Module] = [], upstreamURLs: [String: String] = [:],
             peersExtra: String = "", http: Bool = false, mirrorExtraFor: [String: String] = [:], listenExtra: String = "",
             suspectAfter: String = "2s", downAfter: String = "5s", lab: NetLab? = nil, certificatesIssuedAgo: String? = nil,
             atomicUpstream: Bool = false, links: LinkProxy.Profile? = nil) throws {
            self.lab = lab
            self.links = links
            self.mirrorExtra = mirrorExtra
            self.listenExtra = listenExtra
            self.suspectAfter = suspectAfter
            self.downAfter = downAfter
            self.mirrorExtraFor = mirrorExtraFor
            self.peersExtra = peersExtra
            self.upstreamSlots = upstreamSlots
            self.poll = poll
            dir = try TestDirectory("fleet")
            names = (0..<size).map { "m\($0)" }
            if let lab {
                for host in ["upstream"] + names { try lab.add(host) }
            }
            upstream = try Upstream(in: dir, packages: [.init("alpha", "1.0"), .init("beta", "1.0")], token: "push-1",
                                    maxConnections: upstreamMaxConnections, extraModules: extraModules, host: lab?.host("upstream"),
                                    atomic: atomicUpstream)
            self.upstreamURLs = upstreamURLs.mapValues {
                $0.replacingOccurrences(of: "UPSTREAM", with: "\(upstream.daemon.address):\(upstream.daemon.port)")
            }
            // Certificates issued earlier than now (`faketime`), for members whose clock runs behind.
            func cert(_ arguments: [String]) throws -> CommandResult {
                guard let ago = certificatesIssuedAgo else { return try CLI.dmirr(arguments) }
                return try CLI.run("/usr/bin/faketime", ["-f", "-" + ago, CLI.dmirrPath] + arguments)
            }
            let ca = try cert(["cert", "ca", "--fleet", "test", "--out", dir.sub("ca")])
            guard ca.exitCode == 0 else { throw TestFailure(ca.stderr) }
            for name in names {
                let issued = try cert(["cert", "issue", "--ca", dir.sub("ca"), "--node", name, "--ip", address(name), "--out", dir.sub("certs")])
                guard issued.exitCode == 0 else { throw TestFailure(issued.stderr) }
                ports[name] = try FreePort.pick()
                if http { httpPorts[name] = try FreePort.pick() }
            }
            if serving {
                for name in names {
                    // Snapshot mode manages `path` as a symlink; the daemon resolves it at each connection.
                    if !mirrorExtra.contains("snapshot") {
                        try FileManager.default.createDirectory(atPath: mirror(name), withIntermediateDirectories: true)
                    }
                    servers[name] = try RsyncDaemon(directory: dir.sub("rsyncd-\(name)"), modules: [.init(name: "mirror", path: mirror(name), maxConnections: 2)],
                                                    namespace: lab.map { ($0.host(name).namespace, $0.host(name).address) })
                }
            }
            if let links {
                precondition(lab == nil, "link proxies listen on loopback")
                // Only the bulk transfers are limited in bandwidth (as in the simulator); gossip sees latency and loss.
                var gossip = links
                gossip.bandwidth = nil
                for (i, name) in names.enumerated() {
                    proxies["peer-\(name)"] = try LinkProxy(to: "127.0.0.1", port: ports[name]!, profile: gossip, seed: UInt64(2 * i + 1))
                    if let server = servers[name] {
                        proxies["rsync-\(name)"] = try LinkProxy(to: "127.0.0.1", port: server.port, profile: links, seed: UInt64(2 * i + 2))
                    }
                }
                proxies["upstream"] = try LinkProxy(to: "127.0.0.1", port: upstream.daemon.port, profile: links, seed: 99)
            }
            for (i, name) in names.enumerated() {
                // Each seeds the previous one (the first seeds the last): a ring to start from, not a mesh.
                let seed = names[(i + size - 1) % size]
                try config(name, seeds: ["\(address(seed)):\(peerPort(seed))"]).write(toFile: configPath(name), atomically: true, encoding: .utf8)
            }
        }

        /// Where a member listens: its own host's address, or loopback.
        func address(_ name: String) -> String { lab?.hosts[name]?.address ?? "127.0.0.1" }

        /// The port other members dial for `name`: its own, or its link proxy's.
        func peerPort(_ name: String) -> Int { proxies["peer-\(name)"]?.port ?? ports[name]! }

        func configPath(_ name: String) -> String { dir.sub("\(name).toml") }
        func mirror(_ name: String) -> String { dir.sub("mirror-\(name)") }

        func config(_ name: String, seeds: [String]) -> String {
            """
            node = "\(name)"
            fleet = "test"
            [upstream]
            url = "\(upstreamURLs[name] ?? proxies["upstream"].map { "rsync://127.0.0.1:\($0.port)/repo" } ?? upstream.url)"
            poll = "\(poll)"
            timeout = "20s"
            slots = \(upstreamSlots)
            [mirror]
            path = "\(mirror(name))"
            \(servers[name].map { "rsync_url = \"\(proxies["rsync-\(name)"].map { "rsync://127.0.0.1:\($0.port)/mirror" } ?? $0.url("mirror"))\"\nserve_slots = 2" } ?? "")
            \(mirrorExtra)
            \(mirrorExtraFor[name] ?? "")
            [listen]
            peer = "\(address(name)):\(ports[name]!)"
            \(proxies["peer-\(name)"].map { "advertise = \"127.0.0.1:\($0.port)\"" } ?? "")
            \(httpPorts[name].map { "metrics = \"\(address(name)):\($0)\"" } ?? "")
            \(listenExtra)
            [tls]
            ca = "\(dir.sub("ca/ca.pem"))"
            cert = "\(dir.sub("certs/\(name).pem"))"
            key = "\(dir.sub("certs/\(name).key"))"
            \(tlsExtra[name] ?? "")
            [peers]
            seeds = [\(seeds.map { "\"\($0)\"" }.joined(separator: ", "))]
            gossip = "200ms"
            suspect_after = "\(suspectAfter)"
            down_after = "\(downAfter)"
            \(peersExtra)
            [state]
            dir = "\(dir.sub("state-\(name)"))"
            """
        }

        func start(_ name: String, environment: [String: String] = [:], wrapper: [String] = []) throws {
            agents[name] = try SpawnedDmirr(["agent", "-c", configPath(name)], environment: environment,
                                            wrapper: (lab?.host(name).wrapper ?? []) + wrapper, logDirectory: dir.path)
        }

        func status(_ name: String) -> [String: Any]? {
            guard let r = try? CLI.dmirr(["status", "-c", configPath(name), "--json"], timeout: 10), !r.stdout.isEmpty else { return nil }
            return try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
        }

        /// member node → (state, token) as `name` sees it.
        func view(_ name: String) -> [String: (state: String, token: String?)] {
            let members = status(name)?["members"] as? [[String: Any]] ?? []
            var out: [String: (String, String?)] = [:]
            for m in members { out[m["node"] as! String] = (m["state"] as! String, m["token"] as? String) }
            return out
        }

        func waitUntil(seconds: Double, _ condition: () -> Bool) -> Bool {
            let deadline = Date().addingTimeInterval(seconds)
            while Date() < deadline {
                if condition() { return true }
                usleep(200_000)
            }
            return false
        }

        func allInSync(_ token: String, among live: [String]) -> Bool {
            live.allSatisfy { viewer in
                let v = view(viewer)
                return live.allSatisfy { v[$0]?.state == "in_sync" && v[$0]?.token == token }
            }
        }

        func stop() {
            for agent in agents.values { agent.killGroup() }
            for server in servers.values { server.stop() }
            upstream.stop()
            for proxy in proxies.values { proxy.stop() }
            lab?.close()
        }

        struct Run {
            var node: String
            var token: String
            var source: String
            var outcome: String
            var started: Date
            var finished: Date
        }

        /// Every agent's recorded sync runs (`dmirr history --json`).
        func runs() throws -> [Run] {
            let f = ISO8601DateFormatter()
            f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
            var out: [Run] = []
            for name in names {
                let r = try CLI.dmirr(["history", "-c", configPath(name), "--json", "--limit", "100"])
                let rows = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]] ?? []
                for row in rows {
                    guard let started = (row["started_at"] as? String).flatMap(f.date(from:)),
                        let finished = (row["finished_at"] as? String).flatMap(f.date(from:))
                    else { continue }
                    out.append(Run(node: name, token: row["token"] as? String ?? "", source: row["source"] as? String ?? "",
                                   outcome: row["outcome"] as? String ?? "", started: started, finished: finished))
                }
            }
            return out
        }

        func logs() -> String { agents.map { "--- \($0.key)\n\($0.value.stderr.suffix(3000))" }.joined(separator: "\n") }

        /// A genuine member that runs no agent: a certificate of this fleet for `name`, and TLS and a record signer
        /// made from it, for tests that play a hostile member over the real protocol.
        func member(_ name: String) throws -> (tls: FleetTLS, signer: RecordSigner) {
            let issued = try CLI.dmirr(["cert", "issue", "--ca", dir.sub("ca"), "--node", name, "--out", dir.sub("certs")])
            guard issued.exitCode == 0 else { throw TestFailure(issued.stderr) }
            let (ca, cert, key) = (dir.sub("ca/ca.pem"), dir.sub("certs/\(name).pem"), dir.sub("certs/\(name).key"))
            return (try FleetTLS(caPath: ca, certPath: cert, keyPath: key), try RecordSigner(caPath: ca, certPath: cert, keyPath: key))
        }
    }

    @Test func fiveAgentsConvergeAndFollowAPush() throws {
        let fleet = try Fleet(size: 5)
        defer { fleet.stop(); fleet.dir.remove() }
        for name in fleet.names { try fleet.start(name) }

        let converged = fleet.waitUntil(seconds: 60) { fleet.allInSync("push-1", among: fleet.names) }
        #expect(converged, "\(fleet.names.map { "\($0): \(fleet.view($0))" })\n\(fleet.logs())")
        guard converged else { return }

        try fleet.upstream.push(add: [.init("gamma", "1.0")], remove: ["beta-1.0-1.noarch.rpm"], token: "push-2")
        let followed = fleet.waitUntil(seconds: 60) { fleet.allInSync("push-2", among: fleet.names) }
        #expect(followed, "\(fleet.names.map { "\($0): \(fleet.view($0))" })")
        for name in fleet.names {
            #expect(TreeComparison.differences(fleet.upstream.tree, fleet.mirror(name)) == [], "\(name)")
        }
        // status exits 0 for a mirror with the target token.
        #expect(try CLI.dmirr(["status", "-c", fleet.configPath("m0")]).exitCode == 0)
        let table = try CLI.dmirr(["status", "-c", fleet.configPath("m0")]).stdout
        #expect(table.contains("NODE") && table.contains("m4") && table.contains("in_sync"))

        // kill -9 one agent: the others see it suspect, then down; restarted, it rejoins with its state.
        fleet.agents["m2"]!.killGroup()
        let others = fleet.names.filter { $0 != "m2" }
        let started = Date()
        #expect(fleet.waitUntil(seconds: 10) { others.allSatisfy { ["suspect", "down"].contains(fleet.view($0)["m2"]?.state ?? "") } })
        let suspectAfter = Date().timeIntervalSince(started)
        #expect(fleet.waitUntil(seconds: 15) { others.allSatisfy { fleet.view($0)["m2"]?.state == "down" } })
        let downAfter = Date().timeIntervalSince(started)
        // Silence is counted from the last heartbeat the others received, which can be up to one heartbeat interval
        // (0.5 s here) plus a gossip round before the kill; the upper bounds allow for status polling and slow CI.
        #expect(suspectAfter >= 1.2 && suspectAfter < 6, "suspect after \(suspectAfter) s (suspect_after = 2s)")
        #expect(downAfter >= 4.2 && downAfter < 10, "down after \(downAfter) s (down_after = 5s)")
        try fleet.start("m2")
        #expect(fleet.waitUntil(seconds: 30) { fleet.allInSync("push-2", among: fleet.names) }, "m2 did not rejoin: \(fleet.view("m0"))")

        // An operator certificate may query any agent's status over mTLS.
        let op = try CLI.dmirr(["cert", "issue", "--ca", fleet.dir.sub("ca"), "--node", "alice", "--operator", "--out", fleet.dir.sub("ops")])
        #expect(op.exitCode == 0)
        let remote = try CLI.dmirr([
            "status", "--peer", "127.0.0.1:\(fleet.ports["m3"]!)", "--cert", fleet.dir.sub("ops/alice.pem"),
            "--key", fleet.dir.sub("ops/alice.key"), "--ca", fleet.dir.sub("ca/ca.pem"), "--json",
        ])
        #expect(remote.exitCode == 0, "\(remote.stderr)")
        #expect(remote.stdout.contains("\"node\" : \"m3\""))

        // SIGTERM: a clean exit within a few seconds.
        let m4 = fleet.agents["m4"]!
        kill(m4.pid, SIGTERM)
        #expect(m4.waitForExit(seconds: 10) == 0, "\(m4.stderr.suffix(2000))")
    }

    /// Eight agents with `[upstream] slots = 2`. With the daemon's own `max connections` at 8 the bound is the fleet's
    /// doing; at 2 the daemon enforces it too, and the fleet must not run into it much.
    @Test(arguments: [8, 2]) func eightAgentsPullAPushMostlyFromEachOtherAndUpstreamServesTwoAtATime(daemonMaxConnections: Int) throws {
        // Pulls run at ~1 MB/s so that one of push-2 lasts seconds and pulls have a chance to overlap.
        let fleet = try Fleet(size: 8, mirrorExtra: "rsync_args = [\"--bwlimit=1000\"]", serving: true, upstreamSlots: 2,
                              upstreamMaxConnections: daemonMaxConnections)
        defer { fleet.stop(); fleet.dir.remove() }
        for name in fleet.names { try fleet.start(name) }
        let first = fleet.waitUntil(seconds: 120) { fleet.allInSync("push-1", among: fleet.names) }
        #expect(first, "\(fleet.names.map { "\($0): \(fleet.view($0))" })\n\(fleet.logs())")
        guard first else { return }

        sleep(1)  // the session filter below looks a second back: keep push-1's sessions out of it
        let pushed = Date()
        try fleet.upstream.push(add: [.init("gamma", "1.0", sizeKB: 4096)], remove: ["beta-1.0-1.noarch.rpm"], token: "push-2")
        let second = fleet.waitUntil(seconds: 150) { fleet.allInSync("push-2", among: fleet.names) }
        #expect(second, "\(fleet.names.map { "\($0): \(fleet.view($0))" })\n\(fleet.logs())")
        for name in fleet.names {
            #expect(TreeComparison.differences(fleet.upstream.tree, fleet.mirror(name)) == [], "\(name)")
        }
        let runs = try fleet.runs()
        let synced = runs.filter { $0.token == "push-2" && $0.outcome == "synced" }
        #expect(Set(synced.map(\.node)) == Set(fleet.names), "\(synced.map { "\($0.node)←\($0.source)" })")
        let fromPeers = synced.filter { $0.source != "upstream" }
        #expect(fromPeers.count >= 4, "only \(fromPeers.count) of 8 pulled push-2 from a peer: \(synced.map { "\($0.node)←\($0.source)" })")
        // Every peer pull named a member that already held push-2 when it started.
        for run in fromPeers {
            let source = synced.first { $0.node == run.source }
            #expect(source.map { $0.finished <= run.started } == true, "\(run.node) pulled from \(run.source) before it had push-2")
        }
        // status shows the plan: its token and digest, agreed, and each member's slot position.
        let status = fleet.status("m0") ?? [:]
        let plan = status["plan"] as? [String: Any] ?? [:]
        #expect(plan["token"] as? String == "push-2" && (plan["digest"] as? String)?.count == 16, "\(plan)")
        #expect(plan["agreed"] as? Bool == true, "\(plan)")
        let positions = (status["members"] as? [[String: Any]] ?? []).compactMap { $0["position"] as? Int }
        #expect(positions.sorted() == Array(1...8), "\(positions)")

        // What upstream saw: its own log, and the agents' histories (millisecond stamps) as a second witness.
        let upstreamRuns = runs.filter { $0.source == "upstream" && $0.started >= pushed }
        #expect(peakOverlap(upstreamRuns.map { ($0.started, $0.finished) }) <= 2, "\(upstreamRuns.map { "\($0.node) \($0.started)–\($0.finished)" })")
        let log = try fleet.upstream.sessions()
        let pulls = log.sessions.filter { $0.isTreePull && $0.started >= pushed.addingTimeInterval(-1) }
        let peak = peakOverlap(pulls.map { ($0.started, $0.ended) })
        let described = pulls.map { "[\($0.pid)] \($0.request) \($0.started.timeIntervalSince(pushed))…\($0.ended.timeIntervalSince(pushed))" }
        #expect(peak >= 1 && peak <= 2, "the daemon served \(peak) tree pulls at once: \(described)")
        #expect(pulls.contains { $0.ended.timeIntervalSince($0.started) >= 2 }, "no pull lasted long enough for the log to show overlaps: \(described)")
        let refused = log.refused.filter { $0 >= pushed.addingTimeInterval(-1) }
        print("daemon max connections \(daemonMaxConnections): \(pulls.count) tree sessions, peak \(peak), \(refused.count) refusals, "
              + "\(fromPeers.count) of 8 from peers")
        if daemonMaxConnections == 2 {
            // Token fetches can still meet a full daemon (the fleet does not count them): at most one per member
            // confirming the new token while the two upstream pulls hold both connections, plus the odd poll racing a
            // pull's start. The pulls themselves wait for the plan's slots. "Few": at most 2.5 per mirror (15–28
            // before members stopped fetching all at once). Since members advertise only a confirmed or attested
            // target, more of them take push-2 from peers (4 upstream tree sessions instead of 6 in paired runs) and
            // a few more token fetches meet the full daemon: 5–6 on an idle machine, 9–10 beside a CPU-bound
            // simulator (6–7 before that change), 14–16 in loaded full-suite runs.
            let polls = fleet.agents.mapValues { $0.stderr.components(separatedBy: "cannot read the upstream token").count - 1 }.filter { $0.value > 0 }
            let busyRuns = runs.filter { $0.outcome == "busy" && $0.started >= pushed }.map { "\($0.node)←\($0.source)" }
            #expect(refused.count * 2 <= fleet.names.count * 5, "\(refused.count) refusals after the push; refused polls by agent \(polls), busy pulls \(busyRuns)")
        } else {
            #expect(refused.isEmpty)
        }
    }

    /// A directory with one 4 MB file, for a module of upstream's daemon whose one connection slot ``hold(_:_:)`` keeps.
    static func heldDirectory() throws -> TestDirectory {
        let held = try TestDirectory("held")
        try Data(count: 4 << 20).write(to: URL(fileURLWithPath: held.sub("big")))
        return held
    }

    /// Takes the `held` module's one connection slot with a slow client for as long as the returned process runs, so
    /// every fetch from that module ends in "@ERROR: max connections" (exit 5).
    static func hold(_ fleet: Fleet, _ held: TestDirectory) throws -> Process {
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        holder.arguments = ["rsync", "--bwlimit=1", "rsync://127.0.0.1:\(fleet.upstream.daemon.port)/held/big", held.sub("copy")]
        holder.standardOutput = FileHandle.nullDevice
        holder.standardError = FileHandle.nullDevice
        try holder.run()
        #expect(fleet.waitUntil(seconds: 10) {
            (try? String(contentsOfFile: fleet.upstream.daemon.logPath, encoding: .utf8))?.contains("rsync on held/big") == true
        }, "the holder never connected")
        return holder
    }

    @Test func withUpstreamBusyForAllButOneMirrorTheFleetStillConvergesThroughPeers() throws {
        // Upstream refuses everyone but m0: m1…m7 are pointed at a module of the same daemon whose one connection slot a
        // slow client holds for the whole test, so every fetch of theirs ends in "@ERROR: max connections" (exit 5).
        let held = try Self.heldDirectory()
        defer { held.remove() }
        let names = (0..<8).map { "m\($0)" }
        // Only m0 ever fetches from upstream, so only m0 can attest: the fleet runs with attestations = 1 (one member's
        // word), the setting that this situation needs; with the default of 2 the others wait for upstream.
        let fleet = try Fleet(size: 8, serving: true, upstreamSlots: 2,
                              extraModules: [.init(name: "held", path: held.path, maxConnections: 1)],
                              upstreamURLs: Dictionary(uniqueKeysWithValues: names.dropFirst().map { ($0, "rsync://UPSTREAM/held") }),
                              peersExtra: "attestations = 1")
        defer { fleet.stop(); fleet.dir.remove() }
        let holder = try Self.hold(fleet, held)
        defer { if holder.isRunning { holder.terminate(); holder.waitUntilExit() } }

        for name in fleet.names { try fleet.start(name) }
        let first = fleet.waitUntil(seconds: 120) { fleet.allInSync("push-1", among: fleet.names) }
        #expect(first, "\(fleet.names.map { "\($0): \(fleet.view($0))" })\n\(fleet.logs())")
        guard first else { return }
        try fleet.upstream.push(add: [.init("gamma", "1.0", sizeKB: 256)], token: "push-2")
        let second = fleet.waitUntil(seconds: 120) { fleet.allInSync("push-2", among: fleet.names) }
        #expect(second, "\(fleet.names.map { "\($0): \(fleet.view($0))" })\n\(fleet.logs())")
        for name in fleet.names {
            #expect(TreeComparison.differences(fleet.upstream.tree, fleet.mirror(name)) == [], "\(name)")
        }
        // The premise held: the held module refused the others' fetches all along.
        #expect(holder.isRunning, "the holder let go of the slot")
        #expect(try fleet.upstream.sessions().refused.count >= 7)
        // m0 took both pushes from upstream; everyone else took them from peers, on a token m0 attested.
        let synced = try fleet.runs().filter { $0.outcome == "synced" && ["push-1", "push-2"].contains($0.token) }
        let described = synced.map { "\($0.node) \($0.token)←\($0.source)" }
        #expect(synced.filter { $0.node == "m0" }.allSatisfy { $0.source == "upstream" }, "\(described)")
        for name in names.dropFirst() {
            let mine = synced.filter { $0.node == name }
            #expect(Set(mine.map(\.token)) == ["push-1", "push-2"], "\(name): \(described)")
            #expect(mine.allSatisfy { names.contains($0.source) }, "\(name) did not pull from a peer: \(described)")
            #expect(fleet.agents[name]!.stderr.contains("following a token that members attest"), "\(name)")
        }
    }

    @Test func killingAServingPeerMidTransferSendsItsPullersElsewhere() throws {
        // Pulls are slowed to ~400 KB/s so that one can be caught in flight.
        let fleet = try Fleet(size: 4, mirrorExtra: "rsync_args = [\"--bwlimit=400\"]", serving: true, upstreamSlots: 1)
        defer { fleet.stop(); fleet.dir.remove() }
        for name in fleet.names { try fleet.start(name) }
        #expect(fleet.waitUntil(seconds: 90) { fleet.allInSync("push-1", among: fleet.names) }, "\(fleet.logs())")
        try fleet.upstream.push(add: [.init("big", "1.0", sizeKB: 3072)], token: "push-2")

        // Wait until some member pulls push-2 from a peer, then take that peer's host down: agent and rsync daemon
        // (with the daemon's per-connection children), as a power cut would.
        var victim: String?
        let caught = fleet.waitUntil(seconds: 90) {
            for viewer in fleet.names {
                let members = fleet.status(viewer)?["members"] as? [[String: Any]] ?? []
                // A pull that has moved bytes: a member only planned onto a peer (or still checking its manifest) is
                // not yet mid-transfer, and on a loaded machine it may never take a byte from that peer.
                if let pulling = members.first(where: {
                    $0["state"] as? String == "syncing" && fleet.names.contains($0["source"] as? String ?? "") && ($0["progress"] as? Double ?? 0) > 0
                }) {
                    victim = pulling["source"] as? String
                    return true
                }
            }
            return false
        }
        #expect(caught, "no peer pull seen:\n\(fleet.logs())")
        guard caught, let victim else { return }
        fleet.agents[victim]!.killGroup()
        kill(-fleet.servers[victim]!.pid, SIGKILL)
        let survivors = fleet.names.filter { $0 != victim }
        let converged = fleet.waitUntil(seconds: 120) { fleet.allInSync("push-2", among: survivors) }
        #expect(converged, "\(survivors.map { "\($0): \(fleet.view($0))" })\n\(fleet.logs())")
        for name in survivors {
            #expect(TreeComparison.differences(fleet.upstream.tree, fleet.mirror(name)) == [], "\(name)")
        }
        // The interrupted pull shows as a failed run from the victim, followed by a synced one from elsewhere.
        let runs = try fleet.runs().filter { survivors.contains($0.node) && $0.token == "push-2" }
        let broken = runs.filter { $0.source == victim && $0.outcome != "synced" }
        #expect(!broken.isEmpty, "\(runs.map { "\($0.node)←\($0.source) \($0.outcome)" })")
        for run in broken {
            #expect(runs.contains { $0.node == run.node && $0.outcome == "synced" && $0.source != victim && $0.started >= run.finished },
                    "\(run.node) did not finish from another source")
        }
    }

    @Test func aTamperedPeerIsRejectedAndAnotherSourceTaken() throws {
        // attestations = 1: m0's own (honest) attestation lets it serve; its disk then goes bad under it.
        let fleet = try Fleet(size: 3, mirrorExtra: "publish = \"snapshot\"", serving: true, upstreamSlots: 1, peersExtra: "attestations = 1")
        defer { fleet.stop(); fleet.dir.remove() }
        try fleet.start("m0")
        #expect(fleet.waitUntil(seconds: 60) { fleet.allInSync("push-1", among: ["m0"]) }, "\(fleet.logs())")
        try fleet.upstream.push(add: [.init("gamma", "1.0", sizeKB: 64)], token: "push-2")
        #expect(fleet.waitUntil(seconds: 60) { fleet.allInSync("push-2", among: ["m0"]) }, "\(fleet.logs())")

        // m0's copy of gamma goes bad on disk, same size and mtime: only a checksum can tell.
        try Self.corruptKeepingSizeAndMtime(realPath(fleet.mirror("m0")) + "/Packages/gamma-1.0-1.noarch.rpm")

        // Two new mirrors join; m0 is the only one in sync, so the plan sends both to it first.
        try fleet.start("m1")
        try fleet.start("m2")
        let converged = fleet.waitUntil(seconds: 120) { fleet.allInSync("push-2", among: fleet.names) }
        #expect(converged, "\(fleet.names.map { "\($0): \(fleet.view($0))" })\n\(fleet.logs())")
        for name in ["m1", "m2"] {
            #expect(TreeComparison.differences(fleet.upstream.tree, realPath(fleet.mirror(name))) == [], "\(name) holds a bad tree")
        }
        let runs = try fleet.runs().filter { $0.node != "m0" }
        let rejected = runs.filter { $0.source == "m0" && $0.outcome == "verify-failed" }
        #expect(!rejected.isEmpty, "nobody pulled from m0 and caught it: \(runs.map { "\($0.node)←\($0.source) \($0.outcome)" })")
        let published = runs.filter { $0.outcome == "synced" }
        #expect(published.allSatisfy { $0.source != "m0" }, "a tree from m0 was published: \(published.map { "\($0.node)←\($0.source)" })")
    }

    @Test func syncFromANamedPeerIsPinnedVerifiedAndExplainsWhatItRefuses() throws {
        // Two members that have met: each stored the other's signed record (its rsync URL and what it attests).
        // Snapshot mode, so that a rejected pull provably leaves the served tree as it was. attestations = 1: with two
        // members, the peer's own attestation is all there can be.
        let fleet = try Fleet(size: 2, mirrorExtra: "publish = \"snapshot\"", serving: true, upstreamSlots: 2, peersExtra: "attestations = 1")
        defer { fleet.stop(); fleet.dir.remove() }
        for name in fleet.names { try fleet.start(name) }
        #expect(fleet.waitUntil(seconds: 60) { fleet.allInSync("push-1", among: fleet.names) }, "\(fleet.logs())")
        // Both pulled push-1 from upstream (two slots), and each has stored the other's attestation of it.
        #expect(fleet.waitUntil(seconds: 20) { (fleet.status("m1")?["members"] as? [[String: Any]])?.count == 2 })
        usleep(1_500_000)
        for name in fleet.names { fleet.agents[name]!.killGroup() }

        // m1 pulls push-1 again, from m0 by name, with no agent running.
        let pulled = try CLI.dmirr(["sync", "-c", fleet.configPath("m1"), "--source", "m0", "--force"])
        #expect(pulled.exitCode == 0, "\(pulled.stderr)")
        #expect(TreeComparison.differences(fleet.upstream.tree, realPath(fleet.mirror("m1"))) == [])
        let fromPeer = try fleet.runs().filter { $0.node == "m1" && $0.source == "m0" }
        #expect(fromPeer.map(\.outcome) == ["synced"], "\(fromPeer.map { "\($0.source) \($0.outcome)" })")

        // Names it cannot use: each refused with the reason, exit 2, and nothing pulled.
        let unknown = try CLI.dmirr(["sync", "-c", fleet.configPath("m1"), "--source", "m7"])
        #expect(unknown.exitCode == 2)
        #expect(unknown.stderr.contains("--source m7: no record of that member in") && unknown.stderr.contains("members known: m0"),
                "\(unknown.stderr)")
        let itself = try CLI.dmirr(["sync", "-c", fleet.configPath("m1"), "--source", "m1"])
        #expect(itself.exitCode == 2 && itself.stderr.contains("that is this mirror"), "\(itself.stderr)")

        // m0 takes push-2 from upstream on its own; m1's records know of no attestation of push-2, so m1 does not take
        // it from m0 on m0's word alone (the stored record still attests push-1).
        try fleet.upstream.push(add: [.init("gamma", "1.0", sizeKB: 64)], token: "push-2")
        #expect(try CLI.dmirr(["sync", "-c", fleet.configPath("m0")]).exitCode == 0)
        let unattested = try CLI.dmirr(["sync", "-c", fleet.configPath("m1"), "--source", "m0"])
        #expect(unattested.exitCode == 1 && unattested.stderr.contains("no manifest of push-2 is attested"), "\(unattested.stderr)")
        #expect(try String(contentsOfFile: fleet.mirror("m1") + "/CURRENT", encoding: .utf8) == "push-1\n")

        // Upstream's token goes back to push-1: m0 refuses to follow it from the command line too, unless told to.
        try fleet.upstream.setToken("push-1")
        let rollback = try CLI.dmirr(["sync", "-c", fleet.configPath("m0")])
        #expect(rollback.exitCode == 1 && rollback.stderr.contains("refusing to go back"), "\(rollback.stderr)")
        #expect(try String(contentsOfFile: fleet.mirror("m0") + "/CURRENT", encoding: .utf8) == "push-2\n")
        let allowed = try CLI.dmirr(["sync", "-c", fleet.configPath("m0"), "--allow-rollback"])
        #expect(allowed.exitCode == 0, "\(allowed.stderr)")
        #expect(try String(contentsOfFile: fleet.mirror("m0") + "/CURRENT", encoding: .utf8) == "push-1\n")
    }

    @Test func anAnnouncedPushSpreadsWithoutWaitingForThePoll() throws {
        // Agents poll upstream once at start and then only hourly: without the announcement push-2 would wait.
        let fleet = try Fleet(size: 3, serving: true, poll: "1h")
        defer { fleet.stop(); fleet.dir.remove() }
        for name in fleet.names { try fleet.start(name) }
        #expect(fleet.waitUntil(seconds: 60) { fleet.allInSync("push-1", among: fleet.names) }, "\(fleet.logs())")
        try fleet.upstream.push(add: [.init("gamma", "1.0")], token: "push-2")
        sleep(3)
        #expect(fleet.status("m0").flatMap { ($0["target"] as? [String: Any])?["token"] as? String } == "push-1", "polled anyway")

        // An upstream operator's small config: an operator certificate and one agent to tell.
        let op = try CLI.dmirr(["cert", "issue", "--ca", fleet.dir.sub("ca"), "--node", "upstream-ops", "--operator", "--out", fleet.dir.sub("ops")])
        #expect(op.exitCode == 0)
        let announceConfig = fleet.dir.sub("announce.toml")
        try """
            node = "upstream-ops"
            fleet = "test"
            [tls]
            ca = "\(fleet.dir.sub("ca/ca.pem"))"
            cert = "\(fleet.dir.sub("ops/upstream-ops.pem"))"
            key = "\(fleet.dir.sub("ops/upstream-ops.key"))"
            [peers]
            seeds = ["127.0.0.1:\(fleet.ports["m0"]!)"]
            """.write(toFile: announceConfig, atomically: true, encoding: .utf8)
        let told = try CLI.dmirr(["announce", "-c", announceConfig, "--token", "push-2"])
        #expect(told.exitCode == 0, "\(told.stderr)")
        #expect(told.stdout.contains("told m0"), "\(told.stdout)")
        #expect(fleet.waitUntil(seconds: 30) { fleet.allInSync("push-2", among: fleet.names) }, "\(fleet.logs())")
        #expect(fleet.agents["m0"]!.stderr.contains("a push was announced"))

        // Nobody to tell: exit 1, naming the seed. No seeds at all: exit 2, naming the key.
        let closed = try FreePort.pick()
        try String(contentsOfFile: announceConfig, encoding: .utf8).replacingOccurrences(of: "\(fleet.ports["m0"]!)", with: "\(closed)")
            .write(toFile: announceConfig, atomically: true, encoding: .utf8)
        let nobody = try CLI.dmirr(["announce", "-c", announceConfig])
        #expect(nobody.exitCode == 1 && nobody.stderr.contains("127.0.0.1:\(closed)"), "\(nobody.stderr)")
        try "node = \"upstream-ops\"\nfleet = \"test\"\n[tls]\nca = \"/x/ca.pem\"\ncert = \"/x/c.pem\"\nkey = \"/x/c.key\"\n"
            .write(toFile: announceConfig, atomically: true, encoding: .utf8)
        let noSeeds = try CLI.dmirr(["announce", "-c", announceConfig])
        #expect(noSeeds.exitCode == 2 && noSeeds.stderr.contains("peers.seeds"), "\(noSeeds.stderr)")
    }

    @Test func sigtermDuringAnRsyncLeavesTheTokenAndTheNextStartFinishes() throws {
        let fleet = try Fleet(size: 1, mirrorExtra: "rsync_args = [\"--bwlimit=300\"]")
        defer { fleet.stop(); fleet.dir.remove() }
        try fleet.start("m0")
        #expect(fleet.waitUntil(seconds: 30) { fleet.allInSync("push-1", among: ["m0"]) }, "\(fleet.logs())")
        try fleet.upstream.push(add: [.init("big", "1.0", sizeKB: 3072)], token: "push-2")
        #expect(fleet.waitUntil(seconds: 20) { fleet.view("m0")["m0"]?.state == "syncing" }, "\(fleet.view("m0"))")
        usleep(500_000)
        let agent = fleet.agents["m0"]!
        kill(agent.pid, SIGTERM)
        #expect(agent.waitForExit(seconds: 10) == 0, "\(agent.stderr.suffix(2000))")
        let token = try String(contentsOfFile: fleet.mirror("m0") + "/CURRENT", encoding: .utf8)
        #expect(token == "push-1\n")
        try fleet.start("m0")
        #expect(fleet.waitUntil(seconds: 60) { fleet.allInSync("push-2", among: ["m0"]) }, "\(fleet.logs())")
        #expect(TreeComparison.differences(fleet.upstream.tree, fleet.mirror("m0")) == [])
    }

    @Test func aForgedRecordIsDroppedAndLogged() async throws {
        let fleet = try Fleet(size: 2)
        defer { fleet.stop(); fleet.dir.remove() }
        for name in fleet.names { try fleet.start(name) }
        #expect(fleet.waitUntil(seconds: 30) { fleet.allInSync("push-1", among: fleet.names) })

        // The control socket was created 0600 (bound in a private directory, then renamed into place), and the
        // private directory is gone.
        var st = stat()
        #expect(lstat(fleet.dir.sub("state-m0/control.sock"), &st) == 0 && (st.st_mode & S_IFMT) == S_IFSOCK && (st.st_mode & 0o777) == 0o600)
        #expect(try FileManager.default.contentsOfDirectory(atPath: fleet.dir.sub("state-m0")).filter { $0.hasPrefix(".dmirr-control-") } == [])

        // m9 is a genuine fleet member, but it relays a record for m1 that it wrote and signed itself.
        let (tls, signer) = try fleet.member("m9")
        var forged = MemberRecord(node: "m1", generation: UInt64.max / 2)
        forged.publishedToken = "forged"
        forged.syncState = .inSync
        let signedForgery = try signer.sign(forged)
        try await PeerClient.connect(host: "127.0.0.1", port: fleet.ports["m0"]!, tls: tls) { session, _ in
            var envelope = WireEnvelope()
            envelope.records = .with { $0.records = [signedForgery] }
            try await session.send(envelope)
            try await Task.sleep(for: .seconds(1))
        }
        try await Task.sleep(for: .seconds(1))
        #expect(fleet.view("m0")["m1"]?.token == "push-1")
        #expect(fleet.view("m1")["m1"]?.token == "push-1")

        // m9 sends 2,000 records of its own in one message: each would cost m0 a signature check on its actor. m0
        // refuses the message whole, says why, and closes the connection.
        var flood = MemberRecord(node: "m9", generation: 1)
        flood.expiresMillis = Int64(Date().timeIntervalSince1970 * 1000) + 60_000
        // The certificate once, as the protocol allows, so that the message fits one frame.
        let floodRecords: [WireSignedRecord] = try (0..<2_000).map { heartbeat in
            flood.heartbeat = UInt64(heartbeat)
            var signed = try signer.sign(flood)
            if heartbeat > 0 { signed.authorCertificate = Data() }
            return signed
        }
        let refusal = ManagedFlag()
        try await PeerClient.connect(host: "127.0.0.1", port: fleet.ports["m0"]!, tls: tls) { session, messages in
            var envelope = WireEnvelope()
            envelope.records = .with { $0.records = floodRecords }
            try await session.send(envelope)
            for try await message in messages {
                if case .error(let e) = message.body, e.code == .malformed, e.message.contains("2000 records in one message") { refusal.set() }
            }
        }
        #expect(refusal.value, "no MALFORMED error frame for 2,000 records")
        #expect(fleet.agents["m0"]!.stderr.contains("closed a peer that sent too many records at once"))
        #expect(fleet.view("m0")["m9"] == nil, "a record of the flood was kept")
        let log = fleet.agents["m0"]!.stderr
        #expect(log.contains("dropped a member record relayed by a peer"), "\(log.suffix(2000))")
        #expect(log.contains("dmirr://test/node/m9"))
        #expect(log.contains("record for 'm1' carries the certificate of 'm9'"))
    }

    /// The CA revokes m3 and the new list is dropped on m0 alone (its `[tls] crl`). Every other member learns it from
    /// the fleet, closes its link to m3, forgets m3's record and refuses m3's handshakes from then on.
    @Test func aRevokedMemberIsCutOffFleetWideOnceTheListReachesOneAgent() throws {
        let fleet = try Fleet(size: 4)
        defer { fleet.stop(); fleet.dir.remove() }
        let crl = fleet.dir.sub("m0-crl.pem")
        // The file does not exist yet: the agent starts and watches for it.
        fleet.tlsExtra["m0"] = "crl = \"\(crl)\""
        try fleet.config("m0", seeds: ["127.0.0.1:\(fleet.ports["m3"]!)"]).write(toFile: fleet.configPath("m0"), atomically: true, encoding: .utf8)
        for name in fleet.names { try fleet.start(name) }
        #expect(fleet.waitUntil(seconds: 30) { fleet.allInSync("push-1", among: fleet.names) }, "\(fleet.logs())")
        let honest = ["m0", "m1", "m2"]
        #expect(honest.allSatisfy { fleet.view($0)["m3"] != nil })

        let revoke = try CLI.dmirr(["cert", "revoke", "--ca", fleet.dir.sub("ca"), "m3", "--out", crl])
        #expect(revoke.exitCode == 0, "\(revoke.stderr)")
        #expect(revoke.stdout.contains("revocation list 1 of fleet test, 1 revocation(s)"), "\(revoke.stdout)")
        let written = Date()
        // The bound: m0 reads the file within a gossip round (200 ms here) and passes the list to its links at once;
        // each hop costs one message. 10 s leaves room for a loaded CI machine.
        let cutOff = fleet.waitUntil(seconds: 10) { honest.allSatisfy { fleet.view($0)["m3"] == nil } }
        let took = Date().timeIntervalSince(written)
        #expect(cutOff, "m3 still known: \(honest.map { "\($0): \(fleet.view($0).keys.sorted())" })\n\(fleet.logs())")
        print("aRevokedMemberIsCutOffFleetWideOnceTheListReachesOneAgent: m3 forgotten by every honest member \(String(format: "%.1f", took)) s after the list was written")

        // m3 keeps dialing for a while: it stays out, and the honest members stay in sync with each other.
        usleep(3_000_000)
        for name in honest {
            let view = fleet.view(name)
            #expect(view["m3"] == nil, "\(name) took m3 back")
            #expect(honest.allSatisfy { view[$0]?.state == "in_sync" }, "\(name): \(view)")
        }
        let logs = honest.map { fleet.agents[$0]!.stderr }
        #expect(logs[0].contains("a revocation list is in force") && logs[0].contains(crl))
        #expect(logs[1].contains("a revocation list is in force") && logs[2].contains("a revocation list is in force"))
        #expect(logs.contains { $0.contains("certificate revoked by the fleet CA") || $0.contains("closing the link to a revoked member") })
        #expect(fleet.agents["m3"]!.stderr.contains("revoked"), "\(fleet.agents["m3"]!.stderr.suffix(2000))")

        // A restarted honest member keeps refusing m3 from its stored list, before anyone tells it again.
        fleet.agents["m1"]!.killGroup()
        try fleet.start("m1")
        #expect(fleet.waitUntil(seconds: 15) { fleet.view("m1")["m0"]?.state == "in_sync" })
        usleep(2_000_000)
        #expect(fleet.view("m1")["m3"] == nil)

        // A list signed by anything but the CA is refused, named, and the list in force stays.
        try "-----BEGIN DMIRR REVOCATION LIST-----\nAAAA\n-----END DMIRR REVOCATION LIST-----\n".write(toFile: crl, atomically: true, encoding: .utf8)
        #expect(fleet.waitUntil(seconds: 5) { fleet.agents["m0"]!.stderr.contains("kept the revocation list in force") })
        #expect(fleet.view("m0")["m3"] == nil)
    }

    /// A member with a valid certificate lies over the real wire: a record with oversized strings, a record with a
    /// fake target token stamped 59 s ahead and a suspicion of a healthy member at `UInt64.max`, and digests naming
    /// 100,000 members nobody knows. Meanwhile a sampler measures how m1 sees m0 and m2, how fast m0 answers its
    /// operator, and m0's memory. The honest members' view, target and pace do not change; m0 names the liar.
    @Test func aLyingMemberOverTheWireCostsTheHonestOnesNothing() async throws {
        let fleet = try Fleet(size: 3)
        defer { fleet.stop(); fleet.dir.remove() }
        for name in fleet.names { try fleet.start(name) }
        #expect(fleet.waitUntil(seconds: 30) { fleet.allInSync("push-1", among: fleet.names) }, "\(fleet.logs())")
        let (tls, signer) = try fleet.member("m9")
        let m0 = fleet.agents["m0"]!.process.processIdentifier
        func rssKB() -> Int {
            let status = (try? String(contentsOfFile: "/proc/\(m0)/status", encoding: .utf8)) ?? ""
            let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
            return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
        }
        let rssBefore = rssKB()
        let m2Version = fleet.status("m0").flatMap { ($0["members"] as? [[String: Any]])?.first { $0["node"] as? String == "m2" } }

        let observer = Task.detached { () -> (states: [String], slowest: Double, samples: Int) in
            var states: [String] = []
            var slowest = 0.0
            var samples = 0
            let end = Date().addingTimeInterval(12)
            while Date() < end {
                let started = Date()
                let answered = fleet.status("m0") != nil
                slowest = max(slowest, answered ? Date().timeIntervalSince(started) : 10)
                let view = fleet.view("m1")
                states.append(view["m0"]?.state ?? "unknown")
                states.append(view["m2"]?.state ?? "unknown")
                samples += 1
                usleep(250_000)
            }
            return (states, slowest, samples)
        }
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        var oversized = MemberRecord(node: "m9", generation: 1)
        oversized.publishedToken = String(repeating: "x", count: 100_000)
        oversized.lastError = String(repeating: "e", count: 200_000)
        oversized.expiresMillis = now + 60_000
        var liar = MemberRecord(node: "m9", generation: 2)
        liar.targetToken = "push-from-nowhere"
        liar.targetSeenMillis = now + 59_000
        liar.suspects = [Suspicion(node: "m2", version: RecordVersion(generation: .max, heartbeat: .max))]
        liar.expiresMillis = now + 60_000
        let records = [try signer.sign(oversized), try signer.sign(liar)]
        do {
            try await PeerClient.connect(host: "127.0.0.1", port: fleet.ports["m0"]!, tls: tls) { session, _ in
                for signed in records {
                    var envelope = WireEnvelope()
                    envelope.records = .with { $0.records = [signed] }
                    try await session.send(envelope)
                }
                for batch in 0..<5 {
                    var digest = WireEnvelope()
                    digest.digest = .with { d in
                        d.entries = (0..<20_000).map { i in .with { $0.node = "ghost-\(batch)-\(i)"; $0.generation = 1; $0.heartbeat = 1 } }
                    }
                    try await session.send(digest)
                }
                try await Task.sleep(for: .seconds(4))
            }
        } catch {
            print("aLyingMemberOverTheWireCostsTheHonestOnesNothing: m0 closed the liar's link: \(error)")
        }
        let (states, slowest, samples) = await observer.value
        // Every sample: alive, and still in sync (not waiting on, nor pulling, the fake token).
        let bad = states.filter { $0 != "in_sync" }
        #expect(bad.isEmpty, "m1 saw \(bad.count) of \(states.count) samples not in sync: \(bad)\n\(fleet.logs())")
        #expect(samples >= 20, "only \(samples) samples in 12 s")
        #expect(slowest < 2, "m0 took \(slowest) s to answer dmirr status")
        // The fake target moved nobody, and no ghost became a member.
        for name in fleet.names {
            #expect((fleet.status(name)?["target"] as? [String: Any])?["token"] as? String == "push-1", "\(name)")
            let view = fleet.view(name)
            #expect(!view.keys.contains { $0.hasPrefix("ghost-") }, "\(name) took a ghost")
            #expect(view["m9"]?.token != String(repeating: "x", count: 100_000))
        }
        #expect(fleet.allInSync("push-1", among: fleet.names))
        let log = fleet.agents["m0"]!.stderr
        #expect(log.contains("dropped a member record that breaks the protocol's limits") && log.contains("record.node=m9"), "\(log.suffix(3000))")
        #expect(log.contains("ignored a claim a member cannot make") && log.contains("member.node=m9"), "\(log.suffix(3000))")
        let rssAfter = rssKB()
        print("aLyingMemberOverTheWireCostsTheHonestOnesNothing: \(samples) samples, \(bad.count) not in sync; slowest status answer from m0 \(String(format: "%.2f", slowest)) s; m0 RSS \(rssBefore / 1024) → \(rssAfter / 1024) MiB; m2 before: \(m2Version.map { "\($0["state"] ?? "?")" } ?? "?")")
        #expect(rssAfter - rssBefore < 64 * 1024, "m0 grew by \((rssAfter - rssBefore) / 1024) MiB")
    }

    /// systemd's notification protocol, with a datagram socket standing in for systemd (what `Type=notify` and
    /// `WatchdogSec=` make it do): READY=1 once the agent listens, STATUS= lines, WATCHDOG=1 every half of
    /// WATCHDOG_USEC, STOPPING=1 on SIGTERM.
    @Test func theAgentTellsSystemdWhenItIsReadyAliveAndStopping() throws {
        let fleet = try Fleet(size: 2)
        defer { fleet.stop(); fleet.dir.remove() }
        let socketPath = fleet.dir.sub("notify.sock")
        let notify = try NotifySocket(path: socketPath)
        func receive(for seconds: Double) -> [String] { notify.receive(for: seconds) }
        try fleet.start("m0", environment: ["NOTIFY_SOCKET": socketPath, "WATCHDOG_USEC": "1000000"])
        try fleet.start("m1")
        var messages = receive(for: 5)
        var all = messages
        #expect(messages.first?.hasPrefix("READY=1\nSTATUS=target ") == true, "\(messages)\n\(fleet.logs())")
        #expect(fleet.waitUntil(seconds: 30) { fleet.allInSync("push-1", among: fleet.names) })
        messages = receive(for: 3)
        all += messages
        let keepalives = messages.filter { $0 == "WATCHDOG=1" }.count
        #expect(keepalives >= 4 && keepalives <= 8, "\(keepalives) keep-alives in 3 s at WATCHDOG_USEC = 1 s: \(messages)")
        // The status line follows the mirror: the target and its state.
        let statuses = all.filter { $0.hasPrefix("STATUS=") }
        #expect(statuses.contains { $0.hasPrefix("STATUS=target push-1; in sync; 2 live member(s)") }, "\(all)")
        print("theAgentTellsSystemdWhenItIsReadyAliveAndStopping: \(keepalives) keep-alives in 3 s; status lines \(statuses)")
        fleet.agents["m0"]!.process.terminate()
        messages = receive(for: 3)
        #expect(messages.contains("STOPPING=1"), "\(messages)")
        let log = fleet.agents["m0"]!.stderr
        #expect(!log.contains("systemd notification failed"), "\(log.suffix(2000))")
    }

    /// The agent needs no privileges: run as `nobody`, owning only its tree, its state and its key, it joins the fleet
    /// and syncs (what the unit's `User=dmirr` and `ProtectSystem=strict` give it in production).
    @Test func theAgentRunsAsAnUnprivilegedUser() throws {
        let fleet = try Fleet(size: 2)
        defer { fleet.stop(); fleet.dir.remove() }
        let nobody: uid_t = 65534
        for path in [fleet.mirror("m0"), fleet.dir.sub("state-m0")] {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            #expect(chown(path, nobody, gid_t(nobody)) == 0)
        }
        #expect(chown(fleet.dir.sub("certs/m0.key"), nobody, gid_t(nobody)) == 0)
        try fleet.start("m0", wrapper: ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        try fleet.start("m1")
        #expect(fleet.waitUntil(seconds: 60) { fleet.allInSync("push-1", among: fleet.names) }, "\(fleet.logs())")
        let pid = fleet.agents["m0"]!.process.processIdentifier
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        let uids = status.split(separator: "\n").first { $0.hasPrefix("Uid:") }.map { $0.split(separator: "\t").dropFirst().map(String.init) } ?? []
        #expect(uids == ["65534", "65534", "65534", "65534"], "m0 runs with uids \(uids)")
        var st = stat()
        #expect(stat(fleet.mirror("m0") + "/CURRENT", &st) == 0 && st.st_uid == nobody, "the published tree belongs to the agent's user")
        #expect(TreeComparison.differences(fleet.upstream.tree, fleet.mirror("m0")) == [])
    }

    /// `dmirr sync` beside a running agent asks the agent and follows its work, instead of fighting it for the lock:
    /// a plain request, `--force` (a re-check from upstream) and `--source NODE`. The agents poll upstream only every
    /// hour here, so only the request makes m0 see push-2.
    @Test func dmirrSyncBesideARunningAgentAsksItAndFollowsItsWork() throws {
        let fleet = try Fleet(size: 2, mirrorExtra: "rsync_args = [\"--bwlimit=1000\"]", serving: true, poll: "1h")
        defer { fleet.stop(); fleet.dir.remove() }
        for name in fleet.names { try fleet.start(name) }
        // With nothing new, it answers once the agent's own fetch says so.
        let first = fleet.waitUntil(seconds: 60) { fleet.allInSync("push-1", among: fleet.names) }
        #expect(first, "\(fleet.logs())")
        let upToDate = try CLI.dmirr(["sync", "-c", fleet.configPath("m0")], timeout: 60)
        #expect(upToDate.exitCode == 0 && upToDate.stdout.contains("published push-1"), "\(upToDate.stdout)\(upToDate.stderr)")

        try fleet.upstream.push(add: [.init("gamma", "1.0", sizeKB: 3072)], token: "push-2")
        // A short --timeout: the pull takes seconds at 1 MB/s, so this one gives up with 75 while the agent carries on.
        let impatient = try CLI.dmirr(["sync", "-c", fleet.configPath("m0"), "--timeout", "500ms"], timeout: 60)
        #expect(impatient.exitCode == 75 && impatient.stderr.contains("the agent carries on"), "\(impatient.exitCode) \(impatient.stdout)\(impatient.stderr)")
        let followed = try CLI.dmirr(["sync", "-c", fleet.configPath("m0"), "--timeout", "2m"], timeout: 180)
        #expect(followed.exitCode == 0, "\(followed.stdout)\(followed.stderr)\n\(fleet.logs())")
        #expect(followed.stdout.contains("asked the running agent (m0)") && followed.stdout.contains("published push-2"), "\(followed.stdout)")
        #expect(try String(contentsOfFile: fleet.mirror("m0") + "/CURRENT", encoding: .utf8) == "push-2\n")
        #expect(fleet.agents["m0"]!.process.isRunning, "the agent stopped")
        print("dmirrSyncBesideARunningAgentAsksItAndFollowsItsWork:\n\(followed.stdout)")
        // Going back in time is not taken through the agent: refused with the reason, nothing run behind its back.
        let rollback = try CLI.dmirr(["sync", "-c", fleet.configPath("m0"), "--allow-rollback"], timeout: 60)
        #expect(rollback.exitCode == 2 && rollback.stderr.contains("an agent runs this mirror"), "\(rollback.stderr)")

        /// m0's recorded runs, newest first: (source, outcome).
        func runs() throws -> [(String, String)] {
            let out = try CLI.dmirr(["history", "--json", "-c", fleet.configPath("m0")]).stdout
            let rows = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]] ?? []
            return rows.map { ($0["source"] as? String ?? "?", $0["outcome"] as? String ?? "?") }
        }
        let before = try runs().count
        // --force: the agent re-checks the whole tree against upstream now, though it holds upstream's token.
        let forced = try CLI.dmirr(["sync", "-c", fleet.configPath("m0"), "--force", "--timeout", "2m"], timeout: 180)
        #expect(forced.exitCode == 0 && forced.stdout.contains("published push-2"), "\(forced.stdout)\(forced.stderr)")
        var after = try runs()
        #expect(after.count == before + 1 && after.first?.0 == "upstream" && after.first?.1 == "synced", "\(after)")
        // --source m1: once both attest push-2 (each pulled it from upstream), m0 pulls it again from m1, checked
        // against that attested manifest.
        #expect(fleet.waitUntil(seconds: 120) { fleet.allInSync("push-2", among: fleet.names) }, "\(fleet.logs())")
        let fromPeer = try CLI.dmirr(["sync", "-c", fleet.configPath("m0"), "--source", "m1", "--force", "--timeout", "2m"], timeout: 180)
        #expect(fromPeer.exitCode == 0 && fromPeer.stdout.contains("to pull from m1 now"), "\(fromPeer.stdout)\(fromPeer.stderr)\n\(fleet.logs())")
        after = try runs()
        #expect(after.first?.0 == "m1" && after.first?.1 == "synced", "\(after)")
        #expect(TreeComparison.differences(fleet.upstream.tree, fleet.mirror("m0")) == [])
        // A member the agent does not know: refused with the reason and the members it knows.
        let unknown = try CLI.dmirr(["sync", "-c", fleet.configPath("m0"), "--source", "m7"], timeout: 60)
        #expect(unknown.exitCode == 2 && unknown.stderr.contains("no such member is known") && unknown.stderr.contains("m1"), "\(unknown.stderr)")
        #expect(fleet.agents["m0"]!.process.isRunning, "the agent stopped")
    }

    @Test func aMemberThatStopsReadingCostsOnlyItsOwnLink() async throws {
        // Before, the victim's actor awaited each socket write: a peer that asked for thousands of status answers and
        // never read them stalled the victim's gossip, and the others saw it suspect, then down, within seconds.
        let fleet = try Fleet(size: 3)
        defer { fleet.stop(); fleet.dir.remove() }
        for name in fleet.names { try fleet.start(name) }
        #expect(fleet.waitUntil(seconds: 30) { fleet.allInSync("push-1", among: fleet.names) }, "\(fleet.logs())")

        let tls = try fleet.member("m9").tls

        // While m9 floods m0 and stops reading, sample how m1 sees m0 and how long m0 takes to answer its operator.
        let observer = Task.detached { () -> (states: [String], slowest: Double) in
            var states: [String] = []
            var slowest = 0.0
            let end = Date().addingTimeInterval(20)
            while Date() < end {
                let started = Date()
                let answered = fleet.status("m0") != nil
                slowest = max(slowest, answered ? Date().timeIntervalSince(started) : 10)
                states.append(fleet.view("m1")["m0"]?.state ?? "unknown")
                usleep(250_000)
            }
            return (states, slowest)
        }
        // m0 closing the link under us is its defence, not a failure of the test.
        do { try await PeerClient.connect(host: "127.0.0.1", port: fleet.ports["m0"]!, tls: tls) { session, _ in
            var request = WireEnvelope()
            request.statusRequest = .init()
            // Summaries between the requests and every 500 ms after them keep m9 "heard" on the link, so m0's
            // silent-link rule does not end the attack: only its outbound queue can. m0 may close the link while we
            // still send (that is its defence), which ends our sending.
            var summary = WireEnvelope()
            summary.summary = .with { $0.buckets = 1; $0.hashes = [0]; $0.digestHash = 0 }
            do {
                for _ in 0..<40 {
                    for _ in 0..<1_000 { try await session.send(request) }
                    try await session.send(summary)
                }
                // Never read the answers: the TCP window fills and m0's writes to us stop completing.
                for _ in 0..<24 {
                    try await session.send(summary)
                    try await Task.sleep(for: .milliseconds(500))
                }
            } catch {
                print("aMemberThatStopsReadingCostsOnlyItsOwnLink: m0 closed the flooding link: \(error)")
                try await Task.sleep(for: .seconds(8))
            }
        } } catch {
            print("aMemberThatStopsReadingCostsOnlyItsOwnLink: the connection ended: \(error)")
            try await Task.sleep(for: .seconds(8))
        }
        let (states, slowest) = await observer.value
        let bad = states.filter { ["suspect", "down", "unknown"].contains($0) }
        #expect(bad.isEmpty, "m1 saw m0 \(bad.count) times of \(states.count) as \(Set(bad))\n\(fleet.logs())")
        #expect(slowest < 5, "m0 took \(slowest) s to answer dmirr status during the flood")
        let log = fleet.agents["m0"]!.stderr
        for line in log.split(separator: "\n") where line.contains("m9") { print("aMemberThatStopsReadingCostsOnlyItsOwnLink: m0: \(line.prefix(300))") }
        // m0 let go of the link: its outbound queue overflowed or stalled ("the peer does not read"), or, on a loaded
        // machine where m9's summaries queue behind its requests, its silent-link rule fired first. Either way only
        // that link paid.
        let cut = log.contains("the peer does not read") || log.contains("closing a silent peer link")
        #expect(cut && log.contains("m9"), "\(log.suffix(3000))")
        print("aMemberThatStopsReadingCostsOnlyItsOwnLink: \(states.count) samples of m1's view of m0, \(bad.count) not alive; slowest status answer from m0 \(String(format: "%.2f", slowest)) s")
    }

    /// A hostile member: it holds a valid fleet certificate and runs the real agent, but the "upstream" it pulled from
    /// served a trojaned tree (beta rebuilt by rpmbuild, metadata regenerated by createrepo_c, a swapped GPG key, a
    /// setuid file, a symlink to /etc), so it honestly attests a forged manifest root and serves that tree through its
    /// own rsync daemon. Everyone else finds upstream full (`max connections`).
    @Test(arguments: [2, 1]) func aHostileMemberCannotMakeHonestMirrorsPublishWhatUpstreamDidNotServe(attestations: Int) throws {
        let held = try Self.heldDirectory()
        defer { held.remove() }
        let evil = try TestDirectory("evil")
        defer { evil.remove() }
        try YumRepo.make(at: evil.path, packages: [.init("alpha", "1.0"), .init("beta", "1.0", sizeKB: 5)], token: "push-1")
        try "-----BEGIN PGP PUBLIC KEY BLOCK-----\nattacker\n".write(toFile: evil.sub("RPM-GPG-KEY-test"), atomically: false, encoding: .utf8)
        try "#!/bin/sh\n".write(toFile: evil.sub("helper"), atomically: false, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o4755], ofItemAtPath: evil.sub("helper"))
        try FileManager.default.createSymbolicLink(atPath: evil.sub("etc"), withDestinationPath: "/etc")

        let fleet = try Fleet(size: 4, serving: true, upstreamSlots: 2,
                              extraModules: [.init(name: "held", path: held.path, maxConnections: 1), .init(name: "evil", path: evil.path)],
                              upstreamURLs: ["m1": "rsync://UPSTREAM/held", "m2": "rsync://UPSTREAM/held", "m3": "rsync://UPSTREAM/evil"],
                              peersExtra: "attestations = \(attestations)")
        defer { fleet.stop(); fleet.dir.remove() }
        try "-----BEGIN PGP PUBLIC KEY BLOCK-----\nhonest\n".write(toFile: fleet.upstream.tree + "/RPM-GPG-KEY-test", atomically: false, encoding: .utf8)
        let holder = try Self.hold(fleet, held)
        defer { if holder.isRunning { holder.terminate(); holder.waitUntilExit() } }
        let victims = ["m1", "m2"]
        func published(_ name: String) -> String? { try? String(contentsOfFile: fleet.mirror(name) + "/CURRENT", encoding: .utf8) }
        func trojaned(_ name: String) -> Bool {
            (try? String(contentsOfFile: realPath(fleet.mirror(name)) + "/RPM-GPG-KEY-test", encoding: .utf8))?.contains("attacker") == true
        }

        // 1. The liar alone attests push-1 (the honest m0 is not running).
        for name in ["m3"] + victims { try fleet.start(name) }
        #expect(fleet.waitUntil(seconds: 60) { fleet.view("m3")["m3"]?.state == "in_sync" }, "\(fleet.logs())")
        if attestations == 1 {
            // What k = 1 does not tolerate: a liar that is the only attester of a token is believed.
            let fooled = fleet.waitUntil(seconds: 60) { victims.allSatisfy { published($0) == "push-1\n" } }
            #expect(fooled && victims.allSatisfy(trojaned), "with attestations = 1 a lone liar is believed:\n\(fleet.logs())")
            return
        }
        // k = 2: one attestation is not enough. Nobody publishes anything, however long it waits.
        Thread.sleep(forTimeInterval: 15)
        for name in victims {
            #expect(published(name) == nil && !trojaned(name), "\(name) published on one member's word:\n\(fleet.logs())")
        }

        // 2. The honest m0 joins and attests the genuine tree: one root against another, a tie. Still nothing is
        // published, and the victims' status names both sides.
        try fleet.start("m0")
        #expect(fleet.waitUntil(seconds: 60) { fleet.view("m0")["m0"]?.state == "in_sync" }, "\(fleet.logs())")
        var named = false
        #expect(fleet.waitUntil(seconds: 30) {
            let members = fleet.status("m1")?["members"] as? [[String: Any]] ?? []
            let error = members.first { $0["node"] as? String == "m1" }?["last_error"] as? String ?? ""
            named = error.contains("members disagree") && error.contains("m3") && error.contains("m0")
            return named
        }, "m1's status does not name the disagreeing members:\n\(fleet.logs())")
        Thread.sleep(forTimeInterval: 5)
        for name in victims { #expect(published(name) == nil && !trojaned(name), "\(name) published during a dispute") }

        // 3. Upstream has room again for the victims (their config points at upstream's own module): they confirm
        // push-1 themselves, pull it, attest it, and every honest mirror holds exactly upstream's tree.
        for name in victims {
            fleet.agents[name]!.killGroup()
            fleet.upstreamURLs[name] = nil
            let seed = fleet.names[(fleet.names.firstIndex(of: name)! + 3) % 4]
            try fleet.config(name, seeds: ["127.0.0.1:\(fleet.ports[seed]!)"]).write(toFile: fleet.configPath(name), atomically: true, encoding: .utf8)
            try fleet.start(name)
        }
        let honest = ["m0"] + victims
        #expect(fleet.waitUntil(seconds: 90) { honest.allSatisfy { published($0) == "push-1\n" } }, "\(fleet.logs())")
        for name in honest {
            #expect(TreeComparison.differences(fleet.upstream.tree, realPath(fleet.mirror(name))) == [], "\(name)")
        }
        // Nothing of m3's was ever published by an honest mirror.
        let fromLiar = try fleet.runs().filter { honest.contains($0.node) && $0.source == "m3" && $0.outcome == "synced" }
        #expect(fromLiar.isEmpty, "\(fromLiar.map { "\($0.node)←m3" })")
    }
}
