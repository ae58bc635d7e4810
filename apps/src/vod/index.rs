//! The index of a shared file: its name, size, piece size, duration, the
//! SHA-256 of every piece and a coarse time→offset map for seeking; and the
//! publisher's ed25519 signature over it ([`SignedIndex`]).
//!
//! Everything here is sans-IO except [`FileIndex::build`], which reads the
//! file once (through [`FileIndex::from_reader`]). Decoding is bounded and
//! never panics on garbage; the byte format is in `docs/vod.md`.

use std::fmt;
use std::io::{self, Read};
use std::ops::Range;
use std::path::Path;

use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::signed::{RoomKey, PUBLIC_LEN, SIG_LEN};

/// The default piece size (256 KiB). The index records the size used.
pub const PIECE_SIZE: usize = 256 * 1024;
/// Smallest piece size an index may use (1 KiB).
pub const MIN_PIECE_SIZE: u32 = 1024;
/// Largest piece size an index may use (16 MiB).
pub const MAX_PIECE_SIZE: u32 = 16 << 20;
/// Longest file name, in bytes of UTF-8.
pub const MAX_NAME: usize = 255;
/// Most pieces of a file (2^20: 256 GiB at the default piece size).
pub const MAX_PIECES: u32 = 1 << 20;
/// Most points of a time map.
pub const MAX_TIME_MAP: usize = 4096;
/// Largest encoded index: what [`FileIndex::decode`] can accept at most.
pub const MAX_INDEX_LEN: usize =
    1 + 1 + MAX_NAME + 8 + 4 + 8 + 4 + 32 * MAX_PIECES as usize + 2 + 16 * MAX_TIME_MAP;
/// Largest [`SignedIndex`] in bytes.
pub const MAX_SIGNED_LEN: usize = PUBLIC_LEN + MAX_INDEX_LEN + SIG_LEN;

/// Version byte of the index format.
const INDEX_VERSION: u8 = 1;
/// What the publisher signs, followed by the index id.
const SIGN_CONTEXT: &[u8] = b"p2p-live/vod-index/1";

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Why an index (or its signature) was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexError {
    /// The bytes end before the index does.
    Truncated,
    /// Bytes follow the end of the index.
    Trailing,
    /// An index format this version does not know.
    Version(u8),
    /// The name is empty, longer than [`MAX_NAME`], not UTF-8, or has a
    /// control character.
    Name,
    /// The piece size is outside [`MIN_PIECE_SIZE`]..=[`MAX_PIECE_SIZE`].
    PieceSize(u32),
    /// The number of hashes is not what the size and piece size need, or
    /// the file would need more than [`MAX_PIECES`] pieces.
    Pieces {
        /// Pieces the size needs.
        needed: u64,
        /// Hashes the index has.
        got: u64,
    },
    /// The time map has more than [`MAX_TIME_MAP`] points, times that do
    /// not strictly increase, offsets that decrease, or an offset at or
    /// past the end of the file.
    TimeMap,
    /// Longer than any index can be ([`MAX_INDEX_LEN`], or
    /// [`MAX_SIGNED_LEN`] signed).
    TooLong,
    /// The publisher's key is not a valid ed25519 key.
    BadKey,
    /// Signed by someone other than the expected publisher.
    WrongPublisher,
    /// The signature does not match the index.
    BadSignature,
}

impl fmt::Display for IndexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IndexError::Truncated => f.write_str("file index truncated"),
            IndexError::Trailing => f.write_str("bytes after the end of the file index"),
            IndexError::Version(v) => write!(f, "unknown file index version {v}"),
            IndexError::Name => write!(
                f,
                "bad file name: 1 to {MAX_NAME} bytes of UTF-8 without control characters"
            ),
            IndexError::PieceSize(s) => write!(
                f,
                "piece size {s} outside {MIN_PIECE_SIZE}..={MAX_PIECE_SIZE}"
            ),
            IndexError::Pieces { needed, got } => write!(
                f,
                "the file needs {needed} pieces (at most {MAX_PIECES}), the index has {got}"
            ),
            IndexError::TimeMap => f.write_str("bad time map"),
            IndexError::TooLong => f.write_str("longer than any file index can be"),
            IndexError::BadKey => f.write_str("the publisher key is not an ed25519 key"),
            IndexError::WrongPublisher => f.write_str("index signed by another publisher"),
            IndexError::BadSignature => f.write_str("the index signature does not match"),
        }
    }
}

impl std::error::Error for IndexError {}

impl From<IndexError> for io::Error {
    fn from(e: IndexError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, e)
    }
}

/// What names one file: its pieces' hashes and how to seek in it.
///
/// Fields are public for reading; an index made by [`FileIndex::build`] or
/// [`FileIndex::decode`] is valid ([`FileIndex::check`]). One changed by
/// hand may encode to bytes that `decode` refuses, and
/// [`SignedIndex::sign`] refuses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileIndex {
    /// The name it is shared under (not a path: never use it as one
    /// unchecked).
    pub name: String,
    /// Bytes in the file.
    pub size: u64,
    /// Bytes in every piece but the last (which may be shorter).
    pub piece_size: u32,
    /// The media duration in milliseconds; 0 if unknown.
    pub duration_ms: u64,
    /// SHA-256 of each piece, in order.
    pub hashes: Vec<[u8; 32]>,
    /// (milliseconds, byte offset) points: times strictly increasing,
    /// offsets non-decreasing and inside the file. For media FFmpeg can
    /// read, the positions of key frames about every second or more; empty
    /// means "linear from the duration" ([`FileIndex::offset_at`]).
    pub time_map: Vec<(u64, u64)>,
}

impl FileIndex {
    /// Hashes the file at `path` into an index (see [`FileIndex::from_reader`]).
    pub fn build(
        name: &str,
        path: &Path,
        piece_size: usize,
        duration_ms: u64,
        time_map: Vec<(u64, u64)>,
    ) -> io::Result<FileIndex> {
        let f = std::fs::File::open(path)?;
        FileIndex::from_reader(name, f, piece_size, duration_ms, time_map)
    }

    /// Hashes everything `r` yields into an index: one piece in memory at a
    /// time. `time_map` is sorted, points outside the file or going back
    /// in bytes are dropped, and it is thinned to [`MAX_TIME_MAP`] points.
    /// A bad name or piece size, or more than [`MAX_PIECES`] pieces, is an
    /// `InvalidInput` error carrying an [`IndexError`].
    pub fn from_reader(
        name: &str,
        mut r: impl Read,
        piece_size: usize,
        duration_ms: u64,
        time_map: Vec<(u64, u64)>,
    ) -> io::Result<FileIndex> {
        check_name(name.as_bytes())?;
        let piece_size = u32::try_from(piece_size)
            .ok()
            .filter(|s| (MIN_PIECE_SIZE..=MAX_PIECE_SIZE).contains(s))
            .ok_or(IndexError::PieceSize(
                u32::try_from(piece_size).unwrap_or(u32::MAX),
            ))?;
        let mut buf = vec![0u8; piece_size as usize];
        let mut hashes = Vec::new();
        let mut size = 0u64;
        loop {
            let n = read_full(&mut r, &mut buf)?;
            if n == 0 {
                break;
            }
            if hashes.len() == MAX_PIECES as usize {
                return Err(IndexError::Pieces {
                    needed: MAX_PIECES as u64 + 1,
                    got: MAX_PIECES as u64,
                }
                .into());
            }
            hashes.push(sha256(&buf[..n]));
            size += n as u64;
            if n < buf.len() {
                break;
            }
        }
        let index = FileIndex {
            name: name.to_string(),
            size,
            piece_size,
            duration_ms,
            hashes,
            time_map: normalize_time_map(time_map, size),
        };
        debug_assert_eq!(index.check(), Ok(()));
        Ok(index)
    }

    /// Whether the index is valid: what [`FileIndex::decode`] accepts.
    pub fn check(&self) -> Result<(), IndexError> {
        check_name(self.name.as_bytes())?;
        if !(MIN_PIECE_SIZE..=MAX_PIECE_SIZE).contains(&self.piece_size) {
            return Err(IndexError::PieceSize(self.piece_size));
        }
        let needed = self.size.div_ceil(u64::from(self.piece_size));
        let got = self.hashes.len() as u64;
        if needed != got || needed > u64::from(MAX_PIECES) {
            return Err(IndexError::Pieces { needed, got });
        }
        check_time_map(&self.time_map, self.size)
    }

    /// The index as bytes (big-endian; layout in `docs/vod.md`). Bounded:
    /// a name, hash list or time map over its limit is cut, so a valid
    /// index ([`FileIndex::check`]) always round-trips and anything else
    /// still encodes without a panic.
    pub fn encode(&self) -> Vec<u8> {
        let name = cut_name(&self.name);
        let hashes = &self.hashes[..self.hashes.len().min(MAX_PIECES as usize)];
        let map = &self.time_map[..self.time_map.len().min(MAX_TIME_MAP)];
        let mut b = Vec::with_capacity(40 + name.len() + 32 * hashes.len() + 16 * map.len());
        b.push(INDEX_VERSION);
        // Both bounded above: cut_name keeps ≤ 255 bytes, the slices
        // ≤ MAX_PIECES and MAX_TIME_MAP entries.
        b.push(name.len() as u8);
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(&self.size.to_be_bytes());
        b.extend_from_slice(&self.piece_size.to_be_bytes());
        b.extend_from_slice(&self.duration_ms.to_be_bytes());
        b.extend_from_slice(&(hashes.len() as u32).to_be_bytes());
        for h in hashes {
            b.extend_from_slice(h);
        }
        b.extend_from_slice(&(map.len() as u16).to_be_bytes());
        for &(ms, off) in map {
            b.extend_from_slice(&ms.to_be_bytes());
            b.extend_from_slice(&off.to_be_bytes());
        }
        b
    }

    /// An index from [`FileIndex::encode`]'s bytes; anything else (short,
    /// long, inconsistent, over a limit) is an error, never a panic.
    pub fn decode(b: &[u8]) -> Result<FileIndex, IndexError> {
        if b.len() > MAX_INDEX_LEN {
            return Err(IndexError::TooLong);
        }
        let mut r = Bytes(b);
        let version = r.u8()?;
        if version != INDEX_VERSION {
            return Err(IndexError::Version(version));
        }
        let name_len = r.u8()? as usize;
        let name = r.take(name_len)?;
        check_name(name)?;
        // check_name proved it UTF-8.
        let name = String::from_utf8_lossy(name).into_owned();
        let size = r.u64()?;
        let piece_size = r.u32()?;
        let duration_ms = r.u64()?;
        let count = r.u32()? as usize;
        // Checked before allocating: a count must fit in the bytes.
        if count > MAX_PIECES as usize {
            return Err(IndexError::Pieces {
                needed: size.div_ceil(u64::from(piece_size.max(1))),
                got: count as u64,
            });
        }
        let raw = r.take(count * 32)?;
        let hashes = raw
            .chunks_exact(32)
            .map(|c| c.try_into().expect("chunks of 32"))
            .collect();
        let points = r.u16()? as usize;
        if points > MAX_TIME_MAP {
            return Err(IndexError::TimeMap);
        }
        let raw = r.take(points * 16)?;
        let time_map = raw
            .chunks_exact(16)
            .map(|c| (be64(&c[..8]), be64(&c[8..])))
            .collect();
        if !r.0.is_empty() {
            return Err(IndexError::Trailing);
        }
        let index = FileIndex {
            name,
            size,
            piece_size,
            duration_ms,
            hashes,
            time_map,
        };
        index.check()?;
        Ok(index)
    }

    /// SHA-256 of the encoded index: names this exact file (content, name,
    /// piece size and time map).
    pub fn id(&self) -> [u8; 32] {
        sha256(&self.encode())
    }

    /// Number of pieces.
    pub fn pieces(&self) -> u32 {
        // At most MAX_PIECES in a valid index; saturate otherwise.
        u32::try_from(self.hashes.len()).unwrap_or(u32::MAX)
    }

    /// The bytes of piece `i` in the file; empty (`size..size`) past the
    /// last piece.
    pub fn piece_range(&self, i: u32) -> Range<u64> {
        let start = (u64::from(i) * u64::from(self.piece_size)).min(self.size);
        let end = (start + u64::from(self.piece_size)).min(self.size);
        start..end
    }

    /// Length of piece `i` (0 past the last piece).
    pub fn piece_len(&self, i: u32) -> usize {
        let r = self.piece_range(i);
        // At most piece_size, a u32.
        (r.end - r.start) as usize
    }

    /// The piece holding byte `offset`; the last piece for offsets at or
    /// past the end (0 for an empty file, which has none).
    pub fn piece_of(&self, offset: u64) -> u32 {
        let i = offset / u64::from(self.piece_size.max(1));
        u32::try_from(i)
            .unwrap_or(u32::MAX)
            .min(self.pieces().saturating_sub(1))
    }

    /// Where to start reading to play from `ms`: 0 for 0 (the file's own
    /// start, headers included), else the offset of the last time-map
    /// point at or before `ms` (0 before the first); with no time map,
    /// `ms / duration_ms` of the way through the file (0 when the duration
    /// is unknown, `size` at or past the end).
    pub fn offset_at(&self, ms: u64) -> u64 {
        if ms == 0 {
            return 0;
        }
        if self.time_map.is_empty() {
            if self.duration_ms == 0 {
                return 0;
            }
            let ms = ms.min(self.duration_ms);
            let off = u128::from(ms) * u128::from(self.size) / u128::from(self.duration_ms);
            // ≤ size, as ms ≤ duration_ms.
            return off as u64;
        }
        let n = self.time_map.partition_point(|&(t, _)| t <= ms);
        match n {
            0 => 0,
            n => self.time_map[n - 1].1.min(self.size),
        }
    }

    /// Where a span of play ending at `ms` ends: the offset of the first
    /// time-map point after `ms` (the key frame that follows), `size` if
    /// none; with no time map, linear as [`FileIndex::offset_at`] (`size`
    /// when the duration is unknown).
    pub fn offset_after(&self, ms: u64) -> u64 {
        if self.time_map.is_empty() {
            if self.duration_ms == 0 {
                return self.size;
            }
            return self.offset_at(ms.max(1));
        }
        let n = self.time_map.partition_point(|&(t, _)| t <= ms);
        self.time_map
            .get(n)
            .map_or(self.size, |&(_, o)| o.min(self.size))
    }

    /// The pieces to hold to play from `from_ms` to `to_ms`: from the key
    /// frame at or before `from_ms` to the one after `to_ms` (an empty
    /// range for an empty file).
    pub fn pieces_for(&self, from_ms: u64, to_ms: u64) -> std::ops::Range<u32> {
        if self.pieces() == 0 {
            return 0..0;
        }
        let first = self.piece_of(self.offset_at(from_ms));
        let last = self.piece_of(self.offset_after(to_ms).saturating_sub(1));
        first..last.max(first) + 1
    }

    /// Whether `data` is piece `i` of this file (its length and hash).
    pub fn verify_piece(&self, i: u32, data: &[u8]) -> bool {
        match self.hashes.get(i as usize) {
            Some(h) => data.len() == self.piece_len(i) && sha256(data) == *h,
            None => false,
        }
    }
}

/// An index signed by its publisher: what travels, verifiable by anyone
/// who knows (or is told, and trusts) the publisher's key.
///
/// Bytes: `publisher:32 index signature:64`, where the signature is
/// ed25519 over `"p2p-live/vod-index/1" ‖ id` and `id` is the SHA-256 of
/// the encoded index ([`FileIndex::id`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedIndex {
    index: FileIndex,
    id: [u8; 32],
    publisher: [u8; PUBLIC_LEN],
    bytes: Vec<u8>,
}

impl SignedIndex {
    /// Signs `index` with the publisher's key (a room key of
    /// [`crate::signed`]; the signing context is this module's own, so an
    /// index signature is never a valid fragment or metadata signature).
    /// Refuses an index that does not pass [`FileIndex::check`].
    pub fn sign(index: FileIndex, key: &RoomKey) -> Result<SignedIndex, IndexError> {
        index.check()?;
        let publisher = key.public().to_bytes();
        let encoded = index.encode();
        let id = sha256(&encoded);
        let sig = key.sign_in_context(&sign_message(&id));
        let mut bytes = Vec::with_capacity(PUBLIC_LEN + encoded.len() + SIG_LEN);
        bytes.extend_from_slice(&publisher);
        bytes.extend_from_slice(&encoded);
        bytes.extend_from_slice(&sig);
        Ok(SignedIndex {
            index,
            id,
            publisher,
            bytes,
        })
    }

    /// The signed index from its bytes, if the signature holds and, when
    /// `expected_publisher` is given, the signer is that key. Without it,
    /// any valid key is accepted: check [`SignedIndex::publisher`] then.
    pub fn from_bytes(
        b: &[u8],
        expected_publisher: Option<[u8; PUBLIC_LEN]>,
    ) -> Result<SignedIndex, IndexError> {
        if b.len() > MAX_SIGNED_LEN {
            return Err(IndexError::TooLong);
        }
        if b.len() < PUBLIC_LEN + SIG_LEN {
            return Err(IndexError::Truncated);
        }
        let (publisher, rest) = b.split_at(PUBLIC_LEN);
        let (encoded, sig) = rest.split_at(rest.len() - SIG_LEN);
        let publisher: [u8; PUBLIC_LEN] = publisher.try_into().expect("split at PUBLIC_LEN");
        if expected_publisher.is_some_and(|p| p != publisher) {
            return Err(IndexError::WrongPublisher);
        }
        let key = VerifyingKey::from_bytes(&publisher).map_err(|_| IndexError::BadKey)?;
        let sig = Signature::from_bytes(sig.try_into().expect("split at SIG_LEN"));
        let id = sha256(encoded);
        key.verify_strict(&sign_message(&id), &sig)
            .map_err(|_| IndexError::BadSignature)?;
        let index = FileIndex::decode(encoded)?;
        Ok(SignedIndex {
            index,
            id,
            publisher,
            bytes: b.to_vec(),
        })
    }

    /// The bytes to send or store.
    pub fn to_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The index.
    pub fn index(&self) -> &FileIndex {
        &self.index
    }

    /// The index, without the signature.
    pub fn into_index(self) -> FileIndex {
        self.index
    }

    /// The index's id ([`FileIndex::id`]).
    pub fn id(&self) -> [u8; 32] {
        self.id
    }

    /// The publisher's public key (as [`crate::signed::RoomPublic::to_bytes`]).
    pub fn publisher(&self) -> [u8; PUBLIC_LEN] {
        self.publisher
    }
}

fn sign_message(id: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGN_CONTEXT.len() + 32);
    m.extend_from_slice(SIGN_CONTEXT);
    m.extend_from_slice(id);
    m
}

fn check_name(name: &[u8]) -> Result<(), IndexError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && std::str::from_utf8(name).is_ok_and(|s| !s.chars().any(char::is_control));
    if ok {
        Ok(())
    } else {
        Err(IndexError::Name)
    }
}

/// `name` cut to at most [`MAX_NAME`] bytes on a character boundary.
fn cut_name(name: &str) -> &str {
    let mut end = name.len().min(MAX_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

fn check_time_map(map: &[(u64, u64)], size: u64) -> Result<(), IndexError> {
    if map.len() > MAX_TIME_MAP {
        return Err(IndexError::TimeMap);
    }
    let in_file = map.iter().all(|&(_, off)| off < size);
    let ordered = map.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
    if in_file && ordered {
        Ok(())
    } else {
        Err(IndexError::TimeMap)
    }
}

/// `map` made valid for a file of `size` bytes: sorted by time, one point
/// per time, points outside the file or going back in bytes dropped, then
/// thinned evenly to at most [`MAX_TIME_MAP`] points.
fn normalize_time_map(mut map: Vec<(u64, u64)>, size: u64) -> Vec<(u64, u64)> {
    map.retain(|&(_, off)| off < size);
    map.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(map.len());
    for p in map {
        match out.last() {
            Some(&(t, off)) if p.0 == t || p.1 < off => {}
            _ => out.push(p),
        }
    }
    if out.len() > MAX_TIME_MAP {
        let n = out.len();
        out = (0..MAX_TIME_MAP)
            .map(|i| out[i * n / MAX_TIME_MAP])
            .collect();
    }
    out
}

/// Reads until `buf` is full or the input ends; the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b.try_into().expect("8 bytes"))
}

/// A cursor over untrusted bytes.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], IndexError> {
        if n > self.0.len() {
            return Err(IndexError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, IndexError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, IndexError> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, IndexError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, IndexError> {
        Ok(be64(self.take(8)?))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A seeded xorshift: deterministic test data and orders.
    pub(crate) struct Rng(pub(crate) u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    fn sample(size: usize, piece: usize) -> (Vec<u8>, FileIndex) {
        let data = Rng(size as u64 + 7).bytes(size);
        let map = vec![(0, 0), (2000, size as u64 / 3), (4000, size as u64 / 2)];
        let index = FileIndex::from_reader("clip.ts", &data[..], piece, 6000, map).unwrap();
        (data, index)
    }

    #[test]
    fn an_index_round_trips_and_names_the_file() {
        let (_, index) = sample(10_000, 1024);
        assert_eq!(index.pieces(), 10);
        assert_eq!(index.size, 10_000);
        assert_eq!(index.check(), Ok(()));
        let b = index.encode();
        assert_eq!(FileIndex::decode(&b), Ok(index.clone()));
        assert_eq!(FileIndex::decode(&b).unwrap().id(), index.id());
        let mut other = index.clone();
        other.name = "clip2.ts".into();
        assert_ne!(other.id(), index.id());
    }

    #[test]
    fn garbage_indexes_are_refused_without_a_panic() {
        let (_, index) = sample(5000, 1024);
        let good = index.encode();
        for n in 0..good.len() {
            assert!(FileIndex::decode(&good[..n]).is_err(), "prefix {n}");
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(FileIndex::decode(&long), Err(IndexError::Trailing));
        let mut b = good.clone();
        b[0] = 2;
        assert_eq!(FileIndex::decode(&b), Err(IndexError::Version(2)));
        // Every single bit flip either fails or still yields a valid index.
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut b = good.clone();
                b[i] ^= 1 << bit;
                if let Ok(ix) = FileIndex::decode(&b) {
                    assert_eq!(ix.check(), Ok(()));
                }
            }
        }
        let mut rng = Rng(99);
        for n in 0..2000 {
            let _ = FileIndex::decode(&rng.bytes(n % 300));
        }
        // A huge hash count is refused before anything is allocated.
        let mut b = vec![INDEX_VERSION, 1, b'x'];
        b.extend_from_slice(&u64::MAX.to_be_bytes());
        b.extend_from_slice(&MIN_PIECE_SIZE.to_be_bytes());
        b.extend_from_slice(&0u64.to_be_bytes());
        b.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            FileIndex::decode(&b),
            Err(IndexError::Pieces { .. })
        ));
    }

    #[test]
    fn inconsistent_indexes_fail_the_check() {
        let (_, index) = sample(5000, 1024);
        let mut i = index.clone();
        i.hashes.pop();
        assert!(matches!(i.check(), Err(IndexError::Pieces { .. })));
        assert!(FileIndex::decode(&i.encode()).is_err());
        let mut i = index.clone();
        i.piece_size = 10;
        assert_eq!(i.check(), Err(IndexError::PieceSize(10)));
        let mut i = index.clone();
        i.name = String::new();
        assert_eq!(i.check(), Err(IndexError::Name));
        i.name = "a\nb".into();
        assert_eq!(i.check(), Err(IndexError::Name));
        i.name = "é".repeat(200);
        assert_eq!(i.check(), Err(IndexError::Name));
        // encode cuts it on a character boundary, without a panic.
        assert!(FileIndex::decode(&i.encode()).is_ok());
        let mut i = index.clone();
        i.time_map = vec![(1, 0), (1, 5)];
        assert_eq!(i.check(), Err(IndexError::TimeMap));
        i.time_map = vec![(1, 7), (2, 5)];
        assert_eq!(i.check(), Err(IndexError::TimeMap));
        i.time_map = vec![(1, 5000)];
        assert_eq!(i.check(), Err(IndexError::TimeMap));
        assert!(FileIndex::from_reader("", &[][..], 1024, 0, vec![]).is_err());
        assert!(FileIndex::from_reader("x", &[][..], 100, 0, vec![]).is_err());
        assert!(FileIndex::from_reader("x", &[][..], 1 << 30, 0, vec![]).is_err());
    }

    #[test]
    fn build_makes_any_time_map_valid_and_bounded() {
        let data = vec![1u8; 4096];
        let map = vec![
            (3000, 900),
            (1000, 100),
            (1000, 50),
            (2500, 60),
            (2000, 80),
            (5000, 4096),
        ];
        let ix = FileIndex::from_reader("f", &data[..], 1024, 0, map).unwrap();
        // Sorted; one point per time (the lower offset); 2500→60 goes back
        // in bytes; 4096 is past the end.
        assert_eq!(ix.time_map, vec![(1000, 50), (2000, 80), (3000, 900)]);
        let map = (0..10_000u64).map(|i| (i * 10, i / 4)).collect();
        let ix = FileIndex::from_reader("f", &data[..], 1024, 0, map).unwrap();
        assert_eq!(ix.time_map.len(), MAX_TIME_MAP);
        assert_eq!(ix.check(), Ok(()));
        assert_eq!(ix.time_map[0], (0, 0));
    }

    #[test]
    fn pieces_verify_against_their_hash() {
        let (data, index) = sample(10_000, 1024);
        for i in 0..index.pieces() {
            let r = index.piece_range(i);
            let piece = &data[r.start as usize..r.end as usize];
            assert!(index.verify_piece(i, piece), "piece {i}");
            assert!(!index.verify_piece(i, &piece[1..]), "short piece {i}");
            let mut bad = piece.to_vec();
            bad[0] ^= 0x80;
            assert!(!index.verify_piece(i, &bad), "bad piece {i}");
        }
        assert_eq!(index.piece_range(9), 9216..10_000);
        assert_eq!(index.piece_len(9), 784);
        assert!(!index.verify_piece(0, &data[1024..2048]));
        assert!(!index.verify_piece(10, &[]));
        assert_eq!(index.piece_range(10), 10_000..10_000);
        assert_eq!(index.piece_of(0), 0);
        assert_eq!(index.piece_of(1024), 1);
        assert_eq!(index.piece_of(u64::MAX), 9);
    }

    #[test]
    fn boundary_sizes() {
        let empty = FileIndex::from_reader("e", &[][..], 1024, 0, vec![(0, 0)]).unwrap();
        assert_eq!((empty.size, empty.pieces()), (0, 0));
        assert!(empty.time_map.is_empty(), "no offset inside an empty file");
        assert_eq!(FileIndex::decode(&empty.encode()), Ok(empty.clone()));
        assert_eq!(empty.offset_at(5), 0);
        assert_eq!(empty.piece_of(0), 0);
        let one = FileIndex::from_reader("o", &[42][..], 1024, 0, vec![]).unwrap();
        assert_eq!((one.size, one.pieces(), one.piece_len(0)), (1, 1, 1));
        assert!(one.verify_piece(0, &[42]));
        let exact = FileIndex::from_reader("x", &[7u8; 3072][..], 1024, 0, vec![]).unwrap();
        assert_eq!(exact.pieces(), 3);
        assert_eq!(exact.piece_range(2), 2048..3072);
        assert_eq!(FileIndex::decode(&exact.encode()), Ok(exact));
    }

    #[test]
    fn offset_at_uses_the_map_or_the_duration() {
        let (_, mut index) = sample(9000, 1024);
        assert_eq!(index.time_map, vec![(0, 0), (2000, 3000), (4000, 4500)]);
        assert_eq!(index.offset_at(0), 0);
        assert_eq!(index.offset_at(1999), 0);
        assert_eq!(index.offset_at(2000), 3000);
        assert_eq!(index.offset_at(3999), 3000);
        assert_eq!(index.offset_at(u64::MAX), 4500);
        index.time_map = vec![(500, 100)];
        assert_eq!(index.offset_at(499), 0);
        index.time_map.clear();
        assert_eq!(index.offset_at(3000), 4500);
        assert_eq!(index.offset_at(6000), 9000);
        assert_eq!(index.offset_at(u64::MAX), 9000);
        index.duration_ms = 0;
        assert_eq!(index.offset_at(3000), 0);
    }

    #[test]
    fn a_span_of_play_covers_its_key_frames() {
        let (_, mut index) = sample(9000, 1024);
        // Points (0, 0), (2000, 3000), (4000, 4500); pieces of 1024 bytes.
        assert_eq!(index.offset_after(0), 3000);
        assert_eq!(index.offset_after(2000), 4500);
        assert_eq!(index.offset_after(4000), 9000);
        // 0–2.5 s: bytes 0..4500, pieces 0..=4.
        assert_eq!(index.pieces_for(0, 2500), 0..5);
        // 2–3 s: 3000..4500, pieces 2..=4; 4 s to the end: 4500..9000.
        assert_eq!(index.pieces_for(2000, 3000), 2..5);
        assert_eq!(index.pieces_for(4000, u64::MAX), 4..9);
        // Backwards spans hold at least the first piece.
        assert_eq!(index.pieces_for(4000, 0), 4..5);
        index.time_map.clear();
        // Linear: 6 s over 9000 bytes; 5 s ends at byte 7500.
        assert_eq!(index.pieces_for(0, 5000), 0..8);
        index.duration_ms = 0;
        assert_eq!(index.pieces_for(0, 1), 0..9);
        let empty = FileIndex::from_reader("e", &[][..], 1024, 0, vec![]).unwrap();
        assert_eq!(empty.pieces_for(0, 10), 0..0);
    }

    #[test]
    fn signatures_hold_only_for_the_publisher_and_the_index() {
        let key = RoomKey::generate().unwrap();
        let publisher = key.public().to_bytes();
        let (_, index) = sample(5000, 1024);
        let signed = SignedIndex::sign(index.clone(), &key).unwrap();
        assert_eq!(signed.publisher(), publisher);
        assert_eq!(signed.id(), index.id());
        let b = signed.to_bytes();
        assert_eq!(b.len(), 32 + index.encode().len() + 64);
        let back = SignedIndex::from_bytes(b, Some(publisher)).unwrap();
        assert_eq!(back, signed);
        assert_eq!(back.index(), &index);
        assert_eq!(SignedIndex::from_bytes(b, None).unwrap(), signed);

        let other = RoomKey::generate().unwrap().public().to_bytes();
        assert_eq!(
            SignedIndex::from_bytes(b, Some(other)),
            Err(IndexError::WrongPublisher)
        );
        // Every tampered byte is caught (the key, the index or the
        // signature).
        for i in 0..b.len() {
            let mut t = b.to_vec();
            t[i] ^= 0x01;
            assert!(SignedIndex::from_bytes(&t, None).is_err(), "byte {i}");
        }
        // Someone else re-signing the same index is not the publisher.
        let forged = SignedIndex::sign(index.clone(), &RoomKey::generate().unwrap()).unwrap();
        assert!(SignedIndex::from_bytes(forged.to_bytes(), None).is_ok());
        assert_eq!(
            SignedIndex::from_bytes(forged.to_bytes(), Some(publisher)),
            Err(IndexError::WrongPublisher)
        );
        assert_eq!(
            SignedIndex::from_bytes(&b[..95], None),
            Err(IndexError::Truncated)
        );
        let mut bad = index.clone();
        bad.hashes.clear();
        assert!(SignedIndex::sign(bad, &key).is_err());
    }
}
