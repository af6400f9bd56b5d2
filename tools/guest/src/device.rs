//! One opened vGPU: identity, memory (VRAM, system memory, the GPU
//! address space), the runlist, interrupts, faults and resets.

use std::collections::HashMap;
use std::time::Duration;

use crate::alloc::RangeAllocator;
use crate::error::{Error, ErrorCode, Result};
use crate::gmmu::{Aperture, Backing, Leaf, PageTables, TableStore, PAGE_2M, PAGE_4K, VA_BITS};
use crate::regs;
use crate::transport::{DevAddrs, DmaBuffer, Transport};

/// What the device says it is (configuration space and global registers).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    pub vendor_id: u16,
    pub device_id: u16,
    pub revision: u8,
    pub class_code: u32,
    /// `ID` register.
    pub id: u32,
    /// `VERSION` register: major in bits 31:16.
    pub version: u32,
    /// `CAPS` register.
    pub caps: u32,
    /// `NUM_CHANNELS`.
    pub channels: u32,
    /// `VRAM_SIZE`, in bytes.
    pub vram_bytes: u64,
    /// `PTX_VA_BASE`: the GPU address at which guest PTX kernels see VA 0
    /// (0 when `CAPS.PTX` = 0).
    pub ptx_va_base: u64,
}

impl Identity {
    /// `CAPS.PTX`: the backend runs guest PTX.
    pub fn ptx(&self) -> bool {
        self.caps & regs::CAPS_PTX != 0
    }
    /// `CAPS.LARGE_PAGES`: 2 MiB GMMU leaves.
    pub fn large_pages(&self) -> bool {
        self.caps & regs::CAPS_LARGE_PAGES != 0
    }
    /// `CAPS.DOORBELL_PAGE`: BAR4 is the doorbell page (ABI 1.1).
    pub fn doorbell_page(&self) -> bool {
        self.caps & regs::CAPS_DOORBELL_PAGE != 0
    }
    /// `CAPS[15:8]`: MSI-X vectors.
    pub fn msix_vectors(&self) -> u32 {
        (self.caps >> 8) & 0xFF
    }
}

/// What the engine behind a vGPU is, as CUDA describes a device (ABI 1.3 §2.3): read from
/// the device-info block.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeviceInfo {
    /// The CUDA version of the engine's driver (e.g. 13000); 0 when there is none.
    pub cuda_version: u32,
    pub uuid: [u8; 16],
    pub name: String,
    /// `cuDeviceGetAttribute` values by attribute number (index 0 unused).
    pub attributes: Vec<i32>,
}

/// Where a buffer lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The vGPU's framebuffer; reachable only by the engines.
    Vram,
    /// DMA-mapped system memory; the CPU sees it too.
    Sysmem,
}

#[derive(Debug)]
enum Backed {
    Vram { offset: u64 },
    Sysmem(DmaBuffer),
}

/// Memory mapped into the GPU address space.
#[derive(Debug)]
pub struct Buffer {
    va: u64,
    len: u64,
    mapped: u64,
    va_span: u64,
    backed: Backed,
}

impl Buffer {
    /// GPU virtual address of the first byte.
    pub fn va(&self) -> u64 {
        self.va
    }
    /// Requested length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Bytes backed and mapped (the length rounded up to whole pages, or
    /// to whole 2 MiB chunks for [`Device::alloc_for_kernels`]).
    pub fn mapped_len(&self) -> u64 {
        self.mapped
    }
    /// Where it lives.
    pub fn placement(&self) -> Placement {
        match self.backed {
            Backed::Vram { .. } => Placement::Vram,
            Backed::Sysmem(_) => Placement::Sysmem,
        }
    }
    /// The CPU view of a system-memory buffer (`None` for VRAM).
    pub fn cpu(&self) -> Option<&DmaBuffer> {
        match &self.backed {
            Backed::Sysmem(b) => Some(b),
            Backed::Vram { .. } => None,
        }
    }
    /// The CPU view, or an error for VRAM.
    pub fn host(&self) -> Result<&DmaBuffer> {
        self.cpu().ok_or_else(|| {
            Error::InvalidArgument("a VRAM buffer has no CPU view; copy it to system memory".into())
        })
    }
    /// The framebuffer offset of a VRAM buffer.
    pub fn vram_offset(&self) -> Option<u64> {
        match self.backed {
            Backed::Vram { offset } => Some(offset),
            Backed::Sysmem(_) => None,
        }
    }
}

/// An interrupt snapshot: pending causes and the channels that raised them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interrupts {
    /// `INTR_STATUS` bits (`regs::INTR_*`).
    pub causes: u32,
    /// `INTR_CHANNEL_HI:LO`: bit *c* for channel *c*.
    pub channels: u64,
}

/// The first unacknowledged GPU-MMU fault (`MMU_FAULT_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmuFault {
    pub code: ErrorCode,
    pub channel: u32,
    pub write: bool,
    pub va: u64,
}

/// A runlist entry (ABI §4.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunlistEntry {
    pub channel: u32,
    /// Timeslice in µs (0 = the parent's default).
    pub timeslice_us: u32,
}

/// GPU VAs handed out by the driver start here, so that small VAs
/// (including 0, "none") are never mapped.
pub const VA_BASE: u64 = 1 << 32;

/// Page tables in DMA memory.
struct Tables<'a> {
    t: &'a mut dyn Transport,
    map: &'a mut HashMap<u64, DmaBuffer>,
}

impl TableStore for Tables<'_> {
    fn alloc_table(&mut self) -> Result<u64> {
        let b = self.t.dma_alloc(PAGE_4K)?;
        let gpa = b.dev_addr(0);
        self.map.insert(gpa, b);
        Ok(gpa)
    }
    fn free_table(&mut self, gpa: u64) {
        if let Some(b) = self.map.remove(&gpa) {
            self.t.dma_free(b);
        }
    }
    fn read_entry(&mut self, table: u64, index: usize) -> Result<u64> {
        self.map
            .get(&table)
            .ok_or_else(|| Error::Protocol(format!("no page table at {table:#x}")))?
            .read_u64(index * 8)
    }
    fn write_entry(&mut self, table: u64, index: usize, entry: u64) -> Result<()> {
        self.map
            .get(&table)
            .ok_or_else(|| Error::Protocol(format!("no page table at {table:#x}")))?
            .write_u64(index * 8, entry)
    }
}

/// An opened vGPU.
///
/// ```no_run
/// use vgpu_guest::{Device, Placement};
/// use vgpu_guest::transport::vfio_user::{VfioUserTransport, DEFAULT_RAM_BYTES};
/// let t = VfioUserTransport::connect("/run/vgpu0.sock".as_ref(), DEFAULT_RAM_BYTES)?;
/// let mut dev = Device::open(Box::new(t))?;
/// println!("{} MiB of VRAM, {} channels", dev.identity().vram_bytes >> 20, dev.identity().channels);
/// let buf = dev.alloc(Placement::Vram, 1 << 20)?;
/// dev.free(buf)?;
/// # Ok::<(), vgpu_guest::Error>(())
/// ```
pub struct Device {
    t: Box<dyn Transport>,
    ident: Identity,
    vram: RangeAllocator,
    va: RangeAllocator,
    tables: HashMap<u64, DmaBuffer>,
    pt: PageTables,
    runlist: DmaBuffer,
    doorbells: Doorbells,
    /// Ring through the doorbell page when there is one (ABI 1.1).
    use_page: bool,
    /// A BAR0 write since the last BAR0 read: where the transport posts
    /// writes, it may not have reached the device yet (ABI §4.5).
    posted: bool,
}

/// How this driver's doorbells reached the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Doorbells {
    /// Stores to the doorbell page that needed no trap (the device polled).
    pub untrapped: u64,
    /// Writes to the trapped `DOORBELL` register.
    pub trapped: u64,
}

impl Device {
    /// Check the function is a vgpud vGPU of ABI major 1, reset its engine
    /// (dropping whatever a previous user left), build an empty GPU address
    /// space and enable every interrupt cause.
    pub fn open(mut t: Box<dyn Transport>) -> Result<Device> {
        let mut cfg = [0u8; 12];
        t.config_read(regs::PCI_VENDOR_ID, &mut cfg)?;
        let class_code = u32::from_le_bytes([cfg[9], cfg[10], cfg[11], 0]);
        if class_code != regs::PCI_CLASS_3D {
            return Err(Error::NotVgpu(format!(
                "class code {class_code:#08x}, expected {:#08x}",
                regs::PCI_CLASS_3D
            )));
        }
        let id = t.bar0_read32(regs::ID)?;
        if id != regs::ID_MAGIC {
            return Err(Error::NotVgpu(format!("ID register {id:#010x}")));
        }
        let version = t.bar0_read32(regs::VERSION)?;
        if version >> 16 != regs::ABI_MAJOR {
            return Err(Error::NotVgpu(format!(
                "ABI version {}.{}, this driver speaks {}.x",
                version >> 16,
                version & 0xFFFF,
                regs::ABI_MAJOR
            )));
        }
        let caps = t.bar0_read32(regs::CAPS)?;
        let channels = t.bar0_read32(regs::NUM_CHANNELS)?;
        if !(1..=64).contains(&channels) {
            return Err(Error::Protocol(format!("NUM_CHANNELS = {channels}")));
        }
        let vram_bytes = t.bar0_read64(regs::VRAM_SIZE)?;
        let ptx_va_base = t.bar0_read64(regs::PTX_VA_BASE)?;
        if caps & regs::CAPS_PTX == 0 && ptx_va_base != 0 {
            return Err(Error::Protocol(format!(
                "PTX_VA_BASE = {ptx_va_base:#x} with CAPS.PTX = 0"
            )));
        }
        let ident = Identity {
            vendor_id: u16::from_le_bytes([cfg[0], cfg[1]]),
            device_id: u16::from_le_bytes([cfg[2], cfg[3]]),
            revision: cfg[8],
            class_code,
            id,
            version,
            caps,
            channels,
            vram_bytes,
            ptx_va_base,
        };
        t.bar0_write32(regs::RESET, 1)?;
        let mut tables = HashMap::new();
        let pt = PageTables::new(&mut Tables {
            t: &mut *t,
            map: &mut tables,
        })?;
        let runlist = t.dma_alloc(64 * 8)?;
        t.bar0_write32(regs::INTR_ENABLE, regs::INTR_ALL)?;
        Ok(Device {
            t,
            ident,
            vram: RangeAllocator::new(0, vram_bytes),
            va: RangeAllocator::new(VA_BASE, (1 << VA_BITS) - VA_BASE),
            tables,
            pt,
            runlist,
            doorbells: Doorbells::default(),
            use_page: true,
            posted: false,
        })
    }

    /// The identity read at open.
    pub fn identity(&self) -> &Identity {
        &self.ident
    }

    /// The ABI minor version (`VERSION[15:0]`).
    pub fn abi_minor(&self) -> u32 {
        self.ident.version & 0xFFFF
    }

    /// The device-info block (ABI 1.3, §2.3): the engine's identity and its device
    /// attributes, read word by word through `INFO_INDEX`/`INFO_DATA`. `None` before ABI 1.3
    /// or when the block is empty.
    pub fn device_info(&mut self) -> Result<Option<DeviceInfo>> {
        use regs::info;
        if self.abi_minor() < 3 {
            return Ok(None);
        }
        self.write32(regs::INFO_INDEX, 0)?;
        let words = self.read32(regs::INFO_DATA)?;
        let attrs = {
            self.write32(regs::INFO_INDEX, info::ATTR_COUNT)?;
            self.read32(regs::INFO_DATA)?
        };
        if words == 0 {
            return Ok(None);
        }
        if attrs > info::MAX_ATTRS || words < info::ATTRS + attrs {
            return Err(Error::Protocol(format!(
                "device-info block of {words} words with {attrs} attributes"
            )));
        }
        self.write32(regs::INFO_INDEX, 0)?;
        let mut w = Vec::with_capacity((info::ATTRS + attrs) as usize);
        for _ in 0..info::ATTRS + attrs {
            w.push(self.read32(regs::INFO_DATA)?);
        }
        let bytes = |from: u32, n: usize| -> Vec<u8> {
            w[from as usize..]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .take(n)
                .collect()
        };
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&bytes(info::UUID, 16));
        let name = bytes(info::NAME, info::NAME_BYTES);
        let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
        Ok(Some(DeviceInfo {
            cuda_version: w[info::CUDA_VERSION as usize],
            uuid,
            name: String::from_utf8_lossy(&name[..end]).into_owned(),
            attributes: w[info::ATTRS as usize..]
                .iter()
                .map(|&x| x as i32)
                .collect(),
        }))
    }

    /// `PTX_VA_BASE`, read at open: the GPU address at which a guest PTX
    /// kernel sees VA 0 (0 when `CAPS.PTX` = 0).
    pub fn ptx_va_base(&self) -> u64 {
        self.ident.ptx_va_base
    }

    /// The pointer a PTX kernel uses for the first byte of `buf`:
    /// `PTX_VA_BASE + buf.va()`. Kernels reach only VRAM mapped in whole
    /// 2 MiB chunks (see [`alloc_for_kernels`](Self::alloc_for_kernels));
    /// through any other pointer they fault (`KERNEL_FAULT`).
    pub fn kernel_ptr(&self, buf: &Buffer) -> u64 {
        self.kernel_addr(buf.va())
    }

    /// The kernel pointer of GPU VA `va` (`PTX_VA_BASE + va`).
    pub fn kernel_addr(&self, va: u64) -> u64 {
        self.ident.ptx_va_base.wrapping_add(va)
    }

    /// The transport's name.
    pub fn transport_name(&self) -> &'static str {
        self.t.name()
    }

    /// The transport, for raw configuration-space access.
    pub fn transport(&mut self) -> &mut dyn Transport {
        &mut *self.t
    }

    // ---- registers ----------------------------------------------------------

    /// Read a BAR0 register.
    pub fn read32(&mut self, offset: u32) -> Result<u32> {
        self.posted = false;
        self.t.bar0_read32(offset)
    }
    /// Ring channel `channel`, whose USERD `GP_PUT` is now `put`: through
    /// the doorbell page when the device has one and the transport mapped
    /// it (a store, trapping only when the device is not polling, ABI §4.5),
    /// else the `DOORBELL` register. A store to the page can pass BAR0
    /// writes a VMM still holds (posted): after any, a register is read
    /// back first, which no earlier write passes, so that what they set
    /// (an interrupt mask, a channel's enable, a runlist, a GPU-MMU
    /// invalidation) is in force when the device sees the doorbell.
    pub fn ring(&mut self, channel: u32, put: u32) -> Result<()> {
        if self.use_page && self.ident.doorbell_page() {
            if self.posted && self.t.posts_writes() && self.t.doorbell_page().is_some() {
                self.read32(regs::ID)?;
            }
            if let Some(page) = self.t.doorbell_page() {
                if page.ring(channel, put)? {
                    self.doorbells.untrapped += 1;
                    return Ok(());
                }
            }
        }
        self.doorbells.trapped += 1;
        self.t.bar0_write32(regs::DOORBELL, channel)
    }

    /// Whether to ring through the doorbell page when the device has one
    /// (the default), or always through the trapped `DOORBELL` register, as
    /// an ABI 1.0 driver does.
    pub fn set_doorbell_page(&mut self, enabled: bool) {
        self.use_page = enabled;
    }

    /// How the doorbells rung so far reached the device.
    pub fn doorbells(&self) -> Doorbells {
        self.doorbells
    }

    /// Write a BAR0 register.
    pub fn write32(&mut self, offset: u32, value: u32) -> Result<()> {
        self.posted = true;
        self.t.bar0_write32(offset, value)
    }
    /// Read a register pair as one 64-bit access.
    pub fn read64(&mut self, offset: u32) -> Result<u64> {
        self.posted = false;
        self.t.bar0_read64(offset)
    }
    /// Write a register pair as one 64-bit access.
    pub fn write64(&mut self, offset: u32, value: u64) -> Result<()> {
        self.posted = true;
        self.t.bar0_write64(offset, value)
    }

    /// `TIMER`: nanoseconds since the vGPU was created.
    pub fn timer_ns(&mut self) -> Result<u64> {
        let lo = self.read32(regs::TIMER_LO)?;
        let hi = self.read32(regs::TIMER_HI)?;
        Ok((hi as u64) << 32 | lo as u64)
    }

    /// `STATUS.BUSY`: some channel has fetched, queued or running work.
    pub fn busy(&mut self) -> Result<bool> {
        Ok(self.read32(regs::STATUS)? & regs::STATUS_BUSY != 0)
    }

    // ---- memory -------------------------------------------------------------

    /// Raw DMA memory (not mapped into the GPU address space), e.g. for
    /// instance blocks, which the device addresses by GPA.
    pub fn dma_alloc(&mut self, len: u64) -> Result<DmaBuffer> {
        self.t.dma_alloc(len)
    }

    /// Give raw DMA memory back.
    pub fn dma_free(&mut self, buf: DmaBuffer) {
        self.t.dma_free(buf)
    }

    /// Allocate `len` bytes in `placement` and map them read-write at a
    /// fresh VA (followed by an unmapped guard page).
    pub fn alloc(&mut self, placement: Placement, len: u64) -> Result<Buffer> {
        self.alloc_mapped(placement, len, len, false)
    }

    /// `len` bytes of VRAM that guest PTX kernels can reach in full: the
    /// mapping is rounded up to whole 2 MiB chunks, each 2 MiB-aligned in
    /// VA and VRAM and mapped read-write (a kernel reaches a 2 MiB VA range
    /// only when the page tables map all of it, contiguously, onto a
    /// 2 MiB-aligned VRAM offset with one permission; system memory and
    /// partial chunks fault). Pass it to kernels with
    /// [`kernel_ptr`](Self::kernel_ptr).
    pub fn alloc_for_kernels(&mut self, len: u64) -> Result<Buffer> {
        if len == 0 {
            return Err(Error::InvalidArgument("empty buffer".into()));
        }
        let chunks = len.div_ceil(PAGE_2M) * PAGE_2M;
        self.alloc_mapped(Placement::Vram, len, chunks, false)
    }

    /// Like [`alloc`](Self::alloc), mapped through read-only PTEs: device
    /// writes to it fault with `READ_ONLY`.
    pub fn alloc_read_only(&mut self, placement: Placement, len: u64) -> Result<Buffer> {
        self.alloc_mapped(placement, len, len, true)
    }

    /// Map `len` bytes, `map_len` (≥ `len`) of them backed and mapped.
    fn alloc_mapped(
        &mut self,
        placement: Placement,
        len: u64,
        map_len: u64,
        read_only: bool,
    ) -> Result<Buffer> {
        if len == 0 || map_len < len {
            return Err(Error::InvalidArgument("empty buffer".into()));
        }
        let mapped = map_len.div_ceil(PAGE_4K) * PAGE_4K;
        let align = if mapped >= PAGE_2M { PAGE_2M } else { PAGE_4K };
        let va_span = mapped + PAGE_4K;
        let va = self.va.alloc(va_span, align).ok_or(Error::OutOfMemory {
            what: "GPU virtual address space",
            bytes: va_span,
        })?;
        let backed = match placement {
            Placement::Vram => match self.vram.alloc(mapped, align) {
                Some(offset) => Backed::Vram { offset },
                None => {
                    self.va.free(va, va_span);
                    return Err(Error::OutOfMemory {
                        what: "VRAM",
                        bytes: mapped,
                    });
                }
            },
            Placement::Sysmem => match self.t.dma_alloc(mapped) {
                Ok(b) => Backed::Sysmem(b),
                Err(e) => {
                    self.va.free(va, va_span);
                    return Err(e);
                }
            },
        };
        let buf = Buffer {
            va,
            len,
            mapped,
            va_span,
            backed,
        };
        let large = self.ident.large_pages();
        let mut st = Tables {
            t: &mut *self.t,
            map: &mut self.tables,
        };
        let r = match &buf.backed {
            Backed::Vram { offset } => self.pt.map(
                &mut st,
                va,
                mapped,
                Backing::Contiguous(*offset),
                Leaf {
                    aperture: Aperture::Vram,
                    read_only,
                    large,
                },
            ),
            Backed::Sysmem(b) => {
                let leaf = Leaf {
                    aperture: Aperture::Sysmem,
                    read_only,
                    large,
                };
                match b.addrs() {
                    DevAddrs::Linear(base) => {
                        self.pt
                            .map(&mut st, va, mapped, Backing::Contiguous(*base), leaf)
                    }
                    DevAddrs::Pages(p) => self.pt.map(&mut st, va, mapped, Backing::Pages(p), leaf),
                }
            }
        };
        if let Err(e) = r {
            self.release(buf);
            return Err(e);
        }
        // The VA was unmapped (or never used) before; a stale translation
        // of a freed buffer may still be cached.
        self.invalidate()?;
        Ok(buf)
    }

    fn release(&mut self, buf: Buffer) {
        self.va.free(buf.va, buf.va_span);
        match buf.backed {
            Backed::Vram { offset } => {
                self.vram.free(offset, buf.mapped);
            }
            Backed::Sysmem(b) => self.t.dma_free(b),
        }
    }

    /// Unmap a buffer, drop cached translations and return its memory.
    /// No queued work may still use it.
    pub fn free(&mut self, buf: Buffer) -> Result<()> {
        let mut st = Tables {
            t: &mut *self.t,
            map: &mut self.tables,
        };
        self.pt.unmap(&mut st, buf.va, buf.mapped)?;
        self.invalidate()?;
        self.release(buf);
        Ok(())
    }

    /// GPA of the address space's top-level directory (for instance blocks).
    pub fn pdb(&self) -> u64 {
        self.pt.pdb()
    }

    /// `MMU_INVALIDATE`: drop every cached translation.
    pub fn invalidate(&mut self) -> Result<()> {
        self.write32(regs::MMU_INVALIDATE, 1)
    }

    /// Free VRAM, in bytes.
    pub fn vram_free(&self) -> u64 {
        self.vram.free_bytes()
    }

    // ---- runlist ----------------------------------------------------------------

    /// Make `entries` the runlist: only those channels run, in this order,
    /// round robin, with the given timeslices.
    pub fn submit_runlist(&mut self, entries: &[RunlistEntry]) -> Result<()> {
        if entries.len() > self.ident.channels as usize {
            return Err(Error::InvalidArgument(format!(
                "{} runlist entries for {} channels",
                entries.len(),
                self.ident.channels
            )));
        }
        let bytes: Vec<u8> = entries
            .iter()
            .flat_map(|e| {
                e.channel
                    .to_le_bytes()
                    .into_iter()
                    .chain(e.timeslice_us.to_le_bytes())
            })
            .collect();
        self.runlist.write(0, &bytes)?;
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let gpa = self.runlist.dev_addr(0);
        self.write64(regs::RUNLIST_BASE, gpa)?;
        self.write32(regs::RUNLIST_SUBMIT, entries.len() as u32)?;
        let info = self.read32(regs::RUNLIST_INFO)?;
        if info & regs::RUNLIST_INFO_REJECTED != 0 {
            return Err(Error::RunlistRejected(ErrorCode::from_raw(
                (info >> 8) as u8,
            )));
        }
        if info & 0xFF != entries.len() as u32 {
            return Err(Error::Protocol(format!(
                "RUNLIST_INFO accepted {} of {} entries",
                info & 0xFF,
                entries.len()
            )));
        }
        Ok(())
    }

    // ---- interrupts and faults -------------------------------------------------

    /// Pending interrupts, without clearing them.
    pub fn interrupts(&mut self) -> Result<Interrupts> {
        let causes = self.read32(regs::INTR_STATUS)?;
        let channels = self.read64(regs::INTR_CHANNEL_LO)?;
        Ok(Interrupts { causes, channels })
    }

    /// Read and acknowledge (write 1 to clear) pending interrupts.
    pub fn take_interrupts(&mut self) -> Result<Interrupts> {
        let i = self.interrupts()?;
        if i.causes != 0 {
            self.write32(regs::INTR_STATUS, i.causes)?;
        }
        if i.channels != 0 {
            self.write64(regs::INTR_CHANNEL_LO, i.channels)?;
        }
        Ok(i)
    }

    /// Acknowledge the given channel's bit in `INTR_CHANNEL_*`.
    pub fn ack_channel_interrupt(&mut self, channel: u32) -> Result<()> {
        self.write64(regs::INTR_CHANNEL_LO, 1u64 << (channel & 63))
    }

    /// Wait up to `timeout` for MSI-X vector 0; returns whether it fired.
    pub fn wait_interrupt(&mut self, timeout: Duration) -> Result<bool> {
        self.t.wait_irq(timeout)
    }

    /// `INTR_ENABLE`: which causes signal MSI-X.
    pub fn set_interrupt_enable(&mut self, causes: u32) -> Result<()> {
        self.write32(regs::INTR_ENABLE, causes & regs::INTR_ALL)
    }

    /// The recorded GPU-MMU fault, if any.
    pub fn mmu_fault(&mut self) -> Result<Option<MmuFault>> {
        let info = self.read32(regs::MMU_FAULT_INFO)?;
        if info & regs::MMU_FAULT_INFO_VALID == 0 {
            return Ok(None);
        }
        let va = self.read64(regs::MMU_FAULT_ADDR)?;
        Ok(Some(MmuFault {
            code: ErrorCode::from_raw(info as u8),
            channel: (info >> 8) & 0xFF,
            write: info & (1 << 16) != 0,
            va,
        }))
    }

    /// Acknowledge the MMU fault record so that the next fault is recorded.
    pub fn clear_mmu_fault(&mut self) -> Result<()> {
        self.write32(regs::MMU_FAULT_INFO, regs::MMU_FAULT_INFO_VALID)
    }

    // ---- reset ----------------------------------------------------------------------

    /// Engine reset (`RESET`): every channel stops and is disabled, queued
    /// work is dropped, registers, TLB and runlist return to reset state.
    /// Channels must be re-created (or [`recovered`](crate::Channel::recover)).
    pub fn engine_reset(&mut self) -> Result<()> {
        self.write32(regs::RESET, 1)?;
        self.write32(regs::INTR_ENABLE, regs::INTR_ALL)
    }

    /// Function-level reset through the transport: the engine reset plus
    /// configuration space; the transport re-enables the function.
    pub fn function_reset(&mut self) -> Result<()> {
        self.t.reset()?;
        self.write32(regs::INTR_ENABLE, regs::INTR_ALL)
    }
}
