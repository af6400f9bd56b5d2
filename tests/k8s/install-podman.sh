#!/usr/bin/env bash
# tests/k8s/install-podman.sh — Debian's podman (4.3, which reads CDI specs from /etc/cdi and
# /var/run/cdi), runc, and busybox-static for the CDI test's container image, when missing.
# As root; apt's .debs are kept in ${VGPUD_CACHE:-/var/cache/vgpud}/apt-host. Seconds when
# present, ~30 s to install.
set -euo pipefail
CACHE=${VGPUD_CACHE:-/var/cache/vgpud}
need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
[ -x /bin/busybox ] && /bin/busybox --help 2>&1 | head -1 | grep -q BusyBox || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
    mkdir -p "$CACHE/apt-host/partial"
    apt() { DEBIAN_FRONTEND=noninteractive apt-get -o Dir::Cache::archives="$CACHE/apt-host" "$@"; }
    if ! apt install -y -qq --no-install-recommends "${need[@]}" >&2; then
        apt-get update -qq >&2
        apt install -y -qq --no-install-recommends "${need[@]}" >&2
    fi
fi
podman --version
