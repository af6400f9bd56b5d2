//! The engine classes a channel can drive and their methods (ABI v1).
//!
//! Methods below 0x100 belong to HOST (the channel's own front end) and are
//! valid on every subchannel. Methods from 0x100 go to the class bound to
//! the subchannel with `SET_OBJECT`. Class state (addresses, sizes, program
//! selection) is per channel and class and persists across pushbuffer
//! segments until the channel is reset.

/// Class id of the copy engine.
pub const COPY_CLASS: u32 = 0x56B5;
/// Class id of the compute engine.
pub const COMPUTE_CLASS: u32 = 0x56C0;

/// HOST methods (byte offsets).
pub mod host {
    pub const SET_OBJECT: u32 = 0x000;
    pub const NOP: u32 = 0x008;
    pub const SEM_ADDR_LO: u32 = 0x010;
    pub const SEM_ADDR_HI: u32 = 0x014;
    pub const SEM_PAYLOAD_LO: u32 = 0x018;
    pub const SEM_PAYLOAD_HI: u32 = 0x01C;
    pub const SEM_EXECUTE: u32 = 0x020;
    pub const NON_STALL_INTERRUPT: u32 = 0x024;
    pub const WFI: u32 = 0x028;

    /// `SEM_EXECUTE[2:0]` operations.
    pub const SEM_OP_RELEASE: u32 = 1;
    pub const SEM_OP_ACQUIRE_EQ: u32 = 2;
    pub const SEM_OP_ACQUIRE_GEQ: u32 = 3;
    /// `SEM_EXECUTE` flags.
    pub const SEM_PAYLOAD_64: u32 = 1 << 8;
    pub const SEM_TIMESTAMP: u32 = 1 << 9;
    pub const SEM_INTERRUPT: u32 = 1 << 10;
    /// Every bit `SEM_EXECUTE` defines.
    pub const SEM_VALID_BITS: u32 = 0x7 | SEM_PAYLOAD_64 | SEM_TIMESTAMP | SEM_INTERRUPT;
}

/// COPY class methods (byte offsets).
pub mod copy {
    pub const SRC_LO: u32 = 0x100;
    pub const SRC_HI: u32 = 0x104;
    pub const DST_LO: u32 = 0x108;
    pub const DST_HI: u32 = 0x10C;
    pub const SRC_PITCH: u32 = 0x110;
    pub const DST_PITCH: u32 = 0x114;
    pub const LINE_BYTES: u32 = 0x118;
    pub const LINE_COUNT: u32 = 0x11C;
    pub const MEMSET_PATTERN: u32 = 0x120;
    pub const LAUNCH: u32 = 0x124;

    /// `LAUNCH[1:0]` operations.
    pub const OP_COPY_1D: u32 = 0;
    pub const OP_COPY_2D: u32 = 1;
    pub const OP_MEMSET_1D: u32 = 2;
    pub const OP_MEMSET_2D: u32 = 3;
}

/// COMPUTE class methods (byte offsets).
pub mod compute {
    pub const PROGRAM: u32 = 0x100;
    pub const PARAMS_LO: u32 = 0x104;
    pub const PARAMS_HI: u32 = 0x108;
    pub const PARAMS_SIZE: u32 = 0x10C;
    pub const GRID_X: u32 = 0x110;
    pub const GRID_Y: u32 = 0x114;
    pub const GRID_Z: u32 = 0x118;
    pub const BLOCK_X: u32 = 0x11C;
    pub const BLOCK_Y: u32 = 0x120;
    pub const BLOCK_Z: u32 = 0x124;
    pub const MODULE_LO: u32 = 0x128;
    pub const MODULE_HI: u32 = 0x12C;
    pub const MODULE_SIZE: u32 = 0x130;
    pub const MODULE_LOAD: u32 = 0x134;
    pub const FUNC_NAME_LO: u32 = 0x138;
    pub const FUNC_NAME_HI: u32 = 0x13C;
    pub const FUNC_NAME_SIZE: u32 = 0x140;
    pub const MODULE_LOG_LO: u32 = 0x144;
    pub const MODULE_LOG_HI: u32 = 0x148;
    pub const MODULE_LOG_SIZE: u32 = 0x14C;
    pub const LAUNCH: u32 = 0x180;

    /// `PROGRAM` values of the built-in programs.
    pub const PROG_FILL: u32 = 1;
    pub const PROG_SAXPY: u32 = 2;
    pub const PROG_GEMM_F32: u32 = 3;
    pub const PROG_REDUCE_SUM: u32 = 4;
    pub const PROG_SPIN: u32 = 5;
    /// `PROGRAM = PROG_PTX | slot`: the function `FUNC_NAME` of the PTX
    /// module loaded into `slot` (backends with `CAPS.PTX` only).
    pub const PROG_PTX: u32 = 0x100;
    /// Module slots of a vGPU.
    pub const PTX_SLOTS: u32 = 8;
    /// Largest PTX text `MODULE_LOAD` takes.
    pub const MAX_MODULE_BYTES: u32 = 4 << 20;
    /// Largest JIT log buffer.
    pub const MAX_MODULE_LOG: u32 = 64 << 10;
    /// Longest function name.
    pub const MAX_FUNC_NAME: u32 = 255;
}

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
