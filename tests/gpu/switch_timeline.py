"""Where the GPU's time goes when vGPUs take turns: the runs of `spin` kernels that CUDA workers
print with VGPUD_SPIN_TIMELINE set (engines/cuda/src/timeline.rs), merged on the GPU's global
timer. Reads vgpud's log on stdin; prints one JSON line.

A run is a worker's kernels back to back on the GPU (gaps <= 20 us). Between two runs of different
workers the GPU switched contexts: the gap from the one's last kernel's end to the other's first
kernel's start is what the switch cost the GPU. Whether the host was late is told by when the
incoming run's first item reached its worker (QUEUED, moved onto the GPU's timer by the worker's
clock offset): handed over before the outgoing run ended, the gap is the GPU's own (the context
switch); after, the GPU waited for the host for part of it.

usage: python3 switch_timeline.py LABEL < vgpud.log
"""
import json, re, sys

RUN = re.compile(r"spin run (\d+) (\d+) (\d+) (\d+) (\d+)")
OFF = re.compile(r"clock offset GPU - realtime (-?\d+) ns")
WORKER = re.compile(r"worker[=:]\s*(\d+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p))] if v else None


def main():
    label = sys.argv[1] if len(sys.argv) > 1 else ""
    runs, offset = [], {}
    for line in sys.stdin:
        line = ANSI.sub("", line)
        w = WORKER.search(line)
        if not w:
            continue
        m = RUN.search(line)
        if m:
            s, e, k, b, q = map(int, m.groups())
            runs.append({"w": w.group(1), "s": s, "e": e, "k": k, "b": b, "q": q})
            continue
        m = OFF.search(line)
        if m:
            offset[w.group(1)] = int(m.group(1))
    out = {"label": label, "workers": len({r["w"] for r in runs}), "runs": len(runs)}
    if len(runs) < 2:
        print(json.dumps(out))
        return
    runs.sort(key=lambda r: r["s"])
    wall = runs[-1]["e"] - runs[0]["s"]
    busy = sum(r["b"] for r in runs)
    inside = sum(r["e"] - r["s"] - r["b"] for r in runs)
    switch, self_gap, late, gpu_own, overlap = [], [], [], [], 0
    for a, b in zip(runs, runs[1:]):
        gap = b["s"] - a["e"]
        if a["w"] == b["w"]:
            self_gap.append(gap)
            continue
        switch.append(gap)
        if gap < 0:
            overlap += 1
        if b["w"] in offset:
            q = b["q"] + offset[b["w"]]
            # the part of the gap the GPU waited for the item to reach the worker
            late.append(min(max(q - a["e"], 0), max(gap, 0)))
            gpu_own.append(max(gap, 0) - late[-1])
    us = lambda v: None if v is None else round(v / 1e3, 1)
    out.update({
        "wall_ms": round(wall / 1e6, 1),
        "gpu_busy": round(busy / wall, 4),
        "gpu_busy_by_worker": sorted((round(sum(r["b"] for r in runs if r["w"] == w) / wall, 4)
                                      for w in {r["w"] for r in runs}), reverse=True),
        "idle_inside_runs": round(inside / wall, 4),
        "idle_at_switches": round(sum(max(g, 0) for g in switch) / wall, 4),
        "idle_between_own_runs": round(sum(max(g, 0) for g in self_gap) / wall, 4),
        "switches": len(switch),
        "switch_gap_us_p10_p50_p90_mean": [us(pct(switch, 0.1)), us(pct(switch, 0.5)), us(pct(switch, 0.9)),
                                           us(sum(switch) / len(switch)) if switch else None],
        "switches_overlapping": overlap,
        "switch_host_late_us_mean": us(sum(late) / len(late)) if late else None,
        "switch_gpu_own_us_p50_mean": [us(pct(gpu_own, 0.5)), us(sum(gpu_own) / len(gpu_own)) if gpu_own else None],
        "kernels_per_run_mean": round(sum(r["k"] for r in runs) / len(runs), 1),
    })
    print(json.dumps(out))


if __name__ == "__main__":
    main()
