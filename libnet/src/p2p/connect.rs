//! Connecting to a peer, whatever the NATs: punch through the tracker
//! (the seed's six steps), and where that fails, relay through the edge —
//! transparently to the caller, who can still ask which path it got.
//!
//! ```text
//!  A: connect_peer                     tracker                B: accept_peer
//!  PunchRequest(A→B, token) ───────────►  PunchNotify(A) ──────► (B learns A)
//!        (A learns B) ◄──────── PunchNotify(B) ◄─────── PunchRequest(B→A, token)
//!  punch(B) ◄──────────── probes both ways, on the RUDP sockets ───────► punch(A)
//!  ok: RUDP connect(B's address)  ─────────────────────────────────►  accept
//!  failed: relay::open(edge, token) ──► edge pairs the token ◄── relay::open(edge, token)
//! ```

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use super::client::{peer_addrs, punch, ProbeRouter, TrackerClient};
use super::wire::Message;
use super::{NodeId, NodeInfo, RoomId};
use crate::nat::punch::Config as PunchConfig;
use crate::rudp::{RudpConnection, RudpSocket};
use crate::sync::{oneshot, Sender};

/// Which way a [`PeerConn`] goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Straight to the peer, at this address.
    Direct(SocketAddr),
    /// Through the relay at this address.
    Relayed(SocketAddr),
}

/// A connection to a peer, direct or relayed; send and receive whole
/// messages as on any [`RudpConnection`].
pub struct PeerConn {
    conn: RudpConnection,
    path: Path,
    peer: NodeId,
}

impl PeerConn {
    /// Direct or relayed, and where to.
    pub fn path(&self) -> Path {
        self.path
    }

    /// The peer's identity.
    pub fn peer(&self) -> NodeId {
        self.peer
    }

    /// The underlying RUDP connection (to the peer, or to the relay).
    pub fn connection(&self) -> &RudpConnection {
        &self.conn
    }

    /// Takes the underlying connection.
    pub fn into_connection(self) -> RudpConnection {
        self.conn
    }
}

/// How long each step may take.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Waiting for the tracker to pass on the other peer's addresses.
    pub notify: Duration,
    /// The punch itself.
    pub punch: PunchConfig,
    /// Waiting for the RUDP connection over a punched path (responder).
    pub accept: Duration,
    /// Waiting for the relay to pair us.
    pub relay: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            notify: Duration::from_secs(5),
            punch: PunchConfig::default(),
            accept: Duration::from_secs(5),
            relay: Duration::from_secs(10),
        }
    }
}

/// Connects to node `to` in `room` (we are `me`): asks the tracker to
/// introduce us, punches, and falls back to `relay` (the edge's RUDP
/// address) when punching fails. `sock` must use [`super::rudp_config`].
pub fn connect_peer(
    sock: &RudpSocket,
    tracker: &TrackerClient,
    me: NodeId,
    to: NodeId,
    room: RoomId,
    relay: Option<SocketAddr>,
    opts: Options,
) -> io::Result<PeerConn> {
    let token = crate::rand::random_u64();
    tracker.punch_request(me, to, room, token)?;
    let peer = wait_notify(tracker, token, opts.notify)?;
    match punch(sock, me, peer_addrs(&peer), token, opts.punch) {
        Ok(addr) => Ok(PeerConn {
            conn: sock.connect(addr)?,
            path: Path::Direct(addr),
            peer: to,
        }),
        Err(e) => relayed(sock, relay, room, to, token, opts, e),
    }
}

/// Answers a `PunchNotify { peer, token }` from the tracker: asks the
/// tracker to introduce us back, punches, accepts the peer's connection,
/// or meets it at `relay` when punching fails.
pub fn accept_peer(
    sock: &RudpSocket,
    tracker: &TrackerClient,
    me: NodeId,
    peer: &NodeInfo,
    token: u64,
    relay: Option<SocketAddr>,
    opts: Options,
) -> io::Result<PeerConn> {
    tracker.punch_request(me, peer.id, peer.room, token)?;
    let punched = punch(sock, me, peer_addrs(peer), token, opts.punch);
    accept_punched(sock, punched, peer, token, relay, opts)
}

/// The answering side once the punch has run: accepts the peer's
/// connection over the punched path, or meets it at `relay`.
fn accept_punched(
    sock: &RudpSocket,
    punched: io::Result<SocketAddr>,
    peer: &NodeInfo,
    token: u64,
    relay: Option<SocketAddr>,
    opts: Options,
) -> io::Result<PeerConn> {
    match punched {
        Ok(addr) => {
            let (conn, from) = sock.accept_timeout(Some(opts.accept))?;
            if from != addr {
                log::warn!("peer: connection from {from}, punched {addr}");
            }
            Ok(PeerConn {
                conn,
                path: Path::Direct(from),
                peer: peer.id,
            })
        }
        Err(e) => relayed(sock, relay, peer.room, peer.id, token, opts, e),
    }
}

/// Waits for the tracker's `PunchNotify` of attempt `token`; other
/// notifications are dropped (logged).
pub fn wait_notify(tracker: &TrackerClient, token: u64, timeout: Duration) -> io::Result<NodeInfo> {
    let deadline = crate::time::deadline_after(timeout);
    loop {
        let left = deadline.saturating_duration_since(crate::time::clock_now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the tracker did not introduce the peer in time",
            ));
        }
        match tracker.next_notification(Some(left))? {
            Message::PunchNotify { peer, token: t } if t == token => return Ok(peer),
            Message::PunchResult {
                token: t,
                ok: false,
                ..
            } if t == token => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "the tracker cannot reach that peer (not registered in this room)",
                ))
            }
            Message::Error { text, .. } => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("tracker: {text}"),
                ))
            }
            other => log::debug!("peer: ignoring {} while punching", other.name()),
        }
    }
}

fn relayed(
    sock: &RudpSocket,
    relay: Option<SocketAddr>,
    room: RoomId,
    to: NodeId,
    token: u64,
    opts: Options,
    punch_error: io::Error,
) -> io::Result<PeerConn> {
    let Some(relay) = relay else {
        return Err(punch_error);
    };
    log::info!("peer: punching to {to:016x} failed ({punch_error}); relaying through {relay}");
    let conn = super::relay::open(sock, relay, room, to, token, opts.relay)?;
    Ok(PeerConn {
        conn,
        path: Path::Relayed(relay),
        peer: to,
    })
}

/// The punching side of a node registered with one tracker, for nodes that
/// run several attempts at once on one RUDP socket (each attempt's probes
/// come from a shared [`ProbeRouter`], whose `route` the caller runs in a
/// coroutine of its own) and answer other nodes' attempts.
///
/// [`Puncher::dispatch`] must run (in a coroutine of its own) for
/// [`Puncher::connect`] to hear the tracker's introductions: it hands each
/// `PunchNotify` to the attempt it answers and passes the others — nodes
/// that want to reach us — to the caller, who answers them with
/// [`Puncher::answer`]. No relay here: a caller with one falls back to
/// [`super::relay::open`] itself.
pub struct Puncher {
    tracker: Rc<TrackerClient>,
    router: Rc<ProbeRouter>,
    me: NodeId,
    opts: Options,
    /// Our attempts waiting for their introduction, by token.
    waiting: RefCell<HashMap<u64, oneshot::Sender<NodeInfo>>>,
    /// Tokens of attempts we made or answered lately (at most
    /// [`RECENT`]): an introduction carrying one is the other side's
    /// answer coming late (ours gave up) or a repeat, never a new attempt,
    /// and answering it would make the two sides answer each other forever.
    recent: RefCell<std::collections::VecDeque<u64>>,
}

/// Tokens remembered in [`Puncher`]'s `recent`.
const RECENT: usize = 256;

/// Attempts of our own waiting for the tracker at once; more fail at once.
const MAX_WAITING: usize = 256;

impl Puncher {
    /// A puncher for node `me`, registered with `tracker`, whose probes
    /// come through `router`.
    pub fn new(
        tracker: Rc<TrackerClient>,
        router: Rc<ProbeRouter>,
        me: NodeId,
        opts: Options,
    ) -> Puncher {
        Puncher {
            tracker,
            router,
            me,
            opts,
            waiting: RefCell::new(HashMap::new()),
            recent: RefCell::new(std::collections::VecDeque::new()),
        }
    }

    /// The tracker it punches through.
    pub fn tracker(&self) -> &Rc<TrackerClient> {
        &self.tracker
    }

    /// Routes the tracker's notifications until its connection ends (the
    /// error says why): an introduction answering one of our attempts goes
    /// to it, any other introduction (`peer`, `token`) to `incoming`
    /// (dropped when `incoming` is full or closed: the peer's attempt then
    /// times out). Other notifications are logged and dropped.
    pub fn dispatch(&self, incoming: &Sender<(NodeInfo, u64)>) -> io::Error {
        loop {
            match self.tracker.next_notification(None) {
                Ok(Message::PunchNotify { peer, token }) => {
                    let waiter = self.waiting.borrow_mut().remove(&token);
                    match waiter {
                        Some(w) => {
                            let _ = w.send(peer);
                        }
                        None if self.recent.borrow().contains(&token) => {
                            log::debug!("punch: dropped a late or repeated introduction");
                        }
                        None => {
                            if incoming.try_send((peer, token)).is_err() {
                                log::debug!("punch: dropped an introduction (busy)");
                            }
                        }
                    }
                }
                Ok(Message::PunchResult {
                    token, ok: false, ..
                }) => {
                    // The peer is not there: fail the attempt at once.
                    drop(self.waiting.borrow_mut().remove(&token));
                }
                Ok(other) => log::debug!("punch: ignoring {} from the tracker", other.name()),
                Err(e) => {
                    // Fails every attempt still waiting.
                    self.waiting.borrow_mut().clear();
                    return e;
                }
            }
        }
    }

    /// Reaches node `to` of `room`: [`Puncher::introduce`], then
    /// [`Puncher::punch`] (a fresh token). Returns the peer as the tracker
    /// describes it and the address that works both ways (connect to it
    /// with RUDP).
    pub fn connect(&self, to: NodeId, room: RoomId) -> io::Result<(NodeInfo, SocketAddr)> {
        let token = crate::rand::random_u64();
        let peer = self.introduce(to, room, token)?;
        let addr = self.punch(&peer, token)?;
        Ok((peer, addr))
    }

    /// Asks the tracker to introduce us to node `to` of `room` for attempt
    /// `token` and waits (up to `Options::notify`) for the peer's
    /// addresses. `NotFound`: the tracker does not know it there.
    pub fn introduce(&self, to: NodeId, room: RoomId, token: u64) -> io::Result<NodeInfo> {
        let (tx, rx) = oneshot::channel();
        {
            let mut waiting = self.waiting.borrow_mut();
            if waiting.len() >= MAX_WAITING {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "too many punch attempts waiting for the tracker",
                ));
            }
            waiting.insert(token, tx);
        }
        // Removed however this ends.
        let _gone = Forget(&self.waiting, token);
        self.remember(token);
        self.tracker.punch_request(self.me, to, room, token)?;
        match rx.recv_timeout(self.opts.notify) {
            Ok(p) => Ok(p),
            Err(crate::sync::RecvTimeoutError::Timeout) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the tracker did not introduce the peer in time",
            )),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the tracker cannot reach that peer (gone, or not in that room)",
            )),
        }
    }

    /// Punches to `peer` for attempt `token` (after an introduction either
    /// way); returns the address that works both ways.
    pub fn punch(&self, peer: &NodeInfo, token: u64) -> io::Result<SocketAddr> {
        self.router
            .punch(self.me, peer_addrs(peer), token, self.opts.punch)
    }

    /// [`accept_peer`] through this puncher: answers the introduction,
    /// then accepts the peer's connection on `sock` (the socket the
    /// router serves), or meets it at `relay` when punching fails.
    pub fn accept_peer(
        &self,
        sock: &RudpSocket,
        peer: &NodeInfo,
        token: u64,
        relay: Option<SocketAddr>,
    ) -> io::Result<PeerConn> {
        let punched = self.answer(peer, token);
        accept_punched(sock, punched, peer, token, relay, self.opts)
    }

    /// Answers an introduction passed on by [`Puncher::dispatch`]: asks
    /// the tracker to introduce us back and punches. Returns the address
    /// that works both ways; the peer then connects to us with RUDP.
    pub fn answer(&self, peer: &NodeInfo, token: u64) -> io::Result<SocketAddr> {
        self.remember(token);
        self.tracker
            .punch_request(self.me, peer.id, peer.room, token)?;
        self.punch(peer, token)
    }

    /// Notes `token` as one of ours (see `recent`).
    fn remember(&self, token: u64) {
        let mut recent = self.recent.borrow_mut();
        if recent.len() >= RECENT {
            recent.pop_front();
        }
        recent.push_back(token);
    }
}

/// Removes an attempt's waiter when dropped.
struct Forget<'a>(&'a RefCell<HashMap<u64, oneshot::Sender<NodeInfo>>>, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.borrow_mut().remove(&self.1);
    }
}
