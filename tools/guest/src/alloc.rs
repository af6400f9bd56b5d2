//! A first-fit range allocator, used for VRAM offsets, GPU virtual
//! addresses and DMA memory. It only does bookkeeping: the caller owns
//! what the ranges stand for.

use std::collections::BTreeMap;

/// Hands out aligned, non-overlapping ranges of `[base, base + size)`.
#[derive(Clone, Debug)]
pub struct RangeAllocator {
    base: u64,
    size: u64,
    /// Free ranges: start → length, never adjacent (coalesced on free).
    free: BTreeMap<u64, u64>,
}

impl RangeAllocator {
    /// All of `[base, base + size)` free.
    pub fn new(base: u64, size: u64) -> Self {
        let mut free = BTreeMap::new();
        if size > 0 {
            free.insert(base, size);
        }
        RangeAllocator { base, size, free }
    }

    /// The managed range.
    pub fn span(&self) -> (u64, u64) {
        (self.base, self.size)
    }

    /// Bytes still free (possibly fragmented).
    pub fn free_bytes(&self) -> u64 {
        self.free.values().sum()
    }

    /// A range of `size` bytes starting at a multiple of `align` (a power
    /// of two), or `None` when no free range fits.
    pub fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        if size == 0 || !align.is_power_of_two() {
            return None;
        }
        let (start, len, at) = self.free.iter().find_map(|(&start, &len)| {
            let at = start.checked_add(align - 1)? & !(align - 1);
            let end = at.checked_add(size)?;
            (end <= start + len).then_some((start, len, at))
        })?;
        self.free.remove(&start);
        if at > start {
            self.free.insert(start, at - start);
        }
        let end = at + size;
        if end < start + len {
            self.free.insert(end, start + len - end);
        }
        Some(at)
    }

    /// Return a range handed out by [`alloc`](Self::alloc). Freeing
    /// something not allocated (or twice) is refused with `false`.
    pub fn free(&mut self, start: u64, size: u64) -> bool {
        let Some(end) = start.checked_add(size) else {
            return false;
        };
        if size == 0 || start < self.base || end > self.base + self.size {
            return false;
        }
        // Overlap with the free range before or after?
        if let Some((&s, &l)) = self.free.range(..end).next_back() {
            if s + l > start {
                return false;
            }
        }
        let (mut new_start, mut new_len) = (start, size);
        if let Some((&s, &l)) = self.free.range(..start).next_back() {
            if s + l == start {
                self.free.remove(&s);
                new_start = s;
                new_len += l;
            }
        }
        if let Some(&l) = self.free.get(&end) {
            self.free.remove(&end);
            new_len += l;
        }
        self.free.insert(new_start, new_len);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_first_fit_and_coalescing() {
        let mut a = RangeAllocator::new(0x1000, 0x10000);
        let x = a.alloc(0x100, 0x1000).unwrap();
        assert_eq!(x, 0x1000);
        let y = a.alloc(0x1000, 0x4000).unwrap();
        assert_eq!(y, 0x4000);
        let z = a.alloc(0x100, 0x100).unwrap();
        assert_eq!(z, 0x1100, "first fit uses the gap before y");
        assert!(a.alloc(0x20000, 1).is_none());
        assert!(a.free(y, 0x1000));
        assert!(!a.free(y, 0x1000), "double free refused");
        assert!(a.free(x, 0x100));
        assert!(a.free(z, 0x100));
        assert_eq!(a.free_bytes(), 0x10000);
        assert_eq!(a.alloc(0x10000, 0x1000), Some(0x1000), "fully coalesced");
    }

    #[test]
    fn refuses_bad_requests() {
        let mut a = RangeAllocator::new(0, 0x1000);
        assert!(a.alloc(0, 1).is_none());
        assert!(a.alloc(1, 3).is_none());
        assert!(!a.free(0x800, 0x1000), "past the end");
        assert!(!a.free(0, 0x10), "never allocated");
        let p = a.alloc(0x10, 0x10).unwrap();
        assert!(!a.free(p + 8, 0x10), "overlaps a free range");
    }

    #[test]
    fn random_alloc_free_never_overlaps() {
        let mut a = RangeAllocator::new(0, 1 << 20);
        let mut live: Vec<(u64, u64)> = Vec::new();
        let mut seed = 12345u64;
        for _ in 0..2000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if seed >> 63 == 0 || live.is_empty() {
                let size = (seed >> 40) % 20000 + 1;
                let align = 1 << ((seed >> 20) % 13);
                if let Some(p) = a.alloc(size, align) {
                    assert_eq!(p % align, 0);
                    assert!(live.iter().all(|&(s, l)| p + size <= s || s + l <= p));
                    live.push((p, size));
                }
            } else {
                let i = (seed >> 33) as usize % live.len();
                let (s, l) = live.swap_remove(i);
                assert!(a.free(s, l));
            }
        }
        for (s, l) in live {
            assert!(a.free(s, l));
        }
        assert_eq!(a.free_bytes(), 1 << 20);
    }
}
