//! The live broadcast across emulated NATs: tracker, edge and source (test
//! pattern, ~20 s) on a public host; eight viewers, two with public
//! addresses and six behind NATs of every kind (full cone, address- and
//! port-restricted, symmetric). Each viewer's recording must decode with no
//! error, hold the frames it should, in order, and more than half of the
//! bytes the viewers received must come from other viewers.
//!
//! Needs root, iproute2 and nftables; without them it prints `SKIPPED` and
//! passes, unless `CI` or `LIBNET_LAB` is set (then it fails).

use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use libnet_tests::apps::{build_apps, json_number, lab_tracker, Proc};
use libnet_tests::bounded;
use libnet_tests::netlab::{Host, Lab, NatKind};
use p2p_apps::media::probe;

const KEY: &str = "lab-edge-key";

/// Seconds each viewer watches.
const WATCH: u64 = 20;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("p2p-live-lab-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

#[test]
fn eight_viewers_behind_every_kind_of_nat_play_and_share() {
    bounded(Duration::from_secs(900), || {
        let Some(mut lab) = Lab::require("live") else {
            return;
        };
        let bins = build_apps(&["tracker", "edge", "source", "client"]);
        let infra = lab.public_host("infra").expect("host");
        let mut viewers_at: Vec<(String, Host)> = vec![
            ("open1".into(), lab.public_host("open1").expect("host")),
            ("open2".into(), lab.public_host("open2").expect("host")),
        ];
        let kinds = [
            ("fc", NatKind::FullCone),
            ("ar", NatKind::AddressRestricted),
            ("pr1", NatKind::PortRestricted),
            ("pr2", NatKind::PortRestricted),
            ("sym1", NatKind::Symmetric),
            ("sym2", NatKind::Symmetric),
        ];
        for (name, kind) in kinds {
            let nat = lab.nat(&format!("nat_{name}"), kind).expect("nat");
            viewers_at.push((name.into(), lab.host_behind(&nat, name).expect("host")));
        }
        let t = infra.sock(7000).to_string();
        let mut tracker = lab_tracker(&infra, &bins, &["--edge-key", KEY]);
        let mut edge = Proc::start(
            "edge",
            infra
                .command(bins.join("edge"))
                .args(["--tracker", &t, "--edge-key", KEY])
                .args(["--listen", &infra.sock(7100).to_string()])
                .args(["--metrics", &infra.sock(9100).to_string()]),
        );
        edge.wait_line("listening on", Duration::from_secs(10));
        let mut source = Proc::start(
            "source",
            infra
                .command(bins.join("source"))
                .args(["--tracker", &t, "--edge-key", KEY])
                .args(["--size", "320x180", "--video-kbps", "500"])
                .args(["--duration", &(WATCH + 15).to_string()]),
        );
        let line = source.wait_line("room=", Duration::from_secs(20));
        let room = line.trim().trim_start_matches("room=").to_string();
        thread::sleep(Duration::from_secs(2));

        let mut viewers = Vec::new();
        for (name, host) in &viewers_at {
            let out = tmp(&format!("{name}.ts"));
            let stats = tmp(&format!("{name}.json"));
            let p = Proc::start(
                name,
                host.command(bins.join("client"))
                    .args(["--tracker", &t, "--room", &room])
                    .args(["--bind", &host.sock(0).to_string()])
                    .args(["--duration", &WATCH.to_string(), "--quiet"])
                    .args(["--out", out.to_str().expect("utf-8")])
                    .args(["--stats-file", stats.to_str().expect("utf-8")]),
            );
            viewers.push((p, out, stats));
            thread::sleep(Duration::from_millis(300));
        }

        let (mut peers, mut total) = (0.0, 0.0);
        let mut failures = Vec::new();
        for (v, out, stats) in &mut viewers {
            let status = v.wait(Duration::from_secs(WATCH + 40));
            if !status.is_some_and(|s| s.success()) {
                failures.push(format!(
                    "{} ended badly ({status:?}):\n{}",
                    v.name,
                    v.stderr()
                ));
                continue;
            }
            let json = std::fs::read_to_string(&*stats).unwrap_or_default();
            eprintln!("{}: {json}", v.name);
            peers += json_number(&json, "bytes_from_peers").unwrap_or(0.0);
            total += json_number(&json, "bytes_from_peers").unwrap_or(0.0)
                + json_number(&json, "bytes_from_edge").unwrap_or(0.0);
            match probe::check(out) {
                Ok(r) => {
                    eprintln!("{}: {r:?}", v.name);
                    // It joins --delay-ms (1.5 s) behind live and starts at a
                    // key frame (one GOP, 1 s): within that of its watch time.
                    let secs = WATCH as f64;
                    let (vf, af) = (r.video_frames as f64, r.audio_frames as f64);
                    if r.decode_errors != 0
                        || !r.video_in_order
                        || !r.audio_in_order
                        || vf < (secs - 2.5) * 25.0
                        || vf > (secs + 2.5) * 25.0
                        || af < (secs - 2.5) * 46.0
                        || af > (secs + 2.5) * 47.5
                    {
                        failures.push(format!("{}: recording {r:?}", v.name));
                    }
                }
                Err(e) => failures.push(format!("{}: recording does not open: {e}", v.name)),
            }
        }
        let share = if total > 0.0 { peers / total } else { 0.0 };
        eprintln!("from peers: {:.1}% of {total} bytes", share * 100.0);
        for p in [&mut source, &mut edge, &mut tracker] {
            if let Err(e) = p.stop() {
                failures.push(e);
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        assert!(share > 0.5, "viewers got {:.1}% from peers", share * 100.0);
    });
}
