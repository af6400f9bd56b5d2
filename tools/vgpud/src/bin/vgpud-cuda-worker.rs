//! `vgpud-cuda-worker`: one vGPU's GPU work, in a process of its own
//! (`engine_cuda::cli`), installed beside `vgpud`, which starts it.

fn main() {
    engine_cuda::cli::main()
}
