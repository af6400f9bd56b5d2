#!/usr/bin/env bash
# tests/gpu/guest_cuda.sh — CUDA in the guest on the GPU machine: peer test suites, each run
# natively and through libcuda.so.1 (tools/guest-cuda) on vGPUs of the CUDA engine in the same
# run, side by side, module by module; the device identity each way; fault containment; speed
# (numba kernels of about 10 us, 100 us and 1 ms; module loads, first and cached). The workers
# are confined as vgpud confines them by default ([workers] sandbox). Prints Markdown and a
# summary table of its parts; keeps every log in $OUT (default: a temporary directory). Each
# part is bounded by `timeout`, and one that fails does not stop the others.
#
# usage: tests/gpu/guest_cuda.sh BIN_DIR LIB_DIR [PEERS_DIR]
#   BIN_DIR   vgpud, vgpuctl, vgpud-cuda-worker (release builds)
#   LIB_DIR   libvgpu_cuda.so of tools/guest-cuda (release); it is copied to a directory of its
#             own as libcuda.so.1 (with a libcuda.so link), which only guest programs see
#   PEERS_DIR peer sources, not in the repository: samples/ (NVIDIA cuda-samples' Common/*.h and
#             Samples/0_Introduction/{vectorAddDrv,matrixMulDrv,matrixMulDynlinkJIT}) and
#             cuda-python/<cuda-bindings version>/test_cuda.py (cuda_bindings/tests of the source
#             release matching the installed cuda-bindings, with its conftest.py; else any/), and
#             pylib/ (pure-Python test dependencies missing there: filecheck for numba-cuda)
# environment:
#   GC_PARTS     parts to run (default: identity numba cuda-python samples fault speed)
#   NUMBA_MODULES the numba-cuda test modules (default: the acceptance list of issue 21)
#   SHARDS       numba-cuda processes each way, run at once, one vGPU each (default 6)
#   SUITE_TIMEOUT seconds a numba-cuda shard may run (default 200; then SIGINT, pytest reports)
#   VGPU_FB      framebuffer of each vGPU (default 4GiB); WORKERS_GROUP the workers' group where
#                /dev/nvidia* is not world read-write (found by itself when unset)
set -uo pipefail
BIN=$(cd "$1" && pwd); LIBSRC=$(cd "$2" && pwd); PEERS=${3:-}
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$(mktemp -d /tmp/vgpud-guest-cuda.XXXXXX)}; mkdir -p "$OUT"
RUN=$(mktemp -d /tmp/vgpud-gc.XXXXXX)
T=${SUITE_TIMEOUT:-200}
SHARDS=${SHARDS:-6}
GC=$HERE/guest-cuda
LIB=$RUN/lib; mkdir -p "$LIB"
cp "$LIBSRC/libvgpu_cuda.so" "$LIB/libcuda.so.1" && ln -sf libcuda.so.1 "$LIB/libcuda.so"
export PYTHONDONTWRITEBYTECODE=1
# NumPy aliases numba-cuda still needs (guest-cuda/numpy-compat), for native and guest runs alike.
export PYTHONPATH=$GC/numpy-compat${PYTHONPATH:+:$PYTHONPATH}
# Pure-Python test dependencies the GPU machine lacks (PEERS_DIR/pylib: filecheck, which
# numba.cuda.testing imports), likewise for both.
[ -n "$PEERS" ] && [ -d "$PEERS/pylib" ] && export PYTHONPATH=$PEERS/pylib:$PYTHONPATH
PARTS_WANTED=${GC_PARTS:-identity numba cuda-python samples fault speed}
has() { case " $PARTS_WANTED " in *" $1 "*) return 0;; esac; return 1; }
SUMMARY=$RUN/summary.tsv; : >"$SUMMARY"
note() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$SUMMARY"; } # part, verdict, detail
now() { date +%s; }

# The workers' group where the device nodes are not world read-write.
GROUP=${WORKERS_GROUP:-}
if [ -z "$GROUP" ] && [ -e /dev/nvidiactl ] && [ "$(stat -c %a /dev/nvidiactl | cut -c3)" != 6 ]; then
    GROUP=$(stat -c %g /dev/nvidiactl)
fi
N_VGPUS=$((SHARDS + 4))
cat >"$RUN/vgpud.toml" <<CFG
[workers]
sandbox = true
${GROUP:+group = $GROUP}

[parent."gpu0"]
policy = "best_effort"

[catalog.type."gc-small"]
name = "GC-SMALL"
framebuffer = "${VGPU_FB:-4GiB}"
max_instances = $N_VGPUS
device_id = 0x10F0

[catalog.parent."gpu0"]
engine = "cuda"
device = 0
framebuffer = "$((N_VGPUS * 8))GiB"
max_vgpus = $N_VGPUS
types = ["gc-small"]
CFG
VGPUD_LOG=${VGPUD_LOG:-info} "$BIN/vgpud" --config "$RUN/vgpud.toml" --run-dir "$RUN/run" >"$OUT/vgpud.log" 2>&1 &
PID=$!
finish() {
    kill -TERM "$PID" 2>/dev/null; wait "$PID" 2>/dev/null
    cp "$RUN/vgpud.toml" "$OUT/" 2>/dev/null
    echo; echo "## Summary (guest CUDA)"
    echo "| part | verdict | detail |"; echo "|---|---|---|"
    awk -F'\t' '{printf "| %s | %s | %s |\n", $1, $2, $3}' "$SUMMARY"
    echo; echo "logs: $OUT"
}
trap finish EXIT
trap 'exit 143' TERM INT
for _ in $(seq 300); do [ -S "$RUN/run/control.sock" ] && break; sleep 0.1; done
if ! [ -S "$RUN/run/control.sock" ]; then
    echo "vgpud did not start:"; tail -20 "$OUT/vgpud.log"; note vgpud FAIL "did not start"; exit 1
fi
# The vGPUs, created at once (each starts its worker: context, framebuffer, kernels).
CREATES=()
for i in $(seq "$N_VGPUS"); do
    (timeout 60 "$BIN/vgpuctl" --run-dir "$RUN/run" create --type gc-small | awk '{print $2}' >"$RUN/vgpu.$i") &
    CREATES+=($!)
done
wait "${CREATES[@]}" # not a bare wait: vgpud is a child too
SOCK=(); for i in $(seq "$N_VGPUS"); do s=$(cat "$RUN/vgpu.$i" 2>/dev/null); [ -S "$s" ] && SOCK+=("$s"); done
echo "## CUDA in the guest: libcuda.so.1 on ${#SOCK[@]} vGPUs of the CUDA engine (gc-small, ${VGPU_FB:-4GiB}), beside the native driver"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
python3 -c 'import numba_cuda, cuda.bindings; print("numba-cuda", numba_cuda.__version__, "cuda-bindings", cuda.bindings.__version__)' 2>&1 | tail -1
if [ "${#SOCK[@]}" -lt 3 ]; then
    echo "only ${#SOCK[@]} vGPUs: see $OUT/vgpud.log"; tail -20 "$OUT/vgpud.log"; note vgpus FAIL "${#SOCK[@]} of $N_VGPUS created"; exit 1
fi
note vgpus ok "${#SOCK[@]} of $N_VGPUS created"
# The workers' confinement, as the kernel shows it.
W=$(pgrep -P "$PID" -f vgpud-cuda-worker | head -1)
if [ -n "$W" ]; then
    CONF="uid $(awk '/^Uid:/{print $2}' /proc/$W/status), root $(readlink /proc/$W/root), seccomp $(awk '/^Seccomp:/{print $2}' /proc/$W/status), no_new_privs $(awk '/^NoNewPrivs:/{print $2}' /proc/$W/status)"
    echo "worker $W: $CONF"; note sandbox "$( [ "$(awk '/^Seccomp:/{print $2}' /proc/$W/status)" = 2 ] && echo ok || echo FAIL)" "$CONF"
fi
native() { "$@"; }
on_vgpu() { local s=$1; shift; env LD_LIBRARY_PATH="$LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" VGPU_SOCKET="$s" "$@"; }
# vGPUs: 0 .. SHARDS-1 numba shards; then cuda-python, samples, the fault and its neighbour.
V_PY=${SOCK[$SHARDS]:-${SOCK[0]}}; V_SAMPLES=${SOCK[$((SHARDS + 1))]:-${SOCK[1]}}
V_FAULT=${SOCK[$((SHARDS + 2))]:-${SOCK[0]}}; V_NEIGHBOUR=${SOCK[$((SHARDS + 3))]:-${SOCK[1]}}

if has identity; then
echo; echo "## The device each way: name, CUDA version, compute capability, every cuDeviceGetAttribute"
t0=$(now)
native timeout 60 python3 "$GC/identity.py" >"$OUT/identity-native.json" 2>"$OUT/identity-native.err"
on_vgpu "$V_PY" timeout 60 python3 "$GC/identity.py" >"$OUT/identity-guest.json" 2>"$OUT/identity-guest.err"
if line=$(timeout 30 python3 "$GC/identity.py" compare "$OUT/identity-native.json" "$OUT/identity-guest.json"); then
    echo "$line"; note identity ok "$line ($(( $(now) - t0 )) s)"
else
    echo "$line"; tail -3 "$OUT/identity-guest.err"; note identity FAIL "$line"
fi
fi

# Concurrent parts (each on vGPUs of its own): cuda-python and the samples run beside the numba
# shards; their output goes to files, printed once the numba part is done.
cuda_python_part() {
    echo "## cuda-python: a cuda.bindings.driver program (NVRTC -> PTX -> cuModuleLoadData -> cuLaunchKernel, checked; module loads timed)"
    local ok=0
    for mode in native guest; do
        if [ $mode = native ]; then r=$(timeout 120 python3 "$GC/cuda_python_ptx.py" 2>&1 | tail -1)
        else r=$(on_vgpu "$V_PY" timeout 120 python3 "$GC/cuda_python_ptx.py" 2>&1 | tail -1); fi
        echo "$mode: $r"; case "$r" in *PASS*) ok=$((ok + 1));; esac
    done
    note cuda-python-ptx "$([ $ok = 2 ] && echo ok || echo FAIL)" "$ok of 2 passed"
    V=$(python3 -c 'import cuda.bindings; print(cuda.bindings.__version__)' 2>/dev/null)
    TD=${PEERS:+$PEERS/cuda-python/$V}
    # A folder named after the installed version, else the one carried as any/ (see its SOURCE).
    [ -n "$PEERS" ] && ! [ -f "$TD/test_cuda.py" ] && TD=$PEERS/cuda-python/any
    if [ -n "$TD" ] && [ -f "$TD/test_cuda.py" ]; then
        echo; echo "## cuda-python $V: cuda_bindings/tests/test_cuda.py"
        for mode in native guest; do
            if [ $mode = native ]; then (cd "$TD" && PYTHONPATH="$TD${PYTHONPATH:+:$PYTHONPATH}" timeout -s INT -k 20 "$T" python3 -m pytest -v -p no:cacheprovider -o addopts= test_cuda.py >"$OUT/cuda-python-$mode.log" 2>&1)
            else (cd "$TD" && PYTHONPATH="$TD${PYTHONPATH:+:$PYTHONPATH}" on_vgpu "$V_PY" timeout -s INT -k 20 "$T" python3 -m pytest -v -p no:cacheprovider -o addopts= test_cuda.py >"$OUT/cuda-python-$mode.log" 2>&1); fi
            echo "$mode: $(tail -1 "$OUT/cuda-python-$mode.log")"
        done
        python3 "$GC/summarize.py" "$OUT/cuda-python-native.log" -- "$OUT/cuda-python-guest.log"
        note cuda-python-tests ran "see the table"
    else
        echo "cuda_bindings/tests/test_cuda.py of cuda-bindings $V not carried (PEERS_DIR/cuda-python/$V/): skipped"
        note cuda-python-tests skipped "test_cuda.py of cuda-bindings $V not carried"
    fi
}

samples_part() {
    echo "## NVIDIA cuda-samples, built here with nvcc, unmodified"
    local nvcc=/usr/local/cuda/bin/nvcc; [ -x "$nvcc" ] || nvcc=$(command -v nvcc)
    local sm; sm=$(python3 -c 'from cuda.bindings import driver as d; d.cuInit(0); print("%d%d" % (d.cuDeviceGetAttribute(d.CUdevice_attribute(75),0)[1], d.cuDeviceGetAttribute(d.CUdevice_attribute(76),0)[1]))' 2>/dev/null || echo 90)
    local sd=$RUN/samples; mkdir -p "$sd"
    if [ -z "$PEERS" ] || ! [ -d "$PEERS/samples" ] || [ -z "$nvcc" ]; then
        echo "cuda-samples sources not carried (PEERS_DIR/samples) or no nvcc: skipped"; note samples skipped "no sources or nvcc"; return
    fi
    cp -r "$PEERS/samples/." "$sd/"
    local I=(-I "$sd/Common") S=$sd/Samples/0_Introduction
    (cd "$S/vectorAddDrv" && timeout 120 "$nvcc" -fatbin -gencode "arch=compute_$sm,code=sm_$sm" -o vectorAdd_kernel64.fatbin vectorAdd_kernel.cu \
        && timeout 120 "$nvcc" "${I[@]}" -o vectorAddDrv vectorAddDrv.cpp -lcuda) >"$OUT/build-vectorAddDrv.log" 2>&1 &
    (cd "$S/matrixMulDrv" && timeout 120 "$nvcc" "${I[@]}" -fatbin -gencode "arch=compute_$sm,code=sm_$sm" -o matrixMul_kernel64.fatbin matrixMul_kernel.cu \
        && timeout 120 "$nvcc" "${I[@]}" -o matrixMulDrv matrixMulDrv.cpp -lcuda) >"$OUT/build-matrixMulDrv.log" 2>&1 &
    (cd "$S/matrixMulDynlinkJIT" && timeout 120 "$nvcc" "${I[@]}" -o matrixMulDynlinkJIT matrixMulDynlinkJIT.cpp matrixMul_gold.cpp \
        cuda_drvapi_dynlink.c matrixMul_kernel_64_ptxdump.c -ldl) >"$OUT/build-matrixMulDynlinkJIT.log" 2>&1 &
    wait
    echo "| sample | native | libcuda.so.1 on a vGPU |"; echo "|---|---|---|"
    local pass=0 total=0
    for s in vectorAddDrv matrixMulDrv matrixMulDynlinkJIT; do
        row="| $s |"
        for mode in native guest; do
            if [ -x "$S/$s/$s" ]; then
                if [ $mode = native ]; then (cd "$S/$s" && timeout 60 "./$s" >"$OUT/$s-$mode.log" 2>&1); rc=$?
                else (cd "$S/$s" && on_vgpu "$V_SAMPLES" timeout 60 "./$s" >"$OUT/$s-$mode.log" 2>&1); rc=$?; fi
                row="$row exit $rc: $(grep -a -m1 -E 'PASS|FAIL|Result|error|Error' "$OUT/$s-$mode.log" | tr -d '\r|' | cut -c1-60) |"
                [ $mode = guest ] && { total=$((total + 1)); [ $rc = 0 ] && pass=$((pass + 1)); }
            else row="$row not built (build-$s.log) |"; fi
        done
        echo "$row"
    done
    note samples "$([ $total = 3 ] && [ $pass = 3 ] && echo ok || echo FAIL)" "$pass of 3 exit 0 through the library ($total built)"
}

if has cuda-python; then cuda_python_part >"$RUN/cuda-python.md" 2>&1 & CP=$!; fi
if has samples; then samples_part >"$RUN/samples.md" 2>&1 & SP=$!; fi

if has numba; then
MODS=${NUMBA_MODULES:-"cudadrv.test_cuda_driver cudadrv.test_cuda_memory cudadrv.test_events cudadrv.test_streams cudadrv.test_context_stack cudadrv.test_deallocations cudadrv.test_cuda_ndarray cudadrv.test_array_attr cudadrv.test_inline_ptx cudadrv.test_detect cudapy.test_array cudapy.test_array_args cudapy.test_atomics cudapy.test_intrinsics cudapy.test_math cudapy.test_matmul cudapy.test_reduction cudapy.test_sync cudapy.test_warp_ops cudapy.test_localmem cudapy.test_constmem cudapy.test_device_func cudapy.test_vectorize cudapy.test_gufunc cudapy.test_random cudapy.test_slicing"}
echo; echo "## numba-cuda's own tests (numba.cuda.tests): $SHARDS processes each way at once, natively and each on a vGPU of its own; ${T} s each"
t0=$(now)
# Modules to shards, the heaviest first onto the lightest shard (weights: rough seconds natively).
python3 - "$SHARDS" $MODS >"$RUN/shards" <<'PY'
import sys
n, mods = int(sys.argv[1]), sys.argv[2:]
heavy = {"test_math": 60, "test_atomics": 50, "test_intrinsics": 40, "test_warp_ops": 20, "test_gufunc": 20,
         "test_vectorize": 20, "test_array": 15, "test_random": 15, "test_sync": 15, "test_matmul": 8}
w = lambda m: heavy.get(m.split(".")[-1], 5)
shards = [[0, []] for _ in range(n)]
for m in sorted(mods, key=w, reverse=True):
    s = min(shards, key=lambda s: s[0]); s[0] += w(m); s[1].append(m)
for _, ms in shards:
    print(" ".join(ms))
PY
i=0; PIDS=()
while read -r mods; do
    [ -z "$mods" ] && continue
    # numba-cuda's tests are unittest cases (numba runs them with numba.runtests, a unittest
    # runner); pytest's collection cannot import them (numba_cuda/numba is a namespace beside
    # numba's own).
    args=(); for m in $mods; do args+=("numba.cuda.tests.$m"); done
    cmd=(timeout -s INT -k 20 "$T" python3 -m unittest -v "${args[@]}")
    (native "${cmd[@]}" >"$OUT/numba-native-$i.log" 2>&1) & PIDS+=($!)
    (on_vgpu "${SOCK[$i]}" "${cmd[@]}" >"$OUT/numba-guest-$i.log" 2>&1) & PIDS+=($!)
    echo "shard $i: $mods" >>"$OUT/numba-shards.txt"
    i=$((i + 1))
done <"$RUN/shards"
wait "${PIDS[@]}"
echo "$(( $(now) - t0 )) s; shards: $OUT/numba-shards.txt"
python3 "$GC/summarize.py" "$OUT"/numba-native-*.log -- "$OUT"/numba-guest-*.log | tee "$RUN/numba.md"
note numba "$(grep -q '^Modules passing fewer tests through the library than natively: none' "$RUN/numba.md" && echo ok || echo gaps)" \
    "$(grep -m1 '^| \*\*total' "$RUN/numba.md" | tr -d '|*' | sed 's/  */ /g'), $(( $(now) - t0 )) s"
fi

for p in ${CP:-} ${SP:-}; do wait "$p"; done
for f in cuda-python samples; do [ -f "$RUN/$f.md" ] && { echo; cat "$RUN/$f.md"; }; done

if has fault; then
echo; echo "## Fault containment: a numba kernel writes through a bad pointer on one vGPU; a neighbour vGPU's numba workload goes on"
on_vgpu "$V_NEIGHBOUR" timeout 90 python3 "$GC/numba_fault.py" work 20 >"$OUT/neighbour.log" 2>&1 &
NB=$!
sleep 6
fn=$(timeout 60 python3 "$GC/numba_fault.py" fault 2>&1 | grep NUMBA-FAULT)
fg=$(on_vgpu "$V_FAULT" timeout 60 python3 "$GC/numba_fault.py" fault 2>&1 | grep NUMBA-FAULT)
echo "native: $fn"; echo "guest:  $fg"
wait $NB; nb=$(grep NUMBA-NEIGHBOUR "$OUT/neighbour.log" || tail -3 "$OUT/neighbour.log")
echo "neighbour vGPU: $nb"
case "$fg $nb" in *ILLEGAL_ADDRESS*wrong=0*) v=ok;; *) v=FAIL;; esac
note fault "$v" "guest: ${fg#NUMBA-FAULT }; neighbour: ${nb#NUMBA-NEIGHBOUR }"
fi

if has speed; then
echo; echo "## Speed: numba kernels back to back (about 10 us, 100 us, 1 ms natively), launches/s"
timeout 120 python3 "$GC/numba_speed.py" calibrate "$OUT/speed-plan.json" >"$OUT/speed-calibrate.log" 2>&1
timeout 120 python3 "$GC/numba_speed.py" run "$OUT/speed-plan.json" >"$OUT/speed-native.jsonl" 2>&1
on_vgpu "${SOCK[0]}" timeout 120 python3 "$GC/numba_speed.py" run "$OUT/speed-plan.json" >"$OUT/speed-guest.jsonl" 2>&1
if python3 "$GC/numba_speed.py" table "$OUT/speed-native.jsonl" "$OUT/speed-guest.jsonl" >"$RUN/speed.md"; then
    cat "$RUN/speed.md"; note speed ok "$(grep -m1 'ratio at' "$RUN/speed.md")"
else
    cat "$RUN/speed.md"; tail -3 "$OUT/speed-guest.jsonl"; note speed FAIL "see speed-*.jsonl"
fi
echo; echo "## Module loads (cuda.bindings, NVRTC PTX of $(python3 "$GC/cuda_python_ptx.py" --describe 2>/dev/null)): first, then the same image again (median of 5)"
for mode in native native-nocache guest; do
    case $mode in
        native) r=$(timeout 120 python3 "$GC/cuda_python_ptx.py" --loads 2>&1 | tail -1);;
        native-nocache) r=$(CUDA_CACHE_DISABLE=1 timeout 120 python3 "$GC/cuda_python_ptx.py" --loads 2>&1 | tail -1);;
        guest) r=$(on_vgpu "${SOCK[0]}" timeout 120 python3 "$GC/cuda_python_ptx.py" --loads 2>&1 | tail -1);;
    esac
    echo "$mode: $r"
done | tee "$RUN/loads.md"
note module-loads "$(grep -q '^guest: MODULE-LOADS' "$RUN/loads.md" && echo ok || echo FAIL)" "$(grep '^guest:' "$RUN/loads.md" | cut -c1-120)"
fi
KILLS=$(grep -c 'SIGSYS' "$OUT/vgpud.log" 2>/dev/null)
note sigsys "$([ "${KILLS:-0}" = 0 ] && echo ok || echo FAIL)" "${KILLS:-0} workers killed by the seccomp filter (vgpud.log)"
