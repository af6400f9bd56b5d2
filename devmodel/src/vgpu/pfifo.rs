//! The front end (PFIFO): for each runnable channel, in runlist order, it
//! retires finished GPFIFO entries (GP_GET, in the register and USERD),
//! reads GP_PUT after a doorbell, fetches and audits the next entries'
//! pushbuffer segments, carries out HOST commands (semaphores, interrupts)
//! and hands engine operations to the backend. Completions come back from
//! the backend's threads through [`Core::complete`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mmio::regs::{ChannelId, ChannelReg, ErrorCode, Intr};
use mmio::RegRef;

use super::{ChannelError, Core, State};
use crate::backend::{Completion, EngineContext, ExecError, WorkItem};
use crate::channel::{
    GpfifoEntry, HeadAction, MAX_VGPU_DECODED_BYTES, MAX_VGPU_IN_FLIGHT, USERD_GP_GET, USERD_GP_PUT,
};
use crate::command::{AcquireCond, Command};
use crate::gmmu::{Aperture, Extent, Fault, Gmmu, KernelMap};
use crate::memory::GuestRam;
use crate::pushbuf::{self, AddressSpace};
use crate::sync::{wait, wait_timeout};

/// How often a channel blocked on a semaphore acquire re-reads memory.
const ACQUIRE_POLL: Duration = Duration::from_millis(1);
/// How often the front end looks at the doorbell page while it waits for
/// the engine (it spins only when nothing of its vGPU is at the engine).
const BUSY_POLL: Duration = Duration::from_micros(50);
/// Longest pushbuffer segment (words) the front end accepts.
pub const MAX_SEGMENT_WORDS: u32 = 1 << 22;

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
    fn runs_ptx(&self) -> bool {
        self.ctx.ptx_va_base().is_some()
    }
    fn kernel_map(&mut self) -> Option<Arc<KernelMap>> {
        self.runs_ptx()
            .then(|| self.mmu.kernel_map(self.mem, self.pdb))
    }
}

/// Copy the bytes behind `ext` (VRAM or guest RAM) into `out`.
pub(super) fn read_extents(
    mem: &GuestRam,
    ctx: &dyn EngineContext,
    ext: &[Extent],
    out: &mut [u8],
) -> Result<(), ExecError> {
    let mut rest = out;
    for e in ext {
        let (dst, tail) = rest.split_at_mut((e.len as usize).min(rest.len()));
        match e.aperture {
            Aperture::Vram => ctx.read_vram(e.addr, dst)?,
            Aperture::Sysmem => mem.read(e.addr, dst)?,
        }
        rest = tail;
    }
    Ok(())
}

/// Copy `data` to the bytes behind `ext` (VRAM or guest RAM).
pub(super) fn write_extents(
    mem: &GuestRam,
    ctx: &dyn EngineContext,
    ext: &[Extent],
    data: &[u8],
) -> Result<(), ExecError> {
    let mut rest = data;
    for e in ext {
        let (src, tail) = rest.split_at((e.len as usize).min(rest.len()));
        match e.aperture {
            Aperture::Vram => ctx.write_vram(e.addr, src)?,
            Aperture::Sysmem => mem.write(e.addr, src)?,
        }
        rest = tail;
    }
    Ok(())
}

/// The channel error of a failed HOST memory access at `target`.
fn access_error(e: &ExecError, target: &[Extent]) -> ChannelError {
    let addr = target.first().map_or(0, |t| t.addr) as u32;
    ChannelError::new(ErrorCode::from(e), addr)
}

impl Core {
    /// The front-end thread: serve channels until nothing moves; keep
    /// polling the doorbell page for the poll window after the last work;
    /// then stop publishing `POLLING` and sleep until a trapped doorbell, a
    /// completion or a register write wakes it (or, with an acquire waiting,
    /// until the next look at its semaphore).
    pub(super) fn pfifo(self: Arc<Self>) {
        let _span = self.span.enter();
        let mut st = self.lock();
        let mut poll_until = Instant::now();
        loop {
            if st.shutdown {
                return;
            }
            self.nudged.store(false, Ordering::Relaxed);
            let rung = self.doorbell.take_rung(|ch| st.channel(ch).ring());
            st.stats.doorbells_polled += rung;
            if self.step(&mut st) || rung > 0 {
                let window = Duration::from_nanos(self.poll_window_ns.load(Ordering::Relaxed));
                poll_until = Instant::now() + window;
                continue;
            }
            if Instant::now() < poll_until {
                // With items at the engine a completion wakes the front end
                // soon anyway: look at the page every BUSY_POLL meanwhile
                // rather than spin. With none, spin: a doorbell now is the
                // one a waiting driver's next work depends on.
                if st.outstanding > 0 {
                    st = wait_timeout(&self.wake, st, BUSY_POLL);
                } else {
                    drop(st);
                    self.spin(poll_until);
                    st = self.lock();
                }
                continue;
            }
            let rung = self.doorbell.sleep(|ch| st.channel(ch).ring());
            if rung > 0 {
                st.stats.doorbells_polled += rung;
                continue;
            }
            st = if st.channels.iter().any(|c| c.is_blocked()) {
                wait_timeout(&self.wake, st, ACQUIRE_POLL)
            } else {
                wait(&self.wake, st)
            };
            self.doorbell.set_polling();
        }
    }

    /// Poll without the state lock until a doorbell page store, a wake-up
    /// or `deadline`.
    fn spin(&self, deadline: Instant) {
        let mut turns = 0u32;
        while !self.nudged.load(Ordering::Acquire) && !self.doorbell.changed() {
            turns = turns.wrapping_add(1);
            if turns.is_multiple_of(32) && Instant::now() >= deadline {
                return;
            }
            std::hint::spin_loop();
        }
    }

    /// The channels that may run, in runlist order.
    fn runnable(st: &State) -> Vec<ChannelId> {
        match &st.runlist {
            Some(rl) => rl.iter().map(|e| e.channel).collect(),
            None => (0..st.channels.len() as u32).map(ChannelId).collect(),
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
            progressed |= self.service(st, order[(start + k) % order.len()]);
        }
        st.rr_next = st.rr_next.wrapping_add(1);
        progressed
    }

    /// Advance one channel as far as it can go without waiting.
    fn service(self: &Arc<Self>, st: &mut State, ch: ChannelId) -> bool {
        if !st.channel(ch).is_active() {
            return false;
        }
        // ~30 ns with a subscriber on: paid only by channels that run.
        let _span = self.channel_spans.get(ch.index()).map(|s| s.enter());
        let mut progressed = false;
        loop {
            if !st.channel(ch).is_active() {
                return progressed;
            }
            let step = match self.retire(st, ch) {
                Ok(true) => Ok(true),
                Ok(false) if st.channel(ch).wants_entry() => self.next_entry(st, ch),
                Ok(false) => self.run_head(st, ch),
                Err(e) => Err(e),
            };
            match step {
                Ok(true) => progressed = true,
                Ok(false) => return progressed,
                Err(e) => {
                    self.fault(st, ch, e);
                    return true;
                }
            }
        }
    }

    /// Retire finished entries and write the new GP_GET back to USERD.
    fn retire(&self, st: &mut State, ch: ChannelId) -> Result<bool, ChannelError> {
        let c = st.channel(ch);
        let Some(inst) = c.instance() else {
            return Ok(false);
        };
        let Some(gp_get) = c.retire() else {
            return Ok(false);
        };
        st.regs.set(RegRef::Channel(ch, ChannelReg::GpGet), gp_get);
        let userd = st
            .mmu
            .translate(&self.mem, inst.pdb, inst.userd + USERD_GP_GET, 4, true)?;
        write_extents(&self.mem, &*self.ctx, &userd, &gp_get.to_le_bytes())
            .map_err(|_| ChannelError::new(ErrorCode::SysmemUnmapped, 0))?;
        Ok(true)
    }

    /// With the queue empty: read GP_PUT if the doorbell rang, then fetch
    /// and audit the next entry. Ok(false) when there is nothing to fetch.
    fn next_entry(&self, st: &mut State, ch: ChannelId) -> Result<bool, ChannelError> {
        let Some(inst) = st.channel(ch).instance() else {
            return Ok(false);
        };
        let mut progressed = false;
        if st.channel(ch).take_doorbell() {
            let userd =
                st.mmu
                    .translate(&self.mem, inst.pdb, inst.userd + USERD_GP_PUT, 4, false)?;
            let mut b = [0u8; 4];
            read_extents(&self.mem, &*self.ctx, &userd, &mut b)
                .map_err(|_| ChannelError::new(ErrorCode::SysmemUnmapped, 0))?;
            let put = u32::from_le_bytes(b);
            if put >= inst.ring_entries {
                return Err(ChannelError::new(ErrorCode::GpfifoEntryInvalid, put));
            }
            st.channel(ch).set_gp_put(put);
            st.regs.set(RegRef::Channel(ch, ChannelReg::GpPut), put);
            progressed = true;
        }
        let Some(slot) = st.channel(ch).next_slot() else {
            return Ok(progressed);
        };
        let held: u64 = st.channels.iter().map(|c| c.held_bytes()).sum();
        if held >= MAX_VGPU_DECODED_BYTES {
            // Fetched on once the other channels have carried out theirs.
            return Ok(progressed);
        }
        let started = crate::thread::cpu_time();
        let mut methods = st.channel(ch).methods();
        let mut space = Space {
            mmu: &mut st.mmu,
            mem: &self.mem,
            ctx: &*self.ctx,
            pdb: inst.pdb,
        };
        let raw = space.read(inst.gpfifo + 8 * slot as u64, 8)?;
        let entry = GpfifoEntry(u64::from_le_bytes(raw.try_into().unwrap_or([0xFF; 8])));
        if !entry.is_valid() || entry.length() > MAX_SEGMENT_WORDS {
            return Err(ChannelError::new(ErrorCode::GpfifoEntryInvalid, slot));
        }
        let bytes = space.read(entry.va(), entry.length() * 4)?;
        let words: Vec<u32> = bytes
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let cmds = pushbuf::parse_segment(&words, &mut methods, &mut space)?;
        tracing::trace!(vgpu = %self.cfg.name, channel = %ch, entry = slot, commands = cmds.len(), "segment fetched");
        let c = st.channel(ch);
        c.push_entry(methods, cmds);
        c.add_cost(crate::thread::cpu_time().saturating_sub(started));
        Ok(true)
    }

    /// Carry out the command at the head of the queue, as far as the
    /// channel's [`HeadAction`] allows. Ok(false) when it must wait.
    fn run_head(self: &Arc<Self>, st: &mut State, ch: ChannelId) -> Result<bool, ChannelError> {
        match st.channel(ch).head_action() {
            HeadAction::Empty | HeadAction::Wait => Ok(false),
            HeadAction::Defer => {
                st.channel(ch).defer_head();
                Ok(true)
            }
            // The vGPU's other channels hold its share of the engine's
            // queue: this one goes on at their next completion.
            HeadAction::Submit if st.outstanding >= MAX_VGPU_IN_FLIGHT => Ok(false),
            HeadAction::Submit => {
                let Some((op, epoch, front_end, commands)) =
                    st.channel(ch).submit_head(self.ctx.piece_bytes())
                else {
                    return Ok(false);
                };
                let gen = st.generation;
                st.outstanding += 1;
                let me = self.clone();
                tracing::trace!(vgpu = %self.cfg.name, channel = %ch, op = op.name(), "submit");
                // Submitting under the state lock orders this item before
                // any reset; the backend never completes inside submit.
                self.ctx.submit(
                    WorkItem {
                        op,
                        channel: ch.0,
                        mem: self.mem.clone(),
                        front_end,
                    },
                    Box::new(move |done| me.complete(gen, ch, epoch, commands, done)),
                );
                Ok(true)
            }
            HeadAction::RunNow => {
                let Some(cmd) = st.channel(ch).pop_head() else {
                    return Ok(false);
                };
                self.host_op(st, ch, &cmd)?;
                Ok(true)
            }
            HeadAction::Poll => {
                let satisfied = match st.channel(ch).head() {
                    Some(Command::SemAcquire {
                        target,
                        payload,
                        wide,
                        cond,
                    }) => self.acquire_satisfied(target, *payload, *wide, *cond)?,
                    _ => return Ok(false),
                };
                let c = st.channel(ch);
                if satisfied {
                    c.pop_head();
                }
                let waited = c.set_blocked(!satisfied, Instant::now());
                let limit = Duration::from_nanos(self.acquire_timeout_ns.load(Ordering::Relaxed));
                if waited > limit {
                    return Err(ChannelError::new(ErrorCode::SemaphoreTimeout, 0));
                }
                Ok(satisfied)
            }
        }
    }

    /// Read a semaphore and compare it with an acquire's payload.
    fn acquire_satisfied(
        &self,
        target: &[Extent],
        payload: u64,
        wide: bool,
        cond: AcquireCond,
    ) -> Result<bool, ChannelError> {
        let n = if wide { 8 } else { 4 };
        let mut b = [0u8; 8];
        read_extents(&self.mem, &*self.ctx, target, &mut b[..n])
            .map_err(|e| access_error(&e, target))?;
        let mem = u64::from_le_bytes(b);
        Ok(match (cond, wide) {
            (AcquireCond::Equal, _) => mem == payload,
            (AcquireCond::GreaterOrEqual, true) => mem.wrapping_sub(payload) as i64 >= 0,
            (AcquireCond::GreaterOrEqual, false) => {
                (mem as u32).wrapping_sub(payload as u32) as i32 >= 0
            }
        })
    }

    /// Carry out a semaphore release or an interrupt.
    fn host_op(&self, st: &mut State, ch: ChannelId, cmd: &Command) -> Result<(), ChannelError> {
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
                    .map_err(|e| access_error(&e, target))?;
                if *interrupt {
                    self.raise(st, Intr::HOST, ch);
                }
                // A release may satisfy another channel's acquire.
                st.channels.iter_mut().for_each(|c| c.recheck_acquire());
            }
            Command::Interrupt => self.raise(st, Intr::HOST, ch),
            Command::Engine(_) | Command::SemAcquire { .. } => {}
        }
        Ok(())
    }

    /// Carry out the deferred releases and interrupts whose work is done.
    fn run_deferred(&self, st: &mut State, ch: ChannelId) {
        while let Some(cmd) = st.channel(ch).take_ready_deferred() {
            if let Err(e) = self.host_op(st, ch, &cmd) {
                self.fault(st, ch, e);
                return;
            }
        }
    }

    /// A backend item of channel `ch`, handed over in engine generation
    /// `gen` and channel epoch `epoch`, finished.
    /// It carried out `commands` commands (a batch's).
    fn complete(&self, gen: u64, ch: ChannelId, epoch: u64, commands: u64, done: Completion) {
        // On the engine's thread: the channel's span (a child of the vGPU's).
        let _span = self.channel_spans.get(ch.index()).map(|s| s.enter());
        let mut st = self.lock();
        st.outstanding = st.outstanding.saturating_sub(1);
        if st.generation == gen && st.channel(ch).item_done(epoch) {
            let ns = done.gpu_time.as_nanos() as u64;
            st.stats.commands += commands;
            st.stats.gpu_time_ns += ns;
            match &done.result {
                Err(e) => {
                    tracing::warn!(vgpu = %self.cfg.name, channel = %ch, error = %crate::Chain(e), "engine item failed");
                    self.fault(&mut st, ch, ChannelError::new(ErrorCode::from(e), e.info()));
                }
                Ok(()) => self.run_deferred(&mut st, ch),
            }
        }
        drop(st);
        self.kick();
    }
}
