"""Speed of numba kernels of about 10 us, 100 us and 1 ms launched back to back.

usage: numba_speed.py calibrate OUT.json   (natively: the loop counts that take each time)
       numba_speed.py run IN.json          (prints one JSON line per size: launches/s)
"""
import json
import sys
import time

import numpy as np
from numba import cuda


@cuda.jit
def spin(out, iters):
    i = cuda.grid(1)
    v = np.float32(i)
    for _ in range(iters):
        v = v * np.float32(0.999999) + np.float32(1.0)
    if i < out.size:
        out[i] = v


out = cuda.device_array(132 * 128, dtype=np.float32)


def per_launch(iters, n):
    spin[132, 128](out, iters)
    cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        spin[132, 128](out, iters)
    cuda.synchronize()
    return (time.perf_counter() - t) / n


if sys.argv[1] == "calibrate":
    plan = {}
    for target_us in (10, 100, 1000):
        iters = 16
        while per_launch(iters, 20) * 1e6 < target_us * 0.7 and iters < 1 << 26:
            iters *= 2
        t = per_launch(iters, 50) * 1e6
        plan[str(target_us)] = max(1, int(iters * target_us / t))
    json.dump(plan, open(sys.argv[2], "w"))
else:
    plan = json.load(open(sys.argv[2]))
    for target_us, iters in sorted(plan.items(), key=lambda kv: int(kv[0])):
        n = max(50, int(2e6 / int(target_us)))  # about 2 s of kernels
        t = per_launch(iters, n)
        print(json.dumps({"target_us": int(target_us), "iters": iters, "launches": n,
                          "us_per_launch": round(t * 1e6, 2), "per_s": round(1 / t, 1)}))
