//! Connecting to the primary copy: TCP, the TLS handshake (the node's
//! certificate; the server must be a storage server of the cluster), then
//! the Hello with the attachment grant. See `proto/WIRE.md`.

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use basalt_auth::session::{self, ClientConfig, OpenReader, SealWriter};
use basalt_proto::wire::{exchange_hello, Hello, PeerRole, Status};

/// Who we are and how long one attempt may take.
#[derive(Debug, Clone)]
pub struct ConnectParams {
    /// Data-plane TLS as the node.
    pub tls: Arc<ClientConfig>,
    /// The attachment grant, re-read at every connection (the node manager
    /// replaces it when the control service renews it).
    pub grant_file: PathBuf,
    pub volume_id: u64,
    /// Attachment generation stated in the handshake.
    pub attachment: u64,
    pub timeout: Duration,
}

/// An authenticated connection to the primary.
pub struct Connection {
    /// The socket (shutdown, timeouts, readiness).
    pub raw: TcpStream,
    pub reader: OpenReader<TcpStream>,
    pub writer: SealWriter<TcpStream>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve primary address {addr}: {source}; check --primary (or the layout from the control service)")]
    Resolve { addr: String, source: io::Error },
    #[error("primary address {0} resolved to no addresses; check --primary")]
    NoAddress(String),
    #[error(
        "cannot connect to primary {addr}: {source}; is the storage server running and reachable?"
    )]
    Connect { addr: String, source: io::Error },
    #[error("handshake with primary {addr} failed: {source}; is this a Basalt storage server data port of the same version?")]
    Handshake { addr: String, source: io::Error },
    #[error("primary {addr} refused our handshake ({status:?}); the attachment grant may be expired or superseded, or the node's certificate revoked")]
    Rejected { addr: String, status: Status },
    #[error("cannot read the attachment grant {path}: {source}; the node manager writes it when it attaches the volume")]
    Grant { path: PathBuf, source: io::Error },
}

/// Connects to `addr` (HOST:PORT), trying each resolved address, and
/// authenticates as a backend. The returned stream has TCP_NODELAY set and no
/// timeouts.
pub fn connect(addr: &str, p: &ConnectParams) -> Result<Connection, ConnectError> {
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|source| ConnectError::Resolve {
            addr: addr.to_owned(),
            source,
        })?
        .collect();
    let mut last = None;
    for sa in &addrs {
        match TcpStream::connect_timeout(sa, p.timeout) {
            Ok(s) => return handshake(s, addr, p),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(source) => Err(ConnectError::Connect {
            addr: addr.to_owned(),
            source,
        }),
        None => Err(ConnectError::NoAddress(addr.to_owned())),
    }
}

fn handshake(s: TcpStream, addr: &str, p: &ConnectParams) -> Result<Connection, ConnectError> {
    let hs = |source| ConnectError::Handshake {
        addr: addr.to_owned(),
        source,
    };
    let grant = basalt_auth::grant::load(&p.grant_file).map_err(|source| ConnectError::Grant {
        path: p.grant_file.clone(),
        source,
    })?;
    s.set_nodelay(true).map_err(hs)?;
    s.set_read_timeout(Some(p.timeout)).map_err(hs)?;
    s.set_write_timeout(Some(p.timeout)).map_err(hs)?;
    let mut raw = s;
    let keys = session::connect_blocking(&p.tls, &mut raw).map_err(|e| {
        if e.kind() == io::ErrorKind::PermissionDenied {
            tracing::warn!(addr, "TLS handshake with the primary refused: {e}");
            ConnectError::Rejected {
                addr: addr.to_owned(),
                status: Status::Unauthorized,
            }
        } else {
            hs(e)
        }
    })?;
    let mut reader = OpenReader::new(raw.try_clone().map_err(hs)?, keys.opener);
    let mut writer = SealWriter::new(raw.try_clone().map_err(hs)?, keys.sealer);
    let hello = Hello {
        role: PeerRole::Backend,
        volume_id: p.volume_id,
        attachment: p.attachment,
        grant,
    };
    if let Err(e) = exchange_hello(&mut reader, &mut writer, &hello) {
        return Err(match e.kind() {
            io::ErrorKind::PermissionDenied => ConnectError::Rejected {
                addr: addr.to_owned(),
                status: Status::Unauthorized,
            },
            _ => hs(e),
        });
    }
    raw.set_read_timeout(None).map_err(hs)?;
    raw.set_write_timeout(None).map_err(hs)?;
    tracing::debug!(addr, server = %keys.peer, "connected to primary");
    Ok(Connection {
        raw,
        reader,
        writer,
    })
}
