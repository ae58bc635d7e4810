//! Reliable UDP over real sockets between two network namespaces, through a
//! router whose nftables forward chain drops packets at random.
//! Needs root: elsewhere it says SKIPPED loudly (and fails when CI is set).

use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use libnet::rudp::{Config, RudpSocket};
use libnet_tests::netlab::Lab;
use libnet_tests::Rng;

/// Deterministic pseudo-random content.
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    Rng::new(seed).fill(&mut data);
    data
}

fn digest(data: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

/// Runs `f` on a one-loop libnet runtime on this thread.
fn on_runtime<T: 'static>(f: impl FnOnce() -> T + 'static) -> T {
    libnet_tests::run_on(1, f)
}

/// 50 MB byte-exact across a path that drops 10% of packets both ways.
#[test]
fn fifty_megabytes_cross_a_path_with_ten_percent_loss() {
    const LEN: usize = 50_000_000;
    let Some(mut lab) = Lab::require("rudp_loss") else {
        return;
    };
    let pair = lab.pair_with_loss(10).expect("lossy pair");
    let data = content(LEN, 7);
    let want = digest(&data);
    let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
    let receiver = pair.b.spawn(move || {
        on_runtime(move || {
            let s = RudpSocket::bind("0.0.0.0:0".parse().expect("valid"), Config::default())
                .expect("bind in namespace b");
            tx.send(s.local_addr().expect("addr")).expect("ready");
            let (conn, _) = s.accept().expect("accept");
            let mut got = Vec::with_capacity(LEN);
            conn.stream().read_to_end(&mut got).expect("read");
            // The receiver's process ends right away, as rudp_cat's does: the
            // sender must not depend on hearing from it again.
            got
        })
    });
    let port = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("receiver ready")
        .port();
    let to = SocketAddr::V4(SocketAddrV4::new(pair.b.addr, port));
    let started = Instant::now();
    let stats = pair.a.spawn(move || {
        on_runtime(move || {
            let s = RudpSocket::bind("0.0.0.0:0".parse().expect("valid"), Config::default())
                .expect("bind in namespace a");
            let mut stream = s
                .connect(to)
                .expect("connect across the lossy path")
                .stream();
            stream.write_all(&data).expect("write");
            let stats = stream.connection().stats();
            stream.connection().close();
            // The orderly close must complete (Ok(None)), even if the last
            // CLOSE_ACK is lost and the receiver is already gone.
            let end = stream.connection().recv().expect("orderly close");
            assert!(end.is_none(), "unexpected message after close");
            stats
        })
    });
    let stats = stats.join().expect("sender");
    let got = receiver.join().expect("receiver");
    let took = started.elapsed();
    assert_eq!(got.len(), LEN, "length differs");
    assert_eq!(digest(&got), want, "content differs");
    if let Some(s) = stats {
        eprintln!(
            "50 MB across 10% loss in {took:?} ({:.1} MB/s): {} retransmissions, {:.1}% loss seen, rtt {:?}",
            LEN as f64 / took.as_secs_f64() / 1e6,
            s.retransmissions,
            s.loss_seen * 100.0,
            s.rtt
        );
        assert!(s.retransmissions > 0, "10% loss caused no retransmission?");
    }
}
