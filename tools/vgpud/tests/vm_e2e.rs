//! Test tier 5: real Linux VMs under QEMU drive vGPUs of the vgpud binary
//! over vfio-user, with the guest driver inside the guest (tests/vm/e2e.sh),
//! and a VM that libvirtd defines and starts from `vgpuctl libvirt-xml`
//! (tests/vm/libvirt.sh).
//!
//! Needs root and network on first use (tests/vm/prepare.sh builds and
//! caches a Debian trixie chroot with QEMU 11 under /var/cache/vgpud).

use std::path::PathBuf;
use std::process::Command;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[path = "common/guest_build.rs"]
mod guest_build;
use guest_build::static_guest_binary;

/// The CUDA case's files: the driver-API C program linked against `libcuda.so.1` (the guest
/// library cargo built next to this test, a dev-dependency), the library and the
/// `cuGetProcAddress` table the program checks.
fn cuda_test_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let built = exe.parent().expect("deps dir").join("libvgpu_cuda.so");
    let dir = std::env::temp_dir().join(format!("vgpud-vm-cuda-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&built, dir.join("libcuda.so.1")).expect("copy libcuda.so");
    std::os::unix::fs::symlink("libcuda.so.1", dir.join("libcuda.so")).unwrap();
    let src = workspace().join("tools/guest-cuda/tests/c");
    std::fs::copy(
        workspace().join("tools/guest-cuda/api/proc_table.tsv"),
        dir.join("proc_table.tsv"),
    )
    .unwrap();
    let status = Command::new("cc")
        .args(["-O1", "-Wall", "-Werror", "-o"])
        .arg(dir.join("driver_api"))
        .arg(src.join("driver_api.c"))
        .arg("-I")
        .arg(&src)
        .arg("-L")
        .arg(&dir)
        .args(["-lcuda", "-ldl"])
        .status()
        .expect("run cc");
    assert!(status.success(), "building driver_api failed");
    dir
}

#[test]
fn linux_vms_run_the_guest_driver_selftest_on_vgpus() {
    // SAFETY: geteuid(2) takes no arguments, touches no memory and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the VM test needs root (debootstrap, chroot, mounts); run it as root, as .ci/run does"
    );
    let guest = static_guest_binary();
    let cuda = cuda_test_dir();
    let out = Command::new("bash")
        .arg(workspace().join("tests/vm/e2e.sh"))
        .arg("--cuda-test")
        .arg(&cuda)
        .arg("--vgpud")
        .arg(env!("CARGO_BIN_EXE_vgpud"))
        .arg("--vgpuctl")
        .arg(env!("CARGO_BIN_EXE_vgpuctl"))
        .arg("--guest")
        .arg(&guest)
        .output()
        .expect("run tests/vm/e2e.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    println!("{stdout}");
    assert!(
        out.status.success(),
        "VM end-to-end test failed: {}",
        out.status
    );
    let _ = std::fs::remove_dir_all(&cuda);
    for case in 0..=3 {
        assert!(
            stdout.contains(&format!("VGPUD-E2E case={case}")),
            "case {case} ran"
        );
    }
}

#[test]
fn libvirt_starts_the_generated_domain_and_its_guest_passes_the_selftest() {
    // SAFETY: geteuid(2) takes no arguments, touches no memory and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the libvirt VM test needs root (chroot, mounts); run it as root, as .ci/run does"
    );
    let guest = static_guest_binary();
    let out = Command::new("bash")
        .arg(workspace().join("tests/vm/libvirt.sh"))
        .arg("--vgpud")
        .arg(env!("CARGO_BIN_EXE_vgpud"))
        .arg("--vgpuctl")
        .arg(env!("CARGO_BIN_EXE_vgpuctl"))
        .arg("--guest")
        .arg(&guest)
        .output()
        .expect("run tests/vm/libvirt.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    println!("{stdout}");
    assert!(
        out.status.success(),
        "libvirt VM test failed: {}",
        out.status
    );
    assert!(
        stdout.contains("VGPUD-LIBVIRT seconds="),
        "the libvirt case ran"
    );
}
