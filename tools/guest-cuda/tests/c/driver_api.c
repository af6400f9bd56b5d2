/* A driver-API C program linked against libcuda.so.1 (the vgpud guest library), run on a
 * vGPU of the cpu engine: init, device and attribute queries, contexts, memory, copies and
 * memsets in every direction at byte granularity, streams, events, host functions and error
 * paths. Every value is read back and compared.
 *
 * usage: driver_api [PROC_TABLE.tsv]   (VGPU_SOCKET or an in-guest vfio vGPU; VGPU_TEST_VRAM
 * = the vGPU's framebuffer in bytes, when known)
 * Prints "ok <check>" per check and "PASS <n> checks" at the end; exits 1 on the first
 * failure. */
#define _GNU_SOURCE
#include "driver_api.h"
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int checks;
#define CHECK(cond, ...)                                                  \
    do {                                                                  \
        if (!(cond)) {                                                    \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                   \
            printf(__VA_ARGS__);                                          \
            printf("\n");                                                 \
            exit(1);                                                      \
        }                                                                 \
        checks++;                                                         \
    } while (0)
#define OK(call) do { CUresult r_ = (call); CHECK(r_ == CUDA_SUCCESS, "%s = %d", #call, r_); } while (0)
#define IS(code, call) do { CUresult r_ = (call); CHECK(r_ == (code), "%s = %d, expected %d", #call, r_, code); } while (0)

static void fill(unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(seed * 131 + i * 7 + (i >> 8));
}

/* cuGetProcAddress resolves every (name, version, flavour) of the table to the symbol the
 * table names, as dlsym finds it in this library. */
static void proc_address(const char *table) {
    void *self = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    CHECK(self != NULL, "dlopen(libcuda.so.1, RTLD_NOLOAD): %s", dlerror());
    FILE *f = fopen(table, "r");
    CHECK(f != NULL, "open %s", table);
    char name[128], flavour[16], symbol[128];
    int version, rows = 0;
    while (fscanf(f, "%127s %d %15s %127s", name, &version, flavour, symbol) == 4) {
        void *p = NULL;
        int status = -1;
        unsigned long long flags = strcmp(flavour, "-") ? CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM
                                                       : CU_GET_PROC_ADDRESS_DEFAULT;
        OK(cuGetProcAddress_v2(name, &p, version, flags, &status));
        void *want = dlsym(self, symbol);
        CHECK(want != NULL && p == want, "%s@%d/%s -> %p, dlsym(%s) = %p", name, version, flavour,
              p, symbol, want);
        CHECK(status == 0, "status %d", status);
        rows++;
    }
    fclose(f);
    CHECK(rows > 600, "%d rows", rows);
    void *p = (void *)1;
    int status = 0;
    IS(CUDA_ERROR_NOT_FOUND, cuGetProcAddress_v2("cuNoSuchFunction", &p, 13000, 0, &status));
    CHECK(p == NULL && status == 1, "missing symbol: %p %d", p, status);
    IS(CUDA_ERROR_NOT_FOUND, cuGetProcAddress_v2("cuLibraryLoadData", &p, 11000, 0, &status));
    CHECK(status == 2, "version not sufficient: %d", status);
    printf("ok cuGetProcAddress resolves %d table rows before cuInit\n", rows);
}

static int host_calls;
static unsigned char *host_seen;
static void on_host(void *arg) {
    /* Runs after the copy queued before it: the pinned buffer already holds its bytes. */
    host_seen = arg;
    host_calls += 1;
}

int main(int argc, char **argv) {
    const char *name, *text;
    if (argc > 1) proc_address(argv[1]);
    IS(CUDA_ERROR_NOT_INITIALIZED, cuDeviceGetCount(&(int){0}));
    OK(cuInit(0));
    int version = 0, count = 0;
    OK(cuDriverGetVersion(&version));
    CHECK(version >= 12000 && version <= 13000, "driver version %d", version);
    OK(cuDeviceGetCount(&count));
    CHECK(count == 1, "%d devices", count);
    CUdevice dev;
    OK(cuDeviceGet(&dev, 0));
    IS(CUDA_ERROR_INVALID_DEVICE, cuDeviceGet(&dev, 1));
    char dname[256];
    OK(cuDeviceGetName(dname, sizeof dname, dev));
    CHECK(strlen(dname) > 0, "empty name");
    size_t total = 0;
    OK(cuDeviceTotalMem_v2(&total, dev));
    const char *want_vram = getenv("VGPU_TEST_VRAM");
    if (want_vram) CHECK(total == strtoull(want_vram, NULL, 0), "total %zu", total);
    int v;
    OK(cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_WARP_SIZE, dev));
    CHECK(v == 32, "warp %d", v);
    OK(cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK, dev));
    CHECK(v == 1024, "max threads %d", v);
    OK(cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY, dev));
    CHECK(v == 0, "can map host memory %d", v);
    OK(cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY, dev));
    CHECK(v == 0, "managed %d", v);
    OK(cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING, dev));
    CHECK(v == 1, "UVA %d", v);
    OK(cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev));
    int cc_major = v;
    IS(CUDA_ERROR_INVALID_VALUE, cuDeviceGetAttribute(&v, 100000, dev));
    CUuuid uuid;
    OK(cuDeviceGetUuid_v2(&uuid, dev));
    printf("ok device \"%s\", %zu MiB, compute capability %d.x, CUDA %d\n", dname, total >> 20,
           cc_major, version);

    /* Contexts. */
    CUcontext cur = (CUcontext)1, primary, other;
    OK(cuCtxGetCurrent(&cur));
    CHECK(cur == NULL, "a current context before any");
    CUdeviceptr d0;
    IS(CUDA_ERROR_INVALID_CONTEXT, cuMemAlloc_v2(&d0, 16));
    OK(cuDevicePrimaryCtxRetain(&primary, dev));
    OK(cuCtxPushCurrent_v2(primary));
    OK(cuCtxGetCurrent(&cur));
    CHECK(cur == primary, "current %p, primary %p", (void *)cur, (void *)primary);
    OK(cuCtxCreate_v2(&other, 0, dev));
    OK(cuCtxGetCurrent(&cur));
    CHECK(cur == other && other != primary, "created context not current");
    OK(cuCtxPopCurrent_v2(&cur));
    CHECK(cur == other, "popped %p", (void *)cur);
    OK(cuCtxDestroy_v2(other));
    IS(CUDA_ERROR_INVALID_CONTEXT, cuCtxPushCurrent_v2(other));
    OK(cuCtxGetCurrent(&cur));
    CHECK(cur == primary, "primary is current again");
    printf("ok contexts: primary, created, stack\n");

    /* Memory. */
    size_t free0, free1, tot;
    OK(cuMemGetInfo_v2(&free0, &tot));
    CHECK(tot == total && free0 <= tot, "mem info %zu/%zu", free0, tot);
    CUdeviceptr a, b, big;
    OK(cuMemAlloc_v2(&a, 1000));
    OK(cuMemAlloc_v2(&b, 1));
    OK(cuMemAlloc_v2(&big, 3 << 20));
    CHECK(a % 256 == 0 && b % 256 == 0 && big % 256 == 0, "alignment");
    CHECK(a != b && (b >= a + 1000 || a >= b + 1), "distinct");
    OK(cuMemGetInfo_v2(&free1, &tot));
    CHECK(free1 < free0, "free %zu -> %zu", free0, free1);
    CUdeviceptr base;
    size_t size;
    OK(cuMemGetAddressRange_v2(&base, &size, a + 999));
    CHECK(base == a && size == 1000, "range %llx+%zu", base, size);
    unsigned mt = 0;
    OK(cuPointerGetAttribute(&mt, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, a + 5));
    CHECK(mt == CU_MEMORYTYPE_DEVICE, "memory type %u", mt);
    IS(CUDA_ERROR_INVALID_VALUE, cuMemFree_v2(a + 8));
    printf("ok memory: %llx %llx %llx, free %zu -> %zu\n", a, b, big, free0, free1);

    /* Copies at byte granularity: ragged lengths and offsets, every direction. */
    unsigned char src[1000], out[1000];
    fill(src, sizeof src, 1);
    memset(out, 0xEE, sizeof out);
    OK(cuMemcpyHtoD_v2(a, src, 1000));
    OK(cuMemcpyDtoH_v2(out, a, 1000));
    CHECK(memcmp(src, out, 1000) == 0, "HtoD/DtoH 1000 bytes");
    OK(cuMemcpyHtoD_v2(a + 3, src + 100, 7));
    OK(cuMemcpyDtoH_v2(out, a, 16));
    CHECK(memcmp(out, src, 3) == 0 && memcmp(out + 3, src + 100, 7) == 0 &&
              memcmp(out + 10, src + 10, 6) == 0,
          "7 bytes at offset 3");
    OK(cuMemcpyHtoD_v2(b, "Z", 1));
    OK(cuMemcpyDtoH_v2(out, b, 1));
    CHECK(out[0] == 'Z', "1-byte allocation");
    OK(cuMemcpyDtoD_v2(big + 5, a + 1, 999));
    memset(out, 0, sizeof out);
    OK(cuMemcpyDtoH_v2(out, big + 5, 999));
    OK(cuMemcpyHtoD_v2(a + 3, src + 3, 7));
    CHECK(memcmp(out, src + 1, 2) == 0 && memcmp(out + 2, src + 100, 7) == 0, "DtoD at offsets");
    OK(cuMemcpy(a, big + 6, 10));
    OK(cuMemcpyDtoH_v2(out, a, 10));
    CHECK(memcmp(out, src + 2, 1) == 0 && memcmp(out + 1, src + 100, 7) == 0, "unified cuMemcpy");
    IS(CUDA_ERROR_INVALID_VALUE, cuMemcpyHtoD_v2(a + 990, src, 20));
    size_t n = 20 << 20;
    unsigned char *h = malloc(n), *h2 = malloc(n);
    fill(h, n, 9);
    CUdeviceptr d;
    OK(cuMemAlloc_v2(&d, n));
    OK(cuMemcpyHtoD_v2(d, h, n));
    memset(h2, 0, n);
    OK(cuMemcpyDtoH_v2(h2, d, n));
    CHECK(memcmp(h, h2, n) == 0, "20 MiB through staging");
    printf("ok copies: HtoD, DtoH, DtoD, unified, ragged and 20 MiB\n");

    /* Pinned host memory: DMA memory, async copies straight from and to it. */
    unsigned char *pin;
    OK(cuMemHostAlloc((void **)&pin, 1 << 20, 0));
    OK(cuPointerGetAttribute(&mt, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, (CUdeviceptr)(uintptr_t)pin));
    CHECK(mt == CU_MEMORYTYPE_HOST, "pinned memory type %u", mt);
    fill(pin, 1 << 20, 4);
    CUstream s1, s2, s3;
    OK(cuStreamCreate(&s1, 0));
    OK(cuStreamCreate(&s2, 0));
    OK(cuStreamCreate(&s3, CU_STREAM_NON_BLOCKING));
    OK(cuMemcpyHtoDAsync_v2(d + 1, pin, (1 << 20) - 1, s1));
    OK(cuMemsetD8Async(d + (1 << 20), 0x5A, 3, s1));
    /* The copy reads `pin` until the stream has run it: clear it only after. */
    OK(cuStreamSynchronize(s1));
    memset(pin, 0, 1 << 20);
    OK(cuStreamQuery(s1));
    OK(cuMemcpyDtoHAsync_v2(pin, d, (1 << 20) + 4, s1));
    OK(cuStreamSynchronize(s1));
    fill(h, 1 << 20, 4);
    CHECK(pin[0] == h2[0] && memcmp(pin + 1, h, (1 << 20) - 1) == 0, "pinned async round trip");
    CHECK(pin[1 << 20] == 0x5A && pin[(1 << 20) + 2] == 0x5A && pin[(1 << 20) + 3] == h2[(1 << 20) + 3],
          "async memset edge");
    printf("ok pinned memory and async copies on streams\n");

    /* Memsets: ragged 8-bit, 16-bit at 2 mod 4, 32-bit, 2D. */
    OK(cuMemcpyHtoD_v2(a, src, 1000));
    OK(cuMemsetD8_v2(a + 1, 0xAB, 6));
    OK(cuMemsetD16_v2(a + 10, 0x1234, 3));
    OK(cuMemsetD32_v2(a + 20, 0xDEADBEEF, 5));
    OK(cuMemsetD2D8_v2(a + 101, 10, 0x77, 3, 4));
    OK(cuMemcpyDtoH_v2(out, a, 200));
    CHECK(out[0] == src[0] && out[7] == src[7], "memset edges untouched");
    for (int i = 1; i < 7; i++) CHECK(out[i] == 0xAB, "byte %d = %x", i, out[i]);
    for (int i = 0; i < 3; i++) CHECK(out[10 + 2 * i] == 0x34 && out[11 + 2 * i] == 0x12, "u16 %d", i);
    CHECK(out[16] == src[16], "after u16s");
    for (int i = 0; i < 5; i++) CHECK(*(uint32_t *)(out + 20 + 4 * i) == 0xDEADBEEF, "u32 %d", i);
    for (int r = 0; r < 4; r++) {
        for (int c = 0; c < 3; c++) CHECK(out[101 + 10 * r + c] == 0x77, "2D %d,%d", r, c);
        CHECK(out[104 + 10 * r] == src[104 + 10 * r], "2D gap %d", r);
    }
    IS(CUDA_ERROR_INVALID_VALUE, cuMemsetD16_v2(a + 1, 1, 2));
    printf("ok memsets: 8/16/32-bit, ragged, 2D\n");

    /* Streams and events: ordering across streams and with the legacy default stream. */
    CUevent e0, e1, e2;
    OK(cuEventCreate(&e0, 0));
    OK(cuEventCreate(&e1, 0));
    OK(cuEventCreate(&e2, 0));
    OK(cuEventQuery(e2));
    OK(cuEventRecord(e0, s1));
    OK(cuMemsetD8Async(d, 0x11, n, s1));
    OK(cuEventRecord(e1, s1));
    OK(cuStreamWaitEvent(s3, e1, 0));
    OK(cuMemcpyDtoDAsync_v2(big, d + n - 100, 100, s3));
    OK(cuEventRecord(e2, s3));
    OK(cuEventSynchronize(e2));
    OK(cuEventQuery(e1));
    float ms = -1;
    OK(cuEventElapsedTime(&ms, e0, e1));
    CHECK(ms >= 0.0f && ms < 10000.0f, "elapsed %f ms", ms);
    OK(cuMemcpyDtoH_v2(out, big, 100));
    for (int i = 0; i < 100; i++) CHECK(out[i] == 0x11, "wait-event ordering byte %d", i);
    /* A blocking stream's work comes before the legacy stream's next work. */
    OK(cuMemsetD8Async(d, 0x22, n, s2));
    OK(cuMemcpyDtoH_v2(out, d + n - 10, 10));
    for (int i = 0; i < 10; i++) CHECK(out[i] == 0x22, "legacy ordering byte %d", i);
    printf("ok streams and events: wait-event, legacy ordering, %.3f ms for a 20 MiB memset\n", ms);

    /* Host functions run after the stream's earlier work. */
    fill(pin, 64, 7);
    OK(cuMemcpyHtoDAsync_v2(a, pin, 64, s2));
    OK(cuMemcpyDtoHAsync_v2(pin + 64, a, 64, s2));
    OK(cuLaunchHostFunc(s2, on_host, pin + 64));
    OK(cuStreamSynchronize(s2));
    CHECK(host_calls == 1 && host_seen == pin + 64 && memcmp(pin, pin + 64, 64) == 0,
          "host function ran once after the copies");
    OK(cuCtxSynchronize());
    printf("ok host functions\n");

    /* Error paths. */
    OK(cuGetErrorName(CUDA_ERROR_ILLEGAL_ADDRESS, &name));
    CHECK(strcmp(name, "CUDA_ERROR_ILLEGAL_ADDRESS") == 0, "%s", name);
    /* The driver's own messages, which programs print and peers' tests compare. */
    OK(cuGetErrorString(CUDA_ERROR_NOT_SUPPORTED, &text));
    CHECK(strcmp(text, "operation not supported") == 0, "%s", text);
    OK(cuGetErrorString(CUDA_SUCCESS, &text));
    CHECK(strcmp(text, "no error") == 0, "%s", text);
    OK(cuGetErrorString(CUDA_ERROR_INVALID_DEVICE, &text));
    CHECK(strcmp(text, "invalid device ordinal") == 0, "%s", text);
    /* Another code keeps the first sentence of cuda.h's description. */
    OK(cuGetErrorString(CUDA_ERROR_STUB_LIBRARY, &text));
    CHECK(strncmp(text, "This indicates", 14) == 0, "%s", text);
    /* A NULL function is an invalid value; an unknown one an invalid handle. */
    IS(CUDA_ERROR_INVALID_VALUE, cuFuncGetName(&name, NULL));
    IS(CUDA_ERROR_INVALID_HANDLE, cuFuncGetName(&name, (CUfunction)0x1234567));
    IS(CUDA_ERROR_INVALID_VALUE, cuGetErrorName(12345, &name));
    IS(CUDA_ERROR_INVALID_HANDLE, cuStreamSynchronize((CUstream)0x1234567));
    IS(CUDA_ERROR_INVALID_HANDLE, cuEventRecord((CUevent)0x1234567, 0));
    IS(CUDA_ERROR_NOT_SUPPORTED, cuGraphCreate(NULL, 0));
    /* A module and a launch on a backend without PTX: clean errors, the context goes on. */
    CUmodule mod = NULL;
    CUfunction fn = NULL;
    const char *ptx = ".version 8.0\n.target sm_90\n.address_size 64\n"
                      ".visible .entry k(.param .u64 p) { ret; }\n";
    CUresult lr = cuModuleLoadData(&mod, ptx);
    CHECK(lr == CUDA_ERROR_NOT_SUPPORTED || lr == CUDA_SUCCESS, "module load = %d", lr);
    if (lr == CUDA_SUCCESS) {
        OK(cuModuleGetFunction(&fn, mod, "k"));
        void *args[] = {&a};
        IS(CUDA_ERROR_NOT_SUPPORTED, cuLaunchKernel(fn, 1, 1, 1, 1, 1, 1, 0, 0, args, NULL));
    } else {
        IS(CUDA_ERROR_INVALID_HANDLE, cuModuleGetFunction(&fn, mod, "k"));
        IS(CUDA_ERROR_INVALID_HANDLE, cuLaunchKernel(fn, 1, 1, 1, 1, 1, 1, 0, 0, NULL, NULL));
    }
    OK(cuMemcpyHtoD_v2(a, "after", 5));
    OK(cuMemcpyDtoH_v2(out, a, 5));
    CHECK(memcmp(out, "after", 5) == 0, "the context works after the refused module");
    printf("ok errors: names, bad handles, unsupported calls, module and launch without PTX (%d)\n", lr);

    OK(cuEventDestroy_v2(e0));
    OK(cuEventDestroy_v2(e1));
    OK(cuEventDestroy_v2(e2));
    OK(cuStreamDestroy_v2(s1));
    OK(cuStreamDestroy_v2(s2));
    OK(cuStreamDestroy_v2(s3));
    OK(cuMemFreeHost(pin));
    OK(cuMemFree_v2(a));
    OK(cuMemFree_v2(b));
    OK(cuMemFree_v2(big));
    OK(cuMemFree_v2(d));
    OK(cuMemGetInfo_v2(&free1, &tot));
    CHECK(free1 == free0, "all memory back: %zu vs %zu", free1, free0);
    OK(cuCtxPopCurrent_v2(&cur));
    OK(cuDevicePrimaryCtxRelease_v2(dev));
    free(h);
    free(h2);
    printf("PASS %d checks\n", checks);
    return 0;
}
