//! Running the programs of `p2p-apps` (tracker, edge, source, client,
//! chat) from tests: building them in the test's own profile and target
//! directory, and processes that are killed and reaped whatever happens.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::netlab::{output_within, Host};

/// Building the binaries (a first build compiles FFmpeg's bindings, clap
/// and friends).
const BUILD_LIMIT: Duration = Duration::from_secs(900);

/// Builds `p2p-apps`'s binaries in this test's profile and target
/// directory and returns the directory that holds them; checks that each
/// of `bins` is there.
pub fn build_apps(bins: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in <target>/<profile>/deps")
        .to_path_buf();
    let target_dir = profile_dir.parent().expect("a target directory");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_string(),
        Some(p) => p.to_string(),
        None => panic!("cannot tell the profile from {}", profile_dir.display()),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", "p2p-apps", "--bins", "--profile"])
        .arg(&profile)
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir);
    let out = output_within(&mut cmd, None, BUILD_LIMIT).expect("cargo build runs");
    assert!(
        out.status.success(),
        "cargo build -p p2p-apps failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for bin in bins {
        let p = profile_dir.join(bin);
        assert!(p.is_file(), "{} was not built", p.display());
    }
    profile_dir
}

/// A running program whose stdout and stderr are collected as they come;
/// killed and reaped when dropped.
pub struct Proc {
    /// A name for messages.
    pub name: String,
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    lines: mpsc::Receiver<String>,
    readers: Vec<thread::JoinHandle<()>>,
}

impl Proc {
    /// Starts `cmd` with stdin closed and both outputs collected.
    pub fn start(name: &str, cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        let (tx, lines) = mpsc::channel();
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        let out = child.stdout.take().expect("piped");
        let err = child.stderr.take().expect("piped");
        for (pipe, buf, tx) in [
            (
                Box::new(out) as Box<dyn Read + Send>,
                stdout.clone(),
                tx.clone(),
            ),
            (Box::new(err), stderr.clone(), tx),
        ] {
            readers.push(thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Ok(mut b) = buf.lock() {
                        b.push_str(&line);
                        b.push('\n');
                    }
                    let _ = tx.send(line);
                }
            }));
        }
        Proc {
            name: name.to_string(),
            child,
            stdout,
            stderr,
            lines,
            readers,
        }
    }

    /// Waits up to `limit` for an output line (stdout or stderr)
    /// containing `text`, and returns it.
    pub fn wait_line(&self, text: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(text) => return l,
                Ok(_) => {}
                Err(_) => panic!(
                    "{} did not print {text:?} within {limit:?}; stdout:\n{}\nstderr:\n{}",
                    self.name,
                    self.stdout(),
                    self.stderr()
                ),
            }
        }
    }

    /// What it printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// What it printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `limit` for it to exit by itself; `None` if it did not
    /// (it is then killed).
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => {
                    self.join_readers();
                    return Some(s);
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    self.join_readers();
                    return None;
                }
            }
        }
    }

    /// Sends SIGINT (as Ctrl-C would) and waits up to `limit` for the exit.
    pub fn interrupt(&mut self, limit: Duration) -> Option<ExitStatus> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        self.wait(limit)
    }

    /// Sends SIGINT and expects a clean exit (status 0) within 10 s; the
    /// error says how it ended and what it printed on stderr.
    pub fn stop(&mut self) -> Result<(), String> {
        match self.interrupt(Duration::from_secs(10)) {
            Some(s) if s.success() => Ok(()),
            s => Err(format!("{} on SIGINT: {s:?}\n{}", self.name, self.stderr())),
        }
    }

    /// Kills it at once (a peer that vanishes).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.join_readers();
    }

    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A number field of a flat JSON object as the programs print it
/// (`"name":123`); `None` if absent or not a number.
pub fn json_number(json: &str, name: &str) -> Option<f64> {
    let key = format!("\"{name}\":");
    let at = json.find(&key)? + key.len();
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

/// Makes `secs` seconds of a test pattern as MPEG-TS at `mbps` Mbit/s
/// constant rate, one key frame a second, with the ffmpeg program; `false`
/// (after saying so) when there is none, unless `netlab::must_run` (then a
/// panic).
pub fn test_media(path: &Path, secs: u32, mbps: u32) -> bool {
    let rate = format!("{mbps}M");
    let buf = format!("{}M", mbps.div_ceil(2));
    let made = Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc=size=640x360:rate=25"])
        .args(["-t", &secs.to_string(), "-c:v", "mpeg2video", "-b:v", &rate])
        .args(["-maxrate", &rate, "-minrate", &rate, "-bufsize", &buf])
        .args(["-g", "25", "-f", "mpegts"])
        .arg(path)
        .status();
    match made {
        Ok(s) if s.success() => true,
        other => {
            assert!(
                !crate::netlab::must_run(),
                "ffmpeg cannot make the test media (CI or LIBNET_LAB set): {other:?}"
            );
            eprintln!("SKIPPED: the ffmpeg program cannot make the test media ({other:?})");
            false
        }
    }
}

/// Starts `tracker` (from `bins`) on a lab host: TCP port 7000, UDP 3478
/// and 3479, no metrics, plus `extra` flags; returns once it is up.
pub fn lab_tracker(host: &Host, bins: &Path, extra: &[&str]) -> Proc {
    let p = Proc::start(
        &format!("tracker on {}", host.name),
        host.command(bins.join("tracker"))
            .args(["--tcp", &host.sock(7000).to_string()])
            .args(["--udp", &host.sock(3478).to_string()])
            .args(["--udp-alt", &host.sock(3479).to_string()])
            .args(["--metrics", "off"])
            .args(extra),
    );
    p.wait_line("tracker ", Duration::from_secs(10));
    p
}
