//! Pushbuffer methods (ABI v1 §5, §6): the method header's encoding, the
//! engine classes' ids, and every class's methods and their values.
//!
//! Methods below 0x100 belong to HOST (the channel's own front end) and are
//! valid on every subchannel. Methods from 0x100 go to the class bound to
//! the subchannel with `SET_OBJECT`. The device model (`devmodel::classes`,
//! `devmodel::pushbuf`) gives them their behaviour; the guest driver keeps
//! its own copy, checked against these by its drift test.

use bitfield::bitfield;

bitfield! {
    /// A pushbuffer method header.
    #[derive(Clone, Copy, PartialEq, Eq)]
    pub struct MethodHeader(pub u32);
    impl Debug;
    pub method_dw, set_method_dw: 12, 0;
    pub u8, subchannel, set_subchannel: 15, 13;
    pub count, set_count: 28, 16;
    pub u8, opcode, set_opcode: 31, 29;
}

/// Header opcodes (bits 31:29): `count` data words to consecutive methods.
pub const OP_INCR: u8 = 1;
/// `count` data words, all to one method.
pub const OP_NONINCR: u8 = 3;
/// No data word: `count` is the value (13 bits).
pub const OP_IMMD: u8 = 4;
/// The first data word to `method`, the rest to the next method.
pub const OP_ONE_INC: u8 = 5;
/// The segment ends here.
pub const OP_END_SEGMENT: u8 = 7;

impl MethodHeader {
    /// Build a header (for drivers and tests).
    pub fn new(opcode: u8, subchannel: u8, method: u32, count: u32) -> Self {
        let mut h = MethodHeader(0);
        h.set_opcode(opcode);
        h.set_subchannel(subchannel);
        h.set_method_dw(method >> 2);
        h.set_count(count);
        h
    }
}

/// Largest number of bytes one copy or memset may touch (1 GiB).
pub const MAX_COMMAND_BYTES: u64 = 1 << 30;
/// Largest matrix dimension of `gemm_f32`.
pub const MAX_GEMM_DIM: u32 = 4096;
/// Longest `spin` program, in nanoseconds (10 s).
pub const MAX_SPIN_NS: u64 = 10_000_000_000;
/// Largest parameter block.
pub const MAX_PARAMS: u32 = 4096;

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
    /// ABI 1.3: dynamic shared memory of guest kernel launches, in bytes.
    pub const SHARED_MEM_BYTES: u32 = 0x150;
    /// ABI 1.3: the module a `PROGRAM = PROG_MODULE` launch runs a function of.
    pub const MODULE_HANDLE: u32 = 0x154;
    /// ABI 1.3: where `FUNC_INFO` and `MODULE_GLOBAL` write their answers.
    pub const INFO_LO: u32 = 0x158;
    pub const INFO_HI: u32 = 0x15C;
    /// ABI 1.3 (data = module handle): the `FUNC_NAME` function's parameter layout and
    /// attributes, [`FUNC_INFO_BYTES`] at `INFO`.
    pub const FUNC_INFO: u32 = 0x160;
    /// ABI 1.3 (data = module handle): the address and size of the global `FUNC_NAME`,
    /// [`GLOBAL_INFO_BYTES`] at `INFO`.
    pub const MODULE_GLOBAL: u32 = 0x164;
    /// ABI 1.3 (data = module handle): unload the module.
    pub const MODULE_UNLOAD: u32 = 0x168;
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
    /// Module slots of a vGPU that `PROG_PTX | slot` names.
    pub const PTX_SLOTS: u32 = 8;
    /// ABI 1.3: `PROGRAM` value of a launch of `FUNC_NAME` of module `MODULE_HANDLE`.
    pub const PROG_MODULE: u32 = 0x200;
    /// ABI 1.3: module handles of a vGPU, `MODULE_LOAD` data 0 to this − 1 (0–7 are also the
    /// slots of `PROG_PTX`).
    pub const MAX_MODULES: u32 = 4096;
    /// ABI 1.3: the most bytes of images a vGPU keeps loaded at once.
    pub const MAX_MODULE_TOTAL_BYTES: u64 = 256 << 20;
    /// ABI 1.3: most parameters a `FUNC_INFO` answer describes.
    pub const MAX_FUNC_PARAMS: u32 = 1024;
    /// ABI 1.3: `FUNC_INFO`'s answer: u32 status (a CUDA error number; 0: found), u32
    /// parameter count, i32 attributes 0–15 (`CUfunction_attribute`) from byte 8, reserved
    /// to byte 128, then a (u32 offset, u32 size) pair per parameter.
    pub const FUNC_INFO_BYTES: u32 = 128 + 8 * MAX_FUNC_PARAMS;
    pub const FUNC_INFO_ATTRS: usize = 8;
    pub const FUNC_INFO_PARAMS: usize = 128;
    pub const FUNC_ATTRIBUTES: usize = 16;
    /// ABI 1.3: `MODULE_GLOBAL`'s answer: u32 status, u32 reserved, u64 address, u64 size.
    pub const GLOBAL_INFO_BYTES: u32 = 24;
    /// ABI 1.3: largest `SHARED_MEM_BYTES`.
    pub const MAX_SHARED_MEM: u32 = 1 << 20;
    /// Largest PTX text `MODULE_LOAD` takes.
    pub const MAX_MODULE_BYTES: u32 = 4 << 20;
    /// Largest JIT log buffer.
    pub const MAX_MODULE_LOG: u32 = 64 << 10;
    /// Longest function name.
    pub const MAX_FUNC_NAME: u32 = 4095;
}
