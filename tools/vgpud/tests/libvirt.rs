//! libvirt: `vgpuctl libvirt-xml` prints a domain that libvirt's own schema
//! accepts (`virt-xml-validate`, libvirt 11.3 from Debian trixie, installed
//! into the VM tests' chroot by tests/vm/prepare.sh).
//!
//! Needs root (chroot) and, the first time, network (prepare.sh).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn vm_root() -> PathBuf {
    PathBuf::from(std::env::var("VGPUD_CACHE").unwrap_or_else(|_| "/var/cache/vgpud".into()))
        .join("trixie")
}

fn require_root() {
    // SAFETY: geteuid(2) takes no arguments, touches no memory and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the libvirt test uses a chroot and needs root, as .ci/run has"
    );
}

/// The chroot with QEMU and libvirt (built once, cached).
fn prepare_chroot() {
    let out = Command::new("bash")
        .arg(workspace().join("tests/vm/prepare.sh"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .expect("run tests/vm/prepare.sh");
    assert!(out.success(), "tests/vm/prepare.sh failed");
}

struct Vgpud {
    child: Child,
    run: PathBuf,
}

impl Vgpud {
    fn start(run: &Path) -> Vgpud {
        let child = Command::new(env!("CARGO_BIN_EXE_vgpud"))
            .arg("--run-dir")
            .arg(run)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while !run.join("control.sock").exists() {
            assert!(t.elapsed() < Duration::from_secs(20), "vgpud did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Vgpud {
            child,
            run: run.to_path_buf(),
        }
    }

    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_vgpuctl"))
            .arg("--run-dir")
            .arg(&self.run)
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.ctl(args);
        assert!(
            o.status.success(),
            "vgpuctl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }
}

impl Drop for Vgpud {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `virt-xml-validate FILE domain` in the chroot: (passed, what it said).
fn validate(xml: &str, name: &str) -> (bool, String) {
    let dir_in = format!("/tmp/vgpud-libvirt-{}", std::process::id());
    let dir = vm_root().join(dir_in.trim_start_matches('/'));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), xml).unwrap();
    let out = Command::new("chroot")
        .arg(vm_root())
        .args(["/usr/bin/env", "-i", "PATH=/usr/bin:/bin", "LC_ALL=C.UTF-8"])
        .arg("virt-xml-validate")
        .arg(format!("{dir_in}/{name}"))
        .arg("domain")
        .output()
        .expect("run virt-xml-validate in the chroot");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(dir.join(name));
    let _ = std::fs::remove_dir(&dir);
    (out.status.success(), said)
}

const U: &str = "5d2e6f1a-7b3c-4d8e-9f0a-1b2c3d4e5f60";

#[test]
fn libvirt_xml_is_a_domain_that_virt_xml_validate_accepts() {
    require_root();
    prepare_chroot();
    let dir = std::env::temp_dir().join(format!("vgpud-libvirt-xml-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let vgpud = Vgpud::start(&dir.join("run"));
    vgpud.ok(&["create", "--type", "vgpud-4c", "--uuid", U]);
    let socket = dir.join(format!("run/{U}.sock"));

    // The default: a complete domain, as printed.
    let domain = vgpud.ok(&["libvirt-xml", U]);
    assert!(
        domain.starts_with(
            "<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
        ),
        "{domain}"
    );
    for part in [
        "<source type='memfd'/>",
        "<access mode='shared'/>",
        "<iommu model='intel'>",
        "<driver caching_mode='on'/>",
        "<ioapic driver='qemu'/>",
        "intel_iommu=on",
        "vfio-user-pci",
        &socket.display().to_string(),
        "</qemu:commandline>\n</domain>\n",
    ] {
        assert!(domain.contains(part), "{part} in\n{domain}");
    }
    let (ok, said) = validate(&domain, "default.xml");
    assert!(
        ok,
        "virt-xml-validate rejected the default domain: {said}\n{domain}"
    );
    assert!(said.contains("validates"), "{said}");

    // With a boot source, TCG and a console file.
    let booted = vgpud.ok(&[
        "libvirt-xml",
        U,
        "--domain-type",
        "qemu",
        "--name",
        "guest-1",
        "--memory-mib",
        "512",
        "--vcpus",
        "1",
        "--kernel",
        "/boot/vmlinuz",
        "--initrd",
        "/boot/initrd.img",
        "--cmdline",
        "console=ttyS0 panic=-1",
        "--console-log",
        "/var/log/guest-1.log",
        "--disk",
        "/var/lib/libvirt/images/guest-1.qcow2",
    ]);
    assert!(
        booted.contains("<cmdline>console=ttyS0 panic=-1 intel_iommu=on</cmdline>"),
        "{booted}"
    );
    assert!(
        booted.contains("<driver name='qemu' type='qcow2'/>"),
        "{booted}"
    );
    let (ok, said) = validate(&booted, "booted.xml");
    assert!(ok, "virt-xml-validate rejected: {said}\n{booted}");

    // The validator does reject what is not a domain: the paste-in
    // fragment (several top-level elements), and the domain without its
    // qemu namespace.
    let fragment = vgpud.ok(&["libvirt-xml", U, "--fragment"]);
    for part in [
        "1. on <domain>: xmlns:qemu=",
        "2. in <domain>",
        "3. in <features>:",
        "4. in <devices>:",
        "5. in <domain>, after <devices>:",
        "6. on the guest kernel's command line: intel_iommu=on",
    ] {
        assert!(fragment.contains(part), "{part} in\n{fragment}");
    }
    assert!(
        !validate(&fragment, "fragment.xml").0,
        "a fragment is no domain"
    );
    let unbound = domain.replace(
        " xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'",
        "",
    );
    assert!(
        !validate(&unbound, "unbound.xml").0,
        "the qemu: prefix must be bound"
    );

    // An unknown vGPU is refused.
    let none = vgpud.ctl(&["libvirt-xml", "00000000-0000-4000-8000-000000000000"]);
    assert_eq!(none.status.code(), Some(1));
    drop(vgpud);
    let _ = std::fs::remove_dir_all(&dir);
}
