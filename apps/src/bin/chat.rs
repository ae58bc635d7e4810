//! `chat`: a command-line chat between peers behind NATs, through a
//! libnet tracker.
//!
//! ```text
//! chat --tracker HOST:7000 [--tracker-udp HOST:3478] [--tracker-udp-alt HOST:3479]
//!      [--bind IP:0] [--relay HOST:PORT] [--name NAME]
//! ```
//!
//! One RUDP socket carries everything UDP: the Whoami that learns our
//! public address (so the address the tracker advertises is that socket's
//! NAT mapping), the punch probes, and the peer connections. A second,
//! plain UDP socket only classifies the NAT. Commands come one per line on
//! stdin (see `help`); results and incoming messages go to stdout, one line
//! each; errors are `error: ...` lines.
//!
//! Threads and coroutines (one libnet loop):
//!
//! ```text
//!  stdin thread ──lines──► main coroutine: runs commands one at a time
//!                                │ punch: Job::Connect ─┐
//!  dispatcher (libnet's Puncher): tracker notifications ▼
//!    PunchNotify answering our attempt ──► its waiter   worker: one punch at a time
//!    PunchNotify from someone else ──► Job::Accept ───► (introduce + punch, or Puncher::accept_peer)
//!  probe router: the socket's raw datagrams ──► the punch their token names
//!  one reader per peer connection: ChatMessage ──► "[FROM] TEXT"
//!  heartbeat: Update every 30 s, NAT keepalive every 15 s
//!  every output line ──► printer thread ──► stdout
//! ```
//!
//! Punches run one at a time because a direct accept takes whichever
//! connection arrives first. Our own attempts are not made with
//! `connect::connect_peer`: it waits for the tracker's answer with
//! `TrackerClient::next_notification`, which would race with the
//! dispatcher; `Puncher::introduce` waits for the dispatcher to hand it
//! over instead, then the steps are the same.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{self, BufRead, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Parser;
use libnet::nat;
use libnet::net::UdpSocket;
use libnet::p2p::client::{classify_nat, whoami_rudp, Hello, ProbeRouter, TrackerClient};
use libnet::p2p::connect::{Options, Path, Puncher};
use libnet::p2p::registry::LOBBY;
use libnet::p2p::wire::Message;
use libnet::p2p::{relay, rudp_config, NatType, NodeId, NodeInfo, Role};
use libnet::rand::random_u64;
use libnet::rudp::{RudpConnection, RudpSocket};
use libnet::sync::{channel, oneshot, Receiver, Sender};
use libnet::time::sleep;
use p2p_apps::{
    check_name, concrete_bind, hex_id, init_logging, nat_name, one_line, parse_command, resolve,
    tracker_addrs, user_line, Command, HELP,
};

/// Most peer connections at once.
const MAX_PEERS: usize = 64;
/// Punch requests (ours and others') queued for the worker.
const MAX_JOBS: usize = 16;
/// Connecting to the tracker, and each tracker request.
const TRACKER_TIMEOUT: Duration = Duration::from_secs(5);
/// Waiting for the tracker's Whoami answer on the RUDP socket.
const WHOAMI_TIMEOUT: Duration = Duration::from_secs(5);
/// The tracker heartbeat (its TTL is 120 s).
const HEARTBEAT: Duration = Duration::from_secs(30);
/// A datagram to the tracker's UDP port from the RUDP socket, so the NAT
/// keeps the mapping the tracker advertises to peers.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Sending a chat message may wait this long for room in the queue.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// At exit, how long to wait for peer connections to finish closing
/// (everything sent is delivered first).
const GRACE: Duration = Duration::from_secs(3);
/// Longest input line.
const MAX_LINE: usize = 16 * 1024;

/// Chat through NATs: log in at a tracker, punch through to other users
/// (or meet them at a relay), and send them messages. Commands are read
/// one per line from stdin; type `help` for the list.
#[derive(Parser, Debug)]
#[command(name = "chat", version)]
struct Args {
    /// The tracker's TCP address.
    #[arg(long, value_name = "HOST:PORT")]
    tracker: String,
    /// The tracker's UDP (Whoami) address [default: the tracker's host, port 3478].
    #[arg(long, value_name = "HOST:PORT")]
    tracker_udp: Option<String>,
    /// The tracker's alternate UDP port [default: the tracker's host, port 3479].
    #[arg(long, value_name = "HOST:PORT")]
    tracker_udp_alt: Option<String>,
    /// Local address of the UDP socket. An unspecified IP (0.0.0.0) stands
    /// for the address of the interface that routes to the tracker.
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:0")]
    bind: SocketAddr,
    /// A relay (a tracker's --relay) to meet peers at when punching fails.
    /// Peers must use the same one.
    #[arg(long, value_name = "HOST:PORT")]
    relay: Option<String>,
    /// Log in under this name at start.
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    name: Option<String>,
}

fn parse_name(s: &str) -> Result<String, String> {
    check_name(s).map(|()| s.to_string())
}

/// The flags, resolved.
struct Setup {
    tracker: SocketAddr,
    tracker_udp: SocketAddr,
    tracker_udp_alt: SocketAddr,
    bind: SocketAddr,
    relay: Option<SocketAddr>,
    name: Option<String>,
}

impl Setup {
    /// Resolves names (blocking: before the runtime starts).
    fn new(a: Args) -> Result<Setup, String> {
        let (tracker, udp) = tracker_addrs(&a.tracker, a.tracker_udp.as_deref())?;
        let alt = match &a.tracker_udp_alt {
            Some(s) => resolve("--tracker-udp-alt", s)?,
            None => SocketAddr::new(tracker.ip(), 3479),
        };
        if alt == udp {
            return Err(format!(
                "--tracker-udp-alt must differ from --tracker-udp (both {udp})"
            ));
        }
        let relay = a
            .relay
            .as_deref()
            .map(|s| resolve("--relay", s))
            .transpose()?;
        let bind = concrete_bind(a.bind, tracker);
        Ok(Setup {
            tracker,
            tracker_udp: udp,
            tracker_udp_alt: alt,
            bind,
            relay,
            name: a.name,
        })
    }
}

/// A line from stdin.
enum Input {
    Line(String),
    TooLong(usize),
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging("warn");
    let setup = match Setup::new(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chat: error: {e}");
            return ExitCode::from(2);
        }
    };
    // Output goes through a printer thread: a loop thread must not block on
    // a pipe whose reader is slow.
    let (out, printed) = channel::<String>(1024);
    let printer = std::thread::Builder::new()
        .name("stdout".into())
        .spawn(move || {
            let stdout = io::stdout();
            while let Ok(line) = printed.recv() {
                let mut o = stdout.lock();
                if writeln!(o, "{line}").and_then(|()| o.flush()).is_err() {
                    break;
                }
            }
        });
    let printer = match printer {
        Ok(t) => t,
        Err(e) => {
            eprintln!("chat: error: cannot start a thread: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Input is read on a plain thread too, and handed in line by line.
    let (lines, input) = channel::<Input>(64);
    let reader = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || read_stdin(&lines));
    if let Err(e) = reader {
        eprintln!("chat: error: cannot start a thread: {e}");
        return ExitCode::FAILURE;
    }
    let rt = match libnet::Runtime::builder().loops(1).build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chat: error: cannot start the libnet runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.run(move || run(setup, out, input));
    // Every sender went with the runtime: the printer drains and ends.
    let _ = printer.join();
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("chat: error: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("chat: error: the runtime stopped: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reads stdin line by line until EOF (dropping `lines` then tells the
/// main coroutine).
fn read_stdin(lines: &Sender<Input>) {
    let mut stdin = io::stdin().lock();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match stdin.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("chat: reading stdin: {e}");
                break;
            }
        }
        let input = if buf.len() > MAX_LINE {
            Input::TooLong(buf.len())
        } else {
            let line = String::from_utf8_lossy(&buf);
            Input::Line(line.trim_end_matches(['\n', '\r']).to_string())
        };
        if lines.send(input).is_err() {
            break;
        }
    }
}

/// A connected peer.
struct Peer {
    name: String,
    conn: Rc<RudpConnection>,
    path: Path,
}

/// Work for the punch worker.
enum Job {
    /// `punch NAME`: connect to `node`; the result line goes to `done`.
    Connect {
        node: NodeId,
        name: String,
        done: oneshot::Sender<Result<String, String>>,
    },
    /// The tracker passed on `peer`'s request to connect to us.
    Accept { peer: NodeInfo, token: u64 },
}

/// Everything the coroutines share (all on one loop).
struct App {
    me: NodeId,
    sock: Rc<RudpSocket>,
    tracker: Rc<TrackerClient>,
    tracker_udp: SocketAddr,
    relay: Option<SocketAddr>,
    public: SocketAddr,
    local: SocketAddr,
    nat: NatType,
    opts: Options,
    out: Sender<String>,
    name: RefCell<Option<String>>,
    peers: RefCell<HashMap<NodeId, Peer>>,
    /// Introductions and punches through the tracker (probes routed by
    /// `router`).
    puncher: Puncher,
    router: Rc<ProbeRouter>,
    jobs: Sender<Job>,
    /// Set once we are leaving: the tracker closing its end is expected.
    leaving: Cell<bool>,
}

fn run(setup: Setup, out: Sender<String>, input: Receiver<Input>) -> Result<(), String> {
    let sock = RudpSocket::bind(setup.bind, rudp_config()).map_err(|e| format!("--bind: {e}"))?;
    let local = sock.local_addr().map_err(|e| e.to_string())?;
    let tracker =
        TrackerClient::connect(setup.tracker, TRACKER_TIMEOUT).map_err(|e| e.to_string())?;
    let public = whoami(&sock, setup.tracker_udp)?;
    let nat = classify(local, setup.tracker_udp, setup.tracker_udp_alt)?;
    let me = random_u64();
    let welcome = tracker
        .hello(&Hello {
            node: me,
            role: Role::Peer,
            room: LOBBY,
            local,
            public: Some(public),
            workload: 0,
            nat,
            key: Vec::new(),
        })
        .map_err(|e| format!("the tracker refused us: {e}"))?;
    let (jobs, job_rx) = channel(MAX_JOBS);
    let sock = Rc::new(sock);
    let tracker = Rc::new(tracker);
    let router = Rc::new(ProbeRouter::new(sock.clone()));
    let opts = Options::default();
    let puncher = Puncher::new(tracker.clone(), router.clone(), me, opts);
    let app = Rc::new(App {
        me,
        sock,
        tracker,
        tracker_udp: setup.tracker_udp,
        relay: setup.relay,
        public: welcome.public.unwrap_or(public),
        local,
        nat,
        opts,
        out,
        name: RefCell::new(None),
        peers: RefCell::new(HashMap::new()),
        puncher,
        router,
        jobs,
        leaving: Cell::new(false),
    });
    app.say(format!(
        "ready node={} public={} nat={} local={} tracker={} relay={} (type help for commands)",
        hex_id(me),
        app.public,
        nat_name(nat),
        local,
        setup.tracker,
        setup
            .relay
            .map_or_else(|| "none".to_string(), |r| r.to_string()),
    ));
    {
        let a = app.clone();
        drop(libnet::spawn(move || a.router.route()));
        let a = app.clone();
        drop(libnet::spawn(move || dispatch(&a)));
        let a = app.clone();
        drop(libnet::spawn(move || work(&a, &job_rx)));
        let a = app.clone();
        drop(libnet::spawn(move || heartbeat(&a)));
    }
    if let Some(name) = setup.name {
        app.command(Command::Login(name));
    }
    loop {
        let line = match input.recv() {
            Ok(Input::Line(l)) => l,
            Ok(Input::TooLong(n)) => {
                app.error(format!("line of {n} bytes ignored (at most {MAX_LINE})"));
                continue;
            }
            Err(_) => break, // end of input
        };
        match parse_command(&line) {
            Ok(Command::Quit) => break,
            Ok(c) => app.command(c),
            Err(e) => app.error(e),
        }
    }
    app.shutdown();
    Ok(())
}

/// Our public address as the tracker sees the RUDP socket (Whoami sent
/// beside the connections, so it uses the socket's NAT mapping).
fn whoami(sock: &RudpSocket, server: SocketAddr) -> Result<SocketAddr, String> {
    whoami_rudp(sock, server, WHOAMI_TIMEOUT)
        .map_err(|e| format!("{e} (check --tracker-udp, and that UDP gets through)"))
}

/// Classifies the NAT in front of this host on a separate plain socket of
/// the same address (the kind of NAT is the same for every socket; the
/// mapping is not, which is why the public address came from the RUDP
/// socket).
fn classify(
    local: SocketAddr,
    primary: SocketAddr,
    alternate: SocketAddr,
) -> Result<NatType, String> {
    let s = UdpSocket::bind(SocketAddr::new(local.ip(), 0))
        .map_err(|e| format!("cannot bind a udp socket on {}: {e}", local.ip()))?;
    let servers = nat::Servers {
        primary,
        alternate,
        other_ip: None,
    };
    let o = classify_nat(&s, servers, nat::Config::default())
        .map_err(|e| format!("NAT classification failed: {e}"))?;
    if o.blocked {
        log::warn!("chat: no answer to NAT classification; NAT type unknown");
    }
    Ok(o.nat)
}

impl App {
    /// Prints a line (parks only this coroutine if the printer lags).
    fn say(&self, line: String) {
        let _ = self.out.send(line);
    }

    fn error(&self, e: impl std::fmt::Display) {
        self.say(format!("error: {e}"));
    }

    fn command(self: &Rc<Self>, c: Command) {
        match c {
            Command::Nothing => {}
            Command::Help => {
                for h in HELP {
                    self.say((*h).to_string());
                }
            }
            Command::Login(name) => match self.tracker.chat_login(&name) {
                Ok(users) => {
                    self.say(format!("logged in as {name} ({} online)", users.len()));
                    *self.name.borrow_mut() = Some(name);
                }
                Err(e) => self.error(format!("login {name}: {e}")),
            },
            Command::Logout => {
                if self.name.borrow().is_none() {
                    return self.error("not logged in");
                }
                match self.tracker.chat_logout() {
                    Ok(_) => {
                        *self.name.borrow_mut() = None;
                        self.say("logged out".into());
                    }
                    Err(e) => self.error(format!("logout: {e}")),
                }
            }
            Command::List => match self.tracker.chat_list() {
                Ok(users) if users.is_empty() => self.say("(nobody logged in)".into()),
                Ok(users) => {
                    for u in &users {
                        self.say(user_line(u, &users));
                    }
                }
                Err(e) => self.error(format!("list: {e}")),
            },
            Command::Whoami => self.say(format!(
                "public={} nat={} local={}",
                self.public,
                nat_name(self.nat),
                self.local
            )),
            Command::Punch(name) => match self.punch(&name) {
                Ok(line) => self.say(line),
                Err(e) => self.error(e),
            },
            Command::Msg(to, text) => match self.send_msg(&to, text) {
                Ok(()) => self.say(format!("sent to {to}")),
                Err(e) => self.error(e),
            },
            Command::Sleep(ms) => sleep(Duration::from_millis(ms)),
            Command::Quit => {}
        }
    }

    /// `punch NAME`: looks NAME up and has the worker connect.
    fn punch(&self, name: &str) -> Result<String, String> {
        if self.name.borrow().as_deref() == Some(name) {
            return Err(format!("{name} is you"));
        }
        let users = self
            .tracker
            .chat_list()
            .map_err(|e| format!("punch {name}: {e}"))?;
        let node = users
            .iter()
            .find(|u| u.name == name)
            .map(|u| u.node)
            .ok_or_else(|| {
                format!("unknown name {name} (not logged in at the tracker; try list)")
            })?;
        if node == self.me {
            return Err(format!("{name} is you"));
        }
        if let Some(p) = self.peers.borrow().get(&node) {
            return Err(format!(
                "already connected to {name} ({})",
                path_text(p.path)
            ));
        }
        let (done, result) = oneshot::channel();
        self.jobs
            .try_send(Job::Connect {
                node,
                name: name.to_string(),
                done,
            })
            .map_err(|_| "too many punches queued; try again".to_string())?;
        result
            .recv()
            .map_err(|_| format!("punch {name}: the worker stopped"))?
    }

    /// `msg NAME TEXT`.
    fn send_msg(&self, to: &str, text: String) -> Result<(), String> {
        let from = self
            .name
            .borrow()
            .clone()
            .ok_or("log in first (login NAME)")?;
        let conn = self
            .peers
            .borrow()
            .values()
            .find(|p| p.name == to)
            .map(|p| p.conn.clone())
            .ok_or_else(|| format!("{to} is not connected (punch {to} first)"))?;
        let frame = Message::ChatMessage {
            from,
            to: to.to_string(),
            text,
        }
        .to_frame()
        .map_err(|e| e.to_string())?;
        conn.send(&frame)
            .map_err(|e| format!("sending to {to} failed: {e}"))
    }

    /// The chat name of `node`, or its hex id when it is not logged in.
    fn name_of(&self, node: NodeId) -> String {
        self.tracker
            .chat_list()
            .ok()
            .and_then(|users| users.into_iter().find(|u| u.node == node))
            .map_or_else(|| hex_id(node), |u| u.name)
    }

    /// Our attempt to reach `node`: the tracker introduces us (it passes
    /// our request on, the peer asks back with the same token), both
    /// punch, then RUDP over the punched path or, failing that, through
    /// the relay. What `connect::connect_peer` does, with the tracker's
    /// answer taken from the dispatcher.
    fn connect(self: &Rc<Self>, node: NodeId, name: &str) -> Result<String, String> {
        if self.peers.borrow().len() >= MAX_PEERS {
            return Err(format!("punch {name}: already {MAX_PEERS} peers connected"));
        }
        let token = random_u64();
        let peer = self
            .puncher
            .introduce(node, LOBBY, token)
            .map_err(|e| match e.kind() {
                io::ErrorKind::TimedOut => format!(
                    "punch {name}: {name} did not answer through the tracker in {:?}",
                    self.opts.notify
                ),
                _ => format!("punch {name}: {e}"),
            })?;
        let attempt = match self.puncher.punch(&peer, token) {
            Ok(addr) => self
                .sock
                .connect(addr)
                .map(|c| (c, Path::Direct(addr)))
                .map_err(|e| format!("punched {addr}, then the connection failed: {e}")),
            Err(e) => match self.relay {
                Some(r) => {
                    log::info!("chat: punching {name} failed ({e}); relaying through {r}");
                    relay::open(&self.sock, r, LOBBY, node, token, self.opts.relay)
                        .map(|c| (c, Path::Relayed(r)))
                        .map_err(|re| format!("{e}; the relay {r} failed too: {re}"))
                }
                None => Err(format!("{e} (and no --relay to fall back on)")),
            },
        };
        match attempt {
            Ok((conn, path)) => {
                let relayed = matches!(path, Path::Relayed(_));
                if let Err(e) = self.tracker.punch_result(token, node, true, relayed) {
                    log::warn!("chat: cannot report the punch to the tracker: {e}");
                }
                self.add_peer(node, name.to_string(), conn, path);
                Ok(match path {
                    Path::Direct(a) => format!("punched {name} direct {a}"),
                    Path::Relayed(r) => format!("punched {name} relayed via {r}"),
                })
            }
            Err(e) => {
                let _ = self.tracker.punch_result(token, node, false, false);
                Err(format!("punch {name}: {e}"))
            }
        }
    }

    /// Someone asked the tracker to connect to us.
    fn accept(self: &Rc<Self>, peer: &NodeInfo, token: u64) {
        let known = self.peers.borrow().contains_key(&peer.id);
        if !known && self.peers.borrow().len() >= MAX_PEERS {
            let who = self.name_of(peer.id);
            return self.error(format!(
                "refused {who}: already {MAX_PEERS} peers connected"
            ));
        }
        match self
            .puncher
            .accept_peer(&self.sock, peer, token, self.relay)
        {
            Ok(pc) => {
                let path = pc.path();
                let conn = pc.into_connection();
                let relayed = matches!(path, Path::Relayed(_));
                if let Err(e) = self.tracker.punch_result(token, peer.id, true, relayed) {
                    log::warn!("chat: cannot report the punch to the tracker: {e}");
                }
                let name = self.name_of(peer.id);
                self.say(format!(
                    "connected {name} {}",
                    if relayed { "relayed" } else { "direct" }
                ));
                self.add_peer(peer.id, name, conn, path);
            }
            Err(e) => {
                let who = self.name_of(peer.id);
                self.error(format!("connection from {who} failed: {e}"));
            }
        }
    }

    /// Keeps `conn` as the connection to `node` (replacing an older one)
    /// and starts reading it.
    fn add_peer(self: &Rc<Self>, node: NodeId, name: String, conn: RudpConnection, path: Path) {
        conn.set_write_timeout(Some(SEND_TIMEOUT));
        let conn = Rc::new(conn);
        let old = self.peers.borrow_mut().insert(
            node,
            Peer {
                name,
                conn: conn.clone(),
                path,
            },
        );
        if let Some(old) = old {
            old.conn.close();
        }
        let app = self.clone();
        drop(libnet::spawn(move || read_peer(&app, node, &conn)));
    }

    /// Logs out, closes every peer connection in order and waits (up to
    /// [`GRACE`]) until they are closed, so what was sent arrives.
    fn shutdown(&self) {
        self.leaving.set(true);
        if self.name.borrow().is_some() {
            match self.tracker.chat_logout() {
                Ok(_) => self.say("logged out".into()),
                Err(e) => log::warn!("chat: logout failed: {e}"),
            }
        }
        let _ = self.tracker.bye();
        let peers: Vec<Peer> = self.peers.borrow_mut().drain().map(|(_, p)| p).collect();
        for p in &peers {
            p.conn.close();
        }
        drop(peers);
        let deadline = Instant::now() + GRACE;
        while self.sock.connection_count() > 0 && Instant::now() < deadline {
            sleep(Duration::from_millis(20));
        }
    }
}

fn path_text(p: Path) -> String {
    match p {
        Path::Direct(a) => format!("direct {a}"),
        Path::Relayed(r) => format!("relayed via {r}"),
    }
}

/// Routes the tracker's notifications (libnet's `Puncher`): a
/// `PunchNotify` answering one of our attempts goes to it, any other is
/// someone who wants to connect.
fn dispatch(app: &Rc<App>) {
    let (tx, rx) = channel::<(NodeInfo, u64)>(MAX_JOBS);
    let a = app.clone();
    drop(libnet::spawn(move || {
        while let Ok((peer, token)) = rx.recv() {
            let id = peer.id;
            if a.jobs.try_send(Job::Accept { peer, token }).is_err() {
                a.error(format!(
                    "too busy to answer {} (punches queued)",
                    hex_id(id)
                ));
            }
        }
    }));
    let e = app.puncher.dispatch(&tx);
    if !app.leaving.get() {
        app.error(e);
    }
}

/// Runs punches one at a time.
fn work(app: &Rc<App>, jobs: &Receiver<Job>) {
    while let Ok(job) = jobs.recv() {
        match job {
            Job::Connect { node, name, done } => {
                let r = app.connect(node, &name);
                let _ = done.send(r);
            }
            Job::Accept { peer, token } => app.accept(&peer, token),
        }
    }
}

/// Tracker heartbeats, and datagrams that keep our NAT mapping open.
fn heartbeat(app: &Rc<App>) {
    let keepalive = Message::Heartbeat.to_frame().unwrap_or_default();
    let mut since_update = Duration::ZERO;
    loop {
        sleep(KEEPALIVE);
        if let Err(e) = app.sock.send_foreign(app.tracker_udp, &keepalive) {
            log::debug!("chat: keepalive failed: {e}");
        }
        since_update += KEEPALIVE;
        if since_update >= HEARTBEAT {
            since_update = Duration::ZERO;
            let load = u32::try_from(app.peers.borrow().len()).unwrap_or(u32::MAX);
            if let Err(e) = app.tracker.update(load, app.nat) {
                // The dispatcher reports the lost connection.
                log::debug!("chat: heartbeat failed: {e}");
                return;
            }
        }
    }
}

/// Prints the chat messages arriving on one peer connection until it ends.
fn read_peer(app: &Rc<App>, node: NodeId, conn: &Rc<RudpConnection>) {
    let why = loop {
        match conn.recv() {
            Ok(Some(frame)) => match Message::decode_frame(&frame) {
                Ok(Message::ChatMessage { from, text, .. }) => {
                    app.say(format!("[{}] {}", one_line(&from), one_line(&text)));
                }
                Ok(other) => log::debug!("chat: ignoring {} from {}", other.name(), hex_id(node)),
                Err(e) => log::debug!("chat: bad frame from {}: {e}", hex_id(node)),
            },
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    // Forget it, unless a newer connection replaced it meanwhile.
    let gone = {
        let mut peers = app.peers.borrow_mut();
        let same = peers.get(&node).is_some_and(|p| Rc::ptr_eq(&p.conn, conn));
        if same {
            peers.remove(&node)
        } else {
            None
        }
    };
    if let Some(p) = gone {
        match why {
            None => app.say(format!("disconnected {}", p.name)),
            Some(e) => app.say(format!("disconnected {} ({e})", p.name)),
        }
    }
}
