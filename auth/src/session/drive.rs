//! Running the TLS handshake over a socket, blocking or async, one TLS
//! record at a time: nothing past the handshake's last record is read, so
//! the sealed records that follow it stay in the socket for their reader.

use std::io::{self, Read, Write};

use rustls::pki_types::CertificateDer;
use rustls::Connection;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::record::{Opener, Sealer, MATERIAL_LEN};
use super::tls::{peer_principal, ALPN_CLEAR, ALPN_SEALED};
use crate::Principal;

/// TLS record header bytes, and the largest record body (2^14 plus the
/// expansion TLS 1.3 allows).
const TLS_HEADER: usize = 5;
const TLS_MAX_BODY: usize = (1 << 14) + 256;
/// The exporter label of the sealed records' keys (RFC 8446 §7.5).
const LABEL: &[u8] = b"EXPORTER-basalt-data-v3";

/// An authenticated session's keys and peer. No keys: the two sides agreed
/// on frames in the clear (`--data-encryption off` on both).
#[derive(Debug)]
pub struct Keys {
    pub peer: Principal,
    pub sealer: Option<Sealer>,
    pub opener: Option<Opener>,
}

fn tls_err(e: rustls::Error) -> io::Error {
    let kind = match e {
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            io::ErrorKind::PermissionDenied
        }
        _ => io::ErrorKind::InvalidData,
    };
    io::Error::new(kind, format!("TLS handshake: {e}"))
}

fn record_len(header: &[u8; TLS_HEADER]) -> io::Result<usize> {
    let n = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if n > TLS_MAX_BODY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "TLS handshake: oversized record (is the peer a Basalt data port of this version?)",
        ));
    }
    Ok(n)
}

/// Feeds one whole record to the connection; on a TLS error, returns the
/// alert to send along with it.
fn feed(conn: &mut Connection, record: &[u8]) -> Result<(), (io::Error, Vec<u8>)> {
    let mut rd = record;
    while !rd.is_empty() {
        if let Err(e) = conn.read_tls(&mut rd) {
            return Err((e, Vec::new()));
        }
    }
    if let Err(e) = conn.process_new_packets() {
        let mut alert = Vec::new();
        let _ = conn.write_tls(&mut alert);
        return Err((tls_err(e), alert));
    }
    Ok(())
}

fn outgoing(conn: &mut Connection) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out)?;
    }
    Ok(out)
}

fn finish(conn: Connection) -> io::Result<Keys> {
    let peer = peer_principal(conn.peer_certificates().map(|c| c as &[CertificateDer<'_>]))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the peer's certificate names no basalt principal",
            )
        })?;
    match conn.alpn_protocol() {
        Some(p) if p == ALPN_SEALED => {}
        Some(p) if p == ALPN_CLEAR => {
            return Ok(Keys {
                peer,
                sealer: None,
                opener: None,
            })
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the peer did not agree on a data-plane protocol (is it a Basalt data port of this version?)",
            ))
        }
    }
    let m = conn
        .export_keying_material([0u8; 2 * MATERIAL_LEN], LABEL, None)
        .map_err(tls_err)?;
    let mut c2s = [0u8; MATERIAL_LEN];
    let mut s2c = [0u8; MATERIAL_LEN];
    c2s.copy_from_slice(&m[..MATERIAL_LEN]);
    s2c.copy_from_slice(&m[MATERIAL_LEN..]);
    let (seal, open) = match conn {
        Connection::Client(_) => (c2s, s2c),
        Connection::Server(_) => (s2c, c2s),
    };
    Ok(Keys {
        peer,
        sealer: Some(Sealer::new(&seal)),
        opener: Some(Opener::new(&open)),
    })
}

/// Runs the handshake on a blocking socket (its timeouts bound it).
pub fn handshake_blocking<S: Read + Write>(mut conn: Connection, s: &mut S) -> io::Result<Keys> {
    let mut record = Vec::with_capacity(TLS_HEADER + TLS_MAX_BODY);
    loop {
        let out = outgoing(&mut conn)?;
        if !out.is_empty() {
            s.write_all(&out)?;
        }
        if !conn.is_handshaking() {
            return finish(conn);
        }
        let mut header = [0u8; TLS_HEADER];
        s.read_exact(&mut header)?;
        let n = record_len(&header)?;
        record.clear();
        record.extend_from_slice(&header);
        record.resize(TLS_HEADER + n, 0);
        s.read_exact(&mut record[TLS_HEADER..])?;
        if let Err((e, alert)) = feed(&mut conn, &record) {
            let _ = s.write_all(&alert);
            return Err(e);
        }
    }
}

/// Runs the handshake on an async socket (the caller bounds it in time).
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    mut conn: Connection,
    s: &mut S,
) -> io::Result<Keys> {
    let mut record = Vec::with_capacity(TLS_HEADER + TLS_MAX_BODY);
    loop {
        let out = outgoing(&mut conn)?;
        if !out.is_empty() {
            s.write_all(&out).await?;
        }
        if !conn.is_handshaking() {
            return finish(conn);
        }
        let mut header = [0u8; TLS_HEADER];
        s.read_exact(&mut header).await?;
        let n = record_len(&header)?;
        record.clear();
        record.extend_from_slice(&header);
        record.resize(TLS_HEADER + n, 0);
        s.read_exact(&mut record[TLS_HEADER..]).await?;
        if let Err((e, alert)) = feed(&mut conn, &record) {
            let _ = s.write_all(&alert).await;
            return Err(e);
        }
    }
}
