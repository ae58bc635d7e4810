//! `vod`: files on demand through the swarm (see `docs/vod.md`,
//! "Programs").
//!
//! ```text
//! vod share FILE [--name NAME] [--key-file PATH] [--bind IP:PORT] [--tracker HOST:PORT]
//! vod list [PREFIX] [--tracker HOST:PORT]
//! vod fetch NAME --out FILE [--stdout] [--publisher HEX] [--seed] [--bind IP:PORT] [--tracker ...]
//! ```
//!
//! `share` indexes and signs a file, publishes it in the tracker's catalog
//! and serves its pieces until Ctrl-C. `list` prints the catalog. `fetch`
//! asks the tracker who holds a file, downloads it from all of them at
//! once (resuming `FILE.part`), publishes itself as a holder meanwhile and
//! can stream the contiguous prefix to stdout for a player.
//!
//! Holders are reached directly at the address the tracker saw (or their
//! local one when they are behind the same public IP): a holder behind a
//! NAT that filters unknown senders is not reachable yet. Punching to
//! holders through the tracker is a follow-up.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use libnet::p2p::client::{whoami_rudp, Hello, TrackerClient};
use libnet::p2p::registry::LOBBY;
use libnet::p2p::wire::{CatalogEntry, FileInfo};
use libnet::p2p::{rudp_config, NatType, Role};
use libnet::rand::random_u64;
use libnet::rudp::RudpSocket;
use libnet::sync::{channel, Receiver, RecvTimeoutError};
use libnet::time::sleep;
use p2p_apps::node::{say, signal_name, start, TRACKER_TIMEOUT};
use p2p_apps::signed::{hex, RoomKey, RoomPublic};
use p2p_apps::vod::net::{fetch, FetchConfig, Seeder, SeederConfig};
use p2p_apps::vod::pieces::part_path;
use p2p_apps::vod::{index_file, PieceFile, SignedIndex};
use p2p_apps::{concrete_bind, init_logging, tracker_addrs};

/// Files on demand through the p2p-live swarm.
#[derive(Parser, Debug)]
#[command(name = "vod", version)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Shares a file: indexes, signs, publishes and serves it until Ctrl-C.
    Share {
        /// The file to share.
        file: PathBuf,
        /// Its name in the catalog [default: the file's name].
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// The publisher's signing key (created if missing) [default: a
        /// fresh key for this run].
        #[arg(long, value_name = "PATH")]
        key_file: Option<PathBuf>,
        /// UDP address serving the pieces (an unspecified IP stands for the
        /// interface that routes to the tracker).
        #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:0")]
        bind: SocketAddr,
        #[command(flatten)]
        tracker: TrackerFlags,
    },
    /// Prints the catalog: name, size, duration, holders.
    List {
        /// Only the names that start with this.
        #[arg(default_value = "")]
        prefix: String,
        #[command(flatten)]
        tracker: TrackerFlags,
    },
    /// Downloads a file from its holders.
    Fetch {
        /// The file's name in the catalog.
        name: String,
        /// Where to write it (`FILE.part` while incomplete; resumed).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Also writes the bytes to stdout as they come, in order (for a
        /// player: `vod fetch NAME --out x.ts --stdout | ffplay -`).
        #[arg(long)]
        stdout: bool,
        /// Accept only an index signed by this key (64 hex digits).
        #[arg(long, value_name = "HEX")]
        publisher: Option<String>,
        /// Keeps serving the file after the download, until Ctrl-C.
        #[arg(long)]
        seed: bool,
        /// UDP address of the download (and serving) socket.
        #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:0")]
        bind: SocketAddr,
        #[command(flatten)]
        tracker: TrackerFlags,
    },
}

#[derive(clap::Args, Debug)]
struct TrackerFlags {
    /// The tracker's TCP address.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7000")]
    tracker: String,
    /// The tracker's UDP (Whoami) address [default: the tracker's host, port 3478].
    #[arg(long, value_name = "HOST:PORT")]
    tracker_udp: Option<String>,
}

/// Piece size of shared files: one piece travels as one RUDP message.
const PIECE: usize = 60_000;
/// Tracker heartbeat period.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// How often a downloader tells the tracker how much it holds.
const HAVE_PERIOD: Duration = Duration::from_secs(1);
/// Most holders asked for at once.
const MAX_HOLDERS: u16 = 16;

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging("warn");
    match args.cmd {
        Cmd::Share {
            file,
            name,
            key_file,
            bind,
            tracker,
        } => {
            let setup = Net::new(&tracker, bind).and_then(|net| {
                let name = match name {
                    Some(n) => n,
                    None => file
                        .file_name()
                        .and_then(|n| n.to_str())
                        .ok_or_else(|| format!("{} has no file name: give --name", file.display()))?
                        .to_string(),
                };
                Ok(Share {
                    net,
                    file,
                    name,
                    key_file,
                })
            });
            start("vod", setup, share)
        }
        Cmd::List { prefix, tracker } => {
            let setup = tracker_addrs(&tracker.tracker, None).map(|(t, _)| (t, prefix));
            start("vod", setup, |(t, p), _| list(t, &p))
        }
        Cmd::Fetch {
            name,
            out,
            stdout,
            publisher,
            seed,
            bind,
            tracker,
        } => {
            let setup = Net::new(&tracker, bind).and_then(|net| {
                let publisher = match publisher {
                    Some(h) => Some(
                        RoomPublic::from_hex(&h)
                            .ok_or("--publisher is a public key of 64 hex digits")?
                            .to_bytes(),
                    ),
                    None => None,
                };
                Ok(Get {
                    net,
                    name,
                    out,
                    stdout,
                    publisher,
                    seed,
                })
            });
            start("vod", setup, get)
        }
    }
}

/// The tracker and the local socket address, resolved.
struct Net {
    tracker: SocketAddr,
    tracker_udp: SocketAddr,
    bind: SocketAddr,
}

impl Net {
    fn new(t: &TrackerFlags, bind: SocketAddr) -> Result<Net, String> {
        let (tracker, tracker_udp) = tracker_addrs(&t.tracker, t.tracker_udp.as_deref())?;
        Ok(Net {
            tracker,
            tracker_udp,
            bind: concrete_bind(bind, tracker),
        })
    }

    /// Binds the RUDP socket, connects to the tracker and registers in the
    /// lobby; returns the socket, the tracker and our public address.
    fn join(&self) -> Result<(Rc<RudpSocket>, TrackerClient, SocketAddr), String> {
        let sock = RudpSocket::bind(self.bind, rudp_config())
            .map_err(|e| format!("cannot bind {} (--bind): {e}", self.bind))?;
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
        tracker
            .hello(&Hello {
                node: random_u64(),
                role: Role::Peer,
                room: LOBBY,
                local,
                public: Some(public),
                workload: 0,
                nat: NatType::Unknown,
                key: Vec::new(),
            })
            .map_err(|e| format!("the tracker at {} refused us: {e}", self.tracker))?;
        Ok((Rc::new(sock), tracker, public))
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

struct Share {
    net: Net,
    file: PathBuf,
    name: String,
    key_file: Option<PathBuf>,
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

fn share(s: Share, sig: &Receiver<i32>) -> Result<(), String> {
    if !s.file.is_file() {
        return Err(format!("file not found: {}", s.file.display()));
    }
    let key = key_from(s.key_file.as_deref())?;
    let (name, path) = (s.name.clone(), s.file.clone());
    let index = libnet::spawn_blocking(move || index_file(&name, &path, PIECE))
        .map_err(|e| format!("cannot index {}: {e}", s.file.display()))?;
    let signed = SignedIndex::sign(index, &key).map_err(|e| format!("cannot sign: {e}"))?;
    let piece_file = PieceFile::open_complete(&s.file, signed.index())
        .map_err(|e| format!("cannot open {}: {e}", s.file.display()))?;
    let (sock, tracker, public) = s.net.join()?;
    let seeder = Seeder::start(sock.clone(), SeederConfig::default());
    seeder
        .add(&signed, Rc::new(RefCell::new(piece_file)))
        .map_err(|e| e.to_string())?;
    let info = file_info(&signed);
    tracker
        .publish(&info, info.pieces)
        .map_err(|e| format!("the tracker refused {:?}: {e}", info.name))?;
    let i = signed.index();
    say(format!(
        "shared {} ({} bytes, {} pieces, {} s) index {} publisher {} at {public}",
        i.name,
        i.size,
        i.pieces(),
        secs(i.duration_ms),
        hex(&signed.id()),
        hex(&signed.publisher()),
    ));
    let s = loop {
        match sig.recv_timeout(HEARTBEAT) {
            Ok(s) => break s,
            Err(RecvTimeoutError::Timeout) => {
                if let Err(e) = tracker.update(0, NatType::Unknown) {
                    return Err(format!("lost the tracker: {e}"));
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
    let _ = tracker.unpublish(&info.name);
    let _ = tracker.bye();
    seeder.stop();
    Ok(())
}

// ---- list -----------------------------------------------------------------

fn list(tracker: SocketAddr, prefix: &str) -> Result<(), String> {
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

struct Get {
    net: Net,
    name: String,
    out: PathBuf,
    stdout: bool,
    publisher: Option<[u8; 32]>,
    seed: bool,
}

/// The catalog entry of `name`, with the addresses of its holders.
fn find(
    t: &TrackerClient,
    name: &str,
    public: SocketAddr,
) -> Result<(CatalogEntry, Vec<SocketAddr>), String> {
    let entry = t
        .catalog(name)
        .map_err(|e| format!("the tracker did not answer: {e}"))?
        .into_iter()
        .find(|e| e.file.name == name)
        .ok_or_else(|| format!("no file named {name:?} in the catalog (see `vod list`)"))?;
    let holders = t
        .holders(name, MAX_HOLDERS)
        .map_err(|e| format!("the tracker did not answer: {e}"))?;
    // Behind the same public IP (or on the same host), a holder is reached
    // at its local address.
    let addrs: Vec<SocketAddr> = holders
        .iter()
        .map(|h| {
            if h.node.public.ip() == public.ip() {
                h.node.local
            } else {
                h.node.public
            }
        })
        .collect();
    if addrs.is_empty() {
        return Err(format!("{name:?} has no holders right now"));
    }
    Ok((entry, addrs))
}

/// Copies the contiguous prefix of the download to stdout from a plain
/// thread (a slow player must not stall the loop). Takes byte counts on
/// `rx`; ends when `rx` closes, with the bytes written.
fn stream(out: PathBuf, rx: std::sync::mpsc::Receiver<u64>) -> Result<u64, String> {
    let mut file: Option<File> = None;
    let mut done = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    let mut stdout = io::stdout().lock();
    while let Ok(mut target) = rx.recv() {
        while let Ok(t) = rx.try_recv() {
            target = target.max(t);
        }
        if target <= done {
            continue;
        }
        if file.is_none() {
            // The rename to `out` keeps an open `.part` readable.
            file = File::open(part_path(&out))
                .or_else(|_| File::open(&out))
                .ok();
        }
        let Some(f) = &file else {
            return Err(format!("cannot read {}", out.display()));
        };
        while done < target {
            let n = usize::try_from(target - done)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let got = f
                .read_at(&mut buf[..n], done)
                .map_err(|e| format!("cannot read {}: {e}", out.display()))?;
            if got == 0 {
                break;
            }
            stdout
                .write_all(&buf[..got])
                .and_then(|()| stdout.flush())
                .map_err(|e| format!("stdout: {e}"))?;
            done += got as u64;
        }
    }
    Ok(done)
}

/// What the download's coroutines share.
struct Progress {
    /// Pieces stored during this run.
    stored: Cell<u32>,
    /// Contiguous bytes held.
    contiguous: Cell<u64>,
    /// Set once the file is complete (publish every piece).
    complete: Cell<bool>,
    /// The tracker coroutine ends when this is set.
    stop: Cell<bool>,
}

fn get(g: Get, sig: &Receiver<i32>) -> Result<(), String> {
    let part = part_path(&g.out);
    if g.out.exists() && !part.exists() {
        return Err(format!(
            "{} already exists (remove it to fetch again)",
            g.out.display()
        ));
    }
    let (sock, tracker, public) = g.net.join()?;
    let tracker = Rc::new(tracker);
    let (entry, holders) = find(&tracker, &g.name, public)?;
    let info = entry.file;
    say(format!(
        "vod: fetching {} ({} bytes, {} pieces) from {} holders: {}",
        info.name,
        info.size,
        info.pieces,
        holders.len(),
        holders
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    ));

    // Ctrl-C while downloading: leave the `.part` for a later resume.
    let fetching = Rc::new(Cell::new(true));
    let (stop_tx, stop_rx) = channel::<i32>(1);
    {
        let (sig, fetching, tracker) = (sig.clone(), fetching.clone(), tracker.clone());
        let (name, part) = (info.name.clone(), part.clone());
        drop(libnet::spawn(move || {
            let Ok(s) = sig.recv() else { return };
            if fetching.get() {
                let _ = tracker.unpublish(&name);
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
        contiguous: Cell::new(0),
        complete: Cell::new(false),
        stop: Cell::new(false),
    });
    // The tracker: how much we hold, and heartbeats.
    let beat = {
        let (p, tracker, info) = (progress.clone(), tracker.clone(), info.clone());
        libnet::spawn(move || {
            let piece = u64::from(PIECE as u32);
            let mut told = 0u32;
            let mut last_beat = libnet::time::now();
            while !p.stop.get() {
                let have = if p.complete.get() {
                    info.pieces
                } else {
                    let prefix = u32::try_from(p.contiguous.get() / piece).unwrap_or(u32::MAX);
                    p.stored.get().max(prefix).min(info.pieces)
                };
                if have > told {
                    match tracker.publish(&info, have) {
                        Ok(_) => told = have,
                        Err(e) => log::warn!("vod: publish failed: {e}"),
                    }
                }
                if last_beat.elapsed() >= HEARTBEAT {
                    last_beat = libnet::time::now();
                    let _ = tracker.update(0, NatType::Unknown);
                }
                sleep(HAVE_PERIOD);
            }
        })
    };

    let streamer = if g.stdout {
        let (tx, rx) = std::sync::mpsc::channel::<u64>();
        let (done_tx, done_rx) = channel::<Result<u64, String>>(1);
        let out = g.out.clone();
        std::thread::Builder::new()
            .name("stdout".into())
            .spawn(move || {
                let r = stream(out, rx);
                let _ = done_tx.send(r);
            })
            .map_err(|e| format!("cannot start the stdout thread: {e}"))?;
        Some((tx, done_rx))
    } else {
        None
    };

    let seeder = Seeder::start(sock.clone(), SeederConfig::default());
    let on_piece = {
        let p = progress.clone();
        let tx = streamer.as_ref().map(|(tx, _)| tx.clone());
        let name = info.name.clone();
        let mut last_said = libnet::time::now();
        Box::new(move |contiguous: u64, size: u64| {
            p.stored.set(p.stored.get() + 1);
            p.contiguous.set(contiguous);
            if let Some(tx) = &tx {
                let _ = tx.send(contiguous);
            }
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
        progress: Some(on_piece),
        ..FetchConfig::default()
    };
    let r = fetch(&sock, &holders, info.index, &g.out, config);
    fetching.set(false);
    let (signed, stats) = match r {
        Ok(x) => x,
        Err(e) => {
            let _ = tracker.unpublish(&info.name);
            let e = e.to_string();
            let mut why = format!(
                "fetching {:?} failed: {}",
                info.name,
                e.strip_prefix("vod: ").unwrap_or(&e)
            );
            if g.publisher.is_some() && e.contains("valid index") {
                why.push_str(" (signed by another key than --publisher?)");
            }
            if part.exists() {
                why.push_str(&format!("; {} kept for resuming", part.display()));
            }
            return Err(why);
        }
    };
    progress.complete.set(true);
    let per = holders
        .iter()
        .zip(&stats.bytes)
        .map(|(a, b)| format!("{a} {b} bytes"))
        .collect::<Vec<_>>()
        .join(", ");
    say(format!(
        "fetched {} ({} bytes) in {:.2} s (first byte after {}; {} resumed pieces, {} bad pieces): {per}",
        info.name,
        signed.index().size,
        stats.total.as_secs_f64(),
        stats
            .first_byte
            .map_or_else(|| "-".to_string(), |d| format!("{:.2} s", d.as_secs_f64())),
        stats.resumed,
        stats.bad_pieces,
    ));
    // The player may still be reading: wait for the copy to end, or for
    // Ctrl-C (which then also skips seeding).
    let mut stopped = None;
    if let Some((tx, done)) = streamer {
        let _ = tx.send(signed.index().size);
        drop(tx);
        let r = loop {
            match done.recv_timeout(Duration::from_millis(200)) {
                Ok(r) => break Some(r),
                Err(RecvTimeoutError::Timeout) => {
                    if let Ok(Some(s)) = stop_rx.try_recv() {
                        stopped = Some(s);
                        break None;
                    }
                }
                Err(_) => break Some(Err("the stdout thread ended early".into())),
            }
        };
        match r {
            Some(Ok(n)) => log::info!("vod: {n} bytes to stdout"),
            Some(Err(e)) => say(format!("vod: warning: stopped writing to stdout: {e}")),
            None => say("vod: interrupted while writing to stdout".into()),
        }
    }
    if g.seed && stopped.is_none() {
        // Tell the tracker at once that we are a complete holder.
        let _ = tracker.publish(&info, info.pieces);
        say(format!("vod: seeding {} until Ctrl-C", info.name));
        let s = stop_rx.recv().map_err(|_| "the signal thread ended")?;
        say(format!(
            "vod: stopping on {} ({} bytes served)",
            signal_name(s),
            seeder.sent()
        ));
    }
    progress.stop.set(true);
    drop(beat.join());
    let _ = tracker.unpublish(&info.name);
    let _ = tracker.bye();
    seeder.stop();
    Ok(())
}
