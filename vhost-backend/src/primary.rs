//! Connecting to the primary copy: TCP, then the authenticated handshake.

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use basalt_proto::wire::{
    read_frame, write_frame, Header, Hello, HelloChallenge, Identity, Opcode, PeerRole, Status,
};

/// Who we are and how long one attempt may take.
#[derive(Debug, Clone)]
pub struct ConnectParams {
    pub backend_id: String,
    pub cluster_key: Vec<u8>,
    pub volume_id: u64,
    /// Attachment generation stated in the handshake.
    pub attachment: u64,
    pub timeout: Duration,
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
    #[error("primary {addr} sent an unexpected handshake frame ({what})")]
    Protocol { addr: String, what: &'static str },
    #[error("primary {addr} refused our handshake ({status:?}); check that --cluster-key-file matches the storage servers' key")]
    Rejected { addr: String, status: Status },
}

/// Connects to `addr` (HOST:PORT), trying each resolved address, and
/// authenticates as a backend. The returned stream has TCP_NODELAY set and no
/// timeouts.
pub fn connect(addr: &str, epoch: u64, p: &ConnectParams) -> Result<TcpStream, ConnectError> {
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
            Ok(s) => return handshake(s, addr, epoch, p),
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

fn handshake(
    mut s: TcpStream,
    addr: &str,
    epoch: u64,
    p: &ConnectParams,
) -> Result<TcpStream, ConnectError> {
    let hs = |source| ConnectError::Handshake {
        addr: addr.to_owned(),
        source,
    };
    let proto = |what| ConnectError::Protocol {
        addr: addr.to_owned(),
        what,
    };
    s.set_nodelay(true).map_err(hs)?;
    s.set_read_timeout(Some(p.timeout)).map_err(hs)?;
    s.set_write_timeout(Some(p.timeout)).map_err(hs)?;

    let mut buf = Vec::new();
    let h = read_frame(&mut s, &mut buf).map_err(hs)?;
    if h.opcode != Opcode::Hello || h.is_response() {
        return Err(proto("expected a challenge"));
    }
    let challenge = HelloChallenge::decode(&buf).map_err(|_| proto("malformed challenge"))?;
    let who = Identity {
        role: PeerRole::Backend,
        peer_id: &p.backend_id,
        volume_id: p.volume_id,
        attachment: p.attachment,
    };
    let body = Hello::new(&p.cluster_key, &challenge, who).encode();
    let h = Header::request(Opcode::Hello, 0, p.volume_id, epoch).with_payload(&body);
    write_frame(&mut s, &h, &[&body]).map_err(hs)?;
    let r = read_frame(&mut s, &mut buf).map_err(hs)?;
    if r.opcode != Opcode::Hello || !r.is_response() {
        return Err(proto("expected a Hello response"));
    }
    if r.status != Status::Ok {
        return Err(ConnectError::Rejected {
            addr: addr.to_owned(),
            status: r.status,
        });
    }
    s.set_read_timeout(None).map_err(hs)?;
    s.set_write_timeout(None).map_err(hs)?;
    tracing::debug!(addr, server = %challenge.server_id, "connected to primary");
    Ok(s)
}
