//! The tracker's registry, sans-IO: who is in which room, with what role,
//! behind which addresses, how loaded; heartbeats and expiry; node lists by
//! strategy; room allocation; the rooms and trackers learnt from linked
//! trackers.
//!
//! Time comes in as `now` on every call; nothing here reads a clock or
//! touches a socket, so tests drive it deterministically. The tracker's
//! driver calls [`Registry::expire`] at [`Registry::next_deadline`].
//!
//! Everything is bounded ([`Config`]): nodes in all, nodes per room, rooms,
//! nodes learnt from other trackers, trackers known. A full registry refuses
//! newcomers with [`RegistryError::Full`]; it never evicts a live node.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{NatType, NodeId, NodeInfo, Role, RoomId, Strategy};

/// Room 0, the lobby: it always exists and is never allocated. Nodes that
/// are in no broadcast (the chat tool) register there.
pub const LOBBY: RoomId = 0;

/// Registry limits and timing.
#[derive(Clone, Debug)]
pub struct Config {
    /// A node not heard from for this long is dropped (the original: 120 s,
    /// with a heartbeat every 30 s).
    pub ttl: Duration,
    /// The key edges and sources present; room allocation needs it too.
    pub edge_key: Vec<u8>,
    /// Most nodes registered here.
    pub max_nodes: usize,
    /// Most nodes in one room (registered here).
    pub max_per_room: usize,
    /// Most rooms (with nodes here, or allocated and not yet used).
    pub max_rooms: usize,
    /// Most nodes learnt from linked trackers.
    pub max_remote: usize,
    /// Most trackers known.
    pub max_trackers: usize,
    /// The first room number handed out by [`Registry::allocate_room`].
    pub first_room: RoomId,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            ttl: Duration::from_secs(120),
            edge_key: Vec::new(),
            max_nodes: 100_000,
            max_per_room: 10_000,
            max_rooms: 10_000,
            max_remote: 100_000,
            max_trackers: 256,
            first_room: 1000,
        }
    }
}

/// Why the registry refused something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistryError {
    /// An edge or source, or a room allocation, without the right key.
    BadKey,
    /// A peer asked to join a room nobody serves.
    UnknownRoom,
    /// The node is not registered (or has expired).
    NotRegistered,
    /// A limit of [`Config`] was reached.
    Full,
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RegistryError::BadKey => "wrong edge key",
            RegistryError::UnknownRoom => "unknown room",
            RegistryError::NotRegistered => "node not registered",
            RegistryError::Full => "tracker registry full",
        })
    }
}

impl std::error::Error for RegistryError {}

/// One registered node.
#[derive(Clone, Debug)]
struct Entry {
    info: NodeInfo,
    /// When it expires unless heard from again.
    expires: Instant,
}

/// A node learnt from a linked tracker.
#[derive(Clone, Debug)]
struct Remote {
    info: NodeInfo,
    expires: Instant,
}

/// See the module docs.
#[derive(Debug)]
pub struct Registry {
    config: Config,
    nodes: HashMap<NodeId, Entry>,
    /// Room → its local nodes, in registration order.
    rooms: HashMap<RoomId, Vec<NodeId>>,
    /// Rooms allocated and not yet joined, with when the reservation lapses.
    reserved: HashMap<RoomId, Instant>,
    /// Nodes learnt from linked trackers.
    remote: HashMap<NodeId, Remote>,
    /// Room → the remote nodes in it (an index of `remote`, so neither
    /// `room_exists` nor `nodes` scans every remote node).
    remote_rooms: HashMap<RoomId, Vec<NodeId>>,
    /// Expiry order of local nodes, remote nodes and reservations.
    deadlines: BTreeSet<(Instant, Due)>,
    trackers: Vec<SocketAddr>,
    next_room: RoomId,
    rng: crate::rand::Rng,
}

/// What a deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    Node(NodeId),
    Remote(NodeId),
    Reservation(RoomId),
}

impl Registry {
    /// An empty registry; `seed` drives the random strategy.
    pub fn new(config: Config, seed: u64) -> Registry {
        let next_room = config.first_room;
        Registry {
            config,
            nodes: HashMap::new(),
            rooms: HashMap::new(),
            reserved: HashMap::new(),
            remote: HashMap::new(),
            remote_rooms: HashMap::new(),
            deadlines: BTreeSet::new(),
            trackers: Vec::new(),
            next_room,
            rng: crate::rand::Rng::new(seed),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Registers `info` (or refreshes it: a node may register again, e.g.
    /// with a new address). Edges and sources must present the edge key;
    /// they create their room. A peer may only join a room that exists here
    /// or on a linked tracker. A node moving to another room leaves its old
    /// one.
    pub fn register(
        &mut self,
        info: NodeInfo,
        key: &[u8],
        now: Instant,
    ) -> Result<(), RegistryError> {
        if info.role != Role::Peer && !same_key(key, &self.config.edge_key) {
            return Err(RegistryError::BadKey);
        }
        if info.role == Role::Peer && !self.room_exists(info.room) {
            return Err(RegistryError::UnknownRoom);
        }
        let id = info.id;
        let room = info.room;
        let moving = self.nodes.get(&id).map(|e| e.info.room);
        if moving != Some(room) {
            if moving.is_none() && self.nodes.len() >= self.config.max_nodes {
                return Err(RegistryError::Full);
            }
            let members = self.rooms.get(&room).map_or(0, Vec::len);
            if members >= self.config.max_per_room {
                return Err(RegistryError::Full);
            }
            if members == 0
                && !self.reserved.contains_key(&room)
                && self.rooms.len() + self.reserved.len() >= self.config.max_rooms
            {
                return Err(RegistryError::Full);
            }
        }
        if let Some(old) = moving.filter(|&r| r != room) {
            self.leave_room(id, old);
        }
        if moving != Some(room) {
            self.rooms.entry(room).or_default().push(id);
            if let Some(t) = self.reserved.remove(&room) {
                self.deadlines.remove(&(t, Due::Reservation(room)));
            }
        }
        let expires = now + self.config.ttl;
        if let Some(old) = self.nodes.insert(id, Entry { info, expires }) {
            self.deadlines.remove(&(old.expires, Due::Node(id)));
        }
        self.deadlines.insert((expires, Due::Node(id)));
        Ok(())
    }

    /// A heartbeat with the node's current load and NAT type.
    pub fn update(
        &mut self,
        id: NodeId,
        workload: u32,
        nat: NatType,
        now: Instant,
    ) -> Result<(), RegistryError> {
        let ttl = self.config.ttl;
        let e = self
            .nodes
            .get_mut(&id)
            .ok_or(RegistryError::NotRegistered)?;
        self.deadlines.remove(&(e.expires, Due::Node(id)));
        e.expires = now + ttl;
        e.info.workload = workload;
        e.info.nat = nat;
        self.deadlines.insert((e.expires, Due::Node(id)));
        Ok(())
    }

    /// Removes a node (it said goodbye or its connection dropped).
    pub fn remove(&mut self, id: NodeId) -> Option<NodeInfo> {
        let e = self.nodes.remove(&id)?;
        self.deadlines.remove(&(e.expires, Due::Node(id)));
        self.leave_room(id, e.info.room);
        Some(e.info)
    }

    /// A registered node.
    pub fn get(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes.get(&id).map(|e| &e.info)
    }

    /// When a registered node expires unless heard from.
    pub fn expires(&self, id: NodeId) -> Option<Instant> {
        self.nodes.get(&id).map(|e| e.expires)
    }

    /// How many nodes are registered here.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when no node is registered here.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The rooms with nodes here, in no particular order.
    pub fn rooms(&self) -> impl Iterator<Item = RoomId> + '_ {
        self.rooms.keys().copied()
    }

    /// True if `room` has nodes here or on a linked tracker, or was
    /// allocated and not yet joined.
    pub fn room_exists(&self, room: RoomId) -> bool {
        room == LOBBY
            || self.rooms.contains_key(&room)
            || self.reserved.contains_key(&room)
            || self.remote_rooms.contains_key(&room)
    }

    /// Hands out an unused room number to a source presenting the edge key.
    /// The room stays reserved for one TTL; the first edge or source to
    /// register into it makes it live.
    pub fn allocate_room(&mut self, key: &[u8], now: Instant) -> Result<RoomId, RegistryError> {
        if !same_key(key, &self.config.edge_key) {
            return Err(RegistryError::BadKey);
        }
        if self.rooms.len() + self.reserved.len() >= self.config.max_rooms {
            return Err(RegistryError::Full);
        }
        let first = self.config.first_room.max(1);
        let mut room = self.next_room.max(1);
        while self.room_exists(room) {
            room = room.checked_add(1).unwrap_or(first);
        }
        self.next_room = room.checked_add(1).unwrap_or(first);
        let until = now + self.config.ttl;
        self.reserved.insert(room, until);
        self.deadlines.insert((until, Due::Reservation(room)));
        Ok(room)
    }

    /// Up to `max` nodes of `room` (local and learnt from linked trackers),
    /// never `asker`, picked by `strategy`.
    pub fn nodes(
        &mut self,
        room: RoomId,
        strategy: Strategy,
        max: usize,
        asker: NodeId,
    ) -> Vec<NodeInfo> {
        let local = self
            .rooms
            .get(&room)
            .into_iter()
            .flatten()
            .filter_map(|id| self.nodes.get(id).map(|e| &e.info));
        let remote = self
            .remote_rooms
            .get(&room)
            .into_iter()
            .flatten()
            .filter_map(|id| self.remote.get(id).map(|r| &r.info));
        let mut all: Vec<NodeInfo> = local
            .chain(remote)
            .filter(|n| n.id != asker)
            .filter(|n| strategy != Strategy::Edges || n.role == Role::Edge)
            .cloned()
            .collect();
        match strategy {
            Strategy::Random => {
                // Fisher-Yates with the registry's own generator.
                for i in (1..all.len()).rev() {
                    let j = (self.rng.next_u64() % (i as u64 + 1)) as usize;
                    all.swap(i, j);
                }
            }
            Strategy::MinWorkload | Strategy::Edges => {
                all.sort_by_key(|n| (n.workload, n.id));
            }
        }
        all.truncate(max);
        all
    }

    /// The nodes registered here, for a linked tracker (bounded by `max`).
    pub fn local_nodes(&self, max: usize) -> Vec<NodeInfo> {
        self.nodes
            .values()
            .take(max)
            .map(|e| e.info.clone())
            .collect()
    }

    /// Takes nodes a linked tracker reported (gossip may come in
    /// several frames): each is kept for one TTL unless reported again.
    /// Nodes also registered here are ignored (the local entry is
    /// authoritative). Returns how many were kept (the rest did not fit in
    /// `max_remote`).
    pub fn merge_remote(&mut self, nodes: &[NodeInfo], now: Instant) -> usize {
        let expires = now + self.config.ttl;
        let mut kept = 0;
        for n in nodes {
            if self.nodes.contains_key(&n.id) {
                continue;
            }
            if !self.remote.contains_key(&n.id) && self.remote.len() >= self.config.max_remote {
                continue;
            }
            if let Some(old) = self.remote.insert(
                n.id,
                Remote {
                    info: n.clone(),
                    expires,
                },
            ) {
                self.deadlines.remove(&(old.expires, Due::Remote(n.id)));
                unindex(&mut self.remote_rooms, n.id, old.info.room);
            }
            self.remote_rooms.entry(n.room).or_default().push(n.id);
            self.deadlines.insert((expires, Due::Remote(n.id)));
            kept += 1;
        }
        kept
    }

    /// Adds trackers to the known list (gossip), ignoring duplicates and
    /// what does not fit. Returns how many were new.
    pub fn add_trackers(&mut self, addrs: &[SocketAddr]) -> usize {
        let mut added = 0;
        for a in addrs {
            if self.trackers.len() >= self.config.max_trackers {
                break;
            }
            if !self.trackers.contains(a) {
                self.trackers.push(*a);
                added += 1;
            }
        }
        added
    }

    /// Forgets a tracker (its link failed for good).
    pub fn remove_tracker(&mut self, addr: SocketAddr) {
        self.trackers.retain(|a| *a != addr);
    }

    /// The trackers known, in the order they were learnt.
    pub fn trackers(&self) -> &[SocketAddr] {
        &self.trackers
    }

    /// When [`Registry::expire`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(t, _)| t)
    }

    /// Drops every node and reservation whose time is up; returns the
    /// local nodes that expired.
    pub fn expire(&mut self, now: Instant) -> Vec<NodeInfo> {
        let mut gone = Vec::new();
        while let Some(&(t, due)) = self.deadlines.first() {
            if t > now {
                break;
            }
            self.deadlines.pop_first();
            match due {
                Due::Node(id) => {
                    if let Some(e) = self.nodes.remove(&id) {
                        self.leave_room(id, e.info.room);
                        gone.push(e.info);
                    }
                }
                Due::Remote(id) => {
                    if let Some(r) = self.remote.remove(&id) {
                        unindex(&mut self.remote_rooms, id, r.info.room);
                    }
                }
                Due::Reservation(room) => {
                    self.reserved.remove(&room);
                }
            }
        }
        gone
    }

    fn leave_room(&mut self, id: NodeId, room: RoomId) {
        unindex(&mut self.rooms, id, room);
    }
}

/// Takes `id` out of `room`'s list, dropping the room when it empties.
fn unindex(rooms: &mut HashMap<RoomId, Vec<NodeId>>, id: NodeId, room: RoomId) {
    if let Some(members) = rooms.get_mut(&room) {
        members.retain(|&m| m != id);
        if members.is_empty() {
            rooms.remove(&room);
        }
    }
}

/// Compares keys in time independent of where they differ.
fn same_key(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"edge-key";

    fn cfg() -> Config {
        Config {
            edge_key: KEY.to_vec(),
            ttl: Duration::from_secs(120),
            ..Config::default()
        }
    }

    fn node(id: NodeId, role: Role, room: RoomId, workload: u32) -> NodeInfo {
        NodeInfo {
            id,
            role,
            room,
            public: format!("198.51.100.{}:{}", id % 250 + 1, 4000 + id)
                .parse()
                .expect("addr"),
            local: format!("10.0.0.{}:{}", id % 250 + 1, 4000 + id)
                .parse()
                .expect("addr"),
            workload,
            nat: NatType::Unknown,
        }
    }

    fn ids(v: &[NodeInfo]) -> Vec<NodeId> {
        v.iter().map(|n| n.id).collect()
    }

    #[test]
    fn edges_need_the_key_and_peers_need_a_room() {
        let t = Instant::now();
        let mut r = Registry::new(cfg(), 1);
        assert_eq!(
            r.register(node(1, Role::Edge, 7, 0), b"wrong", t),
            Err(RegistryError::BadKey)
        );
        assert_eq!(
            r.register(node(2, Role::Peer, 7, 0), b"", t),
            Err(RegistryError::UnknownRoom)
        );
        r.register(node(1, Role::Edge, 7, 0), KEY, t).expect("edge");
        r.register(node(2, Role::Peer, 7, 0), b"", t).expect("peer");
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn node_lists_follow_the_strategy_and_never_return_the_asker() {
        let t = Instant::now();
        let mut r = Registry::new(cfg(), 42);
        r.register(node(1, Role::Edge, 7, 50), KEY, t)
            .expect("edge");
        r.register(node(2, Role::Edge, 7, 10), KEY, t)
            .expect("edge");
        for (id, load) in [(3, 5), (4, 30), (5, 1), (6, 20)] {
            r.register(node(id, Role::Peer, 7, load), b"", t)
                .expect("peer");
        }
        r.register(node(9, Role::Edge, 8, 0), KEY, t)
            .expect("other room");

        assert_eq!(ids(&r.nodes(7, Strategy::MinWorkload, 3, 5)), [3, 2, 6]);
        assert_eq!(ids(&r.nodes(7, Strategy::Edges, 10, 5)), [2, 1]);
        let all = r.nodes(7, Strategy::Random, 10, 4);
        let mut sorted = ids(&all);
        sorted.sort();
        assert_eq!(sorted, [1, 2, 3, 5, 6]);
        // Random lists differ between calls (with six nodes, 20 equal
        // shuffles in a row would be a broken generator).
        let first = ids(&r.nodes(7, Strategy::Random, 10, 0));
        assert!((0..20).any(|_| ids(&r.nodes(7, Strategy::Random, 10, 0)) != first));
    }

    #[test]
    fn silent_nodes_expire_and_heartbeats_keep_them() {
        let t = Instant::now();
        let mut r = Registry::new(cfg(), 1);
        r.register(node(1, Role::Edge, 7, 0), KEY, t).expect("edge");
        r.register(node(2, Role::Peer, 7, 0), b"", t).expect("peer");
        assert_eq!(r.next_deadline(), Some(t + Duration::from_secs(120)));
        r.update(2, 3, NatType::FullCone, t + Duration::from_secs(100))
            .expect("heartbeat");
        let gone = r.expire(t + Duration::from_secs(120));
        assert_eq!(ids(&gone), [1]);
        assert_eq!(
            r.get(2).map(|n| (n.workload, n.nat)),
            Some((3, NatType::FullCone))
        );
        assert_eq!(ids(&r.expire(t + Duration::from_secs(220))), [2]);
        assert!(r.is_empty());
        assert_eq!(r.rooms().count(), 0);
        assert_eq!(
            r.update(2, 0, NatType::Unknown, t),
            Err(RegistryError::NotRegistered)
        );
    }

    #[test]
    fn rooms_are_allocated_once_and_lapse_unless_joined() {
        let t = Instant::now();
        let mut r = Registry::new(cfg(), 1);
        assert_eq!(r.allocate_room(b"nope", t), Err(RegistryError::BadKey));
        let a = r.allocate_room(KEY, t).expect("room");
        let b = r.allocate_room(KEY, t).expect("room");
        assert_ne!(a, b);
        r.register(node(1, Role::Source, a, 0), KEY, t)
            .expect("source joins");
        r.register(node(2, Role::Peer, a, 0), b"", t)
            .expect("viewer");
        r.expire(t + Duration::from_secs(121));
        assert!(!r.room_exists(b), "unused reservation lapses");
        let c = r
            .allocate_room(KEY, t + Duration::from_secs(121))
            .expect("room");
        assert!(c != a, "a live room is never handed out again");
    }

    #[test]
    fn moving_rooms_and_removal_keep_rooms_consistent() {
        let t = Instant::now();
        let mut r = Registry::new(cfg(), 1);
        r.register(node(1, Role::Edge, 7, 0), KEY, t)
            .expect("edge 7");
        r.register(node(2, Role::Edge, 8, 0), KEY, t)
            .expect("edge 8");
        r.register(node(3, Role::Peer, 7, 0), b"", t).expect("peer");
        r.register(node(3, Role::Peer, 8, 0), b"", t)
            .expect("moves");
        assert_eq!(ids(&r.nodes(7, Strategy::MinWorkload, 9, 0)), [1]);
        assert_eq!(ids(&r.nodes(8, Strategy::MinWorkload, 9, 0)), [2, 3]);
        assert_eq!(r.remove(1).map(|n| n.id), Some(1));
        assert!(!r.room_exists(7));
        // The old deadline of a re-registered node is gone with it.
        r.expire(t + Duration::from_secs(119));
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn limits_refuse_newcomers_without_evicting() {
        let t = Instant::now();
        let mut r = Registry::new(
            Config {
                max_nodes: 3,
                max_per_room: 2,
                max_rooms: 2,
                ..cfg()
            },
            1,
        );
        r.register(node(1, Role::Edge, 7, 0), KEY, t).expect("1");
        r.register(node(2, Role::Peer, 7, 0), b"", t).expect("2");
        assert_eq!(
            r.register(node(3, Role::Peer, 7, 0), b"", t),
            Err(RegistryError::Full),
            "room full"
        );
        r.register(node(3, Role::Edge, 8, 0), KEY, t).expect("3");
        assert_eq!(
            r.register(node(4, Role::Edge, 9, 0), KEY, t),
            Err(RegistryError::Full),
            "registry full"
        );
        assert_eq!(r.allocate_room(KEY, t), Err(RegistryError::Full));
        // A registered node may still refresh itself.
        r.register(node(2, Role::Peer, 7, 9), b"", t)
            .expect("refresh");
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn nodes_of_linked_trackers_are_listed_until_they_go_stale() {
        let t = Instant::now();
        let mut r = Registry::new(cfg(), 1);
        let theirs = [node(10, Role::Edge, 7, 0), node(11, Role::Peer, 7, 4)];
        assert_eq!(r.merge_remote(&theirs, t), 2);
        assert!(r.room_exists(7));
        r.register(node(1, Role::Peer, 7, 2), b"", t)
            .expect("joins a room served by a linked tracker");
        assert_eq!(ids(&r.nodes(7, Strategy::MinWorkload, 9, 0)), [10, 1, 11]);
        // Reported again, a node stays; one no longer reported goes stale.
        r.merge_remote(&theirs[..1], t + Duration::from_secs(60));
        r.update(1, 2, NatType::Unknown, t + Duration::from_secs(100))
            .expect("heartbeat");
        r.expire(t + Duration::from_secs(150));
        assert_eq!(ids(&r.nodes(7, Strategy::MinWorkload, 9, 0)), [10, 1]);
        r.expire(t + Duration::from_secs(180));
        assert_eq!(ids(&r.nodes(7, Strategy::MinWorkload, 9, 0)), [1]);
    }

    #[test]
    fn remote_nodes_are_indexed_by_room_as_they_move_and_expire() {
        let t = Instant::now();
        let mut r = Registry::new(cfg(), 1);
        r.merge_remote(&[node(10, Role::Edge, 7, 0)], t);
        assert!(r.room_exists(7));
        // Reported again in another room: it leaves the first.
        r.merge_remote(&[node(10, Role::Edge, 8, 0)], t + Duration::from_secs(10));
        assert!(!r.room_exists(7));
        assert_eq!(ids(&r.nodes(8, Strategy::Edges, 9, 0)), [10]);
        r.expire(t + Duration::from_secs(130));
        assert!(!r.room_exists(8));
        assert!(r.nodes(8, Strategy::Random, 9, 0).is_empty());
    }

    #[test]
    fn tracker_lists_are_deduplicated_and_bounded() {
        let mut r = Registry::new(
            Config {
                max_trackers: 3,
                ..cfg()
            },
            1,
        );
        let a: Vec<SocketAddr> = (1..=5)
            .map(|i| format!("192.0.2.{i}:7000").parse().expect("addr"))
            .collect();
        assert_eq!(r.add_trackers(&a[..2]), 2);
        assert_eq!(r.add_trackers(&a[..2]), 0);
        assert_eq!(r.add_trackers(&a), 1);
        assert_eq!(r.trackers(), &a[..3]);
        r.remove_tracker(a[0]);
        assert_eq!(r.trackers(), &a[1..3]);
    }
}
