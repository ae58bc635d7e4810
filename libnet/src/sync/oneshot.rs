//! A channel for exactly one value, between any two coroutines or threads.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{RecvError, RecvTimeoutError};
use crate::runtime::{current_waker, park_current, Waker};

struct State<T> {
    value: Option<T>,
    waiter: Option<Waker>,
    sender_alive: bool,
    receiver_alive: bool,
}

/// Sends the one value; see [`channel`].
pub struct Sender<T> {
    state: Arc<Mutex<State<T>>>,
}

/// Receives the one value; see [`channel`].
pub struct Receiver<T> {
    state: Arc<Mutex<State<T>>>,
}

/// A connected sender and receiver for a single value.
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let state = Arc::new(Mutex::new(State {
        value: None,
        waiter: None,
        sender_alive: true,
        receiver_alive: true,
    }));
    (
        Sender {
            state: state.clone(),
        },
        Receiver { state },
    )
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("oneshot::Sender")
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("oneshot::Receiver")
    }
}

impl<T> Sender<T> {
    /// Delivers `value`; gives it back if the receiver is gone.
    pub fn send(self, value: T) -> Result<(), T> {
        let waiter = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if !s.receiver_alive {
                return Err(value);
            }
            s.value = Some(value);
            s.waiter.take()
        };
        if let Some(w) = waiter {
            w.wake();
        }
        Ok(())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waiter = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            s.sender_alive = false;
            s.waiter.take()
        };
        if let Some(w) = waiter {
            w.wake();
        }
    }
}

impl<T> Receiver<T> {
    /// Waits for the value; fails if the sender was dropped without sending.
    pub fn recv(self) -> Result<T, RecvError> {
        self.recv_deadline(None).map_err(|_| RecvError)
    }

    /// Like [`Receiver::recv`], giving up after `timeout`.
    pub fn recv_timeout(self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.recv_deadline(Some(crate::time::deadline_after(timeout)))
    }

    /// The value if it has arrived.
    pub fn try_recv(&self) -> Option<T> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .value
            .take()
    }

    fn recv_deadline(&self, deadline: Option<Instant>) -> Result<T, RecvTimeoutError> {
        loop {
            {
                let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(v) = s.value.take() {
                    return Ok(v);
                }
                if !s.sender_alive {
                    return Err(RecvTimeoutError::Disconnected);
                }
                if deadline.is_some_and(|d| crate::time::clock_now() >= d) {
                    return Err(RecvTimeoutError::Timeout);
                }
                s.waiter = Some(current_waker().map_err(|_| RecvTimeoutError::Disconnected)?);
            }
            park_current(deadline).map_err(|_| RecvTimeoutError::Disconnected)?;
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.receiver_alive = false;
        s.waiter = None;
    }
}
