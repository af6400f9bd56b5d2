#!/usr/bin/env bash
# tests/gpu/compare.sh — two builds and native CUDA in one GPU run: tests/gpu/run.sh's parts on
# BASE_DIR's binaries, then on NEW_DIR's, back to back, then tests/gpu/native_sharing.py, and a
# Markdown table base | new | native (tests/gpu/compare_table.py). Logs under $OUT.
#
# usage: tests/gpu/compare.sh BASE_DIR NEW_DIR
#   each holds release builds of vgpud, vgpuctl, vgpud-cuda-worker and vgpu-guest.
#   PARTS (default "copy lone together share latency"), LONE_UNITS, TOGETHER_UNITS, SHARE_UNITS
#   (default "10 500"), COPY_MIB (default 1024) and SECS (default 2) go to run.sh; BUILDS="new"
#   runs one build only; PER_BUILD_S and NATIVE_S bound each step (NATIVE_S=0 skips native).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
declare -A DIR=([base]=$(cd "$1" && pwd) [new]=$(cd "$2" && pwd))
OUT=${OUT:-/tmp/vgpud-compare}; mkdir -p "$OUT"
T0=$(date +%s)
export PARTS=${PARTS:-"copy lone together share latency"} COPY_MIB=${COPY_MIB:-1024}
export LONE_UNITS=${LONE_UNITS:-"10 100 1000"} TOGETHER_UNITS=${TOGETHER_UNITS:-"50 500 5000"}
export SHARE_UNITS=${SHARE_UNITS:-"10 500"}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
for b in ${BUILDS:-base new}; do
    echo "=== $b ($(($(date +%s) - T0)) s)"
    mkdir -p "$OUT/$b"
    OUT="$OUT/$b" timeout "${PER_BUILD_S:-200}" bash "$HERE/run.sh" "${DIR[$b]}" "${SECS:-2}" >"$OUT/$b.md" 2>&1
    echo "rc $? after $(($(date +%s) - T0)) s"; grep -E '^\|' "$OUT/$b.md" | head -40
    cp "$OUT/$b/vgpud.log" "$OUT/$b.vgpud.log" 2>/dev/null
done
if [ "${NATIVE_S:-100}" != 0 ]; then
    echo "=== native ($(($(date +%s) - T0)) s)"
    timeout "${NATIVE_S:-100}" python3 "$HERE/native_sharing.py" >"$OUT/native.jsonl" 2>"$OUT/native.err"
    echo "rc $? after $(($(date +%s) - T0)) s"; cat "$OUT/native.jsonl"
fi
python3 "$HERE/compare_table.py" "$OUT" | tee "$OUT/table.md"
