#!/usr/bin/env bash
# tests/gpu/run.sh — the CUDA engine on a GPU machine, in one command: builds nothing (the GPU
# machine has no network; carry the binaries), runs the guest driver's selftest on a vGPU of the
# CUDA engine, measures lone throughput and fixed_share 2:1 with the guest driver's load, kills
# a vGPU's worker under a neighbour's load, and runs the native baselines in the same run
# (tests/gpu/native_sharing.py, CuPy). Prints Markdown tables.
#
# usage: tests/gpu/run.sh BIN_DIR [SECONDS]
#   BIN_DIR holds vgpud, vgpuctl, vgpud-cuda-worker and vgpu-guest (release builds).
set -uo pipefail
BIN=$(cd "$1" && pwd); SECS=${2:-2}
HERE=$(cd "$(dirname "$0")" && pwd)
field() { sed -n "s/.*\"$1\":\([0-9.e+-]*\).*/\1/p" | head -1; }
RUN=$(mktemp -d /tmp/vgpud-gpu.XXXXXX)

echo "## GPU"
"$BIN/vgpud-cuda-worker" --probe || { echo "no GPU: $?"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null

start() { # start POLICY [EXTRA CONFIG TEXT]
    cat >"$RUN/vgpud.toml" <<CFG
${2:-}
[parent."gpu0"]
policy = "$1"

[catalog.parent."gpu0"]
engine = "cuda"
device = 0
CFG
    VGPUD_LOG=${VGPUD_LOG:-info} "$BIN/vgpud" --config "$RUN/vgpud.toml" --run-dir "$RUN/run" >>"$RUN/vgpud.log" 2>&1 &
    PID=$!
    for _ in $(seq 600); do [ -S "$RUN/run/control.sock" ] && return 0; sleep 0.1; done
    echo "vgpud did not start:"; tail -20 "$RUN/vgpud.log"; exit 1
}
stop() { kill -TERM "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; rm -rf "$RUN/run"; }
create() { "$BIN/vgpuctl" --run-dir "$RUN/run" create --type "$1" | awk '{print $2}'; }
load() { # load SOCKET UNIT CHANNELS
    timeout 60 "$BIN/vgpu-guest" --socket "$1" load spin --unit-us "$2" --seconds "$SECS" --channels "$3" --json
}
keep_log() { [ -n "${OUT:-}" ] && cp "$RUN/vgpud.log" "$OUT/vgpud.log" 2>/dev/null; true; }
trap keep_log EXIT

start best_effort
echo; echo "## Types derived from the GPU"; "$BIN/vgpuctl" --run-dir "$RUN/run" types
T1=$("$BIN/vgpuctl" --run-dir "$RUN/run" types --json | python3 -c 'import json,sys; t=json.load(sys.stdin); print(" ".join(x["id"] for x in t))')
set -- $T1; WHOLE=$1; HALF=${2:-$1}; QUARTER=${3:-$HALF}; EIGHTH=${4:-$QUARTER}
S=$(create "$EIGHTH")
PARTS=${PARTS:-selftest copy lone share isolation latency emulated native}
has() { case " $PARTS " in *" $1 "*) return 0;; esac; return 1; }
if has selftest; then
echo; echo "## Selftest on a $EIGHTH vGPU of the CUDA engine"
timeout 300 "$BIN/vgpu-guest" --socket "$S" selftest 2>&1 | tail -40
fi

if has copy; then
echo; echo "## Copy: guest RAM -> VRAM -> guest RAM (256 MiB each way)"
timeout 120 "$BIN/vgpu-guest" --ram-mib 1024 --socket "$S" run copy --size $((256 << 20)) 2>&1 | tail -3
timeout 120 "$BIN/vgpu-guest" --ram-mib 1024 --socket "$S" run copy --size $((64 << 20)) 2>&1 | tail -3
fi

if has lone; then
echo; echo "## Lone vGPU ($EIGHTH, best_effort), spin kernels on every SM"
echo "| kernel µs | 1 channel | 4 channels | p50 µs (1 ch) |"; echo "|---|---|---|---|"
for u in 10 100 1000; do
    a=$(load "$S" "$u" 1); b=$(load "$S" "$u" 4)
    printf '| %s | %.3f | %.3f | %s |\n' "$u" "$(echo "$a" | field utilization)" "$(echo "$b" | field utilization)" "$(echo "$a" | field latency_p50_us)"
done
fi
stop

if has share; then
echo; echo "## fixed_share 2:1 ($QUARTER beside $EIGHTH)"
echo "| kernel µs | $QUARTER | $EIGHTH | ratio |"; echo "|---|---|---|---|"
for u in 10 50 500 5000; do
    start fixed_share; A=$(create "$QUARTER"); B=$(create "$EIGHTH")
    load "$A" "$u" 1 >"$RUN/a" & pa=$!; load "$B" "$u" 1 >"$RUN/b" & pb=$!
    if [ "$u" = 500 ] && [ -n "${OUT:-}" ]; then # the chart of this run's shares over time
        "$BIN/vgpuctl" --run-dir "$RUN/run" record --seconds "$SECS" --interval 100 \
            --png "$OUT/gpu-fixed-share-2to1.png" --csv "$OUT/gpu-fixed-share-2to1.csv" \
            --title "CUDA engine on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1): fixed_share 2:1, 500 us kernels" >/dev/null &
        pr=$!
    fi
    wait $pa; wait $pb; [ -n "${pr:-}" ] && wait "$pr"; pr=; stop
    sa=$(field utilization <"$RUN/a"); sb=$(field utilization <"$RUN/b")
    printf '| %s | %.3f | %.3f | %.3f |\n' "$u" "$sa" "$sb" "$(awk -v a="$sa" -v b="$sb" 'BEGIN{print (b > 0 ? a / b : 0)}')"
done
fi

if has isolation; then
echo; echo "## Isolation: kill -9 of one vGPU's worker beside another's load"
start equal_share; A=$(create "$EIGHTH"); B=$(create "$EIGHTH")
load "$B" 1000 1 >"$RUN/b" & pb=$!
"$BIN/vgpu-guest" --socket "$A" load spin --unit-us 1000 --seconds 4 --channels 1 --json >"$RUN/a" 2>&1 & pa=$!
sleep 1
W=$(pgrep -f "vgpud-cuda-worker --device" | head -1); echo "killing worker $W"; kill -9 "$W"
wait $pa; echo "A after its worker was killed: $(tail -c 300 "$RUN/a")"
wait $pb; echo "B: $(cat "$RUN/b")"
echo "A again (a new client resets the vGPU, a new worker):"
timeout 120 "$BIN/vgpu-guest" --socket "$A" selftest 2>&1 | tail -3
stop
fi

if has latency; then
echo; echo "## Latency class: a 100 µs probe (one at a time, 2 ms apart) on a latency-class $EIGHTH, alone and beside a best_effort $QUARTER saturating with 10 ms kernels"
start best_effort "[type.\"$EIGHTH\"]
class = \"latency\""
P=$(create "$EIGHTH"); H=$(create "$QUARTER")
probe() { timeout 60 "$BIN/vgpu-guest" --socket "$P" load spin --unit-us 100 --seconds 3 --probe-gap-ms 2 --json; }
alone=$(probe)
timeout 60 "$BIN/vgpu-guest" --socket "$H" load spin --unit-us 10000 --seconds 4 --json >"$RUN/h" & ph=$!
sleep 0.5; beside=$(probe); wait $ph
echo "| probe | p50 µs | p99 µs |"; echo "|---|---|---|"
echo "| alone | $(echo "$alone" | field latency_p50_us) | $(echo "$alone" | field latency_p99_us) |"
echo "| beside 10 ms kernels | $(echo "$beside" | field latency_p50_us) | $(echo "$beside" | field latency_p99_us) |"
echo "heavy neighbour: $(cat "$RUN/h")"
stop
fi

if has emulated; then
echo; echo "## The same path with the worker emulating the GPU on the cpu engine (VGPUD_CUDA_EMULATE=1)"
echo "| kernel µs | emulated worker, 1 channel |"; echo "|---|---|"
export VGPUD_CUDA_EMULATE=1
start best_effort; E=$(create emulated-1c)
for u in 10 100; do printf '| %s | %.3f |\n' "$u" "$(load "$E" "$u" 1 | field utilization)"; done
stop; unset VGPUD_CUDA_EMULATE
fi

if has native; then
echo; echo "## Native baselines (same run)"
timeout 300 python3 "$HERE/native_sharing.py" 2>&1 | tail -20
fi
echo; echo "## vgpud log (tail)"; tail -30 "$RUN/vgpud.log"
