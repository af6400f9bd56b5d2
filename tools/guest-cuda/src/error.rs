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

/// The name and text of `code` (`None` for a number `cuda.h` does not define).
pub fn describe(code: CUresult) -> Option<(&'static CStr, &'static CStr)> {
    ERRORS
        .iter()
        .find(|(c, _, _)| *c == code)
        .map(|(_, n, t)| (*n, *t))
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
        assert!(describe(218)
            .unwrap()
            .1
            .to_bytes()
            .starts_with(b"This indicates that a PTX JIT"));
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
