//! Files on demand through the swarm: a publisher shares a media file under
//! a name; downloaders fetch its pieces from several holders at once, check
//! every piece against the publisher's signed index, and can play while
//! downloading.
//!
//! ```text
//!  publisher: timemap::index_file(name, path) ─FileIndex─▶ SignedIndex::sign(index, key) ─bytes─▶ peers
//!             PieceFile::open_complete(path, index) ─read(i)─▶ piece i to whoever asks
//!  downloader: bytes ─▶ SignedIndex::from_bytes(b, Some(publisher)) ─▶ PieceFile::open_partial(path, index)
//!              piece i from any holder ─▶ PieceFile::write(i, data) (hash checked) ─▶ … ─▶ PATH complete
//!  seeking:    FileIndex::offset_at(ms) ─▶ piece_of(offset): the pieces to ask for first
//! ```
//!
//! - [`index`]: [`FileIndex`] (the pieces' hashes, size, duration, time
//!   map; its byte format) and [`SignedIndex`]. Sans-IO but for
//!   `FileIndex::build`, which hashes a file.
//! - [`net`]: the transfer over RUDP: [`net::Seeder`] serves indexes and
//!   pieces (with an upload cap), [`net::fetch`] downloads one file from
//!   many holders at once in playback order.
//! - [`play`]: [`play::Playback`], the bytes of a file being downloaded
//!   for players (HTTP, stdout), parking readers until their piece comes
//!   and moving the download's playhead where they read.
//! - [`pieces`]: [`PieceFile`], the disk-backed piece store of one file
//!   (seeder and downloader; resume from the `.part` file).
//! - [`timemap`]: duration and key frame positions from FFmpeg.
//! - [`program`]: the `vod` program's work (share, list, fetch and play),
//!   also run by `client --file`.
//!
//! The byte formats, the resume rules and the transfer are in `docs/vod.md`.

pub mod index;
pub mod net;
pub mod pieces;
pub mod play;
pub mod program;
pub mod timemap;

pub use index::{FileIndex, IndexError, SignedIndex, PIECE_SIZE};
pub use pieces::{PieceError, PieceFile};
pub use timemap::{index_file, probe, Probe};
