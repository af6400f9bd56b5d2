#!/usr/bin/env bash
# tests/gpu/guest_cuda.sh — CUDA in the guest on the GPU machine: peer test suites, each run
# natively and through libcuda.so.1 (tools/guest-cuda) on a vGPU of the CUDA engine in the same
# run, side by side; fault containment; speed. Prints Markdown; keeps logs and junit files in
# $OUT (default: a temporary directory).
#
# usage: tests/gpu/guest_cuda.sh BIN_DIR LIB_DIR [PEERS_DIR]
#   BIN_DIR   vgpud, vgpuctl, vgpud-cuda-worker (release builds)
#   LIB_DIR   libvgpu_cuda.so of tools/guest-cuda (release); libcuda.so.1 is linked beside it
#   PEERS_DIR peer sources, not in the repository: samples/ (NVIDIA cuda-samples' Common/ and
#             Samples/0_Introduction/{vectorAddDrv,matrixMulDrv,matrixMulDynlinkJIT}) and
#             cuda-python/<cuda-bindings version>/test_cuda.py (cuda_bindings/tests of the source
#             release matching the installed cuda-bindings, with its conftest.py)
#   NUMBA_MODULES overrides the numba-cuda modules (default: the acceptance list of issue 21);
#   SUITE_TIMEOUT bounds each suite run (default 420 s); GC_PARTS picks parts (default all:
#   numba cuda-python samples fault speed).
set -uo pipefail
BIN=$(cd "$1" && pwd); LIB=$(cd "$2" && pwd); PEERS=${3:-}
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$(mktemp -d /tmp/vgpud-guest-cuda.XXXXXX)}
RUN=$(mktemp -d /tmp/vgpud-gc.XXXXXX)
T=${SUITE_TIMEOUT:-420}
GC=$HERE/guest-cuda
ln -sf libvgpu_cuda.so "$LIB/libcuda.so.1"; ln -sf libcuda.so.1 "$LIB/libcuda.so"
export PYTHONDONTWRITEBYTECODE=1
has() { case " ${GC_PARTS:-numba cuda-python samples fault speed} " in *" $1 "*) return 0;; esac; return 1; }

cat >"$RUN/vgpud.toml" <<CFG
[parent."gpu0"]
policy = "best_effort"

[catalog.parent."gpu0"]
engine = "cuda"
device = 0
CFG
"$BIN/vgpud" --config "$RUN/vgpud.toml" --run-dir "$RUN/run" >"$OUT/vgpud.log" 2>&1 &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null' EXIT
for _ in $(seq 600); do [ -S "$RUN/run/control.sock" ] && break; sleep 0.1; done
TYPES=$("$BIN/vgpuctl" --run-dir "$RUN/run" types --json | python3 -c 'import json,sys; print(" ".join(t["id"] for t in json.load(sys.stdin)))')
set -- $TYPES; HALF=${2:-$1}; QUARTER=${3:-$HALF}
S1=$("$BIN/vgpuctl" --run-dir "$RUN/run" create --type "$QUARTER" | awk '{print $2}')
S2=$("$BIN/vgpuctl" --run-dir "$RUN/run" create --type "$QUARTER" | awk '{print $2}')
echo "## CUDA in the guest: libcuda.so.1 on $QUARTER vGPUs of the CUDA engine, beside the native driver"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null
python3 -c 'import numba_cuda, cuda.bindings; print("numba-cuda", numba_cuda.__version__, "cuda-bindings", cuda.bindings.__version__)' 2>/dev/null
native() { "$@"; }
guest() { env LD_LIBRARY_PATH="$LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" VGPU_SOCKET="$S1" "$@"; }

if has numba; then
MODS=${NUMBA_MODULES:-"cudadrv.test_cuda_driver cudadrv.test_cuda_memory cudadrv.test_events cudadrv.test_streams cudadrv.test_context_stack cudadrv.test_deallocations cudadrv.test_cuda_ndarray cudadrv.test_array_attr cudadrv.test_inline_ptx cudadrv.test_detect cudapy.test_array cudapy.test_array_args cudapy.test_atomics cudapy.test_intrinsics cudapy.test_math cudapy.test_matmul cudapy.test_reduction cudapy.test_sync cudapy.test_warp_ops cudapy.test_localmem cudapy.test_constmem cudapy.test_device_func cudapy.test_vectorize cudapy.test_gufunc cudapy.test_random cudapy.test_slicing"}
ARGS=(); for m in $MODS; do ARGS+=(--pyargs "numba.cuda.tests.$m"); done
echo; echo "## numba-cuda's own tests (numba.cuda.tests), one process each way"
for mode in native guest; do
    t0=$(date +%s)
    $mode timeout "$T" python3 -m pytest -q -p no:cacheprovider -o addopts= "${ARGS[@]}" \
        --junitxml="$OUT/numba-$mode.xml" >"$OUT/numba-$mode.log" 2>&1
    echo "$mode: exit $?, $(( $(date +%s) - t0 )) s, $(tail -1 "$OUT/numba-$mode.log")"
done
python3 "$GC/summarize.py" "$OUT/numba-native.xml" "$OUT/numba-guest.xml"
fi

if has cuda-python; then
echo; echo "## cuda-python: a cuda.bindings.driver program (NVRTC -> PTX -> cuModuleLoadData -> cuLaunchKernel, checked)"
for mode in native guest; do echo "$mode: $($mode timeout 120 python3 "$GC/cuda_python_ptx.py" 2>&1 | tail -1)"; done
V=$(python3 -c 'import cuda.bindings; print(cuda.bindings.__version__)' 2>/dev/null)
TD=${PEERS:+$PEERS/cuda-python/$V}
if [ -n "$TD" ] && [ -f "$TD/test_cuda.py" ]; then
    echo; echo "## cuda-python $V: cuda_bindings/tests/test_cuda.py"
    for mode in native guest; do
        (cd "$TD" && $mode timeout "$T" python3 -m pytest -q -p no:cacheprovider test_cuda.py \
            --junitxml="$OUT/cuda-python-$mode.xml" >"$OUT/cuda-python-$mode.log" 2>&1)
        echo "$mode: $(tail -1 "$OUT/cuda-python-$mode.log")"
    done
    python3 "$GC/summarize.py" "$OUT/cuda-python-native.xml" "$OUT/cuda-python-guest.xml"
else
    echo "cuda_bindings/tests/test_cuda.py of cuda-bindings $V not carried (PEERS_DIR/cuda-python/$V/): skipped"
fi
fi

if has samples; then
echo; echo "## NVIDIA cuda-samples, built here with nvcc, unmodified"
NVCC=/usr/local/cuda/bin/nvcc; [ -x "$NVCC" ] || NVCC=$(command -v nvcc)
SM=$(python3 -c 'from cuda.bindings import driver as d; d.cuInit(0); print("%d%d" % (d.cuDeviceGetAttribute(d.CUdevice_attribute(75),0)[1], d.cuDeviceGetAttribute(d.CUdevice_attribute(76),0)[1]))' 2>/dev/null || echo 90)
SD=$RUN/samples; mkdir -p "$SD"
if [ -n "$PEERS" ] && [ -d "$PEERS/samples" ] && [ -n "$NVCC" ]; then
    cp -r "$PEERS/samples/." "$SD/"
    I=(-I "$SD/Common"); S=$SD/Samples/0_Introduction
    (cd "$S/vectorAddDrv" && "$NVCC" -fatbin -gencode "arch=compute_$SM,code=sm_$SM" -o vectorAdd_kernel64.fatbin vectorAdd_kernel.cu \
        && "$NVCC" "${I[@]}" -o vectorAddDrv vectorAddDrv.cpp -lcuda) >"$OUT/build-vectorAddDrv.log" 2>&1
    (cd "$S/matrixMulDrv" && "$NVCC" "${I[@]}" -fatbin -gencode "arch=compute_$SM,code=sm_$SM" -o matrixMul_kernel64.fatbin matrixMul_kernel.cu \
        && "$NVCC" "${I[@]}" -o matrixMulDrv matrixMulDrv.cpp -lcuda) >"$OUT/build-matrixMulDrv.log" 2>&1
    (cd "$S/matrixMulDynlinkJIT" && "$NVCC" "${I[@]}" -o matrixMulDynlinkJIT matrixMulDynlinkJIT.cpp matrixMul_gold.cpp \
        cuda_drvapi_dynlink.c matrixMul_kernel_64_ptxdump.c -ldl) >"$OUT/build-matrixMulDynlinkJIT.log" 2>&1
    echo "| sample | native | libcuda.so.1 on a vGPU |"; echo "|---|---|---|"
    for s in vectorAddDrv matrixMulDrv matrixMulDynlinkJIT; do
        row="| $s |"
        for mode in native guest; do
            if [ -x "$S/$s/$s" ]; then
                (cd "$S/$s" && $mode timeout 120 "./$s" >"$OUT/$s-$mode.log" 2>&1); rc=$?
                row="$row exit $rc: $(grep -a -m1 -E 'PASS|FAIL|Result|error' "$OUT/$s-$mode.log" | tr -d '\r|' | cut -c1-60) |"
            else row="$row not built (build-$s.log) |"; fi
        done
        echo "$row"
    done
else
    echo "cuda-samples sources not carried (PEERS_DIR/samples) or no nvcc: skipped"
fi
fi

if has fault; then
echo; echo "## Fault containment: a numba kernel writes through a bad pointer on one vGPU; a neighbour vGPU's numba workload goes on"
env LD_LIBRARY_PATH="$LIB" VGPU_SOCKET="$S2" timeout 120 python3 "$GC/numba_fault.py" work 25 >"$OUT/neighbour.log" 2>&1 &
NB=$!
sleep 8
echo "native: $(timeout 60 python3 "$GC/numba_fault.py" fault 2>&1 | grep NUMBA-FAULT)"
echo "guest:  $(guest timeout 60 python3 "$GC/numba_fault.py" fault 2>&1 | grep NUMBA-FAULT)"
wait $NB; echo "neighbour vGPU: $(grep NUMBA-NEIGHBOUR "$OUT/neighbour.log" || tail -3 "$OUT/neighbour.log")"
fi

if has speed; then
echo; echo "## Speed: numba kernels back to back (about 10 us, 100 us, 1 ms natively), launches/s"
timeout 300 python3 "$GC/numba_speed.py" calibrate "$OUT/speed-plan.json"
native timeout 300 python3 "$GC/numba_speed.py" run "$OUT/speed-plan.json" >"$OUT/speed-native.jsonl" 2>&1
guest timeout 300 python3 "$GC/numba_speed.py" run "$OUT/speed-plan.json" >"$OUT/speed-guest.jsonl" 2>&1
python3 - "$OUT/speed-native.jsonl" "$OUT/speed-guest.jsonl" <<'PY'
import json, sys
rows = [{json.loads(l)["target_us"]: json.loads(l) for l in open(p) if l.startswith("{")} for p in sys.argv[1:]]
print("| kernel | native launches/s | libcuda.so.1 launches/s | ratio |")
print("|---|---|---|---|")
for t in sorted(rows[0]):
    n, g = rows[0][t], rows[1].get(t)
    print("| ~%d us (%.1f us natively) | %.0f | %s | %s |" % (t, n["us_per_launch"], n["per_s"],
          "%.0f" % g["per_s"] if g else "-", "%.3f" % (g["per_s"] / n["per_s"]) if g else "-"))
PY
fi
echo; echo "logs: $OUT"
