//! Building the `object_store` client for a [`DestinationSpec`].

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::{ClientOptions, ObjectStore, RetryConfig};

use super::credentials::{StoreKind, URL_FORMS};
use super::{DestinationError, DestinationSpec};

const DEFAULT_REGION: &str = "us-east-1";

/// Fail over to another destination in seconds, not after object_store's
/// default of retrying for three minutes.
fn retry() -> RetryConfig {
    RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(10),
        ..Default::default()
    }
}

/// Replaces every client option of a builder: allow-http is set here too.
fn client_options(spec: &DestinationSpec) -> ClientOptions {
    ClientOptions::new()
        .with_allow_http(spec.allow_http)
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(60))
}

/// The store and the key prefix inside it.
pub(super) fn open_store(
    spec: &DestinationSpec,
) -> Result<(Arc<dyn ObjectStore>, String), DestinationError> {
    let err = |reason: String| DestinationError::Open {
        name: spec.name.clone(),
        reason,
    };
    let kind = spec
        .kind()
        .ok_or_else(|| err(format!("unsupported URL {:?}: use {URL_FORMS}", spec.url)))?;
    spec.check_options(kind).map_err(err)?;
    if kind == StoreKind::Dir {
        let dir = &spec.url["file://".len()..];
        std::fs::create_dir_all(dir)
            .map_err(|e| err(format!("cannot create directory {dir}: {e}")))?;
        let store = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| err(format!("cannot use directory {dir}: {e}")))?;
        return Ok((Arc::new(store), String::new()));
    }
    let rest = spec.url.split_once("://").map_or("", |(_, r)| r);
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(err(format!(
            "{:?} names no bucket or container; use {URL_FORMS}",
            spec.url
        )));
    }
    // object_store's errors name the bad setting, never the secret.
    let store: Arc<dyn ObjectStore> = match kind {
        StoreKind::S3 => {
            let region = if spec.region.is_empty() {
                DEFAULT_REGION
            } else {
                &spec.region
            };
            let mut b = AmazonS3Builder::new()
                .with_bucket_name(bucket)
                .with_region(region)
                .with_access_key_id(&spec.access_key_id)
                .with_secret_access_key(&spec.secret_access_key)
                .with_virtual_hosted_style_request(false)
                .with_retry(retry())
                .with_client_options(client_options(spec));
            if !spec.endpoint.is_empty() {
                b = b.with_endpoint(&spec.endpoint);
            }
            Arc::new(b.build().map_err(|e| err(e.to_string()))?)
        }
        StoreKind::Azure => {
            let mut b = MicrosoftAzureBuilder::new()
                .with_container_name(bucket)
                .with_account(&spec.access_key_id)
                .with_access_key(&spec.secret_access_key)
                .with_retry(retry())
                .with_client_options(client_options(spec));
            if !spec.endpoint.is_empty() {
                b = b.with_endpoint(spec.endpoint.clone());
            }
            Arc::new(b.build().map_err(|e| err(e.to_string()))?)
        }
        StoreKind::Gcs => Arc::new(
            GoogleCloudStorageBuilder::new()
                .with_bucket_name(bucket)
                .with_service_account_key(&spec.secret_access_key)
                .with_retry(retry())
                .with_client_options(client_options(spec))
                .build()
                .map_err(|e| err(e.to_string()))?,
        ),
        StoreKind::Dir => return Err(err("a directory is not a bucket".into())),
    };
    Ok((store, prefix.to_owned()))
}
