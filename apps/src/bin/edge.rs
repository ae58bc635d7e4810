//! `edge`: takes live streams from sources, keeps a window of recent
//! fragments per room, serves them to viewers, relays the pairs of viewers
//! that cannot punch, reports its load to the tracker and exposes
//! Prometheus metrics.
//!
//! ```text
//! edge --tracker HOST:7000 --edge-key KEY [--listen 0.0.0.0:7100]
//!      [--public IP:PORT] [--metrics 127.0.0.1:9100] [--window-secs 10]
//! ```
//!
//! One RUDP socket carries everything; the first message of each incoming
//! connection says what it is:
//!
//! | first message            | what it is                                   |
//! |--------------------------|----------------------------------------------|
//! | `Hello { role: Source }` | a source pushing a room (with the edge key)  |
//! | `RelayOpen`              | one side of a relayed pair of viewers        |
//! | anything else            | a viewer or peer pulling (the peer protocol) |
//!
//! A source's connection then carries `MetaReply` pushes (first the room's
//! public key, then signed metadata) and `Fragment` pushes; the edge checks
//! every signature before storing, so what it serves is what the source
//! signed. The edge registers each room it carries with the tracker as the
//! room's edge (a node per room), so viewers find it with
//! `NodesRequest { strategy: Edges }`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use clap::Parser;
use libnet::p2p::client::{whoami_rudp, Hello, TrackerClient};
use libnet::p2p::peer::{PeerServer, ServerConfig};
use libnet::p2p::registry::LOBBY;
use libnet::p2p::relay::{self, Relay};
use libnet::p2p::store::{FragmentStore, SharedStore, StoreConfig};
use libnet::p2p::wire::{ErrorCode, Message};
use libnet::p2p::{rudp_config, NatType, NodeId, Role, RoomId};
use libnet::rand::random_u64;
use libnet::rudp::{RudpConnection, RudpSocket};
use libnet::sync::Receiver;
use libnet::time::sleep;
use p2p_apps::http::{Metrics, Routes, Server};
use p2p_apps::node::{same_key, say, signal_name, start, TRACKER_TIMEOUT};
use p2p_apps::signed::{RoomPublic, META_PUBKEY};
use p2p_apps::{concrete_bind, init_logging, resolve, tracker_addrs};

/// The edge server of a p2p-live broadcast.
#[derive(Parser, Debug)]
#[command(name = "edge", version)]
struct Args {
    /// The tracker's TCP address.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7000")]
    tracker: String,
    /// The tracker's UDP (Whoami) address [default: the tracker's host, port 3478].
    #[arg(long, value_name = "HOST:PORT")]
    tracker_udp: Option<String>,
    /// The edge key the tracker expects from edges and sources.
    #[arg(long, value_name = "KEY", default_value = "")]
    edge_key: String,
    /// UDP address of the RUDP socket (sources, viewers, relay). An
    /// unspecified IP stands for the interface that routes to the tracker.
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:7100")]
    listen: SocketAddr,
    /// The address viewers should use, if the tracker cannot see it
    /// (port forwarding) [default: as the tracker sees it].
    #[arg(long, value_name = "IP:PORT")]
    public: Option<SocketAddr>,
    /// HTTP address of the Prometheus metrics (/metrics) and status
    /// (/status.json); "off" to disable.
    #[arg(long, value_name = "IP:PORT|off", default_value = "127.0.0.1:9100")]
    metrics: String,
    /// Seconds of stream kept per room and channel.
    #[arg(long, value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    window_secs: u64,
    /// Rooms carried at once.
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    max_rooms: u64,
}

/// Most fragments kept per room and channel, whatever the window: the
/// time window normally binds first (a 2 Mbit/s stream makes ~35 a
/// second).
const MAX_FRAGMENTS: usize = 20_000;

/// Bytes kept per room and channel.
const MAX_BYTES: usize = 64 << 20;

/// A connection must say what it is within this.
const FIRST_MESSAGE: Duration = Duration::from_secs(10);

/// A room whose source is gone is dropped after this.
const ROOM_LINGER: Duration = Duration::from_secs(30);

/// Tracker heartbeat period.
const HEARTBEAT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging("warn");
    start("edge", Setup::new(args), run)
}

/// The flags, resolved (before the runtime starts: resolution blocks).
struct Setup {
    tracker: SocketAddr,
    tracker_udp: SocketAddr,
    key: Vec<u8>,
    listen: SocketAddr,
    public: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    window: Duration,
    max_rooms: usize,
}

impl Setup {
    fn new(a: Args) -> Result<Setup, String> {
        let (tracker, tracker_udp) = tracker_addrs(&a.tracker, a.tracker_udp.as_deref())?;
        let metrics = match a.metrics.as_str() {
            "off" => None,
            m => Some(resolve("--metrics", m)?),
        };
        let listen = concrete_bind(a.listen, tracker);
        Ok(Setup {
            tracker,
            tracker_udp,
            key: a.edge_key.into_bytes(),
            listen,
            public: a.public,
            metrics,
            window: Duration::from_secs(a.window_secs),
            max_rooms: usize::try_from(a.max_rooms).unwrap_or(usize::MAX),
        })
    }
}

/// One room the edge carries.
struct Room {
    /// The source's public key (pinned while a source is connected).
    key: RoomPublic,
    /// The room's registration with the tracker (as its edge).
    tracker: Option<Rc<TrackerClient>>,
    /// Whether a source is pushing it now.
    live: bool,
    /// When the last source left.
    idle_since: Option<std::time::Instant>,
}

/// Counters for the metrics.
#[derive(Clone, Copy, Default)]
struct Counts {
    sources: u64,
    fragments_in: u64,
    bytes_in: u64,
    bad_signatures: u64,
    refused_sources: u64,
    relay_opens: u64,
}

/// What the edge's coroutines share.
struct Edge {
    setup: Setup,
    sock: Rc<RudpSocket>,
    public: SocketAddr,
    store: SharedStore,
    server: PeerServer,
    relay: Relay,
    rooms: RefCell<HashMap<RoomId, Room>>,
    counts: Cell<Counts>,
    lobby: TrackerClient,
}

impl Edge {
    fn bump(&self, f: impl FnOnce(&mut Counts)) {
        let mut c = self.counts.get();
        f(&mut c);
        self.counts.set(c);
    }

    /// Viewers' connections served now (three per direct viewer).
    fn workload(&self) -> u32 {
        u32::try_from(self.server.stats().connections).unwrap_or(u32::MAX)
    }

    fn hello(&self, room: RoomId) -> Hello {
        Hello {
            node: random_u64(),
            role: Role::Edge,
            room,
            local: self.setup.listen,
            public: Some(self.public),
            workload: self.workload(),
            nat: NatType::Open,
            key: self.setup.key.clone(),
        }
    }
}

fn run(setup: Setup, sig: &Receiver<i32>) -> Result<(), String> {
    let sock = RudpSocket::bind(setup.listen, rudp_config())
        .map_err(|e| format!("cannot listen on {} (--listen): {e}", setup.listen))?;
    let local = sock.local_addr().map_err(|e| e.to_string())?;
    let lobby = TrackerClient::connect(setup.tracker, TRACKER_TIMEOUT).map_err(|e| {
        format!(
            "cannot reach the tracker at {} (--tracker): {e}",
            setup.tracker
        )
    })?;
    let public = match setup.public {
        Some(p) => p,
        None => whoami_rudp(&sock, setup.tracker_udp, Duration::from_secs(3)).unwrap_or_else(|e| {
            log::warn!(
                "edge: no Whoami answer from {} ({e}); using {local}",
                setup.tracker_udp
            );
            local
        }),
    };
    let store = FragmentStore::shared(StoreConfig {
        max_fragments: MAX_FRAGMENTS,
        max_bytes: MAX_BYTES,
        max_rooms: setup.max_rooms,
        max_span: u64::try_from(setup.window.as_micros()).unwrap_or(u64::MAX),
        ..StoreConfig::default()
    });
    let server = PeerServer::new(store.clone(), ServerConfig::default());
    let sock = Rc::new(sock);
    let metrics_at = setup.metrics;
    let edge = Rc::new(Edge {
        setup,
        sock: sock.clone(),
        public,
        store,
        server,
        relay: Relay::new(relay::Config::default()),
        rooms: RefCell::new(HashMap::new()),
        counts: Cell::new(Counts::default()),
        lobby,
    });
    edge.lobby
        .hello(&edge.hello(LOBBY))
        .map_err(|e| format!("the tracker refused the edge: {e} (check --edge-key)"))?;
    let http = match metrics_at {
        Some(at) => {
            let (m, s) = (edge.clone(), edge.clone());
            let routes = Routes {
                metrics: Some(Rc::new(move || metrics(&m))),
                status: Some(Rc::new(move || status(&s))),
                ..Routes::default()
            };
            let server = Server::bind(at, routes).map_err(|e| format!("{e} (--metrics)"))?;
            let bound = server.local_addr();
            Some((server.start(), bound))
        }
        None => None,
    };
    say(format!(
        "edge: listening on {local}, public {public}, tracker {}, metrics {}",
        edge.setup.tracker,
        http.as_ref()
            .map_or_else(|| "off".to_string(), |(_, a)| format!("http://{a}/metrics"))
    ));
    {
        let e = edge.clone();
        drop(libnet::spawn(move || accept(&e)));
        let e = edge.clone();
        drop(libnet::spawn(move || housekeeping(&e)));
    }
    let s = sig.recv().map_err(|_| "the signal thread ended")?;
    let c = edge.counts.get();
    say(format!(
        "edge: stopping on {} ({} rooms, {} fragments in, {} served, {} relayed pairs)",
        signal_name(s),
        edge.rooms.borrow().len(),
        c.fragments_in,
        edge.server.stats().fragments_sent,
        edge.relay.pairs_completed()
    ));
    let rooms: Vec<Room> = edge.rooms.borrow_mut().drain().map(|(_, r)| r).collect();
    for t in rooms.into_iter().filter_map(|r| r.tracker) {
        let _ = t.bye();
    }
    let _ = edge.lobby.bye();
    Ok(())
}

/// Takes every connection and hands it on by its first message.
fn accept(edge: &Rc<Edge>) {
    loop {
        let (conn, from) = match edge.sock.accept() {
            Ok(c) => c,
            Err(e) => {
                log::error!("edge: accept failed: {e}");
                return;
            }
        };
        let e = edge.clone();
        drop(libnet::spawn(move || dispatch(&e, conn, from)));
    }
}

fn dispatch(edge: &Rc<Edge>, conn: RudpConnection, from: SocketAddr) {
    conn.set_read_timeout(Some(FIRST_MESSAGE));
    let first = match conn.recv() {
        Ok(Some(f)) => f,
        Ok(None) => return,
        Err(e) => {
            log::debug!("edge: {from} said nothing: {e}");
            conn.abort();
            return;
        }
    };
    match Message::decode_frame(&first) {
        Ok(Message::Hello {
            role: Role::Source,
            room,
            key,
            node,
            ..
        }) => source(edge, &conn, from, room, &key, node),
        Ok(Message::RelayOpen { .. }) => {
            edge.bump(|c| c.relay_opens += 1);
            edge.relay.handle(conn, Some(first));
        }
        // The peer server answers everything else, garbage included.
        _ => edge.server.serve_with(conn, Some(first)),
    }
}

fn refuse(conn: &RudpConnection, code: ErrorCode, text: &str) {
    if let Ok(f) = Message::error(code, text).to_frame() {
        let _ = conn.send(&f);
    }
    conn.close();
}

/// Takes a source's pushes for `room` until it leaves.
fn source(
    edge: &Rc<Edge>,
    conn: &RudpConnection,
    from: SocketAddr,
    room: RoomId,
    key: &[u8],
    node: NodeId,
) {
    if !same_key(key, &edge.setup.key) {
        edge.bump(|c| c.refused_sources += 1);
        log::warn!("edge: source {from} for room {room} has the wrong edge key");
        refuse(conn, ErrorCode::BadKey, "wrong edge key");
        return;
    }
    if room == LOBBY {
        refuse(
            conn,
            ErrorCode::UnknownRoom,
            "a source needs a room (not the lobby)",
        );
        return;
    }
    let reply = Message::HelloReply {
        node,
        public: Some(from),
        tracker: 0,
    };
    match reply.to_frame() {
        Ok(f) if conn.send(&f).is_ok() => {}
        _ => return,
    }
    // A source that falls silent for long is gone.
    conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut pinned: Option<RoomPublic> = None;
    let why = loop {
        let frame = match conn.recv() {
            Ok(Some(f)) => f,
            Ok(None) => break "closed".to_string(),
            Err(e) => break e.to_string(),
        };
        let msg = match Message::decode_frame(&frame) {
            Ok(m) => m,
            Err(e) => {
                refuse(conn, ErrorCode::Malformed, "malformed frame");
                break format!("malformed frame: {e}");
            }
        };
        match msg {
            Message::MetaReply {
                room: r,
                key,
                value: Some(value),
            } if r == room => {
                if key == META_PUBKEY {
                    match RoomPublic::from_bytes(&value) {
                        Some(k) => match take_room(edge, room, k) {
                            Ok(()) => pinned = Some(k),
                            Err(text) => {
                                refuse(conn, ErrorCode::BadKey, &text);
                                break text;
                            }
                        },
                        None => {
                            refuse(conn, ErrorCode::Malformed, "not a public key");
                            break "bad public key".into();
                        }
                    }
                    continue;
                }
                let Some(k) = pinned else {
                    refuse(conn, ErrorCode::Malformed, "the public key comes first");
                    break "metadata before the public key".into();
                };
                if k.verify_meta(room, &key, &value).is_err() {
                    edge.bump(|c| c.bad_signatures += 1);
                    refuse(conn, ErrorCode::BadKey, "bad signature");
                    break format!("bad signature on metadata {key:?}");
                }
                if let Err(e) = edge.store.borrow_mut().set_meta(room, &key, &value) {
                    log::warn!("edge: room {room}: metadata {key:?} not kept: {e}");
                }
            }
            Message::Fragment {
                room: r,
                channel,
                id,
                timestamp,
                data,
            } if r == room => {
                let Some(k) = pinned else {
                    refuse(conn, ErrorCode::Malformed, "the public key comes first");
                    break "fragment before the public key".into();
                };
                if k.verify_fragment(room, channel, id, timestamp, &data)
                    .is_err()
                {
                    edge.bump(|c| c.bad_signatures += 1);
                    refuse(conn, ErrorCode::BadKey, "bad signature");
                    break format!("bad signature on fragment {id}");
                }
                let n = data.len() as u64;
                edge.bump(|c| {
                    c.fragments_in += 1;
                    c.bytes_in += n;
                });
                if let Err(e) = edge
                    .store
                    .borrow_mut()
                    .insert(room, channel, id, timestamp, &data)
                {
                    log::warn!("edge: room {room}: fragment {id} not kept: {e}");
                }
            }
            Message::Heartbeat => {}
            other => {
                refuse(
                    conn,
                    ErrorCode::Unsupported,
                    "a source pushes metadata and fragments",
                );
                break format!("unexpected {} from the source", other.name());
            }
        }
    };
    if let Some(r) = edge.rooms.borrow_mut().get_mut(&room) {
        if pinned.is_some_and(|k| k == r.key) {
            r.live = false;
            r.idle_since = Some(std::time::Instant::now());
        }
    }
    log::info!("edge: source {from} of room {room} left: {why}");
    say(format!("edge: source {from} of room {room} left ({why})"));
}

/// Makes `room` ours with key `k`: a room nobody pushes may change hands
/// (its old fragments go); a live one keeps its key.
fn take_room(edge: &Rc<Edge>, room: RoomId, k: RoomPublic) -> Result<(), String> {
    let mut rooms = edge.rooms.borrow_mut();
    if let Some(r) = rooms.get_mut(&room) {
        if r.live && r.key != k {
            return Err(format!("room {room} is live with another key"));
        }
        if r.key != k {
            edge.store.borrow_mut().remove_room(room);
            r.key = k;
        }
        r.live = true;
        r.idle_since = None;
    } else {
        if rooms.len() >= edge.setup.max_rooms {
            return Err(format!("the edge carries {} rooms already", rooms.len()));
        }
        rooms.insert(
            room,
            Room {
                key: k,
                tracker: None,
                live: true,
                idle_since: None,
            },
        );
    }
    drop(rooms);
    edge.store
        .borrow_mut()
        .set_meta(room, META_PUBKEY, &k.to_bytes())
        .map_err(|e| format!("room {room}: {e}"))?;
    edge.bump(|c| c.sources += 1);
    say(format!("edge: room {room} is live (key {})", k.to_hex()));
    // Register as the room's edge so viewers find us.
    let e = edge.clone();
    drop(libnet::spawn(move || register(&e, room)));
    Ok(())
}

/// Registers the edge with the tracker as `room`'s edge (once).
fn register(edge: &Rc<Edge>, room: RoomId) {
    if edge
        .rooms
        .borrow()
        .get(&room)
        .is_none_or(|r| r.tracker.is_some())
    {
        return;
    }
    let t = match TrackerClient::connect(edge.setup.tracker, TRACKER_TIMEOUT) {
        Ok(t) => t,
        Err(e) => {
            log::error!("edge: room {room}: tracker unreachable: {e}");
            return;
        }
    };
    if let Err(e) = t.hello(&edge.hello(room)) {
        log::error!("edge: room {room}: the tracker refused the registration: {e}");
        return;
    }
    if let Some(r) = edge.rooms.borrow_mut().get_mut(&room) {
        r.tracker = Some(Rc::new(t));
    }
}

/// Heartbeats with the load, and drops rooms whose source has been gone
/// for [`ROOM_LINGER`].
fn housekeeping(edge: &Rc<Edge>) {
    loop {
        sleep(HEARTBEAT);
        let load = edge.workload();
        if let Err(e) = edge.lobby.update(load, NatType::Open) {
            log::warn!("edge: tracker heartbeat failed: {e}");
        }
        let now = std::time::Instant::now();
        let gone: Vec<RoomId> = edge
            .rooms
            .borrow()
            .iter()
            .filter(|(_, r)| r.idle_since.is_some_and(|t| now - t > ROOM_LINGER))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            // Out of the map first: `bye` may park, and no borrow may be
            // held across a park.
            let gone = edge.rooms.borrow_mut().remove(&id);
            if let Some(t) = gone.and_then(|r| r.tracker) {
                let _ = t.bye();
            }
            edge.store.borrow_mut().remove_room(id);
            say(format!("edge: room {id} ended"));
        }
        // Clones of the registrations: `update` may park.
        let regs: Vec<(RoomId, Rc<TrackerClient>)> = edge
            .rooms
            .borrow()
            .iter()
            .filter_map(|(id, r)| Some((*id, r.tracker.clone()?)))
            .collect();
        for (id, t) in regs {
            if let Err(e) = t.update(load, NatType::Open) {
                log::warn!("edge: room {id}: tracker heartbeat failed: {e}");
            }
        }
    }
}

fn metrics(edge: &Edge) -> String {
    let c = edge.counts.get();
    let s = edge.server.stats();
    let rooms = edge.rooms.borrow();
    let live = rooms.values().filter(|r| r.live).count();
    let mut m = Metrics::default();
    m.gauge("p2plive_edge_rooms", "Rooms carried.", rooms.len() as f64)
        .gauge(
            "p2plive_edge_rooms_live",
            "Rooms with a source pushing now.",
            live as f64,
        )
        .gauge(
            "p2plive_edge_viewer_connections",
            "Viewer and peer connections served now (three per direct viewer).",
            s.connections as f64,
        )
        .counter(
            "p2plive_edge_viewer_connections_total",
            "Viewer connections accepted.",
            s.accepted,
        )
        .counter(
            "p2plive_edge_fragments_served_total",
            "Fragments sent to viewers.",
            s.fragments_sent,
        )
        .counter(
            "p2plive_edge_bytes_out_total",
            "Bytes of fragments sent to viewers.",
            s.bytes_sent,
        )
        .counter(
            "p2plive_edge_fragments_missing_total",
            "Requested fragments not held.",
            s.missing,
        )
        .counter(
            "p2plive_edge_fragments_in_total",
            "Fragments received from sources.",
            c.fragments_in,
        )
        .counter(
            "p2plive_edge_bytes_in_total",
            "Fragment bytes received from sources.",
            c.bytes_in,
        )
        .counter(
            "p2plive_edge_sources_total",
            "Source connections that went live.",
            c.sources,
        )
        .counter(
            "p2plive_edge_sources_refused_total",
            "Source connections refused (key).",
            c.refused_sources,
        )
        .counter(
            "p2plive_edge_bad_signatures_total",
            "Pushes with a bad signature.",
            c.bad_signatures,
        )
        .counter(
            "p2plive_edge_relay_opens_total",
            "Relay connections opened.",
            c.relay_opens,
        )
        .counter(
            "p2plive_edge_relay_pairs_total",
            "Relayed pairs completed.",
            edge.relay.pairs_completed(),
        )
        .gauge(
            "p2plive_edge_relay_pairs",
            "Relayed pairs active.",
            edge.relay.active_pairs() as f64,
        );
    m.finish()
}

fn status(edge: &Edge) -> String {
    let c = edge.counts.get();
    let s = edge.server.stats();
    let rooms: Vec<String> = edge
        .rooms
        .borrow()
        .iter()
        .map(|(id, r)| {
            format!(
                "{{\"room\":{id},\"live\":{},\"key\":\"{}\"}}",
                r.live,
                r.key.to_hex()
            )
        })
        .collect();
    format!(
        "{{\"public\":\"{}\",\"rooms\":[{}],\"viewer_connections\":{},\"fragments_in\":{},\"fragments_served\":{},\"bytes_out\":{},\"relay_pairs\":{},\"bad_signatures\":{}}}",
        edge.public,
        rooms.join(","),
        s.connections,
        c.fragments_in,
        s.fragments_sent,
        s.bytes_sent,
        edge.relay.pairs_completed(),
        c.bad_signatures
    )
}
