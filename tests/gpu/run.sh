#!/usr/bin/env bash
# tests/gpu/run.sh — the CUDA engine on a GPU machine, in one command: builds nothing (the GPU
# machine has no network; carry the binaries), runs the guest driver's selftest on a vGPU of the
# CUDA engine, guest PTX (tests/gpu/ptx/kernels.cu, compiled here with nvcc), measures lone
# throughput and fixed_share 2:1 with the guest driver's load, isolates a neighbour's checked
# saxpy from a vGPU whose kernels fault, run away and whose worker is killed, and runs the
# native baselines in the same run (tests/gpu/native_sharing.py, CuPy). Prints Markdown tables.
# The `multi` part needs two GPUs (it says so and skips on one): a parent per GPU
# (device = "all"), the selftest on each, lone throughput per GPU against native there, shares
# held per GPU while both are busy, a fault storm on GPU 0 beside checked work on GPU 1, and
# placement of 2 x the per-GPU maximum of a type.
#
# usage: tests/gpu/run.sh BIN_DIR [SECONDS]
#   BIN_DIR holds vgpud, vgpuctl, vgpud-cuda-worker and vgpu-guest (release builds), and for the
#   guest-cuda part libvgpu_cuda.so (tools/guest-cuda) and peers/ (see tests/gpu/guest_cuda.sh).
#   PARTS="selftest ptx ..." picks sections (default: all); LONE_UNITS, TOGETHER_UNITS,
#   SHARE_UNITS (kernel µs) and COPY_MIB pick their sizes; ISO_SECS sets how long the isolation
#   part's neighbour runs (default 45 s: it must outlast all of the faulting vGPU's phases);
#   TOGETHER_POLICY the policy of the two-busy-vGPUs part (default equal_share; it is pasted into
#   the config: 'equal_share"<newline>timeslice = "8ms' sets a timeslice too). SANDBOX=off runs
#   every part with the workers unconfined ([workers] sandbox = false); the `sandbox` part
#   compares the two itself. STORM_SECS sets how long the `multi` part's fault storm lasts
#   (default 20 s, after 10 s of GPU 1 alone). TIMELINE=1 has every worker keep the GPU's timeline
#   of its spins (VGPUD_SPIN_TIMELINE, engines/cuda/src/timeline.rs); the `together` and `share`
#   parts then print where the GPU's time went at the switches (tests/gpu/switch_timeline.py).
set -uo pipefail
BIN=$(cd "$1" && pwd); SECS=${2:-2}
HERE=$(cd "$(dirname "$0")" && pwd)
field() { sed -n "s/.*\"$1\":\([0-9.e+-]*\).*/\1/p" | head -1; }
RUN=$(mktemp -d /tmp/vgpud-gpu.XXXXXX)

echo "## GPU"
"$BIN/vgpud-cuda-worker" --probe || { echo "no GPU: $?"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null

# The workers' group where the device nodes are not world read-write (WORKERS_GROUP=gid).
ON_CFG=; [ -n "${WORKERS_GROUP:-}" ] && ON_CFG=$'[workers]\ngroup = '"$WORKERS_GROUP"
sandbox_cfg() { [ "$1" = off ] && echo $'[workers]\nsandbox = false' || echo "$ON_CFG"; }
SANDBOX_CFG=$(sandbox_cfg "${SANDBOX:-on}")
start() { # start POLICY [EXTRA CONFIG TEXT]
    cat >"$RUN/vgpud.toml" <<CFG
${2:-}
$SANDBOX_CFG
[parent."gpu0"]
policy = "$1"

[catalog.parent."gpu0"]
engine = "cuda"
device = 0
CFG
    launch
}
start_all() { # start_all POLICY [EXTRA CONFIG TEXT]: a parent per GPU (device = "all")
    cat >"$RUN/vgpud.toml" <<CFG
${2:-}
$SANDBOX_CFG
[parent."gpus"]
policy = "$1"

[catalog.parent."gpus"]
engine = "cuda"
device = "all"
CFG
    launch
}
launch() {
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
# TIMELINE=1: every worker keeps the GPU's timeline of its spins; `timeline LABEL FROM_LINE` sums up
# the log since that line (tests/gpu/switch_timeline.py), `timelines` prints what was summed up.
[ -n "${TIMELINE:-}" ] && export VGPUD_SPIN_TIMELINE=1
log_lines() { echo $(($(wc -l <"$RUN/vgpud.log" 2>/dev/null || echo 0) + 1)); }
timeline() {
    [ -n "${TIMELINE:-}" ] && tail -n +"$2" "$RUN/vgpud.log" | python3 "$HERE/switch_timeline.py" "$1" >>"$RUN/timeline.jsonl"
}
timelines() {
    [ -z "${TIMELINE:-}" ] && return 0
    echo; echo "GPU timeline (switch_timeline.py):"; cat "$RUN/timeline.jsonl" 2>/dev/null; : >"$RUN/timeline.jsonl"
}
keep_log() { [ -n "${OUT:-}" ] && cp "$RUN/vgpud.log" "$OUT/vgpud.log" 2>/dev/null; true; }
PTX=
ptx_build() { # compile tests/gpu/ptx/kernels.cu once into $RUN/kernels.ptx; 1 when there is no nvcc
    [ -n "$PTX" ] && return 0
    local nvcc=/usr/local/cuda/bin/nvcc
    [ -x "$nvcc" ] || nvcc=$(command -v nvcc || true)
    if [ -z "$nvcc" ]; then echo "nvcc not found (/usr/local/cuda/bin/nvcc, PATH): skipping guest PTX"; return 1; fi
    "$nvcc" -ptx -arch=sm_90 -o "$RUN/kernels.ptx" "$HERE/ptx/kernels.cu" || { echo "nvcc failed: skipping guest PTX"; return 1; }
    PTX="$RUN/kernels.ptx"
}
workers() { pgrep -P "$PID" -f vgpud-cuda-worker | sort; } # the running vgpud's workers, one per vGPU
ms() { date +%s%3N; }
trap keep_log EXIT

start best_effort
echo; echo "## Types derived from the GPU"; "$BIN/vgpuctl" --run-dir "$RUN/run" types
T1=$("$BIN/vgpuctl" --run-dir "$RUN/run" types --json | python3 -c 'import json,sys; t=json.load(sys.stdin); print(" ".join(x["id"] for x in t))')
set -- $T1; WHOLE=$1; HALF=${2:-$1}; QUARTER=${3:-$HALF}; EIGHTH=${4:-$QUARTER}
S=$(create "$EIGHTH")
PARTS=${PARTS:-selftest ptx copy lone sandbox together share isolation latency emulated multi native guest-cuda}
has() { case " $PARTS " in *" $1 "*) return 0;; esac; return 1; }
if has selftest; then
echo; echo "## Selftest on a $EIGHTH vGPU of the CUDA engine"
timeout 300 "$BIN/vgpu-guest" --socket "$S" selftest 2>&1 | tail -40
echo; echo "## The worker's confinement (/proc/<pid>/status of each thread: distinct lines, with counts)"
for w in $(workers); do
    echo "worker $w: root $(readlink /proc/$w/root), $(ls /proc/$w/task | wc -l) threads"
    cat /proc/$w/task/*/status | grep -E '^(Uid|Gid|Groups|NoNewPrivs|Seccomp|Seccomp_filters|CapInh|CapPrm|CapEff|CapBnd|CapAmb):' | sort | uniq -c
done
fi

if has ptx; then
echo; echo "## Guest PTX on a $EIGHTH vGPU (tests/gpu/ptx/kernels.cu: load with JIT log, vec_add on 2 MiB chunks of VRAM, a rejected module)"
if ptx_build; then timeout 300 "$BIN/vgpu-guest" --socket "$S" ptx --ptx "$PTX" 2>&1 | tail -20; fi
fi

if has copy; then
echo; echo "## Copy: guest RAM -> VRAM and back, one copy command each way (first round trip, then each direction alone, best of 5)"
for mib in ${COPY_MIB:-256 1024}; do
    timeout 120 "$BIN/vgpu-guest" --ram-mib $((mib * 5 / 2)) --socket "$S" run copy --size $((mib << 20)) 2>&1 | tail -3
done
fi

# The daemon's CPU time so far (user + system, clock ticks), from /proc.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$PID/stat" 2>/dev/null || echo 0; }
TCK=$(getconf CLK_TCK)
if has lone; then
echo; echo "## Lone vGPU ($EIGHTH, best_effort), spin kernels on every SM"
echo "| kernel µs | 1 channel | 4 channels | p50 µs (1 ch) | vgpud CPU, cores (1 ch) |"; echo "|---|---|---|---|---|"
for u in ${LONE_UNITS:-10 100 1000}; do
    c0=$(cpu_ticks); t0=$(ms); a=$(load "$S" "$u" 1); c1=$(cpu_ticks); t1=$(ms); b=$(load "$S" "$u" 4)
    printf '| %s | %.3f | %.3f | %s | %.2f |\n' "$u" "$(echo "$a" | field utilization)" "$(echo "$b" | field utilization)" "$(echo "$a" | field latency_p50_us)" \
        "$(awk -v c=$((c1 - c0)) -v t=$((t1 - t0)) -v k="$TCK" 'BEGIN{print (t > 0 ? c / k / (t / 1000) : 0)}')"
done
fi
stop

if has sandbox; then
echo; echo "## The sandbox's cost: a lone $EIGHTH vGPU (best_effort, 1 channel) with its worker confined and not"
echo "| worker | create ms | 10 µs kernels | 100 µs kernels | selftest s |"; echo "|---|---|---|---|---|"
for mode in on off; do
    SANDBOX_CFG=$(sandbox_cfg "$mode")
    start best_effort; t0=$(ms); S1=$(create "$EIGHTH"); t1=$(ms)
    a=$(load "$S1" 10 1 | field utilization); b=$(load "$S1" 100 1 | field utilization)
    t2=$(ms); timeout 300 "$BIN/vgpu-guest" --socket "$S1" selftest >/dev/null 2>&1; st=$?; t3=$(ms); stop
    printf '| %s | %s | %.3f | %.3f | %.1f (%s) |\n' "$mode" $((t1 - t0)) "$a" "$b" "$(awk -v d=$((t3 - t2)) 'BEGIN{print d / 1000}')" "$([ $st = 0 ] && echo pass || echo FAIL)"
done
SANDBOX_CFG=$(sandbox_cfg "${SANDBOX:-on}")
fi

if has together; then
echo; echo "## Two busy vGPUs together (equal_share, two $EIGHTH, 1 channel each) against one alone (best_effort)"
echo "| kernel µs | alone | A | B | together | together / alone |"; echo "|---|---|---|---|---|---|"
for u in ${TOGETHER_UNITS:-50 500 5000}; do
    n0=$(log_lines)
    start best_effort; S1=$(create "$EIGHTH"); al=$(load "$S1" "$u" 1 | field utilization); stop
    timeline "alone $u" "$n0"; n0=$(log_lines)
    start "${TOGETHER_POLICY:-equal_share}"; A=$(create "$EIGHTH"); B=$(create "$EIGHTH")
    load "$A" "$u" 1 >"$RUN/a" & pa=$!; load "$B" "$u" 1 >"$RUN/b" & pb=$!
    wait $pa; wait $pb; stop; timeline "together $u" "$n0"
    sa=$(field utilization <"$RUN/a"); sb=$(field utilization <"$RUN/b")
    printf '| %s | %.3f | %.3f | %.3f | %.3f | %.3f |\n' "$u" "$al" "$sa" "$sb" \
        "$(awk -v a="$sa" -v b="$sb" 'BEGIN{print a + b}')" "$(awk -v a="$sa" -v b="$sb" -v l="$al" 'BEGIN{print (l > 0 ? (a + b) / l : 0)}')"
done
timelines
fi

if has share; then
echo; echo "## fixed_share 2:1 ($QUARTER beside $EIGHTH)"
echo "| kernel µs | $QUARTER | $EIGHTH | ratio |"; echo "|---|---|---|---|"
for u in ${SHARE_UNITS:-10 50 500 5000}; do
    n0=$(log_lines)
    start fixed_share; A=$(create "$QUARTER"); B=$(create "$EIGHTH")
    load "$A" "$u" 1 >"$RUN/a" & pa=$!; load "$B" "$u" 1 >"$RUN/b" & pb=$!
    if [ "$u" = 500 ] && [ -n "${OUT:-}" ]; then # the chart of this run's shares over time
        "$BIN/vgpuctl" --run-dir "$RUN/run" record --seconds "$SECS" --interval 100 \
            --png "$OUT/gpu-fixed-share-2to1.png" --csv "$OUT/gpu-fixed-share-2to1.csv" \
            --title "CUDA engine on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1): fixed_share 2:1, 500 us kernels" >/dev/null &
        pr=$!
    fi
    wait $pa; wait $pb; [ -n "${pr:-}" ] && wait "$pr"; pr=; stop; timeline "fixed_share 2:1 $u" "$n0"
    sa=$(field utilization <"$RUN/a"); sb=$(field utilization <"$RUN/b")
    printf '| %s | %.3f | %.3f | %.3f |\n' "$u" "$sa" "$sb" "$(awk -v a="$sa" -v b="$sb" 'BEGIN{print (b > 0 ? a / b : 0)}')"
done
timelines
fi

if has isolation; then
echo; echo "## Isolation: vGPU A's faulting kernels, runaway kernel and killed worker beside B's checked saxpy (equal_share, two $EIGHTH)"
if ptx_build; then
start equal_share
A=$(create "$EIGHTH"); sleep 0.5; W0=$(workers)
B=$(create "$EIGHTH"); sleep 0.5; W1=$(workers)
WB=$(comm -13 <(echo "$W0") <(echo "$W1") | head -1)
echo "B's worker: ${WB:-not found} (workers before B: $(echo $W0), after: $(echo $W1))"
G="$BIN/vgpu-guest"
timeout $(( ${ISO_SECS:-45} + 60 )) "$G" --socket "$B" load saxpy --seconds "${ISO_SECS:-45}" --json >"$RUN/iso-b.json" 2>"$RUN/iso-b.err" & pb=$!
T_B0=$(ms); sleep 2
T_ILL0=$(ms); timeout 120 "$G" --socket "$A" ptx-fault --ptx "$PTX" --kind illegal --json >"$RUN/iso-illegal.json" 2>&1; T_ILL1=$(ms)
T_RUN0=$(ms); timeout 180 "$G" --socket "$A" ptx-fault --ptx "$PTX" --kind runaway --json >"$RUN/iso-runaway.json" 2>&1; T_RUN1=$(ms)
# The runaway's worker was stopped; A's next one comes once the host's restart back-off allows
# (a client's reset asks for it): wait for it, then kill it.
for _ in $(seq 40); do
    WA=$(workers | grep -vx "${WB:-none}" | head -1); [ -n "$WA" ] && break
    timeout 20 "$G" --socket "$A" run fill --size 1024 >/dev/null 2>&1; sleep 1
done
[ -n "$WB" ] && ! kill -0 "$WB" 2>/dev/null && echo "NOTE: B's worker $WB is gone: B's worker was restarted"
T_KILL=$(ms)
if [ -n "$WA" ]; then echo "killing A's worker $WA (kill -9)"; kill -9 "$WA"; else echo "no worker of A running to kill"; fi
sleep 0.5
# A new client resets A; its new worker may be held back by the back-off: try until it passes.
T_SELF0=$(ms)
for _ in $(seq 12); do
    timeout 300 "$G" --socket "$A" selftest >"$RUN/iso-selftest.txt" 2>&1 && break; sleep 2
done
T_SELF1=$(ms)
T_REP0=$(ms); timeout 120 "$G" --socket "$A" ptx-fault --ptx "$PTX" --kind repeat --seconds 10 --json >"$RUN/iso-repeat.json" 2>&1; T_REP1=$(ms)
wait $pb; T_B1=$(ms)
[ -n "$WB" ] && ! kill -0 "$WB" 2>/dev/null && echo "NOTE: B's worker $WB is gone after the run"
echo "A's selftest after its worker was killed (a new client):"; tail -3 "$RUN/iso-selftest.txt"
for k in illegal runaway repeat; do echo "A ptx-fault $k: $(tail -c 600 "$RUN/iso-$k.json")"; done
[ -s "$RUN/iso-b.err" ] && { echo "B stderr:"; tail -5 "$RUN/iso-b.err"; }
[ -n "${OUT:-}" ] && cp "$RUN"/iso-* "$OUT/" 2>/dev/null
RUN="$RUN" T_B0=$T_B0 T_ILL0=$T_ILL0 T_ILL1=$T_ILL1 T_RUN0=$T_RUN0 T_RUN1=$T_RUN1 T_KILL=$T_KILL \
T_SELF0=$T_SELF0 T_SELF1=$T_SELF1 T_REP0=$T_REP0 T_REP1=$T_REP1 T_B1=$T_B1 python3 - <<'PY'
import json, os
env = {k: int(v) for k, v in os.environ.items() if k.startswith("T_") and v.isdigit()}
run = os.environ["RUN"]
def load(name):
    try:
        with open(os.path.join(run, name)) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except Exception as e:
        return {"_error": str(e)}
b, ill, runaway, rep = (load("iso-b.json"), load("iso-illegal.json"),
                        load("iso-runaway.json"), load("iso-repeat.json"))
if "timeline" not in b:
    print("B's report is missing:", b.get("_error")); raise SystemExit(0)
t0, w, tl = b["start_unix_ms"], b.get("bucket_ms", 100), b["timeline"]
end = t0 + w * len(tl)
def window(a, z):
    """B's completions/s over whole buckets inside [a, z) (wall ms), the longest run of empty
    buckets there (ms), and whether B's run covered the window."""
    i0, i1 = max(0, -(-(a - t0) // w)), min(len(tl), (z - t0) // w)
    if i1 <= i0:
        return None, None, False
    s = tl[i0:i1]
    run = best = 0
    for c in s:
        run = run + 1 if c == 0 else 0
        best = max(best, run)
    return sum(s) / ((i1 - i0) * w / 1000), best * w, a >= t0 and z <= end
rep0 = rep.get("start_unix_ms", env.get("T_REP0", 0)); rep1 = rep.get("end_unix_ms", env.get("T_REP1", 0))
phases = [
    ("B alone (baseline)", t0 + 500, env["T_ILL0"]),
    ("A: illegal address", env["T_ILL0"], env["T_ILL1"]),
    ("A: runaway kernel", env["T_RUN0"], env["T_RUN1"]),
    ("A: worker killed, selftest", env["T_KILL"], env["T_SELF1"]),
    ("A: repeated faults (10 s)", rep0, rep1),
]
base = window(*phases[0][1:])[0]
print()
print("| phase | from s | to s | B items/s | vs alone | longest B stall (100 ms buckets) |")
print("|---|---|---|---|---|---|")
for name, a, z in phases:
    rate, stall, covered = window(a, z)
    ratio = f"{rate / base:.3f}" if rate is not None and base else "n/a"
    note = "" if covered else " (B not running throughout)"
    print(f"| {name}{note} | {(a - t0) / 1000:.1f} | {(z - t0) / 1000:.1f} | "
          f"{rate if rate is None else round(rate, 1)} | {ratio} | {stall} ms |")
# The single illegal fault: the longest stall from its start to 2 s after A saw it.
_, ill_stall, _ = window(env["T_ILL0"], env["T_ILL1"] + 2000)
rep_rate = window(rep0, rep1)[0]
print()
print("| B (checked saxpy, n = %s) | value |" % b.get("n")); print("|---|---|")
print(f"| items / wrong / errors | {b['items']} / {b['wrong']} / {b['errors']} {b.get('error_codes', {})} |")
print(f"| rate alone | {base and round(base, 1)} items/s |")
print(f"| rate during A's repeated faults | {rep_rate and round(rep_rate, 1)} items/s |")
print(f"| ratio (repeat / alone) | {f'{rep_rate / base:.3f}' if rep_rate and base else 'n/a'} |")
print(f"| longest stall around A's single illegal fault | {ill_stall} ms (timeline) |")
print(f"| longest gap between completions, whole run | {b['max_gap_us'] / 1000:.1f} ms (p50 {b['p50_gap_us']:.0f} us) |")
print(f"| wrong results (must be 0) | {'PASS' if b['wrong'] == 0 else 'FAIL'}: {b['wrong']} |")
print()
print("| A | outcome |"); print("|---|---|")
for name, r in (("illegal", ill), ("runaway", runaway)):
    print(f"| {name} | {'PASS' if r.get('passed') else 'FAIL'}: {r.get('code')} after {r.get('elapsed_ms') and round(r['elapsed_ms'], 1)} ms "
          f"(fresh context after {r.get('context_attempts')} reset(s), {r.get('context_wait_ms') and round(r['context_wait_ms'])} ms) {r.get('_error', '')} |")
print(f"| repeat | {'PASS' if rep.get('passed') else 'FAIL'}: {rep.get('iterations')} iterations: "
      f"{rep.get('kernel_fault')} KERNEL_FAULT, {rep.get('engine_error')} ENGINE_ERROR, {rep.get('other')} other, "
      f"{rep.get('no_fault')} no fault, {rep.get('driver_errors')} driver errors {rep.get('_error', '')} |")
PY
stop
fi
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
echo "| kernel µs | emulated worker, 1 channel | vgpud CPU, cores |"; echo "|---|---|---|"
export VGPUD_CUDA_EMULATE=1
start best_effort; E=$(create emulated-1c)
for u in 10 100; do
    c0=$(cpu_ticks); t0=$(ms); a=$(load "$E" "$u" 1); c1=$(cpu_ticks); t1=$(ms)
    printf '| %s | %.3f | %.2f |\n' "$u" "$(echo "$a" | field utilization)" \
        "$(awk -v c=$((c1 - c0)) -v t=$((t1 - t0)) -v k="$TCK" 'BEGIN{print (t > 0 ? c / k / (t / 1000) : 0)}')"
done
# The host path's own latency: a 100 µs probe (2 ms apart) with no GPU in it.
e=$(timeout 60 "$BIN/vgpu-guest" --socket "$E" load spin --unit-us 100 --seconds 3 --probe-gap-ms 2 --json)
echo; echo "100 µs probe on the emulated worker: p50 $(echo "$e" | field latency_p50_us) µs, p99 $(echo "$e" | field latency_p99_us) µs"
stop; unset VGPUD_CUDA_EMULATE
fi

if has multi; then
echo; echo "## Two GPUs: a parent per GPU (device = \"all\")"
"$BIN/vgpud-cuda-worker" --gpus >"$RUN/gpus.json" || echo "vgpud-cuda-worker --gpus failed"
NGPU=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$RUN/gpus.json" 2>/dev/null || echo 0)
if [ "$NGPU" -lt 2 ]; then
    echo "SKIPPED: this part needs two GPUs and this machine shows $NGPU; run it on a two-GPU machine (e.g. the device kind nvidia-h100-x2 or nvidia-h200-x2)."
else
    set -- $(python3 -c 'import json,sys; print(" ".join(g["uuid"] for g in json.load(open(sys.argv[1]))[:2]))' "$RUN/gpus.json")
    U0=$1; U1=$2
    on() { "$BIN/vgpuctl" --run-dir "$RUN/run" create --type "$1" --parent "$2" | awk '{print $2}'; }
    parents() { "$BIN/vgpuctl" --run-dir "$RUN/run" types --json | python3 -c 'import json,sys; seen=[]; [seen.append(t["parent"]) for t in json.load(sys.stdin) if t["parent"] not in seen]; print(" ".join(seen))'; }
    split() { "$BIN/vgpuctl" --run-dir "$RUN/run" list --json | python3 -c 'import json,sys; l=json.load(sys.stdin); print(" ".join(str(sum(1 for v in l if v["parent"] == p)) for p in sys.argv[1:]))' "$P0" "$P1"; }
    start_all best_effort
    set -- $(parents); P0=$1; P1=$2
    echo "parents: $P0 ($U0), $P1 ($U1)"
    "$BIN/vgpuctl" --run-dir "$RUN/run" types
    set -- $("$BIN/vgpuctl" --run-dir "$RUN/run" types --parent "$P0" --json | python3 -c 'import json,sys; print(" ".join(x["id"] for x in json.load(sys.stdin)))')
    M_HALF=${2:-$1}; M_QUARTER=${3:-$M_HALF}; M_EIGHTH=${4:-$M_QUARTER}
    stop

    echo; echo "### Selftest on a $M_EIGHTH vGPU of each GPU"
    echo "| GPU | parent | selftest |"; echo "|---|---|---|"
    start_all best_effort
    for i in 0 1; do
        P=$([ $i = 0 ] && echo "$P0" || echo "$P1"); S=$(on "$M_EIGHTH" "$P")
        timeout 300 "$BIN/vgpu-guest" --socket "$S" selftest >"$RUN/multi-selftest-$i.txt" 2>&1 && r=pass || r=FAIL
        echo "| $i | $P | $r: $(grep -E '^[0-9]+ checks, [0-9]+ failed' "$RUN/multi-selftest-$i.txt" | tail -1) |"
    done
    stop

    echo; echo "### Lone throughput per GPU ($M_EIGHTH, best_effort, 1 channel) against native CUDA on that GPU"
    echo "| GPU | kernel µs | vgpud utilization | native µs per kernel | vs native |"; echo "|---|---|---|---|---|"
    for i in 0 1; do
        P=$([ $i = 0 ] && echo "$P0" || echo "$P1"); U=$([ $i = 0 ] && echo "$U0" || echo "$U1")
        start_all best_effort; S=$(on "$M_EIGHTH" "$P")
        for u in 10 100 1000; do echo "$u $(load "$S" "$u" 1 | field utilization)"; done >"$RUN/multi-lone-$i"
        stop
        CUDA_VISIBLE_DEVICES=$U timeout 300 python3 "$HERE/native_sharing.py" --lone-only >"$RUN/multi-native-$i" 2>&1
        while read -r u util; do
            nat=$(python3 -c 'import json,sys
for l in open(sys.argv[1]):
    try: d = json.loads(l)
    except ValueError: continue
    if d.get("test") == "lone_rate" and d["kernel_us_target"] == int(sys.argv[2]): print(d["us_per_kernel"])' "$RUN/multi-native-$i" "$u")
            printf '| %s | %s | %.3f | %s | %s |\n' "$i" "$u" "$util" "${nat:-n/a}" \
                "$(awk -v x="$util" -v n="${nat:-0}" -v u="$u" 'BEGIN{print (n > 0 ? sprintf("%.3f", x * n / u) : "n/a")}')"
        done <"$RUN/multi-lone-$i"
    done

    echo; echo "### Shares held on each GPU while both are busy (500 µs kernels, 1 channel each)"
    echo "| policy | GPU | vGPU A | vGPU B | A / B | target |"; echo "|---|---|---|---|---|---|"
    for pol in equal_share fixed_share; do
        start_all "$pol"
        if [ "$pol" = equal_share ]; then TA=$M_EIGHTH; want="1.00 ± 0.04"; else TA=$M_QUARTER; want="2.00 ± 0.04"; fi
        A0=$(on "$TA" "$P0"); B0=$(on "$M_EIGHTH" "$P0"); A1=$(on "$TA" "$P1"); B1=$(on "$M_EIGHTH" "$P1")
        load "$A0" 500 1 >"$RUN/ma0" & p1=$!; load "$B0" 500 1 >"$RUN/mb0" & p2=$!
        load "$A1" 500 1 >"$RUN/ma1" & p3=$!; load "$B1" 500 1 >"$RUN/mb1" & p4=$!
        wait $p1 $p2 $p3 $p4; stop
        for i in 0 1; do
            sa=$(field utilization <"$RUN/ma$i"); sb=$(field utilization <"$RUN/mb$i")
            printf '| %s (%s beside %s) | %s | %.3f | %.3f | %.3f | %s |\n' "$pol" "$TA" "$M_EIGHTH" "$i" "$sa" "$sb" \
                "$(awk -v a="$sa" -v b="$sb" 'BEGIN{print (b > 0 ? a / b : 0)}')" "$want"
        done
    done

    echo; echo "### A fault storm on GPU 0's vGPU beside checked saxpy on GPU 1 (${STORM_SECS:-20} s after 10 s alone)"
    if ptx_build; then
        start_all best_effort
        A=$(on "$M_EIGHTH" "$P0"); sleep 0.5; WA0=$(workers)
        B=$(on "$M_EIGHTH" "$P1"); sleep 0.5; WB=$(comm -13 <(echo "$WA0") <(workers) | head -1)
        G="$BIN/vgpu-guest"; STORM=${STORM_SECS:-20}
        timeout $((STORM + 100)) "$G" --socket "$B" load saxpy --seconds $((STORM + 30)) --json >"$RUN/storm-b.json" 2>"$RUN/storm-b.err" & pb=$!
        sleep 10; T_S0=$(ms)
        # Faults in a loop (reset, load, fault), a kill -9 of A's worker halfway, and faults again.
        timeout $((STORM + 60)) "$G" --socket "$A" ptx-fault --ptx "$PTX" --kind repeat --seconds $((STORM / 2)) --json >"$RUN/storm-a1.json" 2>&1
        WA=$(workers | grep -vx "${WB:-none}" | head -1); [ -n "$WA" ] && kill -9 "$WA"
        timeout $((STORM + 60)) "$G" --socket "$A" ptx-fault --ptx "$PTX" --kind repeat --seconds $((STORM / 2)) --json >"$RUN/storm-a2.json" 2>&1
        T_S1=$(ms); wait $pb
        [ -n "$WB" ] && ! kill -0 "$WB" 2>/dev/null && echo "NOTE: GPU 1's worker $WB is gone: it was restarted"
        stop
        [ -n "${OUT:-}" ] && cp "$RUN"/storm-* "$OUT/" 2>/dev/null
        RUN="$RUN" T_S0=$T_S0 T_S1=$T_S1 python3 - <<'PY'
import json, os
run, s0, s1 = os.environ["RUN"], int(os.environ["T_S0"]), int(os.environ["T_S1"])
def load(name):
    try:
        with open(os.path.join(run, name)) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except Exception as e:
        return {"_error": str(e)}
b, a1, a2 = load("storm-b.json"), load("storm-a1.json"), load("storm-a2.json")
if "timeline" not in b:
    print("GPU 1's report is missing:", b.get("_error")); raise SystemExit(0)
t0, w, tl = b["start_unix_ms"], b.get("bucket_ms", 100), b["timeline"]
def rate(a, z):
    i0, i1 = max(0, -(-(a - t0) // w)), min(len(tl), (z - t0) // w)
    return sum(tl[i0:i1]) / ((i1 - i0) * w / 1000) if i1 > i0 else None
alone, storm = rate(t0 + 1000, s0), rate(s0, min(s1, t0 + w * len(tl)))
if s1 > t0 + w * len(tl):
    print(f"NOTE: the storm outlasted GPU 1's run by {(s1 - t0 - w * len(tl)) / 1000:.1f} s; its rate is over their overlap")
ratio = storm / alone if alone and storm else None
faults = sum(r.get("kernel_fault", 0) + r.get("engine_error", 0) for r in (a1, a2))
print("| GPU 1 (checked saxpy) | value |"); print("|---|---|")
print(f"| items / wrong / errors | {b['items']} / {b['wrong']} / {b['errors']} |")
print(f"| rate alone, rate during the storm | {alone and round(alone, 1)} / {storm and round(storm, 1)} items/s |")
print(f"| during / alone (target 1.00 within 2 %) | {'%.3f' % ratio if ratio else 'n/a'}: {'PASS' if ratio and abs(ratio - 1) <= 0.02 else 'FAIL'} |")
print(f"| wrong results (must be 0) | {'PASS' if b['wrong'] == 0 else 'FAIL'}: {b['wrong']} |")
print(f"| GPU 0's storm | {a1.get('iterations', 0) + a2.get('iterations', 0)} tries, {faults} faults seen, worker killed once {a1.get('_error', '')} {a2.get('_error', '')} |")
PY
    fi

    echo; echo "### Placement: 2 x the per-GPU maximum of $M_EIGHTH, then one more"
    echo "| rule | after the per-GPU max | after 2 x max | one more |"; echo "|---|---|---|---|"
    for rule in spread pack; do
        half=
        start_all best_effort "[catalog]
placement = \"$rule\""
        MAX=$("$BIN/vgpuctl" --run-dir "$RUN/run" types --parent "$P0" --json | python3 -c 'import json,sys; print([t["max_instances"] for t in json.load(sys.stdin) if t["id"] == sys.argv[1]][0])' "$M_EIGHTH")
        made=0
        for _ in $(seq $((2 * MAX))); do
            "$BIN/vgpuctl" --run-dir "$RUN/run" create --type "$M_EIGHTH" >/dev/null 2>>"$RUN/placement.err" && made=$((made + 1))
            [ "$made" = "$MAX" ] && half=$(split)
        done
        full=$(split)
        extra=$("$BIN/vgpuctl" --run-dir "$RUN/run" create --type "$M_EIGHTH" 2>&1 >/dev/null | grep -Eo 'E[A-Z]+' | head -1)
        stop
        echo "| $rule | ${half:-?} (of $MAX per GPU) | $made created: $full | refused: ${extra:-created!} (want EUSERS) |"
    done
fi
fi

if has native; then
echo; echo "## Native baselines (same run)"
timeout 300 python3 "$HERE/native_sharing.py" 2>&1 | tail -20
fi
if has guest-cuda; then
echo
if [ -f "$BIN/libvgpu_cuda.so" ]; then
    stop 2>/dev/null
    OUT=${OUT:-$RUN} bash "$HERE/guest_cuda.sh" "$BIN" "$BIN" "$BIN/peers"
else
    echo "## CUDA in the guest: $BIN/libvgpu_cuda.so not carried: skipped"
fi
fi
echo; echo "## vgpud log (tail)"; tail -30 "$RUN/vgpud.log"
