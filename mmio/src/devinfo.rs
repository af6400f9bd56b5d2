//! The device-info block (ABI 1.3, §2.3): what the engine behind a vGPU is, as CUDA
//! describes a device, read by the driver a word at a time through `INFO_INDEX` and
//! `INFO_DATA`.
//!
//! | word | field |
//! |---|---|
//! | 0 | `WORDS`: words in the block (0: no block) |
//! | 1 | `CUDA_VERSION`: the CUDA version of the engine's driver (e.g. 13000), 0 for none |
//! | 2 | `ATTR_COUNT` *A*: attribute words that follow at `ATTRS` |
//! | 3 | reserved, 0 |
//! | 4–7 | `UUID`, 16 bytes |
//! | 8–71 | `NAME`, 256 bytes of ASCII, NUL-padded |
//! | 72 … 72 + *A* − 1 | attribute *a* (a `CUdevice_attribute` number, 0 unused) at `ATTRS + a`, as `i32` |

/// Words of the header.
pub const WORDS: u32 = 0;
pub const CUDA_VERSION: u32 = 1;
pub const ATTR_COUNT: u32 = 2;
pub const UUID: u32 = 4;
pub const NAME: u32 = 8;
pub const NAME_BYTES: usize = 256;
pub const ATTRS: u32 = 72;
/// Most attribute words a block carries.
pub const MAX_ATTRS: u32 = 512;

/// The engine's identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    pub cuda_version: u32,
    pub uuid: [u8; 16],
    /// At most 255 bytes are kept (the block NUL-terminates it).
    pub name: String,
    /// `cuDeviceGetAttribute` values by attribute number (index 0 unused); at most
    /// [`MAX_ATTRS`] are kept.
    pub attributes: Vec<i32>,
}

impl DeviceInfo {
    /// The block's words.
    pub fn encode(&self) -> Vec<u32> {
        let attrs = self.attributes.len().min(MAX_ATTRS as usize);
        let total = ATTRS as usize + attrs;
        let mut w = vec![0u32; total];
        w[WORDS as usize] = total as u32;
        w[CUDA_VERSION as usize] = self.cuda_version;
        w[ATTR_COUNT as usize] = attrs as u32;
        let put = |w: &mut [u32], at: u32, bytes: &[u8]| {
            for (i, c) in bytes.chunks(4).enumerate() {
                let mut b = [0u8; 4];
                b[..c.len()].copy_from_slice(c);
                w[at as usize + i] = u32::from_le_bytes(b);
            }
        };
        put(&mut w, UUID, &self.uuid);
        let name = self.name.as_bytes();
        put(&mut w, NAME, &name[..name.len().min(NAME_BYTES - 1)]);
        for (i, &a) in self.attributes.iter().take(attrs).enumerate() {
            w[ATTRS as usize + i] = a as u32;
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_follows_its_layout() {
        let info = DeviceInfo {
            cuda_version: 13000,
            uuid: *b"0123456789abcdef",
            name: "GPU".into(),
            attributes: vec![0, 1024, -1],
        };
        let w = info.encode();
        assert_eq!(w.len(), 75);
        assert_eq!(w[0], 75);
        assert_eq!(w[1], 13000);
        assert_eq!(w[2], 3);
        assert_eq!(w[4], u32::from_le_bytes(*b"0123"));
        assert_eq!(w[8], u32::from_le_bytes(*b"GPU\0"));
        assert_eq!(w[9], 0);
        assert_eq!(w[73], 1024);
        assert_eq!(w[74] as i32, -1);
        let long = DeviceInfo {
            name: "x".repeat(1000),
            attributes: vec![7; 9999],
            ..Default::default()
        };
        let w = long.encode();
        assert_eq!(w[2], MAX_ATTRS);
        assert_eq!(w.len() as u32, ATTRS + MAX_ATTRS);
        assert_eq!(w[8 + 63] >> 24, 0, "the name stays NUL-terminated");
    }
}
