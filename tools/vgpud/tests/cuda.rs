//! The CUDA engine where CI runs: no GPU. A `cuda` parent must then stop
//! vgpud at start with an error that names the parent and the reason (the
//! GPU tests proper run on a GPU machine: tests/gpu/run.sh).

use std::process::Command;

#[test]
fn a_gpu_parent_without_a_gpu_is_a_clear_start_error() {
    let dir = std::env::temp_dir().join(format!("vgpud-cuda-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("vgpud.toml");
    std::fs::write(
        &cfg,
        "[catalog.parent.\"gpu0\"]\nengine = \"cuda\"\ndevice = 0\n",
    )
    .unwrap();
    // The worker binary sits beside vgpud, as installed.
    let worker = std::path::Path::new(env!("CARGO_BIN_EXE_vgpud-cuda-worker"));
    let probe = Command::new(worker).arg("--probe").output().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vgpud"))
        .arg("--config")
        .arg(&cfg)
        .arg("--run-dir")
        .arg(dir.join("run"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    if probe.status.success() {
        // A GPU host: the probe answers with the GPU, as JSON.
        let gpu: serde_json::Value = serde_json::from_slice(&probe.stdout).unwrap();
        assert!(gpu["memory_bytes"].as_u64().unwrap() > 0, "{gpu}");
        return;
    }
    assert!(!out.status.success(), "vgpud started with no GPU");
    assert!(
        err.contains("parent gpu0") && err.contains("GPU 0") && err.contains("libcuda"),
        "{err}"
    );
    assert!(
        String::from_utf8_lossy(&probe.stderr).contains("no CUDA driver library"),
        "the worker says why"
    );
}
