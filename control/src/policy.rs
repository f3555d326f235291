//! Who may call each method of the control API. A method missing here is
//! refused to everyone (a new RPC stays closed until it is listed).

use std::sync::Arc;

use basalt_auth::{Access, Policy, Role};

const ADMIN: Access = Access::Roles(&[Role::Admin]);
/// Admins, and tenants for their own objects (checked in the handlers:
/// `scope.rs`).
const USER: Access = Access::Roles(&[Role::Admin, Role::Tenant]);

/// The rule of one method (`/basalt.control.v1.Control/<Method>`).
pub fn access(method: &str) -> Option<Access> {
    Some(match method {
        // The token in the request is the credential.
        "Join" => Access::Public,
        // Machines, each only as itself (checked in the handlers).
        "RegisterStorageServer" | "StorageServerHeartbeat" => Access::Roles(&[Role::Storage]),
        "RegisterNode" | "NodeHeartbeat" => Access::Roles(&[Role::Node]),
        "ReportUnreachable" => Access::Roles(&[Role::Storage, Role::Node]),
        // Operators.
        "CreateJoinToken" | "RevokeIdentity" | "ListStorageServers" | "DrainStorageServer"
        | "ListNodes" => ADMIN,
        // Tenants and their tokens and quotas.
        "CreateTenant" | "ListTenants" | "DeleteTenant" | "SetTenantQuota" | "CreateApiToken"
        | "ListApiTokens" | "RevokeApiToken" => ADMIN,
        // A tenant reads its own entries.
        "ListAudit" => USER,
        // The user API: a tenant acts on its own tenant's objects only.
        "CreateVolume"
        | "DeleteVolume"
        | "DescribeVolume"
        | "ListVolumes"
        | "ResizeVolume"
        | "AttachVolume"
        | "DetachVolume"
        | "CreateSnapshot"
        | "DescribeSnapshot"
        | "ListSnapshots"
        | "DeleteSnapshot"
        | "AddDestination"
        | "ListDestinations"
        | "DescribeDestination"
        | "RemoveDestination"
        | "SetBackupPolicy"
        | "SetSchedule"
        | "CopySnapshot"
        | "RemoveSnapshotCopy"
        | "StartSnapshot"
        | "PutSnapshotBlock"
        | "CompleteSnapshot"
        | "ListSnapshotBlocks"
        | "ListChangedBlocks"
        | "GetSnapshotBlock"
        | "WriteVolumeBlock"
        | "ReadVolumeBlock" => USER,
        _ => return None,
    })
}

pub fn policy() -> Policy {
    Arc::new(|path: &str| {
        path.strip_prefix("/basalt.control.v1.Control/")
            .and_then(access)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_of_the_service_has_a_rule() {
        let proto = include_str!("../../proto/protos/basalt/control/v1/control.proto");
        let methods: Vec<&str> = proto
            .lines()
            .filter_map(|l| l.trim().strip_prefix("rpc "))
            .filter_map(|l| l.split('(').next())
            .collect();
        assert!(methods.len() > 30, "{methods:?}");
        for m in methods {
            assert!(access(m).is_some(), "no access rule for {m}");
        }
        assert_eq!(access("Join"), Some(Access::Public));
        assert_eq!(access("NoSuchMethod"), None);
        let p = policy();
        assert_eq!(p("/basalt.control.v1.Control/DeleteVolume"), Some(USER));
        assert_eq!(p("/basalt.control.v1.Control/CreateApiToken"), Some(ADMIN));
        assert_eq!(
            p("/basalt.control.v1.Control/DrainStorageServer"),
            Some(ADMIN)
        );
        assert_eq!(p("/other.Service/DeleteVolume"), None);
    }
}
