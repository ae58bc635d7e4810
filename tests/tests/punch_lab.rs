//! Connecting peers through real (emulated) NATs: a tracker and an edge
//! (running the relay) on the lab's "internet", peers with no NAT and
//! behind each of the four NAT kinds. Every ordered pair runs
//! `connect_peer`/`accept_peer` (A asks the tracker, B hears of A and asks
//! back, both probe on their RUDP socket; RUDP over the punched path, or
//! through the edge's relay when punching fails) and exchanges a message
//! each way. Pairs that theory allows must connect directly; symmetric
//! with port-restricted or symmetric must end relayed. Once more with 5%
//! loss on every NAT router.
//!
//! Needs root, iproute2 and nftables; without them it prints `SKIPPED` and
//! passes, unless `CI` or `LIBNET_LAB` is set (then it fails).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use libnet::nat::punch::Config as PunchConfig;
use libnet::p2p::client::{whoami_rudp, Hello, TrackerClient};
use libnet::p2p::connect::{accept_peer, connect_peer, wait_notify, Options, Path};
use libnet::p2p::relay::{self, Relay};
use libnet::p2p::rudp_config;
use libnet::p2p::tracker::{Config, Tracker};
use libnet::p2p::wire::Message;
use libnet::p2p::{registry, NatType, Role, Strategy};
use libnet::rudp::RudpSocket;
use libnet_tests::netlab::{Host, Lab, NatKind};
use libnet_tests::{bounded, run_on};

const KEY: &[u8] = b"lab-key";
const T: Duration = Duration::from_secs(5);

fn kind_of(k: NatKind) -> NatType {
    match k {
        NatKind::FullCone => NatType::FullCone,
        NatKind::AddressRestricted => NatType::AddressRestricted,
        NatKind::PortRestricted => NatType::PortRestricted,
        NatKind::Symmetric => NatType::Symmetric,
    }
}

fn possible(a: NatType, b: NatType) -> bool {
    let hard = |x: NatType, y: NatType| {
        x == NatType::Symmetric && matches!(y, NatType::PortRestricted | NatType::Symmetric)
    };
    !(hard(a, b) || hard(b, a))
}

/// One side of a pair: registers, punches, connects (A) or accepts (B),
/// exchanges a message. Returns the peer address the punch found.
/// Who a side is.
#[derive(Clone, Copy)]
struct Side {
    me: u64,
    other: u64,
    nat: NatType,
    room: u32,
    initiator: bool,
}

fn side(
    host: &Host,
    tracker: SocketAddr,
    tracker_udp: SocketAddr,
    who: Side,
) -> std::thread::JoinHandle<Result<Path, String>> {
    let Side {
        me,
        other,
        nat,
        room,
        initiator,
    } = who;
    let ip = host.addr;
    host.spawn(move || {
        run_on(1, move || -> Result<Path, String> {
            let sock = RudpSocket::bind(SocketAddr::new(ip.into(), 0), rudp_config())
                .map_err(|e| format!("bind: {e}"))?;
            let local = sock.local_addr().map_err(|e| e.to_string())?;
            // Whoami must go out of the RUDP socket itself: its mapping is
            // the one to punch.
            let public = whoami_rudp(&sock, tracker_udp, T).map_err(|e| e.to_string())?;
            let c = TrackerClient::connect(tracker, T).map_err(|e| e.to_string())?;
            c.hello(&Hello {
                node: me,
                role: Role::Peer,
                room,
                local,
                public: Some(public),
                workload: 0,
                nat,
                key: Vec::new(),
            })
            .map_err(|e| format!("hello: {e}"))?;
            let opts = Options {
                punch: PunchConfig {
                    timeout: Duration::from_secs(2),
                    ..PunchConfig::default()
                },
                ..Options::default()
            };
            // The relay: the room's edge, as the tracker lists it.
            let edges = c
                .nodes(room, Strategy::Edges, 1)
                .map_err(|e| e.to_string())?;
            let relay_addr = edges.first().map(|e| e.public);
            if initiator {
                // Wait until the other side is registered, then connect.
                let mut found = false;
                for _ in 0..250 {
                    let nodes = c
                        .nodes(room, Strategy::Random, 16)
                        .map_err(|e| e.to_string())?;
                    if nodes.iter().any(|n| n.id == other) {
                        found = true;
                        break;
                    }
                    libnet::time::sleep(Duration::from_millis(20));
                }
                if !found {
                    return Err("the other side never registered".into());
                }
                let conn = connect_peer(&sock, &c, me, other, room, relay_addr, opts)
                    .map_err(|e| format!("connect_peer: {e}"))?;
                let path = conn.path();
                let conn = conn.into_connection();
                conn.send(b"hello through the NATs")
                    .map_err(|e| e.to_string())?;
                match conn.recv().map_err(|e| e.to_string())? {
                    Some(m) if m == b"hello back" => {}
                    other => return Err(format!("unexpected reply {other:?}")),
                }
                conn.close();
                while let Ok(Some(_)) = conn.recv() {}
                Ok(path)
            } else {
                // The first notification names the attempt.
                let (peer, token) = match c.next_notification(Some(T)).map_err(|e| e.to_string())? {
                    Message::PunchNotify { peer, token } => (peer, token),
                    m => return Err(format!("unexpected {m:?}")),
                };
                let _ = wait_notify;
                let conn = accept_peer(&sock, &c, me, &peer, token, relay_addr, opts)
                    .map_err(|e| format!("accept_peer: {e}"))?;
                let path = conn.path();
                let conn = conn.into_connection();
                match conn.recv().map_err(|e| e.to_string())? {
                    Some(m) if m == b"hello through the NATs" => {}
                    other => return Err(format!("unexpected message {other:?}")),
                }
                conn.send(b"hello back").map_err(|e| e.to_string())?;
                while let Ok(Some(_)) = conn.recv() {}
                Ok(path)
            }
        })
    })
}

/// Runs every ordered pair of {no NAT, the four kinds} with `loss` % on
/// every NAT router; returns the failures.
fn matrix(name: &str, loss: u8) -> Vec<String> {
    let Some(mut lab) = Lab::require(name) else {
        return Vec::new();
    };
    let th = lab.public_host("tracker").expect("tracker host");
    let eh = lab.public_host("edge").expect("edge host");
    let mut a_side = vec![(lab.public_host("a_open").expect("host"), NatType::Open)];
    let mut b_side = vec![(lab.public_host("b_open").expect("host"), NatType::Open)];
    for (i, kind) in NatKind::ALL.into_iter().enumerate() {
        let na = lab.nat(&format!("na{i}"), kind).expect("nat");
        lab.set_loss(&na, loss).expect("loss");
        a_side.push((
            lab.host_behind(&na, &format!("a{i}")).expect("host"),
            kind_of(kind),
        ));
        let nb = lab.nat(&format!("nb{i}"), kind).expect("nat");
        lab.set_loss(&nb, loss).expect("loss");
        b_side.push((
            lab.host_behind(&nb, &format!("b{i}")).expect("host"),
            kind_of(kind),
        ));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (tcp, udp, alt) = (th.sock(7000), th.sock(3478), th.sock(3479));
    let stop2 = stop.clone();
    let tracker = th.spawn(move || {
        run_on(1, move || {
            let t = Tracker::start(Config {
                tcp: tcp.into(),
                udp: udp.into(),
                udp_alt: Some(alt.into()),
                registry: registry::Config {
                    edge_key: KEY.to_vec(),
                    ..registry::Config::default()
                },
                ..Config::default()
            })
            .expect("tracker starts");
            while !stop2.load(Ordering::SeqCst) {
                libnet::time::sleep(Duration::from_millis(20));
            }
            t.stop();
        })
    });
    let tracker_tcp: SocketAddr = tcp.into();
    // The edge: runs the relay on its RUDP socket and holds the room open
    // for the whole test (a room lives while someone is in it).
    let (room_tx, room_rx) = std::sync::mpsc::channel();
    let stop3 = stop.clone();
    let relay_at: SocketAddr = eh.sock(9000).into();
    let edge = eh.spawn(move || {
        run_on(1, move || {
            let sock = std::rc::Rc::new(RudpSocket::bind(relay_at, rudp_config()).expect("bind"));
            let relay = Relay::start(sock, relay::Config::default());
            let mut client = None;
            for _ in 0..250 {
                if let Ok(c) = TrackerClient::connect(tracker_tcp, T) {
                    client = Some(c);
                    break;
                }
                libnet::time::sleep(Duration::from_millis(20));
            }
            let c = client.expect("tracker never came up");
            let room = c.allocate_room(KEY).expect("room");
            c.hello(&Hello {
                node: 1,
                role: Role::Edge,
                room,
                local: relay_at,
                public: Some(relay_at),
                workload: 0,
                nat: NatType::Open,
                key: KEY.to_vec(),
            })
            .expect("edge holds the room");
            room_tx.send(room).expect("room");
            while !stop3.load(Ordering::SeqCst) {
                libnet::time::sleep(Duration::from_millis(20));
            }
            relay.pairs_completed()
        })
    });
    let room = room_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("room allocated");

    let tracker_udp: SocketAddr = udp.into();
    let mut failures = Vec::new();
    let mut id = 100u64;
    let mut relayed_pairs = 0;
    for (a, ka) in &a_side {
        for (b, kb) in &b_side {
            id += 2;
            let (ida, idb) = (id, id + 1);
            let who = |me, other, nat, initiator| Side {
                me,
                other,
                nat,
                room,
                initiator,
            };
            let hb = side(b, tracker_tcp, tracker_udp, who(idb, ida, *kb, false));
            let ha = side(a, tracker_tcp, tracker_udp, who(ida, idb, *ka, true));
            let ra = ha.join().expect("side a");
            let rb = hb.join().expect("side b");
            eprintln!("{loss}% {ka:?} -> {kb:?}: a {ra:?}, b {rb:?}");
            let want_direct = possible(*ka, *kb);
            let good = match (&ra, &rb) {
                (Ok(Path::Direct(_)), Ok(Path::Direct(_))) => want_direct,
                (Ok(Path::Relayed(_)), Ok(Path::Relayed(_))) => {
                    relayed_pairs += 1;
                    !want_direct
                }
                _ => false,
            };
            if !good {
                failures.push(format!(
                    "{loss}% {ka:?} -> {kb:?} (want {}): a {ra:?}, b {rb:?}",
                    if want_direct { "direct" } else { "relayed" }
                ));
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    let pairs = edge.join().expect("edge");
    tracker.join().expect("tracker");
    assert_eq!(
        pairs, relayed_pairs,
        "the relay paired what the peers report"
    );
    failures
}

#[test]
fn every_pair_of_nat_kinds_connects_direct_or_relayed() {
    bounded(Duration::from_secs(300), || {
        let failures = matrix("punch", 0);
        assert!(failures.is_empty(), "{failures:#?}");
    });
}

#[test]
fn every_pair_connects_with_5_percent_loss_on_the_nat_routers() {
    bounded(Duration::from_secs(300), || {
        let failures = matrix("punchloss", 5);
        assert!(failures.is_empty(), "{failures:#?}");
    });
}
