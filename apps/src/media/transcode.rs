//! The encoders the source uses (libx264 for the test pattern and for video
//! MPEG-TS cannot carry; FFmpeg's AAC for the tone and for such audio), and
//! [`Transcoder`]: decode, convert with a filter graph, re-encode — for a
//! webcam's raw or MJPEG frames, a sound card's PCM, VP8/VP9/AV1 or
//! Vorbis/Opus in a file.

use std::collections::VecDeque;

use ffmpeg_next as ff;

use super::ff::{is_again, pair};
use super::{rescale, Kind, MediaError, Packet};

/// Video codecs the MPEG-TS output passes through.
pub(crate) const TS_VIDEO: &[&str] = &["h264", "hevc", "mpeg2video", "mpeg1video", "mpeg4"];
/// Audio codecs the MPEG-TS output passes through.
pub(crate) const TS_AUDIO: &[&str] = &["aac", "mp3", "mp2", "ac3", "eac3"];

/// Sample rate, channels and bit rate of all AAC the source makes.
pub(crate) const AAC_RATE: u32 = 48_000;
pub(crate) const AAC_CHANNELS: u16 = 2;
const AAC_BPS: usize = 128_000;

fn codec_err(what: &'static str) -> impl Fn(ff::Error) -> MediaError {
    move |e| MediaError::codec(what, e)
}

/// libx264 for live: `veryfast`, `zerolatency` (no B-frames, no lookahead,
/// sliced threads), a key frame every `gop` frames and no others, the
/// bit rate capped with a one-second buffer.
pub(crate) fn h264_encoder(
    width: u32,
    height: u32,
    time_base: (i32, i32),
    frame_rate: (i32, i32),
    gop: u32,
    kbps: u32,
) -> Result<ff::codec::encoder::video::Encoder, MediaError> {
    let x264 = ff::encoder::find_by_name("libx264")
        .ok_or_else(|| MediaError::codec("H.264 encoder", "libx264 is not available"))?;
    let mut v = ff::codec::Context::new_with_codec(x264)
        .encoder()
        .video()
        .map_err(codec_err("H.264 encoder"))?;
    v.set_width(width);
    v.set_height(height);
    v.set_format(ff::format::Pixel::YUV420P);
    v.set_time_base(time_base);
    v.set_frame_rate(Some(frame_rate));
    v.set_gop(gop);
    v.set_max_b_frames(0);
    let bps = kbps as usize * 1000;
    v.set_bit_rate(bps);
    v.set_max_bit_rate(bps);
    let gop = gop.to_string();
    let bufsize = bps.to_string();
    let opts = ff::Dictionary::from_iter([
        ("preset", "veryfast"),
        ("tune", "zerolatency"),
        ("bufsize", bufsize.as_str()),
        ("keyint_min", gop.as_str()),
        ("sc_threshold", "0"),
    ]);
    v.open_with(opts)
        .map_err(codec_err("opening the H.264 encoder"))
}

/// FFmpeg's AAC-LC encoder: 48 kHz, stereo, planar float, 128 kbit/s,
/// time base 1/48000, 1024 samples a frame.
pub(crate) fn aac_encoder() -> Result<ff::codec::encoder::audio::Encoder, MediaError> {
    let aac = ff::encoder::find(ff::codec::Id::AAC)
        .ok_or_else(|| MediaError::codec("AAC encoder", "not available"))?;
    let mut a = ff::codec::Context::new_with_codec(aac)
        .encoder()
        .audio()
        .map_err(codec_err("AAC encoder"))?;
    a.set_rate(AAC_RATE as i32);
    a.set_format(ff::format::Sample::F32(ff::format::sample::Type::Planar));
    a.set_channel_layout(ff::ChannelLayout::STEREO);
    a.set_channels(i32::from(AAC_CHANNELS));
    a.set_bit_rate(AAC_BPS);
    a.set_time_base((1, AAC_RATE as i32));
    a.open().map_err(codec_err("opening the AAC encoder"))
}

/// Sends a frame (or the end, `None`) to an opened encoder and queues the
/// packets it returns, timestamps in the encoder's time base.
pub(crate) fn encode(
    enc: &mut ff::codec::encoder::Encoder,
    frame: Option<&ff::Frame>,
    kind: Kind,
    queue: &mut VecDeque<Packet>,
) -> Result<(), MediaError> {
    let what = match kind {
        Kind::Video => "H.264 encoder",
        Kind::Audio => "AAC encoder",
    };
    match frame {
        Some(f) => enc.send_frame(f),
        None => enc.send_eof(),
    }
    .map_err(codec_err(what))?;
    loop {
        let mut pk = ff::Packet::empty();
        match enc.receive_packet(&mut pk) {
            Ok(()) => {}
            Err(e) if is_again(&e) || e == ff::Error::Eof => return Ok(()),
            Err(e) => return Err(MediaError::codec(what, e)),
        }
        let pts = pk.pts().or(pk.dts()).unwrap_or(0);
        let dts = pk.dts().unwrap_or(pts);
        queue.push_back(Packet {
            kind,
            pts,
            dts,
            duration: pk.duration().max(0),
            key: pk.is_key(),
            data: pk.data().unwrap_or_default().to_vec(),
        });
    }
}

/// A bit rate for re-encoded video: 0.1 bit per pixel, 200 to 8000 kbit/s
/// (1280x720 at 30 fps: 2765 kbit/s).
pub(crate) fn video_kbps(width: u32, height: u32, fps: f64) -> u32 {
    let kbps = f64::from(width) * f64::from(height) * fps / 10_000.0;
    kbps.clamp(200.0, 8000.0) as u32
}

/// The encoder of a [`Transcoder`].
enum Encoder {
    Video(ff::codec::encoder::video::Encoder),
    Audio(ff::codec::encoder::audio::Encoder),
}

impl Encoder {
    fn get(&mut self) -> &mut ff::codec::encoder::Encoder {
        match self {
            Encoder::Video(e) => e,
            Encoder::Audio(e) => e,
        }
    }
}

/// A frame of either kind (the binding's frame wrappers hold a frame that
/// cannot be taken out or cloned).
enum AnyFrame {
    Video(ff::frame::Video),
    Audio(ff::frame::Audio),
}

impl AnyFrame {
    fn new(kind: Kind) -> AnyFrame {
        match kind {
            Kind::Video => AnyFrame::Video(ff::frame::Video::empty()),
            Kind::Audio => AnyFrame::Audio(ff::frame::Audio::empty()),
        }
    }

    fn get(&mut self) -> &mut ff::Frame {
        match self {
            AnyFrame::Video(v) => v,
            AnyFrame::Audio(a) => a,
        }
    }
}

/// Decode, filter, encode: one input stream to H.264 or AAC.
pub(crate) struct Transcoder {
    kind: Kind,
    /// Output picture size and frame rate (video).
    size: (u32, u32),
    frame_rate: (i32, i32),
    decoder: ff::decoder::Opened,
    /// The conversion (scale and pixel format, or resample and sample
    /// format), made at the first frame from its properties.
    graph: Option<ff::filter::Graph>,
    /// The graph's output: what the encoder takes.
    spec: String,
    encoder: Encoder,
    in_tb: (i32, i32),
    /// The encoder's time base: the packets'.
    out_tb: (i32, i32),
    /// Frames the decoder refused or failed on (live inputs have some).
    errors: u64,
}

impl Transcoder {
    /// A transcoder of video in `params` (time base `in_tb`) to H.264 of
    /// the same size (rounded down to even), `frame_rate` (or 25) and
    /// [`video_kbps`].
    pub(crate) fn video(
        params: ff::codec::Parameters,
        in_tb: (i32, i32),
        frame_rate: (i32, i32),
    ) -> Result<Transcoder, MediaError> {
        let mut dec = ff::codec::Context::from_parameters(params)
            .map_err(codec_err("video decoder"))?
            .decoder();
        dec.set_packet_time_base(in_tb);
        let dec = dec
            .video()
            .map_err(codec_err("opening the video decoder"))?;
        let (w, h) = (dec.width() & !1, dec.height() & !1);
        if w == 0 || h == 0 {
            return Err(MediaError::codec("video decoder", "unknown picture size"));
        }
        let rate = if frame_rate.0 > 0 && frame_rate.1 > 0 {
            frame_rate
        } else {
            (25, 1)
        };
        let fps = f64::from(rate.0) / f64::from(rate.1);
        let gop = fps.round().max(1.0) as u32;
        let encoder = h264_encoder(w, h, in_tb, rate, gop, video_kbps(w, h, fps))?;
        Ok(Transcoder {
            kind: Kind::Video,
            size: (w, h),
            frame_rate: rate,
            decoder: dec.0,
            graph: None,
            spec: format!("scale={w}:{h},format=yuv420p"),
            encoder: Encoder::Video(encoder),
            in_tb,
            out_tb: in_tb,
            errors: 0,
        })
    }

    /// A transcoder of audio in `params` (time base `in_tb`) to AAC as
    /// [`aac_encoder`] makes it (time base 1/48000).
    pub(crate) fn audio(
        params: ff::codec::Parameters,
        in_tb: (i32, i32),
    ) -> Result<Transcoder, MediaError> {
        let mut dec = ff::codec::Context::from_parameters(params)
            .map_err(codec_err("audio decoder"))?
            .decoder();
        dec.set_packet_time_base(in_tb);
        let dec = dec
            .audio()
            .map_err(codec_err("opening the audio decoder"))?;
        let encoder = aac_encoder()?;
        Ok(Transcoder {
            kind: Kind::Audio,
            size: (0, 0),
            frame_rate: (0, 1),
            decoder: dec.0,
            graph: None,
            spec: format!("aresample={AAC_RATE},aformat=sample_fmts=fltp:channel_layouts=stereo"),
            encoder: Encoder::Audio(encoder),
            in_tb,
            out_tb: (1, AAC_RATE as i32),
            errors: 0,
        })
    }

    /// Feeds one input packet (`None`: the end of the input, flush all);
    /// queues the packets that come out.
    pub(crate) fn push(
        &mut self,
        packet: Option<&ff::Packet>,
        queue: &mut VecDeque<Packet>,
    ) -> Result<(), MediaError> {
        let sent = match packet {
            Some(p) => self.decoder.send_packet(p),
            None => self.decoder.send_eof(),
        };
        if let Err(e) = sent {
            self.refused(&e);
        }
        loop {
            let mut frame = AnyFrame::new(self.kind);
            match self.decoder.receive_frame(frame.get()) {
                Ok(()) => self.filter(Some(frame), queue)?,
                Err(e) if is_again(&e) => return Ok(()),
                Err(ff::Error::Eof) => break,
                Err(e) => {
                    self.refused(&e);
                    return Ok(());
                }
            }
        }
        // The end: flush the graph, then the encoder.
        self.filter(None, queue)?;
        encode(self.encoder.get(), None, self.kind, queue)
    }

    fn refused(&mut self, e: &ff::Error) {
        self.errors += 1;
        if self.errors.is_power_of_two() {
            log::warn!(
                "transcoding {:?}: decoder error {e} ({} so far)",
                self.kind,
                self.errors
            );
        }
    }

    /// Sends a decoded frame (`None`: the end) through the graph and the
    /// frames that come out to the encoder.
    fn filter(
        &mut self,
        frame: Option<AnyFrame>,
        queue: &mut VecDeque<Packet>,
    ) -> Result<(), MediaError> {
        if self.graph.is_none() {
            let Some(f) = frame.as_ref() else {
                return Ok(()); // the end before any frame
            };
            self.graph = Some(self.make_graph(f)?);
        }
        let Some(graph) = self.graph.as_mut() else {
            return Ok(());
        };
        let fed = match (graph.get("in"), frame) {
            (Some(mut src), Some(mut f)) => {
                if let AnyFrame::Video(v) = &mut f {
                    if let Some(plain) = full_range_twin(v.format()) {
                        v.set_format(plain);
                        v.set_color_range(ff::color::Range::JPEG);
                    }
                }
                let f = f.get();
                let ts = f.timestamp();
                f.set_pts(ts);
                src.source().add(f)
            }
            (Some(mut src), None) => src.source().flush(),
            (None, _) => Err(ff::Error::Bug),
        };
        fed.map_err(codec_err("transcoding filter"))?;
        loop {
            let mut out = AnyFrame::new(self.kind);
            let got = match graph.get("out") {
                Some(mut sink) => {
                    let mut sink = sink.sink();
                    sink.frame(out.get()).map(|()| pair(sink.time_base()))
                }
                None => Err(ff::Error::Bug),
            };
            let sink_tb = match got {
                Ok(tb) => tb,
                Err(e) if is_again(&e) || e == ff::Error::Eof => return Ok(()),
                Err(e) => return Err(MediaError::codec("transcoding filter", e)),
            };
            if sink_tb != self.out_tb {
                let f = out.get();
                let pts = f.pts().map(|t| rescale(t, sink_tb, self.out_tb));
                f.set_pts(pts);
            }
            if let AnyFrame::Video(v) = &mut out {
                // Let the encoder place the key frames.
                v.set_kind(ff::picture::Type::None);
            }
            encode(self.encoder.get(), Some(out.get()), self.kind, queue)?;
        }
    }

    /// The conversion graph for frames like `f`.
    fn make_graph(&self, f: &AnyFrame) -> Result<ff::filter::Graph, MediaError> {
        let mut spec = self.spec.clone();
        let (src, sink, args) = match f {
            AnyFrame::Video(v) => {
                let (format, range) = match full_range_twin(v.format()) {
                    Some(plain) => (plain, ":in_range=pc:out_range=tv"),
                    None => (v.format(), ""),
                };
                spec = spec.replacen(',', &format!("{range},"), 1);
                let args = format!(
                    "video_size={}x{}:pix_fmt={}:time_base={}/{}:pixel_aspect=1/1",
                    v.width(),
                    v.height(),
                    format.descriptor().map_or("yuv420p", |d| d.name()),
                    self.in_tb.0,
                    self.in_tb.1,
                );
                ("buffer", "buffersink", args)
            }
            AnyFrame::Audio(a) => {
                let layout = if a.channel_layout().is_empty() {
                    ff::ChannelLayout::default(i32::from(a.channels()))
                } else {
                    a.channel_layout()
                };
                let args = format!(
                    "time_base={}/{}:sample_rate={}:sample_fmt={}:channel_layout=0x{:x}",
                    self.in_tb.0,
                    self.in_tb.1,
                    a.rate(),
                    a.format().name(),
                    layout.bits(),
                );
                ("abuffer", "abuffersink", args)
            }
        };
        let find = |name: &str| {
            ff::filter::find(name)
                .ok_or_else(|| MediaError::codec("transcoding filter", format!("no {name} filter")))
        };
        let (src, sink) = (find(src)?, find(sink)?);
        let mut graph = ff::filter::Graph::new();
        graph
            .add(&src, "in", &args)
            .map_err(codec_err("transcoding filter source"))?;
        graph
            .add(&sink, "out", "")
            .map_err(codec_err("transcoding filter sink"))?;
        graph
            .output("in", 0)
            .and_then(|p| p.input("out", 0))
            .and_then(|p| p.parse(&spec))
            .map_err(codec_err("transcoding filter graph"))?;
        graph
            .validate()
            .map_err(codec_err("transcoding filter graph"))?;
        if let Encoder::Audio(enc) = &self.encoder {
            let size = enc.frame_size().max(1);
            if let Some(mut sink) = graph.get("out") {
                sink.sink().set_frame_size(size);
            }
        }
        Ok(graph)
    }

    /// The output picture size (video).
    pub(crate) fn size(&self) -> (u32, u32) {
        self.size
    }

    /// The output frame rate (video).
    pub(crate) fn frame_rate(&self) -> (i32, i32) {
        self.frame_rate
    }

    /// The time base of the packets that come out.
    pub(crate) fn out_time_base(&self) -> (i32, i32) {
        self.out_tb
    }
}

/// The plain format of a full-range ("JPEG", MJPEG webcams) YUV format:
/// FFmpeg's scaler wants the range said rather than implied by the format.
fn full_range_twin(f: ff::format::Pixel) -> Option<ff::format::Pixel> {
    use ff::format::Pixel as P;
    match f {
        P::YUVJ420P => Some(P::YUV420P),
        P::YUVJ422P => Some(P::YUV422P),
        P::YUVJ444P => Some(P::YUV444P),
        P::YUVJ440P => Some(P::YUV440P),
        P::YUVJ411P => Some(P::YUV411P),
        _ => None,
    }
}
