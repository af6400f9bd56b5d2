//! The vgpud binary: control socket operations, vGPU sockets, SIGHUP reload
//! and SIGTERM shutdown.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Vgpud {
    child: Child,
    dir: PathBuf,
}

impl Vgpud {
    fn start(name: &str, config: Option<&str>) -> Vgpud {
        Vgpud::start_with(name, config, &[])
    }
    fn start_with(name: &str, config: Option<&str>, extra: &[&str]) -> Vgpud {
        let dir = std::env::temp_dir().join(format!("vgpud-daemon-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vgpud"));
        cmd.arg("--run-dir")
            .arg(dir.join("run"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(text) = config {
            std::fs::write(dir.join("sched.toml"), text).unwrap();
            cmd.arg("--config").arg(dir.join("sched.toml"));
        }
        let child = cmd.spawn().expect("start vgpud");
        let v = Vgpud { child, dir };
        wait_for(&v.control(), "control socket");
        v
    }
    fn run(&self) -> PathBuf {
        self.dir.join("run")
    }
    fn control(&self) -> PathBuf {
        self.run().join("control.sock")
    }
    fn signal(&self, sig: i32) {
        // SAFETY: kill on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }
}

impl Drop for Vgpud {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_for(p: &Path, what: &str) {
    let t = Instant::now();
    while UnixStream::connect(p).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{what} never appeared at {}",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Ctl(BufReader<UnixStream>);

impl Ctl {
    fn new(v: &Vgpud) -> Ctl {
        Ctl(BufReader::new(UnixStream::connect(v.control()).unwrap()))
    }
    fn raw(&mut self, line: &str) -> Value {
        writeln!(self.0.get_mut(), "{line}").unwrap();
        let mut out = String::new();
        self.0.read_line(&mut out).unwrap();
        serde_json::from_str(&out).unwrap()
    }
    fn ok(&mut self, req: Value) -> Value {
        let r = self.raw(&req.to_string());
        assert_eq!(r["ok"], true, "{req} failed: {r}");
        r["result"].clone()
    }
    fn err(&mut self, req: Value) -> String {
        let r = self.raw(&req.to_string());
        assert_eq!(r["ok"], false, "{req} should fail: {r}");
        r["error"].as_str().unwrap().to_string()
    }
}

fn available(ctl: &mut Ctl, t: &str) -> u64 {
    let types = ctl.ok(json!({"op": "types"}));
    types
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == t)
        .unwrap()["available_instances"]
        .as_u64()
        .unwrap()
}

const U1: &str = "aa618089-8b16-4d01-a136-25a0f3c73123";
const U2: &str = "0f0a7e4c-2bd4-4e5e-9c55-0a4f6b0e1d01";

#[test]
fn control_socket_creates_lists_reports_and_removes_vgpus() {
    let v = Vgpud::start("ops", None);
    let mut ctl = Ctl::new(&v);
    assert_eq!(available(&mut ctl, "vgpud-4c"), 2);
    assert_eq!(available(&mut ctl, "vgpud-8c"), 1);

    let r = ctl.ok(json!({"op": "create", "type": "vgpud-4c", "uuid": U1}));
    let sock = PathBuf::from(r["socket"].as_str().unwrap());
    assert_eq!(sock, v.run().join(format!("{U1}.sock")));
    assert!(sock.exists(), "socket exists when create returns");
    // Uppercase is the same UUID.
    assert_eq!(
        ctl.err(json!({"op": "create", "type": "vgpud-1c", "uuid": U1.to_uppercase()})),
        "EEXIST"
    );
    assert_eq!(
        ctl.err(json!({"op": "create", "type": "vgpud-1c", "uuid": "not-a-uuid"})),
        "EINVAL"
    );
    assert_eq!(
        ctl.err(json!({"op": "create", "type": "vgpud-9z"})),
        "ENOENT"
    );
    assert_eq!(
        available(&mut ctl, "vgpud-8c"),
        0,
        "a 4 GiB vGPU leaves no room for 8 GiB"
    );
    assert_eq!(available(&mut ctl, "vgpud-2c"), 2);
    assert_eq!(
        ctl.err(json!({"op": "create", "type": "vgpud-8c"})),
        "EUSERS"
    );
    ctl.ok(json!({"op": "create", "type": "vgpud-2c", "uuid": U2}));
    let anon = ctl.ok(json!({"op": "create", "type": "vgpud-2c"}));
    assert_eq!(
        anon["uuid"].as_str().unwrap().len(),
        36,
        "a UUID is generated"
    );
    assert_eq!(
        ctl.err(json!({"op": "create", "type": "vgpud-2c"})),
        "EUSERS"
    );
    assert_eq!(
        ctl.err(json!({"op": "create", "type": "vgpud-1c"})),
        "EUSERS",
        "framebuffer exhausted"
    );

    let list = ctl.ok(json!({"op": "list"}));
    assert_eq!(list.as_array().unwrap().len(), 3);

    // The socket serves an independent vfio-user client, and status sees it.
    let mut c = vfio_user::Client::new(&sock).unwrap();
    let mut id = [0u8; 4];
    c.region_read(0, 0, &mut id).unwrap();
    assert_eq!(u32::from_le_bytes(id), 0x5550_4756);
    let st = ctl.ok(json!({"op": "status", "uuid": U1}));
    assert_eq!(st[0]["attached"], true);
    assert_eq!(st[0]["type_name"], "VGPU-4C");
    assert_eq!(st[0]["policy"], "best_effort");

    // Removing an attached vGPU disconnects its client and frees its room.
    let r = ctl.ok(json!({"op": "remove", "uuid": U1}));
    assert_eq!(r["was_attached"], true);
    assert!(!sock.exists(), "socket removed");
    let mut b = [0u8; 4];
    assert!(
        c.region_read(0, 0, &mut b).is_err(),
        "client was disconnected"
    );
    assert_eq!(ctl.err(json!({"op": "remove", "uuid": U1})), "ENOENT");
    assert_eq!(available(&mut ctl, "vgpud-2c"), 2);

    // Malformed requests get EINVAL and the connection keeps working.
    assert_eq!(ctl.raw("{not json")["error"], "EINVAL");
    assert_eq!(
        ctl.raw(r#"{"op":"create","type":"vgpud-1c","colour":"red"}"#)["error"],
        "EINVAL"
    );
    assert_eq!(
        ctl.err(json!({"op": "policy_set", "policy": "round_robin"})),
        "EINVAL"
    );
    let p = ctl.ok(json!({"op": "policy_set", "policy": "equal_share", "timeslice_us": 4000}));
    assert_eq!(
        (p["policy"].as_str(), p["timeslice_us"].as_u64()),
        (Some("equal_share"), Some(4000))
    );
    assert_eq!(
        ctl.ok(json!({"op": "policy_show"}))["policy"],
        "equal_share"
    );
}

#[test]
fn sighup_reloads_the_policy_file_and_sigterm_stops_cleanly() {
    let mut v = Vgpud::start(
        "signals",
        Some("[parent.\"cpu0\"]\npolicy = \"fixed_share\"\n"),
    );
    let mut ctl = Ctl::new(&v);
    assert_eq!(
        ctl.ok(json!({"op": "policy_show"}))["policy"],
        "fixed_share"
    );
    ctl.ok(json!({"op": "create", "type": "vgpud-1c", "uuid": U1}));

    // A broken file changes nothing.
    std::fs::write(
        v.dir.join("sched.toml"),
        "[parent.\"cpu0\"]\npolicy = \"fastest\"\n",
    )
    .unwrap();
    v.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        ctl.ok(json!({"op": "policy_show"}))["policy"],
        "fixed_share"
    );

    std::fs::write(
        v.dir.join("sched.toml"),
        "[parent.\"cpu0\"]\npolicy = \"weighted\"\n",
    )
    .unwrap();
    v.signal(libc::SIGHUP);
    let t = Instant::now();
    while ctl.ok(json!({"op": "policy_show"}))["policy"] != "weighted" {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "SIGHUP did not reload"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let sock = v.run().join(format!("{U1}.sock"));
    let _client = vfio_user::Client::new(&sock).unwrap();
    v.signal(libc::SIGTERM);
    let t = Instant::now();
    let status = loop {
        if let Some(s) = v.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "vgpud did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "clean exit: {status}");
    assert!(!v.control().exists() && !sock.exists(), "sockets removed");
}

#[test]
fn a_second_daemon_refuses_a_live_run_dir() {
    let v = Vgpud::start("twice", None);
    let out = Command::new(env!("CARGO_BIN_EXE_vgpud"))
        .arg("--run-dir")
        .arg(v.run())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another vgpud"));
    assert!(
        v.control().exists(),
        "the live daemon's socket is untouched"
    );
}

#[test]
fn metrics_endpoint_reports_every_vgpu() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let v = Vgpud::start_with("metrics", None, &["--metrics-addr", &addr]);
    let mut ctl = Ctl::new(&v);
    ctl.ok(json!({"op": "create", "type": "vgpud-2c", "uuid": U2}));
    let get = |path: &str| {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        std::io::Read::read_to_string(&mut s, &mut out).unwrap();
        out
    };
    let body = get("/metrics");
    assert!(body.starts_with("HTTP/1.0 200"), "{body}");
    let line = format!("vgpud_vgpu_attached{{uuid=\"{U2}\",type=\"vgpud-2c\",parent=\"cpu0\"}} 0");
    assert!(body.contains(&line), "missing {line} in {body}");
    assert!(body.contains("# TYPE vgpud_vgpu_gpu_seconds_total counter"));
    assert!(get("/nope").starts_with("HTTP/1.0 404"));
}

#[test]
fn the_demo_main_job_runs_two_tenants_over_vfio_user() {
    let out = Command::new(env!("CARGO_BIN_EXE_vgpud"))
        .args(["--demo", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with("vgpud-")).collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    for r in rows {
        let cols: Vec<&str> = r.split_whitespace().collect();
        let (passed, total) = cols[1].split_once('/').unwrap();
        assert_eq!(passed, total, "selftest: {r}");
        let commands: u64 = cols[4].parse().unwrap();
        assert!(commands > 50, "the tenant kept its vGPU busy: {r}");
    }
    assert!(stdout.contains("policy fixed_share"));
}

#[test]
fn the_config_file_declares_parents_and_types() {
    let text = r#"
[parent."big0"]
policy = "fixed_share"

[catalog.type."big-4g"]
name = "VGPU-BIG"
framebuffer = "4GiB"
max_instances = 2
channels = 32
device_id = 0x1010

[catalog.parent."big0"]
framebuffer = "8GiB"
max_vgpus = 4
types = ["big-4g", "vgpud-1c"]
"#;
    let v = Vgpud::start("catalog", Some(text));
    let mut ctl = Ctl::new(&v);
    let types = ctl.ok(json!({"op": "types"}));
    let ids: Vec<(&str, &str, u64)> = types
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["parent"].as_str().unwrap(),
                t["id"].as_str().unwrap(),
                t["available_instances"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ids,
        vec![("big0", "big-4g", 2), ("big0", "vgpud-1c", 4)],
        "1c: 8 per type but 4 slots"
    );
    assert_eq!(types[0]["channels"], 32);
    assert_eq!(types[0]["fixed_share"], 0.5);
    let r = ctl.ok(json!({"op": "create", "type": "big-4g"}));
    assert_eq!(r["parent"], "big0");
    assert_eq!(
        ctl.ok(json!({"op": "policy_show"}))["policy"],
        "fixed_share"
    );
    let st = ctl.ok(json!({"op": "status"}));
    assert_eq!(st[0]["configured_share"], 0.5);
    assert_eq!(
        ctl.err(json!({"op": "create", "type": "vgpud-4c"})),
        "ENOENT",
        "big0 does not offer 4c"
    );

    // A catalogue that cannot work stops vgpud at once with the key named.
    let bad = v.dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[catalog.parent.\"p\"]\nframebuffer = \"4GiB\"\nmax_vgpus = 2\ntypes = [\"vgpud-8c\"]\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vgpud"))
        .arg("--config")
        .arg(&bad)
        .arg("--run-dir")
        .arg(v.dir.join("run2"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("catalog.parent.\"p\".types"),
        "{err}"
    );
}

#[test]
fn cpu_framebuffers_are_not_overcommitted_beyond_host_memory() {
    // A parent declaring 64 TiB of framebuffer offers only what the host
    // can back: physical memory less an eighth (at least 1 GiB), shared by
    // every cpu-engine vGPU.
    let text = r#"
[catalog.type."g1"]
name = "VGPU-G1"
framebuffer = "1GiB"
max_instances = 100000
channels = 2
device_id = 0x1011

[catalog.parent."vast"]
framebuffer = "64TiB"
max_vgpus = 100000
types = ["g1"]
"#;
    let v = Vgpud::start("overcommit", Some(text));
    let mut ctl = Ctl::new(&v);
    let total = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024;
    let limit = total - (total / 8).max(1 << 30);
    let host = limit >> 30;
    assert_eq!(
        available(&mut ctl, "g1"),
        host,
        "1 GiB vGPUs the host can back"
    );
    let r = ctl.ok(json!({"op": "create", "type": "g1"}));
    assert_eq!(available(&mut ctl, "g1"), host - 1);
    ctl.ok(json!({"op": "remove", "uuid": r["uuid"]}));
    assert_eq!(available(&mut ctl, "g1"), host);
}

/// The field names of every reply, as docs/control.md gives them: the typed
/// replies (`vgpud::daemon::replies`) must not rename one.
#[test]
fn replies_keep_their_field_names() {
    fn keys(v: &Value) -> Vec<&str> {
        let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    }
    let v = Vgpud::start("fields", None);
    let mut ctl = Ctl::new(&v);
    let types = ctl.ok(json!({"op": "types"}));
    assert_eq!(
        keys(&types[0]),
        [
            "available_instances",
            "channels",
            "description",
            "device_api",
            "device_id",
            "fixed_share",
            "framebuffer_bytes",
            "id",
            "max_instances",
            "name",
            "parent",
            "vendor_id"
        ]
    );
    let created = ctl.ok(json!({"op": "create", "type": "vgpud-2c", "uuid": U1}));
    assert_eq!(keys(&created), ["parent", "socket", "type", "uuid"]);
    let list = ctl.ok(json!({"op": "list"}));
    assert_eq!(
        keys(&list[0]),
        ["attached", "parent", "socket", "type", "uuid"]
    );
    let status = ctl.ok(json!({"op": "status", "uuid": U1}));
    assert_eq!(
        keys(&status[0]),
        [
            "achieved_share",
            "attached",
            "cap",
            "commands",
            "configured_share",
            "connections",
            "doorbells_polled",
            "doorbells_trapped",
            "faults",
            "framebuffer_bytes",
            "gpu_time_ns",
            "health",
            "interrupts",
            "parent",
            "pinned_bytes",
            "policy",
            "protocol_errors",
            "queue_depth",
            "slice_us",
            "slices",
            "slices_dry",
            "socket",
            "type",
            "type_name",
            "uuid",
            "wait_ns"
        ]
    );
    assert_eq!(status[0]["cap"], Value::Null, "unknown figures are null");
    let parents = ctl.ok(json!({"op": "parents"}));
    assert_eq!(
        keys(&parents[0]),
        [
            "busy_ns",
            "engine",
            "engine_busy_ratio",
            "engine_stalled_ns",
            "framebuffer_bytes",
            "gpu",
            "idle_empty_ns",
            "idle_held_ns",
            "idle_late_ns",
            "max_vgpus",
            "parent",
            "policy",
            "timeslice_us",
            "vgpus",
            "window_us"
        ]
    );
    assert_eq!(parents[0]["vgpus"], 1);
    assert_eq!(parents[0]["framebuffer_bytes"], 8u64 << 30);
    assert_eq!(parents[0]["max_vgpus"], 8);
    assert_eq!(parents[0]["gpu"], Value::Null, "a cpu parent has no GPU");
    let policy = ctl.ok(json!({"op": "policy_show"}));
    assert_eq!(
        keys(&policy),
        [
            "averaging_factor",
            "parent",
            "policy",
            "timeslice_us",
            "window_us"
        ]
    );
    assert_eq!(
        ctl.ok(json!({"op": "reload"})),
        json!({"reloaded": false, "reason": "no --config file"})
    );
    let removed = ctl.ok(json!({"op": "remove", "uuid": U1}));
    assert_eq!(removed, json!({"uuid": U1, "was_attached": false}));
}
