//! Compiles the gRPC protos with protox (pure Rust; no protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "protos/basalt/storage/v1/admin.proto",
        "protos/basalt/control/v1/control.proto",
        "protos/basalt/node/v1/node.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["protos"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Carries credentials: its Debug (proto/src/lib.rs) redacts them.
        .skip_debug(["basalt.storage.v1.Destination"])
        .compile_fds(fds)?;
    Ok(())
}
