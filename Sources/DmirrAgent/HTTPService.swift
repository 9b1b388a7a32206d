import DmirrCore
import Foundation
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle

/// The agent's read-only HTTP listener (`[listen] metrics`, loopback unless the operator says otherwise), served by
/// Hummingbird: `GET /metrics` (Prometheus text format), `GET /status.json` (the `dmirr status --json` document),
/// `GET /` (the fleet page, which updates itself from `/status.json`), and for clients `GET /mirrorlist` and
/// `GET /metalink` (docs/clients.md). Nothing here writes or reveals more than `dmirr status` does.
enum HTTPService {
    static func make(
        address: HostPort, node: FleetNode, metrics: AgentMetrics, lists: ClientLists, clock: any AgentClock, logger: Logger,
        onBound: @escaping @Sendable (Int) -> Void = { _ in }
    ) -> some Service {
        let router = Router(context: AgentRequestContext.self)
        router.get("/mirrorlist") { request, context -> Response in
            let (client, region) = Self.client(request, context)
            return Self.response(await lists.mirrorlist(path: request.uri.queryParameters["path"].map(String.init), client: client, region: region))
        }
        router.get("/metalink") { request, context -> Response in
            let (client, region) = Self.client(request, context)
            return Self.response(await lists.metalink(path: request.uri.queryParameters["path"].map(String.init), client: client, region: region))
        }
        router.get("/metrics") { _, _ -> Response in
            await metrics.refresh(from: node, clock: clock)
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8", .cacheControl: "no-store"],
                body: .init(byteBuffer: ByteBuffer(bytes: metrics.exposition())))
        }
        router.get("/status.json") { _, _ -> Response in
            let document = FleetStatusView(await node.status()).json()
            return Response(
                status: .ok, headers: [.contentType: "application/json; charset=utf-8", .cacheControl: "no-store"],
                body: .init(byteBuffer: ByteBuffer(string: document)))
        }
        router.get("/") { _, _ -> Response in
            Response(
                status: .ok,
                headers: [
                    .contentType: "text/html; charset=utf-8", .cacheControl: "no-store",
                    // Everything the page needs is in it: no script, style or font from anywhere else.
                    .contentSecurityPolicy: "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
                ],
                body: .init(byteBuffer: ByteBuffer(string: FleetPage.html)))
        }
        var http = Logger(label: "dmirr.http")
        http.logLevel = logger.logLevel > .notice ? logger.logLevel : .notice
        return Application(
            router: router,
            configuration: .init(address: .hostname(address.host, port: address.port), serverName: nil),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? address.port
                logger.info("HTTP listener ready: /metrics, /status.json, /", metadata: ["http.listen": "\(address.host):\(port)"])
                onBound(port)
            },
            logger: http)
    }
}

extension HTTPService {
    /// Who asks (its address: the key of its order and its rate limit) and its region, from `?region=` or `?country=`
    /// or the `X-Dmirr-Region` header.
    static func client(_ request: Request, _ context: AgentRequestContext) -> (String, String?) {
        let address = context.remoteAddress?.ipAddress ?? "unknown"
        let query = request.uri.queryParameters
        var given: String? = query["region"].map(String.init)
        if given == nil { given = query["country"].map(String.init) }
        if given == nil { given = request.headers.first { $0.name.canonicalName == "x-dmirr-region" }?.value }
        return (address, given.flatMap { MirrorList.isValidRegion($0) ? $0 : nil })
    }

    static let tokenHeader = HTTPFields.Element.Name("X-Dmirr-Token")!

    static func response(_ reply: ClientLists.Reply) -> Response {
        var headers: HTTPFields = [.contentType: reply.contentType, .cacheControl: "no-store"]
        if let retry = reply.retryAfter { headers[.retryAfter] = "\(retry)" }
        if let token = reply.token { headers[Self.tokenHeader] = token }
        return Response(status: .init(code: reply.status), headers: headers, body: .init(byteBuffer: ByteBuffer(string: reply.body)))
    }
}

/// Hummingbird's request context plus the client's address (the mirrorlist orders and rate-limits by it).
struct AgentRequestContext: RequestContext, RemoteAddressRequestContext {
    var coreContext: CoreRequestContextStorage
    let remoteAddress: SocketAddress?

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress
    }
}

extension AgentMetrics {
    /// Sets the values that are read rather than counted: token age, lag, in-sync, plan agreement, members, the clock's
    /// correction.
    func refresh(from node: FleetNode, clock: any AgentClock) async {
        let status = await node.status()
        let wall = clock.wallMillis
        let seen = status.targetSeenUnixMs
        let age = seen > 0 ? Double(max(0, wall - seen)) / 1000 : 0
        let me = status.members.first { $0.record.node == status.node }?.record
        let inSync = !status.targetToken.isEmpty && me?.publishedToken == status.targetToken
        var members: [Liveness: Int] = [:]
        for member in status.members {
            if let liveness = Liveness(rawValue: member.liveness) { members[liveness, default: 0] += 1 }
        }
        // The agent's clock is a FleetTimeClock; another clock (tests' manual ones) corrects nothing.
        let correction = (clock as? FleetTimeClock)?.correction.applied ?? 0
        scraped(targetAgeSeconds: age, lagSeconds: inSync ? 0 : age, inSync: inSync, planAgreed: status.planAgreed,
                planAgreeing: Int(status.planAgreeing), members: members, clockCorrectionSeconds: Double(correction) / 1000)
    }
}
