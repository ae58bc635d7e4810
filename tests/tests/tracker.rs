//! Trackers over loopback: linking and gossip (the original's five linked
//! trackers), registration and node lists across linked trackers, room
//! allocation, errors, address discovery over UDP, punch notifications,
//! garbage on the control port.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use libnet::net::UdpSocket;
use libnet::p2p::client::{whoami, Hello, TrackerClient};
use libnet::p2p::tracker::Tracker;
use libnet::p2p::wire::Message;
use libnet::p2p::{Role, Strategy};
use libnet_tests::{bounded, eventually, loopback_tracker, run_on, test_hello};

const KEY: &[u8] = b"test-edge-key";
const T: Duration = Duration::from_secs(5);

fn any() -> SocketAddr {
    "127.0.0.1:0".parse().expect("valid")
}

fn start(links: Vec<SocketAddr>) -> Tracker {
    loopback_tracker(any(), links, KEY)
}

fn hello(node: u64, role: Role, room: u32, key: &[u8]) -> Hello {
    test_hello(node, role, room, key)
}

#[test]
fn five_linked_trackers_each_know_the_other_four() {
    bounded(Duration::from_secs(60), || {
        run_on(1, || {
            // A chain: each links to the one before it.
            let mut trackers: Vec<Tracker> = Vec::new();
            for i in 0..5 {
                let links = trackers
                    .last()
                    .map(|t| vec![t.tcp_addr()])
                    .unwrap_or_default();
                trackers.push(start(links));
                assert_eq!(trackers[i].tcp_addr().ip().to_string(), "127.0.0.1");
            }
            let all: Vec<SocketAddr> = trackers.iter().map(Tracker::tcp_addr).collect();
            for (i, t) in trackers.iter().enumerate() {
                eventually(&format!("tracker {i} knows the other four"), || {
                    let known = t.trackers();
                    all.iter()
                        .filter(|&&a| a != t.tcp_addr())
                        .all(|a| known.contains(a))
                });
                assert!(
                    !t.trackers().contains(&t.tcp_addr()),
                    "a tracker lists itself"
                );
            }
        });
    });
}

#[test]
fn clients_on_one_tracker_see_the_rooms_of_a_linked_one() {
    bounded(Duration::from_secs(60), || {
        run_on(1, || {
            let t1 = start(Vec::new());
            let t2 = start(vec![t1.tcp_addr()]);
            // An edge serves room 42 through tracker 2.
            let edge = TrackerClient::connect(t2.tcp_addr(), T).expect("edge connects");
            edge.hello(&hello(7, Role::Edge, 42, KEY))
                .expect("edge registers");
            // A viewer on tracker 1 finds it once the trackers have gossiped.
            let viewer = TrackerClient::connect(t1.tcp_addr(), T).expect("viewer connects");
            eventually("tracker 1 learns room 42", || {
                viewer.hello(&hello(8, Role::Peer, 42, b"")).is_ok()
            });
            let edges = viewer.nodes(42, Strategy::Edges, 10).expect("node list");
            assert_eq!(edges.iter().map(|n| n.id).collect::<Vec<_>>(), [7]);
            assert_eq!(edges[0].role, Role::Edge);
            let trackers = viewer.trackers().expect("tracker list");
            assert_eq!(trackers[0], t1.tcp_addr(), "the tracker names itself first");
            assert!(trackers.contains(&t2.tcp_addr()), "{trackers:?}");
            // Never the asker.
            let peers = edge.nodes(42, Strategy::Random, 10).expect("node list");
            assert!(peers.iter().all(|n| n.id != 7));
        });
    });
}

/// A tracker listening on a wildcard address names itself `0.0.0.0:PORT`;
/// the trackers it links with, and those they gossip to, must list it at
/// the address its link comes from, never the wildcard (a client would
/// dial its own machine).
#[test]
fn a_tracker_on_a_wildcard_address_is_listed_where_it_is_reached() {
    bounded(Duration::from_secs(60), || {
        run_on(1, || {
            let wild = loopback_tracker("0.0.0.0:0".parse().expect("valid"), Vec::new(), KEY);
            assert!(wild.tcp_addr().ip().is_unspecified());
            let reached: SocketAddr = ([127, 0, 0, 1], wild.tcp_addr().port()).into();
            let t2 = start(vec![reached]);
            let t3 = start(vec![t2.tcp_addr()]);
            for (name, t) in [("tracker 2", &t2), ("tracker 3", &t3)] {
                eventually(&format!("{name} lists the wildcard tracker"), || {
                    t.trackers().contains(&reached)
                });
                assert!(
                    t.trackers().iter().all(|a| !a.ip().is_unspecified()),
                    "{name}: {:?}",
                    t.trackers()
                );
            }
            // The wildcard tracker learns the others, and not itself from
            // their lists (where it is 127.0.0.1:PORT).
            eventually("the wildcard tracker lists tracker 3", || {
                wild.trackers().contains(&t3.tcp_addr())
            });
            assert!(!wild.trackers().contains(&reached), "{:?}", wild.trackers());
            // And what clients are told, by any of them.
            for t in [&t3, &wild] {
                let dial: SocketAddr = ([127, 0, 0, 1], t.tcp_addr().port()).into();
                let c = TrackerClient::connect(dial, T).expect("client connects");
                let listed = c.trackers().expect("tracker list");
                assert_eq!(listed[0], dial, "the tracker names itself first");
                assert!(listed.contains(&reached), "{listed:?}");
                assert!(
                    listed.iter().all(|a| !a.ip().is_unspecified()),
                    "{listed:?}"
                );
            }
        });
    });
}

#[test]
fn rooms_keys_and_unknown_rooms() {
    bounded(Duration::from_secs(30), || {
        run_on(1, || {
            let t = start(Vec::new());
            let c = TrackerClient::connect(t.tcp_addr(), T).expect("connect");
            let e = c.allocate_room(b"wrong").expect_err("bad key refused");
            assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
            let room = c.allocate_room(KEY).expect("room");
            assert_ne!(c.allocate_room(KEY).expect("room"), room);
            let e = c
                .hello(&hello(3, Role::Peer, room + 1000, b""))
                .expect_err("unknown room refused");
            assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
            let e = c
                .hello(&hello(3, Role::Source, room, b"wrong"))
                .expect_err("source without the key refused");
            assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
            c.hello(&hello(3, Role::Source, room, KEY))
                .expect("source joins");
            assert_eq!(t.node_count(), 1);
            c.bye().expect("bye");
            eventually("the node is gone after bye", || t.node_count() == 0);
        });
    });
}

#[test]
fn whoami_reports_the_address_the_tracker_sees() {
    bounded(Duration::from_secs(30), || {
        run_on(1, || {
            let t = start(Vec::new());
            let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
            let seen = whoami(&sock, t.udp_addr(), T).expect("whoami");
            assert_eq!(seen, sock.local_addr().expect("addr"));
            // A probe asking for the other port is answered from it.
            let probe = Message::Whoami {
                nonce: 5,
                reply_from: libnet::p2p::wire::ReplyFrom::OtherPort,
            }
            .to_frame()
            .expect("frame");
            sock.send_to(&probe, t.udp_addr()).expect("send");
            sock.set_read_timeout(Some(T)).expect("timeout");
            let mut buf = [0u8; 512];
            let (n, from) = sock.recv_from(&mut buf).expect("reply");
            assert_eq!(Some(from), t.udp_alt_addr());
            match Message::decode_frame(&buf[..n]).expect("decodes") {
                Message::WhoamiReply {
                    nonce, from_other, ..
                } => assert_eq!((nonce, from_other), (5, true)),
                other => panic!("unexpected {other:?}"),
            }
        });
    });
}

#[test]
fn a_punch_request_reaches_the_other_peer_with_our_addresses() {
    bounded(Duration::from_secs(30), || {
        run_on(1, || {
            let t = start(Vec::new());
            let edge = TrackerClient::connect(t.tcp_addr(), T).expect("connect");
            edge.hello(&hello(1, Role::Edge, 9, KEY)).expect("edge");
            let a = TrackerClient::connect(t.tcp_addr(), T).expect("connect");
            let b = TrackerClient::connect(t.tcp_addr(), T).expect("connect");
            a.hello(&hello(2, Role::Peer, 9, b"")).expect("a");
            b.hello(&hello(3, Role::Peer, 9, b"")).expect("b");
            a.punch_request(2, 3, 9, 0xabc).expect("punch request");
            match b.next_notification(Some(T)).expect("notified") {
                Message::PunchNotify { peer, token } => {
                    assert_eq!((peer.id, token), (2, 0xabc));
                    assert_eq!(peer.local.port(), 20002);
                }
                other => panic!("unexpected {other:?}"),
            }
            // A punch request on behalf of someone else is refused (an
            // Error: the sender is not who it says), one to a node that is
            // not there fails as a notification naming the attempt.
            a.punch_request(3, 1, 9, 1).expect("sent");
            let n = a.next_notification(Some(T)).expect("error comes back");
            assert!(matches!(n, Message::Error { .. }), "{n:?}");
            a.punch_request(2, 99, 9, 77).expect("sent");
            let n = a.next_notification(Some(T)).expect("failure comes back");
            assert!(
                matches!(
                    n,
                    Message::PunchResult {
                        token: 77,
                        ok: false,
                        ..
                    }
                ),
                "{n:?}"
            );
            // And waiting for nothing ends at its timeout.
            let e = a
                .next_notification(Some(Duration::from_millis(100)))
                .expect_err("nothing more");
            assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        });
    });
}

#[test]
fn garbage_on_the_control_port_gets_an_error_and_the_tracker_lives_on() {
    bounded(Duration::from_secs(30), || {
        run_on(1, || {
            let t = start(Vec::new());
            let mut raw = libnet::net::TcpStream::connect(t.tcp_addr()).expect("connect");
            raw.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");
            let mut got = Vec::new();
            raw.set_read_timeout(Some(T)).expect("timeout");
            raw.read_to_end(&mut got).expect("closed after the error");
            let mut dec = libnet::p2p::wire::Decoder::new();
            dec.push(&got);
            assert!(
                matches!(dec.next(), Ok(Some(Message::Error { .. }))),
                "expected an Error frame, got {got:?}"
            );
            // Others are served as before.
            let c = TrackerClient::connect(t.tcp_addr(), T).expect("connect");
            assert_eq!(c.trackers().expect("list"), [t.tcp_addr()]);
        });
    });
}

#[test]
fn chat_names_lists_and_punches_are_tracked() {
    bounded(Duration::from_secs(30), || {
        run_on(1, || {
            let t = start(Vec::new());
            let lobby = libnet::p2p::registry::LOBBY;
            let a = TrackerClient::connect(t.tcp_addr(), T).expect("connect");
            let b = TrackerClient::connect(t.tcp_addr(), T).expect("connect");
            // Chat needs a registered node.
            assert!(a.chat_login("alice").is_err());
            a.hello(&hello(21, Role::Peer, lobby, b""))
                .expect("lobby always exists");
            b.hello(&hello(22, Role::Peer, lobby, b"")).expect("lobby");
            let users = a.chat_login("alice").expect("login");
            assert_eq!(
                users.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
                ["alice"]
            );
            let e = b.chat_login("alice").expect_err("a name is taken once");
            assert!(e.to_string().contains("taken"), "{e}");
            b.chat_login("bob").expect("login");
            a.punch_result(5, 22, true, false).expect("report");
            let users = b.chat_list().expect("list");
            let alice = users
                .iter()
                .find(|u| u.name == "alice")
                .expect("alice listed");
            assert_eq!((alice.node, alice.punched.as_slice()), (21, &[22][..]));
            assert!(
                alice.ttl_secs > 100 && alice.ttl_secs <= 120,
                "{}",
                alice.ttl_secs
            );
            let users = a.chat_logout().expect("logout");
            assert_eq!(
                users.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
                ["bob"]
            );
            drop(b);
            eventually("bob is gone with his connection", || {
                a.chat_list().is_ok_and(|l| l.is_empty())
            });
        });
    });
}

/// An introduction that carries the token of an attempt we answered (the
/// other side answering back, late or again) is not a new attempt: the
/// `Puncher` drops it instead of answering, or two nodes would answer each
/// other forever.
#[test]
fn a_puncher_does_not_answer_its_own_attempts_back() {
    use libnet::p2p::client::ProbeRouter;
    use libnet::p2p::connect::{Options, Puncher};
    use libnet::p2p::{registry::LOBBY, rudp_config, NodeInfo};
    use libnet::rudp::RudpSocket;
    use std::rc::Rc;
    bounded(Duration::from_secs(60), || {
        run_on(1, || {
            let t = start(Vec::new());
            let node = |id: u64| {
                let sock = Rc::new(RudpSocket::bind(any(), rudp_config()).expect("bind"));
                let local = sock.local_addr().expect("addr");
                let tracker = Rc::new(TrackerClient::connect(t.tcp_addr(), T).expect("connect"));
                let mut h = hello(id, Role::Peer, LOBBY, &[]);
                h.local = local;
                h.public = Some(local);
                tracker.hello(&h).expect("hello");
                let router = Rc::new(ProbeRouter::new(sock.clone()));
                let r = router.clone();
                drop(libnet::spawn(move || r.route()));
                let p = Rc::new(Puncher::new(tracker, router, id, Options::default()));
                let (tx, rx) = libnet::sync::channel::<(NodeInfo, u64)>(8);
                let d = p.clone();
                drop(libnet::spawn(move || drop(d.dispatch(&tx))));
                (sock, p, rx)
            };
            let (_sa, a, a_in) = node(1);
            let (_sb, b, b_in) = node(2);
            // A wants B: B hears of it and answers; A's attempt takes it.
            let attempt = {
                let a = a.clone();
                libnet::spawn(move || a.connect(2, LOBBY))
            };
            let (peer, token) = b_in.recv_timeout(T).expect("B hears of A");
            assert_eq!(peer.id, 1);
            b.answer(&peer, token).expect("B punches back");
            let (got, _) = attempt.join().expect("joins").expect("A reaches B");
            assert_eq!(got.id, 2);
            // A answers again with the same token (as after a timeout on
            // one side): B has answered that token, so B drops it.
            let b_info = got;
            let late = libnet::spawn(move || a.answer(&b_info, token));
            assert!(
                b_in.recv_timeout(Duration::from_secs(1)).is_err(),
                "B must not take its own attempt back as a new one"
            );
            drop(late.join());
            assert!(
                a_in.try_recv().ok().flatten().is_none(),
                "nothing new for A"
            );
        })
    });
}
