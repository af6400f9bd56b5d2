//! The worker protocol served without a device: `--emulate` runs each
//! operation on the cpu engine inside the worker process, with the guest
//! RAM files it is handed mapped there. Results are the cpu engine's. It
//! exists so that the process side (one worker per vGPU, guest RAM handed
//! over by descriptor, completions, the sandbox, a worker that dies, its
//! replacement) is tested where CI runs, with no GPU; vgpud uses it only
//! when `VGPUD_CUDA_EMULATE` is set ([`EMULATE_ENV`]), which also says
//! which GPUs the emulation shows ([`gpus`]).

use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use devmodel::backend::{Backend, EngineContext, ExecError, WorkItem};
use devmodel::command::{Op, PIECE_BYTES};
use devmodel::memory::GuestRam;
use devmodel::CpuEngine;

use crate::endpoint::{Endpoint, Sender};
use crate::sandbox::{Confinement, Escape};
use crate::wire::{Done, FatalReason, Layout, Ready, Status, ToDaemon, ToWorker};
use crate::Error;

/// The device the emulation reports to `--probe`.
pub const PROBE: &str = r#"{"name":"emulated","memory_bytes":17179869184,"multiprocessors":1}"#;

/// The daemon's (and its workers') environment variable that turns the
/// emulation on and says which GPUs it shows ([`gpus`]).
pub const EMULATE_ENV: &str = "VGPUD_CUDA_EMULATE";

/// The most GPUs an emulation shows.
pub const MAX_EMULATED_GPUS: usize = 16;

/// The GPUs an emulation shows, as `--gpus` lists them, from the value of
/// [`EMULATE_ENV`]: a count, `1` ..= 16, of 16 GiB GPUs (`1`: the one GPU
/// of the tests of a single parent), or a list of their memory sizes in
/// whole GiB (`16GiB,8GiB`). GPU `k` (from 0) is named `emulated`, has the
/// UUID `GPU-eeeeeeee-eeee-eeee-eeee-eeeeeeeeee<k>` (two hex digits) and
/// the PCI address `0000:ee:<k>.0`, which is what tests give a NUMA node
/// to (docs/config.md). `None` for anything else.
pub fn gpus(spec: &str) -> Option<Vec<crate::GpuInfo>> {
    let spec = spec.trim();
    let sizes: Vec<u64> = match spec.parse::<usize>() {
        Ok(n) if (1..=MAX_EMULATED_GPUS).contains(&n) => vec![16; n],
        Ok(_) => return None,
        Err(_) => spec
            .split(',')
            .map(|g| g.trim().strip_suffix("GiB")?.parse::<u64>().ok())
            .collect::<Option<_>>()?,
    };
    if sizes.is_empty()
        || sizes.len() > MAX_EMULATED_GPUS
        || sizes.iter().any(|&g| g == 0 || g > 1024)
    {
        return None;
    }
    Some(
        sizes
            .into_iter()
            .enumerate()
            .map(|(k, gib)| crate::GpuInfo {
                ordinal: k as u32,
                uuid: format!("GPU-eeeeeeee-eeee-eeee-eeee-eeeeeeeeee{k:02x}"),
                pci_bus_id: format!("0000:ee:{k:02x}.0"),
                name: "emulated".into(),
                memory_bytes: gib << 30,
                multiprocessors: 1,
            })
            .collect(),
    )
}

fn status(r: &Result<(), ExecError>) -> Status {
    match r {
        Ok(()) => Status::Ok,
        Err(ExecError::Memory(_)) => Status::Unmapped,
        Err(ExecError::VramRange { .. }) => Status::VramRange,
        Err(_) => Status::Engine,
    }
}

/// Serve the daemon on `ep` with a `vram`-byte framebuffer, confined by
/// `confinement` before the first message. Returns the exit code.
pub fn run(mut ep: Endpoint, vram: u64, confinement: Confinement) -> i32 {
    let out = ep.sender();
    let engine = match CpuEngine::new(1) {
        Ok(e) => e,
        Err(e) => {
            out.fatal(FatalReason::Start, 0, &e.to_string());
            return 2;
        }
    };
    let ctx = match engine.create_context(vram) {
        Ok(c) => c,
        Err(e) => {
            out.fatal(FatalReason::OutOfMemory, 0, &e.to_string());
            return 2;
        }
    };
    // One item through the engine before the filter: its threads' start
    // (their priority, their schedstat file) is behind them then.
    if !warm_up(&*ctx) {
        out.fatal(FatalReason::Start, 0, "the cpu engine did not run an item");
        return 2;
    }
    let daemon = confinement.daemon();
    if let Err(e) = confinement.enter(&[], &[]) {
        out.fatal(FatalReason::Sandbox, 0, &devmodel::Chain(&e).to_string());
        return 2;
    }
    let ready = Ready {
        vram,
        // No guest PTX: the cpu engine cannot run it.
        multiprocessors: 1,
        ptx_va_base: 0,
        piece_bytes: PIECE_BYTES,
        // The cpu engine's documented synthetic device (what a cpu-engine
        // vGPU reports too): the identity travels as a GPU's does.
        device: ctx.device_info().unwrap_or_default(),
    };
    if out.send(&ToDaemon::Ready(ready)).is_err() {
        return 1;
    }
    let mut worker = Emulated {
        ctx,
        mem: Arc::new(GuestRam::new()),
        out,
        daemon,
    };
    loop {
        match ep.recv() {
            Ok(Some((msg, files))) => {
                if let Err(e) = worker.handle(msg, files) {
                    worker.out.fatal(FatalReason::Protocol, 0, &e.to_string());
                    return 2;
                }
            }
            Ok(None) => return 0,
            Err(e) => {
                worker
                    .out
                    .fatal(FatalReason::Protocol, 0, &devmodel::Chain(&e).to_string());
                return 2;
            }
        }
    }
}

/// Run one empty item on `ctx` and wait for it (at most 10 s).
fn warm_up(ctx: &dyn EngineContext) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    ctx.submit(
        WorkItem {
            op: Op::Memset {
                dst: Vec::new(),
                pattern: 0,
            },
            channel: 0,
            mem: Arc::new(GuestRam::new()),
            front_end: Duration::ZERO,
        },
        Box::new(move |c| {
            let _ = tx.send(c.result.is_ok());
        }),
    );
    rx.recv_timeout(Duration::from_secs(10)).unwrap_or(false)
}

/// The emulated worker's state: its cpu-engine context and guest RAM.
struct Emulated {
    ctx: Arc<dyn EngineContext>,
    mem: Arc<GuestRam>,
    out: Sender,
    daemon: i32,
}

impl Emulated {
    fn handle(&mut self, msg: ToWorker<'_>, files: Vec<File>) -> Result<(), Error> {
        match msg {
            ToWorker::Layout(l) => self.mem = Arc::new(layout(&l, files)?),
            ToWorker::Submit { tag, op } => self.submit(tag, op.into_owned()),
            ToWorker::ReadVram { tag, offset, len } => {
                let mut data = vec![0u8; len.min(crate::wire::MAX_VRAM_ACCESS) as usize];
                let st = status(&self.ctx.read_vram(offset, &mut data));
                self.reply(tag, st, &data);
            }
            ToWorker::WriteVram { tag, offset, data } => {
                let st = status(&self.ctx.write_vram(offset, data));
                self.reply(tag, st, &[]);
            }
            ToWorker::ClearVram { tag } => {
                self.ctx.release_vram();
                self.reply(tag, Status::Ok, &[]);
            }
            // The cpu engine runs no guest kernels: nothing to map.
            ToWorker::KernelMap(_) => {}
        }
        Ok(())
    }

    fn submit(&self, tag: u64, op: Op) {
        if let Some(e) = Escape::requested(&op) {
            e.attempt(self.daemon);
        }
        if let Some(g) = Escape::garbage(&op) {
            self.out.scribble(g);
            return;
        }
        let sum = match &op {
            Op::ReduceSum { sum, .. } => Some(sum.clone()),
            _ => None,
        };
        let out = self.out.clone();
        self.ctx.submit(
            WorkItem {
                op,
                channel: 0,
                mem: self.mem.clone(),
                front_end: Duration::ZERO,
            },
            Box::new(move |c| {
                let _ = out.send(&ToDaemon::Done(Done {
                    tag,
                    gpu_ns: c.gpu_time.as_nanos() as u64,
                    status: status(&c.result),
                    value: sum.map_or(0.0, |s| s.get()),
                }));
            }),
        );
    }

    fn reply(&self, tag: u64, status: Status, data: &[u8]) {
        let _ = self.out.send(&ToDaemon::Data { tag, status, data });
    }
}

/// Guest RAM as a layout message describes it, mapped here.
fn layout(l: &Layout, files: Vec<File>) -> Result<GuestRam, Error> {
    if l.files.len() != files.len() {
        return Err(Error::Malformed("file count"));
    }
    let mem = GuestRam::new();
    for w in &l.windows {
        let i = w.file as usize;
        let (Some(f), Some(info)) = (files.get(i), l.files.get(i)) else {
            return Err(Error::Malformed("file index"));
        };
        let f = f.try_clone().map_err(|source| Error::Io {
            what: "duplicating a guest RAM file",
            source,
        })?;
        if let Err(e) = mem.map(w.gpa, w.len, f, w.offset, info.writable) {
            eprintln!("guest RAM window not mapped: {e}");
        }
    }
    Ok(mem)
}

#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_serve(frames: &[&[u8]]) {
    use std::sync::OnceLock;
    static ENGINE: OnceLock<CpuEngine> = OnceLock::new();
    let engine = ENGINE.get_or_init(|| CpuEngine::new(1).expect("engine"));
    let Ok(ctx) = engine.create_context(1 << 20) else {
        return;
    };
    // Replies go nowhere: a socket nobody reads, that never blocks.
    let Ok((a, _b)) = std::os::unix::net::UnixStream::pair() else {
        return;
    };
    if a.set_nonblocking(true).is_err() {
        return;
    }
    let sender = Sender::for_fuzzing(a);
    let mut w = Emulated {
        ctx,
        mem: Arc::new(GuestRam::new()),
        out: sender,
        daemon: 0,
    };
    let mut buf = Vec::new();
    for f in frames {
        if let Ok(m) = ToWorker::decode(f) {
            m.encode(&mut buf).expect("a decoded message encodes");
            assert_eq!(&buf[..], *f, "decode then encode gives the frame back");
            // Operations are not run (a fuzzed 10 s spin would only wait).
            if !matches!(m, ToWorker::Submit { .. }) {
                let _ = w.handle(m, Vec::new());
            }
        }
    }
    w.ctx.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_emulation_shows_the_gpus_its_variable_names() {
        let one = gpus("1").unwrap();
        assert_eq!(one.len(), 1);
        // The one GPU is the one --probe describes.
        let probe: crate::DeviceInfo = serde_json::from_str(PROBE).unwrap();
        assert_eq!(
            (
                one[0].name.as_str(),
                one[0].memory_bytes,
                one[0].multiprocessors
            ),
            (
                probe.name.as_str(),
                probe.memory_bytes,
                probe.multiprocessors
            )
        );
        let two = gpus("16GiB, 8GiB").unwrap();
        let got: Vec<(u32, &str, &str, u64)> = two
            .iter()
            .map(|g| {
                (
                    g.ordinal,
                    g.uuid.as_str(),
                    g.pci_bus_id.as_str(),
                    g.memory_bytes >> 30,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    0,
                    "GPU-eeeeeeee-eeee-eeee-eeee-eeeeeeeeee00",
                    "0000:ee:00.0",
                    16
                ),
                (
                    1,
                    "GPU-eeeeeeee-eeee-eeee-eeee-eeeeeeeeee01",
                    "0000:ee:01.0",
                    8
                )
            ]
        );
        assert_eq!(gpus("16").map(|g| g.len()), Some(MAX_EMULATED_GPUS));
        for bad in ["0", "17", "", "16G", "8GiB,", "0GiB", "2048GiB", "x"] {
            assert_eq!(gpus(bad), None, "{bad:?}");
        }
    }
}
