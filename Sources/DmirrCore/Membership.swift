/// The gossip membership state machine (DESIGN.md §4 "Membership"), sans I/O in the style of SWIM.Instance: the agent
/// and the simulator feed it events with the current monotonic time and carry out the directives it returns.
///
/// Push-pull anti-entropy: each round a member sends the digest of what it holds (node → version) to the peers it is
/// connected to; a receiver answers with the records the sender lacks or holds older, plus a reply digest of its own
/// so the sender can push back what the receiver lacks. Records are opaque signed bytes to this machine: the shell
/// verifies signatures before ``onRecord(_:signed:from:now:)`` and signs this member's own record when told to.
/// A member whose record has not advanced for `suspectAfter` is suspect, for `downAfter` down.
public struct Membership: Sendable {
    public struct Configuration: Sendable {
        public var gossipInterval: Duration = .seconds(1)
        /// How often this member advances its own heartbeat (and so re-signs and re-spreads its record). Fewer
        /// advances mean less gossip; it must stay well under `suspectAfter`.
        public var heartbeatInterval: Duration = .seconds(2)
        public var suspectAfter: Duration = .seconds(10)
        public var downAfter: Duration = .seconds(60)

        public init() {}
    }

    /// What the shell MUST do.
    public enum Directive: Sendable, Equatable {
        /// Sign this record as our own and hand the bytes back with ``onOwnRecordSigned(_:signed:)``.
        case signOwnRecord(MemberRecord)
        /// Send our digest to a connected peer (`isReply`: in answer to its digest; it must not answer with another).
        case sendDigest(to: String, entries: [DigestEntry], isReply: Bool)
        /// Send these members' stored signed records to a peer.
        case sendRecords(to: String, nodes: [String])
        /// Persist these members' records (they changed).
        case persist(nodes: [String])
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
    public private(set) var entries: [String: Entry] = [:]
    /// Our own record as we last changed it (it is in `entries` once signed).
    public private(set) var own: MemberRecord
    public private(set) var connected: Set<String> = []
    private var lastHeartbeat: Duration?
    private var ownDirty = true

    /// - Parameter generation: distinct for each start of this member (the shell uses its wall-clock start time).
    public init(me: String, generation: UInt64, configuration: Configuration = .init()) {
        self.me = me
        self.configuration = configuration
        self.own = MemberRecord(node: me, generation: generation)
    }

    // MARK: Events

    /// Restores records saved before a restart. They count as not heard from until they advance again.
    public mutating func restore(_ record: MemberRecord, signed: [UInt8], now: Duration) {
        guard record.node != me else {
            // Our own old record: keep its fields, never its version (a new generation outranks it).
            let generation = own.generation
            own = record
            own.generation = max(generation, record.generation + 1)
            own.heartbeat = 0
            ownDirty = true
            return
        }
        let age = configuration.downAfter
        entries[record.node] = Entry(record: record, signed: signed, lastAdvance: now - age, liveness: .down)
    }

    /// Changes fields of our own record (sync state, tokens, progress…). It is re-signed on the next tick.
    public mutating func updateOwn(_ change: (inout MemberRecord) -> Void) {
        let before = own
        change(&own)
        own.node = me
        own.generation = before.generation
        own.heartbeat = before.heartbeat
        if own != before { ownDirty = true }
    }

    public mutating func onConnected(_ peer: String) { connected.insert(peer) }
    public mutating func onDisconnected(_ peer: String) { connected.remove(peer) }

    /// A gossip round: advance our heartbeat when due, judge liveness, send digests.
    public mutating func onTick(now: Duration) -> [Directive] {
        var out: [Directive] = []
        if ownDirty || lastHeartbeat.map({ now - $0 >= configuration.heartbeatInterval }) ?? true {
            own.heartbeat += 1
            lastHeartbeat = now
            ownDirty = false
            out.append(.signOwnRecord(own))
        }
        for node in entries.keys.sorted() where node != me {
            let entry = entries[node]!
            let silent = now - entry.lastAdvance
            let judged: Liveness = silent >= configuration.downAfter ? .down : silent >= configuration.suspectAfter ? .suspect : .alive
            if judged != entry.liveness {
                entries[node]!.liveness = judged
                out.append(.livenessChanged(node: node, judged))
            }
        }
        let digest = self.digest()
        for peer in connected.sorted() {
            out.append(.sendDigest(to: peer, entries: digest, isReply: false))
        }
        out.append(.wake(after: configuration.gossipInterval))
        return out
    }

    /// The shell signed our record.
    public mutating func onOwnRecordSigned(_ record: MemberRecord, signed: [UInt8], now: Duration) -> [Directive] {
        guard record.node == me, record.version >= (entries[me]?.record.version ?? RecordVersion(generation: 0, heartbeat: 0)) else {
            return []
        }
        entries[me] = Entry(record: record, signed: signed, lastAdvance: now, liveness: .alive)
        return [.persist(nodes: [me])]
    }

    /// A peer's digest: send what it lacks; when it is not itself a reply, answer with our digest of what we lack.
    public mutating func onDigest(from peer: String, entries theirs: [DigestEntry], isReply: Bool, now: Duration) -> [Directive] {
        var theirVersions: [String: RecordVersion] = [:]
        for e in theirs { theirVersions[e.node] = max(theirVersions[e.node] ?? e.version, e.version) }
        let newerHere = entries.keys.sorted().filter { node in
            guard let mine = entries[node]?.record.version else { return false }
            return theirVersions[node].map { mine > $0 } ?? true
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
        entries[record.node] = Entry(record: record, signed: signed, lastAdvance: now, liveness: .alive)
        var out: [Directive] = [.persist(nodes: [record.node])]
        if wasLiveness != .alive { out.append(.livenessChanged(node: record.node, .alive)) }
        return out
    }

    // MARK: Queries

    /// Node → newest version held, ours included.
    public func digest() -> [DigestEntry] {
        entries.keys.sorted().map { DigestEntry(node: $0, version: entries[$0]!.record.version) }
    }

    /// Members judged alive (ourselves included).
    public var aliveMembers: [String] {
        entries.keys.sorted().filter { $0 == me || entries[$0]!.liveness == .alive }
    }
}
