//! Helpers shared by the HTTP tests: a runtime, a server on loopback,
//! and clients that send requests and take responses apart.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use libnet::net::TcpStream;

use super::{Routes, Server};

/// How long a test waits for anything before calling it a failure.
pub(super) const PATIENCE: Duration = Duration::from_secs(10);

/// Runs `main` on a one-loop runtime.
pub(super) fn run<T: 'static>(main: impl FnOnce() -> T + 'static) -> T {
    let rt = libnet::Runtime::builder()
        .loops(1)
        .build()
        .expect("runtime");
    rt.run(main).expect("runtime stopped early")
}

/// Starts a server on a free loopback port.
pub(super) fn serve_on_loopback(routes: Routes) -> SocketAddr {
    let server = Server::bind("127.0.0.1:0".parse().expect("addr"), routes).expect("bind");
    let addr = server.local_addr();
    drop(server.start());
    addr
}

pub(super) fn connect(addr: SocketAddr) -> TcpStream {
    let c = TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(PATIENCE)).expect("timeout");
    c
}

/// Everything the server sends until it closes (a reset ends it too).
pub(super) fn read_until_closed(mut c: &TcpStream) -> Vec<u8> {
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
pub(super) fn exchange(addr: SocketAddr, request: &[u8]) -> (String, Vec<u8>) {
    let c = connect(addr);
    let _ = (&c).write_all(request);
    let _ = c.shutdown(Shutdown::Write);
    split(&read_until_closed(&c))
}

pub(super) fn split(response: &[u8]) -> (String, Vec<u8>) {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(response.len(), |i| i + 4);
    let head = String::from_utf8(response[..end].to_vec()).expect("ASCII head");
    (head, response[end..].to_vec())
}

pub(super) fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

pub(super) fn status(head: &str) -> u16 {
    head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Parks until `cond` holds; panics after [`PATIENCE`].
pub(super) fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < PATIENCE, "timed out waiting until {what}");
        libnet::time::sleep(Duration::from_millis(1));
    }
}

/// Byte `k` of the test stream.
pub(super) fn pattern(from: u64, len: usize) -> Vec<u8> {
    (from..from + len as u64)
        .map(|k| ((k % 251) ^ (k >> 9)) as u8)
        .collect()
}

pub(super) fn text_routes() -> Routes {
    Routes {
        metrics: Some(Rc::new(|| "up 1\n".to_string())),
        status: Some(Rc::new(|| r#"{"ok":true}"#.to_string())),
        live: None,
        file: None,
    }
}

/// Reads a response head, and not a byte more.
pub(super) fn head_of(mut conn: &TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(conn.read(&mut b).expect("head"), 1, "closed in the head");
        head.push(b[0]);
    }
    String::from_utf8(head).expect("ASCII head")
}

/// `GET target` with `headers` (each ending in CRLF): head and body.
pub(super) fn get(addr: SocketAddr, target: &str, headers: &str) -> (String, Vec<u8>) {
    let request = format!("GET {target} HTTP/1.1\r\nHost: t\r\n{headers}\r\n");
    exchange(addr, request.as_bytes())
}
