//! Join handles: how a coroutine's result (or panic) reaches whoever waits for it.

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::thread;

use super::{current_waker, is_stopping, panic_message, park_current, Waker};

/// Result slot shared by a task and its handle.
struct Slot<T> {
    /// The task's outcome, once it has one.
    result: Option<thread::Result<T>>,
    /// Whoever waits in [`JoinHandle::join`].
    waiter: Option<Waker>,
    /// False once the handle was dropped (the task is detached).
    handle_alive: bool,
}

type Shared<T> = Arc<Mutex<Slot<T>>>;

/// Waits for a coroutine and returns its value, like `std::thread::JoinHandle`.
///
/// Dropping it detaches the coroutine. It is `Send` when `T` is, so a
/// coroutine on one loop (or a plain thread) can join one on another.
pub struct JoinHandle<T> {
    /// `None` once `join` has taken the result.
    slot: Option<Shared<T>>,
}

/// The task's end of the pair: delivers the result exactly once, and reports
/// cancellation if the task is dropped without finishing (runtime shutdown).
pub(crate) struct Completion<T> {
    slot: Option<Shared<T>>,
}

/// A connected handle and completion.
pub(crate) fn pair<T>() -> (JoinHandle<T>, Completion<T>) {
    let slot = Arc::new(Mutex::new(Slot {
        result: None,
        waiter: None,
        handle_alive: true,
    }));
    (
        JoinHandle {
            slot: Some(slot.clone()),
        },
        Completion { slot: Some(slot) },
    )
}

/// Payload reported by `join` for a coroutine dropped at shutdown.
const CANCELLED: &str = "libnet: coroutine cancelled by runtime shutdown";

impl<T> Completion<T> {
    /// Runs `f`, catching its panic, and delivers the outcome.
    pub(crate) fn run(mut self, f: impl FnOnce() -> T) {
        match panic::catch_unwind(AssertUnwindSafe(f)) {
            Err(p) if is_stopping() => {
                // A forced unwind at shutdown: report cancellation, then let
                // the unwind continue to the coroutine root as it must.
                self.deliver(Err(Box::new(CANCELLED)));
                panic::resume_unwind(p);
            }
            r => self.deliver(r),
        }
    }

    fn deliver(&mut self, r: thread::Result<T>) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        let waiter = {
            let mut s = slot.lock().unwrap_or_else(|e| e.into_inner());
            if let (false, Err(p)) = (s.handle_alive, &r) {
                let msg = panic_message(&**p);
                // Cancellation at shutdown is how every detached coroutine
                // ends when the runtime stops: not an error.
                if msg == CANCELLED {
                    log::debug!("{msg}");
                } else {
                    log::error!("libnet: detached coroutine panicked: {msg}");
                }
            }
            s.result = Some(r);
            s.waiter.take()
        };
        if let Some(w) = waiter {
            w.wake();
        }
    }
}

impl<T> Drop for Completion<T> {
    fn drop(&mut self) {
        if self.slot.is_some() {
            self.deliver(Err(Box::new(CANCELLED)));
        }
    }
}

impl<T> std::fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl<T> JoinHandle<T> {
    /// Waits for the coroutine (parking only the calling coroutine, or the
    /// calling thread outside a runtime) and returns its value, or the
    /// payload of its panic.
    pub fn join(mut self) -> thread::Result<T> {
        let slot = self.slot.take().expect("present until join");
        loop {
            {
                let mut s = slot.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(r) = s.result.take() {
                    return r;
                }
                match current_waker() {
                    Ok(w) => s.waiter = Some(w),
                    Err(e) => return Err(Box::new(e.to_string()) as Box<dyn Any + Send>),
                }
            }
            if let Err(e) = park_current(None) {
                return Err(Box::new(e.to_string()));
            }
        }
    }

    /// True once the coroutine has finished (returned, panicked or been cancelled).
    pub fn is_finished(&self) -> bool {
        let Some(slot) = &self.slot else {
            return true;
        };
        slot.lock()
            .unwrap_or_else(|e| e.into_inner())
            .result
            .is_some()
    }
}

impl<T> Drop for JoinHandle<T> {
    fn drop(&mut self) {
        if let Some(slot) = &self.slot {
            let mut s = slot.lock().unwrap_or_else(|e| e.into_inner());
            s.handle_alive = false;
            s.waiter = None;
        }
    }
}

/// Waits for every handle, in order, and returns their results.
pub fn join_all<T>(handles: impl IntoIterator<Item = JoinHandle<T>>) -> Vec<thread::Result<T>> {
    handles.into_iter().map(JoinHandle::join).collect()
}
