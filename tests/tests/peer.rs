//! The peer layer over loopback RUDP: two peers exchange metadata and
//! fragments (the original's case), priorities, cancel, a stalled channel
//! beside a live one, a vanishing peer, a silent peer, garbage, and the
//! bounds of the store and of the per-connection queue.
//!
//! Where a test needs the server's sender to be blocked, it uses small RUDP
//! windows and buffers (well under a megabyte in flight per connection) and
//! requests several megabytes without reading, so the order of events does
//! not depend on timing.

use std::cell::Cell;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use libnet::net::UdpSocket;
use libnet::p2p::peer::{
    ClientConfig, FetchResult, PeerClient, PeerLink, PeerServer, ServerConfig,
};
use libnet::p2p::store::{FragmentStore, SharedStore, StoreConfig};
use libnet::p2p::wire::Message;
use libnet::p2p::{rudp_config, Channel};
use libnet::rudp::{Config, RudpConnection, RudpSocket};
use libnet::time::sleep;
use libnet_tests::{bounded, pattern, run_on, LATE};

const ROOM: u32 = 42;
const T: Duration = Duration::from_secs(10);
const LIMIT: Duration = Duration::from_secs(60);

fn any() -> SocketAddr {
    "127.0.0.1:0".parse().expect("valid")
}

/// Small windows and buffers: a connection whose reader does not read
/// blocks its sender after well under a megabyte.
fn small_windows() -> Config {
    Config {
        send_window: 128,
        recv_window: 128,
        max_queued_bytes: 256 << 10,
        max_recv_bytes: 256 << 10,
        ..rudp_config()
    }
}

/// A store allowing `n` fragments (and enough bytes) per channel.
fn store(n: usize) -> SharedStore {
    FragmentStore::shared(StoreConfig {
        max_fragments: n,
        max_bytes: 64 << 20,
        ..StoreConfig::default()
    })
}

/// Fills (ROOM, channel) with fragments `ids`, each `size(id)` bytes of
/// `pattern(.., id)`, timestamp `id * 40`.
fn fill(
    store: &SharedStore,
    channel: Channel,
    ids: std::ops::Range<u64>,
    size: impl Fn(u64) -> usize,
) {
    let mut s = store.borrow_mut();
    for id in ids {
        s.insert(ROOM, channel, id, id * 40, &pattern(size(id), id))
            .expect("stored");
    }
}

/// A peer server on its own socket, accepting everything.
fn serve(store: SharedStore, config: ServerConfig, rudp: Config) -> (PeerServer, SocketAddr) {
    let socket = Rc::new(RudpSocket::bind(any(), rudp).expect("bind"));
    let addr = socket.local_addr().expect("addr");
    let server = PeerServer::new(store, config);
    drop(server.accept_loop(socket));
    (server, addr)
}

fn send(conn: &RudpConnection, m: &Message) {
    conn.send(&m.to_frame().expect("encodes")).expect("send");
}

fn recv(conn: &RudpConnection) -> Message {
    let f = conn.recv().expect("recv").expect("a message");
    Message::decode_frame(&f).expect("decodes")
}

/// Polls `cond` every 5 ms for up to 10 s.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if cond() {
            return;
        }
        sleep(Duration::from_millis(5));
    }
    panic!("timed out waiting until {what}");
}

fn got_ids(results: &[FetchResult]) -> Vec<u64> {
    results
        .iter()
        .filter(|r| matches!(r, FetchResult::Got { .. }))
        .map(FetchResult::id)
        .collect()
}

fn count(results: &[FetchResult], f: impl Fn(&FetchResult) -> bool) -> usize {
    results.iter().filter(|r| f(r)).count()
}

/// Checks that `results` are `ids`, all `Got`, byte-exact.
fn assert_all_got(results: &[FetchResult], ids: &[u64], size: impl Fn(u64) -> usize) {
    assert_eq!(results.len(), ids.len());
    for (r, &want) in results.iter().zip(ids) {
        match r {
            FetchResult::Got {
                id,
                timestamp,
                data,
            } => {
                assert_eq!((*id, *timestamp), (want, want * 40));
                assert!(
                    *data == pattern(size(want), want),
                    "fragment {want} differs"
                );
            }
            other => panic!("fragment {want}: {other:?}"),
        }
    }
}

fn video_size(id: u64) -> usize {
    let jitter = (id % 7) as usize;
    match id % 5 {
        0 => 1 + jitter,
        1 => 1000 + jitter,
        // The largest fragment a 64 KiB RUDP message carries.
        2 => 65_503,
        3 => 30_000 + jitter,
        _ => 12_345 + jitter,
    }
}

fn audio_size(id: u64) -> usize {
    100 + (id as usize * 37) % 2000
}

#[test]
fn two_peers_transport_metadata_and_fragments() {
    bounded(LIMIT, || {
        run_on(1, || {
            let st = store(50);
            fill(&st, Channel::Video, 100..150, video_size);
            fill(&st, Channel::Audio, 200..250, audio_size);
            {
                let mut s = st.borrow_mut();
                s.set_meta(ROOM, "codec", b"h264 avc1.64001f")
                    .expect("meta");
                s.set_meta(ROOM, "audio", &pattern(4000, 9)).expect("meta");
            }
            let (server, addr) = serve(st, ServerConfig::default(), rudp_config());
            server.set_load(7, 3);

            let sock = RudpSocket::bind(any(), rudp_config()).expect("bind");
            let link =
                Rc::new(PeerLink::connect(&sock, addr, ClientConfig::default()).expect("link"));
            assert_eq!(link.remote(), addr);
            assert_eq!(link.init(ROOM, Channel::Meta).expect("init"), None);
            assert_eq!(
                link.init(ROOM, Channel::Video).expect("init"),
                Some((100, 149))
            );
            assert_eq!(
                link.init(ROOM, Channel::Audio).expect("init"),
                Some((200, 249))
            );
            assert_eq!(link.init(ROOM + 1, Channel::Video).expect("init"), None);
            assert_eq!(server.stats().connections, 3);

            // Both channels at once, each on its own connection.
            let video: Vec<u64> = (100..150).collect();
            let audio: Vec<u64> = (200..250).collect();
            let v = {
                let (link, ids) = (link.clone(), video.clone());
                libnet::spawn(move || link.fetch(ROOM, Channel::Video, &ids, 0, T))
            };
            let a = link
                .fetch(ROOM, Channel::Audio, &audio, 0, T)
                .expect("audio");
            let v = v.join().expect("video coroutine").expect("video");
            assert_all_got(&v, &video, video_size);
            assert_all_got(&a, &audio, audio_size);

            // Ids not held, mixed with one held; a repeated id counts once.
            let r = link
                .fetch(ROOM, Channel::Video, &[99, 150, 125, 1000, 99], 3, T)
                .expect("fetch");
            assert_eq!(r.len(), 4);
            assert_eq!(r[0], FetchResult::Missing { id: 99 });
            assert_eq!(r[1], FetchResult::Missing { id: 150 });
            assert_all_got(&r[2..3], &[125], video_size);
            assert_eq!(r[3], FetchResult::Missing { id: 1000 });
            // Audio ids asked on the video channel are not there.
            let r = link
                .fetch(ROOM, Channel::Video, &[200], 0, T)
                .expect("fetch");
            assert_eq!(r, [FetchResult::Missing { id: 200 }]);

            // Two coroutines waiting for the same fragment both get it.
            let other = {
                let link = link.clone();
                libnet::spawn(move || link.fetch(ROOM, Channel::Audio, &[210, 211], 5, T))
            };
            let mine = link
                .fetch(ROOM, Channel::Audio, &[211], 0, T)
                .expect("fetch");
            assert_all_got(&mine, &[211], audio_size);
            assert_all_got(
                &other.join().expect("coroutine").expect("fetch"),
                &[210, 211],
                audio_size,
            );

            assert_eq!(
                link.meta(ROOM, "codec", T).expect("meta").as_deref(),
                Some(&b"h264 avc1.64001f"[..])
            );
            assert_eq!(
                link.meta(ROOM, "audio", T).expect("meta"),
                Some(pattern(4000, 9))
            );
            assert_eq!(link.meta(ROOM, "nothing", T).expect("meta"), None);
            assert_eq!(link.meta(ROOM + 1, "codec", T).expect("meta"), None);

            let pong = link.channel(Channel::Audio).ping(1, 2, T).expect("ping");
            assert_eq!((pong.workload, pong.trackers), (7, 3));
            assert!(pong.rtt < T);

            for c in [Channel::Meta, Channel::Video, Channel::Audio] {
                let s = link.channel(c).stats();
                assert_eq!(s.unexpected, 0, "{c:?}: {s:?}");
            }
            let s = server.stats();
            // 211 goes once or twice, depending on whether the second
            // request found it still queued.
            assert!(s.fragments_sent >= 50 + 50 + 1 + 2, "{s:?}");
            assert_eq!(s.missing, 4);
            assert_eq!(s.queued, 0);

            // Dropping the link closes its connections on both sides.
            drop(link);
            eventually("the server sees the link closed", || {
                server.stats().connections == 0
            });
        });
    });
}

#[test]
fn more_urgent_requests_overtake_queued_ones() {
    bounded(LIMIT, || {
        run_on(1, || {
            let st = store(200);
            fill(&st, Channel::Video, 0..110, |_| 32 * 1024);
            let (server, addr) = serve(st, ServerConfig::default(), small_windows());
            let sock = RudpSocket::bind(any(), small_windows()).expect("bind");
            let conn = sock.connect(addr).expect("connect");
            // 100 fragments at priority 9 (3.2 MB, far more than the
            // connection carries while nobody reads) ...
            send(
                &conn,
                &Message::FragmentRequest {
                    room: ROOM,
                    channel: Channel::Video,
                    priority: 9,
                    ids: (0..100).collect(),
                },
            );
            eventually("the server's sender is under way", || {
                server.stats().fragments_sent > 0
            });
            // ... then 10 at priority 0, and one the server lacks, which
            // tells us when the server has taken the request in.
            let mut urgent: Vec<u64> = (100..110).collect();
            urgent.push(5000);
            send(
                &conn,
                &Message::FragmentRequest {
                    room: ROOM,
                    channel: Channel::Video,
                    priority: 0,
                    ids: urgent,
                },
            );
            eventually("the urgent request is queued", || {
                server.stats().missing == 1
            });
            assert!(
                server.stats().queued > 10,
                "the first request must still be queued: {:?}",
                server.stats()
            );
            // Now read everything, in arrival order.
            let mut order = Vec::new();
            let mut missing = Vec::new();
            while order.len() < 110 {
                match recv(&conn) {
                    Message::Fragment { id, .. } => order.push(id),
                    Message::FragmentMissing { ids, .. } => missing.extend(ids),
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(missing, [5000]);
            let first_urgent = order.iter().position(|&id| id >= 100).expect("urgent ones");
            assert_eq!(
                order[first_urgent..first_urgent + 10],
                (100..110).collect::<Vec<_>>()[..],
                "the urgent ones arrive together, in order: {order:?}"
            );
            let before: Vec<u64> = order[..first_urgent].to_vec();
            let after: Vec<u64> = order[first_urgent + 10..].to_vec();
            assert!(!after.is_empty(), "some earlier requests waited: {order:?}");
            assert_eq!(
                [before, after].concat(),
                (0..100).collect::<Vec<_>>(),
                "the rest in request order"
            );
        });
    });
}

#[test]
fn a_cancel_drops_what_is_still_queued() {
    bounded(LIMIT, || {
        run_on(1, || {
            let st = store(300);
            fill(&st, Channel::Video, 0..200, |_| 32 * 1024);
            let (server, addr) = serve(st, ServerConfig::default(), small_windows());
            let sock = RudpSocket::bind(any(), small_windows()).expect("bind");

            // On the wire: 200 fragments (6.4 MB) requested, nothing read,
            // then cancelled.
            let conn = sock.connect(addr).expect("connect");
            let ids: Vec<u64> = (0..200).collect();
            send(
                &conn,
                &Message::FragmentRequest {
                    room: ROOM,
                    channel: Channel::Video,
                    priority: 1,
                    ids: ids.clone(),
                },
            );
            eventually("the server's sender is under way", || {
                server.stats().fragments_sent > 0
            });
            send(
                &conn,
                &Message::Cancel {
                    room: ROOM,
                    channel: Channel::Video,
                    ids: ids.clone(),
                },
            );
            send(
                &conn,
                &Message::Ping {
                    nonce: 1,
                    workload: 0,
                    trackers: 0,
                },
            );
            let mut got = 0u64;
            loop {
                match recv(&conn) {
                    Message::Fragment { .. } => got += 1,
                    Message::Pong { nonce: 1, .. } => break,
                    other => panic!("unexpected {other:?}"),
                }
            }
            let s = server.stats();
            assert!(got < 200 && s.cancelled > 0, "got {got}, {s:?}");
            assert_eq!(got + s.cancelled, 200, "{s:?}");
            assert_eq!(s.queued, 0);
            // Nothing else follows.
            send(
                &conn,
                &Message::Ping {
                    nonce: 2,
                    workload: 0,
                    trackers: 0,
                },
            );
            assert!(matches!(recv(&conn), Message::Pong { nonce: 2, .. }));

            // Through the client: a fetch cancelled once its first fragment
            // arrived gets what arrived and `Cancelled` for the rest.
            let client = Rc::new(PeerClient::new(
                sock.connect(addr).expect("connect"),
                ClientConfig::default(),
            ));
            let fetch = {
                let (client, ids) = (client.clone(), ids.clone());
                libnet::spawn(move || client.fetch(ROOM, Channel::Video, &ids, 1, T))
            };
            let start = Instant::now();
            while client.stats().fragments == 0 && start.elapsed() < T {
                libnet::yield_now();
            }
            let arrived = client.stats().fragments;
            assert!(arrived > 0, "nothing arrived");
            let n = client.cancel(ROOM, Channel::Video, &ids).expect("cancel");
            let results = fetch.join().expect("coroutine").expect("fetch");
            let got = got_ids(&results);
            assert_eq!(got.len() as u64, arrived);
            assert!(got.len() < 200, "cancelled too late to matter");
            assert_eq!(
                count(&results, |r| matches!(r, FetchResult::Cancelled { .. })),
                200 - got.len()
            );
            assert_eq!(n, 200 - got.len());
            assert_eq!(got, (0..got.len() as u64).collect::<Vec<_>>(), "in order");
            // The link stays usable; stragglers sent before the cancel are
            // dropped and counted.
            let r = client
                .fetch(ROOM, Channel::Video, &[199], 0, T)
                .expect("fetch");
            assert_eq!(got_ids(&r), [199]);
            eventually("the server's queue empties", || server.stats().queued == 0);
            let stragglers = client.stats().unexpected;
            assert!(stragglers < 200, "{:?}", client.stats());
        });
    });
}

#[test]
fn a_stalled_channel_does_not_block_another() {
    bounded(LIMIT, || {
        run_on(1, || {
            let st = store(200);
            fill(&st, Channel::Video, 0..100, |_| 32 * 1024);
            fill(&st, Channel::Audio, 0..50, |id| 4000 + id as usize);
            let (server, addr) = serve(st, ServerConfig::default(), small_windows());
            let sock = RudpSocket::bind(any(), small_windows()).expect("bind");

            // The video connection asks for 3.2 MB and does not read.
            let video = sock.connect(addr).expect("connect");
            send(
                &video,
                &Message::FragmentRequest {
                    room: ROOM,
                    channel: Channel::Video,
                    priority: 0,
                    ids: (0..100).collect(),
                },
            );
            eventually("the video sender starts", || {
                server.stats().fragments_sent > 0
            });
            // Stuck once the count stops moving (the buffers are full).
            let mut stuck = server.stats();
            loop {
                sleep(Duration::from_millis(200));
                let now = server.stats();
                if now == stuck {
                    break;
                }
                stuck = now;
            }
            assert!(stuck.queued > 0, "{stuck:?}");

            // Audio, from the same socket to the same server, flows.
            let audio = PeerClient::new(
                sock.connect(addr).expect("connect"),
                ClientConfig::default(),
            );
            assert_eq!(
                audio.init(ROOM, Channel::Audio).expect("init"),
                Some((0, 49))
            );
            let ids: Vec<u64> = (0..50).collect();
            for _ in 0..3 {
                let r = audio
                    .fetch(ROOM, Channel::Audio, &ids, 0, T)
                    .expect("audio");
                assert_all_got(&r, &ids, |id| 4000 + id as usize);
            }
            let s = server.stats();
            assert!(s.queued > 0, "video is still stuck: {s:?}");
            assert_eq!(
                s.fragments_sent - stuck.fragments_sent,
                150,
                "only audio moved: {stuck:?} then {s:?}"
            );

            // Once read, the video arrives whole.
            let mut n = 0;
            while n < 100 {
                match recv(&video) {
                    Message::Fragment { id, data, .. } => {
                        assert_eq!(id, n);
                        assert_eq!(data, pattern(32 * 1024, id));
                        n += 1;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        });
    });
}

/// A UDP forwarder between one client and `server` that drops everything
/// once `cut` is set: the server vanishes without a word.
fn proxy(server: SocketAddr, cut: Rc<Cell<bool>>) -> SocketAddr {
    let sock = UdpSocket::bind(any()).expect("bind");
    let addr = sock.local_addr().expect("addr");
    drop(libnet::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        let mut client = None;
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if cut.get() {
                continue;
            }
            let to = if from == server {
                match client {
                    Some(c) => c,
                    None => continue,
                }
            } else {
                client = Some(from);
                server
            };
            let _ = sock.send_to(&buf[..n], to);
        }
    }));
    addr
}

#[test]
fn a_vanished_peer_is_detected_within_the_idle_time() {
    bounded(LIMIT, || {
        run_on(1, || {
            let idle = Duration::from_secs(1);
            let st = store(50);
            fill(&st, Channel::Video, 0..10, |_| 1000);
            let (server, addr) = serve(
                st,
                ServerConfig {
                    heartbeat: Duration::from_millis(100),
                    idle,
                    ..ServerConfig::default()
                },
                rudp_config(),
            );
            let cut = Rc::new(Cell::new(false));
            let via = proxy(addr, cut.clone());
            let sock = RudpSocket::bind(any(), rudp_config()).expect("bind");
            let client = PeerClient::new(
                sock.connect(via).expect("connect"),
                ClientConfig {
                    heartbeat: Duration::from_millis(100),
                    idle,
                    ..ClientConfig::default()
                },
            );
            // Quiet but alive: heartbeats keep both sides up past `idle`.
            sleep(idle * 2);
            let r = client
                .fetch(ROOM, Channel::Video, &[1], 0, T)
                .expect("fetch");
            assert_eq!(got_ids(&r), [1]);
            assert!(client.stats().heartbeats > 0);

            cut.set(true);
            let start = Instant::now();
            let ids: Vec<u64> = (0..10).collect();
            let e = client
                .fetch(ROOM, Channel::Video, &ids, 0, Duration::from_secs(30))
                .expect_err("the peer is gone");
            let took = start.elapsed();
            assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
            assert!(
                took + Duration::from_millis(150) >= idle && took <= idle + LATE,
                "detected after {took:?}"
            );
            assert!(client.check().is_err());
            let e = client.meta(ROOM, "x", T).expect_err("the link is down");
            assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");

            // The server drops its side too.
            eventually("the server drops the silent connection", || {
                server.stats().connections == 0
            });
            assert_eq!(server.stats().idle_closed, 1);
        });
    });
}

#[test]
fn the_server_drops_a_silent_peer() {
    bounded(LIMIT, || {
        run_on(1, || {
            let idle = Duration::from_millis(500);
            let (server, addr) = serve(
                store(10),
                ServerConfig {
                    heartbeat: Duration::from_millis(100),
                    idle,
                    ..ServerConfig::default()
                },
                rudp_config(),
            );
            let sock = RudpSocket::bind(any(), rudp_config()).expect("bind");
            let conn = sock.connect(addr).expect("connect");
            send(
                &conn,
                &Message::Init {
                    room: ROOM,
                    channel: Channel::Audio,
                },
            );
            let start = Instant::now();
            assert!(matches!(
                recv(&conn),
                Message::InitReply {
                    first: 1,
                    last: 0,
                    ..
                }
            ));
            // We stay silent; the server heartbeats, then gives up.
            let mut heartbeats = 0;
            while let Ok(Some(f)) = conn.recv() {
                assert_eq!(Message::decode_frame(&f), Ok(Message::Heartbeat));
                heartbeats += 1;
            }
            let took = start.elapsed();
            assert!(heartbeats >= 2, "{heartbeats} heartbeats");
            assert!(
                took >= idle && took <= idle + LATE,
                "dropped after {took:?}"
            );
            assert_eq!(server.stats().idle_closed, 1);
            assert_eq!(server.stats().connections, 0);
        });
    });
}

#[test]
fn garbage_gets_an_error_and_a_close_and_others_are_served() {
    bounded(LIMIT, || {
        run_on(1, || {
            let st = store(10);
            fill(&st, Channel::Audio, 0..5, |_| 500);
            let (server, addr) = serve(st, ServerConfig::default(), rudp_config());
            let sock = RudpSocket::bind(any(), rudp_config()).expect("bind");
            let good = PeerClient::new(
                sock.connect(addr).expect("connect"),
                ClientConfig::default(),
            );
            assert_eq!(good.init(ROOM, Channel::Audio).expect("init"), Some((0, 4)));

            // A well-formed message a peer does not serve: an error, and the
            // connection stays.
            let odd = sock.connect(addr).expect("connect");
            send(&odd, &Message::TrackersRequest);
            match recv(&odd) {
                Message::Error { code, .. } => assert_eq!(code, 6, "Unsupported"),
                other => panic!("unexpected {other:?}"),
            }
            send(
                &odd,
                &Message::Ping {
                    nonce: 9,
                    workload: 0,
                    trackers: 0,
                },
            );
            assert!(matches!(recv(&odd), Message::Pong { nonce: 9, .. }));

            // Garbage: an error, then the end.
            odd.send(b"GET / HTTP/1.1\r\n\r\n").expect("send");
            match recv(&odd) {
                Message::Error { code, text } => {
                    assert_eq!(code, 5, "Malformed: {text}");
                }
                other => panic!("unexpected {other:?}"),
            }
            assert!(
                matches!(odd.recv(), Ok(None)),
                "the server closes after the error"
            );
            assert_eq!(server.stats().malformed, 1);

            // The others are served as before, and newcomers too.
            let r = good
                .fetch(ROOM, Channel::Audio, &[0, 1, 2, 3, 4], 0, T)
                .expect("fetch");
            assert_all_got(&r, &[0, 1, 2, 3, 4], |_| 500);
            let fresh = PeerClient::new(
                sock.connect(addr).expect("connect"),
                ClientConfig::default(),
            );
            assert_eq!(
                fresh.init(ROOM, Channel::Audio).expect("init"),
                Some((0, 4))
            );
            eventually("the garbage connection is gone", || {
                server.stats().connections == 2
            });
        });
    });
}

#[test]
fn the_store_and_the_queue_are_bounded() {
    bounded(LIMIT, || {
        run_on(1, || {
            // The store keeps the newest 50 by default, and at most its
            // byte budget.
            let st = FragmentStore::shared(StoreConfig::default());
            fill(&st, Channel::Video, 0..60, |_| 100);
            {
                let mut s = st.borrow_mut();
                assert_eq!(s.range(ROOM, Channel::Video), Some((10, 59)));
                assert_eq!(s.len(ROOM, Channel::Video), 50);
                let max = s.config().max_fragment;
                assert!(s
                    .insert(ROOM, Channel::Audio, 0, 0, &vec![0; max + 1])
                    .is_err());
            }
            let small = FragmentStore::shared(StoreConfig {
                max_bytes: 10_000,
                ..StoreConfig::default()
            });
            fill(&small, Channel::Audio, 0..20, |_| 1000);
            assert_eq!(small.borrow().range(ROOM, Channel::Audio), Some((10, 19)));
            assert_eq!(small.borrow().bytes(ROOM, Channel::Audio), 10_000);

            // A connection queues at most `max_queued` fragments; the rest
            // of a request is answered as missing at once.
            let (server, addr) = serve(
                st,
                ServerConfig {
                    max_queued: 8,
                    ..ServerConfig::default()
                },
                rudp_config(),
            );
            let sock = RudpSocket::bind(any(), rudp_config()).expect("bind");
            let client = PeerClient::new(
                sock.connect(addr).expect("connect"),
                ClientConfig::default(),
            );
            assert_eq!(
                client.init(ROOM, Channel::Video).expect("init"),
                Some((10, 59))
            );
            let ids: Vec<u64> = (5..25).collect();
            let r = client
                .fetch(ROOM, Channel::Video, &ids, 0, T)
                .expect("fetch");
            // 5..10 were evicted; 10..18 fit the queue; 18..25 did not.
            assert_eq!(got_ids(&r), (10..18).collect::<Vec<_>>());
            assert_eq!(count(&r, |r| matches!(r, FetchResult::Missing { .. })), 12);
            let s = server.stats();
            assert_eq!((s.overflow, s.missing, s.fragments_sent), (7, 12, 8));

            // The client bounds what it waits for, and what one fetch asks.
            let tight = PeerClient::new(
                sock.connect(addr).expect("connect"),
                ClientConfig {
                    max_waiting: 4,
                    ..ClientConfig::default()
                },
            );
            let e = tight
                .fetch(ROOM, Channel::Video, &[10, 11, 12, 13, 14], 0, T)
                .expect_err("over max_waiting");
            assert_eq!(e.kind(), ErrorKind::WouldBlock);
            let e = tight
                .fetch(ROOM, Channel::Video, &vec![1; 1025], 0, T)
                .expect_err("over MAX_IDS");
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
            let r = tight
                .fetch(ROOM, Channel::Video, &[10, 11, 12, 13], 0, T)
                .expect("within bounds");
            assert_eq!(got_ids(&r), [10, 11, 12, 13]);
        });
    });
}

#[test]
fn a_buffer_map_shows_which_fragments_are_held_holes_included() {
    bounded(LIMIT, || {
        run_on(1, || {
            let st = store(50);
            fill(&st, Channel::Video, 100..104, video_size);
            fill(&st, Channel::Video, 110..111, video_size);
            let (_server, addr) = serve(st.clone(), ServerConfig::default(), rudp_config());
            let sock = RudpSocket::bind(any(), rudp_config()).expect("bind");
            let link = PeerLink::connect(&sock, addr, ClientConfig::default()).expect("link");
            // 100..=103 and 110: bits 0-3 and 10.
            assert_eq!(
                link.map(ROOM, Channel::Video).expect("map"),
                (100, vec![0x0f, 0x04])
            );
            assert_eq!(link.map(ROOM, Channel::Audio).expect("map"), (0, vec![]));
            assert_eq!(
                link.map(ROOM + 1, Channel::Video).expect("map"),
                (0, vec![])
            );
            // The map follows the store.
            fill(&st, Channel::Video, 104..110, video_size);
            assert_eq!(
                link.map(ROOM, Channel::Video).expect("map"),
                (100, vec![0xff, 0x07])
            );
        });
    });
}
