//! Which parent a vGPU goes to when `create` names none: the placement
//! rule of `[catalog] placement` ([`Placement`], docs/config.md), among
//! the parents that offer the type and have an instance of it left.
//!
//! * `spread` (the default): the parent with the fewest vGPUs, then the
//!   most framebuffer left. Under the work-conserving and equal-share
//!   policies a vGPU's share of its GPU is 1/N of the vGPUs there, so each
//!   new vGPU gets the most GPU it can; and a fault's stall or a runaway
//!   kernel reaches only the vGPUs of its own GPU.
//! * `pack`: the parent with the most vGPUs, then the least framebuffer
//!   left: GPUs fill one after the other, and whole GPUs stay free for
//!   large types.
//!
//! Ties go to the first parent in id order (for GPUs of `device = "all"`,
//! their PCI addresses), so the same requests place the same way.

use mdev_types::Placement;

/// A parent that offers the type and has an instance of it left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate<'a> {
    pub parent: &'a str,
    /// vGPUs on it now, of any type.
    pub vgpus: usize,
    /// Framebuffer left on it (`ParentCapacity::free_framebuffer`).
    pub free_framebuffer: u64,
}

/// The parent `rule` picks among `candidates` (given in id order); `None`
/// when there is none.
pub fn choose<'a>(rule: Placement, candidates: &[Candidate<'a>]) -> Option<&'a str> {
    let best = match rule {
        Placement::Spread => candidates
            .iter()
            .min_by_key(|c| (c.vgpus, std::cmp::Reverse(c.free_framebuffer))),
        Placement::Pack => candidates
            .iter()
            .min_by_key(|c| (std::cmp::Reverse(c.vgpus), c.free_framebuffer)),
    };
    best.map(|c| c.parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn c(parent: &str, vgpus: usize, free_gib: u64) -> Candidate<'_> {
        Candidate {
            parent,
            vgpus,
            free_framebuffer: free_gib * GIB,
        }
    }

    /// Where `n` vGPUs of one size go, one after the other, on `parents`
    /// empty GPUs of `slots` each: the count per parent.
    fn fill(rule: Placement, parents: &[&str], slots: usize, n: usize) -> Vec<usize> {
        let mut on = vec![0; parents.len()];
        for _ in 0..n {
            let cands: Vec<Candidate> = parents
                .iter()
                .zip(&on)
                .filter(|(_, &k)| k < slots)
                .map(|(p, &k)| c(p, k, (slots - k) as u64))
                .collect();
            let Some(p) = choose(rule, &cands) else { break };
            let i = parents.iter().position(|x| *x == p).unwrap();
            on[i] += 1;
        }
        on
    }

    #[test]
    fn spread_takes_turns_and_pack_fills_one_gpu_first() {
        let gpus = ["0000:65:00.0", "0000:ca:00.0"];
        assert_eq!(fill(Placement::Spread, &gpus, 4, 3), [2, 1]);
        assert_eq!(fill(Placement::Pack, &gpus, 4, 3), [3, 0]);
        assert_eq!(fill(Placement::Pack, &gpus, 4, 5), [4, 1]);
        // Twice the per-GPU maximum: both full, whatever the rule; one
        // more finds no room.
        assert_eq!(fill(Placement::Spread, &gpus, 4, 9), [4, 4]);
        assert_eq!(fill(Placement::Pack, &gpus, 4, 9), [4, 4]);
        assert_eq!(choose(Placement::Spread, &[]), None);
        assert_eq!(choose(Placement::Pack, &[]), None);
    }

    #[test]
    fn ties_go_by_framebuffer_then_id_order() {
        // Same count: spread takes the one with more room, pack the one
        // with less.
        let cands = [c("a", 1, 10), c("b", 1, 30), c("c", 1, 20)];
        assert_eq!(choose(Placement::Spread, &cands), Some("b"));
        assert_eq!(choose(Placement::Pack, &cands), Some("a"));
        // Count first: spread takes the emptiest even with less room left.
        let cands = [c("a", 2, 60), c("b", 1, 10)];
        assert_eq!(choose(Placement::Spread, &cands), Some("b"));
        assert_eq!(choose(Placement::Pack, &cands), Some("a"));
        // All alike: the first in id order, for both rules.
        let cands = [c("a", 1, 8), c("b", 1, 8)];
        assert_eq!(choose(Placement::Spread, &cands), Some("a"));
        assert_eq!(choose(Placement::Pack, &cands), Some("a"));
    }
}
