//! What a node holds of a live stream and serves to its peers: the most
//! recent fragments of each (room, channel), and each room's metadata.
//!
//! Plain data, no IO: the node's ingest puts fragments in, the peer server
//! ([`super::peer`]) reads them out. Everything is bounded by a
//! [`StoreConfig`]: per channel a count and a byte budget (the oldest ids are
//! dropped first, the original kept 50 per channel), a size limit per
//! fragment and per metadata value (so every reply fits one RUDP message),
//! a number of metadata items per room and a number of rooms.
//!
//! A fragment is kept as the encoded [`Message::Fragment`] frame it is
//! served as, so serving it copies nothing; [`StoredFragment::data`] is a
//! view into that frame.
//!
//! On one loop, share it as a [`SharedStore`] (`Rc<RefCell<..>>`); never
//! hold a borrow across anything that may park.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::rc::Rc;

use super::wire::{Message, HEADER_LEN, MAX_KEY};
use super::{Channel, RoomId};

/// A store shared by the coroutines of one loop.
pub type SharedStore = Rc<RefCell<FragmentStore>>;

/// Bytes a [`Message::Fragment`] frame adds to its data: the 8-byte header,
/// room u32, channel u8, id u64, timestamp u64 and the data's u32 length.
pub const FRAGMENT_OVERHEAD: usize = HEADER_LEN + 4 + 1 + 8 + 8 + 4;

/// Bytes a [`Message::MetaReply`] frame adds to its value, with the longest
/// key ([`MAX_KEY`]): header, room u32, key length u16 and bytes, the
/// option byte and the value's u32 length.
pub const META_OVERHEAD: usize = HEADER_LEN + 4 + 2 + MAX_KEY + 1 + 4;

/// The largest fragment whose frame fits one RUDP message of
/// `max_message` bytes (`rudp::Config::max_message`, 64 KiB by default).
pub const fn max_fragment_data(max_message: usize) -> usize {
    max_message.saturating_sub(FRAGMENT_OVERHEAD)
}

/// The largest metadata value whose reply fits one RUDP message of
/// `max_message` bytes, whatever its key.
pub const fn max_meta_value(max_message: usize) -> usize {
    max_message.saturating_sub(META_OVERHEAD)
}

/// The default RUDP message bound the defaults below are computed for.
const DEFAULT_MAX_MESSAGE: usize = 64 * 1024;

/// The store's bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Fragments kept per (room, channel); older ids are dropped first.
    /// Default 50 (the original's).
    pub max_fragments: usize,
    /// Data bytes kept per (room, channel); older ids are dropped first
    /// until the total fits. Default 8 MiB.
    pub max_bytes: usize,
    /// Largest fragment accepted, in data bytes. Default
    /// `max_fragment_data(64 KiB)` = 65,503, so every fragment is served as
    /// one RUDP message under the default RUDP configuration; lower it (or
    /// raise `rudp::Config::max_message`) to match the sockets in use.
    pub max_fragment: usize,
    /// Metadata items per room. Default 64.
    pub max_meta_items: usize,
    /// Largest metadata value, in bytes. Default 16 KiB (at most
    /// `max_meta_value(64 KiB)` = 65,261 fits a reply).
    pub max_meta_value: usize,
    /// Rooms held at once. Default 16.
    pub max_rooms: usize,
    /// Timestamps kept per (room, channel): once the newest fragment's
    /// timestamp is more than this ahead of the oldest's, the oldest go.
    /// This sizes a live window by time (timestamps are the source's, in
    /// its unit; p2p-live uses microseconds). Default 0: no time bound.
    pub max_span: u64,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            max_fragments: 50,
            max_bytes: 8 << 20,
            max_fragment: max_fragment_data(DEFAULT_MAX_MESSAGE),
            max_meta_items: 64,
            max_meta_value: 16 * 1024,
            max_rooms: 16,
            max_span: 0,
        }
    }
}

/// Why something was not stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The fragment is larger than `max_fragment` (or than `max_bytes`).
    FragmentTooLarge {
        /// Its size.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The metadata value is larger than `max_meta_value`.
    ValueTooLarge {
        /// Its size.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The metadata key is longer than [`MAX_KEY`] bytes.
    KeyTooLong {
        /// Its length.
        len: usize,
    },
    /// The room already has `max_meta_items` items.
    TooManyItems {
        /// The bound.
        max: usize,
    },
    /// `max_rooms` rooms are held already.
    TooManyRooms {
        /// The bound.
        max: usize,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::FragmentTooLarge { len, max } => {
                write!(f, "fragment of {len} bytes exceeds the {max}-byte limit")
            }
            StoreError::ValueTooLarge { len, max } => {
                write!(
                    f,
                    "metadata value of {len} bytes exceeds the {max}-byte limit"
                )
            }
            StoreError::KeyTooLong { len } => {
                write!(f, "metadata key of {len} bytes exceeds {MAX_KEY}")
            }
            StoreError::TooManyItems { max } => {
                write!(f, "the room already has {max} metadata items")
            }
            StoreError::TooManyRooms { max } => write!(f, "{max} rooms are held already"),
        }
    }
}

impl std::error::Error for StoreError {}

/// One fragment as stored: its timestamp and its encoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredFragment {
    /// The source's timestamp.
    pub timestamp: u64,
    /// The whole [`Message::Fragment`] frame, ready to send.
    pub frame: Rc<[u8]>,
    data_len: usize,
}

impl StoredFragment {
    /// The fragment's bytes (the end of its frame).
    pub fn data(&self) -> &[u8] {
        self.frame
            .get(self.frame.len() - self.data_len..)
            .unwrap_or_default()
    }
}

/// One channel's fragments, by id.
#[derive(Default)]
struct ChannelStore {
    frags: BTreeMap<u64, StoredFragment>,
    /// Sum of the data sizes.
    bytes: usize,
}

/// One room: three channels and the metadata.
#[derive(Default)]
struct RoomStore {
    channels: [ChannelStore; 3],
    meta: HashMap<String, Rc<[u8]>>,
}

impl RoomStore {
    fn channel(&self, c: Channel) -> &ChannelStore {
        &self.channels[usize::from(c.code())]
    }

    fn channel_mut(&mut self, c: Channel) -> &mut ChannelStore {
        &mut self.channels[usize::from(c.code())]
    }
}

/// The fragments and metadata a node serves (see the module docs).
pub struct FragmentStore {
    config: StoreConfig,
    rooms: HashMap<RoomId, RoomStore>,
}

impl fmt::Debug for FragmentStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FragmentStore")
            .field("rooms", &self.rooms.len())
            .field("config", &self.config)
            .finish()
    }
}

impl FragmentStore {
    /// An empty store with these bounds.
    pub fn new(config: StoreConfig) -> FragmentStore {
        FragmentStore {
            config,
            rooms: HashMap::new(),
        }
    }

    /// An empty store, wrapped for sharing on one loop.
    pub fn shared(config: StoreConfig) -> SharedStore {
        Rc::new(RefCell::new(FragmentStore::new(config)))
    }

    /// The bounds.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The room's entry, created if there is room for it.
    fn room_mut(&mut self, room: RoomId) -> Result<&mut RoomStore, StoreError> {
        if !self.rooms.contains_key(&room) && self.rooms.len() >= self.config.max_rooms {
            return Err(StoreError::TooManyRooms {
                max: self.config.max_rooms,
            });
        }
        Ok(self.rooms.entry(room).or_default())
    }

    /// Stores fragment `id` of (room, channel), replacing one with the same
    /// id, then drops the oldest ids until the channel is within its count
    /// and byte bounds (which may drop this one, if it is the oldest).
    /// Returns how many fragments were dropped.
    pub fn insert(
        &mut self,
        room: RoomId,
        channel: Channel,
        id: u64,
        timestamp: u64,
        data: &[u8],
    ) -> Result<usize, StoreError> {
        let max = self.config.max_fragment.min(self.config.max_bytes);
        if data.len() > max {
            return Err(StoreError::FragmentTooLarge {
                len: data.len(),
                max,
            });
        }
        let frame = Message::Fragment {
            room,
            channel,
            id,
            timestamp,
            data: data.to_vec(),
        }
        .to_frame()
        .map_err(|_| StoreError::FragmentTooLarge {
            len: data.len(),
            max,
        })?;
        let (max_count, max_bytes) = (self.config.max_fragments, self.config.max_bytes);
        let max_span = self.config.max_span;
        let ch = self.room_mut(room)?.channel_mut(channel);
        let stored = StoredFragment {
            timestamp,
            frame: Rc::from(frame),
            data_len: data.len(),
        };
        if let Some(old) = ch.frags.insert(id, stored) {
            ch.bytes -= old.data_len;
        }
        ch.bytes += data.len();
        let mut dropped = 0;
        let too_long = |ch: &ChannelStore| {
            max_span > 0
                && match (ch.frags.first_key_value(), ch.frags.last_key_value()) {
                    (Some((_, a)), Some((_, b))) => {
                        b.timestamp.saturating_sub(a.timestamp) > max_span
                    }
                    _ => false,
                }
        };
        while ch.frags.len() > max_count || ch.bytes > max_bytes || too_long(ch) {
            let Some((_, old)) = ch.frags.pop_first() else {
                break;
            };
            ch.bytes -= old.data_len;
            dropped += 1;
        }
        Ok(dropped)
    }

    /// Fragment `id` of (room, channel), if held (a cheap clone).
    pub fn get(&self, room: RoomId, channel: Channel, id: u64) -> Option<StoredFragment> {
        self.rooms
            .get(&room)?
            .channel(channel)
            .frags
            .get(&id)
            .cloned()
    }

    /// The buffer map of (room, channel): the newest id held and up to
    /// `8 * max_bytes - 1` before it, as `(first, bits)` in the format of
    /// [`Message::Map`] (bit `i` set: `first + i` is held); `None` if none
    /// is held.
    pub fn map(&self, room: RoomId, channel: Channel, max_bytes: usize) -> Option<(u64, Vec<u8>)> {
        let frags = &self.rooms.get(&room)?.channel(channel).frags;
        let (&oldest, _) = frags.first_key_value()?;
        let (&newest, _) = frags.last_key_value()?;
        let span = (max_bytes as u64).saturating_mul(8).max(1);
        let first = oldest.max(newest.saturating_sub(span - 1));
        let len = usize::try_from(newest - first).unwrap_or(usize::MAX) / 8 + 1;
        let mut bits = vec![0u8; len];
        for (&id, _) in frags.range(first..=newest) {
            let i = usize::try_from(id - first).unwrap_or(usize::MAX);
            if let Some(b) = bits.get_mut(i / 8) {
                *b |= 1 << (i % 8);
            }
        }
        Some((first, bits))
    }

    /// Whether fragment `id` of (room, channel) is held.
    pub fn contains(&self, room: RoomId, channel: Channel, id: u64) -> bool {
        self.rooms
            .get(&room)
            .is_some_and(|r| r.channel(channel).frags.contains_key(&id))
    }

    /// The oldest and newest ids held on (room, channel); `None` when it
    /// holds none. Ids in between may be missing (a source gap, or a
    /// replaced fragment evicted out of order); those are answered as
    /// missing.
    pub fn range(&self, room: RoomId, channel: Channel) -> Option<(u64, u64)> {
        let frags = &self.rooms.get(&room)?.channel(channel).frags;
        let first = *frags.first_key_value()?.0;
        let last = *frags.last_key_value()?.0;
        Some((first, last))
    }

    /// Fragments held on (room, channel).
    pub fn len(&self, room: RoomId, channel: Channel) -> usize {
        self.rooms
            .get(&room)
            .map_or(0, |r| r.channel(channel).frags.len())
    }

    /// Whether the store holds nothing at all.
    pub fn is_empty(&self) -> bool {
        self.rooms
            .values()
            .all(|r| r.meta.is_empty() && r.channels.iter().all(|c| c.frags.is_empty()))
    }

    /// Data bytes held on (room, channel).
    pub fn bytes(&self, room: RoomId, channel: Channel) -> usize {
        self.rooms
            .get(&room)
            .map_or(0, |r| r.channel(channel).bytes)
    }

    /// Sets metadata item `key` of `room` (replacing its value).
    pub fn set_meta(&mut self, room: RoomId, key: &str, value: &[u8]) -> Result<(), StoreError> {
        if key.len() > MAX_KEY {
            return Err(StoreError::KeyTooLong { len: key.len() });
        }
        if value.len() > self.config.max_meta_value {
            return Err(StoreError::ValueTooLarge {
                len: value.len(),
                max: self.config.max_meta_value,
            });
        }
        let max_items = self.config.max_meta_items;
        let r = self.room_mut(room)?;
        if !r.meta.contains_key(key) && r.meta.len() >= max_items {
            return Err(StoreError::TooManyItems { max: max_items });
        }
        r.meta.insert(key.to_owned(), Rc::from(value));
        Ok(())
    }

    /// Metadata item `key` of `room`, if held.
    pub fn meta(&self, room: RoomId, key: &str) -> Option<Rc<[u8]>> {
        self.rooms.get(&room)?.meta.get(key).cloned()
    }

    /// Removes metadata item `key` of `room`; whether it was there.
    pub fn remove_meta(&mut self, room: RoomId, key: &str) -> bool {
        self.rooms
            .get_mut(&room)
            .is_some_and(|r| r.meta.remove(key).is_some())
    }

    /// Forgets everything of `room`.
    pub fn remove_room(&mut self, room: RoomId) {
        self.rooms.remove(&room);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max_fragments: usize, max_bytes: usize) -> FragmentStore {
        FragmentStore::new(StoreConfig {
            max_fragments,
            max_bytes,
            max_fragment: 1000,
            max_meta_items: 2,
            max_meta_value: 10,
            max_rooms: 2,
            max_span: 0,
        })
    }

    #[test]
    fn the_map_shows_holes_and_is_bounded() {
        let mut s = store(100, 1 << 20);
        assert_eq!(s.map(1, Channel::Video, 4), None);
        for id in [10, 11, 13, 20] {
            s.insert(1, Channel::Video, id, 0, b"x").expect("insert");
        }
        // 10..=20: bits 0, 1, 3 and 10.
        assert_eq!(
            s.map(1, Channel::Video, 4),
            Some((10, vec![0b0000_1011, 0b0000_0100]))
        );
        // One byte covers 13..=20 only.
        assert_eq!(s.map(1, Channel::Video, 1), Some((13, vec![0b1000_0001])));
    }

    #[test]
    fn a_time_span_bounds_the_window() {
        let mut s = FragmentStore::new(StoreConfig {
            max_span: 1000,
            ..StoreConfig::default()
        });
        for id in 0..10 {
            s.insert(1, Channel::Video, id, id * 250, b"x")
                .expect("insert");
        }
        // Newest timestamp 2250: 1250..=2250 spans 1000 and stays.
        assert_eq!(s.range(1, Channel::Video), Some((5, 9)));
        assert_eq!(s.len(1, Channel::Audio), 0);
    }

    #[test]
    fn overhead_matches_the_encoding() {
        let f = Message::Fragment {
            room: 1,
            channel: Channel::Video,
            id: 2,
            timestamp: 3,
            data: vec![7; 100],
        }
        .to_frame()
        .expect("encodes");
        assert_eq!(f.len(), FRAGMENT_OVERHEAD + 100);
        let m = Message::MetaReply {
            room: 1,
            key: "k".repeat(MAX_KEY),
            value: Some(vec![1; 100]),
        }
        .to_frame()
        .expect("encodes");
        assert_eq!(m.len(), META_OVERHEAD + 100);
        assert_eq!(max_fragment_data(64 * 1024), 65_503);
        assert_eq!(StoreConfig::default().max_fragment, 65_503);
        assert!(StoreConfig::default().max_meta_value <= max_meta_value(64 * 1024));
    }

    #[test]
    fn fragments_are_served_as_their_frames() {
        let mut s = store(10, 10_000);
        assert_eq!(s.insert(4, Channel::Audio, 9, 77, b"hello"), Ok(0));
        let f = s.get(4, Channel::Audio, 9).expect("held");
        assert_eq!((f.timestamp, f.data()), (77, &b"hello"[..]));
        assert_eq!(
            Message::decode_frame(&f.frame),
            Ok(Message::Fragment {
                room: 4,
                channel: Channel::Audio,
                id: 9,
                timestamp: 77,
                data: b"hello".to_vec()
            })
        );
        assert!(s.get(4, Channel::Video, 9).is_none());
        assert!(s.get(5, Channel::Audio, 9).is_none());
        assert!(s.contains(4, Channel::Audio, 9));
        assert_eq!(s.range(4, Channel::Audio), Some((9, 9)));
        assert_eq!(s.range(4, Channel::Video), None);
        assert_eq!(s.range(5, Channel::Audio), None);
    }

    #[test]
    fn the_oldest_ids_go_first_by_count() {
        let mut s = store(3, 10_000);
        for id in [5, 1, 4, 2] {
            s.insert(1, Channel::Video, id, id * 10, &[id as u8; 10])
                .expect("stored");
        }
        assert_eq!(s.range(1, Channel::Video), Some((2, 5)));
        assert_eq!(s.len(1, Channel::Video), 3);
        assert_eq!(s.bytes(1, Channel::Video), 30);
        // An id older than all held goes at once.
        assert_eq!(s.insert(1, Channel::Video, 0, 0, b"x"), Ok(1));
        assert_eq!(s.range(1, Channel::Video), Some((2, 5)));
        // Replacing keeps the count.
        assert_eq!(s.insert(1, Channel::Video, 4, 1, &[9; 20]), Ok(0));
        assert_eq!(s.bytes(1, Channel::Video), 40);
        assert_eq!(s.get(1, Channel::Video, 4).expect("held").data(), &[9; 20]);
        // Channels are bounded separately.
        s.insert(1, Channel::Audio, 100, 0, b"a").expect("stored");
        assert_eq!(s.len(1, Channel::Video), 3);
        assert_eq!(s.len(1, Channel::Audio), 1);
    }

    #[test]
    fn the_oldest_ids_go_first_by_bytes() {
        let mut s = store(100, 1000);
        for id in 0..10 {
            assert_eq!(s.insert(1, Channel::Video, id, 0, &[0; 100]), Ok(0));
        }
        assert_eq!(s.bytes(1, Channel::Video), 1000);
        assert_eq!(s.insert(1, Channel::Video, 10, 0, &[0; 250]), Ok(3));
        assert_eq!(s.range(1, Channel::Video), Some((3, 10)));
        assert_eq!(s.bytes(1, Channel::Video), 950);
        assert_eq!(
            s.insert(1, Channel::Video, 11, 0, &[0; 1001]),
            Err(StoreError::FragmentTooLarge {
                len: 1001,
                max: 1000
            })
        );
    }

    #[test]
    fn metadata_and_rooms_are_bounded() {
        let mut s = store(10, 10_000);
        s.set_meta(1, "a", b"1").expect("set");
        s.set_meta(1, "b", b"2").expect("set");
        assert_eq!(
            s.set_meta(1, "c", b"3"),
            Err(StoreError::TooManyItems { max: 2 })
        );
        s.set_meta(1, "a", b"again").expect("replacing is fine");
        assert_eq!(s.meta(1, "a").as_deref(), Some(&b"again"[..]));
        assert_eq!(s.meta(1, "c"), None);
        assert_eq!(s.meta(2, "a"), None);
        assert_eq!(
            s.set_meta(1, "a", &[0; 11]),
            Err(StoreError::ValueTooLarge { len: 11, max: 10 })
        );
        let long = "k".repeat(MAX_KEY + 1);
        assert_eq!(
            s.set_meta(1, &long, b""),
            Err(StoreError::KeyTooLong { len: MAX_KEY + 1 })
        );
        assert!(s.remove_meta(1, "b"));
        s.set_meta(1, "c", b"3").expect("room again");
        s.insert(2, Channel::Meta, 0, 0, b"").expect("second room");
        assert_eq!(
            s.insert(3, Channel::Meta, 0, 0, b""),
            Err(StoreError::TooManyRooms { max: 2 })
        );
        s.remove_room(2);
        s.insert(3, Channel::Meta, 0, 0, b"").expect("room freed");
        assert!(!s.is_empty());
        s.remove_room(1);
        s.remove_room(3);
        assert!(s.is_empty());
    }
}
