//! The BAR0 register map of ABI v1, declared once as data.
//!
//! Every register is 32 bits wide. Global registers live below
//! [`CHANNEL_BASE`]; channel `c` has a block of [`CHANNEL_REGS`] at
//! `CHANNEL_BASE + c * CHANNEL_STRIDE`. Anything else inside BAR0 is a hole:
//! it reads as zero and ignores writes. `docs/abi.md` is the normative text;
//! the tables below are checked against it by the tests of this crate.

use bitfield::bitfield;

/// `ID` register value: ASCII "VGPU" read as a little-endian dword.
pub const ID_MAGIC: u32 = 0x5550_4756;
/// `VERSION` register value: ABI major 1, minor 3.
pub const ABI_VERSION: u32 = 0x0001_0003;
/// Offset of channel 0's register block.
pub const CHANNEL_BASE: u32 = 0x1000;
/// Distance between two channels' register blocks.
pub const CHANNEL_STRIDE: u32 = 0x20;
/// Largest number of channels a vGPU type may have.
pub const MAX_CHANNELS: u32 = 64;

/// How a register reacts to guest accesses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read-only: guest writes are ignored; the device sets the value.
    Ro,
    /// Read-write: bits in `mask` take the written value.
    Rw,
    /// Write-1-to-clear: writing a 1 to a bit in `mask` clears it.
    W1c,
    /// Write-only command: the write is an action, reads return 0.
    Wo,
}

/// One register: where it is, how it behaves, what it holds after reset.
#[derive(Clone, Copy, Debug)]
pub struct RegDesc<R> {
    pub reg: R,
    pub name: &'static str,
    pub offset: u32,
    pub access: Access,
    /// Value after reset (for identity registers: set by the device model).
    pub reset: u32,
    /// Bits that exist; for RW the writable ones, for W1C the clearable ones.
    pub mask: u32,
}

/// Global (per-vGPU) registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GlobalReg {
    Id,
    Version,
    Caps,
    NumChannels,
    VramSizeLo,
    VramSizeHi,
    PtxVaBaseLo,
    PtxVaBaseHi,
    IntrStatus,
    IntrEnable,
    IntrChannelLo,
    IntrChannelHi,
    TimerLo,
    TimerHi,
    Reset,
    Status,
    MmuInvalidate,
    MmuFaultInfo,
    MmuFaultAddrLo,
    MmuFaultAddrHi,
    RunlistBaseLo,
    RunlistBaseHi,
    RunlistSubmit,
    RunlistInfo,
    Doorbell,
    InfoIndex,
    InfoData,
}

impl GlobalReg {
    /// The register's BAR0 offset, from [`GLOBAL_REGS`].
    pub const fn offset(self) -> u32 {
        // GLOBAL_REGS is declared in enum order (checked by a test).
        GLOBAL_REGS[self as usize].offset
    }
}

/// A channel number: an index into the vGPU's channels, below
/// `NUM_CHANNELS` (at most [`MAX_CHANNELS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub u32);

impl ChannelId {
    /// The channel's index into per-channel tables.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
    /// The BAR0 offset of register `reg` of this channel.
    pub const fn reg_offset(self, reg: ChannelReg) -> u32 {
        CHANNEL_BASE + self.0 * CHANNEL_STRIDE + reg.offset()
    }
}

impl std::fmt::Display for ChannelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Per-channel registers (offsets relative to the channel's block).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChannelReg {
    InstLo,
    InstHi,
    Ctrl,
    Status,
    GpGet,
    GpPut,
    ErrorInfo,
}

impl ChannelReg {
    /// The register's offset inside a channel's block, from [`CHANNEL_REGS`].
    pub const fn offset(self) -> u32 {
        // CHANNEL_REGS is declared in enum order (checked by a test).
        CHANNEL_REGS[self as usize].offset
    }
}

/// One row of a register table, its fields by name:
/// `reg!(GlobalReg::Status, "STATUS", offset: 0x044, access: Ro, reset: 0, mask: 1)`.
macro_rules! reg {
    ($reg:expr, $name:literal, offset: $offset:expr, access: $access:ident, reset: $reset:expr, mask: $mask:expr) => {
        RegDesc {
            reg: $reg,
            name: $name,
            offset: $offset,
            access: Access::$access,
            reset: $reset,
            mask: $mask,
        }
    };
}

/// The global register map.
pub const GLOBAL_REGS: &[RegDesc<GlobalReg>] = &[
    reg!(GlobalReg::Id, "ID", offset: 0x000, access: Ro, reset: ID_MAGIC, mask: !0),
    reg!(GlobalReg::Version, "VERSION", offset: 0x004, access: Ro, reset: ABI_VERSION, mask: !0),
    reg!(GlobalReg::Caps, "CAPS", offset: 0x008, access: Ro, reset: 0, mask: !0),
    reg!(GlobalReg::NumChannels, "NUM_CHANNELS", offset: 0x00C, access: Ro, reset: 0, mask: 0xFF),
    reg!(GlobalReg::VramSizeLo, "VRAM_SIZE_LO", offset: 0x010, access: Ro, reset: 0, mask: !0),
    reg!(GlobalReg::VramSizeHi, "VRAM_SIZE_HI", offset: 0x014, access: Ro, reset: 0, mask: !0),
    reg!(GlobalReg::PtxVaBaseLo, "PTX_VA_BASE_LO", offset: 0x018, access: Ro, reset: 0, mask: !0),
    reg!(GlobalReg::PtxVaBaseHi, "PTX_VA_BASE_HI", offset: 0x01C, access: Ro, reset: 0, mask: !0),
    reg!(GlobalReg::IntrStatus, "INTR_STATUS", offset: 0x020, access: W1c, reset: 0, mask: Intr::ALL),
    reg!(GlobalReg::IntrEnable, "INTR_ENABLE", offset: 0x024, access: Rw, reset: 0, mask: Intr::ALL),
    reg!(GlobalReg::IntrChannelLo, "INTR_CHANNEL_LO", offset: 0x028, access: W1c, reset: 0, mask: !0),
    reg!(GlobalReg::IntrChannelHi, "INTR_CHANNEL_HI", offset: 0x02C, access: W1c, reset: 0, mask: !0),
    reg!(GlobalReg::TimerLo, "TIMER_LO", offset: 0x030, access: Ro, reset: 0, mask: !0),
    reg!(GlobalReg::TimerHi, "TIMER_HI", offset: 0x034, access: Ro, reset: 0, mask: !0),
    reg!(GlobalReg::Reset, "RESET", offset: 0x040, access: Wo, reset: 0, mask: 1),
    reg!(GlobalReg::Status, "STATUS", offset: 0x044, access: Ro, reset: 0, mask: 1),
    reg!(GlobalReg::MmuInvalidate, "MMU_INVALIDATE", offset: 0x080, access: Wo, reset: 0, mask: !0),
    reg!(GlobalReg::MmuFaultInfo, "MMU_FAULT_INFO", offset: 0x084, access: W1c, reset: 0, mask: 0x8000_0000),
    reg!(GlobalReg::MmuFaultAddrLo, "MMU_FAULT_ADDR_LO", offset: 0x088, access: Ro, reset: 0, mask: !0),
    reg!(GlobalReg::MmuFaultAddrHi, "MMU_FAULT_ADDR_HI", offset: 0x08C, access: Ro, reset: 0, mask: !0),
    reg!(GlobalReg::RunlistBaseLo, "RUNLIST_BASE_LO", offset: 0x090, access: Rw, reset: 0, mask: !7),
    reg!(GlobalReg::RunlistBaseHi, "RUNLIST_BASE_HI", offset: 0x094, access: Rw, reset: 0, mask: !0),
    reg!(GlobalReg::RunlistSubmit, "RUNLIST_SUBMIT", offset: 0x098, access: Wo, reset: 0, mask: 0xFF),
    reg!(GlobalReg::RunlistInfo, "RUNLIST_INFO", offset: 0x09C, access: Ro, reset: 0, mask: !0),
    reg!(GlobalReg::Doorbell, "DOORBELL", offset: 0x0A0, access: Wo, reset: 0, mask: 0xFF),
    reg!(GlobalReg::InfoIndex, "INFO_INDEX", offset: 0x0B0, access: Rw, reset: 0, mask: !0),
    reg!(GlobalReg::InfoData, "INFO_DATA", offset: 0x0B4, access: Ro, reset: 0, mask: !0),
];

/// The per-channel register map.
pub const CHANNEL_REGS: &[RegDesc<ChannelReg>] = &[
    reg!(ChannelReg::InstLo, "CH_INST_LO", offset: 0x00, access: Rw, reset: 0, mask: !0xFFF),
    reg!(ChannelReg::InstHi, "CH_INST_HI", offset: 0x04, access: Rw, reset: 0, mask: !0),
    reg!(ChannelReg::Ctrl, "CH_CTRL", offset: 0x08, access: Rw, reset: 0, mask: ChannelCtrl::ENABLE),
    reg!(ChannelReg::Status, "CH_STATUS", offset: 0x0C, access: Ro, reset: 0, mask: !0),
    reg!(ChannelReg::GpGet, "CH_GP_GET", offset: 0x10, access: Ro, reset: 0, mask: !0),
    reg!(ChannelReg::GpPut, "CH_GP_PUT", offset: 0x14, access: Ro, reset: 0, mask: !0),
    reg!(ChannelReg::ErrorInfo, "CH_ERROR_INFO", offset: 0x18, access: Ro, reset: 0, mask: !0),
];

/// Interrupt cause bits shared by `INTR_STATUS` and `INTR_ENABLE`.
pub struct Intr;
impl Intr {
    /// A channel executed HOST `NON_STALL_INTERRUPT` or a semaphore release
    /// with its interrupt flag.
    pub const HOST: u32 = 1 << 0;
    /// A channel stopped on a GPU-MMU fault (see `MMU_FAULT_*`).
    pub const MMU_FAULT: u32 = 1 << 1;
    /// A channel stopped on a non-MMU error (bad method, instance block...).
    pub const CHANNEL_ERROR: u32 = 1 << 2;
    /// All defined cause bits.
    pub const ALL: u32 = 0x7;
}

bitfield! {
    /// `CAPS`: what this vGPU and its backend can do.
    #[derive(Clone, Copy, PartialEq, Eq)]
    pub struct Caps(pub u32);
    impl Debug;
    /// The backend runs guest-supplied PTX (COMPUTE `MODULE_LOAD`).
    pub ptx, set_ptx: 0;
    /// 2 MiB GMMU pages are supported (always 1 in ABI v1).
    pub large_pages, set_large_pages: 1;
    /// BAR4 is the doorbell page (ABI 1.1, [`crate::doorbell`]).
    pub doorbell_page, set_doorbell_page: 2;
    /// Number of MSI-X vectors.
    pub u8, msix_vectors, set_msix_vectors: 15, 8;
}

/// Channel control (`CH_CTRL`) bits.
pub struct ChannelCtrl;
impl ChannelCtrl {
    /// Channel enabled: it fetches GPFIFO entries when the doorbell rings.
    pub const ENABLE: u32 = 1 << 0;
    /// Write-1 action: stop the channel, drop its queued work, clear its
    /// error and GP_GET. Always reads as 0.
    pub const RESET: u32 = 1 << 1;
}

/// Channel states reported in `CH_STATUS[3:0]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ChannelState {
    Disabled = 0,
    Idle = 1,
    Pending = 2,
    Running = 3,
    Blocked = 4,
    Faulted = 5,
}

bitfield! {
    /// `CH_STATUS`: the state of one channel.
    #[derive(Clone, Copy, PartialEq, Eq, Default)]
    pub struct ChannelStatus(pub u32);
    impl Debug;
    /// A [`ChannelState`].
    pub u8, state, set_state: 3, 0;
    /// An [`ErrorCode`] when the state is FAULTED, else 0.
    pub u8, error, set_error: 15, 8;
}

bitfield! {
    /// `MMU_FAULT_INFO`: the first unacknowledged GPU-MMU fault.
    #[derive(Clone, Copy, PartialEq, Eq, Default)]
    pub struct MmuFaultInfo(pub u32);
    impl Debug;
    /// An MMU [`ErrorCode`].
    pub u8, code, set_code: 7, 0;
    /// The faulting channel.
    pub u8, channel, set_channel: 15, 8;
    /// The faulting access was a write.
    pub write, set_write: 16;
    /// The record holds a fault; write 1 to clear it.
    pub valid, set_valid: 31;
}

bitfield! {
    /// `RUNLIST_INFO`: outcome of the last `RUNLIST_SUBMIT`.
    #[derive(Clone, Copy, PartialEq, Eq, Default)]
    pub struct RunlistInfo(pub u32);
    impl Debug;
    /// Entries accepted.
    pub u8, entries, set_entries: 7, 0;
    /// An [`ErrorCode`] when the submit was rejected.
    pub u8, error, set_error: 15, 8;
    /// The last submit was rejected; the previous runlist stays in force.
    pub rejected, set_rejected: 31;
}

/// Fault and error codes (`CH_STATUS.ERROR`, `MMU_FAULT_INFO.CODE`, error
/// notifier). Codes below 0x20 are GPU-MMU faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ErrorCode {
    PdeInvalid = 0x01,
    PteInvalid = 0x02,
    ReadOnly = 0x03,
    VramRange = 0x04,
    SysmemUnmapped = 0x05,
    PageTableUnmapped = 0x06,
    VaRange = 0x07,
    MisalignedPage = 0x08,
    InstanceInvalid = 0x20,
    GpfifoEntryInvalid = 0x21,
    MalformedHeader = 0x22,
    PushbufferTruncated = 0x23,
    InvalidSubchannel = 0x24,
    InvalidClass = 0x25,
    InvalidMethod = 0x26,
    InvalidArgument = 0x27,
    Unsupported = 0x28,
    EngineError = 0x29,
    RunlistInvalid = 0x2A,
    SemaphoreTimeout = 0x2B,
    EngineTimeout = 0x2C,
    ModuleInvalid = 0x2D,
    KernelFault = 0x2E,
}

impl ChannelState {
    /// The channel has work it has not finished (pending, running or
    /// blocked): what `STATUS.BUSY` sums up.
    pub fn is_busy(self) -> bool {
        matches!(
            self,
            ChannelState::Pending | ChannelState::Running | ChannelState::Blocked
        )
    }
}

impl ErrorCode {
    /// GPU-MMU faults raise `INTR_STATUS.MMU_FAULT` and fill `MMU_FAULT_*`.
    pub fn is_mmu_fault(self) -> bool {
        (self as u8) < 0x20
    }
}
