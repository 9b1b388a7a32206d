import ArgumentParser
import DmirrCore
import DmirrNet
import DmirrSync
import Foundation
import Logging

#if canImport(Glibc)
    import Glibc
#endif

struct CheckCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Validate the config, its paths and the source; print the resolved config and each problem.",
        discussion: "Exit 0 when all is well, 2 when the config is invalid, 1 when the config is valid but something it names is not."
    )

    @OptionGroup var options: ConfigOptions

    @Flag(help: "Do not contact the source.")
    var offline = false

    func run() async throws {
        let config = try options.load()
        print(ConfigPrinter.toml(config), terminator: "")
        var problems: [String] = []
        let fm = FileManager.default
        func need(_ ok: Bool, _ problem: @autoclosure () -> String) { if !ok { problems.append(problem()) } }

        let mirrorParent = (config.mirror.path as NSString).deletingLastPathComponent
        need(fm.fileExists(atPath: config.mirror.path) || fm.fileExists(atPath: mirrorParent),
             "mirror.path: neither \(config.mirror.path) nor its parent \(mirrorParent) exists")
        if config.mirror.publish == .snapshot {
            var st = stat()
            need(lstat(config.mirror.path, &st) != 0 || (st.st_mode & S_IFMT) == S_IFLNK,
                 "mirror.path: \(config.mirror.path) is a real directory; publish = \"snapshot\" needs a symlink (or nothing) there")
        }
        let stateParent = (config.state.dir as NSString).deletingLastPathComponent
        if fm.fileExists(atPath: config.state.dir) {
            need(fm.isWritableFile(atPath: config.state.dir), "state.dir: \(config.state.dir) is not writable")
        } else {
            need(fm.fileExists(atPath: stateParent), "state.dir: \(config.state.dir) does not exist, nor does its parent")
        }
        if let file = config.mirror.excludeFrom {
            need(fm.isReadableFile(atPath: file), "mirror.exclude_from: cannot read \(file)")
        }
        if let file = config.upstream.passwordFile {
            var st = stat()
            if stat(file, &st) != 0 {
                problems.append("upstream.password_file: cannot read \(file)")
            } else {
                need(st.st_mode & 0o077 == 0, "upstream.password_file: \(file) is readable by others; rsync refuses that (chmod 600)")
            }
        }
        if let tls = config.tls {
            for (key, file) in [("tls.ca", tls.ca), ("tls.cert", tls.cert), ("tls.key", tls.key)] {
                need(fm.isReadableFile(atPath: file), "\(key): cannot read \(file)")
            }
            // A missing list is fine (nothing revoked yet); one that is there must be the CA's.
            if let crl = tls.crl, fm.fileExists(atPath: crl), fm.isReadableFile(atPath: tls.ca) {
                do { try FleetVerifier(caPath: tls.ca).load(revocationsAt: crl) } catch { problems.append("tls.crl: \(error)") }
            }
        }
        if let key = config.upstream.signingKey {
            let scratch = FileManager.default.temporaryDirectory.path + "/dmirr-check-\(getpid())"
            defer { try? FileManager.default.removeItem(atPath: scratch) }
            do { _ = try MetadataSignature.prepare(key: key, in: scratch) } catch { problems.append("upstream.signing_key: \(error.message)") }
        }
        if !offline {
            var logger = Logger(label: "dmirr.check")
            logger.logLevel = .critical
            switch await SyncPipeline(config: config).probeSource(logger: logger) {
            case .success(let token):
                print("# source reachable: \(config.upstream.url) has \(config.upstream.tokenFile) = \(token.value)")
            case .failure(let error):
                problems.append("upstream.url: \(error.message)")
            }
        }
        for problem in problems { printError("problem: \(problem)") }
        if problems.isEmpty {
            print("# no problems found")
        } else {
            throw ExitCode(1)
        }
    }
}

/// Prints a resolved config as TOML, defaults filled in, so operators see what dmirr will actually do.
enum ConfigPrinter {
    static func toml(_ c: Config) -> String {
        func q(_ s: String) -> String {
            "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
        }
        func list(_ xs: [String]) -> String { "[" + xs.map(q).joined(separator: ", ") + "]" }
        func d(_ x: Duration) -> String { q(DurationText.format(x)) }
        var out = "# resolved configuration\nnode  = \(q(c.node))\nfleet = \(q(c.fleet))\n\n[upstream]\n"
        out += "url             = \(q(c.upstream.url.description))\ntoken_file      = \(q(c.upstream.tokenFile))\n"
        out += "poll            = \(d(c.upstream.poll))\nslots           = \(c.upstream.slots)\n"
        out += "timeout         = \(d(c.upstream.timeout))\nconnect_timeout = \(d(c.upstream.connectTimeout))\n"
        if let p = c.upstream.passwordFile { out += "password_file   = \(q(p))\n" }
        if let k = c.upstream.signingKey { out += "signing_key     = \(q(k))\n" }
        out += "\n[mirror]\npath           = \(q(c.mirror.path))\n"
        if let u = c.mirror.rsyncURL { out += "rsync_url      = \(q(u))\n" }
        out += "serve_slots    = \(c.mirror.serveSlots)\n"
        if let e = c.mirror.excludeFrom { out += "exclude_from   = \(q(e))\n" }
        out += "metadata       = \(list(c.mirror.metadata))\npublish        = \(q(c.mirror.publish.rawValue))\n"
        out += "verify         = \(q(c.mirror.verify.rawValue))\nrsync_args     = \(list(c.mirror.rsyncArgs))\n"
        out += "keep_snapshots = \(c.mirror.keepSnapshots)\nmax_passes     = \(c.mirror.maxPasses)\n"
        if c.listen.peer != nil || c.listen.control != nil || c.listen.metrics != nil {
            out += "\n[listen]\n"
            if let v = c.listen.peer { out += "peer    = \(q(v))\n" }
            if let v = c.listen.control { out += "control = \(q(v))\n" }
            if let v = c.listen.metrics { out += "metrics = \(q(v))\n" }
        }
        if let t = c.tls {
            out += "\n[tls]\nca   = \(q(t.ca))\ncert = \(q(t.cert))\nkey  = \(q(t.key))\n"
            if let crl = t.crl { out += "crl  = \(q(crl))\n" }
        }
        out += "\n[peers]\nseeds         = \(list(c.peers.seeds))\ngossip        = \(d(c.peers.gossip))\n"
        out += "suspect_after = \(d(c.peers.suspectAfter))\ndown_after    = \(d(c.peers.downAfter))\n"
        out += "\n[state]\ndir = \(q(c.state.dir))\n"
        return out
    }
}
