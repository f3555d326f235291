//! Parsing and validation of one virtio-blk request (one descriptor chain).
//!
//! Everything in a chain is guest-controlled. [`Request::parse`] checks the
//! layout (header, data, status), directions, bounds against guest memory and
//! against the disk, and either fills the [`Request`] or returns a
//! [`Rejected`] saying which status to write and where (if anywhere).
//!
//! Layout expected (what every Linux, Windows and libblkio driver sends):
//! one device-readable header descriptor of at least 16 bytes, zero or more
//! data descriptors, and one device-writable status descriptor of 1 byte.

use virtio_bindings::virtio_blk::*;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use crate::virtio_blk::{MAX_DESCRIPTORS, MAX_DISCARD_SECTORS, MAX_REQUEST_BYTES};

mod error;
#[cfg(test)]
mod tests;

pub use error::{Rejected, RequestError};

/// Bytes of the request header (`virtio_blk_outhdr`).
pub const HEADER_LEN: u32 = 16;
/// Bytes of one discard / write-zeroes segment.
pub const DISCARD_SEGMENT_LEN: u32 = 16;
const SECTOR: u64 = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RequestKind {
    #[default]
    In,
    Out,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
}

/// A guest buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

#[derive(Debug, Clone, Copy)]
struct Desc {
    addr: GuestAddress,
    len: u32,
    write: bool,
}

/// What parsing checks a request against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub capacity_sectors: u64,
    pub read_only: bool,
}

/// One parsed request. Kept in the in-flight table and reused, so parsing
/// does not allocate once its vectors have grown.
#[derive(Debug, Default)]
pub struct Request {
    pub kind: RequestKind,
    /// First volume byte addressed (In, Out, Discard, WriteZeroes).
    pub offset: u64,
    /// Volume bytes addressed; for GetId, the bytes of the guest buffer.
    pub len: u64,
    /// WriteZeroes may deallocate.
    pub unmap: bool,
    /// Guest data buffers, in order (In, Out, GetId).
    pub data: Vec<Segment>,
    /// Where the status byte goes.
    pub status: GuestAddress,
    descs: Vec<Desc>,
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le_u64(b: &[u8]) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[..8]);
    u64::from_le_bytes(x)
}

impl Request {
    /// Parses `chain` into `self`, replacing whatever was there.
    pub fn parse<M, I>(&mut self, chain: I, mem: &M, limits: &Limits) -> Result<(), Rejected>
    where
        M: GuestMemory + ?Sized,
        I: IntoIterator<Item = Descriptor>,
    {
        self.kind = RequestKind::default();
        self.offset = 0;
        self.len = 0;
        self.unmap = false;
        self.data.clear();
        self.descs.clear();
        // At most MAX_DESCRIPTORS are kept (so these vectors never grow past
        // that, whatever a guest sends); the rest are only counted, and the
        // last one is kept for the status byte.
        let (mut count, mut last) = (0usize, None);
        for d in chain {
            let d = Desc {
                addr: d.addr(),
                len: d.len(),
                write: d.is_write_only(),
            };
            if count < MAX_DESCRIPTORS {
                self.descs.push(d);
            }
            count += 1;
            last = Some(d);
        }
        let status = Self::find_status(last, mem).map_err(|error| Rejected {
            error,
            status: None,
        })?;
        self.status = status;
        if count > MAX_DESCRIPTORS {
            return Err(Rejected {
                error: RequestError::TooManyDescriptors {
                    count,
                    max: MAX_DESCRIPTORS,
                },
                status: Some(status),
            });
        }
        self.parse_body(mem, limits).map_err(|error| Rejected {
            error,
            status: Some(status),
        })
    }

    fn find_status<M: GuestMemory + ?Sized>(
        last: Option<Desc>,
        mem: &M,
    ) -> Result<GuestAddress, RequestError> {
        let last = last.ok_or(RequestError::EmptyChain)?;
        if !last.write {
            return Err(RequestError::StatusNotWritable);
        }
        if last.len != 1 {
            return Err(RequestError::StatusLength(last.len));
        }
        if !mem.check_range(last.addr, 1, Permissions::Write) {
            return Err(RequestError::StatusOutsideMemory(last.addr.0));
        }
        Ok(last.addr)
    }

    fn parse_body<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        limits: &Limits,
    ) -> Result<(), RequestError> {
        let n = self.descs.len();
        if n < 2 {
            return Err(RequestError::MissingHeader);
        }
        let header = self.descs[0];
        if header.write {
            return Err(RequestError::HeaderWritable);
        }
        if header.len < HEADER_LEN {
            return Err(RequestError::HeaderTooShort(header.len));
        }
        let mut hb = [0u8; HEADER_LEN as usize];
        mem.read_slice(&mut hb, header.addr)
            .map_err(|_| RequestError::HeaderUnreadable(header.addr.0))?;
        let (req_type, sector) = (le_u32(&hb[0..4]), le_u64(&hb[8..16]));

        let (kind, write_data) = match req_type {
            VIRTIO_BLK_T_IN => (RequestKind::In, true),
            VIRTIO_BLK_T_OUT => (RequestKind::Out, false),
            VIRTIO_BLK_T_FLUSH => (RequestKind::Flush, false),
            VIRTIO_BLK_T_GET_ID => (RequestKind::GetId, true),
            VIRTIO_BLK_T_DISCARD => (RequestKind::Discard, false),
            VIRTIO_BLK_T_WRITE_ZEROES => (RequestKind::WriteZeroes, false),
            other => return Err(RequestError::UnknownType(other)),
        };
        self.kind = kind;
        if kind == RequestKind::Flush {
            // Flush carries no data; any extra descriptors are ignored.
            return Ok(());
        }
        if limits.read_only
            && matches!(
                kind,
                RequestKind::Out | RequestKind::Discard | RequestKind::WriteZeroes
            )
        {
            return Err(RequestError::ReadOnly);
        }

        let mut total: u64 = 0;
        for d in &self.descs[1..n - 1] {
            if d.write != write_data {
                return Err(RequestError::DataDirection(kind));
            }
            total += u64::from(d.len);
        }
        if total == 0 {
            return Err(RequestError::MissingData(kind));
        }
        if total > MAX_REQUEST_BYTES {
            return Err(RequestError::TooLarge {
                len: total,
                max: MAX_REQUEST_BYTES,
            });
        }
        let access = if write_data {
            Permissions::Write
        } else {
            Permissions::Read
        };
        for d in &self.descs[1..n - 1] {
            if d.len == 0 {
                continue;
            }
            if !mem.check_range(d.addr, d.len as usize, access) {
                return Err(RequestError::DataOutsideMemory {
                    addr: d.addr.0,
                    len: d.len,
                });
            }
            self.data.push(Segment {
                addr: d.addr,
                len: d.len,
            });
        }

        match kind {
            RequestKind::In | RequestKind::Out => {
                if total % SECTOR != 0 {
                    return Err(RequestError::Unaligned(total));
                }
                self.set_range(sector, total / SECTOR, limits)
            }
            RequestKind::GetId => {
                self.len = total;
                Ok(())
            }
            _ => self.parse_discard(mem, total, limits),
        }
    }

    fn parse_discard<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        total: u64,
        limits: &Limits,
    ) -> Result<(), RequestError> {
        if total % u64::from(DISCARD_SEGMENT_LEN) != 0 {
            return Err(RequestError::SegmentLength(total));
        }
        let count = total / u64::from(DISCARD_SEGMENT_LEN);
        if count != 1 {
            return Err(RequestError::TooManySegments(count));
        }
        let mut seg = [0u8; DISCARD_SEGMENT_LEN as usize];
        read_segments(mem, &self.data, &mut seg)?;
        self.data.clear();
        let (sector, sectors, flags) = (
            le_u64(&seg[0..8]),
            le_u32(&seg[8..12]),
            le_u32(&seg[12..16]),
        );
        let allowed = match self.kind {
            RequestKind::WriteZeroes => VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
            _ => 0,
        };
        if flags & !allowed != 0 {
            return Err(RequestError::UnsupportedFlags(flags));
        }
        self.unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
        if sectors > MAX_DISCARD_SECTORS {
            let max = u64::from(MAX_DISCARD_SECTORS) * SECTOR;
            return Err(RequestError::TooLarge {
                len: u64::from(sectors) * SECTOR,
                max,
            });
        }
        self.set_range(sector, u64::from(sectors), limits)
    }

    fn set_range(
        &mut self,
        sector: u64,
        sectors: u64,
        limits: &Limits,
    ) -> Result<(), RequestError> {
        let capacity = limits.capacity_sectors;
        match sector.checked_add(sectors) {
            Some(end) if end <= capacity => {
                self.offset = sector * SECTOR;
                self.len = sectors * SECTOR;
                Ok(())
            }
            _ => Err(RequestError::OutOfRange {
                sector,
                sectors,
                capacity,
            }),
        }
    }
}

/// Reads `out.len()` bytes from the start of `segs` (which may split them).
fn read_segments<M: GuestMemory + ?Sized>(
    mem: &M,
    segs: &[Segment],
    out: &mut [u8],
) -> Result<(), RequestError> {
    let mut done = 0;
    for s in segs {
        if done == out.len() {
            break;
        }
        let n = (s.len as usize).min(out.len() - done);
        mem.read_slice(&mut out[done..done + n], s.addr)
            .map_err(|_| RequestError::DataOutsideMemory {
                addr: s.addr.0,
                len: s.len,
            })?;
        done += n;
    }
    Ok(())
}
