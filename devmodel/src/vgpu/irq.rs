//! Interrupts and channel faults: `INTR_STATUS` causes, per-channel
//! pending bits, MSI-X delivery through the VMM's eventfd, and what a
//! channel error records (`CH_STATUS`, `CH_ERROR_INFO`, the MMU fault
//! registers and the error notifier in guest memory).

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;

use mmio::regs::{ChannelId, ChannelReg, ErrorCode, GlobalReg, Intr, MmuFaultInfo};
use mmio::RegRef;

use super::pfifo::write_extents;
use super::{Core, State};
use crate::backend::ExecError;
use crate::channel::NOTIFIER_SIZE;
use crate::gmmu::Fault;
use crate::memory::MemError;
use crate::pushbuf::SegmentError;
use crate::DeviceError;

/// Check that `fd` is an eventfd and make writes to it non-blocking, so
/// that delivering an interrupt can never wait (a pipe that nobody reads
/// would block the front end; so would an eventfd whose counter a client
/// pushed to its maximum).
pub(super) fn make_interrupt_fd(fd: &File) -> Result<(), DeviceError> {
    let raw = fd.as_raw_fd();
    let target = std::fs::read_link(format!("/proc/self/fd/{raw}")).unwrap_or_default();
    if target.as_os_str() != "anon_inode:[eventfd]" {
        return Err(DeviceError::NotEventFd(target.display().to_string()));
    }
    // SAFETY: fcntl(F_GETFL/F_SETFL) take integers and touch no process
    // memory; `raw` is an open descriptor `fd` owns for the call.
    let ok = unsafe {
        let flags = libc::fcntl(raw, libc::F_GETFL);
        flags >= 0 && libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    };
    if ok {
        Ok(())
    } else {
        Err(DeviceError::NotEventFd(
            std::io::Error::last_os_error().to_string(),
        ))
    }
}

/// A channel error as the front end records it.
#[derive(Clone, Copy, Debug)]
pub struct ChannelError {
    pub code: ErrorCode,
    /// `CH_ERROR_INFO`: the offending word, GPFIFO slot or address.
    pub info: u32,
    /// The GPU-MMU fault behind an MMU error code.
    pub fault: Option<Fault>,
}

impl ChannelError {
    pub fn new(code: ErrorCode, info: u32) -> Self {
        ChannelError {
            code,
            info,
            fault: None,
        }
    }
}

impl From<SegmentError> for ChannelError {
    fn from(e: SegmentError) -> Self {
        ChannelError {
            code: e.code,
            info: e.word,
            fault: e.fault,
        }
    }
}

impl From<Fault> for ChannelError {
    fn from(f: Fault) -> Self {
        ChannelError {
            code: f.code,
            info: 0,
            fault: Some(f),
        }
    }
}

/// The error code a failed engine item or HOST memory access stops its
/// channel with.
impl From<&ExecError> for ErrorCode {
    fn from(e: &ExecError) -> Self {
        match e {
            ExecError::Memory(MemError::ReadOnly { .. }) => ErrorCode::ReadOnly,
            ExecError::Memory(_) => ErrorCode::SysmemUnmapped,
            ExecError::VramRange { .. } => ErrorCode::VramRange,
            ExecError::Cancelled
            | ExecError::ShortExtents(_)
            | ExecError::EngineFailed(_)
            | ExecError::NoPtx => ErrorCode::EngineError,
            ExecError::Timeout => ErrorCode::EngineTimeout,
            ExecError::ModuleInvalid(_) => ErrorCode::ModuleInvalid,
            ExecError::LaunchRefused(_) => ErrorCode::InvalidArgument,
            ExecError::KernelFault(_) => ErrorCode::KernelFault,
        }
    }
}

impl Core {
    /// Set `cause` in `INTR_STATUS` and `channel`'s pending bit, and signal
    /// MSI-X if the cause is enabled.
    pub(super) fn raise(&self, st: &mut State, cause: u32, channel: ChannelId) {
        st.regs
            .set_bits(RegRef::Global(GlobalReg::IntrStatus), cause);
        let (reg, bit) = if channel.0 < 32 {
            (GlobalReg::IntrChannelLo, channel.0)
        } else {
            (GlobalReg::IntrChannelHi, channel.0 - 32)
        };
        st.regs.set_bits(RegRef::Global(reg), 1 << bit);
        st.stats.interrupts_raised += 1;
        if st.regs.get(RegRef::Global(GlobalReg::IntrEnable)) & cause != 0 {
            self.signal(st);
        }
    }

    /// Deliver MSI-X vector 0. The eventfd is non-blocking: a counter a
    /// client saturated loses this message rather than stalling the device.
    pub(super) fn signal(&self, st: &mut State) {
        if let Some(Some(fd)) = st.irqs.first_mut() {
            // An eventfd write moves all 8 bytes or none.
            match fd.write(&1u64.to_ne_bytes()) {
                Ok(8) => st.stats.msi_delivered += 1,
                Ok(n) => tracing::debug!(written = n, "MSI-X eventfd write was short"),
                Err(e) => tracing::debug!(error = %e, "MSI-X eventfd write failed"),
            }
        }
    }

    /// Stop channel `ch` on `e`: record the error, fill the MMU fault
    /// registers for an MMU fault (unless an unacknowledged one is there),
    /// raise the interrupt and write the channel's error notifier.
    pub(super) fn fault(&self, st: &mut State, ch: ChannelId, e: ChannelError) {
        let now = self.now_ns();
        let c = st.channel(ch);
        c.fault(e.code);
        self.ctx.cancel_channel(ch.0);
        let inst = c.instance();
        st.regs
            .set(RegRef::Channel(ch, ChannelReg::ErrorInfo), e.info);
        st.stats.faults += 1;
        tracing::warn!(vgpu = %self.cfg.name, channel = %ch, code = ?e.code, info = e.info, fault_va = e.fault.map(|f| f.va), "channel stopped");
        if e.code.is_mmu_fault() {
            if !MmuFaultInfo(st.regs.get(RegRef::Global(GlobalReg::MmuFaultInfo))).valid() {
                let f = e.fault.unwrap_or(Fault {
                    code: e.code,
                    va: 0,
                    write: false,
                });
                let mut info = MmuFaultInfo(0);
                info.set_code(e.code as u8);
                info.set_channel(ch.0 as u8);
                info.set_write(f.write);
                info.set_valid(true);
                st.regs.set(RegRef::Global(GlobalReg::MmuFaultInfo), info.0);
                st.regs.set_pair(
                    RegRef::Global(GlobalReg::MmuFaultAddrLo),
                    RegRef::Global(GlobalReg::MmuFaultAddrHi),
                    f.va,
                );
            }
            self.raise(st, Intr::MMU_FAULT, ch);
        } else {
            self.raise(st, Intr::CHANNEL_ERROR, ch);
        }
        if let Some(inst) = inst.filter(|i| i.notifier != 0) {
            let mut note = [0u8; NOTIFIER_SIZE as usize];
            note[0..8].copy_from_slice(&now.to_le_bytes());
            note[8..12].copy_from_slice(&(e.code as u32).to_le_bytes());
            note[12..16].copy_from_slice(&e.info.to_le_bytes());
            let written = st
                .mmu
                .translate(&self.mem, inst.pdb, inst.notifier, NOTIFIER_SIZE, true)
                .ok()
                .map(|ext| write_extents(&self.mem, &*self.ctx, &ext, &note).is_ok());
            if written != Some(true) {
                tracing::debug!(channel = %ch, "error notifier not writable");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_items_and_host_accesses_map_to_one_error_code_each() {
        // One mapping for engine items and HOST accesses alike (there were
        // two, and they disagreed on a cancelled item).
        let cases = [
            (
                ExecError::Memory(MemError::ReadOnly { gpa: 0 }),
                ErrorCode::ReadOnly,
            ),
            (
                ExecError::Memory(MemError::Unmapped { gpa: 0, len: 4 }),
                ErrorCode::SysmemUnmapped,
            ),
            (
                ExecError::VramRange {
                    offset: 0,
                    len: 4,
                    size: 0,
                },
                ErrorCode::VramRange,
            ),
            (ExecError::Cancelled, ErrorCode::EngineError),
            (ExecError::ShortExtents("source"), ErrorCode::EngineError),
            (
                ExecError::EngineFailed(std::sync::Arc::new(std::io::Error::other("gone"))),
                ErrorCode::EngineError,
            ),
            (ExecError::NoPtx, ErrorCode::EngineError),
            (ExecError::Timeout, ErrorCode::EngineTimeout),
            (ExecError::ModuleInvalid(218), ErrorCode::ModuleInvalid),
            (ExecError::LaunchRefused(500), ErrorCode::InvalidArgument),
            (ExecError::KernelFault(700), ErrorCode::KernelFault),
        ];
        for (e, code) in cases {
            assert_eq!(ErrorCode::from(&e), code, "{e}");
        }
    }
}
