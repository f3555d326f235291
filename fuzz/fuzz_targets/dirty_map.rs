//! Dirty-region maps (`storage-server/src/dirty.rs`): a `Tracker` driven by
//! an arbitrary sequence of mutations, missed acknowledgements, layout
//! changes, snapshots (`take`) and completed resyncs, plus two standalone
//! `DirtyMap`s (one marked with raw offsets, one within 1 TiB and merged
//! into the first), all checked against a simple model (sets of granule
//! intervals).
//!
//! Invariants checked:
//! - never panics, stays under the libFuzzer memory limits
//!   (run with `-rss_limit_mb=512 -malloc_limit_mb=256`);
//! - nothing at or past `MAX_VOLUME_BYTES` is ever marked;
//! - `ranges(size)` is sorted, disjoint, merged, clipped to `size`, and
//!   equal to the model's; `bytes` is their total; `is_empty` agrees;
//! - `take` returns everything marked since the last completed resync;
//!   `has` / `pending` / `tracking` agree with the model: maps exist only on
//!   a primary, not for in-sync peers after a layout change (a missed
//!   acknowledgement gives an in-sync peer one until the next), and a
//!   mutation marks exactly the maps of peers neither in sync nor syncing.
//!
//! Ranges given to the tracker stay within a 1 TiB volume (the callers
//! check ranges against the copy's size first, and a 64 TiB volume's maps
//! are 128 MiB each, more than the memory limit allows for several peers),
//! except offsets at or past `MAX_VOLUME_BYTES`, which are passed as they
//! are. The first standalone map takes any offset. Set `BASALT_FUZZ_DIRTY_UNCLAMPED=1`
//! to give the tracker unclamped ranges too.

#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use basalt_storage::dirty::{DirtyMap, Tracker, GRANULE};
use basalt_storage::meta::CopyMeta;
use basalt_storage::store::MAX_VOLUME_BYTES;
use libfuzzer_sys::fuzz_target;
use serde_json::json;

const G: u64 = GRANULE;
const LIMIT: u64 = MAX_VOLUME_BYTES;
/// Largest volume the tracker's ranges are kept within (see above).
const TRACKER_CAP: u64 = 1 << 40;
/// Longest range: at most 2^16 granules per mark, so one mark stays fast.
const MAX_LEN: u64 = 1 << 32;
const PEERS: [&str; 5] = ["a", "b", "c", "d", ""];
const MAX_OPS: usize = 64;

fn unclamped() -> bool {
    static U: OnceLock<bool> = OnceLock::new();
    *U.get_or_init(|| std::env::var_os("BASALT_FUZZ_DIRTY_UNCLAMPED").is_some())
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Off {
    Granule(u16, u16),
    Near(u8, i32),
    Raw(u64),
}

/// Interesting edges: the limit, the tracker cap, word boundaries.
const EDGES: [u64; 6] = [0, 64 * G, TRACKER_CAP, LIMIT, LIMIT - G, u64::MAX];

impl Off {
    fn resolve(self) -> u64 {
        match self {
            Off::Granule(g, sub) => u64::from(g) * G + u64::from(sub),
            Off::Near(i, d) => {
                EDGES[usize::from(i) % EDGES.len()].wrapping_add_signed(i64::from(d))
            }
            Off::Raw(x) => x,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Len {
    Small(u16),
    Granules(u8),
    Raw(u64),
}

impl Len {
    fn resolve(self) -> u64 {
        match self {
            Len::Small(n) => u64::from(n),
            Len::Granules(n) => u64::from(n) * G,
            Len::Raw(n) => n,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Size {
    Cap,
    Max,
    Granules(u16, u16),
    Raw(u64),
}

impl Size {
    fn resolve(self) -> u64 {
        match self {
            Size::Cap => TRACKER_CAP,
            Size::Max => u64::MAX,
            Size::Granules(g, sub) => u64::from(g) * G + u64::from(sub),
            Size::Raw(x) => x,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Mutation {
        off: Off,
        len: Len,
    },
    Missed {
        peer: u8,
        off: Off,
        len: Len,
    },
    /// A new layout: primary with in-sync `mirrors` and `syncing` peers
    /// (bit masks over a..d), or a mirror of `primary`.
    Layout {
        primary: bool,
        mirrors: u8,
        syncing: u8,
        of: u8,
    },
    Take {
        peer: u8,
        size: Size,
    },
    Finish {
        peer: u8,
    },
    Query {
        peer: u8,
    },
    MapMark {
        second: bool,
        off: Off,
        len: Len,
    },
    MapMerge,
    MapRanges {
        second: bool,
        size: Size,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    start: (bool, u8, u8, u8),
    ops: Vec<Op>,
}

/// Granule intervals `[first, last]`, disjoint, not adjacent, sorted.
#[derive(Clone, Default, Debug, PartialEq)]
struct Set(BTreeMap<u64, u64>);

impl Set {
    fn add(&mut self, mut first: u64, mut last: u64) {
        // Absorb every interval overlapping or adjacent to [first, last].
        let touching: Vec<(u64, u64)> = self
            .0
            .range(..=last.saturating_add(1))
            .filter(|(_, &l)| l.saturating_add(1) >= first)
            .map(|(&f, &l)| (f, l))
            .collect();
        for (f, l) in touching {
            self.0.remove(&f);
            first = first.min(f);
            last = last.max(l);
        }
        self.0.insert(first, last);
    }

    fn mark(&mut self, offset: u64, len: u64) {
        if len == 0 || offset >= LIMIT {
            return;
        }
        let last = offset.saturating_add(len - 1).min(LIMIT - 1) / G;
        self.add(offset / G, last);
    }

    fn union(&mut self, other: &Set) {
        for (&f, &l) in &other.0 {
            self.add(f, l);
        }
    }

    fn ranges(&self, size: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for (&f, &l) in &self.0 {
            let start = f * G;
            if start >= size {
                break;
            }
            out.push((start, ((l + 1) * G).min(size)));
        }
        out
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Default, Debug)]
struct PeerModel {
    live: Set,
    inflight: Set,
}

#[derive(Default, Debug)]
struct Model {
    primary: bool,
    in_sync: BTreeSet<String>,
    syncing: BTreeSet<String>,
    maps: BTreeMap<String, PeerModel>,
}

fn peer(i: u8) -> &'static str {
    PEERS[usize::from(i) % PEERS.len()]
}

fn meta(primary: bool, mirrors: u8, syncing: u8, of: u8) -> CopyMeta {
    let peers = |mask: u8| -> Vec<serde_json::Value> {
        (0..4)
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| json!({"server_id": PEERS[i], "address": "127.0.0.1:1"}))
            .collect()
    };
    // Built from JSON so that fields added with defaults do not break this.
    let v = if primary {
        json!({
            "volume_id": 1, "size_bytes": TRACKER_CAP, "role": "primary", "epoch": 1,
            "mirrors": peers(mirrors), "syncing": peers(syncing & !mirrors),
        })
    } else {
        json!({
            "volume_id": 1, "size_bytes": TRACKER_CAP, "role": "mirror", "epoch": 1,
            "primary_server_id": peer(of),
        })
    };
    serde_json::from_value(v).expect("CopyMeta from JSON")
}

impl Model {
    fn set_peers(&mut self, m: &CopyMeta) {
        self.primary = m.role == basalt_storage::meta::Role::Primary;
        self.in_sync = m.mirrors.iter().map(|p| p.server_id.clone()).collect();
        self.syncing = m.syncing.iter().map(|p| p.server_id.clone()).collect();
        if !self.primary {
            self.maps.clear();
        }
        for id in &self.in_sync {
            self.maps.remove(id);
        }
    }

    fn on_layout(&mut self, before: &CopyMeta, after: &CopyMeta) {
        use basalt_storage::meta::Role;
        if after.role == Role::Primary {
            let mut ensure = |id: &str| {
                if !id.is_empty() && !after.mirrors.iter().any(|p| p.server_id == id) {
                    self.maps.entry(id.to_owned()).or_default();
                }
            };
            match before.role {
                Role::Mirror => ensure(&before.primary_server_id),
                Role::Primary => before.mirrors.iter().for_each(|p| ensure(&p.server_id)),
            }
        }
        self.set_peers(after);
    }
}

fn check_ranges(got: &[(u64, u64)], want: &[(u64, u64)], size: u64) {
    for w in got.windows(2) {
        assert!(
            w[0].1 < w[1].0,
            "ranges overlap, touch or are unsorted: {got:?}"
        );
    }
    for &(s, e) in got {
        assert!(
            s < e && e <= size && s % G == 0,
            "bad range {s}..{e} (size {size})"
        );
        assert!(s < LIMIT, "marked past MAX_VOLUME_BYTES: {s}");
        assert!(e % G == 0 || e == size);
    }
    assert_eq!(got, want);
}

fn check_map(m: &DirtyMap, model: &Set, size: u64) {
    let got = m.ranges(size);
    check_ranges(&got, &model.ranges(size), size);
    assert_eq!(m.bytes(size), got.iter().map(|(s, e)| e - s).sum::<u64>());
    assert_eq!(m.is_empty(), model.is_empty());
}

fn tracker_range(off: Off, len: Len) -> (u64, u64) {
    let (off, len) = (off.resolve(), len.resolve());
    if unclamped() || off >= LIMIT {
        return (off, len);
    }
    let off = off % TRACKER_CAP;
    (off, len.min(MAX_LEN).min(TRACKER_CAP - off))
}

fuzz_target!(|input: Input| {
    let (p, mi, sy, of) = input.start;
    let mut current = meta(p, mi, sy, of);
    let t = Tracker::new(&current);
    let mut model = Model::default();
    model.set_peers(&current);
    let mut maps = [DirtyMap::default(), DirtyMap::default()];
    let mut map_models = [Set::default(), Set::default()];

    for op in input.ops.into_iter().take(MAX_OPS) {
        let layout_changed = matches!(op, Op::Layout { .. });
        match op {
            Op::Mutation { off, len } => {
                let (off, len) = tracker_range(off, len);
                t.on_mutation(off, len);
                let Model {
                    maps,
                    in_sync,
                    syncing,
                    ..
                } = &mut model;
                for (id, m) in maps.iter_mut() {
                    if !in_sync.contains(id) && !syncing.contains(id) {
                        m.live.mark(off, len);
                    }
                }
            }
            Op::Missed { peer: i, off, len } => {
                let (off, len) = tracker_range(off, len);
                t.missed(peer(i), off, len);
                if model.primary {
                    model
                        .maps
                        .entry(peer(i).to_owned())
                        .or_default()
                        .live
                        .mark(off, len);
                }
            }
            Op::Layout {
                primary,
                mirrors,
                syncing,
                of,
            } => {
                let next = meta(primary, mirrors, syncing, of);
                t.on_layout(&current, &next);
                model.on_layout(&current, &next);
                current = next;
            }
            Op::Take { peer: i, size } => {
                let size = size.resolve();
                let got = t.take(peer(i));
                match model.maps.get_mut(peer(i)) {
                    None => assert!(got.is_none(), "take without a map"),
                    Some(m) => {
                        let live = std::mem::take(&mut m.live);
                        m.inflight.union(&live);
                        let got = got.expect("take lost a map");
                        check_map(&got, &m.inflight, size);
                    }
                }
            }
            Op::Finish { peer: i } => {
                t.finish(peer(i));
                if let Some(m) = model.maps.get_mut(peer(i)) {
                    m.inflight = Set::default();
                }
            }
            Op::Query { peer: i } => {
                let id = peer(i);
                assert_eq!(t.has(id), model.maps.contains_key(id));
                assert_eq!(
                    t.pending(id),
                    model
                        .maps
                        .get(id)
                        .is_some_and(|m| !m.live.is_empty() || !m.inflight.is_empty())
                );
            }
            Op::MapMark { second, off, len } => {
                // The first map takes any offset (up to 128 MiB of bits);
                // the second stays within the tracker's 1 TiB and is merged
                // into the first, so the two never hold more than that.
                let (off, len) = if second {
                    let off = off.resolve() % TRACKER_CAP;
                    (off, len.resolve().min(MAX_LEN).min(TRACKER_CAP - off))
                } else {
                    (off.resolve(), len.resolve().min(MAX_LEN))
                };
                let k = usize::from(second);
                maps[k].mark(off, len);
                map_models[k].mark(off, len);
            }
            Op::MapMerge => {
                let [m0, m1] = &mut maps;
                m0.merge(m1);
                let [s0, s1] = &mut map_models;
                s0.union(s1);
            }
            Op::MapRanges { second, size } => {
                let k = usize::from(second);
                check_map(&maps[k], &map_models[k], size.resolve());
            }
        }
        // After every step: the set of maps, and none on a copy that is not
        // a primary. Right after a layout change, none for an in-sync peer
        // either (a missed acknowledgement gives one a map until then).
        let tracking = t.tracking();
        let want: Vec<String> = model.maps.keys().cloned().collect();
        assert_eq!(tracking, want);
        if !model.primary {
            assert!(tracking.is_empty(), "a mirror keeps maps");
        }
        if layout_changed {
            for id in &model.in_sync {
                assert!(!t.has(id), "map kept for in-sync peer {id}");
            }
        }
    }
    // Finally everything each map holds.
    for (id, m) in &model.maps {
        let got = t.take(id).expect("map vanished");
        let mut all = m.inflight.clone();
        all.union(&m.live);
        check_map(&got, &all, u64::MAX);
    }
    for k in 0..2 {
        check_map(&maps[k], &map_models[k], u64::MAX);
    }
});
