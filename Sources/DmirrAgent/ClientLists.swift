import DmirrCore
import Foundation
import Synchronization

/// The mirrorlist and metalink every agent serves to clients (docs/clients.md): who to list comes from the fleet's
/// signed records as this agent holds them, the checksums of `repomd.xml` from this mirror's own manifest of the target
/// token, and only when enough members attest that manifest's root from their own upstream pulls (never one member's
/// word). Answers are bounded (``MirrorList/maxURLs``), the member view and the manifest are cached per token, and each
/// client address gets a token bucket.
final class ClientLists: Sendable {
    struct Reply: Sendable, Equatable {
        var status: Int
        var body: String
        var contentType: String
        /// For 429: when to come back (seconds).
        var retryAfter: Int? = nil
        /// The token every listed mirror publishes (the `X-Dmirr-Token` header).
        var token: String? = nil
    }

    /// Per client address: `rate` requests a second (0: no limit), bursts of `burst`; at most `clients` addresses
    /// tracked.
    struct Limits: Sendable {
        var rate = 10.0
        var burst = 40.0
        var clients = 10_000
    }

    private let node: FleetNode
    private let clock: any AgentClock
    private let tree: String
    private let attestations: Int
    private let limits: Limits

    private struct State {
        /// The member view, reused for a second (a busy listener asks the actor once a second, not per request).
        var view: View?
        /// `repomd.xml` entries of the last manifest of our own tree that enough members attested (it stays, for the
        /// transition to the next token, until another replaces it).
        var manifest: (token: String, root: String, repomds: [String: TreeManifest.Entry])?
        var buckets: [String: (tokens: Double, at: Duration)] = [:]
    }
    private let state = Mutex(State())

    /// The fleet as the answers need it, refreshed once a second at most: the target, who may be listed for it (the
    /// same for every client), and the manifest roots of the listed token that enough members attest.
    struct View {
        var at: Duration
        var target: String
        var members: [MirrorList.Member]
        var candidates: MirrorList.Candidates?
        var roots: Set<String>
    }

    init(node: FleetNode, clock: any AgentClock, tree: String, attestations: Int, limits: Limits = .init()) {
        self.node = node
        self.clock = clock
        self.tree = tree
        self.attestations = attestations
        self.limits = limits
    }

    /// `GET /mirrorlist?path=…`: one URL per line.
    func mirrorlist(path raw: String?, client: String, region: String?) async -> Reply {
        if let refusal = admit(client) { return refusal }
        guard let path = raw.flatMap(MirrorList.repositoryPath) else { return Self.badPath(raw) }
        guard isRepository(path) else { return Self.unknown(path) }
        let view = await currentView()
        guard let candidates = view.candidates else {
            return Reply(status: 503, body: "no member of the fleet has a [mirror] public_url yet\n", contentType: "text/plain; charset=utf-8")
        }
        let answer = MirrorList.order(candidates, client: client, region: region)
        return Reply(status: 200, body: MirrorList.text(answer, path: path, target: view.target), contentType: "text/plain; charset=utf-8",
                     token: answer.token)
    }

    /// `GET /metalink?path=…`: the metalink 3.0 document for `PATH/repodata/repomd.xml`.
    func metalink(path raw: String?, client: String, region: String?) async -> Reply {
        if let refusal = admit(client) { return refusal }
        guard let path = raw.flatMap(MirrorList.repositoryPath) else { return Self.badPath(raw) }
        guard isRepository(path) else { return Self.unknown(path) }
        let view = await currentView()
        guard let candidates = view.candidates else { return Self.unavailable("no member of the fleet has a [mirror] public_url yet") }
        // Right after a push, until a mirror publishes the target, the answer is of the newest token held (as the
        // mirrorlist's): its mirrors are consistent with the checksums of that token's manifest.
        let target = view.target.isEmpty ? "(unknown yet)" : view.target
        switch repomd(path: path, token: candidates.token, roots: view.roots) {
        case .found(let entry):
            let note = candidates.current ? nil : "no mirror publishes the fleet's target token \(target) yet; these publish \(candidates.token)"
            return metalink(entry, candidates, path: path, client: client, region: region, note: note)
        case .missing(let why):
            // The newest tree is not attested yet (fewer upstream pulls of it than `attestations`), or this mirror does
            // not publish it yet: while mirrors still publish the tree this agent last served, answer with that one.
            // It was attested when it was accepted, and its checksums match what those mirrors serve.
            let file = Self.repomdFile(path)
            if let previous = state.withLock({ $0.manifest }), previous.token != candidates.token, let entry = previous.repomds[file],
                let held = MirrorList.candidates(view.members, target: previous.token), held.current
            {
                return metalink(entry, held, path: path, client: client, region: region,
                                note: "the fleet's target is \(target), but \(why); these publish \(previous.token)")
            }
            return Self.unavailable(why)
        }
    }

    private func metalink(_ entry: TreeManifest.Entry, _ candidates: MirrorList.Candidates, path: String, client: String, region: String?,
                          note: String?) -> Reply {
        let answer = MirrorList.order(candidates, client: client, region: region)
        let document = Metalink.document(
            file: .init(size: entry.size, mtime: entry.mtime, sha256: entry.sha256), members: answer.members, path: path,
            published: Self.rfc1123(clock.wallNow), note: note)
        return Reply(status: 200, body: document, contentType: "application/metalink+xml; charset=utf-8", token: answer.token)
    }

    // MARK: Parts

    /// A token bucket per client address; nil when the request may go on.
    private func admit(_ client: String) -> Reply? {
        let limits = self.limits
        guard limits.rate > 0 else { return nil }
        let now = clock.now
        let allowed = state.withLock { state -> Bool in
            if state.buckets[client] == nil, state.buckets.count >= limits.clients {
                // Forget addresses that have been quiet long enough to have refilled; if none has, refuse the newcomer.
                let full = Duration.seconds(limits.burst / limits.rate)
                state.buckets = state.buckets.filter { now - $0.value.at < full }
                guard state.buckets.count < limits.clients else { return false }
            }
            var bucket = state.buckets[client] ?? (limits.burst, now)
            let elapsed = Double((now - bucket.at).components.seconds) + Double((now - bucket.at).components.attoseconds) / 1e18
            bucket.tokens = min(limits.burst, bucket.tokens + elapsed * limits.rate)
            bucket.at = now
            guard bucket.tokens >= 1 else {
                state.buckets[client] = bucket
                return false
            }
            bucket.tokens -= 1
            state.buckets[client] = bucket
            return true
        }
        return allowed ? nil : Reply(status: 429, body: "too many requests from \(client); retry in a second\n",
                                     contentType: "text/plain; charset=utf-8", retryAfter: 1)
    }

    private func currentView() async -> View {
        let now = clock.now
        if let view = state.withLock({ $0.view }), now - view.at < .seconds(1) { return view }
        let fresh = await node.clientView()
        let candidates = MirrorList.candidates(fresh.members, target: fresh.target)
        let roots = candidates.map { Attestations.acceptedRoots(for: $0.token, claims: fresh.claims, needed: attestations) } ?? []
        let view = View(at: now, target: fresh.target, members: fresh.members, candidates: candidates, roots: roots)
        state.withLock { $0.view = view }
        return view
    }

    /// `PATH/repodata/repomd.xml` relative to the tree (`repodata/repomd.xml` for the root).
    private static func repomdFile(_ path: String) -> String {
        (path.isEmpty ? "" : path + "/") + "repodata/repomd.xml"
    }

    /// Whether this mirror's tree has a yum repository at `path` (its `repodata/repomd.xml`).
    private func isRepository(_ path: String) -> Bool {
        FileManager.default.fileExists(atPath: tree + "/" + Self.repomdFile(path))
    }

    enum Lookup {
        case found(TreeManifest.Entry)
        case missing(String)
    }

    /// The manifest entry of `PATH/repodata/repomd.xml` for `token`, from our own published manifest, whose root must
    /// be one that enough members attest.
    private func repomd(path: String, token: String, roots: Set<String>) -> Lookup {
        let file = Self.repomdFile(path)
        // A root accepted for this token stays accepted when its attesters move on to a newer token (their records
        // then attest that one, and no root of this token is attested any more); a different attested root replaces it.
        if let cached = state.withLock({ $0.manifest }), cached.token == token, roots.isEmpty || roots.contains(cached.root) {
            return cached.repomds[file].map { .found($0) } ?? .missing("the manifest of \(token) has no \(file)")
        }
        guard !roots.isEmpty else {
            return .missing("no manifest of \(token) is attested by \(attestations) members' own upstream pulls yet")
        }
        guard let data = FileManager.default.contents(atPath: tree + "/" + TreeManifest.fileName) else {
            return .missing("this mirror has no manifest of \(token); ask another member's agent")
        }
        let bytes = [UInt8](data)
        let root = TreeManifest.root(of: bytes)
        guard roots.contains(root), let manifest = try? TreeManifest.decode(bytes), manifest.token == token else {
            return .missing("this mirror does not publish the attested tree of \(token) yet; ask another member's agent")
        }
        var repomds: [String: TreeManifest.Entry] = [:]
        for entry in manifest.entries where entry.kind == .file && (entry.path == "repodata/repomd.xml" || entry.path.hasSuffix("/repodata/repomd.xml")) {
            repomds[entry.path] = entry
        }
        state.withLock { $0.manifest = (token, root, repomds) }
        return repomds[file].map { .found($0) } ?? .missing("the manifest of \(token) has no \(file)")
    }

    private static func badPath(_ raw: String?) -> Reply {
        Reply(status: 400, body: raw == nil ? "give the repository as ?path=DIR (like el9/x86_64)\n"
            : "'\(String(raw!.prefix(100)))' is not a repository path (segments of letters, digits, '.', '_', '+', '-')\n",
              contentType: "text/plain; charset=utf-8")
    }

    private static func unknown(_ path: String) -> Reply {
        Reply(status: 404, body: "no repository at '\(path)' in this mirror's tree (no \(path.isEmpty ? "" : path + "/")repodata/repomd.xml)\n",
              contentType: "text/plain; charset=utf-8")
    }

    private static func unavailable(_ why: String) -> Reply {
        Reply(status: 503, body: why + "\n", contentType: "text/plain; charset=utf-8", retryAfter: 30)
    }

    /// `Wed, 02 Dec 2026 02:00:00 GMT`. Plain arithmetic (days since the epoch to a civil date in the proleptic
    /// Gregorian calendar): a `Calendar` per request cost more than the rest of a metalink answer.
    static func rfc1123(_ date: Date) -> String {
        let seconds = Int64(date.timeIntervalSince1970.rounded(.down))
        let days = seconds >= 0 ? seconds / 86_400 : (seconds - 86_399) / 86_400
        let inDay = seconds - days * 86_400
        // Era arithmetic over 400-year cycles, counting years from March so that leap days fall at a year's end.
        let shifted = days + 719_468
        let era = (shifted >= 0 ? shifted : shifted - 146_096) / 146_097
        let dayOfEra = shifted - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let monthFromMarch = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * monthFromMarch + 2) / 5 + 1
        let month = monthFromMarch < 10 ? monthFromMarch + 3 : monthFromMarch - 9
        let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
        // 1970-01-01 was a Thursday.
        let weekday = Int(((days % 7) + 7 + 4) % 7)
        let names = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        func two(_ n: Int64) -> String { n < 10 ? "0\(n)" : "\(n)" }
        return "\(names[weekday]), \(two(day)) \(months[Int(month) - 1]) \(year) \(two(inDay / 3600)):\(two(inDay / 60 % 60)):\(two(inDay % 60)) GMT"
    }
}
