//! The `vod` program on loopback, as processes: a tracker, two `vod share`
//! of one media file (same key file), a `vod list`, and a `vod fetch
//! --stdout` whose file and stdout are both byte-identical to the
//! original; `client --file` playing it over HTTP (whole, a byte range,
//! from a time) while it downloads; a seeder that outlives a tracker
//! restart and registers again; clear errors for an unknown name, a missing file and an
//! unreachable tracker.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use libnet_tests::apps::{build_apps, test_media, Proc};
use libnet_tests::netlab::output_within;

/// Ports from here: tracker TCP, UDP, UDP alt; base + 9 has no tracker.
const BASE: u16 = 17_400;

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("p2p-live-vod-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// `GET path` from `addr` (with a `Range` header if given): the status
/// line and the body (read to the end: the server closes).
fn http_get(addr: &str, path: &str, range: Option<&str>) -> (String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).expect("connect to the HTTP output");
    c.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let range = range.map_or(String::new(), |r| format!("Range: {r}\r\n"));
    write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n{range}\r\n").expect("request");
    let mut all = Vec::new();
    c.read_to_end(&mut all).expect("response");
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&all[..end]).into_owned();
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, all[end + 4..].to_vec())
}

/// Runs `vod ARGS` to its end (within 60 s).
fn vod(bins: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(bins.join("vod"));
    cmd.args(args);
    output_within(&mut cmd, None, Duration::from_secs(60)).expect("vod runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn share_list_fetch_and_errors() {
    let d = dir();
    let movie = d.join("movie.ts");
    // ~12 s at 4 Mbit/s: ~6 MB.
    if !test_media(&movie, 12, 4) {
        return;
    }
    let original = std::fs::read(&movie).expect("media");
    assert!(original.len() > 4_000_000, "{} bytes", original.len());
    let bins = build_apps(&["tracker", "vod", "client"]);
    let start_tracker = || {
        let t = Proc::start(
            "tracker",
            Command::new(bins.join("tracker"))
                .args(["--tcp", &addr(BASE)])
                .args(["--udp", &addr(BASE + 1)])
                .args(["--udp-alt", &addr(BASE + 2)])
                .args(["--metrics", "off"]),
        );
        t.wait_line("tracker ", Duration::from_secs(10));
        t
    };
    let mut tracker = start_tracker();
    let (t, tu) = (addr(BASE), addr(BASE + 1));
    let net = ["--tracker", t.as_str(), "--tracker-udp", tu.as_str()];
    let key = d.join("publisher.key");
    let key = key.to_str().expect("utf-8 path");
    let movie_s = movie.to_str().expect("utf-8 path");

    // Two holders of the same file, signed with the same key (the first
    // creates it).
    let mut shares = Vec::new();
    for n in 0..2 {
        let p = Proc::start(
            &format!("share{n}"),
            Command::new(bins.join("vod"))
                .args(["share", movie_s, "--key-file", key])
                .args(net),
        );
        let line = p.wait_line("shared movie.ts", Duration::from_secs(30));
        assert!(
            line.contains(&format!("({} bytes", original.len())),
            "{line}"
        );
        assert!(line.contains("publisher "), "{line}");
        shares.push(p);
    }

    let list = vod(&bins, &["list", "--tracker", &t]);
    let listed = text(&list.stdout);
    assert!(list.status.success(), "vod list: {}", text(&list.stderr));
    let row = listed
        .lines()
        .find(|l| l.starts_with("movie.ts "))
        .unwrap_or_else(|| panic!("vod list shows no movie.ts:\n{listed}"));
    let words: Vec<&str> = row.split_whitespace().collect();
    let holders: u32 = words
        .windows(2)
        .find(|w| w[1] == "holders")
        .and_then(|w| w[0].parse().ok())
        .unwrap_or_else(|| panic!("no holder count in {row:?}"));
    assert!(holders >= 2, "{row}");

    // The download, with the bytes streamed to stdout (a pipe) meanwhile.
    let got = d.join("got.ts");
    let fetched = vod(
        &bins,
        &[
            &["fetch", "movie.ts", "--out", got.to_str().expect("utf-8")][..],
            &net,
            &["--stdout"],
        ]
        .concat(),
    );
    let log = text(&fetched.stderr);
    eprintln!("vod fetch:\n{log}");
    assert!(fetched.status.success(), "vod fetch failed:\n{log}");
    assert!(log.contains("fetched movie.ts"), "{log}");
    assert!(
        std::fs::read(&got).expect("the fetched file") == original,
        "the fetched file differs"
    );
    assert_eq!(fetched.stdout.len(), original.len(), "stdout length");
    assert!(fetched.stdout == original, "the stdout copy differs");

    // A downloader that seeds: once the sharers are gone it is the only
    // holder, and a resumed download (half of the file already in
    // `.part`) completes from it.
    let seeded = d.join("seeded.ts");
    let mut seeder = Proc::start(
        "seeder",
        Command::new(bins.join("vod"))
            .args(["fetch", "movie.ts", "--seed", "--out"])
            .arg(&seeded)
            .args(net),
    );
    seeder.wait_line("seeding movie.ts", Duration::from_secs(30));
    let list = text(&vod(&bins, &["list", "--tracker", &t]).stdout);
    assert!(list.contains("3 holders (3 complete)"), "{list}");
    for mut s in shares {
        s.stop().expect("a clean stop");
        assert!(s.stderr().contains("stopping on SIGINT"), "{}", s.stderr());
    }
    // The viewer program fetches files too, and plays them over HTTP:
    // whole, a byte range and from a time.
    let viewed = d.join("viewed.ts");
    let web = addr(BASE + 5);
    let mut viewer = Proc::start(
        "client --file",
        Command::new(bins.join("client"))
            .args([
                "--file",
                "movie.ts",
                "--out",
                viewed.to_str().expect("utf-8"),
            ])
            .args(["--http", &web])
            .args(net),
    );
    viewer.wait_line("playing at", Duration::from_secs(20));
    let (status, body) = http_get(&web, "/movie.ts", None);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(body == original, "the HTTP copy differs");
    let (status, body) = http_get(&web, "/movie.ts", Some("bytes=1000-1999"));
    assert!(status.starts_with("HTTP/1.1 206"), "{status}");
    assert!(body == original[1000..2000], "the range differs");
    let (status, body) = http_get(&web, "/movie.ts?t=5", None);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(
        !body.is_empty() && body.len() < original.len() && original.ends_with(&body),
        "?t=5 is the file from a point on ({} bytes)",
        body.len()
    );
    viewer.wait_line("fetched movie.ts", Duration::from_secs(30));
    viewer.stop().expect("a clean stop");
    assert!(std::fs::read(&viewed).expect("the viewed file") == original);

    let list = text(&vod(&bins, &["list", "--tracker", &t]).stdout);
    assert!(list.contains("1 holders (1 complete)"), "{list}");
    let resumed = d.join("resumed.ts");
    std::fs::write(d.join("resumed.ts.part"), &original[..original.len() / 2]).expect("part");
    let again = vod(
        &bins,
        &[
            &[
                "fetch",
                "movie.ts",
                "--out",
                resumed.to_str().expect("utf-8"),
            ][..],
            &net,
        ]
        .concat(),
    );
    let log = text(&again.stderr);
    assert!(again.status.success(), "resumed fetch failed:\n{log}");
    assert!(!log.contains(" 0 resumed pieces"), "{log}");
    assert!(
        std::fs::read(&resumed).expect("the resumed file") == original,
        "the resumed file differs"
    );
    assert!(std::fs::read(&seeded).expect("the seeded file") == original);

    // The tracker dies and comes back: the seeder keeps serving, registers
    // again and is listed again (its heartbeat notices within 10 s).
    tracker.kill();
    // Kept until the end (killed when dropped).
    let _tracker = start_tracker();
    seeder.wait_line("back with the tracker", Duration::from_secs(30));
    let list = text(&vod(&bins, &["list", "--tracker", &t]).stdout);
    assert!(list.contains("1 holders (1 complete)"), "{list}");

    seeder.stop().expect("a clean stop");

    // Clear errors.
    let unknown = vod(
        &bins,
        &[
            &["fetch", "no-such-film.ts", "--out", "unused.ts"][..],
            &net,
        ]
        .concat(),
    );
    assert_eq!(unknown.status.code(), Some(1));
    let e = text(&unknown.stderr);
    assert!(
        e.contains("vod: error: no file named \"no-such-film.ts\""),
        "{e}"
    );

    let missing = vod(&bins, &[&["share", "/nonexistent/x.ts"][..], &net].concat());
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing.stderr).contains("file not found"),
        "{}",
        text(&missing.stderr)
    );

    let away = vod(&bins, &["list", "--tracker", &addr(BASE + 9)]);
    assert_eq!(away.status.code(), Some(1));
    assert!(
        text(&away.stderr).contains("cannot reach the tracker"),
        "{}",
        text(&away.stderr)
    );

    let _ = std::fs::remove_dir_all(&d);
}

/// Bad settings stop `vod` at once with an error naming them: a
/// `LIBNET_SPIN_US` that is not a number of microseconds, a `--bind` port
/// in use (before the file is read), a flag `list` does not take.
#[test]
fn bad_settings_are_refused_clearly() {
    let bins = build_apps(&["vod"]);
    let run = |args: &[&str], spin: &str| {
        let mut cmd = Command::new(bins.join("vod"));
        cmd.args(args).env(libnet::runtime::SPIN_ENV, spin);
        output_within(&mut cmd, None, Duration::from_secs(60)).expect("vod runs")
    };
    let list = ["list", "--tracker", &addr(BASE + 9)];
    let bad = run(&list, "fast");
    assert_eq!(bad.status.code(), Some(1));
    let e = text(&bad.stderr);
    assert!(
        e.contains("LIBNET_SPIN_US=fast: expected microseconds"),
        "{e}"
    );
    // A good value gets as far as the tracker (none listens there).
    let off = run(&list, "0");
    let e = text(&off.stderr);
    assert!(!e.contains("LIBNET_SPIN_US"), "{e}");
    assert!(e.contains("vod: error: cannot reach the tracker"), "{e}");

    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("a port to take");
    let port = taken.local_addr().expect("addr").to_string();
    // Not `dir()`: that one belongs to the test running beside this one.
    let d = std::env::temp_dir().join(format!("p2p-live-vod-flags-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    let file = d.join("some.bin");
    std::fs::write(&file, vec![7u8; 100_000]).expect("file");
    let file = file.to_string_lossy().into_owned();
    let share = run(
        &[
            "share",
            &file,
            "--bind",
            &port,
            "--tracker",
            &addr(BASE + 9),
        ],
        "30",
    );
    assert_eq!(share.status.code(), Some(1));
    let e = text(&share.stderr);
    assert!(e.contains(&format!("cannot bind {port} (--bind)")), "{e}");

    let udp_flag = run(&["list", "--tracker-udp", "127.0.0.1:3478"], "30");
    assert_eq!(udp_flag.status.code(), Some(2));
    drop(std::fs::remove_dir_all(&d));
}
