#!/usr/bin/env bash
# tests/bench/fastpath-cli.sh — the submission fast path measured with the project's own
# command-line tools, the way the fast-path issue measured its baseline: a vgpud (cpu engine)
# with the guest driver's CLI (`vgpu-guest load spin --json`) as the tenant over vfio-user.
#
# usage: tests/bench/fastpath-cli.sh BIN_DIR [SECONDS] [SIZES...]
#   BIN_DIR holds vgpud, vgpuctl and vgpu-guest (of any version: the same script measures the
#   previous design and this one, side by side in one run).
# Prints one Markdown row per command length: lone utilization with 1 and 4 channels
# (best_effort, one vgpud-4c), and a vgpud-4c beside a vgpud-2c under fixed_share (wanted 2.00).
# TENANT_CGROUP: a cgroup (v2) directory the tenants run in, as a VM's vCPUs do in theirs.
set -euo pipefail
BIN=$1; SECS=${2:-2}; shift $(( $# >= 2 ? 2 : $# ))
SIZES=${*:-10 50 200 1000 5000}
field() { sed -n "s/.*\"$1\":\([0-9.e+-]*\).*/\1/p"; }

start() { # start POLICY: vgpud in a fresh run dir; sets RUN and PID
    RUN=$(mktemp -d /tmp/vgpud-fastpath-cli.XXXXXX)
    printf '[default]\npolicy = "%s"\n' "$1" >"$RUN/policy.toml"
    "$BIN/vgpud" --config "$RUN/policy.toml" --run-dir "$RUN/run" >"$RUN/vgpud.log" 2>&1 &
    PID=$!
    for _ in $(seq 100); do [ -S "$RUN/run/control.sock" ] && return; sleep 0.05; done
    cat "$RUN/vgpud.log" >&2; exit 1
}
stop() { kill -TERM "$PID"; wait "$PID" || true; rm -rf "$RUN"; }
create() { "$BIN/vgpuctl" --run-dir "$RUN/run" create --type "$1" | awk '{print $2}'; }
load() { # load SOCKET UNIT CHANNELS (in the cgroup TENANT_CGROUP names, where it does)
    (
        [ -n "${TENANT_CGROUP:-}" ] && echo $BASHPID >"$TENANT_CGROUP/cgroup.procs"
        exec "$BIN/vgpu-guest" --socket "$1" load spin --unit-us "$2" --seconds "$SECS" --channels "$3" --json
    )
}

echo "| command µs | lone, 1 channel | lone, 4 channels | fixed_share 4c | fixed_share 2c | 4c : 2c |"
echo "|---|---|---|---|---|---|"
for u in $SIZES; do
    start best_effort; s=$(create vgpud-4c)
    l1=$(load "$s" "$u" 1 | field utilization); l4=$(load "$s" "$u" 4 | field utilization); stop
    start fixed_share; a=$(create vgpud-4c); b=$(create vgpud-2c)
    load "$a" "$u" 1 >"/tmp/fp-a.$$" & pa=$!
    load "$b" "$u" 1 >"/tmp/fp-b.$$" & pb=$!
    wait $pa; wait $pb; stop
    sa=$(field utilization <"/tmp/fp-a.$$"); sb=$(field utilization <"/tmp/fp-b.$$")
    rm -f "/tmp/fp-a.$$" "/tmp/fp-b.$$"
    printf '| %s | %.3f | %.3f | %.3f | %.3f | %.3f |\n' "$u" "$l1" "$l4" "$sa" "$sb" "$(awk -v a="$sa" -v b="$sb" 'BEGIN{print (b > 0 ? a / b : 0)}')"
done
