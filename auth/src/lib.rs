//! Cluster identities for Basalt (see docs/security.md).
//!
//! - [`pki`]: the cluster certificate authority, held by the control
//!   service, and the certificates it issues. Each names one
//!   [`Principal`] (role and id) as its only DNS name.
//! - [`files`]: where certificates live and the tonic TLS settings built
//!   from them: every gRPC server presents its certificate and verifies
//!   client certificates against the CA; every client verifies the
//!   server's name.
//! - [`token`]: bearer tokens (API tokens, one-time join tokens), stored
//!   hashed.
//! - [`layer`]: per-call authorisation: a policy per method, the caller
//!   left for the handler's own checks.

pub mod files;
pub mod grant;
pub mod join;
pub mod layer;
pub mod peer;
pub mod pki;
pub mod principal;
pub mod session;
#[doc(hidden)]
pub mod testing;
pub mod token;

pub use files::{endpoint, server_only_tls, Credentials, FilesError};
pub use grant::{Grant, GrantError, GrantVerifier};
pub use join::{obtain, read_token, JoinError, JoinSettings};
pub use layer::{caller, require_self, Access, AuthLayer, Authority, Caller, Policy};
pub use pki::{new_csr, Ca, Issued, PkiError};
pub use principal::{valid_id, Principal, Role};

#[cfg(test)]
mod tests;
