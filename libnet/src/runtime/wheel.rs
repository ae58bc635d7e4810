//! Hierarchical hashed timer wheel, sans-IO.
//!
//! Time is a `u64` count of ticks (milliseconds) since an origin chosen by the
//! caller; the wheel never reads a clock and only learns the time through
//! [`Wheel::poll`].
//!
//! Layout:
//! - 6 levels of 64 slots. A slot of level `k` spans `64^k` ticks, so level `k`
//!   covers `64^(k+1)` ticks and the whole wheel `2^36` ticks (about 795 days).
//! - A timer with deadline `d` sits at the level of the highest 6-bit digit in
//!   which `d` differs from the current time, in the slot named by that digit
//!   of `d`. Deadlines past the top level's range are clamped into the top
//!   level and looked at again when their slot comes round (see
//!   [`Wheel::location`]), so they still fire at their exact deadline.
//! - Timers live in a [`Slab`]; each slot is an intrusive doubly-linked list
//!   threaded through the slab by index, so insert and cancel are O(1).
//! - Each level has a `u64` occupancy bitmap: the next occupied slot is a
//!   rotate plus `trailing_zeros`.
//! - [`Wheel::poll`] jumps from one occupied slot boundary to the next, never
//!   tick by tick. Reaching a level-0 slot fires all its timers (they all share
//!   that exact deadline); reaching a higher-level slot cascades its timers
//!   down to lower levels (firing those whose deadline is that very tick).
//!   Cascaded timers not due by the poll's `now` are re-placed once, relative
//!   to `now`; clamped timers due within a huge jump are merged into the
//!   output through a small heap instead of riding the top level turn by turn.
//! - Timers inserted with a deadline that has already passed go to a separate
//!   "ready" list, drained (sorted by deadline) at the start of the next poll.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::mem;

use slab::Slab;

/// Number of levels.
const LEVELS: usize = 6;
/// log2 of the number of slots per level.
const SLOT_BITS: u32 = 6;
/// Number of slots per level.
const SLOTS: usize = 1 << SLOT_BITS;
/// Mask selecting a slot number out of a shifted time.
const SLOT_MASK: u64 = SLOTS as u64 - 1;
/// Index of the top level, into which far deadlines are clamped.
const TOP: usize = LEVELS - 1;
/// List index of the ready list (deadline already passed when inserted);
/// lists `0..READY` are the wheel slots, `level * SLOTS + slot`.
const READY: usize = LEVELS * SLOTS;
/// Total number of lists (all slots plus the ready list).
const LISTS: usize = READY + 1;
/// "No entry" marker for list links and list heads.
const NIL: usize = usize::MAX;

/// Identifies a pending timer; stale ids (fired or cancelled) are detected by a generation number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimerId {
    /// Key of the timer's entry in the wheel's slab.
    index: usize,
    /// Generation the entry was given at insertion; unique per wheel, so a
    /// reused slab key never matches an old id.
    generation: u64,
}

/// One pending timer, stored in the slab and linked into exactly one list.
struct Entry<T> {
    /// Tick at which the timer fires.
    deadline: u64,
    /// Generation handed out in this timer's [`TimerId`].
    generation: u64,
    /// Previous entry in the same list, or [`NIL`] if this is the head.
    prev: usize,
    /// Next entry in the same list, or [`NIL`] if this is the last.
    next: usize,
    /// Which list the entry is linked into (`level * SLOTS + slot`, or [`READY`]).
    list: u16,
    /// The caller's payload.
    value: T,
}

/// A hierarchical hashed timer wheel holding values of type `T`.
pub(crate) struct Wheel<T> {
    /// Storage for every pending timer.
    entries: Slab<Entry<T>>,
    /// Head of each list (the 384 slots, then the ready list), or [`NIL`].
    heads: [usize; LISTS],
    /// Per level, bit `s` is set iff slot `s` of that level is non-empty.
    occupied: [u64; LEVELS],
    /// Current time: every timer with a deadline `<= elapsed` is either fired
    /// or on the ready list; every timer in a slot has a deadline `> elapsed`.
    elapsed: u64,
    /// Generation for the next inserted timer (strictly increasing).
    next_generation: u64,
    /// A lower bound on the deadlines in the ready list (meaningful only while
    /// it is non-empty; may be stale-low after a cancel, which is allowed).
    ready_min: u64,
    /// Scratch buffer for sorting the ready list by deadline (kept to avoid
    /// reallocating on every poll).
    sort_buf: Vec<(u64, usize)>,
    /// Scratch buffer of entries met while cascading whose deadline is past the
    /// poll's `now`; they are re-placed once the wheel has reached `now`.
    deferred: Vec<usize>,
    /// Entries met while cascading that are due during the current poll but
    /// still beyond the top level's reach: a min-heap of `(deadline, key)`,
    /// merged into the output in deadline order. Always empty between polls.
    far_due: BinaryHeap<Reverse<(u64, usize)>>,
}

impl<T> Wheel<T> {
    /// An empty wheel whose current time is `now` ticks.
    pub(crate) fn new(now: u64) -> Self {
        Wheel {
            entries: Slab::new(),
            heads: [NIL; LISTS],
            occupied: [0; LEVELS],
            elapsed: now,
            next_generation: 0,
            ready_min: u64::MAX,
            sort_buf: Vec::new(),
            deferred: Vec::new(),
            far_due: BinaryHeap::new(),
        }
    }

    /// Schedules `value` to fire at tick `deadline` (a deadline <= the wheel's current time fires on the next `poll`).
    pub(crate) fn insert(&mut self, deadline: u64, value: T) -> TimerId {
        let generation = self.next_generation;
        self.next_generation += 1;
        let index = self.entries.insert(Entry {
            deadline,
            generation,
            prev: NIL,
            next: NIL,
            list: 0,
            value,
        });
        let list = if deadline <= self.elapsed {
            if self.heads[READY] == NIL || deadline < self.ready_min {
                self.ready_min = deadline;
            }
            READY
        } else {
            self.location(deadline)
        };
        self.link(index, list);
        TimerId { index, generation }
    }

    /// Removes a pending timer and returns its value; None if it already fired or was cancelled (never touches another timer that reuses the slot).
    pub(crate) fn cancel(&mut self, id: TimerId) -> Option<T> {
        let entry = self.entries.get(id.index)?;
        if entry.generation != id.generation {
            return None;
        }
        self.unlink(id.index);
        Some(self.entries.remove(id.index).value)
    }

    /// The earliest tick at which `poll` could return something: never later than the true earliest deadline (it may be earlier, e.g. a higher-level slot boundary where entries must cascade). None when empty.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        if self.heads[READY] != NIL {
            return Some(self.ready_min);
        }
        self.next_event().map(|(time, _)| time)
    }

    /// Advances the wheel to `now` (monotonic; a smaller `now` than before is treated as the current time) and appends every timer whose deadline <= now to `out`, in non-decreasing deadline order.
    pub(crate) fn poll(&mut self, now: u64, out: &mut Vec<T>) {
        let now = now.max(self.elapsed);
        // Everything on the ready list is due no later than `elapsed`, i.e.
        // before anything still in a slot.
        self.drain_ready(out);
        // Visit occupied slot boundaries in time order, up to `now`.
        while let Some((time, list)) = self.next_event() {
            if time > now {
                break;
            }
            self.fire_far_due(time, out);
            self.elapsed = time;
            let mut index = self.take_list(list);
            while index != NIL {
                let entry = &self.entries[index];
                let next = entry.next;
                let deadline = entry.deadline;
                if deadline <= time {
                    // Every entry of a slot has a deadline >= the slot's
                    // start, so this one is due exactly now.
                    out.push(self.entries.remove(index).value);
                } else if deadline > now {
                    // Will not fire during this poll: place it once, relative
                    // to `now`, instead of cascading it step by step (this is
                    // what keeps huge jumps cheap for clamped far deadlines).
                    self.deferred.push(index);
                } else if self.beyond_top(deadline) {
                    // Due during this poll but more than a top-level turn
                    // away: cascading it would take one step per turn (2^36
                    // ticks), so keep it aside and merge it in by deadline.
                    self.far_due.push(Reverse((deadline, index)));
                } else {
                    let target = self.location(deadline);
                    self.link(index, target);
                }
                index = next;
            }
        }
        self.fire_far_due(now, out);
        self.elapsed = now;
        let mut deferred = mem::take(&mut self.deferred);
        for index in deferred.drain(..) {
            let target = self.location(self.entries[index].deadline);
            self.link(index, target);
        }
        self.deferred = deferred;
    }

    /// Number of pending timers.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no timer is pending.
    // Part of the collection API; the event loop itself only needs `len`.
    #[allow(dead_code)]
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The list (`level * SLOTS + slot`) a timer due at `deadline` belongs in,
    /// relative to the current time. Requires `deadline > self.elapsed`.
    ///
    /// The level is that of the highest 6-bit digit where `deadline` and
    /// `elapsed` differ; below the top level the slot is that digit of
    /// `deadline`, which is always past the current slot of that level.
    ///
    /// The top level is used as a ring: its slot `s` stands for the first
    /// `2^30`-aligned tick after the current top-level slot's start whose
    /// top digit is `s` (see [`Wheel::next_event`]). A deadline that falls
    /// before the ring's last boundary goes in the slot of its own top digit
    /// (whose boundary is then <= the deadline). A deadline further out is
    /// clamped into the current top-level slot, whose boundary is one full
    /// turn away: when that boundary is reached the timer is placed again,
    /// so it never fires early.
    fn location(&self, deadline: u64) -> usize {
        debug_assert!(deadline > self.elapsed);
        let diff = (self.elapsed ^ deadline) | SLOT_MASK;
        let level = ((63 - diff.leading_zeros()) / SLOT_BITS) as usize;
        if level < TOP {
            let slot = (deadline >> shift(level)) & SLOT_MASK;
            return level * SLOTS + slot as usize;
        }
        let slot = if self.beyond_top(deadline) {
            (self.elapsed >> shift(TOP)) & SLOT_MASK
        } else {
            (deadline >> shift(TOP)) & SLOT_MASK
        };
        TOP * SLOTS + slot as usize
    }

    /// True if `deadline` (`> elapsed`) is at or past the last top-level slot
    /// boundary the ring can express: the start of the current top-level slot
    /// plus one full turn (`2^36` ticks). Such timers are clamped.
    fn beyond_top(&self, deadline: u64) -> bool {
        let slot_start = self.elapsed & !((1u64 << shift(TOP)) - 1);
        deadline - slot_start >= 1u64 << shift(LEVELS)
    }

    /// Fires, in deadline order, the set-aside entries due at or before `time`.
    fn fire_far_due(&mut self, time: u64, out: &mut Vec<T>) {
        while let Some(&Reverse((deadline, index))) = self.far_due.peek() {
            if deadline > time {
                break;
            }
            self.far_due.pop();
            out.push(self.entries.remove(index).value);
        }
    }

    /// The next occupied slot boundary after `elapsed`: `(tick, list)`.
    ///
    /// Only the lowest non-empty level needs looking at: occupied slots of
    /// levels below the top are always after the current slot of their level
    /// (never wrapping), so any of them comes before any slot of a higher
    /// level. Slots are searched in ring order starting just after the
    /// current one, which gives the top level its wrap-around.
    fn next_event(&self) -> Option<(u64, usize)> {
        let level = self.occupied.iter().position(|&bits| bits != 0)?;
        let shift = shift(level);
        let current = ((self.elapsed >> shift) & SLOT_MASK) as u32;
        let start = (current + 1) % SLOTS as u32;
        let offset = self.occupied[level].rotate_right(start).trailing_zeros();
        let slot = (start + offset) as usize % SLOTS;
        let slot_start = self.elapsed & !((1u64 << shift) - 1);
        let time = slot_start + ((u64::from(offset) + 1) << shift);
        Some((time, level * SLOTS + slot))
    }

    /// Pushes entry `index` at the front of `list`, marking the slot occupied.
    fn link(&mut self, index: usize, list: usize) {
        let head = self.heads[list];
        let entry = &mut self.entries[index];
        entry.prev = NIL;
        entry.next = head;
        entry.list = list as u16;
        if head != NIL {
            self.entries[head].prev = index;
        }
        self.heads[list] = index;
        if list < READY {
            self.occupied[list / SLOTS] |= 1 << (list % SLOTS);
        }
    }

    /// Unlinks entry `index` from its list, clearing the occupancy bit if the
    /// list becomes empty. The entry stays in the slab.
    fn unlink(&mut self, index: usize) {
        let entry = &self.entries[index];
        let (prev, next, list) = (entry.prev, entry.next, usize::from(entry.list));
        if prev != NIL {
            self.entries[prev].next = next;
        } else {
            self.heads[list] = next;
            if next == NIL && list < READY {
                self.occupied[list / SLOTS] &= !(1 << (list % SLOTS));
            }
        }
        if next != NIL {
            self.entries[next].prev = prev;
        }
    }

    /// Detaches a whole wheel slot list and returns its head; the entries keep
    /// their `next` links so the caller can walk them.
    fn take_list(&mut self, list: usize) -> usize {
        debug_assert!(list < READY);
        self.occupied[list / SLOTS] &= !(1 << (list % SLOTS));
        mem::replace(&mut self.heads[list], NIL)
    }

    /// Fires every entry of the ready list, in deadline order.
    fn drain_ready(&mut self, out: &mut Vec<T>) {
        let mut index = mem::replace(&mut self.heads[READY], NIL);
        if index == NIL {
            return;
        }
        let mut buf = mem::take(&mut self.sort_buf);
        while index != NIL {
            let entry = &self.entries[index];
            buf.push((entry.deadline, index));
            index = entry.next;
        }
        buf.sort_unstable();
        out.extend(
            buf.drain(..)
                .map(|(_, index)| self.entries.remove(index).value),
        );
        self.sort_buf = buf;
    }
}

/// Bit shift turning a tick into a slot number of `level` (before masking).
const fn shift(level: usize) -> u32 {
    level as u32 * SLOT_BITS
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// Polls `wheel` at `now` and returns what fired.
    fn poll<T>(wheel: &mut Wheel<T>, now: u64) -> Vec<T> {
        let mut out = Vec::new();
        wheel.poll(now, &mut out);
        out
    }

    /// Tiny deterministic generator for the non-proptest stress tests.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 11
        }
    }

    #[test]
    fn empty_wheel() {
        let mut w: Wheel<u32> = Wheel::new(7);
        assert!(w.is_empty());
        assert_eq!(w.len(), 0);
        assert_eq!(w.next_deadline(), None);
        assert!(poll(&mut w, 1_000_000).is_empty());
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn insert_and_poll_in_order() {
        let mut w = Wheel::new(0);
        w.insert(10, "b");
        w.insert(5, "a");
        w.insert(70, "c");
        w.insert(10, "b2");
        assert_eq!(w.len(), 4);
        assert!(!w.is_empty());
        assert!(poll(&mut w, 4).is_empty());
        assert_eq!(poll(&mut w, 5), vec!["a"]);
        let mut fired = poll(&mut w, 69);
        fired.sort();
        assert_eq!(fired, vec!["b", "b2"]);
        assert_eq!(w.len(), 1);
        assert!(poll(&mut w, 69).is_empty());
        assert_eq!(poll(&mut w, 70), vec!["c"]);
        assert!(w.is_empty());
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn single_poll_returns_sorted_across_levels() {
        let mut w = Wheel::new(3);
        let deadlines = [
            5_000_000u64,
            4,
            64,
            63,
            4096,
            4095,
            1 << 30,
            (1 << 36) + 5,
            1 << 40,
            3,
            0,
            262_143,
            262_144,
        ];
        for &d in &deadlines {
            w.insert(d, d);
        }
        let fired = poll(&mut w, u64::MAX);
        let mut expected = deadlines.to_vec();
        expected.sort();
        assert_eq!(fired, expected);
        assert!(w.is_empty());
    }

    #[test]
    fn past_and_present_deadlines_fire_on_next_poll() {
        let mut w = Wheel::new(100);
        w.insert(100, 100);
        w.insert(50, 50);
        w.insert(0, 0);
        w.insert(101, 101);
        assert_eq!(w.next_deadline(), Some(0));
        // A smaller `now` is treated as the current time.
        assert_eq!(poll(&mut w, 10), vec![0, 50, 100]);
        assert_eq!(w.next_deadline(), Some(101));
        assert!(poll(&mut w, 100).is_empty());
        assert_eq!(poll(&mut w, 101), vec![101]);
    }

    #[test]
    fn time_never_goes_backwards() {
        let mut w = Wheel::new(0);
        assert!(poll(&mut w, 1000).is_empty());
        // Inserting "at 500" after reaching 1000 means it is already due.
        w.insert(500, 'x');
        w.insert(1001, 'y');
        assert_eq!(poll(&mut w, 200), vec!['x']);
        assert!(poll(&mut w, 900).is_empty());
        assert_eq!(poll(&mut w, 1001), vec!['y']);
    }

    #[test]
    fn cancel_returns_value_once() {
        let mut w = Wheel::new(0);
        let a = w.insert(10, 'a');
        let b = w.insert(10, 'b');
        let c = w.insert(1 << 20, 'c');
        assert_eq!(w.cancel(b), Some('b'));
        assert_eq!(w.cancel(b), None);
        assert_eq!(w.cancel(c), Some('c'));
        assert_eq!(w.len(), 1);
        assert_eq!(poll(&mut w, 1 << 21), vec!['a']);
        assert_eq!(w.cancel(a), None, "fired timer cannot be cancelled");
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn cancel_every_position_in_a_slot_list() {
        // Head, middle and tail removal from one slot's list.
        for victim in 0..3 {
            let mut w = Wheel::new(0);
            let ids: Vec<_> = (0..3).map(|i| w.insert(40, i)).collect();
            assert_eq!(w.cancel(ids[victim]), Some(victim));
            let mut fired = poll(&mut w, 40);
            fired.sort();
            let expected: Vec<_> = (0..3).filter(|&i| i != victim).collect();
            assert_eq!(fired, expected);
        }
        // Cancelling everything leaves the wheel empty with no deadline.
        let mut w = Wheel::new(0);
        let ids: Vec<_> = (0..3).map(|i| w.insert(40 + i, i)).collect();
        for id in ids {
            assert!(w.cancel(id).is_some());
        }
        assert_eq!(w.next_deadline(), None);
        assert!(poll(&mut w, 1000).is_empty());
    }

    #[test]
    fn cancel_from_ready_list() {
        let mut w = Wheel::new(100);
        let a = w.insert(10, 'a');
        w.insert(20, 'b');
        assert_eq!(w.cancel(a), Some('a'));
        let nd = w.next_deadline().unwrap();
        assert!(nd <= 20);
        assert_eq!(poll(&mut w, 100), vec!['b']);
    }

    #[test]
    fn stale_id_after_cancel_and_slot_reuse() {
        let mut w = Wheel::new(0);
        let old = w.insert(10, "old");
        assert_eq!(w.cancel(old), Some("old"));
        let new = w.insert(20, "new");
        assert_eq!(new.index, old.index, "slab slot is reused");
        assert_ne!(new, old);
        assert_eq!(w.cancel(old), None);
        assert_eq!(w.len(), 1);
        assert_eq!(poll(&mut w, 20), vec!["new"]);
    }

    #[test]
    fn stale_id_after_fire_and_slot_reuse() {
        let mut w = Wheel::new(0);
        let old = w.insert(5, 1);
        assert_eq!(poll(&mut w, 5), vec![1]);
        let new = w.insert(6, 2);
        assert_eq!(new.index, old.index);
        assert_eq!(w.cancel(old), None);
        assert_eq!(w.cancel(new), Some(2));
        assert!(w.is_empty());
    }

    #[test]
    fn far_future_deadlines_fire_exactly() {
        let start = 123_456_789;
        let mut w = Wheel::new(start);
        let far = [
            start + (1 << 36) - 1,
            start + (1 << 36),
            start + (1 << 36) + 1,
            start + (1 << 40) + 17,
            1 << 50,
            u64::MAX - 1,
            u64::MAX,
        ];
        for &d in &far {
            w.insert(d, d);
            assert!(w.next_deadline().unwrap() <= d);
        }
        for &d in &far {
            assert!(w.next_deadline().unwrap() <= d);
            assert!(poll(&mut w, d - 1).is_empty(), "fired before {d}");
            assert!(w.next_deadline().unwrap() <= d);
            assert_eq!(poll(&mut w, d), vec![d]);
        }
        assert!(w.is_empty());
    }

    #[test]
    fn clamped_deadline_survives_many_small_steps() {
        // Step through several top-level turns in chunks smaller than a turn.
        let mut w = Wheel::new(0);
        let d = (1u64 << 38) + 12_345;
        w.insert(d, ());
        let step = (1u64 << 33) + 777;
        let mut now = 0;
        while now + step < d {
            now += step;
            assert!(poll(&mut w, now).is_empty());
            assert!(w.next_deadline().unwrap() <= d);
        }
        assert!(poll(&mut w, d - 1).is_empty());
        assert_eq!(poll(&mut w, d).len(), 1);
    }

    #[test]
    fn big_jumps() {
        let mut rng = Lcg(42);
        let mut w = Wheel::new(1000);
        let mut deadlines = Vec::new();
        for _ in 0..5000 {
            let d = 1000 + rng.next() % (1 << (rng.next() % 50));
            deadlines.push(d);
            w.insert(d, d);
        }
        deadlines.sort();
        let split = 1u64 << 30;
        let fired = poll(&mut w, split);
        let due = deadlines.partition_point(|&d| d <= split);
        assert_eq!(fired, deadlines[..due]);
        // One jump to the end of time fires the rest, sorted.
        let fired = poll(&mut w, u64::MAX);
        assert_eq!(fired, deadlines[due..]);
        assert!(w.is_empty());
    }

    #[test]
    fn huge_jump_is_cheap_with_clamped_timers() {
        // Without re-placing relative to `now`, each clamped timer would be
        // cascaded once per 2^36 ticks: about 2^27 times for this jump.
        let mut w = Wheel::new(0);
        for i in 0..1000u64 {
            w.insert(u64::MAX - i, i);
        }
        assert!(poll(&mut w, 1 << 63).is_empty());
        assert!(poll(&mut w, u64::MAX - 1000).is_empty());
        assert_eq!(poll(&mut w, u64::MAX).len(), 1000);

        // Clamped timers due inside one huge jump, interleaved with near
        // ones, come out in order without turning the top level 2^27 times.
        let mut w = Wheel::new(0);
        let ds = [1u64 << 62, (1 << 62) + 1, 1 << 61, 1 << 40, 5, 1 << 63];
        for &d in &ds {
            w.insert(d, d);
        }
        assert_eq!(poll(&mut w, 1 << 62), vec![5, 1 << 40, 1 << 61, 1 << 62]);
        assert_eq!(poll(&mut w, u64::MAX), vec![(1 << 62) + 1, 1 << 63]);
    }

    #[test]
    fn set_aside_far_timers_merge_in_deadline_order() {
        let mut w = Wheel::new(0);
        // Clamped into top slot 0, first looked at 2^36: still beyond the
        // top level then, so set aside during the big poll below.
        let a = (1u64 << 37) + 5;
        w.insert(a, a);
        assert!(poll(&mut w, 1 << 30).is_empty());
        // Clamped into top slot 1, looked at 2^36 + 2^30: by then within
        // reach, so cascaded normally; one fires before `a`, one after.
        let before = (1u64 << 37) + 1;
        let after = (1u64 << 37) + (1 << 30) - 1;
        w.insert(after, after);
        w.insert(before, before);
        assert_eq!(poll(&mut w, 1 << 38), vec![before, a, after]);
        assert!(w.is_empty());
    }

    #[test]
    fn driving_by_next_deadline_fires_each_timer_exactly_on_time() {
        let mut rng = Lcg(7);
        let start = 5_000;
        let mut w = Wheel::new(start);
        let mut pending = BTreeMap::new();
        for seq in 0..3000u64 {
            let d = start + 1 + rng.next() % (1 << (rng.next() % 42));
            pending.insert((d, seq), ());
            w.insert(d, (d, seq));
        }
        let mut wakeups = 0;
        while let Some(next) = w.next_deadline() {
            let true_min = pending.keys().next().unwrap().0;
            assert!(
                next <= true_min,
                "next_deadline {next} > real minimum {true_min}"
            );
            wakeups += 1;
            for (d, seq) in poll(&mut w, next) {
                assert_eq!(d, next, "timer fired late or early");
                pending.remove(&(d, seq)).unwrap();
            }
        }
        assert!(pending.is_empty());
        // Each timer causes at most one wake-up per level it cascades through.
        assert!(wakeups <= 3000 * LEVELS, "{wakeups} wake-ups");
    }

    #[test]
    fn level_boundaries_from_unaligned_start() {
        for start in [0u64, 1, 63, 64, 4095, 4097, (1 << 30) - 1, (1 << 36) - 3] {
            let mut w = Wheel::new(start);
            let mut ds = Vec::new();
            for k in 0..=7u32 {
                let span = 1u64 << (6 * k);
                for delta in [span - 1, span, span + 1] {
                    if delta > 0 {
                        ds.push(start + delta);
                    }
                }
            }
            for &d in &ds {
                w.insert(d, d);
            }
            ds.sort();
            for &d in &ds {
                assert!(w.next_deadline().unwrap() <= d);
                let early = poll(&mut w, d - 1);
                assert!(early.iter().all(|&e| e < d), "early fire: {early:?}");
                let fired = poll(&mut w, d);
                assert!(fired.iter().all(|&e| e == d));
            }
            assert!(w.is_empty(), "start {start}");
        }
    }

    /// One step of the model-based property test.
    #[derive(Clone, Debug)]
    enum Op {
        /// Insert with a deadline `now + offset` (saturating).
        InsertAfter(u64),
        /// Insert with a deadline `now - back` (saturating): already due.
        InsertBefore(u64),
        /// Insert with an absolute deadline.
        InsertAt(u64),
        /// Cancel the id issued by the insert numbered `pick % inserts`.
        Cancel(usize),
        /// Poll at `now + step` (saturating).
        Advance(u64),
        /// Poll at an absolute time (possibly in the past).
        PollAt(u64),
        /// Poll exactly at `next_deadline()` (if any).
        PollNext,
    }

    /// Offsets spread over every level and beyond.
    fn offset() -> impl Strategy<Value = u64> {
        prop_oneof![
            0u64..130,
            0u64..5000,
            0u64..(1 << 20),
            0u64..(1 << 37),
            0u64..(1 << 45),
            (0u32..64).prop_map(|b| 1u64 << b),
            (30u32..40, 0u64..8, -3i64..=3).prop_map(|(b, m, d)| (m << b).saturating_add_signed(d)),
            any::<u64>(),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => offset().prop_map(Op::InsertAfter),
            1 => (0u64..200).prop_map(Op::InsertBefore),
            1 => prop_oneof![any::<u64>(), Just(u64::MAX), Just(0)].prop_map(Op::InsertAt),
            3 => any::<usize>().prop_map(Op::Cancel),
            4 => offset().prop_map(Op::Advance),
            1 => any::<u64>().prop_map(Op::PollAt),
            2 => Just(Op::PollNext),
        ]
    }

    /// Reference model: pending timers keyed by (deadline, seq).
    struct Model {
        now: u64,
        pending: BTreeMap<(u64, u64), ()>,
    }

    fn check_poll(
        wheel: &mut Wheel<(u64, u64)>,
        model: &mut Model,
        now: u64,
    ) -> Result<(), TestCaseError> {
        model.now = model.now.max(now);
        let fired = poll(wheel, now);
        let mut expected = Vec::new();
        while let Some((&key, _)) = model.pending.first_key_value() {
            if key.0 > model.now {
                break;
            }
            model.pending.remove(&key);
            expected.push(key);
        }
        prop_assert!(
            fired.windows(2).all(|p| p[0].0 <= p[1].0),
            "not in deadline order: {:?}",
            fired
        );
        let mut sorted = fired.clone();
        sorted.sort();
        prop_assert_eq!(sorted, expected, "poll({}) fired the wrong set", now);
        Ok(())
    }

    fn run_ops(start: u64, ops: Vec<Op>) -> Result<(), TestCaseError> {
        let mut wheel = Wheel::new(start);
        let mut model = Model {
            now: start,
            pending: BTreeMap::new(),
        };
        let mut ids: Vec<(TimerId, (u64, u64))> = Vec::new();
        for op in ops {
            let insert_at = match op {
                Op::InsertAfter(off) => Some(model.now.saturating_add(off)),
                Op::InsertBefore(back) => Some(model.now.saturating_sub(back)),
                Op::InsertAt(d) => Some(d),
                _ => None,
            };
            if let Some(deadline) = insert_at {
                let seq = ids.len() as u64;
                let id = wheel.insert(deadline, (deadline, seq));
                model.pending.insert((deadline, seq), ());
                ids.push((id, (deadline, seq)));
            }
            match op {
                Op::Cancel(pick) if !ids.is_empty() => {
                    let (id, key) = ids[pick % ids.len()];
                    let expected = model.pending.remove(&key).map(|()| key);
                    prop_assert_eq!(wheel.cancel(id), expected);
                }
                Op::Advance(step) => {
                    let now = model.now.saturating_add(step);
                    check_poll(&mut wheel, &mut model, now)?;
                }
                Op::PollAt(now) => check_poll(&mut wheel, &mut model, now)?,
                Op::PollNext => {
                    if let Some(next) = wheel.next_deadline() {
                        check_poll(&mut wheel, &mut model, next)?;
                    }
                }
                _ => {}
            }
            prop_assert_eq!(wheel.len(), model.pending.len());
            prop_assert_eq!(wheel.is_empty(), model.pending.is_empty());
            match model.pending.keys().next() {
                None => prop_assert_eq!(wheel.next_deadline(), None),
                Some(&(min, _)) => {
                    let next = wheel.next_deadline();
                    prop_assert!(next.is_some());
                    prop_assert!(next.unwrap() <= min, "next {:?} > min {}", next, min);
                }
            }
        }
        // Drain everything: it must all come out at the end of time, in order.
        check_poll(&mut wheel, &mut model, u64::MAX)?;
        prop_assert!(wheel.is_empty());
        for (id, _) in ids {
            prop_assert_eq!(wheel.cancel(id), None);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn matches_model(
            start in prop_oneof![0u64..1000, any::<u64>().prop_map(|x| x >> 8), Just(u64::MAX - 5000)],
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            run_ops(start, ops)?;
        }
    }
}
