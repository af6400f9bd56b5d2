//! Regression: a SET_IRQS whose vector count the device does not have is
//! refused before anything is allocated for it. A 36-byte message asking
//! for 2^28 MSI-X vectors once made the server build a table of 2^28 slots
//! (1 GiB touched). Its own test binary, so that the process's peak
//! resident size measures this server alone.

use std::io::Write;

use devmodel::harness::{engine, proc_status_bytes};
use mmio::bar::IRQ_INDEX_MSIX;
use vfio_bindings::bindings::vfio::{VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD};

mod common;
use common::{raw, raw_connect, read_reply, serve, version_payload};

#[test]
fn set_irqs_with_an_absurd_count_is_refused_before_any_allocation() {
    let e = engine();
    let served = serve(&e, "irq-bounds");
    let mut s = raw_connect(served.handle.path());
    s.write_all(&raw(1, 1, 0, &version_payload())).unwrap();
    assert_eq!(read_reply(&mut s).3, 0, "version accepted");
    let before = proc_status_bytes("VmHWM");
    for (id, start, count) in [(2u16, 0u32, 1u32 << 28), (3, 1, 1), (4, u32::MAX, 2)] {
        let mut p = Vec::new();
        for v in [
            20,
            VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_EVENTFD,
            IRQ_INDEX_MSIX,
            start,
            count,
        ] {
            p.extend_from_slice(&v.to_le_bytes());
        }
        let msg = raw(id, 8, 0, &p);
        assert_eq!(msg.len(), 36);
        s.write_all(&msg).unwrap();
        let (rid, _, _, errno, _) = read_reply(&mut s);
        assert_eq!(rid, id);
        assert_eq!(
            errno,
            libc::EINVAL as u32,
            "vectors {start}+{count} refused"
        );
    }
    let grown = proc_status_bytes("VmHWM").saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "refusing SET_IRQS grew the peak resident size by {} MiB",
        grown >> 20
    );
    // The session is intact: a valid request still works.
    let mut p = Vec::new();
    for v in [
        20,
        VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_EVENTFD,
        IRQ_INDEX_MSIX,
        0,
        1,
    ] {
        p.extend_from_slice(&v.to_le_bytes());
    }
    s.write_all(&raw(5, 8, 0, &p)).unwrap();
    assert_eq!(read_reply(&mut s).3, 0, "one vector unassigned");
}
