//! A file on disk as pieces: what a seeder serves from and what a
//! downloader writes into, checked against a [`FileIndex`].
//!
//! - A seeder ([`PieceFile::open_complete`]) trusts the file after a size
//!   check and verifies each piece as it reads it: opening is instant for
//!   any size, and a file changed on disk later is never served (the read
//!   fails instead).
//! - A downloader ([`PieceFile::open_partial`]) writes into `PATH.part` and
//!   renames it to `PATH` when the last piece is in. The `.part` file is
//!   the whole resume state: at open every piece is checked (an all-zero
//!   piece, which is what a never-written hole reads as, against the hash
//!   of zeros, computed once; any other against its hash), so a piece cut
//!   short by a crash or corrupted on disk is simply fetched again. No
//!   sidecar, nothing to keep consistent; the price is one read of the
//!   `.part` file and one hash of what it holds at open.
//!
//! Pieces are written in place with positional IO; nothing is synced
//! until completion (a lost write is a piece that fails its hash at the
//! next open), then the file is synced and renamed.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::index::{sha256, FileIndex};

/// Why [`PieceFile::write`] refused a piece.
#[derive(Debug)]
pub enum PieceError {
    /// No piece has this number.
    OutOfRange(u32),
    /// The data is not as long as the piece.
    BadLength {
        /// The piece's length.
        expected: usize,
        /// The data's.
        got: usize,
    },
    /// The data does not match the piece's hash (nothing was written).
    BadHash,
    /// The disk failed.
    Io(io::Error),
}

impl fmt::Display for PieceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PieceError::OutOfRange(i) => write!(f, "no piece {i} in this file"),
            PieceError::BadLength { expected, got } => {
                write!(f, "piece of {got} bytes; this one has {expected}")
            }
            PieceError::BadHash => f.write_str("piece does not match its hash"),
            PieceError::Io(e) => write!(f, "piece file: {e}"),
        }
    }
}

impl std::error::Error for PieceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PieceError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for PieceError {
    fn from(e: io::Error) -> PieceError {
        PieceError::Io(e)
    }
}

/// One file's pieces on disk. See the module docs for what is verified
/// when.
pub struct PieceFile {
    /// The file's index (a copy).
    index: FileIndex,
    /// Where the complete file is (or will be).
    path: PathBuf,
    /// Where the data is now: `path`, or `path.part` while incomplete.
    data_path: PathBuf,
    /// The open data file.
    /// Shared with the jobs of [`PieceFile::reader`].
    file: Arc<File>,
    /// Pieces held: bit i is byte i / 8, bit i % 8 (least significant
    /// first), as the wire's buffer maps.
    have: Vec<u8>,
    /// How many bits of `have` are set.
    count: u32,
    /// Pieces `0..contiguous` are all held.
    contiguous: u32,
}

impl fmt::Debug for PieceFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PieceFile({}, {}/{} pieces)",
            self.data_path.display(),
            self.count,
            self.index.pieces()
        )
    }
}

impl PieceFile {
    /// A seeder's file: `path` must hold exactly `index.size` bytes
    /// (`InvalidData` otherwise). The content is not hashed here; every
    /// [`PieceFile::read`] verifies its piece.
    pub fn open_complete(path: &Path, index: &FileIndex) -> io::Result<PieceFile> {
        let file = Arc::new(File::open(path)?);
        let len = file.metadata()?.len();
        if len != index.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} has {len} bytes; the index says {}",
                    path.display(),
                    index.size
                ),
            ));
        }
        let n = index.pieces();
        let mut have = vec![0xff; bitmap_len(n)];
        clear_padding(&mut have, n);
        Ok(PieceFile {
            index: index.clone(),
            path: path.to_path_buf(),
            data_path: path.to_path_buf(),
            file,
            have,
            count: n,
            contiguous: n,
        })
    }

    /// A downloader's file, created or resumed.
    ///
    /// - `PATH.part` exists: resumed. Its length is set to the file's
    ///   size; every piece is checked, and those matching their hash are
    ///   held (the rest are fetched again and overwrite what is there).
    /// - Only `PATH` exists: it must be this file, every piece checked
    ///   (`InvalidData` otherwise: it is never overwritten); it is then
    ///   complete.
    /// - Neither: `PATH.part` is created.
    /// - Both: `AlreadyExists` (the rename would replace `PATH`).
    ///
    /// When every piece is held (an empty file, a complete `.part`), the
    /// `.part` is renamed to `PATH` before this returns.
    pub fn open_partial(path: &Path, index: &FileIndex) -> io::Result<PieceFile> {
        let part = part_path(path);
        if part.exists() && path.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "both {} and {} exist: remove one",
                    path.display(),
                    part.display()
                ),
            ));
        }
        if path.exists() {
            let mut f = PieceFile::open_complete(path, index)?;
            f.scan()?;
            if !f.complete() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} exists and is not this file ({} of {} pieces match)",
                        path.display(),
                        f.count,
                        index.pieces()
                    ),
                ));
            }
            return Ok(f);
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part)?;
        if file.metadata()?.len() != index.size {
            file.set_len(index.size)?;
        }
        let mut f = PieceFile {
            index: index.clone(),
            path: path.to_path_buf(),
            data_path: part,
            file: Arc::new(file),
            have: vec![0; bitmap_len(index.pieces())],
            count: 0,
            contiguous: 0,
        };
        f.scan()?;
        if f.complete() {
            f.finisher()?()?;
            f.finished();
        }
        Ok(f)
    }

    /// The index this file follows.
    pub fn index(&self) -> &FileIndex {
        &self.index
    }

    /// Where the data is now: `PATH.part` while downloading, `PATH` when
    /// complete. A player can read the first [`PieceFile::contiguous_bytes`]
    /// of it while the download goes on (the rename keeps the open file).
    pub fn data_path(&self) -> &Path {
        &self.data_path
    }

    /// Whether piece `i` is held.
    pub fn have(&self, i: u32) -> bool {
        i < self.index.pieces() && self.have[(i / 8) as usize] & (1 << (i % 8)) != 0
    }

    /// The pieces held as a bitmap: bit i in byte i / 8, bit i % 8 (least
    /// significant first, as the wire's buffer maps); `ceil(pieces / 8)`
    /// bytes, padding bits clear.
    pub fn bitmap(&self) -> Vec<u8> {
        self.have.clone()
    }

    /// How many pieces are held.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The pieces not held yet, in order.
    pub fn missing(&self) -> impl Iterator<Item = u32> + '_ {
        self.missing_in(0..self.index.pieces())
    }

    /// The pieces of `range` not held yet, in order. Held runs are skipped
    /// 64 and 8 pieces at a time, so a download that asks this on every
    /// event does not pay a bit per piece held.
    pub fn missing_in(&self, range: Range<u32>) -> impl Iterator<Item = u32> + '_ {
        missing_bits(&self.have, range.start..range.end.min(self.index.pieces()))
    }

    /// Whether every piece of `range` is held.
    pub fn holds(&self, range: Range<u32>) -> bool {
        self.missing_in(range).next().is_none()
    }

    /// Whether every piece is held.
    pub fn complete(&self) -> bool {
        self.count == self.index.pieces()
    }

    /// Piece `i`, read from disk and verified. `NotFound` if it is not
    /// held; `InvalidData` if the disk no longer holds what it should (the
    /// file was changed under us).
    pub fn read(&self, i: u32) -> io::Result<Vec<u8>> {
        self.reader(i)?()
    }

    /// [`PieceFile::read`] as a job for any thread (it holds its own handle
    /// on the file): `NotFound` at once if piece `i` is not held; the job
    /// reads and verifies it.
    pub fn reader(
        &self,
        i: u32,
    ) -> io::Result<impl FnOnce() -> io::Result<Vec<u8>> + Send + 'static> {
        if !self.have(i) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("piece {i} is not held"),
            ));
        }
        let file = self.file.clone();
        let (range, len) = (self.index.piece_range(i), self.index.piece_len(i));
        let hash = self.index.hashes[i as usize];
        let path = self.data_path.clone();
        Ok(move || {
            let mut buf = vec![0; len];
            file.read_exact_at(&mut buf, range.start)?;
            if sha256(&buf) != hash {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "piece {i} of {} does not match its hash: the file changed",
                        path.display()
                    ),
                ));
            }
            Ok(buf)
        })
    }

    /// Stores piece `i` if `data` is that piece (length and hash checked
    /// first: a bad piece is refused and nothing is written). A piece
    /// already held is not written again. The last piece completes the
    /// file: synced, then renamed from `PATH.part` to `PATH` (here, on the
    /// calling thread: see [`PieceFile::store`] to do that elsewhere).
    pub fn write(&mut self, i: u32, data: &[u8]) -> Result<(), PieceError> {
        if self.store(i, data)? {
            // Also retries a rename that failed before.
            self.finisher()?()?;
            self.finished();
        }
        Ok(())
    }

    /// [`PieceFile::write`] without the final sync and rename: returns
    /// whether the file is now complete but still `PATH.part` — then run
    /// [`PieceFile::finisher`]'s job (off the loop: syncing a large file
    /// takes long) and call [`PieceFile::finished`].
    pub fn store(&mut self, i: u32, data: &[u8]) -> Result<bool, PieceError> {
        if i >= self.index.pieces() {
            return Err(PieceError::OutOfRange(i));
        }
        let expected = self.index.piece_len(i);
        if data.len() != expected {
            return Err(PieceError::BadLength {
                expected,
                got: data.len(),
            });
        }
        if !self.index.verify_piece(i, data) {
            return Err(PieceError::BadHash);
        }
        if !self.have(i) {
            self.file
                .write_all_at(data, self.index.piece_range(i).start)?;
            self.mark(i);
        }
        Ok(self.complete() && self.data_path != self.path)
    }

    /// The job that completes the file — sync `PATH.part`, rename it to
    /// `PATH` — to run on any thread (it holds its own handle); then call
    /// [`PieceFile::finished`]. Reads keep working meanwhile and after
    /// (the open file survives the rename).
    pub fn finisher(&self) -> io::Result<impl FnOnce() -> io::Result<()> + Send + 'static> {
        let file = self.file.clone();
        let (from, to) = (self.data_path.clone(), self.path.clone());
        Ok(move || {
            file.sync_all()?;
            std::fs::rename(&from, &to)
        })
    }

    /// The finisher's job succeeded: the data is at `PATH` now.
    pub fn finished(&mut self) {
        self.data_path = self.path.clone();
    }

    /// Bytes from the start of the file held without a gap: what a player
    /// can read in order while the rest downloads.
    pub fn contiguous_bytes(&self) -> u64 {
        if self.contiguous == self.index.pieces() {
            self.index.size
        } else {
            self.index.piece_range(self.contiguous).start
        }
    }

    /// Marks piece `i` held.
    fn mark(&mut self, i: u32) {
        self.have[(i / 8) as usize] |= 1 << (i % 8);
        self.count += 1;
        while self.contiguous < self.index.pieces() && self.have(self.contiguous) {
            self.contiguous += 1;
        }
    }

    /// Rebuilds `have` by checking every piece on disk against its hash.
    /// A file of more than 64 KiB with no block on disk (a fresh sparse
    /// `.part`) reads as zeros throughout, so it is not read at all (small
    /// files may keep their data in the inode, with no block).
    fn scan(&mut self) -> io::Result<()> {
        let n = self.index.pieces();
        self.have.iter_mut().for_each(|b| *b = 0);
        self.count = 0;
        self.contiguous = 0;
        let holes_only = self.index.size > 64 * 1024 && self.file.metadata()?.blocks() == 0;
        let mut buf = vec![0; self.index.piece_size as usize];
        // Hash of an all-zero piece, by length (full pieces, the last one).
        let mut zero_hashes: Vec<(usize, [u8; 32])> = Vec::with_capacity(2);
        for i in 0..n {
            let len = self.index.piece_len(i);
            let piece = &mut buf[..len];
            if holes_only {
                piece.fill(0);
            } else {
                self.file
                    .read_exact_at(piece, self.index.piece_range(i).start)?;
            }
            // An OR over all bytes (no early exit) vectorises: much faster
            // than `all(..)`.
            let hash = if piece.iter().fold(0, |a, &b| a | b) == 0 {
                match zero_hashes.iter().find(|(l, _)| *l == len) {
                    Some(&(_, h)) => h,
                    None => {
                        let h = sha256(piece);
                        zero_hashes.push((len, h));
                        h
                    }
                }
            } else {
                sha256(piece)
            };
            if hash == self.index.hashes[i as usize] {
                self.mark(i);
            }
        }
        Ok(())
    }
}

/// `PATH.part`.
pub fn part_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".part");
    PathBuf::from(p)
}

fn bitmap_len(pieces: u32) -> usize {
    pieces.div_ceil(8) as usize
}

/// Clears the bits past the last piece in the last byte.
fn clear_padding(bits: &mut [u8], pieces: u32) {
    if !pieces.is_multiple_of(8) {
        if let Some(last) = bits.last_mut() {
            *last &= (1u8 << (pieces % 8)) - 1;
        }
    }
}

/// The clear bits of `range` in `bits` (bit i in byte i / 8, least
/// significant first), in order; `range` must lie within `bits`.
fn missing_bits(bits: &[u8], range: Range<u32>) -> impl Iterator<Item = u32> + '_ {
    let (mut i, end) = (range.start, range.end);
    std::iter::from_fn(move || {
        while i < end {
            let byte = (i / 8) as usize;
            if i % 64 == 0 && bits.get(byte..byte + 8).is_some_and(|w| w == [0xff; 8]) {
                i += 64;
            } else if i % 8 == 0 && bits[byte] == 0xff {
                i += 8;
            } else {
                let bit = i;
                i += 1;
                if bits[byte] & (1 << (bit % 8)) == 0 {
                    return Some(bit);
                }
            }
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::testutil::TempDir;
    use crate::vod::index::tests::Rng;

    const PIECE: usize = 1024;

    /// A file of `size` seeded random bytes at `dir/name`, and its index.
    fn source(dir: &Path, name: &str, size: usize) -> (PathBuf, Vec<u8>, FileIndex) {
        let data = Rng(size as u64 * 31 + 1).bytes(size);
        let path = dir.join(name);
        std::fs::write(&path, &data).unwrap();
        let index = FileIndex::build(name, &path, PIECE, 0, vec![]).unwrap();
        (path, data, index)
    }

    fn piece<'a>(data: &'a [u8], index: &FileIndex, i: u32) -> &'a [u8] {
        let r = index.piece_range(i);
        &data[r.start as usize..r.end as usize]
    }

    /// Every order of `0..n`, shuffled with `rng`.
    fn shuffled(n: u32, rng: &mut Rng) -> Vec<u32> {
        let mut v: Vec<u32> = (0..n).collect();
        for i in (1..v.len()).rev() {
            v.swap(i, rng.below(i + 1));
        }
        v
    }

    #[test]
    fn pieces_from_several_holders_in_random_order_rebuild_the_file() {
        let dir = TempDir::new("vod-holders");
        let (src, data, index) = source(dir.path(), "movie.ts", 37 * PIECE + 500);
        assert_eq!(index.pieces(), 38);
        // Two complete seeders (the publisher and a copy) and a peer that
        // is halfway through its own download.
        let copy = dir.path().join("copy.ts");
        std::fs::copy(&src, &copy).unwrap();
        let a = PieceFile::open_complete(&src, &index).unwrap();
        let b = PieceFile::open_complete(&copy, &index).unwrap();
        let mut c = PieceFile::open_partial(&dir.path().join("peer.ts"), &index).unwrap();
        for i in (0..index.pieces()).step_by(2) {
            c.write(i, &a.read(i).unwrap()).unwrap();
        }
        assert_eq!(c.count(), 19);
        assert_eq!(c.bitmap()[0], 0b0101_0101);
        assert_eq!(
            c.read(1).unwrap_err().kind(),
            io::ErrorKind::NotFound,
            "not held"
        );

        let out = dir.path().join("out.ts");
        let mut d = PieceFile::open_partial(&out, &index).unwrap();
        assert_eq!(d.data_path(), part_path(&out));
        assert_eq!((d.count(), d.contiguous_bytes()), (0, 0));
        let mut rng = Rng(5);
        let holders = [&a, &b, &c];
        for i in shuffled(index.pieces(), &mut rng) {
            let from: Vec<_> = holders.iter().filter(|h| h.have(i)).collect();
            let bytes = from[rng.below(from.len())].read(i).unwrap();
            d.write(i, &bytes).unwrap();
            assert!(d.have(i));
            // The contiguous prefix is exactly what is held from the start.
            let prefix = (0..index.pieces()).take_while(|&j| d.have(j)).count() as u32;
            let expect = if prefix == index.pieces() {
                index.size
            } else {
                index.piece_range(prefix).start
            };
            assert_eq!(d.contiguous_bytes(), expect);
        }
        assert!(d.complete());
        assert_eq!(d.missing().count(), 0);
        assert_eq!(d.data_path(), out);
        assert!(!part_path(&out).exists(), "renamed");
        assert_eq!(std::fs::read(&out).unwrap(), data, "byte-identical");
        assert_eq!(d.read(37).unwrap(), piece(&data, &index, 37));
        // A piece written again is accepted and changes nothing.
        d.write(3, piece(&data, &index, 3)).unwrap();
        assert_eq!(d.bitmap(), a.bitmap());
        assert_eq!(a.bitmap().len(), 5);
        assert_eq!(a.bitmap()[4], 0b0011_1111, "padding bits clear");
    }

    #[test]
    fn an_interrupted_download_resumes() {
        let dir = TempDir::new("vod-resume");
        let (src, data, index) = source(dir.path(), "a.mp4", 20 * PIECE);
        let seed = PieceFile::open_complete(&src, &index).unwrap();
        let out = dir.path().join("out.mp4");
        let order = shuffled(index.pieces(), &mut Rng(11));
        {
            let mut d = PieceFile::open_partial(&out, &index).unwrap();
            for &i in &order[..10] {
                d.write(i, &seed.read(i).unwrap()).unwrap();
            }
        } // Dropped halfway: the process stopped.
        let mut d = PieceFile::open_partial(&out, &index).unwrap();
        assert_eq!(d.count(), 10);
        for &i in &order[..10] {
            assert!(d.have(i), "piece {i} found on disk");
        }
        let missing: Vec<u32> = d.missing().collect();
        assert_eq!(missing.len(), 10);
        for i in missing {
            d.write(i, &seed.read(i).unwrap()).unwrap();
        }
        assert!(d.complete());
        assert_eq!(std::fs::read(&out).unwrap(), data);
        // Opening the finished download again finds it complete.
        let again = PieceFile::open_partial(&out, &index).unwrap();
        assert!(again.complete());
        assert_eq!(again.contiguous_bytes(), index.size);
    }

    #[test]
    fn a_corrupt_piece_on_disk_is_found_at_resume_and_fetched_again() {
        let dir = TempDir::new("vod-corrupt");
        let (src, data, index) = source(dir.path(), "b.ts", 8 * PIECE + 1);
        let seed = PieceFile::open_complete(&src, &index).unwrap();
        let out = dir.path().join("out.ts");
        {
            let mut d = PieceFile::open_partial(&out, &index).unwrap();
            for i in 0..8 {
                d.write(i, &seed.read(i).unwrap()).unwrap();
            }
            assert_eq!(d.contiguous_bytes(), 8 * PIECE as u64);
        }
        // One bit of piece 5 rots on disk; a crash left piece 6 half
        // written (zeros).
        let part = part_path(&out);
        let f = OpenOptions::new().write(true).open(&part).unwrap();
        f.write_all_at(&[data[5 * PIECE + 100] ^ 0x10], 5 * PIECE as u64 + 100)
            .unwrap();
        f.write_all_at(&[0; 512], 6 * PIECE as u64 + 512).unwrap();
        drop(f);
        let mut d = PieceFile::open_partial(&out, &index).unwrap();
        assert_eq!(d.missing().collect::<Vec<_>>(), vec![5, 6, 8]);
        assert_eq!(d.contiguous_bytes(), 5 * PIECE as u64);
        for i in [8, 6, 5] {
            d.write(i, &seed.read(i).unwrap()).unwrap();
        }
        assert!(d.complete());
        assert_eq!(std::fs::read(&out).unwrap(), data);
    }

    #[test]
    fn bad_pieces_are_refused_and_never_written() {
        let dir = TempDir::new("vod-bad");
        let (_, data, index) = source(dir.path(), "c.ts", 4 * PIECE);
        let out = dir.path().join("out.ts");
        let mut d = PieceFile::open_partial(&out, &index).unwrap();
        let mut bad = piece(&data, &index, 2).to_vec();
        bad[7] ^= 1;
        assert!(matches!(d.write(2, &bad), Err(PieceError::BadHash)));
        // Another piece's genuine bytes are not this piece.
        assert!(matches!(
            d.write(2, piece(&data, &index, 1)),
            Err(PieceError::BadHash)
        ));
        assert!(matches!(
            d.write(2, &bad[1..]),
            Err(PieceError::BadLength {
                expected: 1024,
                got: 1023
            })
        ));
        assert!(matches!(d.write(4, &bad), Err(PieceError::OutOfRange(4))));
        assert!(!d.have(2));
        assert_eq!(d.count(), 0);
        let on_disk = std::fs::read(part_path(&out)).unwrap();
        assert!(on_disk.iter().all(|&b| b == 0), "nothing written");
        d.write(2, piece(&data, &index, 2)).unwrap();
        assert!(d.have(2) && !d.complete());
    }

    #[test]
    fn a_seeder_checks_the_size_and_never_serves_changed_bytes() {
        let dir = TempDir::new("vod-seed");
        let (src, data, index) = source(dir.path(), "d.ts", 3 * PIECE + 10);
        let short = dir.path().join("short.ts");
        std::fs::write(&short, &data[..100]).unwrap();
        let e = PieceFile::open_complete(&short, &index).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let s = PieceFile::open_complete(&src, &index).unwrap();
        assert!(s.complete() && s.have(3) && !s.have(4));
        assert_eq!(s.read(1).unwrap(), piece(&data, &index, 1));
        // The file changes under the seeder.
        let f = OpenOptions::new().write(true).open(&src).unwrap();
        f.write_all_at(b"x", 1500).unwrap();
        assert_eq!(s.read(1).unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert!(s.read(0).is_ok());
        // A downloader refuses to take a different file at its path.
        let e = PieceFile::open_partial(&src, &index).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(src.exists(), "left alone");
        std::fs::write(part_path(&src), b"").unwrap();
        let e = PieceFile::open_partial(&src, &index).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
    }

    #[test]
    fn boundary_sizes_download() {
        let dir = TempDir::new("vod-sizes");
        for size in [0, 1, PIECE - 1, PIECE, PIECE + 1, 3 * PIECE] {
            let (src, data, index) = source(dir.path(), &format!("s{size}"), size);
            let seed = PieceFile::open_complete(&src, &index).unwrap();
            let out = dir.path().join(format!("o{size}"));
            let mut d = PieceFile::open_partial(&out, &index).unwrap();
            assert_eq!(d.complete(), size == 0, "size {size}");
            for i in 0..index.pieces() {
                assert_eq!(d.contiguous_bytes(), i as u64 * PIECE as u64);
                d.write(i, &seed.read(i).unwrap()).unwrap();
            }
            assert!(d.complete(), "size {size}");
            assert_eq!(d.contiguous_bytes(), size as u64);
            assert_eq!(d.bitmap().len(), index.pieces().div_ceil(8) as usize);
            assert_eq!(std::fs::read(&out).unwrap(), data, "size {size}");
            assert!(!part_path(&out).exists());
        }
    }

    #[test]
    fn missing_bits_skips_held_runs_and_agrees_with_a_bit_by_bit_scan() {
        let mut rng = Rng(11);
        for round in 0..2_000 {
            let pieces = 1 + rng.below(700) as u32;
            let mut bits = vec![0u8; pieces.div_ceil(8) as usize];
            // Mostly held, in runs, with holes: what a download looks like.
            let density = rng.below(4);
            for i in 0..pieces {
                let held = match density {
                    0 => rng.below(2) == 0,
                    1 => i < pieces / 2 || rng.below(50) != 0,
                    2 => rng.below(200) != 0,
                    _ => true,
                };
                if held {
                    bits[(i / 8) as usize] |= 1 << (i % 8);
                }
            }
            let a = rng.below(pieces as usize + 1) as u32;
            let b = a + rng.below((pieces - a) as usize + 1) as u32;
            let naive: Vec<u32> = (a..b)
                .filter(|&i| bits[(i / 8) as usize] & (1 << (i % 8)) == 0)
                .collect();
            let fast: Vec<u32> = missing_bits(&bits, a..b).collect();
            assert_eq!(fast, naive, "round {round}: {pieces} pieces, {a}..{b}");
        }
        // An empty or backwards range has nothing missing.
        assert_eq!(missing_bits(&[0], 5..5).count(), 0);
        let (from, to) = (6, 2);
        assert_eq!(missing_bits(&[0], from..to).count(), 0);
    }

    #[test]
    fn a_genuine_all_zero_piece_counts_at_resume() {
        let dir = TempDir::new("vod-zero");
        // Small: read and checked; large: a fresh sparse file is not read.
        for pieces in [3, 100] {
            let mut data = Rng(3).bytes(pieces * PIECE + 7);
            data[PIECE..2 * PIECE].fill(0);
            data[pieces * PIECE..].fill(0);
            let src = dir.path().join(format!("z{pieces}"));
            std::fs::write(&src, &data).unwrap();
            let index = FileIndex::build("z", &src, PIECE, 0, vec![]).unwrap();
            let out = dir.path().join(format!("out{pieces}"));
            let mut d = PieceFile::open_partial(&out, &index).unwrap();
            // A fresh (all zero) .part already holds the zero pieces.
            let missing: Vec<u32> = d.missing().collect();
            let mut expect: Vec<u32> = (0..pieces as u32).collect();
            expect.remove(1);
            assert_eq!(missing, expect);
            for i in missing {
                d.write(i, piece(&data, &index, i)).unwrap();
            }
            assert_eq!(std::fs::read(&out).unwrap(), data);
        }
    }
}
