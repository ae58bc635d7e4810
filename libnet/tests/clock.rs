//! A manual clock drives every wait of the runtime: sleeps, intervals,
//! callback timers, socket timeouts and channel timeouts move only when the
//! test advances it.

use std::cell::Cell;
use std::io::{ErrorKind, Read};
use std::rc::Rc;
use std::time::Duration;

use libnet::net::{TcpListener, TcpStream, UdpSocket};
use libnet::time::Clock;

fn manual_runtime() -> (libnet::Runtime, Clock) {
    let clock = Clock::manual();
    let rt = libnet::Runtime::builder()
        .loops(1)
        .clock(clock.clone())
        .build()
        .expect("runtime");
    (rt, clock)
}

/// Lets every runnable coroutine run to its next wait: enough yields to
/// span several scheduler batches, so the loop polls and fires its timers.
fn settle() {
    for _ in 0..1024 {
        libnet::yield_now();
    }
}

#[test]
fn sleep_and_timers_move_only_with_the_clock() {
    let (rt, clock) = manual_runtime();
    rt.run(move || {
        let start = libnet::time::now();
        let woke = Rc::new(Cell::new(false));
        let w = woke.clone();
        let sleeper = libnet::spawn(move || {
            libnet::time::sleep(Duration::from_secs(10));
            w.set(true);
        });
        let fired = Rc::new(Cell::new(0u32));
        let f = fired.clone();
        let ticker = libnet::time::every(Duration::from_secs(1), move || f.set(f.get() + 1));

        // Real time passes, the manual clock does not: nothing fires.
        std::thread::sleep(Duration::from_millis(30));
        settle();
        assert!(!woke.get(), "slept through without the clock moving");
        assert_eq!(fired.get(), 0);

        // Advance second by second: `every` skips ticks missed in one jump.
        for _ in 0..9 {
            clock.advance(Duration::from_secs(1));
            settle();
        }
        clock.advance(Duration::from_millis(999));
        settle();
        assert!(!woke.get(), "woke 1 ms early");
        assert_eq!(fired.get(), 9, "one tick per advanced second");

        clock.advance(Duration::from_millis(1));
        settle();
        assert!(woke.get(), "did not wake at its deadline");
        sleeper.join().expect("sleeper");
        assert_eq!(fired.get(), 10);
        ticker.cancel();
        clock.advance(Duration::from_secs(5));
        settle();
        assert_eq!(fired.get(), 10, "cancelled timer kept firing");
        assert!(libnet::time::now() - start >= Duration::from_secs(15));
    })
    .expect("runtime");
}

#[test]
fn socket_and_channel_timeouts_follow_the_clock() {
    let (rt, clock) = manual_runtime();
    rt.run(move || {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = TcpStream::connect(addr).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        server
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let reader = libnet::spawn(move || {
            let mut buf = [0u8; 8];
            (&server).read(&mut buf).map_err(|e| e.kind())
        });
        let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
        udp.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let receiver = libnet::spawn(move || {
            let mut buf = [0u8; 8];
            udp.recv_from(&mut buf).map(|_| ()).map_err(|e| e.kind())
        });
        let (_tx, rx) = libnet::sync::channel::<u8>(1);
        let waiter = libnet::spawn(move || rx.recv_timeout(Duration::from_secs(60)).is_err());

        std::thread::sleep(Duration::from_millis(30));
        settle();
        assert!(!receiver.is_finished() && !reader.is_finished() && !waiter.is_finished());

        clock.advance(Duration::from_secs(5));
        settle();
        assert_eq!(receiver.join().expect("udp"), Err(ErrorKind::TimedOut));
        assert!(!reader.is_finished(), "30 s TCP timeout fired after 5 s");

        clock.advance(Duration::from_secs(25));
        settle();
        assert_eq!(reader.join().expect("tcp"), Err(ErrorKind::TimedOut));
        assert!(!waiter.is_finished());

        clock.advance(Duration::from_secs(30));
        settle();
        assert!(
            waiter.join().expect("channel"),
            "recv_timeout did not time out"
        );
    })
    .expect("runtime");
}
