//! What a GPU is (`--probe`, and the identity a worker reports for its
//! vGPU's device-info block), and which CUDA ordinal has a UUID.

use std::ffi::c_int;

use cudarc::driver::sys;
use devmodel::identity::ATTRIBUTES;
use mmio::devinfo::DeviceInfo;

use crate::driver::ck;
use crate::Error;

/// Load the driver library and initialize it.
pub fn init() -> Result<(), Error> {
    // SAFETY: only tries to load the library by its candidate names.
    if !unsafe { sys::is_culib_present() } {
        return Err(Error::NoDriver);
    }
    // SAFETY: a plain driver call.
    ck("cuInit", unsafe { sys::cuInit(0) })?;
    Ok(())
}

/// The CUDA ordinal of the GPU whose UUID is `hex` (32 hex digits).
pub fn ordinal_of(hex: &str) -> Result<i32, Error> {
    init()?;
    let mut count = 0;
    // SAFETY: plain queries with valid out-pointers.
    ck("cuDeviceGetCount", unsafe {
        sys::cuDeviceGetCount(&mut count)
    })?;
    for i in 0..count {
        let mut dev = 0;
        // SAFETY: as above.
        ck("cuDeviceGet", unsafe { sys::cuDeviceGet(&mut dev, i) })?;
        // SAFETY: a plain C struct for which all-zero is valid.
        let mut uuid = unsafe { std::mem::zeroed::<sys::CUuuid>() };
        // SAFETY: as above.
        ck("cuDeviceGetUuid", unsafe {
            sys::cuDeviceGetUuid_v2(&mut uuid, dev)
        })?;
        let h: String = uuid
            .bytes
            .iter()
            .map(|b| format!("{:02x}", *b as u8))
            .collect();
        if h.eq_ignore_ascii_case(hex) {
            return Ok(i);
        }
    }
    Err(Error::NoSuchGpu(hex.to_string()))
}

/// The number of multiprocessors of `dev`.
pub fn multiprocessors(dev: sys::CUdevice) -> Result<i32, Error> {
    let mut sms = 0;
    // SAFETY: a query with a valid out-pointer.
    ck("cuDeviceGetAttribute", unsafe {
        sys::cuDeviceGetAttribute(
            &mut sms,
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            dev,
        )
    })?;
    Ok(sms)
}

/// What GPU `dev` is, as CUDA describes it (ABI 1.3's device-info block):
/// the driver's CUDA version, the GPU's UUID and name, and every
/// `cuDeviceGetAttribute` value of CUDA 13.0 (1 to [`ATTRIBUTES`] − 1; 0
/// for a number the driver does not know).
pub fn identity(dev: sys::CUdevice) -> Result<DeviceInfo, Error> {
    let mut version = 0;
    // SAFETY: plain queries with valid out-pointers and buffers.
    ck("cuDriverGetVersion", unsafe {
        sys::cuDriverGetVersion(&mut version)
    })?;
    // SAFETY: a plain C struct for which all-zero is valid.
    let mut uuid = unsafe { std::mem::zeroed::<sys::CUuuid>() };
    // SAFETY: as above.
    ck("cuDeviceGetUuid", unsafe {
        sys::cuDeviceGetUuid_v2(&mut uuid, dev)
    })?;
    let mut name = [0 as std::ffi::c_char; mmio::devinfo::NAME_BYTES];
    // SAFETY: as above; the driver NUL-terminates within the length given.
    ck("cuDeviceGetName", unsafe {
        sys::cuDeviceGetName(name.as_mut_ptr(), name.len() as c_int, dev)
    })?;
    // SAFETY: `name` is NUL-terminated (above).
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    // The attribute is asked for by number: the binding's enum has no
    // value for a number it does not name, and the table must hold every
    // number CUDA 13.0 defines.
    type GetAttribute = unsafe extern "C" fn(*mut c_int, c_int, sys::CUdevice) -> u32;
    // SAFETY: the driver library is loaded (`init`); the symbol has this
    // C signature (`CUdevice_attribute` is a C enum, passed as an int, and
    // `CUresult` one returned as such).
    let get = unsafe { sys::culib().get::<GetAttribute>(b"cuDeviceGetAttribute\0") }
        .map_err(|_| Error::NoDriver)?;
    // Number 0 is no attribute: its word stays 0.
    let attributes = std::iter::once(0)
        .chain((1..ATTRIBUTES as c_int).map(|a| {
            let mut v = 0;
            // SAFETY: a query with a valid out-pointer; an unknown number
            // is CUDA_ERROR_INVALID_VALUE.
            let r = unsafe { get(&mut v, a, dev) };
            if r == 0 {
                v
            } else {
                0
            }
        }))
        .collect();
    Ok(DeviceInfo {
        cuda_version: version as u32,
        uuid: uuid.bytes.map(|b| b as u8),
        name,
        attributes,
    })
}

/// What `--probe` prints: the GPU's name, memory and multiprocessors, as
/// JSON, for the daemon's type catalogue.
pub fn probe(device: i32) -> Result<String, Error> {
    init()?;
    let mut dev = 0;
    // SAFETY: plain queries with valid out-pointers and buffers.
    ck("cuDeviceGet", unsafe { sys::cuDeviceGet(&mut dev, device) })?;
    let mut mem = 0usize;
    // SAFETY: as above.
    ck("cuDeviceTotalMem", unsafe {
        sys::cuDeviceTotalMem_v2(&mut mem, dev)
    })?;
    let sms = multiprocessors(dev)?;
    let mut name = [0 as std::ffi::c_char; 128];
    // SAFETY: as above; the driver NUL-terminates within 128 bytes.
    ck("cuDeviceGetName", unsafe {
        sys::cuDeviceGetName(name.as_mut_ptr(), 128, dev)
    })?;
    // SAFETY: `name` is NUL-terminated (above).
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    Ok(serde_json::json!({"name": name, "memory_bytes": mem, "multiprocessors": sms}).to_string())
}
