//! A small emulated internet for tests: hosts in network namespaces, a public
//! bridge, NAT routers of the four classic types and random packet loss.
//!
//! Used by the reliable-UDP tests (lossy paths) and the hole-punching tests
//! (NATs). Needs root, `ip` (iproute2) and `nft` (nftables); see
//! [`Lab::require`] for what happens when they are missing.
//!
//! # Topology and addresses
//!
//! Everything lives in namespaces the lab creates; the root namespace (its
//! interfaces, routes and nftables) is never touched: every veth pair is
//! created with `ip -n <ns> link add ... peer ... netns <other>`, so both ends
//! are born inside lab namespaces. Only addresses from the benchmarking range
//! 198.18.0.0/15 are used.
//!
//! ```text
//!                      <prefix>-internet  (bridge br0, no address)
//!        +-----------------+---------------+----------------+
//!   p1 (veth)         p2 (veth)        p3 (veth)                 ...
//!        |                 |               |
//!   public host s1    public host s2   NAT router n (wan 198.18.0.3)
//!   eth0 198.18.0.1   eth0 198.18.0.2      | lan bridge 198.19.1.1/24
//!                                          +-- host h  eth0 198.19.1.2, default via .1
//!
//!   lossy pair j (not on the bridge):
//!   host pair<j>_a 198.18.(2j+1).2 --- router pair<j> --- host pair<j>_b 198.18.(2j+2).2
//!                         (to_a 198.18.(2j+1).1, to_b 198.18.(2j+2).1)
//! ```
//!
//! - public hosts and NAT wan sides: 198.18.0.1 ..= 198.18.0.250 on one /24,
//!   no default route (everything public is on-link);
//! - the N-th NAT (N = 1, 2, ...): private net 198.19.N.0/24, router .1,
//!   hosts behind it .2, .3, ... with a default route via .1;
//! - the j-th lossy pair (j = 0, 1, ...): 198.18.(2j+1).0/24 and
//!   198.18.(2j+2).0/24 joined by a router namespace.
//!
//! # Names
//!
//! Namespaces are called `netlab-<pid>-<n>-<lab>-<node>`, `<n>` counting the
//! labs of this process, so parallel tests and parallel test binaries never
//! collide. The first lab of a process deletes leftovers of earlier runs:
//! every `netlab-<pid>-...` namespace whose pid is not a live process, or is
//! our own pid (a killed earlier run that had the same pid). Everything a lab
//! creates is deleted in [`Drop`], also when the test panics; deleting a
//! namespace deletes its veth ends, which deletes their peers.
//!
//! # NAT types (UDP; TCP always gets plain masquerade)
//!
//! Common to all four, in table `ip netlab_nat` of the router namespace:
//! a forward filter that lets in from the wan only established/related flows
//! and flows the NAT itself DNATed, and an input filter that silently drops
//! new TCP/UDP flows addressed to the router (a real NAT does not answer with
//! ICMP port unreachable). See [`NatKind`] for the rules of each type.
//!
//! # Loss
//!
//! [`Lab::set_loss`] installs `numgen random mod 100 < N drop` in table
//! `inet netlab_loss` of a node: in the forward hook of a router (NAT or the
//! router of a [`Pair`]), in the input and output hooks of a host (loopback
//! exempt). Setting it again replaces it; 0 removes it. There is no delay or
//! reordering (this kernel has no netem): those belong in an in-process
//! impairment layer.
//!
//! # Running code inside a host
//!
//! - [`Host::udp_bind`] (or [`Host::run`] with any socket constructor)
//!   creates a socket inside the host's namespace. A socket keeps the
//!   namespace it was created in for its whole life, so it can then be used
//!   from any thread, e.g. handed to `libnet::net::UdpSocket::from_std`.
//! - [`Host::run`] / [`Host::spawn`] run a closure on a new thread that has
//!   entered the namespace; threads it starts (e.g. a whole libnet runtime)
//!   inherit that namespace.
//! - [`Host::command`] runs a program inside it (`ip netns exec`).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long one `ip` / `nft` command may take before it is killed and
/// reported as an error.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(10);

/// Start of every namespace name the lab creates.
pub const NAME_PREFIX: &str = "netlab-";

/// Longest node (or lab) name accepted.
const MAX_NAME: usize = 16;

/// Port of the [`Whoami`] service by convention (the STUN port).
pub const WHOAMI_PORT: u16 = 3478;

/// The four classic NAT behaviours (RFC 3489 names), for UDP.
///
/// All four map a private `addr:port` to the NAT's public address, keeping
/// the port when it is free (Linux NAT does), except [`NatKind::Symmetric`].
/// The nftables rules, in table `ip netlab_nat` of the router namespace
/// (`W` = wan address; "mapped port" = the source port after masquerade):
///
/// | kind | mapping | who may send in to a mapped port |
/// |---|---|---|
/// | `FullCone` | `masquerade persistent`; a postrouting chain after SNAT records `mapped port : private addr . private port` in dynamic map `@fc` | anyone: prerouting `dnat ip to udp dport map @fc` |
/// | `AddressRestricted` | as full cone, and records `remote addr . mapped port` in dynamic set `@ar` | only addresses the host has sent to from that port: prerouting, before DNAT, drops new flows with `ip saddr . udp dport != @ar` |
/// | `PortRestricted` | `masquerade persistent` | only the exact `addr:port` it sent to (conntrack; forward filter admits established flows only) |
/// | `Symmetric` | `masquerade random,fully-random`: a new random port per destination | only the exact `addr:port` it sent to |
///
/// Map and set entries expire 120 s after the last outbound packet (like the
/// conntrack UDP stream timeout); conntrack UDP entries expire after 30 s
/// unreplied / 120 s replied (the kernel defaults).
///
/// Limit of the two cone emulations: mappings are indexed by public port
/// only. Several hosts behind one cone NAT work, also with the same local
/// port towards the same server (masquerade then picks another public port
/// and the map follows it), but two hosts using the same local port towards
/// *different* servers both get the same public port (Linux only keeps
/// whole 5-tuples unique), and unsolicited inbound to that port goes to
/// whichever sent last. One host per NAT, or distinct local ports, avoids it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NatKind {
    FullCone,
    AddressRestricted,
    PortRestricted,
    Symmetric,
}

impl NatKind {
    /// All four, from most to least permissive.
    pub const ALL: [NatKind; 4] = [
        NatKind::FullCone,
        NatKind::AddressRestricted,
        NatKind::PortRestricted,
        NatKind::Symmetric,
    ];

    /// The nftables ruleset implementing this kind on a router whose public
    /// side is interface `wan` and private side interface `lan`.
    pub fn ruleset(self) -> String {
        let cone = matches!(self, NatKind::FullCone | NatKind::AddressRestricted);
        let mut s = String::from("table ip netlab_nat {\n");
        if cone {
            s.push_str(
                "  map fc {\n\
                 \x20   type inet_service : ipv4_addr . inet_service\n\
                 \x20   flags dynamic, timeout\n\
                 \x20   timeout 120s\n\
                 \x20 }\n",
            );
        }
        if self == NatKind::AddressRestricted {
            s.push_str(
                "  set ar {\n\
                 \x20   type ipv4_addr . inet_service\n\
                 \x20   flags dynamic, timeout\n\
                 \x20   timeout 120s\n\
                 \x20 }\n",
            );
        }
        // Source NAT.
        let masquerade = match self {
            NatKind::Symmetric => "masquerade random,fully-random",
            _ => "masquerade persistent",
        };
        s.push_str(&format!(
            "  chain lab_snat {{\n\
             \x20   type nat hook postrouting priority srcnat; policy accept;\n\
             \x20   oifname \"wan\" {masquerade}\n\
             \x20 }}\n"
        ));
        if cone {
            // After SNAT (priority srcnat + 1) the packet carries the mapped
            // port; conntrack still knows the private address and port.
            let mut record = String::from(
                "oifname \"wan\" meta l4proto udp \
                 update @fc { udp sport : ct original ip saddr . ct original proto-src }",
            );
            if self == NatKind::AddressRestricted {
                record.push_str(" update @ar { ip daddr . udp sport }");
            }
            s.push_str(&format!(
                "  chain lab_record {{\n\
                 \x20   type filter hook postrouting priority srcnat + 1; policy accept;\n\
                 \x20   {record}\n\
                 \x20 }}\n\
                 \x20 chain lab_dnat {{\n\
                 \x20   type nat hook prerouting priority dstnat; policy accept;\n\
                 \x20   iifname \"wan\" meta l4proto udp dnat ip to udp dport map @fc\n\
                 \x20 }}\n"
            ));
        }
        if self == NatKind::AddressRestricted {
            s.push_str(
                "  chain lab_restrict {\n\
                 \x20   type filter hook prerouting priority dstnat - 1; policy accept;\n\
                 \x20   iifname \"wan\" ct state new meta l4proto udp ip saddr . udp dport != @ar drop\n\
                 \x20 }\n",
            );
        }
        s.push_str(
            "  chain lab_forward {\n\
             \x20   type filter hook forward priority filter; policy accept;\n\
             \x20   iifname \"wan\" ct state established,related accept\n\
             \x20   iifname \"wan\" ct status dnat accept\n\
             \x20   iifname \"wan\" drop\n\
             \x20 }\n\
             \x20 chain lab_input {\n\
             \x20   type filter hook input priority filter; policy accept;\n\
             \x20   iifname \"wan\" ct state new meta l4proto { tcp, udp } drop\n\
             \x20 }\n\
             }\n",
        );
        s
    }
}

impl fmt::Display for NatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            NatKind::FullCone => "full cone",
            NatKind::AddressRestricted => "address-restricted cone",
            NatKind::PortRestricted => "port-restricted cone",
            NatKind::Symmetric => "symmetric",
        };
        f.write_str(s)
    }
}

/// Something [`Lab::set_loss`] can impair.
pub trait Node {
    /// The namespace of the node.
    fn ns(&self) -> &str;
    /// True for routers: loss goes in the forward hook. False for hosts:
    /// loss goes in the input and output hooks.
    fn forwards(&self) -> bool;
}

/// An emulated host: one namespace with `eth0` (address `addr`) and `lo`.
///
/// Only a name: it stays valid as long as the [`Lab`] that made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Node name given to the lab.
    pub name: String,
    /// Namespace name (`ip netns` name, file `/run/netns/<ns>`).
    pub ns: String,
    /// Address of `eth0`.
    pub addr: Ipv4Addr,
    /// Default gateway, if any (the NAT or pair router).
    pub gateway: Option<Ipv4Addr>,
}

impl Node for Host {
    fn ns(&self) -> &str {
        &self.ns
    }
    fn forwards(&self) -> bool {
        false
    }
}

impl Host {
    /// `ip netns exec <ns> <program>`: add arguments and run it. Bound its
    /// running time yourself, e.g. with [`output_within`].
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    /// Runs `f` on a new thread that has entered this host's network
    /// namespace and returns its value; a panic in `f` is re-raised here.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        match self.spawn(f).join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// Like [`Host::run`] but does not wait: the thread runs in the
    /// namespace until `f` returns. Bound `f` in time yourself.
    ///
    /// Panics if the thread cannot be started. If the namespace cannot be
    /// entered, the thread panics (seen by whoever joins it).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let ns = self.ns.clone();
        thread::Builder::new()
            .name(format!("netns {}", self.name))
            .spawn(move || {
                if let Err(e) = enter_netns(&ns) {
                    panic!("cannot enter network namespace {ns}: {e}");
                }
                f()
            })
            .expect("cannot start a thread")
    }

    /// A UDP socket bound to `addr:port` inside this host (port 0: any).
    /// It can be used from any thread afterwards.
    pub fn udp_bind(&self, port: u16) -> io::Result<UdpSocket> {
        let addr = SocketAddrV4::new(self.addr, port);
        self.run(move || UdpSocket::bind(addr))
    }

    /// `addr:port` of this host.
    pub fn sock(&self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.addr, port)
    }
}

/// Moves the calling thread into the network namespace `ns` (a name from
/// `ip netns`). Only this thread changes namespace, and the threads it
/// starts afterwards inherit it.
pub fn enter_netns(ns: &str) -> io::Result<()> {
    let f = File::open(format!("/run/netns/{ns}"))?;
    // SAFETY: `f` is an open file descriptor for the whole call; setns only
    // switches the network namespace of the calling thread (a network
    // namespace may be changed per thread even in a multi-threaded process)
    // and touches no memory of ours. The libc crate is already a dependency,
    // so this one call does not justify adding nix.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A plain router namespace (the middle of a [`Pair`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Router {
    pub name: String,
    pub ns: String,
}

impl Node for Router {
    fn ns(&self) -> &str {
        &self.ns
    }
    fn forwards(&self) -> bool {
        true
    }
}

/// A NAT router: `wan` on the public bridge, a `lan` bridge for the private
/// net 198.19.N.0/24. Hosts join it with [`Lab::host_behind`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nat {
    pub name: String,
    pub ns: String,
    pub kind: NatKind,
    /// Address of the wan side: what public hosts see as the source.
    pub public_addr: Ipv4Addr,
    /// Address of the lan side: the default gateway of the hosts behind it.
    pub private_addr: Ipv4Addr,
    /// The private network (prefix length 24).
    pub private_net: Ipv4Addr,
}

impl Node for Nat {
    fn ns(&self) -> &str {
        &self.ns
    }
    fn forwards(&self) -> bool {
        true
    }
}

/// Two hosts joined through a router, from [`Lab::pair_with_loss`]:
/// all their traffic crosses `router`, so [`Lab::set_loss`] on it impairs
/// both directions (each direction independently).
#[derive(Clone, Debug)]
pub struct Pair {
    pub a: Host,
    pub b: Host,
    pub router: Router,
}

/// A set of namespaces forming a small internet; see the module docs.
/// Deletes everything it created when dropped.
pub struct Lab {
    prefix: String,
    internet: String,
    namespaces: Vec<String>,
    names: HashSet<String>,
    next_public: u8,
    next_nat: u8,
    next_pair: u8,
    behind: HashMap<String, u8>,
}

impl fmt::Debug for Lab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lab")
            .field("prefix", &self.prefix)
            .field("namespaces", &self.namespaces)
            .finish()
    }
}

static LABS: AtomicUsize = AtomicUsize::new(0);
static SWEPT: Mutex<bool> = Mutex::new(false);

impl Lab {
    /// A new, empty lab (just the internet bridge), or `None` with a loud
    /// message on stderr saying why not (not root, no `ip netns`, no
    /// nftables...). `name` (letters, digits, `_`; at most 16) only makes
    /// the namespace names readable.
    ///
    /// Tests should rather call [`Lab::require`].
    pub fn new(name: &str) -> Option<Lab> {
        match Lab::create(name) {
            Ok(lab) => Some(lab),
            Err(e) => {
                loud(&format!("netlab: no network lab for {name:?}: {e}\n"));
                None
            }
        }
    }

    /// Like [`Lab::new`], for tests: when there is no lab it prints
    /// `SKIPPED: <name>: ...` and returns `None` (the test should return),
    /// unless the environment is supposed to support labs (env `CI` or
    /// `LIBNET_LAB` set to something other than empty, `0` or `false`): then
    /// it panics, so a broken CI machine fails instead of passing silently.
    pub fn require(name: &str) -> Option<Lab> {
        match Lab::create(name) {
            Ok(lab) => Some(lab),
            Err(e) => {
                if must_run() {
                    panic!(
                        "network lab {name:?} unavailable but required (CI or LIBNET_LAB set): {e}"
                    );
                }
                loud(&format!(
                    "\n*** SKIPPED: {name}: no network lab: {e}\n\
                     *** (run as root with iproute2 and nftables; set LIBNET_LAB=1 to make this a failure)\n"
                ));
                None
            }
        }
    }

    /// [`Lab::new`] with the reason as an error instead of a message.
    pub fn create(name: &str) -> Result<Lab, String> {
        check_name(name).map_err(|e| e.to_string())?;
        if euid() != 0 {
            return Err("not running as root".into());
        }
        for (prog, arg) in [("ip", "-V"), ("nft", "--version")] {
            output_within(Command::new(prog).arg(arg), None, COMMAND_LIMIT)
                .and_then(ok_output)
                .map_err(|e| format!("`{prog} {arg}` failed: {e}"))?;
        }
        let n = {
            let mut swept = SWEPT.lock().unwrap_or_else(|p| p.into_inner());
            if !*swept {
                *swept = true;
                sweep_stale(true);
            }
            LABS.fetch_add(1, Ordering::Relaxed)
        };
        let prefix = format!("{NAME_PREFIX}{}-{n}-", std::process::id());
        let internet = format!("{prefix}{name}-internet");
        let mut lab = Lab {
            prefix: format!("{prefix}{name}-"),
            internet: internet.clone(),
            namespaces: Vec::new(),
            names: HashSet::from(["internet".to_string()]),
            next_public: 1,
            next_nat: 1,
            next_pair: 0,
            behind: HashMap::new(),
        };
        lab.add_ns(&internet)
            .map_err(|e| format!("cannot create a network namespace: {e}"))?;
        ip(&internet, "link add br0 type bridge")
            .and_then(|_| ip(&internet, "link set br0 up"))
            .map_err(|e| format!("cannot create a bridge: {e}"))?;
        nft(&internet, "list ruleset\n")
            .map_err(|e| format!("nftables does not work in a namespace: {e}"))?;
        Ok(lab)
    }

    /// Start of the names of all namespaces of this lab
    /// (`netlab-<pid>-<n>-<lab>-`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Names of the namespaces created so far.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// A host on the public bridge, 198.18.0.x/24.
    pub fn public_host(&mut self, name: &str) -> io::Result<Host> {
        let ns = self.claim(name)?;
        let addr = self.public_addr()?;
        let port = format!("p{}", addr.octets()[3]);
        self.add_ns(&ns)?;
        self.plug_into_internet(&port, &ns, "eth0")?;
        ip(&ns, &format!("addr add {addr}/24 dev eth0"))?;
        ip(&ns, "link set eth0 up")?;
        Ok(Host {
            name: name.into(),
            ns,
            addr,
            gateway: None,
        })
    }

    /// A NAT router of `kind`: wan side on the public bridge (198.18.0.x),
    /// private side 198.19.N.1/24.
    pub fn nat(&mut self, name: &str, kind: NatKind) -> io::Result<Nat> {
        let ns = self.claim(name)?;
        let public_addr = self.public_addr()?;
        let n = self.next_nat;
        if n == 255 {
            return Err(io::Error::other("too many NATs in one lab"));
        }
        self.next_nat += 1;
        let private_net = Ipv4Addr::new(198, 19, n, 0);
        let private_addr = Ipv4Addr::new(198, 19, n, 1);
        let port = format!("p{}", public_addr.octets()[3]);
        self.add_ns(&ns)?;
        self.plug_into_internet(&port, &ns, "wan")?;
        ip(&ns, &format!("addr add {public_addr}/24 dev wan"))?;
        ip(&ns, "link set wan up")?;
        ip(&ns, "link add lan type bridge")?;
        ip(&ns, &format!("addr add {private_addr}/24 dev lan"))?;
        ip(&ns, "link set lan up")?;
        enable_forwarding(&ns)?;
        nft(&ns, &kind.ruleset())?;
        self.behind.insert(ns.clone(), 2);
        Ok(Nat {
            name: name.into(),
            ns,
            kind,
            public_addr,
            private_addr,
            private_net,
        })
    }

    /// A host on the private side of `nat` (198.19.N.k, default route via
    /// the NAT).
    pub fn host_behind(&mut self, nat: &Nat, name: &str) -> io::Result<Host> {
        let k = match self.behind.get(&nat.ns) {
            Some(&k) if k < 255 => k,
            Some(_) => return Err(io::Error::other("too many hosts behind one NAT")),
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("NAT {} is not from this lab", nat.name),
                ))
            }
        };
        let ns = self.claim(name)?;
        self.behind.insert(nat.ns.clone(), k + 1);
        let o = nat.private_net.octets();
        let addr = Ipv4Addr::new(o[0], o[1], o[2], k);
        self.add_ns(&ns)?;
        let port = format!("l{k}");
        ip(
            &nat.ns,
            &format!("link add name {port} type veth peer name eth0 netns {ns}"),
        )?;
        one_packet_per_skb(&nat.ns, &port)?;
        one_packet_per_skb(&ns, "eth0")?;
        ip(&nat.ns, &format!("link set {port} master lan up"))?;
        ip(&ns, &format!("addr add {addr}/24 dev eth0"))?;
        ip(&ns, "link set eth0 up")?;
        ip(&ns, &format!("route add default via {}", nat.private_addr))?;
        Ok(Host {
            name: name.into(),
            ns,
            addr,
            gateway: Some(nat.private_addr),
        })
    }

    /// Two hosts `pair<j>_a` and `pair<j>_b` on their own subnets joined by
    /// router `pair<j>`, with `percent` % loss in the router's forward hook
    /// (each direction independently). Change it later with
    /// [`Lab::set_loss`] on `pair.router`.
    pub fn pair_with_loss(&mut self, percent: u8) -> io::Result<Pair> {
        let j = self.next_pair;
        if j >= 100 {
            return Err(io::Error::other("too many pairs in one lab"));
        }
        let rname = format!("pair{j}");
        let rns = self.claim(&rname)?;
        self.add_ns(&rns)?;
        enable_forwarding(&rns)?;
        self.next_pair += 1;
        let router = Router {
            name: rname.clone(),
            ns: rns.clone(),
        };
        let mut hosts = Vec::new();
        for (side, third) in [("a", 2 * j + 1), ("b", 2 * j + 2)] {
            let name = format!("{rname}_{side}");
            let ns = self.claim(&name)?;
            self.add_ns(&ns)?;
            let gw = Ipv4Addr::new(198, 18, third, 1);
            let addr = Ipv4Addr::new(198, 18, third, 2);
            // (A bare "a" would parse as the `address` keyword.)
            let dev = format!("to_{side}");
            ip(
                &rns,
                &format!("link add name {dev} type veth peer name eth0 netns {ns}"),
            )?;
            one_packet_per_skb(&rns, &dev)?;
            one_packet_per_skb(&ns, "eth0")?;
            ip(&rns, &format!("addr add {gw}/24 dev {dev}"))?;
            ip(&rns, &format!("link set dev {dev} up"))?;
            ip(&ns, &format!("addr add {addr}/24 dev eth0"))?;
            ip(&ns, "link set eth0 up")?;
            ip(&ns, &format!("route add default via {gw}"))?;
            hosts.push(Host {
                name,
                ns,
                addr,
                gateway: Some(gw),
            });
        }
        let b = hosts.pop().expect("two hosts");
        let a = hosts.pop().expect("two hosts");
        let pair = Pair { a, b, router };
        self.set_loss(&pair.router, percent)?;
        Ok(pair)
    }

    /// Drops `percent` % of the packets at `node`, at random
    /// (`numgen random mod 100 < percent drop`): in the forward hook of a
    /// router, in both the input and the output hook of a host (so a packet
    /// leaving and one entering it are each dropped with that chance;
    /// loopback traffic is exempt). Replaces any earlier setting; 0 removes
    /// the rules. Over 100 is an error.
    pub fn set_loss(&self, node: &impl Node, percent: u8) -> io::Result<()> {
        if percent > 100 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("loss of {percent} %"),
            ));
        }
        let ns = node.ns();
        if !self.namespaces.iter().any(|n| n == ns) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("namespace {ns} is not from this lab"),
            ));
        }
        // Add-then-delete makes the delete succeed whether or not the table
        // exists; the whole script is one atomic transaction.
        let mut script =
            String::from("add table inet netlab_loss\ndelete table inet netlab_loss\n");
        if percent > 0 {
            script.push_str("table inet netlab_loss {\n");
            let hooks: &[(&str, &str)] = if node.forwards() {
                &[("forward", "")]
            } else {
                &[
                    ("input", "iifname \"lo\" accept\n    "),
                    ("output", "oifname \"lo\" accept\n    "),
                ]
            };
            // nft rejects `< 100` after `mod 100`: 100 % is a plain drop.
            let drop = if percent == 100 {
                "drop".to_string()
            } else {
                format!("numgen random mod 100 < {percent} drop")
            };
            for (hook, exempt) in hooks {
                script.push_str(&format!(
                    "  chain loss_{hook} {{\n\
                     \x20   type filter hook {hook} priority filter - 10; policy accept;\n\
                     \x20   {exempt}{drop}\n\
                     \x20 }}\n"
                ));
            }
            script.push_str("}\n");
        }
        nft(ns, &script).map(|_| ())
    }

    fn claim(&mut self, name: &str) -> io::Result<String> {
        check_name(name)?;
        if !self.names.insert(name.to_string()) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("node name {name:?} already used in this lab"),
            ));
        }
        Ok(format!("{}{name}", self.prefix))
    }

    fn public_addr(&mut self) -> io::Result<Ipv4Addr> {
        let i = self.next_public;
        if i > 250 {
            return Err(io::Error::other("too many public addresses in one lab"));
        }
        self.next_public += 1;
        Ok(Ipv4Addr::new(198, 18, 0, i))
    }

    /// Creates namespace `ns` (with `lo` up) and remembers it for Drop.
    fn add_ns(&mut self, ns: &str) -> io::Result<()> {
        run_ok(Command::new("ip").args(["netns", "add", ns]), None)?;
        self.namespaces.push(ns.to_string());
        ip(ns, "link set lo up")?;
        Ok(())
    }

    /// A veth pair: `port` on the internet bridge, `ifname` in `ns`.
    fn plug_into_internet(&self, port: &str, ns: &str, ifname: &str) -> io::Result<()> {
        ip(
            &self.internet,
            &format!("link add name {port} type veth peer name {ifname} netns {ns}"),
        )?;
        one_packet_per_skb(&self.internet, port)?;
        one_packet_per_skb(ns, ifname)?;
        ip(&self.internet, &format!("link set {port} master br0 up"))?;
        Ok(())
    }
}

/// Makes `dev` carry one packet per buffer: no GSO/TSO super-packets of up
/// to 64 KiB, which a loss rule would drop (or spare) as a single packet,
/// understating loss for TCP compared with UDP's real datagrams.
fn one_packet_per_skb(ns: &str, dev: &str) -> io::Result<()> {
    ip(ns, &format!("link set dev {dev} gso_max_segs 1")).map(drop)
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = run_ok(Command::new("ip").args(["netns", "del", ns]), None) {
                eprintln!("netlab: cannot delete namespace {ns}: {e}");
            }
        }
    }
}

/// A UDP "whoami" service on a host: answers every datagram with the
/// source address it saw, as text `a.b.c.d:port`. Stops when dropped.
pub struct Whoami {
    /// Where it listens.
    pub addr: SocketAddrV4,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Whoami {
    /// Starts the service on `host:port`.
    pub fn start(host: &Host, port: u16) -> io::Result<Whoami> {
        let sock = host.udp_bind(port)?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name(format!("whoami {}", host.name))
            .spawn(move || {
                let mut buf = [0u8; 1500];
                while !flag.load(Ordering::Relaxed) {
                    if let Ok((_, from)) = sock.recv_from(&mut buf) {
                        let _ = sock.send_to(from.to_string().as_bytes(), from);
                    }
                }
            })?;
        Ok(Whoami {
            addr: SocketAddrV4::new(host.addr, port),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Whoami {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Asks a [`Whoami`] service at `server` from `sock` which source address
/// it sees: retries every 200 ms (loss-tolerant) for at most `limit`.
/// Changes the socket's read timeout; other datagrams arriving meanwhile
/// are discarded.
pub fn whoami(sock: &UdpSocket, server: SocketAddrV4, limit: Duration) -> io::Result<SocketAddrV4> {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        sock.send_to(b"whoami?", server)?;
        let retry = (Instant::now() + Duration::from_millis(200)).min(deadline);
        loop {
            let now = Instant::now();
            if now >= retry {
                break;
            }
            sock.set_read_timeout(Some(retry - now))?;
            match sock.recv_from(&mut buf) {
                Ok((n, SocketAddr::V4(from))) if from == server => {
                    let text = std::str::from_utf8(&buf[..n]).unwrap_or("");
                    return text.parse().map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("bad whoami answer {text:?}"),
                        )
                    });
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no whoami answer from {server} within {limit:?}"),
    ))
}

/// Runs `cmd` with `stdin` as its input, killing it after `limit`; returns
/// its output whatever its exit status (a timeout is an error).
pub fn output_within(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    limit: Duration,
) -> io::Result<Output> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // Scripts are small (far below a pipe buffer), so this cannot block
        // long; a write error (the program exited early) shows in its status.
        let _ = pipe.write_all(data);
    }
    let readers = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .map(|p| {
        p.map(|mut p| {
            thread::spawn(move || {
                let mut v = Vec::new();
                let _ = p.read_to_end(&mut v);
                v
            })
        })
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{cmd:?} still running after {limit:?}, killed"),
            ));
        }
        thread::sleep(Duration::from_millis(2));
    };
    let [out, err] = readers.map(|r| r.map(|t| t.join().unwrap_or_default()).unwrap_or_default());
    Ok(Output {
        status,
        stdout: out,
        stderr: err,
    })
}

fn ok_output(o: Output) -> io::Result<Output> {
    if o.status.success() {
        Ok(o)
    } else {
        Err(io::Error::other(format!(
            "{}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )))
    }
}

/// Runs `cmd` (bounded by [`COMMAND_LIMIT`]) and fails unless it succeeds.
fn run_ok(cmd: &mut Command, stdin: Option<&[u8]>) -> io::Result<String> {
    let what = format!("{cmd:?}");
    output_within(cmd, stdin, COMMAND_LIMIT)
        .and_then(ok_output)
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}")))
}

/// `ip -n <ns> <args>` (args split on spaces).
fn ip(ns: &str, args: &str) -> io::Result<String> {
    run_ok(
        Command::new("ip")
            .args(["-n", ns])
            .args(args.split_whitespace()),
        None,
    )
}

/// `nft -f -` with `script` inside `ns`.
fn nft(ns: &str, script: &str) -> io::Result<String> {
    run_ok(
        Command::new("ip").args(["netns", "exec", ns, "nft", "-f", "-"]),
        Some(script.as_bytes()),
    )
}

/// Turns on IPv4 forwarding in `ns` only (the sysctl is per namespace; we
/// write it from a thread inside the namespace, so neither `sysctl` nor the
/// root namespace is involved).
fn enable_forwarding(ns: &str) -> io::Result<()> {
    let ns = ns.to_string();
    thread::spawn(move || {
        enter_netns(&ns)?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1\n")
    })
    .join()
    .unwrap_or_else(|_| Err(io::Error::other("forwarding thread panicked")))
}

fn check_name(name: &str) -> io::Result<()> {
    let good = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if good {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad lab/node name {name:?}: use 1..={MAX_NAME} of [A-Za-z0-9_]"),
        ))
    }
}

/// Writes to the process's stderr directly: unlike `eprintln!`, this is not
/// swallowed by the test harness's output capture of passing tests.
fn loud(text: &str) {
    let _ = io::stderr().lock().write_all(text.as_bytes());
}

/// Whether tests that would skip (no lab, no tool) must fail instead: `CI`
/// or `LIBNET_LAB` set to something other than empty, `0`, `false`, `no`.
pub fn must_run() -> bool {
    ["CI", "LIBNET_LAB"].iter().any(|v| env_true(v))
}

fn env_true(var: &str) -> bool {
    std::env::var(var)
        .map(|v| {
            let v = v.trim().to_ascii_lowercase();
            !(v.is_empty() || v == "0" || v == "false" || v == "no")
        })
        .unwrap_or(false)
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Names of all namespaces known to `ip netns`.
pub fn list_namespaces() -> io::Result<Vec<String>> {
    let out = run_ok(Command::new("ip").args(["netns", "list"]), None)?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Deletes the namespaces of labs left behind by processes that no longer
/// run. (The first lab of a process does this by itself, and also deletes
/// leftovers of an earlier process that had our pid.)
pub fn sweep_dead_labs() {
    sweep_stale(false);
}

/// [`sweep_dead_labs`]; with `own`, also namespaces named with our pid,
/// which is right only before this process has made its first lab.
fn sweep_stale(own: bool) {
    let Ok(all) = list_namespaces() else { return };
    let me = std::process::id();
    for ns in all {
        let Some(rest) = ns.strip_prefix(NAME_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if (own && pid == me) || (pid != me && !process_alive(pid)) {
            loud(&format!("netlab: deleting stale namespace {ns}\n"));
            if let Err(e) = run_ok(Command::new("ip").args(["netns", "del", &ns]), None) {
                eprintln!("netlab: cannot delete stale namespace {ns}: {e}");
            }
        }
    }
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 sends nothing; it only checks that the
    // process exists and may be signalled.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
