//! [`DestinationSpec`]: where a destination is and how to reach it, and the
//! control service's `--snapshot-destination` flag syntax.

use std::fmt;
use std::path::Path;

use super::credentials::{read_credentials, StoreKind, URL_FORMS};
use super::DestinationError;

/// Flag syntax, repeated in error messages.
pub const FLAG_SYNTAX: &str =
    "NAME=URL[,endpoint=URL][,region=R][,allow-http][,credentials-file=PATH]";

/// How to reach one snapshot destination. Serialized (by a storage server
/// keeping a copy's source) with its credentials: keep such files
/// owner-only.
#[derive(Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct DestinationSpec {
    pub name: String,
    /// `file:///abs/dir`, `s3://bucket[/prefix]`, `az://container[/prefix]`
    /// or `gs://bucket[/prefix]`.
    pub url: String,
    /// S3 or Azure endpoint URL, e.g. `http://127.0.0.1:9000` ("" = the
    /// cloud's default; for Azure include the account:
    /// `http://127.0.0.1:10000/devstoreaccount1`).
    pub endpoint: String,
    /// S3 region ("" = `us-east-1`).
    pub region: String,
    /// Allow plain-HTTP endpoints.
    pub allow_http: bool,
    /// S3 access key id; Azure storage account name; GCS service-account
    /// email.
    pub access_key_id: String,
    /// S3 secret key; Azure account key; GCS the whole service-account JSON
    /// key.
    pub secret_access_key: String,
}

impl fmt::Debug for DestinationSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |s: &str| if s.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("DestinationSpec")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .field("access_key_id", &redact(&self.access_key_id))
            .field("secret_access_key", &redact(&self.secret_access_key))
            .finish()
    }
}

fn bad_flag(part: &str, reason: impl Into<String>) -> DestinationError {
    DestinationError::BadFlag {
        part: part.to_owned(),
        reason: reason.into(),
    }
}

impl DestinationSpec {
    /// Parses the control service's flag syntax:
    /// `NAME=URL[,endpoint=URL][,region=R][,allow-http][,credentials-file=PATH]`.
    ///
    /// The credentials file holds lines `access_key_id = ...` and
    /// `secret_access_key = ...` (blank lines and `#` comments allowed); it is
    /// read here. Errors name the bad part and never echo a secret.
    pub fn parse_flag(s: &str) -> Result<DestinationSpec, DestinationError> {
        let mut parts = s.split(',').map(str::trim);
        let first = parts.next().unwrap_or_default();
        let (name, url) = first
            .split_once('=')
            .map(|(n, u)| (n.trim(), u.trim()))
            .ok_or_else(|| bad_flag(first, "the first part must be NAME=URL"))?;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(bad_flag(
                name,
                "the name must be non-empty and use only letters, digits, '-', '_' and '.'",
            ));
        }
        let Some(kind) = StoreKind::of_url(url) else {
            return Err(bad_flag(url, format!("the URL must be {URL_FORMS}")));
        };
        let mut spec = DestinationSpec {
            name: name.to_owned(),
            url: url.to_owned(),
            ..DestinationSpec::default()
        };
        let mut seen = Vec::new();
        for part in parts {
            let (key, value) = match part.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (part, None),
            };
            if seen.contains(&key) {
                return Err(bad_flag(key, "given twice"));
            }
            seen.push(key);
            match (key, value) {
                ("endpoint", Some(v)) if !v.is_empty() => spec.endpoint = v.to_owned(),
                ("region", Some(v)) if !v.is_empty() => spec.region = v.to_owned(),
                ("allow-http", None) => spec.allow_http = true,
                ("credentials-file", Some(v)) if !v.is_empty() => {
                    let (id, secret) = read_credentials(kind, Path::new(v))?;
                    spec.access_key_id = id;
                    spec.secret_access_key = secret;
                }
                ("endpoint" | "region" | "credentials-file", _) => {
                    return Err(bad_flag(key, format!("expected {key}=VALUE")))
                }
                ("allow-http", Some(_)) => return Err(bad_flag(key, "allow-http takes no value")),
                // Only the key is echoed: the value of an unknown option might be a secret.
                _ => {
                    return Err(bad_flag(
                        key,
                        "unknown option (use endpoint, region, allow-http or credentials-file)",
                    ))
                }
            }
        }
        spec.check_options(kind)
            .map_err(|reason| bad_flag(&spec.url, reason))?;
        Ok(spec)
    }

    /// The kind of store the URL names.
    pub fn kind(&self) -> Option<StoreKind> {
        StoreKind::of_url(&self.url)
    }

    /// Refuses options the kind of store does not take, and a cloud store
    /// without credentials (ambient credentials are never used: they would
    /// make the control service and the storage servers probe cloud metadata
    /// services, slow to fail and surprising).
    pub fn check_options(&self, kind: StoreKind) -> Result<(), String> {
        if kind == StoreKind::Dir {
            if !self.endpoint.is_empty() || self.allow_http || !self.region.is_empty() {
                return Err("endpoint, region and allow-http do not apply to a directory".into());
            }
            if !self.access_key_id.is_empty() || !self.secret_access_key.is_empty() {
                return Err("a directory takes no credentials".into());
            }
            return Ok(());
        }
        if !kind.takes_endpoint() && !self.endpoint.is_empty() {
            return Err(format!(
                "a {} destination takes no endpoint (set gcs_base_url in its key file)",
                kind.name()
            ));
        }
        if kind != StoreKind::S3 && !self.region.is_empty() {
            return Err(format!("a {} destination takes no region", kind.name()));
        }
        if self.access_key_id.is_empty() || self.secret_access_key.is_empty() {
            return Err(format!(
                "no credentials: add credentials-file=PATH, a file holding {}",
                kind.credentials_help()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
