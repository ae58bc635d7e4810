//! `vod-bench`: on-demand file transfer through the real programs, on
//! loopback — a tracker, H `vod share` holders each capped at the same
//! upload rate, and one `vod fetch` playing to stdout — for each H of a
//! list, in alternation over several rounds so that the ratios compare
//! runs that saw the same noise. Prints a line per run as it goes, a final
//! table, and optionally the figures as JSON.
//!
//! ```text
//! vod-bench [--mb 24] [--holders 1,4] [--rounds 3] [--cap-kbps 16000]
//!           [--base-port 28000] [--bins DIR] [--json FILE] [--keep-logs]
//! ```
//!
//! Each run gets a fresh tracker on the same ports and fresh holders of one
//! file of random bytes (one key, so one catalog entry). The fetch is timed
//! from its spawn to its exit; its first byte on stdout is timed by the
//! bench, which reads the pipe; both its stdout and its `--out` file must
//! equal the file. `docs/vod-bench.md` says what every figure means.
//!
//! Every child is killed and reaped on every way out (a guard per
//! process); SIGINT or SIGTERM to the bench ends the current run cleanly,
//! a second SIGINT exits at once. The temporary directory goes too (the
//! logs stay after an error or with `--keep-logs`).

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;

use benches::procs::{
    addr, bench_main, check_ports, complete_lines, interrupt, jnum, quantile, stop_flag, Port, Proc,
};

/// The programs of `p2p-apps` the bench runs.
const BINS: [&str; 2] = ["tracker", "vod"];
/// The command that builds them (and the bench).
const BUILD: &str = "cargo build --release -p p2p-apps --bins -p benches";
/// The test file's name, on disk and in the catalog.
const NAME: &str = "vod-bench.bin";
/// Time a tracker or holder has to say it is up.
const START_LIMIT: Duration = Duration::from_secs(30);
/// Time a process has to exit after SIGINT before it is killed.
const EXIT_LIMIT: Duration = Duration::from_secs(10);
/// How often the bench looks whether the fetch ended (the wall time's
/// resolution) and whether a holder died.
const WATCH_EVERY: Duration = Duration::from_millis(10);

/// Downloads through `vod` from 1 and from several upload-capped holders
/// and compares the rates (see `docs/vod-bench.md`). Build first:
/// cargo build --release -p p2p-apps --bins -p benches
#[derive(Parser, Debug)]
#[command(name = "vod-bench")]
struct Config {
    /// Size of the test file, MB of random bytes.
    #[arg(long, default_value_t = 24.0)]
    mb: f64,
    /// Holder counts, one fresh tracker and holders each (1 to 16).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 4])]
    holders: Vec<usize>,
    /// Runs of each count, in alternation.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Each holder's upload cap, `vod share --upload-kbps` (16000 = 2 MB/s; 0: none).
    #[arg(long, default_value_t = 16_000)]
    cap_kbps: u64,
    /// Tracker TCP port; its UDP +1 and +2.
    #[arg(long, default_value_t = 28_000)]
    base_port: u16,
    /// Directory holding tracker and vod [default: this program's].
    #[arg(long, value_name = "DIR")]
    bins: Option<PathBuf>,
    /// Also write the figures to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Keep every process's output (always kept after an error).
    #[arg(long)]
    keep_logs: bool,
}

impl Config {
    fn size(&self) -> u64 {
        (self.mb * 1e6) as u64
    }

    /// One holder's cap, bytes per second (as `vod` computes it); `None`
    /// without a cap.
    fn cap_bytes(&self) -> Option<f64> {
        (self.cap_kbps > 0).then(|| (self.cap_kbps * 1000 / 8) as f64)
    }

    /// The cap, in words.
    fn cap_text(&self) -> String {
        match self.cap_bytes() {
            Some(c) => format!(
                "each holder capped at {} kbit/s ({:.2} MB/s)",
                self.cap_kbps,
                c / 1e6
            ),
            None => "holders not capped".into(),
        }
    }
}

/// The command line, with the checks clap does not make.
fn parse() -> Result<Config, String> {
    let c = Config::parse();
    let mut seen = c.holders.clone();
    seen.sort_unstable();
    seen.dedup();
    // A fetch asks at most 16 holders.
    let in_range = seen.first().is_some_and(|&n| n >= 1) && seen.last() <= Some(&16);
    if !in_range || seen.len() != c.holders.len() {
        return Err("--holders wants distinct counts from 1 to 16".into());
    }
    // `!(x > 0)` also refuses NaN.
    if !(c.mb > 0.0 && c.mb <= 4000.0) || c.size() == 0 {
        return Err("--mb wants a size above 0 and at most 4000".into());
    }
    if c.rounds == 0 {
        return Err("--rounds wants 1 or more".into());
    }
    if c.base_port == 0 || c.base_port > u16::MAX - 2 {
        return Err("--base-port wants 1..=65533 (it uses 3 ports from there)".into());
    }
    Ok(c)
}

fn main() -> ExitCode {
    bench_main("vod-bench", parse, run)
}

/// The bench's temporary directory: `data/` (the test file, the key, the
/// fetched copies) always removed, the rest (logs) too unless `keep`.
struct Scratch {
    dir: PathBuf,
    keep: bool,
}

impl Scratch {
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep {
            let _ = std::fs::remove_dir_all(self.data());
            // Gone if no run got as far as writing logs.
            let _ = std::fs::remove_dir(&self.dir);
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn run(cfg: &Config) -> Result<(), String> {
    let bins = benches::procs::bins_dir(cfg.bins.as_deref(), &BINS, BUILD)?;
    if bins.ends_with("debug") {
        eprintln!(
            "vod-bench: warning: {} holds debug builds; the figures will be off (use --release)",
            bins.display()
        );
    }
    let stop = stop_flag()?;
    let mut scratch = Scratch {
        dir: std::env::temp_dir().join(format!("vod-bench-{}", std::process::id())),
        keep: cfg.keep_logs,
    };
    let data_dir = scratch.data();
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let data = Arc::new(random_bytes(cfg.size()));
    let file = data_dir.join(NAME);
    std::fs::write(&file, &*data).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    let key = data_dir.join("publisher.key");
    eprintln!(
        "vod-bench: {:.1} MB of random bytes; holders {:?}, {} rounds; {}",
        cfg.size() as f64 / 1e6,
        cfg.holders,
        cfg.rounds,
        cfg.cap_text()
    );

    let ctx = Ctx {
        cfg,
        bins: &bins,
        file: &file,
        key: &key,
        data: &data,
        stop: &stop,
    };
    let mut runs = Vec::new();
    let mut failed = None;
    'rounds: for round in 1..=cfg.rounds {
        for &n in &cfg.holders {
            let logs = scratch.dir.join(format!("r{round}-h{n}"));
            match run_one(&ctx, &logs, round, n) {
                Ok(r) => {
                    print_run(cfg, &r);
                    runs.push(r);
                    if let Some(path) = &cfg.json {
                        write_json(path, cfg, &runs)?;
                    }
                }
                Err(e) => {
                    let who = plural(n).trim_end();
                    failed = Some(format!("round {round}, {n} {who}: {e}"));
                    break 'rounds;
                }
            }
        }
    }
    if !runs.is_empty() {
        print_summary(cfg, &runs);
    }
    match failed {
        Some(e) => {
            scratch.keep = true;
            // `data/` and at least one run's logs.
            if std::fs::read_dir(&scratch.dir).map_or(0, |d| d.count()) > 1 {
                Err(format!("{e}\n(logs kept in {})", scratch.dir.display()))
            } else {
                Err(e)
            }
        }
        None => {
            if cfg.keep_logs {
                eprintln!("vod-bench: logs in {}", scratch.dir.display());
            }
            Ok(())
        }
    }
}

/// `len` pseudo-random bytes (splitmix64, seeded from the clock): nothing
/// on the way can compress them.
fn random_bytes(len: u64) -> Vec<u8> {
    let mut x = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()).rotate_left(32);
    let mut v = Vec::with_capacity(len as usize + 8);
    while (v.len() as u64) < len {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        v.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    v.truncate(len as usize);
    v
}

/// What every run shares.
struct Ctx<'a> {
    cfg: &'a Config,
    bins: &'a Path,
    /// The test file and the publisher's key file.
    file: &'a Path,
    key: &'a Path,
    /// The test file's bytes.
    data: &'a Arc<Vec<u8>>,
    stop: &'a AtomicBool,
}

/// The figures of one run.
struct Run {
    round: usize,
    holders: usize,
    /// Spawn of `vod fetch` to its exit, seconds.
    wall: f64,
    /// The `in T s` of its `fetched` line.
    fetch: f64,
    /// Spawn to the first byte read on its stdout, seconds.
    first_byte: f64,
    /// The `first byte after X s` of its `fetched` line (its first piece
    /// stored, from the start of its transfer).
    vod_first_byte: Option<f64>,
    /// From the bench seeing the `fetched` line (polled every
    /// `WATCH_EVERY`) to the exit, seconds; `None` if it exited first.
    exit_lag: Option<f64>,
    /// Bytes per holder, from its `fetched` line.
    from: Vec<(String, u64)>,
}

/// One run: a fresh tracker, `n` holders, one fetch to stdout, checked.
fn run_one(ctx: &Ctx, logs: &Path, round: usize, n: usize) -> Result<Run, String> {
    let (cfg, stop) = (ctx.cfg, ctx.stop);
    let b = cfg.base_port;
    check_ports(&[
        Port::Tcp("the tracker's TCP", b),
        Port::Udp("the tracker's UDP", b + 1),
        Port::Udp("the tracker's second UDP", b + 2),
    ])?;
    std::fs::create_dir_all(logs).map_err(|e| format!("cannot create {}: {e}", logs.display()))?;
    let tracker_at = [
        "--tracker".to_string(),
        addr(b),
        "--tracker-udp".into(),
        addr(b + 1),
    ];
    let mut tracker = Proc::start(
        "tracker",
        Command::new(ctx.bins.join("tracker"))
            .args(["--tcp", &addr(b), "--udp", &addr(b + 1)])
            .args(["--udp-alt", &addr(b + 2), "--metrics", "off"]),
        logs,
    )?;
    tracker.wait_line("tracker ", START_LIMIT, stop)?;

    // The first holder creates the key file (in the first round); the
    // others start once it is up, so they sign with the same key.
    let mut holders: Vec<Proc> = Vec::with_capacity(n);
    let mut index = String::new();
    for i in 0..n {
        let mut h = Proc::start(
            &format!("holder-{i}"),
            Command::new(ctx.bins.join("vod"))
                .arg("share")
                .arg(ctx.file)
                .args(["--name", NAME, "--key-file"])
                .arg(ctx.key)
                .args(["--upload-kbps", &cfg.cap_kbps.to_string()])
                .args(["--bind", "127.0.0.1:0"])
                .args(&tracker_at),
            logs,
        )?;
        if i == 0 {
            index = shared_index(&mut h, stop)?;
        }
        holders.push(h);
    }
    for h in &mut holders[1..] {
        let id = shared_index(h, stop)?;
        if id != index {
            return Err(format!(
                "{} shares index {id}, holder-0 {index}: not one catalog entry",
                h.name
            ));
        }
    }

    // Beside the test file, so it goes with it on every way out.
    let out = ctx
        .file
        .with_file_name(format!("fetched-r{round}-h{n}.bin"));
    let t0 = Instant::now();
    let (mut fetch, pipe) = Proc::start_piped(
        "fetch",
        Command::new(ctx.bins.join("vod"))
            .args(["fetch", NAME, "--stdout", "--out"])
            .arg(&out)
            .args(["--bind", "127.0.0.1:0"])
            .args(&tracker_at),
        logs,
    )?;
    let reader = {
        let data = Arc::clone(ctx.data);
        thread::spawn(move || read_stdout(pipe, &data, t0))
    };
    let slowest = cfg.cap_bytes().unwrap_or(10e6);
    let limit = Duration::from_secs_f64(60.0 + 3.0 * cfg.size() as f64 / slowest);
    // When its `fetched` line appeared: the rest of the wall time is its
    // way out.
    let mut fetched_at = None;
    let status = loop {
        if stop.load(Ordering::Relaxed) {
            return Err("interrupted".into());
        }
        if let Some(s) = fetch.exited() {
            break s;
        }
        if fetched_at.is_none() {
            let err = std::fs::read_to_string(&fetch.stderr).unwrap_or_default();
            if complete_lines(&err).any(|l| l.starts_with("fetched ")) {
                fetched_at = Some(t0.elapsed().as_secs_f64());
            }
        }
        for p in std::iter::once(&mut tracker).chain(&mut holders) {
            if let Some(s) = p.exited() {
                return Err(p.died(s));
            }
        }
        if t0.elapsed() > limit {
            return Err(format!(
                "the fetch did not end within {limit:?}; the end of its stderr:\n{}",
                fetch.tail(15)
            ));
        }
        thread::sleep(WATCH_EVERY);
    };
    let wall = t0.elapsed().as_secs_f64();
    let exit_lag = fetched_at.map(|t| wall - t);
    if !status.success() {
        return Err(fetch.died(status));
    }
    // The pipe closed with the fetch's exit.
    let got = reader
        .join()
        .map_err(|_| "the stdout reader panicked".to_string())?;
    let err = std::fs::read_to_string(&fetch.stderr).unwrap_or_default();
    let line = complete_lines(&err)
        .find(|l| l.starts_with("fetched "))
        .ok_or_else(|| format!("the fetch printed no `fetched` line:\n{}", fetch.tail(15)))?;
    let said =
        parse_fetched(line).ok_or_else(|| format!("cannot read the fetch's line {line:?}"))?;
    if !line.contains(" 0 resumed pieces, 0 bad pieces)") {
        eprintln!("vod-bench: warning: the fetch says: {line}");
    }

    // The checks: stdout and the file, byte for byte.
    let size = ctx.data.len() as u64;
    if let Some(at) = got.mismatch {
        return Err(format!("stdout differs from the file at byte {at}"));
    }
    if got.bytes != size {
        return Err(format!("stdout had {} bytes, the file {size}", got.bytes));
    }
    let first_byte = got
        .first_byte
        .ok_or("nothing came on stdout")?
        .as_secs_f64();
    let written = std::fs::read(&out).map_err(|e| format!("cannot read {}: {e}", out.display()))?;
    if written != **ctx.data {
        return Err(format!("{} differs from the file", out.display()));
    }
    let _ = std::fs::remove_file(&out);

    // Holders first, so they can still unpublish; then the tracker.
    stop_all(&mut holders);
    stop_all(std::slice::from_mut(&mut tracker));
    Ok(Run {
        round,
        holders: n,
        wall,
        fetch: said.secs,
        first_byte,
        vod_first_byte: said.first_byte,
        exit_lag,
        from: said.from,
    })
}

/// Waits for a holder's `shared ...` line; its index id.
fn shared_index(h: &mut Proc, stop: &AtomicBool) -> Result<String, String> {
    let line = h.wait_line("shared ", START_LIMIT, stop)?;
    line.split_once(" index ")
        .and_then(|(_, r)| r.split_whitespace().next())
        .map(str::to_string)
        .ok_or_else(|| format!("{} printed {line:?}, not `shared ... index ID ...`", h.name))
}

/// Stops `procs` with SIGINT and reaps them (killed after `EXIT_LIMIT`),
/// warning about any that exits badly.
fn stop_all(procs: &mut [Proc]) {
    interrupt(procs.iter_mut());
    let end = Instant::now() + EXIT_LIMIT;
    for p in procs {
        match p.wait_exit(end) {
            Some(s) if s.success() => {}
            Some(s) => eprintln!("vod-bench: warning: on SIGINT, {}", p.died(s)),
            None => eprintln!("vod-bench: warning: {} ignored SIGINT; killed", p.name),
        }
    }
}

/// What came on the fetch's stdout.
struct Stdout {
    /// Time from the spawn to the first byte.
    first_byte: Option<Duration>,
    bytes: u64,
    /// The first byte that differs from the file (or is past its end).
    mismatch: Option<u64>,
}

/// Reads `pipe` to its end (so the fetch never blocks on it), comparing
/// with `data` as it goes.
fn read_stdout(mut pipe: ChildStdout, data: &[u8], t0: Instant) -> Stdout {
    let mut s = Stdout {
        first_byte: None,
        bytes: 0,
        mismatch: None,
    };
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => return s,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return s,
        };
        s.first_byte.get_or_insert_with(|| t0.elapsed());
        let at = s.bytes as usize;
        if s.mismatch.is_none() {
            let want = data.get(at..).unwrap_or_default();
            let got = &buf[..n];
            let same = got.iter().zip(want).take_while(|(a, b)| a == b).count();
            if same < n {
                s.mismatch = Some((at + same) as u64);
            }
        }
        s.bytes += n as u64;
    }
}

/// What `vod fetch` says in its last line.
struct Fetched {
    /// `in T s`.
    secs: f64,
    /// `first byte after X s`; `None` for `-`.
    first_byte: Option<f64>,
    /// `HOLDER N bytes, ...`.
    from: Vec<(String, u64)>,
}

/// Reads `fetched NAME (SIZE bytes) in T s (first byte after X s; ...):
/// HOLDER N bytes, ...`.
fn parse_fetched(line: &str) -> Option<Fetched> {
    let (_, rest) = line.split_once(") in ")?;
    let (t, rest) = rest.split_once(" s (")?;
    let first_byte = rest
        .strip_prefix("first byte after ")
        .and_then(|r| r.split_once(" s;"))
        .and_then(|(x, _)| x.parse().ok());
    let (_, holders) = rest.split_once("): ")?;
    let from = holders
        .split(", ")
        .filter_map(|h| {
            let h = h.strip_suffix(" bytes")?;
            let (who, n) = h.rsplit_once(' ')?;
            Some((who.to_string(), n.parse().ok()?))
        })
        .collect();
    Some(Fetched {
        secs: t.parse().ok()?,
        first_byte,
        from,
    })
}

/// MB per second, `size` bytes in `secs`.
fn rate(size: u64, secs: f64) -> f64 {
    size as f64 / 1e6 / secs
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        "holder "
    } else {
        "holders"
    }
}

fn print_run(cfg: &Config, r: &Run) {
    let size = cfg.size();
    let from = r
        .from
        .iter()
        .map(|(_, b)| format!("{:.1}", *b as f64 / 1e6))
        .collect::<Vec<_>>()
        .join("/");
    println!(
        "round {}/{} {:>2} {}: {:6.2} MB/s ({:.2} s fetching), {:6.2} MB/s wall ({:.2} s); \
         first byte {:.3} s (vod: {}); exit {} after `fetched`; MB from each: {from}",
        r.round,
        cfg.rounds,
        r.holders,
        plural(r.holders),
        rate(size, r.fetch),
        r.fetch,
        rate(size, r.wall),
        r.wall,
        r.first_byte,
        r.vod_first_byte
            .map_or_else(|| "-".into(), |x| format!("{x:.3} s")),
        r.exit_lag
            .map_or_else(|| "-".into(), |x| format!("{x:.2} s")),
    );
}

/// The figures of one holder count over its rounds.
struct Summary {
    holders: usize,
    rounds: usize,
    /// MB/s from the fetch's own time: median, min, max.
    rate: [f64; 3],
    /// MB/s from the wall time: median.
    rate_wall: f64,
    /// The median rate over `holders` × the cap.
    of_caps: f64,
    /// First byte on stdout, seconds: median, max.
    first_byte: [f64; 2],
}

fn summarize(cfg: &Config, runs: &[Run], n: usize) -> Summary {
    let mine: Vec<&Run> = runs.iter().filter(|r| r.holders == n).collect();
    let mut rates: Vec<f64> = mine.iter().map(|r| rate(cfg.size(), r.fetch)).collect();
    let mut walls: Vec<f64> = mine.iter().map(|r| rate(cfg.size(), r.wall)).collect();
    let mut firsts: Vec<f64> = mine.iter().map(|r| r.first_byte).collect();
    let median = quantile(&mut rates, 0.5);
    Summary {
        holders: n,
        rounds: mine.len(),
        rate: [median, quantile(&mut rates, 0.0), quantile(&mut rates, 1.0)],
        rate_wall: quantile(&mut walls, 0.5),
        of_caps: cfg
            .cap_bytes()
            .map_or(f64::NAN, |c| median * 1e6 / (c * n as f64)),
        first_byte: [quantile(&mut firsts, 0.5), quantile(&mut firsts, 1.0)],
    }
}

/// For each holder count after the first: the ratio of median rates to the
/// first count's (fetching, wall) and the per-round ratios (fetching).
fn ratios(cfg: &Config, runs: &[Run]) -> Vec<(usize, f64, f64, Vec<f64>)> {
    let base = cfg.holders[0];
    let b = summarize(cfg, runs, base);
    cfg.holders[1..]
        .iter()
        .map(|&n| {
            let s = summarize(cfg, runs, n);
            let per_round = (1..=cfg.rounds)
                .filter_map(|round| {
                    let time = |h| {
                        runs.iter()
                            .find(|r| r.round == round && r.holders == h)
                            .map(|r| r.fetch)
                    };
                    // Same size: the ratio of rates is the inverse one of times.
                    Some(time(base)? / time(n)?)
                })
                .collect();
            (
                n,
                s.rate[0] / b.rate[0],
                s.rate_wall / b.rate_wall,
                per_round,
            )
        })
        .collect()
}

fn print_summary(cfg: &Config, runs: &[Run]) {
    println!(
        "\nvod-bench: {:.1} MB, {}; median over rounds",
        cfg.size() as f64 / 1e6,
        cfg.cap_text()
    );
    println!(
        "{:>7} {:>6} | {:>7} {:>7} {:>7} {:>7} | {:>7} | {:>9} {:>9}",
        "holders", "rounds", "MB/s", "min", "max", "of caps", "wall", "1st byte", "max"
    );
    for &n in &cfg.holders {
        let s = summarize(cfg, runs, n);
        if s.rounds == 0 {
            continue;
        }
        println!(
            "{:>7} {:>6} | {:>7.2} {:>7.2} {:>7.2} {:>7} | {:>7.2} | {:>8.3}s {:>8.3}s",
            s.holders,
            s.rounds,
            s.rate[0],
            s.rate[1],
            s.rate[2],
            if s.of_caps.is_finite() {
                format!("{:.0}%", 100.0 * s.of_caps)
            } else {
                "-".into()
            },
            s.rate_wall,
            s.first_byte[0],
            s.first_byte[1]
        );
    }
    let base = cfg.holders[0];
    for (n, fetching, wall, per_round) in ratios(cfg, runs) {
        if per_round.is_empty() {
            continue;
        }
        let rounds: Vec<String> = per_round.iter().map(|x| format!("{x:.2}")).collect();
        println!(
            "{n} holders / {base}: {fetching:.2}x fetching, {wall:.2}x wall (ratios of medians); \
             per round: {}",
            rounds.join(" ")
        );
    }
    println!(
        "\
MB/s      file size / the fetch's own time (`fetched ... in T s`): min, max over rounds
of caps   the median MB/s / (holders x one holder's cap)
wall      MB/s from spawning `vod fetch` to its exit (start-up, tracker, index included)
1st byte  spawning `vod fetch` to the first byte the bench read on its stdout"
    );
}

fn write_json(path: &Path, cfg: &Config, runs: &[Run]) -> Result<(), String> {
    let mut s = format!(
        "{{\"size\":{},\"cap_kbps\":{},\"cap_bytes_per_s\":{},\"holders\":{:?},\"rounds\":{},\
         \"runs\":[",
        cfg.size(),
        cfg.cap_kbps,
        jnum(cfg.cap_bytes().unwrap_or(f64::NAN)),
        cfg.holders,
        cfg.rounds
    );
    for (i, r) in runs.iter().enumerate() {
        let from: Vec<String> = r
            .from
            .iter()
            .map(|(who, b)| format!("{{\"holder\":\"{who}\",\"bytes\":{b}}}"))
            .collect();
        let _ = write!(
            s,
            "{}\n{{\"round\":{},\"holders\":{},\"wall_s\":{},\"fetch_s\":{},\"rate_mb_s\":{},\
             \"rate_wall_mb_s\":{},\"first_byte_s\":{},\"vod_first_byte_s\":{},\"exit_lag_s\":{},\"from\":[{}]}}",
            if i == 0 { "" } else { "," },
            r.round,
            r.holders,
            jnum(r.wall),
            jnum(r.fetch),
            jnum(rate(cfg.size(), r.fetch)),
            jnum(rate(cfg.size(), r.wall)),
            jnum(r.first_byte),
            jnum(r.vod_first_byte.unwrap_or(f64::NAN)),
            jnum(r.exit_lag.unwrap_or(f64::NAN)),
            from.join(",")
        );
    }
    s.push_str("\n],\"summary\":[");
    let mut first = true;
    for &n in &cfg.holders {
        let m = summarize(cfg, runs, n);
        if m.rounds == 0 {
            continue;
        }
        let _ = write!(
            s,
            "{}\n{{\"holders\":{},\"rounds\":{},\"rate_mb_s\":{{\"median\":{},\"min\":{},\"max\":{}}},\
             \"rate_wall_mb_s_median\":{},\"of_caps\":{},\"first_byte_s\":{{\"median\":{},\"max\":{}}}}}",
            if first { "" } else { "," },
            m.holders,
            m.rounds,
            jnum(m.rate[0]),
            jnum(m.rate[1]),
            jnum(m.rate[2]),
            jnum(m.rate_wall),
            jnum(m.of_caps),
            jnum(m.first_byte[0]),
            jnum(m.first_byte[1])
        );
        first = false;
    }
    s.push_str("\n],\"ratios\":[");
    for (i, (n, fetching, wall, per_round)) in ratios(cfg, runs).into_iter().enumerate() {
        let rounds: Vec<String> = per_round.into_iter().map(jnum).collect();
        let _ = write!(
            s,
            "{}\n{{\"holders\":{n},\"to\":{},\"median_rate\":{},\"median_rate_wall\":{},\
             \"per_round\":[{}]}}",
            if i == 0 { "" } else { "," },
            cfg.holders[0],
            jnum(fetching),
            jnum(wall),
            rounds.join(",")
        );
    }
    s.push_str("\n]}\n");
    std::fs::write(path, s).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
