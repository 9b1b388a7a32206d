// swift-tools-version: 6.2
// dmirr — distributed peer-mirror agent for package repositories.
// Module layout and dependency direction: docs/architecture.md §2 (Core ← shells ← CLI).

import PackageDescription

let strict: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
]
/// The state machines and the simulator are optimized even in debug builds: the simulator tests run them for
/// hundreds of mirrors over many seeds, about ten times faster this way. (Both modules are small and pure.)
let optimizedInDebug: [SwiftSetting] = strict + [.unsafeFlags(["-O"], .when(configuration: .debug))]

let package = Package(
    name: "dmirr",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "dmirr", targets: ["dmirr"]),
        .executable(name: "dmirr-sim", targets: ["dmirr-sim"]),
        // For the fuzz package in Fuzz/ (it links the decoder with libFuzzer).
        .library(name: "DmirrWire", targets: ["DmirrWire"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/swiftlang/swift-subprocess", from: "1.0.2"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1", from: "1.7.4"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.0"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        // Pure: value types, parsers and decisions. No I/O, clocks, randomness or threads.
        .target(
            name: "DmirrCore",
            dependencies: [.product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: optimizedInDebug
        ),
        // SQLite state (GRDB). The only module that imports GRDB.
        .target(
            name: "DmirrStore",
            dependencies: ["DmirrCore", .product(name: "GRDB", package: "GRDB.swift")],
            swiftSettings: strict
        ),
        // The peer protocol's bytes: framing with an explicit limit, and the protobuf messages of proto/.
        .target(
            name: "DmirrWire",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            swiftSettings: strict
        ),
        // The fleet's network side: PKI (`dmirr cert`), mTLS, identity from certificates.
        .target(
            name: "DmirrNet",
            dependencies: [
                "DmirrCore", "DmirrWire",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strict
        ),
        // The one-mirror sync pipeline: lock, rsync runner, verification, publish.
        .target(
            name: "DmirrSync",
            dependencies: [
                "DmirrCore", "DmirrStore",
                .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        // Real local upstreams for the demo, tests and benchmarks: rsync daemons on loopback and yum repos built with
        // rpmbuild + createrepo_c.
        .target(
            name: "DmirrFixtures",
            dependencies: ["DmirrCore"],
            resources: [.copy("make-yum-repo.sh")],
            swiftSettings: strict
        ),
        // The daemon: services wired with swift-service-lifecycle; interprets the core's directives. Its read-only
        // HTTP listener (metrics, the fleet page) is Hummingbird; metrics go through swift-metrics to swift-prometheus.
        .target(
            name: "DmirrAgent",
            dependencies: [
                "DmirrCore", "DmirrStore", "DmirrSync", "DmirrNet", "DmirrWire",
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: strict
        ),
        // The fleet simulator: the real DmirrCore state machines for N mirrors in virtual time, and the cron baseline.
        .target(name: "DmirrSim", dependencies: ["DmirrCore"], swiftSettings: optimizedInDebug),
        .executableTarget(
            name: "dmirr-sim",
            dependencies: ["DmirrSim", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "dmirr",
            dependencies: [
                "DmirrCore", "DmirrStore", "DmirrSync", "DmirrFixtures", "DmirrNet", "DmirrAgent", "DmirrWire",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),

        // Test helpers shared by the live tests: rsync daemons, yum repos, running the CLI.
        .target(
            name: "DmirrTestSupport",
            dependencies: ["DmirrCore", "DmirrFixtures"],
            path: "Tests/DmirrTestSupport",
            swiftSettings: strict
        ),
        .testTarget(name: "DmirrCoreTests", dependencies: ["DmirrCore"], swiftSettings: strict),
        .testTarget(name: "DmirrSimTests", dependencies: ["DmirrSim", "DmirrCore", "DmirrTestSupport"], swiftSettings: strict),
        .testTarget(name: "DmirrStoreTests", dependencies: ["DmirrStore"], swiftSettings: strict),
        .testTarget(
            name: "DmirrWireTests",
            dependencies: [
                "DmirrWire",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "DmirrNetTests",
            dependencies: [
                "DmirrNet", "DmirrWire", "DmirrTestSupport", "DmirrFixtures",
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "DmirrSyncTests",
            dependencies: [
                "DmirrSync", "DmirrStore", "DmirrTestSupport",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        // The agent's services driven on a manual clock (virtual time), with real certificates, SQLite and rsync.
        .testTarget(
            name: "DmirrAgentTests",
            dependencies: [
                "DmirrAgent", "DmirrCore", "DmirrNet", "DmirrStore", "DmirrWire", "DmirrTestSupport", "DmirrFixtures",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "DmirrCLITests",
            dependencies: ["DmirrTestSupport", "DmirrCore", "DmirrNet", "DmirrWire", "dmirr"],
            swiftSettings: strict
        ),
    ]
)
