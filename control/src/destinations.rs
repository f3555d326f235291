//! Named snapshot destinations: added by users (after an access check) or
//! by `--destination` flags (shared), checked, counted, removed. Where each
//! snapshot goes is in `backup_policy.rs`.

use basalt_proto::control as pb;
use basalt_snapshot::{Destination, DestinationSpec, StoreKind, URL_FORMS};

use crate::error::{ControlError, Result};
use crate::model::*;
use crate::store::{get_json, list_json, put_json, Op, Table};
use crate::volumes::{valid_name, DEFAULT_TENANT};
use crate::Control;

fn tenant_or_default(t: &str) -> String {
    if t.is_empty() {
        DEFAULT_TENANT.to_owned()
    } else {
        t.to_owned()
    }
}

pub fn destination_pb(d: &DestinationRecord, snapshots: u32) -> pb::Destination {
    pb::Destination {
        name: d.name.clone(),
        tenant: d.tenant.clone(),
        r#type: StoreKind::of_url(&d.url)
            .map_or("unknown", StoreKind::name)
            .into(),
        url: d.url.clone(),
        endpoint: d.endpoint.clone(),
        region: d.region.clone(),
        allow_http: d.allow_http,
        has_credentials: !d.access_key_id.is_empty(),
        health: match (d.health.checked_at, d.health.ok) {
            (0, _) => "UNCHECKED",
            (_, true) => "OK",
            (_, false) => "FAILING",
        }
        .into(),
        last_error: d.health.error.clone(),
        checked_at: d.health.checked_at,
        latency_micros: d.health.latency_micros,
        chunks: 0,
        bytes_stored: 0,
        snapshots,
        created_at: d.created_at,
    }
}

impl Control {
    /// Records the `--destination` flags' destinations (shared by every
    /// tenant); a flag's settings replace the stored ones.
    pub fn record_flag_destinations(&self) -> Result<()> {
        for spec in &self.config.destinations {
            let cur: Option<DestinationRecord> =
                get_json(&*self.store, Table::Destinations, &spec.name)?;
            if let Some(c) = &cur {
                if !c.tenant.is_empty() {
                    return Err(ControlError::Precondition(format!(
                        "--destination {}: tenant {:?} already has a destination of that name; pick another name",
                        spec.name, c.tenant
                    )));
                }
                if c.spec() == *spec {
                    continue;
                }
            }
            let mut d = DestinationRecord::from_spec(spec, "");
            if let Some(c) = cur {
                d.created_at = c.created_at;
            }
            self.store
                .apply(vec![put_json(Table::Destinations, d.name.clone(), &d)])?;
        }
        // Shared destinations whose flag is gone: dropped unless snapshots
        // are still kept there.
        let snaps = self.snapshots()?;
        for d in self.destination_records()? {
            if d.tenant.is_empty() && !self.config.destinations.iter().any(|f| f.name == d.name) {
                let using = count_using(&snaps, &d.name);
                if using == 0 {
                    self.store
                        .apply(vec![Op::Delete(Table::Destinations, d.name.clone())])?;
                    tracing::info!(destination = %d.name, "destination flag removed: destination dropped");
                } else {
                    tracing::warn!(destination = %d.name, snapshots = using, "destination flag removed, but snapshots are kept there: still usable for restores");
                }
            }
        }
        Ok(())
    }

    pub(crate) fn destination_records(&self) -> Result<Vec<DestinationRecord>> {
        Ok(list_json(&*self.store, Table::Destinations)?)
    }

    /// A destination by name, any tenant (for snapshots already made).
    pub(crate) fn destination_named(&self, name: &str) -> Result<DestinationRecord> {
        get_json(&*self.store, Table::Destinations, name)?.ok_or_else(|| {
            ControlError::NotFound(format!(
                "destination {name:?} does not exist (it was removed?)"
            ))
        })
    }

    /// A destination `tenant` may use: its own or a shared one; "" = the
    /// default (the first `--destination`).
    pub(crate) fn destination_for(&self, tenant: &str, name: &str) -> Result<DestinationRecord> {
        let name = if name.is_empty() {
            self.config
                .destinations
                .first()
                .map(|d| d.name.as_str())
                .unwrap_or("")
        } else {
            name
        };
        match get_json::<DestinationRecord>(&*self.store, Table::Destinations, name)? {
            Some(d) if d.tenant.is_empty() || d.tenant == tenant => Ok(d),
            _ => {
                let names: Vec<String> = self
                    .destination_records()?
                    .into_iter()
                    .filter(|d| d.tenant.is_empty() || d.tenant == tenant)
                    .map(|d| d.name)
                    .collect();
                Err(ControlError::Invalid(format!(
                    "no destination {name:?} for tenant {tenant:?}; available: {names:?} (basalt destination add)"
                )))
            }
        }
    }

    pub async fn add_destination(&self, r: pb::AddDestinationRequest) -> Result<DestinationRecord> {
        let tenant = tenant_or_default(&r.tenant);
        if !valid_name(&r.name) || !valid_name(&tenant) {
            return Err(ControlError::Invalid(
                "destination name and tenant must be 1-63 of [A-Za-z0-9._-]".into(),
            ));
        }
        let kind = StoreKind::of_url(&r.url)
            .ok_or_else(|| ControlError::Invalid(format!("url {:?}: use {URL_FORMS}", r.url)))?;
        let spec = DestinationSpec {
            name: r.name,
            url: r.url,
            endpoint: r.endpoint,
            region: r.region,
            allow_http: r.allow_http,
            access_key_id: r.access_key_id,
            secret_access_key: r.secret_access_key,
        };
        spec.check_options(kind).map_err(ControlError::Invalid)?;
        if get_json::<DestinationRecord>(&*self.store, Table::Destinations, &spec.name)?.is_some() {
            return Err(ControlError::AlreadyExists(format!(
                "destination {:?} already exists",
                spec.name
            )));
        }
        let dest = Destination::open(&spec).map_err(|e| ControlError::Invalid(e.to_string()))?;
        let latency = dest
            .check_access()
            .await
            .map_err(|e| ControlError::Precondition(format!("{e}; nothing was added")))?;
        let mut d = DestinationRecord::from_spec(&spec, &tenant);
        d.health = DestinationHealth {
            ok: true,
            error: String::new(),
            checked_at: now_unix(),
            latency_micros: latency.as_micros() as u64,
        };
        let _op = self.ops.lock().await;
        if get_json::<DestinationRecord>(&*self.store, Table::Destinations, &d.name)?.is_some() {
            return Err(ControlError::AlreadyExists(format!(
                "destination {:?} already exists",
                d.name
            )));
        }
        self.store
            .apply(vec![put_json(Table::Destinations, d.name.clone(), &d)])?;
        tracing::info!(destination = %d.name, tenant = %d.tenant, url = %d.url, "destination added");
        Ok(d)
    }

    pub fn list_destinations(&self, tenant: &str) -> Result<Vec<pb::Destination>> {
        let snaps = self.snapshots()?;
        Ok(self
            .destination_records()?
            .iter()
            .filter(|d| tenant.is_empty() || d.tenant.is_empty() || d.tenant == tenant)
            .map(|d| destination_pb(d, count_using(&snaps, &d.name)))
            .collect())
    }

    fn visible(&self, r: &pb::DestinationRef) -> Result<DestinationRecord> {
        let d = self.destination_named(&r.name)?;
        if !r.tenant.is_empty() && !d.tenant.is_empty() && d.tenant != r.tenant {
            return Err(ControlError::NotFound(format!(
                "destination {:?} does not exist in tenant {:?}",
                r.name, r.tenant
            )));
        }
        Ok(d)
    }

    /// Checks access now (recording the result) and counts what is stored.
    pub async fn describe_destination(&self, r: &pb::DestinationRef) -> Result<pb::Destination> {
        let d = self.visible(r)?;
        let d = self.check_destination(d).await?;
        let mut out = destination_pb(&d, count_using(&self.snapshots()?, &d.name));
        if d.health.ok {
            let dest = Destination::open(&d.spec())
                .map_err(|e| ControlError::Unavailable(e.to_string()))?;
            match dest.usage().await {
                Ok(u) => {
                    out.chunks = u.chunks;
                    out.bytes_stored = u.chunk_bytes;
                }
                Err(e) => out.last_error = e.to_string(),
            }
        }
        Ok(out)
    }

    /// One access check of `d`, recorded in its health.
    async fn check_destination(&self, mut d: DestinationRecord) -> Result<DestinationRecord> {
        let result = match Destination::open(&d.spec()) {
            Ok(dest) => dest.check_access().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        d.health = DestinationHealth {
            ok: result.is_ok(),
            error: result.as_ref().err().cloned().unwrap_or_default(),
            checked_at: now_unix(),
            latency_micros: result.map_or(0, |l| l.as_micros() as u64),
        };
        let _op = self.ops.lock().await;
        // Only the health changes; the rest is as stored now.
        if let Some(mut cur) =
            get_json::<DestinationRecord>(&*self.store, Table::Destinations, &d.name)?
        {
            cur.health = d.health.clone();
            self.store
                .apply(vec![put_json(Table::Destinations, cur.name.clone(), &cur)])?;
        }
        Ok(d)
    }

    /// Checks every destination whose last check is older than `every`.
    pub async fn check_destinations(&self, every: std::time::Duration) {
        let Ok(all) = self.destination_records() else {
            return;
        };
        for d in all {
            if now_unix() - d.health.checked_at < every.as_secs() as i64 {
                continue;
            }
            let name = d.name.clone();
            match self.check_destination(d).await {
                Ok(d) if !d.health.ok => {
                    tracing::warn!(destination = %name, "destination check failed: {}", d.health.error)
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(destination = %name, "destination check: {e}"),
            }
        }
    }

    pub async fn remove_destination(&self, r: &pb::DestinationRef) -> Result<()> {
        let _op = self.ops.lock().await;
        let d = self.visible(r)?;
        if d.tenant.is_empty() {
            return Err(ControlError::Precondition(format!(
                "destination {:?} is defined by basalt-control --destination: remove the flag instead",
                d.name
            )));
        }
        let using = count_using(&self.snapshots()?, &d.name);
        if using > 0 {
            return Err(ControlError::Precondition(format!(
                "{using} snapshot(s) are kept in destination {:?}; delete them first",
                d.name
            )));
        }
        if let Some(v) = self.volumes()?.iter().find(|v| {
            v.backup
                .as_ref()
                .is_some_and(|p| p.destinations.contains(&d.name))
        }) {
            return Err(ControlError::Precondition(format!(
                "volume {} ({}) backs up to destination {:?}; change its backup policy first",
                v.id, v.name, d.name
            )));
        }
        self.store
            .apply(vec![Op::Delete(Table::Destinations, d.name.clone())])?;
        tracing::info!(destination = %d.name, "destination removed");
        Ok(())
    }

    /// Opens one destination by name.
    pub(crate) fn open_destination(&self, name: &str) -> Result<Destination> {
        Destination::open(&self.destination_named(name)?.spec())
            .map_err(|e| ControlError::Unavailable(format!("destination {name}: {e}")))
    }
}

/// Snapshots (in any state) kept in destination `name`.
fn count_using(snaps: &[SnapshotRecord], name: &str) -> u32 {
    snaps
        .iter()
        .filter(|s| s.all_dests().iter().any(|d| d == name))
        .count() as u32
}
