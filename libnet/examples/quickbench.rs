use std::time::Instant;
fn main() {
    let batch: usize = std::env::var("BATCH").map_or(128, |s| s.parse().unwrap());
    let rt = libnet::Runtime::builder()
        .loops(1)
        .batch(batch)
        .build()
        .unwrap();
    rt.run(|| {
        // yield round trip: two coroutines yielding
        let n: u64 = std::env::args()
            .nth(1)
            .map_or(20_000_000, |s| s.parse().unwrap());
        let h = libnet::spawn(move || {
            for _ in 0..n {
                libnet::yield_now()
            }
        });
        let t = Instant::now();
        for _ in 0..n {
            libnet::yield_now()
        }
        h.join().unwrap();
        println!(
            "yield round trip: {:.1} ns",
            t.elapsed().as_nanos() as f64 / n as f64
        );
        if std::env::var("ONLY_YIELD").is_ok() {
            return;
        }
        let n = n / 20;
        let t = Instant::now();
        for _ in 0..n {
            libnet::spawn(|| ()).join().unwrap();
        }
        println!(
            "spawn+join: {:.1} ns",
            t.elapsed().as_nanos() as f64 / n as f64
        );
        let (tx1, rx1) = libnet::sync::channel(16);
        let (tx2, rx2) = libnet::sync::channel::<u64>(16);
        let h = libnet::spawn(move || {
            while let Ok(v) = rx1.recv() {
                if tx2.send(v).is_err() {
                    break;
                }
            }
        });
        let t = Instant::now();
        for i in 0..n {
            tx1.send(i).unwrap();
            rx2.recv().unwrap();
        }
        println!(
            "channel ping-pong: {:.1} ns",
            t.elapsed().as_nanos() as f64 / n as f64
        );
        drop(tx1);
        h.join().unwrap();
    })
    .unwrap();
}
