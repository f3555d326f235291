//! Attachment grants: what a backend shows a storage server to address a
//! volume. The control service signs one when it attaches a volume to a
//! node (with the cluster CA's key, under its own domain label); the
//! storage server checks it on every data-plane connection against the
//! CA certificate it already holds, and that the connecting node's
//! certificate names the node the grant was issued to.
//!
//! Encoding (little-endian):
//! `"BGR1" | volume u64 | attachment u64 | expires_unix u64 | flags u8 |
//! node_len u8 | node | sig_len u16 | sig` where `sig` is ECDSA P-256
//! SHA-256 (ASN.1) over `"basalt-attachment-grant-v1" | everything before
//! sig_len`. Flags: bit 0 read-only; others must be 0.

use std::time::{SystemTime, UNIX_EPOCH};

use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::pki::{Ca, PkiError};
use crate::principal::valid_id;

const MAGIC: &[u8; 4] = b"BGR1";
const DOMAIN: &[u8] = b"basalt-attachment-grant-v1";
const READ_ONLY: u8 = 1;
/// Largest encoded grant (a node id is at most 63 bytes; a P-256 ASN.1
/// signature at most 72).
pub const MAX_GRANT_LEN: usize = 4 + 24 + 2 + 63 + 2 + 80;

/// What a grant allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub volume_id: u64,
    /// The attachment generation the control service issued.
    pub attachment: u64,
    /// The node (its principal id) the volume is attached to.
    pub node: String,
    pub read_only: bool,
    /// Seconds since the Unix epoch after which it is refused.
    pub expires_unix: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrantError {
    #[error("attachment grant is malformed: {0}")]
    Malformed(&'static str),
    #[error("attachment grant signature does not verify against the cluster CA")]
    Forged,
    #[error("attachment grant expired at {0} (unix seconds); the node manager renews grants, check that it reaches the control service")]
    Expired(u64),
    #[error("cannot read the CA's public key: {0}")]
    BadCa(String),
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Grant {
    fn body(&self) -> Result<Vec<u8>, GrantError> {
        if !valid_id(&self.node) {
            return Err(GrantError::Malformed("the node id is not a valid id"));
        }
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&self.volume_id.to_le_bytes());
        b.extend_from_slice(&self.attachment.to_le_bytes());
        b.extend_from_slice(&self.expires_unix.to_le_bytes());
        b.push(if self.read_only { READ_ONLY } else { 0 });
        b.push(self.node.len() as u8);
        b.extend_from_slice(self.node.as_bytes());
        Ok(b)
    }

    fn parse_body(b: &[u8]) -> Result<Grant, GrantError> {
        let bad = GrantError::Malformed;
        if b.len() < 30 || &b[..4] != MAGIC {
            return Err(bad("bad magic or too short"));
        }
        let u64_at = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        let flags = b[28];
        if flags & !READ_ONLY != 0 {
            return Err(bad("unknown flags"));
        }
        let n = usize::from(b[29]);
        if b.len() != 30 + n {
            return Err(bad("node id length"));
        }
        let node = std::str::from_utf8(&b[30..])
            .ok()
            .filter(|id| valid_id(id))
            .ok_or(bad("the node id is not a valid id"))?;
        Ok(Grant {
            volume_id: u64_at(4),
            attachment: u64_at(12),
            expires_unix: u64_at(20),
            read_only: flags & READ_ONLY != 0,
            node: node.to_owned(),
        })
    }
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    [DOMAIN, body].concat()
}

impl Ca {
    /// Signs `grant`; the bytes are what the backend presents.
    pub fn sign_grant(&self, grant: &Grant) -> Result<Vec<u8>, PkiError> {
        let body = grant
            .body()
            .map_err(|e| PkiError::BadGrant(e.to_string()))?;
        let sig = self
            .grant_key
            .sign(&ring::rand::SystemRandom::new(), &signed_message(&body))
            .map_err(|_| PkiError::NotP256)?;
        let sig = sig.as_ref();
        let mut out = body;
        out.extend_from_slice(&(sig.len() as u16).to_le_bytes());
        out.extend_from_slice(sig);
        Ok(out)
    }
}

/// Stores a grant (hex text) at `path`, atomically. A grant is no secret:
/// it is worth something only with the private key of the node it names.
pub fn save(path: &std::path::Path, grant: &[u8]) -> Result<(), crate::FilesError> {
    let mut text: String = grant.iter().map(|b| format!("{b:02x}")).collect();
    text.push('\n');
    crate::files::write(path, &text, 0o644)
}

/// Reads a grant stored by [`save`].
pub fn load(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let text = std::fs::read_to_string(path)?;
    let t = text.trim();
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a hex attachment grant",
        )
    };
    if t.len() % 2 != 0 || t.len() > 2 * MAX_GRANT_LEN {
        return Err(bad());
    }
    (0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&t[i..i + 2], 16).map_err(|_| bad()))
        .collect()
}

/// Checks grants against the cluster CA's public key.
#[derive(Clone)]
pub struct GrantVerifier {
    ca_key: Vec<u8>,
}

impl std::fmt::Debug for GrantVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrantVerifier")
    }
}

impl GrantVerifier {
    /// From the CA certificate (PEM).
    pub fn new(ca_pem: &str) -> Result<GrantVerifier, GrantError> {
        let der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|e| GrantError::BadCa(e.to_string()))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| GrantError::BadCa(e.to_string()))?;
        Ok(GrantVerifier {
            ca_key: cert.public_key().subject_public_key.data.to_vec(),
        })
    }

    /// The grant in `bytes` if it is well formed, signed by the CA and
    /// not expired at `now` (unix seconds).
    pub fn verify(&self, bytes: &[u8], now: u64) -> Result<Grant, GrantError> {
        let bad = GrantError::Malformed;
        if bytes.len() > MAX_GRANT_LEN || bytes.len() < 32 {
            return Err(bad("length out of bounds"));
        }
        let body_len = 30 + usize::from(bytes[29]);
        if bytes.len() < body_len + 2 {
            return Err(bad("truncated"));
        }
        let (body, rest) = bytes.split_at(body_len);
        let sig_len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let sig = &rest[2..];
        if sig.len() != sig_len {
            return Err(bad("signature length"));
        }
        let grant = Grant::parse_body(body)?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.ca_key)
            .verify(&signed_message(body), sig)
            .map_err(|_| GrantError::Forged)?;
        if grant.expires_unix <= now {
            return Err(GrantError::Expired(grant.expires_unix));
        }
        Ok(grant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestPki;

    fn grant() -> Grant {
        Grant {
            volume_id: 7,
            attachment: 3,
            node: "node-a".into(),
            read_only: false,
            expires_unix: 2_000,
        }
    }

    #[test]
    fn a_signed_grant_verifies_until_it_expires() {
        let pki = TestPki::new();
        let v = GrantVerifier::new(pki.ca_pem()).unwrap();
        let b = pki.ca.sign_grant(&grant()).unwrap();
        assert!(b.len() <= MAX_GRANT_LEN);
        assert_eq!(v.verify(&b, 1_999).unwrap(), grant());
        assert_eq!(v.verify(&b, 2_000), Err(GrantError::Expired(2_000)));
        let ro = Grant {
            read_only: true,
            ..grant()
        };
        let b = pki.ca.sign_grant(&ro).unwrap();
        assert!(v.verify(&b, 0).unwrap().read_only);
    }

    #[test]
    fn grant_files_round_trip() {
        let pki = TestPki::new();
        let b = pki.ca.sign_grant(&grant()).unwrap();
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("g");
        save(&p, &b).unwrap();
        assert_eq!(load(&p).unwrap(), b);
        std::fs::write(&p, "zz").unwrap();
        assert!(load(&p).is_err());
        std::fs::write(&p, "abc").unwrap();
        assert!(load(&p).is_err());
    }

    #[test]
    fn altered_or_foreign_grants_are_refused() {
        let pki = TestPki::new();
        let v = GrantVerifier::new(pki.ca_pem()).unwrap();
        let b = pki.ca.sign_grant(&grant()).unwrap();
        // Any changed field (volume, attachment, expiry, flags, node).
        for i in [4, 12, 20, 28, 30] {
            let mut x = b.clone();
            x[i] ^= 1;
            assert!(v.verify(&x, 0).is_err(), "byte {i} changed");
        }
        let other = TestPki::new();
        let foreign = other.ca.sign_grant(&grant()).unwrap();
        assert_eq!(v.verify(&foreign, 0), Err(GrantError::Forged));
        assert!(v.verify(&[], 0).is_err());
        assert!(v.verify(&b[..b.len() - 1], 0).is_err());
        assert!(v.verify(&[b.clone(), vec![0]].concat(), 0).is_err());
        let bad_node = Grant {
            node: "Not valid".into(),
            ..grant()
        };
        assert!(pki.ca.sign_grant(&bad_node).is_err());
    }
}
