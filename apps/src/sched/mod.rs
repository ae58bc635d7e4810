//! The swarm scheduler: which supplier (the edge or a peer) each fragment is
//! fetched from, and when. `docs/swarm.md` explains the policy and gives the
//! simulation's figures.
//!
//! Sans-IO and deterministic: no sockets, no clock (every time-dependent call
//! takes `now`), randomness from the seed given to [`Scheduler::new`]. The
//! driver (the client's loop) owns the connections and feeds the scheduler:
//!
//! - **setup**: [`Scheduler::add_supplier`] / [`Scheduler::remove_supplier`]
//!   as connections come and go; [`Scheduler::set_playhead`] and
//!   [`Scheduler::set_clock`] per channel once the start is known (nothing is
//!   wanted on a channel before its playhead is set);
//! - **inputs**: [`Scheduler::set_map`] (each supplier's buffer map as a
//!   bitmap, polled) or [`Scheduler::set_range`] (a range, for suppliers
//!   that only give one), [`Scheduler::on_fragment`], [`Scheduler::on_missing`],
//!   [`Scheduler::on_failed`], and `set_playhead` as the player consumes;
//! - **outputs**: [`Scheduler::poll`] after every batch of inputs and at
//!   [`Scheduler::next_wakeup`]; it returns the fetches to send and the
//!   cancels to tell suppliers.
//!
//! Getters: [`Scheduler::have`], [`Scheduler::stats`],
//! [`Scheduler::supplier_stats`].
//!
//! The policy in brief: wanted ids run from the playhead to the newest id
//! advertised, within a window. Urgent ones (deadline within `edge_margin`)
//! go to a peer only if it is quick enough, else to the edge. The others go
//! to the least loaded, fastest peer holding them, rarest first. Ids no
//! peer holds yet are fetched from the edge at once by a seeded fraction of
//! the viewers; the rest wait for peers. Slow suppliers are avoided for a
//! backoff, and ids passed by the playhead are cancelled.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use libnet::p2p::Channel;

/// How the driver names a supplier (a connection to the edge or a peer).
pub type SupplierId = u64;

/// Every channel, indexed by its wire code.
const CHANNELS: [Channel; 3] = [Channel::Meta, Channel::Video, Channel::Audio];

/// Deadlines further than this from their anchor are capped (ids far ahead
/// are not wanted anyway).
const FAR: Duration = Duration::from_secs(24 * 3600);

/// Words of 64 ids kept per bitmap buffer map: at most 1,024 ids, the
/// newest (at least 961 of them).
const MAP_WORDS: u64 = 16;

/// Tuning. [`Config::default`] gives the values the simulation was run with.
#[derive(Clone, Debug)]
pub struct Config {
    /// Ids requested and not answered, per supplier and channel. Default 16.
    pub max_inflight: usize,
    /// Ids per `Fetch` action. Default 8.
    pub max_ids_per_request: usize,
    /// Longest wait for an id before it is taken back and asked elsewhere.
    /// Default 1 s. An id is given `clamp(max(slack / 2, 2 × expected
    /// response), min_timeout, request_timeout)`; from a peer, at most
    /// `slack - edge_margin / 2` (time left for the edge), and exactly
    /// `slack / 2` when urgent.
    pub request_timeout: Duration,
    /// Shortest wait for an id. Default 250 ms.
    pub min_timeout: Duration,
    /// An id whose deadline is closer than this is urgent: fetched from the
    /// edge unless a peer is sure to be quick enough. Default 600 ms.
    pub edge_margin: Duration,
    /// How many viewers should fetch a fresh fragment (one no peer has yet)
    /// from the edge at once: each does with probability
    /// `min(1, seed_fraction / (peers + 1))`, decided once per id; the
    /// others wait for peers to get it. Default 1.5.
    pub seed_fraction: f64,
    /// Ids ahead of the playhead considered, per channel. Default 64.
    pub window: usize,
    /// How long a supplier that timed out or failed is avoided; doubled for
    /// each further failure in a row, up to 8 times. Default 2 s.
    pub backoff: Duration,
    /// Expected response time of a supplier not measured yet. Default 300 ms.
    pub initial_response: Duration,
    /// How long a supplier's "missing" for an id keeps it from being asked
    /// for that id again. Default 500 ms (two buffer-map polls).
    pub missing_hold: Duration,
    /// How long an id must have been inside a peer's advertised range
    /// before it is asked for ahead of time (its first and last ids
    /// excepted): a peer's newest ids often have holes it is still filling,
    /// which a range cannot show. Urgent ids ignore this, and so do
    /// suppliers with a bitmap (`set_map`): a set bit is held for sure.
    /// Default 250 ms (one buffer-map poll).
    pub settle: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_inflight: 16,
            max_ids_per_request: 8,
            request_timeout: Duration::from_secs(1),
            min_timeout: Duration::from_millis(250),
            edge_margin: Duration::from_millis(600),
            seed_fraction: 1.5,
            window: 64,
            backoff: Duration::from_secs(2),
            initial_response: Duration::from_millis(300),
            missing_hold: Duration::from_millis(500),
            settle: Duration::from_millis(250),
        }
    }
}

/// What the driver should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send a fragment request for `ids` (ascending within a priority) to
    /// `supplier`; report each answer through `on_fragment` / `on_missing`,
    /// or `on_failed`.
    Fetch {
        /// Who to ask.
        supplier: SupplierId,
        /// On which channel.
        ch: Channel,
        /// At most `max_ids_per_request` ids.
        ids: Vec<u64>,
        /// 0 is the most urgent; `min(255, slack_ms / 100)` otherwise.
        priority: u8,
    },
    /// Tell `supplier` not to send `ids` any more (passed by the playhead,
    /// timed out, or received from someone else).
    Cancel {
        /// Who was asked.
        supplier: SupplierId,
        /// On which channel.
        ch: Channel,
        /// The ids to drop.
        ids: Vec<u64>,
    },
}

/// Counters over the scheduler's life.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchedStats {
    /// Fragment bytes received from edges (first arrivals and duplicates).
    pub bytes_edge: u64,
    /// Fragment bytes received from peers (and suppliers no longer known).
    pub bytes_peers: u64,
    /// Fragments received from edges.
    pub fragments_edge: u64,
    /// Fragments received from peers.
    pub fragments_peers: u64,
    /// Fragments received that were held already.
    pub duplicates: u64,
    /// `Fetch` actions returned.
    pub requests: u64,
    /// Ids in them.
    pub ids_requested: u64,
    /// Ids the scheduler took back because their time ran out.
    pub timeouts: u64,
    /// Ids the driver reported failed (`on_failed`).
    pub failures: u64,
    /// "Missing" answers.
    pub missing: u64,
    /// Ids asked from another supplier than the one asked before.
    pub switches: u64,
    /// Fragments that arrived after their deadline (or behind the playhead).
    pub late: u64,
    /// Ids named in `Cancel` actions.
    pub cancels: u64,
}

impl SchedStats {
    /// The edge's share of fragment bytes received (0 when none).
    pub fn edge_share(&self) -> f64 {
        let total = self.bytes_edge + self.bytes_peers;
        if total == 0 {
            0.0
        } else {
            self.bytes_edge as f64 / total as f64
        }
    }
}

/// What the scheduler knows of one supplier.
#[derive(Clone, Debug, PartialEq)]
pub struct SupplierStats {
    /// Added as an edge.
    pub is_edge: bool,
    /// Fragment bytes received from it.
    pub bytes: u64,
    /// Fragments received from it.
    pub fragments: u64,
    /// Ids it timed out on or failed.
    pub failures: u64,
    /// "Missing" answers from it.
    pub missing: u64,
    /// Ids in flight to it, all channels.
    pub inflight: usize,
    /// Smoothed response time, the mean over the channels it answered on.
    pub response: Option<Duration>,
    /// Avoided until then after a failure.
    pub slow_until: Option<Instant>,
}

/// A small xorshift generator (deterministic from its seed).
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // splitmix64 spreads small seeds; xorshift needs a non-zero state.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// A channel's playout clock (`set_clock`).
#[derive(Clone, Copy, Debug)]
struct Clock {
    anchor_id: u64,
    anchor_deadline: Instant,
    per_fragment: Duration,
}

impl Clock {
    fn deadline(&self, id: u64) -> Instant {
        let n = u128::from(id.saturating_sub(self.anchor_id));
        let ns = (self.per_fragment.as_nanos() * n).min(FAR.as_nanos());
        // At most a day past the anchor: no Instant overflows there.
        self.anchor_deadline
            .checked_add(Duration::from_nanos(ns as u64))
            .unwrap_or(self.anchor_deadline)
    }
}

/// An id asked from a supplier and not answered yet.
#[derive(Clone, Copy, Debug)]
struct Inflight {
    supplier: SupplierId,
    sent: Instant,
    expires: Instant,
}

/// What the scheduler remembers of one wanted id (only ids in the window,
/// not held).
#[derive(Clone, Debug, Default)]
struct IdState {
    /// Where it is asked now.
    inflight: Option<Inflight>,
    /// The coin for a fresh id: fetch from the edge at once (true) or wait
    /// for peers (false); tossed once.
    seed: Option<bool>,
    /// Suppliers that answered "missing" for it, and when.
    missing: Vec<(SupplierId, Instant)>,
    /// The last supplier it was asked from (to count switches).
    last: Option<SupplierId>,
}

/// The receiving side of one channel.
#[derive(Debug, Default)]
struct Lane {
    /// The next id the player needs; `None`: nothing wanted yet.
    playhead: Option<u64>,
    clock: Option<Clock>,
    /// Ids held, from `playhead - window` on, at most `3 × window`.
    held: BTreeSet<u64>,
    /// Wanted ids with state, all in `playhead..playhead + window`.
    ids: BTreeMap<u64, IdState>,
}

/// A supplier's buffer map as a bitmap, the newest `MAP_WORDS` words of
/// 64 ids at most. Kept trimmed: the first and last words are non-zero
/// (or there are none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Bitmap {
    /// Bit `j` (least significant first) of `words[k]` set: it holds id
    /// `64 × (base + k) + j`.
    base: u64,
    words: VecDeque<u64>,
}

impl Bitmap {
    /// From the wire form (`Scheduler::set_map`). Reads at most the bytes
    /// describing the newest 1,024 ids (after skipping trailing zeros);
    /// ids past `u64::MAX` are ignored.
    fn from_wire(first: u64, bits: &[u8]) -> Bitmap {
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

    fn contains(&self, id: u64) -> bool {
        let w = id / 64;
        w >= self.base
            && self
                .words
                .get((w - self.base) as usize)
                .is_some_and(|word| word >> (id % 64) & 1 == 1)
    }

    /// Sets `id`'s bit. Words older than the newest `MAP_WORDS` are
    /// dropped; an id older than those is ignored.
    fn insert(&mut self, id: u64) {
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
    fn remove(&mut self, id: u64) {
        let w = id / 64;
        if w >= self.base {
            if let Some(word) = self.words.get_mut((w - self.base) as usize) {
                *word &= !(1 << (id % 64));
                self.trim();
            }
        }
    }

    fn trim(&mut self) {
        while self.words.front() == Some(&0) {
            self.words.pop_front();
            self.base += 1;
        }
        while self.words.back() == Some(&0) {
            self.words.pop_back();
        }
    }

    /// The lowest and highest ids held.
    fn hull(&self) -> Option<(u64, u64)> {
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
struct SupplierLane {
    /// Its buffer map as a range: it holds `first..=last`, with possible
    /// holes unless `map` says which. With a bitmap, its hull.
    range: Option<(u64, u64)>,
    /// Its buffer map as a bitmap (`set_map`), exact; `None`: range only.
    map: Option<Bitmap>,
    /// Range only: when its `last` grew, and to what, for the last
    /// `settle` (at most 16 entries); ids up to `settled` entered the
    /// range earlier.
    grown: VecDeque<(Instant, u64)>,
    settled: u64,
    /// Ids in flight to it.
    inflight: usize,
    /// Smoothed response time (1/8 gain).
    srtt: Option<Duration>,
}

impl SupplierLane {
    /// Takes a new buffer map, noting when its `last` grew.
    fn update(&mut self, range: Option<(u64, u64)>, now: Instant, settle: Duration) {
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
    fn set_map(&mut self, map: Bitmap) {
        self.range = map.hull();
        self.map = Some(map);
        self.grown.clear();
        self.settled = 0;
    }

    /// It holds `id` (it sent it): set in its bitmap, or its range
    /// extended to include it.
    fn add(&mut self, id: u64, now: Instant, settle: Duration) {
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
    fn lacks(&mut self, id: u64) {
        if let Some(map) = &mut self.map {
            map.remove(id);
            self.range = map.hull();
        }
    }

    /// Whether its buffer map says it holds `id`.
    fn holds(&self, id: u64) -> bool {
        match (&self.map, self.range) {
            (Some(map), _) => map.contains(id),
            (None, Some((first, last))) => (first..=last).contains(&id),
            (None, None) => false,
        }
    }

    /// Whether `id` is held for sure (set in its bitmap), or has been
    /// inside its range for `settle` (or is one of its ends).
    fn settled(&self, id: u64, now: Instant, settle: Duration) -> bool {
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

#[derive(Clone, Debug)]
struct Supplier {
    is_edge: bool,
    lanes: [SupplierLane; 3],
    /// Failures in a row (reset by an answered fragment).
    streak: u32,
    slow_until: Option<Instant>,
    /// Smoothed share of "missing" among its answers (1/8 gain): makes it
    /// look a little slower.
    miss: f64,
    bytes: u64,
    fragments: u64,
    failures: u64,
    missing: u64,
}

impl Supplier {
    fn slow(&self, now: Instant) -> bool {
        self.slow_until.is_some_and(|t| t > now)
    }
}

/// A supplier able to serve an id, as `place` sees it.
struct Candidate {
    id: SupplierId,
    edge: bool,
    slow: bool,
    full: bool,
    /// Held for sure, or inside its range for `settle`
    /// (`SupplierLane::settled`).
    settled: bool,
    expected: Duration,
    /// Random tie-break.
    tie: u64,
}

/// Why an id is being placed.
#[derive(Clone, Copy)]
enum Want {
    /// Deadline closer than `edge_margin`; the slack left.
    Urgent(Duration),
    /// Some peer holds it.
    Peer,
    /// No peer holds it and the coin said seed from the edge.
    Seed,
}

/// Decides, per fragment, which supplier to fetch from and when.
#[derive(Debug)]
pub struct Scheduler {
    config: Config,
    rng: Rng,
    /// Ordered so that every decision is deterministic.
    suppliers: BTreeMap<SupplierId, Supplier>,
    /// Indexed by `Channel::code()`.
    lanes: [Lane; 3],
    /// Cancels to hand out at the next poll.
    outbox: Vec<Action>,
    stats: SchedStats,
}

fn lane_of(ch: Channel) -> usize {
    usize::from(ch.code())
}

impl Scheduler {
    /// A scheduler with no suppliers and nothing wanted. `seed` drives the
    /// seeding coin and tie-breaks: give each viewer its own.
    pub fn new(config: Config, seed: u64) -> Scheduler {
        Scheduler {
            config,
            rng: Rng::new(seed),
            suppliers: BTreeMap::new(),
            lanes: Default::default(),
            outbox: Vec::new(),
            stats: SchedStats::default(),
        }
    }

    /// Adds a supplier (or changes whether it is an edge). It is asked for
    /// nothing until `set_map` or `set_range` says what it holds.
    pub fn add_supplier(&mut self, id: SupplierId, is_edge: bool) {
        self.suppliers
            .entry(id)
            .or_insert_with(|| Supplier {
                is_edge,
                lanes: Default::default(),
                streak: 0,
                slow_until: None,
                miss: 0.0,
                bytes: 0,
                fragments: 0,
                failures: 0,
                missing: 0,
            })
            .is_edge = is_edge;
    }

    /// Forgets a supplier: its in-flight ids are asked elsewhere at the next
    /// poll, and no action names it any more.
    pub fn remove_supplier(&mut self, id: SupplierId) {
        if self.suppliers.remove(&id).is_none() {
            return;
        }
        for lane in &mut self.lanes {
            for st in lane.ids.values_mut() {
                if st.inflight.is_some_and(|f| f.supplier == id) {
                    st.inflight = None;
                }
                st.missing.retain(|&(s, _)| s != id);
            }
        }
        self.outbox.retain(|a| match a {
            Action::Fetch { supplier, .. } | Action::Cancel { supplier, .. } => *supplier != id,
        });
    }

    /// Supplier `s` holds `first..=last` on `ch` (its buffer map as a
    /// range; `first > last`: nothing). The ids between may be holes: those
    /// that entered the range lately are prefetched only after `settle`.
    /// Drops a bitmap given by `set_map`. Unknown suppliers are ignored.
    pub fn set_range(&mut self, s: SupplierId, ch: Channel, first: u64, last: u64, now: Instant) {
        if let Some(sup) = self.suppliers.get_mut(&s) {
            let range = (first <= last).then_some((first, last));
            let l = &mut sup.lanes[lane_of(ch)];
            l.map = None;
            l.update(range, now, self.config.settle);
        }
    }

    /// A supplier's buffer map as a bitmap: bit i (byte i / 8, bit i % 8,
    /// least significant first) set means it holds `first + i`; ids before
    /// `first` are not described (treat as not held), ids after
    /// `first + 8 * bits.len() - 1` are not held. An all-zero or empty map
    /// means it holds none of them.
    ///
    /// Replaces its earlier map or range on `ch`. Set bits are held for
    /// sure, so they are asked for without the `settle` wait. Only the
    /// newest 1,024 ids are kept (at least the newest 961, in words of 64).
    /// Unknown suppliers are ignored.
    pub fn set_map(&mut self, s: SupplierId, ch: Channel, first: u64, bits: &[u8], _now: Instant) {
        if let Some(sup) = self.suppliers.get_mut(&s) {
            sup.lanes[lane_of(ch)].set_map(Bitmap::from_wire(first, bits));
        }
    }

    /// The player needs `next` on `ch` next: ids below it are no longer
    /// wanted, and those in flight are cancelled (at the next poll).
    pub fn set_playhead(&mut self, ch: Channel, next: u64, _now: Instant) {
        let window = self.window();
        let lane = &mut self.lanes[lane_of(ch)];
        lane.playhead = Some(next);
        let kept = lane.ids.split_off(&next);
        let passed = std::mem::replace(&mut lane.ids, kept);
        let low = next.saturating_sub(window);
        lane.held = lane.held.split_off(&low);
        // Ids that fell out of the window (the playhead moved back) forget
        // their state too, in flight or not.
        let beyond = lane.ids.split_off(&next.saturating_add(window));
        let mut cancel: BTreeMap<SupplierId, Vec<u64>> = BTreeMap::new();
        for (id, st) in passed.into_iter().chain(beyond) {
            if let Some(f) = st.inflight {
                cancel.entry(f.supplier).or_default().push(id);
            }
        }
        for (s, ids) in cancel {
            if let Some(sup) = self.suppliers.get_mut(&s) {
                let l = &mut sup.lanes[lane_of(ch)];
                l.inflight = l.inflight.saturating_sub(ids.len());
            }
            self.cancel(s, ch, ids);
        }
    }

    /// Deadlines on `ch`: `anchor_deadline + (id - anchor_id) ×
    /// per_fragment`, and `anchor_deadline` for ids below the anchor. Until
    /// it is set, every wanted id on `ch` counts as due now (urgent).
    pub fn set_clock(
        &mut self,
        ch: Channel,
        anchor_id: u64,
        anchor_deadline: Instant,
        per_fragment: Duration,
    ) {
        self.lanes[lane_of(ch)].clock = Some(Clock {
            anchor_id,
            anchor_deadline,
            per_fragment,
        });
    }

    /// Fragment `id` of `ch` arrived from `s` (`bytes` long); it is held
    /// from now on. Also for ids no longer wanted, and from suppliers no
    /// longer known (counted as peer bytes).
    pub fn on_fragment(&mut self, s: SupplierId, ch: Channel, id: u64, bytes: usize, now: Instant) {
        let li = lane_of(ch);
        let bytes = bytes as u64;
        match self.suppliers.get_mut(&s) {
            Some(sup) => {
                sup.bytes += bytes;
                sup.fragments += 1;
                sup.miss *= 7.0 / 8.0;
                // It holds `id` now.
                sup.lanes[li].add(id, now, self.config.settle);
                if sup.is_edge {
                    self.stats.bytes_edge += bytes;
                    self.stats.fragments_edge += 1;
                } else {
                    self.stats.bytes_peers += bytes;
                    self.stats.fragments_peers += 1;
                }
            }
            None => {
                self.stats.bytes_peers += bytes;
                self.stats.fragments_peers += 1;
            }
        }
        let window = self.window();
        let lane = &mut self.lanes[li];
        if lane.held.contains(&id) {
            self.stats.duplicates += 1;
        } else {
            let passed = lane.playhead.is_some_and(|p| id < p);
            if passed || lane.clock.is_some_and(|c| now > c.deadline(id)) {
                self.stats.late += 1;
            }
            if lane.playhead.is_none_or(|p| id >= p.saturating_sub(window)) {
                lane.held.insert(id);
                while lane.held.len() > 3 * window as usize {
                    lane.held.pop_first();
                }
            }
        }
        let Some(f) = lane.ids.remove(&id).and_then(|st| st.inflight) else {
            return;
        };
        if let Some(sup) = self.suppliers.get_mut(&f.supplier) {
            let l = &mut sup.lanes[li];
            l.inflight = l.inflight.saturating_sub(1);
            if f.supplier == s {
                let sample = now.saturating_duration_since(f.sent);
                l.srtt = Some(match l.srtt {
                    Some(srtt) => (srtt * 7 + sample) / 8,
                    None => sample,
                });
                sup.streak = 0;
            }
        }
        if f.supplier != s {
            // Asked again elsewhere, and the first answer came in after all.
            self.cancel(f.supplier, ch, vec![id]);
        }
    }

    /// `s` answered that it does not have `id`: ask elsewhere. After it
    /// advertised the id, this makes `s` look a little slower. The id's bit
    /// is cleared from its bitmap until its next one.
    pub fn on_missing(&mut self, s: SupplierId, ch: Channel, id: u64, now: Instant) {
        let li = lane_of(ch);
        let window = self.window();
        self.stats.missing += 1;
        let Some(sup) = self.suppliers.get_mut(&s) else {
            return;
        };
        sup.missing += 1;
        sup.miss = sup.miss * 7.0 / 8.0 + 1.0 / 8.0;
        sup.lanes[li].lacks(id);
        let lane = &mut self.lanes[li];
        let Some(p) = lane.playhead else {
            return;
        };
        if id < p || id >= p.saturating_add(window) || lane.held.contains(&id) {
            return;
        }
        let st = lane.ids.entry(id).or_default();
        st.missing.retain(|&(m, _)| m != s);
        st.missing.push((s, now));
        if st.inflight.is_some_and(|f| f.supplier == s) {
            st.inflight = None;
            let l = &mut sup.lanes[li];
            l.inflight = l.inflight.saturating_sub(1);
        }
    }

    /// Asking `s` for `id` failed (the driver's timeout, a connection
    /// error): `s` is marked slow, and every id in flight to it on `ch` is
    /// asked elsewhere (the others are cancelled at `s`).
    pub fn on_failed(&mut self, s: SupplierId, ch: Channel, id: u64, now: Instant) {
        let li = lane_of(ch);
        let at_s = self.lanes[li]
            .ids
            .get(&id)
            .and_then(|st| st.inflight)
            .is_some_and(|f| f.supplier == s);
        if at_s {
            self.stats.failures += 1;
            self.fail(s, ch, Some(id), now);
        }
    }

    /// Whether `id` of `ch` is held (answers for ids from `playhead -
    /// window` on).
    pub fn have(&self, ch: Channel, id: u64) -> bool {
        self.lanes[lane_of(ch)].held.contains(&id)
    }

    /// The actions due at `now`: cancels first, then fetches, at most
    /// `max_ids_per_request` ids each. Call after every batch of inputs and
    /// at `next_wakeup`.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        self.expire(now);
        let mut plan: BTreeMap<(SupplierId, u8), Vec<(u8, u64)>> = BTreeMap::new();
        for ch in CHANNELS {
            self.plan_lane(ch, now, &mut plan);
        }
        let mut actions = std::mem::take(&mut self.outbox);
        let per = self.config.max_ids_per_request.max(1);
        for ((supplier, code), mut ids) in plan {
            let ch = CHANNELS[usize::from(code)];
            ids.sort_unstable();
            for chunk in ids.chunks(per) {
                self.stats.requests += 1;
                actions.push(Action::Fetch {
                    supplier,
                    ch,
                    ids: chunk.iter().map(|&(_, id)| id).collect(),
                    // Sorted by priority: the chunk's first is its most urgent.
                    priority: chunk[0].0,
                });
            }
        }
        actions
    }

    /// When `poll` next has something to do by itself: cancels waiting, an
    /// id's time running out, a waiting id becoming urgent, a slow supplier
    /// becoming usable again. `None`: only inputs can change anything.
    pub fn next_wakeup(&self, now: Instant) -> Option<Instant> {
        if !self.outbox.is_empty() {
            return Some(now);
        }
        let mut next: Option<Instant> = None;
        let mut soon = |t: Instant| {
            if t > now && next.is_none_or(|n| t < n) {
                next = Some(t);
            }
        };
        let mut waiting = false;
        for (li, lane) in self.lanes.iter().enumerate() {
            for f in lane.ids.values().filter_map(|st| st.inflight) {
                soon(f.expires);
            }
            for id in self.wanted(li) {
                if lane.ids.get(&id).is_some_and(|st| st.inflight.is_some()) {
                    continue;
                }
                waiting = true;
                if let Some(t) = self
                    .deadline(li, id, now)
                    .checked_sub(self.config.edge_margin)
                {
                    soon(t);
                }
            }
        }
        if waiting {
            for sup in self.suppliers.values() {
                if let Some(t) = sup.slow_until {
                    soon(t);
                }
                for &(t, _) in sup.lanes.iter().flat_map(|l| &l.grown) {
                    soon(t + self.config.settle);
                }
            }
        }
        next
    }

    /// Counters so far.
    pub fn stats(&self) -> SchedStats {
        self.stats.clone()
    }

    /// What is known of supplier `s`; `None` if it was not added (or was
    /// removed).
    pub fn supplier_stats(&self, s: SupplierId) -> Option<SupplierStats> {
        let sup = self.suppliers.get(&s)?;
        let rtts: Vec<Duration> = sup.lanes.iter().filter_map(|l| l.srtt).collect();
        Some(SupplierStats {
            is_edge: sup.is_edge,
            bytes: sup.bytes,
            fragments: sup.fragments,
            failures: sup.failures,
            missing: sup.missing,
            inflight: sup.lanes.iter().map(|l| l.inflight).sum(),
            response: (!rtts.is_empty()).then(|| rtts.iter().sum::<Duration>() / rtts.len() as u32),
            slow_until: sup.slow_until,
        })
    }

    fn window(&self) -> u64 {
        self.config.window.max(1) as u64
    }

    /// Wanted ids of lane `li`: from the playhead to the newest id any
    /// supplier advertises, within the window, not held.
    fn wanted(&self, li: usize) -> impl Iterator<Item = u64> + '_ {
        let lane = &self.lanes[li];
        let newest = self
            .suppliers
            .values()
            .filter_map(|s| s.lanes[li].range)
            .map(|(_, last)| last)
            .max();
        let span = match (lane.playhead, newest) {
            (Some(p), Some(n)) if n >= p => Some(p..=n.min(p.saturating_add(self.window() - 1))),
            _ => None,
        };
        span.into_iter()
            .flatten()
            .filter(move |id| !lane.held.contains(id))
    }

    fn deadline(&self, li: usize, id: u64, now: Instant) -> Instant {
        self.lanes[li].clock.map_or(now, |c| c.deadline(id))
    }

    /// The response time expected from `s` on lane `li` for one more id:
    /// its smoothed response time, more when loaded or often "missing".
    fn expected(&self, sup: &Supplier, li: usize) -> Duration {
        let l = &sup.lanes[li];
        let base = l.srtt.unwrap_or(self.config.initial_response);
        let load = 1.0 + l.inflight as f64 / self.config.max_inflight.max(1) as f64;
        base.mul_f64(load * (1.0 + sup.miss))
    }

    /// Takes back the ids whose time ran out; their suppliers are slow.
    fn expire(&mut self, now: Instant) {
        let mut expired: Vec<(SupplierId, Channel)> = Vec::new();
        for (li, lane) in self.lanes.iter().enumerate() {
            for f in lane.ids.values().filter_map(|st| st.inflight) {
                if f.expires <= now && !expired.contains(&(f.supplier, CHANNELS[li])) {
                    expired.push((f.supplier, CHANNELS[li]));
                }
            }
        }
        for (s, ch) in expired {
            self.fail(s, ch, None, now);
        }
    }

    /// `s` is slow on `ch`: every id in flight to it there is taken back
    /// (and cancelled, except `reported`, which the driver resolved), and it
    /// is avoided for a backoff.
    fn fail(&mut self, s: SupplierId, ch: Channel, reported: Option<u64>, now: Instant) {
        let li = lane_of(ch);
        let mut back = Vec::new();
        let mut oldest = now;
        for (&id, st) in &mut self.lanes[li].ids {
            let Some(f) = st.inflight.filter(|f| f.supplier == s) else {
                continue;
            };
            st.inflight = None;
            oldest = oldest.min(f.sent);
            if f.expires <= now {
                self.stats.timeouts += 1;
            }
            if Some(id) != reported {
                back.push(id);
            }
        }
        let Some(sup) = self.suppliers.get_mut(&s) else {
            return;
        };
        let l = &mut sup.lanes[li];
        l.inflight = 0;
        let waited = now.saturating_duration_since(oldest);
        l.srtt = Some(l.srtt.map_or(waited, |r| r.max(waited)));
        sup.failures += 1;
        sup.streak = sup.streak.saturating_add(1);
        let factor = 1u32 << sup.streak.saturating_sub(1).min(3);
        sup.slow_until = Some(now + self.config.backoff * factor);
        if !back.is_empty() {
            self.cancel(s, ch, back);
        }
    }

    fn cancel(&mut self, supplier: SupplierId, ch: Channel, ids: Vec<u64>) {
        if ids.is_empty() || !self.suppliers.contains_key(&supplier) {
            return;
        }
        self.stats.cancels += ids.len() as u64;
        self.outbox.push(Action::Cancel { supplier, ch, ids });
    }

    /// Places the wanted ids of `ch` that are neither held nor in flight:
    /// urgent ones first (deadline order), then those some peer holds
    /// (rarest first), then fresh ones (edge seeding coin).
    fn plan_lane(
        &mut self,
        ch: Channel,
        now: Instant,
        plan: &mut BTreeMap<(SupplierId, u8), Vec<(u8, u64)>>,
    ) {
        let li = lane_of(ch);
        let mut urgent = Vec::new();
        let mut rare = Vec::new();
        let mut fresh = Vec::new();
        for id in self.wanted(li) {
            let st = self.lanes[li].ids.get(&id);
            if st.is_some_and(|st| st.inflight.is_some()) {
                continue;
            }
            let deadline = self.deadline(li, id, now);
            let slack = deadline.saturating_duration_since(now);
            if slack < self.config.edge_margin {
                urgent.push((deadline, id));
                continue;
            }
            let holders = self
                .suppliers
                .iter()
                .filter(|&(&s, sup)| !sup.is_edge && self.covers(s, sup, li, id, now))
                .count();
            if holders > 0 {
                rare.push((holders, deadline, id));
            } else {
                fresh.push((deadline, id));
            }
        }
        urgent.sort_unstable();
        rare.sort_unstable();
        for (deadline, id) in urgent {
            let slack = deadline.saturating_duration_since(now);
            self.place(ch, id, Want::Urgent(slack), slack, now, plan);
        }
        for (_, deadline, id) in rare {
            let slack = deadline.saturating_duration_since(now);
            self.place(ch, id, Want::Peer, slack, now, plan);
        }
        let peers = self.suppliers.values().filter(|s| !s.is_edge).count();
        let p = (self.config.seed_fraction / (peers + 1) as f64).min(1.0);
        for (deadline, id) in fresh {
            let st = self.lanes[li].ids.entry(id).or_default();
            let seed = *st.seed.get_or_insert_with(|| self.rng.chance(p));
            if seed {
                let slack = deadline.saturating_duration_since(now);
                self.place(ch, id, Want::Seed, slack, now, plan);
            }
        }
    }

    /// Whether `s` can serve `id` on lane `li`: its buffer map (bitmap, or
    /// else range) says it holds it and it did not say "missing" for it
    /// lately.
    fn covers(&self, s: SupplierId, sup: &Supplier, li: usize, id: u64, now: Instant) -> bool {
        let hold = self.config.missing_hold;
        sup.lanes[li].holds(id)
            && !self.lanes[li].ids.get(&id).is_some_and(|st| {
                st.missing
                    .iter()
                    .any(|&(m, t)| m == s && now.saturating_duration_since(t) < hold)
            })
    }

    /// Chooses a supplier for `id` and records the request; nothing if none
    /// fits (it waits).
    fn place(
        &mut self,
        ch: Channel,
        id: u64,
        want: Want,
        slack: Duration,
        now: Instant,
        plan: &mut BTreeMap<(SupplierId, u8), Vec<(u8, u64)>>,
    ) {
        let li = lane_of(ch);
        let mut cands = Vec::new();
        for (&s, sup) in &self.suppliers {
            if self.covers(s, sup, li, id, now) {
                cands.push(Candidate {
                    id: s,
                    edge: sup.is_edge,
                    slow: sup.slow(now),
                    full: sup.lanes[li].inflight >= self.config.max_inflight,
                    settled: sup.lanes[li].settled(id, now, self.config.settle),
                    expected: self.expected(sup, li),
                    tie: 0,
                });
            }
        }
        for c in &mut cands {
            c.tie = self.rng.next();
        }
        let pick = |ok: &dyn Fn(&Candidate) -> bool| {
            cands
                .iter()
                .filter(|c| !c.full && ok(c))
                .min_by_key(|c| (c.expected, c.tie))
                .map(|c| (c.id, c.expected))
        };
        // An urgent id goes to a peer only if it will answer in a quarter
        // of the slack: given half, it still leaves time for the edge.
        let margin = self.config.edge_margin;
        let quick = match want {
            Want::Urgent(slack) => pick(&|c| !c.edge && !c.slow && c.expected * 4 <= slack),
            _ => None,
        };
        let chosen = match want {
            Want::Urgent(_) => quick
                .or_else(|| pick(&|c| c.edge && !c.slow))
                .or_else(|| pick(&|c| !c.edge && !c.slow))
                .or_else(|| pick(&|c| c.edge))
                .or_else(|| pick(&|_| true)),
            // Prefetch from a peer expected to answer before the id turns urgent.
            Want::Peer => {
                pick(&|c| !c.edge && !c.slow && c.settled && c.expected + margin <= slack)
            }
            Want::Seed => pick(&|c| c.edge && !c.slow),
        };
        let Some((s, expected)) = chosen else {
            return;
        };
        let c = &self.config;
        let timeout = if quick.is_some_and(|q| q.0 == s) {
            slack / 2
        } else {
            let t = (slack / 2)
                .max(expected * 2)
                .min(c.request_timeout)
                .max(c.min_timeout);
            match want {
                // Given up in time to fetch it from the edge as urgent.
                Want::Peer => t.min(slack.saturating_sub(c.edge_margin / 2)),
                _ => t,
            }
        };
        let priority = match want {
            Want::Urgent(_) => 0,
            _ => (slack.as_millis() / 100).min(255) as u8,
        };
        let st = self.lanes[li].ids.entry(id).or_default();
        if st.last.is_some_and(|last| last != s) {
            self.stats.switches += 1;
        }
        st.last = Some(s);
        st.inflight = Some(Inflight {
            supplier: s,
            sent: now,
            expires: now + timeout,
        });
        if let Some(sup) = self.suppliers.get_mut(&s) {
            sup.lanes[li].inflight += 1;
        }
        self.stats.ids_requested += 1;
        plan.entry((s, ch.code())).or_default().push((priority, id));
    }

    /// Entries held in the scheduler's tables (to check they stay bounded).
    #[cfg(test)]
    fn footprint(&self) -> usize {
        let lanes: usize = self
            .lanes
            .iter()
            .map(|l| l.held.len() + l.ids.values().map(|st| 1 + st.missing.len()).sum::<usize>())
            .sum();
        let grown: usize = self
            .suppliers
            .values()
            .flat_map(|s| &s.lanes)
            .map(|l| l.grown.len() + l.map.as_ref().map_or(0, |m| m.words.len()))
            .sum();
        lanes + grown + self.outbox.len() + self.suppliers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Reverse;
    use std::collections::{BinaryHeap, HashMap};

    const V: Channel = Channel::Video;
    const MS: Duration = Duration::from_millis(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn fetches(actions: &[Action]) -> Vec<(SupplierId, Vec<u64>, u8)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Fetch {
                    supplier,
                    ids,
                    priority,
                    ..
                } => Some((*supplier, ids.clone(), *priority)),
                Action::Cancel { .. } => None,
            })
            .collect()
    }

    fn cancels(actions: &[Action]) -> Vec<(SupplierId, Vec<u64>)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Cancel { supplier, ids, .. } => Some((*supplier, ids.clone())),
                Action::Fetch { .. } => None,
            })
            .collect()
    }

    /// Ids fetched from `s`, sorted.
    fn ids_from(actions: &[Action], s: SupplierId) -> Vec<u64> {
        let mut ids: Vec<u64> = fetches(actions)
            .into_iter()
            .filter(|f| f.0 == s)
            .flat_map(|f| f.1)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Edge 0 and peers 1..=peers, all holding `0..=last` on video, the
    /// playhead at 0 and id `i` due at `t0 + 2 s + i × 40 ms`.
    fn setup(config: Config, peers: u64, last: u64, t0: Instant) -> Scheduler {
        let mut s = Scheduler::new(config, 7);
        s.add_supplier(0, true);
        s.set_range(0, V, 0, last, t0);
        for p in 1..=peers {
            s.add_supplier(p, false);
            s.set_range(p, V, 0, last, t0);
        }
        s.set_clock(V, 0, t0 + ms(2000), ms(40));
        s.set_playhead(V, 0, t0);
        s
    }

    #[test]
    fn prefetch_goes_to_peers_in_batches() {
        let t0 = Instant::now();
        let mut s = setup(Config::default(), 2, 19, t0);
        let a = s.poll(t0);
        assert!(ids_from(&a, 0).is_empty(), "{a:?}");
        let mut got = ids_from(&a, 1);
        got.extend(ids_from(&a, 2));
        got.sort_unstable();
        assert_eq!(got, (0..20).collect::<Vec<_>>());
        for (_, ids, prio) in fetches(&a) {
            assert!(ids.len() <= 8);
            assert!(prio >= 14, "2 s of slack is not urgent: {prio}");
        }
        // Nothing more to ask; the next wake-up is the first timeout.
        assert!(fetches(&s.poll(t0)).is_empty());
        assert_eq!(s.next_wakeup(t0), Some(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn a_silent_peer_is_abandoned_before_the_deadline() {
        let t0 = Instant::now();
        let mut s = setup(Config::default(), 1, 9, t0);
        let a = s.poll(t0);
        assert_eq!(ids_from(&a, 1), (0..10).collect::<Vec<_>>());
        // The peer never answers. At its timeout every id is taken back and
        // cancelled there; the peer is slow, so the ids wait to be urgent
        // and then go to the edge.
        let mut now = t0;
        let mut from_edge = Vec::new();
        let mut cancelled = Vec::new();
        while now < t0 + ms(2400) {
            let a = s.poll(now);
            for (sup, ids) in cancels(&a) {
                assert_eq!(sup, 1);
                cancelled.extend(ids);
            }
            for id in ids_from(&a, 0) {
                let deadline = t0 + ms(2000 + 40 * id);
                assert!(deadline - now >= ms(500), "id {id} asked too late");
                from_edge.push(id);
                s.on_fragment(0, V, id, 1000, now + ms(20));
            }
            assert!(ids_from(&a, 1).is_empty(), "a slow peer is avoided");
            now = s.next_wakeup(now).unwrap_or(now + ms(10)).min(now + ms(10));
        }
        from_edge.sort_unstable();
        assert_eq!(from_edge, (0..10).collect::<Vec<_>>());
        assert_eq!(cancelled, (0..10).collect::<Vec<_>>());
        let st = s.stats();
        assert_eq!((st.timeouts, st.switches), (10, 10));
        let p = s.supplier_stats(1).unwrap();
        assert_eq!(p.failures, 1);
        assert!(p.slow_until.unwrap() > t0 + Duration::from_secs(1));
    }

    #[test]
    fn urgent_ids_go_to_the_edge_unless_a_peer_is_quick() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(Config::default(), 1);
        s.add_supplier(0, true);
        s.add_supplier(1, false);
        s.set_range(0, V, 0, 25, t0);
        s.set_range(1, V, 0, 25, t0);
        // Id i is due at 500 + 20 i ms. Ids 0..=4 (within 600 ms) are
        // urgent; the peer is not measured yet (300 ms expected): the edge,
        // at priority 0. The peer is asked only for ids it should deliver
        // before they turn urgent (due in 900 ms or more): 20..=25.
        s.set_clock(V, 0, t0 + ms(500), ms(20));
        s.set_playhead(V, 0, t0);
        let a = s.poll(t0);
        assert_eq!(
            fetches(&a),
            vec![(0, vec![0, 1, 2, 3, 4], 0), (1, (20..=25).collect(), 9)]
        );
        // The peer answers in 50 ms: now quick enough for urgent ids.
        s.on_fragment(1, V, 20, 1000, t0 + ms(50));
        assert_eq!(s.supplier_stats(1).unwrap().response, Some(ms(50)));
        s.set_range(0, V, 0, 7, t0 + ms(60));
        s.set_range(1, V, 0, 7, t0 + ms(60));
        let a = s.poll(t0 + ms(60));
        assert_eq!(fetches(&a), vec![(1, vec![5, 6, 7], 0)]);
        // Given half their slack: re-asked in time if the peer stalls.
        assert_eq!(s.next_wakeup(t0 + ms(60)), Some(t0 + ms(60 + 270)));
    }

    #[test]
    fn without_a_clock_everything_is_urgent() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(Config::default(), 1);
        s.add_supplier(0, true);
        s.add_supplier(1, false);
        s.set_range(0, V, 10, 12, t0);
        s.set_range(1, V, 10, 12, t0);
        assert!(s.poll(t0).is_empty(), "no playhead: nothing wanted");
        s.set_playhead(V, 11, t0);
        assert_eq!(fetches(&s.poll(t0)), vec![(0, vec![11, 12], 0)]);
    }

    #[test]
    fn passing_the_playhead_cancels() {
        let t0 = Instant::now();
        let mut s = setup(Config::default(), 1, 9, t0);
        assert_eq!(ids_from(&s.poll(t0), 1), (0..10).collect::<Vec<_>>());
        s.on_fragment(1, V, 0, 100, t0 + ms(80));
        s.set_playhead(V, 4, t0 + ms(100));
        assert_eq!(s.next_wakeup(t0 + ms(100)), Some(t0 + ms(100)));
        let a = s.poll(t0 + ms(100));
        assert_eq!(cancels(&a), vec![(1, vec![1, 2, 3])]);
        assert!(fetches(&a).is_empty());
        assert_eq!(s.supplier_stats(1).unwrap().inflight, 6);
        // A cancelled fragment arriving anyway is held, and late.
        s.on_fragment(1, V, 2, 100, t0 + ms(120));
        assert!(s.have(V, 2) && s.have(V, 0) && !s.have(V, 5));
        let st = s.stats();
        assert_eq!((st.cancels, st.late, st.fragments_peers), (3, 1, 2));
        assert_eq!(s.supplier_stats(1).unwrap().inflight, 6);
    }

    #[test]
    fn removing_a_supplier_asks_elsewhere_and_forgets_it() {
        let t0 = Instant::now();
        let cfg = Config {
            max_inflight: 4,
            ..Config::default()
        };
        let mut s = setup(cfg, 2, 7, t0);
        let a = s.poll(t0);
        let (at1, at2) = (ids_from(&a, 1), ids_from(&a, 2));
        assert_eq!((at1.len(), at2.len()), (4, 4));
        s.remove_supplier(1);
        assert!(s.supplier_stats(1).is_none());
        // No cancel for a removed supplier; its ids wait for peer 2 (full).
        assert!(s.poll(t0 + ms(10)).is_empty());
        // Peer 2 answers: the removed one's ids go to it.
        let mut now = t0 + ms(20);
        for &id in &at2 {
            s.on_fragment(2, V, id, 100, now);
        }
        let mut moved = Vec::new();
        while moved.len() < at1.len() {
            let a = s.poll(now);
            assert!(fetches(&a).iter().all(|f| f.0 == 2), "{a:?}");
            for id in ids_from(&a, 2) {
                s.on_fragment(2, V, id, 100, now + ms(5));
                moved.push(id);
            }
            now += ms(10);
            assert!(now < t0 + ms(500), "not moved: {moved:?}");
        }
        moved.sort_unstable();
        assert_eq!(moved, at1);
        assert_eq!(s.stats().switches, 4);
        // A fragment from the removed supplier still counts (as peer bytes).
        s.on_fragment(1, V, 0, 100, now);
        assert_eq!(s.stats().duplicates, 1);
    }

    #[test]
    fn rarest_first() {
        let t0 = Instant::now();
        let cfg = Config {
            max_inflight: 1,
            ..Config::default()
        };
        let mut s = Scheduler::new(cfg, 3);
        s.add_supplier(1, false);
        s.add_supplier(2, false);
        s.set_range(1, V, 0, 1, t0);
        s.set_range(2, V, 0, 0, t0);
        s.set_clock(V, 0, t0 + ms(2000), ms(40));
        s.set_playhead(V, 0, t0);
        // Id 1 is held by peer 1 only: it takes peer 1's one slot, and id 0
        // (earlier but held twice) goes to peer 2.
        let mut f = fetches(&s.poll(t0));
        f.sort();
        assert_eq!(
            f.iter().map(|x| (x.0, x.1.clone())).collect::<Vec<_>>(),
            [(1, vec![1]), (2, vec![0])]
        );
    }

    #[test]
    fn missing_goes_elsewhere() {
        let t0 = Instant::now();
        let cfg = Config {
            max_inflight: 1,
            ..Config::default()
        };
        let mut s = setup(cfg, 2, 0, t0);
        let a = s.poll(t0);
        let (first, _, _) = fetches(&a)[0].clone();
        s.on_missing(first, V, 0, t0 + ms(30));
        let other = 3 - first;
        assert_eq!(fetches(&s.poll(t0 + ms(30)))[0].0, other);
        s.on_missing(other, V, 0, t0 + ms(60));
        // No peer has it (for now): the coin (p = 1.5 / 3) or later the edge.
        let mut now = t0 + ms(60);
        loop {
            let a = s.poll(now);
            if let Some(f) = fetches(&a).first() {
                assert_eq!(f.0, 0, "{a:?}");
                break;
            }
            now = s.next_wakeup(now).expect("waits for something");
            assert!(now < t0 + ms(2000));
        }
        let st = s.stats();
        assert_eq!((st.missing, st.switches), (2, 2));
        assert_eq!(s.supplier_stats(first).unwrap().missing, 1);
    }

    #[test]
    fn a_failure_reported_by_the_driver_moves_every_id() {
        let t0 = Instant::now();
        let mut s = setup(Config::default(), 2, 3, t0);
        let a = s.poll(t0);
        let (at1, at2) = (ids_from(&a, 1), ids_from(&a, 2));
        assert_eq!(at1.len() + at2.len(), 4);
        assert!(at1.len() >= 2, "{a:?}");
        s.on_failed(1, V, at1[0], t0 + ms(100));
        // The reported id was resolved by the driver; the others are
        // cancelled, and all go to peer 2.
        let a = s.poll(t0 + ms(100));
        assert_eq!(cancels(&a), vec![(1, at1[1..].to_vec())]);
        assert_eq!(ids_from(&a, 2), at1);
        // Peer 2 fails too: a new peer 3 gets everything.
        s.on_failed(2, V, at2[0], t0 + ms(150));
        s.poll(t0 + ms(150));
        s.add_supplier(3, false);
        s.set_range(3, V, 0, 3, t0 + ms(150));
        assert_eq!(ids_from(&s.poll(t0 + ms(150)), 3), vec![0, 1, 2, 3]);
        s.on_failed(3, V, 0, t0 + ms(160));
        s.on_failed(1, V, 0, t0 + ms(170)); // not in flight there: ignored
        assert_eq!(s.stats().failures, 3);
        let slow = |s: &Scheduler, p| s.supplier_stats(p).unwrap().slow_until.unwrap() - t0;
        assert_eq!(slow(&s, 1), ms(2100));
        assert_eq!(slow(&s, 3), ms(2160));
        assert_eq!(s.supplier_stats(1).unwrap().failures, 1);
    }

    #[test]
    fn backoff_doubles_and_a_slow_peer_is_the_last_resort() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(Config::default(), 5);
        s.add_supplier(1, false);
        s.set_range(1, V, 0, 0, t0);
        s.set_clock(V, 0, t0 + ms(400), ms(40));
        s.set_playhead(V, 0, t0);
        // Urgent, no edge: the only peer, slow or not.
        assert_eq!(ids_from(&s.poll(t0), 1), vec![0]);
        s.on_failed(1, V, 0, t0 + ms(10));
        assert_eq!(ids_from(&s.poll(t0 + ms(10)), 1), vec![0]);
        s.on_failed(1, V, 0, t0 + ms(20));
        let slow_until = s.supplier_stats(1).unwrap().slow_until.unwrap();
        assert_eq!(slow_until - t0, ms(4020));
        // An answer resets the streak (not the backoff already running).
        assert_eq!(ids_from(&s.poll(t0 + ms(20)), 1), vec![0]);
        s.on_fragment(1, V, 0, 10, t0 + ms(60));
        s.set_range(1, V, 0, 1, t0 + ms(60));
        assert_eq!(ids_from(&s.poll(t0 + ms(60)), 1), vec![1]);
        s.on_failed(1, V, 1, t0 + ms(70));
        assert_eq!(
            s.supplier_stats(1).unwrap().slow_until.unwrap() - t0,
            ms(2070)
        );
    }

    #[test]
    fn fresh_ids_are_seeded_from_the_edge_with_the_configured_probability() {
        let t0 = Instant::now();
        let cfg = Config {
            window: 4000,
            max_inflight: 4000,
            ..Config::default()
        };
        let mut s = Scheduler::new(cfg, 11);
        s.add_supplier(0, true);
        for p in 1..=3 {
            s.add_supplier(p, false);
        }
        s.set_range(0, V, 0, 3999, t0);
        s.set_clock(V, 0, t0 + Duration::from_secs(3600), MS);
        s.set_playhead(V, 0, t0);
        let n = ids_from(&s.poll(t0), 0).len();
        // p = 1.5 / (3 + 1) = 0.375, decided once per id.
        assert!((1350..1650).contains(&n), "{n} of 4000");
        assert!(ids_from(&s.poll(t0 + MS), 0).is_empty());
    }

    /// A bitmap buffer map from `first` holding `ids`, in the wire form.
    fn bits(first: u64, ids: &[u64]) -> Vec<u8> {
        let len = ids
            .iter()
            .map(|&id| (id - first) / 8 + 1)
            .max()
            .unwrap_or(0);
        let mut b = vec![0u8; len as usize];
        for &id in ids {
            let i = id - first;
            b[(i / 8) as usize] |= 1 << (i % 8);
        }
        b
    }

    /// What the scheduler knows of `sup`'s buffer map on video.
    fn video(s: &Scheduler, sup: SupplierId) -> &SupplierLane {
        &s.suppliers[&sup].lanes[lane_of(V)]
    }

    #[test]
    fn bitmap_holes_are_not_asked_and_set_bits_need_no_settling() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(Config::default(), 7);
        s.add_supplier(0, true);
        s.add_supplier(1, false);
        s.set_range(0, V, 0, 19, t0);
        // Peer 1 holds 10..=19 but for 12, 13 and 17.
        let held = vec![10, 11, 14, 15, 16, 18, 19];
        s.set_map(1, V, 10, &bits(10, &held), t0);
        assert_eq!(video(&s, 1).range, Some((10, 19)));
        s.set_clock(V, 0, t0 + ms(2000), ms(40));
        s.set_playhead(V, 10, t0);
        let a = s.poll(t0);
        assert_eq!(ids_from(&a, 1), held);
        // The holes are fresh: only the seeding coin may send them to the
        // edge now.
        assert!(ids_from(&a, 0).iter().all(|id| [12, 13, 17].contains(id)));
        // Its next map: the new bits are asked at once (a range's new ids
        // would wait for `settle`), the holes still not.
        let now = t0 + ms(10);
        let mut newer = held.clone();
        newer.extend([21, 22, 24]);
        s.set_map(1, V, 10, &bits(10, &newer), now);
        s.set_range(0, V, 0, 24, now);
        assert_eq!(ids_from(&s.poll(now), 1), vec![21, 22, 24]);
        assert_eq!(s.stats().missing, 0);
    }

    #[test]
    fn a_fragment_sets_its_bit_and_a_map_keeps_the_newest_1024_ids() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(Config::default(), 7);
        s.add_supplier(1, false);
        s.add_supplier(2, false);
        s.set_map(1, V, 100, &bits(100, &[100, 105]), t0);
        s.on_fragment(1, V, 103, 10, t0);
        let l = video(&s, 1);
        assert!(l.holds(100) && l.holds(103) && l.holds(105));
        assert!(!l.holds(101) && !l.holds(104) && !l.holds(106));
        // Past its end: extended.
        s.on_fragment(1, V, 1000, 10, t0);
        let l = video(&s, 1);
        assert!(l.holds(100) && l.holds(1000) && !l.holds(999));
        assert_eq!(l.range, Some((100, 1000)));
        // Far past: the oldest words are dropped.
        s.on_fragment(1, V, 1130, 10, t0);
        let l = video(&s, 1);
        assert!(!l.holds(100) && !l.holds(105) && l.holds(1000));
        assert_eq!(l.range, Some((1000, 1130)));
        // Older than the newest 1,024 ids: ignored; within them: kept.
        s.on_fragment(1, V, 50, 10, t0);
        s.on_fragment(1, V, 200, 10, t0);
        let l = video(&s, 1);
        assert!(!l.holds(50) && l.holds(200));
        assert_eq!(l.range, Some((200, 1130)));
        assert!(l.map.as_ref().is_some_and(|m| m.words.len() <= 16));
        // A supplier with a range only: the range grows to include it.
        s.set_range(2, V, 0, 5, t0);
        s.on_fragment(2, V, 9, 10, t0);
        let l = video(&s, 2);
        assert!(l.map.is_none() && l.holds(7));
        assert_eq!(l.range, Some((0, 9)));
    }

    #[test]
    fn set_range_drops_the_bitmap_and_set_map_replaces_it() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(Config::default(), 7);
        s.add_supplier(1, false);
        s.set_map(1, V, 0, &bits(0, &[0, 3]), t0);
        assert!(video(&s, 1).holds(3) && !video(&s, 1).holds(1));
        // A range cannot show holes.
        s.set_range(1, V, 0, 3, t0);
        assert!(video(&s, 1).map.is_none());
        assert!(video(&s, 1).holds(1) && video(&s, 1).holds(2));
        s.set_map(1, V, 2, &bits(2, &[2]), t0);
        let l = video(&s, 1);
        assert!(l.holds(2) && !l.holds(0) && !l.holds(1) && !l.holds(3));
        assert_eq!(l.range, Some((2, 2)));
        s.set_map(1, V, 0, &bits(0, &[5, 6]), t0);
        assert_eq!(video(&s, 1).range, Some((5, 6)));
        assert!(!video(&s, 1).holds(2));
        // Maps for one channel leave the others alone.
        s.set_range(1, Channel::Audio, 0, 9, t0);
        s.set_map(1, V, 0, &[], t0);
        assert!(s.suppliers[&1].lanes[lane_of(Channel::Audio)].holds(4));
    }

    #[test]
    fn garbage_sized_maps_are_bounded() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(Config::default(), 7);
        s.add_supplier(0, true);
        s.add_supplier(1, false);
        s.set_range(0, V, 0, 9, t0);
        s.set_clock(V, 0, t0 + ms(2000), ms(40));
        s.set_playhead(V, 0, t0);
        // A megabyte of set bits: the newest 1,024 ids are kept.
        s.set_map(1, V, 0, &vec![0xff; 1 << 20], t0);
        let newest = 8 * (1 << 20) - 1;
        let l = video(&s, 1);
        assert_eq!(l.range, Some((newest - 1023, newest)));
        assert_eq!(l.map.as_ref().map(|m| m.words.len()), Some(16));
        assert!(s.footprint() <= 1 + 2 + 16);
        // Ids past u64::MAX are ignored.
        s.set_map(1, V, u64::MAX - 9, &[0xff; 4], t0);
        assert_eq!(video(&s, 1).range, Some((u64::MAX - 9, u64::MAX)));
        // All zero or empty: nothing held, nothing asked.
        for (first, map) in [(0, vec![0; 1 << 20]), (5, Vec::new()), (0, bits(0, &[]))] {
            s.set_map(1, V, first, &map, t0);
            let l = video(&s, 1);
            assert!(l.range.is_none() && !l.holds(first) && !l.holds(0));
            assert!(ids_from(&s.poll(t0), 1).is_empty());
        }
        // An unknown supplier's map is ignored.
        s.set_map(9, V, 0, &[0xff], t0);
        assert!(s.supplier_stats(9).is_none());
    }

    #[test]
    fn rarest_first_counts_bitmap_holders() {
        let t0 = Instant::now();
        let cfg = Config {
            max_inflight: 1,
            ..Config::default()
        };
        let mut s = Scheduler::new(cfg, 3);
        s.add_supplier(1, false);
        s.add_supplier(2, false);
        s.set_map(1, V, 0, &bits(0, &[0, 1, 2]), t0);
        // As a range (0..=2) it would seem to hold 1 too.
        s.set_map(2, V, 0, &bits(0, &[0, 2]), t0);
        s.set_clock(V, 0, t0 + ms(2000), ms(40));
        s.set_playhead(V, 0, t0);
        let mut f = fetches(&s.poll(t0));
        f.sort();
        assert_eq!(
            f.iter().map(|x| (x.0, x.1.clone())).collect::<Vec<_>>(),
            [(1, vec![1]), (2, vec![0])]
        );
    }

    #[test]
    fn a_missing_set_bit_counts_against_its_supplier() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(Config::default(), 5);
        s.add_supplier(0, true);
        s.set_range(0, V, 0, 0, t0);
        for p in [1, 2] {
            s.add_supplier(p, false);
            s.set_map(p, V, 0, &[1], t0);
        }
        s.set_clock(V, 0, t0 + ms(2000), ms(40));
        s.set_playhead(V, 0, t0);
        let first = fetches(&s.poll(t0))[0].0;
        s.on_missing(first, V, 0, t0 + ms(30));
        assert!(!video(&s, first).holds(0), "cleared until its next map");
        assert_eq!(s.supplier_stats(first).unwrap().missing, 1);
        assert_eq!(fetches(&s.poll(t0 + ms(30)))[0].0, 3 - first);
        // Its next map says it holds it again: not asked for `missing_hold`.
        s.set_map(first, V, 0, &[1], t0 + ms(40));
        s.on_missing(3 - first, V, 0, t0 + ms(60));
        let a = s.poll(t0 + ms(60));
        assert!(fetches(&a).iter().all(|f| f.0 == 0), "{a:?}");
        assert_eq!(s.stats().missing, 2);
    }

    // ----- the swarm simulation -----

    const FRAME_US: u64 = 40_000;
    const BUFFER_US: u64 = 2_000_000;
    const RANGE_POLL_US: u64 = 250_000;
    /// A viewer starts this many fragments behind the edge's newest.
    const START_BACK: u64 = 10;
    const EDGE: usize = 0;
    const SIM_CHANNELS: [Channel; 2] = [Channel::Video, Channel::Audio];

    fn produced_us(ch: u8, id: u64) -> u64 {
        id * FRAME_US
            + if ch == Channel::Audio.code() {
                FRAME_US / 2
            } else {
                0
            }
    }

    fn frag_bytes(ch: u8) -> usize {
        if ch == Channel::Video.code() {
            25_000
        } else {
            2_000
        }
    }

    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
    enum Msg {
        Init { ch: u8 },
        Range { ch: u8, range: Option<(u64, u64)> },
        Map { ch: u8, first: u64, bits: Vec<u8> },
        Fetch { ch: u8, ids: Vec<u64>, prio: u8 },
        Cancel { ch: u8, ids: Vec<u64> },
        Frag { ch: u8, id: u64 },
        Missing { ch: u8, id: u64 },
    }

    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
    enum Ev {
        Produce { ch: u8, id: u64 },
        Deliver { from: usize, to: usize, msg: Msg },
        Sent { node: usize },
        Join { v: usize },
        RangeTick { v: usize },
        Play { v: usize, ch: u8, id: u64 },
        Wake { v: usize },
        Silence { node: usize },
        Remove { node: usize },
    }

    struct Viewer {
        sched: Scheduler,
        suppliers: BTreeSet<SupplierId>,
        joined_at: Option<u64>,
        started: [bool; 3],
        wake_at: Option<u64>,
        played: u64,
        on_time: u64,
        first_us: Option<u64>,
    }

    /// A node: the edge (0) or a viewer, serving what it holds.
    struct Node {
        /// Microseconds to send one fragment (upload capacity).
        send_us: u64,
        /// Fragments kept per channel, oldest id dropped first.
        keep: usize,
        store: [BTreeSet<u64>; 3],
        /// (priority, arrival, to, channel, id).
        queue: Vec<(u8, u64, usize, u8, u64)>,
        sending: Option<(usize, u8, u64)>,
        silent: bool,
        viewer: Option<Viewer>,
    }

    #[derive(Clone)]
    struct Setup {
        viewers: usize,
        degree: usize,
        /// Viewers' upload, fragments per second.
        upload: u64,
        secs: u64,
        seed: u64,
        /// Viewer that stops sending fragments and "missing" answers at this
        /// time (ms), while still advertising its buffer map; removed by
        /// the others at the second time.
        silent: Option<(usize, u64, u64)>,
        /// Buffer maps are bitmaps (`set_map`); else ranges (`set_range`).
        maps: bool,
        config: Config,
    }

    impl Setup {
        fn new(viewers: usize, degree: usize, secs: u64) -> Setup {
            Setup {
                viewers,
                degree,
                upload: 80,
                secs,
                seed: 1,
                silent: None,
                maps: false,
                config: Config::default(),
            }
        }

        fn with_maps(&self) -> Setup {
            Setup {
                maps: true,
                ..self.clone()
            }
        }
    }

    #[derive(Clone, Debug, Default, PartialEq)]
    struct Report {
        sched: SchedStats,
        played: u64,
        on_time: u64,
        /// Arrival minus production, p95 and max (ms), first arrivals.
        latency_p95_ms: u64,
        /// Join to first fragment, worst viewer (ms).
        first_max_ms: u64,
        /// Largest scheduler footprint seen, and at the end.
        footprint_max: usize,
        footprint_end: usize,
    }

    impl Report {
        fn peer_fragment_share(&self) -> f64 {
            let s = &self.sched;
            s.fragments_peers as f64 / (s.fragments_edge + s.fragments_peers).max(1) as f64
        }

        fn on_time_share(&self) -> f64 {
            self.on_time as f64 / self.played.max(1) as f64
        }

        fn print(&self, name: &str) {
            let s = &self.sched;
            println!(
                "sim {name}: edge bytes {:.1}% (peers {:.1}%), fragments from peers {:.1}%, \
                 on time {}/{} = {:.2}%, latency p95 {} ms, first fragment <= {} ms, \
                 requests {}, ids {}, timeouts {}, missing {}, switches {}, cancels {}, \
                 late {}, duplicates {}, footprint max {} (end {})",
                100.0 * s.edge_share(),
                100.0 * (1.0 - s.edge_share()),
                100.0 * self.peer_fragment_share(),
                self.on_time,
                self.played,
                100.0 * self.on_time_share(),
                self.latency_p95_ms,
                self.first_max_ms,
                s.requests,
                s.ids_requested,
                s.timeouts,
                s.missing,
                s.switches,
                s.cancels,
                s.late,
                s.duplicates,
                self.footprint_max,
                self.footprint_end
            );
        }
    }

    struct Sim {
        base: Instant,
        now: u64,
        seq: u64,
        events: BinaryHeap<Reverse<(u64, u64, Ev)>>,
        nodes: Vec<Node>,
        /// One-way latency, microseconds, by (low, high) node index.
        latency: HashMap<(usize, usize), u64>,
        latencies: Vec<u64>,
        report: Report,
        maps: bool,
    }

    impl Sim {
        fn new(setup: &Setup) -> Sim {
            let mut rng = Rng::new(setup.seed);
            let n = setup.viewers;
            let mut nodes = vec![Node {
                send_us: 500, // the edge: 2,000 fragments/s
                keep: 125,
                store: Default::default(),
                queue: Vec::new(),
                sending: None,
                silent: false,
                viewer: None,
            }];
            let mut latency = HashMap::new();
            for v in 1..=n {
                let mut sched = Scheduler::new(setup.config.clone(), setup.seed * 1000 + v as u64);
                let mut suppliers = BTreeSet::new();
                sched.add_supplier(EDGE as u64, true);
                suppliers.insert(EDGE as u64);
                latency.insert((EDGE, v), 20_000 + rng.next() % 20_000);
                // A ring lattice: each viewer linked to `degree / 2` on each side.
                for k in 1..=setup.degree / 2 {
                    for p in [(v - 1 + k) % n + 1, (v - 1 + n - k) % n + 1] {
                        sched.add_supplier(p as u64, false);
                        suppliers.insert(p as u64);
                        let key = (v.min(p), v.max(p));
                        let l = 10_000 + rng.next() % 50_000;
                        latency.entry(key).or_insert(l);
                    }
                }
                nodes.push(Node {
                    send_us: 1_000_000 / setup.upload,
                    keep: 50,
                    store: Default::default(),
                    queue: Vec::new(),
                    sending: None,
                    silent: false,
                    viewer: Some(Viewer {
                        sched,
                        suppliers,
                        joined_at: None,
                        started: [false; 3],
                        wake_at: None,
                        played: 0,
                        on_time: 0,
                        first_us: None,
                    }),
                });
            }
            let mut sim = Sim {
                base: Instant::now(),
                now: 0,
                seq: 0,
                events: BinaryHeap::new(),
                nodes,
                latency,
                latencies: Vec::new(),
                report: Report::default(),
                maps: setup.maps,
            };
            for ch in SIM_CHANNELS {
                sim.at(
                    produced_us(ch.code(), 0),
                    Ev::Produce {
                        ch: ch.code(),
                        id: 0,
                    },
                );
            }
            for v in 1..=n {
                // Viewers join over the first two seconds, after the source.
                let join = 500_000 + rng.next() % 2_000_000;
                sim.at(join, Ev::Join { v });
            }
            if let Some((node, stop_ms, remove_ms)) = setup.silent {
                sim.at(stop_ms * 1000, Ev::Silence { node });
                sim.at(remove_ms * 1000, Ev::Remove { node });
            }
            sim
        }

        fn at(&mut self, t: u64, ev: Ev) {
            self.seq += 1;
            self.events.push(Reverse((t, self.seq, ev)));
        }

        fn instant(&self) -> Instant {
            self.base + Duration::from_micros(self.now)
        }

        fn send(&mut self, from: usize, to: usize, msg: Msg) {
            let l = self.latency[&(from.min(to), from.max(to))];
            self.at(self.now + l, Ev::Deliver { from, to, msg });
        }

        fn viewer(&mut self, v: usize) -> &mut Viewer {
            self.nodes[v].viewer.as_mut().expect("a viewer")
        }

        fn run(mut self, secs: u64) -> Report {
            let end = secs * 1_000_000;
            while let Some(Reverse((t, _, ev))) = self.events.pop() {
                if t > end {
                    break;
                }
                self.now = t;
                self.handle(ev);
            }
            let mut r = self.report;
            for node in &self.nodes {
                if let Some(v) = &node.viewer {
                    let s = v.sched.stats();
                    r.sched.bytes_edge += s.bytes_edge;
                    r.sched.bytes_peers += s.bytes_peers;
                    r.sched.fragments_edge += s.fragments_edge;
                    r.sched.fragments_peers += s.fragments_peers;
                    r.sched.duplicates += s.duplicates;
                    r.sched.requests += s.requests;
                    r.sched.ids_requested += s.ids_requested;
                    r.sched.timeouts += s.timeouts;
                    r.sched.failures += s.failures;
                    r.sched.missing += s.missing;
                    r.sched.switches += s.switches;
                    r.sched.late += s.late;
                    r.sched.cancels += s.cancels;
                    r.played += v.played;
                    r.on_time += v.on_time;
                    let first = v.first_us.unwrap_or(u64::MAX) / 1000;
                    r.first_max_ms = r.first_max_ms.max(first);
                    r.footprint_end = r.footprint_end.max(v.sched.footprint());
                }
            }
            self.latencies.sort_unstable();
            if !self.latencies.is_empty() {
                let i = (self.latencies.len() * 95 / 100).min(self.latencies.len() - 1);
                r.latency_p95_ms = self.latencies[i] / 1000;
            }
            r
        }

        fn handle(&mut self, ev: Ev) {
            match ev {
                Ev::Produce { ch, id } => {
                    self.store(EDGE, ch, id);
                    self.at(produced_us(ch, id + 1), Ev::Produce { ch, id: id + 1 });
                }
                Ev::Join { v } => {
                    self.viewer(v).joined_at = Some(self.now);
                    self.handle(Ev::RangeTick { v });
                }
                Ev::RangeTick { v } => {
                    let suppliers: Vec<_> = self.viewer(v).suppliers.iter().copied().collect();
                    for s in suppliers {
                        for ch in SIM_CHANNELS {
                            self.send(v, s as usize, Msg::Init { ch: ch.code() });
                        }
                    }
                    self.at(self.now + RANGE_POLL_US, Ev::RangeTick { v });
                }
                Ev::Play { v, ch, id } => {
                    let now = self.instant();
                    let viewer = self.viewer(v);
                    viewer.played += 1;
                    if viewer.sched.have(CHANNELS[usize::from(ch)], id) {
                        viewer.on_time += 1;
                    }
                    viewer
                        .sched
                        .set_playhead(CHANNELS[usize::from(ch)], id + 1, now);
                    self.at(
                        produced_us(ch, id + 1) + BUFFER_US,
                        Ev::Play { v, ch, id: id + 1 },
                    );
                    self.drive(v);
                }
                Ev::Wake { v } => {
                    let now = self.now;
                    if self.viewer(v).wake_at == Some(now) {
                        self.viewer(v).wake_at = None;
                    }
                    self.drive(v);
                }
                Ev::Sent { node } => {
                    if let Some((to, ch, id)) = self.nodes[node].sending.take() {
                        if !self.nodes[node].silent {
                            self.send(node, to, Msg::Frag { ch, id });
                        }
                    }
                    self.kick(node);
                }
                Ev::Silence { node } => {
                    self.nodes[node].silent = true;
                    self.nodes[node].queue.clear();
                }
                Ev::Remove { node } => {
                    for v in 1..self.nodes.len() {
                        if self.viewer(v).suppliers.remove(&(node as u64)) {
                            self.viewer(v).sched.remove_supplier(node as u64);
                            self.drive(v);
                        }
                    }
                }
                Ev::Deliver { from, to, msg } => self.deliver(from, to, msg),
            }
        }

        fn deliver(&mut self, from: usize, to: usize, msg: Msg) {
            let now = self.instant();
            match msg {
                Msg::Init { ch } => {
                    // A silent node still advertises what it holds.
                    let st = &self.nodes[to].store[usize::from(ch)];
                    let range = st.first().map(|&f| (f, *st.last().expect("non-empty")));
                    let msg = match (self.maps, range) {
                        (true, Some((first, last))) => {
                            let mut bits = vec![0u8; ((last - first) / 8 + 1) as usize];
                            for &id in st {
                                let i = (id - first) as usize;
                                bits[i / 8] |= 1 << (i % 8);
                            }
                            Msg::Map { ch, first, bits }
                        }
                        (true, None) => Msg::Map {
                            ch,
                            first: 0,
                            bits: Vec::new(),
                        },
                        (false, _) => Msg::Range { ch, range },
                    };
                    self.send(to, from, msg);
                }
                Msg::Fetch { ch, ids, prio } => {
                    if self.nodes[to].silent {
                        return;
                    }
                    for id in ids {
                        if !self.nodes[to].store[usize::from(ch)].contains(&id) {
                            self.send(to, from, Msg::Missing { ch, id });
                            continue;
                        }
                        self.seq += 1;
                        let seq = self.seq;
                        let q = &mut self.nodes[to].queue;
                        match q.iter_mut().find(|e| (e.2, e.3, e.4) == (from, ch, id)) {
                            Some(e) => e.0 = e.0.min(prio),
                            None => q.push((prio, seq, from, ch, id)),
                        }
                    }
                    self.kick(to);
                }
                Msg::Cancel { ch, ids } => {
                    self.nodes[to]
                        .queue
                        .retain(|e| !(e.2 == from && e.3 == ch && ids.contains(&e.4)));
                }
                Msg::Range { ch, range } => {
                    if self.viewer(to).suppliers.contains(&(from as u64)) {
                        let (first, last) = range.unwrap_or((1, 0));
                        let c = CHANNELS[usize::from(ch)];
                        self.viewer(to)
                            .sched
                            .set_range(from as u64, c, first, last, now);
                        self.on_map(from, to, ch, range.map(|r| r.1));
                    }
                }
                Msg::Map { ch, first, bits } => {
                    if self.viewer(to).suppliers.contains(&(from as u64)) {
                        let c = CHANNELS[usize::from(ch)];
                        self.viewer(to)
                            .sched
                            .set_map(from as u64, c, first, &bits, now);
                        let last = bits
                            .iter()
                            .rposition(|&b| b != 0)
                            .map(|i| first + 8 * i as u64 + u64::from(7 - bits[i].leading_zeros()));
                        self.on_map(from, to, ch, last);
                    }
                }
                Msg::Frag { ch, id } => {
                    if !self.viewer(to).suppliers.contains(&(from as u64)) {
                        return; // the connection is gone
                    }
                    if !self.nodes[to].store[usize::from(ch)].contains(&id) {
                        self.latencies.push(self.now - produced_us(ch, id));
                        let (now_us, viewer) = (self.now, self.viewer(to));
                        if viewer.first_us.is_none() {
                            viewer.first_us = Some(now_us - viewer.joined_at.expect("joined"));
                        }
                        self.store(to, ch, id);
                    }
                    let c = CHANNELS[usize::from(ch)];
                    self.viewer(to)
                        .sched
                        .on_fragment(from as u64, c, id, frag_bytes(ch), now);
                    self.drive(to);
                }
                Msg::Missing { ch, id } => {
                    if self.viewer(to).suppliers.contains(&(from as u64)) {
                        let c = CHANNELS[usize::from(ch)];
                        self.viewer(to).sched.on_missing(from as u64, c, id, now);
                        self.drive(to);
                    }
                }
            }
        }

        /// Viewer `to` took `from`'s buffer map, whose newest id is `last`:
        /// the edge's first one starts the playout.
        fn on_map(&mut self, from: usize, to: usize, ch: u8, last: Option<u64>) {
            let (now, base) = (self.instant(), self.base);
            let viewer = self.viewer(to);
            if let (EDGE, Some(last), false) = (from, last, viewer.started[usize::from(ch)]) {
                viewer.started[usize::from(ch)] = true;
                let c = CHANNELS[usize::from(ch)];
                let start = last.saturating_sub(START_BACK);
                let anchor = base + Duration::from_micros(produced_us(ch, 0) + BUFFER_US);
                viewer
                    .sched
                    .set_clock(c, 0, anchor, Duration::from_micros(FRAME_US));
                viewer.sched.set_playhead(c, start, now);
                self.at(
                    produced_us(ch, start) + BUFFER_US,
                    Ev::Play {
                        v: to,
                        ch,
                        id: start,
                    },
                );
            }
            self.drive(to);
        }

        fn store(&mut self, node: usize, ch: u8, id: u64) {
            let n = &mut self.nodes[node];
            let st = &mut n.store[usize::from(ch)];
            st.insert(id);
            while st.len() > n.keep {
                st.pop_first();
            }
        }

        /// Starts sending the most urgent queued fragment if idle.
        fn kick(&mut self, node: usize) {
            while self.nodes[node].sending.is_none() && !self.nodes[node].queue.is_empty() {
                let n = &mut self.nodes[node];
                let i = (0..n.queue.len())
                    .min_by_key(|&i| (n.queue[i].0, n.queue[i].1))
                    .expect("non-empty");
                let (_, _, to, ch, id) = n.queue.swap_remove(i);
                if n.store[usize::from(ch)].contains(&id) {
                    n.sending = Some((to, ch, id));
                    let done = self.now + n.send_us;
                    self.at(done, Ev::Sent { node });
                } else {
                    self.send(node, to, Msg::Missing { ch, id });
                }
            }
        }

        fn drive(&mut self, v: usize) {
            let now = self.instant();
            let (now_us, base) = (self.now, self.base);
            let viewer = self.viewer(v);
            let actions = viewer.sched.poll(now);
            let wake = viewer.sched.next_wakeup(now);
            let footprint = viewer.sched.footprint();
            for a in &actions {
                let s = match a {
                    Action::Fetch { supplier, .. } | Action::Cancel { supplier, .. } => supplier,
                };
                assert!(
                    viewer.suppliers.contains(s),
                    "action for unknown supplier: {a:?}"
                );
            }
            if let Some(t) = wake {
                let t = (now_us + 100).max(t.duration_since(base).as_micros() as u64);
                if viewer.wake_at.is_none_or(|w| t < w || w < now_us) {
                    viewer.wake_at = Some(t);
                    self.at(t, Ev::Wake { v });
                }
            }
            self.report.footprint_max = self.report.footprint_max.max(footprint);
            for a in actions {
                match a {
                    Action::Fetch {
                        supplier,
                        ch,
                        ids,
                        priority,
                    } => {
                        let msg = Msg::Fetch {
                            ch: ch.code(),
                            ids,
                            prio: priority,
                        };
                        self.send(v, supplier as usize, msg);
                    }
                    Action::Cancel { supplier, ch, ids } => {
                        self.send(v, supplier as usize, Msg::Cancel { ch: ch.code(), ids });
                    }
                }
            }
        }
    }

    fn simulate(setup: &Setup) -> Report {
        Sim::new(setup).run(setup.secs)
    }

    /// Runs `setup` with range buffer maps, then with bitmaps, printing
    /// both.
    fn simulate_both(setup: &Setup, name: &str) -> (Report, Report) {
        let ranges = simulate(setup);
        ranges.print(&format!("{name}, ranges"));
        let maps = simulate(&setup.with_maps());
        maps.print(&format!("{name}, bitmaps"));
        // Bitmaps show the holes: (almost) no "missing", no more edge.
        assert!(maps.sched.missing * 20 <= ranges.sched.missing);
        assert!(maps.sched.edge_share() <= ranges.sched.edge_share() + 0.02);
        (ranges, maps)
    }

    #[test]
    fn sim_eight_viewers_take_most_from_peers() {
        let (ranges, maps) = simulate_both(&Setup::new(8, 4, 60), "8 viewers x 4 peers, 60 s");
        for r in [&ranges, &maps] {
            assert!(r.peer_fragment_share() > 0.5);
            assert!(r.sched.edge_share() < 0.5);
            assert!(r.on_time_share() >= 0.99);
            assert!(r.latency_p95_ms <= 2000);
        }
    }

    #[test]
    fn sim_twenty_viewers() {
        let (ranges, maps) = simulate_both(&Setup::new(20, 8, 30), "20 viewers x 8 peers, 30 s");
        for r in [&ranges, &maps] {
            assert!(r.on_time_share() >= 0.99);
        }
    }

    #[test]
    fn sim_fifty_viewers_spare_the_edge() {
        let (ranges, maps) = simulate_both(&Setup::new(50, 8, 30), "50 viewers x 8 peers, 30 s");
        for r in [&ranges, &maps] {
            assert!(r.on_time_share() >= 0.99);
            assert!(r.sched.edge_share() <= 0.25);
        }
    }

    #[test]
    fn sim_upload_below_the_stream_rate_falls_back_to_the_edge() {
        let mut setup = Setup::new(8, 4, 30);
        setup.upload = 45; // fragments/s; the stream is 50
        let name = "8 viewers x 4 peers, upload 45/s (stream 50/s), 30 s";
        let (ranges, maps) = simulate_both(&setup, name);
        for r in [&ranges, &maps] {
            assert!(r.on_time_share() >= 0.99);
            assert!(r.peer_fragment_share() > 0.5);
        }
    }

    #[test]
    fn sim_a_silent_peer_is_abandoned() {
        let mut setup = Setup::new(8, 4, 40);
        setup.silent = Some((3, 15_000, 25_000));
        let name = "8 viewers, viewer 3 silent at 15 s, removed at 25 s";
        let (ranges, maps) = simulate_both(&setup, name);
        for r in [&ranges, &maps] {
            assert!(r.sched.timeouts > 0 && r.sched.switches > 0);
            assert!(r.on_time_share() >= 0.99);
        }
    }

    #[test]
    fn sim_state_stays_bounded() {
        let setup = Setup::new(4, 2, 600);
        let (w, suppliers) = (setup.config.window, 3);
        // Per channel: held ids (3 windows), wanted ids (one window) with a
        // "missing" entry per supplier; per supplier and channel 16 range
        // growths or 16 bitmap words; the suppliers; the cancels waiting.
        let bound = 3 * (3 * w + w * (1 + suppliers)) + suppliers * (1 + 3 * 16) + 3 * w;
        let (ranges, maps) = simulate_both(&setup, "4 viewers x 2 peers, 600 s");
        for r in [&ranges, &maps] {
            assert!(r.footprint_max <= bound, "{} > {bound}", r.footprint_max);
            assert!(r.footprint_end <= r.footprint_max);
            assert!(r.on_time_share() >= 0.99);
        }
    }

    #[test]
    fn sim_is_deterministic() {
        let setup = Setup::new(6, 4, 10);
        assert_eq!(simulate(&setup), simulate(&setup));
        let maps = setup.with_maps();
        assert_eq!(simulate(&maps), simulate(&maps));
    }
}
