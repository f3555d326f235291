//! What kind of store a destination URL names, and reading the credentials
//! file each kind takes. Errors give line numbers and key names only, never a
//! line's contents: they may hold the secret.

use std::path::Path;

use super::DestinationError;

/// The object stores Basalt writes snapshots to, by URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// `file:///abs/dir`
    Dir,
    /// `s3://bucket[/prefix]`
    S3,
    /// `az://container[/prefix]` (Azure Blob Storage)
    Azure,
    /// `gs://bucket[/prefix]` (Google Cloud Storage)
    Gcs,
}

/// The URL forms, repeated in error messages.
pub const URL_FORMS: &str =
    "file:///absolute/dir, s3://bucket[/prefix], az://container[/prefix] or gs://bucket[/prefix]";

impl StoreKind {
    pub fn of_url(url: &str) -> Option<StoreKind> {
        if url.starts_with("file:///") {
            Some(StoreKind::Dir)
        } else if url.starts_with("s3://") {
            Some(StoreKind::S3)
        } else if url.starts_with("az://") {
            Some(StoreKind::Azure)
        } else if url.starts_with("gs://") {
            Some(StoreKind::Gcs)
        } else {
            None
        }
    }

    /// The name `destination list` shows (and `--type` takes).
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Dir => "dir",
            StoreKind::S3 => "s3",
            StoreKind::Azure => "azure",
            StoreKind::Gcs => "gcs",
        }
    }

    /// Whether an `endpoint` may be given (GCS takes its endpoint from the
    /// key file's `gcs_base_url`).
    pub fn takes_endpoint(self) -> bool {
        matches!(self, StoreKind::S3 | StoreKind::Azure)
    }

    /// What the credentials file of this kind holds, for messages.
    pub fn credentials_help(self) -> &'static str {
        match self {
            StoreKind::Dir => "a directory takes no credentials",
            StoreKind::S3 => "lines `access_key_id = ...` and `secret_access_key = ...`",
            StoreKind::Azure => "lines `account_name = ...` and `account_key = ...`",
            StoreKind::Gcs => "a service-account JSON key file as Google issues it",
        }
    }
}

/// Reads the credentials file of a destination of `kind`, returning the
/// pair kept in [`DestinationSpec`](super::DestinationSpec)'s
/// `access_key_id` / `secret_access_key`: S3 key id and secret; Azure
/// storage account name and key; GCS service-account email and the whole
/// JSON key.
pub fn read_credentials(
    kind: StoreKind,
    path: &Path,
) -> Result<(String, String), DestinationError> {
    let bad = |reason: String| DestinationError::CredentialsFile {
        path: path.display().to_string(),
        reason: format!("{reason}; it must hold {}", kind.credentials_help()),
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    match kind {
        StoreKind::Dir => Err(bad(
            "a directory destination takes no credentials file".into()
        )),
        StoreKind::S3 => key_values(&text, ["access_key_id", "secret_access_key"]).map_err(bad),
        StoreKind::Azure => key_values(&text, ["account_name", "account_key"]).map_err(bad),
        StoreKind::Gcs => gcs_key(&text).map_err(bad),
    }
}

/// Reads an S3 credentials file (`access_key_id = ...` and
/// `secret_access_key = ...`).
pub fn read_credentials_file(path: &Path) -> Result<(String, String), DestinationError> {
    read_credentials(StoreKind::S3, path)
}

/// Exactly the two `keys`, as `key = value` lines (blank lines and `#`
/// comments allowed).
fn key_values(text: &str, keys: [&str; 2]) -> Result<(String, String), String> {
    let mut values: [Option<String>; 2] = [None, None];
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let lineno = n + 1;
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!(
                "line {lineno} is not `key = value` (contents not shown)"
            ));
        };
        let Some(slot) = keys.iter().position(|k| *k == key.trim()) else {
            return Err(format!("line {lineno}: unknown key (contents not shown)"));
        };
        let value = value.trim();
        if value.is_empty() {
            return Err(format!("line {lineno}: empty value"));
        }
        if values[slot].replace(value.to_owned()).is_some() {
            return Err(format!("line {lineno}: key given twice"));
        }
    }
    match values {
        [Some(a), Some(b)] => Ok((a, b)),
        _ => Err("a key is missing".to_owned()),
    }
}

/// A service-account key: JSON with `client_email` and `private_key`.
fn gcs_key(text: &str) -> Result<(String, String), String> {
    // serde_json's messages name a line and column, never the text.
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let field = |name: &str| {
        v.get(name)
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("no {name:?} string in it"))
    };
    let email = field("client_email")?;
    field("private_key")?;
    Ok((email.to_owned(), text.to_owned()))
}
