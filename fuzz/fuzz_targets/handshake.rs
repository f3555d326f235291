//! What a data-plane peer sends before and around authentication: the
//! `Hello` (decoded only after the TLS handshake, but from any cluster
//! member), attachment grants, and sealed records.
//!
//! Input: one mode byte, then
//! - mode 0: bytes for `Hello::decode`;
//! - mode 1: bytes for `GrantVerifier::verify` (against a fixed CA);
//! - mode 2: bytes fed to a sealed-record reader as if from the network;
//! - otherwise: all three.
//!
//! Invariants checked:
//! - nothing panics;
//! - a decoded Hello re-encodes to exactly the input bytes, and a
//!   replication Hello names no volume, attachment or grant;
//! - no byte string verifies as a grant unless the CA signed it (the fixed
//!   CA signs nothing here, so every input is refused);
//! - a record reader fed bytes not sealed with its key yields no plaintext.

#![no_main]

use std::io::Read;
use std::sync::OnceLock;

use basalt_auth::session::{OpenReader, Opener};
use basalt_auth::testing::TestPki;
use basalt_auth::GrantVerifier;
use basalt_proto::wire::{Hello, PeerRole};
use libfuzzer_sys::fuzz_target;

fn verifier() -> &'static GrantVerifier {
    static V: OnceLock<GrantVerifier> = OnceLock::new();
    V.get_or_init(|| {
        let pki = TestPki::new();
        GrantVerifier::new(pki.ca_pem()).expect("a test CA")
    })
}

fn hello_bytes(b: &[u8]) {
    if let Ok(h) = Hello::decode(b) {
        assert_eq!(h.encode(), b, "Hello decode/encode changed the bytes");
        if h.role == PeerRole::Replication {
            assert_eq!((h.volume_id, h.attachment, h.grant.len()), (0, 0, 0));
        } else {
            assert!(!h.grant.is_empty());
        }
    }
}

fn grant_bytes(b: &[u8]) {
    assert!(
        verifier().verify(b, 0).is_err(),
        "bytes the CA never signed verified as a grant"
    );
}

fn record_bytes(b: &[u8]) {
    let mut r = OpenReader::new(b, Some(Opener::new(&[3u8; 28])));
    let mut out = vec![0u8; 4096];
    // Random bytes never open (authentication fails first).
    match r.read(&mut out) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("{n} bytes of plaintext from unsealed input"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode {
        0 => hello_bytes(rest),
        1 => grant_bytes(rest),
        2 => record_bytes(rest),
        _ => {
            hello_bytes(rest);
            grant_bytes(rest);
            record_bytes(rest);
        }
    }
});
