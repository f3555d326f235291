//! Tenants end to end on a real cluster (control, two storage servers, a
//! node manager; real TLS): tenant tokens made with the CLI; a tenant
//! cannot see or touch another tenant's volumes, snapshots or
//! destinations (and nothing changes when it tries); a revoked token is
//! refused; quotas refuse with RESOURCE_EXHAUSTED and create nothing; the
//! audit log names who did what with which outcome.

use std::path::{Path, PathBuf};

use basalt_cli::auth::{connect_with, Access, Client};
use basalt_proto::control as pb;
use basalt_tests::controlplane::ManagedCluster;
use basalt_tests::procs::bin;
use serde_json::Value;
use tonic::Code;

/// Runs the CLI with the token in `token_file`; (success, stdout, stderr).
fn cli_as(c: &ManagedCluster, token_file: &Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(bin("basalt").unwrap())
        .arg("--control")
        .arg(c.endpoint())
        .arg("--ca-file")
        .arg(c.ca_file())
        .arg("--token-file")
        .arg(token_file)
        .env_remove("BASALT_TOKEN")
        .env_remove("BASALT_TENANT")
        .args(args)
        .output()
        .expect("running basalt");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_as(c: &ManagedCluster, token_file: &Path, args: &[&str]) -> Value {
    let mut a = vec!["--output", "json"];
    a.extend_from_slice(args);
    let (ok, out, err) = cli_as(c, token_file, &a);
    assert!(ok, "basalt {}: {err}", args.join(" "));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON ({e}): {out}"))
}

fn client_as(c: &ManagedCluster, token_file: &Path) -> Client {
    let token = basalt_auth::read_token(token_file).unwrap();
    let access = Access::new(&c.ca_file(), token).unwrap();
    c.rt.block_on(connect_with(&c.endpoint(), &access)).unwrap()
}

/// Attempts that must be refused, counted.
#[derive(Default)]
struct Score {
    attempts: u32,
}

impl Score {
    fn refused<T: std::fmt::Debug>(&mut self, what: &str, r: Result<T, tonic::Status>, code: Code) {
        self.attempts += 1;
        match r {
            Err(s) if s.code() == code => eprintln!("refused ({code:?}): {what}: {}", s.message()),
            other => panic!("{what}: expected {code:?}, got {other:?}"),
        }
    }
}

fn vid(id: u64) -> Option<pb::VolumeRef> {
    Some(pb::VolumeRef {
        id,
        ..Default::default()
    })
}

fn sid(id: u64) -> Option<pb::SnapshotRef> {
    Some(pb::SnapshotRef {
        id,
        ..Default::default()
    })
}

fn dref(name: &str) -> pb::DestinationRef {
    pb::DestinationRef {
        name: name.into(),
        tenant: String::new(),
    }
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap().to_owned())
        .collect()
}

fn token_file(c: &ManagedCluster, tenant: &str) -> PathBuf {
    let f = c.root.join(format!("{tenant}.token"));
    let t = c
        .cli_json(&[
            "token",
            "create",
            "--tenant",
            tenant,
            "--output-file",
            f.to_str().unwrap(),
        ])
        .unwrap();
    assert_eq!(t["role"], "tenant");
    assert_eq!(t["principal"], tenant);
    assert!(t.get("token").is_none(), "the secret went to the file: {t}");
    f
}

#[test]
fn tenants_are_isolated_quotas_hold_and_calls_are_audited() {
    let root = tempfile::Builder::new()
        .prefix("basalt-tenants-")
        .tempdir()
        .unwrap();
    let c = ManagedCluster::start(root.path(), 2).unwrap();
    let admin = c.admin_token_file();

    // Tenants and their tokens, with the CLI.
    for t in ["alpha", "beta"] {
        let j = c.cli_json(&["tenant", "create", t]).unwrap();
        assert_eq!(j["name"], t);
    }
    let (ok, _, err) = c.cli(&["tenant", "create", "Not_A_Label"]).unwrap();
    assert!(!ok && err.contains("lowercase"), "{err}");
    let a_tok = token_file(&c, "alpha");
    let b_tok = token_file(&c, "beta");
    let (ok, _, err) = c.cli(&["token", "create", "--tenant", "nobody"]).unwrap();
    assert!(!ok && err.contains("does not exist"), "{err}");
    let tokens = c.cli_json(&["token", "list"]).unwrap();
    let listed = tokens.to_string();
    for f in [&a_tok, &b_tok, &admin] {
        let secret = basalt_auth::read_token(f).unwrap();
        assert!(
            !listed.contains(&secret[4..]),
            "a secret is listed: {listed}"
        );
    }
    let principals: Vec<(String, String)> = tokens
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["role"].as_str().unwrap().into(),
                t["principal"].as_str().unwrap().into(),
            )
        })
        .collect();
    for p in [("admin", "admin"), ("tenant", "alpha"), ("tenant", "beta")] {
        assert!(
            principals.contains(&(p.0.into(), p.1.into())),
            "{principals:?}"
        );
    }

    // Alpha's objects, made by alpha.
    let a1 = json_as(&c, &a_tok, &["volume", "create", "a1", "--size", "64M"]);
    assert_eq!(a1["tenant"], "alpha");
    let a1_id = a1["id"].as_u64().unwrap();
    let as1 = json_as(
        &c,
        &a_tok,
        &["snapshot", "create", "a1", "--name", "as1", "--wait"],
    );
    assert_eq!(
        (as1["tenant"].as_str(), as1["state"].as_str()),
        (Some("alpha"), Some("COMPLETE"))
    );
    let as1_id = as1["id"].as_u64().unwrap();
    let dest_dir = root.path().join("alpha-dest");
    std::fs::create_dir_all(&dest_dir).unwrap();
    let ad = json_as(
        &c,
        &a_tok,
        &[
            "destination",
            "add",
            "ad",
            "--type",
            "dir",
            "--path",
            dest_dir.to_str().unwrap(),
        ],
    );
    assert_eq!(ad["tenant"], "alpha");
    // A tenant's lists hold its own and the shared objects only.
    assert_eq!(names(&json_as(&c, &a_tok, &["volume", "list"])), ["a1"]);
    assert!(names(&json_as(&c, &b_tok, &["volume", "list"])).is_empty());
    assert!(names(&json_as(&c, &b_tok, &["snapshot", "list"])).is_empty());
    let b_dests = names(&json_as(&c, &b_tok, &["destination", "list"]));
    assert!(
        b_dests.contains(&"local".to_owned()) && !b_dests.contains(&"ad".to_owned()),
        "{b_dests:?}"
    );
    let (ok, _, err) = cli_as(&c, &b_tok, &["volume", "show", "a1", "--tenant", "alpha"]);
    assert!(!ok && err.contains("may not act in tenant"), "{err}");

    // Beta tries everything on alpha's objects.
    let mut b = client_as(&c, &b_tok);
    let mut s = Score::default();
    let rt = &c.rt;
    let missing = rt
        .block_on(b.describe_volume(pb::DescribeVolumeRequest {
            volume: vid(999_999),
        }))
        .unwrap_err();
    let foreign = rt
        .block_on(b.describe_volume(pb::DescribeVolumeRequest { volume: vid(a1_id) }))
        .unwrap_err();
    assert_eq!(
        foreign.message().replace(&a1_id.to_string(), "N"),
        missing.message().replace("999999", "N"),
        "another tenant's volume reads exactly as one that does not exist"
    );
    s.refused(
        "describe alpha's volume by id",
        Err::<(), _>(foreign),
        Code::NotFound,
    );
    s.refused(
        "describe alpha's volume by name in tenant alpha",
        rt.block_on(b.describe_volume(pb::DescribeVolumeRequest {
            volume: Some(pb::VolumeRef {
                name: "a1".into(),
                tenant: "alpha".into(),
                id: 0,
            }),
        })),
        Code::PermissionDenied,
    );
    s.refused(
        "delete alpha's volume",
        rt.block_on(b.delete_volume(pb::DeleteVolumeRequest { volume: vid(a1_id) })),
        Code::NotFound,
    );
    s.refused(
        "attach alpha's volume",
        rt.block_on(b.attach_volume(pb::AttachVolumeRequest {
            volume: vid(a1_id),
            node_id: "node1".into(),
            read_only: false,
            force: true,
        })),
        Code::NotFound,
    );
    s.refused(
        "detach alpha's volume",
        rt.block_on(b.detach_volume(pb::DetachVolumeRequest { volume: vid(a1_id) })),
        Code::NotFound,
    );
    s.refused(
        "resize alpha's volume",
        rt.block_on(b.resize_volume(pb::ResizeVolumeRequest {
            volume: vid(a1_id),
            new_size_bytes: 128 << 20,
        })),
        Code::NotFound,
    );
    s.refused(
        "snapshot alpha's volume",
        rt.block_on(b.create_snapshot(pb::CreateSnapshotRequest {
            volume: vid(a1_id),
            name: "stolen".into(),
            destination: String::new(),
        })),
        Code::NotFound,
    );
    s.refused(
        "read a block of alpha's volume",
        rt.block_on(b.read_volume_block(pb::ReadVolumeBlockRequest {
            volume: vid(a1_id),
            block_index: 0,
        })),
        Code::NotFound,
    );
    s.refused(
        "write a block of alpha's volume",
        rt.block_on(b.write_volume_block(pb::WriteVolumeBlockRequest {
            volume: vid(a1_id),
            block_index: 0,
            data: vec![0xEE; 512 << 10],
            sha256: Vec::new(),
        })),
        Code::NotFound,
    );
    s.refused(
        "set alpha's volume's schedule",
        rt.block_on(b.set_schedule(pb::SetScheduleRequest {
            volume: vid(a1_id),
            schedule: None,
        })),
        Code::NotFound,
    );
    s.refused(
        "set alpha's volume's backup policy",
        rt.block_on(b.set_backup_policy(pb::SetBackupPolicyRequest {
            volume: vid(a1_id),
            policy: None,
        })),
        Code::NotFound,
    );
    s.refused(
        "create a volume in tenant alpha",
        rt.block_on(b.create_volume(pb::CreateVolumeRequest {
            name: "planted".into(),
            tenant: "alpha".into(),
            size_bytes: 64 << 20,
            ..Default::default()
        })),
        Code::PermissionDenied,
    );
    s.refused(
        "describe alpha's snapshot",
        rt.block_on(b.describe_snapshot(pb::DescribeSnapshotRequest {
            snapshot: sid(as1_id),
        })),
        Code::NotFound,
    );
    s.refused(
        "delete alpha's snapshot",
        rt.block_on(b.delete_snapshot(pb::DeleteSnapshotRequest {
            snapshot: sid(as1_id),
        })),
        Code::NotFound,
    );
    s.refused(
        "read a block of alpha's snapshot",
        rt.block_on(b.get_snapshot_block(pb::GetSnapshotBlockRequest {
            snapshot: sid(as1_id),
            block_index: 0,
        })),
        Code::NotFound,
    );
    s.refused(
        "list the blocks of alpha's snapshot",
        rt.block_on(b.list_snapshot_blocks(pb::ListSnapshotBlocksRequest {
            snapshot: sid(as1_id),
            ..Default::default()
        })),
        Code::NotFound,
    );
    s.refused(
        "copy alpha's snapshot",
        rt.block_on(b.copy_snapshot(pb::CopySnapshotRequest {
            snapshot: sid(as1_id),
            destination: "local".into(),
        })),
        Code::NotFound,
    );
    s.refused(
        "restore alpha's snapshot into a volume",
        rt.block_on(b.create_volume(pb::CreateVolumeRequest {
            name: "restored".into(),
            from_snapshot: sid(as1_id),
            ..Default::default()
        })),
        Code::NotFound,
    );
    s.refused(
        "list alpha's snapshots",
        rt.block_on(b.list_snapshots(pb::ListSnapshotsRequest {
            tenant: "alpha".into(),
            ..Default::default()
        })),
        Code::PermissionDenied,
    );
    s.refused(
        "describe alpha's destination",
        rt.block_on(b.describe_destination(dref("ad"))),
        Code::NotFound,
    );
    s.refused(
        "remove alpha's destination",
        rt.block_on(b.remove_destination(dref("ad"))),
        Code::NotFound,
    );
    s.refused(
        "remove the shared destination",
        rt.block_on(b.remove_destination(dref("local"))),
        Code::PermissionDenied,
    );
    s.refused(
        "create a tenant",
        rt.block_on(b.create_tenant(pb::CreateTenantRequest {
            name: "mine".into(),
            quota: None,
        })),
        Code::PermissionDenied,
    );
    s.refused(
        "create an admin token",
        rt.block_on(b.create_api_token(pb::CreateApiTokenRequest {
            admin: true,
            ..Default::default()
        })),
        Code::PermissionDenied,
    );
    s.refused(
        "read alpha's audit entries",
        rt.block_on(b.list_audit(pb::ListAuditRequest {
            tenant: "alpha".into(),
            ..Default::default()
        })),
        Code::PermissionDenied,
    );

    // Nothing changed.
    let v = c
        .cli_json(&["--tenant", "alpha", "volume", "show", "a1"])
        .unwrap();
    assert_eq!(
        (v["id"].as_u64(), v["state"].as_str()),
        (Some(a1_id), Some("AVAILABLE"))
    );
    assert_eq!(v["size_bytes"].as_u64(), Some(64 << 20));
    assert!(v["attachment"].is_null() && v["schedule"].is_null(), "{v}");
    let snap = json_as(&c, &a_tok, &["snapshot", "show", "as1"]);
    assert_eq!(snap["state"], "COMPLETE");
    assert_eq!(names(&json_as(&c, &a_tok, &["snapshot", "list"])), ["as1"]);
    assert!(names(&json_as(&c, &a_tok, &["destination", "list"])).contains(&"ad".to_owned()));
    let all = c.cli_json(&["volume", "list"]).unwrap();
    assert_eq!(
        names(&all),
        ["a1"],
        "an admin sees every tenant's; nothing was planted"
    );
    let data = rt
        .block_on(
            client_as(&c, &a_tok).read_volume_block(pb::ReadVolumeBlockRequest {
                volume: vid(a1_id),
                block_index: 0,
            }),
        )
        .unwrap()
        .into_inner()
        .data;
    assert!(
        data.iter().all(|&b| b == 0),
        "beta's write reached alpha's volume"
    );

    // Quotas: refused with RESOURCE_EXHAUSTED, nothing created.
    c.cli_json(&["tenant", "quota", "beta", "--volumes", "1", "--gib", "1"])
        .unwrap();
    json_as(&c, &b_tok, &["volume", "create", "b1", "--size", "512M"]);
    let (ok, _, err) = cli_as(&c, &b_tok, &["volume", "create", "b2", "--size", "64M"]);
    assert!(
        !ok && err.contains("volumes quota: 1 in use + 1 asked > limit 1"),
        "{err}"
    );
    c.cli_json(&["tenant", "quota", "beta", "--volumes", "5"])
        .unwrap();
    let r = rt.block_on(b.create_volume(pb::CreateVolumeRequest {
        name: "b2".into(),
        size_bytes: 1 << 30,
        ..Default::default()
    }));
    let st = r.unwrap_err();
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    assert!(
        st.message()
            .contains("provisioned GiB quota: 0.50 GiB in use + 1.00 GiB asked > limit 1 GiB"),
        "{st:?}"
    );
    let r = rt.block_on(b.resize_volume(pb::ResizeVolumeRequest {
        volume: Some(pb::VolumeRef {
            name: "b1".into(),
            ..Default::default()
        }),
        new_size_bytes: 2 << 30,
    }));
    assert_eq!(r.unwrap_err().code(), Code::ResourceExhausted);
    c.cli_json(&["tenant", "quota", "beta", "--snapshot-gib", "0"])
        .unwrap();
    let (ok, _, err) = cli_as(&c, &b_tok, &["snapshot", "create", "b1", "--name", "bs1"]);
    assert!(!ok && err.contains("snapshot GiB quota"), "{err}");
    assert!(names(&json_as(&c, &b_tok, &["snapshot", "list"])).is_empty());
    c.cli_json(&[
        "tenant",
        "quota",
        "beta",
        "--snapshot-gib",
        "none",
        "--volumes",
        "1",
    ])
    .unwrap();
    json_as(
        &c,
        &b_tok,
        &["snapshot", "create", "b1", "--name", "bs1", "--wait"],
    );
    let (ok, _, err) = cli_as(
        &c,
        &b_tok,
        &["volume", "create", "b3", "--from-snapshot", "bs1"],
    );
    assert!(
        !ok && err.contains("volumes quota"),
        "a restore counts too: {err}"
    );
    let b_vols = json_as(&c, &b_tok, &["volume", "list"]);
    assert_eq!(names(&b_vols), ["b1"]);
    assert_eq!(
        b_vols[0]["size_bytes"].as_u64(),
        Some(512 << 20),
        "the resize was refused"
    );
    let tenants = c.cli_json(&["tenant", "list"]).unwrap();
    let beta = tenants
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "beta")
        .unwrap();
    assert_eq!(beta["quota"]["volumes"], 1);
    assert_eq!(beta["quota"]["gib"], 1);
    assert!(beta["quota"]["snapshot_gib"].is_null(), "{beta}");
    assert_eq!(beta["usage"]["volumes"], 1);
    assert_eq!(beta["usage"]["snapshots"], 1);
    let (ok, table, _) = c.cli(&["tenant", "list"]).unwrap();
    assert!(
        ok && table.contains("1/1") && table.contains("512 MiB/1 GiB"),
        "{table}"
    );

    // The audit log: who, what, outcome; a tenant sees its own entries.
    let log = c.cli_json(&["audit", "--limit", "1000"]).unwrap();
    let entries = log.as_array().unwrap();
    let has = |role: &str, who: &str, method: &str, target: &str, outcome: &str| {
        entries.iter().any(|e| {
            e["role"] == role
                && e["principal"] == who
                && e["method"] == method
                && e["target"].as_str().unwrap_or("").contains(target)
                && e["outcome"] == outcome
        })
    };
    assert!(
        has("tenant", "alpha", "CreateVolume", "alpha/a1", "OK"),
        "{log:#}"
    );
    assert!(
        has(
            "tenant",
            "beta",
            "DeleteVolume",
            &format!("volume {a1_id}"),
            "NOT_FOUND"
        ),
        "{log:#}"
    );
    assert!(
        has(
            "tenant",
            "beta",
            "CreateVolume",
            "alpha/planted",
            "PERMISSION_DENIED"
        ),
        "{log:#}"
    );
    assert!(
        has(
            "tenant",
            "beta",
            "CreateVolume",
            "beta/b2",
            "RESOURCE_EXHAUSTED"
        ),
        "{log:#}"
    );
    assert!(
        has("admin", "admin", "CreateTenant", "tenant alpha", "OK"),
        "{log:#}"
    );
    assert!(
        has("admin", "admin", "SetTenantQuota", "tenant beta", "OK"),
        "{log:#}"
    );
    assert!(
        !entries.iter().any(|e| e["method"] == "ListVolumes"),
        "reads are not audited"
    );
    let mine = json_as(&c, &a_tok, &["audit", "--since", "1h"]);
    let mine = mine.as_array().unwrap();
    assert!(
        !mine.is_empty() && mine.iter().all(|e| e["tenant"] == "alpha"),
        "{mine:?}"
    );
    let (ok, out, _) = cli_as(&c, &a_tok, &["audit", "--json"]);
    assert!(ok && serde_json::from_str::<Value>(&out).is_ok(), "{out}");
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "newest last: {seqs:?}"
    );

    // A tenant that owns something cannot be deleted.
    let (ok, _, err) = c.cli(&["tenant", "delete", "beta"]).unwrap();
    assert!(
        !ok && err.contains("still owns 1 volume(s), 1 snapshot(s)"),
        "{err}"
    );

    // A revoked token is refused from the next call on.
    let b_id = c.cli_json(&["--tenant", "beta", "token", "list"]).unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    c.cli_json(&["token", "revoke", &b_id]).unwrap();
    s.refused(
        "a call with a revoked tenant token",
        rt.block_on(b.list_volumes(pb::ListVolumesRequest::default())),
        Code::Unauthenticated,
    );
    let (ok, _, err) = cli_as(&c, &b_tok, &["volume", "list"]);
    assert!(!ok && err.contains("unknown or revoked token"), "{err}");
    let admin_id = c
        .cli_json(&["token", "list"])
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["role"] == "admin")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (ok, _, err) = c.cli(&["token", "revoke", &admin_id]).unwrap();
    assert!(!ok && err.contains("last admin token"), "{err}");

    // Once it owns nothing, a tenant is deleted with its tokens.
    let b_tok2 = token_file(&c, "beta");
    json_as(&c, &b_tok2, &["snapshot", "delete", "bs1"]);
    json_as(&c, &b_tok2, &["volume", "delete", "b1"]);
    c.cli_json(&["tenant", "delete", "beta"]).unwrap();
    let (ok, _, err) = cli_as(&c, &b_tok2, &["volume", "list"]);
    assert!(!ok && err.contains("unknown or revoked token"), "{err}");
    assert_eq!(names(&c.cli_json(&["tenant", "list"]).unwrap()), ["alpha"]);
    assert!(c
        .cli_json(&["--tenant", "beta", "token", "list"])
        .unwrap()
        .as_array()
        .unwrap()
        .is_empty());
    // Alpha still works.
    assert_eq!(names(&json_as(&c, &a_tok, &["volume", "list"])), ["a1"]);
    eprintln!("tenants: {} cross-tenant attempts, all refused", s.attempts);
}
