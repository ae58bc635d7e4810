//! A deterministic swarm simulation: an edge and simulated viewers, each
//! running its own [`Scheduler`], over links with latency and limited
//! upload, in virtual time. Every scenario runs twice, with range buffer
//! maps and with bitmaps. `docs/swarm.md` gives the figures.

use super::*;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

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

    /// The same with bitmaps (`true`) or ranges.
    fn with_maps(&self, maps: bool) -> Setup {
        Setup {
            maps,
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

/// One scenario: runs `setup` with range buffer maps, then with bitmaps,
/// printing both; checks that bitmaps do no worse, then `check`s each run.
fn scenario(setup: &Setup, name: &str, check: impl Fn(&Report)) {
    let ranges = simulate(&setup.with_maps(false));
    ranges.print(&format!("{name}, ranges"));
    let maps = simulate(&setup.with_maps(true));
    maps.print(&format!("{name}, bitmaps"));
    // Bitmaps show the holes: (almost) no "missing", no more edge.
    assert!(maps.sched.missing * 20 <= ranges.sched.missing);
    assert!(maps.sched.edge_share() <= ranges.sched.edge_share() + 0.02);
    for r in [&ranges, &maps] {
        check(r);
    }
}

#[test]
fn sim_eight_viewers_take_most_from_peers() {
    scenario(&Setup::new(8, 4, 60), "8 viewers x 4 peers, 60 s", |r| {
        assert!(r.peer_fragment_share() > 0.5);
        assert!(r.sched.edge_share() < 0.5);
        assert!(r.on_time_share() >= 0.99);
        assert!(r.latency_p95_ms <= 2000);
    });
}

#[test]
fn sim_twenty_viewers() {
    scenario(&Setup::new(20, 8, 30), "20 viewers x 8 peers, 30 s", |r| {
        assert!(r.on_time_share() >= 0.99);
    });
}

#[test]
fn sim_fifty_viewers_spare_the_edge() {
    scenario(&Setup::new(50, 8, 30), "50 viewers x 8 peers, 30 s", |r| {
        assert!(r.on_time_share() >= 0.99);
        assert!(r.sched.edge_share() <= 0.25);
    });
}

#[test]
fn sim_upload_below_the_stream_rate_falls_back_to_the_edge() {
    let mut setup = Setup::new(8, 4, 30);
    setup.upload = 45; // fragments/s; the stream is 50
    let name = "8 viewers x 4 peers, upload 45/s (stream 50/s), 30 s";
    scenario(&setup, name, |r| {
        assert!(r.on_time_share() >= 0.99);
        assert!(r.peer_fragment_share() > 0.5);
    });
}

#[test]
fn sim_a_silent_peer_is_abandoned() {
    let mut setup = Setup::new(8, 4, 40);
    setup.silent = Some((3, 15_000, 25_000));
    let name = "8 viewers, viewer 3 silent at 15 s, removed at 25 s";
    scenario(&setup, name, |r| {
        assert!(r.sched.timeouts > 0 && r.sched.switches > 0);
        assert!(r.on_time_share() >= 0.99);
    });
}

#[test]
fn sim_state_stays_bounded() {
    let setup = Setup::new(4, 2, 600);
    let (w, suppliers) = (setup.config.window, 3);
    // Per channel: held ids (3 windows), wanted ids (one window) with a
    // "missing" entry per supplier; per supplier and channel 16 range
    // growths or 16 bitmap words; the suppliers; the cancels waiting.
    let bound = 3 * (3 * w + w * (1 + suppliers)) + suppliers * (1 + 3 * 16) + 3 * w;
    scenario(&setup, "4 viewers x 2 peers, 600 s", |r| {
        assert!(r.footprint_max <= bound, "{} > {bound}", r.footprint_max);
        assert!(r.footprint_end <= r.footprint_max);
        assert!(r.on_time_share() >= 0.99);
    });
}

#[test]
fn sim_is_deterministic() {
    for maps in [false, true] {
        let setup = Setup::new(6, 4, 10).with_maps(maps);
        assert_eq!(simulate(&setup), simulate(&setup));
    }
}
