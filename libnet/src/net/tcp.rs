//! TCP sockets that block the calling coroutine, not the thread.

use std::cell::Cell;
use std::fmt;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use crate::runtime::io::IoSource;
use crate::runtime::reactor::Direction;

use super::{bind_error, each_addr};

/// A TCP connection. Implements [`Read`] and [`Write`] (also for
/// `&TcpStream`), so `read_exact`, `write_all` and `BufReader` work as with
/// std. Reads and writes park only the calling coroutine.
///
/// It belongs to the thread that created it; to hand a connection to another
/// loop, convert it with [`TcpStream::into_std`] and back with
/// [`TcpStream::from_std`] there.
pub struct TcpStream {
    io: IoSource<mio::net::TcpStream>,
    read_timeout: Cell<Option<Duration>>,
    write_timeout: Cell<Option<Duration>>,
}

impl fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpStream")
            .field("local", &self.local_addr().ok())
            .field("peer", &self.peer_addr().ok())
            .finish()
    }
}

impl TcpStream {
    pub(crate) fn from_mio(s: mio::net::TcpStream) -> TcpStream {
        TcpStream {
            io: IoSource::new(s),
            read_timeout: Cell::new(None),
            write_timeout: Cell::new(None),
        }
    }

    /// Connects to the first address of `addr` that accepts, like std.
    /// (Name resolution, if `addr` is a host name, blocks the thread.)
    pub fn connect(addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
        each_addr(addr, |a| TcpStream::connect_timeout_opt(&a, None))
    }

    /// Connects to `addr`, failing with `TimedOut` after `timeout`.
    pub fn connect_timeout(addr: &SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        TcpStream::connect_timeout_opt(addr, Some(timeout))
    }

    fn connect_timeout_opt(addr: &SocketAddr, timeout: Option<Duration>) -> io::Result<TcpStream> {
        let s = TcpStream::from_mio(mio::net::TcpStream::connect(*addr)?);
        s.finish_connect(timeout)?;
        Ok(s)
    }

    /// Waits until a non-blocking connect in progress completes.
    pub(crate) fn finish_connect(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.io.do_io(Direction::Write, timeout, |s| {
            if let Some(e) = s.take_error()? {
                return Err(e);
            }
            match s.peer_addr() {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    Err(io::ErrorKind::WouldBlock.into())
                }
                Err(e) => Err(e),
            }
        })
    }

    /// Wraps a connected std stream (switching it to non-blocking mode).
    pub fn from_std(s: std::net::TcpStream) -> io::Result<TcpStream> {
        s.set_nonblocking(true)?;
        Ok(TcpStream::from_mio(mio::net::TcpStream::from_std(s)))
    }

    /// Unwraps into a std stream in blocking mode, e.g. to move it to another loop.
    pub fn into_std(self) -> io::Result<std::net::TcpStream> {
        let s: std::net::TcpStream = self.io.into_inner().into();
        s.set_nonblocking(false)?;
        Ok(s)
    }

    /// Address of the remote end.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.io.get().peer_addr()
    }

    /// Address of the local end.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.get().local_addr()
    }

    /// Shuts down the read half, the write half, or both.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.io.get().shutdown(how)
    }

    /// Sets TCP_NODELAY (disables Nagle's algorithm).
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.io.get().set_nodelay(nodelay)
    }

    /// Whether TCP_NODELAY is set.
    pub fn nodelay(&self) -> io::Result<bool> {
        self.io.get().nodelay()
    }

    /// Sets the IP TTL of outgoing packets.
    pub fn set_ttl(&self, ttl: u32) -> io::Result<()> {
        self.io.get().set_ttl(ttl)
    }

    /// Reads the pending socket error, clearing it.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.io.get().take_error()
    }

    /// How long a read may wait before failing with `TimedOut`; `None` waits forever.
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        check_timeout(t)?;
        self.read_timeout.set(t);
        Ok(())
    }

    /// How long a write may wait before failing with `TimedOut`; `None` waits forever.
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        check_timeout(t)?;
        self.write_timeout.set(t);
        Ok(())
    }

    /// The read timeout.
    pub fn read_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(self.read_timeout.get())
    }

    /// The write timeout.
    pub fn write_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(self.write_timeout.get())
    }

    /// Reads without consuming, waiting for data like `read`.
    pub fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.io
            .do_io(Direction::Read, self.read_timeout.get(), |s| s.peek(buf))
    }

    fn read_impl(&self, buf: &mut [u8]) -> io::Result<usize> {
        let len = buf.len();
        self.io
            .do_io_stream(Direction::Read, self.read_timeout.get(), len, |mut s| {
                s.read(buf)
            })
    }

    fn read_vectored_impl(&self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        self.io
            .do_io(Direction::Read, self.read_timeout.get(), |mut s| {
                s.read_vectored(bufs)
            })
    }

    fn write_impl(&self, buf: &[u8]) -> io::Result<usize> {
        self.io.do_io_stream(
            Direction::Write,
            self.write_timeout.get(),
            buf.len(),
            |mut s| s.write(buf),
        )
    }

    fn write_vectored_impl(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.io
            .do_io(Direction::Write, self.write_timeout.get(), |mut s| {
                s.write_vectored(bufs)
            })
    }
}

/// Rejects a zero timeout, as std does.
pub(crate) fn check_timeout(t: Option<Duration>) -> io::Result<()> {
    if t == Some(Duration::ZERO) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cannot set a 0 duration timeout",
        ));
    }
    Ok(())
}

impl Read for TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_impl(buf)
    }
    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        self.read_vectored_impl(bufs)
    }
}

impl Read for &TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_impl(buf)
    }
    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        self.read_vectored_impl(bufs)
    }
}

impl Write for TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_impl(buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.write_vectored_impl(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for &TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_impl(buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.write_vectored_impl(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for TcpStream {
    fn as_raw_fd(&self) -> RawFd {
        self.io.get().as_raw_fd()
    }
}

impl AsFd for TcpStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.get().as_fd()
    }
}

/// A TCP socket listening for connections.
pub struct TcpListener {
    io: IoSource<mio::net::TcpListener>,
    accept_timeout: Cell<Option<Duration>>,
}

impl fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpListener")
            .field("local", &self.local_addr().ok())
            .finish()
    }
}

impl TcpListener {
    /// Binds like `std::net::TcpListener::bind` (same options, same
    /// backlog); for other options use [`super::SocketBuilder`]. A port in use
    /// fails with `AddrInUse` and a message naming the address.
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
        each_addr(addr, |a| {
            let l = std::net::TcpListener::bind(a).map_err(|e| bind_error(e, "TCP", a))?;
            TcpListener::from_std(l)
        })
    }

    /// Wraps a bound std listener (switching it to non-blocking mode).
    pub fn from_std(l: std::net::TcpListener) -> io::Result<TcpListener> {
        l.set_nonblocking(true)?;
        Ok(TcpListener {
            io: IoSource::new(mio::net::TcpListener::from_std(l)),
            accept_timeout: Cell::new(None),
        })
    }

    /// Unwraps into a std listener in blocking mode.
    pub fn into_std(self) -> io::Result<std::net::TcpListener> {
        let l: std::net::TcpListener = self.io.into_inner().into();
        l.set_nonblocking(false)?;
        Ok(l)
    }

    /// Waits for a connection.
    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (s, a) = self.accept_mio()?;
        Ok((TcpStream::from_mio(s), a))
    }

    /// Waits for a connection and returns it as a std stream (blocking
    /// mode off), ready to be sent to another loop.
    pub fn accept_std(&self) -> io::Result<(std::net::TcpStream, SocketAddr)> {
        let (s, a) = self.accept_mio()?;
        Ok((s.into(), a))
    }

    fn accept_mio(&self) -> io::Result<(mio::net::TcpStream, SocketAddr)> {
        self.io
            .do_io(Direction::Read, self.accept_timeout.get(), |l| l.accept())
    }

    /// How long `accept` may wait before failing with `TimedOut`.
    pub fn set_accept_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        check_timeout(t)?;
        self.accept_timeout.set(t);
        Ok(())
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.get().local_addr()
    }

    /// Sets the IP TTL of accepted connections' packets.
    pub fn set_ttl(&self, ttl: u32) -> io::Result<()> {
        self.io.get().set_ttl(ttl)
    }

    /// Reads the pending socket error, clearing it.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.io.get().take_error()
    }
}

impl AsRawFd for TcpListener {
    fn as_raw_fd(&self) -> RawFd {
        self.io.get().as_raw_fd()
    }
}

impl AsFd for TcpListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.get().as_fd()
    }
}
