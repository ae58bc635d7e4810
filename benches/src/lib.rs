//! Support code for the libnet benchmarks.
//!
//! * [`client`]: the one load client used against every echo server, so the
//!   figures for libnet and its yardsticks differ only in the server.
//!
//! The echo servers themselves live in `src/bin/echo-server.rs`; the bench
//! drivers in `benches/`.

pub mod client;
