//! The self-test cases run by `test-net`: libnet's network self-tests over
//! loopback. Each case builds its own runtime, returns `Ok` (passed or
//! skipped) or `Err(reason)`, and must finish on its own; `test-net` also
//! runs each under a deadline so a hung case fails instead of hanging.

use std::cell::Cell;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use libnet::net::{serve, Spread, TcpListener, TcpStream, UdpSocket};
use libnet::rudp::{Config as RudpConfig, RudpSocket};
use libnet::sync::{channel, oneshot, RecvTimeoutError};
use libnet::time;

use crate::{
    check_elapsed, echo, idle_connections, ipv6_loopback_available, panic_message, refusing_port,
    runtime, spawn_echo_server, wait_until, V4_ANY_PORT, V6_ANY_PORT,
};

/// How a case ended when it did not fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every check held.
    Pass,
    /// Could not run here (the reason says why); counted apart.
    Skip(String),
}

/// What a case returns.
pub type CaseResult = Result<Outcome, String>;

/// One self-test.
#[derive(Clone, Copy)]
pub struct Case {
    /// `area::name`, used for filtering.
    pub name: &'static str,
    /// The test itself.
    pub run: fn() -> CaseResult,
}

/// Fails the case with a formatted reason unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// Turns any displayable error into the case's failure reason, with context.
trait Ctx<T> {
    fn ctx(self, what: &str) -> Result<T, String>;
}

impl<T, E: std::fmt::Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

/// Runs `main` on a fresh runtime of `loops` loops; a stop by `exit` is a failure.
fn on_runtime(loops: usize, main: impl FnOnce() -> CaseResult + 'static) -> CaseResult {
    match runtime(loops).run(main) {
        Ok(r) => r,
        Err(e) => Err(format!("runtime stopped early: {e}")),
    }
}

/// Every case, in the order `test-net` runs them.
pub fn all() -> Vec<Case> {
    macro_rules! cases {
        ($($name:literal => $f:path),* $(,)?) => {
            vec![$(Case { name: $name, run: $f }),*]
        };
    }
    cases![
        "tcp::echo" => tcp_echo,
        "tcp::echo_v6" => tcp_echo_v6,
        "tcp::shutdown_eof" => tcp_shutdown_eof,
        "tcp::read_timeout" => tcp_read_timeout,
        "tcp::accept_timeout" => tcp_accept_timeout,
        "tcp::connect_refused" => tcp_connect_refused,
        "tcp::serve_round_robin" => tcp_serve_round_robin,
        "tcp::plain_thread_client" => tcp_plain_thread_client,
        "tcp::many_connections" => tcp_many_connections,
        "udp::send_recv" => udp_send_recv,
        "udp::connected" => udp_connected,
        "udp::timeout" => udp_timeout,
        "timer::sleep_accuracy" => timer_sleep_accuracy,
        "timer::after" => timer_after,
        "timer::every_cancel" => timer_every_cancel,
        "timer::cancel_many" => timer_cancel_many,
        "pool::spawn_blocking" => pool_spawn_blocking,
        "pool::panic" => pool_panic,
        "runtime::spawn_on_each_loop" => runtime_spawn_on_each_loop,
        "runtime::exit_code" => runtime_exit_code,
        "runtime::shutdown_blocked" => runtime_shutdown_blocked,
        "sync::channel_cross_loop" => sync_channel_cross_loop,
        "sync::channel_plain_thread" => sync_channel_plain_thread,
        "sync::recv_timeout" => sync_recv_timeout,
        "sync::oneshot" => sync_oneshot,
        "rudp::echo" => rudp_echo,
        "rudp::tiny_windows" => rudp_tiny_windows,
        "rudp::stream" => rudp_stream,
        "rudp::raw_beside_connections" => rudp_raw,
        "rudp::connect_timeout" => rudp_connect_timeout,
    ]
}

// ---------------------------------------------------------------- rudp

fn rudp_local() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().expect("valid address")
}

/// Messages both ways over one reliable-UDP connection.
fn rudp_echo() -> CaseResult {
    on_runtime(1, || {
        let server = RudpSocket::bind(rudp_local(), RudpConfig::default()).ctx("bind")?;
        let addr = server.local_addr().ctx("addr")?;
        let srv = libnet::spawn(move || -> Result<(), String> {
            let (conn, _) = server.accept().ctx("accept")?;
            while let Some(m) = conn.recv().ctx("server recv")? {
                conn.send(&m).ctx("echo")?;
            }
            Ok(())
        });
        let client = RudpSocket::bind(rudp_local(), RudpConfig::default()).ctx("bind")?;
        let conn = client.connect(addr).ctx("connect")?;
        for i in 0..100u32 {
            let msg = vec![i as u8; 1 + (i as usize * 13) % 3000];
            conn.send(&msg).ctx("send")?;
            let back = conn.recv().ctx("recv")?.ok_or("connection ended early")?;
            ensure!(back == msg, "message {i} came back different");
        }
        conn.close();
        srv.join().map_err(|p| panic_message(&*p))??;
        Ok(Outcome::Pass)
    })
}

/// The original's flow-control case: windows 5/3, 50 messages of 1,280 bytes.
fn rudp_tiny_windows() -> CaseResult {
    on_runtime(2, || {
        let cfg = RudpConfig {
            send_window: 5,
            recv_window: 3,
            ..RudpConfig::default()
        };
        let (tx, rx) = oneshot::channel();
        let server_cfg = cfg.clone();
        let srv = libnet::spawn_on(1, move || -> Result<usize, String> {
            let server = RudpSocket::bind(rudp_local(), server_cfg).ctx("bind")?;
            let _ = tx.send(server.local_addr().ctx("addr")?);
            let (conn, _) = server.accept().ctx("accept")?;
            let mut n = 0;
            while let Some(m) = conn.recv().ctx("recv")? {
                if m != vec![n as u8; 1280] {
                    return Err(format!("message {n} out of order or corrupted"));
                }
                n += 1;
            }
            Ok(n)
        });
        let addr = rx.recv().map_err(|_| "server did not start".to_string())?;
        let client = RudpSocket::bind(rudp_local(), cfg).ctx("bind")?;
        let conn = client.connect(addr).ctx("connect")?;
        for i in 0..50u8 {
            conn.send(&[i; 1280]).ctx("send")?;
        }
        conn.close();
        let n = srv.join().map_err(|p| panic_message(&*p))??;
        ensure!(n == 50, "server got {n} of 50 messages");
        Ok(Outcome::Pass)
    })
}

/// 4 MiB through the Read/Write wrapper, byte-exact.
fn rudp_stream() -> CaseResult {
    on_runtime(1, || {
        let server = RudpSocket::bind(rudp_local(), RudpConfig::default()).ctx("bind")?;
        let addr = server.local_addr().ctx("addr")?;
        let reader = libnet::spawn(move || -> Result<Vec<u8>, String> {
            let (conn, _) = server.accept().ctx("accept")?;
            let mut got = Vec::new();
            conn.stream().read_to_end(&mut got).ctx("read")?;
            Ok(got)
        });
        let data: Vec<u8> = (0..4u32 << 20).map(|i| (i * 31 + i / 977) as u8).collect();
        let client = RudpSocket::bind(rudp_local(), RudpConfig::default()).ctx("bind")?;
        let mut stream = client.connect(addr).ctx("connect")?.stream();
        stream.write_all(&data).ctx("write")?;
        stream.connection().close();
        let got = reader.join().map_err(|p| panic_message(&*p))??;
        ensure!(
            got == data,
            "stream corrupted ({} of {} bytes)",
            got.len(),
            data.len()
        );
        Ok(Outcome::Pass)
    })
}

/// Raw datagrams travel on the same socket as the connections.
fn rudp_raw() -> CaseResult {
    on_runtime(1, || {
        let a = RudpSocket::bind(rudp_local(), RudpConfig::default()).ctx("bind")?;
        let b = RudpSocket::bind(rudp_local(), RudpConfig::default()).ctx("bind")?;
        let b_addr = b.local_addr().ctx("addr")?;
        a.send_raw(b_addr, b"hello raw").ctx("send_raw")?;
        let (from, data) = b.recv_raw(Some(Duration::from_secs(5))).ctx("recv_raw")?;
        ensure!(data == b"hello raw", "raw datagram altered");
        ensure!(
            from == a.local_addr().ctx("addr")?,
            "raw datagram from {from}"
        );
        Ok(Outcome::Pass)
    })
}

/// Connecting to a port nobody answers on fails after the handshake timeout.
fn rudp_connect_timeout() -> CaseResult {
    on_runtime(1, || {
        let silent = UdpSocket::bind(V4_ANY_PORT).ctx("bind")?;
        let port = silent.local_addr().ctx("addr")?.port();
        let cfg = RudpConfig {
            handshake_timeout: Duration::from_millis(300),
            ..RudpConfig::default()
        };
        let client = RudpSocket::bind(rudp_local(), cfg).ctx("bind")?;
        let started = Instant::now();
        let err = match client.connect(([127, 0, 0, 1], port).into()) {
            Ok(_) => return Err("connected to a socket that never answers".into()),
            Err(e) => e,
        };
        ensure!(err.kind() == ErrorKind::TimedOut, "wrong error: {err}");
        check_elapsed(
            "rudp connect timeout",
            started.elapsed(),
            Duration::from_millis(300),
        )?;
        Ok(Outcome::Pass)
    })
}

// ---------------------------------------------------------------- tcp

fn echo_lines(addr_str: &'static str) -> CaseResult {
    on_runtime(2, move || {
        let (addr, _server) = spawn_echo_server(addr_str).ctx("echo server")?;
        // The client runs on the other loop.
        let client = libnet::spawn_on(1, move || -> Result<usize, String> {
            let conn = TcpStream::connect(addr).ctx("connect")?;
            conn.set_nodelay(true).ctx("nodelay")?;
            let mut reader = BufReader::new(&conn);
            let mut line = String::new();
            for i in 0..100 {
                let msg = format!("line {i} over {addr}\n");
                (&conn).write_all(msg.as_bytes()).ctx("write")?;
                line.clear();
                reader.read_line(&mut line).ctx("read_line")?;
                ensure!(line == msg, "echo mismatch: sent {msg:?}, got {line:?}");
            }
            Ok(100)
        });
        let n = client.join().map_err(|p| panic_message(&*p))??;
        ensure!(n == 100, "only {n} lines");
        Ok(Outcome::Pass)
    })
}

fn tcp_echo() -> CaseResult {
    echo_lines(V4_ANY_PORT)
}

fn tcp_echo_v6() -> CaseResult {
    if !ipv6_loopback_available() {
        return Ok(Outcome::Skip("cannot bind [::1] on this host".into()));
    }
    echo_lines(V6_ANY_PORT)
}

fn tcp_shutdown_eof() -> CaseResult {
    on_runtime(1, || {
        let listener = TcpListener::bind(V4_ANY_PORT).ctx("bind")?;
        let addr = listener.local_addr().ctx("local_addr")?;
        let server = libnet::spawn(move || -> Result<Vec<u8>, String> {
            let (mut c, _) = listener.accept().ctx("accept")?;
            let mut all = Vec::new();
            c.read_to_end(&mut all).ctx("read_to_end")?;
            c.write_all(b"bye").ctx("write after EOF")?;
            Ok(all)
        });
        let mut c = TcpStream::connect(addr).ctx("connect")?;
        c.write_all(b"hello").ctx("write")?;
        c.shutdown(Shutdown::Write).ctx("shutdown")?;
        let got = server.join().map_err(|p| panic_message(&*p))??;
        ensure!(got == b"hello", "server read {got:?}");
        let mut back = Vec::new();
        c.read_to_end(&mut back).ctx("client read_to_end")?;
        ensure!(back == b"bye", "client read {back:?}");
        Ok(Outcome::Pass)
    })
}

fn tcp_read_timeout() -> CaseResult {
    on_runtime(1, || {
        let (addr, _server) = spawn_echo_server(V4_ANY_PORT).ctx("echo server")?;
        let mut c = TcpStream::connect(addr).ctx("connect")?;
        let want = Duration::from_millis(100);
        c.set_read_timeout(Some(want)).ctx("set_read_timeout")?;
        let start = Instant::now();
        let mut b = [0u8; 8];
        let r = c.read(&mut b);
        let elapsed = start.elapsed();
        match r {
            Err(e) if e.kind() == ErrorKind::TimedOut => {}
            other => {
                return Err(format!(
                    "read with nothing to read gave {other:?}, not TimedOut"
                ))
            }
        }
        check_elapsed("read timeout", elapsed, want)?;
        // The connection still works after a timeout.
        c.write_all(b"ping").ctx("write")?;
        c.read_exact(&mut b[..4]).ctx("read")?;
        ensure!(&b[..4] == b"ping", "echo after timeout: {:?}", &b[..4]);
        Ok(Outcome::Pass)
    })
}

fn tcp_accept_timeout() -> CaseResult {
    on_runtime(1, || {
        let listener = TcpListener::bind(V4_ANY_PORT).ctx("bind")?;
        let want = Duration::from_millis(80);
        listener
            .set_accept_timeout(Some(want))
            .ctx("set_accept_timeout")?;
        let start = Instant::now();
        match listener.accept() {
            Err(e) if e.kind() == ErrorKind::TimedOut => {}
            Err(e) => return Err(format!("accept gave {e} ({:?}), not TimedOut", e.kind())),
            Ok((_, a)) => return Err(format!("accept returned a connection from {a}")),
        }
        check_elapsed("accept timeout", start.elapsed(), want)?;
        Ok(Outcome::Pass)
    })
}

fn tcp_connect_refused() -> CaseResult {
    on_runtime(1, || {
        let (_hold, addr) = refusing_port().ctx("reserve a port")?;
        match TcpStream::connect(addr) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
            Err(e) => {
                return Err(format!(
                    "connect gave {e} ({:?}), not ConnectionRefused",
                    e.kind()
                ))
            }
            Ok(_) => return Err(format!("connect to the closed port {addr} succeeded")),
        }
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
            other => {
                return Err(format!(
                    "connect_timeout gave {other:?}, not ConnectionRefused"
                ))
            }
        }
        Ok(Outcome::Pass)
    })
}

fn tcp_serve_round_robin() -> CaseResult {
    on_runtime(2, || {
        let listener = TcpListener::bind(V4_ANY_PORT).ctx("bind")?;
        let addr = listener.local_addr().ctx("local_addr")?;
        libnet::spawn(move || {
            let _ = serve(&listener, Spread::RoundRobin, |mut c| {
                let here = libnet::current_loop().unwrap_or(usize::MAX) as u8;
                let _ = c.write_all(&[here]);
                echo::<64>(c);
            });
        });
        let mut seen = Vec::new();
        for _ in 0..4 {
            let mut c = TcpStream::connect(addr).ctx("connect")?;
            let mut b = [0u8; 1];
            c.read_exact(&mut b).ctx("read loop index")?;
            seen.push(b[0]);
        }
        ensure!(
            seen.windows(2).all(|w| w[0] != w[1]) && seen.iter().all(|&l| l < 2),
            "round robin over 2 loops placed connections on {seen:?}"
        );
        Ok(Outcome::Pass)
    })
}

fn tcp_plain_thread_client() -> CaseResult {
    on_runtime(1, || {
        let (addr, _server) = spawn_echo_server(V4_ANY_PORT).ctx("echo server")?;
        let (tx, rx) = channel::<Result<(), String>>(1);
        let t = thread::spawn(move || {
            let r = (|| -> Result<(), String> {
                ensure!(
                    libnet::current_loop().is_none(),
                    "plain thread thinks it is a loop"
                );
                let mut c = TcpStream::connect(addr).ctx("connect from a plain thread")?;
                for i in 0..50u32 {
                    c.write_all(&i.to_le_bytes()).ctx("write")?;
                    let mut b = [0u8; 4];
                    c.read_exact(&mut b).ctx("read")?;
                    ensure!(u32::from_le_bytes(b) == i, "echo mismatch at {i}");
                }
                Ok(())
            })();
            let _ = tx.send(r);
        });
        let r = rx.recv_timeout(Duration::from_secs(20));
        let _ = libnet::spawn_blocking(move || t.join());
        match r {
            Ok(r) => r?,
            Err(e) => return Err(format!("plain thread client: {e}")),
        }
        Ok(Outcome::Pass)
    })
}

fn tcp_many_connections() -> CaseResult {
    let n = 1000;
    let s = idle_connections(n, 256 * 1024, Duration::from_secs(60))?;
    ensure!(s.connections == n, "{} connections", s.connections);
    Ok(Outcome::Pass)
}

// ---------------------------------------------------------------- udp

fn udp_send_recv() -> CaseResult {
    on_runtime(1, || {
        let a = UdpSocket::bind(V4_ANY_PORT).ctx("bind a")?;
        let b = UdpSocket::bind(V4_ANY_PORT).ctx("bind b")?;
        let b_addr = b.local_addr().ctx("b addr")?;
        let echo = libnet::spawn(move || -> Result<(), String> {
            let mut buf = [0u8; 1500];
            for _ in 0..100 {
                let (n, from) = b.recv_from(&mut buf).ctx("b recv_from")?;
                b.send_to(&buf[..n], from).ctx("b send_to")?;
            }
            Ok(())
        });
        a.set_read_timeout(Some(Duration::from_secs(5)))
            .ctx("timeout")?;
        let mut buf = [0u8; 1500];
        for i in 0..100u32 {
            let msg = format!("datagram {i}");
            a.send_to(msg.as_bytes(), b_addr).ctx("a send_to")?;
            let (n, from) = a.recv_from(&mut buf).ctx("a recv_from")?;
            ensure!(from == b_addr, "reply from {from}, not {b_addr}");
            ensure!(&buf[..n] == msg.as_bytes(), "reply {:?}", &buf[..n]);
        }
        echo.join().map_err(|p| panic_message(&*p))??;
        Ok(Outcome::Pass)
    })
}

fn udp_connected() -> CaseResult {
    on_runtime(1, || {
        let a = UdpSocket::bind(V4_ANY_PORT).ctx("bind a")?;
        let b = UdpSocket::bind(V4_ANY_PORT).ctx("bind b")?;
        let a_addr = a.local_addr().ctx("a addr")?;
        let b_addr = b.local_addr().ctx("b addr")?;
        a.connect(b_addr).ctx("a connect")?;
        b.connect(a_addr).ctx("b connect")?;
        ensure!(a.peer_addr().ctx("peer")? == b_addr, "a's peer is not b");
        let t = libnet::spawn(move || -> Result<Vec<u8>, String> {
            let mut buf = [0u8; 64];
            let n = b.recv(&mut buf).ctx("b recv")?;
            b.send(&buf[..n]).ctx("b send")?;
            Ok(buf[..n].to_vec())
        });
        a.send(b"connected hello").ctx("a send")?;
        let mut buf = [0u8; 64];
        let n = a.recv(&mut buf).ctx("a recv")?;
        ensure!(&buf[..n] == b"connected hello", "a got {:?}", &buf[..n]);
        let got = t.join().map_err(|p| panic_message(&*p))??;
        ensure!(got == b"connected hello", "b got {got:?}");
        Ok(Outcome::Pass)
    })
}

fn udp_timeout() -> CaseResult {
    on_runtime(1, || {
        let s = UdpSocket::bind(V4_ANY_PORT).ctx("bind")?;
        let want = Duration::from_millis(100);
        s.set_read_timeout(Some(want)).ctx("set_read_timeout")?;
        let start = Instant::now();
        let mut buf = [0u8; 16];
        match s.recv_from(&mut buf) {
            Err(e) if e.kind() == ErrorKind::TimedOut => {}
            other => return Err(format!("recv_from with nothing sent gave {other:?}")),
        }
        check_elapsed("UDP read timeout", start.elapsed(), want)?;
        Ok(Outcome::Pass)
    })
}

// ---------------------------------------------------------------- timers

fn timer_sleep_accuracy() -> CaseResult {
    on_runtime(1, || {
        for ms in [1u64, 20, 50] {
            let want = Duration::from_millis(ms);
            let start = Instant::now();
            let clock0 = time::now();
            time::sleep(want);
            check_elapsed(&format!("sleep({want:?})"), start.elapsed(), want)?;
            let clock = time::now().duration_since(clock0);
            ensure!(
                clock >= want,
                "runtime clock advanced only {clock:?} over sleep({want:?})"
            );
        }
        Ok(Outcome::Pass)
    })
}

fn timer_after() -> CaseResult {
    on_runtime(1, || {
        let fired: Rc<Cell<Option<Instant>>> = Rc::default();
        let count = Rc::new(Cell::new(0));
        let want = Duration::from_millis(40);
        let start = Instant::now();
        let t = {
            let fired = fired.clone();
            let count = count.clone();
            time::after(want, move || {
                fired.set(Some(Instant::now()));
                count.set(count.get() + 1);
            })
        };
        ensure!(t.is_pending(), "timer not pending right after creation");
        ensure!(
            wait_until(Duration::from_secs(5), || fired.get().is_some()),
            "after() never fired"
        );
        let at = fired.get().expect("fired");
        check_elapsed("after()", at.duration_since(start), want)?;
        time::sleep(Duration::from_millis(60));
        ensure!(count.get() == 1, "one-shot timer ran {} times", count.get());
        ensure!(
            !t.cancel(),
            "cancel of a fired one-shot timer returned true"
        );
        Ok(Outcome::Pass)
    })
}

fn timer_every_cancel() -> CaseResult {
    on_runtime(1, || {
        let count = Rc::new(Cell::new(0u32));
        let period = Duration::from_millis(20);
        let t = {
            let count = count.clone();
            time::every(period, move || count.set(count.get() + 1))
        };
        let start = Instant::now();
        ensure!(
            wait_until(Duration::from_secs(5), || count.get() >= 3),
            "every() ticked only {} times",
            count.get()
        );
        let elapsed = start.elapsed();
        ensure!(
            elapsed >= period * 3,
            "3 ticks of {period:?} after only {elapsed:?}: early"
        );
        ensure!(t.cancel(), "cancel returned false");
        ensure!(!t.is_pending(), "still pending after cancel");
        let after_cancel = count.get();
        time::sleep(period * 5);
        ensure!(
            count.get() == after_cancel,
            "ticked {} more times after cancel",
            count.get() - after_cancel
        );
        Ok(Outcome::Pass)
    })
}

fn timer_cancel_many() -> CaseResult {
    on_runtime(1, || {
        let n = 100_000;
        let base = time::pending_timers();
        let fired = Rc::new(Cell::new(0usize));
        let start = Instant::now();
        let timers: Vec<_> = (0..n)
            .map(|i| {
                let fired = fired.clone();
                time::after(Duration::from_millis(1000 + (i % 5000) as u64), move || {
                    fired.set(fired.get() + 1)
                })
            })
            .collect();
        ensure!(
            time::pending_timers() >= base + n,
            "only {} timers pending",
            time::pending_timers()
        );
        let cancelled = timers.iter().filter(|t| t.cancel()).count();
        let took = start.elapsed();
        ensure!(cancelled == n, "cancelled only {cancelled} of {n}");
        ensure!(
            time::pending_timers() == base,
            "{} timers pending after cancelling all",
            time::pending_timers()
        );
        ensure!(
            took < Duration::from_secs(5),
            "creating and cancelling {n} timers took {took:?}"
        );
        ensure!(fired.get() == 0, "{} cancelled timers fired", fired.get());
        Ok(Outcome::Pass)
    })
}

// ---------------------------------------------------------------- pool

fn pool_spawn_blocking() -> CaseResult {
    on_runtime(1, || {
        let loop_thread = thread::current().id();
        let ticks = Rc::new(Cell::new(0u32));
        let stop = Rc::new(Cell::new(false));
        let ticker = {
            let ticks = ticks.clone();
            let stop = stop.clone();
            libnet::spawn(move || {
                for _ in 0..10_000 {
                    if stop.get() {
                        break;
                    }
                    time::sleep(Duration::from_millis(5));
                    ticks.set(ticks.get() + 1);
                }
            })
        };
        let (v, id) = libnet::spawn_blocking(|| {
            thread::sleep(Duration::from_millis(200));
            (6 * 7, thread::current().id())
        });
        stop.set(true);
        ticker.join().map_err(|p| panic_message(&*p))?;
        ensure!(v == 42, "spawn_blocking returned {v}");
        ensure!(id != loop_thread, "spawn_blocking ran on the loop thread");
        ensure!(
            ticks.get() >= 5,
            "the loop ticked only {} times during a 200 ms blocking job",
            ticks.get()
        );
        Ok(Outcome::Pass)
    })
}

fn pool_panic() -> CaseResult {
    on_runtime(1, || {
        let h = libnet::spawn(|| {
            libnet::spawn_blocking(|| -> u32 { panic!("pool job failed on purpose") })
        });
        match h.join() {
            Err(p) => {
                let m = panic_message(&*p);
                ensure!(m.contains("on purpose"), "panic payload {m:?}");
            }
            Ok(v) => return Err(format!("panicking job returned {v}")),
        }
        ensure!(
            libnet::spawn_blocking(|| 5) == 5,
            "pool unusable after a panic"
        );
        Ok(Outcome::Pass)
    })
}

// ---------------------------------------------------------------- runtime

fn runtime_spawn_on_each_loop() -> CaseResult {
    on_runtime(3, || {
        ensure!(
            libnet::loops() == Some(3),
            "loops() = {:?}",
            libnet::loops()
        );
        for i in 0..6 {
            let got = libnet::spawn_on(i, libnet::current_loop)
                .join()
                .map_err(|p| panic_message(&*p))?;
            ensure!(got == Some(i % 3), "spawn_on({i}) ran on loop {got:?}");
        }
        Ok(Outcome::Pass)
    })
}

fn runtime_exit_code() -> CaseResult {
    let r = runtime(2).run(|| {
        libnet::spawn_on(1, || libnet::exit(7));
        time::sleep(Duration::from_secs(3600));
        "main returned"
    });
    ensure!(r == Err(libnet::Exit { code: 7 }), "run returned {r:?}");
    Ok(Outcome::Pass)
}

struct Flag(Arc<AtomicBool>);

impl Drop for Flag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn runtime_shutdown_blocked() -> CaseResult {
    let dropped: Vec<Arc<AtomicBool>> = crate::BLOCKERS.iter().map(|_| Arc::default()).collect();
    let ended: Arc<Mutex<Option<Instant>>> = Arc::default();
    let flags = dropped.clone();
    let ended2 = ended.clone();
    // The TCP peer never accepts and outlives the runtime, so the blocked
    // read can only end by the shutdown (a peer on another loop could be
    // closed first by that loop's own shutdown and end the read with EOF).
    let peer = std::net::TcpListener::bind(V4_ANY_PORT).ctx("bind")?;
    let addr = peer.local_addr().ctx("local_addr")?;
    // Each coroutine counts itself right before its blocking call; a loop
    // switches coroutines only at waits, so once all have counted, all wait.
    let ready = Arc::new(AtomicUsize::new(0));
    let handles = on_runtime_value(2, move || -> Result<Vec<libnet::JoinHandle<()>>, String> {
        // Guards are made here and moved in, so they drop even if a
        // coroutine never got to start.
        let guards = std::array::from_fn(|i| Flag(flags[i].clone()));
        let hs = crate::spawn_blockers(addr, guards, &ready);
        let n = hs.len();
        ensure!(
            wait_until(Duration::from_secs(20), || ready.load(Ordering::SeqCst)
                == n),
            "only {} of {n} coroutines reached their blocking call",
            ready.load(Ordering::SeqCst)
        );
        time::sleep(Duration::from_millis(10));
        *ended2.lock().unwrap() = Some(Instant::now());
        Ok(hs)
    })??;
    let end = ended.lock().unwrap().ok_or("main did not record its end")?;
    let took = end.elapsed();
    drop(peer);
    ensure!(
        took < Duration::from_secs(2),
        "shutdown took {took:?} with blocked coroutines"
    );
    for (i, d) in dropped.iter().enumerate() {
        ensure!(
            d.load(Ordering::SeqCst),
            "blocked coroutine {i}: destructors did not run at shutdown"
        );
    }
    for (i, h) in handles.into_iter().enumerate() {
        ensure!(
            h.is_finished(),
            "coroutine {i} not finished after the runtime stopped"
        );
        ensure!(
            h.join().is_err(),
            "coroutine {i} cancelled at shutdown reports success"
        );
    }
    Ok(Outcome::Pass)
}

fn on_runtime_value<T: 'static>(
    loops: usize,
    main: impl FnOnce() -> T + 'static,
) -> Result<T, String> {
    runtime(loops)
        .run(main)
        .map_err(|e| format!("runtime stopped early: {e}"))
}

// ---------------------------------------------------------------- sync

fn sync_channel_cross_loop() -> CaseResult {
    on_runtime(2, || {
        let (ping_tx, ping_rx) = channel::<u32>(1);
        let (pong_tx, pong_rx) = channel::<u32>(1);
        let other = libnet::spawn_on(1, move || -> Result<(), String> {
            for v in ping_rx.iter() {
                pong_tx
                    .send(v + 1)
                    .map_err(|_| "pong receiver gone".to_string())?;
            }
            Ok(())
        });
        for i in 0..2000 {
            ping_tx
                .send(i)
                .map_err(|_| "ping receiver gone".to_string())?;
            let v = pong_rx.recv().ctx("pong")?;
            ensure!(v == i + 1, "pong {v} for ping {i}");
        }
        drop(ping_tx);
        other.join().map_err(|p| panic_message(&*p))??;
        Ok(Outcome::Pass)
    })
}

fn sync_channel_plain_thread() -> CaseResult {
    on_runtime(1, || {
        let (tx, rx) = channel::<u64>(4);
        let (back_tx, back_rx) = channel::<u64>(4);
        let t = thread::spawn(move || {
            let mut sum = 0;
            while let Ok(v) = rx.recv() {
                sum += v;
                if back_tx.send(v * 2).is_err() {
                    break;
                }
            }
            sum
        });
        for i in 0..1000u64 {
            tx.send(i).map_err(|_| "thread gone".to_string())?;
            let v = back_rx.recv().ctx("reply")?;
            ensure!(v == i * 2, "thread replied {v} to {i}");
        }
        drop(tx);
        let sum = libnet::spawn_blocking(move || t.join()).map_err(|p| panic_message(&*p))?;
        ensure!(sum == (0..1000).sum::<u64>(), "thread summed {sum}");
        Ok(Outcome::Pass)
    })
}

fn sync_recv_timeout() -> CaseResult {
    on_runtime(1, || {
        let (tx, rx) = channel::<u8>(1);
        let want = Duration::from_millis(60);
        let start = Instant::now();
        ensure!(
            rx.recv_timeout(want) == Err(RecvTimeoutError::Timeout),
            "recv_timeout on an empty channel did not time out"
        );
        check_elapsed("recv_timeout", start.elapsed(), want)?;
        tx.send(1).map_err(|_| "send".to_string())?;
        let start = Instant::now();
        match tx.send_timeout(2, want) {
            Err(libnet::sync::TrySendError::Full(2)) => {}
            other => return Err(format!("send_timeout on a full channel gave {other:?}")),
        }
        check_elapsed("send_timeout", start.elapsed(), want)?;
        ensure!(rx.recv_timeout(want) == Ok(1), "value lost");
        drop(tx);
        ensure!(
            rx.recv_timeout(want) == Err(RecvTimeoutError::Disconnected),
            "no disconnect"
        );
        Ok(Outcome::Pass)
    })
}

fn sync_oneshot() -> CaseResult {
    on_runtime(2, || {
        let (tx, rx) = oneshot::channel::<String>();
        libnet::spawn_on(1, move || {
            time::sleep(Duration::from_millis(10));
            let _ = tx.send("from loop 1".to_string());
        });
        ensure!(rx.recv().ctx("recv")? == "from loop 1", "wrong value");
        let (tx, rx) = oneshot::channel::<u8>();
        drop(tx);
        ensure!(
            rx.recv().is_err(),
            "recv after the sender was dropped succeeded"
        );
        let (tx, rx) = oneshot::channel::<u8>();
        drop(rx);
        ensure!(tx.send(3) == Err(3), "send to a dropped receiver succeeded");
        let (tx, rx) = oneshot::channel::<u8>();
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let t = thread::spawn(move || {
            c.fetch_add(1, Ordering::SeqCst);
            tx.send(9)
        });
        ensure!(
            rx.recv().ctx("recv from a thread")? == 9,
            "wrong value from thread"
        );
        let _ = libnet::spawn_blocking(move || t.join());
        ensure!(count.load(Ordering::SeqCst) == 1, "thread did not run");
        Ok(Outcome::Pass)
    })
}
