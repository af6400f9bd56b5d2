//! MMIO dispatch and register storage for BAR0.
//!
//! The dispatch table maps a BAR0 offset to a register of [`crate::regs`],
//! applies the access rules every register shares (width, alignment, RO /
//! RW / W1C / WO), and tells the device model which register a guest write
//! touched so that it can apply the side effects. Holes read as zero and
//! ignore writes, with a `tracing` event.

use crate::bar::BAR0_SIZE;
use crate::regs::{
    Access, ChannelId, ChannelReg, GlobalReg, RegDesc, CHANNEL_BASE, CHANNEL_REGS, CHANNEL_STRIDE,
    GLOBAL_REGS,
};
use crate::MmioError;

/// A decoded register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegRef {
    Global(GlobalReg),
    Channel(ChannelId, ChannelReg),
}

/// What a 4-byte BAR0 offset decodes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    Register(RegRef),
    /// Not a register: reads as zero, writes are ignored.
    Hole,
}

/// The result of a guest write, for the device model to act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteOutcome {
    pub reg: RegRef,
    /// The raw value the guest wrote.
    pub written: u32,
    /// Register contents before and after the write (equal for RO and WO).
    pub old: u32,
    pub new: u32,
}

/// BAR0 register storage of one vGPU with `channels` channels.
#[derive(Clone, Debug)]
pub struct RegisterFile {
    channels: u32,
    global: Vec<u32>,
    channel: Vec<u32>,
}

fn global_index(reg: GlobalReg) -> usize {
    // GLOBAL_REGS is declared in enum order; this is checked by a test.
    reg as usize
}
fn channel_index(reg: ChannelReg) -> usize {
    reg as usize
}

/// Descriptor of a global register.
pub fn global_desc(reg: GlobalReg) -> &'static RegDesc<GlobalReg> {
    &GLOBAL_REGS[global_index(reg)]
}
/// Descriptor of a channel register.
pub fn channel_desc(reg: ChannelReg) -> &'static RegDesc<ChannelReg> {
    &CHANNEL_REGS[channel_index(reg)]
}

impl RegisterFile {
    /// A register file at reset values for a vGPU with `channels` channels.
    pub fn new(channels: u32) -> Self {
        let channels = channels.min(crate::regs::MAX_CHANNELS);
        let mut rf = RegisterFile {
            channels,
            global: vec![0; GLOBAL_REGS.len()],
            channel: vec![0; CHANNEL_REGS.len() * channels as usize],
        };
        rf.reset();
        rf
    }

    /// Number of channels this register file decodes.
    pub fn channels(&self) -> u32 {
        self.channels
    }

    /// Return every register to its reset value, except the read-only
    /// identity registers (ID through VRAM_SIZE), which describe the vGPU type.
    pub fn reset(&mut self) {
        for d in GLOBAL_REGS {
            let identity = matches!(
                d.reg,
                GlobalReg::Caps
                    | GlobalReg::NumChannels
                    | GlobalReg::VramSizeLo
                    | GlobalReg::VramSizeHi
                    | GlobalReg::PtxVaBaseLo
                    | GlobalReg::PtxVaBaseHi
            );
            if !identity {
                self.global[global_index(d.reg)] = d.reset;
            }
        }
        for ch in (0..self.channels).map(ChannelId) {
            for d in CHANNEL_REGS {
                self.channel[Self::ch_slot(ch, d.reg)] = d.reset;
            }
        }
    }

    fn ch_slot(ch: ChannelId, reg: ChannelReg) -> usize {
        ch.index() * CHANNEL_REGS.len() + channel_index(reg)
    }

    /// Decode one dword-aligned BAR0 offset.
    pub fn decode(&self, offset: u32) -> Decoded {
        if offset < CHANNEL_BASE {
            return match GLOBAL_REGS.iter().find(|d| d.offset == offset) {
                Some(d) => Decoded::Register(RegRef::Global(d.reg)),
                None => Decoded::Hole,
            };
        }
        let rel = offset - CHANNEL_BASE;
        let ch = rel / CHANNEL_STRIDE;
        if ch >= self.channels {
            return Decoded::Hole;
        }
        match CHANNEL_REGS
            .iter()
            .find(|d| d.offset == rel % CHANNEL_STRIDE)
        {
            Some(d) => Decoded::Register(RegRef::Channel(ChannelId(ch), d.reg)),
            None => Decoded::Hole,
        }
    }

    /// Split a BAR0 access into the dword offsets it covers. Registers are
    /// accessed 4 bytes at a time; an aligned 8-byte access is two dword
    /// accesses, low dword first.
    pub fn dwords(offset: u64, len: usize) -> Result<impl Iterator<Item = u32>, MmioError> {
        let end = offset.checked_add(len as u64).filter(|&e| e <= BAR0_SIZE);
        if end.is_none() {
            return Err(MmioError::OutOfRange {
                offset,
                len,
                size: BAR0_SIZE,
            });
        }
        if !((len == 4 && offset.is_multiple_of(4)) || (len == 8 && offset.is_multiple_of(8))) {
            return Err(MmioError::BadWidth { offset, len });
        }
        Ok((0..len as u32 / 4).map(move |i| offset as u32 + 4 * i))
    }

    /// Current contents of a register, as stored (no read side effects;
    /// write-only registers read as 0).
    pub fn get(&self, reg: RegRef) -> u32 {
        match reg {
            RegRef::Global(r) => match global_desc(r).access {
                Access::Wo => 0,
                _ => self.global[global_index(r)],
            },
            RegRef::Channel(ch, r) => match channel_desc(r).access {
                Access::Wo => 0,
                _ => self.channel.get(Self::ch_slot(ch, r)).copied().unwrap_or(0),
            },
        }
    }

    /// Device-side update of a register (bypasses guest access rules).
    pub fn set(&mut self, reg: RegRef, value: u32) {
        match reg {
            RegRef::Global(r) => self.global[global_index(r)] = value,
            RegRef::Channel(ch, r) => {
                if let Some(slot) = self.channel.get_mut(Self::ch_slot(ch, r)) {
                    *slot = value;
                }
            }
        }
    }

    /// A 64-bit value held in a LO/HI register pair (LO the low 32 bits).
    pub fn get_pair(&self, lo: RegRef, hi: RegRef) -> u64 {
        u64::from(self.get(lo)) | u64::from(self.get(hi)) << 32
    }

    /// Device-side update of a LO/HI register pair.
    pub fn set_pair(&mut self, lo: RegRef, hi: RegRef, value: u64) {
        self.set(lo, value as u32);
        self.set(hi, (value >> 32) as u32);
    }

    /// Device-side OR of bits into a register (e.g. raising a status bit).
    pub fn set_bits(&mut self, reg: RegRef, bits: u32) {
        let v = self.get(reg) | bits;
        self.set(reg, v);
    }

    /// Apply a guest write to a decoded register according to its access type.
    pub fn guest_write(&mut self, reg: RegRef, value: u32) -> WriteOutcome {
        let (access, mask) = match reg {
            RegRef::Global(r) => (global_desc(r).access, global_desc(r).mask),
            RegRef::Channel(_, r) => (channel_desc(r).access, channel_desc(r).mask),
        };
        let old = self.get(reg);
        let new = match access {
            Access::Ro | Access::Wo => old,
            Access::Rw => (old & !mask) | (value & mask),
            Access::W1c => old & !(value & mask),
        };
        if access == Access::Ro {
            tracing::debug!(?reg, value, "write to read-only register ignored");
        }
        self.set(reg, new);
        WriteOutcome {
            reg,
            written: value,
            old,
            new,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regs::*;

    #[test]
    fn tables_are_in_enum_order_and_disjoint() {
        for (i, d) in GLOBAL_REGS.iter().enumerate() {
            assert_eq!(d.reg as usize, i, "{} out of order", d.name);
            assert_eq!(d.offset % 4, 0);
            assert!(d.offset < CHANNEL_BASE);
        }
        for (i, d) in CHANNEL_REGS.iter().enumerate() {
            assert_eq!(d.reg as usize, i, "{} out of order", d.name);
            assert!(d.offset < CHANNEL_STRIDE);
        }
        let mut offs: Vec<u32> = GLOBAL_REGS.iter().map(|d| d.offset).collect();
        offs.dedup();
        assert_eq!(offs.len(), GLOBAL_REGS.len());
        assert!(CHANNEL_BASE + MAX_CHANNELS * CHANNEL_STRIDE <= crate::bar::BAR0_SIZE as u32);
    }

    #[test]
    fn offsets_come_from_the_tables_and_pairs_split_low_first() {
        assert_eq!(GlobalReg::IntrStatus.offset(), 0x020);
        assert_eq!(GlobalReg::Doorbell.offset(), 0x0A0);
        assert_eq!(
            ChannelId(2).reg_offset(ChannelReg::GpGet),
            0x1000 + 2 * 0x20 + 0x10
        );
        let mut rf = RegisterFile::new(2);
        let (lo, hi) = (
            RegRef::Global(GlobalReg::RunlistBaseLo),
            RegRef::Global(GlobalReg::RunlistBaseHi),
        );
        rf.set_pair(lo, hi, 0x1234_5678_9abc_def0);
        assert_eq!(rf.get(lo), 0x9abc_def0);
        assert_eq!(rf.get(hi), 0x1234_5678);
        assert_eq!(rf.get_pair(lo, hi), 0x1234_5678_9abc_def0);
    }

    #[test]
    fn decode_registers_channels_and_holes() {
        let rf = RegisterFile::new(4);
        assert_eq!(
            rf.decode(0x20),
            Decoded::Register(RegRef::Global(GlobalReg::IntrStatus))
        );
        assert_eq!(
            rf.decode(0x1000 + 3 * 0x20 + 0x10),
            Decoded::Register(RegRef::Channel(ChannelId(3), ChannelReg::GpGet))
        );
        assert_eq!(
            rf.decode(0x1000 + 4 * 0x20),
            Decoded::Hole,
            "channel 4 does not exist"
        );
        assert_eq!(rf.decode(0x1000 + 0x1C), Decoded::Hole);
        assert_eq!(rf.decode(0x038), Decoded::Hole);
        assert_eq!(
            rf.decode(0x18),
            Decoded::Register(RegRef::Global(GlobalReg::PtxVaBaseLo))
        );
        assert_eq!(rf.decode(0xFFFC), Decoded::Hole);
    }

    #[test]
    fn access_rules() {
        let mut rf = RegisterFile::new(2);
        assert_eq!(rf.get(RegRef::Global(GlobalReg::Id)), ID_MAGIC);
        // RO ignores writes.
        let o = rf.guest_write(RegRef::Global(GlobalReg::Id), 0);
        assert_eq!(o.new, ID_MAGIC);
        // RW honours the mask.
        rf.guest_write(RegRef::Global(GlobalReg::IntrEnable), 0xFFFF_FFFF);
        assert_eq!(rf.get(RegRef::Global(GlobalReg::IntrEnable)), Intr::ALL);
        // W1C clears only written ones.
        rf.set(
            RegRef::Global(GlobalReg::IntrStatus),
            Intr::HOST | Intr::MMU_FAULT,
        );
        rf.guest_write(RegRef::Global(GlobalReg::IntrStatus), Intr::HOST);
        assert_eq!(
            rf.get(RegRef::Global(GlobalReg::IntrStatus)),
            Intr::MMU_FAULT
        );
        // WO reads zero and stores nothing.
        let o = rf.guest_write(RegRef::Global(GlobalReg::Doorbell), 1);
        assert_eq!(
            (o.written, rf.get(RegRef::Global(GlobalReg::Doorbell))),
            (1, 0)
        );
        // Instance block pointer keeps 4 KiB alignment.
        rf.guest_write(
            RegRef::Channel(ChannelId(1), ChannelReg::InstLo),
            0x1234_5678,
        );
        assert_eq!(
            rf.get(RegRef::Channel(ChannelId(1), ChannelReg::InstLo)),
            0x1234_5000
        );
        rf.reset();
        assert_eq!(rf.get(RegRef::Channel(ChannelId(1), ChannelReg::InstLo)), 0);
        assert_eq!(rf.get(RegRef::Global(GlobalReg::IntrEnable)), 0);
    }

    #[test]
    fn width_and_alignment() {
        assert_eq!(
            RegisterFile::dwords(0x20, 4).unwrap().collect::<Vec<_>>(),
            vec![0x20]
        );
        assert_eq!(
            RegisterFile::dwords(0x30, 8).unwrap().collect::<Vec<_>>(),
            vec![0x30, 0x34]
        );
        assert!(matches!(
            RegisterFile::dwords(0x22, 4),
            Err(MmioError::BadWidth { .. })
        ));
        assert!(matches!(
            RegisterFile::dwords(0x34, 8),
            Err(MmioError::BadWidth { .. })
        ));
        assert!(matches!(
            RegisterFile::dwords(0x20, 2),
            Err(MmioError::BadWidth { .. })
        ));
        assert!(matches!(
            RegisterFile::dwords(0xFFFC, 8),
            Err(MmioError::OutOfRange { .. })
        ));
        assert!(matches!(
            RegisterFile::dwords(u64::MAX - 1, 4),
            Err(MmioError::OutOfRange { .. })
        ));
    }
}
