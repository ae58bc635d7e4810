//! The runtime: N event loops on N threads, each with its own coroutines.
//!
//! Start one with [`Runtime::builder`] (or [`crate::run`] on defaults) and a
//! main coroutine; it runs until the main coroutine returns or someone calls
//! [`exit`] / [`Handle::exit`]. Coroutines are spawned on the current loop
//! with [`spawn`] or on a chosen loop with [`spawn_on`]; a coroutine stays on
//! the loop (thread) it started on for its whole life.

pub(crate) mod core;
pub(crate) mod io;
mod join;
pub(crate) mod pool;
pub(crate) mod reactor;
mod spin;
mod wake_timer;
pub(crate) mod wheel;

use std::any::Any;
use std::fmt;
use std::io as stdio;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub use join::{join_all, JoinHandle};

use self::core::{Core, LocalWaiter, LoopConfig, Msg, Remote};

/// State shared by every loop of one runtime.
pub(crate) struct RtShared {
    /// The cross-thread side of each loop, by index.
    pub(crate) loops: Vec<Arc<Remote>>,
    /// Set once the runtime must stop.
    exiting: AtomicBool,
    /// The code given to [`exit`], if it was called before main returned.
    exit_code: Mutex<Option<i32>>,
    /// The thread pool for blocking work, started on first use.
    pub(crate) pool: pool::Pool,
}

impl RtShared {
    /// True once the runtime has been asked to stop.
    pub(crate) fn exiting(&self) -> bool {
        self.exiting.load(Ordering::Acquire)
    }

    /// Asks every loop to stop; the first code given wins.
    fn request_exit(&self, code: Option<i32>) {
        {
            let mut slot = self.exit_code.lock().unwrap_or_else(|e| e.into_inner());
            if !self.exiting.load(Ordering::Acquire) && slot.is_none() {
                *slot = code;
            }
        }
        self.exiting.store(true, Ordering::Release);
        for l in &self.loops {
            l.notify();
        }
    }
}

/// How a runtime stopped when its main coroutine did not return normally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// The code passed to [`exit`] or [`Handle::exit`].
    pub code: i32,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "runtime exited with code {}", self.code)
    }
}

impl std::error::Error for Exit {}

/// Configures and builds a [`Runtime`].
#[derive(Clone, Debug)]
pub struct Builder {
    loops: usize,
    config: LoopConfig,
    pool_threads: usize,
    pool_queue: usize,
    clock: crate::time::Clock,
    /// What [`Builder::spin`] set; `None`: `LIBNET_SPIN_US`, else
    /// [`DEFAULT_SPIN`] (resolved into `config` by [`Builder::build`]).
    spin: Option<Duration>,
}

/// The idle spin's maximum when neither [`Builder::spin`] nor
/// `LIBNET_SPIN_US` sets it.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(30);

/// The environment variable that sets the idle spin's maximum in
/// microseconds for runtimes whose builder did not ([`Builder::spin`]).
pub const SPIN_ENV: &str = "LIBNET_SPIN_US";

/// The idle spin from [`SPIN_ENV`], if set.
fn spin_from_env() -> stdio::Result<Option<Duration>> {
    let Some(v) = std::env::var_os(SPIN_ENV) else {
        return Ok(None);
    };
    v.to_str()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&us| us <= 1_000_000)
        .map(|us| Some(Duration::from_micros(us)))
        .ok_or_else(|| {
            stdio::Error::new(
                stdio::ErrorKind::InvalidInput,
                format!(
                    "{SPIN_ENV}={}: expected microseconds from 0 (no spinning) to 1000000",
                    v.to_string_lossy()
                ),
            )
        })
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

impl Builder {
    /// Defaults: one loop per core, 256 KiB stacks (only touched pages cost
    /// memory), up to 1,024 pooled stacks per loop, batches of 128
    /// coroutines between polls, idle loops spinning up to 30 µs before
    /// they sleep, a thread pool of one thread per core.
    pub fn new() -> Builder {
        let cores = thread::available_parallelism().map_or(1, |n| n.get());
        Builder {
            loops: cores,
            config: LoopConfig {
                stack_size: 256 * 1024,
                max_pooled_stacks: 1024,
                batch: 128,
                spin: DEFAULT_SPIN,
            },
            pool_threads: cores.max(2),
            pool_queue: 4096,
            clock: crate::time::Clock::system(),
            spin: None,
        }
    }

    /// The clock every loop reads (default: the system clock). With
    /// [`crate::time::Clock::manual`], sleeps, timers and timeouts move only
    /// when the test advances the clock.
    pub fn clock(mut self, clock: crate::time::Clock) -> Builder {
        self.clock = clock;
        self
    }

    /// Number of event loops (threads); at least 1.
    pub fn loops(mut self, n: usize) -> Builder {
        self.loops = n.max(1);
        self
    }

    /// Usable stack size of each coroutine in bytes; a guard page is added
    /// below it, so an overflow faults instead of corrupting memory.
    pub fn stack_size(mut self, bytes: usize) -> Builder {
        self.config.stack_size = bytes.max(16 * 1024);
        self
    }

    /// How many finished stacks each loop keeps for reuse (a fresh stack
    /// costs an mmap; a pooled one does not).
    pub fn max_pooled_stacks(mut self, n: usize) -> Builder {
        self.config.max_pooled_stacks = n;
        self
    }

    /// How many queued coroutines run before the loop polls IO and timers
    /// again; bounds how long IO can wait behind busy coroutines.
    pub fn batch(mut self, n: usize) -> Builder {
        self.config.batch = n.max(1);
        self
    }

    /// The longest an idle loop polls for work without blocking before it
    /// sleeps (default 30 µs; zero turns it off). The window adapts: it
    /// grows while events follow each other within `max` of the loop going
    /// idle (a request/response rhythm, where waking a sleeping thread, or
    /// on a VM a halted vCPU, costs more than the work) and falls to zero
    /// when they come less often, so a quiet loop spins nothing. Without
    /// this call, `LIBNET_SPIN_US` ([`SPIN_ENV`]) sets it, in microseconds
    /// (`0`: off), for programs built on libnet.
    pub fn spin(mut self, max: Duration) -> Builder {
        self.spin = Some(max);
        self
    }

    /// The idle spin's maximum the runtime will use (see [`Builder::spin`];
    /// an unusable `LIBNET_SPIN_US` counts as unset here, and
    /// [`Builder::build`] reports it).
    pub fn spin_max(&self) -> Duration {
        self.spin
            .or_else(|| spin_from_env().ok().flatten())
            .unwrap_or(DEFAULT_SPIN)
    }

    /// Number of threads of the blocking-work pool ([`crate::spawn_blocking`]).
    pub fn pool_threads(mut self, n: usize) -> Builder {
        self.pool_threads = n.max(1);
        self
    }

    /// How many jobs may wait for a pool thread; a submitter beyond that
    /// waits (its coroutine only) until a slot frees.
    pub fn pool_queue(mut self, n: usize) -> Builder {
        self.pool_queue = n.max(1);
        self
    }

    /// Creates the pollers; no thread starts until [`Runtime::run`].
    pub fn build(mut self) -> stdio::Result<Runtime> {
        self.config.spin = match self.spin {
            Some(spin) => spin,
            None => spin_from_env()?.unwrap_or(DEFAULT_SPIN),
        };
        let mut polls = Vec::with_capacity(self.loops);
        let mut remotes = Vec::with_capacity(self.loops);
        for i in 0..self.loops {
            let poll = mio::Poll::new()?;
            let waker = reactor::Reactor::waker(&poll)?;
            let remote = Arc::new(Remote::new(i, waker));
            self.clock.attach(&remote);
            remotes.push(remote);
            polls.push(poll);
        }
        let shared = Arc::new(RtShared {
            loops: remotes,
            exiting: AtomicBool::new(false),
            exit_code: Mutex::new(None),
            pool: pool::Pool::new(self.pool_threads, self.pool_queue),
        });
        Ok(Runtime {
            shared,
            polls,
            config: self.config,
            clock: self.clock,
        })
    }
}

/// A runtime ready to run; see the module docs.
pub struct Runtime {
    shared: Arc<RtShared>,
    polls: Vec<mio::Poll>,
    config: LoopConfig,
    clock: crate::time::Clock,
}

impl Runtime {
    /// A builder with the defaults of [`Builder::new`].
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// A handle that can stop this runtime or spawn on it from any thread.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }

    /// Runs `main` as a coroutine on loop 0 (this thread) and the other loops
    /// on threads of their own, until `main` returns or [`exit`] is called.
    /// Then every loop stops, coroutines still blocked are unwound (their
    /// destructors run), and the threads are joined.
    ///
    /// Returns `main`'s value, or [`Exit`] if the runtime was stopped first.
    /// A panic in `main` is resumed here after the shutdown.
    pub fn run<T: 'static>(self, main: impl FnOnce() -> T + 'static) -> Result<T, Exit> {
        if core::current().is_some() {
            panic!("libnet: Runtime::run called from inside a running libnet loop");
        }
        let Runtime {
            shared,
            polls,
            config,
            clock,
        } = self;
        let mut polls = polls.into_iter();
        let poll0 = polls.next().expect("at least one loop");
        let mut threads = Vec::new();
        for (i, poll) in polls.enumerate() {
            let rt = shared.clone();
            let clock = clock.clone();
            let spawned = thread::Builder::new()
                .name(format!("libnet-loop-{}", i + 1))
                .spawn(move || {
                    let core = Rc::new(Core::new(rt.loops[i + 1].clone(), rt, poll, config, clock));
                    core.run();
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    shared.request_exit(Some(1));
                    for t in threads {
                        let _ = t.join();
                    }
                    panic!("libnet: cannot start loop thread {}: {e}", i + 1);
                }
            }
        }
        let core0 = Rc::new(Core::new(
            shared.loops[0].clone(),
            shared.clone(),
            poll0,
            config,
            clock,
        ));
        let result: Rc<std::cell::RefCell<Option<thread::Result<T>>>> = Rc::default();
        {
            let result = result.clone();
            let rt = shared.clone();
            let spawned = core0.spawn_raw(move || {
                let r = panic::catch_unwind(AssertUnwindSafe(main));
                if r.is_err() && is_stopping() {
                    // Forced unwind at shutdown: let corosensei finish it.
                    if let Err(p) = r {
                        panic::resume_unwind(p);
                    }
                    return;
                }
                *result.borrow_mut() = Some(r);
                rt.request_exit(None);
            });
            if let Err(e) = spawned {
                shared.request_exit(Some(1));
                panic!("libnet: cannot start the main coroutine: {e}");
            }
        }
        core0.run();
        drop(core0);
        for t in threads {
            if let Err(p) = t.join() {
                log::error!("libnet: a loop thread panicked: {}", panic_message(&*p));
            }
        }
        shared.pool.shutdown();
        let r = result.borrow_mut().take();
        match r {
            Some(Ok(v)) => Ok(v),
            Some(Err(p)) => panic::resume_unwind(p),
            None => {
                let code = shared
                    .exit_code
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .unwrap_or(0);
                Err(Exit { code })
            }
        }
    }
}

/// A cloneable, `Send` handle to a runtime: stop it or spawn on it from anywhere.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<RtShared>,
}

impl Handle {
    /// Stops every loop; [`Runtime::run`] returns `Err(Exit { code })`
    /// unless the main coroutine already returned. The first code wins.
    pub fn exit(&self, code: i32) {
        self.shared.request_exit(Some(code));
    }

    /// Number of loops.
    pub fn loops(&self) -> usize {
        self.shared.loops.len()
    }

    /// Spawns `f` on loop `index` (modulo the number of loops).
    pub fn spawn_on<F, T>(&self, index: usize, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let index = index % self.shared.loops.len();
        let (handle, completion) = join::pair();
        let remote = &self.shared.loops[index];
        let task = move || completion.run(f);
        match core::current() {
            Some(c) if Arc::ptr_eq(&c.remote, remote) => {
                if let Err(e) = c.spawn_raw(task) {
                    log::error!("libnet: spawn_on: {e}");
                }
            }
            _ => remote.send(Msg::Spawn(Box::new(task))),
        }
        handle
    }
}

/// True while the current loop is unwinding its coroutines at shutdown.
pub(crate) fn is_stopping() -> bool {
    core::current().is_some_and(|c| c.stopping())
}

/// The current loop, or a panic explaining that a runtime is needed.
fn current_or_panic(what: &str) -> Rc<Core> {
    core::current()
        .unwrap_or_else(|| panic!("libnet: {what} must be called from inside a libnet runtime"))
}

/// Spawns a coroutine on the current loop. Panics outside a runtime.
///
/// The closure need not be `Send`: it never leaves this thread.
pub fn spawn<F, T>(f: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + 'static,
    T: 'static,
{
    let core = current_or_panic("spawn");
    let (handle, completion) = join::pair();
    if let Err(e) = core.spawn_raw(move || completion.run(f)) {
        panic!("libnet: spawn: {e}");
    }
    handle
}

/// Spawns a coroutine on loop `index` (modulo the number of loops).
/// Panics outside a runtime; from outside use [`Handle::spawn_on`].
pub fn spawn_on<F, T>(index: usize, f: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    handle().spawn_on(index, f)
}

/// A handle to the runtime the caller runs in. Panics outside a runtime.
pub fn handle() -> Handle {
    Handle {
        shared: current_or_panic("handle").rt.clone(),
    }
}

/// Lets every other queued coroutine of this loop run once, then continues.
/// Outside a coroutine it yields the thread.
///
/// Inlined down to the context switch on purpose (see `core::suspend`).
#[inline(always)]
pub fn yield_now() {
    let yielded = core::with_current(|c| {
        if core::in_coroutine() && !c.stopping() {
            c.yield_now();
            true
        } else {
            false
        }
    });
    if yielded != Some(true) {
        thread::yield_now();
    }
}

/// Stops the runtime from inside it (see [`Handle::exit`]).
pub fn exit(code: i32) {
    current_or_panic("exit").rt.request_exit(Some(code));
}

/// Index of the loop running the caller, or `None` outside a runtime.
pub fn current_loop() -> Option<usize> {
    core::current().map(|c| c.index())
}

/// Number of loops of the caller's runtime, or `None` outside a runtime.
pub fn loops() -> Option<usize> {
    core::current().map(|c| c.rt.loops.len())
}

/// Something parked that can be woken from any thread: a coroutine on some
/// loop, or a plain thread.
#[derive(Clone)]
pub(crate) enum Waker {
    /// A coroutine, identified by its loop and waiter.
    Task {
        /// Its loop.
        remote: Arc<Remote>,
        /// Its waiter on that loop.
        waiter: LocalWaiter,
    },
    /// A plain thread blocked in [`park_current`].
    Thread(thread::Thread),
}

impl Waker {
    /// Wakes the waiter (a no-op if it moved on).
    pub(crate) fn wake(&self) {
        match self {
            Waker::Task { remote, waiter } => {
                let local = core::with_current(|c| {
                    let same = Arc::ptr_eq(&c.remote, remote);
                    if same {
                        c.wake(*waiter);
                    }
                    same
                });
                if local != Some(true) {
                    remote.send(Msg::Wake(*waiter));
                }
            }
            Waker::Thread(t) => t.unpark(),
        }
    }
}

/// A waker for a coroutine of the current loop that only code running on
/// the same loop wakes: what loop-confined (`Rc`, `!Send`) state keeps for
/// its waiters. Unlike [`Waker`] it is `Copy` and costs no atomic operation
/// to take, keep or wake (it is a [`core::LocalWaiter`]); like a waiter it
/// wakes nothing once its coroutine has moved on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LocalWaker(core::LocalWaiter);

impl LocalWaker {
    /// The waker for the running coroutine's next [`park_current`]; an
    /// error outside a coroutine (plain threads included) or at shutdown.
    pub(crate) fn current() -> stdio::Result<LocalWaker> {
        core::with_current(|c| {
            if !core::in_coroutine() {
                return Err(outside_coroutine_error());
            }
            if c.stopping() {
                return Err(core::shutdown_error());
            }
            Ok(LocalWaker(c.waiter()))
        })
        .unwrap_or_else(|| Err(outside_coroutine_error()))
    }

    /// Wakes it; must run on the loop it was taken on (which the `!Send`
    /// state holding it guarantees).
    pub(crate) fn wake(self) {
        core::with_current(|c| c.wake(self.0));
    }
}

/// The waker for the caller's next [`park_current`], or an error where the
/// caller must not block (a loop thread outside a coroutine, or shutdown).
pub(crate) fn current_waker() -> stdio::Result<Waker> {
    let w = core::with_current(|c| {
        if !core::in_coroutine() {
            return Err(outside_coroutine_error());
        }
        if c.stopping() {
            return Err(core::shutdown_error());
        }
        Ok(Waker::Task {
            remote: c.remote.clone(),
            waiter: c.waiter(),
        })
    });
    w.unwrap_or_else(|| Ok(Waker::Thread(thread::current())))
}

/// Parks the caller (coroutine or plain thread) until its waker is woken or
/// `deadline` passes. May return spuriously; callers re-check.
#[inline]
pub(crate) fn park_current(deadline: Option<Instant>) -> stdio::Result<()> {
    let parked = core::with_current(|c| {
        if !core::in_coroutine() {
            return Err(outside_coroutine_error());
        }
        c.park_until(deadline)
    });
    match parked {
        Some(r) => r,
        None => {
            match deadline {
                None => thread::park(),
                Some(d) => thread::park_timeout(d.saturating_duration_since(Instant::now())),
            }
            Ok(())
        }
    }
}

/// The error a blocking call gets on an event-loop thread outside any
/// coroutine, where waiting would stall every coroutine of the loop.
pub(crate) fn outside_coroutine_error() -> stdio::Error {
    stdio::Error::other(
        "libnet: blocking call on an event-loop thread outside a coroutine \
         (it would stall the loop); call it from a coroutine",
    )
}

/// Best-effort text of a panic payload (e.g. the `Err` of
/// [`JoinHandle::join`]).
pub fn panic_message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
