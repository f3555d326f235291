//! Change tracking for incremental snapshots: which blocks were written
//! since a snapshot point.
//!
//! Every copy (primary and mirrors) keeps one map per recent snapshot
//! point, and every mutation it applies marks all of them. On the primary,
//! a map starts under the ordering lock at the very instant of the point, so
//! it holds exactly the writes after it (`exact`). A mirror learns of a point
//! afterwards (`MarkSnapshot`), so its map for that point may miss the writes
//! in between; it is never used alone: the changes since point S on a copy
//! whose map for S is not exact are taken from the map of the point before
//! S, which started earlier and so holds a superset. A superset only costs
//! reading blocks that did not change (their hashes match the parent's and
//! nothing is uploaded); a subset would make a wrong snapshot, so where no
//! safe map exists (the server restarted, the copy was rebuilt) the answer
//! is `None` and the snapshot compares every block's hash instead.

use super::bits::{touched, Bits};

/// Maps kept per copy.
const KEEP: usize = 4;

struct Map {
    base: u64,
    exact: bool,
    bits: Bits,
}

#[derive(Default)]
pub struct ChangeMaps {
    /// Oldest first.
    maps: Vec<Map>,
}

impl ChangeMaps {
    /// A mutation of `offset..offset+len` was applied.
    pub fn on_mutation(&mut self, offset: u64, len: u64) {
        for m in &mut self.maps {
            m.bits.set_range(touched(offset, len));
        }
    }

    /// Starts tracking the writes after snapshot point `snapshot_id`.
    pub fn point(&mut self, snapshot_id: u64, exact: bool) {
        if self.maps.iter().any(|m| m.base == snapshot_id) {
            return;
        }
        self.maps.push(Map {
            base: snapshot_id,
            exact,
            bits: Bits::default(),
        });
        if self.maps.len() > KEEP {
            self.maps.remove(0);
        }
    }

    /// The blocks written since point `snapshot_id` (a superset), or `None`
    /// when this copy cannot tell.
    pub fn since(&self, snapshot_id: u64) -> Option<Bits> {
        let i = self.maps.iter().position(|m| m.base == snapshot_id)?;
        if self.maps[i].exact {
            return Some(self.maps[i].bits.clone());
        }
        let before = self.maps.get(i.checked_sub(1)?)?;
        Some(before.bits.clone())
    }

    /// Encodes the maps: `BCHG` 1, count u32, then per map base u64,
    /// exact u8, word count u64, words u64 (all little-endian), then the
    /// SHA-256 of everything before it.
    pub fn encode(&self) -> Vec<u8> {
        use sha2::Digest;
        let mut b = b"BCHG\x01".to_vec();
        b.extend_from_slice(&(self.maps.len() as u32).to_le_bytes());
        for m in &self.maps {
            b.extend_from_slice(&m.base.to_le_bytes());
            b.push(u8::from(m.exact));
            b.extend_from_slice(&(m.bits.words().len() as u64).to_le_bytes());
            for w in m.bits.words() {
                b.extend_from_slice(&w.to_le_bytes());
            }
        }
        let sum = sha2::Sha256::digest(&b);
        b.extend_from_slice(&sum);
        b
    }

    /// Decodes [`ChangeMaps::encode`]; `None` for anything damaged (the
    /// caller then knows nothing, which is always safe).
    pub fn decode(bytes: &[u8]) -> Option<ChangeMaps> {
        use sha2::Digest;
        let body = bytes.get(..bytes.len().checked_sub(32)?)?;
        if sha2::Sha256::digest(body).as_slice() != &bytes[body.len()..] {
            return None;
        }
        let mut r = body.strip_prefix(b"BCHG\x01")?;
        let mut take = |n: usize| -> Option<&[u8]> {
            let (h, t) = r.split_at_checked(n)?;
            r = t;
            Some(h)
        };
        let u64_of = |b: &[u8]| b.try_into().ok().map(u64::from_le_bytes);
        let count = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let mut maps = Vec::new();
        for _ in 0..count.min(KEEP) {
            let base = u64_of(take(8)?)?;
            let exact = take(1)?[0] == 1;
            let n = usize::try_from(u64_of(take(8)?)?).ok()?;
            let words = take(n.checked_mul(8)?)?
                .chunks_exact(8)
                .map(|w| u64_of(w).unwrap_or(0))
                .collect();
            maps.push(Map {
                base,
                exact,
                bits: Bits::from_words(words),
            });
        }
        Some(ChangeMaps { maps })
    }

    /// Bases tracked, oldest first (for status).
    pub fn bases(&self) -> Vec<u64> {
        self.maps.iter().map(|m| m.base).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::bits::BLOCK;
    use super::*;

    #[test]
    fn exact_maps_answer_alone() {
        let mut c = ChangeMaps::default();
        c.on_mutation(0, 4096);
        assert_eq!(c.since(1), None, "no point yet: unknown");
        c.point(1, true);
        c.on_mutation(3 * BLOCK, 4096);
        assert_eq!(c.since(1).unwrap().ones(100), vec![3]);
        c.point(2, true);
        c.on_mutation(5 * BLOCK - 1, 2);
        assert_eq!(c.since(1).unwrap().ones(100), vec![3, 4, 5]);
        assert_eq!(c.since(2).unwrap().ones(100), vec![4, 5]);
    }

    #[test]
    fn late_maps_use_the_earlier_one() {
        let mut c = ChangeMaps::default();
        c.point(1, false);
        c.on_mutation(0, 1);
        // Written after point 2 on the primary but before this mirror
        // heard of it: only map 1 has it.
        c.on_mutation(7 * BLOCK, 1);
        c.point(2, false);
        c.on_mutation(9 * BLOCK, 1);
        assert_eq!(c.since(2).unwrap().ones(100), vec![0, 7, 9]);
        // The oldest late map has nothing before it: unknown.
        assert_eq!(c.since(1), None);
    }

    #[test]
    fn maps_round_trip_and_damage_is_refused() {
        let mut c = ChangeMaps::default();
        c.point(1, false);
        c.on_mutation(7 * BLOCK, 1);
        c.point(2, true);
        c.on_mutation(900 * BLOCK, 1);
        let b = c.encode();
        let d = ChangeMaps::decode(&b).unwrap();
        assert_eq!(d.bases(), vec![1, 2]);
        assert_eq!(d.since(2).unwrap().ones(u64::MAX), vec![900]);
        assert_eq!(d.since(1), None, "a late first map stays unusable");
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x10;
            assert!(ChangeMaps::decode(&bad).is_none(), "byte {i}");
        }
        assert!(ChangeMaps::decode(&b[..b.len() - 1]).is_none());
        assert!(ChangeMaps::decode(&[]).is_none());
    }

    #[test]
    fn old_maps_are_dropped() {
        let mut c = ChangeMaps::default();
        for s in 1..=6 {
            c.point(s, true);
        }
        assert_eq!(c.bases(), vec![3, 4, 5, 6]);
        assert_eq!(c.since(1), None);
    }
}
