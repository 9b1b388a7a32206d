import DmirrCore
import DmirrWire

/// One request to an agent over mTLS and its one answer: what `dmirr status --peer` and `dmirr announce` need, so the
/// CLI holds no envelopes or sessions of its own.
public enum FleetClient {
    /// Sends `request`, then reads until `answer` picks a message out; throws if the agent closes first.
    public static func ask<Answer: Sendable>(
        _ address: HostPort, tls: FleetTLS, _ request: WireEnvelope, answer: @escaping @Sendable (WireEnvelope) -> Answer?
    ) async throws -> Answer {
        let value: Answer? = try await PeerClient.connect(host: address.host, port: address.port, tls: tls) { session, messages in
            try await session.send(request)
            for try await message in messages {
                if let value = answer(message) { return value }
            }
            return nil
        }
        guard let value else { throw NetError(.connection, "\(address) closed without answering") }
        return value
    }

    /// The fleet as the agent at `address` sees it.
    public static func status(at address: HostPort, tls: FleetTLS) async throws -> WireStatusResponse {
        var request = WireEnvelope()
        request.statusRequest = .init()
        return try await ask(address, tls: tls, request) {
            if case .statusResponse(let r) = $0.body { r } else { nil }
        }
    }

    /// Tells the agent at `address` that upstream has a new token (`token` is for its log; it fetches the real one).
    public static func announce(to address: HostPort, token: String, tls: FleetTLS) async throws -> WireAnnounceAck {
        var envelope = WireEnvelope()
        envelope.announce = .with { $0.token = token }
        return try await ask(address, tls: tls, envelope) {
            if case .announceAck(let ack) = $0.body { ack } else { nil }
        }
    }
}
