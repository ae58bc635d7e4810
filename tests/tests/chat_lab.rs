//! The `chat` and `tracker` programs (package `p2p-apps`) across real
//! (emulated) NATs: the tracker, with its relay, on a public host; alice
//! behind a port-restricted NAT, bob behind a full-cone NAT, carol behind a
//! symmetric NAT. Each chat runs as a process inside its host's namespace,
//! fed a script on stdin; the test checks what each one printed.
//!
//! alice punches bob (direct) and carol (symmetric against port-restricted:
//! relayed), messages go both ways, and the tracker's user list shows who
//! punched whom.
//!
//! The binaries belong to another package, so the test builds them first
//! (`cargo build -p p2p-apps --bins`, same profile and target directory as
//! this test) and runs them from there.
//!
//! Needs root, iproute2 and nftables; without them it prints `SKIPPED` and
//! passes, unless `CI` or `LIBNET_LAB` is set (then it fails).

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddrV4;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use libnet_tests::bounded;
use libnet_tests::netlab::{output_within, Host, Lab, NatKind};

/// How long one chat process may run before it is killed.
const CHAT_LIMIT: Duration = Duration::from_secs(60);
/// A process that is killed (and reaped) when this guard goes, whatever
/// happens to the test.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The tracker process, its stdout lines as they come, its stderr at exit.
struct TrackerProc {
    guard: Guard,
    lines: mpsc::Receiver<String>,
    stderr: thread::JoinHandle<String>,
}

fn start_tracker(host: &Host, bins: &Path, relay: SocketAddrV4) -> TrackerProc {
    let mut child = host
        .command(bins.join("tracker"))
        .args(["--tcp", &host.sock(7000).to_string()])
        .args(["--udp", &host.sock(3478).to_string()])
        .args(["--udp-alt", &host.sock(3479).to_string()])
        .args(["--relay", &relay.to_string()])
        .args(["--metrics", "off"])
        .arg("--verbose")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the tracker starts");
    let stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let guard = Guard(child);
    let (tx, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    TrackerProc {
        guard,
        lines,
        stderr,
    }
}

impl TrackerProc {
    /// Stops it with SIGTERM (as a user would) and returns its stdout
    /// lines after the first, its stderr and whether it exited cleanly.
    fn stop(mut self) -> (Vec<String>, String, bool) {
        let pid = self.guard.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        let clean = loop {
            match self.guard.0.try_wait() {
                Ok(Some(status)) => break status.success(),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => break false, // the guard kills it
            }
        };
        drop(self.guard);
        let lines = self.lines.iter().collect();
        let stderr = self.stderr.join().unwrap_or_default();
        (lines, stderr, clean)
    }
}

/// Runs a chat in `host` with `script` on stdin, in the background.
fn chat(
    host: &Host,
    bins: &Path,
    tracker: &Host,
    relay: SocketAddrV4,
    script: &str,
) -> thread::JoinHandle<std::io::Result<Output>> {
    let mut cmd = host.command(bins.join("chat"));
    cmd.args(["--tracker", &tracker.sock(7000).to_string()])
        .args(["--tracker-udp", &tracker.sock(3478).to_string()])
        .args(["--tracker-udp-alt", &tracker.sock(3479).to_string()])
        .args(["--relay", &relay.to_string()])
        .args(["--bind", &host.sock(0).to_string()]);
    let script = script.as_bytes().to_vec();
    thread::spawn(move || output_within(&mut cmd, Some(&script), CHAT_LIMIT))
}

/// The output of a finished chat, checked for a clean exit.
fn finished(who: &str, r: thread::Result<std::io::Result<Output>>) -> String {
    let out = r
        .unwrap_or_else(|_| panic!("{who}: runner thread panicked"))
        .unwrap_or_else(|e| panic!("{who}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("---- {who} stdout\n{stdout}---- {who} stderr\n{stderr}");
    assert!(
        out.status.success(),
        "{who} exited with {}: {stderr}",
        out.status
    );
    assert!(!stdout.contains("panicked") && !stderr.contains("panicked"));
    stdout
}

/// The line of `out` that starts with `start` (the last one).
fn line_starting<'a>(out: &'a str, start: &str) -> Option<&'a str> {
    out.lines().rev().find(|l| l.starts_with(start))
}

fn expect_line(who: &str, out: &str, line: &str) {
    assert!(
        out.lines().any(|l| l == line),
        "{who} should have printed {line:?}; it printed:\n{out}"
    );
}

const ALICE: &str = "\
login alice
# until bob and carol are logged in too
sleep 4000
list
whoami
punch bob
punch carol
msg bob hello bob, this is alice
msg carol hello carol, this is alice
sleep 1000
# bob and carol are still logged in: the list names whom alice punched
list
# their messages come meanwhile
sleep 7000
";

const BOB: &str = "\
login bob
sleep 4000
list
whoami
# alice punches through meanwhile
sleep 10000
msg alice hi alice, bob here
sleep 3000
";

const CAROL: &str = "\
login carol
sleep 4000
list
whoami
sleep 10000
msg alice hi alice, carol here
sleep 3000
";

#[test]
fn three_users_chat_through_port_restricted_full_cone_and_symmetric_nats() {
    bounded(Duration::from_secs(720), || {
        let Some(mut lab) = Lab::require("chat") else {
            return;
        };
        let bins = libnet_tests::apps::build_apps(&["chat", "tracker"]);
        let th = lab.public_host("tracker").expect("tracker host");
        let na = lab.nat("nat_a", NatKind::PortRestricted).expect("nat");
        let nb = lab.nat("nat_b", NatKind::FullCone).expect("nat");
        let nc = lab.nat("nat_c", NatKind::Symmetric).expect("nat");
        let alice = lab.host_behind(&na, "alice").expect("host");
        let bob = lab.host_behind(&nb, "bob").expect("host");
        let carol = lab.host_behind(&nc, "carol").expect("host");
        let relay = th.sock(9000);

        let tracker = start_tracker(&th, &bins, relay);
        let started = tracker
            .lines
            .recv_timeout(Duration::from_secs(10))
            .expect("the tracker prints its start line");
        eprintln!("---- tracker\n{started}");
        assert!(
            started.contains(&format!("tcp {}", th.sock(7000)))
                && started.contains(&format!("relay {relay}")),
            "{started}"
        );

        let runs = [
            ("alice", chat(&alice, &bins, &th, relay, ALICE)),
            ("bob", chat(&bob, &bins, &th, relay, BOB)),
            ("carol", chat(&carol, &bins, &th, relay, CAROL)),
        ];
        let [a, b, c] = runs.map(|(who, h)| finished(who, h.join()));
        let (rest, tracker_err, clean) = tracker.stop();
        eprintln!("---- tracker\n{}", rest.join("\n"));
        assert!(clean, "the tracker exits 0 on SIGTERM: {tracker_err}");
        assert!(
            rest.iter().any(|l| l.contains("stopping on SIGTERM")),
            "{rest:?}"
        );
        // --verbose logs the frames it receives.
        assert!(tracker_err.contains("ChatLogin"), "{tracker_err}");

        for (who, out) in [("alice", &a), ("bob", &b), ("carol", &c)] {
            assert!(!out.contains("error:"), "{who} reported an error:\n{out}");
            assert!(
                line_starting(out, &format!("logged in as {who} (")).is_some(),
                "{who} did not log in:\n{out}"
            );
            for name in ["alice", "bob", "carol"] {
                assert!(
                    line_starting(out, &format!("{name} node=")).is_some(),
                    "{who}'s list lacks {name}:\n{out}"
                );
            }
        }

        // What each learnt about its NAT.
        let whoami = |out: &str| line_starting(out, "public=").unwrap_or("").to_string();
        assert!(
            whoami(&a).starts_with(&format!("public={}:", na.public_addr))
                && whoami(&a).contains(" nat=port-restricted "),
            "{}",
            whoami(&a)
        );
        assert!(
            whoami(&c).starts_with(&format!("public={}:", nc.public_addr))
                && whoami(&c).contains(" nat=symmetric "),
            "{}",
            whoami(&c)
        );
        // One tracker IP cannot tell full cone from address-restricted.
        assert!(
            whoami(&b).starts_with(&format!("public={}:", nb.public_addr))
                && (whoami(&b).contains(" nat=full-cone ")
                    || whoami(&b).contains(" nat=address-restricted ")),
            "{}",
            whoami(&b)
        );

        // The punches.
        assert!(
            line_starting(&a, "punched bob direct ").is_some(),
            "alice -> bob should be direct:\n{a}"
        );
        expect_line("alice", &a, &format!("punched carol relayed via {relay}"));
        expect_line("bob", &b, "connected alice direct");
        expect_line("carol", &c, "connected alice relayed");

        // The messages, both ways.
        expect_line("bob", &b, "[alice] hello bob, this is alice");
        expect_line("carol", &c, "[alice] hello carol, this is alice");
        expect_line("alice", &a, "[bob] hi alice, bob here");
        expect_line("alice", &a, "[carol] hi alice, carol here");

        // The tracker's list, as alice saw it after punching: she punched
        // bob (and carol, through the relay).
        let mine = line_starting(&a, "alice node=").expect("alice in her list");
        assert!(mine.contains("punched=[bob, carol]"), "{mine}");
    });
}
