//! Where identities live on disk, and the TLS settings built from them.
//!
//! A TLS directory holds `ca.crt` (the cluster CA certificate), and for a
//! process with a certificate `tls.crt` and `tls.key` (owner-only). The
//! control service's directory also holds `ca.key` and `admin.token`.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use crate::peer;
use crate::principal::Principal;

/// Longest a TLS handshake may take, client or server side (a peer that
/// accepts TCP but is frozen must not hang the caller: tonic's connect
/// timeout covers TCP only). Clients may set a shorter one.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const CERT: &str = "tls.crt";
pub const KEY: &str = "tls.key";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("cannot read {path}: {source}{hint}")]
    Read {
        path: PathBuf,
        hint: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`")]
    Exposed { path: PathBuf, mode: u32 },
    #[error("bad server address {addr:?}: {reason}")]
    Address { addr: String, reason: String },
}

/// Reads a file, naming it and what to do in the error.
pub fn read(path: &Path, hint: &'static str) -> Result<String, FilesError> {
    std::fs::read_to_string(path).map_err(|source| FilesError::Read {
        path: path.to_owned(),
        hint,
        source,
    })
}

/// Reads a secret file, refusing one that other users can read.
pub fn read_secret(path: &Path, hint: &'static str) -> Result<String, FilesError> {
    let text = read(path, hint)?;
    let mode = std::fs::metadata(path)
        .map_err(|source| FilesError::Read {
            path: path.to_owned(),
            hint,
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(FilesError::Exposed {
            path: path.to_owned(),
            mode: mode & 0o777,
        });
    }
    Ok(text)
}

/// Writes `text` to `path` atomically with `mode` (0600 for secrets).
pub fn write(path: &Path, text: &str, mode: u32) -> Result<(), FilesError> {
    let err = |source| FilesError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// A process's identity: the cluster CA and its own certificate and key.
#[derive(Clone)]
pub struct Credentials {
    pub principal: Principal,
    pub ca_pem: String,
    pub cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Checks that the certificate is valid now under the CA and names a
    /// principal.
    pub fn new(ca_pem: String, cert_pem: String, key_pem: String) -> Result<Credentials, String> {
        let principal = peer::verify_leaf(&ca_pem, &cert_pem)?;
        Ok(Credentials {
            principal,
            ca_pem,
            cert_pem,
            key_pem,
        })
    }

    /// Loads `ca.crt`, `tls.crt` and `tls.key` from `dir`.
    pub fn load(dir: &Path) -> Result<Credentials, FilesError> {
        const HINT: &str = "; a storage server or node manager gets it by joining with a token (--join-token-file), the control service by `basalt-control --bootstrap`";
        let ca = read(&dir.join(CA_CERT), HINT)?;
        let cert = read(&dir.join(CERT), HINT)?;
        let key = read_secret(&dir.join(KEY), HINT)?;
        Credentials::new(ca, cert, key).map_err(|reason| FilesError::Invalid {
            path: dir.join(CERT),
            reason,
        })
    }

    /// The private key (PEM), for the data-plane TLS settings.
    pub(crate) fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Stores them in `dir` (the key owner-only).
    pub fn save(&self, dir: &Path) -> Result<(), FilesError> {
        write(&dir.join(CA_CERT), &self.ca_pem, 0o644)?;
        write(&dir.join(KEY), &self.key_pem, 0o600)?;
        write(&dir.join(CERT), &self.cert_pem, 0o644)
    }

    /// Server side: this identity, and client certificates verified
    /// against the CA when presented (callers without one, such as the CLI
    /// with a token or a joining server, are judged per call).
    pub fn server_tls(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(true)
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// Client side, presenting this identity to `server`, which must prove
    /// it is that principal.
    pub fn client_tls(&self, server: &Principal) -> ClientTlsConfig {
        server_only_tls(&self.ca_pem, server)
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

/// Client side without a certificate (a CLI with a token, a joining
/// server): verifies that `server` is that principal under the CA.
pub fn server_only_tls(ca_pem: &str, server: &Principal) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(server.dns_name())
        .timeout(HANDSHAKE_TIMEOUT)
}

/// An endpoint for `addr` (`host:port`, `http://host:port` or
/// `https://host:port`) that always uses TLS: tonic would send a
/// plain-`http://` URL in the clear even with a TLS config.
pub fn endpoint(addr: &str, tls: ClientTlsConfig) -> Result<Endpoint, FilesError> {
    let bad = |reason: String| FilesError::Address {
        addr: addr.to_owned(),
        reason,
    };
    let host = addr
        .strip_prefix("https://")
        .or_else(|| addr.strip_prefix("http://"))
        .unwrap_or(addr)
        .trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        return Err(bad("expected host:port".into()));
    }
    Endpoint::from_shared(format!("https://{host}"))
        .map_err(|e| bad(e.to_string()))?
        .tls_config(tls)
        .map_err(|e| bad(e.to_string()))
}
