//! CDI under a real runtime: Debian's podman (rootful, vfs storage, runc,
//! no network) runs a container with `--device vgpud.io/vgpu=<uuid>` from
//! the spec the agent wrote for its layout. Inside, the socket variable
//! and the vGPU's socket are there, and a static guest driver completes a
//! vfio-user session with vgpud through it (`vgpu-guest info`: version,
//! guest RAM mapped, the device's identity read back). A UUID the spec
//! does not have is refused by podman.
//!
//! podman 4.3 reads specs from /etc/cdi and /var/run/cdi only: the agent's
//! spec is copied there under a name of this test's own, and removed.
//! The image is a busybox and the static guest driver, `podman import`ed
//! (nothing is pulled).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{agent, require_root, static_guest_binary, workspace, TempDir, Vgpud};

const U: &str = "3c9d0a1e-5b7f-4e2a-8c6d-1f0e2d3c4b5a";

/// podman with storage and state of its own (vfs: no overlay mounts; runc:
/// crun refuses this host's hybrid cgroups), and the limits this sandbox
/// allows (podman's default nofile/nproc exceed its hard limits).
struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
                "--runtime",
                "runc",
            ]);
        c
    }

    fn run(&self, device: &str, script: &str) -> Output {
        self.cmd()
            .args(["run", "--rm", "--network", "none"])
            .args([
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=4096:4096",
            ])
            .args([
                "--device",
                device,
                "localhost/vgpud-cdi-test:1",
                "/bin/sh",
                "-c",
                script,
            ])
            .output()
            .expect("run podman")
    }
}

fn image_tar(dir: &Path, guest: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in ["sh", "ls", "env", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::copy(guest, root.join("bin/vgpu-guest")).unwrap();
    let tar = dir.join("rootfs.tar");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(ok.success());
    tar
}

struct SpecCopy(PathBuf);
impl Drop for SpecCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn podman_runs_a_container_with_a_vgpu_by_its_cdi_name() {
    require_root("the CDI test (rootful podman)");
    let st = Command::new("bash")
        .arg(workspace().join("tests/k8s/install-podman.sh"))
        .status()
        .unwrap();
    assert!(st.success(), "tests/k8s/install-podman.sh failed");
    let guest = static_guest_binary();
    let dir = TempDir::new("cdi");
    let v = Vgpud::start(dir.path(), "", &[]);
    std::fs::write(
        dir.path().join("layout.toml"),
        format!("[[vgpu]]\nuuid = \"{U}\"\ntype = \"vgpud-2c\"\n"),
    )
    .unwrap();
    let cdi = dir.path().join("cdi");
    let mut a = Command::new(agent())
        .arg("serve")
        .arg("--run-dir")
        .arg(&v.run)
        .arg("--kubelet-dir")
        .arg(dir.path().join("kubelet"))
        .arg("--layout")
        .arg(dir.path().join("layout.toml"))
        .arg("--cdi-dir")
        .arg(&cdi)
        .spawn()
        .unwrap();
    let spec = cdi.join("vgpud.io-device-plugin.json");
    let socket = v.run.join(format!("k8s/{U}/vfio-user.sock"));
    let t = Instant::now();
    while !(spec.exists() && socket.exists()) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no CDI spec or socket directory"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::create_dir_all("/var/run/cdi").unwrap();
    // A copy an earlier run left (killed before it removed it) names the same device: podman
    // then resolves none of the vendor's devices. Copies of processes gone go first.
    for e in std::fs::read_dir("/var/run/cdi").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name
            .strip_prefix("vgpud.io-test-")
            .and_then(|n| n.strip_suffix(".json"))
        {
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let copy = SpecCopy(PathBuf::from(format!(
        "/var/run/cdi/vgpud.io-test-{}.json",
        std::process::id()
    )));
    std::fs::copy(&spec, &copy.0).unwrap();

    let p = Podman {
        dir: dir.path().join("podman"),
    };
    let tar = image_tar(dir.path(), &guest);
    let out = p
        .cmd()
        .arg("import")
        .arg(&tar)
        .arg("localhost/vgpud-cdi-test:1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "podman import: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let var = vgpud_k8s::names::socket_env(U);
    let script =
        format!("echo \"socket=${var}\"; ls -l \"${var}\"; vgpu-guest --socket \"${var}\" info");
    let out = p.run(&format!("vgpud.io/vgpu={U}"), &script);
    let said = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{said}\n{err}");
    assert!(out.status.success(), "the container failed: {err}");
    let in_container = format!("/var/run/vgpud/{U}/vfio-user.sock");
    assert!(said.contains(&format!("socket={in_container}")), "{said}");
    assert!(
        said.lines()
            .any(|l| l.starts_with('s') && l.ends_with(&in_container)),
        "the socket is there: {said}"
    );
    // The session went through: the identity vgpud's vgpud-2c has.
    assert!(said.contains("transport     vfio-user"), "{said}");
    assert!(said.contains("pci id        7667:"), "{said}");
    assert!(said.contains("vram          2048 MiB"), "{said}");
    let status = v.request(serde_json::json!({"op": "status", "uuid": U}));
    assert_eq!(
        status["result"][0]["connections"], 1,
        "vgpud served it: {status}"
    );

    // A UUID the spec does not have.
    let stale = "00000000-1111-4222-8333-444444444444";
    let out = p.run(&format!("vgpud.io/vgpu={stale}"), "true");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "podman ran a container with an unknown vGPU"
    );
    assert!(err.contains("unresolvable CDI devices"), "{err}");

    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(a.id() as i32, libc::SIGTERM) };
    assert!(a.wait().unwrap().success());
    drop(copy);
}
