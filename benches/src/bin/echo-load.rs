//! Load client for any TCP echo server: C connections, each doing 64-byte
//! request/response round trips, on one thread; prints round trips per second.
//!
//! `echo-load --addr 127.0.0.1:7000 [--conns 100] [--secs 5] [--warmup 1] [--size 64]`

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use benches::client::{self, ClientConfig};

const USAGE: &str =
    "usage: echo-load --addr IP:PORT [--conns N] [--secs S] [--warmup S] [--size BYTES]
  --addr    echo server to load (required)
  --conns   concurrent connections, one message in flight each (default 100)
  --secs    measured seconds (default 5)
  --warmup  warm-up seconds, not counted (default 1)
  --size    message size in bytes (default 64)";

fn parse() -> Result<ClientConfig, String> {
    let mut addr: Option<SocketAddr> = None;
    let (mut conns, mut secs, mut warmup, mut size) = (100usize, 5.0f64, 1.0f64, 64usize);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {v}: {e}");
        match flag.as_str() {
            "--addr" => addr = Some(v.parse().map_err(|e| bad(&e))?),
            "--conns" => conns = v.parse().map_err(|e| bad(&e))?,
            "--secs" => secs = v.parse().map_err(|e| bad(&e))?,
            "--warmup" => warmup = v.parse().map_err(|e| bad(&e))?,
            "--size" => size = v.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    let addr = addr.ok_or("--addr is required")?;
    if conns == 0 || size == 0 || secs.is_nan() || secs <= 0.0 || warmup.is_nan() || warmup < 0.0 {
        return Err("--conns, --size and --secs must be positive".into());
    }
    let mut cfg = ClientConfig::new(addr, conns);
    cfg.measure = Duration::from_secs_f64(secs);
    cfg.warmup = Duration::from_secs_f64(warmup);
    cfg.message_size = size;
    Ok(cfg)
}

fn main() -> ExitCode {
    let cfg = match parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("echo-load: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match client::run(&cfg) {
        Ok(r) => {
            println!(
                "{} connections, {}-byte messages: {:.0} round trips/s over {:.1} s \
                 (per connection min {} max {}; connected in {} ms)",
                r.connections,
                cfg.message_size,
                r.round_trips_per_sec(),
                r.elapsed.as_secs_f64(),
                r.min_per_connection,
                r.max_per_connection,
                r.connect_time.as_millis()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("echo-load: {e}");
            ExitCode::FAILURE
        }
    }
}
