//! `swarm-bench`: a whole live broadcast on loopback, as processes — a
//! tracker, an edge, a source on the test pattern (~2 Mbit/s) and N
//! viewers — measured for each N of a list. Prints one table row per N as
//! it goes, a final table, and optionally the figures as JSON.
//!
//! ```text
//! swarm-bench [--viewers 10,50,100] [--secs 30] [--warmup 5] [--join-rate 10]
//!             [--base-port 27000] [--video-kbps 1850] [--bins DIR]
//!             [--json FILE] [--keep-logs]
//! ```
//!
//! Each N gets a fresh tracker, edge and source on the same ports. Viewers
//! join `--join-rate` a second; the measured window (`--secs`) starts
//! `--warmup` seconds after the last one joined. At its end the bench
//! samples CPU and the edge's metrics, stops the viewers with SIGINT (each
//! writes its `--stats-file`), then stops the rest. `docs/swarm-bench.md`
//! says what every column means.
//!
//! Every child is killed and reaped on every way out (a guard per
//! process); SIGINT or SIGTERM to the bench ends the current run cleanly,
//! a second SIGINT exits at once.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

use benches::procs::{
    addr, bench_main, check_ports, complete_lines, interrupt, jnum, pause, quantile, stop_flag,
    Port, Proc,
};

/// The edge key of the bench's tracker, edge and source.
const KEY: &str = "swarm-bench-key";
/// The programs of `p2p-apps` the bench runs.
const BINS: [&str; 4] = ["tracker", "edge", "source", "client"];
/// Time a tracker, edge or source has to say it is up.
const START_LIMIT: Duration = Duration::from_secs(30);
/// Time the source streams before the first viewer joins (a keyframe or
/// two at the edge).
const SOURCE_LEAD: Duration = Duration::from_secs(2);
/// Time a process has to exit after SIGINT before it is killed.
const EXIT_LIMIT: Duration = Duration::from_secs(20);
/// How often the bench looks for processes that died.
const WATCH_EVERY: Duration = Duration::from_millis(200);

/// A whole live broadcast on loopback for each viewer count (see
/// `docs/swarm-bench.md`). Build the programs first:
/// cargo build --release -p p2p-apps --bins
#[derive(Parser, Debug)]
#[command(name = "swarm-bench")]
struct Config {
    /// Viewer counts to run, one fresh broadcast each.
    #[arg(long, value_delimiter = ',', default_values_t = [10, 50, 100])]
    viewers: Vec<usize>,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 30.0)]
    secs: f64,
    /// Seconds after the last viewer joined before measuring.
    #[arg(long, default_value_t = 5.0)]
    warmup: f64,
    /// Viewers started per second.
    #[arg(long, default_value_t = 10.0)]
    join_rate: f64,
    /// Tracker TCP port; UDP +1 and +2, edge +10, edge metrics +11.
    #[arg(long, default_value_t = 27_000)]
    base_port: u16,
    /// The test pattern's video bitrate; audio adds 128 kbit/s.
    #[arg(long, default_value_t = 1850)]
    video_kbps: u32,
    /// Directory holding tracker, edge, source, client [default: this program's].
    #[arg(long, value_name = "DIR")]
    bins: Option<PathBuf>,
    /// Also write the figures to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Keep every process's output (always kept after an error).
    #[arg(long)]
    keep_logs: bool,
}

/// The command line, with the checks clap does not make.
fn parse() -> Result<Config, String> {
    let c = Config::parse();
    if c.viewers.is_empty() || c.viewers.contains(&0) {
        return Err("--viewers wants positive counts".into());
    }
    // `!(x > 0)` also refuses NaN.
    let finite = c.secs.is_finite() && c.warmup.is_finite() && c.join_rate.is_finite();
    if !(finite && c.secs > 0.0 && c.join_rate > 0.0 && c.warmup >= 0.0) {
        return Err("--secs and --join-rate must be positive, --warmup not negative".into());
    }
    if c.base_port == 0 || c.base_port > u16::MAX - 11 {
        return Err("--base-port wants 1..=65524 (it uses 12 ports from there)".into());
    }
    Ok(c)
}

fn main() -> ExitCode {
    bench_main("swarm-bench", parse, run)
}

fn run(cfg: &Config) -> Result<(), String> {
    let bins = bins_dir(cfg)?;
    let stop = stop_flag()?;
    let ticks = clock_ticks();
    let logs = std::env::temp_dir().join(format!("swarm-bench-{}", std::process::id()));
    let mut rows = Vec::new();
    let mut failed = None;
    for &n in &cfg.viewers {
        eprintln!("swarm-bench: {n} viewers: starting");
        let dir = logs.join(format!("n{n}"));
        match run_one(cfg, &bins, &dir, &stop, ticks, n) {
            Ok(row) => {
                if rows.is_empty() {
                    print_header();
                }
                print_row(&row);
                rows.push(row);
                if let Some(path) = &cfg.json {
                    write_json(path, cfg, &rows)?;
                }
            }
            Err(e) => {
                failed = Some(format!("{n} viewers: {e}"));
                break;
            }
        }
    }
    if !rows.is_empty() {
        println!("\nswarm-bench: {} s measured per run", cfg.secs);
        print_header();
        rows.iter().for_each(print_row);
        print_legend();
    }
    match failed {
        Some(e) if logs.exists() => Err(format!("{e}\n(logs kept in {})", logs.display())),
        Some(e) => Err(e),
        None => {
            if cfg.keep_logs {
                eprintln!("swarm-bench: logs in {}", logs.display());
            } else {
                let _ = std::fs::remove_dir_all(&logs);
            }
            Ok(())
        }
    }
}

/// The directory holding the programs, each one checked.
fn bins_dir(cfg: &Config) -> Result<PathBuf, String> {
    let dir = benches::procs::bins_dir(
        cfg.bins.as_deref(),
        &BINS,
        "cargo build --release -p p2p-apps --bins",
    )?;
    if dir.ends_with("debug") {
        eprintln!(
            "swarm-bench: warning: {} holds debug builds; CPU figures will be off (use --release)",
            dir.display()
        );
    }
    Ok(dir)
}

/// Clock ticks per second of /proc's CPU times.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t: &f64| t > 0.0)
        .unwrap_or(100.0)
}

/// User plus system CPU ticks of process `pid`, all its threads.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After "pid (comm) ": state is field 3; utime and stime are 14 and 15.
    let mut f = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A number of a flat JSON object as the programs print it (`"name":123`);
/// `None` if absent, `null` or not a number.
fn json_number(json: &str, name: &str) -> Option<f64> {
    let key = format!("\"{name}\":");
    let at = json.find(&key)? + key.len();
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

/// The edge's `p2plive_edge_bytes_out_total`, from its metrics endpoint.
fn edge_bytes_out(metrics: &str) -> Option<f64> {
    let mut s = TcpStream::connect(metrics).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n").ok()?;
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .find_map(|l| l.strip_prefix("p2plive_edge_bytes_out_total "))
        .and_then(|v| v.trim().parse().ok())
}

/// The counters of a viewer's stats, summed over viewers or taken as the
/// difference of two snapshots.
#[derive(Clone, Copy, Default, Debug)]
struct Counters {
    from_edge: f64,
    from_peers: f64,
    fragments: f64,
    on_time: f64,
    late: f64,
    skipped: f64,
    stalls: f64,
    stall_ms: f64,
}

impl Counters {
    /// From a client's status JSON; `None` if a counter is missing.
    fn parse(json: &str) -> Option<Counters> {
        let n = |k| json_number(json, k);
        Some(Counters {
            from_edge: n("bytes_from_edge")?,
            from_peers: n("bytes_from_peers")?,
            fragments: n("fragments")?,
            on_time: n("on_time")?,
            late: n("late")?,
            skipped: n("skipped")?,
            stalls: n("stalls")?,
            stall_ms: n("stall_ms")?,
        })
    }

    fn zip(self, o: Counters, f: impl Fn(f64, f64) -> f64) -> Counters {
        Counters {
            from_edge: f(self.from_edge, o.from_edge),
            from_peers: f(self.from_peers, o.from_peers),
            fragments: f(self.fragments, o.fragments),
            on_time: f(self.on_time, o.on_time),
            late: f(self.late, o.late),
            skipped: f(self.skipped, o.skipped),
            stalls: f(self.stalls, o.stalls),
            stall_ms: f(self.stall_ms, o.stall_ms),
        }
    }

    fn delivered(&self) -> f64 {
        self.from_edge + self.from_peers
    }

    fn edge_share(&self) -> f64 {
        self.from_edge / self.delivered()
    }

    fn on_time_share(&self) -> f64 {
        self.on_time / self.fragments
    }
}

/// One viewer of a run.
struct Viewer {
    proc: Proc,
    stats: PathBuf,
    /// Why it does not count, if it does not.
    lost: Option<String>,
    /// Its counters when the window opened.
    snapshot: Counters,
    /// Its CPU ticks when the window opened and closed.
    cpu: (Option<u64>, Option<u64>),
}

/// The tracker, edge and source of a run.
struct Infra {
    tracker: Proc,
    edge: Proc,
    source: Proc,
}

impl Infra {
    fn all(&mut self) -> [&mut Proc; 3] {
        [&mut self.source, &mut self.edge, &mut self.tracker]
    }
}

/// Waits until `end`, failing if the tracker, edge or source dies and
/// writing off (with a warning) viewers that exit.
fn watch(
    end: Instant,
    stop: &AtomicBool,
    infra: &mut Infra,
    viewers: &mut [Viewer],
) -> Result<(), String> {
    loop {
        // Ctrl-C reaches the children too: say "interrupted", not "died".
        if stop.load(Ordering::Relaxed) {
            return Err("interrupted".into());
        }
        for p in infra.all() {
            if let Some(s) = p.exited() {
                return Err(p.died(s));
            }
        }
        for v in viewers.iter_mut().filter(|v| v.lost.is_none()) {
            if let Some(s) = v.proc.exited() {
                let why = v.proc.died(s);
                eprintln!("swarm-bench: warning: {why}");
                v.lost = Some(why);
            }
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        pause(left.min(WATCH_EVERY), stop)?;
    }
}

/// The figures of one run.
struct Row {
    n: usize,
    /// Viewers that counted: not lost on the way.
    counted: usize,
    /// Counted viewers without a first frame.
    no_frame: usize,
    window_secs: f64,
    /// Summed over viewers: their whole life, and the window only.
    life: Counters,
    window: Counters,
    /// The edge's `p2plive_edge_bytes_out_total`: at the end, and its growth
    /// over the window.
    edge_out_life: Option<f64>,
    edge_out_window: Option<f64>,
    /// First frame, ms: p50, p95, max.
    first_frame: [f64; 3],
    /// Per-viewer latency p95: median and max; per-viewer p50: median.
    lat_p95: [f64; 2],
    lat_p50_median: f64,
    peers_mean: f64,
    bad_fragments: f64,
    /// CPU, % of one core: per viewer, edge, source, tracker.
    cpu_viewer: f64,
    cpu_edge: f64,
    cpu_source: f64,
    cpu_tracker: f64,
}

/// Starts a tracker, an edge and a source on the ports from `--base-port`;
/// the source's room.
fn start_infra(
    cfg: &Config,
    bins: &Path,
    logs: &Path,
    stop: &AtomicBool,
) -> Result<(Infra, u32), String> {
    let b = cfg.base_port;
    let mut tracker = Proc::start(
        "tracker",
        Command::new(bins.join("tracker"))
            .args(["--tcp", &addr(b), "--udp", &addr(b + 1)])
            .args(["--udp-alt", &addr(b + 2), "--metrics", "off"])
            .args(["--edge-key", KEY]),
        logs,
    )?;
    tracker.wait_line("tracker ", START_LIMIT, stop)?;
    let mut edge = Proc::start(
        "edge",
        Command::new(bins.join("edge"))
            .args(["--tracker", &addr(b), "--tracker-udp", &addr(b + 1)])
            .args(["--listen", &addr(b + 10), "--metrics", &addr(b + 11)])
            .args(["--edge-key", KEY]),
        logs,
    )?;
    edge.wait_line("listening on", START_LIMIT, stop)?;
    let mut source = Proc::start(
        "source",
        Command::new(bins.join("source"))
            .args(["--tracker", &addr(b), "--edge-key", KEY])
            .args(["--size", "640x360", "--fps", "25"])
            .args(["--video-kbps", &cfg.video_kbps.to_string()]),
        logs,
    )?;
    let line = source.wait_line("room=", START_LIMIT, stop)?;
    let room = line
        .trim()
        .strip_prefix("room=")
        .and_then(|r| r.parse().ok())
        .ok_or_else(|| format!("the source printed {line:?}, not room=N"))?;
    let infra = Infra {
        tracker,
        edge,
        source,
    };
    Ok((infra, room))
}

/// What the bench sampled itself, besides the viewers' figures.
struct Sampled {
    /// Length of the window, seconds.
    secs: f64,
    /// CPU ticks of [source, edge, tracker] when the window opened and
    /// closed.
    infra_cpu: [[Option<u64>; 3]; 2],
    /// The edge's bytes out when the window opened, closed, and after the
    /// viewers left.
    edge_out: [Option<f64>; 3],
}

/// One broadcast with `n` viewers, measured.
fn run_one(
    cfg: &Config,
    bins: &Path,
    logs: &Path,
    stop: &AtomicBool,
    ticks: f64,
    n: usize,
) -> Result<Row, String> {
    let b = cfg.base_port;
    check_ports(&[
        Port::Tcp("the tracker's TCP", b),
        Port::Udp("the tracker's UDP", b + 1),
        Port::Udp("the tracker's second UDP", b + 2),
        Port::Udp("the edge's UDP", b + 10),
        Port::Tcp("the edge's metrics", b + 11),
    ])?;
    std::fs::create_dir_all(logs).map_err(|e| format!("cannot create {}: {e}", logs.display()))?;
    let (mut infra, room) = start_infra(cfg, bins, logs, stop)?;
    let mut viewers: Vec<Viewer> = Vec::with_capacity(n);
    watch(Instant::now() + SOURCE_LEAD, stop, &mut infra, &mut viewers)?;

    let joins = Instant::now();
    for i in 0..n {
        let at = joins + Duration::from_secs_f64(i as f64 / cfg.join_rate);
        watch(at, stop, &mut infra, &mut viewers)?;
        let stats = logs.join(format!("viewer-{i}.json"));
        let proc = Proc::start(
            &format!("viewer-{i}"),
            Command::new(bins.join("client"))
                .args(["--tracker", &addr(b), "--tracker-udp", &addr(b + 1)])
                .args(["--room", &room.to_string(), "--bind", "127.0.0.1:0"])
                .args(["--out", "/dev/null", "--json", "--stats-file"])
                .arg(&stats),
            logs,
        )?;
        viewers.push(Viewer {
            proc,
            stats,
            lost: None,
            snapshot: Counters::default(),
            cpu: (None, None),
        });
    }
    eprintln!(
        "swarm-bench: {n} viewers joined in {:.1} s; warming up {} s, then measuring {} s",
        joins.elapsed().as_secs_f64(),
        cfg.warmup,
        cfg.secs
    );
    watch(
        Instant::now() + Duration::from_secs_f64(cfg.warmup),
        stop,
        &mut infra,
        &mut viewers,
    )?;

    // The window opens: counters (each viewer's last status line, at most
    // a second old), CPU, the edge's bytes.
    let metrics = addr(b + 11);
    let infra_cpu0 = infra.all().map(|p| cpu_ticks(p.pid()));
    for v in viewers.iter_mut().filter(|v| v.lost.is_none()) {
        let err = std::fs::read_to_string(&v.proc.stderr).unwrap_or_default();
        v.snapshot = complete_lines(&err)
            .rev()
            .find_map(|l| l.starts_with('{').then(|| Counters::parse(l)).flatten())
            .unwrap_or_default();
        v.cpu.0 = cpu_ticks(v.proc.pid());
    }
    let edge0 = edge_bytes_out(&metrics);
    let opened = Instant::now();
    watch(
        opened + Duration::from_secs_f64(cfg.secs),
        stop,
        &mut infra,
        &mut viewers,
    )?;
    // The window closes.
    for v in viewers.iter_mut().filter(|v| v.lost.is_none()) {
        v.cpu.1 = cpu_ticks(v.proc.pid());
    }
    let infra_cpu1 = infra.all().map(|p| cpu_ticks(p.pid()));
    let edge1 = edge_bytes_out(&metrics);
    let window_secs = opened.elapsed().as_secs_f64();

    // Stop the viewers; each writes its stats file on the way out.
    interrupt(
        viewers
            .iter_mut()
            .filter(|v| v.lost.is_none())
            .map(|v| &mut v.proc),
    );
    let end = Instant::now() + EXIT_LIMIT;
    for v in viewers.iter_mut().filter(|v| v.lost.is_none()) {
        let why = match v.proc.wait_exit(end) {
            None => Some(format!(
                "{} did not exit within {EXIT_LIMIT:?} of SIGINT",
                v.proc.name
            )),
            Some(s) if !s.success() => Some(v.proc.died(s)),
            Some(_) => None,
        };
        if let Some(why) = why {
            eprintln!("swarm-bench: warning: {why}");
            v.lost = Some(why);
        }
    }
    let edge_out_life = edge_bytes_out(&metrics);
    interrupt(infra.all());
    let end = Instant::now() + EXIT_LIMIT;
    for p in infra.all() {
        match p.wait_exit(end) {
            Some(s) if s.success() => {}
            Some(s) => eprintln!("swarm-bench: warning: on SIGINT, {}", p.died(s)),
            None => eprintln!("swarm-bench: warning: {} ignored SIGINT; killed", p.name),
        }
    }

    let sampled = Sampled {
        secs: window_secs,
        infra_cpu: [infra_cpu0, infra_cpu1],
        edge_out: [edge0, edge1, edge_out_life],
    };
    figures(n, &viewers, &sampled, ticks)
}

/// The figures of a run from the viewers' stats files and what the bench
/// sampled.
fn figures(n: usize, viewers: &[Viewer], sampled: &Sampled, ticks: f64) -> Result<Row, String> {
    let mut life = Counters::default();
    let mut window = Counters::default();
    let (mut first, mut p95s, mut p50s) = (Vec::new(), Vec::new(), Vec::new());
    let (mut counted, mut no_frame, mut peers, mut bad) = (0, 0, 0.0, 0.0);
    let (mut cpu_sum, mut cpu_n) = (0u64, 0usize);
    for v in viewers.iter().filter(|v| v.lost.is_none()) {
        let json = match std::fs::read_to_string(&v.stats) {
            Ok(j) => j,
            Err(e) => {
                eprintln!("swarm-bench: warning: {} left no stats ({e})", v.proc.name);
                continue;
            }
        };
        let Some(c) = Counters::parse(&json) else {
            eprintln!(
                "swarm-bench: warning: {} stats lack counters: {json}",
                v.proc.name
            );
            continue;
        };
        counted += 1;
        life = life.zip(c, |a, b| a + b);
        window = window.zip(c.zip(v.snapshot, |a, b| a - b), |a, b| a + b);
        match json_number(&json, "first_frame_ms") {
            Some(ms) => first.push(ms),
            None => no_frame += 1,
        }
        p95s.extend(json_number(&json, "latency_p95_ms"));
        p50s.extend(json_number(&json, "latency_p50_ms"));
        peers += json_number(&json, "peers").unwrap_or(0.0);
        bad += json_number(&json, "bad_fragments").unwrap_or(0.0);
        if let (Some(a), Some(b)) = v.cpu {
            cpu_sum += b.saturating_sub(a);
            cpu_n += 1;
        }
    }
    if counted == 0 {
        return Err("no viewer lasted the run (see the warnings above)".into());
    }
    let cpu = |ticks_used: f64| 100.0 * ticks_used / ticks / sampled.secs;
    let [cpu0, cpu1] = sampled.infra_cpu;
    let [source_cpu, edge_cpu, tracker_cpu] = [0, 1, 2].map(|i| match (cpu0[i], cpu1[i]) {
        (Some(a), Some(b)) => cpu(b.saturating_sub(a) as f64),
        _ => f64::NAN,
    });
    let [edge0, edge1, edge_out_life] = sampled.edge_out;
    Ok(Row {
        n,
        counted,
        no_frame,
        window_secs: sampled.secs,
        life,
        window,
        edge_out_life,
        edge_out_window: edge0.zip(edge1).map(|(a, b)| b - a),
        first_frame: [
            quantile(&mut first, 0.5),
            quantile(&mut first, 0.95),
            quantile(&mut first, 1.0),
        ],
        lat_p95: [quantile(&mut p95s, 0.5), quantile(&mut p95s, 1.0)],
        lat_p50_median: quantile(&mut p50s, 0.5),
        peers_mean: peers / counted as f64,
        bad_fragments: bad,
        cpu_viewer: if cpu_n == 0 {
            f64::NAN
        } else {
            cpu(cpu_sum as f64) / cpu_n as f64
        },
        cpu_source: source_cpu,
        cpu_edge: edge_cpu,
        cpu_tracker: tracker_cpu,
    })
}

fn pct(x: f64) -> f64 {
    100.0 * x
}

fn print_header() {
    println!(
        "{:>5} {:>5} | {:>6} {:>6} {:>6} | {:>6} {:>6} {:>6} | {:>6} {:>6} {:>6} | {:>7} {:>6} {:>6} {:>6} {:>7} | {:>6} {:>6} {:>6}",
        "N", "lost", "edge%", "edgeW%", "edgeM%", "ff50", "ff95", "ffmax", "l95med", "l95max",
        "l50med", "ontime%", "late", "skip", "stalls", "stallms", "cpu/v%", "edge%", "src%"
    );
}

fn print_row(r: &Row) {
    let l = &r.life;
    println!(
        "{:>5} {:>5} | {:>6.1} {:>6.1} {:>6.1} | {:>6.0} {:>6.0} {:>6.0} | {:>6.0} {:>6.0} {:>6.0} | {:>7.2} {:>6} {:>6} {:>6} {:>7} | {:>6.1} {:>6.1} {:>6.1}",
        r.n,
        r.n - r.counted,
        pct(l.edge_share()),
        pct(r.window.edge_share()),
        pct(r.edge_out_life.unwrap_or(f64::NAN) / l.delivered()),
        r.first_frame[0],
        r.first_frame[1],
        r.first_frame[2],
        r.lat_p95[0],
        r.lat_p95[1],
        r.lat_p50_median,
        pct(l.on_time_share()),
        l.late,
        l.skipped,
        l.stalls,
        l.stall_ms,
        r.cpu_viewer,
        r.cpu_edge,
        r.cpu_source
    );
}

fn print_legend() {
    println!(
        "\
lost     viewers that died or left no stats (not counted below)
edge%    bytes viewers got from the edge / all bytes they got, over their whole life
edgeW%   the same over the measured window only
edgeM%   the edge's p2plive_edge_bytes_out_total / all bytes viewers got (whole life)
ff*      time to first frame, ms from each viewer's start: p50, p95, max
l95*     the viewers' source-to-viewer latency p95, ms: median, max; l50med: median p50
ontime%  fragments on time / fragments, summed over viewers (whole life), with late,
         skipped, stalls and stall ms summed too
cpu/v%   viewers' CPU over the window, % of one core per viewer; edge%, src% likewise"
    );
}

fn counters_json(c: &Counters) -> String {
    format!(
        "{{\"bytes_from_edge\":{},\"bytes_from_peers\":{},\"edge_share\":{},\"fragments\":{},\
         \"on_time\":{},\"on_time_share\":{},\"late\":{},\"skipped\":{},\"stalls\":{},\"stall_ms\":{}}}",
        jnum(c.from_edge),
        jnum(c.from_peers),
        jnum(c.edge_share()),
        jnum(c.fragments),
        jnum(c.on_time),
        jnum(c.on_time_share()),
        jnum(c.late),
        jnum(c.skipped),
        jnum(c.stalls),
        jnum(c.stall_ms)
    )
}

fn write_json(path: &Path, cfg: &Config, rows: &[Row]) -> Result<(), String> {
    let mut s = format!(
        "{{\"secs\":{},\"warmup\":{},\"join_rate\":{},\"video_kbps\":{},\"runs\":[",
        cfg.secs, cfg.warmup, cfg.join_rate, cfg.video_kbps
    );
    for (i, r) in rows.iter().enumerate() {
        let opt = |x: Option<f64>| jnum(x.unwrap_or(f64::NAN));
        let _ = write!(
            s,
            "{}\n{{\"viewers\":{},\"counted\":{},\"no_first_frame\":{},\"window_secs\":{},\
             \"life\":{},\"window\":{},\"edge_bytes_out\":{},\"edge_bytes_out_window\":{},\
             \"edge_metric_share\":{},\"edge_metric_share_window\":{},\
             \"first_frame_ms\":{{\"p50\":{},\"p95\":{},\"max\":{}}},\
             \"latency_p95_ms\":{{\"median\":{},\"max\":{}}},\"latency_p50_ms_median\":{},\
             \"peers_mean\":{},\"bad_fragments\":{},\
             \"cpu_pct\":{{\"per_viewer\":{},\"edge\":{},\"source\":{},\"tracker\":{}}}}}",
            if i == 0 { "" } else { "," },
            r.n,
            r.counted,
            r.no_frame,
            jnum(r.window_secs),
            counters_json(&r.life),
            counters_json(&r.window),
            opt(r.edge_out_life),
            opt(r.edge_out_window),
            jnum(r.edge_out_life.unwrap_or(f64::NAN) / r.life.delivered()),
            jnum(r.edge_out_window.unwrap_or(f64::NAN) / r.window.delivered()),
            jnum(r.first_frame[0]),
            jnum(r.first_frame[1]),
            jnum(r.first_frame[2]),
            jnum(r.lat_p95[0]),
            jnum(r.lat_p95[1]),
            jnum(r.lat_p50_median),
            jnum(r.peers_mean),
            jnum(r.bad_fragments),
            jnum(r.cpu_viewer),
            jnum(r.cpu_edge),
            jnum(r.cpu_source),
            jnum(r.cpu_tracker)
        );
    }
    s.push_str("\n]}\n");
    std::fs::write(path, s).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
