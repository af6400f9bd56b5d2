//! Errors as CUDA reports them: every failure is a `CUresult`, and a channel's fault turns
//! into the code a CUDA program expects (docs/cuda.md, "Errors").

use std::ffi::CStr;

use vgpu_guest::ErrorCode;

use crate::types::*;

/// Every `CUresult` of `cuda.h`: number, name, text (`api/errors.tsv`).
pub(crate) const ERRORS: &[(i32, &CStr, &CStr)] = include!(concat!(env!("OUT_DIR"), "/errors.rs"));

/// A failed call: the `CUresult` it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("CUDA error {0}")]
pub struct CuError(pub CUresult);

pub type Result<T> = std::result::Result<T, CuError>;

/// Fail with `code`.
pub fn err<T>(code: CUresult) -> Result<T> {
    Err(CuError(code))
}

/// What NVIDIA's driver itself answers to `cuGetErrorString` for the codes programs meet most
/// (the short messages CUDA's runtime shares, which programs print and tests compare);
/// every other code gets the first sentence of `cuda.h`'s description of it.
const DRIVER_TEXT: &[(CUresult, &CStr)] = &[
    (CUDA_SUCCESS, c"no error"),
    (CUDA_ERROR_INVALID_VALUE, c"invalid argument"),
    (CUDA_ERROR_OUT_OF_MEMORY, c"out of memory"),
    (CUDA_ERROR_NOT_INITIALIZED, c"initialization error"),
    (CUDA_ERROR_DEINITIALIZED, c"driver shutting down"),
    (CUDA_ERROR_NO_DEVICE, c"no CUDA-capable device is detected"),
    (CUDA_ERROR_INVALID_DEVICE, c"invalid device ordinal"),
    (CUDA_ERROR_INVALID_IMAGE, c"device kernel image is invalid"),
    (CUDA_ERROR_INVALID_CONTEXT, c"invalid device context"),
    (
        CUDA_ERROR_NO_BINARY_FOR_GPU,
        c"no kernel image is available for execution on the device",
    ),
    (CUDA_ERROR_INVALID_PTX, c"a PTX JIT compilation failed"),
    (CUDA_ERROR_INVALID_HANDLE, c"invalid resource handle"),
    (CUDA_ERROR_NOT_FOUND, c"named symbol not found"),
    (CUDA_ERROR_NOT_READY, c"device not ready"),
    (
        CUDA_ERROR_ILLEGAL_ADDRESS,
        c"an illegal memory access was encountered",
    ),
    (
        CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,
        c"too many resources requested for launch",
    ),
    (
        CUDA_ERROR_LAUNCH_TIMEOUT,
        c"the launch timed out and was terminated",
    ),
    (CUDA_ERROR_LAUNCH_FAILED, c"unspecified launch failure"),
    (CUDA_ERROR_NOT_PERMITTED, c"operation not permitted"),
    (CUDA_ERROR_NOT_SUPPORTED, c"operation not supported"),
    (CUDA_ERROR_UNKNOWN, c"unknown error"),
];

/// The name and text of `code` (`None` for a number `cuda.h` does not define).
pub fn describe(code: CUresult) -> Option<(&'static CStr, &'static CStr)> {
    let (name, doc) = ERRORS
        .iter()
        .find(|(c, _, _)| *c == code)
        .map(|(_, n, t)| (*n, *t))?;
    let text = DRIVER_TEXT
        .iter()
        .find(|(c, _)| *c == code)
        .map_or(doc, |(_, t)| *t);
    Some((name, text))
}

/// What a channel fault means to a CUDA program. `info` is `CH_ERROR_INFO`, the host's CUDA
/// error number for refused modules and launches.
pub fn from_fault(code: ErrorCode, info: u32) -> CUresult {
    match code {
        ErrorCode::KernelFault => CUDA_ERROR_ILLEGAL_ADDRESS,
        ErrorCode::EngineTimeout => CUDA_ERROR_LAUNCH_TIMEOUT,
        ErrorCode::ModuleInvalid | ErrorCode::InvalidArgument if info != 0 => {
            i32::try_from(info).unwrap_or(CUDA_ERROR_UNKNOWN)
        }
        ErrorCode::ModuleInvalid => CUDA_ERROR_INVALID_IMAGE,
        ErrorCode::Unsupported => CUDA_ERROR_NOT_SUPPORTED,
        ErrorCode::EngineError => CUDA_ERROR_LAUNCH_FAILED,
        ErrorCode::SemaphoreTimeout => CUDA_ERROR_LAUNCH_TIMEOUT,
        c if c.is_mmu_fault() => CUDA_ERROR_ILLEGAL_ADDRESS,
        _ => CUDA_ERROR_LAUNCH_FAILED,
    }
}

/// Whether a fault loses the vGPU's engine context: the CUDA context is then unusable
/// (every call fails with the code) until it is reset, as CUDA's sticky errors are.
pub fn is_sticky(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::KernelFault | ErrorCode::EngineTimeout | ErrorCode::EngineError
    )
}

impl From<vgpu_guest::Error> for CuError {
    fn from(e: vgpu_guest::Error) -> Self {
        use vgpu_guest::Error as E;
        CuError(match e {
            E::ChannelFault { code, info, .. } => from_fault(code, info),
            E::ModuleInvalid { info, .. } => from_fault(ErrorCode::ModuleInvalid, info),
            E::OutOfMemory { .. } => CUDA_ERROR_OUT_OF_MEMORY,
            E::InvalidArgument(_) => CUDA_ERROR_INVALID_VALUE,
            E::Unsupported(_) => CUDA_ERROR_NOT_SUPPORTED,
            E::Timeout { .. } => CUDA_ERROR_LAUNCH_TIMEOUT,
            _ => CUDA_ERROR_UNKNOWN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_the_codes_cuda_h_defines() {
        assert_eq!(describe(0).unwrap().0, c"CUDA_SUCCESS");
        assert_eq!(describe(700).unwrap().0, c"CUDA_ERROR_ILLEGAL_ADDRESS");
        assert_eq!(describe(801).unwrap().0, c"CUDA_ERROR_NOT_SUPPORTED");
        // The driver's own message where programs meet it, cuda.h's sentence elsewhere.
        assert_eq!(describe(218).unwrap().1, c"a PTX JIT compilation failed");
        assert_eq!(describe(0).unwrap().1, c"no error");
        assert!(describe(34)
            .unwrap()
            .1
            .to_bytes()
            .starts_with(b"This indicates that the CUDA driver"));
        assert!(describe(12345).is_none());
        assert!(ERRORS.len() > 90);
    }

    #[test]
    fn faults_map_to_what_cuda_reports() {
        assert_eq!(from_fault(ErrorCode::KernelFault, 0), 700);
        assert_eq!(from_fault(ErrorCode::EngineTimeout, 0), 702);
        assert_eq!(from_fault(ErrorCode::ModuleInvalid, 218), 218);
        assert_eq!(from_fault(ErrorCode::ModuleInvalid, 0), 200);
        assert_eq!(from_fault(ErrorCode::InvalidArgument, 9), 9);
        assert_eq!(from_fault(ErrorCode::PteInvalid, 0), 700);
        assert_eq!(from_fault(ErrorCode::Unsupported, 0), 801);
        assert!(is_sticky(ErrorCode::KernelFault) && !is_sticky(ErrorCode::ReadOnly));
    }
}
