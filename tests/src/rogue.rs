//! Hostile data-plane peers. A stale backend, for the fault suite: it
//! speaks the data-plane protocol to a volume's primary as a backend of an
//! attachment that was superseded (what a backend left running on a host
//! that was cut off, after a forced attach elsewhere, would send), with the
//! volume's *current* epoch, and writes garbage; every write must be
//! refused. And [`attempt`], for the adversarial suite: a peer with any
//! certificate (or none) and any Hello, trying one write.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use basalt_auth::session::{self, OpenReader, SealWriter};
use basalt_auth::{Ca, Credentials, Grant, Principal, Role};
use basalt_proto::wire::{
    exchange_hello, read_frame, write_frame, Header, Hello, Opcode, PeerRole, Status,
};

/// An authenticated data-plane connection.
pub struct Conn {
    r: OpenReader<TcpStream>,
    w: SealWriter<TcpStream>,
}

/// Connects to the data-plane `addr` as a backend of `volume_id` with
/// `attachment`, on node `node`, with a certificate and a grant from `ca`
/// (the cluster CA: what a node that held a grant for that attachment
/// would present; a grant for a future attachment can only come from
/// whoever holds the CA key, as the test does).
pub fn connect(ca: &Ca, node: &str, addr: &str, volume_id: u64, attachment: u64) -> Result<Conn> {
    let p = Principal::new(Role::Node, node)?;
    let issued = ca.issue_new(&p, Duration::from_secs(3600))?;
    let creds = Credentials::new(ca.cert_pem().to_owned(), issued.cert_pem, issued.key_pem)
        .map_err(anyhow::Error::msg)?;
    let grant = ca.sign_grant(&Grant {
        volume_id,
        attachment,
        node: node.to_owned(),
        read_only: false,
        expires_unix: basalt_auth::grant::now_unix() + 3600,
    })?;
    let tls = session::client_config(&creds, None, false)?;
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let keys = session::connect_blocking(&tls, &mut s)?;
    let mut r = OpenReader::new(s.try_clone()?, keys.opener);
    let mut w = SealWriter::new(s, keys.sealer);
    let hello = Hello {
        role: PeerRole::Backend,
        volume_id,
        attachment,
        grant,
    };
    exchange_hello(&mut r, &mut w, &hello).with_context(|| format!("handshake with {addr}"))?;
    Ok(Conn { r, w })
}

/// Writes 4 KiB of 0xDB at offsets spread over `range` (bytes) with `epoch`
/// for `duration`, one request at a time; returns how many got each status.
pub fn write_for(
    s: &mut Conn,
    volume_id: u64,
    epoch: u64,
    range: (u64, u64),
    duration: Duration,
) -> Result<BTreeMap<String, u64>> {
    let data = [0xDBu8; 4096];
    let blocks = (range.1 - range.0) / 4096;
    let mut counts = BTreeMap::new();
    let mut buf = Vec::new();
    let deadline = Instant::now() + duration;
    let mut i = 0u64;
    while Instant::now() < deadline {
        i += 1;
        let h = Header {
            offset: range.0 + (i.wrapping_mul(2654435761) % blocks) * 4096,
            length: 4096,
            ..Header::request(Opcode::Write, i, volume_id, epoch)
        }
        .with_payload(&data);
        write_frame(&mut s.w, &h, &[&data])?;
        let r = read_frame(&mut s.r, &mut buf)?;
        *counts.entry(format!("{:?}", r.status)).or_insert(0) += 1;
    }
    Ok(counts)
}

/// What a data-plane attempt came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The TLS handshake or the Hello was refused (the error says which).
    Refused(String),
    /// Connected; the write got this status.
    Wrote(Status),
}

/// One write to try on the data plane.
pub struct Try<'a> {
    /// The storage server's data address and id.
    pub addr: &'a str,
    pub server_id: &'a str,
    /// None: no client certificate (the server is still verified).
    pub creds: Option<&'a Credentials>,
    pub ca_pem: &'a str,
    pub hello: Hello,
    /// 4 KiB of 0xEE at offset 0 of this volume, flagged REPLICA or not.
    pub volume_id: u64,
    pub replica: bool,
    pub epoch: u64,
}

/// Connects as `t.creds`, says `t.hello`, and if accepted tries the write.
pub fn attempt(t: &Try<'_>) -> Result<Outcome> {
    let (addr, hello, epoch) = (t.addr, &t.hello, t.epoch);
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let keys = match t.creds {
        Some(c) => session::connect_blocking(&session::client_config(c, None, false)?, &mut s),
        None => anonymous(t.ca_pem, t.server_id, &mut s),
    };
    let keys = match keys {
        Ok(k) => k,
        Err(e) => return Ok(Outcome::Refused(format!("TLS: {e}"))),
    };
    let mut r = OpenReader::new(s.try_clone()?, keys.opener);
    let mut w = SealWriter::new(s, keys.sealer);
    if let Err(e) = exchange_hello(&mut r, &mut w, hello) {
        return Ok(Outcome::Refused(format!("Hello: {e}")));
    }
    let data = [0xEEu8; 4096];
    let mut h = Header {
        length: 4096,
        ..Header::request(Opcode::Write, 1, t.volume_id, epoch)
    };
    if t.replica {
        h.flags = basalt_proto::wire::Flags(basalt_proto::wire::Flags::REPLICA);
    }
    let h = h.with_payload(&data);
    write_frame(&mut w, &h, &[&data])?;
    let mut buf = Vec::new();
    match read_frame(&mut r, &mut buf) {
        Ok(resp) => Ok(Outcome::Wrote(resp.status)),
        Err(e) => Ok(Outcome::Refused(format!("connection closed: {e}"))),
    }
}

/// A TLS client with no certificate of its own (trusting `ca_pem`, and
/// checking that the server is storage server `server_id`).
fn anonymous(ca_pem: &str, server_id: &str, s: &mut TcpStream) -> std::io::Result<session::Keys> {
    use basalt_auth::session::rustls;
    use basalt_auth::session::ClientConfig;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(std::io::Error::other)?;
    roots.add(ca).map_err(std::io::Error::other)?;
    let mut config = ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(std::io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![session::ALPN_SEALED.to_vec()];
    let name = rustls::pki_types::ServerName::try_from(format!("{server_id}.storage.basalt"))
        .map_err(std::io::Error::other)?;
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
        .map_err(std::io::Error::other)?;
    // Drive the handshake with rustls's own loop.
    while conn.is_handshaking() {
        conn.complete_io(s)?;
    }
    // A server that requires client certificates fails the handshake on
    // its side; the first read shows it.
    let mut b = [0u8; 1];
    let mut tls = rustls::Stream::new(&mut conn, s);
    use std::io::Read;
    match tls.read(&mut b) {
        Ok(n) => Err(std::io::Error::other(format!(
            "the server answered a client without a certificate ({n} bytes)"
        ))),
        Err(e) => Err(e),
    }
}
