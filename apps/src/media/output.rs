//! The client's output: packets remuxed to MPEG-TS for players (VLC, mpv,
//! ffplay, a browser through an HLS/TS relay).
//!
//! [`Remuxer::new`] takes the [`StreamInfo`] and a sink for the TS bytes;
//! [`Remuxer::push`] never blocks (a bounded queue; a full queue drops the
//! packet and counts it); [`Remuxer::finish`] writes the trailer and joins.
//!
//! Two threads: the muxer thread owns FFmpeg's MPEG-TS muxer, which writes
//! into an OS pipe (`pipe:FD`, no custom I/O and no `unsafe`); the reader
//! thread reads the pipe and calls the sink. A sink that blocks stalls only
//! these threads: the queue fills and `push` starts returning `false`.
//!
//! What reaches the muxer: nothing before the first video key packet (audio
//! before its pts too); per stream, strictly increasing dts (later or equal
//! ones are dropped and counted). Timestamps are rebased so the output
//! starts at 0. H.264/HEVC become Annex B with parameter sets at every key
//! packet and raw AAC gets ADTS headers (in Rust, see `nal`), so the muxer
//! needs no extradata.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use ffmpeg_next as ff;

use super::ff::{init, pair};
use super::nal::{AudioFix, VideoFix};
use super::{rescale, Kind, MediaError, Packet, StreamInfo, MICROS};

/// Packets the queue holds before `push` drops.
pub const QUEUE: usize = 2048;
/// Bytes the reader thread reads from the pipe at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Where the MPEG-TS bytes go: called on the remuxer's reader thread with
/// each chunk; returning false stops the output.
pub type Sink = Box<dyn FnMut(&[u8]) -> bool + Send>;

/// What the remuxer did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemuxStats {
    /// Video packets written to the muxer.
    pub video: u64,
    /// Audio packets written to the muxer.
    pub audio: u64,
    /// Packets refused by `push`: queue full, or output stopped.
    pub dropped: u64,
    /// Packets dropped before the first video key packet.
    pub before_key: u64,
    /// Packets dropped because their dts did not increase (or pts < dts),
    /// or that could not be framed for MPEG-TS.
    pub bad: u64,
    /// MPEG-TS bytes handed to the sink.
    pub bytes: u64,
}

/// Counters shared by the caller and the two threads.
#[derive(Default)]
struct Shared {
    video: AtomicU64,
    audio: AtomicU64,
    dropped: AtomicU64,
    before_key: AtomicU64,
    bad: AtomicU64,
    bytes: AtomicU64,
    /// Set when the sink returned false or the muxer failed.
    stopped: AtomicBool,
}

impl Shared {
    fn stats(&self) -> RemuxStats {
        RemuxStats {
            video: self.video.load(Relaxed),
            audio: self.audio.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            before_key: self.before_key.load(Relaxed),
            bad: self.bad.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
        }
    }
}

/// Packets in, MPEG-TS bytes out to a sink, on threads of its own.
/// Dropping it without [`Remuxer::finish`] lets the threads end on their
/// own (no trailer wait).
pub struct Remuxer {
    tx: Option<Sender<Packet>>,
    shared: Arc<Shared>,
    muxer: Option<JoinHandle<Result<(), MediaError>>>,
    reader: Option<JoinHandle<()>>,
}

/// One output stream.
struct Lane {
    index: usize,
    in_tb: (i32, i32),
    out_tb: (i32, i32),
    /// The rebase, in this stream's time base.
    base: i64,
    last_dts: Option<i64>,
}

impl Remuxer {
    /// Sets up the MPEG-TS muxer for `info`'s streams and starts the
    /// threads. `sink` gets the bytes (on the reader thread); when it
    /// returns false the output stops. Fails if `info` has no stream or a
    /// codec FFmpeg does not know.
    pub fn new(info: &StreamInfo, sink: Sink) -> Result<Remuxer, MediaError> {
        init();
        if info.video.is_none() && info.audio.is_none() {
            return Err(MediaError::mux(
                "setting up",
                "the stream info has no stream",
            ));
        }
        let shared = Arc::new(Shared::default());
        let (reader_end, writer) =
            std::io::pipe().map_err(|e| MediaError::mux("creating a pipe", e))?;
        let reader = spawn_reader(reader_end, sink, shared.clone())?;
        // Flush after every packet (live viewers); interleave at most 1 s
        // (a late audio channel must not hold video back for long).
        let opts = ff::Dictionary::from_iter([
            ("flush_packets", "1"),
            ("max_interleave_delta", "1000000"),
        ]);
        let url = format!("pipe:{}", writer.as_raw_fd());
        let out = match open_muxer(info, &url, "mpegts", opts) {
            Ok(out) => out,
            Err(e) => {
                drop(writer);
                let _ = reader.join();
                return Err(e);
            }
        };
        // Stream indexes and time bases as the muxer set them.
        let mut lanes: [Option<Lane>; 2] = [None, None];
        let mut index = 0;
        let time_bases = [info.time_base(Kind::Video), info.time_base(Kind::Audio)];
        for (slot, tb) in time_bases.into_iter().enumerate() {
            if let Some(in_tb) = tb {
                let out_tb = out
                    .stream(index)
                    .map_or((1, 90_000), |s| pair(s.time_base()));
                lanes[slot] = Some(Lane {
                    index,
                    in_tb,
                    out_tb,
                    base: 0,
                    last_dts: None,
                });
                index += 1;
            }
        }
        let video_fix = info
            .video
            .as_ref()
            .map(|v| VideoFix::new(&v.codec, &v.extradata));
        let audio_fix = info
            .audio
            .as_ref()
            .map(|a| AudioFix::new(&a.codec, &a.extradata));
        let (tx, rx) = bounded(QUEUE);
        let muxer = Muxer {
            out,
            writer,
            lanes,
            video_fix,
            audio_fix,
            has_video: info.video.is_some(),
            start_pts_us: None,
            shared: shared.clone(),
        };
        let spawn = std::thread::Builder::new()
            .name("ts-muxer".into())
            .spawn(move || muxer.run(rx))
            .map_err(|e| MediaError::mux("starting the muxer thread", e))?;
        Ok(Remuxer {
            tx: Some(tx),
            shared,
            muxer: Some(spawn),
            reader: Some(reader),
        })
    }

    /// Queues a packet (timestamps in its stream's time base). Never
    /// blocks; `false` (and counted in [`RemuxStats::dropped`]) when the
    /// queue is full or the output has stopped.
    pub fn push(&self, p: Packet) -> bool {
        let sent = !self.shared.stopped.load(Relaxed)
            && match &self.tx {
                Some(tx) => match tx.try_send(p) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
                },
                None => false,
            };
        if !sent {
            self.shared.dropped.fetch_add(1, Relaxed);
        }
        sent
    }

    /// Whether the output stopped (the sink returned false, or the muxer
    /// failed): later packets are refused.
    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.load(Relaxed)
    }

    /// The counters so far.
    pub fn stats(&self) -> RemuxStats {
        self.shared.stats()
    }

    /// Writes what is queued and the trailer, flushes the sink, joins the
    /// threads. The error is the muxer's, if it failed.
    pub fn finish(mut self) -> Result<RemuxStats, MediaError> {
        self.tx = None;
        let result = match self.muxer.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(MediaError::mux("muxing", "the muxer thread panicked")),
            None => Ok(()),
        };
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        result.map(|()| self.shared.stats())
    }
}

impl Drop for Remuxer {
    fn drop(&mut self) {
        // Closing the queue ends the muxer thread, which closes the pipe,
        // which ends the reader thread.
        self.tx = None;
    }
}

/// The muxer thread's state.
struct Muxer {
    out: ff::format::context::Output,
    /// The pipe's write end: `out` writes to its fd, so it lives as long.
    writer: std::io::PipeWriter,
    /// Video, audio.
    lanes: [Option<Lane>; 2],
    video_fix: Option<VideoFix>,
    audio_fix: Option<AudioFix>,
    has_video: bool,
    /// pts (µs) of the first packet written: the first video key packet.
    start_pts_us: Option<i64>,
    shared: Arc<Shared>,
}

impl Muxer {
    /// Writes packets until the queue closes or the output stops, then the
    /// trailer; closes the pipe.
    fn run(mut self, rx: Receiver<Packet>) -> Result<(), MediaError> {
        let mut result = Ok(());
        for p in rx.iter() {
            if self.shared.stopped.load(Relaxed) {
                break;
            }
            if let Err(e) = self.write(p) {
                log::warn!("remux: {e}");
                self.shared.stopped.store(true, Relaxed);
                result = Err(e);
                break;
            }
        }
        // Refuse further packets at once.
        drop(rx);
        let trailer = self
            .out
            .write_trailer()
            .map_err(|e| MediaError::mux("writing the trailer", e));
        // Flush FFmpeg's buffer into the pipe, then close the pipe: the
        // reader sees the end.
        drop(self.out);
        drop(self.writer);
        result.and(trailer)
    }

    /// Gates, rebases, checks, reframes and writes one packet.
    fn write(&mut self, p: Packet) -> Result<(), MediaError> {
        let slot = match p.kind {
            Kind::Video => 0,
            Kind::Audio => 1,
        };
        let Some(in_tb) = self.lanes[slot].as_ref().map(|l| l.in_tb) else {
            self.shared.bad.fetch_add(1, Relaxed);
            return Ok(());
        };
        let pts_us = rescale(p.pts, in_tb, MICROS);
        match self.start_pts_us {
            None => {
                if self.has_video && !(p.kind == Kind::Video && p.key) {
                    self.shared.before_key.fetch_add(1, Relaxed);
                    return Ok(());
                }
                // Output time 0 is this packet's decoding time.
                let base_us = rescale(p.dts, in_tb, MICROS).min(pts_us);
                for lane in self.lanes.iter_mut().flatten() {
                    lane.base = rescale(base_us, MICROS, lane.in_tb);
                }
                self.start_pts_us = Some(pts_us);
            }
            Some(start) => {
                if p.kind == Kind::Audio && pts_us < start {
                    self.shared.before_key.fetch_add(1, Relaxed);
                    return Ok(());
                }
            }
        }
        let Some(lane) = self.lanes[slot].as_mut() else {
            return Ok(());
        };
        let dts = rescale(p.dts.saturating_sub(lane.base), lane.in_tb, lane.out_tb);
        let pts = rescale(p.pts.saturating_sub(lane.base), lane.in_tb, lane.out_tb);
        if dts < 0 || pts < dts || lane.last_dts.is_some_and(|last| dts <= last) {
            self.shared.bad.fetch_add(1, Relaxed);
            return Ok(());
        }
        let data = match p.kind {
            Kind::Video => self
                .video_fix
                .as_ref()
                .and_then(|f| f.apply(&p.data, p.key)),
            Kind::Audio => self.audio_fix.as_ref().and_then(|f| f.apply(&p.data)),
        };
        let Some(data) = data else {
            self.shared.bad.fetch_add(1, Relaxed);
            return Ok(());
        };
        lane.last_dts = Some(dts);
        let mut pk = ff::Packet::copy(&data);
        pk.set_stream(lane.index);
        pk.set_pts(Some(pts));
        pk.set_dts(Some(dts));
        pk.set_duration(rescale(p.duration, lane.in_tb, lane.out_tb));
        if p.key {
            pk.set_flags(ff::packet::Flags::KEY);
        }
        match pk.write_interleaved(&mut self.out) {
            Ok(()) => {
                let n = match p.kind {
                    Kind::Video => &self.shared.video,
                    Kind::Audio => &self.shared.audio,
                };
                n.fetch_add(1, Relaxed);
                Ok(())
            }
            Err(ff::Error::InvalidData) => {
                log::debug!("remux: the muxer refused a {:?} packet", p.kind);
                self.shared.bad.fetch_add(1, Relaxed);
                Ok(())
            }
            Err(e) => Err(MediaError::mux("writing a packet", e)),
        }
    }
}

/// Opens FFmpeg's muxer `format` on `url`, adds the streams (video first)
/// and writes the header with `opts`.
pub(super) fn open_muxer(
    info: &StreamInfo,
    url: &str,
    format: &str,
    opts: ff::Dictionary,
) -> Result<ff::format::context::Output, MediaError> {
    for codec in [
        info.video.as_ref().map(|v| &v.codec),
        info.audio.as_ref().map(|a| &a.codec),
    ]
    .into_iter()
    .flatten()
    {
        // The binding panics on a NUL; decoded stream info never has one.
        if codec.contains('\0') || codec.is_empty() {
            return Err(MediaError::mux(
                "setting up",
                format!("bad codec name {codec:?}"),
            ));
        }
    }
    let mut out =
        ff::format::output_as(&url, format).map_err(|e| MediaError::mux("opening the muxer", e))?;
    if let Some(v) = &info.video {
        let codec = ff::decoder::find_by_name(&v.codec).ok_or_else(|| {
            MediaError::mux(
                "adding the video stream",
                format!("unknown codec {:?}", v.codec),
            )
        })?;
        let mut enc = ff::codec::Context::new_with_codec(codec)
            .encoder()
            .video()
            .map_err(|e| MediaError::mux("adding the video stream", e))?;
        enc.set_width(v.width);
        enc.set_height(v.height);
        let mut st = out
            .add_stream(None::<ff::Codec>)
            .map_err(|e| MediaError::mux("adding the video stream", e))?;
        st.set_parameters(ff::codec::Parameters::from(&enc));
        st.set_time_base((1, 90_000));
        if v.frame_rate.0 > 0 && v.frame_rate.1 > 0 {
            st.set_avg_frame_rate(v.frame_rate);
        }
    }
    if let Some(a) = &info.audio {
        let codec = ff::decoder::find_by_name(&a.codec).ok_or_else(|| {
            MediaError::mux(
                "adding the audio stream",
                format!("unknown codec {:?}", a.codec),
            )
        })?;
        let mut enc = ff::codec::Context::new_with_codec(codec)
            .encoder()
            .audio()
            .map_err(|e| MediaError::mux("adding the audio stream", e))?;
        enc.set_rate(a.sample_rate.min(i32::MAX as u32) as i32);
        enc.set_channel_layout(ff::ChannelLayout::default(i32::from(a.channels)));
        enc.set_channels(i32::from(a.channels));
        let mut st = out
            .add_stream(None::<ff::Codec>)
            .map_err(|e| MediaError::mux("adding the audio stream", e))?;
        st.set_parameters(ff::codec::Parameters::from(&enc));
        st.set_time_base((1, 90_000));
    }
    out.write_header_with(opts)
        .map_err(|e| MediaError::mux("writing the header", e))?;
    Ok(out)
}

/// Starts the thread that hands the pipe's bytes to the sink. After the
/// sink says stop, it still drains the pipe so the muxer never blocks.
fn spawn_reader(
    mut pipe: std::io::PipeReader,
    mut sink: Sink,
    shared: Arc<Shared>,
) -> Result<JoinHandle<()>, MediaError> {
    std::thread::Builder::new()
        .name("ts-sink".into())
        .spawn(move || {
            let mut buf = vec![0u8; READ_CHUNK];
            let mut open = true;
            loop {
                let n = match pipe.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::warn!("remux: reading the muxer's pipe: {e}");
                        shared.stopped.store(true, Relaxed);
                        return;
                    }
                };
                if open {
                    if sink(&buf[..n]) {
                        shared.bytes.fetch_add(n as u64, Relaxed);
                    } else {
                        open = false;
                        shared.stopped.store(true, Relaxed);
                    }
                }
            }
        })
        .map_err(|e| MediaError::mux("starting the sink thread", e))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::media::e2e::file_sink;
    use crate::media::ingest::tests::pattern;
    use crate::media::testutil::TempDir;
    use crate::media::{probe, Ingest};

    #[test]
    fn output_starts_at_a_key_frame_and_drops_bad_order() {
        let dir = TempDir::new("gate");
        let ts = dir.path().join("out.ts");
        let mut ing = Ingest::open(&pattern(160, 90, 25)).unwrap();
        ing.set_realtime(false);
        let remux = Remuxer::new(ing.info(), file_sink(&ts)).unwrap();
        let mut packets = Vec::new();
        while packets
            .iter()
            .filter(|p: &&Packet| p.kind == Kind::Video)
            .count()
            < 60
        {
            packets.push(ing.next().unwrap().unwrap());
        }
        // Join at frame 10: nothing plays before frame 25 (the next key).
        let first = packets
            .iter()
            .position(|p| p.kind == Kind::Video && p.pts == 10)
            .unwrap();
        let mut again = None;
        for p in &packets[first..] {
            if p.kind == Kind::Video && p.pts == 40 {
                again = Some(p.clone());
            }
            assert!(remux.push(p.clone()));
        }
        // A repeated video packet is refused.
        assert!(remux.push(again.unwrap()));
        let stats = remux.finish().unwrap();
        assert_eq!(stats.video, 35, "{stats:?}");
        assert_eq!(stats.bad, 1, "{stats:?}");
        assert!(stats.before_key >= 15 + 10, "{stats:?}");
        let r = probe::check(&ts).unwrap();
        assert_eq!((r.video_frames, r.decode_errors), (35, 0), "{r:?}");
        assert!(r.duration_secs < 1.5, "rebased to 0: {r:?}");
    }

    #[test]
    fn a_sink_that_stops_or_blocks_never_blocks_push() {
        let mut ing = Ingest::open(&pattern(160, 90, 25)).unwrap();
        ing.set_realtime(false);
        let info = ing.info().clone();
        let mut packets = Vec::new();
        for _ in 0..200 {
            packets.push(ing.next().unwrap().unwrap());
        }

        // A sink that refuses: the output stops, pushes are refused.
        let remux = Remuxer::new(&info, Box::new(|_| false)).unwrap();
        for p in &packets {
            remux.push(p.clone());
        }
        let t0 = Instant::now();
        while !remux.is_stopped() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(remux.is_stopped());
        assert!(!remux.push(packets[0].clone()));
        let stats = remux.finish().unwrap();
        assert_eq!(stats.bytes, 0);
        assert!(stats.dropped >= 1);

        // A sink that blocks until released: the queue fills, push stays fast.
        let (release, wait) = crossbeam_channel::bounded::<()>(0);
        let remux = Remuxer::new(
            &info,
            Box::new(move |_| {
                let _ = wait.recv();
                true
            }),
        )
        .unwrap();
        let t0 = Instant::now();
        let mut refused = 0;
        for i in 0..20 * QUEUE {
            let mut p = packets[i % packets.len()].clone();
            let round = (i / packets.len()) as i64;
            let span = if p.kind == Kind::Video {
                100
            } else {
                100 * 48_000 / 25
            };
            p.pts += round * span;
            p.dts += round * span;
            if !remux.push(p) {
                refused += 1;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert!(refused > 0);
        assert_eq!(remux.stats().dropped, refused);
        drop(release);
        let stats = remux.finish().unwrap();
        assert!(stats.video + stats.audio > 0, "{stats:?}");
    }
}
