#!/usr/bin/env bash
# tests/vm/e2e.sh — the VM end-to-end test: real Linux guests under QEMU drive vGPUs of a
# running vgpud over vfio-user, with the guest driver (vgpu-guest) inside the guest.
#
# usage: tests/vm/e2e.sh [--vgpud BIN --vgpuctl BIN --guest STATIC-BIN] [--cuda-test DIR]
#                        [--work DIR]
#
# Without the binaries it builds them (release vgpud and vgpuctl; vgpu-guest linked
# statically for the initramfs), so `sudo bash tests/vm/e2e.sh` from a clone boots the VMs.
# The consoles are kept in the work directory (vm1.log, vm2a.log, vm2b.log).
#
# Case 0: the static vgpu-guest runs its selftest from the host over vfio-user.
# Case 1: one VM on a vgpud-4c vGPU runs `vgpu-guest selftest` through vfio-pci in the
#         guest; the console must show the selftest passing and vgpud's log must show the
#         client detaching after executing engine commands.
# Case 2: two VMs at once on two vGPUs (vgpud-4c, vgpud-2c) of the same parent, both
#         passing.
# Case 3 (with --cuda-test DIR): one VM runs a driver-API C program linked against
#         libcuda.so.1 (DIR/driver_api, DIR/libcuda.so.1, with DIR/proc_table.tsv) on its vGPU
#         through in-guest vfio: copies, memsets, streams, events and the rest of
#         tools/guest-cuda/tests/c/driver_api.c. Then vgpud stops on SIGTERM and removes its
#         sockets.
# Prints "VGPUD-E2E case=N seconds=S" per case. Needs root and tests/vm/prepare.sh's chroot.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

vm_binaries e2e "$@"
mkdir -p "$WORK"
RUN=$WORK/run
VGPUD_PID=
cleanup() { [ -z "$VGPUD_PID" ] || kill "$VGPUD_PID" 2>/dev/null || true; }
trap cleanup EXIT

bash "$HERE/prepare.sh" >&2
bash "$HERE/mkinitramfs.sh" "$WORK/vm.cpio.gz" --init-script "$HERE/guest-selftest.sh" "$GUEST" >&2

"$VGPUD" --run-dir "$RUN" >"$WORK/vgpud.log" 2>&1 &
VGPUD_PID=$!
for _ in $(seq 100); do [ -S "$RUN/control.sock" ] && break; sleep 0.1; done
[ -S "$RUN/control.sock" ] || { cat "$WORK/vgpud.log" >&2; vm_die "vgpud did not start"; }

U1=6f1e3c2a-0b4d-4c8e-9a51-3d2f7b8e1c01
U2=6f1e3c2a-0b4d-4c8e-9a51-3d2f7b8e1c02
"$VGPUCTL" --run-dir "$RUN" create --type vgpud-4c --uuid $U1 >&2
"$VGPUCTL" --run-dir "$RUN" create --type vgpud-2c --uuid $U2 >&2

boot() { # boot UUID LOG
    bash "$HERE/boot.sh" --initrd "$WORK/vm.cpio.gz" --socket "$RUN/$1.sock" --viommu \
        --device-props '"rombar":0' --timeout 600 --log "$2" >/dev/null
}
check() { # check LOG
    grep -q "VGPU-GUEST-SELFTEST PASS" "$1" || { tail -40 "$1" >&2; vm_die "guest selftest did not pass ($1)"; }
}

# Case 0: the same static vgpu-guest on the host, over vfio-user (the driver as a vfio-user client)
t=$(vm_now)
"$GUEST" --socket "$RUN/$U1.sock" selftest >"$WORK/host-selftest.log" 2>&1 || { cat "$WORK/host-selftest.log" >&2; vm_die "host-side vgpu-guest selftest over vfio-user failed"; }
vm_log "case 0: $(tail -1 "$WORK/host-selftest.log") (host, vfio-user)"
echo "VGPUD-E2E case=0 seconds=$(vm_elapsed "$t")"
for _ in $(seq 50); do grep -q "client detached" "$WORK/vgpud.log" && break; sleep 0.1; done

doorbell_count() { "$VGPUCTL" --run-dir "$RUN" status "$1" --json | sed -n "s/.*\"doorbells_$2\": *\([0-9]*\).*/\1/p"; }
# Case 1 (doorbell counters of U1 before it: case 0's host-side driver rang it too)
polled0=$(doorbell_count $U1 polled); trapped0=$(doorbell_count $U1 trapped)
t=$(vm_now)
boot $U1 "$WORK/vm1.log" || { tail -40 "$WORK/vm1.log" >&2; vm_die "VM 1 failed"; }
check "$WORK/vm1.log"
vm_log "case 1: selftest passed in the guest"
echo "VGPUD-E2E case=1 seconds=$(vm_elapsed "$t")"
for _ in $(seq 50); do [ "$(grep -c "client detached" "$WORK/vgpud.log")" -ge 2 ] && break; sleep 0.1; done
detached=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/vgpud.log" | grep "client detached" | grep "vgpu=$U1" | tail -1)
commands=$(echo "$detached" | sed -n 's/.*commands=\([0-9]*\).*/\1/p')
[ -n "$commands" ] && [ "$commands" -gt 0 ] || { cat "$WORK/vgpud.log" >&2; vm_die "vgpud did not log the guest's work"; }
vm_log "case 1: vgpud ran $commands engine commands for the guest"
# The guest rang through the doorbell page mapped into it: vgpud saw doorbells by polling
# (a trapped doorbell page write would count as trapped).
polled=$(( $(doorbell_count $U1 polled) - polled0 )); trapped=$(( $(doorbell_count $U1 trapped) - trapped0 ))
[ "$polled" -gt 0 ] || vm_die "no untrapped doorbell from the guest (polled=$polled trapped=$trapped)"
vm_log "case 1: doorbells from inside the guest: $polled seen by polling (untrapped), $trapped trapped"

# Case 2: two VMs at once on two vGPUs of the same parent
t=$(vm_now)
boot $U1 "$WORK/vm2a.log" & a=$!
boot $U2 "$WORK/vm2b.log" & b=$!
ra=0; rb=0
wait $a || ra=$?
wait $b || rb=$?
[ $ra -eq 0 ] || { tail -40 "$WORK/vm2a.log" >&2; vm_die "VM 2a failed ($ra)"; }
[ $rb -eq 0 ] || { tail -40 "$WORK/vm2b.log" >&2; vm_die "VM 2b failed ($rb)"; }
check "$WORK/vm2a.log"
check "$WORK/vm2b.log"
vm_log "case 2: two VMs passed side by side"
echo "VGPUD-E2E case=2 seconds=$(vm_elapsed "$t")"
"$VGPUCTL" --run-dir "$RUN" status >&2

# Case 3: CUDA in the guest
if [ -n "$CUDA_TEST" ]; then
    t=$(vm_now)
    # The program and the library are dynamically linked: the initramfs gets the C runtime
    # they load (the loader, libc, libgcc_s) at the paths they were linked against.
    files=(--file "$CUDA_TEST/libcuda.so.1=/lib/cuda/libcuda.so.1"
           --file "$CUDA_TEST/proc_table.tsv=/etc/vgpu/proc_table.tsv")
    for lib in $(ldd "$CUDA_TEST/driver_api" "$CUDA_TEST/libcuda.so.1" 2>/dev/null \
                 | sed -n 's/.*=> \(\/[^ ]*\).*/\1/p; s/^[[:space:]]*\(\/[^ ]*ld-linux[^ ]*\).*/\1/p' | sort -u); do
        case "$lib" in */libcuda.so*) continue ;; esac
        files+=(--file "$(readlink -f "$lib")=$lib")
    done
    bash "$HERE/mkinitramfs.sh" "$WORK/vm-cuda.cpio.gz" --init-script "$HERE/guest-cuda.sh" \
        "${files[@]}" "$CUDA_TEST/driver_api" >&2
    bash "$HERE/boot.sh" --initrd "$WORK/vm-cuda.cpio.gz" --socket "$RUN/$U1.sock" --viommu \
        --device-props '"rombar":0' --timeout 600 --log "$WORK/vm3.log" >/dev/null \
        || { tail -60 "$WORK/vm3.log" >&2; vm_die "VM 3 (CUDA) failed"; }
    grep -q "VGPU-GUEST-CUDA PASS" "$WORK/vm3.log" || { tail -60 "$WORK/vm3.log" >&2; vm_die "the CUDA program did not pass in the guest"; }
    vm_log "case 3: $(grep -a '^PASS' "$WORK/vm3.log" | tail -1 | tr -d '\r') (libcuda.so.1 in the guest, vfio)"
    echo "VGPUD-E2E case=3 seconds=$(vm_elapsed "$t")"
fi

kill -TERM "$VGPUD_PID"
wait "$VGPUD_PID" || vm_die "vgpud exited with $? on SIGTERM"
VGPUD_PID=
[ ! -e "$RUN/control.sock" ] && [ ! -e "$RUN/$U1.sock" ] || vm_die "sockets left behind"
vm_log "vgpud stopped cleanly; consoles and logs in $WORK"
