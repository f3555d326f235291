//! TLS 1.3 settings of the data plane: both sides present a certificate
//! of the cluster CA. A storage server accepts any cluster principal (it
//! judges the role after the handshake); a client accepts only a storage
//! server, and the expected one when it knows it.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::peer::principal_of_cert;
use crate::{Credentials, Principal, Role};

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot build data-plane TLS settings from the credentials: {0}")]
    Invalid(String),
}

fn bad(e: impl std::fmt::Display) -> TlsSetupError {
    TlsSetupError::Invalid(e.to_string())
}

fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    // AES-GCM only: it has hardware support where Basalt runs, and the
    // sealed records use AES-128-GCM too.
    p.cipher_suites = vec![
        rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
        rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
    ];
    Arc::new(p)
}

fn roots(creds: &Credentials) -> Result<Arc<RootCertStore>, TlsSetupError> {
    let ca = CertificateDer::from_pem_slice(creds.ca_pem.as_bytes()).map_err(bad)?;
    let mut roots = RootCertStore::empty();
    roots.add(ca).map_err(bad)?;
    Ok(Arc::new(roots))
}

fn identity(
    creds: &Credentials,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsSetupError> {
    let cert = CertificateDer::from_pem_slice(creds.cert_pem.as_bytes()).map_err(bad)?;
    let key = PrivateKeyDer::from_pem_slice(creds.key_pem().as_bytes()).map_err(bad)?;
    Ok((vec![cert], key))
}

/// ALPN of the data plane: sealed records, or (trusted networks only, when
/// both sides are configured for it) frames in the clear after the same
/// authenticated handshake.
pub const ALPN_SEALED: &[u8] = b"basalt-data/3";
pub const ALPN_CLEAR: &[u8] = b"basalt-data/3-clear";

/// A storage server's data port. `accept_clear`: also accept clients
/// that ask for frames in the clear (`--data-encryption off`).
pub fn server_config(
    creds: &Credentials,
    accept_clear: bool,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let p = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(creds)?, p.clone())
        .build()
        .map_err(bad)?;
    let (chain, key) = identity(creds)?;
    let mut c = ServerConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(bad)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(bad)?;
    c.alpn_protocols = vec![ALPN_SEALED.to_vec()];
    if accept_clear {
        c.alpn_protocols.push(ALPN_CLEAR.to_vec());
    }
    // Nothing may follow the handshake but our records.
    c.send_tls13_tickets = 0;
    c.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(c))
}

/// A client of storage servers (a backend, or a primary replicating to
/// its mirrors). `server`: the one storage server to accept, or any.
/// `clear`: ask for frames in the clear after the handshake (refused by a
/// server not configured to accept it).
pub fn client_config(
    creds: &Credentials,
    server: Option<&str>,
    clear: bool,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let p = provider();
    let inner = WebPkiServerVerifier::builder_with_provider(roots(creds)?, p.clone())
        .build()
        .map_err(bad)?;
    let verifier = StorageVerifier {
        inner,
        expect: server.map(str::to_owned),
    };
    let (chain, key) = identity(creds)?;
    let mut c = ClientConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(bad)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)
        .map_err(bad)?;
    c.resumption = rustls::client::Resumption::disabled();
    c.alpn_protocols = vec![if clear { ALPN_CLEAR } else { ALPN_SEALED }.to_vec()];
    Ok(Arc::new(c))
}

/// The name a client puts in its ClientHello (the verifier decides).
pub(crate) fn server_name() -> ServerName<'static> {
    ServerName::DnsName(
        rustls::pki_types::DnsName::try_from("storage.basalt")
            .map(|n| n.to_owned())
            .unwrap_or_else(|_| unreachable!("a valid DNS name")),
    )
}

/// Accepts a chain of the cluster CA naming a storage principal (the
/// expected one if set), verified for that principal's own name.
#[derive(Debug)]
struct StorageVerifier {
    inner: Arc<WebPkiServerVerifier>,
    expect: Option<String>,
}

impl ServerCertVerifier for StorageVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let refuse = |why: String| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(NotStorage(why)),
            )))
        };
        let who = principal_of_cert(end_entity)
            .ok_or_else(|| refuse("the certificate names no basalt principal".into()))?;
        if who.role != Role::Storage {
            return Err(refuse(format!("{who} is not a storage server")));
        }
        if let Some(id) = &self.expect {
            if &who.id != id {
                return Err(refuse(format!(
                    "{who} answered, expected storage server {id}"
                )));
            }
        }
        let name = ServerName::try_from(who.dns_name()).map_err(|e| refuse(e.to_string()))?;
        self.inner
            .verify_server_cert(end_entity, intermediates, &name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NotStorage(String);

/// The principal of a peer's verified certificate chain.
pub(crate) fn peer_principal(certs: Option<&[CertificateDer<'_>]>) -> Option<Principal> {
    principal_of_cert(certs?.first()?)
}
