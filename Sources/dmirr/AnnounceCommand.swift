import ArgumentParser
import DmirrCore
import DmirrNet
import Foundation

/// `dmirr announce`: an upstream operator tells the fleet that a push happened, so propagation starts in seconds
/// instead of at the next poll. No ssh keys into mirrors: an operator certificate and mTLS. The agents trust only what
/// they then fetch from upstream themselves.
struct AnnounceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "announce",
        abstract: "Tell the fleet's agents that upstream has a new token.",
        discussion: """
            Reads `node`, `fleet`, `[tls]` (an operator or node certificate of the fleet) and `[peers] seeds` (the agents \
            to tell; one is enough, the fleet spreads the news by gossip) from the config. Each agent polls upstream at \
            once. Exit 0 when at least one agent acknowledged, 1 when none could be reached, 2 on a config error.
            """
    )

    @OptionGroup var options: ConfigOptions

    @Option(help: "The new token, for the agents' logs (they fetch the real one from upstream).")
    var token: String = ""

    func run() async throws {
        let config = try options.load(purpose: .announce)
        guard let tlsConfig = config.tls else {
            printError("error: \(options.config): [tls] ca, cert and key are required to announce")
            throw ExitCode(2)
        }
        let tls: FleetTLS
        do { tls = try FleetTLS(caPath: tlsConfig.ca, certPath: tlsConfig.cert, keyPath: tlsConfig.key) } catch {
            printError("error: \(error)")
            throw ExitCode(2)
        }
        var told = 0
        for seed in config.peers.seeds {
            guard let address = HostPort(seed) else { continue }
            do {
                let ack = try await FleetClient.announce(to: address, token: token, tls: tls)
                told += 1
                print("told \(ack.node) at \(seed) (its target was \(ack.targetToken.isEmpty ? "unknown" : ack.targetToken))")
            } catch {
                printError("dmirr announce: cannot tell \(seed): \(error)")
            }
        }
        guard told > 0 else {
            printError("dmirr announce: no agent of \(config.peers.seeds.joined(separator: ", ")) acknowledged")
            throw ExitCode(1)
        }
    }
}
