# shellcheck shell=bash
# Common helpers for the tests/vm scripts. Sourced, not run.
#
# Everything lives outside the git clone, under $VGPUD_CACHE (default /var/cache/vgpud):
#   $VGPUD_CACHE/trixie               the Debian trixie chroot (QEMU, guest kernel, busybox, cpio)
#   $VGPUD_CACHE/trixie/.vgpud-ready  stamp, written last by prepare.sh
#   $VGPUD_CACHE/.lock                flock taken by prepare.sh (exclusive) and the others (shared)

VGPUD_CACHE=${VGPUD_CACHE:-/var/cache/vgpud}
VM_ROOT="$VGPUD_CACHE/trixie"
VM_STAMP="$VM_ROOT/.vgpud-ready"
# Bump when the package set or the chroot set-up changes: a chroot whose stamp differs gets
# the install step again (and a full rebuild if that is interrupted).
VM_STAMP_CONTENT="vgpud-vm-chroot v1: trixie minbase; trixie-backports qemu-system-x86; linux-image-amd64 busybox-static cpio"
# libvirt in the same chroot (the libvirt tests: virt-xml-validate, libvirtd), installed on
# top of a complete base with a stamp of its own, so that a chroot from an older checkout
# keeps its base stamp and only gains this layer.
VM_LIBVIRT_STAMP="$VM_ROOT/.vgpud-libvirt-ready"
VM_LIBVIRT_PACKAGES="libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libxml2-utils"
VM_LIBVIRT_STAMP_CONTENT="vgpud-vm-libvirt v1: trixie $VM_LIBVIRT_PACKAGES"

vm_log() { printf '[%s %s] %s\n' "${0##*/}" "$(date +%H:%M:%S)" "$*" >&2; }
vm_die() { vm_log "ERROR: $*"; exit 1; }

vm_now() { date +%s.%N; }
# vm_elapsed START -> seconds with one decimal since START (a vm_now value)
vm_elapsed() { awk -v s="$1" -v e="$(vm_now)" 'BEGIN { printf "%.1f", e - s }'; }

vm_require_root() {
    [ "$(id -u)" = 0 ] || vm_die "must run as root (debootstrap, chroot and mounts need it)"
}

# Re-exec the calling script in a private mount namespace so that every mount it makes
# disappears when it exits, even on SIGKILL. The scripts still unmount in their EXIT traps;
# this is the safety net. Skipped where unshare is not permitted (then the traps do it all).
vm_enter_mount_ns() {
    if [ -z "${VGPUD_VM_IN_NS:-}" ] && unshare --mount --propagation private true 2>/dev/null; then
        export VGPUD_VM_IN_NS=1
        exec unshare --mount --propagation private -- "${BASH:-bash}" "$@"
    fi
}

# Mount points at or below DIR, deepest first.
vm_mounts_under() {
    local dir
    dir=$(readlink -f "$1")
    awk -v d="$dir" '{ m = $5; gsub(/\\040/, " ", m); if (m == d || index(m, d "/") == 1) print m }' \
        /proc/self/mountinfo | sort -r
}

# Unmount everything at or below DIR (deepest first). Fails if something stays mounted.
vm_umount_all_under() {
    local m left
    while read -r m; do
        [ -n "$m" ] || continue
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done < <(vm_mounts_under "$1")
    left=$(vm_mounts_under "$1")
    [ -z "$left" ] || { vm_log "still mounted under $1: $left"; return 1; }
}

# The chroot must be complete (stamp present and current).
vm_require_chroot() {
    [ -f "$VM_STAMP" ] && [ "$(cat "$VM_STAMP")" = "$VM_STAMP_CONTENT" ] \
        || vm_die "no complete VM chroot at $VM_ROOT: run tests/vm/prepare.sh first"
}

# The libvirt layer must be installed too (stamp present and current).
vm_require_libvirt() {
    vm_require_chroot
    [ -f "$VM_LIBVIRT_STAMP" ] && [ "$(cat "$VM_LIBVIRT_STAMP")" = "$VM_LIBVIRT_STAMP_CONTENT" ] \
        || vm_die "no libvirt in the VM chroot at $VM_ROOT: run tests/vm/prepare.sh first"
}

# The guest kernel image inside the chroot (path as seen from the host).
vm_kernel() {
    local k
    k=$(ls -1 "$VM_ROOT"/boot/vmlinuz-* 2>/dev/null | sort -V | tail -n1)
    [ -n "$k" ] || vm_die "no /boot/vmlinuz-* in $VM_ROOT"
    printf '%s\n' "$k"
}

# Kernel release of that image (vmlinuz-6.12.x-amd64 -> 6.12.x-amd64).
vm_kver() { local k; k=$(vm_kernel); printf '%s\n' "${k##*/vmlinuz-}"; }

# Run a command inside the chroot with a clean environment.
vm_chroot() {
    chroot "$VM_ROOT" /usr/bin/env -i \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
}

# The executables and work directory a VM script takes: --vgpud, --vgpuctl, --guest (each built
# here when not given: the guest driver statically, for the guest's initramfs) and --work (a new
# /tmp/vgpud-TAG.XXXXXX when not given). Usage: vm_binaries TAG "$@"; sets VGPUD, VGPUCTL,
# GUEST, WORK and REPO; CUDA_TEST (--cuda-test DIR: driver_api, libcuda.so.1 and
# proc_table.tsv for the CUDA case; empty when not given); K8S_AGENT when --kubevirt AGENT
# is given. Needs root.
vm_binaries() {
    local tag=$1
    shift
    VGPUD= VGPUCTL= GUEST= WORK= CUDA_TEST= K8S_AGENT=
    while [ $# -gt 0 ]; do
        case "$1" in
            --cuda-test) CUDA_TEST=$2; shift 2 ;;
            --kubevirt) K8S_AGENT=$2; shift 2 ;;
            --vgpud) VGPUD=$2; shift 2 ;;
            --vgpuctl) VGPUCTL=$2; shift 2 ;;
            --guest) GUEST=$2; shift 2 ;;
            --work) WORK=$2; shift 2 ;;
            *) vm_die "unknown argument: $1" ;;
        esac
    done
    REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    if [ -z "$VGPUD" ] || [ -z "$VGPUCTL" ]; then
        (cd "$REPO" && cargo build --release -j 2 -p vgpud --bin vgpud --bin vgpuctl) >&2
        VGPUD=${VGPUD:-$REPO/target/release/vgpud}
        VGPUCTL=${VGPUCTL:-$REPO/target/release/vgpuctl}
    fi
    if [ -z "$GUEST" ]; then
        (cd "$REPO" && RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$REPO/target/vm-guest" \
            cargo build --release -j 2 -p vgpu-guest --bin vgpu-guest --target x86_64-unknown-linux-gnu) >&2
        GUEST=$REPO/target/vm-guest/x86_64-unknown-linux-gnu/release/vgpu-guest
    fi
    [ -x "$VGPUD" ] && [ -x "$VGPUCTL" ] && [ -x "$GUEST" ] || vm_die "need --vgpud, --vgpuctl and --guest executables"
    vm_require_root
    [ -n "$WORK" ] || WORK=$(mktemp -d "/tmp/vgpud-$tag.XXXXXX")
}
