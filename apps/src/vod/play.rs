//! Playing a file while it downloads: [`Playback`] hands players (the HTTP
//! file route, the stdout copy) the bytes of a [`PieceFile`] as its pieces
//! come, parking a reader until the piece under it is held, and tells the
//! downloader where the players read (the playhead, which [`super::net::fetch`]
//! starts its window from). Seeking is a read at another offset: the
//! playhead moves there and the pieces from there are fetched first.
//!
//! Everything lives on the download's loop (`Rc` inside).

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::time::Duration;

use libnet::sync::{channel, Sender};

use super::{FileIndex, PieceFile};
use crate::http::FileBody;

/// Readers parked at once (HTTP clients are bounded by the server; this
/// bounds the rest). A reader beyond it re-checks on a timer instead.
const MAX_WAITERS: usize = 256;
/// A parked reader re-checks this often even without a wake-up.
const RECHECK: Duration = Duration::from_millis(500);

/// The file being downloaded, as players see it.
pub struct Playback {
    playhead: Rc<Cell<u64>>,
    file: RefCell<Option<Rc<RefCell<PieceFile>>>>,
    failed: RefCell<Option<String>>,
    waiters: RefCell<Vec<Sender<()>>>,
}

impl Default for Playback {
    fn default() -> Playback {
        Playback {
            playhead: Rc::new(Cell::new(0)),
            file: RefCell::new(None),
            failed: RefCell::new(None),
            waiters: RefCell::new(Vec::new()),
        }
    }
}

impl std::fmt::Debug for Playback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Playback")
            .field("playhead", &self.playhead.get())
            .field("open", &self.file.borrow().is_some())
            .finish()
    }
}

impl Playback {
    /// Nothing to play yet: readers wait for [`Playback::open`].
    pub fn new() -> Rc<Playback> {
        Rc::new(Playback::default())
    }

    /// Where players read (a byte offset): give it to
    /// `FetchConfig::playhead`.
    pub fn playhead(&self) -> Rc<Cell<u64>> {
        self.playhead.clone()
    }

    /// The download's file is open (its index verified): readers may go.
    pub fn open(&self, file: Rc<RefCell<PieceFile>>) {
        *self.file.borrow_mut() = Some(file);
        self.stored();
    }

    /// `f` of the file's index, once open.
    fn with_index<T>(&self, f: impl FnOnce(&FileIndex) -> T) -> Option<T> {
        let file = self.file.borrow().clone()?;
        let file = file.borrow();
        Some(f(file.index()))
    }

    /// A piece was stored: parked readers look again.
    pub fn stored(&self) {
        for w in self.waiters.borrow_mut().drain(..) {
            let _ = w.try_send(());
        }
    }

    /// The download failed: readers waiting for missing bytes get `why`.
    pub fn fail(&self, why: String) {
        *self.failed.borrow_mut() = Some(why);
        self.stored();
    }

    /// The bytes at `offset` (up to `max`, within one piece) if held;
    /// `Ok(None)` if not yet.
    fn try_read(&self, offset: u64, max: usize) -> io::Result<Option<Vec<u8>>> {
        let Some(file) = self.file.borrow().clone() else {
            return Ok(None);
        };
        let f = file.borrow();
        let index = f.index();
        if offset >= index.size {
            return Ok(Some(Vec::new()));
        }
        let i = index.piece_of(offset);
        if !f.have(i) {
            return Ok(None);
        }
        let range = index.piece_range(i);
        let job = f.reader(i)?;
        drop(f);
        // Read and verified on the thread pool.
        let piece = libnet::spawn_blocking(job)?;
        // offset lies in the piece: both differences fit the piece.
        let from = (offset - range.start) as usize;
        let to = piece.len().min(from.saturating_add(max));
        Ok(Some(piece[from..to].to_vec()))
    }
}

impl FileBody for Playback {
    fn size(&self) -> u64 {
        self.with_index(|i| i.size).unwrap_or(0)
    }

    fn offset_at(&self, ms: u64) -> u64 {
        self.with_index(|i| i.offset_at(ms)).unwrap_or(0)
    }

    fn read_at(&self, offset: u64, max: usize) -> io::Result<Vec<u8>> {
        self.playhead.set(offset);
        loop {
            if let Some(bytes) = self.try_read(offset, max.max(1))? {
                return Ok(bytes);
            }
            if let Some(why) = &*self.failed.borrow() {
                return Err(io::Error::other(why.clone()));
            }
            let (tx, rx) = channel(1);
            {
                let mut w = self.waiters.borrow_mut();
                if w.len() < MAX_WAITERS {
                    w.push(tx);
                }
            }
            // Woken by `stored`, else a re-check (also after a seek by
            // another reader moved the playhead away).
            let _ = rx.recv_timeout(RECHECK);
            self.playhead.set(offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vod::FileIndex;

    fn temp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("p2p-play-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    #[test]
    fn a_reader_waits_for_its_piece_and_moves_the_playhead() {
        let d = temp("wait");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let index = FileIndex::from_reader("x.ts", &data[..], 1024, 0, Vec::new()).expect("index");
        let out = d.join("out.bin");
        let want = data[5000..5120].to_vec();
        let got = libnet::Runtime::builder()
            .loops(1)
            .build()
            .expect("runtime")
            .run(move || {
                let file = Rc::new(RefCell::new(
                    PieceFile::open_partial(&out, &index).expect("partial"),
                ));
                let p = Playback::new();
                let done = Rc::new(Cell::new(false));
                let reader = {
                    let (p, done) = (p.clone(), done.clone());
                    libnet::spawn(move || {
                        let r = p.read_at(5000, 100_000);
                        done.set(true);
                        r
                    })
                };
                libnet::time::sleep(Duration::from_millis(20));
                assert!(!done.get(), "not open yet: the reader waits");
                p.open(file.clone());
                libnet::time::sleep(Duration::from_millis(20));
                assert!(!done.get(), "open, but the piece is missing: it waits");
                assert_eq!(p.playhead().get(), 5000, "the playhead is where it reads");
                let r = index.piece_range(4);
                file.borrow_mut()
                    .write(4, &data[r.start as usize..r.end as usize])
                    .expect("piece");
                p.stored();
                let got = reader.join().expect("reader").expect("bytes");
                // The end of the file reads empty; a failed download errs.
                assert!(p.read_at(10_000, 10).expect("end").is_empty());
                p.fail("gone".into());
                assert!(p.read_at(0, 10).is_err());
                got
            })
            .expect("run");
        // From 5000 to the end of piece 4 (4096..5120).
        assert_eq!(got, want);
        drop(std::fs::remove_dir_all(&d));
    }
}
