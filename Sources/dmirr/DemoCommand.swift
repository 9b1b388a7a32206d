import ArgumentParser
import DmirrCore
import DmirrFixtures
import DmirrStore
import DmirrSync
import Foundation
import Logging

struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run a local upstream and a mirror on this machine and show a push arriving.",
        discussion: """
            Builds a real yum repo (rpmbuild + createrepo_c), serves it with `rsync --daemon` on a free loopback port, \
            syncs a mirror from it, pushes an update upstream, syncs again, and cleans up. Needs rsync, rpm and \
            createrepo-c (Debian packages).
            """
    )

    @Option(help: "Work directory (default: a new directory under /tmp).")
    var dir: String?

    @Flag(help: "Keep the work directory afterwards.")
    var keep = false

    @Flag(name: .shortAndLong, help: "Show dmirr's log lines too.")
    var verbose = false

    func run() async throws {
        var logger = Logs.bootstrap(verbose: verbose)
        if !verbose { logger.logLevel = .warning }
        let root = dir ?? (NSTemporaryDirectory() + "dmirr-demo-\(ProcessInfo.processInfo.processIdentifier)")
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer {
            if keep || dir != nil {
                print("\nwork directory kept: \(root)")
            } else {
                try? FileManager.default.removeItem(atPath: root)
            }
        }
        let say = { (s: String) in print(s) }

        say("== dmirr demo: one upstream, one mirror, on this machine")
        let upstream = root + "/upstream"
        say("-- building a yum repo with rpmbuild + createrepo_c in \(upstream)")
        try YumRepo.make(
            at: upstream,
            packages: [.init("alpha", "1.0", sizeKB: 64), .init("beta", "1.0", sizeKB: 64), .init("gamma", "1.0", sizeKB: 64)],
            token: "push-1")
        let daemon = try RsyncDaemon(
            directory: root + "/rsyncd", modules: [.init(name: "repo", path: upstream, maxConnections: 4)])
        defer { daemon.stop() }
        say("-- upstream serving \(daemon.url("repo")) (rsync --daemon, pid \(daemon.pid))")

        let configPath = root + "/mirror.toml"
        let configText = """
            node  = "mirror-a"
            fleet = "demo"

            [upstream]
            url = "\(daemon.url("repo"))"

            [mirror]
            path   = "\(root)/mirror"
            verify = "packages"

            [state]
            dir = "\(root)/state"

            """
        try configText.write(toFile: configPath, atomically: true, encoding: .utf8)
        say("-- mirror config \(configPath):\n" + configText.split(separator: "\n").map { "     " + $0 }.joined(separator: "\n"))
        let config = try ConfigOptions.parse(["-c", configPath]).load()
        let pipeline = SyncPipeline(config: config)

        func sync(_ title: String) async throws {
            say("\n-- \(title): dmirr sync -c \(configPath)")
            let started = ContinuousClock.now
            let report = await pipeline.run(options: .init(), logger: logger)
            let took = DurationText.format(ContinuousClock.now - started)
            say("   exit \(report.exitCode), \(report.outcome.rawValue) in \(took): \(report.message)")
            if report.bytes > 0 { say("   \(report.files) files, \(ByteCount.format(report.bytes)) received") }
            guard report.exitCode == 0 else { throw ExitCode(1) }
            let packages = (try? FileManager.default.contentsOfDirectory(atPath: config.mirror.path + "/Packages")) ?? []
            say("   mirror now has: \(packages.sorted().joined(separator: " "))")
        }

        try await sync("first sync")
        try await sync("sync again, nothing changed upstream")

        say("\n-- upstream push: add delta 1.0 and alpha 1.1, remove gamma 1.0, new token push-2")
        try YumRepo.buildRPMs([.init("alpha", "1.1", sizeKB: 64), .init("delta", "1.0", sizeKB: 64)], into: upstream + "/Packages")
        try FileManager.default.removeItem(atPath: upstream + "/Packages/gamma-1.0-1.noarch.rpm")
        try YumRepo.createrepo(upstream)
        try "push-2\n".write(toFile: upstream + "/CURRENT", atomically: true, encoding: .utf8)
        try await sync("sync after the push")

        say("\n-- dmirr history -c \(configPath)")
        let runs = try StateStore(directory: config.state.dir).recentRuns(limit: 10)
        print(HistoryFormat.table(runs).split(separator: "\n").map { "   " + $0 }.joined(separator: "\n"))
        say("\n== demo done: the mirror's CURRENT is \(try String(contentsOfFile: config.mirror.path + "/CURRENT", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines))")
    }
}
