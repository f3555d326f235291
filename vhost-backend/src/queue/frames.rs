//! Turning a request into wire frames, and moving data between guest
//! buffers and frame payloads.

use basalt_proto::wire::{Header, Opcode, HEADER_LEN, MAX_PAYLOAD};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::request::{Request, RequestKind, Segment};
use crate::virtio_blk::ZERO_CHUNK_BYTES;

/// The guest's memory changed under a request in flight (a region removed).
#[derive(Debug, thiserror::Error)]
#[error("guest buffer at {0:#x} is no longer in guest memory")]
pub struct GuestMemoryGone(pub u64);

pub fn opcode(kind: RequestKind) -> Opcode {
    match kind {
        RequestKind::In => Opcode::Read,
        RequestKind::Out => Opcode::Write,
        RequestKind::Flush => Opcode::Flush,
        RequestKind::Discard => Opcode::Discard,
        RequestKind::WriteZeroes => Opcode::WriteZeroes,
        // Never sent: answered locally.
        RequestKind::GetId => Opcode::Ping,
    }
}

fn chunk(kind: RequestKind) -> u64 {
    match kind {
        RequestKind::Discard | RequestKind::WriteZeroes => ZERO_CHUNK_BYTES,
        _ => u64::from(MAX_PAYLOAD),
    }
}

/// How many wire requests `req` needs.
pub fn parts_of(req: &Request) -> u32 {
    match req.kind {
        RequestKind::GetId => 0,
        RequestKind::Flush => 1,
        kind => req.len.div_ceil(chunk(kind)) as u32,
    }
}

/// `(offset into the request's data, length)` of `part`.
pub fn part_span(req: &Request, part: u32) -> (u64, u32) {
    if req.kind == RequestKind::Flush {
        return (0, 0);
    }
    let c = chunk(req.kind);
    let off = u64::from(part) * c;
    (off, c.min(req.len.saturating_sub(off)) as u32)
}

/// Calls `f(guest address, offset in the span, bytes)` for each piece of
/// `segs` covering `len` bytes from data offset `off`.
fn for_each_piece<F>(
    segs: &[Segment],
    off: u64,
    len: usize,
    mut f: F,
) -> Result<(), GuestMemoryGone>
where
    F: FnMut(GuestAddress, usize, usize) -> Result<(), GuestMemoryGone>,
{
    let mut skip = off;
    let mut done = 0usize;
    for s in segs {
        if done == len {
            break;
        }
        let slen = u64::from(s.len);
        if skip >= slen {
            skip -= slen;
            continue;
        }
        let n = ((slen - skip) as usize).min(len - done);
        f(GuestAddress(s.addr.0 + skip), done, n)?;
        skip = 0;
        done += n;
    }
    if done != len {
        // Parsing guarantees the segments cover the request.
        return Err(GuestMemoryGone(0));
    }
    Ok(())
}

/// Copies guest data at data offset `off` into `out`.
pub fn gather<M: GuestMemory + ?Sized>(
    mem: &M,
    segs: &[Segment],
    off: u64,
    out: &mut [u8],
) -> Result<(), GuestMemoryGone> {
    let len = out.len();
    for_each_piece(segs, off, len, |addr, at, n| {
        mem.read_slice(&mut out[at..at + n], addr)
            .map_err(|_| GuestMemoryGone(addr.0))
    })
}

/// Copies `data` into the guest buffers at data offset `off`.
pub fn scatter<M: GuestMemory + ?Sized>(
    mem: &M,
    segs: &[Segment],
    off: u64,
    data: &[u8],
) -> Result<(), GuestMemoryGone> {
    for_each_piece(segs, off, data.len(), |addr, at, n| {
        mem.write_slice(&data[at..at + n], addr)
            .map_err(|_| GuestMemoryGone(addr.0))
    })
}

/// Identifies the frame being built.
#[derive(Debug, Clone, Copy)]
pub struct FrameIds {
    pub request_id: u64,
    pub volume_id: u64,
    pub epoch: u64,
}

/// Appends the frame of `part` of `req` to `out`. On error `out` is unchanged.
pub fn encode_part<M: GuestMemory + ?Sized>(
    out: &mut Vec<u8>,
    mem: &M,
    req: &Request,
    part: u32,
    ids: FrameIds,
) -> Result<(), GuestMemoryGone> {
    let (data_off, len) = part_span(req, part);
    let mut h = Header::request(opcode(req.kind), ids.request_id, ids.volume_id, ids.epoch);
    if req.kind != RequestKind::Flush {
        h.offset = req.offset + data_off;
        h.length = len;
    }
    let start = out.len();
    if req.kind == RequestKind::Out {
        out.resize(start + HEADER_LEN + len as usize, 0);
        if let Err(e) = gather(mem, &req.data, data_off, &mut out[start + HEADER_LEN..]) {
            out.truncate(start);
            return Err(e);
        }
        h = h.with_payload(&out[start + HEADER_LEN..]);
        out[start..start + HEADER_LEN].copy_from_slice(&h.encode());
    } else {
        out.extend_from_slice(&h.encode());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_proto::wire::read_frame;
    use vm_memory::GuestMemoryMmap;

    fn seg(addr: u64, len: u32) -> Segment {
        Segment {
            addr: GuestAddress(addr),
            len,
        }
    }

    fn req(kind: RequestKind, offset: u64, len: u64, data: Vec<Segment>) -> Request {
        let mut r = Request::default();
        (r.kind, r.offset, r.len, r.data) = (kind, offset, len, data);
        r
    }

    #[test]
    fn split_and_gather_across_segments() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
        // 6 MiB in three uneven segments: two parts (4 MiB + 2 MiB).
        let segs = vec![
            seg(0x10_0000, 1 << 20),
            seg(0x40_0000, 3 << 20),
            seg(0x80_0000, 2 << 20),
        ];
        let req = req(RequestKind::Out, 4096, 6 << 20, segs);
        for (i, s) in req.data.iter().enumerate() {
            mem.write_slice(&vec![i as u8 + 1; s.len as usize], s.addr)
                .unwrap();
        }
        assert_eq!(parts_of(&req), 2);
        assert_eq!(part_span(&req, 1), (4 << 20, 2 << 20));
        let mut out = Vec::new();
        let ids = FrameIds {
            request_id: 9,
            volume_id: 3,
            epoch: 2,
        };
        encode_part(&mut out, &mem, &req, 0, ids).unwrap();
        encode_part(&mut out, &mem, &req, 1, ids).unwrap();
        let mut rd = &out[..];
        let mut p = Vec::new();
        let h0 = read_frame(&mut rd, &mut p).unwrap();
        assert_eq!(
            (h0.offset, h0.length, h0.opcode),
            (4096, 4 << 20, Opcode::Write)
        );
        assert_eq!(
            (p[0], p[(1 << 20) - 1], p[1 << 20], p[(4 << 20) - 1]),
            (1, 1, 2, 2)
        );
        let h1 = read_frame(&mut rd, &mut p).unwrap();
        assert_eq!(
            (h1.offset, h1.length, p.len()),
            (4096 + (4 << 20), 2 << 20, 2 << 20)
        );
        assert_eq!((p[0], p[(2 << 20) - 1]), (3, 3));
        assert!(rd.is_empty());

        // Scatter back into a read request with the same buffers.
        let data = vec![0xAB; 1 << 20];
        scatter(&mem, &req.data, (1 << 20) - 512, &data).unwrap();
        let mut b = [0u8; 2];
        mem.read_slice(&mut b, GuestAddress(0x10_0000 + (1 << 20) - 512))
            .unwrap();
        assert_eq!(b, [0xAB, 0xAB]);
    }

    #[test]
    fn other_kinds() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
        let flush = req(RequestKind::Flush, 0, 0, vec![]);
        assert_eq!(parts_of(&flush), 1);
        let discard = req(
            RequestKind::Discard,
            512,
            ZERO_CHUNK_BYTES * 2 + 512,
            vec![],
        );
        assert_eq!(parts_of(&discard), 3);
        assert_eq!(part_span(&discard, 2), (ZERO_CHUNK_BYTES * 2, 512));
        let mut out = Vec::new();
        let ids = FrameIds {
            request_id: 1,
            volume_id: 1,
            epoch: 1,
        };
        encode_part(&mut out, &mem, &discard, 2, ids).unwrap();
        let h = read_frame(&mut &out[..], &mut Vec::new()).unwrap();
        assert_eq!(
            (h.opcode, h.offset, h.length, h.payload_len),
            (Opcode::Discard, 512 + ZERO_CHUNK_BYTES * 2, 512, 0)
        );
        let empty = req(RequestKind::WriteZeroes, 0, 0, vec![]);
        assert_eq!(parts_of(&empty), 0);
        let bad = req(RequestKind::Out, 0, 512, vec![seg(0x2_0000, 512)]);
        let mut out = vec![1, 2, 3];
        assert!(encode_part(&mut out, &mem, &bad, 0, ids).is_err());
        assert_eq!(out, vec![1, 2, 3]);
    }
}
