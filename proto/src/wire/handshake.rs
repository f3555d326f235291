//! The data-plane Hello, sent as the first sealed frame once the TLS
//! handshake has authenticated both sides (see `proto/WIRE.md`).
//!
//! The peer's identity is its certificate's; the Hello says what the
//! connection is for: a backend names the one volume it serves, its
//! attachment generation and the grant the control service signed for it
//! (see `basalt_auth::grant`); a primary replicating to this server's
//! mirrors names nothing. The server answers with a Hello response: `Ok`,
//! or `Unauthorized` and closes the connection.
//!
//! The protocol version is in every header, so a peer of another version is
//! refused at the first frame with a clear error.

use std::io::{self, Read, Write};

use super::{read_frame, write_frame, Header, Opcode, Status, WireError};

/// Largest Hello payload either side accepts: a server reads it before it
/// knows what the connection is for, so it reserves no more.
pub const MAX_HELLO_PAYLOAD: usize = 512;
/// Bytes of a Hello before the grant.
const FIXED: usize = 2 + 8 + 8 + 2;

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

/// The client's first frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub role: PeerRole,
    /// For a backend: the one volume this connection addresses (0 for
    /// replication connections).
    pub volume_id: u64,
    /// For a backend: its attachment generation, issued by the control
    /// service (0 for replication connections).
    pub attachment: u64,
    /// For a backend: its attachment grant (empty for replication).
    pub grant: Vec<u8>,
}

impl Hello {
    /// A primary's Hello to its mirror.
    pub fn replication() -> Hello {
        Hello {
            role: PeerRole::Replication,
            volume_id: 0,
            attachment: 0,
            grant: Vec::new(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.role as u8, 0];
        out.extend_from_slice(&self.volume_id.to_le_bytes());
        out.extend_from_slice(&self.attachment.to_le_bytes());
        out.extend_from_slice(&(self.grant.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.grant);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        let bad = |why| WireError::Malformed { what: "hello", why };
        if b.len() < FIXED {
            return Err(bad("too short"));
        }
        if b.len() > MAX_HELLO_PAYLOAD {
            return Err(bad("too long"));
        }
        let role = PeerRole::try_from(b[0])?;
        if b[1] != 0 {
            return Err(bad("reserved byte is not 0"));
        }
        let u64_at = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        let (volume_id, attachment) = (u64_at(2), u64_at(10));
        let n = usize::from(u16::from_le_bytes([b[18], b[19]]));
        if b.len() != FIXED + n {
            return Err(bad("grant length does not match"));
        }
        let grant = b[FIXED..].to_vec();
        match role {
            PeerRole::Replication if volume_id != 0 || attachment != 0 || n != 0 => {
                return Err(bad(
                    "a replication peer names no volume, attachment or grant",
                ))
            }
            PeerRole::Backend if n == 0 => return Err(bad("a backend must present a grant")),
            _ => {}
        }
        Ok(Hello {
            role,
            volume_id,
            attachment,
            grant,
        })
    }
}

fn refused(status: Status) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("the storage server refused our Hello ({status:?})"),
    )
}

/// Client side, blocking: sends `hello` on `w` (a sealed writer) and reads
/// the answer from `r`. `Ok` when the server accepted it.
pub fn exchange_hello<R: Read, W: Write>(r: &mut R, w: &mut W, hello: &Hello) -> io::Result<()> {
    let body = hello.encode();
    let h = Header::request(Opcode::Hello, 0, hello.volume_id, 0).with_payload(&body);
    write_frame(w, &h, &[&body])?;
    w.flush()?;
    let mut buf = Vec::new();
    let r = read_frame(r, &mut buf)?;
    if r.opcode != Opcode::Hello || !r.is_response() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "expected a Hello response",
        ));
    }
    if r.status != Status::Ok {
        return Err(refused(r.status));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellos_round_trip() {
        let b = Hello {
            role: PeerRole::Backend,
            volume_id: 7,
            attachment: 3,
            grant: vec![1, 2, 3],
        };
        assert_eq!(Hello::decode(&b.encode()).unwrap(), b);
        let r = Hello::replication();
        assert_eq!(Hello::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn hello_rejects_garbage() {
        assert!(Hello::decode(&[]).is_err());
        assert!(Hello::decode(&[9; FIXED]).is_err());
        // A replication peer names nothing; a backend presents a grant.
        let mut r = Hello::replication().encode();
        r[2] = 1;
        assert!(Hello::decode(&r).is_err());
        let b = Hello {
            role: PeerRole::Backend,
            volume_id: 1,
            attachment: 1,
            grant: Vec::new(),
        };
        assert!(Hello::decode(&b.encode()).is_err());
        let mut b = Hello {
            grant: vec![0; 8],
            ..b
        }
        .encode();
        b[1] = 1;
        assert!(Hello::decode(&b).is_err());
        b[1] = 0;
        b.push(0);
        assert!(Hello::decode(&b).is_err());
        let big = Hello {
            role: PeerRole::Backend,
            volume_id: 1,
            attachment: 1,
            grant: vec![0; MAX_HELLO_PAYLOAD],
        };
        assert!(Hello::decode(&big.encode()).is_err());
    }
}
