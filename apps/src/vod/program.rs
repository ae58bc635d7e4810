//! The `vod` program's work, shared by `vod` and `client --file`:
//! sharing a file, listing the catalog, fetching (and playing) a file. See
//! `docs/vod.md`, "Programs".

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use libnet::p2p::client::{whoami_rudp, Hello, ProbeRouter, TrackerClient};
use libnet::p2p::connect::{Options, Puncher};
use libnet::p2p::registry::LOBBY;
use libnet::p2p::wire::{CatalogEntry, FileInfo, Holder};
use libnet::p2p::{rudp_config, NatType, NodeId, NodeInfo, Role};
use libnet::rand::random_u64;
use libnet::rudp::RudpSocket;
use libnet::sync::{channel, Receiver, RecvTimeoutError, Semaphore};
use libnet::time::sleep;

use super::net::{fetch, Candidate, FetchConfig, Seeder, SeederConfig};
use super::pieces::part_path;
use super::play::Playback;
use super::{index_file, PieceFile, SignedIndex};
use crate::http::{FileBody, Routes, Server};
use crate::node::{say, signal_name, TRACKER_TIMEOUT};
use crate::signed::{hex, RoomKey, RoomPublic};
use crate::{concrete_bind, tracker_addrs};

/// Piece size of shared files: one piece travels as one RUDP message.
const PIECE: usize = super::net::MAX_NET_PIECE;
/// Tracker heartbeat period.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// How often a downloader tells the tracker how much it holds.
const HAVE_PERIOD: Duration = Duration::from_secs(1);
/// Most holders asked for at once.
const MAX_HOLDERS: u16 = 16;

/// The tracker and the local socket address, resolved.
pub struct Net {
    tracker: SocketAddr,
    tracker_udp: SocketAddr,
    bind: SocketAddr,
}

impl Net {
    /// From the flags: the tracker (`HOST:PORT`), its UDP address (default:
    /// its host, port 3478) and the local socket address.
    pub fn new(tracker: &str, tracker_udp: Option<&str>, bind: SocketAddr) -> Result<Net, String> {
        let (tracker, tracker_udp) = tracker_addrs(tracker, tracker_udp)?;
        Ok(Net {
            tracker,
            tracker_udp,
            bind: concrete_bind(bind, tracker),
        })
    }

    /// Binds the RUDP socket, learns our public address, registers in the
    /// tracker's lobby and starts answering punches (see [`Node`]).
    fn join(&self) -> Result<Rc<Node>, String> {
        self.join_with(self.bind()?)
    }

    /// Binds the RUDP socket (`--bind`), so that a port in use is reported
    /// before any long work.
    fn bind(&self) -> Result<RudpSocket, String> {
        RudpSocket::bind(self.bind, rudp_config())
            .map_err(|e| format!("cannot bind {} (--bind): {e}", self.bind))
    }

    /// [`Net::join`] on a socket [`Net::bind`] made.
    fn join_with(&self, sock: RudpSocket) -> Result<Rc<Node>, String> {
        let local = sock.local_addr().map_err(|e| e.to_string())?;
        let tracker = TrackerClient::connect(self.tracker, TRACKER_TIMEOUT).map_err(|e| {
            format!(
                "cannot reach the tracker at {} (--tracker): {e}",
                self.tracker
            )
        })?;
        let public =
            whoami_rudp(&sock, self.tracker_udp, Duration::from_secs(2)).unwrap_or_else(|e| {
                log::warn!("vod: no Whoami answer from {} ({e})", self.tracker_udp);
                local
            });
        let hello = Hello {
            node: random_u64(),
            role: Role::Peer,
            room: LOBBY,
            local,
            public: Some(public),
            workload: 0,
            nat: NatType::Unknown,
            key: Vec::new(),
        };
        tracker
            .hello(&hello)
            .map_err(|e| format!("the tracker at {} refused us: {e}", self.tracker))?;
        Ok(Node::start(Rc::new(sock), Rc::new(tracker), public, hello))
    }
}

/// How often a node that lost its tracker tries to register again.
const REJOIN: Duration = Duration::from_secs(2);
/// Trackers a node registers with at most (its own and those of holders).
const MAX_TRACKERS: usize = 8;
/// Punches answered at once; more wait their turn.
const MAX_ANSWERS: usize = 8;
/// Introductions waiting for an answer; more are dropped (the peer's
/// attempt times out and it tries again later).
const INTRODUCTIONS: usize = 64;

/// A `vod` node on the network: one RUDP socket (pieces, punch probes),
/// registered in the lobby of its tracker. It punches to holders through
/// the tracker they are on (ours, or a linked one it then registers with
/// too) and answers every punch that comes its way, through the tracker
/// that brought it, so that whoever wants our pieces can reach us behind a
/// NAT; the connection then comes to the socket's `Seeder`. A lost tracker
/// connection is made again with [`Node::rejoin`].
struct Node {
    sock: Rc<RudpSocket>,
    /// Our tracker's address (its connection is its puncher's, replaced
    /// by [`Node::rejoin`]).
    tracker_addr: SocketAddr,
    public: SocketAddr,
    hello: Hello,
    router: Rc<ProbeRouter>,
    /// By tracker TCP address: ours first, then others met through holders.
    punchers: RefCell<HashMap<SocketAddr, Rc<Puncher>>>,
    /// Punches being answered, over all trackers: one permit each.
    answering: Semaphore,
}

impl Node {
    fn start(
        sock: Rc<RudpSocket>,
        tracker: Rc<TrackerClient>,
        public: SocketAddr,
        hello: Hello,
    ) -> Rc<Node> {
        let router = Rc::new(ProbeRouter::new(sock.clone()));
        {
            let router = router.clone();
            drop(libnet::spawn(move || router.route()));
        }
        let node = Rc::new(Node {
            sock,
            tracker_addr: tracker.tracker_addr(),
            public,
            hello,
            router,
            punchers: RefCell::new(HashMap::new()),
            answering: Semaphore::new(MAX_ANSWERS),
        });
        node.add_puncher(tracker.tracker_addr(), tracker);
        node
    }

    /// Our tracker connection.
    fn tracker(&self) -> Rc<TrackerClient> {
        self.own_puncher().tracker().clone()
    }

    /// Punches through `tracker` (at `addr`) from now on: its notifications
    /// are read, and the introductions it brings answered (a few at once
    /// over all trackers), until its connection ends.
    fn add_puncher(&self, addr: SocketAddr, tracker: Rc<TrackerClient>) -> Rc<Puncher> {
        let p = Rc::new(Puncher::new(
            tracker,
            self.router.clone(),
            self.hello.node,
            Options::default(),
        ));
        self.punchers.borrow_mut().insert(addr, p.clone());
        let (tx, rx) = channel::<(NodeInfo, u64)>(INTRODUCTIONS);
        let d = p.clone();
        drop(libnet::spawn(move || {
            let e = d.dispatch(&tx);
            log::info!("vod: tracker {addr}: {e}");
        }));
        let (puncher, answering) = (p.clone(), self.answering.clone());
        drop(libnet::spawn(move || {
            while let Ok((peer, token)) = rx.recv() {
                let Ok(permit) = answering.acquire() else {
                    return;
                };
                let p = puncher.clone();
                drop(libnet::spawn(move || {
                    let _permit = permit;
                    match p.answer(&peer, token) {
                        Ok(addr) => log::info!("vod: punched back to {addr}"),
                        Err(e) => log::info!("vod: punch from {:016x} failed: {e}", peer.id),
                    }
                }));
            }
        }));
        p
    }

    /// Connects to our tracker again and registers as before (same node,
    /// same addresses); the caller publishes its files again.
    fn rejoin(&self) -> io::Result<()> {
        let t = Rc::new(TrackerClient::connect(self.tracker_addr, TRACKER_TIMEOUT)?);
        t.hello(&self.hello)?;
        self.add_puncher(self.tracker_addr, t);
        Ok(())
    }

    fn own_puncher(&self) -> Rc<Puncher> {
        self.punchers.borrow()[&self.tracker_addr].clone()
    }

    /// The puncher of the tracker at `addr` (as the catalog names it),
    /// registering with it first if it is not ours.
    fn puncher_for(&self, addr: SocketAddr) -> io::Result<Rc<Puncher>> {
        let own = self.tracker_addr;
        if addr == own || (addr.ip().is_unspecified() && addr.port() == own.port()) {
            return Ok(self.own_puncher());
        }
        if let Some(p) = self.punchers.borrow().get(&addr) {
            return Ok(p.clone());
        }
        if addr.ip().is_unspecified() {
            return Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!("the holder's tracker gave no usable address ({addr})"),
            ));
        }
        if self.punchers.borrow().len() >= MAX_TRACKERS {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("already registered with {MAX_TRACKERS} trackers; not with {addr}"),
            ));
        }
        let t = TrackerClient::connect(addr, TRACKER_TIMEOUT)?;
        t.hello(&self.hello)?;
        // Another coroutine may have registered meanwhile: keep the first.
        if let Some(p) = self.punchers.borrow().get(&addr) {
            return Ok(p.clone());
        }
        Ok(self.add_puncher(addr, Rc::new(t)))
    }

    /// How to reach holder `h`: at its local address when it shares our
    /// public IP (same host or same NAT), else by punching through its
    /// tracker.
    fn candidate(self: &Rc<Node>, h: &Holder) -> Candidate {
        if h.node.public.ip() == self.public.ip() {
            return Candidate::direct(self.sock.clone(), h.node.local);
        }
        let (node, h) = (self.clone(), h.clone());
        Candidate {
            label: h.node.public.to_string(),
            connect: Box::new(move || {
                let p = node.puncher_for(h.tracker)?;
                let (_, addr) = p.connect(h.node.id, h.node.room)?;
                node.sock.connect(addr)
            }),
        }
    }

    fn id(&self) -> NodeId {
        self.hello.node
    }

    /// The heartbeat, to every tracker we are registered with; fails when
    /// our own tracker is lost.
    fn heartbeat(&self) -> io::Result<()> {
        let punchers: Vec<(SocketAddr, Rc<Puncher>)> = self
            .punchers
            .borrow()
            .iter()
            .map(|(a, p)| (*a, p.clone()))
            .collect();
        for (addr, p) in punchers {
            let r = p.tracker().update(0, NatType::Unknown);
            if addr == self.tracker_addr {
                r?;
            }
        }
        Ok(())
    }

    /// Says goodbye to every tracker.
    fn leave(&self, name: Option<&str>) {
        let punchers: Vec<Rc<Puncher>> = self.punchers.borrow().values().cloned().collect();
        for p in punchers {
            if let Some(n) = name {
                let _ = p.tracker().unpublish(n);
            }
            let _ = p.tracker().bye();
        }
    }
}

/// Writes `line` and a newline to stdout from a pool thread.
fn out(line: String) {
    libnet::spawn_blocking(move || {
        let mut o = io::stdout().lock();
        let _ = writeln!(o, "{line}");
        let _ = o.flush();
    });
}

fn secs(ms: u64) -> String {
    format!("{:.1}", ms as f64 / 1000.0)
}

fn file_info(s: &SignedIndex) -> FileInfo {
    let i = s.index();
    FileInfo {
        name: i.name.clone(),
        size: i.size,
        duration_ms: i.duration_ms,
        pieces: i.pieces(),
        index: s.id(),
    }
}

// ---- share ----------------------------------------------------------------

/// What `vod share` does.
pub struct Share {
    /// Where to serve, which tracker.
    pub net: Net,
    /// The file.
    pub file: PathBuf,
    /// Its name in the catalog.
    pub name: String,
    /// The publisher's key file (created if missing; `None`: a fresh key).
    pub key_file: Option<PathBuf>,
    /// The upload cap.
    pub upload: SeederConfig,
}

/// A seeder capped at `kbps` kilobits per second (0: no cap).
pub fn seeder_config(kbps: u64) -> SeederConfig {
    SeederConfig {
        rate: (kbps > 0).then(|| kbps.saturating_mul(1000) / 8),
        ..SeederConfig::default()
    }
}

/// The key in `path`, or a new one written there (mode 0600).
fn key_from(path: Option<&Path>) -> Result<RoomKey, String> {
    let Some(path) = path else {
        return RoomKey::generate();
    };
    if path.exists() {
        return RoomKey::load(path);
    }
    let key = RoomKey::generate()?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create key file {}: {e}", path.display()))?;
    writeln!(f, "{}", key.to_hex())
        .map_err(|e| format!("cannot write key file {}: {e}", path.display()))?;
    Ok(key)
}

/// `vod share`: indexes, signs, publishes and serves the file until a
/// signal comes on `sig`.
pub fn share(s: Share, sig: &Receiver<i32>) -> Result<(), String> {
    if !s.file.is_file() {
        return Err(format!("file not found: {}", s.file.display()));
    }
    let key = key_from(s.key_file.as_deref())?;
    // Bound before indexing (which reads the whole file): a port in use is
    // reported at once.
    let sock = s.net.bind()?;
    let (name, path) = (s.name.clone(), s.file.clone());
    let index = libnet::spawn_blocking(move || index_file(&name, &path, PIECE))
        .map_err(|e| format!("cannot index {}: {e}", s.file.display()))?;
    let signed = SignedIndex::sign(index, &key).map_err(|e| format!("cannot sign: {e}"))?;
    let piece_file = PieceFile::open_complete(&s.file, signed.index())
        .map_err(|e| format!("cannot open {}: {e}", s.file.display()))?;
    let node = s.net.join_with(sock)?;
    let seeder = Seeder::start(node.sock.clone(), s.upload.clone());
    seeder
        .add(&signed, Rc::new(RefCell::new(piece_file)))
        .map_err(|e| e.to_string())?;
    let info = file_info(&signed);
    node.tracker()
        .publish(&info, info.pieces)
        .map_err(|e| format!("the tracker refused {:?}: {e}", info.name))?;
    let i = signed.index();
    say(format!(
        "shared {} ({} bytes, {} pieces, {} s) index {} publisher {} at {}",
        i.name,
        i.size,
        i.pieces(),
        secs(i.duration_ms),
        hex(&signed.id()),
        hex(&signed.publisher()),
        node.public,
    ));
    let mut lost = false;
    let s = loop {
        let wait = if lost { REJOIN } else { HEARTBEAT };
        match sig.recv_timeout(wait) {
            Ok(s) => break s,
            Err(RecvTimeoutError::Timeout) if lost => {
                let back = node
                    .rejoin()
                    .and_then(|()| node.tracker().publish(&info, info.pieces));
                if back.is_ok() {
                    lost = false;
                    say(format!(
                        "vod: back with the tracker at {}",
                        node.tracker_addr
                    ));
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Err(e) = node.heartbeat() {
                    lost = true;
                    say(format!(
                        "vod: lost the tracker ({e}); still serving, trying again every {} s",
                        REJOIN.as_secs()
                    ));
                }
            }
            Err(_) => return Err("the signal thread ended".into()),
        }
    };
    say(format!(
        "vod: stopping on {} ({} bytes served)",
        signal_name(s),
        seeder.sent()
    ));
    node.leave(Some(&info.name));
    seeder.stop();
    Ok(())
}

// ---- list -----------------------------------------------------------------

/// `vod list`: prints the catalog entries whose names start with `prefix`.
pub fn list(tracker: SocketAddr, prefix: &str) -> Result<(), String> {
    let t = TrackerClient::connect(tracker, TRACKER_TIMEOUT)
        .map_err(|e| format!("cannot reach the tracker at {tracker} (--tracker): {e}"))?;
    let entries = t
        .catalog(prefix)
        .map_err(|e| format!("the tracker at {tracker} did not answer: {e}"))?;
    if entries.is_empty() {
        out("(no files)".into());
    }
    for e in entries {
        out(format!(
            "{}  {} bytes  {} s  {} holders ({} complete)",
            e.file.name,
            e.file.size,
            secs(e.file.duration_ms),
            e.holders,
            e.complete
        ));
    }
    let _ = t.bye();
    Ok(())
}

// ---- fetch ----------------------------------------------------------------

/// What `vod fetch` (and `client --file`) does.
pub struct Get {
    /// Where to download and serve from, which tracker.
    pub net: Net,
    /// The file's name in the catalog.
    pub name: String,
    /// Where to write it (`.part` while incomplete; resumed).
    pub out: PathBuf,
    /// Copy it to stdout as it comes.
    pub stdout: bool,
    /// Serve it over HTTP while it comes (and after, until a signal).
    pub http: Option<SocketAddr>,
    /// Start playing (and fetching) here, milliseconds.
    pub start_ms: u64,
    /// Fetch only up to here, milliseconds.
    pub end_ms: Option<u64>,
    /// The upload cap while serving.
    pub upload: SeederConfig,
    /// Accept only an index signed by this key.
    pub publisher: Option<[u8; 32]>,
    /// Keep serving after the download, until a signal.
    pub seed: bool,
}

impl Get {
    /// `--start` and `--end` (seconds) as milliseconds, checked.
    pub fn span(start: f64, end: Option<f64>) -> Result<(u64, Option<u64>), String> {
        let secs_ok = |x: f64| x.is_finite() && x >= 0.0;
        if !secs_ok(start) {
            return Err("--start is a number of seconds, 0 or more".into());
        }
        let end_ms = match end {
            Some(e) if !secs_ok(e) || e <= start => {
                return Err("--end is a number of seconds after --start".into())
            }
            Some(e) => Some((e * 1000.0) as u64),
            None => None,
        };
        Ok(((start * 1000.0) as u64, end_ms))
    }

    /// `--publisher HEX`, checked.
    pub fn publisher(hex: Option<&str>) -> Result<Option<[u8; 32]>, String> {
        hex.map(|h| {
            RoomPublic::from_hex(h)
                .map(|k| k.to_bytes())
                .ok_or_else(|| {
                    "a publisher key is 64 hex digits (--publisher, or --room-key with --file)"
                        .to_string()
                })
        })
        .transpose()
    }
}

/// How often the tracker is asked for holders that appeared meanwhile.
const REFRESH: Duration = Duration::from_secs(5);
/// Largest write to stdout at once.
const STDOUT_CHUNK: usize = 256 * 1024;

/// The catalog entry of `name` and its holders (never us).
fn find(t: &TrackerClient, name: &str) -> Result<(CatalogEntry, Vec<Holder>), String> {
    let entry = t
        .catalog(name)
        .map_err(|e| format!("the tracker did not answer: {e}"))?
        .into_iter()
        .find(|e| e.file.name == name)
        .ok_or_else(|| format!("no file named {name:?} in the catalog (see `vod list`)"))?;
    let holders = t
        .holders(name, MAX_HOLDERS)
        .map_err(|e| format!("the tracker did not answer: {e}"))?;
    if holders.is_empty() {
        return Err(format!("{name:?} has no holders right now"));
    }
    Ok((entry, holders))
}

/// Copies bytes `from..to` of the file to stdout as its pieces come; the
/// writes run on the pool (a slow player parks this coroutine only).
/// Returns the bytes written.
fn to_stdout(play: &Playback, from: u64, to: u64) -> Result<u64, String> {
    let mut at = from;
    while at < to.min(play.size()) {
        let max = usize::try_from(to - at).map_or(STDOUT_CHUNK, |n| n.min(STDOUT_CHUNK));
        let bytes = play.read_at(at, max).map_err(|e| e.to_string())?;
        if bytes.is_empty() {
            break;
        }
        let n = bytes.len() as u64;
        libnet::spawn_blocking(move || {
            let mut o = io::stdout().lock();
            o.write_all(&bytes).and_then(|()| o.flush())
        })
        .map_err(|e| format!("stdout: {e}"))?;
        at += n;
    }
    Ok(at - from)
}

/// What the download's coroutines share.
struct Progress {
    /// Pieces stored during this run.
    stored: Cell<u32>,
    /// The file, once the index is known: how many pieces we hold.
    file: RefCell<Option<Rc<RefCell<PieceFile>>>>,
}

impl Progress {
    fn held(&self) -> u32 {
        self.file
            .borrow()
            .as_ref()
            .map_or(0, |f| f.borrow().count())
    }
}

/// `vod fetch`: downloads the file from its holders, playing it as asked,
/// serving it meanwhile (and after, with `seed` or `http`, until a signal).
pub fn get(g: Get, sig: &Receiver<i32>) -> Result<(), String> {
    let part = part_path(&g.out);
    if g.out.exists() && !part.exists() {
        return Err(format!(
            "{} already exists (remove it to fetch again)",
            g.out.display()
        ));
    }
    let play = Playback::new();
    // Bound first, so a port in use fails before anything else.
    let server = match g.http {
        Some(addr) => {
            let routes = Routes {
                file: Some((g.name.clone(), play.clone() as Rc<dyn FileBody>)),
                ..Routes::default()
            };
            Some(Server::bind(addr, routes).map_err(|e| format!("{e} (--http)"))?)
        }
        None => None,
    };
    let node = g.net.join()?;
    let (entry, holders) = find(&node.tracker(), &g.name)?;
    let info = entry.file;
    say(format!(
        "vod: fetching {} ({} bytes, {} pieces) from {} holders: {}",
        info.name,
        info.size,
        info.pieces,
        holders.len(),
        holders
            .iter()
            .map(|h| h.node.public.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));

    // Ctrl-C while downloading: leave the `.part` for a later resume.
    let fetching = Rc::new(Cell::new(true));
    let (stop_tx, stop_rx) = channel::<i32>(1);
    {
        let (sig, fetching, node) = (sig.clone(), fetching.clone(), node.clone());
        let (name, part) = (info.name.clone(), part.clone());
        drop(libnet::spawn(move || {
            let Ok(s) = sig.recv() else { return };
            if fetching.get() {
                node.leave(Some(&name));
                eprintln!(
                    "vod: interrupted by {}; {} kept for resuming",
                    signal_name(s),
                    part.display()
                );
                std::process::exit(130);
            }
            let _ = stop_tx.send(s);
        }));
    }

    let progress = Rc::new(Progress {
        stored: Cell::new(0),
        file: RefCell::new(None),
    });
    // The tracker: how much we hold, and heartbeats; until `beat_stop` is
    // dropped.
    let (beat_stop, beat_stopped) = channel::<()>(1);
    let beat = {
        let (p, node, info) = (progress.clone(), node.clone(), info.clone());
        libnet::spawn(move || {
            let mut told = 0u32;
            let mut last_beat = libnet::time::now();
            loop {
                let have = p.held().min(info.pieces);
                if have > told {
                    match node.tracker().publish(&info, have) {
                        Ok(_) => told = have,
                        Err(e) => {
                            // The tracker is gone: register again (and
                            // publish again) when it is back.
                            log::warn!("vod: publish failed: {e}");
                            if node.rejoin().is_ok() {
                                say(format!(
                                    "vod: back with the tracker at {}",
                                    node.tracker_addr
                                ));
                                told = 0;
                                continue;
                            }
                        }
                    }
                }
                if last_beat.elapsed() >= HEARTBEAT {
                    last_beat = libnet::time::now();
                    if node.heartbeat().is_err() && node.rejoin().is_ok() {
                        say(format!(
                            "vod: back with the tracker at {}",
                            node.tracker_addr
                        ));
                        told = 0;
                        continue;
                    }
                }
                if let Err(RecvTimeoutError::Disconnected) = beat_stopped.recv_timeout(HAVE_PERIOD)
                {
                    return;
                }
            }
        })
    };

    // Holders: those known now, then new ones as they appear.
    let (cand_tx, cand_rx) = channel::<Candidate>(usize::from(MAX_HOLDERS) * 2);
    {
        let mut known: HashSet<NodeId> = HashSet::new();
        for h in &holders {
            known.insert(h.node.id);
            let _ = cand_tx.try_send(node.candidate(h));
        }
        let (node, fetching, name) = (node.clone(), fetching.clone(), info.name.clone());
        drop(libnet::spawn(move || loop {
            sleep(REFRESH);
            if !fetching.get() {
                return;
            }
            let Ok(hs) = node.tracker().holders(&name, MAX_HOLDERS) else {
                continue;
            };
            for h in hs {
                if h.node.id != node.id() && known.len() < 1024 && known.insert(h.node.id) {
                    log::info!("vod: new holder {}", h.node.public);
                    if cand_tx.send(node.candidate(&h)).is_err() {
                        return;
                    }
                }
            }
        }));
    }

    let seeder = Seeder::start(node.sock.clone(), g.upload.clone());
    let (done_tx, done_rx) = channel::<Result<u64, String>>(1);
    let url = server.as_ref().and_then(Server::file_url);
    let on_open = {
        let (play, start_ms, end_ms, stdout) = (play.clone(), g.start_ms, g.end_ms, g.stdout);
        let (url, p) = (url.clone(), progress.clone());
        Box::new(move |s: &SignedIndex, file: &Rc<RefCell<PieceFile>>| {
            *p.file.borrow_mut() = Some(file.clone());
            play.open(file.clone());
            let from = s.index().offset_at(start_ms);
            let to = end_ms.map_or(s.index().size, |e| s.index().offset_after(e));
            play.playhead().set(from);
            if let Some(server) = server {
                drop(server.start());
                say(format!(
                    "vod: playing at {} (seek with ?t=SECONDS or byte ranges)",
                    url.unwrap_or_default()
                ));
            }
            if stdout {
                drop(libnet::spawn(move || {
                    let _ = done_tx.send(to_stdout(&play, from, to));
                }));
            }
        }) as Box<dyn FnOnce(&SignedIndex, &Rc<RefCell<PieceFile>>)>
    };
    let on_piece = {
        let (p, play) = (progress.clone(), play.clone());
        let name = info.name.clone();
        let mut last_said = libnet::time::now();
        Box::new(move |contiguous: u64, size: u64| {
            p.stored.set(p.stored.get() + 1);
            play.stored();
            if last_said.elapsed() >= Duration::from_secs(1) {
                last_said = libnet::time::now();
                say(format!(
                    "vod: {name}: {} pieces this run, {contiguous} of {size} bytes in order ({:.0}%)",
                    p.stored.get(),
                    contiguous as f64 * 100.0 / size.max(1) as f64
                ));
            }
        }) as Box<dyn FnMut(u64, u64)>
    };
    let config = FetchConfig {
        publisher: g.publisher,
        seeder: Some(seeder.clone()),
        playhead: Some(play.playhead()),
        span_ms: g.end_ms.map(|e| (g.start_ms, e)),
        on_open: Some(on_open),
        progress: Some(on_piece),
        ..FetchConfig::default()
    };
    let r = fetch(cand_rx, info.index, &g.out, config);
    fetching.set(false);
    let (signed, stats) = match r {
        Ok(x) => x,
        Err(e) => {
            node.leave(Some(&info.name));
            let e = e.to_string();
            play.fail(e.clone());
            let mut why = format!(
                "fetching {:?} failed: {}",
                info.name,
                e.strip_prefix("vod: ").unwrap_or(&e)
            );
            if part.exists() {
                why.push_str(&format!("; {} kept for resuming", part.display()));
            }
            return Err(why);
        }
    };
    let per = stats
        .holders
        .iter()
        .zip(&stats.bytes)
        .map(|(a, b)| format!("{a} {b} bytes"))
        .collect::<Vec<_>>()
        .join(", ");
    let held = progress.held();
    let what = if held == info.pieces {
        format!("{} bytes", signed.index().size)
    } else {
        format!("{held} of {} pieces, to {}", info.pieces, part.display())
    };
    say(format!(
        "fetched {} ({what}) in {:.3} s (first byte after {}; {} resumed pieces, {} bad pieces): {per}",
        info.name,
        stats.total.as_secs_f64(),
        stats
            .first_byte
            .map_or_else(|| "-".to_string(), |d| format!("{:.3} s", d.as_secs_f64())),
        stats.resumed,
        stats.bad_pieces,
    ));
    // The player may still be reading: wait for the copy to end, or for
    // Ctrl-C (which then also skips seeding).
    let mut stopped = None;
    if g.stdout {
        let r = loop {
            match done_rx.recv_timeout(Duration::from_millis(200)) {
                Ok(r) => break Some(r),
                Err(RecvTimeoutError::Timeout) => {
                    if let Ok(Some(s)) = stop_rx.try_recv() {
                        stopped = Some(s);
                        break None;
                    }
                }
                Err(_) => break Some(Err("the stdout copy ended early".into())),
            }
        };
        match r {
            Some(Ok(n)) => log::info!("vod: {n} bytes to stdout"),
            Some(Err(e)) => say(format!("vod: warning: stopped writing to stdout: {e}")),
            None => say("vod: interrupted while writing to stdout".into()),
        }
    }
    if (g.seed || url.is_some()) && stopped.is_none() {
        // Tell the tracker at once what we hold.
        let _ = node.tracker().publish(&info, held);
        match &url {
            Some(u) => say(format!("vod: serving {u} and seeding until Ctrl-C")),
            None => say(format!("vod: seeding {} until Ctrl-C", info.name)),
        }
        let s = stop_rx.recv().map_err(|_| "the signal thread ended")?;
        say(format!(
            "vod: stopping on {} ({} bytes served)",
            signal_name(s),
            seeder.sent()
        ));
    }
    drop(beat_stop);
    drop(beat.join());
    node.leave(Some(&info.name));
    seeder.stop();
    Ok(())
}
