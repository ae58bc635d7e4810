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
//!
//! A piece travels as one fragment, so shared files are indexed with a piece
//! size of at most [`MAX_NET_PIECE`] bytes. See `docs/vod.md`, "Transfer".

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
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

    /// One connection: a reader coroutine queues work, this one answers in
    /// order (the only sender on `conn`).
    fn serve(&self, conn: Rc<RudpConnection>) {
        let (tx, rx) = channel::<Message>(QUEUE * 2);
        let queued = Rc::new(Cell::new(0usize));
        let reader = {
            let conn = conn.clone();
            let queued = queued.clone();
            libnet::spawn(move || {
                while let Ok(Some(f)) = conn.recv() {
                    let Ok(mut m) = Message::decode_frame(&f) else {
                        break;
                    };
                    if let Message::FragmentRequest { room, ids, .. } = &mut m {
                        let room = *room;
                        let take = ids.len().min(QUEUE.saturating_sub(queued.get()));
                        let over = ids.split_off(take);
                        queued.set(queued.get() + ids.len());
                        if !over.is_empty() {
                            let missing = Message::FragmentMissing {
                                room,
                                channel: Channel::Video,
                                ids: over,
                            };
                            if tx.send(missing).is_err() {
                                break;
                            }
                        }
                    }
                    if tx.send(m).is_err() {
                        break;
                    }
                }
            })
        };
        while let Ok(m) = rx.recv() {
            let r = match m {
                Message::FragmentRequest { room, ids, .. } => {
                    queued.set(queued.get().saturating_sub(ids.len()));
                    self.pieces(&conn, room, &ids)
                }
                other => self.answer(&conn, other),
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

    fn pieces(&self, conn: &RudpConnection, room: RoomId, ids: &[u64]) -> io::Result<()> {
        let mut missing = Vec::new();
        for &id in ids {
            let piece = {
                let files = self.inner.files.borrow();
                files.get(&room).and_then(|s| {
                    u32::try_from(id)
                        .ok()
                        .and_then(|i| s.file.borrow().read(i).ok())
                })
            };
            let Some(mut data) = piece else {
                missing.push(id);
                continue;
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
            send(conn, &m)?;
        }
        if !missing.is_empty() {
            let m = Message::FragmentMissing {
                room,
                channel: Channel::Video,
                ids: missing,
            };
            send(conn, &m)?;
        }
        Ok(())
    }
}

/// Slow pieces in a row after which a holder is dropped.
const STRIKES: u32 = 3;

/// How [`fetch`] downloads.
pub struct FetchConfig {
    /// The publisher's key the index must be signed with (`None`: any).
    pub publisher: Option<[u8; PUBLIC_LEN]>,
    /// Pieces in flight over all holders.
    pub window: usize,
    /// Pieces in flight per holder.
    pub per_holder: usize,
    /// A piece not come after this is asked elsewhere.
    pub slow: Duration,
    /// No piece at all for this long: give up.
    pub stall: Duration,
    /// Serves the file meanwhile (what is held so far).
    pub seeder: Option<Seeder>,
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
            slow: Duration::from_secs(3),
            stall: Duration::from_secs(15),
            seeder: None,
            progress: None,
        }
    }
}

/// What [`fetch`] did.
#[derive(Clone, Debug, Default)]
pub struct FetchStats {
    /// Verified piece bytes taken from each holder (in the order given).
    pub bytes: Vec<u64>,
    /// Holders dropped (bad index, bad piece, gone).
    pub dropped: Vec<SocketAddr>,
    /// Pieces that failed their hash (or length).
    pub bad_pieces: u32,
    /// Pieces held before the download started (resume).
    pub resumed: u32,
    /// From the start to the first contiguous byte held.
    pub first_byte: Option<Duration>,
    /// From the start to the end.
    pub total: Duration,
}

enum Event {
    Msg(usize, Message),
    Gone(usize),
}

struct Holder {
    addr: SocketAddr,
    conn: Option<Rc<RudpConnection>>,
    bits: Vec<u8>,
    inflight: usize,
    /// Pieces it was too slow with since its last good one.
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
}

/// Downloads the file whose index id is `id` from `holders` (reachable RUDP
/// addresses) into `path` (resuming `path.part`): the signed index first,
/// from the first holder whose copy verifies, then the pieces from all
/// holders at once, earliest missing first. Returns when `path` is
/// complete.
pub fn fetch(
    socket: &RudpSocket,
    holders: &[SocketAddr],
    id: [u8; 32],
    path: &Path,
    mut config: FetchConfig,
) -> io::Result<(SignedIndex, FetchStats)> {
    let start = libnet::time::now();
    let room = room_of(&id);
    let (tx, rx) = channel::<Event>(1024);
    let mut hs = Vec::new();
    let mut readers = Vec::new();
    let mut unreachable = Vec::new();
    for (k, &addr) in holders.iter().enumerate() {
        let conn = socket.connect(addr).ok().map(Rc::new);
        if conn.is_none() {
            unreachable.push(addr);
        }
        if let Some(c) = &conn {
            let (c, tx) = (c.clone(), tx.clone());
            readers.push(libnet::spawn(move || {
                while let Ok(Some(f)) = c.recv() {
                    match Message::decode_frame(&f) {
                        Ok(m) => {
                            if tx.send(Event::Msg(k, m)).is_err() {
                                return;
                            }
                        }
                        Err(_) => break,
                    }
                }
                drop(tx.send(Event::Gone(k)));
            }));
        }
        hs.push(Holder {
            addr,
            conn,
            bits: Vec::new(),
            inflight: 0,
            strikes: 0,
        });
    }
    drop(tx);
    let mut stats = FetchStats {
        bytes: vec![0; hs.len()],
        dropped: unreachable,
        ..FetchStats::default()
    };
    let drop_holder = |hs: &mut Vec<Holder>, stats: &mut FetchStats, k: usize| {
        if let Some(c) = hs[k].conn.take() {
            c.abort();
            stats.dropped.push(hs[k].addr);
        }
    };
    let ask = |h: &Holder, m: &Message| h.conn.as_ref().map(|c| send(c, m));

    // The signed index, holder by holder.
    let mut signed = None;
    let mut gone = Vec::new();
    for k in 0..hs.len() {
        match index_from(&hs[k], k, room, &rx, config.publisher, id, &mut gone) {
            Some(s) => {
                signed = Some(s);
                break;
            }
            None => drop_holder(&mut hs, &mut stats, k),
        }
    }
    for k in gone {
        drop_holder(&mut hs, &mut stats, k);
    }
    let signed = signed.ok_or_else(|| invalid("vod: no holder has a valid index".into()))?;
    let index = signed.index().clone();
    let file = Rc::new(RefCell::new(PieceFile::open_partial(path, &index)?));
    stats.resumed = file.borrow().count();
    if let Some(s) = &config.seeder {
        s.add(&signed, file.clone())?;
    }
    let n = index.pieces();
    let map_req = Message::MapRequest {
        room,
        channel: Channel::Video,
    };
    let mut inflight: HashMap<u32, (usize, Instant)> = HashMap::new();
    let mut avoid: HashMap<u32, usize> = HashMap::new();
    let mut last_map = libnet::time::now();
    let mut last_piece = libnet::time::now();
    for h in &hs {
        drop(ask(h, &map_req));
    }
    loop {
        if file.borrow().complete() {
            break;
        }
        let now = libnet::time::now();
        // Slow pieces: ask elsewhere.
        let late: Vec<u32> = inflight
            .iter()
            .filter(|(_, (_, t))| now.duration_since(*t) > config.slow)
            .map(|(&i, _)| i)
            .collect();
        for i in late {
            if let Some((k, _)) = inflight.remove(&i) {
                hs[k].inflight = hs[k].inflight.saturating_sub(1);
                hs[k].strikes += 1;
                avoid.insert(i, k);
                if hs[k].strikes >= STRIKES {
                    drop_holder(&mut hs, &mut stats, k);
                }
            }
        }
        if now.duration_since(last_map) > Duration::from_millis(500) {
            last_map = now;
            for h in &hs {
                drop(ask(h, &map_req));
            }
        }
        if hs.iter().all(|h| h.conn.is_none()) {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "vod: every holder is gone",
            ));
        }
        if now.duration_since(last_piece) > config.stall {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "vod: no piece came in time",
            ));
        }
        // Fill the window, earliest missing piece first.
        let missing: Vec<u32> = {
            let f = file.borrow();
            f.missing()
                .filter(|i| !inflight.contains_key(i))
                .take(config.window * 4)
                .collect()
        };
        let first_missing = missing.first().copied();
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
                    hs[k].conn.is_some() && hs[k].has(i) && hs[k].inflight < cap
                })
                .min_by_key(|&k| (avoid.get(&i) == Some(&k), hs[k].inflight));
            if let Some(k) = pick {
                hs[k].inflight += 1;
                inflight.insert(i, (k, now));
                asks.entry(k).or_default().push(u64::from(i));
            }
        }
        for (k, ids) in asks {
            // 0: the player needs it next; 1: read-ahead.
            let urgent = first_missing.is_some_and(|f| ids.contains(&u64::from(f)));
            let m = Message::FragmentRequest {
                room,
                channel: Channel::Video,
                priority: u8::from(!urgent),
                ids,
            };
            if let Some(Err(_)) = ask(&hs[k], &m) {
                drop_holder(&mut hs, &mut stats, k);
            }
        }
        // Requeue what dropped holders owed.
        inflight.retain(|_, (k, _)| hs[*k].conn.is_some());

        let ev = match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(ev) => ev,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "vod: every holder is gone",
                ))
            }
        };
        match ev {
            Event::Gone(k) => drop_holder(&mut hs, &mut stats, k),
            Event::Msg(
                k,
                Message::Map {
                    room: r,
                    first,
                    bits,
                    ..
                },
            ) if r == room => {
                for (b, byte) in bits.iter().enumerate() {
                    for bit in 0..8 {
                        let i = first + (b * 8 + bit) as u64;
                        if let Ok(i) = u32::try_from(i) {
                            if i < n {
                                hs[k].set(i, byte & (1 << bit) != 0);
                            }
                        }
                    }
                }
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
            }
            Event::Msg(
                k,
                Message::Fragment {
                    room: r, id, data, ..
                },
            ) if r == room => {
                let Ok(i) = u32::try_from(id) else { continue };
                if inflight.get(&i).is_some_and(|(o, _)| *o == k) {
                    inflight.remove(&i);
                    hs[k].inflight = hs[k].inflight.saturating_sub(1);
                }
                if file.borrow().have(i) {
                    continue;
                }
                let r = file.borrow_mut().write(i, &data);
                match r {
                    Ok(()) => {
                        stats.bytes[k] += data.len() as u64;
                        hs[k].strikes = 0;
                        last_piece = libnet::time::now();
                        avoid.remove(&i);
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
                    Err(super::PieceError::Io(e)) => return Err(e),
                    Err(_) => {
                        stats.bad_pieces += 1;
                        drop_holder(&mut hs, &mut stats, k);
                        inflight.retain(|_, (o, _)| *o != k);
                    }
                }
            }
            Event::Msg(..) => {}
        }
    }
    for h in &mut hs {
        if let Some(c) = h.conn.take() {
            c.close();
        }
    }
    drop(rx);
    drop(libnet::join_all(readers));
    stats.total = start.elapsed();
    Ok((signed, stats))
}

/// The signed index from holder `k`: the chunk count, then each chunk;
/// `None` if it does not answer in time or its copy does not verify. Other
/// holders found gone meanwhile are added to `gone`.
fn index_from(
    h: &Holder,
    k: usize,
    room: RoomId,
    rx: &Receiver<Event>,
    publisher: Option<[u8; PUBLIC_LEN]>,
    id: [u8; 32],
    gone: &mut Vec<usize>,
) -> Option<SignedIndex> {
    let conn = h.conn.as_ref()?;
    let mut get = |key: String| -> Option<Vec<u8>> {
        send(
            conn,
            &Message::MetaRequest {
                room,
                key: key.clone(),
            },
        )
        .ok()?;
        let deadline = libnet::time::now() + Duration::from_secs(5);
        loop {
            let left = deadline.checked_duration_since(libnet::time::now())?;
            match rx.recv_timeout(left).ok()? {
                Event::Msg(
                    j,
                    Message::MetaReply {
                        key: got, value, ..
                    },
                ) if j == k && got == key => return value,
                Event::Gone(j) if j == k => return None,
                Event::Gone(j) => gone.push(j),
                Event::Msg(..) => {}
            }
        }
    };
    let count = get("index/n".into())?;
    let count = u32::from_be_bytes(count.try_into().ok()?);
    if count as usize > super::index::MAX_SIGNED_LEN / INDEX_CHUNK + 1 {
        return None;
    }
    let mut bytes = Vec::new();
    for c in 0..count {
        bytes.extend(get(format!("index/{c}"))?);
    }
    let s = SignedIndex::from_bytes(&bytes, publisher).ok()?;
    (s.id() == id).then_some(s)
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
    fn holder_bits() {
        let mut h = Holder {
            addr: "127.0.0.1:1".parse().expect("addr"),
            conn: None,
            bits: Vec::new(),
            inflight: 0,
            strikes: 0,
        };
        assert!(!h.has(9));
        h.set(9, true);
        assert!(h.has(9) && !h.has(8) && h.bits.len() == 2);
        h.set(9, false);
        assert!(!h.has(9));
    }
}
