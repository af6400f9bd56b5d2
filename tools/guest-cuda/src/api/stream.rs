//! Streams, events and host functions.

use std::ffi::c_void;

use crate::cabi;
use crate::cuda_fn;
use crate::driver::{wait, with};
use crate::error::{err, Result};
use crate::stream::{synchronize, StreamKey};
use crate::types::*;

fn create(ps: *mut Handle, flags: u32, priority: i32) -> Result<()> {
    let h = with(|d| d.stream_create(flags, priority))?;
    cabi::write(ps, h as Handle)
}

fn destroy(s: Handle) -> Result<()> {
    with(|d| {
        d.stream(s as usize)?;
        d.streams.map.remove(&(s as usize));
        Ok(())
    })
}

fn query(s: Handle) -> Result<()> {
    if with(|d| d.stream_done(StreamKey::of(s)))? {
        Ok(())
    } else {
        err(CUDA_ERROR_NOT_READY)
    }
}

fn wait_event(s: Handle, e: Handle, _flags: u32) -> Result<()> {
    with(|d| d.stream_wait_event(StreamKey::of(s), e as usize))
}

fn flags_of(s: Handle) -> Result<u32> {
    match StreamKey::of(s) {
        StreamKey::Legacy => with(|_| Ok(0)),
        StreamKey::Created(h) => with(|d| Ok(d.stream(h)?.flags)),
    }
}

fn priority_of(s: Handle) -> Result<i32> {
    match StreamKey::of(s) {
        StreamKey::Legacy => with(|_| Ok(0)),
        StreamKey::Created(h) => with(|d| Ok(d.stream(h)?.priority)),
    }
}

fn ctx_of(s: Handle) -> Result<Handle> {
    match StreamKey::of(s) {
        StreamKey::Legacy => with(|d| d.current()).map(|c| c as Handle),
        StreamKey::Created(h) => with(|d| Ok(d.stream(h)?.ctx as Handle)),
    }
}

fn record(e: Handle, s: Handle) -> Result<()> {
    with(|d| d.event_record(e as usize, StreamKey::of(s)))
}

fn elapsed(ms: *mut f32, a: Handle, b: Handle) -> Result<()> {
    cabi::write(ms, with(|d| d.event_elapsed(a as usize, b as usize))?)
}

fn host_fn(s: Handle, f: Option<extern "C" fn(*mut c_void)>, data: *mut c_void) -> Result<()> {
    let f = f.ok_or(crate::error::CuError(CUDA_ERROR_INVALID_VALUE))?;
    with(|d| d.host_func(StreamKey::of(s), f, data as usize))
}

/// `cuStreamAddCallback`'s callback, its stream and data, run as a host function.
struct Callback {
    f: extern "C" fn(Handle, CUresult, *mut c_void),
    stream: Handle,
    data: *mut c_void,
}

extern "C" fn run_callback(p: *mut c_void) {
    // SAFETY: `p` is the `Box<Callback>` `add_callback` leaked for this one call.
    let cb = unsafe { Box::from_raw(p.cast::<Callback>()) };
    let status = with(|d| Ok(d.sticky.unwrap_or(CUDA_SUCCESS))).unwrap_or(CUDA_ERROR_UNKNOWN);
    (cb.f)(cb.stream, status, cb.data);
}

fn add_callback(
    s: Handle,
    f: Option<extern "C" fn(Handle, CUresult, *mut c_void)>,
    data: *mut c_void,
    flags: u32,
) -> Result<()> {
    let f = f.ok_or(crate::error::CuError(CUDA_ERROR_INVALID_VALUE))?;
    if flags != 0 {
        return err(CUDA_ERROR_INVALID_VALUE);
    }
    let cb = Box::into_raw(Box::new(Callback { f, stream: s, data }));
    let r = with(|d| d.host_func(StreamKey::of(s), run_callback, cb as usize));
    if r.is_err() {
        // SAFETY: the callback was not queued, so this is the only owner of the box.
        drop(unsafe { Box::from_raw(cb) });
    }
    r
}

cuda_fn! {
    fn cuStreamCreate(ps: *mut Handle, flags: u32) { create(ps, flags, 0) }
    fn cuStreamCreateWithPriority(ps: *mut Handle, flags: u32, priority: i32) { create(ps, flags, priority) }
    fn cuStreamDestroy(s: Handle) { destroy(s) }
    fn cuStreamDestroy_v2(s: Handle) { destroy(s) }
    fn cuStreamSynchronize(s: Handle) { synchronize(StreamKey::of(s)) }
    fn cuStreamSynchronize_ptsz(s: Handle) { synchronize(StreamKey::of(s)) }
    fn cuStreamQuery(s: Handle) { query(s) }
    fn cuStreamQuery_ptsz(s: Handle) { query(s) }
    fn cuStreamWaitEvent(s: Handle, e: Handle, flags: u32) { wait_event(s, e, flags) }
    fn cuStreamWaitEvent_ptsz(s: Handle, e: Handle, flags: u32) { wait_event(s, e, flags) }
    fn cuStreamGetFlags(s: Handle, flags: *mut u32) { cabi::write(flags, flags_of(s)?) }
    fn cuStreamGetFlags_ptsz(s: Handle, flags: *mut u32) { cabi::write(flags, flags_of(s)?) }
    fn cuStreamGetPriority(s: Handle, p: *mut i32) { cabi::write(p, priority_of(s)?) }
    fn cuStreamGetPriority_ptsz(s: Handle, p: *mut i32) { cabi::write(p, priority_of(s)?) }
    fn cuStreamGetCtx(s: Handle, pctx: *mut Handle) { cabi::write(pctx, ctx_of(s)?) }
    fn cuStreamGetCtx_ptsz(s: Handle, pctx: *mut Handle) { cabi::write(pctx, ctx_of(s)?) }
    fn cuStreamGetCtx_v2(s: Handle, pctx: *mut Handle, green: *mut Handle) {
        cabi::write(pctx, ctx_of(s)?)?;
        if !green.is_null() {
            cabi::write(green, std::ptr::null_mut())?;
        }
        Ok(())
    }
    fn cuStreamGetCtx_v2_ptsz(s: Handle, pctx: *mut Handle, green: *mut Handle) {
        cabi::write(pctx, ctx_of(s)?)?;
        if !green.is_null() {
            cabi::write(green, std::ptr::null_mut())?;
        }
        Ok(())
    }
    fn cuStreamGetId(s: Handle, id: *mut u64) {
        let v = match StreamKey::of(s) {
            StreamKey::Legacy => with(|_| Ok(0))?,
            StreamKey::Created(h) => with(|d| Ok(d.stream(h)?.id))?,
        };
        cabi::write(id, v)
    }
    fn cuStreamGetId_ptsz(s: Handle, id: *mut u64) {
        let v = match StreamKey::of(s) {
            StreamKey::Legacy => with(|_| Ok(0))?,
            StreamKey::Created(h) => with(|d| Ok(d.stream(h)?.id))?,
        };
        cabi::write(id, v)
    }
    fn cuStreamGetDevice(s: Handle, dev: *mut CUdevice) { ctx_of(s)?; cabi::write(dev, 0) }
    fn cuStreamGetDevice_ptsz(s: Handle, dev: *mut CUdevice) { ctx_of(s)?; cabi::write(dev, 0) }
    /// No stream is ever capturing: graphs are not supported.
    fn cuStreamIsCapturing(s: Handle, status: *mut i32) { ctx_of(s)?; cabi::write(status, CU_STREAM_CAPTURE_STATUS_NONE) }
    fn cuStreamIsCapturing_ptsz(s: Handle, status: *mut i32) { ctx_of(s)?; cabi::write(status, CU_STREAM_CAPTURE_STATUS_NONE) }
    fn cuStreamAddCallback(s: Handle, f: Option<extern "C" fn(Handle, CUresult, *mut c_void)>, data: *mut c_void, flags: u32) { add_callback(s, f, data, flags) }
    fn cuStreamAddCallback_ptsz(s: Handle, f: Option<extern "C" fn(Handle, CUresult, *mut c_void)>, data: *mut c_void, flags: u32) { add_callback(s, f, data, flags) }
    fn cuLaunchHostFunc(s: Handle, f: Option<extern "C" fn(*mut c_void)>, data: *mut c_void) { host_fn(s, f, data) }
    fn cuLaunchHostFunc_ptsz(s: Handle, f: Option<extern "C" fn(*mut c_void)>, data: *mut c_void) { host_fn(s, f, data) }

    fn cuEventCreate(pe: *mut Handle, flags: u32) {
        let h = with(|d| d.event_create(flags))?;
        cabi::write(pe, h as Handle)
    }
    fn cuEventDestroy(e: Handle) { with(|d| d.event_destroy(e as usize)) }
    fn cuEventDestroy_v2(e: Handle) { with(|d| d.event_destroy(e as usize)) }
    fn cuEventRecord(e: Handle, s: Handle) { record(e, s) }
    fn cuEventRecord_ptsz(e: Handle, s: Handle) { record(e, s) }
    fn cuEventRecordWithFlags(e: Handle, s: Handle, flags: u32) { record(e, s) }
    fn cuEventRecordWithFlags_ptsz(e: Handle, s: Handle, flags: u32) { record(e, s) }
    fn cuEventQuery(e: Handle) {
        if with(|d| d.event_done(e as usize))? { Ok(()) } else { err(CUDA_ERROR_NOT_READY) }
    }
    fn cuEventSynchronize(e: Handle) {
        match with(|d| d.event_fence(e as usize))? {
            Some(f) => wait(&[f]),
            None => Ok(()),
        }
    }
    fn cuEventElapsedTime(ms: *mut f32, a: Handle, b: Handle) { elapsed(ms, a, b) }
    fn cuEventElapsedTime_v2(ms: *mut f32, a: Handle, b: Handle) { elapsed(ms, a, b) }
}
