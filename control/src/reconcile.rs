//! Resumes operations that a crash (or an unreachable peer) interrupted:
//! every transitional state is driven to its end, by the same idempotent
//! steps the API uses. Runs at start and then periodically.

use crate::model::{key, AttachState, VolumeRecord, VolumeState};
use crate::store::{get_json, Table};
use crate::Control;

impl Control {
    /// One pass over all volumes, one volume at a time: the operations lock
    /// is taken per volume, so a data-path failure report waits for at most
    /// one step. Returns how many volumes needed work.
    pub async fn reconcile_once(&self) -> usize {
        let ids = match self.volumes() {
            Ok(v) => v.into_iter().map(|v| v.id).collect::<Vec<_>>(),
            Err(e) => {
                tracing::error!("reconcile: cannot read volumes: {e}");
                return 0;
            }
        };
        let draining = self.draining().unwrap_or_default();
        let mut n = 0;
        for id in ids {
            let _op = self.ops.lock().await;
            let Ok(Some(v)) = get_json::<VolumeRecord>(&*self.store, Table::Volumes, &key(id))
            else {
                continue;
            };
            let Some(r) = self.reconcile_volume(v, &draining).await else {
                continue;
            };
            n += 1;
            match r {
                Ok(()) => tracing::debug!(volume = id, "reconcile: step done"),
                Err(e) => tracing::warn!(volume = id, "reconcile: will retry: {e}"),
            }
        }
        n
    }

    async fn reconcile_volume(
        &self,
        v: VolumeRecord,
        draining: &[String],
    ) -> Option<crate::error::Result<()>> {
        let id = v.id;
        let r = match (v.state, v.attachment.as_ref().map(|a| a.state)) {
            (VolumeState::Creating, _) => self.finish_create(v).await.map(|_| ()),
            (VolumeState::Deleting, _) => self.finish_delete(v).await,
            (VolumeState::Resizing, _) => self.finish_resize(v).await.map(|_| ()),
            (_, Some(AttachState::Attaching)) => self.finish_attach(v).await.map(|_| ()),
            (_, Some(AttachState::Detaching)) => self.finish_detach(v).await.map(|_| ()),
            _ => {
                if let Some(r) = self.handle_failure(v.clone()).await {
                    return Some(r);
                }
                return self.advance_drain(v, draining).await;
            }
        };
        if r.is_ok() {
            tracing::info!(volume = id, "reconcile: resumed operation finished");
        }
        Some(r)
    }
}
