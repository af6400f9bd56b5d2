//! The guest driver linked statically, for the busybox initramfs of the VM
//! tests and the container images of the Kubernetes agent's tests (one
//! file, included by both crates' tests with `#[path]`).

use std::path::PathBuf;
use std::process::Command;

/// The guest driver, linked statically. Built in a target directory of its
/// own (`target/vm-guest`, built once for every test that needs it) so
/// that it does not wait on the lock of the build that is running the test.
pub fn static_guest_binary() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = root.join("target").join("vm-guest");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-j2",
            "-p",
            "vgpu-guest",
            "--bin",
            "vgpu-guest",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("run cargo");
    assert!(status.success(), "building the static vgpu-guest failed");
    target.join("x86_64-unknown-linux-gnu/release/vgpu-guest")
}
