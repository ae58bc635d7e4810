//! Files on demand across emulated NATs, as processes: a tracker and one
//! complete holder (`vod share`, upload capped) on public hosts; three
//! holders of different parts behind NATs (each fetched its span of time
//! with `vod fetch --start/--end --seed`, then serves it); then four
//! downloaders at once, behind a full-cone, an address-restricted, a
//! port-restricted and a symmetric NAT. Holders behind NATs are reached by
//! punching through the tracker.
//!
//! Every download must be byte-identical to the original and have taken
//! bytes from more than one holder; one downloader plays while it
//! downloads (`--stdout` into a file, the "player"): its first bytes come
//! within 2 s of its start and before the download ends, and the played
//! stream decodes with no error from its first byte.
//!
//! A second test puts the only holder behind a port-restricted NAT on a
//! second tracker linked to the downloader's: it is reached by punching
//! through that tracker.
//!
//! Needs root, iproute2, nftables and the ffmpeg program; without a lab it
//! prints `SKIPPED` and passes, unless `CI` or `LIBNET_LAB` is set (then it
//! fails).

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use libnet_tests::apps::{build_apps, lab_tracker, test_media, Proc};
use libnet_tests::bounded;
use libnet_tests::netlab::{output_within, Host, Lab, NatKind};
use p2p_apps::media::probe;

/// Upload cap of every holder: 16 Mbit/s (2 MB/s).
const CAP_KBPS: &str = "16000";

fn dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("p2p-live-vod-lab-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The holders that gave bytes, from the `fetched ...: ADDR N bytes, ...`
/// line of a `vod fetch`.
fn sources(log: &str) -> Vec<(String, u64)> {
    let Some(line) = log.lines().find(|l| l.starts_with("fetched ")) else {
        return Vec::new();
    };
    let Some((_, per)) = line.rsplit_once("): ") else {
        return Vec::new();
    };
    per.split(", ")
        .filter_map(|p| {
            let mut w = p.split(' ');
            let (addr, n) = (w.next()?, w.next()?.parse::<u64>().ok()?);
            Some((addr.to_string(), n))
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[test]
fn four_downloaders_behind_nats_fetch_from_partial_and_full_holders() {
    bounded(Duration::from_secs(600), || {
        let Some(mut lab) = Lab::require("vod") else {
            return;
        };
        let d = dir("four");
        let movie = d.join("movie.ts");
        // 24 s at 2 Mbit/s: ~6 MB, 100 pieces of 60,000 bytes.
        if !test_media(&movie, 24, 2) {
            return;
        }
        let original = std::fs::read(&movie).expect("the media");
        let bins = build_apps(&["tracker", "vod"]);
        let vod = bins.join("vod");

        let infra = lab.public_host("infra").expect("host");
        let seed = lab.public_host("seed").expect("host");
        let mut behind = |name: &str, kind: NatKind| -> Host {
            let nat = lab.nat(&format!("nat_{name}"), kind).expect("nat");
            lab.host_behind(&nat, name).expect("host")
        };
        let parts = [
            ("p_fc", behind("p_fc", NatKind::FullCone), "0", "8"),
            (
                "p_ar",
                behind("p_ar", NatKind::AddressRestricted),
                "8",
                "16",
            ),
            ("p_pr", behind("p_pr", NatKind::PortRestricted), "16", "100"),
        ];
        let downloaders = [
            ("d_fc", behind("d_fc", NatKind::FullCone)),
            ("d_ar", behind("d_ar", NatKind::AddressRestricted)),
            ("d_pr", behind("d_pr", NatKind::PortRestricted)),
            ("d_sym", behind("d_sym", NatKind::Symmetric)),
        ];

        let t = infra.sock(7000).to_string();
        let mut tracker = lab_tracker(&infra, &bins, &[]);
        let net = |h: &Host| -> Vec<String> {
            vec![
                "--tracker".into(),
                t.clone(),
                "--bind".into(),
                h.sock(0).to_string(),
                "--upload-kbps".into(),
                CAP_KBPS.into(),
            ]
        };
        let mut full = Proc::start(
            "full",
            seed.command(&vod)
                .args(["share", path(&movie)])
                .args(net(&seed)),
        );
        full.wait_line("shared movie.ts", Duration::from_secs(20));

        // The partial holders: each fetches its span, then serves it.
        let mut holders = Vec::new();
        for (name, host, from, to) in &parts {
            let out = d.join(format!("{name}.ts"));
            let p = Proc::start(
                name,
                host.command(&vod)
                    .args(["fetch", "movie.ts", "--out", path(&out)])
                    .args(["--start", from, "--end", to, "--seed"])
                    .args(net(host)),
            );
            p.wait_line("seeding", Duration::from_secs(60));
            holders.push(p);
        }

        // Four downloaders at once; d_fc also plays while it downloads.
        let mut failures = Vec::new();
        let mut running = Vec::new();
        let played = d.join("played.ts");
        for (name, host) in &downloaders {
            let out = d.join(format!("{name}.ts"));
            let mut args: Vec<String> = ["fetch", "movie.ts", "--out", path(&out)]
                .iter()
                .map(|s| s.to_string())
                .collect();
            args.extend(net(host));
            let p = if *name == "d_fc" {
                // The player: stdout into a file, through a shell.
                let line = format!(
                    "exec {} {} --stdout > {}",
                    path(&vod),
                    args.join(" "),
                    path(&played)
                );
                Proc::start(name, host.command("sh").args(["-c", &line]))
            } else {
                Proc::start(name, host.command(&vod).args(&args))
            };
            running.push((p, out, Instant::now()));
        }
        // The player's first bytes.
        let started = running[0].2;
        let mut first_byte = None;
        while started.elapsed() < Duration::from_secs(30) {
            if std::fs::metadata(&played).is_ok_and(|m| m.len() > 0) {
                first_byte = Some(started.elapsed());
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        eprintln!("player: first byte after {first_byte:?}");
        for (p, out, since) in &mut running {
            let status = p.wait(Duration::from_secs(120));
            let took = since.elapsed();
            let log = p.stderr();
            eprintln!("{} ({:.2} s):\n{log}", p.name, took.as_secs_f64());
            if !status.is_some_and(|s| s.success()) {
                failures.push(format!("{} ended badly: {status:?}", p.name));
                continue;
            }
            if std::fs::read(&*out).ok().as_deref() != Some(&original[..]) {
                failures.push(format!("{}: the download differs", p.name));
            }
            let from = sources(&log);
            if from.len() < 2 {
                failures.push(format!("{}: bytes from {from:?} only", p.name));
            }
            if p.name == "d_fc" {
                match first_byte {
                    Some(t) if t <= Duration::from_secs(2) && t < took => {}
                    other => failures.push(format!(
                        "player: first byte after {other:?}, download took {took:?}"
                    )),
                }
            }
        }
        match probe::check(&played) {
            Ok(r) => {
                eprintln!("played: {r:?}");
                if r.decode_errors != 0 || !r.video_in_order || r.video_frames < 24 * 25 - 5 {
                    failures.push(format!("the played stream: {r:?}"));
                }
            }
            Err(e) => failures.push(format!("the played stream does not open: {e}")),
        }
        if std::fs::read(&played).ok().as_deref() != Some(&original[..]) {
            failures.push("the played stream differs from the original".into());
        }
        for p in holders.iter_mut().chain([&mut full, &mut tracker]) {
            if let Err(e) = p.stop() {
                failures.push(e);
            }
        }
        drop(lab);
        let _ = std::fs::remove_dir_all(&d);
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    });
}

/// A holder behind a port-restricted NAT, registered on a second tracker
/// linked to the downloader's: the downloader learns of it through the
/// catalog's gossip, registers with that tracker and punches through it.
#[test]
fn a_holder_on_a_linked_tracker_is_reached_through_it() {
    bounded(Duration::from_secs(300), || {
        let Some(mut lab) = Lab::require("vodlink") else {
            return;
        };
        let d = dir("link");
        let movie = d.join("movie.ts");
        if !test_media(&movie, 6, 2) {
            return;
        }
        let original = std::fs::read(&movie).expect("the media");
        let bins = build_apps(&["tracker", "vod"]);
        let vod = bins.join("vod");
        let ta = lab.public_host("ta").expect("host");
        let tb = lab.public_host("tb").expect("host");
        let nat_h = lab.nat("nat_h", NatKind::PortRestricted).expect("nat");
        let h = lab.host_behind(&nat_h, "h").expect("host");
        let nat_d = lab.nat("nat_d", NatKind::FullCone).expect("nat");
        let dl = lab.host_behind(&nat_d, "dl").expect("host");
        let a_addr = ta.sock(7000).to_string();
        let b_addr = tb.sock(7000).to_string();
        let mut a = lab_tracker(&ta, &bins, &["--gossip-secs", "1"]);
        let mut b = lab_tracker(&tb, &bins, &["--gossip-secs", "1", "--link", &a_addr]);
        let mut holder = Proc::start(
            "holder",
            h.command(&vod)
                .args(["share", path(&movie), "--tracker", &b_addr])
                .args(["--bind", &h.sock(0).to_string()]),
        );
        holder.wait_line("shared movie.ts", Duration::from_secs(20));
        // The catalog of tracker A lists it once gossip has run.
        let listed = (0..50).any(|_| {
            let out = output_within(
                ta.command(&vod).args(["list", "--tracker", &a_addr]),
                None,
                Duration::from_secs(20),
            )
            .expect("vod list");
            if String::from_utf8_lossy(&out.stdout).contains("movie.ts") {
                return true;
            }
            thread::sleep(Duration::from_millis(200));
            false
        });
        assert!(listed, "tracker A never listed the file");
        let out = d.join("got.ts");
        let mut fetch = Proc::start(
            "fetch",
            dl.command(&vod)
                .args(["fetch", "movie.ts", "--out", path(&out)])
                .args(["--tracker", &a_addr])
                .args(["--bind", &dl.sock(0).to_string()]),
        );
        let status = fetch.wait(Duration::from_secs(60));
        let log = fetch.stderr();
        eprintln!("fetch:\n{log}");
        let mut failures = Vec::new();
        if !status.is_some_and(|s| s.success()) {
            failures.push(format!("the fetch ended badly: {status:?}"));
        }
        if std::fs::read(&out).ok().as_deref() != Some(&original[..]) {
            failures.push("the download differs".into());
        }
        if sources(&log).is_empty() {
            failures.push("no bytes from the holder".into());
        }
        for p in [&mut holder, &mut b, &mut a] {
            if let Err(e) = p.stop() {
                failures.push(e);
            }
        }
        drop(lab);
        let _ = std::fs::remove_dir_all(&d);
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    });
}
