//! An Azure Blob Storage destination (Azurite, the emulator, on loopback)
//! through the CLI: refused with a wrong key or a missing container, added,
//! used alone and in a duplicate layout with a directory, restored from, and
//! left behind by a restore when Azurite dies.
//!
//! Needs Azurite (`scripts/setup.sh` installs it with npm): skipped loudly
//! when missing, a failure when `CI` is set.

use std::time::Duration;

use basalt_snapshot::testing::azurite::{azurite_or_skip, Azurite, ACCOUNT};
use basalt_snapshot::Destination;
use basalt_tests::controlplane::ManagedCluster;
use basalt_tests::snaps::{
    attach, destination_names, dir_dest, manifests, noise, read_all, refused, secret_file,
    snapshot, MIB,
};

const DATA: usize = 6 * MIB;

/// Restores `snap` into `vol`, checks the data and returns the hydration
/// report once complete.
fn restore_and_check(c: &ManagedCluster, snap: &str, vol: &str, want: &[u8]) -> serde_json::Value {
    let v = c
        .cli_json(&["volume", "create", vol, "--from-snapshot", snap])
        .expect("restore");
    assert_eq!(v["state"], "AVAILABLE", "{v}");
    let mut b = attach(c, vol);
    assert!(
        read_all(&mut b, want.len()) == want,
        "{vol} differs from {snap}"
    );
    let v = c
        .wait_volume(vol, Duration::from_secs(120), |v| {
            v["hydration"]["complete"] == true
        })
        .expect("hydration completes");
    v["hydration"].clone()
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn served(h: &serde_json::Value, dest: &str) -> u64 {
    h["sources"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["destination"] == dest))
        .and_then(|s| s["served"].as_u64())
        .unwrap_or_else(|| panic!("no source {dest}: {h}"))
}

#[test]
fn azure_destination_end_to_end() {
    let Some(azurite) = azurite_or_skip("azure_destination_end_to_end") else {
        return;
    };
    let root = tempfile::Builder::new()
        .prefix("basalt-azure-")
        .tempdir()
        .unwrap();
    let dests = root.path().join("dests");
    let c = ManagedCluster::start(root.path(), 2).unwrap();
    let good = secret_file(root.path(), "azure", &Azurite::credentials_file_text());
    let wrong = secret_file(
        root.path(),
        "azure-wrong",
        &format!("account_name = {ACCOUNT}\naccount_key = d3JvbmcgYnV0IGJhc2U2NA==\n"),
    );
    let add = |name: &str, container: &str, creds: &str| {
        vec![
            "destination".to_owned(),
            "add".into(),
            name.into(),
            "--type".into(),
            "azure".into(),
            "--container".into(),
            container.into(),
            "--prefix".into(),
            "cluster".into(),
            "--endpoint".into(),
            azurite.endpoint.clone(),
            "--allow-http".into(),
            "--credentials-file".into(),
            creds.into(),
        ]
    };

    // Refused with the reason, and nothing added.
    let bad_key = add("x1", &azurite.container, &wrong);
    refused(&c, &args(&bad_key), "credentials are wrong");
    let no_container = add("x2", "no-such-container", &good);
    refused(&c, &args(&no_container), "does not exist");
    // S3 keys are not Azure keys: the CLI says which are needed.
    let s3_keys = secret_file(
        root.path(),
        "s3",
        "access_key_id = a\nsecret_access_key = b\n",
    );
    refused(
        &c,
        &args(&add("x3", &azurite.container, &s3_keys)),
        "account_name",
    );

    let d = c
        .cli_json(&args(&add("blob", &azurite.container, &good)))
        .expect("destination add azure");
    assert_eq!(
        (d["type"].as_str(), d["health"].as_str()),
        (Some("azure"), Some("OK")),
        "{d}"
    );
    assert_eq!(d["url"], format!("az://{}/cluster", azurite.container));
    c.cli_json(&[
        "destination",
        "add",
        "disk",
        "--type",
        "dir",
        "--path",
        dests.join("disk").to_str().unwrap(),
    ])
    .expect("destination add dir");
    let names = destination_names(&c);
    assert_eq!(names, ["blob", "disk", "local"]);
    let mut spec = azurite.spec_for(&format!("{}/cluster", azurite.container));
    spec.name = "blob".into();
    let blob = Destination::open(&spec).unwrap();
    let disk = dir_dest(&dests, "disk");

    // Alone: a full snapshot in Azure, restored from it.
    c.cli_json(&["volume", "create", "v", "--size", "16M"])
        .unwrap();
    let mut b = attach(&c, "v");
    let mut data = noise(7, DATA);
    b.write_at(0, &data).unwrap();
    b.flush().unwrap();
    c.cli_json(&[
        "volume",
        "backup",
        "v",
        "--layout",
        "single",
        "--destination",
        "blob",
    ])
    .expect("backup policy");
    let s1 = snapshot(&c, "v.s1").unwrap();
    assert_eq!(s1["state"], "COMPLETE", "{s1}");
    let id1 = s1["id"].as_u64().unwrap();
    assert_eq!(manifests(&c, &blob), [id1]);
    let shown = c.cli_json(&["destination", "show", "blob"]).unwrap();
    assert_eq!(
        shown["chunks"].as_u64(),
        Some((DATA / (512 << 10)) as u64),
        "{shown}"
    );
    let h = restore_and_check(&c, "v.s1", "r1", &data);
    assert!(served(&h, "blob") >= 1, "{h}");

    // Duplicate with a directory; Azure dies before the restore, which is
    // served by the directory, never an error.
    c.cli_json(&[
        "volume",
        "backup",
        "v",
        "--layout",
        "duplicate",
        "--destination",
        "blob",
        "--destination",
        "disk",
    ])
    .expect("duplicate policy");
    data[MIB..2 * MIB].copy_from_slice(&noise(8, MIB));
    b.write_at(MIB as u64, &data[MIB..2 * MIB]).unwrap();
    b.flush().unwrap();
    let s2 = snapshot(&c, "v.s2").unwrap();
    assert_eq!(s2["state"], "COMPLETE", "{s2}");
    let id2 = s2["id"].as_u64().unwrap();
    assert!(manifests(&c, &blob).contains(&id2) && manifests(&c, &disk).contains(&id2));
    refused(&c, &["destination", "remove", "blob"], "snapshot");
    drop(azurite);
    let h = restore_and_check(&c, "v.s2", "r2", &data);
    assert!(served(&h, "disk") >= 1, "{h}");
    assert_eq!(served(&h, "blob"), 0, "Azurite is dead: {h}");
}
