"""NumPy 2.4 removed aliases that numba-cuda 0.30 still names when it registers its overloads
(`np.row_stack` in numba's array functions: no kernel compiles without it). Both sides of the GPU
run (native and through libcuda.so.1) start Python with this folder first on PYTHONPATH, so both
get the same aliases back, each pointing at the function NumPy names as its replacement."""
try:
    import numpy as _np

    for _old, _new in (("row_stack", "vstack"), ("trapz", "trapezoid"), ("in1d", "isin"),
                       ("product", "prod"), ("cumproduct", "cumprod"), ("sometrue", "any"),
                       ("alltrue", "all")):
        if not hasattr(_np, _old) and hasattr(_np, _new):
            setattr(_np, _old, getattr(_np, _new))
except ImportError:
    pass
