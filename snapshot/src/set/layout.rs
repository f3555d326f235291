//! How a snapshot's chunks are spread over the members of a set.

use std::fmt;

use super::SetError;

/// Most destinations a `duplicate` or `striped` set may have.
pub const MAX_MEMBERS: usize = 8;

/// Default stripe of the `striped` layout in blocks: 4 MiB of 512 KiB blocks.
pub const DEFAULT_STRIPE_BLOCKS: u64 = (4 << 20) / crate::BLOCK_SIZE;

/// Where a snapshot's chunks go.
///
/// `alternate` is not a set layout: the control service picks one destination
/// per snapshot (the destinations in turn), so each such snapshot is a
/// [`Layout::Single`] set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One destination holds everything.
    Single,
    /// Every destination (2 to [`MAX_MEMBERS`]) holds every chunk.
    Duplicate,
    /// Block `b`'s chunk goes to member `(b / stripe_blocks) % n` only.
    Striped {
        /// Consecutive blocks per stripe, at least 1.
        stripe_blocks: u64,
    },
}

impl Layout {
    /// Parses `single`, `duplicate` or `striped` (any case); `stripe_blocks`
    /// is used by `striped` only and must then be at least 1.
    pub fn parse(s: &str, stripe_blocks: u64) -> Result<Layout, SetError> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("single") {
            Ok(Layout::Single)
        } else if s.eq_ignore_ascii_case("duplicate") {
            Ok(Layout::Duplicate)
        } else if s.eq_ignore_ascii_case("striped") {
            if stripe_blocks == 0 {
                return Err(SetError::ZeroStripe);
            }
            Ok(Layout::Striped { stripe_blocks })
        } else if s.eq_ignore_ascii_case("alternate") {
            Err(SetError::AlternateIsNotASet)
        } else {
            Err(SetError::UnknownLayout {
                input: s.chars().take(40).collect(),
            })
        }
    }

    /// `single`, `duplicate` or `striped`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Layout::Single => "single",
            Layout::Duplicate => "duplicate",
            Layout::Striped { .. } => "striped",
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
#[path = "layout_tests.rs"]
mod tests;
