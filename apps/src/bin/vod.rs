//! `vod`: files on demand through the swarm (see `docs/vod.md`,
//! "Programs").
//!
//! ```text
//! vod share FILE [--name NAME] [--key-file PATH] [--upload-kbps N] [--bind IP:PORT] [--tracker HOST:PORT]
//! vod list [PREFIX] [--tracker HOST:PORT]
//! vod fetch NAME --out FILE [--stdout] [--http IP:PORT] [--start SECS] [--end SECS] [--publisher HEX]
//!           [--seed] [--upload-kbps N] [--bind IP:PORT] [--tracker ...]
//! ```
//!
//! `share` indexes and signs a file, publishes it in the tracker's catalog
//! and serves its pieces until Ctrl-C. `list` prints the catalog. `fetch`
//! asks the tracker who holds a file, downloads it from all of them at
//! once (resuming `FILE.part`), publishes itself as a holder meanwhile and
//! plays while downloading: to stdout, or over local HTTP (with seeking).
//!
//! Holders are reached by punching through the tracker they are registered
//! on (ours or a linked one), or directly at their local address when they
//! share our public IP; every `vod` node answers punches. The work is in
//! `p2p_apps::vod::program` (also behind `client --file NAME`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use p2p_apps::node::start;
use p2p_apps::vod::program::{get, list, seeder_config, share, Get, Net, Share};
use p2p_apps::{init_logging, tracker_addrs};

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
        /// Upload cap, kilobits per second over all downloaders (0: none).
        #[arg(long, value_name = "KBPS", default_value_t = 0)]
        upload_kbps: u64,
        #[command(flatten)]
        tracker: TrackerFlags,
    },
    /// Prints the catalog: name, size, duration, holders.
    List {
        /// Only the names that start with this.
        #[arg(default_value = "")]
        prefix: String,
        /// The tracker's TCP address (listing needs no UDP).
        #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7000")]
        tracker: String,
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
        /// Serves the file over HTTP while it downloads, with byte ranges
        /// and `?t=SECONDS` (`mpv http://IP:PORT/NAME`); keeps serving
        /// after the download until Ctrl-C.
        #[arg(long, value_name = "IP:PORT")]
        http: Option<SocketAddr>,
        /// Starts playing (and downloading) at this time, in seconds: stdout
        /// begins at the key frame before it.
        #[arg(long, value_name = "SECS", default_value_t = 0.0)]
        start: f64,
        /// Downloads only up to this time, in seconds (from `--start`): the
        /// file stays `FILE.part`, holding that span (with `--seed`, served).
        #[arg(long, value_name = "SECS")]
        end: Option<f64>,
        /// Upload cap while serving, kilobits per second (0: none).
        #[arg(long, value_name = "KBPS", default_value_t = 0)]
        upload_kbps: u64,
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

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging("warn");
    match args.cmd {
        Cmd::Share {
            file,
            name,
            key_file,
            bind,
            upload_kbps,
            tracker,
        } => {
            let setup =
                Net::new(&tracker.tracker, tracker.tracker_udp.as_deref(), bind).and_then(|net| {
                    let name = match name {
                        Some(n) => n,
                        None => file
                            .file_name()
                            .and_then(|n| n.to_str())
                            .ok_or_else(|| {
                                format!("{} has no file name: give --name", file.display())
                            })?
                            .to_string(),
                    };
                    Ok(Share {
                        net,
                        file,
                        name,
                        key_file,
                        upload: seeder_config(upload_kbps),
                    })
                });
            start("vod", setup, share)
        }
        Cmd::List { prefix, tracker } => {
            let setup = tracker_addrs(&tracker, None).map(|(t, _)| (t, prefix));
            start("vod", setup, |(t, p), _| list(t, &p))
        }
        Cmd::Fetch {
            name,
            out,
            stdout,
            http,
            start: start_at,
            end,
            upload_kbps,
            publisher,
            seed,
            bind,
            tracker,
        } => {
            let setup =
                Net::new(&tracker.tracker, tracker.tracker_udp.as_deref(), bind).and_then(|net| {
                    let (start_ms, end_ms) = Get::span(start_at, end)?;
                    Ok(Get {
                        net,
                        name,
                        out,
                        stdout,
                        http,
                        start_ms,
                        end_ms,
                        upload: seeder_config(upload_kbps),
                        publisher: Get::publisher(publisher.as_deref())?,
                        seed,
                    })
                });
            start("vod", setup, get)
        }
    }
}
