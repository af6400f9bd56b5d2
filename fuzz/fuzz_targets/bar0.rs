//! BAR0 (and BAR2, BAR4, config space) access sequences: each 8 bytes of
//! input are one access (region, width, offset, value; reads and writes),
//! against a vGPU with guest RAM mapped, so that channel enables, runlist
//! submits and doorbells reach guest memory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mmio::bar::{REGION_BAR0, REGION_BAR2, REGION_BAR4, REGION_CONFIG};

fuzz_target!(|data: &[u8]| {
    let g = guest();
    let vgpu = &g.1.vgpu;
    vgpu.reset();
    for a in data.chunks_exact(8) {
        let region = [
            REGION_BAR0,
            REGION_BAR0,
            REGION_BAR2,
            REGION_BAR4,
            REGION_CONFIG,
            9,
        ][(a[0] & 7) as usize % 6];
        let len = [1usize, 2, 4, 8][(a[0] >> 3 & 3) as usize];
        let offset = u16::from_le_bytes([a[1], a[2]]) as u64;
        let value = u32::from_le_bytes([a[3], a[4], a[5], a[6]]) as u64 | (a[7] as u64) << 32;
        if a[0] & 0x80 != 0 {
            let mut buf = [0u8; 8];
            let _ = vgpu.region_read(region, offset, &mut buf[..len]);
        } else {
            let _ = vgpu.region_write(region, offset, &value.to_le_bytes()[..len]);
        }
    }
});

fn guest() -> &'static (devmodel::CpuEngine, devmodel::harness::Guest) {
    use std::sync::OnceLock;
    static G: OnceLock<(devmodel::CpuEngine, devmodel::harness::Guest)> = OnceLock::new();
    G.get_or_init(|| {
        let engine = devmodel::CpuEngine::new(1).expect("engine");
        let g = devmodel::harness::Guest::new(&engine, 2, 1, 4);
        (engine, g)
    })
}
