"""Side-by-side results of a peer test suite run natively and through the guest library.

usage: summarize.py NATIVE.log ... -- LIBRARY.log ...   (pytest -v -rfE or unittest -v output,
                                                       any number of processes each way)
Prints a Markdown table, one row per test module: passed / failed / skipped natively and through
libcuda.so.1 (and tests that did not run there, e.g. cut by a timeout), then each test that
passes natively but not through the library, with the reason pytest gave.
Reads the per-test lines, so a run cut short (SIGINT at its time limit) still counts.
"""
import collections
import re
import sys

LINE = re.compile(r"^(\S+?\.py)::(\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
REASON = re.compile(r"^(FAILED|ERROR) (\S+?\.py::\S+)(?: - (.*))?$")
# unittest -v: "test_x (pkg.test_mod.Class.test_x) ... ok", the verdict on the same line or, when
# the test printed something, on a later one; failures in "FAIL: test_x (pkg.test_mod.Class.test_x)"
# sections whose last traceback line says why.
UNIT = re.compile(r"^(\w+) \(([\w.]+)\.(\w+)\.\w+\)(?: \.\.\. (.*))?")
UNIT_VERDICT = re.compile(r"^(ok|FAIL|ERROR|skipped|expected failure|unexpected success)\b")
UNIT_SECTION = re.compile(r"^(FAIL|ERROR): (\w+) \(([\w.]+)\.(\w+)\.\w+\)")
PASS, FAIL, SKIP = 0, 1, 2


def read(paths):
    """Per test id: its verdict; and the reason of each failure."""
    verdict, reasons = {}, {}
    for p in paths:
        try:
            lines = open(p, errors="replace").read().splitlines()
        except OSError as e:
            print("(%s unreadable: %s)" % (p, e))
            continue
        pending, section = None, None
        for line in lines:
            m = UNIT.match(line)
            if m and not line.startswith(("FAIL:", "ERROR:")):
                tid = "%s.py::%s::%s" % (m.group(2).split(".")[-1], m.group(3), m.group(1))
                pending = tid
                line = m.group(4) or ""
            if pending:
                v = UNIT_VERDICT.match(line.strip())
                if v:
                    word = v.group(1)
                    verdict[pending] = PASS if word in ("ok", "unexpected success") else FAIL if word in ("FAIL", "ERROR") else SKIP
                    pending = None
                    continue
            m = UNIT_SECTION.match(line)
            if m:
                section = "%s.py::%s::%s" % (m.group(3).split(".")[-1], m.group(4), m.group(2))
                continue
            if section and line and not line.startswith((" ", "-", "=", "Traceback")):
                reasons[section] = line[:160]
            if line.startswith("=" * 20):
                section = None
            m = LINE.match(line)
            if m:
                tid = m.group(1).split("/")[-1] + "::" + m.group(2)
                v = {"PASSED": PASS, "XPASS": PASS, "FAILED": FAIL, "ERROR": FAIL}.get(m.group(3), SKIP)
                # A failing teardown after a pass is a failure.
                verdict[tid] = max(verdict.get(tid, v), v) if v != SKIP else verdict.get(tid, SKIP)
                continue
            m = REASON.match(line)
            if m:
                tid = m.group(2).split("/")[-1]
                reasons.setdefault(tid, (m.group(3) or m.group(1))[:160])
    return verdict, reasons


def per_module(verdict):
    per = collections.defaultdict(lambda: [0, 0, 0])
    for tid, v in verdict.items():
        per[tid.split("::")[0][:-3]][v] += 1
    return per


def main():
    args = sys.argv[1:]
    cut = args.index("--") if "--" in args else 1
    native, _ = read(args[:cut])
    lib, reasons = read(args[cut + 1:])
    n_mod, l_mod = per_module(native), per_module(lib)
    print("| module | native passed / failed / skipped | libcuda.so.1 on a vGPU passed / failed / skipped | not run there |")
    print("|---|---|---|---|")
    worse = []
    tot = [[0, 0, 0], [0, 0, 0], 0]
    for mod in sorted(set(n_mod) | set(l_mod)):
        n, l = n_mod.get(mod, [0, 0, 0]), l_mod.get(mod, [0, 0, 0])
        missing = sum(1 for t in native if t.startswith(mod + ".py::") and t not in lib)
        for i in range(3):
            tot[0][i] += n[i]
            tot[1][i] += l[i]
        tot[2] += missing
        mark = " ◀" if l[0] < n[0] else ""
        if l[0] < n[0]:
            worse.append(mod)
        print("| %s | %d / %d / %d | %d / %d / %d%s | %d |" % (mod, *n, *l, mark, missing))
    print("| **total** | %d / %d / %d | %d / %d / %d | %d |" % (*tot[0], *tot[1], tot[2]))
    print()
    print("Modules passing fewer tests through the library than natively: %s" % (", ".join(worse) or "none"))
    lost = sorted(t for t, v in native.items() if v == PASS and lib.get(t) != PASS)
    if lost:
        print()
        print("Passing natively, not through the library (%d; first 60):" % len(lost))
        for t in lost[:60]:
            state = {None: "not run", FAIL: "failed", SKIP: "skipped"}[lib.get(t)]
            print("- `%s`: %s%s" % (t, state, (": " + reasons[t]) if t in reasons else ""))


if __name__ == "__main__":
    main()
