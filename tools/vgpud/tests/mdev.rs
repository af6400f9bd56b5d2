//! Test tier 4: the real mdevctl 1.4.0 manages vgpud's vGPUs through the
//! FUSE sysfs tree (`vgpud --mdev-root`), and vgpuctl through the control
//! socket. Needs root (FUSE mount); installs mdevctl under
//! /var/cache/vgpud/mdevctl when it is not on PATH (tests/mdev/install-mdevctl.sh).

use std::ffi::OsStr;
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn mdevctl_binary() -> PathBuf {
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v mdevctl"])
        .output()
    {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !p.is_empty() {
            return PathBuf::from(p);
        }
    }
    let out = Command::new("bash")
        .arg(workspace().join("tests/mdev/install-mdevctl.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run install-mdevctl.sh");
    assert!(out.status.success(), "installing mdevctl 1.4.0 failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

struct Vgpud {
    child: Option<Child>,
    dir: PathBuf,
}

impl Vgpud {
    /// vgpud with `--mdev-root DIR/root` and `extra` arguments; its log is
    /// appended to DIR/vgpud.log.
    fn start(dir: &Path, extra: &[&OsStr]) -> Vgpud {
        Vgpud::start_env(dir, extra, &[])
    }

    /// As [`Vgpud::start`], with more environment variables.
    fn start_env(dir: &Path, extra: &[&OsStr], env: &[(&str, &OsStr)]) -> Vgpud {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("vgpud.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_vgpud"))
            .arg("--run-dir")
            .arg(dir.join("run"))
            .arg("--mdev-root")
            .arg(dir.join("root"))
            .args(extra)
            .envs(env.iter().copied())
            .env("VGPUD_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let t = Instant::now();
        let bus = dir.join("root/sys/class/mdev_bus");
        while std::fs::read_dir(&bus).map_or(true, |mut d| d.next().is_none()) {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "the mdev tree never appeared"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Vgpud {
            child: Some(child),
            dir: dir.to_path_buf(),
        }
    }

    /// SIGTERM and wait for a clean exit.
    fn stop(&mut self) {
        let mut c = self.child.take().unwrap();
        // SAFETY: kill(2) takes no pointers; the pid is our own child, not
        // yet waited for, so it cannot have been reused.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let status = c.wait().unwrap();
        assert!(status.success(), "vgpud exit {status}");
        assert!(
            !self.dir.join("root/sys/class").exists(),
            "tree unmounted on exit"
        );
    }
}

impl Drop for Vgpud {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Mdevctl {
    bin: PathBuf,
    root: PathBuf,
}

impl Mdevctl {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .env("MDEVCTL_ENV_ROOT", &self.root)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap()
    }
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "mdevctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }
    fn json(&self, args: &[&str]) -> Value {
        let s = self.ok(args);
        if s.trim().is_empty() {
            return Value::Array(vec![]);
        }
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("mdevctl {args:?}: {e}: {s}"))
    }
    fn available(&self) -> Vec<(String, u64)> {
        let v = self.json(&["types", "--dumpjson"]);
        let mut out = Vec::new();
        for t in v[0]["cpu0"].as_array().unwrap() {
            for (id, info) in t.as_object().unwrap() {
                assert_eq!(info["device_api"], "vfio-pci");
                out.push((id.clone(), info["available_instances"].as_u64().unwrap()));
            }
        }
        out
    }
    /// Active devices: uuid → (type, start).
    fn active(&self) -> Vec<String> {
        let v = self.json(&["list", "--dumpjson"]);
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["cpu0"].as_array())
            .flatten()
            .flat_map(|d| d.as_object().unwrap().keys().cloned().collect::<Vec<_>>())
            .collect()
    }
}

fn avail_of(list: &[(String, u64)], t: &str) -> u64 {
    list.iter().find(|(id, _)| id == t).map(|x| x.1).unwrap()
}

fn write_err(path: &Path, data: &str) -> Option<i32> {
    std::fs::write(path, data)
        .err()
        .map(|e| e.raw_os_error().unwrap_or(0))
}

const U1: &str = "6a4e1d2c-3b5f-4a6e-8d7c-9e0f1a2b3c01";
const U2: &str = "6a4e1d2c-3b5f-4a6e-8d7c-9e0f1a2b3c02";

/// Four 2 GiB vGPUs fill the 8 GiB parent; a fifth is refused. Their UUIDs.
fn start_to_exhaustion(m: &Mdevctl, dir: &Path) -> Vec<String> {
    let mut started = Vec::new();
    for _ in 0..4 {
        let out = m.ok(&["start", "-p", "cpu0", "-t", "vgpud-2c"]);
        started.push(out.trim().to_string());
    }
    assert!(
        !m.run(&["start", "-p", "cpu0", "-t", "vgpud-2c"])
            .status
            .success(),
        "a fifth vgpud-2c is refused"
    );
    let a = m.available();
    assert!(a.iter().all(|(_, n)| *n == 0), "nothing left: {a:?}");
    let mut active = m.active();
    active.sort();
    started.sort();
    assert_eq!(active, started);
    for u in &started {
        assert!(
            dir.join(format!("run/{u}.sock")).exists(),
            "vfio-user socket of {u}"
        );
    }
    started
}

/// The kernel's errnos on the raw files; `remove` of two of `started`
/// (taken out of it).
fn raw_files_answer_with_the_kernel_s_errnos(dir: &Path, types: &Path, started: &mut Vec<String>) {
    assert_eq!(
        write_err(&types.join("vgpud-1c/create"), "not-a-uuid\n"),
        Some(libc::EINVAL)
    );
    assert_eq!(
        write_err(&types.join("vgpud-1c/create"), &format!("{}\n", started[0])),
        Some(libc::EEXIST)
    );
    assert_eq!(
        write_err(&types.join("vgpud-1c/create"), U1),
        Some(libc::EUSERS)
    );
    assert_eq!(
        std::fs::read_to_string(types.join("vgpud-1c/create")).map_err(|e| e.kind()),
        Err(ErrorKind::PermissionDenied)
    );
    let dev = dir.join(format!("root/sys/bus/mdev/devices/{}", started[0]));
    assert_eq!(write_err(&dev.join("remove"), "yes"), Some(libc::EINVAL));
    assert_eq!(write_err(&dev.join("remove"), "0"), None, "0 does nothing");
    assert_eq!(
        write_err(&dev.join("remove"), "0\n"),
        None,
        "0 does nothing"
    );
    // remove parses as the kernel's kstrtoul(buf, 0, ..): one trailing
    // newline only, no sign, C prefixes for the base.
    for bad in [
        "1 ",
        " 1",
        "1\n\n",
        "-1",
        "0x",
        "08",
        "18446744073709551616",
    ] {
        assert_eq!(
            write_err(&dev.join("remove"), bad),
            Some(libc::EINVAL),
            "remove {bad:?}"
        );
    }
    assert!(dev.exists());
    // Any non-zero number removes: hex, and 2 with a newline.
    for (u, value) in [(&started[1], "0x1"), (&started[2], "2\n")] {
        let d = dir.join(format!("root/sys/bus/mdev/devices/{u}"));
        assert_eq!(
            write_err(&d.join("remove"), value),
            None,
            "remove {value:?}"
        );
        assert!(!d.exists(), "{value:?} removed {u}");
        assert!(!dir.join(format!("run/{u}.sock")).exists());
    }
    let removed: Vec<String> = started.drain(1..3).collect();
    assert_eq!(removed.len(), 2);
    assert_eq!(
        std::fs::read_link(dev.join("mdev_type")).unwrap(),
        PathBuf::from("../mdev_supported_types/vgpud-2c")
    );
    assert_eq!(
        std::fs::read_link(types.join(format!("vgpud-2c/devices/{}", started[0]))).unwrap(),
        PathBuf::from(format!("../../../{}", started[0]))
    );
}

/// `stop`: an attached VMM is disconnected and the vGPU goes.
fn stop_disconnects_an_attached_vmm(m: &Mdevctl, dir: &Path, started: &[String]) {
    let mut client = vfio_user::Client::new(&dir.join(format!("run/{}.sock", started[0]))).unwrap();
    for u in started {
        m.ok(&["stop", "-u", u]);
        assert!(!dir.join(format!("run/{u}.sock")).exists());
    }
    let mut b = [0u8; 4];
    assert!(
        client.region_read(0, 0, &mut b).is_err(),
        "the attached client was disconnected"
    );
    assert!(m.active().is_empty());
    assert_eq!(avail_of(&m.available(), "vgpud-8c"), 1);
}

/// define / modify / list -d, and a manual start.
fn define_modify_and_list(m: &Mdevctl) {
    m.ok(&["define", "-u", U1, "-p", "cpu0", "-t", "vgpud-4c", "--auto"]);
    m.ok(&["define", "-u", U2, "-p", "cpu0", "-t", "vgpud-1c"]);
    m.ok(&["modify", "-u", U2, "--type", "vgpud-2c", "--manual"]);
    let defined = m.ok(&["list", "-d"]);
    assert!(
        defined.contains(&format!("{U1} cpu0 vgpud-4c auto")),
        "{defined}"
    );
    assert!(
        defined.contains(&format!("{U2} cpu0 vgpud-2c manual")),
        "{defined}"
    );
    m.ok(&["start", "-u", U2]);
    assert_eq!(m.active(), vec![U2.to_string()]);
    let d = m.json(&["list", "-d", "--dumpjson"]);
    assert_eq!(d[0]["cpu0"].as_array().unwrap().len(), 2);
}

/// Across a restart of vgpud, the `--auto` definition starts and the
/// manual one stays defined. The new vgpud.
fn restart_starts_the_auto_definitions(
    m: &Mdevctl,
    dir: &Path,
    mut vgpud: Vgpud,
    with_mdevctl: &[&OsStr],
) -> Vgpud {
    vgpud.stop();
    let vgpud = Vgpud::start(dir, with_mdevctl);
    let t = Instant::now();
    while !m.active().contains(&U1.to_string()) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the --auto device did not start with vgpud"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        m.active(),
        vec![U1.to_string()],
        "only the auto device starts; the manual one stays defined"
    );
    assert!(dir.join(format!("run/{U1}.sock")).exists());
    assert!(
        m.ok(&["list", "-d"]).contains(U2),
        "definitions persist across the restart"
    );
    vgpud
}

#[test]
fn mdevctl_manages_vgpus_through_the_sysfs_tree() {
    // SAFETY: geteuid(2) takes no arguments, touches no memory and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the mdev test mounts FUSE and needs root, as .ci/run has"
    );
    let dir = std::env::temp_dir().join(format!("vgpud-mdev-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let m = Mdevctl {
        bin: mdevctl_binary(),
        root: dir.join("root"),
    };
    let with_mdevctl = [OsStr::new("--mdevctl"), m.bin.as_os_str()];
    let vgpud = Vgpud::start(&dir, &with_mdevctl);
    let types = dir.join("root/sys/devices/vgpud/cpu0/mdev_supported_types");

    // types: the default catalogue with its instance counts.
    let a = m.available();
    assert_eq!(
        a,
        vec![
            ("vgpud-1c".into(), 8),
            ("vgpud-2c".into(), 4),
            ("vgpud-4c".into(), 2),
            ("vgpud-8c".into(), 1)
        ]
    );
    assert!(m.ok(&["types"]).contains("Name: VGPU-4C"));

    let mut started = start_to_exhaustion(&m, &dir);
    raw_files_answer_with_the_kernel_s_errnos(&dir, &types, &mut started);
    stop_disconnects_an_attached_vmm(&m, &dir, &started);
    define_modify_and_list(&m);
    let vgpud = restart_starts_the_auto_definitions(&m, &dir, vgpud, &with_mdevctl);
    m.ok(&["stop", "-u", U1]);
    m.ok(&["undefine", "-u", U1]);
    m.ok(&["undefine", "-u", U2]);
    assert!(m.ok(&["list", "-d"]).trim().is_empty());
    let mut vgpud = vgpud;
    vgpud.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn vgpuctl_covers_the_operator_commands() {
    let dir = std::env::temp_dir().join(format!("vgpud-ctl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vgpud"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !dir.join("run/control.sock").exists() {
        assert!(t.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(20));
    }
    let ctl = |args: &[&str]| -> Output {
        Command::new(env!("CARGO_BIN_EXE_vgpuctl"))
            .arg("--run-dir")
            .arg(dir.join("run"))
            .args(args)
            .output()
            .unwrap()
    };
    let ok = |args: &[&str]| -> String {
        let o = ctl(args);
        assert!(
            o.status.success(),
            "vgpuctl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    assert!(ok(&["types"]).contains("VGPU-8C"));
    let created = ok(&["create", "--type", "vgpud-4c", "--uuid", U1]);
    assert!(created.starts_with(U1) && created.trim_end().ends_with(".sock"));
    let dup = ctl(&["create", "--type", "vgpud-4c", "--uuid", U1]);
    assert_eq!(dup.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&dup.stderr).contains("EEXIST"));
    assert!(ok(&["list"]).contains(&format!("{U1} vgpud-4c cpu0 detached")));
    let status = ok(&["status", U1]);
    assert!(
        status.contains("Type                 : VGPU-4C (vgpud-4c)")
            && status.contains("Attached             : No"),
        "{status}"
    );
    let js: Value = serde_json::from_str(&ok(&["status", "--json"])).unwrap();
    assert_eq!(js[0]["uuid"], U1);
    assert!(ok(&["policy", "show"]).starts_with("cpu0 best_effort"));
    assert!(
        ok(&["policy", "set", "fixed_share", "--timeslice-us", "3000"])
            .contains("fixed_share timeslice 3000")
    );
    let bad = ctl(&["policy", "set", "fastest"]);
    assert_eq!(bad.status.code(), Some(1));
    let xml = ok(&["libvirt-xml", U1]);
    assert!(
        xml.contains("<qemu:commandline>")
            && xml.contains("vfio-user-pci")
            && xml.contains(&format!("{U1}.sock"))
            && xml.contains("<access mode='shared'/>")
    );
    ok(&["remove", U1]);
    assert_eq!(ctl(&["remove", U1]).status.code(), Some(1));
    assert_eq!(ctl(&["status", "not-a-uuid"]).status.code(), Some(1));
    let _ = child.kill();
    let _ = child.wait();
    let gone = Command::new(env!("CARGO_BIN_EXE_vgpuctl"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("list")
        .output()
        .unwrap();
    assert_eq!(gone.status.code(), Some(3), "vgpud unreachable");
    let _ = std::fs::remove_dir_all(&dir);
}

fn require_root() {
    // SAFETY: geteuid(2) takes no arguments, touches no memory and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test mounts FUSE and needs root, as .ci/run has"
    );
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vgpud-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Wait until vgpud has logged `what` (e.g. its auto-start report).
fn wait_for_log(dir: &Path, what: &str, nth: usize) -> String {
    let t = Instant::now();
    loop {
        let log = std::fs::read_to_string(dir.join("vgpud.log")).unwrap_or_default();
        if log.matches(what).count() >= nth {
            return log;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "vgpud never logged {what:?} ({nth}x):\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

const UA: &str = "7b1c0d2e-4f5a-4b6c-8d7e-9f0a1b2c3d0a";
const UB: &str = "7b1c0d2e-4f5a-4b6c-8d7e-9f0a1b2c3d0b";
const UC: &str = "7b1c0d2e-4f5a-4b6c-8d7e-9f0a1b2c3d0c";
const UD: &str = "7b1c0d2e-4f5a-4b6c-8d7e-9f0a1b2c3d0d";

#[test]
fn auto_definitions_start_through_mdevctl_start_parent_mdevs() {
    require_root();
    let dir = fresh_dir("autostart");
    let m = Mdevctl {
        bin: mdevctl_binary(),
        root: dir.join("root"),
    };
    let with_mdevctl = [OsStr::new("--mdevctl"), m.bin.as_os_str()];
    let mut vgpud = Vgpud::start(&dir, &with_mdevctl);
    // UA: auto, plain. UB: auto, with an attribute that cannot be written
    // (mdevctl creates it, fails the write and rolls it back). UC: auto, but
    // the callout script refuses its pre-start. UD: manual.
    m.ok(&["define", "-u", UA, "-p", "cpu0", "-t", "vgpud-1c", "--auto"]);
    let json = dir.join("ub.json");
    std::fs::write(
        &json,
        r#"{"mdev_type":"vgpud-1c","start":"auto","attrs":[{"vfio_user_socket":"/x"}]}"#,
    )
    .unwrap();
    m.ok(&["define", "-u", UB, "-p", "cpu0", "--jsonfile"]
        .into_iter()
        .chain([json.to_str().unwrap()])
        .collect::<Vec<_>>());
    m.ok(&["define", "-u", UC, "-p", "cpu0", "-t", "vgpud-1c", "--auto"]);
    m.ok(&["define", "-u", UD, "-p", "cpu0", "-t", "vgpud-1c"]);
    let calls = dir.join("callouts.log");
    let script = dir.join("root/usr/lib/mdevctl/scripts.d/callouts/10-vgpud-test");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$*\" >> {}\ncase \"$*\" in *\"-e pre -a start \"*\"-u {UC} \"*) exit 1 ;; esac\nexit 0\n",
            calls.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    vgpud.stop();

    // The parent appears: vgpud runs mdevctl start-parent-mdevs cpu0.
    let mut vgpud = Vgpud::start(&dir, &with_mdevctl);
    let log = wait_for_log(&dir, "auto_started=", 2);
    assert!(log.contains("mdevctl start-parent-mdevs cpu0"), "{log}");
    assert_eq!(m.active(), vec![UA.to_string()], "only UA is left started");
    assert!(dir.join(format!("run/{UA}.sock")).exists());
    for u in [UB, UC, UD] {
        assert!(
            !dir.join(format!("run/{u}.sock")).exists(),
            "{u} not started"
        );
    }
    // UB was created, its attribute write failed, and mdevctl removed it.
    let ub_lines: Vec<&str> = log.lines().filter(|l| l.contains(UB)).collect();
    assert!(
        ub_lines.iter().any(|l| l.contains("vGPU created"))
            && ub_lines.iter().any(|l| l.contains("vGPU removed")),
        "UB rolled back: {ub_lines:?}"
    );
    assert!(
        log.contains("mdevctl: ") && log.contains("vfio_user_socket"),
        "mdevctl's warning is in the log: {log}"
    );
    // The callouts ran: pre and post for UA, the refused pre for UC.
    let calls_text = std::fs::read_to_string(&calls).unwrap();
    for (event, u) in [("pre", UA), ("post", UA), ("pre", UC)] {
        assert!(
            calls_text
                .lines()
                .any(|l| l.contains(&format!("-e {event} -a start")) && l.contains(u)),
            "{event}-start callout for {u}:\n{calls_text}"
        );
    }
    assert!(
        !calls_text
            .lines()
            .any(|l| l.contains("-e post -a start") && l.contains(UC)),
        "UC never started:\n{calls_text}"
    );
    vgpud.stop();

    // Without mdevctl: the fallback, which says so, skips UB (attributes)
    // and runs no callouts (so UC starts).
    let empty = dir.join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::remove_file(&calls).unwrap();
    let mut vgpud = Vgpud::start_env(&dir, &[], &[("PATH", empty.as_os_str())]);
    let log = wait_for_log(&dir, "auto_started=", 3);
    assert!(log.contains("mdevctl not found"), "{log}");
    let mut active = m.active();
    active.sort();
    assert_eq!(active, vec![UA.to_string(), UC.to_string()]);
    // (mdevctl list, run by the test, calls get-attributes callouts.)
    let calls_text = std::fs::read_to_string(&calls).unwrap_or_default();
    assert!(
        !calls_text.contains("-a start"),
        "the fallback runs no callouts:\n{calls_text}"
    );
    vgpud.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `mdevctl … --dumpjson` output (`[{"<parent>": [{"<key>": …}, …]}, …]`)
/// as (parent, key, value) triples, in its order.
fn by_parent(v: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for p in v.as_array().into_iter().flatten() {
        for (parent, items) in p.as_object().unwrap() {
            for item in items.as_array().unwrap() {
                for (k, x) in item.as_object().unwrap() {
                    out.push((parent.clone(), k.clone(), x.clone()));
                }
            }
        }
    }
    out
}

#[test]
fn mdevctl_sees_a_parent_per_gpu() {
    // Two GPUs (the CUDA workers emulating them) with `device = "all"`:
    // mdevctl shows a parent per GPU, named by its PCI address as the
    // kernel names a PCI parent, with the types of that GPU; it starts
    // vGPUs on either, and an `auto` definition of the second GPU starts
    // with vgpud (start-parent-mdevs for each parent).
    require_root();
    let dir = fresh_dir("mdev-gpus");
    let (g0, g1) = ("0000:ee:00.0", "0000:ee:01.0");
    let cfg = dir.join("vgpud.toml");
    std::fs::write(
        &cfg,
        "[catalog.parent.gpus]\nengine = \"cuda\"\ndevice = \"all\"\n",
    )
    .unwrap();
    let m = Mdevctl {
        bin: mdevctl_binary(),
        root: dir.join("root"),
    };
    let args = [
        OsStr::new("--mdevctl"),
        m.bin.as_os_str(),
        OsStr::new("--config"),
        cfg.as_os_str(),
    ];
    let env = [("VGPUD_CUDA_EMULATE", OsStr::new("16GiB,8GiB"))];
    let mut vgpud = Vgpud::start_env(&dir, &args, &env);
    let available = || -> Vec<(String, String, u64)> {
        by_parent(&m.json(&["types", "--dumpjson"]))
            .into_iter()
            .map(|(p, t, x)| (p, t, x["available_instances"].as_u64().unwrap()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    let a = |p: &str, t: &str, n: u64| (p.to_string(), t.to_string(), n);
    assert_eq!(
        available(),
        [
            a(g0, "emulated-15c", 1),
            a(g0, "emulated-1c", 8),
            a(g0, "emulated-3c", 4),
            a(g0, "emulated-7c", 2),
            a(g1, "emulated-1c", 4),
            a(g1, "emulated-3c", 2),
            a(g1, "emulated-7c", 1),
        ]
    );
    let u0 = m
        .ok(&["start", "-p", g0, "-t", "emulated-1c"])
        .trim()
        .to_string();
    let u1 = m
        .ok(&["start", "-p", g1, "-t", "emulated-3c"])
        .trim()
        .to_string();
    let active: Vec<(String, String)> = by_parent(&m.json(&["list", "--dumpjson"]))
        .into_iter()
        .map(|(p, u, _)| (p, u))
        .collect();
    assert_eq!(
        active,
        [(g0.to_string(), u0.clone()), (g1.to_string(), u1.clone())]
    );
    let now = available();
    assert!(
        now.contains(&a(g0, "emulated-1c", 7)) && now.contains(&a(g1, "emulated-3c", 1)),
        "{now:?}"
    );
    assert!(now.contains(&a(g1, "emulated-7c", 0)), "{now:?}");
    // An auto definition on the second GPU starts with vgpud.
    m.ok(&["define", "-u", UA, "-p", g1, "-t", "emulated-1c", "--auto"]);
    vgpud.stop();
    let mut vgpud = Vgpud::start_env(&dir, &args, &env);
    let log = wait_for_log(&dir, "auto_started=", 2);
    assert!(
        log.contains(&format!("mdevctl start-parent-mdevs {g1}")),
        "{log}"
    );
    let t = Instant::now();
    while !dir.join(format!("run/{UA}.sock")).exists() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{UA} never started:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let active: Vec<(String, String)> = by_parent(&m.json(&["list", "--dumpjson"]))
        .into_iter()
        .map(|(p, u, _)| (p, u))
        .collect();
    assert_eq!(active, [(g1.to_string(), UA.to_string())]);
    m.ok(&["stop", "-u", UA]);
    m.ok(&["undefine", "-u", UA]);
    vgpud.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The errno of connect(2) to the Unix socket at `path` from a process
/// with this uid and gid and no supplementary groups (0: connected).
fn connect_as(path: &Path, uid: u32, gid: u32) -> i32 {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: sockaddr_un is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    assert!(bytes.len() < addr.sun_path.len());
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: the child calls only async-signal-safe functions (setgroups,
    // setgid, setuid, socket, connect, _exit) on memory prepared before the
    // fork.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork");
        if pid == 0 {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                libc::_exit(100);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if fd < 0 {
                libc::_exit(101);
            }
            let rc = libc::connect(
                fd,
                (&addr as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            );
            libc::_exit(if rc == 0 {
                0
            } else {
                *libc::__errno_location()
            });
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        assert!(libc::WIFEXITED(status));
        libc::WEXITSTATUS(status)
    }
}

/// (uid, gid, permission bits) of a socket.
fn socket_meta(path: &Path) -> (u32, u32, u32) {
    let md = std::fs::metadata(path).unwrap();
    assert!(md.file_type().is_socket(), "{} is a socket", path.display());
    (md.uid(), md.gid(), md.mode() & 0o7777)
}

#[test]
fn vgpu_sockets_get_the_configured_owner_group_and_mode() {
    require_root();
    let dir = fresh_dir("sockets");
    let m = Mdevctl {
        bin: mdevctl_binary(),
        root: dir.join("root"),
    };
    let ctl = |args: &[&str]| -> Output {
        Command::new(env!("CARGO_BIN_EXE_vgpuctl"))
            .arg("--run-dir")
            .arg(dir.join("run"))
            .args(args)
            .output()
            .unwrap()
    };
    let sock = |u: &str| dir.join(format!("run/{u}.sock"));
    // Groups every Debian system has: daemon (1), users (100).
    let (daemon_gid, users_gid, nobody) = (1, 100, 65534);

    // Without settings: root's, mode from the umask; another user's QEMU
    // cannot connect.
    let mut vgpud = Vgpud::start(&dir, &[]);
    assert!(ctl(&["create", "--type", "vgpud-1c", "--uuid", UA])
        .status
        .success());
    let (uid, gid, _) = socket_meta(&sock(UA));
    assert_eq!((uid, gid), (0, 0));
    assert_eq!(connect_as(&sock(UA), nobody, daemon_gid), libc::EACCES);
    vgpud.stop();

    // The file sets group and mode; the command line overrides the mode.
    let config = dir.join("vgpud.toml");
    std::fs::write(&config, "[sockets]\ngroup = \"daemon\"\nmode = \"0640\"\n").unwrap();
    let args = [
        OsStr::new("--config"),
        config.as_os_str(),
        OsStr::new("--socket-mode"),
        OsStr::new("0660"),
        OsStr::new("--mdevctl"),
        m.bin.as_os_str(),
    ];
    let mut vgpud = Vgpud::start(&dir, &args);
    // by vgpuctl
    assert!(ctl(&["create", "--type", "vgpud-1c", "--uuid", UA])
        .status
        .success());
    // by mdevctl (the sysfs tree), and defined --auto for the restart below
    m.ok(&["define", "-u", UB, "-p", "cpu0", "-t", "vgpud-1c", "--auto"]);
    m.ok(&["start", "-u", UB]);
    for u in [UA, UB] {
        assert_eq!(socket_meta(&sock(u)), (0, daemon_gid, 0o660), "{u}");
        // QEMU in the group connects; a user outside it is refused.
        assert_eq!(connect_as(&sock(u), nobody, daemon_gid), 0, "{u}");
        assert_eq!(connect_as(&sock(u), nobody, nobody), libc::EACCES, "{u}");
    }

    // Reload: a new group applies to the sockets that exist.
    std::fs::write(&config, "[sockets]\ngroup = \"users\"\nmode = \"0640\"\n").unwrap();
    let r = ctl(&["reload"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(socket_meta(&sock(UA)), (0, users_gid, 0o660));
    // An unknown group fails the reload, naming file, line and key, and
    // changes nothing.
    std::fs::write(&config, "[sockets]\ngroup = \"no-such-group-vgpud\"\n").unwrap();
    let r = ctl(&["reload"]);
    assert_eq!(r.status.code(), Some(1));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains(&format!(
            "{}:2:9: sockets.group: no group \"no-such-group-vgpud\" on this system",
            config.display()
        )),
        "{err}"
    );
    assert_eq!(socket_meta(&sock(UA)), (0, users_gid, 0o660));

    // A restart re-creates the auto definition's socket with the settings
    // (the command line's owner and mode over the file's group).
    std::fs::write(&config, "[sockets]\ngroup = \"daemon\"\n").unwrap();
    vgpud.stop();
    let mut restart = args.to_vec();
    restart.extend([OsStr::new("--socket-owner"), OsStr::new("nobody")]);
    let mut vgpud = Vgpud::start(&dir, &restart);
    wait_for_log(&dir, "auto_started=1", 1);
    assert_eq!(socket_meta(&sock(UB)), (nobody, daemon_gid, 0o660));
    assert!(!sock(UA).exists(), "UA was not defined");
    vgpud.stop();

    // An unknown name stops vgpud at start-up with the same message.
    std::fs::write(&config, "[sockets]\nowner = \"no-such-user-vgpud\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vgpud"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sockets.owner: no user \"no-such-user-vgpud\" on this system"),
        "{err}"
    );
    let bad_mode = Command::new(env!("CARGO_BIN_EXE_vgpud"))
        .args(["--socket-mode", "0999"])
        .output()
        .unwrap();
    assert_eq!(bad_mode.status.code(), Some(2), "clap usage error");
    m.ok(&["undefine", "-u", UB]);
    let _ = std::fs::remove_dir_all(&dir);
}
