//! Where a player may join a live MPEG-TS stream: the remuxer's output cut
//! at video key frames, with the tables (PAT and PMT) a player needs first.
//!
//! A player that starts in the middle of a stream decodes nothing until it
//! has seen the PAT, the PMT and a key frame, and complains about every
//! frame before that. So the HTTP output does not hand a new player the
//! stream as it comes: [`Splitter`] finds the 188-byte packets that start a
//! video key frame (a payload start with the adaptation field's random
//! access indicator set, on the PMT's video stream) and keeps the latest
//! PAT and PMT packets, and the player starts there with those in front.
//!
//! ```text
//! packet: 0x47 | TEI PUSI prio PID(13) | scrambling(2) AFC(2) CC(4) | [AF len, flags(RAI 0x40)...] | payload
//! PAT payload: pointer, table 0x00, len, ts id, version, section, last, { program(16), PID(13) }...
//! PMT payload: pointer, table 0x02, len, program, version, section, last, PCR PID, info len,
//!              info, { stream type, PID(13), ES info len, ES info }...
//! ```

/// Bytes of a transport stream packet.
pub const PACKET: usize = 188;

const SYNC: u8 = 0x47;

/// A piece of the stream for the players.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Whole packets.
    pub bytes: Vec<u8>,
    /// When `bytes` starts a video key frame: the PAT and PMT packets a new
    /// player needs before it.
    pub join: Option<Vec<u8>>,
}

/// Cuts a transport stream, fed in chunks of any size, into [`Piece`]s.
#[derive(Debug, Default)]
pub struct Splitter {
    /// Bytes of an unfinished packet.
    partial: Vec<u8>,
    pat: Option<Vec<u8>>,
    pmt: Option<Vec<u8>>,
    pmt_pid: Option<u16>,
    video_pid: Option<u16>,
    /// Packets whose sync byte was wrong (the rest is resynchronised).
    pub lost_sync: u64,
}

impl Splitter {
    /// A splitter that knows nothing yet.
    pub fn new() -> Splitter {
        Splitter::default()
    }

    /// Takes the next bytes of the stream; returns the pieces they
    /// complete (a piece per join point, plus the bytes between).
    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<Piece> {
        let mut out: Vec<Piece> = Vec::new();
        let mut cur = Piece {
            bytes: Vec::new(),
            join: None,
        };
        loop {
            // Complete a packet in `partial`, or take one straight.
            let packet: Vec<u8> = if !self.partial.is_empty() {
                let need = PACKET - self.partial.len();
                let take = need.min(bytes.len());
                self.partial.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if self.partial.len() < PACKET {
                    break;
                }
                std::mem::take(&mut self.partial)
            } else {
                // Find the sync byte.
                match bytes.iter().position(|&b| b == SYNC) {
                    Some(0) => {}
                    Some(n) => {
                        self.lost_sync += 1;
                        bytes = &bytes[n..];
                    }
                    None => {
                        if !bytes.is_empty() {
                            self.lost_sync += 1;
                        }
                        break;
                    }
                }
                if bytes.len() < PACKET {
                    self.partial.extend_from_slice(bytes);
                    break;
                }
                let (p, rest) = bytes.split_at(PACKET);
                bytes = rest;
                p.to_vec()
            };
            if packet[0] != SYNC {
                self.lost_sync += 1;
                continue;
            }
            if self.starts_key(&packet) {
                if let (Some(pat), Some(pmt)) = (&self.pat, &self.pmt) {
                    if !cur.bytes.is_empty() || cur.join.is_some() {
                        out.push(std::mem::replace(
                            &mut cur,
                            Piece {
                                bytes: Vec::new(),
                                join: None,
                            },
                        ));
                    }
                    let mut header = pat.clone();
                    header.extend_from_slice(pmt);
                    cur.join = Some(header);
                }
            }
            self.learn(&packet);
            cur.bytes.extend_from_slice(&packet);
        }
        if !cur.bytes.is_empty() {
            out.push(cur);
        }
        out
    }

    /// Keeps the tables and learns the PIDs from them.
    fn learn(&mut self, p: &[u8]) {
        let pid = pid(p);
        if !pusi(p) {
            return;
        }
        if pid == 0 {
            if let Some(sec) = section(p) {
                // Entries after the 8-byte header (5 after the length),
                // before the CRC; the first real program's PMT.
                let end = section_end(sec);
                let mut i = 8;
                while i + 4 <= end {
                    let program = u16::from_be_bytes([sec[i], sec[i + 1]]);
                    let pmt = u16::from_be_bytes([sec[i + 2], sec[i + 3]]) & 0x1fff;
                    if program != 0 {
                        self.pmt_pid = Some(pmt);
                        break;
                    }
                    i += 4;
                }
                self.pat = Some(p.to_vec());
            }
        } else if Some(pid) == self.pmt_pid {
            if let Some(sec) = section(p) {
                let end = section_end(sec);
                if sec.len() < 12 {
                    return;
                }
                let info = usize::from(u16::from_be_bytes([sec[10], sec[11]]) & 0x0fff);
                let mut i = 12 + info;
                while i + 5 <= end {
                    let kind = sec[i];
                    let es = u16::from_be_bytes([sec[i + 1], sec[i + 2]]) & 0x1fff;
                    let es_info =
                        usize::from(u16::from_be_bytes([sec[i + 3], sec[i + 4]]) & 0x0fff);
                    if is_video(kind) {
                        self.video_pid = Some(es);
                        break;
                    }
                    i += 5 + es_info;
                }
                self.pmt = Some(p.to_vec());
            }
        }
    }

    /// Whether `p` starts a key frame of the video stream (any stream with
    /// the random access flag, when there is no video).
    fn starts_key(&self, p: &[u8]) -> bool {
        if !pusi(p) || !rai(p) {
            return false;
        }
        match self.video_pid {
            Some(v) => pid(p) == v,
            None => self.pmt.is_some(),
        }
    }
}

fn pid(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[1] & 0x1f, p[2]])
}

fn pusi(p: &[u8]) -> bool {
    p[1] & 0x40 != 0
}

/// The adaptation field's random access indicator.
fn rai(p: &[u8]) -> bool {
    let afc = (p[3] >> 4) & 3;
    afc & 2 != 0 && p[4] > 0 && p.get(5).is_some_and(|f| f & 0x40 != 0)
}

/// The payload of a packet (after any adaptation field).
fn payload(p: &[u8]) -> Option<&[u8]> {
    let afc = (p[3] >> 4) & 3;
    if afc & 1 == 0 {
        return None;
    }
    let start = if afc & 2 != 0 {
        5 + usize::from(p[4])
    } else {
        4
    };
    p.get(start..)
}

/// The PSI section starting in a packet (after the pointer field).
fn section(p: &[u8]) -> Option<&[u8]> {
    let pl = payload(p)?;
    let pointer = usize::from(*pl.first()?);
    let sec = pl.get(1 + pointer..)?;
    (sec.len() >= 8).then_some(sec)
}

/// Where a section's entries end (before its CRC), within the packet.
fn section_end(sec: &[u8]) -> usize {
    let len = usize::from(u16::from_be_bytes([sec[1], sec[2]]) & 0x0fff);
    (3 + len).saturating_sub(4).min(sec.len())
}

fn is_video(stream_type: u8) -> bool {
    matches!(
        stream_type,
        0x01 | 0x02 | 0x10 | 0x1b | 0x24 | 0x42 | 0xd1 | 0xea
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packet of `pid` with the flags given and `payload` (padded).
    fn packet(pid: u16, start: bool, rai: bool, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![
            SYNC,
            (if start { 0x40 } else { 0 }) | (pid >> 8) as u8,
            pid as u8,
        ];
        if rai {
            p.push(0x30); // adaptation field and payload
            p.extend_from_slice(&[1, 0x40]);
        } else {
            p.push(0x10);
        }
        p.extend_from_slice(payload);
        p.resize(PACKET, 0xff);
        p
    }

    fn pat(pmt: u16) -> Vec<u8> {
        // pointer, table 0, length 13, ts id, version, section, last,
        // program 1 -> pmt, CRC (not checked).
        let mut s = vec![0, 0x00, 0xb0, 13, 0, 1, 0xc1, 0, 0, 0, 1];
        s.extend_from_slice(&(0xe000 | pmt).to_be_bytes());
        s.extend_from_slice(&[0, 0, 0, 0]);
        packet(0, true, false, &s)
    }

    fn pmt(pid: u16, video: u16, audio: u16) -> Vec<u8> {
        // pointer, table 2, length 23, program 1, version, section, last,
        // PCR PID, info len 0, {0x0f audio}, {0x1b video}, CRC.
        let mut s = vec![0, 0x02, 0xb0, 23, 0, 1, 0xc1, 0, 0];
        s.extend_from_slice(&(0xe000 | video).to_be_bytes());
        s.extend_from_slice(&[0xf0, 0]);
        s.push(0x0f);
        s.extend_from_slice(&(0xe000 | audio).to_be_bytes());
        s.extend_from_slice(&[0xf0, 0]);
        s.push(0x1b);
        s.extend_from_slice(&(0xe000 | video).to_be_bytes());
        s.extend_from_slice(&[0xf0, 0]);
        s.extend_from_slice(&[0, 0, 0, 0]);
        packet(pid, true, false, &s)
    }

    #[test]
    fn joins_at_video_key_frames_with_the_tables_in_front() {
        let mut stream = Vec::new();
        stream.extend(pat(0x1000));
        stream.extend(pmt(0x1000, 0x100, 0x101));
        stream.extend(packet(0x101, true, true, b"audio key")); // audio: not a join point
        stream.extend(packet(0x100, true, true, b"video key"));
        stream.extend(packet(0x100, false, false, b"rest"));
        stream.extend(packet(0x100, true, false, b"p frame"));
        stream.extend(packet(0x100, true, true, b"video key 2"));
        let mut s = Splitter::new();
        // Fed in awkward chunks.
        let mut pieces = Vec::new();
        for chunk in stream.chunks(100) {
            pieces.extend(s.push(chunk));
        }
        let joins: Vec<usize> = pieces
            .iter()
            .enumerate()
            .filter(|(_, p)| p.join.is_some())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(joins.len(), 2, "{pieces:?}");
        let total: usize = pieces.iter().map(|p| p.bytes.len()).sum();
        assert_eq!(total, stream.len(), "every byte goes through once");
        let first = &pieces[joins[0]];
        assert_eq!(
            &first.bytes[..PACKET],
            &packet(0x100, true, true, b"video key")[..]
        );
        let header = first.join.as_ref().expect("join");
        assert_eq!(header.len(), 2 * PACKET);
        assert_eq!(pid(&header[..]), 0);
        assert_eq!(s.lost_sync, 0);
    }

    #[test]
    fn garbage_resynchronises_and_never_panics() {
        let mut s = Splitter::new();
        let mut x: u32 = 12345;
        for _ in 0..2000 {
            let n = (x % 700) as usize;
            let junk: Vec<u8> = (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    if x.is_multiple_of(5) {
                        SYNC
                    } else {
                        x as u8
                    }
                })
                .collect();
            let _ = s.push(&junk);
        }
        // A clean stream afterwards still yields its join point.
        let mut clean = pat(0x1000);
        clean.extend(pmt(0x1000, 0x100, 0x101));
        clean.extend(packet(0x100, true, true, b"key"));
        let mut pieces = s.push(&[SYNC; 1]); // a stray sync byte first
        for _ in 0..3 {
            pieces.extend(s.push(&clean));
        }
        assert!(pieces.iter().any(|p| p.join.is_some()));
    }
}
