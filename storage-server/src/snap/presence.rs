//! Which blocks of a copy created from a snapshot are local, persisted in
//! `<copy>/present.bits` (little-endian 64-bit words, bit i = block i).
//!
//! A block becomes present in memory when the mutation that makes it so is
//! applied (a full-block write or write-zeroes, on any copy). It is
//! persisted only after a data sync that started after it was set
//! ([`Presence::take_unsynced`] before the fdatasync, [`Presence::persist`]
//! after), so a persisted bit always means the block's data is durable. A
//! crash may forget bits whose data was never flushed; those blocks are
//! fetched again, which is what the guest may see of unflushed writes
//! anyway.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use super::bits::{Bits, BLOCK};

pub const PRESENCE_FILE: &str = "present.bits";

struct State {
    bits: Bits,
    /// Words changed since the last sync started.
    unsynced: BTreeSet<usize>,
}

pub struct Presence {
    file: File,
    /// Blocks of the snapshot; blocks at or past it are local from the start.
    total: u64,
    state: Mutex<State>,
}

impl Presence {
    /// Opens (or creates, all clear) the map of a copy whose snapshot has
    /// `total` blocks.
    pub fn open(dir: &Path, total: u64) -> std::io::Result<Presence> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(PRESENCE_FILE))?;
        let words = total.div_ceil(64) as usize;
        let mut bytes = vec![0u8; words * 8];
        let len = file.metadata()?.len() as usize;
        let n = len.min(bytes.len());
        file.read_exact_at(&mut bytes[..n], 0)?;
        if len < bytes.len() {
            file.set_len(bytes.len() as u64)?;
            file.sync_all()?;
        }
        let words = bytes
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]))
            .collect();
        Ok(Presence {
            file,
            total,
            state: Mutex::new(State {
                bits: Bits::from_words(words),
                unsynced: BTreeSet::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn is_present(&self, b: u64) -> bool {
        b >= self.total || self.lock().bits.get(b)
    }

    /// Blocks of `r` not present.
    pub fn missing(&self, r: std::ops::Range<u64>) -> Vec<u64> {
        let s = self.lock();
        r.filter(|&b| b < self.total && !s.bits.get(b)).collect()
    }

    pub fn mark(&self, r: std::ops::Range<u64>) {
        let mut s = self.lock();
        for b in r {
            if b < self.total && !s.bits.get(b) {
                s.bits.set(b);
                s.unsynced.insert((b / 64) as usize);
            }
        }
    }

    pub fn present(&self) -> u64 {
        self.lock().bits.ones(self.total).len() as u64
    }

    /// Not yet present, ascending.
    pub fn missing_all(&self) -> Vec<u64> {
        self.lock().bits.zeros(self.total)
    }

    /// Every block present (in memory).
    pub fn complete(&self) -> bool {
        self.present() == self.total
    }

    /// No bit waits for a sync.
    pub fn all_synced(&self) -> bool {
        self.lock().unsynced.is_empty()
    }

    /// Words to persist after the data sync that is about to start.
    pub fn take_unsynced(&self) -> Vec<usize> {
        std::mem::take(&mut self.lock().unsynced)
            .into_iter()
            .collect()
    }

    /// Persists `words` (as [`Presence::take_unsynced`] returned them); on
    /// failure they are kept for the next sync.
    pub fn persist(&self, words: Vec<usize>) -> std::io::Result<()> {
        if words.is_empty() {
            return Ok(());
        }
        let values: Vec<(usize, u64)> = {
            let s = self.lock();
            words
                .iter()
                .map(|&w| (w, s.bits.words().get(w).copied().unwrap_or(0)))
                .collect()
        };
        let r = values
            .iter()
            .try_for_each(|&(w, v)| self.file.write_all_at(&v.to_le_bytes(), w as u64 * 8))
            .and_then(|()| self.file.sync_data());
        if r.is_err() {
            self.lock().unsynced.extend(words);
        }
        r
    }
}

/// Blocks of a `size`-byte volume a `BLOCK`-granular map covers.
pub fn blocks(size: u64) -> u64 {
    size.div_ceil(BLOCK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_synced_bits_survive_a_reopen() {
        let d = tempfile::tempdir().unwrap();
        let p = Presence::open(d.path(), 130).unwrap();
        assert!(p.is_present(130) && !p.is_present(0));
        p.mark(0..2);
        let words = p.take_unsynced();
        p.persist(words).unwrap();
        p.mark(129..131);
        assert_eq!(p.present(), 3);
        drop(p);
        let p = Presence::open(d.path(), 130).unwrap();
        assert_eq!(p.present(), 2, "an unsynced bit came back");
        assert_eq!(p.missing(0..4), vec![2, 3]);
        p.mark(0..130);
        assert!(p.complete());
    }
}
