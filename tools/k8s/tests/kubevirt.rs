//! KubeVirt: the domain rewrite on KubeVirt-shaped domains, the domain
//! hook over gRPC, and a KubeVirt domain with a vgpud vGPU that, once
//! rewritten, libvirt validates, defines and boots under QEMU, its guest
//! passing the guest driver's selftest on the vGPU (tests/vm/libvirt.sh
//! --kubevirt, in the VM tests' chroot).

mod common;

use std::path::Path;
use std::process::Command;

use common::{agent, static_guest_binary, vgpud_bin, workspace};
use serde_json::json;
use vgpud_k8s::kubevirt::{rewrite_domain, Rewrite};

const U: &str = "6f1e3c2a-0b4d-4c8e-9a51-3d2f7b8e1c0f";

fn kubevirt_domain() -> String {
    std::fs::read_to_string(workspace().join("tests/vm/kubevirt-domain.xml"))
        .unwrap()
        .replace("@NAME@", "default_vmi-vgpu")
        .replace("@UUID@", U)
        .replace("@KERNEL@", "/boot/vmlinuz")
        .replace("@INITRD@", "/boot/initrd")
        .replace("@CMDLINE@", "console=ttyS0")
        .replace("@LOG@", "/var/log/console.log")
}

fn vmi() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(workspace().join("tests/vm/kubevirt-vmi.json")).unwrap(),
    )
    .unwrap()
}

#[test]
fn a_kubevirt_mdev_host_device_becomes_a_vfio_user_device_on_its_socket() {
    let how = Rewrite::for_vmi(&vmi(), Path::new("/var/run/vgpud"));
    assert_eq!(
        how.aliases.as_deref(),
        Some(&["ua-gpu-gpu1".to_string()][..])
    );
    assert!(how.guest_iommu, "the annotation asks for an IOMMU");
    let (out, uuids) = rewrite_domain(&kubevirt_domain(), &how).unwrap();
    assert_eq!(uuids, [U]);
    assert!(!out.contains("type=\"mdev\""), "{out}");
    assert!(!out.contains("ramfb"), "{out}");
    let dev = json!({"driver": "vfio-user-pci", "id": "ua-gpu-gpu1",
        "socket": {"type": "unix", "path": format!("/var/run/vgpud/{U}/vfio-user.sock")}});
    let escaped = dev.to_string().replace('"', "&quot;");
    // Into KubeVirt's own qemu:commandline, beside its env.
    let cmd = out.split("<qemu:commandline>").nth(1).unwrap();
    let cmd = cmd.split("</qemu:commandline>").next().unwrap();
    assert!(
        cmd.contains("<qemu:env name=\"KUBEVIRT_TEST\" value=\"1\">"),
        "{cmd}"
    );
    assert!(cmd.contains("<qemu:arg value=\"-device\"/>"), "{cmd}");
    assert!(
        cmd.contains(&format!("<qemu:arg value=\"{escaped}\"/>")),
        "{cmd}"
    );
    assert_eq!(out.matches("<qemu:commandline>").count(), 1);
    assert!(
        out.contains(
            "<memoryBacking><source type=\"memfd\"/><access mode=\"shared\"/></memoryBacking>"
        ),
        "{out}"
    );
    assert!(
        out.contains("<iommu model=\"intel\"><driver caching_mode=\"on\"/></iommu>"),
        "{out}"
    );
    assert!(out.contains("<ioapic driver=\"qemu\"/>"), "{out}");
    // What else KubeVirt wrote stays as it was.
    for kept in [
        "<controller type=\"virtio-serial\" index=\"0\" model=\"virtio-non-transitional\"></controller>",
        "<entry name=\"manufacturer\">KubeVirt</entry>",
        "<memballoon model=\"none\"></memballoon>",
        "<!-- A domain as KubeVirt",
    ] {
        assert!(out.contains(kept), "{kept} in {out}");
    }
}

#[test]
fn only_vgpud_devices_are_rewritten_and_existing_memory_backing_is_merged() {
    // A second mdev of another vendor's resource (its alias belongs to a
    // gpus entry of nvidia.com/...), hugepages already asked for, a file
    // source, and no qemu namespace on the domain.
    let other = "11111111-2222-4333-8444-555555555555";
    let xml = format!(
        "<domain type='kvm'><name>x</name><memoryBacking><hugepages/><source type='file'/></memoryBacking>\
         <devices><hostdev type='mdev' mode='subsystem' model='vfio-pci'><source><address uuid='{U}'/></source><alias name='ua-gpu-mine'/></hostdev>\
         <hostdev type='mdev' mode='subsystem' model='vfio-pci'><source><address uuid='{other}'/></source><alias name='ua-gpu-theirs'/></hostdev>\
         </devices></domain>"
    );
    let vmi = json!({"spec": {"domain": {"devices": {"gpus": [
        {"name": "mine", "deviceName": "vgpud.io/vgpud-2c"},
        {"name": "theirs", "deviceName": "nvidia.com/GRID_T4-1Q"}]}}}});
    let how = Rewrite::for_vmi(&vmi, Path::new("/s"));
    assert!(!how.guest_iommu);
    let (out, uuids) = rewrite_domain(&xml, &how).unwrap();
    assert_eq!(uuids, [U]);
    assert!(
        out.contains(other),
        "the other vendor's device stays: {out}"
    );
    assert!(
        out.starts_with(
            "<domain type='kvm' xmlns:qemu=\"http://libvirt.org/schemas/domain/qemu/1.0\">"
        ),
        "{out}"
    );
    assert!(
        out.contains("<memoryBacking><hugepages/><source type=\"memfd\"/><access mode=\"shared\"/></memoryBacking>"),
        "{out}"
    );
    assert!(!out.contains("<iommu"), "no IOMMU unless asked: {out}");
    assert!(out.ends_with("</qemu:commandline></domain>"), "{out}");
    // A domain without vgpud devices is returned as it is.
    let none = json!({"spec": {"domain": {"devices": {}}}});
    let (same, u) = rewrite_domain(&xml, &Rewrite::for_vmi(&none, Path::new("/s"))).unwrap();
    assert_eq!((same.as_str(), u.len()), (xml.as_str(), 0));
    // A UUID that is no UUID is refused, not made into a path.
    let bad = xml.replace(U, "../../etc");
    let e = rewrite_domain(&bad, &how).unwrap_err().to_string();
    assert!(e.contains("UUID"), "{e}");
    // A qemu prefix bound elsewhere is refused.
    let odd = xml.replace(
        "<domain type='kvm'>",
        "<domain type='kvm' xmlns:qemu='urn:x'>",
    );
    assert!(rewrite_domain(&odd, &how).is_err());
}

#[test]
fn the_domain_hook_answers_mutate_domain_over_grpc() {
    use vgpud_k8s::proto::kubevirt as pb;
    let dir = common::TempDir::new("hook");
    let sock = dir.path().join("kubevirt-plugin/vgpud/hook.sock");
    let mut child = Command::new(agent())
        .args(["kubevirt-hook", "--socket"])
        .arg(&sock)
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let t = std::time::Instant::now();
    while !sock.exists() {
        assert!(t.elapsed().as_secs() < 10, "no hook socket");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let reply = rt.block_on(async {
        let ch = vgpud_k8s::grpc::connect(&sock).await.unwrap();
        let mut c = pb::domain_hook_service_client::DomainHookServiceClient::new(ch);
        let ok = c
            .mutate_domain(pb::MutateDomainRequest {
                domain_type: "libvirt".into(),
                domain: kubevirt_domain().into_bytes(),
                vmi: vmi().to_string().into_bytes(),
                sidecar_context: Some(pb::SidecarContext {
                    invocation_context: "Boot".into(),
                }),
            })
            .await
            .unwrap()
            .into_inner();
        let refused = c
            .mutate_domain(pb::MutateDomainRequest {
                domain_type: "libvirt".into(),
                domain: b"<domain><devices><hostdev type='mdev'><source><address uuid='x'/></source><alias name='ua-gpu-gpu1'/></hostdev></devices></domain>".to_vec(),
                vmi: vmi().to_string().into_bytes(),
                sidecar_context: None,
            })
            .await
            .unwrap_err();
        (ok, refused)
    });
    // The client's connection goes with its runtime.
    drop(rt);
    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let out = String::from_utf8(reply.0.domain).unwrap();
    assert!(
        out.contains("vfio-user-pci") && !out.contains("type=\"mdev\""),
        "{out}"
    );
    assert_eq!(reply.1.code(), tonic::Code::InvalidArgument);
    assert!(!sock.exists(), "the socket is removed at exit");
}

#[test]
fn a_kubevirt_domain_with_a_vgpud_vgpu_boots_under_libvirt_and_its_guest_passes_the_selftest() {
    common::require_root("the KubeVirt VM test (chroot, mounts)");
    let guest = static_guest_binary();
    let out = Command::new("bash")
        .arg(workspace().join("tests/vm/libvirt.sh"))
        .arg("--vgpud")
        .arg(vgpud_bin("vgpud"))
        .arg("--vgpuctl")
        .arg(vgpud_bin("vgpuctl"))
        .arg("--guest")
        .arg(&guest)
        .arg("--kubevirt")
        .arg(agent())
        .output()
        .expect("run tests/vm/libvirt.sh --kubevirt");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    println!("{stdout}");
    assert!(
        out.status.success(),
        "KubeVirt VM test failed: {}",
        out.status
    );
    assert!(
        stdout.contains("VGPUD-KUBEVIRT seconds="),
        "the KubeVirt case ran"
    );
}
