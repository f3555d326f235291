//! The cluster's identities, held by the control service: the CA and its
//! own certificate (created by `--bootstrap`), API and join tokens, and
//! revoked storage-server and node identities (docs/security.md).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use basalt_auth::{files, token, Authority, Ca, Credentials, Principal, Role};
use basalt_proto::control as pb;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::{ControlError, Result};
use crate::model::now_unix;
use crate::store::{get_json, put_json, MetaStore, Table};
use crate::Control;

/// Longest life of a join token.
const MAX_JOIN_TTL: Duration = Duration::from_secs(7 * 86400);
/// Name of the admin created by `--bootstrap`.
pub const BOOTSTRAP_ADMIN: &str = "admin";

/// A token, stored under the SHA-256 of its secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    /// `api` (a bearer token for the API) or `join` (one-time, for a
    /// certificate).
    pub kind: String,
    pub role: String,
    pub id: String,
    pub created_at: i64,
    /// 0 = never.
    pub expires_at: i64,
    /// Join tokens: used once.
    #[serde(default)]
    pub used: bool,
}

/// The CA and this service's credentials.
pub struct Identity {
    pub ca: Ca,
    pub creds: Credentials,
}

/// Loads the identity from `--tls-dir`, creating it first with
/// `--bootstrap` when there is none.
pub fn load_or_bootstrap(config: &Config, store: &dyn MetaStore) -> anyhow::Result<Identity> {
    let dir = &config.tls_dir;
    let ca_key = dir.join(files::CA_KEY);
    if !ca_key.exists() {
        if !config.bootstrap {
            anyhow::bail!(
                "no cluster identity in {} (no {}); start once with --bootstrap to create the \
                 cluster CA, this service's certificate and an admin token",
                dir.display(),
                files::CA_KEY
            );
        }
        bootstrap(config, store)?;
    }
    let ca_pem = files::read(&dir.join(files::CA_CERT), "")?;
    let key_pem = files::read_secret(&ca_key, "")?;
    let ca = Ca::load(&ca_pem, &key_pem).context("cannot load the cluster CA")?;
    // The control service's own certificate: renewed at every start, so it
    // never expires while the service is restarted now and then.
    let issued = ca.issue_new(&Principal::control(), config.cert_validity)?;
    let creds = Credentials::new(ca_pem, issued.cert_pem, issued.key_pem)
        .map_err(|e| anyhow::anyhow!("the control certificate does not verify: {e}"))?;
    creds.save(dir)?;
    Ok(Identity { ca, creds })
}

fn bootstrap(config: &Config, store: &dyn MetaStore) -> anyhow::Result<()> {
    let dir = &config.tls_dir;
    let cluster = config
        .state_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (ca, key_pem) = Ca::create(&cluster)?;
    files::write(&dir.join(files::CA_CERT), ca.cert_pem(), 0o644)?;
    files::write(&dir.join(files::CA_KEY), &key_pem, 0o600)?;
    let secret = token::generate();
    let rec = TokenRecord {
        kind: "api".into(),
        role: Role::Admin.name().into(),
        id: BOOTSTRAP_ADMIN.into(),
        created_at: now_unix(),
        expires_at: 0,
        used: false,
    };
    store.apply(vec![put_json(Table::Tokens, token::hash(&secret), &rec)])?;
    files::write(&config.admin_token_file, &format!("{secret}\n"), 0o600)?;
    tracing::info!(
        tls_dir = %dir.display(),
        admin_token = %config.admin_token_file.display(),
        "bootstrapped the cluster identity: CA, control certificate, admin token"
    );
    Ok(())
}

/// Resolves tokens and revocations for the authorisation layer.
pub struct StoreAuthority(pub Arc<dyn MetaStore>);

impl Authority for StoreAuthority {
    fn token(&self, secret: &str) -> Option<Principal> {
        let rec: TokenRecord = get_json(&*self.0, Table::Tokens, &token::hash(secret))
            .ok()
            .flatten()?;
        if rec.kind != "api" || (rec.expires_at != 0 && rec.expires_at <= now_unix()) {
            return None;
        }
        Principal::new(Role::parse(&rec.role)?, &rec.id).ok()
    }

    fn revoked(&self, p: &Principal) -> bool {
        is_revoked(&*self.0, p)
    }
}

fn revoked_key(p: &Principal) -> String {
    format!("{}/{}", p.role, p.id)
}

pub(crate) fn is_revoked(store: &dyn MetaStore, p: &Principal) -> bool {
    // A store error counts as revoked: refuse rather than admit.
    !matches!(store.get(Table::Revoked, &revoked_key(p)), Ok(None))
}

fn joinable(role: &str, id: &str) -> Result<Principal> {
    let role = match Role::parse(role) {
        Some(r @ (Role::Storage | Role::Node)) => r,
        _ => {
            return Err(ControlError::Invalid(format!(
                "role {role:?}: join tokens are for `storage` or `node`"
            )))
        }
    };
    Principal::new(role, id).map_err(|e| ControlError::Invalid(e.to_string()))
}

impl Control {
    pub fn create_join_token(
        &self,
        r: pb::CreateJoinTokenRequest,
    ) -> Result<pb::CreateJoinTokenResponse> {
        let p = joinable(&r.role, &r.id)?;
        if is_revoked(&*self.store, &p) {
            return Err(ControlError::Precondition(format!(
                "{p} was revoked; a revoked identity cannot join again: use a new id"
            )));
        }
        let ttl = match r.ttl_secs {
            0 => Duration::from_secs(3600),
            s => Duration::from_secs(s),
        };
        if ttl > MAX_JOIN_TTL {
            return Err(ControlError::Invalid(format!(
                "ttl_secs {}: at most {} (7 days)",
                r.ttl_secs,
                MAX_JOIN_TTL.as_secs()
            )));
        }
        let secret = token::generate();
        let now = now_unix();
        let rec = TokenRecord {
            kind: "join".into(),
            role: p.role.name().into(),
            id: p.id.clone(),
            created_at: now,
            expires_at: now + ttl.as_secs() as i64,
            used: false,
        };
        self.store
            .apply(vec![put_json(Table::Tokens, token::hash(&secret), &rec)])?;
        tracing::info!(principal = %p, expires_at = rec.expires_at, "join token created");
        Ok(pb::CreateJoinTokenResponse {
            token: secret,
            expires_at: rec.expires_at,
        })
    }

    /// Spends a join token on a certificate for the principal it names.
    pub async fn join(&self, r: pb::JoinRequest) -> Result<pb::JoinResponse> {
        let identity = self.identity()?;
        let refused = || {
            ControlError::Precondition(
                "unknown, used or expired join token; create a new one with \
                 `basalt join-token create`"
                    .into(),
            )
        };
        if !token::well_formed(r.token.trim()) {
            return Err(refused());
        }
        let key = token::hash(&r.token);
        let _op = self.ops.lock().await;
        let mut rec: TokenRecord =
            get_json(&*self.store, Table::Tokens, &key)?.ok_or_else(refused)?;
        if rec.kind != "join" || rec.used || rec.expires_at <= now_unix() {
            return Err(refused());
        }
        let p = joinable(&rec.role, &rec.id)?;
        if is_revoked(&*self.store, &p) {
            return Err(ControlError::Precondition(format!("{p} was revoked")));
        }
        let cert_pem = identity
            .ca
            .sign_csr(&r.csr_pem, &p, self.config.cert_validity)
            .map_err(|e| ControlError::Invalid(e.to_string()))?;
        rec.used = true;
        self.store.apply(vec![put_json(Table::Tokens, key, &rec)])?;
        tracing::info!(principal = %p, "joined: certificate issued");
        Ok(pb::JoinResponse {
            cert_pem,
            ca_pem: identity.ca.cert_pem().to_owned(),
            role: p.role.name().into(),
            id: p.id,
            expires_at: now_unix() + self.config.cert_validity.as_secs() as i64,
        })
    }

    pub fn revoke_identity(&self, r: pb::RevokeIdentityRequest) -> Result<()> {
        let p = joinable(&r.role, &r.id)?;
        self.store
            .apply(vec![put_json(Table::Revoked, revoked_key(&p), &now_unix())])?;
        tracing::warn!(principal = %p, "identity revoked");
        Ok(())
    }
}
