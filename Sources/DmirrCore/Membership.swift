/// The gossip membership state machine (docs/architecture.md §4 "Membership"), sans I/O in the style of SWIM.Instance: the agent
/// and the simulator feed it events with the current monotonic time and carry out the directives it returns.
///
/// **Dissemination.** A member that learns a new version of a record (its own, or one a peer sent) announces it, by
/// node and version only, to its other linked peers once per round; a peer that lacks it asks for it with a reply
/// digest and gets the record. A change the sync plan depends on skips the round trip: its author pushes the record
/// itself to its links, and they push it once more. Each member so receives each new version about once, plus a
/// 14-byte announcement per link, whatever the fleet's size.
///
/// **Anti-entropy**, the backstop for anything an announcement missed. The digest (node → version) is split into
/// buckets by a hash of the node's name (more buckets in larger fleets). Each round a member sends a *summary*, the
/// hash of one bucket, to one linked peer in rotation, and to any linked peer it has not sent anything for a third of
/// `suspectAfter` (so every link carries traffic often enough to judge it); each link cycles through the buckets. A
/// peer whose own bucket hashes differently answers with its entries of that bucket, and the two exchange what the
/// other lacks. A new link starts with a summary of every bucket, so a member that was away catches up in one
/// exchange. An idle fleet therefore costs one small frame per member per round, whatever its size.
///
/// **Liveness.** Records are re-signed only when they change, and otherwise every ``Configuration/refresh(members:)``
/// (longer in larger fleets, so refreshes cost each member a bounded rate). Silence is judged by those in a position
/// to judge it: a member connected to a peer (or that lost its link to it, until the peer is seen to advance
/// elsewhere) suspects it after `suspectAfter` without a frame, and says so in its own signed record (`suspects`).
/// Others take a suspicion at face value until the suspect refutes it with a newer record, which a live member does
/// as soon as it sees itself suspected. A member is down after `downAfter` of silence as judged directly, or
/// `downAfter − suspectAfter` after a suspicion reached us. A member nobody reports on is judged by its refreshes
/// alone, with half a refresh of slack: suspect after `suspectAfter` + 1.5 refreshes without one, down after
/// `downAfter` + 1.5 refreshes.
///
/// **Our own pauses.** Silence counts only while this member was running. A round that comes a whole round or more
/// late (the process was stopped, its VM suspended, its host too loaded to schedule it) means it read nothing in
/// between through no fault of its peers: every sign of life it holds (and every suspicion's start) moves forward by the
/// lateness, so a verdict after the pause is the one it would have reached had the pause not happened (a member silent
/// before it stays as silent as it was, and one heard just before it gets `suspectAfter` to be heard again). Without
/// this a member resuming after more than `suspectAfter` suspected, and closed the links to, every healthy peer it had
/// not yet read from. The links its peers closed meanwhile (they heard nothing from it) end its watch on those peers, as a
/// deliberate close does: judging them by silence on a link it must first dial again suspected a healthy peer whenever
/// the dial and handshake took longer than `suspectAfter` (a 5 s SIGSTOP in the stall campaign, on a loaded host).
///
/// Records are opaque signed bytes to this machine: the shell verifies signatures before
/// ``onRecord(_:signed:from:now:)`` and signs this member's own record when told to.
public struct Membership: Sendable {
    public struct Configuration: Sendable {
        public var gossipInterval: Duration = .seconds(1)
        public var suspectAfter: Duration = .seconds(10)
        public var downAfter: Duration = .seconds(60)
        /// How often an unchanged record is re-signed; nil means ``refresh(members:)``'s default.
        public var refreshInterval: Duration?
        /// The default refresh grows by this much per member known, so that the refreshes of N members cost each
        /// member a bounded rate: about one record every `perMemberRefresh` (its ~300 bytes plus an announcement per
        /// link), whatever N is.
        public var perMemberRefresh: Duration = .seconds(2)
        /// A change to fields the plan does not depend on (progress, serving count, plan digest, last error) waits
        /// until this long after the last signing, so that a value changing every round costs one record per
        /// `lazyResign`, not one per round; it goes out with the next change that matters, if that comes first.
        /// (In a push at N = 300 the plan digest changed about every 4 s on every member; waiting three rounds halved
        /// the records signed, and with them the gossip bytes, at 2 s more t100 and no start off an agreed plan.)
        /// Nil means three gossip rounds.
        public var lazyResign: Duration?

        public init() {}

        /// How often an unchanged record is re-signed in a fleet of `members`: the set interval, else the larger of
        /// half of `downAfter` and `members × perMemberRefresh` (30 s up to 15 members, 2,000 s at 1,000).
        public func refresh(members: Int) -> Duration {
            refreshInterval ?? max(downAfter / 2, perMemberRefresh * max(members, 1))
        }
        /// The longest a connected link may stay silent from our side.
        public var keepalive: Duration { suspectAfter / 3 }
    }

    /// What the shell MUST do.
    public enum Directive: Sendable, Equatable {
        /// Sign this record as our own and hand the bytes back with ``onOwnRecordSigned(_:signed:now:)``.
        case signOwnRecord(MemberRecord)
        /// Send hashes of some of our digest's buckets to a connected peer.
        case sendSummary(to: String, Summary)
        /// Send digest entries to a connected peer; `scope` says what they stand for.
        case sendDigest(to: String, entries: [DigestEntry], scope: DigestScope)
        /// Send these members' stored signed records to a peer.
        case sendRecords(to: String, nodes: [String])
        /// Persist these members' records (they changed).
        case persist(nodes: [String])
        /// A connected peer has sent nothing for `suspectAfter`: close the connection (dead or cut). The machine already
        /// counts it as disconnected.
        case closeLink(to: String)
        /// A member's liveness changed (for logs and metrics).
        case livenessChanged(node: String, Liveness)
        /// A member's record claimed what it cannot know (for logs): the claim was ignored, the rest of the record kept.
        case distrusted(node: String, reason: String)
        /// Call ``onTick(now:)`` again after this long.
        case wake(after: Duration)
        /// This round came `late` after the one due (for logs): the member was not running, so the silence of its
        /// peers in that time is not held against them (see "Our own pauses" above).
        case resumedAfterPause(late: Duration)
    }

    /// One line of a digest.
    public struct DigestEntry: Sendable, Equatable {
        public var node: String
        public var version: RecordVersion
        public init(node: String, version: RecordVersion) {
            self.node = node
            self.version = version
        }
    }

    /// Hashes of consecutive buckets of a digest split `buckets` ways: `hashes[i]` is bucket `first + i`'s.
    public struct Summary: Sendable, Equatable {
        public var buckets: Int
        public var first: Int
        public var hashes: [UInt64]
        public init(buckets: Int, first: Int, hashes: [UInt64]) {
            self.buckets = buckets
            self.first = first
            self.hashes = hashes
        }
    }

    /// What a digest's entries stand for.
    public enum DigestScope: Sendable, Equatable {
        /// Everything the sender holds: a member missing from it is one the sender lacks. Answered with the records
        /// the sender lacks and a ``reply`` asking for what the receiver lacks.
        case full
        /// Everything the sender holds in these buckets (of `of`); answered like ``full`` within them.
        case buckets([Int], of: Int)
        /// Versions the sender has just learned: a receiver that lacks one asks for it with a ``reply``.
        case announce
        /// Exactly what the sender asks for (at the versions it holds); never answered with another digest.
        case reply
    }

    /// What this member knows of one member.
    public struct Entry: Sendable, Equatable {
        public var record: MemberRecord
        /// The signed bytes, relayed as they are.
        public var signed: [UInt8]
        /// When its version last advanced (monotonic, the shell's clock).
        public var lastAdvance: Duration
        public var liveness: Liveness
    }

    public let me: String
    /// Set it before the first event: deadlines already queued were computed from the old values.
    public var configuration: Configuration
    /// Changed only through ``store(_:for:)`` and ``setLiveness(_:of:)``, which keep the indexes below in step: a round
    /// costs work in proportion to what changed, not to the fleet's size.
    public private(set) var entries: [String: Entry] = [:]
    /// The version held of each member (as in `entries`): digests and announcements read only this.
    public private(set) var versions: [String: RecordVersion] = [:]
    /// Changes whenever any entry does (a record, a liveness): a shell may skip work while it stays the same.
    public private(set) var revision: UInt64 = 0
    /// The members we hold, sorted.
    public private(set) var nodes: [String] = []
    /// Per bucket count asked about (ours, and a peer's that differs while the two know different numbers of members):
    /// each bucket's members in node order, and its hash (nil: to be recomputed, its contents changed).
    private var bucketIndex: [Int: (members: [[String]], hashes: [UInt64?])] = [:]
    /// When each member's liveness is next due to be judged again (the earliest pending deadline), and the heap of those
    /// deadlines; entries whose time no longer matches `dueAt` are stale and skipped.
    private var dueAt: [String: Duration] = [:]
    private var deadlines = MinHeap<Deadline>()
    /// Members to judge on the next round whatever their deadlines (a suspicion of them came or went, their watch ended).
    private var dirty: Set<String> = []
    /// Members not judged alive: re-judged when the refresh interval (and with it the slack) changes.
    private var unwell: Set<String> = []
    /// suspect → (suspector → newest version it suspects), from the records of members we do not judge down; a member's
    /// suspicion of itself does not count.
    private var suspectedBy: [String: [String: RecordVersion]] = [:]
    /// The refresh interval the last round judged with.
    private var judgedRefresh: Duration?
    /// Our own record as we last changed it (it is in `entries` once signed).
    public private(set) var own: MemberRecord
    public private(set) var connected: Set<String> = []
    /// When a frame last arrived from each peer we have a link to (or had).
    private var heardAt: [String: Duration] = [:]
    /// Per linked peer, the versions sent to it lately in answer to its digests, and when (see ``resendAfter``).
    private var answered: [String: [String: (version: RecordVersion, at: Duration)]] = [:]
    /// Peers whose silence we judge ourselves: connected now, or lost and not seen advancing since.
    private var watching: Set<String> = []
    /// When a suspicion of each member first reached us.
    private var rumourSince: [String: Duration] = [:]
    private var lastSentTo: [String: Duration] = [:]
    /// The next bucket each link's summary covers.
    private var summaryTurn: [String: Int] = [:]
    /// Links that get a summary of every bucket on the next round (new ones).
    private var greet: Set<String> = []
    /// Versions to announce on the next round: node → peers known to hold that version already.
    private var pendingAnnounce: [String: Set<String>] = [:]
    /// Records asked for after an announcement, so that several announcers do not each send it.
    private var requested: [String: (version: RecordVersion, at: Duration)] = [:]
    private var rotation = 0
    /// When the last round ran, to tell a pause of our own from our peers' silence.
    private var lastRound: Duration?
    /// When the round that found our last pause ran: a link lost up to `suspectAfter` later was lost to that pause.
    private var resumedAt: Duration?
    private var lastSigned: Duration?
    private var ownDirty = true
    /// Our record changed only in fields the plan does not depend on (progress, serving count, plan digest…).
    private var ownLazy = false
    private var pushNextSigning = false

    /// - Parameter generation: distinct for each start of this member (the shell uses its wall-clock start time).
    public init(me: String, generation: UInt64, configuration: Configuration = .init()) {
        self.me = me
        self.configuration = configuration
        self.own = MemberRecord(node: me, generation: generation)
    }

    // MARK: Events

    /// Restores records saved before a restart. They count as alive: a member's next refresh can be a long way off in a
    /// large fleet. A member the restored (or newly received) records of its watchers suspect is suspect at once, and
    /// down `downAfter − suspectAfter` later; one that nobody suspects and that never advances is judged by refreshes
    /// alone.
    public mutating func restore(_ record: MemberRecord, signed: [UInt8], now: Duration) {
        guard record.node != me else {
            // Our own old record: keep its fields, never its version (a new generation outranks it).
            let generation = own.generation
            own = record
            own.generation = max(generation, record.generation + 1)
            own.heartbeat = 0
            own.suspects = []
            ownDirty = true
            return
        }
        // As if silent for exactly `suspectAfter`: alive on refreshes alone, suspect as soon as a suspicion counts.
        store(Entry(record: record, signed: signed, lastAdvance: now - configuration.suspectAfter, liveness: .alive), for: record.node)
        dirty.insert(record.node)
    }

    /// Changes fields of our own record (sync state, tokens, progress…). It is re-signed on the next tick.
    public mutating func updateOwn(_ change: (inout MemberRecord) -> Void) {
        let before = own
        change(&own)
        own.node = me
        own.generation = before.generation
        own.heartbeat = before.heartbeat
        own.suspects = before.suspects
        guard own != before else { return }
        if Self.matters(from: before, to: own) { ownDirty = true } else { ownLazy = true }
    }

    /// Re-signs our record on the next tick although no field changed: the times in it moved (the agent corrected its
    /// wall clock to the fleet's, see ``ClockOffset``).
    public mutating func resignOwn() { ownDirty = true }

    public mutating func onConnected(_ peer: String, now: Duration) {
        connected.insert(peer)
        watching.insert(peer)
        heardAt[peer] = now
        // One side of a new link compares every bucket, so the two catch up in one exchange.
        if me < peer { greet.insert(peer) }
    }

    /// A link ended. Its peer stays watched (suspected after `suspectAfter` without a sign of life) unless the link
    /// ended for a reason that says nothing of the peer:
    /// - Parameter deliberate: we closed it ourselves (rotation, shutdown), so its silence from now on means nothing.
    ///   The peer cannot tell a deliberate close from a crash, so we re-sign and push our record at once: seeing us
    ///   advance elsewhere ends its watch on us before it would suspect us.
    ///
    /// A link lost to a pause of our own is treated the same way: one found closed while a round is overdue, or up to
    /// `suspectAfter` after the round that found the pause. Its peer closed it because it heard nothing from *us* (we
    /// were stopped); watching it would suspect every healthy peer we could not link to again within `suspectAfter`
    /// of resuming (a dial round and a handshake on a loaded host). It is judged as members we are not linked to are:
    /// by its refreshes and by the suspicions of those linked to it.
    public mutating func onDisconnected(_ peer: String, deliberate: Bool = false, now: Duration) {
        let lostToOurPause = pauseLateness(at: now) != nil || resumedAt.map { now - $0 < configuration.suspectAfter } ?? false
        linkEnded(peer, deliberate: deliberate || lostToOurPause)
    }

    private mutating func linkEnded(_ peer: String, deliberate: Bool) {
        connected.remove(peer)
        lastSentTo[peer] = nil
        answered[peer] = nil
        greet.remove(peer)
        if deliberate {
            if watching.remove(peer) != nil { dirty.insert(peer) }
            ownDirty = true
            pushNextSigning = true
        }
    }

    /// How late a round at `now` comes, when that is a whole round or more (we were paused); nil otherwise.
    private func pauseLateness(at now: Duration) -> Duration? {
        guard let late = lastRound.map({ now - $0 - configuration.gossipInterval }), late >= configuration.gossipInterval else { return nil }
        return late
    }

    /// A gossip round: judge liveness, re-sign our record when it changed or is due, send summaries.
    public mutating func onTick(now: Duration) -> [Directive] {
        var out: [Directive] = []
        if let late = pauseLateness(at: now) {
            excusePause(late, now: now)
            resumedAt = now
            out.append(.resumedAfterPause(late: late))
        }
        lastRound = now
        // Silent for `suspectAfter` of our running time (a pause is excused above): watched, whenever we resumed.
        for peer in connected.sorted() where now - (heardAt[peer] ?? now) >= configuration.suspectAfter {
            linkEnded(peer, deliberate: false)
            out.append(.closeLink(to: peer))
        }
        out += judgeDue(now: now)
        let sinceSigned = lastSigned.map { now - $0 }
        let lazyDue = ownLazy && sinceSigned.map { $0 >= configuration.lazyResign ?? configuration.gossipInterval * 3 } ?? true
        if ownDirty || lazyDue || sinceSigned.map({ $0 >= configuration.refresh(members: nodes.count) }) ?? true {
            own.heartbeat += 1
            lastSigned = now
            ownDirty = false
            ownLazy = false
            out.append(.signOwnRecord(own))
        }
        let peers = connected.sorted()
        out += announcements(to: peers, now: now)
        if !peers.isEmpty {
            let buckets = bucketCount
            let turn = peers[rotation % peers.count]
            rotation &+= 1
            for peer in peers {
                if greet.remove(peer) != nil {
                    lastSentTo[peer] = now
                    out.append(.sendSummary(to: peer, Summary(buckets: buckets, first: 0, hashes: bucketHashes(count: buckets))))
                } else if peer == turn || lastSentTo[peer].map({ now - $0 >= configuration.keepalive }) ?? true {
                    lastSentTo[peer] = now
                    let bucket = (summaryTurn[peer] ?? 0) % buckets
                    summaryTurn[peer] = bucket + 1
                    out.append(.sendSummary(to: peer, Summary(buckets: buckets, first: bucket, hashes: [bucketHashes(count: buckets)[bucket]])))
                }
            }
        }
        out.append(.wake(after: configuration.gossipInterval))
        return out
    }

    /// Moves every sign of life we hold forward by `late`, the time we were not running (a sign from after the pause,
    /// read before this round, goes no later than now), and so the time a suspicion has counted against its member (a
    /// refutation sent meanwhile is not read yet either). Verdicts only get kinder, so every member is judged again
    /// this round rather than at the deadlines queued before.
    private mutating func excusePause(_ late: Duration, now: Duration) {
        for (peer, at) in heardAt { heardAt[peer] = min(at + late, now) }
        for (node, since) in rumourSince { rumourSince[node] = min(since + late, now) }
        for node in nodes where node != me {
            entries[node]!.lastAdvance = min(entries[node]!.lastAdvance + late, now)
            dirty.insert(node)
        }
    }

    /// The round's announcements: to each linked peer, the versions learned since the last round that it is not
    /// known to hold.
    private mutating func announcements(to peers: [String], now: Duration) -> [Directive] {
        guard !pendingAnnounce.isEmpty else { return [] }
        defer { pendingAnnounce = [:] }
        let pending = pendingAnnounce.keys.sorted()
        var out: [Directive] = []
        for peer in peers {
            let news = pending.compactMap { node -> DigestEntry? in
                // Not back to whoever told us, nor to the member the record is of.
                guard node != peer, !pendingAnnounce[node]!.contains(peer), let held = self.versions[node] else { return nil }
                return DigestEntry(node: node, version: held)
            }
            guard !news.isEmpty else { continue }
            lastSentTo[peer] = now
            out.append(.sendDigest(to: peer, entries: news, scope: .announce))
        }
        return out
    }

    /// Judges the members whose verdict may have changed since the last round: those whose deadline came due, those
    /// marked dirty (a suspicion of them came or went, a watch ended), and those we watch (their silence is measured
    /// from every frame). Our own suspicions are the members we watch and have not heard from for `suspectAfter`.
    private mutating func judgeDue(now: Duration) -> [Directive] {
        var out: [Directive] = []
        let refresh = configuration.refresh(members: nodes.count)
        if refresh != judgedRefresh {
            // A longer refresh means more slack: members judged on refreshes alone may be better than we said.
            judgedRefresh = refresh
            dirty.formUnion(unwell)
        }
        var due = dirty.union(watching)
        dirty = []
        while let next = deadlines.min, next.at <= now {
            deadlines.popMin()
            if dueAt[next.node] == next.at {
                dueAt[next.node] = nil
                due.insert(next.node)
            }
        }
        // A suspicion counts from members not judged down as the round starts: a change of that this round is applied
        // after it, so the verdicts do not depend on the order members are judged in.
        var changed: [(node: String, was: Liveness, now: Liveness)] = []
        for node in due.sorted() where node != me {
            guard let entry = entries[node] else { continue }
            let verdict = judge(node, entry: entry, now: now, rumourSince: rumourSince[node])
            rumourSince[node] = verdict.rumourSince
            schedule(node, at: verdict.next)
            if verdict.liveness != entry.liveness {
                changed.append((node, entry.liveness, verdict.liveness))
                setLiveness(verdict.liveness, of: node)
                out.append(.livenessChanged(node: node, verdict.liveness))
            }
        }
        for change in changed where (change.was == .down) != (change.now == .down) {
            guard let record = entries[change.node]?.record else { continue }
            if change.now == .down { withdrawSuspicions(of: record) } else { addSuspicions(of: record) }
        }
        var suspects: [Suspicion] = []
        for node in watching.sorted() where node != me {
            guard let entry = entries[node], now - evidence(node, entry) >= configuration.suspectAfter else { continue }
            suspects.append(Suspicion(node: node, version: entry.record.version))
        }
        if suspects != own.suspects {
            own.suspects = suspects
            ownDirty = true
        }
        return out
    }

    /// The last sign of life we have of `node`: its record advancing, or (while linked) a frame from it.
    private func evidence(_ node: String, _ entry: Entry) -> Duration {
        max(entry.lastAdvance, heardAt[node] ?? entry.lastAdvance)
    }

    /// The newest version of `node` a member we do not judge down suspects, if any does.
    private func suspicion(of node: String) -> RecordVersion? {
        suspectedBy[node]?.values.max()
    }

    /// How we judge `node` now, given when a suspicion of it first reached us; when that suspicion now counts from; and
    /// when the verdict can next change without news (nil: not before some event).
    private func judge(_ node: String, entry: Entry, now: Duration, rumourSince: Duration?)
        -> (liveness: Liveness, rumourSince: Duration?, next: Duration?)
    {
        let evidence = evidence(node, entry)
        let silent = now - evidence
        let c = configuration
        let slack = c.refresh(members: nodes.count) * 3 / 2
        func next(_ times: Duration...) -> Duration? { times.filter { $0 > now }.min() }
        if silent < c.suspectAfter {
            return (.alive, nil, evidence + c.suspectAfter)
        }
        if watching.contains(node) {
            return (silent >= c.downAfter ? .down : .suspect, nil, next(evidence + c.downAfter))
        }
        if let rumour = suspicion(of: node), rumour >= entry.record.version {
            let since = rumourSince ?? now
            let downAt = since + (c.downAfter - c.suspectAfter)
            return (now >= downAt ? .down : .suspect, since, next(downAt))
        }
        let liveness: Liveness = silent >= c.downAfter + slack ? .down : silent >= c.suspectAfter + slack ? .suspect : .alive
        return (liveness, nil, next(evidence + c.suspectAfter + slack, evidence + c.downAfter + slack))
    }

    /// Every member's verdict judged from scratch, as the incremental rounds must also find it (for tests).
    func judgedByFullScan(now: Duration) -> [String: Liveness] {
        var verdicts: [String: Liveness] = [:]
        for node in nodes where node != me {
            verdicts[node] = judge(node, entry: entries[node]!, now: now, rumourSince: rumourSince[node]).liveness
        }
        return verdicts
    }

    private mutating func schedule(_ node: String, at time: Duration?) {
        guard let time else { return }
        // Only an earlier deadline is queued: a later one is found when the earlier comes due and the member is judged
        // again, so the heap holds about one deadline per member however often records arrive.
        if let pending = dueAt[node], pending <= time { return }
        dueAt[node] = time
        deadlines.push(Deadline(at: time, node: node))
    }

    private mutating func setLiveness(_ liveness: Liveness, of node: String) {
        entries[node]!.liveness = liveness
        revision &+= 1
        if liveness == .alive { unwell.remove(node) } else { unwell.insert(node) }
    }

    /// Stores a new version of a member's record (or our own), keeping the sorted node list, the bucket hashes and the
    /// suspicions in step.
    private mutating func store(_ entry: Entry, for node: String) {
        let previous = entries[node]
        if let previous, previous.liveness != .down, node != me { withdrawSuspicions(of: previous.record) }
        entries[node] = entry
        versions[node] = entry.record.version
        revision &+= 1
        if previous == nil {
            nodes.insert(node, at: nodes.partitionPoint { $0 < node })
            for (count, index) in bucketIndex {
                let b = Self.bucket(of: node, count: count)
                var members = index.members
                members[b].insert(node, at: members[b].partitionPoint { $0 < node })
                bucketIndex[count] = (members, index.hashes)
            }
        }
        if previous?.record.version != entry.record.version {
            for count in bucketIndex.keys { bucketIndex[count]!.hashes[Self.bucket(of: node, count: count)] = nil }
        }
        if entry.liveness == .alive { unwell.remove(node) } else { unwell.insert(node) }
        if entry.liveness != .down, node != me { addSuspicions(of: entry.record) }
    }

    private mutating func addSuspicions(of record: MemberRecord) {
        for s in record.suspects where s.node != record.node {
            suspectedBy[s.node, default: [:]][record.node] = s.version
            dirty.insert(s.node)
        }
    }

    private mutating func withdrawSuspicions(of record: MemberRecord) {
        for s in record.suspects where s.node != record.node {
            suspectedBy[s.node]?[record.node] = nil
            if suspectedBy[s.node]?.isEmpty == true { suspectedBy[s.node] = nil }
            dirty.insert(s.node)
        }
    }

    /// The shell signed our record. A change that matters to the fleet's plan is pushed at once: the record itself to
    /// every connected peer (who relay it once more, see ``onRecord(_:signed:from:now:)``), instead of waiting for the
    /// rotation to reach them.
    public mutating func onOwnRecordSigned(_ record: MemberRecord, signed: [UInt8], now: Duration) -> [Directive] {
        guard record.node == me, record.version >= (versions[me] ?? RecordVersion(generation: 0, heartbeat: 0)) else {
            return []
        }
        let previous = entries[me]?.record
        store(Entry(record: record, signed: signed, lastAdvance: now, liveness: .alive), for: me)
        var out: [Directive] = [.persist(nodes: [me])]
        // A new plan digest is pushed to our own neighbours (agreement needs it soon) but not relayed further: it
        // changes on every member at once, and the neighbours' own digests travel the same way.
        let pushed = previous.map { Self.matters(from: $0, to: record) || $0.planDigest != record.planDigest } ?? true
        if pushNextSigning || pushed {
            pushNextSigning = false
            out += eagerRecords(of: me, except: nil, now: now)
        } else {
            pendingAnnounce[me] = []
        }
        return out
    }

    /// Whether a new version of a record changes something the sync plan or liveness depend on (not merely its
    /// heartbeat, progress, serving count or plan digest: the digest changes as a consequence of the others, on every
    /// member at once, and pushing each of those eagerly would cost every member N frames per change).
    public static func matters(from old: MemberRecord, to new: MemberRecord) -> Bool {
        old.generation != new.generation || old.syncState != new.syncState || old.publishedToken != new.publishedToken
            || old.targetToken != new.targetToken || old.source != new.source
            || old.avoid != new.avoid || old.suspects != new.suspects || old.serveSlots != new.serveSlots
            || old.rsyncURL != new.rsyncURL || old.peerAddress != new.peerAddress
            || old.attestToken != new.attestToken || old.attestRoot != new.attestRoot
    }

    /// Pushes one member's record to every linked peer but `peer`: cheaper than a summary, which would cost the
    /// receiver a full digest and a round trip to find the one record that changed.
    private mutating func eagerRecords(of node: String, except peer: String?, now: Duration) -> [Directive] {
        connected.sorted().filter { $0 != peer }.map { p in
            lastSentTo[p] = now
            return .sendRecords(to: p, nodes: [node])
        }
    }

    /// A peer's summary: for the buckets that hash differently here, send our entries of them (which starts an
    /// exchange, see ``onDigest(from:entries:scope:now:)``).
    public mutating func onSummary(from peer: String, _ summary: Summary, now: Duration) -> [Directive] {
        heard(peer, now: now)
        let count = max(1, min(summary.buckets, Self.maxBuckets))
        let mine = bucketHashes(count: count)
        let differing = summary.hashes.indices.map { summary.first + $0 }.filter { bucket in
            bucket >= 0 && bucket < count && mine[bucket] != summary.hashes[bucket - summary.first]
        }
        guard !differing.isEmpty else { return [] }
        if count == 1 { return [.sendDigest(to: peer, entries: digest(), scope: .full)] }
        let members = bucketMembers(count: count)
        let entries = differing.flatMap { members[$0] }.sorted().map { DigestEntry(node: $0, version: self.versions[$0]!) }
        return [.sendDigest(to: peer, entries: entries, scope: .buckets(differing, of: count))]
    }

    /// A peer's digest: send what it lacks; when it is not itself a reply, ask with a reply digest for what we lack.
    /// Members we never heard of that one digest may make us ask for. A member table grows only by verified records,
    /// one per certificate the CA issued; a digest naming more unknown members than that is more likely a lie than a
    /// fleet, and asking for all of them would cost us a reply as large and a request entry each.
    public static let maxUnknownAskedPerDigest = 1024
    /// Requests outstanding at once (announcements asked for and not yet answered).
    public static let maxOutstandingRequests = 8192

    public mutating func onDigest(from peer: String, entries theirs: [DigestEntry], scope: DigestScope, now: Duration) -> [Directive] {
        heard(peer, now: now)
        var theirVersions: [String: RecordVersion] = [:]
        // Names that no certificate can carry are not members: ignored.
        for e in theirs where PeerIdentity.isValidName(e.node) { theirVersions[e.node] = max(theirVersions[e.node] ?? e.version, e.version) }
        // A full digest lists everything its sender holds, so a member missing from it is one it lacks; a bucket
        // digest the same within its buckets. A reply or an announcement lists only some members: it says nothing of
        // the rest.
        // Only those members can be newer here than there: a pass over them, not over every member.
        let candidates: [String]
        switch scope {
        case .full: candidates = nodes
        case .buckets(let buckets, let count):
            let count = max(1, min(count, Self.maxBuckets))
            let members = bucketMembers(count: count)
            candidates = Set(buckets.filter { $0 >= 0 && $0 < count }).flatMap { members[$0] }.sorted()
        case .announce, .reply: candidates = theirVersions.keys.sorted()
        }
        let newerHere = candidates.filter { node in
            guard let mine = versions[node] else { return false }
            return theirVersions[node].map { mine > $0 } ?? true
        }
        var out: [Directive] = []
        let unanswered = notSentLately(newerHere, to: peer, now: now)
        if !unanswered.isEmpty { out.append(.sendRecords(to: peer, nodes: unanswered)) }
        if scope == .announce {
            // The peer holds these versions: no need to announce them back to it.
            for (node, version) in theirVersions where versions[node] == version {
                pendingAnnounce[node]?.insert(peer)
            }
        }
        guard scope != .reply else { return out }
        let requestFor = configuration.gossipInterval * 2
        var unknownAsked = 0
        let wanted = theirVersions.keys.sorted().filter { node in
            guard node != me, versions[node].map({ $0 < theirVersions[node]! }) ?? true else { return false }
            if versions[node] == nil {
                guard unknownAsked < Self.maxUnknownAskedPerDigest else { return false }
                unknownAsked += 1
            }
            // Another announcer's copy is on its way: ask again only if it is late.
            if scope == .announce, let asked = requested[node], asked.version >= theirVersions[node]!, now - asked.at < requestFor {
                return false
            }
            return true
        }
        guard !wanted.isEmpty else { return out }
        if scope == .announce {
            if requested.count + wanted.count > Self.maxOutstandingRequests {
                // Forget requests that are late anyway before recording new ones; past the cap, ask without recording.
                requested = requested.filter { now - $0.value.at < requestFor }
            }
            for node in wanted where requested.count < Self.maxOutstandingRequests { requested[node] = (theirVersions[node]!, now) }
        }
        // Ask by telling them what we hold for exactly those nodes; absent nodes go as version 0.0.
        let reply = wanted.map { DigestEntry(node: $0, version: versions[$0] ?? RecordVersion(generation: 0, heartbeat: 0)) }
        out.append(.sendDigest(to: peer, entries: reply, scope: .reply))
        return out
    }

    /// How long a version sent to a peer in answer to its digest is not sent to it again: two gossip rounds. A peer
    /// that repeats a digest before our records reached it, or one that floods us with digests naming old versions,
    /// is not answered with the same records each time (each answer costs us encoding, TLS and its link); an honest
    /// peer whose copy went missing asks again after this, and a new link starts afresh.
    public var resendAfter: Duration { configuration.gossipInterval * 2 }

    private mutating func notSentLately(_ candidates: [String], to peer: String, now: Duration) -> [String] {
        var sent = answered[peer] ?? [:]
        // Entries of members since forgotten, or long answered, go once the table outgrows the member list.
        if sent.count > nodes.count { sent = sent.filter { versions[$0.key] != nil && now - $0.value.at < resendAfter } }
        let unanswered = candidates.filter { node in
            guard let last = sent[node], last.version == versions[node], now - last.at < resendAfter else { return true }
            return false
        }
        for node in unanswered { sent[node] = (versions[node]!, now) }
        answered[peer] = sent
        return unanswered
    }

    /// Which records of a peer's message could change anything here: those newer than the version held (ours
    /// included). The shell checks the signatures of those only, so a peer repeating what we hold (a slow one, or a
    /// flood) costs a decode per record, not a signature check; ``onRecord(_:signed:from:now:)`` would ignore the rest.
    /// A claim the shell could not decode is nil and counts as newer: its check reports it. Counts as hearing from `peer`.
    public mutating func newerThanHeld(_ claims: [(node: String, version: RecordVersion)?], from peer: String, now: Duration) -> [Bool] {
        heard(peer, now: now)
        return claims.map { claim in claim.map { c in versions[c.node].map { c.version > $0 } ?? true } ?? true }
    }

    /// A record whose signature the shell verified. Newer versions replace older ones; our own record is only ever
    /// authored here (a copy of it from elsewhere is ignored, unless it proves a newer generation, see below).
    public mutating func onRecord(_ record: MemberRecord, signed: [UInt8], from peer: String, now: Duration) -> [Directive] {
        heard(peer, now: now)
        if record.node == me {
            // Someone holds a record of ours newer than we think we are: we restarted without our state. Jump past it.
            if record.version > own.version {
                own.generation = record.generation + 1
                own.heartbeat = 0
                ownDirty = true
            }
            return []
        }
        if let existing = versions[record.node], existing >= record.version { return [] }
        // A suspicion above the suspect's newest version we hold cannot be checked, and one above every version could
        // never be refuted (SWIM drops those too): ignored, and its author named.
        var record = record
        var out: [Directive] = []
        let unverifiable = record.suspects.filter { s in versions[s.node].map { s.version > $0 } ?? true }
        if !unverifiable.isEmpty {
            record.suspects.removeAll { s in versions[s.node].map { s.version > $0 } ?? true }
            let first = unverifiable[0]
            out.append(.distrusted(node: record.node, reason: "suspected \(unverifiable.count) member(s) at versions we never saw "
                + "(first: \(first.node.prefix(64)) at \(first.version))"))
        }
        let wasLiveness = entries[record.node]?.liveness
        let matters = entries[record.node].map { Self.matters(from: $0.record, to: record) } ?? true
        store(Entry(record: record, signed: signed, lastAdvance: now, liveness: .alive), for: record.node)
        rumourSince[record.node] = nil
        if !connected.contains(record.node) { watching.remove(record.node) }
        schedule(record.node, at: now + configuration.suspectAfter)
        // Suspected at our newest version: refute it with a fresh record on the next tick.
        if let mine = versions[me], record.suspects.contains(where: { $0.node == me && $0.version >= mine }) {
            ownDirty = true
        }
        out.append(.persist(nodes: [record.node]))
        if wasLiveness != .alive { out.append(.livenessChanged(node: record.node, .alive)) }
        // Relayed eagerly one hop only (when it came straight from its author): the author's neighbours and theirs
        // learn a change at once, the rest through announcements. Relaying every change eagerly at every hop would cost
        // each member a frame per link per change, O(N) per member per push.
        if let asked = requested[record.node], asked.version <= record.version { requested[record.node] = nil }
        if matters, peer == record.node {
            out += eagerRecords(of: record.node, except: peer, now: now)
        } else {
            pendingAnnounce[record.node] = [peer]
        }
        return out
    }

    /// Forgets a member entirely: its record, its verdict, its suspicions of others and theirs of it. For a member
    /// whose certificate was revoked, or whose record expired (nobody may relay it any more, so keeping it would only
    /// make digests differ for ever). Returns whether it was known. A link to it stays (the shell closes a revoked
    /// member's link itself, and a member whose old record expired may well be alive and linked to us).
    @discardableResult
    public mutating func forget(_ node: String) -> Bool {
        guard node != me, entries.removeValue(forKey: node) != nil else { return false }
        versions[node] = nil
        revision &+= 1
        if let index = nodes.firstIndex(of: node) { nodes.remove(at: index) }
        for (count, index) in bucketIndex {
            let b = Self.bucket(of: node, count: count)
            var members = index.members
            members[b].removeAll { $0 == node }
            var hashes = index.hashes
            hashes[b] = nil
            bucketIndex[count] = (members, hashes)
        }
        suspectedBy[node] = nil
        for suspect in Array(suspectedBy.keys) where suspectedBy[suspect]?[node] != nil {
            suspectedBy[suspect]?[node] = nil
            if suspectedBy[suspect]?.isEmpty == true { suspectedBy[suspect] = nil }
            dirty.insert(suspect)
        }
        dueAt[node] = nil
        dirty.remove(node)
        unwell.remove(node)
        rumourSince[node] = nil
        // The record goes, not the link: a linked peer stays linked, heard and watched, and is greeted again so that
        // its current record comes over the link. (Dropping the link here while the shell kept it open left it silent
        // on our side: the peer closed it as silent and suspected us. An agent that started with its clock 10 min
        // behind did that to every peer once it corrected its clock and forgot their old records as expired.)
        if connected.contains(node) {
            greet.insert(node)
        } else {
            watching.remove(node)
            heardAt[node] = nil
        }
        lastSentTo[node] = nil
        summaryTurn[node] = nil
        pendingAnnounce[node] = nil
        requested[node] = nil
        return true
    }

    /// Members whose signed record expired before `wallMillis` (the shell's wall clock) by more than the clock skew
    /// ``RecordPolicy`` allows at receipt, ours excluded. The same line as receipt's: a record forgotten here is also
    /// refused if it comes again, and one still accepted at receipt is kept. (Forgetting at the expiry itself let a
    /// peer that kept sending a just-expired record make it come and go every round, and each coming and going was
    /// pushed to every other peer: 17 frames a second to the honest peer in the abuse campaign.)
    public func expired(atWallMillis wallMillis: Int64) -> [String] {
        let line = wallMillis - RecordPolicy.Limit.skewMillis
        return nodes.filter { $0 != me && entries[$0]!.record.expiresMillis > 0 && entries[$0]!.record.expiresMillis < line }
    }

    private mutating func heard(_ peer: String, now: Duration) {
        if connected.contains(peer) { heardAt[peer] = now }
    }

    // MARK: Queries

    /// Node → newest version held, ours included.
    public func digest() -> [DigestEntry] {
        nodes.map { DigestEntry(node: $0, version: versions[$0]!) }
    }

    /// The most buckets a digest is split into.
    public static let maxBuckets = 64

    /// How many buckets our summaries use: about 16 members each, a power of two, at most ``maxBuckets``.
    public var bucketCount: Int {
        var count = 1
        while count * 2 <= min(Self.maxBuckets, nodes.count / 16) { count *= 2 }
        return count
    }

    /// FNV-1a 64, fed byte by byte: the hash of bucket assignment and of bucket contents (both on the wire).
    struct FNV1a {
        private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325
        mutating func add(_ byte: UInt8) { value = (value ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
        mutating func add(_ text: String) { for byte in text.utf8 { add(byte) } }
        mutating func add(littleEndian number: UInt64) {
            for shift in stride(from: 0, to: 64, by: 8) { add(UInt8(truncatingIfNeeded: number >> UInt64(shift))) }
        }
    }

    /// Which of `count` buckets a member's digest entry falls in (FNV-1a 64 of its name, modulo `count`).
    public static func bucket(of node: String, count: Int) -> Int {
        guard count > 1 else { return 0 }
        var hash = FNV1a()
        hash.add(node)
        return Int(hash.value % UInt64(count))
    }

    /// FNV-1a over each bucket's entries (name, 0, generation and heartbeat little-endian), in node order: equal for
    /// two members exactly when (barring a collision, which only delays an exchange until something changes) they
    /// hold the same versions of the same members in that bucket. Kept per bucket, so a change rehashes one bucket.
    public mutating func bucketHashes(count: Int) -> [UInt64] {
        let members = bucketMembers(count: count)
        var hashes = bucketIndex[count]!.hashes
        for b in 0..<count where hashes[b] == nil {
            var hash = FNV1a()
            for node in members[b] {
                let version = versions[node]!
                hash.add(node)
                hash.add(0)
                hash.add(littleEndian: version.generation)
                hash.add(littleEndian: version.heartbeat)
            }
            hashes[b] = hash.value
        }
        bucketIndex[count]!.hashes = hashes
        return hashes.map { $0! }
    }

    /// The members of each of `count` buckets, in node order.
    private mutating func bucketMembers(count: Int) -> [[String]] {
        if let index = bucketIndex[count] { return index.members }
        // Our own count, and one other (a peer that knows a different number of members) at a time.
        let own = bucketCount
        for other in bucketIndex.keys where other != own { bucketIndex[other] = nil }
        var members = [[String]](repeating: [], count: count)
        for node in nodes { members[Self.bucket(of: node, count: count)].append(node) }
        bucketIndex[count] = (members, [UInt64?](repeating: nil, count: count))
        return members
    }

    /// Members judged alive (ourselves included).
    public var aliveMembers: [String] {
        nodes.filter { $0 == me || entries[$0]!.liveness == .alive }
    }
}

/// When a member's liveness verdict may next change: ordered by time, then by name.
struct Deadline: Comparable, Sendable {
    var at: Duration
    var node: String

    static func < (a: Deadline, b: Deadline) -> Bool { a.at < b.at || (a.at == b.at && a.node < b.node) }
}
