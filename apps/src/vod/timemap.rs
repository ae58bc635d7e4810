//! What the publisher learns from FFmpeg about a media file before
//! indexing it: its duration and a time→offset map of key frames.
//!
//! The file is demuxed once (no decoding): for the first video stream (else
//! the first audio stream, every packet of which is a key) each key
//! packet's presentation time and byte position is a candidate, kept when
//! at least a second after the last point kept. At [`MAX_TIME_MAP`] points
//! every other one is dropped and the spacing doubles, so the map stays
//! bounded for any length. Files FFmpeg cannot read get no map, and
//! [`FileIndex::offset_at`] is then linear in the duration.

use std::io;
use std::path::Path;

use ff::media::Type;
use ffmpeg_next as ff;

use super::index::{FileIndex, MAX_TIME_MAP};
use crate::media::ff::{first_stream, path_arg};
use crate::media::{rescale, MediaError};

/// Least spacing of the map's points to begin with (milliseconds).
const FIRST_GAP_MS: u64 = 1000;
/// Read errors in a row after which the demuxing stops (the map so far is
/// kept).
const MAX_READ_ERRORS: u32 = 64;
/// FFmpeg's "no timestamp" (`AV_NOPTS_VALUE`).
const NOPTS: i64 = i64::MIN;

/// What [`probe`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Probe {
    /// The duration in milliseconds: the container's, else the end of the
    /// last packet of the mapped stream; 0 if unknown.
    pub duration_ms: u64,
    /// (milliseconds from the start, byte offset) of key packets, spaced
    /// ≥ 1 s, at most [`MAX_TIME_MAP`]; times strictly increasing, offsets
    /// non-decreasing.
    pub time_map: Vec<(u64, u64)>,
}

/// Reads `path`'s duration and key frame positions with FFmpeg (a pass
/// over the whole file, blocking: run it on a plain thread).
pub fn probe(path: &Path) -> Result<Probe, MediaError> {
    let shown = path.display().to_string();
    // The binding panics on a path that is not UTF-8 or holds a NUL.
    let arg = path_arg(path)?;
    let mut input = ff::format::input(&arg).map_err(|e| MediaError::Open {
        input: shown.clone(),
        reason: e.to_string(),
    })?;
    let stream = first_stream(&input, Type::Video)
        .or_else(|| first_stream(&input, Type::Audio))
        .ok_or(MediaError::NoStreams { input: shown })?;
    let (index, tb, start) = {
        let st = input.stream(stream).ok_or(MediaError::NoStreams {
            input: path.display().to_string(),
        })?;
        let tb = (st.time_base().numerator(), st.time_base().denominator());
        let start = Some(st.start_time()).filter(|&t| t != NOPTS);
        (st.index(), tb, start)
    };
    let valid_tb = tb.0 > 0 && tb.1 > 0;
    let mut origin = start;
    let mut map = Vec::new();
    let mut gap = FIRST_GAP_MS;
    let mut end_ms = 0u64;
    let mut errors = 0;
    let mut packet = ff::Packet::empty();
    loop {
        match packet.read(&mut input) {
            Ok(()) => errors = 0,
            Err(ff::Error::Eof) => break,
            Err(_) => {
                errors += 1;
                if errors >= MAX_READ_ERRORS {
                    break;
                }
                continue;
            }
        }
        if packet.stream() != index || !valid_tb {
            continue;
        }
        let Some(ts) = packet.pts().or(packet.dts()) else {
            continue;
        };
        let origin = *origin.get_or_insert(ts);
        let ms = |t: i64| rescale(t.saturating_sub(origin), tb, (1, 1000)).max(0) as u64;
        end_ms = end_ms.max(ms(ts.saturating_add(packet.duration().max(0))));
        let pos = packet.position();
        if !packet.is_key() || pos < 0 {
            continue;
        }
        let point = (ms(ts), pos as u64);
        add_point(&mut map, &mut gap, point);
    }
    let container = input.duration();
    let duration_ms = if container > 0 && container != NOPTS {
        rescale(container, (1, 1_000_000), (1, 1000)) as u64
    } else {
        end_ms
    };
    Ok(Probe {
        duration_ms,
        time_map: map,
    })
}

/// Indexes the file at `path` for sharing under `name`: [`probe`] for the
/// duration and time map (a file FFmpeg cannot read gets duration 0 and no
/// map), then [`FileIndex::build`]. Reads the file twice; blocking.
pub fn index_file(name: &str, path: &Path, piece_size: usize) -> io::Result<FileIndex> {
    let p = probe(path).unwrap_or_else(|e| {
        log::info!("{}: no time map ({e})", path.display());
        Probe::default()
    });
    FileIndex::build(name, path, piece_size, p.duration_ms, p.time_map)
}

/// Adds `p` to `map` if it is at least `gap` after the last point and not
/// before it in bytes; at [`MAX_TIME_MAP`] points, halves the map and
/// doubles `gap`.
fn add_point(map: &mut Vec<(u64, u64)>, gap: &mut u64, p: (u64, u64)) {
    let fits = map
        .last()
        .is_none_or(|&(t, off)| p.0 >= t.saturating_add(*gap) && p.1 >= off);
    if !fits {
        return;
    }
    map.push(p);
    if map.len() >= MAX_TIME_MAP {
        let mut i = 0;
        map.retain(|_| {
            i += 1;
            i % 2 == 1
        });
        *gap = gap.saturating_mul(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::ingest::tests::pattern;
    use crate::media::testutil::TempDir;
    use crate::media::{Ingest, Remuxer, MICROS};
    use crate::vod::pieces::PieceFile;
    use std::io::Write;

    /// `secs` of the test pattern (a key frame every second) as MPEG-TS.
    fn write_ts(path: &Path, secs: f64) {
        let mut ing = Ingest::open(&pattern(320, 180, 25)).unwrap();
        ing.set_realtime(false);
        let info = ing.info().clone();
        let mut f = std::fs::File::create(path).unwrap();
        let remux = Remuxer::new(&info, Box::new(move |b| f.write_all(b).is_ok())).unwrap();
        while let Some(p) = ing.next().unwrap() {
            let tb = info.time_base(p.kind).unwrap();
            if rescale(p.dts, tb, MICROS) >= (secs * 1e6) as i64 {
                break;
            }
            assert!(remux.push(p));
        }
        remux.finish().unwrap();
    }

    #[test]
    fn an_mpeg_ts_maps_its_key_frames() {
        let dir = TempDir::new("vod-map");
        let ts = dir.path().join("clip.ts");
        write_ts(&ts, 6.0);
        let p = probe(&ts).unwrap();
        assert!((5800..=6200).contains(&p.duration_ms), "{p:?}");
        let times: Vec<u64> = p.time_map.iter().map(|&(t, _)| t).collect();
        assert_eq!(times, vec![0, 1000, 2000, 3000, 4000, 5000], "{p:?}");
        let index = index_file("clip.ts", &ts, 16 * 1024).unwrap();
        assert_eq!(index.time_map, p.time_map);
        assert_eq!(index.duration_ms, p.duration_ms);
        let bytes = std::fs::read(&ts).unwrap();
        for &(_, off) in &index.time_map {
            assert_eq!(off % 188, 0, "a TS packet boundary");
            assert_eq!(bytes[off as usize], 0x47, "a sync byte");
        }
        // Seeking to 3.5 s starts at the key frame of 3 s, and playing the
        // file from there decodes without an error.
        let off = index.offset_at(3500);
        assert_eq!(off, index.time_map[3].1);
        assert!(off > 0 && off < index.size);
        let tail = dir.path().join("tail.ts");
        std::fs::write(&tail, &bytes[off as usize..]).unwrap();
        let r = crate::media::probe::check(&tail).unwrap();
        assert_eq!(r.decode_errors, 0, "{r:?}");
        assert!(r.video_frames >= 70, "{r:?}");
        // The pieces to fetch first for that seek.
        let store = PieceFile::open_complete(&ts, &index).unwrap();
        let first = index.piece_of(off);
        assert!(store.read(first).is_ok());
    }

    #[test]
    fn files_ffmpeg_cannot_read_get_a_linear_map() {
        let dir = TempDir::new("vod-nomap");
        let path = dir.path().join("notes.bin");
        std::fs::write(&path, vec![0x5a; 5000]).unwrap();
        assert!(probe(&path).is_err());
        let index = index_file("notes.bin", &path, 1024).unwrap();
        assert_eq!((index.duration_ms, index.time_map.len()), (0, 0));
        assert_eq!(index.offset_at(1000), 0);
        assert!(probe(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn the_map_stays_bounded_and_spaced() {
        let mut map = Vec::new();
        let mut gap = FIRST_GAP_MS;
        for s in 0..20_000u64 {
            add_point(&mut map, &mut gap, (s * 1000, s * 100));
            // Too close, or back in bytes: skipped.
            add_point(&mut map, &mut gap, (s * 1000 + 10, s * 100 + 1));
        }
        assert!(map.len() < MAX_TIME_MAP);
        assert!(map.len() > MAX_TIME_MAP / 4);
        assert_eq!(gap, 8000);
        assert!(map.windows(2).all(|w| w[1].0 >= w[0].0 + 1000));
        let ix =
            FileIndex::from_reader("x", &[1u8; 3_000_000][..], 1 << 20, 0, map.clone()).unwrap();
        assert_eq!(ix.time_map, map);
    }
}
