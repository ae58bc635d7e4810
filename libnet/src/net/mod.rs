//! Sockets in blocking style: TCP and UDP whose calls park the calling
//! coroutine (or block a plain thread) instead of returning `WouldBlock`.
//!
//! `bind` and `connect` keep std's semantics; anything else (address or port
//! reuse, buffer sizes, backlog, v6-only) goes through [`SocketBuilder`], so
//! no option is ever set silently. [`serve`] spreads accepted connections
//! over the runtime's loops.

mod tcp;
pub(crate) mod udp;

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

pub use tcp::{TcpListener, TcpStream};
pub use udp::UdpSocket;

/// Tries `f` on each resolved address until one succeeds, like std.
fn each_addr<T>(
    addr: impl ToSocketAddrs,
    mut f: impl FnMut(SocketAddr) -> io::Result<T>,
) -> io::Result<T> {
    let mut last = None;
    for a in addr.to_socket_addrs()? {
        match f(a) {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "could not resolve to any address",
        )
    }))
}

/// Makes bind failures say which address, keeping the error kind.
fn bind_error(e: io::Error, proto: &str, addr: SocketAddr) -> io::Error {
    let what = match e.kind() {
        io::ErrorKind::AddrInUse => "address already in use".to_string(),
        io::ErrorKind::AddrNotAvailable => "address not available on this host".to_string(),
        io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    };
    io::Error::new(e.kind(), format!("cannot bind {proto} {addr}: {what}"))
}

/// Socket options applied before `bind`/`listen`/`connect`, through socket2.
///
/// ```no_run
/// # fn main() -> std::io::Result<()> {
/// let udp = libnet::net::SocketBuilder::new()
///     .reuse_address(true)
///     .recv_buffer_size(4 << 20)
///     .bind_udp("0.0.0.0:0".parse().unwrap())?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct SocketBuilder {
    reuse_address: Option<bool>,
    reuse_port: bool,
    recv_buffer: Option<usize>,
    send_buffer: Option<usize>,
    only_v6: Option<bool>,
    backlog: Option<i32>,
    nodelay: bool,
}

impl SocketBuilder {
    /// No options set: the OS defaults (note std's `bind` sets
    /// SO_REUSEADDR on TCP listeners on Unix; this builder does only what it is told).
    pub fn new() -> SocketBuilder {
        SocketBuilder::default()
    }

    /// SO_REUSEADDR.
    pub fn reuse_address(mut self, on: bool) -> Self {
        self.reuse_address = Some(on);
        self
    }

    /// SO_REUSEPORT: several sockets may bind the same address and port.
    pub fn reuse_port(mut self, on: bool) -> Self {
        self.reuse_port = on;
        self
    }

    /// SO_RCVBUF in bytes (the kernel may double or cap it).
    pub fn recv_buffer_size(mut self, bytes: usize) -> Self {
        self.recv_buffer = Some(bytes);
        self
    }

    /// SO_SNDBUF in bytes (the kernel may double or cap it).
    pub fn send_buffer_size(mut self, bytes: usize) -> Self {
        self.send_buffer = Some(bytes);
        self
    }

    /// IPV6_V6ONLY for IPv6 sockets.
    pub fn only_v6(mut self, on: bool) -> Self {
        self.only_v6 = Some(on);
        self
    }

    /// Listen backlog (default 1024).
    pub fn backlog(mut self, n: i32) -> Self {
        self.backlog = Some(n);
        self
    }

    /// TCP_NODELAY on connected streams.
    pub fn nodelay(mut self, on: bool) -> Self {
        self.nodelay = on;
        self
    }

    fn socket(&self, addr: &SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
        let s = Socket::new(Domain::for_address(*addr), ty, Some(proto))?;
        if let Some(on) = self.reuse_address {
            s.set_reuse_address(on)?;
        }
        if self.reuse_port {
            s.set_reuse_port(true)?;
        }
        if let Some(n) = self.recv_buffer {
            s.set_recv_buffer_size(n)?;
        }
        if let Some(n) = self.send_buffer {
            s.set_send_buffer_size(n)?;
        }
        if let (Some(on), true) = (self.only_v6, addr.is_ipv6()) {
            s.set_only_v6(on)?;
        }
        s.set_nonblocking(true)?;
        Ok(s)
    }

    /// A UDP socket bound to `addr` with these options.
    pub fn bind_udp(&self, addr: SocketAddr) -> io::Result<UdpSocket> {
        let s = self.socket(&addr, Type::DGRAM, Protocol::UDP)?;
        s.bind(&addr.into())
            .map_err(|e| bind_error(e, "UDP", addr))?;
        UdpSocket::from_std(s.into())
    }

    /// A TCP listener on `addr` with these options.
    pub fn listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let s = self.socket(&addr, Type::STREAM, Protocol::TCP)?;
        s.bind(&addr.into())
            .map_err(|e| bind_error(e, "TCP", addr))?;
        s.listen(self.backlog.unwrap_or(1024))?;
        TcpListener::from_std(s.into())
    }

    /// A TCP connection to `addr` with these options, failing with
    /// `TimedOut` after `timeout` if given.
    pub fn connect(&self, addr: SocketAddr, timeout: Option<Duration>) -> io::Result<TcpStream> {
        let s = self.socket(&addr, Type::STREAM, Protocol::TCP)?;
        if self.nodelay {
            s.set_tcp_nodelay(true)?;
        }
        match s.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        let std: std::net::TcpStream = s.into();
        let stream = TcpStream::from_mio(mio::net::TcpStream::from_std(std));
        stream.finish_connect(timeout)?;
        Ok(stream)
    }
}

/// How [`serve`] picks the loop for each accepted connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Spread {
    /// Loops in turn. Cheapest, and even when connections cost alike.
    #[default]
    RoundRobin,
    /// The loop serving the fewest open connections of this server: adapts
    /// when connections differ in lifetime.
    LeastConnections,
    /// Every connection on the accepting loop (no cross-thread hand-off).
    ThisLoop,
}

/// Accepts connections on `listener` forever, running `handler` for each in
/// a coroutine on a loop chosen by `spread`. Returns when accepting fails
/// for good (the runtime shutting down, or a listener error other than
/// running out of descriptors or memory, which are logged and retried).
pub fn serve<F>(listener: &TcpListener, spread: Spread, handler: F) -> io::Result<()>
where
    F: Fn(TcpStream) + Send + Sync + 'static,
{
    let handle = crate::handle();
    let loops = handle.loops();
    let here = crate::current_loop().unwrap_or(0);
    let handler = Arc::new(handler);
    let open: Arc<Vec<AtomicUsize>> = Arc::new((0..loops).map(|_| AtomicUsize::new(0)).collect());
    let mut turn = here;
    loop {
        let (std, _) = match listener.accept_std() {
            Ok(c) => c,
            Err(e) if is_transient_accept_error(&e) => {
                log::warn!("libnet: accept failed, retrying in 50 ms: {e}");
                crate::time::sleep(Duration::from_millis(50));
                continue;
            }
            Err(e) => return Err(e),
        };
        let target = match spread {
            Spread::ThisLoop => here,
            Spread::RoundRobin => {
                turn = (turn + 1) % loops;
                turn
            }
            Spread::LeastConnections => (0..loops)
                .min_by_key(|&i| (open[i].load(Ordering::Relaxed), (i + loops - here) % loops))
                .unwrap_or(here),
        };
        let handler = handler.clone();
        let open = open.clone();
        open[target].fetch_add(1, Ordering::Relaxed);
        let job = move || {
            struct Done(Arc<Vec<AtomicUsize>>, usize);
            impl Drop for Done {
                fn drop(&mut self) {
                    self.0[self.1].fetch_sub(1, Ordering::Relaxed);
                }
            }
            let _done = Done(open, target);
            match TcpStream::from_std(std) {
                Ok(s) => handler(s),
                Err(e) => log::warn!("libnet: cannot adopt an accepted connection: {e}"),
            }
        };
        drop(handle.spawn_on(target, job));
    }
}

/// Accept errors after which accepting again later may work.
fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::OutOfMemory
    ) || matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}
