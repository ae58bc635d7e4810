//! Runs the `test-net` self-test binary and checks its verdict.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn test_net_passes_every_case() {
    let exe = env!("CARGO_BIN_EXE_test-net");
    let start = Instant::now();
    let out = Command::new(exe).output().expect("cannot run test-net");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("test-net took {:?}\n{stdout}", start.elapsed());
    assert!(
        out.status.success(),
        "test-net failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let last = stdout.lines().last().unwrap_or_default();
    let (passed, failed) =
        parse_verdict(last).unwrap_or_else(|| panic!("bad closing line {last:?}"));
    assert_eq!(failed, 0, "{last}");
    assert!(passed > 0, "{last}");
    let case_lines = stdout.lines().filter(|l| l.starts_with("ok    ")).count();
    assert_eq!(
        case_lines, passed,
        "`ok` lines and the passed count disagree"
    );
    assert!(
        start.elapsed() < Duration::from_secs(120),
        "test-net is too slow"
    );
}

#[test]
fn test_net_lists_and_filters_cases() {
    let exe = env!("CARGO_BIN_EXE_test-net");
    let out = Command::new(exe).arg("--list").output().expect("run");
    assert!(out.status.success());
    let all: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    for area in ["tcp::", "udp::", "timer::", "pool::", "runtime::", "sync::"] {
        assert!(
            all.iter().any(|c| c.starts_with(area)),
            "no {area} case in {all:?}"
        );
    }
    let out = Command::new(exe)
        .args(["--list", "udp::"])
        .output()
        .expect("run");
    let udp: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert!(
        !udp.is_empty() && udp.iter().all(|c| c.contains("udp::")),
        "{udp:?}"
    );
    // A filtered run runs only those cases.
    let out = Command::new(exe).arg("udp::").output().expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    assert_eq!(parse_verdict(last), Some((udp.len(), 0)), "{stdout}");
    // A filter matching nothing runs nothing.
    let out = Command::new(exe).arg("no-such-case").output().expect("run");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0 passed, 0 failed"
    );
    // Bad options are rejected.
    let out = Command::new(exe).arg("--bogus").output().expect("run");
    assert_eq!(out.status.code(), Some(2));
}

/// Parses exactly `N passed, M failed`.
fn parse_verdict(line: &str) -> Option<(usize, usize)> {
    let (p, f) = line.split_once(" passed, ")?;
    let f = f.strip_suffix(" failed")?;
    Some((p.parse().ok()?, f.parse().ok()?))
}
