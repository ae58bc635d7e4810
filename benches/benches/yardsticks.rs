//! Runtime micro-benchmarks: libnet against tokio and may, side by side.
//!
//! Each group is named after the operation and each benchmark after the
//! runtime (`yield_round_trip/libnet`, `yield_round_trip/tokio`,
//! `yield_round_trip/may`, ...), so criterion reports them together.
//!
//! Everything runs on one thread: libnet with one loop (on a thread of its
//! own, driven through `Handle::spawn_on`), tokio on a current-thread
//! runtime, may with a single worker (configured in `main` before may's
//! scheduler starts). All timings are per operation, measured with
//! `iter_custom` from inside the runtime so that entering the runtime is not
//! part of the figure.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio current-thread runtime")
}

/// Spawn a may coroutine.
fn may_go<F, T>(f: F) -> may::coroutine::JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    // SAFETY: may's spawn is unsafe because coroutines must not keep
    // thread-local references across yields and must fit in may's fixed
    // stack; the closures benchmarked here touch no thread-locals and use
    // only a few words of stack.
    unsafe { may::coroutine::spawn(f) }
}

/// Run `f` inside a may coroutine and return its result.
fn in_may<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    may_go(f).join().expect("may coroutine panicked")
}

// ---------------------------------------------------------------------------
// yield_round_trip: two tasks on one thread yield to each other; one
// iteration = both have yielded once (A → B → A).
// ---------------------------------------------------------------------------

/// A one-loop libnet runtime on a thread of its own, for the whole run.
struct Libnet {
    handle: libnet::Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Libnet {
    fn start() -> Libnet {
        let rt = libnet::Runtime::builder()
            .loops(1)
            .build()
            .expect("libnet runtime");
        let handle = rt.handle();
        let thread = std::thread::spawn(move || {
            // Runs until `Drop` calls exit; the main coroutine just waits.
            let _ = rt.run(|| loop {
                libnet::time::sleep(Duration::from_secs(3600));
            });
        });
        Libnet {
            handle,
            thread: Some(thread),
        }
    }

    /// Runs `f` in a coroutine on the loop and returns its value.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.handle
            .spawn_on(0, f)
            .join()
            .expect("libnet bench body")
    }
}

impl Drop for Libnet {
    fn drop(&mut self) {
        self.handle.exit(0);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn yield_round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("yield_round_trip");

    let ln = Libnet::start();
    g.bench_function("libnet", |b| {
        b.iter_custom(|iters| {
            ln.run(move || {
                let start = Instant::now();
                let a = libnet::spawn(move || {
                    for _ in 0..iters {
                        libnet::yield_now();
                    }
                });
                let b = libnet::spawn(move || {
                    for _ in 0..iters {
                        libnet::yield_now();
                    }
                });
                a.join().unwrap();
                b.join().unwrap();
                start.elapsed()
            })
        })
    });
    drop(ln);

    let rt = tokio_rt();
    g.bench_function("tokio", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async move {
                let start = Instant::now();
                let a = tokio::spawn(async move {
                    for _ in 0..iters {
                        tokio::task::yield_now().await;
                    }
                });
                let b = tokio::spawn(async move {
                    for _ in 0..iters {
                        tokio::task::yield_now().await;
                    }
                });
                a.await.unwrap();
                b.await.unwrap();
                start.elapsed()
            })
        })
    });

    g.bench_function("may", |b| {
        b.iter_custom(|iters| {
            in_may(move || {
                let start = Instant::now();
                let a = may_go(move || {
                    for _ in 0..iters {
                        may::coroutine::yield_now();
                    }
                });
                let b = may_go(move || {
                    for _ in 0..iters {
                        may::coroutine::yield_now();
                    }
                });
                a.join().unwrap();
                b.join().unwrap();
                start.elapsed()
            })
        })
    });

    g.finish();
}

// ---------------------------------------------------------------------------
// spawn_join: from inside the runtime, spawn an empty task and wait for it.
// ---------------------------------------------------------------------------

fn spawn_join(c: &mut Criterion) {
    let mut g = c.benchmark_group("spawn_join");

    let ln = Libnet::start();
    g.bench_function("libnet", |b| {
        b.iter_custom(|iters| {
            ln.run(move || {
                let start = Instant::now();
                for _ in 0..iters {
                    libnet::spawn(|| {}).join().unwrap();
                }
                start.elapsed()
            })
        })
    });
    drop(ln);

    let rt = tokio_rt();
    g.bench_function("tokio", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async move {
                let start = Instant::now();
                for _ in 0..iters {
                    tokio::spawn(async {}).await.unwrap();
                }
                start.elapsed()
            })
        })
    });

    g.bench_function("may", |b| {
        b.iter_custom(|iters| {
            in_may(move || {
                let start = Instant::now();
                for _ in 0..iters {
                    may_go(|| {}).join().unwrap();
                }
                start.elapsed()
            })
        })
    });

    g.finish();
}

// ---------------------------------------------------------------------------
// channel_ping_pong: two tasks on one thread bounce a u64 over two channels;
// one iteration = one round trip (A → B → A). Both runtimes' channels are
// unbounded MPSC queues, so neither pays for capacity bookkeeping the other
// does not.
// ---------------------------------------------------------------------------

fn channel_ping_pong(c: &mut Criterion) {
    let mut g = c.benchmark_group("channel_ping_pong");

    // libnet's channel is bounded (every queue in this project is); with
    // one message in flight per direction, capacity 1 is never reached.
    let ln = Libnet::start();
    g.bench_function("libnet", |b| {
        b.iter_custom(|iters| {
            ln.run(move || {
                let (ping_tx, ping_rx) = libnet::sync::channel::<u64>(1024);
                let (pong_tx, pong_rx) = libnet::sync::channel::<u64>(1024);
                let start = Instant::now();
                let echo = libnet::spawn(move || {
                    while let Ok(v) = ping_rx.recv() {
                        if pong_tx.send(v + 1).is_err() {
                            break;
                        }
                    }
                });
                let mut v = 0u64;
                for _ in 0..iters {
                    ping_tx.send(v).unwrap();
                    v = pong_rx.recv().unwrap();
                }
                drop(ping_tx);
                echo.join().unwrap();
                assert_eq!(v, iters);
                start.elapsed()
            })
        })
    });
    drop(ln);

    let rt = tokio_rt();
    g.bench_function("tokio", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async move {
                use tokio::sync::mpsc::unbounded_channel;
                let (ping_tx, mut ping_rx) = unbounded_channel::<u64>();
                let (pong_tx, mut pong_rx) = unbounded_channel::<u64>();
                let start = Instant::now();
                let echo = tokio::spawn(async move {
                    while let Some(v) = ping_rx.recv().await {
                        if pong_tx.send(v + 1).is_err() {
                            break;
                        }
                    }
                });
                let mut v = 0u64;
                for _ in 0..iters {
                    ping_tx.send(v).unwrap();
                    v = pong_rx.recv().await.unwrap();
                }
                drop(ping_tx);
                echo.await.unwrap();
                assert_eq!(v, iters);
                start.elapsed()
            })
        })
    });

    g.bench_function("may", |b| {
        b.iter_custom(|iters| {
            in_may(move || {
                use may::sync::mpsc::channel;
                let (ping_tx, ping_rx) = channel::<u64>();
                let (pong_tx, pong_rx) = channel::<u64>();
                let start = Instant::now();
                let echo = may_go(move || {
                    while let Ok(v) = ping_rx.recv() {
                        if pong_tx.send(v + 1).is_err() {
                            break;
                        }
                    }
                });
                let mut v = 0u64;
                for _ in 0..iters {
                    ping_tx.send(v).unwrap();
                    v = pong_rx.recv().unwrap();
                }
                drop(ping_tx);
                echo.join().unwrap();
                assert_eq!(v, iters);
                start.elapsed()
            })
        })
    });

    g.finish();
}

// ---------------------------------------------------------------------------
// timer_insert_cancel: with 100,000 other timers pending, create a timer far
// in the future, make it register, and drop it. One iteration = one insert
// plus one cancel.
//
// may has no such half: its timers (coroutine::sleep, park_timeout,
// recv_timeout) are registered only by a coroutine that then blocks on them,
// and there is no public timer handle that can be armed and cancelled
// without also switching coroutines, so a may figure would measure a
// different thing.
// ---------------------------------------------------------------------------

const PENDING_TIMERS: usize = 100_000;

fn timer_insert_cancel(c: &mut Criterion) {
    let mut g = c.benchmark_group("timer_insert_cancel");

    // libnet: 100,000 callback timers stay pending in a coroutine that holds
    // their handles; each iteration arms one more (`time::after`) and
    // cancels it.
    let ln = Libnet::start();
    let (release_tx, release_rx) = libnet::sync::channel::<()>(1);
    let (ready_tx, ready_rx) = libnet::sync::oneshot::channel::<()>();
    let holder = ln.handle.spawn_on(0, move || {
        let timers: Vec<libnet::time::Timer> = (0..PENDING_TIMERS)
            .map(|i| {
                let d = Duration::from_secs(1000) + Duration::from_millis(i as u64 * 10);
                libnet::time::after(d, || {})
            })
            .collect();
        let _ = ready_tx.send(());
        let _ = release_rx.recv();
        for t in &timers {
            t.cancel();
        }
    });
    ready_rx.recv().expect("background timers armed");
    g.bench_function("libnet", |b| {
        b.iter_custom(|iters| {
            ln.run(move || {
                assert!(libnet::time::pending_timers() >= PENDING_TIMERS);
                let start = Instant::now();
                for i in 0..iters {
                    let d = Duration::from_secs(1500) + Duration::from_micros(i % 1_000_000);
                    let t = libnet::time::after(d, || {});
                    t.cancel();
                }
                start.elapsed()
            })
        })
    });
    release_tx.send(()).expect("holder alive");
    holder.join().expect("holder coroutine");
    drop(ln);

    let rt = tokio_rt();
    // The background timers: deadlines spread over 1000..2000 s from now so
    // they land in several wheel slots and none fires during the run.
    let base = tokio::time::Instant::now();
    let pending: Vec<Pin<Box<tokio::time::Sleep>>> = rt.block_on(async move {
        let mut timers = Vec::with_capacity(PENDING_TIMERS);
        for i in 0..PENDING_TIMERS {
            let at = base + Duration::from_secs(1000) + Duration::from_millis(i as u64 * 10);
            let mut t = Box::pin(tokio::time::sleep_until(at));
            poll_once(t.as_mut()).await;
            timers.push(t);
        }
        timers
    });

    g.bench_function("tokio", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async move {
                let start = Instant::now();
                for i in 0..iters {
                    let at =
                        base + Duration::from_secs(1500) + Duration::from_micros(i % 1_000_000);
                    let timer = pin!(tokio::time::sleep_until(at));
                    poll_once(timer).await;
                    // Dropped here: the timer is removed from the wheel.
                }
                start.elapsed()
            })
        })
    });

    g.finish();
    drop(pending);
}

/// Poll a future exactly once (so a timer registers with the driver); it
/// must still be pending afterwards.
async fn poll_once<F: Future>(mut fut: Pin<&mut F>) {
    poll_fn(|cx| {
        assert!(
            fut.as_mut().poll(cx).is_pending(),
            "timer fired unexpectedly"
        );
        Poll::Ready(())
    })
    .await
}

// ---------------------------------------------------------------------------

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30)
}

criterion_group! {
    name = yardsticks;
    config = config();
    targets = yield_round_trip, spawn_join, channel_ping_pong, timer_insert_cancel
}

fn main() {
    // Must precede the first use of may: its scheduler starts lazily with
    // whatever configuration is in place then. One worker keeps both halves
    // on a single thread; pinning is left at may's default.
    may::config().set_workers(1);
    yardsticks();
    Criterion::default().configure_from_args().final_summary();
    print_ratios();
}

/// Prints libnet's median per group and its ratio to each yardstick, read
/// back from criterion's `estimates.json` files of this run.
fn print_ratios() {
    let dir = criterion_dir();
    let groups = [
        "yield_round_trip",
        "spawn_join",
        "channel_ping_pong",
        "timer_insert_cancel",
    ];
    println!("\nmedians (ns per operation) and ratios (libnet time / yardstick time; < 1 means libnet is faster):");
    for g in groups {
        let Some(ours) = median_ns(&dir, g, "libnet") else {
            continue;
        };
        let mut line = format!("  {g:<20} libnet {ours:>9.1}");
        for other in ["tokio", "may"] {
            if let Some(t) = median_ns(&dir, g, other) {
                line += &format!("   {other} {t:>9.1} (libnet/{other} {:.2}x)", ours / t);
            }
        }
        println!("{line}");
    }
}

/// Where criterion writes its results: `$CARGO_TARGET_DIR/criterion`, or
/// `target/criterion` of the workspace.
fn criterion_dir() -> std::path::PathBuf {
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return std::path::Path::new(&t).join("criterion");
    }
    // The bench runs from the package directory; the workspace is its parent.
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .unwrap_or(here)
        .join("target")
        .join("criterion")
}

/// The median point estimate (ns) of `group/name` from criterion's JSON,
/// found without a JSON library: the number after `"median"` ...
/// `"point_estimate":`.
fn median_ns(dir: &std::path::Path, group: &str, name: &str) -> Option<f64> {
    let text =
        std::fs::read_to_string(dir.join(group).join(name).join("new/estimates.json")).ok()?;
    let median = &text[text.find("\"median\"")?..];
    let pe = &median[median.find("\"point_estimate\":")? + "\"point_estimate\":".len()..];
    let end = pe.find([',', '}'])?;
    pe[..end].trim().parse().ok()
}
