//! Frame header decoding and the blocking frame reader.
//!
//! Input: one mode byte, then a byte stream.
//! - mode bit 0: before anything is decoded, reseal every header's CRC in
//!   the stream (so the fuzzer gets past the checksum to the checks behind
//!   it); bit 1: also fix each payload CRC.
//!
//! Invariants checked:
//! - `Header::decode` of the first 64 bytes (zero-padded) never panics, and a
//!   decoded header re-encodes to exactly the same 64 bytes;
//! - `read_frame` over the stream never panics; a frame it returns has a
//!   payload of exactly `payload_len <= MAX_PAYLOAD` bytes with a matching
//!   CRC, consumed exactly 64 + payload_len bytes, and re-encodes
//!   (`write_frame`) to exactly the bytes consumed;
//! - the payload buffer is never grown past the 4 MiB bound for a fresh
//!   buffer (twice that for a reused one: `Vec::resize` grows amortised);
//! - errors are `UnexpectedEof` (clean end before a frame) or `InvalidData`.

#![no_main]

use std::io::{Cursor, ErrorKind};

use basalt_proto::wire::{read_frame, write_frame, Header, HEADER_LEN, MAX_PAYLOAD};
use libfuzzer_sys::fuzz_target;

const MAX: usize = MAX_PAYLOAD as usize;

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Rewrites header (and optionally payload) checksums frame by frame.
fn fix_crcs(buf: &mut [u8], payload_too: bool) {
    let mut pos = 0usize;
    while pos + HEADER_LEN <= buf.len() {
        let plen = u32_at(&buf[pos..], 44) as usize;
        let end = pos + HEADER_LEN + plen;
        if payload_too && plen <= MAX && end <= buf.len() {
            let crc = if plen == 0 {
                0
            } else {
                crc32c::crc32c(&buf[pos + HEADER_LEN..end])
            };
            buf[pos + 48..pos + 52].copy_from_slice(&crc.to_le_bytes());
        }
        let crc = crc32c::crc32c(&buf[pos..pos + 60]);
        buf[pos + 60..pos + 64].copy_from_slice(&crc.to_le_bytes());
        if plen > MAX {
            break;
        }
        pos = end;
    }
}

fn check_decode(b: &[u8]) {
    let mut hb = [0u8; HEADER_LEN];
    let n = b.len().min(HEADER_LEN);
    hb[..n].copy_from_slice(&b[..n]);
    if let Ok(h) = Header::decode(&hb) {
        assert_eq!(h.encode(), hb, "decode/encode round trip changed the bytes");
        assert!(h.payload_len <= MAX_PAYLOAD);
        // Must not panic whatever the fields hold.
        let _ = h.validate_data_request();
        let _ = h.is_response();
        let _ = h.response(basalt_proto::wire::Status::Ok).encode();
    }
}

fn check_stream(stream: &[u8]) {
    let mut cur = Cursor::new(stream);
    let mut payload = Vec::new();
    let mut first = true;
    // At most a handful of frames: every frame needs 64 bytes of input.
    loop {
        let start = cur.position() as usize;
        let r = read_frame(&mut cur, &mut payload);
        let cap_bound = if first { MAX } else { 2 * MAX };
        assert!(
            payload.capacity() <= cap_bound,
            "payload buffer grew to {} bytes (bound {cap_bound})",
            payload.capacity()
        );
        first = false;
        match r {
            Ok(h) => {
                assert!(h.payload_len <= MAX_PAYLOAD);
                assert_eq!(payload.len(), h.payload_len as usize);
                assert!(payload.len() <= MAX);
                let end = cur.position() as usize;
                assert_eq!(end - start, HEADER_LEN + payload.len());
                let crc = if payload.is_empty() {
                    0
                } else {
                    crc32c::crc32c(&payload)
                };
                assert_eq!(crc, h.payload_crc);
                let mut again = Vec::new();
                write_frame(&mut again, &h, &[&payload]).unwrap();
                assert_eq!(&again[..], &stream[start..end], "frame did not re-encode");
            }
            Err(e) => {
                assert!(
                    matches!(e.kind(), ErrorKind::UnexpectedEof | ErrorKind::InvalidData),
                    "unexpected error kind {:?}: {e}",
                    e.kind()
                );
                if e.kind() == ErrorKind::UnexpectedEof {
                    assert_eq!(start, stream.len(), "EOF reported mid-stream");
                }
                break;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // The raw bytes first, as a peer would send them.
    check_decode(rest);
    check_stream(rest);
    if mode & 3 != 0 {
        let mut fixed = rest.to_vec();
        fix_crcs(&mut fixed, mode & 2 != 0);
        check_decode(&fixed);
        check_stream(&fixed);
    }
});
