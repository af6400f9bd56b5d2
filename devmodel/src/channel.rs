//! Channels: the instance block, the GPFIFO ring, USERD and per-channel state.
//!
//! A channel is one stream of work. Its *instance block* (guest RAM, by
//! GPA) names the page directory of its address space, its GPFIFO ring,
//! its USERD page and its error notifier. The driver appends 8-byte GPFIFO
//! entries, each pointing at a pushbuffer segment, stores the new `GP_PUT`
//! in USERD and rings the doorbell. The channel fetches entries in order,
//! runs each segment to completion and then advances `GP_GET` (in its
//! register and in USERD).

use std::collections::VecDeque;

use bitfield::bitfield;
use mmio::regs::{ChannelState, ErrorCode};

use crate::classes::MethodState;
use crate::command::{Command, Op, MAX_BATCH_OPS, PIECE_BYTES, PIECE_EXTENTS};
use crate::gmmu::{Extent, VA_BITS};
use crate::memory::GuestRam;

/// Instance block field offsets.
pub const INST_PDB: u64 = 0x00;
pub const INST_GPFIFO_VA: u64 = 0x08;
pub const INST_GPFIFO_ENTRIES: u64 = 0x10;
pub const INST_USERD_VA: u64 = 0x18;
pub const INST_NOTIFIER_VA: u64 = 0x20;
/// Bytes of the instance block the device reads.
pub const INST_SIZE: usize = 0x28;
/// USERD field offsets.
pub const USERD_GP_PUT: u64 = 0x00;
pub const USERD_GP_GET: u64 = 0x04;
pub const USERD_SIZE: u64 = 0x40;
/// Error notifier size: timestamp (u64), error code (u32), info (u32).
pub const NOTIFIER_SIZE: u64 = 16;
/// Largest GPFIFO ring.
pub const MAX_GPFIFO_ENTRIES: u32 = 1 << 15;
/// Engine items one channel may have handed to the engine and not yet
/// seen complete: deep enough for the host scheduler to see its backlog,
/// and for a GPU fed by one channel to stay busy across the round trip of
/// a completion to the driver and its next submission back (64 of 10 µs
/// kernels are about 0.8 ms of work). With 16, a lone one-channel vGPU got
/// 0.59 of one H100 host against 0.77 with four channels, and two busy
/// vGPUs of 50 µs kernels 0.83 of one alone on another (0.93 with 64).
pub const MAX_CHANNEL_IN_FLIGHT: u32 = 64;
/// Engine items all channels of one vGPU may have handed to the engine and
/// not yet seen complete: four channels' worth. It bounds the host memory a
/// vGPU's queued items take (each at most a piece: a few thousand ranges),
/// whatever number of channels its driver keeps busy.
pub const MAX_VGPU_IN_FLIGHT: u32 = 4 * MAX_CHANNEL_IN_FLIGHT;
/// GPFIFO entries fetched ahead of GP_GET: as many as items in flight, so
/// that a driver that puts one command per entry fills the pipeline.
pub const MAX_ENTRIES_AHEAD: usize = MAX_CHANNEL_IN_FLIGHT as usize;
/// Decoded commands a vGPU's channels may hold, not yet carried out: a
/// channel fetches its next entry only while its vGPU holds less (so the
/// most is this plus one entry, itself bounded by the segment limits of
/// `pushbuf`: at most about 30 MiB).
pub const MAX_VGPU_DECODED_BYTES: u64 = 64 << 20;

/// Host memory decoded commands take: each command and each extent it
/// names.
pub fn decoded_bytes(commands: &[Command]) -> u64 {
    let extents: usize = commands.iter().map(Command::extent_count).sum();
    (std::mem::size_of_val(commands) + extents * std::mem::size_of::<Extent>()) as u64
}

bitfield! {
    /// A GPFIFO entry (64 bits, little-endian).
    #[derive(Clone, Copy, PartialEq, Eq)]
    pub struct GpfifoEntry(pub u64);
    impl Debug;
    /// Must be zero (segments are 4-byte aligned).
    pub u8, align, _: 1, 0;
    /// Bits 38:2 of the segment's GPU VA.
    pub u64, va_dw, set_va_dw: 38, 2;
    /// Reserved, must be zero.
    pub reserved_lo, _: 39;
    /// Segment length in 32-bit words.
    pub u32, length, set_length: 61, 40;
    /// Reserved, must be zero.
    pub u8, reserved_hi, _: 63, 62;
}

impl GpfifoEntry {
    /// Build an entry (for drivers and tests).
    pub fn new(va: u64, words: u32) -> Self {
        let mut e = GpfifoEntry(0);
        e.set_va_dw(va >> 2);
        e.set_length(words);
        e
    }
    pub fn va(&self) -> u64 {
        self.va_dw() << 2
    }
    /// The entry uses only defined bits.
    pub fn is_valid(&self) -> bool {
        self.align() == 0 && !self.reserved_lo() && self.reserved_hi() == 0
    }
}

/// The instance block as read when the channel is enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Instance {
    pub pdb: u64,
    pub gpfifo: u64,
    /// Size of the GPFIFO ring, in entries (a power of two).
    pub ring_entries: u32,
    pub userd: u64,
    pub notifier: u64,
}

impl Instance {
    /// Read and validate an instance block at `gpa`.
    pub fn read(mem: &GuestRam, gpa: u64) -> Result<Instance, ErrorCode> {
        let mut b = [0u8; INST_SIZE];
        mem.read(gpa, &mut b)
            .map_err(|_| ErrorCode::InstanceInvalid)?;
        let u64_at =
            |o: u64| u64::from_le_bytes(b[o as usize..o as usize + 8].try_into().unwrap_or([0; 8]));
        let inst = Instance {
            pdb: u64_at(INST_PDB),
            gpfifo: u64_at(INST_GPFIFO_VA),
            ring_entries: u64_at(INST_GPFIFO_ENTRIES) as u32,
            userd: u64_at(INST_USERD_VA),
            notifier: u64_at(INST_NOTIFIER_VA),
        };
        // A structure that cannot lie inside the GPU's VA space can never be
        // reached: refused now rather than faulting at first use.
        let inside = |va: u64, len: u64| va.checked_add(len).is_some_and(|e| e <= 1 << VA_BITS);
        let ok = inst.pdb.is_multiple_of(4096)
            && inst.gpfifo.is_multiple_of(8)
            && inst.ring_entries.is_power_of_two()
            && inst.ring_entries >= 2
            && inst.ring_entries <= MAX_GPFIFO_ENTRIES
            && inside(inst.gpfifo, inst.ring_entries as u64 * 8)
            && inst.userd.is_multiple_of(USERD_SIZE)
            && inside(inst.userd, USERD_SIZE)
            && inst.notifier.is_multiple_of(NOTIFIER_SIZE)
            && (inst.notifier == 0 || inside(inst.notifier, NOTIFIER_SIZE));
        if ok {
            Ok(inst)
        } else {
            Err(ErrorCode::InstanceInvalid)
        }
    }
}

/// Live state of one channel: where its GPFIFO stands, the work fetched
/// from it and not yet finished, and whether it stopped on an error.
///
/// The front end drives it through the methods below, which keep its
/// bookkeeping consistent: every fetched entry retires only once all its
/// commands were carried out and all its engine items completed, and items
/// of an earlier epoch (before a fault or a channel reset) no longer count.
#[derive(Debug, Default)]
pub struct Channel {
    enabled: bool,
    inst: Option<Instance>,
    methods: MethodState,
    gp_get: u32,
    gp_put: u32,
    /// The doorbell rang since GP_PUT was last read.
    kicked: bool,
    /// Commands of the newest fetched entry not yet carried out.
    queue: VecDeque<Command>,
    /// Fetched entries not yet retired, oldest (the one at `gp_get`) first:
    /// for each, how many of its engine items and deferred commands are
    /// still outstanding.
    outstanding: VecDeque<u32>,
    /// Engine items of this channel handed to the engine and not yet
    /// complete, including those of an earlier epoch.
    in_flight: u32,
    /// Engine items handed over / completed in this epoch.
    submitted: u64,
    completed: u64,
    /// Semaphore releases and interrupts that follow engine work still
    /// running: each runs once the first `after` items of the epoch have
    /// completed, as the engine itself would write them at the end of the
    /// work before them, so the front end can fetch on.
    deferred: VecDeque<(u64, Command)>,
    /// Waiting on a semaphore acquire at the head of `queue`.
    blocked: bool,
    /// When the acquire at the head of `queue` first found its semaphore
    /// unsatisfied.
    waiting_since: Option<std::time::Instant>,
    faulted: Option<ErrorCode>,
    /// Bumped by a fault or a stop; completions of older items are ignored.
    epoch: u64,
    /// Front-end time spent on this channel's entries and not yet charged
    /// with an engine item.
    cost: std::time::Duration,
    /// Host memory the decoded commands of `queue` took when fetched.
    held: u64,
}

impl Channel {
    /// The state reported in `CH_STATUS`.
    pub fn state(&self) -> ChannelState {
        if self.faulted.is_some() {
            ChannelState::Faulted
        } else if !self.enabled {
            ChannelState::Disabled
        } else if self.blocked {
            ChannelState::Blocked
        } else if self.in_flight > 0 {
            ChannelState::Running
        } else if !self.queue.is_empty()
            || !self.outstanding.is_empty()
            || self.gp_get != self.gp_put
            || self.kicked
        {
            ChannelState::Pending
        } else {
            ChannelState::Idle
        }
    }

    /// The error the channel stopped on, if it is faulted.
    pub fn error(&self) -> Option<ErrorCode> {
        self.faulted
    }

    /// Enabled and not faulted: the front end may advance it.
    pub fn is_active(&self) -> bool {
        self.enabled && self.faulted.is_none()
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Waiting for a semaphore acquire to be satisfied.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// The instance block read when the channel was enabled.
    pub fn instance(&self) -> Option<Instance> {
        self.inst
    }

    /// Start fetching from the ring of `inst`, from entry 0.
    pub fn enable(&mut self, inst: Instance) {
        self.inst = Some(inst);
        self.enabled = true;
        self.gp_get = 0;
        self.gp_put = 0;
        self.methods = MethodState::default();
    }

    /// Enabled with an instance block that could not be used; the caller
    /// faults the channel next.
    pub fn enable_invalid(&mut self) {
        self.enabled = true;
    }

    /// Stop fetching and forget queued work (CTRL.ENABLE cleared).
    pub fn disable(&mut self) {
        self.stop();
        self.enabled = false;
    }

    /// Channel reset (CTRL.RESET): back to the disabled state with no error
    /// and no instance. Items still running complete unnoticed.
    pub fn reset(&mut self) {
        let in_flight = self.in_flight;
        let epoch = self.epoch;
        *self = Channel {
            in_flight,
            epoch,
            ..Channel::default()
        };
        self.new_epoch();
    }

    /// Stop on `code`: queued work is dropped and items still running no
    /// longer count for the channel.
    pub fn fault(&mut self, code: ErrorCode) {
        self.faulted = Some(code);
        self.stop();
    }

    /// The doorbell rang for this channel.
    pub fn ring(&mut self) {
        self.kicked = true;
    }

    /// Whether the doorbell rang since the last call (GP_PUT must be re-read).
    pub fn take_doorbell(&mut self) -> bool {
        std::mem::take(&mut self.kicked)
    }

    /// The driver's GP_PUT, as read from USERD after a doorbell.
    pub fn set_gp_put(&mut self, put: u32) {
        self.gp_put = put;
    }

    /// Forget the work of the current epoch: items still running complete
    /// unnoticed.
    fn new_epoch(&mut self) {
        self.epoch += 1;
        self.submitted = 0;
        self.completed = 0;
        self.deferred.clear();
    }

    fn stop(&mut self) {
        self.queue.clear();
        self.outstanding.clear();
        self.blocked = false;
        self.waiting_since = None;
        self.kicked = false;
        self.new_epoch();
    }

    /// Engine work of this epoch is still running.
    fn engine_busy(&self) -> bool {
        self.submitted > self.completed
    }

    /// Move GP_GET past every oldest entry whose commands were all carried
    /// out and whose engine items all completed. Returns the new GP_GET when
    /// it moved.
    pub fn retire(&mut self) -> Option<u32> {
        let ring = self.inst?.ring_entries;
        let mut retired = false;
        // The newest entry is still being carried out while its queue holds commands.
        while self.outstanding.front() == Some(&0)
            && (self.outstanding.len() > 1 || self.queue.is_empty())
        {
            self.outstanding.pop_front();
            self.gp_get = (self.gp_get + 1) % ring;
            retired = true;
        }
        retired.then_some(self.gp_get)
    }

    /// The queue of the newest fetched entry is empty: the next entry may
    /// be fetched.
    pub fn wants_entry(&self) -> bool {
        self.queue.is_empty()
    }

    /// The GPFIFO slot to fetch next, if the driver has put one there and
    /// fewer than [`MAX_ENTRIES_AHEAD`] entries are fetched and unretired.
    pub fn next_slot(&self) -> Option<u32> {
        let ring = self.inst?.ring_entries.max(1);
        let fetch = ((self.gp_get as u64 + self.outstanding.len() as u64) % ring as u64) as u32;
        (fetch != self.gp_put && self.outstanding.len() < MAX_ENTRIES_AHEAD).then_some(fetch)
    }

    /// The method state the next segment is parsed from.
    pub fn methods(&self) -> MethodState {
        self.methods
    }

    /// The front end spent `cost` on this channel's work (an entry's fetch
    /// and audit); the next engine item carries it to the scheduler.
    pub fn add_cost(&mut self, cost: std::time::Duration) {
        self.cost += cost;
    }

    /// The entry at [`Channel::next_slot`] was fetched and audited into
    /// `commands`; `methods` is the method state after it.
    pub fn push_entry(&mut self, methods: MethodState, commands: Vec<Command>) {
        self.held = decoded_bytes(&commands);
        self.methods = methods;
        self.queue = commands.into();
        self.outstanding.push_back(0);
    }

    /// Host memory held by decoded commands not yet carried out (what the
    /// newest entry took when fetched; nothing once it is all carried out).
    pub fn held_bytes(&self) -> u64 {
        if self.queue.is_empty() {
            0
        } else {
            self.held
        }
    }

    /// The command to carry out next.
    pub fn head(&self) -> Option<&Command> {
        self.queue.front()
    }

    /// What the front end may do with the command at the head now.
    pub fn head_action(&self) -> HeadAction {
        match self.queue.front() {
            None => HeadAction::Empty,
            Some(Command::Engine(_)) if self.in_flight >= MAX_CHANNEL_IN_FLIGHT => HeadAction::Wait,
            Some(Command::Engine(_)) => HeadAction::Submit,
            // A release or interrupt behind running work is carried out when
            // that work completes; the front end goes on meanwhile.
            Some(Command::SemRelease { .. } | Command::Interrupt) if self.engine_busy() => {
                HeadAction::Defer
            }
            Some(Command::SemRelease { .. } | Command::Interrupt) => HeadAction::RunNow,
            // An acquire gates everything after it, and sees the memory
            // every earlier command of the channel has written.
            Some(Command::SemAcquire { .. }) if self.engine_busy() || !self.deferred.is_empty() => {
                HeadAction::Wait
            }
            Some(Command::SemAcquire { .. }) => HeadAction::Poll,
        }
    }

    /// Take the head command off the queue (carried out now).
    pub fn pop_head(&mut self) -> Option<Command> {
        self.queue.pop_front()
    }

    /// Move the head command behind the engine work now running.
    pub fn defer_head(&mut self) {
        if let Some(cmd) = self.queue.pop_front() {
            self.deferred.push_back((self.submitted, cmd));
            if let Some(n) = self.outstanding.back_mut() {
                *n += 1;
            }
        }
    }

    /// Take the engine operation at the head for the engine: its next
    /// piece of at most `piece_bytes` when it is larger than one
    /// ([`Op::take_piece_of`]; the rest stays at the head), else all of it. Returns it with the epoch its
    /// completion must be reported under, the front-end cost it carries,
    /// and the commands it completes (none for a piece before the last).
    pub fn submit_head(&mut self, piece_bytes: u64) -> Option<(Op, u64, std::time::Duration, u64)> {
        let Some(Command::Engine(head)) = self.queue.front_mut() else {
            return None;
        };
        let (op, commands) = match head.take_piece_of(piece_bytes) {
            Some(piece) => (piece, 0),
            None => match self.queue.pop_front() {
                Some(Command::Engine(op)) => {
                    let op = self.batch_from(op);
                    let n = op.commands();
                    (op, n)
                }
                _ => return None,
            },
        };
        self.in_flight += 1;
        self.submitted += 1;
        if let Some(n) = self.outstanding.back_mut() {
            *n += 1;
        }
        Some((op, self.epoch, std::mem::take(&mut self.cost), commands))
    }

    /// `first` and the short engine operations right behind it in the
    /// queue, up to a piece's worth of bytes and extents and
    /// [`MAX_BATCH_OPS`], as one [`Op::Batch`] (or `first` alone).
    fn batch_from(&mut self, first: Op) -> Op {
        let Some(mut bytes) = first.batch_cost() else {
            return first;
        };
        let mut extents = first.extent_count();
        let mut ops = vec![first];
        while ops.len() < MAX_BATCH_OPS {
            let Some(Command::Engine(next)) = self.queue.front() else {
                break;
            };
            let Some(b) = next.batch_cost() else {
                break;
            };
            if bytes + b > PIECE_BYTES || extents + next.extent_count() > PIECE_EXTENTS {
                break;
            }
            bytes += b;
            extents += next.extent_count();
            if let Some(Command::Engine(op)) = self.queue.pop_front() {
                ops.push(op);
            }
        }
        if ops.len() == 1 {
            ops.swap_remove(0)
        } else {
            Op::Batch(ops)
        }
    }

    /// Record whether the acquire at the head is still waiting. Returns how
    /// long it has waited so far.
    pub fn set_blocked(&mut self, blocked: bool, now: std::time::Instant) -> std::time::Duration {
        self.blocked = blocked;
        if !blocked {
            self.waiting_since = None;
            return std::time::Duration::ZERO;
        }
        now.duration_since(*self.waiting_since.get_or_insert(now))
    }

    /// A semaphore was released: a blocked acquire must look again.
    pub fn recheck_acquire(&mut self) {
        self.blocked = false;
    }

    /// The next deferred command whose engine work has completed.
    pub fn take_ready_deferred(&mut self) -> Option<Command> {
        let ready = self
            .deferred
            .front()
            .is_some_and(|(after, _)| *after <= self.completed);
        if !ready {
            return None;
        }
        let (_, cmd) = self.deferred.pop_front()?;
        self.count_down();
        Some(cmd)
    }

    /// An engine item of epoch `epoch` finished. Returns whether it still
    /// counts for the channel (it was not dropped by a fault or a stop).
    pub fn item_done(&mut self, epoch: u64) -> bool {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.epoch != epoch {
            return false;
        }
        // Items of a channel complete in the order they were handed over,
        // so this one belongs to the oldest entry still waiting.
        self.completed += 1;
        self.count_down();
        true
    }

    fn count_down(&mut self) {
        if let Some(n) = self.outstanding.iter_mut().find(|n| **n > 0) {
            *n -= 1;
        }
    }
}

/// What the front end may do with a channel's head command now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadAction {
    /// Nothing is queued.
    Empty,
    /// It must wait: the engine pipeline is full, or an acquire waits for
    /// earlier work.
    Wait,
    /// Hand the engine operation to the engine.
    Submit,
    /// Carry out the release or interrupt now.
    RunNow,
    /// Carry the release or interrupt out when the work before it completes.
    Defer,
    /// Read the acquire's semaphore and compare.
    Poll,
}
