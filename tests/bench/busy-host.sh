#!/usr/bin/env bash
# tests/bench/busy-host.sh — issue 19's busy host: tests/bench/fastpath-cli.sh (cpu engine) while
# every core is kept busy by CPU-bound processes of another session, as a host whose VMs use all
# its CPUs; then the same with the processes and vgpud in cgroups of their own, weighted as the
# service unit weights them (vgpud `CPUWeight=1000`, dist/vgpud.service; the VMs' slice at the
# default 100), where the host lets this script make cgroups (cgroup v2, root); then quiet.
#
# usage: tests/bench/busy-host.sh BIN_DIR [SECONDS] [SIZES...]
#   BIN_DIR as fastpath-cli.sh's; BUSY (default: the CPU count) is how many CPU-bound processes.
set -u
BIN=$1; SECS=${2:-2}; shift $(( $# >= 2 ? 2 : $# ))
SIZES=${*:-10 50 200 1000}
HERE=$(cd "$(dirname "$0")" && pwd)
BUSY=${BUSY:-$(nproc)}
CG=/sys/fs/cgroup
spinners() { # start BUSY CPU-bound processes, each in a session of its own
    for _ in $(seq "$BUSY"); do setsid bash -c 'while :; do :; done' & done
    sleep 0.5
}
stop_spinners() { pkill -f "while :; do :; done"; sleep 0.5; }
fastpath() { timeout 300 bash "$HERE/fastpath-cli.sh" "$BIN" "$SECS" $SIZES; }

echo "## $BUSY CPU-bound processes beside vgpud, sessions of their own (no cgroups)"
spinners; fastpath; stop_spinners

# cgroup v2 with the cpu controller where this may make cgroups: the processes of the root go to
# a leaf first (a cgroup with controllers enabled for its children holds no processes itself).
weighted=
if [ -w "$CG/cgroup.subtree_control" ] && grep -qw cpu "$CG/cgroup.controllers" 2>/dev/null; then
    mkdir -p "$CG/busy-host.leaf" "$CG/busy-host.vgpud" "$CG/busy-host.vms"
    for p in $(cat "$CG/cgroup.procs"); do echo "$p" >"$CG/busy-host.leaf/cgroup.procs" 2>/dev/null; done
    if echo +cpu >"$CG/cgroup.subtree_control" 2>/dev/null &&
        echo 1000 >"$CG/busy-host.vgpud/cpu.weight" && echo 100 >"$CG/busy-host.vms/cpu.weight"; then
        weighted=1
    fi
fi
if [ -n "$weighted" ]; then
    echo; echo "## The same, the processes in a cgroup of cpu.weight 100, vgpud in one of 1000 (the unit's CPUWeight)"
    spinners
    for p in $(pgrep -f "while :; do :; done"); do echo "$p" >"$CG/busy-host.vms/cgroup.procs"; done
    # The tenants (the guests' load) run beside the processes, as VMs' vCPUs do.
    (echo $BASHPID >"$CG/busy-host.vgpud/cgroup.procs" && TENANT_CGROUP=$CG/busy-host.vms fastpath)
    stop_spinners
else
    echo; echo "(no cgroup v2 cpu controller this script may use here: the weighted run is skipped)"
fi

echo; echo "## Quiet"
fastpath
