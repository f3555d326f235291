//! Getting a process's certificate: from its TLS directory, or by joining
//! the cluster with a one-time token.

use std::path::{Path, PathBuf};

use basalt_proto::control::control_client::ControlClient;
use basalt_proto::control::JoinRequest;

use crate::files::{self, Credentials, FilesError};
use crate::principal::Principal;

/// Errors of joining.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error(
        "no certificate in {dir} ({reason}); join the cluster: pass --join-token-file \
         (from `basalt join-token create --role {role} --id {id}`) and the cluster CA (--ca-file)"
    )]
    NoCredentials {
        dir: PathBuf,
        reason: String,
        role: &'static str,
        id: String,
    },
    #[error("{dir} holds the certificate of {found}, not of {wanted}; use another --tls-dir or the id in the certificate")]
    OtherPrincipal {
        dir: PathBuf,
        found: Principal,
        wanted: Principal,
    },
    #[error("joining needs --control (the control service address)")]
    NoControl,
    #[error("joining needs the cluster CA certificate: pass --ca-file (the control service's tls/ca.crt)")]
    NoCa,
    #[error("cannot reach the control service at {addr} to join: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("the control service refused to join {principal}: {status}")]
    Refused {
        principal: Principal,
        status: String,
    },
    #[error("the control service issued a certificate that does not work: {0}")]
    BadCertificate(String),
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
}

/// Where a process keeps its identity and how it may join.
#[derive(Debug, Clone)]
pub struct JoinSettings {
    /// Holds `ca.crt`, `tls.crt`, `tls.key`.
    pub tls_dir: PathBuf,
    /// Who this process is.
    pub principal: Principal,
    /// The control service address, to join.
    pub control: Option<String>,
    /// A one-time join token (owner-only file).
    pub token_file: Option<PathBuf>,
    /// The cluster CA certificate, to verify the control service when
    /// joining (default: `ca.crt` in `tls_dir`).
    pub ca_file: Option<PathBuf>,
}

/// The credentials in `tls_dir` if they are valid and name the principal;
/// otherwise joins with the token (and stores the new certificate there).
pub async fn obtain(s: &JoinSettings) -> Result<Credentials, JoinError> {
    let reason = match Credentials::load(&s.tls_dir) {
        Ok(c) if c.principal == s.principal => return Ok(c),
        Ok(c) => {
            return Err(JoinError::OtherPrincipal {
                dir: s.tls_dir.clone(),
                found: c.principal,
                wanted: s.principal.clone(),
            })
        }
        Err(e @ FilesError::Exposed { .. }) => return Err(e.into()),
        Err(e) => e.to_string(),
    };
    let Some(token_file) = &s.token_file else {
        return Err(JoinError::NoCredentials {
            dir: s.tls_dir.clone(),
            reason,
            role: s.principal.role.name(),
            id: s.principal.id.clone(),
        });
    };
    tracing::info!(principal = %s.principal, %reason, "joining the cluster with a token");
    let token = files::read_secret(token_file, "")?;
    let control = s.control.as_deref().ok_or(JoinError::NoControl)?;
    let ca_path = s
        .ca_file
        .clone()
        .unwrap_or_else(|| s.tls_dir.join(files::CA_CERT));
    if !ca_path.exists() {
        return Err(JoinError::NoCa);
    }
    let ca_pem = files::read(&ca_path, "")?;
    let creds = join(control, &ca_pem, token.trim(), &s.principal).await?;
    creds.save(&s.tls_dir)?;
    tracing::info!(principal = %creds.principal, dir = %s.tls_dir.display(), "joined the cluster");
    Ok(creds)
}

/// Sends a join request for `principal` with `token` to the control
/// service at `control`, verified against `ca_pem`.
pub async fn join(
    control: &str,
    ca_pem: &str,
    token: &str,
    principal: &Principal,
) -> Result<Credentials, JoinError> {
    let unreachable = |reason: String| JoinError::Unreachable {
        addr: control.to_owned(),
        reason,
    };
    let tls = files::server_only_tls(ca_pem, &Principal::control());
    let channel = files::endpoint(control, tls)?
        .connect()
        .await
        .map_err(|e| unreachable(format!("{e:?}")))?;
    let (csr, key_pem) = crate::pki::new_csr(principal)?;
    let resp = ControlClient::new(channel)
        .join(JoinRequest {
            token: token.to_owned(),
            csr_pem: csr,
        })
        .await
        .map_err(|st| JoinError::Refused {
            principal: principal.clone(),
            status: st.message().to_owned(),
        })?
        .into_inner();
    let creds = Credentials::new(ca_pem.to_owned(), resp.cert_pem, key_pem)
        .map_err(JoinError::BadCertificate)?;
    if &creds.principal != principal {
        return Err(JoinError::Refused {
            principal: principal.clone(),
            status: format!("the token is for {}", creds.principal),
        });
    }
    Ok(creds)
}

/// Reads a token from a file (owner-only) for the CLI and joiners.
pub fn read_token(path: &Path) -> Result<String, FilesError> {
    Ok(files::read_secret(path, "")?.trim().to_owned())
}
