//! The views an operator has of a running vgpud: the metrics endpoint
//! (checked by promtool), `vgpuctl top`, `vgpuctl record` (CSV and chart)
//! and JSON logs with the vGPU's span, each against a live daemon with
//! tenants connected over vfio-user. promtool comes from
//! tests/metrics/install-promtool.sh (run here when it is missing).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vgpu_guest::load::{self, LoadConfig, LoadReport};
use vgpu_guest::transport::vfio_user::VfioUserTransport;
use vgpu_guest::Device;

/// Tests that load the engine run one at a time: two at once on a small
/// machine would take CPU from each other's engine and blur the shares.
static LOAD: Mutex<()> = Mutex::new(());

struct Vgpud {
    child: Child,
    dir: PathBuf,
}

impl Vgpud {
    /// vgpud on a fresh run directory, its stderr to `dir/stderr`.
    fn start(name: &str, extra: &[&str]) -> Vgpud {
        Vgpud::start_with(name, extra, None, &[])
    }

    /// As [`Vgpud::start`], with `config` as its configuration file and
    /// `env` added to its environment.
    fn start_with(name: &str, extra: &[&str], config: Option<&str>, env: &[(&str, &str)]) -> Vgpud {
        let dir = std::env::temp_dir().join(format!("vgpud-views-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let stderr = std::fs::File::create(dir.join("stderr")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vgpud"));
        if let Some(text) = config {
            std::fs::write(dir.join("vgpud.toml"), text).unwrap();
            cmd.arg("--config").arg(dir.join("vgpud.toml"));
        }
        let child = cmd
            .arg("--run-dir")
            .arg(dir.join("run"))
            .args(extra)
            .envs(env.iter().copied())
            .env_remove("VGPUD_LOG")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start vgpud");
        let v = Vgpud { child, dir };
        let t = Instant::now();
        while UnixStream::connect(v.control()).is_err() {
            assert!(t.elapsed() < Duration::from_secs(20), "no control socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        v
    }
    fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }
    fn control(&self) -> PathBuf {
        self.run_dir().join("control.sock")
    }
    /// One control request; its result (it must succeed).
    fn ok(&self, req: Value) -> Value {
        let mut s = BufReader::new(UnixStream::connect(self.control()).unwrap());
        writeln!(s.get_mut(), "{req}").unwrap();
        let mut line = String::new();
        s.read_line(&mut line).unwrap();
        let r: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(r["ok"], true, "{req} failed: {r}");
        r["result"].clone()
    }
    /// Create a vGPU of `vtype`: (uuid, socket).
    fn create(&self, vtype: &str) -> (String, PathBuf) {
        let r = self.ok(json!({"op": "create", "type": vtype}));
        (
            r["uuid"].as_str().unwrap().to_string(),
            PathBuf::from(r["socket"].as_str().unwrap()),
        )
    }
    /// vgpuctl against this daemon.
    fn vgpuctl(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_vgpuctl"))
            .arg("--run-dir")
            .arg(self.run_dir())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "vgpuctl {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
    /// Stop it (SIGTERM) and wait, so that its logs are complete.
    fn stop(&mut self) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for Vgpud {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A tenant: a guest driver on the vGPU's socket, as a VMM would connect,
/// (with `selftest`: running the driver's selftest first, which faults
/// channels and takes interrupts on purpose) keeping it busy with 1 ms
/// commands for `seconds`.
fn tenant(socket: &Path, selftest: bool, seconds: f64) -> JoinHandle<LoadReport> {
    let socket = socket.to_path_buf();
    std::thread::spawn(move || {
        let t = VfioUserTransport::connect(&socket, 64 << 20).expect("tenant connects");
        let mut dev = Device::open(Box::new(t)).expect("device opens");
        if selftest {
            let r = vgpu_guest::selftest::run(&mut dev);
            assert!(r.failures().next().is_none(), "selftest failed");
        }
        let cfg = LoadConfig {
            unit_us: 1000,
            duration: Duration::from_secs_f64(seconds),
            channels: 1,
        };
        load::run(&mut dev, &cfg).expect("load runs")
    })
}

/// Wait until every vGPU in `uuids` has completed commands.
fn wait_busy(v: &Vgpud, uuids: &[&str]) {
    let t = Instant::now();
    loop {
        let st = v.ok(json!({"op": "status"}));
        let busy = uuids.iter().all(|u| {
            st.as_array()
                .unwrap()
                .iter()
                .any(|s| s["uuid"] == *u && s["commands"].as_u64().unwrap_or(0) > 5)
        });
        if busy {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "tenants never ran: {st}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// promtool: $VGPUD_PROMTOOL, on the PATH, or where
/// tests/metrics/install-promtool.sh caches it, which is run (as the mdev
/// test runs its installer) when it is in none of these places. Never
/// skipped: without promtool the test fails, naming the script.
fn promtool() -> PathBuf {
    if let Some(p) = std::env::var_os("VGPUD_PROMTOOL") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file())
    {
        return p;
    }
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/metrics/install-promtool.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output();
    match out {
        Ok(o) if o.status.success() => PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
        other => panic!(
            "promtool is not on PATH and {} failed ({other:?}): it installs promtool from \
             Debian's prometheus package under /var/cache/vgpud/promtool (.ci/run runs it); \
             or set VGPUD_PROMTOOL",
            script.display()
        ),
    }
}

fn http(addr: &str, method: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn metrics_pass_promtool_and_answer_head() {
    let promtool = promtool();
    let _load = devmodel::sync::lock(&LOAD);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let v = Vgpud::start("metrics", &["--metrics-addr", &addr]);
    v.ok(json!({"op": "policy_set", "policy": "fixed_share"}));
    let (u4, s4) = v.create("vgpud-4c");
    let (u2, _) = v.create("vgpud-2c");
    // One tenant does work, so that the counters have moved.
    let report = tenant(&s4, true, 0.3).join().unwrap();
    assert!(report.completed > 0);

    let get = http(&addr, "GET", "/metrics");
    let (head, body) = get.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert!(
        head.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())),
        "{head}"
    );
    let l4 = format!("{{uuid=\"{u4}\",type=\"vgpud-4c\",parent=\"cpu0\"}}");
    let l2 = format!("{{uuid=\"{u2}\",type=\"vgpud-2c\",parent=\"cpu0\"}}");
    let value = |series: &str| sample(body, series);
    assert_eq!(
        value(&format!("vgpud_vgpu_configured_share_ratio{l4}")),
        0.5
    );
    assert_eq!(
        value(&format!("vgpud_vgpu_configured_share_ratio{l2}")),
        0.25
    );
    assert_eq!(value(&format!("vgpud_vgpu_connections_total{l4}")), 1.0);
    assert_eq!(value(&format!("vgpud_vgpu_connections_total{l2}")), 0.0);
    assert_eq!(value(&format!("vgpud_vgpu_protocol_errors_total{l4}")), 0.0);
    assert!(value(&format!("vgpud_vgpu_interrupts_total{l4}")) > 0.0);
    assert!(
        value(&format!("vgpud_vgpu_faults_total{l4}")) > 0.0,
        "the selftest's faults"
    );
    assert_eq!(value(&format!("vgpud_vgpu_faults_total{l2}")), 0.0);
    assert!(
        value(&format!("vgpud_vgpu_doorbells_polled_total{l4}"))
            + value(&format!("vgpud_vgpu_doorbells_trapped_total{l4}"))
            >= report.completed as f64 / report.depth as f64,
        "every batch of commands was announced by a doorbell"
    );
    assert_eq!(
        value(&format!("vgpud_vgpu_framebuffer_bytes{l4}")),
        (4u64 << 30) as f64
    );
    assert!(value(&format!("vgpud_vgpu_commands_total{l4}")) >= report.completed as f64);
    assert!(value(&format!("vgpud_vgpu_achieved_share_ratio{l4}")) >= 0.0);
    // Parent-level series.
    assert!(value("vgpud_parent_engine_busy_seconds_total{parent=\"cpu0\"}") > 0.0);
    let busy = value("vgpud_parent_engine_busy_ratio{parent=\"cpu0\"}");
    assert!((0.0..=1.0).contains(&busy), "{busy}");
    assert_eq!(value("vgpud_parent_vgpus{parent=\"cpu0\"}"), 2.0);
    assert_eq!(
        value("vgpud_parent_policy_info{parent=\"cpu0\",policy=\"fixed_share\",engine=\"cpu\"}"),
        1.0
    );
    // Available instances: as `types` has them, for every type (the host's
    // memory may lower them); 8 GiB and 8 slots with 6 GiB taken: no 4c.
    let types = v.ok(json!({"op": "types"}));
    for t in types.as_array().unwrap() {
        let series = format!(
            "vgpud_parent_available_instances{{parent=\"{}\",type=\"{}\"}}",
            t["parent"].as_str().unwrap(),
            t["id"].as_str().unwrap()
        );
        assert_eq!(
            value(&series),
            t["available_instances"].as_f64().unwrap(),
            "{series}"
        );
    }
    assert_eq!(
        value("vgpud_parent_available_instances{parent=\"cpu0\",type=\"vgpud-4c\"}"),
        0.0
    );
    assert_eq!(
        value(&format!(
            "vgpud_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    // No ratio under another name.
    for l in body.lines().filter(|l| l.starts_with("# TYPE")) {
        let name = l.split(' ').nth(2).unwrap();
        assert!(
            !name.contains("share") || name.ends_with("_ratio"),
            "{name}: a share is a ratio"
        );
    }

    // HEAD: the same headers, no body.
    let head_only = http(&addr, "HEAD", "/metrics");
    let (h, rest) = head_only.split_once("\r\n\r\n").unwrap();
    assert!(h.starts_with("HTTP/1.0 200"), "{h}");
    assert!(h.contains("charset=utf-8"), "{h}");
    assert!(h.contains("\r\nContent-Length: "), "{h}");
    assert_eq!(rest, "", "HEAD has no body");
    assert!(http(&addr, "GET", "/nope").starts_with("HTTP/1.0 404"));
    assert!(http(&addr, "POST", "/metrics").starts_with("HTTP/1.0 405"));

    promtool_passes(&promtool, body);
}

/// The value of `series` (name and labels) in the exposition `body`.
fn sample(body: &str, series: &str) -> f64 {
    let line = body
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no sample {series} in\n{body}"));
    line[series.len() + 1..].parse().unwrap()
}

/// promtool: the exposition parses and passes its lint, with no remark.
fn promtool_passes(promtool: &Path, body: &str) {
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", promtool.display()));
    check
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics: {said}\n{body}"
    );
    assert_eq!(said.trim(), "", "promtool remarks on the metrics:\n{body}");
}

#[test]
fn metrics_have_a_series_per_gpu_parent() {
    // Two GPUs (the CUDA engine's workers emulating them), a parent each
    // (`device = "all"`): every parent series per GPU, each counting only
    // its own vGPUs and work; the policy of the section for one GPU, its
    // own for the other.
    let promtool = promtool();
    let _load = devmodel::sync::lock(&LOAD);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let config = "[parent.gpus]\npolicy = \"equal_share\"\n\n[parent.\"0000:ee:01.0\"]\npolicy = \"fixed_share\"\n\n[catalog.parent.gpus]\nengine = \"cuda\"\ndevice = \"all\"\n";
    let v = Vgpud::start_with(
        "metrics-gpus",
        &["--metrics-addr", &addr],
        Some(config),
        &[("VGPUD_CUDA_EMULATE", "16GiB,8GiB")],
    );
    let (g0, g1) = ("0000:ee:00.0", "0000:ee:01.0");
    let on = |parent: &str| {
        let r = v.ok(json!({"op": "create", "type": "emulated-1c", "parent": parent}));
        (
            r["uuid"].as_str().unwrap().to_string(),
            PathBuf::from(r["socket"].as_str().unwrap()),
        )
    };
    let (busy, socket) = on(g0);
    let (idle0, _) = on(g0);
    let (idle1, _) = on(g1);
    // Work on GPU0 only.
    let report = tenant(&socket, false, 0.5).join().unwrap();
    assert!(report.completed > 0);
    let get = http(&addr, "GET", "/metrics");
    let body = get.split_once("\r\n\r\n").unwrap().1;
    let value = |series: &str| sample(body, series);
    let p = |name: &str, parent: &str| value(&format!("{name}{{parent=\"{parent}\"}}"));
    assert_eq!(p("vgpud_parent_vgpus", g0), 2.0);
    assert_eq!(p("vgpud_parent_vgpus", g1), 1.0);
    assert!(p("vgpud_parent_engine_busy_seconds_total", g0) > 0.1);
    assert_eq!(p("vgpud_parent_engine_busy_seconds_total", g1), 0.0);
    assert_eq!(p("vgpud_parent_gpu_memory_bytes", g0), (16u64 << 30) as f64);
    assert_eq!(p("vgpud_parent_gpu_memory_bytes", g1), (8u64 << 30) as f64);
    for (parent, policy, k) in [(g0, "equal_share", 0), (g1, "fixed_share", 1)] {
        assert_eq!(
            value(&format!("vgpud_parent_policy_info{{parent=\"{parent}\",policy=\"{policy}\",engine=\"cuda\"}}")),
            1.0
        );
        assert_eq!(
            value(&format!("vgpud_parent_gpu_info{{parent=\"{parent}\",gpu=\"emulated\",uuid=\"GPU-eeeeeeee-eeee-eeee-eeee-eeeeeeeeee0{k}\",pci_bus_id=\"{parent}\",numa_node=\"-1\"}}")),
            1.0
        );
    }
    // Each GPU's catalogue and what is left of it: 8 and 4 of the 1c.
    assert_eq!(
        value(&format!(
            "vgpud_parent_available_instances{{parent=\"{g0}\",type=\"emulated-1c\"}}"
        )),
        6.0
    );
    assert_eq!(
        value(&format!(
            "vgpud_parent_available_instances{{parent=\"{g1}\",type=\"emulated-1c\"}}"
        )),
        3.0
    );
    assert_eq!(
        value(&format!(
            "vgpud_parent_available_instances{{parent=\"{g0}\",type=\"emulated-15c\"}}"
        )),
        0.0,
        "15 GiB and its context do not fit beside two 1c"
    );
    assert!(!body.contains(&format!("parent=\"{g1}\",type=\"emulated-15c\"")));
    // Each vGPU under its own parent; only GPU0's busy one did work, with
    // equal_share's half of GPU0 promised and fixed_share's 1/4 on GPU1.
    let vg = |uuid: &str, parent: &str| {
        format!("{{uuid=\"{uuid}\",type=\"emulated-1c\",parent=\"{parent}\"}}")
    };
    assert!(value(&format!("vgpud_vgpu_gpu_seconds_total{}", vg(&busy, g0))) > 0.1);
    assert_eq!(
        value(&format!("vgpud_vgpu_gpu_seconds_total{}", vg(&idle0, g0))),
        0.0
    );
    assert_eq!(
        value(&format!("vgpud_vgpu_gpu_seconds_total{}", vg(&idle1, g1))),
        0.0
    );
    assert_eq!(
        value(&format!(
            "vgpud_vgpu_configured_share_ratio{}",
            vg(&idle1, g1)
        )),
        0.25
    );
    promtool_passes(&promtool, body);
}

/// The figure in column `col` of the row of vGPU `uuid` in a `top` frame.
fn top_cell<'a>(frame: &'a str, uuid: &str, col: usize) -> &'a str {
    let row = frame
        .lines()
        .find(|l| l.starts_with(&uuid[..8]))
        .unwrap_or_else(|| panic!("no row for {uuid} in\n{frame}"));
    row.split_whitespace()
        .nth(col)
        .unwrap_or_else(|| panic!("no column {col} in {row}"))
}

fn percent(cell: &str) -> f64 {
    cell.strip_suffix('%')
        .and_then(|x| x.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{cell:?} is not a percentage"))
        / 100.0
}

#[test]
fn top_and_record_follow_a_two_to_one_fixed_share() {
    let _load = devmodel::sync::lock(&LOAD);
    let v = Vgpud::start("shares", &[]);
    v.ok(json!({"op": "policy_set", "policy": "fixed_share"}));
    let (u4, s4) = v.create("vgpud-4c");
    let (u2, s2) = v.create("vgpud-2c");
    let tenants = [tenant(&s4, false, 7.0), tenant(&s2, false, 7.0)];
    wait_busy(&v, &[&u4, &u2]);

    // top: three refreshes, 0.7 s apart. Not a terminal: the frames follow
    // each other, without escape codes.
    let out = v.vgpuctl(&["top", "-n", "3", "--interval", "0.7"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains('\x1b'), "{text}");
    assert_eq!(text.matches("vgpuctl top: ").count(), 3, "{text}");
    let last = text.rsplit("vgpuctl top: ").next().unwrap();
    assert!(
        last.contains("parent cpu0  engine cpu  policy fixed_share  timeslice 2000 us"),
        "{last}"
    );
    let busy = last
        .split("engine busy ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap();
    // Both saturate their shares: the engine runs ~3/4 of the time (less
    // when the host's CPUs are taken by others: this only checks the figure
    // is the engine's, not the scheduler's precision, which record checks).
    assert!(
        (0.3..=1.0).contains(&percent(busy)),
        "engine busy {busy}\n{last}"
    );
    // Columns: VGPU TYPE PARENT VM CONFIG SHARE QUEUE FAULTS CMD/S DB-POLL/S DB-TRAP/S
    for (u, vtype, conf) in [(&u4, "vgpud-4c", 0.5), (&u2, "vgpud-2c", 0.25)] {
        assert_eq!(top_cell(last, u, 1), vtype);
        assert_eq!(top_cell(last, u, 3), "yes");
        assert_eq!(percent(top_cell(last, u, 4)), conf);
        let share = percent(top_cell(last, u, 5));
        assert!(
            share > 0.05 && share < conf + 0.1,
            "{u}: share {share} against {conf}\n{last}"
        );
        assert_eq!(top_cell(last, u, 7), "0", "no faults");
        // Both from the same two samples: each command is 1 ms of engine
        // time, so commands/s × 1 ms is the share (to within the commands
        // running across a refresh and the front end's charge).
        let rate: f64 = top_cell(last, u, 8).parse().unwrap();
        assert!(
            (rate / 1000.0 - share).abs() < 0.25 * share + 0.02,
            "{u}: {rate} commands/s of 1 ms against share {share}\n{last}"
        );
        let doorbells: f64 = top_cell(last, u, 9).parse::<f64>().unwrap()
            + top_cell(last, u, 10).parse::<f64>().unwrap();
        assert!(doorbells > 0.0, "{u}: no doorbells\n{last}");
    }

    // record: 3 s of samples every 200 ms, as CSV and as a chart.
    let csv = v.dir.join("shares.csv");
    let png_path = v.dir.join("shares.png");
    let out = v.vgpuctl(&[
        "record",
        "--seconds",
        "3",
        "--interval",
        "200",
        "--csv",
        csv.to_str().unwrap(),
        "--png",
        png_path.to_str().unwrap(),
    ]);
    let summary = String::from_utf8_lossy(&out.stdout).to_string();
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("time_s,vgpu,type,configured,achieved"));
    let mut per_vgpu: Vec<(String, String, Vec<f64>)> = Vec::new();
    let mut last_t = 0.0;
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        assert_eq!(f.len(), 5, "{l}");
        let t: f64 = f[0].parse().unwrap();
        assert!(
            t >= last_t && t <= 3.5,
            "{l}: time goes forward within the recording"
        );
        last_t = t;
        let achieved: f64 = f[4].parse().unwrap();
        match per_vgpu.iter_mut().find(|p| p.0 == f[1]) {
            Some(p) => p.2.push(achieved),
            None => per_vgpu.push((f[1].to_string(), f[3].to_string(), vec![achieved])),
        }
    }
    assert_eq!(per_vgpu.len(), 2, "{text}");
    // Each sample is 200 ms of one vGPU's engine time over the client's
    // wall time; on a busy host a late reply skews one sample (and its
    // neighbour the other way), so the check is on the median and the mean,
    // with most samples close.
    let mut medians = Vec::new();
    for (u, conf) in [(&u4, 0.5), (&u2, 0.25)] {
        let (_, configured, samples) = per_vgpu.iter().find(|p| &p.0 == u).unwrap();
        assert_eq!(configured.parse::<f64>().unwrap(), conf, "{text}");
        assert!(
            samples.len() >= 12,
            "{} samples of {u}\n{text}",
            samples.len()
        );
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        assert!(
            (median - conf).abs() < 0.03,
            "{u}: median {median} against {conf}\n{text}"
        );
        assert!(
            (mean - conf).abs() < 0.05,
            "{u}: mean {mean} against {conf}\n{text}"
        );
        let close = samples.iter().filter(|s| (*s - conf).abs() < 0.08).count();
        assert!(
            close * 4 >= samples.len() * 3,
            "{u}: only {close} of {} samples within 0.08 of {conf}\n{text}",
            samples.len()
        );
        medians.push(median);
    }
    assert!(
        (medians[0] / medians[1] - 2.0).abs() < 0.25,
        "2:1? {medians:?}"
    );
    assert!(summary.contains(&u4) && summary.contains(&u2), "{summary}");

    // The chart: a PNG of 1000x500 with a line in each vGPU's colour.
    let decoder = png::Decoder::new(std::fs::File::open(&png_path).unwrap());
    let mut reader = decoder.read_info().expect("a valid PNG");
    let mut rgb = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut rgb).expect("a valid PNG");
    assert_eq!((info.width, info.height), (1000, 500));
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let count = |c: [u8; 3]| rgb.chunks_exact(3).filter(|p| *p == c).count();
    assert!(count([31, 119, 180]) > 500, "the first vGPU's line");
    assert!(count([214, 39, 40]) > 500, "the second vGPU's line");
    for t in tenants {
        let r = t.join().unwrap();
        assert!(r.completed > 0);
    }
}

#[test]
fn json_logs_carry_the_vgpu_session_and_channel_spans() {
    let _load = devmodel::sync::lock(&LOAD);
    let mut v = Vgpud::start("json", &["--log-format", "json"]);
    let (u, s) = v.create("vgpud-2c");
    // The selftest faults channels on purpose: the front end logs them.
    tenant(&s, true, 0.1).join().unwrap();
    v.stop();
    let log = std::fs::read_to_string(v.dir.join("stderr")).unwrap();
    let events: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for e in &events {
        assert!(e["timestamp"].is_string() && e["level"].is_string(), "{e}");
        assert!(e["fields"]["message"].is_string(), "{e}");
    }
    let find = |msg: &str| {
        events
            .iter()
            .find(|e| e["fields"]["message"] == msg)
            .unwrap_or_else(|| panic!("no {msg:?} in\n{log}"))
    };
    let has_span =
        |e: &Value, span: Value| e["spans"].as_array().is_some_and(|s| s.contains(&span));
    let attached = find("client attached");
    assert!(
        has_span(attached, json!({"name": "vgpu", "vgpu": u})),
        "{attached}"
    );
    assert!(
        has_span(attached, json!({"name": "session", "connection": 1})),
        "{attached}"
    );
    let fault = find("channel stopped");
    assert!(
        has_span(fault, json!({"name": "vgpu", "vgpu": u})),
        "{fault}"
    );
    assert_eq!(fault["span"]["name"], "channel", "{fault}");
    assert!(fault["span"]["channel"].is_u64(), "{fault}");
    // Outside any vGPU: no spans.
    assert!(find("vgpud ready").get("spans").is_none());
}
