import Foundation
#if canImport(FoundationXML)
    import FoundationXML
#endif
import Testing

@testable import DmirrCore

@Suite struct MirrorListTests {
    static func member(_ node: String, _ token: String, region: String = "", url: String? = nil, at: Int64 = 0) -> MirrorList.Member {
        MirrorList.Member(node: node, publicURL: url ?? "http://\(node).example.org/ius", region: region, publishedToken: token,
                          lastSyncMillis: at)
    }

    @Test func onlyHoldersOfTheTargetWithAPublicURLAreListed() throws {
        let members = [
            Self.member("a", "T2"), Self.member("b", "T1"), Self.member("c", "T2"), Self.member("d", "T2", url: ""),
            Self.member("e", ""),
        ]
        let answer = try #require(MirrorList.select(members, target: "T2", client: "192.0.2.1", region: nil))
        #expect(answer.current && answer.token == "T2")
        #expect(Set(answer.members.map(\.node)) == ["a", "c"])
        let text = MirrorList.text(answer, path: "el9/x86_64", target: "T2")
        #expect(Set(text.split(separator: "\n")) == ["http://a.example.org/ius/el9/x86_64/", "http://c.example.org/ius/el9/x86_64/"])
        #expect(!text.contains("#"))
    }

    @Test func withNoHolderOfTheTargetTheNewestTokenHeldIsListedAndFlagged() throws {
        let members = [Self.member("a", "T1", at: 1_000), Self.member("b", "T0", at: 500), Self.member("c", "T1", at: 900)]
        let answer = try #require(MirrorList.select(members, target: "T2", client: "c1", region: nil))
        #expect(!answer.current && answer.token == "T1" && Set(answer.members.map(\.node)) == ["a", "c"])
        let text = MirrorList.text(answer, path: "", target: "T2")
        #expect(text.hasPrefix("# dmirr: no mirror publishes the fleet's target token T2 yet; these publish T1"), "\(text)")
        #expect(text.contains("http://a.example.org/ius/\n"))
        #expect(MirrorList.select([Self.member("a", "T1", url: "")], target: "T1", client: "c1", region: nil) == nil)
    }

    @Test func eachClientHasAStableOrderAndLoadSpreads() throws {
        let members = (0..<10).map { Self.member("m\($0)", "T") }
        var firsts: [String: Int] = [:]
        for i in 0..<200 {
            let client = "10.0.\(i / 256).\(i % 256)"
            let a = try #require(MirrorList.select(members, target: "T", client: client, region: nil))
            let b = try #require(MirrorList.select(members.reversed(), target: "T", client: client, region: nil))
            #expect(a.members == b.members, "the same client, the same order, whatever order the members came in")
            firsts[a.members[0].node, default: 0] += 1
        }
        // 200 clients over 10 mirrors: every mirror is someone's first, none is everyone's.
        #expect(firsts.count == 10 && firsts.values.max()! < 50, "\(firsts)")
    }

    @Test func theClientsRegionComesFirst() throws {
        let members = [Self.member("a", "T", region: "US"), Self.member("b", "T", region: "DE"), Self.member("c", "T", region: "de"),
                       Self.member("d", "T")]
        for client in ["1.1.1.1", "2.2.2.2", "3.3.3.3"] {
            let answer = try #require(MirrorList.select(members, target: "T", client: client, region: "DE"))
            #expect(Set(answer.members.prefix(2).map(\.node)) == ["b", "c"], "\(answer.members.map(\.node))")
            #expect(answer.members.count == 4)
        }
    }

    /// The order packs each member's index into its key: every member appears exactly once, whatever the count.
    @Test func everyHolderAppearsOnceForAnyCount() throws {
        for count in [1, 2, 3, 4, 5, 63, 64, 65, 100, 129, 1_025] {
            let members = (0..<count).map { Self.member("n\($0)", "T", region: $0 % 3 == 0 ? "DE" : "US") }
            for region in [nil, "DE"] {
                let answer = try #require(MirrorList.select(members, target: "T", client: "198.51.100.7", region: region))
                let names = answer.members.map(\.node)
                #expect(names.count == min(count, MirrorList.maxURLs) && Set(names).count == names.count, "\(count) \(region ?? "-")")
                if region != nil {
                    // Members of the region first.
                    let firstOther = answer.members.firstIndex { $0.region != "DE" } ?? answer.members.count
                    #expect(answer.members[firstOther...].allSatisfy { $0.region != "DE" }, "\(count)")
                }
            }
        }
    }

    @Test func answersAreBounded() throws {
        let members = (0..<1_000).map { Self.member("m\($0)", "T") }
        #expect(try #require(MirrorList.select(members, target: "T", client: "x", region: nil)).members.count == MirrorList.maxURLs)
    }

    @Test func publicURLsRegionsAndPathsAreChecked() {
        #expect(MirrorList.publicURL("https://mirror.example.org/ius/") == "https://mirror.example.org/ius")
        #expect(MirrorList.publicURL("http://127.0.0.1:8080") == "http://127.0.0.1:8080")
        for bad in ["ftp://x/y", "https://", "https:///x", "http://x/y?z=1", "http://x/#f", "http://x/a b", "javascript:alert(1)",
                    "http://x/\"><script>", "http://" + String(repeating: "a", count: 1100)] {
            #expect(MirrorList.publicURL(bad) == nil, "\(bad.prefix(40))")
        }
        #expect(MirrorList.isValidRegion("eu-west_1") && !MirrorList.isValidRegion("") && !MirrorList.isValidRegion("e u")
            && !MirrorList.isValidRegion(String(repeating: "a", count: 33)))
        #expect(MirrorList.repositoryPath("el9/x86_64") == "el9/x86_64")
        #expect(MirrorList.repositoryPath("/el9/x86_64/") == "el9/x86_64")
        #expect(MirrorList.repositoryPath("") == "")
        for bad in ["../etc", "el9/../../x", "a/./b", "el9/x86_64%00", "a\\b", "a b", String(repeating: "a/", count: 200)] {
            #expect(MirrorList.repositoryPath(bad) == nil, "\(bad.prefix(40))")
        }
    }

    /// The document dnf reads: well-formed XML in the metalinker namespace, the file's size, time and SHA-256, and one
    /// URL per mirror with a falling preference; hostile strings are escaped.
    @Test func theMetalinkIsWellFormedAndCarriesTheChecksum() throws {
        let sha = String(repeating: "ab", count: 32)
        let members = [Self.member("a", "T", region: "de"), Self.member("b", "T", url: "https://b.example.org/x&y")]
        let xml = Metalink.document(file: .init(size: 3_071, mtime: 1_800_000_000, sha256: sha), members: members, path: "el9/x86_64",
                                    published: "Wed, 02 Dec 2026 02:00:00 GMT")
        final class Collect: NSObject, XMLParserDelegate {
            var elements: [(String, [String: String])] = []
            var text: [String: String] = [:]
            var current = ""
            func parser(_ p: XMLParser, didStartElement e: String, namespaceURI: String?, qualifiedName q: String?, attributes a: [String: String]) {
                elements.append((e, a))
                current = e
                text[e, default: ""] += ""
            }
            func parser(_ p: XMLParser, foundCharacters s: String) { text[current, default: ""] += s }
        }
        let collect = Collect()
        let parser = XMLParser(data: Data(xml.utf8))
        parser.delegate = collect
        #expect(parser.parse(), "\(parser.parserError.map { "\($0)" } ?? "")\n\(xml)")
        #expect(collect.elements.first?.0 == "metalink" && collect.elements.first?.1["version"] == "3.0")
        #expect(collect.elements.first?.1["xmlns"] == "http://www.metalinker.org/")
        #expect(collect.text["size"]?.trimmingCharacters(in: .whitespacesAndNewlines) == "3071")
        #expect(collect.text["mm0:timestamp"]?.trimmingCharacters(in: .whitespacesAndNewlines) == "1800000000")
        #expect(collect.text["hash"]?.trimmingCharacters(in: .whitespacesAndNewlines) == sha)
        let urls = collect.elements.filter { $0.0 == "url" }.map(\.1)
        #expect(urls.map { $0["preference"] } == ["100", "99"])
        #expect(urls.map { $0["protocol"] } == ["http", "https"])
        #expect(urls.first?["location"] == "DE")
        #expect(xml.contains(">http://a.example.org/ius/el9/x86_64/repodata/repomd.xml</url>"))
        #expect(xml.contains("https://b.example.org/x&amp;y/el9/x86_64/repodata/repomd.xml"), "\(xml)")

        // Not of the target: said in a comment, which stays a well-formed one whatever the tokens hold.
        let noted = Metalink.document(file: .init(size: 1, mtime: 1, sha256: sha), members: members, path: "",
                                      published: "Wed, 02 Dec 2026 02:00:00 GMT", note: "target T--->2 not held; these publish T")
        let again = XMLParser(data: Data(noted.utf8))
        #expect(again.parse(), "\(noted)")
        #expect(noted.contains("<!-- dmirr: target T- - ->2 not held; these publish T -->"), "\(noted)")
    }
}
