//! Echo throughput: libnet against tokio (multi- and current-thread), may and
//! a raw mio loop, all in the same run and under the same client.
//!
//! For each connection count and each implementation this spawns
//! `echo-server --impl NAME` as a child process on a free loopback port,
//! waits for its `listening on ADDR` line, drives it with
//! [`benches::client`] (C connections, 64-byte request/response round trips),
//! kills it, and finally prints the median round trips per second per
//! implementation and the libnet ratios.
//!
//! Environment (all optional):
//!
//! | variable            | meaning                                          | default |
//! |---------------------|--------------------------------------------------|---------|
//! | `ECHO_SECS`         | measured seconds per run (fractions allowed)     | 5       |
//! | `ECHO_WARMUP_SECS`  | warm-up seconds per run                          | 2       |
//! | `ECHO_RUNS`         | runs per implementation (impls interleaved)      | 3       |
//! | `ECHO_IMPLS`        | comma list, `name` or `name:threads`             | all     |
//! | `ECHO_CONNS`        | comma list of connection counts                  | 100,1000|
//! | `ECHO_MAY_UNPINNED` | `1`: pass `--may-unpinned` to the may server     | unset   |
//! | `ECHO_SERVER_BIN`   | use this echo-server binary, do not build one    | unset   |
//! | `ECHO_NO_BUILD`     | `1`: do not run cargo, use the binary next to us | unset   |

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use benches::client::{self, ClientConfig, ClientReport, Phase};

/// Implementations and their default thread counts, in report order.
const IMPLS: [(&str, usize); 5] = [
    ("libnet", 2),
    ("tokio-mt", 2),
    ("tokio-ct", 1),
    ("may", 2),
    ("mio", 1),
];

/// libnet is compared against each of these.
const YARDSTICKS: [&str; 4] = ["tokio-mt", "tokio-ct", "may", "mio"];

const MESSAGE_SIZE: usize = 64;
const LISTEN_TIMEOUT: Duration = Duration::from_secs(15);
const NOT_WIRED: &str = "not wired yet";

struct Settings {
    warmup: Duration,
    measure: Duration,
    runs: usize,
    impls: Vec<(String, usize)>,
    conns: Vec<usize>,
    may_unpinned: bool,
}

fn env_flag(name: &str) -> bool {
    matches!(std::env::var(name).as_deref(), Ok(v) if !v.is_empty() && v != "0")
}

fn env_secs(name: &str, default: f64) -> Result<Duration, String> {
    match std::env::var(name) {
        Err(_) => Ok(Duration::from_secs_f64(default)),
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| format!("{name}={v:?} is not a number of seconds")),
    }
}

impl Settings {
    fn from_env() -> Result<Settings, String> {
        let measure = env_secs("ECHO_SECS", 5.0)?;
        if measure.is_zero() {
            return Err("ECHO_SECS must be positive".into());
        }
        let warmup = env_secs("ECHO_WARMUP_SECS", 2.0)?;
        let runs = match std::env::var("ECHO_RUNS") {
            Err(_) => 3,
            Ok(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("ECHO_RUNS={v:?} is not a positive integer"))?,
        };
        let impls = match std::env::var("ECHO_IMPLS") {
            Err(_) => IMPLS.iter().map(|&(n, t)| (n.to_string(), t)).collect(),
            Ok(v) => {
                let mut out = Vec::new();
                for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let (name, threads) = match item.split_once(':') {
                        Some((n, t)) => (
                            n,
                            Some(
                                t.parse::<usize>()
                                    .ok()
                                    .filter(|&t| t > 0)
                                    .ok_or_else(|| format!("bad thread count in {item:?}"))?,
                            ),
                        ),
                        None => (item, None),
                    };
                    let Some(&(known, default_threads)) = IMPLS.iter().find(|(n, _)| *n == name)
                    else {
                        let names: Vec<_> = IMPLS.iter().map(|(n, _)| *n).collect();
                        return Err(format!(
                            "unknown impl {name:?} in ECHO_IMPLS (known: {})",
                            names.join(", ")
                        ));
                    };
                    out.push((known.to_string(), threads.unwrap_or(default_threads)));
                }
                if out.is_empty() {
                    return Err("ECHO_IMPLS selects nothing".into());
                }
                out
            }
        };
        let conns =
            match std::env::var("ECHO_CONNS") {
                Err(_) => vec![100, 1000],
                Ok(v) => {
                    let mut out = Vec::new();
                    for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                        out.push(item.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(
                            || format!("bad connection count {item:?} in ECHO_CONNS"),
                        )?);
                    }
                    if out.is_empty() {
                        return Err("ECHO_CONNS selects nothing".into());
                    }
                    out
                }
            };
        Ok(Settings {
            warmup,
            measure,
            runs,
            impls,
            conns,
            may_unpinned: env_flag("ECHO_MAY_UNPINNED"),
        })
    }
}

// ---------------------------------------------------------------------------
// Locating (and building) the echo-server binary
// ---------------------------------------------------------------------------

const BUILD_HINT: &str = "build it with: cargo build --release -p benches --bin echo-server";

/// The `echo-server` binary: built by this bench (unless told not to) into the
/// same target directory and profile as the bench itself, and found next to
/// it (`target/release/deps/echo-HASH` → `target/release/echo-server`).
fn server_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("ECHO_SERVER_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("ECHO_SERVER_BIN={} is not a file", p.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut profile_dir = exe
        .parent()
        .ok_or("bench executable has no parent directory")?
        .to_path_buf();
    if profile_dir.file_name().is_some_and(|n| n == "deps") {
        profile_dir.pop();
    }
    let bin = profile_dir.join(format!("echo-server{}", std::env::consts::EXE_SUFFIX));

    if !env_flag("ECHO_NO_BUILD") {
        build_server(&profile_dir)?;
    }
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!("{} not found; {BUILD_HINT}", bin.display()))
    }
}

fn build_server(profile_dir: &Path) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "--quiet", "-p", "benches", "--bin", "echo-server"])
        .arg("--manifest-path")
        .arg(&manifest);
    if let Some(target_dir) = profile_dir.parent() {
        cmd.arg("--target-dir").arg(target_dir);
    }
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("release") | None => {
            cmd.arg("--release");
        }
        Some("debug") => {}
        Some(other) => {
            cmd.args(["--profile", other]);
        }
    }
    eprintln!("building echo-server: {cmd:?}");
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run {}: {e}; {BUILD_HINT}", cargo.to_string_lossy()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "building echo-server failed ({status}); {BUILD_HINT}"
        ))
    }
}

// ---------------------------------------------------------------------------
// One run: spawn a server, load it, kill it
// ---------------------------------------------------------------------------

struct Sample {
    report: ClientReport,
    /// Server CPU time over the measured window, in cores (1.0 = one core).
    server_cores: Option<f64>,
    /// This process's (the client's) CPU time over the measured window.
    client_cores: Option<f64>,
}

enum Outcome {
    Done(Sample),
    NotWired(String),
    Failed(String),
}

struct Server {
    child: Child,
    stderr: Option<JoinHandle<String>>,
    addr: SocketAddr,
}

impl Server {
    /// Kill the server and return what it wrote to stderr.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

/// Spawn the server and wait for its `listening on` line. `Err` carries the
/// outcome to record when it never got there.
fn start_server(
    bin: &Path,
    name: &str,
    threads: usize,
    may_unpinned: bool,
) -> Result<Server, Outcome> {
    let port = free_port().map_err(|e| Outcome::Failed(format!("no free port: {e}")))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = Command::new(bin);
    cmd.args([
        "--impl",
        name,
        "--threads",
        &threads.to_string(),
        "--parent-watch",
    ])
    .arg("--addr")
    .arg(addr.to_string());
    if may_unpinned && name == "may" {
        cmd.arg("--may-unpinned");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Outcome::Failed(format!("cannot spawn {}: {e}", bin.display())))?;

    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            match line {
                Ok(l) => {
                    if tx.send(l).is_err() {
                        // Nobody listens any more; keep draining the pipe.
                        continue;
                    }
                }
                Err(_) => break,
            }
        }
    });
    let stderr_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut server = Server {
        child,
        stderr: Some(stderr_thread),
        addr,
    };

    let deadline = Instant::now() + LISTEN_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(rest) = line.strip_prefix("listening on ") {
                    if let Ok(a) = rest.trim().parse::<SocketAddr>() {
                        server.addr = a;
                    }
                    return Ok(server);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // stdout closed before the line: the server exited.
                let status = server.child.wait().ok();
                let err = server.stop();
                let err = err.trim().to_string();
                return Err(if err.contains(NOT_WIRED) {
                    Outcome::NotWired(err)
                } else {
                    Outcome::Failed(format!(
                        "server exited before listening ({}): {err}",
                        status.map_or("unknown status".into(), |s| s.to_string())
                    ))
                });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let err = server.stop();
                return Err(Outcome::Failed(format!(
                    "no 'listening on' line within {LISTEN_TIMEOUT:?}; stderr: {}",
                    err.trim()
                )));
            }
        }
    }
}

fn run_one(bin: &Path, name: &str, threads: usize, conns: usize, s: &Settings) -> Outcome {
    let server = match start_server(bin, name, threads, s.may_unpinned) {
        Ok(server) => server,
        Err(outcome) => return outcome,
    };
    let pid = server.child.id();
    let mut cfg = ClientConfig::new(server.addr, conns);
    cfg.message_size = MESSAGE_SIZE;
    cfg.warmup = s.warmup;
    cfg.measure = s.measure;

    let mut cpu_at_start = (None, None);
    let mut cpu_at_end = (None, None);
    let result = client::run_observed(&cfg, |phase| match phase {
        Phase::MeasureStart => {
            cpu_at_start = (process_cpu(Some(pid)), process_cpu(None));
        }
        Phase::MeasureEnd => {
            cpu_at_end = (process_cpu(Some(pid)), process_cpu(None));
        }
        Phase::WarmupStart => {}
    });
    let stderr = server.stop();
    match result {
        Ok(report) => {
            let secs = report.elapsed.as_secs_f64();
            let cores = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if secs > 0.0 => Some((b - a) / secs),
                _ => None,
            };
            Outcome::Done(Sample {
                server_cores: cores(cpu_at_start.0, cpu_at_end.0),
                client_cores: cores(cpu_at_start.1, cpu_at_end.1),
                report,
            })
        }
        Err(e) => {
            let stderr = stderr.trim();
            if stderr.is_empty() {
                Outcome::Failed(format!("client: {e}"))
            } else {
                Outcome::Failed(format!("client: {e}; server stderr: {stderr}"))
            }
        }
    }
}

/// A loopback port nobody is listening on right now.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// User + system CPU seconds of a process (all its threads); `None` = self.
/// Linux only (`/proc`); elsewhere the CPU columns show `-`.
fn process_cpu(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may contain spaces; fields after it are
    // plain. Counting from field 3 (state) at index 0, utime and stime are
    // fields 14 and 15, i.e. indices 11 and 12.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks <= 0 {
        return None;
    }
    Some((utime + stime) as f64 / ticks as f64)
}

// ---------------------------------------------------------------------------
// Reporting
// ---------------------------------------------------------------------------

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn thousands(v: f64) -> String {
    let digits = (v.round() as u64).to_string();
    let mut groups: Vec<&str> = digits
        .as_bytes()
        .rchunks(3)
        .map(|g| std::str::from_utf8(g).expect("ASCII digits"))
        .collect();
    groups.reverse();
    groups.join(",")
}

fn cores_cell(v: Option<f64>) -> String {
    v.map_or("-".into(), |c| format!("{c:.2}"))
}

/// Per implementation: its median round trips/s, if it produced figures.
fn print_table(conns: usize, s: &Settings, results: &BTreeMap<String, Vec<Outcome>>) {
    println!();
    println!(
        "== echo, {conns} connections, {MESSAGE_SIZE}-byte messages, {} run(s) of {:.1} s \
         (+{:.1} s warm-up) ==",
        s.runs,
        s.measure.as_secs_f64(),
        s.warmup.as_secs_f64()
    );
    println!(
        "{:<9} {:>3} {:>13} {:>25} {:>7} {:>7} {:>13}",
        "impl", "thr", "median rt/s", "min .. max rt/s", "srv cpu", "cli cpu", "per-conn min"
    );
    let mut medians: BTreeMap<&str, f64> = BTreeMap::new();
    for (name, threads) in &s.impls {
        let outcomes = results.get(name).map(Vec::as_slice).unwrap_or(&[]);
        let samples: Vec<&Sample> = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Done(s) => Some(s),
                _ => None,
            })
            .collect();
        let failures = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Failed(_)))
            .count();
        if samples.is_empty() {
            let why = outcomes
                .iter()
                .find_map(|o| match o {
                    Outcome::NotWired(m) => Some(format!("n/a ({m})")),
                    Outcome::Failed(m) => Some(format!("failed: {m}")),
                    Outcome::Done(_) => None,
                })
                .unwrap_or_else(|| "n/a (not run)".into());
            println!("{name:<9} {threads:>3} {why}");
            continue;
        }
        let mut rates: Vec<f64> = samples
            .iter()
            .map(|s| s.report.round_trips_per_sec())
            .collect();
        rates.sort_by(f64::total_cmp);
        let med = median(&rates);
        medians.insert(name.as_str(), med);
        let mean_of = |f: &dyn Fn(&Sample) -> Option<f64>| {
            let v: Vec<f64> = samples.iter().filter_map(|s| f(s)).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        let srv = mean_of(&|s| s.server_cores);
        let cli = mean_of(&|s| s.client_cores);
        let min_conn = samples
            .iter()
            .map(|s| s.report.min_per_connection)
            .min()
            .unwrap_or(0);
        let range = format!(
            "{} .. {}",
            thousands(rates[0]),
            thousands(rates[rates.len() - 1])
        );
        let note = if failures > 0 {
            format!("  ({failures} run(s) failed)")
        } else {
            String::new()
        };
        println!(
            "{name:<9} {threads:>3} {:>13} {range:>25} {:>7} {:>7} {min_conn:>13}{note}",
            thousands(med),
            cores_cell(srv),
            cores_cell(cli),
        );
    }
    println!("(srv/cli cpu: mean cores used over the measured window; per-conn min: fewest round trips any one connection completed in a run)");

    let selected = |n: &str| s.impls.iter().any(|(name, _)| name == n);
    if selected("libnet") {
        let libnet = medians.get("libnet").copied();
        let mut parts = Vec::new();
        for y in YARDSTICKS.iter().filter(|y| selected(y)) {
            let cell = match (libnet, medians.get(y)) {
                (Some(l), Some(&o)) if o > 0.0 => format!("{:.2}x", l / o),
                _ => "n/a".into(),
            };
            parts.push(format!("libnet/{y} {cell}"));
        }
        if !parts.is_empty() {
            println!("ratios (median rt/s): {}", parts.join("   "));
        }
    }
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench` (and any filter); this bench is
    // configured through the environment instead, so arguments are ignored.
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("echo bench: {e}");
            return ExitCode::from(2);
        }
    };
    let bin = match server_binary() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("echo bench: {e}");
            return ExitCode::from(2);
        }
    };
    eprintln!("echo bench: server binary {}", bin.display());

    let mut any_failed = false;
    for &conns in &settings.conns {
        let mut results: BTreeMap<String, Vec<Outcome>> = BTreeMap::new();
        let mut not_wired: Vec<String> = Vec::new();
        for run in 0..settings.runs {
            // Rotate the order each run so no implementation always goes
            // first (or last) while the machine's background load drifts.
            let k = settings.impls.len();
            for i in 0..k {
                let (name, threads) = &settings.impls[(i + run) % k];
                if not_wired.contains(name) {
                    continue;
                }
                let outcome = run_one(&bin, name, *threads, conns, &settings);
                match &outcome {
                    Outcome::Done(s) => eprintln!(
                        "  C={conns} run {}/{} {name:<8} {:>12} rt/s  (srv cpu {}, cli cpu {}, connect {:?})",
                        run + 1,
                        settings.runs,
                        thousands(s.report.round_trips_per_sec()),
                        cores_cell(s.server_cores),
                        cores_cell(s.client_cores),
                        s.report.connect_time,
                    ),
                    Outcome::NotWired(m) => {
                        eprintln!("  C={conns} {name}: {m} (skipped)");
                        not_wired.push(name.clone());
                    }
                    Outcome::Failed(m) => {
                        any_failed = true;
                        eprintln!(
                            "  C={conns} run {}/{} {name}: FAILED: {m}",
                            run + 1,
                            settings.runs
                        );
                    }
                }
                results.entry(name.clone()).or_default().push(outcome);
                // Let the previous server's sockets go before the next one.
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        print_table(conns, &settings, &results);
    }
    if any_failed {
        eprintln!("echo bench: some runs failed (see above)");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
