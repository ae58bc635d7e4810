//! A TCP echo server on libnet, for benchmarking with any client.
//!
//! `cargo run --release -p libnet --example echo_server -- --addr 127.0.0.1:7000 --threads 2`
//!
//! Every accepted connection gets TCP_NODELAY and a coroutine that writes back
//! whatever it reads. Connections are spread over the loops (`--spread`).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;

use libnet::net::{serve, SocketBuilder, Spread};

struct Args {
    addr: SocketAddr,
    threads: usize,
    spread: Spread,
}

const USAGE: &str = "usage: echo_server [--addr IP:PORT] [--threads N] [--spread round-robin|least-connections|this-loop]
  --addr     address to listen on (default 127.0.0.1:7000)
  --threads  number of event loops (default: number of cores)
  --spread   how accepted connections are assigned to loops (default round-robin)";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addr: "127.0.0.1:7000".parse().expect("valid default"),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        spread: Spread::RoundRobin,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--addr" => {
                let v = value("--addr")?;
                args.addr = v.parse().map_err(|e| format!("--addr {v}: {e}"))?;
            }
            "--threads" => {
                let v = value("--threads")?;
                args.threads = match v.parse() {
                    Ok(n) if n > 0 => n,
                    _ => return Err(format!("--threads {v}: expected a positive integer")),
                };
            }
            "--spread" => {
                args.spread = match value("--spread")?.as_str() {
                    "round-robin" => Spread::RoundRobin,
                    "least-connections" => Spread::LeastConnections,
                    "this-loop" => Spread::ThisLoop,
                    other => return Err(format!("--spread {other}: unknown strategy")),
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn echo(mut conn: libnet::net::TcpStream) {
    if let Err(e) = conn.set_nodelay(true) {
        eprintln!("echo_server: set_nodelay: {e}");
    }
    let mut buf = [0u8; 16 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("echo_server: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = match libnet::Runtime::builder().loops(args.threads).build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("echo_server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.run(move || -> std::io::Result<()> {
        let listener = SocketBuilder::new()
            .reuse_address(true)
            .backlog(4096)
            .listen(args.addr)?;
        println!(
            "listening on {} ({} loops, {:?})",
            listener.local_addr()?,
            args.threads,
            args.spread
        );
        serve(&listener, args.spread, echo)
    });
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("echo_server: {e}");
            ExitCode::FAILURE
        }
        Err(exit) => ExitCode::from(exit.code as u8),
    }
}
