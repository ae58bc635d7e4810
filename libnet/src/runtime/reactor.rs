//! The reactor: one `mio::Poll` per loop and the coroutines waiting on it.
//!
//! Sockets register once, edge-triggered, for both directions; the token is
//! the index of their [`IoState`] in a slab. A coroutine whose operation
//! returned `WouldBlock` adds its waiter to the list for that direction and
//! parks; when `poll` reports readiness the whole list for the direction is
//! woken, and each coroutine retries its operation (see [`super::io`]).

use std::cell::RefCell;
use std::io;
use std::time::{Duration, Instant};

use mio::event::Source;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::core::{Core, LocalWaiter};
use super::wake_timer::{WakeTimer, TIMER_TOKEN};

/// Token of the cross-thread waker; never a slab index.
pub(crate) const WAKER_TOKEN: Token = Token(usize::MAX);

/// Direction of an IO wait.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Direction {
    /// Waiting to read (or accept, or receive).
    Read,
    /// Waiting to write (or connect, or send).
    Write,
}

/// Readiness bit for [`Direction::Read`].
const READ_READY: u8 = 1;
/// Readiness bit for [`Direction::Write`].
const WRITE_READY: u8 = 2;
/// Sticky: the read side saw end-of-stream or an error. Edge-triggered
/// pollers report that once, so it must never be cleared, or a read parked
/// after a short read that already consumed the last data would wait forever.
const READ_CLOSED: u8 = 4;
/// Sticky: the write side is closed or failed.
const WRITE_CLOSED: u8 = 8;

fn bit(dir: Direction) -> u8 {
    match dir {
        Direction::Read => READ_READY,
        Direction::Write => WRITE_READY,
    }
}

fn closed_bit(dir: Direction) -> u8 {
    match dir {
        Direction::Read => READ_CLOSED,
        Direction::Write => WRITE_CLOSED,
    }
}

/// Who waits on one registered socket, and what it is known to be ready for.
struct IoState {
    /// Directions not known to be exhausted: set by readiness events,
    /// cleared by `WouldBlock` or a partial stream transfer; plus the sticky
    /// closed bits, which no transfer clears.
    ready: u8,
    /// Coroutines waiting for readability.
    readers: Vec<LocalWaiter>,
    /// Coroutines waiting for writability.
    writers: Vec<LocalWaiter>,
    /// Registered for writability only while someone waits for it (see
    /// [`Reactor::register`]).
    write_on_demand: bool,
    /// Waits that asked for writability events (with `write_on_demand`).
    write_waits: u32,
}

/// See the module docs.
pub(crate) struct Reactor {
    /// The OS poller.
    poll: RefCell<Poll>,
    /// Buffer `poll` fills.
    events: RefCell<Events>,
    /// Registered sockets, indexed by token.
    ios: RefCell<Slab<IoState>>,
    /// Waiters collected from one poll, woken once all borrows are released.
    to_wake: RefCell<Vec<LocalWaiter>>,
    /// Wakes a poll without a timeout at the next timer (where the OS has one).
    wake_timer: Option<WakeTimer>,
}

impl Reactor {
    pub(crate) fn new(poll: Poll) -> Reactor {
        Reactor {
            wake_timer: WakeTimer::new(poll.registry()),
            poll: RefCell::new(poll),
            events: RefCell::new(Events::with_capacity(1024)),
            ios: RefCell::new(Slab::new()),
            to_wake: RefCell::new(Vec::new()),
        }
    }

    /// Registers `source`, edge-triggered; returns its token. With
    /// `write_on_demand` it is registered for readability only, and for
    /// writability just while a coroutine waits for it
    /// ([`Reactor::want_write`]): a UDP socket signals "writable" each time
    /// a datagram it sent leaves its buffer, which would otherwise cost the
    /// loop a wake-up per send.
    pub(crate) fn register(
        &self,
        source: &mut impl Source,
        write_on_demand: bool,
    ) -> io::Result<usize> {
        let token = self.ios.borrow_mut().insert(IoState {
            ready: READ_READY | WRITE_READY,
            readers: Vec::new(),
            writers: Vec::new(),
            write_on_demand,
            write_waits: 0,
        });
        let interests = if write_on_demand {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        };
        let res = self
            .poll
            .borrow()
            .registry()
            .register(source, Token(token), interests);
        if let Err(e) = res {
            self.ios.borrow_mut().remove(token);
            return Err(e);
        }
        Ok(token)
    }

    /// Removes `source` from the poller and forgets its waiters.
    pub(crate) fn deregister(&self, source: &mut impl Source, token: usize) {
        // Failure means the socket is already gone from the poller; nothing to undo.
        let _ = self.poll.borrow().registry().deregister(source);
        self.ios.borrow_mut().try_remove(token);
    }

    /// False when the socket is known to have nothing to read (or no room
    /// to write) until its next readiness event.
    #[inline]
    pub(crate) fn is_ready(&self, token: usize, dir: Direction) -> bool {
        self.ios
            .borrow()
            .get(token)
            .is_none_or(|io| io.ready & (bit(dir) | closed_bit(dir)) != 0)
    }

    /// Records that the socket is exhausted in `dir` until its next event.
    #[inline]
    pub(crate) fn clear_ready(&self, token: usize, dir: Direction) {
        if let Some(io) = self.ios.borrow_mut().get_mut(token) {
            io.ready &= !bit(dir);
        }
    }

    /// A coroutine is about to wait for `token` to become writable: turns
    /// writability events on if the socket gets them only on demand.
    /// Returns whether the caller must call [`Reactor::done_write`] after.
    pub(crate) fn want_write(&self, source: &mut impl Source, token: usize) -> io::Result<bool> {
        let mut ios = self.ios.borrow_mut();
        let Some(io) = ios.get_mut(token).filter(|io| io.write_on_demand) else {
            return Ok(false);
        };
        if io.write_waits == 0 {
            // Re-arming reports the current state, so a socket that became
            // writable before this call still raises its event.
            self.poll.borrow().registry().reregister(
                source,
                Token(token),
                Interest::READABLE | Interest::WRITABLE,
            )?;
        }
        io.write_waits += 1;
        Ok(true)
    }

    /// Ends a wait [`Reactor::want_write`] counted; the last one turns
    /// writability events off again.
    pub(crate) fn done_write(&self, source: &mut impl Source, token: usize) {
        let mut ios = self.ios.borrow_mut();
        let Some(io) = ios.get_mut(token) else { return };
        io.write_waits = io.write_waits.saturating_sub(1);
        if io.write_waits == 0 {
            // Failure leaves writability on: more wake-ups, nothing lost.
            let _ =
                self.poll
                    .borrow()
                    .registry()
                    .reregister(source, Token(token), Interest::READABLE);
        }
    }

    /// Forgets the waiters of a token whose socket is being closed.
    pub(crate) fn forget(&self, token: usize) {
        self.ios.borrow_mut().try_remove(token);
    }

    /// Records that `w` waits on `token` in direction `dir`.
    pub(crate) fn add_waiter(&self, token: usize, dir: Direction, w: LocalWaiter) {
        let mut ios = self.ios.borrow_mut();
        let Some(io) = ios.get_mut(token) else {
            return;
        };
        let list = match dir {
            Direction::Read => &mut io.readers,
            Direction::Write => &mut io.writers,
        };
        // A task waits on one thing at a time: any older entry of it is stale.
        list.retain(|o| o.key != w.key);
        list.push(w);
    }

    /// Polls the OS once and wakes the coroutines whose sockets are ready.
    pub(crate) fn poll(&self, core: &Core, timeout: Option<Duration>) -> io::Result<()> {
        let mut events = self.events.borrow_mut();
        match self.poll.borrow_mut().poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let mut to_wake = self.to_wake.borrow_mut();
        {
            let mut ios = self.ios.borrow_mut();
            for ev in events.iter() {
                if ev.token() == WAKER_TOKEN || ev.token() == TIMER_TOKEN {
                    continue;
                }
                let Some(io) = ios.get_mut(ev.token().0) else {
                    continue;
                };
                let failed = ev.is_error();
                if failed || ev.is_read_closed() {
                    io.ready |= READ_CLOSED;
                }
                if failed || ev.is_write_closed() {
                    io.ready |= WRITE_CLOSED;
                }
                if failed || ev.is_readable() || ev.is_read_closed() {
                    io.ready |= READ_READY;
                    to_wake.append(&mut io.readers);
                }
                if failed || ev.is_writable() || ev.is_write_closed() {
                    io.ready |= WRITE_READY;
                    to_wake.append(&mut io.writers);
                }
            }
        }
        for w in to_wake.drain(..) {
            core.wake(w);
        }
        Ok(())
    }

    /// Makes sure a poll without a timeout wakes by `at` (after `now`);
    /// false if this poller has no wake timer (see `super::wake_timer`):
    /// then the caller polls with a timeout.
    pub(crate) fn wake_by(&self, at: Instant, now: Instant) -> bool {
        self.wake_timer.as_ref().is_some_and(|t| t.wake_by(at, now))
    }

    /// Whether the wake timer is already armed to wake a poll by `at`
    /// (an armed time that has passed counts: its event is due).
    pub(crate) fn wakes_by(&self, at: Instant) -> bool {
        self.wake_timer.as_ref().is_some_and(|t| t.armed_by(at))
    }

    /// Tells the wake timer the time after a poll.
    pub(crate) fn polled_at(&self, now: Instant) {
        if let Some(t) = &self.wake_timer {
            t.passed(now);
        }
    }

    /// Registry used to create this loop's cross-thread waker.
    pub(crate) fn waker(poll: &Poll) -> io::Result<mio::Waker> {
        mio::Waker::new(poll.registry(), WAKER_TOKEN)
    }
}
