#!/usr/bin/env bash
# tests/gpu/pack-guest-cuda.sh — everything the guest-CUDA part of a GPU run needs, in one folder
# to carry to the GPU machine (it has no network): the release binaries and libvgpu_cuda.so
# (built here, x86-64), tests/gpu/guest_cuda.sh and its scripts, NVIDIA's cuda-samples sources
# (the three driver samples and Common's headers: not in the repository) and gpu.sh, the one
# command to run there (from the repository root: bash DEST/gpu.sh; logs in $OUT).
#
# usage: tests/gpu/pack-guest-cuda.sh DEST SAMPLES_GIT [CUDA_PYTHON_TESTS]
#   DEST              the folder to fill (replaced)
#   SAMPLES_GIT       a clone of NVIDIA/cuda-samples (its HEAD is taken with git archive)
#   CUDA_PYTHON_TESTS optional: a folder of <cuda-bindings version>/test_cuda.py (+ conftest.py
#                     and cuda_python_test_helpers/), or any/ for whichever version is installed
#   FILECHECK_WHEEL   (environment) optional: filecheck's wheel (pip download --no-deps filecheck)
# Build first: cargo build --release -p vgpud -p vgpu-guest -p vgpu-cuda
set -euo pipefail
DEST=$1; SAMPLES=$2; CPT=${3:-}; FILECHECK_WHEEL=${FILECHECK_WHEEL:-}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
R=$ROOT/target/release
rm -rf "$DEST"; mkdir -p "$DEST/bin" "$DEST/lib" "$DEST/tests/gpu" "$DEST/peers/samples"
for b in vgpud vgpuctl vgpud-cuda-worker vgpu-guest; do
    cp "$R/$b" "$DEST/bin/"; strip "$DEST/bin/$b" 2>/dev/null || true
done
cp "$R/libvgpu_cuda.so" "$DEST/lib/"; strip "$DEST/lib/libvgpu_cuda.so" 2>/dev/null || true
cp -r "$ROOT/tests/gpu/guest_cuda.sh" "$ROOT/tests/gpu/guest-cuda" "$DEST/tests/gpu/"
S=Samples/0_Introduction
# File by file (git show): a mirror may lack the repository's large objects, which git archive
# would stop at.
for p in $(git -C "$SAMPLES" ls-tree -r --name-only HEAD "$S/vectorAddDrv" "$S/matrixMulDrv" "$S/matrixMulDynlinkJIT" Common \
        | grep -E "^($S/|Common/[^/]+\.(h|hpp)$)"); do
    mkdir -p "$DEST/peers/samples/$(dirname "$p")"
    git -C "$SAMPLES" show "HEAD:$p" >"$DEST/peers/samples/$p"
done
git -C "$SAMPLES" log -1 --format='cuda-samples %H %cs' >"$DEST/peers/samples/VERSION"
[ -n "$CPT" ] && cp -r "$CPT" "$DEST/peers/cuda-python"
# filecheck (numba.cuda.testing imports it; the GPU machine lacks it): a pure-Python wheel.
if [ -n "$FILECHECK_WHEEL" ]; then
    mkdir -p "$DEST/peers/pylib" && python3 -m zipfile -e "$FILECHECK_WHEEL" "$DEST/peers/pylib"
fi
cat >"$DEST/gpu.sh" <<'SH'
#!/usr/bin/env bash
# The guest-CUDA part of the GPU run, in one command (from the repository root, or anywhere):
#   bash .gpu/<folder>/gpu.sh        logs and the report (gpu.md) in $OUT (default /tmp/gc-out)
# Bounded: 420 s in all; every part of tests/gpu/guest_cuda.sh has its own timeout, and one
# that fails does not stop the others; a summary table ends the report.
set -uo pipefail
D=$(cd "$(dirname "$0")" && pwd)
export OUT=${OUT:-/tmp/gc-out}; mkdir -p "$OUT"
chmod +x "$D"/bin/* 2>/dev/null
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PATH=$PATH:/usr/local/cuda/bin
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}/usr/local/cuda-13.0/targets/x86_64-linux/lib
{
    echo "# Guest CUDA on the GPU ($(date -u +%FT%TZ)), $(cat "$D/peers/samples/VERSION" 2>/dev/null)"
    echo '```'
    timeout 30 "$D/bin/vgpud-cuda-worker" --probe; echo "probe exit $?"
    python3 -c 'import numba_cuda, cuda.bindings, cuda.core; print("numba-cuda", numba_cuda.__version__, "cuda-bindings", cuda.bindings.__version__, "cuda-core", cuda.core.__version__)' 2>&1 | tail -1
    python3 -m pip list 2>/dev/null | grep -iE '^(numba|numba-cuda|cuda-bindings|cuda-core|cuda-pathfinder|nvidia-nvjitlink|pytest|pytest-xdist) '
    ls -l /dev/nvidiactl /dev/nvidia0 2>&1
    echo '```'
    timeout -k 15 420 bash "$D/tests/gpu/guest_cuda.sh" "$D/bin" "$D/lib" "$D/peers"
    echo "guest_cuda.sh exit $?"
} 2>&1 | tee "$OUT/gpu.md"
SH
chmod +x "$DEST/gpu.sh" "$DEST/tests/gpu/guest_cuda.sh"
du -sh "$DEST"
