//! The tracker client, in blocking style: one TCP connection, requests
//! answered in order, notifications (punch requests from other peers)
//! delivered on their own queue.
//!
//! A reader coroutine decodes every frame: replies go to the oldest
//! waiting request, everything else to the notification queue (bounded; the
//! oldest is dropped and counted when a caller does not keep up).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use super::wire::{CatalogEntry, ChatUser, Decoder, ErrorCode, FileInfo, Holder, Message};
use super::{NatType, NodeId, NodeInfo, Role, RoomId, Strategy};
use crate::net::{TcpStream, UdpSocket};
use crate::sync::oneshot;
use crate::time::deadline_after;

/// Notifications kept for [`TrackerClient::next_notification`].
const NOTES: usize = 256;
/// Requests in flight at once.
const PENDING: usize = 64;

/// What the client shares with its reader coroutine.
struct Shared {
    pending: RefCell<VecDeque<oneshot::Sender<Message>>>,
    notes: RefCell<VecDeque<Message>>,
    note_waiter: RefCell<Option<crate::runtime::Waker>>,
    dropped: Cell<u64>,
    /// Set when the connection ended, with why.
    closed: RefCell<Option<String>>,
}

/// A connection to a tracker.
pub struct TrackerClient {
    conn: Rc<TcpStream>,
    shared: Rc<Shared>,
    timeout: Duration,
    tracker: SocketAddr,
}

/// What the tracker answered to [`TrackerClient::hello`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// Our UDP address as the tracker will tell others.
    pub public: Option<SocketAddr>,
    /// The tracker's identity.
    pub tracker: NodeId,
}

/// How a node introduces itself.
#[derive(Clone, Debug)]
pub struct Hello {
    /// Its identity.
    pub node: NodeId,
    /// Edge, source or peer.
    pub role: Role,
    /// The room it joins.
    pub room: RoomId,
    /// Its UDP address on its own network.
    pub local: SocketAddr,
    /// Its UDP address as a tracker saw it (from [`whoami`]), if known.
    pub public: Option<SocketAddr>,
    /// Its load.
    pub workload: u32,
    /// Its NAT type.
    pub nat: NatType,
    /// The edge key (edges and sources), empty for peers.
    pub key: Vec<u8>,
}

impl TrackerClient {
    /// Connects to the tracker at `addr`; `timeout` bounds the connect and
    /// every request.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TrackerClient> {
        let conn = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| io::Error::new(e.kind(), format!("tracker {addr} unreachable: {e}")))?;
        let _ = conn.set_nodelay(true);
        let conn = Rc::new(conn);
        let shared = Rc::new(Shared {
            pending: RefCell::new(VecDeque::new()),
            notes: RefCell::new(VecDeque::new()),
            note_waiter: RefCell::new(None),
            dropped: Cell::new(0),
            closed: RefCell::new(None),
        });
        {
            let (conn, shared) = (conn.clone(), shared.clone());
            drop(crate::spawn(move || read_loop(&conn, &shared)));
        }
        Ok(TrackerClient {
            conn,
            shared,
            timeout,
            tracker: addr,
        })
    }

    /// The tracker's TCP address.
    pub fn tracker_addr(&self) -> SocketAddr {
        self.tracker
    }

    /// Registers this node.
    pub fn hello(&self, h: &Hello) -> io::Result<Welcome> {
        let m = Message::Hello {
            node: h.node,
            role: h.role,
            room: h.room,
            local: h.local,
            public: h.public,
            workload: h.workload,
            nat: h.nat,
            key: h.key.clone(),
        };
        match self.request(m)? {
            Message::HelloReply {
                public, tracker, ..
            } => Ok(Welcome { public, tracker }),
            other => Err(unexpected(&other)),
        }
    }

    /// Up to `max` nodes of `room`, picked by `strategy` (never this node).
    pub fn nodes(&self, room: RoomId, strategy: Strategy, max: u16) -> io::Result<Vec<NodeInfo>> {
        match self.request(Message::NodesRequest {
            room,
            strategy,
            max,
        })? {
            Message::NodesList { nodes, .. } => Ok(nodes),
            other => Err(unexpected(&other)),
        }
    }

    /// The trackers this tracker knows, itself first.
    pub fn trackers(&self) -> io::Result<Vec<SocketAddr>> {
        match self.request(Message::TrackersRequest)? {
            // A wildcard is at the IP we dialled.
            Message::TrackersList { trackers } => Ok(trackers
                .into_iter()
                .map(|t| super::reached_at(t, self.tracker.ip()))
                .collect()),
            other => Err(unexpected(&other)),
        }
    }

    /// Asks for a new room number (sources; needs the edge key).
    pub fn allocate_room(&self, key: &[u8]) -> io::Result<RoomId> {
        match self.request(Message::RoomAllocate { key: key.to_vec() })? {
            Message::RoomAllocated { room } => Ok(room),
            other => Err(unexpected(&other)),
        }
    }

    /// The heartbeat: current load and NAT type (no reply).
    pub fn update(&self, workload: u32, nat: NatType) -> io::Result<()> {
        self.send(&Message::Update { workload, nat })
    }

    /// Asks the tracker to tell node `to` that we want to punch through to
    /// it (it gets a [`Message::PunchNotify`] carrying our addresses).
    pub fn punch_request(
        &self,
        from: NodeId,
        to: NodeId,
        room: RoomId,
        token: u64,
    ) -> io::Result<()> {
        self.send(&Message::PunchRequest {
            from,
            to,
            room,
            token,
        })
    }

    /// Logs in to chat as `name` (after [`TrackerClient::hello`], usually in
    /// the lobby room); returns who is logged in.
    pub fn chat_login(&self, name: &str) -> io::Result<Vec<ChatUser>> {
        self.chat_users(Message::ChatLogin { name: name.into() })
    }

    /// Logs out of chat; returns who is still logged in.
    pub fn chat_logout(&self) -> io::Result<Vec<ChatUser>> {
        self.chat_users(Message::ChatLogout)
    }

    /// Who is logged in to chat (name, node, public address, seconds left,
    /// whom each has punched through to).
    pub fn chat_list(&self) -> io::Result<Vec<ChatUser>> {
        self.chat_users(Message::ChatListRequest)
    }

    /// Tells the tracker how a punch to `to` ended (it shows in chat lists).
    pub fn punch_result(&self, token: u64, to: NodeId, ok: bool, relayed: bool) -> io::Result<()> {
        self.send(&Message::PunchResult {
            token,
            to,
            ok,
            relayed,
        })
    }

    /// Tells the tracker this node (after [`TrackerClient::hello`]) holds
    /// `have` of `file`'s pieces; call it again as `have` grows. Returns the
    /// file's catalog entry as it now stands. Fails with `AlreadyExists`
    /// when the name stands for another file (another index, size,
    /// duration or piece count), `InvalidInput` for a name the tracker does
    /// not take (empty, control characters, over
    /// [`super::wire::MAX_FILE_NAME`] bytes: that one is refused before
    /// anything is sent) or `have > file.pieces`.
    pub fn publish(&self, file: &FileInfo, have: u32) -> io::Result<CatalogEntry> {
        let m = Message::Publish {
            file: file.clone(),
            have,
        };
        match self.request(m)? {
            Message::Catalog { entries } => entries
                .into_iter()
                .find(|e| e.file.name == file.name)
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("tracker {} did not list {:?}", self.tracker, file.name),
                    )
                }),
            other => Err(unexpected(&other)),
        }
    }

    /// Tells the tracker this node no longer holds the file `name`; returns
    /// what remains of its entry (`None` once nobody holds it).
    pub fn unpublish(&self, name: &str) -> io::Result<Option<CatalogEntry>> {
        match self.request(Message::Unpublish { name: name.into() })? {
            Message::Catalog { entries } => Ok(entries.into_iter().find(|e| e.file.name == name)),
            other => Err(unexpected(&other)),
        }
    }

    /// The files whose names start with `prefix` (empty: all) on the
    /// tracker and its linked trackers, sorted by name: the first
    /// [`super::wire::MAX_CATALOG`] that match (a longer prefix narrows it).
    pub fn catalog(&self, prefix: &str) -> io::Result<Vec<CatalogEntry>> {
        match self.request(Message::CatalogRequest {
            prefix: prefix.into(),
        })? {
            Message::Catalog { entries } => Ok(entries),
            other => Err(unexpected(&other)),
        }
    }

    /// Up to `max` holders of the file `name`, on the tracker and its
    /// linked trackers (never this node); empty for an unknown name.
    /// Complete holders first, then the least loaded. To connect to one,
    /// punch through [`Holder::tracker`] (a `PunchRequest` whose room is
    /// the holder's `node.room`; see `connect::connect_peer`).
    pub fn holders(&self, name: &str, max: u16) -> io::Result<Vec<Holder>> {
        match self.request(Message::HoldersRequest {
            name: name.into(),
            max,
        })? {
            // An unspecified tracker address is the tracker asked: put in
            // the address we reach it at.
            Message::Holders { mut holders, .. } => {
                for h in &mut holders {
                    if h.tracker.ip().is_unspecified() && h.tracker.port() == 0 {
                        h.tracker = self.tracker;
                    }
                }
                Ok(holders)
            }
            other => Err(unexpected(&other)),
        }
    }

    fn chat_users(&self, m: Message) -> io::Result<Vec<ChatUser>> {
        match self.request(m)? {
            Message::ChatList { users } => Ok(users),
            other => Err(unexpected(&other)),
        }
    }

    /// Says goodbye (the tracker drops this node at once).
    pub fn bye(&self) -> io::Result<()> {
        self.send(&Message::Bye)
    }

    /// The next message the tracker sent on its own (e.g. PunchNotify),
    /// waiting up to `timeout` (`None`: forever).
    pub fn next_notification(&self, timeout: Option<Duration>) -> io::Result<Message> {
        let deadline = timeout.map(deadline_after);
        loop {
            if let Some(m) = self.shared.notes.borrow_mut().pop_front() {
                return Ok(m);
            }
            self.check_open()?;
            if deadline.is_some_and(|d| crate::time::clock_now() >= d) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no notification from tracker {} in time", self.tracker),
                ));
            }
            *self.shared.note_waiter.borrow_mut() = Some(crate::runtime::current_waker()?);
            crate::runtime::park_current(deadline)?;
        }
    }

    /// Notifications dropped because nobody took them in time.
    pub fn dropped_notifications(&self) -> u64 {
        self.shared.dropped.get()
    }

    fn check_open(&self) -> io::Result<()> {
        match &*self.shared.closed.borrow() {
            Some(why) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("tracker {} connection closed: {why}", self.tracker),
            )),
            None => Ok(()),
        }
    }

    fn send(&self, m: &Message) -> io::Result<()> {
        self.check_open()?;
        let frame = m.to_frame()?;
        (&*self.conn).write_all(&frame)
    }

    /// Sends `m` and waits for its reply (an Error reply becomes an error).
    fn request(&self, m: Message) -> io::Result<Message> {
        if self.shared.pending.borrow().len() >= PENDING {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "too many tracker requests in flight",
            ));
        }
        // Encode first: a message over a bound fails here, before a waiter
        // is queued that no reply would ever come for.
        let frame = m.to_frame()?;
        self.check_open()?;
        let (tx, rx) = oneshot::channel();
        // Queue before sending: the reply may come before `write_all`
        // returns.
        self.shared.pending.borrow_mut().push_back(tx);
        (&*self.conn).write_all(&frame)?;
        let reply = rx.recv_timeout(self.timeout).map_err(|_| {
            self.check_open().err().unwrap_or_else(|| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("tracker {} did not answer in time", self.tracker),
                )
            })
        })?;
        match reply {
            Message::Error { code, text } => Err(tracker_error(code, &text)),
            r => Ok(r),
        }
    }
}

impl Drop for TrackerClient {
    fn drop(&mut self) {
        let _ = self.conn.shutdown(std::net::Shutdown::Both);
    }
}

/// Replies to requests; everything else is a notification.
fn is_reply(m: &Message) -> bool {
    matches!(
        m,
        Message::HelloReply { .. }
            | Message::NodesList { .. }
            | Message::TrackersList { .. }
            | Message::RoomAllocated { .. }
            | Message::ChatList { .. }
            | Message::Catalog { .. }
            | Message::Holders { .. }
            | Message::Error { .. }
    )
}

fn read_loop(conn: &TcpStream, sh: &Shared) {
    let mut dec = Decoder::new();
    let mut buf = vec![0u8; 16 * 1024];
    let why = 'outer: loop {
        let n = match (&*conn).read(&mut buf) {
            Ok(0) => break "closed by the tracker".to_string(),
            Ok(n) => n,
            Err(e) => break e.to_string(),
        };
        dec.push(&buf[..n]);
        loop {
            match dec.next() {
                Ok(Some(m)) if is_reply(&m) => {
                    let waiter = sh.pending.borrow_mut().pop_front();
                    match waiter {
                        Some(tx) => {
                            let _ = tx.send(m);
                        }
                        // An Error nobody asked for: keep it as a notification.
                        None => push_note(sh, m),
                    }
                }
                Ok(Some(m)) => push_note(sh, m),
                Ok(None) => break,
                Err(e) => break 'outer format!("malformed frame from the tracker: {e}"),
            }
        }
    };
    *sh.closed.borrow_mut() = Some(why);
    // Dropping the senders fails every waiting request.
    sh.pending.borrow_mut().clear();
    if let Some(w) = sh.note_waiter.borrow_mut().take() {
        w.wake();
    }
}

fn push_note(sh: &Shared, m: Message) {
    let mut notes = sh.notes.borrow_mut();
    if notes.len() >= NOTES {
        notes.pop_front();
        sh.dropped.set(sh.dropped.get() + 1);
    }
    notes.push_back(m);
    drop(notes);
    if let Some(w) = sh.note_waiter.borrow_mut().take() {
        w.wake();
    }
}

fn unexpected(m: &Message) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected reply from the tracker: {m:?}"),
    )
}

fn tracker_error(code: u16, text: &str) -> io::Error {
    let kind = match ErrorCode::from_code(code) {
        Some(ErrorCode::BadKey) => io::ErrorKind::PermissionDenied,
        Some(ErrorCode::UnknownRoom | ErrorCode::NotRegistered) => io::ErrorKind::NotFound,
        Some(ErrorCode::TooMany) => io::ErrorKind::OutOfMemory,
        Some(ErrorCode::Conflict) => io::ErrorKind::AlreadyExists,
        Some(ErrorCode::Invalid) => io::ErrorKind::InvalidInput,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, format!("tracker: {text}"))
}

/// Asks the tracker at `server` (UDP) how it sees `sock`: our public
/// address through any NAT. Retries every 200 ms until `timeout`.
pub fn whoami(sock: &UdpSocket, server: SocketAddr, timeout: Duration) -> io::Result<SocketAddr> {
    let old = sock.read_timeout()?;
    let mut buf = [0u8; 512];
    let r = whoami_via(
        |frame| sock.send_to(frame, server).map(drop),
        |wait| {
            sock.set_read_timeout(Some(wait))?;
            let (n, from) = sock.recv_from(&mut buf)?;
            Ok((from, buf[..n].to_vec()))
        },
        server,
        timeout,
    );
    sock.set_read_timeout(old)?;
    r
}

/// [`whoami`] on an RUDP socket (built with [`super::rudp_config`]): the
/// probe goes beside the connections, so the answer is the mapping the
/// socket's RUDP traffic and punch probes use. Other raw datagrams that
/// arrive meanwhile are dropped.
pub fn whoami_rudp(
    sock: &crate::rudp::RudpSocket,
    server: SocketAddr,
    timeout: Duration,
) -> io::Result<SocketAddr> {
    whoami_via(
        |frame| sock.send_foreign(server, frame),
        |wait| sock.recv_raw(Some(wait)),
        server,
        timeout,
    )
}

/// The Whoami exchange over any datagram transport: a probe every 200 ms
/// until the answer quoting its nonce comes back from `server`.
fn whoami_via(
    mut send: impl FnMut(&[u8]) -> io::Result<()>,
    mut recv: impl FnMut(Duration) -> io::Result<(SocketAddr, Vec<u8>)>,
    server: SocketAddr,
    timeout: Duration,
) -> io::Result<SocketAddr> {
    use crate::time::clock_now;
    let nonce = crate::rand::random_u64();
    let probe = Message::Whoami {
        nonce,
        reply_from: super::wire::ReplyFrom::Same,
    }
    .to_frame()?;
    let deadline = deadline_after(timeout);
    loop {
        let round = deadline.min(clock_now() + Duration::from_millis(200));
        if round <= clock_now() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer from tracker {server} (UDP) in {timeout:?}"),
            ));
        }
        send(&probe)?;
        loop {
            let wait = round.saturating_duration_since(clock_now());
            if wait.is_zero() {
                break;
            }
            match recv(wait) {
                Ok((from, data)) if from == server => {
                    if let Ok(Message::WhoamiReply {
                        nonce: got,
                        observed,
                        ..
                    }) = Message::decode_frame(&data)
                    {
                        if got == nonce {
                            return Ok(observed);
                        }
                    }
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                    ) =>
                {
                    break
                }
                // An ICMP error from an earlier datagram: keep trying.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Classifies the NAT in front of `sock` and learns its public address
/// (see [`crate::nat`]): probes the tracker's two UDP ports and, when
/// `servers.other_ip` is set, asks for an answer from the linked tracker on
/// another IP. Use the socket that will later punch and carry RUDP, and
/// bind it to a concrete address (not `0.0.0.0`) so an unNATted host is
/// recognised as `Open`. Takes about two round trips, plus the retry
/// timeouts of tests that get no answer.
pub fn classify_nat(
    sock: &UdpSocket,
    servers: crate::nat::Servers,
    config: crate::nat::Config,
) -> io::Result<crate::nat::Outcome> {
    use crate::time::clock_now;
    let local = sock.local_addr()?;
    let mut c = crate::nat::Classifier::new(
        local,
        servers,
        config,
        crate::rand::random_u64(),
        clock_now(),
    );
    let mut buf = [0u8; 512];
    let result = loop {
        while let Some(p) = c.poll_probe() {
            let frame = Message::Whoami {
                nonce: p.id,
                reply_from: p.reply_from,
            }
            .to_frame()?;
            if let Err(e) = sock.send_to(&frame, p.to) {
                log::debug!("nat: probe to {} failed: {e}", p.to);
            }
        }
        if let Some(o) = c.result() {
            break *o;
        }
        let now = clock_now();
        if c.poll_timeout().is_some_and(|t| t <= now) {
            c.handle_timeout(now);
            continue;
        }
        let wait = c
            .poll_timeout()
            .map_or(Duration::from_millis(200), |t| {
                t.saturating_duration_since(now)
            })
            .max(Duration::from_millis(1));
        sock.set_read_timeout(Some(wait))?;
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                if let Ok(Message::WhoamiReply {
                    nonce, observed, ..
                }) = Message::decode_frame(&buf[..n])
                {
                    c.handle_reply(nonce, observed, from, clock_now());
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                c.handle_timeout(clock_now());
            }
            // An ICMP error from a probe to a closed port: that test just
            // goes unanswered.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) => {
                sock.set_read_timeout(None)?;
                return Err(e);
            }
        }
    };
    sock.set_read_timeout(None)?;
    Ok(result)
}

/// Punches a hole to `peer` on `sock` (the RUDP socket, so the NAT mapping
/// the probes open is the one RUDP uses; it needs [`super::rudp_config`]'s
/// `foreign_magic` so probes travel as plain wire frames) for attempt
/// `token`; returns the peer's address that works both ways. Raw datagrams
/// that are not this attempt's probes are dropped while it runs.
pub fn punch(
    sock: &crate::rudp::RudpSocket,
    me: NodeId,
    peer: crate::nat::punch::PeerAddrs,
    token: u64,
    config: crate::nat::punch::Config,
) -> io::Result<SocketAddr> {
    punch_via(
        |to, frame| sock.send_foreign(to, frame),
        |wait| sock.recv_raw(Some(wait)),
        me,
        peer,
        token,
        config,
    )
}

/// [`punch`] over any datagram transport: `send(to, frame)` sends a probe
/// (from the socket whose mapping is being opened), `recv(wait)` returns
/// the next datagram that may be a probe of this attempt, or fails with
/// `TimedOut` after `wait`. A node running several punches at once on one
/// socket routes each attempt's probes (by token) to its own `recv`.
pub fn punch_via(
    mut send: impl FnMut(SocketAddr, &[u8]) -> io::Result<()>,
    mut recv: impl FnMut(Duration) -> io::Result<(SocketAddr, Vec<u8>)>,
    me: NodeId,
    peer: crate::nat::punch::PeerAddrs,
    token: u64,
    config: crate::nat::punch::Config,
) -> io::Result<SocketAddr> {
    use crate::nat::punch::{Outcome, Punch};
    use crate::time::clock_now;
    let mut p = Punch::new(token, me, peer, config, clock_now());
    loop {
        let now = clock_now();
        p.handle_timeout(now);
        for probe in p.poll_probes(now) {
            let frame = Message::PunchProbe {
                token: probe.token,
                from: probe.from,
                heard: probe.heard,
            }
            .to_frame()?;
            if let Err(e) = send(probe.to, &frame) {
                log::debug!("punch: probe to {} failed: {e}", probe.to);
            }
        }
        let Some(next) = p.poll_timeout() else {
            return match p.outcome() {
                Some(Outcome::Direct(addr)) => Ok(addr),
                _ => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("punching to node {:016x} failed", peer.id),
                )),
            };
        };
        let wait = next.saturating_duration_since(clock_now());
        if wait.is_zero() {
            continue;
        }
        match recv(wait) {
            Ok((from, data)) => {
                if let Ok(Message::PunchProbe {
                    token,
                    from: sender,
                    heard,
                }) = Message::decode_frame(&data)
                {
                    p.handle_probe(from, token, sender, heard, clock_now());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e),
        }
    }
}

/// Runs several punches on one RUDP socket at once: [`ProbeRouter::route`]
/// (a coroutine of its own) takes every raw datagram of the socket and
/// hands each `PunchProbe` to the attempt its token names;
/// [`ProbeRouter::punch`] is [`punch`] with those probes. Other raw
/// datagrams are dropped while the router runs, so run address discovery
/// (`whoami_rudp`) before starting it.
pub struct ProbeRouter {
    sock: Rc<crate::rudp::RudpSocket>,
    attempts: RefCell<std::collections::HashMap<u64, ProbeSender>>,
}

/// Where one attempt's probes go.
type ProbeSender = crate::sync::Sender<(SocketAddr, Vec<u8>)>;

/// Probes queued per attempt; more are dropped (probes repeat).
const PROBES_QUEUED: usize = 64;

impl ProbeRouter {
    /// A router for `sock` (made with [`super::rudp_config`]).
    pub fn new(sock: Rc<crate::rudp::RudpSocket>) -> ProbeRouter {
        ProbeRouter {
            sock,
            attempts: RefCell::new(std::collections::HashMap::new()),
        }
    }

    /// Routes probes until the socket stops giving raw datagrams.
    pub fn route(&self) {
        loop {
            let (from, data) = match self.sock.recv_raw(None) {
                Ok(d) => d,
                Err(e) => {
                    log::debug!("punch: raw datagrams ended: {e}");
                    return;
                }
            };
            if let Ok(Message::PunchProbe { token, .. }) = Message::decode_frame(&data) {
                if let Some(tx) = self.attempts.borrow().get(&token) {
                    let _ = tx.try_send((from, data));
                }
            }
        }
    }

    /// [`punch`] for attempt `token`, fed by [`ProbeRouter::route`].
    pub fn punch(
        &self,
        me: NodeId,
        peer: crate::nat::punch::PeerAddrs,
        token: u64,
        config: crate::nat::punch::Config,
    ) -> io::Result<SocketAddr> {
        let (tx, rx) = crate::sync::channel(PROBES_QUEUED);
        {
            let mut attempts = self.attempts.borrow_mut();
            if attempts.contains_key(&token) {
                // Replacing it would starve the running one of probes.
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("a punch with token {token:016x} is already running"),
                ));
            }
            attempts.insert(token, tx);
        }
        // Unregistered however this ends (also when unwound).
        let _gone = Unregister(self, token);
        punch_via(
            |to, frame| self.sock.send_foreign(to, frame),
            |wait| {
                rx.recv_timeout(wait).map_err(|e| match e {
                    crate::sync::RecvTimeoutError::Timeout => io::ErrorKind::TimedOut.into(),
                    crate::sync::RecvTimeoutError::Disconnected => io::ErrorKind::BrokenPipe.into(),
                })
            },
            me,
            peer,
            token,
            config,
        )
    }
}

/// Removes an attempt from its router when dropped.
struct Unregister<'a>(&'a ProbeRouter, u64);

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.0.attempts.borrow_mut().remove(&self.1);
    }
}

/// The peer's addresses as a [`NodeInfo`] from the tracker gives them.
pub fn peer_addrs(n: &NodeInfo) -> crate::nat::punch::PeerAddrs {
    crate::nat::punch::PeerAddrs {
        id: n.id,
        public: n.public,
        local: n.local,
        nat: n.nat,
    }
}
