//! GPU-MMU walks over random page tables: the input is the walks to try
//! (PDB, VA, length, write; 20 bytes each, up to 16) followed by the first
//! bytes of 64 KiB of guest RAM at GPA 0 (page directories and tables; the
//! rest zero). A walk must end in extents inside the framebuffer and the
//! DMA map, or in a fault; never loop, panic or read outside.
#![no_main]

use std::io::Write;

use devmodel::gmmu::{Aperture, Gmmu};
use devmodel::memory::GuestRam;
use libfuzzer_sys::fuzz_target;

const RAM: u64 = 64 << 10;
const VRAM: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let (walks, tables) = data.split_at(data.len().min(16 * 20));
    let tables = &tables[..tables.len().min(RAM as usize)];
    let fd = devmodel::harness::memfd(RAM);
    (&fd).write_all(tables).expect("fill guest RAM");
    let mem = GuestRam::new();
    mem.map(0, RAM, fd, 0, true).expect("map guest RAM");
    let mut mmu = Gmmu::new(VRAM);
    for w in walks.chunks_exact(20) {
        // Mostly inside guest RAM, sometimes not.
        let pdb = (u16::from_le_bytes([w[0], w[1]]) as u64 & 0x1F) << 12;
        let va = u64::from_le_bytes([w[2], w[3], w[4], w[5], w[6], w[7], w[8], w[9]]);
        let len = u32::from_le_bytes([w[10], w[11], w[12], w[13]]) as u64 & 0xFF_FFFF;
        let write = w[14] & 1 != 0;
        if w[15] & 1 != 0 {
            mmu.invalidate();
        }
        if let Ok(ext) = mmu.translate(&mem, pdb, va, len, write) {
            assert_eq!(ext.iter().map(|e| e.len).sum::<u64>(), len);
            for e in ext {
                let limit = match e.aperture {
                    Aperture::Vram => VRAM,
                    Aperture::Sysmem => RAM,
                };
                assert!(e.addr + e.len <= limit, "{e:?} outside");
            }
        }
    }
});
