//! test-net: libnet's network self-test over loopback.
//!
//! Runs every case of `libnet_tests::cases` (TCP, UDP, timers, thread pool,
//! runtime, channels), each in its own runtime on its own thread with a
//! deadline, so a hung case fails instead of hanging the binary. Prints one
//! line per case and a closing `N passed, M failed`; exits non-zero if any
//! case failed.
//!
//! ```text
//! test-net [--list] [--timeout SECONDS] [FILTER]
//! ```
//! FILTER keeps the cases whose name contains it (e.g. `tcp::` or `timeout`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use libnet_tests::cases::{self, Outcome};
use libnet_tests::with_deadline;

const USAGE: &str = "usage: test-net [--list] [--timeout SECONDS] [FILTER]
  --list       print the names of the cases (after FILTER) and exit
  --timeout    time limit of each case in seconds (default 60)
  FILTER       run only the cases whose name contains this text";

fn main() -> ExitCode {
    let mut list = false;
    let mut filter: Option<String> = None;
    let mut timeout = Duration::from_secs(60);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--list" => list = true,
            "--timeout" => match args.next().and_then(|v| v.parse::<u64>().ok()) {
                Some(s) if s > 0 => timeout = Duration::from_secs(s),
                _ => {
                    eprintln!("test-net: --timeout needs a positive number of seconds\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            s if s.starts_with('-') => {
                eprintln!("test-net: unknown option {s}\n{USAGE}");
                return ExitCode::from(2);
            }
            s => {
                if filter.is_some() {
                    eprintln!("test-net: only one FILTER is allowed\n{USAGE}");
                    return ExitCode::from(2);
                }
                filter = Some(s.to_string());
            }
        }
    }
    let selected: Vec<_> = cases::all()
        .into_iter()
        .filter(|c| filter.as_deref().is_none_or(|f| c.name.contains(f)))
        .collect();
    if list {
        for c in &selected {
            println!("{}", c.name);
        }
        return ExitCode::SUCCESS;
    }
    libnet_tests::quiet_expected_panics();
    // tcp::many_connections holds 2,000 sockets.
    if let Err(e) = libnet_tests::raise_fd_limit(4096) {
        eprintln!("test-net: cannot raise the open-file limit: {e}");
    }
    let (mut passed, mut failed, mut skipped) = (0usize, 0usize, 0usize);
    for case in &selected {
        let start = Instant::now();
        let run = case.run;
        let r = with_deadline(timeout, run).and_then(|r| r);
        let ms = start.elapsed().as_millis();
        match r {
            Ok(Outcome::Pass) => {
                passed += 1;
                println!("ok    {} ({ms} ms)", case.name);
            }
            Ok(Outcome::Skip(why)) => {
                skipped += 1;
                println!("skip  {}: {why}", case.name);
            }
            Err(why) => {
                failed += 1;
                println!("FAIL  {}: {why} ({ms} ms)", case.name);
            }
        }
    }
    if skipped > 0 {
        println!("({skipped} skipped)");
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
