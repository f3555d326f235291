//! A bitmap with one bit per snapshot block ([`BLOCK`] bytes of a volume).

use basalt_snapshot::BLOCK_SIZE;

/// Bytes of a volume per bit.
pub const BLOCK: u64 = BLOCK_SIZE;

/// Blocks of a volume of `size` bytes (the last one may be short).
pub fn blocks_of(size: u64) -> u64 {
    size.div_ceil(BLOCK)
}

/// Indexes of the blocks that `offset..offset+len` touches.
pub fn touched(offset: u64, len: u64) -> std::ops::Range<u64> {
    if len == 0 {
        return 0..0;
    }
    offset / BLOCK..(offset.saturating_add(len - 1) / BLOCK + 1)
}

/// Indexes of the blocks that `offset..offset+len` covers entirely, where a
/// volume of `size` bytes ends with a short block.
pub fn covered(offset: u64, len: u64, size: u64) -> std::ops::Range<u64> {
    let end = offset.saturating_add(len).min(size);
    let first = offset.div_ceil(BLOCK);
    let last = if end == size {
        blocks_of(size)
    } else {
        end / BLOCK
    };
    first..last.max(first)
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bits {
    words: Vec<u64>,
}

impl Bits {
    pub fn new(blocks: u64) -> Bits {
        Bits {
            words: vec![0; blocks.div_ceil(64) as usize],
        }
    }

    pub fn from_words(words: Vec<u64>) -> Bits {
        Bits { words }
    }

    pub fn words(&self) -> &[u64] {
        &self.words
    }

    fn grow(&mut self, block: u64) {
        let need = (block / 64 + 1) as usize;
        if self.words.len() < need {
            self.words.resize(need, 0);
        }
    }

    pub fn set(&mut self, block: u64) {
        self.grow(block);
        self.words[(block / 64) as usize] |= 1 << (block % 64);
    }

    pub fn clear(&mut self, block: u64) {
        if let Some(w) = self.words.get_mut((block / 64) as usize) {
            *w &= !(1 << (block % 64));
        }
    }

    pub fn get(&self, block: u64) -> bool {
        self.words
            .get((block / 64) as usize)
            .is_some_and(|w| w & (1 << (block % 64)) != 0)
    }

    pub fn set_range(&mut self, r: std::ops::Range<u64>) {
        for b in r {
            self.set(b);
        }
    }

    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    pub fn merge(&mut self, other: &Bits) {
        if self.words.len() < other.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (w, o) in self.words.iter_mut().zip(&other.words) {
            *w |= o;
        }
    }

    /// Set bits below `limit`, ascending.
    pub fn ones(&self, limit: u64) -> Vec<u64> {
        let mut out = Vec::new();
        for (i, &w) in self.words.iter().enumerate() {
            let mut w = w;
            while w != 0 {
                let b = i as u64 * 64 + u64::from(w.trailing_zeros());
                w &= w - 1;
                if b >= limit {
                    return out;
                }
                out.push(b);
            }
        }
        out
    }

    /// Clear bits below `limit`, ascending.
    pub fn zeros(&self, limit: u64) -> Vec<u64> {
        (0..limit).filter(|&b| !self.get(b)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_of_blocks() {
        assert_eq!(touched(0, 0), 0..0);
        assert_eq!(touched(0, 1), 0..1);
        assert_eq!(touched(BLOCK - 1, 2), 0..2);
        assert_eq!(covered(0, BLOCK, 4 * BLOCK), 0..1);
        assert_eq!(covered(1, BLOCK, 4 * BLOCK), 1..1);
        assert_eq!(covered(BLOCK, 2 * BLOCK + 4096, 4 * BLOCK), 1..3);
        // A short last block is covered by a write to the end of the volume.
        let size = 2 * BLOCK + 8192;
        assert_eq!(covered(2 * BLOCK, 8192, size), 2..3);
        assert_eq!(covered(2 * BLOCK, 4096, size), 2..2);
        assert_eq!(blocks_of(size), 3);
    }

    #[test]
    fn set_get_count_ones() {
        let mut b = Bits::new(10);
        b.set(3);
        b.set(200);
        assert!(b.get(3) && b.get(200) && !b.get(4));
        assert_eq!(b.count(), 2);
        assert_eq!(b.ones(1000), vec![3, 200]);
        assert_eq!(b.ones(100), vec![3]);
        b.clear(3);
        assert_eq!(b.zeros(4), vec![0, 1, 2, 3]);
        let mut c = Bits::default();
        c.set(5);
        c.merge(&b);
        assert_eq!(c.ones(u64::MAX), vec![5, 200]);
    }
}
