/// The gossip membership state machine (DESIGN.md §4 "Membership"), sans I/O in the style of SWIM.Instance: the agent
/// and the simulator feed it events with the current monotonic time and carry out the directives it returns.
///
/// **Anti-entropy.** Each round a member sends a *summary* (a hash of its digest) to one connected peer, in rotation,
/// and to any connected peer it has not sent anything for a third of `suspectAfter` (so every link carries traffic
/// often enough to judge it). A receiver whose own digest hashes the same does nothing; otherwise it answers with its
/// full digest (node → version), the other side sends the records the receiver lacks and asks, with a reply digest, for
/// the ones it lacks itself. An idle fleet therefore costs one small frame per member per round, whatever its size.
///
/// **Liveness.** Records are re-signed only when they change, and otherwise every `refreshInterval`, so heartbeats do
/// not flood the fleet. Silence is judged by those in a position to judge it: a member connected to a peer (or that
/// lost its link to it, until the peer is seen to advance elsewhere) suspects it after `suspectAfter` without a
/// frame, and says so in its own signed record (`suspects`). Others take a suspicion at face value until the suspect
/// refutes it with a newer record, which a live member does as soon as it sees itself suspected. A member is down
/// after `downAfter` of silence as judged directly, or `downAfter − suspectAfter` after a suspicion reached us. A
/// member nobody reports on is judged by its refreshes alone: suspect after `suspectAfter + refreshInterval` without
/// one, down after `downAfter + refreshInterval`.
///
/// Records are opaque signed bytes to this machine: the shell verifies signatures before
/// ``onRecord(_:signed:from:now:)`` and signs this member's own record when told to.
public struct Membership: Sendable {
    public struct Configuration: Sendable {
        public var gossipInterval: Duration = .seconds(1)
        public var suspectAfter: Duration = .seconds(10)
        public var downAfter: Duration = .seconds(60)
        /// How often an unchanged record is re-signed; nil means half of `downAfter`.
        public var refreshInterval: Duration?

        public init() {}

        public var refresh: Duration { refreshInterval ?? downAfter / 2 }
        /// The longest a connected link may stay silent from our side.
        public var keepalive: Duration { suspectAfter / 3 }
    }

    /// What the shell MUST do.
    public enum Directive: Sendable, Equatable {
        /// Sign this record as our own and hand the bytes back with ``onOwnRecordSigned(_:signed:now:)``.
        case signOwnRecord(MemberRecord)
        /// Send ``digestHash`` (read when sending) to a connected peer.
        case sendSummary(to: String)
        /// Send our digest to a connected peer (`isReply`: in answer to its digest; it must not answer with another).
        case sendDigest(to: String, entries: [DigestEntry], isReply: Bool)
        /// Send these members' stored signed records to a peer.
        case sendRecords(to: String, nodes: [String])
        /// Persist these members' records (they changed).
        case persist(nodes: [String])
        /// A connected peer has sent nothing for `suspectAfter`: close the connection (dead or cut). The machine already
        /// counts it as disconnected.
        case closeLink(to: String)
        /// A member's liveness changed (for logs and metrics).
        case livenessChanged(node: String, Liveness)
        /// Call ``onTick(now:)`` again after this long.
        case wake(after: Duration)
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
    public var configuration: Configuration
    public private(set) var entries: [String: Entry] = [:] {
        didSet {
            cachedDigestHash = nil
            revision &+= 1
            // Members are never forgotten, so the count tells when the sorted list is stale.
            if nodes.count != entries.count { nodes = entries.keys.sorted() }
        }
    }
    /// Changes whenever any entry does (a record, a liveness): a shell may skip work while it stays the same.
    public private(set) var revision: UInt64 = 0
    /// The members we hold, sorted.
    public private(set) var nodes: [String] = []
    private var cachedDigestHash: UInt64?
    /// Our own record as we last changed it (it is in `entries` once signed).
    public private(set) var own: MemberRecord
    public private(set) var connected: Set<String> = []
    /// When a frame last arrived from each peer we have a link to (or had).
    private var heardAt: [String: Duration] = [:]
    /// Peers whose silence we judge ourselves: connected now, or lost and not seen advancing since.
    private var watching: Set<String> = []
    /// When a suspicion of each member first reached us.
    private var rumourSince: [String: Duration] = [:]
    private var lastSentTo: [String: Duration] = [:]
    private var rotation = 0
    private var lastSigned: Duration?
    private var ownDirty = true
    private var pushNextSigning = false

    /// - Parameter generation: distinct for each start of this member (the shell uses its wall-clock start time).
    public init(me: String, generation: UInt64, configuration: Configuration = .init()) {
        self.me = me
        self.configuration = configuration
        self.own = MemberRecord(node: me, generation: generation)
    }

    // MARK: Events

    /// Restores records saved before a restart. They count as down until they advance again.
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
        let age = configuration.downAfter + configuration.refresh
        entries[record.node] = Entry(record: record, signed: signed, lastAdvance: now - age, liveness: .down)
    }

    /// Changes fields of our own record (sync state, tokens, progress…). It is re-signed on the next tick.
    public mutating func updateOwn(_ change: (inout MemberRecord) -> Void) {
        let before = own
        change(&own)
        own.node = me
        own.generation = before.generation
        own.heartbeat = before.heartbeat
        own.suspects = before.suspects
        if own != before { ownDirty = true }
    }

    public mutating func onConnected(_ peer: String, now: Duration) {
        connected.insert(peer)
        watching.insert(peer)
        heardAt[peer] = now
    }

    /// - Parameter deliberate: we closed it ourselves (rotation, shutdown), so its silence from now on means nothing.
    ///   The peer cannot tell a deliberate close from a crash, so we re-sign and push our record at once: seeing us
    ///   advance elsewhere ends its watch on us before it would suspect us.
    public mutating func onDisconnected(_ peer: String, deliberate: Bool = false) {
        connected.remove(peer)
        lastSentTo[peer] = nil
        if deliberate {
            watching.remove(peer)
            ownDirty = true
            pushNextSigning = true
        }
    }

    /// A gossip round: judge liveness, re-sign our record when it changed or is due, send summaries.
    public mutating func onTick(now: Duration) -> [Directive] {
        var out: [Directive] = []
        for peer in connected.sorted() where now - (heardAt[peer] ?? now) >= configuration.suspectAfter {
            onDisconnected(peer)
            out.append(.closeLink(to: peer))
        }
        // Who is suspected by whom, once per round: the newest suspected version of each member, from members we do
        // not judge down (a suspicion by the suspect itself does not count).
        var suspicions: [String: RecordVersion] = [:]
        for other in entries.values where other.record.node != me && other.liveness != .down {
            for s in other.record.suspects where s.node != other.record.node {
                suspicions[s.node] = max(suspicions[s.node] ?? s.version, s.version)
            }
        }
        var suspects: [Suspicion] = []
        for node in nodes where node != me {
            let (judged, directly) = judge(node, now: now, suspicions: suspicions)
            if directly { suspects.append(Suspicion(node: node, version: entries[node]!.record.version)) }
            if judged != entries[node]!.liveness {
                entries[node]!.liveness = judged
                out.append(.livenessChanged(node: node, judged))
            }
        }
        if suspects != own.suspects {
            own.suspects = suspects
            ownDirty = true
        }
        if ownDirty || lastSigned.map({ now - $0 >= configuration.refresh }) ?? true {
            own.heartbeat += 1
            lastSigned = now
            ownDirty = false
            out.append(.signOwnRecord(own))
        }
        let peers = connected.sorted()
        if !peers.isEmpty {
            let turn = peers[rotation % peers.count]
            rotation &+= 1
            for peer in peers where peer == turn || lastSentTo[peer].map({ now - $0 >= configuration.keepalive }) ?? true {
                lastSentTo[peer] = now
                out.append(.sendSummary(to: peer))
            }
        }
        out.append(.wake(after: configuration.gossipInterval))
        return out
    }

    /// How we judge `node` now, and whether we judge it from our own silence (so we report it).
    private mutating func judge(_ node: String, now: Duration, suspicions: [String: RecordVersion]) -> (Liveness, directly: Bool) {
        let entry = entries[node]!
        let evidence = max(entry.lastAdvance, heardAt[node] ?? entry.lastAdvance)
        let silent = now - evidence
        let c = configuration
        if silent < c.suspectAfter {
            rumourSince[node] = nil
            return (.alive, false)
        }
        if watching.contains(node) {
            return (silent >= c.downAfter ? .down : .suspect, true)
        }
        let rumoured = (suspicions[node].map { $0 >= entry.record.version }) ?? false
        if rumoured {
            let since = rumourSince[node] ?? now
            rumourSince[node] = since
            return (now - since >= c.downAfter - c.suspectAfter ? .down : .suspect, false)
        }
        rumourSince[node] = nil
        if silent >= c.downAfter + c.refresh { return (.down, false) }
        if silent >= c.suspectAfter + c.refresh { return (.suspect, false) }
        return (.alive, false)
    }

    /// The shell signed our record. A change that matters to the fleet's plan is pushed at once: the record itself to
    /// every connected peer (who relay it once more, see ``onRecord(_:signed:from:now:)``), instead of waiting for the
    /// rotation to reach them.
    public mutating func onOwnRecordSigned(_ record: MemberRecord, signed: [UInt8], now: Duration) -> [Directive] {
        guard record.node == me, record.version >= (entries[me]?.record.version ?? RecordVersion(generation: 0, heartbeat: 0)) else {
            return []
        }
        let previous = entries[me]?.record
        entries[me] = Entry(record: record, signed: signed, lastAdvance: now, liveness: .alive)
        var out: [Directive] = [.persist(nodes: [me])]
        // A new plan digest is pushed to our own neighbours (agreement needs it soon) but not relayed further: it
        // changes on every member at once, and the neighbours' own digests travel the same way.
        let pushed = previous.map { Self.matters(from: $0, to: record) || $0.planDigest != record.planDigest } ?? true
        if pushNextSigning || pushed {
            pushNextSigning = false
            out += eagerRecords(of: me, except: nil, now: now)
        }
        return out
    }

    /// Whether a new version of a record changes something the sync plan or liveness depend on (not merely its
    /// heartbeat, progress, serving count or plan digest: the digest changes as a consequence of the others, on every
    /// member at once, and pushing each of those eagerly would cost every member N frames per change).
    static func matters(from old: MemberRecord, to new: MemberRecord) -> Bool {
        old.generation != new.generation || old.syncState != new.syncState || old.publishedToken != new.publishedToken
            || old.targetToken != new.targetToken || old.source != new.source
            || old.avoid != new.avoid || old.suspects != new.suspects || old.serveSlots != new.serveSlots
            || old.rsyncURL != new.rsyncURL || old.peerAddress != new.peerAddress
    }

    /// Pushes one member's record to every linked peer but `peer`: cheaper than a summary, which would cost the
    /// receiver a full digest and a round trip to find the one record that changed.
    private mutating func eagerRecords(of node: String, except peer: String?, now: Duration) -> [Directive] {
        connected.sorted().filter { $0 != peer }.map { p in
            lastSentTo[p] = now
            return .sendRecords(to: p, nodes: [node])
        }
    }

    /// A peer's summary: when our digest differs, start an exchange by sending it ours.
    public mutating func onSummary(from peer: String, hash: UInt64, now: Duration) -> [Directive] {
        heard(peer, now: now)
        return hash == digestHash ? [] : [.sendDigest(to: peer, entries: digest(), isReply: false)]
    }

    /// A peer's digest: send what it lacks; when it is not itself a reply, answer with our digest of what we lack.
    public mutating func onDigest(from peer: String, entries theirs: [DigestEntry], isReply: Bool, now: Duration) -> [Directive] {
        heard(peer, now: now)
        var theirVersions: [String: RecordVersion] = [:]
        for e in theirs { theirVersions[e.node] = max(theirVersions[e.node] ?? e.version, e.version) }
        // A full digest lists everything its sender holds, so a member missing from it is one it lacks. A reply digest
        // lists only what its sender asks for; everything else it already has.
        let newerHere = nodes.filter { node in
            guard let mine = entries[node]?.record.version else { return false }
            return theirVersions[node].map { mine > $0 } ?? !isReply
        }
        var out: [Directive] = []
        if !newerHere.isEmpty { out.append(.sendRecords(to: peer, nodes: newerHere)) }
        if !isReply {
            let wanted = theirVersions.keys.sorted().filter { node in
                guard node != me else { return false }
                return entries[node].map { $0.record.version < theirVersions[node]! } ?? true
            }
            if !wanted.isEmpty {
                // Ask by telling them what we hold for exactly those nodes; absent nodes go as version 0.0.
                let reply = wanted.map { DigestEntry(node: $0, version: entries[$0]?.record.version ?? RecordVersion(generation: 0, heartbeat: 0)) }
                out.append(.sendDigest(to: peer, entries: reply, isReply: true))
            }
        }
        return out
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
        if let existing = entries[record.node], existing.record.version >= record.version { return [] }
        let wasLiveness = entries[record.node]?.liveness
        let matters = entries[record.node].map { Self.matters(from: $0.record, to: record) } ?? true
        entries[record.node] = Entry(record: record, signed: signed, lastAdvance: now, liveness: .alive)
        rumourSince[record.node] = nil
        if !connected.contains(record.node) { watching.remove(record.node) }
        // Suspected at our newest version: refute it with a fresh record on the next tick.
        if let mine = entries[me]?.record.version, record.suspects.contains(where: { $0.node == me && $0.version >= mine }) {
            ownDirty = true
        }
        var out: [Directive] = [.persist(nodes: [record.node])]
        if wasLiveness != .alive { out.append(.livenessChanged(node: record.node, .alive)) }
        // Relayed eagerly one hop only (when it came straight from its author): the author's neighbours and theirs
        // learn a change at once, the rest through the rotation. Relaying every change eagerly at every hop would cost
        // each member a frame per link per change, O(N) per member per push.
        if matters, peer == record.node { out += eagerRecords(of: record.node, except: peer, now: now) }
        return out
    }

    private mutating func heard(_ peer: String, now: Duration) {
        if connected.contains(peer) { heardAt[peer] = now }
    }

    // MARK: Queries

    /// Node → newest version held, ours included.
    public func digest() -> [DigestEntry] {
        nodes.map { DigestEntry(node: $0, version: entries[$0]!.record.version) }
    }

    /// FNV-1a over the digest: equal for two members exactly when (barring a collision, which only delays an
    /// exchange until something changes) they hold the same versions of the same members.
    public var digestHash: UInt64 {
        mutating get {
            if let cachedDigestHash { return cachedDigestHash }
            let hash = computeDigestHash()
            cachedDigestHash = hash
            return hash
        }
    }

    private func computeDigestHash() -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        func mix(_ byte: UInt8) { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
        for entry in digest() {
            for byte in entry.node.utf8 { mix(byte) }
            mix(0)
            for value in [entry.version.generation, entry.version.heartbeat] {
                for shift in stride(from: 0, to: 64, by: 8) { mix(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
            }
        }
        return hash
    }

    /// Members judged alive (ourselves included).
    public var aliveMembers: [String] {
        nodes.filter { $0 == me || entries[$0]!.liveness == .alive }
    }
}
