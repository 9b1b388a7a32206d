import DmirrWire
import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

#if canImport(Glibc)
    import Glibc
#endif

/// The local control socket (Unix domain, mode 0600, the peer protocol's framing without TLS: access is the file's
/// permission). `dmirr status -c FILE` asks it for the fleet view.
struct ControlSocketService: Service {
    let path: String
    let node: FleetNode
    let logger: Logger

    func run() async throws {
        // Bound inside a fresh 0700 directory, made 0600 there, then renamed into place: no moment exists at which
        // the socket is reachable with looser permissions (a chmod after binding at `path` would leave one).
        let parent = (path as NSString).deletingLastPathComponent
        var template = Array((parent + "/.dmirr-control-XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else {
            throw ControlSocketError(message: "cannot create a private directory beside \(path): \(String(cString: strerror(errno)))")
        }
        let privateDirectory = String(cString: made)
        let staging = privateDirectory + "/s"
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(unixDomainSocketPath: staging, cleanupExistingSocketFile: true) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder()))
                    try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(FrameEncoder()))
                    return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        guard chmod(staging, 0o600) == 0, rename(staging, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(staging)
            rmdir(privateDirectory)
            try? await server.channel.close()
            throw ControlSocketError(message: "cannot put the control socket at \(path): \(reason)")
        }
        rmdir(privateDirectory)
        logger.info("control socket ready", metadata: ["control.path": "\(path)"])
        defer { unlink(path) }
        try await untilGracefulShutdown { [node] in
            try await withThrowingDiscardingTaskGroup { group in
                try await server.executeThenClose { inbound in
                    for try await connection in inbound {
                        group.addTask { [node] in
                            try? await connection.executeThenClose { frames, outbound in
                                for try await frame in frames {
                                    let request = try WireMessages.decode(frame)
                                    switch request.body {
                                    case .statusRequest:
                                        break
                                    case .syncRequest(let sync):
                                        if let refusal = await node.requestSync(.init(source: sync.source, force: sync.force)) {
                                            try await outbound.write(try WireMessages.encode(WireMessages.error(.forbidden, refusal)))
                                            return
                                        }
                                    default:
                                        try await outbound.write(try WireMessages.encode(WireMessages.error(.forbidden, "the control socket answers StatusRequest and SyncRequest only")))
                                        return
                                    }
                                    var response = WireEnvelope()
                                    response.statusResponse = await node.status()
                                    try await outbound.write(try WireMessages.encode(response))
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Asks a control socket for the status (`dmirr status`), or to check upstream now (`dmirr sync` beside the agent).
public enum ControlClient {
    public static func status(path: String) async throws -> WireStatusResponse {
        var request = WireEnvelope()
        request.statusRequest = .init()
        return try await ask(path: path, request)
    }

    /// Asks the agent to check upstream now, or (with `source` or `force`) to pull now from that member or re-check
    /// the tree against the source; answers with its status once the request is under way. Throws the agent's
    /// refusal.
    public static func requestSync(path: String, source: String = "", force: Bool = false) async throws -> WireStatusResponse {
        var request = WireEnvelope()
        request.syncRequest = .with {
            $0.source = source
            $0.force = force
        }
        return try await ask(path: path, request)
    }

    /// Where a sync asked for at `askedAtMillis` (Unix ms) stands, from the agent's status.
    public enum Verdict: Sendable, Equatable {
        /// This mirror publishes the target token.
        case published(String)
        /// Its pull failed, with the error it reports ("" when none).
        case failed(String)
        case pending
    }

    /// Judged only once the agent's own fetch of upstream's token answered after the request: before that, an
    /// in-sync state may be for an older target.
    public static func verdict(_ status: WireStatusResponse, askedAtMillis: Int64) -> Verdict {
        guard status.lastPollUnixMs >= askedAtMillis,
            let me = status.members.first(where: { $0.record.node == status.node })?.record
        else { return .pending }
        if !status.targetToken.isEmpty, me.publishedToken == status.targetToken, me.syncState == .inSync {
            return .published(status.targetToken)
        }
        if me.syncState == .failed { return .failed(me.lastError) }
        return .pending
    }

    /// Where a requested pull (`--source`, `--force`) stands: it was under way when the agent answered the request,
    /// so it is over once this mirror is no longer syncing.
    public static func requestedPullVerdict(_ status: WireStatusResponse) -> Verdict {
        guard let me = status.members.first(where: { $0.record.node == status.node })?.record else { return .pending }
        switch me.syncState {
        case .syncing: return .pending
        case .failed: return .failed(me.lastError)
        case .behind, .unspecified, .UNRECOGNIZED: return .failed("the pull was cancelled")
        case .inSync, .waiting:
            // A busy source leaves us waiting with its refusal as the error.
            return me.lastError.isEmpty ? .published(me.publishedToken) : .failed(me.lastError)
        }
    }

    static func ask(path: String, _ request: WireEnvelope) async throws -> WireStatusResponse {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(unixDomainSocketPath: path) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder()))
                    try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(FrameEncoder()))
                    return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        return try await channel.executeThenClose { frames, outbound in
            try await outbound.write(try WireMessages.encode(request))
            for try await frame in frames {
                let envelope = try WireMessages.decode(frame)
                if case .statusResponse(let response) = envelope.body { return response }
                if case .error(let e) = envelope.body { throw AgentError("the agent refused: \(e.message)") }
            }
            throw AgentError("the agent closed the control socket without answering")
        }
    }
}

/// The control socket could not be created where the config says.
struct ControlSocketError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}
