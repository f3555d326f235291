//! Dirty-region maps: for each peer that is (or was) absent from a primary
//! copy's in-sync set, the regions written since it left, so that when it
//! comes back with its old copy (`Peer.delta`), only those regions are sent
//! instead of the whole volume.
//!
//! A map is a bitmap with one bit per [`GRANULE`] of the volume; it grows on
//! demand, so it survives a resize of the copy. A primary keeps a map for
//! peer S:
//!
//! - from the first mutation S did not acknowledge `Ok` (link down, overdue
//!   acknowledgement, error status) while S was an in-sync or syncing
//!   mirror: that mutation's range is marked ([`Tracker::missed`]);
//! - from a layout change that removes S from the in-sync set;
//! - for the previous primary, from a layout change that promotes this copy.
//!
//! While S has a map and is neither in sync nor syncing, every mutation
//! marks its range ([`Tracker::on_mutation`], under the copy's ordering lock,
//! so the map and the data stay in the same order). A syncing S receives
//! every mutation, so only those it fails to acknowledge are marked. The map
//! is dropped when S is in the in-sync set again.
//!
//! Maps are kept in memory only: a primary that restarts has none, and a
//! returning peer then gets a full copy (`Peer.delta` is ignored without a
//! map). A copy that is not a primary keeps no maps.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::meta::{CopyMeta, Role};

/// Bytes covered by one bit of a map.
pub const GRANULE: u64 = 64 << 10;

/// Which granules of a volume were written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirtyMap {
    words: Vec<u64>,
}

impl DirtyMap {
    /// Marks every granule that `offset..offset+len` touches. Callers check
    /// ranges against the copy's size first; as a backstop, nothing past the
    /// largest volume is ever marked, so a map stays under
    /// `MAX_VOLUME_BYTES / GRANULE / 8` bytes (128 MiB) whatever it is told.
    pub fn mark(&mut self, offset: u64, len: u64) {
        let limit = crate::store::MAX_VOLUME_BYTES;
        if len == 0 || offset >= limit {
            return;
        }
        let first = offset / GRANULE;
        let last = offset.saturating_add(len - 1).min(limit - 1) / GRANULE;
        let need = (last / 64 + 1) as usize;
        if self.words.len() < need {
            self.words.resize(need, 0);
        }
        for g in first..=last {
            self.words[(g / 64) as usize] |= 1 << (g % 64);
        }
    }

    pub fn merge(&mut self, other: &DirtyMap) {
        if self.words.len() < other.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (w, o) in self.words.iter_mut().zip(&other.words) {
            *w |= o;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// The marked regions as merged byte ranges `[start, end)`, clipped to
    /// `size` (the copy's size).
    pub fn ranges(&self, size: u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (i, &w) in self.words.iter().enumerate() {
            let mut w = w;
            while w != 0 {
                let bit = u64::from(w.trailing_zeros());
                w &= w - 1;
                let start = (i as u64 * 64 + bit) * GRANULE;
                if start >= size {
                    return out;
                }
                let end = (start + GRANULE).min(size);
                match out.last_mut() {
                    Some(last) if last.1 == start => last.1 = end,
                    _ => out.push((start, end)),
                }
            }
        }
        out
    }

    /// Bytes the marked regions cover within `size`.
    pub fn bytes(&self, size: u64) -> u64 {
        self.ranges(size).iter().map(|(s, e)| e - s).sum()
    }
}

#[derive(Default)]
struct PeerMap {
    /// Regions written since the last snapshot.
    live: DirtyMap,
    /// Regions of snapshots taken by resyncs that have not completed: kept
    /// until a resync succeeds, so an interrupted one loses nothing.
    inflight: DirtyMap,
}

#[derive(Default)]
struct State {
    primary: bool,
    in_sync: HashSet<String>,
    syncing: HashSet<String>,
    maps: BTreeMap<String, PeerMap>,
}

impl State {
    fn absent(&self, peer: &str) -> bool {
        !self.in_sync.contains(peer) && !self.syncing.contains(peer)
    }
}

/// The dirty-region maps of one copy.
pub struct Tracker {
    state: Mutex<State>,
    /// Whether some map belongs to a peer that is neither in sync nor
    /// syncing: only then does every mutation take the lock.
    any_absent: AtomicBool,
    /// Bumped whenever a syncing or in-sync peer misses a mutation.
    missed: tokio::sync::watch::Sender<u64>,
}

impl Tracker {
    /// A tracker for a copy with this metadata, without maps.
    pub fn new(meta: &CopyMeta) -> Tracker {
        let t = Tracker {
            state: Mutex::default(),
            any_absent: AtomicBool::new(false),
            missed: tokio::sync::watch::channel(0).0,
        };
        t.set_peers(&mut t.lock(), meta);
        t
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_peers(&self, s: &mut State, meta: &CopyMeta) {
        s.primary = meta.role == Role::Primary;
        s.in_sync = meta.mirrors.iter().map(|p| p.server_id.clone()).collect();
        s.syncing = meta.syncing.iter().map(|p| p.server_id.clone()).collect();
        if !s.primary {
            s.maps.clear();
        }
        for id in &s.in_sync {
            s.maps.remove(id);
        }
        self.update_absent(s);
    }

    fn update_absent(&self, s: &State) {
        let any = s.maps.keys().any(|id| s.absent(id));
        self.any_absent.store(any, Ordering::Release);
    }

    /// A mutation of `offset..offset+len` was applied to the primary copy.
    /// Called under the copy's ordering lock.
    pub fn on_mutation(&self, offset: u64, len: u64) {
        if !self.any_absent.load(Ordering::Acquire) {
            return;
        }
        let mut s = self.lock();
        let State {
            maps,
            in_sync,
            syncing,
            ..
        } = &mut *s;
        for (id, m) in maps.iter_mut() {
            if !in_sync.contains(id) && !syncing.contains(id) {
                m.live.mark(offset, len);
            }
        }
    }

    /// `peer` did not acknowledge a mutation of `offset..offset+len` (or a
    /// resync chunk): it may not hold it.
    pub fn missed(&self, peer: &str, offset: u64, len: u64) {
        let mut s = self.lock();
        if !s.primary {
            return;
        }
        s.maps
            .entry(peer.to_owned())
            .or_default()
            .live
            .mark(offset, len);
        self.update_absent(&s);
        drop(s);
        self.missed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Applies a layout change. Called under the copy's ordering lock, with
    /// the new layout persisted, so every later mutation sees it.
    pub fn on_layout(&self, before: &CopyMeta, after: &CopyMeta) {
        let mut s = self.lock();
        if after.role == Role::Primary {
            let mut ensure = |id: &str| {
                if !id.is_empty() && !after.mirrors.iter().any(|p| p.server_id == id) {
                    s.maps.entry(id.to_owned()).or_default();
                }
            };
            match before.role {
                // Promoted: the previous primary is absent from now on.
                Role::Mirror => ensure(&before.primary_server_id),
                // In-sync mirrors that left the in-sync set.
                Role::Primary => before.mirrors.iter().for_each(|p| ensure(&p.server_id)),
            }
        }
        self.set_peers(&mut s, after);
    }

    /// Takes a snapshot of `peer`'s map for a resync: everything marked so
    /// far, including earlier snapshots whose resync did not complete.
    /// Marks from now on go to a fresh live map. `None` without a map.
    pub fn take(&self, peer: &str) -> Option<DirtyMap> {
        let mut s = self.lock();
        let m = s.maps.get_mut(peer)?;
        let live = std::mem::take(&mut m.live);
        m.inflight.merge(&live);
        Some(m.inflight.clone())
    }

    /// A resync of `peer` completed: its snapshots are done with.
    pub fn finish(&self, peer: &str) {
        if let Some(m) = self.lock().maps.get_mut(peer) {
            m.inflight = DirtyMap::default();
        }
    }

    /// Whether `peer` has a map.
    pub fn has(&self, peer: &str) -> bool {
        self.lock().maps.contains_key(peer)
    }

    /// Whether `peer` missed something since the last snapshot.
    pub fn pending(&self, peer: &str) -> bool {
        self.lock()
            .maps
            .get(peer)
            .is_some_and(|m| !m.live.is_empty() || !m.inflight.is_empty())
    }

    /// Peers with a map, sorted.
    pub fn tracking(&self) -> Vec<String> {
        self.lock().maps.keys().cloned().collect()
    }

    /// Changes whenever a peer misses a mutation.
    pub fn misses(&self) -> tokio::sync::watch::Receiver<u64> {
        self.missed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::PeerMeta;

    const G: u64 = GRANULE;

    fn peer(id: &str) -> PeerMeta {
        PeerMeta {
            server_id: id.into(),
            address: "127.0.0.1:1".into(),
            delta: false,
            seed_snapshot: 0,
        }
    }

    fn primary(mirrors: &[&str], syncing: &[&str]) -> CopyMeta {
        CopyMeta {
            volume_id: 1,
            size_bytes: 1 << 30,
            role: Role::Primary,
            epoch: 1,
            mirrors: mirrors.iter().map(|m| peer(m)).collect(),
            primary_server_id: String::new(),
            syncing: syncing.iter().map(|m| peer(m)).collect(),
            attachment: 0,
        }
    }

    #[test]
    fn marks_merge_into_granule_ranges_clipped_to_the_size() {
        let mut m = DirtyMap::default();
        assert!(m.is_empty());
        m.mark(0, 1);
        m.mark(G, 512);
        m.mark(5 * G - 512, 1024); // straddles granules 4 and 5
        m.mark(200 * G, 0); // nothing
        assert_eq!(m.ranges(1 << 30), vec![(0, 2 * G), (4 * G, 6 * G)]);
        assert_eq!(m.bytes(1 << 30), 4 * G);
        // Clipped to a size that ends inside a granule.
        assert_eq!(
            m.ranges(5 * G + 4096),
            vec![(0, 2 * G), (4 * G, 5 * G + 4096)]
        );
        // Far past the current end (a grown volume): the map grows.
        m.mark(10_000 * G, G);
        assert_eq!(m.ranges(u64::MAX).last(), Some(&(10_000 * G, 10_001 * G)));
        let mut other = DirtyMap::default();
        other.mark(2 * G, 1);
        m.merge(&other);
        assert_eq!(m.ranges(6 * G), vec![(0, 3 * G), (4 * G, 6 * G)]);
    }

    /// A range past the largest volume marks nothing (it used to try an
    /// allocation of exabytes and abort the process).
    #[test]
    fn marks_past_the_largest_volume_are_ignored() {
        let mut m = DirtyMap::default();
        m.mark(u64::MAX - 4096, 4096);
        m.mark(1 << 62, u64::from(u32::MAX));
        assert!(m.is_empty());
        assert!(m.words.capacity() * 8 < 1 << 20);
        let limit = crate::store::MAX_VOLUME_BYTES;
        m.mark(limit - G, 4 * G);
        assert_eq!(m.ranges(u64::MAX), vec![(limit - G, limit)]);
    }

    #[test]
    fn maps_follow_the_layout() {
        let t = Tracker::new(&primary(&["a", "b"], &[]));
        // In sync: nothing tracked, mutations mark nothing.
        t.on_mutation(0, G);
        assert!(t.tracking().is_empty());
        // A mutation b did not acknowledge starts b's map; only that range.
        t.missed("b", 3 * G, 1);
        assert_eq!(t.tracking(), vec!["b"]);
        t.on_mutation(7 * G, 1);
        assert_eq!(t.take("b").unwrap().ranges(1 << 30), vec![(3 * G, 4 * G)]);
        // The layout drops a: a gets a map and every mutation marks it (and
        // b's too, now that b is absent as well).
        t.on_layout(&primary(&["a", "b"], &[]), &primary(&[], &[]));
        assert_eq!(t.tracking(), vec!["a", "b"]);
        t.on_mutation(G, 1);
        assert_eq!(t.take("a").unwrap().ranges(1 << 30), vec![(G, 2 * G)]);
        // a syncing: its mutations are forwarded, so only misses mark it.
        t.on_layout(&primary(&[], &[]), &primary(&[], &["a"]));
        t.on_mutation(9 * G, 1);
        assert_eq!(
            t.take("a").unwrap().ranges(1 << 30),
            vec![(G, 2 * G)],
            "only the unfinished snapshot: the forwarded mutation is not marked"
        );
        // Back in sync: the map is gone.
        t.on_layout(&primary(&[], &["a"]), &primary(&["a"], &[]));
        assert_eq!(t.tracking(), vec!["b"]);
        assert!(t.take("a").is_none());
    }

    #[test]
    fn an_interrupted_resync_keeps_its_snapshot() {
        let t = Tracker::new(&primary(&[], &[]));
        t.on_layout(&primary(&["s"], &[]), &primary(&[], &[]));
        t.on_mutation(0, 1);
        let first = t.take("s").unwrap();
        assert_eq!(first.ranges(1 << 30), vec![(0, G)]);
        // The resync fails; more is written meanwhile.
        t.on_mutation(2 * G, 1);
        let second = t.take("s").unwrap();
        assert_eq!(second.ranges(1 << 30), vec![(0, G), (2 * G, 3 * G)]);
        t.finish("s");
        assert!(!t.pending("s"));
        assert_eq!(t.take("s").unwrap(), DirtyMap::default());
    }

    #[test]
    fn a_promoted_copy_tracks_its_old_primary_and_a_mirror_tracks_nothing() {
        let mirror = CopyMeta {
            role: Role::Mirror,
            mirrors: vec![],
            primary_server_id: "old".into(),
            ..primary(&[], &[])
        };
        let t = Tracker::new(&mirror);
        t.missed("x", 0, 1);
        assert!(t.tracking().is_empty(), "a mirror keeps no maps");
        t.on_layout(&mirror, &primary(&[], &[]));
        assert_eq!(t.tracking(), vec!["old"]);
        t.on_mutation(G, 1);
        assert_eq!(t.take("old").unwrap().ranges(1 << 30), vec![(G, 2 * G)]);
        // Demoted again: maps are dropped.
        t.on_layout(&primary(&[], &[]), &mirror);
        assert!(t.tracking().is_empty());
    }
}
