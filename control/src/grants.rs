//! Attachment grants (see `basalt_auth::grant` and `proto/WIRE.md`): the
//! control service signs one for the node a volume is attached to, sends
//! it with the attachment and with every layout push, and renews it on its
//! own before it expires.

use basalt_auth::Grant;

use crate::error::{ControlError, Result};
use crate::model::{AttachState, AttachmentRecord, VolumeRecord};
use crate::Control;

impl Control {
    /// A grant for attachment `a` of `v`, valid for `--grant-validity-secs`;
    /// none for a node whose identity was revoked (its grants then lapse).
    pub(crate) fn sign_grant(&self, v: &VolumeRecord, a: &AttachmentRecord) -> Result<Vec<u8>> {
        let node = basalt_auth::Principal::new(basalt_auth::Role::Node, &a.node_id)
            .map_err(|e| ControlError::Invalid(e.to_string()))?;
        if crate::identity::is_revoked(&*self.store, &node) {
            return Err(ControlError::Denied(format!(
                "{node} was revoked: no attachment grant for volume {}",
                v.id
            )));
        }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use basalt_auth::testing::TestPki;
    use basalt_auth::{GrantVerifier, Role};
    use basalt_proto::control as pb;
    use clap::Parser;

    use super::*;
    use crate::identity::Identity;
    use crate::store::RedbStore;

    #[test]
    fn grants_verify_and_stop_for_a_revoked_node() {
        let dir = tempfile::tempdir().unwrap();
        let args = crate::Args::parse_from([
            "basalt-control",
            "--state-dir",
            dir.path().to_str().unwrap(),
            "--grant-validity-secs",
            "600",
        ]);
        let config = crate::Config::try_from(args).unwrap();
        let store = RedbStore::open(&dir.path().join("control.redb")).unwrap();
        let TestPki { ca } = TestPki::new();
        let ca_pem = ca.cert_pem().to_owned();
        let issued = ca
            .issue_new(
                &basalt_auth::Principal::control(),
                std::time::Duration::from_secs(600),
            )
            .unwrap();
        let creds =
            basalt_auth::Credentials::new(ca_pem.clone(), issued.cert_pem, issued.key_pem).unwrap();
        let c = Control::new(config, Arc::new(store)).with_identity(Identity { ca, creds });
        let v: VolumeRecord = serde_json::from_value(serde_json::json!({
            "id": 7, "name": "v", "tenant": "default", "size_bytes": 1 << 30,
            "state": "AVAILABLE", "copies": [{"server_id": "s1"}], "epoch": 3,
            "attachment": null, "created_at": 0,
        }))
        .unwrap();
        let a: AttachmentRecord = serde_json::from_value(serde_json::json!({
            "node_id": "hv1", "read_only": true, "state": "ATTACHED", "generation": 5,
        }))
        .unwrap();
        let g = c.sign_grant(&v, &a).unwrap();
        let got = GrantVerifier::new(&ca_pem)
            .unwrap()
            .verify(&g, basalt_auth::grant::now_unix())
            .unwrap();
        assert_eq!(
            (got.volume_id, got.attachment, got.node.as_str()),
            (7, 5, "hv1")
        );
        assert!(got.read_only);
        let left = got.expires_unix - basalt_auth::grant::now_unix();
        assert!((590..=600).contains(&left), "{left}");
        c.revoke_identity(pb::RevokeIdentityRequest {
            role: Role::Node.to_string(),
            id: "hv1".into(),
        })
        .unwrap();
        assert!(matches!(c.sign_grant(&v, &a), Err(ControlError::Denied(_))));
    }
}
