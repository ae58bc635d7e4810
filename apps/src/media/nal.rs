//! Bitstream rewrites in plain Rust, so that no codec extradata has to be
//! handed to FFmpeg (the safe binding can neither set nor read it):
//!
//! - [`VideoFix`]: H.264/HEVC packets to Annex B with the parameter sets in
//!   front of every key packet (from `avcC`/`hvcC` or Annex B extradata);
//! - [`AudioFix`]: raw AAC packets to ADTS (headers from the
//!   AudioSpecificConfig);
//! - [`mkv_codec_private`]: the extradata read back from a Matroska header
//!   FFmpeg wrote for one stream (how ingest learns a file's extradata);
//! - [`parameter_sets`] and [`aac_config`]: extradata for the test pattern.

use std::borrow::Cow;

/// Start code put before every NAL unit.
const START: [u8; 4] = [0, 0, 0, 1];

/// H.264 or HEVC: the NAL unit type of a NAL's first bytes, and which types
/// are parameter sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Nal {
    H264,
    Hevc,
}

impl Nal {
    fn kind(self, nal: &[u8]) -> u8 {
        match (self, nal.first()) {
            (_, None) => 0xff,
            (Nal::H264, Some(b)) => b & 0x1f,
            (Nal::Hevc, Some(b)) => (b >> 1) & 0x3f,
        }
    }

    /// SPS for H.264 (7), SPS for HEVC (33): a key packet with one needs
    /// nothing in front.
    fn is_sps(self, nal: &[u8]) -> bool {
        let k = self.kind(nal);
        match self {
            Nal::H264 => k == 7,
            Nal::Hevc => k == 33,
        }
    }

    fn is_parameter_set(self, nal: &[u8]) -> bool {
        let k = self.kind(nal);
        match self {
            Nal::H264 => k == 7 || k == 8,
            Nal::Hevc => (32..=34).contains(&k),
        }
    }
}

/// Whether `data` starts with an Annex B start code.
fn is_annexb(data: &[u8]) -> bool {
    data.starts_with(&[0, 0, 1]) || data.starts_with(&[0, 0, 0, 1])
}

/// The NAL units of an Annex B buffer (without start codes).
fn annexb_nals(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new(); // (start code position, payload position)
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            let at = if i > 0 && data[i - 1] == 0 { i - 1 } else { i };
            starts.push((at, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut nals = Vec::new();
    for (n, &(_, from)) in starts.iter().enumerate() {
        let to = starts.get(n + 1).map_or(data.len(), |&(at, _)| at);
        if from < to {
            nals.push(&data[from..to]);
        }
    }
    nals
}

/// Length-prefixed NAL units (AVCC/HVCC framing) to Annex B; `None` if the
/// lengths do not add up.
fn length_prefixed_to_annexb(data: &[u8], len_size: usize, out: &mut Vec<u8>) -> Option<()> {
    let mut rest = data;
    while !rest.is_empty() {
        if rest.len() < len_size {
            return None;
        }
        let (len, tail) = rest.split_at(len_size);
        let len = len.iter().fold(0usize, |a, &b| a << 8 | usize::from(b));
        if len > tail.len() {
            return None;
        }
        out.extend_from_slice(&START);
        out.extend_from_slice(&tail[..len]);
        rest = &tail[len..];
    }
    Some(())
}

/// A big-endian cursor for the configuration records.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<usize> {
        let b = self.take(2)?;
        Some(usize::from(b[0]) << 8 | usize::from(b[1]))
    }
}

/// An `avcC` record: NAL length size and the parameter sets in Annex B.
fn parse_avcc(ex: &[u8]) -> Option<(usize, Vec<u8>)> {
    let mut c = Cursor(ex);
    if c.u8()? != 1 {
        return None;
    }
    c.take(3)?; // profile, compatibility, level
    let len_size = usize::from(c.u8()? & 3) + 1;
    let mut ps = Vec::new();
    for mask in [0x1f, 0xff] {
        let count = c.u8()? & mask; // SPS count (5 bits), then PPS count
        for _ in 0..count {
            let n = c.u16()?;
            ps.extend_from_slice(&START);
            ps.extend_from_slice(c.take(n)?);
        }
    }
    Some((len_size, ps))
}

/// An `hvcC` record: NAL length size and the parameter sets in Annex B.
fn parse_hvcc(ex: &[u8]) -> Option<(usize, Vec<u8>)> {
    let mut c = Cursor(ex);
    let head = c.take(22)?;
    if head[0] != 1 {
        return None;
    }
    let len_size = usize::from(head[21] & 3) + 1;
    let mut ps = Vec::new();
    for _ in 0..c.u8()? {
        c.u8()?; // array completeness, NAL type
        for _ in 0..c.u16()? {
            let n = c.u16()?;
            ps.extend_from_slice(&START);
            ps.extend_from_slice(c.take(n)?);
        }
    }
    Some((len_size, ps))
}

/// Rewrites video packets to Annex B with parameter sets at key packets
/// (what MPEG-TS needs); other codecs pass unchanged.
#[derive(Clone, Debug)]
pub(crate) struct VideoFix {
    nal: Option<Nal>,
    /// NAL length size when the packets are length-prefixed.
    len_size: Option<usize>,
    /// Parameter sets (Annex B) put before key packets that lack an SPS.
    ps: Vec<u8>,
}

impl VideoFix {
    pub(crate) fn new(codec: &str, extradata: &[u8]) -> VideoFix {
        let nal = match codec {
            "h264" => Some(Nal::H264),
            "hevc" => Some(Nal::Hevc),
            _ => None,
        };
        let (len_size, ps) = match nal {
            Some(n) if !extradata.is_empty() && !is_annexb(extradata) => {
                let parsed = match n {
                    Nal::H264 => parse_avcc(extradata),
                    Nal::Hevc => parse_hvcc(extradata),
                };
                match parsed {
                    Some((len, ps)) => (Some(len), ps),
                    None => {
                        log::warn!("{codec}: unreadable extradata; passing packets unchanged");
                        (None, Vec::new())
                    }
                }
            }
            Some(n) => {
                let mut ps = Vec::new();
                for unit in annexb_nals(extradata) {
                    if n.is_parameter_set(unit) {
                        ps.extend_from_slice(&START);
                        ps.extend_from_slice(unit);
                    }
                }
                (None, ps)
            }
            None => (None, Vec::new()),
        };
        VideoFix { nal, len_size, ps }
    }

    /// The packet as MPEG-TS wants it, or `None` if it is malformed.
    pub(crate) fn apply<'a>(&self, data: &'a [u8], key: bool) -> Option<Cow<'a, [u8]>> {
        let Some(nal) = self.nal else {
            return Some(Cow::Borrowed(data));
        };
        let mut out = Vec::new();
        let annexb: Cow<'a, [u8]> = match self.len_size {
            Some(len_size) => {
                let mut conv = Vec::with_capacity(data.len() + 16);
                if length_prefixed_to_annexb(data, len_size, &mut conv).is_some() {
                    Cow::Owned(conv)
                } else if is_annexb(data) {
                    Cow::Borrowed(data) // Annex B despite the avcC: keep it.
                } else {
                    return None;
                }
            }
            None if is_annexb(data) => Cow::Borrowed(data),
            None => return None,
        };
        if key && !self.ps.is_empty() && !annexb_nals(&annexb).iter().any(|u| nal.is_sps(u)) {
            out.extend_from_slice(&self.ps);
            out.extend_from_slice(&annexb);
            return Some(Cow::Owned(out));
        }
        Some(annexb)
    }
}

/// The Annex B parameter sets (H.264 SPS and PPS) of an Annex B packet:
/// extradata for a stream that also carries them in band.
pub(crate) fn parameter_sets(data: &[u8]) -> Vec<u8> {
    let mut ps = Vec::new();
    for unit in annexb_nals(data) {
        if Nal::H264.is_parameter_set(unit) {
            ps.extend_from_slice(&START);
            ps.extend_from_slice(unit);
        }
    }
    ps
}

/// MPEG-4 sampling frequency index table.
const AAC_RATES: [u32; 13] = [
    96_000, 88_200, 64_000, 48_000, 44_100, 32_000, 24_000, 22_050, 16_000, 12_000, 11_025, 8_000,
    7_350,
];

/// The AudioSpecificConfig of AAC-LC at `rate` with `channels` (1 to 7).
pub(crate) fn aac_config(rate: u32, channels: u16) -> Vec<u8> {
    let index = AAC_RATES.iter().position(|&r| r == rate).unwrap_or(3) as u16;
    let v: u16 = 2 << 11 | index << 7 | (channels.min(7)) << 3;
    v.to_be_bytes().to_vec()
}

/// Adds ADTS headers to raw AAC packets (what MPEG-TS needs); packets that
/// already have one, and other codecs, pass unchanged.
#[derive(Clone, Debug)]
pub(crate) struct AudioFix {
    aac: bool,
    /// The fixed part of the header: profile, rate index, channels.
    adts: Option<(u8, u8, u8)>,
}

impl AudioFix {
    pub(crate) fn new(codec: &str, extradata: &[u8]) -> AudioFix {
        let aac = codec == "aac";
        let adts = if aac { parse_asc(extradata) } else { None };
        if aac && adts.is_none() && !extradata.is_empty() {
            log::warn!("aac: unreadable AudioSpecificConfig; only ADTS packets will play");
        }
        AudioFix { aac, adts }
    }

    /// The packet as MPEG-TS wants it, or `None` if it cannot be framed.
    pub(crate) fn apply<'a>(&self, data: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        if !self.aac || (data.len() >= 2 && data[0] == 0xff && data[1] & 0xf0 == 0xf0) {
            return Some(Cow::Borrowed(data));
        }
        let (profile, index, channels) = self.adts?;
        let len = data.len() + 7;
        if len > 0x1fff {
            return None;
        }
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&[
            0xff,
            0xf1, // MPEG-4, layer 0, no CRC
            profile << 6 | index << 2 | channels >> 2,
            (channels & 3) << 6 | (len >> 11) as u8,
            (len >> 3) as u8,
            ((len & 7) as u8) << 5 | 0x1f,
            0xfc, // buffer fullness "variable", one raw data block
        ]);
        out.extend_from_slice(data);
        Some(Cow::Owned(out))
    }
}

/// ADTS fields (profile, rate index, channel configuration) from an
/// AudioSpecificConfig; HE-AAC (SBR, PS) is signalled as its AAC-LC core.
fn parse_asc(asc: &[u8]) -> Option<(u8, u8, u8)> {
    if asc.len() < 2 {
        return None;
    }
    let aot = asc[0] >> 3;
    let index = (asc[0] & 7) << 1 | asc[1] >> 7;
    let channels = (asc[1] >> 3) & 0xf;
    if index > 12 || channels > 7 {
        return None;
    }
    let profile = match aot {
        1..=4 => aot - 1,
        5 | 29 => 1, // SBR/PS over an AAC-LC core
        _ => return None,
    };
    Some((profile, index, channels))
}

/// An EBML element id or size (1 to 8 bytes); ids keep their marker bit.
fn ebml_vint(b: &[u8], keep_marker: bool) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let len = first.leading_zeros() as usize + 1;
    if len > 8 || b.len() < len {
        return None;
    }
    let mut v = u64::from(if keep_marker {
        first
    } else {
        first & (0xffu16 >> len) as u8
    });
    for &x in &b[1..len] {
        v = v << 8 | u64::from(x);
    }
    Some((v, len))
}

const EBML_SEGMENT: u64 = 0x1853_8067;
const EBML_TRACKS: u64 = 0x1654_ae6b;
const EBML_TRACK_ENTRY: u64 = 0xae;
const EBML_CODEC_PRIVATE: u64 = 0x63a2;
const EBML_CLUSTER: u64 = 0x1f43_b675;

/// The CodecPrivate of the first track in a Matroska header: the extradata
/// FFmpeg's muxer stored (`avcC` for H.264, the AudioSpecificConfig for
/// AAC). `None` if there is none or the bytes are not Matroska.
pub(crate) fn mkv_codec_private(b: &[u8]) -> Option<Vec<u8>> {
    let mut at = 0;
    // Elements we descend into; everything else is skipped.
    let descend = [EBML_SEGMENT, EBML_TRACKS, EBML_TRACK_ENTRY];
    while at < b.len() {
        let (id, n) = ebml_vint(&b[at..], true)?;
        let (size, m) = ebml_vint(&b[at + n..], false)?;
        let body = at + n + m;
        let unknown = size == (1u64 << (7 * m)) - 1;
        if id == EBML_CLUSTER {
            return None;
        }
        if descend.contains(&id) {
            at = body;
            continue;
        }
        if unknown {
            return None;
        }
        let end = body.checked_add(usize::try_from(size).ok()?)?;
        if end > b.len() {
            return None;
        }
        if id == EBML_CODEC_PRIVATE {
            return Some(b[body..end].to_vec());
        }
        at = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPS: &[u8] = &[0x67, 0x42, 0xc0, 0x1e, 0xda];
    const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];
    const IDR: &[u8] = &[0x65, 0x88, 0x84, 0x00, 0x33];
    const SLICE: &[u8] = &[0x41, 0x9a, 0x02];

    fn avcc() -> Vec<u8> {
        let mut ex = vec![1, 0x42, 0xc0, 0x1e, 0xff, 0xe1];
        ex.extend_from_slice(&(SPS.len() as u16).to_be_bytes());
        ex.extend_from_slice(SPS);
        ex.push(1);
        ex.extend_from_slice(&(PPS.len() as u16).to_be_bytes());
        ex.extend_from_slice(PPS);
        ex
    }

    fn prefixed(nals: &[&[u8]]) -> Vec<u8> {
        let mut b = Vec::new();
        for n in nals {
            b.extend_from_slice(&(n.len() as u32).to_be_bytes());
            b.extend_from_slice(n);
        }
        b
    }

    fn ap(fix: &VideoFix, data: Vec<u8>, key: bool) -> Option<Vec<u8>> {
        fix.apply(&data, key).map(Cow::into_owned)
    }

    fn annexb(nals: &[&[u8]]) -> Vec<u8> {
        let mut b = Vec::new();
        for n in nals {
            b.extend_from_slice(&START);
            b.extend_from_slice(n);
        }
        b
    }

    #[test]
    fn avcc_packets_become_annexb_with_parameter_sets_at_keys() {
        let fix = VideoFix::new("h264", &avcc());
        let key = ap(&fix, prefixed(&[IDR]), true);
        assert_eq!(key, Some(annexb(&[SPS, PPS, IDR])));
        let delta = ap(&fix, prefixed(&[SLICE, SLICE]), false);
        assert_eq!(delta, Some(annexb(&[SLICE, SLICE])));
        // A key packet that has its SPS gets nothing added.
        let inband = ap(&fix, prefixed(&[SPS, PPS, IDR]), true);
        assert_eq!(inband, Some(annexb(&[SPS, PPS, IDR])));
        // Bad lengths: dropped.
        assert_eq!(ap(&fix, vec![0, 0, 0, 9, 1], false), None);
        // Annex B despite the avcC: kept.
        assert_eq!(ap(&fix, annexb(&[SLICE]), false), Some(annexb(&[SLICE])));
    }

    #[test]
    fn annexb_extradata_is_put_before_keys_without_sps() {
        let fix = VideoFix::new("h264", &annexb(&[SPS, PPS]));
        assert_eq!(
            ap(&fix, annexb(&[IDR]), true),
            Some(annexb(&[SPS, PPS, IDR]))
        );
        assert_eq!(ap(&fix, annexb(&[SLICE]), false), Some(annexb(&[SLICE])));
        // Three-byte start codes are recognised.
        let short = [&[0, 0, 1][..], SPS, &[0, 0, 1], IDR].concat();
        assert_eq!(annexb_nals(&short), vec![SPS, IDR]);
        assert_eq!(
            parameter_sets(&annexb(&[SPS, PPS, IDR])),
            annexb(&[SPS, PPS])
        );
        // No extradata, Annex B packets: unchanged; other codecs: unchanged.
        let none = VideoFix::new("h264", &[]);
        assert_eq!(ap(&none, annexb(&[IDR]), true), Some(annexb(&[IDR])));
        assert_eq!(ap(&none, vec![1, 2, 3], true), None);
        let other = VideoFix::new("mpeg2video", &[1, 2]);
        assert_eq!(ap(&other, vec![1, 2, 3], true), Some(vec![1, 2, 3]));
    }

    #[test]
    fn hvcc_is_read() {
        let vps = [0x40, 0x01, 0x0c];
        let sps = [0x42, 0x01, 0x01];
        let mut ex = vec![1];
        ex.resize(21, 0);
        ex.push(3); // length size 4
        ex.push(2); // two arrays
        for unit in [&vps[..], &sps[..]] {
            ex.push(unit[0] >> 1);
            ex.extend_from_slice(&1u16.to_be_bytes());
            ex.extend_from_slice(&(unit.len() as u16).to_be_bytes());
            ex.extend_from_slice(unit);
        }
        let fix = VideoFix::new("hevc", &ex);
        let idr = [0x26, 0x01, 0xaf];
        let out = ap(&fix, prefixed(&[&idr]), true);
        assert_eq!(out, Some(annexb(&[&vps, &sps, &idr])));
    }

    #[test]
    fn raw_aac_gets_adts_headers() {
        let asc = aac_config(48_000, 2);
        assert_eq!(asc, vec![0x11, 0x90]);
        let fix = AudioFix::new("aac", &asc);
        let out = fix.apply(&[0xde, 0xad]).unwrap();
        assert_eq!(
            &out[..],
            &[0xff, 0xf1, 0x4c, 0x80, 0x01, 0x3f, 0xfc, 0xde, 0xad]
        );
        // ADTS already: unchanged.
        assert_eq!(&*fix.apply(&out).unwrap(), &out[..]);
        assert!(fix.apply(&vec![0; 9000]).is_none());
        // 44.1 kHz mono HE-AAC: signalled as its LC core.
        assert_eq!(parse_asc(&[0x2a, 0x08]), Some((1, 4, 1)));
        assert_eq!(parse_asc(&[0x12]), None);
        assert!(AudioFix::new("aac", &[]).apply(&[1, 2]).is_none());
        assert_eq!(&*AudioFix::new("mp3", &[]).apply(&[1, 2]).unwrap(), &[1, 2]);
    }

    #[test]
    fn matroska_codec_private_is_found() {
        // EBML header (skipped), Segment of unknown size, Info (skipped),
        // Tracks > TrackEntry > TrackNumber, CodecPrivate.
        let mut b = vec![0x1a, 0x45, 0xdf, 0xa3, 0x81, 0x00];
        b.extend_from_slice(&[
            0x18, 0x53, 0x80, 0x67, 0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ]);
        b.extend_from_slice(&[0x15, 0x49, 0xa9, 0x66, 0x82, 0xaa, 0xbb]);
        b.extend_from_slice(&[0x16, 0x54, 0xae, 0x6b, 0x8c]);
        b.extend_from_slice(&[0xae, 0x8a, 0xd7, 0x81, 0x01, 0x63, 0xa2, 0x84, 1, 2, 3, 4]);
        assert_eq!(mkv_codec_private(&b), Some(vec![1, 2, 3, 4]));
        // Truncated or garbage: None, never a panic.
        for n in 0..b.len() {
            let _ = mkv_codec_private(&b[..n]);
        }
        assert_eq!(mkv_codec_private(&[0xff; 40]), None);
        assert_eq!(mkv_codec_private(&[0x00; 40]), None);
    }
}
