// tests/gpu/ptx/kernels.cu — guest kernels for `vgpu-guest ptx` and `vgpu-guest ptx-fault`
// (tests/gpu/run.sh compiles them on the GPU machine):
//
//   nvcc -ptx -arch=sm_90 -o kernels.ptx kernels.cu
//
// Every kernel is extern "C" so that its PTX name is unmangled (the guest launches it by name
// through FUNC_NAME). Pointers are kernel addresses: PTX_VA_BASE + the buffer's VA, for VRAM
// mapped in whole 2 MiB chunks (vgpu_guest::Device::kernel_ptr, alloc_for_kernels).

// out[i] = x[i] + y[i] for i < n (one thread per element, any grid).
extern "C" __global__ void vec_add(const float* x, const float* y, float* out, unsigned n)
{
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        out[i] = x[i] + y[i];
    }
}

// *p = v: with a pointer nothing maps, an illegal address (KERNEL_FAULT).
extern "C" __global__ void poke(unsigned* p, unsigned v)
{
    *p = v;
}

// Loops while *flag == 0: a runaway kernel (the host never sets the flag; its kernel limit
// stops it with ENGINE_TIMEOUT). The volatile load keeps the compiler from hoisting it.
extern "C" __global__ void spin_forever(unsigned* flag)
{
    while (*(volatile unsigned*)flag == 0) {
    }
}
