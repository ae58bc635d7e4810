//! End-to-end tests: ingest → fragments → remux → decode, for the test
//! pattern, files (MP4 with avcC and raw AAC, B-frames, looped, codecs
//! that need re-encoding) and a live UDP stream; and the encode cost
//! measurement (`measure`, ignored by default).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use ffmpeg_next as ff;

use super::ff::pair;
use super::ingest::tests::pattern;
use super::nal::AudioFix;
use super::output::{open_muxer, Sink};
use super::testutil::{have_tool, TempDir};
use super::{
    probe, rescale, Chunk, Depacketizer, Ingest, Input, Kind, Packetizer, RemuxStats, Remuxer,
    StreamInfo, MICROS,
};

/// A sink writing to a new file at `path`.
pub(crate) fn file_sink(path: &Path) -> Sink {
    let mut f = std::fs::File::create(path).unwrap();
    Box::new(move |b| f.write_all(b).is_ok())
}

/// What the network does: the ingest's packets through the wire
/// formats (stream info, fragments) into a remuxer writing `out`, up to
/// `secs` of media (or the end of the input).
fn relay(ingest: &mut Ingest, secs: f64, out: &Path) -> RemuxStats {
    let info = StreamInfo::decode(&ingest.info().encode()).unwrap();
    let mut pz = Packetizer::new(&info, 60_000, Duration::from_millis(100));
    let mut dz = Depacketizer::new();
    let remux = Remuxer::new(&info, file_sink(out)).unwrap();
    let mut ids = [0u64; 2];
    let mut deliver = |chunks: Vec<Chunk>| {
        for c in chunks {
            let id = &mut ids[(c.kind == Kind::Audio) as usize];
            for p in dz.push(c.kind, *id, &c.payload).unwrap() {
                assert!(remux.push(p));
            }
            *id += 1;
        }
    };
    while let Some(p) = ingest.next().unwrap() {
        let tb = info.time_base(p.kind).unwrap();
        if rescale(p.dts, tb, MICROS) >= (secs * 1e6) as i64 {
            break;
        }
        deliver(pz.push(p));
    }
    deliver(pz.flush());
    remux.finish().unwrap()
}

/// Frames per stream counted by the `ffprobe` CLI, if it is installed.
fn ffprobe_counts(path: &Path) -> Option<(u64, u64)> {
    if !have_tool("ffprobe") {
        println!("ffprobe not on PATH: skipping the cross-check");
        return None;
    }
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-show_entries"])
        .args(["stream=index,codec_type,nb_read_frames", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (mut video, mut audio) = (0, 0);
    let mut seen = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // MPEG-TS streams are listed twice: in their program and alone.
        if seen.contains(&line.to_string()) {
            continue;
        }
        seen.push(line.to_string());
        let mut f = line.trim().split(',').skip(1);
        let (kind, n) = (f.next().unwrap_or(""), f.next().unwrap_or("0"));
        let n: u64 = n.parse().unwrap_or(0);
        match kind {
            "video" => video += n,
            "audio" => audio += n,
            _ => {}
        }
    }
    Some((video, audio))
}

#[test]
fn the_threaded_types_can_move_between_threads() {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    send::<Ingest>();
    send::<Remuxer>();
    sync::<Remuxer>();
}

#[test]
fn test_pattern_through_fragments_plays_as_mpeg_ts() {
    let dir = TempDir::new("e2e");
    let ts = dir.path().join("out.ts");
    let mut ing = Ingest::open(&pattern(320, 180, 25)).unwrap();
    ing.set_realtime(false);
    let stats = relay(&mut ing, 3.0, &ts);
    assert_eq!(stats.video, 75, "{stats:?}");
    assert!((136..=142).contains(&stats.audio), "{stats:?}");
    assert_eq!((stats.dropped, stats.bad), (0, 0), "{stats:?}");
    assert!(stats.bytes > 10_000, "{stats:?}");
    assert_eq!(stats.bytes, std::fs::metadata(&ts).unwrap().len());

    let r = probe::check(&ts).unwrap();
    assert_eq!(r.video_frames, stats.video, "{r:?}");
    assert_eq!(r.audio_frames, stats.audio, "{r:?}");
    assert_eq!(r.decode_errors, 0, "{r:?}");
    assert!(r.video_in_order && r.audio_in_order, "{r:?}");
    assert_eq!((r.width, r.height), (320, 180));
    assert!((r.duration_secs - 3.0).abs() < 0.2, "{r:?}");
    if let Some((video, audio)) = ffprobe_counts(&ts) {
        assert_eq!((video, audio), (r.video_frames, r.audio_frames));
    }
}

/// Writes `secs` of the test pattern to an MP4 (H.264 as avcC, raw AAC)
/// with FFmpeg's own muxer.
fn write_mp4(path: &Path, secs: f64) -> u64 {
    let mut ing = Ingest::open(&pattern(320, 180, 25)).unwrap();
    ing.set_realtime(false);
    let info = ing.info().clone();
    let mut out = open_muxer(&info, path.to_str().unwrap(), "mp4", ff::Dictionary::new()).unwrap();
    let audio_fix = AudioFix::new("aac", &info.audio.as_ref().unwrap().extradata);
    let mut frames = 0;
    while let Some(p) = ing.next().unwrap() {
        let tb = info.time_base(p.kind).unwrap();
        if rescale(p.dts, tb, MICROS) >= (secs * 1e6) as i64 {
            break;
        }
        let index = (p.kind == Kind::Audio) as usize;
        let out_tb = pair(out.stream(index).unwrap().time_base());
        // ADTS, so that the muxer's aac_adtstoasc fills in the config.
        let data = match p.kind {
            Kind::Video => {
                frames += 1;
                p.data.clone()
            }
            Kind::Audio => audio_fix.apply(&p.data).unwrap().into_owned(),
        };
        let mut pk = ff::Packet::copy(&data);
        pk.set_stream(index);
        pk.set_pts(Some(rescale(p.pts, tb, out_tb)));
        pk.set_dts(Some(rescale(p.dts, tb, out_tb)));
        pk.set_duration(rescale(p.duration, tb, out_tb));
        if p.key {
            pk.set_flags(ff::packet::Flags::KEY);
        }
        pk.write_interleaved(&mut out).unwrap();
    }
    out.write_trailer().unwrap();
    frames
}

#[test]
fn an_mp4_file_passes_through_to_a_valid_ts() {
    let dir = TempDir::new("mp4");
    let mp4 = dir.path().join("in.mp4");
    let frames = write_mp4(&mp4, 2.0);
    assert_eq!(frames, 50);
    let input = Input::File {
        path: mp4.clone(),
        looped: false,
    };
    let mut ing = Ingest::open(&input).unwrap();
    ing.set_realtime(false);
    let info = ing.info().clone();
    let v = info.video.as_ref().unwrap();
    assert_eq!((v.codec.as_str(), v.width, v.height), ("h264", 320, 180));
    assert_eq!(
        v.extradata.first(),
        Some(&1),
        "avcC expected: {:02x?}",
        v.extradata
    );
    let a = info.audio.as_ref().unwrap();
    assert_eq!(a.extradata, vec![0x11, 0x90]);
    assert_eq!((a.sample_rate, a.channels, a.frame_size), (48_000, 2, 1024));

    let ts = dir.path().join("out.ts");
    let stats = relay(&mut ing, f64::MAX, &ts);
    assert_eq!(stats.video, 50, "{stats:?}");
    assert_eq!((stats.dropped, stats.bad), (0, 0), "{stats:?}");
    let r = probe::check(&ts).unwrap();
    assert_eq!(r.video_frames, 50, "{r:?}");
    assert!((90..=95).contains(&r.audio_frames), "{r:?}");
    assert_eq!(r.decode_errors, 0, "{r:?}");
    assert!(r.video_in_order && r.audio_in_order, "{r:?}");
    if let Some(counts) = ffprobe_counts(&ts) {
        assert_eq!(counts, (r.video_frames, r.audio_frames));
    }
}

#[test]
fn a_looped_file_keeps_its_timestamps_increasing() {
    let dir = TempDir::new("loop");
    let mp4 = dir.path().join("in.mp4");
    write_mp4(&mp4, 1.0);
    let input = Input::File {
        path: mp4.clone(),
        looped: true,
    };
    let mut ing = Ingest::open(&input).unwrap();
    ing.set_realtime(false);
    let ts = dir.path().join("out.ts");
    // 3.5 passes of 1 s.
    let stats = relay(&mut ing, 3.5, &ts);
    assert!((86..=88).contains(&stats.video), "{stats:?}");
    assert_eq!((stats.dropped, stats.bad), (0, 0), "{stats:?}");
    let r = probe::check(&ts).unwrap();
    assert_eq!(r.video_frames, stats.video, "{r:?}");
    assert_eq!(r.decode_errors, 0, "{r:?}");
    assert!(r.video_in_order && r.audio_in_order, "{r:?}");
    assert!((r.duration_secs - 3.5).abs() < 0.3, "{r:?}");
}

#[test]
fn a_cli_made_mp4_with_b_frames_passes_through() {
    if !have_tool("ffmpeg") {
        println!("ffmpeg not on PATH: skipping");
        return;
    }
    let dir = TempDir::new("cli");
    let mp4 = dir.path().join("b.mp4");
    let status = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=s=320x180:r=25:d=2",
        ])
        .args(["-f", "lavfi", "-i", "sine=f=440:r=44100:d=2"])
        .args([
            "-c:v", "libx264", "-preset", "veryfast", "-bf", "2", "-g", "25",
        ])
        .args(["-c:a", "aac", "-ac", "2", "-shortest", "-y"])
        .arg(&mp4)
        .status()
        .unwrap();
    assert!(status.success());
    let mut ing = Ingest::open(&Input::File {
        path: mp4,
        looped: false,
    })
    .unwrap();
    ing.set_realtime(false);
    assert_eq!(ing.info().audio.as_ref().unwrap().sample_rate, 44_100);
    let ts = dir.path().join("out.ts");
    let stats = relay(&mut ing, f64::MAX, &ts);
    assert_eq!((stats.video, stats.bad), (50, 0), "{stats:?}");
    let r = probe::check(&ts).unwrap();
    assert_eq!(r.video_frames, 50, "{r:?}");
    assert!(r.audio_frames >= 85, "{r:?}");
    assert_eq!(r.decode_errors, 0, "{r:?}");
    assert!(r.video_in_order && r.audio_in_order, "{r:?}");
}

#[test]
fn a_live_udp_stream_is_ingested() {
    if !have_tool("ffmpeg") {
        println!("ffmpeg not on PATH: skipping");
        return;
    }
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut sender = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=s=320x180:r=25",
        ])
        .args(["-f", "lavfi", "-i", "sine=f=440:r=48000", "-t", "8"])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-g",
            "25",
        ])
        .args(["-c:a", "aac", "-f", "mpegts"])
        .arg(format!("udp://127.0.0.1:{port}?pkt_size=1316"))
        .spawn()
        .unwrap();
    let input = Input::Url {
        // Give up after 5 s without data rather than hang.
        url: format!("udp://127.0.0.1:{port}?timeout=5000000"),
        format: None,
    };
    let result = Ingest::open(&input).map(|mut ing| {
        let dir = TempDir::new("udp");
        let ts = dir.path().join("out.ts");
        let info = ing.info().clone();
        let stats = relay_live(&mut ing, 2.0, &ts);
        (stats, probe::check(&ts).unwrap(), info)
    });
    let _ = sender.kill();
    let _ = sender.wait();
    let (stats, r, info) = result.unwrap();
    assert_eq!(info.video.as_ref().map(|v| v.codec.as_str()), Some("h264"));
    assert_eq!(info.audio.as_ref().map(|a| a.codec.as_str()), Some("aac"));
    assert!(stats.video >= 20, "{stats:?}");
    assert_eq!(r.video_frames, stats.video, "{r:?}");
    assert_eq!(r.decode_errors, 0, "{r:?}");
    assert!(r.video_in_order && r.audio_in_order, "{r:?}");
}

/// [`relay`] without fragments for a live input, whose timestamps do not
/// start at 0: stops `secs` after its first packet.
fn relay_live(ing: &mut Ingest, secs: f64, out: &Path) -> RemuxStats {
    let info = ing.info().clone();
    let remux = Remuxer::new(&info, file_sink(out)).unwrap();
    let mut start = None;
    while let Some(p) = ing.next().unwrap() {
        let at = rescale(p.dts, info.time_base(p.kind).unwrap(), MICROS);
        if at - *start.get_or_insert(at) >= (secs * 1e6) as i64 {
            break;
        }
        remux.push(p);
    }
    remux.finish().unwrap()
}

#[test]
fn raw_frames_and_pcm_are_re_encoded() {
    // lavfi gives raw video (wrapped frames) and PCM: what a webcam
    // and a sound card give.
    let input = Input::Url {
        url: "testsrc2=size=320x180:rate=25:duration=3[out0];\
              sine=frequency=440:sample_rate=44100:duration=3[out1]"
            .into(),
        format: Some("lavfi".into()),
    };
    let mut ing = Ingest::open(&input).unwrap();
    let info = ing.info().clone();
    let v = info.video.as_ref().unwrap();
    assert_eq!((v.codec.as_str(), v.width, v.height), ("h264", 320, 180));
    let a = info.audio.as_ref().unwrap();
    assert_eq!(
        (a.codec.as_str(), a.sample_rate, a.channels),
        ("aac", 48_000, 2)
    );
    let dir = TempDir::new("transcode");
    let ts = dir.path().join("out.ts");
    let stats = relay(&mut ing, f64::MAX, &ts);
    assert_eq!(
        (stats.video, stats.bad, stats.dropped),
        (75, 0, 0),
        "{stats:?}"
    );
    assert!((138..=143).contains(&stats.audio), "{stats:?}");
    let r = probe::check(&ts).unwrap();
    assert_eq!(
        (r.video_frames, r.audio_frames),
        (stats.video, stats.audio),
        "{r:?}"
    );
    assert_eq!(r.decode_errors, 0, "{r:?}");
    assert!(r.video_in_order && r.audio_in_order, "{r:?}");
}

#[test]
fn a_file_with_codecs_ts_cannot_carry_is_re_encoded() {
    if !have_tool("ffmpeg") {
        println!("ffmpeg not on PATH: skipping");
        return;
    }
    let dir = TempDir::new("mkv");
    let mkv = dir.path().join("in.mkv");
    let status = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=s=320x180:r=25:d=2",
        ])
        .args(["-f", "lavfi", "-i", "sine=f=440:r=44100:d=2"])
        .args(["-c:v", "mjpeg", "-c:a", "pcm_s16le", "-y"])
        .arg(&mkv)
        .status()
        .unwrap();
    assert!(status.success());
    let mut ing = Ingest::open(&Input::File {
        path: mkv,
        looped: false,
    })
    .unwrap();
    ing.set_realtime(false);
    let info = ing.info().clone();
    assert_eq!(info.video.as_ref().unwrap().codec, "h264");
    assert_eq!(info.audio.as_ref().unwrap().codec, "aac");
    let ts = dir.path().join("out.ts");
    let stats = relay(&mut ing, f64::MAX, &ts);
    assert_eq!((stats.video, stats.bad), (50, 0), "{stats:?}");
    let r = probe::check(&ts).unwrap();
    assert_eq!(r.video_frames, 50, "{r:?}");
    assert!((90..=96).contains(&r.audio_frames), "{r:?}");
    assert_eq!(r.decode_errors, 0, "{r:?}");
    assert!(r.video_in_order && r.audio_in_order, "{r:?}");
}

/// CPU seconds this process used so far (Linux `/proc/self/stat`,
/// 100 ticks a second).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Encode cost of the test pattern and the size of its output, for the
/// docs: `cargo test --release -p p2p-apps --lib media::e2e::measure -- --ignored --nocapture`
/// (set `P2P_MEDIA_OUT=DIR` to keep the TS files).
#[test]
#[ignore]
fn measure() {
    for (w, h, fps, kbps) in [
        (640, 360, 25, 800),
        (1280, 720, 25, 2500),
        (1920, 1080, 30, 4500),
    ] {
        let input = Input::TestPattern {
            width: w,
            height: h,
            fps,
            video_kbps: kbps,
        };
        let mut ing = Ingest::open(&input).unwrap();
        ing.set_realtime(false);
        let secs = 10.0;
        let (t0, c0) = (Instant::now(), cpu_secs());
        let mut packets = Vec::new();
        while let Some(p) = ing.next().unwrap() {
            let tb = ing.info().time_base(p.kind).unwrap();
            if rescale(p.dts, tb, MICROS) >= (secs * 1e6) as i64 {
                break;
            }
            packets.push(p);
        }
        let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_secs() - c0);
        let bytes: usize = packets
            .iter()
            .filter(|p| p.kind == Kind::Video)
            .map(|p| p.data.len())
            .sum();
        let keys: Vec<usize> = packets
            .iter()
            .filter(|p| p.kind == Kind::Video && p.key)
            .map(|p| p.data.len())
            .collect();
        println!(
            "{w}x{h} {fps} fps {kbps} kbit/s: encode {:.0}% of one core at real time \
             ({cpu:.2} s CPU, {wall:.2} s wall for {secs} s), video {} kbit/s, key frames {} bytes on average",
            cpu / secs * 100.0,
            bytes * 8 / 10_000,
            keys.iter().sum::<usize>() / keys.len().max(1),
        );
        let dir = std::env::var_os("P2P_MEDIA_OUT").map(std::path::PathBuf::from);
        let tmp = TempDir::new("measure");
        let ts = dir
            .as_deref()
            .unwrap_or(tmp.path())
            .join(format!("pattern-{w}x{h}.ts"));
        let remux = Remuxer::new(ing.info(), file_sink(&ts)).unwrap();
        let (t0, c0) = (Instant::now(), cpu_secs());
        for p in packets {
            while !remux.push(p.clone()) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let stats = remux.finish().unwrap();
        println!(
            "  remux: {:.3} s CPU, {:.3} s wall, {stats:?}",
            cpu_secs() - c0,
            t0.elapsed().as_secs_f64()
        );
    }
}
