//! The systemd unit (dist/vgpud.service) and the example configuration
//! (dist/vgpud.toml) it reads: `systemd-analyze verify` accepts the unit
//! without a word, the unit has what the service needs, and the example
//! configuration parses.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `systemd-analyze verify` of `unit` (a copy in a directory of its own,
/// named vgpud.service): (exit status 0, everything it printed).
fn verify(unit: &str, tag: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("vgpud-unit-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("vgpud.service");
    std::fs::write(&path, unit).unwrap();
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("systemd-analyze (Debian: apt-get install systemd) is needed to verify the unit");
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&path)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .expect("run systemd-analyze");
    let _ = std::fs::remove_dir_all(&dir);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(workspace().join("dist/vgpud.service")).unwrap();
    // verify checks that ExecStart's binary exists: point it at the one
    // this test was built with.
    let installed = "ExecStart=/usr/local/bin/vgpud ";
    assert!(unit.contains(installed), "ExecStart runs {installed}");
    let here = unit.replace(
        installed,
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_vgpud")),
    );
    let (ok, said) = verify(&here, "good");
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );

    // What the service needs is there.
    for line in [
        "RuntimeDirectory=vgpud",
        "StateDirectory=vgpud",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "LimitMEMLOCK=infinity",
        "DeviceAllow=/dev/fuse rw",
        "DeviceAllow=char-nvidia-frontend rw",
        "SystemCallFilter=@system-service @mount seccomp",
        "CAP_SETUID CAP_SETGID CAP_SETPCAP CAP_SYS_CHROOT",
        "--run-dir /run/vgpud --mdev-root /var/lib/vgpud",
    ] {
        assert!(unit.lines().any(|l| l.contains(line)), "{line}");
    }
    // Options that would give the service a mount namespace of its own
    // hide the FUSE tree from mdevctl on the host.
    for key in [
        "ProtectSystem=",
        "ProtectHome=",
        "PrivateTmp=",
        "PrivateDevices=",
        "PrivateMounts=",
        "ReadWritePaths=",
        "ProtectKernelModules=",
        "ProtectKernelTunables=",
        "ProtectControlGroups=",
        "ProtectKernelLogs=",
        "TemporaryFileSystem=",
    ] {
        assert!(
            !unit.lines().any(|l| l.trim_start().starts_with(key)),
            "{key} would hide the sysfs tree"
        );
    }

    // The check can fail: a value systemd cannot parse, an unknown key,
    // and a missing binary are each reported.
    for (tag, broken) in [
        (
            "value",
            here.replace("Restart=on-failure", "Restart=sometimes"),
        ),
        ("key", here.replace("LimitMEMLOCK=", "LimitMEMLOKC=")),
        (
            "binary",
            here.replace(env!("CARGO_BIN_EXE_vgpud"), "/nonexistent/vgpud"),
        ),
    ] {
        let (ok, said) = verify(&broken, tag);
        assert!(
            !ok || !said.trim().is_empty(),
            "a broken unit ({tag}) passed verify"
        );
    }
}

#[test]
fn example_configuration_parses() {
    let path = workspace().join("dist/vgpud.toml");
    let f = mdev_types::ConfigFile::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let group = f.sockets.group.expect("[sockets] group");
    assert_eq!(
        group.value,
        mdev_types::sockets::Principal::Name("libvirt-qemu".into())
    );
    assert_eq!(f.sockets.mode.map(|m| m.value), Some(0o660));
    assert_eq!(
        f.policy.default.policy.kind,
        scheduler::PolicyKind::FixedShare
    );
}
