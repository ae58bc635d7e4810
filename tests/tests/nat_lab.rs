//! NAT classification across real (emulated) NATs: two linked trackers on
//! the lab's "internet", a host with no NAT and one behind each of the four
//! NAT kinds (nftables in network namespaces); each host classifies its NAT
//! with `classify_nat` over one UDP socket and must get its kind right.
//!
//! Needs root, iproute2 and nftables; without them it prints `SKIPPED` and
//! passes, unless `CI` or `LIBNET_LAB` is set (then it fails).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use libnet::nat::{Config as NatConfig, Servers};
use libnet::net::UdpSocket;
use libnet::p2p::client::{classify_nat, TrackerClient};
use libnet::p2p::tracker::{Config, Tracker};
use libnet::p2p::NatType;
use libnet_tests::netlab::{Host, Lab, NatKind};
use libnet_tests::{bounded, run_on};

/// Runs a tracker inside `host` until `stop` is set.
fn tracker_on(host: &Host, links: Vec<SocketAddr>, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let (tcp, udp, alt) = (host.sock(7000), host.sock(3478), host.sock(3479));
    host.spawn(move || {
        run_on(1, move || {
            let t = Tracker::start(Config {
                tcp: tcp.into(),
                udp: udp.into(),
                udp_alt: Some(alt.into()),
                links,
                gossip: Duration::from_millis(100),
                relink: Duration::from_millis(100),
                ..Config::default()
            })
            .expect("tracker starts in its namespace");
            while !stop.load(Ordering::SeqCst) {
                libnet::time::sleep(Duration::from_millis(20));
            }
            t.stop();
        })
    })
}

fn expected(kind: NatKind) -> NatType {
    match kind {
        NatKind::FullCone => NatType::FullCone,
        NatKind::AddressRestricted => NatType::AddressRestricted,
        NatKind::PortRestricted => NatType::PortRestricted,
        NatKind::Symmetric => NatType::Symmetric,
    }
}

#[test]
fn every_nat_kind_is_classified_through_real_nats() {
    bounded(Duration::from_secs(120), || {
        let Some(mut lab) = Lab::require("natclass") else {
            return;
        };
        let t1 = lab.public_host("tracker1").expect("tracker host 1");
        let t2 = lab.public_host("tracker2").expect("tracker host 2");
        let open = lab.public_host("open").expect("open host");
        let mut hosts = vec![(open, NatType::Open, None)];
        for (i, kind) in NatKind::ALL.into_iter().enumerate() {
            let nat = lab.nat(&format!("nat{i}"), kind).expect("nat");
            let h = lab.host_behind(&nat, &format!("h{i}")).expect("host");
            hosts.push((h, expected(kind), Some(nat.public_addr)));
        }

        let stop = Arc::new(AtomicBool::new(false));
        let tracker1 = tracker_on(&t1, Vec::new(), stop.clone());
        let tracker2 = tracker_on(&t2, vec![t1.sock(7000).into()], stop.clone());
        let servers = Servers {
            primary: t1.sock(3478).into(),
            alternate: t1.sock(3479).into(),
            other_ip: Some(t2.sock(3478).into()),
        };

        // Wait until the trackers are linked (tracker 1 relays the
        // other-IP probes to tracker 2).
        let t1_tcp: SocketAddr = t1.sock(7000).into();
        let t2_tcp: SocketAddr = t2.sock(7000).into();
        hosts[0].0.run(move || {
            run_on(1, move || {
                for _ in 0..250 {
                    if let Ok(c) = TrackerClient::connect(t1_tcp, Duration::from_secs(1)) {
                        if c.trackers().is_ok_and(|l| l.contains(&t2_tcp)) {
                            return;
                        }
                    }
                    libnet::time::sleep(Duration::from_millis(20));
                }
                panic!("the trackers never linked");
            })
        });

        let mut failures = Vec::new();
        for (host, want, public_ip) in &hosts {
            let local = host.sock(0);
            let outcome = host.run(move || {
                run_on(1, move || {
                    let sock = UdpSocket::bind(local).expect("bind");
                    classify_nat(&sock, servers, NatConfig::default())
                })
            });
            match outcome {
                Ok(o) => {
                    eprintln!("{}: {:?} (want {want:?})", host.name, o);
                    if o.nat != *want {
                        failures.push(format!("{}: got {:?}, want {want:?}", host.name, o.nat));
                    }
                    let seen_ip = o.public.map(|p| p.ip());
                    let want_ip = public_ip.unwrap_or(host.addr);
                    if seen_ip != Some(want_ip.into()) {
                        failures.push(format!(
                            "{}: public address {:?}, want IP {want_ip}",
                            host.name, o.public
                        ));
                    }
                }
                Err(e) => failures.push(format!("{}: {e}", host.name)),
            }
        }
        stop.store(true, Ordering::SeqCst);
        tracker1.join().expect("tracker 1");
        tracker2.join().expect("tracker 2");
        assert!(failures.is_empty(), "{failures:#?}");
    });
}
