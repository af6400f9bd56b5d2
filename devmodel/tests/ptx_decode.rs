//! The audit of guest PTX (ABI §5.4, §7.1): `MODULE_LOAD` and launches of
//! `PROGRAM = PROG_PTX | slot` decode to engine operations that carry what
//! the guest gave (text, name, parameters, grid, block) and the kernel map
//! of the channel's address space, on a backend with `CAPS.PTX`; elsewhere,
//! and for bad arguments, the channel stops before anything runs.

use std::collections::HashMap;
use std::sync::Arc;

use devmodel::classes::MethodState;
use devmodel::command::{Command, ModuleOp, Op};
use devmodel::gmmu::{Aperture, Extent, Fault, KernelMap, KernelRun};
use devmodel::harness::{Pb, SUB_COMPUTE};
use devmodel::pushbuf::{parse_segment, AddressSpace, SegmentError};
use mmio::methods::compute;
use mmio::regs::ErrorCode;

/// An address space of identity-mapped system memory holding `bytes` at
/// chosen VAs, with or without a PTX backend behind it.
struct Space {
    bytes: HashMap<u64, Vec<u8>>,
    map: Option<Arc<KernelMap>>,
}

impl AddressSpace for Space {
    fn translate(&mut self, va: u64, len: u64, _write: bool) -> Result<Vec<Extent>, Fault> {
        Ok(vec![Extent {
            aperture: Aperture::Sysmem,
            addr: va,
            len,
        }])
    }
    fn read(&mut self, va: u64, len: u32) -> Result<Vec<u8>, Fault> {
        let mut b = self.bytes.get(&va).cloned().unwrap_or_default();
        b.resize(len as usize, 0);
        Ok(b)
    }
    fn runs_ptx(&self) -> bool {
        self.map.is_some()
    }
    fn kernel_map(&mut self) -> Option<Arc<KernelMap>> {
        self.map.clone()
    }
}

const TEXT: u64 = 0x10_0000;
const LOG: u64 = 0x20_0000;
const NAME: u64 = 0x30_0000;
const PARAMS: u64 = 0x40_0000;
const PTX: &[u8] = b".version 8.0\n.target sm_90\n.address_size 64\n";

fn space(ptx: bool) -> Space {
    let mut bytes = HashMap::new();
    bytes.insert(TEXT, PTX.to_vec());
    bytes.insert(NAME, b"vec_add".to_vec());
    bytes.insert(PARAMS, (1..=24).collect());
    let map = ptx.then(|| {
        Arc::new(KernelMap {
            id: 9,
            runs: vec![KernelRun {
                va: 0,
                vram: 0,
                len: 2 << 20,
                read_only: false,
            }],
        })
    });
    Space { bytes, map }
}

fn lo_hi(v: u64) -> [u32; 2] {
    [v as u32, (v >> 32) as u32]
}

/// Set up a module load of `size` bytes of text with a `log`-byte log into
/// `slot`.
fn load(size: u32, log: u32, slot: u32) -> Pb {
    let [tl, th] = lo_hi(TEXT);
    let [ll, lh] = lo_hi(LOG);
    Pb::new()
        .bind()
        .incr(SUB_COMPUTE, compute::MODULE_LO, &[tl, th, size])
        .incr(SUB_COMPUTE, compute::MODULE_LOG_LO, &[ll, lh, log])
        .incr(SUB_COMPUTE, compute::MODULE_LOAD, &[slot])
}

/// Launch `vec_add` of `slot` with a 24-byte parameter block.
fn launch(slot: u32, grid: [u32; 3], name_len: u32) -> Pb {
    let [nl, nh] = lo_hi(NAME);
    let [pl, ph] = lo_hi(PARAMS);
    Pb::new()
        .bind()
        .incr(
            SUB_COMPUTE,
            compute::PROGRAM,
            &[compute::PROG_PTX | slot, pl, ph, 24],
        )
        .incr(SUB_COMPUTE, compute::GRID_X, &grid)
        .incr(SUB_COMPUTE, compute::BLOCK_X, &[256, 1, 1])
        .incr(SUB_COMPUTE, compute::FUNC_NAME_LO, &[nl, nh, name_len])
        .incr(SUB_COMPUTE, compute::LAUNCH, &[0])
}

fn decode(pb: &Pb, sp: &mut Space) -> Result<Vec<Command>, SegmentError> {
    parse_segment(&pb.0, &mut MethodState::default(), sp)
}

fn code(r: Result<Vec<Command>, SegmentError>) -> ErrorCode {
    match r {
        Ok(c) => panic!("decoded {c:?}"),
        Err(e) => e.code,
    }
}

#[test]
fn a_module_load_carries_the_text_and_the_audited_log_buffer() {
    let cmds = decode(&load(PTX.len() as u32, 4096, 3), &mut space(true)).unwrap();
    let [Command::Engine(Op::ModuleLoad { slot, text, log })] = &cmds[..] else {
        panic!("{cmds:?}")
    };
    assert_eq!(*slot, 3);
    assert_eq!(&text[..], PTX);
    assert_eq!(log.iter().map(|e| e.len).sum::<u64>(), 4096);
    assert_eq!(log[0].addr, LOG);
    // No log buffer: none written.
    let cmds = decode(&load(PTX.len() as u32, 0, 0), &mut space(true)).unwrap();
    assert!(matches!(&cmds[..], [Command::Engine(Op::ModuleLoad { log, .. })] if log.is_empty()));
}

#[test]
fn a_kernel_launch_carries_the_guests_launch_and_the_channels_kernel_map() {
    let cmds = decode(&launch(5, [64, 2, 1], 7), &mut space(true)).unwrap();
    let [Command::Engine(Op::Kernel(k))] = &cmds[..] else {
        panic!("{cmds:?}")
    };
    assert_eq!(k.slot, 5);
    assert_eq!(k.func, "vec_add");
    assert_eq!(k.grid, [64, 2, 1]);
    assert_eq!(k.block, [256, 1, 1]);
    assert_eq!(k.params, (1..=24).collect::<Vec<u8>>());
    assert_eq!(k.map.id, 9);
    assert_eq!(k.map.runs.len(), 1);
}

/// numba-cuda's kernels carry Itanium-mangled names with every argument's type in them
/// (`_ZN6cudapy...Array<float, 1, C, mutable, aligned>...`): several hundred bytes, which reach
/// the engine whole.
#[test]
fn a_long_mangled_kernel_name_reaches_the_engine_whole() {
    let name: String = std::iter::once("_ZN6cudapy5numba4cuda5tests".to_string())
        .chain((0..40).map(|i| format!("5Array{i}IfLi1E1C7mutable7alignedE")))
        .collect();
    assert!(name.len() > 600 && name.len() <= compute::MAX_FUNC_NAME as usize);
    let mut sp = space(true);
    sp.bytes.insert(NAME, name.clone().into_bytes());
    let cmds = decode(&launch(0, [1, 1, 1], name.len() as u32), &mut sp).unwrap();
    let [Command::Engine(Op::Kernel(k))] = &cmds[..] else {
        panic!("{cmds:?}")
    };
    assert_eq!(k.func, name);
}

#[test]
fn ptx_without_a_ptx_backend_is_unsupported() {
    assert_eq!(
        code(decode(&load(PTX.len() as u32, 0, 0), &mut space(false))),
        ErrorCode::Unsupported
    );
    assert_eq!(
        code(decode(&launch(0, [1, 1, 1], 7), &mut space(false))),
        ErrorCode::Unsupported
    );
}

#[test]
fn bad_ptx_arguments_stop_the_channel_before_anything_runs() {
    let bad = |pb: Pb| code(decode(&pb, &mut space(true)));
    let n = PTX.len() as u32;
    assert_eq!(
        bad(load(n, 0, compute::MAX_MODULES)),
        ErrorCode::InvalidArgument
    );
    assert_eq!(bad(load(0, 0, 0)), ErrorCode::InvalidArgument);
    assert_eq!(
        bad(load(compute::MAX_MODULE_BYTES + 1, 0, 0)),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        bad(load(n, compute::MAX_MODULE_LOG + 1, 0)),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        bad(launch(compute::PTX_SLOTS, [1, 1, 1], 7)),
        ErrorCode::InvalidArgument
    );
    assert_eq!(bad(launch(0, [0, 1, 1], 7)), ErrorCode::InvalidArgument);
    assert_eq!(bad(launch(0, [1, 1, 1], 0)), ErrorCode::InvalidArgument);
    assert_eq!(
        bad(launch(0, [1, 1, 1], compute::MAX_FUNC_NAME + 1)),
        ErrorCode::InvalidArgument
    );
    // A name with a NUL in it (the 7-byte name read as 9 bytes, padded
    // with zeros) is not a function name.
    assert_eq!(bad(launch(0, [1, 1, 1], 9)), ErrorCode::InvalidArgument);
}

// ---- ABI 1.3: modules by handle, queries, dynamic shared memory ---------------------

const INFO: u64 = 0x50_0000;

/// `FUNC_INFO` (`function`) or `MODULE_GLOBAL` of the 7-byte name in module `handle`.
fn query(method: u32, handle: u32, info: u64) -> Pb {
    let [nl, nh] = lo_hi(NAME);
    let [il, ih] = lo_hi(info);
    Pb::new()
        .bind()
        .incr(SUB_COMPUTE, compute::FUNC_NAME_LO, &[nl, nh, 7])
        .incr(SUB_COMPUTE, compute::INFO_LO, &[il, ih])
        .incr(SUB_COMPUTE, method, &[handle])
}

/// Launch `vec_add` of module `handle` with `shared` bytes of dynamic shared memory.
fn launch_module(handle: u32, shared: u32) -> Pb {
    let [nl, nh] = lo_hi(NAME);
    let [pl, ph] = lo_hi(PARAMS);
    Pb::new()
        .bind()
        .incr(
            SUB_COMPUTE,
            compute::PROGRAM,
            &[compute::PROG_MODULE, pl, ph, 24],
        )
        .incr(SUB_COMPUTE, compute::GRID_X, &[8, 1, 1])
        .incr(SUB_COMPUTE, compute::BLOCK_X, &[128, 1, 1])
        .incr(SUB_COMPUTE, compute::FUNC_NAME_LO, &[nl, nh, 7])
        .incr(SUB_COMPUTE, compute::SHARED_MEM_BYTES, &[shared, handle])
        .incr(SUB_COMPUTE, compute::LAUNCH, &[0])
}

#[test]
fn modules_go_by_handle_up_to_the_limit() {
    let last = compute::MAX_MODULES - 1;
    let cmds = decode(&load(PTX.len() as u32, 0, last), &mut space(true)).unwrap();
    assert!(matches!(&cmds[..], [Command::Engine(Op::ModuleLoad { slot, .. })] if *slot == last));
    let cmds = decode(&launch_module(last, 64 << 10), &mut space(true)).unwrap();
    let [Command::Engine(Op::Kernel(k))] = &cmds[..] else {
        panic!("{cmds:?}")
    };
    assert_eq!(
        (k.slot, k.shared, k.func.as_str()),
        (last, 64 << 10, "vec_add")
    );
    assert_eq!((k.grid, k.block), ([8, 1, 1], [128, 1, 1]));
    // ABI 1.2's launches have no dynamic shared memory, whatever the method state says.
    let pb = Pb::new()
        .bind()
        .incr(SUB_COMPUTE, compute::SHARED_MEM_BYTES, &[4096]);
    let mut pb2 = pb.0.clone();
    pb2.extend_from_slice(&launch(2, [1, 1, 1], 7).0);
    let cmds = parse_segment(&pb2, &mut MethodState::default(), &mut space(true)).unwrap();
    assert!(matches!(&cmds[..], [Command::Engine(Op::Kernel(k))] if k.shared == 0 && k.slot == 2));
    let cmds = decode(
        &Pb::new()
            .bind()
            .incr(SUB_COMPUTE, compute::MODULE_UNLOAD, &[last]),
        &mut space(true),
    )
    .unwrap();
    assert_eq!(
        cmds,
        vec![Command::Engine(Op::Module(ModuleOp::Unload {
            handle: last
        }))]
    );
}

#[test]
fn queries_carry_the_name_and_the_audited_answer_buffer() {
    let cmds = decode(&query(compute::FUNC_INFO, 12, INFO), &mut space(true)).unwrap();
    let [Command::Engine(Op::Module(ModuleOp::FuncInfo {
        handle,
        name,
        answer,
    }))] = &cmds[..]
    else {
        panic!("{cmds:?}")
    };
    assert_eq!((*handle, name.as_str()), (12, "vec_add"));
    assert_eq!(answer[0].addr, INFO);
    assert_eq!(
        answer.iter().map(|e| e.len).sum::<u64>(),
        compute::FUNC_INFO_BYTES as u64
    );
    let cmds = decode(&query(compute::MODULE_GLOBAL, 0, INFO), &mut space(true)).unwrap();
    assert!(matches!(
        &cmds[..],
        [Command::Engine(Op::Module(ModuleOp::Global { answer, .. }))]
            if answer.iter().map(|e| e.len).sum::<u64>() == compute::GLOBAL_INFO_BYTES as u64
    ));
}

#[test]
fn abi_1_3_methods_are_bounded_and_need_a_ptx_backend() {
    let bad = |pb: Pb, ptx: bool| code(decode(&pb, &mut space(ptx)));
    let unload = |h| {
        Pb::new()
            .bind()
            .incr(SUB_COMPUTE, compute::MODULE_UNLOAD, &[h])
    };
    assert_eq!(
        bad(query(compute::FUNC_INFO, 0, INFO), false),
        ErrorCode::Unsupported
    );
    assert_eq!(
        bad(query(compute::MODULE_GLOBAL, 0, INFO), false),
        ErrorCode::Unsupported
    );
    assert_eq!(bad(unload(0), false), ErrorCode::Unsupported);
    assert_eq!(bad(launch_module(0, 0), false), ErrorCode::Unsupported);
    let max = compute::MAX_MODULES;
    assert_eq!(bad(unload(max), true), ErrorCode::InvalidArgument);
    assert_eq!(
        bad(query(compute::FUNC_INFO, max, INFO), true),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        bad(query(compute::FUNC_INFO, 0, INFO + 4), true),
        ErrorCode::InvalidArgument
    );
    assert_eq!(bad(launch_module(max, 0), true), ErrorCode::InvalidArgument);
    assert_eq!(
        bad(launch_module(0, compute::MAX_SHARED_MEM + 1), true),
        ErrorCode::InvalidArgument
    );
}
