//! A departed VM's framebuffer goes back to the host: the pages are
//! released, not kept zeroed. Its own test binary, so that the process's
//! resident size measures this vGPU alone.

use devmodel::harness::{engine, proc_status_bytes, Guest, Pb, STATE_IDLE};
use mmio::methods::host;

#[test]
fn released_vram_leaves_the_host_and_reads_as_zero() {
    let e = engine();
    let mut g = Guest::new(&e, 8, 96, 1);
    let mut ch = g.channel(0, 8);
    let (_, vram) = g.vram_buf(64 << 20);
    let (sg, sv) = g.sys_buf(4096);
    let before = proc_status_bytes("VmRSS");
    g.submit(
        &mut ch,
        &Pb::new().bind().memset(vram, 64 << 20, 0x5A5A_5A5A).0,
    );
    assert_eq!(g.wait(&ch), STATE_IDLE);
    let filled = proc_status_bytes("VmRSS");
    assert!(
        filled >= before + (60 << 20),
        "64 MiB of VRAM committed: {before} -> {filled}"
    );
    g.vgpu.release();
    let released = proc_status_bytes("VmRSS");
    assert!(
        released + (60 << 20) <= filled,
        "VRAM pages returned: {filled} -> {released}"
    );
    // The next VM sees zeroed VRAM.
    let mut ch = g.channel(0, 8);
    g.submit(
        &mut ch,
        &Pb::new()
            .bind()
            .copy(vram + (32 << 20), sv, 4096)
            .sem(sv + 4096 - 8, 1, host::SEM_OP_RELEASE)
            .0,
    );
    assert_eq!(g.wait(&ch), STATE_IDLE);
    assert!(
        g.r(sg, 4088).iter().all(|&b| b == 0),
        "released VRAM reads zero"
    );
}
