//! Snapshot manifests: which chunk holds each non-zero block of a volume.
//!
//! Binary format, version 1 (all integers little-endian):
//!
//! ```text
//! offset      size  field
//! 0           7     magic b"BSNAPMF"
//! 7           1     format version = 1
//! 8           8     u64 snapshot_id
//! 16          8     u64 volume_id
//! 24          8     u64 size_bytes        (volume size at the snapshot point, <= 64 TiB)
//! 32          4     u32 block_size        (must be BLOCK_SIZE)
//! 36          8     u64 parent_id         (0 = none)
//! 44          8     i64 created_unix_ms
//! 52          8     u64 entry count N
//! 60          40*N  entries, strictly ascending by index:
//!                     u64 block index (< ceil(size_bytes / block_size))
//!                     [u8; 32] chunk id (SHA-256 of the uncompressed block)
//! 60+40*N     32    SHA-256 of bytes [0, 60+40*N)
//! ```
//!
//! Blocks without an entry are all zeroes. The entries are not compressed:
//! chunk ids are random bytes, so zstd would gain almost nothing.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::chunk::ChunkId;
use crate::BLOCK_SIZE;

/// Magic bytes opening every manifest.
pub const MAGIC: &[u8; 7] = b"BSNAPMF";
/// The format version this code writes (and the only one it reads).
pub const VERSION: u8 = 1;
/// Largest volume a manifest may describe (64 TiB).
pub const MAX_SIZE_BYTES: u64 = 64 << 40;

const HEADER_LEN: usize = 60;
const ENTRY_LEN: usize = 40;
const CHECKSUM_LEN: usize = 32;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("not a snapshot manifest (bad magic); check that the object is a basalt manifest")]
    BadMagic,
    #[error(
        "manifest format version {0} is not supported (this build reads version {VERSION}); \
         upgrade basalt to read it"
    )]
    UnknownVersion(u8),
    #[error("manifest is truncated ({len} bytes, expected {expected}); the object is damaged or was partially copied")]
    Truncated { len: usize, expected: u64 },
    #[error("manifest has {extra} trailing bytes after its checksum; the object is damaged")]
    TrailingBytes { extra: u64 },
    #[error("manifest checksum mismatch; the object is damaged: restore it from another copy")]
    BadChecksum,
    #[error("manifest block size is {0}, but this build only supports {BLOCK_SIZE}")]
    BadBlockSize(u32),
    #[error("manifest volume size {0} exceeds the 64 TiB limit; the manifest is invalid")]
    TooLarge(u64),
    #[error(
        "manifest entries are not strictly ascending (block {index} after {previous}); \
         the manifest was written by a faulty encoder"
    )]
    Unsorted { previous: u64, index: u64 },
    #[error(
        "manifest entry for block {index} is past the end of the volume ({block_count} blocks)"
    )]
    IndexOutOfRange { index: u64, block_count: u64 },
}

/// A snapshot: volume geometry and the chunk of every non-zero block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub snapshot_id: u64,
    pub volume_id: u64,
    /// Volume size at the snapshot point.
    pub size_bytes: u64,
    /// Always [`BLOCK_SIZE`] for now.
    pub block_size: u32,
    /// Snapshot this one was taken after (0 = none).
    pub parent_id: u64,
    pub created_unix_ms: i64,
    /// Block index -> chunk; an absent block is all zeroes.
    pub blocks: BTreeMap<u64, ChunkId>,
}

impl Manifest {
    /// Serializes the manifest (format in the module doc).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.blocks.len() * ENTRY_LEN + CHECKSUM_LEN);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.snapshot_id.to_le_bytes());
        out.extend_from_slice(&self.volume_id.to_le_bytes());
        out.extend_from_slice(&self.size_bytes.to_le_bytes());
        out.extend_from_slice(&self.block_size.to_le_bytes());
        out.extend_from_slice(&self.parent_id.to_le_bytes());
        out.extend_from_slice(&self.created_unix_ms.to_le_bytes());
        out.extend_from_slice(&(self.blocks.len() as u64).to_le_bytes());
        for (index, id) in &self.blocks {
            out.extend_from_slice(&index.to_le_bytes());
            out.extend_from_slice(&id.0);
        }
        let sum: [u8; 32] = Sha256::digest(&out).into();
        out.extend_from_slice(&sum);
        out
    }

    /// Parses and validates a manifest. Never panics, whatever the input.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(ManifestError::BadMagic);
        }
        let mut r = Reader {
            buf: bytes,
            pos: MAGIC.len(),
        };
        let version = r.u8().ok_or(truncated(bytes.len(), HEADER_LEN as u64))?;
        if version != VERSION {
            return Err(ManifestError::UnknownVersion(version));
        }
        let header_err = || truncated(bytes.len(), (HEADER_LEN + CHECKSUM_LEN) as u64);
        let snapshot_id = r.u64().ok_or_else(header_err)?;
        let volume_id = r.u64().ok_or_else(header_err)?;
        let size_bytes = r.u64().ok_or_else(header_err)?;
        let block_size = r.u32().ok_or_else(header_err)?;
        let parent_id = r.u64().ok_or_else(header_err)?;
        let created_unix_ms = r.u64().ok_or_else(header_err)? as i64;
        let count = r.u64().ok_or_else(header_err)?;

        // Exact length check before touching entries (u128: no overflow).
        let expected =
            HEADER_LEN as u128 + u128::from(count) * ENTRY_LEN as u128 + CHECKSUM_LEN as u128;
        let len = bytes.len() as u128;
        if len < expected {
            let expected = u64::try_from(expected).unwrap_or(u64::MAX);
            return Err(truncated(bytes.len(), expected));
        }
        if len > expected {
            let extra = u64::try_from(len - expected).unwrap_or(u64::MAX);
            return Err(ManifestError::TrailingBytes { extra });
        }
        let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if Sha256::digest(body).as_slice() != sum {
            return Err(ManifestError::BadChecksum);
        }

        let mut m = Manifest {
            snapshot_id,
            volume_id,
            size_bytes,
            block_size,
            parent_id,
            created_unix_ms,
            blocks: BTreeMap::new(),
        };
        m.validate_geometry()?;
        let block_count = m.block_count();
        let mut previous: Option<u64> = None;
        for entry in body[HEADER_LEN..].chunks_exact(ENTRY_LEN) {
            let (index_bytes, id_bytes) = entry.split_at(8);
            let mut index_arr = [0u8; 8];
            index_arr.copy_from_slice(index_bytes);
            let index = u64::from_le_bytes(index_arr);
            let mut id = [0u8; 32];
            id.copy_from_slice(id_bytes);
            if let Some(previous) = previous.filter(|&p| index <= p) {
                return Err(ManifestError::Unsorted { previous, index });
            }
            if index >= block_count {
                return Err(ManifestError::IndexOutOfRange { index, block_count });
            }
            previous = Some(index);
            m.blocks.insert(index, ChunkId(id));
        }
        Ok(m)
    }

    /// Checks what [`Manifest::decode`] would refuse (block size, volume size,
    /// entries past the end), so a bad manifest is never stored.
    pub fn validate(&self) -> Result<(), ManifestError> {
        self.validate_geometry()?;
        let block_count = self.block_count();
        match self.blocks.keys().next_back() {
            Some(&index) if index >= block_count => {
                Err(ManifestError::IndexOutOfRange { index, block_count })
            }
            _ => Ok(()),
        }
    }

    fn validate_geometry(&self) -> Result<(), ManifestError> {
        if u64::from(self.block_size) != BLOCK_SIZE {
            return Err(ManifestError::BadBlockSize(self.block_size));
        }
        if self.size_bytes > MAX_SIZE_BYTES {
            return Err(ManifestError::TooLarge(self.size_bytes));
        }
        Ok(())
    }

    /// Number of blocks: `ceil(size_bytes / block_size)` (0 if block_size is 0).
    pub fn block_count(&self) -> u64 {
        match self.block_size {
            0 => 0,
            bs => self.size_bytes.div_ceil(u64::from(bs)),
        }
    }

    /// Bytes held by non-zero blocks (the last block may be short).
    pub fn data_bytes(&self) -> u64 {
        self.blocks.keys().map(|&i| self.block_len(i) as u64).sum()
    }

    /// Length of block `index`: `block_size`, except for a short last block;
    /// 0 for an index past the end.
    pub fn block_len(&self, index: u64) -> usize {
        let bs = u64::from(self.block_size);
        let Some(start) = index.checked_mul(bs).filter(|&s| s < self.size_bytes) else {
            return 0;
        };
        usize::try_from((self.size_bytes - start).min(bs)).unwrap_or(usize::MAX)
    }
}

fn truncated(len: usize, expected: u64) -> ManifestError {
    ManifestError::Truncated { len, expected }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let end = self.pos.checked_add(N)?;
        let out = self.buf.get(self.pos..end)?.try_into().ok()?;
        self.pos = end;
        Some(out)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
}

#[cfg(test)]
#[path = "manifest_tests.rs"]
mod tests;
