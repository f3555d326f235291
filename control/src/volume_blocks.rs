//! Block access to a volume no backend writes to (detached, or attached
//! read-only): WriteVolumeBlock and ReadVolumeBlock, served by the
//! volume's primary through the admin API. The operation lock is held
//! across the call, so no attach can start meanwhile.

use basalt_proto::control as pb;
use basalt_proto::storage_admin as spb;
use basalt_snapshot::BLOCK_SIZE;
use sha2::{Digest, Sha256};

use crate::blocks::{block_len, hex, sha32};
use crate::clients::peer_error;
use crate::error::{ControlError, Result};
use crate::model::*;
use crate::Control;

impl Control {
    /// The volume and its block's (offset, length), checked.
    fn block_of(&self, v: &VolumeRecord, index: u64) -> Result<(u64, usize)> {
        if v.state != VolumeState::Available {
            return Err(ControlError::Precondition(format!(
                "volume {} is {:?}; use its blocks once it is available",
                v.id, v.state
            )));
        }
        if v.attachment.as_ref().is_some_and(|a| !a.read_only) {
            return Err(ControlError::Precondition(format!(
                "volume {} is attached read-write; detach it (or attach it read-only) to use its blocks",
                v.id
            )));
        }
        let blocks = v.size_bytes.div_ceil(BLOCK_SIZE);
        if index >= blocks {
            return Err(ControlError::Invalid(format!(
                "block index {index} is out of range: volume {} has blocks 0..{blocks}",
                v.id
            )));
        }
        Ok((index * BLOCK_SIZE, block_len(v.size_bytes, index)))
    }

    pub async fn write_volume_block(
        &self,
        r: pb::WriteVolumeBlockRequest,
    ) -> Result<pb::WriteVolumeBlockResponse> {
        let want = sha32(&r.sha256, "sha256")?;
        let _op = self.ops.lock().await;
        let v = self.find(&r.volume.unwrap_or_default())?;
        let (offset, len) = self.block_of(&v, r.block_index)?;
        if r.data.len() != len {
            return Err(ControlError::Invalid(format!(
                "block {} must hold exactly {len} bytes, got {}",
                r.block_index,
                r.data.len()
            )));
        }
        let got: [u8; 32] = Sha256::digest(&r.data).into();
        if got != want {
            return Err(ControlError::Invalid(format!(
                "block {}: the SHA-256 of the data is {}, the request says {}; nothing was written",
                r.block_index,
                hex(&got),
                hex(&want)
            )));
        }
        let server = self.registry.server(&*self.store, v.primary())?;
        let mut cl = self
            .clients
            .storage(&server.server_id, &server.admin_address)
            .await?;
        cl.write_block(spb::WriteBlockRequest {
            volume_id: v.id,
            epoch: v.epoch,
            offset,
            data: r.data,
        })
        .await
        .map_err(|e| peer_error(&server.server_id, e))?;
        Ok(pb::WriteVolumeBlockResponse {
            sha256: got.to_vec(),
        })
    }

    pub async fn read_volume_block(
        &self,
        r: pb::ReadVolumeBlockRequest,
    ) -> Result<pb::ReadVolumeBlockResponse> {
        let _op = self.ops.lock().await;
        let v = self.find(&r.volume.unwrap_or_default())?;
        let (offset, len) = self.block_of(&v, r.block_index)?;
        let server = self.registry.server(&*self.store, v.primary())?;
        let mut cl = self
            .clients
            .storage(&server.server_id, &server.admin_address)
            .await?;
        let data = cl
            .read_block(spb::ReadBlockRequest {
                volume_id: v.id,
                offset,
                length: len as u32,
            })
            .await
            .map_err(|e| peer_error(&server.server_id, e))?
            .into_inner()
            .data;
        Ok(pb::ReadVolumeBlockResponse {
            sha256: Sha256::digest(&data).to_vec(),
            data,
        })
    }
}
