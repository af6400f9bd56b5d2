//! Pushbuffer segment parsing and the audit: any words, with method state
//! carried from a first segment into a second, over an address space where
//! every VA below 2^40 translates (so the audit reaches every command) and
//! parameter blocks read back derived bytes. The first byte's low bit puts a
//! PTX backend behind it, so that guest modules, launches and ABI 1.3's
//! module queries, unloads and dynamic shared memory are decoded too.
#![no_main]

use devmodel::classes::MethodState;
use std::sync::Arc;

use devmodel::gmmu::{Aperture, Extent, Fault, KernelMap};
use devmodel::pushbuf::{parse_segment, AddressSpace};
use libfuzzer_sys::fuzz_target;
use mmio::regs::ErrorCode;

struct Flat {
    ptx: Option<Arc<KernelMap>>,
}

impl AddressSpace for Flat {
    fn translate(&mut self, va: u64, len: u64, write: bool) -> Result<Vec<Extent>, Fault> {
        match va.checked_add(len) {
            Some(end) if end <= 1 << 40 => Ok(vec![Extent {
                aperture: if va & 1 << 39 != 0 {
                    Aperture::Vram
                } else {
                    Aperture::Sysmem
                },
                addr: va,
                len,
            }]),
            _ => Err(Fault {
                code: ErrorCode::VaRange,
                va,
                write,
            }),
        }
    }
    fn read(&mut self, va: u64, len: u32) -> Result<Vec<u8>, Fault> {
        if len > 1 << 16 {
            return Err(Fault {
                code: ErrorCode::VaRange,
                va,
                write: false,
            });
        }
        Ok((0..len)
            .map(|i| (va as u32).wrapping_add(i).wrapping_mul(2_654_435_761) as u8)
            .collect())
    }
    fn runs_ptx(&self) -> bool {
        self.ptx.is_some()
    }
    fn kernel_map(&mut self) -> Option<Arc<KernelMap>> {
        self.ptx.clone()
    }
}

fuzz_target!(|data: &[u8]| {
    let words: Vec<u32> = data
        .chunks_exact(4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect();
    let (a, b) = words.split_at(words.len() / 2);
    let mut space = Flat {
        ptx: (data.first().is_some_and(|b| b & 1 != 0)).then(|| {
            Arc::new(KernelMap {
                id: 1,
                runs: Vec::new(),
            })
        }),
    };
    let mut state = MethodState::default();
    if parse_segment(a, &mut state, &mut space).is_ok() {
        let _ = parse_segment(b, &mut state, &mut space);
    }
});
