//! UDP sockets that block the calling coroutine, not the thread.

use std::cell::Cell;
use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use crate::runtime::io::IoSource;
use crate::runtime::reactor::Direction;

use super::tcp::check_timeout;
use super::{bind_error, each_addr};

/// A UDP socket. `send_to`/`recv_from` (and `send`/`recv` once connected)
/// park only the calling coroutine; one coroutine may receive while another
/// sends on the same socket (share it with `Rc`).
pub struct UdpSocket {
    io: IoSource<mio::net::UdpSocket>,
    read_timeout: Cell<Option<Duration>>,
    write_timeout: Cell<Option<Duration>>,
}

impl fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpSocket")
            .field("local", &self.local_addr().ok())
            .finish()
    }
}

impl UdpSocket {
    /// Binds like `std::net::UdpSocket::bind`; other options through
    /// [`super::SocketBuilder`]. A port in use fails with `AddrInUse` and a
    /// message naming the address.
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<UdpSocket> {
        each_addr(addr, |a| {
            let s = std::net::UdpSocket::bind(a).map_err(|e| bind_error(e, "UDP", a))?;
            UdpSocket::from_std(s)
        })
    }

    /// Wraps a bound std socket (switching it to non-blocking mode).
    pub fn from_std(s: std::net::UdpSocket) -> io::Result<UdpSocket> {
        s.set_nonblocking(true)?;
        Ok(UdpSocket {
            io: IoSource::with_write_on_demand(mio::net::UdpSocket::from_std(s)),
            read_timeout: Cell::new(None),
            write_timeout: Cell::new(None),
        })
    }

    /// Unwraps into a std socket in blocking mode.
    pub fn into_std(self) -> io::Result<std::net::UdpSocket> {
        let s: std::net::UdpSocket = self.io.into_inner().into();
        s.set_nonblocking(false)?;
        Ok(s)
    }

    /// Sends one datagram to `addr`; returns the bytes sent.
    pub fn send_to(&self, buf: &[u8], addr: SocketAddr) -> io::Result<usize> {
        self.io
            .do_io(Direction::Write, self.write_timeout.get(), |s| {
                s.send_to(buf, addr)
            })
    }

    /// Receives one datagram and its source address.
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.io
            .do_io(Direction::Read, self.read_timeout.get(), |s| {
                s.recv_from(buf)
            })
    }

    /// Like `recv_from` without removing the datagram.
    pub fn peek_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.io
            .do_io(Direction::Read, self.read_timeout.get(), |s| {
                s.peek_from(buf)
            })
    }

    /// Sets the default peer: `send`/`recv` then talk to it only.
    pub fn connect(&self, addr: SocketAddr) -> io::Result<()> {
        self.io.get().connect(addr)
    }

    /// Sends one datagram to the connected peer.
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        self.io
            .do_io(Direction::Write, self.write_timeout.get(), |s| s.send(buf))
    }

    /// Receives one datagram from the connected peer.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.io
            .do_io(Direction::Read, self.read_timeout.get(), |s| s.recv(buf))
    }

    /// Sends without waiting: `WouldBlock` if the send buffer is full.
    pub fn try_send_to(&self, buf: &[u8], addr: SocketAddr) -> io::Result<usize> {
        self.io.try_io(Direction::Write, |s| s.send_to(buf, addr))
    }

    /// Receives without waiting: `WouldBlock` if nothing is queued. After a
    /// `WouldBlock`, further calls answer it without a syscall until the
    /// socket signals readability again (to a coroutine of its loop).
    pub fn try_recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.io.try_io(Direction::Read, |s| s.recv_from(buf))
    }

    /// Parks until the socket may be readable, the calling coroutine is
    /// woken by anyone, or `deadline` passes. May return spuriously; the
    /// caller drains with `try_recv_from` until `WouldBlock` before waiting
    /// again (readiness is edge-triggered). The caller checks the deadline
    /// itself (it just read the clock): reaching it returns `Ok` like any
    /// other wake-up, and no clock read is spent here.
    pub(crate) fn wait_readable(&self, deadline: Option<std::time::Instant>) -> io::Result<()> {
        self.io.wait_until(Direction::Read, deadline)
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.get().local_addr()
    }

    /// The connected peer.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.io.get().peer_addr()
    }

    /// How long a receive may wait before failing with `TimedOut`.
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        check_timeout(t)?;
        self.read_timeout.set(t);
        Ok(())
    }

    /// How long a send may wait before failing with `TimedOut`.
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        check_timeout(t)?;
        self.write_timeout.set(t);
        Ok(())
    }

    /// The receive timeout.
    pub fn read_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(self.read_timeout.get())
    }

    /// The send timeout.
    pub fn write_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(self.write_timeout.get())
    }

    /// Allows sending to broadcast addresses.
    pub fn set_broadcast(&self, on: bool) -> io::Result<()> {
        self.io.get().set_broadcast(on)
    }

    /// Sets the IP TTL of outgoing datagrams.
    pub fn set_ttl(&self, ttl: u32) -> io::Result<()> {
        self.io.get().set_ttl(ttl)
    }

    /// Reads the pending socket error (e.g. an ICMP port unreachable), clearing it.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.io.get().take_error()
    }
}

impl AsRawFd for UdpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.io.get().as_raw_fd()
    }
}

impl AsFd for UdpSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.get().as_fd()
    }
}

/// Bytes per receive slot: with UDP GRO the kernel hands over up to 64 KiB
/// of coalesced datagrams at once, and a smaller slot would truncate them.
const SLOT: usize = 64 * 1024;
/// Receive slots per `recvmmsg` call.
const SLOTS: usize = 8;
/// Most payload bytes in one segmented send (an IP datagram's 64 KiB less
/// headers, rounded down).
pub(crate) const MAX_SEGMENTED: usize = 65_000;

/// Many datagrams per system call on one [`UdpSocket`], through quinn-udp:
/// `recvmmsg` with UDP GRO and `sendmsg` with UDP GSO on Linux, one datagram
/// per call where the OS has neither. Creating it switches GRO on for the
/// socket, so from then on every receive must go through [`Batch::recv`]
/// (a plain `recv_from` could get several datagrams glued together).
pub(crate) struct Batch {
    state: quinn_udp::UdpSocketState,
}

/// Where [`Batch::recv`] puts what it receives (512 KiB).
pub(crate) struct RecvBuf {
    buf: Vec<u8>,
    meta: Vec<quinn_udp::RecvMeta>,
    count: usize,
}

impl RecvBuf {
    pub(crate) fn new() -> RecvBuf {
        RecvBuf {
            buf: vec![0; SLOT * SLOTS],
            meta: vec![quinn_udp::RecvMeta::default(); SLOTS],
            count: 0,
        }
    }

    /// The datagrams of the last [`Batch::recv`], in arrival order.
    pub(crate) fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.meta[..self.count]
            .iter()
            .enumerate()
            .flat_map(move |(i, m)| {
                let data = &self.buf[i * SLOT..i * SLOT + m.len.min(SLOT)];
                data.chunks(m.stride.max(1)).map(move |d| (m.addr, d))
            })
    }
}

impl Batch {
    /// Sets the socket up for batched IO. Keeps the kernel's default path
    /// MTU handling (quinn-udp would set "don't fragment, ignore path MTU",
    /// which silently black-holes full-size packets on paths with a smaller
    /// MTU, such as many VPNs).
    pub(crate) fn new(socket: &UdpSocket) -> io::Result<Batch> {
        let io = socket.io.get();
        let state = quinn_udp::UdpSocketState::new(io.into())?;
        set_pmtu_default(&socket2::SockRef::from(io), socket.local_addr()?.is_ipv4());
        drop_ancillary_data(&socket2::SockRef::from(io));
        Ok(Batch { state })
    }

    /// Most datagrams one [`Batch::send`] may carry.
    pub(crate) fn max_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Receives what is queued into `into`, without waiting (`WouldBlock`
    /// if nothing is). Read the datagrams with [`RecvBuf::datagrams`].
    pub(crate) fn recv(&self, socket: &UdpSocket, into: &mut RecvBuf) -> io::Result<()> {
        into.count = 0;
        let mut chunks = into.buf.chunks_mut(SLOT);
        let mut iovs: [io::IoSliceMut<'_>; SLOTS] =
            std::array::from_fn(|_| io::IoSliceMut::new(chunks.next().unwrap_or_default()));
        let meta = &mut into.meta[..];
        // Fewer datagrams than slots: the queue was empty (or an error is
        // pending, which the kernel reports on the next call, which the next
        // arrival triggers).
        let n = socket.io.try_io_with(
            Direction::Read,
            |s| self.state.recv(s.into(), &mut iovs, meta),
            |&n| n < SLOTS,
        )?;
        into.count = n;
        Ok(())
    }

    /// Sends `data` to `to`, waiting while the send buffer is full. With
    /// `segment`, `data` is several datagrams of that size (the last may be
    /// shorter) sent in one call; at most [`Batch::max_segments`] of them
    /// and [`MAX_SEGMENTED`] bytes in all.
    pub(crate) fn send(
        &self,
        socket: &UdpSocket,
        to: SocketAddr,
        data: &[u8],
        segment: Option<usize>,
    ) -> io::Result<()> {
        let segment = segment.filter(|&s| s < data.len());
        if segment.is_none() {
            // One datagram: a plain sendto, without the control message
            // quinn-udp always attaches (cheaper for the kernel).
            return socket.send_to(data, to).map(drop);
        }
        let t = quinn_udp::Transmit {
            destination: to,
            ecn: None,
            contents: data,
            segment_size: segment,
            src_ip: None,
        };
        socket
            .io
            .do_io(Direction::Write, socket.write_timeout.get(), |s| {
                self.state.try_send(s.into(), &t)
            })
    }
}

/// Turns off the per-datagram ancillary data quinn-udp asks for (receive
/// timestamps, destination address, TOS): nothing here reads it, and each
/// costs the kernel work per datagram.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn drop_ancillary_data(sock: &socket2::SockRef<'_>) {
    let opts = [
        (libc::SOL_SOCKET, libc::SO_TIMESTAMPNS),
        (libc::IPPROTO_IP, libc::IP_PKTINFO),
        (libc::IPPROTO_IP, libc::IP_RECVTOS),
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO),
        (libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS),
    ];
    for (level, name) in opts {
        // An option the socket's family lacks fails harmlessly.
        let _ = set_int_option(sock, level, name, 0);
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn drop_ancillary_data(_sock: &socket2::SockRef<'_>) {}

/// `setsockopt` with a C int value.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_int_option(
    sock: &socket2::SockRef<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `sock` is a live socket for the call; the kernel reads a
    // c_int through a pointer and length that describe `value`.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Restores the kernel's default path MTU discovery on `sock` (quinn-udp
/// sets it only on Linux).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_pmtu_default(sock: &socket2::SockRef<'_>, v4: bool) {
    let mut opts = vec![(
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_WANT,
    )];
    if !v4 {
        opts.push((
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_WANT,
        ));
    }
    for (level, name, value) in opts {
        if let Err(e) = set_int_option(sock, level, name, value) {
            log::debug!("udp: restoring path MTU discovery failed: {e}");
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn set_pmtu_default(_sock: &socket2::SockRef<'_>, _v4: bool) {}
