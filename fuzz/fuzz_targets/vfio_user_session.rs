//! The vfio-user server's message handling: any sequence of messages (the
//! input, cut at each header's size) against one vGPU, then the client
//! leaving. Nothing may panic, hang or allocate what the client claims.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let engine = vgpud_fuzz_engine();
    vgpud::vfio_user::fuzz_session(&engine.1, data);
});

/// One engine and vGPU for every run (creating threads per run would be
/// most of the time spent); the session resets the vGPU when it ends.
fn vgpud_fuzz_engine() -> &'static (devmodel::CpuEngine, devmodel::Vgpu) {
    use std::sync::OnceLock;
    static VGPU: OnceLock<(devmodel::CpuEngine, devmodel::Vgpu)> = OnceLock::new();
    VGPU.get_or_init(|| {
        let engine = devmodel::CpuEngine::new(1).expect("engine");
        let g = devmodel::harness::Guest::new(&engine, 1, 1, 4);
        (engine, g.vgpu)
    })
}
