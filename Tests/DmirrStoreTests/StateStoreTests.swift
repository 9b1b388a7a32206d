import DmirrStore
import Foundation
import Testing

@Suite struct StateStoreTests {
    func tempDir() throws -> String {
        let dir = NSTemporaryDirectory() + "dmirr-store-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    @Test func runsRoundTripNewestFirst() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try StateStore(directory: dir)
        let t0 = Date(timeIntervalSince1970: 1_800_000_000)
        var first = SyncRun(token: "t1", source: "upstream", startedAt: t0)
        first.id = try store.beginRun(first)
        first.outcome = SyncRun.Outcome.synced.rawValue
        first.finishedAt = t0.addingTimeInterval(5)
        first.bytes = 123
        first.files = 4
        try store.finishRun(first)
        var second = SyncRun(token: "t1", source: "upstream", startedAt: t0.addingTimeInterval(60))
        second.id = try store.beginRun(second)

        let runs = try store.recentRuns(limit: 10)
        #expect(runs.map(\.id) == [second.id, first.id])
        #expect(runs[1] == first)
        #expect(runs[0].outcome == "running")
        #expect(try store.recentRuns(limit: 1).count == 1)
    }

    @Test func interruptedRunsAreMarkedOnReopen() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        do {
            let store = try StateStore(directory: dir)
            _ = try store.beginRun(SyncRun(token: "t", source: "upstream", startedAt: Date()))
        }
        let reopened = try StateStore(directory: dir)
        #expect(try reopened.markInterruptedRuns(at: Date()) == 1)
        #expect(try reopened.markInterruptedRuns(at: Date()) == 0)
        let run = try #require(try reopened.recentRuns(limit: 1).first)
        #expect(run.outcome == "interrupted")
        #expect(run.error?.contains("killed") == true)
        #expect(run.finishedAt != nil)
    }

    @Test func publishedTokenIsOneRow() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try StateStore(directory: dir)
        #expect(try store.published() == nil)
        try store.setPublished(token: "a", source: "upstream", at: Date(timeIntervalSince1970: 1))
        try store.setPublished(token: "b", source: "mirror-b", at: Date(timeIntervalSince1970: 2))
        let p = try #require(try store.published())
        #expect(p.token == "b" && p.source == "mirror-b" && p.at == Date(timeIntervalSince1970: 2))
    }

    @Test func databaseIsWALAndSchemaRejectsBadOutcomes() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try StateStore(directory: dir)
        _ = try store.beginRun(SyncRun(token: nil, source: "upstream", startedAt: Date()))
        // The sqlite3 CLI reads the real file: WAL mode is a property of the file, not of our connection.
        let mode = try Self.sqlite(store.path, "PRAGMA journal_mode;")
        #expect(mode == "wal")
        var bad = SyncRun(token: nil, source: "upstream", startedAt: Date())
        bad.outcome = "exploded"
        #expect(throws: StoreError.self) { _ = try store.beginRun(bad) }
    }

    @Test func unopenableDirectoryNamesThePath() {
        #expect {
            _ = try StateStore(directory: "/proc/definitely/not/here")
        } throws: { error in
            "\(error)".contains("/proc/definitely/not/here/state.sqlite")
        }
    }

    static func sqlite(_ path: String, _ sql: String) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["sqlite3", path, sql]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

@Suite struct MemberStoreTests {
    @Test func newestVersionWinsAndSurvivesReopen() throws {
        let dir = NSTemporaryDirectory() + "dmirr-members-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        do {
            let store = try StateStore(directory: dir)
            try store.saveMembers([.init(node: "b", signedRecord: [1], generation: 5, heartbeat: 9)], at: Date())
            // Older (same generation, lower heartbeat; or older generation) never replaces newer.
            try store.saveMembers([.init(node: "b", signedRecord: [2], generation: 5, heartbeat: 8)], at: Date())
            try store.saveMembers([.init(node: "b", signedRecord: [3], generation: 4, heartbeat: 99)], at: Date())
            try store.saveMembers([.init(node: "a", signedRecord: [4], generation: 1, heartbeat: 1)], at: Date())
        }
        let reopened = try StateStore(directory: dir)
        #expect(try reopened.members() == [
            .init(node: "a", signedRecord: [4], generation: 1, heartbeat: 1),
            .init(node: "b", signedRecord: [1], generation: 5, heartbeat: 9),
        ])
        try reopened.saveMembers([.init(node: "b", signedRecord: [5], generation: 6, heartbeat: 0)], at: Date())
        #expect(try reopened.members().last?.signedRecord == [5])
    }
}
