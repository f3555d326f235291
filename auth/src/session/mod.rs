//! The data plane's secure transport (see `proto/WIRE.md`).
//!
//! A connection starts with a TLS 1.3 handshake in which both sides present
//! a certificate of the cluster CA ([`tls`]). The handshake gives each side
//! its peer's principal and, through the TLS exporter, a key per direction;
//! from then on the connection carries sealed records ([`record`]), read
//! and written by [`OpenReader`] and [`SealWriter`].
//!
//! Why not TLS records throughout: a backend reads a connection on one
//! thread and writes it on another, and a storage server splits each
//! connection into a reader and a writer task. A TLS connection is one
//! state machine for both directions, so every frame would take a lock
//! shared by the two. Keys exported per direction let each half seal or
//! open on its own, with the same cipher (AES-128-GCM) and nonce scheme as
//! TLS 1.3. The handshake — certificates, key exchange, downgrade and
//! replay protection — is rustls's, unchanged.

mod drive;
pub mod record;
mod stream;
mod tls;

use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::{ClientConnection, Connection, ServerConnection};
use tokio::io::{AsyncRead, AsyncWrite};

pub use drive::Keys;
pub use record::{Opener, RecordError, Sealer};
pub use rustls;
pub use rustls::{ClientConfig, ServerConfig};
pub use stream::{OpenReader, SealWriter};
pub use tls::{client_config, server_config, TlsSetupError, ALPN_CLEAR, ALPN_SEALED};

fn setup(e: rustls::Error) -> io::Error {
    io::Error::other(format!("cannot start a TLS session: {e}"))
}

/// Server side: authenticates the peer and returns the session keys.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    config: &Arc<ServerConfig>,
    s: &mut S,
) -> io::Result<Keys> {
    let c = ServerConnection::new(config.clone()).map_err(setup)?;
    drive::handshake(Connection::Server(c), s).await
}

/// Client side, async.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    config: &Arc<ClientConfig>,
    s: &mut S,
) -> io::Result<Keys> {
    let c = ClientConnection::new(config.clone(), tls::server_name()).map_err(setup)?;
    drive::handshake(Connection::Client(c), s).await
}

/// Client side, on a blocking socket.
pub fn connect_blocking<S: Read + Write>(
    config: &Arc<ClientConfig>,
    s: &mut S,
) -> io::Result<Keys> {
    let c = ClientConnection::new(config.clone(), tls::server_name()).map_err(setup)?;
    drive::handshake_blocking(Connection::Client(c), s)
}

#[cfg(test)]
mod tests;
