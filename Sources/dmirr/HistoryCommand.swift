import ArgumentParser
import DmirrCore
import DmirrStore
import DmirrSync
import Foundation

struct HistoryCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "history", abstract: "List this mirror's last sync runs, newest first.")

    @OptionGroup var options: ConfigOptions

    @Flag(help: "Print JSON (an array of runs) instead of a table.")
    var json = false

    @Option(help: "How many runs to show.")
    var limit = 20

    func run() throws {
        let config = try options.load()
        guard FileManager.default.fileExists(atPath: config.state.dir + "/" + StateStore.fileName) else {
            if json { print("[]") } else { print("no sync runs recorded yet in \(config.state.dir)") }
            return
        }
        var runs: [SyncRun]
        do {
            runs = try StateStore(directory: config.state.dir).recentRuns(limit: max(1, limit))
        } catch {
            printError("error: \(error)")
            throw ExitCode(1)
        }
        // A run still `running` while nothing holds the sync lock was killed; the next run (or the agent's start) will
        // record it so. Shown as such now, without writing: history only reads.
        if runs.contains(where: { $0.outcome == SyncRun.Outcome.running.rawValue }), !SyncLock.isHeld(stateDirectory: config.state.dir) {
            for i in runs.indices where runs[i].outcome == SyncRun.Outcome.running.rawValue {
                runs[i].outcome = SyncRun.Outcome.interrupted.rawValue
                runs[i].error = runs[i].error ?? SyncRun.interruptedError
            }
        }
        if json {
            print(HistoryFormat.json(runs))
        } else {
            print(HistoryFormat.table(runs), terminator: "")
        }
    }
}

enum HistoryFormat {
    static func rfc3339(_ date: Date) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f.string(from: date)
    }

    static func json(_ runs: [SyncRun]) -> String {
        let objects: [[String: Any]] = runs.map { run in
            [
                "id": run.id ?? 0, "token": run.token ?? NSNull(), "source": run.source,
                "started_at": rfc3339(run.startedAt), "finished_at": run.finishedAt.map(rfc3339) ?? NSNull(),
                "outcome": run.outcome, "rsync_exit_code": run.rsyncExitCode ?? NSNull(), "bytes": run.bytes,
                "files": run.files, "error": run.error ?? NSNull(),
            ]
        }
        let data = try! JSONSerialization.data(withJSONObject: objects, options: [.prettyPrinted, .sortedKeys])
        return String(decoding: data, as: UTF8.self)
    }

    static func table(_ runs: [SyncRun]) -> String {
        var rows = [["STARTED", "OUTCOME", "TOKEN", "SOURCE", "TOOK", "BYTES", "FILES", "ERROR"]]
        for run in runs {
            let took = run.finishedAt.map { DurationText.format(.milliseconds(Int64($0.timeIntervalSince(run.startedAt) * 1000))) } ?? "-"
            let error = run.error.map { String($0.split(separator: "\n").first ?? "") } ?? ""
            rows.append([
                rfc3339(run.startedAt), run.outcome, Token(run.token ?? "-").short, run.source, took,
                ByteCount.format(run.bytes), "\(run.files)", error,
            ])
        }
        return TextTable.render(rows)
    }
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
enum TextTable {
    static func render(_ rows: [[String]]) -> String {
        guard let columns = rows.first?.count else { return "" }
        var widths = [Int](repeating: 0, count: columns)
        for row in rows { for (i, cell) in row.enumerated() where i < columns - 1 { widths[i] = max(widths[i], cell.count) } }
        return rows.map { row in
            row.enumerated().map { i, cell in
                i == columns - 1 ? cell : cell + String(repeating: " ", count: widths[i] - cell.count)
            }.joined(separator: "  ").replacingOccurrences(of: "\\s+$", with: "", options: .regularExpression)
        }.joined(separator: "\n") + "\n"
    }
}
