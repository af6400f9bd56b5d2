//! Every GPU the driver shows (`--gpus`), for the daemon's parents: one
//! per GPU with `device = "all"`, and which GPU a configured ordinal or
//! UUID is (its PCI address gives its NUMA node).

use std::ffi::{c_char, CStr};

use cudarc::driver::sys;
use engine_worker::GpuInfo;

use crate::driver::ck;
use crate::probe::{init, multiprocessors};
use crate::Error;

/// A C string the driver wrote into `buf`, NUL-terminated within it.
fn text(buf: &[c_char]) -> String {
    // SAFETY: a `c_char` is a byte; the slice's length is the buffer's.
    let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), buf.len()) };
    CStr::from_bytes_until_nul(bytes)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, as `nvidia-smi -L` prints it.
fn uuid_text(bytes: &[u8; 16]) -> String {
    let h: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The GPU of CUDA ordinal `ordinal`.
fn describe(ordinal: i32) -> Result<GpuInfo, Error> {
    let mut dev = 0;
    // SAFETY: plain queries with valid out-pointers and buffers of the
    // lengths given.
    ck("cuDeviceGet", unsafe {
        sys::cuDeviceGet(&mut dev, ordinal)
    })?;
    let mut mem = 0usize;
    // SAFETY: as above.
    ck("cuDeviceTotalMem", unsafe {
        sys::cuDeviceTotalMem_v2(&mut mem, dev)
    })?;
    let mut name = [0 as c_char; 128];
    // SAFETY: as above.
    ck("cuDeviceGetName", unsafe {
        sys::cuDeviceGetName(name.as_mut_ptr(), name.len() as i32, dev)
    })?;
    let mut pci = [0 as c_char; 32];
    // SAFETY: as above.
    ck("cuDeviceGetPCIBusId", unsafe {
        sys::cuDeviceGetPCIBusId(pci.as_mut_ptr(), pci.len() as i32, dev)
    })?;
    // SAFETY: a plain C struct for which all-zero is valid.
    let mut uuid = unsafe { std::mem::zeroed::<sys::CUuuid>() };
    // SAFETY: as above.
    ck("cuDeviceGetUuid", unsafe {
        sys::cuDeviceGetUuid_v2(&mut uuid, dev)
    })?;
    Ok(GpuInfo {
        ordinal: ordinal as u32,
        uuid: uuid_text(&uuid.bytes.map(|b| b as u8)),
        pci_bus_id: text(&pci),
        name: text(&name),
        memory_bytes: mem as u64,
        multiprocessors: multiprocessors(dev)? as u32,
    })
}

/// What `--gpus` prints: every GPU the driver shows, in its order.
pub fn list() -> Result<Vec<GpuInfo>, Error> {
    init()?;
    let mut count = 0;
    // SAFETY: a plain query with a valid out-pointer.
    ck("cuDeviceGetCount", unsafe {
        sys::cuDeviceGetCount(&mut count)
    })?;
    (0..count).map(describe).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_and_strings_as_the_driver_gives_them() {
        let u: [u8; 16] = [
            0x6f, 0x6e, 0x1c, 0x2a, 0x3b, 0x4d, 0x5e, 0x6f, 0x7a, 0x8b, 0x9c, 0x0d, 0x1e, 0x2f,
            0x3a, 0x4b,
        ];
        assert_eq!(uuid_text(&u), "GPU-6f6e1c2a-3b4d-5e6f-7a8b-9c0d1e2f3a4b");
        let mut buf = [0 as c_char; 8];
        for (i, b) in b"H200".iter().enumerate() {
            buf[i] = *b as c_char;
        }
        assert_eq!(text(&buf), "H200");
        // Not terminated within the buffer: nothing rather than a read past it.
        assert_eq!(text(&[b'x' as c_char; 4]), "");
    }
}
