//! What ingest, output and probe share on the FFmpeg side: one-time
//! initialisation, argument checks, stream selection, error mapping, and the
//! extradata read-back.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Once;

use ff::format::context::Input as FormatInput;
use ff::media::Type;
use ffmpeg_next as ff;

use super::{nal, MediaError};

/// Initialises FFmpeg once: devices (v4l2, lavfi, ...) registered, and its
/// log limited to warnings and errors (x264 prints its settings at "info").
pub(crate) fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = ff::init() {
            log::warn!("FFmpeg initialisation: {e}");
        }
        ff::log::set_level(ff::log::Level::Warning);
    });
}

/// Whether an FFmpeg error is EAGAIN (an encoder or decoder wants input, a
/// sink has no frame yet).
pub(crate) fn is_again(e: &ff::Error) -> bool {
    matches!(e, ff::Error::Other { errno } if *errno == ff::error::EAGAIN)
}

/// A path or URL as FFmpeg takes it: UTF-8 without NUL (the binding
/// panics on anything else, so check first).
pub(crate) fn c_arg(what: &str, s: &str) -> Result<String, MediaError> {
    if s.contains('\0') {
        return Err(MediaError::Open {
            input: what.to_string(),
            reason: "the name contains a NUL byte".into(),
        });
    }
    Ok(s.to_string())
}

/// A file path as FFmpeg takes it.
pub(crate) fn path_arg(path: &Path) -> Result<String, MediaError> {
    let shown = path.display().to_string();
    match path.to_str() {
        Some(s) => c_arg(&shown, s),
        None => Err(MediaError::Open {
            input: shown,
            reason: "the path is not UTF-8".into(),
        }),
    }
}

/// The index of the first stream of `medium` that is real content (not an
/// attached picture such as an MP3's cover).
pub(crate) fn first_stream(input: &FormatInput, medium: Type) -> Option<usize> {
    input
        .streams()
        .find(|s| {
            s.parameters().medium() == medium
                && !s
                    .disposition()
                    .contains(ff::format::stream::Disposition::ATTACHED_PIC)
        })
        .map(|s| s.index())
}

/// A rational as `(num, den)`.
pub(crate) fn pair(r: ff::Rational) -> (i32, i32) {
    (r.numerator(), r.denominator())
}

/// The extradata of a stream's codec parameters.
///
/// The safe binding has no accessor, so a Matroska header is written for a
/// copy of the parameters into a pipe and its CodecPrivate read back
/// ([`nal::mkv_codec_private`]). Empty when there is none or the codec
/// cannot go in Matroska.
pub(crate) fn extradata(params: &ff::codec::Parameters) -> Vec<u8> {
    let (mut reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => {
            log::warn!("extradata: no pipe: {e}");
            return Vec::new();
        }
    };
    let collect = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        // Headers are small; the bound only guards against surprises.
        let _ = (&mut reader).take(4 << 20).read_to_end(&mut bytes);
        bytes
    });
    let url = format!("pipe:{}", writer.as_raw_fd());
    // The muxer complains about codecs Matroska cannot take (an answer
    // here, not an error): keep FFmpeg quiet meanwhile (process-wide, for
    // the moment this takes).
    let level = ff::log::get_level().unwrap_or(ff::log::Level::Warning);
    ff::log::set_level(ff::log::Level::Quiet);
    let written = (|| -> Result<(), ff::Error> {
        let mut out = ff::format::output_as(&url, "matroska")?;
        let mut st = out.add_stream(None::<ff::Codec>)?;
        st.set_parameters(params.clone());
        // The copy keeps the input's codec tag (`avc1`, `mp4a`), which the
        // muxer refuses under the default strictness.
        let opts = ff::Dictionary::from_iter([("strict", "-1")]);
        out.write_header_with(opts)?;
        // Dropping `out` flushes its buffer into the pipe.
        Ok(())
    })();
    ff::log::set_level(level);
    drop(writer);
    let bytes = collect.join().unwrap_or_default();
    if let Err(e) = written {
        log::debug!("extradata: cannot write a Matroska header: {e}");
        return Vec::new();
    }
    nal::mkv_codec_private(&bytes).unwrap_or_default()
}
