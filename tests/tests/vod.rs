//! On-demand file transfer over loopback RUDP (`p2p_apps::vod::net`):
//! several holders with different parts, concurrent downloaders that also
//! serve, a holder leaving, a silent holder, a corrupting holder, a tampered
//! index, resume, pieces too large to serve, and the rate gain of many
//! capped holders over one.
//!
//! The tests take a lock and run one at a time: the rate comparison must
//! not share the two cores with the others.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Mutex;
use std::time::Duration;

use libnet::p2p::rudp_config;
use libnet::p2p::wire::Message;
use libnet::rudp::RudpSocket;
use libnet::time::sleep;
use libnet_tests::{bounded, eventually, pattern, run_on};
use p2p_apps::signed::RoomKey;
use p2p_apps::vod::net::{
    fetch, fetch_from, Candidate, FetchConfig, FetchStats, Seeder, SeederConfig,
};
use p2p_apps::vod::{FileIndex, PieceFile, SignedIndex};

const PIECE: usize = 60_000;
const LIMIT: Duration = Duration::from_secs(120);
static SERIAL: Mutex<()> = Mutex::new(());

/// A fresh directory for one test.
fn dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vod-net-{}-{test}", std::process::id()));
    drop(std::fs::remove_dir_all(&d));
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

/// The original file, its data and its signed index (60,000-byte pieces).
struct Original {
    path: PathBuf,
    data: Vec<u8>,
    signed: SignedIndex,
    key: RoomKey,
}

fn original(d: &Path, len: usize) -> Original {
    let path = d.join("movie.ts");
    let data = pattern(len, len as u64);
    std::fs::write(&path, &data).expect("write original");
    let index = FileIndex::build("movie.ts", &path, PIECE, 60_000, Vec::new()).expect("index");
    let key = RoomKey::generate().expect("key");
    let signed = SignedIndex::sign(index, &key).expect("sign");
    Original {
        path,
        data,
        signed,
        key,
    }
}

/// A holder on its own loopback socket.
struct Holder {
    socket: Option<Rc<RudpSocket>>,
    seeder: Seeder,
    addr: SocketAddr,
}

fn socket() -> Rc<RudpSocket> {
    Rc::new(RudpSocket::bind("127.0.0.1:0".parse().expect("addr"), rudp_config()).expect("bind"))
}

/// A holder of `pieces` of `o` (`None`: the whole file), in `d/name`.
fn holder(
    o: &Original,
    d: &Path,
    name: &str,
    pieces: Option<std::ops::Range<u32>>,
    config: SeederConfig,
) -> Holder {
    let index = o.signed.index();
    let file = match pieces {
        None => PieceFile::open_complete(&o.path, index).expect("open complete"),
        Some(range) => {
            let mut f = PieceFile::open_partial(&d.join(name), index).expect("open partial");
            for i in range {
                let r = index.piece_range(i);
                f.write(i, &o.data[r.start as usize..r.end as usize])
                    .expect("write piece");
            }
            f
        }
    };
    let socket = socket();
    let addr = socket.local_addr().expect("addr");
    let seeder = Seeder::start(socket.clone(), config);
    seeder
        .add(&o.signed, Rc::new(RefCell::new(file)))
        .expect("add");
    Holder {
        socket: Some(socket),
        seeder,
        addr,
    }
}

fn full(o: &Original, d: &Path, name: &str) -> Holder {
    holder(o, d, name, None, SeederConfig::default())
}

fn capped(o: &Original, d: &Path, name: &str, rate: u64) -> Holder {
    let config = SeederConfig {
        rate: Some(rate),
        ..SeederConfig::default()
    };
    holder(o, d, name, None, config)
}

fn addrs(hs: &[&Holder]) -> Vec<SocketAddr> {
    hs.iter().map(|h| h.addr).collect()
}

/// Fetches `o` from `holders` into `out` with `config` (its publisher set).
fn get(o: &Original, holders: &[SocketAddr], out: &Path, mut config: FetchConfig) -> FetchStats {
    let socket = socket();
    config.publisher = Some(o.key.public().to_bytes());
    let (signed, stats) = fetch_from(&socket, holders, o.signed.id(), out, config).expect("fetch");
    assert_eq!(signed.id(), o.signed.id());
    assert_same(o, out);
    stats
}

fn assert_same(o: &Original, out: &Path) {
    let got = std::fs::read(out).expect("read download");
    assert!(got == o.data, "{} differs from the original", out.display());
    assert!(!p2p_apps::vod::pieces::part_path(out).exists());
}

/// Holders that gave bytes.
fn sources(s: &FetchStats) -> usize {
    s.bytes.iter().filter(|&&b| b > 0).count()
}

fn mbps(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64() / 1e6
}

#[test]
fn partial_holders_and_two_downloaders_that_serve() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    bounded(LIMIT, || {
        run_on(1, || {
            let d = dir("two");
            let o = original(&d, 6_000_000 + 1234);
            let n = o.signed.index().pieces();
            let a = holder(&o, &d, "a", Some(0..n / 2), SeederConfig::default());
            let b = holder(&o, &d, "b", Some(n / 4..3 * n / 4), SeederConfig::default());
            let c = holder(&o, &d, "c", Some(n / 2..n), SeederConfig::default());
            let full = capped(&o, &d, "full", 4_000_000);
            let holders = addrs(&[&a, &b, &c, &full]);

            // The first downloader serves what it has to the second.
            let x_socket = socket();
            let x_addr = x_socket.local_addr().expect("addr");
            let x_seeder = Seeder::start(x_socket.clone(), SeederConfig::default());
            let seen = Rc::new(Cell::new(0u64));
            let x = {
                let (o_id, key, hs, out) = (
                    o.signed.id(),
                    o.key.public().to_bytes(),
                    holders.clone(),
                    d.join("x.ts"),
                );
                let seen = seen.clone();
                let seeder = x_seeder.clone();
                libnet::spawn(move || {
                    let config = FetchConfig {
                        publisher: Some(key),
                        seeder: Some(seeder),
                        progress: Some(Box::new(move |c, total| {
                            assert!(c >= seen.get() && c <= total, "progress goes forward");
                            seen.set(c);
                        })),
                        ..FetchConfig::default()
                    };
                    fetch_from(&x_socket, &hs, o_id, &out, config)
                        .expect("x fetch")
                        .1
                })
            };
            let mut y_holders = holders.clone();
            y_holders.push(x_addr);
            let y = get(&o, &y_holders, &d.join("y.ts"), FetchConfig::default());
            let x = x.join().expect("x");
            assert_same(&o, &d.join("x.ts"));
            assert_eq!(seen.get(), o.data.len() as u64);
            eprintln!("x: {x:?}");
            eprintln!("y: {y:?}");
            assert!(
                sources(&x) > 1 && sources(&y) > 1,
                "bytes from several holders"
            );
            assert!(
                x.bytes[..3].iter().all(|&b| b > 0),
                "every partial holder served x"
            );
            assert_eq!((x.bad_pieces, y.bad_pieces), (0, 0));
            assert!(x.first_byte.is_some_and(|t| t <= x.total));
            assert_eq!(x.resumed, 0);
            x_seeder.stop();
            drop(std::fs::remove_dir_all(&d));
        })
    });
}

#[test]
fn a_holder_that_leaves_does_not_stop_the_download() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    bounded(LIMIT, || {
        run_on(1, || {
            let d = dir("leave");
            let o = original(&d, 8_000_000);
            let mut a = capped(&o, &d, "a", 3_000_000);
            let b = capped(&o, &d, "b", 3_000_000);
            let hs = addrs(&[&a, &b]);
            let seen = Rc::new(Cell::new(0u64));
            let job = {
                let (id, out, seen) = (o.signed.id(), d.join("out.ts"), seen.clone());
                libnet::spawn(move || {
                    let config = FetchConfig {
                        progress: Some(Box::new(move |c, _| seen.set(c))),
                        ..FetchConfig::default()
                    };
                    fetch_from(&socket(), &hs, id, &out, config)
                        .expect("fetch")
                        .1
                })
            };
            eventually("1 MB came", || seen.get() >= 1_000_000);
            a.seeder.stop();
            drop(a.socket.take());
            let stats = job.join().expect("fetch");
            eprintln!("{stats:?}");
            assert_same(&o, &d.join("out.ts"));
            assert!(stats.dropped.contains(&a.addr.to_string()), "a is dropped");
            assert!(stats.bytes[0] > 0 && stats.bytes[1] > stats.bytes[0]);
            drop(b);
            drop(std::fs::remove_dir_all(&d));
        })
    });
}

#[test]
fn a_corrupting_holder_is_detected_and_dropped() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    bounded(LIMIT, || {
        run_on(1, || {
            let d = dir("corrupt");
            let o = original(&d, 3_000_000);
            let bad = holder(
                &o,
                &d,
                "bad",
                None,
                SeederConfig {
                    corrupt: true,
                    ..SeederConfig::default()
                },
            );
            let good = full(&o, &d, "good");
            let stats = get(
                &o,
                &addrs(&[&bad, &good]),
                &d.join("out.ts"),
                FetchConfig::default(),
            );
            eprintln!("{stats:?}");
            assert!(stats.bad_pieces >= 1);
            assert_eq!(stats.bytes[0], 0);
            assert_eq!(stats.dropped, vec![bad.addr.to_string()]);
            drop(std::fs::remove_dir_all(&d));
        })
    });
}

#[test]
fn a_tampered_index_is_refused() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    bounded(LIMIT, || {
        run_on(1, || {
            let d = dir("tamper");
            let o = original(&d, 1_000_000);
            let mut bytes = o.signed.to_bytes().to_vec();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 1;
            let file = PieceFile::open_complete(&o.path, o.signed.index()).expect("open");
            let t_socket = socket();
            let t_addr = t_socket.local_addr().expect("addr");
            let t = Seeder::start(t_socket, SeederConfig::default());
            t.add_bytes(o.signed.id(), bytes, Rc::new(RefCell::new(file)))
                .expect("add");

            // Alone, it gives nothing.
            let out = d.join("out.ts");
            let r = fetch_from(
                &socket(),
                &[t_addr],
                o.signed.id(),
                &out,
                FetchConfig::default(),
            );
            let e = r.expect_err("a tampered index is refused").to_string();
            assert!(e.contains("signature"), "refused for its signature: {e}");
            // An index signed by someone else is refused too.
            let good = full(&o, &d, "good");
            let other = RoomKey::generate().expect("key").public().to_bytes();
            let config = FetchConfig {
                publisher: Some(other),
                ..FetchConfig::default()
            };
            let e = fetch_from(&socket(), &[good.addr], o.signed.id(), &out, config)
                .expect_err("another publisher's index is refused")
                .to_string();
            assert!(
                e.contains("another publisher"),
                "refused for its publisher: {e}"
            );
            // Beside a good holder that connects later (so the tamperer's
            // index is read first): dropped, the download comes from the
            // other.
            let sock = socket();
            let (tx, rx) = libnet::sync::channel(2);
            tx.try_send(Candidate::direct(sock.clone(), t_addr))
                .expect("queue");
            let (s2, good_addr) = (sock.clone(), good.addr);
            tx.try_send(Candidate {
                label: good_addr.to_string(),
                connect: Box::new(move || {
                    sleep(Duration::from_millis(300));
                    s2.connect(good_addr)
                }),
            })
            .expect("queue");
            drop(tx);
            let config = FetchConfig {
                publisher: Some(o.key.public().to_bytes()),
                ..FetchConfig::default()
            };
            let (_, stats) = fetch(rx, o.signed.id(), &out, config).expect("fetch");
            assert_same(&o, &out);
            assert_eq!(stats.bytes[0], 0);
            assert_eq!(stats.dropped, vec![t_addr.to_string()]);
            t.stop();
            drop(std::fs::remove_dir_all(&d));
        })
    });
}

#[test]
fn a_resumed_download_completes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    bounded(LIMIT, || {
        run_on(1, || {
            let d = dir("resume");
            let o = original(&d, 3_000_000 + 77);
            let out = d.join("out.ts");
            let index = o.signed.index();
            {
                let mut f = PieceFile::open_partial(&out, index).expect("part");
                for i in (0..index.pieces() / 2).chain([index.pieces() - 1]) {
                    let r = index.piece_range(i);
                    f.write(i, &o.data[r.start as usize..r.end as usize])
                        .expect("write");
                }
            }
            let a = full(&o, &d, "a");
            let stats = get(&o, &[a.addr], &out, FetchConfig::default());
            eprintln!("{stats:?}");
            assert_eq!(stats.resumed, index.pieces() / 2 + 1);
            let fetched = o.data.len() as u64
                - u64::from(stats.resumed - 1) * PIECE as u64
                - index.piece_len(index.pieces() - 1) as u64;
            assert_eq!(stats.bytes[0], fetched);
            drop(std::fs::remove_dir_all(&d));
        })
    });
}

#[test]
fn four_capped_holders_are_over_three_times_one() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    bounded(LIMIT, || {
        run_on(1, || {
            const RATE: u64 = 2_000_000;
            let d = dir("rate");
            let o = original(&d, 16_000_000);
            let hs: Vec<Holder> = (0..4)
                .map(|k| capped(&o, &d, &format!("h{k}"), RATE))
                .collect();
            let one = get(&o, &[hs[0].addr], &d.join("one.ts"), FetchConfig::default());
            let all: Vec<&Holder> = hs.iter().collect();
            let four = get(&o, &addrs(&all), &d.join("four.ts"), FetchConfig::default());
            let (r1, r4) = (
                mbps(o.data.len(), one.total),
                mbps(o.data.len(), four.total),
            );
            eprintln!(
                "cap {} MB/s per holder: 1 holder {r1:.2} MB/s ({:?}), 4 holders {r4:.2} MB/s ({:?}), {:.2}x; bytes {:?}",
                RATE as f64 / 1e6,
                one.total,
                four.total,
                r4 / r1,
                four.bytes
            );
            assert!(
                r4 >= 3.0 * r1,
                "4 holders {r4:.2} MB/s, 1 holder {r1:.2} MB/s"
            );
            assert!(four.bytes.iter().all(|&b| b > 0));
            drop(std::fs::remove_dir_all(&d));
        })
    });
}

/// A holder that answers the index and claims every piece, but never sends
/// one: `fetch` asks elsewhere after `slow`, then drops it.
#[test]
fn a_silent_holder_is_worked_around_and_dropped() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    bounded(LIMIT, || {
        run_on(1, || {
            let d = dir("silent");
            let o = original(&d, 3_000_000);
            let room = p2p_apps::vod::net::room_of(&o.signed.id());
            let chunks: Vec<Vec<u8>> = o
                .signed
                .to_bytes()
                .chunks(p2p_apps::vod::net::INDEX_CHUNK)
                .map(<[u8]>::to_vec)
                .collect();
            let bits = vec![0xff; (o.signed.index().pieces() as usize).div_ceil(8)];
            let s_socket = socket();
            let s_addr = s_socket.local_addr().expect("addr");
            let silent = libnet::spawn(move || {
                let (conn, _) = s_socket.accept().expect("accept");
                while let Ok(Some(f)) = conn.recv() {
                    let reply = match Message::decode_frame(&f).expect("decodes") {
                        Message::MetaRequest { key, .. } => {
                            let value = match key.as_str() {
                                "index/n" => Some((chunks.len() as u32).to_be_bytes().to_vec()),
                                k => k
                                    .strip_prefix("index/")
                                    .and_then(|k| k.parse::<usize>().ok())
                                    .and_then(|k| chunks.get(k).cloned()),
                            };
                            Message::MetaReply { room, key, value }
                        }
                        Message::MapRequest { channel, .. } => Message::Map {
                            room,
                            channel,
                            first: 0,
                            bits: bits.clone(),
                        },
                        _ => continue,
                    };
                    if conn.send(&reply.to_frame().expect("encodes")).is_err() {
                        break;
                    }
                }
            });
            let good = full(&o, &d, "good");
            let config = FetchConfig {
                slow: Duration::from_millis(300),
                ..FetchConfig::default()
            };
            let stats = get(&o, &[s_addr, good.addr], &d.join("out.ts"), config);
            eprintln!("{stats:?}");
            assert_eq!(stats.bytes[0], 0);
            assert_eq!(stats.dropped, vec![s_addr.to_string()]);
            drop(silent.join());
            drop(std::fs::remove_dir_all(&d));
        })
    });
}

#[test]
fn pieces_over_one_message_are_not_served() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    bounded(LIMIT, || {
        run_on(1, || {
            let d = dir("big");
            let path = d.join("f");
            std::fs::write(&path, pattern(300_000, 1)).expect("write");
            let index = FileIndex::build("f", &path, 256 * 1024, 0, Vec::new()).expect("index");
            let signed =
                SignedIndex::sign(index, &RoomKey::generate().expect("key")).expect("sign");
            let file = PieceFile::open_complete(&path, signed.index()).expect("open");
            let seeder = Seeder::start(socket(), SeederConfig::default());
            let e = seeder
                .add(&signed, Rc::new(RefCell::new(file)))
                .expect_err("too large");
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
            seeder.stop();
            drop(std::fs::remove_dir_all(&d));
        })
    });
}

#[test]
fn the_playhead_comes_first_and_a_span_fetches_only_its_pieces() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    bounded(LIMIT, || {
        run_on(1, || {
            let d = dir("seek");
            // 100 pieces, 60 s (no time map: linear); one holder at 1 MB/s
            // (~16 pieces a second).
            let o = original(&d, 100 * PIECE);
            let a = capped(&o, &d, "a", 1_000_000);
            let index = o.signed.index().clone();

            // A player at 45 s: pieces from 75 on come first.
            let playhead = Rc::new(Cell::new(index.offset_at(45_000)));
            let opened: Rc<RefCell<Option<Rc<RefCell<PieceFile>>>>> = Rc::default();
            let job = {
                let (id, out, hs) = (o.signed.id(), d.join("seek.ts"), vec![a.addr]);
                let (playhead, opened) = (playhead.clone(), opened.clone());
                libnet::spawn(move || {
                    let config = FetchConfig {
                        playhead: Some(playhead),
                        on_open: Some(Box::new(move |_, f| *opened.borrow_mut() = Some(f.clone()))),
                        ..FetchConfig::default()
                    };
                    fetch_from(&socket(), &hs, id, &out, config)
                        .expect("fetch")
                        .1
                })
            };
            let held = |r: std::ops::Range<u32>| -> usize {
                let f = opened.borrow().clone();
                f.map_or(0, |f| r.filter(|&i| f.borrow().have(i)).count())
            };
            eventually("ten pieces from the playhead", || held(75..100) >= 10);
            assert_eq!(held(0..75), 0, "nothing before the playhead yet");
            // A seek back to 6 s: the pieces there come next.
            playhead.set(index.offset_at(6_000));
            let before = held(75..100);
            eventually("the pieces after the seek", || held(10..14) >= 4);
            assert!(
                held(75..100) <= before + 10,
                "after the seek, at most what was in flight came from the old place"
            );
            let stats = job.join().expect("fetch");
            assert_same(&o, &d.join("seek.ts"));
            eprintln!("seek: {stats:?}");

            // A span: 30–45 s only.
            let want = index.pieces_for(30_000, 45_000);
            assert_eq!(want, 50..75);
            let out = d.join("span.ts");
            let config = FetchConfig {
                span_ms: Some((30_000, 45_000)),
                ..FetchConfig::default()
            };
            let (_, stats) =
                fetch_from(&socket(), &[a.addr], o.signed.id(), &out, config).expect("span fetch");
            assert_eq!(stats.bytes[0], (want.len() * PIECE) as u64);
            let part = PieceFile::open_partial(&out, &index).expect("the part file");
            let held: Vec<u32> = (0..index.pieces()).filter(|&i| part.have(i)).collect();
            assert_eq!(held, want.collect::<Vec<_>>(), "exactly the span's pieces");
            assert!(p2p_apps::vod::pieces::part_path(&out).exists());
            drop(std::fs::remove_dir_all(&d));
        })
    });
}

#[test]
fn holders_that_cannot_be_reached_are_reported_as_such() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    bounded(LIMIT, || {
        run_on(1, || {
            let d = dir("unreachable");
            let o = original(&d, 100_000);
            // A port nobody listens on.
            let gone = socket().local_addr().expect("addr");
            let err = fetch_from(
                &socket(),
                &[gone],
                o.signed.id(),
                &d.join("x.ts"),
                FetchConfig::default(),
            )
            .expect_err("nobody to fetch from");
            assert!(
                err.to_string().contains("no holder could be reached")
                    && err.to_string().contains(&gone.to_string()),
                "{err}"
            );
            drop(std::fs::remove_dir_all(&d));
        })
    });
}
