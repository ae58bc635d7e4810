//! libnet: an event-loop networking library in blocking style.
//!
//! Each event loop is a thread with a mio reactor, a timer wheel and a FIFO
//! queue of stackful coroutines (corosensei). Socket calls look blocking, as
//! in std, but park only the calling coroutine; the loop runs others until
//! the socket is ready. A runtime runs several loops; a coroutine stays on
//! the loop it was spawned on.
//!
//! ```no_run
//! use std::io::{Read, Write};
//! use libnet::net::{serve, Spread, TcpListener};
//!
//! libnet::run(|| {
//!     let listener = TcpListener::bind("127.0.0.1:7000")?;
//!     serve(&listener, Spread::RoundRobin, |mut conn| {
//!         let mut buf = [0u8; 4096];
//!         while let Ok(n @ 1..) = conn.read(&mut buf) {
//!             if conn.write_all(&buf[..n]).is_err() {
//!                 break;
//!             }
//!         }
//!     })
//! })
//! .expect("runtime stopped")
//! .expect("server failed");
//! ```
//!
//! Modules: [`runtime`] (loops, coroutines, join handles), [`time`] (sleep,
//! intervals, callback timers), [`sync`] (channels, semaphore), [`net`] (TCP, UDP,
//! socket options). See `docs/runtime.md` for how waiting and waking work.
#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[cfg(not(unix))]
compile_error!("libnet currently supports Unix targets (epoll, kqueue) only");

pub mod nat;
pub mod net;
pub mod p2p;
pub mod rand;
pub mod rudp;
pub mod runtime;
pub mod sync;
pub mod time;

pub use runtime::pool::spawn_blocking;
pub use runtime::{
    current_loop, exit, handle, join_all, loops, spawn, spawn_on, yield_now, Builder, Exit, Handle,
    JoinHandle, Runtime,
};

/// Runs `main` on a runtime with default settings (one loop per core);
/// see [`Runtime::run`].
pub fn run<T: 'static>(main: impl FnOnce() -> T + 'static) -> Result<T, Exit> {
    match Runtime::builder().build() {
        Ok(rt) => rt.run(main),
        Err(e) => panic!("libnet: cannot create the runtime: {e}"),
    }
}
