//! The API objects, checked offline against the Kubernetes API types
//! (k8s-openapi, Kubernetes 1.36) and KubeVirt 1.9's published types:
//! what `vgpuctl k8s manifests` prints (DaemonSet, RBAC, DeviceClasses,
//! KubeVirt's Plugin, admission policy and configuration) and the
//! ResourceSlices the DRA driver publishes. Each object is read into its
//! API type and written back: a field the type does not have, or in the
//! wrong place or shape, does not come back, and the comparison fails.

mod common;

use std::process::Command;

use common::{agent, vgpud_bin, TempDir, Vgpud};
use k8s_openapi::api::admissionregistration::v1 as adm;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceSlice};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

/// `v` read as a `T` and written back is `v` again.
fn round_trips<T: DeserializeOwned + Serialize>(v: &Value) {
    let t: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| {
        panic!(
            "{} is no {}: {e}\n{v:#}",
            v["kind"],
            std::any::type_name::<T>()
        )
    });
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(&back, v, "{} did not come back whole", v["kind"]);
}

/// The documents of a YAML stream whose documents are JSON.
fn documents(text: &str) -> Vec<Value> {
    text.split("\n---\n")
        .skip(1)
        .map(|d| {
            let body: String = d
                .lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n");
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
        })
        .collect()
}

/// Only `allowed` keys in `v` (an object of one of KubeVirt's Go types,
/// whose JSON names these are).
fn keys_within(v: &Value, allowed: &[&str]) {
    for k in v.as_object().unwrap().keys() {
        assert!(allowed.contains(&k.as_str()), "{k} is no field here: {v}");
    }
}

#[test]
fn vgpuctl_k8s_manifests_are_valid_api_objects() {
    let out = Command::new(vgpud_bin("vgpuctl"))
        .args([
            "--run-dir",
            "/nonexistent",
            "k8s",
            "manifests",
            "--type",
            "vgpud-2c",
            "--type",
            "vgpud-1c",
        ])
        .args(["--image", "registry.example/vgpud:0.1.0"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = documents(&String::from_utf8(out.stdout).unwrap());
    let mut kinds = Vec::new();
    for d in &docs {
        let kind = d["kind"].as_str().unwrap();
        kinds.push(kind.to_string());
        match kind {
            "Namespace" => round_trips::<Namespace>(d),
            "ServiceAccount" => round_trips::<ServiceAccount>(d),
            "ClusterRole" => round_trips::<ClusterRole>(d),
            "ClusterRoleBinding" => round_trips::<ClusterRoleBinding>(d),
            "DaemonSet" => round_trips::<DaemonSet>(d),
            "DeviceClass" => round_trips::<DeviceClass>(d),
            "MutatingAdmissionPolicy" => round_trips::<adm::MutatingAdmissionPolicy>(d),
            "MutatingAdmissionPolicyBinding" => {
                round_trips::<adm::MutatingAdmissionPolicyBinding>(d)
            }
            // KubeVirt's types (staging/src/kubevirt.io/api/plugin/v1alpha1/types.go,
            // core/v1/types.go): the JSON names of their fields.
            "Plugin" => {
                assert_eq!(d["apiVersion"], "plugin.kubevirt.io/v1alpha1");
                keys_within(
                    &d["spec"],
                    &[
                        "condition",
                        "failureStrategy",
                        "domainHooks",
                        "nodeHooks",
                        "mutatingAdmissionPolicies",
                        "validatingAdmissionPolicies",
                        "mutatingAdmissionWebhooks",
                        "validatingAdmissionWebhooks",
                    ],
                );
                let hook = &d["spec"]["domainHooks"][0];
                keys_within(
                    hook,
                    &["cel", "sidecar", "condition", "failureStrategy", "timeout"],
                );
                let socket = hook["sidecar"]["socketPath"].as_str().unwrap();
                // The socket must lie under /var/run/kubevirt-plugin/<plugin name>/.
                assert_eq!(
                    socket,
                    format!(
                        "/var/run/kubevirt-plugin/{}/hook.sock",
                        d["metadata"]["name"].as_str().unwrap()
                    )
                );
            }
            "KubeVirt" => {
                assert_eq!(d["apiVersion"], "kubevirt.io/v1");
                let c = &d["spec"]["configuration"];
                assert_eq!(
                    c["developerConfiguration"]["featureGates"],
                    json!(["Plugins"])
                );
                for m in c["permittedHostDevices"]["mediatedDevices"]
                    .as_array()
                    .unwrap()
                {
                    keys_within(
                        m,
                        &[
                            "mdevNameSelector",
                            "resourceName",
                            "externalResourceProvider",
                        ],
                    );
                    assert_eq!(m["externalResourceProvider"], true);
                }
            }
            other => panic!("unexpected kind {other}"),
        }
    }
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "DaemonSet",
            "DeviceClass",
            "DeviceClass",
            "DeviceClass",
            "Plugin",
            "MutatingAdmissionPolicy",
            "MutatingAdmissionPolicyBinding",
            "KubeVirt"
        ]
    );
    // The sidecar mounts KubeVirt's plugin socket volume with a subPath
    // (KubeVirt's admission policy refuses it otherwise).
    let map = docs
        .iter()
        .find(|d| d["kind"] == "MutatingAdmissionPolicy")
        .unwrap();
    let expr = map["spec"]["mutations"][0]["applyConfiguration"]["expression"]
        .as_str()
        .unwrap();
    assert!(
        expr.contains("name: \"kubevirt-plugin-sockets\"") && expr.contains("subPath: \"vgpud\""),
        "{expr}"
    );
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let cmd = &ds["spec"]["template"]["spec"]["containers"][0]["command"];
    assert_eq!(cmd[0], "vgpud-k8s");
    // The agent accepts the command line the DaemonSet gives it.
    let args: Vec<String> = cmd.as_array().unwrap()[1..]
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let help = Command::new(agent())
        .args(&args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        help.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&help.stderr)
    );
}

#[test]
fn resource_slices_are_valid_and_hold_the_parents_capacity() {
    let dir = TempDir::new("slices");
    let v = Vgpud::start(dir.path(), "", &[]);
    let out = Command::new(agent())
        .arg("resource-slices")
        .arg("--run-dir")
        .arg(&v.run)
        .args(["--node-name", "node-a"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    for s in items {
        round_trips::<ResourceSlice>(s);
        assert_eq!(s["spec"]["driver"], "vgpud.io");
        assert_eq!(s["spec"]["nodeName"], "node-a");
        assert_eq!(
            s["spec"]["pool"],
            json!({"name": "node-a", "generation": 1, "resourceSliceCount": 2})
        );
    }
    // One slice of counters, one of devices (a slice may not hold both).
    let sets = items[0]["spec"]["sharedCounters"].as_array().unwrap();
    assert!(items[0]["spec"].get("devices").is_none());
    assert_eq!(sets.len(), 1);
    let c = &sets[0]["counters"];
    assert_eq!(sets[0]["name"], "cpu0");
    assert_eq!(c["framebuffer"]["value"], (8u64 << 30).to_string());
    assert_eq!(c["vgpus"]["value"], "8");
    assert_eq!(c["type-vgpud-4c"]["value"], "2");
    let devices = items[1]["spec"]["devices"].as_array().unwrap();
    // vgpud-1c x8, -2c x4, -4c x2, -8c x1.
    assert_eq!(devices.len(), 15);
    let d = devices
        .iter()
        .find(|d| d["name"] == "cpu0-vgpud-4c-1")
        .unwrap();
    assert_eq!(d["attributes"]["type"]["string"], "vgpud-4c");
    assert_eq!(d["attributes"]["parent"]["string"], "cpu0");
    assert_eq!(d["attributes"]["index"]["int"], 1);
    assert_eq!(
        d["consumesCounters"],
        json!([{"counterSet": "cpu0", "counters": {
            "framebuffer": {"value": (4u64 << 30).to_string()},
            "vgpus": {"value": "1"},
            "type-vgpud-4c": {"value": "1"}}}])
    );
    // Whatever mix the scheduler picks, the counters hold no more than
    // the parent: every device's framebuffer fits, two 4c fill it.
    let fb = |d: &Value| {
        d["capacity"]["framebuffer"]["value"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert!(devices.iter().all(|d| fb(d) <= 8 << 30));
}
