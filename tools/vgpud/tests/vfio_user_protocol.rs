//! The vfio-user server against an independent peer: the rust-vmm
//! `vfio_user` crate's `Client`, and raw bytes on the socket for what a
//! well-behaved client never sends.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use devmodel::harness::{engine, memfd};
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_PCI_MSIX_IRQ_INDEX,
};

mod common;
use common::{
    assert_closed, bar0_read, client, raw, raw_connect, read_reply, serve, version_payload,
    wait_until,
};

#[test]
fn independent_client_discovers_the_device() {
    let e = engine();
    let s = serve(&e, "disc");
    let mut c = client(s.handle.path());
    let size = |c: &vfio_user::Client, i| c.region(i).map(|r| (r.size, r.flags & 3));
    assert_eq!(size(&c, 0), Some((0x1_0000, 3)), "BAR0 64 KiB, read/write");
    assert_eq!(size(&c, 2), Some((0x1000, 3)), "BAR2 (MSI-X) 4 KiB");
    assert_eq!(size(&c, 7), Some((0x1000, 3)), "config space 4 KiB");
    assert_eq!(size(&c, 1), Some((0, 0)), "BAR1 absent");
    let mut cfg = [0u8; 12];
    c.region_read(7, 0, &mut cfg).unwrap();
    assert_eq!(u16::from_le_bytes([cfg[0], cfg[1]]), 0x7667, "vendor id");
    assert_eq!(
        u32::from_le_bytes([cfg[8], cfg[9], cfg[10], cfg[11]]) >> 8,
        0x030200,
        "class code"
    );
    assert_eq!(bar0_read(&mut c, 0), 0x5550_4756, "ID register magic");
    let irq = c.get_irq_info(VFIO_PCI_MSIX_IRQ_INDEX).unwrap();
    assert_eq!((irq.index, irq.count), (VFIO_PCI_MSIX_IRQ_INDEX, 1));
    // A register write round-trips (INTR_ENABLE is plain read/write).
    c.region_write(0, 0x24, &0x7u32.to_le_bytes()).unwrap();
    assert_eq!(bar0_read(&mut c, 0x24), 0x7);
}

#[test]
fn disconnect_quiesces_and_unpins_then_serves_again() {
    let e = engine();
    let s = serve(&e, "quiesce");
    let ram = memfd(8 << 20);
    {
        let mut c = client(s.handle.path());
        c.dma_map(0, 0x1000_0000, 8 << 20, ram.as_raw_fd()).unwrap();
        let (efd, _counter) = devmodel::harness::eventfd();
        c.set_irqs(
            VFIO_PCI_MSIX_IRQ_INDEX,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            1,
            &[efd.as_raw_fd()],
        )
        .unwrap();
        c.region_write(0, 0x24, &0x7u32.to_le_bytes()).unwrap();
        wait_until("attached", || {
            s.handle
                .stats()
                .attached
                .load(std::sync::atomic::Ordering::Relaxed)
        });
        assert_eq!(
            s.vgpu.stats().pinned_bytes,
            8 << 20,
            "guest RAM pinned while attached (the tests run as root)"
        );
        // Client dropped here without any unmap: as if the VMM was killed.
    }
    wait_until("detach", || {
        !s.handle
            .stats()
            .attached
            .load(std::sync::atomic::Ordering::Relaxed)
    });
    assert_eq!(s.vgpu.stats().pinned_bytes, 0, "guest memory unpinned");
    let mut c = client(s.handle.path());
    assert_eq!(
        bar0_read(&mut c, 0x24),
        0,
        "registers back at reset values for the next client"
    );
    // The old mapping is gone: mapping the same range again succeeds.
    c.dma_map(0, 0x1000_0000, 8 << 20, ram.as_raw_fd()).unwrap();
}

#[test]
fn second_client_is_turned_away_while_one_is_attached() {
    let e = engine();
    let s = serve(&e, "second");
    let mut c = client(s.handle.path());
    let mut other = raw_connect(s.handle.path());
    assert_closed(&mut other);
    assert_eq!(
        bar0_read(&mut c, 0),
        0x5550_4756,
        "the attached client is undisturbed"
    );
}

#[test]
fn hostile_messages_get_errors_or_a_disconnect_and_others_keep_being_served() {
    let e = engine();
    let victim = serve(&e, "victim");
    let bystander = serve(&e, "bystander");
    let mut b = client(bystander.handle.path());
    let path = victim.handle.path().to_path_buf();

    // Commands before VERSION are refused, the connection stays usable.
    let mut s = raw_connect(&path);
    s.write_all(&raw(1, 4, 0, &16u32.to_le_bytes().repeat(4)))
        .unwrap();
    let (id, cmd, flags, errno, _) = read_reply(&mut s);
    assert_eq!(
        (id, cmd, flags & 0x21, errno),
        (1, 4, 0x21, libc::EINVAL as u32)
    );
    s.write_all(&raw(2, 1, 0, &version_payload())).unwrap();
    let (_, _, flags, _, p) = read_reply(&mut s);
    assert_eq!(flags & 0x20, 0, "version accepted");
    assert_eq!(&p[0..2], &[0, 0], "major 0");
    assert!(std::str::from_utf8(&p[4..p.len() - 1])
        .unwrap()
        .contains("max_data_xfer_size"));
    // Unknown command: ENOSYS.
    s.write_all(&raw(3, 99, 0, &[1, 2, 3])).unwrap();
    assert_eq!(read_reply(&mut s).3, libc::ENOSYS as u32);
    // REGION_READ of 4 GiB: refused without allocating it.
    let mut acc = Vec::new();
    acc.extend_from_slice(&0u64.to_le_bytes());
    acc.extend_from_slice(&0u32.to_le_bytes());
    acc.extend_from_slice(&u32::MAX.to_le_bytes());
    s.write_all(&raw(4, 9, 0, &acc)).unwrap();
    assert_eq!(read_reply(&mut s).3, libc::EINVAL as u32);
    // REGION_WRITE whose count disagrees with its data.
    let mut w = Vec::new();
    w.extend_from_slice(&0x24u64.to_le_bytes());
    w.extend_from_slice(&0u32.to_le_bytes());
    w.extend_from_slice(&8u32.to_le_bytes());
    w.extend_from_slice(&[1, 2, 3, 4]);
    s.write_all(&raw(5, 10, 0, &w)).unwrap();
    assert_eq!(read_reply(&mut s).3, libc::EINVAL as u32);
    // A misaligned BAR0 access: the device model's error comes back.
    let mut acc = Vec::new();
    acc.extend_from_slice(&0x3u64.to_le_bytes());
    acc.extend_from_slice(&0u32.to_le_bytes());
    acc.extend_from_slice(&4u32.to_le_bytes());
    s.write_all(&raw(6, 9, 0, &acc)).unwrap();
    assert_eq!(read_reply(&mut s).3, libc::EINVAL as u32);
    // A short DMA_MAP payload.
    s.write_all(&raw(7, 2, 0, &[0u8; 8])).unwrap();
    assert_eq!(read_reply(&mut s).3, libc::EINVAL as u32);
    // Still in sync: a good read works on the same connection.
    let mut acc = Vec::new();
    acc.extend_from_slice(&0u64.to_le_bytes());
    acc.extend_from_slice(&0u32.to_le_bytes());
    acc.extend_from_slice(&4u32.to_le_bytes());
    s.write_all(&raw(8, 9, 0, &acc)).unwrap();
    let (id, _, flags, _, p) = read_reply(&mut s);
    assert_eq!((id, flags), (8, 1));
    assert_eq!(
        u32::from_le_bytes(p[16..20].try_into().unwrap()),
        0x5550_4756
    );
    // DMA_MAP of 1 GiB from a 64 KiB file: refused (it would fault later).
    let small = memfd(64 << 10);
    let mut m = Vec::new();
    m.extend_from_slice(&32u32.to_le_bytes());
    m.extend_from_slice(&3u32.to_le_bytes());
    m.extend_from_slice(&0u64.to_le_bytes());
    m.extend_from_slice(&0u64.to_le_bytes());
    m.extend_from_slice(&(1u64 << 30).to_le_bytes());
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    s.send_with_fd(&raw(9, 2, 0, &m)[..], small.as_raw_fd())
        .unwrap();
    assert_ne!(read_reply(&mut s).3, 0, "oversized DMA map refused");
    drop(s);

    // Oversized message: disconnect, nothing allocated.
    let mut s = raw_connect(&path);
    let mut h = raw(1, 10, 0, &[]);
    h[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    s.write_all(&h).unwrap();
    assert_closed(&mut s);

    // A reply-typed message from the client: disconnect.
    let mut s = raw_connect(&path);
    s.write_all(&raw(1, 1, 1, &version_payload())).unwrap();
    assert_closed(&mut s);

    // Truncated message, then the client vanishes.
    let mut s = raw_connect(&path);
    let m = raw(1, 1, 0, &version_payload());
    s.write_all(&m[..m.len() - 5]).unwrap();
    drop(s);

    // Garbage.
    let mut s = raw_connect(&path);
    let mut seed = 0x9e37_79b9_u32;
    let junk: Vec<u8> = (0..4096)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed as u8
        })
        .collect();
    let _ = s.write_all(&junk);
    drop(s);

    // The victim's socket serves a well-behaved client again, and the
    // bystander never noticed.
    wait_until("victim free", || {
        !victim
            .handle
            .stats()
            .attached
            .load(std::sync::atomic::Ordering::Relaxed)
    });
    let mut c = client(&path);
    assert_eq!(bar0_read(&mut c, 0), 0x5550_4756);
    assert_eq!(bar0_read(&mut b, 0), 0x5550_4756);
    assert!(
        victim
            .handle
            .stats()
            .errors
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 8
    );
}

/// The guest driver over the crate's `Client`: guest RAM is the driver's
/// memfd, DMA-mapped over the socket; every engine class and program runs
/// with results checked against CPU references, and interrupts arrive on
/// the driver's eventfd.
#[test]
fn guest_driver_selftest_over_the_socket() {
    use vgpu_guest::transport::vfio_user::VfioUserTransport;
    let e = engine();
    let s = serve(&e, "selftest");
    let t = VfioUserTransport::connect(s.handle.path(), 64 << 20).expect("connect");
    let mut dev = vgpu_guest::Device::open(Box::new(t)).expect("open");
    let report = vgpu_guest::selftest::run(&mut dev);
    for c in report.failures() {
        eprintln!("FAIL {}: {}", c.name, c.detail);
    }
    assert!(report.passed(), "selftest over vfio-user");
    assert!(
        report
            .checks
            .iter()
            .any(|c| c.name.contains("interrupt") && c.passed),
        "an interrupt check ran"
    );
    assert!(
        s.vgpu.stats().msi_delivered > 0,
        "MSI-X went out on the eventfd"
    );
    assert!(s.vgpu.stats().commands > 20);
}

/// A VMM killed in the middle of work: the vGPU's work is dropped, its
/// memory unmapped and unpinned, and the socket serves the next client.
#[test]
fn a_client_vanishing_mid_work_leaves_the_vgpu_quiesced() {
    use std::sync::atomic::Ordering::Relaxed;
    use vgpu_guest::programs::Program;
    use vgpu_guest::transport::vfio_user::VfioUserTransport;
    let e = engine();
    let s = serve(&e, "vanish");
    {
        let t = VfioUserTransport::connect(s.handle.path(), 16 << 20).unwrap();
        let mut dev = vgpu_guest::Device::open(Box::new(t)).unwrap();
        let mut ch =
            vgpu_guest::Channel::new(&mut dev, 0, vgpu_guest::ChannelConfig::default()).unwrap();
        let out = dev.alloc(vgpu_guest::Placement::Sysmem, 4096).unwrap();
        for _ in 0..4 {
            ch.launch(
                &mut dev,
                &Program::Spin {
                    dst: out.va(),
                    units: 500,
                    unit_ns: 1_000_000,
                },
            )
            .unwrap();
        }
        let t0 = Instant::now();
        while s.vgpu.stats().commands == 0 && t0.elapsed() < Duration::from_millis(300) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            s.vgpu.stats().pinned_bytes,
            16 << 20,
            "the driver's guest RAM is mapped and pinned while attached"
        );
        // The client goes away with 2 s of spin queued and running.
    }
    let gone = Instant::now();
    wait_until("detach", || !s.handle.stats().attached.load(Relaxed));
    assert!(
        gone.elapsed() < Duration::from_secs(1),
        "quiesce cut the running work short ({:?})",
        gone.elapsed()
    );
    assert_eq!(s.vgpu.stats().pinned_bytes, 0, "guest memory unpinned");
    let mut c = client(s.handle.path());
    assert_eq!(
        bar0_read(&mut c, 0),
        0x5550_4756,
        "the socket serves the next client"
    );
}

/// A client that sends requests but never reads the replies: once the
/// socket is full the server gives up on it (10 s) instead of blocking,
/// and serves the next client.
#[test]
fn a_client_that_never_reads_is_dropped() {
    use std::sync::atomic::Ordering::Relaxed;
    let e = engine();
    let s = serve(&e, "deaf");
    let mut deaf = raw_connect(s.handle.path());
    deaf.write_all(&raw(0, 1, 0, &version_payload())).unwrap();
    let mut read_cfg = Vec::new();
    read_cfg.extend_from_slice(&0u64.to_le_bytes());
    read_cfg.extend_from_slice(&7u32.to_le_bytes());
    read_cfg.extend_from_slice(&4096u32.to_le_bytes());
    let msg = raw(1, 9, 0, &read_cfg);
    deaf.set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    // 8 MiB of replies asked for; stop when our own side fills up.
    for _ in 0..2048 {
        if deaf.write_all(&msg).is_err() {
            break;
        }
    }
    let t = Instant::now();
    while s.handle.stats().attached.load(Relaxed) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the server is still stuck writing to a client that does not read"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut c = client(s.handle.path());
    assert_eq!(bar0_read(&mut c, 0), 0x5550_4756);
}
