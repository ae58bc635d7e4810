//! Running the project's programs as child processes, for the bench
//! binaries that measure them whole (`swarm-bench`, `vod-bench`).
//!
//! * [`stop_flag`] first: SIGINT and SIGTERM set the flag it returns (a
//!   second signal exits at once); every wait here takes it and fails with
//!   `"interrupted"` once it is set.
//! * [`bins_dir`] finds the programs (beside the bench by default).
//! * [`check_ports`] before starting a run, for a clear "port in use".
//! * [`Proc::start`] (output in files) or [`Proc::start_piped`] (stdout to
//!   the bench): a guard that kills and reaps the child when dropped, so
//!   every way out — errors and panics included — leaves no process behind.
//!   [`Proc::wait_line`] waits for a program to say it is up;
//!   [`interrupt`] and [`Proc::wait_exit`] stop programs the way Ctrl-C does.
//!
//! Errors are `String`s worded for the bench's user.

use std::fs::File;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// A flag set by SIGINT or SIGTERM; a second signal while it is set exits
/// the process at once (status 130).
pub fn stop_flag() -> Result<Arc<AtomicBool>, String> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Registered first, so it sees the flag before this signal sets it.
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&stop))
            .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&stop)))
            .map_err(|e| format!("cannot handle signals: {e}"))?;
    }
    Ok(stop)
}

/// The directory holding the programs `names`: `given`, else the one of
/// the running executable. Each program is checked; a missing one is an
/// error naming it and `build`, the command that builds them.
pub fn bins_dir(given: Option<&Path>, names: &[&str], build: &str) -> Result<PathBuf, String> {
    let dir = match given {
        Some(d) => d.to_path_buf(),
        None => std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf))
            .ok_or("cannot tell this program's directory; give --bins")?,
    };
    for b in names {
        if !dir.join(b).is_file() {
            return Err(format!(
                "{} is missing: build the programs first with `{build}`, or give --bins DIR",
                dir.join(b).display()
            ));
        }
    }
    Ok(dir)
}

/// `127.0.0.1:port`.
pub fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// A loopback port a run needs, for [`check_ports`].
pub enum Port<'a> {
    /// A TCP listener, described as `.0` in errors.
    Tcp(&'a str, u16),
    /// A UDP socket.
    Udp(&'a str, u16),
}

/// Fails with a clear message (which port, whose, and `--base-port`) if one
/// of `ports` is taken on 127.0.0.1.
pub fn check_ports(ports: &[Port]) -> Result<(), String> {
    let busy = |what: &str, port: u16, e: std::io::Error| {
        format!("{what} port 127.0.0.1:{port} is in use ({e}); free it or pick another --base-port")
    };
    for p in ports {
        match *p {
            Port::Tcp(what, port) => {
                drop(TcpListener::bind(("127.0.0.1", port)).map_err(|e| busy(what, port, e))?)
            }
            Port::Udp(what, port) => {
                drop(UdpSocket::bind(("127.0.0.1", port)).map_err(|e| busy(what, port, e))?)
            }
        }
    }
    Ok(())
}

/// Sleeps `d` in short steps; an error once the bench is told to stop.
pub fn pause(d: Duration, stop: &AtomicBool) -> Result<(), String> {
    let end = Instant::now() + d;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err("interrupted".into());
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// A child process with its stderr (and stdout, unless piped to the bench)
/// in files; killed and reaped when dropped.
pub struct Proc {
    /// Its name in messages and file names.
    pub name: String,
    child: Child,
    /// `<logs>/<name>.out`; `None` when stdout is piped to the bench.
    stdout: Option<PathBuf>,
    /// `<logs>/<name>.err`.
    pub stderr: PathBuf,
    /// Set once it has been reaped.
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` with stdin closed and stdout and stderr in
    /// `<logs>/<name>.out` and `.err`.
    pub fn start(name: &str, cmd: &mut Command, logs: &Path) -> Result<Proc, String> {
        let stdout = logs.join(format!("{name}.out"));
        let out = create(&stdout)?;
        let mut p = Proc::spawn(name, cmd.stdout(out), logs)?;
        p.stdout = Some(stdout);
        Ok(p)
    }

    /// Starts `cmd` with stdin closed, stderr in `<logs>/<name>.err` and
    /// stdout a pipe, returned for the bench to read.
    pub fn start_piped(
        name: &str,
        cmd: &mut Command,
        logs: &Path,
    ) -> Result<(Proc, ChildStdout), String> {
        let mut p = Proc::spawn(name, cmd.stdout(Stdio::piped()), logs)?;
        // Piped just above, so it is there.
        let out = p.child.stdout.take().expect("stdout is piped");
        Ok((p, out))
    }

    fn spawn(name: &str, cmd: &mut Command, logs: &Path) -> Result<Proc, String> {
        let stderr = logs.join(format!("{name}.err"));
        let child = cmd
            .stdin(Stdio::null())
            .stderr(create(&stderr)?)
            .spawn()
            .map_err(|e| format!("{name} does not start: {e}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            stdout: None,
            stderr,
            status: None,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it has exited (it is then reaped).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// The last `n` lines of its stderr, JSON status lines (`{...}`) left
    /// out.
    pub fn tail(&self, n: usize) -> String {
        let all = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = all.lines().filter(|l| !l.starts_with('{')).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// An error saying that it exited with `status`, and its last words.
    pub fn died(&self, status: ExitStatus) -> String {
        format!(
            "{} exited ({status}); the end of its stderr ({}):\n{}",
            self.name,
            self.stderr.display(),
            self.tail(15)
        )
    }

    /// Waits up to `limit` for a complete output line (stdout, unless
    /// piped, or stderr) containing `text`, and returns it. An error if it
    /// exits first, or on `stop`.
    pub fn wait_line(
        &mut self,
        text: &str,
        limit: Duration,
        stop: &AtomicBool,
    ) -> Result<String, String> {
        let end = Instant::now() + limit;
        loop {
            for path in self.stdout.iter().chain([&self.stderr]) {
                let all = std::fs::read_to_string(path).unwrap_or_default();
                if let Some(l) = complete_lines(&all).find(|l| l.contains(text)) {
                    return Ok(l.to_string());
                }
            }
            if let Some(s) = self.exited() {
                return Err(self.died(s));
            }
            if Instant::now() >= end {
                return Err(format!(
                    "{} did not print {text:?} within {limit:?}; the end of its stderr:\n{}",
                    self.name,
                    self.tail(15)
                ));
            }
            pause(Duration::from_millis(50), stop)?;
        }
    }

    /// Waits until `end` for it to exit; kills it then. `None` if it had
    /// to be killed.
    pub fn wait_exit(&mut self, end: Instant) -> Option<ExitStatus> {
        while Instant::now() < end {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.exited().or_else(|| {
            self.kill();
            None
        })
    }

    /// Kills (SIGKILL) and reaps it, unless it is reaped already.
    pub fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn create(p: &Path) -> Result<File, String> {
    File::create(p).map_err(|e| format!("cannot create {}: {e}", p.display()))
}

/// The lines of `text` that end with a newline (the last one may still be
/// being written).
pub fn complete_lines(text: &str) -> std::str::Lines<'_> {
    let done = text.rfind('\n').map_or("", |at| &text[..at]);
    done.lines()
}

/// Sends SIGINT (what Ctrl-C sends) to those of `procs` still running, with
/// one `kill`.
pub fn interrupt<'a>(procs: impl IntoIterator<Item = &'a mut Proc>) {
    let pids: Vec<String> = procs
        .into_iter()
        .filter_map(|p| p.exited().is_none().then(|| p.pid().to_string()))
        .collect();
    if !pids.is_empty() {
        let _ = Command::new("kill").arg("-INT").args(&pids).status();
    }
}

/// The nearest-rank `q` quantile of `v` (NaN if empty); sorts `v`.
pub fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// `x` as a JSON number, `null` for NaN or infinity.
pub fn jnum(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        "null".into()
    }
}

/// A bench's `main`: its checked flags from `parse` (an error: status 2),
/// then `run` (an error: status 1), each error on stderr after `name`.
pub fn bench_main<C>(
    name: &str,
    parse: impl FnOnce() -> Result<C, String>,
    run: impl FnOnce(&C) -> Result<(), String>,
) -> std::process::ExitCode {
    let cfg = match parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(&cfg) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
