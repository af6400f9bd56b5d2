#!/usr/bin/env bash
# tests/vm/prepare.sh — build (once) and cache the Debian trixie chroot that the VM tests run
# QEMU from: qemu-system-x86 from trixie-backports (>= 10.1, has -device vfio-user-pci), the
# trixie guest kernel (linux-image-amd64), busybox-static and cpio for the initramfs; and on
# top of it libvirt from trixie (libvirtd, its QEMU driver, virsh, virt-xml-validate), which
# has a stamp of its own ($VM_LIBVIRT_STAMP).
#
# Idempotent: a complete chroot (stamp file written last) makes this a few-second no-op.
# An interrupted run is detected (no stamp) and resumed, or rebuilt from scratch.
# Needs root. Cache: ${VGPUD_CACHE:-/var/cache/vgpud}/trixie (never inside the git clone).
# Env: VGPUD_CACHE, VGPUD_DEBIAN_MIRROR (default http://deb.debian.org/debian),
#      VGPUD_VM_REBUILD=1 to throw the cached chroot away first.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

MIRROR=${VGPUD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_OK="$VM_ROOT/.vgpud-base-ok"          # debootstrap finished
DEB_CACHE="$VGPUD_CACHE/apt-archives"      # .debs kept across rebuilds (outside the chroot)
DEBOOTSTRAP_CACHE="$VGPUD_CACHE/debootstrap-debs"

vm_require_root
vm_enter_mount_ns "$0" "$@"

T0=$(vm_now)
mkdir -p "$VGPUD_CACHE"
case "$(readlink -f "$VGPUD_CACHE")/" in
    "$(readlink -f "$HERE/../..")/"*) vm_die "VGPUD_CACHE ($VGPUD_CACHE) is inside the git clone; put it elsewhere" ;;
esac

exec 8>"$VGPUD_CACHE/.lock"
if ! flock -n 8; then
    vm_log "another prepare/boot holds $VGPUD_CACHE/.lock; waiting (up to 1 h)"
    flock -w 3600 8 || vm_die "timed out waiting for $VGPUD_CACHE/.lock"
fi

cleanup() {
    local rc=$?
    vm_umount_all_under "$VM_ROOT" 2>/dev/null || vm_log "WARNING: could not unmount everything under $VM_ROOT"
    if [ "$rc" -ne 0 ]; then
        vm_log "FAILED (exit $rc) after $(vm_elapsed "$T0") s; the chroot is left without its stamp and will be resumed or rebuilt on the next run"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

print_versions() {
    local q k
    q=$(vm_chroot qemu-system-x86_64 --version | head -n1)
    k=$(vm_kver)
    vm_log "guest kernel: $k ($(vm_kernel))"
    vm_log "QEMU: $q"
    echo "vgpud VM chroot: $VM_ROOT"
    echo "guest kernel: $k"
    echo "$q"
}

stamp_ok() { [ -f "$VM_STAMP" ] && [ "$(cat "$VM_STAMP")" = "$VM_STAMP_CONTENT" ]; }

if [ "${VGPUD_VM_REBUILD:-0}" = 1 ] && [ -e "$VM_ROOT" ]; then
    vm_log "VGPUD_VM_REBUILD=1: discarding $VM_ROOT"
    rm -f "$VM_STAMP" "$BASE_OK"
fi

libvirt_ok() { [ -f "$VM_LIBVIRT_STAMP" ] && [ "$(cat "$VM_LIBVIRT_STAMP")" = "$VM_LIBVIRT_STAMP_CONTENT" ]; }

if stamp_ok && libvirt_ok; then
    vm_log "cached chroot is complete ($VM_STAMP, $VM_LIBVIRT_STAMP)"
    print_versions
    vm_log "done in $(vm_elapsed "$T0") s (cached)"
    exit 0
fi

wipe_root() {
    [ -e "$VM_ROOT" ] || return 0
    vm_log "removing incomplete chroot $VM_ROOT"
    vm_umount_all_under "$VM_ROOT" || vm_die "refusing to delete $VM_ROOT while something is mounted below it"
    rm -rf --one-file-system "$VM_ROOT"
}

host_debootstrap() {
    if command -v debootstrap >/dev/null 2>&1 && [ -f /usr/share/debootstrap/scripts/trixie ]; then
        return 0
    fi
    local t; t=$(vm_now)
    vm_log "installing debootstrap on the host (apt-get update + install)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    [ -f /usr/share/debootstrap/scripts/trixie ] || vm_die "this debootstrap does not know trixie"
    vm_log "host debootstrap installed in $(vm_elapsed "$t") s"
}

do_debootstrap() {
    local t; t=$(vm_now)
    wipe_root
    mkdir -p "$VM_ROOT" "$DEBOOTSTRAP_CACHE"
    vm_log "debootstrap --variant=minbase trixie $VM_ROOT $MIRROR (a few minutes)"
    local logf="$VGPUD_CACHE/debootstrap.log"
    if ! debootstrap --variant=minbase --cache-dir="$DEBOOTSTRAP_CACHE" trixie "$VM_ROOT" "$MIRROR" >"$logf" 2>&1; then
        tail -n 30 "$logf" >&2 || true
        [ -f "$VM_ROOT/debootstrap/debootstrap.log" ] && tail -n 30 "$VM_ROOT/debootstrap/debootstrap.log" >&2
        vm_die "debootstrap failed (full log: $logf)"
    fi
    : >"$BASE_OK"
    vm_log "debootstrap done in $(vm_elapsed "$t") s"
}

mount_chroot() {
    mountpoint -q "$VM_ROOT/proc" || mount -t proc proc "$VM_ROOT/proc"
    mountpoint -q "$VM_ROOT/dev" || mount --bind /dev "$VM_ROOT/dev"
    mkdir -p "$DEB_CACHE/partial" "$VM_ROOT/var/cache/apt/archives"
    mountpoint -q "$VM_ROOT/var/cache/apt/archives" || mount --bind "$DEB_CACHE" "$VM_ROOT/var/cache/apt/archives"
}

configure_and_install() {
    local t; t=$(vm_now)
    rm -f "$VM_STAMP"
    # apt sources: trixie (from debootstrap) + trixie-backports
    printf 'deb %s trixie main\n' "$MIRROR" >"$VM_ROOT/etc/apt/sources.list"
    printf 'deb %s trixie-backports main\n' "$MIRROR" >"$VM_ROOT/etc/apt/sources.list.d/trixie-backports.list"
    # no daemons start inside the chroot
    printf '#!/bin/sh\nexit 101\n' >"$VM_ROOT/usr/sbin/policy-rc.d"
    chmod 0755 "$VM_ROOT/usr/sbin/policy-rc.d"
    cp -L /etc/resolv.conf "$VM_ROOT/etc/resolv.conf" 2>/dev/null || true
    mount_chroot || return 1
    # The kernel package pulls in initramfs-tools; its initrd.img is never used (we build our
    # own busybox initramfs), so skip generating it: saves time and ~40 MB.
    if ! vm_chroot dpkg-divert --list /usr/sbin/update-initramfs | grep -q update-initramfs; then
        vm_chroot dpkg-divert --local --rename --add /usr/sbin/update-initramfs >/dev/null
    fi
    ln -sf /bin/true "$VM_ROOT/usr/sbin/update-initramfs"

    local logf="$VGPUD_CACHE/apt.log"
    : >"$logf"
    run_apt() {
        vm_log "chroot: $*"
        if ! vm_chroot "$@" >>"$logf" 2>&1; then
            tail -n 30 "$logf" >&2
            vm_log "chroot command failed: $* (full log: $logf)"
            return 1
        fi
    }
    run_apt dpkg --configure -a || return 1
    run_apt apt-get update || return 1
    run_apt apt-get install -y --no-install-recommends linux-image-amd64 busybox-static cpio || return 1
    run_apt apt-get install -y --no-install-recommends -t trixie-backports qemu-system-x86 || return 1
    vm_log "packages installed in $(vm_elapsed "$t") s"

    # sanity: QEMU must be new enough to have vfio-user-pci; kernel + modules present
    vm_chroot qemu-system-x86_64 -device help 2>/dev/null | grep -q '"vfio-user-pci"' \
        || { vm_log "qemu-system-x86_64 in the chroot has no vfio-user-pci device"; return 1; }
    vm_kernel >/dev/null
    [ -d "$VM_ROOT/lib/modules/$(vm_kver)" ] || { vm_log "no /lib/modules/$(vm_kver) in the chroot"; return 1; }
    [ -x "$VM_ROOT/bin/busybox" ] || { vm_log "no /bin/busybox in the chroot"; return 1; }
    vm_umount_all_under "$VM_ROOT"
    sync
    printf '%s\n' "$VM_STAMP_CONTENT" >"$VM_STAMP.tmp"
    mv -f "$VM_STAMP.tmp" "$VM_STAMP"     # the stamp is written last
}

# The libvirt layer: libvirtd with its QEMU driver, virsh and virt-xml-validate (trixie), on a
# complete base. Its own stamp, written last; an interrupted run installs again.
install_libvirt() {
    local t; t=$(vm_now)
    rm -f "$VM_LIBVIRT_STAMP"
    mount_chroot || return 1
    local logf="$VGPUD_CACHE/apt-libvirt.log"
    : >"$logf"
    vm_log "chroot: apt-get install $VM_LIBVIRT_PACKAGES"
    # shellcheck disable=SC2086 # the package list splits on purpose
    if ! { vm_chroot dpkg --configure -a && vm_chroot apt-get update \
            && vm_chroot apt-get install -y --no-install-recommends $VM_LIBVIRT_PACKAGES; } >>"$logf" 2>&1; then
        tail -n 30 "$logf" >&2
        vm_log "installing libvirt failed (full log: $logf)"
        return 1
    fi
    for b in libvirtd virtlogd virsh virt-xml-validate xmllint; do
        vm_chroot sh -c "command -v $b" >/dev/null || { vm_log "no $b in the chroot after installing libvirt"; return 1; }
    done
    vm_umount_all_under "$VM_ROOT"
    sync
    printf '%s\n' "$VM_LIBVIRT_STAMP_CONTENT" >"$VM_LIBVIRT_STAMP.tmp"
    mv -f "$VM_LIBVIRT_STAMP.tmp" "$VM_LIBVIRT_STAMP"
    vm_log "libvirt installed in $(vm_elapsed "$t") s: $(vm_chroot libvirtd --version)"
}

if stamp_ok; then
    install_libvirt || vm_die "installing libvirt into the chroot failed"
    print_versions
    vm_log "done in $(vm_elapsed "$T0") s"
    exit 0
fi

host_debootstrap
if [ -f "$BASE_OK" ] && [ -x "$VM_ROOT/usr/bin/apt-get" ]; then
    vm_log "resuming an incomplete chroot (base system present, packages not finished)"
    if ! configure_and_install; then
        vm_log "resume failed: rebuilding from scratch"
        vm_umount_all_under "$VM_ROOT"
        do_debootstrap
        configure_and_install || vm_die "installing packages into the fresh chroot failed"
    fi
else
    do_debootstrap
    configure_and_install || vm_die "installing packages into the chroot failed"
fi

install_libvirt || vm_die "installing libvirt into the chroot failed"
print_versions
vm_log "chroot built in $(vm_elapsed "$T0") s"
