//! TCP over loopback: echo (v4 and v6), std-style Read/Write helpers,
//! independence of coroutines, half-close, bind errors, plain threads,
//! serve() placement, big transfers, std conversions.

use std::cell::Cell;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::thread;
use std::time::{Duration, Instant};

use libnet::net::{serve, SocketBuilder, Spread, TcpListener, TcpStream, UdpSocket};
use libnet::sync::channel;
use libnet::time;
use libnet_tests::{
    bounded, echo, fnv1a, ipv6_loopback_available, run_on, skip_v6, spawn_echo_server, wait_until,
    Rng, FNV_OFFSET, V4_ANY_PORT, V6_ANY_PORT,
};

const LIMIT: Duration = Duration::from_secs(60);

/// Round trips of varied sizes with write_all/read_exact, then lines
/// through a BufReader, from a client on loop 1 to a server on loop 0.
fn echo_round_trips(bind: &'static str) {
    run_on(2, move || {
        let (addr, _server) = spawn_echo_server(bind).expect("server");
        assert_eq!(addr.is_ipv6(), bind.starts_with('['));
        let client = libnet::spawn_on(1, move || {
            let mut c = TcpStream::connect(addr).expect("connect");
            assert_eq!(c.peer_addr().expect("peer"), addr);
            assert_eq!(c.local_addr().expect("local").is_ipv6(), addr.is_ipv6());
            let mut rng = Rng::new(1);
            for size in [1usize, 2, 100, 1460, 4096, 4097, 65_536, 200_000] {
                let mut out = vec![0u8; size];
                rng.fill(&mut out);
                // Write from another coroutine so large messages cannot
                // deadlock on full buffers.
                let c2 = c.try_clone_via_fd();
                let w = libnet::spawn(move || {
                    let mut c2 = c2;
                    c2.write_all(&out).expect("write_all");
                    out
                });
                let mut back = vec![0u8; size];
                c.read_exact(&mut back).expect("read_exact");
                let out = w.join().expect("writer");
                assert!(back == out, "{size}-byte echo differs");
            }
            let mut reader = BufReader::new(&c);
            let mut line = String::new();
            for i in 0..200 {
                let msg = format!("line {i}: {}\n", "x".repeat(i));
                (&c).write_all(msg.as_bytes()).expect("write");
                line.clear();
                reader.read_line(&mut line).expect("read_line");
                assert_eq!(line, msg);
            }
        });
        client.join().expect("client");
    });
}

/// A second `TcpStream` over a duplicate of the descriptor, for a writer
/// coroutine on the same loop.
trait CloneViaFd {
    fn try_clone_via_fd(&self) -> TcpStream;
}

impl CloneViaFd for TcpStream {
    fn try_clone_via_fd(&self) -> TcpStream {
        use std::os::fd::AsFd;
        let fd = self.as_fd().try_clone_to_owned().expect("dup");
        TcpStream::from_std(std::net::TcpStream::from(fd)).expect("from_std")
    }
}

#[test]
fn echo_over_ipv4() {
    bounded(LIMIT, || echo_round_trips(V4_ANY_PORT));
}

#[test]
fn echo_over_ipv6() {
    if !ipv6_loopback_available() {
        skip_v6("tcp::echo_over_ipv6");
        return;
    }
    bounded(LIMIT, || echo_round_trips(V6_ANY_PORT));
}

#[test]
fn a_coroutine_blocked_in_read_does_not_block_its_loop() {
    bounded(LIMIT, || {
        run_on(1, || {
            let listener = TcpListener::bind(V4_ANY_PORT).expect("bind");
            let addr = listener.local_addr().expect("addr");
            let quiet = TcpStream::connect(addr).expect("connect");
            let (mut quiet_peer, _) = listener.accept().expect("accept");
            let reader = libnet::spawn(move || {
                let mut b = [0u8; 5];
                let mut q = quiet;
                q.read_exact(&mut b).expect("read");
                b
            });
            // Meanwhile, on the same single loop: sleeps, echo round trips, channels.
            let (eaddr, _server) = spawn_echo_server(V4_ANY_PORT).expect("server");
            let mut c = TcpStream::connect(eaddr).expect("connect");
            for i in 0..100u32 {
                c.write_all(&i.to_be_bytes()).expect("write");
                let mut b = [0u8; 4];
                c.read_exact(&mut b).expect("read");
                assert_eq!(u32::from_be_bytes(b), i);
            }
            time::sleep(Duration::from_millis(10));
            let (tx, rx) = channel::<u8>(1);
            libnet::spawn(move || tx.send(1).expect("send"));
            assert_eq!(rx.recv(), Ok(1));
            assert!(!reader.is_finished(), "the reader finished without data");
            quiet_peer.write_all(b"wake!").expect("write");
            assert_eq!(&reader.join().expect("reader"), b"wake!");
        });
    });
}

#[test]
fn shutdown_write_gives_the_peer_eof() {
    bounded(LIMIT, || {
        run_on(2, || {
            // Listeners are !Send: move it to loop 1 as a std listener.
            let std_listener = std::net::TcpListener::bind(V4_ANY_PORT).expect("bind");
            let addr = std_listener.local_addr().expect("addr");
            let server = libnet::spawn_on(1, move || {
                let listener = TcpListener::from_std(std_listener).expect("from_std");
                let (mut c, _) = listener.accept().expect("accept");
                let mut all = Vec::new();
                c.read_to_end(&mut all).expect("read_to_end");
                // Half-closed: the other direction still works.
                c.write_all(b"got it").expect("write");
                c.shutdown(Shutdown::Write).expect("shutdown");
                all
            });
            let mut c = TcpStream::connect(addr).expect("connect");
            c.write_all(b"hello, ").expect("write");
            c.write_all(b"world").expect("write");
            c.shutdown(Shutdown::Write).expect("shutdown");
            let mut back = Vec::new();
            c.read_to_end(&mut back).expect("read_to_end");
            assert_eq!(back, b"got it");
            assert_eq!(server.join().expect("server"), b"hello, world");
            // Reads after EOF keep returning 0.
            let mut b = [0u8; 4];
            assert_eq!(c.read(&mut b).expect("read"), 0);
        });
    });
}

/// The peer writes a few bytes and closes while the reader is parked, so
/// the data and the FIN arrive together, in one readiness event. The read
/// that takes the data is short; the next read must still see the EOF
/// instead of waiting for another event that will never come.
#[test]
fn eof_arriving_with_the_data_ends_the_next_read() {
    for round in 0..20 {
        let r = libnet_tests::with_deadline(Duration::from_secs(5), move || {
            run_on(1, move || {
                let listener = TcpListener::bind(V4_ANY_PORT).expect("bind");
                let mut c =
                    TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
                let (peer, _) = listener.accept().expect("accept");
                // Writer on the same loop: it runs only once the reader has
                // parked, and both its syscalls complete before the next poll.
                let writer = libnet::spawn(move || {
                    let mut peer = peer;
                    peer.write_all(b"got it").expect("write");
                    peer.shutdown(Shutdown::Write).expect("shutdown");
                    peer
                });
                let mut back = Vec::new();
                c.read_to_end(&mut back).expect("read_to_end");
                drop(writer.join().expect("writer"));
                back
            })
        });
        match r {
            Ok(back) => assert_eq!(back, b"got it", "round {round}"),
            Err(e) => {
                panic!("round {round}: read_to_end never saw the EOF that came with the data ({e})")
            }
        }
    }
}

#[test]
fn writing_to_a_closed_peer_fails_cleanly() {
    bounded(LIMIT, || {
        run_on(1, || {
            let listener = TcpListener::bind(V4_ANY_PORT).expect("bind");
            let mut c = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
            drop(listener.accept().expect("accept"));
            let chunk = [1u8; 4096];
            let mut err = None;
            // The first writes may still be buffered; the RST makes a later one fail.
            for _ in 0..10_000 {
                match c.write(&chunk) {
                    Ok(n) => {
                        assert!(n > 0, "write returned 0");
                        time::sleep(Duration::from_millis(1));
                    }
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
            let e = err.expect("writes to a closed peer kept succeeding");
            assert!(
                matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset),
                "unexpected error {e} ({:?})",
                e.kind()
            );
        });
    });
}

#[test]
fn binding_a_port_in_use_names_the_address() {
    bounded(LIMIT, || {
        run_on(1, || {
            let first = TcpListener::bind(V4_ANY_PORT).expect("bind");
            let addr = first.local_addr().expect("addr");
            let e = TcpListener::bind(addr).expect_err("bound a port in use");
            assert_eq!(e.kind(), ErrorKind::AddrInUse, "{e}");
            assert!(
                e.to_string().contains(&addr.to_string()),
                "message does not name {addr}: {e}"
            );
            let e = SocketBuilder::new()
                .listen(addr)
                .expect_err("bound a port in use");
            assert_eq!(e.kind(), ErrorKind::AddrInUse, "{e}");
            assert!(
                e.to_string().contains(&addr.to_string()),
                "message does not name {addr}: {e}"
            );
            let u = UdpSocket::bind(V4_ANY_PORT).expect("bind");
            let uaddr = u.local_addr().expect("addr");
            let e = UdpSocket::bind(uaddr).expect_err("bound a UDP port in use");
            assert_eq!(e.kind(), ErrorKind::AddrInUse, "{e}");
            assert!(
                e.to_string().contains(&uaddr.to_string()),
                "message does not name {uaddr}: {e}"
            );
        });
    });
}

#[test]
fn a_plain_thread_uses_tcp_against_a_runtime_server() {
    bounded(LIMIT, || {
        run_on(2, || {
            let (addr, _server) = spawn_echo_server(V4_ANY_PORT).expect("server");
            let t = thread::spawn(move || {
                assert_eq!(libnet::current_loop(), None);
                let c = TcpStream::connect(addr).expect("connect from a plain thread");
                let mut reader = BufReader::new(&c);
                let mut line = String::new();
                for i in 0..100 {
                    let msg = format!("thread line {i}\n");
                    (&c).write_all(msg.as_bytes()).expect("write");
                    line.clear();
                    reader.read_line(&mut line).expect("read_line");
                    assert_eq!(line, msg);
                }
                100
            });
            assert_eq!(
                libnet::spawn_blocking(move || t.join().expect("thread")),
                100
            );
        });
    });
}

#[test]
fn a_plain_thread_server_with_a_runtime_client() {
    bounded(LIMIT, || {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let t = thread::spawn(move || {
            let listener = TcpListener::bind(V4_ANY_PORT).expect("bind outside a runtime");
            addr_tx
                .send(listener.local_addr().expect("addr"))
                .expect("send addr");
            let (c, _) = listener.accept().expect("accept on a plain thread");
            echo::<1024>(c);
        });
        let addr = addr_rx.recv().expect("listener address");
        run_on(1, move || {
            let mut c = TcpStream::connect(addr).expect("connect");
            c.write_all(b"to a thread").expect("write");
            let mut b = [0u8; 11];
            c.read_exact(&mut b).expect("read");
            assert_eq!(&b, b"to a thread");
        });
        t.join().expect("thread");
    });
}

/// Connects `n` times to a serve()d listener whose handler answers with its
/// loop index and then echoes; returns where each landed plus the open
/// connections.
fn connect_and_report(addr: SocketAddr, n: usize) -> (Vec<u8>, Vec<TcpStream>) {
    let mut loops = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..n {
        let mut c = TcpStream::connect(addr).expect("connect");
        let mut b = [0u8; 1];
        c.read_exact(&mut b).expect("read loop index");
        loops.push(b[0]);
        conns.push(c);
    }
    (loops, conns)
}

/// Starts serve() on the current loop (loop 0) of a 3-loop runtime; the
/// handler reports its loop, echoes until EOF, then reports its loop again
/// on the returned channel.
fn start_serve(spread: Spread) -> (SocketAddr, libnet::sync::Receiver<u8>) {
    let listener = TcpListener::bind(V4_ANY_PORT).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (closed_tx, closed_rx) = channel::<u8>(256);
    libnet::spawn(move || {
        let r = serve(&listener, spread, move |mut c| {
            let here = libnet::current_loop().expect("handler outside a loop") as u8;
            if c.write_all(&[here]).is_ok() {
                echo::<256>(c);
            }
            let _ = closed_tx.send(here);
        });
        // serve() only returns on a listener error.
        panic!("serve returned: {r:?}");
    });
    (addr, closed_rx)
}

#[test]
fn serve_round_robin_takes_the_loops_in_turn() {
    bounded(LIMIT, || {
        run_on(3, || {
            let (addr, _) = start_serve(Spread::RoundRobin);
            let (loops, _conns) = connect_and_report(addr, 7);
            // In turn: each step moves to the next loop, so every 3
            // consecutive connections cover all 3 loops.
            for w in loops.windows(2) {
                assert_eq!(w[1], (w[0] + 1) % 3, "not in turn: {loops:?}");
            }
        });
    });
}

#[test]
fn serve_this_loop_keeps_every_connection_on_the_accepting_loop() {
    bounded(LIMIT, || {
        run_on(3, || {
            let (addr, _) = start_serve(Spread::ThisLoop);
            let (loops, _conns) = connect_and_report(addr, 5);
            assert_eq!(loops, [0; 5]);
        });
    });
}

#[test]
fn serve_least_connections_fills_the_emptiest_loop() {
    bounded(LIMIT, || {
        run_on(3, || {
            let (addr, closed) = start_serve(Spread::LeastConnections);
            // All held open: each connection goes to a loop with the fewest,
            // so after 6 every loop serves exactly 2.
            let (loops, mut conns) = connect_and_report(addr, 6);
            for l in 0..3u8 {
                let n = loops.iter().filter(|&&x| x == l).count();
                assert_eq!(n, 2, "loop {l} got {n} of 6 held connections: {loops:?}");
            }
            // Close both connections on one loop...
            let target = loops[1];
            let mut kept = Vec::new();
            for (l, c) in loops.iter().zip(conns.drain(..)) {
                if *l != target {
                    kept.push(c);
                }
            }
            for _ in 0..2 {
                assert_eq!(closed.recv_timeout(Duration::from_secs(10)), Ok(target));
            }
            // The handler coroutine finishes (and serve's count drops)
            // without parking after it reported; a coroutine that runs on
            // that loop after the report runs after that.
            libnet::spawn_on(target as usize, || ())
                .join()
                .expect("barrier");
            // ...and the next two go there.
            let (next, _more) = connect_and_report(addr, 2);
            assert_eq!(
                next,
                [target, target],
                "least-connections ignored the closed connections on loop {target}"
            );
        });
    });
}

#[test]
fn serve_handles_many_concurrent_clients_across_loops() {
    bounded(LIMIT, || {
        run_on(2, || {
            let listener = TcpListener::bind(V4_ANY_PORT).expect("bind");
            let addr = listener.local_addr().expect("addr");
            libnet::spawn(move || {
                let _ = serve(&listener, Spread::RoundRobin, echo::<512>);
            });
            let hs: Vec<_> = (0..200u32)
                .map(|i| {
                    libnet::spawn_on(i as usize, move || {
                        let mut c = TcpStream::connect(addr).expect("connect");
                        c.set_nodelay(true).expect("nodelay");
                        for j in 0..50u32 {
                            let v = (i << 16) | j;
                            c.write_all(&v.to_le_bytes()).expect("write");
                            let mut b = [0u8; 4];
                            c.read_exact(&mut b).expect("read");
                            assert_eq!(u32::from_le_bytes(b), v);
                        }
                    })
                })
                .collect();
            for h in hs {
                h.join().expect("client");
            }
        });
    });
}

#[test]
fn a_64_mib_transfer_is_byte_exact_both_ways() {
    bounded(Duration::from_secs(120), || {
        const TOTAL: usize = 64 << 20;
        const CHUNK: usize = 64 << 10;
        let (elapsed, sent_hash, recv_hash) = run_on(2, || {
            // The echo server lives on loop 1, the client on loop 0.
            let server = libnet::spawn_on(1, || {
                let listener = TcpListener::bind(V4_ANY_PORT).expect("bind");
                let addr = listener.local_addr().expect("addr");
                libnet::spawn(move || {
                    let (c, _) = listener.accept().expect("accept");
                    echo::<16384>(c);
                });
                addr
            });
            let addr = server.join().expect("server");
            let c = Rc::new(TcpStream::connect(addr).expect("connect"));
            let start = Instant::now();
            let writer = {
                let c = c.clone();
                libnet::spawn(move || {
                    let mut rng = Rng::new(0xfeed);
                    let mut buf = vec![0u8; CHUNK];
                    let mut h = FNV_OFFSET;
                    for _ in 0..TOTAL / CHUNK {
                        rng.fill(&mut buf);
                        h = fnv1a(h, &buf);
                        (&*c).write_all(&buf).expect("write");
                    }
                    c.shutdown(Shutdown::Write).expect("shutdown");
                    h
                })
            };
            let mut expect = Rng::new(0xfeed);
            let mut want = vec![0u8; CHUNK];
            let mut got = vec![0u8; CHUNK];
            let mut h = FNV_OFFSET;
            let mut received = 0usize;
            let mut pending = 0usize; // bytes of `got` filled
            loop {
                let n = (&*c).read(&mut got[pending..]).expect("read");
                if n == 0 {
                    break;
                }
                pending += n;
                received += n;
                assert!(received <= TOTAL, "received more than was sent");
                if pending == CHUNK {
                    expect.fill(&mut want);
                    assert!(
                        got == want,
                        "data differs in the chunk ending at byte {received}"
                    );
                    h = fnv1a(h, &got);
                    pending = 0;
                }
            }
            assert_eq!(received, TOTAL, "EOF after {received} of {TOTAL} bytes");
            assert_eq!(pending, 0);
            let sent_hash = writer.join().expect("writer");
            (start.elapsed(), sent_hash, h)
        });
        assert_eq!(sent_hash, recv_hash);
        let mib_s = 64.0 / elapsed.as_secs_f64();
        eprintln!(
            "64 MiB echoed in {elapsed:?} ({mib_s:.0} MiB/s each way), fnv1a {recv_hash:016x}"
        );
    });
}

#[test]
fn std_conversions_move_a_connection_between_loops_and_threads() {
    bounded(LIMIT, || {
        run_on(2, || {
            let (addr, _server) = spawn_echo_server(V4_ANY_PORT).expect("server");
            // std -> libnet inside a coroutine.
            let std_conn = std::net::TcpStream::connect(addr).expect("std connect");
            let mut c = TcpStream::from_std(std_conn).expect("from_std");
            c.write_all(b"one").expect("write");
            let mut b = [0u8; 3];
            c.read_exact(&mut b).expect("read");
            assert_eq!(&b, b"one");
            // libnet on loop 0 -> std -> libnet on loop 1.
            let std_conn = c.into_std().expect("into_std");
            let moved = libnet::spawn_on(1, move || {
                let mut c = TcpStream::from_std(std_conn).expect("from_std on loop 1");
                c.write_all(b"two").expect("write");
                let mut b = [0u8; 3];
                c.read_exact(&mut b).expect("read");
                assert_eq!(&b, b"two");
                c.into_std().expect("into_std")
            });
            let mut std_conn = moved.join().expect("loop 1");
            // And a blocking std stream on a pool thread.
            let b = libnet::spawn_blocking(move || {
                std_conn.write_all(b"three").expect("write");
                let mut b = [0u8; 5];
                std_conn.read_exact(&mut b).expect("read");
                b
            });
            assert_eq!(&b, b"three");
            // Listener conversions.
            let l = TcpListener::bind(V4_ANY_PORT).expect("bind");
            let la = l.local_addr().expect("addr");
            let std_l = l.into_std().expect("into_std");
            let l = TcpListener::from_std(std_l).expect("from_std");
            let client = libnet::spawn(move || TcpStream::connect(la).map(|_| ()));
            l.accept().expect("accept after conversions");
            client.join().expect("join").expect("connect");
        });
    });
}

#[test]
fn socket_options_and_peek() {
    bounded(LIMIT, || {
        run_on(1, || {
            let (addr, _server) = spawn_echo_server(V4_ANY_PORT).expect("server");
            let c = SocketBuilder::new()
                .nodelay(true)
                .connect(addr, Some(Duration::from_secs(5)))
                .expect("builder connect");
            assert!(c.nodelay().expect("nodelay"));
            c.set_nodelay(false).expect("set");
            assert!(!c.nodelay().expect("nodelay"));
            c.set_ttl(42).expect("ttl");
            assert!(c.take_error().expect("take_error").is_none());
            (&c).write_all(b"peekaboo").expect("write");
            let mut b = [0u8; 8];
            let mut got = 0;
            // Echo segments may arrive split; peek until all 8 bytes are visible.
            assert!(wait_until(Duration::from_secs(5), || {
                got = c.peek(&mut b).expect("peek");
                got == 8
            }));
            assert_eq!(&b, b"peekaboo");
            let mut again = [0u8; 8];
            (&c).read_exact(&mut again).expect("read");
            assert_eq!(&again, b"peekaboo", "peek consumed data");
            let l = SocketBuilder::new()
                .reuse_address(true)
                .backlog(16)
                .listen(V4_ANY_PORT.parse().expect("addr"))
                .expect("builder listen");
            l.set_ttl(30).expect("listener ttl");
            assert!(l.take_error().expect("take_error").is_none());
        });
    });
}

#[test]
fn a_loop_with_many_sockets_serves_them_fairly() {
    bounded(LIMIT, || {
        run_on(1, || {
            let (addr, _server) = spawn_echo_server(V4_ANY_PORT).expect("server");
            let done = Rc::new(Cell::new(0u32));
            let hs: Vec<_> = (0..100u32)
                .map(|i| {
                    let done = done.clone();
                    libnet::spawn(move || {
                        let mut c = TcpStream::connect(addr).expect("connect");
                        for j in 0..20u32 {
                            c.write_all(&(i * 1000 + j).to_le_bytes()).expect("write");
                            let mut b = [0u8; 4];
                            c.read_exact(&mut b).expect("read");
                            assert_eq!(u32::from_le_bytes(b), i * 1000 + j);
                        }
                        done.set(done.get() + 1);
                    })
                })
                .collect();
            for h in hs {
                h.join().expect("client");
            }
            assert_eq!(done.get(), 100);
        });
    });
}

/// A writer that fills its send buffer must be woken when the peer drains
/// it. The reader here starts late, so the writer surely waits for
/// writability, on a loop of its own where nothing else could wake it.
#[test]
fn a_writer_waiting_for_buffer_space_resumes_when_the_peer_reads() {
    bounded(Duration::from_secs(30), || {
        const TOTAL: usize = 32 << 20;
        let listener = std::net::TcpListener::bind(V4_ANY_PORT).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let writer = thread::spawn(move || {
            run_on(1, move || {
                let mut c = TcpStream::connect(addr).expect("connect");
                let buf = vec![0xa5u8; 256 << 10];
                for _ in 0..TOTAL / buf.len() {
                    c.write_all(&buf).expect("write");
                }
            })
        });
        let (mut s, _) = listener.accept().expect("accept");
        thread::sleep(Duration::from_millis(300));
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        while got < TOTAL {
            let n = s.read(&mut buf).expect("read");
            assert!(n > 0, "EOF after {got} of {TOTAL} bytes");
            got += n;
        }
        writer.join().expect("writer");
    });
}
