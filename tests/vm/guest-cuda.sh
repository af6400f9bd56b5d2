# tests/vm/guest-cuda.sh — the guest side of the VM test's CUDA case (runs as /bin/vm-init.sh):
# binds the vGPU to vfio-pci, then runs a driver-API C program linked against libcuda.so.1
# (tools/guest-cuda/tests/c/driver_api.c) on it through in-guest vfio. The program, the
# library and the C runtime it needs are in the initramfs; any failure ends the script with a
# non-zero status, which /init reports as VGPUD-VM-EXIT.
set -e
/bin/vfio-load.sh
BDF=
for d in /sys/bus/pci/devices/*; do
    class=$(cat "$d/class")
    if [ "$(cat "$d/vendor")" = 0x7667 ] && [ "${class%??}" = 0x0302 ]; then
        BDF=${d##*/}
        break
    fi
done
[ -n "$BDF" ] || { echo "VGPU-GUEST-CUDA no vGPU on the PCI bus"; exit 1; }
echo vfio-pci > "/sys/bus/pci/devices/$BDF/driver_override"
echo "$BDF" > /sys/bus/pci/drivers_probe
[ -e "/sys/bus/pci/devices/$BDF/driver" ] || { echo "VGPU-GUEST-CUDA vfio-pci did not bind $BDF"; exit 1; }
# The library finds the vGPU bound to vfio-pci by itself (no VGPU_DEVICE needed).
VGPU_DMA_MB=128 LD_LIBRARY_PATH=/lib/cuda:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu \
    /bin/driver_api /etc/vgpu/proc_table.tsv
echo "VGPU-GUEST-CUDA PASS $BDF"
