#!/usr/bin/env bash
# tests/vm/boot.sh — boot the trixie guest kernel with a given initramfs under QEMU (TCG),
# optionally with vfio-user-pci devices, and wait for it to power off.
#
# usage: tests/vm/boot.sh --initrd FILE [--socket PATH]... [--timeout S] [--log FILE]
#                         [--append "ARGS"] [--viommu] [--mem MiB] [--smp N] [--no-check]
#                         [--device-props 'JSON-MEMBERS']
#                         [-- EXTRA-QEMU-ARGS...]
#
#   --initrd FILE    initramfs from tests/vm/mkinitramfs.sh (host path)
#   --socket PATH    a vfio-user server's Unix socket (host path; it must already listen);
#                    one -device vfio-user-pci each, in order (guest slots 00:02.0, 00:03.0, ...
#                    after the q35 defaults). Its directory is bind-mounted into the chroot at
#                    the same path.
#   --timeout S      kill QEMU after S seconds (default 300) and exit 124
#   --log FILE       also write the serial console (and QEMU's messages) to FILE
#   --append ARGS    more kernel command line
#   --viommu         add an emulated Intel IOMMU (-device intel-iommu,caching-mode=on): the
#                    Debian kernel has no VFIO no-IOMMU mode, so vfio-pci in the guest needs it
#   --mem MiB        guest RAM (default 512; always a shared memfd so vfio-user can map it)
#   --smp N          guest CPUs (default 1)
#   --no-check       exit with QEMU's status only; do not require the VGPUD-VM-EXIT line
#   --device-props P more members for every vfio-user-pci device's JSON, e.g. '"rombar":0'
#                    (silences QEMU's option-ROM warning when the server has no ROM region)
#
# Exit status: 0 when QEMU exited cleanly and the guest printed "VGPUD-VM-EXIT=0";
# 124 on timeout; 3 when the guest never printed VGPUD-VM-EXIT (panic, crash, bad initrd);
# 4 when it printed a non-zero VGPUD-VM-EXIT (its /bin/vm-init.sh failed); otherwise
# QEMU's own non-zero status. Needs root and the chroot from tests/vm/prepare.sh.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

usage() { sed -n '2,/^set -euo/p' "$0" | sed -n 's/^# \{0,1\}//p' >&2; exit 2; }

# private mount namespace (mounts vanish with the process); argv is re-parsed after the re-exec
vm_enter_mount_ns "$0" "$@"

INITRD=
SOCKETS=()
TIMEOUT=300
LOG=
APPEND=
VIOMMU=0
MEM=512
SMP=1
CHECK=1
DEVPROPS=
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --initrd) [ $# -ge 2 ] || usage; INITRD=$2; shift 2 ;;
        --socket) [ $# -ge 2 ] || usage; SOCKETS+=("$2"); shift 2 ;;
        --timeout) [ $# -ge 2 ] || usage; TIMEOUT=$2; shift 2 ;;
        --log) [ $# -ge 2 ] || usage; LOG=$2; shift 2 ;;
        --append) [ $# -ge 2 ] || usage; APPEND=$2; shift 2 ;;
        --viommu) VIOMMU=1; shift ;;
        --mem) [ $# -ge 2 ] || usage; MEM=$2; shift 2 ;;
        --smp) [ $# -ge 2 ] || usage; SMP=$2; shift 2 ;;
        --no-check) CHECK=0; shift ;;
        --device-props) [ $# -ge 2 ] || usage; DEVPROPS=$2; shift 2 ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) usage ;;
        *) vm_log "unknown argument: $1"; usage ;;
    esac
done
[ -n "$INITRD" ] || { vm_log "--initrd is required"; usage; }
[ -f "$INITRD" ] || vm_die "no such initrd: $INITRD"
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || vm_die "--timeout wants whole seconds"
[[ "$MEM" =~ ^[0-9]+$ ]] || vm_die "--mem wants MiB"
[[ "$SMP" =~ ^[0-9]+$ ]] || vm_die "--smp wants a number"

vm_require_root
# Resolve host paths before entering the mount namespace / chroot.
INITRD=$(readlink -f "$INITRD")
[ -z "$LOG" ] || { mkdir -p "$(dirname "$LOG")"; LOG=$(readlink -f "$LOG"); }
for i in "${!SOCKETS[@]}"; do
    s=${SOCKETS[$i]}
    case "$s" in /*) ;; *) s="$PWD/$s" ;; esac
    [[ "$s" != *[\"\\,]* ]] || vm_die "socket path must not contain quotes, backslashes or commas: $s"
    [ -S "$s" ] || vm_log "WARNING: $s is not (yet) a listening Unix socket; QEMU will fail to connect"
    SOCKETS[$i]=$s
done

vm_require_chroot

exec 8>>"$VGPUD_CACHE/.lock"
flock -s -w 3600 8 || vm_die "timed out waiting for $VGPUD_CACHE/.lock"

KERNEL=$(vm_kernel)
KERNEL_IN=${KERNEL#"$VM_ROOT"}
RUNDIR=$(mktemp -d "$VM_ROOT/var/tmp/vgpud-boot.XXXXXX")
RUNDIR_IN=${RUNDIR#"$VM_ROOT"}
OWN_LOG=0
if [ -z "$LOG" ]; then LOG="$RUNDIR.console.log"; OWN_LOG=1; fi

MOUNTED=()
cleanup() {
    local m i
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
        m=${MOUNTED[$i]}
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || vm_log "WARNING: could not unmount $m"
    done
    rm -rf --one-file-system "$RUNDIR"
    [ "$OWN_LOG" = 0 ] || rm -f "$LOG"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mnt() { # mnt ARGS... TARGET
    mount "$@"
    MOUNTED+=("${!#}")
}
mountpoint -q "$VM_ROOT/proc" || mnt -t proc proc "$VM_ROOT/proc"
mountpoint -q "$VM_ROOT/dev" || mnt --bind /dev "$VM_ROOT/dev"
# socket directories, shortest first; skip those already visible through a bound parent
BOUND=()
while read -r d; do
    [ -n "$d" ] || continue
    skip=0
    for b in "${BOUND[@]}"; do case "$d/" in "$b"/*) skip=1 ;; esac; done
    [ "$skip" = 0 ] || continue
    case "$d" in /|/proc|/proc/*|/dev|/dev/*|/sys|/sys/*) vm_die "refusing to bind socket directory $d" ;; esac
    [ -d "$d" ] || vm_die "socket directory $d does not exist"
    mkdir -p "$VM_ROOT$d"
    mnt --bind "$d" "$VM_ROOT$d"
    BOUND+=("$d")
done < <(for s in "${SOCKETS[@]}"; do dirname "$s"; done | awk '{ print length($0) "\t" $0 }' | sort -n -u | cut -f2-)

cp "$INITRD" "$RUNDIR/initrd"

# no_timer_check: under TCG on a busy host (CI runs VM tests side by side) the guest's boot-time
# check that the timer interrupt arrives through the IO-APIC can miss, and with an interrupt-
# remapping IOMMU the kernel then panics ("timer doesn't work through Interrupt-remapped
# IO-APIC"); the check tests the host's load, not vgpud.
CMDLINE="console=ttyS0 quiet panic=-1 no_timer_check vfio.enable_unsafe_noiommu_mode=1"
QEMU=(qemu-system-x86_64 -accel tcg -m "$MEM" -smp "$SMP"
      -object "memory-backend-memfd,id=mem,size=${MEM}M,share=on"
      -machine q35,memory-backend=mem
      -nographic -no-reboot -nic none
      -kernel "$KERNEL_IN" -initrd "$RUNDIR_IN/initrd")
if [ "$VIOMMU" = 1 ]; then
    QEMU+=(-device intel-iommu,caching-mode=on)
    CMDLINE="$CMDLINE intel_iommu=on"
fi
[ -z "$APPEND" ] || CMDLINE="$CMDLINE $APPEND"
QEMU+=(-append "$CMDLINE")
for s in "${SOCKETS[@]}"; do
    QEMU+=(-device "{\"driver\":\"vfio-user-pci\",\"socket\":{\"type\":\"unix\",\"path\":\"$s\"}${DEVPROPS:+,$DEVPROPS}}")
done
QEMU+=("${EXTRA[@]}")

vm_log "booting $(basename "$KERNEL") with $INITRD, ${#SOCKETS[@]} vfio-user device(s), timeout ${TIMEOUT}s"
vm_log "qemu: ${QEMU[*]}"
T0=$(vm_now)
set +e
timeout -k 10 "$TIMEOUT" chroot "$VM_ROOT" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root "${QEMU[@]}" \
    </dev/null 2>&1 | tee "$LOG"
st=("${PIPESTATUS[@]}")
set -e
RC=${st[0]}
DT=$(vm_elapsed "$T0")

if [ "$RC" = 124 ] || [ "$RC" = 137 ]; then
    vm_log "TIMEOUT: QEMU killed after ${TIMEOUT}s"
    exit 124
fi
EXIT_LINE=$(tr -d '\r' <"$LOG" | grep -a -o 'VGPUD-VM-EXIT=[0-9]*.*' | tail -n1 || true)
vm_log "QEMU exited with status $RC after $DT s (boot to poweroff); guest: ${EXIT_LINE:-no VGPUD-VM-EXIT line}"
[ "$RC" = 0 ] || exit "$RC"
[ "$CHECK" = 1 ] || exit 0
if tr -d '\r' <"$LOG" | grep -aq 'Kernel panic'; then
    vm_log "guest kernel panicked"
    exit 3
fi
[ -n "$EXIT_LINE" ] || { vm_log "guest did not report VGPUD-VM-EXIT (crashed before /init finished?)"; exit 3; }
GRC=${EXIT_LINE#VGPUD-VM-EXIT=}; GRC=${GRC%% *}
[ "$GRC" = 0 ] || { vm_log "guest /bin/vm-init.sh failed with status $GRC"; exit 4; }
exit 0
