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
            io: IoSource::new(mio::net::UdpSocket::from_std(s)),
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
    /// woken by anyone, or `deadline` passes (then `TimedOut`). May return
    /// spuriously; the caller drains with `try_recv_from` until `WouldBlock`
    /// before waiting again (readiness is edge-triggered).
    pub(crate) fn wait_readable(&self, deadline: Option<std::time::Instant>) -> io::Result<()> {
        self.io.wait(Direction::Read, deadline)
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
