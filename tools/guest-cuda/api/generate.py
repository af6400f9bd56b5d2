#!/usr/bin/env python3
"""Generate the driver API's export list and cuGetProcAddress table from NVIDIA's headers.

usage: generate.py INCLUDE_DIR

INCLUDE_DIR holds cuda.h, cudaTypedefs.h, cudaGL*.h, cudaEGL*.h, cudaVDPAU*.h and
cudaProfilerTypedefs.h of the CUDA version the library reports (13.0: the wheel
nvidia-cuda-runtime==13.0.96 from PyPI has them under nvidia/cu13/include; see README.md).

Writes, next to this script:
  exports.txt     every symbol a CUDA 13.0 libcuda.so.1 exports for the driver API: the
                  functions cuda.h (and the GL, EGL, VDPAU and profiler headers) declare
                  in their default, per-thread-default-stream (_ptds/_ptsz) and internal
                  (legacy, pre-_v2) configurations, as the C preprocessor expands them;
  errors.tsv      CODE NAME TEXT: every CUresult of cuda.h, with the first sentence of its
                  comment there (what cuGetErrorName and cuGetErrorString return);
  attributes.tsv  NUMBER NAME: every CUdevice_attribute of cuda.h;
  proc_table.tsv  NAME VERSION FLAVOR SYMBOL: what cuGetProcAddress(NAME, VERSION, flags)
                  resolves to. The versions are those of cudaTypedefs.h's
                  PFN_<NAME>_v<VERSION>[_ptds|_ptsz] typedefs; a name's versions, oldest first,
                  pair with its exported variants NAME, NAME_v2, NAME_v3, ... in order, and
                  a _ptds/_ptsz typedef of version V names the variant current at V with
                  that suffix. The script fails if any of this does not hold.
"""
import collections
import os
import re
import subprocess
import sys
import tempfile

CONFIGS = [
    [],
    ["-DCUDA_API_PER_THREAD_DEFAULT_STREAM"],
    ["-D__CUDA_API_VERSION_INTERNAL"],
    ["-D__CUDA_API_VERSION_INTERNAL", "-DCUDA_API_PER_THREAD_DEFAULT_STREAM"],
]
# cudaGL.h and cudaEGL.h include GL/EGL headers; only the types they use are needed.
FAKE_GL = "typedef unsigned int GLuint; typedef unsigned int GLenum;\n"
FAKE_EGL = ("typedef void *EGLImageKHR; typedef void *EGLStreamKHR; typedef void *EGLDisplay;"
            " typedef void *EGLSyncKHR; typedef int EGLint; typedef void *EGLSync;"
            " typedef unsigned int EGLenum; typedef unsigned int EGLBoolean;"
            " typedef void *EGLImage; typedef void *EGLClientBuffer;\n")
DECL = re.compile(r"CUresult[^;{}()]*\b(cu[A-Za-z0-9_]+)\s*\(")
PFN = re.compile(r"\(CUDAAPI \*PFN_(cu\w+?)_v(\d+)(_ptds|_ptsz)?\)")


def declared(inc, fake, header, defs):
    src = '#include "%s"\n' % header
    out = subprocess.run(["gcc", "-E", "-P", *defs, "-I" + inc, "-I" + fake, "-x", "c", "-"],
                         input=src, capture_output=True, text=True, check=True).stdout
    return set(DECL.findall(out.replace("\n", " ")))


def enum_body(text, start, end):
    a = text.index(start)
    return text[a:text.index(end, a)]


def errors(cuda_h):
    body = enum_body(cuda_h, "typedef enum cudaError_enum", "} CUresult;")
    rows = []
    for doc, name, code in re.findall(r"/\*\*(.*?)\*/\s*(CUDA_\w+)\s*=\s*(\d+)", body, re.S):
        text = " ".join(w for w in doc.replace("*", " ").split() if w != "\\deprecated")
        text = re.sub(r"::", "", text)
        first = re.split(r"(?<=[a-z0-9)])\.\s", text + " ")[0].strip().rstrip(".")
        rows.append((int(code), name, first))
    return rows


def attributes(cuda_h):
    body = enum_body(cuda_h, "typedef enum CUdevice_attribute_enum", "} CUdevice_attribute;")
    return [(int(n), name) for name, n in re.findall(r"\b(CU_DEVICE_ATTRIBUTE_\w+)\s*=\s*(\d+)", body)]


def main():
    inc = sys.argv[1]
    here = os.path.dirname(os.path.abspath(__file__))
    with tempfile.TemporaryDirectory() as fake:
        os.makedirs(os.path.join(fake, "GL"))
        os.makedirs(os.path.join(fake, "EGL"))
        open(os.path.join(fake, "GL", "gl.h"), "w").write(FAKE_GL)
        open(os.path.join(fake, "EGL", "egl.h"), "w").write(FAKE_EGL)
        open(os.path.join(fake, "EGL", "eglext.h"), "w").write("")
        exports = set()
        for header in ["cuda.h", "cudaGL.h", "cudaEGL.h", "cudaVDPAU.h"]:
            for defs in CONFIGS:
                exports |= declared(inc, fake, header, defs)
    typedefs = ""
    for t in ["cudaTypedefs.h", "cudaGLTypedefs.h", "cudaEGLTypedefs.h", "cudaVDPAUTypedefs.h",
              "cudaProfilerTypedefs.h"]:
        typedefs += open(os.path.join(inc, t)).read()
    versions = collections.defaultdict(set)
    flavoured = collections.defaultdict(set)
    for name, ver, flavour in PFN.findall(typedefs):
        (flavoured[name].add((int(ver), flavour[1:])) if flavour else versions[name].add(int(ver)))
    # cudaProfiler.h is not in the wheel: its three functions have one version each.
    for name in versions:
        if name.startswith("cuProfiler"):
            exports.add(name)
    table = []
    covered = set()
    for name in sorted(versions):
        vs = sorted(versions[name])
        variants = [s for s in exports if s == name or re.fullmatch(re.escape(name) + r"_v\d+", s)]
        variants.sort(key=lambda s: 1 if s == name else int(s.rsplit("_v", 1)[1]))
        if not variants and name.startswith("cuWGL"):
            continue  # Windows only (cudaGLTypedefs.h)
        if len(variants) != len(vs):
            sys.exit("%s: versions %s but exported variants %s" % (name, vs, variants))
        pairs = list(zip(vs, variants))
        for v, s in pairs:
            table.append((name, v, "-", s))
            covered.add(s)
        for v, flavour in sorted(flavoured.get(name, ())):
            current = [s for pv, s in pairs if pv <= v]
            if not current or current[-1] + "_" + flavour not in exports:
                sys.exit("%s: no exported %s variant at version %d" % (name, flavour, v))
            table.append((name, v, flavour, current[-1] + "_" + flavour))
            covered.add(current[-1] + "_" + flavour)
    for name in flavoured:
        if name not in versions:
            sys.exit("%s has only per-thread typedefs" % name)
    with open(os.path.join(here, "exports.txt"), "w") as f:
        f.write("".join(s + "\n" for s in sorted(exports)))
    with open(os.path.join(here, "proc_table.tsv"), "w") as f:
        f.write("".join("%s\t%d\t%s\t%s\n" % row for row in table))
    cuda_h = open(os.path.join(inc, "cuda.h")).read()
    with open(os.path.join(here, "errors.tsv"), "w") as f:
        f.write("".join("%d\t%s\t%s\n" % row for row in errors(cuda_h)))
    with open(os.path.join(here, "attributes.tsv"), "w") as f:
        f.write("".join("%d\t%s\n" % row for row in attributes(cuda_h)))
    left = sorted(exports - covered)
    print("%d exports, %d cuGetProcAddress entries; exported but not in the table: %s"
          % (len(exports), len(table), " ".join(left) or "none"))


if __name__ == "__main__":
    main()
