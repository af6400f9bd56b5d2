//! BAR0 register offsets and fields (ABI §2), and PCI configuration
//! space offsets the driver touches (ABI §1).

/// `ID`: "VGPU" in ASCII.
pub const ID: u32 = 0x000;
/// The value of `ID` on every vgpud vGPU.
pub const ID_MAGIC: u32 = 0x5550_4756;
/// `VERSION`: bits 31:16 major, 15:0 minor.
pub const VERSION: u32 = 0x004;
/// The ABI major version this driver speaks.
pub const ABI_MAJOR: u32 = 1;
/// `CAPS`: bit 0 PTX, bit 1 LARGE_PAGES, bit 2 DOORBELL_PAGE, bits 15:8
/// MSI-X vectors.
pub const CAPS: u32 = 0x008;
pub const CAPS_PTX: u32 = 1 << 0;
pub const CAPS_LARGE_PAGES: u32 = 1 << 1;
/// BAR4 is the doorbell page (ABI 1.1, §4.5).
pub const CAPS_DOORBELL_PAGE: u32 = 1 << 2;
pub const NUM_CHANNELS: u32 = 0x00C;
/// `VRAM_SIZE_LO/HI` (one 64-bit access).
pub const VRAM_SIZE: u32 = 0x010;
/// `PTX_VA_BASE_LO/HI` (one 64-bit access, RO): the GPU address at which
/// a guest PTX kernel sees the vGPU's VA 0 (a kernel pointer to VA `v` is
/// `PTX_VA_BASE + v`); 0 when `CAPS.PTX` = 0.
pub const PTX_VA_BASE: u32 = 0x018;
pub const INTR_STATUS: u32 = 0x020;
pub const INTR_ENABLE: u32 = 0x024;
pub const INTR_CHANNEL_LO: u32 = 0x028;
pub const INTR_CHANNEL_HI: u32 = 0x02C;
pub const TIMER_LO: u32 = 0x030;
pub const TIMER_HI: u32 = 0x034;
pub const RESET: u32 = 0x040;
pub const STATUS: u32 = 0x044;
pub const STATUS_BUSY: u32 = 1;
pub const MMU_INVALIDATE: u32 = 0x080;
pub const MMU_FAULT_INFO: u32 = 0x084;
pub const MMU_FAULT_INFO_VALID: u32 = 1 << 31;
/// `MMU_FAULT_ADDR_LO/HI` (one 64-bit access).
pub const MMU_FAULT_ADDR: u32 = 0x088;
/// `RUNLIST_BASE_LO/HI` (one 64-bit access).
pub const RUNLIST_BASE: u32 = 0x090;
pub const RUNLIST_SUBMIT: u32 = 0x098;
pub const RUNLIST_INFO: u32 = 0x09C;
pub const RUNLIST_INFO_REJECTED: u32 = 1 << 31;
pub const DOORBELL: u32 = 0x0A0;
/// `INFO_INDEX` (ABI 1.3, §2.3): the word of the device-info block `INFO_DATA` reads.
pub const INFO_INDEX: u32 = 0x0B0;
/// `INFO_DATA` (ABI 1.3, RO): word `INFO_INDEX` of the device-info block; a read moves
/// `INFO_INDEX` on by one.
pub const INFO_DATA: u32 = 0x0B4;

/// The device-info block (ABI 1.3, §2.3), by 32-bit word.
pub mod info {
    /// Words in the block (0 on a device without one).
    pub const WORDS: u32 = 0;
    /// The CUDA version of the engine's driver (e.g. 13000), 0 for none.
    pub const CUDA_VERSION: u32 = 1;
    /// Number of attribute words at [`ATTRS`].
    pub const ATTR_COUNT: u32 = 2;
    /// The UUID, 16 bytes.
    pub const UUID: u32 = 4;
    /// The name, 256 bytes, NUL-padded.
    pub const NAME: u32 = 8;
    pub const NAME_BYTES: usize = 256;
    /// Attribute *a* (a `CUdevice_attribute` number) at word `ATTRS + a`.
    pub const ATTRS: u32 = 72;
    /// Most attribute words a block carries.
    pub const MAX_ATTRS: u32 = 512;
}

/// Interrupt causes (`INTR_STATUS` / `INTR_ENABLE` bits, ABI §6).
pub const INTR_HOST: u32 = 1 << 0;
pub const INTR_MMU_FAULT: u32 = 1 << 1;
pub const INTR_CHANNEL_ERROR: u32 = 1 << 2;
pub const INTR_ALL: u32 = INTR_HOST | INTR_MMU_FAULT | INTR_CHANNEL_ERROR;

/// Channel register blocks: `0x1000 + c × 0x20`.
pub const CHANNEL_BASE: u32 = 0x1000;
pub const CHANNEL_STRIDE: u32 = 0x20;
/// `CH_INST_LO/HI` (one 64-bit access).
pub const CH_INST: u32 = 0x00;
pub const CH_CTRL: u32 = 0x08;
pub const CH_CTRL_ENABLE: u32 = 1 << 0;
pub const CH_CTRL_RESET: u32 = 1 << 1;
pub const CH_STATUS: u32 = 0x0C;
pub const CH_GP_GET: u32 = 0x10;
pub const CH_GP_PUT: u32 = 0x14;
pub const CH_ERROR_INFO: u32 = 0x18;

/// The BAR0 offset of channel register `reg` of channel `channel`.
pub const fn channel_reg(channel: u32, reg: u32) -> u32 {
    CHANNEL_BASE + channel * CHANNEL_STRIDE + reg
}

/// Channel states (`CH_STATUS[3:0]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelState {
    Disabled,
    Idle,
    Pending,
    Running,
    Blocked,
    Faulted,
    /// A state ABI v1 does not define.
    Unknown(u8),
}

impl ChannelState {
    pub fn from_raw(v: u32) -> Self {
        match v & 0xF {
            0 => ChannelState::Disabled,
            1 => ChannelState::Idle,
            2 => ChannelState::Pending,
            3 => ChannelState::Running,
            4 => ChannelState::Blocked,
            5 => ChannelState::Faulted,
            s => ChannelState::Unknown(s as u8),
        }
    }
}

// ---- PCI configuration space ----------------------------------------------

pub const PCI_VENDOR_ID: u16 = 0x00;
pub const PCI_COMMAND: u16 = 0x04;
pub const PCI_COMMAND_MEMORY: u16 = 1 << 1;
pub const PCI_COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Revision (byte 0x08) and class code (bytes 0x09–0x0B).
pub const PCI_CLASS_REVISION: u16 = 0x08;
/// The class code of a vGPU: display controller, 3D controller.
pub const PCI_CLASS_3D: u32 = 0x03_0200;
/// MSI-X capability and its message control register.
pub const MSIX_CAP: u16 = 0x40;
pub const MSIX_CTRL: u16 = MSIX_CAP + 2;
pub const MSIX_CTRL_ENABLE: u16 = 1 << 15;

// The doorbell page (BAR4, ABI §4.5).
/// vfio region index of BAR4.
pub const DB_REGION: u32 = 4;
/// Size of the doorbell page.
pub const DB_PAGE_SIZE: u64 = 0x1000;
/// `DB_DEVICE`: written by the device.
pub const DB_DEVICE: u64 = 0x800;
/// `DB_DEVICE.POLLING`: no trapped doorbell needed.
pub const DB_DEVICE_POLLING: u32 = 1 << 0;

/// Offset of channel `channel`'s `DB_PUT` in the doorbell page.
pub const fn db_put(channel: u32) -> u64 {
    4 * channel as u64
}
