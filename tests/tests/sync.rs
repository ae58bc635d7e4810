//! Channels: ping-pong on one loop, across loops and with plain threads;
//! back-pressure; disconnection; timeouts; MPMC delivery; oneshot;
//! the semaphore.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use libnet::sync::{
    channel, oneshot, AcquireError, RecvError, RecvTimeoutError, Semaphore, SendError, TrySendError,
};
use libnet::time;
use libnet_tests::{bounded, check_elapsed, run_on, wait_until};

const LIMIT: Duration = Duration::from_secs(60);

fn ok(r: Result<(), String>) {
    if let Err(e) = r {
        panic!("{e}");
    }
}

#[test]
fn ping_pong_on_one_loop() {
    bounded(LIMIT, || {
        run_on(1, || {
            let (ping_tx, ping_rx) = channel::<u32>(1);
            let (pong_tx, pong_rx) = channel::<u32>(1);
            let echo = libnet::spawn(move || {
                let mut n = 0;
                while let Ok(v) = ping_rx.recv() {
                    pong_tx.send(v + 1).expect("pong");
                    n += 1;
                }
                n
            });
            for i in 0..20_000 {
                ping_tx.send(i).expect("ping");
                assert_eq!(pong_rx.recv().expect("pong"), i + 1);
            }
            drop(ping_tx);
            assert_eq!(echo.join().expect("echo"), 20_000);
        });
    });
}

#[test]
fn ping_pong_across_loops() {
    bounded(LIMIT, || {
        run_on(2, || {
            let (ping_tx, ping_rx) = channel::<u32>(1);
            let (pong_tx, pong_rx) = channel::<u32>(1);
            let echo = libnet::spawn_on(1, move || {
                assert_eq!(libnet::current_loop(), Some(1));
                let mut n = 0;
                for v in ping_rx.iter() {
                    pong_tx.send(v * 2).expect("pong");
                    n += 1;
                }
                n
            });
            for i in 0..5_000 {
                ping_tx.send(i).expect("ping");
                assert_eq!(pong_rx.recv().expect("pong"), i * 2);
            }
            drop(ping_tx);
            assert_eq!(echo.join().expect("echo"), 5_000);
        });
    });
}

#[test]
fn ping_pong_with_a_plain_thread() {
    bounded(LIMIT, || {
        run_on(1, || {
            let (ping_tx, ping_rx) = channel::<u32>(1);
            let (pong_tx, pong_rx) = channel::<u32>(1);
            let t = thread::spawn(move || {
                let mut n = 0;
                while let Ok(v) = ping_rx.recv() {
                    pong_tx.send(v + 7).expect("pong");
                    n += 1;
                }
                n
            });
            // Main parks (only its coroutine) while the thread blocks.
            let ticks = Rc::new(Cell::new(0u32));
            let t2 = ticks.clone();
            let ticker = libnet::spawn(move || {
                for _ in 0..3 {
                    time::sleep(Duration::from_millis(1));
                    t2.set(t2.get() + 1);
                }
            });
            for i in 0..5_000 {
                ping_tx.send(i).expect("ping");
                assert_eq!(pong_rx.recv().expect("pong"), i + 7);
            }
            drop(ping_tx);
            ticker.join().expect("ticker");
            assert_eq!(ticks.get(), 3);
            assert_eq!(
                libnet::spawn_blocking(move || t.join().expect("thread")),
                5_000
            );
        });
    });
}

#[test]
fn a_plain_thread_to_a_plain_thread() {
    bounded(LIMIT, || {
        let (tx, rx) = channel::<u32>(2);
        let t = thread::spawn(move || (0..1000).map(|_| rx.recv().expect("recv")).sum::<u32>());
        for i in 0..1000 {
            tx.send(i).expect("send");
        }
        assert_eq!(t.join().expect("thread"), (0..1000).sum());
    });
}

#[test]
fn a_full_channel_parks_the_sender_until_there_is_room() {
    bounded(LIMIT, || {
        run_on(1, || {
            let (tx, rx) = channel::<u32>(4);
            assert_eq!(tx.capacity(), 4);
            let sent = Rc::new(Cell::new(0u32));
            let s = sent.clone();
            let producer = libnet::spawn(move || {
                for i in 0..10 {
                    tx.send(i).expect("send");
                    s.set(i + 1);
                }
            });
            libnet::yield_now();
            libnet::yield_now();
            assert_eq!(sent.get(), 4, "the producer did not stop at capacity");
            assert_eq!(rx.len(), 4);
            assert!(!producer.is_finished());
            // Still parked after a while: no busy retry that gets through.
            time::sleep(Duration::from_millis(20));
            assert_eq!(sent.get(), 4);
            assert_eq!(rx.recv(), Ok(0));
            assert!(
                wait_until(Duration::from_secs(5), || sent.get() == 5),
                "not woken by room"
            );
            libnet::yield_now();
            assert_eq!(sent.get(), 5, "more than one slot was freed");
            let rest: Vec<u32> = (0..9).map(|_| rx.recv().expect("recv")).collect();
            assert_eq!(rest, (1..10).collect::<Vec<_>>());
            producer.join().expect("producer");
        });
    });
}

#[test]
fn try_send_and_try_recv_do_not_wait() {
    bounded(LIMIT, || {
        run_on(1, || {
            let (tx, rx) = channel::<u8>(2);
            assert!(tx.is_empty() && rx.is_empty());
            assert_eq!(rx.try_recv(), Ok(None));
            assert!(tx.try_send(1).is_ok());
            assert!(tx.try_send(2).is_ok());
            match tx.try_send(3) {
                Err(TrySendError::Full(3)) => {}
                other => panic!("try_send on a full channel: {other:?}"),
            }
            assert_eq!(tx.len(), 2);
            assert_eq!(rx.try_recv(), Ok(Some(1)));
            assert_eq!(rx.try_recv(), Ok(Some(2)));
            assert_eq!(rx.try_recv(), Ok(None));
            drop(rx);
            match tx.try_send(4) {
                Err(TrySendError::Disconnected(4)) => {}
                other => panic!("try_send with no receiver: {other:?}"),
            }
            let (tx, rx) = channel::<u8>(1);
            drop(tx);
            assert_eq!(rx.try_recv(), Err(RecvError));
        });
    });
}

#[test]
fn dropping_all_senders_wakes_every_parked_receiver() {
    bounded(LIMIT, || {
        run_on(2, || {
            let (tx, rx) = channel::<u8>(4);
            let tx2 = tx.clone();
            let hs: Vec<_> = (0..6)
                .map(|i| {
                    let rx = rx.clone();
                    libnet::spawn_on(i, move || rx.recv())
                })
                .collect();
            drop(rx);
            time::sleep(Duration::from_millis(20));
            assert!(
                hs.iter().all(|h| !h.is_finished()),
                "a receiver did not park"
            );
            drop(tx);
            time::sleep(Duration::from_millis(20));
            assert!(
                hs.iter().all(|h| !h.is_finished()),
                "a receiver woke while a sender lives"
            );
            drop(tx2);
            for h in hs {
                assert_eq!(h.join().expect("join"), Err(RecvError));
            }
        });
    });
}

#[test]
fn values_sent_before_disconnect_are_still_received() {
    bounded(LIMIT, || {
        run_on(1, || {
            let (tx, rx) = channel::<u8>(8);
            for i in 0..5 {
                tx.send(i).expect("send");
            }
            drop(tx);
            let got: Vec<u8> = rx.iter().collect();
            assert_eq!(got, [0, 1, 2, 3, 4]);
            assert_eq!(rx.recv(), Err(RecvError));
        });
    });
}

#[test]
fn dropping_all_receivers_wakes_every_parked_sender() {
    bounded(LIMIT, || {
        run_on(2, || {
            let (tx, rx) = channel::<u32>(1);
            tx.send(0).expect("fill");
            let hs: Vec<_> = (1..5u32)
                .map(|i| {
                    let tx = tx.clone();
                    libnet::spawn_on(i as usize, move || tx.send(i))
                })
                .collect();
            let rx2 = rx.clone();
            time::sleep(Duration::from_millis(20));
            assert!(hs.iter().all(|h| !h.is_finished()), "a sender did not park");
            drop(rx);
            time::sleep(Duration::from_millis(20));
            assert!(
                hs.iter().all(|h| !h.is_finished()),
                "a sender woke while a receiver lives"
            );
            drop(rx2);
            for (i, h) in hs.into_iter().enumerate() {
                match h.join().expect("join") {
                    Err(SendError(v)) => assert_eq!(v, i as u32 + 1, "value not handed back"),
                    Ok(()) => panic!("send succeeded with no receiver"),
                }
            }
        });
    });
}

#[test]
fn recv_timeout_and_send_timeout() {
    bounded(LIMIT, || {
        run_on(1, || {
            let (tx, rx) = channel::<u8>(1);
            let want = Duration::from_millis(50);
            let start = Instant::now();
            assert_eq!(rx.recv_timeout(want), Err(RecvTimeoutError::Timeout));
            ok(check_elapsed("recv_timeout", start.elapsed(), want));
            // A value arriving before the deadline is taken.
            let tx2 = tx.clone();
            libnet::spawn(move || {
                time::sleep(Duration::from_millis(10));
                tx2.send(9).expect("send");
            });
            assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(9));
            tx.send(1).expect("send");
            let start = Instant::now();
            match tx.send_timeout(2, want) {
                Err(TrySendError::Full(2)) => {}
                other => panic!("send_timeout on a full channel: {other:?}"),
            }
            ok(check_elapsed("send_timeout", start.elapsed(), want));
            assert_eq!(rx.recv(), Ok(1));
            assert!(tx.send_timeout(3, want).is_ok());
            assert_eq!(rx.recv(), Ok(3));
            drop(tx);
            assert_eq!(rx.recv_timeout(want), Err(RecvTimeoutError::Disconnected));
        });
    });
}

#[test]
fn recv_timeout_on_a_plain_thread() {
    bounded(LIMIT, || {
        let (_tx, rx) = channel::<u8>(1);
        let want = Duration::from_millis(40);
        let start = Instant::now();
        assert_eq!(rx.recv_timeout(want), Err(RecvTimeoutError::Timeout));
        ok(check_elapsed(
            "recv_timeout on a thread",
            start.elapsed(),
            want,
        ));
    });
}

#[test]
fn a_timed_out_receiver_does_not_swallow_a_value_meant_for_another() {
    bounded(LIMIT, || {
        run_on(1, || {
            let (tx, rx) = channel::<u32>(1);
            let rx2 = rx.clone();
            // One receiver gives up early, one waits.
            let quitter = {
                let rx = rx.clone();
                libnet::spawn(move || rx.recv_timeout(Duration::from_millis(5)))
            };
            let waiter = libnet::spawn(move || rx2.recv_timeout(Duration::from_secs(10)));
            time::sleep(Duration::from_millis(30));
            assert_eq!(
                quitter.join().expect("join"),
                Err(RecvTimeoutError::Timeout)
            );
            tx.send(77).expect("send");
            assert_eq!(waiter.join().expect("join"), Ok(77));
            drop(rx);
        });
    });
}

#[test]
fn mpmc_delivers_every_value_exactly_once() {
    bounded(LIMIT, || {
        const PRODUCERS: u64 = 4;
        const PER: u64 = 5_000;
        let got = run_on(2, || {
            let (tx, rx) = channel::<u64>(16);
            let seen = Arc::new(Mutex::new(Vec::new()));
            let mut producers = Vec::new();
            for p in 0..PRODUCERS {
                let tx = tx.clone();
                producers.push(libnet::spawn_on(p as usize, move || {
                    for i in 0..PER {
                        tx.send(p * PER + i).expect("send");
                        if i % 64 == 0 {
                            libnet::yield_now();
                        }
                    }
                }));
            }
            // A producer on a plain thread too.
            let ttx = tx.clone();
            let thread_producer = thread::spawn(move || {
                for i in 0..PER {
                    ttx.send(PRODUCERS * PER + i).expect("send");
                }
            });
            drop(tx);
            let mut consumers = Vec::new();
            for c in 0..3usize {
                let (rx, seen) = (rx.clone(), seen.clone());
                consumers.push(libnet::spawn_on(c, move || {
                    let mut mine = Vec::new();
                    for v in rx.iter() {
                        mine.push(v);
                    }
                    let n = mine.len();
                    seen.lock().expect("lock").extend(mine);
                    n
                }));
            }
            // And a consumer on a plain thread.
            let (trx, tseen) = (rx.clone(), seen.clone());
            let thread_consumer = thread::spawn(move || {
                let mine: Vec<u64> = trx.iter().collect();
                tseen.lock().expect("lock").extend(mine);
            });
            drop(rx);
            for p in producers {
                p.join().expect("producer");
            }
            let counts: Vec<usize> = consumers
                .into_iter()
                .map(|c| c.join().expect("consumer"))
                .collect();
            libnet::spawn_blocking(move || {
                thread_producer.join().expect("thread producer");
                thread_consumer.join().expect("thread consumer");
            });
            eprintln!("coroutine consumers took {counts:?} values");
            let v = std::mem::take(&mut *seen.lock().expect("lock"));
            v
        });
        let total = (PRODUCERS + 1) * PER;
        assert_eq!(got.len() as u64, total, "values lost or duplicated");
        let mut sorted = got;
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len() as u64, total, "some values delivered twice");
        assert_eq!(sorted, (0..total).collect::<Vec<_>>());
    });
}

#[test]
fn capacity_one_stress_with_timeouts_loses_and_duplicates_nothing() {
    bounded(LIMIT, || {
        const PER: u32 = 5_000;
        const PRODUCERS: u32 = 3;
        let (sum, count) = run_on(2, || {
            let (tx, rx) = channel::<u32>(1);
            let received = Arc::new(std::sync::atomic::AtomicU32::new(0));
            let total = PER * PRODUCERS;
            // Producers: two coroutines on different loops and a plain thread,
            // all retrying short send timeouts.
            let produce = move |tx: libnet::sync::Sender<u32>, base: u32| {
                for i in 0..PER {
                    let mut v = base + i;
                    let mut tries = 0u32;
                    loop {
                        match tx.send_timeout(v, Duration::from_millis(1)) {
                            Ok(()) => break,
                            Err(TrySendError::Full(back)) => v = back,
                            Err(TrySendError::Disconnected(_)) => panic!("receivers gone"),
                        }
                        tries += 1;
                        assert!(tries < 100_000, "a sender starved");
                    }
                }
            };
            let p0 = {
                let tx = tx.clone();
                libnet::spawn_on(0, move || produce(tx, 0))
            };
            let p1 = {
                let tx = tx.clone();
                libnet::spawn_on(1, move || produce(tx, PER))
            };
            let p2 = {
                let tx = tx.clone();
                thread::spawn(move || produce(tx, 2 * PER))
            };
            drop(tx);
            // Consumers: coroutines on both loops and a thread, retrying short
            // receive timeouts until everything has arrived.
            let consume =
                move |rx: libnet::sync::Receiver<u32>,
                      received: Arc<std::sync::atomic::AtomicU32>| {
                    let mut mine = Vec::new();
                    let end = Instant::now() + Duration::from_secs(40);
                    while received.load(std::sync::atomic::Ordering::SeqCst) < total
                        && Instant::now() < end
                    {
                        match rx.recv_timeout(Duration::from_millis(1)) {
                            Ok(v) => {
                                received.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                mine.push(v);
                            }
                            Err(RecvTimeoutError::Timeout) => {}
                            Err(RecvTimeoutError::Disconnected) => break,
                        }
                    }
                    mine
                };
            let cs: Vec<_> = (0..2)
                .map(|i| {
                    let (rx, r) = (rx.clone(), received.clone());
                    libnet::spawn_on(i, move || consume(rx, r))
                })
                .collect();
            let (trx, tr) = (rx.clone(), received.clone());
            let tc = thread::spawn(move || consume(trx, tr));
            drop(rx);
            p0.join().expect("p0");
            p1.join().expect("p1");
            let mut all: Vec<u32> = cs
                .into_iter()
                .flat_map(|c| c.join().expect("consumer"))
                .collect();
            let from_thread = libnet::spawn_blocking(move || {
                p2.join().expect("p2");
                tc.join().expect("thread consumer")
            });
            all.extend(from_thread);
            all.sort_unstable();
            let n = all.len();
            all.dedup();
            assert_eq!(all.len(), n, "duplicates delivered");
            (all.iter().map(|&v| u64::from(v)).sum::<u64>(), n)
        });
        let total = u64::from(PER * PRODUCERS);
        assert_eq!(count as u64, total, "values lost");
        assert_eq!(sum, total * (total - 1) / 2);
    });
}

#[test]
fn per_producer_order_is_kept() {
    bounded(LIMIT, || {
        run_on(2, || {
            let (tx, rx) = channel::<(u8, u32)>(8);
            for p in 0..3u8 {
                let tx = tx.clone();
                libnet::spawn_on(p as usize, move || {
                    for i in 0..2000 {
                        tx.send((p, i)).expect("send");
                    }
                });
            }
            drop(tx);
            let mut next = [0u32; 3];
            for (p, i) in rx.iter() {
                assert_eq!(i, next[p as usize], "producer {p} out of order");
                next[p as usize] += 1;
            }
            assert_eq!(next, [2000; 3]);
        });
    });
}

#[test]
fn oneshot_delivers_one_value_anywhere() {
    bounded(LIMIT, || {
        run_on(2, || {
            // Across loops.
            let (tx, rx) = oneshot::channel::<String>();
            libnet::spawn_on(1, move || {
                time::sleep(Duration::from_millis(5));
                tx.send("hello".into()).expect("send");
            });
            assert_eq!(rx.recv(), Ok("hello".to_string()));
            // From a plain thread.
            let (tx, rx) = oneshot::channel::<u32>();
            let t = thread::spawn(move || tx.send(5));
            assert_eq!(rx.recv(), Ok(5));
            libnet::spawn_blocking(move || t.join().expect("thread")).expect("send");
            // To a plain thread.
            let (tx, rx) = oneshot::channel::<u32>();
            let t = thread::spawn(move || rx.recv());
            time::sleep(Duration::from_millis(5));
            tx.send(6).expect("send");
            assert_eq!(
                libnet::spawn_blocking(move || t.join().expect("thread")),
                Ok(6)
            );
            // try_recv.
            let (tx, rx) = oneshot::channel::<u8>();
            assert_eq!(rx.try_recv(), None);
            tx.send(1).expect("send");
            assert_eq!(rx.try_recv(), Some(1));
        });
    });
}

#[test]
fn oneshot_disconnects_and_timeouts() {
    bounded(LIMIT, || {
        run_on(1, || {
            let (tx, rx) = oneshot::channel::<u8>();
            let h = libnet::spawn(move || rx.recv());
            time::sleep(Duration::from_millis(10));
            assert!(!h.is_finished());
            drop(tx);
            assert_eq!(h.join().expect("join"), Err(RecvError));
            let (tx, rx) = oneshot::channel::<u8>();
            drop(rx);
            assert_eq!(tx.send(3), Err(3));
            let (_tx, rx) = oneshot::channel::<u8>();
            let want = Duration::from_millis(40);
            let start = Instant::now();
            assert_eq!(rx.recv_timeout(want), Err(RecvTimeoutError::Timeout));
            ok(check_elapsed("oneshot recv_timeout", start.elapsed(), want));
            let (tx, rx) = oneshot::channel::<u8>();
            tx.send(4).expect("send");
            assert_eq!(
                rx.recv_timeout(want),
                Ok(4),
                "a value sent before recv_timeout was lost"
            );
        });
    });
}

#[test]
fn channel_ends_are_send_and_work_from_a_pool_thread() {
    bounded(LIMIT, || {
        run_on(1, || {
            let (tx, rx) = channel::<u32>(1);
            libnet::spawn(move || {
                for i in 0..100 {
                    tx.send(i).expect("send");
                }
            });
            let sum = libnet::spawn_blocking(move || rx.iter().sum::<u32>());
            assert_eq!(sum, (0..100).sum());
        });
    });
}

#[test]
fn semaphore_permits_are_never_exceeded_across_loops_and_threads() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    bounded(LIMIT, || {
        const PERMITS: usize = 3;
        const TASKS: usize = 40;
        const ROUNDS: usize = 200;
        let sem = Semaphore::new(PERMITS);
        let (holders, max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        // Holds a permit for a while, counting who else holds one meanwhile.
        let hold = {
            let (holders, max) = (holders.clone(), max.clone());
            move |p: libnet::sync::Permit, pause: &dyn Fn()| {
                let n = holders.fetch_add(1, SeqCst) + 1;
                max.fetch_max(n, SeqCst);
                pause();
                holders.fetch_sub(1, SeqCst);
                drop(p);
            }
        };
        let s = sem.clone();
        let h = hold.clone();
        run_on(3, move || {
            let mut tasks = Vec::new();
            for i in 0..TASKS {
                let (sem, hold) = (s.clone(), h.clone());
                tasks.push(libnet::spawn_on(i % 3, move || {
                    let mut timeouts = 0;
                    for r in 0..ROUNDS {
                        // Every fourth task waits with short timeouts, so
                        // waiters leave the queue while permits are handed on.
                        let p = if i % 4 == 0 {
                            match sem.acquire_timeout(Duration::from_micros(200)) {
                                Ok(p) => p,
                                Err(AcquireError::Timeout) => {
                                    timeouts += 1;
                                    continue;
                                }
                                Err(e) => panic!("acquire_timeout: {e}"),
                            }
                        } else if r % 5 == 0 {
                            match sem.try_acquire() {
                                Some(p) => p,
                                None => continue,
                            }
                        } else {
                            sem.acquire().expect("acquire")
                        };
                        hold(p, &|| {
                            if r % 3 == 0 {
                                time::sleep(Duration::from_micros(100));
                            } else {
                                libnet::yield_now();
                            }
                        });
                    }
                    timeouts
                }));
            }
            // Two plain threads compete too.
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let (sem, hold) = (s.clone(), h.clone());
                    thread::spawn(move || {
                        for _ in 0..ROUNDS {
                            let p = sem.acquire().expect("acquire on a thread");
                            hold(p, &thread::yield_now);
                        }
                    })
                })
                .collect();
            let timeouts: usize = tasks.into_iter().map(|t| t.join().expect("task")).sum();
            libnet::spawn_blocking(move || {
                for t in threads {
                    t.join().expect("thread");
                }
            });
            eprintln!("semaphore stress: {timeouts} timed-out acquires");
        });
        let max = max.load(SeqCst);
        assert!(
            max <= PERMITS,
            "{max} holders at once with {PERMITS} permits"
        );
        assert!(max >= 1);
        assert_eq!(holders.load(SeqCst), 0);
        assert_eq!(sem.waiting(), 0, "a waiter was left in the queue");
        assert_eq!(sem.available(), PERMITS, "a permit was lost");
    });
}

#[test]
fn semaphore_waiters_are_served_in_arrival_order() {
    bounded(LIMIT, || {
        run_on(2, || {
            const WAITERS: usize = 8;
            let sem = Semaphore::new(1);
            let held = sem.acquire().expect("free permit");
            let order = Arc::new(Mutex::new(Vec::new()));
            let mut coroutines = Vec::new();
            let mut threads = Vec::new();
            for i in 0..WAITERS {
                let (s, order) = (sem.clone(), order.clone());
                let take = move || {
                    let p = s.acquire().expect("acquire");
                    order.lock().expect("lock").push(i);
                    drop(p);
                };
                // Alternate loops, with one plain thread in the queue.
                if i == 5 {
                    threads.push(thread::spawn(take));
                } else {
                    coroutines.push(libnet::spawn_on(i % 2, take));
                }
                // Queue them one at a time, so arrival order is known.
                assert!(
                    wait_until(Duration::from_secs(10), || sem.waiting() == i + 1),
                    "waiter {i} did not queue"
                );
            }
            drop(held);
            // Handed to the first waiter, not freed: a newcomer cannot take it.
            assert!(sem.try_acquire().is_none(), "a newcomer overtook the queue");
            for c in coroutines {
                c.join().expect("waiter");
            }
            libnet::spawn_blocking(move || {
                for t in threads {
                    t.join().expect("thread");
                }
            });
            assert_eq!(
                *order.lock().expect("lock"),
                (0..WAITERS).collect::<Vec<_>>()
            );
            assert_eq!(sem.available(), 1);
        });
    });
}

#[test]
fn a_timed_out_semaphore_waiter_does_not_lose_a_wake_up() {
    bounded(LIMIT, || {
        run_on(2, || {
            let sem = Semaphore::new(1);
            let held = sem.acquire().expect("free permit");
            let want = Duration::from_millis(30);
            // First in the queue: gives up early.
            let quitter = {
                let sem = sem.clone();
                libnet::spawn_on(1, move || {
                    let start = Instant::now();
                    let r = sem.acquire_timeout(want).map(drop);
                    (r, start.elapsed())
                })
            };
            assert!(wait_until(Duration::from_secs(10), || sem.waiting() == 1));
            // Second: waits as long as it takes.
            let waiter = {
                let sem = sem.clone();
                libnet::spawn(move || sem.acquire_timeout(Duration::from_secs(30)).map(drop))
            };
            assert!(wait_until(Duration::from_secs(10), || sem.waiting() == 2));
            let (r, took) = quitter.join().expect("quitter");
            assert_eq!(r, Err(AcquireError::Timeout));
            ok(check_elapsed("acquire_timeout", took, want));
            assert_eq!(sem.waiting(), 1, "the quitter stayed in the queue");
            // The permit goes to the remaining waiter, not to the one gone.
            drop(held);
            assert_eq!(waiter.join().expect("waiter"), Ok(()));
            assert_eq!(sem.available(), 1);
            // A zero timeout with a free permit still takes it; without one
            // it fails at once.
            let p = sem.acquire_timeout(Duration::ZERO).expect("free permit");
            assert_eq!(
                sem.acquire_timeout(Duration::ZERO).map(drop),
                Err(AcquireError::Timeout)
            );
            drop(p);
            assert_eq!(sem.waiting(), 0);
        });
    });
}

#[test]
fn dropping_a_permit_wakes_a_waiter_on_another_loop_or_thread() {
    bounded(LIMIT, || {
        run_on(2, || {
            let sem = Semaphore::new(1);
            let waiter = |sem: Semaphore| {
                libnet::spawn_on(1, move || {
                    let p = sem.acquire().expect("acquire");
                    (libnet::current_loop(), p)
                })
            };
            // Dropped on loop 0, the waiter is on loop 1.
            let held = sem.acquire().expect("free permit");
            let h = waiter(sem.clone());
            assert!(wait_until(Duration::from_secs(10), || sem.waiting() == 1));
            time::sleep(Duration::from_millis(10));
            assert!(!h.is_finished(), "acquired while the permit was held");
            drop(held);
            let (at, held) = h.join().expect("waiter");
            assert_eq!(at, Some(1));
            // Dropped on a plain thread.
            let h = waiter(sem.clone());
            assert!(wait_until(Duration::from_secs(10), || sem.waiting() == 1));
            let t = thread::spawn(move || drop(held));
            let (at, held) = h.join().expect("waiter");
            assert_eq!(at, Some(1));
            libnet::spawn_blocking(move || t.join().expect("thread"));
            drop(held);
            assert_eq!(sem.available(), 1);
        });
    });
}

#[test]
fn a_semaphore_waiter_unwound_at_shutdown_leaves_the_queue_or_passes_its_permit_on() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    bounded(LIMIT, || {
        let sem = Semaphore::new(1);
        // Parked in the queue when the runtime stops: it is unwound and
        // must leave the queue.
        let held = sem.try_acquire().expect("free permit");
        let s = sem.clone();
        run_on(2, move || {
            let w = s.clone();
            drop(libnet::spawn_on(1, move || {
                if w.acquire().is_ok() {
                    panic!("acquired a permit that is held");
                }
            }));
            assert!(wait_until(Duration::from_secs(10), || s.waiting() == 1));
        });
        assert_eq!(sem.waiting(), 0, "an unwound waiter stayed in the queue");
        drop(held);
        assert_eq!(sem.available(), 1);
        // Handed a permit, then unwound before it could run (main returns
        // without yielding, so the woken waiter is never resumed): the
        // permit must come back.
        let s = sem.clone();
        let resumed = Arc::new(AtomicBool::new(false));
        let r = resumed.clone();
        run_on(1, move || {
            let held = s.acquire().expect("free permit");
            let w = s.clone();
            drop(libnet::spawn(move || {
                let p = w.acquire();
                r.store(true, SeqCst);
                drop(p);
            }));
            libnet::yield_now();
            assert_eq!(s.waiting(), 1);
            drop(held);
        });
        assert!(!resumed.load(SeqCst), "the waiter ran after main returned");
        assert_eq!(sem.waiting(), 0);
        assert_eq!(
            sem.available(),
            1,
            "the permit handed to an unwound waiter was lost"
        );
        // Outside a runtime acquire blocks the thread, and works.
        drop(sem.acquire().expect("acquire on a plain thread"));
    });
}
