//! The RUDP driver over real UDP sockets on loopback: connections, messages,
//! streams, back-pressure, raw datagrams, vanishing peers.

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use libnet::net::UdpSocket;
use libnet::rudp::{Config, RudpSocket};

fn any() -> SocketAddr {
    "127.0.0.1:0".parse().expect("valid")
}

fn run<T: 'static>(loops: usize, main: impl FnOnce() -> T + 'static) -> T {
    libnet::Runtime::builder()
        .loops(loops)
        .build()
        .expect("runtime")
        .run(main)
        .expect("runtime exited")
}

/// Deterministic test data.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn interface_both_sides_write_and_read() {
    run(1, || {
        let server = RudpSocket::bind(any(), Config::default()).expect("bind");
        let addr = server.local_addr().expect("addr");
        let srv = libnet::spawn(move || {
            let (conn, from) = server.accept().expect("accept");
            assert_eq!(conn.peer_addr(), from);
            for i in 0..10u8 {
                let m = conn.recv().expect("recv").expect("message");
                assert_eq!(m, vec![i; 100 + i as usize]);
                conn.send(&[i; 7]).expect("reply");
            }
            conn.recv().expect("end")
        });
        let client = RudpSocket::bind(any(), Config::default()).expect("bind");
        let conn = client.connect(addr).expect("connect");
        for i in 0..10u8 {
            conn.send(&vec![i; 100 + i as usize]).expect("send");
            assert_eq!(conn.recv().expect("recv").expect("reply"), vec![i; 7]);
        }
        conn.close();
        assert_eq!(
            srv.join().expect("server"),
            None,
            "orderly close reads as end"
        );
        let stats = conn.stats().expect("stats");
        assert!(stats.packets_sent >= 10 && stats.bytes_sent >= 1045);
    });
}

/// The original's flow-control case: tiny windows, 50 messages of 1,280
/// bytes each way, server and client on different loops (threads).
fn tiny_windows(snd: u16, rcv: u16) {
    run(2, move || {
        let cfg = Config {
            send_window: snd,
            recv_window: rcv,
            ..Config::default()
        };
        // A libnet oneshot parks only this coroutine (a std channel would
        // block the loop thread, and the server shares loop 0 with us).
        let (addr_tx, addr_rx) = libnet::sync::oneshot::channel();
        let server_cfg = cfg.clone();
        let server = libnet::spawn_on(0, move || {
            let s = RudpSocket::bind(any(), server_cfg).expect("bind");
            addr_tx.send(s.local_addr().expect("addr")).expect("addr");
            let (conn, _) = s.accept().expect("accept");
            for i in 0..50u64 {
                let m = conn.recv().expect("recv").expect("message");
                assert_eq!(m, pattern(1280, i), "message {i}");
                conn.send(&pattern(1280, 1000 + i)).expect("send");
            }
            conn.recv().expect("end").is_none()
        });
        let addr = addr_rx.recv().expect("server address");
        let client = libnet::spawn_on(1, move || {
            let s = RudpSocket::bind(any(), cfg).expect("bind");
            let conn = s.connect(addr).expect("connect");
            let sender = {
                let conn = Rc::new(conn);
                let c = conn.clone();
                let h = libnet::spawn(move || {
                    for i in 0..50u64 {
                        c.send(&pattern(1280, i)).expect("send");
                    }
                });
                for i in 0..50u64 {
                    let m = conn.recv().expect("recv").expect("message");
                    assert_eq!(m, pattern(1280, 1000 + i), "reply {i}");
                }
                h.join().expect("sender");
                conn
            };
            sender.close();
        });
        client.join().expect("client");
        assert!(server.join().expect("server"));
    });
}

#[test]
fn flow_control_tiny_windows_5_3() {
    tiny_windows(5, 3);
}

#[test]
fn flow_control_tiny_windows_3_5() {
    tiny_windows(3, 5);
}

#[test]
fn a_thousand_connections_on_one_socket_transfer_at_once() {
    const N: usize = 1000;
    const LEN: usize = 8 * 1024;
    run(1, || {
        let server = Rc::new(RudpSocket::bind(any(), Config::default()).expect("bind"));
        let addr = server.local_addr().expect("addr");
        let s = server.clone();
        let acceptor = libnet::spawn(move || {
            let mut hs = Vec::new();
            for _ in 0..N {
                let (conn, _) = s.accept().expect("accept");
                hs.push(libnet::spawn(move || {
                    // Echo every message back, then see the end.
                    while let Some(m) = conn.recv().expect("recv") {
                        conn.send(&m).expect("echo");
                    }
                }));
            }
            for h in hs {
                h.join().expect("server connection");
            }
        });
        let client = Rc::new(RudpSocket::bind(any(), Config::default()).expect("bind"));
        let mut hs = Vec::new();
        for i in 0..N {
            let c = client.clone();
            hs.push(libnet::spawn(move || {
                let conn = c.connect(addr).expect("connect");
                let data = pattern(LEN, i as u64);
                for part in data.chunks(1024) {
                    conn.send(part).expect("send");
                }
                let mut back = Vec::new();
                while back.len() < LEN {
                    back.extend(conn.recv().expect("recv").expect("echo"));
                }
                assert!(back == data, "connection {i} corrupted");
                conn.close();
            }));
        }
        for h in hs {
            h.join().expect("client connection");
        }
        acceptor.join().expect("acceptor");
        assert_eq!(server.endpoint_stats().malformed, 0);
    });
}

#[test]
fn stream_copies_megabytes_byte_exact() {
    const LEN: usize = 8 << 20;
    run(1, || {
        let server = RudpSocket::bind(any(), Config::default()).expect("bind");
        let addr = server.local_addr().expect("addr");
        let reader = libnet::spawn(move || {
            let (conn, _) = server.accept().expect("accept");
            let mut got = Vec::new();
            conn.stream().read_to_end(&mut got).expect("read");
            got
        });
        let client = RudpSocket::bind(any(), Config::default()).expect("bind");
        let mut stream = client.connect(addr).expect("connect").stream();
        let data = pattern(LEN, 42);
        stream.write_all(&data).expect("write");
        stream.connection().close();
        let got = reader.join().expect("reader");
        assert_eq!(got.len(), LEN);
        assert!(got == data, "stream corrupted");
    });
}

#[test]
fn raw_datagrams_pass_beside_connections() {
    run(1, || {
        let a = RudpSocket::bind(any(), Config::default()).expect("bind");
        let b = RudpSocket::bind(any(), Config::default()).expect("bind");
        let b_addr = b.local_addr().expect("addr");
        let a_addr = a.local_addr().expect("addr");
        let acceptor = libnet::spawn(move || {
            let (conn, _) = b.accept().expect("accept");
            let raw = b.recv_raw(Some(Duration::from_secs(5))).expect("raw");
            let msg = conn.recv().expect("recv").expect("message");
            (raw, msg)
        });
        let conn = a.connect(b_addr).expect("connect");
        a.send_raw(b_addr, b"punch").expect("raw");
        conn.send(b"over kcp").expect("send");
        let ((from, raw), msg) = acceptor.join().expect("acceptor");
        assert_eq!(from, a_addr);
        assert_eq!(raw, b"punch");
        assert_eq!(msg, b"over kcp");
        assert!(a
            .recv_raw(Some(Duration::from_millis(50)))
            .is_err_and(|e| e.kind() == ErrorKind::TimedOut));
    });
}

#[test]
fn a_vanished_peer_is_detected_within_the_idle_timeout() {
    run(1, || {
        let cfg = Config {
            keepalive: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(800),
            ..Config::default()
        };
        let server = RudpSocket::bind(any(), cfg.clone()).expect("bind");
        let server_addr = server.local_addr().expect("addr");
        // A UDP relay between client and server; stopping it makes the
        // server vanish without a word.
        let relay = UdpSocket::bind(any()).expect("relay");
        let relay_addr = relay.local_addr().expect("addr");
        let stop = Rc::new(std::cell::Cell::new(false));
        let stopped = stop.clone();
        let forward = libnet::spawn(move || {
            let mut client: Option<SocketAddr> = None;
            let mut buf = [0u8; 2048];
            relay
                .set_read_timeout(Some(Duration::from_millis(20)))
                .expect("timeout");
            while !stopped.get() {
                let Ok((n, from)) = relay.recv_from(&mut buf) else {
                    continue;
                };
                let to = if from == server_addr {
                    match client {
                        Some(c) => c,
                        None => continue,
                    }
                } else {
                    client = Some(from);
                    server_addr
                };
                let _ = relay.send_to(&buf[..n], to);
            }
        });
        let srv = libnet::spawn(move || {
            let (conn, _) = server.accept().expect("accept");
            let m = conn.recv().expect("recv").expect("hello");
            conn.send(&m).expect("echo");
            // Keep the server side alive (it will see the relay go silent too).
            let _ = conn.recv();
        });
        let client = RudpSocket::bind(any(), cfg).expect("bind");
        let conn = client.connect(relay_addr).expect("connect via relay");
        conn.send(b"hi").expect("send");
        assert_eq!(conn.recv().expect("recv").expect("echo"), b"hi");
        // Stop the relay: from now on nothing crosses, not even a close.
        stop.set(true);
        let started = std::time::Instant::now();
        forward.join().expect("relay stopped");
        let err = conn.recv().expect_err("the vanished peer must be detected");
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "detected after {took:?}, idle timeout 800 ms"
        );
        srv.join().expect("server");
    });
}

/// The receiver's whole runtime ends the moment it has read everything
/// (like `rudp_cat --listen`): the sender must still get its last ACKs and
/// finish its orderly close promptly.
#[test]
fn the_sender_finishes_when_the_receiver_exits_right_after_reading() {
    const LEN: usize = 4 << 20;
    let (tx, rx) = std::sync::mpsc::channel();
    let receiver = std::thread::spawn(move || {
        run(1, move || {
            let s = RudpSocket::bind(any(), Config::default()).expect("bind");
            tx.send(s.local_addr().expect("addr")).expect("ready");
            let (conn, _) = s.accept().expect("accept");
            let mut stream = conn.stream();
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0;
            while got < LEN {
                let n = stream.read(&mut buf).expect("read");
                assert!(n > 0, "ended early");
                got += n;
            }
            // Return at once: the runtime and its socket go away now.
        })
    });
    let addr = rx.recv().expect("receiver ready");
    let took = run(1, move || {
        let s = RudpSocket::bind(any(), Config::default()).expect("bind");
        let mut stream = s.connect(addr).expect("connect").stream();
        stream.write_all(&pattern(LEN, 9)).expect("write");
        let t = std::time::Instant::now();
        stream.connection().close();
        let end = stream.connection().recv().expect("orderly close completes");
        assert!(end.is_none());
        t.elapsed()
    });
    receiver.join().expect("receiver");
    assert!(took < Duration::from_secs(5), "close took {took:?}");
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    run(1, || {
        let a = RudpSocket::bind(any(), Config::default()).expect("bind");
        let taken = a.local_addr().expect("addr");
        let err = RudpSocket::bind(taken, Config::default()).expect_err("port in use");
        assert_eq!(err.kind(), ErrorKind::AddrInUse);
        assert!(err.to_string().contains(&taken.to_string()), "{err}");
    });
}
