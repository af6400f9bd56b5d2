//! Random vfio-user traffic against the server: random commands, sizes,
//! payloads and descriptors, after a valid VERSION or not. Whatever
//! arrives, the server answers or hangs up, never panics, and serves a
//! well-behaved client on the same socket afterwards.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use devmodel::harness::{engine, memfd};
use devmodel::Vgpu;
use proptest::prelude::*;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

#[derive(Debug, Clone)]
struct Msg {
    command: u16,
    flags: u32,
    /// Declared size minus the real payload length (lies about the size).
    size_lie: i8,
    payload: Vec<u8>,
    with_fd: bool,
}

fn msg() -> impl Strategy<Value = Msg> {
    (
        prop_oneof![0u16..20, Just(2u16), Just(3), Just(8), Just(9), Just(10)],
        prop_oneof![8 => Just(0u32), 1 => Just(0x10), 1 => any::<u32>()],
        prop_oneof![12 => Just(0i8), 1 => any::<i8>()],
        prop::collection::vec(any::<u8>(), 0..80),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(command, flags, size_lie, payload, with_fd)| Msg {
            command,
            flags,
            size_lie,
            payload,
            with_fd,
        })
}

fn encode(id: u16, m: &Msg) -> Vec<u8> {
    let size = (16 + m.payload.len() as i64 + m.size_lie as i64).max(0) as u32;
    let mut b = Vec::new();
    b.extend_from_slice(&id.to_le_bytes());
    b.extend_from_slice(&m.command.to_le_bytes());
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(&m.flags.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&m.payload);
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn random_traffic_never_breaks_the_server(version_first in any::<bool>(), msgs in prop::collection::vec(msg(), 1..24)) {
        let e = engine();
        let dir = std::env::temp_dir().join(format!("vgpud-fuzz-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = devmodel::harness::vgpu_config("fuzz", 1 << 20, 2);
        let vgpu = Arc::new(Vgpu::new(cfg, &e).unwrap());
        let handle = vgpud::vfio_user::spawn(&dir.join("s.sock"), vgpu.clone()).unwrap();
        {
            let mut s = UnixStream::connect(handle.path()).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            let ram = memfd(64 << 10);
            if version_first {
                let mut p = vec![0, 0, 1, 0];
                p.extend_from_slice(b"{}\0");
                let _ = s.write_all(&encode(0, &Msg { command: 1, flags: 0, size_lie: 0, payload: p, with_fd: false }));
            }
            for (i, m) in msgs.iter().enumerate() {
                let bytes = encode(i as u16 + 1, m);
                let sent = if m.with_fd { s.send_with_fd(&bytes[..], ram.as_raw_fd()).map(|_| ()).map_err(|e| std::io::Error::from_raw_os_error(e.errno())) } else { s.write_all(&bytes) };
                if sent.is_err() {
                    break; // the server hung up
                }
            }
            // Drain whatever came back until the server stops talking.
            let mut sink = [0u8; 4096];
            while let Ok(n) = s.read(&mut sink) {
                if n == 0 {
                    break;
                }
            }
        }
        // The server is alive and serves the next client.
        let t = Instant::now();
        while handle.stats().attached.load(Relaxed) {
            prop_assert!(t.elapsed() < Duration::from_secs(15), "server never let go of the fuzzing client");
            std::thread::sleep(Duration::from_millis(5));
        }
        // In a thread with a deadline: a dead server would leave a client
        // waiting forever for its VERSION reply.
        let path = handle.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = vfio_user::Client::new(&path).ok().and_then(|mut c| {
                let mut b = [0u8; 4];
                c.region_read(0, 0, &mut b).ok().map(|_| u32::from_le_bytes(b))
            });
            let _ = tx.send(r);
        });
        let id = rx.recv_timeout(Duration::from_secs(10));
        prop_assert_eq!(id, Ok(Some(0x5550_4756)), "a good client is served after the fuzzing one");
        drop(handle);
        prop_assert_eq!(vgpu.stats().pinned_bytes, 0, "nothing the fuzzer mapped stays pinned");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Relaxed)
}
