"""The device as a CUDA program sees it: name, CUDA version, memory and every cuDeviceGetAttribute
value of CUDA 13.0 (numbers 1-147), through whichever libcuda.so.1 the loader finds.

usage: identity.py                         prints the device as JSON
       identity.py compare NATIVE GUEST    one line: what matches; exit 1 if the GPU's own
                                           figures (name, version, compute capability, limits)
                                           differ through the library
"""
import ctypes
import json
import sys

# Attributes the guest library decides itself (docs/cuda.md, tools/guest-cuda/src/device.rs):
# host memory, IPC, pools, VMM, cooperative and cluster launches, stream memory operations,
# the PCI location, the compute mode and the kernel time limit.
LIBRARY_DECIDES = {17, 18, 19, 20, 33, 34, 35, 41, 50, 83, 84, 86, 88, 89, 91, 92, 93, 94, 95, 96,
                   98, 99, 100, 101, 102, 103, 104, 105, 107, 115, 116, 117, 118, 119, 120, 121,
                   122, 123, 124, 125, 133, 134, 143, 144, 145, 146}
# The GPU's own figures that must come through unchanged.
MUST_MATCH = {1: "max threads/block", 10: "warp size", 16: "multiprocessors", 75: "cc major",
              76: "cc minor", 8: "shared/block", 97: "shared/block opt-in",
              81: "shared/SM", 12: "registers/block", 39: "threads/SM"}


def dump():
    cu = ctypes.CDLL("libcuda.so.1")
    assert cu.cuInit(0) == 0, "cuInit"
    dev = ctypes.c_int()
    assert cu.cuDeviceGet(ctypes.byref(dev), 0) == 0, "cuDeviceGet"
    name = ctypes.create_string_buffer(256)
    cu.cuDeviceGetName(name, 256, dev)
    ver = ctypes.c_int()
    cu.cuDriverGetVersion(ctypes.byref(ver))
    mem = ctypes.c_size_t()
    cu.cuDeviceTotalMem_v2(ctypes.byref(mem), dev)
    attrs = {}
    for a in range(1, 148):
        v = ctypes.c_int()
        r = cu.cuDeviceGetAttribute(ctypes.byref(v), a, dev)
        attrs[a] = v.value if r == 0 else None
    print(json.dumps({"name": name.value.decode(errors="replace"), "version": ver.value,
                      "memory": mem.value, "attributes": attrs}))


def compare(native_path, guest_path):
    n, g = json.load(open(native_path)), json.load(open(guest_path))
    na, ga = n["attributes"], g["attributes"]
    same = [a for a in na if na[a] == ga.get(a)]
    decided = [a for a in na if na[a] != ga.get(a) and int(a) in LIBRARY_DECIDES]
    other = [a for a in na if na[a] != ga.get(a) and int(a) not in LIBRARY_DECIDES]
    bad = [MUST_MATCH[int(a)] for a in other if int(a) in MUST_MATCH]
    ok = n["name"] == g["name"] and n["version"] == g["version"] and not bad
    print("name %s (%r), version %s/%s, %d of %d attributes equal, %d decided by the library, "
          "%d others differ%s%s" % (
              "equal" if n["name"] == g["name"] else "DIFFERS", g["name"], n["version"], g["version"],
              len(same), len(na), len(decided), len(other),
              (": " + ", ".join("%s: %s/%s" % (a, na[a], ga.get(a)) for a in other[:12])) if other else "",
              ("; GPU figures differ: " + ", ".join(bad)) if bad else ""))
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    dump()
