//! The engine classes a channel can drive and their state (ABI v1). The
//! classes' ids and methods are the ABI's, in [`mmio::methods`].
//!
//! Class state (addresses, sizes, program selection) is per channel and
//! class and persists across pushbuffer segments until the channel is reset.

use mmio::methods::{COMPUTE_CLASS, COPY_CLASS};

/// An engine class bound to a subchannel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Copy,
    Compute,
}

impl Class {
    pub fn from_id(id: u32) -> Option<Class> {
        match id {
            COPY_CLASS => Some(Class::Copy),
            COMPUTE_CLASS => Some(Class::Compute),
            _ => None,
        }
    }
}

/// HOST semaphore state.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostState {
    pub sem_addr: u64,
    pub payload: u64,
}

/// COPY class state.
#[derive(Clone, Copy, Debug, Default)]
pub struct CopyState {
    pub src: u64,
    pub dst: u64,
    pub src_pitch: u32,
    pub dst_pitch: u32,
    pub line_bytes: u32,
    pub line_count: u32,
    pub pattern: u32,
}

/// COMPUTE class state.
#[derive(Clone, Copy, Debug, Default)]
pub struct ComputeState {
    pub program: u32,
    pub params: u64,
    pub params_size: u32,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub module: u64,
    pub module_size: u32,
    pub func_name: u64,
    pub func_name_size: u32,
    pub module_log: u64,
    pub module_log_size: u32,
    /// ABI 1.3: `SHARED_MEM_BYTES`, `MODULE_HANDLE`, `INFO`.
    pub shared_mem: u32,
    pub module_handle: u32,
    pub info: u64,
}

/// All method state of one channel.
#[derive(Clone, Copy, Debug, Default)]
pub struct MethodState {
    pub subchannels: [Option<Class>; 8],
    pub host: HostState,
    pub copy: CopyState,
    pub compute: ComputeState,
}

/// Replace the low or high half of a 64-bit method register.
pub fn set_lo(v: &mut u64, lo: u32) {
    *v = (*v & !0xFFFF_FFFF) | lo as u64;
}
pub fn set_hi(v: &mut u64, hi: u32) {
    *v = (*v & 0xFFFF_FFFF) | ((hi as u64) << 32);
}
