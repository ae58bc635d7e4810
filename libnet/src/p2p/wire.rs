//! The P2P wire protocol: every message trackers, edges, sources and peers
//! exchange, and its byte encoding.
//!
//! Sans-IO: [`Message::encode`] appends a frame to a buffer,
//! [`Message::decode_frame`] parses one whole frame (a datagram or an RUDP
//! message), and [`Decoder`] cuts a byte stream (the TCP connection to a
//! tracker) into messages. Nothing here touches a socket or a clock.
//! `docs/protocol.md` has the same format as tables, with who sends what to
//! whom and a worked example.
//!
//! The encoding is written by hand rather than with a serialization crate:
//! the format is small and bounded, we control every byte of it, and every
//! length, count and code has to be checked against a limit before anything
//! is allocated, which is simplest to see (and test) when it is spelled out.
//!
//! # Wire format (version 1)
//!
//! Every message is one frame: an 8-byte header, then the payload. All
//! integers are big-endian.
//!
//! ```text
//! byte 0      MAGIC = 0xB7
//! byte 1      VERSION = 1
//! byte 2      message type (the table below)
//! byte 3      flags, 0 (anything else is rejected; reserved)
//! bytes 4..8  payload length, u32: the frame is 8 + length bytes
//! ```
//!
//! The whole frame, header included, is at most [`MAX_FRAME`] bytes
//! (1 MiB + 64: a 1 MiB fragment plus its fields). A [`Decoder`] may be given
//! a smaller bound.
//!
//! Payload fields follow each other with no padding or alignment:
//!
//! | type          | encoding                                                         |
//! |---------------|------------------------------------------------------------------|
//! | `u8`..`u64`   | big-endian, 1, 2, 4 or 8 bytes                                   |
//! | `bool`        | one byte, 0 or 1                                                 |
//! | enum          | one byte, the type's `code()` (`Role`, `Strategy`, `NatType`, `Channel`) |
//! | address       | family u8 (4 or 6), 4 or 16 address bytes, port u16              |
//! | string        | length u16, then that many bytes of UTF-8; each field has a bound |
//! | bytes         | length u32, then that many bytes; bounded by the frame           |
//! | `Option<T>`   | one byte, 0 (absent) or 1 (present, followed by `T`)             |
//! | list          | count u16, then the items; each field has a bound                |
//! | [`NodeInfo`]  | id u64, role, room u32, public address, local address, workload u32, nat |
//! | [`ChatUser`]  | name string(64), node u64, public address, ttl_secs u32, punched list(256) of u64 |
//! | [`FileInfo`]  | name string(255), size u64, duration_ms u64, pieces u32, index: 32 bytes (no length) |
//! | [`CatalogEntry`] | file [`FileInfo`], holders u32, complete u32                  |
//! | [`Holder`]    | node [`NodeInfo`], have u32, tracker address                     |
//! | [`Holding`]   | file [`FileInfo`], node [`NodeInfo`], have u32                   |
//!
//! IPv6 flow information and scope ids are not carried (they decode as 0).
//!
//! Message types come in blocks: 0x01–0x0F the peer protocol (over RUDP,
//! peer ↔ peer and peer ↔ edge), 0x10–0x2F the tracker protocol (the TCP
//! connection to a tracker; 0x20–0x2F of it the file catalog), 0x30–0x3F NAT
//! discovery and punching, 0x40–0x4F chat, 0x7F error. Each [`Message`] variant documents its type code and
//! its fields, which are encoded in the order they are declared.
//!
//! # Decoding
//!
//! Decoding never panics and allocates nothing that the input has not
//! already paid for: a frame whose declared length exceeds the bound is
//! rejected from its header alone, before its payload is awaited; list
//! counts are checked against their bound before their items are read; a
//! byte field's length is checked against what remains of the payload before
//! it is copied. A frame is rejected ([`DecodeError`]) for a wrong magic,
//! version or flags, an unknown type, a field cut short, bytes left over
//! after the last field, a string that is too long or not UTF-8, a list
//! longer than its bound, or an enum, bool, option or address-family byte
//! outside its codes. Every well-formed message has exactly one encoding, so
//! a frame that decodes re-encodes to the same bytes.
//!
//! Unknown types are errors, not skipped: adding a message type is a
//! protocol change both sides must know about.
//!
//! [`Message::encode`] checks the same bounds, so it never produces a frame
//! the decoder would reject ([`EncodeError`]).

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use super::{Channel, NatType, NodeId, NodeInfo, Role, RoomId, Strategy};
pub use crate::nat::ReplyFrom;

/// First byte of every frame.
pub const MAGIC: u8 = 0xB7;
/// Protocol version, the second byte of every frame.
pub const VERSION: u8 = 1;
/// Bytes in the frame header.
pub const HEADER_LEN: usize = 8;
/// Largest frame, header included: 1 MiB + 64 bytes.
pub const MAX_FRAME: usize = 1024 * 1024 + 64;

/// Longest name (chat user names), in bytes.
pub const MAX_NAME: usize = 64;
/// Longest metadata key, in bytes.
pub const MAX_KEY: usize = 256;
/// Longest chat message text, in bytes.
pub const MAX_CHAT_TEXT: usize = 4096;
/// Longest error text, in bytes.
pub const MAX_ERROR_TEXT: usize = 1024;
/// Most fragment ids in one request, missing list or cancel.
pub const MAX_IDS: usize = 1024;
/// Most nodes in one [`Message::NodesList`].
pub const MAX_NODES: usize = 256;
/// Most tracker addresses in one [`Message::TrackersList`].
pub const MAX_TRACKERS: usize = 256;
/// Most users in one [`Message::ChatList`].
pub const MAX_CHAT_USERS: usize = 256;
/// Most node ids in one [`ChatUser::punched`].
pub const MAX_PUNCHED: usize = 256;
/// Most bytes of the bitmap in one [`Message::Map`] (8 ids a byte).
pub const MAX_MAP_BYTES: usize = 512;
/// Longest file name in the catalog, in bytes (and longest catalog prefix).
pub const MAX_FILE_NAME: usize = 255;
/// Bytes in a [`FileInfo::index`]: the hash of the file's signed index.
pub const INDEX_LEN: usize = 32;
/// Most entries in one [`Message::Catalog`].
pub const MAX_CATALOG: usize = 256;
/// Most holdings in one [`Message::HoldingsList`] (tracker gossip).
pub const MAX_HOLDINGS: usize = 1024;

// Type codes. Keep `type_name`, `Message::code` and `decode_payload` in step.
const T_INIT: u8 = 0x01;
const T_INIT_REPLY: u8 = 0x02;
const T_FRAGMENT_REQUEST: u8 = 0x03;
const T_FRAGMENT: u8 = 0x04;
const T_FRAGMENT_MISSING: u8 = 0x05;
const T_CANCEL: u8 = 0x06;
const T_META_REQUEST: u8 = 0x07;
const T_META_REPLY: u8 = 0x08;
const T_HEARTBEAT: u8 = 0x09;
const T_PING: u8 = 0x0A;
const T_PONG: u8 = 0x0B;
const T_MAP_REQUEST: u8 = 0x0C;
const T_MAP: u8 = 0x0D;

const T_HELLO: u8 = 0x10;
const T_HELLO_REPLY: u8 = 0x11;
const T_TRACKER_INFO: u8 = 0x12;
const T_TRACKERS_REQUEST: u8 = 0x13;
const T_TRACKERS_LIST: u8 = 0x14;
const T_NODES_REQUEST: u8 = 0x15;
const T_NODES_LIST: u8 = 0x16;
const T_UPDATE: u8 = 0x17;
const T_ROOM_ALLOCATE: u8 = 0x18;
const T_ROOM_ALLOCATED: u8 = 0x19;
const T_BYE: u8 = 0x1A;

const T_PUBLISH: u8 = 0x20;
const T_UNPUBLISH: u8 = 0x21;
const T_CATALOG_REQUEST: u8 = 0x22;
const T_CATALOG: u8 = 0x23;
const T_HOLDERS_REQUEST: u8 = 0x24;
const T_HOLDERS: u8 = 0x25;
const T_HOLDINGS_LIST: u8 = 0x26;

const T_WHOAMI: u8 = 0x30;
const T_WHOAMI_REPLY: u8 = 0x31;
const T_PUNCH_REQUEST: u8 = 0x32;
const T_PUNCH_NOTIFY: u8 = 0x33;
const T_PUNCH_PROBE: u8 = 0x34;
const T_PUNCH_RESULT: u8 = 0x35;
const T_RELAY_OPEN: u8 = 0x36;
const T_RELAY_DATA: u8 = 0x37;
const T_WHOAMI_RELAY: u8 = 0x38;

const T_CHAT_LOGIN: u8 = 0x40;
const T_CHAT_LOGOUT: u8 = 0x41;
const T_CHAT_LIST_REQUEST: u8 = 0x42;
const T_CHAT_LIST: u8 = 0x43;
const T_CHAT_MESSAGE: u8 = 0x44;

const T_ERROR: u8 = 0x7F;

/// The name of a message type, or `None` for a code that is not one.
fn type_name(code: u8) -> Option<&'static str> {
    Some(match code {
        T_INIT => "Init",
        T_INIT_REPLY => "InitReply",
        T_FRAGMENT_REQUEST => "FragmentRequest",
        T_FRAGMENT => "Fragment",
        T_FRAGMENT_MISSING => "FragmentMissing",
        T_CANCEL => "Cancel",
        T_META_REQUEST => "MetaRequest",
        T_META_REPLY => "MetaReply",
        T_HEARTBEAT => "Heartbeat",
        T_PING => "Ping",
        T_PONG => "Pong",
        T_MAP_REQUEST => "MapRequest",
        T_MAP => "Map",
        T_HELLO => "Hello",
        T_HELLO_REPLY => "HelloReply",
        T_TRACKER_INFO => "TrackerInfo",
        T_TRACKERS_REQUEST => "TrackersRequest",
        T_TRACKERS_LIST => "TrackersList",
        T_NODES_REQUEST => "NodesRequest",
        T_NODES_LIST => "NodesList",
        T_UPDATE => "Update",
        T_ROOM_ALLOCATE => "RoomAllocate",
        T_ROOM_ALLOCATED => "RoomAllocated",
        T_BYE => "Bye",
        T_PUBLISH => "Publish",
        T_UNPUBLISH => "Unpublish",
        T_CATALOG_REQUEST => "CatalogRequest",
        T_CATALOG => "Catalog",
        T_HOLDERS_REQUEST => "HoldersRequest",
        T_HOLDERS => "Holders",
        T_HOLDINGS_LIST => "HoldingsList",
        T_WHOAMI => "Whoami",
        T_WHOAMI_REPLY => "WhoamiReply",
        T_PUNCH_REQUEST => "PunchRequest",
        T_PUNCH_NOTIFY => "PunchNotify",
        T_PUNCH_PROBE => "PunchProbe",
        T_PUNCH_RESULT => "PunchResult",
        T_RELAY_OPEN => "RelayOpen",
        T_RELAY_DATA => "RelayData",
        T_WHOAMI_RELAY => "WhoamiRelay",
        T_CHAT_LOGIN => "ChatLogin",
        T_CHAT_LOGOUT => "ChatLogout",
        T_CHAT_LIST_REQUEST => "ChatListRequest",
        T_CHAT_LIST => "ChatList",
        T_CHAT_MESSAGE => "ChatMessage",
        T_ERROR => "Error",
        _ => return None,
    })
}

// ---------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------

/// One entry of a [`Message::ChatList`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatUser {
    /// The name the user logged in with (at most [`MAX_NAME`] bytes).
    pub name: String,
    /// The user's node.
    pub node: NodeId,
    /// The node's public UDP address, for punching.
    pub public: SocketAddr,
    /// Seconds before the entry expires unless the user shows up again.
    pub ttl_secs: u32,
    /// Nodes this user has already punched through to (at most
    /// [`MAX_PUNCHED`]).
    pub punched: Vec<NodeId>,
}

/// What a file is, as its holders publish it: everything but how much of
/// it one holder has. Two files under one name are told apart by `index`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileInfo {
    /// The file's name in the catalog (1 to [`MAX_FILE_NAME`] bytes of
    /// UTF-8; the tracker refuses empty names and control characters).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its playing time in milliseconds (0 when it has none).
    pub duration_ms: u64,
    /// How many pieces it is cut into.
    pub pieces: u32,
    /// The hash of the file's signed index (its piece list), which
    /// identifies the content.
    pub index: [u8; INDEX_LEN],
}

/// One entry of a [`Message::Catalog`]: a file and how many hold it,
/// counted over the tracker and its linked trackers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogEntry {
    /// The file.
    pub file: FileInfo,
    /// Nodes holding all or part of it.
    pub holders: u32,
    /// Of those, the nodes holding all of it (`have == pieces`).
    pub complete: u32,
}

/// One entry of a [`Message::Holders`]: a node holding (part of) a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The node, with its addresses, for punching.
    pub node: NodeInfo,
    /// How many of the file's pieces it holds.
    pub have: u32,
    /// The TCP address of the tracker the node is registered on: the one
    /// to send the `PunchRequest` through. `0.0.0.0:0` on the wire: the
    /// tracker that answered (`TrackerClient::holders` puts in the address
    /// it dialled).
    pub tracker: SocketAddr,
}

/// One entry of a [`Message::HoldingsList`]: a node registered on the
/// sending tracker holds (part of) a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holding {
    /// The file.
    pub file: FileInfo,
    /// The node.
    pub node: NodeInfo,
    /// How many of the file's pieces it holds.
    pub have: u32,
}

/// The wire code of a [`ReplyFrom`].
fn reply_from_code(r: ReplyFrom) -> u8 {
    match r {
        ReplyFrom::Same => 0,
        ReplyFrom::OtherPort => 1,
        ReplyFrom::OtherIp => 2,
    }
}

/// A [`ReplyFrom`] from its wire code.
fn reply_from_of_code(c: u8) -> Option<ReplyFrom> {
    Some(match c {
        0 => ReplyFrom::Same,
        1 => ReplyFrom::OtherPort,
        2 => ReplyFrom::OtherIp,
        _ => return None,
    })
}

/// Codes carried by [`Message::Error`]. The field is a plain `u16` so that
/// codes a newer node sends still decode; [`ErrorCode::from_code`] names
/// the known ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The room named does not exist (or no longer does).
    UnknownRoom,
    /// The key (edge key in `Hello`, key in `RoomAllocate`) was refused.
    BadKey,
    /// A request came before `Hello` was accepted.
    NotRegistered,
    /// A limit was reached (connections, rooms, requests, chat users).
    TooMany,
    /// A frame did not decode; the sender is disconnected after this.
    Malformed,
    /// A well-formed message the receiver does not handle in its role or
    /// state.
    Unsupported,
    /// The receiver failed for reasons of its own.
    Internal,
    /// The name already stands for another file (another size, length,
    /// piece count or index) on this tracker or a linked one.
    Conflict,
    /// A well-formed request with values the receiver does not take (an
    /// empty file name or one with control characters, more pieces held
    /// than the file has).
    Invalid,
}

impl ErrorCode {
    /// The wire code.
    pub fn code(self) -> u16 {
        match self {
            ErrorCode::UnknownRoom => 1,
            ErrorCode::BadKey => 2,
            ErrorCode::NotRegistered => 3,
            ErrorCode::TooMany => 4,
            ErrorCode::Malformed => 5,
            ErrorCode::Unsupported => 6,
            ErrorCode::Internal => 7,
            ErrorCode::Conflict => 8,
            ErrorCode::Invalid => 9,
        }
    }

    /// From the wire code.
    pub fn from_code(c: u16) -> Option<ErrorCode> {
        Some(match c {
            1 => ErrorCode::UnknownRoom,
            2 => ErrorCode::BadKey,
            3 => ErrorCode::NotRegistered,
            4 => ErrorCode::TooMany,
            5 => ErrorCode::Malformed,
            6 => ErrorCode::Unsupported,
            7 => ErrorCode::Internal,
            8 => ErrorCode::Conflict,
            9 => ErrorCode::Invalid,
            _ => return None,
        })
    }
}

/// Every message of the protocol. Fields are encoded in the order they are
/// declared; each variant's doc gives its type code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    // --- Peer protocol (RUDP; peer <-> peer, peer <-> edge) -------------
    /// 0x01. The first message on a channel connection: the opener wants
    /// `channel` of `room`.
    Init {
        /// The room.
        room: RoomId,
        /// The channel this connection carries.
        channel: Channel,
    },
    /// 0x02. The answer to `Init`: the fragment ids the sender holds on that
    /// channel, `first..=last` (`first > last` when it holds none).
    InitReply {
        /// The room.
        room: RoomId,
        /// The channel.
        channel: Channel,
        /// Oldest fragment id held.
        first: u64,
        /// Newest fragment id held.
        last: u64,
    },
    /// 0x03. Asks for fragments; answered by one `Fragment` per id held and
    /// one `FragmentMissing` for the rest.
    FragmentRequest {
        /// The room.
        room: RoomId,
        /// The channel.
        channel: Channel,
        /// Urgency: 0 is the most urgent (the player needs them next);
        /// larger values are prefetching.
        priority: u8,
        /// The fragment ids wanted (at most [`MAX_IDS`]).
        ids: Vec<u64>,
    },
    /// 0x04. One fragment of the stream.
    Fragment {
        /// The room.
        room: RoomId,
        /// The channel.
        channel: Channel,
        /// The fragment's id (consecutive per channel).
        id: u64,
        /// The source's timestamp of the fragment.
        timestamp: u64,
        /// The fragment's bytes (bounded by the frame).
        data: Vec<u8>,
    },
    /// 0x05. Requested fragments the sender does not hold (the requester
    /// asks someone else).
    FragmentMissing {
        /// The room.
        room: RoomId,
        /// The channel.
        channel: Channel,
        /// The ids not held (at most [`MAX_IDS`]).
        ids: Vec<u64>,
    },
    /// 0x06. Withdraws requests not yet served.
    Cancel {
        /// The room.
        room: RoomId,
        /// The channel.
        channel: Channel,
        /// The ids no longer wanted (at most [`MAX_IDS`]).
        ids: Vec<u64>,
    },
    /// 0x07. Asks for one item of the room's metadata (codec parameters and
    /// the like), usually on the meta channel.
    MetaRequest {
        /// The room.
        room: RoomId,
        /// The item's key (at most [`MAX_KEY`] bytes).
        key: String,
    },
    /// 0x08. The answer to `MetaRequest`.
    MetaReply {
        /// The room.
        room: RoomId,
        /// The key asked for (at most [`MAX_KEY`] bytes).
        key: String,
        /// The value, or `None` if the sender has no such item.
        value: Option<Vec<u8>>,
    },
    /// 0x09. Keeps an idle channel connection alive; no payload.
    Heartbeat,
    /// 0x0A. Measures the round trip to a peer and tells it how loaded the
    /// sender is; answered by `Pong` with the same nonce.
    Ping {
        /// Echoed in the `Pong`.
        nonce: u64,
        /// The sender's workload (lower is better).
        workload: u32,
        /// How many trackers the sender is connected to.
        trackers: u16,
    },
    /// 0x0B. The answer to `Ping`, with the responder's own figures.
    Pong {
        /// The `Ping`'s nonce.
        nonce: u64,
        /// The responder's workload.
        workload: u32,
        /// How many trackers the responder is connected to.
        trackers: u16,
    },
    /// 0x0C. Asks which fragments of (room, channel) the receiver holds;
    /// answered by `Map`.
    MapRequest {
        /// The room.
        room: RoomId,
        /// The channel.
        channel: Channel,
    },
    /// 0x0D. The buffer map: bit `i` of `bits` (byte `i / 8`, least
    /// significant bit first) set means the sender holds fragment
    /// `first + i`. It describes `first ..= first + 8 * bits.len() - 1`
    /// and nothing else; empty `bits`: it holds none.
    Map {
        /// The room.
        room: RoomId,
        /// The channel.
        channel: Channel,
        /// The id of bit 0.
        first: u64,
        /// The bitmap (at most [`MAX_MAP_BYTES`]).
        bits: Vec<u8>,
    },

    // --- Tracker protocol (TCP; node <-> tracker, tracker <-> tracker) ----
    /// 0x10. The first frame a node sends on its tracker connection: who it
    /// is and where.
    Hello {
        /// The node's identity.
        node: NodeId,
        /// Edge, source or peer.
        role: Role,
        /// The room it is in.
        room: RoomId,
        /// Its UDP address as it sees it itself.
        local: SocketAddr,
        /// Its UDP address as a tracker saw it (from `Whoami`), if it
        /// knows; the tracker believes it only for the IP the connection
        /// comes from.
        public: Option<SocketAddr>,
        /// Its workload.
        workload: u32,
        /// Its NAT, as classified so far.
        nat: NatType,
        /// The edge key for edges and sources; empty for peers (bounded by
        /// the frame).
        key: Vec<u8>,
    },
    /// 0x11. The tracker's answer to an accepted `Hello`.
    HelloReply {
        /// The node's identity, echoed.
        node: NodeId,
        /// The node's public UDP address, if the tracker has observed it.
        public: Option<SocketAddr>,
        /// The tracker's own identity.
        tracker: NodeId,
    },
    /// 0x12. The first frame on a tracker-to-tracker link: the sending
    /// tracker announces itself.
    TrackerInfo {
        /// The tracker's identity.
        id: NodeId,
        /// Its TCP address (for nodes and trackers).
        addr: SocketAddr,
        /// Its UDP address (for `Whoami`).
        udp: SocketAddr,
    },
    /// 0x13. Asks for the trackers the receiver knows; no payload.
    TrackersRequest,
    /// 0x14. The answer to `TrackersRequest`.
    TrackersList {
        /// TCP addresses of known trackers (at most [`MAX_TRACKERS`]).
        trackers: Vec<SocketAddr>,
    },
    /// 0x15. Asks for nodes of a room to fetch from.
    NodesRequest {
        /// The room.
        room: RoomId,
        /// How the tracker should pick them.
        strategy: Strategy,
        /// At most this many (the answer holds at most [`MAX_NODES`]
        /// anyway).
        max: u16,
    },
    /// 0x16. The answer to `NodesRequest`.
    NodesList {
        /// The room.
        room: RoomId,
        /// The nodes picked (at most [`MAX_NODES`]).
        nodes: Vec<NodeInfo>,
    },
    /// 0x17. A node's periodic report; also the tracker connection's
    /// heartbeat.
    Update {
        /// The node's workload.
        workload: u32,
        /// Its NAT, as classified so far.
        nat: NatType,
    },
    /// 0x18. A source or edge asks the tracker for a new room.
    RoomAllocate {
        /// The key that allows it (bounded by the frame).
        key: Vec<u8>,
    },
    /// 0x19. The answer to `RoomAllocate`.
    RoomAllocated {
        /// The new room.
        room: RoomId,
    },
    /// 0x1A. The sender is leaving; the connection closes after it. No
    /// payload.
    Bye,

    // --- File catalog (TCP; node <-> tracker, tracker <-> tracker) --------
    /// 0x20. The sending node (registered with `Hello` on this connection)
    /// holds all or part of a file. Sent again, it updates `have`.
    /// Answered by a `Catalog` holding the file's entry as it now stands,
    /// or an `Error` (`Conflict`: the name stands for another file;
    /// `Invalid`: a bad name, or `have > pieces`; `TooMany`: a limit).
    Publish {
        /// The file.
        file: FileInfo,
        /// How many of its pieces the node holds.
        have: u32,
    },
    /// 0x21. The sending node no longer holds the file. Answered by a
    /// `Catalog` with what remains of the file's entry (empty once nobody
    /// holds it).
    Unpublish {
        /// The file's name (at most [`MAX_FILE_NAME`] bytes).
        name: String,
    },
    /// 0x22. Asks for the files whose names start with `prefix`, here and
    /// on linked trackers; answered by `Catalog`.
    CatalogRequest {
        /// The prefix; empty for every file (at most [`MAX_FILE_NAME`]
        /// bytes).
        prefix: String,
    },
    /// 0x23. The answer to `CatalogRequest`, `Publish` and `Unpublish`:
    /// files sorted by name, the first [`MAX_CATALOG`] that match.
    Catalog {
        /// The files (at most [`MAX_CATALOG`]).
        entries: Vec<CatalogEntry>,
    },
    /// 0x24. Asks who holds a file; answered by `Holders`.
    HoldersRequest {
        /// The file's name (at most [`MAX_FILE_NAME`] bytes).
        name: String,
        /// At most this many (the answer holds at most [`MAX_NODES`]
        /// anyway).
        max: u16,
    },
    /// 0x25. The answer to `HoldersRequest`: holders here and on linked
    /// trackers, never the asker; complete holders first, then the least
    /// loaded, then those with the most pieces. Empty for an unknown name.
    Holders {
        /// The file's name, echoed (at most [`MAX_FILE_NAME`] bytes).
        name: String,
        /// The holders (at most [`MAX_NODES`]).
        holders: Vec<Holder>,
    },
    /// 0x26. Tracker-to-tracker gossip: files held by nodes registered on
    /// the sender (a tracker's whole catalog may take several frames).
    HoldingsList {
        /// The holdings (at most [`MAX_HOLDINGS`]).
        holdings: Vec<Holding>,
    },

    // --- NAT discovery and punching (UDP datagrams, tracker connection) --
    /// 0x30. A node asks a tracker (UDP) for its public address.
    Whoami {
        /// Echoed in the reply.
        nonce: u64,
        /// Where the answer should come from: the same socket, the
        /// tracker's other port, or a linked tracker on another IP (tells
        /// the NAT kinds apart; see `libnet::nat`).
        reply_from: ReplyFrom,
    },
    /// 0x31. The answer to `Whoami`.
    WhoamiReply {
        /// The request's nonce.
        nonce: u64,
        /// The source address the request arrived from.
        observed: SocketAddr,
        /// Whether this reply was sent from another address than the one
        /// the request went to.
        from_other: bool,
    },
    /// 0x32. A peer asks the tracker to arrange a punch to another peer.
    PunchRequest {
        /// The requesting node.
        from: NodeId,
        /// The node to punch through to.
        to: NodeId,
        /// The room both are in.
        room: RoomId,
        /// Chosen by the requester; names this attempt everywhere.
        token: u64,
    },
    /// 0x33. The tracker tells the other peer who wants to punch to it.
    PunchNotify {
        /// The requesting node, with its addresses.
        peer: NodeInfo,
        /// The attempt's token.
        token: u64,
    },
    /// 0x34. Sent by both peers to each other's addresses (UDP) until one
    /// arrives.
    PunchProbe {
        /// The attempt's token.
        token: u64,
        /// The sending node.
        from: NodeId,
        /// The sender has received a probe of this attempt from the
        /// receiver (so the path works both ways once this arrives).
        heard: bool,
    },
    /// 0x35. A peer reports an attempt's outcome to the tracker.
    PunchResult {
        /// The attempt's token.
        token: u64,
        /// The node punched to.
        to: NodeId,
        /// Whether a direct path was established.
        ok: bool,
        /// Whether the peers fell back to relaying through the edge.
        relayed: bool,
    },
    /// 0x36. A peer asks the edge to relay to a node it could not punch to.
    RelayOpen {
        /// The room.
        room: RoomId,
        /// The node to relay to.
        to: NodeId,
        /// The failed attempt's token; names the relay.
        token: u64,
    },
    /// 0x37. Bytes through an open relay, in either direction.
    RelayData {
        /// The relay's token.
        token: u64,
        /// The bytes (bounded by the frame).
        data: Vec<u8>,
    },
    /// 0x38. A tracker asks a linked tracker (over their TCP link) to answer
    /// a `Whoami` that asked for `ReplyFrom::OtherIp`: send a
    /// `WhoamiReply` with `from_other` set to `observed`, from its own UDP
    /// socket. Only taken from linked trackers (else a tracker would send
    /// datagrams anywhere on request).
    WhoamiRelay {
        /// The probe's nonce.
        nonce: u64,
        /// Where the probe came from (and where the answer goes).
        observed: SocketAddr,
    },

    // --- Chat -------------------------------------------------------------
    /// 0x40. Joins the chat under a name.
    ChatLogin {
        /// The name (at most [`MAX_NAME`] bytes).
        name: String,
    },
    /// 0x41. Leaves the chat; no payload.
    ChatLogout,
    /// 0x42. Asks for the users logged in; no payload.
    ChatListRequest,
    /// 0x43. The answer to `ChatListRequest`.
    ChatList {
        /// The users (at most [`MAX_CHAT_USERS`]).
        users: Vec<ChatUser>,
    },
    /// 0x44. A chat message.
    ChatMessage {
        /// The sender's name (at most [`MAX_NAME`] bytes).
        from: String,
        /// The recipient's name, empty for everyone (at most [`MAX_NAME`]
        /// bytes).
        to: String,
        /// The text (at most [`MAX_CHAT_TEXT`] bytes).
        text: String,
    },

    // --- Error ------------------------------------------------------------
    /// 0x7F. A request failed, or the sender is about to disconnect.
    Error {
        /// An [`ErrorCode`] (codes unknown to the receiver still decode).
        code: u16,
        /// What went wrong, for logs (at most [`MAX_ERROR_TEXT`] bytes).
        text: String,
    },
}

impl Message {
    /// An `Error` message, its text cut (at a character boundary) to
    /// [`MAX_ERROR_TEXT`] bytes so that it always encodes.
    pub fn error(code: ErrorCode, text: &str) -> Message {
        let mut end = text.len().min(MAX_ERROR_TEXT);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Message::Error {
            code: code.code(),
            text: text.get(..end).unwrap_or_default().to_owned(),
        }
    }

    /// The message's type code (byte 2 of its frame).
    pub fn code(&self) -> u8 {
        match self {
            Message::Init { .. } => T_INIT,
            Message::InitReply { .. } => T_INIT_REPLY,
            Message::FragmentRequest { .. } => T_FRAGMENT_REQUEST,
            Message::Fragment { .. } => T_FRAGMENT,
            Message::FragmentMissing { .. } => T_FRAGMENT_MISSING,
            Message::Cancel { .. } => T_CANCEL,
            Message::MetaRequest { .. } => T_META_REQUEST,
            Message::MetaReply { .. } => T_META_REPLY,
            Message::Heartbeat => T_HEARTBEAT,
            Message::Ping { .. } => T_PING,
            Message::Pong { .. } => T_PONG,
            Message::MapRequest { .. } => T_MAP_REQUEST,
            Message::Map { .. } => T_MAP,
            Message::Hello { .. } => T_HELLO,
            Message::HelloReply { .. } => T_HELLO_REPLY,
            Message::TrackerInfo { .. } => T_TRACKER_INFO,
            Message::TrackersRequest => T_TRACKERS_REQUEST,
            Message::TrackersList { .. } => T_TRACKERS_LIST,
            Message::NodesRequest { .. } => T_NODES_REQUEST,
            Message::NodesList { .. } => T_NODES_LIST,
            Message::Update { .. } => T_UPDATE,
            Message::RoomAllocate { .. } => T_ROOM_ALLOCATE,
            Message::RoomAllocated { .. } => T_ROOM_ALLOCATED,
            Message::Bye => T_BYE,
            Message::Publish { .. } => T_PUBLISH,
            Message::Unpublish { .. } => T_UNPUBLISH,
            Message::CatalogRequest { .. } => T_CATALOG_REQUEST,
            Message::Catalog { .. } => T_CATALOG,
            Message::HoldersRequest { .. } => T_HOLDERS_REQUEST,
            Message::Holders { .. } => T_HOLDERS,
            Message::HoldingsList { .. } => T_HOLDINGS_LIST,
            Message::Whoami { .. } => T_WHOAMI,
            Message::WhoamiReply { .. } => T_WHOAMI_REPLY,
            Message::PunchRequest { .. } => T_PUNCH_REQUEST,
            Message::PunchNotify { .. } => T_PUNCH_NOTIFY,
            Message::PunchProbe { .. } => T_PUNCH_PROBE,
            Message::PunchResult { .. } => T_PUNCH_RESULT,
            Message::RelayOpen { .. } => T_RELAY_OPEN,
            Message::RelayData { .. } => T_RELAY_DATA,
            Message::WhoamiRelay { .. } => T_WHOAMI_RELAY,
            Message::ChatLogin { .. } => T_CHAT_LOGIN,
            Message::ChatLogout => T_CHAT_LOGOUT,
            Message::ChatListRequest => T_CHAT_LIST_REQUEST,
            Message::ChatList { .. } => T_CHAT_LIST,
            Message::ChatMessage { .. } => T_CHAT_MESSAGE,
            Message::Error { .. } => T_ERROR,
        }
    }

    /// The variant's name, as error messages and logs spell it.
    pub fn name(&self) -> &'static str {
        type_name(self.code()).unwrap_or("?")
    }

    /// Appends the message as one whole frame to `out`. On error `out` is
    /// left as it was: a field over its bound, or a frame over
    /// [`MAX_FRAME`]. A frame this produces always decodes.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = out.len();
        out.extend_from_slice(&[MAGIC, VERSION, self.code(), 0, 0, 0, 0, 0]);
        let mut w = Writer {
            out: &mut *out,
            start,
            msg: self.name(),
        };
        let result = self.encode_payload(&mut w).and_then(|()| {
            let frame = out.len() - start;
            if frame > MAX_FRAME {
                return Err(EncodeError::FrameTooLarge {
                    len: frame,
                    max: MAX_FRAME,
                });
            }
            let len =
                u32::try_from(frame - HEADER_LEN).map_err(|_| EncodeError::FrameTooLarge {
                    len: frame,
                    max: MAX_FRAME,
                })?;
            if let Some(slot) = out.get_mut(start + 4..start + HEADER_LEN) {
                slot.copy_from_slice(&len.to_be_bytes());
            }
            Ok(())
        });
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    /// The message as one whole frame.
    pub fn to_frame(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        self.encode(&mut out)?;
        Ok(out)
    }

    /// Parses exactly one whole frame (a datagram, an RUDP message): the
    /// header's length must match the bytes given, and the frame must not
    /// exceed [`MAX_FRAME`].
    pub fn decode_frame(frame: &[u8]) -> Result<Message, DecodeError> {
        let Some((code, len)) = check_header(frame, MAX_FRAME)? else {
            return Err(DecodeError::ShortFrame { len: frame.len() });
        };
        let payload = frame.get(HEADER_LEN..).unwrap_or_default();
        if payload.len() != len {
            return Err(DecodeError::LengthMismatch {
                declared: len,
                actual: payload.len(),
            });
        }
        decode_payload(code, payload)
    }

    fn encode_payload(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        match self {
            Message::Init { room, channel } => {
                w.u32(*room);
                w.u8(channel.code());
            }
            Message::InitReply {
                room,
                channel,
                first,
                last,
            } => {
                w.u32(*room);
                w.u8(channel.code());
                w.u64(*first);
                w.u64(*last);
            }
            Message::FragmentRequest {
                room,
                channel,
                priority,
                ids,
            } => {
                w.u32(*room);
                w.u8(channel.code());
                w.u8(*priority);
                w.ids(ids, MAX_IDS, "fragment id")?;
            }
            Message::Fragment {
                room,
                channel,
                id,
                timestamp,
                data,
            } => {
                w.u32(*room);
                w.u8(channel.code());
                w.u64(*id);
                w.u64(*timestamp);
                w.bytes(data)?;
            }
            Message::FragmentMissing { room, channel, ids }
            | Message::Cancel { room, channel, ids } => {
                w.u32(*room);
                w.u8(channel.code());
                w.ids(ids, MAX_IDS, "fragment id")?;
            }
            Message::MapRequest { room, channel } => {
                w.u32(*room);
                w.u8(channel.code());
            }
            Message::Map {
                room,
                channel,
                first,
                bits,
            } => {
                w.u32(*room);
                w.u8(channel.code());
                w.u64(*first);
                w.count(bits.len(), MAX_MAP_BYTES, "map byte")?;
                for &b in bits {
                    w.u8(b);
                }
            }
            Message::MetaRequest { room, key } => {
                w.u32(*room);
                w.str(key, MAX_KEY, "key")?;
            }
            Message::MetaReply { room, key, value } => {
                w.u32(*room);
                w.str(key, MAX_KEY, "key")?;
                match value {
                    None => w.u8(0),
                    Some(v) => {
                        w.u8(1);
                        w.bytes(v)?;
                    }
                }
            }
            Message::Heartbeat
            | Message::TrackersRequest
            | Message::Bye
            | Message::ChatLogout
            | Message::ChatListRequest => {}
            Message::Ping {
                nonce,
                workload,
                trackers,
            }
            | Message::Pong {
                nonce,
                workload,
                trackers,
            } => {
                w.u64(*nonce);
                w.u32(*workload);
                w.u16(*trackers);
            }
            Message::Hello {
                node,
                role,
                room,
                local,
                public,
                workload,
                nat,
                key,
            } => {
                w.u64(*node);
                w.u8(role.code());
                w.u32(*room);
                w.addr(local);
                match public {
                    None => w.u8(0),
                    Some(a) => {
                        w.u8(1);
                        w.addr(a);
                    }
                }
                w.u32(*workload);
                w.u8(nat.code());
                w.bytes(key)?;
            }
            Message::HelloReply {
                node,
                public,
                tracker,
            } => {
                w.u64(*node);
                match public {
                    None => w.u8(0),
                    Some(a) => {
                        w.u8(1);
                        w.addr(a);
                    }
                }
                w.u64(*tracker);
            }
            Message::TrackerInfo { id, addr, udp } => {
                w.u64(*id);
                w.addr(addr);
                w.addr(udp);
            }
            Message::TrackersList { trackers } => {
                w.count(trackers.len(), MAX_TRACKERS, "tracker")?;
                for a in trackers {
                    w.addr(a);
                }
            }
            Message::NodesRequest {
                room,
                strategy,
                max,
            } => {
                w.u32(*room);
                w.u8(strategy.code());
                w.u16(*max);
            }
            Message::NodesList { room, nodes } => {
                w.u32(*room);
                w.count(nodes.len(), MAX_NODES, "node")?;
                for n in nodes {
                    w.node(n);
                }
            }
            Message::Update { workload, nat } => {
                w.u32(*workload);
                w.u8(nat.code());
            }
            Message::RoomAllocate { key } => w.bytes(key)?,
            Message::RoomAllocated { room } => w.u32(*room),
            Message::Publish { file, have } => {
                w.file(file)?;
                w.u32(*have);
            }
            Message::Unpublish { name } => w.str(name, MAX_FILE_NAME, "file name")?,
            Message::CatalogRequest { prefix } => w.str(prefix, MAX_FILE_NAME, "prefix")?,
            Message::Catalog { entries } => {
                w.count(entries.len(), MAX_CATALOG, "catalog entry")?;
                for e in entries {
                    w.file(&e.file)?;
                    w.u32(e.holders);
                    w.u32(e.complete);
                }
            }
            Message::HoldersRequest { name, max } => {
                w.str(name, MAX_FILE_NAME, "file name")?;
                w.u16(*max);
            }
            Message::Holders { name, holders } => {
                w.str(name, MAX_FILE_NAME, "file name")?;
                w.count(holders.len(), MAX_NODES, "holder")?;
                for h in holders {
                    w.node(&h.node);
                    w.u32(h.have);
                    w.addr(&h.tracker);
                }
            }
            Message::HoldingsList { holdings } => {
                w.count(holdings.len(), MAX_HOLDINGS, "holding")?;
                for h in holdings {
                    w.file(&h.file)?;
                    w.node(&h.node);
                    w.u32(h.have);
                }
            }
            Message::Whoami { nonce, reply_from } => {
                w.u64(*nonce);
                w.u8(reply_from_code(*reply_from));
            }
            Message::WhoamiReply {
                nonce,
                observed,
                from_other,
            } => {
                w.u64(*nonce);
                w.addr(observed);
                w.bool(*from_other);
            }
            Message::PunchRequest {
                from,
                to,
                room,
                token,
            } => {
                w.u64(*from);
                w.u64(*to);
                w.u32(*room);
                w.u64(*token);
            }
            Message::PunchNotify { peer, token } => {
                w.node(peer);
                w.u64(*token);
            }
            Message::PunchProbe { token, from, heard } => {
                w.u64(*token);
                w.u64(*from);
                w.bool(*heard);
            }
            Message::PunchResult {
                token,
                to,
                ok,
                relayed,
            } => {
                w.u64(*token);
                w.u64(*to);
                w.bool(*ok);
                w.bool(*relayed);
            }
            Message::RelayOpen { room, to, token } => {
                w.u32(*room);
                w.u64(*to);
                w.u64(*token);
            }
            Message::RelayData { token, data } => {
                w.u64(*token);
                w.bytes(data)?;
            }
            Message::WhoamiRelay { nonce, observed } => {
                w.u64(*nonce);
                w.addr(observed);
            }
            Message::ChatLogin { name } => w.str(name, MAX_NAME, "name")?,
            Message::ChatList { users } => {
                w.count(users.len(), MAX_CHAT_USERS, "chat user")?;
                for u in users {
                    w.str(&u.name, MAX_NAME, "user name")?;
                    w.u64(u.node);
                    w.addr(&u.public);
                    w.u32(u.ttl_secs);
                    w.ids(&u.punched, MAX_PUNCHED, "punched node")?;
                }
            }
            Message::ChatMessage { from, to, text } => {
                w.str(from, MAX_NAME, "sender name")?;
                w.str(to, MAX_NAME, "recipient name")?;
                w.str(text, MAX_CHAT_TEXT, "text")?;
            }
            Message::Error { code, text } => {
                w.u16(*code);
                w.str(text, MAX_ERROR_TEXT, "error text")?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

/// Appends fields to a frame under construction (its header starts at
/// `start`).
struct Writer<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
    msg: &'static str,
}

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.out.push(v);
    }

    fn u16(&mut self, v: u16) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }

    fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }

    fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }

    fn addr(&mut self, a: &SocketAddr) {
        match a.ip() {
            IpAddr::V4(ip) => {
                self.u8(4);
                self.out.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                self.u8(6);
                self.out.extend_from_slice(&ip.octets());
            }
        }
        self.u16(a.port());
    }

    fn node(&mut self, n: &NodeInfo) {
        self.u64(n.id);
        self.u8(n.role.code());
        self.u32(n.room);
        self.addr(&n.public);
        self.addr(&n.local);
        self.u32(n.workload);
        self.u8(n.nat.code());
    }

    fn file(&mut self, f: &FileInfo) -> Result<(), EncodeError> {
        self.str(&f.name, MAX_FILE_NAME, "file name")?;
        self.u64(f.size);
        self.u64(f.duration_ms);
        self.u32(f.pieces);
        self.out.extend_from_slice(&f.index);
        Ok(())
    }

    fn str(&mut self, s: &str, max: usize, field: &'static str) -> Result<(), EncodeError> {
        let too_long = || EncodeError::StringTooLong {
            message: self.msg,
            field,
            len: s.len(),
            max,
        };
        if s.len() > max {
            return Err(too_long());
        }
        let len = u16::try_from(s.len()).map_err(|_| too_long())?;
        self.u16(len);
        self.out.extend_from_slice(s.as_bytes());
        Ok(())
    }

    /// A list's count; the caller writes the items.
    fn count(&mut self, n: usize, max: usize, field: &'static str) -> Result<(), EncodeError> {
        let too_long = || EncodeError::ListTooLong {
            message: self.msg,
            field,
            count: n,
            max,
        };
        if n > max {
            return Err(too_long());
        }
        let n = u16::try_from(n).map_err(|_| too_long())?;
        self.u16(n);
        Ok(())
    }

    fn ids(&mut self, ids: &[u64], max: usize, field: &'static str) -> Result<(), EncodeError> {
        self.count(ids.len(), max, field)?;
        for &id in ids {
            self.u64(id);
        }
        Ok(())
    }

    /// A byte field. Checked against the frame bound before it is copied;
    /// byte fields are always last in their message, so the size computed
    /// here is the frame's.
    fn bytes(&mut self, b: &[u8]) -> Result<(), EncodeError> {
        let frame = (self.out.len() - self.start)
            .saturating_add(4)
            .saturating_add(b.len());
        let too_large = EncodeError::FrameTooLarge {
            len: frame,
            max: MAX_FRAME,
        };
        if frame > MAX_FRAME {
            return Err(too_large);
        }
        let len = u32::try_from(b.len()).map_err(|_| too_large)?;
        self.u32(len);
        self.out.extend_from_slice(b);
        Ok(())
    }
}

/// Why a message could not be encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// A string field is longer than its bound.
    StringTooLong {
        /// The message's name.
        message: &'static str,
        /// The field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// Its bound in bytes.
        max: usize,
    },
    /// A list field has more items than its bound.
    ListTooLong {
        /// The message's name.
        message: &'static str,
        /// What the list holds.
        field: &'static str,
        /// How many items it has.
        count: usize,
        /// Its bound.
        max: usize,
    },
    /// The frame would exceed [`MAX_FRAME`].
    FrameTooLarge {
        /// The frame's size in bytes, header included.
        len: usize,
        /// The bound.
        max: usize,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::StringTooLong {
                message,
                field,
                len,
                max,
            } => write!(
                f,
                "{field} of {len} bytes exceeds the {max}-byte limit in {message}"
            ),
            EncodeError::ListTooLong {
                message,
                field,
                count,
                max,
            } => write!(
                f,
                "{count} {field} entries exceed the limit of {max} in {message}"
            ),
            EncodeError::FrameTooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the {max}-byte limit")
            }
        }
    }
}

impl std::error::Error for EncodeError {}

impl From<EncodeError> for io::Error {
    fn from(e: EncodeError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, e)
    }
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/// Why bytes could not be decoded. A stream that produced one is unusable.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The first byte is not [`MAGIC`].
    BadMagic(u8),
    /// The version byte is not [`VERSION`].
    BadVersion(u8),
    /// The type byte names no message.
    UnknownType(u8),
    /// The flags byte is not zero.
    BadFlags(u8),
    /// The header declares a frame larger than the bound.
    FrameTooLarge {
        /// The declared frame size, header included.
        len: u64,
        /// The bound.
        max: usize,
    },
    /// A datagram too short to hold a frame header.
    ShortFrame {
        /// Its length.
        len: usize,
    },
    /// A datagram whose payload is not the length its header declares.
    LengthMismatch {
        /// The declared payload length.
        declared: usize,
        /// The payload bytes present.
        actual: usize,
    },
    /// The payload ends inside a field.
    Truncated {
        /// The message's name.
        message: &'static str,
        /// The field.
        field: &'static str,
    },
    /// Bytes are left in the payload after the message's last field.
    TrailingBytes {
        /// The message's name.
        message: &'static str,
        /// How many.
        extra: usize,
    },
    /// A string field is longer than its bound.
    StringTooLong {
        /// The message's name.
        message: &'static str,
        /// The field.
        field: &'static str,
        /// Its declared length.
        len: usize,
        /// Its bound.
        max: usize,
    },
    /// A string field is not UTF-8.
    BadUtf8 {
        /// The message's name.
        message: &'static str,
        /// The field.
        field: &'static str,
    },
    /// A list's count exceeds its bound.
    ListTooLong {
        /// The message's name.
        message: &'static str,
        /// What the list holds.
        field: &'static str,
        /// The declared count.
        count: usize,
        /// Its bound.
        max: usize,
    },
    /// An enum, bool, option or address-family byte outside its codes.
    BadCode {
        /// The message's name.
        message: &'static str,
        /// The field.
        field: &'static str,
        /// The byte.
        code: u8,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::BadMagic(b) => {
                write!(f, "bad magic byte 0x{b:02x} (expected 0x{MAGIC:02x})")
            }
            DecodeError::BadVersion(v) => {
                write!(f, "unsupported protocol version {v} (expected {VERSION})")
            }
            DecodeError::UnknownType(t) => write!(f, "unknown message type 0x{t:02x}"),
            DecodeError::BadFlags(b) => write!(f, "non-zero flags 0x{b:02x}"),
            DecodeError::FrameTooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the {max}-byte limit")
            }
            DecodeError::ShortFrame { len } => write!(
                f,
                "frame of {len} bytes is shorter than the {HEADER_LEN}-byte header"
            ),
            DecodeError::LengthMismatch { declared, actual } => write!(
                f,
                "frame header declares a {declared}-byte payload but {actual} bytes follow it"
            ),
            DecodeError::Truncated { message, field } => {
                write!(f, "truncated {field} in {message}")
            }
            DecodeError::TrailingBytes { message, extra } => {
                write!(
                    f,
                    "{extra} trailing bytes after the last field of {message}"
                )
            }
            DecodeError::StringTooLong {
                message,
                field,
                len,
                max,
            } => write!(
                f,
                "{field} of {len} bytes exceeds the {max}-byte limit in {message}"
            ),
            DecodeError::BadUtf8 { message, field } => {
                write!(f, "{field} is not valid UTF-8 in {message}")
            }
            DecodeError::ListTooLong {
                message,
                field,
                count,
                max,
            } => write!(
                f,
                "{count} {field} entries exceed the limit of {max} in {message}"
            ),
            DecodeError::BadCode {
                message,
                field,
                code,
            } => write!(f, "invalid {field} code 0x{code:02x} in {message}"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl From<DecodeError> for io::Error {
    fn from(e: DecodeError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Checks whatever prefix of a header `head` holds (so garbage is caught
/// from its first byte). Once all [`HEADER_LEN`] bytes are there, returns
/// the type code and the payload length, checked against `max_frame`.
fn check_header(head: &[u8], max_frame: usize) -> Result<Option<(u8, usize)>, DecodeError> {
    if let Some(&m) = head.first() {
        if m != MAGIC {
            return Err(DecodeError::BadMagic(m));
        }
    }
    if let Some(&v) = head.get(1) {
        if v != VERSION {
            return Err(DecodeError::BadVersion(v));
        }
    }
    if let Some(&t) = head.get(2) {
        if type_name(t).is_none() {
            return Err(DecodeError::UnknownType(t));
        }
    }
    if let Some(&fl) = head.get(3) {
        if fl != 0 {
            return Err(DecodeError::BadFlags(fl));
        }
    }
    let Some(Ok([_, _, code, _, l0, l1, l2, l3])) = head.get(..HEADER_LEN).map(<[u8; 8]>::try_from)
    else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([l0, l1, l2, l3]);
    let frame = u64::from(len) + HEADER_LEN as u64;
    let too_large = DecodeError::FrameTooLarge {
        len: frame,
        max: max_frame,
    };
    if frame > u64::try_from(max_frame).unwrap_or(u64::MAX) {
        return Err(too_large);
    }
    let len = usize::try_from(len).map_err(|_| too_large)?;
    Ok(Some((code, len)))
}

/// Reads fields off the front of a payload.
struct Reader<'a> {
    rest: &'a [u8],
    msg: &'static str,
}

impl<'a> Reader<'a> {
    fn truncated(&self, field: &'static str) -> DecodeError {
        DecodeError::Truncated {
            message: self.msg,
            field,
        }
    }

    fn bad_code(&self, field: &'static str, code: u8) -> DecodeError {
        DecodeError::BadCode {
            message: self.msg,
            field,
            code,
        }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let Some((head, tail)) = self.rest.split_at_checked(n) else {
            return Err(self.truncated(field));
        };
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N, field)?;
        <[u8; N]>::try_from(bytes).map_err(|_| self.truncated(field))
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array(field)?))
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            c => Err(self.bad_code(field, c)),
        }
    }

    /// An option's presence byte.
    fn present(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        self.bool(field)
    }

    fn enum_code<T>(
        &mut self,
        field: &'static str,
        from_code: fn(u8) -> Option<T>,
    ) -> Result<T, DecodeError> {
        let c = self.u8(field)?;
        from_code(c).ok_or_else(|| self.bad_code(field, c))
    }

    fn channel(&mut self) -> Result<Channel, DecodeError> {
        self.enum_code("channel", Channel::from_code)
    }

    fn role(&mut self) -> Result<Role, DecodeError> {
        self.enum_code("role", Role::from_code)
    }

    fn nat(&mut self) -> Result<NatType, DecodeError> {
        self.enum_code("NAT type", NatType::from_code)
    }

    fn strategy(&mut self) -> Result<Strategy, DecodeError> {
        self.enum_code("strategy", Strategy::from_code)
    }

    fn addr(&mut self, field: &'static str) -> Result<SocketAddr, DecodeError> {
        let ip = match self.u8(field)? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>(field)?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>(field)?)),
            c => return Err(self.bad_code(field, c)),
        };
        let port = self.u16(field)?;
        Ok(match ip {
            IpAddr::V4(ip) => SocketAddr::from((ip, port)),
            IpAddr::V6(ip) => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0)),
        })
    }

    fn node(&mut self) -> Result<NodeInfo, DecodeError> {
        Ok(NodeInfo {
            id: self.u64("node id")?,
            role: self.role()?,
            room: self.u32("room")?,
            public: self.addr("public address")?,
            local: self.addr("local address")?,
            workload: self.u32("workload")?,
            nat: self.nat()?,
        })
    }

    fn str(&mut self, max: usize, field: &'static str) -> Result<String, DecodeError> {
        let len = usize::from(self.u16(field)?);
        if len > max {
            return Err(DecodeError::StringTooLong {
                message: self.msg,
                field,
                len,
                max,
            });
        }
        let bytes = self.take(len, field)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(DecodeError::BadUtf8 {
                message: self.msg,
                field,
            }),
        }
    }

    fn bytes(&mut self, field: &'static str) -> Result<Vec<u8>, DecodeError> {
        let len = self.u32(field)?;
        let len = usize::try_from(len).map_err(|_| self.truncated(field))?;
        Ok(self.take(len, field)?.to_vec())
    }

    /// A list's count, checked against its bound.
    fn count(&mut self, max: usize, field: &'static str) -> Result<usize, DecodeError> {
        let count = usize::from(self.u16(field)?);
        if count > max {
            return Err(DecodeError::ListTooLong {
                message: self.msg,
                field,
                count,
                max,
            });
        }
        Ok(count)
    }

    /// A bounded list; `max` (at most `u16::MAX`) bounds the allocation.
    fn list<T>(
        &mut self,
        max: usize,
        field: &'static str,
        mut item: impl FnMut(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let count = self.count(max, field)?;
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            items.push(item(self)?);
        }
        Ok(items)
    }

    fn ids(&mut self, max: usize, field: &'static str) -> Result<Vec<u64>, DecodeError> {
        self.list(max, field, |r| r.u64(field))
    }

    fn chat_user(&mut self) -> Result<ChatUser, DecodeError> {
        Ok(ChatUser {
            name: self.str(MAX_NAME, "user name")?,
            node: self.u64("user node")?,
            public: self.addr("user address")?,
            ttl_secs: self.u32("user ttl")?,
            punched: self.ids(MAX_PUNCHED, "punched node")?,
        })
    }

    fn file(&mut self) -> Result<FileInfo, DecodeError> {
        Ok(FileInfo {
            name: self.str(MAX_FILE_NAME, "file name")?,
            size: self.u64("file size")?,
            duration_ms: self.u64("duration")?,
            pieces: self.u32("piece count")?,
            index: self.array("index")?,
        })
    }

    fn catalog_entry(&mut self) -> Result<CatalogEntry, DecodeError> {
        Ok(CatalogEntry {
            file: self.file()?,
            holders: self.u32("holder count")?,
            complete: self.u32("complete count")?,
        })
    }

    fn holder(&mut self) -> Result<Holder, DecodeError> {
        Ok(Holder {
            node: self.node()?,
            have: self.u32("pieces held")?,
            tracker: self.addr("tracker address")?,
        })
    }

    fn holding(&mut self) -> Result<Holding, DecodeError> {
        Ok(Holding {
            file: self.file()?,
            node: self.node()?,
            have: self.u32("pieces held")?,
        })
    }

    fn finish(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                message: self.msg,
                extra: self.rest.len(),
            })
        }
    }
}

/// Parses the payload of a frame of type `code`. (Struct fields below are
/// read in the order they are written, which is the wire order.)
fn decode_payload(code: u8, payload: &[u8]) -> Result<Message, DecodeError> {
    let Some(msg) = type_name(code) else {
        return Err(DecodeError::UnknownType(code));
    };
    let mut r = Reader { rest: payload, msg };
    let m = match code {
        T_INIT => Message::Init {
            room: r.u32("room")?,
            channel: r.channel()?,
        },
        T_INIT_REPLY => Message::InitReply {
            room: r.u32("room")?,
            channel: r.channel()?,
            first: r.u64("first id")?,
            last: r.u64("last id")?,
        },
        T_FRAGMENT_REQUEST => Message::FragmentRequest {
            room: r.u32("room")?,
            channel: r.channel()?,
            priority: r.u8("priority")?,
            ids: r.ids(MAX_IDS, "fragment id")?,
        },
        T_FRAGMENT => Message::Fragment {
            room: r.u32("room")?,
            channel: r.channel()?,
            id: r.u64("fragment id")?,
            timestamp: r.u64("timestamp")?,
            data: r.bytes("fragment data")?,
        },
        T_FRAGMENT_MISSING => Message::FragmentMissing {
            room: r.u32("room")?,
            channel: r.channel()?,
            ids: r.ids(MAX_IDS, "fragment id")?,
        },
        T_CANCEL => Message::Cancel {
            room: r.u32("room")?,
            channel: r.channel()?,
            ids: r.ids(MAX_IDS, "fragment id")?,
        },
        T_META_REQUEST => Message::MetaRequest {
            room: r.u32("room")?,
            key: r.str(MAX_KEY, "key")?,
        },
        T_META_REPLY => Message::MetaReply {
            room: r.u32("room")?,
            key: r.str(MAX_KEY, "key")?,
            value: if r.present("value presence")? {
                Some(r.bytes("value")?)
            } else {
                None
            },
        },
        T_HEARTBEAT => Message::Heartbeat,
        T_MAP_REQUEST => Message::MapRequest {
            room: r.u32("room")?,
            channel: r.channel()?,
        },
        T_MAP => Message::Map {
            room: r.u32("room")?,
            channel: r.channel()?,
            first: r.u64("first id")?,
            bits: {
                let n = r.count(MAX_MAP_BYTES, "map byte")?;
                r.take(n, "map")?.to_vec()
            },
        },
        T_PING => Message::Ping {
            nonce: r.u64("nonce")?,
            workload: r.u32("workload")?,
            trackers: r.u16("tracker count")?,
        },
        T_PONG => Message::Pong {
            nonce: r.u64("nonce")?,
            workload: r.u32("workload")?,
            trackers: r.u16("tracker count")?,
        },
        T_HELLO => Message::Hello {
            node: r.u64("node id")?,
            role: r.role()?,
            room: r.u32("room")?,
            local: r.addr("local address")?,
            public: if r.present("public address presence")? {
                Some(r.addr("public address")?)
            } else {
                None
            },
            workload: r.u32("workload")?,
            nat: r.nat()?,
            key: r.bytes("key")?,
        },
        T_HELLO_REPLY => Message::HelloReply {
            node: r.u64("node id")?,
            public: if r.present("public address presence")? {
                Some(r.addr("public address")?)
            } else {
                None
            },
            tracker: r.u64("tracker id")?,
        },
        T_TRACKER_INFO => Message::TrackerInfo {
            id: r.u64("tracker id")?,
            addr: r.addr("TCP address")?,
            udp: r.addr("UDP address")?,
        },
        T_TRACKERS_REQUEST => Message::TrackersRequest,
        T_TRACKERS_LIST => Message::TrackersList {
            trackers: r.list(MAX_TRACKERS, "tracker", |r| r.addr("tracker address"))?,
        },
        T_NODES_REQUEST => Message::NodesRequest {
            room: r.u32("room")?,
            strategy: r.strategy()?,
            max: r.u16("max")?,
        },
        T_NODES_LIST => Message::NodesList {
            room: r.u32("room")?,
            nodes: r.list(MAX_NODES, "node", Reader::node)?,
        },
        T_UPDATE => Message::Update {
            workload: r.u32("workload")?,
            nat: r.nat()?,
        },
        T_ROOM_ALLOCATE => Message::RoomAllocate {
            key: r.bytes("key")?,
        },
        T_ROOM_ALLOCATED => Message::RoomAllocated {
            room: r.u32("room")?,
        },
        T_BYE => Message::Bye,
        T_PUBLISH => Message::Publish {
            file: r.file()?,
            have: r.u32("pieces held")?,
        },
        T_UNPUBLISH => Message::Unpublish {
            name: r.str(MAX_FILE_NAME, "file name")?,
        },
        T_CATALOG_REQUEST => Message::CatalogRequest {
            prefix: r.str(MAX_FILE_NAME, "prefix")?,
        },
        T_CATALOG => Message::Catalog {
            entries: r.list(MAX_CATALOG, "catalog entry", Reader::catalog_entry)?,
        },
        T_HOLDERS_REQUEST => Message::HoldersRequest {
            name: r.str(MAX_FILE_NAME, "file name")?,
            max: r.u16("max")?,
        },
        T_HOLDERS => Message::Holders {
            name: r.str(MAX_FILE_NAME, "file name")?,
            holders: r.list(MAX_NODES, "holder", Reader::holder)?,
        },
        T_HOLDINGS_LIST => Message::HoldingsList {
            holdings: r.list(MAX_HOLDINGS, "holding", Reader::holding)?,
        },
        T_WHOAMI => Message::Whoami {
            nonce: r.u64("nonce")?,
            reply_from: r.enum_code("reply-from", reply_from_of_code)?,
        },
        T_WHOAMI_REPLY => Message::WhoamiReply {
            nonce: r.u64("nonce")?,
            observed: r.addr("observed address")?,
            from_other: r.bool("from-other flag")?,
        },
        T_PUNCH_REQUEST => Message::PunchRequest {
            from: r.u64("from node")?,
            to: r.u64("to node")?,
            room: r.u32("room")?,
            token: r.u64("token")?,
        },
        T_PUNCH_NOTIFY => Message::PunchNotify {
            peer: r.node()?,
            token: r.u64("token")?,
        },
        T_PUNCH_PROBE => Message::PunchProbe {
            token: r.u64("token")?,
            from: r.u64("from node")?,
            heard: r.bool("heard flag")?,
        },
        T_PUNCH_RESULT => Message::PunchResult {
            token: r.u64("token")?,
            to: r.u64("to node")?,
            ok: r.bool("ok flag")?,
            relayed: r.bool("relayed flag")?,
        },
        T_RELAY_OPEN => Message::RelayOpen {
            room: r.u32("room")?,
            to: r.u64("to node")?,
            token: r.u64("token")?,
        },
        T_RELAY_DATA => Message::RelayData {
            token: r.u64("token")?,
            data: r.bytes("relay data")?,
        },
        T_WHOAMI_RELAY => Message::WhoamiRelay {
            nonce: r.u64("nonce")?,
            observed: r.addr("observed address")?,
        },
        T_CHAT_LOGIN => Message::ChatLogin {
            name: r.str(MAX_NAME, "name")?,
        },
        T_CHAT_LOGOUT => Message::ChatLogout,
        T_CHAT_LIST_REQUEST => Message::ChatListRequest,
        T_CHAT_LIST => Message::ChatList {
            users: r.list(MAX_CHAT_USERS, "chat user", Reader::chat_user)?,
        },
        T_CHAT_MESSAGE => Message::ChatMessage {
            from: r.str(MAX_NAME, "sender name")?,
            to: r.str(MAX_NAME, "recipient name")?,
            text: r.str(MAX_CHAT_TEXT, "text")?,
        },
        T_ERROR => Message::Error {
            code: r.u16("error code")?,
            text: r.str(MAX_ERROR_TEXT, "error text")?,
        },
        _ => return Err(DecodeError::UnknownType(code)),
    };
    r.finish()?;
    Ok(m)
}

/// Cuts a byte stream (a TCP connection) into messages.
///
/// [`push`](Decoder::push) what the socket gave, then call
/// [`next`](Decoder::next) until it returns `Ok(None)`: after that the
/// decoder holds less than one frame (an incomplete one, below its bound).
/// It holds what is pushed until `next` consumes it, so push bounded chunks
/// (a read buffer's worth). A frame's header is checked as soon as its bytes
/// arrive: a declared length over the bound is an error before the payload
/// comes. After an error the stream is unusable: `next` keeps returning that
/// error and `push` discards its input.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already returned as messages.
    pos: usize,
    max_frame: usize,
    failed: Option<DecodeError>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    /// A decoder accepting frames up to [`MAX_FRAME`] bytes.
    pub fn new() -> Decoder {
        Decoder::with_max_frame(MAX_FRAME)
    }

    /// A decoder accepting frames up to `max_frame` bytes, header included
    /// (raised to [`HEADER_LEN`] if smaller).
    pub fn with_max_frame(max_frame: usize) -> Decoder {
        Decoder {
            buf: Vec::new(),
            pos: 0,
            max_frame: max_frame.max(HEADER_LEN),
            failed: None,
        }
    }

    /// The largest frame this decoder accepts, header included.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Adds bytes received from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, `Ok(None)` if more bytes are needed, or the
    /// error that ended the stream.
    #[allow(clippy::should_implement_trait)] // fallible; not an Iterator
    pub fn next(&mut self) -> Result<Option<Message>, DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.step() {
            Ok(m) => Ok(m),
            Err(e) => {
                self.failed = Some(e.clone());
                self.buf = Vec::new();
                self.pos = 0;
                Err(e)
            }
        }
    }

    /// Bytes received but not yet returned as messages.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn step(&mut self) -> Result<Option<Message>, DecodeError> {
        let avail = self.buf.get(self.pos..).unwrap_or_default();
        let Some((code, len)) = check_header(avail, self.max_frame)? else {
            return Ok(None);
        };
        let Some(payload) = avail.get(HEADER_LEN..).and_then(|p| p.get(..len)) else {
            return Ok(None);
        };
        let m = decode_payload(code, payload)?;
        self.pos += HEADER_LEN + len;
        if self.pos >= self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        Ok(Some(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::p2p::Strategy as Pick;
    use proptest::prelude::{
        any, prop_assert_eq, prop_oneof, proptest, Just, ProptestConfig, Strategy,
    };

    const ALL_CODES: &[u8] = &[
        T_INIT,
        T_INIT_REPLY,
        T_FRAGMENT_REQUEST,
        T_FRAGMENT,
        T_FRAGMENT_MISSING,
        T_CANCEL,
        T_META_REQUEST,
        T_META_REPLY,
        T_HEARTBEAT,
        T_PING,
        T_PONG,
        T_MAP_REQUEST,
        T_MAP,
        T_HELLO,
        T_HELLO_REPLY,
        T_TRACKER_INFO,
        T_TRACKERS_REQUEST,
        T_TRACKERS_LIST,
        T_NODES_REQUEST,
        T_NODES_LIST,
        T_UPDATE,
        T_ROOM_ALLOCATE,
        T_ROOM_ALLOCATED,
        T_BYE,
        T_PUBLISH,
        T_UNPUBLISH,
        T_CATALOG_REQUEST,
        T_CATALOG,
        T_HOLDERS_REQUEST,
        T_HOLDERS,
        T_HOLDINGS_LIST,
        T_WHOAMI,
        T_WHOAMI_REPLY,
        T_PUNCH_REQUEST,
        T_PUNCH_NOTIFY,
        T_PUNCH_PROBE,
        T_PUNCH_RESULT,
        T_RELAY_OPEN,
        T_RELAY_DATA,
        T_WHOAMI_RELAY,
        T_CHAT_LOGIN,
        T_CHAT_LOGOUT,
        T_CHAT_LIST_REQUEST,
        T_CHAT_LIST,
        T_CHAT_MESSAGE,
        T_ERROR,
    ];

    fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([a, b, c, d], port))
    }

    fn v6(s: &str, port: u16) -> SocketAddr {
        SocketAddr::from((s.parse::<Ipv6Addr>().unwrap(), port))
    }

    fn node(id: u64) -> NodeInfo {
        NodeInfo {
            id,
            role: Role::Peer,
            room: 7,
            public: v4(203, 0, 113, 9, 40000),
            local: v6("fe80::1", 5000),
            workload: 12,
            nat: NatType::PortRestricted,
        }
    }

    /// A name of exactly `MAX_NAME` bytes in two-byte characters.
    fn max_name() -> String {
        "é".repeat(MAX_NAME / 2)
    }

    /// A file name of exactly `MAX_FILE_NAME` bytes (one three-byte
    /// character, then two-byte ones).
    fn max_file_name() -> String {
        let name = format!("€{}", "é".repeat((MAX_FILE_NAME - 3) / 2));
        assert_eq!(name.len(), MAX_FILE_NAME);
        name
    }

    fn file(name: &str, pieces: u32) -> FileInfo {
        FileInfo {
            name: name.into(),
            size: u64::from(pieces) * 65536,
            duration_ms: 90_000,
            pieces,
            index: [0x5A; INDEX_LEN],
        }
    }

    /// The largest file description: every field at its widest.
    fn max_file() -> FileInfo {
        FileInfo {
            name: max_file_name(),
            size: u64::MAX,
            duration_ms: u64::MAX,
            pieces: u32::MAX,
            index: [0xFF; INDEX_LEN],
        }
    }

    /// A node with IPv6 addresses, its widest encoding (56 bytes).
    fn wide_node(id: u64) -> NodeInfo {
        NodeInfo {
            public: v6("2001:db8::9", 1),
            ..node(id)
        }
    }

    /// At least one example of every variant, with IPv4 and IPv6 addresses,
    /// empty lists and lists and strings at their bounds.
    fn samples() -> Vec<Message> {
        let ids: Vec<u64> = (0..MAX_IDS as u64).map(|i| i * 0x0101_0101_0101).collect();
        let users = vec![
            ChatUser {
                name: "ann".into(),
                node: 1,
                public: v6("2001:db8::7", 9000),
                ttl_secs: 30,
                punched: vec![],
            },
            ChatUser {
                name: max_name(),
                node: u64::MAX,
                public: v4(10, 0, 0, 1, 1),
                ttl_secs: u32::MAX,
                punched: (0..MAX_PUNCHED as u64).collect(),
            },
        ];
        vec![
            Message::Init {
                room: 1,
                channel: Channel::Meta,
            },
            Message::InitReply {
                room: u32::MAX,
                channel: Channel::Video,
                first: 10,
                last: 99,
            },
            Message::InitReply {
                room: 0,
                channel: Channel::Audio,
                first: 1,
                last: 0,
            },
            Message::FragmentRequest {
                room: 3,
                channel: Channel::Video,
                priority: 0,
                ids: vec![],
            },
            Message::FragmentRequest {
                room: 3,
                channel: Channel::Audio,
                priority: 255,
                ids: ids.clone(),
            },
            Message::Fragment {
                room: 3,
                channel: Channel::Video,
                id: 42,
                timestamp: 123_456,
                data: vec![],
            },
            Message::Fragment {
                room: 3,
                channel: Channel::Video,
                id: u64::MAX,
                timestamp: 0,
                data: (0..=255u8).cycle().take(5000).collect(),
            },
            Message::FragmentMissing {
                room: 3,
                channel: Channel::Audio,
                ids: vec![5, 6],
            },
            Message::FragmentMissing {
                room: 3,
                channel: Channel::Audio,
                ids: ids.clone(),
            },
            Message::Cancel {
                room: 3,
                channel: Channel::Video,
                ids: vec![],
            },
            Message::MapRequest {
                room: 3,
                channel: Channel::Audio,
            },
            Message::Map {
                room: 3,
                channel: Channel::Audio,
                first: 9,
                bits: vec![0b1011, 0xff],
            },
            Message::Map {
                room: 3,
                channel: Channel::Video,
                first: 0,
                bits: vec![],
            },
            Message::Map {
                room: 3,
                channel: Channel::Video,
                first: u64::MAX,
                bits: vec![0x80; MAX_MAP_BYTES],
            },
            Message::Cancel {
                room: 3,
                channel: Channel::Video,
                ids,
            },
            Message::MetaRequest {
                room: 3,
                key: String::new(),
            },
            Message::MetaRequest {
                room: 3,
                key: "k".repeat(MAX_KEY),
            },
            Message::MetaReply {
                room: 3,
                key: "codec".into(),
                value: None,
            },
            Message::MetaReply {
                room: 3,
                key: "codec".into(),
                value: Some(vec![]),
            },
            Message::MetaReply {
                room: 3,
                key: "sps".into(),
                value: Some(vec![0x67, 0x42, 0x00, 0x1f]),
            },
            Message::Heartbeat,
            Message::Ping {
                nonce: 1,
                workload: 2,
                trackers: 3,
            },
            Message::Pong {
                nonce: u64::MAX,
                workload: u32::MAX,
                trackers: u16::MAX,
            },
            Message::Hello {
                node: 0xDEAD_BEEF,
                role: Role::Edge,
                room: 9,
                local: v6("::1", 7000),
                public: Some(v4(203, 0, 113, 9, 40000)),
                workload: 0,
                nat: NatType::Open,
                key: b"edge-secret".to_vec(),
            },
            Message::Hello {
                node: 5,
                role: Role::Peer,
                room: 9,
                local: v4(192, 168, 1, 2, 5000),
                public: None,
                workload: 1,
                nat: NatType::Unknown,
                key: vec![],
            },
            Message::HelloReply {
                node: 5,
                public: None,
                tracker: 77,
            },
            Message::HelloReply {
                node: 5,
                public: Some(v6("2001:db8:1:2:3:4:5:6", 65535)),
                tracker: 77,
            },
            Message::TrackerInfo {
                id: 77,
                addr: v4(198, 51, 100, 1, 8000),
                udp: v6("2001:db8::1", 8001),
            },
            Message::TrackersRequest,
            Message::TrackersList { trackers: vec![] },
            Message::TrackersList {
                trackers: (0..MAX_TRACKERS as u16)
                    .map(|i| {
                        if i % 2 == 0 {
                            v4(10, 0, (i >> 8) as u8, i as u8, i)
                        } else {
                            v6("2001:db8::2", i)
                        }
                    })
                    .collect(),
            },
            Message::NodesRequest {
                room: 9,
                strategy: Pick::MinWorkload,
                max: 20,
            },
            Message::NodesRequest {
                room: 9,
                strategy: Pick::Edges,
                max: 0,
            },
            Message::NodesList {
                room: 9,
                nodes: vec![],
            },
            Message::NodesList {
                room: 9,
                nodes: (0..MAX_NODES as u64).map(node).collect(),
            },
            Message::Update {
                workload: 4,
                nat: NatType::Symmetric,
            },
            Message::RoomAllocate { key: vec![] },
            Message::RoomAllocate {
                key: b"room-key".to_vec(),
            },
            Message::RoomAllocated { room: 1234 },
            Message::Bye,
            Message::Publish {
                file: file("movie.ts", 100),
                have: 40,
            },
            Message::Publish {
                file: max_file(),
                have: u32::MAX,
            },
            Message::Unpublish {
                name: "movie.ts".into(),
            },
            Message::Unpublish {
                name: max_file_name(),
            },
            Message::CatalogRequest {
                prefix: String::new(),
            },
            Message::CatalogRequest {
                prefix: max_file_name(),
            },
            Message::Catalog { entries: vec![] },
            Message::Catalog {
                entries: vec![CatalogEntry {
                    file: file("movie.ts", 100),
                    holders: 4,
                    complete: 1,
                }],
            },
            Message::Catalog {
                entries: (0..MAX_CATALOG as u32)
                    .map(|i| CatalogEntry {
                        file: file(&format!("file{i:03}"), i),
                        holders: i + 1,
                        complete: i,
                    })
                    .collect(),
            },
            Message::HoldersRequest {
                name: "movie.ts".into(),
                max: 8,
            },
            Message::HoldersRequest {
                name: max_file_name(),
                max: u16::MAX,
            },
            Message::Holders {
                name: "unknown".into(),
                holders: vec![],
            },
            Message::Holders {
                name: "movie.ts".into(),
                holders: (0..MAX_NODES as u64)
                    .map(|i| Holder {
                        node: node(i),
                        have: i as u32,
                        tracker: if i % 2 == 0 {
                            v4(198, 51, 100, 1, 8000)
                        } else {
                            v6("2001:db8::1", 8000)
                        },
                    })
                    .collect(),
            },
            Message::HoldingsList { holdings: vec![] },
            Message::HoldingsList {
                holdings: (0..MAX_HOLDINGS as u64)
                    .map(|i| Holding {
                        file: file(&format!("f{}", i % 7), 10),
                        node: node(i),
                        have: (i % 11) as u32,
                    })
                    .collect(),
            },
            Message::Whoami {
                nonce: 8,
                reply_from: ReplyFrom::OtherPort,
            },
            Message::Whoami {
                nonce: 9,
                reply_from: ReplyFrom::OtherIp,
            },
            Message::WhoamiRelay {
                nonce: 9,
                observed: v4(198, 51, 100, 7, 40000),
            },
            Message::WhoamiReply {
                nonce: 8,
                observed: v6("2001:db8::99", 12345),
                from_other: false,
            },
            Message::PunchRequest {
                from: 1,
                to: 2,
                room: 9,
                token: 0xABCD,
            },
            Message::PunchNotify {
                peer: node(1),
                token: 0xABCD,
            },
            Message::PunchProbe {
                token: 0xABCD,
                from: 2,
                heard: true,
            },
            Message::PunchResult {
                token: 0xABCD,
                to: 2,
                ok: false,
                relayed: true,
            },
            Message::RelayOpen {
                room: 9,
                to: 2,
                token: 0xABCD,
            },
            Message::RelayData {
                token: 0xABCD,
                data: vec![1, 2, 3],
            },
            Message::ChatLogin { name: "bob".into() },
            Message::ChatLogin { name: max_name() },
            Message::ChatLogout,
            Message::ChatListRequest,
            Message::ChatList { users: vec![] },
            Message::ChatList { users },
            Message::ChatList {
                users: (0..MAX_CHAT_USERS as u64)
                    .map(|i| ChatUser {
                        name: format!("user{i}"),
                        node: i,
                        public: v4(10, 1, 1, 1, 2000),
                        ttl_secs: 60,
                        punched: vec![i],
                    })
                    .collect(),
            },
            Message::ChatMessage {
                from: "ann".into(),
                to: String::new(),
                text: "hello, 世界".into(),
            },
            Message::ChatMessage {
                from: max_name(),
                to: max_name(),
                text: "x".repeat(MAX_CHAT_TEXT),
            },
            Message::error(ErrorCode::UnknownRoom, "no room 5"),
            Message::Error {
                code: 999,
                text: "e".repeat(MAX_ERROR_TEXT),
            },
        ]
    }

    /// Feeds `bytes` to a fresh decoder one byte at a time.
    fn decode_bytewise(bytes: &[u8]) -> Result<Vec<Message>, DecodeError> {
        let mut dec = Decoder::new();
        let mut out = Vec::new();
        for b in bytes {
            dec.push(std::slice::from_ref(b));
            while let Some(m) = dec.next()? {
                out.push(m);
            }
        }
        assert_eq!(dec.buffered(), 0);
        Ok(out)
    }

    #[test]
    fn every_variant_round_trips() {
        let samples = samples();
        let mut stream = Vec::new();
        for m in &samples {
            let frame = m.to_frame().unwrap();
            assert_eq!(frame.get(..4), Some(&[MAGIC, VERSION, m.code(), 0][..]));
            assert_eq!(frame.len() - HEADER_LEN, {
                let l = u32::from_be_bytes(frame[4..8].try_into().unwrap());
                l as usize
            });
            assert_eq!(
                Message::decode_frame(&frame).as_ref(),
                Ok(m),
                "{}",
                m.name()
            );
            m.encode(&mut stream).unwrap();
        }
        assert_eq!(decode_bytewise(&stream).unwrap(), samples);
        // All of it in one push, too.
        let mut dec = Decoder::new();
        dec.push(&stream);
        let mut got = Vec::new();
        while let Some(m) = dec.next().unwrap() {
            got.push(m);
        }
        assert_eq!(got, samples);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn codes_are_unique_named_and_in_their_blocks() {
        let mut seen = std::collections::HashSet::new();
        for &c in ALL_CODES {
            assert!(seen.insert(c), "duplicate code 0x{c:02x}");
            assert!(type_name(c).is_some(), "0x{c:02x} has no name");
        }
        // Nothing outside the list has a name.
        let named = (0..=255u8).filter(|&c| type_name(c).is_some()).count();
        assert_eq!(named, ALL_CODES.len());
        // The samples cover every code, and each variant's name is its own.
        let sampled: std::collections::HashSet<u8> = samples().iter().map(Message::code).collect();
        assert_eq!(sampled, seen);
        for m in samples() {
            assert!(format!("{m:?}").starts_with(m.name()), "{m:?}");
            let block = match m {
                Message::Init { .. }
                | Message::InitReply { .. }
                | Message::FragmentRequest { .. }
                | Message::Fragment { .. }
                | Message::FragmentMissing { .. }
                | Message::Cancel { .. }
                | Message::MetaRequest { .. }
                | Message::MetaReply { .. }
                | Message::Heartbeat
                | Message::Ping { .. }
                | Message::Pong { .. }
                | Message::MapRequest { .. }
                | Message::Map { .. } => 0x01..=0x0F,
                Message::Hello { .. }
                | Message::HelloReply { .. }
                | Message::TrackerInfo { .. }
                | Message::TrackersRequest
                | Message::TrackersList { .. }
                | Message::NodesRequest { .. }
                | Message::NodesList { .. }
                | Message::Update { .. }
                | Message::RoomAllocate { .. }
                | Message::RoomAllocated { .. }
                | Message::Bye => 0x10..=0x1F,
                Message::Publish { .. }
                | Message::Unpublish { .. }
                | Message::CatalogRequest { .. }
                | Message::Catalog { .. }
                | Message::HoldersRequest { .. }
                | Message::Holders { .. }
                | Message::HoldingsList { .. } => 0x20..=0x2F,
                Message::Whoami { .. }
                | Message::WhoamiReply { .. }
                | Message::PunchRequest { .. }
                | Message::PunchNotify { .. }
                | Message::PunchProbe { .. }
                | Message::PunchResult { .. }
                | Message::RelayOpen { .. }
                | Message::RelayData { .. }
                | Message::WhoamiRelay { .. } => 0x30..=0x3F,
                Message::ChatLogin { .. }
                | Message::ChatLogout
                | Message::ChatListRequest
                | Message::ChatList { .. }
                | Message::ChatMessage { .. } => 0x40..=0x4F,
                Message::Error { .. } => 0x7F..=0x7F,
            };
            assert!(
                block.contains(&m.code()),
                "{} is out of its block",
                m.name()
            );
        }
    }

    #[test]
    fn error_codes_round_trip() {
        for c in 0..=u16::MAX {
            if let Some(e) = ErrorCode::from_code(c) {
                assert_eq!(e.code(), c);
            }
        }
        assert_eq!((0..=u16::MAX).filter_map(ErrorCode::from_code).count(), 9);
    }

    /// The worked example in docs/protocol.md.
    #[test]
    fn golden_frame() {
        let m = Message::Hello {
            node: 0x0123_4567_89AB_CDEF,
            role: Role::Peer,
            room: 42,
            local: v4(192, 168, 1, 20, 5000),
            public: None,
            workload: 3,
            nat: NatType::PortRestricted,
            key: vec![],
        };
        let hex: String = m
            .to_frame()
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ");
        println!("{hex}");
        assert_eq!(
            hex,
            "b7 01 10 00 00 00 00 1e \
             01 23 45 67 89 ab cd ef 02 00 00 00 2a \
             04 c0 a8 01 14 13 88 00 00 00 00 03 04 00 00 00 00"
        );
    }

    fn header(code: u8, len: u32) -> Vec<u8> {
        let mut h = vec![MAGIC, VERSION, code, 0];
        h.extend_from_slice(&len.to_be_bytes());
        h
    }

    #[test]
    fn oversized_length_is_rejected_from_the_header_alone() {
        let over = u32::try_from(MAX_FRAME - HEADER_LEN + 1).unwrap();
        let h = header(T_FRAGMENT, over);
        let mut dec = Decoder::new();
        dec.push(&h);
        let e = dec.next().unwrap_err();
        assert_eq!(
            e,
            DecodeError::FrameTooLarge {
                len: MAX_FRAME as u64 + 1,
                max: MAX_FRAME
            }
        );
        assert_eq!(
            e.to_string(),
            "frame of 1048641 bytes exceeds the 1048640-byte limit"
        );
        assert_eq!(Message::decode_frame(&h), Err(e.clone()));
        // u32::MAX does not overflow anything.
        let mut dec = Decoder::new();
        dec.push(&header(T_FRAGMENT, u32::MAX));
        assert!(matches!(dec.next(), Err(DecodeError::FrameTooLarge { .. })));
        // Exactly at the bound: waits for the payload.
        let mut dec = Decoder::new();
        dec.push(&header(T_FRAGMENT, over - 1));
        assert_eq!(dec.next(), Ok(None));
        assert_eq!(dec.buffered(), HEADER_LEN);
    }

    #[test]
    fn small_decoder_rejects_big_frame_and_stays_failed() {
        let big = Message::Fragment {
            room: 1,
            channel: Channel::Video,
            id: 1,
            timestamp: 1,
            data: vec![0; 1000],
        }
        .to_frame()
        .unwrap();
        let mut dec = Decoder::with_max_frame(64);
        assert_eq!(dec.max_frame(), 64);
        dec.push(&big[..HEADER_LEN]);
        let e = dec.next().unwrap_err();
        assert_eq!(
            e,
            DecodeError::FrameTooLarge {
                len: big.len() as u64,
                max: 64
            }
        );
        dec.push(&big[HEADER_LEN..]);
        dec.push(&Message::Heartbeat.to_frame().unwrap());
        assert_eq!(dec.next(), Err(e.clone()));
        assert_eq!(dec.next(), Err(e));
        assert_eq!(dec.buffered(), 0);
        // Small frames still pass a small decoder; the bound is raised to
        // the header size.
        let mut dec = Decoder::with_max_frame(0);
        assert_eq!(dec.max_frame(), HEADER_LEN);
        dec.push(&Message::Bye.to_frame().unwrap());
        assert_eq!(dec.next(), Ok(Some(Message::Bye)));
    }

    #[test]
    fn garbage_is_caught_from_the_first_byte() {
        let mut dec = Decoder::new();
        dec.push(&[0x16]); // a TLS handshake, say
        assert_eq!(dec.next(), Err(DecodeError::BadMagic(0x16)));
        let mut dec = Decoder::new();
        dec.push(&[MAGIC, 2]);
        assert_eq!(dec.next(), Err(DecodeError::BadVersion(2)));
        let mut dec = Decoder::new();
        dec.push(&[MAGIC, VERSION, 0x99]);
        let e = dec.next().unwrap_err();
        assert_eq!(e.to_string(), "unknown message type 0x99");
        let mut dec = Decoder::new();
        dec.push(&[MAGIC, VERSION, T_BYE, 1]);
        assert_eq!(dec.next(), Err(DecodeError::BadFlags(1)));
        let mut dec = Decoder::new();
        dec.push(&[MAGIC, VERSION, T_BYE]);
        assert_eq!(dec.next(), Ok(None));
    }

    #[test]
    fn encoding_over_a_bound_fails_and_writes_nothing() {
        let too_many = vec![0u64; MAX_IDS + 1];
        let long = |n: usize| "a".repeat(n + 1);
        let addr = v4(1, 2, 3, 4, 5);
        let cases = vec![
            Message::Map {
                room: 1,
                channel: Channel::Video,
                first: 0,
                bits: vec![0; MAX_MAP_BYTES + 1],
            },
            Message::FragmentRequest {
                room: 1,
                channel: Channel::Video,
                priority: 0,
                ids: too_many.clone(),
            },
            Message::FragmentMissing {
                room: 1,
                channel: Channel::Video,
                ids: too_many.clone(),
            },
            Message::Cancel {
                room: 1,
                channel: Channel::Video,
                ids: too_many,
            },
            Message::MetaRequest {
                room: 1,
                key: long(MAX_KEY),
            },
            Message::MetaReply {
                room: 1,
                key: long(MAX_KEY),
                value: None,
            },
            Message::TrackersList {
                trackers: vec![addr; MAX_TRACKERS + 1],
            },
            Message::NodesList {
                room: 1,
                nodes: vec![node(1); MAX_NODES + 1],
            },
            Message::ChatLogin {
                name: long(MAX_NAME),
            },
            Message::ChatList {
                users: vec![
                    ChatUser {
                        name: "a".into(),
                        node: 1,
                        public: addr,
                        ttl_secs: 1,
                        punched: vec![],
                    };
                    MAX_CHAT_USERS + 1
                ],
            },
            Message::ChatList {
                users: vec![ChatUser {
                    name: "a".into(),
                    node: 1,
                    public: addr,
                    ttl_secs: 1,
                    punched: vec![0; MAX_PUNCHED + 1],
                }],
            },
            Message::ChatList {
                users: vec![ChatUser {
                    name: long(MAX_NAME),
                    node: 1,
                    public: addr,
                    ttl_secs: 1,
                    punched: vec![],
                }],
            },
            Message::ChatMessage {
                from: long(MAX_NAME),
                to: String::new(),
                text: String::new(),
            },
            Message::ChatMessage {
                from: String::new(),
                to: long(MAX_NAME),
                text: String::new(),
            },
            Message::ChatMessage {
                from: String::new(),
                to: String::new(),
                text: long(MAX_CHAT_TEXT),
            },
            Message::Error {
                code: 1,
                text: long(MAX_ERROR_TEXT),
            },
            Message::Fragment {
                room: 1,
                channel: Channel::Video,
                id: 1,
                timestamp: 1,
                data: vec![0; MAX_FRAME],
            },
            Message::RelayData {
                token: 1,
                data: vec![0; MAX_FRAME],
            },
            Message::Hello {
                node: 1,
                role: Role::Edge,
                room: 1,
                local: addr,
                public: None,
                workload: 0,
                nat: NatType::Open,
                key: vec![0; MAX_FRAME],
            },
            Message::RoomAllocate {
                key: vec![0; MAX_FRAME],
            },
            Message::MetaReply {
                room: 1,
                key: String::new(),
                value: Some(vec![0; MAX_FRAME]),
            },
            Message::Publish {
                file: file(&long(MAX_FILE_NAME), 1),
                have: 0,
            },
            Message::Unpublish {
                name: long(MAX_FILE_NAME),
            },
            Message::CatalogRequest {
                prefix: long(MAX_FILE_NAME),
            },
            Message::Catalog {
                entries: vec![
                    CatalogEntry {
                        file: file("a", 1),
                        holders: 1,
                        complete: 1,
                    };
                    MAX_CATALOG + 1
                ],
            },
            Message::Catalog {
                entries: vec![CatalogEntry {
                    file: file(&long(MAX_FILE_NAME), 1),
                    holders: 1,
                    complete: 1,
                }],
            },
            Message::HoldersRequest {
                name: long(MAX_FILE_NAME),
                max: 1,
            },
            Message::Holders {
                name: long(MAX_FILE_NAME),
                holders: vec![],
            },
            Message::Holders {
                name: "a".into(),
                holders: vec![
                    Holder {
                        node: node(1),
                        have: 1,
                        tracker: addr,
                    };
                    MAX_NODES + 1
                ],
            },
            Message::HoldingsList {
                holdings: vec![
                    Holding {
                        file: file("a", 1),
                        node: node(1),
                        have: 1,
                    };
                    MAX_HOLDINGS + 1
                ],
            },
            Message::HoldingsList {
                holdings: vec![Holding {
                    file: file(&long(MAX_FILE_NAME), 1),
                    node: node(1),
                    have: 1,
                }],
            },
        ];
        for m in cases {
            let mut out = vec![0xAA];
            let e = m.encode(&mut out).unwrap_err();
            assert_eq!(out, [0xAA], "{} wrote bytes on error", m.name());
            assert!(!e.to_string().is_empty());
        }
        let e = Message::ChatLogin {
            name: long(MAX_NAME),
        }
        .to_frame()
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "name of 65 bytes exceeds the 64-byte limit in ChatLogin"
        );
    }

    #[test]
    fn largest_fragment_fits_exactly() {
        // Header 8, room 4, channel 1, id 8, timestamp 8, data length 4.
        let overhead = HEADER_LEN + 4 + 1 + 8 + 8 + 4;
        assert!(MAX_FRAME - overhead >= 1024 * 1024);
        let fragment = |n: usize| Message::Fragment {
            room: 1,
            channel: Channel::Video,
            id: 2,
            timestamp: 3,
            data: vec![7; n],
        };
        let m = fragment(MAX_FRAME - overhead);
        let frame = m.to_frame().unwrap();
        assert_eq!(frame.len(), MAX_FRAME);
        assert_eq!(Message::decode_frame(&frame), Ok(m));
        assert_eq!(
            fragment(MAX_FRAME - overhead + 1).to_frame(),
            Err(EncodeError::FrameTooLarge {
                len: MAX_FRAME + 1,
                max: MAX_FRAME
            })
        );
    }

    /// Without byte fields, every message fits with all its lists and
    /// strings at their bounds; the largest is a full ChatList (the size
    /// docs/protocol.md quotes).
    #[test]
    fn largest_bounded_message_fits() {
        let user = ChatUser {
            name: max_name(),
            node: 1,
            public: v6("2001:db8::1", 1),
            ttl_secs: 1,
            punched: vec![7; MAX_PUNCHED],
        };
        let m = Message::ChatList {
            users: vec![user; MAX_CHAT_USERS],
        };
        let frame = m.to_frame().unwrap();
        assert_eq!(frame.len(), 549_642);
        assert!(frame.len() <= MAX_FRAME);
        assert_eq!(Message::decode_frame(&frame), Ok(m));
    }

    /// The catalog messages at their bounds, with the sizes
    /// docs/protocol.md quotes (frames, header included): all well below
    /// the largest ChatList.
    #[test]
    fn largest_catalog_messages_fit() {
        let entry = CatalogEntry {
            file: max_file(),
            holders: u32::MAX,
            complete: u32::MAX,
        };
        let holder = Holder {
            node: wide_node(1),
            have: u32::MAX,
            tracker: v6("2001:db8::1", 1),
        };
        let holding = Holding {
            file: max_file(),
            node: wide_node(1),
            have: u32::MAX,
        };
        let cases = [
            (
                Message::Publish {
                    file: max_file(),
                    have: 1,
                },
                8 + 309 + 4,
            ),
            (
                Message::Catalog {
                    entries: vec![entry; MAX_CATALOG],
                },
                8 + 2 + 317 * MAX_CATALOG,
            ),
            (
                Message::Holders {
                    name: max_file_name(),
                    holders: vec![holder; MAX_NODES],
                },
                8 + 257 + 2 + 79 * MAX_NODES,
            ),
            (
                Message::HoldingsList {
                    holdings: vec![holding; MAX_HOLDINGS],
                },
                8 + 2 + 369 * MAX_HOLDINGS,
            ),
        ];
        for (m, size) in cases {
            let frame = m.to_frame().unwrap();
            assert_eq!(frame.len(), size, "{}", m.name());
            assert!(frame.len() < 549_642);
            assert_eq!(Message::decode_frame(&frame), Ok(m));
        }
    }

    #[test]
    fn bad_file_names_are_rejected() {
        use DecodeError as E;
        let d = |code, payload: &[u8]| Message::decode_frame(&frame(code, payload));
        // One byte over the bound, before the name's bytes are read.
        let mut p = (MAX_FILE_NAME as u16 + 1).to_be_bytes().to_vec();
        p.extend_from_slice(&[b'a'; MAX_FILE_NAME + 1]);
        assert_eq!(
            d(T_UNPUBLISH, &p),
            Err(E::StringTooLong {
                message: "Unpublish",
                field: "file name",
                len: MAX_FILE_NAME + 1,
                max: MAX_FILE_NAME
            })
        );
        // Not UTF-8, in a Publish with every other field right.
        let mut f = Message::Publish {
            file: file("ab", 4),
            have: 1,
        }
        .to_frame()
        .unwrap();
        f[HEADER_LEN + 2] = 0xC3;
        f[HEADER_LEN + 3] = 0x28;
        assert_eq!(
            Message::decode_frame(&f),
            Err(E::BadUtf8 {
                message: "Publish",
                field: "file name"
            })
        );
        assert_eq!(
            d(T_CATALOG_REQUEST, &[0, 1, 0xFF]).unwrap_err().to_string(),
            "prefix is not valid UTF-8 in CatalogRequest"
        );
        // An index cut short.
        let f = Message::Publish {
            file: file("ab", 4),
            have: 1,
        }
        .to_frame()
        .unwrap();
        let payload = &f[HEADER_LEN..f.len() - 4 - 1];
        assert_eq!(
            d(T_PUBLISH, payload),
            Err(E::Truncated {
                message: "Publish",
                field: "index"
            })
        );
        // Lists over their bound.
        assert!(matches!(
            d(T_CATALOG, &[0x01, 0x01]),
            Err(E::ListTooLong {
                count: 257,
                max: MAX_CATALOG,
                ..
            })
        ));
        assert!(matches!(
            d(T_HOLDINGS_LIST, &[0x04, 0x01]),
            Err(E::ListTooLong {
                count: 1025,
                max: MAX_HOLDINGS,
                ..
            })
        ));
    }

    #[test]
    fn error_helper_cuts_at_a_char_boundary() {
        let text = "é".repeat(MAX_ERROR_TEXT); // 2048 bytes
        let m = Message::error(ErrorCode::Internal, &text);
        let Message::Error { code, text } = &m else {
            unreachable!()
        };
        assert_eq!(*code, ErrorCode::Internal.code());
        assert_eq!(text.len(), MAX_ERROR_TEXT);
        let m = Message::error(ErrorCode::Malformed, &format!("x{}", "é".repeat(600)));
        let Message::Error { text, .. } = &m else {
            unreachable!()
        };
        assert_eq!(text.len(), MAX_ERROR_TEXT - 1);
        assert!(m.to_frame().is_ok());
    }

    fn frame(code: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = header(code, u32::try_from(payload.len()).unwrap());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn malformed_payloads_are_rejected() {
        use DecodeError as E;
        let d = |code, payload: &[u8]| Message::decode_frame(&frame(code, payload));
        // Whole-frame checks.
        assert_eq!(
            Message::decode_frame(&[MAGIC, VERSION]),
            Err(E::ShortFrame { len: 2 })
        );
        let mut f = Message::Heartbeat.to_frame().unwrap();
        f.push(0);
        assert_eq!(
            Message::decode_frame(&f),
            Err(E::LengthMismatch {
                declared: 0,
                actual: 1
            })
        );
        let f = Message::RoomAllocated { room: 1 }.to_frame().unwrap();
        assert_eq!(
            Message::decode_frame(&f[..f.len() - 1]),
            Err(E::LengthMismatch {
                declared: 4,
                actual: 3
            })
        );
        // Trailing bytes inside a payload.
        assert_eq!(
            d(T_HEARTBEAT, &[0]),
            Err(E::TrailingBytes {
                message: "Heartbeat",
                extra: 1
            })
        );
        assert_eq!(
            d(T_ROOM_ALLOCATED, &[0, 0, 0, 1, 9, 9]),
            Err(E::TrailingBytes {
                message: "RoomAllocated",
                extra: 2
            })
        );
        // Truncated fields.
        assert_eq!(
            d(T_ROOM_ALLOCATED, &[0, 0]).unwrap_err().to_string(),
            "truncated room in RoomAllocated"
        );
        let mut p = vec![0, 0, 0, 9, 0, 1]; // room 9, one node
        p.extend_from_slice(&[0; 8]); // id
        p.extend_from_slice(&[2, 0, 0, 0, 9]); // role, room
        p.extend_from_slice(&[6, 0, 0]); // IPv6 address cut short
        assert_eq!(
            d(T_NODES_LIST, &p).unwrap_err().to_string(),
            "truncated public address in NodesList"
        );
        // A byte field longer than the payload.
        assert_eq!(
            d(T_ROOM_ALLOCATE, &[0, 0, 0, 5, 1, 2]),
            Err(E::Truncated {
                message: "RoomAllocate",
                field: "key"
            })
        );
        assert_eq!(
            d(T_ROOM_ALLOCATE, &[0xFF, 0xFF, 0xFF, 0xFF]),
            Err(E::Truncated {
                message: "RoomAllocate",
                field: "key"
            })
        );
        // Strings: too long, not UTF-8.
        let mut p = vec![0, 65];
        p.extend_from_slice(&[b'a'; 65]);
        assert_eq!(
            d(T_CHAT_LOGIN, &p),
            Err(E::StringTooLong {
                message: "ChatLogin",
                field: "name",
                len: 65,
                max: MAX_NAME
            })
        );
        assert_eq!(
            d(T_CHAT_LOGIN, &[0, 2, 0xC3, 0x28]),
            Err(E::BadUtf8 {
                message: "ChatLogin",
                field: "name"
            })
        );
        // List counts over their bound, before any item is read.
        let mut p = vec![0, 0, 0, 1, 1, 0]; // room, channel, priority
        p.extend_from_slice(&(MAX_IDS as u16 + 1).to_be_bytes());
        assert_eq!(
            d(T_FRAGMENT_REQUEST, &p),
            Err(E::ListTooLong {
                message: "FragmentRequest",
                field: "fragment id",
                count: MAX_IDS + 1,
                max: MAX_IDS
            })
        );
        assert!(matches!(
            d(T_TRACKERS_LIST, &[0xFF, 0xFF]),
            Err(E::ListTooLong { count: 65535, .. })
        ));
        // Codes out of range.
        assert_eq!(
            d(T_INIT, &[0, 0, 0, 1, 3]),
            Err(E::BadCode {
                message: "Init",
                field: "channel",
                code: 3
            })
        );
        assert_eq!(
            d(T_UPDATE, &[0, 0, 0, 1, 6]).unwrap_err().to_string(),
            "invalid NAT type code 0x06 in Update"
        );
        assert!(matches!(
            d(T_NODES_REQUEST, &[0, 0, 0, 1, 3, 0, 1]),
            Err(E::BadCode {
                field: "strategy",
                ..
            })
        ));
        let mut p = vec![0; 8];
        p.push(3);
        assert!(matches!(
            d(T_WHOAMI, &p),
            Err(E::BadCode {
                field: "reply-from",
                code: 3,
                ..
            })
        ));
        let mut p = vec![0; 8];
        p.push(2); // option presence byte
        assert!(matches!(
            d(T_HELLO_REPLY, &p),
            Err(E::BadCode { code: 2, .. })
        ));
        let mut p = vec![0; 8];
        p.extend_from_slice(&[5, 1, 2, 3, 4, 0, 1]); // family 5
        p.extend_from_slice(&[4, 1, 2, 3, 4, 0, 1]);
        assert_eq!(
            d(T_TRACKER_INFO, &p).unwrap_err().to_string(),
            "invalid TCP address code 0x05 in TrackerInfo"
        );
        let mut p = vec![0; 8];
        p.push(3); // role
        assert!(matches!(
            d(T_HELLO, &p),
            Err(E::BadCode { field: "role", .. })
        ));
        assert_eq!(d(0x99, &[]), Err(E::UnknownType(0x99)));
    }

    #[test]
    fn decode_error_is_invalid_data() {
        let e: io::Error = DecodeError::UnknownType(0x99).into();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(e.to_string(), "unknown message type 0x99");
    }

    // --- Property tests ---------------------------------------------------

    /// Deterministic (fixed seed) and writing no regression files.
    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases,
            failure_persistence: None,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0xB7B7),
            ..ProptestConfig::default()
        }
    }

    fn addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::from((Ipv6Addr::from(ip), port))),
        ]
    }

    /// Strings of at most `max` bytes (characters are at most 4 bytes).
    fn text(max: usize) -> impl Strategy<Value = String> {
        proptest::collection::vec(any::<char>(), 0..=max / 4).prop_map(|v| v.into_iter().collect())
    }

    fn blob() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..300)
    }

    fn ids(max: usize) -> impl Strategy<Value = Vec<u64>> {
        prop_oneof![
            4 => proptest::collection::vec(any::<u64>(), 0..16),
            1 => proptest::collection::vec(any::<u64>(), 0..=max),
        ]
    }

    fn channel() -> impl Strategy<Value = Channel> {
        (0u8..3).prop_map(|c| Channel::from_code(c).unwrap())
    }

    fn role() -> impl Strategy<Value = Role> {
        (0u8..3).prop_map(|c| Role::from_code(c).unwrap())
    }

    fn nat() -> impl Strategy<Value = NatType> {
        (0u8..6).prop_map(|c| NatType::from_code(c).unwrap())
    }

    fn strategy() -> impl Strategy<Value = Pick> {
        (0u8..3).prop_map(|c| Pick::from_code(c).unwrap())
    }

    fn node_info() -> impl Strategy<Value = NodeInfo> {
        (
            any::<u64>(),
            role(),
            any::<u32>(),
            addr(),
            addr(),
            any::<u32>(),
            nat(),
        )
            .prop_map(|(id, role, room, public, local, workload, nat)| NodeInfo {
                id,
                role,
                room,
                public,
                local,
                workload,
                nat,
            })
    }

    fn chat_user() -> impl Strategy<Value = ChatUser> {
        (
            text(MAX_NAME),
            any::<u64>(),
            addr(),
            any::<u32>(),
            proptest::collection::vec(any::<u64>(), 0..8),
        )
            .prop_map(|(name, node, public, ttl_secs, punched)| ChatUser {
                name,
                node,
                public,
                ttl_secs,
                punched,
            })
    }

    fn peer_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (any::<u32>(), channel()).prop_map(|(room, channel)| Message::Init { room, channel }),
            (any::<u32>(), channel(), any::<u64>(), any::<u64>()).prop_map(
                |(room, channel, first, last)| Message::InitReply {
                    room,
                    channel,
                    first,
                    last
                }
            ),
            (any::<u32>(), channel(), any::<u8>(), ids(MAX_IDS)).prop_map(
                |(room, channel, priority, ids)| Message::FragmentRequest {
                    room,
                    channel,
                    priority,
                    ids
                }
            ),
            (any::<u32>(), channel(), any::<u64>(), any::<u64>(), blob()).prop_map(
                |(room, channel, id, timestamp, data)| Message::Fragment {
                    room,
                    channel,
                    id,
                    timestamp,
                    data
                }
            ),
            (any::<u32>(), channel(), ids(MAX_IDS), any::<bool>()).prop_map(
                |(room, channel, ids, missing)| if missing {
                    Message::FragmentMissing { room, channel, ids }
                } else {
                    Message::Cancel { room, channel, ids }
                }
            ),
            (any::<u32>(), text(MAX_KEY))
                .prop_map(|(room, key)| Message::MetaRequest { room, key }),
            (any::<u32>(), text(MAX_KEY), proptest::option::of(blob()))
                .prop_map(|(room, key, value)| Message::MetaReply { room, key, value }),
            Just(Message::Heartbeat),
            (any::<u64>(), any::<u32>(), any::<u16>(), any::<bool>()).prop_map(
                |(nonce, workload, trackers, ping)| if ping {
                    Message::Ping {
                        nonce,
                        workload,
                        trackers,
                    }
                } else {
                    Message::Pong {
                        nonce,
                        workload,
                        trackers,
                    }
                }
            ),
            (any::<u32>(), channel())
                .prop_map(|(room, channel)| Message::MapRequest { room, channel }),
            (
                any::<u32>(),
                channel(),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..=MAX_MAP_BYTES)
            )
                .prop_map(|(room, channel, first, bits)| Message::Map {
                    room,
                    channel,
                    first,
                    bits
                }),
        ]
    }

    fn tracker_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (
                any::<u64>(),
                role(),
                any::<u32>(),
                addr(),
                proptest::option::of(addr()),
                any::<u32>(),
                nat(),
                blob()
            )
                .prop_map(|(node, role, room, local, public, workload, nat, key)| {
                    Message::Hello {
                        node,
                        role,
                        room,
                        local,
                        public,
                        workload,
                        nat,
                        key,
                    }
                }),
            (any::<u64>(), proptest::option::of(addr()), any::<u64>()).prop_map(
                |(node, public, tracker)| Message::HelloReply {
                    node,
                    public,
                    tracker
                }
            ),
            (any::<u64>(), addr(), addr()).prop_map(|(id, addr, udp)| Message::TrackerInfo {
                id,
                addr,
                udp
            }),
            prop_oneof![Just(Message::TrackersRequest), Just(Message::Bye)],
            proptest::collection::vec(addr(), 0..=MAX_TRACKERS)
                .prop_map(|trackers| Message::TrackersList { trackers }),
            (any::<u32>(), strategy(), any::<u16>()).prop_map(|(room, strategy, max)| {
                Message::NodesRequest {
                    room,
                    strategy,
                    max,
                }
            }),
            (any::<u32>(), proptest::collection::vec(node_info(), 0..12))
                .prop_map(|(room, nodes)| Message::NodesList { room, nodes }),
            (any::<u32>(), nat()).prop_map(|(workload, nat)| Message::Update { workload, nat }),
            blob().prop_map(|key| Message::RoomAllocate { key }),
            any::<u32>().prop_map(|room| Message::RoomAllocated { room }),
        ]
    }

    fn file_info() -> impl Strategy<Value = FileInfo> {
        (
            text(MAX_FILE_NAME),
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<[u8; INDEX_LEN]>(),
        )
            .prop_map(|(name, size, duration_ms, pieces, index)| FileInfo {
                name,
                size,
                duration_ms,
                pieces,
                index,
            })
    }

    fn catalog_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (file_info(), any::<u32>()).prop_map(|(file, have)| Message::Publish { file, have }),
            (text(MAX_FILE_NAME), any::<bool>()).prop_map(|(name, un)| if un {
                Message::Unpublish { name }
            } else {
                Message::CatalogRequest { prefix: name }
            }),
            proptest::collection::vec(
                (file_info(), any::<u32>(), any::<u32>()).prop_map(|(file, holders, complete)| {
                    CatalogEntry {
                        file,
                        holders,
                        complete,
                    }
                }),
                0..8
            )
            .prop_map(|entries| Message::Catalog { entries }),
            (text(MAX_FILE_NAME), any::<u16>())
                .prop_map(|(name, max)| Message::HoldersRequest { name, max }),
            (
                text(MAX_FILE_NAME),
                proptest::collection::vec(
                    (node_info(), any::<u32>(), addr()).prop_map(|(node, have, tracker)| {
                        Holder {
                            node,
                            have,
                            tracker,
                        }
                    }),
                    0..12
                )
            )
                .prop_map(|(name, holders)| Message::Holders { name, holders }),
            proptest::collection::vec(
                (file_info(), node_info(), any::<u32>()).prop_map(|(file, node, have)| Holding {
                    file,
                    node,
                    have
                }),
                0..8
            )
            .prop_map(|holdings| Message::HoldingsList { holdings }),
        ]
    }

    fn nat_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (any::<u64>(), 0u8..3).prop_map(|(nonce, c)| Message::Whoami {
                nonce,
                reply_from: reply_from_of_code(c).expect("valid code"),
            }),
            (any::<u64>(), addr())
                .prop_map(|(nonce, observed)| Message::WhoamiRelay { nonce, observed }),
            (any::<u64>(), addr(), any::<bool>()).prop_map(|(nonce, observed, from_other)| {
                Message::WhoamiReply {
                    nonce,
                    observed,
                    from_other,
                }
            }),
            (any::<u64>(), any::<u64>(), any::<u32>(), any::<u64>()).prop_map(
                |(from, to, room, token)| Message::PunchRequest {
                    from,
                    to,
                    room,
                    token
                }
            ),
            (node_info(), any::<u64>())
                .prop_map(|(peer, token)| Message::PunchNotify { peer, token }),
            (any::<u64>(), any::<u64>(), any::<bool>())
                .prop_map(|(token, from, heard)| Message::PunchProbe { token, from, heard }),
            (any::<u64>(), any::<u64>(), any::<bool>(), any::<bool>()).prop_map(
                |(token, to, ok, relayed)| Message::PunchResult {
                    token,
                    to,
                    ok,
                    relayed
                }
            ),
            (any::<u32>(), any::<u64>(), any::<u64>())
                .prop_map(|(room, to, token)| Message::RelayOpen { room, to, token }),
            (any::<u64>(), blob()).prop_map(|(token, data)| Message::RelayData { token, data }),
        ]
    }

    fn chat_or_error_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            text(MAX_NAME).prop_map(|name| Message::ChatLogin { name }),
            Just(Message::ChatLogout),
            Just(Message::ChatListRequest),
            proptest::collection::vec(chat_user(), 0..6)
                .prop_map(|users| Message::ChatList { users }),
            (text(MAX_NAME), text(MAX_NAME), text(MAX_CHAT_TEXT))
                .prop_map(|(from, to, text)| Message::ChatMessage { from, to, text }),
            (any::<u16>(), text(MAX_ERROR_TEXT))
                .prop_map(|(code, text)| Message::Error { code, text }),
        ]
    }

    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            11 => peer_message(),
            11 => tracker_message(),
            7 => catalog_message(),
            8 => nat_message(),
            6 => chat_or_error_message(),
        ]
    }

    /// Feeds `bytes` to `dec` and drains it; stops at the first error.
    fn drain(dec: &mut Decoder, bytes: &[u8]) -> Result<Vec<Message>, DecodeError> {
        dec.push(bytes);
        let mut out = Vec::new();
        while let Some(m) = dec.next()? {
            out.push(m);
        }
        Ok(out)
    }

    proptest! {
        #![proptest_config(config(512))]

        #[test]
        fn arbitrary_messages_round_trip(m in message()) {
            let frame = m.to_frame().unwrap();
            prop_assert_eq!(Message::decode_frame(&frame), Ok(m.clone()));
            let mut out = vec![1, 2, 3];
            m.encode(&mut out).unwrap();
            prop_assert_eq!(&out[3..], &frame[..]);
        }

        #[test]
        fn streams_round_trip_in_random_chunks(
            msgs in proptest::collection::vec(message(), 1..10),
            cuts in proptest::collection::vec(1usize..300, 1..40),
        ) {
            let mut stream = Vec::new();
            for m in &msgs {
                m.encode(&mut stream).unwrap();
            }
            let mut dec = Decoder::new();
            let mut got = Vec::new();
            let mut rest = &stream[..];
            for n in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (chunk, tail) = rest.split_at((*n).min(rest.len()));
                rest = tail;
                got.extend(drain(&mut dec, chunk).unwrap());
                // Only an incomplete frame stays behind.
                let pending = stream.len() - rest.len()
                    - msgs.iter().take(got.len()).map(|m| m.to_frame().unwrap().len()).sum::<usize>();
                prop_assert_eq!(dec.buffered(), pending);
            }
            prop_assert_eq!(got, msgs);
            prop_assert_eq!(dec.buffered(), 0);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Message::decode_frame(&bytes);
            let _ = drain(&mut Decoder::new(), &bytes);
        }

        #[test]
        fn random_payloads_never_panic(
            code in proptest::sample::select(ALL_CODES),
            payload in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let f = frame(code, &payload);
            if let Ok(m) = Message::decode_frame(&f) {
                // One encoding per message: it re-encodes to the same bytes.
                prop_assert_eq!(m.to_frame().unwrap(), f.clone());
            }
            let _ = drain(&mut Decoder::new(), &f);
            let _ = drain(&mut Decoder::with_max_frame(40), &f);
        }

        #[test]
        fn mutated_frames_never_panic(
            m in message(),
            edits in proptest::collection::vec(
                (any::<proptest::sample::Index>(), any::<u8>(), 0u8..5),
                1..6,
            ),
        ) {
            let mut f = m.to_frame().unwrap();
            for (at, byte, kind) in edits {
                let i = at.index(f.len() + 1);
                match kind {
                    0 if i < f.len() => f[i] = byte,
                    1 => f.insert(i, byte),
                    2 if i < f.len() => {
                        f.remove(i);
                    }
                    3 => f.truncate(i),
                    // Retype: another message's code over this payload.
                    _ if f.len() > 2 => f[2] = ALL_CODES[usize::from(byte) % ALL_CODES.len()],
                    _ => {}
                }
            }
            if let Ok(m) = Message::decode_frame(&f) {
                prop_assert_eq!(m.to_frame().unwrap(), f.clone());
            }
            let mut dec = Decoder::new();
            let _ = drain(&mut dec, &f);
            let _ = drain(&mut dec, &f);
        }
    }
}
