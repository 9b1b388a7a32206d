import Foundation
@testable import DmirrCore
import Testing

@Suite struct ConfigLoaderTests {
    static let minimal = """
        node = "mirror-a"
        fleet = "ius"

        [upstream]
        url = "rsync://dl.example.org/ius"

        [mirror]
        path = "/srv/ius"

        [state]
        dir = "/var/lib/dmirr"
        """

    func problems(_ text: String, purpose: ConfigLoader.Purpose = .sync) -> [ConfigProblem] {
        switch ConfigLoader.load(text: text, file: "/etc/dmirr/t.toml", purpose: purpose) {
        case .success: []
        case .failure(let e): e.problems
        }
    }

    @Test func minimalConfigResolvesDefaults() throws {
        let config = try ConfigLoader.load(text: Self.minimal, file: "t.toml").get()
        #expect(config.node == "mirror-a")
        #expect(config.upstream.url == .daemon("rsync://dl.example.org/ius"))
        #expect(config.upstream.tokenFile == "CURRENT")
        #expect(config.upstream.poll == .seconds(300))
        #expect(config.upstream.slots == 2)
        #expect(config.mirror.metadata == ["repodata/"])
        #expect(config.mirror.publish == .inPlace)
        #expect(config.mirror.verify == .metadata)
        #expect(config.tls == nil)
        #expect(config.peers.gossip == .seconds(1))
    }

    @Test func designExampleParses() throws {
        let text = """
            node  = "mirror-a"                 # must match the certificate
            fleet = "ius"

            [upstream]
            url        = "rsync://dl.example.org/ius"
            token_file = "CURRENT"
            poll       = "5m"
            slots      = 2                     # fleet-wide: upstream pulls at once

            [mirror]
            path         = "/var/www/pub/ius"
            rsync_url    = "rsync://mirror-a.example.org/ius"   # where peers pull this mirror from
            serve_slots  = 4
            exclude_from = "/etc/rsync/exclude.ius.txt"          # optional
            metadata     = ["repodata/"]       # synced in stage 2
            publish      = "in-place"          # or "snapshot"
            verify       = "metadata"          # or "packages", "none"
            rsync_args   = ["--bwlimit=20000"] # optional extra rsync arguments (validated)

            [listen]
            peer    = "0.0.0.0:7873"
            control = "/run/dmirr/control.sock"
            metrics = "127.0.0.1:9873"
            client_rate  = 0                   # behind a reverse proxy that limits clients
            client_burst = 100

            [tls]
            ca   = "/etc/dmirr/ca.pem"
            cert = "/etc/dmirr/mirror-a.pem"
            key  = "/etc/dmirr/mirror-a.key"

            [peers]
            seeds         = ["mirror-b.example.org:7873"]
            gossip        = "1s"
            suspect_after = "10s"
            down_after    = "60s"

            [state]
            dir = "/var/lib/dmirr"
            """
        let config = try ConfigLoader.load(text: text, file: "t.toml", purpose: .agent).get()
        #expect(config.mirror.rsyncArgs == ["--bwlimit=20000"])
        #expect(config.mirror.excludeFrom == "/etc/rsync/exclude.ius.txt")
        #expect(config.tls?.key == "/etc/dmirr/mirror-a.key")
        #expect(config.peers.seeds == ["mirror-b.example.org:7873"])
        #expect(config.peers.downAfter == .seconds(60))
        #expect(config.listen.control == "/run/dmirr/control.sock")
        #expect(config.listen.clientRate == 0 && config.listen.clientBurst == 100)
        let defaults = try ConfigLoader.load(text: Self.minimal, file: "t.toml", purpose: .sync).get()
        #expect(defaults.listen.clientRate == 10 && defaults.listen.clientBurst == 40)
        let p = problems(Self.minimal + "\n[listen]\nclient_burst = 0\n")
        #expect(p.first?.key == "listen.client_burst" && p.first?.message.contains("out of range") == true, "\(p)")
    }

    @Test func unknownKeyNamesKeyAndLine() {
        let p = problems(Self.minimal.replacingOccurrences(of: "path = \"/srv/ius\"", with: "path = \"/srv/ius\"\npaht = \"x\""))
        #expect(p.count == 1)
        #expect(p.first?.key == "mirror.paht")
        #expect(p.first?.line == 9)
        #expect(p.first?.description.hasPrefix("/etc/dmirr/t.toml:9: mirror.paht: unknown key") == true)
    }

    @Test func unknownTableIsReported() {
        let p = problems(Self.minimal + "\n[mirorr]\npath = \"/x\"\n")
        #expect(p.map(\.key) == ["mirorr"])
        #expect(p.first?.line == 12)
    }

    @Test func keyInWrongTableGetsAHint() {
        let p = problems("path = \"/srv\"\n" + Self.minimal)
        #expect(p.first?.key == "path")
        #expect(p.first?.line == 1)
        #expect(p.first?.message.contains("[mirror]") == true)
    }

    @Test func wrongTypeNamesBothTypes() {
        let p = problems(Self.minimal.replacingOccurrences(of: "url = \"rsync://dl.example.org/ius\"", with: "url = \"rsync://dl.example.org/ius\"\nslots = \"two\""))
        #expect(p.count == 1)
        #expect(p.first?.key == "upstream.slots")
        #expect(p.first?.line == 6)
        #expect(p.first?.message == "expected an integer, found a string")
    }

    @Test func badDurations() {
        for bad in ["\"5 minutes\"", "\"-1s\"", "\"0s\"", "\"5\"", "300"] {
            let p = problems(Self.minimal.replacingOccurrences(of: "url = \"rsync://dl.example.org/ius\"", with: "url = \"rsync://dl.example.org/ius\"\npoll = \(bad)"))
            #expect(p.count == 1, "\(bad)")
            #expect(p.first?.key == "upstream.poll")
            #expect(p.first?.line == 6)
        }
        let n = problems(Self.minimal.replacingOccurrences(of: "url = \"rsync://dl.example.org/ius\"", with: "url = \"rsync://dl.example.org/ius\"\npoll = 300"))
        #expect(n.first?.message.contains("\"300s\"") == true)
    }

    @Test func missingRequiredKeys() {
        let p = problems("node = \"a\"\n")
        #expect(Set(p.compactMap(\.key)) == ["fleet", "upstream.url", "mirror.path", "state.dir"])
        #expect(p.allSatisfy { $0.line == nil && $0.message.contains("required key is missing") })
    }

    @Test func agentNeedsTLSAndAListenAddress() {
        let p = problems(Self.minimal, purpose: .agent)
        #expect(Set(p.compactMap(\.key)) == ["tls.ca", "tls.cert", "tls.key", "listen.peer"])
    }

    @Test func addressesMustBeHostPort() {
        let text = Self.minimal + "\n[listen]\npeer = \"7873\"\n[peers]\nseeds = [\"a:1\", \"b\"]\n"
        let p = problems(text)
        #expect(p.map(\.key) == ["listen.peer", "peers.seeds"])
        #expect(p.last?.message == "seed 2 'b' is not HOST:PORT")
        #expect(HostPort("[::1]:7873") == HostPort(host: "::1", port: 7873))
        #expect(HostPort("mirror-a.example.org:7873")?.description == "mirror-a.example.org:7873")
        #expect(HostPort("a:70000") == nil && HostPort("::1:5") == nil && HostPort(":5") == nil)
    }

    @Test func relativePathsAreRefused() {
        let p = problems(Self.minimal.replacingOccurrences(of: "dir = \"/var/lib/dmirr\"", with: "dir = \"var/lib/dmirr\""))
        #expect(p.count == 1)
        #expect(p.first?.key == "state.dir")
        #expect(p.first?.line == 11)
        #expect(p.first?.message.contains("relative path") == true)
    }

    @Test func deniedRsyncArgumentsAreNamed() {
        for arg in ["--delete", "--delete-after", "--remove-source-files", "--inplace", "--partial-dir=x", "-avn", "--dry-run", "/tmp"] {
            let p = problems(Self.minimal.replacingOccurrences(of: "path = \"/srv/ius\"", with: "path = \"/srv/ius\"\nrsync_args = [\"--bwlimit=100\", \"\(arg)\"]"))
            #expect(p.count == 1, "\(arg)")
            #expect(p.first?.key == "mirror.rsync_args")
            #expect(p.first?.line == 9)
            #expect(p.first?.message.contains("'\(arg)' is not allowed") == true, "\(p)")
        }
        for ok in ["--bwlimit=100", "-z", "--exclude=*.iso", "--ipv4"] {
            #expect(RsyncArgumentPolicy.rejection(for: ok) == nil, "\(ok)")
        }
    }

    @Test func badChoiceListsOptions() {
        let p = problems(Self.minimal.replacingOccurrences(of: "path = \"/srv/ius\"", with: "path = \"/srv/ius\"\npublish = \"atomic\""))
        #expect(p.first?.message == "'atomic' is not one of \"in-place\", \"snapshot\"")
    }

    @Test func stateInsideMirrorIsRefused() {
        let p = problems(Self.minimal.replacingOccurrences(of: "dir = \"/var/lib/dmirr\"", with: "dir = \"/srv/ius/.state\""))
        #expect(p.first?.key == "state.dir")
    }

    @Test func syntaxErrorHasLine() {
        let p = problems("node = \"a\nfleet = \"b\"\n")
        #expect(p.count == 1)
        #expect(p.first?.line == 1)
        #expect(p.first?.key == nil)
        #expect(p.first?.message.contains("not closed") == true)
    }

    @Test func allProblemsAreCollected() {
        let p = problems("""
            node = "a"
            fleet = 3
            bogus = true
            [upstream]
            url = "ftp://x"
            [mirror]
            path = "srv"
            [state]
            dir = "/s"
            """)
        #expect(p.compactMap(\.key).sorted() == ["bogus", "fleet", "mirror.path", "upstream.url"])
    }
}

extension ConfigLoaderTests {
    @Test func aWrongTypeIsReportedOnce() {
        let p = problems(Self.minimal + "\n[peers]\nseeds = \"a:1\"\n")
        #expect(p.map(\.key) == ["peers.seeds"])
    }
}
