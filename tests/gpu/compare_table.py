#!/usr/bin/env python3
"""base | new | native from tests/gpu/compare.sh's logs (OUT/base.md, OUT/new.md, OUT/native.jsonl)."""
import json, os, re, sys

out = sys.argv[1]

def rows(name):
    """Markdown table rows of run.sh's output, by section title."""
    try:
        text = open(os.path.join(out, name)).read()
    except OSError:
        return {}
    sec, got = None, {}
    for line in text.splitlines():
        if line.startswith("## "):
            sec = line[3:]
        elif line.startswith("|") and not line.startswith("|---") and sec:
            cells = [c.strip() for c in line.strip("|").split("|")]
            got.setdefault(sec.split(" ")[0] + " " + sec.split(" ")[1], []).append(cells)
    return got

def find(t, key, first):
    for s, rs in t.items():
        if s.startswith(key):
            for r in rs:
                if r and r[0] == first:
                    return r
    return None

def copy(name):
    try:
        text = open(os.path.join(out, name)).read()
    except OSError:
        return None, None
    h2d = re.findall(r"sysmem->VRAM[^\n]*?([0-9.]+) GB/s", text)
    d2h = re.findall(r"VRAM->sysmem ([0-9.]+) GB/s", text)
    return (h2d[-1] if h2d else None), (d2h[-1] if d2h else None)

native = {}
try:
    for line in open(os.path.join(out, "native.jsonl")):
        try:
            j = json.loads(line)
        except ValueError:
            continue
        native[(j.get("test"), j.get("kernel_us_target", j.get("kernel_us", j.get("beside_10ms_kernels"))))] = j
except OSError:
    pass

B, N = rows("base.md"), rows("new.md")
def cell(t, key, first, i):
    r = find(t, key, first)
    return r[i] if r and len(r) > i else "—"

print("| measure | base | new | native |")
print("|---|---|---|---|")
for u in ("10", "100", "1000"):
    # Native on the same spin kernel, back to back: its utilization is what a vGPU's compares with.
    nat = native.get(("lone_spin", int(u)))
    nu = nat["utilization"] if nat else None
    def vs(t):
        v = cell(t, "Lone vGPU", u, 1)
        try:
            return f"{float(v):.3f} ({float(v) / nu * 100:.0f} % of native)" if nu else v
        except ValueError:
            return v
    print(f"| lone {u} µs, utilization 1 ch (4 ch) | {vs(B)} ({cell(B, 'Lone vGPU', u, 2)}) | {vs(N)} ({cell(N, 'Lone vGPU', u, 2)}) | {nat and '%.3f (%.2f µs a kernel)' % (nu, nat['us_per_kernel'])} |")
for u in ("10", "1000"):
    print(f"| vgpud CPU (cores) at {u} µs, 1 ch | {cell(B, 'Lone vGPU', u, 4)} | {cell(N, 'Lone vGPU', u, 4)} | — |")
for u in ("50", "500", "5000"):
    nat = native.get(("native_share", int(u)))
    print(f"| two busy vGPUs at {u} µs, together / alone | {cell(B, 'Two busy', u, 5)} | {cell(N, 'Two busy', u, 5)} | {nat and 'A+B ' + format(nat['A_per_s'] + nat['B_per_s'], '.0f') + '/s'} |")
for u in ("10", "50", "500", "5000"):
    if find(B, "fixed_share", u) or find(N, "fixed_share", u):
        nat = native.get(("native_share", int(u)))
        print(f"| fixed_share 2:1 at {u} µs | {cell(B, 'fixed_share', u, 3)} | {cell(N, 'fixed_share', u, 3)} | {nat and format(nat['achieved_A_over_B'], '.3f')} |")
bh, bd = copy("base.md"); nh, nd = copy("new.md")
h2d = native.get(("pinned_h2d", None)); d2h = native.get(("pinned_d2h", None))
print(f"| copy 1 GiB guest RAM → VRAM, GB/s | {bh} | {nh} | {h2d and format(h2d['GBps'], '.1f')} (pinned H2D) |")
print(f"| copy 1 GiB VRAM → guest RAM, GB/s | {bd} | {nd} | {d2h and format(d2h['GBps'], '.1f')} (pinned D2H) |")
la = native.get(("colocation_latency", False)); lb = native.get(("colocation_latency", True))
print(f"| 100 µs probe alone, p50 / p99 µs | {cell(B, 'Latency class', 'alone', 1)} / {cell(B, 'Latency class', 'alone', 2)} | {cell(N, 'Latency class', 'alone', 1)} / {cell(N, 'Latency class', 'alone', 2)} | {la and format(la['p50_us'], '.0f')} / {la and format(la['p99_us'], '.0f')} |")
print(f"| … beside 10 ms kernels, p50 / p99 µs | {cell(B, 'Latency class', 'beside 10 ms kernels', 1)} / {cell(B, 'Latency class', 'beside 10 ms kernels', 2)} | {cell(N, 'Latency class', 'beside 10 ms kernels', 1)} / {cell(N, 'Latency class', 'beside 10 ms kernels', 2)} | {lb and format(lb['p50_us'], '.0f')} / {lb and format(lb['p99_us'], '.0f')} |")
