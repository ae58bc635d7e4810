//! The blocking-work thread pool: `spawn_blocking`.

use std::cell::Cell;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::rc::Rc;
use std::thread;
use std::time::{Duration, Instant};

use libnet::net::TcpStream;
use libnet::{time, Runtime};
use libnet_tests::{
    bounded, panic_message, quiet_expected_panics, run_on, spawn_echo_server, V4_ANY_PORT,
};

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn spawn_blocking_returns_values_from_another_thread() {
    bounded(LIMIT, || {
        run_on(1, || {
            let loop_thread = thread::current().id();
            let (v, id, name) = libnet::spawn_blocking(|| {
                let t = thread::current();
                (vec![1u8, 2, 3], t.id(), t.name().map(str::to_string))
            });
            assert_eq!(v, [1, 2, 3]);
            assert_ne!(id, loop_thread, "spawn_blocking ran on the loop thread");
            assert!(
                name.as_deref()
                    .is_some_and(|n| n.starts_with("libnet-pool")),
                "pool thread named {name:?}"
            );
            let s: String = libnet::spawn_blocking(|| "owned".to_string());
            assert_eq!(s, "owned");
            // Outside the pool the loop is still the same thread.
            assert_eq!(thread::current().id(), loop_thread);
        });
    });
}

#[test]
fn a_blocking_job_does_not_block_the_loop() {
    bounded(LIMIT, || {
        run_on(1, || {
            let ticks = Rc::new(Cell::new(0u32));
            let stop = Rc::new(Cell::new(false));
            let ticker = {
                let (ticks, stop) = (ticks.clone(), stop.clone());
                libnet::spawn(move || {
                    for _ in 0..100_000 {
                        if stop.get() {
                            return;
                        }
                        time::sleep(Duration::from_millis(5));
                        ticks.set(ticks.get() + 1);
                    }
                })
            };
            let start = Instant::now();
            libnet::spawn_blocking(|| thread::sleep(Duration::from_millis(300)));
            let took = start.elapsed();
            stop.set(true);
            ticker.join().expect("ticker");
            eprintln!(
                "loop ticked {} times (5 ms each) during a 300 ms blocking job",
                ticks.get()
            );
            assert!(took >= Duration::from_millis(300));
            // 60 possible; 10 proves the loop kept running.
            assert!(
                ticks.get() >= 10,
                "only {} ticks while the job blocked",
                ticks.get()
            );
        });
    });
}

#[test]
fn a_panic_in_the_job_is_resumed_in_the_caller() {
    quiet_expected_panics();
    bounded(LIMIT, || {
        run_on(2, || {
            let h = libnet::spawn(|| {
                libnet::spawn_blocking(|| -> u8 { panic!("job failed on purpose") })
            });
            let p = h.join().expect_err("the panic was lost");
            assert_eq!(panic_message(&*p), "job failed on purpose");
            let h = libnet::spawn_on(1, || {
                libnet::spawn_blocking(|| -> u8 { panic!("{} on purpose", 42) })
            });
            let p = h.join().expect_err("the panic was lost");
            assert_eq!(panic_message(&*p), "42 on purpose");
            // The pool and the loop are fine afterwards.
            assert_eq!(libnet::spawn_blocking(|| 1), 1);
            assert_eq!(
                libnet::spawn_on(1, || libnet::spawn_blocking(|| 2))
                    .join()
                    .expect("join"),
                2
            );
        });
    });
}

#[test]
fn many_jobs_through_a_small_pool_and_queue() {
    bounded(LIMIT, || {
        let rt = Runtime::builder()
            .loops(2)
            .pool_threads(2)
            .pool_queue(2)
            .build()
            .expect("runtime");
        let results = rt
            .run(|| {
                let hs: Vec<_> = (0..64u64)
                    .map(|i| {
                        libnet::spawn_on(i as usize, move || {
                            libnet::spawn_blocking(move || {
                                thread::sleep(Duration::from_millis(2));
                                (i * 3, thread::current().id())
                            })
                        })
                    })
                    .collect();
                libnet::join_all(hs)
                    .into_iter()
                    .map(|r| r.expect("join"))
                    .collect::<Vec<_>>()
            })
            .expect("run");
        let values: Vec<u64> = results.iter().map(|r| r.0).collect();
        assert_eq!(values, (0..64u64).map(|i| i * 3).collect::<Vec<_>>());
        let threads: HashSet<_> = results.iter().map(|r| r.1).collect();
        assert!(
            threads.len() <= 2,
            "{} pool threads for pool_threads(2)",
            threads.len()
        );
    });
}

#[test]
fn jobs_run_in_parallel_up_to_the_pool_size() {
    bounded(LIMIT, || {
        let rt = Runtime::builder()
            .loops(1)
            .pool_threads(4)
            .build()
            .expect("runtime");
        let took = rt
            .run(|| {
                let start = Instant::now();
                let hs: Vec<_> = (0..4)
                    .map(|_| {
                        libnet::spawn(|| {
                            libnet::spawn_blocking(|| thread::sleep(Duration::from_millis(250)))
                        })
                    })
                    .collect();
                for h in hs {
                    h.join().expect("join");
                }
                start.elapsed()
            })
            .expect("run");
        eprintln!("4 jobs of 250 ms on 4 pool threads took {took:?}");
        assert!(took >= Duration::from_millis(250));
        // Serially they take 1 s; any overlap at all shows in the total.
        assert!(
            took < Duration::from_millis(900),
            "jobs did not overlap: {took:?}"
        );
    });
}

#[test]
fn spawn_blocking_outside_a_runtime_runs_inline() {
    let me = thread::current().id();
    assert!(libnet::spawn_blocking(move || thread::current().id() == me));
}

#[test]
fn nested_spawn_blocking_runs_inline_on_the_pool_thread() {
    bounded(LIMIT, || {
        run_on(1, || {
            let (outer, inner) = libnet::spawn_blocking(|| {
                (
                    thread::current().id(),
                    libnet::spawn_blocking(|| thread::current().id()),
                )
            });
            assert_eq!(outer, inner);
        });
    });
}

#[test]
fn a_pool_job_can_use_libnet_sockets_as_a_plain_thread() {
    bounded(LIMIT, || {
        run_on(1, || {
            let (addr, _server) = spawn_echo_server(V4_ANY_PORT).expect("server");
            let got = libnet::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
                assert_eq!(
                    libnet::current_loop(),
                    None,
                    "a pool thread claims to be a loop"
                );
                let mut c = TcpStream::connect(addr)?;
                c.set_read_timeout(Some(Duration::from_secs(10)))?;
                c.write_all(b"from the pool")?;
                let mut b = vec![0u8; 13];
                c.read_exact(&mut b)?;
                Ok(b)
            })
            .expect("echo from a pool thread");
            assert_eq!(got, b"from the pool");
        });
    });
}
