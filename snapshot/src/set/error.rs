//! Errors of a destination set.

use std::fmt;

use super::layout::MAX_MEMBERS;
use crate::chunk::ChunkId;
use crate::destination::DestinationError;

/// One member's failure within a set operation.
#[derive(Debug)]
pub struct MemberFailure {
    /// The destination's name.
    pub destination: String,
    /// What went wrong there.
    pub error: DestinationError,
}

/// The failures of a set operation, one per destination that failed; shown
/// as `dest: error; dest: error`.
#[derive(Debug, Default)]
pub struct Failures(pub Vec<MemberFailure>);

impl Failures {
    /// True if every failure is [`DestinationError::NotFound`] (and there is one).
    pub fn all_not_found(&self) -> bool {
        !self.0.is_empty()
            && self
                .0
                .iter()
                .all(|f| matches!(f.error, DestinationError::NotFound { .. }))
    }
}

impl fmt::Display for Failures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, m) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", m.destination, m.error)?;
        }
        Ok(())
    }
}

/// Errors of [`DestinationSet`](super::DestinationSet) and [`Layout`](super::Layout).
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error("unknown destination-set layout {input:?}; use single, duplicate or striped")]
    UnknownLayout { input: String },
    #[error(
        "alternate is not a destination-set layout: the control service picks one destination \
         per snapshot, so each such snapshot is a single set; build a single set of that destination"
    )]
    AlternateIsNotASet,
    #[error("a stripe of 0 blocks is not allowed; use a stripe of at least 1 block (the default is 4 MiB)")]
    ZeroStripe,
    #[error("a single set needs exactly 1 destination, not {count}; use duplicate or striped for several")]
    SingleMembers { count: usize },
    #[error(
        "a {layout} set needs 2 to {MAX_MEMBERS} destinations, not {count}; \
         give that many destinations or use the single layout"
    )]
    MemberCount { layout: &'static str, count: usize },
    #[error("destination {name:?} appears twice in the set; give each destination once")]
    DuplicateMember { name: String },
    #[error(
        "chunk {id} of block {block} could not be read from any destination of the set: \
         {failures}; check that the destinations are reachable and hold the snapshot"
    )]
    ChunkUnavailable {
        id: ChunkId,
        block: u64,
        failures: Failures,
    },
    #[error(
        "manifest of snapshot {snapshot_id} could not be read from any destination of the set: \
         {failures}"
    )]
    ManifestUnavailable {
        snapshot_id: u64,
        failures: Failures,
    },
    #[error("{what} failed in {failures}; retry once these destinations are reachable (the others succeeded)")]
    Incomplete { what: String, failures: Failures },
}

impl SetError {
    /// True for a read that failed only because no destination holds the
    /// object (a missing snapshot, not an unreachable destination).
    pub fn is_not_found(&self) -> bool {
        match self {
            SetError::ChunkUnavailable { failures, .. }
            | SetError::ManifestUnavailable { failures, .. } => failures.all_not_found(),
            _ => false,
        }
    }
}
