#!/usr/bin/env bash
# Regenerates Sources/DmirrWire/Generated/dmirr.pb.swift from proto/dmirr.proto.
#   scripts/gen-proto.sh           regenerate
#   scripts/gen-proto.sh --check   fail if the committed file differs from what the .proto generates
# Needs protoc (apt-get install protobuf-compiler) and protoc-gen-swift, which it builds from the swift-protobuf this
# package depends on (`swift build --product protoc-gen-swift`, about 30 s beside a debug build; PROTOC_GEN_SWIFT=path
# uses another). We commit the generated file instead of using the SwiftPM build plugin, which would compile protoc
# itself on every clean build (it adds minutes to every clean build).
set -euo pipefail
cd "$(dirname "$0")/.."
out=Sources/DmirrWire/Generated
plugin=${PROTOC_GEN_SWIFT:-}
if [ -z "$plugin" ]; then
    swift build --product protoc-gen-swift 2>&1 | tail -1
    plugin=$(swift build --show-bin-path)/protoc-gen-swift
fi
command -v protoc >/dev/null || { echo "gen-proto.sh: protoc not found (apt-get install protobuf-compiler)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
protoc --plugin=protoc-gen-swift="$plugin" --swift_out="$tmp" --swift_opt=Visibility=Public -I proto proto/dmirr.proto
if [ "${1:-}" = "--check" ]; then
    diff -u "$out/dmirr.pb.swift" "$tmp/dmirr.pb.swift" && echo "gen-proto.sh: generated code is current"
else
    mkdir -p "$out"
    cp "$tmp/dmirr.pb.swift" "$out/dmirr.pb.swift"
    echo "gen-proto.sh: wrote $out/dmirr.pb.swift"
fi
