//! Building the `object_store` client for a [`DestinationSpec`].

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::ObjectStore;

use super::{DestinationError, DestinationSpec};

const DEFAULT_REGION: &str = "us-east-1";

/// The store and the key prefix inside it.
pub(super) fn open_store(
    spec: &DestinationSpec,
) -> Result<(Arc<dyn ObjectStore>, String), DestinationError> {
    let err = |reason: String| DestinationError::Open {
        name: spec.name.clone(),
        reason,
    };
    if let Some(dir) = spec.url.strip_prefix("file://") {
        if !dir.starts_with('/') {
            return Err(err(format!(
                "{:?} is not an absolute path; use file:///absolute/dir",
                spec.url
            )));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| err(format!("cannot create directory {dir}: {e}")))?;
        let store = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| err(format!("cannot use directory {dir}: {e}")))?;
        return Ok((Arc::new(store), String::new()));
    }
    if let Some(rest) = spec.url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(err(format!(
                "{:?} names no bucket; use s3://bucket or s3://bucket/prefix",
                spec.url
            )));
        }
        // No ambient credentials: without them object_store would probe the
        // EC2 instance-metadata service, which is surprising and slow to fail.
        if spec.access_key_id.is_empty() || spec.secret_access_key.is_empty() {
            return Err(err(
                "no S3 credentials; add credentials-file=PATH to the destination flag".to_owned(),
            ));
        }
        let region = if spec.region.is_empty() {
            DEFAULT_REGION
        } else {
            &spec.region
        };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(region)
            .with_access_key_id(&spec.access_key_id)
            .with_secret_access_key(&spec.secret_access_key)
            .with_allow_http(spec.allow_http)
            .with_virtual_hosted_style_request(false)
            // Fail over to another destination in seconds, not after
            // object_store's default of retrying for three minutes.
            .with_retry(object_store::RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(10),
                ..Default::default()
            })
            // Replaces every client option: allow-http is set here too.
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_allow_http(spec.allow_http)
                    .with_connect_timeout(Duration::from_secs(3))
                    .with_timeout(Duration::from_secs(60)),
            );
        if !spec.endpoint.is_empty() {
            builder = builder.with_endpoint(&spec.endpoint);
        }
        // object_store's errors name the bad setting, never the secret.
        let store = builder.build().map_err(|e| err(e.to_string()))?;
        return Ok((Arc::new(store), prefix.to_owned()));
    }
    Err(err(format!(
        "unsupported URL {:?}: use file:///absolute/dir, s3://bucket or s3://bucket/prefix",
        spec.url
    )))
}
