import DmirrFixtures
import DmirrTestSupport
import Foundation
import Testing

/// The campaigns' upstream bound ("never more than `slots` tree pulls at once") is read from the test upstream's own
/// record of its sessions. These tests hold that record to what real rsync clients did: a pull of a small tree takes
/// well under a second, so a record with whole-second stamps (the daemon's log) counted two pulls in the same second
/// as none at all, and a short pull inside a long one as not overlapping it.
@Suite struct UpstreamSessionsTests {
    @Test func overlappingPullsCountAsOverlappingAndBackToBackOnesDoNot() throws {
        let dir = try TestDirectory("upstream-sessions")
        defer { dir.remove() }
        let upstream = try Upstream(in: dir, packages: [.init("big", "1.0", sizeKB: 2048)], token: "push-1")
        defer { upstream.stop() }

        // Back to back: two quick pulls, one after the other, almost surely within one logged second.
        for i in 1...2 {
            let pull = try CLI.run("rsync", ["-a", upstream.url + "/", dir.sub("quick\(i)") + "/"])
            #expect(pull.exitCode == 0, "rsync: \(pull.stderr)")
        }
        let sequential = try Self.treePulls(upstream)
        #expect(sequential.count == 2, "sessions: \(sequential)")
        #expect(sequential.allSatisfy { $0.ended > $0.started }, "a session without length: \(sequential)")
        #expect(peakOverlap(sequential.map { ($0.started, $0.ended) }) == 1, "sessions: \(sequential)")

        // Overlapping: a pull of 2 MiB at 250 kB/s (about 8 s), and a quick one started once the daemon has begun it.
        let slow = Process()
        slow.executableURL = URL(fileURLWithPath: "/usr/bin/rsync")
        slow.arguments = ["-a", "--bwlimit=250", upstream.url + "/", dir.sub("slow") + "/"]
        slow.standardOutput = FileHandle.nullDevice
        slow.standardError = FileHandle.nullDevice
        try slow.run()
        defer { if slow.isRunning { kill(slow.processIdentifier, SIGKILL) } }
        func starts() -> Int {
            ((try? String(contentsOfFile: upstream.sessionTimesPath, encoding: .utf8)) ?? "").split(separator: "\n").filter { $0.hasPrefix("start ") }.count
        }
        let begun = Date().addingTimeInterval(30)
        while starts() < 3, Date() < begun { usleep(50_000) }
        #expect(starts() == 3, "the slow pull's session did not begin")
        let quick = try CLI.run("rsync", ["-a", upstream.url + "/", dir.sub("quick3") + "/"])
        #expect(quick.exitCode == 0, "rsync: \(quick.stderr)")
        let deadline = Date().addingTimeInterval(60)
        while slow.isRunning, Date() < deadline { usleep(50_000) }
        #expect(!slow.isRunning && slow.terminationStatus == 0, "the slow pull did not finish cleanly")
        // The daemon writes a session's end after its client is done: wait for the record to hold all four.
        var all: [Upstream.Session] = []
        for _ in 0..<50 {
            all = try Self.treePulls(upstream)
            if all.count == 4 { break }
            usleep(100_000)
        }
        #expect(all.count == 4, "sessions: \(all)")
        #expect(peakOverlap(all.map { ($0.started, $0.ended) }) == 2, "sessions: \(all)")
    }

    static func treePulls(_ upstream: Upstream) throws -> [Upstream.Session] {
        try upstream.sessions().sessions.filter(\.isTreePull).sorted { $0.started < $1.started }
    }
}
