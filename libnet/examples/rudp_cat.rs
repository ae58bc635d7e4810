//! Copies stdin to stdout across a reliable-UDP (KCP) connection.
//!
//! ```text
//! rudp_cat --listen 0.0.0.0:9000 > out        # receives one connection, writes it to stdout
//! rudp_cat --connect 198.18.0.2:9000 < in     # sends stdin, closes in order
//! ```
//!
//! Both print the connection's stats (RTT, retransmissions, loss) on stderr
//! at the end. Options: `--mode fast|normal|slow`, `--timeout SECS` (give up
//! when the peer is silent that long, default 30).
//!
//! Stdin and stdout are plain blocking files, so a thread of their own reads
//! (writes) them and hands chunks to the coroutine over a bounded libnet
//! channel, which works between threads and coroutines alike.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use libnet::rudp::{Config, Mode, RudpConnection, RudpSocket};
use libnet::sync::channel;

const USAGE: &str =
    "usage: rudp_cat (--listen ADDR | --connect ADDR) [--mode fast|normal|slow] [--timeout SECS]
  --listen ADDR   accept one connection on ADDR and copy it to stdout
  --connect ADDR  connect to ADDR and copy stdin to it
  --mode          KCP preset (default fast)
  --timeout SECS  give up when the peer is silent this long (default 30)";

enum Role {
    Listen(SocketAddr),
    Connect(SocketAddr),
}

struct Args {
    role: Role,
    config: Config,
}

fn parse() -> Result<Args, String> {
    let mut role = None;
    let mut config = Config {
        idle_timeout: Duration::from_secs(30),
        keepalive: Duration::from_secs(5),
        ..Config::default()
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let addr = |v: &str| {
            v.parse::<SocketAddr>()
                .map_err(|e| format!("{flag} {v}: {e}"))
        };
        match flag.as_str() {
            "--listen" => role = Some(Role::Listen(addr(&v)?)),
            "--connect" => role = Some(Role::Connect(addr(&v)?)),
            "--mode" => {
                config.mode = match v.as_str() {
                    "fast" => Mode::Fast,
                    "normal" => Mode::Normal,
                    "slow" => Mode::Slow,
                    _ => return Err(format!("--mode {v}: expected fast, normal or slow")),
                }
            }
            "--timeout" => {
                let secs: u64 = v.parse().map_err(|e| format!("--timeout {v}: {e}"))?;
                if secs == 0 {
                    return Err("--timeout must be positive".into());
                }
                config.idle_timeout = Duration::from_secs(secs);
                config.handshake_timeout = Duration::from_secs(secs);
            }
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    let role = role.ok_or("one of --listen or --connect is required")?;
    Ok(Args { role, config })
}

/// Chunks of stdin, read on a thread of their own.
fn stdin_chunks() -> channel::Receiver<io::Result<Vec<u8>>> {
    let (tx, rx) = libnet::sync::channel(64);
    std::thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        loop {
            let mut buf = vec![0u8; 64 * 1024];
            match stdin.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send(Ok(buf)).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    });
    rx
}

fn report(what: &str, conn: &RudpConnection, bytes: u64, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "rudp_cat: {what} {bytes} bytes in {secs:.2} s ({:.1} MB/s) with {}",
        bytes as f64 / secs.max(1e-9) / 1e6,
        conn.peer_addr()
    );
    if let Some(s) = conn.stats() {
        eprintln!(
            "rudp_cat: rtt {:?}, rto {:?}, packets sent {} received {}, retransmissions {} ({:.1}% loss seen), bytes sent {} received {}",
            s.rtt,
            s.rto,
            s.packets_sent,
            s.packets_received,
            s.retransmissions,
            s.loss_seen * 100.0,
            s.bytes_sent,
            s.bytes_received
        );
    }
}

fn listen(addr: SocketAddr, config: Config) -> io::Result<()> {
    let socket = RudpSocket::bind(addr, config)?;
    eprintln!("rudp_cat: listening on {}", socket.local_addr()?);
    let (conn, from) = socket.accept()?;
    eprintln!("rudp_cat: connection from {from}");
    let started = Instant::now();
    // Stdout is written by a thread of its own, fed over a bounded channel.
    let (tx, rx) = libnet::sync::channel::<Vec<u8>>(64);
    let writer = std::thread::spawn(move || -> io::Result<()> {
        let mut out = io::stdout().lock();
        for chunk in rx.iter() {
            out.write_all(&chunk)?;
        }
        out.flush()
    });
    let mut bytes = 0u64;
    while let Some(msg) = conn.recv()? {
        bytes += msg.len() as u64;
        if tx.send(msg).is_err() {
            break;
        }
    }
    drop(tx);
    report("received", &conn, bytes, started);
    let written = libnet::spawn_blocking(move || writer.join());
    match written {
        Ok(r) => r,
        Err(_) => Err(io::Error::other("stdout writer panicked")),
    }
}

fn connect(addr: SocketAddr, config: Config) -> io::Result<()> {
    let local: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("valid")
    } else {
        "[::]:0".parse().expect("valid")
    };
    let socket = RudpSocket::bind(local, config)?;
    let conn = socket.connect(addr)?;
    let started = Instant::now();
    let input = stdin_chunks();
    let mut bytes = 0u64;
    let max = 16 * 1024;
    for chunk in input.iter() {
        let chunk = chunk?;
        for part in chunk.chunks(max) {
            conn.send(part)?;
        }
        bytes += chunk.len() as u64;
    }
    conn.close();
    // Wait until the peer has everything and has seen the close.
    while conn.recv()?.is_some() {}
    report("sent", &conn, bytes, started);
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rudp_cat: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = libnet::Runtime::builder().loops(1).build().and_then(|rt| {
        rt.run(move || match args.role {
            Role::Listen(a) => listen(a, args.config),
            Role::Connect(a) => connect(a, args.config),
        })
        .map_err(|e| io::Error::other(e.to_string()))?
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rudp_cat: {e}");
            ExitCode::FAILURE
        }
    }
}
