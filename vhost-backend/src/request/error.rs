//! Why a request was refused, and what the driver is told.

use vm_memory::GuestAddress;

use super::{RequestKind, HEADER_LEN};
use crate::virtio_blk::{STATUS_IOERR, STATUS_UNSUPP};

/// Why a chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("descriptor chain is empty or its head is invalid")]
    EmptyChain,
    #[error("descriptor chain has {count} descriptors; at most {max} (seg_max + 2)")]
    TooManyDescriptors { count: usize, max: usize },
    #[error("last descriptor (status) is not device-writable")]
    StatusNotWritable,
    #[error("status descriptor is {0} bytes, expected 1")]
    StatusLength(u32),
    #[error("status descriptor at {0:#x} is outside guest memory")]
    StatusOutsideMemory(u64),
    #[error("chain has a status descriptor but no header")]
    MissingHeader,
    #[error("header descriptor is device-writable")]
    HeaderWritable,
    #[error("header descriptor is {0} bytes, expected at least {HEADER_LEN}")]
    HeaderTooShort(u32),
    #[error("header at {0:#x} cannot be read from guest memory")]
    HeaderUnreadable(u64),
    #[error("unknown request type {0}")]
    UnknownType(u32),
    #[error("write-type request to a read-only disk")]
    ReadOnly,
    #[error("{0:?} request has a data descriptor of the wrong direction")]
    DataDirection(RequestKind),
    #[error("{0:?} request has no data")]
    MissingData(RequestKind),
    #[error("data descriptor {addr:#x}+{len} is outside guest memory")]
    DataOutsideMemory { addr: u64, len: u32 },
    #[error("data length {0} is not a multiple of 512")]
    Unaligned(u64),
    #[error("request of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: u64, max: u64 },
    #[error("sectors {sector}..+{sectors} are past the end of the {capacity}-sector disk")]
    OutOfRange {
        sector: u64,
        sectors: u64,
        capacity: u64,
    },
    #[error("discard/write-zeroes data of {0} bytes is not a whole number of 16-byte segments")]
    SegmentLength(u64),
    #[error("{0} discard/write-zeroes segments; at most 1 is supported")]
    TooManySegments(u64),
    #[error("discard/write-zeroes flags {0:#x} are not supported")]
    UnsupportedFlags(u32),
}

impl RequestError {
    /// The virtio status a driver gets for this error.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::UnknownType(_)
            | RequestError::TooManySegments(_)
            | RequestError::UnsupportedFlags(_) => STATUS_UNSUPP,
            _ => STATUS_IOERR,
        }
    }
}

/// A refused chain: the error, and the status byte's address when the chain
/// has a valid one (otherwise nothing can be written back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub error: RequestError,
    pub status: Option<GuestAddress>,
}
