//! Helpers shared by the vfio-user server's test binaries: a vGPU served
//! on a socket in a temporary directory, the independent client, and raw
//! messages for what a well-behaved client never sends.
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use devmodel::{CpuEngine, Vgpu};
use vgpud::vfio_user::{spawn, ServerHandle};

pub mod daemon;

pub struct Served {
    pub vgpu: Arc<Vgpu>,
    pub handle: ServerHandle,
    _dir: TempDir,
}

pub struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn serve(engine: &CpuEngine, name: &str) -> Served {
    serve_with(engine, name, 16 << 20, 4)
}

/// A vGPU of `vram` bytes and `channels` channels on a socket of its own.
pub fn serve_with(engine: &CpuEngine, name: &str, vram: u64, channels: u32) -> Served {
    let dir = std::env::temp_dir().join(format!("vgpud-proto-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = devmodel::harness::vgpu_config(name, vram, channels);
    let vgpu = Arc::new(Vgpu::new(cfg, engine).unwrap());
    let handle = spawn(&dir.join("vgpu.sock"), vgpu.clone()).unwrap();
    Served {
        vgpu,
        handle,
        _dir: TempDir(dir),
    }
}

impl Served {
    /// The vGPU's socket.
    pub fn socket(&self) -> PathBuf {
        self._dir.0.join("vgpu.sock")
    }
}

pub fn client(path: &Path) -> vfio_user::Client {
    vfio_user::Client::new(path).expect("client connects and negotiates")
}

pub fn bar0_read(c: &mut vfio_user::Client, off: u64) -> u32 {
    let mut b = [0u8; 4];
    c.region_read(0, off, &mut b).unwrap();
    u32::from_le_bytes(b)
}

pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A raw message: header then payload.
pub fn raw(id: u16, cmd: u16, flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&id.to_le_bytes());
    m.extend_from_slice(&cmd.to_le_bytes());
    m.extend_from_slice(&((16 + payload.len()) as u32).to_le_bytes());
    m.extend_from_slice(&flags.to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes());
    m.extend_from_slice(payload);
    m
}

/// Read one reply: (id, command, flags, errno, payload).
pub fn read_reply(s: &mut UnixStream) -> (u16, u16, u32, u32, Vec<u8>) {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).expect("reply header");
    let size = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
    let mut p = vec![0u8; size - 16];
    s.read_exact(&mut p).unwrap();
    (
        u16::from_le_bytes([h[0], h[1]]),
        u16::from_le_bytes([h[2], h[3]]),
        u32::from_le_bytes(h[8..12].try_into().unwrap()),
        u32::from_le_bytes(h[12..16].try_into().unwrap()),
        p,
    )
}

pub fn version_payload() -> Vec<u8> {
    let mut p = vec![0, 0, 1, 0];
    p.extend_from_slice(br#"{"capabilities":{"max_msg_fds":8}}"#);
    p.push(0);
    p
}

pub fn raw_connect(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// The connection was closed by the server: a read sees end of file.
pub fn assert_closed(s: &mut UnixStream) {
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => {}
        Ok(_) => panic!("server sent data instead of closing"),
        Err(e) => assert!(
            e.kind() == std::io::ErrorKind::ConnectionReset,
            "expected close, got {e}"
        ),
    }
}
