//! The source's input: a generated test pattern, a file, or a live URL, as
//! a sequence of [`Packet`]s with the stream's [`StreamInfo`].
//!
//! Open with [`Ingest::open`], read [`Ingest::info`] once, then call
//! [`Ingest::next`] in a loop on a plain thread (it blocks: it reads, encodes
//! and, for the test pattern and files, sleeps so that packets come out at
//! their media time). Packets of both streams come out in decoding order,
//! each stream's timestamps in its own time base from the info.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ff::media::Type;
use ffmpeg_next as ff;

use super::ff::{c_arg, extradata, first_stream, init, is_again, pair, path_arg};
use super::transcode::{
    aac_encoder, encode, h264_encoder, Transcoder, AAC_CHANNELS, AAC_RATE, TS_AUDIO, TS_VIDEO,
};
use super::{nal, rescale, AudioParams, Kind, MediaError, Packet, StreamInfo, VideoParams, MICROS};

/// What to ingest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A generated test card (FFmpeg's `testsrc2`, H.264 by libx264) and a
    /// 440 Hz tone (AAC, 48 kHz stereo, 128 kbit/s). Needs no file.
    TestPattern {
        /// Width in pixels (even).
        width: u32,
        /// Height in pixels (even).
        height: u32,
        /// Frames per second; a key frame every second.
        fps: u32,
        /// Video bit rate in kbit/s.
        video_kbps: u32,
    },
    /// A media file: its first video and first audio stream, passed
    /// through (re-encoded to H.264/AAC if MPEG-TS cannot carry them).
    File {
        /// The file.
        path: PathBuf,
        /// Start again at the end, timestamps still increasing.
        looped: bool,
    },
    /// A live input FFmpeg opens (not paced: it is live already); streams
    /// as for files.
    Url {
        /// E.g. `/dev/video0`, `rtmp://0.0.0.0:1935/live/x` (listens),
        /// `udp://0.0.0.0:5000`, `srt://0.0.0.0:9000?mode=listener`.
        url: String,
        /// A device format to force, e.g. `v4l2`, `alsa`, `pulse`,
        /// `x11grab`, `lavfi`; `None` to let FFmpeg probe.
        format: Option<String>,
    },
}

impl Input {
    /// How errors and logs name the input.
    pub fn describe(&self) -> String {
        match self {
            Input::TestPattern {
                width,
                height,
                fps,
                video_kbps,
            } => format!("test pattern {width}x{height} {fps} fps {video_kbps} kbit/s"),
            Input::File { path, .. } => path.display().to_string(),
            Input::Url { url, .. } => url.clone(),
        }
    }
}

/// The source's input, opened. `Send`: run it on its own thread.
pub struct Ingest {
    name: String,
    info: StreamInfo,
    source: Source,
    realtime: bool,
    pacer: Pacer,
    queue: VecDeque<Packet>,
}

enum Source {
    Pattern(Box<Pattern>),
    Demux(Box<Demux>),
}

impl Ingest {
    /// Opens the input and learns its streams. For the test pattern this
    /// sets up the encoders and encodes the first frame (its parameter sets
    /// become the video extradata).
    pub fn open(input: &Input) -> Result<Ingest, MediaError> {
        init();
        let name = input.describe();
        let (source, info, queue) = match input {
            Input::TestPattern {
                width,
                height,
                fps,
                video_kbps,
            } => {
                let mut pattern = Pattern::open(&name, *width, *height, *fps, *video_kbps)?;
                let mut queue = VecDeque::new();
                // Encode until the first video packet to learn its SPS/PPS.
                while !queue.iter().any(|p: &Packet| p.kind == Kind::Video) {
                    pattern.produce(&mut queue)?;
                }
                let info = pattern.info(&queue);
                (Source::Pattern(Box::new(pattern)), info, queue)
            }
            Input::File { path, looped } => {
                let arg = path_arg(path)?;
                let ctx = ff::format::input(&arg).map_err(|e| MediaError::Open {
                    input: name.clone(),
                    reason: e.to_string(),
                })?;
                let demux = Demux::new(&name, ctx, *looped)?;
                let info = demux.info.clone();
                (Source::Demux(Box::new(demux)), info, VecDeque::new())
            }
            Input::Url { url, format } => {
                let ctx = open_url(&name, url, format.as_deref())?;
                let demux = Demux::new(&name, ctx, false)?;
                let info = demux.info.clone();
                (Source::Demux(Box::new(demux)), info, VecDeque::new())
            }
        };
        log::info!("ingest {name}: {info:?}");
        Ok(Ingest {
            name,
            info,
            source,
            realtime: !matches!(input, Input::Url { .. }),
            pacer: Pacer::default(),
            queue,
        })
    }

    /// The streams (fixed for the life of the ingest).
    pub fn info(&self) -> &StreamInfo {
        &self.info
    }

    /// Whether [`Ingest::next`] waits for each packet's media time (the
    /// default for the test pattern and files; not for URLs). Tests turn it
    /// off to run faster than real time.
    pub fn set_realtime(&mut self, on: bool) {
        self.realtime = on;
        self.pacer = Pacer::default();
    }

    // Not an `Iterator`: reading can fail, and the end is `Ok(None)`.
    #[allow(clippy::should_implement_trait)]
    /// The next packet, `None` at the end of a file that is not looped
    /// (never for the test pattern). Blocks while reading, and when paced
    /// until the packet's media time.
    pub fn next(&mut self) -> Result<Option<Packet>, MediaError> {
        loop {
            if let Some(p) = self.queue.pop_front() {
                if self.realtime {
                    let tb = self.info.time_base(p.kind).unwrap_or(MICROS);
                    self.pacer.wait(rescale(p.dts, tb, MICROS));
                }
                return Ok(Some(p));
            }
            let more = match &mut self.source {
                Source::Pattern(p) => p.produce(&mut self.queue).map(|()| true),
                Source::Demux(d) => d.read(&mut self.queue),
            };
            if !more? {
                log::info!("ingest {}: end of input", self.name);
                return Ok(None);
            }
        }
    }
}

/// Sleeps so that media time advances with the wall clock.
#[derive(Default)]
struct Pacer {
    /// Wall clock and media time (µs) of the anchor.
    anchor: Option<(Instant, i64)>,
}

impl Pacer {
    /// Largest wait or lag before the pacer re-anchors (a jump in the
    /// timestamps, or a consumer that stalled).
    const SLACK_US: i64 = 2_000_000;

    fn wait(&mut self, media_us: i64) {
        let now = Instant::now();
        let Some((at, origin)) = self.anchor else {
            self.anchor = Some((now, media_us));
            return;
        };
        let ahead_us = media_us.saturating_sub(origin);
        let due = i64::try_from(now.duration_since(at).as_micros()).unwrap_or(i64::MAX);
        let wait_us = ahead_us.saturating_sub(due);
        if !(-Self::SLACK_US..=Self::SLACK_US).contains(&wait_us) {
            log::debug!("pacer: re-anchoring ({wait_us} µs off)");
            self.anchor = Some((now, media_us));
            return;
        }
        if wait_us > 0 {
            std::thread::sleep(Duration::from_micros(wait_us as u64));
        }
    }
}

/// The test pattern: a filter graph making frames, two encoders.
struct Pattern {
    name: String,
    graph: ff::filter::Graph,
    video: ff::codec::encoder::video::Encoder,
    audio: ff::codec::encoder::audio::Encoder,
    fps: u32,
    /// Next video frame number and audio sample number.
    frames: i64,
    samples: i64,
}

impl Pattern {
    fn open(
        name: &str,
        width: u32,
        height: u32,
        fps: u32,
        kbps: u32,
    ) -> Result<Pattern, MediaError> {
        let bad = |reason: String| MediaError::Open {
            input: name.to_string(),
            reason,
        };
        if width == 0
            || height == 0
            || !width.is_multiple_of(2)
            || !height.is_multiple_of(2)
            || width > 7680
            || height > 4320
        {
            return Err(bad(format!(
                "size {width}x{height}: width and height must be even, 2 to 7680x4320"
            )));
        }
        if !(1..=240).contains(&fps) {
            return Err(bad(format!("{fps} fps: 1 to 240")));
        }
        if !(16..=100_000).contains(&kbps) {
            return Err(bad(format!("{kbps} kbit/s: 16 to 100000")));
        }
        let codec_err = |what: &'static str| move |e: ff::Error| MediaError::codec(what, e);

        // Frames: testsrc2 in yuv420p; the tone as planar float stereo.
        let mut graph = ff::filter::Graph::new();
        for (sink, label) in [("buffersink", "v"), ("abuffersink", "a")] {
            let filter = ff::filter::find(sink)
                .ok_or_else(|| MediaError::codec("test pattern", format!("no {sink} filter")))?;
            graph
                .add(&filter, label, "")
                .map_err(codec_err("test pattern filter"))?;
        }
        let spec = format!(
            "testsrc2=size={width}x{height}:rate={fps},format=yuv420p[v];\
             sine=frequency=440:sample_rate={AAC_RATE},\
             aformat=sample_fmts=fltp:channel_layouts=stereo[a]"
        );
        graph
            .input("v", 0)
            .and_then(|p| p.input("a", 0))
            .and_then(|p| p.parse(&spec))
            .map_err(codec_err("test pattern filter graph"))?;
        graph
            .validate()
            .map_err(codec_err("test pattern filter graph"))?;

        // H.264 with a key frame every second; AAC.
        let video = h264_encoder(width, height, (1, fps as i32), (fps as i32, 1), fps, kbps)?;
        let audio = aac_encoder()?;
        let frame_size = audio.frame_size().max(1);
        match graph.get("a") {
            Some(mut sink) => sink.sink().set_frame_size(frame_size),
            None => return Err(MediaError::codec("test pattern", "no audio sink")),
        }
        Ok(Pattern {
            name: name.to_string(),
            graph,
            video,
            audio,
            fps,
            frames: 0,
            samples: 0,
        })
    }

    fn info(&self, queue: &VecDeque<Packet>) -> StreamInfo {
        let first_video = queue.iter().find(|p| p.kind == Kind::Video);
        StreamInfo {
            video: Some(VideoParams {
                codec: "h264".into(),
                width: self.video.width(),
                height: self.video.height(),
                time_base: (1, self.fps as i32),
                frame_rate: (self.fps as i32, 1),
                extradata: first_video.map_or_else(Vec::new, |p| nal::parameter_sets(&p.data)),
            }),
            audio: Some(AudioParams {
                codec: "aac".into(),
                sample_rate: AAC_RATE,
                channels: AAC_CHANNELS,
                time_base: (1, AAC_RATE as i32),
                frame_size: self.audio.frame_size(),
                extradata: nal::aac_config(AAC_RATE, AAC_CHANNELS),
            }),
        }
    }

    /// Makes and encodes the next frame (video or audio, whichever is
    /// earlier); the packets that result go to `queue`.
    fn produce(&mut self, queue: &mut VecDeque<Packet>) -> Result<(), MediaError> {
        let video_us = rescale(self.frames, (1, self.fps as i32), MICROS);
        let audio_us = rescale(self.samples, (1, AAC_RATE as i32), MICROS);
        let (label, kind) = if video_us <= audio_us {
            ("v", Kind::Video)
        } else {
            ("a", Kind::Audio)
        };
        let pull = |graph: &mut ff::filter::Graph, frame: &mut ff::Frame| {
            let got = match graph.get(label) {
                Some(mut ctx) => ctx.sink().frame(frame),
                None => Err(ff::Error::Bug),
            };
            got.map_err(|e| MediaError::Read {
                input: self.name.clone(),
                reason: format!("test pattern filter: {e}"),
            })
        };
        match kind {
            Kind::Video => {
                let mut frame = ff::frame::Video::empty();
                pull(&mut self.graph, &mut frame)?;
                frame.set_pts(Some(self.frames));
                // testsrc2 marks every frame as an I-frame, which x264
                // would obey: let the encoder choose.
                frame.set_kind(ff::picture::Type::None);
                self.frames += 1;
                let before = queue.len();
                encode(&mut self.video, Some(&frame), Kind::Video, queue)?;
                // One frame each (the encoder leaves it unset).
                for p in queue.iter_mut().skip(before) {
                    p.duration = p.duration.max(1);
                }
                Ok(())
            }
            Kind::Audio => {
                let mut frame = ff::frame::Audio::empty();
                pull(&mut self.graph, &mut frame)?;
                frame.set_pts(Some(self.samples));
                self.samples += frame.samples().max(1) as i64;
                encode(&mut self.audio, Some(&frame), Kind::Audio, queue)
            }
        }
    }
}

impl Drop for Pattern {
    fn drop(&mut self) {
        // Drain the encoders so that they close without complaints.
        let mut rest = VecDeque::new();
        let _ = encode(&mut self.video, None, Kind::Video, &mut rest);
        let _ = encode(&mut self.audio, None, Kind::Audio, &mut rest);
    }
}

/// Opens a live URL, forcing a device format if asked.
fn open_url(
    name: &str,
    url: &str,
    format: Option<&str>,
) -> Result<ff::format::context::Input, MediaError> {
    let url = c_arg(name, url)?;
    let open_err = |e: ff::Error| MediaError::Open {
        input: name.to_string(),
        reason: e.to_string(),
    };
    let mut opts = ff::Dictionary::new();
    // An RTMP URL on an unspecified address is a server to listen on (SRT
    // and UDP say so in the URL itself: `?mode=listener`, a local address).
    let host = url.split("://").nth(1).unwrap_or("");
    if url.starts_with("rtmp://") && (host.starts_with("0.0.0.0") || host.starts_with("[::]")) {
        opts.set("listen", "1");
    }
    match format {
        None => ff::format::input_with_dictionary(&url, opts).map_err(open_err),
        Some(f) => {
            let fmt = ff::device::input::video()
                .chain(ff::device::input::audio())
                .find(|d| d.name().split(',').any(|n| n == f))
                .ok_or_else(|| MediaError::Open {
                    input: name.to_string(),
                    reason: format!(
                        "no input device format {f:?} in this FFmpeg (e.g. v4l2, alsa, pulse, \
                         x11grab, lavfi); leave the format out for network URLs"
                    ),
                })?;
            ff::format::open_with(&url, &fmt, opts)
                .map(|c| c.input())
                .map_err(open_err)
        }
    }
}

/// One selected input stream.
struct Track {
    index: usize,
    kind: Kind,
    /// The input stream's time base.
    time_base: (i32, i32),
    /// Set when the codec cannot go into MPEG-TS: packets are re-encoded.
    transcoder: Option<Box<Transcoder>>,
    /// Last dts given out (after the loop offset), to mend missing ones.
    last_dts: Option<i64>,
    last_duration: i64,
}

impl Track {
    fn new(
        index: usize,
        kind: Kind,
        time_base: (i32, i32),
        transcoder: Option<Transcoder>,
    ) -> Track {
        Track {
            index,
            kind,
            time_base,
            transcoder: transcoder.map(Box::new),
            last_dts: None,
            last_duration: 0,
        }
    }
}

/// A demuxed file or URL: packets passed through, or re-encoded when
/// MPEG-TS cannot carry their codec.
struct Demux {
    name: String,
    ctx: ff::format::context::Input,
    info: StreamInfo,
    tracks: Vec<Track>,
    looped: bool,
    /// Added to every timestamp (µs) in the current pass of a looped file.
    offset_us: i64,
    /// Media time (µs, offset applied) of the first packet and the latest
    /// end of a packet in this pass.
    start_us: Option<i64>,
    end_us: i64,
    /// Whether the current pass gave out any packet (an empty pass ends a
    /// looped file instead of spinning).
    pass_packets: u64,
    /// Whether the transcoders were flushed at the end.
    flushed: bool,
}

impl Demux {
    fn new(name: &str, ctx: ff::format::context::Input, looped: bool) -> Result<Demux, MediaError> {
        let mut tracks = Vec::new();
        let mut info = StreamInfo::default();
        let mut failures = Vec::new();
        if let Some(index) = first_stream(&ctx, Type::Video) {
            let st = ctx.stream(index).ok_or_else(|| MediaError::NoStreams {
                input: name.to_string(),
            })?;
            let params = st.parameters();
            let codec = params.id().name();
            let time_base = positive(pair(st.time_base()));
            let mut frame_rate = pair(st.avg_frame_rate());
            if frame_rate.0 <= 0 || frame_rate.1 <= 0 {
                frame_rate = pair(st.rate());
            }
            if frame_rate.0 <= 0 || frame_rate.1 <= 0 {
                frame_rate = (0, 1);
            }
            if TS_VIDEO.contains(&codec) {
                let (width, height) = ff::codec::Context::from_parameters(params.clone())
                    .and_then(|c| c.decoder().video())
                    .map_or((0, 0), |d| (d.width(), d.height()));
                info.video = Some(VideoParams {
                    codec: codec.to_string(),
                    width,
                    height,
                    time_base,
                    frame_rate,
                    extradata: extradata(&params),
                });
                tracks.push(Track::new(index, Kind::Video, time_base, None));
            } else {
                match Transcoder::video(params, time_base, frame_rate) {
                    Ok(tc) => {
                        let ((width, height), frame_rate) = (tc.size(), tc.frame_rate());
                        log::info!("ingest {name}: re-encoding {codec} video to H.264");
                        info.video = Some(VideoParams {
                            codec: "h264".into(),
                            width,
                            height,
                            time_base: tc.out_time_base(),
                            frame_rate,
                            extradata: Vec::new(), // in band
                        });
                        tracks.push(Track::new(index, Kind::Video, time_base, Some(tc)));
                    }
                    Err(e) => {
                        log::warn!("ingest {name}: leaving out the {codec} video: {e}");
                        failures.push(format!("{codec} video: {e}"));
                    }
                }
            }
        }
        if let Some(index) = first_stream(&ctx, Type::Audio) {
            let st = ctx.stream(index).ok_or_else(|| MediaError::NoStreams {
                input: name.to_string(),
            })?;
            let params = st.parameters();
            let codec = params.id().name();
            let time_base = positive(pair(st.time_base()));
            if TS_AUDIO.contains(&codec) {
                let (sample_rate, channels, frame_size) =
                    ff::codec::Context::from_parameters(params.clone())
                        .and_then(|c| c.decoder().audio())
                        .map_or((0, 0, 0), |d| (d.rate(), d.channels(), d.frame_size()));
                info.audio = Some(AudioParams {
                    codec: codec.to_string(),
                    sample_rate,
                    channels,
                    time_base,
                    frame_size,
                    extradata: extradata(&params),
                });
                tracks.push(Track::new(index, Kind::Audio, time_base, None));
            } else {
                match Transcoder::audio(params, time_base) {
                    Ok(tc) => {
                        log::info!("ingest {name}: re-encoding {codec} audio to AAC");
                        info.audio = Some(AudioParams {
                            codec: "aac".into(),
                            sample_rate: AAC_RATE,
                            channels: AAC_CHANNELS,
                            time_base: tc.out_time_base(),
                            frame_size: 1024,
                            extradata: nal::aac_config(AAC_RATE, AAC_CHANNELS),
                        });
                        tracks.push(Track::new(index, Kind::Audio, time_base, Some(tc)));
                    }
                    Err(e) => {
                        log::warn!("ingest {name}: leaving out the {codec} audio: {e}");
                        failures.push(format!("{codec} audio: {e}"));
                    }
                }
            }
        }
        if tracks.is_empty() {
            return Err(if failures.is_empty() {
                MediaError::NoStreams {
                    input: name.to_string(),
                }
            } else {
                MediaError::Open {
                    input: name.to_string(),
                    reason: failures.join("; "),
                }
            });
        }
        Ok(Demux {
            name: name.to_string(),
            ctx,
            info,
            tracks,
            looped,
            offset_us: 0,
            start_us: None,
            end_us: 0,
            pass_packets: 0,
            flushed: false,
        })
    }

    /// Reads until a packet is queued (`true`) or the input ends (`false`).
    fn read(&mut self, queue: &mut VecDeque<Packet>) -> Result<bool, MediaError> {
        let mut errors = 0;
        loop {
            let mut pk = ff::Packet::empty();
            match pk.read(&mut self.ctx) {
                Ok(()) => errors = 0,
                Err(ff::Error::Eof) => {
                    if self.looped && self.pass_packets > 0 {
                        self.rewind()?;
                        continue;
                    }
                    return self.flush(queue);
                }
                Err(e) if is_again(&e) => continue,
                Err(e) => {
                    // Live inputs have transient errors; give up on a run.
                    errors += 1;
                    log::debug!("ingest {}: read error {e}", self.name);
                    if errors >= 100 {
                        return Err(MediaError::Read {
                            input: self.name.clone(),
                            reason: e.to_string(),
                        });
                    }
                    continue;
                }
            }
            let Some(track) = self.tracks.iter_mut().find(|t| t.index == pk.stream()) else {
                continue;
            };
            let Some(data) = pk.data() else {
                continue;
            };
            // One tick more: rounding never repeats a dts.
            let offset =
                rescale(self.offset_us, MICROS, track.time_base) + i64::from(self.offset_us != 0);
            let duration = pk.duration().max(0);
            let dts = match (pk.dts(), pk.pts(), track.last_dts) {
                (Some(d), _, _) => d.saturating_add(offset),
                (None, Some(p), _) => p.saturating_add(offset),
                (None, None, Some(last)) => last + track.last_duration.max(1),
                (None, None, None) => offset,
            };
            let pts = pk.pts().map_or(dts, |p| p.saturating_add(offset));
            track.last_dts = Some(dts);
            track.last_duration = duration;
            let at_us = rescale(dts, track.time_base, MICROS);
            self.start_us.get_or_insert(at_us);
            let end = rescale(dts.saturating_add(duration.max(1)), track.time_base, MICROS);
            self.end_us = self.end_us.max(end);
            self.pass_packets += 1;
            if let Some(tc) = track.transcoder.as_mut() {
                pk.set_pts(Some(pts));
                pk.set_dts(Some(dts));
                tc.push(Some(&pk), queue)?;
                if queue.is_empty() {
                    continue;
                }
                return Ok(true);
            }
            queue.push_back(Packet {
                kind: track.kind,
                pts,
                dts,
                duration,
                key: pk.is_key(),
                data: data.to_vec(),
            });
            return Ok(true);
        }
    }

    /// At the end: what the transcoders still hold (once).
    fn flush(&mut self, queue: &mut VecDeque<Packet>) -> Result<bool, MediaError> {
        if !self.flushed {
            self.flushed = true;
            for t in &mut self.tracks {
                if let Some(tc) = t.transcoder.as_mut() {
                    tc.push(None, queue)?;
                }
            }
        }
        Ok(!queue.is_empty())
    }

    /// Seeks back to the start for the next pass of a looped file; its
    /// timestamps continue from the end of this one.
    fn rewind(&mut self) -> Result<(), MediaError> {
        // The next pass's first packet lands where this one ended.
        let start = self.start_us.unwrap_or(0);
        self.offset_us = self.end_us.saturating_sub(start).max(self.offset_us);
        self.pass_packets = 0;
        log::debug!(
            "ingest {}: looping, offset {} µs",
            self.name,
            self.offset_us
        );
        self.ctx.seek(0, ..).map_err(|e| MediaError::Read {
            input: self.name.clone(),
            reason: format!("cannot seek back to loop: {e}"),
        })
    }
}

/// A time base FFmpeg reported, or 1/90000 if it is not positive.
fn positive(tb: (i32, i32)) -> (i32, i32) {
    if tb.0 > 0 && tb.1 > 0 {
        tb
    } else {
        (1, 90_000)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::media::testutil::TempDir;

    pub(crate) fn pattern(width: u32, height: u32, fps: u32) -> Input {
        Input::TestPattern {
            width,
            height,
            fps,
            video_kbps: 400,
        }
    }

    #[test]
    fn test_pattern_is_h264_and_aac_with_a_key_frame_every_second() {
        let mut ing = Ingest::open(&pattern(320, 180, 25)).unwrap();
        ing.set_realtime(false);
        let info = ing.info().clone();
        let v = info.video.as_ref().unwrap();
        assert_eq!((v.codec.as_str(), v.width, v.height), ("h264", 320, 180));
        assert_eq!((v.time_base, v.frame_rate), ((1, 25), (25, 1)));
        // SPS and PPS, Annex B.
        assert!(
            v.extradata.starts_with(&[0, 0, 0, 1, 0x67]),
            "{:02x?}",
            v.extradata
        );
        let a = info.audio.as_ref().unwrap();
        assert_eq!(
            (a.codec.as_str(), a.sample_rate, a.channels),
            ("aac", 48_000, 2)
        );
        assert_eq!(
            (a.frame_size, a.extradata.as_slice()),
            (1024, &[0x11, 0x90][..])
        );

        let mut last = [None::<i64>; 2];
        let mut video = Vec::new();
        let mut audio = 0;
        let mut video_bytes = 0;
        while video.len() < 100 {
            let p = ing.next().unwrap().unwrap();
            let slot = (p.kind == Kind::Audio) as usize;
            assert!(last[slot].is_none_or(|l| p.dts > l), "{p:?}");
            last[slot] = Some(p.dts);
            assert!(p.pts >= p.dts);
            match p.kind {
                Kind::Video => {
                    video_bytes += p.data.len();
                    video.push(p);
                }
                Kind::Audio => audio += 1,
            }
        }
        // Frames 0, 25, 50, 75 are key frames, the others not.
        let keys: Vec<i64> = video.iter().filter(|p| p.key).map(|p| p.pts).collect();
        assert_eq!(keys, vec![0, 25, 50, 75]);
        assert!(video
            .iter()
            .enumerate()
            .all(|(i, p)| p.pts == i as i64 && p.dts == p.pts));
        // 4 s of audio at 1024 samples per packet: about 187 packets.
        assert!((180..=190).contains(&audio), "{audio} audio packets");
        // 4 s at 400 kbit/s: within a factor of two.
        let kbps = video_bytes * 8 / 4 / 1000;
        assert!((200..=800).contains(&kbps), "{kbps} kbit/s");
    }

    #[test]
    fn packets_are_paced_at_media_time() {
        let mut ing = Ingest::open(&pattern(160, 90, 25)).unwrap();
        let t0 = Instant::now();
        let mut n = 0;
        // Frames up to 0.6 s: the first comes at once.
        loop {
            let p = ing.next().unwrap().unwrap();
            if p.kind == Kind::Video {
                if p.pts >= 15 {
                    break;
                }
                n += 1;
            }
        }
        let took = t0.elapsed();
        assert_eq!(n, 15);
        assert!(took >= Duration::from_millis(500), "{took:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
    }

    #[test]
    fn bad_inputs_say_what_is_wrong() {
        let e = Ingest::open(&pattern(321, 180, 25)).err().unwrap();
        assert!(e.to_string().contains("must be even"), "{e}");
        let e = Ingest::open(&pattern(320, 180, 0)).err().unwrap();
        assert!(e.to_string().contains("fps"), "{e}");

        let dir = TempDir::new("ingest");
        let missing = dir.path().join("no-such-file.mp4");
        let e = Ingest::open(&Input::File {
            path: missing.clone(),
            looped: false,
        })
        .err()
        .unwrap();
        let msg = e.to_string();
        assert!(matches!(e, MediaError::Open { .. }), "{msg}");
        assert!(
            msg.starts_with(&format!("cannot open input {}", missing.display())),
            "{msg}"
        );
        assert!(msg.contains("No such file"), "{msg}");

        // (A .txt file would open: FFmpeg shows text as ANSI art.)
        let text = dir.path().join("notes.mp4");
        std::fs::write(
            &text,
            "these are not the frames you are looking for\n".repeat(50),
        )
        .unwrap();
        let e = Ingest::open(&Input::File {
            path: text.clone(),
            looped: false,
        })
        .err()
        .unwrap();
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("cannot open input {}", text.display())),
            "{msg}"
        );
        assert!(msg.contains("Invalid data"), "{msg}");

        let e = Ingest::open(&Input::Url {
            url: "/dev/null".into(),
            format: Some("no-such-device".into()),
        })
        .err()
        .unwrap();
        assert!(e.to_string().contains("no input device format"), "{e}");
    }
}
