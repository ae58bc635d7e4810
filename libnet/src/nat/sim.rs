//! Behaviour models for tests: NATs ([`Nat`]), the tracker's answers to
//! probes ([`Tracker`]) and a seeded generator ([`Rng`]).
//!
//! The classifier's tests run a node behind a [`Nat`] against a
//! [`Tracker`]; the hole-punching tests can put two nodes behind two of
//! them. Nothing here does IO or reads a clock.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use super::{ReplyFrom, Servers};
use crate::p2p::NatType;

/// A small seeded generator (splitmix64), for reproducible loss.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        super::splitmix(&mut self.0)
    }

    /// True with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// One mapping: a public port of the NAT and what it lets in.
#[derive(Clone, Debug)]
struct Mapping {
    private: SocketAddr,
    /// Every destination the mapping has sent to: the filter's state.
    sent_to: HashSet<SocketAddr>,
}

/// A NAT of one [`NatType`] in front of any number of private hosts, with
/// one public IP. Mappings never expire.
///
/// - Mapping: the cone kinds give a private address one public port
///   whatever the destination; `Symmetric` gives it one per destination
///   (IP, port).
/// - Filtering, once a mapping exists: `FullCone` lets anyone in;
///   `AddressRestricted` lets in the IPs the mapping sent to, from any
///   port; `PortRestricted` and `Symmetric` only the (IP, port) pairs the
///   mapping sent to.
/// - `Open` is no NAT at all: addresses pass unchanged and nothing is
///   filtered.
#[derive(Clone, Debug)]
pub(crate) struct Nat {
    kind: NatType,
    public_ip: IpAddr,
    next_port: u16,
    /// (private source, destination if `Symmetric`) → public port.
    by_source: HashMap<(SocketAddr, Option<SocketAddr>), u16>,
    /// Public port → mapping.
    by_port: HashMap<u16, Mapping>,
}

impl Nat {
    /// A NAT of `kind` that hands out public ports from `first_port` up.
    ///
    /// # Panics
    ///
    /// If `kind` is `Unknown`, which is no behaviour.
    pub(crate) fn new(kind: NatType, public_ip: IpAddr, first_port: u16) -> Nat {
        assert!(
            kind != NatType::Unknown,
            "NatType::Unknown is not a NAT behaviour"
        );
        Nat {
            kind,
            public_ip,
            next_port: first_port,
            by_source: HashMap::new(),
            by_port: HashMap::new(),
        }
    }

    pub(crate) fn kind(&self) -> NatType {
        self.kind
    }

    pub(crate) fn public_ip(&self) -> IpAddr {
        self.public_ip
    }

    /// How many mappings exist.
    pub(crate) fn mappings(&self) -> usize {
        self.by_port.len()
    }

    /// A packet from the private `from_private` to the public `to` goes
    /// out: returns the public source address it leaves with, creating the
    /// mapping if needed and opening its filter to `to`.
    pub(crate) fn outbound(&mut self, from_private: SocketAddr, to: SocketAddr) -> SocketAddr {
        if self.kind == NatType::Open {
            return from_private;
        }
        let key = (
            from_private,
            (self.kind == NatType::Symmetric).then_some(to),
        );
        let port = match self.by_source.get(&key) {
            Some(&port) => port,
            None => {
                let port = self.allocate();
                self.by_source.insert(key, port);
                self.by_port.insert(
                    port,
                    Mapping {
                        private: from_private,
                        sent_to: HashSet::new(),
                    },
                );
                port
            }
        };
        if let Some(m) = self.by_port.get_mut(&port) {
            m.sent_to.insert(to);
        }
        SocketAddr::new(self.public_ip, port)
    }

    /// A packet from the public `from` arrives for `to_public`: returns the
    /// private address it is forwarded to, or `None` if no mapping exists
    /// or the filter drops it.
    pub(crate) fn inbound(&self, from: SocketAddr, to_public: SocketAddr) -> Option<SocketAddr> {
        if self.kind == NatType::Open {
            return Some(to_public);
        }
        if to_public.ip() != self.public_ip {
            return None;
        }
        let m = self.by_port.get(&to_public.port())?;
        let allowed = match self.kind {
            NatType::FullCone => true,
            NatType::AddressRestricted => m.sent_to.iter().any(|d| d.ip() == from.ip()),
            _ => m.sent_to.contains(&from),
        };
        allowed.then_some(m.private)
    }

    fn allocate(&mut self) -> u16 {
        for _ in 0..=u16::MAX {
            let port = self.next_port;
            self.next_port = self.next_port.checked_add(1).unwrap_or(1024);
            if port != 0 && !self.by_port.contains_key(&port) {
                return port;
            }
        }
        panic!("the NAT ran out of ports");
    }
}

/// How a [`Tracker`] misbehaves (a broken tracker, or an attacker that
/// sees the probes and answers in its place).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Forge {
    /// Answers as asked.
    None,
    /// Answers [`ReplyFrom::OtherPort`] from the socket the probe arrived
    /// on.
    OtherPortFromSame,
    /// Answers [`ReplyFrom::OtherIp`] from the primary IP (with the other
    /// tracker's port).
    OtherIpFromPrimaryIp,
}

/// A tracker's answer: a datagram from `from` to `to` quoting the probe's
/// `id` and the address the probe came from (`observed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub id: u64,
    pub observed: SocketAddr,
}

/// The trackers' probe answering: sockets `A` and `B` on one IP and, if
/// given, the tracker on another IP (`C`) that answers on their behalf.
#[derive(Clone, Debug)]
pub(crate) struct Tracker {
    pub servers: Servers,
    /// Sockets that neither receive nor send (down, or firewalled).
    pub down: Vec<SocketAddr>,
    /// See [`Forge`].
    pub forge: Forge,
}

impl Tracker {
    pub(crate) fn new(servers: Servers) -> Tracker {
        Tracker {
            servers,
            down: Vec::new(),
            forge: Forge::None,
        }
    }

    /// A probe quoting `id` arrived at the tracker socket `at` from `src`
    /// (its public source): the answer to send, if any.
    pub(crate) fn answer(
        &self,
        at: SocketAddr,
        src: SocketAddr,
        id: u64,
        reply_from: ReplyFrom,
    ) -> Option<Answer> {
        let Servers {
            primary,
            alternate,
            other_ip,
        } = self.servers;
        if (at != primary && at != alternate) || self.down.contains(&at) {
            return None;
        }
        let from = match (reply_from, self.forge) {
            (ReplyFrom::Same, _) | (ReplyFrom::OtherPort, Forge::OtherPortFromSame) => at,
            (ReplyFrom::OtherPort, _) if at == primary => alternate,
            (ReplyFrom::OtherPort, _) => primary,
            (ReplyFrom::OtherIp, Forge::OtherIpFromPrimaryIp) => {
                SocketAddr::new(primary.ip(), other_ip?.port())
            }
            (ReplyFrom::OtherIp, _) => other_ip?,
        };
        if self.down.contains(&from) {
            return None;
        }
        Some(Answer {
            from,
            to: src,
            id,
            observed: src,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const PRIVATE: &str = "192.168.1.10:5000";
    const X: &str = "1.1.1.1:3478";
    const X_OTHER_PORT: &str = "1.1.1.1:3479";
    const Y: &str = "2.2.2.2:3478";

    fn nat(kind: NatType) -> Nat {
        Nat::new(kind, "9.9.9.9".parse().unwrap(), 40000)
    }

    /// Who may send to the mapping made by sending to `X`.
    fn lets_in(kind: NatType) -> [bool; 3] {
        let mut n = nat(kind);
        let public = n.outbound(addr(PRIVATE), addr(X));
        [X, X_OTHER_PORT, Y].map(|from| n.inbound(addr(from), public) == Some(addr(PRIVATE)))
    }

    #[test]
    fn filtering_per_kind() {
        assert_eq!(lets_in(NatType::Open), [true; 3]);
        assert_eq!(lets_in(NatType::FullCone), [true; 3]);
        assert_eq!(lets_in(NatType::AddressRestricted), [true, true, false]);
        assert_eq!(lets_in(NatType::PortRestricted), [true, false, false]);
        assert_eq!(lets_in(NatType::Symmetric), [true, false, false]);
    }

    #[test]
    fn nothing_gets_in_without_a_mapping() {
        for kind in [
            NatType::FullCone,
            NatType::AddressRestricted,
            NatType::PortRestricted,
            NatType::Symmetric,
        ] {
            let n = nat(kind);
            assert_eq!(n.inbound(addr(X), addr("9.9.9.9:40000")), None, "{kind:?}");
            assert_eq!(n.mappings(), 0);
        }
    }

    #[test]
    fn open_translates_nothing() {
        let mut n = nat(NatType::Open);
        assert_eq!(n.outbound(addr(PRIVATE), addr(X)), addr(PRIVATE));
        assert_eq!(n.inbound(addr(Y), addr(PRIVATE)), Some(addr(PRIVATE)));
        assert_eq!(n.mappings(), 0);
        assert_eq!(n.kind(), NatType::Open);
    }

    #[test]
    fn cone_mappings_are_endpoint_independent() {
        for kind in [
            NatType::FullCone,
            NatType::AddressRestricted,
            NatType::PortRestricted,
        ] {
            let mut n = nat(kind);
            let a = n.outbound(addr(PRIVATE), addr(X));
            let b = n.outbound(addr(PRIVATE), addr(X_OTHER_PORT));
            let c = n.outbound(addr(PRIVATE), addr(Y));
            assert_eq!((a, b), (c, c), "{kind:?}");
            assert_eq!(a, SocketAddr::new(n.public_ip(), 40000));
            assert_eq!(n.mappings(), 1);
            // Once it sent to Y, Y gets in too.
            assert_eq!(n.inbound(addr(Y), a), Some(addr(PRIVATE)), "{kind:?}");
        }
    }

    #[test]
    fn symmetric_maps_each_destination() {
        let mut n = nat(NatType::Symmetric);
        let to_x = n.outbound(addr(PRIVATE), addr(X));
        let to_x2 = n.outbound(addr(PRIVATE), addr(X_OTHER_PORT));
        let to_y = n.outbound(addr(PRIVATE), addr(Y));
        assert_eq!(n.mappings(), 3);
        assert!(to_x != to_x2 && to_x != to_y && to_x2 != to_y);
        assert_eq!(
            n.outbound(addr(PRIVATE), addr(X)),
            to_x,
            "a mapping is reused"
        );
        // Each mapping lets in only its own destination, even though the
        // host has sent to the others through other mappings.
        assert_eq!(n.inbound(addr(X), to_x), Some(addr(PRIVATE)));
        assert_eq!(n.inbound(addr(X_OTHER_PORT), to_x), None);
        assert_eq!(n.inbound(addr(Y), to_x), None);
        assert_eq!(n.inbound(addr(Y), to_y), Some(addr(PRIVATE)));
    }

    #[test]
    fn hosts_get_their_own_mappings() {
        let mut n = nat(NatType::FullCone);
        let one = n.outbound(addr(PRIVATE), addr(X));
        let two = n.outbound(addr("192.168.1.11:5000"), addr(X));
        assert_ne!(one, two);
        assert_eq!(n.inbound(addr(Y), two), Some(addr("192.168.1.11:5000")));
        // Not our public IP, or a port with no mapping.
        assert_eq!(
            n.inbound(addr(X), SocketAddr::new(addr(Y).ip(), one.port())),
            None
        );
        assert_eq!(n.inbound(addr(X), addr("9.9.9.9:1")), None);
    }

    #[test]
    fn ports_wrap_and_skip_used_ones() {
        let mut n = Nat::new(NatType::FullCone, "9.9.9.9".parse().unwrap(), u16::MAX);
        assert_eq!(n.outbound(addr(PRIVATE), addr(X)).port(), u16::MAX);
        assert_eq!(n.outbound(addr("192.168.1.11:1"), addr(X)).port(), 1024);
    }

    #[test]
    fn tracker_answers_as_asked() {
        let servers = Servers {
            primary: addr(X),
            alternate: addr(X_OTHER_PORT),
            other_ip: Some(addr(Y)),
        };
        let mut t = Tracker::new(servers);
        let src = addr("9.9.9.9:40000");
        let from = |t: &Tracker, at, how| t.answer(addr(at), src, 7, how).map(|a| a.from);
        assert_eq!(from(&t, X, ReplyFrom::Same), Some(addr(X)));
        assert_eq!(from(&t, X, ReplyFrom::OtherPort), Some(addr(X_OTHER_PORT)));
        assert_eq!(from(&t, X_OTHER_PORT, ReplyFrom::OtherPort), Some(addr(X)));
        assert_eq!(from(&t, X, ReplyFrom::OtherIp), Some(addr(Y)));
        assert_eq!(from(&t, Y, ReplyFrom::Same), None, "C takes no probes");
        let a = t.answer(addr(X), src, 7, ReplyFrom::Same).unwrap();
        assert_eq!((a.to, a.id, a.observed), (src, 7, src));

        t.forge = Forge::OtherPortFromSame;
        assert_eq!(from(&t, X, ReplyFrom::OtherPort), Some(addr(X)));
        t.forge = Forge::OtherIpFromPrimaryIp;
        assert_eq!(from(&t, X, ReplyFrom::OtherIp), Some(addr(X)));
        t.forge = Forge::None;
        t.down.push(addr(X_OTHER_PORT));
        assert_eq!(from(&t, X, ReplyFrom::OtherPort), None);
        assert_eq!(from(&t, X_OTHER_PORT, ReplyFrom::Same), None);
    }
}
