//! A minimal HTTP/1.1 server for the p2p-live binaries: Prometheus metrics
//! (`/metrics`), a JSON status (`/status.json`), the live MPEG-TS stream
//! (`/live.ts`) for players (`mpv http://127.0.0.1:PORT/live.ts`, VLC,
//! ffplay), and a file that may still be downloading (`/<name>`, with byte
//! ranges and `?t=SECONDS`; see [`FileBody`]).
//!
//! One request per connection (every response says `Connection: close`),
//! one coroutine per client on the loop that called [`Server::start`], and
//! everything bounded: [`MAX_CLIENTS`] connections (more get 503),
//! [`MAX_HEAD`] bytes of request head (more get 431), [`IDLE_TIMEOUT`] to
//! send it (then the connection is closed), and a per-viewer queue in the
//! [`Hub`], past which a slow viewer is cut off rather than holding up the
//! stream or growing memory. Request bodies are never read.
//!
//! Call order: build [`Routes`] (closures that render the metrics and the
//! status on each request, a [`Hub`] the stream is pushed into, a
//! [`FileBody`]),
//! [`Server::bind`], then [`Server::start`] from a coroutine of the loop
//! that pushes into the hub. The endpoints are described in `docs/http.md`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::rc::{Rc, Weak};
use std::time::Duration;

use libnet::net::{TcpListener, TcpStream};
use libnet::sync::{Receiver, Sender};
use libnet::JoinHandle;

/// Most clients served at once; one more gets `503 Service Unavailable`.
pub const MAX_CLIENTS: usize = 64;

/// Largest request head (request line and headers) in bytes; a longer one
/// gets `431 Request Header Fields Too Large`.
pub const MAX_HEAD: usize = 8 * 1024;

/// Time a client has to send its whole request head before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Time one write may wait for a client to make room before it is closed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections being turned away with a 503 at once; beyond this they are
/// closed without an answer.
const MAX_REJECTING: usize = 16;

/// How long, and for how many bytes, a finished response waits for the
/// client to close first, so that unread request bytes do not make the
/// kernel reset the connection (and lose the response) on close.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 * 1024;

/// Largest write of stream bytes to one viewer.
const BATCH: usize = 64 * 1024;

// ---------------------------------------------------------------------------
// Hub

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

// ---------------------------------------------------------------------------
// Metrics

/// Prometheus text exposition (format 0.0.4), built by the binaries on each
/// request to `/metrics`.
///
/// Samples of one name are grouped under one `# HELP` and `# TYPE` (the
/// first call for a name sets them), in the order names first appear.
/// Names are made valid (other characters become `_`), help text and label
/// values are escaped.
#[derive(Default)]
pub struct Metrics {
    /// Families in order of first appearance.
    families: Vec<Family>,
}

/// One metric name with its samples.
struct Family {
    name: String,
    help: String,
    kind: &'static str,
    /// Sample lines, each ending in a newline.
    samples: String,
}

impl Metrics {
    /// Adds counter `name` (by convention ending in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> &mut Self {
        let (name, samples) = self.family(name, help, "counter");
        let _ = writeln!(samples, "{name} {value}");
        self
    }

    /// Adds gauge `name`.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) -> &mut Self {
        self.gauge_labeled(name, help, &[], value)
    }

    /// Adds one sample of gauge `name` with `labels`; call it once per
    /// label set.
    pub fn gauge_labeled(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: f64,
    ) -> &mut Self {
        let (name, samples) = self.family(name, help, "gauge");
        samples.push_str(&name);
        if !labels.is_empty() {
            samples.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    samples.push(',');
                }
                samples.push_str(&sanitize(k, false));
                samples.push_str("=\"");
                for c in v.chars() {
                    match c {
                        '\\' => samples.push_str("\\\\"),
                        '"' => samples.push_str("\\\""),
                        '\n' => samples.push_str("\\n"),
                        c => samples.push(c),
                    }
                }
                samples.push('"');
            }
            samples.push('}');
        }
        let _ = writeln!(samples, " {}", float(value));
        self
    }

    /// The exposition text.
    pub fn finish(self) -> String {
        let mut out = String::new();
        for f in self.families {
            let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
            out.push_str(&f.samples);
        }
        out
    }

    /// The (valid) name and sample lines of family `name`, created on first use.
    fn family(&mut self, name: &str, help: &str, kind: &'static str) -> (String, &mut String) {
        let name = sanitize(name, true);
        let i = match self.families.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.families.push(Family {
                    name: name.clone(),
                    help: help.replace('\\', "\\\\").replace('\n', "\\n"),
                    kind,
                    samples: String::new(),
                });
                self.families.len() - 1
            }
        };
        (name, &mut self.families[i].samples)
    }
}

/// `name` as a valid metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`) or, without
/// `colon`, label name (no `:`).
fn sanitize(name: &str, colon: bool) -> String {
    let mut s: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' => c,
            ':' if colon => c,
            _ => '_',
        })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

/// A sample value as Prometheus writes it.
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

// ---------------------------------------------------------------------------
// Server

/// A renderer of a response body, called on each request.
pub type Render = Rc<dyn Fn() -> String>;

/// A file served over HTTP while it may still be downloading (see `docs/http.md`).
pub trait FileBody {
    /// Its whole size in bytes.
    fn size(&self) -> u64;
    /// Where to start reading to play from `ms` milliseconds (a key frame).
    fn offset_at(&self, ms: u64) -> u64;
    /// Up to `max` bytes at `offset` (< size), parking the calling coroutine
    /// until at least one byte there is available. Calling it also tells the
    /// downloader where the player reads (it fetches from there first).
    /// An error means these bytes will not come (the download failed).
    fn read_at(&self, offset: u64, max: usize) -> std::io::Result<Vec<u8>>;
}

/// What the server serves; a route left `None` answers 404.
#[derive(Clone, Default)]
pub struct Routes {
    /// `GET /metrics`: Prometheus text (see [`Metrics`]).
    pub metrics: Option<Render>,
    /// `GET /status.json`: a JSON document.
    pub status: Option<Render>,
    /// `GET /live.ts`: the MPEG-TS stream, until the hub closes or the
    /// client leaves.
    pub live: Option<Hub>,
    /// `GET /<name>` and `GET /file`: a file (see [`FileBody`]), with its name.
    pub file: Option<(String, Rc<dyn FileBody>)>,
}

/// The HTTP server: bind, then start on a loop.
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    routes: Routes,
}

impl Server {
    /// Listens on `addr` (port 0 picks a free port; see
    /// [`Server::local_addr`]). Fails with "http: cannot listen on ADDR:
    /// ..." if the port is in use.
    pub fn bind(addr: SocketAddr, routes: Routes) -> io::Result<Server> {
        let fail = |e: io::Error| {
            let why = match e.kind() {
                io::ErrorKind::AddrInUse => "address already in use".to_string(),
                io::ErrorKind::AddrNotAvailable => "address not available on this host".into(),
                io::ErrorKind::PermissionDenied => "permission denied".into(),
                _ => e.to_string(),
            };
            io::Error::new(e.kind(), format!("http: cannot listen on {addr}: {why}"))
        };
        let listener = TcpListener::bind(addr).map_err(fail)?;
        let addr = listener.local_addr().map_err(fail)?;
        Ok(Server {
            listener,
            addr,
            routes,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Accepts clients in a coroutine on the current loop, serving each in
    /// a coroutine of its own there, until the runtime stops. Call it from
    /// inside the runtime, on the loop that uses the [`Hub`].
    pub fn start(self) -> JoinHandle<()> {
        libnet::spawn(move || self.accept_loop())
    }

    fn accept_loop(self) {
        log::info!("http: serving on http://{}/", self.addr);
        let routes = Rc::new(self.routes);
        let active = Rc::new(Cell::new(0));
        let rejecting = Rc::new(Cell::new(0));
        loop {
            let conn = match self.listener.accept() {
                Ok((conn, _)) => conn,
                Err(e) => {
                    // Out of descriptors, or a connection reset before we
                    // took it: try again soon. (At shutdown the runtime
                    // unwinds this coroutine.)
                    log::warn!("http: accept on {} failed: {e}", self.addr);
                    libnet::time::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if active.get() >= MAX_CLIENTS {
                if rejecting.get() < MAX_REJECTING {
                    let slot = Slot::take(&rejecting);
                    drop(libnet::spawn(move || {
                        let _slot = slot;
                        let _ = conn.set_write_timeout(Some(LINGER));
                        let body = format!("more than {MAX_CLIENTS} clients; try again later\n");
                        if respond(&conn, 503, TEXT, body.as_bytes(), false).is_ok() {
                            linger_close(conn);
                        }
                    }));
                }
                continue;
            }
            let slot = Slot::take(&active);
            let routes = routes.clone();
            drop(libnet::spawn(move || {
                let _slot = slot;
                serve(conn, &routes);
            }));
        }
    }
}

/// One taken unit of a counter, given back on drop (also when unwound).
struct Slot(Rc<Cell<usize>>);

impl Slot {
    fn take(count: &Rc<Cell<usize>>) -> Slot {
        count.set(count.get() + 1);
        Slot(count.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// A parsed request head; only what routing needs.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    /// The path as sent (not percent-decoded), without query or fragment.
    path: String,
    /// The query as sent, without `?` or fragment; empty if none.
    query: String,
    /// The `Range` header, if there is exactly one and it is one valid
    /// byte range (anything else is ignored, as RFC 9110 allows).
    range: Option<ByteRange>,
}

/// One byte range of a `Range: bytes=...` header, before it meets a size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ByteRange {
    /// `first-` or `first-last` (`last >= first`), positions inclusive.
    From { first: u64, last: Option<u64> },
    /// `-n`: the last `n` bytes.
    Suffix(u64),
}

/// A [`ByteRange`] applied to a representation of some length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Span {
    /// Serve the whole representation with 200.
    Whole,
    /// Serve bytes `first..=last` with 206.
    Part { first: u64, last: u64 },
    /// Answer 416.
    Unsatisfiable,
}

impl ByteRange {
    /// The range within `len` bytes, per RFC 9110 section 14.1.2: a last
    /// position past the end is clamped, a suffix longer than the whole is
    /// the whole; a first position at or past the end, or an empty suffix,
    /// cannot be satisfied. A suffix of an empty representation is served
    /// whole (200), as no `Content-Range` can describe it.
    fn span(self, len: u64) -> Span {
        match self {
            ByteRange::From { first, .. } if first >= len => Span::Unsatisfiable,
            ByteRange::From { first, last } => Span::Part {
                first,
                last: last.map_or(len - 1, |l| l.min(len - 1)),
            },
            ByteRange::Suffix(0) => Span::Unsatisfiable,
            ByteRange::Suffix(_) if len == 0 => Span::Whole,
            ByteRange::Suffix(n) => Span::Part {
                first: len - n.min(len),
                last: len - 1,
            },
        }
    }
}

/// Why no request came.
#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    /// Timeout, nothing sent, or a broken connection: close silently.
    Silent,
    /// Answer with this status, then close.
    Reply(u16),
}

/// Serves one connection: one request, one response.
fn serve(conn: TcpStream, routes: &Routes) {
    let _ = conn.set_write_timeout(Some(WRITE_TIMEOUT));
    let req = match read_head(&conn) {
        Ok(req) => req,
        Err(HeadError::Silent) => return,
        Err(HeadError::Reply(status)) => {
            let body = format!("{status} {}\n", reason(status));
            if respond(&conn, status, TEXT, body.as_bytes(), false).is_ok() {
                linger_close(conn);
            }
            return;
        }
    };
    log::debug!("http: {} {} {:?}", req.method, req.path, req.query);
    let head_only = req.method == "HEAD";
    let path = req.path.as_str();
    let fixed = match path {
        "/" => Some(true),
        "/metrics" => Some(routes.metrics.is_some()),
        "/status.json" => Some(routes.status.is_some()),
        "/live.ts" => Some(routes.live.is_some()),
        _ => None,
    };
    // Fixed routes win over a file of the same name.
    let file = match (&routes.file, fixed) {
        (Some((name, body)), None) => match file_path_matches(path, name) {
            Ok(true) => Some((name.as_str(), &**body)),
            Ok(false) => None,
            Err(()) => {
                let body = b"400 Bad Request: malformed %-escape in the path\n";
                if respond(&conn, 400, TEXT, body, false).is_ok() {
                    linger_close(conn);
                }
                return;
            }
        },
        _ => None,
    };
    let known = fixed.unwrap_or(false) || file.is_some();
    let sent = if !known {
        respond(&conn, 404, TEXT, b"404 Not Found\n", head_only)
    } else if req.method != "GET" && !head_only {
        let body = b"405 Method Not Allowed\n";
        respond_with(&conn, 405, "Allow: GET, HEAD\r\n", TEXT, body, false)
    } else if let (Some(metrics), "/metrics") = (&routes.metrics, path) {
        respond(&conn, 200, PROMETHEUS, metrics().as_bytes(), head_only)
    } else if let (Some(status), "/status.json") = (&routes.status, path) {
        respond(&conn, 200, JSON, status().as_bytes(), head_only)
    } else if let (Some(hub), "/live.ts") = (&routes.live, path) {
        return serve_live(conn, hub, head_only);
    } else if let Some((name, body)) = file {
        return serve_file(conn, name, body, &req, head_only);
    } else {
        respond(&conn, 200, TEXT, index(routes).as_bytes(), head_only)
    };
    if sent.is_ok() {
        linger_close(conn);
    }
}

const TEXT: &str = "text/plain; charset=utf-8";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";
const JSON: &str = "application/json";
const MPEG_TS: &str = "video/mp2t";

/// The body of `GET /`: the routes served.
fn index(routes: &Routes) -> String {
    let mut s = String::from("p2p-live\n");
    if routes.metrics.is_some() {
        s.push_str("/metrics       Prometheus metrics\n");
    }
    if routes.status.is_some() {
        s.push_str("/status.json   status (JSON)\n");
    }
    if routes.live.is_some() {
        s.push_str("/live.ts       live stream (MPEG-TS)\n");
    }
    if let Some((name, _)) = &routes.file {
        let _ = writeln!(
            s,
            "/{}  {name} (also /file; byte ranges, ?t=SECONDS to start at a time)",
            percent_encode(name)
        );
    }
    s
}

/// Streams the hub to the client until either ends.
fn serve_live(conn: TcpStream, hub: &Hub, head_only: bool) {
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

/// Serves the file route: the file, or with `?t=` its part from the key
/// frame at that time, whole (200) or one byte range of it (206, or 416).
/// The body is read with [`FileBody::read_at`] as it arrives; if the
/// download fails the connection is closed early (a short body).
fn serve_file(conn: TcpStream, name: &str, file: &dyn FileBody, req: &Request, head_only: bool) {
    let Ok(seek) = seek_ms(&req.query) else {
        let body = b"400 Bad Request: t must be seconds, like t=12 or t=12.5\n";
        if respond(&conn, 400, TEXT, body, head_only).is_ok() {
            linger_close(conn);
        }
        return;
    };
    let size = file.size();
    // The representation served: the file from `base` on.
    let base = seek.map_or(0, |ms| file.offset_at(ms).min(size));
    let len = size - base;
    let (status, first, end, content_range) = match req.range.map(|r| r.span(len)) {
        None | Some(Span::Whole) => (200, 0, len, String::new()),
        Some(Span::Part { first, last }) => (
            206,
            first,
            last + 1,
            format!("Content-Range: bytes {first}-{last}/{len}\r\n"),
        ),
        Some(Span::Unsatisfiable) => {
            let extra = format!("Accept-Ranges: bytes\r\nContent-Range: bytes */{len}\r\n");
            let body = b"416 Range Not Satisfiable\n";
            if respond_with(&conn, 416, &extra, TEXT, body, head_only).is_ok() {
                linger_close(conn);
            }
            return;
        }
    };
    let extra = format!("Accept-Ranges: bytes\r\n{content_range}");
    let head = response_head(status, &extra, file_type(name), end - first);
    if (&conn).write_all(head.as_bytes()).is_err() {
        return;
    }
    if head_only {
        linger_close(conn);
        return;
    }
    let (mut at, end) = (base + first, base + end);
    log::debug!("http: {name}: sending bytes {at}..{end} of {size}");
    while at < end {
        let max = (end - at).min(BATCH as u64) as usize;
        // Parks until the bytes are there; no borrow is held across it.
        let read = file.read_at(at, max).and_then(|b| {
            if b.is_empty() {
                Err(io::Error::other("read_at gave no bytes"))
            } else {
                Ok(b)
            }
        });
        let mut bytes = match read {
            Ok(b) => b,
            Err(e) => {
                log::warn!("http: {name}: bytes at {at} will not come ({e}); response cut short");
                break;
            }
        };
        bytes.truncate(max);
        if (&conn).write_all(&bytes).is_err() {
            // The client left (or stopped reading for WRITE_TIMEOUT).
            return;
        }
        at += bytes.len() as u64;
    }
    linger_close(conn);
}

/// The content type of a file served under `name`.
fn file_type(name: &str) -> &'static str {
    let ends = |ext: &str| {
        name.len() >= ext.len()
            && name.as_bytes()[name.len() - ext.len()..].eq_ignore_ascii_case(ext.as_bytes())
    };
    if ends(".ts") {
        MPEG_TS
    } else if ends(".mp4") {
        "video/mp4"
    } else {
        "application/octet-stream"
    }
}

/// Whether request path `path` names the file `name`: `/file`, or `/` and
/// the name once percent-decoded. `Err` for a malformed `%` escape.
fn file_path_matches(path: &str, name: &str) -> Result<bool, ()> {
    if path == "/file" {
        return Ok(true);
    }
    let decoded = percent_decode(path)?;
    Ok(decoded.first() == Some(&b'/') && decoded[1..] == *name.as_bytes())
}

/// `s` with each `%XX` replaced by its byte; `Err` for a `%` not followed
/// by two hex digits.
fn percent_decode(s: &str) -> Result<Vec<u8>, ()> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            match (
                b.get(i + 1).and_then(|&c| hex(c)),
                b.get(i + 2).and_then(|&c| hex(c)),
            ) {
                (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                _ => return Err(()),
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// `name` made safe as a URL path: bytes other than unreserved ones and `/`
/// as `%XX`.
fn percent_encode(name: &str) -> String {
    let mut s = String::with_capacity(name.len());
    for &b in name.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            s.push(b as char);
        } else {
            let _ = write!(s, "%{b:02X}");
        }
    }
    s
}

/// The time `t=SECONDS` in `query` asks for, in milliseconds: `Ok(None)`
/// without one, `Err` for a bad value (not decimal seconds, or given twice).
/// Other parameters are ignored.
fn seek_ms(query: &str) -> Result<Option<u64>, ()> {
    let mut ms = None;
    for param in query.split('&') {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        if key != "t" {
            continue;
        }
        let value = String::from_utf8(percent_decode(value)?).map_err(|_| ())?;
        if ms.replace(parse_seconds(&value).ok_or(())?).is_some() {
            return Err(());
        }
    }
    Ok(ms)
}

/// Decimal seconds (`12`, `12.5`, `.5`, `12.`; no sign or exponent) in
/// whole milliseconds (truncated); `None` if malformed or too large.
fn parse_seconds(s: &str) -> Option<u64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
        return None;
    }
    let whole = if int.is_empty() {
        0
    } else {
        int.parse::<u64>().ok()?
    };
    let milli = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0, |m, b| m * 10 + u64::from(b - b'0'));
    whole.checked_mul(1000)?.checked_add(milli)
}

/// Parses a `Range` header value: one byte range (`bytes=A-B`, `bytes=A-`,
/// `bytes=-N`). `None` for anything else, including several ranges, which
/// the file route then ignores (RFC 9110 lets a server ignore `Range`).
/// Numbers too large for a `u64` saturate, which keeps their meaning (a
/// first position past any end, a last position or suffix past the start).
fn parse_range(value: &[u8]) -> Option<ByteRange> {
    let value = std::str::from_utf8(value).ok()?;
    let (unit, set) = value.split_once('=')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    // A list: empty elements are allowed, one range is served.
    let mut specs = set
        .split(',')
        .map(|s| s.trim_matches([' ', '\t']))
        .filter(|s| !s.is_empty());
    let (Some(spec), None) = (specs.next(), specs.next()) else {
        return None;
    };
    let number = |d: &str| {
        (!d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())).then(|| {
            d.bytes().fold(0u64, |n, b| {
                n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
            })
        })
    };
    let (first, last) = spec.split_once('-')?;
    if first.is_empty() {
        return number(last).map(ByteRange::Suffix);
    }
    let first = number(first)?;
    let last = if last.is_empty() {
        None
    } else {
        Some(number(last).filter(|&l| l >= first)?)
    };
    Some(ByteRange::From { first, last })
}

/// Reads the request head within [`IDLE_TIMEOUT`] and parses it.
fn read_head(conn: &TcpStream) -> Result<Request, HeadError> {
    let deadline = libnet::time::now() + IDLE_TIMEOUT;
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    // Where the request line starts, once a byte other than CR or LF came.
    let mut start = None;
    loop {
        if len == MAX_HEAD {
            return Err(HeadError::Reply(431));
        }
        let left = deadline.saturating_duration_since(libnet::time::now());
        if left.is_zero() || conn.set_read_timeout(Some(left)).is_err() {
            return Err(HeadError::Silent);
        }
        let mut r = conn;
        let from = len;
        match r.read(&mut buf[len..]) {
            // The client stopped sending: answer what it sent, if anything.
            Ok(0) if start.is_some() => return Err(HeadError::Reply(400)),
            Ok(0) | Err(_) => return Err(HeadError::Silent),
            Ok(n) => len += n,
        }
        if start.is_none() {
            start = buf[from..len]
                .iter()
                .position(|&b| b != b'\r' && b != b'\n')
                .map(|i| from + i);
        }
        if let Some(start) = start {
            if let Some(end) = head_end(&buf[..len], start, from) {
                return parse_head(&buf[start..end]).map_err(HeadError::Reply);
            }
        }
    }
}

/// The end of the head in `buf` (just past the empty line that ends it),
/// if complete. `start` is where the request line starts (empty lines
/// before it are skipped, as RFC 9112 asks); only line ends at or after
/// `from` are new.
fn head_end(buf: &[u8], start: usize, from: usize) -> Option<usize> {
    (from.max(start + 1)..buf.len())
        .find(|&e| {
            buf[e] == b'\n'
                && (buf[e - 1] == b'\n'
                    || (buf[e - 1] == b'\r' && e >= start + 2 && buf[e - 2] == b'\n'))
        })
        .map(|e| e + 1)
}

/// Parses a complete head; `Err(status)` for a request to refuse.
fn parse_head(head: &[u8]) -> Result<Request, u16> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let line = lines.next().ok_or(400u16)?;
    let line = std::str::from_utf8(line).map_err(|_| 400u16)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(400);
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(400);
    }
    if target.is_empty() || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(400);
    }
    match version.as_bytes() {
        b"HTTP/1.0" | b"HTTP/1.1" => {}
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            return Err(505)
        }
        _ => return Err(400),
    }
    let target = if target.starts_with('/') {
        target
    } else if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        // Past the authority.
        rest.find(['/', '?', '#']).map_or("", |i| &rest[i..])
    } else {
        return Err(400);
    };
    let target = target.split('#').next().unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let path = if path.is_empty() { "/" } else { path };

    // The body is never read, but a malformed length is a malformed request.
    let mut length: Option<u64> = None;
    // Ranges seen: more than one header is ignored like a malformed one.
    let mut ranges = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        let colon = line.iter().position(|&b| b == b':').ok_or(400u16)?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().copied().all(is_tchar) {
            return Err(400);
        }
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(400);
        }
        let value = value.trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(400u16)?;
            if length.is_some_and(|l| l != n) {
                return Err(400);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"range") && ranges.len() < 2 {
            ranges.push(parse_range(value));
        }
    }
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        range: match ranges[..] {
            [range] => range,
            _ => None,
        },
    })
}

/// RFC 9110's token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

fn respond(
    conn: &TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> io::Result<()> {
    respond_with(conn, status, "", content_type, body, head_only)
}

/// Writes a whole response; `extra` is more header lines, each ending in CRLF.
fn respond_with(
    conn: &TcpStream,
    status: u16,
    extra: &str,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> io::Result<()> {
    let mut out = response_head(status, extra, content_type, body.len() as u64).into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    let mut w = conn;
    w.write_all(&out)
}

/// The head of a response with a body of `length` bytes; `extra` is more
/// header lines, each ending in CRLF.
fn response_head(status: u16, extra: &str, content_type: &str, length: u64) -> String {
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\
         {extra}Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        reason(status),
    )
}

/// Ends the response (FIN), then reads and discards until the client
/// closes, for at most [`LINGER`] and [`LINGER_BYTES`], and closes.
fn linger_close(conn: TcpStream) {
    if conn.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let deadline = libnet::time::now() + LINGER;
    let mut buf = [0u8; 2048];
    let mut total = 0;
    while total < LINGER_BYTES {
        let left = deadline.saturating_duration_since(libnet::time::now());
        if left.is_zero() || conn.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match (&conn).read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => total += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libnet::net::SocketBuilder;
    use libnet::time::Clock;
    use libnet::yield_now;
    use std::time::Instant;

    /// How long a test waits for anything before calling it a failure.
    const PATIENCE: Duration = Duration::from_secs(10);

    /// Runs `main` on a one-loop runtime.
    fn run<T: 'static>(main: impl FnOnce() -> T + 'static) -> T {
        let rt = libnet::Runtime::builder()
            .loops(1)
            .build()
            .expect("runtime");
        rt.run(main).expect("runtime stopped early")
    }

    /// Starts a server on a free loopback port.
    fn serve_on_loopback(routes: Routes) -> SocketAddr {
        let server = Server::bind("127.0.0.1:0".parse().expect("addr"), routes).expect("bind");
        let addr = server.local_addr();
        drop(server.start());
        addr
    }

    fn connect(addr: SocketAddr) -> TcpStream {
        let c = TcpStream::connect(addr).expect("connect");
        c.set_read_timeout(Some(PATIENCE)).expect("timeout");
        c
    }

    /// Everything the server sends until it closes (a reset ends it too).
    fn read_until_closed(mut c: &TcpStream) -> Vec<u8> {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match c.read(&mut buf) {
                Ok(0) => return all,
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => panic!("server never closed"),
                Err(_) => return all,
            }
        }
    }

    /// Sends `request`, half-closes, and returns the response's head and body.
    fn exchange(addr: SocketAddr, request: &[u8]) -> (String, Vec<u8>) {
        let c = connect(addr);
        let _ = (&c).write_all(request);
        let _ = c.shutdown(Shutdown::Write);
        split(&read_until_closed(&c))
    }

    fn split(response: &[u8]) -> (String, Vec<u8>) {
        let end = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(response.len(), |i| i + 4);
        let head = String::from_utf8(response[..end].to_vec()).expect("ASCII head");
        (head, response[end..].to_vec())
    }

    fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn status(head: &str) -> u16 {
        head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    /// Parks until `cond` holds; panics after [`PATIENCE`].
    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let t = Instant::now();
        while !cond() {
            assert!(t.elapsed() < PATIENCE, "timed out waiting until {what}");
            libnet::time::sleep(Duration::from_millis(1));
        }
    }

    /// Byte `k` of the test stream.
    fn pattern(from: u64, len: usize) -> Vec<u8> {
        (from..from + len as u64)
            .map(|k| ((k % 251) ^ (k >> 9)) as u8)
            .collect()
    }

    fn text_routes() -> Routes {
        Routes {
            metrics: Some(Rc::new(|| "up 1\n".to_string())),
            status: Some(Rc::new(|| r#"{"ok":true}"#.to_string())),
            live: None,
            file: None,
        }
    }

    /// A viewer of `/live.ts`, with the response head read.
    fn viewer(addr: SocketAddr, conn: TcpStream) -> (TcpStream, String) {
        let _ = addr;
        (&conn)
            .write_all(b"GET /live.ts HTTP/1.1\r\nHost: test\r\n\r\n")
            .expect("request");
        let head = head_of(&conn);
        (conn, head)
    }

    /// Reads a response head, and not a byte more.
    fn head_of(mut conn: &TcpStream) -> String {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(conn.read(&mut b).expect("head"), 1, "closed in the head");
            head.push(b[0]);
        }
        String::from_utf8(head).expect("ASCII head")
    }

    /// Bytes per second of [`Arriving`]'s media: a key frame starts each
    /// second.
    const KEY_BYTES: u64 = 10_000;

    /// A file in memory whose bytes arrive over time, from the start,
    /// recording what the server asks of it.
    struct Arriving {
        bytes: Vec<u8>,
        /// Bytes there so far, from the start.
        arrived: Cell<u64>,
        /// Set: the bytes not there yet will not come.
        failed: Cell<bool>,
        /// The offsets `read_at` was called with, in order.
        asked: RefCell<Vec<u64>>,
        /// The times `offset_at` was called with, in order.
        seeks: RefCell<Vec<u64>>,
    }

    impl FileBody for Arriving {
        fn size(&self) -> u64 {
            self.bytes.len() as u64
        }

        fn offset_at(&self, ms: u64) -> u64 {
            self.seeks.borrow_mut().push(ms);
            ms / 1000 * KEY_BYTES
        }

        fn read_at(&self, offset: u64, max: usize) -> io::Result<Vec<u8>> {
            self.asked.borrow_mut().push(offset);
            while self.arrived.get() <= offset {
                if self.failed.get() {
                    return Err(io::Error::other("download failed"));
                }
                libnet::time::sleep(Duration::from_millis(1));
            }
            let end = self.arrived.get().min(offset + max as u64);
            Ok(self.bytes[offset as usize..end as usize].to_vec())
        }
    }

    /// A file of `len` pattern bytes, `arrived` of them there.
    fn arriving(len: usize, arrived: usize) -> Rc<Arriving> {
        Rc::new(Arriving {
            bytes: pattern(0, len),
            arrived: Cell::new(arrived as u64),
            failed: Cell::new(false),
            asked: RefCell::default(),
            seeks: RefCell::default(),
        })
    }

    /// The text routes and `file` under `name`.
    fn file_routes(name: &str, file: &Rc<Arriving>) -> Routes {
        Routes {
            file: Some((name.to_string(), file.clone() as Rc<dyn FileBody>)),
            ..text_routes()
        }
    }

    /// `GET target` with `headers` (each ending in CRLF): head and body.
    fn get(addr: SocketAddr, target: &str, headers: &str) -> (String, Vec<u8>) {
        let request = format!("GET {target} HTTP/1.1\r\nHost: t\r\n{headers}\r\n");
        exchange(addr, request.as_bytes())
    }

    #[test]
    fn metrics_status_and_index_have_their_bodies_and_headers() {
        run(|| {
            let addr = serve_on_loopback(text_routes());
            let (head, body) = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
            assert_eq!(header(&head, "content-type"), Some(PROMETHEUS));
            assert_eq!(header(&head, "content-length"), Some("5"));
            assert_eq!(header(&head, "connection"), Some("close"));
            assert_eq!(body, b"up 1\n");

            let (head, body) = exchange(addr, b"GET /status.json?x=1 HTTP/1.0\r\n\r\n");
            assert_eq!(status(&head), 200, "{head}");
            assert_eq!(header(&head, "content-type"), Some("application/json"));
            assert_eq!(body, br#"{"ok":true}"#);

            let (head, body) = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
            assert_eq!(status(&head), 200, "{head}");
            assert_eq!(header(&head, "content-length"), Some("5"));
            assert!(body.is_empty());

            // Leading empty lines, an absolute target, a head in pieces.
            let (head, body) = exchange(addr, b"\r\nGET http://h:1/ HTTP/1.1\nA: b\n\n");
            assert_eq!(status(&head), 200, "{head}");
            let index = String::from_utf8(body).expect("text");
            assert!(index.contains("/metrics") && index.contains("/status.json"));
            assert!(!index.contains("/live.ts"), "{index}");
            let c = connect(addr);
            for b in b"GET /metrics HTTP/1.1\r\n\r\n" {
                (&c).write_all(&[*b]).expect("write");
                libnet::time::sleep(Duration::from_millis(1));
            }
            let (head, body) = split(&read_until_closed(&c));
            assert_eq!((status(&head), &body[..]), (200, &b"up 1\n"[..]));
        });
    }

    #[test]
    fn bad_requests_get_4xx() {
        run(|| {
            let addr = serve_on_loopback(text_routes());
            let cases: &[(&[u8], u16)] = &[
                (b"GET /nope HTTP/1.1\r\n\r\n", 404),
                (b"GET /live.ts HTTP/1.1\r\n\r\n", 404),
                (
                    b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
                    405,
                ),
                (b"DELETE / HTTP/1.1\r\n\r\n", 405),
                (b"GARBAGE\r\n\r\n", 400),
                (b"GET / HTTP/1.1 x\r\n\r\n", 400),
                (b"GET  / HTTP/1.1\r\n\r\n", 400),
                (b"GET nothing HTTP/1.1\r\n\r\n", 400),
                (b"GET / HTTX/1.1\r\n\r\n", 400),
                (b"GET / HTTP/2.0\r\n\r\n", 505),
                (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", 400),
                (b"GET / HTTP/1.1\r\n : x\r\n\r\n", 400),
                (b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", 400),
                (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
                (
                    b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                    400,
                ),
                (b"GET / HTTP/1.1\r\nA: \x01\r\n\r\n", 400),
                (b"GET /\xff HTTP/1.1\r\n\r\n", 400),
                (b"GET / HTTP/1.1\r\nHost: x", 400), // cut short
            ];
            for (request, want) in cases {
                let (head, body) = exchange(addr, request);
                let shown = String::from_utf8_lossy(request);
                assert_eq!(status(&head), *want, "{shown:?} got {head}");
                assert_eq!(header(&head, "connection"), Some("close"));
                if *want == 405 {
                    assert_eq!(header(&head, "allow"), Some("GET, HEAD"));
                }
                let len: usize = header(&head, "content-length").unwrap().parse().unwrap();
                assert_eq!(body.len(), len);
            }
            // A head over 8 KiB, with or without an end.
            let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
            big.resize(MAX_HEAD + 100, b'a');
            assert_eq!(status(&exchange(addr, &big).0), 431);
            big.extend_from_slice(b"\r\n\r\n");
            assert_eq!(status(&exchange(addr, &big).0), 431);
            // Just under the bound is fine.
            let mut fits = b"GET / HTTP/1.1\r\nX: ".to_vec();
            fits.resize(MAX_HEAD - 4, b'a');
            fits.extend_from_slice(b"\r\n\r\n");
            assert_eq!(status(&exchange(addr, &fits).0), 200);
        });
    }

    #[test]
    fn garbage_never_hurts_the_server() {
        run(|| {
            let addr = serve_on_loopback(text_routes());
            let mut seed = 0x2545_f491_4f6c_dd1d_u64;
            let mut next = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            let valid = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
            for case in 0..300 {
                let len = (next() % 1500) as usize;
                let bytes: Vec<u8> = match case % 3 {
                    // Random bytes.
                    0 => (0..len).map(|_| next() as u8).collect(),
                    // Random text with many line ends.
                    1 => (0..len)
                        .map(|_| b" :/\r\nGET HTTP/1.1abc\x00\x7f"[(next() % 22) as usize])
                        .collect(),
                    // A valid request with a few bytes changed.
                    _ => {
                        let mut v = valid.to_vec();
                        for _ in 0..1 + next() % 3 {
                            let i = (next() as usize) % v.len();
                            v[i] = next() as u8;
                        }
                        v
                    }
                };
                let (head, _) = exchange(addr, &bytes);
                assert!(
                    head.is_empty()
                        || (head.starts_with("HTTP/1.1 ")
                            && [200, 400, 404, 405, 431, 505].contains(&status(&head))),
                    "case {case}: {bytes:?} got {head:?}"
                );
            }
            let (head, body) = exchange(addr, valid);
            assert_eq!((status(&head), &body[..]), (200, &b"up 1\n"[..]));
        });
    }

    #[test]
    fn a_silent_client_is_closed_after_the_idle_timeout() {
        let clock = Clock::manual();
        let rt = libnet::Runtime::builder()
            .loops(1)
            .clock(clock.clone())
            .build()
            .expect("runtime");
        let waited = rt
            .run(move || {
                let addr = serve_on_loopback(text_routes());
                let c = Rc::new(TcpStream::connect(addr).expect("connect"));
                let start = libnet::time::now();
                let closed: Rc<Cell<Option<usize>>> = Rc::default();
                let reader = libnet::spawn({
                    let (c, closed) = (c.clone(), closed.clone());
                    move || {
                        let mut b = [0u8; 64];
                        closed.set(Some((&*c).read(&mut b).unwrap_or(0)));
                    }
                });
                // Connections are served in order: once a later one is
                // answered, the server waits for this one's request.
                let (head, _) = exchange(addr, b"GET / HTTP/1.1\r\n\r\n");
                assert_eq!(status(&head), 200);
                let t = Instant::now();
                while closed.get().is_none() {
                    assert!(t.elapsed() < PATIENCE, "never closed");
                    clock.advance(Duration::from_millis(10));
                    // More than a batch of the loop, so that it polls.
                    for _ in 0..200 {
                        yield_now();
                    }
                }
                reader.join().expect("reader");
                assert_eq!(closed.get(), Some(0), "closed without an answer");
                libnet::time::now() - start
            })
            .expect("runtime stopped early");
        assert!(waited >= IDLE_TIMEOUT, "closed after {waited:?}");
        assert!(
            waited < IDLE_TIMEOUT + Duration::from_millis(100),
            "{waited:?}"
        );
    }

    #[test]
    fn one_client_too_many_gets_503() {
        run(|| {
            let addr = serve_on_loopback(text_routes());
            let mut idle: Vec<TcpStream> = (0..MAX_CLIENTS).map(|_| connect(addr)).collect();
            let extra = connect(addr);
            let (head, _) = split(&read_until_closed(&extra));
            assert_eq!(status(&head), 503, "{head}");
            // The others are still waiting for their requests.
            libnet::time::sleep(Duration::from_millis(50));
            for c in &idle {
                c.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
                let e = (&*c).read(&mut [0u8; 1]).expect_err("nothing to read");
                assert_eq!(e.kind(), io::ErrorKind::TimedOut);
            }
            // One leaves: its place is free again.
            drop(idle.pop());
            let t = Instant::now();
            loop {
                let (head, _) = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
                if status(&head) == 200 {
                    break;
                }
                assert_eq!(status(&head), 503);
                assert!(t.elapsed() < PATIENCE, "the slot was never freed");
                libnet::time::sleep(Duration::from_millis(5));
            }
        });
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

    #[test]
    fn a_file_still_downloading_is_sent_as_its_bytes_arrive() {
        run(|| {
            const LEN: usize = 300_000;
            let file = arriving(LEN, 0);
            let addr = serve_on_loopback(file_routes("film.ts", &file));
            let c = connect(addr);
            (&c).write_all(b"GET /film.ts HTTP/1.1\r\nHost: t\r\n\r\n")
                .expect("request");
            let head = head_of(&c);
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
            assert_eq!(header(&head, "content-length"), Some("300000"));
            assert_eq!(header(&head, "content-type"), Some(MPEG_TS));
            assert_eq!(header(&head, "accept-ranges"), Some("bytes"));
            assert_eq!(header(&head, "connection"), Some("close"));
            assert_eq!(header(&head, "content-range"), None);
            // Nothing has arrived: the server waits in read_at.
            c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let e = (&c).read(&mut [0u8; 1]).expect_err("no byte yet");
            assert_eq!(e.kind(), io::ErrorKind::TimedOut);
            assert_eq!(file.asked.borrow()[..], [0]);
            c.set_read_timeout(Some(PATIENCE)).unwrap();
            let feeder = libnet::spawn({
                let file = file.clone();
                move || {
                    while file.arrived.get() < LEN as u64 {
                        libnet::time::sleep(Duration::from_millis(2));
                        file.arrived
                            .set((file.arrived.get() + 7_000).min(LEN as u64));
                    }
                }
            });
            let body = read_until_closed(&c);
            feeder.join().expect("feeder");
            assert!(
                body == pattern(0, LEN),
                "bytes differ ({} read)",
                body.len()
            );
            // Read in the pieces that had arrived, each where the last ended.
            let asked = file.asked.borrow();
            assert!(asked.len() > LEN / BATCH + 1, "{asked:?}");
            assert!(asked.windows(2).all(|w| w[0] < w[1]), "{asked:?}");
        });
    }

    #[test]
    fn file_responses_have_their_type_and_head_sends_no_body() {
        run(|| {
            let file = arriving(5_000, 5_000);
            for (name, content_type) in [
                ("a.ts", MPEG_TS),
                ("b.MP4", "video/mp4"),
                ("c.mkv", "application/octet-stream"),
                ("ts", "application/octet-stream"),
            ] {
                let addr = serve_on_loopback(file_routes(name, &file));
                for target in [format!("/{name}"), "/file".to_string()] {
                    let request = format!("HEAD {target} HTTP/1.1\r\n\r\n");
                    let (head, body) = exchange(addr, request.as_bytes());
                    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
                    assert_eq!(header(&head, "content-type"), Some(content_type));
                    assert_eq!(header(&head, "content-length"), Some("5000"));
                    assert_eq!(header(&head, "accept-ranges"), Some("bytes"));
                    assert!(body.is_empty());
                }
                let (head, body) = get(addr, "/file", "");
                assert_eq!(header(&head, "content-type"), Some(content_type));
                assert!(body == pattern(0, 5_000));
                let (head, _) = exchange(addr, b"POST /file HTTP/1.1\r\n\r\n");
                assert_eq!(status(&head), 405, "{head}");
                assert_eq!(header(&head, "allow"), Some("GET, HEAD"));
            }
            let addr = serve_on_loopback(file_routes("a.ts", &file));
            let (head, body) = exchange(addr, b"HEAD /a.ts HTTP/1.1\r\nRange: bytes=10-19\r\n\r\n");
            assert_eq!(status(&head), 206, "{head}");
            assert_eq!(header(&head, "content-range"), Some("bytes 10-19/5000"));
            assert_eq!(header(&head, "content-length"), Some("10"));
            assert!(body.is_empty());
            // The GETs read; the HEADs did not.
            assert_eq!(file.asked.borrow()[..], [0, 0, 0, 0]);
        });
    }

    #[test]
    fn byte_ranges_get_206_with_their_bytes_or_416() {
        run(|| {
            const LEN: u64 = 200_000;
            let file = arriving(LEN as usize, LEN as usize);
            let addr = serve_on_loopback(file_routes("a.ts", &file));
            let parts: &[(&str, u64, u64)] = &[
                ("bytes=100-199", 100, 199),
                ("bytes=150000-", 150_000, LEN - 1),
                ("bytes=-500", LEN - 500, LEN - 1),
                ("bytes=-300000", 0, LEN - 1),
                ("bytes=190000-999999", 190_000, LEN - 1),
                ("bytes=0-0", 0, 0),
                ("bytes=0-", 0, LEN - 1),
                ("Bytes= 5-9 ,", 5, 9),
                ("bytes=7-99999999999999999999999", 7, LEN - 1),
            ];
            for &(range, first, last) in parts {
                let (head, body) = get(addr, "/a.ts", &format!("Range: {range}\r\n"));
                assert!(
                    head.starts_with("HTTP/1.1 206 Partial Content\r\n"),
                    "{range}: {head}"
                );
                let want = format!("bytes {first}-{last}/{LEN}");
                assert_eq!(header(&head, "content-range"), Some(&want[..]), "{range}");
                let n = last + 1 - first;
                assert_eq!(header(&head, "content-length"), Some(&n.to_string()[..]));
                assert_eq!(header(&head, "accept-ranges"), Some("bytes"));
                assert_eq!(header(&head, "content-type"), Some(MPEG_TS));
                assert!(body == pattern(first, n as usize), "{range}: bytes differ");
                // The first read is where the range starts.
                assert_eq!(file.asked.borrow_mut().drain(..).next(), Some(first));
            }
            for range in [
                "bytes=200000-",
                "bytes=200000-200001",
                "bytes=-0",
                "bytes=99999999999999999999999-",
            ] {
                let (head, body) = get(addr, "/a.ts", &format!("Range: {range}\r\n"));
                assert_eq!(status(&head), 416, "{range}: {head}");
                assert_eq!(header(&head, "content-range"), Some("bytes */200000"));
                assert_eq!(header(&head, "accept-ranges"), Some("bytes"));
                let len: usize = header(&head, "content-length").unwrap().parse().unwrap();
                assert_eq!(body.len(), len);
            }
            assert!(file.asked.borrow().is_empty(), "416 reads nothing");
            // Malformed, several ranges, two headers: ignored, 200 whole.
            for headers in [
                "Range: bytes=\r\n",
                "Range: bytes=-\r\n",
                "Range: bytes=5-3\r\n",
                "Range: bytes=a-b\r\n",
                "Range: items=0-1\r\n",
                "Range: bytes 0-1\r\n",
                "Range: bytes=--1\r\n",
                "Range: bytes=1-2-3\r\n",
                "Range: bytes=+1-2\r\n",
                "Range: bytes=0-1,5-9\r\n",
                "Range: bytes=0-1\r\nRange: bytes=0-1\r\n",
                "Range: \r\n",
            ] {
                let (head, body) = get(addr, "/a.ts", headers);
                assert!(
                    head.starts_with("HTTP/1.1 200 OK\r\n"),
                    "{headers:?}: {head}"
                );
                assert_eq!(header(&head, "content-range"), None);
                assert_eq!(header(&head, "content-length"), Some("200000"));
                assert!(
                    body == pattern(0, LEN as usize),
                    "{headers:?}: bytes differ"
                );
            }
        });
    }

    #[test]
    fn t_starts_at_the_offset_of_that_time() {
        run(|| {
            const LEN: u64 = 200_000;
            let file = arriving(LEN as usize, LEN as usize);
            let addr = serve_on_loopback(file_routes("a.ts", &file));
            let cases: &[(&str, u64, u64)] = &[
                ("/a.ts?t=12.5", 12_500, 120_000),
                ("/a.ts?x=1&t=3", 3_000, 30_000),
                ("/file?t=.25", 250, 0),
                ("/a.ts?t=7.", 7_000, 70_000),
                ("/a.ts?t=1.9999", 1_999, 10_000),
                ("/a.ts?t=%31%32#frag", 12_000, 120_000),
                // Past the end: nothing left.
                ("/a.ts?t=9999", 9_999_000, LEN),
            ];
            for &(target, ms, offset) in cases {
                let (head, body) = get(addr, target, "");
                assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{target}: {head}");
                let n = LEN - offset;
                assert_eq!(header(&head, "content-length"), Some(&n.to_string()[..]));
                assert_eq!(header(&head, "accept-ranges"), Some("bytes"));
                assert!(
                    body == pattern(offset, n as usize),
                    "{target}: bytes differ"
                );
                assert_eq!(file.seeks.borrow_mut().drain(..).collect::<Vec<_>>(), [ms]);
                let asked: Vec<u64> = file.asked.borrow_mut().drain(..).collect();
                assert_eq!(
                    asked.first().copied(),
                    (n > 0).then_some(offset),
                    "{target}"
                );
            }
            // A range is of the part from that time on.
            let (head, body) = get(addr, "/a.ts?t=12", "Range: bytes=10-109\r\n");
            assert_eq!(status(&head), 206, "{head}");
            assert_eq!(header(&head, "content-range"), Some("bytes 10-109/80000"));
            assert!(body == pattern(120_010, 100));
            let (head, _) = get(addr, "/a.ts?t=12", "Range: bytes=80000-\r\n");
            assert_eq!(status(&head), 416, "{head}");
            assert_eq!(header(&head, "content-range"), Some("bytes */80000"));
            let (head, body) = exchange(addr, b"HEAD /a.ts?t=1 HTTP/1.1\r\n\r\n");
            assert_eq!(header(&head, "content-length"), Some("190000"));
            assert!(body.is_empty());
            file.seeks.borrow_mut().clear();
            for bad in [
                "t=abc",
                "t=-1",
                "t=+1",
                "t=1e3",
                "t=",
                "t",
                "t=.",
                "t=1.2.3",
                "t=%zz",
                "t=1&t=2",
                "t=1%200",
                "t=99999999999999999999",
                "t=18446744073709552",
            ] {
                let (head, body) = get(addr, &format!("/a.ts?{bad}"), "");
                assert_eq!(status(&head), 400, "{bad}: {head}");
                let len: usize = header(&head, "content-length").unwrap().parse().unwrap();
                assert_eq!(body.len(), len);
            }
            assert!(file.seeks.borrow().is_empty());
            // Other routes ignore the query.
            let (head, _) = get(addr, "/metrics?t=abc", "");
            assert_eq!(status(&head), 200, "{head}");
        });
    }

    #[test]
    fn the_file_is_found_by_its_percent_decoded_name() {
        run(|| {
            let file = arriving(1_000, 1_000);
            let name = "my film (1) é.ts";
            let addr = serve_on_loopback(file_routes(name, &file));
            let cases: &[(&str, u16)] = &[
                ("/my%20film%20%281%29%20%C3%A9.ts", 200),
                ("/my%20film%20(1)%20%c3%a9.ts", 200),
                ("/file", 200),
                ("http://h/my%20film%20%281%29%20%C3%A9.ts?t=0", 200),
                ("/my%20Film%20%281%29%20%C3%A9.ts", 404),
                ("/my%20film%20%281%29%20%C3%A9.ts/", 404),
                ("/other.ts", 404),
                ("/files", 404),
                ("/%ff", 404),
                ("/%zz", 400),
                ("/a%4", 400),
                ("/a%", 400),
            ];
            for &(target, want) in cases {
                let (head, body) = get(addr, target, "");
                assert_eq!(status(&head), want, "{target}: {head}");
                if want == 200 {
                    assert!(body == pattern(0, 1_000), "{target}: bytes differ");
                }
            }
            // Fixed routes come first.
            let (_, body) = get(addr, "/metrics", "");
            assert_eq!(body, b"up 1\n");
            let (_, body) = get(addr, "/", "");
            let index = String::from_utf8(body).expect("text");
            assert!(
                index.contains("/my%20film%20%281%29%20%C3%A9.ts "),
                "{index}"
            );
            assert!(index.contains("/file"), "{index}");
        });
    }

    #[test]
    fn a_failed_download_cuts_the_body_short() {
        run(|| {
            let file = arriving(300_000, 100_000);
            file.failed.set(true);
            let addr = serve_on_loopback(file_routes("a.ts", &file));
            let (head, body) = get(addr, "/a.ts", "");
            assert_eq!(header(&head, "content-length"), Some("300000"));
            assert!(body == pattern(0, 100_000), "{} bytes", body.len());
            let (head, body) = get(addr, "/a.ts", "Range: bytes=150000-\r\n");
            assert_eq!(status(&head), 206, "{head}");
            assert!(body.is_empty());
            // The server is fine.
            file.failed.set(false);
            file.arrived.set(300_000);
            let (_, body) = get(addr, "/a.ts", "");
            assert!(body == pattern(0, 300_000));
        });
    }

    #[test]
    fn reads_ask_first_for_where_each_player_reads() {
        run(|| {
            const LEN: usize = 300_000;
            let file = arriving(LEN, 0);
            let addr = serve_on_loopback(file_routes("a.ts", &file));
            let a = connect(addr);
            (&a).write_all(b"GET /a.ts HTTP/1.1\r\nRange: bytes=250000-\r\n\r\n")
                .expect("request");
            assert_eq!(status(&head_of(&a)), 206);
            wait_until("a read at 250000", || file.asked.borrow()[..] == [250_000]);
            let b = connect(addr);
            (&b).write_all(b"GET /a.ts?t=7 HTTP/1.1\r\n\r\n")
                .expect("request");
            assert_eq!(status(&head_of(&b)), 200);
            wait_until("b read at 70000", || {
                file.asked.borrow()[..] == [250_000, 70_000]
            });
            file.arrived.set(LEN as u64);
            assert!(read_until_closed(&a) == pattern(250_000, 50_000));
            assert!(read_until_closed(&b) == pattern(70_000, LEN - 70_000));
        });
    }

    #[test]
    fn file_readers_waiting_for_bytes_count_against_max_clients() {
        run(|| {
            let file = arriving(1_000, 0);
            let addr = serve_on_loopback(file_routes("a.ts", &file));
            let waiting: Vec<TcpStream> = (0..MAX_CLIENTS)
                .map(|_| {
                    let c = connect(addr);
                    (&c).write_all(b"GET /file HTTP/1.1\r\n\r\n")
                        .expect("request");
                    c
                })
                .collect();
            wait_until("all waiting", || file.asked.borrow().len() == MAX_CLIENTS);
            let (head, _) = get(addr, "/file", "");
            assert_eq!(status(&head), 503, "{head}");
            file.arrived.set(1_000);
            for c in &waiting {
                let (head, body) = split(&read_until_closed(c));
                assert_eq!(status(&head), 200, "{head}");
                assert!(body == pattern(0, 1_000));
            }
        });
    }

    #[test]
    fn a_port_in_use_says_so() {
        let first = Server::bind("127.0.0.1:0".parse().unwrap(), Routes::default()).unwrap();
        let addr = first.local_addr();
        let e = Server::bind(addr, Routes::default())
            .err()
            .expect("second bind");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert_eq!(
            e.to_string(),
            format!("http: cannot listen on {addr}: address already in use")
        );
    }

    #[test]
    fn metrics_text_follows_the_exposition_format() {
        let mut m = Metrics::default();
        m.counter("p2p_bytes_total", "Bytes sent.", 42)
            .gauge_labeled(
                "p2p_peer_rtt_seconds",
                "RTT \\ per peer.\nIn seconds.",
                &[("peer", "a\"b\\c\nd"), ("bad-label", "x")],
                0.25,
            )
            .gauge("p2p_viewers", "Viewers.", 3.0)
            .gauge_labeled(
                "p2p_peer_rtt_seconds",
                "ignored",
                &[("peer", "e")],
                f64::INFINITY,
            )
            .gauge("9 bad", "Odd.", f64::NAN)
            .gauge("neg", "Negative.", f64::NEG_INFINITY);
        assert_eq!(
            m.finish(),
            "# HELP p2p_bytes_total Bytes sent.\n\
             # TYPE p2p_bytes_total counter\n\
             p2p_bytes_total 42\n\
             # HELP p2p_peer_rtt_seconds RTT \\\\ per peer.\\nIn seconds.\n\
             # TYPE p2p_peer_rtt_seconds gauge\n\
             p2p_peer_rtt_seconds{peer=\"a\\\"b\\\\c\\nd\",bad_label=\"x\"} 0.25\n\
             p2p_peer_rtt_seconds{peer=\"e\"} +Inf\n\
             # HELP p2p_viewers Viewers.\n\
             # TYPE p2p_viewers gauge\n\
             p2p_viewers 3\n\
             # HELP _9_bad Odd.\n\
             # TYPE _9_bad gauge\n\
             _9_bad NaN\n\
             # HELP neg Negative.\n\
             # TYPE neg gauge\n\
             neg -Inf\n"
        );
        assert_eq!(Metrics::default().finish(), "");
    }

    #[test]
    fn ranges_parse_and_meet_sizes() {
        use ByteRange::{From, Suffix};
        let cases: &[(&[u8], Option<ByteRange>)] = &[
            (
                b"bytes=0-499",
                Some(From {
                    first: 0,
                    last: Some(499),
                }),
            ),
            (
                b"bytes=500-",
                Some(From {
                    first: 500,
                    last: None,
                }),
            ),
            (b"bytes=-500", Some(Suffix(500))),
            (
                b"BYTES=1-1",
                Some(From {
                    first: 1,
                    last: Some(1),
                }),
            ),
            (
                b"bytes=, 1-2 ,\t",
                Some(From {
                    first: 1,
                    last: Some(2),
                }),
            ),
            (
                b"bytes=99999999999999999999-",
                Some(From {
                    first: u64::MAX,
                    last: None,
                }),
            ),
            (b"bytes=-99999999999999999999", Some(Suffix(u64::MAX))),
            (b"bytes=2-1", None),
            (b"bytes=0-1,2-3", None),
            (b"bytes=", None),
            (b"bytes=,", None),
            (b"bytes=-", None),
            (b"bytes=1", None),
            (b"bytes =1-2", None),
            (b"bytes= 1 - 2", None),
            (b"bytes=0x1-2", None),
            (b"bytes=\xff-1", None),
            (b"pages=1-2", None),
            (b"", None),
            (b"=", None),
        ];
        for &(value, want) in cases {
            assert_eq!(
                parse_range(value),
                want,
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
        let part = |first, last| Span::Part { first, last };
        assert_eq!(
            From {
                first: 0,
                last: Some(9)
            }
            .span(5),
            part(0, 4)
        );
        assert_eq!(
            From {
                first: 4,
                last: None
            }
            .span(5),
            part(4, 4)
        );
        assert_eq!(
            From {
                first: 5,
                last: None
            }
            .span(5),
            Span::Unsatisfiable
        );
        assert_eq!(
            From {
                first: 0,
                last: None
            }
            .span(0),
            Span::Unsatisfiable
        );
        assert_eq!(Suffix(2).span(5), part(3, 4));
        assert_eq!(Suffix(9).span(5), part(0, 4));
        assert_eq!(Suffix(0).span(5), Span::Unsatisfiable);
        assert_eq!(Suffix(3).span(0), Span::Whole);
        // In the head: one Range header, the query kept raw.
        let req = parse_head(b"GET /a%20b?t=1&x HTTP/1.1\r\nrange:  bytes=-5 \r\n\r\n").unwrap();
        assert_eq!(req.path, "/a%20b");
        assert_eq!(req.query, "t=1&x");
        assert_eq!(req.range, Some(Suffix(5)));
        let two = b"GET / HTTP/1.1\r\nRange: bytes=1-\r\nRange: bytes=1-\r\n\r\n";
        assert_eq!(parse_head(two).unwrap().range, None);
        let bad = b"GET / HTTP/1.1\r\nRange: lots\r\n\r\n";
        assert_eq!(parse_head(bad).unwrap().range, None);
        let req = parse_head(b"GET http://h?t=2#x HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!((req.path.as_str(), req.query.as_str()), ("/", "t=2"));
    }

    #[test]
    fn times_and_escapes_parse() {
        let times: &[(&str, Option<u64>)] = &[
            ("12", Some(12_000)),
            ("12.5", Some(12_500)),
            ("0.0015", Some(1)),
            (".5", Some(500)),
            ("3.", Some(3_000)),
            ("0", Some(0)),
            ("18446744073709551", Some(18_446_744_073_709_551_000)),
            ("18446744073709552", None),
            ("", None),
            (".", None),
            ("-1", None),
            ("1e3", None),
            (" 1", None),
            ("1.2.3", None),
            ("١", None),
        ];
        for &(s, want) in times {
            assert_eq!(parse_seconds(s), want, "{s:?}");
        }
        assert_eq!(seek_ms(""), Ok(None));
        assert_eq!(seek_ms("a=b&&tt=1&T=2"), Ok(None));
        assert_eq!(seek_ms("a&t=1.5&b=%zz"), Ok(Some(1_500)));
        assert_eq!(seek_ms("t=1&t=1"), Err(()));
        assert_eq!(seek_ms("t=%ff"), Err(()));
        assert_eq!(
            percent_decode("/a%20b%2F%c3%A9"),
            Ok(b"/a b/\xc3\xa9".to_vec())
        );
        for bad in ["%", "%2", "%g0", "a%%20", "%2g"] {
            assert_eq!(percent_decode(bad), Err(()), "{bad}");
        }
        let name = "a b/%é?#.ts";
        assert_eq!(percent_encode(name), "a%20b/%25%C3%A9%3F%23.ts");
        let encoded = format!("/{}", percent_encode(name));
        assert_eq!(file_path_matches(&encoded, name), Ok(true));
        assert_eq!(file_path_matches("/file", name), Ok(true));
        assert_eq!(file_path_matches("/", ""), Ok(true));
        assert_eq!(file_path_matches("/x", name), Ok(false));
        assert_eq!(file_type("x.Ts"), MPEG_TS);
        assert_eq!(file_type(".mp4"), "video/mp4");
        assert_eq!(file_type("x.mp4.part"), "application/octet-stream");
    }

    #[test]
    fn range_and_query_garbage_never_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"bytes=-,0123456789 \t%.&t?#\xff9";
        for case in 0..20_000 {
            let len = (next() % 40) as usize;
            let bytes: Vec<u8> = match case % 3 {
                0 => (0..len).map(|_| next() as u8).collect(),
                1 => (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect(),
                _ => {
                    let mut v = b"bytes=".to_vec();
                    v.extend((0..len).map(|_| b"-0123456789,"[(next() % 12) as usize]));
                    v
                }
            };
            let size = match next() % 4 {
                0 => 0,
                1 => next() % 10,
                2 => u64::MAX,
                _ => next(),
            };
            if let Some(range) = parse_range(&bytes) {
                match range.span(size) {
                    Span::Part { first, last } => {
                        assert!(first <= last && last < size, "{range:?} of {size}")
                    }
                    Span::Whole => assert_eq!(size, 0),
                    Span::Unsatisfiable => {}
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            let _ = (seek_ms(&text), parse_seconds(&text), percent_decode(&text));
            let _ = file_path_matches(&text, "a.ts");
            let mut head = b"GET /?".to_vec();
            head.extend(bytes.iter().filter(|b| b.is_ascii_graphic()));
            head.extend_from_slice(b" HTTP/1.1\r\nRange: ");
            head.extend(bytes.iter().filter(|&&b| b != b'\r' && b != b'\n'));
            head.extend_from_slice(b"\r\n\r\n");
            let _ = parse_head(&head);
        }
    }

    #[test]
    fn heads_are_found_and_parsed() {
        let end = |b: &[u8]| head_end(b, 0, 0);
        assert_eq!(end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
        assert_eq!(end(b"GET / HTTP/1.1\r\n\r"), None);
        // Found when the end arrives in a later read.
        assert_eq!(head_end(b"\r\nGET / HTTP/1.1\r\n\r\n", 2, 19), Some(20));
        let req = parse_head(b"GET /a?b#c HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!((req.method.as_str(), req.path.as_str()), ("GET", "/a"));
        assert_eq!((req.query.as_str(), req.range), ("b", None));
        let req = parse_head(b"HEAD http://h HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!((req.method.as_str(), req.path.as_str()), ("HEAD", "/"));
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nX:\r\n\r\n").map(|_| ()),
            Ok(())
        );
        assert_eq!(parse_head(b"G(T / HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(parse_head(b"\r\n"), Err(400));
    }
}
