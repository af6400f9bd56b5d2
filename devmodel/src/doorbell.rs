//! The doorbell page (BAR4, ABI 1.1) as the device keeps it: one page of a
//! memfd, mapped here and handed to the VMM, which maps it into the guest.
//! Layout and the suppression protocol are in [`mmio::doorbell`].
//!
//! The front end watches `DB_PUT` while the vGPU is active and publishes
//! `POLLING`; a `DB_PUT` word that differs from the value last acted on is a
//! doorbell for its channel. Before the front end sleeps it clears
//! `POLLING`, fences, and looks once more ([`DoorbellPage::sleep`]), so a
//! driver store that raced with the transition is still seen.
//!
//! Everything here is guest-writable memory: a value read from it only ever
//! makes the device re-read the channel's USERD, which is checked as before.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU32, Ordering};

use mmio::bar::BAR4_SIZE;
use mmio::doorbell::{put_offset, DEVICE_OFFSET, DEVICE_POLLING};
use mmio::regs::{ChannelId, MAX_CHANNELS};
use vm_memory::bitmap::BS;
use vm_memory::FileOffset;
use vm_memory::{Bytes, MmapRegion, VolatileMemory, VolatileSlice};

/// The page and what the device last acted on.
#[derive(Debug)]
pub struct DoorbellPage {
    map: MmapRegion,
    /// Per channel, the `DB_PUT` value the device last acted on.
    seen: Vec<AtomicU32>,
}

impl DoorbellPage {
    /// A zeroed page for `channels` channels, in a memfd sealed against
    /// resizing (a client that could shrink it would fault the daemon).
    pub fn new(channels: u32) -> std::io::Result<Self> {
        // SAFETY: memfd_create only reads the NUL-terminated literal name.
        let fd = unsafe {
            libc::memfd_create(
                c"vgpud-doorbell".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is the new descriptor just returned (checked), owned by
        // nothing else.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(BAR4_SIZE)?;
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: fcntl(F_ADD_SEALS) takes an integer and touches no process
        // memory; `file` is open and owned here.
        if unsafe {
            libc::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                libc::F_ADD_SEALS,
                seals,
            )
        } != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        let map = MmapRegion::from_file(FileOffset::new(file, 0), BAR4_SIZE as usize)
            .map_err(std::io::Error::other)?;
        let channels = channels.min(MAX_CHANNELS);
        Ok(DoorbellPage {
            map,
            seen: (0..channels).map(|_| AtomicU32::new(0)).collect(),
        })
    }

    fn slice(&self) -> VolatileSlice<'_, BS<'_, ()>> {
        self.map.as_volatile_slice()
    }

    /// The backing file, for the VMM to map (a new descriptor each call).
    pub fn file(&self) -> std::io::Result<File> {
        match self.map.file_offset() {
            Some(f) => f.file().try_clone(),
            None => Err(std::io::Error::other("doorbell page has no backing file")),
        }
    }

    fn load(&self, offset: u64) -> u32 {
        self.slice()
            .load::<u32>(offset as usize, Ordering::SeqCst)
            .unwrap_or(0)
    }

    fn store(&self, offset: u64, v: u32) {
        let _ = self.slice().store(v, offset as usize, Ordering::SeqCst);
    }

    /// Publish that the device polls the page.
    pub fn set_polling(&self) {
        self.store(DEVICE_OFFSET, DEVICE_POLLING);
    }

    /// Whether the device says it polls (what a driver reads).
    pub fn polling(&self) -> bool {
        self.load(DEVICE_OFFSET) & DEVICE_POLLING != 0
    }

    /// Some channel's `DB_PUT` differs from what the device acted on.
    pub fn changed(&self) -> bool {
        self.seen
            .iter()
            .enumerate()
            .any(|(c, seen)| self.load(put_offset(c as u32)) != seen.load(Ordering::Relaxed))
    }

    /// Call `ring` for every channel whose `DB_PUT` changed, and remember
    /// the new values. Returns how many rang.
    pub fn take_rung(&self, mut ring: impl FnMut(ChannelId)) -> u64 {
        let mut n = 0;
        for (c, seen) in self.seen.iter().enumerate() {
            let v = self.load(put_offset(c as u32));
            if v != seen.swap(v, Ordering::Relaxed) {
                ring(ChannelId(c as u32));
                n += 1;
            }
        }
        n
    }

    /// Stop publishing `POLLING` before the front end sleeps: clear it,
    /// fence, and look again. Returns the channels that rang in the
    /// meantime through `ring`; when any did, `POLLING` is set again and the
    /// caller must not sleep.
    pub fn sleep(&self, ring: impl FnMut(ChannelId)) -> u64 {
        self.store(DEVICE_OFFSET, 0);
        fence(Ordering::SeqCst);
        let n = self.take_rung(ring);
        if n > 0 {
            self.set_polling();
        }
        n
    }

    /// The trapped doorbell of `ch` rang: what its `DB_PUT` holds now is
    /// acted on (so the poller does not count the same doorbell again).
    pub fn acknowledge(&self, ch: ChannelId) {
        if let Some(seen) = self.seen.get(ch.index()) {
            seen.store(self.load(put_offset(ch.0)), Ordering::Relaxed);
        }
    }

    /// A channel was enabled or reset: its `DB_PUT` starts again from 0.
    pub fn reset_channel(&self, ch: ChannelId) {
        if let Some(seen) = self.seen.get(ch.index()) {
            self.store(put_offset(ch.0), 0);
            seen.store(0, Ordering::Relaxed);
        }
    }

    /// Engine reset: every `DB_PUT` starts again from 0.
    pub fn reset(&self) {
        for c in 0..self.seen.len() as u32 {
            self.reset_channel(ChannelId(c));
        }
    }

    /// A trapped read of the page (a VMM that did not map it).
    pub fn read(&self, offset: u64, data: &mut [u8]) -> Result<(), vm_memory::VolatileMemoryError> {
        self.slice().read_slice(data, offset as usize)
    }

    /// A trapped write of the page. Only `DB_PUT` words are the driver's;
    /// bytes elsewhere are ignored. Returns whether a `DB_PUT` word was
    /// written (a doorbell, by trap).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<bool, vm_memory::VolatileMemoryError> {
        let end = offset.saturating_add(data.len() as u64);
        let puts_end = put_offset(self.seen.len() as u32);
        if offset >= puts_end {
            return Ok(false);
        }
        let keep = (end.min(puts_end) - offset) as usize;
        self.slice().write_slice(&data[..keep], offset as usize)?;
        Ok(true)
    }
}
