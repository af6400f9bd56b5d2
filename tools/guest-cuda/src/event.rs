//! Events: a 16-byte slot of DMA memory each, mapped for the vGPU. Recording an event is a
//! timestamped semaphore release into its slot (the payload, a sequence number, then the
//! vGPU's `TIMER` in ns, ABI §5.2) after the stream's work; waiting for one on another stream
//! is a 64-bit acquire of that payload.

use std::collections::HashMap;

use vgpu_guest::{Buffer, Fence, Placement};

use crate::driver::Driver;
use crate::error::{err, CuError, Result};
use crate::stream::StreamKey;
use crate::types::*;

/// Slots per page of event memory.
const SLOTS: usize = 256;
const SLOT_BYTES: usize = 16;

/// One event.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub ctx: usize,
    pub flags: u32,
    page: usize,
    slot: usize,
    /// The sequence number of its last record and the fence after it.
    recorded: Option<(u64, Fence)>,
}

/// The events of the process and their memory.
#[derive(Debug, Default)]
pub struct Events {
    pub map: HashMap<usize, Event>,
    pages: Vec<Buffer>,
    free: Vec<(usize, usize)>,
    seq: u64,
}

impl Events {
    /// Forget the events of context `ctx` (their slots are not reused: work may still write
    /// them).
    pub fn release(&mut self, ctx: usize) {
        self.map.retain(|_, e| e.ctx != ctx);
    }
}

impl Driver {
    /// `cuEventCreate`.
    pub fn event_create(&mut self, flags: u32) -> Result<usize> {
        let ctx = self.current()?;
        if flags & !(CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING | CU_EVENT_INTERPROCESS) != 0
        {
            return err(CUDA_ERROR_INVALID_VALUE);
        }
        if flags & CU_EVENT_INTERPROCESS != 0 {
            return err(CUDA_ERROR_NOT_SUPPORTED);
        }
        let (page, slot) = match self.events.free.pop() {
            Some(s) => s,
            None => {
                let buf = self
                    .dev
                    .alloc(Placement::Sysmem, (SLOTS * SLOT_BYTES) as u64)?;
                let page = self.events.pages.len();
                self.events.pages.push(buf);
                self.events.free.extend((1..SLOTS).rev().map(|s| (page, s)));
                (page, 0)
            }
        };
        let h = self.handle();
        self.events.map.insert(
            h,
            Event {
                ctx,
                flags,
                page,
                slot,
                recorded: None,
            },
        );
        Ok(h)
    }

    fn event(&self, h: usize) -> Result<Event> {
        self.events
            .map
            .get(&h)
            .copied()
            .ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))
    }

    fn slot(&self, e: &Event) -> Result<&Buffer> {
        self.events
            .pages
            .get(e.page)
            .ok_or(CuError(CUDA_ERROR_UNKNOWN))
    }

    /// `cuEventDestroy`: its slot is reused once its last record has landed.
    pub fn event_destroy(&mut self, h: usize) -> Result<()> {
        let e = self.event(h)?;
        self.events.map.remove(&h);
        let done = match e.recorded {
            Some((_, f)) => self.reached(f, false).unwrap_or(false),
            None => true,
        };
        if done {
            self.events.free.push((e.page, e.slot));
        }
        Ok(())
    }

    /// `cuEventRecord`.
    pub fn event_record(&mut self, h: usize, s: StreamKey) -> Result<()> {
        let e = self.event(h)?;
        let va = self.slot(&e)?.va() + (e.slot * SLOT_BYTES) as u64;
        self.events.seq += 1;
        let seq = self.events.seq;
        let f = self.submit(s, |seg| {
            seg.pb.sem_release_timestamp(va, seq);
            Ok(())
        })?;
        if let Some(ev) = self.events.map.get_mut(&h) {
            ev.recorded = Some((seq, f));
        }
        Ok(())
    }

    /// Whether the event's last record has happened (an event never recorded has).
    pub fn event_done(&mut self, h: usize) -> Result<bool> {
        self.check_sticky()?;
        let e = self.event(h)?;
        match e.recorded {
            None => Ok(true),
            Some((seq, f)) => {
                let at = e.slot * SLOT_BYTES;
                if self.slot(&e)?.host()?.read_u64(at)? >= seq {
                    return Ok(true);
                }
                self.reached(f, true)?;
                Ok(false)
            }
        }
    }

    /// The fence after the event's last record.
    pub fn event_fence(&self, h: usize) -> Result<Option<Fence>> {
        Ok(self.event(h)?.recorded.map(|(_, f)| f))
    }

    /// `cuStreamWaitEvent`: `s`'s later work waits for the event's last record.
    pub fn stream_wait_event(&mut self, s: StreamKey, h: usize) -> Result<()> {
        let e = self.event(h)?;
        let Some((seq, _)) = e.recorded else {
            return Ok(());
        };
        let va = self.slot(&e)?.va() + (e.slot * SLOT_BYTES) as u64;
        self.submit(s, |seg| {
            seg.pb.sem_acquire(va, seq, false, true);
            Ok(())
        })?;
        Ok(())
    }

    /// `cuEventElapsedTime`: milliseconds between two recorded, completed events.
    pub fn event_elapsed(&mut self, start: usize, end: usize) -> Result<f32> {
        let (a, b) = (self.event(start)?, self.event(end)?);
        if (a.flags | b.flags) & CU_EVENT_DISABLE_TIMING != 0 {
            return err(CUDA_ERROR_INVALID_HANDLE);
        }
        if a.recorded.is_none() || b.recorded.is_none() {
            return err(CUDA_ERROR_INVALID_HANDLE);
        }
        if !self.event_done(start)? || !self.event_done(end)? {
            return err(CUDA_ERROR_NOT_READY);
        }
        let ts = |d: &Driver, e: &Event| -> Result<u64> {
            Ok(d.slot(e)?.host()?.read_u64(e.slot * SLOT_BYTES + 8)?)
        };
        let (t0, t1) = (ts(self, &a)?, ts(self, &b)?);
        Ok((t1 as i64 - t0 as i64) as f32 / 1e6)
    }
}
