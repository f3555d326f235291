//! `basalt destination …` and `basalt volume backup`.

use basalt_proto::control as pb;
use serde_json::{json, Value};

use basalt_snapshot::{DestinationSpec, StoreKind};

use crate::args::{Cli, DestinationCmd, DestinationType};
use crate::commands::{st, Printed};
use crate::output::table;
use crate::size::format_size;

pub const DESTINATION_HEADERS: [&str; 7] = [
    "NAME",
    "TYPE",
    "URL",
    "TENANT",
    "HEALTH",
    "LATENCY",
    "SNAPSHOTS",
];

pub fn destination_json(d: &pb::Destination) -> Value {
    json!({
        "name": d.name,
        "tenant": d.tenant,
        "type": d.r#type,
        "url": d.url,
        "endpoint": d.endpoint,
        "region": d.region,
        "allow_http": d.allow_http,
        "has_credentials": d.has_credentials,
        "health": d.health,
        "last_error": d.last_error,
        "checked_at": d.checked_at,
        "latency_micros": d.latency_micros,
        "chunks": d.chunks,
        "bytes_stored": d.bytes_stored,
        "snapshots": d.snapshots,
        "created_at": d.created_at,
    })
}

fn latency(micros: u64) -> String {
    if micros == 0 {
        "-".into()
    } else {
        format!("{:.1} ms", micros as f64 / 1000.0)
    }
}

pub fn destination_row(d: &pb::Destination) -> Vec<String> {
    vec![
        d.name.clone(),
        d.r#type.clone(),
        d.url.clone(),
        if d.tenant.is_empty() {
            "(shared)".into()
        } else {
            d.tenant.clone()
        },
        d.health.clone(),
        latency(d.latency_micros),
        d.snapshots.to_string(),
    ]
}

fn detail(d: &pb::Destination, counted: bool) -> String {
    let mut s = table(&DESTINATION_HEADERS, &[destination_row(d)]);
    if !d.endpoint.is_empty() {
        s.push_str(&format!("\nendpoint: {}", d.endpoint));
    }
    if !d.last_error.is_empty() {
        s.push_str(&format!("\nlast error: {}", d.last_error));
    }
    if counted {
        s.push_str(&format!(
            "\nstored: {} chunks, {}",
            d.chunks,
            format_size(d.bytes_stored)
        ));
    }
    s
}

fn printed(d: &pb::Destination, counted: bool) -> Printed {
    Printed {
        table: detail(d, counted),
        json: destination_json(d),
    }
}

/// The API request of `destination add`; reads the credentials file and
/// refuses options the type does not take (the control service checks
/// again).
pub fn add_request(cli: &Cli, cmd: &DestinationCmd) -> anyhow::Result<pb::AddDestinationRequest> {
    let DestinationCmd::Add {
        name,
        kind,
        path,
        bucket,
        container,
        prefix,
        endpoint,
        region,
        allow_http,
        credentials_file,
    } = cmd
    else {
        anyhow::bail!("not an add command");
    };
    let store = match kind {
        DestinationType::Dir => StoreKind::Dir,
        DestinationType::S3 => StoreKind::S3,
        DestinationType::Azure => StoreKind::Azure,
        DestinationType::Gcs => StoreKind::Gcs,
    };
    let misplaced =
        |flag: &str| anyhow::anyhow!("{flag} does not apply to --type {}", store.name());
    if store != StoreKind::Dir && path.is_some() {
        return Err(misplaced("--path"));
    }
    if store != StoreKind::Azure && container.is_some() {
        return Err(misplaced("--container (use --bucket)"));
    }
    if matches!(store, StoreKind::Azure | StoreKind::Dir) && bucket.is_some() {
        return Err(misplaced("--bucket"));
    }
    if store == StoreKind::Dir && (prefix.is_some() || credentials_file.is_some()) {
        return Err(misplaced("--prefix and --credentials-file"));
    }
    let url = match store {
        StoreKind::Dir => {
            let p = path
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("--path is required"))?;
            if !p.is_absolute() {
                anyhow::bail!("--path {} must be absolute", p.display());
            }
            format!("file://{}", p.display())
        }
        _ => {
            let scheme = match store {
                StoreKind::Azure => "az",
                StoreKind::Gcs => "gs",
                _ => "s3",
            };
            let b = bucket.as_ref().or(container.as_ref()).ok_or_else(|| {
                anyhow::anyhow!("--bucket (or --container for azure) is required")
            })?;
            match prefix.as_deref().map(|p| p.trim_matches('/')) {
                Some(p) if !p.is_empty() => format!("{scheme}://{b}/{p}"),
                _ => format!("{scheme}://{b}"),
            }
        }
    };
    let (access_key_id, secret_access_key) = match credentials_file {
        Some(f) => basalt_snapshot::read_credentials(store, f)?,
        None => Default::default(),
    };
    let spec = DestinationSpec {
        name: name.clone(),
        url,
        endpoint: endpoint.clone().unwrap_or_default(),
        region: region.clone().unwrap_or_default(),
        allow_http: *allow_http,
        access_key_id,
        secret_access_key,
    };
    spec.check_options(store)
        .map_err(|reason| anyhow::anyhow!("{reason}"))?;
    Ok(pb::AddDestinationRequest {
        name: spec.name,
        tenant: cli.tenant.clone(),
        url: spec.url,
        endpoint: spec.endpoint,
        region: spec.region,
        allow_http: spec.allow_http,
        access_key_id: spec.access_key_id,
        secret_access_key: spec.secret_access_key,
    })
}

pub async fn run(
    cli: &Cli,
    c: &mut crate::auth::Client,
    cmd: &DestinationCmd,
) -> anyhow::Result<Printed> {
    let dref = |name: &str| pb::DestinationRef {
        name: name.to_owned(),
        tenant: cli.tenant.clone(),
    };
    Ok(match cmd {
        DestinationCmd::Add { .. } => {
            let d = c
                .add_destination(add_request(cli, cmd)?)
                .await
                .map_err(st)?
                .into_inner();
            printed(&d, false)
        }
        DestinationCmd::List => {
            let all = c
                .list_destinations(pb::ListDestinationsRequest {
                    tenant: cli.tenant.clone(),
                })
                .await
                .map_err(st)?
                .into_inner()
                .destinations;
            Printed {
                table: table(
                    &DESTINATION_HEADERS,
                    &all.iter().map(destination_row).collect::<Vec<_>>(),
                ),
                json: Value::Array(all.iter().map(destination_json).collect()),
            }
        }
        DestinationCmd::Show { name } => {
            let d = c
                .describe_destination(dref(name))
                .await
                .map_err(st)?
                .into_inner();
            printed(&d, true)
        }
        DestinationCmd::Remove { name } => {
            c.remove_destination(dref(name)).await.map_err(st)?;
            Printed {
                table: format!("destination {name} removed"),
                json: json!({"removed": name}),
            }
        }
    })
}

/// The policy of `volume backup` (None with --clear).
pub fn policy(
    layout: &Option<String>,
    destinations: &[String],
    stripe_mib: Option<u32>,
    archive_after: Option<&str>,
    archive_to: Option<&str>,
    clear: bool,
) -> anyhow::Result<Option<pb::BackupPolicy>> {
    if clear {
        return Ok(None);
    }
    Ok(Some(pb::BackupPolicy {
        layout: layout.clone().unwrap_or_default(),
        destinations: destinations.to_vec(),
        stripe_mib: stripe_mib.unwrap_or(0),
        archive_after_secs: archive_after
            .map(crate::schedule::parse_interval)
            .transpose()?
            .unwrap_or(0),
        archive_to: archive_to.unwrap_or_default().to_owned(),
    }))
}

/// `backup: duplicate to s3a, s3b` for `volume show`.
pub fn policy_line(p: &pb::BackupPolicy) -> String {
    let mut s = format!("backup: {} to {}", p.layout, p.destinations.join(", "));
    if p.layout == "striped" {
        s.push_str(&format!(" ({} MiB stripes)", p.stripe_mib));
    }
    if p.archive_after_secs > 0 {
        s.push_str(&format!(
            "; moved to {} after {}",
            p.archive_to,
            crate::schedule::format_interval(p.archive_after_secs)
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("basalt").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn add_requests() {
        let c = cli(&[
            "destination",
            "add",
            "d1",
            "--type",
            "dir",
            "--path",
            "/srv/b",
        ]);
        let crate::args::Command::Destination(cmd) = &c.command else {
            panic!("not a destination command")
        };
        let r = add_request(&c, cmd).unwrap();
        assert_eq!(r.url, "file:///srv/b");
        // No --tenant: the caller's (an admin's: default).
        assert_eq!(r.tenant, "");

        let c = cli(&["destination", "add", "d1", "--type", "dir", "--path", "rel"]);
        let crate::args::Command::Destination(cmd) = &c.command else {
            panic!("not a destination command")
        };
        assert!(add_request(&c, cmd).is_err(), "a relative path is refused");

        // s3 needs a bucket and a credentials file.
        assert!(
            Cli::try_parse_from(["basalt", "destination", "add", "x", "--type", "s3"]).is_err()
        );
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds");
        std::fs::write(&creds, "access_key_id = AK\nsecret_access_key = SK\n").unwrap();
        let c = cli(&[
            "destination",
            "add",
            "x",
            "--type",
            "s3",
            "--bucket",
            "b",
            "--prefix",
            "/p/q/",
            "--endpoint",
            "http://127.0.0.1:9000",
            "--allow-http",
            "--credentials-file",
            creds.to_str().unwrap(),
        ]);
        let crate::args::Command::Destination(cmd) = &c.command else {
            panic!("not a destination command")
        };
        let r = add_request(&c, cmd).unwrap();
        assert_eq!(r.url, "s3://b/p/q");
        assert_eq!(
            (r.access_key_id.as_str(), r.secret_access_key.as_str()),
            ("AK", "SK")
        );
        assert!(r.allow_http);
    }

    #[test]
    fn azure_and_gcs_requests() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("azure");
        std::fs::write(&creds, "account_name = acct\naccount_key = S2V5\n").unwrap();
        let creds = creds.to_str().unwrap();
        let azure = |extra: &[&str]| {
            let mut args = vec!["destination", "add", "a", "--type", "azure"];
            args.extend_from_slice(extra);
            let c = Cli::try_parse_from(std::iter::once("basalt").chain(args))?;
            let crate::args::Command::Destination(cmd) = &c.command else {
                panic!("not a destination command")
            };
            add_request(&c, cmd)
        };
        let r = azure(&[
            "--container",
            "c",
            "--prefix",
            "vm",
            "--endpoint",
            "http://127.0.0.1:10000/acct",
            "--allow-http",
            "--credentials-file",
            creds,
        ])
        .unwrap();
        assert_eq!(r.url, "az://c/vm");
        assert_eq!(
            (r.access_key_id.as_str(), r.secret_access_key.as_str()),
            ("acct", "S2V5")
        );
        // A container is required, a bucket or region refused, and S3 keys
        // are not Azure keys.
        assert!(azure(&["--credentials-file", creds]).is_err());
        for extra in [
            &[
                "--container",
                "c",
                "--bucket",
                "b",
                "--credentials-file",
                creds,
            ][..],
            &[
                "--container",
                "c",
                "--region",
                "eu",
                "--credentials-file",
                creds,
            ][..],
        ] {
            assert!(azure(extra).is_err(), "{extra:?}");
        }
        let s3 = dir.path().join("s3");
        std::fs::write(&s3, "access_key_id = AK\nsecret_access_key = SK\n").unwrap();
        let err = azure(&[
            "--container",
            "c",
            "--credentials-file",
            s3.to_str().unwrap(),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("account_name"), "{err}");

        let key = dir.path().join("key.json");
        std::fs::write(&key, r#"{"client_email": "e@p", "private_key": "k"}"#).unwrap();
        let c = cli(&[
            "destination",
            "add",
            "g",
            "--type",
            "gcs",
            "--bucket",
            "b",
            "--credentials-file",
            key.to_str().unwrap(),
        ]);
        let crate::args::Command::Destination(cmd) = &c.command else {
            panic!("not a destination command")
        };
        let r = add_request(&c, cmd).unwrap();
        assert_eq!(
            (r.url.as_str(), r.access_key_id.as_str()),
            ("gs://b", "e@p")
        );
    }

    #[test]
    fn backup_grammar() {
        let c = cli(&[
            "volume",
            "backup",
            "v",
            "--layout",
            "duplicate",
            "--destination",
            "a",
            "--destination",
            "b",
        ]);
        let crate::args::Command::Volume(crate::args::VolumeCmd::Backup {
            layout,
            destinations,
            stripe_mib,
            clear,
            ..
        }) = &c.command
        else {
            panic!("not a backup command")
        };
        let p = policy(layout, destinations, *stripe_mib, None, None, *clear)
            .unwrap()
            .unwrap();
        assert_eq!(p.layout, "duplicate");
        assert_eq!(p.destinations, ["a", "b"]);
        assert!(Cli::try_parse_from([
            "basalt",
            "volume",
            "backup",
            "v",
            "--layout",
            "mirror",
            "--destination",
            "a"
        ])
        .is_err());
        assert!(Cli::try_parse_from([
            "basalt", "volume", "backup", "v", "--clear", "--layout", "single"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["basalt", "volume", "backup", "v", "--clear"]).is_ok());
    }
}
