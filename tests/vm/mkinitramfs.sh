#!/usr/bin/env bash
# tests/vm/mkinitramfs.sh — build a busybox initramfs for the VM tests.
#
# usage: tests/vm/mkinitramfs.sh OUT.cpio.gz [--init-script FILE] [--file SRC=DEST]...
#                                [--module NAME]... [--no-modules] [BINARY...]
#
#   OUT.cpio.gz          the gzip'ed newc cpio archive to write (host path)
#   --init-script FILE   copied to /bin/vm-init.sh; /init runs it with busybox sh
#   --file SRC=DEST      copy host file SRC to absolute path DEST in the guest
#   --module NAME        also include kernel module NAME (and what it depends on)
#   --no-modules         leave out the kernel modules
#   BINARY...            copied to /bin/<basename> (mode 0755); should be static
#                        (x86_64-unknown-linux-musl, or glibc with +crt-static): the guest has no libc
#
# Contents: /bin/busybox (from the chroot's busybox-static) and a link per applet, the files
# above, /bin/vfio-load.sh, the modules vfio-pci, vfio_iommu_type1 and uio_pci_generic need from
# the chroot's kernel (uncompressed, with a matching modules.dep, so busybox insmod and
# `modprobe NAME` work) under /lib/modules/<kver>/, and /init, which mounts proc, sys, devtmpfs,
# runs /bin/vm-init.sh (or, without one, prints the PCI devices), prints
# "VGPUD-VM-EXIT=<status>" and powers off (poweroff -f). tests/vm/boot.sh reads that line.
#
# Guest helpers: `/bin/vfio-load.sh` insmods vfio, vfio_iommu_type1 and vfio-pci with their
# dependencies, in order (see the README: Debian's kernel has no VFIO no-IOMMU mode);
# `/bin/pci-list.sh` prints one line per PCI function.
# Needs the chroot from tests/vm/prepare.sh (uses its busybox, cpio and kernel modules).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

usage() { sed -n '2,/^set -euo/p' "$0" | sed -n 's/^# \{0,1\}//p' >&2; exit 2; }

[ $# -ge 1 ] || usage
case "$1" in -h|--help) usage ;; esac
OUT=$1; shift
INIT_SCRIPT=
MODULES=1
EXTRA_MODULES=()
BINARIES=()
FILES=()
while [ $# -gt 0 ]; do
    case "$1" in
        --init-script) [ $# -ge 2 ] || usage; INIT_SCRIPT=$2; shift 2 ;;
        --init-script=*) INIT_SCRIPT=${1#*=}; shift ;;
        --file) [ $# -ge 2 ] || usage; FILES+=("$2"); shift 2 ;;
        --file=*) FILES+=("${1#*=}"); shift ;;
        --no-modules) MODULES=0; shift ;;
        --module) [ $# -ge 2 ] || usage; EXTRA_MODULES+=("$2"); shift 2 ;;
        -h|--help) usage ;;
        --) shift; BINARIES+=("$@"); break ;;
        -*) vm_log "unknown option $1"; usage ;;
        *) BINARIES+=("$1"); shift ;;
    esac
done

vm_require_root
vm_require_chroot
T0=$(vm_now)

for f in ${INIT_SCRIPT:+"$INIT_SCRIPT"} "${BINARIES[@]}"; do
    [ -f "$f" ] || vm_die "no such file: $f"
done
for b in "${BINARIES[@]}"; do
    if LC_ALL=C grep -qa -e '/lib64/ld-linux-x86-64.so' -e '/lib/ld-musl-x86_64.so' "$b"; then
        vm_log "WARNING: $b looks dynamically linked (has an ELF interpreter); the guest has no libc"
    fi
done

exec 8>>"$VGPUD_CACHE/.lock"
flock -s -w 3600 8 || vm_die "timed out waiting for $VGPUD_CACHE/.lock"

# Stage inside the chroot so that its cpio (and busybox) can be used without host tools.
STAGE_BASE="$VM_ROOT/var/tmp"
STAGE=$(mktemp -d "$STAGE_BASE/vgpud-initramfs.XXXXXX")
STAGE_IN_CHROOT=${STAGE#"$VM_ROOT"}
trap 'rm -rf --one-file-system "$STAGE"' EXIT
R="$STAGE/root"
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,etc,root,mnt,lib/modules}
chmod 1777 "$R/tmp"

# busybox + applet links (the static binary runs on the host as well)
install -m 0755 "$VM_ROOT/bin/busybox" "$R/bin/busybox"
"$R/bin/busybox" --list-full | while read -r applet; do
    [ -e "$R/$applet" ] || [ -L "$R/$applet" ] || ln -s /bin/busybox "$R/$applet"
done
[ -L "$R/bin/sh" ] || ln -s busybox "$R/bin/sh"

# device nodes needed before devtmpfs is mounted (the kernel opens /dev/console for init)
mknod -m 0600 "$R/dev/console" c 5 1 2>/dev/null || vm_log "WARNING: mknod not permitted; /init reopens the console after mounting devtmpfs"
mknod -m 0666 "$R/dev/null" c 1 3 2>/dev/null || true

printf 'root:x:0:0:root:/root:/bin/sh\n' >"$R/etc/passwd"
printf 'root:x:0:\n' >"$R/etc/group"

# Kernel modules: the dependency closure (from the chroot's modules.dep) of vfio-pci and
# vfio_iommu_type1 (plus uio_pci_generic and any --module), uncompressed so that busybox
# insmod/modprobe can load them, with a matching modules.dep for `modprobe NAME`.
KVER=$(vm_kver)
MODDIR="/lib/modules/$KVER"
DEP="$VM_ROOT$MODDIR/modules.dep"
printf '%s\n' "$KVER" >"$R/etc/vgpud-kver"
: >"$R/etc/vfio-modules"

# closure NAME... -> module paths (relative to MODDIR, as in modules.dep), dependencies first;
# a last line "BUILTIN name..." lists wanted names that are not loadable modules.
closure() {
    awk -v want="$*" '
        function base(p,   b) { b = p; sub(/.*\//, "", b); sub(/\.ko(\.[a-z]+)?$/, "", b); gsub(/-/, "_", b); return b }
        function visit(m,   n, i, d) {
            if (m in done) return
            done[m] = 1
            if (!(m in path)) { missing = missing " " m; return }
            n = split(deps[m], d, " ")
            for (i = 1; i <= n; i++) visit(d[i])
            order[++cnt] = path[m]
        }
        {
            p = $1; sub(/:$/, "", p); m = base(p); path[m] = p; deps[m] = ""
            for (i = 2; i <= NF; i++) deps[m] = deps[m] " " base($i)
        }
        END {
            n = split(want, w, " ")
            for (i = 1; i <= n; i++) { x = w[i]; gsub(/-/, "_", x); visit(x) }
            for (i = 1; i <= cnt; i++) print order[i]
            if (missing != "") print "BUILTIN" missing
        }' "$DEP"
}
strip_z() { local p=${1%.xz}; p=${p%.zst}; printf '%s\n' "${p%.gz}"; }

if [ "$MODULES" = 1 ]; then
    [ -f "$DEP" ] || vm_die "no $MODDIR/modules.dep in the chroot"
    mapfile -t ALL < <(closure vfio_pci vfio_iommu_type1 uio_pci_generic "${EXTRA_MODULES[@]}")
    mapfile -t VFIO < <(closure vfio_pci vfio_iommu_type1)
    : >"$R$MODDIR.dep.tmp"
    for p in "${ALL[@]}"; do
        case "$p" in BUILTIN*)
            for m in ${p#BUILTIN}; do
                grep -Eq "/${m//_/[-_]}\.ko\$" "$VM_ROOT$MODDIR/modules.builtin" \
                    || vm_die "module $m is neither in modules.dep nor modules.builtin of $KVER"
                vm_log "module $m is built into $KVER"
            done
            continue ;;
        esac
        src="$VM_ROOT$MODDIR/$p"
        dst="$R$MODDIR/$(strip_z "$p")"
        mkdir -p "$(dirname "$dst")"
        case "$p" in
            *.ko.xz) "$R/bin/busybox" unxz -c "$src" >"$dst" ;;
            *.ko.gz) "$R/bin/busybox" gunzip -c "$src" >"$dst" ;;
            *.ko.zst) zstd -q -d -c "$src" >"$dst" || vm_die "cannot decompress $p (need zstd on the host)" ;;
            *.ko) cp "$src" "$dst" ;;
            *) vm_die "unexpected module file $p" ;;
        esac
        # modules.dep line for this module, paths uncompressed
        grep -E "^${p//./\\.}:" "$DEP" | sed -E 's/\.ko\.(xz|zst|gz)/.ko/g' >>"$R$MODDIR.dep.tmp"
    done
    mv "$R$MODDIR.dep.tmp" "$R$MODDIR/modules.dep"
    cp "$VM_ROOT$MODDIR/modules.builtin" "$R$MODDIR/"
    for p in "${VFIO[@]}"; do
        case "$p" in BUILTIN*) continue ;; esac
        printf '%s\n' "$MODDIR/$(strip_z "$p")" >>"$R/etc/vfio-modules"
    done
    if grep -q '^CONFIG_VFIO_NOIOMMU=y' "$VM_ROOT/boot/config-$KVER"; then
        : >"$R/etc/vfio-noiommu-available"
    fi
fi

cat >"$R/bin/vfio-load.sh" <<'EOF'
#!/bin/sh
# Load vfio, vfio_iommu_type1, vfio-pci (and what they need) from /etc/vfio-modules, in
# dependency order, with busybox insmod. insmod does not read module options from the kernel
# command line, so enable_unsafe_noiommu_mode=1 is passed here -- only where the kernel was
# built with CONFIG_VFIO_NOIOMMU (Debian's 6.12 is not: boot with tests/vm/boot.sh --viommu
# instead, so that the guest has an IOMMU for vfio-pci). Loaded or built-in ones are skipped.
# Exit status 0 when /dev/vfio/vfio exists afterwards.
rc=0
while read -r ko; do
    [ -n "$ko" ] || continue
    name=${ko##*/}; name=${name%.ko}; mod=$(echo "$name" | tr - _)
    [ -d "/sys/module/$mod" ] && continue
    opts=
    [ "$mod" = vfio ] && [ -e /etc/vfio-noiommu-available ] && opts=enable_unsafe_noiommu_mode=1
    insmod "$ko" $opts || { echo "vfio-load: insmod $ko $opts failed" >&2; rc=1; }
done < /etc/vfio-modules
[ -e /dev/vfio/vfio ] || { echo "vfio-load: no /dev/vfio/vfio" >&2; rc=1; }
exit $rc
EOF

cat >"$R/bin/pci-list.sh" <<'EOF'
#!/bin/sh
# One line per PCI function: BDF vendor device class [driver]
for d in /sys/bus/pci/devices/*; do
    [ -e "$d/vendor" ] || continue
    drv=
    [ -e "$d/driver" ] && drv=$(basename "$(readlink "$d/driver")")
    echo "pci ${d##*/} vendor=$(cat "$d/vendor") device=$(cat "$d/device") class=$(cat "$d/class")${drv:+ driver=$drv}"
done
EOF

cat >"$R/init" <<'EOF'
#!/bin/sh
# vgpud VM test initramfs /init
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null || true
mount -t tmpfs tmpfs /dev/shm 2>/dev/null || true
mount -t tmpfs tmpfs /tmp 2>/dev/null || true
ip link set lo up 2>/dev/null || true
echo "VGPUD-VM-BOOTED kernel=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime)"
if [ -f /bin/vm-init.sh ]; then
    sh /bin/vm-init.sh
    rc=$?
else
    echo "PCI devices:"
    sh /bin/pci-list.sh
    rc=0
fi
sync
echo "VGPUD-VM-EXIT=$rc uptime=$(cut -d' ' -f1 /proc/uptime)"
poweroff -f
# not reached; keep init alive so the kernel does not panic if poweroff failed
while :; do sleep 3600; done
EOF
chmod 0755 "$R/init" "$R/bin/vfio-load.sh" "$R/bin/pci-list.sh"

if [ -n "$INIT_SCRIPT" ]; then
    install -m 0755 "$INIT_SCRIPT" "$R/bin/vm-init.sh"
fi
for b in "${BINARIES[@]}"; do
    install -m 0755 "$b" "$R/bin/$(basename "$b")"
done
for spec in "${FILES[@]}"; do
    src=${spec%%=*}; dst=${spec#*=}
    [ "$src" != "$spec" ] && [ -f "$src" ] && [ "${dst#/}" != "$dst" ] || vm_die "bad --file $spec (want SRC=/abs/dest)"
    mkdir -p "$R$(dirname "$dst")"
    install -m "$(stat -c %a "$src")" "$src" "$R$dst"
done

# pack with the chroot's cpio (newc) and gzip
mkdir -p "$(dirname "$OUT")"
OUT_ABS=$(readlink -f "$OUT")
vm_chroot /bin/sh -c "cd '$STAGE_IN_CHROOT/root' && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0 | gzip -6 -n" >"$OUT_ABS.tmp"
[ -s "$OUT_ABS.tmp" ] && "$R/bin/busybox" gzip -t "$OUT_ABS.tmp" || { rm -f "$OUT_ABS.tmp"; vm_die "packing the initramfs failed"; }
mv -f "$OUT_ABS.tmp" "$OUT_ABS"
vm_log "wrote $OUT_ABS ($(du -h "$OUT_ABS" | cut -f1), kernel $KVER, vfio modules: $(tr '\n' ' ' <"$R/etc/vfio-modules" | sed 's#/lib/modules/[^/]*/kernel/##g')) in $(vm_elapsed "$T0") s"
