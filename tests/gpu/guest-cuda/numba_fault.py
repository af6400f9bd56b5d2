"""Fault containment with numba: `fault` runs a kernel that writes through a bad pointer and
expects CUDA_ERROR_ILLEGAL_ADDRESS in this process; `work SECONDS` runs a checked numba
workload for that long (the neighbour) and reports its iterations and wrong results."""
import sys
import time

import numpy as np
from numba import cuda


@cuda.jit
def poke(a, far):
    a[far] = 1.0  # far out of bounds: an unmapped address


@cuda.jit
def axpy(a, x, y):
    i = cuda.grid(1)
    if i < x.size:
        y[i] = a * x[i] + y[i]


if sys.argv[1] == "fault":
    a = cuda.device_array(16, dtype=np.float32)
    try:
        poke[1, 1](a, 1 << 36)
        cuda.synchronize()
        print("NUMBA-FAULT no error")
    except Exception as e:  # numba's CudaAPIError carries the CUDA error
        text = str(e)
        print("NUMBA-FAULT", "CUDA_ERROR_ILLEGAL_ADDRESS" if "ILLEGAL_ADDRESS" in text or "700" in text else text)
else:
    secs = float(sys.argv[2])
    n = 1 << 20
    x = np.arange(n, dtype=np.float32)
    dx = cuda.to_device(x)
    it = wrong = 0
    end = time.time() + secs
    while time.time() < end:
        dy = cuda.to_device(np.ones(n, dtype=np.float32))
        axpy[n // 256, 256](np.float32(3.0), dx, dy)
        if not np.array_equal(dy.copy_to_host(), 3.0 * x + 1.0):
            wrong += 1
        it += 1
    print("NUMBA-NEIGHBOUR iterations=%d wrong=%d" % (it, wrong))
