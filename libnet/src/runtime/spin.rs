//! How long an idle loop polls without blocking before it sleeps.
//!
//! A loop that blocks in `epoll_wait` gives its CPU up; on a virtual machine
//! an idle vCPU halts, and the next datagram must wake it through the
//! hypervisor, which costs more than handling the datagram. A loop in a
//! request/response rhythm (a ping-pong, a request waiting for its reply)
//! pays that on every message. So before blocking, an idle loop polls with a
//! zero timeout for a short *window*; work that arrives inside the window is
//! picked up without a sleep and a wake-up.
//!
//! The window adapts, so that a loop whose events are far apart spins
//! nothing (the same idea as Linux's halt-polling): it starts at zero; an
//! idle period that ended within `max` of its start (the sleep was short:
//! spinning would have caught the event) grows it (to [`START`], then
//! doubling, up to `max`); an idle period longer than `max` halves it (below
//! `START` it drops to zero). An event caught while spinning leaves it as it
//! is. The CPU spent spinning is therefore at most one window per idle
//! period, and shrinks to nothing once events come less often than every
//! `max`.
//!
//! This type is the policy only (durations in, a window out); the loop does
//! the polling (`Core::run`).

use std::time::Duration;

/// The first non-zero window.
pub(crate) const START: Duration = Duration::from_micros(10);

/// The adaptive spin window of one loop.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spin {
    /// The largest window; zero turns spinning off.
    max: Duration,
    /// The current window (zero up to `max`).
    window: Duration,
}

impl Spin {
    /// A policy whose window never exceeds `max` (zero: never spin).
    pub(crate) fn new(max: Duration) -> Spin {
        Spin {
            max,
            window: Duration::ZERO,
        }
    }

    /// Whether the loop should measure its idle periods at all.
    pub(crate) fn enabled(&self) -> bool {
        !self.max.is_zero()
    }

    /// How long to poll without blocking before the next sleep.
    pub(crate) fn window(&self) -> Duration {
        self.window
    }

    /// Records an idle period of `idle` (from the start of spinning to the
    /// end of the sleep) that spinning did not end: it grows the window if
    /// a longer one would have caught the event, else shrinks it.
    pub(crate) fn slept(&mut self, idle: Duration) {
        if !self.enabled() {
            return;
        }
        if idle <= self.max {
            self.window = (self.window * 2).max(START).min(self.max);
        } else {
            self.window /= 2;
            if self.window < START {
                self.window = Duration::ZERO;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(50);

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn starts_without_spinning() {
        assert_eq!(Spin::new(MAX).window(), Duration::ZERO);
    }

    #[test]
    fn short_sleeps_grow_the_window_up_to_max() {
        let mut s = Spin::new(MAX);
        let mut seen = Vec::new();
        for _ in 0..6 {
            s.slept(us(30));
            seen.push(s.window());
        }
        assert_eq!(seen, [us(10), us(20), us(40), us(50), us(50), us(50)]);
    }

    #[test]
    fn long_sleeps_shrink_it_to_nothing() {
        let mut s = Spin::new(MAX);
        for _ in 0..4 {
            s.slept(us(5));
        }
        assert_eq!(s.window(), MAX);
        let mut seen = Vec::new();
        for _ in 0..4 {
            s.slept(Duration::from_millis(1));
            seen.push(s.window());
        }
        assert_eq!(
            seen,
            [us(25), us(12) + Duration::from_nanos(500), us(0), us(0)]
        );
    }

    #[test]
    fn a_sleep_of_exactly_max_counts_as_short() {
        let mut s = Spin::new(MAX);
        s.slept(MAX);
        assert_eq!(s.window(), START);
        s.slept(MAX + Duration::from_nanos(1));
        assert_eq!(s.window(), Duration::ZERO);
    }

    #[test]
    fn zero_max_never_spins() {
        let mut s = Spin::new(Duration::ZERO);
        assert!(!s.enabled());
        for _ in 0..10 {
            s.slept(Duration::ZERO);
        }
        assert_eq!(s.window(), Duration::ZERO);
    }

    #[test]
    fn a_max_below_start_is_the_window() {
        let mut s = Spin::new(us(3));
        s.slept(us(1));
        assert_eq!(s.window(), us(3));
    }
}
