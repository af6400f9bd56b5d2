//! The agent against a kubelet stand-in written on Python grpcio
//! (tests/k8s/kubelet_standin.py), independent of the Rust gRPC stack: the
//! device plugin (registration, options, ListAndWatch, Allocate,
//! preferred allocation, health when a CUDA worker dies, a kubelet
//! restart) and the DRA plugin (registration, prepare, idempotence,
//! checkpoint across an agent restart, per-claim errors, unprepare).
//! vgpud runs CUDA parents whose workers emulate the GPU
//! (`VGPUD_CUDA_EMULATE=2`: two emulated GPUs, one per parent), so a worker can be killed.

mod common;

use common::{agent, standin, workspace, TempDir, Vgpud};
use serde_json::{json, Value};

const GPUS: &str = "[catalog.parent.\"gpu0\"]\nengine = \"cuda\"\n[catalog.parent.\"gpu1\"]\nengine = \"cuda\"\ndevice = 1\n";

/// The layout: three 1c vGPUs (two on gpu0, NUMA 0; one on gpu1, NUMA 1)
/// and a 3c on gpu1.
fn layout() -> (String, Value) {
    let v = [
        (
            "1a2b3c4d-0000-4000-8000-000000000001",
            "emulated-1c",
            "gpu0",
            0,
        ),
        (
            "1a2b3c4d-0000-4000-8000-000000000002",
            "emulated-1c",
            "gpu0",
            0,
        ),
        (
            "1a2b3c4d-0000-4000-8000-000000000003",
            "emulated-1c",
            "gpu1",
            1,
        ),
        (
            "1a2b3c4d-0000-4000-8000-000000000004",
            "emulated-3c",
            "gpu1",
            1,
        ),
    ];
    let mut toml = String::from("[parent.gpu0]\nnuma_node = 0\n[parent.gpu1]\nnuma_node = 1\n");
    for (u, t, p, _) in v {
        toml += &format!("[[vgpu]]\nuuid = \"{u}\"\ntype = \"{t}\"\nparent = \"{p}\"\n");
    }
    let j = v
        .iter()
        .map(|(u, t, p, n)| json!({"uuid": u, "type": t, "parent": p, "numa": n}))
        .collect();
    (toml, Value::Array(j))
}

fn device_plugin_case(name: &str, policy: &str, cdi: bool) {
    let dir = TempDir::new(name);
    let v = Vgpud::start(dir.path(), GPUS, &[("VGPUD_CUDA_EMULATE", "2")]);
    let (toml, j) = layout();
    std::fs::write(dir.path().join("layout.toml"), toml).unwrap();
    let kubelet = dir.path().join("kubelet");
    let cdi_dir = dir.path().join("cdi");
    let mut args: Vec<String> = vec![
        "device-plugin".into(),
        "--proto-dir".into(),
        workspace().join("tools/k8s/proto").display().to_string(),
        "--kubelet-dir".into(),
        kubelet.display().to_string(),
        "--run-dir".into(),
        v.run.display().to_string(),
        "--vgpud-pid".into(),
        v.child.id().to_string(),
        "--layout-json".into(),
        j.to_string(),
        "--policy".into(),
        policy.into(),
        "--agent-log".into(),
        dir.path().join("agent.log").display().to_string(),
    ];
    if cdi {
        args.push("--cdi".into());
    }
    args.push("--".into());
    args.extend(
        [
            agent().display().to_string(),
            "serve".into(),
            "--run-dir".into(),
            v.run.display().to_string(),
            "--kubelet-dir".into(),
            kubelet.display().to_string(),
            "--layout".into(),
            dir.path().join("layout.toml").display().to_string(),
            "--policy".into(),
            policy.into(),
            "--health-interval-ms".into(),
            "200".into(),
        ]
        .into_iter()
        .chain(
            cdi.then(|| ["--cdi-dir".to_string(), cdi_dir.display().to_string()])
                .into_iter()
                .flatten(),
        ),
    );
    let out = standin(&args, &dir.path().join("agent.log"));
    assert!(out.contains("Unhealthy within 2 s"), "the health case ran");
    assert!(
        out.contains("registered again within 5 s"),
        "the restart case ran"
    );
    if cdi {
        let spec: Value = serde_json::from_slice(
            &std::fs::read(cdi_dir.join("vgpud.io-device-plugin.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(spec["devices"].as_array().unwrap().len(), 4, "{spec}");
    }
}

#[test]
fn device_plugin_against_the_kubelet_standin_pack_with_mounts() {
    device_plugin_case("dp-pack", "pack", false);
}

#[test]
fn device_plugin_against_the_kubelet_standin_spread_with_cdi() {
    device_plugin_case("dp-spread", "spread", true);
}

#[test]
fn dra_plugin_against_the_kubelet_standin() {
    let dir = TempDir::new("dra");
    let v = Vgpud::start(dir.path(), "", &[]);
    let kubelet = dir.path().join("kubelet");
    let run = v.run.display().to_string();
    let agent = agent().display().to_string();
    let p = |x: &str| dir.path().join(x).display().to_string();
    let slices = json!([
        agent,
        "resource-slices",
        "--run-dir",
        run,
        "--node-name",
        "node-a"
    ]);
    let args: Vec<String> = [
        "dra",
        "--proto-dir",
        &workspace().join("tools/k8s/proto").display().to_string(),
        "--kubelet-dir",
        &kubelet.display().to_string(),
        "--run-dir",
        &run,
        "--claims-dir",
        &p("claims"),
        "--cdi-dir",
        &p("cdi"),
        "--node",
        "node-a",
        "--types",
        "vgpud-2c",
        "vgpud-1c",
        "--slices-cmd",
        &slices.to_string(),
        "--agent-log",
        &p("agent.log"),
        "--",
        &agent,
        "serve",
        "--dra",
        "--node-name",
        "node-a",
        "--run-dir",
        &run,
        "--kubelet-dir",
        &kubelet.display().to_string(),
        "--claims-dir",
        &p("claims"),
        "--state-dir",
        &p("state"),
        "--cdi-dir",
        &p("cdi"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = standin(&args, &dir.path().join("agent.log"));
    assert!(out.contains("checkpoint"), "the restart case ran");
    // The checkpoint is empty once every claim is unprepared.
    let cp: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("state/dra-checkpoint.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cp, json!({"claims": {}}));
}
