//! The Kubernetes objects that install vgpud's node agent (`vgpud-k8s`,
//! docs/kubernetes.md) in a cluster: what `vgpuctl k8s manifests` prints.
//!
//! vgpud itself runs on each node as a service (dist/vgpud.service); the
//! agent runs beside it as a DaemonSet on the nodes labelled
//! `vgpud.io/node=true`, reaching vgpud's run directory and the kubelet's
//! plugin directories through host paths. Each node's layout (its
//! pre-created vGPUs) is the node's own `/etc/vgpud/k8s-layout.toml`.
//! The objects are plain JSON here; the agent's tests check each against
//! the Kubernetes API types (k8s-openapi) and KubeVirt's published types.

use serde_json::{json, Value};

/// What to generate.
#[derive(Clone, Debug)]
pub struct Options {
    pub namespace: String,
    /// The agent's image (holding `vgpud-k8s`, and `kubectl` for DRA).
    pub image: String,
    /// The vGPU types offered (a DeviceClass each; KubeVirt's permitted
    /// devices): `(id, name)`, as `vgpuctl types` lists them.
    pub types: Vec<(String, String)>,
    /// The DRA driver (DeviceClasses, RBAC for claims and slices).
    pub dra: bool,
    /// KubeVirt's pieces: the Plugin, the policy that adds the hook
    /// sidecar to virt-launcher pods, the KubeVirt configuration.
    pub kubevirt: bool,
}

const AGENT: &str = "vgpud-k8s";
/// The KubeVirt Plugin's name, and its socket directory's.
pub const KUBEVIRT_PLUGIN: &str = "vgpud";

fn host_path(name: &str, path: &str, kind: &str) -> Value {
    json!({"name": name, "hostPath": {"path": path, "type": kind}})
}

fn mount(name: &str, path: &str, read_only: bool) -> Value {
    if read_only {
        json!({"name": name, "mountPath": path, "readOnly": true})
    } else {
        json!({"name": name, "mountPath": path})
    }
}

/// The objects, in the order to apply them; each a JSON object with
/// `apiVersion` and `kind`.
pub fn objects(o: &Options) -> Vec<Value> {
    let ns = &o.namespace;
    let mut out = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": AGENT, "namespace": ns}}),
    ];
    let mut rules = vec![json!({"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]})];
    if o.dra {
        rules.push(
            json!({"apiGroups": ["resource.k8s.io"], "resources": ["resourceclaims"],
                          "verbs": ["get", "list", "watch"]}),
        );
        rules.push(json!({"apiGroups": ["resource.k8s.io"], "resources": ["resourceslices"],
                          "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}));
    }
    out.push(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                    "metadata": {"name": AGENT}, "rules": rules}),
    );
    out.push(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                    "metadata": {"name": AGENT},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": AGENT},
                    "subjects": [{"kind": "ServiceAccount", "name": AGENT, "namespace": ns}]}));
    let mut command = vec![
        AGENT.to_string(),
        "serve".into(),
        "--layout".into(),
        "/etc/vgpud/k8s-layout.toml".into(),
        "--cdi-dir".into(),
        "/var/run/cdi".into(),
    ];
    if o.dra {
        command.extend(["--dra".into(), "--kubectl".into(), "kubectl".into()]);
    }
    let labels = json!({"app.kubernetes.io/name": AGENT});
    out.push(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": AGENT, "namespace": ns, "labels": labels},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": AGENT,
                    "nodeSelector": {"vgpud.io/node": "true"},
                    "priorityClassName": "system-node-critical",
                    "containers": [{
                        "name": "agent",
                        "image": o.image,
                        "command": command,
                        "env": [{"name": "NODE_NAME",
                                 "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                        // Root: it links root's vGPU sockets and serves in
                        // the kubelet's directories.
                        "securityContext": {"privileged": true},
                        "volumeMounts": [
                            mount("vgpud-run", "/run/vgpud", false),
                            mount("vgpud-config", "/etc/vgpud", true),
                            mount("device-plugins", "/var/lib/kubelet/device-plugins", false),
                            mount("plugins-registry", "/var/lib/kubelet/plugins_registry", false),
                            mount("plugins", "/var/lib/kubelet/plugins", false),
                            mount("cdi", "/var/run/cdi", false),
                            mount("state", "/var/lib/vgpud-k8s", false),
                        ],
                    }],
                    "volumes": [
                        host_path("vgpud-run", "/run/vgpud", "Directory"),
                        host_path("vgpud-config", "/etc/vgpud", "Directory"),
                        host_path("device-plugins", "/var/lib/kubelet/device-plugins", "Directory"),
                        host_path("plugins-registry", "/var/lib/kubelet/plugins_registry", "Directory"),
                        host_path("plugins", "/var/lib/kubelet/plugins", "DirectoryOrCreate"),
                        host_path("cdi", "/var/run/cdi", "DirectoryOrCreate"),
                        host_path("state", "/var/lib/vgpud-k8s", "DirectoryOrCreate"),
                    ],
                },
            },
        },
    }));
    if o.dra {
        out.push(device_class(
            "vgpu.vgpud.io",
            "device.driver == \"vgpud.io\"",
        ));
        for (id, _) in &o.types {
            out.push(device_class(
                &format!("{id}.vgpud.io"),
                &format!("device.driver == \"vgpud.io\" && device.attributes[\"vgpud.io\"].type == \"{id}\""),
            ));
        }
    }
    if o.kubevirt {
        out.extend(kubevirt(o));
    }
    out
}

fn device_class(name: &str, expression: &str) -> Value {
    json!({"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass",
           "metadata": {"name": name},
           "spec": {"selectors": [{"cel": {"expression": expression}}]}})
}

/// KubeVirt 1.9 (feature gate `Plugins`): the Plugin with its domain hook,
/// the policy that adds the hook's sidecar to every virt-launcher pod that
/// asks for a vgpud resource, and the KubeVirt configuration.
fn kubevirt(o: &Options) -> Vec<Value> {
    let dir = format!("/var/run/kubevirt-plugin/{KUBEVIRT_PLUGIN}");
    let policy = "vgpud-kubevirt-hook";
    let sidecar = format!(
        "Object.spec.containers{{name: \"vgpud-hook\", image: \"{image}\", \
         command: [\"{AGENT}\", \"kubevirt-hook\", \"--socket\", \"{dir}/hook.sock\"], \
         volumeMounts: [Object.spec.containers.volumeMounts{{name: \"kubevirt-plugin-sockets\", \
         mountPath: \"{dir}\", subPath: \"{KUBEVIRT_PLUGIN}\"}}]}}",
        image = o.image
    );
    let mdevs: Vec<Value> = o
        .types
        .iter()
        .map(|(id, name)| {
            json!({"mdevNameSelector": name, "resourceName": format!("vgpud.io/{id}"),
                   "externalResourceProvider": true})
        })
        .collect();
    vec![
        json!({"apiVersion": "plugin.kubevirt.io/v1alpha1", "kind": "Plugin",
               "metadata": {"name": KUBEVIRT_PLUGIN},
               "spec": {"failureStrategy": "Fail",
                        "domainHooks": [{"sidecar": {"socketPath": format!("{dir}/hook.sock")}}],
                        "mutatingAdmissionPolicies": [{"name": policy}]}}),
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingAdmissionPolicy",
               "metadata": {"name": policy},
               "spec": {
                   "failurePolicy": "Fail",
                   "reinvocationPolicy": "Never",
                   "matchConstraints": {
                       "objectSelector": {"matchLabels": {"kubevirt.io": "virt-launcher"}},
                       "resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                          "operations": ["CREATE"], "resources": ["pods"]}]},
                   "matchConditions": [{"name": "asks-for-a-vgpud-vgpu", "expression":
                       "object.spec.containers.exists(c, has(c.resources) && has(c.resources.limits) && c.resources.limits.exists(k, k.startsWith(\"vgpud.io/\")))"}],
                   "mutations": [{"patchType": "ApplyConfiguration",
                                  "applyConfiguration": {"expression":
                                      format!("Object{{spec: Object.spec{{containers: [{sidecar}]}}}}")}}]}}),
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingAdmissionPolicyBinding",
               "metadata": {"name": policy},
               "spec": {"policyName": policy}}),
        json!({"apiVersion": "kubevirt.io/v1", "kind": "KubeVirt",
               "metadata": {"name": "kubevirt", "namespace": "kubevirt"},
               "spec": {"configuration": {
                   "developerConfiguration": {"featureGates": ["Plugins"]},
                   "permittedHostDevices": {"mediatedDevices": mdevs}}}}),
    ]
}

/// The objects as one YAML stream (each document JSON, which is YAML),
/// with a note before the KubeVirt configuration, which is meant as a
/// merge patch of the cluster's KubeVirt object.
pub fn render(objects: &[Value]) -> String {
    let mut s = String::from(
        "# vgpud's node agent (vgpud-k8s): kubectl apply -f this (docs/kubernetes.md).\n",
    );
    for o in objects {
        s += "---\n";
        if o["kind"] == "KubeVirt" {
            s += "# Merge into the cluster's KubeVirt (kubectl patch kubevirt kubevirt -n kubevirt --type merge\n\
                  # --patch-file ...): keep the feature gates it already has beside Plugins.\n";
        }
        s += &serde_json::to_string_pretty(o).unwrap_or_default();
        s += "\n";
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_have_the_agent_its_classes_and_kubevirts_pieces() {
        let o = Options {
            namespace: "vgpud-system".into(),
            image: "vgpud:1".into(),
            types: vec![("vgpud-2c".into(), "VGPUD-2C".into())],
            dra: true,
            kubevirt: true,
        };
        let objs = objects(&o);
        let kinds: Vec<&str> = objs.iter().map(|v| v["kind"].as_str().unwrap()).collect();
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
                "Plugin",
                "MutatingAdmissionPolicy",
                "MutatingAdmissionPolicyBinding",
                "KubeVirt"
            ]
        );
        assert_eq!(
            objs[10]["spec"]["configuration"]["permittedHostDevices"]["mediatedDevices"][0],
            json!({"mdevNameSelector": "VGPUD-2C", "resourceName": "vgpud.io/vgpud-2c", "externalResourceProvider": true})
        );
        let text = render(&objs);
        assert_eq!(text.matches("\n---\n").count(), objs.len());
        let none = objects(&Options {
            dra: false,
            kubevirt: false,
            ..o
        });
        assert_eq!(none.len(), 5);
    }
}
