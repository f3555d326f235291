//! The frozen image of a copy while its snapshot uploads: copy-on-write of
//! the blocks not yet read.
//!
//! At the snapshot point (under the copy's ordering lock) every block the
//! snapshot will read is `pending`. A mutation applied after the point (on
//! the same lock) first copies each pending block it touches aside, into a
//! file in the copy's directory, and clears its bit: the block's content at
//! the point is kept. The uploader reads a block from the live data file
//! without any lock, then checks under the freeze's lock that it is still
//! pending; if so no mutation touched it since the point (one would have
//! preserved it and cleared the bit first), so what was read is the
//! point's content, and clearing the bit ends its copy-on-write. If not,
//! the preserved copy is used. The guest is never held for an upload, only
//! for copying a block it overwrites first (one 512 KiB read and write).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::bits::{touched, Bits, BLOCK};

struct State {
    pending: Bits,
    /// Block -> offset of its preserved content in the side file.
    preserved: HashMap<u64, u64>,
    next: u64,
}

pub struct Freeze {
    /// Volume size at the point.
    pub size: u64,
    state: Mutex<State>,
    side: File,
    path: PathBuf,
    pub cow_blocks: AtomicU64,
}

impl Freeze {
    pub fn new(dir: &Path, snapshot_id: u64, size: u64, pending: Bits) -> std::io::Result<Freeze> {
        let path = dir.join(format!("snap-{snapshot_id}.cow"));
        let side = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        Ok(Freeze {
            size,
            state: Mutex::new(State {
                pending,
                preserved: HashMap::new(),
                next: 0,
            }),
            side,
            path,
            cow_blocks: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn block_len(&self, b: u64) -> usize {
        (self.size - b * BLOCK).min(BLOCK) as usize
    }

    /// Called under the copy's ordering lock before a mutation of
    /// `offset..offset+len` is applied to `data`: preserves the pending
    /// blocks it touches.
    pub fn before_mutation(&self, data: &File, offset: u64, len: u64) -> std::io::Result<()> {
        let mut s = self.lock();
        for b in touched(offset, len) {
            if b * BLOCK >= self.size || !s.pending.get(b) {
                continue;
            }
            let mut buf = vec![0u8; self.block_len(b)];
            data.read_exact_at(&mut buf, b * BLOCK)?;
            let at = s.next;
            self.side.write_all_at(&buf, at)?;
            s.next += buf.len() as u64;
            s.preserved.insert(b, at);
            s.pending.clear(b);
            self.cow_blocks.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The content of block `b` at the point.
    pub fn read_block(&self, data: &File, b: u64) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; self.block_len(b)];
        let preserved = self.lock().preserved.get(&b).copied();
        if preserved.is_none() {
            data.read_exact_at(&mut buf, b * BLOCK)?;
            let mut s = self.lock();
            if s.pending.get(b) {
                s.pending.clear(b);
                return Ok(buf);
            }
        }
        // Overwritten since the point: its content was preserved first.
        let at = self.lock().preserved.remove(&b);
        match at {
            Some(at) => {
                self.side.read_exact_at(&mut buf, at)?;
                Ok(buf)
            }
            None => Err(std::io::Error::other(format!(
                "block {b} is neither pending nor preserved (read twice?)"
            ))),
        }
    }
}

impl Drop for Freeze {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overwritten_blocks_keep_their_content_at_the_point() {
        let d = tempfile::tempdir().unwrap();
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(d.path().join("data"))
            .unwrap();
        let size = 3 * BLOCK;
        data.set_len(size).unwrap();
        data.write_all_at(&vec![1; size as usize], 0).unwrap();
        let mut pending = Bits::new(3);
        pending.set_range(0..3);
        let f = Freeze::new(d.path(), 9, size, pending).unwrap();
        // Block 1 is overwritten after the point; block 0 is read first and
        // overwritten after (no copy needed).
        assert_eq!(f.read_block(&data, 0).unwrap(), vec![1; BLOCK as usize]);
        for (off, len) in [(0, 4096), (BLOCK + 512, 4096)] {
            f.before_mutation(&data, off, len).unwrap();
            data.write_all_at(&vec![2; len as usize], off).unwrap();
        }
        assert_eq!(f.cow_blocks.load(Ordering::Relaxed), 1);
        assert_eq!(f.read_block(&data, 1).unwrap(), vec![1; BLOCK as usize]);
        assert_eq!(f.read_block(&data, 2).unwrap(), vec![1; BLOCK as usize]);
        assert!(f.read_block(&data, 1).is_err(), "read twice");
        let side = d.path().join("snap-9.cow");
        assert!(side.exists());
        drop(f);
        assert!(!side.exists());
    }
}
