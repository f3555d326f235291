//! Blocking frame I/O over any `Read`/`Write` (the backend's data path uses
//! blocking sockets, one connection per queue). Async users decode with
//! [`Header::decode`] and [`verify_payload`] directly.

use std::io::{self, IoSlice, Read, Write};

use super::{verify_payload, Header, WireError, HEADER_LEN};

/// An owned frame, convenient outside hot paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub header: Header,
    pub payload: Vec<u8>,
}

fn invalid(e: WireError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(0) => {
                return Err(invalid(WireError::Truncated {
                    got,
                    want: buf.len(),
                }))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads one frame: the header, then its payload into `payload` (resized, so
/// a caller that reuses the buffer allocates only when it must grow). The
/// payload checksum is verified. A clean close before a frame starts is
/// `UnexpectedEof`; any framing error is `InvalidData` carrying a [`WireError`].
pub fn read_frame<R: Read>(r: &mut R, payload: &mut Vec<u8>) -> io::Result<Header> {
    let mut hb = [0u8; HEADER_LEN];
    read_full(r, &mut hb)?;
    let header = Header::decode(&hb).map_err(invalid)?;
    payload.resize(header.payload_len as usize, 0);
    if header.payload_len > 0 {
        read_full(r, payload).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                invalid(WireError::Truncated {
                    got: 0,
                    want: header.payload_len as usize,
                })
            } else {
                e
            }
        })?;
    }
    verify_payload(&header, payload).map_err(invalid)?;
    Ok(header)
}

/// Writes a header and its payload (given as slices) with vectored writes.
/// The header's `payload_len`/`payload_crc` must already describe `parts`.
pub fn write_frame<W: Write>(w: &mut W, header: &Header, parts: &[&[u8]]) -> io::Result<()> {
    let hb = header.encode();
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(parts.len() + 1);
    slices.push(IoSlice::new(&hb));
    slices.extend(
        parts
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| IoSlice::new(p)),
    );
    let mut bufs = &mut slices[..];
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Opcode, Status};

    #[test]
    fn frame_roundtrip_and_truncation() {
        let payload = vec![7u8; 4096];
        let h = Header {
            offset: 512,
            length: 4096,
            ..Header::request(Opcode::Write, 9, 1, 1)
        }
        .with_payload(&payload);
        let mut wire = Vec::new();
        write_frame(&mut wire, &h, &[&payload[..1000], &payload[1000..]]).unwrap();
        let mut buf = Vec::new();
        let got = read_frame(&mut &wire[..], &mut buf).unwrap();
        assert_eq!(got, h);
        assert_eq!(buf, payload);

        for cut in [1, HEADER_LEN - 1, HEADER_LEN + 1, wire.len() - 1] {
            let err = read_frame(&mut &wire[..cut], &mut buf).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "cut at {cut}");
        }
        let err = read_frame(&mut &wire[..0], &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);

        let mut corrupt = wire.clone();
        corrupt[HEADER_LEN + 5] ^= 1;
        let err = read_frame(&mut &corrupt[..], &mut buf).unwrap_err();
        let inner = err.into_inner().unwrap().downcast::<WireError>().unwrap();
        assert_eq!(*inner, WireError::PayloadChecksum);

        let resp = h.response(Status::Ok);
        let mut wire = Vec::new();
        write_frame(&mut wire, &resp, &[]).unwrap();
        assert_eq!(wire.len(), HEADER_LEN);
    }
}
