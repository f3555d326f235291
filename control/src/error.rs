//! Errors of the control service, mapped to gRPC codes in one place.

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Exhausted(String),
    #[error("{0}")]
    Unavailable(String),
    /// The caller is authenticated but may not do this.
    #[error("{0}")]
    Denied(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ControlError> for tonic::Status {
    fn from(e: ControlError) -> tonic::Status {
        let msg = e.to_string();
        match e {
            ControlError::Invalid(_) => tonic::Status::invalid_argument(msg),
            ControlError::NotFound(_) => tonic::Status::not_found(msg),
            ControlError::AlreadyExists(_) => tonic::Status::already_exists(msg),
            ControlError::Precondition(_) => tonic::Status::failed_precondition(msg),
            ControlError::Exhausted(_) => tonic::Status::resource_exhausted(msg),
            ControlError::Unavailable(_) => tonic::Status::unavailable(msg),
            ControlError::Denied(_) => tonic::Status::permission_denied(msg),
            ControlError::Store(_) => tonic::Status::internal(msg),
        }
    }
}

pub type Result<T> = std::result::Result<T, ControlError>;
