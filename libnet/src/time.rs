//! Time: the runtime clock, sleeping, periodic ticks and callback timers.
//!
//! Every loop keeps pending timers in a hierarchical wheel with millisecond
//! ticks (O(1) insert and cancel, so 100,000 pending IO timeouts cost little);
//! a timer never fires early and fires on the first loop iteration after its
//! deadline. [`now`] is the loop's clock, read once per iteration: protocol
//! code takes its `now` from here so that tests can feed it any time instead.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::runtime::core::{self, Core, Remote, TimerAction};
use crate::runtime::wheel::TimerId;

/// The clock a runtime reads: the system's monotonic clock, or a manual
/// clock that moves only when told, so tests can drive every timer, sleep
/// and timeout of the code above deterministically.
///
/// ```
/// use std::time::Duration;
/// use libnet::time::Clock;
///
/// let clock = Clock::manual();
/// let rt = libnet::Runtime::builder().loops(1).clock(clock.clone()).build().unwrap();
/// let slept = rt.run(move || {
///     let start = libnet::time::now();
///     let sleeper = libnet::spawn(move || libnet::time::sleep(Duration::from_secs(3600)));
///     while !sleeper.is_finished() {
///         clock.advance(Duration::from_secs(60)); // an hour passes in no time
///         libnet::yield_now();
///     }
///     libnet::time::now() - start
/// }).unwrap();
/// assert!(slept >= Duration::from_secs(3600));
/// ```
#[derive(Clone)]
pub struct Clock {
    inner: Arc<ClockInner>,
}

/// Shared state of a [`Clock`].
struct ClockInner {
    /// `Some(origin)` for a manual clock: its time is `origin + offset`.
    manual: Option<Instant>,
    /// Nanoseconds a manual clock has been advanced by.
    offset_ns: AtomicU64,
    /// Loops reading this clock, woken when a manual clock moves.
    loops: Mutex<Vec<std::sync::Weak<Remote>>>,
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.inner.manual {
            None => f.write_str("Clock::system"),
            Some(_) => write!(
                f,
                "Clock::manual(+{:?})",
                Duration::from_nanos(self.inner.offset_ns.load(Ordering::Acquire))
            ),
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl Clock {
    /// The system's monotonic clock (the default).
    pub fn system() -> Clock {
        Clock::with(None)
    }

    /// A clock that starts at the current instant and then moves only by
    /// [`Clock::advance`].
    pub fn manual() -> Clock {
        Clock::with(Some(Instant::now()))
    }

    fn with(manual: Option<Instant>) -> Clock {
        Clock {
            inner: Arc::new(ClockInner {
                manual,
                offset_ns: AtomicU64::new(0),
                loops: Mutex::new(Vec::new()),
            }),
        }
    }

    /// True for a manual clock.
    pub fn is_manual(&self) -> bool {
        self.inner.manual.is_some()
    }

    /// The current time of this clock.
    #[inline]
    pub fn now(&self) -> Instant {
        match self.inner.manual {
            None => Instant::now(),
            Some(origin) => {
                origin + Duration::from_nanos(self.inner.offset_ns.load(Ordering::SeqCst))
            }
        }
    }

    /// Moves a manual clock forward by `d` and wakes the loops reading it,
    /// which then fire whatever fell due. Panics on the system clock.
    pub fn advance(&self, d: Duration) {
        assert!(
            self.is_manual(),
            "libnet: only a manual clock can be advanced"
        );
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.inner.offset_ns.fetch_add(ns, Ordering::SeqCst);
        let loops = self.inner.loops.lock().unwrap_or_else(|e| e.into_inner());
        for l in loops.iter().filter_map(|w| w.upgrade()) {
            l.notify();
        }
    }

    /// Records a loop to wake when this (manual) clock moves.
    pub(crate) fn attach(&self, remote: &Arc<Remote>) {
        if self.is_manual() {
            let mut loops = self.inner.loops.lock().unwrap_or_else(|e| e.into_inner());
            loops.retain(|w| w.strong_count() > 0);
            loops.push(Arc::downgrade(remote));
        }
    }
}

/// The current time on the caller's runtime clock (fresh, not the cached
/// [`now`]); `Instant::now()` outside a runtime. Every deadline inside
/// libnet is computed from this.
#[inline]
pub(crate) fn clock_now() -> Instant {
    core::with_current(|c| c.clock().now()).unwrap_or_else(Instant::now)
}

/// `clock_now() + d`, saturating far in the future instead of overflowing,
/// so `Duration::MAX` means "as good as forever", as with std's timeouts.
#[inline]
pub(crate) fn deadline_after(d: Duration) -> Instant {
    let now = clock_now();
    now.checked_add(d).unwrap_or_else(|| now + FAR_FUTURE)
}

/// What "forever" saturates to: about 30 years, far beyond any real wait
/// and well inside what `Instant` and the timer wheel can represent.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// The runtime clock: the time at which the current loop last polled.
/// Outside a runtime, `Instant::now()`.
pub fn now() -> Instant {
    match core::current() {
        Some(c) => c.now(),
        None => Instant::now(),
    }
}

/// Parks the calling coroutine for `d` (the thread, outside a runtime).
pub fn sleep(d: Duration) {
    sleep_until(deadline_after(d));
}

/// Parks the calling coroutine until `deadline` (the thread, outside a
/// runtime). Returns early when the runtime is shutting down, and at once on
/// a loop thread outside any coroutine (where sleeping would stall the loop).
pub fn sleep_until(deadline: Instant) {
    match core::current() {
        Some(c) => {
            if !core::in_coroutine() {
                log::warn!("libnet: sleep on an event-loop thread outside a coroutine ignored");
                return;
            }
            while c.clock().now() < deadline {
                if c.park_until(Some(deadline)).is_err() {
                    return;
                }
            }
        }
        None => {
            let left = deadline.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                thread::sleep(left);
            }
        }
    }
}

/// Ticks every `period`; see [`interval`].
#[derive(Debug)]
pub struct Interval {
    period: Duration,
    next: Instant,
}

/// A periodic ticker whose first tick is one `period` from now. If the
/// caller falls behind, missed ticks are skipped rather than bunched up.
pub fn interval(period: Duration) -> Interval {
    assert!(
        !period.is_zero(),
        "libnet: interval period must be non-zero"
    );
    Interval {
        period,
        next: deadline_after(period),
    }
}

impl Interval {
    /// Waits for the next tick and returns its scheduled time.
    pub fn tick(&mut self) -> Instant {
        let at = self.next;
        sleep_until(at);
        let now = clock_now();
        self.next = self.next.checked_add(self.period).unwrap_or(self.next);
        if self.next <= now {
            // Skip the ticks we missed, keeping the phase.
            let period = self.period.as_nanos();
            let behind = now.duration_since(self.next).as_nanos() / period + 1;
            let skip = u64::try_from(behind * period).unwrap_or(u64::MAX);
            self.next = self
                .next
                .checked_add(Duration::from_nanos(skip))
                .unwrap_or(now + self.period);
        }
        at
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }
}

/// A timer that runs a callback in a fresh coroutine; see [`after`] and [`every`].
pub(crate) struct CallbackTimer {
    /// The callback; taken out while it runs.
    f: RefCell<Option<Box<dyn FnMut()>>>,
    /// `Some` for periodic timers.
    period: Option<Duration>,
    /// When it is due next.
    deadline: Cell<Instant>,
    /// Its entry in the loop's wheel, while pending.
    id: Cell<Option<TimerId>>,
    /// Set by [`Timer::cancel`].
    cancelled: Cell<bool>,
    /// The loop it lives on.
    core: Weak<Core>,
}

impl CallbackTimer {
    /// Called by the loop when the timer expires.
    pub(crate) fn fire(t: Rc<CallbackTimer>, core: &Core) {
        t.id.set(None);
        if t.cancelled.get() {
            return;
        }
        if let Some(p) = t.period {
            let now = core.now();
            let mut next = t.deadline.get().checked_add(p).unwrap_or(now + FAR_FUTURE);
            if next <= now {
                next = now.checked_add(p).unwrap_or(now + FAR_FUTURE);
            }
            t.deadline.set(next);
            t.id.set(Some(core.add_timer(next, TimerAction::Callback(t.clone()))));
        }
        let Some(f) = t.f.borrow_mut().take() else {
            // The previous run is still blocked: skip this tick.
            log::debug!("libnet: timer callback still running, tick skipped");
            return;
        };
        crate::spawn(move || {
            // Puts the callback back for the next tick even if it panics
            // (the panic itself is logged by the detached coroutine).
            struct Restore {
                t: Rc<CallbackTimer>,
                f: Option<Box<dyn FnMut()>>,
            }
            impl Drop for Restore {
                fn drop(&mut self) {
                    if !self.t.cancelled.get() {
                        *self.t.f.borrow_mut() = self.f.take();
                    }
                }
            }
            let mut guard = Restore { t, f: Some(f) };
            if let Some(f) = guard.f.as_mut() {
                f();
            }
        });
    }
}

/// Handle of a callback timer. Dropping it leaves the timer running; call
/// [`Timer::cancel`] to stop it. Belongs to the loop that created it.
pub struct Timer {
    inner: Rc<CallbackTimer>,
}

impl fmt::Debug for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timer")
            .field("period", &self.inner.period)
            .field("cancelled", &self.inner.cancelled.get())
            .finish()
    }
}

impl Timer {
    /// Stops the timer: a pending run will not start (one already running
    /// finishes). Returns false if it was already cancelled, or was a
    /// one-shot timer that already fired.
    pub fn cancel(&self) -> bool {
        if self.inner.cancelled.replace(true) {
            return false;
        }
        *self.inner.f.borrow_mut() = None;
        match (self.inner.id.take(), self.inner.core.upgrade()) {
            (Some(id), Some(core)) => core.cancel_timer(id),
            _ => false,
        }
    }

    /// True while the timer will still fire.
    pub fn is_pending(&self) -> bool {
        !self.inner.cancelled.get() && self.inner.id.get().is_some()
    }
}

fn start(delay: Duration, period: Option<Duration>, f: Box<dyn FnMut()>) -> Timer {
    let core = core::current().expect("libnet: timers must be started inside a libnet runtime");
    let deadline = deadline_after(delay);
    let t = Rc::new(CallbackTimer {
        f: RefCell::new(Some(f)),
        period,
        deadline: Cell::new(deadline),
        id: Cell::new(None),
        cancelled: Cell::new(false),
        core: Rc::downgrade(&core),
    });
    t.id.set(Some(
        core.add_timer(deadline, TimerAction::Callback(t.clone())),
    ));
    Timer { inner: t }
}

/// Runs `f` once, in a new coroutine on this loop, after `delay`.
/// Cheap while pending: no coroutine exists until it fires.
pub fn after(delay: Duration, f: impl FnOnce() + 'static) -> Timer {
    let mut f = Some(f);
    start(
        delay,
        None,
        Box::new(move || {
            if let Some(f) = f.take() {
                f()
            }
        }),
    )
}

/// Runs `f` every `period` (first after one period), each time in a new
/// coroutine on this loop, until cancelled. A run that is still going when
/// the next is due makes that tick be skipped.
pub fn every(period: Duration, f: impl FnMut() + 'static) -> Timer {
    assert!(!period.is_zero(), "libnet: timer period must be non-zero");
    start(period, Some(period), Box::new(f))
}

/// Number of timers pending on the current loop (0 outside a runtime).
pub fn pending_timers() -> usize {
    core::current().map_or(0, |c| c.pending_timers())
}
