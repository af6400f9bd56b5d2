"""Side-by-side results of a peer test suite run natively and through the guest library.

usage: summarize.py NATIVE.xml LIBRARY.xml   (pytest --junitxml files)
Prints a Markdown table, one row per test module: passed / failed / skipped natively and
through libcuda.so.1, and the modules that pass natively but not through the library.
"""
import collections
import sys
import xml.etree.ElementTree as ET


def counts(path):
    per = collections.defaultdict(lambda: [0, 0, 0])
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        print("(%s unreadable: %s)" % (path, e))
        return per
    for case in root.iter("testcase"):
        parts = case.get("classname", "").split(".")
        mod = next((p for p in parts if p.startswith("test_")), parts[-1] if parts else "?")
        kind = 0
        if case.find("failure") is not None or case.find("error") is not None:
            kind = 1
        elif case.find("skipped") is not None:
            kind = 2
        per[mod][kind] += 1
    return per


def main():
    native, lib = counts(sys.argv[1]), counts(sys.argv[2])
    print("| module | native passed/failed/skipped | libcuda.so.1 on a vGPU passed/failed/skipped |")
    print("|---|---|---|")
    worse = []
    tot = [[0, 0, 0], [0, 0, 0]]
    for mod in sorted(set(native) | set(lib)):
        n, l = native.get(mod, [0, 0, 0]), lib.get(mod, [0, 0, 0])
        for i in range(3):
            tot[0][i] += n[i]
            tot[1][i] += l[i]
        mark = " ◀" if l[0] < n[0] else ""
        if l[0] < n[0]:
            worse.append(mod)
        print("| %s | %d / %d / %d | %d / %d / %d%s |" % (mod, *n, *l, mark))
    print("| **total** | %d / %d / %d | %d / %d / %d |" % (*tot[0], *tot[1]))
    print()
    print("Modules passing fewer tests through the library than natively: %s" % (", ".join(worse) or "none"))


if __name__ == "__main__":
    main()
