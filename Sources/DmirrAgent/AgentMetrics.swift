import CoreMetrics
import Metrics
import DmirrCore
import Foundation
import Prometheus

/// The agent's metrics: swift-metrics `Counter`, `Meter` and `Timer` objects recorded by the services, backed by one
/// swift-prometheus registry that `/metrics` renders in Prometheus' text format. Each metric is registered with its
/// help text (the swift-metrics factory alone would leave it empty), and the services record through swift-metrics'
/// types only. Names follow Prometheus' conventions: `dmirr_` prefix, base units (`_seconds`, `_bytes`), `_total` on
/// counters. docs/operator-guide.md lists them.
public final class AgentMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    private let factory: PrometheusMetricsFactory

    /// Time buckets for a sync and for a token's propagation: seconds to hours.
    static let durationBuckets: [Duration] = [1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400].map { .seconds($0) }

    public init() {
        registry = PrometheusCollectorRegistry()
        factory = PrometheusMetricsFactory(registry: registry)
        targetAge = Self.meter(registry, factory, "dmirr_target_token_age_seconds",
                               help: "Seconds since the fleet first saw upstream's current token (0 when none is known).")
        lag = Self.meter(registry, factory, "dmirr_mirror_lag_seconds",
                         help: "Seconds this mirror has been behind the target token (0 when it holds it).")
        inSync = Self.meter(registry, factory, "dmirr_mirror_in_sync",
                            help: "1 when this mirror publishes the target token, else 0.")
        planAgreed = Self.meter(registry, factory, "dmirr_plan_agreed",
                                help: "1 when a majority of the members known advertise this member's plan, else 0.")
        planAgreeing = Self.meter(registry, factory, "dmirr_plan_agreeing_members",
                                  help: "Members advertising the same plan digest as this member, itself included.")
        clockCorrection = Self.meter(registry, factory, "dmirr_clock_correction_seconds",
                                     help: "Seconds added to this host's clock to stamp and judge records in the fleet's time (its peers' clocks minus its own; 0 when they agree within 2 s).")
        propagation = CoreMetrics.Timer(
            label: "dmirr_propagation_seconds", dimensions: [],
            handler: registry.makeDurationHistogram(
                name: "dmirr_propagation_seconds", labels: [], buckets: Self.durationBuckets,
                help: "Seconds from the fleet's first sight of a token to this mirror publishing it."),
            factory: factory)
        gossipReceivedFrames = Self.counter(registry, factory, "dmirr_gossip_frames_received_total",
                                            help: "Peer protocol frames received from fleet members.")
        gossipSentFrames = Self.counter(registry, factory, "dmirr_gossip_frames_sent_total",
                                        help: "Peer protocol frames queued for fleet members.")
        gossipReceivedBytes = Self.counter(registry, factory, "dmirr_gossip_received_bytes_total",
                                           help: "Bytes of peer protocol messages received from fleet members.")
        gossipSentBytes = Self.counter(registry, factory, "dmirr_gossip_sent_bytes_total",
                                       help: "Bytes of peer protocol messages queued for fleet members.")
        upstreamRefusals = Self.counter(registry, factory, "dmirr_upstream_refusals_total",
                                        help: "Upstream refusing this mirror as busy (rsync exit 5 'max connections' and the like).")
        var syncDuration: [SourceKind: CoreMetrics.Timer] = [:]
        var receivedBytes: [SourceKind: CoreMetrics.Counter] = [:]
        var syncs: [Outcome: CoreMetrics.Counter] = [:]
        var members: [Liveness: CoreMetrics.Meter] = [:]
        for kind in SourceKind.allCases {
            syncDuration[kind] = CoreMetrics.Timer(
                label: "dmirr_sync_duration_seconds", dimensions: [("source", kind.rawValue)],
                handler: registry.makeDurationHistogram(
                    name: "dmirr_sync_duration_seconds", labels: [("source", kind.rawValue)], buckets: Self.durationBuckets,
                    help: "Seconds a finished pull took, by where it pulled from."),
                factory: factory)
            receivedBytes[kind] = Self.counter(registry, factory, "dmirr_received_bytes_total", [("source", kind.rawValue)],
                                               help: "Bytes rsync received for this mirror, by where it pulled from.")
        }
        for outcome in Outcome.allCases {
            syncs[outcome] = Self.counter(registry, factory, "dmirr_syncs_total", [("outcome", outcome.rawValue)],
                                          help: "Finished pulls by outcome.")
        }
        for liveness in Liveness.allCases {
            members[liveness] = Self.meter(registry, factory, "dmirr_members", [("state", liveness.rawValue)],
                                           help: "Fleet members this agent knows, itself included, by liveness.")
        }
        self.syncDuration = syncDuration
        self.receivedBytes = receivedBytes
        self.syncs = syncs
        self.members = members
    }

    // MARK: What the services record

    /// Where a pull came from, as a label: one label value per kind, never per peer (bounded cardinality).
    public enum SourceKind: String, CaseIterable, Sendable {
        case upstream, peer
    }

    /// A finished pull's outcome, as a label.
    public enum Outcome: String, CaseIterable, Sendable {
        case synced, upToDate = "up_to_date", busy, failed, cancelled
    }

    let targetAge: CoreMetrics.Meter
    let lag: CoreMetrics.Meter
    let inSync: CoreMetrics.Meter
    let planAgreed: CoreMetrics.Meter
    let planAgreeing: CoreMetrics.Meter
    let clockCorrection: CoreMetrics.Meter
    let propagation: CoreMetrics.Timer
    let gossipReceivedFrames: CoreMetrics.Counter
    let gossipSentFrames: CoreMetrics.Counter
    let gossipReceivedBytes: CoreMetrics.Counter
    let gossipSentBytes: CoreMetrics.Counter
    let upstreamRefusals: CoreMetrics.Counter
    let syncDuration: [SourceKind: CoreMetrics.Timer]
    let receivedBytes: [SourceKind: CoreMetrics.Counter]
    let syncs: [Outcome: CoreMetrics.Counter]
    let members: [Liveness: CoreMetrics.Meter]

    /// A pull finished: its outcome, how long it took and what it moved.
    func pullFinished(outcome: Outcome, source: SourceKind, duration: Duration, bytes: Int64) {
        syncs[outcome]?.increment()
        if outcome == .synced || outcome == .upToDate { syncDuration[source]?.record(duration: duration) }
        if bytes > 0 { receivedBytes[source]?.increment(by: bytes) }
        if outcome == .busy, source == .upstream { upstreamRefusals.increment() }
    }

    /// Upstream refused our fetch of its token as busy.
    func upstreamRefused() { upstreamRefusals.increment() }

    /// This mirror published a token the fleet first saw `seconds` ago.
    func published(afterSeconds seconds: Double) {
        propagation.recordSeconds(max(0, seconds))
    }

    /// Frames to and from peers (count and encoded size).
    func gossip(received bytes: Int) {
        gossipReceivedFrames.increment()
        gossipReceivedBytes.increment(by: bytes)
    }

    func gossip(sent bytes: Int) {
        gossipSentFrames.increment()
        gossipSentBytes.increment(by: bytes)
    }

    /// The values read at scrape time, from the node's status.
    func scraped(targetAgeSeconds: Double, lagSeconds: Double, inSync: Bool, planAgreed: Bool, planAgreeing: Int,
                 members: [Liveness: Int], clockCorrectionSeconds: Double) {
        targetAge.set(targetAgeSeconds)
        lag.set(lagSeconds)
        self.inSync.set(inSync ? 1 : 0)
        self.planAgreed.set(planAgreed ? 1 : 0)
        self.planAgreeing.set(planAgreeing)
        clockCorrection.set(clockCorrectionSeconds)
        for liveness in Liveness.allCases { self.members[liveness]?.set(members[liveness] ?? 0) }
    }

    /// The Prometheus text exposition of every metric.
    public func exposition() -> [UInt8] { registry.emitToBuffer() }

    // MARK: Registration

    private static func counter(
        _ registry: PrometheusCollectorRegistry, _ factory: PrometheusMetricsFactory, _ name: String,
        _ labels: [(String, String)] = [], help: String
    ) -> CoreMetrics.Counter {
        CoreMetrics.Counter(label: name, dimensions: labels, handler: registry.makeCounter(name: name, labels: labels, help: help), factory: factory)
    }

    private static func meter(
        _ registry: PrometheusCollectorRegistry, _ factory: PrometheusMetricsFactory, _ name: String,
        _ labels: [(String, String)] = [], help: String
    ) -> CoreMetrics.Meter {
        CoreMetrics.Meter(label: name, dimensions: labels, handler: registry.makeGauge(name: name, labels: labels, help: help), factory: factory)
    }
}
