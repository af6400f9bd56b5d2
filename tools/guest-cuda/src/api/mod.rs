//! The exported driver API functions, by group. Each is defined with [`crate::cuda_fn`];
//! `build.rs` finds them here (a line `fn cu…`) and exports a `CUDA_ERROR_NOT_SUPPORTED`
//! stub for every other symbol of the driver API.

pub mod context;
pub mod device;
pub mod init;
pub mod launch;
pub mod memory;
pub mod module;
pub mod stream;

use crate::driver::with;
use crate::error::{err, Result};
use crate::types::*;

/// Device ordinal `dev` must be 0: a vGPU is one device.
pub(crate) fn check_device(dev: CUdevice) -> Result<()> {
    with(|_| Ok(()))?;
    if dev == 0 {
        Ok(())
    } else {
        err(CUDA_ERROR_INVALID_DEVICE)
    }
}
