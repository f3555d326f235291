//! The `basalt snapshot` commands and the `--wait` of snapshot uploads and
//! volume hydration, against a scripted control service on loopback (stderr
//! is a pipe here: plain progress lines, no bar).

use std::collections::HashMap;
use std::process::Command;
use std::sync::Mutex;

use basalt_proto::control as pb;
use basalt_proto::control::control_server::{Control, ControlServer};
use serde_json::Value;
use tonic::{Request, Response, Status};

type R<T> = Result<Response<T>, Status>;

const SNAPSHOT_BLOCKS: u64 = 40;

/// Snapshot 7 (`s1`) uploads 10 blocks a poll; snapshot 9 (`bad`) fails on
/// the second poll; snapshot 8 (`flaky`) answers its first poll UNAVAILABLE. Volumes created from a snapshot load 15 blocks a poll;
/// volume `gone` drops its hydration once complete.
#[derive(Default)]
struct Mock {
    polls: Mutex<HashMap<u64, u64>>,
    lists: Mutex<Vec<pb::ListSnapshotsRequest>>,
    created: Mutex<Vec<pb::CreateVolumeRequest>>,
}

impl Mock {
    fn poll(&self, id: u64) -> u64 {
        let mut p = self.polls.lock().unwrap();
        let n = p.entry(id).or_default();
        *n += 1;
        *n
    }
}

fn snapshot(id: u64, name: &str, state: &str, done: u64) -> pb::Snapshot {
    pb::Snapshot {
        id,
        name: name.into(),
        tenant: "default".into(),
        volume_id: 3,
        volume_name: "db1".into(),
        state: state.into(),
        destination: "local".into(),
        size_bytes: 20 << 20,
        created_at: 1_700_000_000,
        progress: Some(pb::SnapshotProgress {
            blocks_total: if done == 0 && state == "CREATING" {
                0
            } else {
                SNAPSHOT_BLOCKS
            },
            blocks_done: done,
            bytes_uploaded: done << 16,
            change_source: "FULL".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn volume(id: u64, name: &str, present: u64, drop_when_done: bool) -> pb::Volume {
    let complete = present >= SNAPSHOT_BLOCKS;
    pb::Volume {
        id,
        name: name.into(),
        tenant: "default".into(),
        size_bytes: 20 << 20,
        state: "AVAILABLE".into(),
        source_snapshot_id: 7,
        hydration: (!(complete && drop_when_done)).then_some(pb::Hydration {
            snapshot_id: 7,
            blocks_total: SNAPSHOT_BLOCKS,
            blocks_present: present.min(SNAPSHOT_BLOCKS),
            bytes_fetched: present.min(SNAPSHOT_BLOCKS) << 16,
            complete,
            error: String::new(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Control for Mock {
    async fn create_snapshot(&self, r: Request<pb::CreateSnapshotRequest>) -> R<pb::Snapshot> {
        let r = r.into_inner();
        assert_eq!(r.volume.map(|v| v.name), Some("db1".to_owned()));
        let id = match r.name.as_str() {
            "bad" => 9,
            "flaky" => 8,
            _ => 7,
        };
        Ok(Response::new(snapshot(id, &r.name, "CREATING", 0)))
    }

    async fn describe_snapshot(&self, r: Request<pb::DescribeSnapshotRequest>) -> R<pb::Snapshot> {
        let sr = r.into_inner().snapshot.unwrap_or_default();
        let id = match (sr.id, sr.name.as_str()) {
            (0, "s1") => 7,
            (0, n) => return Err(Status::not_found(format!("snapshot {n:?} not found"))),
            (id, _) => id,
        };
        let n = self.poll(id);
        if id == 8 && n == 1 {
            return Err(Status::unavailable("control service restarting"));
        }
        Ok(Response::new(match id {
            9 if n >= 2 => {
                let mut s = snapshot(9, "bad", "FAILED", 10);
                s.failure = "destination unreachable".into();
                s
            }
            9 => snapshot(9, "bad", "CREATING", 10),
            _ => {
                let done = (10 * n.saturating_sub(u64::from(id == 8))).min(SNAPSHOT_BLOCKS);
                let state = if done == SNAPSHOT_BLOCKS {
                    "COMPLETE"
                } else {
                    "CREATING"
                };
                snapshot(id, if id == 8 { "flaky" } else { "s1" }, state, done)
            }
        }))
    }

    async fn list_snapshots(
        &self,
        r: Request<pb::ListSnapshotsRequest>,
    ) -> R<pb::ListSnapshotsResponse> {
        let r = r.into_inner();
        self.lists.lock().unwrap().push(r.clone());
        let all: Vec<_> = (1..=5)
            .map(|i| snapshot(i, &format!("s{i}"), "COMPLETE", SNAPSHOT_BLOCKS))
            .collect();
        let from: usize = if r.page_token.is_empty() {
            0
        } else {
            r.page_token
                .parse()
                .map_err(|_| Status::invalid_argument("bad token"))?
        };
        let to = (from
            + if r.page_size == 0 {
                100
            } else {
                r.page_size as usize
            })
        .min(all.len());
        Ok(Response::new(pb::ListSnapshotsResponse {
            snapshots: all[from..to].to_vec(),
            next_page_token: if to < all.len() {
                to.to_string()
            } else {
                String::new()
            },
        }))
    }

    async fn delete_snapshot(
        &self,
        r: Request<pb::DeleteSnapshotRequest>,
    ) -> R<pb::DeleteSnapshotResponse> {
        match r.into_inner().snapshot.unwrap_or_default().id {
            7 => Ok(Response::new(pb::DeleteSnapshotResponse {})),
            _ => Err(Status::failed_precondition(
                "volume 12 still loads snapshot 9",
            )),
        }
    }

    async fn create_volume(&self, r: Request<pb::CreateVolumeRequest>) -> R<pb::Volume> {
        let r = r.into_inner();
        self.created.lock().unwrap().push(r.clone());
        let id = if r.name == "gone" { 12 } else { 11 };
        Ok(Response::new(volume(id, &r.name, 0, id == 12)))
    }

    async fn describe_volume(&self, r: Request<pb::DescribeVolumeRequest>) -> R<pb::Volume> {
        let id = r.into_inner().volume.unwrap_or_default().id;
        let n = self.poll(100 + id);
        let name = if id == 12 { "gone" } else { "db2" };
        Ok(Response::new(volume(id, name, 15 * n, id == 12)))
    }

    async fn delete_volume(
        &self,
        _: Request<pb::DeleteVolumeRequest>,
    ) -> R<pb::DeleteVolumeResponse> {
        Err(Status::unimplemented(""))
    }
    async fn list_volumes(&self, _: Request<pb::ListVolumesRequest>) -> R<pb::ListVolumesResponse> {
        Err(Status::unimplemented(""))
    }
    async fn resize_volume(&self, _: Request<pb::ResizeVolumeRequest>) -> R<pb::Volume> {
        Err(Status::unimplemented(""))
    }
    async fn attach_volume(&self, _: Request<pb::AttachVolumeRequest>) -> R<pb::Volume> {
        Err(Status::unimplemented(""))
    }
    async fn detach_volume(&self, _: Request<pb::DetachVolumeRequest>) -> R<pb::Volume> {
        Err(Status::unimplemented(""))
    }
    async fn register_storage_server(
        &self,
        _: Request<pb::RegisterStorageServerRequest>,
    ) -> R<pb::RegisterStorageServerResponse> {
        Err(Status::unimplemented(""))
    }
    async fn storage_server_heartbeat(
        &self,
        _: Request<pb::StorageServerHeartbeatRequest>,
    ) -> R<pb::StorageServerHeartbeatResponse> {
        Err(Status::unimplemented(""))
    }
    async fn list_storage_servers(
        &self,
        _: Request<pb::ListStorageServersRequest>,
    ) -> R<pb::ListStorageServersResponse> {
        Err(Status::unimplemented(""))
    }
    async fn drain_storage_server(
        &self,
        _: Request<pb::DrainStorageServerRequest>,
    ) -> R<pb::StorageServer> {
        Err(Status::unimplemented(""))
    }
    async fn register_node(
        &self,
        _: Request<pb::RegisterNodeRequest>,
    ) -> R<pb::RegisterNodeResponse> {
        Err(Status::unimplemented(""))
    }
    async fn node_heartbeat(
        &self,
        _: Request<pb::NodeHeartbeatRequest>,
    ) -> R<pb::NodeHeartbeatResponse> {
        Err(Status::unimplemented(""))
    }
    async fn list_nodes(&self, _: Request<pb::ListNodesRequest>) -> R<pb::ListNodesResponse> {
        Err(Status::unimplemented(""))
    }
    async fn report_unreachable(
        &self,
        _: Request<pb::ReportUnreachableRequest>,
    ) -> R<pb::ReportUnreachableResponse> {
        Err(Status::unimplemented(""))
    }
    async fn add_destination(&self, _: Request<pb::AddDestinationRequest>) -> R<pb::Destination> {
        Err(Status::unimplemented(""))
    }
    async fn list_destinations(
        &self,
        _: Request<pb::ListDestinationsRequest>,
    ) -> R<pb::ListDestinationsResponse> {
        Err(Status::unimplemented(""))
    }
    async fn describe_destination(&self, _: Request<pb::DestinationRef>) -> R<pb::Destination> {
        Err(Status::unimplemented(""))
    }
    async fn remove_destination(
        &self,
        _: Request<pb::DestinationRef>,
    ) -> R<pb::RemoveDestinationResponse> {
        Err(Status::unimplemented(""))
    }
    async fn set_backup_policy(&self, _: Request<pb::SetBackupPolicyRequest>) -> R<pb::Volume> {
        Err(Status::unimplemented(""))
    }
    async fn set_schedule(&self, _: Request<pb::SetScheduleRequest>) -> R<pb::Volume> {
        Err(Status::unimplemented(""))
    }
    async fn write_volume_block(
        &self,
        _: Request<pb::WriteVolumeBlockRequest>,
    ) -> R<pb::WriteVolumeBlockResponse> {
        Err(Status::unimplemented(""))
    }
    async fn read_volume_block(
        &self,
        _: Request<pb::ReadVolumeBlockRequest>,
    ) -> R<pb::ReadVolumeBlockResponse> {
        Err(Status::unimplemented(""))
    }
    async fn copy_snapshot(&self, _: Request<pb::CopySnapshotRequest>) -> R<pb::Snapshot> {
        Err(Status::unimplemented(""))
    }
    async fn remove_snapshot_copy(
        &self,
        _: Request<pb::RemoveSnapshotCopyRequest>,
    ) -> R<pb::Snapshot> {
        Err(Status::unimplemented(""))
    }
    async fn start_snapshot(&self, _: Request<pb::StartSnapshotRequest>) -> R<pb::Snapshot> {
        Err(Status::unimplemented(""))
    }
    async fn put_snapshot_block(
        &self,
        _: Request<pb::PutSnapshotBlockRequest>,
    ) -> R<pb::PutSnapshotBlockResponse> {
        Err(Status::unimplemented(""))
    }
    async fn complete_snapshot(&self, _: Request<pb::CompleteSnapshotRequest>) -> R<pb::Snapshot> {
        Err(Status::unimplemented(""))
    }
    async fn list_snapshot_blocks(
        &self,
        _: Request<pb::ListSnapshotBlocksRequest>,
    ) -> R<pb::ListSnapshotBlocksResponse> {
        Err(Status::unimplemented(""))
    }
    async fn list_changed_blocks(
        &self,
        _: Request<pb::ListChangedBlocksRequest>,
    ) -> R<pb::ListChangedBlocksResponse> {
        Err(Status::unimplemented(""))
    }
    async fn get_snapshot_block(
        &self,
        _: Request<pb::GetSnapshotBlockRequest>,
    ) -> R<pb::GetSnapshotBlockResponse> {
        Err(Status::unimplemented(""))
    }
    async fn create_join_token(
        &self,
        _: Request<pb::CreateJoinTokenRequest>,
    ) -> R<pb::CreateJoinTokenResponse> {
        Err(Status::unimplemented(""))
    }
    async fn join(&self, _: Request<pb::JoinRequest>) -> R<pb::JoinResponse> {
        Err(Status::unimplemented(""))
    }
    async fn revoke_identity(
        &self,
        _: Request<pb::RevokeIdentityRequest>,
    ) -> R<pb::RevokeIdentityResponse> {
        Err(Status::unimplemented(""))
    }
    async fn create_tenant(&self, _: Request<pb::CreateTenantRequest>) -> R<pb::Tenant> {
        Err(Status::unimplemented(""))
    }
    async fn list_tenants(&self, _: Request<pb::ListTenantsRequest>) -> R<pb::ListTenantsResponse> {
        Err(Status::unimplemented(""))
    }
    async fn delete_tenant(
        &self,
        _: Request<pb::DeleteTenantRequest>,
    ) -> R<pb::DeleteTenantResponse> {
        Err(Status::unimplemented(""))
    }
    async fn set_tenant_quota(&self, _: Request<pb::SetTenantQuotaRequest>) -> R<pb::Tenant> {
        Err(Status::unimplemented(""))
    }
    async fn create_api_token(
        &self,
        _: Request<pb::CreateApiTokenRequest>,
    ) -> R<pb::CreateApiTokenResponse> {
        Err(Status::unimplemented(""))
    }
    async fn list_api_tokens(
        &self,
        _: Request<pb::ListApiTokensRequest>,
    ) -> R<pb::ListApiTokensResponse> {
        Err(Status::unimplemented(""))
    }
    async fn revoke_api_token(
        &self,
        _: Request<pb::RevokeApiTokenRequest>,
    ) -> R<pb::RevokeApiTokenResponse> {
        Err(Status::unimplemented(""))
    }
    async fn list_audit(&self, _: Request<pb::ListAuditRequest>) -> R<pb::ListAuditResponse> {
        Err(Status::unimplemented(""))
    }
}

/// The token the mock accepts (as an admin).
struct OneToken(String);
impl basalt_auth::Authority for OneToken {
    fn token(&self, t: &str) -> Option<basalt_auth::Principal> {
        (t == self.0).then(|| basalt_auth::Principal::new(basalt_auth::Role::Admin, "t").unwrap())
    }
}

/// A scripted control service; runs until the value is dropped.
struct Service {
    _rt: tokio::runtime::Runtime,
    endpoint: String,
    mock: std::sync::Arc<Mock>,
    /// The CA certificate and the admin token file the CLI is given.
    dir: tempfile::TempDir,
}

impl Service {
    fn start() -> Service {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let mock = std::sync::Arc::new(Mock::default());
        let incoming = {
            let _g = rt.enter();
            tonic::transport::server::TcpIncoming::bind(([127, 0, 0, 1], 0).into()).unwrap()
        };
        let endpoint = format!("https://{}", incoming.local_addr().unwrap());
        let svc = ControlServer::from_arc(mock.clone());
        // TLS and the authorisation layer as the real service has them:
        // every call needs the admin token.
        let pki = basalt_auth::testing::TestPki::new();
        let dir = tempfile::tempdir().unwrap();
        let token = basalt_auth::token::generate();
        basalt_auth::files::write(&dir.path().join("ca.crt"), pki.ca_pem(), 0o644).unwrap();
        basalt_auth::files::write(&dir.path().join("token"), &token, 0o600).unwrap();
        let policy: basalt_auth::Policy = std::sync::Arc::new(|_: &str| {
            Some(basalt_auth::Access::Roles(&[basalt_auth::Role::Admin]))
        });
        rt.spawn(
            tonic::transport::Server::builder()
                .tls_config(pki.control().server_tls())
                .unwrap()
                .layer(basalt_auth::AuthLayer::with_authority(
                    policy,
                    std::sync::Arc::new(OneToken(token)),
                ))
                .add_service(svc)
                .serve_with_incoming(incoming),
        );
        Service {
            _rt: rt,
            endpoint,
            mock,
            dir,
        }
    }

    /// Runs `basalt`; returns (success, stdout, stderr).
    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_basalt"))
            .arg("--control")
            .arg(&self.endpoint)
            .arg("--ca-file")
            .arg(self.dir.path().join("ca.crt"))
            .arg("--token-file")
            .arg(self.dir.path().join("token"))
            .env_remove("BASALT_TOKEN")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn json(&self, args: &[&str]) -> Value {
        let (ok, out, err) = self.cli(&[&["-o", "json"], args].concat());
        assert!(ok, "basalt {args:?} failed: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }
}

#[test]
fn snapshot_create_waits_for_the_upload() {
    let s = Service::start();
    // Without --wait: at once, CREATING.
    let j = s.json(&["snapshot", "create", "db1", "--name", "s0"]);
    assert_eq!(
        (j["state"].as_str(), j["id"].as_u64()),
        (Some("CREATING"), Some(7))
    );

    let (ok, out, err) = s.cli(&["snapshot", "create", "db1", "--name", "s1", "--wait"]);
    assert!(ok, "{err}");
    // One line per state and 10 % step (10 blocks a poll = 25 %).
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        [
            "snapshot s1: CREATING (0/0 blocks, 0 B uploaded)",
            "snapshot s1: CREATING 25% (10/40 blocks, 640 KiB uploaded)",
            "snapshot s1: CREATING 50% (20/40 blocks, 1.2 MiB uploaded)",
            "snapshot s1: CREATING 75% (30/40 blocks, 1.9 MiB uploaded)",
            "snapshot s1: COMPLETE 100% (40/40 blocks, 2.5 MiB uploaded)",
        ],
        "{err}"
    );
    assert!(
        out.starts_with("ID  NAME  VOLUME  STATE     PROGRESS"),
        "{out}"
    );
    assert!(out.contains("\n7   s1    db1     COMPLETE  100%"), "{out}");
}

#[test]
fn the_wait_rides_out_an_unavailable_control_service() {
    let s = Service::start();
    let (ok, out, err) = s.cli(&[
        "-o", "json", "snapshot", "create", "db1", "--name", "flaky", "--wait",
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["state"],
        "COMPLETE"
    );
    assert_eq!(
        err.lines()
            .filter(|l| l.contains("retrying"))
            .collect::<Vec<_>>(),
        ["snapshot flaky: control service restarting; retrying"],
        "{err}"
    );
}

#[test]
fn a_failed_upload_fails_the_wait_with_its_reason() {
    let s = Service::start();
    let (ok, out, err) = s.cli(&[
        "-o", "json", "snapshot", "create", "db1", "--name", "bad", "--wait",
    ]);
    assert!(!ok);
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["state"], "FAILED");
    assert!(
        err.ends_with("basalt: error: snapshot bad (id 9) failed: destination unreachable\n"),
        "{err}"
    );
}

#[test]
fn snapshot_list_follows_the_pages() {
    let s = Service::start();
    let j = s.json(&["snapshot", "list", "--volume", "db1", "--page-size", "2"]);
    let ids: Vec<_> = j
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2, 3, 4, 5]);
    let lists = s.mock.lists.lock().unwrap().clone();
    assert_eq!(
        lists
            .iter()
            .map(|r| r.page_token.as_str())
            .collect::<Vec<_>>(),
        ["", "2", "4"]
    );
    assert!(lists.iter().all(|r| r.page_size == 2
        && r.tenant.is_empty()
        && r.volume.as_ref().map(|v| v.name.as_str()) == Some("db1")));

    let (ok, out, _) = s.cli(&["snapshot", "list"]);
    assert!(ok);
    assert_eq!(out.lines().count(), 6, "{out}");
    assert_eq!(
        out.lines().next(),
        Some("ID  NAME  VOLUME  STATE     PROGRESS  SIZE    STORED   PARENT  CREATED")
    );
}

#[test]
fn snapshot_show_and_delete() {
    let s = Service::start();
    let j = s.json(&["snapshot", "show", "s1"]);
    assert_eq!(j["progress"]["blocks_done"], 10);
    assert_eq!(j["progress"]["change_source"], "FULL");
    let (ok, out, _) = s.cli(&["snapshot", "show", "7"]);
    assert!(
        ok && out.contains("\nprogress:          50% (20/40 blocks)\n"),
        "{out}"
    );
    let (ok, _, err) = s.cli(&["snapshot", "show", "nope"]);
    assert_eq!(
        (ok, err.as_str()),
        (false, "basalt: error: snapshot \"nope\" not found\n")
    );

    assert_eq!(s.json(&["snapshot", "delete", "7"])["deleted"], "7");
    let (ok, _, err) = s.cli(&["snapshot", "delete", "9"]);
    assert!(!ok && err.contains("still loads snapshot 9"), "{err}");
}

#[test]
fn volume_create_from_a_snapshot_waits_for_hydration() {
    let s = Service::start();
    let (ok, out, err) = s.cli(&["volume", "create", "db2", "--from-snapshot", "s1", "--wait"]);
    assert!(ok, "{err}");
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        [
            "volume db2: HYDRATING 0% (0/40 blocks, 0 B fetched)",
            "volume db2: HYDRATING 37% (15/40 blocks, 960 KiB fetched)",
            "volume db2: HYDRATING 75% (30/40 blocks, 1.9 MiB fetched)",
            "volume db2: COMPLETE 100% (40/40 blocks, 2.5 MiB fetched)",
        ],
        "{err}"
    );
    assert!(
        out.ends_with("\n\nhydrated from snapshot 7 (40/40 blocks, 2.5 MiB fetched)\n"),
        "{out}"
    );
    let req = s.mock.created.lock().unwrap()[0].clone();
    assert_eq!(req.size_bytes, 0, "no --size: the snapshot's size");
    assert_eq!(
        req.from_snapshot.map(|r| (r.id, r.name)),
        Some((0, "s1".to_owned()))
    );

    // A hydration dropped once complete ends the wait too.
    let j = s.json(&[
        "volume",
        "create",
        "gone",
        "--size",
        "1G",
        "--from-snapshot",
        "7",
        "--wait",
    ]);
    assert_eq!(
        (j["hydration"].clone(), j["source_snapshot_id"].as_u64()),
        (Value::Null, Some(7))
    );
    let req = s.mock.created.lock().unwrap()[1].clone();
    assert_eq!(req.size_bytes, 1 << 30);
    assert_eq!(req.from_snapshot.map(|r| r.id), Some(7));

    // Without --wait the volume comes back at once, still loading.
    let j = s.json(&["volume", "create", "db3", "--from-snapshot", "s1"]);
    assert_eq!(j["hydration"]["complete"], false);
    let (ok, _, err) = s.cli(&["volume", "create", "db4"]);
    assert!(!ok && err.contains("--size"), "{err}");
}
