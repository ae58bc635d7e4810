//! What the live binaries (`edge`, `source`, `client`) share: starting the
//! runtime, signals, printing without blocking a loop, the wall clock the
//! stream's timestamps use, and the source's push handshake with the edge.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libnet::sync::{channel, Receiver};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Audio packets are grouped into fragments of about this much sound
/// (video goes a frame per fragment).
pub const AUDIO_GROUP: Duration = Duration::from_millis(100);

/// How long a node waits for the tracker's TCP connection.
pub const TRACKER_TIMEOUT: Duration = Duration::from_secs(5);

/// Microseconds since the Unix epoch: the fragments' timestamps (the
/// source's clock), from which viewers measure source-to-viewer latency.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// SIGINT and SIGTERM, delivered to the loop through a channel by a plain
/// thread. Call before the runtime starts.
pub fn signals() -> Result<Receiver<i32>, String> {
    let mut signals =
        Signals::new([SIGINT, SIGTERM]).map_err(|e| format!("cannot handle signals: {e}"))?;
    let (tx, rx) = channel::<i32>(4);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for s in signals.forever() {
                // A plain thread: the send blocks this thread only.
                if tx.send(s).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(rx)
}

/// The name of a signal number caught by [`signals`].
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// Runs `main` as the first coroutine of a one-loop runtime and maps the
/// outcome to an exit code, printing errors as `NAME: error: ...`.
pub fn run_main(name: &str, main: impl FnOnce() -> Result<(), String> + 'static) -> ExitCode {
    let rt = match libnet::Runtime::builder().loops(1).build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: error: cannot start the libnet runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.run(main) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("{name}: error: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{name}: error: the runtime stopped: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A program's `main`: reports a flag error (exit 2), catches signals,
/// and runs `run` on the runtime with the setup and the signals.
pub fn start<S: 'static>(
    name: &str,
    setup: Result<S, String>,
    run: impl FnOnce(S, &Receiver<i32>) -> Result<(), String> + 'static,
) -> ExitCode {
    let setup = match setup {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{name}: error: {e}");
            return ExitCode::from(2);
        }
    };
    let sig = match signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{name}: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    run_main(name, move || run(setup, &sig))
}

/// Prints a line on stderr from a pool thread (a loop thread must not block
/// on a pipe); returns once it is written.
pub fn say(line: String) {
    libnet::spawn_blocking(move || {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
        let _ = err.flush();
    });
}

/// Compares two keys in time independent of where they differ.
pub fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
