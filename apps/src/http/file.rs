//! The on-demand file route: a [`FileBody`] served whole, by byte range
//! (`Range`) or from a time (`?t=SECONDS`), as its bytes arrive; and
//! the parsers of those requests.

use std::fmt::Write as _;
use std::io::{self, Write};

use libnet::net::TcpStream;

use super::{linger_close, respond, respond_with, response_head, Request, BATCH, MPEG_TS, TEXT};

/// A file served over HTTP while it may still be downloading (see `docs/http.md`).
pub trait FileBody {
    /// Its whole size in bytes.
    fn size(&self) -> u64;
    /// Where to start reading to play from `ms` milliseconds (a key frame).
    fn offset_at(&self, ms: u64) -> u64;
    /// Up to `max` bytes at `offset` (< size), parking the calling coroutine
    /// until at least one byte there is available. Calling it also tells the
    /// downloader where the player reads (it fetches from there first).
    /// An error means these bytes will not come (the download failed).
    fn read_at(&self, offset: u64, max: usize) -> std::io::Result<Vec<u8>>;
}

/// Serves the file route: the file, or with `?t=` its part from the key
/// frame at that time, whole (200) or one byte range of it (206, or 416).
/// The body is read with [`FileBody::read_at`] as it arrives; if the
/// download fails the connection is closed early (a short body).
pub(super) fn serve_file(
    conn: TcpStream,
    name: &str,
    file: &dyn FileBody,
    req: &Request,
    head_only: bool,
) {
    let Ok(seek) = seek_ms(&req.query) else {
        let body = b"400 Bad Request: t must be seconds, like t=12 or t=12.5\n";
        if respond(&conn, 400, TEXT, body, head_only).is_ok() {
            linger_close(conn);
        }
        return;
    };
    let size = file.size();
    // The representation served: the file from `base` on.
    let base = seek.map_or(0, |ms| file.offset_at(ms).min(size));
    let len = size - base;
    let (status, first, end, content_range) = match req.range.map(|r| r.span(len)) {
        None | Some(Span::Whole) => (200, 0, len, String::new()),
        Some(Span::Part { first, last }) => (
            206,
            first,
            last + 1,
            format!("Content-Range: bytes {first}-{last}/{len}\r\n"),
        ),
        Some(Span::Unsatisfiable) => {
            let extra = format!("Accept-Ranges: bytes\r\nContent-Range: bytes */{len}\r\n");
            let body = b"416 Range Not Satisfiable\n";
            if respond_with(&conn, 416, &extra, TEXT, body, head_only).is_ok() {
                linger_close(conn);
            }
            return;
        }
    };
    let extra = format!("Accept-Ranges: bytes\r\n{content_range}");
    let head = response_head(status, &extra, file_type(name), end - first);
    if (&conn).write_all(head.as_bytes()).is_err() {
        return;
    }
    if head_only {
        linger_close(conn);
        return;
    }
    let (mut at, end) = (base + first, base + end);
    log::debug!("http: {name}: sending bytes {at}..{end} of {size}");
    while at < end {
        let max = (end - at).min(BATCH as u64) as usize;
        // Parks until the bytes are there; no borrow is held across it.
        let read = file.read_at(at, max).and_then(|b| {
            if b.is_empty() {
                Err(io::Error::other("read_at gave no bytes"))
            } else {
                Ok(b)
            }
        });
        let mut bytes = match read {
            Ok(b) => b,
            Err(e) => {
                log::warn!("http: {name}: bytes at {at} will not come ({e}); response cut short");
                break;
            }
        };
        bytes.truncate(max);
        if (&conn).write_all(&bytes).is_err() {
            // The client left (or stopped reading for WRITE_TIMEOUT).
            return;
        }
        at += bytes.len() as u64;
    }
    linger_close(conn);
}

/// One byte range of a `Range: bytes=...` header, before it meets a size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ByteRange {
    /// `first-` or `first-last` (`last >= first`), positions inclusive.
    From { first: u64, last: Option<u64> },
    /// `-n`: the last `n` bytes.
    Suffix(u64),
}

/// A [`ByteRange`] applied to a representation of some length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Span {
    /// Serve the whole representation with 200.
    Whole,
    /// Serve bytes `first..=last` with 206.
    Part { first: u64, last: u64 },
    /// Answer 416.
    Unsatisfiable,
}

impl ByteRange {
    /// The range within `len` bytes, per RFC 9110 section 14.1.2: a last
    /// position past the end is clamped, a suffix longer than the whole is
    /// the whole; a first position at or past the end, or an empty suffix,
    /// cannot be satisfied. A suffix of an empty representation is served
    /// whole (200), as no `Content-Range` can describe it.
    fn span(self, len: u64) -> Span {
        match self {
            ByteRange::From { first, .. } if first >= len => Span::Unsatisfiable,
            ByteRange::From { first, last } => Span::Part {
                first,
                last: last.map_or(len - 1, |l| l.min(len - 1)),
            },
            ByteRange::Suffix(0) => Span::Unsatisfiable,
            ByteRange::Suffix(_) if len == 0 => Span::Whole,
            ByteRange::Suffix(n) => Span::Part {
                first: len - n.min(len),
                last: len - 1,
            },
        }
    }
}

/// The content type of a file served under `name`.
fn file_type(name: &str) -> &'static str {
    let ends = |ext: &str| {
        name.len() >= ext.len()
            && name.as_bytes()[name.len() - ext.len()..].eq_ignore_ascii_case(ext.as_bytes())
    };
    if ends(".ts") {
        MPEG_TS
    } else if ends(".mp4") {
        "video/mp4"
    } else {
        "application/octet-stream"
    }
}

/// Whether request path `path` names the file `name`: `/file`, or `/` and
/// the name once percent-decoded. `Err` for a malformed `%` escape.
pub(super) fn file_path_matches(path: &str, name: &str) -> Result<bool, ()> {
    if path == "/file" {
        return Ok(true);
    }
    let decoded = percent_decode(path)?;
    Ok(decoded.first() == Some(&b'/') && decoded[1..] == *name.as_bytes())
}

/// `s` with each `%XX` replaced by its byte; `Err` for a `%` not followed
/// by two hex digits.
fn percent_decode(s: &str) -> Result<Vec<u8>, ()> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            match (
                b.get(i + 1).and_then(|&c| hex(c)),
                b.get(i + 2).and_then(|&c| hex(c)),
            ) {
                (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                _ => return Err(()),
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// `name` made safe as a URL path: bytes other than unreserved ones and `/`
/// as `%XX`.
pub(super) fn percent_encode(name: &str) -> String {
    let mut s = String::with_capacity(name.len());
    for &b in name.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            s.push(b as char);
        } else {
            let _ = write!(s, "%{b:02X}");
        }
    }
    s
}

/// The time `t=SECONDS` in `query` asks for, in milliseconds: `Ok(None)`
/// without one, `Err` for a bad value (not decimal seconds, or given twice).
/// Other parameters are ignored.
fn seek_ms(query: &str) -> Result<Option<u64>, ()> {
    let mut ms = None;
    for param in query.split('&') {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        if key != "t" {
            continue;
        }
        let value = String::from_utf8(percent_decode(value)?).map_err(|_| ())?;
        if ms.replace(parse_seconds(&value).ok_or(())?).is_some() {
            return Err(());
        }
    }
    Ok(ms)
}

/// Decimal seconds (`12`, `12.5`, `.5`, `12.`; no sign or exponent) in
/// whole milliseconds (truncated); `None` if malformed or too large.
fn parse_seconds(s: &str) -> Option<u64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
        return None;
    }
    let whole = if int.is_empty() {
        0
    } else {
        int.parse::<u64>().ok()?
    };
    let milli = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0, |m, b| m * 10 + u64::from(b - b'0'));
    whole.checked_mul(1000)?.checked_add(milli)
}

/// Parses a `Range` header value: one byte range (`bytes=A-B`, `bytes=A-`,
/// `bytes=-N`). `None` for anything else, including several ranges, which
/// the file route then ignores (RFC 9110 lets a server ignore `Range`).
/// Numbers too large for a `u64` saturate, which keeps their meaning (a
/// first position past any end, a last position or suffix past the start).
pub(super) fn parse_range(value: &[u8]) -> Option<ByteRange> {
    let value = std::str::from_utf8(value).ok()?;
    let (unit, set) = value.split_once('=')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    // A list: empty elements are allowed, one range is served.
    let mut specs = set
        .split(',')
        .map(|s| s.trim_matches([' ', '\t']))
        .filter(|s| !s.is_empty());
    let (Some(spec), None) = (specs.next(), specs.next()) else {
        return None;
    };
    let number = |d: &str| {
        (!d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())).then(|| {
            d.bytes().fold(0u64, |n, b| {
                n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
            })
        })
    };
    let (first, last) = spec.split_once('-')?;
    if first.is_empty() {
        return number(last).map(ByteRange::Suffix);
    }
    let first = number(first)?;
    let last = if last.is_empty() {
        None
    } else {
        Some(number(last).filter(|&l| l >= first)?)
    };
    Some(ByteRange::From { first, last })
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{parse_head, Routes, MAX_CLIENTS};
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::io::Read;
    use std::rc::Rc;
    use std::time::Duration;

    /// Bytes per second of [`Arriving`]'s media: a key frame starts each
    /// second.
    const KEY_BYTES: u64 = 10_000;

    /// A file in memory whose bytes arrive over time, from the start,
    /// recording what the server asks of it.
    struct Arriving {
        bytes: Vec<u8>,
        /// Bytes there so far, from the start.
        arrived: Cell<u64>,
        /// Set: the bytes not there yet will not come.
        failed: Cell<bool>,
        /// The offsets `read_at` was called with, in order.
        asked: RefCell<Vec<u64>>,
        /// The times `offset_at` was called with, in order.
        seeks: RefCell<Vec<u64>>,
    }

    impl FileBody for Arriving {
        fn size(&self) -> u64 {
            self.bytes.len() as u64
        }

        fn offset_at(&self, ms: u64) -> u64 {
            self.seeks.borrow_mut().push(ms);
            ms / 1000 * KEY_BYTES
        }

        fn read_at(&self, offset: u64, max: usize) -> io::Result<Vec<u8>> {
            self.asked.borrow_mut().push(offset);
            while self.arrived.get() <= offset {
                if self.failed.get() {
                    return Err(io::Error::other("download failed"));
                }
                libnet::time::sleep(Duration::from_millis(1));
            }
            let end = self.arrived.get().min(offset + max as u64);
            Ok(self.bytes[offset as usize..end as usize].to_vec())
        }
    }

    /// A file of `len` pattern bytes, `arrived` of them there.
    fn arriving(len: usize, arrived: usize) -> Rc<Arriving> {
        Rc::new(Arriving {
            bytes: pattern(0, len),
            arrived: Cell::new(arrived as u64),
            failed: Cell::new(false),
            asked: RefCell::default(),
            seeks: RefCell::default(),
        })
    }

    /// The text routes and `file` under `name`.
    fn file_routes(name: &str, file: &Rc<Arriving>) -> Routes {
        Routes {
            file: Some((name.to_string(), file.clone() as Rc<dyn FileBody>)),
            ..text_routes()
        }
    }

    #[test]
    fn a_file_still_downloading_is_sent_as_its_bytes_arrive() {
        run(|| {
            const LEN: usize = 300_000;
            let file = arriving(LEN, 0);
            let addr = serve_on_loopback(file_routes("film.ts", &file));
            let c = connect(addr);
            (&c).write_all(b"GET /film.ts HTTP/1.1\r\nHost: t\r\n\r\n")
                .expect("request");
            let head = head_of(&c);
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
            assert_eq!(header(&head, "content-length"), Some("300000"));
            assert_eq!(header(&head, "content-type"), Some(MPEG_TS));
            assert_eq!(header(&head, "accept-ranges"), Some("bytes"));
            assert_eq!(header(&head, "connection"), Some("close"));
            assert_eq!(header(&head, "content-range"), None);
            // Nothing has arrived: the server waits in read_at.
            c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let e = (&c).read(&mut [0u8; 1]).expect_err("no byte yet");
            assert_eq!(e.kind(), io::ErrorKind::TimedOut);
            assert_eq!(file.asked.borrow()[..], [0]);
            c.set_read_timeout(Some(PATIENCE)).unwrap();
            let feeder = libnet::spawn({
                let file = file.clone();
                move || {
                    while file.arrived.get() < LEN as u64 {
                        libnet::time::sleep(Duration::from_millis(2));
                        file.arrived
                            .set((file.arrived.get() + 7_000).min(LEN as u64));
                    }
                }
            });
            let body = read_until_closed(&c);
            feeder.join().expect("feeder");
            assert!(
                body == pattern(0, LEN),
                "bytes differ ({} read)",
                body.len()
            );
            // Read in the pieces that had arrived, each where the last ended.
            let asked = file.asked.borrow();
            assert!(asked.len() > LEN / BATCH + 1, "{asked:?}");
            assert!(asked.windows(2).all(|w| w[0] < w[1]), "{asked:?}");
        });
    }

    #[test]
    fn file_responses_have_their_type_and_head_sends_no_body() {
        run(|| {
            let file = arriving(5_000, 5_000);
            for (name, content_type) in [
                ("a.ts", MPEG_TS),
                ("b.MP4", "video/mp4"),
                ("c.mkv", "application/octet-stream"),
                ("ts", "application/octet-stream"),
            ] {
                let addr = serve_on_loopback(file_routes(name, &file));
                for target in [format!("/{name}"), "/file".to_string()] {
                    let request = format!("HEAD {target} HTTP/1.1\r\n\r\n");
                    let (head, body) = exchange(addr, request.as_bytes());
                    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
                    assert_eq!(header(&head, "content-type"), Some(content_type));
                    assert_eq!(header(&head, "content-length"), Some("5000"));
                    assert_eq!(header(&head, "accept-ranges"), Some("bytes"));
                    assert!(body.is_empty());
                }
                let (head, body) = get(addr, "/file", "");
                assert_eq!(header(&head, "content-type"), Some(content_type));
                assert!(body == pattern(0, 5_000));
                let (head, _) = exchange(addr, b"POST /file HTTP/1.1\r\n\r\n");
                assert_eq!(status(&head), 405, "{head}");
                assert_eq!(header(&head, "allow"), Some("GET, HEAD"));
            }
            let addr = serve_on_loopback(file_routes("a.ts", &file));
            let (head, body) = exchange(addr, b"HEAD /a.ts HTTP/1.1\r\nRange: bytes=10-19\r\n\r\n");
            assert_eq!(status(&head), 206, "{head}");
            assert_eq!(header(&head, "content-range"), Some("bytes 10-19/5000"));
            assert_eq!(header(&head, "content-length"), Some("10"));
            assert!(body.is_empty());
            // The GETs read; the HEADs did not.
            assert_eq!(file.asked.borrow()[..], [0, 0, 0, 0]);
        });
    }

    #[test]
    fn byte_ranges_get_206_with_their_bytes_or_416() {
        run(|| {
            const LEN: u64 = 200_000;
            let file = arriving(LEN as usize, LEN as usize);
            let addr = serve_on_loopback(file_routes("a.ts", &file));
            let parts: &[(&str, u64, u64)] = &[
                ("bytes=100-199", 100, 199),
                ("bytes=150000-", 150_000, LEN - 1),
                ("bytes=-500", LEN - 500, LEN - 1),
                ("bytes=-300000", 0, LEN - 1),
                ("bytes=190000-999999", 190_000, LEN - 1),
                ("bytes=0-0", 0, 0),
                ("bytes=0-", 0, LEN - 1),
                ("Bytes= 5-9 ,", 5, 9),
                ("bytes=7-99999999999999999999999", 7, LEN - 1),
            ];
            for &(range, first, last) in parts {
                let (head, body) = get(addr, "/a.ts", &format!("Range: {range}\r\n"));
                assert!(
                    head.starts_with("HTTP/1.1 206 Partial Content\r\n"),
                    "{range}: {head}"
                );
                let want = format!("bytes {first}-{last}/{LEN}");
                assert_eq!(header(&head, "content-range"), Some(&want[..]), "{range}");
                let n = last + 1 - first;
                assert_eq!(header(&head, "content-length"), Some(&n.to_string()[..]));
                assert_eq!(header(&head, "accept-ranges"), Some("bytes"));
                assert_eq!(header(&head, "content-type"), Some(MPEG_TS));
                assert!(body == pattern(first, n as usize), "{range}: bytes differ");
                // The first read is where the range starts.
                assert_eq!(file.asked.borrow_mut().drain(..).next(), Some(first));
            }
            for range in [
                "bytes=200000-",
                "bytes=200000-200001",
                "bytes=-0",
                "bytes=99999999999999999999999-",
            ] {
                let (head, body) = get(addr, "/a.ts", &format!("Range: {range}\r\n"));
                assert_eq!(status(&head), 416, "{range}: {head}");
                assert_eq!(header(&head, "content-range"), Some("bytes */200000"));
                assert_eq!(header(&head, "accept-ranges"), Some("bytes"));
                let len: usize = header(&head, "content-length").unwrap().parse().unwrap();
                assert_eq!(body.len(), len);
            }
            assert!(file.asked.borrow().is_empty(), "416 reads nothing");
            // Malformed, several ranges, two headers: ignored, 200 whole.
            for headers in [
                "Range: bytes=\r\n",
                "Range: bytes=-\r\n",
                "Range: bytes=5-3\r\n",
                "Range: bytes=a-b\r\n",
                "Range: items=0-1\r\n",
                "Range: bytes 0-1\r\n",
                "Range: bytes=--1\r\n",
                "Range: bytes=1-2-3\r\n",
                "Range: bytes=+1-2\r\n",
                "Range: bytes=0-1,5-9\r\n",
                "Range: bytes=0-1\r\nRange: bytes=0-1\r\n",
                "Range: \r\n",
            ] {
                let (head, body) = get(addr, "/a.ts", headers);
                assert!(
                    head.starts_with("HTTP/1.1 200 OK\r\n"),
                    "{headers:?}: {head}"
                );
                assert_eq!(header(&head, "content-range"), None);
                assert_eq!(header(&head, "content-length"), Some("200000"));
                assert!(
                    body == pattern(0, LEN as usize),
                    "{headers:?}: bytes differ"
                );
            }
        });
    }

    #[test]
    fn t_starts_at_the_offset_of_that_time() {
        run(|| {
            const LEN: u64 = 200_000;
            let file = arriving(LEN as usize, LEN as usize);
            let addr = serve_on_loopback(file_routes("a.ts", &file));
            let cases: &[(&str, u64, u64)] = &[
                ("/a.ts?t=12.5", 12_500, 120_000),
                ("/a.ts?x=1&t=3", 3_000, 30_000),
                ("/file?t=.25", 250, 0),
                ("/a.ts?t=7.", 7_000, 70_000),
                ("/a.ts?t=1.9999", 1_999, 10_000),
                ("/a.ts?t=%31%32#frag", 12_000, 120_000),
                // Past the end: nothing left.
                ("/a.ts?t=9999", 9_999_000, LEN),
            ];
            for &(target, ms, offset) in cases {
                let (head, body) = get(addr, target, "");
                assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{target}: {head}");
                let n = LEN - offset;
                assert_eq!(header(&head, "content-length"), Some(&n.to_string()[..]));
                assert_eq!(header(&head, "accept-ranges"), Some("bytes"));
                assert!(
                    body == pattern(offset, n as usize),
                    "{target}: bytes differ"
                );
                assert_eq!(file.seeks.borrow_mut().drain(..).collect::<Vec<_>>(), [ms]);
                let asked: Vec<u64> = file.asked.borrow_mut().drain(..).collect();
                assert_eq!(
                    asked.first().copied(),
                    (n > 0).then_some(offset),
                    "{target}"
                );
            }
            // A range is of the part from that time on.
            let (head, body) = get(addr, "/a.ts?t=12", "Range: bytes=10-109\r\n");
            assert_eq!(status(&head), 206, "{head}");
            assert_eq!(header(&head, "content-range"), Some("bytes 10-109/80000"));
            assert!(body == pattern(120_010, 100));
            let (head, _) = get(addr, "/a.ts?t=12", "Range: bytes=80000-\r\n");
            assert_eq!(status(&head), 416, "{head}");
            assert_eq!(header(&head, "content-range"), Some("bytes */80000"));
            let (head, body) = exchange(addr, b"HEAD /a.ts?t=1 HTTP/1.1\r\n\r\n");
            assert_eq!(header(&head, "content-length"), Some("190000"));
            assert!(body.is_empty());
            file.seeks.borrow_mut().clear();
            for bad in [
                "t=abc",
                "t=-1",
                "t=+1",
                "t=1e3",
                "t=",
                "t",
                "t=.",
                "t=1.2.3",
                "t=%zz",
                "t=1&t=2",
                "t=1%200",
                "t=99999999999999999999",
                "t=18446744073709552",
            ] {
                let (head, body) = get(addr, &format!("/a.ts?{bad}"), "");
                assert_eq!(status(&head), 400, "{bad}: {head}");
                let len: usize = header(&head, "content-length").unwrap().parse().unwrap();
                assert_eq!(body.len(), len);
            }
            assert!(file.seeks.borrow().is_empty());
            // Other routes ignore the query.
            let (head, _) = get(addr, "/metrics?t=abc", "");
            assert_eq!(status(&head), 200, "{head}");
        });
    }

    #[test]
    fn the_file_is_found_by_its_percent_decoded_name() {
        run(|| {
            let file = arriving(1_000, 1_000);
            let name = "my film (1) é.ts";
            let addr = serve_on_loopback(file_routes(name, &file));
            let cases: &[(&str, u16)] = &[
                ("/my%20film%20%281%29%20%C3%A9.ts", 200),
                ("/my%20film%20(1)%20%c3%a9.ts", 200),
                ("/file", 200),
                ("http://h/my%20film%20%281%29%20%C3%A9.ts?t=0", 200),
                ("/my%20Film%20%281%29%20%C3%A9.ts", 404),
                ("/my%20film%20%281%29%20%C3%A9.ts/", 404),
                ("/other.ts", 404),
                ("/files", 404),
                ("/%ff", 404),
                ("/%zz", 400),
                ("/a%4", 400),
                ("/a%", 400),
            ];
            for &(target, want) in cases {
                let (head, body) = get(addr, target, "");
                assert_eq!(status(&head), want, "{target}: {head}");
                if want == 200 {
                    assert!(body == pattern(0, 1_000), "{target}: bytes differ");
                }
            }
            // Fixed routes come first.
            let (_, body) = get(addr, "/metrics", "");
            assert_eq!(body, b"up 1\n");
            let (_, body) = get(addr, "/", "");
            let index = String::from_utf8(body).expect("text");
            assert!(
                index.contains("/my%20film%20%281%29%20%C3%A9.ts "),
                "{index}"
            );
            assert!(index.contains("/file"), "{index}");
        });
    }

    #[test]
    fn a_failed_download_cuts_the_body_short() {
        run(|| {
            let file = arriving(300_000, 100_000);
            file.failed.set(true);
            let addr = serve_on_loopback(file_routes("a.ts", &file));
            let (head, body) = get(addr, "/a.ts", "");
            assert_eq!(header(&head, "content-length"), Some("300000"));
            assert!(body == pattern(0, 100_000), "{} bytes", body.len());
            let (head, body) = get(addr, "/a.ts", "Range: bytes=150000-\r\n");
            assert_eq!(status(&head), 206, "{head}");
            assert!(body.is_empty());
            // The server is fine.
            file.failed.set(false);
            file.arrived.set(300_000);
            let (_, body) = get(addr, "/a.ts", "");
            assert!(body == pattern(0, 300_000));
        });
    }

    #[test]
    fn reads_ask_first_for_where_each_player_reads() {
        run(|| {
            const LEN: usize = 300_000;
            let file = arriving(LEN, 0);
            let addr = serve_on_loopback(file_routes("a.ts", &file));
            let a = connect(addr);
            (&a).write_all(b"GET /a.ts HTTP/1.1\r\nRange: bytes=250000-\r\n\r\n")
                .expect("request");
            assert_eq!(status(&head_of(&a)), 206);
            wait_until("a read at 250000", || file.asked.borrow()[..] == [250_000]);
            let b = connect(addr);
            (&b).write_all(b"GET /a.ts?t=7 HTTP/1.1\r\n\r\n")
                .expect("request");
            assert_eq!(status(&head_of(&b)), 200);
            wait_until("b read at 70000", || {
                file.asked.borrow()[..] == [250_000, 70_000]
            });
            file.arrived.set(LEN as u64);
            assert!(read_until_closed(&a) == pattern(250_000, 50_000));
            assert!(read_until_closed(&b) == pattern(70_000, LEN - 70_000));
        });
    }

    #[test]
    fn file_readers_waiting_for_bytes_count_against_max_clients() {
        run(|| {
            let file = arriving(1_000, 0);
            let addr = serve_on_loopback(file_routes("a.ts", &file));
            let waiting: Vec<TcpStream> = (0..MAX_CLIENTS)
                .map(|_| {
                    let c = connect(addr);
                    (&c).write_all(b"GET /file HTTP/1.1\r\n\r\n")
                        .expect("request");
                    c
                })
                .collect();
            wait_until("all waiting", || file.asked.borrow().len() == MAX_CLIENTS);
            let (head, _) = get(addr, "/file", "");
            assert_eq!(status(&head), 503, "{head}");
            file.arrived.set(1_000);
            for c in &waiting {
                let (head, body) = split(&read_until_closed(c));
                assert_eq!(status(&head), 200, "{head}");
                assert!(body == pattern(0, 1_000));
            }
        });
    }

    #[test]
    fn ranges_parse_and_meet_sizes() {
        use ByteRange::{From, Suffix};
        let cases: &[(&[u8], Option<ByteRange>)] = &[
            (
                b"bytes=0-499",
                Some(From {
                    first: 0,
                    last: Some(499),
                }),
            ),
            (
                b"bytes=500-",
                Some(From {
                    first: 500,
                    last: None,
                }),
            ),
            (b"bytes=-500", Some(Suffix(500))),
            (
                b"BYTES=1-1",
                Some(From {
                    first: 1,
                    last: Some(1),
                }),
            ),
            (
                b"bytes=, 1-2 ,\t",
                Some(From {
                    first: 1,
                    last: Some(2),
                }),
            ),
            (
                b"bytes=99999999999999999999-",
                Some(From {
                    first: u64::MAX,
                    last: None,
                }),
            ),
            (b"bytes=-99999999999999999999", Some(Suffix(u64::MAX))),
            (b"bytes=2-1", None),
            (b"bytes=0-1,2-3", None),
            (b"bytes=", None),
            (b"bytes=,", None),
            (b"bytes=-", None),
            (b"bytes=1", None),
            (b"bytes =1-2", None),
            (b"bytes= 1 - 2", None),
            (b"bytes=0x1-2", None),
            (b"bytes=\xff-1", None),
            (b"pages=1-2", None),
            (b"", None),
            (b"=", None),
        ];
        for &(value, want) in cases {
            assert_eq!(
                parse_range(value),
                want,
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
        let part = |first, last| Span::Part { first, last };
        assert_eq!(
            From {
                first: 0,
                last: Some(9)
            }
            .span(5),
            part(0, 4)
        );
        assert_eq!(
            From {
                first: 4,
                last: None
            }
            .span(5),
            part(4, 4)
        );
        assert_eq!(
            From {
                first: 5,
                last: None
            }
            .span(5),
            Span::Unsatisfiable
        );
        assert_eq!(
            From {
                first: 0,
                last: None
            }
            .span(0),
            Span::Unsatisfiable
        );
        assert_eq!(Suffix(2).span(5), part(3, 4));
        assert_eq!(Suffix(9).span(5), part(0, 4));
        assert_eq!(Suffix(0).span(5), Span::Unsatisfiable);
        assert_eq!(Suffix(3).span(0), Span::Whole);
        // In the head: one Range header, the query kept raw.
        let req = parse_head(b"GET /a%20b?t=1&x HTTP/1.1\r\nrange:  bytes=-5 \r\n\r\n").unwrap();
        assert_eq!(req.path, "/a%20b");
        assert_eq!(req.query, "t=1&x");
        assert_eq!(req.range, Some(Suffix(5)));
        let two = b"GET / HTTP/1.1\r\nRange: bytes=1-\r\nRange: bytes=1-\r\n\r\n";
        assert_eq!(parse_head(two).unwrap().range, None);
        let bad = b"GET / HTTP/1.1\r\nRange: lots\r\n\r\n";
        assert_eq!(parse_head(bad).unwrap().range, None);
        let req = parse_head(b"GET http://h?t=2#x HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!((req.path.as_str(), req.query.as_str()), ("/", "t=2"));
    }

    #[test]
    fn times_and_escapes_parse() {
        let times: &[(&str, Option<u64>)] = &[
            ("12", Some(12_000)),
            ("12.5", Some(12_500)),
            ("0.0015", Some(1)),
            (".5", Some(500)),
            ("3.", Some(3_000)),
            ("0", Some(0)),
            ("18446744073709551", Some(18_446_744_073_709_551_000)),
            ("18446744073709552", None),
            ("", None),
            (".", None),
            ("-1", None),
            ("1e3", None),
            (" 1", None),
            ("1.2.3", None),
            ("١", None),
        ];
        for &(s, want) in times {
            assert_eq!(parse_seconds(s), want, "{s:?}");
        }
        assert_eq!(seek_ms(""), Ok(None));
        assert_eq!(seek_ms("a=b&&tt=1&T=2"), Ok(None));
        assert_eq!(seek_ms("a&t=1.5&b=%zz"), Ok(Some(1_500)));
        assert_eq!(seek_ms("t=1&t=1"), Err(()));
        assert_eq!(seek_ms("t=%ff"), Err(()));
        assert_eq!(
            percent_decode("/a%20b%2F%c3%A9"),
            Ok(b"/a b/\xc3\xa9".to_vec())
        );
        for bad in ["%", "%2", "%g0", "a%%20", "%2g"] {
            assert_eq!(percent_decode(bad), Err(()), "{bad}");
        }
        let name = "a b/%é?#.ts";
        assert_eq!(percent_encode(name), "a%20b/%25%C3%A9%3F%23.ts");
        let encoded = format!("/{}", percent_encode(name));
        assert_eq!(file_path_matches(&encoded, name), Ok(true));
        assert_eq!(file_path_matches("/file", name), Ok(true));
        assert_eq!(file_path_matches("/", ""), Ok(true));
        assert_eq!(file_path_matches("/x", name), Ok(false));
        assert_eq!(file_type("x.Ts"), MPEG_TS);
        assert_eq!(file_type(".mp4"), "video/mp4");
        assert_eq!(file_type("x.mp4.part"), "application/octet-stream");
    }

    #[test]
    fn range_and_query_garbage_never_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"bytes=-,0123456789 \t%.&t?#\xff9";
        for case in 0..20_000 {
            let len = (next() % 40) as usize;
            let bytes: Vec<u8> = match case % 3 {
                0 => (0..len).map(|_| next() as u8).collect(),
                1 => (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect(),
                _ => {
                    let mut v = b"bytes=".to_vec();
                    v.extend((0..len).map(|_| b"-0123456789,"[(next() % 12) as usize]));
                    v
                }
            };
            let size = match next() % 4 {
                0 => 0,
                1 => next() % 10,
                2 => u64::MAX,
                _ => next(),
            };
            if let Some(range) = parse_range(&bytes) {
                match range.span(size) {
                    Span::Part { first, last } => {
                        assert!(first <= last && last < size, "{range:?} of {size}")
                    }
                    Span::Whole => assert_eq!(size, 0),
                    Span::Unsatisfiable => {}
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            let _ = (seek_ms(&text), parse_seconds(&text), percent_decode(&text));
            let _ = file_path_matches(&text, "a.ts");
            let mut head = b"GET /?".to_vec();
            head.extend(bytes.iter().filter(|b| b.is_ascii_graphic()));
            head.extend_from_slice(b" HTTP/1.1\r\nRange: ");
            head.extend(bytes.iter().filter(|&&b| b != b'\r' && b != b'\n'));
            head.extend_from_slice(b"\r\n\r\n");
            let _ = parse_head(&head);
        }
    }
}
