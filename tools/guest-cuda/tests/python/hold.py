"""One process owns a vGPU: `hold` initialises the library and waits; `try` initialises it
while another process holds the vGPU and prints what cuInit returned."""
import ctypes
import sys
import time

cuda = ctypes.CDLL("libcuda.so.1")
r = cuda.cuInit(0)
if sys.argv[1] == "hold":
    assert r == 0, r
    print("holding", flush=True)
    time.sleep(60)
else:
    name = ctypes.c_char_p()
    cuda.cuGetErrorName(r, ctypes.byref(name))
    print("cuInit = %d %s" % (r, name.value.decode() if name.value else "?"))
