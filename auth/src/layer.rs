//! Per-call authentication and authorisation for tonic servers.
//!
//! The caller is the principal of its verified client certificate, or of
//! its bearer token (`authorization: Bearer bst_...`) when the server takes
//! tokens. A [`Policy`] names who may call each method; a method it does
//! not know is refused, so a new RPC is closed until someone opens it. The
//! principal is left in the request's extensions for finer checks in the
//! handler ("only as itself", "only the primary"), read with [`caller`].

use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

use crate::peer::principal_of_cert;
use crate::principal::{Principal, Role};

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone who reached the TLS port (joining with a token, health).
    Public,
    /// Principals of these roles.
    Roles(&'static [Role]),
}

/// The access rule of each method, by its gRPC path
/// (`/package.Service/Method`); `None` for an unknown method (refused).
pub type Policy = Arc<dyn Fn(&str) -> Option<Access> + Send + Sync>;

/// Resolves bearer tokens (and answers whether a certificate principal was
/// revoked).
pub trait Authority: Send + Sync {
    /// The principal of a token, or `None` if it is unknown or revoked.
    fn token(&self, token: &str) -> Option<Principal>;
    /// Whether a certificate principal was revoked.
    fn revoked(&self, principal: &Principal) -> bool {
        let _ = principal;
        false
    }
}

/// The authenticated caller, in the request's extensions.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

/// The caller of an authorised request (always present behind
/// [`AuthLayer`]; an error if the layer is missing).
pub fn caller<T>(req: &tonic::Request<T>) -> Result<&Principal, Status> {
    req.extensions()
        .get::<Caller>()
        .map(|c| &c.0)
        .ok_or_else(|| Status::unauthenticated("no authenticated caller"))
}

/// Refuses unless the caller is `role` `id` (e.g. a storage server
/// heartbeating as itself).
pub fn require_self(caller: &Principal, role: Role, id: &str) -> Result<(), Status> {
    if caller.role == Role::Control || caller.is(role, id) {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "{caller} may not act as {role} {id:?}"
    )))
}

/// The tower layer.
#[derive(Clone)]
pub struct AuthLayer {
    policy: Policy,
    authority: Option<Arc<dyn Authority>>,
}

impl AuthLayer {
    /// Certificates only (storage servers, node managers).
    pub fn certificates(policy: Policy) -> AuthLayer {
        AuthLayer {
            policy,
            authority: None,
        }
    }

    /// Certificates and bearer tokens (the control service).
    pub fn with_authority(policy: Policy, authority: Arc<dyn Authority>) -> AuthLayer {
        AuthLayer {
            policy,
            authority: Some(authority),
        }
    }

    fn authenticate<B>(&self, req: &http::Request<B>) -> Result<Option<Principal>, Status> {
        let certs = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.peer_certs());
        if let Some(leaf) = certs.as_ref().and_then(|c| c.first().cloned()) {
            // rustls verified the chain against the CA during the handshake.
            let p = principal_of_cert(&leaf).ok_or_else(|| {
                Status::unauthenticated("the client certificate names no basalt principal")
            })?;
            if self.authority.as_ref().is_some_and(|a| a.revoked(&p)) {
                return Err(Status::unauthenticated(format!(
                    "{p} was revoked; a replacement joins under a new id"
                )));
            }
            return Ok(Some(p));
        }
        let Some(value) = req.headers().get(http::header::AUTHORIZATION) else {
            return Ok(None);
        };
        let Some(authority) = &self.authority else {
            return Err(Status::unauthenticated(
                "this server takes client certificates, not tokens",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| crate::token::well_formed(t))
            .ok_or_else(|| {
                Status::unauthenticated("malformed authorization header: expected `Bearer bst_...`")
            })?;
        authority
            .token(token)
            .map(Some)
            .ok_or_else(|| Status::unauthenticated("unknown or revoked token"))
    }

    fn authorize<B>(&self, req: &http::Request<B>) -> Result<Option<Principal>, Status> {
        let path = req.uri().path();
        let access = (self.policy)(path)
            .ok_or_else(|| Status::permission_denied(format!("{path} is not open to anyone")))?;
        let who = self.authenticate(req)?;
        match (access, &who) {
            (Access::Public, _) => Ok(who),
            (Access::Roles(roles), Some(p)) if roles.contains(&p.role) => Ok(who),
            (Access::Roles(_), Some(p)) => Err(Status::permission_denied(format!(
                "{p} may not call {path}"
            ))),
            (Access::Roles(_), None) => Err(Status::unauthenticated(
                "no credentials: present a certificate of the cluster CA, or an API token where \
                 the API takes one (basalt --token-file)",
            )),
        }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around a server's routes.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

type BoxFuture<T, E> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower_service::Service<http::Request<B>> for AuthService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match self.layer.authorize(&req) {
            Ok(who) => {
                if let Some(p) = who {
                    req.extensions_mut().insert(Caller(p));
                }
                Box::pin(self.inner.call(req))
            }
            Err(status) => {
                tracing::warn!(path = req.uri().path(), %status, "call refused");
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}
