//! Several GPUs in one host, where CI runs: the CUDA engine's workers
//! emulating two GPUs (`VGPUD_CUDA_EMULATE=16GiB,8GiB`, one parent each
//! with `device = "all"`). Each GPU is a parent named by its PCI address
//! with the types its memory gives; `create` without a parent places by
//! the rule of `[catalog] placement`; a worker's death on one GPU leaves
//! the other GPU's vGPUs alone; each GPU's workers run on its NUMA node
//! (a sysfs tree of two nodes given by VGPUD_TEST_SYSFS). The metrics per
//! parent are in ops_views.rs, mdevctl's view in mdev.rs; the run on two
//! real GPUs is tests/gpu/run.sh's `multi` part.

mod common;
use common::daemon::{fill_once, Vgpud};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vgpu_guest::programs::Program;
use vgpu_guest::{Channel, ChannelConfig, Placement, WaitMode};

const ALL_GPUS: &str = "[catalog.parent.\"gpus\"]\nengine = \"cuda\"\ndevice = \"all\"\n";
const GPU0: &str = "0000:ee:00.0";
const GPU1: &str = "0000:ee:01.0";
const UUID0: &str = "GPU-eeeeeeee-eeee-eeee-eeee-eeeeeeeeee00";
const UUID1: &str = "GPU-eeeeeeee-eeee-eeee-eeee-eeeeeeeeee01";

/// `(type, max_instances, available_instances)` of each type `parent`
/// offers, as `types` answers.
fn catalogue(v: &Vgpud, parent: &str) -> Vec<(String, u64, u64)> {
    v.request(json!({"op": "types", "parent": parent}))
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t["parent"], parent);
            (
                t["id"].as_str().unwrap().to_string(),
                t["max_instances"].as_u64().unwrap(),
                t["available_instances"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Create a vGPU of `vtype` (on `parent`, or where the rule puts it): its
/// uuid, parent and socket.
fn create(v: &Vgpud, vtype: &str, parent: Option<&str>) -> (String, String, PathBuf) {
    let r = v.request(json!({"op": "create", "type": vtype, "parent": parent}));
    (
        r["uuid"].as_str().unwrap().to_string(),
        r["parent"].as_str().unwrap().to_string(),
        PathBuf::from(r["socket"].as_str().unwrap()),
    )
}

/// How many vGPUs each of GPU0 and GPU1 holds, as `list` says.
fn split(v: &Vgpud) -> (usize, usize) {
    let list = v.request(json!({"op": "list"}));
    let on = |p: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .filter(|x| x["parent"] == p)
            .count()
    };
    (on(GPU0), on(GPU1))
}

/// The worker of the vGPU just created on `v` (the one not in `known`).
fn new_worker(v: &Vgpud, known: &[u32]) -> u32 {
    let now = v.workers();
    let fresh: Vec<u32> = now.into_iter().filter(|p| !known.contains(p)).collect();
    assert_eq!(fresh.len(), 1, "one new worker: {fresh:?}");
    fresh[0]
}

/// The hex digits a worker is given for `uuid` (`--device-uuid`).
fn hex(uuid: &str) -> String {
    uuid.trim_start_matches("GPU-").replace('-', "")
}

#[test]
fn every_gpu_is_a_parent_with_its_own_catalogue() {
    let v = Vgpud::start(
        "multi-catalogue",
        ALL_GPUS,
        &[("VGPUD_CUDA_EMULATE", "16GiB,8GiB")],
    );
    // Named by PCI address, in that order; each GPU's types from its own
    // memory: the whole GPU, 1/2, 1/4, 1/8 after a context's 1 GiB each.
    let parents = v.request(json!({"op": "parents"}));
    let ids: Vec<&str> = parents
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["parent"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [GPU0, GPU1]);
    let c = |id: &str, max, avail| (id.to_string(), max, avail);
    assert_eq!(
        catalogue(&v, GPU0),
        [
            c("emulated-15c", 1, 1),
            c("emulated-7c", 2, 2),
            c("emulated-3c", 4, 4),
            c("emulated-1c", 8, 8)
        ]
    );
    assert_eq!(
        catalogue(&v, GPU1),
        [
            c("emulated-7c", 1, 1),
            c("emulated-3c", 2, 2),
            c("emulated-1c", 4, 4)
        ]
    );
    // Each parent's GPU, as the worker listed it. Emulated GPUs are on no
    // NUMA node: their workers run anywhere.
    for (p, (uuid, pci, gib)) in parents
        .as_array()
        .unwrap()
        .iter()
        .zip([(UUID0, GPU0, 16u64), (UUID1, GPU1, 8)])
    {
        assert_eq!(p["engine"], "cuda");
        let g = &p["gpu"];
        assert_eq!(
            (&g["uuid"], &g["pci_bus_id"], &g["name"]),
            (&json!(uuid), &json!(pci), &json!("emulated"))
        );
        assert_eq!(g["memory_bytes"].as_u64(), Some(gib << 30));
        assert_eq!(
            (&g["numa_node"], &g["worker_cpus"]),
            (&Value::Null, &Value::Null)
        );
    }
    // A vGPU's worker runs on its parent's GPU, named by UUID.
    let (_, on0, _) = create(&v, "emulated-3c", Some(GPU0));
    let w0 = new_worker(&v, &[]);
    let (_, on1, _) = create(&v, "emulated-3c", Some(GPU1));
    let w1 = new_worker(&v, &[w0]);
    assert_eq!((on0.as_str(), on1.as_str()), (GPU0, GPU1));
    assert!(Vgpud::cmdline(w0).contains(&format!("--device-uuid {}", hex(UUID0))));
    assert!(Vgpud::cmdline(w1).contains(&format!("--device-uuid {}", hex(UUID1))));
    // Each GPU counts only its own vGPUs.
    assert_eq!(catalogue(&v, GPU0)[2], c("emulated-3c", 4, 3));
    assert_eq!(catalogue(&v, GPU1)[1], c("emulated-3c", 2, 1));
    assert_eq!(
        catalogue(&v, GPU1)[0],
        c("emulated-7c", 1, 0),
        "3 GiB and a context's 1 GiB of its 8 used"
    );
}

/// The error name of a create that must fail.
fn refused(v: &Vgpud, vtype: &str) -> String {
    let r = v.reply(&json!({"op": "create", "type": vtype}));
    assert_eq!(r["ok"], false, "{r}");
    r["error"].as_str().unwrap().to_string()
}

#[test]
fn placement_spreads_by_default_packs_when_asked_and_refuses_when_full() {
    // Two 8 GiB GPUs: emulated-1c, four per GPU.
    let emulate = [("VGPUD_CUDA_EMULATE", "8GiB,8GiB")];
    let v = Vgpud::start("multi-spread", ALL_GPUS, &emulate);
    let mut order = Vec::new();
    for _ in 0..3 {
        order.push(create(&v, "emulated-1c", None).1);
    }
    assert_eq!(order, [GPU0, GPU1, GPU0], "spread: in turn");
    for _ in 0..5 {
        create(&v, "emulated-1c", None);
    }
    // Twice the per-GPU maximum: all created, split evenly; one more is
    // refused with the mdev core's errno for no instance left.
    assert_eq!(split(&v), (4, 4));
    assert_eq!(refused(&v, "emulated-1c"), "EUSERS");
    assert_eq!(refused(&v, "emulated-15c"), "ENOENT", "no GPU offers it");
    assert!(catalogue(&v, GPU0).iter().all(|t| t.2 == 0));
    assert_eq!(v.workers().len(), 8);
    drop(v);

    let packed = format!("[catalog]\nplacement = \"pack\"\n\n{ALL_GPUS}");
    let v = Vgpud::start("multi-pack", &packed, &emulate);
    let mut uuids = Vec::new();
    for _ in 0..3 {
        let (u, p, _) = create(&v, "emulated-1c", None);
        assert_eq!(p, GPU0, "pack: the first GPU fills first");
        uuids.push(u);
    }
    for _ in 0..5 {
        uuids.push(create(&v, "emulated-1c", None).0);
    }
    assert_eq!(split(&v), (4, 4));
    assert_eq!(refused(&v, "emulated-1c"), "EUSERS");
    // Two out of GPU0 and one out of GPU1 leave 2 and 3: pack takes GPU1,
    // the fuller; after a reload that drops the rule, spread takes GPU0,
    // the emptier.
    for u in [&uuids[0], &uuids[1], &uuids[7]] {
        v.request(json!({"op": "remove", "uuid": u}));
    }
    assert_eq!(split(&v), (2, 3));
    assert_eq!(create(&v, "emulated-1c", None).1, GPU1);
    std::fs::write(v.dir.join("vgpud.toml"), ALL_GPUS).unwrap();
    v.request(json!({"op": "reload"}));
    assert_eq!(create(&v, "emulated-1c", None).1, GPU0);
    assert_eq!(split(&v), (3, 4));
}

/// A checked fill loop on `socket` until `stop`: how many fills completed,
/// each read back right.
fn checked_fills(socket: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        let mut dev = common::daemon::connect(&socket, 32 << 20).unwrap();
        let mut ch = Channel::new(&mut dev, 0, ChannelConfig::default()).unwrap();
        let buf = dev.alloc(Placement::Sysmem, 4096).unwrap();
        let mut n = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let f = ch
                .launch(
                    &mut dev,
                    &Program::Fill {
                        dst: buf.va(),
                        count: 1024,
                        value: n,
                    },
                )
                .unwrap();
            ch.wait(&mut dev, f, WaitMode::Interrupt, Duration::from_secs(10))
                .unwrap();
            assert_eq!(buf.host().unwrap().read_u32(0).unwrap(), n);
            assert_eq!(buf.host().unwrap().read_u32(4092).unwrap(), n);
            n += 1;
        }
        n
    })
}

/// `commands` of the vGPU `uuid`, as `status` says.
fn commands(v: &Vgpud, uuid: &str) -> u64 {
    v.request(json!({"op": "status", "uuid": uuid}))[0]["commands"]
        .as_u64()
        .unwrap()
}

#[test]
fn a_worker_dying_on_one_gpu_leaves_the_other_gpus_vgpus_running() {
    let v = Vgpud::start(
        "multi-isolation",
        ALL_GPUS,
        &[("VGPUD_CUDA_EMULATE", "8GiB,8GiB")],
    );
    let (_, _, sa) = create(&v, "emulated-1c", Some(GPU0));
    let wa = new_worker(&v, &[]);
    let (b, _, sb) = create(&v, "emulated-1c", Some(GPU1));
    let wb = new_worker(&v, &[wa]);
    let (c, _, sc) = create(&v, "emulated-1c", Some(GPU1));
    let wc = new_worker(&v, &[wa, wb]);
    // GPU1's two vGPUs run checked work while A's worker, on GPU0, dies
    // under a running item.
    let stop = Arc::new(AtomicBool::new(false));
    let loops = [
        checked_fills(sb.clone(), stop.clone()),
        checked_fills(sc, stop.clone()),
    ];
    let mut da = common::daemon::connect(&sa, 32 << 20).unwrap();
    let mut ch = Channel::new(&mut da, 0, ChannelConfig::default()).unwrap();
    let spin = Program::Spin {
        dst: 0,
        units: 2_000,
        unit_ns: 1_000_000,
    };
    let f = ch.launch(&mut da, &spin).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let before = (commands(&v, &b), commands(&v, &c));
    // SAFETY: kill on a child process of the vgpud this test started.
    assert_eq!(unsafe { libc::kill(wa as i32, libc::SIGKILL) }, 0);
    let r = ch.wait(&mut da, f, WaitMode::Interrupt, Duration::from_secs(10));
    assert!(
        matches!(r, Err(vgpu_guest::Error::ChannelFault { .. })),
        "A's channel after its worker died: {r:?}"
    );
    assert_eq!(
        ch.status(&mut da).unwrap().error,
        Some(vgpu_guest::ErrorCode::EngineError)
    );
    std::thread::sleep(Duration::from_millis(300));
    let after = (commands(&v, &b), commands(&v, &c));
    stop.store(true, Ordering::Relaxed);
    let done: Vec<u32> = loops
        .into_iter()
        .map(|t| t.join().expect("GPU1's results stayed right"))
        .collect();
    assert!(
        after.0 > before.0 && after.1 > before.1,
        "GPU1's vGPUs went on after the death: {before:?} -> {after:?}"
    );
    assert!(done.iter().all(|&n| n > 10), "fills on GPU1: {done:?}");
    // GPU1's workers were never touched; nothing on GPU1 faulted.
    let workers = v.workers();
    assert!(
        workers.contains(&wb) && workers.contains(&wc),
        "{workers:?}"
    );
    assert!(!workers.contains(&wa));
    for u in [&b, &c] {
        assert_eq!(
            v.request(json!({"op": "status", "uuid": u}))[0]["faults"],
            0
        );
    }
    // A's next client gets a new worker, on its own GPU again.
    drop(ch);
    drop(da);
    assert_eq!(fill_once(&sa, 7), Ok(()));
    let wa2 = new_worker(&v, &[wb, wc]);
    assert!(Vgpud::cmdline(wa2).contains(&format!("--device-uuid {}", hex(UUID0))));
    assert_eq!(fill_once(&sb, 8), Ok(()));
}

/// A sysfs tree of two NUMA nodes for VGPUD_TEST_SYSFS: node 0 with this
/// host's CPU 0 and its memory, node 1 with CPU 1 and no memory; the
/// emulated GPU0 on node 0, GPU1 on node 1.
fn two_nodes(dir: &Path) -> PathBuf {
    let root = dir.join("sys");
    let nodes = root.join("devices/system/node");
    for (n, cpus) in [(0, "0"), (1, "1")] {
        std::fs::create_dir_all(nodes.join(format!("node{n}"))).unwrap();
        std::fs::write(nodes.join(format!("node{n}/cpulist")), format!("{cpus}\n")).unwrap();
    }
    std::fs::write(nodes.join("online"), "0-1\n").unwrap();
    std::fs::write(nodes.join("has_memory"), "0\n").unwrap();
    for (pci, node) in [(GPU0, 0), (GPU1, 1)] {
        let d = root.join(format!("bus/pci/devices/{pci}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("numa_node"), format!("{node}\n")).unwrap();
    }
    root
}

/// `name:` of `/proc/<pid>/status`.
fn status_field(pid: u32, name: &str) -> String {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    st.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap()
        .trim()
        .to_string()
}

/// The memory policy of each of `pid`'s mappings (`/proc/<pid>/numa_maps`).
fn policies(pid: u32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/numa_maps"))
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
        .collect()
}

#[test]
fn each_gpus_workers_run_on_its_numa_node() {
    let dir = std::env::temp_dir().join(format!("vgpud-numa-tree-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let sys = two_nodes(&dir);
    let v = Vgpud::start(
        "multi-numa",
        ALL_GPUS,
        &[
            ("VGPUD_CUDA_EMULATE", "8GiB,8GiB"),
            ("VGPUD_TEST_SYSFS", sys.to_str().unwrap()),
        ],
    );
    let cpu1 = status_field(std::process::id(), "Cpus_allowed_list") != "0";
    let parents = v.request(json!({"op": "parents"}));
    let g = |i: usize| parents[i]["gpu"].clone();
    assert_eq!(
        (g(0)["numa_node"].clone(), g(0)["worker_cpus"].clone()),
        (json!(0), json!("0"))
    );
    assert_eq!(g(1)["numa_node"], 1);
    create(&v, "emulated-1c", Some(GPU0));
    let w0 = new_worker(&v, &[]);
    let (_, _, s1) = create(&v, "emulated-1c", Some(GPU1));
    let w1 = new_worker(&v, &[w0]);
    // GPU0's worker: node 0's CPU, and its memory preferred (every thread
    // and mapping: set before the worker's first instruction).
    assert_eq!(status_field(w0, "Cpus_allowed_list"), "0");
    for t in std::fs::read_dir(format!("/proc/{w0}/task")).unwrap() {
        let st = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
        assert!(st.contains("Cpus_allowed_list:\t0\n"), "{st}");
    }
    let p0 = policies(w0);
    assert!(p0.iter().all(|p| p == "prefer:0"), "{p0:?}");
    // GPU1's node has no memory: its CPU only, the default policy.
    if cpu1 {
        assert_eq!(g(1)["worker_cpus"], "1");
        assert_eq!(status_field(w1, "Cpus_allowed_list"), "1");
    }
    let p1 = policies(w1);
    assert!(p1.iter().all(|p| p == "default"), "{p1:?}");
    // The placed worker still serves its vGPU (its sandbox allows what it
    // runs with).
    assert_eq!(fill_once(&s1, 3), Ok(()));
    drop(v);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_gpu_named_twice_or_missing_stops_vgpud_at_start() {
    let run = |name: &str, config: &str| {
        let dir = std::env::temp_dir().join(format!("vgpud-multi-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("vgpud.toml"), config).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vgpud"))
            .arg("--config")
            .arg(dir.join("vgpud.toml"))
            .arg("--run-dir")
            .arg(dir.join("run"))
            .env("VGPUD_CUDA_EMULATE", "2")
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let twice = format!("{ALL_GPUS}\n[catalog.parent.\"mine\"]\nengine = \"cuda\"\ndevice = 1\n");
    let e = run("twice", &twice);
    assert!(
        e.contains(&format!("parents {GPU1} and mine are the same GPU {UUID1}")),
        "{e}"
    );
    let e = run(
        "missing",
        "[catalog.parent.\"g\"]\nengine = \"cuda\"\ndevice = 2\n",
    );
    assert!(
        e.contains(&format!("parent g: no GPU 2 on this host (it shows 2 GPUs: 0 {UUID0} at {GPU0}, 1 {UUID1} at {GPU1})")),
        "{e}"
    );
}
