//! The peer layer: two nodes exchange a live stream's fragments and
//! metadata over RUDP, with the peer-protocol messages of [`super::wire`]
//! (0x01–0x0B). `docs/peer.md` has the same as prose for whoever takes over.
//!
//! # Connections
//!
//! Each channel ([`Channel::Meta`], [`Channel::Video`], [`Channel::Audio`])
//! runs on its own RUDP connection, so a backlog of video never delays
//! audio or metadata: RUDP gives each connection its own windows and send
//! queue. [`PeerLink::connect`] opens the three to one peer from one
//! [`RudpSocket`]. Every message names its room and channel, so the serving
//! side treats all connections alike ([`PeerServer`]).
//!
//! # Requests and replies
//!
//! The opener ([`PeerClient`]) sends requests; the holder ([`PeerServer`])
//! answers on the same connection:
//!
//! | request           | answer                                                    |
//! |-------------------|-----------------------------------------------------------|
//! | `Init`            | `InitReply` with the ids held (`first > last`: none)      |
//! | `MapRequest`      | `Map`: a bitmap of the ids held (holes show)              |
//! | `FragmentRequest` | one `Fragment` per id held, one `FragmentMissing` for the rest |
//! | `Cancel`          | none; the ids still queued are not sent                   |
//! | `MetaRequest`     | `MetaReply` (value `None` when absent)                    |
//! | `Ping`            | `Pong` with the holder's workload and tracker count        |
//! | `Heartbeat`       | none                                                      |
//!
//! Short replies (`InitReply`, `Map`, `MetaReply`, `FragmentMissing`, `Pong`) go
//! out before any queued fragment. Fragments wait in a per-connection queue
//! ordered by priority, then by arrival: **a lower priority value is more
//! urgent** (0 = the player needs it next; larger values are prefetching). A
//! request naming an id already queued raises its priority if the new one is
//! more urgent and is otherwise ignored. The queue holds at most
//! [`ServerConfig::max_queued`] fragments; ids that do not fit are answered
//! as missing at once (the requester asks someone else, or again later),
//! as are ids evicted from the store before their turn.
//!
//! # Liveness
//!
//! Each side sends `Heartbeat` when it has sent nothing for `heartbeat`
//! (30 s by default) and gives up on a connection that has been silent for
//! `idle` (120 s): the holder drops it, the opener fails every waiting call.
//! The holder also drops a connection whose peer has not taken a message for
//! `idle` (it stopped reading).
//!
//! # Errors
//!
//! A frame that does not decode gets `Error { Malformed }` from the holder,
//! which then closes the connection; a well-formed message the holder does
//! not serve (tracker messages, a pushed `Fragment`) gets
//! `Error { Unsupported }` and the connection stays. The opener aborts the
//! connection on a malformed frame, and takes any `Error` as the end of the
//! link.
//!
//! # Threads
//!
//! Everything here lives on the loop that created it (`Rc`); each
//! connection has a reader coroutine and a writer coroutine, and only the
//! writer sends on it (callers hand it frames through a bounded libnet
//! channel), so no two coroutines ever wait in `send` on one connection.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::store::{max_meta_value, SharedStore};
use super::wire::{ErrorCode, Message, MAX_IDS, MAX_MAP_BYTES};
use super::{Channel, RoomId};
use crate::rudp::{RudpConnection, RudpSocket};
use crate::sync::{self, oneshot, RecvTimeoutError};
use crate::time::{clock_now, deadline_after};
use crate::JoinHandle;

/// A fragment's name: room, channel, id.
type FragKey = (RoomId, Channel, u64);

// ---------------------------------------------------------------------------
// The serving side
// ---------------------------------------------------------------------------

/// How a [`PeerServer`] treats its connections.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Fragments queued for sending per connection; ids beyond are answered
    /// as missing. Default 256.
    pub max_queued: usize,
    /// Short replies waiting to be sent per connection; beyond, the
    /// connection's requests are not read until the peer takes its replies.
    /// Default 64.
    pub max_replies: usize,
    /// Connections served at once; more get `Error { TooMany }`. Default
    /// 1024.
    pub max_connections: usize,
    /// A heartbeat goes out when nothing was sent for this long. Default
    /// 30 s.
    pub heartbeat: Duration,
    /// A connection that sent nothing, or took nothing, for this long is
    /// dropped. Default 120 s.
    pub idle: Duration,
    /// The sockets' `rudp::Config::max_message`: a stored fragment whose
    /// frame is larger is answered as missing. Default 64 KiB.
    pub max_message: usize,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            max_queued: 256,
            max_replies: 64,
            max_connections: 1024,
            heartbeat: Duration::from_secs(30),
            idle: Duration::from_secs(120),
            max_message: 64 * 1024,
        }
    }
}

/// Counters of a [`PeerServer`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections being served now.
    pub connections: usize,
    /// Connections served since the start.
    pub accepted: u64,
    /// Connections turned away at `max_connections`.
    pub refused: u64,
    /// Fragments queued for sending now, over all connections.
    pub queued: usize,
    /// Fragments sent.
    pub fragments_sent: u64,
    /// Bytes of the fragment frames sent.
    pub bytes_sent: u64,
    /// Ids answered as missing (not held, evicted, or over the queue bound).
    pub missing: u64,
    /// Of those, ids answered as missing because the queue was full.
    pub overflow: u64,
    /// Queued ids dropped by a `Cancel`.
    pub cancelled: u64,
    /// Connections closed for a frame that did not decode.
    pub malformed: u64,
    /// Connections dropped for silence (or for not reading).
    pub idle_closed: u64,
}

/// What the server's coroutines share.
struct ServerShared {
    store: SharedStore,
    config: ServerConfig,
    workload: Cell<u32>,
    trackers: Cell<u16>,
    stats: Cell<ServerStats>,
}

impl ServerShared {
    fn bump(&self, f: impl FnOnce(&mut ServerStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }
}

/// Serves fragments and metadata from a store to peers, one reader and one
/// writer coroutine per connection (see the module docs). Cheap to clone;
/// the clones serve the same store with the same counters.
#[derive(Clone)]
pub struct PeerServer {
    sh: Rc<ServerShared>,
}

impl fmt::Debug for PeerServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerServer")
            .field("stats", &self.sh.stats.get())
            .finish()
    }
}

/// Where a served connection ended.
enum End {
    /// The peer closed in order.
    PeerClosed,
    /// Nothing arrived for `idle`.
    Idle,
    /// A frame did not decode; an Error is queued for it.
    Malformed,
    /// The writer is gone, the connection failed, or the peer sent an Error.
    Failed(String),
}

/// One served connection.
struct Served {
    conn: RudpConnection,
    queue: RefCell<SendQueue>,
}

impl PeerServer {
    /// A server for `store`.
    pub fn new(store: SharedStore, config: ServerConfig) -> PeerServer {
        PeerServer {
            sh: Rc::new(ServerShared {
                store,
                config,
                workload: Cell::new(0),
                trackers: Cell::new(0),
                stats: Cell::new(ServerStats::default()),
            }),
        }
    }

    /// The store served.
    pub fn store(&self) -> &SharedStore {
        &self.sh.store
    }

    /// The figures `Pong` reports: this node's workload and how many
    /// trackers it is connected to.
    pub fn set_load(&self, workload: u32, trackers: u16) {
        self.sh.workload.set(workload);
        self.sh.trackers.set(trackers);
    }

    /// The counters.
    pub fn stats(&self) -> ServerStats {
        self.sh.stats.get()
    }

    /// Accepts every connection arriving on `socket` and serves each in a
    /// coroutine of its own, until `accept` fails. It takes every incoming
    /// connection: a socket that also carries other services (the relay)
    /// needs an accept loop that reads the first message and hands peer
    /// connections to [`PeerServer::serve_with`].
    pub fn accept_loop(&self, socket: Rc<RudpSocket>) -> JoinHandle<()> {
        let server = self.clone();
        crate::spawn(move || {
            while let Ok((conn, _)) = socket.accept() {
                let s = server.clone();
                drop(crate::spawn(move || s.serve(conn)));
            }
        })
    }

    /// Serves one connection on the calling coroutine until it ends (the
    /// peer closes, goes silent, stops reading, or sends garbage).
    pub fn serve(&self, conn: RudpConnection) {
        self.serve_with(conn, None);
    }

    /// Like [`PeerServer::serve`], for a connection whose first message
    /// (`first`, a whole frame) was already read by a dispatcher.
    pub fn serve_with(&self, conn: RudpConnection, first: Option<Vec<u8>>) {
        let sh = &self.sh;
        let cfg = &sh.config;
        if sh.stats.get().connections >= cfg.max_connections {
            sh.bump(|s| s.refused += 1);
            if let Ok(f) =
                Message::error(ErrorCode::TooMany, "too many peer connections").to_frame()
            {
                let _ = conn.send(&f);
            }
            conn.close();
            return;
        }
        sh.bump(|s| {
            s.connections += 1;
            s.accepted += 1;
        });
        // Counts the connection out however this ends (also when unwound).
        let _live = Live(sh.clone());
        conn.set_read_timeout(Some(cfg.idle));
        conn.set_write_timeout(Some(cfg.idle));
        let peer = conn.peer_addr();
        let served = Rc::new(Served {
            conn,
            queue: RefCell::new(SendQueue::new(cfg.max_queued)),
        });
        let (reply_tx, reply_rx) = sync::channel::<Vec<u8>>(cfg.max_replies.max(1));
        let (wake_tx, wake_rx) = sync::channel::<()>(1);
        let writer = {
            let (sh, served) = (sh.clone(), served.clone());
            crate::spawn(move || server_writer(&sh, &served, &reply_rx, &wake_rx))
        };
        let out = Outbox {
            replies: reply_tx,
            wake: wake_tx,
        };
        let end = server_reader(sh, &served, &out, first);
        // Nothing more is sent but the replies already queued (the Error
        // for a malformed frame among them).
        let dropped = served.queue.borrow_mut().clear();
        sh.bump(|s| s.queued -= dropped);
        match &end {
            End::PeerClosed => log::debug!("peer {peer}: closed"),
            End::Malformed => {
                sh.bump(|s| s.malformed += 1);
                log::debug!("peer {peer}: malformed frame, closing");
            }
            End::Idle => {
                sh.bump(|s| s.idle_closed += 1);
                log::debug!("peer {peer}: silent for {:?}, dropped", cfg.idle);
                served.conn.abort();
            }
            End::Failed(why) => {
                log::debug!("peer {peer}: {why}");
                served.conn.abort();
            }
        }
        drop(out);
        let _ = writer.join();
    }
}

/// Decrements the live-connection count when dropped.
struct Live(Rc<ServerShared>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.bump(|s| s.connections -= 1);
    }
}

/// The reader's way to the writer: short replies, and a wake-up for new
/// queued fragments.
struct Outbox {
    replies: sync::Sender<Vec<u8>>,
    wake: sync::Sender<()>,
}

impl Outbox {
    /// Queues a reply (parking while `max_replies` wait); fails once the
    /// writer is gone.
    fn reply(&self, m: &Message) -> Result<(), String> {
        let frame = m
            .to_frame()
            .map_err(|e| format!("cannot encode a reply: {e}"))?;
        self.replies
            .send(frame)
            .map_err(|_| "the connection's writer stopped".to_string())?;
        self.poke();
        Ok(())
    }

    /// Wakes the writer if it waits.
    fn poke(&self) {
        let _ = self.wake.try_send(());
    }
}

/// The served connection's requests, on the coroutine that called `serve`.
fn server_reader(
    sh: &ServerShared,
    served: &Served,
    out: &Outbox,
    mut first: Option<Vec<u8>>,
) -> End {
    loop {
        let frame = match first.take() {
            Some(f) => f,
            None => match served.conn.recv() {
                Ok(Some(f)) => f,
                Ok(None) => return End::PeerClosed,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return End::Idle,
                Err(e) => return End::Failed(e.to_string()),
            },
        };
        let msg = match Message::decode_frame(&frame) {
            Ok(m) => m,
            Err(e) => {
                let _ = out.reply(&Message::error(ErrorCode::Malformed, &e.to_string()));
                return End::Malformed;
            }
        };
        if let Err(why) = handle_request(sh, served, out, msg) {
            return End::Failed(why);
        }
    }
}

/// Answers one well-formed message.
fn handle_request(
    sh: &ServerShared,
    served: &Served,
    out: &Outbox,
    msg: Message,
) -> Result<(), String> {
    match msg {
        Message::Init { room, channel } => {
            let range = sh.store.borrow().range(room, channel);
            let (first, last) = range.unwrap_or((1, 0));
            out.reply(&Message::InitReply {
                room,
                channel,
                first,
                last,
            })
        }
        Message::MapRequest { room, channel } => {
            let map = sh.store.borrow().map(room, channel, MAX_MAP_BYTES);
            let (first, bits) = map.unwrap_or((0, Vec::new()));
            out.reply(&Message::Map {
                room,
                channel,
                first,
                bits,
            })
        }
        Message::FragmentRequest {
            room,
            channel,
            priority,
            ids,
        } => {
            let (mut missing, mut added, mut overflow) = (Vec::new(), 0usize, 0u64);
            {
                let store = sh.store.borrow();
                let mut queue = served.queue.borrow_mut();
                let mut seen = HashSet::with_capacity(ids.len());
                for id in ids {
                    if !seen.insert(id) {
                        continue;
                    }
                    if !store.contains(room, channel, id) {
                        missing.push(id);
                        continue;
                    }
                    match queue.push((room, channel, id), priority) {
                        Push::Queued => added += 1,
                        Push::Already => {}
                        Push::Full => {
                            overflow += 1;
                            missing.push(id);
                        }
                    }
                }
            }
            sh.bump(|s| {
                s.queued += added;
                s.overflow += overflow;
                s.missing += missing.len() as u64;
            });
            if added > 0 {
                out.poke();
            }
            if missing.is_empty() {
                return Ok(());
            }
            // At most MAX_IDS: the request could not carry more.
            out.reply(&Message::FragmentMissing {
                room,
                channel,
                ids: missing,
            })
        }
        Message::Cancel { room, channel, ids } => {
            let n = {
                let mut queue = served.queue.borrow_mut();
                ids.iter()
                    .filter(|&&id| queue.cancel(&(room, channel, id)))
                    .count()
            };
            sh.bump(|s| {
                s.queued -= n;
                s.cancelled += n as u64;
            });
            Ok(())
        }
        Message::MetaRequest { room, key } => {
            let mut value = sh.store.borrow().meta(room, &key).map(|v| v.to_vec());
            if value
                .as_ref()
                .is_some_and(|v| v.len() > max_meta_value(sh.config.max_message))
            {
                // A store configured beyond the message bound: answering
                // would fail the send and the connection.
                log::warn!("peer: metadata {key:?} is too large for one message");
                value = None;
            }
            out.reply(&Message::MetaReply { room, key, value })
        }
        Message::Ping { nonce, .. } => out.reply(&Message::Pong {
            nonce,
            workload: sh.workload.get(),
            trackers: sh.trackers.get(),
        }),
        Message::Heartbeat | Message::Pong { .. } => Ok(()),
        Message::Error { code, text } => Err(format!("peer sent error {code}: {text}")),
        other => out.reply(&Message::error(
            ErrorCode::Unsupported,
            &format!("a peer does not serve {}", other.name()),
        )),
    }
}

/// The served connection's only sender: replies first, then queued
/// fragments by priority, heartbeats when idle. Ends when the reader is
/// done (after sending the replies it left) or when a send fails.
fn server_writer(
    sh: &ServerShared,
    served: &Served,
    replies: &sync::Receiver<Vec<u8>>,
    wake: &sync::Receiver<()>,
) {
    let cfg = &sh.config;
    let heartbeat = Message::Heartbeat.to_frame().unwrap_or_default();
    let result: io::Result<()> = (|| loop {
        match replies.try_recv() {
            Ok(Some(frame)) => {
                served.conn.send(&frame)?;
                continue;
            }
            Ok(None) => {}
            // The reader is done and every reply it queued is sent.
            Err(_) => return Ok(()),
        }
        let next = served.queue.borrow_mut().pop();
        if let Some((room, channel, id)) = next {
            sh.bump(|s| s.queued -= 1);
            let frag = sh.store.borrow().get(room, channel, id);
            match frag {
                Some(f) if f.frame.len() <= cfg.max_message => {
                    served.conn.send(&f.frame)?;
                    let n = f.frame.len() as u64;
                    sh.bump(|s| {
                        s.fragments_sent += 1;
                        s.bytes_sent += n;
                    });
                }
                other => {
                    if let Some(f) = other {
                        log::warn!(
                            "peer: fragment {id} ({} bytes framed) exceeds the {}-byte message limit",
                            f.frame.len(),
                            cfg.max_message
                        );
                    }
                    sh.bump(|s| s.missing += 1);
                    let m = Message::FragmentMissing {
                        room,
                        channel,
                        ids: vec![id],
                    };
                    served.conn.send(&m.to_frame()?)?;
                }
            }
            continue;
        }
        match wake.recv_timeout(cfg.heartbeat) {
            Ok(()) => {}
            Err(RecvTimeoutError::Timeout) => served.conn.send(&heartbeat)?,
            // The reader is gone: send what it left, then stop.
            Err(RecvTimeoutError::Disconnected) => {
                while let Ok(Some(frame)) = replies.try_recv() {
                    served.conn.send(&frame)?;
                }
                return Ok(());
            }
        }
    })();
    match result {
        Ok(()) => served.conn.close(),
        Err(e) => {
            if e.kind() == io::ErrorKind::TimedOut {
                sh.bump(|s| s.idle_closed += 1);
            }
            log::debug!("peer {}: send failed: {e}", served.conn.peer_addr());
            // Wakes the reader out of `recv`.
            served.conn.abort();
        }
    }
}

/// What [`SendQueue::push`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Push {
    /// Queued.
    Queued,
    /// Was queued already (its priority raised if the new one is more
    /// urgent).
    Already,
    /// The queue is full.
    Full,
}

/// A connection's queued fragments: most urgent priority first, then in
/// arrival order; bounded; each fragment at most once.
struct SendQueue {
    max: usize,
    order: BTreeMap<(u8, u64), FragKey>,
    slots: HashMap<FragKey, (u8, u64)>,
    next_seq: u64,
}

impl SendQueue {
    fn new(max: usize) -> SendQueue {
        SendQueue {
            max,
            order: BTreeMap::new(),
            slots: HashMap::new(),
            next_seq: 0,
        }
    }

    fn push(&mut self, key: FragKey, priority: u8) -> Push {
        if let Some(&(p, seq)) = self.slots.get(&key) {
            if priority < p {
                self.order.remove(&(p, seq));
                self.order.insert((priority, seq), key);
                self.slots.insert(key, (priority, seq));
            }
            return Push::Already;
        }
        if self.slots.len() >= self.max {
            return Push::Full;
        }
        let slot = (priority, self.next_seq);
        self.next_seq += 1;
        self.order.insert(slot, key);
        self.slots.insert(key, slot);
        Push::Queued
    }

    fn pop(&mut self) -> Option<FragKey> {
        let (_, key) = self.order.pop_first()?;
        self.slots.remove(&key);
        Some(key)
    }

    fn cancel(&mut self, key: &FragKey) -> bool {
        match self.slots.remove(key) {
            Some(slot) => {
                self.order.remove(&slot);
                true
            }
            None => false,
        }
    }

    /// Empties the queue; returns how many it held.
    fn clear(&mut self) -> usize {
        let n = self.slots.len();
        self.slots.clear();
        self.order.clear();
        n
    }
}

// ---------------------------------------------------------------------------
// The requesting side
// ---------------------------------------------------------------------------

/// How a [`PeerClient`] treats its connection.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// A heartbeat goes out when nothing was sent for this long. Default
    /// 30 s.
    pub heartbeat: Duration,
    /// The link is given up when nothing arrived for this long (the peer
    /// heartbeats when it has nothing else to send). Default 120 s.
    pub idle: Duration,
    /// How long [`PeerClient::init`] waits. Default 10 s.
    pub request_timeout: Duration,
    /// Fragment ids waited for at once, over all fetches. Default 4096.
    pub max_waiting: usize,
    /// Init, metadata and ping requests waited for at once. Default 64.
    pub max_requests: usize,
    /// Frames queued for the writer before callers park. Default 64.
    pub send_queue: usize,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            heartbeat: Duration::from_secs(30),
            idle: Duration::from_secs(120),
            request_timeout: Duration::from_secs(10),
            max_waiting: 4 * MAX_IDS,
            max_requests: 64,
            send_queue: 64,
        }
    }
}

/// How one requested fragment ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchResult {
    /// It arrived.
    Got {
        /// The fragment's id.
        id: u64,
        /// The source's timestamp.
        timestamp: u64,
        /// Its bytes.
        data: Vec<u8>,
    },
    /// The peer does not have it (or could not queue it).
    Missing {
        /// The fragment's id.
        id: u64,
    },
    /// [`PeerClient::cancel`] withdrew it before it arrived.
    Cancelled {
        /// The fragment's id.
        id: u64,
    },
    /// The fetch's timeout passed before it arrived; the peer was told to
    /// drop it (`Cancel`).
    TimedOut {
        /// The fragment's id.
        id: u64,
    },
}

impl FetchResult {
    /// The fragment's id.
    pub fn id(&self) -> u64 {
        match self {
            FetchResult::Got { id, .. }
            | FetchResult::Missing { id }
            | FetchResult::Cancelled { id }
            | FetchResult::TimedOut { id } => *id,
        }
    }
}

/// The answer to [`PeerClient::ping`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PingReply {
    /// Round trip, from handing the Ping to the writer to reading the Pong.
    pub rtt: Duration,
    /// The peer's workload (lower is better).
    pub workload: u32,
    /// How many trackers the peer is connected to.
    pub trackers: u16,
}

/// Counters of a [`PeerClient`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Fragments that arrived for a waiting fetch.
    pub fragments: u64,
    /// Replies nobody waited for (after a cancel or a timeout), dropped.
    pub unexpected: u64,
    /// Heartbeats sent.
    pub heartbeats: u64,
}

/// One fetch in progress.
struct Fetch {
    ids: Vec<u64>,
    results: Vec<Option<FetchResult>>,
    pos: HashMap<u64, usize>,
    remaining: usize,
    done: Option<oneshot::Sender<Vec<FetchResult>>>,
}

impl Fetch {
    /// Resolves `id` unless it is already; whether that finished the fetch.
    fn resolve(&mut self, id: u64, r: FetchResult) -> bool {
        if let Some(slot) = self.pos.get(&id).and_then(|&i| self.results.get_mut(i)) {
            if slot.is_none() {
                *slot = Some(r);
                self.remaining -= 1;
            }
        }
        self.remaining == 0
    }

    /// The results, unresolved ids as `TimedOut`.
    fn finish(self) -> (Vec<FetchResult>, Option<oneshot::Sender<Vec<FetchResult>>>) {
        let results = self
            .ids
            .iter()
            .zip(self.results)
            .map(|(&id, r)| r.unwrap_or(FetchResult::TimedOut { id }))
            .collect();
        (results, self.done)
    }
}

/// Waiters for replies matched by a key, in request order.
type Waiters<K, T> = HashMap<K, VecDeque<(u64, oneshot::Sender<T>)>>;

/// Everything the client, its reader and its writer share.
struct ClientState {
    /// Set once the link ended: the error kind and text calls get.
    closed: Option<(io::ErrorKind, String)>,
    next_token: u64,
    /// Fragment → the fetches waiting for it.
    waiting: HashMap<FragKey, Vec<u64>>,
    /// (fetch, id) pairs in `waiting`.
    waiting_count: usize,
    fetches: HashMap<u64, Fetch>,
    inits: Waiters<(RoomId, Channel), (u64, u64)>,
    maps: Waiters<(RoomId, Channel), (u64, Vec<u8>)>,
    metas: Waiters<(RoomId, String), Option<Vec<u8>>>,
    pings: HashMap<u64, (Instant, oneshot::Sender<PingReply>)>,
    /// Entries in `inits`, `metas` and `pings`.
    requests: usize,
    stats: ClientStats,
}

struct ClientShared {
    state: RefCell<ClientState>,
    config: ClientConfig,
    remote: SocketAddr,
}

impl ClientShared {
    fn closed_error(&self) -> io::Error {
        match &self.state.borrow().closed {
            Some((kind, why)) => io::Error::new(*kind, format!("peer {}: {why}", self.remote)),
            None => io::Error::new(
                io::ErrorKind::NotConnected,
                format!("peer {}: link closed", self.remote),
            ),
        }
    }

    fn check_open(&self) -> io::Result<()> {
        if self.state.borrow().closed.is_some() {
            return Err(self.closed_error());
        }
        Ok(())
    }

    /// Ends the link: every waiting call fails with `why`.
    fn fail(&self, kind: io::ErrorKind, why: String) {
        let taken = {
            let mut st = self.state.borrow_mut();
            if st.closed.is_none() {
                st.closed = Some((kind, why));
            }
            st.waiting.clear();
            st.waiting_count = 0;
            st.requests = 0;
            (
                std::mem::take(&mut st.fetches),
                std::mem::take(&mut st.inits),
                std::mem::take(&mut st.maps),
                std::mem::take(&mut st.metas),
                std::mem::take(&mut st.pings),
            )
        };
        // Dropping the senders (outside the borrow) wakes the callers.
        drop(taken);
    }

    /// Resolves every fetch waiting for `key`; false if none was.
    fn resolve(&self, key: FragKey, result: FetchResult) -> bool {
        let mut done = Vec::new();
        {
            let mut st = self.state.borrow_mut();
            let Some(tokens) = st.waiting.remove(&key) else {
                return false;
            };
            st.waiting_count -= tokens.len();
            let mut result = Some(result);
            let last = tokens.len().saturating_sub(1);
            for (i, token) in tokens.into_iter().enumerate() {
                let r = if i == last {
                    result.take()
                } else {
                    result.clone()
                };
                let (Some(r), Some(f)) = (r, st.fetches.get_mut(&token)) else {
                    continue;
                };
                if f.resolve(key.2, r) {
                    if let Some(f) = st.fetches.remove(&token) {
                        done.push(f);
                    }
                }
            }
        }
        for f in done {
            let (results, tx) = f.finish();
            if let Some(tx) = tx {
                let _ = tx.send(results);
            }
        }
        true
    }

    /// Takes fetch `token` out, with its ids no longer waited for.
    fn forget_fetch(&self, token: u64, room: RoomId, channel: Channel) -> Option<Fetch> {
        let mut st = self.state.borrow_mut();
        let f = st.fetches.remove(&token)?;
        for (&id, r) in f.ids.iter().zip(&f.results) {
            if r.is_some() {
                continue;
            }
            let key = (room, channel, id);
            if let Some(tokens) = st.waiting.get_mut(&key) {
                tokens.retain(|&t| t != token);
                if tokens.is_empty() {
                    st.waiting.remove(&key);
                }
                st.waiting_count -= 1;
            }
        }
        Some(f)
    }

    /// One message from the peer.
    fn dispatch(&self, m: Message) -> Result<(), (io::ErrorKind, String)> {
        let delivered = match m {
            Message::Fragment {
                room,
                channel,
                id,
                timestamp,
                data,
            } => {
                let got = self.resolve(
                    (room, channel, id),
                    FetchResult::Got {
                        id,
                        timestamp,
                        data,
                    },
                );
                if got {
                    self.state.borrow_mut().stats.fragments += 1;
                }
                got
            }
            Message::FragmentMissing { room, channel, ids } => {
                let mut all = true;
                for id in ids {
                    all &= self.resolve((room, channel, id), FetchResult::Missing { id });
                }
                all
            }
            Message::InitReply {
                room,
                channel,
                first,
                last,
            } => {
                let w = self.pop_waiter(|st| &mut st.inits, &(room, channel));
                w.is_some_and(|tx| tx.send((first, last)).is_ok())
            }
            Message::Map {
                room,
                channel,
                first,
                bits,
            } => {
                let w = self.pop_waiter(|st| &mut st.maps, &(room, channel));
                w.is_some_and(|tx| tx.send((first, bits)).is_ok())
            }
            Message::MetaReply { room, key, value } => {
                let w = self.pop_waiter(|st| &mut st.metas, &(room, key));
                w.is_some_and(|tx| tx.send(value).is_ok())
            }
            Message::Pong {
                nonce,
                workload,
                trackers,
            } => {
                let w = {
                    let mut st = self.state.borrow_mut();
                    let w = st.pings.remove(&nonce);
                    if w.is_some() {
                        st.requests -= 1;
                    }
                    w
                };
                w.is_some_and(|(sent, tx)| {
                    tx.send(PingReply {
                        rtt: clock_now().saturating_duration_since(sent),
                        workload,
                        trackers,
                    })
                    .is_ok()
                })
            }
            Message::Heartbeat => true,
            Message::Error { code, text } => {
                return Err((
                    io::ErrorKind::ConnectionAborted,
                    format!("the peer sent error {code}: {text}"),
                ));
            }
            // Requests to the opener (Ping included) are not served.
            _ => false,
        };
        if !delivered {
            self.state.borrow_mut().stats.unexpected += 1;
        }
        Ok(())
    }

    /// The oldest waiter of `key` in the table `table` picks.
    fn pop_waiter<K: std::hash::Hash + Eq, T>(
        &self,
        table: impl FnOnce(&mut ClientState) -> &mut Waiters<K, T>,
        key: &K,
    ) -> Option<oneshot::Sender<T>> {
        let mut st = self.state.borrow_mut();
        let waiters = table(&mut st);
        let q = waiters.get_mut(key)?;
        let (_, tx) = q.pop_front()?;
        if q.is_empty() {
            waiters.remove(key);
        }
        st.requests -= 1;
        Some(tx)
    }

    /// Removes waiter `token` of `key` (its call gave up).
    fn remove_waiter<K: std::hash::Hash + Eq, T>(
        &self,
        table: impl FnOnce(&mut ClientState) -> &mut Waiters<K, T>,
        key: &K,
        token: u64,
    ) {
        let mut st = self.state.borrow_mut();
        let waiters = table(&mut st);
        let Some(q) = waiters.get_mut(key) else {
            return;
        };
        let before = q.len();
        q.retain(|(t, _)| *t != token);
        let removed = before - q.len();
        if q.is_empty() {
            waiters.remove(key);
        }
        st.requests -= removed;
    }

    /// A token for a new request, if the request table has room.
    fn reserve_request(&self) -> io::Result<u64> {
        let mut st = self.state.borrow_mut();
        if st.requests >= self.config.max_requests {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("peer {}: too many requests in flight", self.remote),
            ));
        }
        st.requests += 1;
        st.next_token += 1;
        Ok(st.next_token)
    }
}

/// The requesting side of one channel connection, in blocking style: each
/// call parks only its coroutine; calls may run concurrently from several
/// coroutines of the connection's loop. Create it (and use it) inside a
/// coroutine of the loop that owns the connection. Dropping it stops the
/// heartbeat and closes the connection in order.
pub struct PeerClient {
    sh: Rc<ClientShared>,
    tx: sync::Sender<Vec<u8>>,
    conn: Rc<RudpConnection>,
}

impl fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerClient")
            .field("remote", &self.sh.remote)
            .field("stats", &self.stats())
            .finish()
    }
}

impl PeerClient {
    /// Takes over an open connection to a peer: starts its reader and its
    /// writer (which heartbeats) on the current loop.
    pub fn new(conn: RudpConnection, config: ClientConfig) -> PeerClient {
        conn.set_read_timeout(Some(config.idle));
        conn.set_write_timeout(Some(config.idle));
        let remote = conn.peer_addr();
        let conn = Rc::new(conn);
        let (tx, rx) = sync::channel(config.send_queue.max(1));
        let sh = Rc::new(ClientShared {
            state: RefCell::new(ClientState {
                closed: None,
                next_token: 0,
                waiting: HashMap::new(),
                waiting_count: 0,
                fetches: HashMap::new(),
                inits: HashMap::new(),
                maps: HashMap::new(),
                metas: HashMap::new(),
                pings: HashMap::new(),
                requests: 0,
                stats: ClientStats::default(),
            }),
            config,
            remote,
        });
        {
            let (sh, conn) = (sh.clone(), conn.clone());
            drop(crate::spawn(move || client_reader(&sh, &conn)));
        }
        {
            let (sh, conn) = (sh.clone(), conn.clone());
            drop(crate::spawn(move || client_writer(&sh, &conn, &rx)));
        }
        PeerClient { sh, tx, conn }
    }

    /// The peer's address.
    pub fn remote(&self) -> SocketAddr {
        self.sh.remote
    }

    /// `Ok` while the link works; else the error calls get.
    pub fn check(&self) -> io::Result<()> {
        self.sh.check_open()
    }

    /// The counters.
    pub fn stats(&self) -> ClientStats {
        self.sh.state.borrow().stats
    }

    /// The RUDP connection's counters (RTT, retransmissions, bytes).
    pub fn rudp_stats(&self) -> Option<crate::rudp::Stats> {
        self.conn.stats()
    }

    /// Hands a message to the writer (parking while its queue is full).
    fn send(&self, m: &Message) -> io::Result<()> {
        self.send_frame(m.to_frame()?)
    }

    /// Hands a frame to the writer (parking while its queue is full).
    fn send_frame(&self, frame: Vec<u8>) -> io::Result<()> {
        self.sh.check_open()?;
        self.tx.send(frame).map_err(|_| self.sh.closed_error())
    }

    /// Sends `frame` and waits up to `timeout` for the reply the reader files
    /// under `key` in the waiter table `table` picks (replies of one key
    /// come in request order); the waiter goes when the call gives up.
    fn keyed_request<K: std::hash::Hash + Eq + Clone, T>(
        &self,
        table: fn(&mut ClientState) -> &mut Waiters<K, T>,
        key: K,
        frame: Vec<u8>,
        timeout: Duration,
        what: &str,
    ) -> io::Result<T> {
        let token = self.sh.reserve_request()?;
        let (tx, rx) = oneshot::channel();
        table(&mut self.sh.state.borrow_mut())
            .entry(key.clone())
            .or_default()
            .push_back((token, tx));
        let r = self
            .send_frame(frame)
            .and_then(|()| self.wait(rx, timeout, what));
        if r.is_err() {
            self.sh.remove_waiter(table, &key, token);
        }
        r
    }

    /// Announces interest in (room, channel) and asks which fragment ids
    /// the peer holds there: `Some((first, last))`, or `None` if it holds
    /// none. Ids in between may still be missing. Waits up to
    /// `request_timeout`.
    pub fn init(&self, room: RoomId, channel: Channel) -> io::Result<Option<(u64, u64)>> {
        let frame = Message::Init { room, channel }.to_frame()?;
        let timeout = self.sh.config.request_timeout;
        let (first, last) =
            self.keyed_request(|st| &mut st.inits, (room, channel), frame, timeout, "init")?;
        Ok((first <= last).then_some((first, last)))
    }

    /// The peer's buffer map of (room, channel): `(first, bits)`, bit `i`
    /// set when it holds `first + i` (see [`Message::Map`]); empty `bits`
    /// when it holds none. Waits up to `request_timeout`.
    pub fn map(&self, room: RoomId, channel: Channel) -> io::Result<(u64, Vec<u8>)> {
        let frame = Message::MapRequest { room, channel }.to_frame()?;
        let timeout = self.sh.config.request_timeout;
        self.keyed_request(|st| &mut st.maps, (room, channel), frame, timeout, "map")
    }

    /// Fetches fragments `ids` of (room, channel) at `priority` (0 is the
    /// most urgent; see the module docs), waiting up to `timeout`.
    ///
    /// Returns one result per distinct id, in the order first given: `Got`,
    /// `Missing`, `Cancelled` (withdrawn by [`PeerClient::cancel`] before it
    /// arrived) or `TimedOut` (the rest when `timeout` passes; the peer is
    /// told to drop them). Fails if the link ends before every id is
    /// resolved (the peer closed, vanished or misbehaved), with
    /// `InvalidInput` for more than [`MAX_IDS`] ids, and with `WouldBlock`
    /// when `max_waiting` ids are waited for already.
    pub fn fetch(
        &self,
        room: RoomId,
        channel: Channel,
        ids: &[u64],
        priority: u8,
        timeout: Duration,
    ) -> io::Result<Vec<FetchResult>> {
        let deadline = deadline_after(timeout);
        if ids.len() > MAX_IDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} ids in one fetch; at most {MAX_IDS}", ids.len()),
            ));
        }
        let mut uniq = Vec::with_capacity(ids.len());
        let mut pos = HashMap::with_capacity(ids.len());
        for &id in ids {
            if let std::collections::hash_map::Entry::Vacant(e) = pos.entry(id) {
                e.insert(uniq.len());
                uniq.push(id);
            }
        }
        if uniq.is_empty() {
            return Ok(Vec::new());
        }
        let request = Message::FragmentRequest {
            room,
            channel,
            priority,
            ids: uniq.clone(),
        };
        let (tx, rx) = oneshot::channel();
        let token = {
            let mut st = self.sh.state.borrow_mut();
            if st.closed.is_some() {
                drop(st);
                return Err(self.sh.closed_error());
            }
            if st.waiting_count + uniq.len() > self.sh.config.max_waiting {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("peer {}: too many fragments in flight", self.sh.remote),
                ));
            }
            st.next_token += 1;
            let token = st.next_token;
            for &id in &uniq {
                st.waiting
                    .entry((room, channel, id))
                    .or_default()
                    .push(token);
            }
            st.waiting_count += uniq.len();
            let n = uniq.len();
            st.fetches.insert(
                token,
                Fetch {
                    ids: uniq,
                    results: (0..n).map(|_| None).collect(),
                    pos,
                    remaining: n,
                    done: Some(tx),
                },
            );
            token
        };
        if let Err(e) = self.send(&request) {
            self.sh.forget_fetch(token, room, channel);
            return Err(e);
        }
        match rx.recv_timeout(deadline.saturating_duration_since(clock_now())) {
            Ok(results) => Ok(results),
            Err(RecvTimeoutError::Timeout) => {
                let Some(f) = self.sh.forget_fetch(token, room, channel) else {
                    return Err(self.sh.closed_error());
                };
                let unresolved: Vec<u64> = f
                    .ids
                    .iter()
                    .zip(&f.results)
                    .filter(|(_, r)| r.is_none())
                    .map(|(&id, _)| id)
                    .collect();
                let (results, _) = f.finish();
                // Best effort: the call is over either way.
                if let Ok(frame) = (Message::Cancel {
                    room,
                    channel,
                    ids: unresolved,
                })
                .to_frame()
                {
                    let _ = self.tx.try_send(frame);
                }
                Ok(results)
            }
            Err(RecvTimeoutError::Disconnected) => Err(self.sh.closed_error()),
        }
    }

    /// Withdraws `ids` of (room, channel): fetches waiting for them get
    /// `Cancelled` for each at once, and the peer drops those it has not
    /// sent yet (fragments already under way arrive and are counted as
    /// unexpected). Returns how many waiting ids this resolved.
    pub fn cancel(&self, room: RoomId, channel: Channel, ids: &[u64]) -> io::Result<usize> {
        self.sh.check_open()?;
        let mut n = 0;
        for &id in ids {
            if self
                .sh
                .resolve((room, channel, id), FetchResult::Cancelled { id })
            {
                n += 1;
            }
        }
        for chunk in ids.chunks(MAX_IDS) {
            self.send(&Message::Cancel {
                room,
                channel,
                ids: chunk.to_vec(),
            })?;
        }
        Ok(n)
    }

    /// Metadata item `key` of `room` (`None` if the peer has none), waiting
    /// up to `timeout`.
    pub fn meta(&self, room: RoomId, key: &str, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        // Encoded first: a key over MAX_KEY fails here, before any waiter.
        let frame = Message::MetaRequest {
            room,
            key: key.to_owned(),
        }
        .to_frame()?;
        let wkey = (room, key.to_owned());
        self.keyed_request(|st| &mut st.metas, wkey, frame, timeout, "metadata request")
    }

    /// Measures the round trip to the peer and learns its load; tells it
    /// ours (`workload`, `trackers`). Waits up to `timeout`.
    pub fn ping(&self, workload: u32, trackers: u16, timeout: Duration) -> io::Result<PingReply> {
        let nonce = self.sh.reserve_request()?;
        let (tx, rx) = oneshot::channel();
        self.sh
            .state
            .borrow_mut()
            .pings
            .insert(nonce, (clock_now(), tx));
        let r = self
            .send(&Message::Ping {
                nonce,
                workload,
                trackers,
            })
            .and_then(|()| self.wait(rx, timeout, "ping"));
        if r.is_err() {
            let mut st = self.sh.state.borrow_mut();
            if st.pings.remove(&nonce).is_some() {
                st.requests -= 1;
            }
        }
        r
    }

    /// Waits for a reply.
    fn wait<T>(&self, rx: oneshot::Receiver<T>, timeout: Duration, what: &str) -> io::Result<T> {
        rx.recv_timeout(timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "peer {}: no answer to a {what} in {timeout:?}",
                    self.sh.remote
                ),
            ),
            RecvTimeoutError::Disconnected => self.sh.closed_error(),
        })
    }
}

/// Reads and dispatches everything the peer sends, until the link ends.
fn client_reader(sh: &ClientShared, conn: &RudpConnection) {
    let (kind, why) = loop {
        let frame = match conn.recv() {
            Ok(Some(f)) => f,
            Ok(None) => {
                // Closed in order (by the peer, or by our writer when the
                // client was dropped): nothing to abort.
                log::debug!("peer {}: connection closed", sh.remote);
                sh.fail(
                    io::ErrorKind::ConnectionAborted,
                    "the connection was closed".to_string(),
                );
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                break (
                    io::ErrorKind::TimedOut,
                    format!("nothing heard for {:?}", sh.config.idle),
                )
            }
            Err(e) => break (e.kind(), e.to_string()),
        };
        let r = match Message::decode_frame(&frame) {
            Ok(m) => sh.dispatch(m),
            Err(e) => Err((
                io::ErrorKind::InvalidData,
                format!("malformed frame from the peer: {e}"),
            )),
        };
        if let Err(e) = r {
            break e;
        }
    };
    log::debug!("peer {}: link ends: {why}", sh.remote);
    sh.fail(kind, why);
    conn.abort();
}

/// The connection's only sender: frames from the callers, and a heartbeat
/// when nothing was sent for `heartbeat`. Closes the connection in order
/// once the client is dropped.
fn client_writer(sh: &ClientShared, conn: &RudpConnection, rx: &sync::Receiver<Vec<u8>>) {
    let heartbeat = Message::Heartbeat.to_frame().unwrap_or_default();
    loop {
        let frame = match rx.recv_timeout(sh.config.heartbeat) {
            Ok(f) => f,
            Err(RecvTimeoutError::Timeout) => {
                if sh.check_open().is_err() {
                    return;
                }
                sh.state.borrow_mut().stats.heartbeats += 1;
                heartbeat.clone()
            }
            Err(RecvTimeoutError::Disconnected) => {
                conn.close();
                return;
            }
        };
        if let Err(e) = conn.send(&frame) {
            sh.fail(e.kind(), format!("send failed: {e}"));
            conn.abort();
            return;
        }
    }
}

/// The channel connections to one peer: three, or one carrying all
/// channels ([`PeerLink::single`]).
pub struct PeerLink {
    remote: SocketAddr,
    clients: [Rc<PeerClient>; 3],
}

impl fmt::Debug for PeerLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerLink")
            .field("remote", &self.remote)
            .finish()
    }
}

impl PeerLink {
    /// Opens the meta, video and audio connections to `remote` from
    /// `socket` (three RUDP connections to one address).
    pub fn connect(
        socket: &RudpSocket,
        remote: SocketAddr,
        config: ClientConfig,
    ) -> io::Result<PeerLink> {
        let meta = PeerClient::new(socket.connect(remote)?, config.clone());
        let video = PeerClient::new(socket.connect(remote)?, config.clone());
        let audio = PeerClient::new(socket.connect(remote)?, config);
        Ok(PeerLink {
            remote,
            clients: [Rc::new(meta), Rc::new(video), Rc::new(audio)],
        })
    }

    /// All channels over one connection already open (a relayed path has
    /// one connection per pairing): every message names its channel, so the
    /// holder serves it alike; channels then share one send queue.
    pub fn single(conn: RudpConnection, config: ClientConfig) -> PeerLink {
        let remote = conn.peer_addr();
        let c = Rc::new(PeerClient::new(conn, config));
        PeerLink {
            remote,
            clients: [c.clone(), c.clone(), c],
        }
    }

    /// Whether every connection is still usable.
    pub fn check(&self) -> io::Result<()> {
        self.clients.iter().try_for_each(|c| c.check())
    }

    /// The peer's address.
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// The client of `channel`'s connection.
    pub fn channel(&self, channel: Channel) -> &PeerClient {
        &self.clients[usize::from(channel.code())]
    }

    /// Announces interest in (room, channel) on that channel's connection;
    /// see [`PeerClient::init`].
    pub fn init(&self, room: RoomId, channel: Channel) -> io::Result<Option<(u64, u64)>> {
        self.channel(channel).init(room, channel)
    }

    /// Fetches on that channel's connection; see [`PeerClient::fetch`].
    pub fn fetch(
        &self,
        room: RoomId,
        channel: Channel,
        ids: &[u64],
        priority: u8,
        timeout: Duration,
    ) -> io::Result<Vec<FetchResult>> {
        self.channel(channel)
            .fetch(room, channel, ids, priority, timeout)
    }

    /// The buffer map on that channel's connection; see [`PeerClient::map`].
    pub fn map(&self, room: RoomId, channel: Channel) -> io::Result<(u64, Vec<u8>)> {
        self.channel(channel).map(room, channel)
    }

    /// Metadata on the meta connection; see [`PeerClient::meta`].
    pub fn meta(&self, room: RoomId, key: &str, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        self.channel(Channel::Meta).meta(room, key, timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: Channel = Channel::Video;

    fn drain(q: &mut SendQueue) -> Vec<u64> {
        std::iter::from_fn(|| q.pop()).map(|k| k.2).collect()
    }

    #[test]
    fn most_urgent_first_then_in_arrival_order() {
        let mut q = SendQueue::new(100);
        for id in 0..4 {
            assert_eq!(q.push((1, V, id), 5), Push::Queued);
        }
        for id in 10..13 {
            assert_eq!(q.push((1, V, id), 0), Push::Queued);
        }
        q.push((1, V, 20), 9);
        q.push((1, V, 21), 5);
        assert_eq!(drain(&mut q), [10, 11, 12, 0, 1, 2, 3, 21, 20]);
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn a_repeated_id_is_queued_once_at_its_most_urgent() {
        let mut q = SendQueue::new(100);
        q.push((1, V, 1), 5);
        q.push((1, V, 2), 5);
        assert_eq!(q.push((1, V, 2), 9), Push::Already);
        assert_eq!(drain(&mut q), [1, 2]);
        q.push((1, V, 1), 5);
        q.push((1, V, 2), 5);
        assert_eq!(q.push((1, V, 2), 1), Push::Already);
        assert_eq!(drain(&mut q), [2, 1]);
        // Another room or channel is another fragment.
        assert_eq!(q.push((1, V, 1), 5), Push::Queued);
        assert_eq!(q.push((2, V, 1), 5), Push::Queued);
        assert_eq!(q.push((1, Channel::Audio, 1), 5), Push::Queued);
        assert_eq!(q.clear(), 3);
    }

    #[test]
    fn bounded_and_cancellable() {
        let mut q = SendQueue::new(3);
        for id in 0..3 {
            assert_eq!(q.push((1, V, id), 1), Push::Queued);
        }
        assert_eq!(q.push((1, V, 3), 0), Push::Full);
        assert!(q.cancel(&(1, V, 1)));
        assert!(!q.cancel(&(1, V, 1)));
        assert_eq!(q.push((1, V, 3), 0), Push::Queued);
        assert_eq!(drain(&mut q), [3, 0, 2]);
    }

    #[test]
    fn fetch_results_keep_the_request_order() {
        let (tx, _rx) = oneshot::channel();
        let ids = vec![7, 3, 9];
        let mut f = Fetch {
            pos: ids.iter().enumerate().map(|(i, &id)| (id, i)).collect(),
            ids,
            results: vec![None, None, None],
            remaining: 3,
            done: Some(tx),
        };
        assert!(!f.resolve(9, FetchResult::Missing { id: 9 }));
        assert!(
            !f.resolve(9, FetchResult::Cancelled { id: 9 }),
            "first wins"
        );
        assert!(!f.resolve(8, FetchResult::Missing { id: 8 }), "not asked");
        assert!(!f.resolve(
            7,
            FetchResult::Got {
                id: 7,
                timestamp: 1,
                data: vec![1]
            }
        ));
        let (results, _) = f.finish();
        assert_eq!(
            results,
            [
                FetchResult::Got {
                    id: 7,
                    timestamp: 1,
                    data: vec![1]
                },
                FetchResult::TimedOut { id: 3 },
                FetchResult::Missing { id: 9 },
            ]
        );
    }
}
