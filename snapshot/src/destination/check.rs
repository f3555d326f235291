//! Proving access to a destination before it is used, and counting what it
//! stores.

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::{ObjectStore, PutPayload};

use super::Destination;

/// Why a destination cannot be used, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("destination {name:?}: {step} a test object failed: {problem}")]
pub struct AccessError {
    pub name: String,
    pub step: &'static str,
    pub problem: String,
}

/// What a destination stores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub chunks: u64,
    /// Stored (compressed) bytes of the chunks.
    pub chunk_bytes: u64,
    pub manifests: u64,
}

/// Names the likely cause of an object-store error.
fn explain(e: &object_store::Error) -> String {
    use object_store::Error as E;
    let text = e.to_string();
    let hint = match e {
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
            "the credentials are wrong or lack permission for this bucket and prefix"
        }
        E::NotFound { .. } => "the bucket, container or directory does not exist",
        _ if text.contains("NoSuchBucket") => "the bucket does not exist",
        _ if text.contains("ContainerNotFound") => "the container does not exist",
        _ if text.contains("InvalidAccessKeyId")
            || text.contains("SignatureDoesNotMatch")
            || text.contains("AccessDenied")
            || text.contains("AuthenticationFailed")
            || text.contains("AuthorizationFailure") =>
        {
            "the credentials are wrong or lack permission for this bucket and prefix"
        }
        _ if text.contains("error sending request")
            || text.contains("connect")
            || text.contains("timed out")
            || text.contains("dns") =>
        {
            "the endpoint cannot be reached: check its address and the network"
        }
        E::Generic { .. } if text.contains("Permission denied") => {
            "the directory is not writable by the control service or storage server"
        }
        _ => "",
    };
    if hint.is_empty() {
        text
    } else {
        format!("{hint} ({text})")
    }
}

impl Destination {
    /// Writes a test object, reads it back and deletes it; returns how long
    /// the three took. Run before a destination is used: a destination that
    /// cannot be written is refused up front, with the reason.
    pub async fn check_access(&self) -> Result<Duration, AccessError> {
        let err = |step: &'static str, e: &object_store::Error| AccessError {
            name: self.name.clone(),
            step,
            problem: explain(e),
        };
        let token = format!(
            "{:x}-{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let key = self.keys.probe(&token);
        let body = format!("basalt access check {token}\n").into_bytes();
        let started = Instant::now();
        self.store
            .put(&key, PutPayload::from(body.clone()))
            .await
            .map_err(|e| err("writing", &e))?;
        let back = async { self.store.get(&key).await?.bytes().await }
            .await
            .map_err(|e| err("reading back", &e))?;
        if back.as_ref() != body.as_slice() {
            return Err(AccessError {
                name: self.name.clone(),
                step: "reading back",
                problem: "the object read back differs from the one written".into(),
            });
        }
        self.store
            .delete(&key)
            .await
            .map_err(|e| err("deleting", &e))?;
        Ok(started.elapsed())
    }

    /// Counts the stored chunks (and their bytes) and manifests by listing.
    pub async fn usage(&self) -> Result<Usage, AccessError> {
        let list = |dir: object_store::path::Path| {
            let store = self.store.clone();
            async move { store.list(Some(&dir)).try_collect::<Vec<_>>().await }
        };
        let chunks = list(self.keys.chunks_dir())
            .await
            .map_err(|e| AccessError {
                name: self.name.clone(),
                step: "listing chunks instead of",
                problem: explain(&e),
            })?;
        let manifests = self.list_manifests().await.map_err(|e| AccessError {
            name: self.name.clone(),
            step: "listing manifests instead of",
            problem: e.to_string(),
        })?;
        let mut u = Usage {
            manifests: manifests.len() as u64,
            ..Usage::default()
        };
        for meta in chunks
            .iter()
            .filter(|m| self.keys.parse_chunk(&m.location).is_some())
        {
            u.chunks += 1;
            u.chunk_bytes += meta.size;
        }
        Ok(u)
    }
}

#[cfg(test)]
mod tests {
    use super::explain;

    #[test]
    fn errors_name_their_likely_cause() {
        let source: Box<dyn std::error::Error + Send + Sync> = "x".into();
        let e = object_store::Error::NotFound {
            path: "b/probe/1".into(),
            source,
        };
        assert!(explain(&e).starts_with("the bucket, container or directory does not exist"));
        let e = object_store::Error::Generic {
            store: "S3",
            source: "Client error with status 404 Not Found: <Code>NoSuchBucket</Code>".into(),
        };
        assert!(explain(&e).starts_with("the bucket does not exist"));
        let e = object_store::Error::Generic {
            store: "S3",
            source: "<Code>SignatureDoesNotMatch</Code>".into(),
        };
        assert!(explain(&e).starts_with("the credentials are wrong"));
        let e = object_store::Error::Generic {
            store: "S3",
            source: "error sending request for url".into(),
        };
        assert!(explain(&e).starts_with("the endpoint cannot be reached"));
        let e = object_store::Error::NotImplemented;
        assert_eq!(explain(&e), e.to_string(), "no hint for the rest");
    }
}
