//! A vGPU's guest modules (ABI 1.3 §5.4), as the worker keeps them: which
//! module each handle holds, the image bytes charged to the vGPU, and the
//! cache of compiled PTX that makes a second load of the same text cheap.
//!
//! An image is PTX text, a cubin (an ELF file) or a fatbin, told apart by
//! its first bytes ([`ImageKind::of`]) and passed to the GPU's driver
//! unchanged. Before the driver parses a cubin or a fatbin, its headers
//! are checked to lie inside the bytes the guest sent ([`audit`]): the
//! driver sizes such images from their headers, not from the length it is
//! given, so a header that claims more would make it read past the buffer.
//!
//! PTX is compiled once: the worker's [`Loader`] turns the text into a
//! cubin, which is kept in a cache keyed by the text's hash (and compared
//! byte for byte on a hit), and each load of the text loads that cubin as
//! a module of its own. A module loaded twice is two modules, as in CUDA:
//! each has its own globals. Cubins and fatbins are loaded as they come;
//! the driver compiles nothing for a cubin, nor for a fatbin that holds
//! code for the GPU.
//!
//! Bounds: handles below [`compute::MAX_MODULES`]; at most
//! [`compute::MAX_MODULE_TOTAL_BYTES`] of images loaded at once (a module's
//! host memory in the worker, and its code on the GPU, grow with its
//! image); a cache of at most [`CACHE_BYTES`] and [`CACHE_ENTRIES`], least
//! recently used first out. The worker is the vGPU's own process, so all
//! of it is charged to that vGPU.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use mmio::methods::compute;

use crate::driver::{
    CUDA_ERROR_INVALID_HANDLE, CUDA_ERROR_INVALID_IMAGE, CUDA_ERROR_NOT_SUPPORTED,
    CUDA_ERROR_OUT_OF_MEMORY,
};

/// Most bytes (PTX text plus its compiled code) the compile cache keeps.
pub const CACHE_BYTES: u64 = 64 << 20;
/// Most texts the compile cache keeps.
pub const CACHE_ENTRIES: usize = 1024;

/// What an image is, by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    /// Text for the GPU's JIT (anything that is neither of the others).
    Ptx,
    /// An ELF file: `7F 45 4C 46`.
    Cubin,
    /// A fatbin: first word `0xBA55ED50`.
    Fatbin,
}

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const FATBIN_MAGIC: u32 = 0xBA55_ED50;

impl ImageKind {
    pub fn of(image: &[u8]) -> ImageKind {
        match image.get(..4) {
            Some(m) if m == ELF_MAGIC => ImageKind::Cubin,
            Some(&[a, b, c, d]) if u32::from_le_bytes([a, b, c, d]) == FATBIN_MAGIC => {
                ImageKind::Fatbin
            }
            _ => ImageKind::Ptx,
        }
    }
}

fn le(b: &[u8], at: usize, n: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(n)?)?;
    Some(s.iter().rev().fold(0u64, |v, &x| v << 8 | x as u64))
}

/// Check that what an image's headers claim lies inside its `image.len()`
/// bytes: a cubin's ELF header, program and section header tables and
/// sections (64-bit little-endian ELF only); a fatbin's header and the
/// size it gives. PTX text needs nothing (the worker NUL-terminates it).
/// Returns the kind, or `CUDA_ERROR_INVALID_IMAGE`.
pub fn audit(image: &[u8]) -> Result<ImageKind, u32> {
    let kind = ImageKind::of(image);
    let ok = match kind {
        ImageKind::Ptx => Some(()),
        ImageKind::Cubin => elf_fits(image),
        ImageKind::Fatbin => fatbin_fits(image),
    };
    ok.map(|()| kind).ok_or(CUDA_ERROR_INVALID_IMAGE)
}

fn fatbin_fits(b: &[u8]) -> Option<()> {
    // u32 magic, u16 version, u16 header size, u64 size of what follows.
    let header = le(b, 6, 2)?;
    let body = le(b, 8, 8)?;
    (header >= 16 && header.checked_add(body)? <= b.len() as u64).then_some(())
}

fn elf_fits(b: &[u8]) -> Option<()> {
    const EHDR: u64 = 64;
    // ELFCLASS64, little-endian.
    if b.len() < EHDR as usize || b.get(4) != Some(&2) || b.get(5) != Some(&1) {
        return None;
    }
    let len = b.len() as u64;
    let (phoff, shoff) = (le(b, 0x20, 8)?, le(b, 0x28, 8)?);
    let (phent, phnum) = (le(b, 0x36, 2)?, le(b, 0x38, 2)?);
    let (shent, shnum) = (le(b, 0x3A, 2)?, le(b, 0x3C, 2)?);
    let table = |off: u64, ent: u64, num: u64, min: u64| -> Option<()> {
        if num == 0 {
            return Some(());
        }
        (ent >= min && off.checked_add(ent * num)? <= len).then_some(())
    };
    table(phoff, phent, phnum, 56)?;
    table(shoff, shent, shnum, 64)?;
    for i in 0..shnum {
        let s = (shoff + i * shent) as usize;
        // Not SHT_NOBITS (8): the section's bytes are in the file.
        if le(b, s + 4, 4)? != 8 && le(b, s + 0x18, 8)?.checked_add(le(b, s + 0x20, 8)?)? > len {
            return None;
        }
    }
    for i in 0..phnum {
        let p = (phoff + i * phent) as usize;
        if le(b, p + 8, 8)?.checked_add(le(b, p + 0x20, 8)?)? > len {
            return None;
        }
    }
    Some(())
}

/// What the driver refused, and its log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The CUDA error number.
    pub code: u32,
    pub log: Vec<u8>,
}

impl Refusal {
    pub fn new(code: u32) -> Refusal {
        Refusal {
            code,
            log: Vec::new(),
        }
    }
}

/// PTX text compiled for the GPU.
#[derive(Debug, PartialEq, Eq)]
pub struct Compiled {
    /// A cubin the driver loads without compiling.
    pub code: Vec<u8>,
    /// The JIT's info log of the compilation.
    pub log: Vec<u8>,
}

/// How the worker compiles and loads images (the GPU's driver; a test's
/// stand-in).
pub trait Loader {
    type Module;
    /// Compile PTX text (without its NUL) into code that loads without
    /// compiling.
    fn compile(&mut self, ptx: &[u8]) -> Result<Compiled, Refusal>;
    /// Load an image as a module, with the driver's info log.
    fn load(&mut self, image: &[u8], kind: ImageKind) -> Result<(Self::Module, Vec<u8>), Refusal>;
}

/// A module and the bytes charged for it.
struct Loaded<M> {
    module: M,
    bytes: u64,
}

/// One compiled text in the cache.
struct Entry {
    text: Arc<[u8]>,
    compiled: Arc<Compiled>,
    /// When it was last used (the cache's clock).
    used: u64,
}

impl Entry {
    fn bytes(&self) -> u64 {
        (self.text.len() + self.compiled.code.len() + self.compiled.log.len()) as u64
    }
}

/// Compiled PTX by its text's hash.
#[derive(Default)]
struct Cache {
    entries: HashMap<u64, Entry>,
    bytes: u64,
    clock: u64,
}

impl Cache {
    fn key(text: &[u8]) -> u64 {
        let mut h = DefaultHasher::new();
        text.hash(&mut h);
        h.finish()
    }

    fn get(&mut self, text: &[u8]) -> Option<Arc<Compiled>> {
        self.clock += 1;
        let e = self.entries.get_mut(&Self::key(text))?;
        if &*e.text != text {
            return None;
        }
        e.used = self.clock;
        Some(e.compiled.clone())
    }

    /// Keep `compiled` for `text`, dropping the least recently used
    /// entries past the bounds (an entry larger than the whole cache is
    /// not kept).
    fn put(&mut self, text: &[u8], compiled: Arc<Compiled>) {
        self.clock += 1;
        let e = Entry {
            text: Arc::from(text),
            compiled,
            used: self.clock,
        };
        let bytes = e.bytes();
        if bytes > CACHE_BYTES {
            return;
        }
        if let Some(old) = self.entries.insert(Self::key(text), e) {
            self.bytes -= old.bytes();
        }
        self.bytes += bytes;
        while self.bytes > CACHE_BYTES || self.entries.len() > CACHE_ENTRIES {
            let Some(k) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            if let Some(gone) = self.entries.remove(&k) {
                self.bytes -= gone.bytes();
            }
        }
    }
}

/// What a load did: the log for the guest's buffer, and the module the
/// handle held before (it goes once the work queued before has run).
pub struct LoadOutcome<M> {
    pub log: Vec<u8>,
    pub replaced: Option<M>,
}

/// How a load went besides its module.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// PTX texts compiled.
    pub compiled: u64,
    /// PTX loads served from the cache.
    pub cached: u64,
}

/// The vGPU's modules by handle.
pub struct ModuleTable<M> {
    loaded: HashMap<u32, Loaded<M>>,
    /// Image bytes of the loaded modules.
    bytes: u64,
    cache: Cache,
    pub counts: Counts,
}

impl<M> Default for ModuleTable<M> {
    fn default() -> Self {
        ModuleTable {
            loaded: HashMap::new(),
            bytes: 0,
            cache: Cache::default(),
            counts: Counts::default(),
        }
    }
}

/// The outcome of [`ModuleTable::load`].
pub type LoadResult<M> = Result<LoadOutcome<M>, (Refusal, Option<M>)>;

impl<M> ModuleTable<M> {
    /// The module under `handle`.
    pub fn get(&self, handle: u32) -> Option<&M> {
        self.loaded.get(&handle).map(|l| &l.module)
    }

    pub fn get_mut(&mut self, handle: u32) -> Option<&mut M> {
        self.loaded.get_mut(&handle).map(|l| &mut l.module)
    }

    /// Modules loaded, and the image bytes charged for them.
    pub fn usage(&self) -> (usize, u64) {
        (self.loaded.len(), self.bytes)
    }

    /// Take the module out of `handle` (none there is no error).
    pub fn unload(&mut self, handle: u32) -> Option<M> {
        let l = self.loaded.remove(&handle)?;
        self.bytes -= l.bytes;
        Some(l.module)
    }

    /// Every module goes (the VM went away); the cache stays.
    pub fn clear(&mut self) -> Vec<M> {
        self.bytes = 0;
        self.loaded.drain().map(|(_, l)| l.module).collect()
    }

    /// Load `image` under `handle` with `loader`. Whatever the handle held
    /// is taken out first (a failed load leaves it empty, as a JIT that
    /// rejects a slot's new text does), and handed back to be dropped once
    /// the work queued before has run.
    pub fn load<L: Loader<Module = M>>(
        &mut self,
        loader: &mut L,
        handle: u32,
        image: &[u8],
    ) -> LoadResult<M> {
        let replaced = self.unload(handle);
        if handle >= compute::MAX_MODULES {
            return Err((Refusal::new(CUDA_ERROR_INVALID_HANDLE), replaced));
        }
        let bytes = image.len() as u64;
        if self.bytes + bytes > compute::MAX_MODULE_TOTAL_BYTES {
            return Err((Refusal::new(CUDA_ERROR_OUT_OF_MEMORY), replaced));
        }
        let kind = match audit(image) {
            Ok(k) => k,
            Err(code) => return Err((Refusal::new(code), replaced)),
        };
        let loaded = match kind {
            ImageKind::Ptx => self.load_ptx(loader, image),
            _ => loader.load(image, kind),
        };
        match loaded {
            Ok((module, log)) => {
                self.loaded.insert(handle, Loaded { module, bytes });
                self.bytes += bytes;
                Ok(LoadOutcome { log, replaced })
            }
            Err(r) => Err((r, replaced)),
        }
    }

    /// PTX: its compiled code from the cache, or compiled now and kept,
    /// then loaded. Text the compiler refuses is handed to the driver's
    /// own load as it is, whose verdict (the error and log a GPU's driver
    /// gives for that text) stands.
    fn load_ptx<L: Loader<Module = M>>(
        &mut self,
        loader: &mut L,
        text: &[u8],
    ) -> Result<(M, Vec<u8>), Refusal> {
        let compiled = match self.cache.get(text) {
            Some(c) => {
                self.counts.cached += 1;
                c
            }
            None => match loader.compile(text) {
                Ok(c) => {
                    self.counts.compiled += 1;
                    let c = Arc::new(c);
                    self.cache.put(text, c.clone());
                    c
                }
                Err(_) => return loader.load(text, ImageKind::Ptx),
            },
        };
        let (module, _) = loader.load(&compiled.code, ImageKind::Cubin)?;
        Ok((module, compiled.log.clone()))
    }
}

/// `FUNC_INFO`'s answer ([`compute::FUNC_INFO_BYTES`]): `status` (0:
/// found), then the parameters' (offset, size) and the function's
/// attributes 0–15 (`CUfunction_attribute`); more than
/// [`compute::MAX_FUNC_PARAMS`] parameters answer `CUDA_ERROR_NOT_SUPPORTED`.
pub fn func_info_answer(
    status: u32,
    params: &[(u32, u32)],
    attrs: &[i32; compute::FUNC_ATTRIBUTES],
) -> Vec<u8> {
    let mut b = vec![0u8; compute::FUNC_INFO_BYTES as usize];
    let put = |b: &mut [u8], at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    if status != 0 {
        put(&mut b, 0, status);
        return b;
    }
    if params.len() > compute::MAX_FUNC_PARAMS as usize {
        put(&mut b, 0, CUDA_ERROR_NOT_SUPPORTED);
        return b;
    }
    put(&mut b, 4, params.len() as u32);
    for (i, a) in attrs.iter().enumerate() {
        put(&mut b, compute::FUNC_INFO_ATTRS + 4 * i, *a as u32);
    }
    for (i, (off, size)) in params.iter().enumerate() {
        let at = compute::FUNC_INFO_PARAMS + 8 * i;
        put(&mut b, at, *off);
        put(&mut b, at + 4, *size);
    }
    b
}

/// `MODULE_GLOBAL`'s answer ([`compute::GLOBAL_INFO_BYTES`]): `status`,
/// reserved, the global's address and size.
pub fn global_answer(status: u32, addr: u64, size: u64) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[..4].copy_from_slice(&status.to_le_bytes());
    if status == 0 {
        b[8..16].copy_from_slice(&addr.to_le_bytes());
        b[16..].copy_from_slice(&size.to_le_bytes());
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for the driver: "compiles" by tagging the text, "loads"
    /// by recording what it was given; refuses texts that start with
    /// `bad` (both ways) or `nolink` (only when compiling).
    #[derive(Default)]
    struct Recorder {
        compiles: Vec<Vec<u8>>,
        loads: Vec<(Vec<u8>, ImageKind)>,
        next: u32,
    }

    impl Loader for Recorder {
        type Module = u32;
        fn compile(&mut self, ptx: &[u8]) -> Result<Compiled, Refusal> {
            self.compiles.push(ptx.to_vec());
            if ptx.starts_with(b"bad") || ptx.starts_with(b"nolink") {
                return Err(Refusal {
                    code: 218,
                    log: b"link refused".to_vec(),
                });
            }
            let mut code = b"SASS:".to_vec();
            code.extend_from_slice(ptx);
            Ok(Compiled {
                code,
                log: b"compiled".to_vec(),
            })
        }
        fn load(&mut self, image: &[u8], kind: ImageKind) -> Result<(u32, Vec<u8>), Refusal> {
            self.loads.push((image.to_vec(), kind));
            if image.starts_with(b"bad") {
                return Err(Refusal {
                    code: 218,
                    log: b"ptxas: syntax error".to_vec(),
                });
            }
            self.next += 1;
            Ok((self.next, b"loaded".to_vec()))
        }
    }

    fn elf(sections: &[(u32, u64, u64)]) -> Vec<u8> {
        // A 64-byte header, then section headers at 64.
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(&ELF_MAGIC);
        b[4] = 2;
        b[5] = 1;
        b[0x28..0x30].copy_from_slice(&64u64.to_le_bytes());
        b[0x3A..0x3C].copy_from_slice(&64u16.to_le_bytes());
        b[0x3C..0x3E].copy_from_slice(&(sections.len() as u16).to_le_bytes());
        for (kind, off, size) in sections {
            let mut s = vec![0u8; 64];
            s[4..8].copy_from_slice(&kind.to_le_bytes());
            s[0x18..0x20].copy_from_slice(&off.to_le_bytes());
            s[0x20..0x28].copy_from_slice(&size.to_le_bytes());
            b.extend(s);
        }
        b
    }

    fn fatbin(header: u16, body: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[..4].copy_from_slice(&FATBIN_MAGIC.to_le_bytes());
        b[6..8].copy_from_slice(&header.to_le_bytes());
        b[8..16].copy_from_slice(&body.to_le_bytes());
        b
    }

    #[test]
    fn images_are_told_apart_by_magic_and_their_headers_must_fit() {
        assert_eq!(audit(b".version 8.0\n.target sm_90\n"), Ok(ImageKind::Ptx));
        assert_eq!(audit(b""), Ok(ImageKind::Ptx));
        // A cubin whose one section lies inside it, and one reaching past.
        let mut good = elf(&[(1, 128, 8)]);
        good.resize(good.len() + 64, 0);
        assert_eq!(audit(&good), Ok(ImageKind::Cubin));
        let past = elf(&[(1, 128, 1 << 20)]);
        assert_eq!(audit(&past), Err(CUDA_ERROR_INVALID_IMAGE));
        // A NOBITS section (.bss) has no bytes in the file.
        assert_eq!(audit(&elf(&[(8, 128, 1 << 20)])), Ok(ImageKind::Cubin));
        // A section table past the end, a 32-bit or big-endian ELF, a short header.
        let mut table = elf(&[(1, 0, 0)]);
        table[0x3C] = 9;
        assert_eq!(audit(&table), Err(CUDA_ERROR_INVALID_IMAGE));
        let mut class32 = good.clone();
        class32[4] = 1;
        assert_eq!(audit(&class32), Err(CUDA_ERROR_INVALID_IMAGE));
        assert_eq!(audit(&good[..40]), Err(CUDA_ERROR_INVALID_IMAGE));
        // Sizes that overflow.
        let mut wrap = elf(&[(1, u64::MAX, 2)]);
        wrap.resize(256, 0);
        assert_eq!(audit(&wrap), Err(CUDA_ERROR_INVALID_IMAGE));
        // Fatbins: header + body within the bytes.
        assert_eq!(audit(&fatbin(16, 48, 64)), Ok(ImageKind::Fatbin));
        assert_eq!(audit(&fatbin(16, 49, 64)), Err(CUDA_ERROR_INVALID_IMAGE));
        assert_eq!(audit(&fatbin(8, 0, 64)), Err(CUDA_ERROR_INVALID_IMAGE));
        assert_eq!(
            audit(&fatbin(16, u64::MAX, 64)),
            Err(CUDA_ERROR_INVALID_IMAGE)
        );
        assert_eq!(
            audit(&fatbin(16, 0, 16)[..12]),
            Err(CUDA_ERROR_INVALID_IMAGE)
        );
    }

    #[test]
    fn the_same_text_compiles_once_and_each_load_is_a_module_of_its_own() {
        let (mut t, mut d) = (ModuleTable::default(), Recorder::default());
        let ptx = b".version 8.0\n.entry k() { ret; }".as_slice();
        let a = t.load(&mut d, 0, ptx).ok().unwrap();
        assert_eq!(a.log, b"compiled");
        let b = t.load(&mut d, 1, ptx).ok().unwrap();
        assert_eq!(b.log, b"compiled", "the first compilation's log");
        assert_eq!(d.compiles.len(), 1, "compiled once");
        assert_eq!(
            t.counts,
            Counts {
                compiled: 1,
                cached: 1
            }
        );
        // Two modules, each from the compiled code.
        assert_eq!((t.get(0), t.get(1)), (Some(&1), Some(&2)));
        assert!(d
            .loads
            .iter()
            .all(|(img, k)| img.starts_with(b"SASS:") && *k == ImageKind::Cubin));
        // Another text compiles; cubins and fatbins load as they are.
        t.load(&mut d, 2, b"other text").ok().unwrap();
        assert_eq!(d.compiles.len(), 2);
        let mut cubin = elf(&[]);
        cubin.resize(80, 0);
        t.load(&mut d, 3, &cubin).ok().unwrap();
        t.load(&mut d, 4, &fatbin(16, 0, 16)).ok().unwrap();
        assert_eq!(d.compiles.len(), 2, "nothing compiled for them");
        assert_eq!(d.loads[3], (cubin.clone(), ImageKind::Cubin));
        assert_eq!(d.loads[4].1, ImageKind::Fatbin);
    }

    #[test]
    fn text_the_compiler_refuses_gets_the_driver_s_own_verdict() {
        let (mut t, mut d) = (ModuleTable::default(), Recorder::default());
        // Refused by both: the load's error and log stand; the handle is empty.
        t.load(&mut d, 5, b"first").ok().unwrap();
        let Err((r, replaced)) = t.load(&mut d, 5, b"bad text") else {
            panic!("loaded");
        };
        assert_eq!(r.code, 218);
        assert_eq!(r.log, b"ptxas: syntax error");
        assert_eq!(replaced, Some(1), "the handle's module goes");
        assert!(t.get(5).is_none());
        // Refused only by the compiler: the direct load stands, and
        // nothing is cached for it.
        let ok = t.load(&mut d, 6, b"nolink text").ok().unwrap();
        assert_eq!(ok.log, b"loaded");
        assert_eq!(t.get(6), Some(&2));
        t.load(&mut d, 7, b"nolink text").ok().unwrap();
        assert_eq!(t.counts.cached, 0);
        assert_eq!(t.usage(), (2, 2 * 11));
    }

    #[test]
    fn handles_and_bytes_are_bounded_and_unloads_give_bytes_back() {
        let (mut t, mut d) = (ModuleTable::default(), Recorder::default());
        // Every handle of the ABI, none past it.
        for h in [0, 1023, compute::MAX_MODULES - 1] {
            t.load(&mut d, h, format!("text {h}").as_bytes())
                .ok()
                .unwrap();
        }
        let Err((r, None)) = t.load(&mut d, compute::MAX_MODULES, b"x") else {
            panic!("loaded past the handles");
        };
        assert_eq!(r.code, CUDA_ERROR_INVALID_HANDLE);
        assert_eq!(t.usage().0, 3);
        // 1024 modules at once.
        for h in 0..1024 {
            t.load(&mut d, h, b"same").ok().unwrap();
        }
        assert_eq!(t.usage(), (1025, 1024 * 4 + 9));
        assert_eq!(d.compiles.len(), 4, "one text, compiled once");
        // The bytes charged: 256 MiB of images at most (cubins here: they
        // load as they are, nothing is hashed or compiled).
        let mut big = elf(&[]);
        big.resize((compute::MAX_MODULE_TOTAL_BYTES / 2) as usize, 0);
        t.load(&mut d, 2000, &big).ok().unwrap();
        let Err((r, _)) = t.load(&mut d, 2001, &big) else {
            panic!("past the vGPU's module bytes");
        };
        assert_eq!(r.code, CUDA_ERROR_OUT_OF_MEMORY);
        // Reloading a handle replaces its bytes; unloading gives them back.
        t.load(&mut d, 2000, &big).ok().unwrap();
        assert_eq!(t.unload(2000), Some(d.next));
        assert_eq!(t.unload(2000), None, "an empty handle is no error");
        t.load(&mut d, 2001, &big).ok().unwrap();
        assert_eq!(t.clear().len(), 1026);
        assert_eq!(t.usage(), (0, 0));
    }

    #[test]
    fn the_cache_is_bounded_and_drops_the_least_recently_used() {
        let mut c = Cache::default();
        let compiled = |n: usize| {
            Arc::new(Compiled {
                code: vec![0; n],
                log: Vec::new(),
            })
        };
        for i in 0..CACHE_ENTRIES + 10 {
            c.put(format!("t{i}").as_bytes(), compiled(1));
        }
        assert_eq!(c.entries.len(), CACHE_ENTRIES);
        assert!(c.get(b"t0").is_none(), "the oldest went");
        assert!(c.get(b"t10").is_some());
        // Bytes: two entries of 40 % each fit, a third pushes out the one
        // used longest ago (t10 was just used, so "a" goes).
        let mut c = Cache::default();
        let n = (CACHE_BYTES * 2 / 5) as usize;
        c.put(b"a", compiled(n));
        c.put(b"b", compiled(n));
        assert!(c.get(b"a").is_some());
        c.put(b"c", compiled(n));
        assert!(c.get(b"b").is_none());
        assert!(c.get(b"a").is_some() && c.get(b"c").is_some());
        assert!(c.bytes <= CACHE_BYTES);
        // Larger than the whole cache: not kept.
        c.put(b"d", compiled(CACHE_BYTES as usize + 1));
        assert!(c.get(b"d").is_none());
        // A hash hit with other text is a miss.
        let k = Cache::key(b"a");
        if let Some(e) = c.entries.get_mut(&k) {
            e.text = Arc::from(&b"not a"[..]);
        }
        assert!(c.get(b"a").is_none());
    }

    #[test]
    fn answers_follow_the_abi_layout() {
        let mut attrs = [0i32; compute::FUNC_ATTRIBUTES];
        attrs[0] = 1024;
        attrs[4] = 32;
        attrs[8] = 48 << 10;
        let b = func_info_answer(0, &[(0, 8), (8, 4), (16, 16)], &attrs);
        assert_eq!(b.len(), compute::FUNC_INFO_BYTES as usize);
        let u = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        assert_eq!((u(0), u(4)), (0, 3));
        assert_eq!(u(compute::FUNC_INFO_ATTRS), 1024);
        assert_eq!(u(compute::FUNC_INFO_ATTRS + 16), 32);
        assert_eq!(u(compute::FUNC_INFO_ATTRS + 32), 48 << 10);
        let p = compute::FUNC_INFO_PARAMS;
        assert_eq!(
            [u(p), u(p + 4), u(p + 8), u(p + 12), u(p + 16), u(p + 20)],
            [0, 8, 8, 4, 16, 16]
        );
        assert!(b[p + 24..].iter().all(|&x| x == 0));
        let missing = func_info_answer(500, &[(0, 8)], &attrs);
        assert_eq!(&missing[..8], &[0xF4, 1, 0, 0, 0, 0, 0, 0]);
        let many = vec![(0, 1); compute::MAX_FUNC_PARAMS as usize + 1];
        assert_eq!(
            &func_info_answer(0, &many, &attrs)[..4],
            &801u32.to_le_bytes()
        );
        let g = global_answer(0, 0x7f00_0000_1000, 24);
        assert_eq!(&g[8..16], &0x7f00_0000_1000u64.to_le_bytes());
        assert_eq!(&g[16..], &24u64.to_le_bytes());
        assert_eq!(global_answer(500, 1, 2), {
            let mut e = [0u8; 24];
            e[..4].copy_from_slice(&500u32.to_le_bytes());
            e
        });
    }
}
