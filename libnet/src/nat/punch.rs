//! UDP hole punching between two peers, sans-IO.
//!
//! Both peers learn each other's addresses through the tracker (the
//! original's six steps: A asks the tracker, the tracker tells B about A,
//! B asks back so A learns about B), then both run a [`Punch`] on the
//! socket they will carry RUDP on:
//!
//! - every `interval`, send a probe to each address the peer may be
//!   reachable at: its public address as the tracker saw it, its local
//!   address (same LAN), and, for a symmetric peer, the next `predict`
//!   ports above its public one (many NATs allocate ports in sequence);
//! - a probe that arrives proves the way in from its source address, which
//!   may differ from every candidate (a symmetric NAT's new mapping): from
//!   then on, probes go only there, saying `heard`;
//! - a probe saying `heard` proves the way out as well: the path works
//!   both ways and the punch is done. A last few probes tell the peer, and
//!   until the peer goes quiet every probe it still sends (it missed them)
//!   is answered, a bounded number of times.
//!
//! A probe opens our own NAT towards the address it goes to, so whichever
//! probe gets through first, the other side's answers to its source pass
//! our NAT's filter: cone, restricted and port-restricted NATs all punch;
//! a symmetric NAT punches with cone and address-restricted peers; two
//! symmetric NATs, or symmetric with port-restricted, only by luck of
//! prediction.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::p2p::{NatType, NodeId};

/// Punch timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Time between rounds of probes (50 ms).
    pub interval: Duration,
    /// Give up after this long (5 s).
    pub timeout: Duration,
    /// Ports above a symmetric peer's public port to probe as well (8).
    pub predict: u16,
    /// Probes sent to the confirmed address once done, so the peer hears
    /// `heard` too (3).
    pub linger: u32,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            interval: Duration::from_millis(50),
            timeout: Duration::from_secs(5),
            predict: 8,
            linger: 3,
        }
    }
}

/// What the peer is, as the tracker described it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddrs {
    /// Its identity (probes from anyone else are ignored).
    pub id: NodeId,
    /// Its public UDP address, as a tracker saw it.
    pub public: SocketAddr,
    /// Its UDP address on its own network.
    pub local: SocketAddr,
    /// Its NAT, as it classified it.
    pub nat: NatType,
}

/// A probe to send: the wire's `PunchProbe { token, from, heard }` to `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Where to.
    pub to: SocketAddr,
    /// The attempt's token.
    pub token: u64,
    /// Our identity.
    pub from: NodeId,
    /// We have heard the peer.
    pub heard: bool,
}

/// How a punch ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The path works both ways with the peer at this address.
    Direct(SocketAddr),
    /// Nothing got through both ways before the timeout.
    Failed,
}

/// See the module docs.
#[derive(Debug)]
pub struct Punch {
    config: Config,
    token: u64,
    me: NodeId,
    peer: NodeId,
    targets: Vec<SocketAddr>,
    heard: Option<SocketAddr>,
    outcome: Option<Outcome>,
    next_send: Instant,
    deadline: Instant,
    lingering: u32,
    /// Once done: probes from the peer still to answer (bounded, so two
    /// finished sides cannot keep answering each other).
    answers_left: u32,
    /// Once done: listen for the peer's probes until then (it may not have
    /// heard our `heard` yet; each of its probes extends this).
    quiet_until: Option<Instant>,
    ignored: u64,
}

impl Punch {
    /// Starts punching to `peer` for attempt `token`; the first probes are
    /// due at once.
    pub fn new(token: u64, me: NodeId, peer: PeerAddrs, config: Config, now: Instant) -> Punch {
        let mut targets = vec![peer.public];
        if peer.local != peer.public {
            targets.push(peer.local);
        }
        if peer.nat == NatType::Symmetric {
            for k in 1..=config.predict {
                if let Some(port) = peer.public.port().checked_add(k) {
                    targets.push(SocketAddr::new(peer.public.ip(), port));
                }
            }
        }
        Punch {
            config,
            token,
            me,
            peer: peer.id,
            targets,
            heard: None,
            outcome: None,
            next_send: now,
            deadline: now + config.timeout,
            lingering: 0,
            answers_left: 0,
            quiet_until: None,
            ignored: 0,
        }
    }

    /// The addresses probed until the peer is heard.
    pub fn targets(&self) -> &[SocketAddr] {
        &self.targets
    }

    /// Probes due at `now` (empty if none).
    pub fn poll_probes(&mut self, now: Instant) -> Vec<Probe> {
        if self.lingering == 0 && self.quiet_until.is_some_and(|q| now >= q) {
            self.quiet_until = None;
        }
        if now < self.next_send {
            return Vec::new();
        }
        let probe = |to| Probe {
            to,
            token: self.token,
            from: self.me,
            heard: self.heard.is_some(),
        };
        let out = match (self.outcome, self.heard) {
            (Some(Outcome::Failed), _) => Vec::new(),
            (Some(Outcome::Direct(to)), _) => {
                if self.lingering == 0 {
                    return Vec::new();
                }
                self.lingering -= 1;
                vec![probe(to)]
            }
            (None, Some(to)) => vec![probe(to)],
            (None, None) => self.targets.iter().map(|&t| probe(t)).collect(),
        };
        self.next_send = now + self.config.interval;
        out
    }

    /// A `PunchProbe` arrived from `from` (its source address as the
    /// socket saw it).
    pub fn handle_probe(
        &mut self,
        from: SocketAddr,
        token: u64,
        sender: NodeId,
        heard: bool,
        now: Instant,
    ) {
        if token != self.token || sender != self.peer {
            self.ignored += 1;
            return;
        }
        match self.outcome {
            None => {}
            // Done, but the peer is still probing: it has not seen our
            // `heard` (lost). Answer, a bounded number of times.
            Some(Outcome::Direct(_)) if self.answers_left > 0 => {
                self.answers_left -= 1;
                if self.lingering == 0 {
                    self.lingering = 1;
                    self.next_send = now;
                }
                self.quiet_until = Some(now + 2 * self.config.interval);
                return;
            }
            Some(_) => {
                self.ignored += 1;
                return;
            }
        }
        if self.heard.is_none() {
            self.heard = Some(from);
            // Answer at once: the peer is probing now.
            self.next_send = now;
        }
        if heard {
            self.outcome = Some(Outcome::Direct(from));
            self.lingering = self.config.linger;
            self.answers_left = 3 * self.config.linger;
            self.quiet_until = Some(now + 2 * self.config.interval);
            self.next_send = now;
        }
    }

    /// Gives up once the timeout has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.outcome.is_none() && now >= self.deadline {
            self.outcome = Some(Outcome::Failed);
        }
    }

    /// When to call [`Punch::poll_probes`] / [`Punch::handle_timeout`]
    /// next; `None` once done, the last probes are out and the peer has
    /// been quiet for two intervals.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.outcome {
            None => Some(self.next_send.min(self.deadline)),
            Some(Outcome::Direct(_)) if self.lingering > 0 => Some(self.next_send),
            Some(Outcome::Direct(_)) => self.quiet_until,
            Some(Outcome::Failed) => None,
        }
    }

    /// How it ended, once it has.
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }

    /// Probes ignored (another attempt, another sender, or after the end).
    pub fn ignored(&self) -> u64 {
        self.ignored
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::sim::Nat;
    use std::net::IpAddr;

    /// One side: a private address behind `nat` (None: public host).
    struct Side {
        private: SocketAddr,
        nat: Option<Nat>,
        punch: Punch,
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    /// Runs two punches against each other through their NATs, delivering
    /// every probe at once (dropping each with `loss` in 0..=100 using a
    /// fixed pattern), until both end. Returns the outcomes.
    fn run(kind_a: NatType, kind_b: NatType, loss: u32) -> (Outcome, Outcome) {
        run_with(kind_a, kind_b, loss, 0)
    }

    /// [`run`] with a one-way delay of `delay_ms` plus 0..=4 ms of jitter
    /// (so probes also overtake each other). A probe passes the sender's
    /// NAT when sent and the receiver's NAT when it arrives.
    fn run_with(kind_a: NatType, kind_b: NatType, loss: u32, delay_ms: u64) -> (Outcome, Outcome) {
        let tracker: SocketAddr = "9.9.9.9:3478".parse().expect("addr");
        let mk = |k: NatType, n: u8| -> (SocketAddr, Option<Nat>, SocketAddr) {
            let private: SocketAddr = format!("10.0.{n}.2:5000").parse().expect("addr");
            if k == NatType::Open {
                return (private, None, private);
            }
            let mut nat = Nat::new(k, ip(&format!("203.0.113.{n}")), 40000);
            // The tracker saw each through its NAT (Whoami).
            let public = nat.outbound(private, tracker);
            (private, Some(nat), public)
        };
        let (pa, na, pub_a) = mk(kind_a, 1);
        let (pb, nb, pub_b) = mk(kind_b, 2);
        let now = Instant::now();
        let cfg = Config::default();
        let mut a = Side {
            private: pa,
            nat: na,
            punch: Punch::new(
                7,
                1,
                PeerAddrs {
                    id: 2,
                    public: pub_b,
                    local: pb,
                    nat: kind_b,
                },
                cfg,
                now,
            ),
        };
        let mut b = Side {
            private: pb,
            nat: nb,
            punch: Punch::new(
                7,
                2,
                PeerAddrs {
                    id: 1,
                    public: pub_a,
                    local: pa,
                    nat: kind_a,
                },
                cfg,
                now,
            ),
        };
        let mut t = now;
        let mut counter = 0u32;
        // Probes on the wire: (arrival, to side b?, source address, probe).
        let mut wire: Vec<(Instant, bool, SocketAddr, Probe)> = Vec::new();
        let mut send = |from: &mut Side, to_b: bool, t: Instant, wire: &mut Vec<_>| {
            for p in from.punch.poll_probes(t) {
                counter += 1;
                if counter * 37 % 100 < loss {
                    continue;
                }
                let src = match &mut from.nat {
                    Some(n) => n.outbound(from.private, p.to),
                    None => from.private,
                };
                let jitter = u64::from(counter % 5);
                let at =
                    t + Duration::from_millis(delay_ms + if delay_ms > 0 { jitter } else { 0 });
                wire.push((at, to_b, src, p));
            }
        };
        let deliver = |to: &mut Side, src: SocketAddr, p: Probe, t: Instant| {
            let dst = match &to.nat {
                Some(n) => n.inbound(src, p.to),
                None => (p.to == to.private).then_some(to.private),
            };
            if dst == Some(to.private) {
                to.punch.handle_probe(src, p.token, p.from, p.heard, t);
            }
        };
        for _ in 0..100_000 {
            let mut i = 0;
            while i < wire.len() {
                if wire[i].0 <= t {
                    let (_, to_b, src, p) = wire.swap_remove(i);
                    deliver(if to_b { &mut b } else { &mut a }, src, p, t);
                } else {
                    i += 1;
                }
            }
            send(&mut a, true, t, &mut wire);
            send(&mut b, false, t, &mut wire);
            if delay_ms == 0 {
                // Instant delivery within the same step.
                for (_, to_b, src, p) in std::mem::take(&mut wire) {
                    deliver(if to_b { &mut b } else { &mut a }, src, p, t);
                }
                send(&mut a, true, t, &mut wire);
                send(&mut b, false, t, &mut wire);
                for (_, to_b, src, p) in std::mem::take(&mut wire) {
                    deliver(if to_b { &mut b } else { &mut a }, src, p, t);
                }
            }
            a.punch.handle_timeout(t);
            b.punch.handle_timeout(t);
            let next = [a.punch.poll_timeout(), b.punch.poll_timeout()]
                .into_iter()
                .chain(wire.iter().map(|w| Some(w.0)))
                .flatten()
                .min();
            match next {
                Some(n) => t = n.max(t + Duration::from_millis(1)),
                None => break,
            }
        }
        (
            a.punch.outcome().expect("a ended"),
            b.punch.outcome().expect("b ended"),
        )
    }

    fn direct(o: (Outcome, Outcome)) -> bool {
        matches!(o, (Outcome::Direct(_), Outcome::Direct(_)))
    }

    const KINDS: [NatType; 5] = [
        NatType::Open,
        NatType::FullCone,
        NatType::AddressRestricted,
        NatType::PortRestricted,
        NatType::Symmetric,
    ];

    /// Direct is possible unless one side is symmetric and the other
    /// port-restricted or symmetric (the model's symmetric NAT allocates
    /// ports in sequence, so prediction can still win there: we only
    /// require the theoretically possible pairs).
    fn possible(a: NatType, b: NatType) -> bool {
        let hard = |x: NatType, y: NatType| {
            x == NatType::Symmetric && matches!(y, NatType::PortRestricted | NatType::Symmetric)
        };
        !(hard(a, b) || hard(b, a))
    }

    #[test]
    fn every_pair_that_theory_allows_punches() {
        for a in KINDS {
            for b in KINDS {
                let o = run(a, b, 0);
                if possible(a, b) {
                    assert!(direct(o), "{a:?} <-> {b:?}: {o:?}");
                }
                // Both sides agree: either both direct or both failed.
                assert_eq!(
                    matches!(o.0, Outcome::Direct(_)),
                    matches!(o.1, Outcome::Direct(_)),
                    "{a:?} <-> {b:?}: {o:?}"
                );
            }
        }
    }

    #[test]
    fn punching_survives_loss() {
        for a in KINDS {
            for b in KINDS {
                if possible(a, b) {
                    let o = run(a, b, 30);
                    assert!(direct(o), "{a:?} <-> {b:?} at 30% loss: {o:?}");
                }
            }
        }
    }

    #[test]
    fn punching_survives_delay_jitter_and_loss() {
        // 40 ms one way (RTT 80 ms, close to a probe round's 50 ms and
        // beyond it), with jitter that reorders probes, with and without
        // 20% loss.
        for (delay, loss) in [(40, 0), (40, 20), (120, 0)] {
            for a in KINDS {
                for b in KINDS {
                    if possible(a, b) {
                        let o = run_with(a, b, loss, delay);
                        assert!(direct(o), "{a:?} <-> {b:?}, {delay} ms, {loss}%: {o:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn probes_of_other_attempts_or_senders_are_ignored() {
        let now = Instant::now();
        let peer = PeerAddrs {
            id: 2,
            public: "203.0.113.2:40000".parse().expect("addr"),
            local: "10.0.2.2:5000".parse().expect("addr"),
            nat: NatType::FullCone,
        };
        let mut p = Punch::new(7, 1, peer, Config::default(), now);
        let from = peer.public;
        p.handle_probe(from, 8, 2, true, now);
        p.handle_probe(from, 7, 3, true, now);
        assert_eq!(p.outcome(), None);
        assert_eq!(p.ignored(), 2);
        p.handle_probe(from, 7, 2, true, now);
        assert_eq!(p.outcome(), Some(Outcome::Direct(from)));
        // Lingering probes say `heard`, then it goes quiet.
        let mut sent = 0;
        let mut t = now;
        while let Some(n) = p.poll_timeout() {
            t = n.max(t);
            for probe in p.poll_probes(t) {
                assert!(probe.heard && probe.to == from);
                sent += 1;
            }
        }
        assert_eq!(sent, 3);
    }

    /// The cause of a flaky lab run: at ~19% loss per probe both ways, all
    /// three lingering probes of the side that finished were lost and the
    /// peer, still waiting for `heard`, timed out. A finished side now
    /// answers the peer's probes until it goes quiet.
    #[test]
    fn a_finished_side_answers_a_peer_that_missed_its_last_probes() {
        let now = Instant::now();
        let peer = PeerAddrs {
            id: 2,
            public: "203.0.113.2:40000".parse().expect("addr"),
            local: "10.0.2.2:5000".parse().expect("addr"),
            nat: NatType::PortRestricted,
        };
        let from = peer.public;
        let mut p = Punch::new(7, 1, peer, Config::default(), now);
        p.handle_probe(from, 7, 2, true, now);
        let mut t = now;
        for _ in 0..3 {
            t = p.poll_timeout().expect("lingering");
            assert_eq!(p.poll_probes(t).len(), 1); // all three lost
        }
        // The peer has not heard us and keeps probing.
        t += Duration::from_millis(40);
        p.handle_probe(from, 7, 2, true, t);
        let next = p.poll_timeout().expect("still listening");
        let answer = p.poll_probes(next);
        assert_eq!(answer.len(), 1);
        assert!(answer[0].heard && answer[0].to == from);
        // Then quiet: it stops after two intervals without a probe.
        let mut end = next;
        while let Some(n) = p.poll_timeout() {
            end = n;
            assert!(p.poll_probes(n).is_empty());
        }
        assert!(end <= next + Duration::from_millis(100));
        // Answers are bounded: a peer probing forever is not answered
        // forever.
        let mut answered = 0;
        for k in 0..100u32 {
            let at = end + Duration::from_millis(10 * u64::from(k + 1));
            p.handle_probe(from, 7, 2, true, at);
            answered += p.poll_probes(at).len();
        }
        assert!(answered <= 9, "{answered}");
    }

    #[test]
    fn an_unreachable_peer_fails_at_the_timeout() {
        let now = Instant::now();
        let peer = PeerAddrs {
            id: 2,
            public: "203.0.113.2:40000".parse().expect("addr"),
            local: "203.0.113.2:40000".parse().expect("addr"),
            nat: NatType::Symmetric,
        };
        let mut p = Punch::new(7, 1, peer, Config::default(), now);
        assert_eq!(p.targets().len(), 9, "public + 8 predicted ports");
        let mut t = now;
        let mut rounds = 0;
        while let Some(n) = p.poll_timeout() {
            t = n;
            p.handle_timeout(t);
            if !p.poll_probes(t).is_empty() {
                rounds += 1;
            }
        }
        assert_eq!(p.outcome(), Some(Outcome::Failed));
        assert_eq!(t, now + Duration::from_secs(5));
        assert_eq!(rounds, 100, "a round every 50 ms for 5 s");
    }
}
