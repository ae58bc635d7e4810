//! NAT discovery and classification, sans-IO.
//!
//! A node learns its public address and the kind of its NAT ([`NatType`])
//! by sending small probes from the one UDP socket it will later punch
//! holes with and run RUDP on, so that what it learns is true of that
//! socket's mapping. The probes go to a tracker that listens on two UDP
//! ports of one IP (the *primary* `A` and the *alternate* `B`) and,
//! optionally, to a second tracker on another IP (`C`), which only ever
//! answers on the first tracker's behalf.
//!
//! [`Classifier`] never touches a socket or a clock, and knows nothing of
//! the message encoding: it emits abstract [`Probe`]s and consumes abstract
//! replies.
//!
//! # Driving it
//!
//! - Inputs: [`Classifier::handle_reply`] for every probe reply the socket
//!   receives, [`Classifier::handle_timeout`] once `now >=`
//!   [`Classifier::poll_timeout`].
//! - Outputs: after [`Classifier::new`] and after *every* input, drain
//!   [`Classifier::poll_probe`] onto the socket (to [`Probe::to`]), then
//!   re-read [`Classifier::poll_timeout`] and [`Classifier::result`].
//!
//! Once [`Classifier::result`] is `Some` it never changes; the classifier
//! then sends nothing more, has no deadline, and only counts the replies
//! that still trickle in ([`Stats::replies_late`]).
//!
//! # The tests
//!
//! In RFC 3489 terms, adapted to `A`/`B` on one IP and `C` on another. Every
//! reply carries the address the tracker saw the probe come from (the
//! *mapped* address); each test's probe is retransmitted every
//! [`Config::retry`] until it is answered or [`Config::attempts`]
//! transmissions went unanswered.
//!
//! 1. **Test 1**: a probe to `A`, answered from `A`. Its mapped address is
//!    `M1`, the public address. If `M1` is the local address, there is no
//!    NAT: [`NatType::Open`]. If no probe to `A` is ever answered (test 1,
//!    3 or 4), the node is *blocked*: [`NatType::Unknown`],
//!    [`Outcome::blocked`].
//! 2. **Test 2**: a probe to `B`, answered from `B`, mapped address `M2`.
//!    `M2 != M1` means the NAT maps each destination separately:
//!    [`NatType::Symmetric`]. If `B` never answers, the test is
//!    inconclusive and the result is what tests 3 and 4 say
//!    ([`Outcome::mapping_checked`] is then false).
//! 3. **Test 3** (only with `C`): a probe to `A` asking for the answer to
//!    come from the tracker on `C`'s IP, to which the node never sends. If
//!    it arrives, anyone may send to the mapping: [`NatType::FullCone`].
//! 4. **Test 4**: a probe to `A` asking for the answer to come from `B`. If
//!    it arrives, a port the node never sent to got through:
//!    [`NatType::AddressRestricted`]; if not, [`NatType::PortRestricted`].
//!
//! Tests 1, 3 and 4 run together at once; test 2 starts only when test 4 is
//! settled. Sending to `B` opens a port-restricted NAT's filter to `B`, so
//! test 4's answer from `B` would then get through and a port-restricted
//! NAT would pass for an address-restricted one. A reply to test 4 that
//! arrives after test 4 gave up is ignored for the same reason. So the
//! whole run takes about one round trip when test 4 is answered, and
//! `attempts × retry` plus one round trip when it is not.
//!
//! A reply counts only if it comes from where the test asked it to come
//! from: test 1 from `A`, test 2 from `B`, test 3 from `C`, test 4 from
//! `B`. The `from` address is what the NAT filtered on, so a reply to test
//! 4 sent from `A`, or to test 3 from `A`'s IP, proves nothing and is
//! rejected ([`Stats::replies_rejected`]) whatever it claims; a genuine
//! reply may still follow. Probe ids are unpredictable 64-bit nonces, so an
//! off-path sender cannot answer a probe it did not see.
//!
//! # Limits
//!
//! - Without `C`, a full cone cannot be told from an address-restricted
//!   NAT: both let `B` in. It is reported as
//!   [`NatType::AddressRestricted`], the stricter of the two.
//! - `A` and `B` share an IP, so a NAT whose mapping depends on the
//!   destination IP but not the port looks like a cone NAT here.
//! - `Open` needs the concrete local address (the interface's IP, not
//!   `0.0.0.0`). An unfiltered host without NAT then classifies as a full
//!   cone (with `C`) or address-restricted (without); a firewalled host
//!   without NAT still classifies as `Open`.
//! - The socket's NAT state must be fresh towards `B`: if the socket sent
//!   to `B` recently, a port-restricted NAT lets test 4 through.
//! - Loss can only hide replies. A lost test 3 or 4 makes the result
//!   stricter than the truth, a lost test 2 makes a symmetric NAT pass for
//!   a port-restricted one. With the default 4 attempts, 30% loss each way
//!   loses a whole test about 7% of the time; raise [`Config::attempts`]
//!   on bad links.
//! - When replies to probes sent to `A` disagree on the mapped address
//!   (the mapping was rebound in between), the first one wins.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use siphasher::sip::SipHasher24;

use crate::p2p::NatType;

#[cfg(test)]
pub(crate) mod sim;

pub mod punch;

/// Where the tracker listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Servers {
    /// The tracker's primary port (`A`).
    pub primary: SocketAddr,
    /// The tracker's alternate port (`B`): same IP as `primary`, another
    /// port.
    pub alternate: SocketAddr,
    /// The tracker on another IP (`C`), which answers on the first
    /// tracker's behalf when a probe asks for [`ReplyFrom::OtherIp`].
    /// Ignored if its IP is `primary`'s.
    pub other_ip: Option<SocketAddr>,
}

/// Where the tracker is asked to send its answer from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplyFrom {
    /// From the socket the probe arrived on.
    Same,
    /// From the tracker's other port on the same IP (`B` for a probe to
    /// `A`, `A` for a probe to `B`).
    OtherPort,
    /// Through the tracker on the other IP (`C`), which sends the answer
    /// from its own socket.
    OtherIp,
}

/// A probe to send: ask [`Probe::to`] which address it sees us at, quoting
/// [`Probe::id`], and to answer as [`Probe::reply_from`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Probe {
    /// The nonce the reply must quote. A retransmission repeats it.
    pub id: u64,
    /// The tracker socket to send the probe to.
    pub to: SocketAddr,
    /// Where the answer should come from.
    pub reply_from: ReplyFrom,
}

/// Timing of the probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Time between transmissions of an unanswered probe, and after the
    /// last one before the test gives up (200 ms).
    pub retry: Duration,
    /// Transmissions of a probe before its test gives up (4; 0 counts as
    /// 1).
    pub attempts: u32,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            retry: Duration::from_millis(200),
            attempts: 4,
        }
    }
}

/// What the classification found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Outcome {
    /// The NAT's kind; [`NatType::Unknown`] when blocked.
    pub nat: NatType,
    /// The public address of the socket as the primary tracker port saw
    /// it (the local address when `Open`); `None` when blocked.
    pub public: Option<SocketAddr>,
    /// No probe to the primary port was ever answered.
    pub blocked: bool,
    /// Test 2 was answered, so the mapping was compared across two
    /// destinations. False when the alternate port never answered (a
    /// symmetric NAT could not be ruled out), and when `Open` or blocked
    /// (test 2 does not apply).
    pub mapping_checked: bool,
}

/// Counters, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Probes queued for sending, retransmissions included.
    pub probes_sent: u64,
    /// Replies that settled a test.
    pub replies_accepted: u64,
    /// Replies quoting an id this classifier never sent.
    pub replies_unknown: u64,
    /// Replies from another address than the test asked for.
    pub replies_rejected: u64,
    /// Replies to a test already settled (a duplicate, an answer after the
    /// test gave up), or after the result was fixed.
    pub replies_late: u64,
}

/// Index of each test in `Classifier::tests`.
const T1: usize = 0;
const T2: usize = 1;
const T3: usize = 2;
const T4: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Not started yet.
    Waiting,
    /// Probing; `deadline` is the next retransmission or the give-up.
    Pending,
    /// Answered by a valid reply.
    Answered,
    /// Every transmission went unanswered.
    NoReply,
    /// Not needed (test 3 without `C`, test 1 once another probe to `A`
    /// told the mapped address).
    Skipped,
}

#[derive(Clone, Copy, Debug)]
struct Test {
    probe: Probe,
    /// Where a genuine reply comes from.
    expect: SocketAddr,
    state: State,
    sent: u32,
    deadline: Option<Instant>,
    observed: Option<SocketAddr>,
}

impl Test {
    fn settled(&self) -> bool {
        matches!(
            self.state,
            State::Answered | State::NoReply | State::Skipped
        )
    }
}

/// The sans-IO NAT classifier; see the [module docs](self).
#[derive(Debug)]
pub struct Classifier {
    local: SocketAddr,
    config: Config,
    tests: [Test; 4],
    queue: VecDeque<Probe>,
    /// The latest `now` seen.
    now: Instant,
    /// `M1`: the first mapped address any probe to `A` reported.
    mapped: Option<SocketAddr>,
    outcome: Option<Outcome>,
    stats: Stats,
}

impl Classifier {
    /// Starts a classification of the socket bound to `local` (its concrete
    /// address, for the `Open` check) and queues the first probes.
    /// `seed` must be unpredictable to others: the probe ids derive from
    /// it.
    pub fn new(
        local: SocketAddr,
        servers: Servers,
        config: Config,
        seed: u64,
        now: Instant,
    ) -> Classifier {
        let config = Config {
            attempts: config.attempts.max(1),
            ..config
        };
        let other_ip = servers.other_ip.filter(|c| c.ip() != servers.primary.ip());
        let ids = nonces(seed);
        let test = |i: usize, to: SocketAddr, reply_from, expect| Test {
            probe: Probe {
                id: ids[i],
                to,
                reply_from,
            },
            expect,
            state: State::Waiting,
            sent: 0,
            deadline: None,
            observed: None,
        };
        let (a, b) = (servers.primary, servers.alternate);
        let mut tests = [
            test(T1, a, ReplyFrom::Same, a),
            test(T2, b, ReplyFrom::Same, b),
            test(T3, a, ReplyFrom::OtherIp, other_ip.unwrap_or(a)),
            test(T4, a, ReplyFrom::OtherPort, b),
        ];
        if other_ip.is_none() {
            tests[T3].state = State::Skipped;
        }
        let mut c = Classifier {
            local,
            config,
            tests,
            queue: VecDeque::new(),
            now,
            mapped: None,
            outcome: None,
            stats: Stats::default(),
        };
        c.start(T1, now);
        if other_ip.is_some() {
            c.start(T3, now);
        }
        c.start(T4, now);
        c
    }

    /// The next probe to send now, if any (first in, first out).
    pub fn poll_probe(&mut self) -> Option<Probe> {
        self.queue.pop_front()
    }

    /// A reply quoting `id` arrived from `from`, saying the tracker saw the
    /// probe come from `observed`. Replies with unknown ids, from the wrong
    /// address, to settled tests or after the result are counted and
    /// otherwise ignored.
    pub fn handle_reply(&mut self, id: u64, observed: SocketAddr, from: SocketAddr, now: Instant) {
        self.now = self.now.max(now);
        let Some(i) = self.tests.iter().position(|t| t.probe.id == id) else {
            self.stats.replies_unknown += 1;
            return;
        };
        if self.outcome.is_some() || self.tests[i].state != State::Pending {
            self.stats.replies_late += 1;
            return;
        }
        if from != self.tests[i].expect {
            self.stats.replies_rejected += 1;
            return;
        }
        self.stats.replies_accepted += 1;
        let t = &mut self.tests[i];
        t.state = State::Answered;
        t.deadline = None;
        t.observed = Some(observed);
        if i != T2 && self.mapped.is_none() {
            self.mapped = Some(observed);
            let t1 = &mut self.tests[T1];
            if t1.state == State::Pending {
                t1.state = State::Skipped;
                t1.deadline = None;
            }
        }
        self.advance(self.now);
    }

    /// Retransmits probes and gives up on tests whose time has come; call
    /// once `now >=` [`Classifier::poll_timeout`] (earlier calls do
    /// nothing).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        let now = self.now;
        if self.outcome.is_some() {
            return;
        }
        for i in 0..self.tests.len() {
            let t = self.tests[i];
            if t.state != State::Pending || t.deadline.is_none_or(|d| d > now) {
                continue;
            }
            if t.sent < self.config.attempts {
                self.transmit(i, now);
            } else {
                self.tests[i].state = State::NoReply;
                self.tests[i].deadline = None;
            }
        }
        self.advance(now);
    }

    /// When [`Classifier::handle_timeout`] is next due; `None` once the
    /// result is fixed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.outcome.is_some() {
            return None;
        }
        self.tests.iter().filter_map(|t| t.deadline).min()
    }

    /// The result, once the classification is over; it never changes
    /// afterwards.
    pub fn result(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    fn start(&mut self, i: usize, now: Instant) {
        self.tests[i].state = State::Pending;
        self.transmit(i, now);
    }

    fn transmit(&mut self, i: usize, now: Instant) {
        let t = &mut self.tests[i];
        t.sent += 1;
        t.deadline = Some(now + self.config.retry);
        self.queue.push_back(t.probe);
        self.stats.probes_sent += 1;
    }

    /// Moves to the next step or to the result, as far as what is known
    /// allows.
    fn advance(&mut self, now: Instant) {
        if self.outcome.is_some() {
            return;
        }
        if self.mapped == Some(self.local) {
            return self.finish(NatType::Open, false);
        }
        let settled = |i: usize| self.tests[i].settled();
        // Test 2 must not open the filter to `B` while test 4 still waits
        // for an answer from `B`.
        if !settled(T4) {
            return;
        }
        let Some(m1) = self.mapped else {
            if settled(T1) && settled(T3) {
                self.finish(NatType::Unknown, false);
            }
            return;
        };
        match self.tests[T2].state {
            State::Waiting => return self.start(T2, now),
            State::Answered if self.tests[T2].observed != Some(m1) => {
                return self.finish(NatType::Symmetric, true);
            }
            _ => {}
        }
        if !settled(T2) || !settled(T3) {
            return;
        }
        let nat = if self.tests[T3].state == State::Answered {
            NatType::FullCone
        } else if self.tests[T4].state == State::Answered {
            NatType::AddressRestricted
        } else {
            NatType::PortRestricted
        };
        self.finish(nat, self.tests[T2].state == State::Answered);
    }

    fn finish(&mut self, nat: NatType, mapping_checked: bool) {
        let blocked = self.mapped.is_none();
        self.outcome = Some(Outcome {
            nat,
            public: self.mapped,
            blocked,
            mapping_checked,
        });
        self.queue.clear();
        for t in &mut self.tests {
            t.deadline = None;
        }
    }
}

/// Four distinct unpredictable probe ids derived from `seed`.
fn nonces(seed: u64) -> [u64; 4] {
    let mut s = seed;
    let key = (splitmix(&mut s), splitmix(&mut s));
    let sip = SipHasher24::new_with_keys(key.0, key.1);
    let mut ids = [0u64; 4];
    let mut counter = 0u64;
    for i in 0..ids.len() {
        loop {
            counter += 1;
            let id = sip.hash(&counter.to_le_bytes());
            if !ids[..i].contains(&id) {
                ids[i] = id;
                break;
            }
        }
    }
    ids
}

fn splitmix(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::sim::{Forge, Nat, Rng, Tracker};
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const A: &str = "1.1.1.1:3478";
    const B: &str = "1.1.1.1:3479";
    const C: &str = "2.2.2.2:3478";
    const PRIVATE: &str = "192.168.1.10:5000";
    /// The NAT's first mapping.
    const PUBLIC: &str = "9.9.9.9:40000";
    /// The node's address when it has no NAT.
    const OPEN: &str = "9.9.9.9:5000";

    const NATS: [NatType; 4] = [
        NatType::FullCone,
        NatType::AddressRestricted,
        NatType::PortRestricted,
        NatType::Symmetric,
    ];

    fn servers(with_c: bool) -> Servers {
        Servers {
            primary: addr(A),
            alternate: addr(B),
            other_ip: with_c.then(|| addr(C)),
        }
    }

    /// Which datagrams the network loses (probes and replies alike).
    enum Loss {
        None,
        /// The first `n` datagrams sent.
        First(u32),
        /// Each with this probability.
        Fraction(f64, Rng),
    }

    #[derive(Clone, Copy, Debug)]
    enum Payload {
        Probe { id: u64, reply_from: ReplyFrom },
        Reply { id: u64, observed: SocketAddr },
    }

    #[derive(Clone, Copy, Debug)]
    struct Datagram {
        at: Instant,
        from: SocketAddr,
        to: SocketAddr,
        payload: Payload,
    }

    /// One node behind a NAT, a tracker, and the datagrams between them,
    /// on a virtual clock.
    struct World {
        start: Instant,
        now: Instant,
        /// One-way delay of every datagram.
        delay: Duration,
        local: SocketAddr,
        nat: Nat,
        tracker: Tracker,
        loss: Loss,
        /// Datagrams sent, and how many of them were lost.
        datagrams: u64,
        lost: u64,
        flights: Vec<Datagram>,
        cl: Classifier,
        /// Every probe the classifier handed out, in order.
        sent: Vec<Probe>,
        /// Virtual time from the start to the result.
        took: Option<Duration>,
    }

    impl World {
        fn new(kind: NatType, with_c: bool) -> World {
            World::with_config(kind, with_c, Config::default())
        }

        fn with_config(kind: NatType, with_c: bool, config: Config) -> World {
            let local = addr(if kind == NatType::Open { OPEN } else { PRIVATE });
            let start = Instant::now();
            World {
                start,
                now: start,
                delay: Duration::from_millis(10),
                local,
                nat: Nat::new(kind, addr(PUBLIC).ip(), addr(PUBLIC).port()),
                tracker: Tracker::new(servers(with_c)),
                loss: Loss::None,
                datagrams: 0,
                lost: 0,
                flights: Vec::new(),
                cl: Classifier::new(local, servers(with_c), config, 42, start),
                sent: Vec::new(),
                took: None,
            }
        }

        fn lose(&mut self) -> bool {
            let lose = match &mut self.loss {
                Loss::None => false,
                Loss::First(n) => {
                    let lose = *n > 0;
                    *n = n.saturating_sub(1);
                    lose
                }
                Loss::Fraction(p, rng) => rng.chance(*p),
            };
            self.datagrams += 1;
            self.lost += u64::from(lose);
            lose
        }

        fn send(&mut self, from: SocketAddr, to: SocketAddr, payload: Payload) {
            if !self.lose() {
                let at = self.now + self.delay;
                self.flights.push(Datagram {
                    at,
                    from,
                    to,
                    payload,
                });
            }
        }

        /// Sends what the classifier queued, through the NAT.
        fn flush(&mut self) {
            while let Some(p) = self.cl.poll_probe() {
                self.sent.push(p);
                let src = self.nat.outbound(self.local, p.to);
                let payload = Payload::Probe {
                    id: p.id,
                    reply_from: p.reply_from,
                };
                self.send(src, p.to, payload);
            }
            if self.took.is_none() && self.cl.result().is_some() {
                self.took = Some(self.now - self.start);
            }
        }

        /// A reply from `from` reaches the NAT; the classifier gets it if
        /// the NAT lets it in.
        fn reply_arrives(
            &mut self,
            from: SocketAddr,
            to: SocketAddr,
            id: u64,
            observed: SocketAddr,
        ) {
            if self.nat.inbound(from, to) == Some(self.local) {
                self.cl.handle_reply(id, observed, from, self.now);
            }
        }

        fn deliver(&mut self, d: Datagram) {
            match d.payload {
                Payload::Probe { id, reply_from } => {
                    if let Some(a) = self.tracker.answer(d.to, d.from, id, reply_from) {
                        let payload = Payload::Reply {
                            id: a.id,
                            observed: a.observed,
                        };
                        self.send(a.from, a.to, payload);
                    }
                }
                Payload::Reply { id, observed } => self.reply_arrives(d.from, d.to, id, observed),
            }
        }

        /// Jumps to the next delivery or deadline and handles it; false
        /// when nothing is left to happen.
        fn step(&mut self) -> bool {
            self.flush();
            let next_flight = self.flights.iter().map(|d| d.at).min();
            let Some(next) = next_flight.into_iter().chain(self.cl.poll_timeout()).min() else {
                return false;
            };
            assert!(next - self.start < Duration::from_secs(120), "runaway");
            self.now = self.now.max(next);
            // In send order among datagrams due at the same instant.
            while let Some(i) = self.flights.iter().position(|d| d.at <= self.now) {
                let d = self.flights.remove(i);
                self.deliver(d);
            }
            if self.cl.poll_timeout().is_some_and(|t| t <= self.now) {
                self.cl.handle_timeout(self.now);
            }
            self.flush();
            true
        }

        fn run(&mut self) -> Outcome {
            for _ in 0..10_000 {
                if let Some(o) = self.cl.result() {
                    return *o;
                }
                assert!(self.step(), "stalled without a result");
            }
            panic!("no result after 10000 steps");
        }

        /// Runs the network dry (after the result).
        fn drain(&mut self) {
            while self.step() {}
        }

        fn probe(&self, to: &str, reply_from: ReplyFrom) -> Probe {
            *self
                .sent
                .iter()
                .find(|p| p.to == addr(to) && p.reply_from == reply_from)
                .expect("no such probe sent")
        }
    }

    fn expected(kind: NatType, with_c: bool) -> NatType {
        match kind {
            NatType::FullCone if !with_c => NatType::AddressRestricted,
            k => k,
        }
    }

    #[test]
    fn classifies_every_kind() {
        for with_c in [true, false] {
            for kind in NATS {
                let mut w = World::new(kind, with_c);
                let o = w.run();
                let want = Outcome {
                    nat: expected(kind, with_c),
                    public: Some(addr(PUBLIC)),
                    blocked: false,
                    mapping_checked: true,
                };
                assert_eq!(o, want, "{kind:?} with C: {with_c}");
                assert_eq!(w.cl.poll_timeout(), None);
                assert_eq!(w.cl.poll_probe(), None);
                let s = w.cl.stats();
                assert_eq!((s.replies_unknown, s.replies_rejected), (0, 0));
                // One probe per test: no loss, no retransmission.
                let tests = if with_c { 4 } else { 3 };
                let timeouts = w.sent.len() as u64 - tests;
                assert_eq!(s.probes_sent, w.sent.len() as u64);
                // A test that gets no answer is sent `attempts` times.
                let silent = match expected(kind, with_c) {
                    NatType::FullCone => 0,
                    NatType::AddressRestricted => u64::from(with_c),
                    _ => 1 + u64::from(with_c),
                };
                assert_eq!(timeouts, silent * 3, "{kind:?} with C: {with_c}");
            }
        }
    }

    #[test]
    fn open_without_nat() {
        for with_c in [true, false] {
            let mut w = World::new(NatType::Open, with_c);
            let o = w.run();
            assert_eq!(o.nat, NatType::Open);
            assert_eq!(o.public, Some(addr(OPEN)));
            assert!(!o.blocked && !o.mapping_checked);
            // Decided by the first answer from `A`: one round trip.
            assert_eq!(w.took, Some(2 * w.delay));
            assert_eq!(w.cl.poll_timeout(), None);
            w.drain();
            assert_eq!(w.cl.result(), Some(&o));
        }
    }

    #[test]
    fn blocked_when_nothing_answers() {
        for with_c in [true, false] {
            let mut w = World::new(NatType::PortRestricted, with_c);
            w.tracker.down = vec![addr(A), addr(B)];
            let o = w.run();
            let want = Outcome {
                nat: NatType::Unknown,
                public: None,
                blocked: true,
                mapping_checked: false,
            };
            assert_eq!(o, want);
            let c = Config::default();
            assert_eq!(w.took, Some(c.retry * c.attempts));
            let tests = if with_c { 3 } else { 2 };
            assert_eq!(w.cl.stats().probes_sent, u64::from(c.attempts) * tests);
            assert!(w.sent.iter().all(|p| p.to == addr(A)), "test 2 never runs");
        }
    }

    #[test]
    fn takes_a_round_trip_plus_timeouts() {
        let c = Config::default();
        let rtt = Duration::from_millis(20);
        let give_up = c.retry * c.attempts;
        // (kind, with C, how long): test 4 answered lets test 2 start after
        // one round trip; test 3 or 4 unanswered costs the give-up time.
        let cases = [
            (NatType::FullCone, true, 2 * rtt),
            (NatType::AddressRestricted, true, give_up),
            (NatType::AddressRestricted, false, 2 * rtt),
            (NatType::PortRestricted, true, give_up + rtt),
            (NatType::PortRestricted, false, give_up + rtt),
            (NatType::Symmetric, true, give_up + rtt),
            (NatType::Symmetric, false, give_up + rtt),
        ];
        for (kind, with_c, took) in cases {
            let mut w = World::new(kind, with_c);
            w.run();
            assert_eq!(w.took, Some(took), "{kind:?} with C: {with_c}");
        }
    }

    #[test]
    fn survives_losing_the_first_probes() {
        for with_c in [true, false] {
            for kind in NATS {
                let mut w = World::new(kind, with_c);
                // The whole first round of probes, and then some.
                w.loss = Loss::First(4);
                let o = w.run();
                assert_eq!(o.nat, expected(kind, with_c), "{kind:?} with C: {with_c}");
                assert_eq!(o.public, Some(addr(PUBLIC)));
                assert_eq!(w.lost, 4);
            }
        }
    }

    #[test]
    fn stable_under_seeded_loss() {
        // 30% loss each way: a round trip fails about half the time, so a
        // test needs many attempts before "no answer" means the NAT.
        let config = Config {
            retry: Duration::from_millis(200),
            attempts: 16,
        };
        let (mut lost, mut datagrams) = (0, 0);
        for seed in 0..25 {
            for with_c in [true, false] {
                for kind in NATS.into_iter().chain([NatType::Open]) {
                    let mut w = World::with_config(kind, with_c, config);
                    w.loss = Loss::Fraction(0.3, Rng::new(seed));
                    let o = w.run();
                    let want = expected(kind, with_c);
                    assert_eq!(o.nat, want, "{kind:?} with C: {with_c}, seed {seed}");
                    assert!(!o.blocked);
                    if want != NatType::Open {
                        assert_eq!(o.public, Some(addr(PUBLIC)));
                        assert!(o.mapping_checked);
                    }
                    w.drain();
                    assert_eq!(w.cl.result(), Some(&o), "late replies change nothing");
                    lost += w.lost;
                    datagrams += w.datagrams;
                }
            }
        }
        let rate = lost as f64 / datagrams as f64;
        assert!((0.25..0.35).contains(&rate), "lost {lost} of {datagrams}");
    }

    #[test]
    fn loss_with_default_attempts_errs_only_towards_stricter() {
        // With 4 attempts, 30% loss sometimes hides a whole test. What may
        // go wrong is bounded: a test 3 or 4 hidden reports a stricter
        // filter, a test 2 hidden lets a symmetric NAT pass for a
        // port-restricted one, and everything hidden is "blocked".
        let rank = |n: NatType| match n {
            NatType::FullCone => 0,
            NatType::AddressRestricted => 1,
            NatType::PortRestricted => 2,
            _ => 3,
        };
        let mut right = 0;
        let mut runs = 0;
        for seed in 0..50 {
            for kind in NATS {
                let mut w = World::new(kind, true);
                w.loss = Loss::Fraction(0.3, Rng::new(seed));
                let o = w.run();
                runs += 1;
                if o.nat == kind {
                    right += 1;
                } else if o.blocked {
                    assert_eq!(o.nat, NatType::Unknown);
                } else if kind == NatType::Symmetric {
                    assert_eq!(o.nat, NatType::PortRestricted, "seed {seed}");
                    assert!(!o.mapping_checked);
                } else {
                    assert!(
                        rank(o.nat) > rank(kind),
                        "{kind:?} as {:?}, seed {seed}",
                        o.nat
                    );
                }
            }
        }
        assert!(right * 10 >= runs * 8, "{right} of {runs} right");
    }

    #[test]
    fn late_replies_change_nothing() {
        // Replies take longer than the retry interval: every answered probe
        // was sent twice, and the second answers come late, some after the
        // result.
        let mut after_result = 0;
        for with_c in [true, false] {
            for kind in NATS {
                let mut w = World::new(kind, with_c);
                w.delay = Duration::from_millis(150);
                let o = w.run();
                assert_eq!(o.nat, expected(kind, with_c), "{kind:?} with C: {with_c}");
                let late = w.cl.stats().replies_late;
                assert!(late > 0, "{kind:?} with C: {with_c}");
                w.drain();
                assert_eq!(w.cl.result(), Some(&o));
                assert_eq!(w.cl.poll_probe(), None);
                after_result += w.cl.stats().replies_late - late;
            }
        }
        assert!(after_result > 0);
    }

    #[test]
    fn answers_to_silent_tests_after_the_result_are_ignored() {
        // Port-restricted: test 3 and 4 went unanswered. Their genuine
        // answers now get through the NAT (it has sent to `B` since) and
        // must not flip the result.
        let mut w = World::new(NatType::PortRestricted, true);
        let o = w.run();
        assert_eq!(o.nat, NatType::PortRestricted);
        let t4 = w.probe(A, ReplyFrom::OtherPort);
        let t3 = w.probe(A, ReplyFrom::OtherIp);
        assert_eq!(w.nat.inbound(addr(B), addr(PUBLIC)), Some(addr(PRIVATE)));
        w.cl.handle_reply(t4.id, addr(PUBLIC), addr(B), w.now);
        w.cl.handle_reply(t3.id, addr(PUBLIC), addr(C), w.now);
        assert_eq!(w.cl.result(), Some(&o));
        assert_eq!(w.cl.stats().replies_late, 2);
        assert_eq!(w.cl.poll_timeout(), None);
        assert_eq!(w.cl.poll_probe(), None);
    }

    #[test]
    fn test_4_answer_after_test_2_started_is_ignored() {
        // Once test 4 gave up and test 2 sent to `B`, a port-restricted NAT
        // lets `B` in: an answer to test 4 arriving now proves nothing.
        let mut w = World::new(NatType::PortRestricted, false);
        while !w.sent.iter().any(|p| p.to == addr(B)) {
            assert!(w.step());
        }
        assert_eq!(w.cl.result(), None);
        let t4 = w.probe(A, ReplyFrom::OtherPort);
        w.reply_arrives(addr(B), addr(PUBLIC), t4.id, addr(PUBLIC));
        assert_eq!(w.cl.stats().replies_late, 1, "the NAT let it in");
        assert_eq!(w.run().nat, NatType::PortRestricted);
    }

    #[test]
    fn forged_other_port_answer_is_rejected() {
        for (kind, with_c) in [
            (NatType::AddressRestricted, true),
            (NatType::AddressRestricted, false),
            (NatType::FullCone, false),
        ] {
            let mut w = World::new(kind, with_c);
            w.tracker.forge = Forge::OtherPortFromSame;
            let o = w.run();
            assert_eq!(o.nat, NatType::PortRestricted, "{kind:?} with C: {with_c}");
            assert!(w.cl.stats().replies_rejected >= 1);
        }
    }

    #[test]
    fn forged_other_ip_answer_is_rejected() {
        let mut w = World::new(NatType::FullCone, true);
        w.tracker.forge = Forge::OtherIpFromPrimaryIp;
        let o = w.run();
        assert_eq!(o.nat, NatType::AddressRestricted);
        assert!(w.cl.stats().replies_rejected >= 1);
    }

    #[test]
    fn a_forgery_does_not_spoil_a_genuine_answer() {
        // A wrong-source answer to test 4 is rejected, and the genuine one
        // that follows still counts.
        let mut w = World::new(NatType::AddressRestricted, false);
        let t4 =
            w.cl.poll_probe()
                .into_iter()
                .chain(w.cl.poll_probe())
                .find(|p| p.reply_from == ReplyFrom::OtherPort)
                .unwrap();
        w.cl.handle_reply(t4.id, addr(PUBLIC), addr(A), w.now);
        w.cl.handle_reply(t4.id, addr(PUBLIC), addr("3.3.3.3:3479"), w.now);
        assert_eq!(w.cl.stats().replies_rejected, 2);
        w.cl.handle_reply(t4.id, addr(PUBLIC), addr(B), w.now);
        assert_eq!(w.cl.stats().replies_accepted, 1);
    }

    #[test]
    fn alternate_port_down_is_inconclusive() {
        // `B` never answers: test 2 is inconclusive and test 4 fails, so
        // the result is what test 3 says, and a symmetric NAT goes unseen.
        for (kind, with_c, nat) in [
            (NatType::FullCone, true, NatType::FullCone),
            (NatType::AddressRestricted, true, NatType::PortRestricted),
            (NatType::PortRestricted, false, NatType::PortRestricted),
            (NatType::Symmetric, true, NatType::PortRestricted),
        ] {
            let mut w = World::new(kind, with_c);
            w.tracker.down = vec![addr(B)];
            let o = w.run();
            assert_eq!(o.nat, nat, "{kind:?} with C: {with_c}");
            assert_eq!(o.public, Some(addr(PUBLIC)));
            assert!(!o.blocked && !o.mapping_checked);
        }
    }

    #[test]
    fn other_tracker_down_means_no_full_cone() {
        let mut w = World::new(NatType::FullCone, true);
        w.tracker.down = vec![addr(C)];
        assert_eq!(w.run().nat, NatType::AddressRestricted);
    }

    #[test]
    fn any_answer_from_the_primary_tells_the_mapping() {
        // Test 1 is lost for good, test 4 answers: its mapped address is
        // enough, and test 1 stops.
        let now = Instant::now();
        let mut cl = Classifier::new(addr(PRIVATE), servers(false), Config::default(), 1, now);
        let probes: Vec<Probe> = std::iter::from_fn(|| cl.poll_probe()).collect();
        assert_eq!(probes.len(), 2);
        assert_eq!(
            (probes[0].to, probes[0].reply_from),
            (addr(A), ReplyFrom::Same)
        );
        assert_eq!(
            (probes[1].to, probes[1].reply_from),
            (addr(A), ReplyFrom::OtherPort)
        );
        cl.handle_reply(probes[1].id, addr(PUBLIC), addr(B), now);
        let t2 = cl.poll_probe().unwrap();
        assert_eq!((t2.to, t2.reply_from), (addr(B), ReplyFrom::Same));
        assert_eq!(cl.poll_probe(), None);
        // Only test 2 is left to time out.
        assert_eq!(cl.poll_timeout(), Some(now + Config::default().retry));
        cl.handle_reply(t2.id, addr(PUBLIC), addr(B), now);
        let o = cl.result().unwrap();
        assert_eq!(
            (o.nat, o.public),
            (NatType::AddressRestricted, Some(addr(PUBLIC)))
        );
        // Test 1's answer, finally, is late.
        cl.handle_reply(probes[0].id, addr(PUBLIC), addr(A), now);
        assert_eq!(cl.stats().replies_late, 1);
    }

    #[test]
    fn symmetric_is_decided_without_waiting_for_test_3() {
        let now = Instant::now();
        let mut cl = Classifier::new(addr(PRIVATE), servers(true), Config::default(), 1, now);
        let probes: Vec<Probe> = std::iter::from_fn(|| cl.poll_probe()).collect();
        assert_eq!(probes.len(), 3);
        let t1 = probes[0];
        let t4 = probes[2];
        assert_eq!(t4.reply_from, ReplyFrom::OtherPort);
        cl.handle_reply(t1.id, addr(PUBLIC), addr(A), now);
        cl.handle_reply(t4.id, addr(PUBLIC), addr(B), now);
        let t2 = cl.poll_probe().unwrap();
        cl.handle_reply(t2.id, addr("9.9.9.9:40001"), addr(B), now);
        let o = cl.result().unwrap();
        assert_eq!(o.nat, NatType::Symmetric);
        assert_eq!(o.public, Some(addr(PUBLIC)));
    }

    #[test]
    fn unknown_ids_are_counted_and_ignored() {
        let mut w = World::new(NatType::PortRestricted, true);
        let ids: Vec<u64> = std::iter::from_fn(|| w.cl.poll_probe())
            .map(|p| p.id)
            .collect();
        let stranger = (1..).find(|i| !ids.contains(i)).unwrap();
        w.cl.handle_reply(stranger, addr(PUBLIC), addr(B), w.now);
        assert_eq!(w.cl.stats().replies_unknown, 1);
        assert_eq!(w.cl.stats().replies_accepted, 0);
        assert_eq!(w.cl.result(), None);
    }

    #[test]
    fn retransmissions_repeat_the_id_and_stop_at_the_limit() {
        let now = Instant::now();
        let config = Config {
            retry: Duration::from_millis(100),
            attempts: 3,
        };
        let mut cl = Classifier::new(addr(PRIVATE), servers(false), config, 9, now);
        let first: Vec<Probe> = std::iter::from_fn(|| cl.poll_probe()).collect();
        let mut t = now;
        for round in 1..3 {
            t = cl.poll_timeout().unwrap();
            assert_eq!(t, now + config.retry * round);
            // Early calls do nothing.
            cl.handle_timeout(t - Duration::from_millis(1));
            assert_eq!(cl.poll_probe(), None);
            cl.handle_timeout(t);
            let again: Vec<Probe> = std::iter::from_fn(|| cl.poll_probe()).collect();
            assert_eq!(again, first);
        }
        cl.handle_timeout(cl.poll_timeout().unwrap());
        assert!(cl.result().unwrap().blocked);
        assert!(t < now + config.retry * 3);
        assert_eq!(cl.stats().probes_sent, 6);
    }

    #[test]
    fn zero_attempts_means_one() {
        let now = Instant::now();
        let config = Config {
            retry: Duration::from_millis(100),
            attempts: 0,
        };
        let mut cl = Classifier::new(addr(PRIVATE), servers(false), config, 9, now);
        assert_eq!(std::iter::from_fn(|| cl.poll_probe()).count(), 2);
        cl.handle_timeout(now + config.retry);
        assert!(cl.result().unwrap().blocked);
    }

    #[test]
    fn other_ip_on_the_primary_ip_is_not_used() {
        let now = Instant::now();
        let s = Servers {
            other_ip: Some(addr("1.1.1.1:5000")),
            ..servers(true)
        };
        let mut cl = Classifier::new(addr(PRIVATE), s, Config::default(), 3, now);
        let probes: Vec<Probe> = std::iter::from_fn(|| cl.poll_probe()).collect();
        assert!(probes.iter().all(|p| p.reply_from != ReplyFrom::OtherIp));
    }

    #[test]
    fn ids_are_distinct_and_seeded() {
        let collect = |seed| {
            let mut cl = Classifier::new(
                addr(PRIVATE),
                servers(true),
                Config::default(),
                seed,
                Instant::now(),
            );
            std::iter::from_fn(move || cl.poll_probe())
                .map(|p| p.id)
                .collect::<Vec<u64>>()
        };
        let a = collect(1);
        assert_eq!(a.len(), 3);
        assert!(a[0] != a[1] && a[1] != a[2] && a[0] != a[2]);
        assert_eq!(a, collect(1));
        assert_ne!(a, collect(2));
        assert_eq!(nonces(5).len(), 4);
    }
}
