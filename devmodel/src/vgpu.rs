//! One vGPU behind its transport-agnostic face.
//!
//! The face is what a VMM sees of a PCI device over vfio:
//! [`Vgpu::region_read`] / [`Vgpu::region_write`] on the configuration
//! space and the BARs, [`Vgpu::dma_map`] / [`Vgpu::dma_unmap`] of guest
//! RAM, [`Vgpu::set_irqs`] for MSI-X eventfds and [`Vgpu::reset`]. Behind
//! it, a front-end thread (PFIFO) fetches GPFIFO entries of doorbelled
//! channels, audits their pushbuffers, carries out HOST commands and feeds
//! engine work to the backend; completions come back from backend threads.

use crate::sync::{lock, wait, wait_timeout};
use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mmio::bar::{MSIX_VECTORS, REGION_BAR0, REGION_BAR2, REGION_CONFIG};
use mmio::pci::{ConfigSpace, PciIdentity};
use mmio::regs::{
    Caps, ChannelCtrl, ChannelReg, ChannelStatus, ErrorCode, GlobalReg, Intr, MmuFaultInfo,
    RunlistInfo,
};
use mmio::{Decoded, RegRef, RegisterFile};

use crate::backend::{Backend, Completion, EngineContext, ExecError, WorkItem};
use crate::channel::{Channel, GpfifoEntry, Instance, USERD_GP_GET, USERD_GP_PUT};
use crate::gmmu::{Aperture, Extent, Fault, Gmmu};
use crate::memory::{GuestRam, MemError};
use crate::pushbuf::{self, AddressSpace, SegmentError};
use crate::work::{AcquireCond, Command};
use crate::DeviceError;

/// vfio IRQ index of MSI-X (`VFIO_PCI_MSIX_IRQ_INDEX`).
pub const IRQ_INDEX_MSIX: u32 = vfio_bindings::bindings::vfio::VFIO_PCI_MSIX_IRQ_INDEX;
/// How often a channel blocked on a semaphore acquire re-reads memory.
const ACQUIRE_POLL: Duration = Duration::from_millis(1);
/// Longest pushbuffer segment (words) the front end accepts.
pub const MAX_SEGMENT_WORDS: u32 = 1 << 22;
/// Engine items one channel may have handed to the engine and not yet seen
/// complete: deep enough for the host scheduler to see a channel's backlog.
pub const MAX_CHANNEL_IN_FLIGHT: u32 = 16;
/// GPFIFO entries fetched ahead of GP_GET.
pub const MAX_ENTRIES_AHEAD: usize = 16;

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
}

/// A runlist entry as submitted by the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunlistEntry {
    pub channel: u32,
    pub timeslice_us: u32,
}

struct State {
    regs: RegisterFile,
    config: ConfigSpace,
    msix: Vec<u8>,
    channels: Vec<Channel>,
    mmu: Gmmu,
    irqs: Vec<Option<File>>,
    runlist: Option<Vec<RunlistEntry>>,
    rr_next: usize,
    generation: u64,
    outstanding: u32,
    shutdown: bool,
    timer_latch: u32,
    stats: VgpuStats,
}

struct Shared {
    cfg: VgpuConfig,
    mem: Arc<GuestRam>,
    ctx: Arc<dyn EngineContext>,
    state: Mutex<State>,
    wake: Condvar,
    born: Instant,
}

/// One virtual GPU.
pub struct Vgpu {
    shared: Arc<Shared>,
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
        caps.set_msix_vectors(MSIX_VECTORS as u8);
        regs.set(RegRef::Global(GlobalReg::Caps), caps.0);
        regs.set(RegRef::Global(GlobalReg::NumChannels), regs.channels());
        regs.set(RegRef::Global(GlobalReg::VramSizeLo), cfg.vram_bytes as u32);
        regs.set(
            RegRef::Global(GlobalReg::VramSizeHi),
            (cfg.vram_bytes >> 32) as u32,
        );
        let channels = (0..regs.channels()).map(|_| Channel::default()).collect();
        let state = State {
            regs,
            config: ConfigSpace::new(cfg.identity),
            msix: vec![0; mmio::bar::BAR2_SIZE as usize],
            channels,
            mmu: Gmmu::new(cfg.vram_bytes),
            irqs: (0..MSIX_VECTORS).map(|_| None).collect(),
            runlist: None,
            rr_next: 0,
            generation: 0,
            outstanding: 0,
            shutdown: false,
            timer_latch: 0,
            stats: VgpuStats::default(),
        };
        let shared = Arc::new(Shared {
            cfg,
            mem: Arc::new(GuestRam::new()),
            ctx,
            state: Mutex::new(state),
            wake: Condvar::new(),
            born: Instant::now(),
        });
        let s = shared.clone();
        let pfifo = std::thread::Builder::new()
            .name(format!("pfifo-{}", shared.cfg.name))
            .spawn(move || s.pfifo())
            .map_err(|e| DeviceError::Thread(e.to_string()))?;
        Ok(Vgpu {
            shared,
            pfifo: Some(pfifo),
        })
    }

    pub fn config(&self) -> &VgpuConfig {
        &self.shared.cfg
    }

    /// Read from a vfio region (config space, BAR0, BAR2).
    pub fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        let mut st = self.shared.lock();
        match index {
            REGION_CONFIG => Ok(st.config.read(offset, data)?),
            REGION_BAR0 => {
                let dwords = RegisterFile::dwords(offset, data.len())
                    .inspect_err(|_| st.stats.bad_accesses += 1)?;
                for (i, off) in dwords.enumerate() {
                    let v = self.shared.read_reg(&mut st, off);
                    data[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
                }
                Ok(())
            }
            REGION_BAR2 => {
                let r = range(offset, data.len(), st.msix.len())?;
                data.copy_from_slice(&st.msix[r]);
                Ok(())
            }
            _ => Err(DeviceError::NoSuchRegion(index)),
        }
    }

    /// Write to a vfio region (config space, BAR0, BAR2).
    pub fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        let mut st = self.shared.lock();
        match index {
            REGION_CONFIG => {
                let effect = st.config.write(offset, data)?;
                drop(st);
                if effect.flr {
                    tracing::info!(vgpu = %self.shared.cfg.name, "function level reset");
                    self.shared.reset_engine();
                }
                Ok(())
            }
            REGION_BAR0 => {
                let dwords = RegisterFile::dwords(offset, data.len())
                    .inspect_err(|_| st.stats.bad_accesses += 1)?;
                let mut reset = false;
                for (i, off) in dwords.enumerate() {
                    let v = u32::from_le_bytes([
                        data[4 * i],
                        data[4 * i + 1],
                        data[4 * i + 2],
                        data[4 * i + 3],
                    ]);
                    reset |= self.shared.write_reg(&mut st, off, v);
                }
                drop(st);
                if reset {
                    tracing::info!(vgpu = %self.shared.cfg.name, "reset register written");
                    self.shared.reset_engine();
                }
                Ok(())
            }
            REGION_BAR2 => {
                // MSI-X table entries are plain storage; the PBA is read-only.
                let r = range(offset, data.len(), st.msix.len())?;
                if r.end <= mmio::bar::MSIX_PBA_OFFSET as usize {
                    st.msix[r].copy_from_slice(data);
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
        Ok(self.shared.mem.map(gpa, size, fd, file_offset, writable)?)
    }

    /// Unmap guest RAM; returns once no command uses it any more.
    pub fn dma_unmap(&self, gpa: u64, size: u64) -> Result<(), DeviceError> {
        Ok(self.shared.mem.unmap(gpa, size)?)
    }

    /// Set eventfds for `fds.len()` MSI-X vectors from `start` (`None`
    /// unassigns one); an empty list at start 0 disables them all.
    pub fn set_irqs(
        &self,
        index: u32,
        start: u32,
        fds: Vec<Option<File>>,
    ) -> Result<(), DeviceError> {
        let mut st = self.shared.lock();
        let n = st.irqs.len();
        let bad = || DeviceError::BadIrq {
            index,
            start,
            count: fds.len() as u32,
        };
        if index != IRQ_INDEX_MSIX
            || (start as usize)
                .checked_add(fds.len())
                .is_none_or(|e| e > n)
        {
            return Err(bad());
        }
        if fds.is_empty() {
            st.irqs.iter_mut().for_each(|f| *f = None);
        }
        for (i, fd) in fds.into_iter().enumerate() {
            st.irqs[start as usize + i] = fd;
        }
        Ok(())
    }

    /// vfio device reset (and PCIe FLR): configuration space, registers and
    /// all channels return to reset state; queued work is dropped.
    pub fn reset(&self) {
        self.shared.lock().config.reset();
        self.shared.reset_engine();
    }

    /// A copy of the counters.
    pub fn stats(&self) -> VgpuStats {
        let st = self.shared.lock();
        let mut s = st.stats.clone();
        s.tlb_hits = st.mmu.hits;
        s.tlb_misses = st.mmu.misses;
        s.pinned_bytes = self.shared.mem.pinned_bytes();
        s
    }

    /// The guest runlist in force, if one was submitted.
    pub fn runlist(&self) -> Option<Vec<RunlistEntry>> {
        self.shared.lock().runlist.clone()
    }
}

impl Drop for Vgpu {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.pfifo.take() {
            let _ = t.join();
        }
        self.shared.reset_engine();
    }
}

fn range(offset: u64, len: usize, size: usize) -> Result<std::ops::Range<usize>, DeviceError> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size as u64 => Ok(offset as usize..end as usize),
        _ => Err(DeviceError::Mmio(mmio::MmioError::OutOfRange {
            offset,
            len,
            size: size as u64,
        })),
    }
}

/// A channel's address space during the audit of one segment.
struct Space<'a> {
    mmu: &'a mut Gmmu,
    mem: &'a GuestRam,
    ctx: &'a dyn EngineContext,
    pdb: u64,
}

impl AddressSpace for Space<'_> {
    fn translate(&mut self, va: u64, len: u64, write: bool) -> Result<Vec<Extent>, Fault> {
        self.mmu.translate(self.mem, self.pdb, va, len, write)
    }
    fn read(&mut self, va: u64, len: u32) -> Result<Vec<u8>, Fault> {
        let ext = self.translate(va, len as u64, false)?;
        let mut out = vec![0u8; len as usize];
        read_extents(self.mem, self.ctx, &ext, &mut out).map_err(|_| Fault {
            code: ErrorCode::SysmemUnmapped,
            va,
            write: false,
        })?;
        Ok(out)
    }
}

fn read_extents(
    mem: &GuestRam,
    ctx: &dyn EngineContext,
    ext: &[Extent],
    out: &mut [u8],
) -> Result<(), ExecError> {
    let mut at = 0usize;
    for e in ext {
        let dst = &mut out[at..at + e.len as usize];
        match e.aperture {
            Aperture::Vram => ctx.read_vram(e.addr, dst)?,
            Aperture::Sysmem => mem.read(e.addr, dst)?,
        }
        at += e.len as usize;
    }
    Ok(())
}

fn write_extents(
    mem: &GuestRam,
    ctx: &dyn EngineContext,
    ext: &[Extent],
    data: &[u8],
) -> Result<(), ExecError> {
    let mut at = 0usize;
    for e in ext {
        let src = &data[at..at + e.len as usize];
        match e.aperture {
            Aperture::Vram => ctx.write_vram(e.addr, src)?,
            Aperture::Sysmem => mem.write(e.addr, src)?,
        }
        at += e.len as usize;
    }
    Ok(())
}

/// A channel error as the front end records it.
#[derive(Clone, Copy, Debug)]
struct ChannelError {
    code: ErrorCode,
    info: u32,
    fault: Option<Fault>,
}

impl From<SegmentError> for ChannelError {
    fn from(e: SegmentError) -> Self {
        ChannelError {
            code: e.code,
            info: e.word,
            fault: e.fault,
        }
    }
}
impl From<Fault> for ChannelError {
    fn from(f: Fault) -> Self {
        ChannelError {
            code: f.code,
            info: 0,
            fault: Some(f),
        }
    }
}
fn chan_err(code: ErrorCode, info: u32) -> ChannelError {
    ChannelError {
        code,
        info,
        fault: None,
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn now_ns(&self) -> u64 {
        self.born.elapsed().as_nanos() as u64
    }

    // ---- registers -------------------------------------------------------

    fn read_reg(&self, st: &mut State, off: u32) -> u32 {
        let reg = match st.regs.decode(off) {
            Decoded::Hole => {
                tracing::trace!(offset = off, "read of BAR0 hole");
                return 0;
            }
            Decoded::Register(r) => r,
        };
        match reg {
            RegRef::Global(GlobalReg::TimerLo) => {
                let now = self.now_ns();
                st.timer_latch = (now >> 32) as u32;
                now as u32
            }
            RegRef::Global(GlobalReg::TimerHi) => st.timer_latch,
            RegRef::Global(GlobalReg::Status) => {
                st.channels
                    .iter()
                    .any(|c| c.faulted.is_none() && c.state() as u8 >= 2) as u32
            }
            RegRef::Channel(c, ChannelReg::Status) => {
                let ch = &st.channels[c as usize];
                let mut s = ChannelStatus(0);
                s.set_state(ch.state() as u8);
                s.set_error(ch.faulted.map_or(0, |e| e as u8));
                s.0
            }
            r => st.regs.get(r),
        }
    }

    /// Apply a guest register write. Returns true when it asks for an
    /// engine reset, which the caller performs without the state lock.
    fn write_reg(&self, st: &mut State, off: u32, v: u32) -> bool {
        let reg = match st.regs.decode(off) {
            Decoded::Hole => {
                tracing::trace!(offset = off, value = v, "write to BAR0 hole ignored");
                return false;
            }
            Decoded::Register(r) => r,
        };
        // The instance pointer cannot move under an enabled channel.
        if let RegRef::Channel(c, ChannelReg::InstLo | ChannelReg::InstHi) = reg {
            if st.channels[c as usize].enabled {
                tracing::debug!(channel = c, "instance pointer write while enabled ignored");
                return false;
            }
        }
        let o = st.regs.guest_write(reg, v);
        match reg {
            RegRef::Global(GlobalReg::Reset) => return v & 1 != 0,
            RegRef::Global(GlobalReg::IntrEnable)
                if o.new & !o.old & st.regs.get(RegRef::Global(GlobalReg::IntrStatus)) != 0 =>
            {
                self.signal(st);
            }
            RegRef::Global(GlobalReg::MmuInvalidate) => st.mmu.invalidate(),
            RegRef::Global(GlobalReg::MmuFaultInfo) if !MmuFaultInfo(o.new).valid() => {
                for r in [
                    GlobalReg::MmuFaultInfo,
                    GlobalReg::MmuFaultAddrLo,
                    GlobalReg::MmuFaultAddrHi,
                ] {
                    st.regs.set(RegRef::Global(r), 0);
                }
            }
            RegRef::Global(GlobalReg::RunlistSubmit) => self.submit_runlist(st, v & 0xFF),
            RegRef::Global(GlobalReg::Doorbell) => match st.channels.get_mut(v as usize) {
                Some(ch) => {
                    ch.kicked = true;
                    self.wake.notify_all();
                }
                None => tracing::debug!(channel = v, "doorbell for a channel that does not exist"),
            },
            RegRef::Channel(c, ChannelReg::Ctrl) => self.channel_ctrl(st, c, o.old, v),
            _ => {}
        }
        false
    }

    fn channel_ctrl(&self, st: &mut State, c: u32, old: u32, v: u32) {
        let idx = c as usize;
        if v & ChannelCtrl::RESET != 0 {
            let ch = &mut st.channels[idx];
            ch.stop();
            ch.enabled = false;
            ch.faulted = None;
            ch.error_info = 0;
            ch.inst = None;
            ch.gp_get = 0;
            ch.gp_put = 0;
            ch.methods = Default::default();
            for r in [
                ChannelReg::Ctrl,
                ChannelReg::GpGet,
                ChannelReg::GpPut,
                ChannelReg::ErrorInfo,
            ] {
                st.regs.set(RegRef::Channel(c, r), 0);
            }
            tracing::debug!(channel = c, "channel reset");
            return;
        }
        let (was, now) = (old & ChannelCtrl::ENABLE != 0, v & ChannelCtrl::ENABLE != 0);
        if now && !was && st.channels[idx].faulted.is_none() {
            let gpa = st.regs.get(RegRef::Channel(c, ChannelReg::InstLo)) as u64
                | (st.regs.get(RegRef::Channel(c, ChannelReg::InstHi)) as u64) << 32;
            match Instance::read(&self.mem, gpa) {
                Ok(inst) => {
                    let ch = &mut st.channels[idx];
                    ch.inst = Some(inst);
                    ch.enabled = true;
                    ch.gp_get = 0;
                    ch.gp_put = 0;
                    ch.methods = Default::default();
                    st.regs.set(RegRef::Channel(c, ChannelReg::GpGet), 0);
                    st.regs.set(RegRef::Channel(c, ChannelReg::GpPut), 0);
                    self.wake.notify_all();
                }
                Err(code) => {
                    st.channels[idx].enabled = true;
                    self.fault(st, idx, chan_err(code, 0));
                }
            }
        } else if !now && was {
            let ch = &mut st.channels[idx];
            ch.stop();
            ch.enabled = false;
        }
    }

    fn submit_runlist(&self, st: &mut State, n: u32) {
        let base = st.regs.get(RegRef::Global(GlobalReg::RunlistBaseLo)) as u64
            | (st.regs.get(RegRef::Global(GlobalReg::RunlistBaseHi)) as u64) << 32;
        let mut info = RunlistInfo(0);
        let mut buf = vec![0u8; n as usize * 8];
        let parsed: Option<Vec<RunlistEntry>> =
            if n > st.regs.channels() || self.mem.read(base, &mut buf).is_err() {
                None
            } else {
                let entries: Vec<RunlistEntry> = buf
                    .chunks_exact(8)
                    .map(|e| RunlistEntry {
                        channel: u32::from_le_bytes([e[0], e[1], e[2], e[3]]),
                        timeslice_us: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
                    })
                    .collect();
                let mut seen = vec![false; st.channels.len()];
                let ok = entries
                    .iter()
                    .all(|e| match seen.get_mut(e.channel as usize) {
                        Some(s) if !*s => {
                            *s = true;
                            true
                        }
                        _ => false,
                    });
                ok.then_some(entries)
            };
        match parsed {
            Some(entries) => {
                info.set_entries(entries.len() as u8);
                tracing::debug!(entries = entries.len(), "runlist submitted");
                let pairs: Vec<(u32, u32)> = entries
                    .iter()
                    .map(|e| (e.channel, e.timeslice_us))
                    .collect();
                self.ctx.set_runlist(&pairs);
                st.runlist = Some(entries);
                self.wake.notify_all();
            }
            None => {
                info.set_rejected(true);
                info.set_error(ErrorCode::RunlistInvalid as u8);
                tracing::debug!(n, base, "runlist rejected");
            }
        }
        st.regs.set(RegRef::Global(GlobalReg::RunlistInfo), info.0);
    }

    // ---- interrupts and faults ------------------------------------------

    fn raise(&self, st: &mut State, cause: u32, channel: usize) {
        st.regs
            .set_bits(RegRef::Global(GlobalReg::IntrStatus), cause);
        let (reg, bit) = if channel < 32 {
            (GlobalReg::IntrChannelLo, channel)
        } else {
            (GlobalReg::IntrChannelHi, channel - 32)
        };
        st.regs.set_bits(RegRef::Global(reg), 1 << bit);
        st.stats.interrupts_raised += 1;
        if st.regs.get(RegRef::Global(GlobalReg::IntrEnable)) & cause != 0 {
            self.signal(st);
        }
    }

    /// Deliver MSI-X vector 0.
    fn signal(&self, st: &mut State) {
        if let Some(Some(fd)) = st.irqs.first_mut() {
            match fd.write_all(&1u64.to_ne_bytes()) {
                Ok(()) => st.stats.msi_delivered += 1,
                Err(e) => tracing::warn!(error = %e, "MSI-X eventfd write failed"),
            }
        }
    }

    fn fault(&self, st: &mut State, idx: usize, e: ChannelError) {
        let c = idx as u32;
        let now = self.now_ns();
        let ch = &mut st.channels[idx];
        ch.faulted = Some(e.code);
        ch.error_info = e.info;
        ch.queue.clear();
        ch.entries.clear();
        ch.blocked = false;
        // Items already handed to the engine still run; their completions
        // no longer count for this channel.
        ch.new_epoch();
        let inst = ch.inst;
        st.regs
            .set(RegRef::Channel(c, ChannelReg::ErrorInfo), e.info);
        st.stats.faults += 1;
        tracing::warn!(vgpu = %self.cfg.name, channel = c, code = ?e.code, info = e.info, fault_va = e.fault.map(|f| f.va), "channel stopped");
        if e.code.is_mmu_fault() {
            if !MmuFaultInfo(st.regs.get(RegRef::Global(GlobalReg::MmuFaultInfo))).valid() {
                let f = e.fault.unwrap_or(Fault {
                    code: e.code,
                    va: 0,
                    write: false,
                });
                let mut info = MmuFaultInfo(0);
                info.set_code(e.code as u8);
                info.set_channel(c as u8);
                info.set_write(f.write);
                info.set_valid(true);
                st.regs.set(RegRef::Global(GlobalReg::MmuFaultInfo), info.0);
                st.regs
                    .set(RegRef::Global(GlobalReg::MmuFaultAddrLo), f.va as u32);
                st.regs.set(
                    RegRef::Global(GlobalReg::MmuFaultAddrHi),
                    (f.va >> 32) as u32,
                );
            }
            self.raise(st, Intr::MMU_FAULT, idx);
        } else {
            self.raise(st, Intr::CHANNEL_ERROR, idx);
        }
        if let Some(inst) = inst.filter(|i| i.notifier != 0) {
            let mut note = [0u8; 16];
            note[0..8].copy_from_slice(&now.to_le_bytes());
            note[8..12].copy_from_slice(&(e.code as u32).to_le_bytes());
            note[12..16].copy_from_slice(&e.info.to_le_bytes());
            let written = st
                .mmu
                .translate(&self.mem, inst.pdb, inst.notifier, 16, true)
                .ok()
                .map(|ext| write_extents(&self.mem, &*self.ctx, &ext, &note).is_ok());
            if written != Some(true) {
                tracing::debug!(channel = c, "error notifier not writable");
            }
        }
    }

    // ---- reset ------------------------------------------------------------

    /// Stop everything, drop queued work, wait for in-flight items, and
    /// return registers and channels to reset state. DMA maps, interrupt
    /// eventfds and VRAM contents are kept.
    fn reset_engine(&self) {
        let mut st = self.lock();
        st.generation += 1;
        st.regs.reset();
        st.channels.iter_mut().for_each(|c| *c = Channel::default());
        st.mmu.invalidate();
        st.runlist = None;
        st.stats.resets += 1;
        self.ctx.cancel();
        let every: Vec<(u32, u32)> = (0..st.channels.len() as u32).map(|c| (c, 0)).collect();
        self.ctx.set_runlist(&every);
        while st.outstanding > 0 {
            st = wait(&self.wake, st);
        }
    }

    // ---- the front end ----------------------------------------------------

    fn pfifo(self: Arc<Self>) {
        let mut st = self.lock();
        loop {
            if st.shutdown {
                return;
            }
            if self.step(&mut st) {
                continue;
            }
            let blocked = st.channels.iter().any(|c| c.blocked);
            st = if blocked {
                wait_timeout(&self.wake, st, ACQUIRE_POLL)
            } else {
                wait(&self.wake, st)
            };
        }
    }

    /// The channels that may run, in runlist order.
    fn runnable(st: &State) -> Vec<usize> {
        match &st.runlist {
            Some(rl) => rl.iter().map(|e| e.channel as usize).collect(),
            None => (0..st.channels.len()).collect(),
        }
    }

    /// Give every runnable channel one turn. Returns whether anything moved.
    fn step(self: &Arc<Self>, st: &mut State) -> bool {
        let order = Self::runnable(st);
        if order.is_empty() {
            return false;
        }
        let mut progressed = false;
        let start = st.rr_next % order.len();
        for k in 0..order.len() {
            let idx = order[(start + k) % order.len()];
            progressed |= self.service(st, idx);
        }
        st.rr_next = st.rr_next.wrapping_add(1);
        progressed
    }

    /// Advance one channel as far as it can go without waiting.
    fn service(self: &Arc<Self>, st: &mut State, idx: usize) -> bool {
        let mut progressed = false;
        loop {
            let ch = &st.channels[idx];
            if !ch.enabled || ch.faulted.is_some() {
                return progressed;
            }
            let step = match self.retire(st, idx) {
                Ok(true) => Ok(true),
                Ok(false) if st.channels[idx].queue.is_empty() => self.next_entry(st, idx),
                Ok(false) => self.run_head(st, idx),
                Err(e) => Err(e),
            };
            match step {
                Ok(true) => progressed = true,
                Ok(false) => return progressed,
                Err(e) => {
                    self.fault(st, idx, e);
                    return true;
                }
            }
        }
    }

    /// Retire finished entries: GP_GET moves past every oldest entry whose
    /// commands were all carried out and whose engine items all completed,
    /// and is written back to USERD.
    fn retire(&self, st: &mut State, idx: usize) -> Result<bool, ChannelError> {
        let c = idx as u32;
        let Some(inst) = st.channels[idx].inst else {
            return Ok(false);
        };
        let mut retired = false;
        loop {
            let ch = &mut st.channels[idx];
            // The newest entry is still being carried out while its queue holds commands.
            let done =
                ch.entries.front() == Some(&0) && (ch.entries.len() > 1 || ch.queue.is_empty());
            if !done {
                break;
            }
            ch.entries.pop_front();
            ch.gp_get = (ch.gp_get + 1) % inst.entries;
            retired = true;
        }
        if retired {
            let gp_get = st.channels[idx].gp_get;
            st.regs.set(RegRef::Channel(c, ChannelReg::GpGet), gp_get);
            let userd =
                st.mmu
                    .translate(&self.mem, inst.pdb, inst.userd + USERD_GP_GET, 4, true)?;
            write_extents(&self.mem, &*self.ctx, &userd, &gp_get.to_le_bytes())
                .map_err(|_| chan_err(ErrorCode::SysmemUnmapped, 0))?;
        }
        Ok(retired)
    }

    /// With the queue empty: read GP_PUT if the doorbell rang, then fetch
    /// and audit the next entry. Ok(false) when there is nothing to fetch.
    fn next_entry(&self, st: &mut State, idx: usize) -> Result<bool, ChannelError> {
        let c = idx as u32;
        let Some(inst) = st.channels[idx].inst else {
            return Ok(false);
        };
        let mut progressed = false;
        if st.channels[idx].kicked {
            st.channels[idx].kicked = false;
            let userd =
                st.mmu
                    .translate(&self.mem, inst.pdb, inst.userd + USERD_GP_PUT, 4, false)?;
            let mut b = [0u8; 4];
            read_extents(&self.mem, &*self.ctx, &userd, &mut b)
                .map_err(|_| chan_err(ErrorCode::SysmemUnmapped, 0))?;
            let put = u32::from_le_bytes(b);
            if put >= inst.entries {
                return Err(chan_err(ErrorCode::GpfifoEntryInvalid, put));
            }
            st.channels[idx].gp_put = put;
            st.regs.set(RegRef::Channel(c, ChannelReg::GpPut), put);
            progressed = true;
        }
        let ch = &st.channels[idx];
        let fetch = ch.gp_fetch(inst.entries);
        if fetch == ch.gp_put || ch.entries.len() >= MAX_ENTRIES_AHEAD {
            return Ok(progressed);
        }
        let mut methods = ch.methods;
        let mut space = Space {
            mmu: &mut st.mmu,
            mem: &self.mem,
            ctx: &*self.ctx,
            pdb: inst.pdb,
        };
        let raw = space.read(inst.gpfifo + 8 * fetch as u64, 8)?;
        let entry = GpfifoEntry(u64::from_le_bytes(raw.try_into().unwrap_or([0xFF; 8])));
        if !entry.is_valid() || entry.length() > MAX_SEGMENT_WORDS {
            return Err(chan_err(ErrorCode::GpfifoEntryInvalid, fetch));
        }
        let bytes = space.read(entry.va(), entry.length() * 4)?;
        let words: Vec<u32> = bytes
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let cmds = pushbuf::parse_segment(&words, &mut methods, &mut space)?;
        tracing::trace!(vgpu = %self.cfg.name, channel = c, entry = fetch, commands = cmds.len(), "segment fetched");
        let ch = &mut st.channels[idx];
        ch.methods = methods;
        ch.queue = cmds.into();
        ch.entries.push_back(0);
        Ok(true)
    }

    /// Carry out the command at the head of the queue. Ok(false) when the
    /// channel must wait: its engine pipeline is full, or an acquire waits
    /// for the channel's earlier work or is not yet satisfied. A release or
    /// interrupt behind running work is deferred to that work's completion.
    fn run_head(self: &Arc<Self>, st: &mut State, idx: usize) -> Result<bool, ChannelError> {
        let Some(cmd) = st.channels[idx].queue.front() else {
            return Ok(false);
        };
        let ch = &st.channels[idx];
        match cmd {
            Command::Engine(_) if ch.in_flight >= MAX_CHANNEL_IN_FLIGHT => return Ok(false),
            // A release or interrupt behind running work is carried out when
            // that work completes; the front end goes on meanwhile.
            Command::SemRelease { .. } | Command::Interrupt if ch.engine_busy() => {
                let ch = &mut st.channels[idx];
                let Some(cmd) = ch.queue.pop_front() else {
                    return Ok(false);
                };
                let after = ch.submitted;
                ch.deferred.push_back((after, cmd));
                if let Some(n) = ch.entries.back_mut() {
                    *n += 1;
                }
                return Ok(true);
            }
            // An acquire gates everything after it, and sees the memory
            // every earlier command of the channel has written.
            Command::SemAcquire { .. } if ch.engine_busy() || !ch.deferred.is_empty() => {
                return Ok(false)
            }
            _ => {}
        }
        match cmd {
            Command::Engine(_) => {
                let Some(Command::Engine(op)) = st.channels[idx].queue.pop_front() else {
                    return Ok(false);
                };
                let ch = &mut st.channels[idx];
                ch.in_flight += 1;
                ch.submitted += 1;
                if let Some(n) = ch.entries.back_mut() {
                    *n += 1;
                }
                let (gen, epoch) = (st.generation, ch.epoch);
                st.outstanding += 1;
                let me = self.clone();
                tracing::trace!(vgpu = %self.cfg.name, channel = idx, op = op.name(), "submit");
                // Submitting under the state lock orders this item before
                // any reset; the backend never completes inside submit.
                self.ctx.submit(
                    WorkItem {
                        op,
                        channel: idx as u32,
                        mem: self.mem.clone(),
                    },
                    Box::new(move |c| me.complete(gen, idx, epoch, c)),
                );
                Ok(true)
            }
            Command::SemRelease { .. } | Command::Interrupt => {
                let Some(cmd) = st.channels[idx].queue.pop_front() else {
                    return Ok(false);
                };
                self.host_op(st, idx, &cmd)?;
                Ok(true)
            }
            Command::SemAcquire {
                target,
                payload,
                wide,
                cond,
            } => {
                let n = if *wide { 8 } else { 4 };
                let mut b = [0u8; 8];
                read_extents(&self.mem, &*self.ctx, target, &mut b[..n])
                    .map_err(|e| exec_err(&e, target))?;
                let mem = u64::from_le_bytes(b);
                let ok = match (cond, wide) {
                    (AcquireCond::Equal, _) => mem == *payload,
                    (AcquireCond::GreaterOrEqual, true) => mem.wrapping_sub(*payload) as i64 >= 0,
                    (AcquireCond::GreaterOrEqual, false) => {
                        (mem as u32).wrapping_sub(*payload as u32) as i32 >= 0
                    }
                };
                let ch = &mut st.channels[idx];
                if ok {
                    ch.queue.pop_front();
                    ch.blocked = false;
                    Ok(true)
                } else {
                    ch.blocked = true;
                    Ok(false)
                }
            }
        }
    }

    /// Carry out a semaphore release or an interrupt.
    fn host_op(&self, st: &mut State, idx: usize, cmd: &Command) -> Result<(), ChannelError> {
        match cmd {
            Command::SemRelease {
                target,
                payload,
                size,
                interrupt,
            } => {
                let mut bytes = payload.to_le_bytes().to_vec();
                bytes.truncate((*size).min(8) as usize);
                if *size == 16 {
                    bytes.extend_from_slice(&self.now_ns().to_le_bytes());
                }
                write_extents(&self.mem, &*self.ctx, target, &bytes)
                    .map_err(|e| exec_err(&e, target))?;
                if *interrupt {
                    self.raise(st, Intr::HOST, idx);
                }
                // A release may satisfy another channel's acquire.
                st.channels.iter_mut().for_each(|c| c.blocked = false);
            }
            Command::Interrupt => self.raise(st, Intr::HOST, idx),
            Command::Engine(_) | Command::SemAcquire { .. } => {}
        }
        Ok(())
    }

    /// Carry out the deferred releases and interrupts whose work is done.
    fn run_deferred(&self, st: &mut State, idx: usize) {
        loop {
            let ch = &mut st.channels[idx];
            if ch
                .deferred
                .front()
                .is_none_or(|(after, _)| *after > ch.completed)
            {
                return;
            }
            let Some((_, cmd)) = ch.deferred.pop_front() else {
                return;
            };
            if let Some(n) = ch.entries.iter_mut().find(|n| **n > 0) {
                *n -= 1;
            }
            if let Err(e) = self.host_op(st, idx, &cmd) {
                self.fault(st, idx, e);
                return;
            }
        }
    }

    /// A backend item finished.
    fn complete(&self, gen: u64, idx: usize, epoch: u64, c: Completion) {
        let mut st = self.lock();
        st.outstanding = st.outstanding.saturating_sub(1);
        if st.generation == gen {
            let ch = &mut st.channels[idx];
            ch.in_flight = ch.in_flight.saturating_sub(1);
            if ch.epoch == epoch {
                // Items of a channel complete in the order they were handed
                // over, so this one belongs to the oldest entry still waiting.
                ch.completed += 1;
                if let Some(n) = ch.entries.iter_mut().find(|n| **n > 0) {
                    *n -= 1;
                }
                let ns = c.gpu_time.as_nanos() as u64;
                ch.commands += 1;
                ch.gpu_time_ns += ns;
                st.stats.commands += 1;
                st.stats.gpu_time_ns += ns;
                if let Err(e) = c.result {
                    let code = match e {
                        ExecError::Memory(MemError::ReadOnly { .. }) => ErrorCode::ReadOnly,
                        ExecError::Memory(_) => ErrorCode::SysmemUnmapped,
                        ExecError::VramRange { .. } => ErrorCode::VramRange,
                        ExecError::Cancelled | ExecError::Engine(_) => ErrorCode::EngineError,
                    };
                    tracing::warn!(vgpu = %self.cfg.name, channel = idx, error = %e, "engine item failed");
                    self.fault(&mut st, idx, chan_err(code, 0));
                } else {
                    self.run_deferred(&mut st, idx);
                }
            }
        }
        drop(st);
        self.wake.notify_all();
    }
}

/// Map a failed HOST memory access to a channel error.
fn exec_err(e: &ExecError, target: &[Extent]) -> ChannelError {
    let addr = target.first().map_or(0, |t| t.addr) as u32;
    match e {
        ExecError::Memory(MemError::ReadOnly { .. }) => chan_err(ErrorCode::ReadOnly, addr),
        ExecError::VramRange { .. } => chan_err(ErrorCode::VramRange, addr),
        _ => chan_err(ErrorCode::SysmemUnmapped, addr),
    }
}
