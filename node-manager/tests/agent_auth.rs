//! The NodeAgent server takes mutual TLS only and admits the control
//! service alone: other certificates of the cluster are PERMISSION_DENIED,
//! a caller without one UNAUTHENTICATED, a certificate of another CA and a
//! plain-text client do not get a call through. The node manager refuses
//! to start without its certificate, with another node's, or with a node id
//! that cannot name one.

mod common;

use anyhow::Result;
use basalt_auth::testing::TestPki;
use basalt_auth::{server_only_tls, Principal, Role};
use basalt_proto::node as pb;
use basalt_proto::node::node_agent_client::NodeAgentClient;
use common::*;
use tonic::Code;

#[test]
fn only_the_control_service_may_call_the_node_agent() -> Result<()> {
    let root = tempfile::tempdir()?;
    let node = NodeProc::start(&root.path().join("node"), &[])?;
    let pki = node.pki.clone();
    let server = node_principal();

    // (a) The control service.
    let control = pki.control();
    assert!(node.list_with(control.client_tls(&server))?.is_empty());

    // (b) Other members of the cluster: known, but not allowed.
    for (role, id) in [
        (Role::Node, NODE_ID),
        (Role::Node, "n2"),
        (Role::Storage, "s1"),
    ] {
        let who = pki.issue(role, id);
        let e = node.list_with(who.client_tls(&server)).unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{role} {id}: {e}");
        assert!(e.message().contains(&format!("{role} {id}")), "{e}");
    }
    // Mutations are closed the same way (refused before the handler).
    let storage = pki.issue(Role::Storage, "s1");
    let e = node
        .block_on(async {
            let mut c = connect_agent(node.grpc, storage.client_tls(&server)).await?;
            Ok::<_, anyhow::Error>(c.detach(pb::DetachRequest { volume_id: 1 }).await)
        })?
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");

    // (c) TLS without a client certificate.
    let e = node
        .list_with(server_only_tls(pki.ca_pem(), &server))
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");

    // (d) A control-service certificate from another CA fails the
    // handshake (the client still trusts our CA, so only the server can
    // be the one refusing).
    let other = TestPki::new();
    let mut forged = other.control();
    forged.ca_pem = pki.ca_pem().to_owned();
    // With TLS 1.3 the client may finish its side of the handshake before
    // the server refuses the certificate: then the call sees the connection
    // closed (UNKNOWN "broken pipe" or CANCELLED) rather than a failed
    // connect (UNAVAILABLE).
    let e = node.list_with(forged.client_tls(&server)).unwrap_err();
    assert!(
        matches!(
            e.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled
        ),
        "{e:?}"
    );

    // (e) Plain text: no gRPC without TLS.
    let plain = node.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.grpc))?
            .connect()
            .await?;
        Ok::<_, anyhow::Error>(
            NodeAgentClient::new(channel)
                .list_attachments(pb::ListAttachmentsRequest {})
                .await?,
        )
    });
    let e = plain.expect_err("a plain-text call went through");
    assert!(
        !matches!(
            e.downcast_ref::<tonic::Status>().map(|s| s.code()),
            Some(Code::PermissionDenied | Code::Unauthenticated)
        ),
        "a plain-text call reached the authorisation layer: {e:#}"
    );

    // The node proves its own name: a client expecting another node
    // refuses it.
    let e = node
        .list_with(control.client_tls(&Principal::new(Role::Node, "n2")?))
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e}");

    // The control service's client still works after all that.
    assert!(node.list_with(control.client_tls(&server))?.is_empty());
    Ok(())
}

#[test]
fn the_node_manager_needs_its_own_certificate() -> Result<()> {
    let root = tempfile::tempdir()?;
    let state = root.path().join("state");

    // None yet, and no way to join: says how to get one.
    let (status, out) = run_node_to_exit(&["--node-id", NODE_ID], &state)?;
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("--join-token-file"), "{out}");
    assert!(out.contains("--role node --id n1"), "{out}");

    // Another node's certificate.
    pki().install(&state.join("tls"), Role::Node, "n2");
    let (status, out) = run_node_to_exit(&["--node-id", NODE_ID], &state)?;
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("node n2"), "{out}");

    // A key other users can read.
    pki().install(&state.join("tls"), Role::Node, NODE_ID);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        state.join("tls").join("tls.key"),
        std::fs::Permissions::from_mode(0o644),
    )?;
    let (status, out) = run_node_to_exit(&["--node-id", NODE_ID], &state)?;
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("chmod 600"), "{out}");

    // A join token without a control service to join.
    let (status, out) = run_node_to_exit(
        &["--node-id", NODE_ID, "--join-token-file", "/nonexistent"],
        &state,
    )?;
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(out.contains("needs --control"), "{out}");
    Ok(())
}

#[test]
fn a_node_id_that_is_not_a_dns_label_is_refused() -> Result<()> {
    let root = tempfile::tempdir()?;
    for bad in ["Node1", "n_1", "hv1.example.com", "-n1"] {
        let flag = format!("--node-id={bad}");
        let (status, out) = run_node_to_exit(&[&flag], &root.path().join("state"))?;
        assert_eq!(status.code(), Some(2), "{bad}: {out}");
        assert!(
            out.contains("--node-id") && out.contains("lowercase letters"),
            "{bad}: {out}"
        );
    }
    Ok(())
}
