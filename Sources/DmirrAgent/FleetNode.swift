import DmirrCore
import DmirrNet
import DmirrStore
import DmirrWire
import Foundation
import Logging
import X509

/// The agent's membership shell: owns the core ``Membership`` state machine, the open peer sessions and the signer,
/// and carries out the machine's directives (docs/style.md §2: shells only interpret, exhaustively).
public actor FleetNode {
    public let identity: PeerIdentity
    private var membership: Membership
    private var signer: RecordSigner
    /// Our own certificate: its file and when it expires, for the expiry warnings and `dmirr status`.
    private var ownCertificate: (path: String, notAfter: Date)?
    /// The expiry stage last logged (0 none, 1 expires soon, 2 expired), so each is logged once per certificate.
    private var expiryLogged = 0
    private let store: StateStore
    private let logger: Logger
    private var sessions: [String: PeerSession] = [:]
    /// Per open session, the author certificate each node's records last went out with (sent once per connection).
    private var certificatesSent: [ObjectIdentifier: [String: [UInt8]]] = [:]
    private var openedAt: [ObjectIdentifier: Duration] = [:]
    /// Author certificates verified so far. Kept when a member is forgotten for an expired record (see `forget`).
    private(set) var authors = RecordSigner.AuthorCache()
    private var plan = PlanStatus()
    /// The revocation list in force, as signed by the CA (relayed as it is), and the file it may come from.
    private var signedRevocations: WireSignedRevocationList?
    private var revocationFile: (path: String, modified: Date?)?

    /// What the sync coordinator last decided, for `dmirr status`.
    public struct PlanStatus: Sendable {
        public var targetSeenMillis: Int64 = 0
        public var token = ""
        public var digest = ""
        public var agreed = false
        public var agreeing = 0
        public var members = 0
        public var order: [String] = []
        /// When our own fetch of upstream's token last answered (Unix ms), and why it failed ("" when it did not).
        public var lastPollMillis: Int64 = 0
        public var lastPollError = ""
        public init() {}
    }

    public func setPlanStatus(_ status: PlanStatus) { plan = status }

    private var announced: (@Sendable (String) -> Void)?
    private var syncRequests: (@Sendable (SyncRequest) async -> String?)?

    /// Where `Announce` messages go (the sync service).
    public func onAnnounce(_ handler: @escaping @Sendable (String) -> Void) { announced = handler }

    /// What `dmirr sync` beside the agent asks for (the control socket).
    public struct SyncRequest: Sendable, Equatable {
        /// A member to pull from ("" or "upstream": upstream).
        public var source: String
        /// Re-check the tree against the source even when it holds our token.
        public var force: Bool
        public init(source: String = "", force: Bool = false) {
            self.source = source
            self.force = force
        }
    }

    /// Where sync requests go (the sync service); it answers nil when it took one, else why not.
    func onSyncRequest(_ handler: @escaping @Sendable (SyncRequest) async -> String?) { syncRequests = handler }

    /// `dmirr sync` beside the agent: nil once the request is under way (the status then shows it), else why it was
    /// refused.
    public func requestSync(_ request: SyncRequest) async -> String? {
        guard let syncRequests else { return "the agent's sync service is not running" }
        return await syncRequests(request)
    }

    /// What the mirrorlist and metalink are made from: our advertised target (confirmed or attested), the members
    /// alive now and ourselves, and what each of them attests (token and manifest root of its last upstream pull).
    public func clientView() -> (target: String, members: [MirrorList.Member], claims: [Attestations.Claim]) {
        let own = membership.own
        var records = [own]
        records += membership.entries.values.filter { $0.record.node != identity.name && $0.liveness == .alive }.map(\.record)
        let members = records.map {
            MirrorList.Member(node: $0.node, publicURL: $0.publicURL, region: $0.region, publishedToken: $0.publishedToken,
                              lastSyncMillis: $0.lastSyncMillis ?? 0)
        }
        let claims = records.map { Attestations.Claim(node: $0.node, token: $0.attestToken, root: $0.attestRoot) }
        return (own.targetToken, members, claims)
    }

    /// A member's record as we hold it (nil: unknown), with its liveness.
    public func member(_ node: String) -> (record: MemberRecord, liveness: Liveness)? {
        membership.entries[node].map { ($0.record, $0.liveness) }
    }
    public let clock: any AgentClock

    public init(identity: PeerIdentity, generation: UInt64, configuration: Membership.Configuration, signer: RecordSigner,
                store: StateStore, logger: Logger, clock: any AgentClock = SystemAgentClock()) {
        self.identity = identity
        self.membership = Membership(me: identity.name, generation: generation, configuration: configuration)
        self.signer = signer
        self.store = store
        self.logger = logger
        self.clock = clock
    }

    var now: Duration { clock.now }
    private var wallMillis: Int64 { clock.wallMillis }
    /// The most records one `GossipRecords` may carry (proto/PROTOCOL.md); more closes the connection.
    static let maxRecordsPerMessage = 1024
    /// How many records we put in one message.
    static let recordsPerMessage = 256

    /// Loads what was persisted before a restart: the revocation list, then the members (re-verifying each record
    /// under that list).
    public func restore() async {
        if let bytes = try? store.revocations(), let signed = try? WireSignedRevocationList(serializedBytes: bytes),
            case .failure(let rejection) = adoptRevocations(signed, from: "the state database")
        {
            logger.warning("refused the stored revocation list", metadata: ["error": "\(rejection)"])
        }
        guard let stored = try? store.members() else { return }
        let batch = stored.compactMap { try? WireSignedRecord(serializedBytes: $0.signedRecord) }
        let (results, cache) = await signer.verify(batch: batch, known: authors, now: clock.wallNow)
        authors.merge(cache)
        var kept = 0
        var forgotten: [String] = []
        for (index, result) in results.enumerated() {
            guard case .success(let verified) = result,
                RecordPolicy.problem(with: verified.record, nowMillis: wallMillis) == nil
            else {
                // Expired while we were down, revoked, or from an older protocol: forgotten.
                (try? WireMemberRecord(serializedBytes: Array(batch[index].record))).map { forgotten.append($0.node) }
                continue
            }
            membership.restore(verified.record, signed: (try? batch[index].serializedBytes()) ?? [], now: now)
            kept += 1
        }
        try? store.deleteMembers(forgotten.filter { $0 != identity.name })
        logger.info("restored members", metadata: ["fleet.members": "\(kept)", "fleet.forgotten": "\(forgotten.count)"])
    }

    // MARK: Revocations

    /// Watches `[tls] crl`: read now, and again whenever its modification time changes (checked every round), so an
    /// operator revokes a member by replacing the file on any one agent.
    public func watchRevocations(at path: String) throws(NetError) {
        revocationFile = (path, nil)
        if !FileManager.default.fileExists(atPath: path) {
            // The CA has revoked nothing yet: the file appears with the first `dmirr cert revoke`.
            logger.notice("no revocation list yet; watching for it", metadata: ["tls.crl": "\(path)"])
        }
        try reloadRevocationFile()
    }

    private func reloadRevocationFile() throws(NetError) {
        guard let file = revocationFile else { return }
        let modified = (try? FileManager.default.attributesOfItem(atPath: file.path))?[.modificationDate] as? Date
        guard modified != file.modified else { return }
        revocationFile = (file.path, modified)
        let text: String
        do { text = try String(contentsOfFile: file.path, encoding: .utf8) } catch {
            throw NetError(.tls, "cannot read the revocation list \(file.path) ([tls] crl)", underlying: error)
        }
        let signed: WireSignedRevocationList
        do { signed = try FleetVerifier.signedRevocations(pem: text) } catch {
            throw NetError(.tls, "\(file.path) ([tls] crl) is not a dmirr revocation list", underlying: error)
        }
        if case .failure(let rejection) = adoptRevocations(signed, from: file.path) {
            throw NetError(.tls, "\(file.path) ([tls] crl): \(rejection)")
        }
    }

    /// Checks a signed list against the CA and puts it in force if it is newer than ours: persists it, closes the
    /// links of revoked members, forgets their records and passes the list on to every other peer. Succeeds with
    /// whether it was newer; fails, changing nothing, when the CA did not sign it or it breaks the limits.
    private func adoptRevocations(
        _ signed: WireSignedRevocationList, from source: String, except sender: String? = nil
    ) -> Result<Bool, FleetVerifier.Rejection> {
        let list: RevocationList
        switch signer.verifier.openRevocations(signed) {
        case .success(let l): list = l
        case .failure(let rejection): return .failure(rejection)
        }
        guard signer.verifier.adopt(list) else { return .success(false) }
        signedRevocations = signed
        if let bytes = try? signed.serializedBytes() as [UInt8] {
            do { try store.saveRevocations(number: list.number, signed: bytes) } catch {
                logger.error("cannot persist the revocation list", metadata: ["error": "\(error)"])
            }
        }
        logger.notice("a revocation list is in force", metadata: [
            "source": "\(source)", "revocations.number": "\(list.number)", "revocations.entries": "\(list.entries.count)",
        ])
        for (peer, session) in sessions {
            guard let entry = signer.verifier.revocation(of: session) else { continue }
            logger.warning("closing the link to a revoked member", metadata: ["peer.node": "\(peer)", "revocation": "\(entry)"])
            session.reject(.revoked, "your certificate is revoked: \(entry)")
            detach(session)
            session.close()
        }
        var revoked: [String] = []
        for node in membership.nodes where node != identity.name {
            guard signer.revocation(ofAuthor: node, in: authors) != nil else { continue }
            revoked.append(node)
        }
        forget(revoked, why: "its certificate is revoked", certificates: true)
        var envelope = WireEnvelope()
        envelope.revocations = signed
        for peer in sessions.keys where peer != sender { send(envelope, to: peer) }
        return .success(true)
    }

    /// Forgets members in memory and in SQLite.
    /// - Parameter certificates: also drop their certificates from the author cache (revoked ones). A member forgotten
    ///   because its record expired keeps its certificate here: it may come back (a long freeze, a clock corrected),
    ///   and a peer that already sent us its certificate on their link sends its next records without it, which we
    ///   could not check otherwise until that link was replaced. A cached certificate is checked for validity and
    ///   revocation at every use, so keeping it trusts nothing more.
    private func forget(_ nodes: [String], why: String, certificates: Bool = false) {
        guard !nodes.isEmpty else { return }
        for node in nodes {
            membership.forget(node)
            if certificates { authors.forget(node) }
            logger.notice("forgot a member", metadata: ["member.node": "\(node)", "reason": "\(why)"])
        }
        do { try store.deleteMembers(nodes) } catch {
            logger.error("cannot forget member records", metadata: ["error": "\(error)"])
        }
    }

    public func updateOwn(_ change: @Sendable (inout MemberRecord) -> Void) {
        membership.updateOwn(change)
    }

    public var own: MemberRecord { membership.own }

    public var connectedPeers: Set<String> { Set(sessions.keys) }

    /// The clocks of the peers heard so far disagree too much to say where the fleet's time is: more links are wanted
    /// (``ClockOffset/determined``).
    public var clockWantsSamples: Bool { (clock as? FleetTimeClock).map { !$0.determined } ?? false }

    /// The records of the members judged alive, ours excluded: the view the sync plan is computed from.
    public func liveRecords() -> [MemberRecord] {
        membership.entries.values.filter { $0.record.node != identity.name && $0.liveness == .alive }.map(\.record)
    }

    /// Records of members suspected but not yet down.
    public func suspectRecords() -> [MemberRecord] {
        membership.entries.values.filter { $0.record.node != identity.name && $0.liveness == .suspect }.map(\.record)
    }

    /// The rsync URL a member advertises, if we know the member.
    public func rsyncURL(of node: String) -> String? {
        membership.entries[node].map(\.record.rsyncURL).flatMap { $0.isEmpty ? nil : $0 }
    }

    /// Peer addresses of members we know, for the dialer.
    public var knownAddresses: [(node: String, address: String)] {
        membership.entries.values.filter { $0.record.node != identity.name && !$0.record.peerAddress.isEmpty && $0.liveness != .down }
            .map { ($0.record.node, $0.record.peerAddress) }.sorted { $0.node < $1.node }
    }

    // MARK: Sessions

    /// Closes our longest-open peer link when live members exist that we have no link to, so that over time every
    /// member talks to different peers (no fixed, possibly lopsided, topology). Returns the peer let go.
    public func rotate(olderThan age: Duration) async -> String? {
        let unlinked = membership.entries.values.contains {
            $0.record.node != identity.name && $0.liveness == .alive && sessions[$0.record.node] == nil && !$0.record.peerAddress.isEmpty
        }
        guard unlinked,
            let (peer, session) = sessions.min(by: { (openedAt[$0.value.id] ?? .zero) < (openedAt[$1.value.id] ?? .zero) }),
            now - (openedAt[session.id] ?? now) >= age
        else { return nil }
        sessions[peer] = nil
        certificatesSent[session.id] = nil
        openedAt[session.id] = nil
        membership.onDisconnected(peer, deliberate: true, now: now)
        session.close()
        return peer
    }

    public func attach(_ session: PeerSession) {
        guard session.peer.role == .node else { return }
        guard session.peer.name != identity.name else {
            // Our own address among the seeds (or behind a load balancer): a link to ourselves is no link.
            logger.notice("closing a connection to ourselves", metadata: ["peer.identity": "\(session.peer)"])
            session.close()
            return
        }
        if let previous = sessions[session.peer.name], previous.id != session.id {
            // One link per peer: a second session from the same node replaces the first, which is closed.
            logger.notice("a peer opened a second connection; closing the first", metadata: ["peer.node": "\(session.peer.name)"])
            certificatesSent[previous.id] = nil
            openedAt[previous.id] = nil
            previous.close()
        }
        sessions[session.peer.name] = session
        observeClock(of: session)
        certificatesSent[session.id] = [:]
        openedAt[session.id] = now
        membership.onConnected(session.peer.name, now: now)
        if let signedRevocations {
            // Every new link learns the list in force, so a revocation reaches members that were away.
            var envelope = WireEnvelope()
            envelope.revocations = signedRevocations
            send(envelope, to: session.peer.name)
        }
    }

    /// Takes the peer's `Hello` clock into the fleet-time correction; a change is logged and our record re-signed
    /// with the corrected times.
    private func observeClock(of session: PeerSession) {
        guard session.peerHello.wallUnixMs > 0, let fleetTime = clock as? FleetTimeClock,
            fleetTime.observe(peer: session.peer.name, helloWallMillis: Int64(clamping: session.peerHello.wallUnixMs))
        else { return }
        let (applied, measured) = fleetTime.correction
        let seconds = Double(applied) / 1000
        if applied == 0 {
            logger.notice("this host's clock agrees with its peers' again; records are stamped with it uncorrected")
        } else {
            let direction = applied > 0 ? "behind" : "ahead of"
            logger.warning("this host's clock is \(abs(seconds)) s \(direction) its peers' (by what most of their Hellos agree on): records are stamped and judged in the fleet's time meanwhile. Fix the host's clock (NTP).",
                           metadata: ["clock.correction_ms": "\(applied)", "clock.measured_ms": "\(measured)"])
        }
        if measured != applied, applied != 0 {
            logger.error("this host's clock is further off than dmirr corrects (\(ClockOffset.limit / 3_600_000) h): records it signs may be refused",
                         metadata: ["clock.measured_ms": "\(measured)"])
        }
        membership.resignOwn()
    }

    public func detach(_ session: PeerSession) {
        certificatesSent[session.id] = nil
        openedAt[session.id] = nil
        guard let current = sessions[session.peer.name], current.id == session.id else { return }
        sessions[session.peer.name] = nil
        membership.onDisconnected(session.peer.name, now: now)
    }

    /// Serves one session, accepted or dialed, until it closes: attached while open, detached however it ends.
    public nonisolated func serve(_ session: PeerSession, _ messages: sending PeerMessages) async throws {
        await attach(session)
        do {
            for try await message in messages {
                try await handle(message, from: session)
            }
        } catch {
            await detach(session)
            throw error
        }
        await detach(session)
    }

    /// Handles one message from an authenticated peer. Throws to close the connection.
    public func handle(_ envelope: WireEnvelope, from session: PeerSession) async throws {
        switch envelope.body {
        case .summary(let summary):
            guard HelloPolicy.permits(session.peer, .gossip) else {
                session.reject(.forbidden, "operator certificates may not gossip")
                throw NetError(.protocolViolation, "\(session.peer) tried to gossip")
            }
            // A 1.0 peer sends only the whole digest's hash.
            let hashes = summary.hashes.isEmpty ? [summary.digestHash] : Array(summary.hashes.prefix(Membership.maxBuckets))
            let received = Membership.Summary(buckets: Int(summary.buckets), first: Int(min(summary.first, UInt32(Membership.maxBuckets))), hashes: hashes)
            await perform(membership.onSummary(from: session.peer.name, received, now: now))
        case .digest(let digest):
            guard HelloPolicy.permits(session.peer, .gossip) else {
                session.reject(.forbidden, "operator certificates may not gossip")
                throw NetError(.protocolViolation, "\(session.peer) tried to gossip")
            }
            let entries = digest.entries.map {
                Membership.DigestEntry(node: $0.node, version: RecordVersion(generation: $0.generation, heartbeat: $0.heartbeat))
            }
            let scope: Membership.DigestScope =
                if digest.isReply { .reply }
                else if digest.announce { .announce }
                else if digest.bucketCount > 1 {
                    .buckets(digest.buckets.map { Int($0) }, of: Int(min(digest.bucketCount, UInt32(Membership.maxBuckets))))
                } else { .full }
            await perform(membership.onDigest(from: session.peer.name, entries: entries, scope: scope, now: now))
        case .records(let records):
            guard HelloPolicy.permits(session.peer, .gossip) else {
                session.reject(.forbidden, "operator certificates may not gossip")
                throw NetError(.protocolViolation, "\(session.peer) tried to gossip")
            }
            // Each record costs a signature check here, on the actor: one message may not ask for more than the cap.
            guard records.records.count <= Self.maxRecordsPerMessage else {
                let message = "\(records.records.count) records in one message, over the cap of \(Self.maxRecordsPerMessage)"
                logger.warning("closed a peer that sent too many records at once", metadata: [
                    "peer.identity": "\(session.peer)", "records": "\(records.records.count)",
                ])
                session.reject(.malformed, message)
                throw NetError(.protocolViolation, "\(session.peer): \(message)")
            }
            // Verified off the actor (a batch of up to the cap costs tens of milliseconds of signature checks); other
            // peers' messages are handled meanwhile, and this session's next message waits for this one.
            // Records no newer than what we hold cannot change anything: dropped before their signatures are checked.
            let claimed = records.records.map { signed in
                (try? WireMemberRecord(serializedBytes: Array(signed.record))).map {
                    (node: $0.node, version: RecordVersion(generation: $0.generation, heartbeat: $0.heartbeat))
                }
            }
            let newer = membership.newerThanHeld(claimed, from: session.peer.name, now: now)
            let batch = zip(records.records, newer).filter(\.1).map(\.0)
            guard !batch.isEmpty else { break }
            let (results, cache) = await signer.verify(batch: batch, known: authors, now: clock.wallNow)
            authors.merge(cache)
            for (index, result) in results.enumerated() {
                var signed = batch[index]
                switch result {
                case .success(let verified):
                    if let problem = RecordPolicy.problem(with: verified.record, nowMillis: wallMillis) {
                        logger.warning("dropped a member record that breaks the protocol's limits", metadata: [
                            "peer.identity": "\(session.peer)", "record.node": "\(verified.record.node)", "record.problem": "\(problem)",
                        ])
                        continue
                    }
                    // Kept (and persisted, and relayed) whole, with the certificate it may have arrived without.
                    signed.authorCertificate = Data(verified.certificateDER)
                    let bytes: [UInt8] = (try? signed.serializedBytes()) ?? []
                    await perform(membership.onRecord(verified.record, signed: bytes, from: session.peer.name, now: now))
                case .failure(let rejection):
                    logger.warning("dropped a member record relayed by a peer", metadata: [
                        "peer.identity": "\(session.peer)", "record.rejection": "\(rejection)",
                    ])
                }
            }
        case .announce(let announce):
            logger.info("a push was announced", metadata: ["peer.identity": "\(session.peer)", "announce.token": "\(announce.token)"])
            var ack = WireEnvelope()
            ack.announceAck = .with {
                $0.node = identity.name
                $0.targetToken = membership.own.targetToken
            }
            announced?(announce.token)
            guard session.enqueue(ack) else { throw NetError(.connection, session.outbox.closeReason.map { "\($0)" } ?? "the peer does not read its answers") }
        case .statusRequest:
            var response = WireEnvelope()
            response.statusResponse = status()
            guard session.enqueue(response) else { throw NetError(.connection, session.outbox.closeReason.map { "\($0)" } ?? "the peer does not read its answers") }
        case .revocations(let signed):
            if case .failure(let rejection) = adoptRevocations(signed, from: "peer \(session.peer.name)", except: session.peer.name) {
                logger.warning("refused a revocation list", metadata: ["peer.identity": "\(session.peer)", "error": "\(rejection)"])
            }
        case .error(let error):
            logger.warning("a peer reported an error on our link", metadata: [
                "peer.node": "\(session.peer.name)", "error.code": "\(error.code)", "error": "\(error.message.prefix(500))",
            ])
        case .hello, .statusResponse, .announceAck, .syncRequest, nil:
            break  // a SyncRequest is for the local control socket only
        }
    }

    private var lastTick: Duration?

    // MARK: Certificates

    /// How long before our certificate expires the agent starts warning.
    public static let expiryWarning: TimeInterval = 14 * 86_400

    /// Our certificate file and its expiry (called at start and after each reload).
    public func useCertificate(path: String, notAfter: Date) {
        ownCertificate = (path, notAfter)
        expiryLogged = 0
        checkOwnCertificate()
    }

    /// Puts rotated credentials in force: our records are signed with the new key and carry the new certificate from
    /// the next round on; sessions whose peer no longer passes the fleet's checks (a CA taken out of the bundle) are
    /// closed, and their peers come back through a fresh handshake if they can.
    public func rotate(to tls: FleetTLS, signer: RecordSigner) async {
        self.signer = signer
        useCertificate(path: tls.certPath, notAfter: tls.certificate.notValidAfter)
        membership.resignOwn()
        await perform(membership.onTick(now: now))
        for (peer, session) in sessions {
            guard let certificate = session.certificate else { continue }
            if case .failure(let rejection) = await signer.verifier.check(certificate, role: nil, now: clock.wallNow) {
                logger.warning("closed the link to a peer the reloaded CA bundle does not trust", metadata: ["peer.node": "\(peer)", "error": "\(rejection)"])
                detach(session)
                session.close()
            }
        }
    }

    /// Logs once when our certificate comes within ``expiryWarning`` of its end, and once when it has expired (peers
    /// then refuse new connections from us and every record we sign).
    private func checkOwnCertificate() {
        guard let own = ownCertificate else { return }
        let left = own.notAfter.timeIntervalSince(clock.wallNow)
        let stage = left <= 0 ? 2 : left <= Self.expiryWarning ? 1 : 0
        guard stage > expiryLogged else { return }
        expiryLogged = stage
        let metadata: Logger.Metadata = ["tls.cert": "\(own.path)", "tls.not_after": "\(own.notAfter.formatted(.iso8601))"]
        if stage == 2 {
            logger.error("this agent's certificate has expired: peers refuse its connections and its records, so it has left the fleet. Issue a new one (`dmirr cert issue` or `dmirr cert request`/`sign`), put it at the same path and send the agent SIGHUP.", metadata: metadata)
        } else {
            logger.warning("this agent's certificate expires in \(Int(left / 86_400)) days; issue a new one and send the agent SIGHUP", metadata: metadata)
        }
    }

    /// Closes the links of peers whose certificate has expired since their handshake (TLS checks validity only then),
    /// naming them.
    private func closeExpiredPeers() {
        let wallNow = clock.wallNow
        for (peer, session) in sessions {
            guard let certificate = session.certificate, certificate.notValidAfter < wallNow else { continue }
            logger.warning("closed the link to a peer whose certificate has expired; it is refused until it rotates its certificate",
                           metadata: ["peer.node": "\(peer)", "tls.not_after": "\(certificate.notValidAfter.formatted(.iso8601))"])
            session.reject(.certificateExpired, "your certificate expired at \(certificate.notValidAfter.formatted(.iso8601)); issue a new one and reload it (SIGHUP)")
            detach(session)
            session.close()
        }
    }

    /// How long ago the last gossip round ran (nil: none yet).
    public func sinceLastTick() -> Duration? { lastTick.map { now - $0 } }

    /// A gossip round. First, links whose peer stopped reading (a write pending too long) are closed.
    public func tick() async {
        lastTick = now
        for (peer, session) in sessions {
            if let reason = session.outbox.check() {
                logger.warning("closed the link to a peer that does not read", metadata: ["peer.node": "\(peer)", "reason": "\(reason)"])
                detach(session)
            }
        }
        do { try reloadRevocationFile() } catch {
            logger.error("kept the revocation list in force", metadata: ["error": "\(error)"])
        }
        checkOwnCertificate()
        closeExpiredPeers()
        // A record past its expiry can no longer be relayed or believed: its member is forgotten (it has been judged
        // down for a while by then, see docs/security.md).
        forget(membership.expired(atWallMillis: wallMillis), why: "its record expired (down since before the expiry)")
        await perform(membership.onTick(now: now))
    }

    private func perform(_ directives: [Membership.Directive]) async {
        for directive in directives {
            switch directive {
            case .signOwnRecord(let record):
                do {
                    // Valid for two refreshes plus down_after: renewed long before, and gone soon after we stop.
                    var record = record
                    let refresh = membership.configuration.refresh(members: membership.entries.count)
                    let lifetime = refresh * 2 + membership.configuration.downAfter
                    record.expiresMillis = wallMillis + lifetime.components.seconds * 1000
                    let bytes: [UInt8] = try signer.sign(record).serializedBytes()
                    await perform(membership.onOwnRecordSigned(record, signed: bytes, now: now))
                } catch {
                    logger.error("cannot sign our member record", metadata: ["error": "\(error)"])
                }
            case .sendDigest(let peer, let entries, let scope):
                var envelope = WireEnvelope()
                envelope.digest = .with {
                    switch scope {
                    case .full: break
                    case .reply: $0.isReply = true
                    case .announce: $0.announce = true
                    case .buckets(let buckets, let count):
                        $0.buckets = buckets.map { UInt32($0) }
                        $0.bucketCount = UInt32(count)
                    }
                    $0.entries = entries.map { e in
                        .with {
                            $0.node = e.node
                            $0.generation = e.version.generation
                            $0.heartbeat = e.version.heartbeat
                        }
                    }
                }
                send(envelope, to: peer)
            case .sendSummary(let peer, let summary):
                var envelope = WireEnvelope()
                envelope.summary = .with {
                    $0.hashes = summary.hashes
                    if summary.buckets <= 1, let whole = summary.hashes.first { $0.digestHash = whole }
                    $0.first = UInt32(summary.first)
                    $0.buckets = UInt32(summary.buckets)
                }
                send(envelope, to: peer)
            case .sendRecords(let peer, let nodes):
                guard let session = sessions[peer] else { break }
                var sent = certificatesSent[session.id] ?? [:]
                var records: [WireSignedRecord] = []
                for node in nodes {
                    guard let stored = membership.entries[node], var signed = try? WireSignedRecord(serializedBytes: stored.signed) else { continue }
                    let certificate = Array(signed.authorCertificate)
                    if sent[node] == certificate {
                        signed.authorCertificate = Data()
                        signed.authorIntermediates = []
                    } else {
                        sent[node] = certificate
                    }
                    records.append(signed)
                }
                certificatesSent[session.id] = sent
                // In messages of at most `recordsPerMessage`, far under what a receiver accepts in one.
                for start in stride(from: 0, to: records.count, by: Self.recordsPerMessage) {
                    var envelope = WireEnvelope()
                    envelope.records = .with { $0.records = Array(records[start..<min(start + Self.recordsPerMessage, records.count)]) }
                    send(envelope, to: peer)
                }
            case .persist(let nodes):
                let members = nodes.compactMap { node in
                    membership.entries[node].map {
                        StateStore.StoredMember(node: node, signedRecord: $0.signed, generation: $0.record.generation, heartbeat: $0.record.heartbeat)
                    }
                }
                do { try store.saveMembers(members, at: clock.wallNow) } catch {
                    logger.error("cannot persist member records", metadata: ["error": "\(error)"])
                }
            case .closeLink(let peer):
                if let session = sessions.removeValue(forKey: peer) {
                    certificatesSent[session.id] = nil
                    logger.notice("closing a silent peer link", metadata: ["peer.node": "\(peer)"])
                    session.close()
                }
            case .distrusted(let node, let reason):
                logger.warning("ignored a claim a member cannot make", metadata: ["member.node": "\(node)", "reason": "\(reason)"])
            case .livenessChanged(let node, let liveness):
                logger.notice("member liveness changed", metadata: ["member.node": "\(node)", "member.liveness": "\(liveness.rawValue)"])
            case .resumedAfterPause(let late):
                // Under a second is scheduling noise on a busy host (the round is excused all the same).
                logger.log(level: late >= .seconds(1) ? .warning : .debug,
                           "this agent's gossip round ran late: it was stopped, suspended or starved of CPU; its peers' silence in that time is not held against them",
                           metadata: ["late": "\(DurationText.format(late))"])
            case .wake:
                break  // the gossip service ticks on its own interval
            }
        }
    }

    /// Queues a message for a linked peer; never waits for its socket. A peer that does not read loses its link.
    private func send(_ envelope: WireEnvelope, to peer: String) {
        guard let session = sessions[peer] else { return }
        if !session.enqueue(envelope) {
            // Closed, now or a moment ago: let go of the link at once rather than queue more for it.
            logger.warning("closed the link to a peer that does not read", metadata: [
                "peer.node": "\(peer)", "reason": "\(session.outbox.closeReason.map { "\($0)" } ?? "the connection is closed")",
            ])
            detach(session)
        }
    }

    // MARK: Status

    /// The fleet as this node sees it.
    public func status() -> WireStatusResponse {
        let wallNow = clock.wallNow
        let monoNow = now
        return .with {
            $0.fleet = identity.fleet
            $0.node = identity.name
            $0.targetToken = membership.own.targetToken
            $0.targetSeenUnixMs = plan.targetSeenMillis
            $0.planToken = plan.token
            $0.planDigest = plan.digest
            $0.planAgreed = plan.agreed
            $0.planAgreeing = UInt32(clamping: plan.agreeing)
            $0.planMembers = UInt32(clamping: plan.members)
            $0.lastPollUnixMs = plan.lastPollMillis
            $0.lastPollError = plan.lastPollError
            $0.certificateNotAfterUnixMs = ownCertificate.map { Int64($0.notAfter.timeIntervalSince1970 * 1000) } ?? 0
            let positions = Dictionary(uniqueKeysWithValues: plan.order.enumerated().map { ($1, $0 + 1) })
            $0.members = membership.entries.values.sorted { $0.record.node < $1.record.node }.map { entry in
                .with {
                    $0.record = WireRecords.wire(entry.record.node == identity.name ? membership.own.withVersion(of: entry.record) : entry.record)
                    $0.liveness = entry.liveness.rawValue
                    $0.position = UInt32(positions[entry.record.node] ?? 0)
                    let heardAgo = monoNow - entry.lastAdvance
                    $0.lastHeardUnixMs = Int64(wallNow.addingTimeInterval(-Double(heardAgo.components.seconds)).timeIntervalSince1970 * 1000)
                }
            }
        }
    }
}

extension PeerSession {
    /// Distinguishes two sessions with the same peer (a dial and an accept crossing).
    var id: ObjectIdentifier { ObjectIdentifier(channelIdentity) }
}

extension MemberRecord {
    /// Our freshest fields with the version last signed (status shows what we are, not only what we last gossiped).
    func withVersion(of signed: MemberRecord) -> MemberRecord {
        var r = self
        r.generation = signed.generation
        r.heartbeat = signed.heartbeat
        return r
    }
}
