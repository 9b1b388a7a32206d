import DmirrCore
import DmirrFixtures
import DmirrTestSupport
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The fleet's mirrorlist and metalink, read by the real dnf: 4 agents, each mirror's tree also served over HTTP by
/// Python's `http.server` (its request log tells which mirror dnf fetched from), the repository nested at
/// `el9/x86_64` as distributions lay theirs out.
@Suite struct ClientListTests {
    typealias Fleet = FleetTests.Fleet

    /// An HTTP server for one mirror's tree; its log has one line per request.
    final class TreeServer {
        let port: Int
        let log: String
        let process = Process()

        /// Serves `directory` on `port` (chosen beforehand: the member's public_url names it).
        init(port: Int, directory: String, log: String) throws {
            self.port = port
            self.log = log
            FileManager.default.createFile(atPath: log, contents: nil)
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["python3", "-m", "http.server", "\(port)", "--bind", "127.0.0.1", "--directory", directory]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
            try process.run()
            guard FreePort.waitUntilAccepting(port: port, seconds: 10) else { throw TestFailure("http.server on \(port) did not start") }
        }

        /// Paths requested since the log was last cleared.
        func requests() -> [String] {
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            return text.split(separator: "\n").compactMap { line in
                guard let start = line.range(of: "\"GET ") else { return nil }
                return line[start.upperBound...].split(separator: " ").first.map(String.init)
            }
        }

        func clearLog() { try? FileHandle(forWritingTo: URL(fileURLWithPath: log)).truncate(atOffset: 0) }

        /// SIGKILL: the test process may pass an ignored SIGTERM on to its children, and a test server keeps no state.
        func stop() {
            guard process.isRunning else { return }
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    static let repo = "el9/x86_64"

    @Test func dnfFollowsTheFleetsMetalinkAndNeverReadsAStaleOrAlteredMirror() throws {
        let names = (0..<5).map { "m\($0)" }
        // Ports for the trees' HTTP servers first: each member's public_url names its own.
        let ports = try names.map { _ in try FreePort.pick() }
        var extra: [String: String] = [:]
        for (i, name) in names.enumerated() {
            extra[name] = "public_url = \"http://127.0.0.1:\(ports[i])\"\nregion = \"\(i % 2 == 0 ? "DE" : "US")\""
        }
        // Two mirrors are held back from push-2. m4's agent is stopped before the push (as the issue has it); the
        // others judge it suspect, then down, before they converge (its silence holds up their plan until then), so
        // the lists would leave it out for its silence alone. m3 exercises the token rule itself: its upstream is a
        // module frozen at push-1, so it stays alive, gossiping, and behind.
        let frozen = try TestDirectory("frozen")
        defer { frozen.remove() }
        let fleet = try Fleet(size: 5, serving: true, extraModules: [.init(name: "frozen", path: frozen.path)],
                              upstreamURLs: ["m3": "rsync://UPSTREAM/frozen"], http: true, mirrorExtraFor: extra)
        defer { fleet.stop(); fleet.dir.remove() }
        // The repository lives at el9/x86_64 in upstream's tree; the token file stays at the top.
        let nested = fleet.upstream.tree + "/" + Self.repo
        try FileManager.default.createDirectory(atPath: nested, withIntermediateDirectories: true)
        for item in ["Packages", "repodata"] {
            try FileManager.default.moveItem(atPath: fleet.upstream.tree + "/" + item, toPath: nested + "/" + item)
        }
        let copy = try CLI.run("/bin/cp", ["-a", fleet.upstream.tree + "/.", frozen.path + "/"])
        #expect(copy.exitCode == 0, "\(copy.stderr)")
        var servers: [String: TreeServer] = [:]
        defer { servers.values.forEach { $0.stop() } }
        for (i, name) in names.enumerated() {
            let server = try TreeServer(port: ports[i], directory: fleet.mirror(name), log: fleet.dir.sub("http-\(name).log"))
            servers[name] = server
        }
        for name in names { try fleet.start(name) }
        #expect(fleet.waitUntil(seconds: 90) { fleet.allInSync("push-1", among: names) }, "\(fleet.logs())")

        /// An agent's answer.
        func get(_ agent: String, _ what: String, _ query: String = "path=\(Self.repo)") throws -> (status: Int, body: String) {
            let r = try HTTPListenerTests.get("http://127.0.0.1:\(fleet.httpPorts[agent]!)/\(what)?\(query)")
            return (r.status, r.body)
        }
        // Every agent lists the same five mirrors for push-1 (each in its own order for this client).
        var lists: [Set<String>] = []
        for name in names {
            let list = try get(name, "mirrorlist")
            #expect(list.status == 200, "\(name): \(list.body)")
            lists.append(Set(list.body.split(separator: "\n").map(String.init)))
        }
        let expected = Set(ports.map { "http://127.0.0.1:\($0)/\(Self.repo)/" })
        #expect(lists.allSatisfy { $0 == expected }, "\(lists)")
        // A region puts its members first; unknown paths and bad ones are refused with a reason.
        let german = try get("m1", "mirrorlist", "path=\(Self.repo)&region=DE").body.split(separator: "\n").map(String.init)
        #expect(Set(german.prefix(3)) == Set([0, 2, 4].map { "http://127.0.0.1:\(ports[$0])/\(Self.repo)/" }), "\(german)")
        let unknown = try get("m0", "metalink", "path=el8/x86_64")
        #expect(unknown.status == 404 && unknown.body.contains("no repository at 'el8/x86_64'"), "\(unknown)")
        #expect(try get("m0", "mirrorlist", "path=../etc").status == 400)

        // Real dnf, pointed at m0's metalink, reads the repository.
        let metalink = "http://127.0.0.1:\(fleet.httpPorts["m0"]!)/metalink?path=\(Self.repo)"
        let first = try Dnf.withMetalink(metalink, ["-q", "repoquery", "--available", "--qf", "%{name}-%{version}"])
        #expect(first.exitCode == 0 && first.stdout.contains("alpha-1.0") && first.stdout.contains("beta-1.0"), "\(first.stdout)\(first.stderr)")

        // The push reaches everyone but m3 and m4: the lists drop both once the target moves.
        fleet.agents["m4"]!.killGroup()
        func sha256(_ path: String) throws -> String {
            String(try CLI.run("sha256sum", [path]).stdout.prefix(64))
        }
        let repomdSHA = ["push-1": try sha256(nested + "/repodata/repomd.xml")]
        try YumRepo.buildRPMs([.init("gamma", "1.0")], into: nested + "/Packages")
        try YumRepo.createrepo(nested)
        let sha2 = try sha256(nested + "/repodata/repomd.xml")
        try fleet.upstream.setToken("push-2")
        let live = ["m0", "m1", "m2"]
        // Through the transition, every metalink m0 serves is of one token throughout: the checksum of that token's
        // repomd.xml (the X-Dmirr-Token header names it), never one token's checksum with another's mirrors. Until a
        // mirror publishes push-2, and then until push-2's tree is attested by two members' upstream pulls and m0
        // publishes it, the answer is push-1's, with a comment saying so (the checksums m0 last served, and the
        // mirrors that still publish push-1).
        var answers: [String: Int] = [:]
        let transition = Date()
        while Date().timeIntervalSince(transition) < 90 {
            let r = try CLI.run("curl", ["-sS", "-D", "-", "http://127.0.0.1:\(fleet.httpPorts["m0"]!)/metalink?path=\(Self.repo)"], timeout: 30)
            let head = r.stdout.lowercased()
            let status = head.hasPrefix("http/1.1 200") ? 200 : head.hasPrefix("http/1.1 503") ? 503 : 0
            let token = head.split(separator: "\r\n").first { $0.hasPrefix("x-dmirr-token: ") }.map { String($0.dropFirst("x-dmirr-token: ".count)) }
            #expect(status != 0, "\(r.stdout)")
            if status == 200 {
                let expected = token == "push-2" ? sha2 : token.flatMap { repomdSHA[$0] }
                #expect(expected != nil && r.stdout.contains(">\(expected!)</hash>"), "a metalink of \(token ?? "?") carries another checksum:\n\(r.stdout)")
                #expect(token != "push-2" || !r.stdout.contains("<!--"), "\(r.stdout.prefix(600))")
            }
            let flagged = r.stdout.contains("<!-- dmirr: ") && r.stdout.contains("these publish push-1 -->")
            let reason = status == 503 ? ": " + (r.stdout.components(separatedBy: "\r\n\r\n").last ?? "").prefix(60) : ""
            answers["\(status) \(token ?? "-")\(flagged ? " (flagged)" : "")\(reason)", default: 0] += 1
            if token == "push-2" && fleet.allInSync("push-2", among: live) { break }
            usleep(100_000)
        }
        print("dnfFollowsTheFleetsMetalink: m0's metalink answers through the push: \(answers)")
        // And none was refused: m3 holds push-1 throughout, so there is always a consistent answer to give.
        #expect(answers.keys.allSatisfy { $0.hasPrefix("200 ") }, "\(answers)")
        #expect(fleet.waitUntil(seconds: 90) { fleet.allInSync("push-2", among: live) }, "\(fleet.logs())")
        let m3 = (fleet.status("m0")?["members"] as? [[String: Any]])?.first { $0["node"] as? String == "m3" }
        #expect(m3?["token"] as? String == "push-1" && !["down", "suspect"].contains(m3?["state"] as? String ?? "down"),
                "m3 must be alive and behind for this check: \(m3 ?? [:])")
        // Every agent whose target is push-2 answers the same set (within a second or two of their statuses: the
        // last record travels to each, and a listener reuses its member view for up to a second).
        let current = expected.subtracting(["http://127.0.0.1:\(ports[3])/\(Self.repo)/", "http://127.0.0.1:\(ports[4])/\(Self.repo)/"])
        #expect(fleet.waitUntil(seconds: 10) {
            live.allSatisfy { name in (try? get(name, "mirrorlist")).map { Set($0.body.split(separator: "\n").map(String.init)) == current } ?? false }
        })
        for name in live {
            let list = Set(try get(name, "mirrorlist").body.split(separator: "\n").map(String.init))
            #expect(list == current, "\(name): \(list)")
            let metalink = try get(name, "metalink")
            let urls = Set(metalink.body.split(separator: "\n").filter { $0.contains("<url ") }.compactMap { line in
                line.split(separator: ">").dropFirst().first?.split(separator: "<").first.map { String($0.dropLast("repodata/repomd.xml".count)) }
            })
            #expect(metalink.status == 200 && urls == current, "\(name): \(metalink.status) \(urls)")
        }
        // m3's own upstream says push-1, and an agent takes no member's word over its upstream's (the rumour of push-2
        // is refuted by its own fetch): its target is push-1, so it lists the holders of push-1, itself alone. It hands
        // out no checksums for them: only m3 attests that tree now, fewer than `attestations` (2).
        #expect((fleet.status("m3")?["target"] as? [String: Any])?["token"] as? String == "push-1")
        let m3list = try get("m3", "mirrorlist")
        #expect(m3list.body.split(separator: "\n").map(String.init) == ["http://127.0.0.1:\(ports[3])/\(Self.repo)/"], "\(m3list)")
        let m3metalink = try get("m3", "metalink")
        #expect(m3metalink.status == 503 && m3metalink.body.contains("attested"), "\(m3metalink)")
        servers.values.forEach { $0.clearLog() }
        let second = try Dnf.withMetalink(metalink, ["-q", "repoquery", "--available", "--qf", "%{name}-%{version}"])
        #expect(second.exitCode == 0 && second.stdout.contains("gamma-1.0"), "\(second.stdout)\(second.stderr)")
        for behind in ["m3", "m4"] {
            #expect(servers[behind]!.requests().isEmpty, "dnf read the held-back \(behind): \(servers[behind]!.requests())")
        }

        // The mirror this client is sent to first has its repomd.xml altered on disk: dnf refuses it (the metalink's
        // SHA-256 does not match) and takes repomd.xml from the next one. Without the metalink's checksum it would
        // have used the first answer.
        let document = try get("m0", "metalink").body
        let firstURL = try #require(document.components(separatedBy: "preference=\"100\">").dropFirst().first?.components(separatedBy: "<").first)
        let victim = try #require(live.first { firstURL.hasPrefix("http://127.0.0.1:\(ports[names.firstIndex(of: $0)!])/") })
        let repomd = fleet.mirror(victim) + "/" + Self.repo + "/repodata/repomd.xml"
        // One byte changed, the size kept: a digit of the first checksum it lists (librepo also compares sizes).
        var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: repomd)))
        let marker = Array("<checksum type=\"sha256\">".utf8)
        let at = try #require((0..<(bytes.count - marker.count)).first { Array(bytes[$0..<$0 + marker.count]) == marker }) + marker.count
        bytes[at] = bytes[at] == UInt8(ascii: "0") ? UInt8(ascii: "1") : UInt8(ascii: "0")
        try Data(bytes).write(to: URL(fileURLWithPath: repomd))
        servers.values.forEach { $0.clearLog() }
        let third = try Dnf.withMetalink(metalink, ["-q", "repoquery", "--available", "--qf", "%{name}-%{version}"])
        #expect(third.exitCode == 0 && third.stdout.contains("gamma-1.0"), "\(third.stdout)\(third.stderr)")
        let victimRequests = servers[victim]!.requests()
        #expect(victimRequests.contains { $0.hasSuffix("repodata/repomd.xml") }, "dnf did not try \(victim) first: \(victimRequests)")
        // Refused: dnf fetched repomd.xml again, from another mirror, and took that one (it may then fetch the files
        // it lists from any mirror, the victim included: their checksums come from the good repomd.xml).
        let others = live.filter { $0 != victim }.flatMap { servers[$0]!.requests() }
        #expect(others.contains { $0.hasSuffix("repodata/repomd.xml") }, "dnf never looked past \(victim): \(others)")
        print("dnfFollowsTheFleetsMetalink: altered \(victim); its requests \(victimRequests); the others' \(others.count)")
    }

    /// One client may not flood an agent: past the burst it gets 429 with Retry-After.
    @Test func aFloodingClientIsRateLimited() throws {
        let fleet = try Fleet(size: 1, http: true, mirrorExtraFor: ["m0": "public_url = \"http://127.0.0.1:1/\""])
        defer { fleet.stop(); fleet.dir.remove() }
        try fleet.start("m0")
        #expect(fleet.waitUntil(seconds: 60) { fleet.allInSync("push-1", among: ["m0"]) }, "\(fleet.logs())")
        let url = "http://127.0.0.1:\(fleet.httpPorts["m0"]!)/mirrorlist?path="
        // 100 requests on one connection, as fast as curl sends them.
        let r = try CLI.run("curl", ["-s", "-w", "%{http_code}\\n"] + Array(repeating: ["-o", "/dev/null", url], count: 100).flatMap { $0 }, timeout: 60)
        let codes = r.stdout.split(separator: "\n").map(String.init)
        #expect(codes.count == 100)
        #expect(codes.prefix(30).allSatisfy { $0 == "200" }, "\(codes)")
        #expect(codes.contains("429"), "\(codes)")
        // Another address is not affected (the limit is per client).
        let other = try CLI.run("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "--interface", "127.0.0.2", url], timeout: 30)
        #expect(other.stdout == "200", "\(other.stdout) \(other.stderr)")
    }
}
