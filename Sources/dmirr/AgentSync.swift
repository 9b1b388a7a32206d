import DmirrAgent
import DmirrCore
import DmirrWire
import Foundation

/// `dmirr sync` beside a running agent: the agent owns the mirror (its lock, its plan), so the command asks it to check
/// upstream now and follows its work for this mirror through the control socket, printing the plan's answer and
/// progress, until the mirror publishes the target (0), the pull fails (1) or the timeout passes (75, the agent carries
/// on).
enum AgentSync {
    /// The control socket's path when an agent answers on it, else nil (then `dmirr sync` runs the pipeline itself).
    static func reachableAgent(_ config: Config) async -> String? {
        let path = Agent.controlPath(config)
        guard FileManager.default.fileExists(atPath: path), (try? await ControlClient.status(path: path)) != nil else { return nil }
        return path
    }

    /// - Parameters:
    ///   - source: "upstream", or a member to pull from now.
    ///   - force: re-check the tree against the source even if it holds our token.
    static func follow(path: String, source: String = "upstream", force: Bool = false, timeout: Duration) async -> Int32 {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        let asked = Int64(Date().timeIntervalSince1970 * 1000)
        // A pull from a named peer or a forced re-check starts at once (or is refused); a plain request is a fetch
        // of upstream's token, after which the agent's plan decides.
        let requested = source != "upstream" || force
        do {
            let first = try await ControlClient.requestSync(path: path, source: requested && source != "upstream" ? source : "", force: force)
            let what = requested ? "to pull from \(source) now\(force ? ", re-checking the whole tree" : "")" : "to check upstream now"
            print("asked the running agent (\(first.node)) \(what); following its work (--timeout \(DurationText.format(timeout)))")
        } catch {
            printError("dmirr sync: \(error)")
            return 2
        }
        var shown = ""
        while clock.now < deadline {
            guard let status = try? await ControlClient.status(path: path) else {
                printError("dmirr sync: the agent stopped answering on \(path)")
                return 1
            }
            let line = describe(status)
            if line != shown {
                shown = line
                print("  \(line)")
            }
            switch requested ? ControlClient.requestedPullVerdict(status) : ControlClient.verdict(status, askedAtMillis: asked) {
            case .published(let token):
                print("published \(token)")
                return 0
            case .failed(let why):
                printError("dmirr sync: the agent's pull failed: \(why.isEmpty ? "see the agent's log" : why)")
                return 1
            case .pending:
                break
            }
            try? await Task.sleep(for: .milliseconds(250))
        }
        printError("dmirr sync: not done after \(DurationText.format(timeout)); the agent carries on (`dmirr status` follows it)")
        return 75
    }

    /// One line for where this mirror stands in the agent's plan.
    static func describe(_ status: WireStatusResponse) -> String {
        guard let me = status.members.first(where: { $0.record.node == status.node }) else { return "waiting for the agent's view" }
        let r = me.record
        let target = status.targetToken.isEmpty ? "unknown" : status.targetToken
        let position = me.position > 0 ? "position \(me.position) of \(status.planMembers) in the plan for \(status.planToken.isEmpty ? target : status.planToken)" : "not in a plan yet"
        switch r.syncState {
        case .syncing:
            let progress = r.progress >= 0 ? String(format: " (%.0f%%)", r.progress * 100) : ""
            return "pulling \(target) from \(r.source.isEmpty ? "?" : r.source)\(progress); \(position)"
        case .inSync:
            return "in sync on \(r.publishedToken.isEmpty ? "nothing" : r.publishedToken); target \(target)"
        case .waiting:
            let why = status.lastPollError.isEmpty ? "" : "; upstream: \(status.lastPollError.prefix(120))"
            return "waiting for \(target): \(position)\(why)"
        case .failed:
            return "failed: \(r.lastError.prefix(200))"
        case .behind, .unspecified, .UNRECOGNIZED:
            return "behind: holds \(r.publishedToken.isEmpty ? "nothing" : r.publishedToken), target \(target)"
        }
    }
}
