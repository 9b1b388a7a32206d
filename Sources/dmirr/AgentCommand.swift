import ArgumentParser
import DmirrAgent
import DmirrCore
import Foundation
import Logging

struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent",
        abstract: "Run the fleet agent in the foreground: peers, gossip, upstream polling and syncs, control socket.",
        discussion: "SIGTERM or SIGINT stop it cleanly (a running rsync is cancelled; the published token never moves without a finished sync)."
    )

    @OptionGroup var options: ConfigOptions

    @Flag(name: .shortAndLong, help: "Log debug details.")
    var verbose = false

    func run() async throws {
        let config = try options.load(purpose: .agent)
        let logger = Logs.bootstrap(verbose: verbose)
        do {
            try await Agent(config: config, logger: logger).run()
        } catch {
            printError("dmirr agent: \(error)")
            throw ExitCode(1)
        }
    }
}
