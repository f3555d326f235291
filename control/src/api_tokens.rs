//! API tokens of tenants and admins: created by an admin (the secret is
//! returned once; the store keeps its SHA-256, like the bootstrap admin
//! token), listed by the first digits of that hash, revoked by deleting the
//! record (the next call with it is UNAUTHENTICATED).

use basalt_auth::{token, Principal, Role};
use basalt_proto::control as pb;

use crate::error::{ControlError, Result};
use crate::identity::{TokenRecord, BOOTSTRAP_ADMIN};
use crate::model::now_unix;
use crate::store::{put_json, Op, Table};
use crate::Control;

/// The fewest hash digits that name a token in RevokeApiToken.
const MIN_ID: usize = 8;

fn token_pb(hash: &str, t: &TokenRecord) -> pb::ApiToken {
    pb::ApiToken {
        id: token::short_id(hash).to_owned(),
        role: t.role.clone(),
        principal: t.id.clone(),
        created_at: t.created_at,
        expires_at: t.expires_at,
    }
}

fn live(t: &TokenRecord, now: i64) -> bool {
    t.expires_at == 0 || t.expires_at > now
}

impl Control {
    /// Every API token (not join tokens), by hash.
    pub(crate) fn api_tokens(&self) -> Result<Vec<(String, TokenRecord)>> {
        let mut out = Vec::new();
        for (hash, bytes) in self.store.list(Table::Tokens)? {
            let t: TokenRecord =
                serde_json::from_slice(&bytes).map_err(|e| crate::store::StoreError::Corrupt {
                    key: token::short_id(&hash).to_owned(),
                    why: e.to_string(),
                })?;
            if t.kind == "api" {
                out.push((hash, t));
            }
        }
        out.sort_by(|a, b| (a.1.created_at, &a.0).cmp(&(b.1.created_at, &b.0)));
        Ok(out)
    }

    pub async fn create_api_token(
        &self,
        r: pb::CreateApiTokenRequest,
    ) -> Result<pb::CreateApiTokenResponse> {
        let principal =
            match (r.admin, r.tenant.is_empty()) {
                (true, true) => {
                    let name = if r.name.is_empty() {
                        BOOTSTRAP_ADMIN
                    } else {
                        &r.name
                    };
                    Principal::new(Role::Admin, name)
                        .map_err(|e| ControlError::Invalid(e.to_string()))?
                }
                (false, false) => Principal::new(Role::Tenant, &r.tenant)
                    .map_err(|e| ControlError::Invalid(e.to_string()))?,
                _ => return Err(ControlError::Invalid(
                    "a token is for a tenant (--tenant NAME) or an admin (--admin), one of the two"
                        .into(),
                )),
            };
        let now = now_unix();
        let expires_at = match r.ttl_secs {
            0 => 0,
            s => i64::try_from(s)
                .ok()
                .and_then(|s| now.checked_add(s))
                .ok_or_else(|| {
                    ControlError::Invalid(format!("ttl_secs {s} is too large (0 = never expires)"))
                })?,
        };
        let secret = token::generate();
        let hash = token::hash(&secret);
        let rec = TokenRecord {
            kind: "api".into(),
            role: principal.role.name().into(),
            id: principal.id.clone(),
            created_at: now,
            expires_at,
            used: false,
        };
        let _op = self.ops.lock().await;
        if principal.role == Role::Tenant && self.tenant_record(&principal.id)?.is_none() {
            return Err(ControlError::NotFound(format!(
                "tenant {:?} does not exist: create it first (basalt tenant create {})",
                principal.id, principal.id
            )));
        }
        self.store
            .apply(vec![put_json(Table::Tokens, hash.clone(), &rec)])?;
        tracing::info!(principal = %principal, token = token::short_id(&hash), expires_at, "API token created");
        Ok(pb::CreateApiTokenResponse {
            token: secret,
            info: Some(token_pb(&hash, &rec)),
        })
    }

    pub fn list_api_tokens(
        &self,
        r: pb::ListApiTokensRequest,
    ) -> Result<pb::ListApiTokensResponse> {
        Ok(pb::ListApiTokensResponse {
            tokens: self
                .api_tokens()?
                .iter()
                .filter(|(_, t)| r.tenant.is_empty() || (t.role == "tenant" && t.id == r.tenant))
                .map(|(h, t)| token_pb(h, t))
                .collect(),
        })
    }

    /// Revokes the token whose hash starts with `id`; the last live admin
    /// token is kept, so the cluster stays manageable.
    pub async fn revoke_api_token(&self, r: pb::RevokeApiTokenRequest) -> Result<pb::ApiToken> {
        let id = r.id.trim().to_ascii_lowercase();
        if id.len() < MIN_ID || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ControlError::Invalid(format!(
                "token id {:?}: give the {MIN_ID} hex digits `basalt token list` shows",
                r.id
            )));
        }
        let _op = self.ops.lock().await;
        let all = self.api_tokens()?;
        let found: Vec<&(String, TokenRecord)> =
            all.iter().filter(|(h, _)| h.starts_with(&id)).collect();
        let (hash, t) = match found.as_slice() {
            [one] => *one,
            [] => {
                return Err(ControlError::NotFound(format!(
                    "no API token {id} (basalt token list)"
                )))
            }
            _ => {
                return Err(ControlError::Invalid(format!(
                    "{} tokens start with {id}: give more digits",
                    found.len()
                )))
            }
        };
        let now = now_unix();
        if t.role == Role::Admin.name()
            && live(t, now)
            && !all
                .iter()
                .any(|(h, o)| h != hash && o.role == Role::Admin.name() && live(o, now))
        {
            return Err(ControlError::Precondition(format!(
                "token {} is the last admin token: create another first (basalt token create \
                 --admin), so the cluster stays manageable",
                token::short_id(hash)
            )));
        }
        self.store
            .apply(vec![Op::Delete(Table::Tokens, hash.clone())])?;
        tracing::warn!(token = token::short_id(hash), role = %t.role, principal = %t.id, "API token revoked");
        Ok(token_pb(hash, t))
    }
}
