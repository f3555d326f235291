//! One snapshot laid over several destinations, read with fallback.
//!
//! A [`DestinationSet`] is the destinations of one snapshot and their
//! [`Layout`]: `single` (one destination), `duplicate` (every member holds
//! every chunk) or `striped` (block `b`'s chunk in member
//! `(b / stripe_blocks) % n`). Every member holds every manifest, so each
//! destination's own garbage sweep keeps exactly the chunks its manifests name.
//!
//! Reads ([`DestinationSet::get_chunk`], [`DestinationSet::get_manifest`])
//! go to the best member holding the object, hedge a slow one with another
//! request, and move on at once after an error; chunk reads also verify every
//! chunk and repair a corrupt copy with the verified data served by another
//! member. [`DestinationSet::stats`] reports what happened.

mod error;
mod layout;
mod read;
mod score;

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::{join_all, try_join_all};

use crate::chunk::ChunkId;
use crate::destination::{Destination, DestinationError};
use crate::manifest::Manifest;

pub use error::{Failures, MemberFailure, SetError};
pub use layout::{Layout, DEFAULT_STRIPE_BLOCKS, MAX_MEMBERS};
pub use score::{MemberStats, SetOptions, SetStats};

/// What [`DestinationSet::put_chunk`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PutOutcome {
    /// Bytes written, summed over the holders that lacked the chunk.
    pub new_bytes: u64,
    /// True if every holder already had the chunk (nothing was written).
    pub reused: bool,
}

/// The destinations of one snapshot and how its chunks are spread over them.
pub struct DestinationSet {
    members: Vec<Arc<Destination>>,
    /// The first `layout_members` members are laid out by `layout`; the
    /// rest are full copies (each holds every chunk).
    layout_members: usize,
    layout: Layout,
    options: SetOptions,
    board: score::Board,
}

impl fmt::Debug for DestinationSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.members.iter().map(|m| m.name()).collect();
        f.debug_struct("DestinationSet")
            .field("layout", &self.layout)
            .field("members", &names)
            .finish()
    }
}

impl DestinationSet {
    /// A set with the default [`SetOptions`]. `single` takes exactly one
    /// member; `duplicate` and `striped` take 2 to [`MAX_MEMBERS`] members
    /// with distinct names; a stripe is at least 1 block.
    pub fn new(members: Vec<Arc<Destination>>, layout: Layout) -> Result<DestinationSet, SetError> {
        DestinationSet::with_options(members, layout, SetOptions::default())
    }

    /// [`DestinationSet::new`] with explicit read timers.
    pub fn with_options(
        members: Vec<Arc<Destination>>,
        layout: Layout,
        options: SetOptions,
    ) -> Result<DestinationSet, SetError> {
        let count = members.len();
        match layout {
            Layout::Single if count != 1 => return Err(SetError::SingleMembers { count }),
            Layout::Single => {}
            Layout::Striped { stripe_blocks: 0 } => return Err(SetError::ZeroStripe),
            Layout::Duplicate | Layout::Striped { .. } => {
                if !(2..=MAX_MEMBERS).contains(&count) {
                    return Err(SetError::MemberCount {
                        layout: layout.as_str(),
                        count,
                    });
                }
            }
        }
        let mut seen = HashSet::new();
        if let Some(dup) = members.iter().find(|m| !seen.insert(m.name())) {
            return Err(SetError::DuplicateMember {
                name: dup.name().to_owned(),
            });
        }
        let names: Vec<&str> = members.iter().map(|m| m.name()).collect();
        let board = score::Board::new(&names, options);
        Ok(DestinationSet {
            layout_members: members.len(),
            members,
            layout,
            options,
            board,
        })
    }

    /// Adds destinations that hold a full copy of the snapshot (made by a
    /// copy to another destination): every block's chunk is in each of
    /// them, besides its holders in the layout.
    pub fn with_copies(
        mut self,
        copies: Vec<Arc<Destination>>,
    ) -> Result<DestinationSet, SetError> {
        if copies.is_empty() {
            return Ok(self);
        }
        let mut seen: HashSet<String> = self.members.iter().map(|m| m.name().to_owned()).collect();
        if let Some(dup) = copies.iter().find(|m| !seen.insert(m.name().to_owned())) {
            return Err(SetError::DuplicateMember {
                name: dup.name().to_owned(),
            });
        }
        self.members.extend(copies);
        let names: Vec<&str> = self.members.iter().map(|m| m.name()).collect();
        self.board = score::Board::new(&names, self.options);
        Ok(self)
    }

    /// The members, in the order given.
    pub fn members(&self) -> &[Arc<Destination>] {
        &self.members
    }

    /// The layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Indexes (into [`DestinationSet::members`]) of the members that hold
    /// block `block`'s chunk.
    pub fn holders(&self, block: u64) -> Vec<usize> {
        let mut h = match self.layout {
            Layout::Single => vec![0],
            Layout::Duplicate => (0..self.layout_members).collect(),
            Layout::Striped { stripe_blocks } => {
                let n = self.layout_members as u64;
                // `new` guarantees stripe_blocks >= 1 and n >= 2.
                vec![((block / stripe_blocks.max(1)) % n.max(1)) as usize]
            }
        };
        h.extend(self.layout_members..self.members.len());
        h
    }

    /// Counters and latency averages so far.
    pub fn stats(&self) -> SetStats {
        self.board.stats()
    }

    /// Stores block `block`'s chunk (`stored` from [`crate::chunk::encode`])
    /// in each of its holders that lacks it, holders in parallel.
    pub async fn put_chunk(
        &self,
        block: u64,
        id: &ChunkId,
        stored: &[u8],
    ) -> Result<PutOutcome, DestinationError> {
        let bytes = Bytes::copy_from_slice(stored);
        let puts = self.holders(block).into_iter().map(|i| {
            let (member, bytes) = (&self.members[i], bytes.clone());
            async move {
                if member.has_chunk(id).await? {
                    return Ok::<u64, DestinationError>(0);
                }
                let len = bytes.len() as u64;
                member.put_chunk_bytes(id, bytes).await?;
                Ok(len)
            }
        });
        let written = try_join_all(puts).await?;
        Ok(PutOutcome {
            new_bytes: written.iter().sum(),
            reused: written.iter().all(|&w| w == 0),
        })
    }

    /// Stores a manifest in every member (in parallel); fails naming each
    /// member that could not store it.
    pub async fn put_manifest(&self, m: &Manifest) -> Result<(), SetError> {
        let results = join_all(self.members.iter().map(|d| d.put_manifest(m))).await;
        self.all_ok(results, || {
            format!("storing the manifest of snapshot {}", m.snapshot_id)
        })
    }

    /// Deletes a manifest from every member (a missing one is not an error);
    /// fails naming each member where the delete failed.
    pub async fn delete_manifest(&self, snapshot_id: u64) -> Result<(), SetError> {
        let results = join_all(self.members.iter().map(|d| d.delete_manifest(snapshot_id))).await;
        self.all_ok(results, || {
            format!("deleting the manifest of snapshot {snapshot_id}")
        })
    }

    fn failure(&self, i: usize, error: DestinationError) -> MemberFailure {
        MemberFailure {
            destination: self.members[i].name().to_owned(),
            error,
        }
    }

    fn all_ok(
        &self,
        results: Vec<Result<(), DestinationError>>,
        what: impl FnOnce() -> String,
    ) -> Result<(), SetError> {
        let failures: Vec<MemberFailure> = results
            .into_iter()
            .enumerate()
            .filter_map(|(i, r)| r.err().map(|e| self.failure(i, e)))
            .collect();
        if failures.is_empty() {
            return Ok(());
        }
        Err(SetError::Incomplete {
            what: what(),
            failures: Failures(failures),
        })
    }
}

#[cfg(test)]
mod test_support;

#[cfg(test)]
#[path = "set_tests.rs"]
mod tests;
