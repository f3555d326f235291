//! Frame header: layout, encoding and validating decoding.

use super::{HEADER_LEN, MAGIC, MAX_PAYLOAD, SECTOR_SIZE, VERSION};

/// Errors found while decoding a frame. Each one closes the connection: after
/// a framing error the byte stream cannot be trusted any more.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("bad magic {0:#010x}: the peer does not speak the Basalt data-plane protocol")]
    BadMagic(u32),
    #[error(
        "unsupported protocol version {0} (this build speaks {VERSION}); upgrade the older side"
    )]
    UnsupportedVersion(u8),
    #[error("header checksum mismatch: the frame was corrupted in transit")]
    HeaderChecksum,
    #[error("unknown opcode {0}")]
    UnknownOpcode(u8),
    #[error("unknown status {0}")]
    UnknownStatus(u16),
    #[error("payload of {0} bytes exceeds the {MAX_PAYLOAD}-byte frame limit")]
    Oversized(u32),
    #[error("payload checksum mismatch: the frame was corrupted in transit")]
    PayloadChecksum,
    #[error("reserved header field is not zero")]
    Reserved,
    #[error("truncated frame: the connection closed after {got} of {want} bytes")]
    Truncated { got: usize, want: usize },
    #[error("malformed {what}: {why}")]
    Malformed {
        what: &'static str,
        why: &'static str,
    },
}

/// Operation carried by a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// Handshake (see `handshake.rs`).
    Hello = 1,
    /// Read `length` bytes at `offset`; the response carries them.
    Read = 2,
    /// Write the payload at `offset`.
    Write = 3,
    /// Make every write acknowledged before it durable on every in-sync copy.
    Flush = 4,
    /// Deallocate `length` bytes at `offset`; later reads return zeroes.
    Discard = 5,
    /// Zero `length` bytes at `offset`.
    WriteZeroes = 6,
    /// Liveness probe; echoes the request id.
    Ping = 7,
}

impl TryFrom<u8> for Opcode {
    type Error = WireError;
    fn try_from(v: u8) -> Result<Self, WireError> {
        Ok(match v {
            1 => Opcode::Hello,
            2 => Opcode::Read,
            3 => Opcode::Write,
            4 => Opcode::Flush,
            5 => Opcode::Discard,
            6 => Opcode::WriteZeroes,
            7 => Opcode::Ping,
            other => return Err(WireError::UnknownOpcode(other)),
        })
    }
}

/// Outcome of a request, carried in responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Status {
    Ok = 0,
    /// The request is malformed (bad alignment, length mismatch, wrong opcode
    /// for the connection's role). Not retryable.
    InvalidRequest = 1,
    /// Offset + length is past the end of the volume. Not retryable.
    OutOfRange = 2,
    /// The request's epoch is older than the copy's persisted epoch; the
    /// response's epoch field carries the copy's epoch. The sender has been
    /// fenced and must fetch a new layout.
    StaleEpoch = 3,
    /// This copy is not the primary (or, on a replication connection, the
    /// sender is not this mirror's primary).
    WrongRole = 4,
    /// No copy of this volume on this server.
    NoSuchVolume = 5,
    /// A mirror did not acknowledge; the write is NOT acknowledged. Retryable.
    MirrorUnavailable = 6,
    /// The storage server's disk failed the operation.
    IoError = 7,
    /// Authentication failed during the handshake.
    Unauthorized = 8,
    /// The operation is not supported by this server.
    Unsupported = 9,
    /// The sender's attachment was superseded (the volume was attached
    /// elsewhere with force, or detached): it must stop. Not retryable.
    Fenced = 10,
    /// The request's epoch (or attachment) is newer than this copy's: the
    /// control service's layout change has not reached the copy yet. Only the
    /// control service raises a copy's epoch; retry after a pause.
    LayoutPending = 11,
}

impl TryFrom<u16> for Status {
    type Error = WireError;
    fn try_from(v: u16) -> Result<Self, WireError> {
        Ok(match v {
            0 => Status::Ok,
            1 => Status::InvalidRequest,
            2 => Status::OutOfRange,
            3 => Status::StaleEpoch,
            4 => Status::WrongRole,
            5 => Status::NoSuchVolume,
            6 => Status::MirrorUnavailable,
            7 => Status::IoError,
            8 => Status::Unauthorized,
            9 => Status::Unsupported,
            10 => Status::Fenced,
            11 => Status::LayoutPending,
            other => return Err(WireError::UnknownStatus(other)),
        })
    }
}

impl Status {
    /// Whether the same request may succeed if sent again later.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Status::MirrorUnavailable
                | Status::WrongRole
                | Status::NoSuchVolume
                | Status::LayoutPending
        )
    }
}

/// Header flag bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(pub u16);

impl Flags {
    /// Set on responses.
    pub const RESPONSE: u16 = 1 << 0;
    /// Set on frames a primary forwards to its mirrors.
    pub const REPLICA: u16 = 1 << 1;
    /// Write: make this write durable before acknowledging it.
    pub const FUA: u16 = 1 << 2;
    const KNOWN: u16 = Self::RESPONSE | Self::REPLICA | Self::FUA;

    pub fn has(self, bit: u16) -> bool {
        self.0 & bit != 0
    }
}

/// A decoded, validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub opcode: Opcode,
    pub flags: Flags,
    pub request_id: u64,
    pub volume_id: u64,
    pub epoch: u64,
    /// Byte offset into the volume.
    pub offset: u64,
    /// Number of bytes the request addresses (for a read: bytes wanted).
    pub length: u32,
    /// Bytes of payload following the header.
    pub payload_len: u32,
    /// CRC32C of the payload (0 when there is none).
    pub payload_crc: u32,
    /// Response status (0 on requests).
    pub status: Status,
}

impl Header {
    /// A request header with no payload.
    pub fn request(opcode: Opcode, request_id: u64, volume_id: u64, epoch: u64) -> Header {
        Header {
            opcode,
            flags: Flags::default(),
            request_id,
            volume_id,
            epoch,
            offset: 0,
            length: 0,
            payload_len: 0,
            payload_crc: 0,
            status: Status::Ok,
        }
    }

    /// The response header answering `self`, with `status` and no payload.
    pub fn response(&self, status: Status) -> Header {
        Header {
            flags: Flags(Flags::RESPONSE),
            payload_len: 0,
            payload_crc: 0,
            status,
            ..*self
        }
    }

    pub fn is_response(&self) -> bool {
        self.flags.has(Flags::RESPONSE)
    }

    /// Sets `payload_len` and `payload_crc` for `payload`.
    pub fn with_payload(mut self, payload: &[u8]) -> Header {
        self.payload_len = payload.len() as u32;
        self.payload_crc = if payload.is_empty() {
            0
        } else {
            crc32c::crc32c(payload)
        };
        self
    }

    /// Like [`Header::with_payload`] for a payload given as several slices.
    pub fn with_payload_iov(mut self, parts: &[&[u8]]) -> Header {
        let mut crc = 0u32;
        let mut len = 0usize;
        for p in parts {
            crc = crc32c::crc32c_append(crc, p);
            len += p.len();
        }
        self.payload_len = len as u32;
        self.payload_crc = crc;
        self
    }

    /// Checks that a data request is sector-aligned and, for writes, that the
    /// payload length matches. Bounds against the volume size are the
    /// server's job.
    pub fn validate_data_request(&self) -> Result<(), Status> {
        let aligned = self.offset.is_multiple_of(SECTOR_SIZE)
            && u64::from(self.length).is_multiple_of(SECTOR_SIZE);
        let payload_ok = match self.opcode {
            Opcode::Write => self.payload_len == self.length,
            Opcode::Read | Opcode::Discard | Opcode::WriteZeroes => self.payload_len == 0,
            Opcode::Flush | Opcode::Ping => return Ok(()),
            Opcode::Hello => false,
        };
        if !aligned
            || !payload_ok
            || self.length > MAX_PAYLOAD
                && self.opcode != Opcode::Discard
                && self.opcode != Opcode::WriteZeroes
        {
            return Err(Status::InvalidRequest);
        }
        Ok(())
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4] = VERSION;
        b[5] = self.opcode as u8;
        b[6..8].copy_from_slice(&self.flags.0.to_le_bytes());
        b[8..16].copy_from_slice(&self.request_id.to_le_bytes());
        b[16..24].copy_from_slice(&self.volume_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.epoch.to_le_bytes());
        b[32..40].copy_from_slice(&self.offset.to_le_bytes());
        b[40..44].copy_from_slice(&self.length.to_le_bytes());
        b[44..48].copy_from_slice(&self.payload_len.to_le_bytes());
        b[48..52].copy_from_slice(&self.payload_crc.to_le_bytes());
        b[52..54].copy_from_slice(&(self.status as u16).to_le_bytes());
        // 54..60 reserved, zero.
        let crc = crc32c::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and validates a header. Never trusts a field before checking it.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, WireError> {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(x)
        };
        let magic = u32_at(0);
        if magic != MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        if b[4] != VERSION {
            return Err(WireError::UnsupportedVersion(b[4]));
        }
        if crc32c::crc32c(&b[..60]) != u32_at(60) {
            return Err(WireError::HeaderChecksum);
        }
        if b[54..60].iter().any(|&x| x != 0) {
            return Err(WireError::Reserved);
        }
        let flags = Flags(u16_at(6));
        if flags.0 & !Flags::KNOWN != 0 {
            return Err(WireError::Malformed {
                what: "header",
                why: "unknown flag bits set",
            });
        }
        let payload_len = u32_at(44);
        if payload_len > MAX_PAYLOAD {
            return Err(WireError::Oversized(payload_len));
        }
        Ok(Header {
            opcode: Opcode::try_from(b[5])?,
            flags,
            request_id: u64_at(8),
            volume_id: u64_at(16),
            epoch: u64_at(24),
            offset: u64_at(32),
            length: u32_at(40),
            payload_len,
            payload_crc: u32_at(48),
            status: Status::try_from(u16_at(52))?,
        })
    }
}

/// Checks a received payload against its header.
pub fn verify_payload(h: &Header, payload: &[u8]) -> Result<(), WireError> {
    if payload.len() != h.payload_len as usize {
        return Err(WireError::Truncated {
            got: payload.len(),
            want: h.payload_len as usize,
        });
    }
    let crc = if payload.is_empty() {
        0
    } else {
        crc32c::crc32c(payload)
    };
    if crc != h.payload_crc {
        return Err(WireError::PayloadChecksum);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            offset: 4096,
            length: 8192,
            ..Header::request(Opcode::Write, 42, 7, 3)
        }
        .with_payload(&[0xAB; 8192])
    }

    #[test]
    fn roundtrip() {
        let h = sample();
        assert_eq!(Header::decode(&h.encode()), Ok(h));
        let r = h.response(Status::StaleEpoch);
        let d = Header::decode(&r.encode()).unwrap();
        assert!(d.is_response());
        assert_eq!(d.status, Status::StaleEpoch);
        assert_eq!(d.request_id, 42);
    }

    #[test]
    fn rejects_bad_magic_version_and_crc() {
        let mut b = sample().encode();
        b[0] ^= 1;
        assert!(matches!(Header::decode(&b), Err(WireError::BadMagic(_))));
        let mut b = sample().encode();
        b[4] = 9;
        assert_eq!(Header::decode(&b), Err(WireError::UnsupportedVersion(9)));
        for i in 5..64 {
            let mut b = sample().encode();
            b[i] ^= 0x10;
            assert!(Header::decode(&b).is_err(), "flipped byte {i} not detected");
        }
    }

    fn reseal(mut b: [u8; HEADER_LEN]) -> [u8; HEADER_LEN] {
        let crc = crc32c::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn rejects_oversized_unknown_opcode_status_flags() {
        let mut b = sample().encode();
        b[44..48].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        assert_eq!(
            Header::decode(&reseal(b)),
            Err(WireError::Oversized(MAX_PAYLOAD + 1))
        );
        let mut b = sample().encode();
        b[5] = 200;
        assert_eq!(
            Header::decode(&reseal(b)),
            Err(WireError::UnknownOpcode(200))
        );
        let mut b = sample().encode();
        b[52] = 99;
        assert_eq!(
            Header::decode(&reseal(b)),
            Err(WireError::UnknownStatus(99))
        );
        let mut b = sample().encode();
        b[7] = 0x80;
        assert!(matches!(
            Header::decode(&reseal(b)),
            Err(WireError::Malformed { .. })
        ));
        let mut b = sample().encode();
        b[55] = 1;
        assert_eq!(Header::decode(&reseal(b)), Err(WireError::Reserved));
    }

    #[test]
    fn payload_checks() {
        let h = sample();
        assert!(verify_payload(&h, &[0xAB; 8192]).is_ok());
        assert_eq!(
            verify_payload(&h, &[0xAB; 100]),
            Err(WireError::Truncated {
                got: 100,
                want: 8192
            })
        );
        let mut p = vec![0xAB; 8192];
        p[17] = 0;
        assert_eq!(verify_payload(&h, &p), Err(WireError::PayloadChecksum));
        let iov = h.with_payload_iov(&[&[0xAB; 4096], &[0xAB; 4096]]);
        assert_eq!(iov.payload_crc, h.payload_crc);
    }

    #[test]
    fn data_request_validation() {
        assert!(sample().validate_data_request().is_ok());
        let mut h = sample();
        h.offset = 100;
        assert_eq!(h.validate_data_request(), Err(Status::InvalidRequest));
        let mut h = sample();
        h.payload_len = 512;
        assert_eq!(h.validate_data_request(), Err(Status::InvalidRequest));
        let mut h = Header::request(Opcode::Read, 1, 1, 1);
        h.length = 1000;
        assert_eq!(h.validate_data_request(), Err(Status::InvalidRequest));
        h.length = 1024;
        assert!(h.validate_data_request().is_ok());
        let mut h = Header::request(Opcode::Discard, 1, 1, 1);
        h.length = 1 << 30;
        assert!(h.validate_data_request().is_ok());
    }
}
