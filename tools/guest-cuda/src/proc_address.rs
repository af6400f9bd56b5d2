//! `cuGetProcAddress`: a driver function by API name, the CUDA version the caller was built
//! for, and whether it wants the per-thread-default-stream variant.
//!
//! The table (`api/proc_table.tsv`, from `cudaTypedefs.h`) lists, per name, each version
//! that changed the function and the variant exported for it. A request gets the newest
//! variant not newer than its version. It answers before `cuInit`, as cudart asks first.

use std::ffi::{c_void, CStr};

use crate::types::*;

/// Which default stream a variant uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    Default,
    /// `_ptds`: synchronous calls on the per-thread default stream.
    Ptds,
    /// `_ptsz`: asynchronous calls on the per-thread default stream.
    Ptsz,
}

/// One row of the table.
#[derive(Clone, Copy, Debug)]
pub struct ProcEntry {
    pub name: &'static str,
    pub version: i32,
    pub flavour: Flavour,
    pub symbol: &'static str,
}

/// The table.
pub const TABLE: &[ProcEntry] = include!(concat!(env!("OUT_DIR"), "/proc_table.rs"));

/// What `cuGetProcAddress` finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    Symbol(&'static str),
    /// No function of that name.
    NotFound,
    /// The function is newer than the caller's CUDA version.
    VersionNotSufficient,
}

/// The symbol for API name `name` at CUDA `version`, per-thread when `per_thread`.
pub fn resolve(name: &str, version: i32, per_thread: bool) -> Found {
    let rows = TABLE.iter().filter(|e| e.name == name);
    let mut any = false;
    let mut best: Option<&ProcEntry> = None;
    let mut best_pt: Option<&ProcEntry> = None;
    for e in rows {
        any = true;
        if e.version > version {
            continue;
        }
        let slot = if e.flavour == Flavour::Default {
            &mut best
        } else {
            &mut best_pt
        };
        if slot.is_none_or(|b| b.version < e.version) {
            *slot = Some(e);
        }
    }
    match (per_thread, best_pt, best) {
        (true, Some(e), _) => Found::Symbol(e.symbol),
        (_, _, Some(e)) => Found::Symbol(e.symbol),
        _ if any => Found::VersionNotSufficient,
        _ => Found::NotFound,
    }
}

/// `cuGetProcAddress(_v2)`: the function pointer and the query result.
pub fn get(symbol: &CStr, version: i32, flags: u64) -> (*const c_void, i32) {
    let Ok(name) = symbol.to_str() else {
        return (std::ptr::null(), CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
    };
    let per_thread = flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM != 0;
    match resolve(name, version, per_thread) {
        Found::Symbol(s) => match crate::symbols::symbol(s.as_bytes()) {
            Some(p) => (p, CU_GET_PROC_ADDRESS_SUCCESS),
            None => (std::ptr::null(), CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND),
        },
        Found::NotFound => (std::ptr::null(), CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND),
        Found::VersionNotSufficient => {
            (std::ptr::null(), CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_pick_the_variant_cuda_h_maps_them_to() {
        assert_eq!(
            resolve("cuMemAlloc", 2000, false),
            Found::Symbol("cuMemAlloc")
        );
        assert_eq!(
            resolve("cuMemAlloc", 13000, false),
            Found::Symbol("cuMemAlloc_v2")
        );
        assert_eq!(
            resolve("cuCtxCreate", 12050, false),
            Found::Symbol("cuCtxCreate_v4")
        );
        assert_eq!(
            resolve("cuCtxCreate", 12000, false),
            Found::Symbol("cuCtxCreate_v3")
        );
        assert_eq!(
            resolve("cuMemcpyHtoD", 13000, true),
            Found::Symbol("cuMemcpyHtoD_v2_ptds")
        );
        assert_eq!(
            resolve("cuLaunchKernel", 13000, true),
            Found::Symbol("cuLaunchKernel_ptsz")
        );
        assert_eq!(resolve("cuInit", 13000, true), Found::Symbol("cuInit"));
        assert_eq!(
            resolve("cuGetProcAddress", 12000, false),
            Found::Symbol("cuGetProcAddress_v2")
        );
        assert_eq!(
            resolve("cuLibraryLoadData", 11000, false),
            Found::VersionNotSufficient
        );
        assert_eq!(resolve("cuNoSuchThing", 13000, false), Found::NotFound);
    }

    #[test]
    fn every_table_symbol_is_exported() {
        for e in TABLE {
            assert!(
                crate::symbols::symbol(e.symbol.as_bytes()).is_some(),
                "{} is not exported",
                e.symbol
            );
        }
        assert!(crate::EXPORTS.len() > 600);
    }
}
