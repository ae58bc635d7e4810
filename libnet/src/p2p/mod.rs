//! The P2P layer: the wire protocol that trackers, edges, sources and peers
//! speak ([`wire`]), the tracker's registry of who is in which room
//! ([`registry`]), the tracker server ([`tracker`]) and its client
//! ([`client`]). Both are sans-IO: bytes and time in, bytes, events and
//! deadlines out; the coroutine drivers on top stay thin.
//!
//! The types here are the vocabulary both share.

use std::net::{IpAddr, SocketAddr};

pub mod client;
pub mod connect;
pub mod peer;
pub mod registry;
pub mod relay;
pub mod store;
pub mod tracker;
pub mod wire;

/// The RUDP configuration P2P nodes use: the defaults, plus wire frames
/// (magic 0xB7) passing beside the connections on the same socket, so
/// `Whoami` and punch probes use the socket's NAT mapping and a plain UDP
/// tracker understands them.
pub fn rudp_config() -> crate::rudp::Config {
    crate::rudp::Config {
        foreign_magic: Some(wire::MAGIC),
        ..crate::rudp::Config::default()
    }
}

/// A tracker's address as a tracker names it, for use by someone who
/// reaches that tracker at `ip`: a tracker listening on a wildcard address
/// names itself `0.0.0.0:PORT` (or `[::]:PORT`), which would dial the
/// caller's own machine.
pub(crate) fn reached_at(named: SocketAddr, ip: IpAddr) -> SocketAddr {
    if named.ip().is_unspecified() {
        SocketAddr::new(ip, named.port())
    } else {
        named
    }
}

/// A room (the original's "session"): one live stream and its viewers.
pub type RoomId = u32;

/// A node's identity, chosen at random by the node and kept for the life of
/// its process; the tracker keys its registry on it.
pub type NodeId = u64;

/// What a node is in a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Takes the stream from the source and serves viewers; the relay when
    /// punching fails.
    Edge,
    /// Pushes the stream to the edge.
    Source,
    /// A viewer that shares what it has.
    Peer,
}

impl Role {
    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            Role::Edge => 0,
            Role::Source => 1,
            Role::Peer => 2,
        }
    }

    /// From the wire code.
    pub fn from_code(c: u8) -> Option<Role> {
        Some(match c {
            0 => Role::Edge,
            1 => Role::Source,
            2 => Role::Peer,
            _ => return None,
        })
    }
}

/// How the tracker picks the nodes it returns for a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Any nodes, chosen at random.
    Random,
    /// The least loaded nodes first.
    MinWorkload,
    /// Only edges.
    Edges,
}

impl Strategy {
    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            Strategy::Random => 0,
            Strategy::MinWorkload => 1,
            Strategy::Edges => 2,
        }
    }

    /// From the wire code.
    pub fn from_code(c: u8) -> Option<Strategy> {
        Some(match c {
            0 => Strategy::Random,
            1 => Strategy::MinWorkload,
            2 => Strategy::Edges,
            _ => return None,
        })
    }
}

/// A node's NAT, as it classified it (RFC 3489 terms; the original's
/// NAT1..NAT4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NatType {
    /// Not classified yet.
    Unknown,
    /// No NAT: the public address is the local one.
    Open,
    /// NAT1: anyone may send to the mapping.
    FullCone,
    /// NAT2: only addresses the node has sent to may send to the mapping.
    AddressRestricted,
    /// NAT3: only address and port pairs the node has sent to.
    PortRestricted,
    /// NAT4: a new mapping per destination.
    Symmetric,
}

impl NatType {
    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            NatType::Unknown => 0,
            NatType::Open => 1,
            NatType::FullCone => 2,
            NatType::AddressRestricted => 3,
            NatType::PortRestricted => 4,
            NatType::Symmetric => 5,
        }
    }

    /// From the wire code.
    pub fn from_code(c: u8) -> Option<NatType> {
        Some(match c {
            0 => NatType::Unknown,
            1 => NatType::Open,
            2 => NatType::FullCone,
            3 => NatType::AddressRestricted,
            4 => NatType::PortRestricted,
            5 => NatType::Symmetric,
            _ => return None,
        })
    }
}

/// The stream's channels; each runs on its own RUDP connection so that
/// they never block each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Init and metadata (codec parameters, keys).
    Meta,
    /// Video fragments.
    Video,
    /// Audio fragments.
    Audio,
}

impl Channel {
    /// The wire code (the original's channel numbers).
    pub fn code(self) -> u8 {
        match self {
            Channel::Meta => 0,
            Channel::Video => 1,
            Channel::Audio => 2,
        }
    }

    /// From the wire code.
    pub fn from_code(c: u8) -> Option<Channel> {
        Some(match c {
            0 => Channel::Meta,
            1 => Channel::Video,
            2 => Channel::Audio,
            _ => return None,
        })
    }
}

/// What the tracker knows of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's identity.
    pub id: NodeId,
    /// Edge, source or peer.
    pub role: Role,
    /// The room it is in.
    pub room: RoomId,
    /// Its UDP address as the tracker sees it (through its NAT).
    pub public: SocketAddr,
    /// Its UDP address as it sees it itself (reachable on its own LAN).
    pub local: SocketAddr,
    /// Its load as it reports it (connections served, or any figure the
    /// role chooses); lower is better.
    pub workload: u32,
    /// Its NAT, as it classified it.
    pub nat: NatType,
}
