//! Time: sleep accuracy, callback timers, intervals, cancellation at scale,
//! and socket timeouts. Timers must never fire early; lateness is allowed
//! up to `LATE` (generous, for a noisy 2-core machine).

use std::cell::{Cell, RefCell};
use std::io::{ErrorKind, Read, Write};
use std::rc::Rc;
use std::thread;
use std::time::{Duration, Instant};

use libnet::net::{TcpListener, TcpStream, UdpSocket};
use libnet::time::{self, Timer};
use libnet_tests::{
    bounded, check_elapsed, refusing_port, run_on, spawn_echo_server, wait_until, LATE, V4_ANY_PORT,
};

const LIMIT: Duration = Duration::from_secs(60);

fn ok(r: Result<(), String>) {
    if let Err(e) = r {
        panic!("{e}");
    }
}

#[test]
fn sleep_is_never_early_and_not_much_late() {
    bounded(LIMIT, || {
        run_on(1, || {
            for ms in [1u64, 2, 5, 10, 25, 50, 100, 250] {
                let want = Duration::from_millis(ms);
                let clock0 = time::now();
                let start = Instant::now();
                time::sleep(want);
                let elapsed = start.elapsed();
                let clock = time::now().duration_since(clock0);
                eprintln!("sleep({want:?}): {elapsed:?} (runtime clock {clock:?})");
                ok(check_elapsed(&format!("sleep({want:?})"), elapsed, want));
                // The runtime clock is the loop's poll time; it never shows a
                // sleep shorter than asked either.
                assert!(
                    clock >= want,
                    "runtime clock advanced {clock:?} over sleep({want:?})"
                );
                assert!(
                    clock <= want + LATE,
                    "runtime clock advanced {clock:?} over sleep({want:?})"
                );
            }
        });
    });
}

#[test]
fn concurrent_sleeps_on_several_loops_are_never_early() {
    bounded(LIMIT, || {
        run_on(2, || {
            let hs: Vec<_> = (0..400u64)
                .map(|i| {
                    libnet::spawn_on(i as usize, move || {
                        let want = Duration::from_millis(1 + (i * 37) % 120);
                        let start = Instant::now();
                        time::sleep(want);
                        (want, start.elapsed())
                    })
                })
                .collect();
            let mut worst = Duration::ZERO;
            for h in hs {
                let (want, got) = h.join().expect("join");
                ok(check_elapsed(
                    &format!("sleep({want:?}) among 400"),
                    got,
                    want,
                ));
                worst = worst.max(got - want);
            }
            eprintln!("400 concurrent sleeps: worst lateness {worst:?}");
        });
    });
}

#[test]
fn sleep_until_a_past_instant_returns_at_once() {
    bounded(LIMIT, || {
        run_on(1, || {
            let start = Instant::now();
            time::sleep_until(start - Duration::from_millis(5).min(start.elapsed()));
            time::sleep(Duration::ZERO);
            assert!(start.elapsed() < LATE, "took {:?}", start.elapsed());
        });
    });
}

#[test]
fn sleep_outside_a_runtime_blocks_the_thread() {
    let want = Duration::from_millis(30);
    let start = Instant::now();
    time::sleep(want);
    ok(check_elapsed(
        "sleep on a plain thread",
        start.elapsed(),
        want,
    ));
    assert_eq!(time::pending_timers(), 0);
    let t0 = time::now();
    thread::sleep(Duration::from_millis(2));
    assert!(
        time::now() > t0,
        "time::now() outside a runtime does not advance"
    );
}

#[test]
fn runtime_clock_is_monotonic_and_advances() {
    bounded(LIMIT, || {
        run_on(1, || {
            let mut last = time::now();
            let start = Instant::now();
            for _ in 0..50 {
                time::sleep(Duration::from_millis(1));
                let now = time::now();
                assert!(now >= last, "runtime clock went backwards");
                last = now;
            }
            assert!(last.duration_since(start) >= Duration::from_millis(50));
            // It is the time of the loop's last poll: never ahead of the real clock.
            assert!(time::now() <= Instant::now());
        });
    });
}

/// When a callback ran and on which loop.
type Fired = (Instant, Option<usize>);

#[test]
fn after_fires_once_never_early_on_its_own_loop() {
    bounded(LIMIT, || {
        run_on(2, || {
            let r = libnet::spawn_on(1, || {
                let fired: Rc<RefCell<Vec<Fired>>> = Rc::default();
                let want = Duration::from_millis(40);
                let start = Instant::now();
                let f = fired.clone();
                let t = time::after(want, move || {
                    f.borrow_mut()
                        .push((Instant::now(), libnet::current_loop()))
                });
                assert!(t.is_pending());
                assert!(
                    wait_until(Duration::from_secs(10), || !fired.borrow().is_empty()),
                    "never fired"
                );
                time::sleep(Duration::from_millis(50));
                let fired = fired.borrow();
                assert_eq!(
                    fired.len(),
                    1,
                    "a one-shot timer fired {} times",
                    fired.len()
                );
                assert_eq!(fired[0].1, Some(1), "callback ran on another loop");
                ok(check_elapsed(
                    "after(40ms)",
                    fired[0].0.duration_since(start),
                    want,
                ));
                assert!(!t.is_pending());
                assert!(
                    !t.cancel(),
                    "cancel of a fired one-shot timer returned true"
                );
            });
            r.join().expect("loop 1");
        });
    });
}

#[test]
fn after_timers_fire_in_deadline_order() {
    bounded(LIMIT, || {
        run_on(1, || {
            let order: Rc<RefCell<Vec<u64>>> = Rc::default();
            let _timers: Vec<Timer> = [30u64, 10, 50, 20, 40, 1]
                .into_iter()
                .map(|ms| {
                    let order = order.clone();
                    time::after(Duration::from_millis(ms), move || {
                        order.borrow_mut().push(ms)
                    })
                })
                .collect();
            // Block the loop past every deadline: they all expire in one
            // poll and must still run in deadline order.
            thread::sleep(Duration::from_millis(60));
            assert!(
                wait_until(Duration::from_secs(10), || order.borrow().len() == 6),
                "not all fired"
            );
            assert_eq!(*order.borrow(), [1, 10, 20, 30, 40, 50]);
        });
    });
}

#[test]
fn cancelled_after_never_fires() {
    bounded(LIMIT, || {
        run_on(1, || {
            let fired = Rc::new(Cell::new(false));
            let f = fired.clone();
            let t = time::after(Duration::from_millis(20), move || f.set(true));
            assert!(t.is_pending());
            assert!(t.cancel(), "cancel of a pending timer returned false");
            assert!(!t.cancel(), "second cancel returned true");
            assert!(!t.is_pending());
            time::sleep(Duration::from_millis(60));
            assert!(!fired.get(), "a cancelled timer fired");
            // Dropping a handle does not cancel.
            let f = fired.clone();
            drop(time::after(Duration::from_millis(5), move || f.set(true)));
            assert!(
                wait_until(Duration::from_secs(10), || fired.get()),
                "a dropped timer did not fire"
            );
        });
    });
}

#[test]
fn a_hundred_thousand_pending_timers_cancel_quickly() {
    bounded(LIMIT, || {
        run_on(1, || {
            let n = 100_000usize;
            let base = time::pending_timers();
            let fired = Rc::new(Cell::new(0usize));
            let start = Instant::now();
            let timers: Vec<Timer> = (0..n)
                .map(|i| {
                    let fired = fired.clone();
                    // Deadlines spread from 1 s to ~1 day, across wheel levels.
                    let d = Duration::from_millis(1000 + (i as u64 * 7919) % 86_400_000);
                    time::after(d, move || fired.set(fired.get() + 1))
                })
                .collect();
            let created = start.elapsed();
            assert_eq!(time::pending_timers(), base + n);
            // The loop still keeps time with all of them pending.
            let s = Instant::now();
            time::sleep(Duration::from_millis(10));
            ok(check_elapsed(
                "sleep with 100,000 timers pending",
                s.elapsed(),
                Duration::from_millis(10),
            ));
            let start = Instant::now();
            let cancelled = timers.iter().filter(|t| t.cancel()).count();
            let cancel_time = start.elapsed();
            eprintln!("100,000 timers: created in {created:?}, cancelled in {cancel_time:?}");
            assert_eq!(cancelled, n);
            assert_eq!(
                time::pending_timers(),
                base,
                "pending timers after cancelling all"
            );
            assert!(
                created < Duration::from_secs(5),
                "creating 100,000 timers took {created:?}"
            );
            assert!(
                cancel_time < Duration::from_secs(2),
                "cancelling 100,000 timers took {cancel_time:?}"
            );
            assert_eq!(fired.get(), 0);
        });
    });
}

#[test]
fn twenty_thousand_short_timers_all_fire_and_leave_none_pending() {
    bounded(LIMIT, || {
        run_on(1, || {
            let n = 20_000usize;
            let base = time::pending_timers();
            let fired = Rc::new(Cell::new(0usize));
            let early = Rc::new(Cell::new(0usize));
            let start = Instant::now();
            let timers: Vec<Timer> = (0..n)
                .map(|i| {
                    let (fired, early) = (fired.clone(), early.clone());
                    let d = Duration::from_millis(5 + (i as u64 % 100));
                    time::after(d, move || {
                        if start.elapsed() < d {
                            early.set(early.get() + 1);
                        }
                        fired.set(fired.get() + 1);
                    })
                })
                .collect();
            assert!(
                wait_until(Duration::from_secs(30), || fired.get() == n),
                "{} of {n} fired",
                fired.get()
            );
            assert_eq!(early.get(), 0, "{} timers fired early", early.get());
            assert_eq!(time::pending_timers(), base);
            assert!(timers.iter().all(|t| !t.is_pending()));
        });
    });
}

#[test]
fn interval_ticks_on_schedule() {
    bounded(LIMIT, || {
        run_on(1, || {
            let period = Duration::from_millis(20);
            let start = Instant::now();
            let mut iv = time::interval(period);
            assert_eq!(iv.period(), period);
            let mut prev: Option<Instant> = None;
            for k in 1..=5u32 {
                let at = iv.tick();
                let now = Instant::now();
                assert!(now >= at, "tick {k} returned before its time");
                assert!(at >= start + period * k, "tick {k} scheduled early");
                if let Some(p) = prev {
                    assert_eq!(
                        at - p,
                        period,
                        "ticks {k}-1 and {k} are not one period apart"
                    );
                }
                prev = Some(at);
            }
            ok(check_elapsed(
                "5 interval ticks",
                start.elapsed(),
                period * 5,
            ));
        });
    });
}

#[test]
fn interval_skips_missed_ticks_instead_of_bunching() {
    bounded(LIMIT, || {
        run_on(1, || {
            let period = Duration::from_millis(20);
            let mut iv = time::interval(period);
            let first = iv.tick();
            // Fall ~5 periods behind by blocking the loop.
            thread::sleep(period * 5 + Duration::from_millis(10));
            let late = iv.tick(); // the overdue tick: immediate
            let next = iv.tick(); // the one after must wait for its own slot
            let now = Instant::now();
            assert_eq!(
                (late - first),
                period,
                "the overdue tick is the next in line"
            );
            assert!(
                next - late > period,
                "missed ticks were not skipped: {:?} apart",
                next - late
            );
            assert_eq!(
                (next - first).as_nanos() % period.as_nanos(),
                0,
                "phase lost"
            );
            assert!(now >= next);
        });
    });
}

#[test]
fn every_ticks_until_cancelled() {
    bounded(LIMIT, || {
        run_on(1, || {
            let period = Duration::from_millis(20);
            let ticks: Rc<RefCell<Vec<Instant>>> = Rc::default();
            let start = Instant::now();
            let t = {
                let ticks = ticks.clone();
                time::every(period, move || ticks.borrow_mut().push(Instant::now()))
            };
            assert!(
                wait_until(Duration::from_secs(10), || ticks.borrow().len() >= 4),
                "every() stalled"
            );
            for (k, at) in ticks.borrow().iter().enumerate() {
                let want = period * (k as u32 + 1);
                assert!(
                    at.duration_since(start) >= want,
                    "tick {k} early: {:?} < {want:?}",
                    at.duration_since(start)
                );
            }
            assert!(t.is_pending());
            assert!(t.cancel());
            assert!(!t.cancel());
            assert!(!t.is_pending());
            let n = ticks.borrow().len();
            time::sleep(period * 5);
            assert_eq!(ticks.borrow().len(), n, "every() ticked after cancel");
        });
    });
}

#[test]
fn every_can_cancel_itself_from_its_callback() {
    bounded(LIMIT, || {
        run_on(1, || {
            let slot: Rc<RefCell<Option<Timer>>> = Rc::default();
            let count = Rc::new(Cell::new(0u32));
            let t = {
                let (slot, count) = (slot.clone(), count.clone());
                time::every(Duration::from_millis(5), move || {
                    count.set(count.get() + 1);
                    if count.get() == 3 {
                        if let Some(t) = slot.borrow().as_ref() {
                            t.cancel();
                        }
                    }
                })
            };
            *slot.borrow_mut() = Some(t);
            assert!(
                wait_until(Duration::from_secs(10), || count.get() >= 3),
                "stalled"
            );
            time::sleep(Duration::from_millis(40));
            assert_eq!(count.get(), 3, "kept ticking after cancelling itself");
        });
    });
}

#[test]
fn every_skips_a_tick_while_the_previous_run_still_goes() {
    bounded(LIMIT, || {
        run_on(1, || {
            let running = Rc::new(Cell::new(0u32));
            let max_running = Rc::new(Cell::new(0u32));
            let runs = Rc::new(Cell::new(0u32));
            let t = {
                let (running, max_running, runs) =
                    (running.clone(), max_running.clone(), runs.clone());
                time::every(Duration::from_millis(10), move || {
                    running.set(running.get() + 1);
                    max_running.set(max_running.get().max(running.get()));
                    time::sleep(Duration::from_millis(35));
                    running.set(running.get() - 1);
                    runs.set(runs.get() + 1);
                })
            };
            let start = Instant::now();
            assert!(
                wait_until(Duration::from_secs(10), || runs.get() >= 3),
                "stalled"
            );
            t.cancel();
            let elapsed = start.elapsed();
            assert_eq!(max_running.get(), 1, "runs overlapped");
            // Three 35 ms runs in sequence cannot finish in under 105 ms.
            assert!(
                elapsed >= Duration::from_millis(105),
                "3 runs in {elapsed:?}"
            );
            assert!(wait_until(Duration::from_secs(5), || running.get() == 0));
        });
    });
}

#[test]
fn tcp_read_timeout_fires_near_the_deadline() {
    bounded(LIMIT, || {
        run_on(1, || {
            let (addr, _server) = spawn_echo_server(V4_ANY_PORT).expect("server");
            let mut c = TcpStream::connect(addr).expect("connect");
            assert_eq!(c.read_timeout().expect("get"), None);
            for ms in [20u64, 100] {
                let want = Duration::from_millis(ms);
                c.set_read_timeout(Some(want)).expect("set");
                assert_eq!(c.read_timeout().expect("get"), Some(want));
                let start = Instant::now();
                let mut b = [0u8; 4];
                let e = c
                    .read(&mut b)
                    .expect_err("read with nothing to read succeeded");
                assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
                ok(check_elapsed(
                    &format!("TCP read timeout {want:?}"),
                    start.elapsed(),
                    want,
                ));
            }
            // The stream is fine afterwards.
            c.write_all(b"ping").expect("write");
            let mut b = [0u8; 4];
            c.read_exact(&mut b).expect("read");
            assert_eq!(&b, b"ping");
            let e = c
                .set_read_timeout(Some(Duration::ZERO))
                .expect_err("zero timeout accepted");
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
        });
    });
}

#[test]
fn tcp_write_timeout_fires_when_the_peer_does_not_read() {
    bounded(LIMIT, || {
        run_on(1, || {
            let listener = TcpListener::bind(V4_ANY_PORT).expect("bind");
            let addr = listener.local_addr().expect("addr");
            let c = TcpStream::connect(addr).expect("connect");
            let (_peer, _) = listener.accept().expect("accept"); // never reads
            let want = Duration::from_millis(100);
            c.set_write_timeout(Some(want)).expect("set");
            assert_eq!(c.write_timeout().expect("get"), Some(want));
            let chunk = vec![7u8; 1 << 20];
            let mut sent = 0usize;
            let mut result = None;
            // The kernel buffers a few MiB at most; bounded at 1 GiB.
            while sent < 1 << 30 {
                let start = Instant::now();
                match (&c).write(&chunk) {
                    Ok(n) => sent += n,
                    Err(e) => {
                        result = Some((e, start.elapsed()));
                        break;
                    }
                }
            }
            let (e, elapsed) = result.expect("1 GiB written to a peer that never reads");
            assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
            eprintln!("write timed out after {sent} bytes buffered");
            ok(check_elapsed("TCP write timeout", elapsed, want));
        });
    });
}

#[test]
fn udp_read_timeout_fires_near_the_deadline() {
    bounded(LIMIT, || {
        run_on(1, || {
            let s = UdpSocket::bind(V4_ANY_PORT).expect("bind");
            let want = Duration::from_millis(80);
            s.set_read_timeout(Some(want)).expect("set");
            assert_eq!(s.read_timeout().expect("get"), Some(want));
            let mut b = [0u8; 16];
            let start = Instant::now();
            let e = s
                .recv_from(&mut b)
                .expect_err("recv_from with nothing sent");
            assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
            ok(check_elapsed(
                "UDP recv_from timeout",
                start.elapsed(),
                want,
            ));
            let peer = UdpSocket::bind(V4_ANY_PORT).expect("bind");
            s.connect(peer.local_addr().expect("addr"))
                .expect("connect");
            let start = Instant::now();
            let e = s.recv(&mut b).expect_err("recv with nothing sent");
            assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
            ok(check_elapsed("UDP recv timeout", start.elapsed(), want));
        });
    });
}

#[test]
fn accept_timeout_fires_near_the_deadline() {
    bounded(LIMIT, || {
        run_on(1, || {
            let l = TcpListener::bind(V4_ANY_PORT).expect("bind");
            let want = Duration::from_millis(80);
            l.set_accept_timeout(Some(want)).expect("set");
            let start = Instant::now();
            let e = l.accept().expect_err("accept with nobody connecting");
            assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
            ok(check_elapsed("accept timeout", start.elapsed(), want));
            // And a connection that does come is accepted within the timeout.
            let addr = l.local_addr().expect("addr");
            let c = libnet::spawn(move || TcpStream::connect(addr).map(|_| ()));
            l.set_accept_timeout(Some(Duration::from_secs(10)))
                .expect("set");
            l.accept().expect("accept");
            c.join().expect("join").expect("connect");
        });
    });
}

#[test]
fn connect_to_a_closed_loopback_port_is_refused() {
    bounded(LIMIT, || {
        run_on(1, || {
            let (_hold, addr) = refusing_port().expect("reserve a port");
            let e = TcpStream::connect(addr).expect_err("connected to a closed port");
            assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
            let start = Instant::now();
            let e =
                TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect_err("connected");
            assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "refusal took {:?}",
                start.elapsed()
            );
            // connect_timeout to a listening port succeeds.
            let (ok_addr, _server) = spawn_echo_server(V4_ANY_PORT).expect("server");
            let c = TcpStream::connect_timeout(&ok_addr, Duration::from_secs(5))
                .expect("connect_timeout");
            assert_eq!(c.peer_addr().expect("peer"), ok_addr);
        });
    });
}

#[test]
fn read_timeout_on_a_plain_thread() {
    bounded(LIMIT, || {
        let l = std::net::TcpListener::bind(V4_ANY_PORT).expect("bind");
        let mut c =
            TcpStream::connect(l.local_addr().expect("addr")).expect("connect outside a runtime");
        let _peer = l.accept().expect("accept");
        let want = Duration::from_millis(60);
        c.set_read_timeout(Some(want)).expect("set");
        let start = Instant::now();
        let mut b = [0u8; 1];
        let e = c.read(&mut b).expect_err("read with nothing sent");
        assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
        ok(check_elapsed(
            "read timeout on a plain thread",
            start.elapsed(),
            want,
        ));
        let u = UdpSocket::bind(V4_ANY_PORT).expect("bind");
        u.set_read_timeout(Some(want)).expect("set");
        let start = Instant::now();
        let e = u.recv_from(&mut b).expect_err("recv with nothing sent");
        assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
        ok(check_elapsed(
            "UDP timeout on a plain thread",
            start.elapsed(),
            want,
        ));
    });
}

#[test]
fn far_deadlines_stay_pending_and_cancel() {
    bounded(LIMIT, || {
        run_on(1, || {
            let year = Duration::from_secs(365 * 24 * 3600);
            let base = time::pending_timers();
            let t = time::after(year * 3, || panic!("a 3-year timer fired"));
            assert!(t.is_pending());
            assert_eq!(time::pending_timers(), base + 1);
            let sleeper = libnet::spawn(move || time::sleep(year));
            let (addr, _server) = spawn_echo_server(V4_ANY_PORT).expect("server");
            let mut c = TcpStream::connect(addr).expect("connect");
            c.set_read_timeout(Some(year)).expect("set");
            c.write_all(b"far").expect("write");
            let mut b = [0u8; 3];
            c.read_exact(&mut b).expect("read with a one-year timeout");
            assert_eq!(&b, b"far");
            time::sleep(Duration::from_millis(20));
            assert!(!sleeper.is_finished(), "a one-year sleep ended");
            assert!(t.cancel());
            assert_eq!(
                time::pending_timers(),
                base + 1,
                "only the sleeper's timer is left"
            );
        });
    });
}

#[test]
fn duration_max_means_forever_instead_of_panicking() {
    bounded(LIMIT, || {
        run_on(1, || {
            let mut problems = Vec::new();
            let mut check = |what: &str, h: libnet::JoinHandle<()>| {
                time::sleep(Duration::from_millis(20));
                if h.is_finished() {
                    let why = match h.join() {
                        Err(p) => libnet_tests::panic_message(&*p),
                        Ok(()) => "returned".to_string(),
                    };
                    problems.push(format!("{what}: {why}"));
                }
            };
            check(
                "sleep(Duration::MAX)",
                libnet::spawn(|| time::sleep(Duration::MAX)),
            );
            check(
                "after(Duration::MAX)",
                libnet::spawn(|| {
                    let t = time::after(Duration::MAX, || ());
                    time::sleep(Duration::from_secs(3600));
                    drop(t);
                }),
            );
            check(
                "interval(Duration::MAX).tick()",
                libnet::spawn(|| {
                    time::interval(Duration::MAX).tick();
                }),
            );
            let (_tx, rx) = libnet::sync::channel::<u8>(1);
            check(
                "recv_timeout(Duration::MAX)",
                libnet::spawn(move || {
                    let _ = rx.recv_timeout(Duration::MAX);
                }),
            );
            let (tx, _rx) = libnet::sync::channel::<u8>(1);
            tx.send(0).expect("fill");
            check(
                "send_timeout(Duration::MAX)",
                libnet::spawn(move || {
                    let _ = tx.send_timeout(1, Duration::MAX);
                }),
            );
            let (addr, _server) = spawn_echo_server(V4_ANY_PORT).expect("server");
            check(
                "TcpStream read with set_read_timeout(Some(Duration::MAX))",
                libnet::spawn(move || {
                    let mut c = TcpStream::connect(addr).expect("connect");
                    c.set_read_timeout(Some(Duration::MAX)).expect("set");
                    let mut b = [0u8; 1];
                    let _ = c.read(&mut b);
                }),
            );
            assert!(problems.is_empty(), "{problems:#?}");
        });
    });
}

#[test]
fn a_panicking_every_callback_does_not_leave_a_zombie_timer() {
    libnet_tests::quiet_expected_panics();
    bounded(LIMIT, || {
        run_on(1, || {
            let base = time::pending_timers();
            let runs = Rc::new(Cell::new(0u32));
            let r = runs.clone();
            let t = time::every(Duration::from_millis(5), move || {
                r.set(r.get() + 1);
                if r.get() == 2 {
                    panic!("every() callback failed on purpose");
                }
            });
            time::sleep(Duration::from_millis(100));
            // Either the timer keeps running after a failed run, or it is
            // stopped and says so.
            let kept_running = runs.get() > 2;
            let stopped = !t.is_pending() && time::pending_timers() == base;
            assert!(
                kept_running || stopped,
                "after a panic in run 2: {} runs in 100 ms, is_pending() = {}, pending_timers() = {} (base {base})",
                runs.get(),
                t.is_pending(),
                time::pending_timers()
            );
        });
    });
}

/// A loop that spins before sleeping (`Builder::spin`) may take the wake
/// timer's event while spinning; the next sleep must still be woken on time.
///
/// Timeline (ms after the loop started; all before 128, where the timer
/// wheel's next level would add a deadline of its own): short sleeps until
/// 66 grow the spin window to its 25 ms cap; a receive with a timeout at 101
/// and a sleep until 121 start; the loop spins to 91, finds nothing, arms
/// the kernel timer for 101 and blocks; another thread sends at 96 (the
/// receive's deadline goes away; the window halves to 12.5 ms); the next
/// spin runs to 108.5, past 101, and takes the kernel timer's event. The
/// loop must then arm the timer again for 121 instead of taking it as armed.
#[test]
fn a_wake_timer_event_taken_while_spinning_does_not_lose_the_next_timer() {
    bounded(Duration::from_secs(20), || {
        let rt = libnet::Runtime::builder()
            .loops(1)
            .spin(Duration::from_millis(25))
            .build()
            .expect("runtime");
        rt.run(|| {
            let t0 = time::now();
            let ms = Duration::from_millis;
            while time::now() < t0 + ms(66) {
                time::sleep(ms(2));
            }
            let (tx, rx) = libnet::sync::channel::<()>(1);
            let start = time::now();
            let waiter = libnet::spawn(move || rx.recv_timeout(ms(35)));
            let sender = thread::spawn(move || {
                thread::sleep(ms(30));
                tx.send(())
            });
            let started = Instant::now();
            time::sleep_until(start + ms(55));
            let elapsed = started.elapsed();
            // Only the timing is checked: a late sender makes the receive
            // time out, which is fine (the wake-up is then not taken).
            let _ = waiter.join().expect("waiter");
            sender.join().expect("sender").expect("sent");
            assert!(
                elapsed < ms(55) + LATE,
                "the sleep past a spent wake timer took {elapsed:?}"
            );
        })
        .expect("runtime ran");
    });
}
