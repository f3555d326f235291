//! Errors mapped to wire statuses and gRPC codes, in one place.

use basalt_proto::wire::Status;

use crate::copy::CopyError;
use crate::store::StoreError;

pub fn wire_status(e: &CopyError) -> Status {
    match e {
        CopyError::OutOfRange { .. } => Status::OutOfRange,
        CopyError::StaleEpoch { .. } => Status::StaleEpoch,
        CopyError::EpochAhead { .. } | CopyError::AttachmentAhead { .. } => Status::LayoutPending,
        CopyError::Fenced { .. } => Status::Fenced,
        CopyError::Io(_) => Status::IoError,
        CopyError::Shrink { .. } | CopyError::Jump { .. } => Status::InvalidRequest,
    }
}

pub fn grpc_status(e: StoreError) -> tonic::Status {
    let msg = e.to_string();
    match e {
        StoreError::NotFound(_) => tonic::Status::not_found(msg),
        StoreError::AlreadyExists(_) => tonic::Status::already_exists(msg),
        StoreError::Invalid(_) => tonic::Status::invalid_argument(msg),
        StoreError::Copy(
            CopyError::StaleEpoch { .. }
            | CopyError::Fenced { .. }
            | CopyError::EpochAhead { .. }
            | CopyError::AttachmentAhead { .. },
        ) => tonic::Status::failed_precondition(msg),
        StoreError::Copy(CopyError::Jump { .. }) => tonic::Status::invalid_argument(msg),
        StoreError::Copy(CopyError::OutOfRange { .. }) => tonic::Status::invalid_argument(msg),
        StoreError::Copy(CopyError::Shrink { .. }) => tonic::Status::failed_precondition(msg),
        StoreError::Copy(CopyError::Io(_)) | StoreError::Io(_) => tonic::Status::internal(msg),
    }
}
