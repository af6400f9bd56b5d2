"""A Python program on the CUDA driver API through ctypes, as cuda-python's lowest layer and
numba's old bindings use it: libcuda.so.1 (the vgpud guest library) on a vGPU.

Checks init, device and attribute queries, contexts, memory, copies, memsets, streams,
events, cuGetProcAddress and error paths; prints "ok <check>" lines and "PASS <n> checks".
Exits 1 at the first failure. VGPU_SOCKET names the vGPU; VGPU_TEST_VRAM its framebuffer.
"""
import ctypes
import os
import sys

cuda = ctypes.CDLL("libcuda.so.1")
checks = 0


def check(cond, what):
    global checks
    if not cond:
        print("FAIL", what)
        sys.exit(1)
    checks += 1


def call(name, *args, want=0):
    r = getattr(cuda, name)(*args)
    check(r == want, "%s = %d, expected %d" % (name, r, want))


u64, i32, u32, sz = ctypes.c_uint64, ctypes.c_int, ctypes.c_uint, ctypes.c_size_t
vp = ctypes.c_void_p
for fn, types in {
    "cuMemAlloc_v2": [ctypes.POINTER(u64), sz],
    "cuMemFree_v2": [u64],
    "cuMemcpyHtoD_v2": [u64, vp, sz],
    "cuMemcpyDtoH_v2": [vp, u64, sz],
    "cuMemcpyDtoD_v2": [u64, u64, sz],
    "cuMemcpyHtoDAsync_v2": [u64, vp, sz, vp],
    "cuMemcpyDtoHAsync_v2": [vp, u64, sz, vp],
    "cuMemsetD8_v2": [u64, ctypes.c_ubyte, sz],
    "cuMemsetD32Async": [u64, u32, sz, vp],
    "cuStreamSynchronize": [vp],
    "cuEventRecord": [vp, vp],
    "cuStreamWaitEvent": [vp, vp, u32],
    "cuGetProcAddress_v2": [ctypes.c_char_p, ctypes.POINTER(vp), i32, u64, ctypes.POINTER(i32)],
    "cuGetErrorName": [i32, ctypes.POINTER(ctypes.c_char_p)],
    "cuCtxPushCurrent_v2": [vp],
    "cuEventElapsedTime": [ctypes.POINTER(ctypes.c_float), vp, vp],
}.items():
    getattr(cuda, fn).argtypes = types

# cuGetProcAddress answers before cuInit, as cuda-python's loader asks first.
p, st = vp(), i32(-1)
call("cuGetProcAddress_v2", b"cuMemAlloc", ctypes.byref(p), 13000, 0, ctypes.byref(st))
check(p.value == ctypes.cast(cuda.cuMemAlloc_v2, vp).value and st.value == 0, "cuMemAlloc -> _v2")
call("cuGetProcAddress_v2", b"cuMemcpyHtoD", ctypes.byref(p), 13000, 2, ctypes.byref(st))
check(p.value == ctypes.cast(cuda.cuMemcpyHtoD_v2_ptds, vp).value, "per-thread variant")
call("cuGetProcAddress_v2", b"cuNope", ctypes.byref(p), 13000, 0, ctypes.byref(st), want=500)
check(p.value is None and st.value == 1, "unknown symbol")
print("ok cuGetProcAddress")

call("cuInit", 0)
version, count, dev = i32(), i32(), i32()
call("cuDriverGetVersion", ctypes.byref(version))
call("cuDeviceGetCount", ctypes.byref(count))
check(count.value == 1, "one device")
call("cuDeviceGet", ctypes.byref(dev), 0)
name = ctypes.create_string_buffer(128)
call("cuDeviceGetName", name, 128, dev)
total = sz()
call("cuDeviceTotalMem_v2", ctypes.byref(total), dev)
if "VGPU_TEST_VRAM" in os.environ:
    check(total.value == int(os.environ["VGPU_TEST_VRAM"]), "framebuffer size")
warp, cmode = i32(), i32()
call("cuDeviceGetAttribute", ctypes.byref(warp), 10, dev)
call("cuDeviceGetAttribute", ctypes.byref(cmode), 20, dev)
check(warp.value == 32 and cmode.value == 3, "warp size 32, exclusive-process compute mode")
print("ok device %r, CUDA %d, %d MiB" % (name.value.decode(), version.value, total.value >> 20))

ctx = vp()
call("cuDevicePrimaryCtxRetain", ctypes.byref(ctx), dev)
call("cuCtxPushCurrent_v2", ctx)
d = u64()
call("cuMemAlloc_v2", ctypes.byref(d), 4099)
check(d.value % 256 == 0, "aligned")
data = bytes((i * 37 + 11) % 256 for i in range(4099))
src = ctypes.create_string_buffer(data, len(data))
call("cuMemcpyHtoD_v2", d, src, 4099)
out = ctypes.create_string_buffer(4099)
call("cuMemcpyDtoH_v2", out, d, 4099)
check(out.raw == data, "round trip of 4099 bytes")
call("cuMemsetD8_v2", d.value + 5, 0xC3, 9)
call("cuMemcpyDtoD_v2", d.value + 2000, d.value + 3, 20)
call("cuMemcpyDtoH_v2", out, d, 4099)
want = bytearray(data)
want[5:14] = b"\xc3" * 9
want[2000:2020] = want[3:23]
check(out.raw == bytes(want), "memset and device-to-device copy at odd offsets")
print("ok memory, copies, memsets")

s, e0, e1 = vp(), vp(), vp()
call("cuStreamCreate", ctypes.byref(s), 0)
call("cuEventCreate", ctypes.byref(e0), 0)
call("cuEventCreate", ctypes.byref(e1), 0)
call("cuEventRecord", e0, s)
call("cuMemsetD32Async", d, 0x01020304, 1024, s)
call("cuEventRecord", e1, s)
call("cuStreamWaitEvent", None, e1, 0)
call("cuMemcpyDtoH_v2", out, d, 8)
check(out.raw[:8] == b"\x04\x03\x02\x01" * 2, "legacy stream waited for the event")
call("cuStreamSynchronize", s)
ms = ctypes.c_float()
call("cuEventElapsedTime", ctypes.byref(ms), e0, e1)
check(ms.value >= 0, "elapsed time")
call("cuStreamQuery", s)
print("ok streams and events (%.3f ms)" % ms.value)

nm = ctypes.c_char_p()
call("cuGetErrorName", 700, ctypes.byref(nm))
check(nm.value == b"CUDA_ERROR_ILLEGAL_ADDRESS", "error names")
call("cuMemFree_v2", d.value + 1, want=1)
call("cuStreamDestroy_v2", ctypes.c_void_p(0xDEAD0), want=400)
call("cuMemFree_v2", d)
call("cuStreamDestroy_v2", s)
call("cuDevicePrimaryCtxRelease_v2", dev)
print("ok errors")
print("PASS %d checks" % checks)
