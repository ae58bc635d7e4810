//! Moving on-demand files between peers over RUDP: a [`Seeder`] serves
//! signed indexes and pieces; [`fetch`] downloads one file from several
//! holders at once, in playback order, checking every piece.
//!
//! Messages (all `libnet::p2p::wire`, `room` = [`room_of`] the index id,
//! channel `Video`, one message per RUDP message):
//!
//! - `MetaRequest{key: "index/n"}` → `MetaReply` with the chunk count (u32
//!   big-endian); `"index/<k>"` → chunk `k` (≤ [`INDEX_CHUNK`] bytes) of the
//!   signed index bytes.
//! - `MapRequest` → one or more `Map{first, bits}` (≤ 4096 pieces each).
//! - `FragmentRequest{ids}` (id = piece number) → one `Fragment{id, data}`
//!   per piece held, `FragmentMissing` for the rest.
//! - `Cancel{ids}`: pieces asked for and no longer wanted (they came from
//!   another holder) are not sent, if their turn has not come yet.
//!
//! A piece travels as one fragment, so shared files are indexed with a piece
//! size of at most [`MAX_NET_PIECE`] bytes. See `docs/vod.md`, "Transfer".

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use libnet::p2p::wire::Message;
use libnet::p2p::{Channel, RoomId};
use libnet::rudp::{RudpConnection, RudpSocket};
use libnet::sync::{channel, Receiver, RecvTimeoutError};
use libnet::time::sleep;

use super::{PieceFile, SignedIndex};
use crate::signed::PUBLIC_LEN;

/// Largest index chunk in one `MetaReply`.
pub const INDEX_CHUNK: usize = 60_000;
/// Largest piece that fits one `Fragment` in one RUDP message.
pub const MAX_NET_PIECE: usize = 60_000;
/// Pieces described by one `Map` (512 bytes of bits).
const MAP_PIECES: usize = 4096;
/// Piece requests queued per connection; beyond that they are answered
/// `FragmentMissing` (the requester asks elsewhere).
const QUEUE: usize = 64;

/// The wire room of a file: the first 4 bytes of its index id, big-endian.
pub fn room_of(id: &[u8; 32]) -> RoomId {
    u32::from_be_bytes([id[0], id[1], id[2], id[3]])
}

fn send(conn: &RudpConnection, m: &Message) -> io::Result<()> {
    let f = m
        .to_frame()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    conn.send(&f)
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// A token bucket: `rate` bytes/s, bursts up to `burst` bytes.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// Takes `n` bytes; returns how long to wait before sending them.
    fn take(&mut self, n: usize, now: Instant) -> Duration {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst) - n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// How a [`Seeder`] serves.
#[derive(Clone, Debug, Default)]
pub struct SeederConfig {
    /// Upload cap over all connections, bytes/s (`None`: none).
    pub rate: Option<u64>,
    /// Fault injection for tests: flips a byte of every piece sent.
    pub corrupt: bool,
}

/// One file served: its signed index cut in chunks and its pieces.
struct Served {
    chunks: Vec<Vec<u8>>,
    file: Rc<RefCell<PieceFile>>,
}

struct SeederInner {
    files: RefCell<HashMap<RoomId, Served>>,
    bucket: Option<RefCell<Bucket>>,
    corrupt: bool,
    sent: Cell<u64>,
    /// Set by [`Seeder::stop`]: the accept loop ends.
    stopped: Cell<bool>,
    /// Live connections, for [`Seeder::stop`].
    conns: RefCell<Vec<Weak<RudpConnection>>>,
}

/// Serves files on a [`RudpSocket`]: accepts connections and answers index
/// chunks, bitmaps and piece requests. Cheap to clone (shared state); lives
/// on the socket's loop. Dropping every clone does not stop the accept
/// coroutine: drop the socket for that.
#[derive(Clone)]
pub struct Seeder {
    inner: Rc<SeederInner>,
}

impl std::fmt::Debug for Seeder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seeder")
            .field("files", &self.inner.files.borrow().len())
            .field("sent", &self.inner.sent.get())
            .finish()
    }
}

impl Seeder {
    /// Starts serving on `socket` (accepting every incoming connection).
    pub fn start(socket: Rc<RudpSocket>, config: SeederConfig) -> Seeder {
        let bucket = config.rate.map(|r| {
            let rate = r.max(1) as f64;
            RefCell::new(Bucket {
                rate,
                burst: (rate / 20.0).max(MAX_NET_PIECE as f64),
                tokens: 0.0,
                last: libnet::time::now(),
            })
        });
        let seeder = Seeder {
            inner: Rc::new(SeederInner {
                files: RefCell::new(HashMap::new()),
                bucket,
                corrupt: config.corrupt,
                sent: Cell::new(0),
                stopped: Cell::new(false),
                conns: RefCell::new(Vec::new()),
            }),
        };
        let s = seeder.clone();
        drop(libnet::spawn(move || {
            while !s.inner.stopped.get() {
                match socket.accept_timeout(Some(Duration::from_millis(100))) {
                    Ok((conn, _)) => {
                        let conn = Rc::new(conn);
                        let mut conns = s.inner.conns.borrow_mut();
                        conns.retain(|c| c.strong_count() > 0);
                        conns.push(Rc::downgrade(&conn));
                        drop(conns);
                        let s = s.clone();
                        drop(libnet::spawn(move || s.serve(conn)));
                    }
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                    Err(_) => break,
                }
            }
        }));
        seeder
    }

    /// Serves `file` under `index` (verified). Its pieces must fit one
    /// fragment (`InvalidInput` otherwise).
    pub fn add(&self, index: &SignedIndex, file: Rc<RefCell<PieceFile>>) -> io::Result<()> {
        self.add_bytes(index.id(), index.to_bytes().to_vec(), file)
    }

    /// Serves `file` under index id `id` with these index bytes, as given
    /// (not checked: a peer verifies them).
    pub fn add_bytes(
        &self,
        id: [u8; 32],
        index: Vec<u8>,
        file: Rc<RefCell<PieceFile>>,
    ) -> io::Result<()> {
        if file.borrow().index().piece_size as usize > MAX_NET_PIECE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("vod: pieces over {MAX_NET_PIECE} bytes cannot be served"),
            ));
        }
        let chunks = index.chunks(INDEX_CHUNK).map(<[u8]>::to_vec).collect();
        self.inner
            .files
            .borrow_mut()
            .insert(room_of(&id), Served { chunks, file });
        Ok(())
    }

    /// Stops serving: aborts every connection and stops accepting (within
    /// 100 ms), which lets the socket go once its other owners drop it.
    pub fn stop(&self) {
        self.inner.stopped.set(true);
        let conns = std::mem::take(&mut *self.inner.conns.borrow_mut());
        for c in conns.iter().filter_map(Weak::upgrade) {
            c.abort();
        }
    }

    /// Piece bytes sent so far.
    pub fn sent(&self) -> u64 {
        self.inner.sent.get()
    }

    /// One connection: a reader coroutine takes requests, this one answers
    /// (the only sender on `conn`). Index and map requests are answered in
    /// order; piece ids wait in a [`Pieces`] queue (at most [`QUEUE`]),
    /// urgent ones (priority 0) first, where a `Cancel` can take them back
    /// before their turn.
    fn serve(&self, conn: Rc<RudpConnection>) {
        let (tx, rx) = channel::<Message>(QUEUE * 2);
        let queue: Rc<RefCell<Pieces>> = Rc::default();
        let reader = {
            let conn = conn.clone();
            let queue = queue.clone();
            libnet::spawn(move || {
                while let Ok(Some(f)) = conn.recv() {
                    let Ok(m) = Message::decode_frame(&f) else {
                        break;
                    };
                    let m = match m {
                        Message::FragmentRequest {
                            room,
                            priority,
                            ids,
                            ..
                        } => {
                            let over = queue.borrow_mut().add(room, &ids, priority == 0);
                            if over.is_empty() {
                                // Wakes the writer if it waits.
                                Message::FragmentRequest {
                                    room,
                                    channel: Channel::Video,
                                    priority,
                                    ids: Vec::new(),
                                }
                            } else {
                                Message::FragmentMissing {
                                    room,
                                    channel: Channel::Video,
                                    ids: over,
                                }
                            }
                        }
                        Message::Cancel { room, ids, .. } => {
                            queue.borrow_mut().cancel(room, &ids);
                            continue;
                        }
                        other => other,
                    };
                    if tx.send(m).is_err() {
                        break;
                    }
                }
            })
        };
        loop {
            // Requests first (small answers), then one piece at a time.
            let m = match rx.try_recv() {
                Ok(Some(m)) => Some(m),
                Ok(None) => None,
                Err(_) => break,
            };
            let r = match m {
                Some(Message::FragmentRequest { .. }) => Ok(()),
                Some(other) => self.answer(&conn, other),
                None => {
                    let next = queue.borrow_mut().next();
                    match next {
                        Some((room, id)) => self.piece(&conn, room, id),
                        None => match rx.recv() {
                            Ok(Message::FragmentRequest { .. }) => Ok(()),
                            Ok(other) => self.answer(&conn, other),
                            Err(_) => break,
                        },
                    }
                }
            };
            if r.is_err() {
                break;
            }
        }
        conn.abort();
        drop(rx);
        drop(reader.join());
    }

    fn answer(&self, conn: &RudpConnection, m: Message) -> io::Result<()> {
        match m {
            Message::FragmentMissing { .. } => send(conn, &m),
            Message::MetaRequest { room, key } => {
                let value = {
                    let files = self.inner.files.borrow();
                    files
                        .get(&room)
                        .and_then(|s| match key.strip_prefix("index/") {
                            Some("n") => Some((s.chunks.len() as u32).to_be_bytes().to_vec()),
                            Some(k) => k
                                .parse::<usize>()
                                .ok()
                                .and_then(|k| s.chunks.get(k).cloned()),
                            None => None,
                        })
                };
                send(conn, &Message::MetaReply { room, key, value })
            }
            Message::MapRequest { room, channel } => {
                let bits = match self.inner.files.borrow().get(&room) {
                    Some(s) => s.file.borrow().bitmap(),
                    None => Vec::new(),
                };
                let mut first = 0;
                for part in bits.chunks(MAP_PIECES / 8) {
                    let m = Message::Map {
                        room,
                        channel,
                        first,
                        bits: part.to_vec(),
                    };
                    send(conn, &m)?;
                    first += MAP_PIECES as u64;
                }
                if bits.is_empty() {
                    send(
                        conn,
                        &Message::Map {
                            room,
                            channel,
                            first: 0,
                            bits,
                        },
                    )?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Sends piece `id` of `room`, or `FragmentMissing` if it is not held.
    fn piece(&self, conn: &RudpConnection, room: RoomId, id: u64) -> io::Result<()> {
        let job = {
            let files = self.inner.files.borrow();
            files.get(&room).and_then(|s| {
                u32::try_from(id)
                    .ok()
                    .and_then(|i| s.file.borrow().reader(i).ok())
            })
        };
        // Read and verified on the thread pool (a slow disk parks only
        // this connection's writer).
        let piece = job.and_then(|job| libnet::spawn_blocking(job).ok());
        let Some(mut data) = piece else {
            let m = Message::FragmentMissing {
                room,
                channel: Channel::Video,
                ids: vec![id],
            };
            return send(conn, &m);
        };
        if let Some(b) = &self.inner.bucket {
            let wait = b.borrow_mut().take(data.len(), libnet::time::now());
            if !wait.is_zero() {
                sleep(wait);
            }
        }
        if self.inner.corrupt {
            if let Some(x) = data.first_mut() {
                *x ^= 0xFF;
            }
        }
        self.inner
            .sent
            .set(self.inner.sent.get() + data.len() as u64);
        let m = Message::Fragment {
            room,
            channel: Channel::Video,
            id,
            timestamp: 0,
            data,
        };
        send(conn, &m)
    }
}

/// The piece ids one connection asked for and was not sent yet, in the
/// order to send them: urgent ones go first. At most [`QUEUE`].
#[derive(Default)]
struct Pieces {
    order: std::collections::VecDeque<(RoomId, u64)>,
    set: HashSet<(RoomId, u64)>,
}

impl Pieces {
    /// Queues `ids` (those already queued stay where they are, but an
    /// urgent one moves to the front); returns those that do not fit.
    fn add(&mut self, room: RoomId, ids: &[u64], urgent: bool) -> Vec<u64> {
        let mut over = Vec::new();
        let mut front = Vec::new();
        for &id in ids {
            let key = (room, id);
            if self.set.contains(&key) {
                if urgent {
                    self.order.retain(|k| *k != key);
                    front.push(key);
                }
            } else if self.set.len() < QUEUE {
                self.set.insert(key);
                if urgent {
                    front.push(key);
                } else {
                    self.order.push_back(key);
                }
            } else {
                over.push(id);
            }
        }
        for key in front.into_iter().rev() {
            self.order.push_front(key);
        }
        over
    }

    /// Takes `ids` back.
    fn cancel(&mut self, room: RoomId, ids: &[u64]) {
        let before = self.set.len();
        for &id in ids {
            self.set.remove(&(room, id));
        }
        if self.set.len() != before {
            let set = &self.set;
            self.order.retain(|k| set.contains(k));
        }
    }

    fn next(&mut self) -> Option<(RoomId, u64)> {
        let key = self.order.pop_front()?;
        self.set.remove(&key);
        Some(key)
    }
}

/// Pieces a holder sat on (sending nothing for `slow`) since its last good
/// one, after which it is dropped.
const STRIKES: u32 = 3;
/// Time a holder has to send the whole signed index.
const INDEX_TIMEOUT: Duration = Duration::from_secs(5);
/// How often every holder is asked for its map again.
const MAP_PERIOD: Duration = Duration::from_millis(500);
/// The piece the player waits for, in flight this long, is asked of
/// another holder that has room.
const URGENT_AFTER: Duration = Duration::from_secs(1);

/// A holder to fetch from, connected on demand: [`fetch`] runs `connect`
/// in a coroutine of its own (so slow connects, e.g. punches, overlap).
pub struct Candidate {
    /// How the holder is named in [`FetchStats`] (its address, its node).
    pub label: String,
    /// Opens the connection to the holder.
    pub connect: Box<dyn FnOnce() -> io::Result<RudpConnection>>,
}

impl Candidate {
    /// A holder reachable at `addr` straight from `socket`.
    pub fn direct(socket: Rc<RudpSocket>, addr: SocketAddr) -> Candidate {
        Candidate {
            label: addr.to_string(),
            connect: Box::new(move || socket.connect(addr)),
        }
    }
}

impl std::fmt::Debug for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Candidate")
            .field("label", &self.label)
            .finish()
    }
}

/// Called once the signed index is verified and the file opened, before
/// any piece is asked for.
pub type OnOpen = Box<dyn FnOnce(&SignedIndex, &Rc<RefCell<PieceFile>>)>;

/// How [`fetch`] downloads.
pub struct FetchConfig {
    /// The publisher's key the index must be signed with (`None`: any).
    pub publisher: Option<[u8; PUBLIC_LEN]>,
    /// Pieces in flight over all holders.
    pub window: usize,
    /// Pieces in flight per holder.
    pub per_holder: usize,
    /// Holders connected (or connecting) at once; later candidates wait
    /// for a place.
    pub max_holders: usize,
    /// A piece not come after this is asked elsewhere.
    pub slow: Duration,
    /// No piece at all for this long (or, before the first, no index):
    /// give up.
    pub stall: Duration,
    /// Serves the file meanwhile (what is held so far).
    pub seeder: Option<Seeder>,
    /// Where the player reads (a byte offset, moved by seeking): the window
    /// starts at the first missing piece from there, then wraps to the
    /// start. `None`: from the start.
    pub playhead: Option<Rc<Cell<u64>>>,
    /// Only the pieces to play this span (milliseconds from, to; see
    /// [`super::FileIndex::pieces_for`]): the download ends once they are
    /// held, the file staying `PATH.part` unless that is all of it.
    /// `None`: the whole file.
    pub span_ms: Option<(u64, u64)>,
    /// See [`OnOpen`].
    pub on_open: Option<OnOpen>,
    /// Called with the contiguous bytes held and the file size after each
    /// piece stored: a player may read that prefix.
    pub progress: Option<Box<dyn FnMut(u64, u64)>>,
}

impl Default for FetchConfig {
    fn default() -> FetchConfig {
        FetchConfig {
            publisher: None,
            window: 32,
            per_holder: 8,
            max_holders: 16,
            slow: Duration::from_secs(3),
            stall: Duration::from_secs(15),
            seeder: None,
            playhead: None,
            span_ms: None,
            on_open: None,
            progress: None,
        }
    }
}

/// What [`fetch`] did.
#[derive(Clone, Debug, Default)]
pub struct FetchStats {
    /// Each candidate's label, in the order they came.
    pub holders: Vec<String>,
    /// Verified piece bytes taken from each of them (same order).
    pub bytes: Vec<u64>,
    /// Holders dropped (unreachable, bad index, bad piece, gone), by label.
    pub dropped: Vec<String>,
    /// Pieces that failed their hash (or length).
    pub bad_pieces: u32,
    /// Pieces that came twice (asked again elsewhere while slow).
    pub duplicates: u32,
    /// Pieces held before the download started (resume).
    pub resumed: u32,
    /// From the start to the first contiguous byte held.
    pub first_byte: Option<Duration>,
    /// From the start to the end.
    pub total: Duration,
}

enum Event {
    /// A new candidate (from the caller's channel).
    New(Candidate),
    /// The caller's channel closed: no more candidates.
    NoMore,
    /// Holder `k` connected.
    Up(usize, Rc<RudpConnection>),
    Msg(usize, Message),
    /// Holder `k` could not connect (why), or its connection ended (`None`).
    Gone(usize, Option<String>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Connecting,
    Up,
    Dropped,
}

struct Holder {
    label: String,
    link: Link,
    conn: Option<Rc<RudpConnection>>,
    bits: Vec<u8>,
    inflight: usize,
    /// Since when it owes pieces without sending one (`None`: owes none).
    waiting: Option<Instant>,
    /// Times it was too slow since its last good piece.
    strikes: u32,
}

impl Holder {
    fn has(&self, i: u32) -> bool {
        self.bits
            .get(i as usize / 8)
            .is_some_and(|b| b & (1 << (i % 8)) != 0)
    }
    fn set(&mut self, i: u32, on: bool) {
        let byte = i as usize / 8;
        if self.bits.len() <= byte {
            self.bits.resize(byte + 1, 0);
        }
        if on {
            self.bits[byte] |= 1 << (i % 8);
        } else {
            self.bits[byte] &= !(1 << (i % 8));
        }
    }
    fn usable(&self) -> bool {
        self.link == Link::Up
    }
    /// Takes a `Map` of pieces `first..` (bit `j` of byte `b`: piece
    /// `first + 8b + j`), pieces at or past `n` ignored. A map starting on
    /// a byte boundary (a seeder's always does) is copied bytewise.
    fn set_map(&mut self, first: u64, bits: &[u8], n: u32) {
        let n = u64::from(n);
        if !first.is_multiple_of(8) {
            for (b, byte) in bits.iter().enumerate() {
                for bit in 0..8 {
                    let i = first + (b * 8 + bit) as u64;
                    if i < n {
                        // i < n ≤ u32::MAX.
                        self.set(i as u32, byte & (1 << bit) != 0);
                    }
                }
            }
            return;
        }
        if first >= n {
            return;
        }
        // Both fit: first < n ≤ u32::MAX.
        let start = (first / 8) as usize;
        let len = bits.len().min(((n - first).div_ceil(8)) as usize);
        if self.bits.len() < start + len {
            self.bits.resize(start + len, 0);
        }
        self.bits[start..start + len].copy_from_slice(&bits[..len]);
        // Bits past the last piece stay clear.
        let end = first + 8 * len as u64;
        if end > n {
            let keep = 8 - (end - n) as u32;
            self.bits[start + len - 1] &= ((1u16 << keep) - 1) as u8;
        }
    }
}

/// The signed index being read from one holder.
struct IndexLoad {
    from: usize,
    chunks: Option<Vec<Option<Vec<u8>>>>,
    since: Instant,
}

/// Downloads the file whose index id is `id` from the holders that come on
/// `candidates` into `path` (resuming `path.part`): connects to each (up to
/// `max_holders` at once, in parallel), reads the signed index from the
/// first that answers (the next one if its copy does not verify), then
/// takes the pieces from all holders at once, in playback order from the
/// playhead. Returns when `path` is complete. Candidates may keep coming
/// during the download (holders that appear meanwhile).
pub fn fetch(
    candidates: Receiver<Candidate>,
    id: [u8; 32],
    path: &Path,
    mut config: FetchConfig,
) -> io::Result<(SignedIndex, FetchStats)> {
    let start = libnet::time::now();
    let room = room_of(&id);
    let (tx, rx) = channel::<Event>(1024);
    let feeder = {
        let tx = tx.clone();
        libnet::spawn(move || {
            while let Ok(c) = candidates.recv() {
                if tx.send(Event::New(c)).is_err() {
                    return;
                }
            }
            drop(tx.send(Event::NoMore));
        })
    };
    let mut hs: Vec<Holder> = Vec::new();
    let mut waiting: std::collections::VecDeque<(usize, Candidate)> = Default::default();
    let mut workers = Vec::new();
    let mut more = true;
    let mut stats = FetchStats::default();
    let mut index: Option<(SignedIndex, Rc<RefCell<PieceFile>>)> = None;
    // Set when the last piece came: the `.part` is still to sync and rename.
    let mut unfinished = false;
    // The last holder that could not be reached, and why.
    let mut unreachable: Option<String> = None;
    // The last holder whose index was refused, and why.
    let mut bad_index: Option<String> = None;
    // The pieces wanted, once the index is known.
    let mut want = 0..0;
    let mut load: Option<IndexLoad> = None;
    let mut tried_index: Vec<usize> = Vec::new();
    let mut inflight: HashMap<u32, (usize, Instant)> = HashMap::new();
    let mut avoid: HashMap<u32, usize> = HashMap::new();
    let mut last_map = libnet::time::now();
    let mut last_piece = libnet::time::now();
    let map_req = Message::MapRequest {
        room,
        channel: Channel::Video,
    };

    let drop_holder = |hs: &mut Vec<Holder>, stats: &mut FetchStats, k: usize| {
        if hs[k].link != Link::Dropped {
            hs[k].link = Link::Dropped;
            stats.dropped.push(hs[k].label.clone());
            if let Some(c) = hs[k].conn.take() {
                c.abort();
            }
        }
    };
    let ask = |h: &Holder, m: &Message| match (&h.conn, h.link) {
        (Some(c), Link::Up) => send(c, m),
        _ => Ok(()),
    };

    let result = loop {
        let now = libnet::time::now();
        // Connect waiting candidates while there is room.
        while hs.iter().filter(|h| h.link != Link::Dropped).count() < config.max_holders.max(1) {
            let Some((k, c)) = waiting.pop_front() else {
                break;
            };
            hs[k].link = Link::Connecting;
            let tx = tx.clone();
            workers.push(libnet::spawn(move || connect_and_read(k, c, &tx)));
        }
        if let Some((_, file)) = &index {
            let f = file.borrow();
            if f.complete() || f.holds(want.clone()) {
                break Ok(());
            }
        }
        let alive = hs.iter().any(|h| h.link != Link::Dropped) || !waiting.is_empty();
        // Before any index, with no holder up: say why they could not be
        // reached rather than that none answered.
        let why = |what: &str| match (&index, &unreachable, &bad_index, tried_index.is_empty()) {
            (None, Some(u), _, true) => format!("vod: no holder could be reached (last: {u})"),
            (None, _, Some(b), _) => format!("vod: {what} (last refused: {b})"),
            _ => format!("vod: {what}"),
        };
        if !more && !alive {
            let what = if index.is_some() {
                "every holder is gone"
            } else {
                "no holder has a valid index"
            };
            break Err(io::Error::new(io::ErrorKind::NotConnected, why(what)));
        }
        if now.duration_since(last_piece) > config.stall {
            let what = if index.is_some() {
                "no piece came in time"
            } else {
                "no holder sent a valid index in time"
            };
            break Err(io::Error::new(io::ErrorKind::TimedOut, why(what)));
        }
        // The index: from the first holder up that was not tried yet.
        if index.is_none() {
            if load
                .as_ref()
                .is_some_and(|l| now.duration_since(l.since) > INDEX_TIMEOUT)
            {
                let k = load.take().map_or(0, |l| l.from);
                bad_index = Some(format!(
                    "{}: no index within {INDEX_TIMEOUT:?}",
                    hs[k].label
                ));
                drop_holder(&mut hs, &mut stats, k);
            }
            if load.as_ref().is_some_and(|l| !hs[l.from].usable()) {
                load = None;
            }
            if load.is_none() {
                if let Some(k) =
                    (0..hs.len()).find(|&k| hs[k].usable() && !tried_index.contains(&k))
                {
                    tried_index.push(k);
                    let m = Message::MetaRequest {
                        room,
                        key: "index/n".into(),
                    };
                    if ask(&hs[k], &m).is_ok() {
                        load = Some(IndexLoad {
                            from: k,
                            chunks: None,
                            since: now,
                        });
                    } else {
                        drop_holder(&mut hs, &mut stats, k);
                    }
                }
            }
        }
        if let Some((signed, file)) = &index {
            // A holder that owes pieces and sent none for `slow`: what it
            // owes is cancelled there and asked elsewhere; a strike.
            for k in 0..hs.len() {
                let quiet = hs[k]
                    .waiting
                    .is_some_and(|t| now.duration_since(t) > config.slow);
                if quiet {
                    // A strike for each piece it sat on.
                    hs[k].strikes += hs[k].inflight.max(1) as u32;
                    take_back(&mut hs, &mut inflight, Some(&mut avoid), room, |_, o| {
                        o == k
                    });
                    if hs[k].strikes >= STRIKES {
                        drop_holder(&mut hs, &mut stats, k);
                    }
                }
            }
            let from = config
                .playhead
                .as_ref()
                .map_or(0, |p| signed.index().piece_of(p.get()));
            let order: Vec<u32> = {
                let f = file.borrow();
                let ahead = f.missing_in(from.max(want.start)..want.end);
                let behind = f.missing_in(want.start..from.min(want.end));
                ahead.chain(behind).take(config.window * 4).collect()
            };
            // Pieces wanted soon ahead of the playhead that nobody is asked
            // for, while pieces outside them are in flight (a seek): take
            // those back, so the holders send what the player needs.
            let soon: HashSet<u32> = order
                .iter()
                .take(config.window)
                .take_while(|&&i| i >= from)
                .copied()
                .collect();
            let askable = |i: u32| hs.iter().any(|h| h.usable() && h.has(i));
            if soon
                .iter()
                .any(|&i| !inflight.contains_key(&i) && askable(i))
                && inflight.keys().any(|i| !soon.contains(i))
            {
                take_back(&mut hs, &mut inflight, None, room, |i, _| {
                    !soon.contains(&i)
                });
            }
            // The piece the player waits for, slow at its holder while
            // another could send it: cancelled there, asked elsewhere.
            if let Some(&i) = order.first() {
                if let Some(&(k, t)) = inflight.get(&i) {
                    let other = (0..hs.len()).any(|j| {
                        j != k
                            && hs[j].usable()
                            && hs[j].has(i)
                            && hs[j].inflight < config.per_holder
                    });
                    if other && now.duration_since(t) > URGENT_AFTER {
                        take_back(&mut hs, &mut inflight, Some(&mut avoid), room, |p, _| {
                            p == i
                        });
                    }
                }
            }
            if now.duration_since(last_map) > MAP_PERIOD {
                last_map = now;
                for h in &hs {
                    drop(ask(h, &map_req));
                }
            }
            // Fill the window, in playback order from the playhead.
            let first_needed = order.first().copied();
            let missing: Vec<u32> = order
                .into_iter()
                .filter(|i| !inflight.contains_key(i))
                .collect();
            let mut asks: HashMap<usize, Vec<u64>> = HashMap::new();
            for i in missing {
                if inflight.len() >= config.window {
                    break;
                }
                let pick = (0..hs.len())
                    .filter(|&k| {
                        // A holder that was slow gets one piece at a time.
                        let cap = if hs[k].strikes > 0 {
                            1
                        } else {
                            config.per_holder
                        };
                        hs[k].usable() && hs[k].has(i) && hs[k].inflight < cap
                    })
                    .min_by_key(|&k| (avoid.get(&i) == Some(&k), hs[k].inflight));
                if let Some(k) = pick {
                    hs[k].inflight += 1;
                    hs[k].waiting.get_or_insert(now);
                    inflight.insert(i, (k, now));
                    asks.entry(k).or_default().push(u64::from(i));
                }
            }
            for (k, ids) in asks {
                log::debug!("vod: asking {} for {ids:?}", hs[k].label);
                // 0: the player needs it next; 1: read-ahead.
                let urgent = first_needed.is_some_and(|f| ids.contains(&u64::from(f)));
                let m = Message::FragmentRequest {
                    room,
                    channel: Channel::Video,
                    priority: u8::from(!urgent),
                    ids,
                };
                if ask(&hs[k], &m).is_err() {
                    drop_holder(&mut hs, &mut stats, k);
                }
            }
            // Requeue what dropped holders owed.
            inflight.retain(|_, (k, _)| hs[*k].usable());
        }

        let ev = match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(ev) => ev,
            Err(RecvTimeoutError::Timeout) => continue,
            // Not while `tx` lives.
            Err(RecvTimeoutError::Disconnected) => continue,
        };
        match ev {
            Event::New(c) => {
                let k = hs.len();
                stats.holders.push(c.label.clone());
                stats.bytes.push(0);
                hs.push(Holder {
                    label: c.label.clone(),
                    link: Link::Connecting,
                    conn: None,
                    bits: Vec::new(),
                    inflight: 0,
                    waiting: None,
                    strikes: 0,
                });
                waiting.push_back((k, c));
            }
            Event::NoMore => more = false,
            Event::Up(k, conn) => {
                if hs[k].link == Link::Connecting {
                    hs[k].link = Link::Up;
                    hs[k].conn = Some(conn);
                    if ask(&hs[k], &map_req).is_err() {
                        drop_holder(&mut hs, &mut stats, k);
                    }
                } else {
                    conn.abort();
                }
            }
            Event::Gone(k, why) => {
                if let Some(why) = why {
                    unreachable = Some(format!("{}: {why}", hs[k].label));
                }
                drop_holder(&mut hs, &mut stats, k);
            }
            Event::Msg(k, Message::MetaReply { key, value, .. }) => {
                let Some(l) = load.as_mut().filter(|l| l.from == k) else {
                    continue;
                };
                match index_reply(l, &key, value) {
                    Ok(None) => {
                        if l.chunks
                            .as_ref()
                            .is_some_and(|c| c.iter().all(Option::is_none))
                        {
                            // Just learnt the count: ask for every chunk.
                            let n = l.chunks.as_ref().map_or(0, Vec::len);
                            for c in 0..n {
                                let m = Message::MetaRequest {
                                    room,
                                    key: format!("index/{c}"),
                                };
                                if ask(&hs[k], &m).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    Ok(Some(bytes)) => {
                        load = None;
                        match SignedIndex::from_bytes(&bytes, config.publisher) {
                            Ok(s) if s.id() == id => {
                                // Resuming reads the whole `.part`: off the loop.
                                let (p, i) = (path.to_path_buf(), s.index().clone());
                                let opened =
                                    libnet::spawn_blocking(move || PieceFile::open_partial(&p, &i));
                                let file = match opened {
                                    Ok(f) => Rc::new(RefCell::new(f)),
                                    Err(e) => break Err(e),
                                };
                                stats.resumed = file.borrow().count();
                                if let Some(seeder) = &config.seeder {
                                    if let Err(e) = seeder.add(&s, file.clone()) {
                                        break Err(e);
                                    }
                                }
                                if let Some(f) = config.on_open.take() {
                                    f(&s, &file);
                                }
                                last_piece = libnet::time::now();
                                want = match config.span_ms {
                                    Some((a, b)) => s.index().pieces_for(a, b),
                                    None => 0..s.index().pieces(),
                                };
                                index = Some((s, file));
                            }
                            refused => {
                                let why = match refused {
                                    Err(e) => e.to_string(),
                                    Ok(_) => "its index is another file's".into(),
                                };
                                bad_index = Some(format!("{}: {why}", hs[k].label));
                                drop_holder(&mut hs, &mut stats, k);
                            }
                        }
                    }
                    Err(()) => {
                        load = None;
                        bad_index = Some(format!("{}: a malformed index answer", hs[k].label));
                        drop_holder(&mut hs, &mut stats, k);
                    }
                }
            }
            Event::Msg(
                k,
                Message::Map {
                    room: r,
                    first,
                    bits,
                    ..
                },
            ) if r == room => {
                let n = index
                    .as_ref()
                    .map_or(super::index::MAX_PIECES, |(s, _)| s.index().pieces());
                hs[k].set_map(first, &bits, n);
            }
            Event::Msg(k, Message::FragmentMissing { room: r, ids, .. }) if r == room => {
                for id in ids {
                    let Ok(i) = u32::try_from(id) else { continue };
                    hs[k].set(i, false);
                    if inflight.get(&i).is_some_and(|(o, _)| *o == k) {
                        inflight.remove(&i);
                        hs[k].inflight = hs[k].inflight.saturating_sub(1);
                    }
                }
                hs[k].waiting = (hs[k].inflight > 0).then_some(libnet::time::now());
            }
            Event::Msg(
                k,
                Message::Fragment {
                    room: r, id, data, ..
                },
            ) if r == room => {
                let Some((_, file)) = &index else { continue };
                let Ok(i) = u32::try_from(id) else { continue };
                log::debug!("vod: piece {i} from {}", hs[k].label);
                // Whoever else was asked for it need not send it.
                let mut others = Vec::new();
                match inflight.remove(&i) {
                    Some((o, _)) if o == k => hs[k].inflight = hs[k].inflight.saturating_sub(1),
                    Some((o, _)) => {
                        hs[o].inflight = hs[o].inflight.saturating_sub(1);
                        if hs[o].inflight == 0 {
                            hs[o].waiting = None;
                        }
                        others.push(o);
                    }
                    None => {}
                }
                // It sent something: its wait starts again.
                hs[k].waiting = (hs[k].inflight > 0).then_some(libnet::time::now());
                if let Some(a) = avoid.remove(&i) {
                    if a != k {
                        others.push(a);
                    }
                }
                for o in others {
                    let m = Message::Cancel {
                        room,
                        channel: Channel::Video,
                        ids: vec![id],
                    };
                    drop(ask(&hs[o], &m));
                }
                if file.borrow().have(i) {
                    stats.duplicates += 1;
                    continue;
                }
                let r = file.borrow_mut().store(i, &data);
                match r {
                    Ok(last) => {
                        unfinished |= last;
                        stats.bytes[k] += data.len() as u64;
                        hs[k].strikes = 0;
                        last_piece = libnet::time::now();
                        let (c, total) = {
                            let f = file.borrow();
                            (f.contiguous_bytes(), f.index().size)
                        };
                        if c > 0 && stats.first_byte.is_none() {
                            stats.first_byte = Some(start.elapsed());
                        }
                        if let Some(p) = config.progress.as_mut() {
                            p(c, total);
                        }
                    }
                    Err(super::PieceError::Io(e)) => break Err(e),
                    Err(_) => {
                        stats.bad_pieces += 1;
                        drop_holder(&mut hs, &mut stats, k);
                        inflight.retain(|_, (o, _)| *o != k);
                    }
                }
            }
            Event::Msg(..) => {}
        }
    };
    for h in &mut hs {
        if let Some(c) = h.conn.take() {
            c.close();
        }
    }
    drop(tx);
    drop(rx);
    // The feeder ends when the caller drops its sender, the workers when
    // their connection or the event channel ends.
    drop(feeder);
    drop(workers);
    result?;
    let (signed, file) = index.ok_or_else(|| invalid("vod: no index".into()))?;
    if unfinished {
        // Syncing a large file takes long: off the loop.
        let job = file.borrow().finisher()?;
        libnet::spawn_blocking(job)?;
        file.borrow_mut().finished();
    }
    stats.total = start.elapsed();
    Ok((signed, stats))
}

/// Takes back the pieces in flight that `which(piece, holder)` picks:
/// cancelled at their holder, to be asked for again — elsewhere first when
/// `avoid` records the holder.
fn take_back(
    hs: &mut [Holder],
    inflight: &mut HashMap<u32, (usize, Instant)>,
    mut avoid: Option<&mut HashMap<u32, usize>>,
    room: RoomId,
    which: impl Fn(u32, usize) -> bool,
) {
    let mut by: HashMap<usize, Vec<u64>> = HashMap::new();
    inflight.retain(|&i, &mut (k, _)| {
        if !which(i, k) {
            return true;
        }
        by.entry(k).or_default().push(u64::from(i));
        if let Some(a) = avoid.as_deref_mut() {
            a.insert(i, k);
        }
        false
    });
    for (k, ids) in by {
        log::debug!("vod: taking back {ids:?} from {}", hs[k].label);
        let h = &mut hs[k];
        h.inflight = h.inflight.saturating_sub(ids.len());
        if h.inflight == 0 {
            h.waiting = None;
        }
        if let (Some(c), Link::Up) = (&h.conn, h.link) {
            let m = Message::Cancel {
                room,
                channel: Channel::Video,
                ids,
            };
            drop(send(c, &m));
        }
    }
}

/// [`fetch`] from holders reachable straight at `holders` (labelled by
/// their addresses, in this order).
pub fn fetch_from(
    socket: &Rc<RudpSocket>,
    holders: &[SocketAddr],
    id: [u8; 32],
    path: &Path,
    config: FetchConfig,
) -> io::Result<(SignedIndex, FetchStats)> {
    let (tx, rx) = channel(holders.len().max(1));
    for &a in holders {
        tx.try_send(Candidate::direct(socket.clone(), a))
            .map_err(|_| invalid("vod: candidate queue".into()))?;
    }
    drop(tx);
    fetch(rx, id, path, config)
}

/// Connects candidate `k` and passes on what the holder sends, then
/// `Gone`.
fn connect_and_read(k: usize, c: Candidate, tx: &libnet::sync::Sender<Event>) {
    let conn = match (c.connect)() {
        Ok(conn) => Rc::new(conn),
        Err(e) => {
            log::info!("vod: cannot reach holder {}: {e}", c.label);
            drop(tx.send(Event::Gone(k, Some(e.to_string()))));
            return;
        }
    };
    if tx.send(Event::Up(k, conn.clone())).is_err() {
        conn.abort();
        return;
    }
    while let Ok(Some(f)) = conn.recv() {
        match Message::decode_frame(&f) {
            Ok(m) => {
                if tx.send(Event::Msg(k, m)).is_err() {
                    return;
                }
            }
            Err(_) => break,
        }
    }
    drop(tx.send(Event::Gone(k, None)));
}

/// Takes one `MetaReply` of an index being loaded: `Ok(Some(bytes))` once
/// every chunk came, `Ok(None)` while more are due, `Err` for an answer
/// that cannot be right (no such file, a bad count, an unasked chunk).
fn index_reply(
    l: &mut IndexLoad,
    key: &str,
    value: Option<Vec<u8>>,
) -> Result<Option<Vec<u8>>, ()> {
    let value = value.ok_or(())?;
    match (key.strip_prefix("index/"), &mut l.chunks) {
        (Some("n"), None) => {
            let n = u32::from_be_bytes(value.try_into().map_err(|_| ())?) as usize;
            if n == 0 || n > super::index::MAX_SIGNED_LEN / INDEX_CHUNK + 1 {
                return Err(());
            }
            l.chunks = Some(vec![None; n]);
            Ok(None)
        }
        (Some(c), Some(chunks)) => {
            let c: usize = c.parse().map_err(|_| ())?;
            let slot = chunks.get_mut(c).ok_or(())?;
            if value.len() > INDEX_CHUNK {
                return Err(());
            }
            *slot = Some(value);
            if chunks.iter().all(Option::is_some) {
                Ok(Some(chunks.iter().flatten().flatten().copied().collect()))
            } else {
                Ok(None)
            }
        }
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_the_first_four_bytes_of_the_id() {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(room_of(&id), 0x0102_0304);
    }

    #[test]
    fn bucket_holds_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket {
            rate: 1000.0,
            burst: 500.0,
            tokens: 0.0,
            last: t0,
        };
        assert_eq!(b.take(500, t0), Duration::from_millis(500));
        // The debt is paid by time: half a second later, 500 more wait 0.5 s.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(b.take(500, t1), Duration::from_millis(500));
        // Idle time fills up to the burst only.
        let t2 = t1 + Duration::from_secs(10);
        assert_eq!(b.take(500, t2), Duration::ZERO);
        assert_eq!(b.take(1000, t2), Duration::from_secs(1));
    }

    #[test]
    fn urgent_pieces_go_first_and_cancelled_ones_never() {
        let mut q = Pieces::default();
        assert!(q.add(1, &[1, 2, 3], false).is_empty());
        assert!(q.add(1, &[9, 3], true).is_empty(), "3 moves up with 9");
        q.cancel(1, &[2, 9]);
        q.cancel(2, &[1]);
        let order: Vec<u64> = std::iter::from_fn(|| q.next()).map(|(_, id)| id).collect();
        assert_eq!(order, vec![3, 1]);
        // Bounded: what does not fit is handed back.
        let ids: Vec<u64> = (0..QUEUE as u64 + 5).collect();
        let over = q.add(1, &ids, false);
        assert_eq!(over, (QUEUE as u64..QUEUE as u64 + 5).collect::<Vec<_>>());
        assert_eq!(q.set.len(), QUEUE);
        assert_eq!(q.order.len(), QUEUE);
    }

    #[test]
    fn holder_bits() {
        let mut h = Holder {
            label: "h".into(),
            link: Link::Up,
            conn: None,
            bits: Vec::new(),
            inflight: 0,
            waiting: None,
            strikes: 0,
        };
        assert!(!h.has(9));
        h.set(9, true);
        assert!(h.has(9) && !h.has(8) && h.bits.len() == 2);
        h.set(9, false);
        assert!(!h.has(9));
        // Maps: bytewise from a byte boundary, bits past `n` cleared; the
        // same result bit by bit from elsewhere.
        h.set_map(16, &[0xFF, 0xFF], 20);
        assert!((16..20).all(|i| h.has(i)) && !(20..32).any(|i| h.has(i)));
        h.set_map(3, &[0b101], 100);
        assert!(h.has(3) && !h.has(4) && h.has(5));
        h.set_map(200, &[0xFF], 100);
        assert!(!h.has(200));
    }
}
