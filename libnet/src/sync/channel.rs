//! A bounded MPMC channel whose blocking ends park coroutines, not threads.
//!
//! Values travel through a `crossbeam_channel` (lock-free, bounded); only the
//! waiting is ours. A receiver that finds the channel empty enqueues its
//! waker, re-checks (so a value sent in between is not missed), and parks; a
//! sender wakes the first queued receiver after each send, and a receiver
//! wakes the first queued sender after each receive. A woken party that
//! gives up without taking its turn passes the wake on.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel as cb;

use super::{RecvError, RecvTimeoutError, SendError, TrySendError};
use crate::runtime::{current_waker, park_current, Waker};

/// Parked parties of one side, in arrival order.
struct WaitList {
    /// (ticket, waker) pairs.
    list: Mutex<VecDeque<(u64, Waker)>>,
    /// Length of `list`, readable without the lock.
    len: AtomicUsize,
}

impl WaitList {
    fn new() -> WaitList {
        WaitList {
            list: Mutex::new(VecDeque::new()),
            len: AtomicUsize::new(0),
        }
    }

    fn push(&self, ticket: u64, w: Waker) {
        let mut l = self.list.lock().unwrap_or_else(|e| e.into_inner());
        l.push_back((ticket, w));
        self.len.store(l.len(), Ordering::SeqCst);
    }

    /// Removes `ticket`; false if a waker already took it off the list.
    fn remove(&self, ticket: u64) -> bool {
        let mut l = self.list.lock().unwrap_or_else(|e| e.into_inner());
        let found = match l.iter().position(|(t, _)| *t == ticket) {
            Some(i) => {
                l.remove(i);
                true
            }
            None => false,
        };
        self.len.store(l.len(), Ordering::SeqCst);
        found
    }

    /// Wakes the first parked party, if any.
    fn wake_one(&self) {
        fence(Ordering::SeqCst);
        if self.len.load(Ordering::SeqCst) == 0 {
            return;
        }
        let w = {
            let mut l = self.list.lock().unwrap_or_else(|e| e.into_inner());
            let w = l.pop_front();
            self.len.store(l.len(), Ordering::SeqCst);
            w
        };
        if let Some((_, w)) = w {
            w.wake();
        }
    }

    /// Wakes everyone (the other side closed).
    fn wake_all(&self) {
        let all: Vec<_> = {
            let mut l = self.list.lock().unwrap_or_else(|e| e.into_inner());
            self.len.store(0, Ordering::SeqCst);
            l.drain(..).collect()
        };
        for (_, w) in all {
            w.wake();
        }
    }
}

/// State shared by all ends of one channel.
struct Shared {
    /// Parked receivers.
    receivers: WaitList,
    /// Parked senders.
    senders: WaitList,
    /// Tickets for wait-list entries.
    next_ticket: AtomicU64,
    /// Live `Sender`s.
    sender_count: AtomicUsize,
    /// Live `Receiver`s.
    receiver_count: AtomicUsize,
}

impl Shared {
    fn ticket(&self) -> u64 {
        self.next_ticket.fetch_add(1, Ordering::Relaxed)
    }
}

/// The sending end; clone it for more producers.
pub struct Sender<T> {
    /// `None` only while dropping, so the receivers see the disconnect
    /// before they are woken.
    tx: Option<cb::Sender<T>>,
    shared: Arc<Shared>,
}

/// The receiving end; clone it for more consumers.
pub struct Receiver<T> {
    /// `None` only while dropping (see `Sender::tx`).
    rx: Option<cb::Receiver<T>>,
    shared: Arc<Shared>,
}

/// A channel holding at most `capacity` values (at least 1).
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = cb::bounded(capacity.max(1));
    let shared = Arc::new(Shared {
        receivers: WaitList::new(),
        senders: WaitList::new(),
        next_ticket: AtomicU64::new(0),
        sender_count: AtomicUsize::new(1),
        receiver_count: AtomicUsize::new(1),
    });
    (
        Sender {
            tx: Some(tx),
            shared: shared.clone(),
        },
        Receiver {
            rx: Some(rx),
            shared,
        },
    )
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("channel::Sender")
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("channel::Receiver")
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.sender_count.fetch_add(1, Ordering::Relaxed);
        Sender {
            tx: self.tx.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        self.shared.receiver_count.fetch_add(1, Ordering::Relaxed);
        Receiver {
            rx: self.rx.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        drop(self.tx.take());
        if self.shared.sender_count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.receivers.wake_all();
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        drop(self.rx.take());
        if self.shared.receiver_count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.senders.wake_all();
        }
    }
}

impl<T> Sender<T> {
    fn tx(&self) -> &cb::Sender<T> {
        self.tx.as_ref().expect("present until drop")
    }

    /// Queues `value` without waiting.
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        match self.tx().try_send(value) {
            Ok(()) => {
                self.shared.receivers.wake_one();
                Ok(())
            }
            Err(cb::TrySendError::Full(v)) => Err(TrySendError::Full(v)),
            Err(cb::TrySendError::Disconnected(v)) => Err(TrySendError::Disconnected(v)),
        }
    }

    /// Queues `value`, parking while the channel is full. Fails (handing the
    /// value back) once every receiver is gone, or at runtime shutdown.
    pub fn send(&self, value: T) -> Result<(), SendError<T>> {
        self.send_deadline(value, None).map_err(|e| match e {
            TrySendError::Full(v) | TrySendError::Disconnected(v) => SendError(v),
        })
    }

    /// Like [`Sender::send`], giving up after `timeout` with `Full`.
    pub fn send_timeout(&self, value: T, timeout: Duration) -> Result<(), TrySendError<T>> {
        self.send_deadline(value, Some(crate::time::deadline_after(timeout)))
    }

    fn send_deadline(
        &self,
        mut value: T,
        deadline: Option<Instant>,
    ) -> Result<(), TrySendError<T>> {
        let shared = &*self.shared;
        loop {
            match self.try_send(value) {
                Err(TrySendError::Full(v)) => value = v,
                r => return r,
            }
            if deadline.is_some_and(|d| crate::time::clock_now() >= d) {
                return Err(TrySendError::Full(value));
            }
            let Ok(w) = current_waker() else {
                return Err(TrySendError::Disconnected(value));
            };
            let ticket = shared.ticket();
            shared.senders.push(ticket, w);
            fence(Ordering::SeqCst);
            match self.try_send(value) {
                Err(TrySendError::Full(v)) => value = v,
                r => {
                    if !shared.senders.remove(ticket) {
                        shared.senders.wake_one();
                    }
                    return r;
                }
            }
            let parked = park_current(deadline);
            if !shared.senders.remove(ticket)
                && deadline.is_some_and(|d| crate::time::clock_now() >= d)
            {
                // We were woken for a free slot but may give up now: pass it on.
                shared.senders.wake_one();
            }
            if parked.is_err() {
                return Err(TrySendError::Disconnected(value));
            }
        }
    }

    /// Number of values queued.
    pub fn len(&self) -> usize {
        self.tx().len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.tx().is_empty()
    }

    /// The channel's capacity.
    pub fn capacity(&self) -> usize {
        self.tx().capacity().unwrap_or(usize::MAX)
    }
}

impl<T> Receiver<T> {
    fn rx(&self) -> &cb::Receiver<T> {
        self.rx.as_ref().expect("present until drop")
    }

    /// Takes a value if one is queued. `Ok(None)`: empty; `Err`: empty and
    /// every sender is gone.
    pub fn try_recv(&self) -> Result<Option<T>, RecvError> {
        match self.rx().try_recv() {
            Ok(v) => {
                self.shared.senders.wake_one();
                Ok(Some(v))
            }
            Err(cb::TryRecvError::Empty) => Ok(None),
            Err(cb::TryRecvError::Disconnected) => Err(RecvError),
        }
    }

    /// Takes the next value, parking while the channel is empty. Fails once
    /// it is empty and every sender is gone, or at runtime shutdown.
    pub fn recv(&self) -> Result<T, RecvError> {
        self.recv_deadline(None).map_err(|_| RecvError)
    }

    /// Like [`Receiver::recv`], giving up after `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.recv_deadline(Some(crate::time::deadline_after(timeout)))
    }

    fn recv_deadline(&self, deadline: Option<Instant>) -> Result<T, RecvTimeoutError> {
        let shared = &*self.shared;
        loop {
            match self.try_recv() {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(RecvError) => return Err(RecvTimeoutError::Disconnected),
            }
            if deadline.is_some_and(|d| crate::time::clock_now() >= d) {
                return Err(RecvTimeoutError::Timeout);
            }
            let w = current_waker().map_err(|_| RecvTimeoutError::Disconnected)?;
            let ticket = shared.ticket();
            shared.receivers.push(ticket, w);
            fence(Ordering::SeqCst);
            match self.try_recv() {
                Ok(None) => {}
                r => {
                    if !shared.receivers.remove(ticket) {
                        shared.receivers.wake_one();
                    }
                    return match r {
                        Ok(Some(v)) => Ok(v),
                        _ => Err(RecvTimeoutError::Disconnected),
                    };
                }
            }
            let parked = park_current(deadline);
            let was_woken = !shared.receivers.remove(ticket);
            if parked.is_err() {
                if was_woken {
                    shared.receivers.wake_one();
                }
                return Err(RecvTimeoutError::Disconnected);
            }
            // Loop: take the value we were woken for (or find it was taken by
            // a receiver that never parked, in which case no wake is owed).
        }
    }

    /// Number of values queued.
    pub fn len(&self) -> usize {
        self.rx().len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.rx().is_empty()
    }

    /// An iterator that receives until the channel is closed and drained.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        std::iter::from_fn(move || self.recv().ok())
    }
}
