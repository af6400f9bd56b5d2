//! The vfio-user transport: the driver is a vfio-user client of a vGPU's
//! Unix socket and plays the VMM and the guest at once. Its "guest RAM"
//! is a memfd it maps locally and hands to the server with `DMA_MAP`, so
//! the device reads and writes the very pages the driver sees.

use std::path::Path;
use std::time::Duration;

use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_PCI_BAR0_REGION_INDEX,
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
};
use vfio_user::Client;

use super::{ArenaAddressing, DmaArena, DmaBuffer, DoorbellPage, EventFd, Mapping, Transport};
use crate::error::{Error, Result};
use crate::regs;

/// Default size of the driver's guest RAM.
pub const DEFAULT_RAM_BYTES: u64 = 64 << 20;
/// The guest physical address at which the guest RAM is DMA-mapped.
pub const DEFAULT_DMA_BASE: u64 = 0x8000_0000;
/// Size of BAR0 (ABI §1.1).
const BAR0_SIZE: u64 = 64 * 1024;

/// A vGPU reached over its vfio-user socket.
pub struct VfioUserTransport {
    client: Client,
    arena: DmaArena,
    /// The memfd behind `arena` (kept open for the server's mapping).
    _ram: std::fs::File,
    irq: EventFd,
    /// BAR4 mapped from the file the server offered with its region info.
    doorbell: Option<DoorbellPage>,
}

impl VfioUserTransport {
    /// Connect to `socket`, DMA-map `ram_bytes` of fresh guest RAM at
    /// [`DEFAULT_DMA_BASE`], arm MSI-X vector 0 with an eventfd and enable
    /// memory decoding and bus mastering.
    ///
    /// ```no_run
    /// use vgpu_guest::transport::vfio_user::{VfioUserTransport, DEFAULT_RAM_BYTES};
    /// let t = VfioUserTransport::connect("/run/vgpud/vgpu0.sock".as_ref(), DEFAULT_RAM_BYTES)?;
    /// let dev = vgpu_guest::Device::open(Box::new(t))?;
    /// # Ok::<(), vgpu_guest::Error>(())
    /// ```
    pub fn connect(socket: &Path, ram_bytes: u64) -> Result<VfioUserTransport> {
        let mut client = Client::new(socket)?;
        match client.region(VFIO_PCI_BAR0_REGION_INDEX) {
            Some(r) if r.size >= BAR0_SIZE => {}
            Some(r) => {
                return Err(Error::NotVgpu(format!(
                    "BAR0 is {:#x} bytes, expected {BAR0_SIZE:#x}",
                    r.size
                )))
            }
            None => return Err(Error::NotVgpu("no BAR0 region".into())),
        }
        if client.region(VFIO_PCI_CONFIG_REGION_INDEX).is_none() {
            return Err(Error::NotVgpu("no configuration-space region".into()));
        }
        let (map, ram) = Mapping::memfd("vgpu-guest-ram", ram_bytes)?;
        use std::os::fd::AsRawFd;
        client.dma_map(0, DEFAULT_DMA_BASE, ram_bytes, ram.as_raw_fd())?;
        let arena = DmaArena::new(map, ArenaAddressing::Linear(DEFAULT_DMA_BASE))?;
        let irq = EventFd::new()?;
        client.set_irqs(
            VFIO_PCI_MSIX_IRQ_INDEX,
            VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_EVENTFD,
            0,
            1,
            &[irq.as_raw_fd()],
        )?;
        let doorbell = map_doorbell(&client)?;
        let mut t = VfioUserTransport {
            client,
            arena,
            _ram: ram,
            irq,
            doorbell,
        };
        t.enable_function()?;
        Ok(t)
    }

    /// Memory space + bus master in the command register, MSI-X enabled:
    /// what a guest kernel does before using the function.
    fn enable_function(&mut self) -> Result<()> {
        let mut cmd = [0u8; 2];
        self.config_read(regs::PCI_COMMAND, &mut cmd)?;
        let cmd = u16::from_le_bytes(cmd) | regs::PCI_COMMAND_MEMORY | regs::PCI_COMMAND_BUS_MASTER;
        self.config_write(regs::PCI_COMMAND, &cmd.to_le_bytes())?;
        let mut ctl = [0u8; 2];
        self.config_read(regs::MSIX_CTRL, &mut ctl)?;
        let ctl = u16::from_le_bytes(ctl) | regs::MSIX_CTRL_ENABLE;
        self.config_write(regs::MSIX_CTRL, &ctl.to_le_bytes())
    }
}

/// Map the doorbell page (ABI §4.5) when the server offers BAR4 as
/// mappable with its backing file; `None` for a 1.0 device.
fn map_doorbell(client: &Client) -> Result<Option<DoorbellPage>> {
    let Some(r) = client.region(regs::DB_REGION) else {
        return Ok(None);
    };
    let mappable = r.flags & vfio_bindings::bindings::vfio::VFIO_REGION_INFO_FLAG_MMAP != 0;
    match (&r.file_offset, mappable) {
        (Some(fo), true) => {
            let file = fo
                .file()
                .try_clone()
                .map_err(|e| Error::io("dup the doorbell page's descriptor", e))?;
            Ok(Some(DoorbellPage::map(file, fo.start(), r.size)?))
        }
        _ => Ok(None),
    }
}

impl Transport for VfioUserTransport {
    fn name(&self) -> &'static str {
        "vfio-user"
    }
    fn config_read(&mut self, offset: u16, data: &mut [u8]) -> Result<()> {
        Ok(self
            .client
            .region_read(VFIO_PCI_CONFIG_REGION_INDEX, offset as u64, data)?)
    }
    fn config_write(&mut self, offset: u16, data: &[u8]) -> Result<()> {
        Ok(self
            .client
            .region_write(VFIO_PCI_CONFIG_REGION_INDEX, offset as u64, data)?)
    }
    fn bar0_read32(&mut self, offset: u32) -> Result<u32> {
        let mut b = [0u8; 4];
        self.client
            .region_read(VFIO_PCI_BAR0_REGION_INDEX, offset as u64, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn bar0_write32(&mut self, offset: u32, value: u32) -> Result<()> {
        Ok(self.client.region_write(
            VFIO_PCI_BAR0_REGION_INDEX,
            offset as u64,
            &value.to_le_bytes(),
        )?)
    }
    fn bar0_read64(&mut self, offset: u32) -> Result<u64> {
        let mut b = [0u8; 8];
        self.client
            .region_read(VFIO_PCI_BAR0_REGION_INDEX, offset as u64, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn bar0_write64(&mut self, offset: u32, value: u64) -> Result<()> {
        Ok(self.client.region_write(
            VFIO_PCI_BAR0_REGION_INDEX,
            offset as u64,
            &value.to_le_bytes(),
        )?)
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
    fn reset(&mut self) -> Result<()> {
        self.client.reset()?;
        // The FLR returned configuration space to its power-on image.
        self.enable_function()
    }
}

impl Drop for VfioUserTransport {
    fn drop(&mut self) {
        let _ = self.client.shutdown();
    }
}
