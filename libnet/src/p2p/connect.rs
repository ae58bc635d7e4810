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

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use super::client::{peer_addrs, punch, TrackerClient};
use super::wire::Message;
use super::{NodeId, NodeInfo, RoomId};
use crate::nat::punch::Config as PunchConfig;
use crate::rudp::{RudpConnection, RudpSocket};

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
    match punch(sock, me, peer_addrs(peer), token, opts.punch) {
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
