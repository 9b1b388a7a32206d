/// One member's side of "slots by consensus" (docs/architecture.md §4), sans I/O like ``Membership``: the agent and the
/// simulator feed it the gossiped view, upstream token observations and pull results, with the time, and carry out
/// its directives (poll upstream, start or cancel a pull, advertise fields in our member record).
///
/// - **Target.** The token upstream serves. Watchers (the first `watchers` members of a fixed hash order) poll every
///   `poll` (not while a member pulls from upstream: that pull reads upstream's token, and a full daemon would refuse
///   the poll); the others every `fallbackPoll`, and once when the plan for a gossiped token they have not confirmed
///   first gives them a source (members that must wait anyway do not all fetch at once). A
///   member pulls a token it confirmed itself (one small fetch), so a peer cannot send the fleet after a token
///   upstream does not serve. The one exception: when our own fetch fails (upstream refuses us as busy, or cannot be
///   reached from here), a token whose manifest `attestations` distinct live members attest (each from its own
///   upstream pull) counts as confirmed, so a member cut off from upstream still follows the fleet through its peers.
///   One member's word is never enough unless the operator sets `attestations = 1`. A token only gossip told us of
///   never cancels a running pull, and a token older than the one we hold is never adopted.
/// - **Attestations.** A member that published a token from its own upstream pull attests it: the token and the root of
///   its manifest go into its record. Peers serve a token only once a root of it is attested by `attestations`
///   members and by more members than any other root of it (a tie between roots serves nobody); pullers check the
///   peer's manifest against that root and the tree against the manifest.
/// - **Plan.** From the live members' records it computes ``SyncPlan`` and advertises the plan's digest. Peer pulls
///   start at once (the source's serving limit is the hard backstop). An upstream pull starts when more than half of
///   the members known (live and suspected) advertise the same digest, or `agreementDeadline` after this member was
///   first planned upstream.
/// - **Patience.** A pull with no progress for `stallAfter` is cancelled and its source avoided, and so is a peer pull
///   that `overtakenBy` members who started after it have overtaken (once per token). A source that
///   refused (busy) is avoided for `busyBackoff`; a peer that failed or held the wrong token, for the rest of the
///   token; upstream is never avoided for longer than `busyBackoff`, except that a member whose own token fetch
///   failed avoids upstream until a fetch answers (so the plan gives its upstream slots to members that can use
///   them) and fetches again every `busyBackoff` meanwhile (watchers too, rather than every `poll`).
public struct SyncCoordinator: Sendable {
    public struct Configuration: Sendable {
        public var upstreamSlots = 2
        public var serveSlots = 4
        public var poll: Duration = .seconds(60)
        public var fallbackPoll: Duration = .seconds(600)
        public var watchers = 2
        public var agreementDeadline: Duration = .seconds(5)
        public var stallAfter: Duration = .seconds(120)
        public var busyBackoff: Duration = .seconds(30)
        /// A peer pull is abandoned as too slow once this many members that were still waiting when it started have
        /// finished the same token before it, and at its rate so far the rest would take longer than `stallAfter`.
        /// Once per token, so that a member whose own link is the slow part does not hop from source to source.
        public var overtakenBy = 3
        /// How many distinct members must attest a manifest root, from their own upstream pulls, before peers serve the
        /// token and before a member that cannot reach upstream takes it as confirmed.
        public var attestations = 2

        public init() {}
    }

    /// What the coordinator wants in our member record.
    public struct Advertised: Sendable, Equatable {
        public var targetToken = ""
        public var targetSeenMillis: Int64 = 0
        /// The running pull's source ("" when none).
        public var source = ""
        public var avoid: [String] = []
        public var planDigest = ""
        public var serveSlots = 0
        /// The token we pulled from upstream ourselves and the root of its manifest ("" when none).
        public var attestToken = ""
        public var attestRoot = ""
    }

    public enum Directive: Sendable, Equatable {
        /// Fetch upstream's token file and report it with ``onUpstreamToken(_:wallMillis:now:)``.
        case pollUpstream
        /// Pull `token`'s tree from `source` (a peer pull is pinned: the source must hold exactly `token`).
        case startPull(PlanSource, token: String)
        /// Cancel the running pull, then report it finished as ``PullOutcome/cancelled``.
        case cancelPull(reason: String)
        /// Put these fields in our member record.
        case advertise(Advertised)
        case wake(after: Duration)
    }

    public enum PullOutcome: Sendable, Equatable {
        /// Published `token` (for an upstream pull, whatever upstream served by then).
        case synced(token: String)
        /// Refused for lack of slots (rsync exit 5 "max connections", our lock…).
        case busy
        /// The source's token file was not the pinned token.
        case tokenMismatch(found: String)
        case failed(String)
        case cancelled
    }

    public struct Running: Sendable, Equatable {
        public var source: PlanSource
        public var token: String
        public var started: Duration
        public var lastProgress: Duration
        /// Members neither holding nor pulling the token when this pull started.
        public var waitingAtStart: Set<String> = []
        /// How much is done, as last reported.
        public var fraction = 0.0
        /// The operator asked for it (`dmirr sync --source/--force` beside the agent): the plan neither cancels nor
        /// replaces it; only a stall ends it early.
        public var requested = false

        /// At the rate so far, how long the rest will take (nil before any progress).
        public func remaining(now: Duration) -> Duration? {
            guard fraction > 0.001 else { return nil }
            return (now - started) * ((1 - min(fraction, 1)) / fraction)
        }
    }

    /// What this member's pull side is doing: the one state that says whether a pull runs or is about to.
    public enum Mode: Sendable, Equatable {
        /// No pull, none about to start: no target yet, holding it, or no source (or no confirmation) for us yet.
        case idle
        /// The plan gives us upstream: we wait for the fleet to agree on the plan, since `since` and at most
        /// `agreementDeadline`.
        case awaitingAgreement(since: Duration)
        case pulling(Running)
    }

    /// Our own fetches of upstream's token file.
    public enum Poll: Sendable, Equatable {
        /// None waiting for an answer; the last was asked for at `lastIssued` (nil: never).
        case idle(lastIssued: Duration?, failed: Bool)
        /// One asked for at `issued` has not answered yet.
        case pending(issued: Duration, failed: Bool)

        public var isPending: Bool { if case .pending = self { true } else { false } }
        /// When the newest fetch was asked for.
        public var lastIssued: Duration? {
            switch self {
            case .idle(let last, _): last
            case .pending(let issued, _): issued
            }
        }
        /// The last answer was a failure (upstream refused us as busy, or cannot be reached from here); cleared by the
        /// next answer that succeeds.
        public var failed: Bool {
            switch self {
            case .idle(_, let failed), .pending(_, let failed): failed
            }
        }
    }

    public let me: String
    public var configuration: Configuration
    public private(set) var publishedToken: String
    /// The newest token we know of, and whether our own fetch confirmed it.
    public private(set) var target: (token: String, seenMillis: Int64, confirmed: Bool)?
    public private(set) var mode: Mode = .idle
    public private(set) var poll: Poll = .idle(lastIssued: nil, failed: false)
    /// The running pull, if any.
    public var running: Running? {
        if case .pulling(let r) = mode { r } else { nil }
    }
    public private(set) var plan: SyncPlan?
    public private(set) var agreed = false
    /// How many live members advertise our plan's digest, ourselves included, out of how many members known.
    public private(set) var agreement = (same: 0, of: 0)
    private var view: [MemberRecord] = [] {
        didSet {
            viewStamp &+= 1
            watcher = nil
        }
    }
    private var suspected = 0
    /// Suspected members that reported an upstream pull: their slots stay taken until they are down.
    private var holding: [MemberRecord] = [] {
        didSet { viewStamp &+= 1 }
    }
    /// Counts changes of `view`: a plan and its agreement are recomputed only when the view or our own part changed,
    /// so that an idle round costs O(1) rather than a pass over every member.
    private var viewStamp = 0
    private var lastPlanKey: PlanKey?
    private var lastOrder: (token: String, nodes: [String], order: [String])?
    private var watcher: Bool?
    /// Each member's key in the watcher order, computed once.
    private var watchKeys: [String: [UInt8]] = [:]
    /// Some other live member is pulling from upstream: its pull reads upstream's token, so polling adds nothing but a
    /// connection a full daemon may refuse.
    private var upstreamInUse = false
    private var firstView: Duration?
    /// Avoided sources: until when (nil: for the rest of the target token).
    private var avoid: [PlanSource: Duration?] = [:]
    /// When our own part of the plan last went back to one the fleet may still advertise from before: our avoidance of
    /// upstream ended (its backoff ran out), or a pull of the target ended without it. Meanwhile the fleet gave the
    /// upstream slot that plan had for us to the next member in slot order, and it may have started; our records
    /// saying where we are, and its saying it pulls, need the agreement deadline to cross. Until then the agreement we
    /// count is stale: plan digests name who pulls from upstream, so the old plan's digest is the new one's.
    private var rejoinedAt: Duration?
    /// When the poll whose answer we last took was issued: an answer to an older poll (one given up as lost, answering
    /// late) must not overwrite newer news.
    private var newestAnswerPolledAt: Duration?
    /// We already gave up one source of the target token for being slow (see `Configuration.overtakenBy`).
    private var abandonedSlowSource = false
    private var overtakeCheckedAt = -1
    private var overtaken = 0
    /// Tokens gossip offered that our own fetch then contradicted (the newest 64).
    private var refuted: [String] = []
    /// The newest target we advertise: confirmed by our own fetch or attested (see `advertise`).
    private var shownTarget: (token: String, seenMillis: Int64)?
    /// The members whose attestations stood in for our own fetch, when they did ("a, b").
    public private(set) var vouchedBy: String?
    public private(set) var advertised: Advertised?
    /// What we attest: a token we published from our own upstream pull, and its manifest's root.
    public private(set) var attestation: (token: String, root: String)?

    /// - Parameters:
    ///   - publishedSeenMillis: when given, the published token is our starting target, as seen at that time (Unix
    ///     ms; the time it was published is a safe choice): gossip of a token seen earlier, that is an older one, is
    ///     then never adopted, so a restart cannot take the mirror back to a peer's older token.
    ///   - attestation: what we attested before a restart.
    public init(
        me: String, publishedToken: String, publishedSeenMillis: Int64? = nil, attestation: (token: String, root: String)? = nil,
        configuration: Configuration = .init()
    ) {
        self.me = me
        self.publishedToken = publishedToken
        self.configuration = configuration
        self.attestation = attestation
        if let publishedSeenMillis, !publishedToken.isEmpty {
            target = (publishedToken, publishedSeenMillis, true)
        }
    }

    /// We published `token` from our own upstream pull with a manifest of root `root`: attest it.
    public mutating func attest(token: String, root: String) {
        attestation = (token, root)
    }

    /// The manifest roots of `token` that peers may serve: the one root attested by at least `attestations` distinct
    /// live members (ourselves included) and by more of them than any other root of the token. Empty when none is.
    public func attestedRoots(for token: String) -> Set<String> {
        var claims = view.map { Attestations.Claim(node: $0.node, token: $0.attestToken, root: $0.attestRoot) }
        if let attestation { claims.append(.init(node: me, token: attestation.token, root: attestation.root)) }
        return Attestations.acceptedRoots(for: token, claims: claims, needed: configuration.attestations)
    }

    /// When live members attest different roots of `token`: each root with its attesters, the most attested first
    /// (empty when they agree). Members disagree about what upstream served; at most one side tells the truth.
    public func disputedRoots(for token: String) -> [(root: String, nodes: [String])] {
        var byRoot: [String: [String]] = [:]
        for r in view where r.attestToken == token && !r.attestRoot.isEmpty { byRoot[r.attestRoot, default: []].append(r.node) }
        if let attestation, attestation.token == token { byRoot[attestation.root, default: []].append(me) }
        guard byRoot.count > 1 else { return [] }
        return byRoot.map { ($0.key, $0.value.sorted()) }.sorted { ($0.nodes.count, $1.root) > ($1.nodes.count, $0.root) }
    }

    /// The live members attesting `root` for `token`, sorted (for logs and status).
    public func attesters(of token: String, root: String) -> [String] {
        var nodes = view.filter { $0.attestToken == token && $0.attestRoot == root }.map(\.node)
        if let attestation, attestation == (token, root) { nodes.append(me) }
        return nodes.sorted()
    }

    // MARK: Events

    /// The live members' records as gossip has them (ours may be among them; our own state is taken from here).
    ///
    /// - Parameter suspects: members suspected but not yet judged down. They take no part in the plan, except that an
    ///   upstream pull one of them reported, for any token, keeps its slot until it is down: a member that merely
    ///   stopped answering (stopped, cut off from its peers) may still be pulling, or pulling again, and giving its
    ///   slot away would exceed the fleet's bound on upstream. Freeing the slot of a member that really died waits for
    ///   `down_after` instead.
    public mutating func onView(_ records: [MemberRecord], suspects: [MemberRecord] = [], wallMillis: Int64, now: Duration) -> [Directive] {
        view = records.filter { $0.node != me }
        holding = suspects.filter { $0.node != me && $0.syncState == .syncing && $0.source == PlanSource.upstream.recordValue }
        suspected = suspects.filter { $0.node != me }.count
        upstreamInUse = view.contains { $0.syncState == .syncing && $0.source == PlanSource.upstream.recordValue }
        if firstView == nil { firstView = now }
        // Nothing was seen in the future: a time stamped before the wall clock was corrected back (see
        // ``wallClockCorrected(by:)``) would otherwise outrank every newer claim until the clock caught up with it.
        if let seen = target?.seenMillis, seen > wallMillis { target!.seenMillis = wallMillis }
        // A newer token than ours in someone's record: adopt it unconfirmed and confirm it with one fetch. Claims from
        // the future (beyond a minute of clock skew) are ignored.
        if let newest = view.filter({
            !$0.targetToken.isEmpty && $0.targetSeenMillis <= wallMillis + 60_000 && (refuted.isEmpty || !refuted.contains($0.targetToken))
        })
            .max(by: { ($0.targetSeenMillis, $0.targetToken) < ($1.targetSeenMillis, $1.targetToken) }),
            newest.targetToken != target?.token, newest.targetSeenMillis > (target?.seenMillis ?? .min)
        {
            // Confirmed when the plan first gives us a source (see `replan`): members that must wait anyway do not
            // all fetch upstream's token at once, which a busy upstream would refuse.
            setTarget(newest.targetToken, seenMillis: newest.targetSeenMillis, confirmed: false)
        }
        return decide(now: now)
    }

    /// The operator asks for a pull now (`dmirr sync --source NODE` or `--force` beside the agent): from `source`,
    /// of `token` (for a peer, the token it holds, pinned). Outside the plan, so refused (nil) while a pull runs;
    /// once started, the plan does not cancel it, and others see its source in our record like any pull's.
    public mutating func onRequestedPull(_ source: PlanSource, token: String, now: Duration) -> [Directive]? {
        guard running == nil else { return nil }
        mode = .pulling(Running(source: source, token: token, started: now, lastProgress: now, requested: true))
        return [.startPull(source, token: token)] + advertise()
    }

    /// The agent corrected its wall clock by `deltaMillis` to the fleet's (``ClockOffset``): when we first saw our target,
    /// stamped by the clock before, moves with it, so that our record does not carry a time the fleet's clock has not
    /// reached (refused by every member beyond a minute) or one long past.
    public mutating func wallClockCorrected(by deltaMillis: Int64) -> [Directive] {
        guard deltaMillis != 0 else { return [] }
        if target != nil { target!.seenMillis &+= deltaMillis }
        if shownTarget != nil { shownTarget!.seenMillis &+= deltaMillis }
        return advertise()
    }

    /// What our own fetch of upstream's token file found.
    /// - Parameter polledAt: when the shell carried out the `pollUpstream` this answers (its `now` then); nil: now.
    public mutating func onUpstreamToken(_ token: String, wallMillis: Int64, now: Duration, polledAt: Duration? = nil) -> [Directive] {
        guard takeAnswer(polledAt: polledAt ?? now, failed: false) else { return [] }
        if let rumour = target, !rumour.confirmed, rumour.token != token {
            // Gossip said rumour.token; upstream, asked since, says otherwise: never take that rumour again (a member
            // stamping a made-up token in the future would otherwise win every comparison until its time passed).
            if refuted.count >= 64 { refuted.removeFirst() }
            refuted.append(rumour.token)
        }
        if let target, target.token == token {
            self.target!.confirmed = true
        } else {
            setTarget(token, seenMillis: wallMillis, confirmed: true)
        }
        return decide(now: now)
    }

    /// Someone announced a push (`dmirr announce`): poll upstream now rather than at the next interval. The token they
    /// name is not trusted; only our fetch counts.
    public mutating func onAnnounce(now: Duration) -> [Directive] {
        guard !poll.isPending else { return [] }
        return [issuePoll(now: now)]
    }

    /// The poll failed (refused as busy, or upstream unreachable from here); try again at the next interval. Until a
    /// poll answers, a token a live member has published is taken as confirmed (see the type's documentation).
    public mutating func onUpstreamUnreachable(now: Duration, polledAt: Duration? = nil) -> [Directive] {
        guard takeAnswer(polledAt: polledAt ?? now, failed: true) else { return [] }
        return decide(now: now)
    }

    /// Whether a poll's answer is news: not older than the one we last took. News records whether it `failed`, and
    /// ends the pending poll when it answers that one (or one issued later).
    private mutating func takeAnswer(polledAt: Duration, failed: Bool) -> Bool {
        if let newest = newestAnswerPolledAt, polledAt < newest { return false }
        newestAnswerPolledAt = polledAt
        switch poll {
        case .pending(let issued, _) where polledAt < issued: poll = .pending(issued: issued, failed: failed)
        default: poll = .idle(lastIssued: poll.lastIssued, failed: failed)
        }
        return true
    }

    private mutating func issuePoll(now: Duration) -> Directive {
        poll = .pending(issued: now, failed: poll.failed)
        return .pollUpstream
    }

    /// - Parameter fraction: how much of the pull is done (0…1), when the shell knows.
    public mutating func onPullProgress(now: Duration, fraction: Double? = nil) {
        guard case .pulling(var r) = mode else { return }
        r.lastProgress = now
        if let fraction { r.fraction = fraction }
        mode = .pulling(r)
    }

    /// - Parameter wallMillis: the wall clock now (Unix ms), which stamps when we saw a token an upstream pull found
    ///   in place of the one it was started for; nil: just after the target's own time.
    public mutating func onPullFinished(_ outcome: PullOutcome, now: Duration, wallMillis: Int64? = nil) -> [Directive] {
        guard case .pulling(let finished) = mode else { return decide(now: now) }
        mode = .idle
        switch outcome {
        case .synced(let token):
            publishedToken = token
            if token == target?.token {
                avoid = [:]
            } else if finished.source == .upstream, !token.isEmpty {
                // The pull read upstream's token file itself and found another token (a push landed between our poll
                // and the pull, and the pull took it or found it already here): that is upstream's answer, as a poll's
                // would be. Kept as the target, the older token would be pulled again at once, for ever (each pull
                // finding the newer one "up to date"), and our record, syncing from upstream on every round, would keep
                // every member from polling (``onTick(now:)`` leaves upstream alone while someone pulls from it).
                let seen = max(wallMillis ?? .min, (target?.seenMillis ?? .min) &+ 1)
                setTarget(token, seenMillis: seen, confirmed: true)
            }
        case .busy:
            avoid[finished.source] = now + configuration.busyBackoff
        case .tokenMismatch, .failed:
            avoid[finished.source] = finished.source == .upstream ? now + configuration.busyBackoff : .some(nil)
        case .cancelled:
            break
        }
        // Still without the target, we are back where we were before this pull (see `rejoinedAt`). A pull cancelled
        // for a newer token is not: the next plan is for another token, and its digest is new.
        if finished.token == target?.token, publishedToken != finished.token { rejoinedAt = now }
        return decide(now: now)
    }

    public mutating func onTick(now: Duration) -> [Directive] {
        var out: [Directive] = []
        var interval = isWatcher ? configuration.poll : configuration.fallbackPoll
        // A refused or failed fetch is retried after the busy backoff, by watchers and the rest alike: a watcher that
        // kept polling a full daemon every `poll` would add to its refusals, and the rest must not wait `fallbackPoll`.
        if poll.failed { interval = configuration.busyBackoff }
        // A fetch that never reported back (a shell that lost it) must not stop us polling for good.
        if case .pending(let issued, let failed) = poll, now - issued >= configuration.stallAfter {
            poll = .idle(lastIssued: issued, failed: failed)
        }
        if !poll.isPending, !upstreamInUse, running?.source != .upstream, poll.lastIssued.map({ now - $0 >= interval }) ?? true {
            out.append(issuePoll(now: now))
        }
        if let r = running, now - r.lastProgress >= configuration.stallAfter {
            out.append(.cancelPull(reason: "no progress from \(r.source) for \(configuration.stallAfter)"))
            avoid[r.source] = r.source == .upstream ? now + configuration.busyBackoff : .some(nil)
        } else if let r = running, case .peer = r.source, !r.requested, !abandonedSlowSource, r.waitingAtStart.count >= configuration.overtakenBy {
            // Patience with a slow source: others that started later finished first. (Counted again only when the view
            // changed: it is a pass over every member.)
            if overtakeCheckedAt != viewStamp {
                overtakeCheckedAt = viewStamp
                overtaken = view.filter { r.waitingAtStart.contains($0.node) && $0.publishedToken == r.token }.count
            }
            // Overtaken alone happens in healthy waves too (a source serving one puller is twice as fast as one serving
            // two): the rest must also be projected to take longer than `stallAfter`.
            if overtaken >= configuration.overtakenBy, let left = r.remaining(now: now), left > configuration.stallAfter {
                abandonedSlowSource = true
                out.append(.cancelPull(reason: "\(r.source) is too slow: \(overtaken) members that started after us already hold \(r.token)"))
                avoid[r.source] = .some(nil)
            }
        }
        out += decide(now: now)
        out.append(.wake(after: .seconds(1)))
        return out
    }

    // MARK: Queries

    /// Whether we are one of the members that poll upstream at the short interval.
    public var isWatcher: Bool {
        mutating get {
            if let watcher { return watcher }
            // Among the first `watchers` of the "watchers" slot order: fewer than that many members sort before us. The
            // keys are kept, so a changed view costs a pass of comparisons rather than a SHA-256 per member.
            let mine = (watchKey(me), me)
            var before = 0
            for record in view where record.node != me && SyncPlan.precedes((watchKey(record.node), record.node), mine) {
                before += 1
                if before >= configuration.watchers { break }
            }
            let answer = before < configuration.watchers
            watcher = answer
            return answer
        }
    }

    private mutating func watchKey(_ node: String) -> [UInt8] {
        if let key = watchKeys[node] { return key }
        let key = SyncPlan.slotKey(token: "watchers", node: node)
        watchKeys[node] = key
        return key
    }

    // MARK: Deciding

    /// The sources we will not be planned on: those we gave up on, and upstream while it does not answer our fetch.
    private var avoiding: Set<PlanSource> {
        var sources = Set(avoid.keys)
        if poll.failed { sources.insert(.upstream) }
        return sources
    }

    private struct AttestedKey: Equatable {
        var viewStamp: Int
        var token: String
        var mine: String?
    }
    private var attestedCache: (key: AttestedKey, roots: Set<String>)?

    /// Everything a plan and its agreement are computed from.
    private struct PlanKey: Equatable {
        var viewStamp: Int
        var token: String
        var published: String
        var running: PlanSource?
        var avoid: Set<PlanSource>
        var serveSlots: Int
        var upstreamSlots: Int
        var attestation: String?
    }

    private mutating func setTarget(_ token: String, seenMillis: Int64, confirmed: Bool) {
        target = (token, seenMillis, confirmed)
        vouchedBy = nil
        abandonedSlowSource = false
        avoid = [:]
        if case .awaitingAgreement = mode { mode = .idle }
    }

    private mutating func decide(now: Duration) -> [Directive] {
        let out = replan(now: now)
        return out + advertise()
    }

    private mutating func replan(now: Duration) -> [Directive] {
        var out: [Directive] = []
        for (source, until) in avoid {
            guard let until, until <= now else { continue }
            avoid[source] = nil
            if source == .upstream { rejoinedAt = now }
        }
        guard var target else {
            plan = nil
            agreed = false
            return out
        }
        // Counting attestations is a pass over the view: only when the view, the token or our own attestation changed.
        let attestedKey = AttestedKey(viewStamp: viewStamp, token: target.token, mine: attestation?.root)
        if attestedCache?.key != attestedKey { attestedCache = (attestedKey, attestedRoots(for: target.token)) }
        let attested = attestedCache!.roots
        if !target.confirmed, poll.failed, let root = attested.first {
            target.confirmed = true
            self.target = target
            vouchedBy = attesters(of: target.token, root: root).joined(separator: ", ")
        }
        if let running, running.requested {
            return out  // the operator's pull runs to its end
        }
        if let running, target.token == publishedToken {
            out.append(.cancelPull(reason: "we already hold \(target.token); the pull of \(running.token) is moot"))
            return out
        }
        if let running, running.token != target.token {
            // Gossip alone (a token not yet confirmed) never stops a pull: a member could make one up.
            if target.confirmed { out.append(.cancelPull(reason: "upstream moved on to \(target.token)")) }
            return out
        }
        // Most rounds change nothing the plan depends on: reuse the last plan and agreement then.
        // Peers serve only a token whose manifest is attested: without it a puller could not check what it receives.
        let serving = !attested.isEmpty
        let key = PlanKey(viewStamp: viewStamp, token: target.token, published: publishedToken, running: running?.source,
                          avoid: avoiding, serveSlots: serving ? configuration.serveSlots : 0, upstreamSlots: configuration.upstreamSlots,
                          attestation: attestation?.token == target.token ? attestation?.root : nil)
        if key != lastPlanKey || self.plan == nil {
            var members = view.map { r in
                SyncPlan.Member(
                    node: r.node, publishedToken: r.publishedToken,
                    pulling: r.syncState == .syncing && r.targetToken == target.token ? PlanSource(recordValue: r.source) : nil,
                    serveSlots: serving ? r.serveSlots : 0, avoid: Set(r.avoid.compactMap(PlanSource.init(recordValue:))))
            }
            members.append(SyncPlan.Member(node: me, publishedToken: publishedToken, pulling: running?.source,
                                           serveSlots: serving ? configuration.serveSlots : 0, avoid: avoiding))
            // Whatever token its record names: an rsync from upstream takes the tree upstream has when it connects, and
            // a member we no longer hear may have started again on a newer token since (the simulation campaign, seed
            // 7405: a member cut off while pulling T1 pulled T2, and two others took the T2 plan's two slots beside it).
            let held = holding.filter { $0.publishedToken != target.token }
            members += held.map { SyncPlan.Member(node: $0.node, publishedToken: $0.publishedToken, pulling: .upstream, serveSlots: 0) }
            members.sort { $0.node < $1.node }
            // The slot order costs a SHA-256 per member and changes only with the token or who is live.
            let nodes = members.map(\.node)
            let order: [String]
            if let last = lastOrder, last.token == target.token, last.nodes == nodes {
                order = last.order
            } else {
                order = SyncPlan.slotOrder(token: target.token, nodes: nodes)
                lastOrder = (target.token, nodes, order)
            }
            let plan = SyncPlan(token: target.token, members: members, upstreamSlots: configuration.upstreamSlots, order: order)
            self.plan = plan
            let same = 1 + view.filter { $0.planDigest == plan.digest }.count
            // A majority of the members we know of, suspects included: a member cut off from most of the fleet sees
            // only itself live, and must not take its own view for the fleet's.
            let known = members.count - held.count + suspected
            agreement = (same, known)
            agreed = same * 2 > known
            lastPlanKey = key
        }
        let plan = self.plan!
        // In sync, we still computed and advertise the plan: the members still pulling count on our agreement.
        let mine = plan.assignments[me]!
        if let running {
            if mine != .pull(running.source) {
                out.append(.cancelPull(reason: "the plan no longer has \(running.source) for us"))
            }
            return out
        }
        guard case .pull(let source) = mine, target.confirmed else {
            mode = .idle
            if case .pull = mine, !target.confirmed, !poll.isPending, !poll.failed {
                out.append(issuePoll(now: now))
            }
            return out
        }
        if source == .upstream {
            let since: Duration
            if case .awaitingAgreement(let s) = mode { since = s } else { since = now }
            mode = .awaitingAgreement(since: since)
            // Right after start our view may hold only ourselves, and a view of one always agrees with itself: give
            // membership the agreement deadline to form first.
            let settled = now - (firstView ?? now) >= configuration.agreementDeadline
            // Back from avoiding upstream, the majority we count may be members that never heard we had left, while
            // the member given our slot meanwhile pulls (the simulation campaign, seed 1682: three agreed pulls
            // with two slots). Likewise after a pull from a peer failed (seed 8526: the plan from before that pull
            // gave us upstream, and a majority still advertised it, not having heard of the pull; the members that
            // had heard gave the slot to another, which started). Alone, nobody took it.
            let rejoined = view.isEmpty || rejoinedAt.map { now - $0 >= configuration.agreementDeadline } ?? true
            guard (agreed && settled && rejoined) || now - since >= configuration.agreementDeadline else { return out }
        }
        let waiting = view.filter { $0.publishedToken != target.token && $0.syncState != .syncing }.map(\.node)
        mode = .pulling(Running(source: source, token: target.token, started: now, lastProgress: now, waitingAtStart: Set(waiting)))
        overtakeCheckedAt = -1
        out.append(.startPull(source, token: target.token))
        return out
    }

    /// The attested roots of `token`: the count `replan` keeps when it is for that token, else a pass over the view.
    private func attested(_ token: String) -> Set<String> {
        if let cache = attestedCache, cache.key.token == token { return cache.roots }
        return attestedRoots(for: token)
    }

    private mutating func advertise() -> [Directive] {
        var a = Advertised()
        // Our signed record names a target only once we know it: our own fetch confirmed it, or `attestations` members
        // attest a tree of it. A rumour (one member's word) stays ours alone, so a liar's made-up token is never
        // repeated under honest members' signatures, and never shows them waiting on it.
        if let target, target.confirmed || !attested(target.token).isEmpty {
            shownTarget = (target.token, target.seenMillis)
        }
        a.targetToken = shownTarget?.token ?? ""
        a.targetSeenMillis = shownTarget?.seenMillis ?? 0
        a.source = running?.source.recordValue ?? ""
        a.avoid = avoiding.map(\.recordValue).sorted()
        a.planDigest = plan?.digest ?? ""
        a.serveSlots = configuration.serveSlots
        a.attestToken = attestation?.token ?? ""
        a.attestRoot = attestation?.root ?? ""
        guard a != advertised else { return [] }
        advertised = a
        return [.advertise(a)]
    }
}
