#!/usr/bin/env bash
# tests/bench/emulated-path.sh — the GPU engine's host path with no GPU: a `cuda` parent whose
# worker emulates the GPU on the cpu engine (VGPUD_CUDA_EMULATE=1), one emulated-1c vGPU with the
# guest driver's load (`vgpu-guest load spin`, 1 channel), builds interleaved run by run. Per build:
# lone utilization, the daemon's CPU per item, and the wake-ups per item of the daemon's threads a
# completion passes through (the worker's reader and completion thread, the vGPU's front end).
#
# usage: tests/bench/emulated-path.sh UNIT_US ROUNDS BIN_DIR...
#   each BIN_DIR holds vgpud, vgpuctl, vgpud-cuda-worker and vgpu-guest (release builds).
set -u
U=$1; N=$2; shift 2
R=$(mktemp -d /tmp/vgpud-emulated.XXXXXX)
printf '[parent."gpu0"]\npolicy = "best_effort"\n\n[catalog.parent."gpu0"]\nengine = "cuda"\ndevice = 0\n' >"$R/vgpud.toml"
field() { sed -n "s/.*\"$1\":\([0-9.e+-]*\).*/\1/p" | head -1; }
# name cpu_ticks voluntary_switches, a line per thread of the daemon
threads() { for t in /proc/$1/task/*; do echo "$(cut -c1-6 "$t/comm") $(awk '{print $14 + $15}' "$t/stat") $(awk '/^voluntary/ {print $2}' "$t/status")"; done; }
for _ in $(seq "$N"); do for B in "$@"; do
    rm -rf "$R/run"
    VGPUD_CUDA_EMULATE=1 "$B/vgpud" --config "$R/vgpud.toml" --run-dir "$R/run" >"$R/log" 2>&1 &
    P=$!
    for _ in $(seq 100); do [ -S "$R/run/control.sock" ] && break; sleep 0.05; done
    S=$("$B/vgpuctl" --run-dir "$R/run" create --type emulated-1c | awk '{print $2}')
    "$B/vgpu-guest" --socket "$S" load spin --unit-us "$U" --seconds 4 --channels 1 --json >"$R/load" &
    L=$!
    sleep 0.5; threads $P >"$R/t0"; t0=$(date +%s%3N)
    sleep 3; threads $P >"$R/t1"; t1=$(date +%s%3N)
    wait $L; kill -TERM $P; wait $P 2>/dev/null
    rate=$(field rate_per_s <"$R/load")
    awk -v b="$(basename "$B")" -v u="$(field utilization <"$R/load")" -v r="$rate" -v s=$(((t1 - t0))) '
        NR == FNR { c[$1] += $2; v[$1] += $3; next }
        { c2[$1] += $2; v2[$1] += $3 }
        END {
            for (k in c2) { cpu += c2[k] - c[k]; w[k] = (v2[k] - v[k]) / (s / 1000) / r }
            printf "%s %s %.2f %.2f %.2f %.2f\n", b, u, cpu / 100 / (s / 1000) * 1e6 / r,
                w["worker"], w["pfifo-"], w["vfio-u"]
        }' "$R/t0" "$R/t1"
done; done | awk -v u="$U" '
    { n[$1]++; ut[$1] += $2; cpu[$1] += $3; rd[$1] += $4; pf[$1] += $5; vf[$1] += $6; all[$1] = all[$1] " " substr($2, 1, 5) }
    END {
        print "| build | " u " µs: utilization, mean (each run) | daemon CPU µs an item | wake-ups an item: worker reader + completions | front end | vfio-user |"
        print "|---|---|---|---|---|---|"
        for (b in n) printf "| %s | %.3f (%s) | %.1f | %.2f | %.2f | %.2f |\n", b, ut[b] / n[b], substr(all[b], 2), cpu[b] / n[b], rd[b] / n[b], pf[b] / n[b], vf[b] / n[b]
    }'
rm -rf "$R"
