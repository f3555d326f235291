//! The direct block API end to end (like the EBS direct APIs), through the
//! CLI and the gRPC API of a real cluster: a raw ext4 image made by mke2fs
//! imported as a snapshot, exported back byte for byte, restored into a
//! volume that a real guest checks with e2fsck; ListChangedBlocks equal to
//! the blocks written between two snapshots; bad puts refused without
//! changing anything.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use basalt_proto::control as pb;
use basalt_tests::controlplane::ManagedCluster;
use basalt_tests::guest;
use basalt_tests::snaps::{attach, noise, snapshot, MIB};
use sha2::{Digest, Sha256};

const BLOCK: usize = 512 << 10;

fn sha(d: &[u8]) -> Vec<u8> {
    Sha256::digest(d).to_vec()
}

/// A 64 MiB ext4 image holding a few files, made on the host by mke2fs.
fn ext4_image(dir: &std::path::Path) -> std::path::PathBuf {
    let files = dir.join("content");
    std::fs::create_dir_all(files.join("sub")).unwrap();
    for i in 0..6u64 {
        std::fs::write(
            files.join(format!("f{i}")),
            noise(100 + i, (i as usize + 1) * 300_000),
        )
        .unwrap();
    }
    std::fs::write(files.join("sub/hello"), b"hello from the host\n").unwrap();
    let img = dir.join("ext4.raw");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(64 << 20).unwrap();
    drop(f);
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&files)
        .arg(&img)
        .output()
        .expect("mke2fs (e2fsprogs) is required");
    assert!(
        out.status.success(),
        "mke2fs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    img
}

#[test]
fn import_export_diff_and_bad_blocks() {
    assert!(
        guest::qemu_available(),
        "qemu-system-x86_64 is required: run scripts/setup.sh"
    );
    let image = guest::ensure_image().unwrap();
    let root = tempfile::Builder::new()
        .prefix("basalt-blocks-")
        .tempdir()
        .unwrap();
    let c = ManagedCluster::start(root.path(), 3).unwrap();

    // Import a raw ext4 image, export it back: byte for byte.
    let img = ext4_image(root.path());
    let imp = c
        .cli_json(&[
            "snapshot",
            "import",
            img.to_str().unwrap(),
            "--name",
            "ext4img",
        ])
        .expect("snapshot import");
    assert_eq!(imp["state"], "COMPLETE", "{imp}");
    let want = std::fs::read(&img).unwrap();
    let nonzero = want
        .chunks(BLOCK)
        .filter(|b| b.iter().any(|&x| x != 0))
        .count();
    assert_eq!(
        imp["blocks_sent"].as_u64(),
        Some(nonzero as u64),
        "zero blocks are not sent"
    );
    let shown = c.cli_json(&["snapshot", "show", "ext4img"]).unwrap();
    let p = &shown["progress"];
    assert_eq!(
        p["data_bytes"].as_u64(),
        Some((nonzero * BLOCK) as u64),
        "{shown}"
    );
    assert!(p["bytes_uploaded"].as_u64().unwrap() > 0, "{shown}");
    assert_eq!(shown["volume_id"], 0, "{shown}");
    let out = root.path().join("export.raw");
    c.cli_json(&["snapshot", "export", "ext4img", out.to_str().unwrap()])
        .expect("snapshot export");
    assert!(
        std::fs::read(&out).unwrap() == want,
        "exported image differs from the imported one"
    );

    // A volume from it: a real guest checks the filesystem and the files.
    c.cli_json(&["volume", "create", "fs", "--from-snapshot", "ext4img"])
        .unwrap();
    let a = c
        .cli_json(&["volume", "attach", "fs", "--node", "node1"])
        .unwrap();
    let socket = a["attachment"]["socket_path"].as_str().unwrap().to_owned();
    let script = "set -u\ne2fsck -fn /dev/vda > /tmp/fsck.out 2>&1; rc=$?\ncat /tmp/fsck.out\necho \"fsck rc=$rc\"\nmount -o ro /dev/vda /mnt || exit 2\ncat /mnt/sub/hello\nsha256sum /mnt/f5\numount /mnt\n";
    let run = image
        .run(
            std::path::Path::new(&socket),
            2,
            script,
            Duration::from_secs(300),
        )
        .unwrap();
    run.ensure_success().unwrap();
    assert!(run.output.contains("fsck rc=0"), "{}", run.output);
    assert!(run.output.contains("hello from the host"), "{}", run.output);
    let f5: String = sha(&noise(105, 6 * 300_000))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        run.output.contains(&f5),
        "file f5 differs in the guest: {}",
        run.output
    );
    c.cli_json(&["volume", "detach", "fs"]).unwrap();

    // ListChangedBlocks equals the blocks written between two snapshots.
    c.cli_json(&["volume", "create", "v", "--size", "32M"])
        .unwrap();
    let mut blk = attach(&c, "v");
    blk.write_at(0, &noise(1, 8 * MIB)).unwrap();
    blk.flush().unwrap();
    assert_eq!(snapshot(&c, "v.a").unwrap()["state"], "COMPLETE");
    let written: BTreeSet<u64> = [3u64, 10, 11, 40].into_iter().collect();
    for &b in &written {
        // 4 KiB inside the block (a partial write) changes the whole block.
        blk.write_at(b * BLOCK as u64 + 8192, &noise(b, 4096))
            .unwrap();
    }
    blk.flush().unwrap();
    assert_eq!(snapshot(&c, "v.b").unwrap()["state"], "COMPLETE");
    let diff = c.cli_json(&["snapshot", "diff", "v.a", "v.b"]).unwrap();
    let got: BTreeSet<u64> = diff
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["index"].as_u64().unwrap())
        .collect();
    assert_eq!(got, written, "{diff}");
    let (ok, table, _) = c.cli(&["snapshot", "diff", "v.a", "v.b"]).unwrap();
    assert!(
        ok && table.contains("4 blocks of 512 KiB differ"),
        "{table}"
    );

    // Bad puts are refused and change nothing.
    let mut cl = c.client().unwrap();
    let s =
        c.rt.block_on(cl.start_snapshot(pb::StartSnapshotRequest {
            name: "direct".into(),
            size_bytes: 4 << 20,
            ..Default::default()
        }))
        .unwrap()
        .into_inner();
    assert_eq!(s.state, "OPEN");
    let good = noise(9, BLOCK);
    let put = |cl: &mut _, index: u64, data: Vec<u8>, sum: Vec<u8>| {
        let cl: &mut basalt_proto::control::control_client::ControlClient<_> = cl;
        c.rt.block_on(cl.put_snapshot_block(pb::PutSnapshotBlockRequest {
            snapshot_id: s.id,
            block_index: index,
            data,
            sha256: sum,
        }))
    };
    let bad = [
        (1, good.clone(), sha(b"something else"), "SHA-256"),
        (8, good.clone(), sha(&good), "out of range"),
        (
            1,
            vec![7u8; BLOCK + 4096],
            sha(&vec![7u8; BLOCK + 4096]),
            "exactly",
        ),
        (1, good[..4096].to_vec(), sha(&good[..4096]), "exactly"),
    ];
    for (index, data, sum, why) in bad {
        let e = put(&mut cl, index, data, sum).expect_err("a bad put must fail");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(why), "{why}: {}", e.message());
    }
    let r = put(&mut cl, 2, good.clone(), sha(&good))
        .unwrap()
        .into_inner();
    assert!(r.stored);
    let complete =
        |cl: &mut basalt_proto::control::control_client::ControlClient<_>, n: u64, sum: Vec<u8>| {
            c.rt.block_on(cl.complete_snapshot(pb::CompleteSnapshotRequest {
                snapshot_id: s.id,
                changed_blocks: n,
                checksum: sum,
            }))
        };
    let checksum = sha(&sha(&good));
    let e = complete(&mut cl, 2, checksum.clone()).expect_err("wrong count");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let e = complete(&mut cl, 1, sha(b"x")).expect_err("wrong checksum");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let done = complete(&mut cl, 1, checksum).unwrap().into_inner();
    assert_eq!(done.state, "COMPLETE");
    let e = put(&mut cl, 3, good.clone(), sha(&good)).expect_err("put after complete");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    // Exactly the one good block, readable with its hash; zero elsewhere.
    let list =
        c.rt.block_on(cl.list_snapshot_blocks(pb::ListSnapshotBlocksRequest {
            snapshot: Some(pb::SnapshotRef {
                id: s.id,
                ..Default::default()
            }),
            ..Default::default()
        }))
        .unwrap()
        .into_inner();
    assert_eq!(list.blocks.len(), 1);
    assert_eq!(
        (list.blocks[0].index, &list.blocks[0].sha256),
        (2, &sha(&good))
    );
    let get = |cl: &mut basalt_proto::control::control_client::ControlClient<_>, i: u64| {
        c.rt.block_on(cl.get_snapshot_block(pb::GetSnapshotBlockRequest {
            snapshot: Some(pb::SnapshotRef {
                id: s.id,
                ..Default::default()
            }),
            block_index: i,
        }))
    };
    let b2 = get(&mut cl, 2).unwrap().into_inner();
    assert!(b2.data == good && b2.sha256 == sha(&good));
    let b0 = get(&mut cl, 0).unwrap().into_inner();
    assert!(b0.data.iter().all(|&x| x == 0) && b0.data.len() == BLOCK);
    let e = get(&mut cl, 8).expect_err("out of range");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    // An incremental import: only the changed block is sent.
    let mut img2 = want.clone();
    img2[5 * BLOCK + 100] ^= 0xff;
    let p2 = root.path().join("ext4-2.raw");
    std::fs::write(&p2, &img2).unwrap();
    let imp2 = c
        .cli_json(&[
            "snapshot",
            "import",
            p2.to_str().unwrap(),
            "--name",
            "ext4img2",
            "--parent",
            "ext4img",
        ])
        .unwrap();
    assert_eq!(imp2["blocks_sent"], 1, "{imp2}");
    let out2 = root.path().join("export2.raw");
    c.cli_json(&["snapshot", "export", "ext4img2", out2.to_str().unwrap()])
        .unwrap();
    assert!(std::fs::read(&out2).unwrap() == img2);
    let d = c
        .cli_json(&["snapshot", "diff", "ext4img", "ext4img2"])
        .unwrap();
    assert_eq!(d.as_array().unwrap().len(), 1, "{d}");
    assert_eq!(d[0]["index"], 5);
}
