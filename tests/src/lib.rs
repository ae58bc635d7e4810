//! Shared helpers for the libnet integration tests and the `test-net`
//! self-test binary.
//!
//! The helpers here talk to loopback only (`127.0.0.1` / `::1`) and bind
//! ephemeral ports (port 0); [`netlab`] builds emulated hosts and NATs in
//! network namespaces of its own (198.18.0.0/15). Waiting loops are bounded
//! in count and time.

pub mod apps;
pub mod cases;
pub mod netlab;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use libnet::net::{TcpListener, TcpStream};
use libnet::JoinHandle;

/// How late a timer or timeout may be before a test calls it a failure.
/// Generous: the machine has 2 cores and tests of one file run in parallel.
/// (Early is never allowed.)
pub const LATE: Duration = Duration::from_millis(300);

/// The loopback address with an ephemeral port, IPv4.
pub const V4_ANY_PORT: &str = "127.0.0.1:0";

/// The loopback address with an ephemeral port, IPv6.
pub const V6_ANY_PORT: &str = "[::1]:0";

/// A runtime with `loops` loops and otherwise default settings.
pub fn runtime(loops: usize) -> libnet::Runtime {
    libnet::Runtime::builder()
        .loops(loops)
        .build()
        .expect("cannot build a libnet runtime")
}

/// Runs `main` on a fresh runtime of `loops` loops and returns its value;
/// panics if the runtime was stopped with `exit` instead.
pub fn run_on<T: 'static>(loops: usize, main: impl FnOnce() -> T + 'static) -> T {
    match runtime(loops).run(main) {
        Ok(v) => v,
        Err(e) => panic!("runtime stopped before main returned: {e}"),
    }
}

pub use libnet::runtime::panic_message;

/// What the coroutines of [`spawn_blockers`] block in, in order.
pub const BLOCKERS: [&str; 5] = [
    "tcp read",
    "udp recv_from",
    "sleep",
    "channel recv",
    "oneshot recv",
];

/// Parks one coroutine in each of [`BLOCKERS`] (inside a runtime of at
/// least two loops): a read from a TCP connection to `peer` (a listener
/// that never accepts, so only shutdown ends it), a UDP receive, an
/// hour's sleep, and receives on a channel and a oneshot that never get
/// a value. Each holds its `guard` (dropped when it ends or is unwound)
/// and adds one to `ready` right before its blocking call; a loop switches
/// coroutines only at waits, so once `ready` counts them all, all wait.
pub fn spawn_blockers<G: Send + 'static>(
    peer: SocketAddr,
    guards: [G; 5],
    ready: &std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Vec<JoinHandle<()>> {
    use std::sync::atomic::Ordering::SeqCst;
    let [g0, g1, g2, g3, g4] = guards;
    let r = || ready.clone();
    let (r0, r1, r2, r3, r4) = (r(), r(), r(), r(), r());
    vec![
        libnet::spawn_on(1, move || {
            let _g = g0;
            let mut c = TcpStream::connect(peer).expect("connect");
            let mut b = [0u8; 1];
            r0.fetch_add(1, SeqCst);
            let _ = c.read(&mut b);
        }),
        libnet::spawn_on(1, move || {
            let _g = g1;
            let s = libnet::net::UdpSocket::bind(V4_ANY_PORT).expect("udp");
            let mut b = [0u8; 1];
            r1.fetch_add(1, SeqCst);
            let _ = s.recv_from(&mut b);
        }),
        libnet::spawn_on(0, move || {
            let _g = g2;
            r2.fetch_add(1, SeqCst);
            libnet::time::sleep(Duration::from_secs(3600));
        }),
        libnet::spawn_on(1, move || {
            let _g = g3;
            let (tx, rx) = libnet::sync::channel::<u8>(1);
            let _keep = tx;
            r3.fetch_add(1, SeqCst);
            let _ = rx.recv();
        }),
        libnet::spawn_on(0, move || {
            let _g = g4;
            let (_tx, rx) = libnet::sync::oneshot::channel::<u8>();
            r4.fetch_add(1, SeqCst);
            let _ = rx.recv();
        }),
    ]
}

/// Text that marks a panic a test causes on purpose; see [`quiet_expected_panics`].
pub const ON_PURPOSE: &str = "on purpose";

/// Installs (once) a panic hook that stays silent for panics whose message
/// contains [`ON_PURPOSE`] and reports every other panic as before.
pub fn quiet_expected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if panic_message(info.payload()).contains(ON_PURPOSE) {
                return;
            }
            prev(info);
        }));
    });
}

/// Runs `f` on a fresh thread and waits at most `limit` for it.
///
/// `Err` if it panicked (with the message) or did not finish in time (the
/// thread is then left behind: a hung case must fail, not hang the caller).
pub fn with_deadline<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = mpsc::channel();
    let t = thread::Builder::new()
        .name("deadline".into())
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(r);
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    match rx.recv_timeout(limit) {
        Ok(Ok(v)) => {
            let _ = t.join();
            Ok(v)
        }
        Ok(Err(p)) => {
            let _ = t.join();
            Err(format!("panicked: {}", panic_message(&*p)))
        }
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!("timed out after {limit:?}")),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err("thread vanished".to_string()),
    }
}

/// For `#[test]`s: runs `f` with a time limit and fails the test (instead
/// of hanging the whole test binary) if it is exceeded; a panic in `f` is
/// re-raised with its message.
pub fn bounded<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    match with_deadline(limit, f) {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

/// True if this host can bind TCP on `[::1]`.
pub fn ipv6_loopback_available() -> bool {
    StdTcpListener::bind(V6_ANY_PORT).is_ok()
}

/// Announces loudly that an IPv6 test is skipped.
pub fn skip_v6(test: &str) {
    eprintln!(
        "!!!!!!!! SKIPPED {test}: cannot bind [::1] on this host (no IPv6 loopback) !!!!!!!!"
    );
}

/// Echoes everything read from `conn` back, with an `N`-byte buffer on the
/// coroutine's stack, until EOF or an error.
pub fn echo<const N: usize>(mut conn: TcpStream) {
    let mut buf = [0u8; N];
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

/// Inside a runtime: binds `addr` and spawns, on the current loop, an accept
/// loop that serves each connection with [`echo`] (4 KiB buffer) in a
/// coroutine of its own. Returns the bound address and the accept loop's
/// handle (it runs until the runtime stops).
pub fn spawn_echo_server(addr: &str) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    let h = libnet::spawn(move || {
        while let Ok((conn, _)) = listener.accept() {
            libnet::spawn(move || echo::<4096>(conn));
        }
    });
    Ok((local, h))
}

/// A small deterministic PRNG (xorshift64*), for test payloads.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a non-zero seed (0 is mapped to a fixed constant).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Fills `buf` with random bytes. The stream of bytes depends only on
    /// the seed and the total length drawn so far if every buffer but the
    /// last has a length that is a multiple of 8.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let b = self.next_u64().to_le_bytes();
            let n = rest.len();
            rest.copy_from_slice(&b[..n]);
        }
    }
}

/// FNV-1a (64 bit), to summarise transferred data.
pub fn fnv1a(mut h: u64, data: &[u8]) -> u64 {
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// FNV-1a's initial value.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Resident set size of this process in bytes, from /proc/self/statm.
pub fn rss_bytes() -> io::Result<u64> {
    let s = std::fs::read_to_string("/proc/self/statm")?;
    let resident: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::other(format!("unexpected /proc/self/statm: {s:?}")))?;
    Ok(resident * page_size())
}

/// The system's page size in bytes.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions; it only reads a system value.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

/// Number of file descriptors this process has open.
pub fn open_fds() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count())
}

/// Raises the soft RLIMIT_NOFILE towards `want`: first the hard limit too
/// if it is lower (works as root), else up to the hard limit. Returns the
/// soft limit now in force.
pub fn raise_fd_limit(want: u64) -> io::Result<u64> {
    use rlimit::Resource;
    let (soft, hard) = Resource::NOFILE.get()?;
    if soft >= want {
        return Ok(soft);
    }
    if hard < want && Resource::NOFILE.set(want, want).is_ok() {
        return Ok(Resource::NOFILE.get()?.0);
    }
    let target = want.min(hard);
    if target > soft {
        Resource::NOFILE.set(target, hard)?;
    }
    Ok(Resource::NOFILE.get()?.0)
}

/// A loopback TCP port that refuses connections for as long as the returned
/// socket lives: bound (so no other test can take the port) but not listening.
pub fn refusing_port() -> io::Result<(socket2::Socket, SocketAddr)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    let any: SocketAddr = V4_ANY_PORT.parse().expect("valid address");
    s.bind(&any.into())?;
    let addr = s
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("bound socket has no IP address"))?;
    Ok((s, addr))
}

/// Polls `cond` (yielding to the loop, then sleeping 1 ms between tries)
/// until it holds or `limit` passes; returns whether it held. Use inside a
/// coroutine.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        libnet::yield_now();
        if cond() {
            return true;
        }
        libnet::time::sleep(Duration::from_millis(1));
    }
}

/// Asserts `elapsed` is at least `want` and at most `want + LATE`, with a
/// readable message.
pub fn check_elapsed(what: &str, elapsed: Duration, want: Duration) -> Result<(), String> {
    if elapsed < want {
        return Err(format!(
            "{what}: fired EARLY after {elapsed:?} (wanted >= {want:?})"
        ));
    }
    if elapsed > want + LATE {
        return Err(format!(
            "{what}: fired too late after {elapsed:?} (wanted {want:?} + at most {LATE:?})"
        ));
    }
    Ok(())
}

/// Result of [`idle_connections`].
#[derive(Clone, Copy, Debug)]
pub struct IdleStats {
    /// Connections established, echoed once and left idle.
    pub connections: usize,
    /// RSS when main started, in bytes.
    pub rss_before: u64,
    /// RSS with every connection idle, in bytes.
    pub rss_idle: u64,
    /// Time to establish and echo on every connection.
    pub setup: Duration,
    /// Open descriptors with every connection idle (both ends of each).
    pub fds_idle: usize,
    /// From main returning to `run` returning: unwinding every coroutine
    /// and closing every socket.
    pub shutdown: Duration,
}

impl IdleStats {
    /// RSS growth per idle connection (both ends: two coroutines, two sockets).
    pub fn bytes_per_connection(&self) -> f64 {
        self.rss_idle.saturating_sub(self.rss_before) as f64 / self.connections.max(1) as f64
    }
}

/// On ONE loop: an echo server and `n` client coroutines, each holding one
/// loopback connection. Every client sends a 32-byte message and reads the
/// echo, then both ends stay blocked in `read` (idle) while RSS is measured.
/// Then main returns and the runtime unwinds them all.
///
/// Coroutines get `stack_size` bytes of stack; the server buffer is 256
/// bytes on the stack, the client's 32. Clients start in waves of 256 and
/// a wave waits until the server has accepted the previous one, so the
/// listen backlog never overflows.
pub fn idle_connections(n: usize, stack_size: usize, limit: Duration) -> Result<IdleStats, String> {
    use std::cell::Cell;
    use std::rc::Rc;

    let rt = libnet::Runtime::builder()
        .loops(1)
        .stack_size(stack_size)
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let r = rt.run(move || -> Result<(IdleStats, Instant), String> {
        let rss_before = rss_bytes().map_err(|e| e.to_string())?;
        let start = Instant::now();
        let listener = libnet::net::SocketBuilder::new()
            .backlog(4096)
            .listen(V4_ANY_PORT.parse().expect("valid"))
            .map_err(|e| format!("listen: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let accepted = Rc::new(Cell::new(0usize));
        let echoed = Rc::new(Cell::new(0usize));
        let failed: Rc<Cell<Option<String>>> = Rc::new(Cell::new(None));
        {
            let accepted = accepted.clone();
            let failed = failed.clone();
            libnet::spawn(move || loop {
                match listener.accept() {
                    Ok((conn, _)) => {
                        accepted.set(accepted.get() + 1);
                        libnet::spawn(move || echo::<256>(conn));
                    }
                    Err(e) => {
                        failed.set(Some(format!("accept: {e}")));
                        return;
                    }
                }
            });
        }
        const WAVE: usize = 256;
        let mut spawned = 0;
        while spawned < n {
            let wave = WAVE.min(n - spawned);
            for i in spawned..spawned + wave {
                let echoed = echoed.clone();
                let failed = failed.clone();
                libnet::spawn(move || {
                    let r = (|| -> io::Result<()> {
                        let mut c = TcpStream::connect(addr)?;
                        let mut msg = [0u8; 32];
                        let text = format!("hello from client {i:>10}");
                        msg[..text.len()].copy_from_slice(text.as_bytes());
                        c.write_all(&msg)?;
                        let mut back = [0u8; 32];
                        c.read_exact(&mut back)?;
                        if back != msg {
                            return Err(io::Error::other("echo differs"));
                        }
                        echoed.set(echoed.get() + 1);
                        // Idle: blocked in read until the runtime stops.
                        let mut b = [0u8; 1];
                        match c.read(&mut b) {
                            Ok(0) => Err(io::Error::other("server closed an idle connection")),
                            Ok(_) => Err(io::Error::other("unexpected data on an idle connection")),
                            Err(e) => Err(e),
                        }
                    })();
                    if let Err(e) = r {
                        failed.set(Some(format!("client {i}: {e}")));
                    }
                });
            }
            spawned += wave;
            let left = limit.saturating_sub(start.elapsed());
            if !wait_until(left, || accepted.get() >= spawned || has(&failed)) {
                return Err(format!(
                    "only {} of {spawned} connections accepted within {limit:?}",
                    accepted.get()
                ));
            }
            if let Some(e) = failed.take() {
                return Err(e);
            }
        }
        let left = limit.saturating_sub(start.elapsed());
        if !wait_until(left, || echoed.get() >= n || has(&failed)) {
            return Err(format!(
                "only {} of {n} echoes within {limit:?}",
                echoed.get()
            ));
        }
        if let Some(e) = failed.take() {
            return Err(e);
        }
        let setup = start.elapsed();
        // Let every coroutine settle into its idle read.
        libnet::time::sleep(Duration::from_millis(50));
        if let Some(e) = failed.take() {
            return Err(e);
        }
        let stats = IdleStats {
            connections: n,
            rss_before,
            rss_idle: rss_bytes().map_err(|e| e.to_string())?,
            setup,
            fds_idle: open_fds().map_err(|e| e.to_string())?,
            shutdown: Duration::ZERO,
        };
        Ok((stats, Instant::now()))
    });
    match r {
        Ok(Ok((mut stats, main_end))) => {
            stats.shutdown = main_end.elapsed();
            Ok(stats)
        }
        Ok(Err(e)) => Err(e),
        Err(e) => Err(format!("runtime stopped early: {e}")),
    }
}

/// True if a failure has been recorded (without taking it).
fn has(failed: &std::cell::Cell<Option<String>>) -> bool {
    let v = failed.take();
    let some = v.is_some();
    failed.set(v);
    some
}

/// A tracker on loopback for tests: TCP on `tcp` (port 0: any), two UDP
/// ports of its own, gossip and relinking every 50 ms, edge key `key`.
pub fn loopback_tracker(
    tcp: SocketAddr,
    links: Vec<SocketAddr>,
    key: &[u8],
) -> libnet::p2p::tracker::Tracker {
    use libnet::p2p::{registry, tracker};
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    tracker::Tracker::start(tracker::Config {
        tcp,
        udp: any,
        udp_alt: Some(any),
        links,
        gossip: Duration::from_millis(50),
        relink: Duration::from_millis(50),
        registry: registry::Config {
            edge_key: key.to_vec(),
            ..registry::Config::default()
        },
        ..tracker::Config::default()
    })
    .expect("tracker starts")
}

/// The `Hello` of test node `node`: local address port 20000 + `node`,
/// workload `node`, NAT unknown, edge key `key` (empty for peers).
pub fn test_hello(
    node: u64,
    role: libnet::p2p::Role,
    room: u32,
    key: &[u8],
) -> libnet::p2p::client::Hello {
    libnet::p2p::client::Hello {
        node,
        role,
        room,
        local: (
            [127, 0, 0, 1],
            u16::try_from(20000 + node % 40000).unwrap_or(0),
        )
            .into(),
        public: None,
        workload: u32::try_from(node).unwrap_or(u32::MAX),
        nat: libnet::p2p::NatType::Unknown,
        key: key.to_vec(),
    }
}

/// Deterministic test data: `len` bytes of an xorshift stream from `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// [`wait_until`] with 10 s, panicking with `what` if `cond` never holds.
/// Use inside a coroutine.
pub fn eventually(what: &str, cond: impl FnMut() -> bool) {
    assert!(
        wait_until(Duration::from_secs(10), cond),
        "timed out waiting until {what}"
    );
}
