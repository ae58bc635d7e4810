//! A counting semaphore whose waiters park coroutines, not threads.
//!
//! One mutex guards the whole state: the number of free permits and a queue
//! of parked waiters, each a `(ticket, Waker)`. Permits are **handed over**,
//! not put back for anyone to grab:
//!
//! - `acquire` takes a free permit only when nobody is queued (then there is
//!   never a free permit and a queue at the same time). Otherwise it queues
//!   its waker at the back and parks.
//! - Dropping a [`Permit`] pops the first queued waiter and wakes it (after
//!   the lock is released): the permit is now that waiter's. Only with
//!   nobody queued does the free count go up.
//! - A waiter that wakes looks for its ticket: gone means a permit was handed
//!   to it; still there means it woke for another reason (its deadline,
//!   shutdown, or a spurious wake-up, after which it parks again in its
//!   place with a fresh waker, since a wake gives a task a new epoch).
//!
//! So waiters get permits strictly in the order they queued, across loops and
//! threads, and a new caller cannot overtake them. The pass-the-wake-on rule
//! of `channel` takes this form: a waiter that leaves the queue without using
//! its turn (timeout, shutdown, or its coroutine unwound) does so through
//! `Place`'s `Drop`, which takes its ticket off the queue or, if a permit
//! was handed to it in the meantime, releases that permit to the next waiter.
//! A handed-over permit is never lost.
//!
//! [`Semaphore::close`] ends all waiting: parked and later callers get
//! [`AcquireError::Closed`] (a waiter checks `closed` on waking before it
//! counts itself handed over, and a closed semaphore's `release` only adds
//! to the free count, so no permit is handed to a waiter that is leaving).
//! Permits already held stay valid and are given back as usual.
//!
//! Outside a runtime the caller's thread blocks (`thread::park`), as with the
//! channel; on an event-loop thread outside any coroutine, and once the
//! runtime is shutting down, waiting fails with [`AcquireError::Shutdown`].

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::runtime::{current_waker, park_current, Waker};

/// Why [`Semaphore::acquire`] or [`Semaphore::acquire_timeout`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcquireError {
    /// No permit came free before the timeout.
    Timeout,
    /// The semaphore was closed ([`Semaphore::close`]).
    Closed,
    /// The caller may not wait: the runtime is shutting down, or this is an
    /// event-loop thread outside any coroutine.
    Shutdown,
}

impl fmt::Display for AcquireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcquireError::Timeout => f.write_str("timed out waiting for a semaphore permit"),
            AcquireError::Closed => f.write_str("the semaphore is closed"),
            AcquireError::Shutdown => {
                f.write_str("cannot wait for a semaphore permit here (runtime shutting down?)")
            }
        }
    }
}

impl std::error::Error for AcquireError {}

struct State {
    /// Free permits; never above zero while `waiters` is non-empty.
    permits: usize,
    /// Parked waiters, first come first served.
    waiters: VecDeque<(u64, Waker)>,
    next_ticket: u64,
    /// Set by [`Semaphore::close`]: no more permits are handed out.
    closed: bool,
}

struct Inner {
    state: Mutex<State>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives a permit back: to the first waiter if there is one, else to
    /// the free count.
    fn release(&self) {
        let next = {
            let mut s = self.lock();
            // Closed: the queued waiters are leaving; none is handed this.
            let next = if s.closed {
                None
            } else {
                s.waiters.pop_front()
            };
            if next.is_none() {
                s.permits += 1;
            }
            next
        };
        if let Some((_, w)) = next {
            w.wake();
        }
    }
}

/// A counting semaphore: at most `permits` holders at once. Clones share the
/// same permits; it can be used from any loop or thread.
#[derive(Clone)]
pub struct Semaphore {
    inner: Arc<Inner>,
}

/// One permit of a [`Semaphore`], given back when dropped (the longest
/// waiting caller gets it). It owns a reference to the semaphore, so it
/// can be moved into another coroutine or thread.
pub struct Permit {
    inner: Arc<Inner>,
}

impl Semaphore {
    /// A semaphore with `permits` permits.
    pub fn new(permits: usize) -> Semaphore {
        Semaphore {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    permits,
                    waiters: VecDeque::new(),
                    next_ticket: 0,
                    closed: false,
                }),
            }),
        }
    }

    /// Takes a permit, parking the calling coroutine (or blocking the
    /// calling plain thread) until one is handed to it. Waiters are served
    /// in arrival order. Fails only where the caller may not wait (see
    /// [`AcquireError::Shutdown`]).
    pub fn acquire(&self) -> Result<Permit, AcquireError> {
        self.acquire_deadline(None)
    }

    /// Like [`Semaphore::acquire`], giving up after `timeout` with
    /// [`AcquireError::Timeout`].
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<Permit, AcquireError> {
        self.acquire_deadline(Some(crate::time::deadline_after(timeout)))
    }

    /// Takes a permit if one is free (and nobody is waiting), without
    /// waiting; `None` once closed.
    pub fn try_acquire(&self) -> Option<Permit> {
        let mut s = self.inner.lock();
        if s.permits == 0 || s.closed {
            return None;
        }
        s.permits -= 1;
        Some(self.permit())
    }

    /// Refuses every further acquire and wakes every parked waiter, who
    /// then fails with [`AcquireError::Closed`]. Permits already held stay
    /// valid. Closing twice does nothing more.
    pub fn close(&self) {
        let wakers: Vec<Waker> = {
            let mut s = self.inner.lock();
            s.closed = true;
            s.waiters.iter().map(|(_, w)| w.clone()).collect()
        };
        for w in wakers {
            w.wake();
        }
    }

    /// Whether [`Semaphore::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.lock().closed
    }

    /// Permits free right now.
    pub fn available(&self) -> usize {
        self.inner.lock().permits
    }

    /// Callers parked waiting for a permit right now.
    pub fn waiting(&self) -> usize {
        self.inner.lock().waiters.len()
    }

    fn permit(&self) -> Permit {
        Permit {
            inner: self.inner.clone(),
        }
    }

    fn acquire_deadline(&self, deadline: Option<Instant>) -> Result<Permit, AcquireError> {
        let expired = || deadline.is_some_and(|d| crate::time::clock_now() >= d);
        let ticket = {
            let mut s = self.inner.lock();
            if s.closed {
                return Err(AcquireError::Closed);
            }
            if s.permits > 0 {
                s.permits -= 1;
                return Ok(self.permit());
            }
            if expired() {
                return Err(AcquireError::Timeout);
            }
            let w = current_waker().map_err(|_| AcquireError::Shutdown)?;
            let ticket = s.next_ticket;
            s.next_ticket += 1;
            s.waiters.push_back((ticket, w));
            ticket
        };
        let place = Place { sem: self, ticket };
        loop {
            let parked = park_current(deadline);
            let mut s = self.inner.lock();
            let Some(i) = s.waiters.iter().position(|(t, _)| *t == ticket) else {
                drop(s);
                return Ok(place.into_permit());
            };
            let gave_up = if s.closed {
                Some(AcquireError::Closed)
            } else if parked.is_err() {
                Some(AcquireError::Shutdown)
            } else if expired() {
                Some(AcquireError::Timeout)
            } else {
                // Spurious: wait again in the same place, with a waker for
                // the task's current epoch.
                match current_waker() {
                    Ok(w) => {
                        s.waiters[i].1 = w;
                        None
                    }
                    Err(_) => Some(AcquireError::Shutdown),
                }
            };
            drop(s);
            if let Some(e) = gave_up {
                // Leaves the queue, or passes on a permit handed over since.
                drop(place);
                return Err(e);
            }
        }
    }
}

/// A queued waiter's place. Dropped without `into_permit` (the
/// waiter gives up, or its coroutine is unwound), it leaves the queue, or
/// passes on the permit that was handed to it meanwhile.
struct Place<'a> {
    sem: &'a Semaphore,
    ticket: u64,
}

impl Place<'_> {
    /// The permit that was handed to this place.
    fn into_permit(self) -> Permit {
        let p = self.sem.permit();
        std::mem::forget(self);
        p
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let handed = {
            let mut s = self.sem.inner.lock();
            match s.waiters.iter().position(|(t, _)| *t == self.ticket) {
                Some(i) => {
                    s.waiters.remove(i);
                    false
                }
                None => true,
            }
        };
        if handed {
            self.sem.inner.release();
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.inner.release();
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.inner.lock();
        f.debug_struct("Semaphore")
            .field("available", &s.permits)
            .field("waiting", &s.waiters.len())
            .finish()
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("semaphore::Permit")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread;

    #[test]
    fn try_acquire_counts_permits() {
        let sem = Semaphore::new(2);
        let a = sem.try_acquire().expect("first");
        let b = sem.try_acquire().expect("second");
        assert!(sem.try_acquire().is_none());
        assert_eq!(sem.available(), 0);
        drop(a);
        assert_eq!(sem.available(), 1);
        drop(b);
        assert_eq!(sem.available(), 2);
    }

    #[test]
    fn a_plain_thread_blocks_until_a_permit_is_handed_to_it() {
        let sem = Semaphore::new(1);
        let held = sem.acquire().expect("free permit");
        let (got_tx, got_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let s = sem.clone();
        let t = thread::spawn(move || {
            let _p = s.acquire().expect("acquire");
            got_tx.send(()).expect("got");
            let _ = go_rx.recv();
        });
        while sem.waiting() == 0 {
            thread::yield_now();
        }
        // Handed over, not freed: nobody can take it in between.
        drop(held);
        assert!(
            sem.try_acquire().is_none(),
            "a new caller overtook the waiter"
        );
        got_rx.recv().expect("the waiter got the permit");
        assert_eq!(sem.available(), 0);
        go_tx.send(()).expect("go");
        t.join().expect("thread");
        assert_eq!(sem.available(), 1);
        assert_eq!(sem.waiting(), 0);
    }

    #[test]
    fn a_timed_out_thread_leaves_the_queue() {
        let sem = Semaphore::new(1);
        let held = sem.acquire().expect("free permit");
        assert_eq!(
            sem.acquire_timeout(Duration::from_millis(10)).map(drop),
            Err(AcquireError::Timeout)
        );
        assert_eq!(sem.waiting(), 0);
        drop(held);
        assert_eq!(sem.available(), 1);
    }

    #[test]
    fn close_wakes_waiters_with_an_error_and_held_permits_stay_valid() {
        let sem = Semaphore::new(1);
        let held = sem.acquire().expect("free permit");
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let s = sem.clone();
                thread::spawn(move || s.acquire().map(drop))
            })
            .collect();
        while sem.waiting() < 3 {
            thread::yield_now();
        }
        sem.close();
        for w in waiters {
            assert_eq!(w.join().expect("waiter"), Err(AcquireError::Closed));
        }
        assert_eq!(sem.waiting(), 0);
        assert!(sem.is_closed());
        // The permit held before the close is given back, and not handed on.
        drop(held);
        assert_eq!(sem.available(), 1);
        assert!(sem.try_acquire().is_none());
        assert_eq!(sem.acquire().map(drop), Err(AcquireError::Closed));
        assert_eq!(
            sem.acquire_timeout(Duration::from_millis(1)).map(drop),
            Err(AcquireError::Closed)
        );
    }

    #[test]
    fn threads_never_exceed_the_permits() {
        const PERMITS: usize = 3;
        let sem = Semaphore::new(PERMITS);
        let (now, max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let ts: Vec<_> = (0..8)
            .map(|_| {
                let (sem, now, max) = (sem.clone(), now.clone(), max.clone());
                thread::spawn(move || {
                    for _ in 0..200 {
                        let _p = sem.acquire().expect("acquire");
                        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                        max.fetch_max(n, Ordering::SeqCst);
                        thread::yield_now();
                        now.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in ts {
            t.join().expect("thread");
        }
        assert!(max.load(Ordering::SeqCst) <= PERMITS);
        assert_eq!(sem.available(), PERMITS);
    }
}
