//! Reliable UDP (KCP) against TCP, both on libnet, in the same run.
//!
//! 1. Loopback, no loss: one connection's bulk goodput (RUDP and TCP) and
//!    64-byte ping-pong round trips per second (RUDP).
//! 2. Through a lossy path (0%, 5%, 10%): two hosts in network namespaces
//!    joined by a router whose nftables forward chain drops that share of
//!    packets in both directions (tests/src/netlab.rs). The same path for
//!    both protocols. Latency of 1 KiB messages sent at 100 per second,
//!    measured one way (both ends are threads of this process, sharing one
//!    clock): mean, p50, p99, max; and bulk goodput at 5% loss.
//!
//! Part 2 needs root (namespaces); without it the bench says so and skips it.
//! Env: RUDP_LAT_SECS (default 10) seconds of messages per latency run,
//! RUDP_BULK_MB (default 64) megabytes per bulk run, RUDP_LOSSES (default
//! "0,5,10") the loss percentages to measure latency at, RUDP_LAB=0 skips
//! part 2. `RUDP_BULK_MB=0 RUDP_LAB=0` runs only the ping-pong.

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use libnet::net::{TcpListener, TcpStream};
use libnet::rudp::{Config, RudpSocket};
use libnet_tests::netlab::{Host, Lab};

const MSG: usize = 1024;
const PING: usize = 64;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `f` on a one-loop libnet runtime on this thread.
fn on_runtime<T: 'static>(f: impl FnOnce() -> T + 'static) -> T {
    libnet_tests::run_on(1, f)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Proto {
    Rudp,
    Tcp,
}

/// The receiving side: accepts one connection on `bind` and hands its byte
/// stream to `receive`.
fn serve(
    proto: Proto,
    bind: SocketAddr,
    ready: mpsc::Sender<SocketAddr>,
    receive: impl FnOnce(&mut dyn Read) -> Vec<u64> + 'static,
) -> Vec<u64> {
    on_runtime(move || match proto {
        Proto::Rudp => {
            let s = RudpSocket::bind(bind, Config::default()).expect("bind");
            ready.send(s.local_addr().expect("addr")).expect("ready");
            let (conn, _) = s.accept().expect("accept");
            receive(&mut conn.stream())
        }
        Proto::Tcp => {
            let l = TcpListener::bind(bind).expect("bind");
            ready.send(l.local_addr().expect("addr")).expect("ready");
            let (mut s, _) = l.accept().expect("accept");
            s.set_nodelay(true).expect("nodelay");
            receive(&mut s)
        }
    })
}

/// The sending side: connects to `to` and runs `job`.
fn client(proto: Proto, to: SocketAddr, base: Instant, job: Job) -> f64 {
    on_runtime(move || match proto {
        Proto::Rudp => {
            let local: SocketAddr = "0.0.0.0:0".parse().expect("valid");
            let s = RudpSocket::bind(local, Config::default()).expect("bind");
            let mut stream = s.connect(to).expect("connect").stream();
            let r = job.send(&mut stream, base);
            // Let the tail be acknowledged before the socket goes.
            stream.connection().close();
            while let Ok(Some(_)) = stream.connection().recv() {}
            r
        }
        Proto::Tcp => {
            let mut s = TcpStream::connect(to).expect("connect");
            s.set_nodelay(true).expect("nodelay");
            let r = job.send(&mut s, base);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut sink = [0u8; 16];
            let _ = s.read(&mut sink);
            r
        }
    })
}

/// What one run does on each side.
#[derive(Clone, Copy)]
enum Job {
    /// `bytes` as fast as possible; the receiver returns [elapsed ns].
    Bulk { bytes: u64 },
    /// `count` messages of MSG bytes every `gap`; the receiver returns each
    /// message's one-way latency in ns.
    Paced { count: u64, gap: Duration },
}

impl Job {
    fn send(self, w: &mut impl Write, base: Instant) -> f64 {
        match self {
            Job::Bulk { bytes } => {
                let chunk = vec![0x5au8; 64 * 1024];
                let mut left = bytes;
                let t = Instant::now();
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    w.write_all(&chunk[..n]).expect("bulk write");
                    left -= n as u64;
                }
                t.elapsed().as_secs_f64()
            }
            Job::Paced { count, gap } => {
                let mut msg = vec![0u8; MSG];
                let start = Instant::now();
                for i in 0..count {
                    libnet::time::sleep_until(start + gap * i as u32);
                    let now = base.elapsed().as_nanos() as u64;
                    msg[..8].copy_from_slice(&now.to_le_bytes());
                    w.write_all(&msg).expect("paced write");
                }
                start.elapsed().as_secs_f64()
            }
        }
    }
}

/// The bulk receiver: returns [ns from the first byte to the last].
fn receive_bulk(r: &mut dyn Read, bytes: u64) -> Vec<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    let mut t = None;
    while got < bytes {
        let n = r.read(&mut buf).expect("bulk read");
        assert!(n > 0, "bulk stream ended early at {got} of {bytes}");
        t.get_or_insert_with(Instant::now);
        got += n as u64;
    }
    vec![t.map_or(0, |t| t.elapsed().as_nanos() as u64)]
}

/// The paced receiver: each message's one-way latency in ns, against the
/// send time the sender wrote relative to the shared `base`.
fn receive_paced(r: &mut dyn Read, count: u64, base: Instant) -> Vec<u64> {
    let mut msg = [0u8; MSG];
    let mut lat = Vec::with_capacity(count as usize);
    for _ in 0..count {
        r.read_exact(&mut msg).expect("paced read");
        let sent = u64::from_le_bytes(msg[..8].try_into().expect("8 bytes"));
        let now = base.elapsed().as_nanos() as u64;
        lat.push(now.saturating_sub(sent));
    }
    lat
}

/// Starts a closure where the receiving side lives.
type ServerOn<'a> = &'a dyn Fn(Box<dyn FnOnce() -> Vec<u64> + Send>) -> JoinHandle<Vec<u64>>;
/// Starts a closure where the sending side lives.
type ClientOn<'a> = &'a dyn Fn(Box<dyn FnOnce() -> f64 + Send>) -> JoinHandle<f64>;

/// One run between two places: `server_on`/`client_on` run a closure where
/// each side lives (a namespace host, or just a thread on loopback).
fn one_run(
    proto: Proto,
    job: Job,
    server_on: ServerOn<'_>,
    client_on: ClientOn<'_>,
    bind: SocketAddr,
    connect_host: Option<std::net::Ipv4Addr>,
) -> (Vec<u64>, f64) {
    let base = Instant::now();
    let (tx, rx) = mpsc::channel();
    let server = server_on(Box::new(move || {
        serve(proto, bind, tx, move |r| match job {
            Job::Paced { count, .. } => receive_paced(r, count, base),
            Job::Bulk { bytes } => receive_bulk(r, bytes),
        })
    }));
    let mut addr = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("server ready");
    if let Some(ip) = connect_host {
        addr = SocketAddr::V4(SocketAddrV4::new(ip, addr.port()));
    }
    let c = client_on(Box::new(move || client(proto, addr, base, job)));
    let sent = c.join().expect("client");
    let got = server.join().expect("server");
    (got, sent)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1e6
}

struct Lat {
    mean: f64,
    p50: f64,
    p99: f64,
    max: f64,
}

fn summarize(mut ns: Vec<u64>) -> Lat {
    ns.sort_unstable();
    let mean = ns.iter().map(|&x| x as f64).sum::<f64>() / ns.len().max(1) as f64 / 1e6;
    Lat {
        mean,
        p50: percentile(&ns, 0.5),
        p99: percentile(&ns, 0.99),
        max: ns.last().map_or(f64::NAN, |&m| m as f64 / 1e6),
    }
}

fn loopback_thread<T: Send + 'static>(
    f: Box<dyn FnOnce() -> T + Send>,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(f)
}

/// Round trips per second of 64-byte messages over one RUDP connection,
/// each end on its own one-loop runtime; `spin` is the loops' idle spin
/// (`Builder::spin_max()`, the default, or zero to sleep at once).
fn ping_pong_rudp(secs: f64, spin: Duration) -> f64 {
    let on_runtime = move |f: Box<dyn FnOnce() -> f64>| {
        libnet::Runtime::builder()
            .loops(1)
            .spin(spin)
            .build()
            .expect("runtime")
            .run(f)
            .expect("runtime ran")
    };
    let (tx, rx) = mpsc::channel();
    let server = std::thread::spawn(move || {
        on_runtime(Box::new(move || {
            let s = RudpSocket::bind("127.0.0.1:0".parse().expect("valid"), Config::default())
                .expect("bind");
            tx.send(s.local_addr().expect("addr")).expect("ready");
            let (conn, _) = s.accept().expect("accept");
            while let Ok(Some(m)) = conn.recv() {
                if conn.send(&m).is_err() {
                    break;
                }
            }
            0.0
        }))
    });
    let addr: SocketAddr = rx.recv().expect("ready");
    let rate = on_runtime(Box::new(move || {
        let s = RudpSocket::bind("127.0.0.1:0".parse().expect("valid"), Config::default())
            .expect("bind");
        let conn = s.connect(addr).expect("connect");
        let msg = [7u8; PING];
        let t = Instant::now();
        let mut n = 0u64;
        while t.elapsed().as_secs_f64() < secs {
            conn.send(&msg).expect("ping");
            conn.recv().expect("pong").expect("pong");
            n += 1;
        }
        let rate = n as f64 / t.elapsed().as_secs_f64();
        if std::env::var("RUDP_DEBUG").is_ok() {
            let st = conn.stats().unwrap_or_default();
            eprintln!(
                "  (client: {:.2} packets sent, {:.2} received per round trip)",
                st.packets_sent as f64 / n as f64,
                st.packets_received as f64 / n as f64
            );
        }
        conn.close();
        while let Ok(Some(_)) = conn.recv() {}
        rate
    }));
    server.join().expect("server");
    rate
}

/// The yardstick: the raw `kcp` crate on blocking std sockets, one thread
/// per side, driven eagerly (flush right after every send and input, no
/// timers, no loss to recover from), in the same mode and window as
/// libnet's default config. Round trips per second of 64-byte messages.
fn ping_pong_raw_kcp(secs: f64) -> f64 {
    use std::net::UdpSocket;
    use std::sync::Arc;

    /// KCP's output: one datagram per call, to the peer.
    struct Out(Arc<UdpSocket>, SocketAddr);
    impl Write for Out {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.send_to(b, self.1)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    fn kcp(sock: &Arc<UdpSocket>, peer: SocketAddr) -> kcp::Kcp<Out> {
        let mut k = kcp::Kcp::new(1, Out(sock.clone(), peer));
        k.set_nodelay(true, 10, 2, true);
        k.set_rx_minrto(10);
        k.set_wndsize(1024, 1024);
        // KCP's clock stays at 0: nothing is ever due for retransmission,
        // so every send is the flush right after it (the eager path).
        let _ = k.update(0);
        k
    }
    /// Feeds datagrams until one whole message is ready; `None` once the
    /// socket times out (the other side has stopped).
    fn next(k: &mut kcp::Kcp<Out>, sock: &UdpSocket, msg: &mut [u8]) -> Option<usize> {
        let mut dg = [0u8; 2048];
        loop {
            if let Ok(n) = k.recv(msg) {
                return Some(n);
            }
            let (n, _) = sock.recv_from(&mut dg).ok()?;
            let _ = k.input(&dg[..n]);
            let _ = k.flush();
        }
    }
    let a = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind"));
    let b = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind"));
    for s in [&a, &b] {
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
    }
    let (aa, ba) = (a.local_addr().expect("addr"), b.local_addr().expect("addr"));
    let server = std::thread::spawn(move || {
        let mut k = kcp(&b, aa);
        let mut msg = [0u8; PING];
        while let Some(n) = next(&mut k, &b, &mut msg) {
            let _ = k.send(&msg[..n]);
            let _ = k.flush();
        }
    });
    let mut k = kcp(&a, ba);
    let mut msg = [7u8; PING];
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed().as_secs_f64() < secs {
        let _ = k.send(&msg);
        let _ = k.flush();
        // A datagram the kernel dropped stalls this loop (no retransmission
        // timers): the socket's timeout ends the run with what it counted.
        if next(&mut k, &a, &mut msg).is_none() {
            eprintln!("  (raw kcp: a datagram was lost; run cut short)");
            break;
        }
        n += 1;
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    server.join().expect("server");
    rate
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful.
    let lat_secs = env_u64("RUDP_LAT_SECS", 10);
    let bulk = env_u64("RUDP_BULK_MB", 64) << 20;
    let lo: SocketAddr = "127.0.0.1:0".parse().expect("valid");

    println!("== loopback, no loss");
    let bulk_protos: &[Proto] = if bulk == 0 {
        &[]
    } else {
        &[Proto::Rudp, Proto::Tcp]
    };
    for &proto in bulk_protos {
        let (got, _) = one_run(
            proto,
            Job::Bulk { bytes: bulk },
            &loopback_thread,
            &loopback_thread,
            lo,
            None,
        );
        let secs = got[0] as f64 / 1e9;
        println!(
            "  bulk {proto:?}: {:.0} MB/s ({} MiB in {secs:.2} s)",
            bulk as f64 / secs / 1e6,
            bulk >> 20
        );
    }
    // Alternate so all see the same machine weather; report the ratios.
    let default_spin = libnet::Runtime::builder().spin_max();
    let (mut ours, mut asleep, mut raw) = (0.0, 0.0, 0.0);
    for _ in 0..3 {
        ours += ping_pong_rudp(1.0, default_spin) / 3.0;
        asleep += ping_pong_rudp(1.0, Duration::ZERO) / 3.0;
        raw += ping_pong_raw_kcp(1.0) / 3.0;
    }
    println!(
        "  ping-pong 64 B: Rudp {ours:.0} round trips/s, raw kcp crate {raw:.0} (Rudp/raw {:.2}x)",
        ours / raw
    );
    println!(
        "  ping-pong 64 B, loops never spinning (spin 0): Rudp {asleep:.0} round trips/s (Rudp/raw {:.2}x)",
        asleep / raw
    );

    if std::env::var("RUDP_LAB").is_ok_and(|v| v == "0") {
        println!("== lossy path: skipped (RUDP_LAB=0)");
        return;
    }
    let Some(mut lab) = Lab::new("rudpbench") else {
        println!("== lossy path: SKIPPED (needs root and network namespaces; see above)");
        return;
    };
    let pair = lab.pair_with_loss(0).expect("lossy pair");
    let (a, b): (Host, Host) = (pair.a.clone(), pair.b.clone());
    let on = |h: Host| move |f: Box<dyn FnOnce() -> Vec<u64> + Send>| h.spawn(f);
    let on_f = |h: Host| move |f: Box<dyn FnOnce() -> f64 + Send>| h.spawn(f);
    let bind: SocketAddr = "0.0.0.0:0".parse().expect("valid");
    let count = lat_secs * 100;
    println!(
        "== lossy path (router drops N% both ways), 1 KiB messages at 100/s for {lat_secs} s, one-way latency in ms"
    );
    println!("  loss proto     mean      p50      p99      max");
    let mut table = Vec::new();
    let losses: Vec<u8> = std::env::var("RUDP_LOSSES")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![0, 5, 10]);
    for &loss in &losses {
        lab.set_loss(&pair.router, loss).expect("set loss");
        for proto in [Proto::Rudp, Proto::Tcp] {
            let (lat, _) = one_run(
                proto,
                Job::Paced {
                    count,
                    gap: Duration::from_millis(10),
                },
                &on(b.clone()),
                &on_f(a.clone()),
                bind,
                Some(b.addr),
            );
            let l = summarize(lat);
            eprintln!("  ({loss}% {proto:?} done)");
            println!(
                "  {loss:>3}% {:<5} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                format!("{proto:?}"),
                l.mean,
                l.p50,
                l.p99,
                l.max
            );
            table.push((loss, proto, l));
        }
    }
    for loss in [5u8, 10] {
        let get = |p| {
            table
                .iter()
                .find(|(l, q, _)| *l == loss && *q == p)
                .map(|(_, _, l)| l)
        };
        if let (Some(r), Some(t)) = (get(Proto::Rudp), get(Proto::Tcp)) {
            println!(
                "  at {loss}%: mean RUDP/TCP {:.2} ({}), max TCP/RUDP {:.1}x",
                r.mean / t.mean,
                if r.mean < t.mean {
                    format!("RUDP {:.0}% lower", (1.0 - r.mean / t.mean) * 100.0)
                } else {
                    format!("RUDP {:.0}% higher", (r.mean / t.mean - 1.0) * 100.0)
                },
                t.max / r.max
            );
        }
    }
    lab.set_loss(&pair.router, 5).expect("set loss");
    println!("== lossy path, 5% loss, bulk goodput");
    for proto in [Proto::Rudp, Proto::Tcp] {
        let bytes = bulk / 4;
        let (got, _) = one_run(
            proto,
            Job::Bulk { bytes },
            &on(b.clone()),
            &on_f(a.clone()),
            bind,
            Some(b.addr),
        );
        let secs = got[0] as f64 / 1e9;
        println!(
            "  bulk {proto:?}: {:.1} MB/s ({} MiB in {secs:.2} s)",
            bytes as f64 / secs / 1e6,
            bytes >> 20
        );
    }
}
