import ArgumentParser
import DmirrAgent
import DmirrCore
import DmirrNet
import DmirrWire
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show the fleet as this node's agent sees it.",
        discussion: "Exit 0 when this mirror has the target token, 1 when it is behind, 2 on error (no agent, bad config)."
    )

    @OptionGroup var options: ConfigOptions

    @Option(help: "Ask a remote agent over mTLS instead of the local control socket (HOST:PORT); needs --cert, --key, --ca.")
    var peer: String?

    @Option(help: "With --peer: an operator (or node) certificate of the fleet.")
    var cert: String?

    @Option(help: "With --peer: its private key.")
    var key: String?

    @Option(help: "With --peer: the fleet CA.")
    var ca: String?

    @Flag(help: "Print the JSON object of docs/architecture.md §5 instead of a table.")
    var json = false

    @Flag(help: "Redraw every second until interrupted.")
    var watch = false

    func run() async throws {
        let ask: @Sendable () async throws -> WireStatusResponse
        let target: String
        if let peer {
            guard let address = HostPort(peer), let cert, let key, let ca else {
                printError("error: --peer needs HOST:PORT and --cert, --key and --ca")
                throw ExitCode(2)
            }
            let tls: FleetTLS
            do { tls = try FleetTLS(caPath: ca, certPath: cert, keyPath: key) } catch {
                printError("error: \(error)")
                throw ExitCode(2)
            }
            target = peer
            ask = { try await FleetClient.status(at: address, tls: tls) }
        } else {
            let config = try options.load()
            let path = Agent.controlPath(config)
            target = path
            ask = { try await ControlClient.status(path: path) }
        }
        repeat {
            let response: WireStatusResponse
            do {
                response = try await ask()
            } catch {
                printError("dmirr status: cannot ask the agent at \(target): \(error) (is `dmirr agent` running there?)")
                throw ExitCode(2)
            }
            let view = FleetStatusView(response)
            if watch, !json { print("\u{1B}[H\u{1B}[2J", terminator: "") }
            print(json ? view.json() : view.table(color: isatty(STDOUT_FILENO) == 1))
            if !watch { throw ExitCode(view.thisNodeInSync ? 0 : 1) }
            try await Task.sleep(for: .seconds(1))
        } while true
    }
}

/// The status table for people; the JSON document is ``FleetStatusView/json()``.
extension FleetStatusView {
    func table(color: Bool) -> String {
        let target = response.targetToken
        var lines = [["POS", "NODE", "STATE", "TOKEN", "LAG", "SOURCE", "PROGRESS", "LAST SYNC", "ERROR"]]
        for r in rows {
            let lag = r.token.isEmpty ? "-" : (r.token == target ? "0" : "behind")
            let progress = r.progress.map { String(format: "%3.0f%%", $0 * 100) } ?? "-"
            let lastSync = r.lastSync.map { DurationText.format(.seconds(Int64(Date().timeIntervalSince($0)))) + " ago" } ?? "never"
            lines.append([r.position.map(String.init) ?? "-", r.node, r.state, Token(r.token).short.isEmpty ? "-" : Token(r.token).short, lag, r.source ?? "-", progress, lastSync, r.lastError ?? ""])
        }
        var out = "fleet \(response.fleet), seen from \(response.node); target \(target.isEmpty ? "unknown" : target)"
        if !response.planDigest.isEmpty {
            out += "; plan \(response.planDigest) \(response.planAgreed ? "agreed" : "not agreed") "
                + "(\(response.planAgreeing) of \(response.planMembers))"
        }
        out += "\n"
        if let notAfter = certificateNotAfter {
            let left = notAfter.timeIntervalSinceNow
            if left <= 0 {
                out += "certificate of \(response.node) EXPIRED at \(Self.rfc3339(notAfter)): peers refuse it; issue a new one and send its agent SIGHUP\n"
            } else if left <= FleetNode.expiryWarning {
                out += "certificate of \(response.node) expires in \(DurationText.format(.seconds(Int64(left)))) (\(Self.rfc3339(notAfter))); issue a new one and send its agent SIGHUP\n"
            }
        }
        out += TextTable.render(lines)
        guard color else { return out }
        let colors = ["in_sync": "32", "syncing": "36", "waiting": "33", "behind": "33", "failed": "31", "suspect": "33", "down": "31"]
        return out.split(separator: "\n", omittingEmptySubsequences: false).map { line -> String in
            for (state, code) in colors where line.contains("  \(state)  ") {
                return "\u{1B}[\(code)m\(line)\u{1B}[0m"
            }
            return String(line)
        }.joined(separator: "\n")
    }
}
