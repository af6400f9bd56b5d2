//! Contexts: the device's primary context (retained and released by count, reset when the
//! last reference goes), contexts made with `cuCtxCreate`, and each thread's stack of current
//! contexts.
//!
//! Every context of the process shares the one vGPU: its memory and channels. What a context
//! owns (device and host allocations, streams, events, modules) goes with it when it is
//! destroyed or reset.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::driver::Driver;
use crate::error::{err, Result};
use crate::types::*;

/// `CUlimit` values a context keeps (CU_LIMIT_STACK_SIZE .. CU_LIMIT_PERSISTING_L2_CACHE_SIZE).
const LIMITS: usize = 7;

/// One context.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub primary: bool,
    pub flags: u32,
    pub limits: [usize; LIMITS],
    pub cache_config: i32,
    pub shared_mem_config: i32,
    /// `cuCtxGetId`.
    pub id: u64,
}

impl Ctx {
    fn new(primary: bool, flags: u32, id: u64) -> Ctx {
        Ctx {
            primary,
            flags,
            // What CUDA reports on a fresh context of a recent GPU.
            limits: [1024, 1 << 20, 8 << 20, 2, 2048, 0, 0],
            cache_config: 0,
            shared_mem_config: 0,
            id,
        }
    }
}

/// The contexts of the process.
#[derive(Debug, Default)]
pub struct Contexts {
    pub map: HashMap<usize, Ctx>,
    /// The primary context's handle (fixed for the process).
    pub primary: usize,
    pub primary_refs: u32,
    pub primary_flags: u32,
    next_id: u64,
}

thread_local! {
    static STACK: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// The calling thread's current context handle (0 = none).
pub fn current_handle() -> usize {
    STACK.with(|s| s.borrow().last().copied().unwrap_or(0))
}

/// Make `h` the current context (replacing the top of the stack; 0 pops it).
pub fn set_current(h: usize) {
    STACK.with(|s| {
        let mut s = s.borrow_mut();
        s.pop();
        if h != 0 {
            s.push(h);
        }
    })
}

pub fn push(h: usize) {
    STACK.with(|s| s.borrow_mut().push(h))
}

/// Pop the current context; its handle (0 when the stack was empty).
pub fn pop() -> usize {
    STACK.with(|s| s.borrow_mut().pop().unwrap_or(0))
}

/// Forget `h` on this thread's stack (a destroyed context).
fn forget(h: usize) {
    STACK.with(|s| s.borrow_mut().retain(|&c| c != h))
}

impl Driver {
    /// The current context, which must exist (`CUDA_ERROR_INVALID_CONTEXT`).
    pub fn current(&self) -> Result<usize> {
        let h = current_handle();
        if h != 0 && self.ctx.map.contains_key(&h) {
            Ok(h)
        } else {
            err(CUDA_ERROR_INVALID_CONTEXT)
        }
    }

    /// The context of handle `h`, or the current one for `h` = 0.
    pub fn context(&self, h: usize) -> Result<usize> {
        if h == 0 {
            return self.current();
        }
        if self.ctx.map.contains_key(&h) {
            Ok(h)
        } else {
            err(CUDA_ERROR_INVALID_CONTEXT)
        }
    }

    fn new_id(&mut self) -> u64 {
        self.ctx.next_id += 1;
        self.ctx.next_id
    }

    /// `cuCtxCreate`: a new context, current on this thread.
    pub fn ctx_create(&mut self, flags: u32) -> Result<usize> {
        self.check_sticky()?;
        let h = self.handle();
        let id = self.new_id();
        self.ctx.map.insert(h, Ctx::new(false, flags, id));
        push(h);
        Ok(h)
    }

    /// `cuCtxDestroy`.
    pub fn ctx_destroy(&mut self, h: usize) -> Result<()> {
        match self.ctx.map.get(&h) {
            Some(c) if !c.primary => {}
            _ => return err(CUDA_ERROR_INVALID_CONTEXT),
        }
        self.release_owned(h)?;
        self.ctx.map.remove(&h);
        forget(h);
        Ok(())
    }

    /// `cuDevicePrimaryCtxRetain`.
    pub fn primary_retain(&mut self) -> Result<usize> {
        let h = self.ctx.primary;
        if !self.ctx.map.contains_key(&h) {
            let id = self.new_id();
            let flags = self.ctx.primary_flags;
            self.ctx.map.insert(h, Ctx::new(true, flags, id));
        }
        self.ctx.primary_refs += 1;
        Ok(h)
    }

    /// `cuDevicePrimaryCtxRelease`: the last release resets it.
    pub fn primary_release(&mut self) -> Result<()> {
        if self.ctx.primary_refs == 0 {
            return err(CUDA_ERROR_INVALID_CONTEXT);
        }
        self.ctx.primary_refs -= 1;
        if self.ctx.primary_refs == 0 {
            self.primary_reset()?;
        }
        Ok(())
    }

    /// `cuDevicePrimaryCtxReset`: everything the primary context owns is freed; after a
    /// sticky error, the engine gets a new context.
    pub fn primary_reset(&mut self) -> Result<()> {
        let h = self.ctx.primary;
        if self.ctx.map.contains_key(&h) {
            self.release_owned(h)?;
            if self.ctx.primary_refs == 0 {
                self.ctx.map.remove(&h);
            }
        }
        if self.ctx.map.values().all(|c| c.primary) || self.ctx.map.is_empty() {
            self.reset_engine()?;
        }
        Ok(())
    }

    /// Free what context `h` owns.
    fn release_owned(&mut self, h: usize) -> Result<()> {
        if self.sticky.is_none() {
            let pending = self.outstanding()?;
            // Work of the context may still be running: wait for it here, under the lock
            // (no host function runs: they belong to the context too).
            let t = std::time::Instant::now();
            for f in pending {
                while !self.reached(f, true)? {
                    if t.elapsed() > std::time::Duration::from_secs(60) {
                        return err(CUDA_ERROR_LAUNCH_TIMEOUT);
                    }
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
            }
        }
        self.modules_release(h)?;
        self.events.release(h);
        self.streams.release(h);
        self.mem_release(h)?;
        Ok(())
    }

    /// The context record of `h`.
    pub fn ctx_mut(&mut self, h: usize) -> Result<&mut Ctx> {
        let h = self.context(h)?;
        self.ctx
            .map
            .get_mut(&h)
            .ok_or(crate::error::CuError(CUDA_ERROR_INVALID_CONTEXT))
    }

    /// `cuCtxGetLimit` / `cuCtxSetLimit`.
    pub fn limit(&mut self, limit: i32, set: Option<usize>) -> Result<usize> {
        let i = usize::try_from(limit)
            .ok()
            .filter(|&i| i < LIMITS)
            .ok_or(crate::error::CuError(CUDA_ERROR_UNSUPPORTED_LIMIT))?;
        let c = self.ctx_mut(0)?;
        if let Some(v) = set {
            c.limits[i] = v;
        }
        Ok(c.limits[i])
    }
}
