import DmirrFixtures
import DmirrTestSupport
import Foundation
import Testing

/// The slow-and-lossy-link campaign: a fleet of four whose every connection (gossip, peer rsync, upstream) goes through
/// a ``LinkProxy`` adding latency, loss (as retransmission stalls) and a bandwidth limit, takes a push; the time until
/// every member published it is compared with what `dmirr-sim` predicts for the same fleet and link.
///
/// The simulator is given the same N, slots, attestations, gossip round, poll and delta, and for the link the proxy's
/// own arithmetic: its capacity once stalls are counted (``LinkProxy/Profile/effectiveBandwidth``) and the mean delay
/// of a one-segment message (``LinkProxy/Profile/meanLatency``). It models transfers and gossip and charges a pull one
/// round trip to start. A real pull opens up to five rsync daemon sessions (the token before and after, both stages,
/// and from a peer its manifest), each an rsync start and about six round trips of its protocol, then verifies and
/// publishes. So the figure compared with is the simulator's median plus, for each of the ⌈log₃(N/C)⌉ + 1 waves of
/// pulls, 1 s (a pull's fixed work, measured on a link without latency or loss: 0.9–1.3 s) and five sessions as long as
/// one measured fetch of `CURRENT` through the same kind of link; and **the tolerance** is ±25 % of that figure (a link
/// that is not as slow as claimed fails the lower bound).
///
/// Profiles are `latency-ms:loss:kB/s` (`DMIRR_LINK_PROFILES`, comma-separated; CI runs one), each run
/// `DMIRR_LINK_RUNS` times (1).
@Suite(.serialized) struct SlowLinkCampaignTests {
    static let profiles: [LinkProxy.Profile] = (ProcessInfo.processInfo.environment["DMIRR_LINK_PROFILES"] ?? "50:0.01:1500")
        .split(separator: ",").map { item in
            let f = item.split(separator: ":").compactMap { Double($0) }
            precondition(f.count == 3, "DMIRR_LINK_PROFILES: '\(item)' is not latency-ms:loss:kB/s")
            return LinkProxy.Profile(latency: f[0] / 1000, loss: f[1], bandwidth: f[2] * 1000)
        }
    static let runs = FaultCampaignTests.setting("DMIRR_LINK_RUNS", 1)
    /// The push each run fetches: one package of this size (incompressible) and the new metadata.
    static let packageKB = 3000

    @Test(arguments: profiles) func aFleetOnSlowLossyLinksConvergesWithinTheSimulatorsFigure(profile: LinkProxy.Profile) throws {
        let slots = 2
        for run in 1...Self.runs {
            let fleet = try FleetTests.Fleet(size: 4, serving: true, upstreamSlots: slots, links: profile)
            defer { fleet.stop(); fleet.dir.remove() }
            for name in fleet.names { try fleet.start(name) }
            let formed = fleet.waitUntil(seconds: 120) { fleet.allInSync("push-1", among: fleet.names) }
            try #require(formed, "\(profile): \(fleet.names.map { "\($0): \(fleet.view($0))" })\n\(fleet.logs())")

            // One rsync daemon session on this link: a fetch of upstream's token through its proxy (median of three).
            let session = try (0..<3).map { _ in
                let started = Date()
                let r = try CLI.run("/usr/bin/rsync", ["-q", "rsync://127.0.0.1:\(fleet.proxies["upstream"]!.port)/repo/CURRENT", fleet.dir.sub("token-probe")])
                try #require(r.exitCode == 0, "\(r.stderr)")
                return Date().timeIntervalSince(started)
            }.sorted()[1]

            let before = try Set(FileManager.default.contentsOfDirectory(atPath: fleet.upstream.tree + "/repodata"))
            try fleet.upstream.push(add: [.init("bulk", "\(run).0", sizeKB: Self.packageKB)], token: "push-2")
            let pushed = Date()
            // What every mirror fetches: the package and the metadata files that are new.
            let changed = try ["Packages/bulk-\(run).0-1.noarch.rpm"]
                + FileManager.default.contentsOfDirectory(atPath: fleet.upstream.tree + "/repodata").filter { !before.contains($0) }.map { "repodata/" + $0 }
            let delta = try changed.reduce(0.0) { sum, path in
                sum + Double((try FileManager.default.attributesOfItem(atPath: fleet.upstream.tree + "/" + path)[.size] as? Int) ?? 0)
            }

            // No healthy member may be suspected on these links while the push spreads.
            var wrong: Set<String> = []
            let converged = fleet.waitUntil(seconds: 240) {
                for viewer in fleet.names {
                    wrong.formUnion(FaultCampaignTests.wronglySuspected(fleet, by: viewer, among: fleet.names).map { "\($0) by \(viewer)" })
                }
                return fleet.allInSync("push-2", among: fleet.names)
            }
            try #require(converged, "\(profile): \(fleet.names.map { "\($0): \(fleet.view($0))" })\n\(fleet.logs())")
            let synced = try fleet.runs().filter { $0.token == "push-2" && $0.outcome == "synced" }
            let publishedBy = Dictionary(grouping: synced, by: \.node).mapValues { $0.map(\.finished).max()! }
            try #require(Set(publishedBy.keys) == Set(fleet.names), "\(synced.map { "\($0.node) \($0.outcome)" })")
            let real = publishedBy.values.max()!.timeIntervalSince(pushed)
            let fromUpstream = synced.filter { $0.source == "upstream" }.count
            let treePulls = try fleet.upstream.sessions().sessions.filter { $0.isTreePull && $0.started >= pushed.addingTimeInterval(-1) }
            let peak = peakOverlap(treePulls.map { ($0.started, $0.ended) })

            let predicted = try Self.simulate(nodes: fleet.names.count, slots: slots, profile: profile, delta: delta)
            let waves = Int(ceil(log(Double(fleet.names.count) / Double(slots)) / log(3.0))) + 1
            let expected = predicted + Double(waves) * (1.0 + 5 * session)
            let (lower, upper) = (expected * 0.75, expected * 1.25)
            let stats = fleet.proxies.values.reduce((segments: 0, lost: 0)) { ($0.segments + $1.statistics.segments, $0.lost + $1.statistics.lost) }
            let line = "slow links (\(profile)), run \(run): all \(fleet.names.count) on push-2 \(String(format: "%.1f", real)) s after the "
                + "push; simulator \(String(format: "%.0f", predicted)) s, with the pulls' sessions \(String(format: "%.1f", expected)) s (allowed \(String(format: "%.1f", lower))–\(String(format: "%.1f", upper)) s, "
                + "one rsync session \(String(format: "%.2f", session)) s); "
                + "delta \(String(format: "%.2f", delta / 1e6)) MB, \(fromUpstream) pulls from upstream (peak \(peak) at once); \(stats.lost) of \(stats.segments) "
                + "segments lost; \(wrong.count) wrong suspicions; pulls (s after the push): "
                + synced.sorted { $0.started < $1.started }.map {
                    "\($0.node) from \($0.source) \(String(format: "%.1f", $0.started.timeIntervalSince(pushed)))–\(String(format: "%.1f", $0.finished.timeIntervalSince(pushed)))"
                }.joined(separator: ", ")
            print(line)
            #expect(wrong.isEmpty, "\(line): \(wrong.sorted())")
            #expect(real <= upper && real >= lower, "\(line)")
            #expect(peak <= slots, "\(line)")
            for name in fleet.names {
                #expect(TreeComparison.differences(fleet.upstream.tree, fleet.mirror(name)) == [], "\(profile): \(name)")
            }
        }
    }

    /// The simulator's median t100 over five seeds for this fleet on this link (its output's `median` line).
    static func simulate(nodes: Int, slots: Int, profile: LinkProxy.Profile, delta: Double) throws -> Double {
        let sim = (CLI.dmirrPath as NSString).deletingLastPathComponent + "/dmirr-sim"
        let bandwidth = String(format: "%.4f", (profile.effectiveBandwidth ?? 1e9) / 1e6)
        let arguments = [
            "-n", "\(nodes)", "-c", "\(slots)", "-f", "2", "-k", "2", "--latency", String(format: "%.1f", profile.meanLatency * 1000),
            "--mirror-bw", bandwidth, "--upstream-bw", bandwidth, "--delta", String(format: "%.4f", delta / 1e6),
            "--gossip", "0.2", "--poll", "1", "--down-after", "5", "--push-at", "10", "--horizon-hours", "0.2",
            "--no-baseline", "--seeds", "5",
        ]
        let out = try CLI.run(sim, arguments, timeout: 120)
        // "median  detect  t50  t90  t100 …"
        let median = out.stdout.split(separator: "\n").first { $0.hasPrefix("median") }?.split(separator: " ") ?? []
        guard out.exitCode == 0, median.count > 4, let t100 = Double(median[4])
        else { throw TestFailure("dmirr-sim \(arguments.joined(separator: " ")) gave no t100:\n\(out.stdout)\n\(out.stderr)") }
        return t100
    }
}
