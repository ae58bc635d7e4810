//! The relay: the fallback when two peers cannot punch through to each
//! other (symmetric NAT against port-restricted or symmetric). The edge
//! runs it on its RUDP socket.
//!
//! Both peers open an RUDP connection to the relay and send
//! `RelayOpen { room, to, token }` with the token of their punch attempt
//! (random, known only to the two of them and the tracker). The relay pairs
//! the two connections that name the same token, answers each with
//! `PunchResult { ok: true, relayed: true }`, and from then on forwards
//! every message from one to the other unchanged. A connection left
//! unpaired for `pair_timeout` is closed; a third connection with a token
//! already paired is refused. Forwarding blocks on the receiving side's
//! send queue, so a slow peer slows its sender (RUDP back-pressure), never
//! the relay's memory.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use super::wire::{ErrorCode, Message};
use super::{NodeId, RoomId};
use crate::rudp::{RudpConnection, RudpSocket};
use crate::sync::oneshot;

/// Relay limits.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Most relayed pairs (and half-open waiters) at once.
    pub max_pairs: usize,
    /// How long a connection waits for its partner.
    pub pair_timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_pairs: 1024,
            pair_timeout: Duration::from_secs(10),
        }
    }
}

/// What the relay's coroutines share.
struct State {
    config: Config,
    /// Token → the connection waiting for its partner.
    waiting: RefCell<HashMap<u64, oneshot::Sender<RudpConnection>>>,
    /// Pairs being forwarded now.
    active: Cell<usize>,
    /// Pairs completed since start.
    paired: Cell<u64>,
}

/// A running relay (see the module docs).
pub struct Relay {
    state: Rc<State>,
}

impl Relay {
    /// Serves relay requests arriving on `socket`'s incoming connections.
    /// It takes every connection `accept` returns, so give it a socket of
    /// its own (or build the edge's accept loop around [`Relay::handle`]).
    pub fn start(socket: Rc<RudpSocket>, config: Config) -> Relay {
        let relay = Relay::new(config);
        let st = relay.state.clone();
        drop(crate::spawn(move || {
            while let Ok((conn, _)) = socket.accept() {
                let st = st.clone();
                drop(crate::spawn(move || serve(&st, conn, None)));
            }
        }));
        relay
    }

    /// A relay that serves only the connections handed to it with
    /// [`Relay::handle`] (for an edge whose accept loop also serves peers).
    pub fn new(config: Config) -> Relay {
        Relay {
            state: Rc::new(State {
                config,
                waiting: RefCell::new(HashMap::new()),
                active: Cell::new(0),
                paired: Cell::new(0),
            }),
        }
    }

    /// Serves `conn` in a new coroutine; `first` is its first message when
    /// the caller already read it (to see that it is a `RelayOpen`).
    pub fn handle(&self, conn: RudpConnection, first: Option<Vec<u8>>) {
        let st = self.state.clone();
        drop(crate::spawn(move || serve(&st, conn, first)));
    }

    /// Pairs completed since the relay started.
    pub fn pairs_completed(&self) -> u64 {
        self.state.paired.get()
    }

    /// Pairs being forwarded now.
    pub fn active_pairs(&self) -> usize {
        self.state.active.get()
    }
}

fn send(conn: &RudpConnection, m: &Message) -> io::Result<()> {
    conn.send(&m.to_frame()?)
}

/// One incoming connection: read its RelayOpen, pair it or wait.
fn serve(st: &Rc<State>, conn: RudpConnection, first: Option<Vec<u8>>) {
    let first = match first {
        Some(f) => Ok(Some(f)),
        None => conn.recv(),
    };
    let (room, to, token) = match first {
        Ok(Some(frame)) => match Message::decode_frame(&frame) {
            Ok(Message::RelayOpen { room, to, token }) => (room, to, token),
            Ok(other) => {
                let _ = send(
                    &conn,
                    &Message::error(
                        ErrorCode::Unsupported,
                        &format!("a relay takes RelayOpen, not {}", other.name()),
                    ),
                );
                conn.close();
                return;
            }
            Err(e) => {
                let _ = send(&conn, &Message::error(ErrorCode::Malformed, &e.to_string()));
                conn.close();
                return;
            }
        },
        _ => return,
    };
    let partner = st.waiting.borrow_mut().remove(&token);
    match partner {
        Some(tx) => {
            // The partner waits in its own coroutine: hand this one over.
            if let Err(conn) = tx.send(conn) {
                conn.close();
            }
        }
        None => {
            if st.waiting.borrow().len() + st.active.get() >= st.config.max_pairs {
                let _ = send(&conn, &Message::error(ErrorCode::TooMany, "relay full"));
                conn.close();
                return;
            }
            let (tx, rx) = oneshot::channel();
            st.waiting.borrow_mut().insert(token, tx);
            let other = rx.recv_timeout(st.config.pair_timeout);
            st.waiting.borrow_mut().remove(&token);
            match other {
                Ok(other) => forward_pair(st, conn, other, room, to, token),
                Err(_) => {
                    let _ = send(
                        &conn,
                        &Message::error(ErrorCode::NotRegistered, "the other peer never came"),
                    );
                    conn.close();
                }
            }
        }
    }
}

/// Tells both they are paired, then copies messages both ways until one
/// side ends.
fn forward_pair(
    st: &Rc<State>,
    a: RudpConnection,
    b: RudpConnection,
    _room: RoomId,
    to: NodeId,
    token: u64,
) {
    let ready = Message::PunchResult {
        token,
        to,
        ok: true,
        relayed: true,
    };
    if send(&a, &ready).is_err() || send(&b, &ready).is_err() {
        a.close();
        b.close();
        return;
    }
    st.active.set(st.active.get() + 1);
    st.paired.set(st.paired.get() + 1);
    let a = Rc::new(a);
    let b = Rc::new(b);
    let back = {
        let (a, b) = (a.clone(), b.clone());
        crate::spawn(move || copy(&b, &a))
    };
    copy(&a, &b);
    let _ = back.join();
    st.active.set(st.active.get().saturating_sub(1));
}

/// Copies messages from `from` to `to` until `from` ends; then closes `to`
/// (an orderly close travels through the relay).
fn copy(from: &RudpConnection, to: &RudpConnection) {
    while let Ok(Some(m)) = from.recv() {
        if to.send(&m).is_err() {
            break;
        }
    }
    to.close();
}

/// Opens the relayed path to node `to` through the relay at `relay`:
/// connects, names the attempt's `token`, waits (up to `timeout`) for the
/// partner. The connection returned then carries the peer's messages.
pub fn open(
    socket: &RudpSocket,
    relay: SocketAddr,
    room: RoomId,
    to: NodeId,
    token: u64,
    timeout: Duration,
) -> io::Result<RudpConnection> {
    let conn = socket.connect(relay)?;
    send(&conn, &Message::RelayOpen { room, to, token })?;
    conn.set_read_timeout(Some(timeout));
    let frame = conn.recv();
    conn.set_read_timeout(None);
    let frame = frame?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "relay closed the connection",
        )
    })?;
    match Message::decode_frame(&frame)? {
        Message::PunchResult {
            ok: true,
            relayed: true,
            token: t,
            ..
        } if t == token => Ok(conn),
        Message::Error { text, .. } => Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("relay {relay}: {text}"),
        )),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("relay {relay} answered {}", other.name()),
        )),
    }
}
