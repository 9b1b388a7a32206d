import DmirrCore
import DmirrNet
import DmirrStore
import DmirrSync
import DmirrWire
import Foundation
import Logging

/// `dmirr sync --source NODE` without asking an agent: where NODE serves its tree, from the newest signed record of it
/// this mirror's agent stored (verified again against the fleet CA, as the agent does on restart), and the token NODE
/// holds now, read from it and then pinned for the pull (the pipeline gives up if NODE moves on meanwhile).
public enum PeerSource {
    /// Why a peer cannot be used, with the exit code it gets.
    public struct Failure: Error, CustomStringConvertible {
        public var exitCode: Int32
        public var message: String
        public var description: String { message }
    }

    /// NODE's rsync URL, from its stored record, and the attestations of every stored record that still verifies
    /// (this mirror's own attestation included).
    public static func resolve(node: String, config: Config) async throws(Failure) -> (url: RsyncLocation, claims: [Attestations.Claim]) {
        guard node != config.node else {
            throw Failure(exitCode: 2, message: "--source \(node): that is this mirror (node in the config); name a peer or 'upstream'")
        }
        guard let tls = config.tls else {
            throw Failure(exitCode: 2, message: "--source \(node): pulling from a peer needs [tls] in the config, to verify the fleet's records of it")
        }
        let signer: RecordSigner
        do {
            signer = try RecordSigner(caPath: tls.ca, certPath: tls.cert, keyPath: tls.key)
        } catch {
            throw Failure(exitCode: 2, message: "--source \(node): \(error)")
        }
        let stored: [StateStore.StoredMember]
        let own: (token: String, root: String, at: Date)?
        do {
            let store = try StateStore(directory: config.state.dir)
            stored = try store.members()
            own = try store.attestation()
            // Revoked members are no source and attest nothing: the list the agent stored, and the configured file.
            if let bytes = try store.revocations(), let list = try? WireSignedRevocationList(serializedBytes: bytes),
                case .success(let opened) = signer.verifier.openRevocations(list)
            {
                signer.verifier.adopt(opened)
            }
        } catch {
            throw Failure(exitCode: 2, message: "--source \(node): cannot read the fleet's records in \(config.state.dir)/\(StateStore.fileName): \(error)")
        }
        if let crl = tls.crl {
            do { try signer.verifier.load(revocationsAt: crl) } catch { throw Failure(exitCode: 2, message: "--source \(node): \(error)") }
        }
        guard let member = stored.first(where: { $0.node == node }) else {
            let known = stored.map(\.node).filter { $0 != config.node }
            let list = known.isEmpty ? "none yet (the agent stores them once it has joined the fleet)"
                : known.prefix(10).joined(separator: ", ") + (known.count > 10 ? ", …" : "")
            throw Failure(exitCode: 2, message: "--source \(node): no record of that member in \(config.state.dir)/\(StateStore.fileName); members known: \(list)")
        }
        let signed: WireSignedRecord
        do {
            signed = try WireSignedRecord(serializedBytes: member.signedRecord)
        } catch {
            throw Failure(exitCode: 1, message: "--source \(node): its stored record cannot be read: \(error)")
        }
        let record: MemberRecord
        switch await signer.verify(signed) {
        case .success(let verified) where verified.node == node: record = verified
        case .success: throw Failure(exitCode: 1, message: "--source \(node): the stored record is signed for another member")
        case .failure(let rejection): throw Failure(exitCode: 1, message: "--source \(node): its stored record does not verify: \(rejection)")
        }
        // Attestations count only from records that verify now, each for the member it names.
        var claims: [Attestations.Claim] = []
        for other in stored where other.node != config.node {
            guard let bytes = try? WireSignedRecord(serializedBytes: other.signedRecord),
                case .success(let verified) = await signer.verify(bytes), verified.node == other.node,
                RecordPolicy.problem(with: verified, nowMillis: Int64(Date().timeIntervalSince1970 * 1000)) == nil
            else { continue }  // an expired record attests nothing
            claims.append(.init(node: verified.node, token: verified.attestToken, root: verified.attestRoot))
        }
        if let own {
            claims.append(.init(node: config.node, token: own.token, root: own.root))
        }
        // Only daemon URLs: a record naming a local path must not make us copy our own disk.
        guard let url = RsyncLocation(record.rsyncURL), url.isDaemon else {
            let advertised = record.rsyncURL.isEmpty ? "no rsync URL" : "'\(record.rsyncURL)', not an rsync:// URL"
            throw Failure(exitCode: 1, message: "--source \(node): it advertises \(advertised); it does not serve peers")
        }
        return (url, claims)
    }

    /// The token NODE's tree holds now.
    public static func token(of node: String, at url: RsyncLocation, config: Config, logger: Logger) async throws(Failure) -> String {
        var options = SyncPipeline.Options()
        options.peer = .init(node: node, url: url, token: "", acceptedRoots: [], attestationsNeeded: config.peers.attestations)
        let probe = SyncPipeline(config: SyncPipeline(config: config).effectiveConfig(options))
        switch await probe.probeSource(logger: logger) {
        case .success(let token):
            return token.value
        case .failure(let error):
            let busy = error.rsync.map { $0.isTemporary } ?? false
            throw Failure(exitCode: busy ? 75 : 1, message: "--source \(node): cannot read its \(config.upstream.tokenFile) at \(url): \(error.message)")
        }
    }
}
