//! Tenants and their quotas. A tenant owns volumes, snapshots and
//! destinations (their `tenant` field) and gets API tokens
//! (`api_tokens.rs`). A quota limits volumes, provisioned GiB and snapshot
//! GiB; it is checked, under the operations lock, by every call that adds
//! to them, and a refusal changes nothing (RESOURCE_EXHAUSTED).

use basalt_proto::control as pb;
use serde::{Deserialize, Serialize};

use crate::error::{ControlError, Result};
use crate::model::{now_unix, SnapshotState};
use crate::store::{get_json, list_json, put_json, Op, Table};
use crate::Control;

const GIB: u64 = 1 << 30;

/// Limits of a tenant; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaRecord {
    pub volumes: Option<u64>,
    pub gib: Option<u64>,
    pub snapshot_gib: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub name: String,
    pub created_at: i64,
    #[serde(default)]
    pub quota: QuotaRecord,
}

/// What a tenant holds, or what a call adds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub volumes: u64,
    pub volume_bytes: u64,
    pub snapshots: u64,
    pub snapshot_bytes: u64,
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / GIB as f64)
}

/// The first limit `add` on top of `used` would exceed, as the refusal's
/// message.
pub fn over_quota(tenant: &str, q: &QuotaRecord, used: &Usage, add: &Usage) -> Option<String> {
    let over = |limit: Option<u64>, used: u64, add: u64, scale: u64| {
        limit.filter(|l| add > 0 && used.saturating_add(add) > l.saturating_mul(scale))
    };
    let (what, flag, used_s, add_s, limit_s) =
        if let Some(l) = over(q.volumes, used.volumes, add.volumes, 1) {
            (
                "volumes",
                "--volumes",
                used.volumes.to_string(),
                add.volumes.to_string(),
                l.to_string(),
            )
        } else if let Some(l) = over(q.gib, used.volume_bytes, add.volume_bytes, GIB) {
            (
                "provisioned GiB",
                "--gib",
                gib(used.volume_bytes),
                gib(add.volume_bytes),
                format!("{l} GiB"),
            )
        } else if let Some(l) = over(q.snapshot_gib, used.snapshot_bytes, add.snapshot_bytes, GIB) {
            (
                "snapshot GiB",
                "--snapshot-gib",
                gib(used.snapshot_bytes),
                gib(add.snapshot_bytes),
                format!("{l} GiB"),
            )
        } else {
            return None;
        };
    Some(format!(
        "tenant {tenant:?} is over its {what} quota: {used_s} in use + {add_s} asked > limit \
         {limit_s}; free some, or an admin raises it (basalt tenant quota {tenant} {flag} N)"
    ))
}

fn quota_pb(q: &QuotaRecord) -> pb::TenantQuota {
    pb::TenantQuota {
        volumes: q.volumes,
        gib: q.gib,
        snapshot_gib: q.snapshot_gib,
    }
}

fn quota_of(q: Option<pb::TenantQuota>) -> QuotaRecord {
    let q = q.unwrap_or_default();
    QuotaRecord {
        volumes: q.volumes,
        gib: q.gib,
        snapshot_gib: q.snapshot_gib,
    }
}

fn not_found(name: &str) -> ControlError {
    ControlError::NotFound(format!(
        "tenant {name:?} does not exist (basalt tenant list; basalt tenant create {name})"
    ))
}

impl Control {
    pub(crate) fn tenant_record(&self, name: &str) -> Result<Option<TenantRecord>> {
        Ok(get_json(&*self.store, Table::Tenants, name)?)
    }

    /// What `tenant` holds now.
    pub(crate) fn usage(&self, tenant: &str) -> Result<Usage> {
        let mut u = Usage::default();
        for v in self.volumes()?.iter().filter(|v| v.tenant == tenant) {
            u.volumes += 1;
            u.volume_bytes += v.size_bytes.max(v.target_size);
        }
        for s in self
            .snapshots()?
            .iter()
            .filter(|s| s.tenant == tenant && s.state != SnapshotState::Failed)
        {
            u.snapshots += 1;
            u.snapshot_bytes += s.size_bytes;
        }
        Ok(u)
    }

    /// Refuses (RESOURCE_EXHAUSTED) when `add` would take `tenant` over its
    /// quota. Callers hold the operations lock, so the check and the change
    /// it admits are one step.
    pub(crate) fn check_quota(&self, tenant: &str, add: Usage) -> Result<()> {
        let Some(t) = self.tenant_record(tenant)? else {
            return Ok(());
        };
        if t.quota == QuotaRecord::default() {
            return Ok(());
        }
        match over_quota(tenant, &t.quota, &self.usage(tenant)?, &add) {
            Some(why) => Err(ControlError::Exhausted(why)),
            None => Ok(()),
        }
    }

    fn tenant_pb(&self, t: &TenantRecord, tokens: u32) -> Result<pb::Tenant> {
        let u = self.usage(&t.name)?;
        Ok(pb::Tenant {
            name: t.name.clone(),
            created_at: t.created_at,
            quota: Some(quota_pb(&t.quota)),
            usage: Some(pb::TenantUsage {
                volumes: u.volumes,
                volume_bytes: u.volume_bytes,
                snapshots: u.snapshots,
                snapshot_bytes: u.snapshot_bytes,
            }),
            tokens,
        })
    }

    pub async fn create_tenant(&self, r: pb::CreateTenantRequest) -> Result<pb::Tenant> {
        if !basalt_auth::valid_id(&r.name) {
            return Err(ControlError::Invalid(format!(
                "tenant name {:?}: use 1-63 lowercase letters, digits and '-', not starting or \
                 ending with '-' (it names the tenant's API tokens)",
                r.name
            )));
        }
        let _op = self.ops.lock().await;
        if self.tenant_record(&r.name)?.is_some() {
            return Err(ControlError::AlreadyExists(format!(
                "tenant {:?} already exists",
                r.name
            )));
        }
        let t = TenantRecord {
            name: r.name,
            created_at: now_unix(),
            quota: quota_of(r.quota),
        };
        self.store
            .apply(vec![put_json(Table::Tenants, t.name.clone(), &t)])?;
        tracing::info!(tenant = %t.name, quota = ?t.quota, "tenant created");
        self.tenant_pb(&t, 0)
    }

    pub fn list_tenants(&self) -> Result<pb::ListTenantsResponse> {
        let tokens = self.api_tokens()?;
        let mut all: Vec<TenantRecord> = list_json(&*self.store, Table::Tenants)?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        let tenants = all
            .iter()
            .map(|t| {
                let n = tokens
                    .iter()
                    .filter(|(_, k)| k.role == "tenant" && k.id == t.name)
                    .count();
                self.tenant_pb(t, n as u32)
            })
            .collect::<Result<_>>()?;
        Ok(pb::ListTenantsResponse { tenants })
    }

    pub async fn set_tenant_quota(&self, r: pb::SetTenantQuotaRequest) -> Result<pb::Tenant> {
        let _op = self.ops.lock().await;
        let mut t = self
            .tenant_record(&r.name)?
            .ok_or_else(|| not_found(&r.name))?;
        t.quota = quota_of(r.quota);
        self.store
            .apply(vec![put_json(Table::Tenants, t.name.clone(), &t)])?;
        tracing::info!(tenant = %t.name, quota = ?t.quota, "tenant quota set");
        let tokens = self
            .api_tokens()?
            .iter()
            .filter(|(_, k)| k.role == "tenant" && k.id == t.name)
            .count();
        self.tenant_pb(&t, tokens as u32)
    }

    /// Removes a tenant that owns nothing, and its API tokens.
    pub async fn delete_tenant(&self, r: pb::DeleteTenantRequest) -> Result<()> {
        let _op = self.ops.lock().await;
        let t = self
            .tenant_record(&r.name)?
            .ok_or_else(|| not_found(&r.name))?;
        let volumes = self
            .volumes()?
            .iter()
            .filter(|v| v.tenant == t.name)
            .count();
        let snapshots = self
            .snapshots()?
            .iter()
            .filter(|s| s.tenant == t.name)
            .count();
        let destinations = self
            .destination_records()?
            .iter()
            .filter(|d| d.tenant == t.name)
            .count();
        if volumes + snapshots + destinations > 0 {
            return Err(ControlError::Precondition(format!(
                "tenant {:?} still owns {volumes} volume(s), {snapshots} snapshot(s) and \
                 {destinations} destination(s); delete them first",
                t.name
            )));
        }
        let mut ops = vec![Op::Delete(Table::Tenants, t.name.clone())];
        for (hash, k) in self.api_tokens()? {
            if k.role == "tenant" && k.id == t.name {
                ops.push(Op::Delete(Table::Tokens, hash));
            }
        }
        let revoked = ops.len() - 1;
        self.store.apply(ops)?;
        tracing::info!(tenant = %t.name, tokens_revoked = revoked, "tenant deleted");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_name_the_limit_the_use_and_the_ask() {
        let q = QuotaRecord {
            volumes: Some(2),
            gib: Some(10),
            snapshot_gib: None,
        };
        let used = Usage {
            volumes: 2,
            volume_bytes: 4 * GIB,
            snapshots: 9,
            snapshot_bytes: 1000 * GIB,
        };
        let vol = |bytes| Usage {
            volumes: 1,
            volume_bytes: bytes,
            ..Default::default()
        };
        let why = over_quota("a", &q, &used, &vol(GIB)).unwrap();
        assert!(
            why.contains("volumes quota: 2 in use + 1 asked > limit 2"),
            "{why}"
        );
        assert!(why.contains("basalt tenant quota a --volumes"), "{why}");
        let one_less = Usage { volumes: 1, ..used };
        assert_eq!(over_quota("a", &q, &one_less, &vol(6 * GIB)), None);
        let why = over_quota("a", &q, &one_less, &vol(6 * GIB + 4096)).unwrap();
        assert!(
            why.contains("provisioned GiB quota: 4.00 GiB in use"),
            "{why}"
        );
        assert!(why.contains("limit 10 GiB"), "{why}");
        // A resize adds bytes only; snapshots are unlimited here.
        let grow = Usage {
            volume_bytes: 6 * GIB,
            ..Default::default()
        };
        assert_eq!(over_quota("a", &q, &used, &grow), None);
        let snap = Usage {
            snapshot_bytes: 1 << 40,
            ..Default::default()
        };
        assert_eq!(over_quota("a", &q, &used, &snap), None);
        let q = QuotaRecord {
            snapshot_gib: Some(1),
            ..Default::default()
        };
        let why = over_quota(
            "a",
            &q,
            &Usage::default(),
            &Usage {
                snapshot_bytes: 2 * GIB,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(
            why.contains("snapshot GiB quota: 0.00 GiB in use + 2.00 GiB asked > limit 1 GiB"),
            "{why}"
        );
        // A quota of 0 allows nothing more; asking nothing is never refused.
        let zero = QuotaRecord {
            volumes: Some(0),
            ..Default::default()
        };
        assert!(over_quota("a", &zero, &Usage::default(), &vol(GIB)).is_some());
        assert_eq!(over_quota("a", &zero, &used, &Usage::default()), None);
    }
}
