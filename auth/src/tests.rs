//! The identities over real TLS: a tonic server (the standard health
//! service) behind [`AuthLayer`], called by clients with and without
//! certificates and tokens.

use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Server;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::*;

const DAY: Duration = Duration::from_secs(86400);
const CHECK: &str = "/grpc.health.v1.Health/Check";

fn creds(ca: &Ca, p: &Principal) -> Credentials {
    let i = ca.issue_new(p, DAY).unwrap();
    Credentials::new(ca.cert_pem().to_owned(), i.cert_pem, i.key_pem).unwrap()
}

struct Tokens;
const ADMIN_TOKEN: &str = "bst_00000000000000000000000000000000000000000000000000000000000000aa";
impl Authority for Tokens {
    fn token(&self, token: &str) -> Option<Principal> {
        (token == ADMIN_TOKEN).then(|| Principal::new(Role::Admin, "root").unwrap())
    }
    fn revoked(&self, p: &Principal) -> bool {
        p.is(Role::Storage, "revoked")
    }
}

/// Serves health behind the layer: Check for storage servers and admins,
/// everything else closed. Returns the address.
async fn serve(server: &Credentials) -> String {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let policy: Policy = Arc::new(|path: &str| {
        (path == CHECK).then_some(Access::Roles(&[Role::Storage, Role::Admin]))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Server::builder()
        .tls_config(server.server_tls())
        .unwrap()
        .layer(AuthLayer::with_authority(policy, Arc::new(Tokens)))
        .add_service(health);
    tokio::spawn(
        router.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr.to_string()
}

async fn check(
    addr: &str,
    tls: tonic::transport::ClientTlsConfig,
    token: Option<&str>,
) -> Result<(), tonic::Status> {
    let channel = endpoint(addr, tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("{e:?}")))?;
    let mut req = tonic::Request::new(HealthCheckRequest::default());
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    HealthClient::new(channel).check(req).await.map(|_| ())
}

#[tokio::test]
async fn callers_are_authenticated_and_authorised_per_call() {
    let (ca, _key) = Ca::create("test").unwrap();
    let control = Principal::control();
    let addr = serve(&creds(&ca, &control)).await;
    let storage = creds(&ca, &Principal::new(Role::Storage, "s1").unwrap());
    let node = creds(&ca, &Principal::new(Role::Node, "n1").unwrap());

    check(&addr, storage.client_tls(&control), None)
        .await
        .expect("a storage server may check");
    let e = check(&addr, node.client_tls(&control), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("node n1"), "{e}");

    let anonymous = server_only_tls(ca.cert_pem(), &control);
    let e = check(&addr, anonymous.clone(), None).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    check(&addr, anonymous.clone(), Some(ADMIN_TOKEN))
        .await
        .expect("an admin token may check");
    let wrong = ADMIN_TOKEN.replace("aa", "ab");
    let e = check(&addr, anonymous.clone(), Some(&wrong))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    let e = check(&addr, anonymous, Some("not-a-token"))
        .await
        .unwrap_err();
    assert!(e.message().contains("malformed"), "{e}");

    let revoked = creds(&ca, &Principal::new(Role::Storage, "revoked").unwrap());
    let e = check(&addr, revoked.client_tls(&control), None)
        .await
        .unwrap_err();
    assert!(e.message().contains("revoked"), "{e}");

    // A certificate from another CA does not get through the handshake.
    let (other, _) = Ca::create("other").unwrap();
    let mut forged = creds(&other, &Principal::new(Role::Storage, "s1").unwrap());
    forged.ca_pem = ca.cert_pem().to_owned();
    let e = check(&addr, forged.client_tls(&control), None)
        .await
        .unwrap_err();
    assert!(
        matches!(e.code(), tonic::Code::Unavailable | tonic::Code::Unknown),
        "{e}"
    );
    // A client expecting a storage server refuses the control service.
    let e = check(
        &addr,
        storage.client_tls(&Principal::new(Role::Storage, "s2").unwrap()),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
}

#[tokio::test]
async fn an_unknown_method_is_closed_even_to_the_control_service() {
    let (ca, _key) = Ca::create("test").unwrap();
    let control = Principal::control();
    let addr = serve(&creds(&ca, &control)).await;
    let me = creds(&ca, &control);
    let channel = endpoint(&addr, me.client_tls(&control))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = HealthClient::new(channel);
    let e = c
        .watch(HealthCheckRequest::default())
        .await
        .expect_err("Watch is not in the policy");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
}

#[test]
fn a_csr_gets_the_principal_of_the_token_not_the_one_it_asks_for() {
    let (ca, key) = Ca::create("test").unwrap();
    let asked = Principal::new(Role::Storage, "s9").unwrap();
    let granted = Principal::new(Role::Storage, "s1").unwrap();
    let (csr, key_pem) = new_csr(&asked).unwrap();
    let cert = ca.sign_csr(&csr, &granted, DAY).unwrap();
    let c = Credentials::new(ca.cert_pem().to_owned(), cert, key_pem).unwrap();
    assert_eq!(c.principal, granted);
    assert!(matches!(
        ca.sign_csr(
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            &granted,
            DAY
        ),
        Err(PkiError::BadCsr(_))
    ));

    // The CA loads back from its files, and refuses a key of another CA.
    let again = Ca::load(ca.cert_pem(), &key).expect("load");
    let issued = again.issue_new(&granted, DAY).unwrap();
    assert_eq!(
        peer::verify_leaf(ca.cert_pem(), &issued.cert_pem).unwrap(),
        granted
    );
    let (_, other_key) = Ca::create("other").unwrap();
    assert!(matches!(
        Ca::load(ca.cert_pem(), &other_key),
        Err(PkiError::KeyMismatch)
    ));
}

#[test]
fn credentials_files_round_trip_and_an_exposed_key_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (ca, _) = Ca::create("test").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let c = creds(&ca, &Principal::new(Role::Node, "n1").unwrap());
    c.save(dir.path()).unwrap();
    let back = Credentials::load(dir.path()).unwrap();
    assert_eq!(back.principal, c.principal);
    let key = dir.path().join(files::KEY);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = Credentials::load(dir.path()).unwrap_err();
    assert!(e.to_string().contains("chmod 600"), "{e}");
    let e = Credentials::load(&dir.path().join("missing")).unwrap_err();
    assert!(e.to_string().contains("join"), "{e}");
}
