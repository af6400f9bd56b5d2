#!/usr/bin/env bash
# tests/gpu/syscalls.sh — what the CUDA worker calls once confined, measured on a GPU machine
# (docs/reliability.md, engines/cuda/src/syscalls.rs): (A) the worker under strace with its
# seccomp filter in log mode (VGPUD_WORKER_SECCOMP=log: a call outside the list is logged, not
# fatal) through the selftest, the PTX test and a faulting kernel; the calls made after the
# filter went on are summed up (tests/gpu/syscalls.py), and the kernel's seccomp log lines kept;
# (B) the same with the filter enforcing, and each worker thread's /proc status.
#
# usage: OUT=DIR tests/gpu/syscalls.sh BIN_DIR   (release vgpud, vgpuctl, vgpud-cuda-worker,
# vgpu-guest; strace from PATH, or STRACE=path; nvcc for the PTX)
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=$(cd "$1" && pwd)
OUT=${OUT:-$(mktemp -d /tmp/vgpud-syscalls.XXXXXX)}
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
mkdir -p "$OUT"
{ id; uname -r; ls -l /dev/nvidia* ; cat /proc/sys/kernel/yama/ptrace_scope; command -v strace; nvidia-smi -L; getent passwd 65534; } >"$OUT/machine.txt" 2>&1
if ! [ "$(stat -c %A /dev/nvidiactl | cut -c8-9)" = "rw" ]; then export WORKERS_GROUP=$(stat -c %g /dev/nvidiactl); fi
WCFG=$'[workers]\n'"${WORKERS_GROUP:+group = $WORKERS_GROUP}"
RUN=$(mktemp -d /tmp/i20m.XXXX); mkdir -p "$RUN/bin"
cp "$BIN/vgpud" "$BIN/vgpuctl" "$BIN/vgpu-guest" "$RUN/bin/"
STRACE=${STRACE:-$(command -v strace || true)}
[ -n "$STRACE" ] || { echo "no strace (PATH or STRACE=)"; exit 1; }
cat >"$RUN/bin/vgpud-cuda-worker" <<W
#!/bin/sh
case " \$* " in *" --probe "*) exec "$BIN/vgpud-cuda-worker" "\$@";; esac
exec "$STRACE" -f -ttt -qq -o "$OUT/strace.\$\$" "$BIN/vgpud-cuda-worker" "\$@"
W
chmod +x "$RUN/bin/vgpud-cuda-worker"
/usr/local/cuda/bin/nvcc -ptx -arch=sm_90 -o "$RUN/k.ptx" "$HERE/ptx/kernels.cu" 2>"$OUT/nvcc.txt" || nvcc -ptx -arch=sm_90 -o "$RUN/k.ptx" "$HERE/ptx/kernels.cu"
go() { # go BINDIR NAME [ENV...]: start vgpud, selftest, ptx, a faulting kernel, stop
    local bin=$1 name=$2; shift 2
    printf '%s\n[catalog.parent."gpu0"]\nengine = "cuda"\ndevice = 0\n' "$WCFG" >"$RUN/$name.toml"
    env "$@" VGPUD_LOG=info "$bin/vgpud" --config "$RUN/$name.toml" --run-dir "$RUN/$name" >"$OUT/$name-vgpud.log" 2>&1 & local pid=$!
    for _ in $(seq 300); do [ -S "$RUN/$name/control.sock" ] && break; sleep 0.1; done
    local t=$("$bin/vgpuctl" --run-dir "$RUN/$name" types --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])')
    local s=$("$bin/vgpuctl" --run-dir "$RUN/$name" create --type "$t" | awk '{print $2}')
    echo "== $name: type $t"
    for w in $(pgrep -P $pid -f vgpud-cuda-worker); do
        for x in $(pgrep -P $w) $w; do echo "pid $x: root $(readlink /proc/$x/root) threads $(ls /proc/$x/task | wc -l)"; cat /proc/$x/task/*/status | grep -E '^(Uid|Gid|Groups|NoNewPrivs|Seccomp|CapInh|CapPrm|CapEff|CapBnd|CapAmb):' | sort | uniq -c; done
    done
    local t0=$(date +%s%3N)
    timeout 120 "$bin/vgpu-guest" --socket "$s" selftest 2>&1 | tail -4
    local t1=$(date +%s%3N)
    timeout 120 "$bin/vgpu-guest" --socket "$s" ptx --ptx "$RUN/k.ptx" 2>&1 | tail -6
    echo "selftest $((t1 - t0)) ms, ptx $(( $(date +%s%3N) - t1 )) ms"
    timeout 60 "$bin/vgpu-guest" --socket "$s" ptx-fault --ptx "$RUN/k.ptx" --kind illegal --json 2>&1 | tail -c 400; echo
    timeout 60 "$bin/vgpu-guest" --socket "$s" selftest 2>&1 | tail -1
    kill -TERM $pid; wait $pid
    echo "-- vgpud log (worker lines)"; grep -E "worker|sandbox|SIGSYS|escape" "$OUT/$name-vgpud.log" | tail -15
}
D0=$(dmesg 2>/dev/null | wc -l)
go "$RUN/bin" traced VGPUD_WORKER_SECCOMP=log >"$OUT/A-traced.txt" 2>&1
dmesg 2>/dev/null | tail -n +$((D0 + 1)) | grep 'type=1326' >"$OUT/A-seccomp-log.txt"
go "$BIN" enforcing >"$OUT/B-enforcing.txt" 2>&1
cat "$OUT/A-traced.txt" "$OUT/B-enforcing.txt"; echo "seccomp log lines: $(wc -l <"$OUT/A-seccomp-log.txt")"
grep -o 'syscall=[0-9]*' "$OUT/A-seccomp-log.txt" | sort | uniq -c
python3 "$HERE/syscalls.py" "$OUT" 2>&1 | tee "$OUT/strace-summary.txt" | cut -c1-3000
gzip -f "$OUT"/strace.* 2>/dev/null
du -sh "$OUT"
