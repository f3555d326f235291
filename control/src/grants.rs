//! Attachment grants (see `basalt_auth::grant` and `proto/WIRE.md`): the
//! control service signs one for the node a volume is attached to, sends
//! it with the attachment and with every layout push, and renews it on its
//! own before it expires.

use basalt_auth::Grant;

use crate::error::{ControlError, Result};
use crate::model::{AttachState, AttachmentRecord, VolumeRecord};
use crate::Control;

impl Control {
    /// A grant for attachment `a` of `v`, valid for `--grant-validity-secs`.
    pub(crate) fn sign_grant(&self, v: &VolumeRecord, a: &AttachmentRecord) -> Result<Vec<u8>> {
        let g = Grant {
            volume_id: v.id,
            attachment: a.generation,
            node: a.node_id.clone(),
            read_only: a.read_only,
            expires_unix: basalt_auth::grant::now_unix() + self.config.grant_validity.as_secs(),
        };
        self.identity()?
            .ca
            .sign_grant(&g)
            .map_err(|e| ControlError::Unavailable(format!("cannot sign an attachment grant: {e}")))
    }

    /// Sends every attached backend a fresh grant (with its current
    /// layout). Run every quarter of the grants' validity, so a grant is
    /// replaced long before it expires even if some pushes fail.
    pub(crate) async fn renew_grants(&self) {
        let Ok(volumes) = self.volumes() else {
            return;
        };
        for v in volumes {
            let attached = v
                .attachment
                .as_ref()
                .is_some_and(|a| a.state == AttachState::Attached);
            if !attached {
                continue;
            }
            if let Err(e) = self.repoint_backend(&v).await {
                tracing::warn!(volume = v.id, "cannot renew the attachment grant: {e}");
            }
        }
    }
}
