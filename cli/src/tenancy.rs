//! `basalt tenant`, `basalt token` and `basalt audit`.

use basalt_proto::control as pb;
use serde_json::{json, Value};

use crate::args::{AuditArgs, Cli, QuotaArgs, TenantCmd, TokenCmd};
use crate::auth::Client;
use crate::commands::{st, Printed};
use crate::output::{format_time, table};
use crate::size::format_size;

/// The quota `args` make of `cur`: limits given replace, others stay.
pub fn merge_quota(cur: Option<pb::TenantQuota>, args: &QuotaArgs) -> pb::TenantQuota {
    let cur = cur.unwrap_or_default();
    pb::TenantQuota {
        volumes: args.volumes.map_or(cur.volumes, |l| l.0),
        gib: args.gib.map_or(cur.gib, |l| l.0),
        snapshot_gib: args.snapshot_gib.map_or(cur.snapshot_gib, |l| l.0),
    }
}

fn limit(l: Option<u64>) -> String {
    l.map_or_else(|| "-".into(), |n| n.to_string())
}

fn tenant_json(t: &pb::Tenant) -> Value {
    let q = t.quota.unwrap_or_default();
    let u = t.usage.unwrap_or_default();
    json!({
        "name": t.name,
        "created_at": t.created_at,
        "tokens": t.tokens,
        "quota": {"volumes": q.volumes, "gib": q.gib, "snapshot_gib": q.snapshot_gib},
        "usage": {
            "volumes": u.volumes, "volume_bytes": u.volume_bytes,
            "snapshots": u.snapshots, "snapshot_bytes": u.snapshot_bytes,
        },
    })
}

const TENANT_HEADERS: [&str; 6] = [
    "NAME",
    "VOLUMES",
    "PROVISIONED",
    "SNAPSHOTS",
    "TOKENS",
    "CREATED",
];

/// `used/limit` cells: `2/5`, `3 GiB/10 GiB`, `1/-`.
fn tenant_row(t: &pb::Tenant) -> Vec<String> {
    let q = t.quota.unwrap_or_default();
    let u = t.usage.unwrap_or_default();
    let gib = |l: Option<u64>| l.map_or_else(|| "-".into(), |n| format!("{n} GiB"));
    vec![
        t.name.clone(),
        format!("{}/{}", u.volumes, limit(q.volumes)),
        format!("{}/{}", format_size(u.volume_bytes), gib(q.gib)),
        format!(
            "{} ({})/{}",
            u.snapshots,
            format_size(u.snapshot_bytes),
            gib(q.snapshot_gib)
        ),
        t.tokens.to_string(),
        format_time(t.created_at),
    ]
}

fn tenant_printed(t: pb::Tenant) -> Printed {
    Printed {
        table: table(&TENANT_HEADERS, &[tenant_row(&t)]),
        json: tenant_json(&t),
    }
}

async fn tenants(c: &mut Client) -> anyhow::Result<Vec<pb::Tenant>> {
    Ok(c.list_tenants(pb::ListTenantsRequest {})
        .await
        .map_err(st)?
        .into_inner()
        .tenants)
}

pub async fn tenant(c: &mut Client, cmd: &TenantCmd) -> anyhow::Result<Printed> {
    Ok(match cmd {
        TenantCmd::Create { name, quota } => tenant_printed(
            c.create_tenant(pb::CreateTenantRequest {
                name: name.clone(),
                quota: Some(merge_quota(None, quota)),
            })
            .await
            .map_err(st)?
            .into_inner(),
        ),
        TenantCmd::List => {
            let ts = tenants(c).await?;
            Printed {
                table: table(
                    &TENANT_HEADERS,
                    &ts.iter().map(tenant_row).collect::<Vec<_>>(),
                ),
                json: Value::Array(ts.iter().map(tenant_json).collect()),
            }
        }
        TenantCmd::Quota { name, quota } => {
            let cur = tenants(c)
                .await?
                .into_iter()
                .find(|t| t.name == *name)
                .ok_or_else(|| {
                    anyhow::anyhow!("tenant {name:?} does not exist (basalt tenant list)")
                })?;
            tenant_printed(
                c.set_tenant_quota(pb::SetTenantQuotaRequest {
                    name: name.clone(),
                    quota: Some(merge_quota(cur.quota, quota)),
                })
                .await
                .map_err(st)?
                .into_inner(),
            )
        }
        TenantCmd::Delete { name } => {
            c.delete_tenant(pb::DeleteTenantRequest { name: name.clone() })
                .await
                .map_err(st)?;
            Printed {
                table: format!("deleted tenant {name} (its API tokens are revoked)"),
                json: json!({"deleted": name}),
            }
        }
    })
}

fn token_json(t: &pb::ApiToken) -> Value {
    json!({
        "id": t.id, "role": t.role, "principal": t.principal,
        "created_at": t.created_at, "expires_at": t.expires_at,
    })
}

fn expiry(t: i64) -> String {
    if t == 0 {
        "never".into()
    } else {
        format_time(t)
    }
}

pub async fn token(cli: &Cli, c: &mut Client, cmd: &TokenCmd) -> anyhow::Result<Printed> {
    Ok(match cmd {
        TokenCmd::Create {
            admin,
            name,
            ttl_secs,
            output_file,
        } => {
            if !*admin && cli.tenant.is_empty() {
                anyhow::bail!("name the token's tenant with --tenant NAME, or pass --admin");
            }
            let t = c
                .create_api_token(pb::CreateApiTokenRequest {
                    tenant: if *admin {
                        String::new()
                    } else {
                        cli.tenant.clone()
                    },
                    admin: *admin,
                    name: name.clone().unwrap_or_default(),
                    ttl_secs: *ttl_secs,
                })
                .await
                .map_err(st)?
                .into_inner();
            let info = t.info.unwrap_or_default();
            let mut json = token_json(&info);
            let table = match output_file {
                Some(f) => {
                    basalt_auth::files::write(f, &format!("{}\n", t.token), 0o600)?;
                    json["token_file"] = f.display().to_string().into();
                    format!(
                        "token {} of {} {} written to {} (expires: {}); use it with \
                         --token-file {}",
                        info.id,
                        info.role,
                        info.principal,
                        f.display(),
                        expiry(info.expires_at),
                        f.display()
                    )
                }
                None => {
                    json["token"] = t.token.clone().into();
                    t.token
                }
            };
            Printed { json, table }
        }
        TokenCmd::List => {
            let ts = c
                .list_api_tokens(pb::ListApiTokensRequest {
                    tenant: cli.tenant.clone(),
                })
                .await
                .map_err(st)?
                .into_inner()
                .tokens;
            let rows = ts
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        t.role.clone(),
                        t.principal.clone(),
                        format_time(t.created_at),
                        expiry(t.expires_at),
                    ]
                })
                .collect::<Vec<_>>();
            Printed {
                table: table(&["ID", "ROLE", "PRINCIPAL", "CREATED", "EXPIRES"], &rows),
                json: Value::Array(ts.iter().map(token_json).collect()),
            }
        }
        TokenCmd::Revoke { id } => {
            c.revoke_api_token(pb::RevokeApiTokenRequest { id: id.clone() })
                .await
                .map_err(st)?;
            Printed {
                table: format!("token {id} revoked"),
                json: json!({"id": id, "revoked": true}),
            }
        }
    })
}

/// `--since`: an interval back from `now` (30m, 4h, 7d) or a Unix second.
pub fn since(s: &str, now: i64) -> anyhow::Result<i64> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map_err(|_| anyhow::anyhow!("--since {s}: too large"));
    }
    let secs = crate::schedule::parse_interval(s).map_err(|_| {
        anyhow::anyhow!("--since {s:?}: give an interval (30m, 4h, 7d) or a Unix second")
    })?;
    Ok(now - secs as i64)
}

fn entry_json(e: &pb::AuditEntry) -> Value {
    json!({
        "seq": e.seq, "at": e.at, "role": e.role, "principal": e.principal,
        "tenant": e.tenant, "method": e.method, "target": e.target,
        "outcome": e.outcome, "message": e.message,
    })
}

pub async fn audit(cli: &Cli, c: &mut Client, a: &AuditArgs) -> anyhow::Result<Printed> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let since = a.since.as_deref().map(|s| since(s, now)).transpose()?;
    let es = c
        .list_audit(pb::ListAuditRequest {
            tenant: cli.tenant.clone(),
            since: since.unwrap_or(0),
            limit: a.limit,
        })
        .await
        .map_err(st)?
        .into_inner()
        .entries;
    let json = Value::Array(es.iter().map(entry_json).collect());
    let table = if a.json {
        serde_json::to_string_pretty(&json)?
    } else {
        let rows = es
            .iter()
            .map(|e| {
                vec![
                    format_time(e.at),
                    format!("{} {}", e.role, e.principal),
                    if e.tenant.is_empty() {
                        "-".into()
                    } else {
                        e.tenant.clone()
                    },
                    e.method.clone(),
                    e.target.clone(),
                    if e.message.is_empty() {
                        e.outcome.clone()
                    } else {
                        format!("{}: {}", e.outcome, e.message)
                    },
                ]
            })
            .collect::<Vec<_>>();
        table(
            &["TIME", "WHO", "TENANT", "METHOD", "TARGET", "OUTCOME"],
            &rows,
        )
    };
    Ok(Printed { json, table })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Command, Limit};
    use clap::Parser;

    #[test]
    fn quota_flags_replace_only_what_they_name() {
        let cli = Cli::parse_from([
            "basalt",
            "tenant",
            "quota",
            "a",
            "--volumes",
            "5",
            "--gib",
            "none",
        ]);
        let Command::Tenant(TenantCmd::Quota { name, quota }) = cli.command else {
            panic!("not a quota command");
        };
        assert_eq!(name, "a");
        assert_eq!(quota.volumes, Some(Limit(Some(5))));
        assert_eq!(quota.gib, Some(Limit(None)));
        assert_eq!(quota.snapshot_gib, None);
        let cur = pb::TenantQuota {
            volumes: Some(1),
            gib: Some(100),
            snapshot_gib: Some(7),
        };
        let q = merge_quota(Some(cur), &quota);
        assert_eq!((q.volumes, q.gib, q.snapshot_gib), (Some(5), None, Some(7)));
        assert!(Cli::try_parse_from(["basalt", "tenant", "quota", "a", "--gib", "lots"]).is_err());
    }

    #[test]
    fn token_and_audit_grammar() {
        let cli = Cli::parse_from([
            "basalt",
            "token",
            "create",
            "--tenant",
            "a",
            "--ttl-secs",
            "60",
        ]);
        assert_eq!(cli.tenant, "a");
        assert!(matches!(
            cli.command,
            Command::Token(TokenCmd::Create {
                admin: false,
                ttl_secs: 60,
                ..
            })
        ));
        assert!(
            Cli::try_parse_from(["basalt", "token", "create", "--name", "ops"]).is_err(),
            "--name is for admin tokens"
        );
        assert!(matches!(
            Cli::parse_from(["basalt", "token", "revoke", "0123abcd"]).command,
            Command::Token(TokenCmd::Revoke { id }) if id == "0123abcd"
        ));
        let cli = Cli::parse_from(["basalt", "audit", "--since", "1h", "--limit", "5", "--json"]);
        assert!(matches!(
            cli.command,
            Command::Audit(AuditArgs {
                limit: 5,
                json: true,
                ..
            })
        ));
        assert_eq!(since("1h", 10_000).unwrap(), 10_000 - 3600);
        assert_eq!(since("1700000000", 0).unwrap(), 1_700_000_000);
        assert!(since("yesterday", 0).is_err());
    }
}
