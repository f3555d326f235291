//! The data-plane wire protocol, version 3. See `proto/WIRE.md`.
//!
//! Every frame is a fixed 64-byte [`Header`] followed by `payload_len` bytes of
//! payload. Nothing read off the wire is trusted: [`Header::decode`] checks the
//! magic, version, header checksum, opcode and payload bound before anyone looks
//! at the payload, and [`verify_payload`] checks the payload CRC32C.

mod codec;
mod handshake;
mod header;

pub use codec::{read_frame, write_frame, Frame};
pub use handshake::{exchange_hello, Hello, PeerRole, MAX_HELLO_PAYLOAD};
pub use header::{verify_payload, Flags, Header, Opcode, Status, WireError};

/// Magic number at the start of every frame: ASCII "BSLT" read little-endian.
pub const MAGIC: u32 = u32::from_le_bytes(*b"BSLT");
/// The protocol version this build speaks.
pub const VERSION: u8 = 3;
/// Size of the fixed frame header in bytes.
pub const HEADER_LEN: usize = 64;
/// Largest payload a peer may send in one frame (and so the largest single
/// read or write): 4 MiB. Larger guest requests are split by the backend.
pub const MAX_PAYLOAD: u32 = 4 << 20;
/// Sector size: offsets and lengths of data requests are multiples of it.
pub const SECTOR_SIZE: u64 = 512;
