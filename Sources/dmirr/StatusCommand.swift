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

    @Flag(help: "Print the JSON object of docs/design.md §5 instead of a table.")
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
            ask = { try await RemoteStatus.ask(address, tls: tls) }
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
            let view = StatusView(response)
            if watch, !json { print("\u{1B}[H\u{1B}[2J", terminator: "") }
            print(json ? view.json() : view.table(color: isatty(STDOUT_FILENO) == 1))
            if !watch { throw ExitCode(view.thisNodeInSync ? 0 : 1) }
            try await Task.sleep(for: .seconds(1))
        } while true
    }
}

/// One request to an agent over mTLS and its one answer (`dmirr status --peer`, `dmirr announce`).
enum PeerRequest {
    /// Sends `request`, then reads until `answer` picks a message out; throws if the agent closes first.
    static func ask<Answer: Sendable>(
        _ address: HostPort, tls: FleetTLS, _ request: WireEnvelope, answer: @escaping @Sendable (WireEnvelope) -> Answer?
    ) async throws -> Answer {
        let box = AnswerBox<Answer>()
        try await PeerClient.connect(host: address.host, port: address.port, tls: tls) { session, messages in
            try await session.send(request)
            for try await message in messages {
                if let value = answer(message) {
                    box.value = value
                    return
                }
            }
        }
        guard let value = box.value else { throw NetError(.connection, "\(address) closed without answering") }
        return value
    }

    final class AnswerBox<Value>: @unchecked Sendable {
        var value: Value?
    }
}

enum RemoteStatus {
    static func ask(_ address: HostPort, tls: FleetTLS) async throws -> WireStatusResponse {
        var request = WireEnvelope()
        request.statusRequest = .init()
        return try await PeerRequest.ask(address, tls: tls, request) {
            if case .statusResponse(let r) = $0.body { r } else { nil }
        }
    }
}

/// The status response rendered for people (a table) and for tools (docs/design.md §5 JSON).
struct StatusView {
    let response: WireStatusResponse

    init(_ response: WireStatusResponse) { self.response = response }

    struct Row {
        var node: String
        var state: String
        var token: String
        var source: String?
        var progress: Double?
        var lastSync: Date?
        var lastError: String?
        var position: Int?
    }

    var rows: [Row] {
        response.members.map { m in
            let r = m.record
            let state: String = m.liveness == "alive" ? Self.stateName(r.syncState) : m.liveness
            return Row(
                node: r.node, state: state, token: r.publishedToken, source: r.source.isEmpty ? nil : r.source,
                progress: r.progress >= 0 ? Double(r.progress) : nil,
                lastSync: r.lastSyncUnixMs > 0 ? Date(timeIntervalSince1970: Double(r.lastSyncUnixMs) / 1000) : nil,
                lastError: r.lastError.isEmpty ? nil : r.lastError, position: m.position > 0 ? Int(m.position) : nil)
        }.sorted { ($0.position ?? .max, $0.node) < ($1.position ?? .max, $1.node) }
    }

    static func stateName(_ s: WireSyncState) -> String {
        switch s {
        case .inSync: "in_sync"
        case .waiting: "waiting"
        case .syncing: "syncing"
        case .failed: "failed"
        case .behind, .unspecified, .UNRECOGNIZED: "behind"
        }
    }

    var thisNodeInSync: Bool {
        guard let me = response.members.first(where: { $0.record.node == response.node })?.record else { return false }
        return !response.targetToken.isEmpty && me.publishedToken == response.targetToken
    }

    static func rfc3339(_ d: Date) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime]
        return f.string(from: d)
    }

    func json() -> String {
        let members: [[String: Any]] = rows.map { r in
            [
                "node": r.node, "state": r.state, "token": r.token.isEmpty ? NSNull() as Any : r.token as Any, "position": r.position ?? NSNull() as Any,
                "source": r.source ?? NSNull(), "progress": r.progress ?? NSNull(),
                "last_sync": r.lastSync.map(Self.rfc3339) ?? NSNull(), "last_error": r.lastError ?? NSNull(),
            ]
        }
        let object: [String: Any] = [
            "fleet": response.fleet, "node": response.node,
            "target": [
                "token": response.targetToken.isEmpty ? NSNull() as Any : response.targetToken as Any,
                "seen_at": response.targetSeenUnixMs > 0
                    ? Self.rfc3339(Date(timeIntervalSince1970: Double(response.targetSeenUnixMs) / 1000)) as Any : NSNull() as Any,
            ],
            "plan": [
                "token": response.planToken.isEmpty ? NSNull() as Any : response.planToken as Any,
                "digest": response.planDigest.isEmpty ? NSNull() as Any : response.planDigest as Any,
                "agreed": response.planAgreed,
            ],
            "members": members,
        ]
        let data = try! JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
        return String(decoding: data, as: UTF8.self)
    }

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
