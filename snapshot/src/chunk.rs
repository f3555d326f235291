//! Chunks: the content-addressed unit of snapshot data.
//!
//! A chunk is one volume block ([`crate::BLOCK_SIZE`] bytes, or less for the
//! last block of a volume). Its [`ChunkId`] is the SHA-256 of the
//! *uncompressed* bytes, so identical blocks are stored once and every read is
//! verified against the id it was asked for.
//!
//! Stored chunk format (all integers little-endian):
//!
//! ```text
//! offset  size  field
//! 0       4     magic b"BCK1"
//! 4       1     codec: 1 = zstd frame, 0 = raw (used when zstd does not shrink the block)
//! 5       4     u32 uncompressed length
//! 9       ..    payload
//! ```

use std::fmt;

use sha2::{Digest, Sha256};

/// Magic bytes opening every stored chunk.
pub const MAGIC: &[u8; 4] = b"BCK1";
/// Length of the stored-chunk header.
pub const HEADER_LEN: usize = 9;
/// Codec byte: payload stored as is.
pub const CODEC_RAW: u8 = 0;
/// Codec byte: payload is one zstd frame.
pub const CODEC_ZSTD: u8 = 1;

/// zstd level 1: the fastest standard level. Snapshot uploads read a whole
/// volume, so compression must keep up with the disk and network on a small
/// CPU budget (hundreds of MB/s per core at level 1); higher levels cost several
/// times the CPU for a few percent of space on typical block data.
const ZSTD_LEVEL: i32 = 1;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk id {input:?}: expected exactly 64 hexadecimal characters (a SHA-256)")]
    InvalidHex { input: String },
    #[error(
        "chunk {id} is corrupt ({reason}); the stored object is damaged: \
         restore it from another copy or delete the snapshots that use it"
    )]
    Corrupt { id: ChunkId, reason: String },
    #[error(
        "chunk {id} uses codec {codec}, unknown to this version; \
         upgrade basalt to read snapshots written by newer versions"
    )]
    UnknownCodec { id: ChunkId, codec: u8 },
    #[error(
        "chunk {id} claims {len} uncompressed bytes, more than the {max} allowed; \
         refusing to decode it (damaged object, or a snapshot with a larger block size)"
    )]
    TooLarge { id: ChunkId, len: u64, max: usize },
}

/// SHA-256 of a chunk's uncompressed bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `data`.
    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(Sha256::digest(data).into())
    }

    /// Lowercase hex, 64 characters.
    pub fn hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(DIGITS[usize::from(b >> 4)]));
            s.push(char::from(DIGITS[usize::from(b & 0xf)]));
        }
        s
    }

    /// Parses 64 hex characters (either case).
    pub fn from_hex(s: &str) -> Result<ChunkId, ChunkError> {
        let bad = || ChunkError::InvalidHex {
            input: s.chars().take(80).collect(),
        };
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            let hi = hex_val(pair[0]).ok_or_else(bad)?;
            let lo = hex_val(pair[1]).ok_or_else(bad)?;
            *o = (hi << 4) | lo;
        }
        Ok(ChunkId(out))
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", self.hex())
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

/// True if every byte of `block` is zero.
pub fn is_zero(block: &[u8]) -> bool {
    // OR-folding fixed 64-byte groups vectorizes well; the early exit per group
    // keeps non-zero blocks (the common case) cheap.
    let mut groups = block.chunks_exact(64);
    let groups_zero = groups
        .by_ref()
        .all(|g| g.iter().fold(0u8, |acc, &b| acc | b) == 0);
    groups_zero && groups.remainder().iter().all(|&b| b == 0)
}

/// Computes the id of `block` and its stored form (header + zstd level 1, or
/// raw when compression does not shrink it).
///
/// # Panics
/// If `block` is longer than `u32::MAX` bytes (blocks are [`crate::BLOCK_SIZE`]).
pub fn encode(block: &[u8]) -> (ChunkId, Vec<u8>) {
    let len = u32::try_from(block.len()).expect("chunk longer than u32::MAX bytes");
    let id = ChunkId::of(block);
    let compressed = zstd::bulk::compress(block, ZSTD_LEVEL)
        .ok()
        .filter(|c| c.len() < block.len());
    let (codec, payload) = match &compressed {
        Some(c) => (CODEC_ZSTD, c.as_slice()),
        None => (CODEC_RAW, block),
    };
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.push(codec);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
    (id, out)
}

/// Decodes a stored chunk and verifies it is the chunk `id`.
///
/// Refuses (before allocating) a chunk whose header claims more than `max_len`
/// uncompressed bytes, and never returns bytes whose SHA-256 is not `id`.
pub fn decode(id: &ChunkId, stored: &[u8], max_len: usize) -> Result<Vec<u8>, ChunkError> {
    let corrupt = |reason: String| ChunkError::Corrupt { id: *id, reason };
    if stored.len() < HEADER_LEN {
        return Err(corrupt(format!(
            "{} bytes, shorter than the {HEADER_LEN}-byte header",
            stored.len()
        )));
    }
    let (header, payload) = stored.split_at(HEADER_LEN);
    if &header[..4] != MAGIC {
        return Err(corrupt("bad magic, not a basalt chunk".into()));
    }
    let codec = header[4];
    let len = u32::from_le_bytes([header[5], header[6], header[7], header[8]]);
    let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
    if len_usize > max_len {
        return Err(ChunkError::TooLarge {
            id: *id,
            len: u64::from(len),
            max: max_len,
        });
    }
    let data = match codec {
        CODEC_RAW => payload.to_vec(),
        CODEC_ZSTD => zstd::bulk::decompress(payload, len_usize)
            .map_err(|e| corrupt(format!("zstd payload does not decompress: {e}")))?,
        other => {
            return Err(ChunkError::UnknownCodec {
                id: *id,
                codec: other,
            })
        }
    };
    if data.len() != len_usize {
        return Err(corrupt(format!(
            "header says {len} bytes, payload holds {}",
            data.len()
        )));
    }
    let actual = ChunkId::of(&data);
    if actual != *id {
        return Err(corrupt(format!("content hashes to {actual}")));
    }
    Ok(data)
}

#[cfg(test)]
#[path = "chunk_tests.rs"]
mod tests;
