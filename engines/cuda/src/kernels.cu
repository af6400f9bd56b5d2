// The engine's built-in programs as CUDA kernels, compiled by the worker at
// start-up with NVRTC. Each computes what the cpu engine computes
// (devmodel/src/cpu_engine.rs): gemm_f32 element by element with the same
// fused multiply-adds in the same order (the same bits); reduce_sum in
// f64 (the same value to f32 rounding in practice, not bit for bit: the
// GPU adds in a tree).

typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned char u8;

// dst[i] = byte (phase + i) % 4 of the little-endian pattern, i < n.
extern "C" __global__ void fill_pattern(u8 *dst, u64 n, u32 pattern, u32 phase) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (phase == 0 && ((u64)dst & 3) == 0) {
        u32 *w = (u32 *)dst;
        u64 words = n / 4;
        for (u64 j = i; j < words; j += stride) w[j] = pattern;
        for (u64 j = words * 4 + i; j < n; j += stride) dst[j] = (pattern >> (8 * (j % 4))) & 0xFF;
        return;
    }
    for (u64 j = i; j < n; j += stride) dst[j] = (pattern >> (8 * ((phase + j) % 4))) & 0xFF;
}

// y[i] = fmaf(a, x[i], y[i]), i < n.
extern "C" __global__ void saxpy(const float *x, float *y, u32 n, float a) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        y[i] = fmaf(a, x[i], y[i]);
}

// C = alpha * A.B + beta * C for the row-major elements [first, last) of C
// (A m x k, B k x n): each element summed over k in order with fmaf, as
// the cpu engine does.
extern "C" __global__ void gemm(const float *A, const float *B, float *C, u32 n, u32 k,
                                float alpha, float beta, u64 first, u64 last) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 e = first + (u64)blockIdx.x * blockDim.x + threadIdx.x; e < last; e += stride) {
        u64 i = e / n, j = e % n;
        float acc = 0.0f;
        for (u32 p = 0; p < k; p++) acc = fmaf(A[i * k + p], B[(u64)p * n + j], acc);
        float old = beta == 0.0f ? 0.0f : beta * C[e];
        C[e] = alpha * acc + old;
    }
}

// *out += sum of src[i] in f64, i < n.
extern "C" __global__ void reduce_sum(const float *src, u32 n, double *out) {
    __shared__ double part[256];
    double s = 0.0;
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) s += src[i];
    part[threadIdx.x] = s;
    __syncthreads();
    for (u32 w = blockDim.x / 2; w > 0; w /= 2) {
        if (threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) atomicAdd(out, part[0]);
}

// *dst = (float)(carry + *acc).
extern "C" __global__ void store_sum(const double *acc, double carry, float *dst) {
    *dst = (float)(carry + *acc);
}

// Occupy the multiprocessor this block runs on for `ns` by the GPU's global
// timer; one block per multiprocessor keeps every one busy. The last
// block to finish writes `report` to `dst` (if given), and, where `at` is
// given, the kernel's start and end by that timer to at[0] and at[1] (the
// worker's GPU timeline, crate::timeline).
extern "C" __global__ void spin(u64 ns, u32 *dst, u32 report, u64 *sync, u64 *at) {
    // Every block spins until one common deadline: the first block to start
    // sets the start (sync[0]); the last to finish resets sync for the next
    // launch on the stream. So the kernel lasts ns from its first block, not
    // ns from its last block's start.
    __shared__ u64 start;
    if (threadIdx.x == 0) {
        u64 now;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
        u64 prev = atomicCAS((unsigned long long *)&sync[0], 0ull, (unsigned long long)now);
        start = prev ? prev : now;
    }
    __syncthreads();
    u64 now;
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    } while (now - start < ns);
    __syncthreads();
    if (threadIdx.x == 0) {
        if (dst && blockIdx.x == 0) *dst = report;
        __threadfence();
        if (atomicAdd((unsigned long long *)&sync[1], 1ull) == gridDim.x - 1) {
            if (at) {
                u64 end;
                asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(end));
                at[0] = start;
                at[1] = end;
            }
            sync[0] = 0;
            sync[1] = 0;
        }
    }
}
