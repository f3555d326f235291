//! Basalt protocols.
//!
//! - [`wire`]: the binary data-plane protocol spoken between a backend and a
//!   primary copy, and between a primary and its mirrors (documented in
//!   `proto/WIRE.md`).
//! - [`storage_admin`]: the gRPC admin API of a storage server
//!   (`basalt.storage.v1`).
//! - [`control`]: the control service's API (`basalt.control.v1`).
//! - [`node`]: the node manager's API (`basalt.node.v1`).

pub mod wire;

/// gRPC admin API of a storage server, package `basalt.storage.v1`.
pub mod storage_admin {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("basalt.storage.v1");

    /// Credentials are never printed: a request that carries a destination
    /// may be logged.
    impl std::fmt::Debug for Destination {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Destination")
                .field("name", &self.name)
                .field("url", &self.url)
                .field("endpoint", &self.endpoint)
                .field("region", &self.region)
                .field("allow_http", &self.allow_http)
                .field(
                    "credentials",
                    &(!self.secret_access_key.is_empty()).then_some("<redacted>"),
                )
                .finish()
        }
    }
}

/// gRPC API of the control service, package `basalt.control.v1`.
pub mod control {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("basalt.control.v1");
}

/// gRPC API of the node manager, package `basalt.node.v1`.
pub mod node {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("basalt.node.v1");
}
