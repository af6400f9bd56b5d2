//! The guest driver keeps its own copy of the pushbuffer ABI (method
//! headers, class ids, methods, program ids and limits: `src/pushbuf.rs`,
//! `src/programs.rs`), written against `docs/abi.md` only; this test
//! catches drift between that copy and the device's `mmio::methods`.
//!
//! Every `pub const` of those two guest files must be compared with its
//! device counterpart here: a constant added to the guest without a check
//! fails `every_guest_method_constant_is_checked`.

use std::collections::BTreeSet;

use mmio::methods::{self as dev, MethodHeader};
use vgpu_guest::programs;
use vgpu_guest::pushbuf::{self as guest, compute, copy, host};

/// (name as written in its file, guest value, device value).
type Pair = (&'static str, u64, u64);

macro_rules! p {
    ($name:literal, $guest:expr, $device:expr) => {
        ($name, ($guest) as u64, ($device) as u64)
    };
}

/// Every guest constant with a device counterpart.
fn pairs() -> Vec<Pair> {
    [header_pairs(), host_pairs(), copy_pairs(), compute_pairs()].concat()
}

/// Header opcodes, the count field, the GPFIFO entry's length.
fn header_pairs() -> Vec<Pair> {
    vec![
        // Header opcodes and the count field.
        p!("OP_INCR", guest::OP_INCR, dev::OP_INCR),
        p!("OP_NONINCR", guest::OP_NONINCR, dev::OP_NONINCR),
        p!("OP_IMMD", guest::OP_IMMD, dev::OP_IMMD),
        p!("OP_ONE_INC", guest::OP_ONE_INC, dev::OP_ONE_INC),
        p!("OP_END_SEGMENT", guest::OP_END_SEGMENT, dev::OP_END_SEGMENT),
        p!("MAX_COUNT", guest::MAX_COUNT, {
            let mut h = MethodHeader(0);
            h.set_count(u32::MAX);
            h.count()
        }),
        p!("MAX_SEGMENT_WORDS", guest::MAX_SEGMENT_WORDS, {
            let mut e = devmodel::channel::GpfifoEntry(0);
            e.set_length(u32::MAX);
            e.length()
        }),
    ]
}

fn host_pairs() -> Vec<Pair> {
    vec![
        p!("host::SET_OBJECT", host::SET_OBJECT, dev::host::SET_OBJECT),
        p!("host::NOP", host::NOP, dev::host::NOP),
        p!(
            "host::SEM_ADDR_LO",
            host::SEM_ADDR_LO,
            dev::host::SEM_ADDR_LO
        ),
        p!(
            "host::SEM_ADDR_HI",
            host::SEM_ADDR_HI,
            dev::host::SEM_ADDR_HI
        ),
        p!(
            "host::SEM_PAYLOAD_LO",
            host::SEM_PAYLOAD_LO,
            dev::host::SEM_PAYLOAD_LO
        ),
        p!(
            "host::SEM_PAYLOAD_HI",
            host::SEM_PAYLOAD_HI,
            dev::host::SEM_PAYLOAD_HI
        ),
        p!(
            "host::SEM_EXECUTE",
            host::SEM_EXECUTE,
            dev::host::SEM_EXECUTE
        ),
        p!(
            "host::NON_STALL_INTERRUPT",
            host::NON_STALL_INTERRUPT,
            dev::host::NON_STALL_INTERRUPT
        ),
        p!("host::WFI", host::WFI, dev::host::WFI),
        p!(
            "host::SEM_RELEASE",
            host::SEM_RELEASE,
            dev::host::SEM_OP_RELEASE
        ),
        p!(
            "host::SEM_ACQUIRE_EQ",
            host::SEM_ACQUIRE_EQ,
            dev::host::SEM_OP_ACQUIRE_EQ
        ),
        p!(
            "host::SEM_ACQUIRE_GEQ",
            host::SEM_ACQUIRE_GEQ,
            dev::host::SEM_OP_ACQUIRE_GEQ
        ),
        p!(
            "host::SEM_PAYLOAD_64",
            host::SEM_PAYLOAD_64,
            dev::host::SEM_PAYLOAD_64
        ),
        p!(
            "host::SEM_TIMESTAMP",
            host::SEM_TIMESTAMP,
            dev::host::SEM_TIMESTAMP
        ),
        p!(
            "host::SEM_INTERRUPT",
            host::SEM_INTERRUPT,
            dev::host::SEM_INTERRUPT
        ),
    ]
}

fn copy_pairs() -> Vec<Pair> {
    vec![
        p!("copy::CLASS", copy::CLASS, dev::COPY_CLASS),
        p!("copy::SRC_LO", copy::SRC_LO, dev::copy::SRC_LO),
        p!("copy::DST_LO", copy::DST_LO, dev::copy::DST_LO),
        p!("copy::SRC_PITCH", copy::SRC_PITCH, dev::copy::SRC_PITCH),
        p!("copy::DST_PITCH", copy::DST_PITCH, dev::copy::DST_PITCH),
        p!("copy::LINE_BYTES", copy::LINE_BYTES, dev::copy::LINE_BYTES),
        p!("copy::LINE_COUNT", copy::LINE_COUNT, dev::copy::LINE_COUNT),
        p!(
            "copy::MEMSET_PATTERN",
            copy::MEMSET_PATTERN,
            dev::copy::MEMSET_PATTERN
        ),
        p!("copy::LAUNCH", copy::LAUNCH, dev::copy::LAUNCH),
        p!(
            "copy::LAUNCH_COPY_1D",
            copy::LAUNCH_COPY_1D,
            dev::copy::OP_COPY_1D
        ),
        p!(
            "copy::LAUNCH_COPY_2D",
            copy::LAUNCH_COPY_2D,
            dev::copy::OP_COPY_2D
        ),
        p!(
            "copy::LAUNCH_MEMSET_1D",
            copy::LAUNCH_MEMSET_1D,
            dev::copy::OP_MEMSET_1D
        ),
        p!(
            "copy::LAUNCH_MEMSET_2D",
            copy::LAUNCH_MEMSET_2D,
            dev::copy::OP_MEMSET_2D
        ),
        p!("copy::MAX_BYTES", copy::MAX_BYTES, dev::MAX_COMMAND_BYTES),
    ]
}

/// COMPUTE, and the built-in programs (src/programs.rs).
fn compute_pairs() -> Vec<Pair> {
    vec![
        p!("compute::CLASS", compute::CLASS, dev::COMPUTE_CLASS),
        p!("compute::PROGRAM", compute::PROGRAM, dev::compute::PROGRAM),
        p!(
            "compute::PARAMS_LO",
            compute::PARAMS_LO,
            dev::compute::PARAMS_LO
        ),
        p!(
            "compute::PARAMS_SIZE",
            compute::PARAMS_SIZE,
            dev::compute::PARAMS_SIZE
        ),
        p!("compute::GRID_X", compute::GRID_X, dev::compute::GRID_X),
        p!("compute::BLOCK_X", compute::BLOCK_X, dev::compute::BLOCK_X),
        p!(
            "compute::MODULE_LO",
            compute::MODULE_LO,
            dev::compute::MODULE_LO
        ),
        p!(
            "compute::MODULE_SIZE",
            compute::MODULE_SIZE,
            dev::compute::MODULE_SIZE
        ),
        p!(
            "compute::MODULE_LOAD",
            compute::MODULE_LOAD,
            dev::compute::MODULE_LOAD
        ),
        p!(
            "compute::FUNC_NAME_LO",
            compute::FUNC_NAME_LO,
            dev::compute::FUNC_NAME_LO
        ),
        p!(
            "compute::FUNC_NAME_SIZE",
            compute::FUNC_NAME_SIZE,
            dev::compute::FUNC_NAME_SIZE
        ),
        p!(
            "compute::MODULE_LOG_LO",
            compute::MODULE_LOG_LO,
            dev::compute::MODULE_LOG_LO
        ),
        p!(
            "compute::MODULE_LOG_SIZE",
            compute::MODULE_LOG_SIZE,
            dev::compute::MODULE_LOG_SIZE
        ),
        p!("compute::LAUNCH", compute::LAUNCH, dev::compute::LAUNCH),
        p!(
            "compute::MAX_MODULE_BYTES",
            compute::MAX_MODULE_BYTES,
            dev::compute::MAX_MODULE_BYTES
        ),
        p!(
            "compute::MAX_MODULE_LOG",
            compute::MAX_MODULE_LOG,
            dev::compute::MAX_MODULE_LOG
        ),
        p!(
            "compute::MAX_FUNC_NAME",
            compute::MAX_FUNC_NAME,
            dev::compute::MAX_FUNC_NAME
        ),
        p!(
            "compute::PROGRAM_PTX",
            compute::PROGRAM_PTX,
            dev::compute::PROG_PTX
        ),
        p!(
            "compute::PTX_SLOTS",
            compute::PTX_SLOTS,
            dev::compute::PTX_SLOTS
        ),
        p!("compute::MAX_PARAMS", compute::MAX_PARAMS, dev::MAX_PARAMS),
        // ABI 1.3.
        p!(
            "compute::SHARED_MEM_BYTES",
            compute::SHARED_MEM_BYTES as u64,
            dev::compute::SHARED_MEM_BYTES as u64
        ),
        p!(
            "compute::MODULE_HANDLE",
            compute::MODULE_HANDLE as u64,
            dev::compute::MODULE_HANDLE as u64
        ),
        p!(
            "compute::INFO_LO",
            compute::INFO_LO as u64,
            dev::compute::INFO_LO as u64
        ),
        p!(
            "compute::FUNC_INFO",
            compute::FUNC_INFO as u64,
            dev::compute::FUNC_INFO as u64
        ),
        p!(
            "compute::MODULE_GLOBAL",
            compute::MODULE_GLOBAL as u64,
            dev::compute::MODULE_GLOBAL as u64
        ),
        p!(
            "compute::MODULE_UNLOAD",
            compute::MODULE_UNLOAD as u64,
            dev::compute::MODULE_UNLOAD as u64
        ),
        p!(
            "compute::PROGRAM_MODULE",
            compute::PROGRAM_MODULE as u64,
            dev::compute::PROG_MODULE as u64
        ),
        p!(
            "compute::MAX_MODULES",
            compute::MAX_MODULES as u64,
            dev::compute::MAX_MODULES as u64
        ),
        p!(
            "compute::MAX_FUNC_PARAMS",
            compute::MAX_FUNC_PARAMS as u64,
            dev::compute::MAX_FUNC_PARAMS as u64
        ),
        p!(
            "compute::FUNC_INFO_BYTES",
            compute::FUNC_INFO_BYTES as u64,
            dev::compute::FUNC_INFO_BYTES as u64
        ),
        p!(
            "compute::GLOBAL_INFO_BYTES",
            compute::GLOBAL_INFO_BYTES as u64,
            dev::compute::GLOBAL_INFO_BYTES as u64
        ),
        p!(
            "compute::MAX_SHARED_MEM",
            compute::MAX_SHARED_MEM as u64,
            dev::compute::MAX_SHARED_MEM as u64
        ),
        p!(
            "compute::FUNC_INFO_ATTRS",
            compute::FUNC_INFO_ATTRS as u64,
            dev::compute::FUNC_INFO_ATTRS as u64
        ),
        p!(
            "compute::FUNC_INFO_PARAMS",
            compute::FUNC_INFO_PARAMS as u64,
            dev::compute::FUNC_INFO_PARAMS as u64
        ),
        p!(
            "compute::FUNC_ATTRIBUTES",
            compute::FUNC_ATTRIBUTES as u64,
            dev::compute::FUNC_ATTRIBUTES as u64
        ),
        // Built-in programs (src/programs.rs).
        p!("FILL", programs::FILL, dev::compute::PROG_FILL),
        p!("SAXPY", programs::SAXPY, dev::compute::PROG_SAXPY),
        p!("GEMM_F32", programs::GEMM_F32, dev::compute::PROG_GEMM_F32),
        p!(
            "REDUCE_SUM",
            programs::REDUCE_SUM,
            dev::compute::PROG_REDUCE_SUM
        ),
        p!("SPIN", programs::SPIN, dev::compute::PROG_SPIN),
        p!("GEMM_MAX_DIM", programs::GEMM_MAX_DIM, dev::MAX_GEMM_DIM),
        p!("SPIN_MAX_NS", programs::SPIN_MAX_NS, dev::MAX_SPIN_NS),
    ]
}

/// Guest constants of the two files that are not the device's, with why.
const GUEST_ONLY: &[(&str, &str)] = &[
    (
        "SUBCH_COMPUTE",
        "the subchannel the guest's builder binds COMPUTE to: its choice (ABI §10)",
    ),
    (
        "SUBCH_COPY",
        "the subchannel the guest's builder binds COPY to: its choice (ABI §10)",
    ),
];

#[test]
fn guest_methods_equal_the_device_s() {
    let mismatches: Vec<String> = pairs()
        .into_iter()
        .filter(|(_, guest, device)| guest != device)
        .map(|(name, guest, device)| {
            format!("{name} is {guest:#x} in the guest, {device:#x} in the device")
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "guest and device disagree:\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn guest_headers_decode_on_the_device() {
    for (op, sub, method, count) in [
        (guest::OP_INCR, 1, 0x100, 3),
        (guest::OP_NONINCR, 4, 0x124, guest::MAX_COUNT),
        (guest::OP_IMMD, 7, host::NOP, 0x1ABC),
    ] {
        let h = MethodHeader(guest::header(op, sub, method, count));
        assert_eq!(
            (
                h.opcode() as u32,
                h.subchannel() as u32,
                h.method_dw() << 2,
                h.count()
            ),
            (op, sub, method, count)
        );
        assert_eq!(MethodHeader::new(op as u8, sub as u8, method, count).0, h.0);
    }
}

/// Names of the `pub const`s of a guest source file, qualified by the
/// `pub mod` they sit in.
fn constant_names(src: &str) -> BTreeSet<String> {
    let mut module: Option<String> = None;
    let mut out = BTreeSet::new();
    for l in src.lines() {
        if let Some(m) = l.strip_prefix("pub mod ") {
            module = m.split_whitespace().next().map(str::to_string);
        } else if l == "}" {
            module = None;
        } else if let Some(rest) = l.trim_start().strip_prefix("pub const ") {
            let name = rest.split(':').next().unwrap_or("").trim();
            out.insert(match &module {
                Some(m) => format!("{m}::{name}"),
                None => name.to_string(),
            });
        }
    }
    out
}

#[test]
fn every_guest_method_constant_is_checked() {
    let mut names = constant_names(include_str!("../src/pushbuf.rs"));
    names.extend(constant_names(include_str!("../src/programs.rs")));
    assert!(
        names.contains("compute::LAUNCH") && names.contains("SPIN") && names.len() > 60,
        "{names:?}"
    );
    let checked: BTreeSet<String> = pairs()
        .iter()
        .map(|(n, _, _)| n.to_string())
        .chain(GUEST_ONLY.iter().map(|(n, _)| n.to_string()))
        .collect();
    let unchecked: Vec<&String> = names.difference(&checked).collect();
    assert!(
        unchecked.is_empty(),
        "guest method constants without a check against the device: {unchecked:?}"
    );
}
