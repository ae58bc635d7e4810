//! Media: what the source ingests, how packets travel in fragments, and how
//! a client turns them back into an MPEG-TS a player can open.
//!
//! ```text
//!  source:  Ingest::next() ─Packet─▶ Packetizer::push() ─Chunk─▶ (network, signed fragments)
//!  client:  (network) ─payload─▶ Depacketizer::push() ─Packet─▶ Remuxer::push() ─TS bytes─▶ sink
//! ```
//!
//! - this file: the types, without FFmpeg: [`StreamInfo`] (the
//!   stream's metadata, with its own byte encoding), [`Packet`], the errors.
//! - [`frag`]: packets to fragment payloads and back (sans-IO, no FFmpeg).
//! - [`ingest`]: the source's input (test pattern, file, live URL) with FFmpeg.
//! - [`output`]: the client's remux to MPEG-TS with FFmpeg.
//! - [`probe`]: decodes a file and counts frames (tests, checks).
//! - private: `transcode` (the encoders; re-encoding codecs MPEG-TS cannot
//!   carry), `nal` (pure-Rust bitstream rewrites: AVCC to Annex B, ADTS; the
//!   extradata read-back — the safe FFmpeg binding can neither set nor read
//!   codec extradata), `ff` (shared FFmpeg helpers).
//!
//! The byte formats are described in `docs/media.md`.

use std::fmt;

#[cfg(test)]
mod e2e;
pub(crate) mod ff;
pub mod frag;
pub mod ingest;
mod nal;
pub mod output;
pub mod probe;
mod transcode;
pub mod ts;

pub use frag::{starts_key, Chunk, Depacketizer, Packetizer};
pub use ingest::{Ingest, Input};
pub use output::{RemuxStats, Remuxer, Sink};

/// Which elementary stream a packet belongs to. The network carries each on
/// its own channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The video stream.
    Video,
    /// The audio stream.
    Audio,
}

/// Longest codec name [`StreamInfo`] carries.
pub const MAX_CODEC_NAME: usize = 32;
/// Largest extradata [`StreamInfo`] carries (64 KiB).
pub const MAX_EXTRADATA: usize = 64 * 1024;

/// What a decoder needs to know about the video stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VideoParams {
    /// FFmpeg's codec name, e.g. `"h264"`.
    pub codec: String,
    /// Width in pixels (0 if unknown).
    pub width: u32,
    /// Height in pixels (0 if unknown).
    pub height: u32,
    /// Unit of the packets' timestamps, seconds as `(num, den)`; both positive.
    pub time_base: (i32, i32),
    /// Frames per second as `(num, den)`; `(0, 1)` if unknown.
    pub frame_rate: (i32, i32),
    /// Codec extradata: for H.264 either an `avcC` record (first byte 1,
    /// packets length-prefixed) or Annex B SPS/PPS (start codes), or empty
    /// when the packets carry their parameter sets in band.
    pub extradata: Vec<u8>,
}

/// What a decoder needs to know about the audio stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AudioParams {
    /// FFmpeg's codec name, e.g. `"aac"`.
    pub codec: String,
    /// Samples per second.
    pub sample_rate: u32,
    /// Number of channels.
    pub channels: u16,
    /// Unit of the packets' timestamps, seconds as `(num, den)`; both positive.
    pub time_base: (i32, i32),
    /// Samples per packet (0 if variable or unknown); 1024 for AAC.
    pub frame_size: u32,
    /// Codec extradata: for AAC the AudioSpecificConfig (packets raw), or
    /// empty when the packets carry ADTS headers.
    pub extradata: Vec<u8>,
}

/// The stream's metadata: which streams there are and their parameters.
/// The source publishes it (encoded with [`StreamInfo::encode`]); clients
/// need it to remux.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct StreamInfo {
    /// The video stream, if any.
    pub video: Option<VideoParams>,
    /// The audio stream, if any.
    pub audio: Option<AudioParams>,
}

/// Version byte of [`StreamInfo::encode`]'s format.
const INFO_VERSION: u8 = 1;

impl StreamInfo {
    /// The time base of `kind`'s stream, if the stream exists.
    pub fn time_base(&self, kind: Kind) -> Option<(i32, i32)> {
        match kind {
            Kind::Video => self.video.as_ref().map(|v| v.time_base),
            Kind::Audio => self.audio.as_ref().map(|a| a.time_base),
        }
    }

    /// The metadata as bytes (big-endian; layout in `docs/media.md`).
    /// Codec names longer than [`MAX_CODEC_NAME`] and extradata longer than
    /// [`MAX_EXTRADATA`] are cut, so the result always decodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![INFO_VERSION];
        let flags = u8::from(self.video.is_some()) | u8::from(self.audio.is_some()) << 1;
        b.push(flags);
        if let Some(v) = &self.video {
            put_name(&mut b, &v.codec);
            b.extend_from_slice(&v.width.to_be_bytes());
            b.extend_from_slice(&v.height.to_be_bytes());
            put_pair(&mut b, v.time_base);
            put_pair(&mut b, v.frame_rate);
            put_bytes(&mut b, &v.extradata);
        }
        if let Some(a) = &self.audio {
            put_name(&mut b, &a.codec);
            b.extend_from_slice(&a.sample_rate.to_be_bytes());
            b.extend_from_slice(&a.channels.to_be_bytes());
            put_pair(&mut b, a.time_base);
            b.extend_from_slice(&a.frame_size.to_be_bytes());
            put_bytes(&mut b, &a.extradata);
        }
        b
    }

    /// Parses [`StreamInfo::encode`]'s bytes. Any malformed input (unknown
    /// version, truncation, trailing bytes, oversized fields, a time base
    /// that is not positive, a codec name that is not printable ASCII) is a
    /// [`FormatError`].
    pub fn decode(b: &[u8]) -> Result<StreamInfo, FormatError> {
        let mut r = Reader::new(b);
        let version = r.u8()?;
        if version != INFO_VERSION {
            return Err(FormatError::new(format!(
                "stream info version {version}, expected {INFO_VERSION}"
            )));
        }
        let flags = r.u8()?;
        if flags & !3 != 0 {
            return Err(FormatError::new(format!(
                "unknown stream info flags {flags:#04x}"
            )));
        }
        let video = if flags & 1 != 0 {
            Some(VideoParams {
                codec: r.name()?,
                width: r.u32()?,
                height: r.u32()?,
                time_base: r.time_base()?,
                frame_rate: r.pair()?,
                extradata: r.bytes()?,
            })
        } else {
            None
        };
        let audio = if flags & 2 != 0 {
            Some(AudioParams {
                codec: r.name()?,
                sample_rate: r.u32()?,
                channels: r.u16()?,
                time_base: r.time_base()?,
                frame_size: r.u32()?,
                extradata: r.bytes()?,
            })
        } else {
            None
        };
        if !r.rest().is_empty() {
            return Err(FormatError::new(format!(
                "{} bytes after the stream info",
                r.rest().len()
            )));
        }
        Ok(StreamInfo { video, audio })
    }
}

fn put_name(b: &mut Vec<u8>, name: &str) {
    let name: Vec<u8> = name
        .bytes()
        .filter(|c| c.is_ascii_graphic())
        .take(MAX_CODEC_NAME)
        .collect();
    b.push(name.len() as u8); // at most MAX_CODEC_NAME = 32
    b.extend_from_slice(&name);
}

fn put_pair(b: &mut Vec<u8>, (num, den): (i32, i32)) {
    b.extend_from_slice(&num.to_be_bytes());
    b.extend_from_slice(&den.to_be_bytes());
}

fn put_bytes(b: &mut Vec<u8>, data: &[u8]) {
    let data = &data[..data.len().min(MAX_EXTRADATA)];
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
}

/// A bounds-checked reader over bytes: every read that would pass the end
/// is a [`FormatError`].
pub(crate) struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Reader<'a> {
        Reader { b }
    }

    pub(crate) fn rest(&self) -> &'a [u8] {
        self.b
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if n > self.b.len() {
            return Err(FormatError::new(format!(
                "truncated: {n} bytes needed, {} left",
                self.b.len()
            )));
        }
        let (head, tail) = self.b.split_at(n);
        self.b = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, FormatError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, FormatError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn pair(&mut self) -> Result<(i32, i32), FormatError> {
        let num = self.u32()? as i32;
        let den = self.u32()? as i32;
        Ok((num, den))
    }

    fn time_base(&mut self) -> Result<(i32, i32), FormatError> {
        let (num, den) = self.pair()?;
        if num <= 0 || den <= 0 {
            return Err(FormatError::new(format!("bad time base {num}/{den}")));
        }
        Ok((num, den))
    }

    fn name(&mut self) -> Result<String, FormatError> {
        let n = self.u8()? as usize;
        if n > MAX_CODEC_NAME {
            return Err(FormatError::new(format!(
                "codec name of {n} bytes, at most {MAX_CODEC_NAME}"
            )));
        }
        let name = self.take(n)?;
        if !name.iter().all(u8::is_ascii_graphic) {
            return Err(FormatError::new("codec name is not printable ASCII"));
        }
        // Printable ASCII is UTF-8.
        Ok(String::from_utf8_lossy(name).into_owned())
    }

    fn bytes(&mut self) -> Result<Vec<u8>, FormatError> {
        let n = self.u32()? as usize;
        if n > MAX_EXTRADATA {
            return Err(FormatError::new(format!(
                "extradata of {n} bytes, at most {MAX_EXTRADATA}"
            )));
        }
        Ok(self.take(n)?.to_vec())
    }
}

/// One compressed frame of one stream, as the demuxer or encoder gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Its stream.
    pub kind: Kind,
    /// Presentation time, in the stream's time base (see [`StreamInfo`]).
    pub pts: i64,
    /// Decoding time, in the stream's time base; `dts <= pts`.
    pub dts: i64,
    /// Duration in the stream's time base (0 if unknown).
    pub duration: i64,
    /// Whether decoding can start here (an IDR frame; every AAC packet).
    pub key: bool,
    /// The compressed bytes.
    pub data: Vec<u8>,
}

/// `v` in time base `from` converted to time base `to`, rounded to the
/// nearest (computed in 128 bits, saturating; bases must be positive).
pub fn rescale(v: i64, from: (i32, i32), to: (i32, i32)) -> i64 {
    let num = i128::from(from.0) * i128::from(to.1);
    let den = i128::from(from.1) * i128::from(to.0);
    if den == 0 {
        return 0;
    }
    let x = i128::from(v) * num;
    let q = if (x >= 0) == (den > 0) {
        (x + den / 2) / den
    } else {
        (x - den / 2) / den
    };
    q.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// Microseconds, as a time base.
pub const MICROS: (i32, i32) = (1, 1_000_000);

/// What went wrong in ingest, remux or probe.
#[derive(Debug)]
pub enum MediaError {
    /// The input (file, URL, test pattern) could not be opened.
    Open {
        /// The path or URL.
        input: String,
        /// FFmpeg's (or the OS's) reason.
        reason: String,
    },
    /// The input has neither an audio nor a video stream.
    NoStreams {
        /// The path or URL.
        input: String,
    },
    /// Reading or decoding the input failed after it was opened.
    Read {
        /// The path or URL.
        input: String,
        /// FFmpeg's reason.
        reason: String,
    },
    /// An encoder, decoder or filter could not be set up or failed.
    Codec {
        /// What was being done, e.g. "opening the H.264 encoder".
        what: String,
        /// FFmpeg's reason.
        reason: String,
    },
    /// The MPEG-TS muxer failed.
    Mux {
        /// What was being done, e.g. "writing the header".
        what: String,
        /// FFmpeg's (or the OS's) reason.
        reason: String,
    },
}

impl MediaError {
    pub(crate) fn codec(what: impl Into<String>, reason: impl fmt::Display) -> MediaError {
        MediaError::Codec {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn mux(what: impl Into<String>, reason: impl fmt::Display) -> MediaError {
        MediaError::Mux {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

impl fmt::Display for MediaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MediaError::Open { input, reason } => write!(f, "cannot open input {input}: {reason}"),
            MediaError::NoStreams { input } => write!(f, "no audio or video stream in {input}"),
            MediaError::Read { input, reason } => write!(f, "cannot read {input}: {reason}"),
            MediaError::Codec { what, reason } => write!(f, "{what}: {reason}"),
            MediaError::Mux { what, reason } => write!(f, "MPEG-TS output, {what}: {reason}"),
        }
    }
}

impl std::error::Error for MediaError {}

/// Malformed fragment payload or stream-info bytes (from the network: never
/// a panic, always this).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatError(String);

impl FormatError {
    pub(crate) fn new(msg: impl Into<String>) -> FormatError {
        FormatError(msg.into())
    }

    /// The reason, e.g. "truncated: 8 bytes needed, 3 left".
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed media data: {}", self.0)
    }
}

impl std::error::Error for FormatError {}

/// Helpers for the tests of the media modules.
#[cfg(test)]
pub(crate) mod testutil {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh directory under the system's temporary directory, removed
    /// with its contents when dropped.
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("p2p-media-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("a temporary directory");
            TempDir(dir)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Whether a command-line tool (`ffmpeg`, `ffprobe`) runs.
    pub(crate) fn have_tool(name: &str) -> bool {
        std::process::Command::new(name)
            .arg("-version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_info() -> StreamInfo {
        StreamInfo {
            video: Some(VideoParams {
                codec: "h264".into(),
                width: 1280,
                height: 720,
                time_base: (1, 90_000),
                frame_rate: (25, 1),
                extradata: vec![1, 0x64, 0, 0x1f, 0xff],
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

    #[test]
    fn stream_info_round_trips() {
        let full = sample_info();
        assert_eq!(StreamInfo::decode(&full.encode()), Ok(full.clone()));
        let audio_only = StreamInfo {
            video: None,
            ..full.clone()
        };
        assert_eq!(StreamInfo::decode(&audio_only.encode()), Ok(audio_only));
        let empty = StreamInfo::default();
        assert_eq!(StreamInfo::decode(&empty.encode()), Ok(empty));
    }

    #[test]
    fn stream_info_rejects_garbage() {
        let good = sample_info().encode();
        // Every truncation fails, and so do trailing bytes.
        for n in 0..good.len() {
            assert!(StreamInfo::decode(&good[..n]).is_err(), "prefix {n}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(StreamInfo::decode(&long).is_err());
        // Wrong version, unknown flags.
        let mut b = good.clone();
        b[0] = 9;
        assert!(StreamInfo::decode(&b)
            .unwrap_err()
            .message()
            .contains("version"));
        let mut b = good.clone();
        b[1] |= 4;
        assert!(StreamInfo::decode(&b).is_err());
        // A zero time base denominator.
        let mut info = sample_info();
        info.audio.as_mut().unwrap().time_base = (1, 0);
        assert!(StreamInfo::decode(&info.encode()).is_err());
        // An oversized extradata length does not allocate or panic.
        let mut b = vec![INFO_VERSION, 2, 3, b'a', b'a', b'c'];
        b.extend_from_slice(&48_000u32.to_be_bytes());
        b.extend_from_slice(&2u16.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&48_000u32.to_be_bytes());
        b.extend_from_slice(&1024u32.to_be_bytes());
        b.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(StreamInfo::decode(&b)
            .unwrap_err()
            .message()
            .contains("extradata"));
        // Random bytes never panic.
        let mut rng = crate::media::frag::tests::Rng(7);
        for _ in 0..20_000 {
            let n = rng.below(64) as usize;
            let mut b: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            if n > 0 && rng.below(2) == 0 {
                b[0] = INFO_VERSION;
            }
            let _ = StreamInfo::decode(&b);
        }
    }

    #[test]
    fn long_fields_are_cut_so_they_decode() {
        let mut info = sample_info();
        info.video.as_mut().unwrap().codec = "x".repeat(100);
        info.video.as_mut().unwrap().extradata = vec![7; MAX_EXTRADATA + 10];
        let back = StreamInfo::decode(&info.encode()).unwrap();
        let v = back.video.unwrap();
        assert_eq!(v.codec.len(), MAX_CODEC_NAME);
        assert_eq!(v.extradata.len(), MAX_EXTRADATA);
    }

    #[test]
    fn rescale_rounds() {
        assert_eq!(rescale(3, (1, 25), MICROS), 120_000);
        assert_eq!(rescale(1024, (1, 48_000), (1, 90_000)), 1920);
        assert_eq!(rescale(1, (1, 3), (1, 2)), 1); // 0.67 -> 1
        assert_eq!(rescale(-1, (1, 3), (1, 2)), -1);
        assert_eq!(rescale(i64::MAX, (1, 1), (1_000_000, 1)), 9_223_372_036_855);
        assert_eq!(rescale(i64::MAX, (1_000_000, 1), (1, 1)), i64::MAX);
    }
}
