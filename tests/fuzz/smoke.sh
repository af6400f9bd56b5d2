#!/usr/bin/env bash
# tests/fuzz/smoke.sh — build the fuzz targets (fuzz/, cargo fuzz on the nightly toolchain)
# and run each for SECONDS (default 10; about a minute in all). A crash fails the run and
# leaves its input under fuzz/artifacts/<target>/. Long runs: docs/reliability.md.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SECONDS_EACH=${1:-10}
CARGO_FUZZ=$(bash "$HERE/install-cargo-fuzz.sh")
export PATH=$(dirname "$CARGO_FUZZ"):$PATH
cd "$REPO/fuzz"
CARGO_BUILD_JOBS=2 cargo +nightly fuzz build
for t in vfio_user_session bar0 pushbuf gmmu config worker_to_daemon daemon_to_worker; do
    echo "fuzz smoke: $t for ${SECONDS_EACH}s"
    cargo +nightly fuzz run "$t" -- -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 \
        -print_final_stats=1 2>&1 | grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done|==[0-9]+==|SUMMARY|.*panicked)' || true
    [ -z "$(ls -A "artifacts/$t" 2>/dev/null)" ] || { echo "fuzz smoke: $t found a crash: $(ls artifacts/$t)" >&2; exit 1; }
done
