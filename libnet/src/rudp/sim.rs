//! A deterministic network simulator for the sans-IO [`Endpoint`] (tests only).
//!
//! Endpoints ("nodes") exchange datagrams over a simulated network with a
//! virtual clock. Each [`Sim::step`] jumps the clock to the next thing that
//! happens — the earliest datagram delivery or the earliest
//! `poll_timeout` of a node — delivers what is due, runs the due timers and
//! collects what the endpoints queued. Loss, duplication, delay, jitter
//! (which reorders), extra reordering delay and a per-sender rate with a
//! bounded queue are drawn from one seeded generator, so a run is exactly
//! reproducible from its seed. Every loop is bounded by a step and a
//! virtual-time limit.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::proto::{Config, Endpoint, Event};

pub(crate) use crate::rand::Rng;

/// How the network treats every datagram.
#[derive(Clone, Debug)]
pub(crate) struct Link {
    /// Probability a datagram is lost.
    pub loss: f64,
    /// Probability a datagram is delivered twice (independent delays).
    pub duplicate: f64,
    /// One-way propagation delay.
    pub delay: Duration,
    /// Extra uniform delay in `[0, jitter)`.
    pub jitter: Duration,
    /// Jitter keeps each path first-in first-out (as most real paths
    /// are); when false, jitter reorders freely (every datagram within
    /// `jitter` of another may overtake it).
    pub fifo: bool,
    /// Probability a datagram is held back an extra `reorder_delay`.
    pub reorder: f64,
    /// See `reorder`.
    pub reorder_delay: Duration,
    /// Sender link rate in bytes per second (`None`: unlimited).
    pub rate: Option<u64>,
    /// Longest queueing delay at a rate-limited sender; beyond it, drop tail.
    pub queue: Duration,
}

impl Default for Link {
    fn default() -> Link {
        Link {
            loss: 0.0,
            duplicate: 0.0,
            delay: Duration::from_millis(10),
            jitter: Duration::ZERO,
            fifo: true,
            reorder: 0.0,
            reorder_delay: Duration::ZERO,
            rate: None,
            queue: Duration::from_millis(100),
        }
    }
}

/// One endpoint on the simulated network.
pub(crate) struct Node {
    pub addr: SocketAddr,
    pub ep: Endpoint,
    /// Events the endpoint produced, for the test to consume.
    pub events: VecDeque<Event>,
    /// A node that is down neither receives nor runs its timers.
    pub up: bool,
    /// When its (rate-limited) link is free again.
    link_free: Instant,
}

struct Flight {
    at: Instant,
    seq: u64,
    from: SocketAddr,
    to: SocketAddr,
    data: Vec<u8>,
}

impl PartialEq for Flight {
    fn eq(&self, o: &Flight) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Flight {}
impl PartialOrd for Flight {
    fn partial_cmp(&self, o: &Flight) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Flight {
    fn cmp(&self, o: &Flight) -> Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// Counters of what the network did.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct NetStats {
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub queue_drops: u64,
    pub duplicated: u64,
    pub undeliverable: u64,
    pub bytes: u64,
}

/// The simulated network (see the module docs).
pub(crate) struct Sim {
    pub start: Instant,
    pub now: Instant,
    pub nodes: Vec<Node>,
    pub link: Link,
    pub net: NetStats,
    pub steps: u64,
    flights: BinaryHeap<Reverse<Flight>>,
    by_addr: HashMap<SocketAddr, usize>,
    /// Latest in-order arrival per path, for `Link::fifo`.
    path_tail: HashMap<(SocketAddr, SocketAddr), Instant>,
    rng: Rng,
    seq: u64,
    /// Drops the next `.0` datagrams for which `.1` is true (targeted loss).
    pub drop_matching: Option<(u32, DropIf)>,
    /// Deliver the datagrams of one instant as a batch
    /// (`begin_batch`/`end_batch`), as the socket driver does; on by default.
    pub batch: bool,
}

/// Which datagrams `Sim::drop_matching` drops.
pub(crate) type DropIf = fn(&[u8]) -> bool;

impl Sim {
    pub(crate) fn new(seed: u64, link: Link) -> Sim {
        let now = Instant::now();
        Sim {
            start: now,
            now,
            nodes: Vec::new(),
            link,
            net: NetStats::default(),
            steps: 0,
            flights: BinaryHeap::new(),
            by_addr: HashMap::new(),
            path_tail: HashMap::new(),
            rng: Rng::new(seed),
            batch: true,
            drop_matching: None,
            seq: 0,
        }
    }

    /// Adds an endpoint at 10.x.y.z:7000 (distinct per node).
    pub(crate) fn add(&mut self, config: Config) -> usize {
        let i = self.nodes.len() as u32 + 1;
        let addr = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 7000));
        self.add_at(addr, config)
    }

    pub(crate) fn add_at(&mut self, addr: SocketAddr, config: Config) -> usize {
        let seed = self.rng.next_u64();
        let i = self.nodes.len();
        self.nodes.push(Node {
            addr,
            ep: Endpoint::new(config, seed, self.now),
            events: VecDeque::new(),
            up: true,
            link_free: self.now,
        });
        self.by_addr.insert(addr, i);
        i
    }

    pub(crate) fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].addr
    }

    pub(crate) fn ep(&mut self, i: usize) -> &mut Endpoint {
        &mut self.nodes[i].ep
    }

    /// Virtual time since the start.
    pub(crate) fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Moves every node's queued datagrams onto the wire and its events
    /// into `Node::events`.
    pub(crate) fn collect(&mut self) {
        for i in 0..self.nodes.len() {
            while let Some(ev) = self.nodes[i].ep.poll_event() {
                self.nodes[i].events.push_back(ev);
            }
            while let Some(t) = self.nodes[i].ep.poll_transmit() {
                self.transmit(i, t.to, t.data);
            }
        }
    }

    fn transmit(&mut self, i: usize, to: SocketAddr, data: Vec<u8>) {
        self.net.sent += 1;
        self.net.bytes += data.len() as u64;
        if !self.nodes[i].up {
            self.net.lost += 1;
            return;
        }
        if let Some((n, hit)) = self.drop_matching {
            if n > 0 && hit(&data) {
                self.drop_matching = Some((n - 1, hit));
                self.net.lost += 1;
                return;
            }
        }
        if self.rng.chance(self.link.loss) {
            self.net.lost += 1;
            return;
        }
        let mut depart = self.now;
        if let Some(rate) = self.link.rate {
            let node = &mut self.nodes[i];
            let start = node.link_free.max(self.now);
            if start - self.now > self.link.queue {
                self.net.queue_drops += 1;
                return;
            }
            let wire = Duration::from_nanos(data.len() as u64 * 1_000_000_000 / rate.max(1));
            depart = start + wire;
            node.link_free = depart;
        }
        let from = self.nodes[i].addr;
        if self.rng.chance(self.link.duplicate) {
            self.net.duplicated += 1;
            self.fly(from, to, depart, data.clone());
        }
        self.fly(from, to, depart, data);
    }

    /// Schedules one copy leaving at `depart`.
    fn fly(&mut self, from: SocketAddr, to: SocketAddr, depart: Instant, data: Vec<u8>) {
        let mut at = depart + self.link.delay;
        if !self.link.jitter.is_zero() {
            at += self.link.jitter.mul_f64(self.rng.unit());
        }
        if self.rng.chance(self.link.reorder) {
            at += self.link.reorder_delay;
        } else if self.link.fifo {
            let tail = self.path_tail.entry((from, to)).or_insert(at);
            at = at.max(*tail);
            *tail = at;
        }
        let seq = self.next_seq();
        self.flights.push(Reverse(Flight {
            at,
            seq,
            from,
            to,
            data,
        }));
    }

    /// The next instant anything happens.
    pub(crate) fn next_event(&self) -> Option<Instant> {
        let mut next = self.flights.peek().map(|f| f.0.at);
        for n in &self.nodes {
            if !n.up {
                continue;
            }
            if let Some(t) = n.ep.poll_timeout() {
                next = Some(next.map_or(t, |x| x.min(t)));
            }
        }
        next
    }

    /// Advances to the next instant something happens and processes it.
    /// False when nothing at all is scheduled.
    pub(crate) fn step(&mut self) -> bool {
        self.collect();
        let Some(next) = self.next_event() else {
            return false;
        };
        self.now = self.now.max(next);
        self.process_now();
        true
    }

    fn process_now(&mut self) {
        let now = self.now;
        if self.batch {
            for n in &mut self.nodes {
                n.ep.begin_batch();
            }
        }
        while self.flights.peek().is_some_and(|f| f.0.at <= now) {
            let Some(Reverse(f)) = self.flights.pop() else {
                break;
            };
            match self.by_addr.get(&f.to) {
                Some(&j) if self.nodes[j].up => {
                    self.net.delivered += 1;
                    self.nodes[j].ep.handle_datagram(f.from, &f.data, now);
                }
                _ => self.net.undeliverable += 1,
            }
        }
        if self.batch {
            for n in &mut self.nodes {
                n.ep.end_batch(now);
            }
        }
        for n in &mut self.nodes {
            if n.up && n.ep.poll_timeout().is_some_and(|t| t <= now) {
                n.ep.handle_timeout(now);
            }
        }
        self.collect();
        self.steps += 1;
    }

    /// Steps until `done(self)` is true, calling it after every step (it
    /// may drive the endpoints). Fails after `max_steps` steps or when
    /// virtual time passes `max_time`, or when nothing is scheduled and
    /// `done` is still false.
    pub(crate) fn run_until(
        &mut self,
        max_steps: u64,
        max_time: Duration,
        mut done: impl FnMut(&mut Sim) -> bool,
    ) -> Result<(), String> {
        let first = self.steps;
        loop {
            if done(self) {
                return Ok(());
            }
            if self.steps - first >= max_steps {
                return Err(format!(
                    "step limit {max_steps} hit at {:?}",
                    self.elapsed()
                ));
            }
            if self.elapsed() > max_time {
                return Err(format!("time limit {max_time:?} passed"));
            }
            if !self.step() {
                return Err(format!("network idle at {:?}", self.elapsed()));
            }
        }
    }

    /// Runs for `d` of virtual time (also across idle stretches), calling
    /// `tick` after every step.
    pub(crate) fn run_for(&mut self, d: Duration, max_steps: u64, mut tick: impl FnMut(&mut Sim)) {
        let end = self.now + d;
        let first = self.steps;
        while self.steps - first < max_steps {
            tick(self);
            self.collect();
            match self.next_event() {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    self.process_now();
                }
                _ => {
                    self.now = end;
                    self.process_now();
                    tick(self);
                    return;
                }
            }
        }
        panic!(
            "run_for: step limit {max_steps} hit at {:?}",
            self.elapsed()
        );
    }
}
