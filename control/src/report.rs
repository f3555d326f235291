//! Failure reports from the data path (`ReportUnreachable`).
//!
//! - A backend cannot reach its primary (connection refused or lost, or no
//!   answer within its request timeout): the control service probes the
//!   primary itself (`--probe-timeout-ms`). If it does not answer either, the
//!   volume fails over at once (a mirror is promoted, epoch+1, persisted and
//!   pushed) and the answer carries the new layout; otherwise nothing changes
//!   and the answer says REACHABLE (heartbeats still decide).
//! - A primary cannot reach one of its in-sync mirrors: the mirror leaves
//!   the in-sync set before the answer, so the primary can acknowledge the
//!   held writes. No probe: keeping the mirror would block every write, and
//!   dropping it loses no data (it may rejoin by delta resync).
//! - An empty address only asks for the current layout (a backend refused
//!   with StaleEpoch or WrongRole).
//!
//! A report about an older epoch gets the current layout (ALREADY_CHANGED):
//! someone already acted.

use std::time::Duration;

use basalt_auth::{Principal, Role};
use basalt_proto::control as pb;
use basalt_proto::storage_admin as spb;

use crate::error::{ControlError, Result};
use crate::model::{key, ServerRecord, VolumeRecord, VolumeState};
use crate::store::{get_json, Table};
use crate::Control;

impl Control {
    /// `caller` is the authenticated reporter: a storage server reports
    /// under its own id only; a node manager's backend is known by its node,
    /// never by a server id (so it cannot pose as a primary reporting its
    /// mirrors), and only for a volume attached to that node.
    pub(crate) async fn report_unreachable(
        &self,
        caller: &Principal,
        mut r: pb::ReportUnreachableRequest,
    ) -> Result<pb::ReportUnreachableResponse> {
        match caller.role {
            Role::Storage if r.reporter != caller.id => {
                return Err(ControlError::Denied(format!(
                    "{caller} may not report as {:?}",
                    r.reporter
                )))
            }
            Role::Storage | Role::Control => {}
            Role::Node => r.reporter = format!("node:{}", caller.id),
            _ => return Err(ControlError::Denied(format!("{caller} may not report"))),
        }
        if r.volume_id == 0 {
            return Err(ControlError::Invalid("volume_id is required".into()));
        }
        if r.data_address.len() > 255 || r.reporter.len() > 255 {
            return Err(ControlError::Invalid(
                "data_address and reporter must be at most 255 bytes".into(),
            ));
        }
        let _op = self.ops.lock().await;
        let v: VolumeRecord = get_json(&*self.store, Table::Volumes, &key(r.volume_id))?
            .ok_or_else(|| {
                ControlError::NotFound(format!("volume {} does not exist", r.volume_id))
            })?;
        // One writer per volume: a backend of a superseded attachment gets
        // no layout, only the order to stop.
        if r.attachment != 0 && v.attachment.as_ref().map(|a| a.generation) != Some(r.attachment) {
            tracing::warn!(volume = v.id, reporter = %r.reporter, attachment = r.attachment, current = v.attach_gen, "report from a backend of a superseded attachment: fenced");
            return Ok(pb::ReportUnreachableResponse {
                outcome: pb::ReportOutcome::Fenced as i32,
                ..Default::default()
            });
        }
        if caller.role == Role::Node
            && v.attachment.as_ref().map(|a| a.node_id.as_str()) != Some(caller.id.as_str())
        {
            return Err(ControlError::Denied(format!(
                "volume {} is not attached to {caller}",
                v.id
            )));
        }
        if r.epoch > v.epoch {
            return Err(ControlError::Invalid(format!(
                "epoch {} is newer than volume {}'s epoch {}: only the control service issues epochs",
                r.epoch, v.id, v.epoch
            )));
        }
        if r.epoch < v.epoch {
            return self.answer(&v, pb::ReportOutcome::AlreadyChanged);
        }
        if r.data_address.is_empty() {
            return self.answer(&v, pb::ReportOutcome::Current);
        }
        let servers = self.registry.servers(&*self.store)?;
        let Some(pos) = v.copies.iter().position(|c| {
            servers
                .iter()
                .any(|s| s.server_id == c.server_id && s.data_address == r.data_address)
        }) else {
            // Not (or no longer) a server of this layout.
            return self.answer(&v, pb::ReportOutcome::Current);
        };
        if !matches!(v.state, VolumeState::Available | VolumeState::Resizing) {
            return Err(ControlError::Unavailable(format!(
                "volume {} is {:?}; failover waits for that to finish, retry",
                v.id, v.state
            )));
        }
        let server = v.copies[pos].server_id.clone();
        if pos == 0 && r.attachment == 0 {
            // Only the attached backend talks to the primary.
            return self.answer(&v, pb::ReportOutcome::Current);
        }
        if pos == 0 {
            let s = self.registry.server(&*self.store, &server)?;
            if let Err(why) = self.probe(&s).await {
                tracing::warn!(volume = v.id, %server, reporter = %r.reporter, "primary reported unreachable and does not answer the control service either ({why}): failing over");
                let v = self.fail_over(v, &[server], "reported unreachable").await?;
                return self.answer(&v, pb::ReportOutcome::FailedOver);
            }
            tracing::info!(volume = v.id, %server, reporter = %r.reporter, "primary reported unreachable but answers the control service: no failover");
            return self.answer(&v, pb::ReportOutcome::Reachable);
        }
        if r.reporter != v.primary() {
            // Only the primary replicates to mirrors; anyone else's view of
            // a mirror does not matter.
            return self.answer(&v, pb::ReportOutcome::Current);
        }
        tracing::warn!(volume = v.id, mirror = %server, reporter = %r.reporter, "primary cannot reach a mirror: removing it from the in-sync set");
        let v = self
            .fail_over(v, &[server], "mirror unreachable from the primary")
            .await?;
        self.answer(&v, pb::ReportOutcome::MirrorRemoved)
    }

    /// Whether a storage server answers its admin API within the probe
    /// timeout, as the server it claims to be.
    async fn probe(&self, s: &ServerRecord) -> std::result::Result<(), String> {
        let t: Duration = self.config.probe_timeout;
        let peer = basalt_auth::Principal::new(basalt_auth::Role::Storage, &s.server_id)
            .map_err(|e| e.to_string())?;
        let ep = self
            .clients
            .endpoint(&peer, &s.admin_address)
            .map_err(|e| e.to_string())?
            .connect_timeout(t)
            .timeout(t);
        let call = async {
            let ch = ep.connect().await.map_err(|e| e.to_string())?;
            let mut cl = spb::storage_admin_client::StorageAdminClient::new(ch);
            cl.server_info(spb::ServerInfoRequest {})
                .await
                .map(|r| r.into_inner())
                .map_err(|e| e.message().to_owned())
        };
        match tokio::time::timeout(t, call).await {
            Err(_) => Err(format!("no answer within {t:?}")),
            Ok(Err(e)) => Err(e),
            Ok(Ok(info)) if info.server_id != s.server_id => Err(format!(
                "{} answers as {:?}",
                s.admin_address, info.server_id
            )),
            Ok(Ok(_)) => Ok(()),
        }
    }

    fn answer(
        &self,
        v: &VolumeRecord,
        outcome: pb::ReportOutcome,
    ) -> Result<pb::ReportUnreachableResponse> {
        let addr = |id: &str| {
            self.registry
                .server(&*self.store, id)
                .map(|s| s.data_address)
        };
        Ok(pb::ReportUnreachableResponse {
            outcome: outcome as i32,
            epoch: v.epoch,
            primary_address: addr(v.primary())?,
            mirror_addresses: v
                .copies
                .iter()
                .skip(1)
                .map(|c| addr(&c.server_id))
                .collect::<Result<_>>()?,
        })
    }
}
