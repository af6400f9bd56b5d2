//! The guest driver keeps its own copy of the register map (it is written
//! against `docs/abi.md` only, not against the device model's code); this
//! test catches drift between that copy and the device's tables in the
//! `mmio` crate.
//!
//! * Every register of `mmio::regs::GLOBAL_REGS` / `CHANNEL_REGS` must have
//!   a guest constant at the same offset: the `match`es below are
//!   exhaustive, so a register added to the device fails to compile here
//!   until the guest knows it, and a moved offset on either side fails.
//! * Every `pub const` of the guest's `src/regs.rs` must be compared with
//!   its device counterpart (or be listed as having none, with a reason):
//!   a constant added to the guest without a check here fails
//!   `every_guest_constant_is_checked`.
//! * Channel states and error codes are compared both ways through
//!   exhaustive matches over the device's enums.

use std::collections::BTreeSet;

use mmio::pci::{ConfigSpace, PciIdentity};
use mmio::regs::{
    Caps, ChannelCtrl, ChannelReg, ChannelStatus, GlobalReg, Intr, MmuFaultInfo, RunlistInfo,
    CHANNEL_REGS, GLOBAL_REGS,
};
use mmio::{Decoded, RegRef, RegisterFile};
use vgpu_guest::regs;
use vgpu_guest::regs::ChannelState;
use vgpu_guest::ErrorCode;

/// The guest's offset of device global register `r` (exhaustive: a new
/// device register does not compile until it is added here).
fn guest_global(r: GlobalReg) -> u32 {
    match r {
        GlobalReg::Id => regs::ID,
        GlobalReg::Version => regs::VERSION,
        GlobalReg::Caps => regs::CAPS,
        GlobalReg::NumChannels => regs::NUM_CHANNELS,
        GlobalReg::VramSizeLo => regs::VRAM_SIZE,
        GlobalReg::VramSizeHi => regs::VRAM_SIZE + 4,
        GlobalReg::PtxVaBaseLo => regs::PTX_VA_BASE,
        GlobalReg::PtxVaBaseHi => regs::PTX_VA_BASE + 4,
        GlobalReg::IntrStatus => regs::INTR_STATUS,
        GlobalReg::IntrEnable => regs::INTR_ENABLE,
        GlobalReg::IntrChannelLo => regs::INTR_CHANNEL_LO,
        GlobalReg::IntrChannelHi => regs::INTR_CHANNEL_HI,
        GlobalReg::TimerLo => regs::TIMER_LO,
        GlobalReg::TimerHi => regs::TIMER_HI,
        GlobalReg::Reset => regs::RESET,
        GlobalReg::Status => regs::STATUS,
        GlobalReg::MmuInvalidate => regs::MMU_INVALIDATE,
        GlobalReg::MmuFaultInfo => regs::MMU_FAULT_INFO,
        GlobalReg::MmuFaultAddrLo => regs::MMU_FAULT_ADDR,
        GlobalReg::MmuFaultAddrHi => regs::MMU_FAULT_ADDR + 4,
        GlobalReg::RunlistBaseLo => regs::RUNLIST_BASE,
        GlobalReg::RunlistBaseHi => regs::RUNLIST_BASE + 4,
        GlobalReg::RunlistSubmit => regs::RUNLIST_SUBMIT,
        GlobalReg::RunlistInfo => regs::RUNLIST_INFO,
        GlobalReg::Doorbell => regs::DOORBELL,
        GlobalReg::InfoIndex => regs::INFO_INDEX,
        GlobalReg::InfoData => regs::INFO_DATA,
    }
}

/// The guest's offset (inside a channel block) of device channel
/// register `r` (exhaustive, as above).
fn guest_channel(r: ChannelReg) -> u32 {
    match r {
        ChannelReg::InstLo => regs::CH_INST,
        ChannelReg::InstHi => regs::CH_INST + 4,
        ChannelReg::Ctrl => regs::CH_CTRL,
        ChannelReg::Status => regs::CH_STATUS,
        ChannelReg::GpGet => regs::CH_GP_GET,
        ChannelReg::GpPut => regs::CH_GP_PUT,
        ChannelReg::ErrorInfo => regs::CH_ERROR_INFO,
    }
}

/// The guest's channel state for a device one (exhaustive).
fn guest_state(s: mmio::regs::ChannelState) -> ChannelState {
    use mmio::regs::ChannelState as D;
    match s {
        D::Disabled => ChannelState::Disabled,
        D::Idle => ChannelState::Idle,
        D::Pending => ChannelState::Pending,
        D::Running => ChannelState::Running,
        D::Blocked => ChannelState::Blocked,
        D::Faulted => ChannelState::Faulted,
    }
}

/// The guest's error code for a device one (exhaustive).
fn guest_error(e: mmio::regs::ErrorCode) -> ErrorCode {
    use mmio::regs::ErrorCode as D;
    match e {
        D::PdeInvalid => ErrorCode::PdeInvalid,
        D::PteInvalid => ErrorCode::PteInvalid,
        D::ReadOnly => ErrorCode::ReadOnly,
        D::VramRange => ErrorCode::VramRange,
        D::SysmemUnmapped => ErrorCode::SysmemUnmapped,
        D::PageTableUnmapped => ErrorCode::PageTableUnmapped,
        D::VaRange => ErrorCode::VaRange,
        D::MisalignedPage => ErrorCode::MisalignedPage,
        D::InstanceInvalid => ErrorCode::InstanceInvalid,
        D::GpfifoEntryInvalid => ErrorCode::GpfifoEntryInvalid,
        D::MalformedHeader => ErrorCode::MalformedHeader,
        D::PushbufferTruncated => ErrorCode::PushbufferTruncated,
        D::InvalidSubchannel => ErrorCode::InvalidSubchannel,
        D::InvalidClass => ErrorCode::InvalidClass,
        D::InvalidMethod => ErrorCode::InvalidMethod,
        D::InvalidArgument => ErrorCode::InvalidArgument,
        D::Unsupported => ErrorCode::Unsupported,
        D::EngineError => ErrorCode::EngineError,
        D::RunlistInvalid => ErrorCode::RunlistInvalid,
        D::SemaphoreTimeout => ErrorCode::SemaphoreTimeout,
        D::EngineTimeout => ErrorCode::EngineTimeout,
        D::ModuleInvalid => ErrorCode::ModuleInvalid,
        D::KernelFault => ErrorCode::KernelFault,
    }
}

fn global_desc(r: GlobalReg) -> &'static mmio::regs::RegDesc<GlobalReg> {
    GLOBAL_REGS
        .iter()
        .find(|d| d.reg == r)
        .unwrap_or_else(|| panic!("{r:?} is not in mmio::regs::GLOBAL_REGS"))
}

fn channel_desc(r: ChannelReg) -> &'static mmio::regs::RegDesc<ChannelReg> {
    CHANNEL_REGS
        .iter()
        .find(|d| d.reg == r)
        .unwrap_or_else(|| panic!("{r:?} is not in mmio::regs::CHANNEL_REGS"))
}

/// A PCI configuration space of the device, to read its fixed fields.
fn config_space() -> ConfigSpace {
    ConfigSpace::new(PciIdentity {
        vendor_id: 0x7667,
        device_id: 0x1001,
        subsystem_vendor_id: 0x7667,
        subsystem_id: 1,
        revision: 1,
    })
}

fn config_read(cs: &ConfigSpace, offset: u16, len: usize) -> u32 {
    let mut b = [0u8; 4];
    cs.read(offset as u64, &mut b[..len]).expect("config read");
    u32::from_le_bytes(b)
}

/// Every guest constant of `src/regs.rs` with a device counterpart, as
/// (name, guest value, device value).
fn pairs() -> Vec<(&'static str, u64, u64)> {
    let g = |r| global_desc(r).offset as u64;
    let c = |r| channel_desc(r).offset as u64;
    let caps = |f: fn(&mut Caps)| {
        let mut v = Caps(0);
        f(&mut v);
        v.0 as u64
    };
    let cs = config_space();
    macro_rules! p {
        ($name:ident, $device:expr) => {
            (stringify!($name), regs::$name as u64, ($device) as u64)
        };
    }
    vec![
        // Global registers (64-bit pairs by their low half; the high
        // halves are checked in `every_device_register_has_the_guest_offset`).
        p!(ID, g(GlobalReg::Id)),
        p!(VERSION, g(GlobalReg::Version)),
        p!(CAPS, g(GlobalReg::Caps)),
        p!(NUM_CHANNELS, g(GlobalReg::NumChannels)),
        p!(VRAM_SIZE, g(GlobalReg::VramSizeLo)),
        p!(PTX_VA_BASE, g(GlobalReg::PtxVaBaseLo)),
        p!(INTR_STATUS, g(GlobalReg::IntrStatus)),
        p!(INTR_ENABLE, g(GlobalReg::IntrEnable)),
        p!(INTR_CHANNEL_LO, g(GlobalReg::IntrChannelLo)),
        p!(INTR_CHANNEL_HI, g(GlobalReg::IntrChannelHi)),
        p!(TIMER_LO, g(GlobalReg::TimerLo)),
        p!(TIMER_HI, g(GlobalReg::TimerHi)),
        p!(RESET, g(GlobalReg::Reset)),
        p!(STATUS, g(GlobalReg::Status)),
        p!(MMU_INVALIDATE, g(GlobalReg::MmuInvalidate)),
        p!(MMU_FAULT_INFO, g(GlobalReg::MmuFaultInfo)),
        p!(MMU_FAULT_ADDR, g(GlobalReg::MmuFaultAddrLo)),
        p!(RUNLIST_BASE, g(GlobalReg::RunlistBaseLo)),
        p!(RUNLIST_SUBMIT, g(GlobalReg::RunlistSubmit)),
        p!(RUNLIST_INFO, g(GlobalReg::RunlistInfo)),
        p!(DOORBELL, g(GlobalReg::Doorbell)),
        p!(INFO_INDEX, g(GlobalReg::InfoIndex)),
        p!(INFO_DATA, g(GlobalReg::InfoData)),
        // Identity values.
        p!(ID_MAGIC, mmio::regs::ID_MAGIC),
        p!(ID_MAGIC, global_desc(GlobalReg::Id).reset),
        p!(ABI_MAJOR, mmio::regs::ABI_VERSION >> 16),
        (
            "WORDS",
            regs::info::WORDS as u64,
            mmio::devinfo::WORDS as u64,
        ),
        (
            "CUDA_VERSION",
            regs::info::CUDA_VERSION as u64,
            mmio::devinfo::CUDA_VERSION as u64,
        ),
        (
            "ATTR_COUNT",
            regs::info::ATTR_COUNT as u64,
            mmio::devinfo::ATTR_COUNT as u64,
        ),
        ("UUID", regs::info::UUID as u64, mmio::devinfo::UUID as u64),
        ("NAME", regs::info::NAME as u64, mmio::devinfo::NAME as u64),
        (
            "NAME_BYTES",
            regs::info::NAME_BYTES as u64,
            mmio::devinfo::NAME_BYTES as u64,
        ),
        (
            "ATTRS",
            regs::info::ATTRS as u64,
            mmio::devinfo::ATTRS as u64,
        ),
        (
            "MAX_ATTRS",
            regs::info::MAX_ATTRS as u64,
            mmio::devinfo::MAX_ATTRS as u64,
        ),
        p!(ABI_MAJOR, global_desc(GlobalReg::Version).reset >> 16),
        // Register fields.
        p!(CAPS_PTX, caps(|v| v.set_ptx(true))),
        p!(CAPS_LARGE_PAGES, caps(|v| v.set_large_pages(true))),
        p!(CAPS_DOORBELL_PAGE, caps(|v| v.set_doorbell_page(true))),
        // The doorbell page.
        p!(DB_REGION, mmio::bar::REGION_BAR4),
        p!(DB_PAGE_SIZE, mmio::bar::BAR4_SIZE),
        p!(DB_DEVICE, mmio::doorbell::DEVICE_OFFSET),
        p!(DB_DEVICE_POLLING, mmio::doorbell::DEVICE_POLLING),
        // STATUS has one bit, BUSY: the register's whole mask.
        p!(STATUS_BUSY, global_desc(GlobalReg::Status).mask),
        p!(MMU_FAULT_INFO_VALID, {
            let mut v = MmuFaultInfo(0);
            v.set_valid(true);
            v.0
        }),
        p!(
            MMU_FAULT_INFO_VALID,
            global_desc(GlobalReg::MmuFaultInfo).mask
        ),
        p!(RUNLIST_INFO_REJECTED, {
            let mut v = RunlistInfo(0);
            v.set_rejected(true);
            v.0
        }),
        // Interrupt causes.
        p!(INTR_HOST, Intr::HOST),
        p!(INTR_MMU_FAULT, Intr::MMU_FAULT),
        p!(INTR_CHANNEL_ERROR, Intr::CHANNEL_ERROR),
        p!(INTR_ALL, Intr::ALL),
        p!(INTR_ALL, global_desc(GlobalReg::IntrStatus).mask),
        p!(INTR_ALL, global_desc(GlobalReg::IntrEnable).mask),
        // Channel blocks.
        p!(CHANNEL_BASE, mmio::regs::CHANNEL_BASE),
        p!(CHANNEL_STRIDE, mmio::regs::CHANNEL_STRIDE),
        p!(CH_INST, c(ChannelReg::InstLo)),
        p!(CH_CTRL, c(ChannelReg::Ctrl)),
        p!(CH_STATUS, c(ChannelReg::Status)),
        p!(CH_GP_GET, c(ChannelReg::GpGet)),
        p!(CH_GP_PUT, c(ChannelReg::GpPut)),
        p!(CH_ERROR_INFO, c(ChannelReg::ErrorInfo)),
        p!(CH_CTRL_ENABLE, ChannelCtrl::ENABLE),
        p!(CH_CTRL_RESET, ChannelCtrl::RESET),
        // PCI configuration space.
        p!(PCI_COMMAND, mmio::pci::PCI_COMMAND),
        p!(PCI_COMMAND_MEMORY, mmio::pci::CMD_MEMORY),
        p!(PCI_COMMAND_BUS_MASTER, mmio::pci::CMD_BUS_MASTER),
        p!(
            PCI_CLASS_3D,
            config_read(&cs, regs::PCI_CLASS_REVISION, 4) >> 8
        ),
        p!(MSIX_CAP, mmio::pci::MSIX_CAP),
        p!(MSIX_CTRL, mmio::pci::MSIX_CAP + 2),
        p!(MSIX_CTRL_ENABLE, mmio::pci::MSIX_CTRL_ENABLE),
    ]
}

/// Guest constants of `src/regs.rs` checked other than through `pairs`,
/// each with where.
const CHECKED_ELSEWHERE: &[(&str, &str)] = &[
    (
        "PCI_VENDOR_ID",
        "config_space_matches (the device's vendor ID is read there)",
    ),
    (
        "PCI_CLASS_REVISION",
        "config_space_matches (the device's revision and class code are read there)",
    ),
];

#[test]
fn guest_constants_equal_the_device_tables() {
    let mismatches: Vec<String> = pairs()
        .into_iter()
        .filter(|(_, guest, device)| guest != device)
        .map(|(name, guest, device)| {
            format!("regs::{name} is {guest:#x} in the guest, {device:#x} in the device")
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "guest and device disagree:\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn doorbell_offsets_match() {
    for c in [0, 1, 63] {
        assert_eq!(
            regs::db_put(c),
            mmio::doorbell::put_offset(c),
            "DB_PUT[{c}]"
        );
    }
}

#[test]
fn every_device_register_has_the_guest_offset() {
    for d in GLOBAL_REGS {
        assert_eq!(
            guest_global(d.reg),
            d.offset,
            "global register {} ({:?})",
            d.name,
            d.reg
        );
    }
    for d in CHANNEL_REGS {
        assert_eq!(
            guest_channel(d.reg),
            d.offset,
            "channel register {} ({:?})",
            d.name,
            d.reg
        );
    }
}

#[test]
fn the_device_decodes_the_guest_offsets() {
    let rf = RegisterFile::new(mmio::regs::MAX_CHANNELS);
    for d in GLOBAL_REGS {
        assert_eq!(
            rf.decode(guest_global(d.reg)),
            Decoded::Register(RegRef::Global(d.reg)),
            "{}",
            d.name
        );
    }
    for ch in [0, 1, mmio::regs::MAX_CHANNELS - 1] {
        for d in CHANNEL_REGS {
            assert_eq!(
                rf.decode(regs::channel_reg(ch, guest_channel(d.reg))),
                Decoded::Register(RegRef::Channel(mmio::regs::ChannelId(ch), d.reg)),
                "channel {ch} register {}",
                d.name
            );
        }
    }
}

#[test]
fn channel_states_match() {
    use mmio::regs::ChannelState as D;
    for d in [
        D::Disabled,
        D::Idle,
        D::Pending,
        D::Running,
        D::Blocked,
        D::Faulted,
    ] {
        // Through the device's CH_STATUS layout (state in bits 3:0, with an
        // error code above it that the decode must ignore).
        let mut status = ChannelStatus(0);
        status.set_state(d as u8);
        status.set_error(0x22);
        assert_eq!(ChannelState::from_raw(status.0), guest_state(d), "{d:?}");
    }
}

#[test]
fn error_codes_match() {
    use mmio::regs::ErrorCode as D;
    let all = [
        D::PdeInvalid,
        D::PteInvalid,
        D::ReadOnly,
        D::VramRange,
        D::SysmemUnmapped,
        D::PageTableUnmapped,
        D::VaRange,
        D::MisalignedPage,
        D::InstanceInvalid,
        D::GpfifoEntryInvalid,
        D::MalformedHeader,
        D::PushbufferTruncated,
        D::InvalidSubchannel,
        D::InvalidClass,
        D::InvalidMethod,
        D::InvalidArgument,
        D::Unsupported,
        D::EngineError,
        D::RunlistInvalid,
        D::SemaphoreTimeout,
        D::EngineTimeout,
        D::ModuleInvalid,
        D::KernelFault,
    ];
    for d in all {
        let g = guest_error(d);
        assert_eq!(g.raw(), d as u8, "{d:?}");
        assert_eq!(ErrorCode::from_raw(d as u8), g, "{d:?}");
        assert_eq!(g.is_mmu_fault(), d.is_mmu_fault(), "{d:?}");
    }
    // Every code the guest names is one the device defines.
    let device: BTreeSet<u8> = all.iter().map(|&d| d as u8).collect();
    for raw in 0..=u8::MAX {
        if !matches!(ErrorCode::from_raw(raw), ErrorCode::Unknown(_)) {
            assert!(
                device.contains(&raw),
                "the guest names code {raw:#04x}, the device does not"
            );
        }
    }
}

#[test]
fn config_space_matches() {
    let cs = config_space();
    assert_eq!(config_read(&cs, regs::PCI_VENDOR_ID, 2), 0x7667);
    let class_rev = config_read(&cs, regs::PCI_CLASS_REVISION, 4);
    assert_eq!(class_rev & 0xFF, 1, "revision");
    assert_eq!(class_rev >> 8, regs::PCI_CLASS_3D);
    // The MSI-X capability (ID 0x11) is where the guest looks for it, and
    // its enable bit is the one the device acts on.
    assert_eq!(
        config_read(&cs, regs::MSIX_CAP, 1),
        0x11,
        "MSI-X capability ID"
    );
    let mut cs = cs;
    let ctl = config_read(&cs, regs::MSIX_CTRL, 2) as u16 | regs::MSIX_CTRL_ENABLE;
    cs.write(regs::MSIX_CTRL as u64, &ctl.to_le_bytes())
        .expect("config write");
    assert!(cs.msix_enabled(), "MSIX_CTRL_ENABLE enables MSI-X");
    // The command bits the transports set are memory space and bus master.
    let cmd = regs::PCI_COMMAND_MEMORY | regs::PCI_COMMAND_BUS_MASTER;
    cs.write(regs::PCI_COMMAND as u64, &cmd.to_le_bytes())
        .expect("config write");
    assert_eq!(
        cs.command() & (mmio::pci::CMD_MEMORY | mmio::pci::CMD_BUS_MASTER),
        cmd
    );
}

/// Names of the `pub const`s of the guest's `src/regs.rs`.
fn guest_constant_names() -> BTreeSet<String> {
    include_str!("../src/regs.rs")
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("pub const "))
        .filter(|rest| !rest.starts_with("fn "))
        .filter_map(|rest| rest.split(':').next())
        .map(|n| n.trim().to_string())
        .collect()
}

#[test]
fn every_guest_constant_is_checked() {
    let names = guest_constant_names();
    assert!(names.contains("DOORBELL") && names.len() > 40, "{names:?}");
    let checked: BTreeSet<String> = pairs()
        .iter()
        .map(|(n, _, _)| n.to_string())
        .chain(CHECKED_ELSEWHERE.iter().map(|(n, _)| n.to_string()))
        .collect();
    let unchecked: Vec<&String> = names.difference(&checked).collect();
    assert!(
        unchecked.is_empty(),
        "guest register constants without a check against the device: {unchecked:?}"
    );
}
