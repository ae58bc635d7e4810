//! UDP over loopback: send_to/recv_from, connected mode, IPv6, timeouts,
//! many datagrams, sharing a socket between coroutines, plain threads.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::rc::Rc;
use std::thread;
use std::time::{Duration, Instant};

use libnet::net::{SocketBuilder, UdpSocket};
use libnet::time;
use libnet_tests::{
    bounded, check_elapsed, ipv6_loopback_available, run_on, skip_v6, Rng, V4_ANY_PORT, V6_ANY_PORT,
};

const LIMIT: Duration = Duration::from_secs(60);

fn ok(r: Result<(), String>) {
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// A server on loop 1 echoing `n` datagrams; a client on loop 0 sending
/// `n` datagrams of varied sizes and checking each reply and its source.
fn echo_datagrams(bind: &'static str, n: usize) {
    run_on(2, move || {
        let std_server = std::net::UdpSocket::bind(bind).expect("bind");
        let server_addr = std_server.local_addr().expect("addr");
        let server = libnet::spawn_on(1, move || {
            let s = UdpSocket::from_std(std_server).expect("from_std");
            let mut buf = vec![0u8; 65_536];
            for _ in 0..n {
                let (len, from) = s.recv_from(&mut buf).expect("recv_from");
                assert_eq!(s.send_to(&buf[..len], from).expect("send_to"), len);
            }
        });
        let c = UdpSocket::bind(bind).expect("bind client");
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut rng = Rng::new(7);
        let mut buf = vec![0u8; 65_536];
        for i in 0..n {
            let len = [0usize, 1, 8, 512, 1472, 9000][i % 6];
            let mut msg = vec![0u8; len];
            rng.fill(&mut msg);
            assert_eq!(c.send_to(&msg, server_addr).expect("send_to"), len);
            let (got, from) = c.recv_from(&mut buf).expect("recv_from");
            assert_eq!(from, server_addr, "reply from a stranger");
            assert!(buf[..got] == msg[..], "datagram {i} ({len} bytes) differs");
        }
        server.join().expect("server");
    });
}

#[test]
fn send_to_and_recv_from_over_ipv4() {
    bounded(LIMIT, || echo_datagrams(V4_ANY_PORT, 600));
}

#[test]
fn send_to_and_recv_from_over_ipv6() {
    if !ipv6_loopback_available() {
        skip_v6("udp::send_to_and_recv_from_over_ipv6");
        return;
    }
    bounded(LIMIT, || echo_datagrams(V6_ANY_PORT, 600));
}

#[test]
fn connected_mode_sends_and_filters_by_peer() {
    bounded(LIMIT, || {
        run_on(1, || {
            let a = UdpSocket::bind(V4_ANY_PORT).expect("bind a");
            let b = UdpSocket::bind(V4_ANY_PORT).expect("bind b");
            let stranger = UdpSocket::bind(V4_ANY_PORT).expect("bind stranger");
            let (aa, ba) = (a.local_addr().expect("a"), b.local_addr().expect("b"));
            a.connect(ba).expect("connect a");
            b.connect(aa).expect("connect b");
            assert_eq!(a.peer_addr().expect("peer"), ba);
            // A datagram from anyone but the peer is dropped by the kernel.
            stranger.send_to(b"not for you", aa).expect("send_to");
            a.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            let mut buf = [0u8; 64];
            let e = a
                .recv(&mut buf)
                .expect_err("a connected socket took a stranger's datagram");
            assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
            let replier = libnet::spawn(move || {
                let mut buf = [0u8; 64];
                let n = b.recv(&mut buf).expect("b recv");
                b.send(&buf[..n]).expect("b send");
                buf[..n].to_vec()
            });
            a.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            assert_eq!(a.send(b"peer to peer").expect("send"), 12);
            let n = a.recv(&mut buf).expect("recv");
            assert_eq!(&buf[..n], b"peer to peer");
            assert_eq!(replier.join().expect("replier"), b"peer to peer");
        });
    });
}

#[test]
fn connected_send_to_a_closed_port_reports_connection_refused() {
    bounded(LIMIT, || {
        run_on(1, || {
            // A port nobody listens on: bind, note, close.
            let closed: SocketAddr = {
                let s = std::net::UdpSocket::bind(V4_ANY_PORT).expect("bind");
                s.local_addr().expect("addr")
            };
            let s = UdpSocket::bind(V4_ANY_PORT).expect("bind");
            s.connect(closed).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            s.send(b"anyone?").expect("send");
            let mut buf = [0u8; 16];
            let e = s.recv(&mut buf).expect_err("a closed port answered");
            assert_eq!(
                e.kind(),
                ErrorKind::ConnectionRefused,
                "ICMP port unreachable not reported: {e}"
            );
        });
    });
}

#[test]
fn read_timeouts_fire_near_the_deadline() {
    bounded(LIMIT, || {
        run_on(1, || {
            let s = UdpSocket::bind(V4_ANY_PORT).expect("bind");
            assert_eq!(s.read_timeout().expect("get"), None);
            for ms in [10u64, 60] {
                let want = Duration::from_millis(ms);
                s.set_read_timeout(Some(want)).expect("set");
                let mut buf = [0u8; 8];
                let start = Instant::now();
                let e = s.recv_from(&mut buf).expect_err("nothing was sent");
                assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
                ok(check_elapsed(
                    &format!("recv_from timeout {want:?}"),
                    start.elapsed(),
                    want,
                ));
                let start = Instant::now();
                let e = s.peek_from(&mut buf).expect_err("nothing was sent");
                assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
                ok(check_elapsed(
                    &format!("peek_from timeout {want:?}"),
                    start.elapsed(),
                    want,
                ));
            }
            s.set_write_timeout(Some(Duration::from_secs(1)))
                .expect("set");
            assert_eq!(
                s.write_timeout().expect("get"),
                Some(Duration::from_secs(1))
            );
            let e = s
                .set_read_timeout(Some(Duration::ZERO))
                .expect_err("zero accepted");
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
        });
    });
}

#[test]
fn try_variants_and_peek() {
    bounded(LIMIT, || {
        run_on(1, || {
            let a = UdpSocket::bind(V4_ANY_PORT).expect("bind");
            let b = UdpSocket::bind(V4_ANY_PORT).expect("bind");
            let ba = b.local_addr().expect("addr");
            let mut buf = [0u8; 16];
            let e = b
                .try_recv_from(&mut buf)
                .expect_err("empty socket gave a datagram");
            assert_eq!(e.kind(), ErrorKind::WouldBlock);
            assert_eq!(a.try_send_to(b"try", ba).expect("try_send_to"), 3);
            b.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let (n, from) = b.peek_from(&mut buf).expect("peek_from");
            assert_eq!(
                (&buf[..n], from),
                (&b"try"[..], a.local_addr().expect("addr"))
            );
            let (n, _) = b.recv_from(&mut buf).expect("recv_from after peek");
            assert_eq!(&buf[..n], b"try", "peek consumed the datagram");
            let e = b
                .try_recv_from(&mut buf)
                .expect_err("datagram received twice");
            assert_eq!(e.kind(), ErrorKind::WouldBlock);
            a.set_ttl(9).expect("ttl");
            a.set_broadcast(false).expect("broadcast");
            assert!(a.take_error().expect("take_error").is_none());
        });
    });
}

#[test]
fn ten_thousand_datagrams_with_a_window() {
    bounded(LIMIT, || {
        run_on(2, || {
            const N: u32 = 10_000;
            const WINDOW: u32 = 8;
            let std_server = std::net::UdpSocket::bind(V4_ANY_PORT).expect("bind");
            let server_addr = std_server.local_addr().expect("addr");
            let server = libnet::spawn_on(1, move || {
                let s = UdpSocket::from_std(std_server).expect("from_std");
                let mut buf = [0u8; 64];
                for _ in 0..N {
                    let (n, from) = s.recv_from(&mut buf).expect("recv_from");
                    s.send_to(&buf[..n], from).expect("send_to");
                }
            });
            let c = SocketBuilder::new()
                .recv_buffer_size(1 << 20)
                .bind_udp(V4_ANY_PORT.parse().expect("addr"))
                .expect("bind client");
            c.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let start = Instant::now();
            let mut next = 0u32;
            let mut seen = vec![false; N as usize];
            // Keep WINDOW datagrams in flight; loopback does not drop them.
            while next < WINDOW {
                c.send_to(&next.to_le_bytes(), server_addr)
                    .expect("send_to");
                next += 1;
            }
            let mut buf = [0u8; 64];
            for _ in 0..N {
                let (n, from) = c.recv_from(&mut buf).expect("recv_from (datagram lost?)");
                assert_eq!((n, from), (4, server_addr));
                let v = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes"));
                assert!(!seen[v as usize], "datagram {v} twice");
                seen[v as usize] = true;
                if next < N {
                    c.send_to(&next.to_le_bytes(), server_addr)
                        .expect("send_to");
                    next += 1;
                }
            }
            assert!(seen.iter().all(|&s| s));
            server.join().expect("server");
            eprintln!("10,000 UDP round trips (window 8) in {:?}", start.elapsed());
        });
    });
}

#[test]
fn one_socket_shared_by_a_sender_and_a_receiver_coroutine() {
    bounded(LIMIT, || {
        run_on(1, || {
            let s = Rc::new(UdpSocket::bind(V4_ANY_PORT).expect("bind"));
            let peer = UdpSocket::bind(V4_ANY_PORT).expect("bind");
            let pa = peer.local_addr().expect("addr");
            let echo = libnet::spawn(move || {
                let mut buf = [0u8; 8];
                for _ in 0..100 {
                    let (n, from) = peer.recv_from(&mut buf).expect("peer recv");
                    peer.send_to(&buf[..n], from).expect("peer send");
                }
            });
            let receiver = {
                let s = s.clone();
                libnet::spawn(move || {
                    let mut buf = [0u8; 8];
                    let mut sum = 0u64;
                    for _ in 0..100 {
                        let (n, from) = s.recv_from(&mut buf).expect("recv");
                        assert_eq!((n, from), (8, pa));
                        sum += u64::from_le_bytes(buf);
                    }
                    sum
                })
            };
            for i in 0..100u64 {
                s.send_to(&i.to_le_bytes(), pa).expect("send");
                if i % 4 == 0 {
                    time::sleep(Duration::from_millis(1));
                }
            }
            assert_eq!(receiver.join().expect("receiver"), (0..100).sum());
            echo.join().expect("echo");
        });
    });
}

#[test]
fn a_plain_thread_and_a_coroutine_exchange_datagrams() {
    bounded(LIMIT, || {
        run_on(1, || {
            let s = UdpSocket::bind(V4_ANY_PORT).expect("bind");
            let sa = s.local_addr().expect("addr");
            let t = thread::spawn(move || {
                let u = UdpSocket::bind(V4_ANY_PORT).expect("bind on a plain thread");
                u.set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                let mut buf = [0u8; 32];
                for i in 0..50u8 {
                    u.send_to(&[i; 3], sa).expect("send_to");
                    let (n, from) = u.recv_from(&mut buf).expect("recv_from");
                    assert_eq!((&buf[..n], from), (&[i, i, i, i][..], sa));
                }
            });
            let mut buf = [0u8; 32];
            for _ in 0..50 {
                let (n, from) = s.recv_from(&mut buf).expect("recv_from");
                buf[n] = buf[0];
                s.send_to(&buf[..n + 1], from).expect("send_to");
            }
            libnet::spawn_blocking(move || t.join().expect("thread"));
        });
    });
}

#[test]
fn a_maximum_size_datagram_arrives_intact() {
    bounded(LIMIT, || {
        run_on(1, || {
            let a = UdpSocket::bind(V4_ANY_PORT).expect("bind");
            let b = UdpSocket::bind(V4_ANY_PORT).expect("bind");
            let mut msg = vec![0u8; 65_507];
            Rng::new(3).fill(&mut msg);
            a.send_to(&msg, b.local_addr().expect("addr"))
                .expect("send_to");
            let mut buf = vec![0u8; 70_000];
            b.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let (n, _) = b.recv_from(&mut buf).expect("recv_from");
            assert_eq!(n, msg.len());
            assert!(buf[..n] == msg[..]);
        });
    });
}
