//! Async frame I/O and the handshake, on top of `basalt_proto::wire`.

use std::io;

use basalt_proto::wire::{
    verify_payload, Header, Hello, HelloChallenge, Opcode, PeerRole, Status, WireError, HEADER_LEN,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

fn invalid(e: WireError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Reads one validated frame; the payload goes into `payload` (resized).
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    payload: &mut Vec<u8>,
) -> io::Result<Header> {
    let mut hb = [0u8; HEADER_LEN];
    r.read_exact(&mut hb).await?;
    let h = Header::decode(&hb).map_err(invalid)?;
    payload.resize(h.payload_len as usize, 0);
    if h.payload_len > 0 {
        r.read_exact(payload).await.map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                invalid(WireError::Truncated {
                    got: 0,
                    want: h.payload_len as usize,
                })
            } else {
                e
            }
        })?;
    }
    verify_payload(&h, payload).map_err(invalid)?;
    Ok(h)
}

/// Header and payload in one buffer, ready for a single write.
pub fn encode_frame(h: &Header, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&h.encode());
    out.extend_from_slice(payload);
    out
}

/// Frame buffers shared by the process's connections: a writer hands a
/// buffer back after writing it, so building or receiving a large frame does
/// not allocate (and fault in) fresh memory each time.
pub mod pool {
    use std::sync::Mutex;

    use basalt_proto::wire::{Header, HEADER_LEN};

    static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

    /// Buffers smaller than this are not worth keeping: malloc serves them
    /// from its free lists without touching the kernel.
    pub const MIN_KEEP: usize = 16 << 10;
    /// At most this many buffers are kept.
    const MAX_KEPT: usize = 64;

    fn lock() -> std::sync::MutexGuard<'static, Vec<Vec<u8>>> {
        POOL.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A kept buffer (any length, contents unspecified) or an empty one.
    pub fn take_any() -> Vec<u8> {
        lock().pop().unwrap_or_default()
    }

    /// A buffer of exactly `len` bytes (contents unspecified).
    pub fn take(len: usize) -> Vec<u8> {
        let mut b = if len >= MIN_KEEP {
            take_any()
        } else {
            Vec::new()
        };
        // Shrinking is free; growing zeroes only the new tail.
        b.resize(len, 0);
        b
    }

    /// `take`, filled with `h` and `payload`.
    pub fn frame(h: &Header, payload: &[u8]) -> Vec<u8> {
        let mut b = take(HEADER_LEN + payload.len());
        b[..HEADER_LEN].copy_from_slice(&h.encode());
        b[HEADER_LEN..].copy_from_slice(payload);
        b
    }

    /// Returns a buffer that is no longer needed.
    pub fn put(b: Vec<u8>) {
        if b.capacity() >= MIN_KEEP {
            let mut p = lock();
            if p.len() < MAX_KEPT {
                p.push(b);
            }
        }
    }
}

/// Server side of the handshake. Returns the authenticated peer.
pub async fn accept_hello<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    key: &[u8],
    server_id: &str,
) -> io::Result<Hello> {
    let challenge = HelloChallenge {
        nonce: rand::random(),
        server_id: server_id.to_owned(),
    };
    let body = challenge.encode();
    let h = Header::request(Opcode::Hello, 0, 0, 0).with_payload(&body);
    s.write_all(&encode_frame(&h, &body)).await?;
    let mut buf = Vec::new();
    let h = read_frame(s, &mut buf).await?;
    if h.opcode != Opcode::Hello || h.is_response() {
        return Err(invalid(WireError::Malformed {
            what: "handshake",
            why: "expected Hello",
        }));
    }
    let hello = Hello::decode(&buf).map_err(invalid)?;
    let ok = hello.verify(key, &challenge.nonce);
    let status = if ok { Status::Ok } else { Status::Unauthorized };
    s.write_all(&h.response(status).encode()).await?;
    if !ok {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "peer {:?} failed authentication: check --cluster-key-file on both sides",
                hello.peer_id
            ),
        ));
    }
    Ok(hello)
}

/// Client side of the handshake. Returns the server's id.
pub async fn connect_hello<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    key: &[u8],
    role: PeerRole,
    peer_id: &str,
) -> io::Result<String> {
    let mut buf = Vec::new();
    let h = read_frame(s, &mut buf).await?;
    if h.opcode != Opcode::Hello || h.is_response() {
        return Err(invalid(WireError::Malformed {
            what: "handshake",
            why: "expected challenge",
        }));
    }
    let challenge = HelloChallenge::decode(&buf).map_err(invalid)?;
    let body = Hello::new(key, &challenge, role, peer_id).encode();
    let h = Header::request(Opcode::Hello, 1, 0, 0).with_payload(&body);
    s.write_all(&encode_frame(&h, &body)).await?;
    let r = read_frame(s, &mut buf).await?;
    if r.opcode != Opcode::Hello || !r.is_response() || r.status != Status::Ok {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "server {} refused the handshake ({:?})",
                challenge.server_id, r.status
            ),
        ));
    }
    Ok(challenge.server_id)
}
