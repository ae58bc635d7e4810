//! What the binaries of `p2p-apps` share: address resolution, logging, and
//! the chat tool's command language and output lines (pure functions, so
//! they are unit-tested here rather than through a process).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

pub mod http;
pub mod media;
pub mod node;
pub mod sched;
pub mod signed;
pub mod vod;

use libnet::p2p::wire::{ChatUser, MAX_CHAT_TEXT, MAX_NAME};
use libnet::p2p::{NatType, NodeId};

/// Resolves `text` (`HOST:PORT` or `IP:PORT`) given for flag `flag`.
/// Prefers an IPv4 address when the name has both. Call it before the
/// runtime starts: name resolution blocks.
pub fn resolve(flag: &str, text: &str) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| format!("{flag} {text:?}: {e} (expected HOST:PORT)"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("{flag} {text:?}: the name has no address"))
}

/// Logs to stderr through `env_logger`: `RUST_LOG` if set, else
/// `default` (e.g. `"warn"`, or `"info"` to see libnet's info lines).
///
/// The default leaves out `libnet::runtime::join`: at shutdown it logs
/// every detached coroutine the runtime cancels (the library's own socket
/// drivers and servers among them) as an error, "detached coroutine
/// panicked", which is how a normal exit ends. A real panic is still
/// printed by Rust's panic hook.
pub fn init_logging(default: &str) {
    let default = format!("{default},libnet::runtime::join=off");
    let env = env_logger::Env::default().default_filter_or(default);
    // A second initialisation (tests) is harmless: keep the first.
    let _ = env_logger::Builder::from_env(env).try_init();
}

/// The address of this host's interface that routes to `to` (no packet is
/// sent: a UDP `connect` only picks the route). Used to replace an
/// unspecified bind address (`0.0.0.0`) with a concrete one, so that the
/// local address peers are told is usable and an unNATted host is
/// classified as open. Blocking-free; call it before the runtime starts.
pub fn route_ip(to: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = if to.is_ipv4() {
        (IpAddr::from([0u8; 4]), 0).into()
    } else {
        (IpAddr::from([0u16; 8]), 0).into()
    };
    let s = std::net::UdpSocket::bind(any).ok()?;
    s.connect(to).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

/// The tracker's TCP address (`--tracker`) and its UDP (Whoami) address:
/// `--tracker-udp` if given, else port 3478 of the tracker's host.
pub fn tracker_addrs(tcp: &str, udp: Option<&str>) -> Result<(SocketAddr, SocketAddr), String> {
    let tracker = resolve("--tracker", tcp)?;
    let udp = match udp {
        Some(u) => resolve("--tracker-udp", u)?,
        None => SocketAddr::new(tracker.ip(), 3478),
    };
    Ok((tracker, udp))
}

/// `bind` with an unspecified IP (`0.0.0.0`) replaced by the address of the
/// interface that routes to `to`, so the address peers are told works.
pub fn concrete_bind(mut bind: SocketAddr, to: SocketAddr) -> SocketAddr {
    if bind.ip().is_unspecified() {
        if let Some(ip) = route_ip(to) {
            bind.set_ip(ip);
        }
    }
    bind
}

/// A NAT type as the chat prints it.
pub fn nat_name(n: NatType) -> &'static str {
    match n {
        NatType::Unknown => "unknown",
        NatType::Open => "open",
        NatType::FullCone => "full-cone",
        NatType::AddressRestricted => "address-restricted",
        NatType::PortRestricted => "port-restricted",
        NatType::Symmetric => "symmetric",
    }
}

/// A node id as the chat prints it when it has no name.
pub fn hex_id(id: NodeId) -> String {
    format!("{id:016x}")
}

/// Text from the network made safe for one line of a terminal: control
/// characters (newlines, escape sequences) become `�`, tabs spaces.
pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\t' => ' ',
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect()
}

/// One line of `list`: `NAME node=HEX public=ADDR ttl=SECS punched=[...]`,
/// the punched nodes by name when `users` has them, else by hex id.
pub fn user_line(u: &ChatUser, users: &[ChatUser]) -> String {
    let punched: Vec<String> = u
        .punched
        .iter()
        .map(|&id| {
            users
                .iter()
                .find(|o| o.node == id)
                .map_or_else(|| hex_id(id), |o| one_line(&o.name))
        })
        .collect();
    format!(
        "{} node={} public={} ttl={} punched=[{}]",
        one_line(&u.name),
        hex_id(u.node),
        u.public,
        u.ttl_secs,
        punched.join(", ")
    )
}

/// Longest `sleep` a script may ask for (one day).
pub const MAX_SLEEP_MS: u64 = 24 * 3600 * 1000;

/// One line of the chat's input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// An empty line or a `#` comment.
    Nothing,
    /// `help`.
    Help,
    /// `login NAME`.
    Login(String),
    /// `logout`.
    Logout,
    /// `list`.
    List,
    /// `whoami`.
    Whoami,
    /// `punch NAME`.
    Punch(String),
    /// `msg NAME TEXT...`.
    Msg(String, String),
    /// `sleep MS`.
    Sleep(u64),
    /// `quit`.
    Quit,
}

/// The command list `help` prints.
pub const HELP: &[&str] = &[
    "login NAME        log in to the chat under NAME",
    "logout            log out (stay registered at the tracker)",
    "list              who is logged in: NAME node=HEX public=ADDR ttl=SECS punched=[...]",
    "whoami            public=ADDR nat=KIND local=ADDR",
    "punch NAME        connect to NAME through the NATs (direct, or relayed with --relay)",
    "msg NAME TEXT...  send TEXT to NAME (punch NAME first)",
    "sleep MS          wait MS milliseconds (for scripts)",
    "quit              log out and exit (so does the end of the input)",
];

/// Checks a chat name: 1 to [`MAX_NAME`] bytes, no whitespace or control
/// characters (commands separate words by whitespace).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a name cannot be empty".into());
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "the name is {} bytes; at most {MAX_NAME}",
            name.len()
        ));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "bad name {name:?}: no spaces or control characters"
        ));
    }
    Ok(())
}

/// Splits off the first whitespace-separated word.
fn word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

/// Parses one input line.
pub fn parse_command(line: &str) -> Result<Command, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(Command::Nothing);
    }
    let (cmd, rest) = word(line);
    let one_name = |usage: &str| -> Result<String, String> {
        let (name, extra) = word(rest);
        if name.is_empty() || !extra.is_empty() {
            return Err(format!("usage: {usage}"));
        }
        check_name(name)?;
        Ok(name.to_string())
    };
    let no_args = |c: Command| {
        if rest.is_empty() {
            Ok(c)
        } else {
            Err(format!("{cmd} takes no arguments"))
        }
    };
    match cmd {
        "help" => no_args(Command::Help),
        "login" => one_name("login NAME").map(Command::Login),
        "logout" => no_args(Command::Logout),
        "list" => no_args(Command::List),
        "whoami" => no_args(Command::Whoami),
        "punch" => one_name("punch NAME").map(Command::Punch),
        "msg" => {
            let (name, text) = word(rest);
            if name.is_empty() || text.is_empty() {
                return Err("usage: msg NAME TEXT...".into());
            }
            check_name(name)?;
            if text.len() > MAX_CHAT_TEXT {
                return Err(format!(
                    "the message is {} bytes; at most {MAX_CHAT_TEXT}",
                    text.len()
                ));
            }
            Ok(Command::Msg(name.into(), text.into()))
        }
        "sleep" => {
            let (ms, extra) = word(rest);
            match ms.parse::<u64>() {
                Ok(ms) if extra.is_empty() && ms <= MAX_SLEEP_MS => Ok(Command::Sleep(ms)),
                _ => Err(format!("usage: sleep MS (0 to {MAX_SLEEP_MS})")),
            }
        }
        "quit" | "exit" => no_args(Command::Quit),
        other => Err(format!("unknown command {other:?} (try help)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(parse_command("  "), Ok(Command::Nothing));
        assert_eq!(parse_command("# a comment"), Ok(Command::Nothing));
        assert_eq!(
            parse_command("login alice"),
            Ok(Command::Login("alice".into()))
        );
        assert_eq!(
            parse_command("punch  bob "),
            Ok(Command::Punch("bob".into()))
        );
        assert_eq!(
            parse_command("msg bob  hello,   world "),
            Ok(Command::Msg("bob".into(), "hello,   world".into()))
        );
        assert_eq!(parse_command("sleep 250"), Ok(Command::Sleep(250)));
        assert_eq!(parse_command("list"), Ok(Command::List));
        assert_eq!(parse_command("quit"), Ok(Command::Quit));
    }

    #[test]
    fn bad_commands_say_why() {
        assert!(parse_command("frobnicate")
            .unwrap_err()
            .contains("unknown command"));
        assert!(parse_command("login").unwrap_err().contains("usage"));
        assert!(parse_command("login a b").unwrap_err().contains("usage"));
        assert!(parse_command("msg bob").unwrap_err().contains("usage"));
        assert!(parse_command("sleep x").unwrap_err().contains("usage"));
        assert!(parse_command("sleep -1").is_err());
        assert!(parse_command("list now")
            .unwrap_err()
            .contains("no arguments"));
        let long = "x".repeat(MAX_NAME + 1);
        assert!(parse_command(&format!("login {long}")).is_err());
        let text = "y".repeat(MAX_CHAT_TEXT + 1);
        assert!(parse_command(&format!("msg bob {text}")).is_err());
    }

    #[test]
    fn list_lines_name_punched_peers() {
        let user = |name: &str, node, punched: Vec<u64>| ChatUser {
            name: name.into(),
            node,
            public: "198.18.0.3:4000".parse().unwrap(),
            ttl_secs: 119,
            punched,
        };
        let users = vec![user("alice", 1, vec![2, 9]), user("bob", 2, vec![])];
        assert_eq!(
            user_line(&users[0], &users),
            "alice node=0000000000000001 public=198.18.0.3:4000 ttl=119 \
             punched=[bob, 0000000000000009]"
        );
        assert_eq!(
            user_line(&users[1], &users),
            "bob node=0000000000000002 public=198.18.0.3:4000 ttl=119 punched=[]"
        );
    }

    #[test]
    fn network_text_stays_on_one_line() {
        assert_eq!(one_line("a\nb\x1b[2Jc\td"), "a\u{fffd}b\u{fffd}[2Jc d");
    }

    #[test]
    fn resolve_reports_the_flag() {
        assert_eq!(
            resolve("--tracker", "127.0.0.1:7000").unwrap(),
            "127.0.0.1:7000".parse::<SocketAddr>().unwrap()
        );
        let e = resolve("--tracker", "no-port-here").unwrap_err();
        assert!(e.contains("--tracker"), "{e}");
    }
}
