//! TCP echo server with a selectable implementation, used by `benches/echo.rs`
//! to compare libnet against its yardsticks under one and the same client.
//!
//! ```text
//! echo-server --impl tokio-mt|tokio-ct|may|mio|libnet --addr 127.0.0.1:PORT --threads N
//!             [--may-unpinned] [--parent-watch]
//! ```
//!
//! Every implementation reads whatever arrives on a connection and writes it
//! back, with `TCP_NODELAY` set on accepted sockets. Once the listener is bound
//! the server prints `listening on ADDR` (the actually bound address) on
//! stdout; the bench harness waits for that line.
//!
//! The server runs until it is killed. `--parent-watch` additionally makes it
//! exit as soon as its stdin reaches end-of-file, so a server spawned by the
//! harness never outlives a harness that died.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;

/// Read buffer size per connection, the same for every implementation.
const BUF_SIZE: usize = 4096;

/// Listen backlog, the same for every implementation (may hard-codes 1024;
/// mio's and std's default of 128 would make the 1000-connection runs pay
/// SYN retransmissions while connecting).
const BACKLOG: i32 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Impl {
    TokioMt,
    TokioCt,
    May,
    Mio,
    Libnet,
}

impl Impl {
    fn parse(s: &str) -> Option<Impl> {
        Some(match s {
            "tokio-mt" => Impl::TokioMt,
            "tokio-ct" => Impl::TokioCt,
            "may" => Impl::May,
            "mio" => Impl::Mio,
            "libnet" => Impl::Libnet,
            _ => return None,
        })
    }
}

struct Args {
    imp: Impl,
    addr: SocketAddr,
    threads: usize,
    may_unpinned: bool,
    parent_watch: bool,
}

const USAGE: &str = "usage: echo-server --impl tokio-mt|tokio-ct|may|mio|libnet \
                     --addr 127.0.0.1:PORT [--threads N] [--may-unpinned] [--parent-watch]";

fn parse_args() -> Result<Args, String> {
    let mut imp = None;
    let mut addr = None;
    let mut threads = 1usize;
    let mut may_unpinned = false;
    let mut parent_watch = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--impl" => {
                let v = value("--impl")?;
                imp = Some(Impl::parse(&v).ok_or_else(|| format!("unknown --impl {v:?}"))?);
            }
            "--addr" => {
                let v = value("--addr")?;
                addr = Some(
                    v.parse::<SocketAddr>()
                        .map_err(|e| format!("bad --addr {v:?}: {e}"))?,
                );
            }
            "--threads" => {
                let v = value("--threads")?;
                threads = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("bad --threads {v:?}"))?;
            }
            "--may-unpinned" => may_unpinned = true,
            "--parent-watch" => parent_watch = true,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(Args {
        imp: imp.ok_or_else(|| format!("--impl is required\n{USAGE}"))?,
        addr: addr.ok_or_else(|| format!("--addr is required\n{USAGE}"))?,
        threads,
        may_unpinned,
        parent_watch,
    })
}

/// Tell the harness the server is ready. Every implementation must call this
/// exactly once, after its listener is bound, with the bound address.
fn announce(addr: SocketAddr) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "listening on {addr}");
    let _ = out.flush();
}

/// Exit the whole process once stdin is closed (the harness holds the other
/// end of the pipe, so this fires when the harness exits or dies).
fn watch_parent() {
    std::thread::Builder::new()
        .name("parent-watch".into())
        .spawn(|| {
            let mut sink = [0u8; 64];
            let mut stdin = io::stdin().lock();
            loop {
                match stdin.read(&mut sink) {
                    Ok(0) => std::process::exit(0),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => std::process::exit(0),
                }
            }
        })
        .expect("spawn parent-watch thread");
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("echo-server: {msg}");
            return ExitCode::from(2);
        }
    };
    if args.parent_watch {
        watch_parent();
    }
    // Serve as many connections as the hard limit allows.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("echo-server: cannot raise RLIMIT_NOFILE: {e}");
    }
    let res = match args.imp {
        Impl::TokioMt => serve_tokio(args.addr, Some(args.threads)),
        Impl::TokioCt => serve_tokio(args.addr, None),
        Impl::May => serve_may(args.addr, args.threads, args.may_unpinned),
        Impl::Mio => {
            if args.threads != 1 {
                eprintln!(
                    "echo-server: the mio server is single-threaded; ignoring --threads {}",
                    args.threads
                );
            }
            serve_mio(args.addr)
        }
        Impl::Libnet => serve_libnet(args.addr, args.threads),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo-server ({:?}): {e}", args.imp);
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// libnet
// ---------------------------------------------------------------------------

/// libnet echo server: `threads` loops, connections spread by
/// `libnet::net::serve` (round-robin unless env `ECHO_LIBNET_SPREAD` says
/// `least-connections` or `this-loop`), one coroutine per connection.
fn serve_libnet(addr: SocketAddr, threads: usize) -> io::Result<()> {
    use libnet::net::{serve, SocketBuilder, Spread};
    let spread = match std::env::var("ECHO_LIBNET_SPREAD").as_deref() {
        Ok("least-connections") => Spread::LeastConnections,
        Ok("this-loop") => Spread::ThisLoop,
        Ok("round-robin") | Err(_) => Spread::RoundRobin,
        Ok(other) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                "ECHO_LIBNET_SPREAD={other}: expected round-robin, least-connections or this-loop"
            ),
            ))
        }
    };
    let rt = libnet::Runtime::builder().loops(threads).build()?;
    let run = rt.run(move || -> io::Result<()> {
        let listener = SocketBuilder::new()
            .reuse_address(true)
            .backlog(BACKLOG)
            .listen(addr)?;
        announce(listener.local_addr()?);
        serve(&listener, spread, |mut conn| {
            if conn.set_nodelay(true).is_err() {
                return;
            }
            let mut buf = [0u8; BUF_SIZE];
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
        })
    });
    match run {
        Ok(r) => r,
        Err(exit) => Err(io::Error::other(exit.to_string())),
    }
}

// ---------------------------------------------------------------------------
// tokio (multi-thread when `workers` is Some, current-thread otherwise)
// ---------------------------------------------------------------------------

fn serve_tokio(addr: SocketAddr, workers: Option<usize>) -> io::Result<()> {
    let rt = match workers {
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
    };
    rt.block_on(async move {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(BACKLOG as u32)?;
        announce(listener.local_addr()?);
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(x) => x,
                // Running out of descriptors or a connection reset before
                // accept is not fatal for an echo server.
                Err(e) if is_transient_accept_error(&e) => continue,
                Err(e) => return Err(e),
            };
            tokio::spawn(tokio_conn(stream));
        }
    })
}

async fn tokio_conn(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream.set_nodelay(true).is_err() {
        return;
    }
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// may
// ---------------------------------------------------------------------------

fn serve_may(addr: SocketAddr, workers: usize, unpinned: bool) -> io::Result<()> {
    // Configuration must happen before the scheduler is first used. may pins
    // its workers to cores by default; `--may-unpinned` turns that off.
    may::config().set_workers(workers);
    if unpinned {
        may::config().set_worker_pin(false);
    }
    let listener = may::net::TcpListener::bind(addr)?;
    announce(listener.local_addr()?);
    // SAFETY: may's `spawn` is unsafe because a coroutine must not hold
    // thread-local references across yields and must fit in its fixed-size
    // stack. The accept loop uses no thread-locals and keeps only a few
    // words on its stack.
    let acceptor = unsafe { may::coroutine::spawn(move || may_accept_loop(listener)) };
    match acceptor.join() {
        Ok(res) => res,
        Err(_) => Err(io::Error::other("may accept coroutine panicked")),
    }
}

fn may_accept_loop(listener: may::net::TcpListener) -> io::Result<()> {
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if is_transient_accept_error(&e) => continue,
            Err(e) => return Err(e),
        };
        // SAFETY: as for the accept loop; the connection's buffer is on the
        // heap and it touches no thread-locals.
        unsafe {
            may::coroutine::spawn(move || may_conn(stream));
        }
    }
}

fn may_conn(mut stream: may::net::TcpStream) {
    if stream.set_nodelay(true).is_err() {
        return;
    }
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stream.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// raw mio: one thread, edge-triggered, slab of connections
// ---------------------------------------------------------------------------

/// Stop reading from a connection while this many bytes wait to be echoed
/// (the peer is not reading its replies); resume once they are written.
const MIO_MAX_PENDING: usize = 1 << 20;

const LISTENER: mio::Token = mio::Token(usize::MAX);

struct MioConn {
    stream: mio::net::TcpStream,
    /// Bytes read but not yet written back; `pending[sent..]` is still owed.
    pending: Vec<u8>,
    sent: usize,
}

enum Drive {
    Open,
    Close,
}

impl MioConn {
    /// Make all the progress possible until the socket would block.
    ///
    /// Readiness is edge-triggered, so this must leave the connection in a
    /// state where the next edge (readable or writable) will call it again:
    /// it returns only after a read or a write hit `WouldBlock`.
    fn drive(&mut self, buf: &mut [u8]) -> Drive {
        loop {
            // First flush what we owe.
            while self.sent < self.pending.len() {
                match self.stream.write(&self.pending[self.sent..]) {
                    Ok(0) => return Drive::Close,
                    Ok(n) => self.sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if self.pending.len() - self.sent >= MIO_MAX_PENDING {
                            // Back-pressure: wait for a writable edge.
                            return Drive::Open;
                        }
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Drive::Close,
                }
            }
            if self.sent == self.pending.len() {
                self.pending.clear();
                self.sent = 0;
            }
            // Then read one chunk and try to echo it straight away.
            let n = match self.stream.read(buf) {
                Ok(0) => return Drive::Close,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drive::Open,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Drive::Close,
            };
            if self.pending.is_empty() {
                let mut written = 0;
                while written < n {
                    match self.stream.write(&buf[written..n]) {
                        Ok(0) => return Drive::Close,
                        Ok(w) => written += w,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return Drive::Close,
                    }
                }
                if written < n {
                    self.pending.extend_from_slice(&buf[written..n]);
                }
            } else {
                self.pending.extend_from_slice(&buf[..n]);
            }
        }
    }
}

fn serve_mio(addr: SocketAddr) -> io::Result<()> {
    use mio::{Events, Interest, Poll};

    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut listener = mio::net::TcpListener::from_std(std_listener(addr)?);
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    announce(listener.local_addr()?);

    let mut conns: slab::Slab<MioConn> = slab::Slab::new();
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                loop {
                    let (mut stream, _) = match listener.accept() {
                        Ok(x) => x,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if is_transient_accept_error(&e) => continue,
                        Err(e) => return Err(e),
                    };
                    if stream.set_nodelay(true).is_err() {
                        continue;
                    }
                    let entry = conns.vacant_entry();
                    let token = mio::Token(entry.key());
                    poll.registry().register(
                        &mut stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    let conn = entry.insert(MioConn {
                        stream,
                        pending: Vec::new(),
                        sent: 0,
                    });
                    // Data may already be waiting; edges before registration
                    // are not reported.
                    if let Drive::Close = conn.drive(&mut buf) {
                        let mut conn = conns.remove(token.0);
                        let _ = poll.registry().deregister(&mut conn.stream);
                    }
                }
                continue;
            }
            let key = event.token().0;
            let Some(conn) = conns.get_mut(key) else {
                continue;
            };
            if let Drive::Close = conn.drive(&mut buf) {
                let mut conn = conns.remove(key);
                let _ = poll.registry().deregister(&mut conn.stream);
            }
        }
    }
}

/// A non-blocking std listener bound to `addr` with [`BACKLOG`].
fn std_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

// ---------------------------------------------------------------------------

/// Accept errors that concern one would-be connection, not the listener.
/// (Descriptor exhaustion is not among them: the soft limit is raised to the
/// hard limit at start-up, and running out after that is reported as fatal
/// rather than retried in a busy loop.)
fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}
