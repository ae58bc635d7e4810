//! Packets to fragment payloads and back (sans-IO, no FFmpeg).
//!
//! The network carries each stream ([`Kind`]) on its own channel as
//! fragments with consecutive 64-bit ids the caller assigns. A fragment
//! payload is a 2-byte header (version, kind) and one or more records; a
//! record is a whole packet or a part of one, with the packet's timestamps.
//! The byte layout is in `docs/media.md`.
//!
//! - Source: [`Packetizer::push`] each packet from the ingest, send every
//!   returned [`Chunk`] as the next fragment of its kind; [`Packetizer::flush`]
//!   at the end. Video goes out one packet per fragment (no added latency);
//!   audio packets are grouped up to `audio_group` of media or `max_payload`.
//!   A packet larger than a fragment is split into parts over consecutive
//!   fragments.
//! - Client: [`Depacketizer::push`] each fragment in id order per kind; it
//!   returns the packets completed by it. A gap in the ids discards a packet
//!   whose parts were being collected; a fragment that starts in the middle of
//!   a packet (after a gap or on joining) skips that part.
//! - [`starts_key`] tells whether a video fragment starts a key packet: a
//!   client starts at one.

use std::time::Duration;

use super::{rescale, FormatError, Kind, Packet, Reader, StreamInfo, MICROS};

/// Version byte at the start of every payload.
const VERSION: u8 = 1;
/// Record flag: the packet is a key packet.
const KEY: u8 = 1;
/// Record flag: the record holds the packet's first byte.
const FIRST: u8 = 2;
/// Record flag: the record holds the packet's last byte.
const LAST: u8 = 4;
/// Bytes of the payload header: version, kind.
const HEADER: usize = 2;
/// Longest record header: flags and four 10-byte varints.
const MAX_RECORD_HEADER: usize = 1 + 4 * 10;
/// Smallest `max_payload` the [`Packetizer`] uses (smaller values are raised).
pub const MIN_PAYLOAD: usize = 64;
// An empty payload always has room for a record header and a byte of data.
const _: () = assert!(HEADER + MAX_RECORD_HEADER < MIN_PAYLOAD);
/// Largest packet the [`Depacketizer`] reassembles (16 MiB); the
/// [`Packetizer`] drops larger ones.
pub const MAX_PACKET: usize = 16 << 20;

/// One fragment payload to send on `kind`'s channel, with what the sender
/// may want to put in its own fragment header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// The channel.
    pub kind: Kind,
    /// Presentation time of the first record, in microseconds.
    pub media_us: i64,
    /// Whether the payload starts with the first part of a key packet
    /// (what [`starts_key`] reads back).
    pub key: bool,
    /// The payload.
    pub payload: Vec<u8>,
}

fn kind_byte(kind: Kind) -> u8 {
    match kind {
        Kind::Video => 0,
        Kind::Audio => 1,
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push(v as u8 | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

fn get_varint(r: &mut Reader<'_>) -> Result<u64, FormatError> {
    let mut v = 0u64;
    for i in 0..10 {
        let byte = r.u8()?;
        if i == 9 && byte > 1 {
            return Err(FormatError::new("varint overflows 64 bits"));
        }
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(FormatError::new("varint longer than 10 bytes"))
}

/// The timestamps a record carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    pts: i64,
    dts: i64,
    duration: i64,
    key: bool,
}

impl Stamp {
    fn of(p: &Packet) -> Stamp {
        Stamp {
            pts: p.pts,
            dts: p.dts,
            duration: p.duration.max(0),
            key: p.key,
        }
    }
}

/// A payload being filled.
struct Builder {
    kind: Kind,
    payload: Vec<u8>,
    /// pts of the first and of the last record (records after the first
    /// carry their pts as a difference from the previous one).
    first_pts: Option<i64>,
    last_pts: i64,
    key: bool,
}

impl Builder {
    fn new(kind: Kind) -> Builder {
        Builder {
            kind,
            payload: Vec::new(),
            first_pts: None,
            last_pts: 0,
            key: false,
        }
    }

    fn is_empty(&self) -> bool {
        self.first_pts.is_none()
    }

    /// Record header bytes for `s` without the length field.
    fn header_len(&self, s: &Stamp) -> usize {
        let pts = match self.first_pts {
            None => zigzag(s.pts),
            Some(_) => zigzag(s.pts.wrapping_sub(self.last_pts)),
        };
        1 + varint_len(pts)
            + varint_len(zigzag(s.pts.wrapping_sub(s.dts)))
            + varint_len(zigzag(s.duration))
    }

    /// Bytes used, counting the header a first record will add.
    fn used(&self) -> usize {
        if self.is_empty() {
            HEADER
        } else {
            self.payload.len()
        }
    }

    fn put(&mut self, s: &Stamp, flags: u8, data: &[u8]) {
        let pts = match self.first_pts {
            None => {
                self.payload.push(VERSION);
                self.payload.push(kind_byte(self.kind));
                self.first_pts = Some(s.pts);
                self.key = flags & (KEY | FIRST) == KEY | FIRST;
                zigzag(s.pts)
            }
            Some(_) => zigzag(s.pts.wrapping_sub(self.last_pts)),
        };
        self.last_pts = s.pts;
        self.payload.push(flags);
        put_varint(&mut self.payload, pts);
        put_varint(&mut self.payload, zigzag(s.pts.wrapping_sub(s.dts)));
        put_varint(&mut self.payload, zigzag(s.duration));
        put_varint(&mut self.payload, data.len() as u64);
        self.payload.extend_from_slice(data);
    }

    fn take(&mut self, time_base: (i32, i32)) -> Option<Chunk> {
        let first = self.first_pts.take()?;
        Some(Chunk {
            kind: self.kind,
            media_us: rescale(first, time_base, MICROS),
            key: self.key,
            payload: std::mem::take(&mut self.payload),
        })
    }
}

/// Cuts packets into fragment payloads (the source's side).
pub struct Packetizer {
    max_payload: usize,
    video_tb: (i32, i32),
    audio_tb: (i32, i32),
    /// `audio_group` in the audio time base.
    audio_group: i64,
    video: Builder,
    audio: Builder,
}

impl Packetizer {
    /// A packetizer for the streams of `info`, making payloads of at most
    /// `max_payload` bytes (at least [`MIN_PAYLOAD`]) and grouping audio
    /// packets until they span `audio_group` of media (zero: one packet per
    /// fragment).
    pub fn new(info: &StreamInfo, max_payload: usize, audio_group: Duration) -> Packetizer {
        let video_tb = info.time_base(Kind::Video).unwrap_or(MICROS);
        let audio_tb = info.time_base(Kind::Audio).unwrap_or(MICROS);
        let group_us = i64::try_from(audio_group.as_micros()).unwrap_or(i64::MAX);
        Packetizer {
            max_payload: max_payload.max(MIN_PAYLOAD),
            video_tb,
            audio_tb,
            audio_group: rescale(group_us, MICROS, audio_tb),
            video: Builder::new(Kind::Video),
            audio: Builder::new(Kind::Audio),
        }
    }

    /// Adds a packet; returns the payloads now complete, in order. Video
    /// packets always come out at once; audio when the group is full.
    pub fn push(&mut self, p: Packet) -> Vec<Chunk> {
        let mut out = Vec::new();
        if p.data.len() > MAX_PACKET {
            log::warn!(
                "dropping a {:?} packet of {} bytes (at most {MAX_PACKET})",
                p.kind,
                p.data.len()
            );
            return out;
        }
        let s = Stamp::of(&p);
        match p.kind {
            Kind::Video => {
                self.add(Kind::Video, &s, &p.data, &mut out);
                out.extend(self.video.take(self.video_tb));
            }
            Kind::Audio => {
                if let Some(first) = self.audio.first_pts {
                    if s.pts.saturating_sub(first) >= self.audio_group {
                        out.extend(self.audio.take(self.audio_tb));
                    }
                }
                self.add(Kind::Audio, &s, &p.data, &mut out);
                let first = self.audio.first_pts.unwrap_or(s.pts);
                let end = s.pts.saturating_add(s.duration);
                if end.saturating_sub(first) >= self.audio_group {
                    out.extend(self.audio.take(self.audio_tb));
                }
            }
        }
        out
    }

    /// Returns the audio payload being grouped, if any (at the end of the
    /// stream).
    pub fn flush(&mut self) -> Vec<Chunk> {
        self.audio.take(self.audio_tb).into_iter().collect()
    }

    /// Appends one packet to `kind`'s builder, emitting full payloads into
    /// `out`: a packet that does not fit in a started payload goes to the
    /// next one; one larger than an empty payload is split.
    fn add(&mut self, kind: Kind, s: &Stamp, data: &[u8], out: &mut Vec<Chunk>) {
        let max = self.max_payload;
        let tb = match kind {
            Kind::Video => self.video_tb,
            Kind::Audio => self.audio_tb,
        };
        let b = match kind {
            Kind::Video => &mut self.video,
            Kind::Audio => &mut self.audio,
        };
        let whole =
            |b: &Builder| b.used() + b.header_len(s) + varint_len(data.len() as u64) + data.len();
        if !b.is_empty() && whole(b) > max {
            out.extend(b.take(tb));
        }
        if whole(b) <= max {
            b.put(s, FIRST | LAST | key_flag(s), data);
            return;
        }
        // Split: `b` is empty here, and an empty payload has room for a
        // header and at least one byte (max >= MIN_PAYLOAD).
        let mut rest = data;
        let mut flags = FIRST;
        loop {
            let space = max - b.used() - b.header_len(s);
            let room = space - varint_len(space as u64);
            if rest.len() <= room {
                b.put(s, flags | LAST | key_flag(s), rest);
                return;
            }
            let (part, tail) = rest.split_at(room);
            b.put(s, flags | key_flag(s), part);
            out.extend(b.take(tb));
            rest = tail;
            flags = 0;
        }
    }
}

fn key_flag(s: &Stamp) -> u8 {
    if s.key {
        KEY
    } else {
        0
    }
}

/// Whether a fragment payload starts with the first part of a key packet
/// (a client joining the video channel starts at such a fragment).
pub fn starts_key(payload: &[u8]) -> bool {
    payload.len() > HEADER
        && payload[0] == VERSION
        && payload[HEADER] & !(KEY | FIRST | LAST) == 0
        && payload[HEADER] & (KEY | FIRST) == KEY | FIRST
}

/// One parsed record.
struct Record<'a> {
    flags: u8,
    stamp: Stamp,
    data: &'a [u8],
}

/// Parses a whole payload of `kind`; all or nothing.
fn parse(kind: Kind, payload: &[u8]) -> Result<Vec<Record<'_>>, FormatError> {
    let mut r = Reader::new(payload);
    let version = r.u8()?;
    if version != VERSION {
        return Err(FormatError::new(format!(
            "fragment version {version}, expected {VERSION}"
        )));
    }
    let k = r.u8()?;
    if k != kind_byte(kind) {
        return Err(FormatError::new(format!(
            "a fragment of kind {k} on the {kind:?} channel"
        )));
    }
    let mut records = Vec::new();
    let mut last_pts = 0i64;
    while !r.rest().is_empty() {
        let flags = r.u8()?;
        if flags & !(KEY | FIRST | LAST) != 0 {
            return Err(FormatError::new(format!(
                "unknown record flags {flags:#04x}"
            )));
        }
        let v = unzigzag(get_varint(&mut r)?);
        let pts = if records.is_empty() {
            v
        } else {
            last_pts.wrapping_add(v)
        };
        last_pts = pts;
        let dts = pts.wrapping_sub(unzigzag(get_varint(&mut r)?));
        let duration = unzigzag(get_varint(&mut r)?);
        if duration < 0 {
            return Err(FormatError::new(format!("negative duration {duration}")));
        }
        let len = get_varint(&mut r)?;
        if len > r.rest().len() as u64 {
            return Err(FormatError::new(format!(
                "record of {len} bytes, {} left",
                r.rest().len()
            )));
        }
        let data = r.take(len as usize)?;
        records.push(Record {
            flags,
            stamp: Stamp {
                pts,
                dts,
                duration,
                key: flags & KEY != 0,
            },
            data,
        });
    }
    if records.is_empty() {
        return Err(FormatError::new("a fragment without records"));
    }
    Ok(records)
}

/// A packet whose parts are being collected.
struct Partial {
    stamp: Stamp,
    data: Vec<u8>,
}

/// Per-channel reassembly state.
#[derive(Default)]
struct Lane {
    last_id: Option<u64>,
    partial: Option<Partial>,
}

/// Turns fragment payloads back into packets (the client's side).
#[derive(Default)]
pub struct Depacketizer {
    video: Lane,
    audio: Lane,
}

impl Depacketizer {
    /// A depacketizer that has seen nothing.
    pub fn new() -> Depacketizer {
        Depacketizer::default()
    }

    /// Takes the fragment `id` of `kind`'s channel; returns the packets it
    /// completes. Ids should be consecutive per kind: any other id first
    /// discards a partly reassembled packet. A malformed payload (or a
    /// packet growing past [`MAX_PACKET`]) is an error and also discards it;
    /// later fragments are still accepted.
    pub fn push(
        &mut self,
        kind: Kind,
        id: u64,
        payload: &[u8],
    ) -> Result<Vec<Packet>, FormatError> {
        let lane = match kind {
            Kind::Video => &mut self.video,
            Kind::Audio => &mut self.audio,
        };
        if lane.last_id.is_some_and(|last| last.wrapping_add(1) != id) {
            lane.partial = None;
        }
        lane.last_id = Some(id);
        let result = Self::records(kind, lane, payload);
        if result.is_err() {
            lane.partial = None;
        }
        result
    }

    fn records(kind: Kind, lane: &mut Lane, payload: &[u8]) -> Result<Vec<Packet>, FormatError> {
        let mut out = Vec::new();
        for rec in parse(kind, payload)? {
            let packet = |stamp: Stamp, data: Vec<u8>| Packet {
                kind,
                pts: stamp.pts,
                dts: stamp.dts,
                duration: stamp.duration,
                key: stamp.key,
                data,
            };
            if rec.flags & FIRST != 0 {
                if rec.data.len() > MAX_PACKET {
                    return Err(FormatError::new(format!(
                        "packet part of {} bytes, at most {MAX_PACKET}",
                        rec.data.len()
                    )));
                }
                // A packet left unfinished is lost.
                lane.partial = None;
                if rec.flags & LAST != 0 {
                    out.push(packet(rec.stamp, rec.data.to_vec()));
                } else {
                    lane.partial = Some(Partial {
                        stamp: rec.stamp,
                        data: rec.data.to_vec(),
                    });
                }
                continue;
            }
            // A later part: it must continue the packet being collected;
            // without one (joined mid-packet, after a gap) it is skipped.
            let Some(mut part) = lane.partial.take() else {
                continue;
            };
            if part.stamp != rec.stamp {
                continue;
            }
            if part.data.len() + rec.data.len() > MAX_PACKET {
                return Err(FormatError::new(format!(
                    "packet grows past {MAX_PACKET} bytes"
                )));
            }
            part.data.extend_from_slice(rec.data);
            if rec.flags & LAST != 0 {
                out.push(packet(part.stamp, part.data));
            } else {
                lane.partial = Some(part);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::{AudioParams, VideoParams};
    use super::*;

    /// xorshift64*: a seeded generator for the randomized tests.
    pub(crate) struct Rng(pub u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    fn info() -> StreamInfo {
        StreamInfo {
            video: Some(VideoParams {
                codec: "h264".into(),
                width: 320,
                height: 180,
                time_base: (1, 90_000),
                frame_rate: (25, 1),
                extradata: vec![],
            }),
            audio: Some(AudioParams {
                codec: "aac".into(),
                sample_rate: 48_000,
                channels: 2,
                time_base: (1, 48_000),
                frame_size: 1024,
                extradata: vec![0x11, 0x90],
            }),
        }
    }

    fn video(i: i64, len: usize, key: bool) -> Packet {
        Packet {
            kind: Kind::Video,
            pts: i * 3600 + 7200,
            dts: i * 3600,
            duration: 3600,
            key,
            data: (0..len).map(|j| (j as i64 * 7 + i) as u8).collect(),
        }
    }

    fn audio(i: i64, len: usize) -> Packet {
        Packet {
            kind: Kind::Audio,
            pts: i * 1024 - 1024,
            dts: i * 1024 - 1024,
            duration: 1024,
            key: true,
            data: vec![i as u8; len],
        }
    }

    /// Sends chunks through a depacketizer with consecutive ids per kind.
    fn deliver(d: &mut Depacketizer, ids: &mut [u64; 2], chunks: &[Chunk]) -> Vec<Packet> {
        let mut out = Vec::new();
        for c in chunks {
            let id = &mut ids[kind_byte(c.kind) as usize];
            out.extend(d.push(c.kind, *id, &c.payload).unwrap());
            *id += 1;
        }
        out
    }

    #[test]
    fn video_packets_go_one_per_fragment() {
        let mut p = Packetizer::new(&info(), 60_000, Duration::from_millis(100));
        let mut d = Depacketizer::new();
        let mut ids = [0; 2];
        for i in 0..10 {
            let pk = video(i, 1000 + i as usize * 100, i % 5 == 0);
            let chunks = p.push(pk.clone());
            assert_eq!(chunks.len(), 1);
            assert!(chunks[0].payload.len() <= 60_000);
            assert_eq!(chunks[0].key, pk.key);
            assert_eq!(starts_key(&chunks[0].payload), pk.key);
            assert_eq!(chunks[0].media_us, (i * 3600 + 7200) * 100 / 9);
            assert_eq!(deliver(&mut d, &mut ids, &chunks), vec![pk]);
        }
        assert!(p.flush().is_empty());
    }

    #[test]
    fn large_packets_are_split_and_rejoined() {
        let mut p = Packetizer::new(&info(), 60_000, Duration::from_millis(100));
        let mut d = Depacketizer::new();
        let mut ids = [0; 2];
        let big = video(0, 200_000, true);
        let chunks = p.push(big.clone());
        assert_eq!(chunks.len(), 4);
        assert!(chunks.iter().all(|c| c.payload.len() <= 60_000));
        assert!(chunks[..3].iter().all(|c| c.payload.len() > 59_900));
        assert!(chunks[0].key && starts_key(&chunks[0].payload));
        assert!(chunks[1..]
            .iter()
            .all(|c| !c.key && !starts_key(&c.payload)));
        assert!(chunks.iter().all(|c| c.media_us == chunks[0].media_us));
        // Nothing comes out until the last part.
        for c in &chunks[..3] {
            assert!(deliver(&mut d, &mut ids, std::slice::from_ref(c)).is_empty());
        }
        assert_eq!(deliver(&mut d, &mut ids, &chunks[3..]), vec![big]);
    }

    #[test]
    fn a_gap_discards_the_packet_being_rejoined() {
        let mut p = Packetizer::new(&info(), 1000, Duration::ZERO);
        let mut d = Depacketizer::new();
        let a = p.push(video(0, 3000, true));
        let b = p.push(video(1, 500, false));
        let c = p.push(video(2, 2500, false));
        assert_eq!((a.len(), b.len(), c.len()), (4, 1, 3));
        // Lose a[2]: the first packet is gone, the next ones are whole.
        let mut got = Vec::new();
        for (id, ch) in a.iter().chain(&b).chain(&c).enumerate() {
            if id != 2 {
                got.extend(d.push(Kind::Video, id as u64, &ch.payload).unwrap());
            }
        }
        assert_eq!(got, vec![video(1, 500, false), video(2, 2500, false)]);
        // Joining in the middle of a packet: its remaining parts are skipped.
        let mut d = Depacketizer::new();
        let mut got = Vec::new();
        for (id, ch) in a.iter().chain(&b).enumerate().skip(1) {
            got.extend(d.push(Kind::Video, 100 + id as u64, &ch.payload).unwrap());
        }
        assert_eq!(got, vec![video(1, 500, false)]);
    }

    #[test]
    fn audio_is_grouped_by_time_and_size() {
        let mut p = Packetizer::new(&info(), 60_000, Duration::from_millis(100));
        let mut d = Depacketizer::new();
        let mut ids = [0; 2];
        let mut chunks = Vec::new();
        let packets: Vec<Packet> = (0..23).map(|i| audio(i, 370)).collect();
        for pk in &packets {
            chunks.extend(p.push(pk.clone()));
        }
        // 5 packets of 21.3 ms reach 100 ms.
        assert_eq!(chunks.len(), 4);
        chunks.extend(p.flush());
        assert_eq!(chunks.len(), 5);
        assert!(chunks.iter().all(|c| c.key && c.kind == Kind::Audio));
        assert_eq!(chunks[1].media_us, 4 * 1024 * 1_000_000 / 48_000);
        // Record headers are small: the overhead stays under 3%.
        let bytes: usize = chunks.iter().map(|c| c.payload.len()).sum();
        assert!(bytes < 23 * 370 * 103 / 100, "{bytes}");
        assert_eq!(deliver(&mut d, &mut ids, &chunks), packets);

        // By size: 10 packets of 300 bytes do not fit in 1000 bytes.
        let mut p = Packetizer::new(&info(), 1000, Duration::from_secs(1));
        let mut chunks = Vec::new();
        let packets: Vec<Packet> = (0..10).map(|i| audio(i, 300)).collect();
        for pk in &packets {
            chunks.extend(p.push(pk.clone()));
        }
        chunks.extend(p.flush());
        assert_eq!(chunks.len(), 4);
        assert!(chunks.iter().all(|c| c.payload.len() <= 1000));
        let mut d = Depacketizer::new();
        assert_eq!(deliver(&mut d, &mut [0; 2], &chunks), packets);
    }

    #[test]
    fn extreme_timestamps_round_trip() {
        let mut p = Packetizer::new(&info(), 100, Duration::from_secs(10));
        let mut d = Depacketizer::new();
        let mut packets = Vec::new();
        for (i, (pts, dts)) in [(i64::MAX, i64::MIN), (i64::MIN, i64::MAX), (0, 0), (-5, 3)]
            .into_iter()
            .enumerate()
        {
            packets.push(Packet {
                kind: Kind::Audio,
                pts,
                dts,
                duration: i as i64,
                key: i % 2 == 0,
                data: vec![i as u8; i * 40],
            });
        }
        let mut chunks = Vec::new();
        for pk in &packets {
            chunks.extend(p.push(pk.clone()));
        }
        chunks.extend(p.flush());
        assert_eq!(deliver(&mut d, &mut [0; 2], &chunks), packets);
    }

    #[test]
    fn random_streams_round_trip_and_survive_loss() {
        let mut rng = Rng(0x5eed);
        for round in 0..200 {
            let max = MIN_PAYLOAD + rng.below(5000) as usize;
            let group = Duration::from_millis(rng.below(300));
            let mut p = Packetizer::new(&info(), max, group);
            let mut packets = Vec::new();
            let mut chunks = Vec::new();
            let (mut vi, mut ai) = (0, 0);
            for _ in 0..60 {
                let len = match rng.below(10) {
                    0 => 0,
                    1 => rng.below(4 * max as u64) as usize,
                    _ => rng.below(max as u64) as usize,
                };
                let pk = if rng.below(3) == 0 {
                    vi += 1;
                    video(vi, len, rng.below(4) == 0)
                } else {
                    ai += 1;
                    audio(ai, len)
                };
                packets.push(pk.clone());
                chunks.extend(p.push(pk));
            }
            chunks.extend(p.flush());
            assert!(
                chunks.iter().all(|c| c.payload.len() <= max),
                "round {round}"
            );
            // Without loss every packet arrives, in order per kind.
            let mut d = Depacketizer::new();
            let got = deliver(&mut d, &mut [0; 2], &chunks);
            for kind in [Kind::Video, Kind::Audio] {
                let want: Vec<&Packet> = packets.iter().filter(|p| p.kind == kind).collect();
                let have: Vec<&Packet> = got.iter().filter(|p| p.kind == kind).collect();
                assert_eq!(want, have, "round {round}");
            }
            // With loss, what arrives is whole and in order.
            let mut d = Depacketizer::new();
            let mut ids = [0u64; 2];
            let mut got = Vec::new();
            for c in &chunks {
                let id = &mut ids[kind_byte(c.kind) as usize];
                if rng.below(5) != 0 {
                    got.extend(d.push(c.kind, *id, &c.payload).unwrap());
                }
                *id += 1;
            }
            for kind in [Kind::Video, Kind::Audio] {
                let mut want = packets.iter().filter(|p| p.kind == kind);
                for have in got.iter().filter(|p| p.kind == kind) {
                    assert!(want.any(|w| w == have), "round {round}: not a subsequence");
                }
            }
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut d = Depacketizer::new();
        assert!(d.push(Kind::Video, 0, &[]).is_err());
        assert!(d.push(Kind::Video, 1, &[VERSION, 0]).is_err());
        assert!(d.push(Kind::Video, 2, &[9, 0, 6, 0, 0, 0, 0]).is_err());
        // Wrong channel.
        let mut p = Packetizer::new(&info(), 60_000, Duration::ZERO);
        let a = p.push(audio(1, 10));
        let e = d.push(Kind::Video, 3, &a[0].payload).unwrap_err();
        assert!(e.message().contains("kind"), "{e}");
        // Every cut inside a record fails.
        let v = p.push(video(1, 300, true));
        let whole = &v[0].payload;
        for n in 0..whole.len() {
            assert!(
                d.push(Kind::Video, 10 + n as u64, &whole[..n]).is_err(),
                "cut at {n}"
            );
        }
        assert!(!starts_key(&whole[..2]));
        assert!(starts_key(whole));
        // An oversized packet part is refused before allocating it again.
        let mut big = vec![VERSION, 0, FIRST | KEY, 0, 0, 0];
        put_varint(&mut big, MAX_PACKET as u64 + 1);
        big.resize(big.len() + MAX_PACKET + 1, 0);
        assert!(d.push(Kind::Video, 1000, &big).is_err());
        // Random bytes and mutated payloads never panic.
        let mut rng = Rng(99);
        let mut d = Depacketizer::new();
        for i in 0..50_000u64 {
            let mut b = if rng.below(2) == 0 {
                whole.clone()
            } else {
                (0..rng.below(40)).map(|_| rng.next() as u8).collect()
            };
            for _ in 0..rng.below(4) {
                if !b.is_empty() {
                    let at = rng.below(b.len() as u64) as usize;
                    b[at] = rng.next() as u8;
                }
            }
            if rng.below(4) == 0 {
                b.truncate(rng.below(b.len() as u64 + 1) as usize);
            }
            if let Ok(packets) = d.push(Kind::Video, i, &b) {
                assert!(packets.iter().all(|p| p.data.len() <= b.len()));
            }
            let _ = starts_key(&b);
        }
    }

    #[test]
    fn varints_round_trip_and_reject_overflow() {
        for v in [0, 1, 127, 128, 300, u64::MAX / 3, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v));
            assert_eq!(get_varint(&mut Reader::new(&b)), Ok(v));
        }
        for v in [0, -1, 1, i64::MIN, i64::MAX] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        assert!(get_varint(&mut Reader::new(&[0xff; 10])).is_err());
        assert!(get_varint(&mut Reader::new(&[0xff; 11])).is_err());
        assert!(get_varint(&mut Reader::new(&[0x80])).is_err());
    }
}
