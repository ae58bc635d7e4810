//! The trackers' file catalog over loopback: nodes publish what they hold,
//! a node on a linked tracker lists the catalog and the holders; holdings
//! go with their nodes; unknown names are empty; conflicts and garbage
//! names are refused with an Error, and the tracker lives on.

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use libnet::p2p::client::{Hello, TrackerClient};
use libnet::p2p::registry::LOBBY;
use libnet::p2p::tracker::Tracker;
use libnet::p2p::wire::{
    self, CatalogEntry, Decoder, ErrorCode, FileInfo, Message, INDEX_LEN, MAX_FILE_NAME,
};
use libnet::p2p::{NatType, NodeId, Role};
use libnet_tests::{bounded, eventually, loopback_tracker, run_on, test_hello};

const KEY: &[u8] = b"test-edge-key";
const T: Duration = Duration::from_secs(5);
/// Type code of `Publish` (docs/protocol.md).
const T_PUBLISH: u8 = 0x20;
/// Type code of `CatalogRequest`.
const T_CATALOG_REQUEST: u8 = 0x22;

fn any() -> SocketAddr {
    "127.0.0.1:0".parse().expect("valid")
}

fn start(links: Vec<SocketAddr>) -> Tracker {
    start_on(any(), links)
}

fn start_on(tcp: SocketAddr, links: Vec<SocketAddr>) -> Tracker {
    loopback_tracker(tcp, links, KEY)
}

/// A node `node` (workload `node`) registered in `room` on `tracker`.
fn join(tracker: &Tracker, node: NodeId, role: Role, room: u32) -> TrackerClient {
    let c = TrackerClient::connect(tracker.tcp_addr(), T).expect("connect");
    let key = if role == Role::Peer { &[][..] } else { KEY };
    c.hello(&test_hello(node, role, room, key))
        .expect("registers");
    c
}

fn movie(index: u8) -> FileInfo {
    FileInfo {
        name: "movie.ts".into(),
        size: 100 * 65536,
        duration_ms: 5_400_000,
        pieces: 100,
        index: [index; INDEX_LEN],
    }
}

/// The loopback address of a tracker listening on a wildcard address.
fn loopback(t: &Tracker) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], t.tcp_addr().port()))
}

/// (name, holders, complete) of each entry.
fn summary(entries: &[CatalogEntry]) -> Vec<(String, u32, u32)> {
    entries
        .iter()
        .map(|e| (e.file.name.clone(), e.holders, e.complete))
        .collect()
}

fn movie_counts(c: &TrackerClient) -> Option<(u32, u32)> {
    let entries = c.catalog("movie").expect("catalog");
    entries
        .iter()
        .find(|e| e.file.name == "movie.ts")
        .map(|e| (e.holders, e.complete))
}

#[test]
fn a_node_on_a_linked_tracker_lists_the_files_and_their_holders() {
    bounded(Duration::from_secs(60), || {
        run_on(1, || {
            let ta = start(Vec::new());
            let tb = start(vec![ta.tcp_addr()]);
            // Three nodes hold parts of the movie on tracker A, one all of it.
            let nodes: Vec<TrackerClient> =
                (1..=4).map(|id| join(&ta, id, Role::Peer, LOBBY)).collect();
            for (c, have) in nodes.iter().zip([10, 20, 30]) {
                c.publish(&movie(7), have).expect("part");
            }
            let entry = nodes[3].publish(&movie(7), 100).expect("all of it");
            assert_eq!((entry.holders, entry.complete), (4, 1));
            assert_eq!(entry.file, movie(7));
            let song = FileInfo {
                name: "song.mp3".into(),
                size: 4_000_000,
                duration_ms: 240_000,
                pieces: 62,
                index: [3; INDEX_LEN],
            };
            nodes[0].publish(&song, 62).expect("song");

            // A node on tracker B sees them once the trackers have gossiped.
            let b = join(&tb, 9, Role::Peer, LOBBY);
            eventually("tracker B lists both files", || {
                b.catalog("").expect("catalog").len() == 2
            });
            let all = b.catalog("").expect("catalog");
            assert_eq!(
                summary(&all),
                [("movie.ts".into(), 4, 1), ("song.mp3".into(), 1, 1)]
            );
            assert_eq!(all[0].file, movie(7), "size, duration, pieces, index");
            assert_eq!(summary(&b.catalog("mov").expect("prefix")).len(), 1);
            assert!(b.catalog("x").expect("prefix").is_empty());

            // Its holders: the complete one first, then the least loaded
            // (workload = node id), all registered on tracker A.
            let holders = b.holders("movie.ts", 10).expect("holders");
            let got: Vec<(NodeId, u32)> = holders.iter().map(|h| (h.node.id, h.have)).collect();
            assert_eq!(got, [(4, 100), (1, 10), (2, 20), (3, 30)]);
            assert!(holders.iter().all(|h| h.tracker == ta.tcp_addr()));
            assert!(holders.iter().all(|h| h.node.room == LOBBY));
            assert_eq!(holders[1].node.local.port(), 20001);
            assert_eq!(b.holders("movie.ts", 2).expect("two").len(), 2);

            // Unknown names: empty lists, not errors.
            assert!(b.holders("unknown.ts", 10).expect("holders").is_empty());
            assert!(b.catalog("unknown").expect("catalog").is_empty());

            // A growing `have` reaches tracker B with the next gossip.
            nodes[0].publish(&movie(7), 100).expect("node 1 completes");
            assert_eq!(movie_counts(&nodes[0]), Some((4, 2)));
            eventually("tracker B sees two complete holders", || {
                movie_counts(&b) == Some((4, 2))
            });

            // A node leaving takes its holdings with it; so does unpublish.
            let mut nodes = nodes.into_iter();
            let (n1, n2, n3, n4) = (
                nodes.next().expect("1"),
                nodes.next().expect("2"),
                nodes.next().expect("3"),
                nodes.next().expect("4"),
            );
            drop(n2);
            eventually("node 2's holding is gone", || {
                movie_counts(&n1) == Some((3, 2))
            });
            let left = n3.unpublish("movie.ts").expect("unpublish");
            assert_eq!(left.map(|e| (e.holders, e.complete)), Some((2, 2)));
            n4.bye().expect("bye");
            eventually("node 4's holding is gone", || {
                movie_counts(&n1) == Some((1, 1))
            });
            // Never the asker.
            assert!(n1.holders("movie.ts", 10).expect("holders").is_empty());
            assert_eq!(n1.unpublish("movie.ts").expect("last holder"), None);
            assert_eq!(
                summary(&n1.catalog("").expect("catalog")),
                [("song.mp3".into(), 1, 1)],
                "a name goes with its last holder"
            );
            assert_eq!(ta.stats().files, 1);
        });
    });
}

#[test]
fn a_lobby_node_is_introduced_to_holders_in_any_room() {
    bounded(Duration::from_secs(30), || {
        run_on(1, || {
            let t = start(Vec::new());
            let lobby_holder = join(&t, 1, Role::Peer, LOBBY);
            lobby_holder.publish(&movie(1), 100).expect("publish");
            // A viewer of a broadcast holds it too.
            let _edge = join(&t, 2, Role::Edge, 42);
            let viewer = join(&t, 3, Role::Peer, 42);
            viewer.publish(&movie(1), 50).expect("publish");

            let asker = join(&t, 5, Role::Peer, LOBBY);
            let holders = asker.holders("movie.ts", 10).expect("holders");
            let rooms: Vec<(NodeId, u32)> =
                holders.iter().map(|h| (h.node.id, h.node.room)).collect();
            assert_eq!(rooms, [(1, LOBBY), (3, 42)]);
            // The punch goes through the holder's tracker, naming the
            // holder's room; the holder learns who wants it.
            for (h, holder, token) in [
                (&holders[0], &lobby_holder, 0x11),
                (&holders[1], &viewer, 0x22),
            ] {
                assert_eq!(h.tracker, t.tcp_addr());
                asker
                    .punch_request(5, h.node.id, h.node.room, token)
                    .expect("punch request");
                match holder.next_notification(Some(T)).expect("notified") {
                    Message::PunchNotify { peer, token: got } => {
                        assert_eq!((peer.id, peer.room, got), (5, LOBBY, token));
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        });
    });
}

#[test]
fn holders_name_a_tracker_address_that_reaches_it_even_on_a_wildcard_bind() {
    bounded(Duration::from_secs(30), || {
        run_on(1, || {
            let wild: SocketAddr = "0.0.0.0:0".parse().expect("valid");
            let ta = start_on(wild, Vec::new());
            assert!(ta.tcp_addr().ip().is_unspecified());
            let tb = start_on(wild, vec![loopback(&ta)]);
            let connect = |t: &Tracker, node: NodeId| {
                let c = TrackerClient::connect(loopback(t), T).expect("connect");
                c.hello(&Hello {
                    node,
                    role: Role::Peer,
                    room: LOBBY,
                    local: "127.0.0.1:9".parse().expect("valid"),
                    public: None,
                    workload: 0,
                    nat: NatType::Unknown,
                    key: Vec::new(),
                })
                .expect("registers");
                c
            };
            let holder_a = connect(&ta, 1);
            holder_a.publish(&movie(1), 100).expect("publish on A");
            let holder_b = connect(&tb, 2);
            holder_b.publish(&movie(1), 100).expect("publish on B");
            let asker = connect(&tb, 3);
            eventually("tracker B knows both holders", || {
                asker.holders("movie.ts", 10).expect("holders").len() == 2
            });
            let mut got: Vec<(NodeId, SocketAddr)> = asker
                .holders("movie.ts", 10)
                .expect("holders")
                .iter()
                .map(|h| (h.node.id, h.tracker))
                .collect();
            got.sort();
            assert_eq!(got, [(1, loopback(&ta)), (2, loopback(&tb))]);
        });
    });
}

#[test]
fn conflicts_and_bad_names_are_refused_with_an_error() {
    bounded(Duration::from_secs(30), || {
        run_on(1, || {
            let t = start(Vec::new());
            // Publishing needs a registered node.
            let stranger = TrackerClient::connect(t.tcp_addr(), T).expect("connect");
            let e = stranger.publish(&movie(1), 1).expect_err("not registered");
            assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
            assert!(stranger.catalog("").expect("anyone may list").is_empty());

            let a = join(&t, 1, Role::Peer, LOBBY);
            let b = join(&t, 2, Role::Peer, LOBBY);
            a.publish(&movie(1), 10).expect("first");
            let e = b.publish(&movie(2), 10).expect_err("another index");
            assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
            b.publish(&movie(1), 10).expect("the same file");

            // Names the tracker does not take, and more pieces than there
            // are: an Error each, and the connection serves on.
            for (name, have) in [("", 0), ("two\nlines", 0), ("nul\0", 0), ("movie.ts", 101)] {
                let f = FileInfo {
                    name: name.into(),
                    ..movie(1)
                };
                let e = b.publish(&f, have).expect_err("refused");
                assert_eq!(e.kind(), ErrorKind::InvalidInput, "{name:?}: {e}");
            }
            // Too long: refused before it is sent.
            let long = FileInfo {
                name: "a".repeat(MAX_FILE_NAME + 1),
                ..movie(1)
            };
            let e = b.publish(&long, 0).expect_err("too long");
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
            let e = b.holders(&long.name, 1).expect_err("too long");
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
            assert_eq!(
                summary(&b.catalog("").expect("the client still works")),
                [("movie.ts".into(), 2, 0)]
            );

            // On the wire: a name one byte too long, and one that is not
            // UTF-8, each get Error{Malformed} and the connection closes.
            let mut too_long = vec![b'a'; MAX_FILE_NAME + 1];
            too_long.insert(0, 0);
            too_long.insert(0, 1); // length 256, big-endian
            let mut not_utf8 = vec![0, 2, 0xC3, 0x28];
            let raw_cases = [
                (T_PUBLISH, publish_payload(&too_long)),
                (T_PUBLISH, publish_payload(&not_utf8)),
                (T_CATALOG_REQUEST, std::mem::take(&mut not_utf8)),
            ];
            for (i, (code, payload)) in raw_cases.into_iter().enumerate() {
                let replies = raw_exchange(&t, 10 + i as u64, code, &payload);
                assert!(
                    matches!(replies.first(), Some(Message::HelloReply { .. })),
                    "{replies:?}"
                );
                assert!(
                    matches!(
                        replies.get(1),
                        Some(Message::Error { code, .. }) if *code == ErrorCode::Malformed.code()
                    ),
                    "{replies:?}"
                );
                assert_eq!(replies.len(), 2, "{replies:?}");
            }
            // The tracker lives on, its catalog unharmed.
            assert_eq!(
                summary(&a.catalog("").expect("catalog")),
                [("movie.ts".into(), 2, 0)]
            );
        });
    });
}

/// A Publish payload with `name` (its length prefix included) as given.
fn publish_payload(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.extend_from_slice(&1000u64.to_be_bytes()); // size
    p.extend_from_slice(&0u64.to_be_bytes()); // duration
    p.extend_from_slice(&4u32.to_be_bytes()); // pieces
    p.extend_from_slice(&[9; INDEX_LEN]); // index
    p.extend_from_slice(&1u32.to_be_bytes()); // have
    p
}

/// On a raw connection: Hello as node `node` in the lobby, then one frame
/// of type `code` with `payload`; returns what the tracker sent until it
/// closed the connection.
fn raw_exchange(t: &Tracker, node: NodeId, code: u8, payload: &[u8]) -> Vec<Message> {
    let mut raw = libnet::net::TcpStream::connect(t.tcp_addr()).expect("connect");
    let hello = Message::Hello {
        node,
        role: Role::Peer,
        room: LOBBY,
        local: "127.0.0.1:9".parse().expect("valid"),
        public: None,
        workload: 0,
        nat: NatType::Unknown,
        key: Vec::new(),
    };
    let mut out = hello.to_frame().expect("frame");
    out.extend_from_slice(&[wire::MAGIC, wire::VERSION, code, 0]);
    out.extend_from_slice(&u32::try_from(payload.len()).expect("small").to_be_bytes());
    out.extend_from_slice(payload);
    raw.write_all(&out).expect("write");
    raw.set_read_timeout(Some(T)).expect("timeout");
    let mut got = Vec::new();
    raw.read_to_end(&mut got).expect("closed after the error");
    let mut dec = Decoder::new();
    dec.push(&got);
    let mut replies = Vec::new();
    while let Some(m) = dec.next().expect("the tracker's frames decode") {
        replies.push(m);
    }
    replies
}
