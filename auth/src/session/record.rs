//! Sealed records: what a data-plane connection carries after its TLS
//! handshake.
//!
//! A record is `len u32 LE | ciphertext | tag[16]`, where `len` counts the
//! ciphertext and the tag and is the additional authenticated data. Each
//! direction has its own AES-128-GCM key and IV (exported from the TLS
//! session, see `mod.rs`) and a record counter; the nonce is the IV with
//! the counter XORed into its last 8 bytes, as in TLS 1.3. A record that
//! was altered, replayed, reordered, dropped or sealed with another key
//! fails to open, and the connection ends.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, NONCE_LEN};

/// Bytes of a key and of an IV.
pub const KEY_LEN: usize = 16;
pub const IV_LEN: usize = NONCE_LEN;
/// Bytes of the length prefix and of the tag.
pub const LEN_LEN: usize = 4;
pub const TAG_LEN: usize = 16;
/// Largest plaintext of one record. Larger writes are split.
pub const MAX_PLAINTEXT: usize = 256 << 10;
/// Largest record on the wire.
pub const MAX_RECORD: usize = LEN_LEN + MAX_PLAINTEXT + TAG_LEN;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("sealed record of {0} bytes is out of bounds (at most {max})", max = MAX_PLAINTEXT + TAG_LEN)]
    Length(usize),
    #[error(
        "sealed record failed authentication: the connection was altered or is not from our peer"
    )]
    Forged,
    #[error("record counter exhausted: reconnect")]
    Exhausted,
}

impl From<RecordError> for std::io::Error {
    fn from(e: RecordError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

/// One direction's key and counter.
struct Direction {
    key: LessSafeKey,
    iv: [u8; IV_LEN],
    seq: u64,
}

impl Direction {
    fn new(material: &[u8]) -> Direction {
        let (k, iv) = material.split_at(KEY_LEN);
        // A 16-byte key is always accepted by AES-128-GCM.
        let key = UnboundKey::new(&AES_128_GCM, k).map(LessSafeKey::new);
        let key = match key {
            Ok(k) => k,
            Err(_) => unreachable!("AES-128-GCM takes a 16-byte key"),
        };
        let mut nonce = [0u8; IV_LEN];
        nonce.copy_from_slice(&iv[..IV_LEN]);
        Direction {
            key,
            iv: nonce,
            seq: 0,
        }
    }

    fn next_nonce(&mut self) -> Result<Nonce, RecordError> {
        if self.seq == u64::MAX {
            return Err(RecordError::Exhausted);
        }
        let mut n = self.iv;
        for (b, s) in n[IV_LEN - 8..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        self.seq += 1;
        Ok(Nonce::assume_unique_for_key(n))
    }
}

/// Seals records in one direction.
pub struct Sealer(Direction);

/// Opens the records of the other direction.
pub struct Opener(Direction);

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer(seq {})", self.0.seq)
    }
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Opener(seq {})", self.0.seq)
    }
}

/// Bytes of key material per direction.
pub const MATERIAL_LEN: usize = KEY_LEN + IV_LEN;

impl Sealer {
    pub fn new(material: &[u8; MATERIAL_LEN]) -> Sealer {
        Sealer(Direction::new(material))
    }

    /// Appends `plain` (at most [`MAX_PLAINTEXT`] bytes) to `out` as one
    /// sealed record.
    pub fn seal_into(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        self.seal_parts_into(&[plain], out)
    }

    /// Appends the concatenation of `parts` (at most [`MAX_PLAINTEXT`]
    /// bytes in all) to `out` as one sealed record.
    pub fn seal_parts_into(
        &mut self,
        parts: &[&[u8]],
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total > MAX_PLAINTEXT {
            return Err(RecordError::Length(total));
        }
        let len = ((total + TAG_LEN) as u32).to_le_bytes();
        let nonce = self.0.next_nonce()?;
        let start = out.len();
        out.reserve(LEN_LEN + total + TAG_LEN);
        out.extend_from_slice(&len);
        for p in parts {
            out.extend_from_slice(p);
        }
        let body = &mut out[start + LEN_LEN..];
        let tag = self
            .0
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(len), body)
            .map_err(|_| RecordError::Length(total))?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }
}

impl Opener {
    pub fn new(material: &[u8; MATERIAL_LEN]) -> Opener {
        Opener(Direction::new(material))
    }

    /// The length of the record whose prefix is `prefix` (its body: the
    /// bytes after the prefix), if it is within bounds.
    pub fn body_len(prefix: [u8; LEN_LEN]) -> Result<usize, RecordError> {
        let n = u32::from_le_bytes(prefix) as usize;
        if !(TAG_LEN..=MAX_PLAINTEXT + TAG_LEN).contains(&n) {
            return Err(RecordError::Length(n));
        }
        Ok(n)
    }

    /// Opens a record's body (ciphertext and tag) in place; returns the
    /// length of the plaintext, which starts at `body[0]`.
    pub fn open_in_place(&mut self, body: &mut [u8]) -> Result<usize, RecordError> {
        let len = (body.len() as u32).to_le_bytes();
        Self::body_len(len)?;
        let nonce = self.0.next_nonce()?;
        let plain = self
            .0
            .key
            .open_in_place(nonce, Aad::from(len), body)
            .map_err(|_| RecordError::Forged)?;
        Ok(plain.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Sealer, Opener) {
        let m = [7u8; MATERIAL_LEN];
        (Sealer::new(&m), Opener::new(&m))
    }

    fn open(o: &mut Opener, rec: &[u8]) -> Result<Vec<u8>, RecordError> {
        let mut prefix = [0u8; LEN_LEN];
        prefix.copy_from_slice(&rec[..LEN_LEN]);
        let n = Opener::body_len(prefix)?;
        let mut body = rec[LEN_LEN..].to_vec();
        assert_eq!(body.len(), n);
        let p = o.open_in_place(&mut body)?;
        body.truncate(p);
        Ok(body)
    }

    #[test]
    fn records_open_in_order_and_not_otherwise() {
        let (mut s, mut o) = pair();
        let (mut r1, mut r2) = (Vec::new(), Vec::new());
        s.seal_into(b"first", &mut r1).unwrap();
        s.seal_into(b"second", &mut r2).unwrap();
        assert_ne!(&r1[LEN_LEN..LEN_LEN + 5], b"first");
        // Out of order: the counter does not match.
        let (_, mut o2) = pair();
        assert!(matches!(open(&mut o2, &r2), Err(RecordError::Forged)));
        assert_eq!(open(&mut o, &r1).unwrap(), b"first");
        // Replayed.
        let (_, mut o3) = pair();
        open(&mut o3, &r1).unwrap();
        assert!(open(&mut o3, &r1).is_err());
        assert_eq!(open(&mut o, &r2).unwrap(), b"second");
    }

    #[test]
    fn altered_or_foreign_records_are_refused() {
        let (mut s, _) = pair();
        let mut r = Vec::new();
        s.seal_into(&[1u8; 100], &mut r).unwrap();
        for i in [LEN_LEN, LEN_LEN + 50, r.len() - 1] {
            let mut bad = r.clone();
            bad[i] ^= 1;
            let (_, mut o) = pair();
            assert!(open(&mut o, &bad).is_err(), "byte {i}");
        }
        let mut other = Opener::new(&[8u8; MATERIAL_LEN]);
        assert!(open(&mut other, &r).is_err());
        let (_, mut o) = pair();
        assert_eq!(open(&mut o, &r).unwrap(), vec![1u8; 100]);
    }

    #[test]
    fn lengths_are_bounded() {
        let (mut s, _) = pair();
        let mut r = Vec::new();
        assert!(s.seal_into(&vec![0; MAX_PLAINTEXT + 1], &mut r).is_err());
        s.seal_into(&vec![0; MAX_PLAINTEXT], &mut r).unwrap();
        assert_eq!(r.len(), MAX_RECORD);
        assert!(Opener::body_len(0u32.to_le_bytes()).is_err());
        assert!(Opener::body_len(((MAX_PLAINTEXT + TAG_LEN + 1) as u32).to_le_bytes()).is_err());
        assert!(Opener::body_len(u32::MAX.to_le_bytes()).is_err());
        assert_eq!(
            Opener::body_len((TAG_LEN as u32).to_le_bytes()).unwrap(),
            TAG_LEN
        );
    }
}
