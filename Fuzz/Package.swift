// swift-tools-version: 6.2
// libFuzzer targets for what dmirr decodes from peers: the wire (frames and messages) and a tree's manifest. A separate package because SwiftPM's executable targets do not link
// with the fuzzer runtime here; a plain target with main.swift does (tried on Swift 6.3 on Linux).
// Sources/DmirrWire is a symlink to the main package's module, and Sources/DmirrManifest holds symlinks to the two
// DmirrCore files the manifest decoder is made of (it needs no swift-crypto), so the fuzzers run exactly that code.
//   scripts/fuzz.sh 60      (builds with -sanitize=fuzzer,address and runs for 60 s)
import PackageDescription

let package = Package(
    name: "dmirr-fuzz",
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.0"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
    ],
    targets: [
        .target(
            name: "DmirrWire",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
        .target(
            name: "FuzzWire",
            dependencies: ["DmirrWire", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .target(name: "DmirrManifest"),
        .target(name: "FuzzManifest", dependencies: ["DmirrManifest"]),
    ]
)
