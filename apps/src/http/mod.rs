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

mod file;
mod hub;
mod metrics;
#[cfg(test)]
mod testing;

pub use file::FileBody;
pub use hub::Hub;
pub use metrics::Metrics;

use std::cell::Cell;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use libnet::net::{TcpListener, TcpStream};
use libnet::JoinHandle;

use file::{file_path_matches, parse_range, percent_encode, serve_file, ByteRange};
use hub::serve_live;

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

/// A renderer of a response body, called on each request.
pub type Render = Rc<dyn Fn() -> String>;

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

    /// The URL of the file route (`Routes::file`), for players; `None`
    /// without one.
    pub fn file_url(&self) -> Option<String> {
        let (name, _) = self.routes.file.as_ref()?;
        Some(format!(
            "http://{}/{}",
            self.addr,
            file::percent_encode(name)
        ))
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
    use super::testing::*;
    use super::*;
    use libnet::time::Clock;
    use libnet::yield_now;
    use std::time::Instant;

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
