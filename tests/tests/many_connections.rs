//! 10,000 concurrent coroutines on ONE loop, each holding a loopback TCP
//! connection to an echo server on the same loop: each sends a message and
//! reads the echo, then every connection stays idle (both ends blocked in
//! `read`) while we measure the memory each idle connection costs.
//!
//! This file holds a single test on purpose: it counts the process's open
//! descriptors, which a concurrent test would disturb.

use std::time::Duration;

use libnet_tests::{bounded, idle_connections, open_fds, raise_fd_limit};

/// Connections wanted.
const WANT: usize = 10_000;
/// Descriptors kept for what the runtime and the test open besides the
/// connections (listener, pollers, wakers, /proc reads).
const SPARE_FDS: usize = 32;
/// The bound asserted, generous so the test is not flaky (the goal is 16 KiB).
const MAX_BYTES_PER_CONNECTION: f64 = 64.0 * 1024.0;
/// The goal reported against.
const GOAL_BYTES_PER_CONNECTION: f64 = 16.0 * 1024.0;

#[test]
fn ten_thousand_idle_connections_on_one_loop() {
    let open_now = open_fds().expect("count fds");
    let needed = (2 * WANT + open_now + SPARE_FDS) as u64;
    let limit = raise_fd_limit(needed).expect("cannot read or raise RLIMIT_NOFILE");
    let n = if limit >= needed {
        WANT
    } else {
        let fit = (limit as usize).saturating_sub(open_now + SPARE_FDS) / 2;
        eprintln!(
            "!!!!!!!! RLIMIT_NOFILE is {limit} and cannot be raised to {needed}: testing {fit} \
             connections instead of {WANT} (run as root or raise the hard limit) !!!!!!!!"
        );
        fit
    };
    assert!(
        n >= 1000,
        "only {n} connections fit under RLIMIT_NOFILE={limit}; refusing to pass"
    );
    let fds_before = open_fds().expect("count fds");
    let stats = bounded(Duration::from_secs(240), move || {
        idle_connections(n, 256 * 1024, Duration::from_secs(180))
    })
    .unwrap_or_else(|e| panic!("{n} idle connections: {e}"));
    let fds_after = open_fds().expect("count fds");
    let per = stats.bytes_per_connection();
    eprintln!(
        "{} idle connections on one loop: set up and echoed in {:?}; RSS {:.1} MiB -> {:.1} MiB; \
         {:.2} KiB per idle connection (client + server coroutine stacks and sockets; goal <= {:.0} KiB){}; \
         shutdown unwound {} coroutines in {:?}",
        stats.connections,
        stats.setup,
        stats.rss_before as f64 / (1 << 20) as f64,
        stats.rss_idle as f64 / (1 << 20) as f64,
        per / 1024.0,
        GOAL_BYTES_PER_CONNECTION / 1024.0,
        if per <= GOAL_BYTES_PER_CONNECTION { "" } else { " -- ABOVE THE GOAL" },
        2 * stats.connections,
        stats.shutdown,
    );
    assert_eq!(stats.connections, n);
    assert!(
        stats.fds_idle >= fds_before + 2 * n,
        "{} descriptors open with {n} connections idle (had {fds_before} before)",
        stats.fds_idle
    );
    assert!(
        fds_after <= fds_before + 8,
        "descriptors leaked: {fds_before} before the runtime, {fds_after} after it stopped"
    );
    assert!(
        per < MAX_BYTES_PER_CONNECTION,
        "{:.1} KiB per idle connection (bound {} KiB)",
        per / 1024.0,
        MAX_BYTES_PER_CONNECTION / 1024.0
    );
    assert!(
        stats.shutdown < Duration::from_secs(30),
        "shutdown took {:?}",
        stats.shutdown
    );
}
