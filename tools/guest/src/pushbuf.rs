//! Pushbuffers (ABI §5): segments of 32-bit words, each method header
//! followed by its data words, and the GPFIFO entries that point at them
//! (ABI §3.3).
//!
//! [`Pushbuf`] builds a segment. HOST methods work on any subchannel; the
//! builder binds COMPUTE to subchannel [`SUBCH_COMPUTE`] and COPY to
//! [`SUBCH_COPY`] (the ABI's §10 layout) and uses them for class methods.

use crate::error::{Error, Result};

/// Header opcodes (bits 31:29).
pub const OP_INCR: u32 = 1;
pub const OP_NONINCR: u32 = 3;
pub const OP_IMMD: u32 = 4;
pub const OP_ONE_INC: u32 = 5;
pub const OP_END_SEGMENT: u32 = 7;
/// Largest `count` (and IMMD value): 13 bits.
pub const MAX_COUNT: u32 = (1 << 13) - 1;

/// The subchannel the builder binds COMPUTE to.
pub const SUBCH_COMPUTE: u32 = 1;
/// The subchannel the builder binds COPY to.
pub const SUBCH_COPY: u32 = 4;

/// HOST methods (below 0x100, valid on every subchannel).
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
    /// `SEM_EXECUTE` operations (bits 2:0).
    pub const SEM_RELEASE: u32 = 1;
    pub const SEM_ACQUIRE_EQ: u32 = 2;
    pub const SEM_ACQUIRE_GEQ: u32 = 3;
    /// `SEM_EXECUTE` flags.
    pub const SEM_PAYLOAD_64: u32 = 1 << 8;
    pub const SEM_TIMESTAMP: u32 = 1 << 9;
    pub const SEM_INTERRUPT: u32 = 1 << 10;
}

/// COPY class methods.
pub mod copy {
    pub const CLASS: u32 = 0x56B5;
    pub const SRC_LO: u32 = 0x100;
    pub const DST_LO: u32 = 0x108;
    pub const SRC_PITCH: u32 = 0x110;
    pub const DST_PITCH: u32 = 0x114;
    pub const LINE_BYTES: u32 = 0x118;
    pub const LINE_COUNT: u32 = 0x11C;
    pub const MEMSET_PATTERN: u32 = 0x120;
    pub const LAUNCH: u32 = 0x124;
    pub const LAUNCH_COPY_1D: u32 = 0;
    pub const LAUNCH_COPY_2D: u32 = 1;
    pub const LAUNCH_MEMSET_1D: u32 = 2;
    pub const LAUNCH_MEMSET_2D: u32 = 3;
    /// Most bytes one launch moves.
    pub const MAX_BYTES: u64 = 1 << 30;
}

/// COMPUTE class methods.
pub mod compute {
    pub const CLASS: u32 = 0x56C0;
    pub const PROGRAM: u32 = 0x100;
    pub const PARAMS_LO: u32 = 0x104;
    pub const PARAMS_SIZE: u32 = 0x10C;
    pub const GRID_X: u32 = 0x110;
    pub const BLOCK_X: u32 = 0x11C;
    pub const MODULE_LO: u32 = 0x128;
    pub const MODULE_SIZE: u32 = 0x130;
    pub const MODULE_LOAD: u32 = 0x134;
    pub const FUNC_NAME_LO: u32 = 0x138;
    pub const FUNC_NAME_SIZE: u32 = 0x140;
    /// `MODULE_LOG_LO/HI`: VA of the buffer `MODULE_LOAD` writes the JIT
    /// log into (the info log on success, the error log on failure),
    /// NUL-terminated, truncated to `MODULE_LOG_SIZE`.
    pub const MODULE_LOG_LO: u32 = 0x144;
    /// `MODULE_LOG_SIZE`: the log buffer's size in bytes (0 = no log).
    pub const MODULE_LOG_SIZE: u32 = 0x14C;
    /// `SHARED_MEM_BYTES` (ABI 1.3): dynamic shared memory of guest kernel launches.
    pub const SHARED_MEM_BYTES: u32 = 0x150;
    /// `MODULE_HANDLE` (ABI 1.3): the module a `PROGRAM` = [`PROGRAM_MODULE`] launch runs.
    pub const MODULE_HANDLE: u32 = 0x154;
    /// `INFO_LO/HI` (ABI 1.3): where `FUNC_INFO` and `MODULE_GLOBAL` write their answer.
    pub const INFO_LO: u32 = 0x158;
    /// `FUNC_INFO` (ABI 1.3, data = module handle): the `FUNC_NAME` function's parameter
    /// layout and attributes, [`FUNC_INFO_BYTES`] at `INFO`.
    pub const FUNC_INFO: u32 = 0x160;
    /// `MODULE_GLOBAL` (ABI 1.3, data = module handle): the address and size of global
    /// `FUNC_NAME`, [`GLOBAL_INFO_BYTES`] at `INFO`.
    pub const MODULE_GLOBAL: u32 = 0x164;
    /// `MODULE_UNLOAD` (ABI 1.3, data = module handle).
    pub const MODULE_UNLOAD: u32 = 0x168;
    pub const LAUNCH: u32 = 0x180;
    /// `PROGRAM` value of a launch of `FUNC_NAME` of module `MODULE_HANDLE` (ABI 1.3).
    pub const PROGRAM_MODULE: u32 = 0x200;
    /// Module handles of an ABI 1.3 device: `MODULE_LOAD` data 0 to this − 1.
    pub const MAX_MODULES: u32 = 4096;
    /// Most parameters `FUNC_INFO` describes.
    pub const MAX_FUNC_PARAMS: u32 = 1024;
    /// `FUNC_INFO`'s answer: u32 status (a CUDA error number, 0 = found), u32 parameter
    /// count, i32 attributes 0–15 (`CUfunction_attribute`), reserved to byte 128, then
    /// (u32 offset, u32 size) per parameter.
    pub const FUNC_INFO_BYTES: u32 = 128 + 8 * MAX_FUNC_PARAMS;
    /// Offset of the attributes and of the parameters in a `FUNC_INFO` answer.
    pub const FUNC_INFO_ATTRS: usize = 8;
    pub const FUNC_INFO_PARAMS: usize = 128;
    /// Function attributes a `FUNC_INFO` answer carries.
    pub const FUNC_ATTRIBUTES: usize = 16;
    /// `MODULE_GLOBAL`'s answer: u32 status, u32 reserved, u64 address, u64 size.
    pub const GLOBAL_INFO_BYTES: u32 = 24;
    /// Largest `SHARED_MEM_BYTES`.
    pub const MAX_SHARED_MEM: u32 = 1 << 20;
    /// Largest PTX text (`MODULE_SIZE`).
    pub const MAX_MODULE_BYTES: u32 = 4 << 20;
    /// Largest module log buffer (`MODULE_LOG_SIZE`).
    pub const MAX_MODULE_LOG: u32 = 64 << 10;
    /// Longest function name (`FUNC_NAME_SIZE` is 1 to this).
    pub const MAX_FUNC_NAME: u32 = 4095;
    /// `PROGRAM` value of a PTX function in `slot`.
    pub const PROGRAM_PTX: u32 = 0x100;
    /// PTX module slots.
    pub const PTX_SLOTS: u32 = 8;
    /// Largest parameter block.
    pub const MAX_PARAMS: u32 = 4096;
}

/// Encode a method header.
pub fn header(opcode: u32, subchannel: u32, method: u32, count: u32) -> u32 {
    (opcode & 7) << 29 | (count & MAX_COUNT) << 16 | (subchannel & 7) << 13 | (method >> 2) & 0x1FFF
}

/// A decoded method header (for diagnostics and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub opcode: u32,
    pub subchannel: u32,
    pub method: u32,
    pub count: u32,
}

impl Header {
    pub fn decode(w: u32) -> Header {
        Header {
            opcode: w >> 29,
            subchannel: (w >> 13) & 7,
            method: (w & 0x1FFF) << 2,
            count: (w >> 16) & MAX_COUNT,
        }
    }
}

/// Most words a GPFIFO entry's length field can hold (bits 61:40).
pub const MAX_SEGMENT_WORDS: u64 = (1 << 22) - 1;

/// Encode a GPFIFO entry for a segment of `words` words at `va`.
pub fn gpfifo_entry(va: u64, words: u64) -> Result<u64> {
    if !va.is_multiple_of(4) || va >> 39 != 0 || words > MAX_SEGMENT_WORDS {
        return Err(Error::InvalidArgument(format!(
            "segment at {va:#x} of {words} words"
        )));
    }
    Ok(va | words << 40)
}

/// A pushbuffer segment under construction.
///
/// ```
/// use vgpu_guest::pushbuf::Pushbuf;
/// let mut pb = Pushbuf::new();
/// pb.bind_classes().copy_1d(0x1000, 0x2000, 64).sem_release(0x3000, 1, false);
/// assert!(pb.len() > 0);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pushbuf {
    words: Vec<u32>,
    /// The first invalid request (sticky); submitting refuses the segment.
    error: Option<String>,
}

fn lo(v: u64) -> u32 {
    v as u32
}
fn hi(v: u64) -> u32 {
    (v >> 32) as u32
}

impl Pushbuf {
    pub fn new() -> Self {
        Self::default()
    }

    /// The segment's words.
    pub fn words(&self) -> &[u32] {
        &self.words
    }

    /// Its length in words.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The first method the builder could not encode, if any.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    fn fail(&mut self, why: String) {
        self.error.get_or_insert(why);
    }

    /// Append raw words (e.g. a deliberately malformed header).
    pub fn raw(&mut self, words: &[u32]) -> &mut Self {
        self.words.extend_from_slice(words);
        self
    }

    /// INCR: `data[i]` to `method + 4i` (at most 8191 words).
    pub fn incr(&mut self, subchannel: u32, method: u32, data: &[u32]) -> &mut Self {
        if data.len() > MAX_COUNT as usize {
            self.fail(format!("INCR of {} words to {method:#x}", data.len()));
            return self;
        }
        self.words
            .push(header(OP_INCR, subchannel, method, data.len() as u32));
        self.words.extend_from_slice(data);
        self
    }

    /// NONINCR: every data word to `method` (split into several headers
    /// past 8191 words).
    pub fn nonincr(&mut self, subchannel: u32, method: u32, data: &[u32]) -> &mut Self {
        for chunk in data.chunks(MAX_COUNT as usize) {
            self.words
                .push(header(OP_NONINCR, subchannel, method, chunk.len() as u32));
            self.words.extend_from_slice(chunk);
        }
        self
    }

    /// ONE_INC: the first word to `method`, the rest to `method + 4`
    /// (at most 8191 words).
    pub fn one_inc(&mut self, subchannel: u32, method: u32, data: &[u32]) -> &mut Self {
        if data.len() > MAX_COUNT as usize {
            self.fail(format!("ONE_INC of {} words to {method:#x}", data.len()));
            return self;
        }
        self.words
            .push(header(OP_ONE_INC, subchannel, method, data.len() as u32));
        self.words.extend_from_slice(data);
        self
    }

    /// IMMD: a 13-bit value, no data words. Larger values use INCR.
    pub fn immd(&mut self, subchannel: u32, method: u32, value: u32) -> &mut Self {
        if value > MAX_COUNT {
            return self.incr(subchannel, method, &[value]);
        }
        self.words.push(header(OP_IMMD, subchannel, method, value));
        self
    }

    /// END_SEGMENT: the device ignores the rest of the segment.
    pub fn end_segment(&mut self) -> &mut Self {
        self.words.push(header(OP_END_SEGMENT, 0, 0, 0));
        self
    }

    // ---- HOST -----------------------------------------------------------

    /// `SET_OBJECT`: bind `class` to `subchannel`.
    pub fn set_object(&mut self, subchannel: u32, class: u32) -> &mut Self {
        self.incr(subchannel, host::SET_OBJECT, &[class])
    }

    /// Bind COMPUTE to [`SUBCH_COMPUTE`] and COPY to [`SUBCH_COPY`].
    pub fn bind_classes(&mut self) -> &mut Self {
        self.set_object(SUBCH_COMPUTE, compute::CLASS)
            .set_object(SUBCH_COPY, copy::CLASS)
    }

    pub fn nop(&mut self) -> &mut Self {
        self.immd(0, host::NOP, 0)
    }

    pub fn wfi(&mut self) -> &mut Self {
        self.immd(0, host::WFI, 0)
    }

    /// `NON_STALL_INTERRUPT`: raise `HOST` for this channel.
    pub fn non_stall_interrupt(&mut self) -> &mut Self {
        self.immd(0, host::NON_STALL_INTERRUPT, 0)
    }

    /// Set semaphore address and payload, then `SEM_EXECUTE` with `exec`.
    pub fn semaphore(&mut self, va: u64, payload: u64, exec: u32) -> &mut Self {
        self.incr(
            0,
            host::SEM_ADDR_LO,
            &[lo(va), hi(va), lo(payload), hi(payload), exec],
        )
    }

    /// A 32-bit release of `payload` (optionally raising `HOST`), after
    /// all earlier work of the channel.
    pub fn sem_release(&mut self, va: u64, payload: u32, interrupt: bool) -> &mut Self {
        self.semaphore(
            va,
            payload as u64,
            host::SEM_RELEASE | if interrupt { host::SEM_INTERRUPT } else { 0 },
        )
    }

    /// A 64-bit release.
    pub fn sem_release64(&mut self, va: u64, payload: u64, interrupt: bool) -> &mut Self {
        self.semaphore(
            va,
            payload,
            host::SEM_RELEASE
                | host::SEM_PAYLOAD_64
                | if interrupt { host::SEM_INTERRUPT } else { 0 },
        )
    }

    /// A 16-byte timestamped release: payload, then the `TIMER` value.
    pub fn sem_release_timestamp(&mut self, va: u64, payload: u64) -> &mut Self {
        self.semaphore(
            va,
            payload,
            host::SEM_RELEASE | host::SEM_PAYLOAD_64 | host::SEM_TIMESTAMP,
        )
    }

    /// Block the channel until the value at `va` is ≥ `payload`
    /// (wrapping compare; 64-bit with `wide`), or equal with `equal`.
    pub fn sem_acquire(&mut self, va: u64, payload: u64, equal: bool, wide: bool) -> &mut Self {
        let op = if equal {
            host::SEM_ACQUIRE_EQ
        } else {
            host::SEM_ACQUIRE_GEQ
        };
        self.semaphore(
            va,
            payload,
            op | if wide { host::SEM_PAYLOAD_64 } else { 0 },
        )
    }

    // ---- COPY -------------------------------------------------------------

    /// Copy `bytes` from `src` to `dst` (VAs).
    pub fn copy_1d(&mut self, src: u64, dst: u64, bytes: u32) -> &mut Self {
        self.incr(
            SUBCH_COPY,
            copy::SRC_LO,
            &[lo(src), hi(src), lo(dst), hi(dst)],
        )
        .incr(SUBCH_COPY, copy::LINE_BYTES, &[bytes])
        .immd(SUBCH_COPY, copy::LAUNCH, copy::LAUNCH_COPY_1D)
    }

    /// Copy `lines` lines of `line_bytes`, line *l* from `src + l·src_pitch`
    /// to `dst + l·dst_pitch`.
    #[allow(clippy::too_many_arguments)]
    pub fn copy_2d(
        &mut self,
        src: u64,
        src_pitch: u32,
        dst: u64,
        dst_pitch: u32,
        line_bytes: u32,
        lines: u32,
    ) -> &mut Self {
        self.incr(
            SUBCH_COPY,
            copy::SRC_LO,
            &[
                lo(src),
                hi(src),
                lo(dst),
                hi(dst),
                src_pitch,
                dst_pitch,
                line_bytes,
                lines,
            ],
        )
        .immd(SUBCH_COPY, copy::LAUNCH, copy::LAUNCH_COPY_2D)
    }

    /// Fill `bytes` (a multiple of 4) at `dst` with the 32-bit `pattern`.
    pub fn memset_1d(&mut self, dst: u64, pattern: u32, bytes: u32) -> &mut Self {
        self.incr(SUBCH_COPY, copy::DST_LO, &[lo(dst), hi(dst)])
            .incr(SUBCH_COPY, copy::LINE_BYTES, &[bytes])
            .incr(SUBCH_COPY, copy::MEMSET_PATTERN, &[pattern])
            .immd(SUBCH_COPY, copy::LAUNCH, copy::LAUNCH_MEMSET_1D)
    }

    /// Fill `lines` lines of `line_bytes` at `dst`, `dst_pitch` apart.
    pub fn memset_2d(
        &mut self,
        dst: u64,
        dst_pitch: u32,
        pattern: u32,
        line_bytes: u32,
        lines: u32,
    ) -> &mut Self {
        self.incr(SUBCH_COPY, copy::DST_LO, &[lo(dst), hi(dst)])
            .incr(
                SUBCH_COPY,
                copy::DST_PITCH,
                &[dst_pitch, line_bytes, lines, pattern],
            )
            .immd(SUBCH_COPY, copy::LAUNCH, copy::LAUNCH_MEMSET_2D)
    }

    // ---- COMPUTE ------------------------------------------------------------

    /// Run `program` (a built-in id, or `0x100 | slot`) with the parameter
    /// block at `params` of `size` bytes.
    pub fn launch(&mut self, program: u32, params: u64, size: u32) -> &mut Self {
        self.incr(
            SUBCH_COMPUTE,
            compute::PROGRAM,
            &[program, lo(params), hi(params), size],
        )
        .immd(SUBCH_COMPUTE, compute::LAUNCH, 0)
    }

    /// Load the PTX text at `va` (`size` bytes) into module `slot`.
    pub fn module_load(&mut self, slot: u32, va: u64, size: u32) -> &mut Self {
        self.incr(SUBCH_COMPUTE, compute::MODULE_LO, &[lo(va), hi(va), size])
            .immd(SUBCH_COMPUTE, compute::MODULE_LOAD, slot)
    }

    /// Set the module log buffer (`MODULE_LOG_*`) to `size` bytes at `va`
    /// (0 = no log) for the channel's next `MODULE_LOAD`s: method state,
    /// kept until set again or the channel is reset.
    pub fn module_log(&mut self, va: u64, size: u32) -> &mut Self {
        if size > compute::MAX_MODULE_LOG {
            self.fail(format!("module log of {size} bytes"));
            return self;
        }
        self.incr(
            SUBCH_COMPUTE,
            compute::MODULE_LOG_LO,
            &[lo(va), hi(va), size],
        )
    }

    /// Load the PTX text at `va` (`size` bytes) into module `slot`, the
    /// JIT's log going to `log_size` bytes at `log_va`.
    pub fn module_load_logged(
        &mut self,
        slot: u32,
        va: u64,
        size: u32,
        log_va: u64,
        log_size: u32,
    ) -> &mut Self {
        self.module_log(log_va, log_size)
            .module_load(slot, va, size)
    }

    /// Unload module `handle` (ABI 1.3).
    pub fn module_unload(&mut self, handle: u32) -> &mut Self {
        self.immd(SUBCH_COMPUTE, compute::MODULE_UNLOAD, handle)
    }

    /// `FUNC_INFO` (`function` is `true`) or `MODULE_GLOBAL` of the name at `name_va`
    /// (`name_len` bytes) in module `handle`, answered at `info_va` (ABI 1.3).
    pub fn module_query(
        &mut self,
        function: bool,
        handle: u32,
        name_va: u64,
        name_len: u32,
        info_va: u64,
    ) -> &mut Self {
        let method = if function {
            compute::FUNC_INFO
        } else {
            compute::MODULE_GLOBAL
        };
        self.incr(
            SUBCH_COMPUTE,
            compute::FUNC_NAME_LO,
            &[lo(name_va), hi(name_va), name_len],
        )
        .incr(SUBCH_COMPUTE, compute::INFO_LO, &[lo(info_va), hi(info_va)])
        .immd(SUBCH_COMPUTE, method, handle)
    }

    /// Launch function `name_va` (`name_len` bytes) of module `handle` (ABI 1.3) on `grid` ×
    /// `block` threads with `shared` bytes of dynamic shared memory and the parameter block
    /// at `params`.
    #[allow(clippy::too_many_arguments)]
    pub fn launch_module(
        &mut self,
        handle: u32,
        name_va: u64,
        name_len: u32,
        grid: [u32; 3],
        block: [u32; 3],
        shared: u32,
        params: u64,
        size: u32,
    ) -> &mut Self {
        self.incr(
            SUBCH_COMPUTE,
            compute::GRID_X,
            &[grid[0], grid[1], grid[2], block[0], block[1], block[2]],
        )
        .incr(
            SUBCH_COMPUTE,
            compute::FUNC_NAME_LO,
            &[lo(name_va), hi(name_va), name_len],
        )
        .incr(SUBCH_COMPUTE, compute::SHARED_MEM_BYTES, &[shared, handle])
        .launch(compute::PROGRAM_MODULE, params, size)
    }

    /// Launch PTX function `name_va` (`name_len` bytes) of module `slot`
    /// on `grid` × `block` threads with the parameter block at `params`.
    #[allow(clippy::too_many_arguments)]
    pub fn launch_ptx(
        &mut self,
        slot: u32,
        name_va: u64,
        name_len: u32,
        grid: [u32; 3],
        block: [u32; 3],
        params: u64,
        size: u32,
    ) -> &mut Self {
        self.incr(
            SUBCH_COMPUTE,
            compute::GRID_X,
            &[grid[0], grid[1], grid[2], block[0], block[1], block[2]],
        )
        .incr(
            SUBCH_COMPUTE,
            compute::FUNC_NAME_LO,
            &[lo(name_va), hi(name_va), name_len],
        )
        .launch(compute::PROGRAM_PTX | slot, params, size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_bits_follow_the_abi() {
        // INCR of 2 words to method 0x104 on subchannel 4.
        let h = header(OP_INCR, 4, 0x104, 2);
        assert_eq!(h & 0x1FFF, 0x104 / 4);
        assert_eq!((h >> 13) & 7, 4);
        assert_eq!((h >> 16) & 0x1FFF, 2);
        assert_eq!(h >> 29, 1);
        assert_eq!(h, 0x2002_8041);
        assert_eq!(header(OP_IMMD, 1, 0x180, 0), 0x8000_2060);
        assert_eq!(header(OP_END_SEGMENT, 0, 0, 0), 0xE000_0000);
        assert_eq!(
            Header::decode(header(OP_NONINCR, 7, 0x7FFC, MAX_COUNT)),
            Header {
                opcode: 3,
                subchannel: 7,
                method: 0x7FFC,
                count: 8191
            }
        );
    }

    #[test]
    fn gpfifo_entry_layout() {
        assert_eq!(
            gpfifo_entry(0x40_0000_1000, 5).unwrap(),
            0x40_0000_1000 | 5 << 40
        );
        assert_eq!(
            gpfifo_entry(0x7F_FFFF_FFFC, MAX_SEGMENT_WORDS).unwrap() >> 62,
            0,
            "bits 63:62 stay clear"
        );
        assert!(gpfifo_entry(0x1002, 1).is_err());
        assert!(gpfifo_entry(1 << 39, 1).is_err());
        assert!(gpfifo_entry(0, 1 << 22).is_err());
    }

    #[test]
    fn builder_emits_expected_words() {
        let mut pb = Pushbuf::new();
        pb.bind_classes();
        assert_eq!(
            pb.words(),
            &[
                header(OP_INCR, 1, 0, 1),
                0x56C0,
                header(OP_INCR, 4, 0, 1),
                0x56B5
            ]
        );

        let mut pb = Pushbuf::new();
        pb.sem_release64(0x1_2345_6780, 0xAABB_CCDD_0011_2233, true);
        assert_eq!(
            pb.words(),
            &[
                header(OP_INCR, 0, 0x10, 5),
                0x2345_6780,
                1,
                0x0011_2233,
                0xAABB_CCDD,
                1 | 1 << 8 | 1 << 10
            ]
        );

        let mut pb = Pushbuf::new();
        pb.copy_2d(0x1000, 64, 0x2000, 128, 32, 3);
        assert_eq!(
            pb.words(),
            &[
                header(OP_INCR, 4, 0x100, 8),
                0x1000,
                0,
                0x2000,
                0,
                64,
                128,
                32,
                3,
                header(OP_IMMD, 4, 0x124, 1)
            ]
        );

        let mut pb = Pushbuf::new();
        pb.launch(3, 0x40_0000_0000, 48);
        assert_eq!(
            pb.words(),
            &[
                header(OP_INCR, 1, 0x100, 4),
                3,
                0,
                0x40,
                48,
                header(OP_IMMD, 1, 0x180, 0)
            ]
        );

        let mut pb = Pushbuf::new();
        pb.module_load_logged(2, 0x1000, 300, 0x2000, 16384);
        assert_eq!(
            pb.words(),
            &[
                header(OP_INCR, 1, 0x144, 3),
                0x2000,
                0,
                16384,
                header(OP_INCR, 1, 0x128, 3),
                0x1000,
                0,
                300,
                header(OP_IMMD, 1, 0x134, 2)
            ]
        );
        let mut pb = Pushbuf::new();
        pb.module_log(0x2000, compute::MAX_MODULE_LOG + 1);
        assert!(pb.error().is_some() && pb.is_empty());

        let mut pb = Pushbuf::new();
        pb.immd(0, host::NOP, 0x12345);
        assert_eq!(
            pb.words(),
            &[header(OP_INCR, 0, 8, 1), 0x12345],
            "large immediates fall back to INCR"
        );
    }

    #[test]
    fn long_data_is_split_or_refused() {
        let data = vec![7u32; 9000];
        let mut pb = Pushbuf::new();
        pb.nonincr(2, 0x200, &data);
        let h1 = Header::decode(pb.words()[0]);
        assert_eq!(
            (h1.opcode, h1.method, h1.count),
            (OP_NONINCR, 0x200, MAX_COUNT)
        );
        let h2 = Header::decode(pb.words()[1 + MAX_COUNT as usize]);
        assert_eq!((h2.method, h2.count), (0x200, 9000 - MAX_COUNT));
        assert_eq!(pb.len(), 9002);
        assert!(pb.error().is_none());
        // INCR cannot continue past one header: the method field would overflow.
        pb.incr(2, 0x200, &data).nop();
        assert!(pb.error().is_some_and(|e| e.contains("INCR of 9000")));
        assert_eq!(pb.len(), 9003, "nothing of the refused INCR was emitted");
    }
}
