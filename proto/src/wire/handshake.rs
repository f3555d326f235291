//! Connection handshake.
//!
//! 1. The server sends a [`HelloChallenge`] (opcode Hello, no RESPONSE flag):
//!    a fresh random nonce and its server id.
//! 2. The client answers with a [`Hello`]: its role, its id, for a backend
//!    the volume it serves and its attachment (the identity the control
//!    service issued when it attached the volume; storage servers refuse a
//!    superseded one), and an HMAC-SHA256 tag over the nonce and all of these,
//!    keyed with the cluster key.
//! 3. The server replies with a Hello response: `Ok`, or `Unauthorized` and
//!    closes the connection.
//!
//! The protocol version is in every header, so a peer of another version is
//! refused at the first frame with a clear error.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::WireError;

pub const NONCE_LEN: usize = 32;
pub const AUTH_TAG_LEN: usize = 32;
const MAX_ID_LEN: usize = 256;
const DOMAIN: &[u8] = b"basalt-hello-v2";
/// Largest handshake payload either side accepts: a server reads the
/// client's Hello before it knows who the client is, so it reserves no more.
pub const MAX_HELLO_PAYLOAD: usize = 512;

/// What the connecting peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PeerRole {
    /// A vhost-user-blk backend serving a guest; talks to primaries.
    Backend = 1,
    /// A primary copy forwarding writes to this server's mirror copies.
    Replication = 2,
}

impl TryFrom<u8> for PeerRole {
    type Error = WireError;
    fn try_from(v: u8) -> Result<Self, WireError> {
        match v {
            1 => Ok(PeerRole::Backend),
            2 => Ok(PeerRole::Replication),
            _ => Err(WireError::Malformed {
                what: "hello",
                why: "unknown peer role",
            }),
        }
    }
}

fn put_id(out: &mut Vec<u8>, id: &str) {
    let id = &id.as_bytes()[..id.len().min(MAX_ID_LEN)];
    out.extend_from_slice(&(id.len() as u16).to_le_bytes());
    out.extend_from_slice(id);
}

fn take_id(b: &[u8]) -> Result<(String, &[u8]), WireError> {
    let bad = |why| WireError::Malformed { what: "hello", why };
    if b.len() < 2 {
        return Err(bad("missing id length"));
    }
    let n = u16::from_le_bytes([b[0], b[1]]) as usize;
    if n > MAX_ID_LEN || b.len() < 2 + n {
        return Err(bad("id length out of bounds"));
    }
    let id = std::str::from_utf8(&b[2..2 + n]).map_err(|_| bad("id is not UTF-8"))?;
    Ok((id.to_owned(), &b[2 + n..]))
}

/// First frame of a connection, sent by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloChallenge {
    pub nonce: [u8; NONCE_LEN],
    pub server_id: String,
}

impl HelloChallenge {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.nonce.to_vec();
        put_id(&mut out, &self.server_id);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        if b.len() < NONCE_LEN {
            return Err(WireError::Malformed {
                what: "hello challenge",
                why: "too short",
            });
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&b[..NONCE_LEN]);
        let (server_id, rest) = take_id(&b[NONCE_LEN..])?;
        if !rest.is_empty() {
            return Err(WireError::Malformed {
                what: "hello challenge",
                why: "trailing bytes",
            });
        }
        Ok(HelloChallenge { nonce, server_id })
    }
}

/// The client's answer to a challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub role: PeerRole,
    pub peer_id: String,
    /// For a backend: the one volume this connection addresses (0 for
    /// replication connections).
    pub volume_id: u64,
    /// For a backend: its attachment generation, issued by the control
    /// service (0 for replication connections).
    pub attachment: u64,
    pub tag: [u8; AUTH_TAG_LEN],
}

/// Who a client says it is, before it is authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity<'a> {
    pub role: PeerRole,
    pub peer_id: &'a str,
    pub volume_id: u64,
    pub attachment: u64,
}

fn mac(key: &[u8], nonce: &[u8; NONCE_LEN], who: &Identity<'_>) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; an empty key is the development default.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(DOMAIN);
    m.update(nonce);
    m.update(&[who.role as u8]);
    m.update(&who.volume_id.to_le_bytes());
    m.update(&who.attachment.to_le_bytes());
    m.update(who.peer_id.as_bytes());
    m
}

impl Hello {
    /// Builds the answer to `challenge`, authenticated with the cluster `key`.
    pub fn new(key: &[u8], challenge: &HelloChallenge, who: Identity<'_>) -> Hello {
        let peer_id: String = who.peer_id.chars().take(MAX_ID_LEN / 4).collect();
        let who = Identity {
            peer_id: &peer_id,
            ..who
        };
        let tag = mac(key, &challenge.nonce, &who).finalize().into_bytes();
        Hello {
            role: who.role,
            volume_id: who.volume_id,
            attachment: who.attachment,
            peer_id,
            tag: tag.into(),
        }
    }

    pub fn identity(&self) -> Identity<'_> {
        Identity {
            role: self.role,
            peer_id: &self.peer_id,
            volume_id: self.volume_id,
            attachment: self.attachment,
        }
    }

    /// Constant-time check of the tag against `key` and the nonce we sent.
    pub fn verify(&self, key: &[u8], nonce: &[u8; NONCE_LEN]) -> bool {
        mac(key, nonce, &self.identity())
            .verify_slice(&self.tag)
            .is_ok()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.role as u8, 0];
        put_id(&mut out, &self.peer_id);
        out.extend_from_slice(&self.volume_id.to_le_bytes());
        out.extend_from_slice(&self.attachment.to_le_bytes());
        out.extend_from_slice(&self.tag);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        if b.len() < 2 {
            return Err(WireError::Malformed {
                what: "hello",
                why: "too short",
            });
        }
        let role = PeerRole::try_from(b[0])?;
        if b[1] != 0 {
            return Err(WireError::Malformed {
                what: "hello",
                why: "reserved byte is not 0",
            });
        }
        let (peer_id, rest) = take_id(&b[2..])?;
        if rest.len() != 16 + AUTH_TAG_LEN {
            return Err(WireError::Malformed {
                what: "hello",
                why: "bad length after the id",
            });
        }
        let u64_at = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&rest[i..i + 8]);
            u64::from_le_bytes(w)
        };
        let (volume_id, attachment) = (u64_at(0), u64_at(8));
        if role == PeerRole::Replication && (volume_id != 0 || attachment != 0) {
            return Err(WireError::Malformed {
                what: "hello",
                why: "a replication peer names no volume or attachment",
            });
        }
        let mut tag = [0u8; AUTH_TAG_LEN];
        tag.copy_from_slice(&rest[16..]);
        Ok(Hello {
            role,
            peer_id,
            volume_id,
            attachment,
            tag,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_authenticates() {
        let ch = HelloChallenge {
            nonce: [5; NONCE_LEN],
            server_id: "s1".into(),
        };
        assert_eq!(HelloChallenge::decode(&ch.encode()).unwrap(), ch);
        let h = Hello::new(b"secret", &ch, replication("s2"));
        let d = Hello::decode(&h.encode()).unwrap();
        assert_eq!(d, h);
        assert!(d.verify(b"secret", &ch.nonce));
        assert!(!d.verify(b"other", &ch.nonce));
        assert!(!d.verify(b"secret", &[6; NONCE_LEN]));
        let mut forged = d.clone();
        forged.role = PeerRole::Backend;
        assert!(!forged.verify(b"secret", &ch.nonce));
    }

    fn replication(id: &str) -> Identity<'_> {
        Identity {
            role: PeerRole::Replication,
            peer_id: id,
            volume_id: 0,
            attachment: 0,
        }
    }

    #[test]
    fn a_backend_hello_binds_its_volume_and_attachment() {
        let ch = HelloChallenge {
            nonce: [1; NONCE_LEN],
            server_id: "s1".into(),
        };
        let who = Identity {
            role: PeerRole::Backend,
            peer_id: "b1",
            volume_id: 7,
            attachment: 3,
        };
        let h = Hello::new(b"k", &ch, who.clone());
        let d = Hello::decode(&h.encode()).unwrap();
        assert_eq!(d.identity(), who);
        assert!(d.verify(b"k", &ch.nonce));
        // A fenced backend cannot claim a newer attachment, nor another
        // volume, without the tag failing.
        let mut newer = d.clone();
        newer.attachment = 4;
        assert!(!newer.verify(b"k", &ch.nonce));
        let mut other = d.clone();
        other.volume_id = 8;
        assert!(!other.verify(b"k", &ch.nonce));
        // A replication peer names no volume.
        let mut b = Hello::new(b"k", &ch, replication("s2")).encode();
        let at = b.len() - AUTH_TAG_LEN - 16;
        b[at] = 1;
        assert!(Hello::decode(&b).is_err());
    }

    #[test]
    fn hello_rejects_garbage() {
        assert!(Hello::decode(&[]).is_err());
        assert!(Hello::decode(&[9, 0, 0, 0]).is_err());
        assert!(Hello::decode(&[1, 0, 255, 255]).is_err());
        assert!(Hello::decode(&[1, 0, 1, 0, b'x']).is_err());
        assert!(Hello::decode(&[1, 1, 0, 0]).is_err());
        assert!(HelloChallenge::decode(&[0; 10]).is_err());
        let mut b = HelloChallenge {
            nonce: [0; NONCE_LEN],
            server_id: "a".into(),
        }
        .encode();
        b.push(0);
        assert!(HelloChallenge::decode(&b).is_err());
    }
}
