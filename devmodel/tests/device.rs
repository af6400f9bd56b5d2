//! The vGPU driven through its face with guest RAM in a memfd: results are
//! read back from guest memory.

use devmodel::harness as common;

use std::fs::File;
use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use mmio::bar::{REGION_BAR0, REGION_CONFIG};
use mmio::methods::MethodHeader;
use mmio::methods::{compute, copy, host};
use mmio::regs::{ErrorCode, ID_MAGIC};

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

#[test]
fn the_device_info_block_reads_a_word_at_a_time() {
    let e = engine();
    let g = Guest::new(&e, 4, 16, 4);
    g.set_reg(0x0B0, 0);
    let words = g.reg(0x0B4);
    assert_eq!(g.reg(0x0B0), 1, "INFO_DATA moves INFO_INDEX on");
    let block: Vec<u32> = std::iter::once(words)
        .chain((1..words).map(|_| g.reg(0x0B4)))
        .collect();
    let want = devmodel::identity::cpu_engine(2).encode();
    assert_eq!(block.len(), want.len());
    assert_eq!(block[1], 0, "no CUDA driver behind the cpu engine");
    assert_eq!(
        block[mmio::devinfo::ATTRS as usize + 75],
        9,
        "compute capability 9.x"
    );
    assert_eq!(block[mmio::devinfo::ATTRS as usize + 10], 32, "warp size");
    assert_eq!(
        &block[8..12],
        &want[8..12],
        "the name: {:?}",
        String::from_utf8_lossy(
            &block[8..14]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect::<Vec<u8>>()
        )
    );
    assert_eq!(g.reg(0x0B4), 0, "past the end reads 0");
    g.set_reg(0x0B0, mmio::devinfo::ATTRS + 16);
    assert_eq!(g.reg(0x0B4), 2, "a multiprocessor per engine worker");
    // An engine reset returns INFO_INDEX to 0.
    g.set_reg(0x040, 1);
    assert_eq!(g.reg(0x0B0), 0);
    assert_eq!(g.reg(0x0B4), words);
}

#[test]
fn identity_registers_and_bar_sizing() {
    let e = engine();
    let g = Guest::new(&e, 4, 16, 4);
    assert_eq!(g.reg(ID), ID_MAGIC);
    assert_eq!(g.reg(0x004), 0x0001_0003, "ABI 1.3");
    assert_eq!(
        g.reg(0x008),
        0x0106,
        "CAPS: large pages, doorbell page, 1 vector"
    );
    assert_eq!(g.reg(0x00C), 4);
    assert_eq!(g.reg(0x010), 16 << 20);
    assert_eq!(g.reg(0x014), 0);
    assert_eq!(g.cfg32(0) & 0xFFFF, 0x7667);
    assert_eq!(g.cfg32(8) >> 8, 0x030200);
    for bar in 0..6u64 {
        g.vgpu
            .region_write(REGION_CONFIG, 0x10 + 4 * bar, &[0xFF; 4])
            .unwrap();
    }
    assert_eq!(g.cfg32(0x10), 0xFFFF_0000);
    assert_eq!(g.cfg32(0x14), 0);
    assert_eq!(g.cfg32(0x18), 0xFFFF_F000);
    assert_eq!(g.cfg32(0x1C), 0);
    assert_eq!(g.cfg32(0x20), 0xFFFF_F000, "BAR4: the doorbell page");
    assert_eq!(g.cfg32(0x24), 0);
    // Holes read zero and ignore writes; bad widths are errors.
    g.set_reg(0x0FC, 0xDEAD_BEEF);
    assert_eq!(g.reg(0x0FC), 0);
    assert!(g
        .vgpu
        .region_read(REGION_BAR0, 0x21, &mut [0u8; 4])
        .is_err());
    assert!(g
        .vgpu
        .region_read(REGION_BAR0, 0x1_0000, &mut [0u8; 4])
        .is_err());
    assert!(g.vgpu.region_write(REGION_BAR0, 0x20, &[1, 2]).is_err());
    assert!(g.vgpu.region_read(5, 0, &mut [0u8; 4]).is_err());
    assert_eq!(g.vgpu.stats().bad_accesses, 3);
    // The timer moves forward.
    let t0 = g.reg(TIMER_LO);
    std::thread::sleep(Duration::from_millis(2));
    assert!(g.reg(TIMER_LO).wrapping_sub(t0) >= 2_000_000);
}

#[test]
fn saxpy_fill_and_reduce_in_system_memory() {
    let e = engine();
    let mut g = Guest::new(&e, 16, 16, 2);
    let mut ch = g.channel(0, 16);
    let n = 10_000u32;
    let mut seed = 7;
    let x: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
    let y: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
    let (xg, xv) = g.sys_buf(n as u64 * 4);
    let (yg, yv) = g.sys_buf(n as u64 * 4);
    let (fg, fv) = g.sys_buf(n as u64 * 4);
    let (sg, sv) = g.sys_buf(4);
    g.wf32(xg, &x);
    g.wf32(yg, &y);
    let (p1, s1) = g.params(Params::default().u64(xv).u64(yv).u32(n).f32(2.5));
    let (p2, s2) = g.params(Params::default().u64(fv).u32(n).u32(1.25f32.to_bits()));
    let (p3, s3) = g.params(Params::default().u64(xv).u64(sv).u32(n).u32(0));
    let pb = Pb::new()
        .bind()
        .launch(compute::PROG_SAXPY, p1, s1)
        .launch(compute::PROG_FILL, p2, s2)
        .launch(compute::PROG_REDUCE_SUM, p3, s3);
    g.submit(&mut ch, &pb.0);
    assert_eq!(g.wait(&ch), STATE_IDLE);
    let got = g.rf32(yg, n as usize);
    for i in 0..n as usize {
        assert_eq!(got[i], 2.5f32.mul_add(x[i], y[i]), "saxpy element {i}");
    }
    assert!(g.rf32(fg, n as usize).iter().all(|&v| v == 1.25));
    let want: f64 = x.iter().map(|&v| v as f64).sum();
    let sum = g.rf32(sg, 1)[0] as f64;
    assert!((sum - want).abs() < 1e-3, "reduce_sum {sum} vs {want}");
    assert_eq!(g.chreg(0, CH_GP_GET), 1);
    assert_eq!(g.r32(ch.userd_gpa + 4), 1, "USERD GP_GET follows");
    assert_eq!(g.vgpu.stats().commands, 3);
}

#[test]
fn gemm_in_vram_against_reference() {
    let e = engine();
    let mut g = Guest::new(&e, 16, 16, 1);
    let mut ch = g.channel(0, 8);
    let (m, n, k) = (37u32, 29u32, 41u32);
    let mut seed = 99;
    let a: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
    let b: Vec<f32> = (0..k * n).map(|_| lcg(&mut seed)).collect();
    let c: Vec<f32> = (0..m * n).map(|_| lcg(&mut seed)).collect();
    let (alpha, beta) = (1.5f32, -0.5f32);
    let (ag, av) = g.sys_buf(a.len() as u64 * 4);
    let (bg, bv) = g.sys_buf(b.len() as u64 * 4);
    let (cg, cv) = g.sys_buf(c.len() as u64 * 4);
    g.wf32(ag, &a);
    g.wf32(bg, &b);
    g.wf32(cg, &c);
    let (_, va_a) = g.vram_buf(a.len() as u64 * 4);
    let (_, va_b) = g.vram_buf(b.len() as u64 * 4);
    let (_, va_c) = g.vram_buf(c.len() as u64 * 4);
    let (p, s) = g.params(
        Params::default()
            .u64(va_a)
            .u64(va_b)
            .u64(va_c)
            .u32(m)
            .u32(n)
            .u32(k)
            .f32(alpha)
            .f32(beta)
            .u32(0),
    );
    let pb = Pb::new()
        .bind()
        .copy(av, va_a, a.len() as u32 * 4)
        .copy(bv, va_b, b.len() as u32 * 4)
        .copy(cv, va_c, c.len() as u32 * 4)
        .launch(compute::PROG_GEMM_F32, p, s)
        .copy(va_c, cv, c.len() as u32 * 4);
    g.submit(&mut ch, &pb.0);
    assert_eq!(g.wait(&ch), STATE_IDLE);
    let got = g.rf32(cg, c.len());
    for i in 0..m as usize {
        for j in 0..n as usize {
            let dot: f64 = (0..k as usize)
                .map(|p| a[i * k as usize + p] as f64 * b[p * n as usize + j] as f64)
                .sum();
            let want = alpha as f64 * dot + beta as f64 * c[i * n as usize + j] as f64;
            let gotv = got[i * n as usize + j] as f64;
            assert!(
                (gotv - want).abs() < 1e-4,
                "C[{i}][{j}] = {gotv}, want {want}"
            );
        }
    }
}

#[test]
fn copies_in_every_aperture_mix_1d_and_2d() {
    let e = engine();
    let mut g = Guest::new(&e, 16, 16, 1);
    let mut ch = g.channel(0, 64);
    let len = 3 * 4096 + 123; // crosses pages
    let pattern: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
    let (src_g, src_v) = g.sys_buf(len as u64);
    g.w(src_g, &pattern);
    let (_, vram_a) = g.vram_buf(len as u64);
    let (_, vram_b) = g.vram_buf(len as u64);
    let (sys_b_g, sys_b_v) = g.sys_buf(len as u64);
    let (out_g, out_v) = g.sys_buf(len as u64);
    // sys->vram, vram->vram, vram->sys, sys->sys
    let pb = Pb::new()
        .bind()
        .copy(src_v, vram_a, len)
        .copy(vram_a, vram_b, len)
        .copy(vram_b, sys_b_v, len)
        .copy(sys_b_v, out_v, len);
    g.submit(&mut ch, &pb.0);
    assert_eq!(g.wait(&ch), STATE_IDLE);
    assert_eq!(
        g.r(sys_b_g, len as usize),
        pattern,
        "after sys->vram->vram->sys"
    );
    assert_eq!(g.r(out_g, len as usize), pattern, "after sys->sys");

    // 2D: a 40x30 window out of a 100-byte-pitch image, through VRAM.
    let (w, h, sp, dp) = (40u32, 30u32, 100u32, 64u32);
    let img: Vec<u8> = (0..sp * h).map(|i| (i % 251) as u8).collect();
    let (img_g, img_v) = g.sys_buf(img.len() as u64);
    g.w(img_g, &img);
    let (_, v2d) = g.vram_buf((dp * h) as u64);
    let (o2_g, o2_v) = g.sys_buf((sp * h) as u64);
    let pb = Pb::new()
        .copy2d(img_v + 5, sp, v2d, dp, w, h)
        .copy2d(v2d, dp, o2_v, sp, w, h);
    g.submit(&mut ch, &pb.0);
    assert_eq!(g.wait(&ch), STATE_IDLE);
    let out = g.r(o2_g, (sp * h) as usize);
    for y in 0..h as usize {
        for x in 0..sp as usize {
            let want = if x < w as usize {
                img[y * sp as usize + x + 5]
            } else {
                0
            };
            assert_eq!(out[y * sp as usize + x], want, "pixel ({x},{y})");
        }
    }
    // memset to VRAM and back.
    let (_, mv) = g.vram_buf(8192);
    let (mg, mvs) = g.sys_buf(8192);
    let pb = Pb::new().memset(mv, 8192, 0xA5A5_5A5A).copy(mv, mvs, 8192);
    g.submit(&mut ch, &pb.0);
    assert_eq!(g.wait(&ch), STATE_IDLE);
    assert!(g
        .r(mg, 8192)
        .chunks(4)
        .all(|c| c == [0x5A, 0x5A, 0xA5, 0xA5]));
}

#[test]
fn large_pages_map_vram_and_sysmem() {
    let e = engine();
    let mut g = Guest::new(&e, 16, 16, 1);
    let mut ch = g.channel(0, 8);
    let sys2m = (g.alloc_sys(4 << 20) + (2 << 20) - 1) & !((2 << 20) - 1);
    g.map_large(0x20_0000_0000, sys2m, true);
    g.map_large(0x20_0020_0000, 2 << 20, false);
    let data: Vec<u8> = (0..5000).map(|i| (i % 199) as u8).collect();
    g.w(sys2m + 0x1234, &data);
    let (out_g, out_v) = g.sys_buf(5000);
    let pb = Pb::new()
        .bind()
        .copy(0x20_0000_1234, 0x20_0020_0100, 5000)
        .copy(0x20_0020_0100, out_v, 5000);
    g.submit(&mut ch, &pb.0);
    assert_eq!(g.wait(&ch), STATE_IDLE);
    assert_eq!(g.r(out_g, 5000), data);
}

#[test]
fn semaphores_payloads_timestamps_and_interrupts() {
    let e = engine();
    let mut g = Guest::new(&e, 8, 8, 2);
    let (irq_fd, irq) = eventfd();
    g.vgpu
        .set_irqs(mmio::bar::IRQ_INDEX_MSIX, 0, vec![Some(irq_fd)])
        .unwrap();
    g.set_reg(INTR_ENABLE, 0x7);
    let mut ch = g.channel(1, 8);
    let (sg, sv) = g.sys_buf(64);
    let pb = Pb::new()
        .sem(sv, 0x1234_5678_9ABC_DEF0, host::SEM_OP_RELEASE)
        .sem(
            sv + 8,
            0x1122_3344_5566_7788,
            host::SEM_OP_RELEASE | host::SEM_PAYLOAD_64,
        )
        .sem(sv + 16, 1, host::SEM_OP_RELEASE | host::SEM_TIMESTAMP)
        .sem(
            sv + 32,
            2,
            host::SEM_OP_RELEASE | host::SEM_TIMESTAMP | host::SEM_INTERRUPT,
        );
    g.submit(&mut ch, &pb.0);
    assert_eq!(g.wait(&ch), STATE_IDLE);
    assert_eq!(
        g.r32(sg),
        0x9ABC_DEF0,
        "32-bit release writes the low payload"
    );
    assert_eq!(g.r32(sg + 4), 0, "and nothing more");
    assert_eq!(g.r64(sg + 8), 0x1122_3344_5566_7788);
    assert_eq!((g.r64(sg + 16), g.r64(sg + 32)), (1, 2));
    let (t1, t2) = (g.r64(sg + 24), g.r64(sg + 40));
    assert!(t1 > 0 && t2 >= t1, "timestamps increase: {t1} {t2}");
    assert_eq!(irq.read().unwrap(), 1, "MSI-X eventfd fired once");
    assert_eq!(g.reg(INTR_STATUS), 1, "HOST cause");
    assert_eq!(g.reg(INTR_CHANNEL_LO), 1 << 1, "from channel 1");
    g.set_reg(INTR_STATUS, 1);
    g.set_reg(INTR_CHANNEL_LO, 1 << 1);
    assert_eq!(g.reg(INTR_STATUS), 0, "write-1-to-clear");
    // NON_STALL_INTERRUPT with the cause masked: status set, no MSI.
    g.set_reg(INTR_ENABLE, 0);
    g.submit(
        &mut ch,
        &Pb::new().incr(0, host::NON_STALL_INTERRUPT, &[0]).0,
    );
    assert_eq!(g.wait(&ch), STATE_IDLE);
    assert_eq!(g.reg(INTR_STATUS), 1);
    assert!(irq.read().is_err(), "masked cause does not signal");
    // Enabling a pending cause signals at once.
    g.set_reg(INTR_ENABLE, 1);
    assert_eq!(irq.read().unwrap(), 1);
}

#[test]
fn acquire_blocks_only_its_channel_until_released() {
    let e = engine();
    let mut g = Guest::new(&e, 8, 8, 2);
    let mut a = g.channel(0, 8);
    let mut b = g.channel(1, 8);
    let (sg, sv) = g.sys_buf(64);
    g.submit(
        &mut a,
        &Pb::new()
            .sem(sv, 5, host::SEM_OP_ACQUIRE_GEQ)
            .sem(sv + 8, 77, host::SEM_OP_RELEASE)
            .0,
    );
    g.wait_state(0, STATE_BLOCKED);
    // Channel 1 runs while channel 0 waits.
    g.submit(&mut b, &Pb::new().sem(sv + 16, 9, host::SEM_OP_RELEASE).0);
    assert_eq!(g.wait(&b), STATE_IDLE);
    assert_eq!(g.r32(sg + 16), 9);
    assert_eq!(g.r32(sg + 8), 0, "blocked channel did not run on");
    // Channel 1 releases 4 (not enough), then the CPU writes 6.
    g.submit(&mut b, &Pb::new().sem(sv, 4, host::SEM_OP_RELEASE).0);
    assert_eq!(g.wait(&b), STATE_IDLE);
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(g.chreg(0, CH_STATUS) & 0xF, STATE_BLOCKED);
    g.w32(sg, 6);
    assert_eq!(g.wait(&a), STATE_IDLE);
    assert_eq!(g.r32(sg + 8), 77);
    // Equality acquire satisfied by another channel's release.
    g.submit(
        &mut a,
        &Pb::new()
            .sem(sv + 24, 3, host::SEM_OP_ACQUIRE_EQ)
            .sem(sv + 32, 1, host::SEM_OP_RELEASE)
            .0,
    );
    g.wait_state(0, STATE_BLOCKED);
    g.submit(&mut b, &Pb::new().sem(sv + 24, 3, host::SEM_OP_RELEASE).0);
    assert_eq!(g.wait(&a), STATE_IDLE);
    assert_eq!(g.r32(sg + 32), 1);
}

#[test]
fn gp_get_advances_per_entry_and_wraps() {
    let e = engine();
    let mut g = Guest::new(&e, 8, 8, 1);
    let mut ch = g.channel(0, 4);
    let (sg, sv) = g.sys_buf(64);
    for i in 0..10u32 {
        g.submit(
            &mut ch,
            &Pb::new().sem(sv, i as u64, host::SEM_OP_RELEASE).0,
        );
        assert_eq!(g.wait(&ch), STATE_IDLE);
        assert_eq!(g.chreg(0, CH_GP_GET), (i + 1) % 4);
        assert_eq!(g.r32(sg), i);
    }
}

/// A fault scenario: a segment that must stop channel 0 with `code`.
fn fault_case(code: ErrorCode, build: impl FnOnce(&mut Guest) -> Vec<u32>, mmu_va: Option<u64>) {
    let e = engine();
    let mut g = Guest::new(&e, 16, 4, 2);
    let (irq_fd, irq) = eventfd();
    g.vgpu
        .set_irqs(mmio::bar::IRQ_INDEX_MSIX, 0, vec![Some(irq_fd)])
        .unwrap();
    g.set_reg(INTR_ENABLE, 0x7);
    let mut bad = g.channel(0, 8);
    let mut good = g.channel(1, 8);
    let (sg, sv) = g.sys_buf(64);
    let words = build(&mut g);
    g.submit(&mut bad, &words);
    // A second channel works before, during and after the fault.
    let n = 4096u32;
    let (xg, xv) = g.sys_buf(n as u64 * 4);
    g.wf32(xg, &vec![1.0; n as usize]);
    let (p, s) = g.params(Params::default().u64(xv).u64(xv).u32(n).f32(1.0));
    g.submit(
        &mut good,
        &Pb::new()
            .bind()
            .launch(compute::PROG_SAXPY, p, s)
            .sem(sv, 42, host::SEM_OP_RELEASE)
            .0,
    );
    assert_eq!(
        g.wait(&bad),
        STATE_FAULTED,
        "{code:?}: offending channel stops"
    );
    assert_eq!(
        g.wait(&good),
        STATE_IDLE,
        "{code:?}: other channel completes"
    );
    assert_eq!(g.r32(sg), 42);
    assert!(g.rf32(xg, n as usize).iter().all(|&v| v == 2.0));
    assert_eq!(
        (g.chreg(0, CH_STATUS) >> 8) & 0xFF,
        code as u32,
        "error code in CH_STATUS"
    );
    assert_eq!(g.chreg(0, CH_GP_GET), 0, "faulting entry not retired");
    // Error notifier.
    assert_eq!(g.r32(bad.notifier_gpa + 8), code as u32);
    assert!(g.r64(bad.notifier_gpa) > 0);
    // Interrupt and its registers.
    assert!(irq.read().unwrap() >= 1);
    assert_ne!(g.reg(INTR_CHANNEL_LO) & 1, 0);
    let info = g.reg(MMU_FAULT_INFO);
    if let Some(va) = mmu_va {
        assert_eq!(g.reg(INTR_STATUS) & 2, 2, "MMU_FAULT cause");
        assert_eq!(info >> 31, 1, "fault record valid");
        assert_eq!(info & 0xFF, code as u32);
        assert_eq!((info >> 8) & 0xFF, 0, "channel 0");
        let addr = g.reg(MMU_FAULT_ADDR_LO) as u64 | (g.reg(MMU_FAULT_ADDR_HI) as u64) << 32;
        assert_eq!(addr, va, "{code:?}: fault address");
        g.set_reg(MMU_FAULT_INFO, 1 << 31);
        assert_eq!(g.reg(MMU_FAULT_INFO), 0, "record cleared");
    } else {
        assert_eq!(g.reg(INTR_STATUS) & 4, 4, "CHANNEL_ERROR cause");
        assert_eq!(info, 0, "no MMU record for a method error");
    }
    // Recovery: reset the channel, enable it again, it works.
    g.set_chreg(0, CH_CTRL, 2);
    assert_eq!(g.chreg(0, CH_STATUS) & 0xFF, 0, "disabled, error cleared");
    let mut again = g.channel(0, 8);
    g.submit(
        &mut again,
        &Pb::new().sem(sv + 8, 5, host::SEM_OP_RELEASE).0,
    );
    assert_eq!(g.wait(&again), STATE_IDLE);
    assert_eq!(g.r32(sg + 8), 5);
}

#[test]
fn fault_invalid_pte() {
    fault_case(
        ErrorCode::PteInvalid,
        |g| {
            let (_, dst) = g.sys_buf(4096);
            // 0x30_0000_1000 sits in a populated L0 table with no valid PTE.
            let gpa = g.alloc_sys(4096);
            g.map(0x30_0000_0000, gpa, 4096, true, false);
            Pb::new().bind().copy(dst, 0x30_0000_1000, 64).0
        },
        Some(0x30_0000_1000),
    );
}

#[test]
fn fault_vram_past_framebuffer() {
    fault_case(
        ErrorCode::VramRange,
        |g| {
            // The framebuffer is 4 MiB; map a page at 4 MiB.
            g.map(0x30_0000_0000, 4 << 20, 4096, false, false);
            let (_, src) = g.sys_buf(64);
            Pb::new().bind().copy(src, 0x30_0000_0000, 64).0
        },
        Some(0x30_0000_0000),
    );
}

#[test]
fn fault_gpa_outside_dma_maps() {
    fault_case(
        ErrorCode::SysmemUnmapped,
        |g| {
            g.map(0x30_0000_0000, 0x10_0000_0000, 4096, true, false);
            let (_, dst) = g.sys_buf(64);
            Pb::new().bind().copy(0x30_0000_0000 + 16, dst, 64).0
        },
        Some(0x30_0000_0010),
    );
}

#[test]
fn fault_write_through_read_only_pte() {
    fault_case(
        ErrorCode::ReadOnly,
        |g| {
            let gpa = g.alloc_sys(4096);
            g.map(0x30_0000_0000, gpa, 4096, true, true);
            Pb::new().sem(0x30_0000_0000, 1, host::SEM_OP_RELEASE).0
        },
        Some(0x30_0000_0000),
    );
}

#[test]
fn fault_malformed_method_header() {
    fault_case(
        ErrorCode::MalformedHeader,
        |_| {
            let mut w = Pb::new().incr(0, host::NOP, &[0]).0;
            w.push(MethodHeader::new(6, 0, 0, 0).0);
            w
        },
        None,
    );
}

#[test]
fn fault_method_count_past_segment_end() {
    fault_case(
        ErrorCode::PushbufferTruncated,
        |_| {
            let mut w = Pb::new().bind().0;
            w.push(MethodHeader::new(1, 0, host::SEM_ADDR_LO, 5).0);
            w.extend_from_slice(&[1, 2]);
            w
        },
        None,
    );
}

#[test]
fn fault_gpfifo_entry_longer_than_its_segment() {
    // The entry claims 2048 words but its pushbuffer page is the last one
    // mapped: the fetch runs into an unmapped page and faults before any
    // method of the segment executes.
    let e = engine();
    let mut g = Guest::new(&e, 8, 4, 2);
    let mut bad = g.channel(0, 8);
    let mut good = g.channel(1, 8);
    let (sg, sv) = g.sys_buf(64);
    let (pg, pv) = g.sys_buf(4096);
    let seg = Pb::new().sem(sv, 1, host::SEM_OP_RELEASE).0;
    let bytes: Vec<u8> = seg.iter().flat_map(|w| w.to_le_bytes()).collect();
    g.w(pg, &bytes);
    g.write_pte(pv + 4096, 0);
    g.submit_entry(&mut bad, devmodel::channel::GpfifoEntry::new(pv, 2048).0);
    g.submit(&mut good, &Pb::new().sem(sv + 8, 2, host::SEM_OP_RELEASE).0);
    assert_eq!(g.wait(&bad), STATE_FAULTED);
    assert_eq!(g.wait(&good), STATE_IDLE);
    assert_eq!(
        (g.chreg(0, CH_STATUS) >> 8) & 0xFF,
        ErrorCode::PteInvalid as u32
    );
    let addr = g.reg(MMU_FAULT_ADDR_LO) as u64 | (g.reg(MMU_FAULT_ADDR_HI) as u64) << 32;
    assert_eq!(addr, pv + 4096);
    assert_eq!(g.r32(sg), 0, "nothing of the faulting segment ran");
    assert_eq!(g.r32(sg + 8), 2);
    // Reserved bits in an entry are a channel error too.
    g.set_chreg(0, CH_CTRL, 2);
    let mut again = g.channel(0, 8);
    g.submit_entry(
        &mut again,
        devmodel::channel::GpfifoEntry::new(pv, 2).0 | 1 << 63,
    );
    assert_eq!(g.wait(&again), STATE_FAULTED);
    assert_eq!(
        (g.chreg(0, CH_STATUS) >> 8) & 0xFF,
        ErrorCode::GpfifoEntryInvalid as u32
    );
}

#[test]
fn bad_instance_block_and_unbound_subchannel() {
    let e = engine();
    let mut g = Guest::new(&e, 8, 4, 2);
    let inst = g.alloc_sys(4096);
    g.w64(inst + 0x10, 3); // GPFIFO entries not a power of two
    g.set_chreg(0, CH_INST_LO, inst as u32);
    g.set_chreg(0, CH_INST_HI, (inst >> 32) as u32);
    g.set_chreg(0, CH_CTRL, 1);
    assert_eq!(
        g.chreg(0, CH_STATUS),
        STATE_FAULTED | (ErrorCode::InstanceInvalid as u32) << 8
    );
    let mut ch = g.channel(1, 8);
    g.submit(&mut ch, &Pb::new().incr(SUB_COPY, 0x124, &[0]).0);
    assert_eq!(g.wait(&ch), STATE_FAULTED);
    assert_eq!(
        (g.chreg(1, CH_STATUS) >> 8) & 0xFF,
        ErrorCode::InvalidSubchannel as u32
    );
    assert_eq!(g.chreg(1, CH_ERROR_INFO), 1, "offending word index");
}

#[test]
fn tlb_keeps_translations_until_invalidated() {
    let e = engine();
    let mut g = Guest::new(&e, 8, 4, 1);
    let mut ch = g.channel(0, 8);
    let (ag, _) = g.sys_buf(4096);
    let (bg, _) = g.sys_buf(4096);
    let va = 0x30_0000_0000;
    g.map(va, ag, 4096, true, false);
    g.submit(&mut ch, &Pb::new().sem(va, 1, host::SEM_OP_RELEASE).0);
    g.wait(&ch);
    g.map(va, bg, 4096, true, false); // retarget the page
    g.submit(&mut ch, &Pb::new().sem(va, 2, host::SEM_OP_RELEASE).0);
    g.wait(&ch);
    assert_eq!(
        (g.r32(ag), g.r32(bg)),
        (2, 0),
        "stale translation used before invalidate"
    );
    g.set_reg(MMU_INVALIDATE, 1);
    g.submit(&mut ch, &Pb::new().sem(va, 3, host::SEM_OP_RELEASE).0);
    g.wait(&ch);
    assert_eq!((g.r32(ag), g.r32(bg)), (2, 3));
    let s = g.vgpu.stats();
    assert!(s.tlb_hits > 0 && s.tlb_misses > 0);
}

#[test]
fn runlist_selects_channels() {
    let e = engine();
    let mut g = Guest::new(&e, 8, 4, 4);
    let mut c0 = g.channel(0, 8);
    let mut c2 = g.channel(2, 8);
    let (sg, sv) = g.sys_buf(64);
    let rl = g.alloc_sys(64);
    g.w(rl, &[2, 0, 0, 0, 0xE8, 3, 0, 0]); // channel 2, 1000 us
    g.set_reg(RUNLIST_BASE_LO, rl as u32);
    g.set_reg(RUNLIST_BASE_HI, (rl >> 32) as u32);
    g.set_reg(RUNLIST_SUBMIT, 1);
    assert_eq!(g.reg(RUNLIST_INFO), 1);
    assert_eq!(g.vgpu.runlist().unwrap()[0].timeslice_us, 1000);
    g.submit(&mut c0, &Pb::new().sem(sv, 1, host::SEM_OP_RELEASE).0);
    g.submit(&mut c2, &Pb::new().sem(sv + 4, 1, host::SEM_OP_RELEASE).0);
    assert_eq!(g.wait(&c2), STATE_IDLE);
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(g.r32(sg), 0, "channel 0 is not on the runlist");
    // Duplicate entries are rejected and the old runlist stays.
    g.w(rl, &[2, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
    g.set_reg(RUNLIST_SUBMIT, 2);
    assert_eq!(g.reg(RUNLIST_INFO) >> 31, 1);
    g.w(rl, &[2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    g.set_reg(RUNLIST_SUBMIT, 2);
    assert_eq!(g.reg(RUNLIST_INFO), 2);
    assert_eq!(g.wait(&c0), STATE_IDLE);
    assert_eq!(g.r32(sg), 1);
}

#[test]
fn reset_mid_work_drops_queued_work_and_restores_registers() {
    let e = engine();
    let mut g = Guest::new(&e, 8, 4, 2);
    let mut ch = g.channel(0, 8);
    let (sg, sv) = g.sys_buf(64);
    let (p, s) = g.params(Params::default().u64(sv).u32(1000).u32(1_000_000)); // 1 s of spin
    g.set_reg(INTR_ENABLE, 7);
    g.submit(
        &mut ch,
        &Pb::new()
            .bind()
            .launch(compute::PROG_SPIN, p, s)
            .sem(sv + 8, 1, host::SEM_OP_RELEASE)
            .0,
    );
    std::thread::sleep(Duration::from_millis(30));
    let t = Instant::now();
    g.set_reg(RESET, 1);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "reset waits only for a cancelled item: {:?}",
        t.elapsed()
    );
    assert_eq!(g.chreg(0, CH_STATUS), 0, "channel disabled");
    assert_eq!(g.chreg(0, CH_INST_LO), 0);
    assert_eq!(g.reg(INTR_ENABLE), 0);
    assert_eq!(g.reg(ID), ID_MAGIC, "identity survives");
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!((g.r32(sg), g.r32(sg + 8)), (0, 0), "dropped work never ran");
    // The device works after reset; PCIe FLR through config space too.
    let mut ch = g.channel(0, 8);
    g.submit(&mut ch, &Pb::new().sem(sv + 8, 7, host::SEM_OP_RELEASE).0);
    assert_eq!(g.wait(&ch), STATE_IDLE);
    assert_eq!(g.r32(sg + 8), 7);
    g.vgpu.region_write(REGION_CONFIG, 4, &[0x06, 0]).unwrap();
    g.vgpu
        .region_write(REGION_CONFIG, 0x58, &[0, 0x80])
        .unwrap();
    assert_eq!(g.cfg32(4) & 0xFFFF, 0, "FLR clears the command register");
    assert_eq!(g.chreg(0, CH_STATUS), 0);
    assert_eq!(g.vgpu.stats().resets, 2);
}

#[test]
fn reset_of_one_vgpu_leaves_another_running() {
    let e = engine();
    let mut a = Guest::new(&e, 8, 4, 1);
    let mut b = Guest::new(&e, 8, 4, 1);
    let mut ca = a.channel(0, 8);
    let mut cb = b.channel(0, 8);
    let (ag, av) = a.sys_buf(64);
    let (bg, bv) = b.sys_buf(64);
    let (p, s) = b.params(Params::default().u64(bv).u32(100).u32(1_000_000)); // 100 ms
    b.submit(
        &mut cb,
        &Pb::new()
            .bind()
            .launch(compute::PROG_SPIN, p, s)
            .sem(bv + 8, 9, host::SEM_OP_RELEASE)
            .0,
    );
    let (pa, sa) = a.params(Params::default().u64(av).u32(1000).u32(1_000_000));
    a.submit(
        &mut ca,
        &Pb::new().bind().launch(compute::PROG_SPIN, pa, sa).0,
    );
    std::thread::sleep(Duration::from_millis(10));
    a.vgpu.reset();
    assert_eq!(b.wait(&cb), STATE_IDLE);
    assert_eq!(
        (b.r32(bg), b.r32(bg + 8)),
        (100, 9),
        "the other vGPU's work completed"
    );
    assert_eq!(a.r32(ag), 0);
}

#[test]
fn unmap_waits_for_the_copy_in_flight() {
    let e = engine();
    let mut g = Guest::new(&e, 4, 4, 1);
    let mut ch = g.channel(0, 8);
    // A second DMA region holding a 256 MiB source... kept modest: 96 MiB.
    let size = 96u64 << 20;
    let fd = memfd(size);
    // SAFETY: the memfd is this test's own and sealed against shrinking, so
    // the mapping stays backed for its whole life.
    let region = unsafe { memmap2::MmapMut::map_mut(&fd) }.unwrap();
    let gpa2 = 0x1_0000_0000u64;
    g.vgpu.dma_map(gpa2, size, fd, 0, true).unwrap();
    let pinned = g.vgpu.stats().pinned_bytes;
    assert!(pinned >= size, "mapped regions are pinned: {pinned}");
    let va = 0x30_0000_0000;
    for i in 0..(size >> 21) {
        g.map_large(va + (i << 21), gpa2 + (i << 21), true);
    }
    // Copy the region onto itself (second half to first half), twice.
    let half = (size / 2) as u32;
    g.submit(
        &mut ch,
        &Pb::new()
            .bind()
            .copy(va + half as u64, va, half)
            .copy(va, va + half as u64, half)
            .0,
    );
    std::thread::sleep(Duration::from_millis(5));
    let t = Instant::now();
    g.vgpu.dma_unmap(gpa2, size).unwrap();
    let waited = t.elapsed();
    let after = g.vgpu.stats().pinned_bytes;
    assert_eq!(after, pinned - size, "unpinned on unmap");
    // After unmap returns, nothing writes the region: a canary stays.
    let mut region = region;
    region[0..8].copy_from_slice(b"CANARY!!");
    region[size as usize - 8..].copy_from_slice(b"CANARY!!");
    let st = g.wait(&ch);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(&region[0..8], b"CANARY!!");
    assert_eq!(&region[size as usize - 8..], b"CANARY!!");
    // Either both copies ran before the unmap, or the one left faulted.
    if st == STATE_FAULTED {
        assert_eq!(
            (g.chreg(0, CH_STATUS) >> 8) & 0xFF,
            ErrorCode::SysmemUnmapped as u32
        );
    }
    eprintln!("unmap waited {waited:?}, channel state {st}");
    assert!(
        g.vgpu.dma_unmap(gpa2, size).is_err(),
        "double unmap is an error"
    );
}

#[test]
fn pipelined_engine_commands_keep_channel_order_and_host_methods_wait() {
    // Four workers could run a channel's copies side by side; a chain of
    // copies, each reading what the one before wrote, only comes out right
    // if the channel's items run in order. Each copy is its own GPFIFO entry,
    // so the front end fetches entries ahead while earlier copies run.
    let e = devmodel::CpuEngine::new(4).unwrap();
    let mut g = Guest::new(&e, 64, 8, 1);
    let mut ch = g.channel(0, 32);
    const LEN: u64 = 1 << 20;
    let bufs: Vec<(u64, u64)> = (0..9).map(|_| g.sys_buf(LEN)).collect();
    let pattern: Vec<u8> = (0..LEN as usize).map(|i| (i * 7 + 3) as u8).collect();
    g.w(bufs[0].0, &pattern);
    let (sg, sv) = g.sys_buf(64);
    for k in 0..8 {
        g.submit(
            &mut ch,
            &Pb::new()
                .bind()
                .copy(bufs[k].1, bufs[k + 1].1, LEN as u32)
                .0,
        );
    }
    g.submit(&mut ch, &Pb::new().sem(sv, 77, host::SEM_OP_RELEASE).0);
    assert_eq!(g.wait(&ch), STATE_IDLE);
    assert_eq!(g.r32(sg), 77, "release ran");
    assert_eq!(g.chreg(0, CH_GP_GET), 9, "every entry retired");
    assert!(
        g.r(bufs[8].0, LEN as usize) == pattern,
        "the chain of copies ran in order"
    );
}

/// An engine context that counts how many items are handed over and not
/// yet complete, around the cpu engine's.
struct Depth {
    inner: std::sync::Arc<dyn devmodel::EngineContext>,
    now: std::sync::Arc<std::sync::atomic::AtomicU32>,
    max: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl devmodel::EngineContext for Depth {
    fn submit(&self, item: devmodel::backend::WorkItem, done: devmodel::backend::DoneFn) {
        use std::sync::atomic::Ordering::SeqCst;
        let n = self.now.fetch_add(1, SeqCst) + 1;
        self.max.fetch_max(n, SeqCst);
        let now = self.now.clone();
        self.inner.submit(
            item,
            Box::new(move |c| {
                now.fetch_sub(1, SeqCst);
                done(c)
            }),
        );
    }
    fn read_vram(&self, o: u64, b: &mut [u8]) -> Result<(), devmodel::backend::ExecError> {
        self.inner.read_vram(o, b)
    }
    fn write_vram(&self, o: u64, b: &[u8]) -> Result<(), devmodel::backend::ExecError> {
        self.inner.write_vram(o, b)
    }
    fn cancel(&self) {
        self.inner.cancel()
    }
}

#[test]
fn fenced_submissions_still_pipeline_and_fences_land_in_order() {
    // The usual driver pattern: every GPFIFO entry is one command followed
    // by a semaphore release (its fence). The releases are carried out as
    // the work before them completes, so the front end keeps the engine
    // fed instead of waiting for each fence.
    use devmodel::Backend;
    let e = engine();
    let max = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let ctx = std::sync::Arc::new(Depth {
        inner: e.create_context(8 << 20).unwrap(),
        now: Default::default(),
        max: max.clone(),
    });
    let cfg = vgpu_config("depth", 8 << 20, 1);
    let mut g = Guest::attach(devmodel::Vgpu::with_context(cfg, ctx).unwrap(), 8);
    let mut ch = g.channel(0, 16);
    let (sg, sv) = g.sys_buf(8 * 16);
    let (_, dst) = g.sys_buf(64);
    let (p, s) = g.params(Params::default().u64(dst).u32(1).u32(2_000_000));
    // The device's clock (TIMER, what release timestamps use) before any spin.
    let lo = g.reg(TIMER_LO) as u64;
    let start = lo | (g.reg(TIMER_LO + 4) as u64) << 32;
    for i in 0..8u64 {
        g.submit(
            &mut ch,
            &Pb::new()
                .bind()
                .launch(compute::PROG_SPIN, p, s)
                .sem(
                    sv + 16 * i,
                    100 + i,
                    host::SEM_OP_RELEASE | host::SEM_TIMESTAMP,
                )
                .0,
        );
    }
    assert_eq!(g.wait(&ch), STATE_IDLE);
    assert_eq!(g.chreg(0, CH_GP_GET), 8);
    let stamps: Vec<u64> = (0..8).map(|i| g.r64(sg + 16 * i + 8)).collect();
    for i in 0..8u64 {
        assert_eq!(g.r32(sg + 16 * i), 100 + i as u32, "fence {i} released");
    }
    // In order, and none early: fence i comes after the i + 1 spins of 2 ms
    // before it have run, one after another (a fence may land late, when its
    // completion is handled late, but never before its spin is done).
    assert!(
        stamps.windows(2).all(|w| w[1] >= w[0])
            && (0..8).all(|i| stamps[i] >= start + (i as u64 + 1) * 2_000_000),
        "each fence lands after its 2 ms spin, in order: {stamps:?} (start {start})"
    );
    let depth = max.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        depth >= 4,
        "fenced entries were handed to the engine ahead ({depth} at most at once)"
    );
}

/// An engine context that keeps every item it is handed, running none
/// until the test lets them complete, and counts them per channel.
#[derive(Default)]
struct Hold {
    items: std::sync::Mutex<Vec<(u32, devmodel::backend::DoneFn)>>,
}

impl Hold {
    fn per_channel(&self) -> std::collections::BTreeMap<u32, usize> {
        let mut n = std::collections::BTreeMap::new();
        for (c, _) in self.items.lock().unwrap().iter() {
            *n.entry(*c).or_default() += 1;
        }
        n
    }
    /// Completes what is held; returns how many.
    fn release(&self) -> usize {
        let items = std::mem::take(&mut *self.items.lock().unwrap());
        let n = items.len();
        for (_, done) in items {
            done(devmodel::backend::Completion {
                gpu_time: Duration::from_micros(1),
                result: Ok(()),
            });
        }
        n
    }
}

impl devmodel::EngineContext for Hold {
    fn submit(&self, item: devmodel::backend::WorkItem, done: devmodel::backend::DoneFn) {
        self.items.lock().unwrap().push((item.channel, done));
    }
    fn read_vram(&self, _: u64, _: &mut [u8]) -> Result<(), devmodel::backend::ExecError> {
        Ok(())
    }
    fn write_vram(&self, _: u64, _: &[u8]) -> Result<(), devmodel::backend::ExecError> {
        Ok(())
    }
    /// A reset (the vGPU's teardown too) fails what is held, from a
    /// thread of the engine's own as a real one would.
    fn cancel(&self) {
        let items = std::mem::take(&mut *self.items.lock().unwrap());
        std::thread::spawn(move || {
            for (_, done) in items {
                done(devmodel::backend::Completion {
                    gpu_time: Duration::ZERO,
                    result: Err(devmodel::backend::ExecError::Cancelled),
                });
            }
        });
    }
}

#[test]
fn items_at_the_engine_are_bounded_per_channel_and_per_vgpu() {
    // Eight channels each put 100 spins, one per entry, before any runs:
    // a channel hands at most MAX_CHANNEL_IN_FLIGHT of them to the engine,
    // and the vGPU at most MAX_VGPU_IN_FLIGHT, so that the host memory its
    // queued items take does not grow with the channels a driver opens.
    // As items complete the rest follow, every one exactly once.
    use devmodel::channel::{MAX_CHANNEL_IN_FLIGHT, MAX_VGPU_IN_FLIGHT};
    let hold = std::sync::Arc::new(Hold::default());
    let cfg = vgpu_config("bounded", 8 << 20, 8);
    let mut g = Guest::attach(devmodel::Vgpu::with_context(cfg, hold.clone()).unwrap(), 8);
    let (_, dst) = g.sys_buf(64);
    let (p, s) = g.params(Params::default().u64(dst).u32(1).u32(1_000));
    let mut chans: Vec<_> = (0..8).map(|c| g.channel(c, 128)).collect();
    for ch in chans.iter_mut() {
        for _ in 0..100 {
            g.submit(ch, &Pb::new().bind().launch(compute::PROG_SPIN, p, s).0);
        }
    }
    let settled = |hold: &Hold| {
        let mut last = usize::MAX;
        for _ in 0..200 {
            std::thread::sleep(Duration::from_millis(20));
            let n = hold.items.lock().unwrap().len();
            if n == last {
                return n;
            }
            last = n;
        }
        last
    };
    assert_eq!(
        settled(&hold),
        MAX_VGPU_IN_FLIGHT as usize,
        "the vGPU's items at the engine"
    );
    let per = hold.per_channel();
    assert!(
        per.values().all(|&n| n <= MAX_CHANNEL_IN_FLIGHT as usize) && per.len() >= 4,
        "each channel's items at the engine: {per:?}"
    );
    let mut done = 0;
    while done < 800 {
        let n = hold.release();
        assert!(
            n > 0,
            "the rest came to the engine as items completed ({done} of 800)"
        );
        done += n;
        settled(&hold);
    }
    assert_eq!(done, 800);
    for (c, ch) in chans.iter().enumerate() {
        assert_eq!(g.wait(ch), STATE_IDLE, "channel {c}");
        assert_eq!(
            g.chreg(c as u32, CH_GP_GET),
            100,
            "channel {c} retired every entry"
        );
    }
}

#[test]
fn an_empty_runlist_parks_every_channel_until_the_next_submit() {
    let e = engine();
    let mut g = Guest::new(&e, 8, 4, 2);
    let mut c0 = g.channel(0, 8);
    let (sg, sv) = g.sys_buf(64);
    let rl = g.alloc_sys(64);
    g.set_reg(RUNLIST_BASE_LO, rl as u32);
    g.set_reg(RUNLIST_BASE_HI, (rl >> 32) as u32);
    g.set_reg(RUNLIST_SUBMIT, 0);
    assert_eq!(g.reg(RUNLIST_INFO), 0, "accepted, no entries");
    assert_eq!(g.vgpu.runlist(), Some(vec![]));
    g.submit(&mut c0, &Pb::new().sem(sv, 7, host::SEM_OP_RELEASE).0);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(g.r32(sg), 0, "nothing runs on an empty runlist");
    g.w(rl, &[0, 0, 0, 0, 0, 0, 0, 0]);
    g.set_reg(RUNLIST_SUBMIT, 1);
    assert_eq!(g.wait(&c0), STATE_IDLE);
    assert_eq!(
        g.r32(sg),
        7,
        "the queued work ran once the channel was back on the runlist"
    );
}

#[test]
fn an_acquire_that_waits_too_long_faults_its_channel_only() {
    let e = engine();
    let mut g = Guest::new(&e, 8, 8, 2);
    g.vgpu.set_acquire_timeout(Duration::from_millis(50));
    let mut a = g.channel(0, 8);
    let mut b = g.channel(1, 8);
    let (sg, sv) = g.sys_buf(64);
    let t = Instant::now();
    g.submit(&mut a, &Pb::new().sem(sv, 5, host::SEM_OP_ACQUIRE_GEQ).0);
    assert_eq!(g.wait(&a), STATE_FAULTED);
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(50) && waited < Duration::from_secs(2),
        "faulted after {waited:?}"
    );
    assert_eq!(
        (g.chreg(0, CH_STATUS) >> 8) & 0xFF,
        0x2B,
        "SEMAPHORE_TIMEOUT"
    );
    // The other channel is untouched.
    g.submit(&mut b, &Pb::new().sem(sv + 8, 9, host::SEM_OP_RELEASE).0);
    assert_eq!(g.wait(&b), STATE_IDLE);
    assert_eq!(g.r32(sg + 8), 9);
}

#[test]
fn interrupts_go_only_to_eventfds_and_never_block() {
    let e = engine();
    let mut g = Guest::new(&e, 8, 8, 1);
    // A pipe that nobody reads would block delivery: refused.
    let mut fds = [0i32; 2];
    // SAFETY: pipe(2) writes two descriptors into the array it is given.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just created and are owned only here.
    let (r, w) = unsafe {
        use std::os::fd::FromRawFd;
        (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))
    };
    assert!(matches!(
        g.vgpu.set_irqs(mmio::bar::IRQ_INDEX_MSIX, 0, vec![Some(w)]),
        Err(devmodel::DeviceError::NotEventFd(_))
    ));
    drop(r);
    // An eventfd whose counter the client pushed to its maximum: the
    // device loses the message instead of waiting.
    let (irq_fd, _irq) = eventfd();
    let mut full = irq_fd.try_clone().unwrap();
    full.write_all(&(u64::MAX - 1).to_ne_bytes()).unwrap();
    g.vgpu
        .set_irqs(mmio::bar::IRQ_INDEX_MSIX, 0, vec![Some(irq_fd)])
        .unwrap();
    g.set_reg(INTR_ENABLE, 0x7);
    let mut ch = g.channel(0, 8);
    let (sg, sv) = g.sys_buf(64);
    g.submit(
        &mut ch,
        &Pb::new()
            .sem(sv, 1, host::SEM_OP_RELEASE | host::SEM_INTERRUPT)
            .sem(sv + 8, 2, host::SEM_OP_RELEASE)
            .0,
    );
    assert_eq!(g.wait(&ch), STATE_IDLE);
    assert_eq!((g.r32(sg), g.r32(sg + 8)), (1, 2));
}

#[test]
fn long_operations_run_in_pieces_with_the_results_of_a_whole() {
    // A 10 MiB memset and copy are 3 pieces each (4 + 4 + 2 MiB), a 5 ms
    // spin 5 pieces of 1 ms; the host scheduler sees each piece as an item.
    let e = engine();
    let mut g = Guest::new(&e, 32, 16, 1);
    let mut ch = g.channel(0, 8);
    const LEN: u32 = 10 << 20;
    let (_, vram_va) = g.vram_buf(LEN as u64);
    let (out_g, out_v) = g.sys_buf(LEN as u64);
    let (sg, sv) = g.sys_buf(64);
    let (p, s) = g.params(Params::default().u64(sv).u32(5).u32(1_000_000));
    let t = Instant::now();
    g.submit(
        &mut ch,
        &Pb::new()
            .bind()
            .memset(vram_va, LEN, 0xA5C3_0F11)
            .copy(vram_va, out_v, LEN)
            .launch(compute::PROG_SPIN, p, s)
            .0,
    );
    assert_eq!(g.wait(&ch), STATE_IDLE);
    assert!(
        t.elapsed() >= Duration::from_millis(5),
        "the spin ran in full"
    );
    let out = g.r(out_g, LEN as usize);
    assert!(
        out.chunks_exact(4)
            .all(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]) == 0xA5C3_0F11),
        "every word of the 10 MiB is the pattern"
    );
    assert_eq!(
        g.r32(sg),
        5,
        "the last spin piece reports the whole unit count"
    );
    assert_eq!(
        g.vgpu.stats().commands,
        3,
        "commands, each counted once, at its last piece"
    );
}

#[test]
fn instance_blocks_naming_unreachable_structures_are_refused_at_enable() {
    // A GPFIFO ring, USERD or error notifier that cannot lie inside the
    // 2^39-byte VA space could never be used: INSTANCE_INVALID at enable.
    let e = engine();
    let mut g = Guest::new(&e, 8, 4, 1);
    let end = 1u64 << 39;
    for (field, va) in [
        (0x08, end - 8), // the 16-entry ring runs past the end
        (0x18, end),     // USERD starts at the end
        (0x20, !15u64),  // the notifier's end overflows
    ] {
        let inst = g.alloc_sys(4096);
        g.w64(inst + 0x08, 0x1000);
        g.w64(inst + 0x10, 16);
        g.w64(inst + 0x18, 0x2000);
        g.w64(inst + field, va);
        g.set_chreg(0, CH_CTRL, 2); // channel reset
        g.set_chreg(0, CH_INST_LO, inst as u32);
        g.set_chreg(0, CH_INST_HI, (inst >> 32) as u32);
        g.set_chreg(0, CH_CTRL, 1);
        assert_eq!(
            g.chreg(0, CH_STATUS),
            STATE_FAULTED | (ErrorCode::InstanceInvalid as u32) << 8,
            "field {field:#x} = {va:#x}"
        );
    }
    // The same block with reachable addresses enables.
    let inst = g.alloc_sys(4096);
    g.w64(inst + 0x08, 0x1000);
    g.w64(inst + 0x10, 16);
    g.w64(inst + 0x18, 0x2000);
    g.set_chreg(0, CH_CTRL, 2);
    g.set_chreg(0, CH_INST_LO, inst as u32);
    g.set_chreg(0, CH_INST_HI, (inst >> 32) as u32);
    g.set_chreg(0, CH_CTRL, 1);
    assert_eq!(g.chreg(0, CH_STATUS) & 0xF, STATE_IDLE);
}

#[test]
fn decoded_work_is_bounded_per_segment() {
    // A 2D copy of 2^24 one-byte lines with pitch 2 would decode into 2^24
    // extents (hundreds of MiB, seconds of audit); a segment of 2^17 tiny
    // commands into as many decoded commands. Both fault the channel with
    // INVALID_ARGUMENT at once; the other channel goes on.
    let e = engine();
    let mut g = Guest::new(&e, 8, 64, 2);
    let mut a = g.channel(0, 8);
    let mut b = g.channel(1, 8);
    let (_, src) = g.vram_buf(32 << 20);
    let (_, dst) = g.vram_buf(32 << 20);
    let t = Instant::now();
    g.submit(
        &mut a,
        &Pb::new().bind().copy2d(src, 2, dst, 2, 1, 1 << 24).0,
    );
    assert_eq!(g.wait(&a), STATE_FAULTED);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "refused in {:?}",
        t.elapsed()
    );
    assert_eq!(
        (g.chreg(0, CH_STATUS) >> 8) & 0xFF,
        ErrorCode::InvalidArgument as u32
    );
    // 2^17 memsets of 4 bytes through NONINCR headers (8191 launches each).
    g.set_chreg(0, CH_CTRL, 2);
    let mut a = g.channel(0, 8);
    let (_, sink) = g.sys_buf(4096);
    let mut words = Pb::new()
        .bind()
        .incr(SUB_COPY, copy::DST_LO, &[sink as u32, (sink >> 32) as u32])
        .incr(SUB_COPY, copy::LINE_BYTES, &[4, 1, 7])
        .0;
    for _ in 0..17 {
        words.push(MethodHeader::new(3, SUB_COPY, copy::LAUNCH, 8191).0);
        words.extend(std::iter::repeat_n(copy::OP_MEMSET_1D, 8191));
    }
    // Larger than the channel's pushbuffer: a segment of its own.
    let (seg_gpa, seg_va) = g.sys_buf(words.len() as u64 * 4);
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    g.w(seg_gpa, &bytes);
    g.submit_entry(
        &mut a,
        devmodel::channel::GpfifoEntry::new(seg_va, words.len() as u32).0,
    );
    assert_eq!(g.wait(&a), STATE_FAULTED);
    assert_eq!(
        (g.chreg(0, CH_STATUS) >> 8) & 0xFF,
        ErrorCode::InvalidArgument as u32
    );
    g.submit(&mut b, &Pb::new().sem(sink, 5, host::SEM_OP_RELEASE).0);
    assert_eq!(g.wait(&b), STATE_IDLE);
}

#[test]
fn a_2d_memset_of_billions_of_empty_lines_is_nothing() {
    // Found by the pushbuf fuzz target (a slow unit, 346 s): a MEMSET_2D
    // with line width 0 and a line count of 3.85 billion used to be
    // translated line by line. Zero-width lines touch nothing.
    let e = engine();
    let mut g = Guest::new(&e, 8, 4, 1);
    let mut ch = g.channel(0, 8);
    let t = Instant::now();
    g.submit(
        &mut ch,
        &Pb::new()
            .bind()
            .incr(SUB_COPY, copy::LINE_BYTES, &[0, 0xE581_407D])
            .incr(SUB_COPY, copy::LAUNCH, &[copy::OP_MEMSET_2D])
            .0,
    );
    assert_eq!(g.wait(&ch), STATE_IDLE);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn decoded_work_held_by_a_vgpu_is_bounded() {
    // Four channels each fetch an entry of 30,000 2D copies of 16 one-byte
    // lines (960,000 extents, ~26 MB decoded) behind an acquire that
    // blocks: the vGPU fetches entries only while it holds less than
    // MAX_VGPU_DECODED_BYTES, so the fourth waits until the others drain.
    use devmodel::channel::{decoded_bytes, MAX_VGPU_DECODED_BYTES};
    let e = engine();
    let mut g = Guest::new(&e, 16, 8, 4);
    let (sg, sv) = g.sys_buf(64);
    let (_, src) = g.sys_buf(64);
    let (dg, dst) = g.sys_buf(64);
    g.wf32(sg, &[0.0]);
    let mut pb = Pb::new()
        .bind()
        .sem(sv, 1, host::SEM_OP_ACQUIRE_GEQ)
        .copy2d(src, 2, dst, 2, 1, 16);
    // The first launch is in copy2d; 29,999 more.
    for _ in 1..30_000 {
        pb = pb.immd(SUB_COPY, copy::LAUNCH, copy::OP_COPY_2D);
    }
    let mut chans: Vec<_> = (0..4).map(|c| g.channel(c, 8)).collect();
    for ch in chans.iter_mut() {
        g.submit(ch, &pb.0);
    }
    // Settled: what is held stops growing.
    let mut held = 0;
    for _ in 0..200 {
        std::thread::sleep(Duration::from_millis(50));
        let now = g.vgpu.stats().decoded_bytes;
        if now == held && now > 0 {
            break;
        }
        held = now;
    }
    let sample: Vec<_> = {
        // One segment's decoded size, as the front end counts it.
        let mut methods = Default::default();
        struct Flat;
        impl devmodel::pushbuf::AddressSpace for Flat {
            fn translate(
                &mut self,
                va: u64,
                len: u64,
                _write: bool,
            ) -> Result<Vec<devmodel::gmmu::Extent>, devmodel::gmmu::Fault> {
                Ok(vec![devmodel::gmmu::Extent {
                    aperture: devmodel::gmmu::Aperture::Sysmem,
                    addr: va,
                    len,
                }])
            }
            fn read(&mut self, _va: u64, len: u32) -> Result<Vec<u8>, devmodel::gmmu::Fault> {
                Ok(vec![0; len as usize])
            }
        }
        devmodel::pushbuf::parse_segment(&pb.0, &mut methods, &mut Flat).unwrap()
    };
    let one = decoded_bytes(&sample);
    assert!(one > 20 << 20, "one entry decodes to {one} bytes");
    assert!(
        held >= MAX_VGPU_DECODED_BYTES && held < MAX_VGPU_DECODED_BYTES + one,
        "held {held} bytes (one entry: {one})"
    );
    assert_eq!(held % one, 0, "whole entries");
    assert_eq!(held / one, 3, "the fourth channel waits");
    // Released, every channel runs its entry, the fourth included.
    g.w32(sg, 1);
    for ch in &chans {
        assert_eq!(g.wait(ch), STATE_IDLE);
    }
    assert_eq!(g.vgpu.stats().decoded_bytes, 0);
    assert_eq!(g.r(dg, 4), [0, 0, 0, 0], "copied zeros stay zeros");
    assert_eq!(g.vgpu.stats().faults, 0);
}
