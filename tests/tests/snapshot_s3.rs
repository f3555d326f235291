//! Snapshots to a real S3 server (s3s-fs on loopback) end to end: control
//! service, three storage servers, a node manager and the `basalt` CLI; data
//! written and read through real vhost-user-blk backends. Also checks that
//! the S3 secret key never leaks: not in CLI output, logs or command lines.
//!
//! Needs the `s3s-fs` binary (`scripts/setup.sh` installs it): skipped loudly
//! when it is missing, and a failure when `CI` is set.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use basalt_snapshot::testing::{s3_server_or_skip, ACCESS_KEY_ID, SECRET_ACCESS_KEY};
use basalt_snapshot::{Destination, DestinationSpec, BLOCK_SIZE};
use basalt_tests::controlplane::ManagedCluster;
use basalt_tests::snaps::{attach, noise, restore, snapshot, MIB};

/// Every `*.log` file under `dir`, recursively.
fn logs_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            logs_under(&p, out);
        } else if p.extension().is_some_and(|x| x == "log") {
            out.push(p);
        }
    }
}

/// Every regular file under `dir` except volume data files (large sparse
/// images, which hold only what the test wrote).
fn small_files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            small_files_under(&p, out);
        } else if meta.is_file() && p.file_name().is_some_and(|n| n != "data") {
            out.push(p);
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Checks, through an S3 client of its own, that the manifest of `id` is
/// in the bucket with every chunk it names; returns the number of chunks.
fn check_in_s3(c: &ManagedCluster, dest: &Destination, id: u64, data_blocks: usize) -> usize {
    c.rt.block_on(async {
        let ids = dest.list_manifests().await.expect("list manifests in S3");
        assert!(ids.contains(&id), "manifest {id} not in S3: {ids:?}");
        let m = dest.get_manifest(id).await.expect("read manifest from S3");
        assert_eq!(m.snapshot_id, id);
        assert_eq!(
            m.blocks.len(),
            data_blocks,
            "manifest {id} names {} blocks",
            m.blocks.len()
        );
        let listed = dest.list_chunks().await.expect("list chunks in S3");
        for (block, chunk) in &m.blocks {
            assert!(
                dest.has_chunk(chunk).await.expect("head chunk"),
                "block {block} of snapshot {id}: chunk {} missing in S3",
                chunk.hex()
            );
            assert!(listed.contains(chunk), "chunk {} not listed", chunk.hex());
        }
        m.blocks.len()
    })
}

#[test]
fn the_s3_destination_end_to_end() {
    let started = Instant::now();
    let Some(server) = s3_server_or_skip("the_s3_destination_end_to_end") else {
        return;
    };
    let secret = SECRET_ACCESS_KEY.as_bytes();

    // Credentials in an owner-only file, outside the cluster's directory.
    let creds_dir = tempfile::Builder::new()
        .prefix("basalt-creds-")
        .tempdir()
        .unwrap();
    let creds = creds_dir.path().join("s3.credentials");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&creds)
            .unwrap();
        writeln!(
            f,
            "# test server\naccess_key_id = {ACCESS_KEY_ID}\nsecret_access_key = {SECRET_ACCESS_KEY}"
        )
        .unwrap();
    }
    assert_eq!(
        std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let root = tempfile::Builder::new()
        .prefix("basalt-snap-s3-")
        .tempdir()
        .unwrap();
    let s3_flag = format!(
        "s3=s3://{}/basalt,endpoint={},allow-http,credentials-file={}",
        server.bucket,
        server.endpoint,
        creds.display()
    );
    let local_flag = format!("local=file://{}/snaps", root.path().display());
    let args = vec![
        "--destination".to_owned(),
        s3_flag.clone(),
        "--destination".to_owned(),
        local_flag.clone(),
    ];
    let c = ManagedCluster::start_with_control_args(root.path(), 3, &args).unwrap();
    // The test's own client of both destinations, from the same flags.
    let s3 = Destination::open(&DestinationSpec::parse_flag(&s3_flag).unwrap()).unwrap();
    let local = Destination::open(&DestinationSpec::parse_flag(&local_flag).unwrap()).unwrap();
    let mut cli_out: Vec<String> = Vec::new();
    let mut cli = |args: &[&str]| -> serde_json::Value {
        let mut a = vec!["--output", "json"];
        a.extend_from_slice(args);
        let (ok, out, err) = c.cli(&a).unwrap();
        assert!(ok, "basalt {args:?}: {err}");
        cli_out.push(format!("basalt {args:?}\n{out}\n{err}"));
        let (_, table, err2) = c.cli(args).unwrap();
        cli_out.push(format!("basalt {args:?} (table)\n{table}\n{err2}"));
        serde_json::from_str(&out).unwrap()
    };

    // A full snapshot: 16 MiB of data in a 32 MiB volume.
    let size = 32 * MIB;
    cli(&["volume", "create", "v", "--size", "32M"]);
    let mut b = attach(&c, "v");
    let mut image = vec![0u8; size];
    let data = noise(21, 16 * MIB);
    b.write_at(4 << 20, &data).unwrap();
    image[4 * MIB..20 * MIB].copy_from_slice(&data);
    b.flush().unwrap();
    snapshot(&c, "v.s1").unwrap();
    let s1 = cli(&["snapshot", "show", "v.s1"]);
    assert_eq!(s1["state"], "COMPLETE", "{s1}");
    assert_eq!(
        s1["destination"], "s3",
        "s3 is the first, default destination"
    );
    assert_eq!(s1["progress"]["change_source"], "FULL", "{s1}");
    assert_eq!(s1["progress"]["data_bytes"], 16 * MIB as u64, "{s1}");
    let id1 = s1["id"].as_u64().unwrap();
    let img1 = image.clone();

    // The objects really are in the S3 server: through our own client, and
    // as files in s3s-fs's root under the prefix.
    let blocks1 = (16 * MIB) / BLOCK_SIZE as usize;
    let n1 = check_in_s3(&c, &s3, id1, blocks1);
    let on_disk = server
        .root
        .join(&server.bucket)
        .join(format!("basalt/manifests/{id1:020}"));
    assert!(on_disk.is_file(), "{} missing", on_disk.display());
    let local_manifests = c.rt.block_on(local.list_manifests()).unwrap();
    assert!(
        local_manifests.is_empty(),
        "the snapshot went to the local destination too: {local_manifests:?}"
    );

    // Restored from S3 byte for byte.
    assert!(
        restore(&c, "v.s1", "r1", size) == img1,
        "s1 restored from S3 differs"
    );

    // An incremental one: overwrite 1 MiB of the data, add 1 MiB elsewhere.
    let over = noise(22, MIB);
    b.write_at(4 << 20, &over).unwrap();
    image[4 * MIB..5 * MIB].copy_from_slice(&over);
    let more = noise(23, MIB);
    b.write_at(24 << 20, &more).unwrap();
    image[24 * MIB..25 * MIB].copy_from_slice(&more);
    b.flush().unwrap();
    let s2 = snapshot(&c, "v.s2").unwrap();
    assert_eq!(s2["state"], "COMPLETE", "{s2}");
    assert_eq!(s2["destination"], "s3", "{s2}");
    assert_eq!(s2["parent_id"], id1, "{s2}");
    assert_eq!(s2["progress"]["change_source"], "CHANGE_MAP", "{s2}");
    let inc = s2["progress"]["bytes_uploaded"].as_u64().unwrap();
    assert!(
        inc <= 3 * MIB as u64,
        "incremental upload of {inc} bytes for 2 MiB of changes"
    );
    let id2 = s2["id"].as_u64().unwrap();
    let n2 = check_in_s3(&c, &s3, id2, blocks1 + 2);
    assert!(
        restore(&c, "v.s2", "r2", size) == image,
        "s2 restored from S3 differs"
    );
    println!("FIGURE S3: full snapshot {n1} chunks, incremental {n2} chunks, uploaded {inc} bytes");

    // Deleting the parent keeps the child whole in the bucket.
    cli(&["snapshot", "delete", "v.s1"]);
    let ids = c.rt.block_on(s3.list_manifests()).unwrap();
    assert_eq!(ids, vec![id2], "manifests left in S3");
    check_in_s3(&c, &s3, id2, blocks1 + 2);
    let (ok, _, _) = c.cli(&["snapshot", "show", "v.s1"]).unwrap();
    assert!(!ok, "a deleted snapshot is gone");

    // The secret never shows: CLI output of every kind...
    cli(&["snapshot", "show", "v.s2"]);
    let list = cli(&["snapshot", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    cli(&["volume", "show", "r1"]);
    cli(&["volume", "show", "r2"]);
    cli(&["volume", "list"]);
    cli(&["server", "list"]);
    assert!(cli_out.iter().any(|o| o.contains("\"s3\"")));
    for o in &cli_out {
        assert!(
            !contains(o.as_bytes(), secret),
            "the secret key is in CLI output: {o}"
        );
    }

    // ...every log of the cluster (control, servers, node, backends)...
    let mut logs = Vec::new();
    logs_under(root.path(), &mut logs);
    for want in ["control.log", "s1.log", "s2.log", "s3.log", "node1.log"] {
        assert!(
            logs.iter().any(|p| p.ends_with(want)),
            "{want} not found under {}: {logs:?}",
            root.path().display()
        );
    }
    let control_log = std::fs::read_to_string(root.path().join("control.log")).unwrap();
    assert!(
        control_log.contains("snapshot point taken"),
        "control.log does not log snapshots; the check below would prove nothing"
    );
    for p in &logs {
        let text = std::fs::read(p).unwrap();
        assert!(
            !contains(&text, secret),
            "the secret key is in {}",
            p.display()
        );
    }

    // ...the command lines of the processes that hold it...
    let mut procs = vec![&c.control, &c.node];
    procs.extend(c.servers.iter());
    for p in procs {
        let pid = p.pid().expect("running");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(!cmdline.is_empty(), "{} has no command line", p.name);
        assert!(
            !contains(&cmdline, secret),
            "the secret key is on the command line of {}",
            p.name
        );
    }
    let ctl = std::fs::read(format!("/proc/{}/cmdline", c.control.pid().unwrap())).unwrap();
    assert!(
        contains(&ctl, b"credentials-file="),
        "not the control service"
    );

    // ...and any state file holding it is owner-only.
    let mut files = Vec::new();
    small_files_under(root.path(), &mut files);
    let mut holders = Vec::new();
    for p in &files {
        let Ok(text) = std::fs::read(p) else { continue };
        if contains(&text, secret) {
            let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(
                mode,
                0o600,
                "{} holds the secret key with mode {mode:o}",
                p.display()
            );
            holders.push(p.strip_prefix(root.path()).unwrap().display().to_string());
        }
    }
    println!(
        "FIGURE files holding the S3 secret (all 0600): {holders:?}; test took {:?}",
        started.elapsed()
    );
}
