//! Resumes operations that a crash (or an unreachable peer) interrupted:
//! every transitional state is driven to its end, by the same idempotent
//! steps the API uses. Runs at start and then periodically.

use crate::model::{AttachState, VolumeState};
use crate::Control;

impl Control {
    /// One pass over all volumes. Returns how many needed work.
    pub async fn reconcile_once(&self) -> usize {
        let _op = self.ops.lock().await;
        let vols = match self.volumes() {
            Ok(v) => v,
            Err(e) => {
                tracing::error!("reconcile: cannot read volumes: {e}");
                return 0;
            }
        };
        let mut n = 0;
        for v in vols {
            let id = v.id;
            let r = match (v.state, v.attachment.as_ref().map(|a| a.state)) {
                (VolumeState::Creating, _) => self.finish_create(v).await.map(|_| ()),
                (VolumeState::Deleting, _) => self.finish_delete(v).await,
                (VolumeState::Resizing, _) => self.finish_resize(v).await.map(|_| ()),
                (_, Some(AttachState::Attaching)) => self.finish_attach(v).await.map(|_| ()),
                (_, Some(AttachState::Detaching)) => self.finish_detach(v).await.map(|_| ()),
                _ => continue,
            };
            n += 1;
            match r {
                Ok(()) => tracing::info!(volume = id, "reconcile: resumed operation finished"),
                Err(e) => tracing::warn!(volume = id, "reconcile: will retry: {e}"),
            }
        }
        n + self.handle_failures().await + self.advance_drains().await
    }
}
