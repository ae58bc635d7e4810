//! The tracker's registry, sans-IO: who is in which room, with what role,
//! behind which addresses, how loaded; heartbeats and expiry; node lists by
//! strategy; room allocation; the file catalog; the rooms, files and
//! trackers learnt from linked trackers.
//!
//! Time comes in as `now` on every call; nothing here reads a clock or
//! touches a socket, so tests drive it deterministically. The tracker's
//! driver calls [`Registry::expire`] at [`Registry::next_deadline`].
//!
//! Everything is bounded ([`Config`]): nodes in all, nodes per room, rooms,
//! nodes learnt from other trackers, trackers known, files, holders per
//! file, holdings. A full registry refuses newcomers with
//! [`RegistryError::Full`]; it never evicts a live node or holding.
//!
//! # The file catalog
//!
//! A registered node [`publish`](Registry::publish)es a file it holds all
//! or part of: the file's [`FileInfo`] and how many pieces it has. The
//! catalog maps each name to one file and its holders:
//!
//! - One name, one file. A publish whose description (size, duration,
//!   pieces, index) differs from the one the name already stands for is
//!   refused with [`RegistryError::Conflict`], unless the publisher is the
//!   name's only holder (it replaced its file), which replaces the
//!   description. Files learnt from linked trackers count: the first
//!   description seen wins, and holdings of another one are ignored until
//!   it is gone.
//! - Publishing again updates `have`. A holding goes with
//!   [`unpublish`](Registry::unpublish), or when its node goes
//!   ([`remove`](Registry::remove), or expiry); a name goes with its last
//!   holder.
//! - Linked trackers gossip their local holdings
//!   ([`local_holdings`](Registry::local_holdings)); a tracker keeps each
//!   one it is told ([`merge_remote_holdings`](Registry::merge_remote_holdings))
//!   for one TTL unless told again, like remote nodes. A local holding of the
//!   same node and name takes precedence: a node is counted once.
//! - [`catalog`](Registry::catalog) lists names by prefix, sorted, with
//!   holders counted over local and learnt holdings;
//!   [`holders`](Registry::holders) lists who holds a file: complete holders
//!   first, then the least loaded, then those with the most pieces, then by
//!   node id; never the asker.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Bound;
use std::time::{Duration, Instant};

use super::wire::{CatalogEntry, FileInfo, Holder, Holding, MAX_FILE_NAME};
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
    /// Most names in the file catalog, local and learnt from linked
    /// trackers together.
    pub max_files: usize,
    /// Most holders of one file, local and learnt together.
    pub max_holders: usize,
    /// Most holdings (node, file) of nodes registered here.
    pub max_holdings: usize,
    /// Most holdings learnt from linked trackers.
    pub max_remote_holdings: usize,
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
            max_files: 10_000,
            max_holders: 1_000,
            max_holdings: 100_000,
            max_remote_holdings: 100_000,
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
    /// The file name already stands for another file.
    Conflict,
    /// A file description the catalog does not take: an empty name, one
    /// over [`MAX_FILE_NAME`] bytes or with control characters, or more
    /// pieces held than the file has.
    Invalid,
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RegistryError::BadKey => "wrong edge key",
            RegistryError::UnknownRoom => "unknown room",
            RegistryError::NotRegistered => "node not registered",
            RegistryError::Full => "tracker registry full",
            RegistryError::Conflict => "the name stands for another file",
            RegistryError::Invalid => "invalid file name or description",
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

/// A file in the catalog and who holds it.
#[derive(Clone, Debug)]
struct File {
    info: FileInfo,
    /// Holders registered here: node → pieces held.
    local: BTreeMap<NodeId, u32>,
    /// Holders learnt from linked trackers (never a node of `local`).
    remote: HashMap<NodeId, RemoteHolding>,
}

impl File {
    /// The file as the catalog lists it.
    fn entry(&self) -> CatalogEntry {
        let pieces = self.info.pieces;
        let complete = self.local.values().filter(|&&have| have >= pieces).count()
            + self.remote.values().filter(|r| r.have >= pieces).count();
        CatalogEntry {
            file: self.info.clone(),
            holders: u32::try_from(self.holders()).unwrap_or(u32::MAX),
            complete: u32::try_from(complete).unwrap_or(u32::MAX),
        }
    }

    fn holders(&self) -> usize {
        self.local.len() + self.remote.len()
    }

    fn is_empty(&self) -> bool {
        self.local.is_empty() && self.remote.is_empty()
    }
}

/// A holding learnt from a linked tracker.
#[derive(Clone, Debug)]
struct RemoteHolding {
    node: NodeInfo,
    have: u32,
    /// The tracker that reported it (where the node is registered).
    tracker: SocketAddr,
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
    /// The file catalog, by name (sorted, for prefix listings).
    files: BTreeMap<String, File>,
    /// Local node → the names it holds, so that a node leaving drops its
    /// holdings without a scan.
    held: HashMap<NodeId, BTreeSet<String>>,
    /// Local holdings in all (the sizes of `held`'s sets, summed).
    holdings: usize,
    /// Holdings learnt from linked trackers (the sizes of the files'
    /// `remote` maps, summed).
    remote_holdings: usize,
    /// Expiry order of local nodes, remote nodes, reservations and
    /// remote holdings.
    deadlines: BTreeSet<(Instant, Due)>,
    trackers: Vec<SocketAddr>,
    next_room: RoomId,
    rng: crate::rand::Rng,
}

/// What a deadline is for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    Node(NodeId),
    Remote(NodeId),
    Reservation(RoomId),
    /// A remote holding: the file's name and the node.
    Holding(String, NodeId),
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
            files: BTreeMap::new(),
            held: HashMap::new(),
            holdings: 0,
            remote_holdings: 0,
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

    /// Removes a node (it said goodbye or its connection dropped), with
    /// its holdings.
    pub fn remove(&mut self, id: NodeId) -> Option<NodeInfo> {
        let e = self.nodes.remove(&id)?;
        self.deadlines.remove(&(e.expires, Due::Node(id)));
        self.leave_room(id, e.info.room);
        self.drop_holdings(id);
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

    // --- The file catalog -------------------------------------------------

    /// Records that `node` (registered here) holds `have` of `file`'s
    /// pieces; published again, updates `have`. Refused with
    /// [`RegistryError::NotRegistered`], [`RegistryError::Invalid`] (a name
    /// [`valid_file_name`] refuses, or `have > file.pieces`),
    /// [`RegistryError::Conflict`] (the name stands for another file: see
    /// the module docs) or [`RegistryError::Full`].
    pub fn publish(
        &mut self,
        node: NodeId,
        file: FileInfo,
        have: u32,
    ) -> Result<(), RegistryError> {
        if !self.nodes.contains_key(&node) {
            return Err(RegistryError::NotRegistered);
        }
        if !valid_file_name(&file.name) || have > file.pieces {
            return Err(RegistryError::Invalid);
        }
        let name = file.name.clone();
        let holds = self
            .held
            .get(&node)
            .is_some_and(|names| names.contains(&name));
        match self.files.get_mut(&name) {
            Some(f) => {
                if f.info != file {
                    // Only a sole holder may say the name is now another
                    // file.
                    if !(holds && f.local.len() == 1 && f.remote.is_empty()) {
                        return Err(RegistryError::Conflict);
                    }
                    f.info = file;
                }
                if !holds {
                    let was_remote = f.remote.contains_key(&node);
                    if self.holdings >= self.config.max_holdings
                        || (!was_remote && f.holders() >= self.config.max_holders)
                    {
                        return Err(RegistryError::Full);
                    }
                    // The local holding replaces what a linked tracker said.
                    if let Some(r) = f.remote.remove(&node) {
                        self.remote_holdings -= 1;
                        self.deadlines
                            .remove(&(r.expires, Due::Holding(name.clone(), node)));
                    }
                }
                f.local.insert(node, have);
            }
            None => {
                if self.files.len() >= self.config.max_files
                    || self.holdings >= self.config.max_holdings
                    || self.config.max_holders == 0
                {
                    return Err(RegistryError::Full);
                }
                self.files.insert(
                    name.clone(),
                    File {
                        info: file,
                        local: BTreeMap::from([(node, have)]),
                        remote: HashMap::new(),
                    },
                );
            }
        }
        if !holds {
            self.held.entry(node).or_default().insert(name);
            self.holdings += 1;
        }
        Ok(())
    }

    /// `node` no longer holds the file `name`; returns whether it did. The
    /// name goes with its last holder.
    pub fn unpublish(&mut self, node: NodeId, name: &str) -> bool {
        let Some(names) = self.held.get_mut(&node) else {
            return false;
        };
        if !names.remove(name) {
            return false;
        }
        if names.is_empty() {
            self.held.remove(&node);
        }
        self.holdings -= 1;
        self.drop_local(node, name);
        true
    }

    /// The catalog entry of `name`, if anyone holds it.
    pub fn entry(&self, name: &str) -> Option<CatalogEntry> {
        self.files.get(name).map(File::entry)
    }

    /// The first `max` files whose names start with `prefix` (empty: all),
    /// sorted by name, with their holders counted here and on linked
    /// trackers.
    pub fn catalog(&self, prefix: &str, max: usize) -> Vec<CatalogEntry> {
        self.files
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(name, _)| name.starts_with(prefix))
            .take(max)
            .map(|(_, f)| f.entry())
            .collect()
    }

    /// Up to `max` holders of `name`, here and on linked trackers, never
    /// `asker`: complete holders first, then the least loaded, then those
    /// with the most pieces, then by node id. `here` is this tracker's TCP
    /// address, given as the tracker of local holders.
    pub fn holders(&self, name: &str, max: usize, asker: NodeId, here: SocketAddr) -> Vec<Holder> {
        let Some(f) = self.files.get(name) else {
            return Vec::new();
        };
        let local = f.local.iter().filter_map(|(id, &have)| {
            Some(Holder {
                node: self.nodes.get(id)?.info.clone(),
                have,
                tracker: here,
            })
        });
        let remote = f.remote.values().map(|r| Holder {
            node: r.node.clone(),
            have: r.have,
            tracker: r.tracker,
        });
        let pieces = f.info.pieces;
        let mut all: Vec<Holder> = local.chain(remote).filter(|h| h.node.id != asker).collect();
        all.sort_by_key(|h| {
            (
                h.have < pieces,
                h.node.workload,
                std::cmp::Reverse(h.have),
                h.node.id,
            )
        });
        all.truncate(max);
        all
    }

    /// Names in the catalog (local and learnt).
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// The holdings of nodes registered here, for a linked tracker
    /// (bounded by `max`), in name order.
    pub fn local_holdings(&self, max: usize) -> Vec<Holding> {
        self.files
            .values()
            .flat_map(|f| {
                f.local.iter().filter_map(move |(id, &have)| {
                    Some(Holding {
                        file: f.info.clone(),
                        node: self.nodes.get(id)?.info.clone(),
                        have,
                    })
                })
            })
            .take(max)
            .collect()
    }

    /// Takes holdings the linked tracker at `tracker` (its TCP address)
    /// reported: each is kept for one TTL unless reported again. Ignored:
    /// invalid ones, ones of a node that holds the file here (the local
    /// holding is authoritative), ones whose file differs from the one the
    /// name stands for, and what does not fit the limits. Returns how many
    /// were kept.
    pub fn merge_remote_holdings(
        &mut self,
        holdings: &[Holding],
        tracker: SocketAddr,
        now: Instant,
    ) -> usize {
        let expires = now + self.config.ttl;
        let mut kept = 0;
        for h in holdings {
            let (name, id) = (&h.file.name, h.node.id);
            if !valid_file_name(name) || h.have > h.file.pieces {
                continue;
            }
            let remote_full = self.remote_holdings >= self.config.max_remote_holdings;
            if let Some(f) = self.files.get(name) {
                if f.info != h.file || f.local.contains_key(&id) {
                    continue;
                }
                if !f.remote.contains_key(&id)
                    && (remote_full || f.holders() >= self.config.max_holders)
                {
                    continue;
                }
            } else {
                if remote_full
                    || self.files.len() >= self.config.max_files
                    || self.config.max_holders == 0
                {
                    continue;
                }
                self.files.insert(
                    name.clone(),
                    File {
                        info: h.file.clone(),
                        local: BTreeMap::new(),
                        remote: HashMap::new(),
                    },
                );
            }
            let Some(f) = self.files.get_mut(name) else {
                continue;
            };
            let fresh = RemoteHolding {
                node: h.node.clone(),
                have: h.have,
                tracker,
                expires,
            };
            match f.remote.insert(id, fresh) {
                Some(old) => {
                    self.deadlines
                        .remove(&(old.expires, Due::Holding(name.clone(), id)));
                }
                None => self.remote_holdings += 1,
            }
            self.deadlines
                .insert((expires, Due::Holding(name.clone(), id)));
            kept += 1;
        }
        kept
    }

    /// Drops `node`'s local holding of `name` from the file, and the file
    /// if nobody holds it any more (`held` is the caller's business).
    fn drop_local(&mut self, node: NodeId, name: &str) {
        if let Some(f) = self.files.get_mut(name) {
            f.local.remove(&node);
            if f.is_empty() {
                self.files.remove(name);
            }
        }
    }

    /// Drops every local holding of `node` (it left).
    fn drop_holdings(&mut self, node: NodeId) {
        for name in self.held.remove(&node).unwrap_or_default() {
            self.holdings -= 1;
            self.drop_local(node, &name);
        }
    }

    /// When [`Registry::expire`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(t, _)| t)
    }

    /// Drops every node, reservation and remote holding whose time is up
    /// (with the holdings of the nodes that go); returns the local nodes
    /// that expired.
    pub fn expire(&mut self, now: Instant) -> Vec<NodeInfo> {
        let mut gone = Vec::new();
        while self.deadlines.first().is_some_and(|(t, _)| *t <= now) {
            let Some((_, due)) = self.deadlines.pop_first() else {
                break;
            };
            match due {
                Due::Node(id) => {
                    if let Some(e) = self.nodes.remove(&id) {
                        self.leave_room(id, e.info.room);
                        self.drop_holdings(id);
                        gone.push(e.info);
                    }
                }
                Due::Holding(name, node) => {
                    if let Some(f) = self.files.get_mut(&name) {
                        if f.remote.remove(&node).is_some() {
                            self.remote_holdings -= 1;
                        }
                        if f.is_empty() {
                            self.files.remove(&name);
                        }
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

/// Whether the catalog takes `name`: 1 to [`MAX_FILE_NAME`] bytes, no
/// control characters (the wire has already checked it is UTF-8).
pub fn valid_file_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_FILE_NAME && !name.chars().any(char::is_control)
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

    // --- The file catalog -----------------------------------------------

    fn file(name: &str, pieces: u32, index: u8) -> FileInfo {
        FileInfo {
            name: name.into(),
            size: u64::from(pieces) * 1000,
            duration_ms: 60_000,
            pieces,
            index: [index; 32],
        }
    }

    fn here() -> SocketAddr {
        "192.0.2.1:7000".parse().expect("addr")
    }

    fn there() -> SocketAddr {
        "192.0.2.2:7000".parse().expect("addr")
    }

    /// A registry with peers `ids` in the lobby, each with workload `id`.
    fn lobby(config: Config, ids: impl IntoIterator<Item = NodeId>, t: Instant) -> Registry {
        let mut r = Registry::new(config, 1);
        for id in ids {
            r.register(node(id, Role::Peer, LOBBY, id as u32), b"", t)
                .expect("lobby");
        }
        r
    }

    fn counts(r: &Registry, name: &str) -> Option<(u32, u32)> {
        r.entry(name).map(|e| (e.holders, e.complete))
    }

    fn holder_ids(v: &[Holder]) -> Vec<NodeId> {
        v.iter().map(|h| h.node.id).collect()
    }

    fn holding(f: &FileInfo, id: NodeId, have: u32) -> Holding {
        Holding {
            file: f.clone(),
            node: node(id, Role::Peer, LOBBY, id as u32),
            have,
        }
    }

    #[test]
    fn publishing_needs_a_registered_node_and_a_valid_file() {
        let t = Instant::now();
        let mut r = lobby(cfg(), [1], t);
        let movie = file("movie.ts", 100, 1);
        assert_eq!(
            r.publish(2, movie.clone(), 1),
            Err(RegistryError::NotRegistered)
        );
        for bad in ["", "a\nb", "tab\there", "nul\0"] {
            assert_eq!(
                r.publish(1, file(bad, 1, 1), 0),
                Err(RegistryError::Invalid),
                "{bad:?}"
            );
        }
        let long = "é".repeat(128); // 256 bytes
        assert_eq!(
            r.publish(1, file(&long, 1, 1), 0),
            Err(RegistryError::Invalid)
        );
        assert_eq!(
            r.publish(1, movie.clone(), 101),
            Err(RegistryError::Invalid),
            "more pieces held than there are"
        );
        assert_eq!(r.file_count(), 0);
        r.publish(1, file(&"é".repeat(127), 1, 1), 1)
            .expect("254 bytes of accents");
        r.publish(1, movie, 100).expect("valid");
        assert_eq!(counts(&r, "movie.ts"), Some((1, 1)));
        r.publish(1, file("empty", 0, 1), 0)
            .expect("an empty file is complete with no pieces");
        assert_eq!(counts(&r, "empty"), Some((1, 1)));
    }

    #[test]
    fn publishing_again_updates_have() {
        let t = Instant::now();
        let mut r = lobby(cfg(), [1, 2, 3], t);
        let movie = file("movie.ts", 100, 1);
        r.publish(1, movie.clone(), 10).expect("1");
        r.publish(2, movie.clone(), 20).expect("2");
        r.publish(3, movie.clone(), 100).expect("3");
        assert_eq!(counts(&r, "movie.ts"), Some((3, 1)));
        r.publish(1, movie.clone(), 100).expect("1 completes");
        assert_eq!(counts(&r, "movie.ts"), Some((3, 2)));
        r.publish(3, movie, 50).expect("3 dropped pieces");
        assert_eq!(counts(&r, "movie.ts"), Some((3, 1)));
        let haves: Vec<(NodeId, u32)> = r
            .holders("movie.ts", 10, 0, here())
            .iter()
            .map(|h| (h.node.id, h.have))
            .collect();
        assert_eq!(haves, [(1, 100), (2, 20), (3, 50)]);
        assert_eq!(r.local_holdings(usize::MAX).len(), 3);
    }

    #[test]
    fn a_name_stands_for_one_file() {
        let t = Instant::now();
        let mut r = lobby(cfg(), [1, 2], t);
        let v1 = file("movie.ts", 100, 1);
        let v2 = file("movie.ts", 100, 2);
        r.publish(1, v1.clone(), 5).expect("first");
        assert_eq!(
            r.publish(2, v2.clone(), 5),
            Err(RegistryError::Conflict),
            "another index"
        );
        let longer = FileInfo {
            size: v1.size + 1,
            ..v1.clone()
        };
        assert_eq!(
            r.publish(2, longer, 5),
            Err(RegistryError::Conflict),
            "same index, another size"
        );
        // The sole holder replaces its file.
        r.publish(1, v2.clone(), 7).expect("sole holder");
        assert_eq!(r.entry("movie.ts").map(|e| e.file.index), Some([2; 32]));
        assert_eq!(r.publish(2, v1.clone(), 5), Err(RegistryError::Conflict));
        r.publish(2, v2, 5).expect("same file");
        // With two holders, nobody may change it.
        assert_eq!(r.publish(1, v1.clone(), 5), Err(RegistryError::Conflict));
        assert_eq!(counts(&r, "movie.ts"), Some((2, 0)));
        // Once they are gone, the name is free again.
        r.unpublish(1, "movie.ts");
        r.unpublish(2, "movie.ts");
        r.publish(2, v1, 5).expect("free name");
    }

    #[test]
    fn holdings_go_with_unpublish_bye_and_expiry_and_names_with_their_last_holder() {
        let t = Instant::now();
        let mut r = lobby(cfg(), [1, 2, 3], t);
        let movie = file("movie.ts", 100, 1);
        let song = file("song.mp3", 10, 9);
        for id in [1, 2, 3] {
            r.publish(id, movie.clone(), 50).expect("movie");
        }
        r.publish(1, song.clone(), 10).expect("song");
        assert!(r.unpublish(2, "movie.ts"));
        assert!(!r.unpublish(2, "movie.ts"), "not held any more");
        assert!(!r.unpublish(2, "nothing"));
        assert_eq!(counts(&r, "movie.ts"), Some((2, 0)));
        // Bye: every holding of the node goes.
        r.remove(1);
        assert_eq!(counts(&r, "movie.ts"), Some((1, 0)));
        assert_eq!(counts(&r, "song.mp3"), None, "its last holder left");
        // Expiry: the same.
        r.update(2, 0, NatType::Unknown, t + Duration::from_secs(60))
            .expect("2 lives on");
        r.expire(t + Duration::from_secs(120));
        assert_eq!(counts(&r, "movie.ts"), None);
        assert_eq!(r.file_count(), 0);
        assert!(r.local_holdings(usize::MAX).is_empty());
        // What is left holds nothing; the counters are back at zero.
        assert_eq!(r.publish(2, song, 1), Ok(()));
        assert_eq!(r.holdings, 1);
    }

    #[test]
    fn the_catalog_lists_names_by_prefix_in_order() {
        let t = Instant::now();
        let mut r = lobby(cfg(), [1, 2], t);
        for (i, name) in ["c", "a/y", "b", "ab", "a/x", "ä", "a"].iter().enumerate() {
            r.publish(1, file(name, 4, i as u8), 4).expect("publish");
        }
        r.publish(2, file("a/x", 4, 4), 1).expect("second holder");
        let names = |prefix: &str, max: usize| -> Vec<String> {
            r.catalog(prefix, max)
                .into_iter()
                .map(|e| e.file.name)
                .collect()
        };
        assert_eq!(names("", 99), ["a", "a/x", "a/y", "ab", "b", "c", "ä"]);
        assert_eq!(names("a/", 99), ["a/x", "a/y"]);
        assert_eq!(names("a", 99), ["a", "a/x", "a/y", "ab"]);
        assert_eq!(names("a", 2), ["a", "a/x"]);
        assert_eq!(names("ä", 99), ["ä"]);
        assert!(names("z", 99).is_empty());
        assert!(names("a/xx", 99).is_empty());
        let ax = r.catalog("a/x", 1);
        assert_eq!(
            ax.first().map(|e| (e.holders, e.complete, e.file.size)),
            Some((2, 1, 4000))
        );
    }

    #[test]
    fn holders_come_complete_first_then_least_loaded_never_the_asker() {
        let t = Instant::now();
        // Node id = workload.
        let mut r = lobby(cfg(), [1, 2, 3, 4, 5, 6], t);
        let movie = file("movie.ts", 100, 1);
        for (id, have) in [(1, 10), (2, 100), (3, 60), (4, 100), (5, 60), (6, 90)] {
            r.publish(id, movie.clone(), have).expect("publish");
        }
        r.update(5, 3, NatType::Unknown, t)
            .expect("5 as loaded as 3");
        let order = holder_ids(&r.holders("movie.ts", 10, 0, here()));
        // Complete: 2, 4. Then by load: 1 (1), 3 and 5 (3; equal pieces:
        // by id), 6 (6).
        assert_eq!(order, [2, 4, 1, 3, 5, 6]);
        assert_eq!(holder_ids(&r.holders("movie.ts", 3, 4, here())), [2, 1, 3]);
        assert!(r
            .holders("movie.ts", 10, 0, here())
            .iter()
            .all(|h| h.tracker == here()));
        assert!(r.holders("unknown", 10, 0, here()).is_empty());
        assert!(r.holders("movie.ts", 0, 0, here()).is_empty());
    }

    #[test]
    fn catalog_limits_refuse_without_evicting() {
        let t = Instant::now();
        let mut r = lobby(
            Config {
                max_files: 2,
                max_holders: 2,
                max_holdings: 4,
                ..cfg()
            },
            [1, 2, 3],
            t,
        );
        let (a, b, c) = (file("a", 4, 1), file("b", 4, 1), file("c", 4, 1));
        r.publish(1, a.clone(), 1).expect("a");
        r.publish(1, b.clone(), 1).expect("b");
        assert_eq!(r.publish(1, c, 1), Err(RegistryError::Full), "files");
        r.publish(2, a.clone(), 1).expect("a, 2");
        assert_eq!(
            r.publish(3, a.clone(), 1),
            Err(RegistryError::Full),
            "holders of a"
        );
        r.publish(2, b.clone(), 1).expect("b, 2: four holdings");
        assert_eq!(counts(&r, "a"), Some((2, 0)));
        // Updates still pass at every limit.
        r.publish(1, a.clone(), 4).expect("update");
        assert_eq!(counts(&r, "a"), Some((2, 1)));
        r.unpublish(2, "b");
        assert_eq!(
            r.publish(3, a, 1),
            Err(RegistryError::Full),
            "still two holders of a"
        );
        r.publish(3, b, 1).expect("room again");
        let mut tiny = lobby(
            Config {
                max_holdings: 1,
                ..cfg()
            },
            [1],
            t,
        );
        tiny.publish(1, file("x", 1, 1), 1).expect("one");
        assert_eq!(
            tiny.publish(1, file("y", 1, 1), 1),
            Err(RegistryError::Full),
            "holdings"
        );
    }

    #[test]
    fn holdings_of_linked_trackers_are_counted_until_they_go_stale() {
        let t = Instant::now();
        let mut r = lobby(cfg(), [1, 2], t);
        let movie = file("movie.ts", 100, 1);
        r.publish(1, movie.clone(), 100).expect("local");
        let theirs = [
            holding(&movie, 10, 30),
            holding(&movie, 11, 100),
            holding(&file("song.mp3", 5, 3), 10, 5),
        ];
        assert_eq!(r.merge_remote_holdings(&theirs, there(), t), 3);
        assert_eq!(counts(&r, "movie.ts"), Some((3, 2)));
        assert_eq!(counts(&r, "song.mp3"), Some((1, 1)));
        let hs = r.holders("movie.ts", 10, 2, here());
        let seen: Vec<(NodeId, SocketAddr)> = hs.iter().map(|h| (h.node.id, h.tracker)).collect();
        assert_eq!(seen, [(1, here()), (11, there()), (10, there())]);
        // Only local holdings are gossiped on.
        assert_eq!(holder_ids_of(&r.local_holdings(99)), [1]);
        // Reported again, a holding stays (with its new `have`); one no
        // longer reported goes stale, and its name with it.
        r.merge_remote_holdings(
            &[holding(&movie, 10, 100)],
            there(),
            t + Duration::from_secs(60),
        );
        r.update(1, 0, NatType::Unknown, t + Duration::from_secs(100))
            .expect("heartbeat");
        r.update(2, 0, NatType::Unknown, t + Duration::from_secs(100))
            .expect("heartbeat");
        r.expire(t + Duration::from_secs(150));
        assert_eq!(counts(&r, "movie.ts"), Some((2, 2)));
        assert_eq!(counts(&r, "song.mp3"), None);
        r.expire(t + Duration::from_secs(180));
        assert_eq!(counts(&r, "movie.ts"), Some((1, 1)));
        assert_eq!(r.remote_holdings, 0);
    }

    fn holder_ids_of(v: &[Holding]) -> Vec<NodeId> {
        v.iter().map(|h| h.node.id).collect()
    }

    #[test]
    fn a_node_is_counted_once_and_the_first_file_under_a_name_wins() {
        let t = Instant::now();
        let mut r = lobby(cfg(), [1, 2], t);
        let v1 = file("movie.ts", 100, 1);
        let v2 = file("movie.ts", 100, 2);
        // Node 2 holds it here and, says a linked tracker, there too.
        r.merge_remote_holdings(&[holding(&v1, 2, 10)], there(), t);
        r.publish(2, v1.clone(), 20).expect("local replaces remote");
        assert_eq!(r.remote_holdings, 0);
        assert_eq!(
            r.merge_remote_holdings(&[holding(&v1, 2, 10)], there(), t),
            0,
            "the local holding is authoritative"
        );
        assert_eq!(counts(&r, "movie.ts"), Some((1, 0)));
        assert_eq!(r.holders("movie.ts", 9, 0, here())[0].have, 20);
        // Another file under the name is ignored, from a link or from here.
        assert_eq!(
            r.merge_remote_holdings(&[holding(&v2, 9, 1)], there(), t),
            0
        );
        assert_eq!(r.publish(1, v2.clone(), 1), Err(RegistryError::Conflict));
        // Remote-only: the first file seen wins, here too.
        r.unpublish(2, "movie.ts");
        r.merge_remote_holdings(&[holding(&v2, 9, 1)], there(), t);
        assert_eq!(r.publish(1, v1, 1), Err(RegistryError::Conflict));
        r.publish(1, v2, 1).expect("the same file");
        assert_eq!(counts(&r, "movie.ts"), Some((2, 0)));
        // Invalid holdings are ignored.
        let bad = [
            holding(&file("", 1, 1), 9, 0),
            holding(&file("x\n", 1, 1), 9, 0),
            holding(&file("y", 1, 1), 9, 2),
        ];
        assert_eq!(r.merge_remote_holdings(&bad, there(), t), 0);
        assert_eq!(r.file_count(), 1);
    }

    #[test]
    fn holdings_learnt_from_links_are_bounded() {
        let t = Instant::now();
        let mut r = lobby(
            Config {
                max_files: 2,
                max_holders: 2,
                max_remote_holdings: 3,
                ..cfg()
            },
            [1],
            t,
        );
        let (a, b, c) = (file("a", 4, 1), file("b", 4, 1), file("c", 4, 1));
        r.publish(1, a.clone(), 1).expect("local");
        let theirs = [
            holding(&a, 10, 1),
            holding(&a, 11, 1), // a has two holders
            holding(&b, 10, 1),
            holding(&c, 10, 1), // two files
            holding(&b, 11, 1),
            holding(&b, 12, 1), // three remote holdings
        ];
        assert_eq!(r.merge_remote_holdings(&theirs, there(), t), 3);
        assert_eq!(counts(&r, "a"), Some((2, 0)));
        assert_eq!(counts(&r, "b"), Some((2, 0)));
        assert_eq!(counts(&r, "c"), None);
        // Refreshing what is kept passes at the limit.
        assert_eq!(r.merge_remote_holdings(&theirs[..1], there(), t), 1);
    }
}
