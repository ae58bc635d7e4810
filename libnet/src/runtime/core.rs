//! One event loop: its coroutines, FIFO run queue, reactor and timers.
//!
//! A [`Core`] lives on exactly one thread and is reached through a thread-local
//! pointer while that thread runs its loop. Everything in it is single-threaded
//! (`Rc`, `RefCell`); the only parts other threads can touch live in [`Remote`]
//! (an inbox of messages plus the mio waker that interrupts `poll`).
//!
//! One iteration of the loop ([`Core::run`]):
//! 1. drain the inbox (spawns and wake-ups sent from other threads);
//! 2. run at most `batch` queued coroutines, in FIFO order;
//! 3. poll the reactor: without blocking if coroutines are still queued, else
//!    until the next timer deadline or an inbox message;
//! 4. wake the coroutines whose IO became ready and whose timers expired.
//!
//! Waking is by *waiter*: a (task key, epoch) pair taken before parking. Every
//! wake bumps the task's epoch, so a waiter left behind in a reactor list or a
//! timer after the task moved on is recognised as stale and ignored.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::ptr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corosensei::stack::DefaultStack;
use corosensei::{Coroutine, CoroutineResult, Yielder};
use slab::Slab;

use super::reactor::Reactor;
use super::spin::Spin;
use super::wheel::{TimerId, Wheel};
use super::RtShared;

/// The coroutine type every task runs in.
type Co = Coroutine<(), (), (), DefaultStack>;

thread_local! {
    /// The loop this thread is running, if any.
    static CURRENT: RefCell<Option<Rc<Core>>> = const { RefCell::new(None) };
    /// The same loop as a raw pointer, for hot paths that only borrow it.
    static CURRENT_PTR: Cell<*const Core> = const { Cell::new(ptr::null()) };
    /// The yielder of the coroutine running right now on this thread; null
    /// when the thread is in the scheduler or not a loop thread at all.
    static YIELDER: Cell<*const Yielder<(), ()>> = const { Cell::new(ptr::null()) };
}

/// The loop running on this thread, if any.
pub(crate) fn current() -> Option<Rc<Core>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Runs `f` with the loop this thread is running, without touching its
/// reference count; `None` if this is not a loop thread.
#[inline(always)]
pub(crate) fn with_current<R>(f: impl FnOnce(&Core) -> R) -> Option<R> {
    let p = CURRENT_PTR.with(|c| c.get());
    if p.is_null() {
        return None;
    }
    // SAFETY: CURRENT_PTR is set by `Core::run` to the `Core` it runs, from
    // an `Rc<Core>` that `run` keeps alive (and also stores in CURRENT) until
    // it resets CURRENT_PTR to null just before returning. Every caller runs
    // on this thread while `run` is on the stack below it (inside a
    // coroutine it resumed, or in its own scheduler code), so the pointee is
    // alive for the whole call of `f`. Only shared references are created.
    Some(f(unsafe { &*p }))
}

/// True when called from inside a libnet coroutine.
#[inline(always)]
pub(crate) fn in_coroutine() -> bool {
    !YIELDER.with(|y| y.get()).is_null()
}

/// Suspends the running coroutine back to the scheduler.
///
/// The caller has already recorded why (queued for a yield, parked waiting
/// for a waiter); this only switches stacks.
///
/// Always inlined: corosensei's switch returns with a `ret` that the CPU
/// predicts from its return-stack buffer, which is right only when the
/// suspend sits in the same frame the coroutine resumes into. Every extra
/// call level between the caller and the switch costs two mispredicted
/// returns per switch (measured: a yield round trip of 19 ns inlined, 58 ns
/// through one non-inlined frame).
#[inline(always)]
fn suspend() {
    let y = YIELDER.with(|c| c.get());
    assert!(!y.is_null(), "libnet: suspend outside a coroutine");
    // SAFETY: YIELDER is set by the coroutine body to the `Yielder` that
    // corosensei passed it, which lives on that coroutine's stack for as long
    // as the coroutine runs. It is non-null only while that coroutine is the
    // one executing on this thread (the scheduler nulls it after every
    // `resume` returns), and we are executing on that coroutine's stack now,
    // so the pointee is alive. `Yielder` is `!Send`; the pointer never leaves
    // this thread because the thread-local is per thread.
    unsafe { (*y).suspend(()) };
    // Another coroutine may have run in between and overwritten YIELDER.
    YIELDER.with(|c| c.set(y));
}

/// Scheduling state of one task.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// In the run queue, waiting for its turn.
    Queued,
    /// Executing right now (the one current task of the loop).
    Running,
    /// Suspended until a waiter with its current epoch is woken.
    Parked,
}

/// One coroutine and its scheduling state. Shared (`Rc`) between the task
/// slab, the run queue and the scheduler, so the coroutine is resumed in
/// place; task objects are pooled and reused with their stacks.
struct Task {
    /// The coroutine; `None` while the task object sits in the free pool.
    /// Borrowed mutably by the scheduler for as long as the coroutine runs.
    co: RefCell<Option<Co>>,
    /// Slab key, the identity waiters refer to.
    key: Cell<usize>,
    /// Where it is in its life.
    state: Cell<State>,
    /// Changes on every wake-up; waiters carrying an older epoch are stale.
    epoch: Cell<u64>,
    /// Woken while running or queued: the next `park` returns at once.
    notified: Cell<bool>,
}

/// Identifies one wait of one task on this loop: cheap, `Copy`, thread-local.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct LocalWaiter {
    /// Slab key of the task.
    pub(crate) key: usize,
    /// The task's epoch when the waiter was taken.
    pub(crate) epoch: u64,
}

/// What an expired timer does.
pub(crate) enum TimerAction {
    /// Wakes a parked task (sleeps and timeouts).
    Wake(LocalWaiter),
    /// Runs a callback timer (see [`crate::time::after`]).
    Callback(Rc<crate::time::CallbackTimer>),
}

/// A message sent to a loop from another thread.
pub(crate) enum Msg {
    /// Wake the task with this key if its epoch still matches.
    Wake(LocalWaiter),
    /// Start a coroutine running this closure.
    Spawn(Box<dyn FnOnce() + Send>),
}

/// The part of a loop that other threads may touch.
pub(crate) struct Remote {
    /// Index of the loop in its runtime.
    pub(crate) index: usize,
    /// Messages waiting to be drained by the loop; `None` once the loop has
    /// stopped (messages sent then are dropped at once, which cancels spawns).
    inbox: Mutex<Option<Vec<Msg>>>,
    /// Set when `inbox` holds something, so the loop skips the lock otherwise.
    pending: AtomicBool,
    /// Set while the loop is (about to be) blocked in `poll`; a sender that
    /// clears it must wake the poll.
    sleeping: AtomicBool,
    /// Interrupts the loop's `poll`.
    waker: mio::Waker,
}

impl Remote {
    pub(crate) fn new(index: usize, waker: mio::Waker) -> Remote {
        Remote {
            index,
            inbox: Mutex::new(Some(Vec::new())),
            pending: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            waker,
        }
    }

    /// Queues a message for the loop and makes sure it will see it soon.
    /// If the loop has stopped, the message is dropped (a spawn's join
    /// handle then reports cancellation).
    pub(crate) fn send(&self, msg: Msg) {
        let rejected = {
            let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
            match inbox.as_mut() {
                Some(q) => {
                    q.push(msg);
                    None
                }
                None => Some(msg),
            }
        };
        if rejected.is_some() {
            // Dropped outside the lock: dropping a spawn runs its completion.
            drop(rejected);
            return;
        }
        self.pending.store(true, Ordering::SeqCst);
        self.notify();
    }

    /// Refuses further messages and returns those still queued.
    fn close(&self) -> Vec<Msg> {
        let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
        inbox.take().unwrap_or_default()
    }

    /// Interrupts the loop's poll if it is blocked in it.
    pub(crate) fn notify(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            if let Err(e) = self.waker.wake() {
                log::error!("libnet: cannot wake loop {}: {e}", self.index);
            }
        }
    }
}

/// Settings of a loop, copied from the runtime builder.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LoopConfig {
    /// Usable size of each coroutine stack, in bytes (a guard page is added).
    pub(crate) stack_size: usize,
    /// How many finished stacks the loop keeps for reuse.
    pub(crate) max_pooled_stacks: usize,
    /// How many queued coroutines run between two polls of the reactor.
    pub(crate) batch: usize,
    /// The longest an idle loop polls without blocking before it sleeps
    /// (see `super::spin`); zero: never.
    pub(crate) spin: Duration,
}

/// One event loop (see the module docs).
pub(crate) struct Core {
    /// Cross-thread part of this loop.
    pub(crate) remote: Arc<Remote>,
    /// The runtime this loop belongs to.
    pub(crate) rt: Arc<RtShared>,
    /// Settings.
    config: LoopConfig,
    /// All live tasks, keyed by slab index.
    tasks: RefCell<Slab<Rc<Task>>>,
    /// Tasks ready to run, in FIFO order.
    run_queue: RefCell<VecDeque<Rc<Task>>>,
    /// The running task; null while in the scheduler. The scheduler holds
    /// the task's `Rc` for as long as this points to it (see `resume`).
    current: Cell<*const Task>,
    /// Finished task objects kept for reuse (bounded like `stacks`).
    free_tasks: RefCell<Vec<Rc<Task>>>,
    /// Source of task epochs; strictly increasing, never reused.
    next_epoch: Cell<u64>,
    /// Finished stacks kept for reuse (bounded by `config.max_pooled_stacks`).
    stacks: RefCell<Vec<DefaultStack>>,
    /// IO readiness.
    pub(crate) reactor: Reactor,
    /// Pending timers, in milliseconds since `origin`.
    timers: RefCell<Wheel<TimerAction>>,
    /// Time zero of the timer wheel.
    origin: Instant,
    /// The runtime's clock.
    clock: crate::time::Clock,
    /// The clock's time, read once after each poll.
    now: Cell<Instant>,
    /// Set once the loop has begun shutting down: no new waits, no new tasks.
    stopping: Cell<bool>,
    /// How long to poll without blocking before sleeping (adaptive).
    spin: Cell<Spin>,
}

/// Error returned by waits once the runtime is shutting down.
pub(crate) fn shutdown_error() -> io::Error {
    io::Error::other("libnet runtime is shutting down")
}

impl Core {
    pub(crate) fn new(
        remote: Arc<Remote>,
        rt: Arc<RtShared>,
        poll: mio::Poll,
        config: LoopConfig,
        clock: crate::time::Clock,
    ) -> Core {
        let now = clock.now();
        // A manual clock's loop must block until the test advances it.
        let spin = Spin::new(if clock.is_manual() {
            Duration::ZERO
        } else {
            config.spin
        });
        Core {
            remote,
            rt,
            config,
            tasks: RefCell::new(Slab::with_capacity(256)),
            run_queue: RefCell::new(VecDeque::with_capacity(256)),
            current: Cell::new(ptr::null()),
            free_tasks: RefCell::new(Vec::new()),
            next_epoch: Cell::new(1),
            stacks: RefCell::new(Vec::new()),
            reactor: Reactor::new(poll),
            timers: RefCell::new(Wheel::new(0)),
            origin: now,
            clock,
            now: Cell::new(now),
            stopping: Cell::new(false),
            spin: Cell::new(spin),
        }
    }

    /// Index of this loop in its runtime.
    pub(crate) fn index(&self) -> usize {
        self.remote.index
    }

    /// The loop's clock: the time of the last reactor poll.
    pub(crate) fn now(&self) -> Instant {
        self.now.get()
    }

    /// The runtime's clock.
    #[inline]
    pub(crate) fn clock(&self) -> &crate::time::Clock {
        &self.clock
    }

    /// True when a coroutine of this loop is the caller.
    #[inline]
    pub(crate) fn is_current_coroutine_loop(&self) -> bool {
        !self.current.get().is_null() && with_current(|c| ptr::eq(c, self)).unwrap_or(false)
    }

    /// True once the loop has begun shutting down.
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.get()
    }

    fn bump_epoch(&self) -> u64 {
        let e = self.next_epoch.get();
        self.next_epoch.set(e + 1);
        e
    }

    /// Starts a coroutine running `f` on this loop.
    ///
    /// `f` must catch its own panics (the task layer wraps user closures).
    /// During shutdown, or if no stack can be had (mmap failed, e.g. out of
    /// memory or `vm.max_map_count` reached), `f` is dropped without running;
    /// the latter is returned as an error.
    pub(crate) fn spawn_raw<F: FnOnce() + 'static>(&self, f: F) -> io::Result<()> {
        if self.stopping.get() {
            return Ok(());
        }
        let stack = self.stacks.borrow_mut().pop();
        let stack = match stack {
            Some(s) => s,
            None => DefaultStack::new(self.config.stack_size).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot allocate a coroutine stack: {e}"))
            })?,
        };
        let co = Co::with_stack(stack, move |y: &Yielder<(), ()>, ()| {
            YIELDER.with(|c| c.set(y));
            f();
        });
        let task = self.free_tasks.borrow_mut().pop().unwrap_or_else(|| {
            Rc::new(Task {
                co: RefCell::new(None),
                key: Cell::new(0),
                state: Cell::new(State::Queued),
                epoch: Cell::new(0),
                notified: Cell::new(false),
            })
        });
        *task.co.borrow_mut() = Some(co);
        task.state.set(State::Queued);
        task.epoch.set(self.bump_epoch());
        task.notified.set(false);
        task.key.set(self.tasks.borrow_mut().insert(task.clone()));
        self.run_queue.borrow_mut().push_back(task);
        Ok(())
    }

    /// The running task, if a coroutine of this loop is running.
    #[inline(always)]
    fn current_task(&self) -> Option<&Task> {
        let p = self.current.get();
        if p.is_null() {
            return None;
        }
        // SAFETY: `resume` sets `current` from an `Rc<Task>` it holds in a
        // local for the whole time the coroutine runs, and resets it to null
        // before dropping that `Rc`. A non-null pointer therefore refers to a
        // live task; the returned borrow is tied to `&self` and only used by
        // the running coroutine before it next suspends or by the scheduler
        // while `resume` is on the stack. `Task` is only accessed through
        // shared references (its fields are cells).
        Some(unsafe { &*p })
    }

    /// The waiter for the running task's next park.
    pub(crate) fn waiter(&self) -> LocalWaiter {
        let t = self
            .current_task()
            .expect("libnet: waiter() outside a coroutine");
        LocalWaiter {
            key: t.key.get(),
            epoch: t.epoch.get(),
        }
    }

    /// Wakes the task behind `w` if `w` is still current. Safe to call with
    /// stale waiters and from inside or outside coroutines of this loop.
    pub(crate) fn wake(&self, w: LocalWaiter) {
        let task = {
            let tasks = self.tasks.borrow();
            match tasks.get(w.key) {
                Some(t) if t.epoch.get() == w.epoch => t.clone(),
                _ => return,
            }
        };
        task.epoch.set(self.bump_epoch());
        if task.state.get() == State::Parked {
            task.state.set(State::Queued);
            self.run_queue.borrow_mut().push_back(task);
        } else {
            task.notified.set(true);
        }
    }

    /// Parks the running coroutine until its waiter is woken. May return
    /// spuriously: callers re-check their condition.
    #[inline(always)]
    pub(crate) fn park(&self) {
        let t = self
            .current_task()
            .expect("libnet: park() outside a coroutine");
        if t.notified.replace(false) {
            return;
        }
        t.state.set(State::Parked);
        suspend();
    }

    /// Parks the running coroutine until woken or until `deadline`.
    /// Returns an error once the runtime is shutting down.
    #[inline]
    pub(crate) fn park_until(&self, deadline: Option<Instant>) -> io::Result<()> {
        if self.stopping.get() {
            return Err(shutdown_error());
        }
        match deadline {
            None => self.park(),
            Some(d) => {
                let w = self.waiter();
                let id = self.add_timer(d, TimerAction::Wake(w));
                self.park();
                self.cancel_timer(id);
            }
        }
        if self.stopping.get() {
            return Err(shutdown_error());
        }
        Ok(())
    }

    /// Moves the running coroutine to the back of the run queue (the
    /// scheduler queues it when the coroutine has suspended).
    #[inline(always)]
    pub(crate) fn yield_now(&self) {
        let t = self
            .current_task()
            .expect("libnet: yield_now() outside a coroutine");
        t.state.set(State::Queued);
        suspend();
    }

    /// Converts an instant to a wheel tick, rounding up so timers never fire early.
    fn tick_of(&self, t: Instant) -> u64 {
        let d = t.saturating_duration_since(self.origin);
        let ms = d.as_millis() as u64;
        if !d.subsec_nanos().is_multiple_of(1_000_000) {
            ms + 1
        } else {
            ms
        }
    }

    /// Schedules `action` at `deadline`.
    pub(crate) fn add_timer(&self, deadline: Instant, action: TimerAction) -> TimerId {
        let tick = self.tick_of(deadline);
        self.timers.borrow_mut().insert(tick, action)
    }

    /// Cancels a timer; returns false if it already fired.
    pub(crate) fn cancel_timer(&self, id: TimerId) -> bool {
        self.timers.borrow_mut().cancel(id).is_some()
    }

    /// Number of pending timers (for tests and stats).
    pub(crate) fn pending_timers(&self) -> usize {
        self.timers.borrow().len()
    }

    /// Runs up to `batch` queued coroutines, stopping early once the
    /// runtime exits (queued coroutines are then dropped, not started).
    fn run_batch(&self) {
        for _ in 0..self.config.batch {
            if self.rt.exiting() {
                return;
            }
            let Some(task) = self.run_queue.borrow_mut().pop_front() else {
                return;
            };
            self.resume(task);
        }
    }

    /// Resumes one task until it parks, yields or finishes.
    ///
    /// The scheduler keeps the task's `Rc` in a local while it runs and
    /// points `current` at it; a yielding task has set its state to `Queued`
    /// and is put back in the run queue here, so the hot path clones no `Rc`.
    #[inline]
    fn resume(&self, task: Rc<Task>) {
        task.state.set(State::Running);
        debug_assert!(self.current.get().is_null(), "nested resume");
        self.current.set(Rc::as_ptr(&task));
        let result = task
            .co
            .borrow_mut()
            .as_mut()
            .expect("queued task has its coroutine")
            .resume(());
        self.current.set(ptr::null());
        YIELDER.with(|c| c.set(ptr::null()));
        if let CoroutineResult::Yield(()) = result {
            if task.state.get() == State::Queued {
                self.run_queue.borrow_mut().push_back(task);
            }
        } else {
            self.tasks.borrow_mut().remove(task.key.get());
            let co = task
                .co
                .borrow_mut()
                .take()
                .expect("finished task has its coroutine");
            let stack = co.into_stack();
            let mut stacks = self.stacks.borrow_mut();
            if stacks.len() < self.config.max_pooled_stacks {
                stacks.push(stack);
                let mut free = self.free_tasks.borrow_mut();
                if free.len() < self.config.max_pooled_stacks {
                    free.push(task);
                }
            }
        }
    }

    /// Takes the inbox's messages and acts on them.
    fn drain_inbox(&self, buf: &mut Vec<Msg>) {
        if !self.remote.pending.swap(false, Ordering::SeqCst) {
            return;
        }
        if let Some(q) = self
            .remote
            .inbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            std::mem::swap(q, buf);
        }
        for msg in buf.drain(..) {
            match msg {
                Msg::Wake(w) => self.wake(w),
                Msg::Spawn(f) => {
                    if let Err(e) = self.spawn_raw(f) {
                        // The closure was dropped: its join handle reports cancellation.
                        log::error!(
                            "libnet: loop {}: cannot start a coroutine: {e}",
                            self.index()
                        );
                    }
                }
            }
        }
    }

    /// Fires every timer whose deadline has passed.
    fn fire_timers(&self, fired: &mut Vec<TimerAction>) {
        let tick = self
            .now
            .get()
            .saturating_duration_since(self.origin)
            .as_millis() as u64;
        self.timers.borrow_mut().poll(tick, fired);
        for action in fired.drain(..) {
            match action {
                TimerAction::Wake(w) => self.wake(w),
                TimerAction::Callback(t) => crate::time::CallbackTimer::fire(t, self),
            }
        }
    }

    /// How long the next poll may block (`None`: until an event, which may
    /// be the reactor's wake timer, armed here for the next timer).
    fn poll_timeout(&self) -> Option<Duration> {
        if self.clock.is_manual() {
            let next = self.timers.borrow().next_deadline()?;
            // Timers move only when the clock is advanced, which wakes us;
            // but an advance may already have happened while we ran.
            let now = self.clock.now().saturating_duration_since(self.origin);
            return (next <= now.as_millis() as u64).then_some(Duration::ZERO);
        }
        let at = self.next_timer_at()?;
        if self.reactor.wakes_by(at) {
            // Armed no later than `at` already: no clock read, no syscall.
            return None;
        }
        let now = Instant::now();
        if at > now && self.reactor.wake_by(at, now) {
            return None;
        }
        Some(at.saturating_duration_since(now))
    }

    /// When the timer wheel may next have something to fire (system clock).
    fn next_timer_at(&self) -> Option<Instant> {
        let next = self.timers.borrow().next_deadline()?;
        Some(self.origin + Duration::from_millis(next))
    }

    /// Polls without blocking for up to the spin window (never past the
    /// next timer), yielding the CPU between polls to any other runnable
    /// thread. Returns whether work turned up: a coroutine woken, or a
    /// message from another thread.
    fn spin_until_work(&self, start: Instant) -> bool {
        let window = self.spin.get().window();
        if window.is_zero() {
            return false;
        }
        let until = self
            .next_timer_at()
            .map_or(start + window, |t| t.min(start + window));
        loop {
            if let Err(e) = self.reactor.poll(self, Some(Duration::ZERO)) {
                log::error!("libnet: loop {} poll failed: {e}", self.index());
                return false;
            }
            // This poll may have taken the wake timer's event (armed for a
            // deadline that has since gone): tell it, or the next sleep
            // would count on an event that will not come.
            let now = Instant::now();
            self.reactor.polled_at(now);
            if !self.run_queue.borrow().is_empty()
                || self.remote.pending.load(Ordering::SeqCst)
                || self.rt.exiting()
            {
                return true;
            }
            if now >= until {
                return false;
            }
            std::thread::yield_now();
        }
    }

    /// Runs the loop until the runtime exits, then shuts it down.
    pub(crate) fn run(self: &Rc<Self>) {
        CURRENT.with(|c| *c.borrow_mut() = Some(self.clone()));
        CURRENT_PTR.with(|c| c.set(Rc::as_ptr(self)));
        let mut inbox = Vec::new();
        let mut fired = Vec::new();
        loop {
            self.drain_inbox(&mut inbox);
            self.run_batch();
            if self.rt.exiting() {
                break;
            }
            let busy = !self.run_queue.borrow().is_empty();
            let mut timeout = Some(Duration::ZERO);
            // When this loop went idle, if it measures its idle periods.
            let idle_since = (!busy && self.spin.get().enabled()).then(Instant::now);
            let spun_into_work = idle_since.is_some_and(|start| self.spin_until_work(start));
            if !busy && !spun_into_work {
                // Announce the sleep before the last checks, so a sender (or
                // a manual clock's advance) either sees `sleeping` or is seen here.
                self.remote.sleeping.store(true, Ordering::SeqCst);
                timeout = self.poll_timeout();
                if self.remote.pending.load(Ordering::SeqCst) || self.rt.exiting() {
                    timeout = Some(Duration::ZERO);
                }
            }
            if !spun_into_work {
                if let Err(e) = self.reactor.poll(self, timeout) {
                    log::error!("libnet: loop {} poll failed: {e}", self.index());
                }
                self.remote.sleeping.store(false, Ordering::SeqCst);
            }
            self.now.set(self.clock.now());
            if let (Some(start), false) = (idle_since, spun_into_work) {
                let mut spin = self.spin.get();
                spin.slept(self.now.get().saturating_duration_since(start));
                self.spin.set(spin);
            }
            self.reactor.polled_at(self.now.get());
            self.fire_timers(&mut fired);
        }
        self.shutdown();
        CURRENT_PTR.with(|c| c.set(ptr::null()));
        CURRENT.with(|c| *c.borrow_mut() = None);
    }

    /// Drops every task still alive, unwinding its stack so its destructors
    /// run (sockets close, join handles report cancellation).
    fn shutdown(&self) {
        self.stopping.set(true);
        // From now on other threads' messages are dropped on arrival; those
        // already queued are dropped here (spawns report cancellation).
        drop(self.remote.close());
        // Dropping a task can drop join handles or channels that wake or even
        // try to spawn others; loop until nothing is left.
        for _ in 0..16 {
            let all: Vec<Rc<Task>> = self.tasks.borrow_mut().drain().collect();
            if all.is_empty() {
                break;
            }
            for task in all {
                let co = task.co.borrow_mut().take();
                if let Some(co) = co {
                    // The task's own destructors run here, on its stack.
                    if let Err(p) = panic::catch_unwind(AssertUnwindSafe(move || drop(co))) {
                        log::error!(
                            "libnet: a destructor panicked while shutting down loop {}: {}",
                            self.index(),
                            crate::runtime::panic_message(&*p)
                        );
                    }
                }
            }
        }
        self.run_queue.borrow_mut().clear();
        self.timers.replace(Wheel::new(0));
        self.stacks.borrow_mut().clear();
        self.free_tasks.borrow_mut().clear();
    }
}
