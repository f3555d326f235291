//! The attacks of issue 12 against a real cluster (control, three storage
//! servers, a node manager; real TLS between real processes): each is
//! attempted and must be refused and change nothing. Prints the count.

use std::path::Path;

use basalt_auth::testing::TestPki;
use basalt_auth::{endpoint, server_only_tls, Credentials, Principal, Role};
use basalt_proto::control as pb;
use basalt_proto::control::control_client::ControlClient;
use basalt_proto::node::node_agent_client::NodeAgentClient;
use basalt_proto::storage_admin::storage_admin_client::StorageAdminClient;
use basalt_proto::wire::Status;
use basalt_proto::{node as npb, storage_admin as spb};
use basalt_tests::controlplane::ManagedCluster;
use basalt_tests::rogue::{Outcome, Try};
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::Code;

/// Attempts and refusals.
#[derive(Default)]
struct Score {
    attempts: u32,
    refused: u32,
}

impl Score {
    /// `r` must be refused with one of `codes`.
    fn refused<T: std::fmt::Debug>(
        &mut self,
        what: &str,
        r: Result<T, tonic::Status>,
        codes: &[Code],
    ) {
        self.attempts += 1;
        match r {
            Err(s) if codes.contains(&s.code()) => {
                self.refused += 1;
                eprintln!("refused ({:?}): {what}: {}", s.code(), s.message());
            }
            other => panic!("{what}: expected one of {codes:?}, got {other:?}"),
        }
    }
}

impl Score {
    /// A data-plane attempt must be refused at the handshake or answered
    /// with a refusal status, never `Ok`.
    fn data_plane(&mut self, what: &str, o: Outcome) {
        self.attempts += 1;
        match o {
            Outcome::Refused(why) => {
                self.refused += 1;
                eprintln!("refused (data plane): {what}: {why}");
            }
            Outcome::Wrote(s) if s != Status::Ok => {
                self.refused += 1;
                eprintln!("refused (data plane, {s:?}): {what}");
            }
            Outcome::Wrote(s) => panic!("{what}: the write was answered {s:?}"),
        }
    }
}

/// A write frame over plain TCP to a data port (no TLS at all).
fn raw_write(addr: &str, vid: u64, epoch: u64) -> Outcome {
    use basalt_proto::wire::{read_frame, write_frame, Header, Opcode};
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let data = [0xEEu8; 4096];
    let h = Header {
        length: 4096,
        ..Header::request(Opcode::Write, 1, vid, epoch)
    }
    .with_payload(&data);
    let _ = write_frame(&mut s, &h, &[&data]);
    let _ = s.flush();
    let mut buf = Vec::new();
    match read_frame(&mut s, &mut buf) {
        Ok(r) => Outcome::Wrote(r.status),
        Err(e) => Outcome::Refused(format!("closed: {e}")),
    }
}

fn channel(c: &ManagedCluster, addr: &str, tls: ClientTlsConfig) -> Result<Channel, tonic::Status> {
    c.rt.block_on(endpoint(addr, tls).unwrap().connect())
        .map_err(|e| tonic::Status::unavailable(format!("{e:?}")))
}

fn control_as(
    c: &ManagedCluster,
    tls: ClientTlsConfig,
) -> Result<ControlClient<Channel>, tonic::Status> {
    Ok(ControlClient::new(channel(
        c,
        &format!("127.0.0.1:{}", c.base),
        tls,
    )?))
}

fn creds_of(dir: &Path) -> Credentials {
    Credentials::load(&dir.join("tls")).expect("a process's credentials")
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

#[test]
fn every_attack_of_the_issue_is_refused() {
    let root = tempfile::Builder::new()
        .prefix("basalt-security-")
        .tempdir()
        .unwrap();
    let c = ManagedCluster::start(root.path(), 3).unwrap();
    let vol = c
        .cli_json(&["volume", "create", "victim", "--size", "64M"])
        .unwrap();
    let vid = vol["id"].as_u64().unwrap();
    let primary = vol["primary"]["server_id"].as_str().unwrap().to_owned();
    let control = Principal::control();
    let ca = std::fs::read_to_string(c.ca_file()).unwrap();
    let anonymous = server_only_tls(&ca, &control);
    let s1 = creds_of(&c.server_data_dir(0));
    let s2 = creds_of(&c.server_data_dir(1));
    let node1 = creds_of(&c.root.join("node"));
    let foreign = TestPki::new();
    let mut score = Score::default();
    let bad_auth = &[Code::Unauthenticated, Code::PermissionDenied];

    // 1. Anyone who reaches the port deletes a volume.
    let mut anon = control_as(&c, anonymous.clone()).unwrap();
    let del = || pb::DeleteVolumeRequest {
        volume: Some(pb::VolumeRef {
            id: vid,
            ..Default::default()
        }),
    };
    score.refused(
        "delete a volume without credentials",
        c.rt.block_on(anon.delete_volume(del())),
        &[Code::Unauthenticated],
    );
    let fake = basalt_auth::token::generate();
    score.refused(
        "delete a volume with a made-up token",
        c.rt.block_on(anon.delete_volume(with_token(del(), &fake))),
        &[Code::Unauthenticated],
    );
    let mut as_s2 = control_as(&c, s2.client_tls(&control)).unwrap();
    score.refused(
        "delete a volume as a storage server",
        c.rt.block_on(as_s2.delete_volume(del())),
        &[Code::PermissionDenied],
    );
    let mut as_node = control_as(&c, node1.client_tls(&control)).unwrap();
    score.refused(
        "delete a volume as a node manager",
        c.rt.block_on(as_node.delete_volume(del())),
        &[Code::PermissionDenied],
    );
    // Plain text never reaches the API.
    let plain = c.rt.block_on(async {
        let mut cl = ControlClient::connect(format!("http://127.0.0.1:{}", c.base))
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        cl.delete_volume(del()).await
    });
    score.refused(
        "delete a volume over plain text",
        plain,
        &[Code::Unavailable, Code::Unknown, Code::Internal],
    );

    // 2. Register a fake storage server (and steal a real one's id).
    let fake_server = |id: &str| pb::RegisterStorageServerRequest {
        server: Some(pb::StorageServer {
            server_id: id.into(),
            data_address: "10.6.6.6:1".into(),
            admin_address: "10.6.6.6:2".into(),
            capacity_bytes: 1 << 50,
            free_bytes: 1 << 50,
            ..Default::default()
        }),
    };
    score.refused(
        "register a storage server without a certificate",
        c.rt.block_on(anon.register_storage_server(fake_server("evil"))),
        &[Code::Unauthenticated],
    );
    score.refused(
        "register as s1 with s2's certificate",
        c.rt.block_on(as_s2.register_storage_server(fake_server("s1"))),
        &[Code::PermissionDenied],
    );
    score.refused(
        "heartbeat as s1 with s2's certificate",
        c.rt.block_on(
            as_s2.storage_server_heartbeat(pb::StorageServerHeartbeatRequest {
                server_id: "s1".into(),
                ..Default::default()
            }),
        ),
        &[Code::PermissionDenied],
    );
    // Trusts the real CA, presents a certificate of another one.
    let mut forged = foreign.issue(Role::Storage, "s1");
    forged.ca_pem = ca.clone();
    let r = control_as(&c, forged.client_tls(&control))
        .and_then(|mut cl| c.rt.block_on(cl.register_storage_server(fake_server("s1"))));
    score.refused(
        "register with a certificate of another CA",
        r,
        &[Code::Unavailable, Code::Unknown, Code::Cancelled],
    );
    score.refused(
        "register as s1 with a node certificate",
        c.rt.block_on(as_node.register_storage_server(fake_server("s1"))),
        &[Code::PermissionDenied],
    );

    // 3. Drain the real servers onto the fake one.
    score.refused(
        "drain a storage server as a storage server",
        c.rt.block_on(as_s2.drain_storage_server(pb::DrainStorageServerRequest {
            server_id: "s1".into(),
        })),
        &[Code::PermissionDenied],
    );
    score.refused(
        "drain a storage server without credentials",
        c.rt.block_on(anon.drain_storage_server(pb::DrainStorageServerRequest {
            server_id: "s1".into(),
        })),
        &[Code::Unauthenticated],
    );

    // 4. Drop mirrors through ReportUnreachable, posing as the primary.
    let report = |reporter: &str| pb::ReportUnreachableRequest {
        volume_id: vid,
        epoch: vol["epoch"].as_u64().unwrap_or(1),
        data_address: "127.0.0.1:1".into(),
        reporter: reporter.into(),
        attachment: 0,
    };
    let not_primary = if primary == "s2" { &s1 } else { &s2 };
    let mut as_other = control_as(&c, not_primary.client_tls(&control)).unwrap();
    score.refused(
        "report as the primary with another server's certificate",
        c.rt.block_on(as_other.report_unreachable(report(&primary))),
        &[Code::PermissionDenied],
    );
    score.refused(
        "report for a volume not attached to this node",
        c.rt.block_on(as_node.report_unreachable(report(&primary))),
        &[Code::PermissionDenied],
    );
    score.refused(
        "report without credentials",
        c.rt.block_on(anon.report_unreachable(report(&primary))),
        &[Code::Unauthenticated],
    );

    // 5. Call the storage admin and node APIs directly.
    let admin_addr = |i: u16| format!("127.0.0.1:{}", c.base + 11 + 2 * i);
    let s1_principal = Principal::new(Role::Storage, "s1").unwrap();
    let delete_copy = spb::DeleteCopyRequest { volume_id: vid };
    let r = channel(&c, &admin_addr(0), s2.client_tls(&s1_principal)).and_then(|ch| {
        c.rt.block_on(StorageAdminClient::new(ch).delete_copy(delete_copy))
    });
    score.refused("delete a copy on s1 as s2", r, &[Code::PermissionDenied]);
    let r = channel(&c, &admin_addr(0), server_only_tls(&ca, &s1_principal)).and_then(|ch| {
        c.rt.block_on(StorageAdminClient::new(ch).delete_copy(delete_copy))
    });
    score.refused(
        "delete a copy on s1 without a certificate",
        r,
        &[Code::Unauthenticated],
    );
    let r = channel(
        &c,
        &admin_addr(0),
        {
            let mut fc = foreign.control();
            fc.ca_pem = ca.clone();
            fc
        }
        .client_tls(&s1_principal),
    )
    .and_then(|ch| {
        c.rt.block_on(StorageAdminClient::new(ch).delete_copy(delete_copy))
    });
    score.refused(
        "delete a copy on s1 as the control service of another CA",
        r,
        &[Code::Unavailable, Code::Unknown, Code::Cancelled],
    );
    let node_principal = Principal::new(Role::Node, "node1").unwrap();
    let detach = npb::DetachRequest { volume_id: vid };
    let r = channel(
        &c,
        &format!("127.0.0.1:{}", c.base + 1),
        s1.client_tls(&node_principal),
    )
    .and_then(|ch| c.rt.block_on(NodeAgentClient::new(ch).detach(detach)));
    score.refused(
        "detach on the node as a storage server",
        r,
        &[Code::PermissionDenied],
    );
    let r = channel(
        &c,
        &format!("127.0.0.1:{}", c.base + 1),
        server_only_tls(&ca, &node_principal),
    )
    .and_then(|ch| c.rt.block_on(NodeAgentClient::new(ch).detach(detach)));
    score.refused(
        "detach on the node without a certificate",
        r,
        &[Code::Unauthenticated],
    );

    // 6. Join tokens: made up, used twice, for a revoked id; joining as
    //    an operator is not possible.
    let (csr, _key) = basalt_auth::new_csr(&Principal::new(Role::Storage, "s9").unwrap()).unwrap();
    score.refused(
        "join with a made-up token",
        c.rt.block_on(anon.join(pb::JoinRequest {
            token: fake.clone(),
            csr_pem: csr.clone(),
        })),
        &[Code::FailedPrecondition],
    );
    let t = c
        .cli_json(&["join-token", "create", "--role", "storage", "--id", "s9"])
        .unwrap();
    let token = t["token"].as_str().unwrap().to_owned();
    let joined =
        c.rt.block_on(anon.join(pb::JoinRequest {
            token: token.clone(),
            csr_pem: csr.clone(),
        }))
        .expect("a good token joins once");
    assert_eq!(
        (joined.get_ref().role.as_str(), joined.get_ref().id.as_str()),
        ("storage", "s9")
    );
    score.refused(
        "join twice with one token",
        c.rt.block_on(anon.join(pb::JoinRequest {
            token,
            csr_pem: csr.clone(),
        })),
        &[Code::FailedPrecondition],
    );
    let (ok, _, err) = c
        .cli(&[
            "join-token",
            "create",
            "--role",
            "storage",
            "--id",
            "Not_A_Label",
        ])
        .unwrap();
    assert!(!ok && err.contains("lowercase"), "{err}");
    score.refused(
        "a join token from a storage server",
        c.rt.block_on(as_s2.create_join_token(pb::CreateJoinTokenRequest {
            role: "storage".into(),
            id: "s10".into(),
            ttl_secs: 60,
        })),
        bad_auth,
    );

    // 7. A revoked identity is refused from then on.
    c.cli_json(&["identity", "revoke", "--role", "storage", "--id", "s2"])
        .unwrap();
    score.refused(
        "heartbeat of a revoked storage server",
        c.rt.block_on(
            as_s2.storage_server_heartbeat(pb::StorageServerHeartbeatRequest {
                server_id: "s2".into(),
                ..Default::default()
            }),
        ),
        &[Code::Unauthenticated],
    );
    let (ok, _, err) = c
        .cli(&["join-token", "create", "--role", "storage", "--id", "s2"])
        .unwrap();
    assert!(!ok && err.contains("revoked"), "{err}");

    // 8. A tenant acts on another tenant's volume, or beyond its tenant;
    //    then with its token revoked.
    c.cli_json(&["tenant", "create", "mallory"]).unwrap();
    let t = c
        .cli_json(&["token", "create", "--tenant", "mallory"])
        .unwrap();
    let mallory = t["token"].as_str().unwrap().to_owned();
    let victim = || {
        Some(pb::VolumeRef {
            id: vid,
            ..Default::default()
        })
    };
    score.refused(
        "a tenant describes another tenant's volume",
        c.rt.block_on(anon.describe_volume(with_token(
            pb::DescribeVolumeRequest { volume: victim() },
            &mallory,
        ))),
        &[Code::NotFound],
    );
    score.refused(
        "a tenant deletes another tenant's volume",
        c.rt.block_on(anon.delete_volume(with_token(del(), &mallory))),
        &[Code::NotFound],
    );
    score.refused(
        "a tenant reads a block of another tenant's volume",
        c.rt.block_on(anon.read_volume_block(with_token(
            pb::ReadVolumeBlockRequest {
                volume: victim(),
                block_index: 0,
            },
            &mallory,
        ))),
        &[Code::NotFound],
    );
    score.refused(
        "a tenant creates a volume in another tenant",
        c.rt.block_on(anon.create_volume(with_token(
            pb::CreateVolumeRequest {
                name: "planted".into(),
                tenant: "default".into(),
                size_bytes: 64 << 20,
                ..Default::default()
            },
            &mallory,
        ))),
        &[Code::PermissionDenied],
    );
    score.refused(
        "a tenant drains a storage server",
        c.rt.block_on(anon.drain_storage_server(with_token(
            pb::DrainStorageServerRequest {
                server_id: "s1".into(),
            },
            &mallory,
        ))),
        &[Code::PermissionDenied],
    );
    score.refused(
        "a tenant makes itself an admin token",
        c.rt.block_on(anon.create_api_token(with_token(
            pb::CreateApiTokenRequest {
                admin: true,
                ..Default::default()
            },
            &mallory,
        ))),
        &[Code::PermissionDenied],
    );
    let id = t["id"].as_str().unwrap();
    c.cli_json(&["token", "revoke", id]).unwrap();
    score.refused(
        "a call with a revoked tenant token",
        c.rt.block_on(anon.list_volumes(with_token(pb::ListVolumesRequest::default(), &mallory))),
        &[Code::Unauthenticated],
    );

    // The data plane: TLS with certificates of the cluster, and for a
    // backend a grant the control service signed for its node, volume and
    // attachment (proto/WIRE.md).
    let vol = c.cli_json(&["volume", "show", "victim"]).unwrap();
    let primary_addr = vol["primary"]["address"].as_str().unwrap().to_owned();
    let mirror_id = vol["mirrors"][0]["server_id"].as_str().unwrap().to_owned();
    let mirror_addr = vol["mirrors"][0]["address"].as_str().unwrap().to_owned();
    let epoch = vol["epoch"].as_u64().unwrap_or(1);
    let ca_key = c.cluster_ca().unwrap();
    let grant = |node: &str, volume_id: u64, read_only: bool, expires_unix: u64| {
        ca_key
            .sign_grant(&basalt_auth::Grant {
                volume_id,
                attachment: 0,
                node: node.into(),
                read_only,
                expires_unix,
            })
            .unwrap()
    };
    let later = basalt_auth::grant::now_unix() + 3600;
    let backend = |grant: Vec<u8>| basalt_proto::wire::Hello {
        role: basalt_proto::wire::PeerRole::Backend,
        volume_id: vid,
        attachment: 0,
        grant,
    };
    let forged = foreign
        .ca
        .sign_grant(&basalt_auth::Grant {
            volume_id: vid,
            attachment: 0,
            node: node1.principal.id.clone(),
            read_only: false,
            expires_unix: later,
        })
        .unwrap();
    let node_id = node1.principal.id.clone();
    // A certificate of another CA, presented by a client that trusts ours.
    let mut foreign_node = foreign.issue(Role::Node, &node_id);
    foreign_node.ca_pem = ca.clone();
    let attempts: Vec<(
        &str,
        Option<&Credentials>,
        basalt_proto::wire::Hello,
        bool,
        &str,
    )> = vec![
        (
            "write to a primary without TLS",
            None,
            backend(grant(&node_id, vid, false, later)),
            false,
            "raw",
        ),
        (
            "write to a primary without a client certificate",
            None,
            backend(grant(&node_id, vid, false, later)),
            false,
            "primary",
        ),
        (
            "write with a certificate of another CA",
            Some(&foreign_node),
            backend(grant(&node_id, vid, false, later)),
            false,
            "primary",
        ),
        (
            "write with a grant signed by another CA",
            Some(&node1),
            backend(forged),
            false,
            "primary",
        ),
        (
            "write with an expired grant",
            Some(&node1),
            backend(grant(&node_id, vid, false, 1)),
            false,
            "primary",
        ),
        (
            "write with a grant for another volume",
            Some(&node1),
            backend(grant(&node_id, vid + 1, false, later)),
            false,
            "primary",
        ),
        (
            "write with another node's grant",
            Some(&node1),
            backend(grant("other-node", vid, false, later)),
            false,
            "primary",
        ),
        (
            "write as a backend with a storage server's certificate",
            Some(&s2),
            backend(grant(&s2.principal.id, vid, false, later)),
            false,
            "primary",
        ),
        (
            "write with a read-only grant",
            Some(&node1),
            backend(grant(&node_id, vid, true, later)),
            false,
            "primary",
        ),
        (
            "replicate to a mirror without a client certificate",
            None,
            basalt_proto::wire::Hello::replication(),
            true,
            "mirror",
        ),
        (
            "replicate to a mirror with a node's certificate",
            Some(&node1),
            basalt_proto::wire::Hello::replication(),
            true,
            "mirror",
        ),
    ];
    for (what, creds, hello, replica, to) in attempts {
        let (addr, server_id) = if to == "mirror" {
            (&mirror_addr, &mirror_id)
        } else {
            (&primary_addr, &primary)
        };
        let outcome = if to == "raw" {
            raw_write(addr, vid, epoch)
        } else {
            basalt_tests::rogue::attempt(&Try {
                addr,
                server_id,
                creds,
                ca_pem: &ca,
                hello,
                volume_id: vid,
                replica,
                epoch,
            })
            .unwrap()
        };
        score.data_plane(what, outcome);
    }
    // A storage server that is not the volume's primary replicating to
    // its mirror: connected (it is a cluster member), every frame refused.
    let third = creds_of(&c.server_data_dir(2));
    let not_primary = [&s1, &s2, &third]
        .into_iter()
        .find(|s| s.principal.id != primary && s.principal.id != mirror_id)
        .cloned()
        .unwrap();
    let o = basalt_tests::rogue::attempt(&Try {
        addr: &mirror_addr,
        server_id: &mirror_id,
        creds: Some(&not_primary),
        ca_pem: &ca,
        hello: basalt_proto::wire::Hello::replication(),
        volume_id: vid,
        replica: true,
        epoch,
    })
    .unwrap();
    assert_eq!(o, Outcome::Wrote(Status::WrongRole), "{o:?}");
    score.data_plane(
        "replicate to a mirror from a server that is not its primary",
        o,
    );
    // Nothing landed on either copy.
    for (id, _) in [(&primary, 0), (&mirror_id, 1)] {
        let i: usize = id[1..].parse::<usize>().unwrap() - 1;
        let data = c
            .server_data_dir(i)
            .join("copies")
            .join(vid.to_string())
            .join("data");
        let bytes = std::fs::read(&data).unwrap();
        assert!(!bytes.contains(&0xEE), "a refused write landed on {id}");
    }

    // Nothing changed: the volume is there, no server "evil" or stolen
    // address registered, s1 not draining.
    let v = c.cli_json(&["volume", "show", "victim"]).unwrap();
    assert_eq!(v["id"].as_u64(), Some(vid));
    let all = c.cli_json(&["volume", "list"]).unwrap();
    assert_eq!(
        all.as_array().map(Vec::len),
        Some(1),
        "nothing planted: {all}"
    );
    let servers = c.cli_json(&["server", "list"]).unwrap();
    for s in servers.as_array().unwrap() {
        assert!(
            !s["data_address"]
                .as_str()
                .unwrap_or("")
                .starts_with("10.6.6.6"),
            "{s}"
        );
        assert_ne!(s["server_id"], "evil");
        if s["server_id"] == "s1" {
            assert_ne!(s["state"], "DRAINING", "{s}");
        }
    }
    eprintln!(
        "security: {} attacks attempted, {} refused",
        score.attempts, score.refused
    );
    assert_eq!(score.attempts, score.refused);
}
