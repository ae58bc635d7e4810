//! Unit tests of the scheduler: one `Scheduler` driven by hand, its
//! actions checked call by call. The swarm simulation is in `sim.rs`.

use super::*;

const V: Channel = Channel::Video;
const MS: Duration = Duration::from_millis(1);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn fetches(actions: &[Action]) -> Vec<(SupplierId, Vec<u64>, u8)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Fetch {
                supplier,
                ids,
                priority,
                ..
            } => Some((*supplier, ids.clone(), *priority)),
            Action::Cancel { .. } => None,
        })
        .collect()
}

fn cancels(actions: &[Action]) -> Vec<(SupplierId, Vec<u64>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Cancel { supplier, ids, .. } => Some((*supplier, ids.clone())),
            Action::Fetch { .. } => None,
        })
        .collect()
}

/// Ids fetched from `s`, sorted.
fn ids_from(actions: &[Action], s: SupplierId) -> Vec<u64> {
    let mut ids: Vec<u64> = fetches(actions)
        .into_iter()
        .filter(|f| f.0 == s)
        .flat_map(|f| f.1)
        .collect();
    ids.sort_unstable();
    ids
}

/// Edge 0 and peers 1..=peers, all holding `0..=last` on video, the
/// playhead at 0 and id `i` due at `t0 + 2 s + i × 40 ms`.
fn setup(config: Config, peers: u64, last: u64, t0: Instant) -> Scheduler {
    let mut s = Scheduler::new(config, 7);
    s.add_supplier(0, true);
    s.set_range(0, V, 0, last, t0);
    for p in 1..=peers {
        s.add_supplier(p, false);
        s.set_range(p, V, 0, last, t0);
    }
    s.set_clock(V, 0, t0 + ms(2000), ms(40));
    s.set_playhead(V, 0, t0);
    s
}

#[test]
fn prefetch_goes_to_peers_in_batches() {
    let t0 = Instant::now();
    let mut s = setup(Config::default(), 2, 19, t0);
    let a = s.poll(t0);
    assert!(ids_from(&a, 0).is_empty(), "{a:?}");
    let mut got = ids_from(&a, 1);
    got.extend(ids_from(&a, 2));
    got.sort_unstable();
    assert_eq!(got, (0..20).collect::<Vec<_>>());
    for (_, ids, prio) in fetches(&a) {
        assert!(ids.len() <= 8);
        assert!(prio >= 14, "2 s of slack is not urgent: {prio}");
    }
    // Nothing more to ask; the next wake-up is the first timeout.
    assert!(fetches(&s.poll(t0)).is_empty());
    assert_eq!(s.next_wakeup(t0), Some(t0 + Duration::from_secs(1)));
}

#[test]
fn a_silent_peer_is_abandoned_before_the_deadline() {
    let t0 = Instant::now();
    let mut s = setup(Config::default(), 1, 9, t0);
    let a = s.poll(t0);
    assert_eq!(ids_from(&a, 1), (0..10).collect::<Vec<_>>());
    // The peer never answers. At its timeout every id is taken back and
    // cancelled there; the peer is slow, so the ids wait to be urgent
    // and then go to the edge.
    let mut now = t0;
    let mut from_edge = Vec::new();
    let mut cancelled = Vec::new();
    while now < t0 + ms(2400) {
        let a = s.poll(now);
        for (sup, ids) in cancels(&a) {
            assert_eq!(sup, 1);
            cancelled.extend(ids);
        }
        for id in ids_from(&a, 0) {
            let deadline = t0 + ms(2000 + 40 * id);
            assert!(deadline - now >= ms(500), "id {id} asked too late");
            from_edge.push(id);
            s.on_fragment(0, V, id, 1000, now + ms(20));
        }
        assert!(ids_from(&a, 1).is_empty(), "a slow peer is avoided");
        now = s.next_wakeup(now).unwrap_or(now + ms(10)).min(now + ms(10));
    }
    from_edge.sort_unstable();
    assert_eq!(from_edge, (0..10).collect::<Vec<_>>());
    assert_eq!(cancelled, (0..10).collect::<Vec<_>>());
    let st = s.stats();
    assert_eq!((st.timeouts, st.switches), (10, 10));
    let p = s.supplier_stats(1).unwrap();
    assert_eq!(p.failures, 1);
    assert!(p.slow_until.unwrap() > t0 + Duration::from_secs(1));
}

#[test]
fn urgent_ids_go_to_the_edge_unless_a_peer_is_quick() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(Config::default(), 1);
    s.add_supplier(0, true);
    s.add_supplier(1, false);
    s.set_range(0, V, 0, 25, t0);
    s.set_range(1, V, 0, 25, t0);
    // Id i is due at 500 + 20 i ms. Ids 0..=4 (within 600 ms) are
    // urgent; the peer is not measured yet (300 ms expected): the edge,
    // at priority 0. The peer is asked only for ids it should deliver
    // before they turn urgent (due in 900 ms or more): 20..=25.
    s.set_clock(V, 0, t0 + ms(500), ms(20));
    s.set_playhead(V, 0, t0);
    let a = s.poll(t0);
    assert_eq!(
        fetches(&a),
        vec![(0, vec![0, 1, 2, 3, 4], 0), (1, (20..=25).collect(), 9)]
    );
    // The peer answers in 50 ms: now quick enough for urgent ids.
    s.on_fragment(1, V, 20, 1000, t0 + ms(50));
    assert_eq!(s.supplier_stats(1).unwrap().response, Some(ms(50)));
    s.set_range(0, V, 0, 7, t0 + ms(60));
    s.set_range(1, V, 0, 7, t0 + ms(60));
    let a = s.poll(t0 + ms(60));
    assert_eq!(fetches(&a), vec![(1, vec![5, 6, 7], 0)]);
    // Given half their slack: re-asked in time if the peer stalls.
    assert_eq!(s.next_wakeup(t0 + ms(60)), Some(t0 + ms(60 + 270)));
}

#[test]
fn without_a_clock_everything_is_urgent() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(Config::default(), 1);
    s.add_supplier(0, true);
    s.add_supplier(1, false);
    s.set_range(0, V, 10, 12, t0);
    s.set_range(1, V, 10, 12, t0);
    assert!(s.poll(t0).is_empty(), "no playhead: nothing wanted");
    s.set_playhead(V, 11, t0);
    assert_eq!(fetches(&s.poll(t0)), vec![(0, vec![11, 12], 0)]);
}

#[test]
fn passing_the_playhead_cancels() {
    let t0 = Instant::now();
    let mut s = setup(Config::default(), 1, 9, t0);
    assert_eq!(ids_from(&s.poll(t0), 1), (0..10).collect::<Vec<_>>());
    s.on_fragment(1, V, 0, 100, t0 + ms(80));
    s.set_playhead(V, 4, t0 + ms(100));
    assert_eq!(s.next_wakeup(t0 + ms(100)), Some(t0 + ms(100)));
    let a = s.poll(t0 + ms(100));
    assert_eq!(cancels(&a), vec![(1, vec![1, 2, 3])]);
    assert!(fetches(&a).is_empty());
    assert_eq!(s.supplier_stats(1).unwrap().inflight, 6);
    // A cancelled fragment arriving anyway is held, and late.
    s.on_fragment(1, V, 2, 100, t0 + ms(120));
    assert!(s.have(V, 2) && s.have(V, 0) && !s.have(V, 5));
    let st = s.stats();
    assert_eq!((st.cancels, st.late, st.fragments_peers), (3, 1, 2));
    assert_eq!(s.supplier_stats(1).unwrap().inflight, 6);
}

#[test]
fn removing_a_supplier_asks_elsewhere_and_forgets_it() {
    let t0 = Instant::now();
    let cfg = Config {
        max_inflight: 4,
        ..Config::default()
    };
    let mut s = setup(cfg, 2, 7, t0);
    let a = s.poll(t0);
    let (at1, at2) = (ids_from(&a, 1), ids_from(&a, 2));
    assert_eq!((at1.len(), at2.len()), (4, 4));
    s.remove_supplier(1);
    assert!(s.supplier_stats(1).is_none());
    // No cancel for a removed supplier; its ids wait for peer 2 (full).
    assert!(s.poll(t0 + ms(10)).is_empty());
    // Peer 2 answers: the removed one's ids go to it.
    let mut now = t0 + ms(20);
    for &id in &at2 {
        s.on_fragment(2, V, id, 100, now);
    }
    let mut moved = Vec::new();
    while moved.len() < at1.len() {
        let a = s.poll(now);
        assert!(fetches(&a).iter().all(|f| f.0 == 2), "{a:?}");
        for id in ids_from(&a, 2) {
            s.on_fragment(2, V, id, 100, now + ms(5));
            moved.push(id);
        }
        now += ms(10);
        assert!(now < t0 + ms(500), "not moved: {moved:?}");
    }
    moved.sort_unstable();
    assert_eq!(moved, at1);
    assert_eq!(s.stats().switches, 4);
    // A fragment from the removed supplier still counts (as peer bytes).
    s.on_fragment(1, V, 0, 100, now);
    assert_eq!(s.stats().duplicates, 1);
}

#[test]
fn rarest_first() {
    let t0 = Instant::now();
    let cfg = Config {
        max_inflight: 1,
        ..Config::default()
    };
    let mut s = Scheduler::new(cfg, 3);
    s.add_supplier(1, false);
    s.add_supplier(2, false);
    s.set_range(1, V, 0, 1, t0);
    s.set_range(2, V, 0, 0, t0);
    s.set_clock(V, 0, t0 + ms(2000), ms(40));
    s.set_playhead(V, 0, t0);
    // Id 1 is held by peer 1 only: it takes peer 1's one slot, and id 0
    // (earlier but held twice) goes to peer 2.
    let mut f = fetches(&s.poll(t0));
    f.sort();
    assert_eq!(
        f.iter().map(|x| (x.0, x.1.clone())).collect::<Vec<_>>(),
        [(1, vec![1]), (2, vec![0])]
    );
}

#[test]
fn missing_goes_elsewhere() {
    let t0 = Instant::now();
    let cfg = Config {
        max_inflight: 1,
        ..Config::default()
    };
    let mut s = setup(cfg, 2, 0, t0);
    let a = s.poll(t0);
    let (first, _, _) = fetches(&a)[0].clone();
    s.on_missing(first, V, 0, t0 + ms(30));
    let other = 3 - first;
    assert_eq!(fetches(&s.poll(t0 + ms(30)))[0].0, other);
    s.on_missing(other, V, 0, t0 + ms(60));
    // No peer has it (for now): the coin (p = 1.5 / 3) or later the edge.
    let mut now = t0 + ms(60);
    loop {
        let a = s.poll(now);
        if let Some(f) = fetches(&a).first() {
            assert_eq!(f.0, 0, "{a:?}");
            break;
        }
        now = s.next_wakeup(now).expect("waits for something");
        assert!(now < t0 + ms(2000));
    }
    let st = s.stats();
    assert_eq!((st.missing, st.switches), (2, 2));
    assert_eq!(s.supplier_stats(first).unwrap().missing, 1);
}

#[test]
fn a_failure_reported_by_the_driver_moves_every_id() {
    let t0 = Instant::now();
    let mut s = setup(Config::default(), 2, 3, t0);
    let a = s.poll(t0);
    let (at1, at2) = (ids_from(&a, 1), ids_from(&a, 2));
    assert_eq!(at1.len() + at2.len(), 4);
    assert!(at1.len() >= 2, "{a:?}");
    s.on_failed(1, V, at1[0], t0 + ms(100));
    // The reported id was resolved by the driver; the others are
    // cancelled, and all go to peer 2.
    let a = s.poll(t0 + ms(100));
    assert_eq!(cancels(&a), vec![(1, at1[1..].to_vec())]);
    assert_eq!(ids_from(&a, 2), at1);
    // Peer 2 fails too: a new peer 3 gets everything.
    s.on_failed(2, V, at2[0], t0 + ms(150));
    s.poll(t0 + ms(150));
    s.add_supplier(3, false);
    s.set_range(3, V, 0, 3, t0 + ms(150));
    assert_eq!(ids_from(&s.poll(t0 + ms(150)), 3), vec![0, 1, 2, 3]);
    s.on_failed(3, V, 0, t0 + ms(160));
    s.on_failed(1, V, 0, t0 + ms(170)); // not in flight there: ignored
    assert_eq!(s.stats().failures, 3);
    let slow = |s: &Scheduler, p| s.supplier_stats(p).unwrap().slow_until.unwrap() - t0;
    assert_eq!(slow(&s, 1), ms(2100));
    assert_eq!(slow(&s, 3), ms(2160));
    assert_eq!(s.supplier_stats(1).unwrap().failures, 1);
}

#[test]
fn backoff_doubles_and_a_slow_peer_is_the_last_resort() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(Config::default(), 5);
    s.add_supplier(1, false);
    s.set_range(1, V, 0, 0, t0);
    s.set_clock(V, 0, t0 + ms(400), ms(40));
    s.set_playhead(V, 0, t0);
    // Urgent, no edge: the only peer, slow or not.
    assert_eq!(ids_from(&s.poll(t0), 1), vec![0]);
    s.on_failed(1, V, 0, t0 + ms(10));
    assert_eq!(ids_from(&s.poll(t0 + ms(10)), 1), vec![0]);
    s.on_failed(1, V, 0, t0 + ms(20));
    let slow_until = s.supplier_stats(1).unwrap().slow_until.unwrap();
    assert_eq!(slow_until - t0, ms(4020));
    // An answer resets the streak (not the backoff already running).
    assert_eq!(ids_from(&s.poll(t0 + ms(20)), 1), vec![0]);
    s.on_fragment(1, V, 0, 10, t0 + ms(60));
    s.set_range(1, V, 0, 1, t0 + ms(60));
    assert_eq!(ids_from(&s.poll(t0 + ms(60)), 1), vec![1]);
    s.on_failed(1, V, 1, t0 + ms(70));
    assert_eq!(
        s.supplier_stats(1).unwrap().slow_until.unwrap() - t0,
        ms(2070)
    );
}

#[test]
fn fresh_ids_are_seeded_from_the_edge_with_the_configured_probability() {
    let t0 = Instant::now();
    let cfg = Config {
        window: 4000,
        max_inflight: 4000,
        ..Config::default()
    };
    let mut s = Scheduler::new(cfg, 11);
    s.add_supplier(0, true);
    for p in 1..=3 {
        s.add_supplier(p, false);
    }
    s.set_range(0, V, 0, 3999, t0);
    s.set_clock(V, 0, t0 + Duration::from_secs(3600), MS);
    s.set_playhead(V, 0, t0);
    let n = ids_from(&s.poll(t0), 0).len();
    // p = 1.5 / (3 + 1) = 0.375, decided once per id.
    assert!((1350..1650).contains(&n), "{n} of 4000");
    assert!(ids_from(&s.poll(t0 + MS), 0).is_empty());
}

/// A bitmap buffer map from `first` holding `ids`, in the wire form.
fn bits(first: u64, ids: &[u64]) -> Vec<u8> {
    let len = ids
        .iter()
        .map(|&id| (id - first) / 8 + 1)
        .max()
        .unwrap_or(0);
    let mut b = vec![0u8; len as usize];
    for &id in ids {
        let i = id - first;
        b[(i / 8) as usize] |= 1 << (i % 8);
    }
    b
}

/// What the scheduler knows of `sup`'s buffer map on video.
fn video(s: &Scheduler, sup: SupplierId) -> &SupplierLane {
    &s.suppliers[&sup].lanes[lane_of(V)]
}

#[test]
fn bitmap_holes_are_not_asked_and_set_bits_need_no_settling() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(Config::default(), 7);
    s.add_supplier(0, true);
    s.add_supplier(1, false);
    s.set_range(0, V, 0, 19, t0);
    // Peer 1 holds 10..=19 but for 12, 13 and 17.
    let held = vec![10, 11, 14, 15, 16, 18, 19];
    s.set_map(1, V, 10, &bits(10, &held), t0);
    assert_eq!(video(&s, 1).range, Some((10, 19)));
    s.set_clock(V, 0, t0 + ms(2000), ms(40));
    s.set_playhead(V, 10, t0);
    let a = s.poll(t0);
    assert_eq!(ids_from(&a, 1), held);
    // The holes are fresh: only the seeding coin may send them to the
    // edge now.
    assert!(ids_from(&a, 0).iter().all(|id| [12, 13, 17].contains(id)));
    // Its next map: the new bits are asked at once (a range's new ids
    // would wait for `settle`), the holes still not.
    let now = t0 + ms(10);
    let mut newer = held.clone();
    newer.extend([21, 22, 24]);
    s.set_map(1, V, 10, &bits(10, &newer), now);
    s.set_range(0, V, 0, 24, now);
    assert_eq!(ids_from(&s.poll(now), 1), vec![21, 22, 24]);
    assert_eq!(s.stats().missing, 0);
}

#[test]
fn a_fragment_sets_its_bit_and_a_map_keeps_the_newest_1024_ids() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(Config::default(), 7);
    s.add_supplier(1, false);
    s.add_supplier(2, false);
    s.set_map(1, V, 100, &bits(100, &[100, 105]), t0);
    s.on_fragment(1, V, 103, 10, t0);
    let l = video(&s, 1);
    assert!(l.holds(100) && l.holds(103) && l.holds(105));
    assert!(!l.holds(101) && !l.holds(104) && !l.holds(106));
    // Past its end: extended.
    s.on_fragment(1, V, 1000, 10, t0);
    let l = video(&s, 1);
    assert!(l.holds(100) && l.holds(1000) && !l.holds(999));
    assert_eq!(l.range, Some((100, 1000)));
    // Far past: the oldest words are dropped.
    s.on_fragment(1, V, 1130, 10, t0);
    let l = video(&s, 1);
    assert!(!l.holds(100) && !l.holds(105) && l.holds(1000));
    assert_eq!(l.range, Some((1000, 1130)));
    // Older than the newest 1,024 ids: ignored; within them: kept.
    s.on_fragment(1, V, 50, 10, t0);
    s.on_fragment(1, V, 200, 10, t0);
    let l = video(&s, 1);
    assert!(!l.holds(50) && l.holds(200));
    assert_eq!(l.range, Some((200, 1130)));
    assert!(l.map.as_ref().is_some_and(|m| m.words.len() <= 16));
    // A supplier with a range only: the range grows to include it.
    s.set_range(2, V, 0, 5, t0);
    s.on_fragment(2, V, 9, 10, t0);
    let l = video(&s, 2);
    assert!(l.map.is_none() && l.holds(7));
    assert_eq!(l.range, Some((0, 9)));
}

#[test]
fn set_range_drops_the_bitmap_and_set_map_replaces_it() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(Config::default(), 7);
    s.add_supplier(1, false);
    s.set_map(1, V, 0, &bits(0, &[0, 3]), t0);
    assert!(video(&s, 1).holds(3) && !video(&s, 1).holds(1));
    // A range cannot show holes.
    s.set_range(1, V, 0, 3, t0);
    assert!(video(&s, 1).map.is_none());
    assert!(video(&s, 1).holds(1) && video(&s, 1).holds(2));
    s.set_map(1, V, 2, &bits(2, &[2]), t0);
    let l = video(&s, 1);
    assert!(l.holds(2) && !l.holds(0) && !l.holds(1) && !l.holds(3));
    assert_eq!(l.range, Some((2, 2)));
    s.set_map(1, V, 0, &bits(0, &[5, 6]), t0);
    assert_eq!(video(&s, 1).range, Some((5, 6)));
    assert!(!video(&s, 1).holds(2));
    // Maps for one channel leave the others alone.
    s.set_range(1, Channel::Audio, 0, 9, t0);
    s.set_map(1, V, 0, &[], t0);
    assert!(s.suppliers[&1].lanes[lane_of(Channel::Audio)].holds(4));
}

#[test]
fn garbage_sized_maps_are_bounded() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(Config::default(), 7);
    s.add_supplier(0, true);
    s.add_supplier(1, false);
    s.set_range(0, V, 0, 9, t0);
    s.set_clock(V, 0, t0 + ms(2000), ms(40));
    s.set_playhead(V, 0, t0);
    // A megabyte of set bits: the newest 1,024 ids are kept.
    s.set_map(1, V, 0, &vec![0xff; 1 << 20], t0);
    let newest = 8 * (1 << 20) - 1;
    let l = video(&s, 1);
    assert_eq!(l.range, Some((newest - 1023, newest)));
    assert_eq!(l.map.as_ref().map(|m| m.words.len()), Some(16));
    assert!(s.footprint() <= 1 + 2 + 16);
    // Ids past u64::MAX are ignored.
    s.set_map(1, V, u64::MAX - 9, &[0xff; 4], t0);
    assert_eq!(video(&s, 1).range, Some((u64::MAX - 9, u64::MAX)));
    // All zero or empty: nothing held, nothing asked.
    for (first, map) in [(0, vec![0; 1 << 20]), (5, Vec::new()), (0, bits(0, &[]))] {
        s.set_map(1, V, first, &map, t0);
        let l = video(&s, 1);
        assert!(l.range.is_none() && !l.holds(first) && !l.holds(0));
        assert!(ids_from(&s.poll(t0), 1).is_empty());
    }
    // An unknown supplier's map is ignored.
    s.set_map(9, V, 0, &[0xff], t0);
    assert!(s.supplier_stats(9).is_none());
}

#[test]
fn rarest_first_counts_bitmap_holders() {
    let t0 = Instant::now();
    let cfg = Config {
        max_inflight: 1,
        ..Config::default()
    };
    let mut s = Scheduler::new(cfg, 3);
    s.add_supplier(1, false);
    s.add_supplier(2, false);
    s.set_map(1, V, 0, &bits(0, &[0, 1, 2]), t0);
    // As a range (0..=2) it would seem to hold 1 too.
    s.set_map(2, V, 0, &bits(0, &[0, 2]), t0);
    s.set_clock(V, 0, t0 + ms(2000), ms(40));
    s.set_playhead(V, 0, t0);
    let mut f = fetches(&s.poll(t0));
    f.sort();
    assert_eq!(
        f.iter().map(|x| (x.0, x.1.clone())).collect::<Vec<_>>(),
        [(1, vec![1]), (2, vec![0])]
    );
}

#[test]
fn a_missing_set_bit_counts_against_its_supplier() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(Config::default(), 5);
    s.add_supplier(0, true);
    s.set_range(0, V, 0, 0, t0);
    for p in [1, 2] {
        s.add_supplier(p, false);
        s.set_map(p, V, 0, &[1], t0);
    }
    s.set_clock(V, 0, t0 + ms(2000), ms(40));
    s.set_playhead(V, 0, t0);
    let first = fetches(&s.poll(t0))[0].0;
    s.on_missing(first, V, 0, t0 + ms(30));
    assert!(!video(&s, first).holds(0), "cleared until its next map");
    assert_eq!(s.supplier_stats(first).unwrap().missing, 1);
    assert_eq!(fetches(&s.poll(t0 + ms(30)))[0].0, 3 - first);
    // Its next map says it holds it again: not asked for `missing_hold`.
    s.set_map(first, V, 0, &[1], t0 + ms(40));
    s.on_missing(3 - first, V, 0, t0 + ms(60));
    let a = s.poll(t0 + ms(60));
    assert!(fetches(&a).iter().all(|f| f.0 == 0), "{a:?}");
    assert_eq!(s.stats().missing, 2);
}
