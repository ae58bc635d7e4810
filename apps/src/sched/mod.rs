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

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use libnet::p2p::Channel;

mod map;
use map::{Bitmap, SupplierLane};

/// How the driver names a supplier (a connection to the edge or a peer).
pub type SupplierId = u64;

/// Every channel, indexed by its wire code.
const CHANNELS: [Channel; 3] = [Channel::Meta, Channel::Video, Channel::Audio];

/// Deadlines further than this from their anchor are capped (ids far ahead
/// are not wanted anyway).
const FAR: Duration = Duration::from_secs(24 * 3600);

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
mod sim;
#[cfg(test)]
mod tests;
