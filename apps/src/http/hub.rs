//! The live stream: a [`Hub`] that broadcasts pushed bytes to every
//! viewer of `/live.ts`, and the coroutine that serves one viewer.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::rc::{Rc, Weak};

use libnet::net::TcpStream;
use libnet::sync::{Receiver, Sender};

use super::{linger_close, respond, BATCH, LINGER_BYTES, MPEG_TS, TEXT};

/// A broadcast of one live byte stream to many HTTP viewers, on one loop
/// (`Rc` inside: clones share the stream; it must not leave its thread).
///
/// [`Hub::push`] never waits: it appends the bytes to every viewer's queue,
/// and each viewer's coroutine writes its queue to its socket. A viewer whose
/// queue would grow past `max_queued_bytes` is cut off and counted in
/// [`Hub::dropped`]; it can reconnect and continue from the live edge.
#[derive(Clone)]
pub struct Hub {
    inner: Rc<HubInner>,
}

/// The shared state of a [`Hub`].
struct HubInner {
    /// Bound of each subscriber's queue, in bytes.
    max_queued: usize,
    /// Current subscribers, in subscription order.
    subs: RefCell<Vec<Rc<Sub>>>,
    /// Set by [`Hub::close`]: no more pushes or subscribers.
    closed: Cell<bool>,
    /// Subscribers cut off for falling behind.
    dropped: Cell<u64>,
    /// Bytes written to subscribers' sockets.
    bytes_out: Cell<u64>,
    /// Whether new subscribers wait for a join point ([`Hub::aligned`]).
    aligned: bool,
}

/// Why a subscription ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The hub closed: write out what is queued, then end.
    Closed,
    /// Cut off (fell behind, left, or finished): end now.
    Cut,
}

/// One subscriber's queue, shared by the hub and its writer coroutine.
struct Sub {
    /// Chunks not yet taken by the writer (each shared by all subscribers).
    queue: RefCell<VecDeque<Rc<[u8]>>>,
    /// Total length of `queue`.
    queued: Cell<usize>,
    /// Set once the subscription ends.
    end: Cell<Option<End>>,
    /// Rung (`try_send`) on every push; dropped at the end, which wakes the
    /// writer for good.
    bell: RefCell<Option<Sender<()>>>,
    /// The viewer's connection, shut down when the subscriber is cut off
    /// (so a writer stuck on a full socket wakes up).
    conn: Weak<TcpStream>,
    /// False until the first join point (aligned hubs): nothing is queued
    /// before it.
    started: Cell<bool>,
}

impl Sub {
    /// Ends the subscription (a cut also ends a close in progress) and
    /// wakes the writer.
    fn end(&self, how: End) {
        if self.end.get() == Some(End::Cut) || (how == End::Closed && self.end.get().is_some()) {
            return;
        }
        self.end.set(Some(how));
        if how == End::Cut {
            self.queue.borrow_mut().clear();
            self.queued.set(0);
            if let Some(c) = self.conn.upgrade() {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
        let bell = self.bell.borrow_mut().take();
        drop(bell);
    }
}

/// A writer's end of a [`Sub`]; dropping it unsubscribes.
struct Subscription {
    hub: Rc<HubInner>,
    sub: Rc<Sub>,
    bell: Receiver<()>,
}

impl Subscription {
    /// Moves queued chunks into `out` (empty on entry) up to [`BATCH`]
    /// bytes (at least one chunk), parking while there are none. False
    /// once the subscription has ended and nothing is left to write.
    fn next_batch(&self, out: &mut Vec<u8>) -> bool {
        loop {
            {
                let mut q = self.sub.queue.borrow_mut();
                while let Some(front) = q.front() {
                    if !out.is_empty() && out.len() + front.len() > BATCH {
                        break;
                    }
                    out.extend_from_slice(front);
                    self.sub.queued.set(self.sub.queued.get() - front.len());
                    q.pop_front();
                }
            }
            if !out.is_empty() {
                return true;
            }
            if self.sub.end.get().is_some() {
                return false;
            }
            // An error means the hub's end is gone (it is dropped only at
            // the end) or the runtime is stopping: nothing more will come.
            if self.bell.recv().is_err() && self.sub.queued.get() == 0 {
                return false;
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub
            .subs
            .borrow_mut()
            .retain(|s| !Rc::ptr_eq(s, &self.sub));
        self.sub.end(End::Cut);
    }
}

impl Hub {
    /// A hub that lets each viewer fall behind by at most
    /// `max_queued_bytes` (e.g. 4 MiB, a few seconds of video).
    pub fn new(max_queued_bytes: usize) -> Hub {
        Hub::build(max_queued_bytes, false)
    }

    fn build(max_queued_bytes: usize, aligned: bool) -> Hub {
        Hub {
            inner: Rc::new(HubInner {
                max_queued: max_queued_bytes,
                subs: RefCell::new(Vec::new()),
                closed: Cell::new(false),
                dropped: Cell::new(0),
                bytes_out: Cell::new(0),
                aligned,
            }),
        }
    }

    /// Like [`Hub::new`], for a stream a player can only start at certain
    /// points (MPEG-TS: its tables, then a key frame): a new subscriber
    /// gets nothing until the next [`Hub::push_join_point`].
    pub fn aligned(max_queued_bytes: usize) -> Hub {
        Hub::build(max_queued_bytes, true)
    }

    /// Pushes `bytes`, which a player may start with when it gets `header`
    /// first: subscribers still waiting to start get `header` and `bytes`,
    /// the others `bytes`.
    pub fn push_join_point(&self, header: &[u8], bytes: &[u8]) {
        let waiting: Vec<Rc<Sub>> = self
            .inner
            .subs
            .borrow()
            .iter()
            .filter(|s| !s.started.get())
            .cloned()
            .collect();
        for s in &waiting {
            s.started.set(true);
        }
        if !header.is_empty() && !waiting.is_empty() {
            self.push_to(header, |s| waiting.iter().any(|w| std::ptr::eq(&**w, s)));
        }
        self.push(bytes);
    }

    /// Appends `bytes` to every subscriber's queue, without waiting. A
    /// subscriber whose queue would exceed the bound is cut off instead
    /// (its connection closed, [`Hub::dropped`] counts it). Ignored after
    /// [`Hub::close`].
    pub fn push(&self, bytes: &[u8]) {
        self.push_to(bytes, |s| s.started.get());
    }

    /// Appends `bytes` to the queues of the subscribers `to` picks.
    fn push_to(&self, bytes: &[u8], to: impl Fn(&Sub) -> bool) {
        let h = &*self.inner;
        if bytes.is_empty() || h.closed.get() {
            return;
        }
        let mut cut = Vec::new();
        {
            let mut subs = h.subs.borrow_mut();
            if subs.is_empty() {
                return;
            }
            let chunk: Rc<[u8]> = Rc::from(bytes);
            subs.retain(|s| {
                if !to(s) {
                    return true;
                }
                let queued = s.queued.get() + bytes.len();
                if queued > h.max_queued {
                    cut.push(s.clone());
                    return false;
                }
                s.queue.borrow_mut().push_back(chunk.clone());
                s.queued.set(queued);
                if let Some(bell) = &*s.bell.borrow() {
                    // Full means a wake-up is already pending.
                    let _ = bell.try_send(());
                }
                true
            });
        }
        for s in cut {
            h.dropped.set(h.dropped.get() + 1);
            let peer = s.conn.upgrade().and_then(|c| c.peer_addr().ok());
            log::info!(
                "http: viewer {peer:?} fell {} bytes behind; cut off",
                h.max_queued
            );
            s.end(End::Cut);
        }
    }

    /// Number of current subscribers.
    pub fn subscribers(&self) -> usize {
        self.inner.subs.borrow().len()
    }

    /// Subscribers cut off so far for falling behind.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.get()
    }

    /// Stream bytes written to viewers' sockets so far.
    pub fn bytes_out(&self) -> u64 {
        self.inner.bytes_out.get()
    }

    /// Ends the stream: every subscriber gets what is queued for it, then
    /// the end of its response; later pushes are ignored and later viewers
    /// get 503.
    pub fn close(&self) {
        self.inner.closed.set(true);
        let subs = std::mem::take(&mut *self.inner.subs.borrow_mut());
        for s in subs {
            s.end(End::Closed);
        }
    }

    /// True once [`Hub::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.get()
    }

    /// A new subscriber on `conn`, or `None` once closed.
    fn subscribe(&self, conn: Weak<TcpStream>) -> Option<Subscription> {
        if self.is_closed() {
            return None;
        }
        let (tx, rx) = libnet::sync::channel(1);
        let sub = Rc::new(Sub {
            queue: RefCell::new(VecDeque::new()),
            queued: Cell::new(0),
            end: Cell::new(None),
            bell: RefCell::new(Some(tx)),
            conn,
            started: Cell::new(!self.inner.aligned),
        });
        self.inner.subs.borrow_mut().push(sub.clone());
        Some(Subscription {
            hub: self.inner.clone(),
            sub,
            bell: rx,
        })
    }
}

/// Streams the hub to the client until either ends.
pub(super) fn serve_live(conn: TcpStream, hub: &Hub, head_only: bool) {
    if hub.is_closed() {
        if respond(&conn, 503, TEXT, b"the live stream has ended\n", head_only).is_ok() {
            linger_close(conn);
        }
        return;
    }
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {MPEG_TS}\r\nCache-Control: no-store\r\n\
         Connection: close\r\n\r\n"
    );
    if head_only {
        if (&conn).write_all(head.as_bytes()).is_ok() {
            linger_close(conn);
        }
        return;
    }
    let conn = Rc::new(conn);
    // Subscribed before anything can park: no push is missed.
    let Some(sub) = hub.subscribe(Rc::downgrade(&conn)) else {
        return;
    };
    if (&*conn).write_all(head.as_bytes()).is_err() {
        return;
    }
    let peer = conn.peer_addr().ok();
    log::info!("http: viewer {peer:?} joined ({} now)", hub.subscribers());
    // A client that closes (or sends more than a request should) leaves,
    // even while nothing is being pushed.
    let watcher = libnet::spawn({
        let conn = conn.clone();
        let sub = sub.sub.clone();
        move || {
            let _ = conn.set_read_timeout(None);
            let mut buf = [0u8; 1024];
            let mut total = 0;
            while total < LINGER_BYTES {
                match (&*conn).read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
            sub.end(End::Cut);
        }
    });
    let mut out = Vec::with_capacity(BATCH);
    while sub.next_batch(&mut out) {
        if (&*conn).write_all(&out).is_err() {
            break;
        }
        let h = &hub.inner;
        h.bytes_out.set(h.bytes_out.get() + out.len() as u64);
        out.clear();
    }
    // Unsubscribes and shuts the socket down, which ends the watcher.
    drop(sub);
    let _ = watcher.join();
    log::info!("http: viewer {peer:?} left ({} now)", hub.subscribers());
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::Routes;
    use super::*;
    use libnet::net::SocketBuilder;
    use libnet::yield_now;
    use std::io::Read;
    use std::net::SocketAddr;
    use std::time::Instant;

    /// A viewer of `/live.ts`, with the response head read.
    fn viewer(addr: SocketAddr, conn: TcpStream) -> (TcpStream, String) {
        let _ = addr;
        (&conn)
            .write_all(b"GET /live.ts HTTP/1.1\r\nHost: test\r\n\r\n")
            .expect("request");
        let head = head_of(&conn);
        (conn, head)
    }

    #[test]
    fn viewers_get_the_same_bytes_in_order() {
        run(|| {
            let hub = Hub::new(4 << 20);
            let addr = serve_on_loopback(Routes {
                live: Some(hub.clone()),
                ..text_routes()
            });
            let (head, _) = exchange(addr, b"HEAD /live.ts HTTP/1.1\r\n\r\n");
            assert_eq!(status(&head), 200);
            assert_eq!(header(&head, "content-type"), Some("video/mp2t"));
            hub.push(b"before anyone watched");
            let (a, head) = viewer(addr, connect(addr));
            let (b, _) = viewer(addr, connect(addr));
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
            assert_eq!(header(&head, "content-type"), Some("video/mp2t"));
            assert_eq!(header(&head, "connection"), Some("close"));
            assert_eq!(header(&head, "content-length"), None);
            wait_until("both subscribed", || hub.subscribers() == 2);
            let mut total = 0;
            for i in 0..200 {
                let len = 1 + i * 37 % 3000;
                hub.push(&pattern(total, len));
                total += len as u64;
                if i % 10 == 0 {
                    yield_now();
                }
            }
            for c in [&a, &b] {
                let mut got = vec![0u8; total as usize];
                (&*c).read_exact(&mut got).expect("stream");
                assert!(got == pattern(0, total as usize), "bytes differ");
            }
            wait_until("all written", || hub.bytes_out() == 2 * total);
            assert_eq!((hub.dropped(), hub.subscribers()), (0, 2));
        });
    }

    #[test]
    fn an_aligned_hub_starts_each_viewer_at_a_join_point_with_its_header() {
        run(|| {
            let hub = Hub::aligned(4 << 20);
            let addr = serve_on_loopback(Routes {
                live: Some(hub.clone()),
                ..text_routes()
            });
            let (a, _) = viewer(addr, connect(addr));
            wait_until("subscribed", || hub.subscribers() == 1);
            hub.push(b"mid-frame");
            hub.push_join_point(b"HDR", b"KEY1");
            hub.push(b"p1");
            let (b, _) = viewer(addr, connect(addr));
            wait_until("both subscribed", || hub.subscribers() == 2);
            hub.push(b"p2");
            hub.push_join_point(b"HDR", b"KEY2");
            hub.push(b"p3");
            hub.close();
            let mut got_a = Vec::new();
            (&a).read_to_end(&mut got_a).expect("a");
            let mut got_b = Vec::new();
            (&b).read_to_end(&mut got_b).expect("b");
            assert_eq!(
                got_a, b"HDRKEY1p1p2KEY2p3",
                "nothing before the first join point"
            );
            assert_eq!(got_b, b"HDRKEY2p3", "a late viewer waits for the next one");
        });
    }

    #[test]
    fn a_viewer_that_never_reads_is_cut_off_and_the_other_keeps_up() {
        run(|| {
            const BOUND: usize = 256 << 10;
            const CHUNK: usize = 16 << 10;
            let hub = Hub::new(BOUND);
            let addr = serve_on_loopback(Routes {
                live: Some(hub.clone()),
                ..Routes::default()
            });
            let (fast, _) = viewer(addr, connect(addr));
            let stuck = SocketBuilder::new()
                .recv_buffer_size(4096)
                .connect(addr, Some(PATIENCE))
                .expect("connect");
            let (stuck, _) = viewer(addr, stuck);
            wait_until("both subscribed", || hub.subscribers() == 2);
            let got = Rc::new(Cell::new(0u64));
            let reader = libnet::spawn({
                let got = got.clone();
                move || {
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        let n = (&fast).read(&mut buf).expect("fast viewer read");
                        if n == 0 {
                            return;
                        }
                        assert!(buf[..n] == pattern(got.get(), n), "bytes differ");
                        got.set(got.get() + n as u64);
                    }
                }
            });
            let mut pushed = 0u64;
            let push = |pushed: &mut u64| {
                hub.push(&pattern(*pushed, CHUNK));
                *pushed += CHUNK as u64;
                // Pace the pushes to the fast viewer.
                let t = Instant::now();
                while *pushed - got.get() > (BOUND / 2) as u64 {
                    assert!(t.elapsed() < PATIENCE, "the fast viewer stalled");
                    yield_now();
                }
            };
            while hub.dropped() == 0 {
                assert!(pushed < 256 << 20, "the stuck viewer was never cut off");
                push(&mut pushed);
            }
            assert_eq!(hub.subscribers(), 1);
            for _ in 0..64 {
                push(&mut pushed);
            }
            hub.close();
            reader.join().expect("fast viewer");
            assert_eq!(got.get(), pushed);
            assert_eq!(hub.dropped(), 1);
            // The stuck one sees its connection end.
            stuck.set_read_timeout(Some(PATIENCE)).unwrap();
            let _ = read_until_closed(&stuck);
        });
    }

    #[test]
    fn close_ends_every_response() {
        run(|| {
            let hub = Hub::new(4 << 20);
            let addr = serve_on_loopback(Routes {
                live: Some(hub.clone()),
                ..Routes::default()
            });
            let (a, _) = viewer(addr, connect(addr));
            let (b, _) = viewer(addr, connect(addr));
            wait_until("both subscribed", || hub.subscribers() == 2);
            hub.push(&pattern(0, 100_000));
            hub.close();
            assert_eq!(hub.subscribers(), 0);
            hub.push(b"after the end");
            for c in [&a, &b] {
                assert!(read_until_closed(c) == pattern(0, 100_000));
            }
            let (head, _) = exchange(addr, b"GET /live.ts HTTP/1.1\r\n\r\n");
            assert_eq!(status(&head), 503, "{head}");
        });
    }

    #[test]
    fn a_viewer_leaving_mid_stream_unsubscribes() {
        run(|| {
            let hub = Hub::new(4 << 20);
            let addr = serve_on_loopback(Routes {
                live: Some(hub.clone()),
                ..Routes::default()
            });
            let (a, _) = viewer(addr, connect(addr));
            wait_until("subscribed", || hub.subscribers() == 1);
            hub.push(&pattern(0, 10_000));
            let mut got = vec![0u8; 10_000];
            (&a).read_exact(&mut got).expect("stream");
            drop(a);
            // Noticed without another push.
            wait_until("unsubscribed", || hub.subscribers() == 0);
            hub.push(&pattern(0, 10_000));
            assert_eq!((hub.dropped(), hub.bytes_out()), (0, 10_000));
        });
    }
}
