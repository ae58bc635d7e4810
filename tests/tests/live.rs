//! The live broadcast on loopback, as processes: tracker, edge, source on
//! the test pattern, viewers. Checks what a user sees: recordings that
//! decode, a swarm that shares, a lying peer dropped without a tampered
//! byte reaching any output, viewers that keep playing while others come
//! and go, clear errors for bad input, and garbage on every port shrugged
//! off. (Across emulated NATs: `live_lab.rs`.)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use libnet_tests::apps::{build_apps, json_number, Proc};
use libnet_tests::bounded;
use p2p_apps::media::probe;

const KEY: &str = "live-test-key";
const BINS: [&str; 4] = ["tracker", "edge", "source", "client"];

/// The loopback system of one test: ports from `base`.
struct System {
    bins: PathBuf,
    base: u16,
    tracker: Proc,
    edge: Proc,
}

impl System {
    fn start(bins: &Path, base: u16) -> System {
        let tracker = Proc::start(
            "tracker",
            Command::new(bins.join("tracker"))
                .args(["--tcp", &addr(base)])
                .args(["--udp", &addr(base + 1)])
                .args(["--udp-alt", &addr(base + 2)])
                .args(["--metrics", &addr(base + 3)])
                .args(["--edge-key", KEY]),
        );
        tracker.wait_line("tracker ", Duration::from_secs(10));
        let edge = Proc::start(
            "edge",
            Command::new(bins.join("edge"))
                .args(["--tracker", &addr(base)])
                .args(["--listen", &addr(base + 10)])
                .args(["--metrics", &addr(base + 11)])
                .args(["--edge-key", KEY]),
        );
        edge.wait_line("listening on", Duration::from_secs(10));
        System {
            bins: bins.to_path_buf(),
            base,
            tracker,
            edge,
        }
    }

    fn source(&self, extra: &[&str]) -> (Proc, u32) {
        let p = Proc::start(
            "source",
            Command::new(self.bins.join("source"))
                .args(["--tracker", &addr(self.base)])
                .args(["--edge-key", KEY])
                .args(["--size", "320x180", "--video-kbps", "400"])
                .args(extra),
        );
        let line = p.wait_line("room=", Duration::from_secs(20));
        let room = line
            .trim()
            .strip_prefix("room=")
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("bad room line {line:?}"));
        (p, room)
    }

    fn client(&self, name: &str, room: u32, extra: &[&str]) -> Proc {
        Proc::start(
            name,
            Command::new(self.bins.join("client"))
                .args(["--tracker", &addr(self.base)])
                .args(["--tracker-udp", &addr(self.base + 1)])
                .args(["--room", &room.to_string()])
                .args(["--bind", "127.0.0.1:0"])
                .args(extra),
        )
    }
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("p2p-live-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

/// GET `path` from an HTTP server; the body.
fn http_get(at: &str, path: &str) -> String {
    let mut s = TcpStream::connect(at).expect("http connects");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
    let mut r = String::new();
    let _ = s.read_to_string(&mut r);
    r
}

/// The probe's report of a recording, with its decode checked.
fn check_recording(who: &str, path: &Path, secs: f64) -> probe::Report {
    let r = probe::check(path)
        .unwrap_or_else(|e| panic!("{who}: {} does not open: {e}", path.display()));
    eprintln!("{who}: {r:?}");
    assert_eq!(r.decode_errors, 0, "{who}: decode errors");
    assert!(
        r.video_in_order && r.audio_in_order,
        "{who}: frames out of order"
    );
    // 25 fps; one GOP (1 s) of slack for the join, one for the end.
    let v = r.video_frames as f64;
    assert!(
        v >= (secs - 3.0) * 25.0 && v <= (secs + 2.0) * 25.0,
        "{who}: {v} video frames in ~{secs} s"
    );
    // 48 kHz AAC: 46.9 frames a second.
    let a = r.audio_frames as f64;
    assert!(
        a >= (secs - 3.0) * 46.0 && a <= (secs + 2.0) * 47.5,
        "{who}: {a} audio frames in ~{secs} s"
    );
    r
}

#[test]
fn viewers_share_the_stream_drop_a_liar_and_survive_churn() {
    bounded(Duration::from_secs(900), || {
        let bins = build_apps(&BINS);
        let mut sys = System::start(&bins, 17_000);
        let (mut source, room) = sys.source(&["--duration", "60"]);
        thread::sleep(Duration::from_secs(2));
        const SECS: u64 = 16;
        let mut viewers = Vec::new();
        for i in 0..4 {
            let out = tmp(&format!("v{i}.ts"));
            let stats = tmp(&format!("v{i}.json"));
            let mut extra = vec![
                "--duration".to_string(),
                SECS.to_string(),
                "--out".into(),
                out.display().to_string(),
                "--stats-file".into(),
                stats.display().to_string(),
                "--quiet".into(),
            ];
            if i == 3 {
                extra.push("--evil-tamper".into());
            }
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            viewers.push((sys.client(&format!("viewer {i}"), room, &extra), out, stats));
            thread::sleep(Duration::from_millis(500));
        }
        // Churn: short-lived viewers come, and vanish (SIGKILL).
        for i in 0..4 {
            let mut c = sys.client(&format!("churn {i}"), room, &["--quiet"]);
            thread::sleep(Duration::from_secs(3));
            c.kill();
        }
        let mut from_peers = 0.0;
        let mut total = 0.0;
        let mut bad = 0.0;
        for (i, (v, out, stats)) in viewers.iter_mut().enumerate() {
            let status = v.wait(Duration::from_secs(SECS + 30));
            assert!(
                status.is_some_and(|s| s.success()),
                "{} ended badly ({status:?}):\n{}",
                v.name,
                v.stderr()
            );
            let json = std::fs::read_to_string(&stats).expect("stats file");
            eprintln!("{}: {json}", v.name);
            let n = |k: &str| json_number(&json, k).unwrap_or_else(|| panic!("{k} in {json}"));
            if i < 3 {
                from_peers += n("bytes_from_peers");
                total += n("bytes_from_peers") + n("bytes_from_edge");
                bad += n("bad_fragments");
                // Peers vanish around it: it never waits longer than its
                // buffer (the default --delay-ms, 1500).
                assert!(
                    n("stall_ms") <= 1500.0,
                    "{}: stalled {} ms",
                    v.name,
                    n("stall_ms")
                );
                assert!(
                    n("first_frame_ms") <= 3000.0,
                    "{}: first frame late",
                    v.name
                );
            }
            check_recording(&v.name, out, SECS as f64);
        }
        eprintln!("from peers: {from_peers} of {total} bytes; bad fragments seen: {bad}");
        assert!(total > 0.0);
        assert!(
            from_peers / total > 0.3,
            "peers served {from_peers} of {total}"
        );
        assert!(bad >= 1.0, "nobody caught the tampering peer");

        let metrics = http_get(&addr(sys.base + 11), "/metrics");
        assert!(
            metrics.contains("p2plive_edge_bytes_out_total"),
            "{metrics}"
        );
        let tmetrics = http_get(&addr(sys.base + 3), "/metrics");
        assert!(tmetrics.contains("p2plive_tracker_nodes"), "{tmetrics}");

        for p in [&mut source, &mut sys.edge, &mut sys.tracker] {
            p.stop().unwrap_or_else(|e| panic!("{e}"));
        }
    });
}

#[test]
fn bad_input_gets_clear_errors_and_garbage_is_shrugged_off() {
    bounded(Duration::from_secs(600), || {
        let bins = build_apps(&BINS);
        let run = |bin: &str, args: &[&str]| {
            let mut p = Proc::start(bin, Command::new(bins.join(bin)).args(args));
            let s = p.wait(Duration::from_secs(30));
            assert!(
                s.is_some_and(|s| !s.success()),
                "{bin} {args:?} should fail"
            );
            p.stderr()
        };
        // No tracker at all.
        let e = run("client", &["--tracker", "127.0.0.1:1", "--room", "1000"]);
        assert!(e.contains("cannot reach the tracker"), "{e}");
        let e = run("source", &["--input", "/nonexistent/video.mp4"]);
        assert!(e.contains("/nonexistent/video.mp4"), "{e}");
        let not_media = tmp("not-media.mp4");
        std::fs::write(&not_media, b"this is not a video file at all\n").expect("write");
        let e = run("source", &["--input", not_media.to_str().expect("utf-8")]);
        assert!(e.contains("error"), "{e}");
        let e = run("client", &["--room", "x"]);
        assert!(e.contains("--room"), "{e}");

        let mut sys = System::start(&bins, 17_100);
        let e = run(
            "client",
            &[
                "--tracker",
                &addr(sys.base),
                "--tracker-udp",
                &addr(sys.base + 1),
                "--room",
                "4242",
            ],
        );
        assert!(e.contains("unknown room 4242"), "{e}");
        let e = run(
            "source",
            &["--tracker", &addr(sys.base), "--edge-key", "wrong"],
        );
        assert!(e.contains("--edge-key"), "{e}");
        // The edge's port is taken.
        let e = run(
            "edge",
            &[
                "--tracker",
                &addr(sys.base),
                "--edge-key",
                KEY,
                "--listen",
                &addr(sys.base + 10),
                "--metrics",
                "off",
            ],
        );
        assert!(e.contains("cannot listen"), "{e}");

        // Garbage on every port, then the system still works.
        let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..500usize {
            let len = 1 + i % 1400;
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            for port in [sys.base + 1, sys.base + 2, sys.base + 10] {
                let to: SocketAddr = addr(port).parse().expect("addr");
                let _ = udp.send_to(&junk, to);
            }
            if i % 50 == 0 {
                for port in [sys.base, sys.base + 3, sys.base + 11] {
                    if let Ok(mut s) = TcpStream::connect(addr(port)) {
                        let _ = s.write_all(&junk);
                    }
                }
            }
        }
        let (mut source, room) = sys.source(&["--duration", "30"]);
        thread::sleep(Duration::from_secs(1));
        let out = tmp("after-garbage.ts");
        let mut v = sys.client(
            "viewer",
            room,
            &[
                "--duration",
                "6",
                "--out",
                out.to_str().expect("utf-8"),
                "--quiet",
            ],
        );
        let s = v.wait(Duration::from_secs(40));
        assert!(
            s.is_some_and(|s| s.success()),
            "viewer: {s:?}\n{}",
            v.stderr()
        );
        check_recording("viewer", &out, 6.0);
        assert!(sys.edge.running() && sys.tracker.running());
        for p in [&mut source, &mut sys.edge, &mut sys.tracker] {
            p.stop().unwrap_or_else(|e| panic!("{e}"));
        }
    });
}

/// Whether the `ffmpeg` command-line tool is here; without it, a loud
/// SKIPPED (a failure under CI, which installs it).
fn have_ffmpeg(test: &str) -> bool {
    let ok = Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            !libnet_tests::netlab::must_run(),
            "{test}: the ffmpeg tool is missing (CI or LIBNET_LAB set)"
        );
        eprintln!("\n*** SKIPPED: {test}: no ffmpeg command (apt-get install ffmpeg)\n");
    }
    ok
}

#[test]
fn an_independent_player_decodes_the_http_and_stdout_outputs() {
    bounded(Duration::from_secs(600), || {
        if !have_ffmpeg("players") {
            return;
        }
        let bins = build_apps(&BINS);
        let mut sys = System::start(&bins, 17_200);
        let (mut source, room) = sys.source(&["--duration", "60"]);
        thread::sleep(Duration::from_secs(1));
        let http = addr(sys.base + 20);
        let mut viewer = sys.client("http viewer", room, &["--http", &http, "--quiet"]);
        viewer.wait_line("playing at", Duration::from_secs(20));
        // FFmpeg as the player: 4 s of the live stream, decoded.
        let player = Command::new("ffmpeg")
            .args(["-v", "error", "-rw_timeout", "10000000", "-i"])
            .arg(format!("http://{http}/live.ts"))
            .args(["-t", "4", "-f", "null", "-"])
            .output()
            .expect("ffmpeg runs");
        let err = String::from_utf8_lossy(&player.stderr);
        assert!(
            player.status.success() && err.trim().is_empty(),
            "ffmpeg on http: {err}"
        );

        // ffplay as a player (no display, a dummy sound card) for 4 s: a
        // live stream has no end, so it is stopped; it must not complain.
        let ffplay = Command::new("ffplay")
            .env("SDL_AUDIODRIVER", "dummy")
            .args(["-v", "error", "-nodisp"])
            .arg(format!("http://{http}/live.ts"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn();
        match ffplay {
            Ok(mut child) => {
                thread::sleep(Duration::from_secs(4));
                let alive = matches!(child.try_wait(), Ok(None));
                let _ = child.kill();
                let out = child.wait_with_output().expect("ffplay output");
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(alive, "ffplay stopped early: {err}");
                assert!(err.trim().is_empty(), "ffplay on http: {err}");
            }
            Err(e) => eprintln!("*** ffplay not run: {e}"),
        }

        // The same through a pipe: client --stdout | ffmpeg -i -.
        let client = bins.join("client");
        let pipeline = format!(
            "set -o pipefail; '{}' --tracker {} --tracker-udp {} --room {room} --bind 127.0.0.1:0 \
             --stdout --quiet --duration 6 | ffmpeg -v error -i - -f null -",
            client.display(),
            addr(sys.base),
            addr(sys.base + 1)
        );
        let piped = Command::new("bash")
            .args(["-c", &pipeline])
            .output()
            .expect("bash runs");
        let err = String::from_utf8_lossy(&piped.stderr);
        assert!(
            piped.status.success() && !err.contains("rror"),
            "client | ffmpeg: {err}"
        );

        for p in [&mut viewer, &mut source, &mut sys.edge, &mut sys.tracker] {
            p.stop().unwrap_or_else(|e| panic!("{e}"));
        }
    });
}
