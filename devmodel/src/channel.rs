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
use crate::memory::GuestRam;
use crate::work::Command;

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
    pub entries: u32,
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
            entries: u64_at(INST_GPFIFO_ENTRIES) as u32,
            userd: u64_at(INST_USERD_VA),
            notifier: u64_at(INST_NOTIFIER_VA),
        };
        let ok = inst.pdb % 4096 == 0
            && inst.gpfifo % 8 == 0
            && inst.entries.is_power_of_two()
            && inst.entries >= 2
            && inst.entries <= MAX_GPFIFO_ENTRIES
            && inst.userd % USERD_SIZE == 0
            && inst.notifier % NOTIFIER_SIZE == 0;
        if ok {
            Ok(inst)
        } else {
            Err(ErrorCode::InstanceInvalid)
        }
    }
}

/// Live state of one channel.
#[derive(Debug, Default)]
pub struct Channel {
    pub enabled: bool,
    pub inst: Option<Instance>,
    pub methods: MethodState,
    pub gp_get: u32,
    pub gp_put: u32,
    /// The doorbell rang since GP_PUT was last read.
    pub kicked: bool,
    /// Commands of the newest fetched entry not yet carried out.
    pub queue: VecDeque<Command>,
    /// Fetched entries not yet retired, oldest (the one at `gp_get`) first:
    /// for each, its engine items handed to the engine and not yet
    /// complete. An entry retires (GP_GET moves past it) once its commands
    /// have all been carried out and its items have all completed.
    pub entries: VecDeque<u32>,
    /// Engine items of this channel handed to the engine and not yet
    /// complete, including those of an earlier epoch.
    pub in_flight: u32,
    /// Engine items handed over / completed in this epoch.
    pub submitted: u64,
    pub completed: u64,
    /// Semaphore releases and interrupts that follow engine work still
    /// running: each runs once the first `after` items of the epoch have
    /// completed, as the engine itself would write them at the end of the
    /// work before them, so the front end can fetch on.
    pub deferred: VecDeque<(u64, Command)>,
    /// Waiting on a semaphore acquire at the head of `queue`.
    pub blocked: bool,
    pub faulted: Option<ErrorCode>,
    pub error_info: u32,
    /// Bumped by a channel reset; completions of older items are ignored.
    pub epoch: u64,
    pub commands: u64,
    pub gpu_time_ns: u64,
}

impl Channel {
    /// Forget the work of the current epoch: items still running complete
    /// unnoticed.
    pub fn new_epoch(&mut self) {
        self.epoch += 1;
        self.submitted = 0;
        self.completed = 0;
        self.deferred.clear();
    }

    /// Engine work of this epoch is still running.
    pub fn engine_busy(&self) -> bool {
        self.submitted > self.completed
    }
    /// The GPFIFO entry the front end fetches next: the one after every
    /// fetched, unretired entry.
    pub fn gp_fetch(&self, entries: u32) -> u32 {
        ((self.gp_get as u64 + self.entries.len() as u64) % entries.max(1) as u64) as u32
    }

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
            || !self.entries.is_empty()
            || self.gp_get != self.gp_put
            || self.kicked
        {
            ChannelState::Pending
        } else {
            ChannelState::Idle
        }
    }

    /// Stop the channel and forget its work (channel reset, disable).
    pub fn stop(&mut self) {
        self.queue.clear();
        self.entries.clear();
        self.blocked = false;
        self.kicked = false;
        self.new_epoch();
    }
}
