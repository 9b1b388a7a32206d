#!/usr/bin/env bash
# Builds the libFuzzer target for the frame and message decoders (Fuzz/) and runs it for N seconds (default 60).
# Exit non-zero when the fuzzer finds a crash, a leak, a timeout or an allocation over the limit; the input that did it
# is left in Fuzz/ as crash-*/leak-*/oom-*/timeout-* for a regression test.
set -euo pipefail
seconds=${1:-60}
cd "$(dirname "$0")/../Fuzz"
swift build -c release --sanitize=fuzzer --sanitize=address 2>&1 | tail -1
mkdir -p .corpus
cp -n corpus/* .corpus/ 2>/dev/null || true
.build/release/FuzzWire -max_total_time="$seconds" -malloc_limit_mb=256 -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 .corpus 2>&1 | tail -15
