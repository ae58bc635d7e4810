//! `client`: a viewer. Joins a room, pulls the stream from peers first and
//! from the edge when a deadline is near (the scheduler of
//! `p2p_apps::sched`), shares what it has with other peers, and hands the
//! video to a player: a file, stdout, and/or local HTTP.
//!
//! ```text
//! client --tracker HOST:7000 --room N [--out FILE] [--stdout]
//!        [--http 127.0.0.1:8080] [--json] [--duration SECS]
//! client ... --stdout | ffplay -        mpv http://127.0.0.1:8080/live.ts
//! ```
//!
//! Everything runs on one libnet loop, in coroutines: the scheduler's
//! driver, one coroutine per fetch, one per supplier polling its buffer
//! map, the peer server for whoever pulls from us, the tracker's
//! notifications and punches. FFmpeg's remuxer and the outputs run on
//! plain threads.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Parser;
use libnet::p2p::client::{whoami_rudp, Hello, ProbeRouter, TrackerClient};
use libnet::p2p::connect::{Options, Puncher};
use libnet::p2p::peer::{ClientConfig, FetchResult, PeerLink, PeerServer, ServerConfig};
use libnet::p2p::store::{FragmentStore, SharedStore, StoreConfig, StoredFragment};
use libnet::p2p::wire::{ErrorCode, Message};
use libnet::p2p::{relay, rudp_config, Channel, NatType, NodeId, NodeInfo, Role, RoomId, Strategy};
use libnet::rand::random_u64;
use libnet::rudp::RudpSocket;
use libnet::sync::{channel, Receiver, RecvTimeoutError, Semaphore, Sender};
use libnet::time::sleep;
use p2p_apps::http::{Hub, Routes, Server};
use p2p_apps::media::frag::Depacketizer;
use p2p_apps::media::output::Remuxer;
use p2p_apps::media::ts::{Piece, Splitter};
use p2p_apps::media::{Kind, StreamInfo};
use p2p_apps::node::{now_us, say, signal_name, start, TRACKER_TIMEOUT};
use p2p_apps::sched::{Action, Config as SchedConfig, Scheduler, SupplierId};
use p2p_apps::signed::{RoomPublic, META_CODEC, META_PUBKEY, SIG_LEN};
use p2p_apps::vod::program;
use p2p_apps::{concrete_bind, init_logging, resolve, tracker_addrs};

/// A viewer of a p2p-live broadcast.
#[derive(Parser, Debug)]
#[command(name = "client", version)]
struct Args {
    /// The tracker's TCP address.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7000")]
    tracker: String,
    /// The tracker's UDP (Whoami) address [default: the tracker's host, port 3478].
    #[arg(long, value_name = "HOST:PORT")]
    tracker_udp: Option<String>,
    /// The room to watch.
    #[arg(long, value_name = "N", required_unless_present = "file")]
    room: Option<RoomId>,
    /// Fetch and play this on-demand file instead of watching a room (as
    /// `vod fetch NAME`): needs --out; --stdout and --http play it while it
    /// downloads (the HTTP URL is http://ADDR/NAME); --room-key is then the
    /// publisher's key the file's index must be signed with.
    #[arg(long, value_name = "NAME", conflicts_with = "room", requires = "out")]
    file: Option<String>,
    /// Record the stream (MPEG-TS) to this file.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Write the stream (MPEG-TS) to stdout, for `| ffplay -` or `| mpv -`.
    #[arg(long)]
    stdout: bool,
    /// Serve the stream at http://ADDR/live.ts (and /status.json).
    #[arg(long, value_name = "IP:PORT")]
    http: Option<String>,
    /// Local address of the UDP socket; an unspecified IP stands for the
    /// interface that routes to the tracker.
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:0")]
    bind: SocketAddr,
    /// Peers to pull from at most (0: the edge only).
    #[arg(long, value_name = "N", default_value_t = 8, conflicts_with = "file",
          value_parser = clap::value_parser!(u64).range(0..=64))]
    peers: u64,
    /// How far behind the live edge playback runs, in milliseconds: the
    /// time the swarm has to bring each fragment.
    #[arg(long, value_name = "MS", default_value_t = 1500, conflicts_with = "file",
          value_parser = clap::value_parser!(u64).range(200..=30_000))]
    delay_ms: u64,
    /// The room's public key (64 hex digits), if known: refuses an edge
    /// that announces another.
    #[arg(long, value_name = "HEX")]
    room_key: Option<String>,
    /// Print the status as a JSON line every second instead of a text line.
    #[arg(long, conflicts_with = "file")]
    json: bool,
    /// No status lines.
    #[arg(long, conflicts_with = "json")]
    quiet: bool,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS", conflicts_with = "file")]
    duration: Option<u64>,
    /// Write the final figures as JSON to this file at exit.
    #[arg(long, value_name = "FILE", conflicts_with = "file")]
    stats_file: Option<PathBuf>,
    /// Testing only: corrupt every fragment served to other peers.
    #[arg(long, hide = true)]
    evil_tamper: bool,
}

/// The edge's supplier id (peers get their node ids).
const EDGE: SupplierId = 0;

/// How often each supplier's buffer map is asked for.
const MAP_EVERY: Duration = Duration::from_millis(250);

/// How often we look for more peers.
const DISCOVER_EVERY: Duration = Duration::from_secs(3);

/// Tracker heartbeat and NAT keepalive.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// A fetch gives up after this.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// The bitrate is averaged over this.
const RATE_WINDOW: Duration = Duration::from_secs(2);

/// Wait between attempts to reach a lost edge.
const EDGE_RETRY: Duration = Duration::from_secs(2);

/// With nothing new from anyone for this long, the broadcast has ended.
const ENDED_AFTER: Duration = Duration::from_secs(20);

/// Seconds of stream kept to share.
const KEEP: Duration = Duration::from_secs(10);

/// Latency samples kept for the p95.
const LATENCY_SAMPLES: usize = 2000;

/// Punch jobs queued.
const MAX_JOBS: usize = 32;

/// Punches run at once.
const MAX_PUNCHES: usize = 8;

/// Nodes we will not try again (they failed or lied), at most.
const MAX_BANNED: usize = 1024;

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging("warn");
    if let Some(name) = args.file.clone() {
        return start("client", file_setup(args, name), program::get);
    }
    // Time to first frame counts from here: what a user waits for.
    let started = Instant::now();
    start("client", Setup::new(args), move |setup, sig| {
        run(setup, sig, started)
    })
}

/// `client --file NAME`: the flags as `vod fetch` takes them.
fn file_setup(a: Args, name: String) -> Result<program::Get, String> {
    let http = a
        .http
        .as_deref()
        .map(|h| resolve("--http", h))
        .transpose()?;
    Ok(program::Get {
        net: program::Net::new(&a.tracker, a.tracker_udp.as_deref(), a.bind)?,
        name,
        out: a.out.ok_or("--file needs --out FILE")?,
        stdout: a.stdout,
        http,
        start_ms: 0,
        end_ms: None,
        upload: program::seeder_config(0),
        // The publisher's key, when given: the index must be signed by it.
        publisher: program::Get::publisher(a.room_key.as_deref())?,
        seed: false,
    })
}

/// The flags, resolved before the runtime starts.
struct Setup {
    a: Args,
    tracker: SocketAddr,
    tracker_udp: SocketAddr,
    http: Option<SocketAddr>,
    bind: SocketAddr,
    room_key: Option<RoomPublic>,
}

impl Setup {
    fn new(a: Args) -> Result<Setup, String> {
        let (tracker, tracker_udp) = tracker_addrs(&a.tracker, a.tracker_udp.as_deref())?;
        let http = a
            .http
            .as_deref()
            .map(|h| resolve("--http", h))
            .transpose()?;
        let room_key = match &a.room_key {
            Some(k) => Some(RoomPublic::from_hex(k).ok_or("--room-key: expected 64 hex digits")?),
            None => None,
        };
        let bind = concrete_bind(a.bind, tracker);
        if a.out.is_none() && !a.stdout && http.is_none() {
            log::warn!(
                "client: no output given (--out, --stdout, --http); the stream is only shared"
            );
        }
        Ok(Setup {
            tracker,
            tracker_udp,
            http,
            bind,
            room_key,
            a,
        })
    }
}

/// One supplier: the edge or a peer.
struct Supplier {
    link: Rc<PeerLink>,
    relayed: bool,
}

/// Where playback stands on one channel.
struct Lane {
    channel: Channel,
    kind: Kind,
    /// The next id to hand to the player.
    next: u64,
    /// A fragment's due time, and how long each fragment lasts: at first
    /// a guess from the codec parameters, then from the source's
    /// timestamps (see [`Lane::observe`]).
    anchor: (u64, Instant),
    per_fragment: Duration,
    /// How long after the source made a fragment it is due here: fixed by
    /// the first fragment that arrives.
    offset: Option<Duration>,
    /// Recent (id, source timestamp) pairs, oldest first, for the rate.
    seen: VecDeque<(u64, u64)>,
    depack: Depacketizer,
    /// Since when the player has been waiting for `next` past its deadline.
    stalled_since: Option<Instant>,
}

/// Timestamps kept per lane for the fragment rate.
const RATE_SAMPLES: usize = 64;

impl Lane {
    fn deadline(&self, id: u64) -> Instant {
        let (aid, at) = self.anchor;
        if id >= aid {
            let n = u32::try_from(id - aid).unwrap_or(u32::MAX);
            at + self.per_fragment * n
        } else {
            let n = u32::try_from(aid - id).unwrap_or(u32::MAX);
            at.checked_sub(self.per_fragment * n).unwrap_or(at)
        }
    }

    /// A fragment arrived, made at `ts` (the source's clock, µs) which is
    /// `made` here. The due times follow the source's clock from then on:
    /// a rate guessed from the codec drifts (audio fragments hold whole
    /// AAC frames, so "100 ms" is 106.7 ms), and a drift eats the buffer.
    fn observe(&mut self, id: u64, ts: u64, made: Instant) {
        if self.offset.is_none() {
            self.offset = Some(self.deadline(id).saturating_duration_since(made));
        }
        if self.seen.back().is_some_and(|&(last, _)| id <= last) {
            return;
        }
        self.seen.push_back((id, ts));
        while self.seen.len() > RATE_SAMPLES {
            self.seen.pop_front();
        }
        if let (Some(&(i0, t0)), Some(&(i1, t1))) = (self.seen.front(), self.seen.back()) {
            if i1 > i0 + 4 && t1 > t0 {
                let pf = (t1 - t0) / (i1 - i0);
                self.per_fragment = Duration::from_micros(pf)
                    .clamp(Duration::from_millis(5), Duration::from_secs(1));
            }
        }
        let offset = self.offset.unwrap_or_default();
        self.anchor = (id, made + offset);
    }
}

/// Figures for the status line and the stats file.
#[derive(Clone, Copy, Default)]
struct Counts {
    fragments: u64,
    bytes: u64,
    bad_fragments: u64,
    skipped: u64,
    stalls: u64,
    stall_ms: u64,
    peers_dropped: u64,
    punched: u64,
    relayed: u64,
    punch_failed: u64,
    first_frame_ms: Option<u64>,
    output_dropped: u64,
}

struct App {
    me: NodeId,
    room: RoomId,
    started: Instant,
    /// When we joined (the source's clock): fragments made before are old
    /// by design and left out of the latency figures.
    joined_us: u64,
    setup: Setup,
    sock: Rc<RudpSocket>,
    tracker: Rc<TrackerClient>,
    edge_addr: SocketAddr,
    key: RoomPublic,
    store: SharedStore,
    server: PeerServer,
    sched: RefCell<Scheduler>,
    suppliers: RefCell<HashMap<SupplierId, Supplier>>,
    lanes: RefCell<[Lane; 2]>,
    remux: RefCell<Option<Remuxer>>,
    counts: Cell<Counts>,
    latencies: RefCell<VecDeque<u64>>,
    /// Bytes received in the last [`RATE_WINDOW`], for the bitrate.
    recent: RefCell<VecDeque<(Instant, usize)>>,
    last_fragment: Cell<Option<Instant>>,
    kick: Sender<()>,
    jobs: Sender<Job>,
    /// Peers being connected, connected or given up on.
    tried: RefCell<HashSet<NodeId>>,
    banned: RefCell<HashSet<NodeId>>,
    nat: NatType,
    stop: Cell<bool>,
    /// Punches running: one permit each, at most [`MAX_PUNCHES`].
    punching: Semaphore,
    /// Introductions and punches through the tracker (each punch gets its
    /// own probes from `router`, so several run at once).
    puncher: Puncher,
    router: Rc<ProbeRouter>,
    /// The store the peer server serves: `store` itself, or with
    /// --evil-tamper one holding altered copies.
    served: SharedStore,
}

enum Job {
    Connect(NodeInfo),
    Accept { peer: NodeInfo, token: u64 },
}

impl App {
    fn bump(&self, f: impl FnOnce(&mut Counts)) {
        let mut c = self.counts.get();
        f(&mut c);
        self.counts.set(c);
    }

    fn kick(&self) {
        let _ = self.kick.try_send(());
    }
}

fn run(setup: Setup, sig: &Receiver<i32>, started: Instant) -> Result<(), String> {
    let room = setup.a.room.ok_or("--room is needed")?;
    let sock = RudpSocket::bind(setup.bind, rudp_config())
        .map_err(|e| format!("cannot bind {} (--bind): {e}", setup.bind))?;
    let local = sock.local_addr().map_err(|e| e.to_string())?;
    let tracker = TrackerClient::connect(setup.tracker, TRACKER_TIMEOUT).map_err(|e| {
        format!(
            "cannot reach the tracker at {} (--tracker): {e}",
            setup.tracker
        )
    })?;
    let public = whoami_rudp(&sock, setup.tracker_udp, Duration::from_secs(3)).ok();
    let me = random_u64();
    // Full cone or better is all punching needs to know; the tracker's
    // answer from another port would tell more, at a second's cost.
    let nat = match public {
        Some(p) if p == local => NatType::Open,
        Some(_) => NatType::Unknown,
        None => NatType::Unknown,
    };
    tracker
        .hello(&Hello {
            node: me,
            role: Role::Peer,
            room,
            local,
            public,
            workload: 0,
            nat,
            key: Vec::new(),
        })
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => format!("unknown room {room} (nobody broadcasts it)"),
            _ => format!("the tracker refused to let us join room {room}: {e}"),
        })?;
    let edges = tracker
        .nodes(room, Strategy::Edges, 4)
        .map_err(|e| format!("cannot ask the tracker for the room's edge: {e}"))?;
    let edge = edges
        .first()
        .ok_or_else(|| format!("room {room} has no edge (is it live?)"))?
        .clone();
    let edge_link = PeerLink::connect(&sock, edge.public, client_config())
        .map_err(|e| format!("cannot connect to the edge at {}: {e}", edge.public))?;
    let key = edge_link
        .meta(room, META_PUBKEY, Duration::from_secs(5))
        .map_err(|e| format!("the edge at {} did not answer: {e}", edge.public))?
        .and_then(|k| RoomPublic::from_bytes(&k))
        .ok_or_else(|| format!("the edge has no key for room {room} (is it live?)"))?;
    if let Some(want) = setup.room_key {
        if want != key {
            return Err(format!(
                "the edge announces key {} for room {room}, not the --room-key given",
                key.to_hex()
            ));
        }
    }
    let codec = edge_link
        .meta(room, META_CODEC, Duration::from_secs(5))
        .map_err(|e| format!("the edge did not answer: {e}"))?
        .ok_or_else(|| format!("the edge has no codec parameters for room {room} yet"))?;
    let info = key
        .verify_meta(room, META_CODEC, &codec)
        .map_err(|e| format!("codec parameters from the edge: {e}"))
        .and_then(|v| StreamInfo::decode(v).map_err(|e| format!("codec parameters: {e}")))?;

    let store = FragmentStore::shared(StoreConfig {
        max_fragments: 4096,
        max_bytes: 32 << 20,
        max_rooms: 1,
        max_span: u64::try_from(KEEP.as_micros()).unwrap_or(u64::MAX),
        ..StoreConfig::default()
    });
    // What others get from us: our store, or with --evil-tamper (testing)
    // a second one holding altered copies.
    let served = if setup.a.evil_tamper {
        FragmentStore::shared(store.borrow().config().clone())
    } else {
        store.clone()
    };
    let server = PeerServer::new(served.clone(), ServerConfig::default());
    let (hub_tx, hub_rx) = channel::<Piece>(256);
    let hub = Hub::aligned(4 << 20);
    let remux = start_output(&setup, &info, hub_tx)?;
    let sock = Rc::new(sock);
    let (kick, kicked) = channel::<()>(1);
    let (jobs, job_rx) = channel::<Job>(MAX_JOBS);
    let now = Instant::now();
    let delay = Duration::from_millis(setup.a.delay_ms);
    let video_pf = info
        .video
        .as_ref()
        .map(|v| frame_time(v.frame_rate))
        .unwrap_or(Duration::from_millis(40));
    let lane = |channel, kind, per_fragment| Lane {
        channel,
        kind,
        next: 0,
        anchor: (0, now + delay),
        per_fragment,
        offset: None,
        seen: VecDeque::new(),
        depack: Depacketizer::new(),
        stalled_since: None,
    };
    let tracker = Rc::new(tracker);
    let router = Rc::new(ProbeRouter::new(sock.clone()));
    let puncher = Puncher::new(tracker.clone(), router.clone(), me, Options::default());
    let app = Rc::new(App {
        me,
        room,
        started,
        joined_us: now_us(),
        sock: sock.clone(),
        tracker,
        edge_addr: edge.public,
        key,
        store,
        server,
        sched: RefCell::new(Scheduler::new(SchedConfig::default(), me)),
        suppliers: RefCell::new(HashMap::new()),
        lanes: RefCell::new([
            lane(Channel::Video, Kind::Video, video_pf),
            lane(Channel::Audio, Kind::Audio, p2p_apps::node::AUDIO_GROUP),
        ]),
        remux: RefCell::new(Some(remux)),
        counts: Cell::new(Counts::default()),
        latencies: RefCell::new(VecDeque::new()),
        recent: RefCell::new(VecDeque::new()),
        last_fragment: Cell::new(None),
        kick,
        jobs,
        tried: RefCell::new(HashSet::new()),
        banned: RefCell::new(HashSet::new()),
        nat,
        stop: Cell::new(false),
        served,
        punching: Semaphore::new(MAX_PUNCHES),
        puncher,
        router,
        setup,
    });
    join_at_live(&app, &edge_link)?;
    app.sched.borrow_mut().add_supplier(EDGE, true);
    app.suppliers.borrow_mut().insert(
        EDGE,
        Supplier {
            link: Rc::new(edge_link),
            relayed: false,
        },
    );
    let http = match app.setup.http {
        Some(at) => {
            let s = app.clone();
            let routes = Routes {
                metrics: None,
                status: Some(Rc::new(move || status_json(&s))),
                live: Some(hub.clone()),
                ..Routes::default()
            };
            let server = Server::bind(at, routes).map_err(|e| format!("{e} (--http)"))?;
            let bound = server.local_addr();
            Some((server.start(), bound))
        }
        None => None,
    };
    say(format!(
        "client: room {room} via edge {}, key {}, node {me:016x}{}",
        edge.public,
        key.to_hex(),
        http.as_ref().map_or_else(String::new, |(_, a)| format!(
            ", playing at http://{a}/live.ts"
        ))
    ));
    {
        let h = hub.clone();
        drop(libnet::spawn(move || {
            while let Ok(p) = hub_rx.recv() {
                match &p.join {
                    Some(header) => h.push_join_point(header, &p.bytes),
                    None => h.push(&p.bytes),
                }
            }
            h.close();
        }));
    }
    spawn(&app, accept);
    spawn(&app, |a| poll_map(a, EDGE));
    spawn(&app, dispatch);
    spawn(&app, move |a| work(a, &job_rx));
    spawn(&app, |a| a.router.route());
    spawn(&app, discover);
    spawn(&app, heartbeat);
    spawn(&app, report);
    spawn(&app, move |a| drive(a, &kicked));
    // Wait for a signal, the end of --duration, or the edge gone for good.
    let why = wait_end(&app, sig);
    app.stop.set(true);
    app.punching.close();
    let _ = app.tracker.bye();
    let remux = app.remux.borrow_mut().take();
    let stats = match remux {
        Some(r) => libnet::spawn_blocking(move || r.finish()).map_err(|e| e.to_string()),
        None => Err("no output".into()),
    };
    if let Err(e) = &stats {
        log::warn!("client: closing the output: {e}");
    }
    let summary = status_json(&app);
    if let Some(path) = &app.setup.a.stats_file {
        let (p, s) = (path.clone(), summary.clone());
        let written = libnet::spawn_blocking(move || std::fs::write(&p, s + "\n"));
        if let Err(e) = written {
            log::warn!("client: cannot write {}: {e}", path.display());
        }
    }
    say(format!("client: stopping on {why}: {}", status_text(&app)));
    Ok(())
}

fn spawn(app: &Rc<App>, f: impl FnOnce(&Rc<App>) + 'static) {
    let a = app.clone();
    drop(libnet::spawn(move || f(&a)));
}

fn client_config() -> ClientConfig {
    ClientConfig {
        request_timeout: FETCH_TIMEOUT,
        ..ClientConfig::default()
    }
}

fn frame_time((num, den): (i32, i32)) -> Duration {
    if num <= 0 || den <= 0 {
        return Duration::from_millis(40);
    }
    Duration::from_secs_f64(f64::from(den) / f64::from(num))
        .clamp(Duration::from_millis(5), Duration::from_millis(500))
}

/// Starts the remuxer whose MPEG-TS goes to the file, stdout and the HTTP
/// hub (the latter through `hub`, to the loop).
fn start_output(setup: &Setup, info: &StreamInfo, hub: Sender<Piece>) -> Result<Remuxer, String> {
    let mut file = match &setup.a.out {
        Some(p) => {
            Some(BufWriter::new(File::create(p).map_err(|e| {
                format!("cannot create {} (--out): {e}", p.display())
            })?))
        }
        None => None,
    };
    let mut stdout = setup.a.stdout.then(io::stdout);
    let http = setup.http.is_some();
    // Players on HTTP join at a key frame, with the tables first.
    let mut splitter = Splitter::new();
    let sink = Box::new(move |b: &[u8]| {
        if let Some(f) = &mut file {
            if let Err(e) = f.write_all(b).and_then(|()| f.flush()) {
                log::error!("client: writing the recording failed: {e}");
                file = None;
            }
        }
        if let Some(o) = &mut stdout {
            if o.write_all(b).and_then(|()| o.flush()).is_err() {
                // The player went away; the rest goes on.
                stdout = None;
            }
        }
        if http {
            for piece in splitter.push(b) {
                // A plain thread: blocks this thread only, and only while
                // the loop is behind by the whole queue.
                let _ = hub.send(piece);
            }
        }
        file.is_some() || stdout.is_some() || http
    });
    Remuxer::new(info, sink).map_err(|e| format!("cannot start the output: {e}"))
}

/// Picks where playback starts: about `delay` behind the newest fragment
/// the edge holds, so the first frames come at once and later ones have
/// `delay` to arrive.
fn join_at_live(app: &Rc<App>, edge: &PeerLink) -> Result<(), String> {
    let now = Instant::now();
    let delay = Duration::from_millis(app.setup.a.delay_ms);
    let mut lanes = app.lanes.borrow_mut();
    let mut sched = app.sched.borrow_mut();
    for lane in lanes.iter_mut() {
        let range = edge
            .init(app.room, lane.channel)
            .map_err(|e| format!("the edge did not answer: {e}"))?;
        let (first, last) = match range {
            Some((f, l)) if f <= l => (f, l),
            // Nothing yet on this channel: start with the first to come.
            _ => (0, 0),
        };
        let back =
            u64::try_from(delay.as_nanos() / lane.per_fragment.as_nanos().max(1)).unwrap_or(0);
        let start = last.saturating_sub(back).max(first);
        lane.next = start;
        // The oldest fragment is due shortly; newer ones as they were made.
        lane.anchor = (start, now + Duration::from_millis(300));
        sched.set_playhead(lane.channel, start, now);
        sched.set_clock(lane.channel, start, lane.anchor.1, lane.per_fragment);
    }
    Ok(())
}

/// Runs the scheduler: asks for fragments, hands them to the player.
fn drive(app: &Rc<App>, kicked: &Receiver<()>) {
    while !app.stop.get() {
        let now = Instant::now();
        play(app, now);
        let actions = app.sched.borrow_mut().poll(now);
        for a in actions {
            match a {
                Action::Fetch {
                    supplier,
                    ch,
                    ids,
                    priority,
                } => {
                    let link = app
                        .suppliers
                        .borrow()
                        .get(&supplier)
                        .map(|s| s.link.clone());
                    match link {
                        Some(link) => {
                            let a = app.clone();
                            drop(libnet::spawn(move || {
                                fetch(&a, supplier, &link, ch, &ids, priority)
                            }));
                        }
                        None => {
                            let mut s = app.sched.borrow_mut();
                            for id in ids {
                                s.on_failed(supplier, ch, id, now);
                            }
                        }
                    }
                }
                Action::Cancel { supplier, ch, ids } => {
                    let link = app
                        .suppliers
                        .borrow()
                        .get(&supplier)
                        .map(|s| s.link.clone());
                    if let Some(link) = link {
                        let _ = link.channel(ch).cancel(app.room, ch, &ids);
                    }
                }
            }
        }
        let wake = app
            .sched
            .borrow()
            .next_wakeup(now)
            .map_or(Duration::from_millis(50), |t| {
                t.saturating_duration_since(now)
            })
            .min(Duration::from_millis(50));
        match kicked.recv_timeout(wake) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// One fetch from one supplier; results go to the scheduler, fragments to
/// the store (checked first).
fn fetch(app: &Rc<App>, s: SupplierId, link: &PeerLink, ch: Channel, ids: &[u64], priority: u8) {
    let results = link.fetch(app.room, ch, ids, priority, FETCH_TIMEOUT);
    let now = Instant::now();
    match results {
        Ok(results) => {
            for r in results {
                match r {
                    FetchResult::Got {
                        id,
                        timestamp,
                        data,
                    } => {
                        if app
                            .key
                            .verify_fragment(app.room, ch, id, timestamp, &data)
                            .is_err()
                        {
                            app.bump(|c| c.bad_fragments += 1);
                            say(format!(
                                "client: supplier {} sent a fragment that fails its signature; dropping it",
                                link.remote()
                            ));
                            drop_supplier(app, s, true);
                            break;
                        }
                        received(app, s, ch, id, timestamp, &data, now);
                    }
                    FetchResult::Missing { id } => {
                        app.sched.borrow_mut().on_missing(s, ch, id, now)
                    }
                    FetchResult::TimedOut { id } => {
                        app.sched.borrow_mut().on_failed(s, ch, id, now)
                    }
                    // The scheduler withdrew it itself.
                    FetchResult::Cancelled { .. } => {}
                }
            }
        }
        Err(e) => {
            log::debug!("client: fetch from {} failed: {e}", link.remote());
            {
                let mut sched = app.sched.borrow_mut();
                for &id in ids {
                    sched.on_failed(s, ch, id, now);
                }
            }
            if link.check().is_err() {
                drop_supplier(app, s, false);
            }
        }
    }
    app.kick();
}

/// A verified fragment: keep it (to play and to share) and count it.
fn received(
    app: &App,
    s: SupplierId,
    ch: Channel,
    id: u64,
    timestamp: u64,
    data: &[u8],
    now: Instant,
) {
    let stored = app
        .store
        .borrow_mut()
        .insert(app.room, ch, id, timestamp, data);
    if let Err(e) = stored {
        log::warn!("client: fragment {id} not kept: {e}");
    }
    if app.setup.a.evil_tamper {
        // Testing: what we serve is altered; what we play is not.
        let mut t = data.to_vec();
        if let Some(b) = t.first_mut() {
            *b ^= 0x55;
        }
        let _ = app
            .served
            .borrow_mut()
            .insert(app.room, ch, id, timestamp, &t);
    }
    app.sched
        .borrow_mut()
        .on_fragment(s, ch, id, data.len(), now);
    // When the source made it, on our clock: now minus its age. (Across
    // machines the clocks' offset is in the age; it cancels out, as only
    // differences between fragments count after the first.)
    let age = Duration::from_micros(now_us().saturating_sub(timestamp));
    let made = now.checked_sub(age).unwrap_or(now);
    if let Some(lane) = app.lanes.borrow_mut().iter_mut().find(|l| l.channel == ch) {
        lane.observe(id, timestamp, made);
    }
    app.bump(|c| {
        c.fragments += 1;
        c.bytes += data.len() as u64;
    });
    app.last_fragment.set(Some(now));
    let mut recent = app.recent.borrow_mut();
    recent.push_back((now, data.len()));
    while recent.front().is_some_and(|(t, _)| now - *t > RATE_WINDOW) {
        recent.pop_front();
    }
    drop(recent);
    if timestamp < app.joined_us {
        return;
    }
    let lat = now_us().saturating_sub(timestamp);
    let mut l = app.latencies.borrow_mut();
    if l.len() >= LATENCY_SAMPLES {
        l.pop_front();
    }
    l.push_back(lat);
}

/// Hands every fragment that is next in line to the player; gives up on
/// one whose deadline has passed when a later one is there.
fn play(app: &App, now: Instant) {
    let mut lanes = app.lanes.borrow_mut();
    for lane in lanes.iter_mut() {
        loop {
            let frag = app.own_copy(lane.channel, lane.next);
            match frag {
                Some(frag) => {
                    let data = frag.data();
                    if let Some(t) = lane.stalled_since.take() {
                        let ms = u64::try_from((now - t).as_millis()).unwrap_or(u64::MAX);
                        app.bump(|c| c.stall_ms += ms);
                    }
                    let payload = &data[..data.len().saturating_sub(SIG_LEN)];
                    match lane.depack.push(lane.kind, lane.next, payload) {
                        Ok(packets) => {
                            let remux = app.remux.borrow();
                            if let Some(r) = remux.as_ref() {
                                for p in packets {
                                    // The player shows nothing before a key frame.
                                    if p.kind == Kind::Video
                                        && p.key
                                        && app.counts.get().first_frame_ms.is_none()
                                    {
                                        let ms = u64::try_from(app.started.elapsed().as_millis())
                                            .unwrap_or(0);
                                        app.bump(|c| c.first_frame_ms = Some(ms));
                                    }
                                    if !r.push(p) {
                                        app.bump(|c| c.output_dropped += 1);
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            log::warn!("client: fragment {} of {:?}: {e}", lane.next, lane.kind)
                        }
                    }
                    lane.next += 1;
                }
                None => {
                    let due = lane.deadline(lane.next);
                    if now < due {
                        break;
                    }
                    if lane.stalled_since.is_none() {
                        lane.stalled_since = Some(now);
                        app.bump(|c| c.stalls += 1);
                    }
                    // Skip it if something later is already here (the
                    // stream goes on without it); else wait.
                    let later = app.newest_held(lane.channel).is_some_and(|n| n > lane.next);
                    if later && now > due + lane.per_fragment * 2 {
                        app.bump(|c| c.skipped += 1);
                        lane.next += 1;
                        continue;
                    }
                    break;
                }
            }
        }
        let mut sched = app.sched.borrow_mut();
        sched.set_playhead(lane.channel, lane.next, now);
        sched.set_clock(
            lane.channel,
            lane.next,
            lane.deadline(lane.next),
            lane.per_fragment,
        );
    }
}

impl App {
    /// Our verified copy of a fragment (signed bytes; a cheap clone).
    fn own_copy(&self, ch: Channel, id: u64) -> Option<StoredFragment> {
        self.store.borrow().get(self.room, ch, id)
    }

    fn newest_held(&self, ch: Channel) -> Option<u64> {
        self.store.borrow().range(self.room, ch).map(|(_, l)| l)
    }
}

/// Forgets a supplier; `lied` bans it for good.
fn drop_supplier(app: &App, s: SupplierId, lied: bool) {
    if s == EDGE && !lied {
        // The edge is reconnected by the poller.
        return;
    }
    app.sched.borrow_mut().remove_supplier(s);
    let gone = app.suppliers.borrow_mut().remove(&s);
    if gone.is_some() {
        app.bump(|c| c.peers_dropped += 1);
    }
    if lied {
        let mut b = app.banned.borrow_mut();
        if b.len() < MAX_BANNED {
            b.insert(s);
        }
    } else {
        app.tried.borrow_mut().remove(&s);
    }
}

/// Asks a supplier for its buffer map (a bitmap of what it holds, holes
/// included) every [`MAP_EVERY`] while it lasts.
fn poll_map(app: &Rc<App>, s: SupplierId) {
    while !app.stop.get() {
        let link = app.suppliers.borrow().get(&s).map(|x| x.link.clone());
        let Some(link) = link else { return };
        for ch in [Channel::Video, Channel::Audio] {
            match link.map(app.room, ch) {
                Ok((first, bits)) => {
                    app.sched
                        .borrow_mut()
                        .set_map(s, ch, first, &bits, Instant::now());
                }
                Err(e) => {
                    log::debug!("client: supplier {} gone: {e}", link.remote());
                    if s == EDGE {
                        reconnect_edge(app, &e);
                        break;
                    }
                    drop_supplier(app, s, false);
                    return;
                }
            }
        }
        app.kick();
        sleep(MAP_EVERY);
    }
}

/// The edge link failed: peers carry on meanwhile; try again every
/// [`EDGE_RETRY`] until it answers.
fn reconnect_edge(app: &Rc<App>, why: &io::Error) {
    say(format!(
        "client: lost the edge at {} ({why}); reconnecting",
        app.edge_addr
    ));
    app.sched.borrow_mut().remove_supplier(EDGE);
    app.suppliers.borrow_mut().remove(&EDGE);
    while !app.stop.get() {
        sleep(EDGE_RETRY);
        let link = PeerLink::connect(&app.sock, app.edge_addr, client_config())
            .and_then(|l| l.init(app.room, Channel::Video).map(|_| l));
        match link {
            Ok(link) => {
                app.suppliers.borrow_mut().insert(
                    EDGE,
                    Supplier {
                        link: Rc::new(link),
                        relayed: false,
                    },
                );
                app.sched.borrow_mut().add_supplier(EDGE, true);
                say(format!("client: edge {} is back", app.edge_addr));
                return;
            }
            Err(e) => log::debug!("client: edge still unreachable: {e}"),
        }
    }
}

/// Serves whoever pulls from us; relay halves are not ours to take.
fn accept(app: &Rc<App>) {
    loop {
        let (conn, from) = match app.sock.accept() {
            Ok(c) => c,
            Err(e) => {
                log::debug!("client: accept ended: {e}");
                return;
            }
        };
        let server = app.server.clone();
        drop(libnet::spawn(move || {
            conn.set_read_timeout(Some(Duration::from_secs(10)));
            match conn.recv() {
                Ok(Some(first)) => {
                    if let Ok(Message::RelayOpen { .. }) = Message::decode_frame(&first) {
                        if let Ok(f) =
                            Message::error(ErrorCode::Unsupported, "not a relay").to_frame()
                        {
                            let _ = conn.send(&f);
                        }
                        conn.close();
                        return;
                    }
                    server.serve_with(conn, Some(first));
                }
                Ok(None) => {}
                Err(e) => log::debug!("client: {from} said nothing: {e}"),
            }
        }));
    }
}

/// Routes the tracker's notifications: introductions answering our
/// attempts to them, the others (peers that want to reach us) to the
/// workers.
fn dispatch(app: &Rc<App>) {
    let (tx, rx) = channel::<(NodeInfo, u64)>(MAX_JOBS);
    spawn(app, move |a| {
        while let Ok((peer, token)) = rx.recv() {
            if !a.banned.borrow().contains(&peer.id) {
                let _ = a.jobs.try_send(Job::Accept { peer, token });
            }
        }
    });
    let e = app.puncher.dispatch(&tx);
    if !app.stop.get() {
        say(format!("client: lost the tracker: {e}"));
    }
}

/// Connects to peers and answers their punches, up to [`MAX_PUNCHES`] at
/// once (each punch gets its own probes from the [`ProbeRouter`]). Answers must
/// not wait behind our own attempts: the peer's attempt times out while it
/// waits for our answer.
fn work(app: &Rc<App>, jobs: &Receiver<Job>) {
    while let Ok(job) = jobs.recv() {
        // Wait for a free punch; stopping closes the semaphore.
        let Ok(permit) = app.punching.acquire() else {
            return;
        };
        if app.stop.get() {
            return;
        }
        spawn(app, move |a| {
            let _permit = permit;
            match job {
                Job::Connect(peer) => connect(a, &peer),
                Job::Accept { peer, token } => answer(a, &peer, token),
            }
        });
    }
}

fn connect(app: &Rc<App>, peer: &NodeInfo) {
    let token = random_u64();
    let info = match app.puncher.introduce(peer.id, app.room, token) {
        Ok(i) => i,
        Err(e) => {
            log::debug!("client: no introduction to {:016x}: {e}", peer.id);
            app.tried.borrow_mut().remove(&peer.id);
            return;
        }
    };
    let opts = Options::default();
    match app.puncher.punch(&info, token) {
        Ok(addr) => match PeerLink::connect(&app.sock, addr, client_config()) {
            Ok(link) => {
                app.bump(|c| c.punched += 1);
                add_supplier(app, peer.id, link, false);
            }
            Err(e) => {
                log::debug!("client: connect to {addr} failed: {e}");
                app.tried.borrow_mut().remove(&peer.id);
            }
        },
        Err(e) => {
            app.bump(|c| c.punch_failed += 1);
            match relay::open(
                &app.sock,
                app.edge_addr,
                app.room,
                peer.id,
                token,
                opts.relay,
            ) {
                Ok(conn) => {
                    app.bump(|c| c.relayed += 1);
                    add_supplier(app, peer.id, PeerLink::single(conn, client_config()), true);
                }
                Err(r) => {
                    log::debug!(
                        "client: punch ({e}) and relay ({r}) to {:016x} failed",
                        peer.id
                    );
                }
            }
        }
    }
}

/// A peer wants to connect: punch back; the direct connection then comes
/// to [`accept`]; else meet it at the relay and serve it there.
fn answer(app: &Rc<App>, peer: &NodeInfo, token: u64) {
    let opts = Options::default();
    match app.puncher.answer(peer, token) {
        Ok(addr) => {
            // Pull from it too, if we want more peers: the hole is open.
            let want = app.suppliers.borrow().len() <= peer_limit(app);
            if want && app.tried.borrow_mut().insert(peer.id) {
                match PeerLink::connect(&app.sock, addr, client_config()) {
                    Ok(link) => add_supplier(app, peer.id, link, false),
                    Err(e) => log::debug!("client: connect back to {addr} failed: {e}"),
                }
            }
        }
        Err(_) => {
            if let Ok(conn) = relay::open(
                &app.sock,
                app.edge_addr,
                app.room,
                peer.id,
                token,
                opts.relay,
            ) {
                let server = app.server.clone();
                drop(libnet::spawn(move || server.serve(conn)));
            }
        }
    }
}

fn peer_limit(app: &App) -> usize {
    usize::try_from(app.setup.a.peers).unwrap_or(0)
}

fn add_supplier(app: &Rc<App>, node: NodeId, link: PeerLink, relayed: bool) {
    if app.banned.borrow().contains(&node) || app.stop.get() {
        return;
    }
    app.suppliers.borrow_mut().insert(
        node,
        Supplier {
            link: Rc::new(link),
            relayed,
        },
    );
    app.sched.borrow_mut().add_supplier(node, false);
    spawn(app, move |a| poll_map(a, node));
}

/// Looks for peers while we have fewer than `--peers`.
fn discover(app: &Rc<App>) {
    while !app.stop.get() {
        let have = app.suppliers.borrow().len().saturating_sub(1);
        let limit = peer_limit(app);
        {
            // Bounded: forget old attempts (they may be tried again).
            let mut tried = app.tried.borrow_mut();
            if tried.len() > MAX_BANNED {
                let keep: HashSet<NodeId> = app.suppliers.borrow().keys().copied().collect();
                tried.retain(|n| keep.contains(n));
            }
        }
        if have < limit {
            match app.tracker.nodes(app.room, Strategy::Random, 32) {
                Ok(nodes) => {
                    let mut wanted = limit - have;
                    for n in nodes {
                        if wanted == 0 {
                            break;
                        }
                        if n.role != Role::Peer
                            || n.id == app.me
                            || app.banned.borrow().contains(&n.id)
                            || !app.tried.borrow_mut().insert(n.id)
                        {
                            continue;
                        }
                        if app.jobs.try_send(Job::Connect(n.clone())).is_err() {
                            app.tried.borrow_mut().remove(&n.id);
                            break;
                        }
                        wanted -= 1;
                    }
                }
                Err(e) => log::debug!("client: cannot list peers: {e}"),
            }
        }
        sleep(DISCOVER_EVERY);
    }
}

/// Tracker heartbeats with our load, and NAT keepalives.
fn heartbeat(app: &Rc<App>) {
    let keepalive = Message::Heartbeat.to_frame().unwrap_or_default();
    while !app.stop.get() {
        sleep(HEARTBEAT);
        let _ = app.sock.send_foreign(app.setup.tracker_udp, &keepalive);
        let load = u32::try_from(app.server.stats().connections).unwrap_or(u32::MAX);
        if let Err(e) = app.tracker.update(load, app.nat) {
            log::debug!("client: tracker heartbeat failed: {e}");
        }
    }
}

/// The status line, every second.
fn report(app: &Rc<App>) {
    while !app.stop.get() {
        sleep(Duration::from_secs(1));
        if app.setup.a.quiet {
            continue;
        }
        if app.setup.a.json {
            say(status_json(app));
        } else {
            say(format!("client: {}", status_text(app)));
        }
    }
}

/// Waits for a signal or the end of `--duration`.
fn wait_end(app: &App, sig: &Receiver<i32>) -> String {
    let limit = app.setup.a.duration.map(Duration::from_secs);
    loop {
        let left = limit.map(|l| l.saturating_sub(app.started.elapsed()));
        let wait = left
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        if wait.is_zero() {
            return "the end of --duration".into();
        }
        let quiet = app
            .last_fragment
            .get()
            .map_or(app.started.elapsed(), |t| t.elapsed());
        if quiet > ENDED_AFTER {
            return format!(
                "the end of the broadcast (nothing new for {} s)",
                quiet.as_secs()
            );
        }
        match sig.recv_timeout(wait) {
            Ok(s) => return signal_name(s).into(),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return "the end of the signal thread".into(),
        }
    }
}

/// The figures of the status line.
struct Status {
    buffer_s: f64,
    bitrate_mbps: f64,
    peers: usize,
    relayed: usize,
    from_peers: f64,
    bytes_edge: u64,
    bytes_peers: u64,
    latency_p95_ms: u64,
    latency_p50_ms: u64,
    counts: Counts,
    served: u64,
    late: u64,
    on_time: u64,
    sched: p2p_apps::sched::SchedStats,
}

fn status(app: &App) -> Status {
    let now = Instant::now();
    let buffer_s = {
        let lanes = app.lanes.borrow();
        let v = &lanes[0];
        // How long until the player would wait: from the next fragment's
        // due time, plus every fragment held in a row after it.
        let mut id = v.next;
        while app.own_has(v.channel, id) {
            id += 1;
        }
        v.deadline(id).saturating_duration_since(now).as_secs_f64()
    };
    let bitrate_mbps = {
        let mut r = app.recent.borrow_mut();
        while r
            .front()
            .is_some_and(|(t, _)| now - *t > Duration::from_secs(2))
        {
            r.pop_front();
        }
        r.iter().map(|(_, n)| *n as f64).sum::<f64>() * 8.0 / 2.0 / 1e6
    };
    let sups = app.suppliers.borrow();
    let peers = sups
        .len()
        .saturating_sub(usize::from(sups.contains_key(&EDGE)));
    let relayed = sups.values().filter(|s| s.relayed).count();
    drop(sups);
    let st = app.sched.borrow().stats();
    let total = st.bytes_edge + st.bytes_peers;
    let from_peers = if total == 0 {
        0.0
    } else {
        st.bytes_peers as f64 / total as f64
    };
    let (p50, p95) = {
        let mut l: Vec<u64> = app.latencies.borrow().iter().copied().collect();
        l.sort_unstable();
        let at = |q: f64| {
            l.get(((l.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or(0)
        };
        (at(0.5) / 1000, at(0.95) / 1000)
    };
    Status {
        buffer_s,
        bitrate_mbps,
        peers,
        relayed,
        from_peers,
        bytes_edge: st.bytes_edge,
        bytes_peers: st.bytes_peers,
        latency_p50_ms: p50,
        latency_p95_ms: p95,
        counts: app.counts.get(),
        served: app.server.stats().bytes_sent,
        late: st.late,
        sched: st.clone(),
        on_time: st.fragments_edge + st.fragments_peers
            - st.late.min(st.fragments_edge + st.fragments_peers),
    }
}

impl App {
    fn own_has(&self, ch: Channel, id: u64) -> bool {
        self.store.borrow().contains(self.room, ch, id)
    }
}

fn status_text(app: &App) -> String {
    let s = status(app);
    format!(
        "buffer {:.1}s | {:.2} Mb/s | peers {} ({} relayed) | from peers {:.0}% | latency p95 {:.2}s | stalls {} | bad {}",
        s.buffer_s,
        s.bitrate_mbps,
        s.peers,
        s.relayed,
        s.from_peers * 100.0,
        s.latency_p95_ms as f64 / 1000.0,
        s.counts.stalls,
        s.counts.bad_fragments
    )
}

fn status_json(app: &App) -> String {
    let s = status(app);
    let c = s.counts;
    format!(
        "{{\"room\":{},\"node\":\"{:016x}\",\"uptime_s\":{:.1},\"buffer_s\":{:.2},\"bitrate_mbps\":{:.3},\"peers\":{},\"relayed_peers\":{},\"from_peers\":{:.4},\"bytes_from_edge\":{},\"bytes_from_peers\":{},\"bytes_served\":{},\"fragments\":{},\"on_time\":{},\"late\":{},\"skipped\":{},\"stalls\":{},\"stall_ms\":{},\"bad_fragments\":{},\"peers_dropped\":{},\"punched\":{},\"relayed\":{},\"punch_failed\":{},\"latency_p50_ms\":{},\"latency_p95_ms\":{},\"first_frame_ms\":{},\"output_dropped\":{},\"requests\":{},\"ids_requested\":{},\"missing\":{},\"timeouts\":{},\"switches\":{},\"duplicates\":{},\"cancels\":{}}}",
        app.room,
        app.me,
        app.started.elapsed().as_secs_f64(),
        s.buffer_s,
        s.bitrate_mbps,
        s.peers,
        s.relayed,
        s.from_peers,
        s.bytes_edge,
        s.bytes_peers,
        s.served,
        c.fragments,
        s.on_time,
        s.late,
        c.skipped,
        c.stalls,
        c.stall_ms,
        c.bad_fragments,
        c.peers_dropped,
        c.punched,
        c.relayed,
        c.punch_failed,
        s.latency_p50_ms,
        s.latency_p95_ms,
        c.first_frame_ms.map_or_else(|| "null".to_string(), |v| v.to_string()),
        c.output_dropped,
        s.sched.requests,
        s.sched.ids_requested,
        s.sched.missing,
        s.sched.timeouts,
        s.sched.switches,
        s.sched.duplicates,
        s.sched.cancels
    )
}
