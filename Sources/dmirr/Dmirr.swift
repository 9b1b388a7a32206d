import ArgumentParser
import DmirrCore
import Foundation
import Logging

/// The `dmirr` command line: thin commands over the modules (docs/style.md §11).
@main
struct Dmirr: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dmirr",
        abstract: "Keep package-repository mirrors in sync with their upstream, safely.",
        discussion: """
            Exit codes: 0 ok or in sync; 1 failed; 2 usage or config error; 75 temporary (source busy, lock held): retry later.
            """,
        version: "0.1.0",
        subcommands: [SyncCommand.self, AgentCommand.self, StatusCommand.self, AnnounceCommand.self, CheckCommand.self, HistoryCommand.self, CertCommand.self, DemoCommand.self]
    )
}

/// Options every command that reads a config shares.
struct ConfigOptions: ParsableArguments {
    @Option(name: [.short, .customLong("config")], help: "The config file (TOML).")
    var config: String = "/etc/dmirr/dmirr.toml"

    /// Loads and validates the config, or prints every problem and exits 2.
    func load(purpose: ConfigLoader.Purpose = .sync) throws -> Config {
        switch ConfigFile.load(path: config, purpose: purpose) {
        case .success(let config): return config
        case .failure(let errors):
            for problem in errors.problems { printError("error: \(problem)") }
            throw ExitCode(2)
        }
    }
}

/// Reading the config file from disk: the one I/O step before the pure ``ConfigLoader``.
enum ConfigFile {
    static func load(path: String, purpose: ConfigLoader.Purpose) -> Result<Config, ConfigErrors> {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            let reason = (error as NSError).localizedFailureReason ?? "\(error.localizedDescription)"
            return .failure(ConfigErrors(problems: [
                ConfigProblem(file: path, line: nil, key: nil, message: "cannot read the config file: \(reason)")
            ]))
        }
        guard let text = String(data: data, encoding: .utf8) else {
            return .failure(ConfigErrors(problems: [
                ConfigProblem(file: path, line: nil, key: nil, message: "the config file is not UTF-8 text")
            ]))
        }
        return ConfigLoader.load(text: text, file: path, purpose: purpose)
    }
}

func printError(_ message: String) {
    FileHandle.standardError.write(Data((message + "\n").utf8))
}

/// Logs go to stderr (swift-log); `--verbose` adds debug lines such as each rsync command.
enum Logs {
    static func bootstrap(verbose: Bool) -> Logger {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = verbose ? .debug : .info
            return handler
        }
        return Logger(label: "dmirr")
    }
}
