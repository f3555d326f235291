//! Snapshot manifests (`snapshot/src/manifest.rs`) and chunk objects
//! (`snapshot/src/chunk.rs`) as read back from an object store, which is
//! outside Basalt's control.
//!
//! Invariants checked:
//! - `Manifest::decode` never panics; what it accepts re-encodes to the same
//!   bytes and passes `validate`;
//! - `chunk::decode` never panics, never returns more than `max_len` bytes,
//!   and returns only data whose SHA-256 is the chunk's id.

#![no_main]

use basalt_snapshot::chunk;
use basalt_snapshot::{ChunkId, Manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data) {
        assert_eq!(m.encode(), data, "a decoded manifest re-encodes differently");
        assert!(m.validate().is_ok());
        assert!(m.data_bytes() <= m.size_bytes);
    }
    // The first 32 bytes name the chunk; the rest is its stored form.
    if data.len() >= 32 {
        let mut id = [0u8; 32];
        id.copy_from_slice(&data[..32]);
        let id = ChunkId(id);
        let max_len = 64 << 10;
        if let Ok(block) = chunk::decode(&id, &data[32..], max_len) {
            assert!(block.len() <= max_len);
            assert_eq!(ChunkId::of(&block), id, "a chunk decoded to data of another hash");
        }
    }
});
