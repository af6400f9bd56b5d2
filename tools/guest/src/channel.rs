//! Channels (ABI §2.2, §3, §4): an instance block, a GPFIFO ring of
//! segment pointers, USERD with the ring's put/get indices, an error
//! notifier, and the pushbuffer segments themselves.
//!
//! Every channel owns one *control page* in system memory: USERD at
//! 0x000, the error notifier at 0x040 and the fence semaphore at 0x080.
//! Each GPFIFO slot owns `segment_bytes` of a pushbuffer area: the
//! segment's words from the front, inline data (parameter blocks) from
//! the back. A slot is reused only after `GP_GET` has passed it.

use std::time::{Duration, Instant};

use crate::device::{Buffer, Device, Placement};
use crate::error::{Error, ErrorCode, Result};
use crate::programs::Program;
use crate::pushbuf::{compute, gpfifo_entry, Pushbuf};
use crate::regs::{self, channel_reg, ChannelState};
use crate::transport::DmaBuffer;

const USERD: usize = 0x000;
const USERD_GP_PUT: usize = USERD;
const USERD_GP_GET: usize = USERD + 4;
const NOTIFIER: usize = 0x040;
const FENCE_SEM: usize = 0x080;

/// How a channel is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelConfig {
    /// GPFIFO ring size: a power of two, 2–32768.
    pub gpfifo_entries: u32,
    /// Pushbuffer bytes per GPFIFO slot (segment words plus inline data).
    pub segment_bytes: u32,
    /// Fence releases raise the `HOST` interrupt (for interrupt waits).
    pub interrupt_fences: bool,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            gpfifo_entries: 64,
            segment_bytes: 16 * 1024,
            interrupt_fences: true,
        }
    }
}

/// How to wait for a fence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitMode {
    /// Poll the semaphore in memory (and the channel status now and then).
    Poll,
    /// Sleep on MSI-X vector 0 between checks (needs `interrupt_fences`).
    Interrupt,
}

/// A point in a channel's submission stream: reached when the channel's
/// fence semaphore has been released with `value` (after all earlier work).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fence {
    pub channel: u32,
    pub value: u32,
}

/// `CH_STATUS` decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelStatus {
    pub state: ChannelState,
    /// The error code when `FAULTED`.
    pub error: Option<ErrorCode>,
}

/// What the device wrote to the error notifier when the channel faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notifier {
    pub timestamp_ns: u64,
    pub code: ErrorCode,
    pub info: u32,
}

/// One channel of a [`Device`].
///
/// ```no_run
/// use vgpu_guest::{Channel, ChannelConfig, Device, Placement, WaitMode};
/// use vgpu_guest::programs::Program;
/// # fn demo(dev: &mut Device) -> vgpu_guest::Result<()> {
/// let mut ch = Channel::new(dev, 0, ChannelConfig::default())?;
/// let buf = dev.alloc(Placement::Sysmem, 4096)?;
/// let f = ch.launch(dev, &Program::Fill { dst: buf.va(), count: 1024, value: 7 })?;
/// ch.wait(dev, f, WaitMode::Interrupt, std::time::Duration::from_secs(5))?;
/// assert_eq!(buf.host()?.read_u32(0)?, 7);
/// # Ok(()) }
/// ```
pub struct Channel {
    id: u32,
    cfg: ChannelConfig,
    inst: DmaBuffer,
    control: Buffer,
    gpfifo: Buffer,
    pushbuf: Buffer,
    put: u32,
    /// The `GP_PUT` last published and rung: entries from here to `put`
    /// are written but not yet rung (a batch being built).
    rung: u32,
    seqno: u32,
    bound: bool,
}

impl Channel {
    /// Build channel `id`'s memory (mapped into the device's address
    /// space), write its instance block and enable it.
    pub fn new(dev: &mut Device, id: u32, cfg: ChannelConfig) -> Result<Channel> {
        if id >= dev.identity().channels {
            return Err(Error::InvalidArgument(format!(
                "channel {id} of {}",
                dev.identity().channels
            )));
        }
        if !cfg.gpfifo_entries.is_power_of_two() || !(2..=32768).contains(&cfg.gpfifo_entries) {
            return Err(Error::InvalidArgument(format!(
                "{} GPFIFO entries",
                cfg.gpfifo_entries
            )));
        }
        if cfg.segment_bytes < 256 || !cfg.segment_bytes.is_multiple_of(16) {
            return Err(Error::InvalidArgument(format!(
                "segment of {} bytes",
                cfg.segment_bytes
            )));
        }
        let inst = dev.dma_alloc(4096)?;
        let control = dev.alloc(Placement::Sysmem, 4096)?;
        let gpfifo = dev.alloc(Placement::Sysmem, cfg.gpfifo_entries as u64 * 8)?;
        let pushbuf = dev.alloc(
            Placement::Sysmem,
            cfg.gpfifo_entries as u64 * cfg.segment_bytes as u64,
        )?;
        let mut ch = Channel {
            id,
            cfg,
            inst,
            control,
            gpfifo,
            pushbuf,
            put: 0,
            rung: 0,
            seqno: 0,
            bound: false,
        };
        // Start from a clean channel whatever its previous user did.
        dev.write32(channel_reg(id, regs::CH_CTRL), regs::CH_CTRL_RESET)?;
        ch.enable(dev)?;
        Ok(ch)
    }

    /// The channel id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Its configuration.
    pub fn config(&self) -> ChannelConfig {
        self.cfg
    }

    /// VA of the channel's fence semaphore (32-bit).
    pub fn fence_va(&self) -> u64 {
        self.control.va() + FENCE_SEM as u64
    }

    fn write_instance(&self, dev: &Device) -> Result<()> {
        let mut b = [0u8; 40];
        b[0..8].copy_from_slice(&dev.pdb().to_le_bytes());
        b[8..16].copy_from_slice(&self.gpfifo.va().to_le_bytes());
        b[16..20].copy_from_slice(&self.cfg.gpfifo_entries.to_le_bytes());
        b[24..32].copy_from_slice(&(self.control.va() + USERD as u64).to_le_bytes());
        b[32..40].copy_from_slice(&(self.control.va() + NOTIFIER as u64).to_le_bytes());
        self.inst.write(0, &b)
    }

    /// Reset ring state, write the instance block and `CH_INST`, set `ENABLE`.
    fn enable(&mut self, dev: &mut Device) -> Result<()> {
        let c = self.control.host()?;
        c.fill(0, 0x80, 0)?;
        self.put = 0;
        self.rung = 0;
        self.bound = false;
        self.write_instance(dev)?;
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        dev.write64(channel_reg(self.id, regs::CH_INST), self.inst.dev_addr(0))?;
        dev.write32(channel_reg(self.id, regs::CH_CTRL), regs::CH_CTRL_ENABLE)?;
        match self.status(dev)? {
            ChannelStatus {
                state: ChannelState::Faulted,
                error,
            } => {
                let info = dev.read32(channel_reg(self.id, regs::CH_ERROR_INFO))?;
                Err(Error::ChannelFault {
                    channel: self.id,
                    code: error.unwrap_or(ErrorCode::Unknown(0)),
                    info,
                })
            }
            _ => Ok(()),
        }
    }

    /// `CH_STATUS`.
    pub fn status(&self, dev: &mut Device) -> Result<ChannelStatus> {
        let s = dev.read32(channel_reg(self.id, regs::CH_STATUS))?;
        let state = ChannelState::from_raw(s);
        let error = (state == ChannelState::Faulted).then(|| ErrorCode::from_raw((s >> 8) as u8));
        Ok(ChannelStatus { state, error })
    }

    /// `Err(ChannelFault)` when the channel has stopped on an error.
    pub fn check(&self, dev: &mut Device) -> Result<()> {
        let s = self.status(dev)?;
        if s.state == ChannelState::Faulted {
            let info = dev.read32(channel_reg(self.id, regs::CH_ERROR_INFO))?;
            return Err(Error::ChannelFault {
                channel: self.id,
                code: s.error.unwrap_or(ErrorCode::Unknown(0)),
                info,
            });
        }
        Ok(())
    }

    /// The error notifier, if the device has written it since the channel
    /// was enabled.
    pub fn notifier(&self) -> Result<Option<Notifier>> {
        let c = self.control.host()?;
        let ts = c.read_u64(NOTIFIER)?;
        let code = c.read_u32(NOTIFIER + 8)?;
        let info = c.read_u32(NOTIFIER + 12)?;
        Ok((ts != 0 || code != 0).then(|| Notifier {
            timestamp_ns: ts,
            code: ErrorCode::from_raw(code as u8),
            info,
        }))
    }

    /// `GP_GET` as the device last wrote it to USERD.
    pub fn gp_get(&self) -> Result<u32> {
        self.control.host()?.read_u32(USERD_GP_GET)
    }

    /// Recover a faulted (or any) channel: `CH_CTRL.RESET`, acknowledge
    /// its interrupt and MMU-fault record, rebuild and enable it. Work that
    /// was queued is lost; fences issued before stay unsignalled.
    pub fn recover(&mut self, dev: &mut Device) -> Result<()> {
        dev.write32(channel_reg(self.id, regs::CH_CTRL), regs::CH_CTRL_RESET)?;
        if let Some(f) = dev.mmu_fault()? {
            if f.channel == self.id {
                dev.clear_mmu_fault()?;
            }
        }
        dev.ack_channel_interrupt(self.id)?;
        self.enable(dev)
    }

    /// Disable the channel: it stops after its running operation and
    /// drops queued work.
    pub fn disable(&mut self, dev: &mut Device) -> Result<()> {
        dev.write32(channel_reg(self.id, regs::CH_CTRL), 0)
    }

    /// Disable the channel and give its memory back.
    pub fn destroy(mut self, dev: &mut Device) -> Result<()> {
        dev.write32(channel_reg(self.id, regs::CH_CTRL), regs::CH_CTRL_RESET)?;
        self.put = 0;
        self.rung = 0;
        dev.free(self.pushbuf)?;
        dev.free(self.gpfifo)?;
        dev.free(self.control)?;
        dev.dma_free(self.inst);
        Ok(())
    }

    fn ring_full(&self) -> Result<bool> {
        Ok((self.put + 1) % self.cfg.gpfifo_entries == self.gp_get()?)
    }

    /// Publish `GP_PUT` and ring the doorbell for every entry queued since
    /// the last ring (ABI §4.1; with the doorbell page, §4.5: a store, and a
    /// trapped write only when the device is not polling). Nothing to do
    /// when nothing is queued.
    pub fn ring(&mut self, dev: &mut Device) -> Result<()> {
        if self.rung == self.put {
            return Ok(());
        }
        // Segments and entries must be visible before GP_PUT, and GP_PUT
        // before the doorbell.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.control.host()?.write_u32(USERD_GP_PUT, self.put)?;
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        dev.ring(self.id, self.put)?;
        self.rung = self.put;
        Ok(())
    }

    /// Start a segment in the next GPFIFO slot, waiting (up to `timeout`)
    /// for the ring to have room (entries queued and not yet rung are rung
    /// first, or the ring would never drain).
    pub fn segment(&mut self, dev: &mut Device, timeout: Duration) -> Result<Segment<'_>> {
        let start = Instant::now();
        let mut spins = 0u32;
        if self.ring_full()? {
            self.ring(dev)?;
        }
        while self.ring_full()? {
            spins += 1;
            if spins.is_multiple_of(64) {
                self.check(dev)?;
            }
            if start.elapsed() > timeout {
                return Err(Error::Timeout {
                    what: format!("room in channel {}'s GPFIFO", self.id),
                    after: timeout,
                });
            }
            if spins > 1000 {
                std::thread::sleep(Duration::from_micros(50));
            } else {
                std::hint::spin_loop();
            }
        }
        let top = self.cfg.segment_bytes;
        Ok(Segment {
            ch: self,
            pb: Pushbuf::new(),
            data_low: top,
        })
    }

    /// Submit `pb` as one segment (with a fence appended).
    pub fn submit(&mut self, dev: &mut Device, pb: &Pushbuf) -> Result<Fence> {
        let mut seg = self.segment(dev, Duration::from_secs(10))?;
        if let Some(e) = pb.error() {
            return Err(Error::InvalidArgument(format!("pushbuffer: {e}")));
        }
        seg.pb.raw(pb.words());
        seg.submit(dev)
    }

    /// Launch a built-in program (parameter block carried inline).
    pub fn launch(&mut self, dev: &mut Device, prog: &Program) -> Result<Fence> {
        let mut seg = self.segment(dev, Duration::from_secs(10))?;
        seg.launch(prog)?;
        seg.submit(dev)
    }

    /// Queue a launch of a built-in program without ringing: a batch of
    /// entries goes to the device with one [`Channel::ring`].
    ///
    /// ```no_run
    /// # use vgpu_guest::{Channel, Device};
    /// # use vgpu_guest::programs::Program;
    /// # fn demo(dev: &mut Device, ch: &mut Channel, prog: &Program) -> vgpu_guest::Result<()> {
    /// let fences = (0..8).map(|_| ch.queue_launch(dev, prog)).collect::<Result<Vec<_>, _>>()?;
    /// ch.ring(dev)?;
    /// # Ok(()) }
    /// ```
    pub fn queue_launch(&mut self, dev: &mut Device, prog: &Program) -> Result<Fence> {
        let mut seg = self.segment(dev, Duration::from_secs(10))?;
        seg.launch(prog)?;
        seg.queue()
    }

    /// Whether `fence` has been reached.
    pub fn reached(&self, fence: Fence) -> Result<bool> {
        let v = self.control.host()?.read_u32(FENCE_SEM)?;
        Ok(v.wrapping_sub(fence.value) as i32 >= 0)
    }

    /// Wait for `fence`, up to `timeout`. A fault of the channel ends the
    /// wait with [`Error::ChannelFault`].
    pub fn wait(
        &self,
        dev: &mut Device,
        fence: Fence,
        mode: WaitMode,
        timeout: Duration,
    ) -> Result<()> {
        if fence.channel != self.id {
            return Err(Error::InvalidArgument(format!(
                "fence of channel {} waited on channel {}",
                fence.channel, self.id
            )));
        }
        let start = Instant::now();
        let mut last_check = Instant::now();
        loop {
            if self.reached(fence)? {
                return Ok(());
            }
            let elapsed = start.elapsed();
            if elapsed > timeout {
                self.check(dev)?;
                return Err(Error::Timeout {
                    what: format!("fence {} of channel {}", fence.value, self.id),
                    after: timeout,
                });
            }
            match mode {
                WaitMode::Poll => {
                    if last_check.elapsed() > Duration::from_millis(2) {
                        self.check(dev)?;
                        last_check = Instant::now();
                    }
                    if elapsed > Duration::from_millis(1) {
                        std::thread::sleep(Duration::from_micros(20));
                    } else {
                        std::hint::spin_loop();
                    }
                }
                WaitMode::Interrupt => {
                    // Faults raise MMU_FAULT / CHANNEL_ERROR, so a check after
                    // every wake-up catches them; the cap bounds a lost message.
                    let slice = (timeout - elapsed).min(Duration::from_millis(100));
                    if dev.wait_interrupt(slice)? {
                        let i = dev.take_interrupts()?;
                        if i.channels & (1 << self.id) != 0
                            && i.causes & (regs::INTR_MMU_FAULT | regs::INTR_CHANNEL_ERROR) != 0
                        {
                            self.check(dev)?;
                        }
                    } else {
                        self.check(dev)?;
                    }
                }
            }
        }
    }

    /// Copy `data` into `dst` at `offset` (any placement), through a
    /// staging buffer and the COPY engine for VRAM.
    pub fn upload(
        &mut self,
        dev: &mut Device,
        dst: &Buffer,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        check_range(dst, offset, data.len() as u64)?;
        if let Some(h) = dst.cpu() {
            return h.write(offset as usize, data);
        }
        let staging = dev.alloc(Placement::Sysmem, data.len() as u64)?;
        let r = staging
            .host()
            .and_then(|h| h.write(0, data))
            .and_then(|_| self.copy_sync(dev, staging.va(), dst.va() + offset, data.len() as u64));
        dev.free(staging)?;
        r
    }

    /// Read `len` bytes of `src` at `offset` (any placement).
    pub fn download(
        &mut self,
        dev: &mut Device,
        src: &Buffer,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>> {
        check_range(src, offset, len)?;
        let mut out = vec![0u8; len as usize];
        if let Some(h) = src.cpu() {
            h.read(offset as usize, &mut out)?;
            return Ok(out);
        }
        let staging = dev.alloc(Placement::Sysmem, len)?;
        let r = self
            .copy_sync(dev, src.va() + offset, staging.va(), len)
            .and_then(|_| staging.host()?.read(0, &mut out));
        dev.free(staging)?;
        r.map(|_| out)
    }

    fn copy_sync(&mut self, dev: &mut Device, src: u64, dst: u64, len: u64) -> Result<()> {
        let mut pb = Pushbuf::new();
        let mut off = 0;
        while off < len {
            let n = (len - off).min(crate::pushbuf::copy::MAX_BYTES);
            pb.copy_1d(src + off, dst + off, n as u32);
            off += n;
        }
        let f = self.submit(dev, &pb)?;
        self.wait(dev, f, WaitMode::Poll, Duration::from_secs(30))
    }

    /// Load PTX `text` into module `slot` and wait for it; returns the
    /// JIT's info log. The JIT writes its log (NUL-terminated, truncated)
    /// into a [`MODULE_LOG_BYTES`] system-memory buffer set through
    /// `MODULE_LOG_*`. When the JIT rejects the text the channel stops with
    /// `MODULE_INVALID`: the channel is then recovered and the error log
    /// returned as [`Error::ModuleInvalid`]. Module slots belong to the
    /// vGPU (shared by its channels); a module stays loaded until its slot
    /// is loaded again or the engine context is lost (`KERNEL_FAULT`).
    /// Devices without `CAPS.PTX` (the cpu engine) get
    /// [`Error::Unsupported`] without touching the channel.
    pub fn load_ptx(&mut self, dev: &mut Device, slot: u32, text: &str) -> Result<String> {
        if !dev.identity().ptx() {
            return Err(Error::Unsupported("PTX (CAPS.PTX = 0)"));
        }
        if slot >= compute::PTX_SLOTS
            || text.is_empty()
            || text.len() > compute::MAX_MODULE_BYTES as usize
        {
            return Err(Error::InvalidArgument(format!(
                "PTX slot {slot}, {} bytes",
                text.len()
            )));
        }
        let buf = dev.alloc(Placement::Sysmem, text.len() as u64)?;
        let log = match dev.alloc(Placement::Sysmem, MODULE_LOG_BYTES as u64) {
            Ok(l) => l,
            Err(e) => {
                dev.free(buf)?;
                return Err(e);
            }
        };
        let r = (|| {
            buf.host()?.write(0, text.as_bytes())?;
            log.host()?.fill(0, MODULE_LOG_BYTES as usize, 0)?;
            let mut pb = Pushbuf::new();
            pb.module_load_logged(
                slot,
                buf.va(),
                text.len() as u32,
                log.va(),
                MODULE_LOG_BYTES,
            );
            let f = self.submit(dev, &pb)?;
            self.wait(dev, f, WaitMode::Poll, Duration::from_secs(60))
        })();
        let text_log = read_log(&log);
        let r = match r {
            Ok(()) => text_log,
            Err(Error::ChannelFault {
                code: ErrorCode::ModuleInvalid,
                info,
                ..
            }) => {
                let log = text_log.unwrap_or_else(|e| format!("(log unreadable: {e})"));
                match self.recover(dev) {
                    Ok(()) => Err(Error::ModuleInvalid {
                        channel: self.id,
                        info,
                        log,
                    }),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        dev.free(log)?;
        dev.free(buf)?;
        r
    }

    /// Launch function `name` of PTX module `slot` with parameter block
    /// `params` (carried inline) on `grid` × `block` threads.
    pub fn launch_ptx(
        &mut self,
        dev: &mut Device,
        slot: u32,
        name: &str,
        grid: [u32; 3],
        block: [u32; 3],
        params: &[u8],
    ) -> Result<Fence> {
        if !dev.identity().ptx() {
            return Err(Error::Unsupported("PTX (CAPS.PTX = 0)"));
        }
        if slot >= compute::PTX_SLOTS
            || name.is_empty()
            || name.len() > compute::MAX_FUNC_NAME as usize
            || params.len() > compute::MAX_PARAMS as usize
        {
            return Err(Error::InvalidArgument(format!(
                "PTX slot {slot}, function name of {} bytes, {} parameter bytes",
                name.len(),
                params.len()
            )));
        }
        let mut seg = self.segment(dev, Duration::from_secs(10))?;
        let name_va = seg.inline(name.as_bytes())?;
        let params_va = seg.inline(params)?;
        seg.pb.launch_ptx(
            slot,
            name_va,
            name.len() as u32,
            grid,
            block,
            params_va,
            params.len() as u32,
        );
        seg.submit(dev)
    }
}

/// Bytes of the JIT log buffer [`Channel::load_ptx`] passes.
pub const MODULE_LOG_BYTES: u32 = 16 * 1024;

/// The NUL-terminated log the JIT wrote into `log` (lossy UTF-8).
fn read_log(log: &Buffer) -> Result<String> {
    let mut b = vec![0u8; log.len() as usize];
    log.host()?.read(0, &mut b)?;
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    Ok(String::from_utf8_lossy(&b[..end]).into_owned())
}

fn check_range(b: &Buffer, offset: u64, len: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= b.len() => Ok(()),
        _ => Err(Error::InvalidArgument(format!(
            "{offset:#x}+{len:#x} past a {:#x}-byte buffer",
            b.len()
        ))),
    }
}

/// A segment being built in a GPFIFO slot. Inline data (parameter blocks,
/// names) goes into the slot's memory and is addressed by VA.
pub struct Segment<'a> {
    ch: &'a mut Channel,
    /// The segment's methods.
    pub pb: Pushbuf,
    /// Lowest byte of the slot used by inline data.
    data_low: u32,
}

impl<'a> Segment<'a> {
    fn slot_offset(&self) -> u64 {
        self.ch.put as u64 * self.ch.cfg.segment_bytes as u64
    }

    /// Copy `data` into the slot (16-byte aligned) and return its VA.
    pub fn inline(&mut self, data: &[u8]) -> Result<u64> {
        let need = (data.len() as u32).div_ceil(16) * 16;
        if need >= self.data_low {
            return Err(Error::OutOfMemory {
                what: "segment inline data",
                bytes: data.len() as u64,
            });
        }
        self.data_low -= need;
        let off = self.slot_offset() + self.data_low as u64;
        self.ch.pushbuf.host()?.write(off as usize, data)?;
        Ok(self.ch.pushbuf.va() + off)
    }

    /// Append a built-in program launch with its parameter block inline.
    pub fn launch(&mut self, prog: &Program) -> Result<&mut Self> {
        let params = prog.params();
        let va = self.inline(&params)?;
        self.pb.launch(prog.id(), va, params.len() as u32);
        Ok(self)
    }

    /// Append the fence release, write the segment and its GPFIFO entry,
    /// publish `GP_PUT` in USERD and ring the doorbell.
    pub fn submit(self, dev: &mut Device) -> Result<Fence> {
        let (fence, ch) = self.write_entry()?;
        ch.ring(dev)?;
        Ok(fence)
    }

    /// Append the fence release and write the segment and its GPFIFO
    /// entry, without ringing: [`Channel::ring`] sends the batch.
    pub fn queue(self) -> Result<Fence> {
        self.write_entry().map(|(fence, _)| fence)
    }

    fn write_entry(self) -> Result<(Fence, &'a mut Channel)> {
        let Segment { ch, pb, data_low } = self;
        if let Some(e) = pb.error() {
            return Err(Error::InvalidArgument(format!("pushbuffer: {e}")));
        }
        let value = ch.seqno.wrapping_add(1);
        let fence_va = ch.fence_va();
        let mut words = Vec::with_capacity(pb.len() + 16);
        if !ch.bound {
            let mut b = Pushbuf::new();
            b.bind_classes();
            words.extend_from_slice(b.words());
        }
        words.extend_from_slice(pb.words());
        let mut tail = Pushbuf::new();
        tail.sem_release(fence_va, value, ch.cfg.interrupt_fences);
        words.extend_from_slice(tail.words());
        let bytes = words.len() as u64 * 4;
        if bytes > data_low as u64 {
            return Err(Error::OutOfMemory {
                what: "segment space",
                bytes,
            });
        }
        let slot_off = ch.put as u64 * ch.cfg.segment_bytes as u64;
        let raw: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        ch.pushbuf.host()?.write(slot_off as usize, &raw)?;
        let entry = gpfifo_entry(ch.pushbuf.va() + slot_off, words.len() as u64)?;
        ch.gpfifo.host()?.write_u64(ch.put as usize * 8, entry)?;
        ch.put = (ch.put + 1) % ch.cfg.gpfifo_entries;
        ch.seqno = value;
        ch.bound = true;
        let fence = Fence {
            channel: ch.id,
            value,
        };
        Ok((fence, ch))
    }
}
