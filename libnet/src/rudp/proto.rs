//! The sans-IO RUDP endpoint: KCP connections over one UDP socket.
//!
//! [`Endpoint`] owns the connection table of one UDP socket and one KCP
//! instance per connection. It never touches a socket or a clock: datagrams
//! and `now` go in, datagrams to send, [`Event`]s and the next deadline come
//! out. The coroutine driver (`rudp::socket`) and the test simulator
//! (`rudp::sim`) are the only things that run it.
//!
//! # Driving it
//!
//! - Inputs: [`Endpoint::handle_datagram`] for every datagram the socket
//!   receives, [`Endpoint::handle_timeout`] once `now >=`
//!   [`Endpoint::poll_timeout`].
//! - Commands: [`Endpoint::connect`], [`Endpoint::send`], [`Endpoint::recv`],
//!   [`Endpoint::close`], [`Endpoint::abort`], [`Endpoint::forget`],
//!   [`Endpoint::send_raw`].
//! - Outputs: after *any* input or command, drain [`Endpoint::poll_transmit`]
//!   (FIFO) onto the socket and [`Endpoint::poll_event`], then re-read
//!   [`Endpoint::poll_timeout`]: every call may have queued datagrams (KCP is
//!   flushed eagerly after `send`, after a DATA datagram, and after `recv`
//!   reopens the receive window) and moved the deadline, in either direction.
//!
//! Every connection ends with exactly one terminal event: `ConnectFailed` if
//! the handshake never completed, `Closed` otherwise. Messages received
//! before the end stay readable with [`Endpoint::recv`] after `Closed` (except
//! after a local `abort`); the connection's state is dropped when the last of
//! them is read, when [`Endpoint::forget`] is called, `idle_timeout` after
//! the end, or at once when nothing is left to read. From then on the id is
//! unknown: calls return [`Error::UnknownConnection`], `None` or do nothing.
//! Ids are never reused.
//!
//! # Wire format (version 1)
//!
//! Every datagram starts with two bytes; integers are little-endian (as in
//! KCP).
//!
//! ```text
//! byte 0   MAGIC = 0xC5
//! byte 1   vvv r tttt   vvv  = version (1)
//!                       r    = 1 if the sender is the accepting side ("server")
//!                              of the connection, 0 if it is the connecting side
//!                              ("client"); 0 for RAW
//!                       tttt = type, below
//! ```
//!
//! | type | name      | from   | body after the 2 header bytes                      | total |
//! |------|-----------|--------|----------------------------------------------------|-------|
//! | 0    | HELLO     | client | nonce u64, zero padding                            | >= 32 |
//! | 1    | CHALLENGE | server | nonce u64, cookie u64                              | 18    |
//! | 2    | CONNECT   | client | nonce u64, cookie u64                              | 18    |
//! | 3    | ACCEPT    | server | nonce u64, conv u32                                | 14    |
//! | 4    | REFUSE    | server | nonce u64 (too many connections)                   | 10    |
//! | 5    | DATA      | either | one or more raw KCP segments (each starts with conv) | >= 26 |
//! | 6    | PING      | either | conv u32                                           | 6     |
//! | 7    | PONG      | either | conv u32                                           | 6     |
//! | 8    | CLOSE     | either | conv u32 (orderly end, sent once all our data is acked) | 6 |
//! | 9    | CLOSE_ACK | either | conv u32                                           | 6     |
//! | 10   | ABORT     | either | conv u32                                           | 6     |
//! | 11   | RAW       | either | application payload, any length                    | >= 2  |
//!
//! A KCP segment (the `kcp` crate's format): conv u32, cmd u8 (81 PUSH,
//! 82 ACK, 83 WASK, 84 WINS), frg u8, wnd u16, ts u32, sn u32, una u32,
//! len u32, then `len` bytes. A DATA datagram holds at most `mtu` bytes.
//!
//! Handshake: the client picks a random 64-bit nonce and sends HELLO. The
//! server answers CHALLENGE with `cookie = SipHash-2-4(key_epoch, client ip
//! (16 bytes, IPv4 mapped) || client port u16 || nonce)` and keeps no state.
//! The client echoes it in CONNECT; only a CONNECT whose cookie verifies
//! under the current or the previous key creates a connection, so a spoofed
//! source address cannot create state. The server picks a random nonzero
//! conv, unique for that client address, answers ACCEPT, and reports
//! [`Event::Incoming`]. A full table (`max_connections`) answers HELLO and
//! CONNECT with REFUSE. HELLO is padded so that no reply is larger than the
//! datagram that caused it (no amplification). The key of epoch `e` is
//! `(SipHash(master, e || 0), SipHash(master, e || 1))`, `master` derived
//! from the seed; nonces and convs come from SipHash of a counter under
//! another seed-derived key. Every endpoint accepts incoming connections.
//!
//! Keys rotate every two minutes (derived from the seed given to
//! [`Endpoint::new`]); a cookie is valid for two to four minutes. A replayed
//! CONNECT for a live connection gets the same ACCEPT again; a replayed
//! CONNECT for a connection that has ended is dropped (the endpoint
//! remembers ended `(address, nonce)` pairs for as long as their cookies can
//! verify; if that bounded set fills up, the keys are rotated twice at once,
//! which invalidates every outstanding cookie, and the set is emptied).
//! Clients retry HELLO/CONNECT after `handshake_retry`, doubling up to four
//! times that, and send a HELLO beside the CONNECT once two CONNECTs went
//! unanswered (a fresh CHALLENGE replaces the cookie).
//!
//! Connections are keyed by (remote address, conv, role), so a connection
//! we accepted and one we opened to the same peer never collide. A datagram
//! that does not parse, fails the cookie, or names an unknown connection
//! (unknown conv or wrong remote) is counted in [`EndpointStats`] and
//! dropped. Two stateless answers exist: CLOSE for an unknown connection
//! gets a CLOSE_ACK, and PING for an unknown connection gets an ABORT (so a
//! peer whose connection we forgot learns it within one keepalive).
//!
//! Close: `close()` waits until KCP has every message acked, then sends
//! CLOSE (retried like the handshake) until CLOSE_ACK. The peer, on CLOSE,
//! moves every complete message out of KCP, answers CLOSE_ACK and reports
//! `Closed(Closed)`. Closing is a full close: data the
//! peer had not yet got acked when our CLOSE arrives is dropped; a peer that
//! is itself closing answers only once its own data is acked.
//!
//! # KCP details
//!
//! - Each connection's KCP clock is `u32` milliseconds since the connection
//!   was created (not since the endpoint was), so counters stay far from the
//!   `i32` boundary the `kcp` crate's arithmetic cannot cross in builds with
//!   overflow checks.
//! - KCP is driven eagerly: after `send`, after a DATA datagram and when a
//!   timer is due we call `update(now)` and `flush()`; the deadline is
//!   `check()` (relative milliseconds) while KCP holds unacked data, and no
//!   KCP deadline at all when it holds none (idle connections only wake for
//!   keepalives).
//! - Incoming segments are checked before KCP sees them (command, lengths,
//!   `frg < 128`, acks only for sequence numbers we sent, ack timestamps no
//!   later than our clock; in builds with debug assertions also the top bit
//!   of `sn`, `una` and ack `ts`), because the crate's arithmetic panics on
//!   overflow in such builds and trusts `una` blindly.
//! - A message is charged its length plus 24 bytes against
//!   `max_queued_bytes` and `max_recv_bytes`, so floods of tiny messages are
//!   bounded too.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kcp::Kcp;
use siphasher::sip::SipHasher24;

/// First byte of every datagram.
pub const MAGIC: u8 = 0xC5;
/// Protocol version, the top three bits of the second byte.
pub const VERSION: u8 = 1;
/// Bytes in front of every datagram's body.
pub const HEADER_LEN: usize = 2;
/// Largest UDP payload (IPv4).
pub const MAX_DATAGRAM: usize = 65_507;
/// Smallest `Config::mtu` (the kcp crate wants at least 50 bytes).
pub const MIN_MTU: usize = 64;
/// Most KCP fragments of one message (the crate rejects 128 and more).
pub const MAX_FRAGMENTS: usize = 127;

const ROLE_SERVER: u8 = 0x10;
const TYPE_MASK: u8 = 0x0F;

const T_HELLO: u8 = 0;
const T_CHALLENGE: u8 = 1;
const T_CONNECT: u8 = 2;
const T_ACCEPT: u8 = 3;
const T_REFUSE: u8 = 4;
const T_DATA: u8 = 5;
const T_PING: u8 = 6;
const T_PONG: u8 = 7;
const T_CLOSE: u8 = 8;
const T_CLOSE_ACK: u8 = 9;
/// How many handshake-retry intervals of silence from the peer a close whose
/// data is all acked waits for the CLOSE_ACK before counting as done anyway.
const CLOSE_LINGER_RETRIES: u32 = 8;
const T_ABORT: u8 = 10;
const T_RAW: u8 = 11;

const HELLO_LEN: usize = 32;
const CHALLENGE_LEN: usize = HEADER_LEN + 16;
const CONNECT_LEN: usize = HEADER_LEN + 16;
const ACCEPT_LEN: usize = HEADER_LEN + 12;
const REFUSE_LEN: usize = HEADER_LEN + 8;
const CONV_LEN: usize = HEADER_LEN + 4;

const KCP_HEADER: usize = 24;
const CMD_PUSH: u8 = 81;
const CMD_ACK: u8 = 82;
const CMD_WASK: u8 = 83;
const CMD_WINS: u8 = 84;
/// KCP's largest rto, used to bound our own estimate.
const RTO_MAX_MS: u32 = 60_000;
/// Acks claiming a longer round trip are dropped (keeps KCP's estimator in range).
const MAX_RTT_MS: u32 = 1 << 24;

/// How often the cookie key changes.
const KEY_PERIOD: Duration = Duration::from_secs(120);
/// Raw datagrams waiting in the event queue before new ones are dropped.
const MAX_PENDING_RAW: usize = 1024;
/// Per-message charge on top of its length (one KCP header).
const MSG_CHARGE: usize = KCP_HEADER;
/// Unanswered CONNECTs before a client also asks for a fresh cookie.
const CONNECT_TRIES: u32 = 2;
/// Handshake and CLOSE retry intervals double up to this many times
/// `handshake_retry`.
const MAX_BACKOFF: u32 = 4;
/// Longest duration a config may hold (keeps `Instant + Duration` in range).
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// KCP presets: `(nodelay, interval ms, fast resend, no congestion control)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    /// `(true, 10, 2, true)`: lowest latency, no congestion window.
    #[default]
    Fast,
    /// `(true, 20, 3, true)`.
    Normal,
    /// `(false, 50, 0, false)`: classic timers, congestion control on.
    Slow,
}

impl Mode {
    /// The `set_nodelay` arguments and the matching minimum rto in ms.
    fn params(self) -> (bool, u32, i32, bool) {
        match self {
            Mode::Fast => (true, 10, 2, true),
            Mode::Normal => (true, 20, 3, true),
            Mode::Slow => (false, 50, 0, false),
        }
    }

    /// A minimum retransmission timeout below KCP's own (30 ms in nodelay
    /// mode), in ms. The RTO is the larger of this and the measured one, so
    /// it only matters on paths whose RTT is a few ms; there, a segment lost
    /// from a sparse stream (nothing behind it to trigger a fast resend)
    /// waits 10 ms instead of 30 before it is sent again.
    fn min_rto(self) -> Option<u32> {
        match self {
            Mode::Fast => Some(10),
            Mode::Normal | Mode::Slow => None,
        }
    }
}

/// Endpoint configuration; [`Config::validate`] says what is allowed.
#[derive(Clone, Debug)]
pub struct Config {
    /// KCP preset; default [`Mode::Fast`].
    pub mode: Mode,
    /// UDP payload size including our 2-byte header; default 1400.
    pub mtu: usize,
    /// KCP send window in packets; default 1024.
    pub send_window: u16,
    /// KCP receive window in packets; default 1024. KCP raises anything
    /// below 128 to 128 (a whole message must fit).
    pub recv_window: u16,
    /// Largest message; default 64 KiB. Must fit in 127 KCP fragments
    /// (`127 * (mtu - 26)` bytes), see [`Config::max_message_limit`].
    pub max_message: usize,
    /// Per connection: bytes sent but not yet acked (each message charged 24
    /// bytes extra) at or above which `send` returns [`Error::WouldBlock`];
    /// default 4 MiB.
    pub max_queued_bytes: usize,
    /// Per connection: received-but-unread bytes (charged the same way) at
    /// or above which we stop taking messages out of KCP, whose receive
    /// window then pushes back on the sender; default 4 MiB.
    pub max_recv_bytes: usize,
    /// Connections in the table (opening, open, closing, or ended with
    /// unread messages); default 4096.
    pub max_connections: usize,
    /// Send a PING when nothing was sent for this long; default 30 s.
    pub keepalive: Duration,
    /// Nothing received for this long ends a connection with
    /// [`CloseReason::TimedOut`]; also bounds how long `close` may linger
    /// and how long unread messages of an ended connection are kept;
    /// default 120 s.
    pub idle_timeout: Duration,
    /// `connect` gives up after this long; default 10 s.
    pub handshake_timeout: Duration,
    /// First HELLO/CONNECT (and CLOSE) retry interval, doubling up to four
    /// times this; default 250 ms.
    pub handshake_retry: Duration,
    /// First byte of another protocol's datagrams sharing the socket
    /// (the P2P wire frames start with 0xB7): such datagrams are handed
    /// over whole as raw datagrams, and [`Endpoint::send_foreign`] sends
    /// them unwrapped, so a plain UDP peer (a tracker) understands them.
    /// Must differ from the RUDP magic 0xC5. Default: none.
    pub foreign_magic: Option<u8>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            mode: Mode::Fast,
            mtu: 1400,
            send_window: 1024,
            recv_window: 1024,
            max_message: 64 * 1024,
            max_queued_bytes: 4 << 20,
            max_recv_bytes: 4 << 20,
            max_connections: 4096,
            keepalive: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            handshake_timeout: Duration::from_secs(10),
            handshake_retry: Duration::from_millis(250),
            foreign_magic: None,
        }
    }
}

/// Why a [`Config`] was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// `mtu` is outside `MIN_MTU..=MAX_DATAGRAM`.
    Mtu(usize),
    /// A window is zero.
    Window,
    /// `max_message` needs more than 127 KCP fragments at this MTU.
    MaxMessage {
        /// The configured value.
        max_message: usize,
        /// The largest value this MTU allows.
        limit: usize,
    },
    /// A limit or duration that must be positive is zero, or a duration is
    /// longer than a year.
    OutOfRange(&'static str),
    /// `keepalive` is not shorter than `idle_timeout`, so an idle
    /// connection would time out before its first keepalive.
    Keepalive,
    /// `foreign_magic` is the RUDP magic itself.
    ForeignMagic,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Mtu(m) => {
                write!(f, "rudp config: mtu {m} not in {MIN_MTU}..={MAX_DATAGRAM}")
            }
            ConfigError::Window => write!(f, "rudp config: windows must be nonzero"),
            ConfigError::MaxMessage { max_message, limit } => write!(
                f,
                "rudp config: max_message {max_message} exceeds {limit} \
                 ({MAX_FRAGMENTS} KCP fragments at this mtu)"
            ),
            ConfigError::OutOfRange(what) => {
                write!(f, "rudp config: {what} must be nonzero and at most a year")
            }
            ConfigError::Keepalive => {
                write!(
                    f,
                    "rudp config: keepalive must be shorter than idle_timeout"
                )
            }
            ConfigError::ForeignMagic => {
                write!(f, "rudp config: foreign_magic must differ from 0xC5")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Checks every field; [`Endpoint::new`] panics on what this rejects.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.foreign_magic == Some(MAGIC) {
            return Err(ConfigError::ForeignMagic);
        }
        if !(MIN_MTU..=MAX_DATAGRAM).contains(&self.mtu) {
            return Err(ConfigError::Mtu(self.mtu));
        }
        if self.send_window == 0 || self.recv_window == 0 {
            return Err(ConfigError::Window);
        }
        let limit = self.max_message_limit();
        if self.max_message > limit {
            return Err(ConfigError::MaxMessage {
                max_message: self.max_message,
                limit,
            });
        }
        for (what, v) in [
            ("max_message", self.max_message),
            ("max_queued_bytes", self.max_queued_bytes),
            ("max_recv_bytes", self.max_recv_bytes),
            ("max_connections", self.max_connections),
        ] {
            if v == 0 {
                return Err(ConfigError::OutOfRange(what));
            }
        }
        for (what, d) in [
            ("keepalive", self.keepalive),
            ("idle_timeout", self.idle_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("handshake_retry", self.handshake_retry),
        ] {
            if d.is_zero() || d > MAX_DURATION {
                return Err(ConfigError::OutOfRange(what));
            }
        }
        if self.keepalive >= self.idle_timeout {
            return Err(ConfigError::Keepalive);
        }
        Ok(())
    }

    /// The largest `max_message` this MTU allows (127 KCP fragments).
    pub fn max_message_limit(&self) -> usize {
        MAX_FRAGMENTS * self.mss()
    }

    /// KCP payload bytes per segment.
    fn mss(&self) -> usize {
        self.mtu.saturating_sub(HEADER_LEN + KCP_HEADER)
    }
}

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/// Identifies one connection of an [`Endpoint`]; never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rudp#{}", self.0)
    }
}

/// What happened, in order. See the module docs for the life cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Our `connect` completed; `send` now transmits.
    Connected(ConnId),
    /// A peer connected to us (accept side).
    Incoming(ConnId, SocketAddr),
    /// At least one whole message can be received. Edge-triggered: sent
    /// when messages arrive while none were waiting.
    Readable(ConnId),
    /// The send queue dropped below `max_queued_bytes` after a `send`
    /// returned [`Error::WouldBlock`].
    Writable(ConnId),
    /// Terminal for a connection that was established. Comes after every
    /// `Readable`; queued messages remain readable (except after a local
    /// abort).
    Closed(ConnId, CloseReason),
    /// Terminal for a connection whose handshake never completed.
    ConnectFailed(ConnId, CloseReason),
    /// A raw datagram (see [`Endpoint::send_raw`]).
    Raw(SocketAddr, Vec<u8>),
}

/// Why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The peer closed in order: everything it sent was delivered.
    Closed,
    /// The peer aborted, or broke the protocol (we then sent ABORT).
    Aborted,
    /// Nothing heard for `idle_timeout`, KCP gave up retransmitting, a close
    /// lingered longer than `idle_timeout`, or the handshake timed out.
    TimedOut,
    /// Our own `close` completed: the peer has everything we sent.
    LocalClose,
    /// Our own `abort` (or `forget` of a live connection).
    LocalAbort,
    /// The peer has too many connections.
    Refused,
}

/// Per-connection statistics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Smoothed round-trip time, estimated from KCP acks seen on the wire
    /// with KCP's own estimator.
    pub rtt: Duration,
    /// Retransmission timeout that estimate gives.
    pub rto: Duration,
    /// UDP payload bytes sent for this connection (handshake, data,
    /// acks, keepalives, retransmissions).
    pub bytes_sent: u64,
    /// UDP payload bytes received for this connection.
    pub bytes_received: u64,
    /// Datagrams sent for this connection.
    pub packets_sent: u64,
    /// Datagrams received for this connection.
    pub packets_received: u64,
    /// KCP PUSH segments sent whose sequence number had been sent before.
    pub retransmissions: u64,
    /// `retransmissions / PUSH segments sent` (0 when none were sent).
    /// This is what KCP resent, not the path's loss: KCP's fast resend
    /// also fires spuriously (acks of segments sent in the same
    /// millisecond as a retransmission count as duplicates), so in
    /// [`Mode::Fast`] expect about twice the path loss at 10% loss and
    /// several times it at 1%.
    pub loss_seen: f64,
    /// Bytes (plus 24 per message) handed to `send` and not yet acked.
    pub queued_bytes: usize,
}

/// Endpoint-wide counters of datagrams in, out and dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Dropped: does not parse (bad magic, version, type, length, KCP segment).
    pub malformed: u64,
    /// Dropped: names a connection we do not have (unknown conv or nonce,
    /// or the wrong remote address).
    pub unknown_conn: u64,
    /// Dropped: CONNECT whose cookie does not verify.
    pub bad_cookie: u64,
    /// HELLO/CONNECT answered with REFUSE (table full).
    pub refused: u64,
    /// Dropped: valid CONNECT for a connection that already ended.
    pub replayed: u64,
    /// Dropped: RAW datagrams beyond the 1024 waiting in the event queue.
    pub raw_dropped: u64,
    /// Datagrams given to `handle_datagram`.
    pub datagrams_in: u64,
    /// Datagrams queued for `poll_transmit`.
    pub datagrams_out: u64,
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub to: SocketAddr,
    /// UDP payload.
    pub data: Vec<u8>,
}

/// Errors of endpoint commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Error {
    /// The send queue is full; wait for [`Event::Writable`].
    WouldBlock,
    /// Larger than `max_message` (or than a datagram, for raw sends).
    TooLarge,
    /// The connection is closing or has ended.
    Closed,
    /// No such connection (never existed, or its state was dropped).
    UnknownConnection,
    /// The table holds `max_connections` already.
    TooManyConnections,
    /// The remote address has port 0 or an unspecified/multicast IP.
    InvalidAddress,
    /// `send_foreign` without `foreign_magic` configured, or data that
    /// does not start with it.
    NotForeign,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::WouldBlock => "rudp: send queue full",
            Error::TooLarge => "rudp: message too large",
            Error::Closed => "rudp: connection closed",
            Error::UnknownConnection => "rudp: unknown connection",
            Error::TooManyConnections => "rudp: too many connections",
            Error::InvalidAddress => "rudp: invalid remote address",
            Error::NotForeign => "rudp: not a datagram of the configured foreign protocol",
        })
    }
}

impl std::error::Error for Error {}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match e {
            Error::WouldBlock => io::ErrorKind::WouldBlock,
            Error::TooLarge | Error::InvalidAddress | Error::NotForeign => {
                io::ErrorKind::InvalidInput
            }
            Error::Closed => io::ErrorKind::NotConnected,
            Error::UnknownConnection => io::ErrorKind::NotFound,
            Error::TooManyConnections => io::ErrorKind::ResourceBusy,
        };
        io::Error::new(kind, e)
    }
}

// ---------------------------------------------------------------------------
// Wire helpers
// ---------------------------------------------------------------------------

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn header(ty: u8, server: bool) -> [u8; 2] {
    let role = if server { ROLE_SERVER } else { 0 };
    [MAGIC, (VERSION << 5) | role | ty]
}

/// One KCP segment header.
#[derive(Clone, Copy, Debug)]
struct Seg {
    conv: u32,
    cmd: u8,
    frg: u8,
    ts: u32,
    sn: u32,
    una: u32,
}

/// Calls `f` for each KCP segment of `buf`; false if `buf` is not a clean
/// sequence of segments or `f` refused one.
fn each_segment(buf: &[u8], mut f: impl FnMut(&Seg) -> bool) -> bool {
    let mut at = 0;
    while at < buf.len() {
        if buf.len() - at < KCP_HEADER {
            return false;
        }
        let s = &buf[at..];
        let seg = Seg {
            conv: u32_at(s, 0),
            cmd: s[4],
            frg: s[5],
            ts: u32_at(s, 8),
            sn: u32_at(s, 12),
            una: u32_at(s, 16),
        };
        let len = u32_at(s, 20) as usize;
        if len > s.len() - KCP_HEADER || !f(&seg) {
            return false;
        }
        at += KCP_HEADER + len;
    }
    true
}

/// `a < b` in KCP's wrapping sequence space.
fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

fn charge(len: usize) -> usize {
    len + MSG_CHARGE
}

fn segments_for(len: usize, mss: usize) -> u64 {
    len.div_ceil(mss).max(1) as u64
}

fn valid_remote(a: &SocketAddr) -> bool {
    a.port() != 0 && !a.ip().is_unspecified() && !a.ip().is_multicast()
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hashes connection ids for maps keyed by them ([`IdMap`]). The ids are
/// the endpoint's own counter, never chosen by a peer, so they need no
/// flood-resistant hash: one multiplication instead of SipHash, which was a
/// visible share of the cost of a small message (a few lookups each).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct IdHash;

impl BuildHasher for IdHash {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

/// See [`IdHash`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct IdHasher(u64);

/// An odd constant (2^64 / golden ratio): the multiplication is a bijection
/// that spreads sequential ids over the high bits (the table's tag) while
/// the low bits (its index) stay distinct.
const ID_MIX: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(ID_MIX);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(ID_MIX);
    }
}

/// A map keyed by connection id (`u64` or [`ConnId`]).
pub(crate) type IdMap<K, V> = HashMap<K, V, IdHash>;

// ---------------------------------------------------------------------------
// Internals
// ---------------------------------------------------------------------------

/// KCP's output: collects datagrams with two bytes reserved for our header
/// (filled in when the owning connection drains it). Shared by every KCP
/// instance of an endpoint, drained after each call into one of them.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<Vec<u8>>>>);

impl io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut d = Vec::with_capacity(HEADER_LEN + buf.len());
        d.extend_from_slice(&header(T_DATA, false));
        d.extend_from_slice(buf);
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(d);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// KCP's rtt estimator, fed from acks seen on the wire (the crate keeps
/// its own private).
#[derive(Clone, Copy, Debug)]
struct RttEstimator {
    srtt: u32,
    rttval: u32,
    rto: u32,
    min_rto: u32,
    interval: u32,
}

impl RttEstimator {
    fn new(mode: Mode) -> RttEstimator {
        let (nodelay, interval, _, _) = mode.params();
        RttEstimator {
            srtt: 0,
            rttval: 0,
            rto: 200,
            min_rto: if nodelay { 30 } else { 100 },
            interval,
        }
    }

    fn sample(&mut self, rtt: u32) {
        if self.srtt == 0 {
            self.srtt = rtt.max(1);
            self.rttval = rtt / 2;
        } else {
            let delta = rtt.abs_diff(self.srtt);
            self.rttval = ((3 * u64::from(self.rttval) + u64::from(delta)) / 4) as u32;
            self.srtt = ((7 * u64::from(self.srtt) + u64::from(rtt)) / 8).max(1) as u32;
        }
        let rto = u64::from(self.srtt) + u64::from(self.interval).max(4 * u64::from(self.rttval));
        self.rto = rto.clamp(u64::from(self.min_rto), u64::from(RTO_MAX_MS)) as u32;
    }
}

#[derive(Clone, Copy, Debug)]
enum State {
    /// Client: HELLO (no cookie yet) or CONNECT (cookie) sent, no ACCEPT yet.
    Handshake {
        cookie: Option<u64>,
        tries: u32,
        retry_at: Instant,
        interval: Duration,
        deadline: Instant,
    },
    /// Established.
    Open,
    /// Local `close`: waiting for our data to be acked, then CLOSE sent
    /// (`retry` set) until CLOSE_ACK.
    Closing {
        deadline: Instant,
        retry: Option<(Instant, Duration)>,
    },
    /// Ended; only unread messages are left, kept until `expires`.
    Done { expires: Instant },
}

/// What a connection asks the endpoint to do after an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Keep,
    /// End it; `abort` says whether to send ABORT first.
    End {
        reason: CloseReason,
        abort: bool,
    },
}

/// The peer broke the protocol (a message larger than `max_message`).
struct Violation;

/// Outputs shared by every connection.
#[derive(Default)]
struct Outbox {
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    /// `(deadline, connection)`: when each connection needs `on_timer` next,
    /// or earlier (see `schedule`).
    timers: BTreeSet<(Instant, u64)>,
    stats: EndpointStats,
    /// Raw events waiting in `events`.
    raw_pending: usize,
    /// KCP output of the connection being operated on.
    sink: Sink,
    /// Spare buffer swapped with the sink's to drain it without allocating.
    spare: Vec<Vec<u8>>,
}

impl Outbox {
    fn push(&mut self, to: SocketAddr, data: Vec<u8>) {
        self.stats.datagrams_out += 1;
        self.transmits.push_back(Transmit { to, data });
    }
}

struct Conn {
    /// Waiting in `Endpoint::dirty` for the end of the batch.
    dirty: bool,
    id: u64,
    remote: SocketAddr,
    /// We accepted it (the peer connected to us).
    server: bool,
    /// The client's handshake nonce.
    nonce: u64,
    /// 0 until ACCEPT on the client side.
    conv: u32,
    state: State,
    kcp: Option<Kcp<Sink>>,
    /// Origin of this connection's KCP clock.
    base: Instant,
    /// When KCP next needs `update` (None while it holds nothing unacked).
    kcp_due: Option<Instant>,
    /// This connection's entry in `Outbox::timers`.
    timer: Option<Instant>,
    last_recv: Instant,
    last_send: Instant,

    inbox: VecDeque<Vec<u8>>,
    inbox_bytes: usize,

    /// Segments handed to `kcp.send` so far.
    segs_sent: u64,
    /// Per unacked message: (segment count after it, charge).
    unacked: VecDeque<(u64, usize)>,
    queued_bytes: usize,
    /// A `send` returned WouldBlock; report Writable when space returns.
    blocked: bool,
    /// Next new PUSH sequence number (from what went out on the wire).
    next_sn: u32,
    rtt: RttEstimator,

    bytes_sent: u64,
    bytes_received: u64,
    packets_sent: u64,
    packets_received: u64,
    push_sent: u64,
    retransmissions: u64,
}

impl Conn {
    fn kcp_now(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.base).as_millis() as u32
    }

    fn established(&self) -> bool {
        matches!(self.state, State::Open | State::Closing { .. })
    }

    /// Queues a 6-byte control datagram (PING, PONG, CLOSE, CLOSE_ACK, ABORT).
    fn ctrl(&mut self, out: &mut Outbox, ty: u8, now: Instant) {
        let mut d = Vec::with_capacity(CONV_LEN);
        d.extend_from_slice(&header(ty, self.server));
        d.extend_from_slice(&self.conv.to_le_bytes());
        self.sent(out, d, now);
    }

    fn sent(&mut self, out: &mut Outbox, d: Vec<u8>, now: Instant) {
        self.packets_sent += 1;
        self.bytes_sent += d.len() as u64;
        self.last_send = now;
        out.push(self.remote, d);
    }

    /// Moves KCP's output into the transmit queue, counting PUSH segments
    /// and retransmissions on the way.
    fn drain(&mut self, out: &mut Outbox, now: Instant) {
        {
            let mut g = out.sink.0.lock().unwrap_or_else(PoisonError::into_inner);
            if g.is_empty() {
                return;
            }
            std::mem::swap(&mut *g, &mut out.spare);
        }
        let mut spare = std::mem::take(&mut out.spare);
        let hdr = header(T_DATA, self.server)[1];
        for mut d in spare.drain(..) {
            d[1] = hdr;
            let (mut pushes, mut retx, mut next) = (0u64, 0u64, self.next_sn);
            each_segment(&d[HEADER_LEN..], |s| {
                if s.cmd == CMD_PUSH {
                    pushes += 1;
                    if seq_lt(s.sn, next) {
                        retx += 1;
                    } else {
                        next = s.sn.wrapping_add(1);
                    }
                }
                true
            });
            self.next_sn = next;
            self.push_sent += pushes;
            self.retransmissions += retx;
            self.sent(out, d, now);
        }
        out.spare = spare;
    }

    /// Checks a DATA body before KCP sees it (see the module docs).
    fn acceptable(&self, body: &[u8], now_ms: u32) -> bool {
        let conv = self.conv;
        let next_sn = self.next_sn;
        let strict = cfg!(debug_assertions);
        let top = |v: u32| strict && v >= 1 << 31;
        each_segment(body, |s| {
            if s.conv != conv || top(s.una) || seq_lt(next_sn, s.una) {
                return false;
            }
            match s.cmd {
                CMD_PUSH => s.frg < MAX_FRAGMENTS as u8 + 1 && !top(s.sn),
                CMD_ACK => {
                    seq_lt(s.sn, next_sn)
                        && !top(s.sn)
                        && !top(s.ts)
                        && now_ms.wrapping_sub(s.ts) <= MAX_RTT_MS
                }
                CMD_WASK | CMD_WINS => true,
                _ => false,
            }
        })
    }

    /// update + flush; `force` flushes even when KCP's tick is not due.
    fn pump(&mut self, out: &mut Outbox, cfg: &Config, now: Instant, force: bool) -> Verdict {
        if self.conv == 0 || !self.established() {
            return Verdict::Keep;
        }
        let t = self.kcp_now(now);
        let Some(kcp) = self.kcp.as_mut() else {
            return Verdict::Keep;
        };
        let _ = kcp.update(t);
        if force || kcp.check(t) == 0 {
            let _ = kcp.flush();
            // This flush sent the acks of the batch's input too: the
            // batch's end has nothing left to do for this connection.
            self.dirty = false;
        }
        self.drain(out, now);
        self.after_kcp(out, cfg, now)
    }

    /// Bookkeeping after KCP ran: acked bytes, Writable, dead link, the
    /// next KCP deadline, and CLOSE once a closing connection is all acked.
    fn after_kcp(&mut self, out: &mut Outbox, cfg: &Config, now: Instant) -> Verdict {
        let t = self.kcp_now(now);
        let Some(kcp) = self.kcp.as_ref() else {
            return Verdict::Keep;
        };
        let waiting = kcp.wait_snd() as u64;
        let dead = kcp.is_dead_link();
        self.kcp_due = if waiting > 0 {
            let ms = u64::from(t) + u64::from(kcp.check(t).max(1));
            Some(self.base + Duration::from_millis(ms))
        } else {
            None
        };
        let acked = self.segs_sent.saturating_sub(waiting);
        while let Some(&(end, c)) = self.unacked.front() {
            if end > acked {
                break;
            }
            self.unacked.pop_front();
            self.queued_bytes -= c;
        }
        if self.blocked && self.queued_bytes < cfg.max_queued_bytes {
            self.blocked = false;
            if matches!(self.state, State::Open) {
                out.events.push_back(Event::Writable(ConnId(self.id)));
            }
        }
        if dead {
            return Verdict::End {
                reason: CloseReason::TimedOut,
                abort: true,
            };
        }
        if let State::Closing {
            retry: None,
            deadline,
        } = self.state
        {
            if waiting == 0 {
                self.ctrl(out, T_CLOSE, now);
                self.state = State::Closing {
                    deadline,
                    retry: Some((now + cfg.handshake_retry, cfg.handshake_retry)),
                };
            }
        }
        Verdict::Keep
    }

    /// Moves whole messages from KCP into the inbox (up to `max_recv_bytes`
    /// when `limit`). Returns whether KCP's receive queue shrank.
    fn pull(&mut self, out: &mut Outbox, cfg: &Config, limit: bool) -> Result<bool, Violation> {
        let Some(kcp) = self.kcp.as_mut() else {
            return Ok(false);
        };
        let was_empty = self.inbox.is_empty();
        let mut took = false;
        let mut result = Ok(());
        while !limit || self.inbox_bytes < cfg.max_recv_bytes {
            let Ok(size) = kcp.peeksize() else { break };
            if size > cfg.max_message {
                result = Err(Violation);
                break;
            }
            let mut buf = vec![0u8; size];
            match kcp.recv(&mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    self.inbox_bytes += charge(n);
                    self.inbox.push_back(buf);
                    took = true;
                }
                Err(_) => break,
            }
        }
        if was_empty && !self.inbox.is_empty() {
            out.events.push_back(Event::Readable(ConnId(self.id)));
        }
        result.map(|()| took)
    }

    /// When `on_timer` must run next.
    fn deadline(&self, cfg: &Config) -> Option<Instant> {
        match self.state {
            State::Handshake {
                retry_at, deadline, ..
            } => Some(retry_at.min(deadline)),
            State::Open | State::Closing { .. } => {
                let mut d = (self.last_recv + cfg.idle_timeout).min(self.last_send + cfg.keepalive);
                if let Some(k) = self.kcp_due {
                    d = d.min(k);
                }
                if let State::Closing { deadline, retry } = self.state {
                    d = d.min(deadline);
                    if let Some((at, _)) = retry {
                        d = d.min(at);
                    }
                }
                Some(d)
            }
            State::Done { expires } => Some(expires),
        }
    }

    fn stats(&self) -> Stats {
        Stats {
            rtt: Duration::from_millis(u64::from(self.rtt.srtt)),
            rto: Duration::from_millis(u64::from(self.rtt.rto)),
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            packets_sent: self.packets_sent,
            packets_received: self.packets_received,
            retransmissions: self.retransmissions,
            loss_seen: if self.push_sent == 0 {
                0.0
            } else {
                self.retransmissions as f64 / self.push_sent as f64
            },
            queued_bytes: self.queued_bytes,
        }
    }
}

/// Keeps the connection's entry in `Outbox::timers` no later than its next
/// deadline. A deadline that moved earlier moves the entry; one that moved
/// later leaves it in place: it fires early, `on_timer` finds nothing due
/// and schedules the real deadline. Every send and every ack moves the
/// keepalive and KCP deadlines (later, mostly), and re-sorting the set each
/// time was a visible share of the cost of a small message.
fn schedule(out: &mut Outbox, conn: &mut Conn, cfg: &Config) {
    let next = conn.deadline(cfg);
    let early_enough = match (conn.timer, next) {
        (Some(old), Some(new)) => old <= new,
        (old, new) => old == new,
    };
    if !early_enough {
        if let Some(old) = conn.timer {
            out.timers.remove(&(old, conn.id));
        }
        if let Some(new) = next {
            out.timers.insert((new, conn.id));
        }
        conn.timer = next;
    }
}

// ---------------------------------------------------------------------------
// Endpoint
// ---------------------------------------------------------------------------

/// The sans-IO RUDP endpoint of one UDP socket (see the module docs).
pub struct Endpoint {
    config: Config,
    /// Origin of the key epochs.
    start: Instant,
    /// SipHash key the per-epoch cookie keys are derived from.
    master: (u64, u64),
    /// SipHash key of the nonce/conv generator.
    rng_key: (u64, u64),
    rng_counter: u64,
    /// Epochs skipped by forced rotations.
    epoch_offset: u64,
    next_id: u64,
    conns: IdMap<u64, Conn>,
    /// Established connections by (remote, conv, we are server).
    by_key: HashMap<(SocketAddr, u32, bool), u64>,
    /// Client handshakes by (server address, nonce).
    pending: HashMap<(SocketAddr, u64), u64>,
    /// Accepted connections by (client address, nonce), for CONNECT replays.
    accepted: HashMap<(SocketAddr, u64), u64>,
    /// Ended accepted connections: (client, nonce) -> epoch it ended in.
    ended: HashMap<(SocketAddr, u64), u64>,
    ended_order: VecDeque<((SocketAddr, u64), u64)>,
    ended_cap: usize,
    /// Connections not yet ended.
    live: usize,
    out: Outbox,
    /// Inside `begin_batch` .. `end_batch`: DATA is input to KCP but the
    /// update/flush/check of its connection waits for `end_batch`.
    batching: bool,
    /// Connections that got DATA during the batch, each once.
    dirty: Vec<u64>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("connections", &self.live)
            .field("table", &self.conns.len())
            .field("stats", &self.out.stats)
            .finish()
    }
}

impl Endpoint {
    /// Creates an endpoint. `secret_seed` must be unpredictable to others
    /// (the cookie keys, nonces and convs derive from it).
    ///
    /// # Panics
    ///
    /// If `config` fails [`Config::validate`]; see [`Endpoint::try_new`].
    pub fn new(config: Config, secret_seed: u64, now: Instant) -> Endpoint {
        match Endpoint::try_new(config, secret_seed, now) {
            Ok(ep) => ep,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`Endpoint::new`], returning the config error instead.
    pub fn try_new(
        config: Config,
        secret_seed: u64,
        now: Instant,
    ) -> Result<Endpoint, ConfigError> {
        config.validate()?;
        let mut s = secret_seed;
        let master = (splitmix(&mut s), splitmix(&mut s));
        let rng_key = (splitmix(&mut s), splitmix(&mut s));
        let ended_cap = config.max_connections.saturating_mul(4).max(1024);
        Ok(Endpoint {
            config,
            start: now,
            master,
            rng_key,
            rng_counter: 0,
            epoch_offset: 0,
            next_id: 1,
            conns: IdMap::default(),
            by_key: HashMap::new(),
            pending: HashMap::new(),
            accepted: HashMap::new(),
            ended: HashMap::new(),
            ended_order: VecDeque::new(),
            ended_cap,
            live: 0,
            out: Outbox::default(),
            batching: false,
            dirty: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    // ----- getters ---------------------------------------------------------

    /// Statistics of a connection (also of an ended one whose messages are
    /// still unread).
    pub fn stats(&self, id: ConnId) -> Option<Stats> {
        self.conns.get(&id.0).map(Conn::stats)
    }

    /// Endpoint-wide counters.
    pub fn endpoint_stats(&self) -> EndpointStats {
        self.out.stats
    }

    /// Connections not yet ended (opening, open or closing).
    pub fn connection_count(&self) -> usize {
        self.live
    }

    /// The peer of a connection.
    pub fn remote(&self, id: ConnId) -> Option<SocketAddr> {
        self.conns.get(&id.0).map(|c| c.remote)
    }

    // ----- outputs ---------------------------------------------------------

    /// The instant by which [`Endpoint::handle_timeout`] must run (`None`:
    /// nothing to time). It may be early: a deadline that moved later is not
    /// chased at once, and `handle_timeout` then finds nothing due and only
    /// re-arms.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.out.timers.first().map(|&(t, _)| t)
    }

    /// The next datagram to send, first in first out.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.transmits.pop_front()
    }

    /// Whether [`Endpoint::poll_event`] has something.
    pub fn has_events(&self) -> bool {
        !self.out.events.is_empty()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        let ev = self.out.events.pop_front();
        if let Some(Event::Raw(..)) = ev {
            self.out.raw_pending -= 1;
        }
        ev
    }

    // ----- commands --------------------------------------------------------

    /// Starts a connection to `remote`: sends HELLO. Completes with
    /// [`Event::Connected`] or [`Event::ConnectFailed`]. Messages sent
    /// before that are queued and go out once connected.
    pub fn connect(&mut self, remote: SocketAddr, now: Instant) -> Result<ConnId, Error> {
        if !valid_remote(&remote) {
            return Err(Error::InvalidAddress);
        }
        if self.conns.len() >= self.config.max_connections {
            return Err(Error::TooManyConnections);
        }
        let mut nonce = self.random();
        while nonce == 0 || self.pending.contains_key(&(remote, nonce)) {
            nonce = self.random();
        }
        let id = self.alloc_id();
        let kcp = self.new_kcp(0);
        let retry = self.config.handshake_retry;
        let mut conn = self.new_conn(id, remote, false, nonce, 0, now);
        conn.kcp = Some(kcp);
        conn.state = State::Handshake {
            cookie: None,
            tries: 0,
            retry_at: now + retry,
            interval: retry,
            deadline: now + self.config.handshake_timeout,
        };
        send_hello(&mut self.out, &mut conn, now);
        schedule(&mut self.out, &mut conn, &self.config);
        self.pending.insert((remote, nonce), id);
        self.conns.insert(id, conn);
        self.live += 1;
        Ok(ConnId(id))
    }

    /// Queues one whole message and flushes KCP at once.
    ///
    /// Errors: [`Error::TooLarge`] above `max_message`,
    /// [`Error::WouldBlock`] while `max_queued_bytes` or more are unacked
    /// (then [`Event::Writable`] follows), [`Error::Closed`] once closing or
    /// ended, [`Error::UnknownConnection`].
    pub fn send(&mut self, id: ConnId, msg: &[u8], now: Instant) -> Result<(), Error> {
        let cfg = &self.config;
        let conn = self.conns.get_mut(&id.0).ok_or(Error::UnknownConnection)?;
        match conn.state {
            State::Handshake { .. } | State::Open => {}
            State::Closing { .. } | State::Done { .. } => return Err(Error::Closed),
        }
        if msg.len() > cfg.max_message {
            return Err(Error::TooLarge);
        }
        if conn.queued_bytes >= cfg.max_queued_bytes {
            conn.blocked = true;
            return Err(Error::WouldBlock);
        }
        let Some(kcp) = conn.kcp.as_mut() else {
            return Err(Error::Closed);
        };
        if kcp.send(msg).is_err() {
            return Err(Error::TooLarge);
        }
        conn.segs_sent += segments_for(msg.len(), cfg.mss());
        let c = charge(msg.len());
        conn.unacked.push_back((conn.segs_sent, c));
        conn.queued_bytes += c;
        let verdict = conn.pump(&mut self.out, cfg, now, true);
        schedule(&mut self.out, conn, cfg);
        self.apply(id.0, verdict, now);
        Ok(())
    }

    /// The next whole message, `Ok(None)` if none is waiting. After
    /// [`Event::Closed`] it still returns the messages that had arrived;
    /// taking the last one drops the connection's state.
    pub fn recv(&mut self, id: ConnId) -> Result<Option<Vec<u8>>, Error> {
        let cfg = &self.config;
        let conn = self.conns.get_mut(&id.0).ok_or(Error::UnknownConnection)?;
        let Some(msg) = conn.inbox.pop_front() else {
            return Ok(None);
        };
        conn.inbox_bytes -= charge(msg.len());
        if let State::Done { .. } = conn.state {
            if conn.inbox.is_empty() {
                self.remove(id.0);
            }
            return Ok(Some(msg));
        }
        match conn.pull(&mut self.out, cfg, true) {
            Ok(true) => {
                // The receive window reopened: tell the sender now (KCP sends
                // WINS when its queue was full). No `now` here: flush uses
                // the time of the last update.
                let live = conn.conv != 0 && conn.established();
                if let (true, Some(kcp)) = (live, conn.kcp.as_mut()) {
                    let _ = kcp.flush();
                }
                let now = conn.last_send.max(conn.last_recv);
                conn.drain(&mut self.out, now);
            }
            Ok(false) => {}
            Err(Violation) => {
                let now = conn.last_send.max(conn.last_recv);
                self.apply(
                    id.0,
                    Verdict::End {
                        reason: CloseReason::Aborted,
                        abort: true,
                    },
                    now,
                );
            }
        }
        Ok(Some(msg))
    }

    /// Closes in order: queued messages are delivered and acked, then CLOSE
    /// is exchanged; [`Event::Closed`] with [`CloseReason::LocalClose`]
    /// follows (or `TimedOut` if that takes longer than `idle_timeout`).
    /// The peer sees `Closed(Closed)`. During the handshake it ends the
    /// attempt (`ConnectFailed(LocalClose)`, queued messages dropped).
    pub fn close(&mut self, id: ConnId, now: Instant) {
        let cfg = &self.config;
        let Some(conn) = self.conns.get_mut(&id.0) else {
            return;
        };
        let verdict = match conn.state {
            State::Handshake { .. } => Verdict::End {
                reason: CloseReason::LocalClose,
                abort: false,
            },
            State::Open => {
                conn.state = State::Closing {
                    deadline: now + cfg.idle_timeout,
                    retry: None,
                };
                let v = conn.after_kcp(&mut self.out, cfg, now);
                schedule(&mut self.out, conn, cfg);
                v
            }
            State::Closing { .. } | State::Done { .. } => Verdict::Keep,
        };
        self.apply(id.0, verdict, now);
    }

    /// Aborts at once: sends ABORT, drops queued and unread messages;
    /// [`Event::Closed`] (or `ConnectFailed`) with `LocalAbort` follows and
    /// the peer sees `Closed(Aborted)`. On an ended connection it discards
    /// the unread messages.
    pub fn abort(&mut self, id: ConnId, now: Instant) {
        let Some(conn) = self.conns.get(&id.0) else {
            return;
        };
        match conn.state {
            State::Done { .. } => self.remove(id.0),
            State::Handshake { .. } => self.apply(
                id.0,
                Verdict::End {
                    reason: CloseReason::LocalAbort,
                    abort: false,
                },
                now,
            ),
            State::Open | State::Closing { .. } => self.apply(
                id.0,
                Verdict::End {
                    reason: CloseReason::LocalAbort,
                    abort: true,
                },
                now,
            ),
        }
    }

    /// Drops everything about a connection. A live one is aborted first
    /// (its terminal event is still queued); an ended one loses its unread
    /// messages.
    pub fn forget(&mut self, id: ConnId, now: Instant) {
        self.abort(id, now);
        self.remove(id.0);
    }

    /// Sends a raw datagram from this endpoint's socket (for hole punching
    /// and the like); the other endpoint reports it as [`Event::Raw`].
    pub fn send_raw(&mut self, to: SocketAddr, data: &[u8]) -> Result<(), Error> {
        if data.len() > MAX_DATAGRAM - HEADER_LEN {
            return Err(Error::TooLarge);
        }
        let mut d = Vec::with_capacity(HEADER_LEN + data.len());
        d.extend_from_slice(&header(T_RAW, false));
        d.extend_from_slice(data);
        self.out.push(to, d);
        Ok(())
    }

    /// Sends `data` as it is: a datagram of the foreign protocol
    /// (`Config::foreign_magic`) from this socket, for plain UDP peers.
    pub fn send_foreign(&mut self, to: SocketAddr, data: &[u8]) -> Result<(), Error> {
        if self.config.foreign_magic.is_none() || data.first() != self.config.foreign_magic.as_ref()
        {
            return Err(Error::NotForeign);
        }
        if data.len() > MAX_DATAGRAM {
            return Err(Error::TooLarge);
        }
        self.out.push(to, data.to_vec());
        Ok(())
    }

    // ----- inputs ----------------------------------------------------------

    /// Takes one received datagram. Never panics; whatever is not valid is
    /// counted in [`EndpointStats`] and dropped.
    pub fn handle_datagram(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        self.out.stats.datagrams_in += 1;
        if self.config.foreign_magic.is_some() && data.first() == self.config.foreign_magic.as_ref()
        {
            if self.out.raw_pending >= MAX_PENDING_RAW {
                self.out.stats.raw_dropped += 1;
            } else {
                self.out.raw_pending += 1;
                self.out.events.push_back(Event::Raw(from, data.to_vec()));
            }
            return;
        }
        if data.len() < HEADER_LEN || data[0] != MAGIC || data[1] >> 5 != VERSION {
            self.out.stats.malformed += 1;
            return;
        }
        let from_server = data[1] & ROLE_SERVER != 0;
        let ty = data[1] & TYPE_MASK;
        let len = data.len();
        let body = &data[HEADER_LEN..];
        match (ty, from_server) {
            (T_HELLO, false) if len >= HELLO_LEN => self.on_hello(from, u64_at(body, 0), now),
            (T_CHALLENGE, true) if len == CHALLENGE_LEN => {
                self.on_challenge(from, u64_at(body, 0), u64_at(body, 8), now)
            }
            (T_CONNECT, false) if len == CONNECT_LEN => {
                self.on_connect(from, u64_at(body, 0), u64_at(body, 8), now)
            }
            (T_ACCEPT, true) if len == ACCEPT_LEN => {
                self.on_accept(from, u64_at(body, 0), u32_at(body, 8), now)
            }
            (T_REFUSE, true) if len == REFUSE_LEN => self.on_refuse(from, u64_at(body, 0), now),
            (T_DATA, _) if len >= HEADER_LEN + KCP_HEADER => {
                self.on_data(from, from_server, body, now)
            }
            (T_PING | T_PONG | T_CLOSE | T_CLOSE_ACK | T_ABORT, _) if len == CONV_LEN => {
                self.on_ctrl(from, from_server, ty, u32_at(body, 0), now)
            }
            (T_RAW, false) => {
                if self.out.raw_pending >= MAX_PENDING_RAW {
                    self.out.stats.raw_dropped += 1;
                } else {
                    self.out.raw_pending += 1;
                    self.out.events.push_back(Event::Raw(from, body.to_vec()));
                }
            }
            _ => self.out.stats.malformed += 1,
        }
    }

    /// Starts a batch of [`Endpoint::handle_datagram`] calls: DATA is fed
    /// to KCP at once, but each connection it touched is updated and flushed
    /// only once, in [`Endpoint::end_batch`]. KCP's flush and check scan the
    /// whole send window (up to `send_window` segments), so doing them per
    /// datagram, ACKs included, dominated bulk transfers. A driver that
    /// drains its socket calls `begin_batch`, handles what it read, then
    /// `end_batch` before sending.
    pub fn begin_batch(&mut self) {
        self.batching = true;
    }

    /// Ends a batch: updates and flushes every connection that received
    /// DATA since [`Endpoint::begin_batch`] and was not flushed since (a
    /// [`Endpoint::send`] in between flushes it, acks included).
    pub fn end_batch(&mut self, now: Instant) {
        self.batching = false;
        let dirty = std::mem::take(&mut self.dirty);
        for &id in &dirty {
            let cfg = &self.config;
            let Some(conn) = self.conns.get_mut(&id) else {
                continue;
            };
            if !conn.dirty {
                // Flushed since its input (e.g. a reply sent before the batch
                // ended): the acks went out with it.
                continue;
            }
            let verdict = conn.pump(&mut self.out, cfg, now, true);
            schedule(&mut self.out, conn, cfg);
            self.apply(id, verdict, now);
        }
        // Keep the allocation for the next batch.
        self.dirty = dirty;
        self.dirty.clear();
    }

    /// Runs every timer that is due at `now`: KCP updates, handshake and
    /// CLOSE retries, keepalives, idle and linger timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut due = Vec::new();
        while let Some(&(t, id)) = self.out.timers.first() {
            if t > now {
                break;
            }
            self.out.timers.pop_first();
            if let Some(c) = self.conns.get_mut(&id) {
                c.timer = None;
            }
            due.push(id);
        }
        for id in due {
            self.on_timer(id, now);
        }
    }

    // ----- internals -------------------------------------------------------

    fn alloc_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// 64 unpredictable bits (SipHash of a counter under a seed-derived key).
    fn random(&mut self) -> u64 {
        self.rng_counter += 1;
        SipHasher24::new_with_keys(self.rng_key.0, self.rng_key.1)
            .hash(&self.rng_counter.to_le_bytes())
    }

    fn epoch(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs() / KEY_PERIOD.as_secs()
            + self.epoch_offset
    }

    fn cookie(&self, addr: SocketAddr, nonce: u64, epoch: u64) -> u64 {
        let master = SipHasher24::new_with_keys(self.master.0, self.master.1);
        let mut e = [0u8; 9];
        e[..8].copy_from_slice(&epoch.to_le_bytes());
        let k0 = master.hash(&e);
        e[8] = 1;
        let k1 = master.hash(&e);
        let ip = match addr.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        let mut msg = [0u8; 26];
        msg[..16].copy_from_slice(&ip.octets());
        msg[16..18].copy_from_slice(&addr.port().to_le_bytes());
        msg[18..].copy_from_slice(&nonce.to_le_bytes());
        SipHasher24::new_with_keys(k0, k1).hash(&msg)
    }

    fn cookie_ok(&self, addr: SocketAddr, nonce: u64, cookie: u64, now: Instant) -> bool {
        let e = self.epoch(now);
        self.cookie(addr, nonce, e) == cookie
            || (e > 0 && self.cookie(addr, nonce, e - 1) == cookie)
    }

    fn new_kcp(&self, conv: u32) -> Kcp<Sink> {
        let cfg = &self.config;
        let mut k = Kcp::new(conv, self.out.sink.clone());
        // `validate` guarantees mtu >= MIN_MTU, so this cannot fail.
        let _ = k.set_mtu(cfg.mtu - HEADER_LEN);
        let (nodelay, interval, resend, nc) = cfg.mode.params();
        k.set_nodelay(nodelay, interval as i32, resend, nc);
        if let Some(rto) = cfg.mode.min_rto() {
            k.set_rx_minrto(rto);
        }
        k.set_wndsize(cfg.send_window, cfg.recv_window);
        k
    }

    fn new_conn(
        &self,
        id: u64,
        remote: SocketAddr,
        server: bool,
        nonce: u64,
        conv: u32,
        now: Instant,
    ) -> Conn {
        Conn {
            dirty: false,
            id,
            remote,
            server,
            nonce,
            conv,
            state: State::Open,
            kcp: None,
            base: now,
            kcp_due: None,
            timer: None,
            last_recv: now,
            last_send: now,
            inbox: VecDeque::new(),
            inbox_bytes: 0,
            segs_sent: 0,
            unacked: VecDeque::new(),
            queued_bytes: 0,
            blocked: false,
            next_sn: 0,
            rtt: RttEstimator::new(self.config.mode),
            bytes_sent: 0,
            bytes_received: 0,
            packets_sent: 0,
            packets_received: 0,
            push_sent: 0,
            retransmissions: 0,
        }
    }

    /// Carries out a connection's verdict.
    fn apply(&mut self, id: u64, verdict: Verdict, now: Instant) {
        if let Verdict::End { reason, abort } = verdict {
            if abort {
                if let Some(c) = self.conns.get_mut(&id) {
                    if c.established() {
                        c.ctrl(&mut self.out, T_ABORT, now);
                    }
                }
            }
            self.end(id, reason, now);
        }
    }

    /// Ends a connection: the terminal event, the tables, and the state
    /// unless unread messages remain.
    fn end(&mut self, id: u64, reason: CloseReason, now: Instant) {
        let cfg = &self.config;
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match conn.state {
            State::Done { .. } => return,
            State::Handshake { .. } => {
                let key = (conn.remote, conn.nonce);
                self.out
                    .events
                    .push_back(Event::ConnectFailed(ConnId(id), reason));
                self.live -= 1;
                self.pending.remove(&key);
                self.remove(id);
                return;
            }
            State::Open | State::Closing { .. } => {}
        }
        self.live -= 1;
        if reason == CloseReason::LocalAbort {
            conn.inbox.clear();
            conn.inbox_bytes = 0;
        } else {
            // Everything complete that KCP holds becomes readable; a
            // message larger than max_message is dropped with what follows.
            let _ = conn.pull(&mut self.out, cfg, false);
        }
        conn.kcp = None;
        conn.kcp_due = None;
        conn.unacked.clear();
        conn.queued_bytes = 0;
        conn.state = State::Done {
            expires: now + cfg.idle_timeout,
        };
        let (remote, conv, server, nonce) = (conn.remote, conn.conv, conn.server, conn.nonce);
        let unread = !conn.inbox.is_empty();
        schedule(&mut self.out, conn, cfg);
        self.out.events.push_back(Event::Closed(ConnId(id), reason));
        self.by_key.remove(&(remote, conv, server));
        if server {
            self.accepted.remove(&(remote, nonce));
            self.remember_ended((remote, nonce), now);
        }
        if !unread {
            self.remove(id);
        }
    }

    /// Drops a connection's state entirely (the tables are the caller's).
    fn remove(&mut self, id: u64) {
        if let Some(conn) = self.conns.remove(&id) {
            if let Some(t) = conn.timer {
                self.out.timers.remove(&(t, id));
            }
        }
    }

    fn remember_ended(&mut self, key: (SocketAddr, u64), now: Instant) {
        let e = self.epoch(now);
        while let Some(&(k, ep)) = self.ended_order.front() {
            if ep + 2 > e {
                break;
            }
            self.ended_order.pop_front();
            if self.ended.get(&k) == Some(&ep) {
                self.ended.remove(&k);
            }
        }
        if self.ended_order.len() >= self.ended_cap {
            // Too many to remember: make every outstanding cookie invalid
            // instead (clients mid-handshake fall back to HELLO).
            self.epoch_offset += 2;
            self.ended.clear();
            self.ended_order.clear();
            return;
        }
        let e = self.epoch(now);
        self.ended.insert(key, e);
        self.ended_order.push_back((key, e));
    }

    fn was_ended(&self, key: &(SocketAddr, u64), now: Instant) -> bool {
        self.ended
            .get(key)
            .is_some_and(|&ep| ep + 2 > self.epoch(now))
    }

    fn full(&self) -> bool {
        self.conns.len() >= self.config.max_connections
    }

    fn refuse(&mut self, to: SocketAddr, nonce: u64) {
        self.out.stats.refused += 1;
        let mut d = Vec::with_capacity(REFUSE_LEN);
        d.extend_from_slice(&header(T_REFUSE, true));
        d.extend_from_slice(&nonce.to_le_bytes());
        self.out.push(to, d);
    }

    fn on_hello(&mut self, from: SocketAddr, nonce: u64, now: Instant) {
        if !valid_remote(&from) {
            self.out.stats.malformed += 1;
            return;
        }
        if self.full() && !self.accepted.contains_key(&(from, nonce)) {
            self.refuse(from, nonce);
            return;
        }
        let cookie = self.cookie(from, nonce, self.epoch(now));
        let mut d = Vec::with_capacity(CHALLENGE_LEN);
        d.extend_from_slice(&header(T_CHALLENGE, true));
        d.extend_from_slice(&nonce.to_le_bytes());
        d.extend_from_slice(&cookie.to_le_bytes());
        self.out.push(from, d);
    }

    fn on_challenge(&mut self, from: SocketAddr, nonce: u64, cookie: u64, now: Instant) {
        let Some(&id) = self.pending.get(&(from, nonce)) else {
            self.out.stats.unknown_conn += 1;
            return;
        };
        let cfg = &self.config;
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if let State::Handshake {
            retry_at,
            interval,
            deadline,
            ..
        } = conn.state
        {
            conn.packets_received += 1;
            conn.bytes_received += CHALLENGE_LEN as u64;
            conn.state = State::Handshake {
                cookie: Some(cookie),
                tries: 0,
                retry_at,
                interval,
                deadline,
            };
            send_connect(&mut self.out, conn, cookie, now);
            schedule(&mut self.out, conn, cfg);
        }
    }

    fn on_connect(&mut self, from: SocketAddr, nonce: u64, cookie: u64, now: Instant) {
        if !self.cookie_ok(from, nonce, cookie, now) {
            self.out.stats.bad_cookie += 1;
            return;
        }
        if let Some(&id) = self.accepted.get(&(from, nonce)) {
            // A retry or a replay: same answer, no new state.
            if let Some(conn) = self.conns.get_mut(&id) {
                conn.packets_received += 1;
                conn.bytes_received += CONNECT_LEN as u64;
                send_accept(&mut self.out, conn, now);
            }
            return;
        }
        if self.was_ended(&(from, nonce), now) {
            self.out.stats.replayed += 1;
            return;
        }
        if self.full() {
            self.refuse(from, nonce);
            return;
        }
        let mut conv = 0;
        for _ in 0..16 {
            let c = self.random() as u32;
            if c != 0 && !self.by_key.contains_key(&(from, c, true)) {
                conv = c;
                break;
            }
        }
        if conv == 0 {
            self.refuse(from, nonce);
            return;
        }
        let id = self.alloc_id();
        let mut conn = self.new_conn(id, from, true, nonce, conv, now);
        let mut kcp = self.new_kcp(conv);
        let _ = kcp.update(0);
        conn.kcp = Some(kcp);
        conn.packets_received += 1;
        conn.bytes_received += CONNECT_LEN as u64;
        send_accept(&mut self.out, &mut conn, now);
        schedule(&mut self.out, &mut conn, &self.config);
        self.by_key.insert((from, conv, true), id);
        self.accepted.insert((from, nonce), id);
        self.conns.insert(id, conn);
        self.live += 1;
        self.out.events.push_back(Event::Incoming(ConnId(id), from));
    }

    fn on_accept(&mut self, from: SocketAddr, nonce: u64, conv: u32, now: Instant) {
        let Some(&id) = self.pending.get(&(from, nonce)) else {
            self.out.stats.unknown_conn += 1;
            return;
        };
        if conv == 0 || self.by_key.contains_key(&(from, conv, false)) {
            self.out.stats.malformed += 1;
            return;
        }
        let cfg = &self.config;
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        self.pending.remove(&(from, nonce));
        conn.conv = conv;
        conn.state = State::Open;
        conn.base = now;
        conn.last_recv = now;
        conn.packets_received += 1;
        conn.bytes_received += ACCEPT_LEN as u64;
        if let Some(kcp) = conn.kcp.as_mut() {
            kcp.set_conv(conv);
        }
        self.by_key.insert((from, conv, false), id);
        self.out.events.push_back(Event::Connected(ConnId(id)));
        // Messages sent during the handshake go out now.
        let verdict = conn.pump(&mut self.out, cfg, now, true);
        schedule(&mut self.out, conn, cfg);
        self.apply(id, verdict, now);
    }

    fn on_refuse(&mut self, from: SocketAddr, nonce: u64, now: Instant) {
        let Some(&id) = self.pending.get(&(from, nonce)) else {
            self.out.stats.unknown_conn += 1;
            return;
        };
        self.end(id, CloseReason::Refused, now);
    }

    fn on_data(&mut self, from: SocketAddr, from_server: bool, body: &[u8], now: Instant) {
        let conv = u32_at(body, 0);
        let Some(&id) = self.by_key.get(&(from, conv, !from_server)) else {
            self.out.stats.unknown_conn += 1;
            return;
        };
        let cfg = &self.config;
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let t = conn.kcp_now(now);
        if !conn.acceptable(body, t) {
            self.out.stats.malformed += 1;
            return;
        }
        let Some(kcp) = conn.kcp.as_mut() else {
            return;
        };
        // update first so KCP measures rtt against the current time.
        let _ = kcp.update(t);
        if kcp.input(body).is_err() {
            self.out.stats.malformed += 1;
            return;
        }
        conn.last_recv = now;
        conn.packets_received += 1;
        conn.bytes_received += (HEADER_LEN + body.len()) as u64;
        let mut samples = [0u32; 8];
        let mut n = 0;
        each_segment(body, |s| {
            if s.cmd == CMD_ACK && n < samples.len() {
                samples[n] = t.wrapping_sub(s.ts);
                n += 1;
            }
            true
        });
        for &rtt in &samples[..n] {
            conn.rtt.sample(rtt);
        }
        let mut verdict = match conn.pull(&mut self.out, cfg, true) {
            Ok(_) => Verdict::Keep,
            Err(Violation) => Verdict::End {
                reason: CloseReason::Aborted,
                abort: true,
            },
        };
        if verdict == Verdict::Keep {
            if self.batching {
                // Flushed once for the whole batch, in end_batch.
                if !conn.dirty {
                    conn.dirty = true;
                    self.dirty.push(id);
                }
            } else {
                // Eager: acks and whatever the acks let through go out now.
                verdict = conn.pump(&mut self.out, cfg, now, true);
            }
        }
        schedule(&mut self.out, conn, cfg);
        self.apply(id, verdict, now);
    }

    fn on_ctrl(&mut self, from: SocketAddr, from_server: bool, ty: u8, conv: u32, now: Instant) {
        let Some(&id) = self.by_key.get(&(from, conv, !from_server)) else {
            self.out.stats.unknown_conn += 1;
            // Stateless answers: a CLOSE for something we do not have is
            // done; a PING for it learns that it is gone.
            let reply = match ty {
                T_CLOSE => Some(T_CLOSE_ACK),
                T_PING => Some(T_ABORT),
                _ => None,
            };
            if let Some(r) = reply {
                let mut d = Vec::with_capacity(CONV_LEN);
                d.extend_from_slice(&header(r, !from_server));
                d.extend_from_slice(&conv.to_le_bytes());
                self.out.push(from, d);
            }
            return;
        };
        let cfg = &self.config;
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.last_recv = now;
        conn.packets_received += 1;
        conn.bytes_received += CONV_LEN as u64;
        let verdict = match (ty, conn.state) {
            (T_PING, _) => {
                conn.ctrl(&mut self.out, T_PONG, now);
                Verdict::Keep
            }
            (T_CLOSE, State::Open) => {
                conn.ctrl(&mut self.out, T_CLOSE_ACK, now);
                Verdict::End {
                    reason: CloseReason::Closed,
                    abort: false,
                }
            }
            (T_CLOSE, State::Closing { retry: Some(_), .. }) => {
                // Both closed and all of ours is acked: done.
                conn.ctrl(&mut self.out, T_CLOSE_ACK, now);
                Verdict::End {
                    reason: CloseReason::LocalClose,
                    abort: false,
                }
            }
            // Closing with our data not yet acked: let the peer retry, so
            // it keeps acking until ours is through.
            (T_CLOSE, _) => Verdict::Keep,
            (T_CLOSE_ACK, State::Closing { retry: Some(_), .. }) => Verdict::End {
                reason: CloseReason::LocalClose,
                abort: false,
            },
            (T_ABORT, _) => Verdict::End {
                reason: CloseReason::Aborted,
                abort: false,
            },
            _ => Verdict::Keep,
        };
        schedule(&mut self.out, conn, cfg);
        self.apply(id, verdict, now);
    }

    fn on_timer(&mut self, id: u64, now: Instant) {
        let cfg = &self.config;
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let verdict = match conn.state {
            State::Handshake { .. } => on_timer_handshake(&mut self.out, conn, cfg, now),
            State::Open | State::Closing { .. } => {
                on_timer_established(&mut self.out, conn, cfg, now)
            }
            State::Done { expires } => {
                if now >= expires {
                    self.remove(id);
                    return;
                }
                Verdict::Keep
            }
        };
        schedule(&mut self.out, conn, cfg);
        self.apply(id, verdict, now);
    }
}

fn on_timer_handshake(out: &mut Outbox, conn: &mut Conn, cfg: &Config, now: Instant) -> Verdict {
    let State::Handshake {
        cookie,
        mut tries,
        retry_at,
        interval,
        deadline,
    } = conn.state
    else {
        return Verdict::Keep;
    };
    if now >= deadline {
        return Verdict::End {
            reason: CloseReason::TimedOut,
            abort: false,
        };
    }
    if now < retry_at {
        return Verdict::Keep;
    }
    match cookie {
        Some(c) => {
            send_connect(out, conn, c, now);
            tries += 1;
            if tries > CONNECT_TRIES {
                // Unanswered for a while: the cookie may have expired (a
                // forced key rotation). Ask for a fresh one alongside.
                send_hello(out, conn, now);
            }
        }
        None => send_hello(out, conn, now),
    }
    let interval = (interval * 2).min(cfg.handshake_retry * MAX_BACKOFF);
    conn.state = State::Handshake {
        cookie,
        tries,
        retry_at: now + interval,
        interval,
        deadline,
    };
    Verdict::Keep
}

fn on_timer_established(out: &mut Outbox, conn: &mut Conn, cfg: &Config, now: Instant) -> Verdict {
    if now >= conn.last_recv + cfg.idle_timeout {
        return Verdict::End {
            reason: CloseReason::TimedOut,
            abort: true,
        };
    }
    if let State::Closing { deadline, retry } = conn.state {
        // With `retry` set, everything we sent is acked and CLOSE went out;
        // only the peer's CLOSE_ACK is missing. A peer that has been silent
        // for the whole linger (no ack, no data, no CLOSE of its own) is
        // gone after acking everything, like TCP's lost last ACK: the close
        // succeeded as far as anyone can know. A live peer keeps talking,
        // so we keep retrying until the deadline.
        let linger = cfg.handshake_retry * CLOSE_LINGER_RETRIES;
        if retry.is_some() && now >= conn.last_recv + linger {
            return Verdict::End {
                reason: CloseReason::LocalClose,
                abort: false,
            };
        }
        if now >= deadline {
            return Verdict::End {
                reason: CloseReason::TimedOut,
                abort: true,
            };
        }
    }
    if conn.kcp_due.is_some_and(|t| t <= now) {
        let v = conn.pump(out, cfg, now, false);
        if v != Verdict::Keep {
            return v;
        }
    }
    if let State::Closing {
        deadline,
        retry: Some((at, interval)),
    } = conn.state
    {
        if now >= at {
            conn.ctrl(out, T_CLOSE, now);
            let interval = (interval * 2).min(cfg.handshake_retry * MAX_BACKOFF);
            conn.state = State::Closing {
                deadline,
                retry: Some((now + interval, interval)),
            };
        }
    }
    if now >= conn.last_send + cfg.keepalive {
        conn.ctrl(out, T_PING, now);
    }
    Verdict::Keep
}

fn send_hello(out: &mut Outbox, conn: &mut Conn, now: Instant) {
    let mut d = vec![0u8; HELLO_LEN];
    d[..HEADER_LEN].copy_from_slice(&header(T_HELLO, false));
    d[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&conn.nonce.to_le_bytes());
    conn.sent(out, d, now);
}

fn send_connect(out: &mut Outbox, conn: &mut Conn, cookie: u64, now: Instant) {
    let mut d = Vec::with_capacity(CONNECT_LEN);
    d.extend_from_slice(&header(T_CONNECT, false));
    d.extend_from_slice(&conn.nonce.to_le_bytes());
    d.extend_from_slice(&cookie.to_le_bytes());
    conn.sent(out, d, now);
}

fn send_accept(out: &mut Outbox, conn: &mut Conn, now: Instant) {
    let mut d = Vec::with_capacity(ACCEPT_LEN);
    d.extend_from_slice(&header(T_ACCEPT, true));
    d.extend_from_slice(&conn.nonce.to_le_bytes());
    d.extend_from_slice(&conn.conv.to_le_bytes());
    conn.sent(out, d, now);
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use proptest::prelude::*;

    use super::*;
    use crate::rudp::sim::{Link, Rng, Sim};

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn foreign_datagrams_pass_whole_only_when_configured() {
        let now = Instant::now();
        let from: SocketAddr = "192.0.2.1:4000".parse().expect("addr");
        let frame = [0xB7, 1, 0x30, 0, 0, 0, 0, 0];
        let cfg = Config {
            foreign_magic: Some(0xB7),
            ..Config::default()
        };
        let mut ep = Endpoint::new(cfg, 1, now);
        ep.handle_datagram(from, &frame, now);
        assert_eq!(ep.poll_event(), Some(Event::Raw(from, frame.to_vec())));
        ep.send_foreign(from, &frame).expect("foreign send");
        assert_eq!(ep.poll_transmit().map(|t| t.data), Some(frame.to_vec()));
        assert_eq!(ep.send_foreign(from, &[0xC5, 1]), Err(Error::NotForeign));
        // Without the setting it is garbage, and nothing may be sent raw.
        let mut plain = Endpoint::new(Config::default(), 1, now);
        plain.handle_datagram(from, &frame, now);
        assert_eq!(plain.poll_event(), None);
        assert_eq!(plain.endpoint_stats().malformed, 1);
        assert_eq!(plain.send_foreign(from, &frame), Err(Error::NotForeign));
        let bad = Config {
            foreign_magic: Some(MAGIC),
            ..Config::default()
        };
        assert_eq!(bad.validate(), Err(ConfigError::ForeignMagic));
    }

    /// A deterministic byte stream (the same seed gives the same bytes,
    /// however they are cut into messages).
    struct ByteStream {
        rng: Rng,
        buf: [u8; 8],
        pos: usize,
    }

    impl ByteStream {
        fn new(seed: u64) -> ByteStream {
            ByteStream {
                rng: Rng::new(seed),
                buf: [0; 8],
                pos: 8,
            }
        }

        fn fill(&mut self, out: &mut [u8]) {
            for b in out {
                if self.pos == 8 {
                    self.buf = self.rng.next_u64().to_le_bytes();
                    self.pos = 0;
                }
                *b = self.buf[self.pos];
                self.pos += 1;
            }
        }
    }

    /// Message sizes and contents of one stream, reproducible from a seed.
    struct Script {
        sizes: Rng,
        bytes: ByteStream,
        min: usize,
        max: usize,
        total: usize,
        done: usize,
    }

    impl Script {
        fn new(seed: u64, total: usize, min: usize, max: usize) -> Script {
            Script {
                sizes: Rng::new(seed ^ 0x5151),
                bytes: ByteStream::new(seed),
                min,
                max,
                total,
                done: 0,
            }
        }

        fn finished(&self) -> bool {
            self.done >= self.total
        }

        fn next_len(&mut self) -> usize {
            self.sizes
                .range(self.min, self.max)
                .min(self.total - self.done)
        }

        fn next(&mut self) -> Vec<u8> {
            let mut m = vec![0u8; self.next_len()];
            self.bytes.fill(&mut m);
            self.done += m.len();
            m
        }

        /// Checks that `m` is the next message.
        fn check(&mut self, m: &[u8], scratch: &mut Vec<u8>) -> Result<(), String> {
            if self.finished() {
                return Err(format!("{} extra bytes after the end", m.len()));
            }
            let want = self.next_len();
            if m.len() != want {
                return Err(format!(
                    "message at byte {}: {} bytes, want {want}",
                    self.done,
                    m.len()
                ));
            }
            scratch.resize(want, 0);
            self.bytes.fill(scratch);
            if m != &scratch[..] {
                return Err(format!("message at byte {}: contents differ", self.done));
            }
            self.done += want;
            Ok(())
        }
    }

    /// Sends a scripted stream on one connection.
    struct Sender {
        script: Script,
        pending: Option<Vec<u8>>,
        close_when_done: bool,
        closed: bool,
        would_block: u64,
    }

    /// What the test applications on top of the endpoints do.
    #[derive(Default)]
    struct Apps {
        senders: HashMap<(usize, ConnId), Sender>,
        checkers: HashMap<(usize, ConnId), Script>,
        echoers: HashMap<(usize, ConnId), VecDeque<Vec<u8>>>,
        /// Nodes where every incoming connection echoes.
        echo_nodes: Vec<usize>,
        /// Nodes whose applications do not read (back-pressure tests).
        paused: Vec<usize>,
        connected: Vec<(usize, ConnId)>,
        incoming: Vec<(usize, ConnId, SocketAddr)>,
        closed: Vec<(usize, ConnId, CloseReason, Duration)>,
        failed: Vec<(usize, ConnId, CloseReason, Duration)>,
        raw: Vec<(usize, SocketAddr, Vec<u8>)>,
        writable: u64,
        error: Option<String>,
        scratch: Vec<u8>,
    }

    impl Apps {
        fn send(&mut self, node: usize, id: ConnId, script: Script, close_when_done: bool) {
            self.senders.insert(
                (node, id),
                Sender {
                    script,
                    pending: None,
                    close_when_done,
                    closed: false,
                    would_block: 0,
                },
            );
        }

        fn fail(&mut self, e: String) {
            if self.error.is_none() {
                self.error = Some(e);
            }
        }

        fn pump_sender(&mut self, sim: &mut Sim, key: (usize, ConnId)) {
            let now = sim.now;
            let Some(s) = self.senders.get_mut(&key) else {
                return;
            };
            while !s.script.finished() || s.pending.is_some() {
                let msg = match s.pending.take() {
                    Some(m) => m,
                    None => s.script.next(),
                };
                match sim.ep(key.0).send(key.1, &msg, now) {
                    Ok(()) => {}
                    Err(Error::WouldBlock) => {
                        s.would_block += 1;
                        s.pending = Some(msg);
                        return;
                    }
                    Err(e) => {
                        let e = format!("send on {key:?}: {e}");
                        self.fail(e);
                        return;
                    }
                }
            }
            if s.close_when_done && !s.closed {
                s.closed = true;
                sim.ep(key.0).close(key.1, now);
            }
        }

        fn pump_echo(&mut self, sim: &mut Sim, key: (usize, ConnId)) {
            let now = sim.now;
            let Some(q) = self.echoers.get_mut(&key) else {
                return;
            };
            while let Some(m) = q.pop_front() {
                match sim.ep(key.0).send(key.1, &m, now) {
                    Ok(()) => {}
                    Err(Error::WouldBlock) => {
                        q.push_front(m);
                        return;
                    }
                    Err(_) => {
                        q.clear();
                        return;
                    }
                }
            }
        }

        fn read(&mut self, sim: &mut Sim, key: (usize, ConnId)) {
            if self.paused.contains(&key.0) {
                return;
            }
            loop {
                let m = match sim.ep(key.0).recv(key.1) {
                    Ok(Some(m)) => m,
                    Ok(None) | Err(Error::UnknownConnection) => break,
                    Err(e) => {
                        self.fail(format!("recv on {key:?}: {e}"));
                        break;
                    }
                };
                if let Some(c) = self.checkers.get_mut(&key) {
                    if let Err(e) = c.check(&m, &mut self.scratch) {
                        self.fail(format!("{key:?}: {e}"));
                    }
                }
                if let Some(q) = self.echoers.get_mut(&key) {
                    q.push_back(m);
                }
            }
            if self.echoers.contains_key(&key) {
                self.pump_echo(sim, key);
            }
        }

        /// Starts every sender (call once after adding them).
        fn kick(&mut self, sim: &mut Sim) {
            let keys: Vec<_> = self.senders.keys().copied().collect();
            for k in keys {
                self.pump_sender(sim, k);
            }
        }

        /// Reacts to every event the last step produced.
        fn on_step(&mut self, sim: &mut Sim) {
            for node in 0..sim.nodes.len() {
                while let Some(ev) = sim.nodes[node].events.pop_front() {
                    self.on_event(sim, node, ev);
                }
            }
        }

        fn on_event(&mut self, sim: &mut Sim, node: usize, ev: Event) {
            let at = sim.elapsed();
            match ev {
                Event::Connected(id) => {
                    self.connected.push((node, id));
                    self.pump_sender(sim, (node, id));
                }
                Event::Incoming(id, from) => {
                    self.incoming.push((node, id, from));
                    if self.echo_nodes.contains(&node) {
                        self.echoers.insert((node, id), VecDeque::new());
                    }
                }
                Event::Readable(id) => self.read(sim, (node, id)),
                Event::Writable(id) => {
                    self.writable += 1;
                    self.pump_sender(sim, (node, id));
                    self.pump_echo(sim, (node, id));
                }
                Event::Closed(id, why) => {
                    self.closed.push((node, id, why, at));
                    self.read(sim, (node, id));
                }
                Event::ConnectFailed(id, why) => self.failed.push((node, id, why, at)),
                Event::Raw(from, data) => self.raw.push((node, from, data)),
            }
        }

        fn checkers_done(&self) -> bool {
            self.checkers.values().all(Script::finished)
        }
    }

    /// Runs the apps until `done`, failing the test on an app error or a limit.
    fn drive(
        sim: &mut Sim,
        apps: &mut Apps,
        max_steps: u64,
        max_time: Duration,
        mut done: impl FnMut(&Sim, &Apps) -> bool,
    ) {
        apps.kick(sim);
        let r = sim.run_until(max_steps, max_time, |s| {
            apps.on_step(s);
            apps.error.is_some() || done(s, apps)
        });
        if let Some(e) = &apps.error {
            panic!("application error: {e}");
        }
        r.unwrap();
    }

    /// Connects `a` to `b`; returns the ids on both sides.
    fn connect(sim: &mut Sim, apps: &mut Apps, a: usize, b: usize) -> (ConnId, ConnId) {
        let (to, from, now) = (sim.addr(b), sim.addr(a), sim.now);
        let ca = sim.ep(a).connect(to, now).unwrap();
        let (c0, i0) = (apps.connected.len(), apps.incoming.len());
        drive(sim, apps, 100_000, sim.elapsed() + 30 * SEC, |_, apps| {
            apps.connected[c0..].contains(&(a, ca))
                && apps.incoming[i0..]
                    .iter()
                    .any(|&(n, _, f)| n == b && f == from)
        });
        let cb = apps.incoming[i0..]
            .iter()
            .find(|&&(n, _, f)| n == b && f == from)
            .map(|&(_, id, _)| id)
            .unwrap();
        (ca, cb)
    }

    fn lossy() -> Link {
        Link {
            loss: 0.10,
            duplicate: 0.01,
            delay: 10 * MS,
            jitter: 5 * MS,
            fifo: true,
            reorder: 0.02,
            reorder_delay: 15 * MS,
            rate: Some(200 << 20),
            queue: 50 * MS,
        }
    }

    #[test]
    fn endpoint_is_send() {
        fn send<T: Send>() {}
        send::<Endpoint>();
    }

    #[test]
    fn config_validation() {
        assert_eq!(Config::default().validate(), Ok(()));
        let c = Config {
            mtu: 40,
            ..Config::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::Mtu(40)));
        let c = Config {
            mtu: 500,
            ..Config::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::MaxMessage { .. })));
        let c = Config {
            max_message: c.max_message_limit(),
            ..c
        };
        assert_eq!(c.validate(), Ok(()));
        let c = Config {
            keepalive: 200 * SEC,
            ..Config::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::Keepalive));
        let c = Config {
            send_window: 0,
            ..Config::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::Window));
        let c = Config {
            handshake_retry: Duration::ZERO,
            ..Config::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::OutOfRange(_))));
        assert!(Endpoint::try_new(c, 1, Instant::now()).is_err());
        let e: io::Error = Error::WouldBlock.into();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        let e: io::Error = Error::TooLarge.into();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e: io::Error = Error::Closed.into();
        assert_eq!(e.kind(), io::ErrorKind::NotConnected);
    }

    #[test]
    fn handshake_and_echo() {
        let mut sim = Sim::new(1, Link::default());
        let a = sim.add(Config::default());
        let b = sim.add(Config::default());
        let mut apps = Apps {
            echo_nodes: vec![b],
            ..Apps::default()
        };
        let t0 = sim.now;
        let (ca, _cb) = connect(&mut sim, &mut apps, a, b);
        // HELLO, CHALLENGE, CONNECT, ACCEPT: two round trips of 20 ms.
        assert_eq!(sim.now - t0, 40 * MS);
        assert_eq!(sim.ep(a).remote(ca), Some(sim.addr(b)));
        // Sizes 0 ..= max_message, echoed back whole and in order.
        apps.send(a, ca, Script::new(7, 400_000, 0, 64 * 1024), false);
        apps.checkers
            .insert((a, ca), Script::new(7, 400_000, 0, 64 * 1024));
        drive(&mut sim, &mut apps, 100_000, 60 * SEC, |_, apps| {
            apps.checkers_done()
        });
        let st = sim.ep(a).stats(ca).unwrap();
        assert!(st.rtt >= 20 * MS && st.rtt < 40 * MS, "{st:?}");
        assert_eq!(st.retransmissions, 0);
        assert_eq!(sim.ep(a).connection_count(), 1);
        assert_eq!(sim.ep(b).connection_count(), 1);
        let too_big = vec![0u8; 64 * 1024 + 1];
        let now = sim.now;
        assert_eq!(sim.ep(a).send(ca, &too_big, now), Err(Error::TooLarge));
        assert_eq!(
            sim.ep(a).send(ConnId(999), b"x", now),
            Err(Error::UnknownConnection)
        );
        let e = sim.ep(a).endpoint_stats();
        assert_eq!((e.malformed, e.unknown_conn, e.bad_cookie), (0, 0, 0));
    }

    /// A small message goes out at once (no 10 ms tick): one-way delay only.
    #[test]
    fn send_is_flushed_at_once() {
        let mut sim = Sim::new(2, Link::default());
        let a = sim.add(Config::default());
        let b = sim.add(Config::default());
        let mut apps = Apps::default();
        let (ca, cb) = connect(&mut sim, &mut apps, a, b);
        sim.run_for(SEC, 10_000, |_| {});
        let now = sim.now;
        sim.ep(a).send(ca, b"ping", now).unwrap();
        let t0 = sim.now;
        let mut got = None;
        sim.run_until(1000, 100 * SEC, |s| {
            if let Ok(Some(m)) = s.ep(b).recv(cb) {
                got = Some((m, s.now));
            }
            got.is_some()
        })
        .unwrap();
        let (m, at) = got.unwrap();
        assert_eq!(m, b"ping");
        assert_eq!(at - t0, 10 * MS);
    }

    fn tiny_windows(snd: u16, rcv: u16, seed: u64) {
        let cfg = Config {
            send_window: snd,
            recv_window: rcv,
            ..Config::default()
        };
        let link = Link {
            loss: 0.05,
            jitter: 3 * MS,
            ..Link::default()
        };
        let mut sim = Sim::new(seed, link);
        let a = sim.add(cfg.clone());
        let b = sim.add(cfg);
        let mut apps = Apps::default();
        let (ca, cb) = connect(&mut sim, &mut apps, a, b);
        let total = 50 * 1280;
        apps.send(a, ca, Script::new(11, total, 1280, 1280), false);
        apps.send(b, cb, Script::new(12, total, 1280, 1280), false);
        apps.checkers
            .insert((b, cb), Script::new(11, total, 1280, 1280));
        apps.checkers
            .insert((a, ca), Script::new(12, total, 1280, 1280));
        drive(&mut sim, &mut apps, 1_000_000, 300 * SEC, |_, apps| {
            apps.checkers_done()
        });
    }

    #[test]
    fn flow_control_tiny_windows_5_3() {
        tiny_windows(5, 3, 3);
    }

    #[test]
    fn flow_control_tiny_windows_3_5() {
        tiny_windows(3, 5, 4);
    }

    fn bulk(total: usize, seed: u64, link: Link) {
        bulk_with(total, seed, link, true);
    }

    fn bulk_with(total: usize, seed: u64, link: Link, batch: bool) {
        let mut sim = Sim::new(seed, link.clone());
        sim.batch = batch;
        let a = sim.add(Config::default());
        let b = sim.add(Config::default());
        let mut apps = Apps::default();
        let (ca, cb) = connect(&mut sim, &mut apps, a, b);
        apps.send(a, ca, Script::new(21, total, 1, 64 * 1024), false);
        apps.checkers
            .insert((b, cb), Script::new(21, total, 1, 64 * 1024));
        let (t0, wall) = (sim.elapsed(), Instant::now());
        drive(&mut sim, &mut apps, 50_000_000, 3600 * SEC, |_, apps| {
            apps.checkers_done()
        });
        let virt = (sim.elapsed() - t0).as_secs_f64();
        let wall = wall.elapsed().as_secs_f64();
        let st = sim.ep(a).stats(ca).unwrap();
        let mb = total as f64 / 1e6;
        eprintln!(
            "bulk {mb:.0} MB, {link:?}: {:.1} MB/s virtual ({virt:.2} s), {:.1} MB/s wall ({wall:.2} s), \
             {} steps, rtt {:?}, retransmissions {} (loss seen {:.3}), net {:?}",
            mb / virt,
            mb / wall,
            sim.steps,
            st.rtt,
            st.retransmissions,
            st.loss_seen,
            sim.net,
        );
        assert!(st.retransmissions > 0 && st.loss_seen > 0.05, "{st:?}");
        assert!(apps.closed.is_empty());
    }

    /// 100 MiB byte-exact under 10% loss, 1% duplication and reordering.
    #[test]
    fn bulk_lossy_byte_exact() {
        bulk(100 << 20, 5, lossy());
    }

    /// The lossy bulk again with every datagram handled eagerly (no
    /// begin_batch/end_batch), the path of drivers that do not batch.
    #[test]
    fn bulk_lossy_unbatched_byte_exact() {
        bulk_with(10 << 20, 7, lossy(), false);
    }

    /// The same with jitter that reorders freely: every datagram can
    /// overtake those sent within 5 ms before it.
    #[test]
    fn bulk_heavy_reordering_byte_exact() {
        let link = Link {
            fifo: false,
            ..lossy()
        };
        bulk(10 << 20, 6, link);
    }

    #[test]
    fn thousand_connections_at_once() {
        let link = Link {
            loss: 0.01,
            jitter: 2 * MS,
            delay: 5 * MS,
            ..Link::default()
        };
        let mut sim = Sim::new(6, link);
        let server = sim.add(Config::default());
        let clients: Vec<usize> = (0..20).map(|_| sim.add(Config::default())).collect();
        let mut apps = Apps {
            echo_nodes: vec![server],
            ..Apps::default()
        };
        let now = sim.now;
        let per = 16384;
        let mut ids = Vec::new();
        for (k, &c) in clients.iter().enumerate() {
            for j in 0..50 {
                let to = sim.addr(server);
                let id = sim.ep(c).connect(to, now).unwrap();
                let seed = (k * 50 + j) as u64;
                apps.send(c, id, Script::new(seed, per, 1, 4096), false);
                apps.checkers
                    .insert((c, id), Script::new(seed, per, 1, 4096));
                ids.push((c, id));
            }
        }
        let wall = Instant::now();
        drive(&mut sim, &mut apps, 10_000_000, 600 * SEC, |_, apps| {
            apps.checkers_done()
        });
        eprintln!(
            "1000 connections x {per} B echoed: {:?} virtual, {:?} wall, {} steps",
            sim.elapsed(),
            wall.elapsed(),
            sim.steps
        );
        assert_eq!(apps.connected.len(), 1000);
        assert_eq!(apps.incoming.len(), 1000);
        assert_eq!(sim.ep(server).connection_count(), 1000);
        assert!(apps.closed.is_empty() && apps.failed.is_empty());
    }

    #[test]
    fn back_pressure_send_queue() {
        let cfg = Config {
            max_queued_bytes: 64 * 1024,
            ..Config::default()
        };
        let mut sim = Sim::new(7, Link::default());
        let a = sim.add(cfg);
        let b = sim.add(Config::default());
        let mut apps = Apps::default();
        let (ca, cb) = connect(&mut sim, &mut apps, a, b);
        let now = sim.now;
        let msg = [7u8; 1000];
        let mut n = 0;
        let err = loop {
            match sim.ep(a).send(ca, &msg, now) {
                Ok(()) => n += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(err, Error::WouldBlock);
        assert_eq!(n, (64 * 1024usize).div_ceil(1000 + MSG_CHARGE));
        assert!(sim.ep(a).stats(ca).unwrap().queued_bytes >= 64 * 1024);
        apps.checkers.insert((b, cb), Script::new(0, 0, 0, 0));
        let mut writable_at = None;
        sim.run_until(100_000, 10 * SEC, |s| {
            while let Some(ev) = s.nodes[a].events.pop_front() {
                if ev == Event::Writable(ca) {
                    writable_at = Some(s.elapsed());
                }
            }
            while let Ok(Some(_)) = s.ep(b).recv(cb) {}
            writable_at.is_some()
        })
        .unwrap();
        let now = sim.now;
        sim.ep(a).send(ca, &msg, now).unwrap();
        assert!(sim.ep(a).stats(ca).unwrap().queued_bytes < 64 * 1024 + 2 * 1024);
    }

    /// A receiver that does not read stops the sender through KCP's window
    /// (after max_recv_bytes); reading again resumes the flow, intact.
    #[test]
    fn back_pressure_slow_reader() {
        let snd = Config {
            max_queued_bytes: 64 * 1024,
            ..Config::default()
        };
        let rcv = Config {
            recv_window: 128,
            max_recv_bytes: 32 * 1024,
            ..Config::default()
        };
        let mut sim = Sim::new(8, Link::default());
        let a = sim.add(snd);
        let b = sim.add(rcv);
        let mut apps = Apps::default();
        let (ca, cb) = connect(&mut sim, &mut apps, a, b);
        let total = 4 << 20;
        apps.send(a, ca, Script::new(31, total, 1, 8192), false);
        apps.checkers
            .insert((b, cb), Script::new(31, total, 1, 8192));
        apps.paused.push(b);
        apps.kick(&mut sim);
        sim.run_for(5 * SEC, 1_000_000, |s| apps.on_step(s));
        assert!(apps.error.is_none(), "{:?}", apps.error);
        let blocked = apps.senders[&(a, ca)].would_block;
        let sent = apps.senders[&(a, ca)].script.done;
        assert!(blocked > 0, "sender never blocked");
        assert!(
            sent < 1 << 20,
            "sent {sent} bytes to a reader that does not read"
        );
        // Stays blocked while nobody reads.
        let w0 = apps.writable;
        sim.run_for(5 * SEC, 1_000_000, |s| apps.on_step(s));
        assert_eq!(apps.writable, w0);
        assert_eq!(apps.senders[&(a, ca)].script.done, sent);
        // Reading resumes everything.
        apps.paused.clear();
        apps.read(&mut sim, (b, cb));
        let limit = sim.elapsed() + 60 * SEC;
        drive(&mut sim, &mut apps, 1_000_000, limit, |_, apps| {
            apps.checkers_done()
        });
        assert!(apps.writable > w0);
    }

    #[test]
    fn keepalive_keeps_idle_connection() {
        let cfg = Config {
            keepalive: SEC,
            idle_timeout: 3 * SEC,
            ..Config::default()
        };
        let mut sim = Sim::new(9, Link::default());
        let a = sim.add(cfg.clone());
        let b = sim.add(cfg);
        let mut apps = Apps::default();
        let (ca, cb) = connect(&mut sim, &mut apps, a, b);
        let steps0 = sim.steps;
        sim.run_for(30 * SEC, 100_000, |s| apps.on_step(s));
        assert!(apps.closed.is_empty(), "{:?}", apps.closed);
        assert_eq!(sim.ep(a).connection_count(), 1);
        assert_eq!(sim.ep(b).connection_count(), 1);
        // Idle connections wake for keepalives only, not every KCP tick.
        assert!(sim.steps - steps0 < 200, "{} steps", sim.steps - steps0);
        let now = sim.now;
        sim.ep(a).send(ca, b"still here", now).unwrap();
        sim.run_for(SEC, 1000, |_| {});
        assert_eq!(sim.ep(b).recv(cb), Ok(Some(b"still here".to_vec())));
    }

    #[test]
    fn vanished_peer_times_out() {
        let cfg = Config {
            keepalive: 2 * SEC,
            idle_timeout: 10 * SEC,
            ..Config::default()
        };
        let mut sim = Sim::new(10, Link::default());
        let a = sim.add(cfg.clone());
        let b = sim.add(cfg);
        let mut apps = Apps::default();
        let (ca, _) = connect(&mut sim, &mut apps, a, b);
        sim.run_for(5 * SEC, 10_000, |s| apps.on_step(s));
        sim.nodes[b].up = false;
        let gone = sim.elapsed();
        sim.run_for(20 * SEC, 100_000, |s| apps.on_step(s));
        assert_eq!(apps.closed.len(), 1, "{:?}", apps.closed);
        let (n, id, why, at) = apps.closed[0];
        assert_eq!((n, id, why), (a, ca, CloseReason::TimedOut));
        assert!(
            at - gone <= 12 * SEC && at - gone >= 8 * SEC,
            "{:?}",
            at - gone
        );
        assert_eq!(sim.ep(a).connection_count(), 0);
        let now = sim.now;
        assert_eq!(sim.ep(a).send(ca, b"x", now), Err(Error::UnknownConnection));
    }

    /// A peer that vanishes in the middle of a transfer is detected too.
    #[test]
    fn vanished_peer_during_transfer() {
        let cfg = Config {
            keepalive: 2 * SEC,
            idle_timeout: 10 * SEC,
            ..Config::default()
        };
        let mut sim = Sim::new(11, Link::default());
        let a = sim.add(cfg.clone());
        let b = sim.add(cfg);
        let mut apps = Apps::default();
        let (ca, _) = connect(&mut sim, &mut apps, a, b);
        apps.send(a, ca, Script::new(1, 1 << 30, 1, 1000), false);
        sim.run_for(SEC, 1_000_000, |s| apps.on_step(s));
        apps.kick(&mut sim);
        sim.nodes[b].up = false;
        let gone = sim.elapsed();
        sim.run_for(20 * SEC, 1_000_000, |s| apps.on_step(s));
        let (_, id, why, at) = apps.closed[0];
        assert_eq!((id, why), (ca, CloseReason::TimedOut));
        assert!(at - gone <= 12 * SEC, "{:?}", at - gone);
    }

    #[test]
    fn orderly_close_delivers_everything() {
        let link = Link {
            loss: 0.05,
            jitter: 3 * MS,
            ..Link::default()
        };
        let mut sim = Sim::new(12, link);
        let a = sim.add(Config::default());
        let b = sim.add(Config::default());
        let mut apps = Apps::default();
        let (ca, cb) = connect(&mut sim, &mut apps, a, b);
        let total = 2 << 20;
        apps.send(a, ca, Script::new(41, total, 1, 30_000), true);
        apps.checkers
            .insert((b, cb), Script::new(41, total, 1, 30_000));
        drive(&mut sim, &mut apps, 1_000_000, 120 * SEC, |_, apps| {
            apps.closed.len() == 2
        });
        assert!(apps.checkers_done());
        let mut ends: Vec<_> = apps
            .closed
            .iter()
            .map(|&(n, id, why, _)| (n, id, why))
            .collect();
        ends.sort_by_key(|e| e.0);
        assert_eq!(
            ends,
            vec![
                (a, ca, CloseReason::LocalClose),
                (b, cb, CloseReason::Closed)
            ]
        );
        assert_eq!(sim.ep(a).connection_count(), 0);
        assert_eq!(sim.ep(b).connection_count(), 0);
        assert_eq!(sim.ep(b).recv(cb), Err(Error::UnknownConnection));
    }

    /// Both sides close at once with data in flight: both streams arrive
    /// whole, both sides end with LocalClose.
    #[test]
    fn simultaneous_close() {
        let link = Link {
            loss: 0.05,
            ..Link::default()
        };
        let mut sim = Sim::new(20, link);
        let a = sim.add(Config::default());
        let b = sim.add(Config::default());
        let mut apps = Apps::default();
        let (ca, cb) = connect(&mut sim, &mut apps, a, b);
        apps.send(a, ca, Script::new(1, 300_000, 1, 9000), true);
        apps.send(b, cb, Script::new(2, 300_000, 1, 9000), true);
        apps.checkers
            .insert((b, cb), Script::new(1, 300_000, 1, 9000));
        apps.checkers
            .insert((a, ca), Script::new(2, 300_000, 1, 9000));
        drive(&mut sim, &mut apps, 100_000, 60 * SEC, |_, apps| {
            apps.closed.len() == 2
        });
        assert!(apps.checkers_done());
        assert!(apps.closed.iter().all(|c| c.2 == CloseReason::LocalClose));
    }

    /// Messages already received stay readable after Closed; state goes
    /// with the last one.
    #[test]
    fn closed_connection_keeps_unread_messages() {
        let mut sim = Sim::new(13, Link::default());
        let a = sim.add(Config::default());
        let b = sim.add(Config::default());
        let mut apps = Apps {
            paused: vec![1],
            ..Apps::default()
        };
        let (ca, cb) = connect(&mut sim, &mut apps, a, b);
        let now = sim.now;
        for i in 0..3u8 {
            sim.ep(a).send(ca, &[i; 100], now).unwrap();
        }
        sim.ep(a).close(ca, now);
        assert_eq!(sim.ep(a).send(ca, b"late", now), Err(Error::Closed));
        sim.run_for(SEC, 10_000, |s| apps.on_step(s));
        assert!(apps
            .closed
            .iter()
            .any(|c| c.1 == cb && c.2 == CloseReason::Closed));
        assert_eq!(sim.ep(b).connection_count(), 0);
        assert!(sim.ep(b).stats(cb).is_some());
        for i in 0..3u8 {
            assert_eq!(sim.ep(b).recv(cb), Ok(Some(vec![i; 100])));
        }
        assert_eq!(sim.ep(b).recv(cb), Err(Error::UnknownConnection));
        assert!(sim.ep(b).stats(cb).is_none());
    }

    /// The peer ended the connection but still holds unread messages; its
    /// first CLOSE_ACKs are lost. It must answer our CLOSE retries, so the
    /// close completes after a retry or two, not at the close deadline.
    #[test]
    fn close_completes_when_close_acks_are_lost() {
        let mut sim = Sim::new(31, Link::default());
        sim.drop_matching = Some((2, |d| d.len() > 1 && d[1] & 0x0f == T_CLOSE_ACK));
        let a = sim.add(Config::default());
        let b = sim.add(Config::default());
        let mut apps = Apps {
            paused: vec![1],
            ..Apps::default()
        };
        let (ca, cb) = connect(&mut sim, &mut apps, a, b);
        let now = sim.now;
        sim.ep(a).send(ca, b"unread", now).unwrap();
        sim.ep(a).close(ca, now);
        let start = sim.elapsed();
        sim.run_for(5 * SEC, 100_000, |s| apps.on_step(s));
        let done = apps
            .closed
            .iter()
            .find(|c| c.0 == a && c.1 == ca)
            .expect("our close never completed");
        assert_eq!(done.2, CloseReason::LocalClose);
        assert!(done.3 - start < 3 * SEC, "close took {:?}", done.3 - start);
        assert_eq!(sim.ep(b).recv(cb), Ok(Some(b"unread".to_vec())));
    }

    /// Everything is acked but every CLOSE_ACK is lost (the peer went away
    /// right after): the close still completes, as LocalClose, after the
    /// bounded linger instead of timing out at the idle deadline.
    #[test]
    fn close_completes_when_the_peer_never_acks_the_close() {
        let mut sim = Sim::new(32, Link::default());
        sim.drop_matching = Some((u32::MAX, |d| d.len() > 1 && d[1] & 0x0f == T_CLOSE_ACK));
        let a = sim.add(Config::default());
        let b = sim.add(Config::default());
        let mut apps = Apps::default();
        let (ca, _) = connect(&mut sim, &mut apps, a, b);
        let now = sim.now;
        sim.ep(a).send(ca, b"all of it", now).unwrap();
        sim.ep(a).close(ca, now);
        let start = sim.elapsed();
        sim.run_for(10 * SEC, 100_000, |s| apps.on_step(s));
        let done = apps
            .closed
            .iter()
            .find(|c| c.0 == a && c.1 == ca)
            .expect("our close never completed");
        assert_eq!(done.2, CloseReason::LocalClose);
        let took = done.3 - start;
        assert!(took < 3 * SEC, "close took {took:?}");
    }

    #[test]
    fn abort_is_immediate() {
        let mut sim = Sim::new(14, Link::default());
        let a = sim.add(Config::default());
        let b = sim.add(Config::default());
        let mut apps = Apps::default();
        let (ca, cb) = connect(&mut sim, &mut apps, a, b);
        apps.send(a, ca, Script::new(1, 1 << 30, 1, 1000), false);
        apps.kick(&mut sim);
        sim.run_for(100 * MS, 100_000, |s| apps.on_step(s));
        let now = sim.now;
        sim.ep(a).abort(ca, now);
        sim.run_for(100 * MS, 100_000, |s| apps.on_step(s));
        let ends: Vec<_> = apps
            .closed
            .iter()
            .map(|&(n, id, why, _)| (n, id, why))
            .collect();
        assert_eq!(
            ends,
            vec![
                (a, ca, CloseReason::LocalAbort),
                (b, cb, CloseReason::Aborted)
            ]
        );
        assert_eq!(sim.ep(a).recv(ca), Err(Error::UnknownConnection));
        assert_eq!(sim.ep(a).connection_count(), 0);
        assert_eq!(sim.ep(b).connection_count(), 0);
    }

    /// A lost ABORT is repaired by the stateless ABORT answer to a PING.
    #[test]
    fn lost_abort_learned_at_next_keepalive() {
        let cfg = Config {
            keepalive: SEC,
            idle_timeout: 60 * SEC,
            ..Config::default()
        };
        let mut sim = Sim::new(15, Link::default());
        let a = sim.add(cfg.clone());
        let b = sim.add(cfg);
        let mut apps = Apps::default();
        let (ca, cb) = connect(&mut sim, &mut apps, a, b);
        let now = sim.now;
        sim.ep(a).forget(ca, now);
        while sim.ep(a).poll_transmit().is_some() {} // the ABORT is lost
        sim.run_for(3 * SEC, 10_000, |s| apps.on_step(s));
        assert!(apps
            .closed
            .iter()
            .any(|c| (c.0, c.1, c.2) == (b, cb, CloseReason::Aborted)));
    }

    #[test]
    fn connect_to_nobody_times_out() {
        let mut sim = Sim::new(16, Link::default());
        let a = sim.add(Config::default());
        let mut apps = Apps::default();
        let nobody: SocketAddr = "10.9.9.9:7000".parse().unwrap();
        let now = sim.now;
        let id = sim.ep(a).connect(nobody, now).unwrap();
        sim.run_for(20 * SEC, 10_000, |s| apps.on_step(s));
        assert_eq!(apps.failed.len(), 1);
        let (_, fid, why, at) = apps.failed[0];
        assert_eq!((fid, why), (id, CloseReason::TimedOut));
        assert_eq!(at, 10 * SEC);
        // HELLO at 0, then at 0.25, 0.75, 1.75, 2.75, ... 9.75 s.
        assert_eq!(sim.net.undeliverable, 12);
        assert_eq!(sim.ep(a).connection_count(), 0);
        assert_eq!(sim.ep(a).poll_timeout(), None);
    }

    /// Handshakes complete under 20% loss (retries, HELLO beside CONNECT).
    #[test]
    fn handshake_under_loss() {
        let link = Link {
            loss: 0.2,
            duplicate: 0.05,
            jitter: 10 * MS,
            fifo: false,
            ..Link::default()
        };
        let mut sim = Sim::new(22, link);
        let s = sim.add(Config::default());
        let clients: Vec<usize> = (0..50).map(|_| sim.add(Config::default())).collect();
        let mut apps = Apps::default();
        let (to, now) = (sim.addr(s), sim.now);
        for &c in &clients {
            sim.ep(c).connect(to, now).unwrap();
        }
        drive(&mut sim, &mut apps, 100_000, 60 * SEC, |_, apps| {
            apps.connected.len() + apps.failed.len() == 50
        });
        assert!(apps.failed.is_empty(), "{:?}", apps.failed);
        assert_eq!(sim.ep(s).connection_count(), 50);
    }

    #[test]
    fn max_connections_refused() {
        let server_cfg = Config {
            max_connections: 3,
            ..Config::default()
        };
        let mut sim = Sim::new(17, Link::default());
        let s = sim.add(server_cfg);
        let clients: Vec<usize> = (0..4).map(|_| sim.add(Config::default())).collect();
        let mut apps = Apps::default();
        for &c in &clients[..3] {
            connect(&mut sim, &mut apps, c, s);
        }
        let (to, now) = (sim.addr(s), sim.now);
        let id = sim.ep(clients[3]).connect(to, now).unwrap();
        drive(&mut sim, &mut apps, 10_000, 60 * SEC, |_, apps| {
            !apps.failed.is_empty()
        });
        assert_eq!(apps.failed[0].1, id);
        assert_eq!(apps.failed[0].2, CloseReason::Refused);
        assert!(sim.ep(s).endpoint_stats().refused >= 1);
        assert_eq!(sim.ep(s).connection_count(), 3);
        // The local side has a limit too.
        let one = Config {
            max_connections: 1,
            ..Config::default()
        };
        let mut ep = Endpoint::new(one, 1, now);
        ep.connect(to, now).unwrap();
        assert_eq!(ep.connect(to, now), Err(Error::TooManyConnections));
    }

    #[test]
    fn raw_datagrams_pass_through() {
        let mut sim = Sim::new(18, Link::default());
        let a = sim.add(Config::default());
        let b = sim.add(Config::default());
        let mut apps = Apps::default();
        let (ca, cb) = connect(&mut sim, &mut apps, a, b);
        let (to, now) = (sim.addr(b), sim.now);
        sim.ep(a).send_raw(to, b"punch").unwrap();
        sim.ep(a).send_raw(to, b"").unwrap();
        sim.ep(a).send(ca, b"reliable", now).unwrap();
        assert_eq!(
            sim.ep(a).send_raw(to, &vec![0; MAX_DATAGRAM]),
            Err(Error::TooLarge)
        );
        apps.paused.push(b);
        sim.run_for(SEC, 1000, |s| apps.on_step(s));
        let from = sim.addr(a);
        assert_eq!(
            apps.raw,
            vec![(b, from, b"punch".to_vec()), (b, from, Vec::new())]
        );
        assert_eq!(sim.ep(b).recv(cb), Ok(Some(b"reliable".to_vec())));
        // Raw datagrams need no connection at all.
        let c = sim.add(Config::default());
        let to = sim.addr(c);
        sim.ep(a).send_raw(to, b"hi").unwrap();
        sim.run_for(SEC, 1000, |s| apps.on_step(s));
        assert_eq!(apps.raw.last(), Some(&(c, from, b"hi".to_vec())));
        assert_eq!(sim.ep(c).connection_count(), 0);
    }

    /// A connects to B and B to A at the same time: the role bit keeps
    /// the two connections apart even if their convs were equal.
    #[test]
    fn both_directions_between_one_pair() {
        let mut sim = Sim::new(19, Link::default());
        let a = sim.add(Config::default());
        let b = sim.add(Config::default());
        let mut apps = Apps::default();
        let (ab_a, ab_b) = connect(&mut sim, &mut apps, a, b);
        let (ba_b, ba_a) = connect(&mut sim, &mut apps, b, a);
        apps.send(a, ab_a, Script::new(1, 100_000, 1, 5000), false);
        apps.send(b, ba_b, Script::new(2, 100_000, 1, 5000), false);
        apps.checkers
            .insert((b, ab_b), Script::new(1, 100_000, 1, 5000));
        apps.checkers
            .insert((a, ba_a), Script::new(2, 100_000, 1, 5000));
        drive(&mut sim, &mut apps, 100_000, 60 * SEC, |_, apps| {
            apps.checkers_done()
        });
        assert_eq!(sim.ep(a).connection_count(), 2);
    }

    /// The largest message (127 fragments) at a small MTU, under loss.
    #[test]
    fn largest_message_small_mtu() {
        let mut cfg = Config {
            mtu: 200,
            ..Config::default()
        };
        cfg.max_message = cfg.max_message_limit();
        let max = cfg.max_message;
        let link = Link {
            loss: 0.05,
            ..Link::default()
        };
        let mut sim = Sim::new(21, link);
        let a = sim.add(cfg.clone());
        let b = sim.add(cfg);
        let mut apps = Apps::default();
        let (ca, cb) = connect(&mut sim, &mut apps, a, b);
        apps.send(a, ca, Script::new(3, 5 * max, max, max), false);
        apps.checkers
            .insert((b, cb), Script::new(3, 5 * max, max, max));
        drive(&mut sim, &mut apps, 100_000, 60 * SEC, |_, apps| {
            apps.checkers_done()
        });
        let now = sim.now;
        assert_eq!(
            sim.ep(a).send(ca, &vec![0; max + 1], now),
            Err(Error::TooLarge)
        );
    }

    proptest! {
        #![proptest_config(config(24))]

        /// Whatever the network does (up to 30% loss, duplication,
        /// reordering, jitter), messages arrive whole, in order, both ways.
        #[test]
        fn delivery_on_any_network(
            seed in any::<u64>(),
            loss in 0.0f64..0.3,
            duplicate in 0.0f64..0.1,
            reorder in 0.0f64..0.2,
            jitter_ms in 0u64..30,
            fifo in any::<bool>(),
            max in 1usize..20_000,
        ) {
            let link = Link {
                loss,
                duplicate,
                reorder,
                reorder_delay: 20 * MS,
                jitter: MS * jitter_ms as u32,
                fifo,
                ..Link::default()
            };
            let mut sim = Sim::new(seed, Link::default());
            let a = sim.add(Config::default());
            let b = sim.add(Config::default());
            let mut apps = Apps::default();
            let (ca, cb) = connect(&mut sim, &mut apps, a, b);
            sim.link = link;
            let total = 200_000;
            apps.send(a, ca, Script::new(seed, total, 0, max), true);
            apps.send(b, cb, Script::new(!seed, total, 0, max), true);
            apps.checkers.insert((b, cb), Script::new(seed, total, 0, max));
            apps.checkers.insert((a, ca), Script::new(!seed, total, 0, max));
            drive(&mut sim, &mut apps, 1_000_000, 600 * SEC, |_, apps| {
                apps.checkers_done() && apps.closed.len() == 2
            });
            prop_assert!(apps.failed.is_empty());
        }
    }

    // ----- handshake security, by hand -------------------------------------

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn one(ep: &mut Endpoint) -> Vec<u8> {
        let t = ep.poll_transmit().expect("a datagram");
        t.data
    }

    /// Runs the handshake by hand; returns (client, server, client id, CONNECT bytes).
    fn hand_handshake(now: Instant) -> (Endpoint, Endpoint, ConnId, Vec<u8>) {
        let (ca, sa) = (addr("10.0.0.1:1000"), addr("10.0.0.2:2000"));
        let mut c = Endpoint::new(Config::default(), 1, now);
        let mut s = Endpoint::new(Config::default(), 2, now);
        let id = c.connect(sa, now).unwrap();
        let hello = one(&mut c);
        assert_eq!(hello.len(), HELLO_LEN);
        s.handle_datagram(ca, &hello, now);
        assert_eq!(s.connection_count(), 0, "HELLO must not create state");
        let challenge = one(&mut s);
        assert!(challenge.len() <= hello.len(), "no amplification");
        c.handle_datagram(sa, &challenge, now);
        let connect = one(&mut c);
        s.handle_datagram(ca, &connect, now);
        assert_eq!(s.connection_count(), 1);
        let accept = one(&mut s);
        c.handle_datagram(sa, &accept, now);
        assert_eq!(c.poll_event(), Some(Event::Connected(id)));
        (c, s, id, connect)
    }

    #[test]
    fn connect_replays_and_spoofs() {
        let now = Instant::now();
        let (ca, sa) = (addr("10.0.0.1:1000"), addr("10.0.0.2:2000"));
        let (mut c, mut s, cid, connect) = hand_handshake(now);
        let Some(Event::Incoming(sid, from)) = s.poll_event() else {
            panic!("no Incoming");
        };
        assert_eq!(from, ca);
        let accept = {
            s.handle_datagram(ca, &connect, now);
            one(&mut s)
        };
        // A replay while the connection lives: the same ACCEPT, nothing new.
        s.handle_datagram(ca, &connect, now);
        assert_eq!(one(&mut s), accept);
        assert_eq!(s.connection_count(), 1);
        assert_eq!(s.poll_event(), None);
        // The cookie is bound to the address: from elsewhere it fails.
        s.handle_datagram(addr("10.0.0.3:1000"), &connect, now);
        s.handle_datagram(addr("10.0.0.1:1001"), &connect, now);
        assert_eq!(s.endpoint_stats().bad_cookie, 2);
        assert_eq!(s.connection_count(), 1);
        // After the connection ends, a replay does not resurrect it.
        c.abort(cid, now);
        s.handle_datagram(ca, &one(&mut c), now);
        assert_eq!(
            s.poll_event(),
            Some(Event::Closed(sid, CloseReason::Aborted))
        );
        s.handle_datagram(ca, &connect, now + 5 * SEC);
        assert_eq!(s.endpoint_stats().replayed, 1);
        assert_eq!(s.connection_count(), 0);
        assert_eq!(s.poll_event(), None);
        // Nor later, once the cookie has expired (two key periods).
        s.handle_datagram(ca, &connect, now + 300 * SEC);
        assert_eq!(s.endpoint_stats().bad_cookie, 3);
        assert_eq!(s.connection_count(), 0);
        let _ = sa;
    }

    #[test]
    fn cookie_survives_one_rotation() {
        let now = Instant::now();
        let (ca, sa) = (addr("10.0.0.1:1000"), addr("10.0.0.2:2000"));
        let mut c = Endpoint::new(Config::default(), 1, now);
        let mut s = Endpoint::new(Config::default(), 2, now);
        c.connect(sa, now).unwrap();
        s.handle_datagram(ca, &one(&mut c), now + 119 * SEC);
        let challenge = one(&mut s);
        c.handle_datagram(sa, &challenge, now);
        let connect = one(&mut c);
        // Issued in epoch 0, used in epoch 1: still valid.
        s.handle_datagram(ca, &connect, now + 200 * SEC);
        assert_eq!(s.connection_count(), 1);
        assert_eq!(s.endpoint_stats().bad_cookie, 0);
    }

    #[test]
    fn forced_rotation_when_the_ended_set_is_full() {
        let now = Instant::now();
        let sa = addr("10.0.0.2:2000");
        let cfg = Config {
            max_connections: 1,
            ..Config::default()
        };
        let mut s = Endpoint::new(cfg, 2, now);
        let mut c = Endpoint::new(Config::default(), 1, now);
        let mut first_connect = None;
        // 1024 connections come and go (the remembered set holds 1024).
        for i in 0..1025u32 {
            let ca = SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 1000));
            let id = c.connect(sa, now).unwrap();
            s.handle_datagram(ca, &one(&mut c), now);
            c.handle_datagram(sa, &one(&mut s), now);
            let connect = one(&mut c);
            s.handle_datagram(ca, &connect, now);
            let Some(Event::Incoming(sid, _)) = s.poll_event() else {
                panic!("connection {i} not accepted: {:?}", s.endpoint_stats());
            };
            s.abort(sid, now);
            while s.poll_transmit().is_some() {}
            while s.poll_event().is_some() {}
            c.forget(id, now);
            while c.poll_transmit().is_some() {}
            while c.poll_event().is_some() {}
            if i == 0 {
                first_connect = Some((ca, connect));
            }
        }
        // The first CONNECT was forgotten by the set, but its cookie died
        // with the forced rotation.
        let (ca, connect) = first_connect.unwrap();
        s.handle_datagram(ca, &connect, now);
        assert_eq!(s.connection_count(), 0);
        assert_eq!(s.endpoint_stats().bad_cookie, 1);
    }

    /// Deterministic (fixed seed) and writing no regression files.
    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases,
            failure_persistence: None,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x5EED),
            ..ProptestConfig::default()
        }
    }

    /// Garbage of every kind: no panic, counted, no state created.
    fn garbage_strategy() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..1600),
            // Valid magic and version, any type and role, any body.
            (0u8..32, proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(t, b)| {
                let mut d = vec![MAGIC, (VERSION << 5) | (t & 0x1F)];
                d.extend(b);
                d
            }),
            // Well-formed lengths with random contents.
            (0u8..11, any::<u64>(), any::<u64>()).prop_map(|(t, x, y)| {
                let mut d = vec![MAGIC, (VERSION << 5) | t];
                d.extend(x.to_le_bytes());
                d.extend(y.to_le_bytes());
                let len = match t {
                    T_HELLO => HELLO_LEN,
                    T_ACCEPT => ACCEPT_LEN,
                    T_REFUSE => REFUSE_LEN,
                    T_PING..=T_ABORT => CONV_LEN,
                    _ => CONNECT_LEN,
                };
                d.resize(len, 0);
                d
            }),
        ]
    }

    proptest! {
        #![proptest_config(config(256))]

        #[test]
        fn garbage_creates_no_state(dgrams in proptest::collection::vec(garbage_strategy(), 1..40)) {
            let now = Instant::now();
            let mut ep = Endpoint::new(Config::default(), 3, now);
            let from = addr("10.0.0.9:999");
            for (i, d) in dgrams.iter().enumerate() {
                ep.handle_datagram(from, d, now + MS * i as u32);
            }
            ep.handle_timeout(now + 3600 * SEC);
            let st = ep.endpoint_stats();
            prop_assert_eq!(st.datagrams_in, dgrams.len() as u64);
            let raws = dgrams.iter().filter(|d| d.len() >= 2 && d[0] == MAGIC && d[1] == (VERSION << 5) | T_RAW).count();
            // Every datagram is either counted as dropped, answered
            // statelessly, or a raw datagram.
            prop_assert!(st.malformed + st.unknown_conn + st.bad_cookie + st.refused + st.datagrams_out
                >= (dgrams.len() - raws) as u64);
            prop_assert_eq!(ep.connection_count(), 0);
            prop_assert!(ep.conns.is_empty());
            prop_assert_eq!(ep.poll_timeout(), None);
            while let Some(ev) = ep.poll_event() {
                prop_assert!(matches!(ev, Event::Raw(..)), "{:?}", ev);
            }
            // Replies never exceed the datagram that caused them.
            while let Some(t) = ep.poll_transmit() {
                prop_assert!(t.data.len() <= HELLO_LEN);
            }
        }

        /// Random KCP segments with the right conv from the right address,
        /// into a live connection: no panic (also with overflow checks).
        #[test]
        fn garbage_segments_into_live_connection(
            segs in proptest::collection::vec(
                (any::<u8>(), any::<u8>(), any::<u16>(), any::<u32>(), any::<u32>(), any::<u32>(),
                 proptest::collection::vec(any::<u8>(), 0..40), any::<bool>()),
                1..20)
        ) {
            let now = Instant::now();
            let (mut c, mut s, cid, _) = hand_handshake(now);
            let ca = addr("10.0.0.1:1000");
            let Some(Event::Incoming(_, _)) = s.poll_event() else { panic!() };
            c.send(cid, b"hello", now).unwrap();
            while let Some(t) = c.poll_transmit() {
                s.handle_datagram(ca, &t.data, now);
            }
            let conv = s.by_key.keys().next().unwrap().1;
            for (i, (cmd, frg, wnd, ts, sn, una, body, real_cmd)) in segs.into_iter().enumerate() {
                let cmd = if real_cmd { 81 + cmd % 4 } else { cmd };
                let mut d = vec![MAGIC, (VERSION << 5) | T_DATA];
                d.extend(conv.to_le_bytes());
                d.push(cmd);
                d.push(frg);
                d.extend(wnd.to_le_bytes());
                d.extend(ts.to_le_bytes());
                d.extend((sn % 4096).to_le_bytes());
                d.extend(if i % 2 == 0 { una % 4 } else { una }.to_le_bytes());
                d.extend((body.len() as u32).to_le_bytes());
                d.extend(&body);
                s.handle_datagram(ca, &d, now + MS * i as u32);
                s.handle_timeout(now + MS * i as u32);
            }
            s.handle_timeout(now + 3600 * SEC);
            while s.poll_transmit().is_some() {}
        }
    }
}
