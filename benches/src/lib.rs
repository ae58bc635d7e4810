//! Support code for the libnet benchmarks.
//!
//! * [`client`]: the one load client used against every echo server, so the
//!   figures for libnet and its yardsticks differ only in the server.
//! * [`procs`]: the project's programs as child processes (guards that kill
//!   and reap them, signals, ports), for `swarm-bench` and `vod-bench`.
//!
//! The echo servers themselves live in `src/bin/echo-server.rs`; the bench
//! drivers in `benches/`; the whole-program benches in `src/bin/swarm.rs`
//! and `src/bin/vod-bench.rs`.

pub mod client;
pub mod procs;
