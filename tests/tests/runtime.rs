//! The runtime: spawning and joining, FIFO scheduling, yields, panics,
//! placement on loops, exit codes, shutdown with blocked coroutines.

use std::cell::{Cell, RefCell};
use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use libnet::net::{TcpListener, TcpStream};
use libnet::sync::{channel, oneshot};
use libnet::{time, Exit, Runtime};
use libnet_tests::{
    bounded, panic_message, quiet_expected_panics, run_on, runtime, spawn_blockers,
    spawn_echo_server, wait_until, BLOCKERS, V4_ANY_PORT,
};

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn main_value_is_returned() {
    bounded(LIMIT, || {
        assert_eq!(runtime(1).run(|| 42), Ok(42));
        assert_eq!(runtime(3).run(|| vec![1, 2, 3]), Ok(vec![1, 2, 3]));
        assert_eq!(
            libnet::run(|| "default runtime".to_string()),
            Ok("default runtime".to_string())
        );
        // A value that is neither Send nor Sync comes back too.
        let rc = runtime(2).run(|| Rc::new(Cell::new(5))).expect("run");
        assert_eq!(rc.get(), 5);
    });
}

#[test]
fn spawn_and_join_return_values() {
    bounded(LIMIT, || {
        run_on(2, || {
            let a = libnet::spawn(|| 1 + 1);
            let b = libnet::spawn(|| "two".to_string());
            let c = libnet::spawn(|| {
                time::sleep(Duration::from_millis(5));
                vec![3u8; 3]
            });
            assert_eq!(a.join().expect("a"), 2);
            assert_eq!(b.join().expect("b"), "two");
            assert_eq!(c.join().expect("c"), vec![3, 3, 3]);
            let hs: Vec<_> = (0..50u64)
                .map(|i| libnet::spawn_on(i as usize, move || i * i))
                .collect();
            let got: Vec<u64> = libnet::join_all(hs)
                .into_iter()
                .map(|r| r.expect("join"))
                .collect();
            assert_eq!(got, (0..50u64).map(|i| i * i).collect::<Vec<_>>());
        });
    });
}

#[test]
fn spawned_coroutines_run_in_fifo_order_on_one_loop() {
    bounded(LIMIT, || {
        run_on(1, || {
            let order: Rc<RefCell<Vec<usize>>> = Rc::default();
            let hs: Vec<_> = (0..20)
                .map(|i| {
                    let order = order.clone();
                    libnet::spawn(move || order.borrow_mut().push(i))
                })
                .collect();
            // Nothing ran yet: main has not given up the loop.
            assert!(
                order.borrow().is_empty(),
                "a spawned coroutine ran before main yielded"
            );
            assert!(hs.iter().all(|h| !h.is_finished()));
            libnet::yield_now();
            assert_eq!(*order.borrow(), (0..20).collect::<Vec<_>>(), "not FIFO");
            assert!(hs.iter().all(|h| h.is_finished()));
            for h in hs {
                h.join().expect("join");
            }
        });
    });
}

#[test]
fn yield_now_interleaves_coroutines() {
    bounded(LIMIT, || {
        let order = run_on(1, || {
            let order: Rc<RefCell<Vec<String>>> = Rc::default();
            let hs: Vec<_> = ["a", "b", "c"]
                .into_iter()
                .map(|name| {
                    let order = order.clone();
                    libnet::spawn(move || {
                        for i in 0..3 {
                            order.borrow_mut().push(format!("{name}{i}"));
                            libnet::yield_now();
                        }
                    })
                })
                .collect();
            for h in hs {
                h.join().expect("join");
            }
            Rc::try_unwrap(order).expect("sole owner").into_inner()
        });
        assert_eq!(
            order,
            ["a0", "b0", "c0", "a1", "b1", "c1", "a2", "b2", "c2"]
        );
    });
}

#[test]
fn yield_now_outside_a_runtime_is_harmless() {
    libnet::yield_now();
    assert_eq!(libnet::current_loop(), None);
    assert_eq!(libnet::loops(), None);
}

#[test]
fn a_spinning_coroutine_does_not_starve_timers_or_io() {
    bounded(LIMIT, || {
        let rt = Runtime::builder()
            .loops(1)
            .batch(4)
            .build()
            .expect("runtime");
        rt.run(|| {
            let stop = Rc::new(Cell::new(false));
            let spins = Rc::new(Cell::new(0u64));
            let spinner = {
                let (stop, spins) = (stop.clone(), spins.clone());
                libnet::spawn(move || {
                    // Bounded: at most 50 M yields.
                    while !stop.get() && spins.get() < 50_000_000 {
                        spins.set(spins.get() + 1);
                        libnet::yield_now();
                    }
                })
            };
            let start = Instant::now();
            time::sleep(Duration::from_millis(30));
            let slept = start.elapsed();
            let (addr, _server) = spawn_echo_server(V4_ANY_PORT).expect("server");
            let mut c = TcpStream::connect(addr).expect("connect");
            std::io::Write::write_all(&mut c, b"x").expect("write");
            let mut b = [0u8; 1];
            c.read_exact(&mut b).expect("read");
            stop.set(true);
            spinner.join().expect("spinner");
            assert!(
                slept < Duration::from_secs(2),
                "sleep(30ms) took {slept:?} beside a spinner"
            );
            assert!(
                spins.get() > 10,
                "the spinner barely ran ({} yields)",
                spins.get()
            );
        })
        .expect("run");
    });
}

#[test]
fn panic_in_a_coroutine_is_reported_through_join_and_the_loop_keeps_running() {
    quiet_expected_panics();
    bounded(LIMIT, || {
        run_on(2, || {
            let sibling = libnet::spawn(|| {
                time::sleep(Duration::from_millis(20));
                "sibling done"
            });
            let bad = libnet::spawn(|| -> u32 { panic!("coroutine failed on purpose") });
            let err = bad.join().expect_err("a panicking coroutine joined Ok");
            assert!(
                panic_message(&*err).contains("failed on purpose"),
                "payload: {}",
                panic_message(&*err)
            );
            // A String payload too, on another loop.
            let bad = libnet::spawn_on(1, || -> u32 { panic!("{} {}", "formatted", "on purpose") });
            let err = bad.join().expect_err("joined Ok");
            assert_eq!(panic_message(&*err), "formatted on purpose");
            // The loops still run coroutines, old and new.
            assert_eq!(sibling.join().expect("sibling"), "sibling done");
            assert_eq!(libnet::spawn(|| 7).join().expect("after panic"), 7);
            assert_eq!(libnet::spawn_on(1, || 8).join().expect("after panic"), 8);
            // A detached coroutine that panics does not take anything down.
            drop(libnet::spawn(|| {
                panic!("detached coroutine failed on purpose")
            }));
            time::sleep(Duration::from_millis(5));
            assert_eq!(libnet::spawn(|| 9).join().expect("after detached panic"), 9);
        });
    });
}

#[test]
fn panic_in_main_is_resumed_by_run_after_shutdown() {
    quiet_expected_panics();
    bounded(LIMIT, || {
        let dropped = Arc::new(AtomicBool::new(false));
        let d = dropped.clone();
        let r = catch_unwind(AssertUnwindSafe(|| {
            runtime(2).run(move || {
                let g = Flag(d);
                libnet::spawn_on(1, move || {
                    let _g = g;
                    time::sleep(Duration::from_secs(3600));
                });
                time::sleep(Duration::from_millis(10));
                panic!("main failed on purpose");
            })
        }));
        let p = r.expect_err("run did not resume main's panic");
        assert_eq!(panic_message(&*p), "main failed on purpose");
        assert!(
            dropped.load(Ordering::SeqCst),
            "other coroutines were not unwound"
        );
    });
}

#[test]
fn spawn_on_lands_on_the_requested_loop() {
    bounded(LIMIT, || {
        let rt = runtime(3);
        let handle = rt.handle();
        assert_eq!(handle.loops(), 3);
        let from_thread = handle.clone();
        rt.run(move || {
            assert_eq!(libnet::current_loop(), Some(0), "main is not on loop 0");
            assert_eq!(libnet::loops(), Some(3));
            for i in 0..9 {
                let got = libnet::spawn_on(i, || (libnet::current_loop(), libnet::loops()))
                    .join()
                    .expect("join");
                assert_eq!(got, (Some(i % 3), Some(3)), "spawn_on({i})");
            }
            // Coroutines spawned from another loop land where asked, and
            // `spawn` stays on the caller's loop.
            let nested = libnet::spawn_on(2, || {
                let here = libnet::spawn(libnet::current_loop).join().expect("join");
                let there = libnet::spawn_on(1, libnet::current_loop)
                    .join()
                    .expect("join");
                (here, there)
            });
            assert_eq!(nested.join().expect("nested"), (Some(2), Some(1)));
            // From a plain thread, through a Handle.
            let t = thread::spawn(move || {
                assert_eq!(libnet::current_loop(), None);
                (0..3)
                    .map(|i| {
                        from_thread
                            .spawn_on(i, libnet::current_loop)
                            .join()
                            .expect("join")
                    })
                    .collect::<Vec<_>>()
            });
            let got = libnet::spawn_blocking(move || t.join().expect("thread"));
            assert_eq!(got, [Some(0), Some(1), Some(2)]);
        })
        .expect("run");
    });
}

#[test]
fn a_coroutine_can_be_joined_from_a_plain_thread_and_another_loop() {
    bounded(LIMIT, || {
        run_on(2, || {
            let slow = libnet::spawn_on(1, || {
                time::sleep(Duration::from_millis(30));
                11
            });
            let t = thread::spawn(move || slow.join().expect("join from thread"));
            assert_eq!(
                libnet::spawn_blocking(move || t.join().expect("thread")),
                11
            );
            let slow = libnet::spawn(|| {
                time::sleep(Duration::from_millis(10));
                12
            });
            let joiner = libnet::spawn_on(1, move || slow.join().expect("join from loop 1"));
            assert_eq!(joiner.join().expect("joiner"), 12);
        });
    });
}

#[test]
fn exit_from_a_coroutine_stops_the_runtime_with_its_code() {
    bounded(LIMIT, || {
        let start = Instant::now();
        let r = runtime(2).run(|| {
            libnet::spawn_on(1, || {
                time::sleep(Duration::from_millis(20));
                libnet::exit(7);
            });
            time::sleep(Duration::from_secs(3600));
            "main returned"
        });
        assert_eq!(r, Err(Exit { code: 7 }));
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "exit took {:?}",
            start.elapsed()
        );
        assert_eq!(Exit { code: 7 }.to_string(), "runtime exited with code 7");
    });
}

#[test]
fn the_first_exit_code_wins() {
    bounded(LIMIT, || {
        let r = runtime(1).run(|| {
            libnet::exit(1);
            libnet::exit(2);
            time::sleep(Duration::from_secs(3600));
        });
        assert_eq!(r, Err(Exit { code: 1 }));
    });
}

#[test]
fn exit_from_main_itself() {
    bounded(LIMIT, || {
        let r = runtime(1).run(|| {
            libnet::exit(0);
            // Main's next wait is where the runtime stops it.
            time::sleep(Duration::from_secs(3600));
            "main returned"
        });
        assert_eq!(r, Err(Exit { code: 0 }));
    });
}

#[test]
fn handle_exit_from_another_thread_stops_the_runtime() {
    bounded(LIMIT, || {
        let rt = runtime(2);
        let h = rt.handle();
        let start = Instant::now();
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            h.exit(3);
        });
        let r = rt.run(|| {
            libnet::spawn_on(1, || time::sleep(Duration::from_secs(3600)));
            time::sleep(Duration::from_secs(3600));
        });
        let took = start.elapsed();
        t.join().expect("thread");
        assert_eq!(r, Err(Exit { code: 3 }));
        assert!(
            took >= Duration::from_millis(50),
            "stopped before exit was called ({took:?})"
        );
        assert!(
            took < Duration::from_secs(5),
            "Handle::exit took {took:?} to stop the runtime"
        );
    });
}

#[test]
fn handle_exit_after_main_returned_does_not_change_the_result() {
    bounded(LIMIT, || {
        let rt = runtime(1);
        let h = rt.handle();
        assert_eq!(rt.run(|| 5), Ok(5));
        h.exit(9);
    });
}

/// Flips its flag when dropped: proves a coroutine's destructors ran.
struct Flag(Arc<AtomicBool>);

impl Drop for Flag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn shutdown_unwinds_blocked_coroutines_promptly() {
    bounded(LIMIT, || {
        // libnet_tests::BLOCKERS first (spawn_blockers), then these.
        const MORE: [&str; 5] = [
            "channel send (full)",
            "accept",
            "join",
            "spawn_blocking",
            "sleep loop",
        ];
        let kinds: Vec<&str> = BLOCKERS.iter().chain(&MORE).copied().collect();
        let kinds2 = kinds.clone();
        let flags: Vec<Arc<AtomicBool>> = kinds.iter().map(|_| Arc::default()).collect();
        let ended: Arc<Mutex<Option<Instant>>> = Arc::default();
        let (f, ended2) = (flags.clone(), ended.clone());
        // The TCP peer is a std listener that never accepts and outlives the
        // runtime: the blocked read must end by the shutdown, not by the
        // peer closing (loops shut down concurrently, so a peer on another
        // loop could close first and end the read normally).
        let peer = std::net::TcpListener::bind(V4_ANY_PORT).expect("bind");
        let addr = peer.local_addr().expect("addr");
        // Each coroutine counts itself just before its blocking call (it
        // cannot be interrupted between the two: loops only switch at waits).
        let ready = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ready_main = ready.clone();
        // Releases the blocking pool job once the runtime has stopped.
        let (release_job, job_waits) = std::sync::mpsc::channel::<()>();
        let rt = runtime(2);
        let handles = rt
            .run(move || {
                let guards = std::array::from_fn(|i| Flag(f[i].clone()));
                let mut hs = spawn_blockers(addr, guards, &ready);
                let g = |i: usize| (Flag(f[BLOCKERS.len() + i].clone()), ready.clone());
                let m0 = g(0);
                hs.push(libnet::spawn_on(0, move || {
                    let (_g, ready) = m0;
                    let (tx, _rx) = channel::<u8>(1);
                    tx.send(1).expect("first send");
                    ready.fetch_add(1, Ordering::SeqCst);
                    let _ = tx.send(2);
                }));
                let m1 = g(1);
                hs.push(libnet::spawn_on(0, move || {
                    let (_g, ready) = m1;
                    let l = TcpListener::bind(V4_ANY_PORT).expect("bind");
                    ready.fetch_add(1, Ordering::SeqCst);
                    let _ = l.accept();
                }));
                let m2 = g(2);
                hs.push(libnet::spawn_on(1, move || {
                    let (_g, ready) = m2;
                    let forever = libnet::spawn(|| time::sleep(Duration::from_secs(3600)));
                    ready.fetch_add(1, Ordering::SeqCst);
                    let _ = forever.join();
                }));
                let m3 = g(3);
                hs.push(libnet::spawn_on(0, move || {
                    let (_g, ready) = m3;
                    ready.fetch_add(1, Ordering::SeqCst);
                    libnet::spawn_blocking(move || {
                        let _ = job_waits.recv_timeout(Duration::from_secs(20));
                    });
                }));
                let m4 = g(4);
                hs.push(libnet::spawn_on(1, move || {
                    let (_g, ready) = m4;
                    ready.fetch_add(1, Ordering::SeqCst);
                    for _ in 0..1_000_000_000u64 {
                        time::sleep(Duration::from_millis(1));
                    }
                }));
                let all = kinds2.len();
                assert!(
                    wait_until(Duration::from_secs(20), || ready_main
                        .load(Ordering::SeqCst)
                        == all),
                    "only {} of {all} coroutines reached their blocking call",
                    ready_main.load(Ordering::SeqCst)
                );
                time::sleep(Duration::from_millis(10));
                for (i, h) in hs.iter().enumerate() {
                    assert!(!h.is_finished(), "{} finished before shutdown", kinds2[i]);
                }
                *ended2.lock().expect("lock") = Some(Instant::now());
                hs
            })
            .expect("run");
        let took = ended.lock().expect("lock").expect("main ended").elapsed();
        drop(peer);
        drop(release_job);
        assert!(
            took < Duration::from_secs(2),
            "run returned {took:?} after main with blocked coroutines"
        );
        let mut wrong = Vec::new();
        for (i, f) in flags.iter().enumerate() {
            if !f.load(Ordering::SeqCst) {
                wrong.push(format!("{}: destructors did not run at shutdown", kinds[i]));
            }
        }
        for (i, h) in handles.into_iter().enumerate() {
            if !h.is_finished() {
                wrong.push(format!(
                    "{}: handle not finished after run returned",
                    kinds[i]
                ));
                continue;
            }
            match h.join() {
                Ok(()) => wrong.push(format!(
                    "{}: cancelled at shutdown, yet joined Ok",
                    kinds[i]
                )),
                Err(p) if !panic_message(&*p).contains("cancelled") => wrong.push(format!(
                    "{}: join payload {:?}, not a cancellation",
                    kinds[i],
                    panic_message(&*p)
                )),
                Err(_) => {}
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    });
}

#[test]
fn coroutines_spawned_but_never_started_are_dropped_at_shutdown() {
    bounded(LIMIT, || {
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        // The loop stops its batch as soon as main returns: the coroutine
        // queued behind main is dropped, not started.
        let rt = runtime(1);
        let h = rt.run(move || {
            let g = Flag(f);
            // Queued behind main, which returns first.
            libnet::spawn(move || {
                let _g = g;
                1
            })
        });
        let h = h.expect("run");
        assert!(
            flag.load(Ordering::SeqCst),
            "the closure of a never-started coroutine leaked"
        );
        assert!(h.join().is_err(), "a never-started coroutine joined Ok");
    });
}

#[test]
fn spawn_outside_a_runtime_panics_with_a_clear_message() {
    quiet_expected_panics();
    let p =
        catch_unwind(|| drop(libnet::spawn(|| ()))).expect_err("spawn outside a runtime worked");
    let m = panic_message(&*p);
    assert!(m.contains("inside a libnet runtime"), "message: {m}");
}

#[test]
fn nested_run_on_a_loop_thread_panics() {
    quiet_expected_panics();
    bounded(LIMIT, || {
        run_on(1, || {
            let h = libnet::spawn(|| runtime(1).run(|| ()));
            let p = h.join().expect_err("nested run worked");
            let m = panic_message(&*p);
            assert!(m.contains("inside a running libnet loop"), "message: {m}");
        });
    });
}

#[test]
fn many_short_lived_coroutines_reuse_stacks() {
    bounded(LIMIT, || {
        let rt = Runtime::builder()
            .loops(2)
            .max_pooled_stacks(64)
            .build()
            .expect("runtime");
        let total = rt
            .run(|| {
                let mut total = 0u64;
                // 100,000 coroutines, at most 1,000 alive at a time.
                for wave in 0..100u64 {
                    let hs: Vec<_> = (0..1000u64)
                        .map(|i| {
                            libnet::spawn_on(i as usize, move || {
                                libnet::yield_now();
                                wave * 1000 + i
                            })
                        })
                        .collect();
                    total += libnet::join_all(hs)
                        .into_iter()
                        .map(|r| r.expect("join"))
                        .sum::<u64>();
                }
                total
            })
            .expect("run");
        assert_eq!(total, (0..100_000u64).sum::<u64>());
    });
}

#[test]
fn ten_thousand_parked_coroutines_all_wake() {
    bounded(LIMIT, || {
        let n = 10_000;
        run_on(1, move || {
            let (tx, rx) = channel::<u32>(n);
            let woke = Rc::new(Cell::new(0usize));
            let hs: Vec<_> = (0..n)
                .map(|_| {
                    let rx = rx.clone();
                    let woke = woke.clone();
                    libnet::spawn(move || {
                        let v = rx.recv().expect("recv");
                        woke.set(woke.get() + 1);
                        v
                    })
                })
                .collect();
            libnet::yield_now();
            assert_eq!(woke.get(), 0);
            for i in 0..n as u32 {
                tx.send(i).expect("send");
            }
            assert!(
                wait_until(Duration::from_secs(20), || woke.get() == n),
                "only {} woke",
                woke.get()
            );
            let mut got: Vec<u32> = libnet::join_all(hs)
                .into_iter()
                .map(|r| r.expect("join"))
                .collect();
            got.sort_unstable();
            assert_eq!(got, (0..n as u32).collect::<Vec<_>>());
        });
    });
}

#[test]
fn handle_spawn_on_after_the_runtime_stopped_does_not_hang() {
    bounded(LIMIT, || {
        let rt = runtime(2);
        let h = rt.handle();
        assert_eq!(rt.run(|| ()), Ok(()));
        // The loops are gone: the coroutine can never run. Joining it must
        // report that, not wait forever.
        let r = libnet_tests::with_deadline(Duration::from_secs(3), move || {
            let j = h.spawn_on(1, || 5);
            j.join().map_err(|p| panic_message(&*p))
        });
        match r {
            Ok(Err(_cancelled)) => {}
            Ok(Ok(v)) => panic!("a coroutine spawned on a stopped runtime ran and returned {v}"),
            Err(e) => panic!(
                "joining a coroutine spawned with Handle::spawn_on after the runtime stopped \
                 did not return: {e}"
            ),
        }
    });
}

#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth as u8; 1024]);
    if depth > 10_000_000 {
        return u64::from(frame[0]);
    }
    recurse(depth + 1) + u64::from(std::hint::black_box(frame[7]))
}

/// Set in the child process of the stack-overflow test.
const OVERFLOW_CHILD: &str = "LIBNET_TESTS_STACK_OVERFLOW_CHILD";

#[test]
fn a_coroutine_stack_overflow_hits_the_guard_page() {
    if std::env::var_os(OVERFLOW_CHILD).is_some() {
        // In the child: overflow a 64 KiB coroutine stack. This must die
        // of SIGSEGV on the guard page, never get past it.
        let rt = Runtime::builder()
            .loops(1)
            .stack_size(64 * 1024)
            .build()
            .expect("runtime");
        let r = rt.run(|| libnet::spawn(|| recurse(0)).join().is_ok());
        println!("child survived a stack overflow: {r:?}");
        std::process::exit(0);
    }
    use std::os::unix::process::ExitStatusExt;
    let exe = std::env::current_exe().expect("current_exe");
    let out = bounded(LIMIT, move || {
        std::process::Command::new(exe)
            .args([
                "--exact",
                "a_coroutine_stack_overflow_hits_the_guard_page",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(OVERFLOW_CHILD, "1")
            .output()
            .expect("run the child")
    });
    let sig = out.status.signal();
    assert!(
        sig == Some(libc::SIGSEGV) || sig == Some(libc::SIGBUS),
        "child ended with {:?} (signal {sig:?}), not a fault on the guard page:\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn two_runtimes_spawn_on_and_join_each_other() {
    bounded(LIMIT, || {
        let rt_b = runtime(2);
        let hb = rt_b.handle();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let b = thread::spawn(move || {
            rt_b.run(move || {
                let _ = stop_rx.recv();
                "b done"
            })
        });
        run_on(1, move || {
            // From a coroutine of runtime A onto loop 1 of runtime B.
            let got = hb
                .spawn_on(1, || {
                    (
                        libnet::current_loop(),
                        thread::current().name().map(str::to_string),
                    )
                })
                .join()
                .expect("join across runtimes");
            assert_eq!(got.0, Some(1));
            assert_eq!(got.1.as_deref(), Some("libnet-loop-1"));
            // A coroutine of B joins one of A.
            let a_side = libnet::spawn(|| {
                time::sleep(Duration::from_millis(10));
                5
            });
            let b_side = hb.spawn_on(0, move || a_side.join().expect("join A from B") + 1);
            assert_eq!(b_side.join().expect("join B from A"), 6);
            stop_tx.send(()).expect("stop B");
            let r = libnet::spawn_blocking(move || b.join().expect("thread B"));
            assert_eq!(r, Ok("b done"));
        });
    });
}
