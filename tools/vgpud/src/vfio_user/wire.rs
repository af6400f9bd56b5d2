//! vfio-user message formats (the protocol of QEMU's `docs/interop/vfio-user.rst`).
//!
//! Every message is a 16-byte header followed by a command-specific
//! payload, all little-endian on x86. File descriptors (guest RAM for
//! DMA_MAP, eventfds for SET_IRQS) travel as `SCM_RIGHTS` with the header.
//! This module only decodes and encodes bytes; it never trusts a length it
//! has not checked against the bytes it was given.

/// Size of the header every message starts with.
pub const HEADER_SIZE: usize = 16;
/// The largest REGION_READ/WRITE `count` we accept and advertise
/// (`max_data_xfer_size`).
pub const MAX_DATA_XFER: u32 = 1 << 20;
/// The largest message we read: a REGION_WRITE of `MAX_DATA_XFER` bytes
/// plus its header and access descriptor. Anything bigger is a protocol
/// violation and ends the connection.
pub const MAX_MESSAGE: u32 = (HEADER_SIZE + 16) as u32 + MAX_DATA_XFER;
/// File descriptors accepted with one message (`max_msg_fds`).
pub const MAX_MSG_FDS: usize = 16;

/// Header flag bits.
pub const FLAG_TYPE_MASK: u32 = 0xf;
pub const FLAG_TYPE_COMMAND: u32 = 0;
pub const FLAG_TYPE_REPLY: u32 = 1;
pub const FLAG_NO_REPLY: u32 = 1 << 4;
pub const FLAG_ERROR: u32 = 1 << 5;

/// Message opcodes (the header's `command` field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    Version,
    DmaMap,
    DmaUnmap,
    DeviceGetInfo,
    DeviceGetRegionInfo,
    DeviceGetRegionIoFds,
    DeviceGetIrqInfo,
    DeviceSetIrqs,
    RegionRead,
    RegionWrite,
    DmaRead,
    DmaWrite,
    DeviceReset,
    RegionWriteMulti,
    DeviceFeature,
    MigDataRead,
    MigDataWrite,
}

impl Opcode {
    pub fn from_u16(v: u16) -> Option<Opcode> {
        use Opcode::*;
        Some(match v {
            1 => Version,
            2 => DmaMap,
            3 => DmaUnmap,
            4 => DeviceGetInfo,
            5 => DeviceGetRegionInfo,
            6 => DeviceGetRegionIoFds,
            7 => DeviceGetIrqInfo,
            8 => DeviceSetIrqs,
            9 => RegionRead,
            10 => RegionWrite,
            11 => DmaRead,
            12 => DmaWrite,
            13 => DeviceReset,
            15 => RegionWriteMulti,
            16 => DeviceFeature,
            17 => MigDataRead,
            18 => MigDataWrite,
            _ => return None,
        })
    }
}

/// The message header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub message_id: u16,
    pub command: u16,
    /// Size of the whole message, header included.
    pub message_size: u32,
    pub flags: u32,
    pub error: u32,
}

impl Header {
    pub fn decode(b: &[u8; HEADER_SIZE]) -> Header {
        Header {
            message_id: u16::from_le_bytes([b[0], b[1]]),
            command: u16::from_le_bytes([b[2], b[3]]),
            message_size: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            flags: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            error: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        }
    }

    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..2].copy_from_slice(&self.message_id.to_le_bytes());
        b[2..4].copy_from_slice(&self.command.to_le_bytes());
        b[4..8].copy_from_slice(&self.message_size.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..16].copy_from_slice(&self.error.to_le_bytes());
        b
    }

    pub fn no_reply(&self) -> bool {
        self.flags & FLAG_NO_REPLY != 0
    }

    /// The reply header to this command carrying `payload_len` bytes, or an
    /// error reply (header only) with `errno`.
    pub fn reply(&self, result: Result<usize, i32>) -> Header {
        match result {
            Ok(len) => Header {
                message_id: self.message_id,
                command: self.command,
                message_size: (HEADER_SIZE + len) as u32,
                flags: FLAG_TYPE_REPLY,
                error: 0,
            },
            Err(errno) => Header {
                message_id: self.message_id,
                command: self.command,
                message_size: HEADER_SIZE as u32,
                flags: FLAG_TYPE_REPLY | FLAG_ERROR,
                error: errno as u32,
            },
        }
    }
}

/// A short payload: the error a decoder returns, `EINVAL` on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Short;

/// Little-endian field reader over a payload that never reads past it.
pub struct Fields<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Fields { bytes, pos: 0 }
    }
    fn take<const N: usize>(&mut self) -> Result<[u8; N], Short> {
        let end = self.pos.checked_add(N).ok_or(Short)?;
        let s = self.bytes.get(self.pos..end).ok_or(Short)?;
        self.pos = end;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }
    pub fn u16(&mut self) -> Result<u16, Short> {
        self.take::<2>().map(u16::from_le_bytes)
    }
    pub fn u32(&mut self) -> Result<u32, Short> {
        self.take::<4>().map(u32::from_le_bytes)
    }
    pub fn u64(&mut self) -> Result<u64, Short> {
        self.take::<8>().map(u64::from_le_bytes)
    }
    /// What is left.
    pub fn rest(&self) -> &'a [u8] {
        &self.bytes[self.pos.min(self.bytes.len())..]
    }
}

/// Little-endian payload builder.
#[derive(Default)]
pub struct Payload(pub Vec<u8>);

impl Payload {
    pub fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
}

/// DMA_MAP: `argsz, flags, offset, address, size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaMap {
    pub flags: u32,
    pub offset: u64,
    pub address: u64,
    pub size: u64,
}
pub const DMA_MAP_READ: u32 = 1;
pub const DMA_MAP_WRITE: u32 = 2;

impl DmaMap {
    pub fn decode(p: &[u8]) -> Result<DmaMap, Short> {
        let mut f = Fields::new(p);
        let _argsz = f.u32()?;
        Ok(DmaMap {
            flags: f.u32()?,
            offset: f.u64()?,
            address: f.u64()?,
            size: f.u64()?,
        })
    }
}

/// DMA_UNMAP: `argsz, flags, address, size`; the reply echoes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaUnmap {
    pub argsz: u32,
    pub flags: u32,
    pub address: u64,
    pub size: u64,
}
/// DMA_UNMAP flag: unmap every region (address and size must be 0).
pub const DMA_UNMAP_ALL: u32 = 1 << 1;

impl DmaUnmap {
    pub fn decode(p: &[u8]) -> Result<DmaUnmap, Short> {
        let mut f = Fields::new(p);
        Ok(DmaUnmap {
            argsz: f.u32()?,
            flags: f.u32()?,
            address: f.u64()?,
            size: f.u64()?,
        })
    }
    pub fn encode(&self) -> Vec<u8> {
        Payload::default()
            .u32(24)
            .u32(self.flags)
            .u64(self.address)
            .u64(self.size)
            .0
    }
}

/// REGION_READ / REGION_WRITE: `offset, region, count[, data]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionAccess {
    pub offset: u64,
    pub region: u32,
    pub count: u32,
}

impl RegionAccess {
    pub const SIZE: usize = 16;
    pub fn decode(p: &[u8]) -> Result<RegionAccess, Short> {
        let mut f = Fields::new(p);
        Ok(RegionAccess {
            offset: f.u64()?,
            region: f.u32()?,
            count: f.u32()?,
        })
    }
    pub fn encode(&self) -> Payload {
        Payload::default()
            .u64(self.offset)
            .u32(self.region)
            .u32(self.count)
    }
}

/// DEVICE_SET_IRQS: `argsz, flags, index, start, count[, data]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetIrqs {
    pub flags: u32,
    pub index: u32,
    pub start: u32,
    pub count: u32,
}

impl SetIrqs {
    pub fn decode(p: &[u8]) -> Result<SetIrqs, Short> {
        let mut f = Fields::new(p);
        let _argsz = f.u32()?;
        Ok(SetIrqs {
            flags: f.u32()?,
            index: f.u32()?,
            start: f.u32()?,
            count: f.u32()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_reply_sets_flags() {
        let h = Header {
            message_id: 0x1234,
            command: 10,
            message_size: 40,
            flags: FLAG_NO_REPLY,
            error: 0,
        };
        assert_eq!(Header::decode(&h.encode()), h);
        assert!(h.no_reply());
        let ok = h.reply(Ok(16));
        assert_eq!(
            (ok.message_id, ok.command, ok.message_size, ok.flags),
            (0x1234, 10, 32, FLAG_TYPE_REPLY)
        );
        let err = h.reply(Err(libc::EINVAL));
        assert_eq!(
            (err.message_size, err.flags, err.error),
            (16, FLAG_TYPE_REPLY | FLAG_ERROR, libc::EINVAL as u32)
        );
    }

    #[test]
    fn short_payloads_are_rejected_not_read_past() {
        assert_eq!(DmaMap::decode(&[0u8; 31]), Err(Short));
        assert_eq!(RegionAccess::decode(&[0u8; 15]), Err(Short));
        assert_eq!(SetIrqs::decode(&[]), Err(Short));
        let mut b = vec![0u8; 16];
        b[0..8].copy_from_slice(&0x40u64.to_le_bytes());
        b[8..12].copy_from_slice(&7u32.to_le_bytes());
        b[12..16].copy_from_slice(&4u32.to_le_bytes());
        assert_eq!(
            RegionAccess::decode(&b),
            Ok(RegionAccess {
                offset: 0x40,
                region: 7,
                count: 4
            })
        );
        assert_eq!(
            RegionAccess {
                offset: 0x40,
                region: 7,
                count: 4
            }
            .encode()
            .0,
            b
        );
    }
}
