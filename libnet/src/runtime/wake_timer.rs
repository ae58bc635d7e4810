//! A kernel timer in the loop's poller, so that a loop with timers pending
//! can block in `epoll_wait` without a timeout.
//!
//! A poll with a timeout makes the kernel arm and cancel a high-resolution
//! timer on every sleep. A loop that sleeps once per message (a
//! request/response exchange) paid that each time, although its next
//! deadline (a keepalive, an operation timeout) rarely moves earlier. A
//! `timerfd` registered in the poller stays armed across sleeps instead: it
//! is re-armed only when the next deadline moves *earlier* than what is
//! armed, or once the armed time has passed. A deadline that moved later
//! leaves it armed early: the loop then wakes once, finds nothing due and
//! re-arms. The loop never wakes later than its next timer.
//!
//! Linux and Android only (`timerfd`); elsewhere [`WakeTimer::new`] gives
//! `None` and the loop passes a poll timeout as before.

use std::cell::Cell;
use std::time::Instant;

use mio::{Registry, Token};

/// Token of the wake timer; never a slab index.
pub(crate) const TIMER_TOKEN: Token = Token(usize::MAX - 1);

/// See the module docs.
pub(crate) struct WakeTimer {
    /// The timer's descriptor (non-blocking, close-on-exec, registered
    /// edge-triggered for readability under [`TIMER_TOKEN`]).
    fd: sys::TimerFd,
    /// When it is armed to expire; `None` once it has expired (or never was).
    armed: Cell<Option<Instant>>,
}

impl WakeTimer {
    /// A disarmed timer registered with `registry`; `None` where the OS has
    /// no such timer or it cannot be created (the loop then uses timeouts).
    pub(crate) fn new(registry: &Registry) -> Option<WakeTimer> {
        match sys::TimerFd::new(registry) {
            Ok(fd) => fd.map(|fd| WakeTimer {
                fd,
                armed: Cell::new(None),
            }),
            Err(e) => {
                log::debug!("libnet: no wake timer, polling with timeouts: {e}");
                None
            }
        }
    }

    /// Whether it is armed to expire no later than `at`.
    pub(crate) fn armed_by(&self, at: Instant) -> bool {
        self.armed.get().is_some_and(|a| a <= at)
    }

    /// Makes sure the poller wakes no later than `at` (which is after
    /// `now`). Returns false if the timer could not be armed: the caller
    /// then polls with a timeout.
    pub(crate) fn wake_by(&self, at: Instant, now: Instant) -> bool {
        if self.armed_by(at) {
            return true;
        }
        match self.fd.arm(at.saturating_duration_since(now)) {
            Ok(()) => {
                self.armed.set(Some(at));
                true
            }
            Err(e) => {
                log::debug!("libnet: arming the wake timer failed: {e}");
                self.armed.set(None);
                false
            }
        }
    }

    /// Notes the time after a poll: an armed time that has passed has
    /// expired (its event may still be on its way; a spare wake-up is
    /// harmless), so the next [`WakeTimer::wake_by`] arms again.
    pub(crate) fn passed(&self, now: Instant) {
        if self.armed.get().is_some_and(|a| a <= now) {
            self.armed.set(None);
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod sys {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::time::Duration;

    use mio::unix::SourceFd;
    use mio::{Interest, Registry};

    use super::TIMER_TOKEN;

    /// A `CLOCK_MONOTONIC` timerfd (the clock `Instant` reads on Linux).
    pub(super) struct TimerFd(OwnedFd);

    impl TimerFd {
        pub(super) fn new(registry: &Registry) -> io::Result<Option<TimerFd>> {
            // SAFETY: plain syscall with constant arguments; it returns a new
            // descriptor or -1.
            let fd = unsafe {
                libc::timerfd_create(
                    libc::CLOCK_MONOTONIC,
                    libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` was just returned by timerfd_create and is owned
            // by nothing else.
            let fd = TimerFd(unsafe { OwnedFd::from_raw_fd(fd) });
            registry.register(
                &mut SourceFd(&fd.0.as_raw_fd()),
                TIMER_TOKEN,
                Interest::READABLE,
            )?;
            Ok(Some(fd))
        }

        /// Arms the timer to expire once, `after` from now (at least 1 ns:
        /// zero would disarm it).
        pub(super) fn arm(&self, after: Duration) -> io::Result<()> {
            let after = after.max(Duration::from_nanos(1));
            let spec = libc::itimerspec {
                it_interval: libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: libc::timespec {
                    tv_sec: after.as_secs().min(i64::MAX as u64) as libc::time_t,
                    tv_nsec: after.subsec_nanos() as libc::c_long,
                },
            };
            // SAFETY: the descriptor is open for the call; `spec` is a valid
            // itimerspec and the old value is not asked for (null).
            let r = unsafe {
                libc::timerfd_settime(self.0.as_raw_fd(), 0, &spec, std::ptr::null_mut())
            };
            if r == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod sys {
    use std::io;
    use std::time::Duration;

    use mio::Registry;

    /// No kernel timer here: [`super::WakeTimer::new`] gives `None`.
    pub(super) enum TimerFd {}

    impl TimerFd {
        pub(super) fn new(_registry: &Registry) -> io::Result<Option<TimerFd>> {
            Ok(None)
        }

        pub(super) fn arm(&self, _after: Duration) -> io::Result<()> {
            match *self {}
        }
    }
}
