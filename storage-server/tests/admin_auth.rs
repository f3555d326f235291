//! The admin API is served over mutual TLS, and only the control service
//! may call it: a storage server's or node manager's certificate from the
//! same CA is refused per call (PERMISSION_DENIED), a caller without a
//! certificate is unauthenticated, a certificate from another CA or a
//! plain-text client does not get through at all. And a server without a
//! certificate does not start unless it can join.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use basalt_auth::{server_only_tls, Principal, Role};
use basalt_proto::storage_admin as pb;
use basalt_proto::storage_admin::storage_admin_client::StorageAdminClient;
use basalt_storage::fake_control;
use basalt_storage::testing::{LocalServer, Options, TestPki};
use basalt_storage::{Args, ServerConfig};
use clap::Parser;
use tonic::transport::Endpoint;
use tonic::{Code, Status};

const VOL: u64 = 5;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A connection failure (TLS handshake included) as a status, like a
/// failed call.
async fn client(ep: Endpoint) -> Result<StorageAdminClient<tonic::transport::Channel>, Status> {
    let channel = ep
        .connect()
        .await
        .map_err(|e| Status::unavailable(format!("connect: {e:?}")))?;
    Ok(StorageAdminClient::new(channel))
}

async fn server_info(ep: Endpoint) -> Result<pb::ServerInfoResponse, Status> {
    client(ep)
        .await?
        .server_info(pb::ServerInfoRequest {})
        .await
        .map(tonic::Response::into_inner)
}

async fn list_copies(ep: Endpoint) -> Result<Vec<u64>, Status> {
    let copies = client(ep)
        .await?
        .list_copies(pb::ListCopiesRequest {})
        .await?
        .into_inner()
        .copies;
    Ok(copies.iter().map(|c| c.volume_id).collect())
}

async fn create_copy(ep: Endpoint) -> Result<(), Status> {
    client(ep)
        .await?
        .create_copy(pb::CreateCopyRequest {
            volume_id: VOL + 1,
            size_bytes: 1 << 20,
            layout: Some(pb::CopyLayout {
                role: pb::CopyRole::Primary as i32,
                epoch: 1,
                ..Default::default()
            }),
            source: None,
        })
        .await
        .map(|_| ())
}

/// A call that did not get through the TLS handshake (or never spoke TLS).
fn assert_no_connection(e: &Status, what: &str) {
    assert!(
        matches!(
            e.code(),
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
        ),
        "{what}: expected a transport failure, got {e:?}"
    );
}

#[test]
fn only_the_control_service_may_call_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Arc::new(TestPki::new());
    let s = LocalServer::start_with(
        dir.path(),
        "s1",
        Options {
            pki: Some(pki.clone()),
            ..Options::default()
        },
    )
    .unwrap();
    s.create_primary(VOL, 1 << 20).unwrap();
    let rt = runtime();

    // (a) The control service, with a certificate from the server's CA.
    let info = rt.block_on(server_info(s.admin_endpoint())).unwrap();
    assert_eq!(info.server_id, "s1");
    assert_eq!(info.data_address, s.data_addr.to_string());
    assert_eq!(
        rt.block_on(list_copies(s.admin_endpoint())).unwrap(),
        vec![VOL]
    );
    // Its address may be given as host:port, http:// or https://: always TLS.
    let control = pki.control();
    for addr in [
        s.admin_addr.to_string(),
        format!("http://{}", s.admin_addr),
        format!("https://{}/", s.admin_addr),
    ] {
        let ep = basalt_auth::endpoint(&addr, control.client_tls(&s.principal())).unwrap();
        rt.block_on(server_info(ep))
            .unwrap_or_else(|e| panic!("{addr}: {e:?}"));
    }

    // (b) Another storage server or a node manager of the same cluster:
    // authenticated, refused per call, for reads and changes alike.
    for (role, id) in [
        (Role::Storage, "s2"),
        (Role::Storage, "s1"),
        (Role::Node, "n1"),
    ] {
        let creds = pki.issue(role, id);
        let who = format!("{role} {id}");
        for e in [
            rt.block_on(server_info(s.admin_endpoint_as(&creds)))
                .unwrap_err(),
            rt.block_on(list_copies(s.admin_endpoint_as(&creds)))
                .unwrap_err(),
            rt.block_on(create_copy(s.admin_endpoint_as(&creds)))
                .unwrap_err(),
        ] {
            assert_eq!(e.code(), Code::PermissionDenied, "{who}: {e:?}");
            assert!(e.message().contains(&who), "{who}: {e:?}");
        }
    }

    // (c) No client certificate (the server is verified, the caller is
    // anonymous): unauthenticated.
    let anonymous = server_only_tls(pki.ca_pem(), &s.principal());
    let ep = basalt_auth::endpoint(&s.admin_addr.to_string(), anonymous).unwrap();
    for e in [
        rt.block_on(server_info(ep.clone())).unwrap_err(),
        rt.block_on(create_copy(ep)).unwrap_err(),
    ] {
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    }

    // (d) A control certificate from another CA: refused in the handshake,
    // whether the client trusts our CA...
    let other = TestPki::new();
    let mut forged = other.control();
    forged.ca_pem = pki.ca_pem().to_owned();
    let e = rt
        .block_on(server_info(s.admin_endpoint_as(&forged)))
        .unwrap_err();
    assert_no_connection(&e, "a client certificate from another CA");
    let e = rt
        .block_on(create_copy(s.admin_endpoint_as(&forged)))
        .unwrap_err();
    assert_no_connection(&e, "a client certificate from another CA");
    // ...or the other one (then it does not accept the server either).
    let e = rt
        .block_on(server_info(s.admin_endpoint_as(&other.control())))
        .unwrap_err();
    assert_no_connection(&e, "a client of another CA");
    // A client expecting another server does not accept this one.
    let ep = basalt_auth::endpoint(
        &s.admin_addr.to_string(),
        control.client_tls(&Principal::new(Role::Storage, "s2").unwrap()),
    )
    .unwrap();
    let e = rt.block_on(server_info(ep)).unwrap_err();
    assert_no_connection(&e, "a server with another name");

    // (e) Plain text: no TLS, no answer.
    let plain = Endpoint::from_shared(format!("http://{}", s.admin_addr)).unwrap();
    let e = rt.block_on(server_info(plain.clone())).unwrap_err();
    assert_no_connection(&e, "a plain-text client");
    let e = rt.block_on(create_copy(plain)).unwrap_err();
    assert_no_connection(&e, "a plain-text client");

    // Nothing refused changed anything, and the server still serves the
    // control service.
    assert_eq!(
        rt.block_on(list_copies(s.admin_endpoint())).unwrap(),
        vec![VOL]
    );
    assert!(s.copy(VOL + 1).is_none());
    rt.block_on(create_copy(s.admin_endpoint())).unwrap();
    assert!(s.copy(VOL + 1).is_some());
}

#[test]
fn the_policy_opens_the_admin_methods_to_the_control_service_only() {
    let policy = basalt_storage::admin_policy();
    for m in ["ServerInfo", "CreateCopy", "SetLayout", "WriteBlock"] {
        assert_eq!(
            policy(&format!("/basalt.storage.v1.StorageAdmin/{m}")),
            Some(basalt_auth::Access::Roles(&[Role::Control])),
            "{m}"
        );
    }
    for closed in [
        "/basalt.storage.v1.StorageAdmin",
        "/basalt.storage.v1.StorageAdmin/",
        "/basalt.storage.v1.StorageAdminX/ServerInfo",
        "/basalt.storage.v1.StorageAdmin/ServerInfo/x",
        "/basalt.control.v1.Control/Join",
        "/grpc.health.v1.Health/Check",
        "",
        "/",
    ] {
        assert_eq!(policy(closed), None, "{closed:?}");
    }
}

fn config(data_dir: &Path, id: &str, extra: &[&str]) -> ServerConfig {
    let dir = data_dir.to_str().unwrap();
    let mut argv = vec![
        "basalt-storage",
        "--server-id",
        id,
        "--data-dir",
        dir,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ];
    argv.extend_from_slice(extra);
    ServerConfig::try_from(Args::try_parse_from(argv).unwrap()).unwrap()
}

/// Why `bind` refused to start the server.
fn refusal(config: ServerConfig) -> String {
    match runtime().block_on(basalt_storage::bind(config)) {
        Ok(_) => panic!("the server started"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn a_server_without_a_certificate_starts_only_by_joining() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");

    // No certificate, no token: what to do.
    let e = refusal(config(&data, "s1", &[]));
    assert!(
        e.contains(&data.join("tls").display().to_string())
            && e.contains("--join-token-file")
            && e.contains("--role storage --id s1"),
        "{e}"
    );

    // Another server's certificate in --tls-dir.
    let pki = TestPki::new();
    let tls = root.path().join("tls");
    pki.install(&tls, Role::Storage, "s2");
    let tls_flag = tls.to_str().unwrap();
    let e = refusal(config(&data, "s1", &["--tls-dir", tls_flag]));
    assert!(e.contains("storage s2") && e.contains("storage s1"), "{e}");

    // A key that other users can read.
    let tls1 = root.path().join("tls1");
    pki.install(&tls1, Role::Storage, "s1");
    let key = tls1.join("tls.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = refusal(config(&data, "s1", &["--tls-dir", tls1.to_str().unwrap()]));
    assert!(e.contains("chmod 600"), "{e}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Fixed, it starts.
    let bound = runtime()
        .block_on(basalt_storage::bind(config(
            &root.path().join("data1"),
            "s1",
            &["--tls-dir", tls1.to_str().unwrap()],
        )))
        .unwrap();
    drop(bound);

    // A token, but nowhere to join.
    let token = root.path().join("join.token");
    std::fs::write(&token, "bst_0123\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let token_flag = token.to_str().unwrap();
    let e = refusal(config(&data, "s1", &["--join-token-file", token_flag]));
    assert!(e.contains("--control"), "{e}");

    // A token and the control service, but no CA to check it with.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let control_addr = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let handler: fake_control::ReportHandler =
            Arc::new(|_| Box::pin(async { Err(Status::unimplemented("no reports")) }));
        tokio::spawn(fake_control::serve(l, &pki.control(), handler));
        addr.to_string()
    });
    let joining = [
        "--join-token-file",
        token_flag,
        "--control",
        control_addr.as_str(),
    ];
    let e = refusal(config(&data, "s1", &joining));
    assert!(e.contains("--ca-file"), "{e}");

    // With the CA, the join request reaches the control service over TLS
    // (this fake one refuses every join).
    let ca = root.path().join("ca.crt");
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    let mut with_ca = joining.to_vec();
    with_ca.extend(["--ca-file", ca.to_str().unwrap()]);
    let e = refusal(config(&data, "s1", &with_ca));
    assert!(
        e.contains("refused to join storage s1") && e.contains("fake control"),
        "{e}"
    );
    // A CA that did not issue the control service's certificate: the
    // server does not send its token to it.
    std::fs::write(&ca, TestPki::new().ca_pem()).unwrap();
    let e = refusal(config(&data, "s1", &with_ca));
    assert!(e.contains("cannot reach the control service"), "{e}");
    assert!(
        !data.join("tls/tls.crt").exists(),
        "nothing joined, nothing stored"
    );
    drop(rt);
}

#[test]
fn the_binary_refuses_a_bad_id_and_a_missing_certificate_with_a_clear_message() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let ready = root.path().join("ready.json");
    let command = |id: &str| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_basalt-storage"));
        c.args(["--server-id", id, "--data-dir"])
            .arg(&data)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--ready-file")
            .arg(&ready)
            .env_remove("BASALT_TLS_DIR")
            .env_remove("BASALT_CONTROL")
            .env_remove("BASALT_JOIN_TOKEN_FILE")
            .env_remove("BASALT_CA_FILE");
        c
    };
    let run = |id: &str| {
        let out = command(id).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run("Storage_1");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--server-id \"Storage_1\"") && err.contains("lowercase"),
        "{err}"
    );
    let (code, err) = run("s1");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--join-token-file"), "{err}");
    assert!(!ready.exists());

    // With credentials in <data-dir>/tls it starts.
    TestPki::new().install(&data.join("tls"), Role::Storage, "s1");
    let mut child = command("s1")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !ready.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("basalt-storage exited: {status}");
        }
        assert!(std::time::Instant::now() < deadline, "never ready");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
