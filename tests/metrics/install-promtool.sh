#!/usr/bin/env bash
# tests/metrics/install-promtool.sh — install promtool, which `cargo test` runs on vgpud's
# metrics (`promtool check metrics`), cached outside the clone:
#   ${VGPUD_CACHE:-/var/cache/vgpud}/promtool/bin/promtool
# promtool ships in Debian's `prometheus` package; only the binary is taken from the .deb
# (apt-get download + dpkg-deb -x), so no Prometheus service is installed or started on the
# host. Prints the binary's path. A few seconds the first time (a ~30 MB .deb), instant afterwards.
# Env: VGPUD_CACHE.
set -euo pipefail
CACHE=${VGPUD_CACHE:-/var/cache/vgpud}
ROOT=$CACHE/promtool
BIN=$ROOT/bin/promtool
if [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; then
    echo "$BIN"
    exit 0
fi
for tool in apt-get dpkg-deb; do
    command -v "$tool" >/dev/null || { echo "install-promtool.sh: needs $tool (a Debian host)" >&2; exit 1; }
done
mkdir -p "$ROOT/debs"
cd "$ROOT/debs"
rm -f prometheus_*.deb
# (As root, apt warns that _apt cannot write here and downloads unsandboxed: harmless.)
if ! apt-get download -q prometheus >&2; then
    apt-get update -qq >&2
    apt-get download -q prometheus >&2
fi
deb=$(ls prometheus_*.deb)
tmp=$(mktemp -d "$ROOT/extract.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
dpkg-deb -x "$deb" "$tmp"
mkdir -p "$ROOT/bin"
install -m 0755 "$tmp/usr/bin/promtool" "$BIN.tmp"
mv -f "$BIN.tmp" "$BIN"
rm -f "$deb"
"$BIN" --version >&2
echo "$BIN"
