# tests/vm/guest-selftest.sh — the guest side of the VM end-to-end test (runs as
# /bin/vm-init.sh in the initramfs). Finds the vGPU by vendor id and class, binds it to
# vfio-pci (the VM has an emulated IOMMU: the Debian kernel has no VFIO no-IOMMU mode),
# then runs the guest driver's info and selftest on it. Any failure ends the script with
# a non-zero status, which /init reports as VGPUD-VM-EXIT.
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
[ -n "$BDF" ] || { echo "VGPU-GUEST no vGPU (vendor 0x7667, class 0x0302xx) on the PCI bus"; exit 1; }
echo "VGPU-GUEST found vGPU at $BDF device $(cat /sys/bus/pci/devices/$BDF/device)"
echo vfio-pci > "/sys/bus/pci/devices/$BDF/driver_override"
echo "$BDF" > /sys/bus/pci/drivers_probe
[ -e "/sys/bus/pci/devices/$BDF/driver" ] || { echo "VGPU-GUEST vfio-pci did not bind $BDF"; exit 1; }
vgpu-guest --transport vfio --device "$BDF" info
vgpu-guest --transport vfio --device "$BDF" selftest
# A short load keeps work in flight, so the device polls the doorbell page (ABI 1.1) and
# the guest's doorbells are stores to mapped memory that never leave the guest.
vgpu-guest --transport vfio --device "$BDF" load spin --unit-us 500 --seconds 1 --json
echo "VGPU-GUEST-SELFTEST PASS $BDF"
