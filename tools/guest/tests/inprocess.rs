//! End to end: the driver against an in-process `devmodel::Vgpu` on the
//! cpu engine, through a test-only transport that plays the VMM (guest
//! RAM in a memfd, DMA-mapped; MSI-X through an eventfd).

use std::time::Duration;

use devmodel::{CpuEngine, Vgpu};
use vgpu_guest::transport::{ArenaAddressing, DmaArena, DmaBuffer, EventFd, Mapping, Transport};
use vgpu_guest::{Error, Result};

const RAM_GPA: u64 = 0x8000_0000;
const REGION_BAR0: u32 = 0;
const REGION_CONFIG: u32 = 7;
const MSIX: u32 = 2;

struct InProcess {
    vgpu: Vgpu,
    arena: DmaArena,
    irq: EventFd,
}

fn dev_err(e: devmodel::DeviceError) -> Error {
    Error::Protocol(e.to_string())
}

impl InProcess {
    fn new(engine: &CpuEngine, channels: u32, vram_mib: u64, ram_mib: u64) -> InProcess {
        let cfg = devmodel::harness::vgpu_config("guest-test", vram_mib << 20, channels);
        let vgpu = Vgpu::new(cfg, engine).expect("create vgpu");
        let (map, file) = Mapping::memfd("guest-ram", ram_mib << 20).expect("memfd");
        vgpu.dma_map(RAM_GPA, ram_mib << 20, file, 0, true)
            .expect("dma map");
        let irq = EventFd::new().expect("eventfd");
        vgpu.set_irqs(MSIX, 0, vec![Some(irq.try_clone_file().expect("dup"))])
            .expect("set irqs");
        let arena = DmaArena::new(map, ArenaAddressing::Linear(RAM_GPA)).expect("arena");
        InProcess { vgpu, arena, irq }
    }

    /// Guest RAM whose pages the device sees in reverse order, as physical
    /// pages of a no-IOMMU guest are scattered: every buffer larger than a
    /// page is discontiguous for the device.
    fn scattered(engine: &CpuEngine, channels: u32, ram_mib: u64) -> InProcess {
        let t = InProcess::new(engine, channels, 64, 1);
        let (map, file) = Mapping::memfd("scattered-ram", ram_mib << 20).expect("memfd");
        let pages = (ram_mib << 20) / 4096;
        let gpas: Vec<u64> = (0..pages)
            .map(|i| RAM_GPA + (1 << 30) + (pages - 1 - i) * 4096)
            .collect();
        for (i, &gpa) in gpas.iter().enumerate() {
            t.vgpu
                .dma_map(
                    gpa,
                    4096,
                    file.try_clone().expect("dup"),
                    i as u64 * 4096,
                    true,
                )
                .expect("dma map page");
        }
        let arena = DmaArena::new(map, ArenaAddressing::Pages(gpas)).expect("arena");
        InProcess { arena, ..t }
    }
}

impl Transport for InProcess {
    fn name(&self) -> &'static str {
        "in-process"
    }
    fn config_read(&mut self, offset: u16, data: &mut [u8]) -> Result<()> {
        self.vgpu
            .region_read(REGION_CONFIG, offset as u64, data)
            .map_err(dev_err)
    }
    fn config_write(&mut self, offset: u16, data: &[u8]) -> Result<()> {
        self.vgpu
            .region_write(REGION_CONFIG, offset as u64, data)
            .map_err(dev_err)
    }
    fn bar0_read32(&mut self, offset: u32) -> Result<u32> {
        let mut b = [0u8; 4];
        self.vgpu
            .region_read(REGION_BAR0, offset as u64, &mut b)
            .map_err(dev_err)?;
        Ok(u32::from_le_bytes(b))
    }
    fn bar0_write32(&mut self, offset: u32, value: u32) -> Result<()> {
        self.vgpu
            .region_write(REGION_BAR0, offset as u64, &value.to_le_bytes())
            .map_err(dev_err)
    }
    fn bar0_read64(&mut self, offset: u32) -> Result<u64> {
        let mut b = [0u8; 8];
        self.vgpu
            .region_read(REGION_BAR0, offset as u64, &mut b)
            .map_err(dev_err)?;
        Ok(u64::from_le_bytes(b))
    }
    fn bar0_write64(&mut self, offset: u32, value: u64) -> Result<()> {
        self.vgpu
            .region_write(REGION_BAR0, offset as u64, &value.to_le_bytes())
            .map_err(dev_err)
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
    fn reset(&mut self) -> Result<()> {
        self.vgpu.reset();
        Ok(())
    }
}

fn open(engine: &CpuEngine, channels: u32) -> vgpu_guest::Device {
    vgpu_guest::Device::open(Box::new(InProcess::new(engine, channels, 64, 64)))
        .expect("open device")
}

#[test]
fn selftest_passes_on_the_cpu_engine() {
    let engine = CpuEngine::new(2).unwrap();
    let mut dev = open(&engine, 4);
    let report = vgpu_guest::selftest::run_with(&mut dev, &mut |c| println!("{c}"));
    assert!(
        report.passed(),
        "failed: {:#?}",
        report.failures().collect::<Vec<_>>()
    );
    assert!(
        report.checks.len() >= 25,
        "only {} checks ran",
        report.checks.len()
    );
}

#[test]
fn selftest_with_a_single_channel() {
    let engine = CpuEngine::new(1).unwrap();
    let mut dev = open(&engine, 1);
    let report = vgpu_guest::selftest::run(&mut dev);
    assert!(
        report.passed(),
        "failed: {:#?}",
        report.failures().collect::<Vec<_>>()
    );
}

#[test]
fn selftest_with_scattered_pages() {
    let engine = CpuEngine::new(2).unwrap();
    let mut dev = vgpu_guest::Device::open(Box::new(InProcess::scattered(&engine, 2, 8)))
        .expect("open device");
    let report = vgpu_guest::selftest::run(&mut dev);
    assert!(
        report.passed(),
        "failed: {:#?}",
        report.failures().collect::<Vec<_>>()
    );
}

#[test]
fn spin_load_reports_completions() {
    let engine = CpuEngine::new(2).unwrap();
    let mut dev = open(&engine, 4);
    let cfg = vgpu_guest::load::LoadConfig {
        unit_us: 200,
        duration: Duration::from_millis(300),
        channels: 2,
    };
    let r = vgpu_guest::load::run(&mut dev, &cfg).expect("load run");
    assert!(r.completed >= 100, "{r:?}");
    assert_eq!(r.busy_us, r.completed * 200);
    assert!(r.utilization > 0.2 && r.utilization <= 2.0 + 1e-9, "{r:?}");
    assert!(
        r.latency_p50_us >= 200.0 && r.latency_p50_us <= r.latency_p99_us,
        "{r:?}"
    );
    assert!(!dev.busy().expect("status"), "load leaves the vGPU idle");
}

#[test]
fn vram_and_va_are_returned_on_free() {
    let engine = CpuEngine::new(1).unwrap();
    let mut dev = open(&engine, 1);
    let before = dev.vram_free();
    let mut ch = vgpu_guest::Channel::new(&mut dev, 0, vgpu_guest::ChannelConfig::default())
        .expect("channel");
    let b = dev
        .alloc(vgpu_guest::Placement::Vram, 5 << 20)
        .expect("alloc");
    assert_eq!(
        b.vram_offset().map(|o| o % (2 << 20)),
        Some(0),
        "large buffers are 2 MiB aligned for large pages"
    );
    ch.upload(&mut dev, &b, (5 << 20) - 8, &[1, 2, 3, 4, 5, 6, 7, 8])
        .expect("upload");
    assert_eq!(
        ch.download(&mut dev, &b, (5 << 20) - 8, 8)
            .expect("download"),
        vec![1, 2, 3, 4, 5, 6, 7, 8]
    );
    dev.free(b).expect("free");
    assert_eq!(dev.vram_free(), before);
    ch.destroy(&mut dev).expect("destroy");
}

#[test]
fn saxpy_load_checks_every_item() {
    let engine = CpuEngine::new(2).unwrap();
    let mut dev = open(&engine, 4);
    let cfg = vgpu_guest::load::SaxpyConfig {
        n: 4096,
        duration: Duration::from_millis(400),
        channels: 2,
    };
    let r = vgpu_guest::load::saxpy(&mut dev, &cfg).expect("saxpy run");
    assert!(r.items >= 10, "{r:?}");
    assert_eq!((r.wrong, r.errors), (0, 0), "{r:?}");
    assert_eq!(r.timeline.iter().sum::<u64>(), r.items, "{r:?}");
    assert!(r.timeline.len() >= 4, "{r:?}");
    assert!(r.max_gap_us >= r.p50_gap_us && r.p50_gap_us > 0.0, "{r:?}");
    assert!(r.start_unix_ms > 1_600_000_000_000, "{r:?}");
    assert!(
        !dev.busy().expect("status"),
        "the load leaves the vGPU idle"
    );
}

#[test]
fn kernel_buffers_are_whole_2m_chunks() {
    let engine = CpuEngine::new(1).unwrap();
    let mut dev = open(&engine, 1);
    assert_eq!(
        dev.ptx_va_base(),
        0,
        "PTX_VA_BASE reads 0 with CAPS.PTX = 0"
    );
    let before = dev.vram_free();
    let b = dev.alloc_for_kernels(4 << 20 | 12).expect("alloc");
    assert_eq!(b.len(), 4 << 20 | 12);
    assert_eq!(b.mapped_len(), 6 << 20);
    assert_eq!(b.va() % (2 << 20), 0);
    assert_eq!(b.vram_offset().map(|o| o % (2 << 20)), Some(0));
    assert_eq!(dev.kernel_ptr(&b), b.va());
    assert_eq!(dev.vram_free(), before - (6 << 20));
    dev.free(b).expect("free");
    assert_eq!(dev.vram_free(), before);
}

#[test]
fn ptx_commands_refuse_a_device_without_ptx() {
    let engine = CpuEngine::new(1).unwrap();
    let mut dev = open(&engine, 1);
    let r = vgpu_guest::ptx::check(&mut dev, "", &mut |_| {});
    assert!(!r.passed && r.checks.len() == 1, "{r:?}");
    let r = vgpu_guest::ptx::fault(
        &mut dev,
        "",
        vgpu_guest::ptx::FaultKind::Repeat,
        Duration::from_millis(100),
    );
    assert!(!r.passed && r.detail.contains("CAPS.PTX = 0"), "{r:?}");
}
