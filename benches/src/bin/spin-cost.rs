//! What a loop's idle spin (`libnet::runtime::Builder::spin`) costs and buys.
//!
//! A sender thread sends one small datagram every GAP µs to a one-loop libnet
//! runtime whose coroutine receives them. For each gap, with the spin off
//! and at its default, it prints the loop thread's CPU time as a share of
//! the wall clock, and the mean one-way latency from `send_to` to the
//! coroutine's `recv_from` returning. The spin should cost nothing when
//! events are far apart (the window falls to zero) and trade CPU for
//! latency when they follow each other within the window.
//!
//! `spin-cost [--secs S] [--gaps 1000,200,100,50,30,20]` (Linux: the CPU
//! time comes from /proc/thread-self/schedstat).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
#[command(about = "CPU and latency of a libnet loop's idle spin, per gap between datagrams")]
struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 1.0)]
    secs: f64,
    /// Gaps between datagrams, in microseconds, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,200,100,50,30,20")]
    gaps: Vec<u64>,
}

/// CPU time this thread has run, from the scheduler's own accounting.
fn thread_cpu() -> Result<Duration, String> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat")
        .map_err(|e| format!("/proc/thread-self/schedstat: {e}"))?;
    let ns = s
        .split_whitespace()
        .next()
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| format!("unexpected schedstat {s:?}"))?;
    Ok(Duration::from_nanos(ns))
}

/// Sends `count` datagrams to `to`, one every `gap`, each carrying its send
/// time in ns since `base`.
fn pace(to: SocketAddr, gap: Duration, count: u64, base: Instant) {
    let u = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    let start = Instant::now();
    for i in 0..count {
        let at = start + gap * i as u32;
        loop {
            let now = Instant::now();
            if now >= at {
                break;
            }
            // Sleep through long waits, then yield until it is time (the OS
            // sleeps too coarsely for short gaps); yielding, not spinning,
            // so a loop sharing this CPU gets it.
            if at - now > Duration::from_micros(200) {
                std::thread::sleep(Duration::from_micros(100));
            } else {
                std::thread::yield_now();
            }
        }
        let sent = base.elapsed().as_nanos() as u64;
        u.send_to(&sent.to_le_bytes(), to).expect("send");
    }
}

/// One measurement: loop CPU share, mean one-way latency, datagrams the
/// kernel dropped.
struct Measured {
    cpu: f64,
    latency: Duration,
    lost: u64,
}

fn measure(gap: Duration, spin: Duration, secs: f64) -> Result<Measured, String> {
    let count = (secs / gap.as_secs_f64()).max(10.0) as u64;
    let rt = libnet::Runtime::builder()
        .loops(1)
        .spin(spin)
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.run(move || -> Result<Measured, String> {
        let s = libnet::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        // A datagram the kernel dropped must not hang the run.
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .map_err(|e| e.to_string())?;
        let to = s.local_addr().map_err(|e| e.to_string())?;
        let base = Instant::now();
        let sender = std::thread::spawn(move || pace(to, gap, count, base));
        let (cpu0, wall0) = (thread_cpu()?, Instant::now());
        let mut latency = Duration::ZERO;
        let mut buf = [0u8; 16];
        let mut got = 0u64;
        while got < count {
            let n = match s.recv_from(&mut buf) {
                Ok((n, _)) => n,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
                Err(e) => return Err(e.to_string()),
            };
            let now = base.elapsed();
            let sent = u64::from_le_bytes(buf[..n.min(8)].try_into().unwrap_or([0; 8]));
            latency += now.saturating_sub(Duration::from_nanos(sent));
            got += 1;
        }
        let (cpu, wall) = (thread_cpu()? - cpu0, wall0.elapsed());
        sender.join().map_err(|_| "sender panicked".to_string())?;
        Ok(Measured {
            cpu: cpu.as_secs_f64() / wall.as_secs_f64(),
            latency: latency / got.max(1) as u32,
            lost: count - got,
        })
    })
    .map_err(|e| format!("runtime stopped: {e}"))?
}

fn main() -> ExitCode {
    let args = Args::parse();
    let spin = libnet::Runtime::builder().spin_max();
    println!(
        "gap µs | loop CPU, spin off | loop CPU, spin {} µs | latency µs, off | latency µs, spin | lost",
        spin.as_micros()
    );
    for &gap_us in &args.gaps {
        let gap = Duration::from_micros(gap_us.max(1));
        let run = |s| measure(gap, s, args.secs);
        match (run(Duration::ZERO), run(spin)) {
            (Ok(off), Ok(on)) => println!(
                "{gap_us:>6} | {:>17.0}% | {:>19.0}% | {:>15.1} | {:>16.1} | {}",
                off.cpu * 100.0,
                on.cpu * 100.0,
                off.latency.as_secs_f64() * 1e6,
                on.latency.as_secs_f64() * 1e6,
                off.lost + on.lost
            ),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("spin-cost: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
