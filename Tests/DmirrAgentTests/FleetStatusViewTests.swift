import DmirrWire
import Foundation
import Testing

@testable import DmirrAgent

/// The `dmirr status --json` document, as `/status.json` serves it too.
@Suite struct FleetStatusViewTests {
    @Test func theDocumentHasTheContractsFieldsAndRFC3339Times() throws {
        let response = WireStatusResponse.with {
            $0.fleet = "ius"
            $0.node = "m1"
            $0.targetToken = "push-2"
            $0.targetSeenUnixMs = 1_800_000_000_000
            $0.planToken = "push-2"
            $0.planDigest = "abc"
            $0.planAgreed = true
            $0.members = [
                .with {
                    $0.record = .with {
                        $0.node = "m2"
                        $0.publishedToken = "push-1"
                        $0.syncState = .syncing
                        $0.source = "m1"
                        $0.progress = 0.5
                    }
                    $0.liveness = "alive"
                    $0.position = 2
                },
                .with {
                    $0.record = .with {
                        $0.node = "m1"
                        $0.publishedToken = "push-2"
                        $0.syncState = .inSync
                        $0.progress = -1
                        $0.lastSyncUnixMs = 1_800_000_061_500
                    }
                    $0.liveness = "alive"
                    $0.position = 1
                },
            ]
        }
        let view = FleetStatusView(response)
        #expect(view.thisNodeInSync)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(view.json().utf8)) as? [String: Any])
        #expect(object["fleet"] as? String == "ius" && object["node"] as? String == "m1")
        let target = try #require(object["target"] as? [String: Any])
        #expect(target["token"] as? String == "push-2" && target["seen_at"] as? String == "2027-01-15T08:00:00Z")
        #expect((object["plan"] as? [String: Any])?["agreed"] as? Bool == true)
        let members = try #require(object["members"] as? [[String: Any]])
        // Plan order first.
        #expect(members.map { $0["node"] as? String } == ["m1", "m2"])
        #expect(members[0]["state"] as? String == "in_sync" && members[0]["last_sync"] as? String == "2027-01-15T08:01:01Z")
        #expect(members[0]["progress"] is NSNull && members[0]["source"] is NSNull && members[0]["last_error"] is NSNull)
        #expect(members[1]["state"] as? String == "syncing" && members[1]["source"] as? String == "m1")
        #expect(members[1]["progress"] as? Double == 0.5 && members[1]["last_sync"] is NSNull)
    }
}
