//! The network lab (`libnet_tests::netlab`) itself: hosts in namespaces
//! talk over the public bridge, loss on a path is about what was asked,
//! the four NAT types map and filter as theory says, and nothing is left
//! behind.
//!
//! Needs root, iproute2 and nftables; without them every test prints
//! `SKIPPED` and passes, unless `CI` or `LIBNET_LAB` is set (then it fails).

use std::collections::HashSet;
use std::io::ErrorKind;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use libnet_tests::netlab::{
    list_namespaces, output_within, sweep_dead_labs, whoami, Lab, NatKind, Whoami, COMMAND_LIMIT,
    WHOAMI_PORT,
};
use libnet_tests::{bounded, quiet_expected_panics, ON_PURPOSE};

const LIMIT: Duration = Duration::from_secs(50);
const ASK: Duration = Duration::from_secs(3);

fn ours(prefix: &str) -> Vec<String> {
    list_namespaces()
        .expect("ip netns list")
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Two public hosts: a UDP echo server on one (in `Host::spawn`), a client
/// on the other (in `Host::run`); every datagram comes back, with the
/// addresses the lab gave.
#[test]
fn public_hosts_exchange_udp() {
    bounded(LIMIT, || {
        let Some(mut lab) = Lab::require("udp_echo") else {
            return;
        };
        let s = lab.public_host("server").expect("server host");
        let c = lab.public_host("client").expect("client host");
        const N: usize = 100;
        let server_addr = s.sock(7);
        let (ready_tx, ready_rx) = mpsc::channel();
        let server = s.spawn(move || {
            let sock = UdpSocket::bind(server_addr).expect("bind inside the server host");
            sock.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            ready_tx.send(()).expect("ready");
            let mut seen = HashSet::new();
            let mut buf = [0u8; 1500];
            for _ in 0..N {
                let (n, from) = sock.recv_from(&mut buf).expect("server recv");
                seen.insert(from);
                sock.send_to(&buf[..n], from).expect("server send");
            }
            seen
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("server ready");
        let (c_addr, s_addr) = (c.addr, s.addr);
        let client_port = c.run(move || {
            // Inside the client host the server's address is not ours.
            let e = UdpSocket::bind((s_addr, 0)).expect_err("bound another host's address");
            assert_eq!(e.kind(), ErrorKind::AddrNotAvailable);
            let sock = UdpSocket::bind((c_addr, 0)).expect("bind inside the client host");
            sock.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            let mut buf = [0u8; 1500];
            for i in 0..N {
                let msg = format!("ping {i}");
                sock.send_to(msg.as_bytes(), server_addr).expect("send");
                let (n, from) = sock.recv_from(&mut buf).expect("echo reply");
                assert_eq!(from, SocketAddr::V4(server_addr));
                assert_eq!(&buf[..n], msg.as_bytes());
            }
            sock.local_addr().expect("local addr").port()
        });
        let seen = server.join().expect("server thread");
        let want: HashSet<SocketAddr> = [SocketAddr::V4(c.sock(client_port))].into();
        assert_eq!(seen, want, "the server saw the client's own address");
    });
}

/// Sends `n` numbered datagrams from `tx` to `to` (where `rx` listens),
/// paced so no socket buffer overflows; returns how many did not arrive.
fn lost(tx: &UdpSocket, rx: &UdpSocket, to: SocketAddrV4, n: u32, run: u32) -> u32 {
    let rx = rx.try_clone().expect("clone");
    rx.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let counter = thread::spawn(move || {
        let mut got = vec![false; n as usize];
        let mut buf = [0u8; 64];
        loop {
            match rx.recv_from(&mut buf) {
                Ok((8, _)) => {
                    let r = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes"));
                    let i = u32::from_be_bytes(buf[4..8].try_into().expect("4 bytes"));
                    if r == run && i < n {
                        got[i as usize] = true;
                    }
                }
                Ok(_) => {}
                Err(_) if flag.load(Ordering::Relaxed) => break,
                Err(_) => {}
            }
        }
        got.iter().filter(|g| !**g).count() as u32
    });
    for i in 0..n {
        let mut msg = [0u8; 8];
        msg[..4].copy_from_slice(&run.to_be_bytes());
        msg[4..].copy_from_slice(&i.to_be_bytes());
        tx.send_to(&msg, to).expect("send");
        if i % 20 == 19 {
            thread::sleep(Duration::from_millis(1));
        }
    }
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    counter.join().expect("counter thread")
}

/// 10 % loss on the router between a pair loses about 10 % of 2,000
/// datagrams; loss 0 loses none; 100 % on a host loses all.
#[test]
fn loss_on_a_path_is_roughly_as_set() {
    bounded(LIMIT, || {
        let Some(mut lab) = Lab::require("loss") else {
            return;
        };
        let pair = lab.pair_with_loss(0).expect("pair");
        let rx = pair.b.udp_bind(9000).expect("bind b");
        let tx = pair.a.udp_bind(0).expect("bind a");
        let to = pair.b.sock(9000);
        // Warm up (neighbour discovery) without loss.
        assert_eq!(lost(&tx, &rx, to, 10, 0), 0, "lost datagrams without loss");

        lab.set_loss(&pair.router, 10).expect("set loss 10");
        let n = 2000;
        let l = lost(&tx, &rx, to, n, 1);
        let pct = f64::from(l) * 100.0 / f64::from(n);
        eprintln!("10 % loss on the path: lost {l} of {n} ({pct:.1} %)");
        assert!(
            (4.0..=20.0).contains(&pct),
            "lost {pct:.1} % with 10 % loss set"
        );

        lab.set_loss(&pair.router, 0).expect("set loss 0");
        assert_eq!(lost(&tx, &rx, to, 300, 2), 0, "lost datagrams at loss 0");

        lab.set_loss(&pair.b, 100).expect("set host loss 100");
        assert_eq!(
            lost(&tx, &rx, to, 50, 3),
            50,
            "datagrams got through 100 % loss"
        );
        lab.set_loss(&pair.b, 0).expect("clear host loss");
        assert_eq!(
            lost(&tx, &rx, to, 50, 4),
            0,
            "lost datagrams after clearing"
        );

        assert!(lab.set_loss(&pair.router, 101).is_err());
    });
}

/// Sends `tag` from `from` to `to` and reports whether `at` receives it
/// (within 1 s if it should, 400 ms if it should not).
fn delivered(from: &UdpSocket, to: SocketAddrV4, at: &UdpSocket, tag: &str, expect: bool) -> bool {
    for _ in 0..3 {
        from.send_to(tag.as_bytes(), to).expect("probe send");
        thread::sleep(Duration::from_millis(10));
    }
    let wait = if expect { 1000 } else { 400 };
    let deadline = Instant::now() + Duration::from_millis(wait);
    let mut buf = [0u8; 1500];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        at.set_read_timeout(Some(deadline - now)).expect("timeout");
        match at.recv_from(&mut buf) {
            Ok((n, _)) if &buf[..n] == tag.as_bytes() => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(e) => panic!("probe recv: {e}"),
        }
    }
}

/// A host behind a NAT of `kind` talks to whoami services on two public
/// hosts, then three kinds of unsolicited senders try to reach its mapping.
fn check_nat(kind: NatKind, lab_name: &str) {
    let Some(mut lab) = Lab::require(lab_name) else {
        return;
    };
    let s1 = lab.public_host("s1").expect("s1");
    let s2 = lab.public_host("s2").expect("s2");
    let s3 = lab.public_host("s3").expect("s3");
    let nat = lab.nat("nat", kind).expect("nat");
    let h = lab.host_behind(&nat, "h").expect("host behind");
    let w1 = Whoami::start(&s1, WHOAMI_PORT).expect("whoami on s1");
    let w2 = Whoami::start(&s2, WHOAMI_PORT).expect("whoami on s2");
    let sock = h.udp_bind(4000).expect("bind h:4000");
    let fresh = h.udp_bind(4001).expect("bind h:4001");
    let s1_other = s1.udp_bind(5001).expect("bind s1:5001");
    let s3_sock = s3.udp_bind(5000).expect("bind s3:5000");

    // Nothing gets in before the host has sent anything from that port.
    assert!(
        !delivered(
            &s3_sock,
            SocketAddrV4::new(nat.public_addr, 4001),
            &fresh,
            "early",
            false
        ),
        "{kind}: unsolicited datagram reached a port that never sent"
    );

    let m1 = whoami(&sock, w1.addr, ASK).expect("whoami via s1");
    let m2 = whoami(&sock, w2.addr, ASK).expect("whoami via s2");
    eprintln!(
        "{kind}: h {} seen as {m1} by s1 and {m2} by s2",
        h.sock(4000)
    );
    assert_eq!(
        *m1.ip(),
        nat.public_addr,
        "{kind}: s1 sees the NAT's address"
    );
    assert_eq!(
        *m2.ip(),
        nat.public_addr,
        "{kind}: s2 sees the NAT's address"
    );
    if kind == NatKind::Symmetric {
        assert_ne!(m1.port(), m2.port(), "{kind}: one port per destination");
    } else {
        assert_eq!(m1, m2, "{kind}: one mapping for all destinations");
    }

    let (from_same_addr, from_anyone) = match kind {
        NatKind::FullCone => (true, true),
        NatKind::AddressRestricted => (true, false),
        NatKind::PortRestricted | NatKind::Symmetric => (false, false),
    };
    assert_eq!(
        delivered(&s1_other, m1, &sock, "same-addr", from_same_addr),
        from_same_addr,
        "{kind}: from s1 (sent to) but another port; expected delivered = {from_same_addr}"
    );
    assert_eq!(
        delivered(&s3_sock, m1, &sock, "anyone", from_anyone),
        from_anyone,
        "{kind}: from s3 (never sent to); expected delivered = {from_anyone}"
    );
    // And the flow the host opened still works both ways.
    assert_eq!(whoami(&sock, w1.addr, ASK).expect("whoami again"), m1);
}

#[test]
fn nat_full_cone() {
    bounded(LIMIT, || check_nat(NatKind::FullCone, "full_cone"));
}

#[test]
fn nat_address_restricted() {
    bounded(LIMIT, || {
        check_nat(NatKind::AddressRestricted, "addr_restricted")
    });
}

#[test]
fn nat_port_restricted() {
    bounded(LIMIT, || {
        check_nat(NatKind::PortRestricted, "port_restricted")
    });
}

#[test]
fn nat_symmetric() {
    bounded(LIMIT, || check_nat(NatKind::Symmetric, "symmetric"));
}

/// Dropping a lab, normally or while a test panics, deletes all its
/// namespaces; namespaces of dead processes are swept.
#[test]
fn teardown_leaves_nothing() {
    bounded(LIMIT, || {
        quiet_expected_panics();
        let prefix = {
            let Some(mut lab) = Lab::require("teardown") else {
                return;
            };
            lab.public_host("p").expect("public host");
            let nat = lab.nat("nat", NatKind::Symmetric).expect("nat");
            let h = lab.host_behind(&nat, "h").expect("host behind");
            lab.set_loss(&h, 5).expect("loss on host");
            lab.set_loss(&nat, 5).expect("loss on nat");
            let pair = lab.pair_with_loss(1).expect("pair");
            assert_eq!(
                lab.public_host("p").unwrap_err().kind(),
                ErrorKind::AlreadyExists
            );
            assert!(lab.public_host("bad name").is_err());
            let mine = ours(lab.prefix());
            assert_eq!(
                mine.len(),
                7,
                "internet, p, nat, h, pair router and hosts: {mine:?}"
            );
            assert_eq!(mine.len(), lab.namespaces().len());
            // The host's namespace works from the shell too.
            let out = output_within(
                pair.a
                    .command("ip")
                    .args(["-4", "-o", "addr", "show", "eth0"]),
                None,
                COMMAND_LIMIT,
            )
            .expect("ip netns exec");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains(&pair.a.addr.to_string()), "{text}");
            lab.prefix().to_string()
        };
        assert_eq!(
            ours(&prefix),
            Vec::<String>::new(),
            "left behind after drop"
        );

        let seen = Arc::new(Mutex::new(String::new()));
        let seen2 = seen.clone();
        let r = std::panic::catch_unwind(move || {
            let mut lab = Lab::require("teardown_panic").expect("lab worked a moment ago");
            lab.public_host("p").expect("public host");
            *seen2.lock().expect("lock") = lab.prefix().to_string();
            panic!("{ON_PURPOSE}: a test fails with a lab alive");
        });
        assert!(r.is_err());
        let prefix = seen.lock().expect("lock").clone();
        assert!(!prefix.is_empty());
        assert_eq!(
            ours(&prefix),
            Vec::<String>::new(),
            "left behind after a panic"
        );

        // A namespace named for a process that no longer runs is swept.
        let mut child = Command::new("true").spawn().expect("spawn true");
        let dead = child.id();
        child.wait().expect("wait");
        let stale = format!("netlab-{dead}-0-stale-x");
        let out = output_within(
            Command::new("ip").args(["netns", "add", &stale]),
            None,
            COMMAND_LIMIT,
        )
        .expect("ip netns add");
        assert!(out.status.success());
        sweep_dead_labs();
        let left = ours(&stale);
        if !left.is_empty() {
            let _ = output_within(
                Command::new("ip").args(["netns", "del", &stale]),
                None,
                COMMAND_LIMIT,
            );
        }
        assert!(left.is_empty(), "stale namespace not swept");
    });
}

/// Two hosts behind one full cone use the same local port towards the same
/// server: the NAT gives the second another public port, and inbound from
/// a stranger to each public port reaches the right host.
#[test]
fn full_cone_two_hosts_sharing_a_port() {
    bounded(LIMIT, || {
        let Some(mut lab) = Lab::require("fc_two") else {
            return;
        };
        let s1 = lab.public_host("s1").expect("s1");
        let s3 = lab.public_host("s3").expect("s3");
        let nat = lab.nat("nat", NatKind::FullCone).expect("nat");
        let h1 = lab.host_behind(&nat, "h1").expect("h1");
        let h2 = lab.host_behind(&nat, "h2").expect("h2");
        assert_ne!(h1.addr, h2.addr);
        let w1 = Whoami::start(&s1, WHOAMI_PORT).expect("whoami on s1");
        let a = h1.udp_bind(4000).expect("bind h1:4000");
        let b = h2.udp_bind(4000).expect("bind h2:4000");
        let m1 = whoami(&a, w1.addr, ASK).expect("whoami from h1");
        let m2 = whoami(&b, w1.addr, ASK).expect("whoami from h2");
        assert_ne!(m1, m2, "two hosts, one public address:port");
        let stranger = s3.udp_bind(5000).expect("bind s3:5000");
        assert!(delivered(&stranger, m2, &b, "to-h2", true), "h2 via {m2}");
        assert!(delivered(&stranger, m1, &a, "to-h1", true), "h1 via {m1}");
    });
}
