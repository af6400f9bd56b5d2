#!/usr/bin/env bash
# tests/vm/libvirt.sh — the libvirt case of the VM tests: libvirtd (Debian trixie's, in the VM
# chroot) defines and starts the domain `vgpuctl libvirt-xml` prints, under TCG, and the guest
# passes the guest driver's selftest on its vGPU.
#
# usage: tests/vm/libvirt.sh [--vgpud BIN --vgpuctl BIN --guest STATIC-BIN] [--work DIR]
#                            [--kubevirt VGPUD-K8S]
#
# With --kubevirt, the domain is KubeVirt's instead (the KubeVirt case): the node agent
# (vgpud-k8s serve --layout) creates the vGPU from a node layout and links its socket into the
# vGPU's directory as for a pod; tests/vm/kubevirt-domain.xml (a domain as KubeVirt's
# virt-launcher writes it, with the vGPU as <hostdev type='mdev'>) goes through the agent's
# KubeVirt rewrite (for tests/vm/kubevirt-vmi.json) and is validated, defined and started the
# same way. Prints "VGPUD-KUBEVIRT seconds=S" then.
#
# vgpud runs on the host, with its sockets given libvirt's QEMU group (the chroot's
# libvirt-qemu, by gid) and mode 0660: QEMU runs as libvirt-qemu, not root. Its run directory
# and the work directory are bind-mounted into the chroot at the same paths. In the chroot,
# in a private mount namespace: /proc, /dev, /sys, a tmpfs /run, temporary libvirt state
# directories, a qemu.conf with `namespaces = []` (the chroot's root is no mount point, so
# QEMU's private /dev cannot be set up), then virtlogd and libvirtd started by hand. The
# domain is validated with virt-xml-validate, defined, started, and awaited until the guest
# powers off. Prints "VGPUD-LIBVIRT seconds=S" on success. Needs root and prepare.sh's chroot
# (with its libvirt layer).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

vm_enter_mount_ns "$0" "$@"

vm_binaries libvirt "$@"
mkdir -p "$WORK"
WORK=$(readlink -f "$WORK")
RUN=$WORK/run
LOG=$WORK/console.log
NAME=vgpud-libvirt-e2e
U=6f1e3c2a-0b4d-4c8e-9a51-3d2f7b8e1c0f

bash "$HERE/prepare.sh" >&2
vm_require_libvirt
bash "$HERE/mkinitramfs.sh" "$WORK/vm.cpio.gz" --init-script "$HERE/guest-selftest.sh" "$GUEST" >&2

exec 8>>"$VGPUD_CACHE/.lock"
flock -s -w 3600 8 || vm_die "timed out waiting for $VGPUD_CACHE/.lock"

QEMU_GID=$(awk -F: '$1 == "libvirt-qemu" { print $3 }' "$VM_ROOT/etc/group")
[ -n "$QEMU_GID" ] || vm_die "no group libvirt-qemu in the chroot"

VGPUD_PID=
AGENT_PID=
MOUNTED=()
in_chroot() { vm_chroot "$@"; }
cleanup() {
    local m i
    if [ -n "$AGENT_PID" ]; then kill "$AGENT_PID" 2>/dev/null || true; fi
    if [ -n "$VGPUD_PID" ]; then kill "$VGPUD_PID" 2>/dev/null || true; fi
    if [ -e "$VM_ROOT/run/libvirt/libvirt-sock" ]; then
        in_chroot virsh -c qemu:///system destroy "$NAME" >/dev/null 2>&1 || true
    fi
    for p in libvirtd virtlogd; do
        if [ -f "$WORK/$p.pid" ]; then kill "$(cat "$WORK/$p.pid")" 2>/dev/null || true; fi
    done
    sleep 0.5
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
        m=${MOUNTED[$i]}
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || vm_log "WARNING: could not unmount $m"
    done
    rmdir "$VM_ROOT$WORK" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mnt() { # mnt ARGS... TARGET
    mount "$@"
    MOUNTED+=("${!#}")
}

# vgpud on the host; its sockets for libvirt's QEMU user.
"$VGPUD" --run-dir "$RUN" --socket-group "$QEMU_GID" --socket-mode 0660 >"$WORK/vgpud.log" 2>&1 &
VGPUD_PID=$!
for _ in $(seq 100); do [ -S "$RUN/control.sock" ] && break; sleep 0.1; done
[ -S "$RUN/control.sock" ] || { cat "$WORK/vgpud.log" >&2; vm_die "vgpud did not start"; }
if [ -z "$K8S_AGENT" ]; then
    "$VGPUCTL" --run-dir "$RUN" create --type vgpud-4c --uuid $U >&2
else
    # The agent makes the vGPU of its layout and its directory (no kubelet here: it keeps
    # waiting for one, as on a node before the kubelet starts).
    printf '[[vgpu]]\nuuid = "%s"\ntype = "vgpud-4c"\n' $U >"$WORK/layout.toml"
    "$K8S_AGENT" serve --run-dir "$RUN" --kubelet-dir "$WORK/kubelet" --layout "$WORK/layout.toml" \
        >"$WORK/agent.log" 2>&1 &
    AGENT_PID=$!
    for _ in $(seq 100); do [ -S "$RUN/k8s/$U/vfio-user.sock" ] && break; sleep 0.1; done
    [ -S "$RUN/k8s/$U/vfio-user.sock" ] || { cat "$WORK/agent.log" >&2; vm_die "the agent made no socket directory"; }
fi

# The chroot's world for libvirtd.
mountpoint -q "$VM_ROOT/proc" || mnt -t proc proc "$VM_ROOT/proc"
mountpoint -q "$VM_ROOT/dev" || mnt --rbind /dev "$VM_ROOT/dev"
mountpoint -q "$VM_ROOT/sys" || mnt --rbind /sys "$VM_ROOT/sys"
mnt -t tmpfs tmpfs "$VM_ROOT/run"
STATE=$WORK/libvirt-state
for d in etc/libvirt/qemu var/lib/libvirt var/log/libvirt var/cache/libvirt; do
    mkdir -p "$STATE/$d" "$VM_ROOT/$d"
    cp -a "$VM_ROOT/$d/." "$STATE/$d/" 2>/dev/null || true
    mnt --bind "$STATE/$d" "$VM_ROOT/$d"
done
cp "$VM_ROOT/etc/libvirt/qemu.conf" "$WORK/qemu.conf"
printf '\n# tests/vm/libvirt.sh: the chroot root is no mount point\nnamespaces = []\n' >>"$WORK/qemu.conf"
mnt --bind "$WORK/qemu.conf" "$VM_ROOT/etc/libvirt/qemu.conf"
mkdir -p "$VM_ROOT$WORK"
mnt --bind "$WORK" "$VM_ROOT$WORK"
chmod 0755 "$WORK" "$RUN"
: >"$LOG"

in_chroot virtlogd -d -p "$WORK/virtlogd.pid"
in_chroot libvirtd -d -p "$WORK/libvirtd.pid"
for _ in $(seq 100); do [ -S "$VM_ROOT/run/libvirt/libvirt-sock" ] && break; sleep 0.1; done
[ -S "$VM_ROOT/run/libvirt/libvirt-sock" ] || vm_die "libvirtd did not start"
vm_log "libvirtd $(in_chroot libvirtd --version | awk '{ print $NF }') running in the chroot"

KERNEL_IN=$(vm_kernel); KERNEL_IN=${KERNEL_IN#"$VM_ROOT"}
# no_timer_check: as boot.sh (a TCG guest on a busy host, behind an interrupt-remapping IOMMU,
# can fail the boot-time IO-APIC timer check and panic).
if [ -z "$K8S_AGENT" ]; then
    "$VGPUCTL" --run-dir "$RUN" libvirt-xml $U --name "$NAME" --domain-type qemu --memory-mib 512 \
        --vcpus 1 --kernel "$KERNEL_IN" --initrd "$WORK/vm.cpio.gz" --cmdline "console=ttyS0 quiet panic=-1 no_timer_check" \
        --console-log "$LOG" >"$WORK/domain.xml"
else
    # KubeVirt's domain, then the hook's rewrite (QEMU sees the vGPU directories where the
    # agent makes them: no container here).
    sed -e "s|@NAME@|$NAME|" -e "s|@UUID@|$U|" -e "s|@KERNEL@|$KERNEL_IN|" -e "s|@INITRD@|$WORK/vm.cpio.gz|" \
        -e "s|@CMDLINE@|console=ttyS0 quiet panic=-1 no_timer_check intel_iommu=on|" -e "s|@LOG@|$LOG|g" \
        "$HERE/kubevirt-domain.xml" >"$WORK/kubevirt-domain.xml"
    in_chroot virt-xml-validate "$WORK/kubevirt-domain.xml" domain >&2
    "$K8S_AGENT" kubevirt-rewrite --vmi "$HERE/kubevirt-vmi.json" --socket-dir "$RUN/k8s" \
        <"$WORK/kubevirt-domain.xml" >"$WORK/domain.xml"
    grep -q "type=\"mdev\"" "$WORK/domain.xml" && vm_die "the rewrite left the mdev host device"
    grep -q "vfio-user-pci" "$WORK/domain.xml" || vm_die "the rewrite added no vfio-user-pci device"
fi
in_chroot virt-xml-validate "$WORK/domain.xml" domain >&2
virsh() { in_chroot virsh -q -c qemu:///system "$@"; }
virsh define "$WORK/domain.xml" >&2
t=$(vm_now)
virsh start "$NAME" >&2 || { tail -20 "$VM_ROOT/var/log/libvirt/qemu/$NAME.log" >&2 || true; vm_die "virsh start failed"; }
state=
for _ in $(seq 600); do
    state=$(virsh domstate "$NAME" 2>/dev/null || true)
    [ "$state" = "shut off" ] && break
    sleep 0.5
done
DT=$(vm_elapsed "$t")
[ "$state" = "shut off" ] || { tail -40 "$LOG" >&2; vm_die "the guest did not power off within 300 s (state: $state)"; }
virsh undefine "$NAME" >&2
tr -d '\r' <"$LOG" >"$WORK/console.txt"
grep -q "VGPU-GUEST-SELFTEST PASS" "$WORK/console.txt" || { tail -40 "$WORK/console.txt" >&2; vm_die "the guest's selftest did not pass"; }
grep -q "VGPUD-VM-EXIT=0" "$WORK/console.txt" || { tail -20 "$WORK/console.txt" >&2; vm_die "the guest's init failed"; }
grep -a "checks" "$WORK/console.txt" | tail -1 >&2 || true
for _ in $(seq 50); do grep -q "client detached" "$WORK/vgpud.log" && break; sleep 0.1; done
grep -q "client detached" "$WORK/vgpud.log" || { cat "$WORK/vgpud.log" >&2; vm_die "vgpud did not see the VM detach"; }
vm_log "libvirt: defined, started and the guest passed the selftest; boot to power-off $DT s"
if [ -n "$K8S_AGENT" ]; then
    echo "VGPUD-KUBEVIRT seconds=$DT"
    kill -TERM "$AGENT_PID"
    wait "$AGENT_PID" || vm_die "the agent exited with $? on SIGTERM"
    AGENT_PID=
else
    echo "VGPUD-LIBVIRT seconds=$DT"
fi
kill -TERM "$VGPUD_PID"
wait "$VGPUD_PID" || vm_die "vgpud exited with $? on SIGTERM"
VGPUD_PID=
