//! The tracker server: the coroutine driver around [`Registry`].
//!
//! ```text
//!  TCP listener ──► one coroutine per connection: frames in (wire::Decoder),
//!                   requests answered in order through a bounded outbox
//!                   that a writer coroutine drains
//!  UDP primary  ──► Whoami → WhoamiReply (from this socket, or from the
//!  UDP alternate    other one when asked: NAT classification)
//!  links        ──► one coroutine per configured tracker: connect, announce
//!                   (TrackerInfo), then the same connection handler
//!  gossip       ──► every `gossip` period, to every linked tracker: the
//!                   trackers we know, the nodes registered here and the
//!                   files they hold
//!  expiry       ──► drops nodes whose TTL ran out
//! ```
//!
//! Everything runs on the loop that called [`Tracker::start`]. A
//! connection whose outbox is full (a client that does not read) is
//! dropped; a malformed frame gets an Error frame and the connection is
//! closed; a node's entry (and what it published to the file catalog) goes
//! when its connection does.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use super::registry::{self, Registry, RegistryError};
use super::wire::{self, ChatUser, Decoder, ErrorCode, Message, ReplyFrom};
use super::{reached_at, NodeId, NodeInfo};
use crate::net::{TcpListener, TcpStream, UdpSocket};
use crate::sync::{channel, Receiver, Sender};
use crate::time::{clock_now, sleep, sleep_until};

/// Frames queued for one connection before it counts as stuck.
const OUTBOX: usize = 256;
/// Nodes per gossip frame (the wire's list bound).
const GOSSIP_CHUNK: usize = 256;
/// Holdings per gossip frame (the wire's list bound).
const HOLDINGS_CHUNK: usize = wire::MAX_HOLDINGS;

/// Tracker settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// This tracker's identity (random by default).
    pub id: NodeId,
    /// TCP address for control connections.
    pub tcp: SocketAddr,
    /// UDP address for address discovery.
    pub udp: SocketAddr,
    /// A second UDP address (another port of the same IP) that answers
    /// "reply from the other port" probes; `None`: no alternate.
    pub udp_alt: Option<SocketAddr>,
    /// Other trackers' TCP addresses to link to.
    pub links: Vec<SocketAddr>,
    /// How often linked trackers exchange what they know.
    pub gossip: Duration,
    /// How long to wait before reconnecting a failed link.
    pub relink: Duration,
    /// The registry's limits, TTL and edge key.
    pub registry: registry::Config,
    /// Log every frame received (the tracker binary's `--verbose`).
    pub verbose: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            id: crate::rand::random_u64(),
            tcp: "0.0.0.0:7000".parse().expect("valid"),
            udp: "0.0.0.0:7000".parse().expect("valid"),
            udp_alt: Some("0.0.0.0:7001".parse().expect("valid")),
            links: Vec::new(),
            gossip: Duration::from_secs(30),
            relink: Duration::from_secs(5),
            registry: registry::Config::default(),
            verbose: false,
        }
    }
}

/// What the tracker's coroutines share.
struct State {
    config: Config,
    reg: RefCell<Registry>,
    /// Outboxes of the connections of registered nodes.
    nodes: RefCell<HashMap<NodeId, Sender<Message>>>,
    /// Outboxes of linked trackers, by their TCP address.
    links: RefCell<HashMap<SocketAddr, Sender<Message>>>,
    /// Chat names, and who has punched through to whom.
    chat: RefCell<Chat>,
    tcp: SocketAddr,
    udp: SocketAddr,
    udp_alt: Option<SocketAddr>,
    /// The primary UDP socket (answers relayed Whoamis too).
    udp_sock: Rc<UdpSocket>,
    stopped: Cell<bool>,
}

/// Chat state: logged-in names (bounded like the node list) and the
/// successful punches each node reported.
#[derive(Default)]
struct Chat {
    names: HashMap<String, NodeId>,
    by_node: HashMap<NodeId, String>,
    punched: HashMap<NodeId, Vec<NodeId>>,
}

impl Chat {
    fn forget(&mut self, id: NodeId) {
        if let Some(name) = self.by_node.remove(&id) {
            self.names.remove(&name);
        }
        self.punched.remove(&id);
    }
}

/// What a tracker holds, from [`Tracker::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackerStats {
    /// Nodes registered here.
    pub nodes: usize,
    /// Of those, edges.
    pub edges: usize,
    /// Of those, sources.
    pub sources: usize,
    /// Of those, peers (viewers and chat users).
    pub peers: usize,
    /// Rooms with nodes here.
    pub rooms: usize,
    /// Names in the file catalog (held here or on linked trackers).
    pub files: usize,
    /// Other trackers known.
    pub trackers: usize,
}

/// A running tracker; dropping it does not stop it (see [`Tracker::stop`]).
pub struct Tracker {
    state: Rc<State>,
}

impl Tracker {
    /// Binds the sockets and starts the tracker's coroutines on this loop.
    /// Fails if a port is in use (the error names the address).
    pub fn start(config: Config) -> io::Result<Tracker> {
        let listener = TcpListener::bind(config.tcp)?;
        let udp = UdpSocket::bind(config.udp)?;
        let alt = match config.udp_alt {
            Some(a) => Some(UdpSocket::bind(a)?),
            None => None,
        };
        let seed = config.id;
        let udp = Rc::new(udp);
        let alt = alt.map(Rc::new);
        let state = Rc::new(State {
            reg: RefCell::new(Registry::new(config.registry.clone(), seed)),
            nodes: RefCell::new(HashMap::new()),
            links: RefCell::new(HashMap::new()),
            chat: RefCell::new(Chat::default()),
            tcp: listener.local_addr()?,
            udp: udp.local_addr()?,
            udp_alt: alt.as_ref().map(|a| a.local_addr()).transpose()?,
            udp_sock: udp.clone(),
            stopped: Cell::new(false),
            config,
        });
        spawn_udp(&state, udp.clone(), alt.clone());
        if let Some(alt) = alt {
            spawn_udp(&state, alt, Some(udp));
        }
        let st = state.clone();
        drop(crate::spawn(move || accept_loop(st, listener)));
        for &link in &state.config.links {
            let st = state.clone();
            drop(crate::spawn(move || link_loop(st, link)));
        }
        let st = state.clone();
        drop(crate::spawn(move || gossip_loop(st)));
        let st = state.clone();
        drop(crate::spawn(move || expiry_loop(st)));
        Ok(Tracker { state })
    }

    /// The TCP address it listens on.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.state.tcp
    }

    /// The primary UDP address.
    pub fn udp_addr(&self) -> SocketAddr {
        self.state.udp
    }

    /// The alternate UDP address, if any.
    pub fn udp_alt_addr(&self) -> Option<SocketAddr> {
        self.state.udp_alt
    }

    /// Nodes registered here.
    pub fn node_count(&self) -> usize {
        self.state.reg.borrow().len()
    }

    /// What it holds now, for metrics (walks the local registry: call it
    /// at scrape rate, not per message).
    pub fn stats(&self) -> TrackerStats {
        let reg = self.state.reg.borrow();
        let mut s = TrackerStats {
            nodes: reg.len(),
            rooms: reg.rooms().count(),
            files: reg.file_count(),
            trackers: reg.trackers().len(),
            ..TrackerStats::default()
        };
        for n in reg.local_nodes(usize::MAX) {
            match n.role {
                super::Role::Edge => s.edges += 1,
                super::Role::Source => s.sources += 1,
                super::Role::Peer => s.peers += 1,
            }
        }
        s
    }

    /// The trackers it knows (not itself).
    pub fn trackers(&self) -> Vec<SocketAddr> {
        self.state.reg.borrow().trackers().to_vec()
    }

    /// Asks its coroutines to stop: each notices at its next wake (the
    /// accept loop at the next connection, UDP loops at the next datagram,
    /// links and gossip at their next period); open connections end as
    /// their peers go. The runtime's shutdown ends everything at once.
    pub fn stop(&self) {
        self.state.stopped.set(true);
    }
}

fn accept_loop(st: Rc<State>, listener: TcpListener) {
    while !st.stopped.get() {
        match listener.accept() {
            Ok((conn, peer)) => {
                let st = st.clone();
                drop(crate::spawn(move || {
                    serve_conn(&st, conn, peer, None);
                }));
            }
            Err(e) => {
                log::warn!("tracker: accept failed: {e}");
                sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Answers Whoami probes on `sock`; `other` answers when asked to reply
/// from the other port.
fn spawn_udp(st: &Rc<State>, sock: Rc<UdpSocket>, other: Option<Rc<UdpSocket>>) {
    let st = st.clone();
    drop(crate::spawn(move || {
        let mut buf = vec![0u8; 2048];
        while !st.stopped.get() {
            let (n, from) = match sock.recv_from(&mut buf) {
                Ok(r) => r,
                Err(e) => {
                    log::debug!("tracker: udp receive failed: {e}");
                    continue;
                }
            };
            let msg = match Message::decode_frame(&buf[..n]) {
                Ok(m) => m,
                Err(e) => {
                    log::debug!("tracker: bad datagram from {from}: {e}");
                    continue;
                }
            };
            if st.config.verbose {
                log::info!("tracker: udp {from}: {msg:?}");
            }
            if let Message::Whoami { nonce, reply_from } = msg {
                let (via, from_other) = match (&other, reply_from) {
                    (Some(o), ReplyFrom::OtherPort) => (o, true),
                    (_, ReplyFrom::OtherIp) => {
                        // A linked tracker (another IP) answers; without
                        // one the probe goes unanswered, as it must.
                        let link = st.links.borrow().values().next().cloned();
                        if let Some(link) = link {
                            let _ = link.try_send(Message::WhoamiRelay {
                                nonce,
                                observed: from,
                            });
                        }
                        continue;
                    }
                    _ => (&sock, false),
                };
                let reply = Message::WhoamiReply {
                    nonce,
                    observed: from,
                    from_other,
                };
                if let Ok(frame) = reply.to_frame() {
                    let _ = via.send_to(&frame, from);
                }
            }
        }
    }));
}

/// Keeps a link to the tracker at `addr` up: connect, announce, serve.
fn link_loop(st: Rc<State>, addr: SocketAddr) {
    while !st.stopped.get() {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(conn) => {
                let hello = Message::TrackerInfo {
                    id: st.config.id,
                    addr: st.tcp,
                    udp: st.udp,
                };
                serve_conn(&st, conn, addr, Some(hello));
            }
            Err(e) => log::debug!("tracker: link to {addr} failed: {e}"),
        }
        sleep(st.config.relink);
    }
}

/// Every `gossip` period, tells every linked tracker what this one knows.
fn gossip_loop(st: Rc<State>) {
    while !st.stopped.get() {
        sleep(st.config.gossip);
        let outboxes: Vec<Sender<Message>> = st.links.borrow().values().cloned().collect();
        for out in outboxes {
            for m in gossip(&st) {
                let _ = out.try_send(m);
            }
        }
    }
}

/// What a linked tracker is told: the trackers known, then the local
/// nodes, then the files they hold.
fn gossip(st: &State) -> Vec<Message> {
    let mut out = vec![tracker_list(st)];
    let reg = st.reg.borrow();
    let nodes = reg.local_nodes(reg.config().max_remote);
    for chunk in nodes.chunks(GOSSIP_CHUNK) {
        out.push(Message::NodesList {
            room: 0,
            nodes: chunk.to_vec(),
        });
    }
    let holdings = reg.local_holdings(reg.config().max_remote_holdings);
    for chunk in holdings.chunks(HOLDINGS_CHUNK) {
        out.push(Message::HoldingsList {
            holdings: chunk.to_vec(),
        });
    }
    out
}

fn expiry_loop(st: Rc<State>) {
    while !st.stopped.get() {
        let next = st.reg.borrow().next_deadline();
        match next {
            Some(t) => sleep_until(t),
            None => sleep(Duration::from_secs(1)),
        }
        let gone = st.reg.borrow_mut().expire(clock_now());
        for n in gone {
            log::info!("tracker: node {:016x} expired (room {})", n.id, n.room);
            st.nodes.borrow_mut().remove(&n.id);
            st.chat.borrow_mut().forget(n.id);
        }
    }
}

/// Who is at the other end of a connection, once it said.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Peer {
    Unknown,
    Node(NodeId),
    Tracker(NodeId, SocketAddr),
}

/// Serves one connection (a node's, or a linked tracker's) until it ends.
fn serve_conn(st: &Rc<State>, conn: TcpStream, addr: SocketAddr, first: Option<Message>) {
    let _ = conn.set_nodelay(true);
    let conn = Rc::new(conn);
    let (out, inbox) = channel::<Message>(OUTBOX);
    let writer = {
        let conn = conn.clone();
        crate::spawn(move || write_loop(&conn, inbox))
    };
    if let Some(m) = first {
        let _ = out.try_send(m);
    }
    let mut peer = Peer::Unknown;
    // What `Holder::tracker` says of local holders: the unspecified
    // address, "the tracker you asked" (the client puts in the address it
    // dialled; ours as seen from here may be private, behind a NAT or a
    // port forward).
    let here = SocketAddr::from(([0, 0, 0, 0], 0));
    // Our own address as this connection reached it (ours may be a
    // wildcard): to know ourselves in a linked tracker's list.
    let me = match conn.local_addr() {
        Ok(local) if st.tcp.ip().is_unspecified() => SocketAddr::new(local.ip(), st.tcp.port()),
        _ => st.tcp,
    };
    let mut dec = Decoder::new();
    let mut buf = vec![0u8; 16 * 1024];
    // Silent connections go after one TTL (heartbeats come far more often).
    let _ = conn.set_read_timeout(Some(st.config.registry.ttl));
    'conn: loop {
        let n = match (&*conn).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                log::debug!("tracker: connection {addr} ends: {e}");
                break;
            }
        };
        dec.push(&buf[..n]);
        loop {
            let msg = match dec.next() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    log::info!("tracker: malformed frame from {addr}: {e}");
                    let _ = out.try_send(Message::error(ErrorCode::Malformed, &e.to_string()));
                    break 'conn;
                }
            };
            if st.config.verbose {
                log::info!("tracker: {addr}: {msg:?}");
            }
            match handle(st, &mut peer, (addr, me), here, msg, &out) {
                Ok(true) => {}
                Ok(false) => break 'conn,
                Err(()) => {
                    log::info!("tracker: dropping {addr}: its outbox is full");
                    break 'conn;
                }
            }
        }
    }
    match peer {
        Peer::Node(id) => {
            st.nodes.borrow_mut().remove(&id);
            st.reg.borrow_mut().remove(id);
            st.chat.borrow_mut().forget(id);
        }
        Peer::Tracker(_, a) => {
            st.links.borrow_mut().remove(&a);
        }
        Peer::Unknown => {}
    }
    drop(out);
    let _ = writer.join();
    let _ = conn.shutdown(std::net::Shutdown::Both);
}

fn write_loop(conn: &TcpStream, inbox: Receiver<Message>) {
    let mut frame = Vec::new();
    while let Ok(m) = inbox.recv() {
        frame.clear();
        if let Err(e) = m.encode(&mut frame) {
            log::error!("tracker: cannot encode {m:?}: {e}");
            continue;
        }
        if (&*conn).write_all(&frame).is_err() {
            break;
        }
    }
}

fn registry_error(e: RegistryError) -> Message {
    let code = match e {
        RegistryError::BadKey => ErrorCode::BadKey,
        RegistryError::UnknownRoom => ErrorCode::UnknownRoom,
        RegistryError::NotRegistered => ErrorCode::NotRegistered,
        RegistryError::Full => ErrorCode::TooMany,
        RegistryError::Conflict => ErrorCode::Conflict,
        RegistryError::Invalid => ErrorCode::Invalid,
    };
    Message::error(code, &e.to_string())
}

/// This tracker first, then the trackers it knows (within the wire's bound).
fn tracker_list(st: &State) -> Message {
    let mut trackers = vec![st.tcp];
    trackers.extend(
        st.reg
            .borrow()
            .trackers()
            .iter()
            .take(wire::MAX_TRACKERS - 1),
    );
    Message::TrackersList { trackers }
}

/// The answer to `Publish` and `Unpublish`: the file's entry as it now
/// stands, or none once nobody holds it.
fn catalog_entry(st: &State, name: &str) -> Message {
    Message::Catalog {
        entries: st.reg.borrow().entry(name).into_iter().collect(),
    }
}

/// The logged-in chat users, as the tracker knows them now.
fn chat_list(st: &State) -> Message {
    let now = clock_now();
    let chat = st.chat.borrow();
    let reg = st.reg.borrow();
    let mut users: Vec<ChatUser> = chat
        .names
        .iter()
        .filter_map(|(name, &node)| {
            let info = reg.get(node)?;
            let ttl = reg
                .expires(node)
                .map_or(0, |t| t.saturating_duration_since(now).as_secs());
            Some(ChatUser {
                name: name.clone(),
                node,
                public: info.public,
                ttl_secs: u32::try_from(ttl).unwrap_or(u32::MAX),
                punched: chat.punched.get(&node).cloned().unwrap_or_default(),
            })
        })
        .collect();
    users.sort_by(|a, b| a.name.cmp(&b.name));
    users.truncate(wire::MAX_CHAT_USERS);
    Message::ChatList { users }
}

/// Handles one message on a connection between `addr` (the other end) and
/// `me` (our address as that connection reached it); `here` is what local
/// holders' `Holder::tracker` says. `Ok(false)` ends the connection;
/// `Err(())` means the outbox is full.
fn handle(
    st: &Rc<State>,
    peer: &mut Peer,
    (addr, me): (SocketAddr, SocketAddr),
    here: SocketAddr,
    msg: Message,
    out: &Sender<Message>,
) -> Result<bool, ()> {
    let now = clock_now();
    let reply = |m: Message| out.try_send(m).map_err(drop);
    match msg {
        Message::Hello {
            node,
            role,
            room,
            local,
            workload,
            nat,
            key,
            public,
        } => {
            if let Peer::Node(id) = *peer {
                if id != node {
                    reply(Message::error(
                        ErrorCode::Malformed,
                        "one node per connection",
                    ))?;
                    return Ok(false);
                }
            }
            // A node may tell its public UDP address (from Whoami); it is
            // believed only for the IP its TCP connection comes from.
            let public = public
                .filter(|p| p.ip() == addr.ip())
                .unwrap_or_else(|| SocketAddr::new(addr.ip(), local.port()));
            let info = NodeInfo {
                id: node,
                role,
                room,
                public,
                local,
                workload,
                nat,
            };
            let r = st.reg.borrow_mut().register(info, &key, now);
            match r {
                Ok(()) => {
                    *peer = Peer::Node(node);
                    st.nodes.borrow_mut().insert(node, out.clone());
                    reply(Message::HelloReply {
                        node,
                        public: Some(public),
                        tracker: st.config.id,
                    })?;
                }
                Err(e) => reply(registry_error(e))?,
            }
        }
        Message::Update { workload, nat } => {
            let Peer::Node(id) = *peer else {
                reply(registry_error(RegistryError::NotRegistered))?;
                return Ok(true);
            };
            if let Err(e) = st.reg.borrow_mut().update(id, workload, nat, now) {
                reply(registry_error(e))?;
            }
        }
        Message::NodesRequest {
            room,
            strategy,
            max,
        } => {
            let asker = match *peer {
                Peer::Node(id) => id,
                _ => 0,
            };
            let max = usize::from(max).min(wire::MAX_NODES);
            let nodes = st.reg.borrow_mut().nodes(room, strategy, max, asker);
            reply(Message::NodesList { room, nodes })?;
        }
        Message::TrackersRequest => reply(tracker_list(st))?,
        Message::RoomAllocate { key } => {
            let r = st.reg.borrow_mut().allocate_room(&key, now);
            match r {
                Ok(room) => reply(Message::RoomAllocated { room })?,
                Err(e) => reply(registry_error(e))?,
            }
        }
        Message::PunchRequest {
            from,
            to,
            room,
            token,
        } => {
            if *peer != Peer::Node(from) {
                reply(registry_error(RegistryError::NotRegistered))?;
                return Ok(true);
            }
            let me = st.reg.borrow().get(from).cloned();
            let target = st.nodes.borrow().get(&to).cloned();
            let same_room = st.reg.borrow().get(to).is_some_and(|n| n.room == room);
            match (me, target) {
                (Some(me), Some(target)) if same_room => {
                    let _ = target.try_send(Message::PunchNotify { peer: me, token });
                }
                // PunchRequest is one-way: the failure comes back as a
                // notification naming the attempt, not as an Error a
                // pending request could take for its reply.
                _ => reply(Message::PunchResult {
                    token,
                    to,
                    ok: false,
                    relayed: false,
                })?,
            }
        }
        Message::Bye => return Ok(false),
        Message::TrackerInfo { id, addr: tcp, .. } => {
            if id == st.config.id {
                // Linked to ourselves (a list that names us): end it.
                return Ok(false);
            }
            // A wildcard is reached at the IP its link comes from.
            let tcp = reached_at(tcp, addr.ip());
            let first = *peer == Peer::Unknown;
            *peer = Peer::Tracker(id, tcp);
            st.reg.borrow_mut().add_trackers(&[tcp]);
            st.links.borrow_mut().insert(tcp, out.clone());
            if first && !st.config.links.contains(&addr) {
                // The side that was dialled introduces itself in turn.
                reply(Message::TrackerInfo {
                    id: st.config.id,
                    addr: st.tcp,
                    udp: st.udp,
                })?;
            }
            for m in gossip(st) {
                reply(m)?;
            }
        }
        Message::TrackersList { trackers } => {
            if let Peer::Tracker(..) = *peer {
                let others: Vec<SocketAddr> = trackers
                    .into_iter()
                    .map(|t| reached_at(t, addr.ip()))
                    .filter(|&t| t != st.tcp && t != me)
                    .collect();
                st.reg.borrow_mut().add_trackers(&others);
            }
        }
        Message::NodesList { nodes, .. } => {
            if let Peer::Tracker(..) = *peer {
                st.reg.borrow_mut().merge_remote(&nodes, now);
            }
        }
        Message::Publish { file, have } => {
            let Peer::Node(id) = *peer else {
                reply(registry_error(RegistryError::NotRegistered))?;
                return Ok(true);
            };
            let name = file.name.clone();
            let r = st.reg.borrow_mut().publish(id, file, have);
            match r {
                Ok(()) => reply(catalog_entry(st, &name))?,
                Err(e) => reply(registry_error(e))?,
            }
        }
        Message::Unpublish { name } => {
            let Peer::Node(id) = *peer else {
                reply(registry_error(RegistryError::NotRegistered))?;
                return Ok(true);
            };
            st.reg.borrow_mut().unpublish(id, &name);
            reply(catalog_entry(st, &name))?;
        }
        Message::CatalogRequest { prefix } => {
            let entries = st.reg.borrow().catalog(&prefix, wire::MAX_CATALOG);
            reply(Message::Catalog { entries })?;
        }
        Message::HoldersRequest { name, max } => {
            let asker = match *peer {
                Peer::Node(id) => id,
                _ => 0,
            };
            let max = usize::from(max).min(wire::MAX_NODES);
            let holders = st.reg.borrow().holders(&name, max, asker, here);
            reply(Message::Holders { name, holders })?;
        }
        Message::HoldingsList { holdings } => {
            if let Peer::Tracker(_, tcp) = *peer {
                // `tcp` is where the link reaches it (see `reached_at`).
                st.reg
                    .borrow_mut()
                    .merge_remote_holdings(&holdings, tcp, now);
            }
        }
        Message::ChatLogin { name } => {
            let Peer::Node(id) = *peer else {
                reply(registry_error(RegistryError::NotRegistered))?;
                return Ok(true);
            };
            let mut chat = st.chat.borrow_mut();
            let taken = chat.names.get(&name).is_some_and(|&n| n != id);
            if name.is_empty() || taken {
                drop(chat);
                reply(Message::error(
                    ErrorCode::TooMany,
                    &format!("the name {name:?} is empty or taken"),
                ))?;
                return Ok(true);
            }
            if let Some(old) = chat.by_node.insert(id, name.clone()) {
                chat.names.remove(&old);
            }
            chat.names.insert(name, id);
            drop(chat);
            reply(chat_list(st))?;
        }
        Message::ChatLogout => {
            if let Peer::Node(id) = *peer {
                st.chat.borrow_mut().forget(id);
            }
            reply(chat_list(st))?;
        }
        Message::ChatListRequest => reply(chat_list(st))?,
        Message::PunchResult { to, ok, .. } => {
            if let (Peer::Node(id), true) = (*peer, ok) {
                let mut chat = st.chat.borrow_mut();
                let list = chat.punched.entry(id).or_default();
                if !list.contains(&to) && list.len() < wire::MAX_PUNCHED {
                    list.push(to);
                }
            }
        }
        Message::WhoamiRelay { nonce, observed } => {
            if let Peer::Tracker(..) = *peer {
                let r = Message::WhoamiReply {
                    nonce,
                    observed,
                    from_other: true,
                };
                if let Ok(frame) = r.to_frame() {
                    let _ = st.udp_sock.send_to(&frame, observed);
                }
            }
        }
        Message::Error { code, text } => {
            log::info!("tracker: {addr} reports error {code}: {text}");
        }
        other => {
            reply(Message::error(
                ErrorCode::Unsupported,
                &format!("a tracker does not take message type {:#04x}", other.code()),
            ))?;
        }
    }
    Ok(true)
}
