//! A vGPU's runlist: the second scheduling level.
//!
//! The guest submits a runlist: an ordered list of channels, each with a timeslice.
//! While its vGPU holds the GPU, the runlist serves its channels round-robin in that
//! order: a channel keeps the GPU until its timeslice of measured GPU time is used (at
//! least one item per turn; an item is never cut), it runs out of work, or it blocks;
//! then the next runnable channel on the list takes over. A turn left unfinished when
//! the vGPU's parent-level slice ends resumes at the vGPU's next slice.
//!
//! Each channel is a FIFO: items run in the order they were submitted, never reordered.
//! A channel that is blocked (semaphore acquire), reset (fault), not on the runlist or
//! empty is simply skipped: it never holds up the other channels of its vGPU.

use std::collections::{BTreeMap, VecDeque};

use crate::accounting::Meter;
use crate::Nanos;

/// One channel's queue and state.
#[derive(Debug)]
pub struct ChannelQueue<T> {
    queue: VecDeque<(T, Nanos)>,
    blocked: bool,
    on_runlist: bool,
    /// Accounting for this channel.
    pub meter: Meter,
}

impl<T> Default for ChannelQueue<T> {
    fn default() -> Self {
        ChannelQueue {
            queue: VecDeque::new(),
            blocked: false,
            on_runlist: false,
            meter: Meter::default(),
        }
    }
}

impl<T> ChannelQueue<T> {
    fn runnable(&self) -> bool {
        self.on_runlist && !self.blocked && !self.queue.is_empty()
    }
    /// Items queued.
    pub fn depth(&self) -> usize {
        self.queue.len()
    }
    /// Whether the channel is marked blocked.
    pub fn blocked(&self) -> bool {
        self.blocked
    }
    /// Whether the channel is on the current runlist.
    pub fn on_runlist(&self) -> bool {
        self.on_runlist
    }
}

/// A vGPU's runlist and its channels.
#[derive(Debug)]
pub struct Runlist<T> {
    entries: Vec<(u32, Nanos)>,
    channels: BTreeMap<u32, ChannelQueue<T>>,
    /// Index into `entries` of the channel whose turn it is.
    cursor: usize,
    /// GPU time the cursor's channel used in its current turn.
    used_in_turn: Nanos,
    /// Number of distinct channels that are runnable.
    runnable: usize,
    queued: usize,
}

impl<T> Default for Runlist<T> {
    fn default() -> Self {
        Runlist {
            entries: Vec::new(),
            channels: BTreeMap::new(),
            cursor: 0,
            used_in_turn: 0,
            runnable: 0,
            queued: 0,
        }
    }
}

impl<T> Runlist<T> {
    /// Whether any channel on the runlist can run now.
    pub fn has_work(&self) -> bool {
        self.runnable > 0
    }

    /// Items queued on all channels (runnable or not).
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// All channels, by id.
    pub fn channels(&self) -> impl Iterator<Item = (u32, &ChannelQueue<T>)> {
        self.channels.iter().map(|(&c, ch)| (c, ch))
    }

    /// Mutable access to one channel's meter (for accounting).
    pub fn meter_mut(&mut self, channel: u32) -> Option<&mut Meter> {
        self.channels.get_mut(&channel).map(|c| &mut c.meter)
    }

    fn update<R>(&mut self, channel: u32, f: impl FnOnce(&mut ChannelQueue<T>) -> R) -> R {
        let ch = self.channels.entry(channel).or_default();
        let before = ch.runnable();
        let r = f(ch);
        let after = ch.runnable();
        match (before, after) {
            (false, true) => self.runnable += 1,
            (true, false) => self.runnable = self.runnable.saturating_sub(1),
            _ => {}
        }
        r
    }

    /// Replaces the runlist (guest runlist submit). Channels not on it keep their
    /// queues but do not run. The round robin restarts at the first entry.
    pub fn set(&mut self, entries: &[(u32, Nanos)]) {
        let on: std::collections::BTreeSet<u32> = entries.iter().map(|e| e.0).collect();
        let ids: Vec<u32> = self
            .channels
            .keys()
            .copied()
            .chain(on.iter().copied())
            .collect();
        for id in ids {
            let want = on.contains(&id);
            self.update(id, |c| c.on_runlist = want);
        }
        self.entries = entries.to_vec();
        self.cursor = 0;
        self.used_in_turn = 0;
    }

    /// Appends an item to a channel's FIFO.
    pub fn push(&mut self, channel: u32, item: T, now: Nanos) {
        self.queued += 1;
        self.update(channel, |c| c.queue.push_back((item, now)));
    }

    /// Marks a channel blocked or runnable again.
    pub fn set_blocked(&mut self, channel: u32, blocked: bool) {
        self.update(channel, |c| c.blocked = blocked);
    }

    /// Empties a channel (fault, channel reset) and returns its items in order.
    pub fn drain(&mut self, channel: u32) -> Vec<T> {
        if !self.channels.contains_key(&channel) {
            return Vec::new();
        }
        let items: Vec<T> = self.update(channel, |c| c.queue.drain(..).map(|(t, _)| t).collect());
        self.queued = self.queued.saturating_sub(items.len());
        items
    }

    /// Empties every channel.
    pub fn drain_all(&mut self) -> Vec<T> {
        let ids: Vec<u32> = self.channels.keys().copied().collect();
        ids.into_iter().flat_map(|c| self.drain(c)).collect()
    }

    /// Takes the next item by round robin: `(channel, item, submitted_at)`.
    /// Cost: O(1) while the current channel keeps its turn, else O(runlist length).
    pub fn take_next(&mut self) -> Option<(u32, T, Nanos)> {
        if self.runnable == 0 || self.entries.is_empty() {
            return None;
        }
        let n = self.entries.len();
        let mut i = self.cursor.min(n - 1);
        let mut used = if i == self.cursor {
            self.used_in_turn
        } else {
            0
        };
        for _ in 0..=n {
            let (ch, ts) = self.entries[i];
            let ok = self.channels.get(&ch).is_some_and(|c| c.runnable());
            if ok && (used == 0 || used < ts) {
                self.cursor = i;
                self.used_in_turn = used;
                // A runnable channel has an item; were it empty, `update` has now
                // counted it not runnable, and the caller sees no item from a runlist
                // that claimed work (the scheduler faults that vGPU alone).
                let (item, at) = self.update(ch, |c| c.queue.pop_front())?;
                self.queued = self.queued.saturating_sub(1);
                return Some((ch, item, at));
            }
            i = (i + 1) % n;
            used = 0;
        }
        None
    }

    /// Charges `gpu_time` to the turn of `channel` if it holds the turn.
    pub fn charge(&mut self, channel: u32, gpu_time: Nanos) {
        if self
            .entries
            .get(self.cursor)
            .is_some_and(|e| e.0 == channel)
        {
            self.used_in_turn += gpu_time;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rl: &mut Runlist<u32>, n: usize, len: Nanos) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        for _ in 0..n {
            let Some((ch, it, _)) = rl.take_next() else {
                break;
            };
            rl.charge(ch, len);
            out.push((ch, it));
        }
        out
    }

    #[test]
    fn round_robin_with_timeslices() {
        let mut rl = Runlist::default();
        rl.set(&[(1, 2), (2, 1)]);
        for i in 0..6 {
            rl.push(1, i, 0);
            rl.push(2, 100 + i, 0);
        }
        let got = run(&mut rl, 6, 1);
        assert_eq!(
            got,
            vec![(1, 0), (1, 1), (2, 100), (1, 2), (1, 3), (2, 101)]
        );
    }

    #[test]
    fn blocked_and_off_runlist_channels_are_skipped() {
        let mut rl = Runlist::default();
        rl.set(&[(1, 10), (2, 10)]);
        rl.push(1, 1, 0);
        rl.push(2, 2, 0);
        rl.push(3, 3, 0); // not on the runlist
        rl.set_blocked(1, true);
        assert_eq!(run(&mut rl, 5, 1), vec![(2, 2)]);
        assert!(!rl.has_work());
        rl.set_blocked(1, false);
        assert_eq!(run(&mut rl, 5, 1), vec![(1, 1)]);
        assert_eq!(rl.queued(), 1);
        rl.set(&[(3, 1)]);
        assert_eq!(run(&mut rl, 5, 1), vec![(3, 3)]);
    }

    #[test]
    fn drain_returns_fifo_order() {
        let mut rl = Runlist::default();
        rl.set(&[(7, 1)]);
        for i in 0..4 {
            rl.push(7, i, 0);
        }
        assert_eq!(rl.drain(7), vec![0, 1, 2, 3]);
        assert!(!rl.has_work());
        assert_eq!(rl.queued(), 0);
    }
}
