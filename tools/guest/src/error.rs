//! The driver's one error type.

use std::fmt;
use std::time::Duration;

/// A fault or error code as the device reports it (ABI §9): in
/// `CH_STATUS[15:8]`, `MMU_FAULT_INFO[7:0]`, the error notifier and
/// `RUNLIST_INFO[15:8]`. Codes below 0x20 are GPU-MMU faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    PdeInvalid,
    PteInvalid,
    ReadOnly,
    VramRange,
    SysmemUnmapped,
    PageTableUnmapped,
    VaRange,
    MisalignedPage,
    InstanceInvalid,
    GpfifoEntryInvalid,
    MalformedHeader,
    PushbufferTruncated,
    InvalidSubchannel,
    InvalidClass,
    InvalidMethod,
    InvalidArgument,
    Unsupported,
    EngineError,
    RunlistInvalid,
    SemaphoreTimeout,
    EngineTimeout,
    /// A `MODULE_LOAD` whose PTX the GPU's JIT rejected: the module log
    /// buffer holds why, `CH_ERROR_INFO` the CUDA error number.
    ModuleInvalid,
    /// The GPU faulted running the channel's work (an illegal address, a
    /// trap, a misaligned access in a guest kernel). The vGPU's engine
    /// context is lost with it: its other channels with work in flight stop
    /// with `ENGINE_ERROR`, modules are unloaded, VRAM contents are lost
    /// until an engine reset brings a new context.
    KernelFault,
    /// A code ABI v1 does not define.
    Unknown(u8),
}

impl ErrorCode {
    /// Decode a raw code.
    pub fn from_raw(code: u8) -> Self {
        use ErrorCode::*;
        match code {
            0x01 => PdeInvalid,
            0x02 => PteInvalid,
            0x03 => ReadOnly,
            0x04 => VramRange,
            0x05 => SysmemUnmapped,
            0x06 => PageTableUnmapped,
            0x07 => VaRange,
            0x08 => MisalignedPage,
            0x20 => InstanceInvalid,
            0x21 => GpfifoEntryInvalid,
            0x22 => MalformedHeader,
            0x23 => PushbufferTruncated,
            0x24 => InvalidSubchannel,
            0x25 => InvalidClass,
            0x26 => InvalidMethod,
            0x27 => InvalidArgument,
            0x28 => Unsupported,
            0x29 => EngineError,
            0x2A => RunlistInvalid,
            0x2B => SemaphoreTimeout,
            0x2C => EngineTimeout,
            0x2D => ModuleInvalid,
            0x2E => KernelFault,
            c => Unknown(c),
        }
    }

    /// The raw code.
    pub fn raw(self) -> u8 {
        use ErrorCode::*;
        match self {
            PdeInvalid => 0x01,
            PteInvalid => 0x02,
            ReadOnly => 0x03,
            VramRange => 0x04,
            SysmemUnmapped => 0x05,
            PageTableUnmapped => 0x06,
            VaRange => 0x07,
            MisalignedPage => 0x08,
            InstanceInvalid => 0x20,
            GpfifoEntryInvalid => 0x21,
            MalformedHeader => 0x22,
            PushbufferTruncated => 0x23,
            InvalidSubchannel => 0x24,
            InvalidClass => 0x25,
            InvalidMethod => 0x26,
            InvalidArgument => 0x27,
            Unsupported => 0x28,
            EngineError => 0x29,
            RunlistInvalid => 0x2A,
            SemaphoreTimeout => 0x2B,
            EngineTimeout => 0x2C,
            ModuleInvalid => 0x2D,
            KernelFault => 0x2E,
            Unknown(c) => c,
        }
    }

    /// GPU-MMU faults (codes below 0x20) raise `MMU_FAULT`; the others `CHANNEL_ERROR`.
    pub fn is_mmu_fault(self) -> bool {
        self.raw() < 0x20
    }
}

impl ErrorCode {
    /// The ABI's name of the code (`None` for [`ErrorCode::Unknown`]).
    pub fn name(self) -> Option<&'static str> {
        use ErrorCode::*;
        Some(match self {
            PdeInvalid => "PDE_INVALID",
            PteInvalid => "PTE_INVALID",
            ReadOnly => "READ_ONLY",
            VramRange => "VRAM_RANGE",
            SysmemUnmapped => "SYSMEM_UNMAPPED",
            PageTableUnmapped => "PAGE_TABLE_UNMAPPED",
            VaRange => "VA_RANGE",
            MisalignedPage => "MISALIGNED_PAGE",
            InstanceInvalid => "INSTANCE_INVALID",
            GpfifoEntryInvalid => "GPFIFO_ENTRY_INVALID",
            MalformedHeader => "MALFORMED_HEADER",
            PushbufferTruncated => "PUSHBUFFER_TRUNCATED",
            InvalidSubchannel => "INVALID_SUBCHANNEL",
            InvalidClass => "INVALID_CLASS",
            InvalidMethod => "INVALID_METHOD",
            InvalidArgument => "INVALID_ARGUMENT",
            Unsupported => "UNSUPPORTED",
            EngineError => "ENGINE_ERROR",
            RunlistInvalid => "RUNLIST_INVALID",
            SemaphoreTimeout => "SEMAPHORE_TIMEOUT",
            EngineTimeout => "ENGINE_TIMEOUT",
            ModuleInvalid => "MODULE_INVALID",
            KernelFault => "KERNEL_FAULT",
            Unknown(_) => return None,
        })
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({:#04x})", self.raw()),
            None => write!(f, "unknown error {:#04x}", self.raw()),
        }
    }
}

/// Everything that can go wrong in the driver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The vfio-user connection failed.
    #[error("vfio-user: {0}")]
    VfioUser(#[from] vfio_user::Error),
    /// The function is not a vgpud vGPU of a supported ABI.
    #[error("not a usable vgpud device: {0}")]
    NotVgpu(String),
    /// An allocator (VRAM, GPU VA, DMA memory, GPFIFO slot) is exhausted.
    #[error("out of {what}: {bytes:#x} bytes requested")]
    OutOfMemory { what: &'static str, bytes: u64 },
    /// A caller-supplied argument violates an ABI limit.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Something did not happen in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    /// A channel stopped on an error (ABI §9); recover it with `Channel::recover`.
    #[error("channel {channel} faulted: {code}, info {info:#x}")]
    ChannelFault {
        channel: u32,
        code: ErrorCode,
        info: u32,
    },
    /// A `MODULE_LOAD` was rejected by the GPU's JIT (`MODULE_INVALID`):
    /// `info` is the CUDA error number, `log` the JIT's error log. The
    /// channel has been recovered.
    #[error("channel {channel}: PTX module rejected (CUDA error {info}): {log}")]
    ModuleInvalid {
        channel: u32,
        info: u32,
        log: String,
    },
    /// `RUNLIST_SUBMIT` was rejected (`RUNLIST_INFO.REJECTED`).
    #[error("runlist rejected: {0}")]
    RunlistRejected(ErrorCode),
    /// The device does not offer the feature (e.g. `CAPS.PTX` = 0).
    #[error("{0} is not supported by this device")]
    Unsupported(&'static str),
    /// The device returned something the ABI does not allow.
    #[error("device protocol violation: {0}")]
    Protocol(String),
}

impl Error {
    /// Wrap an `io::Error` with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// The code a channel stopped with, for [`Error::ChannelFault`] and
    /// [`Error::ModuleInvalid`]; `None` for every other error.
    pub fn channel_code(&self) -> Option<ErrorCode> {
        match self {
            Error::ChannelFault { code, .. } => Some(*code),
            Error::ModuleInvalid { .. } => Some(ErrorCode::ModuleInvalid),
            _ => None,
        }
    }

    /// The last OS error, with what was being done.
    pub fn last_os(what: impl Into<String>) -> Self {
        Error::io(what, std::io::Error::last_os_error())
    }
}

/// The driver's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for c in 0..=0xFFu8 {
            assert_eq!(ErrorCode::from_raw(c).raw(), c);
        }
        assert!(ErrorCode::VaRange.is_mmu_fault());
        assert!(!ErrorCode::InstanceInvalid.is_mmu_fault());
        assert_eq!(ErrorCode::Unsupported.to_string(), "UNSUPPORTED (0x28)");
        assert_eq!(ErrorCode::from_raw(0x2D), ErrorCode::ModuleInvalid);
        assert_eq!(ErrorCode::from_raw(0x2E), ErrorCode::KernelFault);
        assert_eq!(ErrorCode::KernelFault.to_string(), "KERNEL_FAULT (0x2e)");
        assert!(!ErrorCode::ModuleInvalid.is_mmu_fault());
        assert!(!ErrorCode::KernelFault.is_mmu_fault());
    }
}
