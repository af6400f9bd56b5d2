"""A cuda.bindings.driver program: NVRTC compiles a saxpy kernel to PTX, the driver loads it
(cuModuleLoadData), launches it (cuLaunchKernel) and the result is checked. Also times module
loads: the first load of the PTX and a second load of the same image (the driver's cache).
Prints "CUDA-PYTHON-PTX PASS ..." or raises.

--loads: times module loads only, of a larger PTX (the saxpy and 40 unrolled kernels): the
first, then the median of 5 loads of the same image; prints "MODULE-LOADS ...".
--describe: says what --loads loads.
"""
import statistics
import sys
import time

import numpy as np
from cuda.bindings import driver as cu
from cuda.bindings import nvrtc

SRC = b"""
extern "C" __global__ void saxpy(float a, const float *x, float *y, unsigned n) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}
"""


def ok(r):
    err, *rest = r if isinstance(r, tuple) else (r,)
    if isinstance(err, cu.CUresult) and err != cu.CUresult.CUDA_SUCCESS:
        raise RuntimeError(cu.cuGetErrorName(err)[1])
    if isinstance(err, nvrtc.nvrtcResult) and err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise RuntimeError(err)
    return rest[0] if len(rest) == 1 else rest


KERNELS = 40
if "--describe" in sys.argv:
    print("saxpy and %d unrolled kernels" % KERNELS)
    sys.exit(0)
if "--loads" in sys.argv:
    SRC += b"".join(b"""
extern "C" __global__ void k%d(float *y, unsigned n) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = y[i %% n];
    #pragma unroll
    for (int j = 0; j < 64; j++) v = v * %d.0001f + __sinf(v);
    y[i %% n] = v;
}
""" % (k, k) for k in range(KERNELS))

ok(cu.cuInit(0))
dev = ok(cu.cuDeviceGet(0))
major = ok(cu.cuDeviceGetAttribute(cu.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev))
minor = ok(cu.cuDeviceGetAttribute(cu.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev))
prog = ok(nvrtc.nvrtcCreateProgram(SRC, b"saxpy.cu", 0, [], []))
ok(nvrtc.nvrtcCompileProgram(prog, 1, [b"--gpu-architecture=compute_%d%d" % (major, minor)]))
size = ok(nvrtc.nvrtcGetPTXSize(prog))
ptx = b" " * size
ok(nvrtc.nvrtcGetPTX(prog, ptx))
ctx = ok(cu.cuDevicePrimaryCtxRetain(dev))
ok(cu.cuCtxPushCurrent(ctx))
t0 = time.perf_counter()
mod = ok(cu.cuModuleLoadData(ptx))
t1 = time.perf_counter()
ok(cu.cuModuleUnload(mod))
t2 = time.perf_counter()
mod = ok(cu.cuModuleLoadData(ptx))
t3 = time.perf_counter()
if "--loads" in sys.argv:
    again = []
    for _ in range(5):
        ok(cu.cuModuleUnload(mod))
        t = time.perf_counter()
        mod = ok(cu.cuModuleLoadData(ptx))
        again.append(time.perf_counter() - t)
    print("MODULE-LOADS ptx_bytes=%d first_ms=%.2f again_ms=%.2f (median of 5)"
          % (size, (t1 - t0) * 1e3, statistics.median(again) * 1e3))
    sys.exit(0)
fn = ok(cu.cuModuleGetFunction(mod, b"saxpy"))
n = 1 << 20
x = np.arange(n, dtype=np.float32)
y = np.ones(n, dtype=np.float32)
dx, dy = ok(cu.cuMemAlloc(x.nbytes)), ok(cu.cuMemAlloc(y.nbytes))
ok(cu.cuMemcpyHtoD(dx, x.ctypes.data, x.nbytes))
ok(cu.cuMemcpyHtoD(dy, y.ctypes.data, y.nbytes))
a = np.array([2.0], dtype=np.float32)
args = [a, np.array([int(dx)], dtype=np.uint64), np.array([int(dy)], dtype=np.uint64), np.array([n], dtype=np.uint32)]
ptrs = np.array([arg.ctypes.data for arg in args], dtype=np.uint64)
ok(cu.cuLaunchKernel(fn, n // 256, 1, 1, 256, 1, 1, 0, 0, ptrs.ctypes.data, 0))
ok(cu.cuCtxSynchronize())
out = np.zeros(n, dtype=np.float32)
ok(cu.cuMemcpyDtoH(out.ctypes.data, dy, out.nbytes))
assert np.array_equal(out, 2.0 * x + 1.0), "wrong saxpy result"
print("CUDA-PYTHON-PTX PASS n=%d module_load_first_ms=%.3f module_load_again_ms=%.3f"
      % (n, (t1 - t0) * 1e3, (t3 - t2) * 1e3))
