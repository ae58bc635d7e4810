//! Decodes a media file completely and reports what it found: the check
//! tests (and anyone debugging a viewer's output) run on a remuxed file.

use std::path::Path;

use ff::media::Type;
use ffmpeg_next as ff;

use super::ff::{first_stream, init, is_again, path_arg};
use super::MediaError;

/// What [`check`] found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Video frames decoded.
    pub video_frames: u64,
    /// Audio frames decoded.
    pub audio_frames: u64,
    /// Packets the decoders refused, frames flagged corrupt, read errors.
    pub decode_errors: u64,
    /// Whether the decoded video frames' timestamps strictly increase
    /// (frames without one are skipped).
    pub video_in_order: bool,
    /// The same for audio.
    pub audio_in_order: bool,
    /// The container's duration, or the span of the decoded timestamps.
    pub duration_secs: f64,
    /// Decoded picture size (0 without video).
    pub width: u32,
    /// Decoded picture size (0 without video).
    pub height: u32,
}

/// One decoded stream.
struct Decoding {
    index: usize,
    is_video: bool,
    decoder: ff::decoder::Opened,
    frames: u64,
    in_order: bool,
    last: Option<i64>,
    first: Option<i64>,
    time_base: (i32, i32),
}

impl Decoding {
    fn open(input: &ff::format::context::Input, index: usize) -> Result<Decoding, MediaError> {
        let st = input
            .stream(index)
            .ok_or_else(|| MediaError::codec("probe", "stream vanished"))?;
        let params = st.parameters();
        let id = params.id();
        let mut dec = ff::codec::Context::from_parameters(params)
            .map_err(|e| MediaError::codec("probe: decoder parameters", e))?
            .decoder();
        dec.set_packet_time_base(st.time_base());
        let decoder = dec.open_as(id).map_err(|e| {
            MediaError::codec(format!("probe: opening the {} decoder", id.name()), e)
        })?;
        Ok(Decoding {
            index,
            is_video: st.parameters().medium() == Type::Video,
            decoder,
            frames: 0,
            in_order: true,
            last: None,
            first: None,
            time_base: super::ff::pair(st.time_base()),
        })
    }

    /// Takes every frame the decoder has ready; counts corrupt ones.
    fn drain(&mut self, errors: &mut u64) {
        // Both wrappers are a plain AVFrame to receive into.
        let mut video = ff::frame::Video::empty();
        let mut audio = ff::frame::Audio::empty();
        let frame: &mut ff::Frame = if self.is_video {
            &mut video
        } else {
            &mut audio
        };
        loop {
            match self.decoder.receive_frame(frame) {
                Ok(()) => {
                    self.frames += 1;
                    if frame.is_corrupt() {
                        *errors += 1;
                    }
                    if let Some(ts) = frame.timestamp() {
                        if self.last.is_some_and(|last| ts <= last) {
                            self.in_order = false;
                        }
                        self.last = Some(ts);
                        self.first.get_or_insert(ts);
                    }
                }
                Err(e) if is_again(&e) || e == ff::Error::Eof => return,
                Err(_) => {
                    *errors += 1;
                    return;
                }
            }
        }
    }

    fn span_secs(&self) -> f64 {
        match (self.first, self.last) {
            (Some(a), Some(b)) => {
                (b - a) as f64 * f64::from(self.time_base.0) / f64::from(self.time_base.1)
            }
            _ => 0.0,
        }
    }
}

/// Opens `path`, decodes every packet of its first video and first audio
/// stream, and reports frame counts, errors, order and size.
pub fn check(path: &Path) -> Result<Report, MediaError> {
    init();
    let name = path.display().to_string();
    let arg = path_arg(path)?;
    let mut input = ff::format::input(&arg).map_err(|e| MediaError::Open {
        input: name.clone(),
        reason: e.to_string(),
    })?;
    let mut video = first_stream(&input, Type::Video)
        .map(|i| Decoding::open(&input, i))
        .transpose()?;
    let mut audio = first_stream(&input, Type::Audio)
        .map(|i| Decoding::open(&input, i))
        .transpose()?;
    if video.is_none() && audio.is_none() {
        return Err(MediaError::NoStreams { input: name });
    }
    let mut errors = 0u64;
    let mut read_errors = 0;
    loop {
        let mut pk = ff::Packet::empty();
        match pk.read(&mut input) {
            Ok(()) => read_errors = 0,
            Err(ff::Error::Eof) => break,
            Err(_) => {
                errors += 1;
                read_errors += 1;
                if read_errors > 100 {
                    break;
                }
                continue;
            }
        }
        for d in [video.as_mut(), audio.as_mut()].into_iter().flatten() {
            if d.index == pk.stream() {
                if d.decoder.send_packet(&pk).is_err() {
                    errors += 1;
                }
                d.drain(&mut errors);
            }
        }
    }
    for d in [video.as_mut(), audio.as_mut()].into_iter().flatten() {
        let _ = d.decoder.send_eof();
        d.drain(&mut errors);
    }
    let container = input.duration();
    let duration_secs = if container > 0 {
        container as f64 / f64::from(ff::ffi::AV_TIME_BASE)
    } else {
        let v = video.as_ref().map_or(0.0, Decoding::span_secs);
        let a = audio.as_ref().map_or(0.0, Decoding::span_secs);
        v.max(a)
    };
    let audio_frames = audio.as_ref().map_or(0, |a| a.frames);
    let audio_in_order = audio.as_ref().is_none_or(|a| a.in_order);
    let (video_frames, video_in_order, width, height) = match video {
        Some(v) => {
            let (frames, in_order) = (v.frames, v.in_order);
            let (w, h) = v
                .decoder
                .video()
                .map_or((0, 0), |d| (d.width(), d.height()));
            (frames, in_order, w, h)
        }
        None => (0, true, 0, 0),
    };
    Ok(Report {
        video_frames,
        audio_frames,
        decode_errors: errors,
        video_in_order,
        audio_in_order,
        duration_secs,
        width,
        height,
    })
}
