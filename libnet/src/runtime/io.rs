//! The one helper every blocking socket operation goes through.
//!
//! [`IoSource::do_io`] tries the non-blocking operation first and only on
//! `WouldBlock` waits for readiness, then tries again:
//! - inside a coroutine, it registers the socket with the current loop's
//!   reactor (lazily, on the first wait), adds the coroutine as a waiter for
//!   the direction, and parks it (with a timer if the operation has a timeout);
//! - on a plain thread (no runtime), it blocks the thread on a private poller
//!   until the socket is ready or the timeout passes;
//! - on a loop thread outside a coroutine, it returns an error rather than
//!   stall every coroutine of the loop.

use std::cell::{OnceCell, RefCell};
use std::io;
use std::marker::PhantomData;
use std::rc::Rc;
use std::time::{Duration, Instant};

use std::os::fd::AsRawFd;

use mio::event::Source;

use super::core::{self, Core};
use super::reactor::Direction;

/// A socket's registration with one loop.
struct Registration {
    /// The loop the socket is registered with.
    core: Rc<Core>,
    /// Its token in that loop's reactor.
    token: usize,
}

/// A mio socket plus its lazy registration. `!Send`: a registered socket
/// belongs to its loop's thread (move sockets between loops as std sockets).
pub(crate) struct IoSource<S: Source + AsRawFd> {
    /// The non-blocking socket.
    source: S,
    /// Set on the first wait inside a coroutine.
    reg: OnceCell<Registration>,
    /// Poll for writability only while a coroutine waits for it (UDP).
    write_on_demand: bool,
    /// Keeps the type on its thread.
    _not_send: PhantomData<Rc<()>>,
}

/// The error an operation gets when its timeout expires.
pub(crate) fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "operation timed out")
}

impl<S: Source + AsRawFd> IoSource<S> {
    pub(crate) fn new(source: S) -> IoSource<S> {
        IoSource {
            source,
            reg: OnceCell::new(),
            write_on_demand: false,
            _not_send: PhantomData,
        }
    }

    /// Like [`IoSource::new`], but the loop polls for writability only
    /// while a coroutine waits for it (see `Reactor::register`).
    pub(crate) fn with_write_on_demand(source: S) -> IoSource<S> {
        IoSource {
            write_on_demand: true,
            ..IoSource::new(source)
        }
    }

    /// The wrapped socket.
    pub(crate) fn get(&self) -> &S {
        &self.source
    }

    /// Takes the socket back out, removing it from the poller (it stays open).
    pub(crate) fn into_inner(mut self) -> S {
        if let Some(reg) = self.reg.take() {
            reg.core
                .reactor
                .deregister(&mut SourceRef(&self.source), reg.token);
            // `reg`'s Drop frees nothing twice: forget() ignores unknown tokens.
        }
        self.source
    }

    /// Runs `op` until it does not return `WouldBlock`, waiting for readiness
    /// in `dir` in between; fails with `TimedOut` once `timeout` has passed.
    pub(crate) fn do_io<R>(
        &self,
        dir: Direction,
        timeout: Option<Duration>,
        op: impl FnMut(&S) -> io::Result<R>,
    ) -> io::Result<R> {
        self.do_io_with(dir, timeout, op, |_| false)
    }

    /// [`IoSource::do_io`] for a byte-stream transfer of `len` bytes: a
    /// partial transfer shows the socket is drained (read) or full (write),
    /// so the next call in that direction waits for the next readiness edge
    /// instead of spending a syscall on a certain `WouldBlock`. Sound for
    /// stream sockets with edge-triggered epoll and kqueue: new data or new
    /// buffer space always raises a fresh event.
    pub(crate) fn do_io_stream(
        &self,
        dir: Direction,
        timeout: Option<Duration>,
        len: usize,
        op: impl FnMut(&S) -> io::Result<usize>,
    ) -> io::Result<usize> {
        self.do_io_with(dir, timeout, op, |&n| n > 0 && n < len)
    }

    /// One attempt, never waiting: `WouldBlock` at once, without a
    /// syscall, when the socket is known to be exhausted in `dir` (a
    /// `WouldBlock` from the kernel marks it so; the next readiness event
    /// clears the mark). Outside the socket's own loop it just tries.
    pub(crate) fn try_io<R>(
        &self,
        dir: Direction,
        op: impl FnOnce(&S) -> io::Result<R>,
    ) -> io::Result<R> {
        self.try_io_with(dir, op, |_| false)
    }

    /// [`IoSource::try_io`] where a success can also tell that the socket is
    /// now exhausted (e.g. `recvmmsg` returned fewer datagrams than it had
    /// room for), which saves the syscall that would only say `WouldBlock`.
    /// Safe with edge-triggered polling: anything arriving after `op` raises
    /// a new event, which sets the readiness again.
    pub(crate) fn try_io_with<R>(
        &self,
        dir: Direction,
        op: impl FnOnce(&S) -> io::Result<R>,
        exhausted: impl FnOnce(&R) -> bool,
    ) -> io::Result<R> {
        let reg = self
            .reg
            .get()
            .filter(|r| r.core.is_current_coroutine_loop());
        if reg.is_some_and(|r| !r.core.reactor.is_ready(r.token, dir)) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let r = op(&self.source);
        if let Some(reg) = reg {
            let done = match &r {
                Ok(v) => exhausted(v),
                Err(e) => e.kind() == io::ErrorKind::WouldBlock,
            };
            if done {
                reg.core.reactor.clear_ready(reg.token, dir);
            }
        }
        r
    }

    fn do_io_with<R>(
        &self,
        dir: Direction,
        timeout: Option<Duration>,
        mut op: impl FnMut(&S) -> io::Result<R>,
        exhausted: impl Fn(&R) -> bool,
    ) -> io::Result<R> {
        let mut deadline: Option<Instant> = None;
        let mut may_skip = true;
        loop {
            // Only a registered socket has readiness state, and only a coroutine
            // of its own loop may act on it (anything else just tries).
            let reg = self
                .reg
                .get()
                .filter(|r| r.core.is_current_coroutine_loop());
            if may_skip && reg.is_some_and(|r| !r.core.reactor.is_ready(r.token, dir)) {
                // Known exhausted: go straight to waiting for the next edge.
            } else {
                match op(&self.source) {
                    Ok(r) => {
                        if let Some(reg) = reg {
                            if exhausted(&r) {
                                reg.core.reactor.clear_ready(reg.token, dir);
                            }
                        }
                        return Ok(r);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if let Some(reg) = reg {
                            reg.core.reactor.clear_ready(reg.token, dir);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            // The deadline starts at the first wait, so the fast path never reads the clock.
            if deadline.is_none() {
                if let Some(t) = timeout {
                    deadline = Some(crate::time::deadline_after(t));
                }
            }
            self.wait(dir, deadline)?;
            may_skip = false;
        }
    }

    /// Waits once for readiness in `dir` (may return spuriously). Any wake
    /// of the calling coroutine also ends the wait, so a driver can wait for
    /// "readable, or kicked by another coroutine, or `deadline`" at once.
    pub(crate) fn wait(&self, dir: Direction, deadline: Option<Instant>) -> io::Result<()> {
        if let Some(d) = deadline {
            if crate::time::clock_now() >= d {
                return Err(timed_out());
            }
        }
        self.wait_until(dir, deadline)
    }

    /// [`IoSource::wait`] for a caller that knows `deadline` lies ahead (it
    /// just read the clock): no clock read, and reaching `deadline` ends the
    /// wait with `Ok` like any other wake-up.
    pub(crate) fn wait_until(&self, dir: Direction, deadline: Option<Instant>) -> io::Result<()> {
        match core::current() {
            Some(core) => {
                if !core::in_coroutine() {
                    return Err(crate::runtime::outside_coroutine_error());
                }
                if core.stopping() {
                    return Err(core::shutdown_error());
                }
                let token = self.token_for(&core)?;
                let _write = if dir == Direction::Write {
                    WriteInterest::new(&core, &self.source, token)?
                } else {
                    None
                };
                core.reactor.add_waiter(token, dir, core.waiter());
                core.park_until(deadline)
            }
            None => wait_on_thread(&self.source, dir, deadline),
        }
    }

    /// This socket's token in `core`'s reactor, registering it on first use.
    fn token_for(&self, core: &Rc<Core>) -> io::Result<usize> {
        if let Some(reg) = self.reg.get() {
            if !Rc::ptr_eq(&reg.core, core) {
                return Err(io::Error::other(
                    "libnet: socket is registered with another event loop",
                ));
            }
            return Ok(reg.token);
        }
        // `register` needs `&mut S`; the source is only borrowed shared here,
        // so register through a by-fd view of the same socket.
        let token = core
            .reactor
            .register(&mut SourceRef(&self.source), self.write_on_demand)?;
        let _ = self.reg.set(Registration {
            core: core.clone(),
            token,
        });
        Ok(token)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Closing the descriptor takes it out of the poller; only the
        // reactor's bookkeeping needs freeing.
        self.core.reactor.forget(self.token);
    }
}

/// Writability events for one wait of a write-on-demand socket; dropping
/// it (also when shutdown unwinds the waiting coroutine) turns them off.
struct WriteInterest<'a, S: AsRawFd> {
    core: &'a Core,
    source: &'a S,
    token: usize,
}

impl<'a, S: AsRawFd> WriteInterest<'a, S> {
    fn new(core: &'a Core, source: &'a S, token: usize) -> io::Result<Option<Self>> {
        let counted = core.reactor.want_write(&mut SourceRef(source), token)?;
        // `then`, not `then_some`: a guard built and dropped when nothing was
        // counted would turn writability events off for a socket that needs them.
        Ok(counted.then(|| WriteInterest {
            core,
            source,
            token,
        }))
    }
}

impl<S: AsRawFd> Drop for WriteInterest<'_, S> {
    fn drop(&mut self) {
        self.core
            .reactor
            .done_write(&mut SourceRef(self.source), self.token);
    }
}

/// Registers a shared reference of a socket with mio, which wants `&mut`.
///
/// The poller only needs the socket's file descriptor; mio's own sockets
/// implement `Source` for `&mut self` even though registration does not
/// mutate them, so this forwards through the raw descriptor.
struct SourceRef<'a, S>(&'a S);

impl<S: AsRawFd> Source for SourceRef<'_, S> {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        mio::unix::SourceFd(&self.0.as_raw_fd()).register(registry, token, interests)
    }
    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        mio::unix::SourceFd(&self.0.as_raw_fd()).reregister(registry, token, interests)
    }
    fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        mio::unix::SourceFd(&self.0.as_raw_fd()).deregister(registry)
    }
}

thread_local! {
    /// A private poller for plain threads that block on libnet sockets.
    static THREAD_POLL: RefCell<Option<(mio::Poll, mio::Events)>> = const { RefCell::new(None) };
}

/// Blocks this (non-loop) thread until `source` is ready in `dir` or `deadline` passes.
fn wait_on_thread<S: AsRawFd>(
    source: &S,
    dir: Direction,
    deadline: Option<Instant>,
) -> io::Result<()> {
    let fd = source.as_raw_fd();
    let interest = match dir {
        Direction::Read => mio::Interest::READABLE,
        Direction::Write => mio::Interest::WRITABLE,
    };
    THREAD_POLL.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some((mio::Poll::new()?, mio::Events::with_capacity(4)));
        }
        let (poll, events) = slot.as_mut().expect("initialised above");
        let mut src = mio::unix::SourceFd(&fd);
        poll.registry()
            .register(&mut src, mio::Token(0), interest)?;
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let res = poll.poll(events, timeout);
        let _ = poll.registry().deregister(&mut src);
        match res {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            r => r,
        }
    })
}
