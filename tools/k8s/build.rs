//! Compiles the kubelet's and KubeVirt's gRPC definitions (proto/) into
//! Rust, with protox (no protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/deviceplugin.proto",
        "proto/pluginregistration.proto",
        "proto/dra.proto",
        "proto/kubevirt_plugins.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
