//! The in-guest transport: a vGPU function bound to `vfio-pci` inside a
//! Linux guest, programmed from user space through `/dev/vfio`.
//!
//! With an IOMMU (the usual case, e.g. an emulated intel-iommu), the
//! container uses the type1 IOMMU: DMA memory is anonymous, locked memory
//! mapped with `VFIO_IOMMU_MAP_DMA` at an IOVA the driver picks, so it is
//! contiguous for the device. In a no-IOMMU group the device sees
//! physical addresses, read from `/proc/self/pagemap` page by page; the
//! driver maps every buffer page by page into the GPU VA space, so no
//! contiguity beyond 4 KiB is needed.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Duration;

use vm_memory::{ByteValued, FileOffset, MmapRegion, VolatileMemory, VolatileRef};

use vfio_bindings::bindings::vfio::{
    vfio_group_status, vfio_iommu_type1_dma_map, vfio_region_info, VFIO_TYPE1v2_IOMMU,
    VFIO_API_VERSION, VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE, VFIO_GROUP_FLAGS_VIABLE,
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_NOIOMMU_IOMMU,
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_TYPE1_IOMMU,
};

use super::{
    ArenaAddressing, DmaArena, DmaBuffer, DoorbellPage, EventFd, Mapping, Transport, PAGE_SIZE,
};
use crate::error::{Error, Result};
use crate::regs;

/// Default size of the driver's DMA memory.
pub const DEFAULT_DMA_BYTES: u64 = 64 << 20;
/// The IOVA at which the DMA memory is mapped under a type1 IOMMU: above
/// 4 GiB, clear of the x86 MSI window at `0xFEE00000`.
pub const DEFAULT_IOVA_BASE: u64 = 0x1_0000_0000;

// ioctl numbers: _IO(VFIO_TYPE = ';', VFIO_BASE + n).
const fn vfio_io(n: u64) -> u64 {
    ((b';' as u64) << 8) | (100 + n)
}

/// A vfio ioctl that takes its argument by value (an integer, or nothing)
/// and dereferences no memory of the caller.
#[derive(Clone, Copy)]
struct ValIoctl {
    req: u64,
    name: &'static str,
}

/// A vfio ioctl whose argument points to one `T`: the `repr(C)` struct of
/// `<linux/vfio.h>` that the kernel reads (and for some requests fills in)
/// for exactly this request. Values exist only as the constants below,
/// each pairing a request number with its argument type.
struct PtrIoctl<T> {
    req: u64,
    name: &'static str,
    _arg: PhantomData<fn(&mut T)>,
}

impl<T> PtrIoctl<T> {
    const fn new(n: u64, name: &'static str) -> Self {
        PtrIoctl {
            req: vfio_io(n),
            name,
            _arg: PhantomData,
        }
    }
}

const fn val_ioctl(n: u64, name: &'static str) -> ValIoctl {
    ValIoctl {
        req: vfio_io(n),
        name,
    }
}

const VFIO_GET_API_VERSION: ValIoctl = val_ioctl(0, "VFIO_GET_API_VERSION");
const VFIO_CHECK_EXTENSION: ValIoctl = val_ioctl(1, "VFIO_CHECK_EXTENSION");
const VFIO_SET_IOMMU: ValIoctl = val_ioctl(2, "VFIO_SET_IOMMU");
const VFIO_GROUP_GET_STATUS: PtrIoctl<vfio_group_status> =
    PtrIoctl::new(3, "VFIO_GROUP_GET_STATUS");
/// Argument: the container's descriptor (an `int`).
const VFIO_GROUP_SET_CONTAINER: PtrIoctl<i32> = PtrIoctl::new(4, "VFIO_GROUP_SET_CONTAINER");
/// Argument: a NUL-terminated device name (see [`group_get_device_fd`]).
const VFIO_GROUP_GET_DEVICE_FD: u64 = vfio_io(6);
const VFIO_DEVICE_GET_REGION_INFO: PtrIoctl<vfio_region_info> =
    PtrIoctl::new(8, "VFIO_DEVICE_GET_REGION_INFO");
const VFIO_DEVICE_SET_IRQS: PtrIoctl<IrqSetOne> = PtrIoctl::new(10, "VFIO_DEVICE_SET_IRQS");
const VFIO_DEVICE_RESET: ValIoctl = val_ioctl(11, "VFIO_DEVICE_RESET");
const VFIO_IOMMU_MAP_DMA: PtrIoctl<vfio_iommu_type1_dma_map> =
    PtrIoctl::new(13, "VFIO_IOMMU_MAP_DMA");
const VFIO_IOMMU_UNMAP_DMA: PtrIoctl<DmaUnmap> = PtrIoctl::new(14, "VFIO_IOMMU_UNMAP_DMA");

/// `struct vfio_irq_set` with room for one eventfd.
#[repr(C)]
struct IrqSetOne {
    argsz: u32,
    flags: u32,
    index: u32,
    start: u32,
    count: u32,
    fd: i32,
}

/// `struct vfio_iommu_type1_dma_unmap` without the dirty bitmap.
#[repr(C)]
struct DmaUnmap {
    argsz: u32,
    flags: u32,
    iova: u64,
    size: u64,
}

/// Issue `ioctl` with a pointer to `arg`.
fn ioctl_ptr<T>(fd: &File, ioctl: &PtrIoctl<T>, arg: &mut T) -> Result<i32> {
    // SAFETY: `ioctl.req` is a request whose argument the kernel accesses as
    // one `T` (PtrIoctl values are only the constants above, each naming
    // the `repr(C)` struct <linux/vfio.h> defines for its request; every
    // struct with an `argsz` gets `size_of::<T>()` there, so the kernel
    // reads and writes no byte beyond it). `arg` is an exclusive borrow of
    // a live `T` for the whole call, and `fd` an open descriptor.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), ioctl.req as _, arg as *mut T) };
    if r < 0 {
        return Err(Error::last_os(ioctl.name));
    }
    Ok(r)
}

/// Issue `ioctl` with the integer argument `arg`.
fn ioctl_val(fd: &File, ioctl: ValIoctl, arg: libc::c_ulong) -> Result<i32> {
    // SAFETY: every ValIoctl (the constants above) is a request that takes
    // an integer or no argument and dereferences no memory of this
    // process, whatever `arg` holds; `fd` is an open descriptor.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), ioctl.req as _, arg) };
    if r < 0 {
        return Err(Error::last_os(ioctl.name));
    }
    Ok(r)
}

/// `VFIO_GROUP_GET_DEVICE_FD`: a new descriptor for device `name` of
/// `group`.
fn group_get_device_fd(group: &File, name: &str) -> Result<File> {
    let cname =
        CString::new(name).map_err(|_| Error::InvalidArgument(format!("device name {name:?}")))?;
    // SAFETY: VFIO_GROUP_GET_DEVICE_FD only reads a NUL-terminated string
    // at its argument; `cname` owns one and lives across the call. `group`
    // is an open descriptor.
    let dfd = unsafe {
        libc::ioctl(
            group.as_raw_fd(),
            VFIO_GROUP_GET_DEVICE_FD as _,
            cname.as_ptr(),
        )
    };
    if dfd < 0 {
        return Err(Error::last_os(format!("VFIO_GROUP_GET_DEVICE_FD {name}")));
    }
    // SAFETY: `dfd` (>= 0) is the descriptor the ioctl just opened for
    // this call; nothing else owns or will close it, so the OwnedFd
    // becomes its sole owner.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(dfd) }))
}

/// A region of the vfio device file.
#[derive(Clone, Copy, Debug)]
struct Region {
    offset: u64,
    size: u64,
    flags: u32,
}

/// A vGPU bound to `vfio-pci` in this (guest) kernel.
pub struct VfioTransport {
    // Field order is drop order: the device goes before the group and
    // the container.
    /// BAR0 mapped into this process, when vfio-pci offers it: register
    /// accesses are volatile loads and stores that the (virtual) PCI bus
    /// turns into device accesses, as a kernel driver's would be.
    bar0_map: Option<MmapRegion>,
    /// BAR4, the doorbell page, when the device has one and vfio-pci lets
    /// it be mapped.
    doorbell: Option<DoorbellPage>,
    device: File,
    bar0: Region,
    config: Region,
    irq: EventFd,
    arena: DmaArena,
    /// The type1 IOVA mapping to undo on drop (none for no-IOMMU).
    iova: Option<(u64, u64)>,
    _group: File,
    container: File,
}

impl VfioTransport {
    /// Open PCI function `bdf` (`0000:00:04.0` or `00:04.0`), bound to
    /// `vfio-pci`, with `dma_bytes` of DMA memory.
    ///
    /// ```no_run
    /// use vgpu_guest::transport::vfio::{VfioTransport, DEFAULT_DMA_BYTES};
    /// let t = VfioTransport::open("0000:00:04.0", DEFAULT_DMA_BYTES)?;
    /// let dev = vgpu_guest::Device::open(Box::new(t))?;
    /// # Ok::<(), vgpu_guest::Error>(())
    /// ```
    pub fn open(bdf: &str, dma_bytes: u64) -> Result<VfioTransport> {
        let bdf = if bdf.matches(':').count() == 1 {
            format!("0000:{bdf}")
        } else {
            bdf.to_string()
        };
        let sys = PathBuf::from("/sys/bus/pci/devices").join(&bdf);
        let link = std::fs::read_link(sys.join("iommu_group")).map_err(|e| {
            Error::io(
                format!(
                    "{}/iommu_group (is {bdf} bound to vfio-pci?)",
                    sys.display()
                ),
                e,
            )
        })?;
        let group_id = link
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::NotVgpu(format!("odd iommu_group link {}", link.display())))?
            .to_string();
        let (group_path, noiommu) = {
            let plain = PathBuf::from(format!("/dev/vfio/{group_id}"));
            let noiommu = PathBuf::from(format!("/dev/vfio/noiommu-{group_id}"));
            if plain.exists() {
                (plain, false)
            } else if noiommu.exists() {
                (noiommu, true)
            } else {
                return Err(Error::NotVgpu(format!(
                    "neither {} nor {} exists (bind {bdf} to vfio-pci)",
                    plain.display(),
                    noiommu.display()
                )));
            }
        };
        let rw = |p: &std::path::Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .map_err(|e| Error::io(format!("open {}", p.display()), e))
        };
        let container = rw("/dev/vfio/vfio".as_ref())?;
        if ioctl_val(&container, VFIO_GET_API_VERSION, 0)? != VFIO_API_VERSION as i32 {
            return Err(Error::NotVgpu("unknown VFIO API version".into()));
        }
        let group = rw(&group_path)?;
        let mut status = vfio_group_status {
            argsz: std::mem::size_of::<vfio_group_status>() as u32,
            flags: 0,
        };
        ioctl_ptr(&group, &VFIO_GROUP_GET_STATUS, &mut status)?;
        if status.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(Error::NotVgpu(format!(
                "IOMMU group {group_id} is not viable: bind all its devices to vfio-pci"
            )));
        }
        let mut cfd = container.as_raw_fd();
        ioctl_ptr(&group, &VFIO_GROUP_SET_CONTAINER, &mut cfd)?;
        let iommu = if noiommu {
            VFIO_NOIOMMU_IOMMU
        } else if ioctl_val(&container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU as _)? > 0 {
            VFIO_TYPE1v2_IOMMU
        } else {
            VFIO_TYPE1_IOMMU
        };
        ioctl_val(&container, VFIO_SET_IOMMU, iommu as _)?;
        let device = group_get_device_fd(&group, &bdf)?;
        let region = |index: u32| -> Result<Region> {
            let mut info = vfio_region_info {
                argsz: std::mem::size_of::<vfio_region_info>() as u32,
                index,
                ..Default::default()
            };
            ioctl_ptr(&device, &VFIO_DEVICE_GET_REGION_INFO, &mut info)?;
            Ok(Region {
                offset: info.offset,
                size: info.size,
                flags: info.flags,
            })
        };
        let bar0 = region(VFIO_PCI_BAR0_REGION_INDEX)?;
        let config = region(VFIO_PCI_CONFIG_REGION_INDEX)?;
        if bar0.size < 64 * 1024 {
            return Err(Error::NotVgpu(format!("BAR0 is {:#x} bytes", bar0.size)));
        }
        let bar0_map = map_bar(&device, bar0);
        let doorbell = match region(regs::DB_REGION) {
            Ok(r) if r.size >= regs::DB_PAGE_SIZE && r.flags & VFIO_REGION_INFO_FLAG_MMAP != 0 => {
                let file = device
                    .try_clone()
                    .map_err(|e| Error::io("dup the vfio device descriptor", e))?;
                Some(DoorbellPage::map(file, r.offset, r.size)?)
            }
            _ => None,
        };

        let map = Mapping::anonymous_locked(dma_bytes)?;
        let (addressing, iova) = if noiommu {
            (ArenaAddressing::Pages(physical_pages(&map)?), None)
        } else {
            let mut dm = vfio_iommu_type1_dma_map {
                argsz: std::mem::size_of::<vfio_iommu_type1_dma_map>() as u32,
                flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
                vaddr: map.as_ptr() as u64,
                iova: DEFAULT_IOVA_BASE,
                size: map.len() as u64,
            };
            // The device may now DMA into `map`'s pages (pinned by the
            // kernel) until the unmap in `drop`; the driver only reaches
            // them through volatile accesses.
            ioctl_ptr(&container, &VFIO_IOMMU_MAP_DMA, &mut dm)?;
            (
                ArenaAddressing::Linear(DEFAULT_IOVA_BASE),
                Some((DEFAULT_IOVA_BASE, map.len() as u64)),
            )
        };
        let arena = DmaArena::new(map, addressing)?;
        let irq = EventFd::new()?;
        let mut t = VfioTransport {
            bar0_map,
            doorbell,
            device,
            bar0,
            config,
            irq,
            arena,
            iova,
            _group: group,
            container,
        };
        t.arm_msix()?;
        t.enable_function()?;
        Ok(t)
    }

    fn arm_msix(&mut self) -> Result<()> {
        let mut set = IrqSetOne {
            argsz: std::mem::size_of::<IrqSetOne>() as u32,
            flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            index: VFIO_PCI_MSIX_IRQ_INDEX,
            start: 0,
            count: 1,
            fd: self.irq.as_raw_fd(),
        };
        ioctl_ptr(&self.device, &VFIO_DEVICE_SET_IRQS, &mut set)?;
        Ok(())
    }

    fn enable_function(&mut self) -> Result<()> {
        let mut cmd = [0u8; 2];
        self.config_read(regs::PCI_COMMAND, &mut cmd)?;
        let cmd = u16::from_le_bytes(cmd) | regs::PCI_COMMAND_MEMORY | regs::PCI_COMMAND_BUS_MASTER;
        self.config_write(regs::PCI_COMMAND, &cmd.to_le_bytes())
    }

    fn rw_at(&self, region: Region, offset: u64, len: usize) -> Result<u64> {
        if offset + len as u64 > region.size {
            return Err(Error::InvalidArgument(format!(
                "access {offset:#x}+{len} past a {:#x}-byte region",
                region.size
            )));
        }
        Ok(region.offset + offset)
    }

    fn pread(&self, region: Region, offset: u64, data: &mut [u8]) -> Result<()> {
        let at = self.rw_at(region, offset, data.len())?;
        self.device
            .read_exact_at(data, at)
            .map_err(|e| Error::io(format!("vfio read at {offset:#x}"), e))
    }

    fn pwrite(&self, region: Region, offset: u64, data: &[u8]) -> Result<()> {
        let at = self.rw_at(region, offset, data.len())?;
        self.device
            .write_all_at(data, at)
            .map_err(|e| Error::io(format!("vfio write at {offset:#x}"), e))
    }
}

/// Map BAR0 when vfio-pci offers it (`VFIO_REGION_INFO_FLAG_MMAP`); the
/// transport falls back to `pread`/`pwrite` on the device file otherwise.
fn map_bar(device: &File, bar: Region) -> Option<MmapRegion> {
    if bar.flags & vfio_bindings::bindings::vfio::VFIO_REGION_INFO_FLAG_MMAP == 0 {
        return None;
    }
    let len = usize::try_from(bar.size).ok()?;
    libc::off_t::try_from(bar.offset).ok()?;
    let file = device.try_clone().ok()?;
    MmapRegion::build(
        Some(FileOffset::new(file, bar.offset)),
        len,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED,
    )
    .ok()
}

/// The register of type `T` at `offset` of mapped BAR0, if it lies inside
/// and is naturally aligned. The mapping starts on a page boundary, so the
/// register's address is aligned too, and its `load`/`store` is one
/// volatile access of `T`'s width, as the device expects (ABI §2).
fn bar_reg<T: ByteValued>(bar: &MmapRegion, offset: u32) -> Result<VolatileRef<'_, T>> {
    let size = std::mem::size_of::<T>();
    let o = offset as usize;
    if !o.is_multiple_of(size) {
        return Err(Error::InvalidArgument(format!(
            "BAR0 access {offset:#x}+{size}"
        )));
    }
    bar.get_ref::<T>(o)
        .map_err(|_| Error::InvalidArgument(format!("BAR0 access {offset:#x}+{size}")))
}

/// Physical address of every page of `map`, from `/proc/self/pagemap`
/// (needs CAP_SYS_ADMIN; the pages are locked, so they stay put).
fn physical_pages(map: &Mapping) -> Result<Vec<u64>> {
    let pagemap =
        File::open("/proc/self/pagemap").map_err(|e| Error::io("open /proc/self/pagemap", e))?;
    let base = map.as_ptr() as u64;
    (0..map.len() as u64 / PAGE_SIZE)
        .map(|i| {
            let mut e = [0u8; 8];
            pagemap
                .read_exact_at(&mut e, (base / PAGE_SIZE + i) * 8)
                .map_err(|e| Error::io("read /proc/self/pagemap", e))?;
            let e = u64::from_le_bytes(e);
            let pfn = e & ((1 << 55) - 1);
            if e >> 63 == 0 || pfn == 0 {
                return Err(Error::NotVgpu(
                    "no physical address in /proc/self/pagemap (run as root)".into(),
                ));
            }
            Ok(pfn * PAGE_SIZE)
        })
        .collect()
}

impl Transport for VfioTransport {
    fn name(&self) -> &'static str {
        if self.bar0_map.is_some() {
            "vfio (BAR0 mapped)"
        } else {
            "vfio (BAR0 through the device file)"
        }
    }
    fn config_read(&mut self, offset: u16, data: &mut [u8]) -> Result<()> {
        self.pread(self.config, offset as u64, data)
    }
    fn config_write(&mut self, offset: u16, data: &[u8]) -> Result<()> {
        self.pwrite(self.config, offset as u64, data)
    }
    fn bar0_read32(&mut self, offset: u32) -> Result<u32> {
        if let Some(m) = &self.bar0_map {
            return Ok(u32::from_le(bar_reg::<u32>(m, offset)?.load()));
        }
        let mut b = [0u8; 4];
        self.pread(self.bar0, offset as u64, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn bar0_write32(&mut self, offset: u32, value: u32) -> Result<()> {
        if let Some(m) = &self.bar0_map {
            bar_reg::<u32>(m, offset)?.store(value.to_le());
            return Ok(());
        }
        self.pwrite(self.bar0, offset as u64, &value.to_le_bytes())
    }
    fn bar0_read64(&mut self, offset: u32) -> Result<u64> {
        if let Some(m) = &self.bar0_map {
            return Ok(u64::from_le(bar_reg::<u64>(m, offset)?.load()));
        }
        let mut b = [0u8; 8];
        self.pread(self.bar0, offset as u64, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn bar0_write64(&mut self, offset: u32, value: u64) -> Result<()> {
        if let Some(m) = &self.bar0_map {
            bar_reg::<u64>(m, offset)?.store(value.to_le());
            return Ok(());
        }
        self.pwrite(self.bar0, offset as u64, &value.to_le_bytes())
    }
    fn dma_alloc(&mut self, len: u64) -> Result<DmaBuffer> {
        self.arena.alloc(len)
    }
    fn dma_free(&mut self, buf: DmaBuffer) {
        self.arena.free(buf)
    }
    fn wait_irq(&mut self, timeout: Duration) -> Result<bool> {
        self.irq.wait(timeout)
    }
    fn doorbell_page(&self) -> Option<&DoorbellPage> {
        self.doorbell.as_ref()
    }
    /// MMIO from inside a VM: the VMM may post the writes.
    fn posts_writes(&self) -> bool {
        true
    }
    fn reset(&mut self) -> Result<()> {
        ioctl_val(&self.device, VFIO_DEVICE_RESET, 0)?;
        self.enable_function()
    }
}

impl Drop for VfioTransport {
    fn drop(&mut self) {
        if let Some((iova, size)) = self.iova {
            let mut um = DmaUnmap {
                argsz: std::mem::size_of::<DmaUnmap>() as u32,
                flags: 0,
                iova,
                size,
            };
            let _ = ioctl_ptr(&self.container, &VFIO_IOMMU_UNMAP_DMA, &mut um);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_linux() {
        assert_eq!(VFIO_GET_API_VERSION.req, 0x3B64);
        assert_eq!(VFIO_CHECK_EXTENSION.req, 0x3B65);
        assert_eq!(VFIO_SET_IOMMU.req, 0x3B66);
        assert_eq!(VFIO_GROUP_GET_STATUS.req, 0x3B67);
        assert_eq!(VFIO_GROUP_SET_CONTAINER.req, 0x3B68);
        assert_eq!(VFIO_GROUP_GET_DEVICE_FD, 0x3B6A);
        assert_eq!(VFIO_DEVICE_GET_REGION_INFO.req, 0x3B6C);
        assert_eq!(VFIO_DEVICE_SET_IRQS.req, 0x3B6E);
        assert_eq!(VFIO_DEVICE_RESET.req, 0x3B6F);
        assert_eq!(VFIO_IOMMU_MAP_DMA.req, 0x3B71);
        assert_eq!(VFIO_IOMMU_UNMAP_DMA.req, 0x3B72);
        // The argument layouts the kernel expects (<linux/vfio.h>).
        assert_eq!(std::mem::size_of::<IrqSetOne>(), 24);
        assert_eq!(std::mem::size_of::<DmaUnmap>(), 24);
        assert_eq!(std::mem::size_of::<vfio_group_status>(), 8);
        assert_eq!(std::mem::size_of::<vfio_region_info>(), 32);
        assert_eq!(std::mem::size_of::<vfio_iommu_type1_dma_map>(), 32);
    }

    #[test]
    fn bar_registers_are_aligned_and_inside() {
        let bar: MmapRegion = MmapRegion::new(0x10000).unwrap();
        bar_reg::<u32>(&bar, 0x24).unwrap().store(0xDEAD_BEEF);
        assert_eq!(bar_reg::<u32>(&bar, 0x24).unwrap().load(), 0xDEAD_BEEF);
        bar_reg::<u64>(&bar, 0xFFF8)
            .unwrap()
            .store(0x1122_3344_5566_7788);
        assert_eq!(bar_reg::<u32>(&bar, 0xFFFC).unwrap().load(), 0x1122_3344);
        assert!(bar_reg::<u32>(&bar, 0x22).is_err(), "misaligned");
        assert!(bar_reg::<u64>(&bar, 0x24).is_err(), "misaligned");
        assert!(bar_reg::<u32>(&bar, 0x10000).is_err(), "outside");
        assert!(bar_reg::<u64>(&bar, u32::MAX - 7).is_err(), "outside");
    }
}
