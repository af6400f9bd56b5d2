#!/usr/bin/env bash
# tests/fuzz/install-cargo-fuzz.sh — install cargo-fuzz (crates.io) for the fuzz smoke runs,
# cached outside the clone: ${VGPUD_CACHE:-/var/cache/vgpud}/cargo-fuzz/bin/cargo-fuzz.
# The fuzz targets build with the machine's nightly toolchain (cargo-fuzz needs it for
# libFuzzer's sanitizer coverage); the project itself builds on stable.
# Prints the binary's path. ~2 minutes the first time, instant afterwards.
set -euo pipefail
CACHE=${VGPUD_CACHE:-/var/cache/vgpud}
ROOT=$CACHE/cargo-fuzz
BIN=$ROOT/bin/cargo-fuzz
VERSION=0.13.2
if [ -x "$BIN" ] && grep -q "\"cargo-fuzz $VERSION " "$ROOT/.crates.toml" 2>/dev/null; then
    echo "$BIN"
    exit 0
fi
mkdir -p "$ROOT"
cargo install cargo-fuzz --version "$VERSION" --locked --root "$ROOT" -j 2 >&2
[ -x "$BIN" ] || { echo "install-cargo-fuzz.sh: $BIN missing after cargo install" >&2; exit 1; }
echo "$BIN"
