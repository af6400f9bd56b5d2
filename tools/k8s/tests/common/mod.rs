//! What the agent's tests share: the binaries, vgpud started in a
//! directory of its own, and the kubelet stand-in's Python.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The agent under test.
pub fn agent() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vgpud-k8s"))
}

/// A binary of the vgpud package, built beside the agent by
/// `cargo test --workspace` (or `cargo build -p vgpud`).
pub fn vgpud_bin(name: &str) -> PathBuf {
    let p = agent().with_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: run the workspace's tests (cargo test --workspace), or cargo build -p vgpud first",
        p.display()
    );
    p
}

/// The kubelet stand-in's Python (grpcio), installed once.
pub fn standin_python() -> PathBuf {
    let out = Command::new("bash")
        .arg(workspace().join("tests/k8s/install-grpc.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run tests/k8s/install-grpc.sh");
    assert!(out.status.success(), "tests/k8s/install-grpc.sh failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

pub fn require_root(what: &str) {
    // SAFETY: geteuid(2) takes no arguments, touches no memory and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "{what} needs root, as .ci/run has");
}

/// A directory removed at the end.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("vgpud-k8s-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// vgpud with a configuration file, in `dir`/run.
pub struct Vgpud {
    pub child: Child,
    pub run: PathBuf,
}

impl Vgpud {
    pub fn start(dir: &Path, config: &str, env: &[(&str, &str)]) -> Vgpud {
        let run = dir.join("run");
        std::fs::write(dir.join("vgpud.toml"), config).unwrap();
        let child = Command::new(vgpud_bin("vgpud"))
            .arg("--run-dir")
            .arg(&run)
            .arg("--config")
            .arg(dir.join("vgpud.toml"))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("vgpud.log")).unwrap())
            .spawn()
            .expect("start vgpud");
        let t = Instant::now();
        while UnixStream::connect(run.join("control.sock")).is_err() {
            assert!(t.elapsed() < Duration::from_secs(20), "vgpud did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Vgpud { child, run }
    }

    /// One control-socket request; its reply.
    pub fn request(&self, req: Value) -> Value {
        let mut s = BufReader::new(UnixStream::connect(self.run.join("control.sock")).unwrap());
        writeln!(s.get_mut(), "{req}").unwrap();
        let mut line = String::new();
        s.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }
}

impl Drop for Vgpud {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run the kubelet stand-in; its output, asserting it passed.
pub fn standin(args: &[String], agent_log: &Path) -> String {
    let out = Command::new(standin_python())
        .arg(workspace().join("tests/k8s/kubelet_standin.py"))
        .args(args)
        .output()
        .expect("run the kubelet stand-in");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    eprintln!(
        "agent log:\n{}",
        std::fs::read_to_string(agent_log).unwrap_or_default()
    );
    assert!(
        out.status.success() && stdout.contains("STANDIN PASS"),
        "the kubelet stand-in failed: {}",
        stdout
            .lines()
            .rev()
            .find(|l| l.contains("FAIL"))
            .unwrap_or("(see output)")
    );
    stdout
}

#[path = "../../../vgpud/tests/common/guest_build.rs"]
mod guest_build;
#[allow(unused_imports)] // not every test binary builds the guest
pub use guest_build::static_guest_binary;
