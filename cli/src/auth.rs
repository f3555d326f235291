//! How the CLI proves who it is: the cluster CA verifies the control
//! service, and an API token (from a file or `BASALT_TOKEN`, never the
//! command line) names the caller.

use std::path::Path;

use anyhow::Context;
use basalt_auth::{server_only_tls, Principal};
use basalt_proto::control::control_client::ControlClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::args::Cli;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// A client of the control API, authenticated.
pub type Client = ControlClient<InterceptedService<Channel, Bearer>>;

/// The CA to verify the control service with, and the token to present.
#[derive(Clone)]
pub struct Access {
    pub ca_pem: String,
    token: String,
}

impl Access {
    pub fn new(ca_file: &Path, token: String) -> anyhow::Result<Access> {
        let ca_pem = std::fs::read_to_string(ca_file).with_context(|| {
            format!(
                "cannot read the cluster CA {} (the control service's tls/ca.crt)",
                ca_file.display()
            )
        })?;
        if !basalt_auth::token::well_formed(&token) {
            anyhow::bail!("the API token is malformed: it starts with bst_ and has 64 hex digits");
        }
        Ok(Access { ca_pem, token })
    }

    /// From `--ca-file` / `BASALT_CA_FILE` and `--token-file` /
    /// `BASALT_TOKEN_FILE` / `BASALT_TOKEN`.
    pub fn from_cli(cli: &Cli) -> anyhow::Result<Access> {
        let ca = cli.ca_file.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "no cluster CA: pass --ca-file or set BASALT_CA_FILE (the control service's \
                 tls/ca.crt; `basalt up` prints it)"
            )
        })?;
        let token = match (&cli.token_file, std::env::var("BASALT_TOKEN")) {
            (Some(f), _) => read_token(f)?,
            (None, Ok(t)) if !t.trim().is_empty() => t.trim().to_owned(),
            _ => anyhow::bail!(
                "no API token: pass --token-file or set BASALT_TOKEN_FILE or BASALT_TOKEN \
                 (`basalt up` prints where its admin token is)"
            ),
        };
        Access::new(ca, token)
    }
}

fn read_token(f: &Path) -> anyhow::Result<String> {
    basalt_auth::read_token(f).with_context(|| format!("cannot read the API token {}", f.display()))
}

/// Connects to the control service at `endpoint` over TLS.
pub async fn connect_with(endpoint: &str, access: &Access) -> anyhow::Result<Client> {
    let tls = server_only_tls(&access.ca_pem, &Principal::control());
    let ep = basalt_auth::endpoint(endpoint, tls)
        .map_err(|e| anyhow::anyhow!("invalid control endpoint: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(3));
    let channel = ep.connect().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the control service at {endpoint} over TLS: {e:?}; is it running, \
             and is --ca-file its CA? (set --control or BASALT_CONTROL)"
        )
    })?;
    let value = format!("Bearer {}", access.token)
        .parse()
        .context("the API token is not a valid header value")?;
    Ok(ControlClient::with_interceptor(channel, Bearer(value)))
}

pub async fn connect(cli: &Cli) -> anyhow::Result<Client> {
    connect_with(&cli.control, &Access::from_cli(cli)?).await
}
