//! Primary failures never reach the guest: requests wait, the queue
//! reconnects (to wherever the layout points) and resubmits them.

mod common;

use std::time::Duration;

use basalt_storage::testing::LocalServer;
use common::blk::Blk;
use common::{init_logging, pattern, wait_until, Backend, Harness, Opts};

const MIB: usize = 1 << 20;

#[test]
fn requests_survive_a_primary_restart() -> anyhow::Result<()> {
    let mut h = Harness::start(Opts {
        size: 16 << 20,
        ..Opts::default()
    })?;
    let mut model = vec![0u8; h.opts.size as usize];
    let mut blk = Blk::connect(&h.backend.socket, 2, 16 * MIB)?;
    pattern(1, &mut blk.mem()[..64 << 10]);
    model[..64 << 10].copy_from_slice(&blk.mem()[..64 << 10]);
    blk.write(0, 0, 0, 64 << 10, 1);
    blk.wait_ok(0, 1)?;

    // The primary goes away with nothing in flight; once every queue has
    // seen it go, requests arrive.
    drop(h.storage.take());
    let stats = h.backend.stats.clone();
    wait_until(
        "both queues to lose the primary",
        Duration::from_secs(10),
        || stats.total().retries >= 2,
    )?;
    pattern(2, &mut blk.mem()[MIB..6 * MIB]);
    model[MIB..6 * MIB].copy_from_slice(&blk.mem()[MIB..6 * MIB]);
    blk.write(0, MIB as u64, MIB, 5 * MIB, 2); // split in two wire requests
    pattern(3, &mut blk.mem()[7 * MIB..7 * MIB + 4096]);
    model[7 * MIB..7 * MIB + 4096].copy_from_slice(&blk.mem()[7 * MIB..7 * MIB + 4096]);
    blk.write(1, 7 * MIB as u64, 7 * MIB, 4096, 3);
    blk.read(1, 0, 8 * MIB, 64 << 10, 4);
    assert!(blk.kick(0)?.is_empty() && blk.kick(1)?.is_empty());

    // It comes back on another port; the layout is updated (as the control
    // service will do after a failover).
    let storage = LocalServer::start(&h.storage_dir(), "s1")?;
    h.backend.layout.update(storage.data_addr.to_string(), 1)?;
    blk.wait_ok(0, 1)?;
    blk.wait_ok(1, 2)?;
    assert!(blk.mem()[8 * MIB..8 * MIB + (64 << 10)] == model[..64 << 10]);

    drop(blk);
    let copy = storage.read_copy(h.opts.volume_id)?;
    assert!(
        copy[..model.len()] == model[..],
        "copy differs after resubmission"
    );
    let stats = h.backend.stats.total();
    assert!(
        stats.retries >= 2 && stats.reconnects >= 4 && stats.errors == 0,
        "{stats:?}"
    );
    Ok(())
}

#[test]
fn requests_in_flight_when_the_primary_dies_complete_after_it_returns() -> anyhow::Result<()> {
    let mut h = Harness::start(Opts {
        size: 16 << 20,
        ..Opts::default()
    })?;
    let mut model = vec![0u8; h.opts.size as usize];
    let mut blk = Blk::connect(&h.backend.socket, 2, 16 * MIB)?;
    pattern(9, &mut blk.mem()[..8 * MIB]);
    // 128 writes of 64 KiB over both queues, submitted but not awaited.
    let len = 64 << 10;
    for i in 0..128 {
        let off = i * len;
        model[off..off + len].copy_from_slice(&blk.mem()[off..off + len]);
        blk.write(i % 2, off as u64, off, len, i);
    }
    let mut done = blk.kick(0)?;
    done.extend(blk.kick(1)?);
    drop(h.storage.take());
    let before = done.len();

    let storage = LocalServer::start(&h.storage_dir(), "s1")?;
    h.backend.layout.update(storage.data_addr.to_string(), 1)?;
    let left0 = 64 - done.iter().filter(|(u, _)| u % 2 == 0).count();
    let left1 = 64 - done.iter().filter(|(u, _)| u % 2 == 1).count();
    done.extend(blk.wait(0, left0)?);
    done.extend(blk.wait(1, left1)?);
    assert!(
        done.iter().all(|&(_, ret)| ret == 0),
        "a guest request failed: {done:?}"
    );
    drop(blk);
    assert!(storage.read_copy(h.opts.volume_id)?[..model.len()] == model[..]);
    let stats = h.backend.stats.total();
    eprintln!("{before} of 128 completed before the primary died; {stats:?}");
    assert!(stats.retries >= 2 && stats.errors == 0, "{stats:?}");
    Ok(())
}

#[test]
fn wrong_role_is_retried_until_the_layout_names_the_primary() -> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da)?;
    std::fs::create_dir_all(&db)?;
    let opts = Opts {
        size: 8 << 20,
        queues: 1,
        ..Opts::default()
    };
    let a = LocalServer::start(&da, "a")?;
    a.create_primary(opts.volume_id, opts.size)?;
    let b = LocalServer::start(&db, "b")?;
    b.create_mirror(opts.volume_id, opts.size, "a")?;

    // Pointed at the mirror: it answers WrongRole, the request waits.
    let backend = Backend::start(dir.path().join("sock"), &b.data_addr.to_string(), &opts)?;
    let mut blk = Blk::connect(&backend.socket, 1, MIB)?;
    pattern(5, &mut blk.mem()[..8192]);
    let data = blk.mem()[..8192].to_vec();
    blk.write(0, 4096, 0, 8192, 1);
    assert!(blk.kick(0)?.is_empty());
    let stats = backend.stats.clone();
    wait_until(
        "the mirror to refuse the write",
        Duration::from_secs(10),
        || stats.total().retries >= 1,
    )?;
    assert!(
        backend.stats.total().retries >= 1,
        "{:?}",
        backend.stats.total()
    );

    backend.layout.update(a.data_addr.to_string(), 1)?;
    blk.wait_ok(0, 1)?;
    drop(blk);
    assert!(a.read_copy(opts.volume_id)?[4096..4096 + 8192] == data[..]);
    assert_eq!(backend.stats.total().errors, 0);
    Ok(())
}

#[test]
fn stale_epoch_is_never_acknowledged_and_waits_for_a_new_layout() -> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let sdir = dir.path().join("s");
    std::fs::create_dir_all(&sdir)?;
    let opts = Opts {
        size: 8 << 20,
        queues: 1,
        ..Opts::default()
    };
    let storage = LocalServer::start(&sdir, "s1")?;
    storage.create_primary(opts.volume_id, opts.size)?;
    let primary = storage.data_addr.to_string();

    // The control service moves the copy to epoch 2 and a backend at epoch
    // 2 writes: the copy now refuses epoch 1.
    storage.raise(opts.volume_id, 2, 0)?;
    let mut newer = common::args(&dir.path().join("new.sock"), &primary, &opts);
    newer.epoch = 2;
    let config = basalt_vhost_backend::Config::try_from(newer)?;
    let server = basalt_vhost_backend::Server::bind(config)?;
    let stop = server.stop_handle();
    let t = std::thread::spawn(move || server.run());
    {
        let mut blk = Blk::connect(&dir.path().join("new.sock"), 1, MIB)?;
        blk.mem()[..4096].fill(2);
        blk.write(0, 0, 0, 4096, 1);
        blk.wait_ok(0, 1)?;
    }
    stop.stop();
    t.join()
        .map_err(|_| anyhow::anyhow!("backend panicked"))??;

    // A fenced backend (epoch 1) gets StaleEpoch: its write waits, is never
    // applied, and is not failed either.
    let old = Backend::start(dir.path().join("old.sock"), &primary, &opts)?;
    let mut blk = Blk::connect(&old.socket, 1, MIB)?;
    blk.mem()[..4096].fill(1);
    blk.write(0, 0, 0, 4096, 1);
    assert!(blk.kick(0)?.is_empty());
    let stats = old.stats.clone();
    wait_until(
        "the fenced write to be refused",
        Duration::from_secs(10),
        || stats.total().retries >= 1,
    )?;
    assert!(blk.kick(0)?.is_empty(), "a fenced write must not complete");
    assert!(storage.read_copy(opts.volume_id)?[..4096]
        .iter()
        .all(|&b| b == 2));
    assert!(old.stats.total().retries >= 1);

    // The control service hands out the new epoch: the write goes through.
    old.layout.update(primary, 2)?;
    blk.wait_ok(0, 1)?;
    assert!(storage.read_copy(opts.volume_id)?[..4096]
        .iter()
        .all(|&b| b == 1));
    Ok(())
}

/// A primary that accepts connections (in the kernel) and never answers:
/// a stopped process or a blackholed network.
fn hung_primary() -> anyhow::Result<(std::net::TcpListener, String)> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?.to_string();
    Ok((l, addr))
}

#[test]
fn a_hung_primary_is_reported_and_the_new_layout_is_used() -> anyhow::Result<()> {
    use basalt_proto::control as pb;
    use basalt_storage::fake_control;
    use std::sync::{Arc, Mutex};

    init_logging();
    let dir = tempfile::tempdir()?;
    let sdir = dir.path().join("s");
    std::fs::create_dir_all(&sdir)?;
    // The copy the control service promotes.
    let storage = LocalServer::start(&sdir, "s2")?;
    let (_hung, hung_addr) = hung_primary()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let reports: Arc<Mutex<Vec<pb::ReportUnreachableRequest>>> = Arc::default();
    let new_primary = storage.data_addr.to_string();
    // The backend presents its node manager's certificate to the control
    // service, whose certificate comes from the same CA.
    let pki = basalt_storage::testing::shared_pki();
    let tls_dir = common::node_credentials(&pki, &dir.path().join("node-tls"), "n1");
    let control = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        let seen = reports.clone();
        let handler: fake_control::ReportHandler = Arc::new(move |r| {
            seen.lock().unwrap().push(r.clone());
            let primary_address = new_primary.clone();
            Box::pin(async move {
                Ok(tonic::Response::new(pb::ReportUnreachableResponse {
                    outcome: pb::ReportOutcome::FailedOver as i32,
                    epoch: 2,
                    primary_address,
                    mirror_addresses: vec![],
                }))
            })
        });
        tokio::spawn(fake_control::serve(l, &pki.control(), handler));
        anyhow::Ok(addr)
    })?;
    let opts = Opts {
        size: 8 << 20,
        control: Some(control.to_string()),
        tls_dir: Some(tls_dir),
        request_timeout_ms: 300,
        ..Opts::default()
    };
    storage.create_primary(opts.volume_id, opts.size)?;
    // The control service pushes the promoted copy's layout before it
    // answers the report.
    storage.raise(opts.volume_id, 2, 0)?;

    let backend = Backend::start(dir.path().join("vhost.sock"), &hung_addr, &opts)?;
    let mut blk = Blk::connect(&backend.socket, 2, MIB)?;
    pattern(5, &mut blk.mem()[..64 << 10]);
    let data = blk.mem()[..64 << 10].to_vec();
    blk.write(0, 0, 0, 64 << 10, 1);
    blk.read(1, 0, 128 << 10, 4096, 2);
    blk.wait_ok(0, 1)?;
    blk.wait_ok(1, 1)?;
    assert_eq!(
        backend.layout.snapshot().primary,
        storage.data_addr.to_string()
    );
    assert_eq!(backend.layout.epoch(), 2);
    let got = reports.lock().unwrap().clone();
    assert!(!got.is_empty(), "the backend reported its primary");
    assert_eq!(got[0].volume_id, opts.volume_id);
    assert_eq!(got[0].epoch, 1);
    assert_eq!(got[0].data_address, hung_addr);
    assert!(
        storage.read_copy(opts.volume_id)?[..64 << 10] == data[..],
        "the write landed on the new primary"
    );
    assert_eq!(backend.stats.total().errors, 0);
    Ok(())
}

/// One writer per volume: once the copy knows a newer attachment (a forced
/// attach elsewhere), this backend's requests are refused as Fenced; it
/// fails them (the guest sees EIO) instead of retrying, fails every later
/// one at once, and takes no layout any more. Nothing it sent lands.
#[test]
fn a_superseded_attachment_fails_every_request_and_writes_nothing() -> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let sdir = dir.path().join("s");
    std::fs::create_dir_all(&sdir)?;
    let opts = Opts {
        size: 8 << 20,
        queues: 1,
        attachment: 1,
        ..Opts::default()
    };
    let storage = LocalServer::start(&sdir, "s1")?;
    storage.create_primary(opts.volume_id, opts.size)?;
    storage.raise(opts.volume_id, 1, 1)?;
    let primary = storage.data_addr.to_string();
    let old = Backend::start(dir.path().join("old.sock"), &primary, &opts)?;
    let mut blk = Blk::connect(&old.socket, 1, MIB)?;
    blk.mem()[..4096].fill(1);
    blk.write(0, 0, 0, 4096, 1);
    blk.wait_ok(0, 1)?;

    // Attached elsewhere with force: attachment 2, same epoch.
    storage.raise(opts.volume_id, 1, 2)?;
    blk.mem()[..4096].fill(6);
    blk.write(0, 0, 0, 4096, 2);
    let done = blk.wait(0, 1)?;
    assert_eq!(done.len(), 1);
    assert_ne!(
        done[0].1, 0,
        "a fenced write must fail, not hang or succeed"
    );
    assert!(old.layout.is_fenced());
    // Later requests fail at once, reads included; a new layout is refused.
    assert!(old.layout.update(primary.clone(), 5).is_err());
    blk.write(0, 4096, 0, 4096, 3);
    blk.read(0, 0, 8192, 4096, 4);
    for (user, ret) in blk.wait(0, 2)? {
        assert_ne!(ret, 0, "request {user} of a fenced backend succeeded");
    }
    let copy = storage.read_copy(opts.volume_id)?;
    assert!(
        copy[..4096].iter().all(|&b| b == 1),
        "a fenced write landed"
    );
    assert!(
        copy[4096..8192].iter().all(|&b| b == 0),
        "a fenced write landed"
    );
    assert!(old.stats.total().errors >= 3);
    Ok(())
}

/// A backend given a certificate of another cluster's CA next to this
/// cluster's CA refuses to start, saying why.
#[test]
fn a_backend_with_a_certificate_from_another_ca_does_not_start() -> anyhow::Result<()> {
    use basalt_proto::control as pb;
    use basalt_storage::fake_control;
    use basalt_storage::testing::TestPki;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    init_logging();
    let dir = tempfile::tempdir()?;
    let (_hung, hung_addr) = hung_primary()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let pki = TestPki::new();
    let reports = Arc::new(AtomicUsize::new(0));
    let control = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        let seen = reports.clone();
        let handler: fake_control::ReportHandler = Arc::new(move |_| {
            seen.fetch_add(1, Ordering::SeqCst);
            Box::pin(async {
                Ok(tonic::Response::new(pb::ReportUnreachableResponse {
                    outcome: pb::ReportOutcome::FailedOver as i32,
                    epoch: 2,
                    primary_address: "127.0.0.1:9".into(),
                    mirror_addresses: vec![],
                }))
            })
        });
        tokio::spawn(fake_control::serve(l, &pki.control(), handler));
        anyhow::Ok(addr)
    })?;
    // A node certificate of another CA next to this cluster's CA does not
    // even load...
    let tls_dir = dir.path().join("node-tls");
    let other = TestPki::new();
    let mut forged = other.issue(basalt_auth::Role::Node, "n1");
    forged.ca_pem = pki.ca_pem().to_owned();
    forged.save(&tls_dir)?;
    let opts = Opts {
        size: 8 << 20,
        queues: 1,
        control: Some(format!("https://{control}")),
        tls_dir: Some(tls_dir.clone()),
        request_timeout_ms: 300,
        ..Opts::default()
    };
    let Err(e) = Backend::start(dir.path().join("forged.sock"), &hung_addr, &opts) else {
        panic!("a backend started with a forged certificate");
    };
    assert!(
        format!("{e:#}").contains("does not verify against the cluster CA"),
        "{e:#}"
    );
    // (That the control service refuses another cluster's certificates is
    // tested at its end: auth's unit tests and tests/tests/security.rs.)
    assert_eq!(reports.load(Ordering::SeqCst), 0, "a report got through");
    Ok(())
}
