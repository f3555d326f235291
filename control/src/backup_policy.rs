//! Backup policies (where a volume's snapshots go: single, duplicate,
//! alternate, striped, and the archive rule) and the destination set of
//! each snapshot, as records, as the admin API's form, and opened.

use basalt_proto::control as pb;
use basalt_proto::storage_admin as spb;
use basalt_snapshot::set::{DestinationSet, Layout};
use basalt_snapshot::BLOCK_SIZE;

use crate::error::{ControlError, Result};
use crate::model::*;
use crate::Control;

/// Most destinations one policy may name.
pub const MAX_POLICY_DESTINATIONS: usize = 8;
/// Default stripe unit: 8 blocks (4 MiB).
const DEFAULT_STRIPE_BLOCKS: u64 = 8;

/// The destinations one snapshot goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSet {
    pub destinations: Vec<String>,
    /// single, duplicate or striped.
    pub layout: &'static str,
    pub stripe_blocks: u64,
}

fn member_pb(d: &DestinationRecord) -> spb::Destination {
    spb::Destination {
        name: d.name.clone(),
        url: d.url.clone(),
        endpoint: d.endpoint.clone(),
        region: d.region.clone(),
        allow_http: d.allow_http,
        access_key_id: d.access_key_id.clone(),
        secret_access_key: d.secret_access_key.clone(),
    }
}

impl Control {
    /// Checks a backup policy for a volume of `tenant`.
    pub(crate) fn check_policy(&self, tenant: &str, p: &pb::BackupPolicy) -> Result<BackupPolicy> {
        let layout = match p.layout.as_str() {
            "single" | "" => BackupLayout::Single,
            "duplicate" => BackupLayout::Duplicate,
            "alternate" => BackupLayout::Alternate,
            "striped" => BackupLayout::Striped,
            other => {
                return Err(ControlError::Invalid(format!(
                    "layout {other:?}: use single, duplicate, alternate or striped"
                )))
            }
        };
        let n = p.destinations.len();
        let ok = match layout {
            BackupLayout::Single => n == 1,
            _ => (2..=MAX_POLICY_DESTINATIONS).contains(&n),
        };
        if !ok {
            return Err(ControlError::Invalid(format!(
                "layout {} takes {}, got {n}",
                layout.as_str(),
                if layout == BackupLayout::Single {
                    "one destination".to_owned()
                } else {
                    format!("2 to {MAX_POLICY_DESTINATIONS} destinations")
                }
            )));
        }
        let mut names = p.destinations.clone();
        names.sort();
        names.dedup();
        if names.len() != n {
            return Err(ControlError::Invalid(
                "a destination is named twice in the policy".into(),
            ));
        }
        for name in &p.destinations {
            self.destination_for(tenant, name)?;
        }
        let stripe_blocks = match (layout, p.stripe_mib) {
            (BackupLayout::Striped, 0) => DEFAULT_STRIPE_BLOCKS,
            (BackupLayout::Striped, mib) if mib <= 1024 => u64::from(mib) * (1 << 20) / BLOCK_SIZE,
            (BackupLayout::Striped, mib) => {
                return Err(ControlError::Invalid(format!(
                    "stripe_mib {mib}: at most 1024"
                )))
            }
            (_, 0) => 0,
            (_, _) => {
                return Err(ControlError::Invalid(
                    "stripe_mib applies to the striped layout only".into(),
                ))
            }
        };
        match (p.archive_after_secs, p.archive_to.as_str()) {
            (0, "") => {}
            (0, _) | (_, "") => {
                return Err(ControlError::Invalid(
                    "archive_after_secs and archive_to go together".into(),
                ))
            }
            (_, to) => {
                if p.destinations.iter().any(|d| d == to) {
                    return Err(ControlError::Invalid(format!(
                        "archive destination {to:?} is one of the policy's destinations; pick another"
                    )));
                }
                self.destination_for(tenant, to)?;
            }
        }
        Ok(BackupPolicy {
            layout,
            destinations: p.destinations.clone(),
            stripe_blocks,
            archive_after_secs: p.archive_after_secs,
            archive_to: p.archive_to.clone(),
        })
    }

    pub async fn set_backup_policy(&self, r: pb::SetBackupPolicyRequest) -> Result<VolumeRecord> {
        let _op = self.ops.lock().await;
        let mut v = self.find(&r.volume.unwrap_or_default())?;
        let policy = match r.policy {
            Some(p) if !p.destinations.is_empty() => Some(self.check_policy(&v.tenant, &p)?),
            // No destinations: back to the default destination.
            _ => None,
        };
        v.backup = policy;
        self.save(&v)?;
        tracing::info!(volume = v.id, policy = ?v.backup, "backup policy set");
        Ok(v)
    }

    /// Where the next snapshot of `v` goes: `explicit` (one destination),
    /// else its policy (alternate: the destination after the one its last
    /// snapshot went to), else the default destination.
    pub(crate) fn next_snapshot_set(
        &self,
        v: &VolumeRecord,
        explicit: &str,
        snaps: &[SnapshotRecord],
    ) -> Result<SnapshotSet> {
        let single = |name: String| SnapshotSet {
            destinations: vec![name],
            layout: "single",
            stripe_blocks: 0,
        };
        let policy = match (&v.backup, explicit) {
            (Some(p), "") => p.clone(),
            _ => {
                let d = self.destination_for(&v.tenant, explicit)?;
                return Ok(single(d.name));
            }
        };
        for name in &policy.destinations {
            self.destination_for(&v.tenant, name)?;
        }
        Ok(match policy.layout {
            BackupLayout::Single => single(policy.destinations[0].clone()),
            BackupLayout::Duplicate => SnapshotSet {
                destinations: policy.destinations,
                layout: "duplicate",
                stripe_blocks: 0,
            },
            BackupLayout::Striped => SnapshotSet {
                destinations: policy.destinations,
                layout: "striped",
                stripe_blocks: policy.stripe_blocks.max(1),
            },
            BackupLayout::Alternate => {
                let last = snaps
                    .iter()
                    .filter(|s| s.volume_id == v.id && s.state != SnapshotState::Failed)
                    .max_by_key(|s| s.id)
                    .and_then(|s| policy.destinations.iter().position(|d| *d == s.destination));
                let next = last.map_or(0, |i| (i + 1) % policy.destinations.len());
                single(policy.destinations[next].clone())
            }
        })
    }

    /// The admin API's form of a snapshot's destinations (with their
    /// credentials, for the storage server that uploads or loads it).
    pub(crate) fn set_pb(
        &self,
        names: &[String],
        layout: &str,
        stripe_blocks: u64,
    ) -> Result<spb::DestinationSet> {
        let destinations = names
            .iter()
            .map(|n| self.destination_named(n).map(|d| member_pb(&d)))
            .collect::<Result<Vec<_>>>()?;
        let layout = match layout {
            "duplicate" => spb::SetLayout::Duplicate,
            "striped" => spb::SetLayout::Striped,
            _ => spb::SetLayout::Single,
        };
        Ok(spb::DestinationSet {
            destinations,
            layout: layout as i32,
            stripe_blocks,
            copies: Vec::new(),
        })
    }

    pub(crate) fn snapshot_set_pb(&self, s: &SnapshotRecord) -> Result<spb::DestinationSet> {
        let mut set = self.set_pb(&s.dests(), s.layout(), s.stripe_blocks)?;
        set.copies = s
            .copies
            .iter()
            .map(|n| self.destination_named(n).map(|d| member_pb(&d)))
            .collect::<Result<Vec<_>>>()?;
        Ok(set)
    }

    /// Opens the destinations of snapshot `s` as a set.
    pub(crate) fn open_set(&self, s: &SnapshotRecord) -> Result<DestinationSet> {
        let open = |names: &[String]| {
            names
                .iter()
                .map(|n| self.open_destination(n).map(std::sync::Arc::new))
                .collect::<Result<Vec<_>>>()
        };
        let (members, copies) = (open(&s.dests())?, open(&s.copies)?);
        let layout = Layout::parse(s.layout(), s.stripe_blocks)
            .map_err(|e| ControlError::Unavailable(format!("snapshot {}: {e}", s.id)))?;
        DestinationSet::new(members, layout)
            .and_then(|set| set.with_copies(copies))
            .map_err(|e| ControlError::Unavailable(format!("snapshot {}: {e}", s.id)))
    }
}
