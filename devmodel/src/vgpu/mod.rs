//! One vGPU behind its transport-agnostic face.
//!
//! The face is what a VMM sees of a PCI device over vfio:
//! [`Vgpu::region_read`] / [`Vgpu::region_write`] on the configuration
//! space and the BARs, [`Vgpu::dma_map`] / [`Vgpu::dma_unmap`] of guest
//! RAM, [`Vgpu::set_irqs`] for MSI-X eventfds and [`Vgpu::reset`]. Behind
//! it, a front-end thread (PFIFO) fetches GPFIFO entries of doorbelled
//! channels, audits their pushbuffers, carries out HOST commands and feeds
//! engine work to the backend; completions come back from backend threads.
//!
//! The device is split the way the hardware is:
//! * this module: the PCI/vfio face, the device state and reset;
//! * `regs`: BAR0 register reads and writes and their side effects;
//! * `irq`: interrupts (MSI-X) and channel faults;
//! * `pfifo`: the front end that turns GPFIFO entries into work.

mod irq;
mod pfifo;
mod regs;

use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mmio::bar::{
    irq_info, region_info, MSIX_PBA_OFFSET, REGION_BAR0, REGION_BAR2, REGION_BAR4, REGION_CONFIG,
};
use mmio::pci::{ConfigSpace, PciIdentity};
use mmio::regs::{Caps, ChannelId, GlobalReg};
use mmio::{RegRef, RegisterFile};

use crate::backend::{Backend, EngineContext};
use crate::channel::Channel;
use crate::doorbell::DoorbellPage;
use crate::gmmu::Gmmu;
use crate::memory::GuestRam;
use crate::sync::{lock, wait};
use crate::DeviceError;

pub use irq::ChannelError;

/// What a vGPU is: its PCI identity, framebuffer and channel count.
#[derive(Clone, Debug)]
pub struct VgpuConfig {
    pub name: String,
    pub identity: PciIdentity,
    pub vram_bytes: u64,
    pub channels: u32,
}

/// Counters an operator can read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VgpuStats {
    pub commands: u64,
    pub gpu_time_ns: u64,
    pub faults: u64,
    pub interrupts_raised: u64,
    pub msi_delivered: u64,
    pub tlb_hits: u64,
    pub tlb_misses: u64,
    pub pinned_bytes: u64,
    pub bad_accesses: u64,
    pub resets: u64,
    /// Doorbells the front end saw by polling the doorbell page.
    pub doorbells_polled: u64,
    /// Doorbells that trapped: `DOORBELL` register writes, and writes to
    /// the doorbell page by a VMM that did not map it.
    pub doorbells_trapped: u64,
    /// Host memory held by decoded commands not yet carried out, now
    /// (bounded by [`crate::channel::MAX_VGPU_DECODED_BYTES`] plus one entry).
    pub decoded_bytes: u64,
}

/// How long the front end keeps polling the doorbell page after it last
/// had something to do, before it sleeps (and the driver must trap).
pub const DEFAULT_POLL_WINDOW: Duration = Duration::from_micros(100);

/// How long a semaphore acquire may wait before its channel faults with
/// `SEMAPHORE_TIMEOUT` (as a PBDMA acquire timeout does on real GPUs).
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// A runlist entry as submitted by the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunlistEntry {
    pub channel: ChannelId,
    pub timeslice_us: u32,
}

/// Everything the face, the front end and completions share, under one lock.
struct State {
    regs: RegisterFile,
    config: ConfigSpace,
    msix: Vec<u8>,
    /// One per channel the register file decodes: every [`ChannelId`] that
    /// reaches the device (decoded registers, validated runlists) indexes it.
    channels: Vec<Channel>,
    mmu: Gmmu,
    irqs: Vec<Option<File>>,
    runlist: Option<Vec<RunlistEntry>>,
    rr_next: usize,
    /// Bumped by every engine reset; completions of older items are ignored.
    generation: u64,
    /// Items handed to the engine and not yet complete, of every generation.
    outstanding: u32,
    shutdown: bool,
    timer_latch: u32,
    stats: VgpuStats,
}

impl State {
    fn channel(&mut self, ch: ChannelId) -> &mut Channel {
        &mut self.channels[ch.index()]
    }
}

/// The device behind the face, shared with the front-end thread and the
/// engine's completion callbacks.
struct Core {
    cfg: VgpuConfig,
    mem: Arc<GuestRam>,
    ctx: Arc<dyn EngineContext>,
    state: Mutex<State>,
    wake: Condvar,
    /// Set with every wake-up, for a front end that polls instead of
    /// waiting on `wake`.
    nudged: AtomicBool,
    doorbell: DoorbellPage,
    /// The device-info block (ABI 1.3 §2.3): `INFO_DATA` reads it.
    info: Vec<u32>,
    /// [`DEFAULT_POLL_WINDOW`] unless changed, in ns.
    poll_window_ns: AtomicU64,
    /// [`DEFAULT_ACQUIRE_TIMEOUT`] unless changed, in ns.
    acquire_timeout_ns: AtomicU64,
    born: Instant,
    /// `vgpu{vgpu=<name>}`: the front end runs in it, so every event it
    /// logs carries the vGPU (as do the vfio-user server's, [`Vgpu::span`]).
    span: tracing::Span,
    /// `channel{channel=<n>}` per channel, children of `span`: a channel's
    /// service and its completions run in its span.
    channel_spans: Vec<tracing::Span>,
}

/// One virtual GPU.
pub struct Vgpu {
    core: Arc<Core>,
    pfifo: Option<JoinHandle<()>>,
}

impl Vgpu {
    /// Create a vGPU on `backend` and start its front end.
    pub fn new(cfg: VgpuConfig, backend: &dyn Backend) -> Result<Vgpu, DeviceError> {
        let ctx = backend.create_context(cfg.vram_bytes)?;
        Self::with_context(cfg, ctx)
    }

    /// Create a vGPU on an engine context made for it (e.g. by a scheduling
    /// parent that needs per-vGPU parameters) and start its front end.
    pub fn with_context(cfg: VgpuConfig, ctx: Arc<dyn EngineContext>) -> Result<Vgpu, DeviceError> {
        let mut regs = RegisterFile::new(cfg.channels);
        let mut caps = Caps(0);
        caps.set_large_pages(true);
        caps.set_msix_vectors(mmio::bar::MSIX_VECTORS as u8);
        caps.set_doorbell_page(true);
        caps.set_ptx(ctx.ptx_va_base().is_some());
        regs.set(RegRef::Global(GlobalReg::Caps), caps.0);
        regs.set_pair(
            RegRef::Global(GlobalReg::PtxVaBaseLo),
            RegRef::Global(GlobalReg::PtxVaBaseHi),
            ctx.ptx_va_base().unwrap_or(0),
        );
        regs.set(RegRef::Global(GlobalReg::NumChannels), regs.channels());
        regs.set_pair(
            RegRef::Global(GlobalReg::VramSizeLo),
            RegRef::Global(GlobalReg::VramSizeHi),
            cfg.vram_bytes,
        );
        let channels = (0..regs.channels()).map(|_| Channel::default()).collect();
        let msix_len = region_info(REGION_BAR2).map_or(0, |r| r.size as usize);
        let vectors = irq_info(mmio::bar::IRQ_INDEX_MSIX).map_or(0, |i| i.count as usize);
        let state = State {
            regs,
            config: ConfigSpace::new(cfg.identity),
            msix: vec![0; msix_len],
            channels,
            mmu: Gmmu::new(cfg.vram_bytes),
            irqs: (0..vectors).map(|_| None).collect(),
            runlist: None,
            rr_next: 0,
            generation: 0,
            outstanding: 0,
            shutdown: false,
            timer_latch: 0,
            stats: VgpuStats::default(),
        };
        let doorbell =
            DoorbellPage::new(state.regs.channels()).map_err(DeviceError::DoorbellPage)?;
        let span = tracing::info_span!(parent: None, "vgpu", vgpu = %cfg.name);
        let channel_spans = (0..state.regs.channels())
            .map(|c| tracing::info_span!(parent: &span, "channel", channel = c))
            .collect();
        // The engine's identity, with this vGPU's UUID when its name is one.
        let info = ctx
            .device_info()
            .map(|mut i| {
                if let Some(u) = crate::identity::parse_uuid(&cfg.name) {
                    i.uuid = u;
                }
                i.encode()
            })
            .unwrap_or_default();
        let core = Arc::new(Core {
            info,
            cfg,
            mem: Arc::new(GuestRam::new()),
            ctx,
            state: Mutex::new(state),
            wake: Condvar::new(),
            nudged: AtomicBool::new(false),
            doorbell,
            poll_window_ns: AtomicU64::new(DEFAULT_POLL_WINDOW.as_nanos() as u64),
            acquire_timeout_ns: AtomicU64::new(DEFAULT_ACQUIRE_TIMEOUT.as_nanos() as u64),
            born: Instant::now(),
            span,
            channel_spans,
        });
        let c = core.clone();
        let pfifo =
            crate::thread::spawn_data_path(format!("pfifo-{}", core.cfg.name), move || c.pfifo())?;
        Ok(Vgpu {
            core,
            pfifo: Some(pfifo),
        })
    }

    pub fn config(&self) -> &VgpuConfig {
        &self.core.cfg
    }

    /// The vGPU's tracing span (`vgpu{vgpu=<name>}`), for the threads that
    /// serve it to run in.
    pub fn span(&self) -> &tracing::Span {
        &self.core.span
    }

    /// The doorbell page's backing file (a new descriptor), for a VMM to map
    /// as BAR4.
    pub fn doorbell_file(&self) -> std::io::Result<File> {
        self.core.doorbell.file()
    }

    /// How long the front end polls the doorbell page after its last work
    /// before it sleeps ([`DEFAULT_POLL_WINDOW`]); zero sleeps at once.
    pub fn set_poll_window(&self, window: Duration) {
        self.core
            .poll_window_ns
            .store(window.as_nanos() as u64, Ordering::Relaxed);
    }

    /// How long a semaphore acquire may wait before its channel faults
    /// ([`DEFAULT_ACQUIRE_TIMEOUT`]).
    pub fn set_acquire_timeout(&self, limit: Duration) {
        self.core.acquire_timeout_ns.store(
            limit.as_nanos().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    /// Read from a vfio region (config space, BAR0, BAR2, BAR4).
    pub fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        let size = implemented(index)?;
        let mut st = self.core.lock();
        match index {
            REGION_CONFIG => Ok(st.config.read(offset, data)?),
            REGION_BAR0 => {
                let dwords = RegisterFile::dwords(offset, data.len())
                    .inspect_err(|_| st.stats.bad_accesses += 1)?;
                for (out, off) in data.chunks_exact_mut(4).zip(dwords) {
                    let v = self.core.read_reg(&mut st, off);
                    out.copy_from_slice(&v.to_le_bytes());
                }
                Ok(())
            }
            REGION_BAR2 => {
                let r = range(offset, data.len(), size)?;
                data.copy_from_slice(&st.msix[r]);
                Ok(())
            }
            REGION_BAR4 => {
                range(offset, data.len(), size)?;
                self.core
                    .doorbell
                    .read(offset, data)
                    .map_err(|_| out_of_range(offset, data.len(), size))
            }
            _ => Err(DeviceError::NoSuchRegion(index)),
        }
    }

    /// Write to a vfio region (config space, BAR0, BAR2, BAR4).
    pub fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        let size = implemented(index)?;
        let mut st = self.core.lock();
        match index {
            REGION_CONFIG => {
                let effect = st.config.write(offset, data)?;
                drop(st);
                if effect.flr {
                    tracing::info!(vgpu = %self.core.cfg.name, "function level reset");
                    self.core.reset_engine();
                }
                Ok(())
            }
            REGION_BAR0 => {
                let dwords = RegisterFile::dwords(offset, data.len())
                    .inspect_err(|_| st.stats.bad_accesses += 1)?;
                let mut reset = false;
                for (word, off) in data.chunks_exact(4).zip(dwords) {
                    let v = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
                    reset |= self.core.write_reg(&mut st, off, v) == regs::WriteEffect::Reset;
                }
                drop(st);
                if reset {
                    tracing::info!(vgpu = %self.core.cfg.name, "reset register written");
                    self.core.reset_engine();
                }
                Ok(())
            }
            REGION_BAR2 => {
                // MSI-X table entries are plain storage; the PBA is read-only.
                let r = range(offset, data.len(), size)?;
                if r.end <= MSIX_PBA_OFFSET as usize {
                    st.msix[r].copy_from_slice(data);
                }
                Ok(())
            }
            // The doorbell page, written through the VMM rather than mapped:
            // a DB_PUT store is a doorbell that trapped.
            REGION_BAR4 => {
                range(offset, data.len(), size)?;
                let rang = self
                    .core
                    .doorbell
                    .write(offset, data)
                    .map_err(|_| out_of_range(offset, data.len(), size))?;
                if rang {
                    let n = self.core.doorbell.take_rung(|ch| st.channel(ch).ring());
                    st.stats.doorbells_trapped += n;
                    drop(st);
                    self.core.kick();
                }
                Ok(())
            }
            _ => Err(DeviceError::NoSuchRegion(index)),
        }
    }

    /// Map guest RAM `gpa..gpa+size` from `fd` at `file_offset`.
    pub fn dma_map(
        &self,
        gpa: u64,
        size: u64,
        fd: File,
        file_offset: u64,
        writable: bool,
    ) -> Result<(), DeviceError> {
        Ok(self.core.mem.map(gpa, size, fd, file_offset, writable)?)
    }

    /// Unmap guest RAM; returns once no command uses it any more.
    pub fn dma_unmap(&self, gpa: u64, size: u64) -> Result<(), DeviceError> {
        Ok(self.core.mem.unmap(gpa, size)?)
    }

    /// Set eventfds for `fds.len()` vectors of interrupt index `index` from
    /// `start` (`None` unassigns one); an empty list at start 0 disables
    /// them all. Only MSI-X has vectors ([`mmio::bar::IRQS`]). Anything but
    /// an eventfd is refused, and each is made non-blocking: delivering an
    /// interrupt never waits on the client.
    pub fn set_irqs(
        &self,
        index: u32,
        start: u32,
        fds: Vec<Option<File>>,
    ) -> Result<(), DeviceError> {
        check_irqs(index, start, fds.len())?;
        for fd in fds.iter().flatten() {
            irq::make_interrupt_fd(fd)?;
        }
        let mut st = self.core.lock();
        if fds.is_empty() {
            st.irqs.iter_mut().for_each(|f| *f = None);
        }
        for (slot, fd) in st.irqs.iter_mut().skip(start as usize).zip(fds) {
            *slot = fd;
        }
        Ok(())
    }

    /// vfio device reset (and PCIe FLR): configuration space, registers and
    /// all channels return to reset state; queued work is dropped.
    pub fn reset(&self) {
        self.core.lock().config.reset();
        self.core.reset_engine();
    }

    /// The VM went away: reset as [`Vgpu::reset`] does, then give the
    /// framebuffer's memory back to the host (it reads as zero again, as a
    /// new vGPU's does; ABI §8).
    pub fn release(&self) {
        self.reset();
        self.core.ctx.release_vram();
    }

    /// Wait (up to `limit`) until no item of this vGPU is at the engine
    /// any more: after a reset, cancelled items come back within a piece.
    /// Returns whether it got there.
    pub fn wait_quiet(&self, limit: Duration) -> bool {
        let start = Instant::now();
        while self.core.lock().outstanding > 0 {
            if start.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// A copy of the counters.
    pub fn stats(&self) -> VgpuStats {
        let st = self.core.lock();
        let mut s = st.stats.clone();
        s.tlb_hits = st.mmu.hits;
        s.tlb_misses = st.mmu.misses;
        s.pinned_bytes = self.core.mem.pinned_bytes();
        s.decoded_bytes = st.channels.iter().map(|c| c.held_bytes()).sum();
        s
    }

    /// A VM (a transport's client) attached to the vGPU or left it: the
    /// engine counts running vGPUs (`equal_share`).
    pub fn set_attached(&self, attached: bool) {
        self.core.ctx.set_attached(attached);
    }

    /// Whether its engine can run its work now.
    pub fn engine_health(&self) -> crate::backend::EngineHealth {
        self.core.ctx.health()
    }

    /// The guest runlist in force, if one was submitted.
    pub fn runlist(&self) -> Option<Vec<RunlistEntry>> {
        self.core.lock().runlist.clone()
    }
}

/// Check `count` vectors from `start` of interrupt index `index` against
/// what the device offers ([`mmio::bar::IRQS`]), before anything is
/// allocated for them.
pub fn check_irqs(index: u32, start: u32, count: usize) -> Result<(), DeviceError> {
    let offered = irq_info(index).map_or(0, |i| i.count as usize);
    let fits = (start as usize)
        .checked_add(count)
        .is_some_and(|end| end <= offered);
    if offered == 0 || !fits {
        return Err(DeviceError::BadIrq {
            index,
            start,
            count: count.try_into().unwrap_or(u32::MAX),
        });
    }
    Ok(())
}

impl Drop for Vgpu {
    fn drop(&mut self) {
        self.core.lock().shutdown = true;
        self.core.kick();
        if let Some(t) = self.pfifo.take() {
            let _ = t.join();
        }
        self.core.reset_engine();
    }
}

/// The size of region `index` if the device implements it ([`mmio::bar::REGIONS`]).
fn implemented(index: u32) -> Result<u64, DeviceError> {
    region_info(index)
        .map(|r| r.size)
        .filter(|&size| size > 0)
        .ok_or(DeviceError::NoSuchRegion(index))
}

fn range(offset: u64, len: usize, size: u64) -> Result<std::ops::Range<usize>, DeviceError> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(offset as usize..end as usize),
        _ => Err(out_of_range(offset, len, size)),
    }
}

fn out_of_range(offset: u64, len: usize, size: u64) -> DeviceError {
    DeviceError::Mmio(mmio::MmioError::OutOfRange { offset, len, size })
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn now_ns(&self) -> u64 {
        self.born.elapsed().as_nanos() as u64
    }

    /// Wake the front end, whether it waits or polls.
    fn kick(&self) {
        self.nudged.store(true, Ordering::Release);
        self.wake.notify_all();
    }

    /// Stop everything, drop queued work, wait for in-flight items, and
    /// return registers and channels to reset state. DMA maps, interrupt
    /// eventfds and VRAM contents are kept.
    fn reset_engine(&self) {
        let mut st = self.lock();
        st.generation += 1;
        st.regs.reset();
        st.channels.iter_mut().for_each(|c| *c = Channel::default());
        self.doorbell.reset();
        st.mmu.reset();
        st.runlist = None;
        st.stats.resets += 1;
        self.ctx.cancel();
        let every: Vec<(u32, u32)> = (0..st.channels.len() as u32).map(|c| (c, 0)).collect();
        self.ctx.set_runlist(&every);
        while st.outstanding > 0 {
            st = wait(&self.wake, st);
        }
    }
}
