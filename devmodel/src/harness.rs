//! A guest-side harness (feature `harness`): plays the guest driver for
//! tests and demos. It builds page tables, instance blocks, GPFIFO rings
//! and pushbuffers in memfd-backed guest RAM and drives a vGPU only through
//! its face (region_read / region_write / dma_map / set_irqs / reset).
//! It panics on anything unexpected: it is test scaffolding, never fed
//! untrusted input.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

use crate::channel::{
    GpfifoEntry, INST_GPFIFO_ENTRIES, INST_GPFIFO_VA, INST_NOTIFIER_VA, INST_PDB, INST_USERD_VA,
};
use crate::{Backend, CpuEngine, Vgpu, VgpuConfig};
use memmap2::MmapMut;
use mmio::bar::{REGION_BAR0, REGION_CONFIG};
use mmio::methods::{
    compute, copy, host, MethodHeader, COMPUTE_CLASS, COPY_CLASS, OP_IMMD, OP_INCR,
};
use mmio::pci::PciIdentity;
use mmio::regs::{ChannelReg, ChannelState, GlobalReg, CHANNEL_BASE, CHANNEL_STRIDE};

pub const RAM_GPA: u64 = 0x8000_0000;
pub const SYS_VA: u64 = 0x40_0000_0000;
pub const VRAM_VA: u64 = 0x10_0000_0000;
pub const SUB_COMPUTE: u8 = 1;
pub const SUB_COPY: u8 = 4;

// BAR0 offsets used by the tests, from the register map (`mmio::regs`):
// the harness is the device model's own client, so it shares the table.
pub const ID: u32 = GlobalReg::Id.offset();
pub const INTR_STATUS: u32 = GlobalReg::IntrStatus.offset();
pub const INTR_ENABLE: u32 = GlobalReg::IntrEnable.offset();
pub const INTR_CHANNEL_LO: u32 = GlobalReg::IntrChannelLo.offset();
pub const TIMER_LO: u32 = GlobalReg::TimerLo.offset();
pub const RESET: u32 = GlobalReg::Reset.offset();
pub const MMU_INVALIDATE: u32 = GlobalReg::MmuInvalidate.offset();
pub const MMU_FAULT_INFO: u32 = GlobalReg::MmuFaultInfo.offset();
pub const MMU_FAULT_ADDR_LO: u32 = GlobalReg::MmuFaultAddrLo.offset();
pub const MMU_FAULT_ADDR_HI: u32 = GlobalReg::MmuFaultAddrHi.offset();
pub const RUNLIST_BASE_LO: u32 = GlobalReg::RunlistBaseLo.offset();
pub const RUNLIST_BASE_HI: u32 = GlobalReg::RunlistBaseHi.offset();
pub const RUNLIST_SUBMIT: u32 = GlobalReg::RunlistSubmit.offset();
pub const RUNLIST_INFO: u32 = GlobalReg::RunlistInfo.offset();
pub const DOORBELL: u32 = GlobalReg::Doorbell.offset();
pub const CH_INST_LO: u32 = ChannelReg::InstLo.offset();
pub const CH_INST_HI: u32 = ChannelReg::InstHi.offset();
pub const CH_CTRL: u32 = ChannelReg::Ctrl.offset();
pub const CH_STATUS: u32 = ChannelReg::Status.offset();
pub const CH_GP_GET: u32 = ChannelReg::GpGet.offset();
pub const CH_ERROR_INFO: u32 = ChannelReg::ErrorInfo.offset();

pub const STATE_IDLE: u32 = ChannelState::Idle as u32;
pub const STATE_BLOCKED: u32 = ChannelState::Blocked as u32;
pub const STATE_FAULTED: u32 = ChannelState::Faulted as u32;

/// Guest RAM: a memfd of `size` bytes, sealed against resizing as QEMU's
/// memfd backend does.
pub fn memfd(size: u64) -> File {
    // SAFETY: memfd_create only reads the NUL-terminated literal name.
    let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0, "memfd_create failed");
    // SAFETY: `fd` is the new descriptor memfd_create just returned (checked
    // >= 0), owned by nothing else, so the File may own and close it.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size).expect("size memfd");
    // SAFETY: fcntl(F_ADD_SEALS) takes an integer argument, touches no
    // process memory, and `f` is an open descriptor this function owns.
    let sealed = unsafe {
        libc::fcntl(
            f.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
        )
    };
    assert_eq!(sealed, 0, "seal memfd");
    f
}

/// A size field of this process's `/proc/self/status` (`VmRSS`, `VmHWM`),
/// in bytes.
pub fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"));
    kib << 10
}

/// An eventfd for MSI-X delivery: the device's copy and the test's.
pub fn eventfd() -> (File, EventCounter) {
    // SAFETY: eventfd(2) takes no pointers; it returns a new descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK) };
    assert!(fd >= 0, "eventfd failed");
    // SAFETY: `fd` is the new, valid descriptor just returned (checked above),
    // owned by nothing else, so the File may take ownership and close it.
    let f = unsafe { File::from_raw_fd(fd) };
    let mine = f.try_clone().expect("dup eventfd");
    (f, EventCounter(mine))
}

/// The test's end of an eventfd.
pub struct EventCounter(File);
impl EventCounter {
    /// Read and reset the counter; an error when nothing was signalled.
    pub fn read(&self) -> std::io::Result<u64> {
        use std::io::Read;
        let mut b = [0u8; 8];
        (&self.0).read_exact(&mut b)?;
        Ok(u64::from_ne_bytes(b))
    }
}

pub fn engine() -> CpuEngine {
    CpuEngine::new(2).expect("start the cpu engine")
}

/// One guest with one vGPU.
pub struct Guest {
    pub vgpu: Vgpu,
    pub ram: MmapMut,
    pub size: u64,
    next_sys: u64,
    next_vram: u64,
    pub pdb: u64,
    pub vram_size: u64,
}

/// A channel the guest set up.
#[derive(Clone, Copy, Debug)]
pub struct Chan {
    pub id: u32,
    pub inst: u64,
    pub gpfifo_gpa: u64,
    pub userd_gpa: u64,
    pub notifier_gpa: u64,
    pub entries: u32,
    pub put: u32,
    pub pb_va: u64,
    pub pb_gpa: u64,
    pub pb_used: u64,
}

pub const PB_BYTES: u64 = 256 * 1024;

/// A test vGPU called `name` with `vram_bytes` of framebuffer and
/// `channels` channels (vendor `0x7667`, device `0x1001`).
pub fn vgpu_config(name: &str, vram_bytes: u64, channels: u32) -> VgpuConfig {
    VgpuConfig {
        name: name.into(),
        identity: PciIdentity {
            vendor_id: 0x7667,
            device_id: 0x1001,
            subsystem_vendor_id: 0x7667,
            subsystem_id: 1,
            revision: 1,
        },
        vram_bytes,
        channels,
    }
}

impl Guest {
    pub fn new(backend: &dyn Backend, ram_mib: u64, vram_mib: u64, channels: u32) -> Guest {
        let cfg = vgpu_config("test", vram_mib << 20, channels);
        Guest::attach(Vgpu::new(cfg, backend).expect("create vgpu"), ram_mib)
    }

    /// Be the guest of an existing vGPU, with `ram_mib` of fresh guest RAM.
    pub fn attach(vgpu: Vgpu, ram_mib: u64) -> Guest {
        let size = ram_mib << 20;
        let fd = memfd(size);
        // SAFETY: the mapping stays valid while it lives: the memfd is this
        // harness's own (no other process can truncate it) and sealed
        // against shrinking, so no access can hit a page beyond its end.
        let ram = unsafe { MmapMut::map_mut(&fd) }.expect("map guest ram");
        let vram_size = vgpu.config().vram_bytes;
        vgpu.dma_map(RAM_GPA, size, fd, 0, true).expect("dma map");
        let mut g = Guest {
            vgpu,
            ram,
            size,
            next_sys: RAM_GPA,
            next_vram: 0,
            pdb: 0,
            vram_size,
        };
        g.pdb = g.alloc_sys(4096);
        g
    }

    pub fn alloc_sys(&mut self, len: u64) -> u64 {
        let gpa = (self.next_sys + 4095) & !4095;
        self.next_sys = gpa + len.max(1);
        assert!(self.next_sys <= RAM_GPA + self.size, "guest RAM exhausted");
        gpa
    }
    pub fn alloc_vram(&mut self, len: u64) -> u64 {
        let off = (self.next_vram + 4095) & !4095;
        self.next_vram = off + len.max(1);
        off
    }

    pub fn w(&mut self, gpa: u64, b: &[u8]) {
        let o = (gpa - RAM_GPA) as usize;
        self.ram[o..o + b.len()].copy_from_slice(b);
    }
    pub fn r(&self, gpa: u64, len: usize) -> Vec<u8> {
        let o = (gpa - RAM_GPA) as usize;
        self.ram[o..o + len].to_vec()
    }
    pub fn w32(&mut self, gpa: u64, v: u32) {
        self.w(gpa, &v.to_le_bytes())
    }
    pub fn w64(&mut self, gpa: u64, v: u64) {
        self.w(gpa, &v.to_le_bytes())
    }
    pub fn r32(&self, gpa: u64) -> u32 {
        u32::from_le_bytes(self.r(gpa, 4).try_into().unwrap())
    }
    pub fn r64(&self, gpa: u64) -> u64 {
        u64::from_le_bytes(self.r(gpa, 8).try_into().unwrap())
    }
    pub fn wf32(&mut self, gpa: u64, v: &[f32]) {
        let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.w(gpa, &b)
    }
    pub fn rf32(&self, gpa: u64, n: usize) -> Vec<f32> {
        self.r(gpa, n * 4)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    pub fn reg(&self, off: u32) -> u32 {
        let mut b = [0u8; 4];
        self.vgpu
            .region_read(REGION_BAR0, off as u64, &mut b)
            .expect("bar0 read");
        u32::from_le_bytes(b)
    }
    pub fn set_reg(&self, off: u32, v: u32) {
        self.vgpu
            .region_write(REGION_BAR0, off as u64, &v.to_le_bytes())
            .expect("bar0 write");
    }
    pub fn chreg(&self, ch: u32, off: u32) -> u32 {
        self.reg(CHANNEL_BASE + ch * CHANNEL_STRIDE + off)
    }
    pub fn set_chreg(&self, ch: u32, off: u32, v: u32) {
        self.set_reg(CHANNEL_BASE + ch * CHANNEL_STRIDE + off, v)
    }
    pub fn cfg32(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.vgpu
            .region_read(REGION_CONFIG, off, &mut b)
            .expect("config read");
        u32::from_le_bytes(b)
    }

    /// The leaf PTE slot for `va`, creating directories as needed.
    pub fn pte_slot(&mut self, va: u64, large: bool) -> u64 {
        let mut table = self.pdb;
        let levels: &[u32] = if large { &[30] } else { &[30, 21] };
        for &shift in levels {
            let slot = table + ((va >> shift) & 0x1FF) * 8;
            let e = self.r64(slot);
            table = if e & 1 != 0 {
                e & 0x000F_FFFF_FFFF_F000
            } else {
                let t = self.alloc_sys(4096);
                self.w64(slot, t | 1 | (1 << 2));
                t
            };
        }
        let shift = if large { 21 } else { 12 };
        table + ((va >> shift) & 0x1FF) * 8
    }

    /// Map `len` bytes at `va` to `phys` in 4 KiB pages.
    pub fn map(&mut self, va: u64, phys: u64, len: u64, sysmem: bool, read_only: bool) {
        let mut off = 0;
        while off < len {
            let slot = self.pte_slot(va + off, false);
            let pte = (phys + off) | 1 | ((sysmem as u64) << 2) | ((read_only as u64) << 4);
            self.w64(slot, pte);
            off += 4096;
        }
    }
    /// Map one 2 MiB page.
    pub fn map_large(&mut self, va: u64, phys: u64, sysmem: bool) {
        let slot = self.pte_slot(va, true);
        self.w64(slot, phys | 1 | 2 | ((sysmem as u64) << 2));
    }
    pub fn write_pte(&mut self, va: u64, pte: u64) {
        let slot = self.pte_slot(va, false);
        self.w64(slot, pte);
    }

    /// A system-memory buffer mapped at SYS_VA + its offset: (gpa, va).
    pub fn sys_buf(&mut self, len: u64) -> (u64, u64) {
        let gpa = self.alloc_sys(len);
        let va = SYS_VA + (gpa - RAM_GPA);
        self.map(va, gpa, (len + 4095) & !4095, true, false);
        (gpa, va)
    }
    /// A VRAM buffer mapped at VRAM_VA + its offset: (offset, va).
    pub fn vram_buf(&mut self, len: u64) -> (u64, u64) {
        let off = self.alloc_vram(len);
        let va = VRAM_VA + off;
        self.map(va, off, (len + 4095) & !4095, false, false);
        (off, va)
    }

    /// Build and enable channel `id` with a GPFIFO of `entries`.
    pub fn channel(&mut self, id: u32, entries: u32) -> Chan {
        let inst = self.alloc_sys(4096);
        let (gpfifo_gpa, gpfifo_va) = self.sys_buf(entries as u64 * 8);
        let (userd_gpa, userd_va) = self.sys_buf(64);
        let (notifier_gpa, notifier_va) = self.sys_buf(16);
        let (pb_gpa, pb_va) = self.sys_buf(PB_BYTES);
        self.w64(inst + INST_PDB, self.pdb);
        self.w64(inst + INST_GPFIFO_VA, gpfifo_va);
        self.w64(inst + INST_GPFIFO_ENTRIES, entries as u64);
        self.w64(inst + INST_USERD_VA, userd_va);
        self.w64(inst + INST_NOTIFIER_VA, notifier_va);
        self.set_chreg(id, CH_INST_LO, inst as u32);
        self.set_chreg(id, CH_INST_HI, (inst >> 32) as u32);
        self.set_chreg(id, CH_CTRL, 1);
        Chan {
            id,
            inst,
            gpfifo_gpa,
            userd_gpa,
            notifier_gpa,
            entries,
            put: 0,
            pb_va,
            pb_gpa,
            pb_used: 0,
        }
    }

    /// Append `words` as one segment and ring the doorbell.
    pub fn submit(&mut self, ch: &mut Chan, words: &[u32]) {
        let entry = self.segment(ch, words);
        self.submit_entry(ch, entry);
    }

    /// Write `words` into the channel's pushbuffer; the GPFIFO entry for it.
    pub fn segment(&mut self, ch: &mut Chan, words: &[u32]) -> u64 {
        let len = words.len() as u64 * 4;
        if ch.pb_used + len > PB_BYTES {
            ch.pb_used = 0;
        }
        let (gpa, va) = (ch.pb_gpa + ch.pb_used, ch.pb_va + ch.pb_used);
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        self.w(gpa, &bytes);
        ch.pb_used += (len + 7) & !7;
        GpfifoEntry::new(va, words.len() as u32).0
    }

    /// Append a raw GPFIFO entry and ring the doorbell.
    pub fn submit_entry(&mut self, ch: &mut Chan, entry: u64) {
        self.put_entry(ch, entry);
        self.set_reg(DOORBELL, ch.id);
    }

    /// Append a raw GPFIFO entry and publish the new `GP_PUT` in USERD,
    /// without ringing any doorbell.
    pub fn put_entry(&mut self, ch: &mut Chan, entry: u64) {
        self.w64(ch.gpfifo_gpa + 8 * ch.put as u64, entry);
        ch.put = (ch.put + 1) % ch.entries;
        self.w32(ch.userd_gpa, ch.put);
    }

    /// Append a raw GPFIFO entry and ring the doorbell the ABI 1.1 way:
    /// store `GP_PUT` to USERD and to the doorbell page, fence, and ring the
    /// trapped `DOORBELL` only if the device says it is not polling.
    /// Returns whether the doorbell trapped.
    pub fn submit_entry_untrapped(&mut self, db: &DoorbellMap, ch: &mut Chan, entry: u64) -> bool {
        self.put_entry(ch, entry);
        db.store_put(ch.id, ch.put);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        if db.device_polling() {
            false
        } else {
            self.set_reg(DOORBELL, ch.id);
            true
        }
    }

    /// Map this vGPU's doorbell page as a VMM would hand it to the guest.
    pub fn map_doorbell(&self) -> DoorbellMap {
        let file = self.vgpu.doorbell_file().expect("doorbell file");
        let map = vm_memory::MmapRegion::from_file(
            vm_memory::FileOffset::new(file, 0),
            mmio::bar::BAR4_SIZE as usize,
        )
        .expect("map doorbell page");
        DoorbellMap(map)
    }

    /// Wait until the channel has consumed everything or stopped.
    pub fn wait(&self, ch: &Chan) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let st = self.chreg(ch.id, CH_STATUS) & 0xF;
            if st == STATE_FAULTED || (self.chreg(ch.id, CH_GP_GET) == ch.put && st == STATE_IDLE) {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "channel {} did not finish: status {:#x}",
                ch.id,
                self.chreg(ch.id, CH_STATUS)
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    pub fn wait_state(&self, ch: u32, state: u32) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.chreg(ch, CH_STATUS) & 0xF != state {
            assert!(
                Instant::now() < deadline,
                "channel {ch} never reached state {state}: {:#x}",
                self.chreg(ch, CH_STATUS)
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// The doorbell page as the driver sees it (mapped, no trap).
pub struct DoorbellMap(vm_memory::MmapRegion);

impl DoorbellMap {
    fn slice(&self) -> vm_memory::VolatileSlice<'_, vm_memory::bitmap::BS<'_, ()>> {
        use vm_memory::VolatileMemory;
        self.0.as_volatile_slice()
    }
    /// Store channel `ch`'s `DB_PUT`.
    pub fn store_put(&self, ch: u32, put: u32) {
        use vm_memory::Bytes;
        let at = mmio::doorbell::put_offset(ch) as usize;
        self.slice()
            .store(put, at, std::sync::atomic::Ordering::SeqCst)
            .expect("DB_PUT store");
    }
    /// `DB_DEVICE.POLLING`.
    pub fn device_polling(&self) -> bool {
        use vm_memory::Bytes;
        let v: u32 = self
            .slice()
            .load(
                mmio::doorbell::DEVICE_OFFSET as usize,
                std::sync::atomic::Ordering::SeqCst,
            )
            .expect("DB_DEVICE load");
        v & mmio::doorbell::DEVICE_POLLING != 0
    }
}

/// A pushbuffer builder.
#[derive(Default, Clone)]
pub struct Pb(pub Vec<u32>);

impl Pb {
    pub fn new() -> Pb {
        Pb::default()
    }
    pub fn incr(mut self, sub: u8, method: u32, data: &[u32]) -> Pb {
        self.0
            .push(MethodHeader::new(OP_INCR, sub, method, data.len() as u32).0);
        self.0.extend_from_slice(data);
        self
    }
    pub fn immd(mut self, sub: u8, method: u32, v: u32) -> Pb {
        self.0.push(MethodHeader::new(OP_IMMD, sub, method, v).0);
        self
    }
    pub fn bind(self) -> Pb {
        self.incr(SUB_COMPUTE, host::SET_OBJECT, &[COMPUTE_CLASS])
            .incr(SUB_COPY, host::SET_OBJECT, &[COPY_CLASS])
    }
    pub fn sem(self, va: u64, payload: u64, exec: u32) -> Pb {
        self.incr(
            0,
            host::SEM_ADDR_LO,
            &[
                va as u32,
                (va >> 32) as u32,
                payload as u32,
                (payload >> 32) as u32,
                exec,
            ],
        )
    }
    pub fn copy(self, src: u64, dst: u64, bytes: u32) -> Pb {
        self.incr(
            SUB_COPY,
            copy::SRC_LO,
            &[
                src as u32,
                (src >> 32) as u32,
                dst as u32,
                (dst >> 32) as u32,
            ],
        )
        .incr(SUB_COPY, copy::LINE_BYTES, &[bytes, 1])
        .incr(SUB_COPY, copy::LAUNCH, &[copy::OP_COPY_1D])
    }
    #[allow(clippy::too_many_arguments)]
    pub fn copy2d(
        self,
        src: u64,
        src_pitch: u32,
        dst: u64,
        dst_pitch: u32,
        width: u32,
        lines: u32,
    ) -> Pb {
        self.incr(
            SUB_COPY,
            copy::SRC_LO,
            &[
                src as u32,
                (src >> 32) as u32,
                dst as u32,
                (dst >> 32) as u32,
                src_pitch,
                dst_pitch,
                width,
                lines,
            ],
        )
        .incr(SUB_COPY, copy::LAUNCH, &[copy::OP_COPY_2D])
    }
    pub fn memset(self, dst: u64, bytes: u32, pattern: u32) -> Pb {
        self.incr(SUB_COPY, copy::DST_LO, &[dst as u32, (dst >> 32) as u32])
            .incr(SUB_COPY, copy::LINE_BYTES, &[bytes, 1, pattern])
            .incr(SUB_COPY, copy::LAUNCH, &[copy::OP_MEMSET_1D])
    }
    pub fn launch(self, program: u32, params_va: u64, size: u32) -> Pb {
        self.incr(
            SUB_COMPUTE,
            compute::PROGRAM,
            &[program, params_va as u32, (params_va >> 32) as u32, size],
        )
        .incr(SUB_COMPUTE, compute::LAUNCH, &[0])
    }
}

/// Parameter block bytes.
#[derive(Default)]
pub struct Params(pub Vec<u8>);
impl Params {
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn f32(mut self, v: f32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
}

impl Guest {
    /// Place a parameter block in system memory; returns its VA.
    pub fn params(&mut self, p: Params) -> (u64, u32) {
        let (gpa, va) = self.sys_buf(p.0.len() as u64);
        self.w(gpa, &p.0);
        (va, p.0.len() as u32)
    }
}
