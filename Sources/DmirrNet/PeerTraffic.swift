/// Where a connection reports the peer-protocol frames it carries (after the `Hello`s), for the agent's metrics: each
/// decoded frame received and each message queued, with its size in bytes. Called on the connection's own task,
/// so a report must be cheap and must not wait.
public struct PeerTraffic: Sendable {
    public let received: @Sendable (_ bytes: Int) -> Void
    public let sent: @Sendable (_ bytes: Int) -> Void

    public init(received: @escaping @Sendable (Int) -> Void, sent: @escaping @Sendable (Int) -> Void) {
        self.received = received
        self.sent = sent
    }

    /// Reports nothing.
    public static let none = PeerTraffic(received: { _ in }, sent: { _ in })
}
