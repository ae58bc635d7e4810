//! A supplier's buffer map as the scheduler keeps it: a bitmap of the
//! newest ids ([`Bitmap`]) or a range, per supplier and channel
//! ([`SupplierLane`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Words of 64 ids kept per bitmap buffer map: at most 1,024 ids, the
/// newest (at least 961 of them).
pub(super) const MAP_WORDS: u64 = 16;

/// A supplier's buffer map as a bitmap, the newest `MAP_WORDS` words of
/// 64 ids at most. Kept trimmed: the first and last words are non-zero
/// (or there are none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Bitmap {
    /// Bit `j` (least significant first) of `words[k]` set: it holds id
    /// `64 × (base + k) + j`.
    pub(super) base: u64,
    pub(super) words: VecDeque<u64>,
}

impl Bitmap {
    /// From the wire form (`Scheduler::set_map`). Reads at most the bytes
    /// describing the newest 1,024 ids (after skipping trailing zeros);
    /// ids past `u64::MAX` are ignored.
    pub(super) fn from_wire(first: u64, bits: &[u8]) -> Bitmap {
        let mut map = Bitmap::default();
        let Some(last) = bits.iter().rposition(|&b| b != 0) else {
            return map;
        };
        let from = last.saturating_sub((MAP_WORDS * 8) as usize);
        for (i, &b) in bits.iter().enumerate().take(last + 1).skip(from) {
            for j in (0..8).filter(|j| b >> j & 1 == 1) {
                let id = (i as u64)
                    .checked_mul(8)
                    .and_then(|o| first.checked_add(o + j));
                match id {
                    Some(id) => map.insert(id),
                    None => return map,
                }
            }
        }
        map
    }

    pub(super) fn contains(&self, id: u64) -> bool {
        let w = id / 64;
        w >= self.base
            && self
                .words
                .get((w - self.base) as usize)
                .is_some_and(|word| word >> (id % 64) & 1 == 1)
    }

    /// Sets `id`'s bit. Words older than the newest `MAP_WORDS` are
    /// dropped; an id older than those is ignored.
    pub(super) fn insert(&mut self, id: u64) {
        let w = id / 64;
        if self.words.is_empty() {
            self.base = w;
            self.words.push_back(0);
        } else if w < self.base {
            let newest = self.base + self.words.len() as u64 - 1;
            if newest - w >= MAP_WORDS {
                return;
            }
            while self.base > w {
                self.words.push_front(0);
                self.base -= 1;
            }
        } else {
            let end = self.base + self.words.len() as u64;
            if w >= end {
                let keep = (w + 1).saturating_sub(MAP_WORDS);
                if keep >= end {
                    self.words.clear();
                    self.base = w;
                } else {
                    let drop = (keep.max(self.base) - self.base) as usize;
                    self.words.drain(..drop);
                    self.base += drop as u64;
                }
                let end = self.base + self.words.len() as u64;
                self.words.extend((end..=w).map(|_| 0));
            }
        }
        self.words[(w - self.base) as usize] |= 1 << (id % 64);
        self.trim();
    }

    /// Clears `id`'s bit.
    pub(super) fn remove(&mut self, id: u64) {
        let w = id / 64;
        if w >= self.base {
            if let Some(word) = self.words.get_mut((w - self.base) as usize) {
                *word &= !(1 << (id % 64));
                self.trim();
            }
        }
    }

    pub(super) fn trim(&mut self) {
        while self.words.front() == Some(&0) {
            self.words.pop_front();
            self.base += 1;
        }
        while self.words.back() == Some(&0) {
            self.words.pop_back();
        }
    }

    /// The lowest and highest ids held.
    pub(super) fn hull(&self) -> Option<(u64, u64)> {
        let (&lo, &hi) = (self.words.front()?, self.words.back()?);
        let last_word = self.base + self.words.len() as u64 - 1;
        Some((
            64 * self.base + u64::from(lo.trailing_zeros()),
            64 * last_word + u64::from(63 - hi.leading_zeros()),
        ))
    }
}

/// One supplier on one channel.
#[derive(Clone, Debug, Default)]
pub(super) struct SupplierLane {
    /// Its buffer map as a range: it holds `first..=last`, with possible
    /// holes unless `map` says which. With a bitmap, its hull.
    pub(super) range: Option<(u64, u64)>,
    /// Its buffer map as a bitmap (`set_map`), exact; `None`: range only.
    pub(super) map: Option<Bitmap>,
    /// Range only: when its `last` grew, and to what, for the last
    /// `settle` (at most 16 entries); ids up to `settled` entered the
    /// range earlier.
    pub(super) grown: VecDeque<(Instant, u64)>,
    pub(super) settled: u64,
    /// Ids in flight to it.
    pub(super) inflight: usize,
    /// Smoothed response time (1/8 gain).
    pub(super) srtt: Option<Duration>,
}

impl SupplierLane {
    /// Takes a new buffer map, noting when its `last` grew.
    pub(super) fn update(&mut self, range: Option<(u64, u64)>, now: Instant, settle: Duration) {
        while let Some(&(t, last)) = self.grown.front() {
            if now.saturating_duration_since(t) < settle && self.grown.len() < 16 {
                break;
            }
            self.settled = self.settled.max(last);
            self.grown.pop_front();
        }
        match (self.range, range) {
            (Some((_, old)), Some((_, new))) if new > old => self.grown.push_back((now, new)),
            // First sight: what it holds already is taken as settled.
            (None, Some((_, new))) => self.settled = new,
            (_, None) => {
                self.grown.clear();
                self.settled = 0;
            }
            _ => {}
        }
        self.range = range;
    }

    /// Takes a bitmap buffer map (replacing the range and any bitmap).
    pub(super) fn set_map(&mut self, map: Bitmap) {
        self.range = map.hull();
        self.map = Some(map);
        self.grown.clear();
        self.settled = 0;
    }

    /// It holds `id` (it sent it): set in its bitmap, or its range
    /// extended to include it.
    pub(super) fn add(&mut self, id: u64, now: Instant, settle: Duration) {
        match &mut self.map {
            Some(map) => {
                map.insert(id);
                self.range = map.hull();
            }
            None => {
                let range = self
                    .range
                    .map_or((id, id), |(f, last)| (f.min(id), last.max(id)));
                self.update(Some(range), now, settle);
            }
        }
    }

    /// It said it lacks `id`: cleared from its bitmap (a range keeps it).
    pub(super) fn lacks(&mut self, id: u64) {
        if let Some(map) = &mut self.map {
            map.remove(id);
            self.range = map.hull();
        }
    }

    /// Whether its buffer map says it holds `id`.
    pub(super) fn holds(&self, id: u64) -> bool {
        match (&self.map, self.range) {
            (Some(map), _) => map.contains(id),
            (None, Some((first, last))) => (first..=last).contains(&id),
            (None, None) => false,
        }
    }

    /// Whether `id` is held for sure (set in its bitmap), or has been
    /// inside its range for `settle` (or is one of its ends).
    pub(super) fn settled(&self, id: u64, now: Instant, settle: Duration) -> bool {
        if let Some(map) = &self.map {
            return map.contains(id);
        }
        let Some((first, last)) = self.range else {
            return false;
        };
        if id == first || id == last || id <= self.settled {
            return true;
        }
        self.grown
            .iter()
            .find(|&&(_, l)| l >= id)
            .is_none_or(|&(t, _)| now.saturating_duration_since(t) >= settle)
    }
}
