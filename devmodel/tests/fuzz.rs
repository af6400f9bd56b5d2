//! Property tests: arbitrary pushbuffers, page tables and register writes
//! never panic the device, never reach memory outside what the vGPU was
//! given, and leave the vGPU (and its neighbours) working.

use devmodel::harness as common;

use std::time::{Duration, Instant};

use common::*;
use devmodel::CpuEngine;
use mmio::bar::{REGION_BAR0, REGION_BAR2, REGION_CONFIG};
use mmio::methods::MethodHeader;
use mmio::methods::{compute, copy, host, COMPUTE_CLASS, COPY_CLASS};
use proptest::prelude::*;
use proptest::test_runner::Config;

const CANARY: u8 = 0xC5;

fn config() -> Config {
    Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    }
}

/// A guest with scratch buffers mapped at known VAs and an unmapped canary.
struct Rig {
    g: Guest,
    neighbour: Guest,
    ch: Chan,
    canary: u64,
}

fn rig() -> Rig {
    let e: &'static CpuEngine = Box::leak(Box::new(engine()));
    let mut g = Guest::new(e, 8, 1, 2);
    let mut neighbour = Guest::new(e, 1, 1, 1);
    let ch = g.channel(0, 8);
    // Scratch buffers at SYS_VA and VRAM_VA, which the generated segments name.
    g.sys_buf(16384);
    g.vram_buf(16384);
    let canary = g.alloc_sys(65536);
    g.w(canary, &[CANARY; 65536]);
    let n = neighbour.alloc_sys(65536);
    neighbour.w(n, &[CANARY; 65536]);
    Rig {
        g,
        neighbour,
        ch,
        canary,
    }
}

impl Rig {
    /// Run until idle or faulted; a run that takes too long is reset.
    fn settle(&mut self) {
        let deadline = Instant::now() + Duration::from_millis(300);
        loop {
            let st = self.g.chreg(0, CH_STATUS) & 0xF;
            if st == STATE_FAULTED
                || st == STATE_IDLE && self.g.chreg(0, CH_GP_GET) == self.ch.put
                || st == STATE_BLOCKED
            {
                break;
            }
            if Instant::now() > deadline {
                self.g.set_reg(RESET, 1);
                break;
            }
            std::thread::sleep(Duration::from_micros(300));
        }
    }

    /// The canaries are intact and the vGPU still does work.
    fn check(&mut self) {
        assert!(
            self.g.r(self.canary, 65536).iter().all(|&b| b == CANARY),
            "unmapped guest memory was written"
        );
        assert!(
            self.neighbour
                .r(0x8000_0000 + 4096, 65536 - 4096)
                .iter()
                .all(|&b| b == CANARY || b == 0),
            "another guest's memory was written"
        );
        // Recover: engine reset, then a fresh channel must work.
        self.g.set_reg(RESET, 1);
        let mut ch = self.g.channel(1, 8);
        let (sg, sv) = self.g.sys_buf(64);
        self.g
            .submit(&mut ch, &Pb::new().sem(sv, 0xFEED, host::SEM_OP_RELEASE).0);
        assert_eq!(self.g.wait(&ch), STATE_IDLE);
        assert_eq!(self.g.r32(sg), 0xFEED);
    }
}

fn method() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(host::SET_OBJECT),
        Just(host::SEM_ADDR_LO),
        Just(host::SEM_EXECUTE),
        Just(host::NON_STALL_INTERRUPT),
        (0u32..0x20).prop_map(|i| 0x100 + 4 * i),
        Just(copy::LAUNCH),
        Just(compute::LAUNCH),
        any::<u32>().prop_map(|m| m & 0x7FFC),
    ]
}

fn data(scratch: Vec<u64>) -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(COPY_CLASS),
        Just(COMPUTE_CLASS),
        0u32..16,
        (0usize..4).prop_map(move |i| scratch[i] as u32),
        Just(0x40),
        any::<u32>(),
    ]
}

fn segment() -> impl Strategy<Value = Vec<u32>> {
    let scratch = vec![SYS_VA, SYS_VA + 4096, VRAM_VA, VRAM_VA + 8192];
    prop::collection::vec(
        (
            prop_oneof![Just(1u8), Just(3), Just(4), Just(5), Just(7), 0u8..8],
            0u8..8,
            method(),
            prop::collection::vec(data(scratch), 0..6),
        ),
        0..24,
    )
    .prop_map(|hs| {
        let mut w = Vec::new();
        for (op, sub, m, d) in hs {
            w.push(
                MethodHeader::new(
                    op,
                    sub,
                    m,
                    if op == 4 {
                        d.first().copied().unwrap_or(0) & 0x1FFF
                    } else {
                        d.len() as u32
                    },
                )
                .0,
            );
            if op != 4 {
                w.extend(d);
            }
        }
        w
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_pushbuffers(words in segment(), raw in prop::collection::vec(any::<u32>(), 0..16)) {
        let mut r = rig();
        let mut ch = r.ch;
        let mut all = Pb::new().incr(1, host::SET_OBJECT, &[COMPUTE_CLASS]).incr(4, host::SET_OBJECT, &[COPY_CLASS]).0;
        all.extend(words);
        all.extend(raw);
        r.g.submit(&mut ch, &all);
        r.ch = ch;
        r.settle();
        r.check();
    }

    #[test]
    fn arbitrary_page_tables(ptes in prop::collection::vec(any::<u64>(), 1..12), large in any::<bool>()) {
        let mut r = rig();
        let mut ch = r.ch;
        // Scribble over the L1 (2 MiB) or L0 (4 KiB) entries covering the
        // target VA range; the slots are located first, then overwritten.
        let va = 0x30_0000_0000u64;
        let shift = if large { 21 } else { 12 };
        let slots: Vec<u64> = (0..ptes.len() as u64).map(|i| r.g.pte_slot(va + (i << shift), large)).collect();
        for (slot, &p) in slots.iter().zip(&ptes) {
            r.g.w64(*slot, p);
        }
        let (_, dst) = r.g.sys_buf(4096);
        let pb = Pb::new().bind().copy(va, dst, 3 * 4096).copy(dst, va + 100, 4096).sem(va + 8, 1, host::SEM_OP_RELEASE);
        r.g.submit(&mut ch, &pb.0);
        r.ch = ch;
        r.settle();
        // Random PTEs may legitimately point into this guest's own RAM (the
        // canary included); they can never reach another guest's memory.
        r.g.w(r.canary, &[CANARY; 65536]);
        r.check();
    }

    #[test]
    fn arbitrary_register_writes(writes in prop::collection::vec((0u8..4, any::<u16>(), any::<u32>(), prop_oneof![Just(4usize), Just(8), 1usize..9]), 1..64)) {
        let mut r = rig();
        for (region, off, v, len) in writes {
            let bytes: Vec<u8> = v.to_le_bytes().iter().chain(v.to_le_bytes().iter()).copied().take(len).collect();
            let (index, off) = match region {
                0 => (REGION_BAR0, off as u64),
                1 => (REGION_BAR0, 0x1000 + (off as u64 % 0x100)),
                2 => (REGION_CONFIG, off as u64 % 0x1100),
                _ => (REGION_BAR2, off as u64 % 0x1100),
            };
            let _ = r.g.vgpu.region_write(index, off, &bytes);
            let mut back = vec![0u8; len];
            let _ = r.g.vgpu.region_read(index, off, &mut back);
        }
        r.settle();
        assert_eq!(r.g.reg(ID), mmio::regs::ID_MAGIC);
        // Restore config space (the writes may have masked bus mastering).
        r.g.vgpu.reset();
        r.check();
    }
}
