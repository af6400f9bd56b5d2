//! The worker protocol served without a GPU: `vgpud-cuda-worker --emulate`
//! runs each operation on the cpu engine inside the worker process, with
//! the guest RAM files it is handed mapped there. Results are the cpu
//! engine's. It exists so that the CUDA engine's process side (one worker
//! per vGPU, guest RAM handed over by descriptor, completions, a worker
//! that dies, its replacement) is tested where CI runs, with no GPU; vgpud
//! uses it only when `VGPUD_CUDA_EMULATE=1` is set.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devmodel::backend::{Backend, WorkItem};
use devmodel::memory::GuestRam;
use devmodel::CpuEngine;

use super::wire::{self, to_daemon, to_worker, Reader, Status, Writer};

/// The GPU the emulation reports to `--probe`.
pub const PROBE: &str = r#"{"name":"emulated","memory_bytes":17179869184,"multiprocessors":1}"#;

fn status(r: &Result<(), devmodel::backend::ExecError>) -> Status {
    use devmodel::backend::ExecError;
    match r {
        Ok(()) => Status::Ok,
        Err(ExecError::Memory(_)) => Status::Unmapped,
        Err(ExecError::VramRange { .. }) => Status::VramRange,
        Err(_) => Status::Engine,
    }
}

/// Serve the daemon on descriptor `fd` with a `vram`-byte framebuffer.
pub fn run(fd: i32, vram: u64) -> i32 {
    // SAFETY: the daemon passed this descriptor to this process for this
    // purpose; nothing else in the process owns it.
    let sock = unsafe { UnixStream::from_raw_fd(fd) };
    let Ok(out) = sock.try_clone().map(|s| Arc::new(Mutex::new(s))) else {
        return 1;
    };
    let send = |out: &Mutex<UnixStream>, body: &[u8]| {
        let s = out.lock().unwrap_or_else(|e| e.into_inner());
        wire::send(&s, body, &[])
    };
    let engine = match CpuEngine::new(1) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("vgpud-cuda-worker: {e}");
            return 2;
        }
    };
    let ctx = match engine.create_context(vram) {
        Ok(c) => c,
        Err(e) => {
            let mut w = Writer::new(to_daemon::FATAL);
            w.0.extend_from_slice(e.to_string().as_bytes());
            let _ = send(&out, &w.0);
            return 2;
        }
    };
    let mut mem = Arc::new(GuestRam::new());
    let mut r = Writer::new(to_daemon::READY);
    // No guest PTX: the cpu engine cannot run it.
    r.u64(vram).u32(1).u64(0);
    if send(&out, &r.0).is_err() {
        return 1;
    }
    loop {
        let (body, files) = match wire::recv(&sock) {
            Ok(m) => m,
            Err(_) => return 0,
        };
        let mut r = Reader::new(&body);
        let parsed = (|| -> Result<(), wire::Malformed> {
            match r.u8()? {
                to_worker::LAYOUT => mem = Arc::new(layout(&mut r, files)?),
                to_worker::SUBMIT => {
                    let tag = r.u64()?;
                    let op = r.op()?;
                    let sum = match &op {
                        devmodel::command::Op::ReduceSum { sum, .. } => Some(sum.clone()),
                        _ => None,
                    };
                    let out = out.clone();
                    ctx.submit(
                        WorkItem {
                            op,
                            channel: 0,
                            mem: mem.clone(),
                            front_end: Duration::ZERO,
                        },
                        Box::new(move |c| {
                            let mut w = Writer::new(to_daemon::DONE);
                            w.u64(tag)
                                .u64(c.gpu_time.as_nanos() as u64)
                                .u8(status(&c.result) as u8)
                                .f64(sum.map_or(0.0, |s| s.get()));
                            let s = out.lock().unwrap_or_else(|e| e.into_inner());
                            let _ = wire::send(&s, &w.0, &[]);
                        }),
                    );
                }
                to_worker::READ_VRAM => {
                    let (tag, off, len) = (r.u64()?, r.u64()?, r.u64()?);
                    let mut data = vec![0u8; len.min(1 << 20) as usize];
                    let st = status(&ctx.read_vram(off, &mut data));
                    reply(&out, tag, st, &data);
                }
                to_worker::WRITE_VRAM => {
                    let (tag, off) = (r.u64()?, r.u64()?);
                    let data = r.bytes()?;
                    let st = status(&ctx.write_vram(off, data));
                    reply(&out, tag, st, &[]);
                }
                to_worker::CLEAR_VRAM => {
                    let tag = r.u64()?;
                    ctx.release_vram();
                    reply(&out, tag, Status::Ok, &[]);
                }
                _ => return Err(wire::Malformed("message kind")),
            }
            Ok(())
        })();
        if let Err(e) = parsed {
            eprintln!("vgpud-cuda-worker: {e}");
            return 2;
        }
    }
}

fn reply(out: &Mutex<UnixStream>, tag: u64, status: Status, data: &[u8]) {
    let mut w = Writer::new(to_daemon::DATA);
    w.u64(tag).u8(status as u8).bytes(data);
    let s = out.lock().unwrap_or_else(|e| e.into_inner());
    let _ = wire::send(&s, &w.0, &[]);
}

/// Guest RAM as a layout message describes it, mapped here.
fn layout(r: &mut Reader, files: Vec<File>) -> Result<GuestRam, wire::Malformed> {
    let n = r.u32()? as usize;
    if n != files.len() {
        return Err(wire::Malformed("file count"));
    }
    let mut writable = Vec::with_capacity(n);
    for _ in 0..n {
        let _len = r.u64()?;
        writable.push(r.u8()? != 0);
    }
    let mem = GuestRam::new();
    for _ in 0..r.u32()? {
        let (gpa, len, file, offset) = (r.u64()?, r.u64()?, r.u32()? as usize, r.u64()?);
        let Some(f) = files.get(file).and_then(|f| f.try_clone().ok()) else {
            return Err(wire::Malformed("file index"));
        };
        if let Err(e) = mem.map(gpa, len, f, offset, writable[file]) {
            eprintln!("vgpud-cuda-worker: guest RAM window not mapped: {e}");
        }
    }
    Ok(mem)
}
