//! Volume snapshots for Basalt.
//!
//! A snapshot is a [`Manifest`] (which block of the volume holds which chunk)
//! plus the content-addressed chunks it names, both kept in a [`Destination`]:
//! a local directory (`file://`) or an S3 bucket (`s3://`), reached through the
//! `object_store` crate.
//!
//! * [`chunk`]: chunk ids (SHA-256 of the uncompressed block), the stored chunk
//!   format (small header + zstd) and verified decoding.
//! * [`manifest`]: the versioned binary manifest format.
//! * [`destination`]: where snapshots are kept, the object key layout, and the
//!   garbage-collection sweep.
//! * [`set`]: one snapshot over several destinations (duplicate or striped),
//!   read with fallback, hedged requests and repair of corrupt copies.
//!
//! Change tracking and chunking work on [`BLOCK_SIZE`] blocks (512 KiB, as the
//! EBS direct APIs). A block that is all zeroes is not stored at all.

pub mod chunk;
pub mod destination;
pub mod manifest;
pub mod set;
#[doc(hidden)]
pub mod testing;

pub use chunk::{ChunkError, ChunkId};
pub use destination::{
    read_credentials, read_credentials_file, AccessError, Destination, DestinationError,
    DestinationSpec, StoreKind, SweepStats, Usage, URL_FORMS,
};
pub use manifest::{Manifest, ManifestError};
pub use set::{DestinationSet, Layout, MemberStats, PutOutcome, SetError, SetOptions, SetStats};

/// Change-tracking and chunk granularity in bytes (512 KiB).
pub const BLOCK_SIZE: u64 = 512 << 10;
