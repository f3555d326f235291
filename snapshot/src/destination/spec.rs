//! [`DestinationSpec`]: where a destination is and how to reach it, and the
//! control service's `--snapshot-destination` flag syntax.

use std::fmt;
use std::path::Path;

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
    /// `file:///abs/dir`, `s3://bucket` or `s3://bucket/prefix`.
    pub url: String,
    /// S3 endpoint URL, e.g. `http://127.0.0.1:9000` ("" = AWS default).
    pub endpoint: String,
    /// S3 region ("" = `us-east-1`).
    pub region: String,
    /// Allow plain-HTTP endpoints.
    pub allow_http: bool,
    pub access_key_id: String,
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
        if !(url.starts_with("file://") || url.starts_with("s3://")) {
            return Err(bad_flag(url, "the URL must start with file:// or s3://"));
        }
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
                    let (id, secret) = read_credentials_file(Path::new(v))?;
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
        if spec.url.starts_with("file://") && (!spec.endpoint.is_empty() || spec.allow_http) {
            return Err(bad_flag(
                &spec.url,
                "endpoint and allow-http only apply to s3:// destinations",
            ));
        }
        Ok(spec)
    }
}

/// Reads `access_key_id = ...` / `secret_access_key = ...` lines. Errors give
/// line numbers only, never line contents (they may hold the secret).
pub fn read_credentials_file(path: &Path) -> Result<(String, String), DestinationError> {
    let bad = |reason: String| DestinationError::CredentialsFile {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let mut id = None;
    let mut secret = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let lineno = n + 1;
        let Some((key, value)) = line.split_once('=') else {
            return Err(bad(format!(
                "line {lineno} is not `key = value` (contents not shown)"
            )));
        };
        let value = value.trim().to_owned();
        let slot = match key.trim() {
            "access_key_id" => &mut id,
            "secret_access_key" => &mut secret,
            _ => {
                return Err(bad(format!(
                    "line {lineno}: unknown key (contents not shown); \
                     expected access_key_id or secret_access_key"
                )))
            }
        };
        if value.is_empty() {
            return Err(bad(format!("line {lineno}: empty value")));
        }
        if slot.replace(value).is_some() {
            return Err(bad(format!("line {lineno}: key given twice")));
        }
    }
    match (id, secret) {
        (Some(id), Some(secret)) => Ok((id, secret)),
        _ => Err(bad(
            "it must set both access_key_id and secret_access_key".to_owned()
        )),
    }
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
