//! Handshake payloads (`Hello`, `HelloChallenge`).
//!
//! Input: one mode byte, then
//! - mode 0: bytes for `Hello::decode`;
//! - mode 1: bytes for `HelloChallenge::decode`;
//! - otherwise: structured values (key, nonce, server id, identity) for
//!   `Hello::new`, encoded and decoded again.
//!
//! Invariants checked:
//! - decoders never panic, and a successful decode re-encodes to exactly the
//!   input bytes;
//! - `verify` with a fixed (or empty) key never panics;
//! - a hello built with `Hello::new` decodes to itself and verifies with
//!   its key and nonce, and fails to verify with a different key or nonce
//!   (unless the identity is a replication peer naming a volume or an
//!   attachment, which `decode` refuses: see the report);
//! - a challenge whose server id fits (<= 256 bytes) round-trips.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use basalt_proto::wire::{Hello, HelloChallenge, Identity, PeerRole, NONCE_LEN};
use libfuzzer_sys::fuzz_target;

const KEY: &[u8] = b"fuzz-cluster-key";

#[derive(Arbitrary, Debug)]
struct Built {
    key: Vec<u8>,
    nonce: [u8; NONCE_LEN],
    server_id: String,
    backend: bool,
    peer_id: String,
    volume_id: u64,
    attachment: u64,
}

fn hello_bytes(b: &[u8]) {
    if let Ok(h) = Hello::decode(b) {
        assert_eq!(h.encode(), b, "Hello decode/encode changed the bytes");
        let nonce = [0u8; NONCE_LEN];
        let _ = h.verify(KEY, &nonce);
        let _ = h.verify(&[], &nonce);
        let who = h.identity();
        assert_eq!(who.peer_id, h.peer_id);
        if h.role == PeerRole::Replication {
            assert_eq!((h.volume_id, h.attachment), (0, 0));
        }
    }
}

fn challenge_bytes(b: &[u8]) {
    if let Ok(c) = HelloChallenge::decode(b) {
        assert_eq!(
            c.encode(),
            b,
            "HelloChallenge decode/encode changed the bytes"
        );
    }
}

fn built(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let b = Built::arbitrary(u)?;
    let ch = HelloChallenge {
        nonce: b.nonce,
        server_id: b.server_id.clone(),
    };
    let enc = ch.encode();
    match HelloChallenge::decode(&enc) {
        Ok(d) if b.server_id.len() <= 256 => assert_eq!(d, ch),
        Ok(d) => assert!(b.server_id.starts_with(&d.server_id)),
        Err(_) => assert!(
            b.server_id.len() > 256,
            "a short server id did not round-trip"
        ),
    }
    let role = if b.backend {
        PeerRole::Backend
    } else {
        PeerRole::Replication
    };
    let who = Identity {
        role,
        peer_id: &b.peer_id,
        volume_id: b.volume_id,
        attachment: b.attachment,
    };
    let h = Hello::new(&b.key, &ch, who);
    assert!(h.verify(&b.key, &b.nonce));
    assert!(b.peer_id.starts_with(&h.peer_id));
    let mut other_key = b.key.clone();
    other_key.push(1);
    assert!(!h.verify(&other_key, &b.nonce));
    let mut other_nonce = b.nonce;
    other_nonce[0] ^= 1;
    assert!(!h.verify(&b.key, &other_nonce));
    let bytes = h.encode();
    match Hello::decode(&bytes) {
        Ok(d) => {
            assert_eq!(d, h);
            assert!(d.verify(&b.key, &b.nonce));
            assert_eq!(d.encode(), bytes);
        }
        Err(e) => assert!(
            role == PeerRole::Replication && (b.volume_id, b.attachment) != (0, 0),
            "Hello::new produced a hello that does not decode: {e}"
        ),
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode {
        0 => hello_bytes(rest),
        1 => challenge_bytes(rest),
        _ => {
            // The same bytes through both decoders, then as structured values.
            hello_bytes(rest);
            challenge_bytes(rest);
            let _ = built(&mut Unstructured::new(rest));
        }
    }
});
