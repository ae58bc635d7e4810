//! The thread pool for blocking and CPU-heavy work.
//!
//! [`spawn_blocking`] sends a `Send` closure to worker threads over a bounded
//! crossbeam channel and parks only the calling coroutine until the result
//! comes back through a oneshot. Workers start on first use, up to the
//! configured count; they exit once the runtime is gone and the queue is empty.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::core;
use crate::sync::oneshot;

/// A job for a worker.
type Job = Box<dyn FnOnce() + Send>;

/// See the module docs.
pub(crate) struct Pool {
    /// Submission side; `None` after shutdown.
    tx: Mutex<Option<Sender<Job>>>,
    /// Kept to hand to workers started later.
    rx: Receiver<Job>,
    /// Upper bound on workers.
    max_threads: usize,
    /// Workers started so far.
    started: AtomicUsize,
    /// Workers not running a job right now (shared with the workers).
    idle: Arc<AtomicUsize>,
}

impl Pool {
    pub(crate) fn new(max_threads: usize, queue: usize) -> Pool {
        let (tx, rx) = crossbeam_channel::bounded(queue);
        Pool {
            tx: Mutex::new(Some(tx)),
            rx,
            max_threads,
            started: AtomicUsize::new(0),
            idle: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Starts one more worker if a job is still waiting in the queue and the
    /// bound allows it. (Comparing with the idle count instead would race: a
    /// worker counts as idle from the moment it takes a job until it marks
    /// itself busy. A spare worker now and then is the cheaper mistake.)
    fn maybe_grow(&self) {
        if self.rx.is_empty() || self.idle.load(Ordering::Acquire) > self.rx.len() {
            return;
        }
        let n = self.started.load(Ordering::Acquire);
        if n >= self.max_threads
            || self
                .started
                .compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        let rx = self.rx.clone();
        let idle = self.idle.clone();
        let res = thread::Builder::new()
            .name(format!("libnet-pool-{n}"))
            .spawn(move || loop {
                idle.fetch_add(1, Ordering::AcqRel);
                let job = rx.recv();
                idle.fetch_sub(1, Ordering::AcqRel);
                match job {
                    Ok(job) => job(),
                    Err(_) => return,
                }
            });
        if let Err(e) = res {
            self.started.fetch_sub(1, Ordering::AcqRel);
            log::error!("libnet: cannot start a pool thread: {e}");
        }
    }

    /// Queues `job`, waiting (coroutine only) while the queue is full.
    fn submit(&self, mut job: Job) -> std::io::Result<()> {
        let mut backoff = Duration::from_micros(100);
        loop {
            let res = {
                let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
                match tx.as_ref() {
                    Some(tx) => tx.try_send(job),
                    None => return Err(std::io::Error::other("libnet: thread pool is shut down")),
                }
            };
            match res {
                Ok(()) => {
                    self.maybe_grow();
                    return Ok(());
                }
                Err(TrySendError::Disconnected(_)) => {
                    return Err(std::io::Error::other("libnet: thread pool is shut down"))
                }
                Err(TrySendError::Full(j)) => {
                    job = j;
                    // Full queue: back off without blocking the loop.
                    crate::time::sleep(backoff);
                    if core::current().is_some_and(|c| c.stopping()) {
                        return Err(core::shutdown_error());
                    }
                    backoff = (backoff * 2).min(Duration::from_millis(10));
                }
            }
        }
    }

    /// Stops accepting jobs; workers finish what is queued, then exit.
    pub(crate) fn shutdown(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// Runs `f` on the runtime's thread pool and returns its value; only the
/// calling coroutine waits. A panic in `f` is resumed in the caller.
///
/// Outside a coroutine (a plain thread, or loop-thread code that is not a
/// coroutine) `f` simply runs on the calling thread.
pub fn spawn_blocking<F, T>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let core = match core::current() {
        Some(c) if core::in_coroutine() && !c.stopping() => c,
        _ => return f(),
    };
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        let r = panic::catch_unwind(AssertUnwindSafe(f));
        let _ = tx.send(r);
    });
    if let Err(e) = core.rt.pool.submit(job) {
        panic!("libnet: spawn_blocking: {e}");
    }
    drop(core);
    match rx.recv() {
        Ok(Ok(v)) => v,
        Ok(Err(p)) => panic::resume_unwind(p),
        Err(e) => panic!("libnet: spawn_blocking: {e}"),
    }
}
