//! `source`: ingests video and audio with FFmpeg (a built-in test pattern
//! by default, a media file, or anything FFmpeg opens live), cuts the
//! stream into signed fragments per channel and pushes them to an edge
//! over RUDP.
//!
//! ```text
//! source --tracker HOST:7000 --edge-key KEY [--room N] [--edge HOST:PORT]
//!        [--input FILE [--loop] | --url URL [--format FMT]]
//!        [--size 640x360] [--fps 25] [--video-kbps 1800] [--key-file PATH]
//! ```
//!
//! The first line on stdout is `room=N`, for scripts. FFmpeg runs on a
//! plain thread (it blocks: decoding, encoding, pacing at real time) and
//! hands packets to the loop through a bounded channel.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Parser;
use libnet::p2p::client::{Hello, TrackerClient};
use libnet::p2p::registry::LOBBY;
use libnet::p2p::store::max_fragment_data;
use libnet::p2p::wire::Message;
use libnet::p2p::{rudp_config, Channel, NatType, Role, RoomId, Strategy};
use libnet::rand::random_u64;
use libnet::rudp::{RudpConnection, RudpSocket};
use libnet::sync::{channel, Receiver, RecvTimeoutError, Sender};
use libnet::time::sleep;
use p2p_apps::media::frag::{Chunk, Packetizer};
use p2p_apps::media::ingest::{Ingest, Input};
use p2p_apps::media::{Kind, Packet, StreamInfo};
use p2p_apps::node::{now_us, run_main, say, signal_name, signals, AUDIO_GROUP, TRACKER_TIMEOUT};
use p2p_apps::signed::{RoomKey, META_CODEC, META_PUBKEY};
use p2p_apps::{init_logging, resolve, route_ip};

/// The source of a p2p-live broadcast.
#[derive(Parser, Debug)]
#[command(name = "source", version)]
struct Args {
    /// The tracker's TCP address.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7000")]
    tracker: String,
    /// The edge key (the tracker's and the edge's --edge-key).
    #[arg(long, value_name = "KEY", default_value = "")]
    edge_key: String,
    /// Broadcast in this room (allocated earlier) instead of a new one.
    #[arg(long, value_name = "N")]
    room: Option<RoomId>,
    /// Push to this edge instead of the least loaded one the tracker knows.
    #[arg(long, value_name = "HOST:PORT")]
    edge: Option<String>,
    /// A media file to broadcast, paced at real time (instead of the test
    /// pattern).
    #[arg(long, value_name = "FILE", conflicts_with = "url")]
    input: Option<PathBuf>,
    /// Start the file again at its end.
    #[arg(long = "loop", requires = "input")]
    looped: bool,
    /// Anything FFmpeg opens live: a capture device (/dev/video0 with
    /// --format v4l2), or rtmp://0.0.0.0:1935/live/stream for OBS.
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// FFmpeg's input device format for --url (v4l2, alsa, pulse, lavfi);
    /// network URLs are recognised without it.
    #[arg(long, value_name = "FMT", requires = "url")]
    format: Option<String>,
    /// Test pattern size.
    #[arg(long, value_name = "WxH", default_value = "640x360", value_parser = parse_size)]
    size: (u32, u32),
    /// Test pattern frame rate.
    #[arg(long, value_name = "N", default_value_t = 25,
          value_parser = clap::value_parser!(u32).range(1..=120))]
    fps: u32,
    /// Test pattern video bitrate, kbit/s.
    #[arg(long, value_name = "N", default_value_t = 1800,
          value_parser = clap::value_parser!(u32).range(50..=50_000))]
    video_kbps: u32,
    /// The room's signing key (64 hex digits); created there if missing,
    /// so a restarted source keeps its room's identity.
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once('x')
        .ok_or("expected WIDTHxHEIGHT, e.g. 640x360")?;
    let w: u32 = w.parse().map_err(|_| "bad width")?;
    let h: u32 = h.parse().map_err(|_| "bad height")?;
    if !(16..=7680).contains(&w)
        || !(16..=4320).contains(&h)
        || !w.is_multiple_of(2)
        || !h.is_multiple_of(2)
    {
        return Err("size must be even, 16x16 to 7680x4320".into());
    }
    Ok((w, h))
}

/// Payload bytes per fragment: a fragment frame, with its signature, fits
/// one RUDP message.
const MAX_PAYLOAD: usize = max_fragment_data(64 * 1024) - p2p_apps::signed::SIG_LEN - 64;

/// Packets queued between FFmpeg's thread and the loop.
const QUEUE: usize = 256;

/// Wait between attempts to reach the edge.
const RETRY: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging("warn");
    let tracker = match resolve("--tracker", &args.tracker) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("source: error: {e}");
            return ExitCode::from(2);
        }
    };
    let edge = match args
        .edge
        .as_deref()
        .map(|e| resolve("--edge", e))
        .transpose()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("source: error: {e}");
            return ExitCode::from(2);
        }
    };
    let key = match load_key(args.key_file.as_ref()) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("source: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let input = match (&args.input, &args.url) {
        (Some(path), _) => Input::File {
            path: path.clone(),
            looped: args.looped,
        },
        (None, Some(url)) => Input::Url {
            url: url.clone(),
            format: args.format.clone(),
        },
        (None, None) => Input::TestPattern {
            width: args.size.0,
            height: args.size.1,
            fps: args.fps,
            video_kbps: args.video_kbps,
        },
    };
    // Open the input before anything else: a bad file is the commonest
    // mistake, and it should not cost a room.
    let ingest = match Ingest::open(&input) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("source: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let info = ingest.info().clone();
    let sig = match signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("source: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (tx, packets) = channel::<Result<Packet, String>>(QUEUE);
    let reader = std::thread::Builder::new()
        .name("ingest".into())
        .spawn(move || read_input(ingest, &tx));
    if let Err(e) = reader {
        eprintln!("source: error: cannot start the ingest thread: {e}");
        return ExitCode::FAILURE;
    }
    let setup = Setup {
        tracker,
        edge,
        edge_key: args.edge_key.into_bytes(),
        room: args.room,
        key,
        info,
        duration: args.duration.map(Duration::from_secs),
    };
    run_main("source", move || run(setup, &packets, &sig))
}

fn load_key(path: Option<&PathBuf>) -> Result<RoomKey, String> {
    let Some(path) = path else {
        return RoomKey::generate();
    };
    if path.exists() {
        return RoomKey::load(path);
    }
    let k = RoomKey::generate()?;
    std::fs::write(path, format!("{}\n", k.to_hex()))
        .map_err(|e| format!("cannot write key file {}: {e}", path.display()))?;
    Ok(k)
}

/// FFmpeg's side: packets until the input ends or the loop is gone.
fn read_input(mut ingest: Ingest, tx: &Sender<Result<Packet, String>>) {
    loop {
        let item = match ingest.next() {
            Ok(Some(p)) => Ok(p),
            Ok(None) => return, // the end: dropping `tx` says so
            Err(e) => Err(e.to_string()),
        };
        let stop = item.is_err();
        // A plain thread: the send blocks this thread only.
        if tx.send(item).is_err() || stop {
            return;
        }
    }
}

struct Setup {
    tracker: SocketAddr,
    edge: Option<SocketAddr>,
    edge_key: Vec<u8>,
    room: Option<RoomId>,
    key: RoomKey,
    info: StreamInfo,
    duration: Option<Duration>,
}

fn run(
    setup: Setup,
    packets: &Receiver<Result<Packet, String>>,
    sig: &Receiver<i32>,
) -> Result<(), String> {
    let tracker = TrackerClient::connect(setup.tracker, TRACKER_TIMEOUT).map_err(|e| {
        format!(
            "cannot reach the tracker at {} (--tracker): {e}",
            setup.tracker
        )
    })?;
    let room = match setup.room {
        Some(r) => r,
        None => tracker
            .allocate_room(&setup.edge_key)
            .map_err(|e| format!("the tracker gave no room: {e} (check --edge-key)"))?,
    };
    let local = SocketAddr::new(
        route_ip(setup.tracker).unwrap_or_else(|| [127, 0, 0, 1].into()),
        0,
    );
    tracker
        .hello(&Hello {
            node: random_u64(),
            role: Role::Source,
            room,
            local,
            public: None,
            workload: 0,
            nat: NatType::Unknown,
            key: setup.edge_key.clone(),
        })
        .map_err(|e| format!("the tracker refused the source in room {room}: {e}"))?;
    let edge = match setup.edge {
        Some(e) => e,
        None => {
            let edges = tracker
                .nodes(LOBBY, Strategy::Edges, 8)
                .map_err(|e| format!("cannot list edges: {e}"))?;
            edges
                .first()
                .map(|n| n.public)
                .ok_or("the tracker knows no edge (start one, or give --edge)")?
        }
    };
    let sock = Rc::new(
        RudpSocket::bind(local, rudp_config())
            .map_err(|e| format!("cannot bind a udp socket: {e}"))?,
    );
    // stdout's first line, for scripts.
    libnet::spawn_blocking(move || {
        use std::io::Write;
        let mut o = std::io::stdout().lock();
        let _ = writeln!(o, "room={room}");
        let _ = o.flush();
    });
    say(format!(
        "source: room {room}, key {}, edge {edge}",
        setup.key.public().to_hex()
    ));
    let (stop_tx, stop) = channel::<&'static str>(2);
    {
        let s = stop_tx.clone();
        let sig = sig.clone();
        drop(libnet::spawn(move || {
            if let Ok(n) = sig.recv() {
                let _ = s.try_send(signal_name(n));
            }
        }));
    }
    if let Some(d) = setup.duration {
        drop(libnet::spawn(move || {
            sleep(d);
            let _ = stop_tx.try_send("the end of --duration");
        }));
    }
    let mut pusher = Pusher::new(room, &setup);
    let started = Instant::now();
    let why = loop {
        let conn = match connect_edge(&sock, edge, room, &setup) {
            Ok(c) => c,
            Err(e) => {
                say(format!("source: edge {edge}: {e}; retrying"));
                match stop.recv_timeout(RETRY) {
                    Ok(why) => break why.to_string(),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => break "stopped".into(),
                }
            }
        };
        match pusher.push_all(&conn, packets, &stop) {
            Ok(why) => {
                conn.close();
                break why;
            }
            Err(e) => say(format!("source: lost the edge: {e}; reconnecting")),
        }
    };
    // Let the last fragments reach the edge.
    let deadline = Instant::now() + Duration::from_secs(2);
    while sock.connection_count() > 0 && Instant::now() < deadline {
        sleep(Duration::from_millis(20));
    }
    let _ = tracker.bye();
    say(format!(
        "source: stopping on {why} after {:.1} s ({} fragments, {} bytes pushed)",
        started.elapsed().as_secs_f64(),
        pusher.fragments,
        pusher.bytes
    ));
    Ok(())
}

/// Connects to the edge and says who we are; the edge answers with a
/// `HelloReply`, or an `Error` (wrong key).
fn connect_edge(
    sock: &RudpSocket,
    edge: SocketAddr,
    room: RoomId,
    setup: &Setup,
) -> Result<RudpConnection, String> {
    let conn = sock
        .connect(edge)
        .map_err(|e| format!("cannot connect: {e}"))?;
    let hello = Message::Hello {
        node: random_u64(),
        role: Role::Source,
        room,
        local: sock.local_addr().map_err(|e| e.to_string())?,
        public: None,
        workload: 0,
        nat: NatType::Unknown,
        key: setup.edge_key.clone(),
    };
    send(&conn, &hello)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)));
    match conn.recv() {
        Ok(Some(f)) => match Message::decode_frame(&f) {
            Ok(Message::HelloReply { .. }) => {}
            Ok(Message::Error { text, .. }) => return Err(format!("refused: {text}")),
            Ok(other) => return Err(format!("unexpected {}", other.name())),
            Err(e) => return Err(format!("bad answer: {e}")),
        },
        Ok(None) => return Err("closed".into()),
        Err(e) => return Err(format!("no answer: {e}")),
    }
    // The key first, then the signed codec parameters.
    let pk = setup.key.public().to_bytes().to_vec();
    send(
        &conn,
        &Message::MetaReply {
            room,
            key: META_PUBKEY.into(),
            value: Some(pk),
        },
    )?;
    let codec = setup.key.sign_meta(room, META_CODEC, &setup.info.encode());
    send(
        &conn,
        &Message::MetaReply {
            room,
            key: META_CODEC.into(),
            value: Some(codec),
        },
    )?;
    // An edge error (bad signature) closes the connection; watch for it.
    conn.set_read_timeout(None);
    Ok(conn)
}

fn send(conn: &RudpConnection, m: &Message) -> Result<(), String> {
    let f = m.to_frame().map_err(|e| e.to_string())?;
    conn.send(&f).map_err(|e| format!("send failed: {e}"))
}

/// Cuts packets into fragments, signs and pushes them.
struct Pusher<'a> {
    room: RoomId,
    setup: &'a Setup,
    packetizer: Packetizer,
    next_video: u64,
    next_audio: u64,
    fragments: u64,
    bytes: u64,
}

impl<'a> Pusher<'a> {
    fn new(room: RoomId, setup: &'a Setup) -> Pusher<'a> {
        // Ids start at the wall clock in ms, so a restarted source goes on
        // above what viewers already hold.
        let base = now_us() / 1000;
        Pusher {
            room,
            setup,
            packetizer: Packetizer::new(&setup.info, MAX_PAYLOAD, AUDIO_GROUP),
            next_video: base,
            next_audio: base,
            fragments: 0,
            bytes: 0,
        }
    }

    /// Pushes until the input ends or a stop; `Err` when the edge is lost.
    fn push_all(
        &mut self,
        conn: &RudpConnection,
        packets: &Receiver<Result<Packet, String>>,
        stop: &Receiver<&'static str>,
    ) -> Result<String, String> {
        loop {
            if let Ok(Some(why)) = stop.try_recv() {
                return Ok(why.to_string());
            }
            match packets.recv_timeout(Duration::from_millis(200)) {
                Ok(Ok(p)) => {
                    for c in self.packetizer.push(p) {
                        self.push(conn, c)?;
                    }
                }
                Ok(Err(e)) => return Ok(format!("an input error: {e}")),
                // Idle input (a live URL waiting for its publisher): keep
                // the connection alive, and learn early if it is gone.
                Err(RecvTimeoutError::Timeout) => send(conn, &Message::Heartbeat)?,
                Err(RecvTimeoutError::Disconnected) => {
                    for c in self.packetizer.flush() {
                        self.push(conn, c)?;
                    }
                    return Ok("the end of the input".into());
                }
            }
        }
    }

    fn push(&mut self, conn: &RudpConnection, c: Chunk) -> Result<(), String> {
        let (channel, id) = match c.kind {
            Kind::Video => (Channel::Video, &mut self.next_video),
            Kind::Audio => (Channel::Audio, &mut self.next_audio),
        };
        let ts = now_us();
        let data = self
            .setup
            .key
            .sign_fragment(self.room, channel, *id, ts, &c.payload);
        self.bytes += data.len() as u64;
        let m = Message::Fragment {
            room: self.room,
            channel,
            id: *id,
            timestamp: ts,
            data,
        };
        *id += 1;
        self.fragments += 1;
        send(conn, &m)
    }
}
