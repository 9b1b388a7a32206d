import DmirrCore
import DmirrTestSupport
import Foundation
import Testing

/// The agent's HTTP listener (`[listen] metrics`) on live fleets: `/metrics` checked by Prometheus' own `promtool`,
/// `/status.json` against `dmirr status --json`, and the fleet page in a real headless Chromium (Debian's, driven by
/// Playwright from PyPI).
@Suite struct HTTPListenerTests {
    typealias Fleet = FleetTests.Fleet

    static func get(_ url: String) throws -> (status: Int, body: String, contentType: String) {
        let r = try CLI.run("curl", ["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code} %{content_type}", url], timeout: 30)
        guard r.exitCode == 0, let cut = r.stdout.lastIndex(of: "\n") else { throw TestFailure("curl \(url): \(r.stderr)") }
        let trailer = r.stdout[r.stdout.index(after: cut)...].split(separator: " ", maxSplits: 1)
        return (Int(trailer.first ?? "") ?? 0, String(r.stdout[..<cut]), trailer.count > 1 ? String(trailer[1]) : "")
    }

    /// The value of one sample (`name{labels} value`) in a Prometheus text exposition.
    static func sample(_ text: String, _ series: String) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.dropFirst(series.count + 1))
        }
        return nil
    }

    @Test func metricsPassPromtoolAndCountersMoveAfterASync() throws {
        let fleet = try Fleet(size: 2, http: true)
        defer { fleet.stop(); fleet.dir.remove() }
        for name in fleet.names { try fleet.start(name) }
        #expect(fleet.waitUntil(seconds: 60) { fleet.allInSync("push-1", among: fleet.names) }, "\(fleet.logs())")
        let url = "http://127.0.0.1:\(fleet.httpPorts["m0"]!)/metrics"
        let before = try Self.get(url)
        #expect(before.status == 200 && before.contentType.hasPrefix("text/plain; version=0.0.4"), "\(before.status) \(before.contentType)")
        // Prometheus' own checker: format, names, help texts, units.
        try before.body.write(toFile: fleet.dir.sub("metrics.txt"), atomically: true, encoding: .utf8)
        let check = try CLI.run("/bin/sh", ["-c", "promtool check metrics < \(fleet.dir.sub("metrics.txt"))"], timeout: 30)
        #expect(check.exitCode == 0, "promtool: \(check.stdout)\(check.stderr)\n\(before.body)")
        #expect(Self.sample(before.body, "dmirr_mirror_in_sync") == 1)
        #expect(Self.sample(before.body, "dmirr_mirror_lag_seconds") == 0)
        #expect(Self.sample(before.body, "dmirr_members{state=\"alive\"}") == 2)
        #expect((Self.sample(before.body, "dmirr_gossip_frames_received_total") ?? 0) > 0)
        #expect((Self.sample(before.body, "dmirr_gossip_sent_bytes_total") ?? 0) > 0)
        let synced = Self.sample(before.body, "dmirr_syncs_total{outcome=\"synced\"}") ?? -1
        let pulled = (Self.sample(before.body, "dmirr_received_bytes_total{source=\"upstream\"}") ?? 0)
            + (Self.sample(before.body, "dmirr_received_bytes_total{source=\"peer\"}") ?? 0)
        #expect(synced == 1 && pulled > 0, "synced \(synced), bytes \(pulled)")

        try fleet.upstream.push(add: [.init("gamma", "1.0", sizeKB: 64)], token: "push-2")
        #expect(fleet.waitUntil(seconds: 60) { fleet.allInSync("push-2", among: fleet.names) }, "\(fleet.logs())")
        let after = try Self.get(url).body
        #expect(Self.sample(after, "dmirr_syncs_total{outcome=\"synced\"}") == synced + 1, "\(after)")
        let pulledAfter = (Self.sample(after, "dmirr_received_bytes_total{source=\"upstream\"}") ?? 0)
            + (Self.sample(after, "dmirr_received_bytes_total{source=\"peer\"}") ?? 0)
        #expect(pulledAfter > pulled + 60_000, "the 64 KiB package was counted: \(pulled) → \(pulledAfter)")
        #expect(Self.sample(after, "dmirr_propagation_seconds_count") == 2, "both tokens' propagation observed")
        let durations = (Self.sample(after, "dmirr_sync_duration_seconds_count{source=\"upstream\"}") ?? 0)
            + (Self.sample(after, "dmirr_sync_duration_seconds_count{source=\"peer\"}") ?? 0)
        #expect(durations == 2)
        // The example alert rules are valid for this Prometheus.
        let rules = try CLI.run("promtool", ["check", "rules", URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../contrib/alerts.yml").standardized.path], timeout: 30)
        #expect(rules.exitCode == 0, "\(rules.stdout)\(rules.stderr)")
        // Nothing but GET on a read-only listener; unknown paths are 404.
        #expect(try Self.get("http://127.0.0.1:\(fleet.httpPorts["m0"]!)/nothing").status == 404)
        let post = try CLI.run("curl", ["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", url], timeout: 30)
        #expect(post.stdout != "200", "POST /metrics answered \(post.stdout)")
    }

    @Test func statusJSONIsTheStatusCommandsDocument() throws {
        let fleet = try Fleet(size: 2, http: true)
        defer { fleet.stop(); fleet.dir.remove() }
        for name in fleet.names { try fleet.start(name) }
        #expect(fleet.waitUntil(seconds: 60) { fleet.allInSync("push-1", among: fleet.names) }, "\(fleet.logs())")
        // A quiet fleet: the two reads a moment apart describe the same state (a heartbeat is not in the document).
        var same = false
        var last = ""
        for _ in 0..<5 where !same {
            let http = try Self.get("http://127.0.0.1:\(fleet.httpPorts["m1"]!)/status.json")
            #expect(http.status == 200 && http.contentType.hasPrefix("application/json"))
            let cli = try CLI.dmirr(["status", "--json", "-c", fleet.configPath("m1")], timeout: 30)
            let a = try JSONSerialization.jsonObject(with: Data(http.body.utf8)) as? NSDictionary
            let b = try JSONSerialization.jsonObject(with: Data(cli.stdout.utf8)) as? NSDictionary
            same = a != nil && a == b
            last = "http:\n\(http.body)\ncli:\n\(cli.stdout)"
        }
        #expect(same, "\(last)")
    }

    /// The fleet page in a real browser at phone width: every member with its state and token, and after a push the
    /// new token without a reload (a marker set in the page survives). The page must not scroll sideways.
    @Test func theFleetPageShowsEveryMemberAndFollowsAPushWithoutAReload() throws {
        let fleet = try Fleet(size: 3, http: true)
        defer { fleet.stop(); fleet.dir.remove() }
        for name in fleet.names { try fleet.start(name) }
        #expect(fleet.waitUntil(seconds: 60) { fleet.allInSync("push-1", among: fleet.names) }, "\(fleet.logs())")
        let script = fleet.dir.sub("page.py")
        let ready = fleet.dir.sub("page-ready")
        try Self.browserScript.write(toFile: script, atomically: true, encoding: .utf8)
        let browser = Process()
        browser.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        browser.arguments = ["python3", script, "http://127.0.0.1:\(fleet.httpPorts["m2"]!)/", ready]
        let output = fleet.dir.sub("page.out")
        FileManager.default.createFile(atPath: output, contents: nil)
        browser.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
        browser.standardError = browser.standardOutput
        try browser.run()
        defer { if browser.isRunning { browser.terminate() } }
        #expect(fleet.waitUntil(seconds: 120) { FileManager.default.fileExists(atPath: ready) || !browser.isRunning },
                "\((try? String(contentsOfFile: output, encoding: .utf8)) ?? "")")
        try fleet.upstream.push(add: [.init("gamma", "1.0")], token: "push-2")
        #expect(fleet.waitUntil(seconds: 180) { !browser.isRunning }, "the page did not show push-2 everywhere")
        let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        #expect(browser.terminationStatus == 0, "\(text)")
        let lines = text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        let first = lines.first { $0["phase"] as? String == "first" }?["rows"] as? [[String]] ?? []
        #expect(Set(first.map { $0[0] }) == Set(fleet.names), "\(text)")
        #expect(first.allSatisfy { $0[1] == "in_sync" && $0[2] == "push-1" }, "\(first)")
        let layout = lines.first { $0["phase"] as? String == "layout" }
        #expect((layout?["scrollWidth"] as? Int ?? .max) <= (layout?["viewport"] as? Int ?? 0), "sideways scroll at phone width: \(layout ?? [:])")
        let second = lines.first { $0["phase"] as? String == "second" }
        let rows = second?["rows"] as? [[String]] ?? []
        #expect(Set(rows.map { $0[0] }) == Set(fleet.names) && rows.allSatisfy { $0[1] == "in_sync" && $0[2] == "push-2" }, "\(text)")
        #expect(second?["marker"] as? String == "still here", "the page was reloaded: \(text)")
    }

    /// Drives Chromium through Playwright: waits for the page to list the members on push-1, reports them and the
    /// layout at phone width, marks the page, signals the test to push, then waits (without reloading) until every
    /// row shows push-2 in sync.
    static let browserScript = """
        import json, sys, time
        from playwright.sync_api import sync_playwright
        url, ready = sys.argv[1], sys.argv[2]
        rows_js = "[...document.querySelectorAll('#members tr')].map(r => [r.dataset.node, r.dataset.state, r.dataset.token])"
        # Polled with evaluate() (the DevTools protocol) rather than wait_for_function, which the page's
        # Content-Security-Policy (no eval) rightly refuses.
        def wait_until(predicate, seconds):
            end = time.time() + seconds
            while time.time() < end:
                if predicate(page.evaluate(rows_js)):
                    return
                time.sleep(0.2)
            raise SystemExit("timed out; rows: " + json.dumps(page.evaluate(rows_js)))
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 390, "height": 844})
            page.goto(url)
            wait_until(lambda rows: len(rows) == 3 and all(r[2] == "push-1" for r in rows), 60)
            print(json.dumps({"phase": "first", "rows": page.evaluate(rows_js)}), flush=True)
            print(json.dumps({"phase": "layout", "scrollWidth": page.evaluate("document.documentElement.scrollWidth"), "viewport": 390}), flush=True)
            page.evaluate("window.dmirrMarker = 'still here'")
            open(ready, "w").write("ready")
            wait_until(lambda rows: len(rows) == 3 and all(r[1] == "in_sync" and r[2] == "push-2" for r in rows), 150)
            print(json.dumps({"phase": "second", "rows": page.evaluate(rows_js), "marker": page.evaluate("window.dmirrMarker")}), flush=True)
            browser.close()
        """
}
