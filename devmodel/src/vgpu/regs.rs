//! BAR0 register reads and writes, and what they set in motion: the ns
//! timer, channel enable and reset, the doorbell, runlist submission, MMU
//! invalidation and fault acknowledgement (`docs/abi.md`, "Registers").

use mmio::regs::{
    ChannelCtrl, ChannelId, ChannelReg, ChannelStatus, ErrorCode, GlobalReg, MmuFaultInfo,
    RunlistInfo,
};
use mmio::{Decoded, RegRef};

use super::{ChannelError, Core, RunlistEntry, State};
use crate::channel::Instance;

/// What a register write asks of the caller, which acts on it without the
/// state lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum WriteEffect {
    None,
    /// `RESET` was written with bit 0 set: reset the engine.
    Reset,
}

impl Core {
    pub(super) fn read_reg(&self, st: &mut State, off: u32) -> u32 {
        let reg = match st.regs.decode(off) {
            Decoded::Hole => {
                tracing::trace!(offset = off, "read of BAR0 hole");
                return 0;
            }
            Decoded::Register(r) => r,
        };
        match reg {
            // Reading TIMER_LO latches TIMER_HI, so a LO-then-HI read pair
            // is one consistent 64-bit value.
            RegRef::Global(GlobalReg::TimerLo) => {
                let now = self.now_ns();
                st.timer_latch = (now >> 32) as u32;
                now as u32
            }
            RegRef::Global(GlobalReg::TimerHi) => st.timer_latch,
            // The device-info block, a word a read (ABI 1.3 §2.3): words past its end read 0.
            RegRef::Global(GlobalReg::InfoData) => {
                let index = RegRef::Global(GlobalReg::InfoIndex);
                let i = st.regs.get(index);
                st.regs.set(index, i.wrapping_add(1));
                self.info.get(i as usize).copied().unwrap_or(0)
            }
            RegRef::Global(GlobalReg::Status) => {
                st.channels.iter().any(|c| c.state().is_busy()) as u32
            }
            RegRef::Channel(ch, ChannelReg::Status) => {
                let c = st.channel(ch);
                let mut s = ChannelStatus(0);
                s.set_state(c.state() as u8);
                s.set_error(c.error().map_or(0, |e| e as u8));
                s.0
            }
            r => st.regs.get(r),
        }
    }

    /// Apply a guest register write.
    pub(super) fn write_reg(&self, st: &mut State, off: u32, v: u32) -> WriteEffect {
        let reg = match st.regs.decode(off) {
            Decoded::Hole => {
                tracing::trace!(offset = off, value = v, "write to BAR0 hole ignored");
                return WriteEffect::None;
            }
            Decoded::Register(r) => r,
        };
        // The instance pointer cannot move under an enabled channel.
        if let RegRef::Channel(ch, ChannelReg::InstLo | ChannelReg::InstHi) = reg {
            if st.channel(ch).is_enabled() {
                tracing::debug!(channel = %ch, "instance pointer write while enabled ignored");
                return WriteEffect::None;
            }
        }
        let o = st.regs.guest_write(reg, v);
        match reg {
            RegRef::Global(GlobalReg::Reset) if v & 1 != 0 => return WriteEffect::Reset,
            // Enabling a cause that is already pending delivers it.
            RegRef::Global(GlobalReg::IntrEnable)
                if o.new & !o.old & st.regs.get(RegRef::Global(GlobalReg::IntrStatus)) != 0 =>
            {
                self.signal(st);
            }
            RegRef::Global(GlobalReg::MmuInvalidate) => st.mmu.invalidate(),
            // Writing VALID = 0 acknowledges the fault record.
            RegRef::Global(GlobalReg::MmuFaultInfo) if !MmuFaultInfo(o.new).valid() => {
                st.regs.set(RegRef::Global(GlobalReg::MmuFaultInfo), 0);
                st.regs.set_pair(
                    RegRef::Global(GlobalReg::MmuFaultAddrLo),
                    RegRef::Global(GlobalReg::MmuFaultAddrHi),
                    0,
                );
            }
            RegRef::Global(GlobalReg::RunlistSubmit) => self.submit_runlist(st, v & 0xFF),
            RegRef::Global(GlobalReg::Doorbell) => match st.channels.get_mut(v as usize) {
                Some(c) => {
                    c.ring();
                    self.doorbell.acknowledge(ChannelId(v));
                    st.stats.doorbells_trapped += 1;
                    self.kick();
                }
                None => tracing::debug!(channel = v, "doorbell for a channel that does not exist"),
            },
            RegRef::Channel(ch, ChannelReg::Ctrl) => self.channel_ctrl(st, ch, o.old, v),
            _ => {}
        }
        WriteEffect::None
    }

    /// `CH_CTRL`: RESET, or ENABLE set (the instance block is read and
    /// checked) or cleared (queued work is dropped).
    fn channel_ctrl(&self, st: &mut State, ch: ChannelId, old: u32, v: u32) {
        if v & ChannelCtrl::RESET != 0 {
            st.channel(ch).reset();
            self.ctx.cancel_channel(ch.0);
            self.doorbell.reset_channel(ch);
            for r in [
                ChannelReg::Ctrl,
                ChannelReg::GpGet,
                ChannelReg::GpPut,
                ChannelReg::ErrorInfo,
            ] {
                st.regs.set(RegRef::Channel(ch, r), 0);
            }
            tracing::debug!(channel = %ch, "channel reset");
            return;
        }
        let (was, now) = (old & ChannelCtrl::ENABLE != 0, v & ChannelCtrl::ENABLE != 0);
        if now && !was && st.channel(ch).error().is_none() {
            let gpa = st.regs.get_pair(
                RegRef::Channel(ch, ChannelReg::InstLo),
                RegRef::Channel(ch, ChannelReg::InstHi),
            );
            match Instance::read(&self.mem, gpa) {
                Ok(inst) => {
                    st.channel(ch).enable(inst);
                    self.doorbell.reset_channel(ch);
                    st.regs.set(RegRef::Channel(ch, ChannelReg::GpGet), 0);
                    st.regs.set(RegRef::Channel(ch, ChannelReg::GpPut), 0);
                    self.kick();
                }
                Err(code) => {
                    st.channel(ch).enable_invalid();
                    self.fault(st, ch, ChannelError::new(code, 0));
                }
            }
        } else if !now && was {
            st.channel(ch).disable();
            self.ctx.cancel_channel(ch.0);
        }
    }

    /// `RUNLIST_SUBMIT`: read `n` entries at `RUNLIST_BASE`; a runlist that
    /// cannot be read, is longer than the channel count or names a channel
    /// twice is rejected and the one in force stays.
    fn submit_runlist(&self, st: &mut State, n: u32) {
        let base = st.regs.get_pair(
            RegRef::Global(GlobalReg::RunlistBaseLo),
            RegRef::Global(GlobalReg::RunlistBaseHi),
        );
        let mut info = RunlistInfo(0);
        match self.read_runlist(st, base, n) {
            Some(entries) => {
                info.set_entries(entries.len() as u8);
                tracing::debug!(entries = entries.len(), "runlist submitted");
                let pairs: Vec<(u32, u32)> = entries
                    .iter()
                    .map(|e| (e.channel.0, e.timeslice_us))
                    .collect();
                self.ctx.set_runlist(&pairs);
                st.runlist = Some(entries);
                self.kick();
            }
            None => {
                info.set_rejected(true);
                info.set_error(ErrorCode::RunlistInvalid as u8);
                tracing::debug!(n, base, "runlist rejected");
            }
        }
        st.regs.set(RegRef::Global(GlobalReg::RunlistInfo), info.0);
    }

    fn read_runlist(&self, st: &State, base: u64, n: u32) -> Option<Vec<RunlistEntry>> {
        if n > st.regs.channels() {
            return None;
        }
        let mut buf = vec![0u8; n as usize * 8];
        self.mem.read(base, &mut buf).ok()?;
        let entries: Vec<RunlistEntry> = buf
            .chunks_exact(8)
            .map(|e| RunlistEntry {
                channel: ChannelId(u32::from_le_bytes([e[0], e[1], e[2], e[3]])),
                timeslice_us: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            })
            .collect();
        let mut seen = vec![false; st.channels.len()];
        let valid = entries
            .iter()
            .all(|e| match seen.get_mut(e.channel.index()) {
                Some(s) if !*s => {
                    *s = true;
                    true
                }
                _ => false,
            });
        valid.then_some(entries)
    }
}
