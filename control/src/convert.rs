//! Records → API messages.

use basalt_proto::control as pb;

use crate::model::{AttachState, VolumeRecord, VolumeState};
use crate::Control;

impl Control {
    pub fn volume_pb(&self, v: &VolumeRecord) -> pb::Volume {
        let copy_ref = |id: &str| pb::CopyRef {
            server_id: id.to_owned(),
            address: self
                .registry
                .server(&*self.store, id)
                .map(|s| s.data_address)
                .unwrap_or_default(),
        };
        let state = match (v.state, v.attachment.as_ref().map(|a| a.state)) {
            (VolumeState::Creating, _) => "CREATING",
            (VolumeState::Deleting, _) => "DELETING",
            (VolumeState::Resizing, _) => "RESIZING",
            (VolumeState::Available, Some(AttachState::Attaching)) => "ATTACHING",
            (VolumeState::Available, Some(AttachState::Detaching)) => "DETACHING",
            (VolumeState::Available, Some(AttachState::Attached)) => "ATTACHED",
            (VolumeState::Available, None) => "AVAILABLE",
        };
        pb::Volume {
            id: v.id,
            name: v.name.clone(),
            tenant: v.tenant.clone(),
            size_bytes: v.size_bytes,
            state: state.into(),
            primary: v.copies.first().map(|c| copy_ref(&c.server_id)),
            mirrors: v
                .copies
                .iter()
                .skip(1)
                .map(|c| copy_ref(&c.server_id))
                .collect(),
            epoch: v.epoch,
            attachment: v.attachment.as_ref().map(|a| pb::Attachment {
                node_id: a.node_id.clone(),
                read_only: a.read_only,
                state: format!("{:?}", a.state).to_uppercase(),
                socket_path: a.socket_path.clone(),
                qemu_args: a.qemu_args.clone(),
                cloud_hypervisor_args: a.cloud_hypervisor_args.clone(),
                generation: a.generation,
            }),
            copies: v.copies.len() as u32,
            created_at: v.created_at,
            source_snapshot_id: v.source.as_ref().map_or(0, |s| s.snapshot_id),
            hydration: v.source.as_ref().map(|s| pb::Hydration {
                snapshot_id: s.snapshot_id,
                blocks_total: s.blocks_total,
                blocks_present: s.blocks_present,
                bytes_fetched: s.bytes_fetched,
                complete: s.hydrated,
                error: s.error.clone(),
                sources: s
                    .reads
                    .iter()
                    .map(|r| pb::DestinationReads {
                        destination: r.destination.clone(),
                        latency_micros: r.latency_micros,
                        reads: r.reads,
                        errors: r.errors,
                        corrupt: r.corrupt,
                        repaired: r.repaired,
                        served: r.served,
                    })
                    .collect(),
                fallbacks: s.fallbacks,
                hedges: s.hedges,
            }),
            schedule: v.schedule.as_ref().map(crate::schedules::schedule_pb),
            backup_policy: v.backup.as_ref().map(|p| pb::BackupPolicy {
                layout: p.layout.as_str().into(),
                destinations: p.destinations.clone(),
                stripe_mib: ((p.stripe_blocks * basalt_snapshot::BLOCK_SIZE) >> 20) as u32,
                archive_after_secs: p.archive_after_secs,
                archive_to: p.archive_to.clone(),
            }),
        }
    }
}
