"""Speed of numba kernels of about 10 us, 100 us and 1 ms launched back to back.

usage: numba_speed.py calibrate OUT.json   (natively: the loop counts that take each time)
       numba_speed.py run IN.json          (prints one JSON line per size: launches/s)
       numba_speed.py table NATIVE.jsonl GUEST.jsonl   (the Markdown table; exit 1 if a side
                                                       has no figures)
"""
import json
import sys
import time


def table(native_path, guest_path):
    def rows(p):
        try:
            return {json.loads(l)["target_us"]: json.loads(l) for l in open(p) if l.startswith("{")}
        except (OSError, ValueError):
            return {}
    n, g = rows(native_path), rows(guest_path)
    print("| kernel | native launches/s | libcuda.so.1 on a vGPU launches/s | ratio |")
    print("|---|---|---|---|")
    ratios = []
    for t in sorted(n):
        a, b = n[t], g.get(t)
        r = b["per_s"] / a["per_s"] if b else None
        ratios.append("%d us %s" % (t, "%.3f" % r if r else "-"))
        print("| ~%d us (%.1f us natively, %s through the library) | %.0f | %s | %s |" % (
            t, a["us_per_launch"], "%.1f us" % b["us_per_launch"] if b else "-", a["per_s"],
            "%.0f" % b["per_s"] if b else "-", "%.3f" % r if r else "-"))
    print()
    print("ratio at " + ", ".join(ratios))
    return 0 if n and g else 1


if sys.argv[1] == "table":
    sys.exit(table(sys.argv[2], sys.argv[3]))

import numpy as np  # noqa: E402
from numba import cuda  # noqa: E402


@cuda.jit
def spin(out, iters):
    i = cuda.grid(1)
    v = np.float32(i)
    for _ in range(iters):
        v = v * np.float32(0.999999) + np.float32(1.0)
    if i < out.size:
        out[i] = v


SMS = cuda.get_current_device().MULTIPROCESSOR_COUNT
out = cuda.device_array(SMS * 128, dtype=np.float32)


def per_launch(iters, n):
    spin[SMS, 128](out, iters)
    cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        spin[SMS, 128](out, iters)
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
        n = max(100, int(1e6 / int(target_us)))  # about 1 s of kernels
        t = per_launch(iters, n)
        print(json.dumps({"target_us": int(target_us), "iters": iters, "launches": n,
                          "us_per_launch": round(t * 1e6, 2), "per_s": round(1 / t, 1)}), flush=True)
