//! The echo load client: one thread, one mio `Poll`, `C` connections.
//!
//! Every connection runs a closed loop of request/response round trips: write
//! one message (64 bytes by default), wait until exactly that many bytes have
//! been echoed back, check them, repeat. There is never more than one message
//! in flight per connection, so the figure measured — completed round trips
//! per second — is set by the latency of the server's read→write path and by
//! how well it serves many connections at once.
//!
//! The run is split into a warm-up (round trips counted nowhere) and a
//! measured window. Everything is bounded in time: connecting has its own
//! deadline, and if no round trip completes on any connection for
//! [`ClientConfig::stall_timeout`] the run fails instead of hanging.
//!
//! The client is deliberately the same code for every server, so that
//! differences between runs come from the server alone. It is single-threaded
//! so that on a small machine it leaves as much CPU as possible to the server.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

/// What to run against which server.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Address of the echo server.
    pub addr: SocketAddr,
    /// Number of concurrent connections, each with one message in flight.
    pub connections: usize,
    /// Bytes per message (and per echo).
    pub message_size: usize,
    /// Round trips before the measured window; not counted.
    pub warmup: Duration,
    /// Length of the measured window.
    pub measure: Duration,
    /// Deadline for establishing *all* connections.
    pub connect_timeout: Duration,
    /// Fail if no round trip completes on any connection for this long.
    pub stall_timeout: Duration,
    /// Connection attempts in flight at once while connecting (keeps the
    /// server's accept backlog from overflowing, which would cost a SYN
    /// retransmission of a second or more).
    pub max_connecting: usize,
}

impl ClientConfig {
    /// Defaults: 64-byte messages, 2 s warm-up, 5 s measured, 10 s to
    /// connect, 3 s stall limit, 128 connection attempts in flight.
    pub fn new(addr: SocketAddr, connections: usize) -> ClientConfig {
        ClientConfig {
            addr,
            connections,
            message_size: 64,
            warmup: Duration::from_secs(2),
            measure: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(3),
            max_connecting: 128,
        }
    }
}

/// Result of one client run.
#[derive(Debug, Clone)]
pub struct ClientReport {
    /// Number of connections used.
    pub connections: usize,
    /// Round trips completed inside the measured window.
    pub round_trips: u64,
    /// Actual length of the measured window.
    pub elapsed: Duration,
    /// Fewest round trips any single connection completed while measuring
    /// (0 means the server starved a connection).
    pub min_per_connection: u64,
    /// Most round trips any single connection completed while measuring.
    pub max_per_connection: u64,
    /// Time taken to establish all connections.
    pub connect_time: Duration,
}

impl ClientReport {
    /// Completed round trips per second of the measured window.
    pub fn round_trips_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.round_trips as f64 / secs
        } else {
            0.0
        }
    }
}

/// Moments of a run reported to the observer of [`run_observed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// All connections are up and the warm-up begins.
    WarmupStart,
    /// The measured window begins.
    MeasureStart,
    /// The measured window ends.
    MeasureEnd,
}

/// Run the load described by `cfg` and report the measured window.
pub fn run(cfg: &ClientConfig) -> io::Result<ClientReport> {
    run_observed(cfg, |_| {})
}

/// Like [`run`], calling `observer` at each [`Phase`] boundary (for example
/// to sample the server's CPU time over exactly the measured window).
pub fn run_observed(
    cfg: &ClientConfig,
    mut observer: impl FnMut(Phase),
) -> io::Result<ClientReport> {
    if cfg.connections == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "connections must be at least 1",
        ));
    }
    if cfg.message_size == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "message_size must be at least 1",
        ));
    }
    ensure_fd_limit(cfg.connections)?;

    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);

    let connect_start = Instant::now();
    let mut conns = connect_all(cfg, &mut poll, &mut events)?;
    let connect_time = connect_start.elapsed();

    let mut scratch = vec![0u8; cfg.message_size];
    let mut total: u64 = 0;

    observer(Phase::WarmupStart);
    let warm_start = Instant::now();
    let warm_end = warm_start + cfg.warmup;
    let mut measure_start: Option<Instant> = None;
    let mut last_progress = warm_start;

    // Kick off every connection; from here on only readiness drives them.
    for (i, conn) in conns.iter_mut().enumerate() {
        conn.running = true;
        let done = conn.drive(&mut scratch).map_err(|e| context(e, i))?;
        total += done;
    }

    loop {
        let now = Instant::now();
        if measure_start.is_none() && now >= warm_end {
            measure_start = Some(now);
            for conn in &mut conns {
                conn.measured = 0;
                conn.measuring = true;
            }
            observer(Phase::MeasureStart);
        }
        if let Some(start) = measure_start {
            if now >= start + cfg.measure {
                observer(Phase::MeasureEnd);
                let elapsed = now - start;
                let round_trips: u64 = conns.iter().map(|c| c.measured).sum();
                let min = conns.iter().map(|c| c.measured).min().unwrap_or(0);
                let max = conns.iter().map(|c| c.measured).max().unwrap_or(0);
                if round_trips == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "server did not answer: no round trip completed in the \
                             {elapsed:?} measured window ({total} in total)"
                        ),
                    ));
                }
                return Ok(ClientReport {
                    connections: conns.len(),
                    round_trips,
                    elapsed,
                    min_per_connection: min,
                    max_per_connection: max,
                    connect_time,
                });
            }
        }
        let stall_at = last_progress + cfg.stall_timeout;
        if now >= stall_at {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "server stopped answering: no round trip completed on any of {} \
                     connections for {:?} ({total} completed before)",
                    conns.len(),
                    cfg.stall_timeout
                ),
            ));
        }
        let boundary = match measure_start {
            None => warm_end,
            Some(start) => start + cfg.measure,
        };
        let wake = boundary.min(stall_at);
        poll_once(&mut poll, &mut events, wake.saturating_duration_since(now))?;

        let mut progressed = false;
        for event in events.iter() {
            let i = event.token().0;
            let Some(conn) = conns.get_mut(i) else {
                continue;
            };
            let done = conn.drive(&mut scratch).map_err(|e| context(e, i))?;
            if done > 0 {
                total += done;
                progressed = true;
            }
        }
        if progressed {
            last_progress = Instant::now();
        }
    }
}

/// One client connection and its position in the current round trip.
struct Conn {
    stream: TcpStream,
    /// Message to send; its first bytes carry the round number, so a server
    /// echoing stale data is caught.
    out: Vec<u8>,
    /// Bytes of `out` written so far.
    sent: usize,
    /// Bytes of the echo received (and checked) so far.
    recvd: usize,
    /// Round trips completed on this connection since it started.
    rounds: u64,
    /// Round trips completed inside the measured window.
    measured: u64,
    measuring: bool,
    /// Set once the warm-up starts; readiness before that is ignored.
    running: bool,
    connected: bool,
}

impl Conn {
    fn new(stream: TcpStream, size: usize, index: usize) -> Conn {
        let mut out = vec![0u8; size];
        for (j, b) in out.iter_mut().enumerate() {
            *b = (index.wrapping_mul(31).wrapping_add(j.wrapping_mul(7)) & 0xff) as u8;
        }
        let mut conn = Conn {
            stream,
            out,
            sent: 0,
            recvd: 0,
            rounds: 0,
            measured: 0,
            measuring: false,
            running: false,
            connected: false,
        };
        conn.stamp();
        conn
    }

    /// Write the round number into the head of the message.
    fn stamp(&mut self) {
        let tag = self.rounds.to_le_bytes();
        let n = tag.len().min(self.out.len());
        self.out[..n].copy_from_slice(&tag[..n]);
    }

    /// Advance this connection as far as the socket allows; returns the
    /// number of round trips completed.
    ///
    /// Readiness is edge-triggered, so on return either the last read or the
    /// last write hit `WouldBlock` (a new edge will come), or the message was
    /// just written in full with nothing left to read (see below).
    fn drive(&mut self, scratch: &mut [u8]) -> io::Result<u64> {
        if !self.running {
            return Ok(0);
        }
        let size = self.out.len();
        let mut done = 0;
        loop {
            if self.sent < size {
                let fresh = self.sent == 0 && self.recvd == 0;
                match self.stream.write(&self.out[self.sent..]) {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "server stopped accepting data",
                        ))
                    }
                    Ok(n) => {
                        self.sent += n;
                        if self.sent < size {
                            continue;
                        }
                        if fresh {
                            // The whole message went out in one write and
                            // every byte ever sent before was already echoed
                            // and read: the receive buffer is empty, and the
                            // echo's arrival will raise a fresh readable edge.
                            // Skipping the read that would surely say
                            // WouldBlock saves a syscall per round trip.
                            return Ok(done);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            let want = size - self.recvd;
            match self.stream.read(&mut scratch[..want]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "server closed the connection",
                    ))
                }
                Ok(n) => {
                    if self.recvd + n > self.sent {
                        return Err(invalid("server sent more bytes than it was sent"));
                    }
                    if scratch[..n] != self.out[self.recvd..self.recvd + n] {
                        return Err(invalid("echoed bytes differ from the bytes sent"));
                    }
                    self.recvd += n;
                    if self.recvd == size {
                        done += 1;
                        self.rounds += 1;
                        if self.measuring {
                            self.measured += 1;
                        }
                        self.sent = 0;
                        self.recvd = 0;
                        self.stamp();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(done),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Open `cfg.connections` connections, at most `cfg.max_connecting` attempts
/// at a time, within `cfg.connect_timeout`.
fn connect_all(cfg: &ClientConfig, poll: &mut Poll, events: &mut Events) -> io::Result<Vec<Conn>> {
    let total = cfg.connections;
    let deadline = Instant::now() + cfg.connect_timeout;
    let mut conns: Vec<Conn> = Vec::with_capacity(total);
    let mut in_flight = 0usize;
    let mut connected = 0usize;
    let max_in_flight = cfg.max_connecting.max(1);

    while connected < total {
        while in_flight < max_in_flight && conns.len() < total {
            let i = conns.len();
            let mut stream = TcpStream::connect(cfg.addr).map_err(|e| context(e, i))?;
            poll.registry().register(
                &mut stream,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            conns.push(Conn::new(stream, cfg.message_size, i));
            in_flight += 1;
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "connected only {connected} of {total} connections to {} within {:?}",
                    cfg.addr, cfg.connect_timeout
                ),
            ));
        }
        poll_once(poll, events, deadline - now)?;
        for event in events.iter() {
            let i = event.token().0;
            let Some(conn) = conns.get_mut(i) else {
                continue;
            };
            if conn.connected {
                continue;
            }
            if is_connected(&conn.stream).map_err(|e| context(e, i))? {
                conn.connected = true;
                conn.stream.set_nodelay(true)?;
                in_flight -= 1;
                connected += 1;
            }
        }
    }
    Ok(conns)
}

/// Whether a non-blocking connect has completed (`Ok(false)`: still pending).
fn is_connected(stream: &TcpStream) -> io::Result<bool> {
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

fn poll_once(poll: &mut Poll, events: &mut Events, timeout: Duration) -> io::Result<()> {
    match poll.poll(events, Some(timeout)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
            events.clear();
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Raise the soft descriptor limit (up to the hard limit) so that
/// `connections` sockets fit, or explain why they cannot.
fn ensure_fd_limit(connections: usize) -> io::Result<()> {
    // Room for the poll instance, stdio, the harness's pipes and so on.
    let needed = connections as u64 + 64;
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    if soft >= needed {
        return Ok(());
    }
    let raised = rlimit::increase_nofile_limit(u64::MAX)?;
    if raised < needed {
        return Err(io::Error::other(format!(
            "{connections} connections need about {needed} file descriptors, but \
             RLIMIT_NOFILE allows only {raised} (soft was {soft}, hard {hard})"
        )));
    }
    Ok(())
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

fn context(e: io::Error, conn: usize) -> io::Error {
    io::Error::new(e.kind(), format!("connection {conn}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    fn short(addr: SocketAddr, connections: usize) -> ClientConfig {
        let mut cfg = ClientConfig::new(addr, connections);
        cfg.warmup = Duration::from_millis(100);
        cfg.measure = Duration::from_millis(300);
        cfg.connect_timeout = Duration::from_secs(5);
        cfg.stall_timeout = Duration::from_millis(500);
        cfg
    }

    /// A blocking thread-per-connection echo server; `echo = false` accepts
    /// and reads but never answers.
    fn spawn_server(echo: bool) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let held = Arc::new(Mutex::new(Vec::new()));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                if !echo {
                    held.lock().unwrap().push(stream);
                    continue;
                }
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    loop {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn measures_round_trips_against_an_echo_server() {
        let addr = spawn_server(true);
        let mut phases = Vec::new();
        let report = run_observed(&short(addr, 8), |p| phases.push(p)).unwrap();
        assert_eq!(report.connections, 8);
        assert!(report.round_trips > 0);
        assert!(report.min_per_connection > 0);
        assert!(report.round_trips_per_sec() > 0.0);
        assert!(report.elapsed >= Duration::from_millis(300));
        assert_eq!(
            phases,
            [Phase::WarmupStart, Phase::MeasureStart, Phase::MeasureEnd]
        );
    }

    #[test]
    fn silent_server_is_an_error_not_a_hang() {
        let addr = spawn_server(false);
        // The stall limit (0.5 s) ends the run long before the window would.
        let mut cfg = short(addr, 4);
        cfg.measure = Duration::from_secs(30);
        let start = Instant::now();
        let err = run(&cfg).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
        // A window shorter than the stall limit: still an error.
        let err = run(&short(addr, 4)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    }

    #[test]
    fn refused_connection_is_an_error() {
        // Bind then drop: nothing listens on that port any more.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let start = Instant::now();
        assert!(run(&short(addr, 2)).is_err());
        assert!(start.elapsed() < Duration::from_secs(6));
    }
}
