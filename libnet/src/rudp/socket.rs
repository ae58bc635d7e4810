//! The coroutine driver: [`RudpSocket`] runs a [`proto::Endpoint`] on one
//! libnet [`UdpSocket`] and gives each connection a blocking-style API.
//!
//! One driver coroutine per socket does all the receiving and the timing:
//!
//! ```text
//! loop {
//!     drain the socket (try_recv_from until WouldBlock) -> endpoint.handle_datagram
//!     endpoint.handle_timeout(now) when due
//!     send every endpoint.poll_transmit()
//!     dispatch endpoint.poll_event() -> wake the coroutines waiting for it
//!     park until: the socket is readable | a coroutine kicks us | poll_timeout()
//! }
//! ```
//!
//! Application coroutines call into the endpoint directly (send, recv,
//! close), transmit what that produced themselves (so a message leaves
//! without a context switch), and wake the driver when it has to act: to
//! dispatch events, or because the endpoint's deadline moved earlier than
//! the one it sleeps until (`send` and `recv` check; the rest always wakes
//! it). Everything lives on the loop that created the socket (`Rc`).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::proto::{self, CloseReason, Config, ConnId, Endpoint, Event, IdMap};
use crate::net::udp::{Batch, RecvBuf, MAX_SEGMENTED};
use crate::net::{SocketBuilder, UdpSocket};
use crate::runtime::{park_current, LocalWaker};
use crate::time::{clock_now, deadline_after};

/// Most receive calls (each up to 8 × 64 KiB) the driver makes in one go
/// before letting others run.
const RECV_BATCH: usize = 32;
/// Largest batch (datagrams) whose ACKs wait for the woken readers' replies.
const PIGGYBACK_BATCH: usize = 4;
/// Raw datagrams kept for `recv_raw` before the oldest are dropped.
const RAW_QUEUE: usize = 1024;
/// Incoming connections kept for `accept` before new ones are aborted.
const ACCEPT_QUEUE: usize = 1024;
/// UDP socket buffer sizes: bursts of a full KCP window must not overflow
/// in the kernel (the default 208 KiB does at 1024 packets).
const SOCKET_BUFFER: usize = 4 << 20;

/// Per-connection state the driver keeps for the application side.
#[derive(Default)]
struct ConnState {
    /// Coroutine waiting in `recv`.
    reader: Option<LocalWaker>,
    /// Coroutine waiting in `send` for queue space.
    writer: Option<LocalWaker>,
    /// Coroutine waiting in `connect`.
    connecting: Option<LocalWaker>,
    /// Set once the handshake completed.
    connected: bool,
    /// Set once the connection ended (or failed to start), with why.
    closed: Option<CloseReason>,
}

/// What the socket and its connections share.
struct Shared {
    /// The one UDP socket.
    socket: UdpSocket,
    /// Batched IO on it (GSO/GRO where the kernel has them).
    batch: Batch,
    /// Scratch space `transmit` glues datagrams together in.
    gso_buf: Cell<Vec<u8>>,
    /// The protocol state machine.
    ep: RefCell<Endpoint>,
    /// Application-side state per connection.
    conns: RefCell<IdMap<ConnId, ConnState>>,
    /// Accepted connections not yet taken by `accept`.
    accepted: RefCell<VecDeque<(ConnId, SocketAddr)>>,
    /// Coroutine waiting in `accept`.
    acceptor: RefCell<Option<LocalWaker>>,
    /// Raw datagrams not yet taken by `recv_raw`.
    raw: RefCell<VecDeque<(SocketAddr, Vec<u8>)>>,
    /// Coroutine waiting in `recv_raw`.
    raw_reader: RefCell<Option<LocalWaker>>,
    /// Raw datagrams dropped because `raw` was full.
    raw_dropped: Cell<u64>,
    /// The driver coroutine while it is parked, and the endpoint deadline
    /// it parked until.
    driver: RefCell<Option<(LocalWaker, Option<Instant>)>>,
    /// Live handles (socket + connections); the driver stops at zero.
    handles: Cell<usize>,
    /// Set when the driver has stopped (socket error or no handles left).
    stopped: Cell<bool>,
    /// Largest message the endpoint accepts (from its config).
    max_message: usize,
}

impl Shared {
    /// Sends everything the endpoint has queued. Runs of datagrams to one
    /// destination with one size (the last may be shorter) leave in one
    /// segmented send. Errors are logged: UDP is lossy anyway and KCP
    /// retransmits.
    fn transmit(&self) {
        let mut buf = self.gso_buf.take();
        let max_segs = self.batch.max_segments();
        // The run being glued: destination, segment size, segment count.
        let mut run: Option<(SocketAddr, usize, usize)> = None;
        loop {
            let t = self.ep.borrow_mut().poll_transmit();
            if let (Some((to, size, n)), Some(t)) = (&mut run, &t) {
                let len = t.data.len();
                let last_full = buf.len() == *n * *size;
                if t.to == *to
                    && len <= *size
                    && last_full
                    && *n < max_segs
                    && buf.len() + len <= MAX_SEGMENTED
                {
                    buf.extend_from_slice(&t.data);
                    *n += 1;
                    continue;
                }
            }
            if let Some((to, size, n)) = run.take() {
                let segment = (n > 1).then_some(size);
                if let Err(e) = self.batch.send(&self.socket, to, &buf, segment) {
                    log::debug!("rudp: send to {to} failed: {e}");
                }
                buf.clear();
            }
            let Some(t) = t else { break };
            buf.extend_from_slice(&t.data);
            run = Some((t.to, t.data.len(), 1));
        }
        self.gso_buf.set(buf);
    }

    /// Wakes the driver so it picks up new deadlines and events.
    fn kick(&self) {
        if let Some((w, _)) = self.driver.borrow_mut().take() {
            w.wake();
        }
    }

    /// Wakes the driver only if it has something to do that it would miss
    /// otherwise: events to dispatch, or an endpoint deadline earlier than
    /// the one it sleeps until. For calls that transmitted what they
    /// produced themselves (`send`, `recv`): in a request/response
    /// exchange this spares the driver a pass per message.
    fn nudge(&self) {
        let mut driver = self.driver.borrow_mut();
        let Some((_, parked_until)) = *driver else {
            return;
        };
        let ep = self.ep.borrow();
        let earlier = match (ep.poll_timeout(), parked_until) {
            (Some(due), Some(until)) => due < until,
            (due, until) => due.is_some() && until.is_none(),
        };
        if earlier || ep.has_events() {
            drop(ep);
            if let Some((w, _)) = driver.take() {
                w.wake();
            }
        }
    }

    /// Dispatches every pending endpoint event to whoever waits for it.
    /// Returns whether it woke a reader.
    fn dispatch(&self) -> bool {
        let mut woke_reader = false;
        loop {
            let ev = self.ep.borrow_mut().poll_event();
            let Some(ev) = ev else { return woke_reader };
            match ev {
                Event::Connected(id) => {
                    let mut conns = self.conns.borrow_mut();
                    let c = conns.entry(id).or_default();
                    c.connected = true;
                    wake(&mut c.connecting);
                }
                Event::ConnectFailed(id, why) => {
                    let mut conns = self.conns.borrow_mut();
                    let c = conns.entry(id).or_default();
                    c.closed = Some(why);
                    wake(&mut c.connecting);
                }
                Event::Incoming(id, from) => {
                    let mut accepted = self.accepted.borrow_mut();
                    if accepted.len() >= ACCEPT_QUEUE {
                        drop(accepted);
                        log::warn!("rudp: accept queue full, aborting connection from {from}");
                        self.ep.borrow_mut().abort(id, clock_now());
                        continue;
                    }
                    accepted.push_back((id, from));
                    self.conns.borrow_mut().insert(
                        id,
                        ConnState {
                            connected: true,
                            ..ConnState::default()
                        },
                    );
                    if let Some(w) = self.acceptor.borrow_mut().take() {
                        w.wake();
                    }
                }
                Event::Readable(id) => {
                    if let Some(c) = self.conns.borrow_mut().get_mut(&id) {
                        woke_reader |= c.reader.is_some();
                        wake(&mut c.reader);
                    }
                }
                Event::Writable(id) => {
                    if let Some(c) = self.conns.borrow_mut().get_mut(&id) {
                        wake(&mut c.writer);
                    }
                }
                Event::Closed(id, why) => {
                    if let Some(c) = self.conns.borrow_mut().get_mut(&id) {
                        c.closed = Some(why);
                        wake(&mut c.reader);
                        wake(&mut c.writer);
                        wake(&mut c.connecting);
                    }
                }
                Event::Raw(from, data) => {
                    let mut raw = self.raw.borrow_mut();
                    if raw.len() >= RAW_QUEUE {
                        raw.pop_front();
                        self.raw_dropped.set(self.raw_dropped.get() + 1);
                    }
                    raw.push_back((from, data));
                    drop(raw);
                    if let Some(w) = self.raw_reader.borrow_mut().take() {
                        w.wake();
                    }
                }
            }
        }
    }

    /// Takes another handle on the socket.
    fn acquire(self: &Rc<Self>) -> Rc<Shared> {
        self.handles.set(self.handles.get() + 1);
        self.clone()
    }

    /// Gives a handle back; the last one stops the driver.
    fn release(&self) {
        let n = self.handles.get().saturating_sub(1);
        self.handles.set(n);
        if n == 0 {
            self.kick();
        }
    }

    /// Fails once the driver is gone.
    fn check_running(&self) -> io::Result<()> {
        if self.stopped.get() {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "rudp: the socket's driver has stopped",
            ));
        }
        Ok(())
    }
}

fn wake(slot: &mut Option<LocalWaker>) {
    if let Some(w) = slot.take() {
        w.wake();
    }
}

/// Ends the endpoint's batch and sends what that produced: in
/// [`EndBatch::finish`], or when dropped unfinished (an unwind).
struct EndBatch<'a> {
    shared: &'a Shared,
    done: bool,
}

impl EndBatch<'_> {
    /// Ends the batch now; returns the time it used, for the caller to
    /// reuse (one clock read fewer per wake-up).
    fn finish(mut self) -> Instant {
        self.done = true;
        let now = clock_now();
        self.shared.ep.borrow_mut().end_batch(now);
        self.shared.transmit();
        now
    }
}

impl Drop for EndBatch<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.shared.ep.borrow_mut().end_batch(clock_now());
            self.shared.transmit();
        }
    }
}

/// The driver coroutine (see the module docs).
fn drive(shared: Rc<Shared>) {
    let mut buf = RecvBuf::new();
    loop {
        let mut drained = true;
        let mut received = 0usize;
        // One batch: every datagram is input first, each connection is
        // flushed once at the end (see `Endpoint::begin_batch`).
        shared.ep.borrow_mut().begin_batch();
        for i in 0..=RECV_BATCH {
            if i == RECV_BATCH {
                drained = false;
                break;
            }
            match shared.batch.recv(&shared.socket, &mut buf) {
                Ok(()) => {
                    let now = clock_now();
                    let mut ep = shared.ep.borrow_mut();
                    for (from, data) in buf.datagrams() {
                        ep.handle_datagram(from, data, now);
                        received += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // ICMP errors (port unreachable) surface here on Linux: not fatal.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(e) => {
                    log::debug!("rudp: receive failed: {e}");
                    break;
                }
            }
        }
        // After a small batch (requests, not a bulk stream, whose sender
        // waits for the ACKs), readers woken by it run before it is
        // flushed, so a reply they send carries the batch's ACKs: one packet
        // instead of two per request. The guard flushes in any case, also when the runtime
        // unwinds the driver at shutdown while it yields here (an
        // application that reads its last bytes and exits must still ACK
        // them, or the peer's close never completes).
        let flush = EndBatch {
            shared: &shared,
            done: false,
        };
        if shared.dispatch() && received <= PIGGYBACK_BATCH {
            crate::yield_now();
        }
        let now = flush.finish();
        let due = shared.ep.borrow().poll_timeout();
        if due.is_some_and(|d| d <= now) {
            shared.ep.borrow_mut().handle_timeout(now);
        }
        shared.transmit();
        shared.dispatch();
        if shared.handles.get() == 0 || crate::runtime::is_stopping() {
            break;
        }
        if !drained {
            crate::yield_now();
            continue;
        }
        // Park: socket readable, kicked, or the endpoint's next deadline.
        // Timers due at `now` ran above; one that fell due since is
        // picked up on the next pass (the wait then ends at once).
        let deadline = shared.ep.borrow().poll_timeout();
        match LocalWaker::current() {
            Ok(w) => *shared.driver.borrow_mut() = Some((w, deadline)),
            Err(_) => break,
        }
        match shared.socket.wait_readable(deadline) {
            Ok(()) => {}
            Err(e) => {
                log::debug!("rudp: driver stops: {e}");
                break;
            }
        }
        shared.driver.borrow_mut().take();
    }
    shared.stopped.set(true);
    // Wake everyone so they see the stop instead of waiting forever.
    for c in shared.conns.borrow_mut().values_mut() {
        wake(&mut c.reader);
        wake(&mut c.writer);
        wake(&mut c.connecting);
    }
    if let Some(w) = shared.acceptor.borrow_mut().take() {
        w.wake();
    }
    if let Some(w) = shared.raw_reader.borrow_mut().take() {
        w.wake();
    }
}

/// A UDP socket carrying many reliable connections (KCP) plus raw
/// datagrams. Create it inside a coroutine; it and its connections belong to
/// that loop.
pub struct RudpSocket {
    shared: Rc<Shared>,
}

impl fmt::Debug for RudpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RudpSocket")
            .field("local", &self.local_addr().ok())
            .field("connections", &self.connection_count())
            .finish()
    }
}

impl RudpSocket {
    /// Binds a UDP socket on `addr` (with 4 MiB buffers) and starts its driver.
    pub fn bind(addr: SocketAddr, config: Config) -> io::Result<RudpSocket> {
        let socket = SocketBuilder::new()
            .recv_buffer_size(SOCKET_BUFFER)
            .send_buffer_size(SOCKET_BUFFER)
            .bind_udp(addr)?;
        RudpSocket::from_socket(socket, config)
    }

    /// Runs the protocol on an existing socket (e.g. one bound with
    /// `SO_REUSEPORT` for hole punching).
    pub fn from_socket(socket: UdpSocket, config: Config) -> io::Result<RudpSocket> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let seed = crate::rand::random_u64();
        let batch = Batch::new(&socket)?;
        let max_message = config.max_message;
        let shared = Rc::new(Shared {
            socket,
            batch,
            gso_buf: Cell::new(Vec::new()),
            ep: RefCell::new(Endpoint::new(config, seed, clock_now())),
            conns: RefCell::new(IdMap::default()),
            accepted: RefCell::new(VecDeque::new()),
            acceptor: RefCell::new(None),
            raw: RefCell::new(VecDeque::new()),
            raw_reader: RefCell::new(None),
            raw_dropped: Cell::new(0),
            driver: RefCell::new(None),
            handles: Cell::new(1),
            stopped: Cell::new(false),
            max_message,
        });
        let driver = shared.clone();
        drop(crate::spawn(move || drive(driver)));
        Ok(RudpSocket { shared })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.shared.socket.local_addr()
    }

    /// Opens a connection to `remote`, waiting for the handshake (which
    /// gives up after the configured handshake timeout).
    pub fn connect(&self, remote: SocketAddr) -> io::Result<RudpConnection> {
        let sh = &self.shared;
        sh.check_running()?;
        let id = sh.ep.borrow_mut().connect(remote, clock_now())?;
        sh.conns.borrow_mut().insert(id, ConnState::default());
        let conn = RudpConnection::new(sh.acquire(), id, remote);
        sh.transmit();
        sh.kick();
        loop {
            {
                let mut conns = sh.conns.borrow_mut();
                let c = conns.entry(id).or_default();
                if c.connected {
                    return Ok(conn);
                }
                if let Some(why) = c.closed {
                    return Err(close_error(why, "connect"));
                }
                sh.check_running()?;
                c.connecting = Some(LocalWaker::current()?);
            }
            park_current(None)?;
        }
    }

    /// Waits for a peer to connect.
    pub fn accept(&self) -> io::Result<(RudpConnection, SocketAddr)> {
        self.accept_timeout(None)
    }

    /// Waits for a peer to connect, up to `timeout` (`None`: forever);
    /// `TimedOut` after that.
    pub fn accept_timeout(
        &self,
        timeout: Option<Duration>,
    ) -> io::Result<(RudpConnection, SocketAddr)> {
        let sh = &self.shared;
        let deadline = timeout.map(deadline_after);
        loop {
            if let Some((id, from)) = sh.accepted.borrow_mut().pop_front() {
                return Ok((RudpConnection::new(sh.acquire(), id, from), from));
            }
            sh.check_running()?;
            if deadline.is_some_and(|d| clock_now() >= d) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "rudp: no connection arrived in time",
                ));
            }
            *sh.acceptor.borrow_mut() = Some(LocalWaker::current()?);
            park_current(deadline)?;
        }
    }

    /// Sends a raw datagram beside the connections, from the same socket
    /// (hence the same NAT mapping); the other side gets it from `recv_raw`.
    pub fn send_raw(&self, to: SocketAddr, data: &[u8]) -> io::Result<()> {
        self.shared.ep.borrow_mut().send_raw(to, data)?;
        self.shared.transmit();
        Ok(())
    }

    /// Sends a datagram of the foreign protocol (`Config::foreign_magic`,
    /// e.g. P2P wire frames) as it is, from the same socket: for plain UDP
    /// peers such as a tracker. Foreign datagrams that arrive come out of
    /// `recv_raw` whole.
    pub fn send_foreign(&self, to: SocketAddr, data: &[u8]) -> io::Result<()> {
        self.shared.ep.borrow_mut().send_foreign(to, data)?;
        self.shared.transmit();
        Ok(())
    }

    /// Waits for the next raw datagram, up to `timeout` (`None`: forever).
    pub fn recv_raw(&self, timeout: Option<Duration>) -> io::Result<(SocketAddr, Vec<u8>)> {
        let sh = &self.shared;
        let deadline = timeout.map(deadline_after);
        loop {
            if let Some(d) = sh.raw.borrow_mut().pop_front() {
                return Ok(d);
            }
            sh.check_running()?;
            if deadline.is_some_and(|d| clock_now() >= d) {
                return Err(crate::runtime::io::timed_out());
            }
            *sh.raw_reader.borrow_mut() = Some(LocalWaker::current()?);
            park_current(deadline)?;
        }
    }

    /// Raw datagrams dropped because nobody took them in time.
    pub fn raw_dropped(&self) -> u64 {
        self.shared.raw_dropped.get()
    }

    /// Live connections on this socket.
    pub fn connection_count(&self) -> usize {
        self.shared.ep.borrow().connection_count()
    }

    /// Counters of datagrams the endpoint dropped, by cause.
    pub fn endpoint_stats(&self) -> proto::EndpointStats {
        self.shared.ep.borrow().endpoint_stats()
    }
}

impl Drop for RudpSocket {
    fn drop(&mut self) {
        self.shared.release();
    }
}

/// A reliable connection: whole messages in order, with back-pressure.
/// [`RudpConnection::stream`] turns it into a byte stream.
pub struct RudpConnection {
    shared: Rc<Shared>,
    id: ConnId,
    remote: SocketAddr,
    read_timeout: Cell<Option<Duration>>,
    write_timeout: Cell<Option<Duration>>,
}

impl fmt::Debug for RudpConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RudpConnection")
            .field("id", &self.id)
            .field("remote", &self.remote)
            .finish()
    }
}

/// The error a call gets once its connection has ended.
fn close_error(why: CloseReason, what: &str) -> io::Error {
    let kind = match why {
        CloseReason::TimedOut => io::ErrorKind::TimedOut,
        CloseReason::Refused => io::ErrorKind::ConnectionRefused,
        CloseReason::Aborted => io::ErrorKind::ConnectionReset,
        CloseReason::Closed | CloseReason::LocalClose | CloseReason::LocalAbort => {
            io::ErrorKind::NotConnected
        }
    };
    io::Error::new(kind, format!("rudp {what}: connection {why:?}"))
}

impl RudpConnection {
    fn new(shared: Rc<Shared>, id: ConnId, remote: SocketAddr) -> RudpConnection {
        RudpConnection {
            shared,
            id,
            remote,
            read_timeout: Cell::new(None),
            write_timeout: Cell::new(None),
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.remote
    }

    /// How long `recv` may wait before failing with `TimedOut`.
    pub fn set_read_timeout(&self, t: Option<Duration>) {
        self.read_timeout.set(t);
    }

    /// How long `send` may wait for queue space before failing with `TimedOut`.
    pub fn set_write_timeout(&self, t: Option<Duration>) {
        self.write_timeout.set(t);
    }

    fn closed(&self) -> Option<CloseReason> {
        self.shared
            .conns
            .borrow()
            .get(&self.id)
            .and_then(|c| c.closed)
    }

    /// Sends one whole message, parking while the connection's send queue
    /// is full (a slow peer slows only this connection's writers).
    pub fn send(&self, msg: &[u8]) -> io::Result<()> {
        let sh = &self.shared;
        let deadline = self.write_timeout.get().map(deadline_after);
        loop {
            if let Some(why) = self.closed() {
                return Err(close_error(why, "send"));
            }
            sh.check_running()?;
            let r = sh.ep.borrow_mut().send(self.id, msg, clock_now());
            match r {
                Ok(()) => {
                    sh.transmit();
                    sh.nudge();
                    return Ok(());
                }
                Err(proto::Error::WouldBlock) => {}
                Err(e) => return Err(e.into()),
            }
            if deadline.is_some_and(|d| clock_now() >= d) {
                return Err(crate::runtime::io::timed_out());
            }
            if let Some(c) = sh.conns.borrow_mut().get_mut(&self.id) {
                c.writer = Some(LocalWaker::current()?);
            }
            sh.kick();
            park_current(deadline)?;
        }
    }

    /// Receives the next whole message. `Ok(None)` once the peer closed in
    /// order and everything was read; an error if it aborted or timed out.
    pub fn recv(&self) -> io::Result<Option<Vec<u8>>> {
        let sh = &self.shared;
        let deadline = self.read_timeout.get().map(deadline_after);
        loop {
            let r = sh.ep.borrow_mut().recv(self.id);
            match r {
                Ok(Some(m)) => {
                    // Taking data may have reopened the receive window,
                    // which the endpoint announced at once: send that.
                    sh.transmit();
                    sh.nudge();
                    return Ok(Some(m));
                }
                Ok(None) => {}
                Err(proto::Error::Closed) | Err(proto::Error::UnknownConnection) => {
                    return match self.closed() {
                        Some(CloseReason::Closed) | Some(CloseReason::LocalClose) | None => {
                            Ok(None)
                        }
                        Some(why) => Err(close_error(why, "recv")),
                    };
                }
                Err(e) => return Err(e.into()),
            }
            match self.closed() {
                Some(CloseReason::Closed) | Some(CloseReason::LocalClose) => return Ok(None),
                Some(why) => return Err(close_error(why, "recv")),
                None => {}
            }
            sh.check_running()?;
            if deadline.is_some_and(|d| clock_now() >= d) {
                return Err(crate::runtime::io::timed_out());
            }
            if let Some(c) = sh.conns.borrow_mut().get_mut(&self.id) {
                c.reader = Some(LocalWaker::current()?);
            }
            park_current(deadline)?;
        }
    }

    /// Closes in order: what was sent is delivered, then the peer sees the end.
    pub fn close(&self) {
        self.shared.ep.borrow_mut().close(self.id, clock_now());
        self.shared.transmit();
        self.shared.kick();
    }

    /// Aborts at once; the peer sees a reset.
    pub fn abort(&self) {
        self.shared.ep.borrow_mut().abort(self.id, clock_now());
        self.shared.transmit();
        self.shared.kick();
    }

    /// RTT, retransmissions, bytes, packets and loss of this connection.
    pub fn stats(&self) -> Option<proto::Stats> {
        self.shared.ep.borrow().stats(self.id)
    }

    /// A byte-stream view (`Read` + `Write`) of this connection.
    pub fn stream(self) -> RudpStream {
        RudpStream {
            conn: self,
            pending: Vec::new(),
            pos: 0,
        }
    }
}

impl Drop for RudpConnection {
    fn drop(&mut self) {
        let sh = &self.shared;
        if self.closed().is_none() && !sh.stopped.get() {
            // Dropping an open connection closes it in order, like a TCP
            // socket: the endpoint keeps it until the close completes.
            self.close();
        } else {
            // Ended: nobody will read what is left, free it now.
            sh.ep.borrow_mut().forget(self.id, clock_now());
            sh.transmit();
        }
        sh.conns.borrow_mut().remove(&self.id);
        sh.release();
    }
}

/// A byte stream over a [`RudpConnection`]: writes are cut into messages,
/// reads hand out message bytes in order.
pub struct RudpStream {
    conn: RudpConnection,
    pending: Vec<u8>,
    pos: usize,
}

impl fmt::Debug for RudpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RudpStream")
            .field("conn", &self.conn)
            .finish()
    }
}

impl RudpStream {
    /// The underlying connection.
    pub fn connection(&self) -> &RudpConnection {
        &self.conn
    }

    /// Largest chunk a single write sends as one message.
    fn chunk(&self) -> usize {
        self.conn.shared.max_message.max(1)
    }
}

impl Read for RudpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.pos >= self.pending.len() {
            match self.conn.recv()? {
                Some(m) => {
                    self.pending = m;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = (self.pending.len() - self.pos).min(buf.len());
        buf[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for RudpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.chunk());
        if n == 0 {
            return Ok(0);
        }
        self.conn.send(&buf[..n])?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
