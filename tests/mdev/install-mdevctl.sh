#!/usr/bin/env bash
# tests/mdev/install-mdevctl.sh — install the real mdevctl 1.4.0 (the Rust one, crates.io)
# for the control-plane tests, cached outside the clone:
#   ${VGPUD_CACHE:-/var/cache/vgpud}/mdevctl/bin/mdevctl
# Prints the binary's path. ~80 s to build the first time, instant afterwards.
set -euo pipefail
CACHE=${VGPUD_CACHE:-/var/cache/vgpud}
ROOT=$CACHE/mdevctl
BIN=$ROOT/bin/mdevctl
# (mdevctl itself refuses to run, even for --version, without its directories; ask cargo.)
if [ -x "$BIN" ] && grep -q '"mdevctl 1.4.0 ' "$ROOT/.crates.toml" 2>/dev/null; then
    echo "$BIN"
    exit 0
fi
mkdir -p "$ROOT"
# build.rs runs $RST2MAN for the man page; it is not needed here.
RST2MAN=/bin/true cargo install mdevctl --version 1.4.0 --locked --root "$ROOT" -j 2 >&2
[ -x "$BIN" ] || { echo "install-mdevctl.sh: $BIN missing after cargo install" >&2; exit 1; }
echo "$BIN"
