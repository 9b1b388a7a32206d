import DmirrCore
import DmirrNet
import DmirrTestSupport
import DmirrWire
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The mirrorlist and metalink of an agent that knows a thousand members, and their throughput on one core
/// (docs/benchmarks.md). The members are real to the agent: each has a certificate of the fleet, and its signed record
/// arrives over the real protocol; they run no agent (their records say they hold the target, and
/// `suspect_after = 1h` keeps them alive without heartbeats). The load comes from `wrk` on the other core.
///
/// The suite runs a short load (`DMIRR_BENCH_SECONDS`, 3 s by default) and checks the answers; the benchmark is
/// `DMIRR_BENCH_SECONDS=30 swift test --skip-build --filter ClientListScaleTests` on an otherwise idle machine.
@Suite(.serialized) struct ClientListScaleTests {
    typealias Fleet = FleetTests.Fleet

    /// What `wrk` reported.
    struct Load {
        var requestsPerSecond: Double
        var requests: Int
        var failures: Int
        var p50: String
        var p99: String
        /// The agent's CPU time (user + system) during the load, in seconds.
        var agentCPU: Double
    }

    /// The agent's user + system CPU time so far, in seconds (`/proc/PID/stat`, fields 14 and 15).
    static func cpuSeconds(_ pid: Int32) -> Double {
        let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
        // The command name (field 2) is in parentheses and may hold spaces: count from after it.
        guard let close = stat.lastIndex(of: ")") else { return 0 }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// `wrk` on core 1 (the agent runs on core 0), 16 keep-alive connections, one thread.
    static func load(_ url: String, seconds: Int, agent: Int32) throws -> Load {
        let before = cpuSeconds(agent)
        let r = try CLI.run("taskset", ["-c", "1", "wrk", "-t1", "-c16", "-d\(seconds)s", "--latency", url], timeout: Double(seconds) + 60)
        let after = cpuSeconds(agent)
        guard r.exitCode == 0 else { throw TestFailure("wrk \(url): exit \(r.exitCode)\n\(r.stdout)\(r.stderr)") }
        func value(after label: String) -> String? {
            r.stdout.split(separator: "\n").first { $0.trimmingCharacters(in: .whitespaces).hasPrefix(label) }
                .map { $0.trimmingCharacters(in: .whitespaces).dropFirst(label.count).trimmingCharacters(in: .whitespaces) }
        }
        // "N requests in Xs, Y read"; "Non-2xx or 3xx responses: N" and "Socket errors: …" only when there were some.
        let total = r.stdout.split(separator: "\n").first { $0.contains(" requests in ") }
            .flatMap { Int($0.trimmingCharacters(in: .whitespaces).split(separator: " ").first ?? "") } ?? 0
        let non2xx = Int(value(after: "Non-2xx or 3xx responses:") ?? "0") ?? 0
        let socketErrors = value(after: "Socket errors:") == nil ? 0 : 1
        return Load(requestsPerSecond: Double(value(after: "Requests/sec:") ?? "") ?? 0, requests: total, failures: non2xx + socketErrors,
                    p50: value(after: "50%") ?? "?", p99: value(after: "99%") ?? "?", agentCPU: after - before)
    }

    @Test func anAgentThatKnowsAThousandMembers() async throws {
        let seconds = Int(ProcessInfo.processInfo.environment["DMIRR_BENCH_SECONDS"] ?? "") ?? 3
        let fleet = try Fleet(size: 1, peersExtra: "attestations = 1", http: true,
                              mirrorExtraFor: ["m0": "public_url = \"http://m0.example.org\"\nregion = \"DE\""],
                              listenExtra: "client_rate = 0", suspectAfter: "1h", downAfter: "2h")
        defer { fleet.stop(); fleet.dir.remove() }
        try fleet.start("m0", wrapper: ["/usr/bin/taskset", "-c", "0"])
        #expect(fleet.waitUntil(seconds: 90) { fleet.allInSync("push-1", among: ["m0"]) }, "\(fleet.logs())")

        // 999 more members, each with its own certificate and signed record; a quarter in each of four regions.
        let ca = fleet.dir.sub("ca/ca.pem")
        let caPEM = try String(contentsOfFile: ca, encoding: .utf8)
        let caKey = try String(contentsOfFile: fleet.dir.sub("ca/ca.key"), encoding: .utf8)
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let regions = ["DE", "US", "FR", "JP"]
        var records: [WireSignedRecord] = []
        var link: FleetTLS?
        for i in 1..<1000 {
            let name = "b\(1000 + i)"
            let issued = try FleetPKI.issue(caCertificatePEM: caPEM, caKeyPEM: caKey, identity: PeerIdentity(fleet: "test", role: .node, name: name))
            let (cert, key) = (fleet.dir.sub("certs/\(name).pem"), fleet.dir.sub("certs/\(name).key"))
            try FleetPKI.write(issued.certificatePEM, to: cert, secret: false, force: true)
            try FleetPKI.write(issued.privateKeyPEM, to: key, secret: true, force: true)
            if link == nil { link = try FleetTLS(caPath: ca, certPath: cert, keyPath: key) }
            var record = MemberRecord(node: name, generation: 1)
            record.heartbeat = 1
            record.syncState = .inSync
            record.publishedToken = "push-1"
            record.targetToken = "push-1"
            record.targetSeenMillis = now
            record.lastSyncMillis = now
            record.publicURL = "http://\(name).example.org"
            record.region = regions[i % regions.count]
            record.expiresMillis = now + 3_600_000
            records.append(try RecordSigner(caPath: ca, certPath: cert, keyPath: key).sign(record))
        }
        let batches = stride(from: 0, to: records.count, by: 250).map { Array(records[$0..<min($0 + 250, records.count)]) }
        try await PeerClient.connect(host: "127.0.0.1", port: fleet.ports["m0"]!, tls: try #require(link)) { session, _ in
            for batch in batches {
                var envelope = WireEnvelope()
                envelope.records = .with { $0.records = batch }
                try await session.send(envelope)
            }
            try await Task.sleep(for: .seconds(1))
        }
        #expect(fleet.waitUntil(seconds: 60) {
            let view = fleet.view("m0")
            return view.count == 1000 && view.values.allSatisfy { $0.state == "in_sync" && $0.token == "push-1" }
        }, "m0 knows \(fleet.view("m0").count) members\n\(fleet.logs())")

        // The answers: 100 URLs at most, distinct, all of members holding the target; a region's members first; another
        // client gets another order.
        let base = "http://127.0.0.1:\(fleet.httpPorts["m0"]!)"
        let known = Set(records.indices.map { "http://b\(1001 + $0).example.org/" } + ["http://m0.example.org/"])
        let list = try HTTPListenerTests.get("\(base)/mirrorlist?path=").body.split(separator: "\n").map(String.init)
        #expect(list.count == MirrorList.maxURLs && Set(list).count == list.count && Set(list).isSubset(of: known), "\(list)")
        let german = try HTTPListenerTests.get("\(base)/mirrorlist?path=&region=DE").body.split(separator: "\n").map(String.init)
        let germans = Set(records.indices.filter { ($0 + 1) % regions.count == 0 }.map { "http://b\(1001 + $0).example.org/" } + ["http://m0.example.org/"])
        #expect(german.count == MirrorList.maxURLs && Set(german).isSubset(of: germans), "\(german)")
        let other = try CLI.run("curl", ["-sS", "--interface", "127.0.0.2", "\(base)/mirrorlist?path="], timeout: 30)
        let otherList = other.stdout.split(separator: "\n").map(String.init)
        #expect(otherList.count == MirrorList.maxURLs && otherList != list, "another client, another order")
        // Which token a list is of, in a header.
        let head = try CLI.run("curl", ["-sS", "-D", "-", "-o", "/dev/null", "\(base)/mirrorlist?path="], timeout: 30)
        #expect(head.stdout.lowercased().contains("x-dmirr-token: push-1"), "\(head.stdout)")
        let metalink = try HTTPListenerTests.get("\(base)/metalink?path=")
        #expect(metalink.status == 200 && metalink.body.components(separatedBy: "<url ").count - 1 == MirrorList.maxURLs, "\(metalink.body.prefix(2000))")

        // The load: every request answered, none refused (client_rate = 0).
        let pid = fleet.agents["m0"]!.pid
        // The last is a 404 for a path that is no repository: what the listener costs before any list is made.
        for (what, query, answered) in [("metalink", "path=", true), ("mirrorlist", "path=", true), ("mirrorlist", "path=no/such", false)] {
            let result = try Self.load("\(base)/\(what)?\(query)", seconds: seconds, agent: pid)
            #expect(result.requests > 0 && result.failures == (answered ? 0 : result.requests), "\(what)?\(query): \(result)")
            print(String(format: "anAgentThatKnowsAThousandMembers: /%@?%@ with 1000 members, %d s: %.0f requests/s, p50 %@, p99 %@, agent CPU %.1f µs per request",
                         what, query, seconds, result.requestsPerSecond, result.p50, result.p99, result.agentCPU / Double(max(result.requests, 1)) * 1e6))
        }
    }
}
