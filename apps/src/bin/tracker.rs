//! `tracker`: runs a libnet P2P tracker (and optionally a relay) until
//! SIGINT or SIGTERM.
//!
//! ```text
//! tracker --tcp 0.0.0.0:7000 --udp 0.0.0.0:3478 --udp-alt 0.0.0.0:3479 \
//!         [--link HOST:PORT]... [--edge-key KEY] [--gossip-secs N] \
//!         [--relay IP:PORT] [--verbose]
//! ```
//!
//! Everything runs on one libnet loop. Signals are caught with
//! `signal-hook` on a plain thread, which passes them to the loop through a
//! libnet channel; the main coroutine then stops the tracker and returns,
//! and the runtime's shutdown closes every socket. A second signal while
//! stopping is not needed: stopping takes no time.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use clap::Parser;
use libnet::p2p::relay::{self, Relay};
use libnet::p2p::tracker::{Config, Tracker};
use libnet::p2p::{registry, rudp_config};
use libnet::rand::random_u64;
use libnet::rudp::RudpSocket;
use libnet::sync::{channel, Receiver};
use p2p_apps::http::{Metrics, Routes, Server};
use p2p_apps::{init_logging, resolve};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// A P2P tracker: registers nodes, answers address discovery (Whoami) on
/// two UDP ports, introduces peers for hole punching, keeps the chat's user
/// list; optionally a relay for peers that cannot punch through.
#[derive(Parser, Debug)]
#[command(name = "tracker", version)]
struct Args {
    /// TCP address for control connections (nodes and linked trackers).
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:7000")]
    tcp: SocketAddr,
    /// UDP address answering Whoami (public address discovery).
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:3478")]
    udp: SocketAddr,
    /// Second UDP address, another port of the same IP: NAT classification
    /// needs answers from it.
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:3479")]
    udp_alt: SocketAddr,
    /// Another tracker's TCP address to link to (repeat for several).
    #[arg(long = "link", value_name = "HOST:PORT")]
    links: Vec<String>,
    /// The key edges and sources must present (and room allocation).
    /// Note that other local users can see command lines.
    #[arg(long, value_name = "KEY", default_value = "")]
    edge_key: String,
    /// Seconds between gossip rounds with linked trackers.
    #[arg(long, value_name = "N", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    gossip_secs: u64,
    /// Also run a relay on an RUDP socket bound here, for peers whose
    /// NATs cannot be punched (symmetric against port-restricted or
    /// symmetric). Give chats the same address with their --relay.
    #[arg(long, value_name = "IP:PORT")]
    relay: Option<SocketAddr>,
    /// HTTP address of the Prometheus metrics (/metrics); "off" to disable.
    #[arg(long, value_name = "IP:PORT|off", default_value = "127.0.0.1:9000")]
    metrics: String,
    /// Log every frame received (on stderr; RUST_LOG overrides the level).
    #[arg(long)]
    verbose: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(if args.verbose { "info" } else { "warn" });
    let mut links = Vec::new();
    for l in &args.links {
        match resolve("--link", l) {
            Ok(a) => links.push(a),
            Err(e) => {
                eprintln!("tracker: error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tracker: error: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (sig_tx, sig_rx) = channel::<i32>(4);
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for s in signals.forever() {
                // A plain thread: the send blocks this thread only.
                if sig_tx.send(s).is_err() {
                    break;
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("tracker: error: cannot start the signal thread: {e}");
        return ExitCode::FAILURE;
    }
    let rt = match libnet::Runtime::builder().loops(1).build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tracker: error: cannot start the libnet runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.run(move || serve(args, links, sig_rx)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("tracker: error: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("tracker: error: the runtime stopped: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a line on stdout from a pool thread (a loop thread must not
/// block on a pipe); returns once it is written.
fn say(line: String) {
    libnet::spawn_blocking(move || {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    });
}

fn metrics(t: &Tracker) -> String {
    let s = t.stats();
    let mut m = Metrics::default();
    m.gauge(
        "p2plive_tracker_nodes",
        "Nodes registered here.",
        s.nodes as f64,
    )
    .gauge_labeled(
        "p2plive_tracker_nodes_by_role",
        "Nodes registered here, by role.",
        &[("role", "edge")],
        s.edges as f64,
    )
    .gauge_labeled(
        "p2plive_tracker_nodes_by_role",
        "Nodes registered here, by role.",
        &[("role", "source")],
        s.sources as f64,
    )
    .gauge_labeled(
        "p2plive_tracker_nodes_by_role",
        "Nodes registered here, by role.",
        &[("role", "peer")],
        s.peers as f64,
    )
    .gauge(
        "p2plive_tracker_rooms",
        "Rooms with nodes registered here.",
        s.rooms as f64,
    )
    .gauge(
        "p2plive_tracker_linked_trackers",
        "Other trackers known.",
        s.trackers as f64,
    );
    m.finish()
}

fn serve(args: Args, links: Vec<SocketAddr>, signals: Receiver<i32>) -> Result<(), String> {
    let id = random_u64();
    let config = Config {
        id,
        tcp: args.tcp,
        udp: args.udp,
        udp_alt: Some(args.udp_alt),
        links,
        gossip: Duration::from_secs(args.gossip_secs),
        registry: registry::Config {
            edge_key: args.edge_key.into_bytes(),
            ..registry::Config::default()
        },
        verbose: args.verbose,
        ..Config::default()
    };
    let links = config.links.clone();
    let metrics_at = match args.metrics.as_str() {
        "off" => None,
        m => Some(resolve("--metrics", m)?),
    };
    // The bind errors name the address (and so the flag).
    let tracker =
        Rc::new(Tracker::start(config).map_err(|e| format!("cannot start the tracker: {e}"))?);
    let http = match metrics_at {
        Some(at) => {
            let t = tracker.clone();
            let routes = Routes {
                metrics: Some(Rc::new(move || metrics(&t))),
                ..Routes::default()
            };
            let server = Server::bind(at, routes).map_err(|e| format!("{e} (--metrics)"))?;
            let bound = server.local_addr();
            Some((server.start(), bound))
        }
        None => None,
    };
    let relay = match args.relay {
        Some(at) => {
            let sock = RudpSocket::bind(at, rudp_config())
                .map_err(|e| format!("cannot start the relay (--relay): {e}"))?;
            let bound = sock.local_addr().map_err(|e| e.to_string())?;
            Some((Relay::start(Rc::new(sock), relay::Config::default()), bound))
        }
        None => None,
    };
    let links: Vec<String> = links.iter().map(ToString::to_string).collect();
    say(format!(
        "tracker {id:016x}: tcp {} udp {} udp-alt {} relay {} metrics {} links [{}]",
        tracker.tcp_addr(),
        tracker.udp_addr(),
        tracker
            .udp_alt_addr()
            .map_or_else(|| "none".to_string(), |a| a.to_string()),
        relay
            .as_ref()
            .map_or_else(|| "none".to_string(), |(_, a)| a.to_string()),
        http.as_ref()
            .map_or_else(|| "off".to_string(), |(_, a)| format!("http://{a}/metrics")),
        links.join(", ")
    ));
    let sig = signals.recv().map_err(|_| "the signal thread ended")?;
    tracker.stop();
    let name = match sig {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "a signal",
    };
    let pairs = relay.as_ref().map_or(0, |(r, _)| r.pairs_completed());
    say(format!(
        "tracker {id:016x}: stopping on {name} ({} nodes registered, {pairs} relayed pairs served)",
        tracker.node_count()
    ));
    Ok(())
}
