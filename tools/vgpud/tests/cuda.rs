//! The CUDA engine where CI runs: no GPU. A `cuda` parent must then stop
//! vgpud at start with an error that names the parent and the reason (the
//! GPU tests proper run on a GPU machine: tests/gpu/run.sh).

use std::process::Command;

#[test]
fn a_gpu_parent_without_a_gpu_is_a_clear_start_error() {
    let dir = std::env::temp_dir().join(format!("vgpud-cuda-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("vgpud.toml");
    std::fs::write(
        &cfg,
        "[catalog.parent.\"gpu0\"]\nengine = \"cuda\"\ndevice = 0\n",
    )
    .unwrap();
    // The worker binary sits beside vgpud, as installed.
    let worker = std::path::Path::new(env!("CARGO_BIN_EXE_vgpud-cuda-worker"));
    let probe = Command::new(worker).arg("--probe").output().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vgpud"))
        .arg("--config")
        .arg(&cfg)
        .arg("--run-dir")
        .arg(dir.join("run"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    if probe.status.success() {
        // A GPU host: the probe answers with the GPU, as JSON.
        let gpu: serde_json::Value = serde_json::from_slice(&probe.stdout).unwrap();
        assert!(gpu["memory_bytes"].as_u64().unwrap() > 0, "{gpu}");
        return;
    }
    assert!(!out.status.success(), "vgpud started with no GPU");
    assert!(
        err.contains("parent gpu0") && err.contains("GPU 0") && err.contains("libcuda"),
        "{err}"
    );
    assert!(
        String::from_utf8_lossy(&probe.stderr).contains("no CUDA driver library"),
        "the worker says why"
    );
}

mod common;
use common::daemon::{fill_once, Vgpud};
use std::time::Duration;
use vgpu_guest::programs::Program;
use vgpu_guest::{Channel, ChannelConfig, Device, Placement, WaitMode};

/// `status`'s `health` of the vGPU served on `socket`.
fn health(v: &Vgpud, socket: &std::path::Path) -> String {
    let all = v.request(serde_json::json!({"op": "status"}));
    all.as_array()
        .unwrap()
        .iter()
        .find(|s| s["socket"].as_str() == socket.to_str())
        .map(|s| s["health"].as_str().unwrap().to_string())
        .expect("the vGPU's status")
}

fn attach(socket: &std::path::Path) -> Device {
    common::daemon::connect(socket, 32 << 20).unwrap()
}

#[test]
fn gpu_workers_are_processes_and_a_killed_one_faults_only_its_vgpu() {
    // The CUDA engine's process side, with the workers emulating the GPU on
    // the cpu engine (no GPU here): one worker per vGPU, guest RAM handed
    // over by descriptor, the selftest through it; kill -9 of one worker
    // stops only its vGPU's channel (ENGINE_ERROR), and the next client
    // gets a new worker.
    let v = Vgpud::start(
        "cuda-emulated",
        "[catalog.parent.\"gpu0\"]\nengine = \"cuda\"\n",
        &[("VGPUD_CUDA_EMULATE", "1")],
    );
    let types = v.request(serde_json::json!({"op": "types"}));
    let ids: Vec<&str> = types
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["emulated-15c", "emulated-7c", "emulated-3c", "emulated-1c"],
        "derived from the GPU"
    );
    let a = v.create("emulated-1c");
    let b = v.create("emulated-1c");
    let pids = v.workers();
    assert_eq!(pids.len(), 2, "one worker per vGPU: {pids:?}");

    let mut da = attach(&a);
    let report = vgpu_guest::selftest::run(&mut da);
    assert!(
        report.passed(),
        "selftest through the worker: {:?}",
        report.failures().collect::<Vec<_>>()
    );
    // The device-info block (ABI 1.3) is what the worker said it runs on,
    // in its Ready: here the emulating worker's cpu engine (one thread,
    // one multiprocessor), with the vGPU's own UUID.
    let info = da
        .device_info()
        .unwrap()
        .expect("the worker's device-info block");
    assert_eq!(info.name, "vgpud cpu engine");
    assert_eq!((info.attributes[75], info.attributes[76]), (9, 0));
    assert_eq!(info.attributes[16], 1, "multiprocessors");
    let uuid: String = info.uuid.iter().map(|b| format!("{b:02x}")).collect();
    let name = a.file_stem().and_then(|s| s.to_str()).unwrap();
    assert_eq!(uuid, name.replace('-', ""));

    // B keeps working, its results checked, while A's worker dies.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let good = {
        let (stop, b) = (stop.clone(), b.clone());
        std::thread::spawn(move || {
            let mut dev = attach(&b);
            let mut ch = Channel::new(&mut dev, 0, ChannelConfig::default()).unwrap();
            let buf = dev.alloc(Placement::Sysmem, 4096).unwrap();
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
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
                assert_eq!(buf.host().unwrap().read_u32(4092).unwrap(), n);
                n += 1;
            }
            n
        })
    };
    let mut ch = Channel::new(&mut da, 0, ChannelConfig::default()).unwrap();
    let spin = Program::Spin {
        dst: 0,
        units: 2_000,
        unit_ns: 1_000_000,
    };
    let f = ch.launch(&mut da, &spin).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: kill on a child process of the vgpud this test started.
    assert_eq!(unsafe { libc::kill(pids[0] as i32, libc::SIGKILL) }, 0);
    let r = ch.wait(&mut da, f, WaitMode::Interrupt, Duration::from_secs(10));
    assert!(
        matches!(r, Err(vgpu_guest::Error::ChannelFault { .. })),
        "A's channel after its worker died: {r:?}"
    );
    assert_eq!(
        ch.status(&mut da).unwrap().error,
        Some(vgpu_guest::ErrorCode::EngineError)
    );
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let done = good.join().expect("B's results stayed right");
    assert!(done > 10, "B went on: {done} fills");
    drop(ch);
    drop(da);
    // A new client resets the vGPU: a new worker, and the selftest passes.
    let mut da = attach(&a);
    let report = vgpu_guest::selftest::run(&mut da);
    assert!(
        report.passed(),
        "after a new worker: {:?}",
        report.failures().collect::<Vec<_>>()
    );
    let now = v.workers();
    assert_eq!(now.len(), 2);
    assert!(!now.contains(&pids[0]), "the dead worker was replaced");
    // Many items in flight through the worker at once (completions and
    // HOST accesses crossing: the deadlocks a pipeline can have).
    let r = vgpu_guest::load::run(
        &mut da,
        &vgpu_guest::load::LoadConfig {
            unit_us: 100,
            duration: Duration::from_millis(500),
            channels: 2,
        },
    )
    .expect("a pipelined load through the worker");
    assert!(r.completed > 100 && r.utilization > 0.2, "{r:?}");
}

#[test]
fn an_item_past_the_kernel_limit_stops_its_worker_with_engine_timeout() {
    // A worker that stops answering (here: SIGSTOP; on a GPU, a kernel that
    // never ends) is stopped once an item has been at it longer than the
    // parent's kernel_timeout; its channel faults with ENGINE_TIMEOUT, the
    // other vGPU's worker goes on, and the next client gets a new worker.
    let v = Vgpud::start(
        "cuda-timeout",
        "[catalog.parent.\"gpu0\"]\nengine = \"cuda\"\nkernel_timeout = \"300ms\"\n",
        &[("VGPUD_CUDA_EMULATE", "1")],
    );
    let a = v.create("emulated-1c");
    let b = v.create("emulated-1c");
    let pids = v.workers();
    let mut da = attach(&a);
    let mut ch = Channel::new(&mut da, 0, ChannelConfig::default()).unwrap();
    let buf = da.alloc(Placement::Sysmem, 4096).unwrap();
    let fill = Program::Fill {
        dst: buf.va(),
        count: 1024,
        value: 7,
    };
    // SAFETY: signals to a child process of the vgpud this test started.
    assert_eq!(unsafe { libc::kill(pids[0] as i32, libc::SIGSTOP) }, 0);
    let t = std::time::Instant::now();
    let f = ch.launch(&mut da, &fill).unwrap();
    let r = ch.wait(&mut da, f, WaitMode::Interrupt, Duration::from_secs(10));
    let took = t.elapsed();
    assert!(
        matches!(r, Err(vgpu_guest::Error::ChannelFault { .. })),
        "{r:?}"
    );
    assert_eq!(
        ch.status(&mut da).unwrap().error,
        Some(vgpu_guest::ErrorCode::EngineTimeout)
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "stopped after {took:?} (limit 300 ms)"
    );
    // While A's VM is attached its worker stays stopped: status says why.
    assert_eq!(health(&v, &a), "faulted");
    assert_eq!(health(&v, &b), "ok");
    // B's worker was never touched.
    assert_eq!(fill_once(&b, 9), Ok(()));
    assert!(v.workers().contains(&pids[1]));
    // A's next client: a new worker, work runs again.
    drop(ch);
    drop(da);
    assert_eq!(fill_once(&a, 11), Ok(()));
}

#[test]
fn a_worker_that_keeps_dying_is_restarted_ever_more_rarely() {
    // The first restart is at once; the next within a minute waits 1 s
    // after the last one, then 2 s, 4 s …: a tenant that faults over and
    // over cannot make the GPU create contexts for it at will. Its work
    // fails with ENGINE_ERROR meanwhile; the neighbour's does not.
    let v = Vgpud::start(
        "cuda-backoff",
        "[catalog.parent.\"gpu0\"]\nengine = \"cuda\"\n",
        &[("VGPUD_CUDA_EMULATE", "1")],
    );
    let a = v.create("emulated-1c");
    let b = v.create("emulated-1c");
    let kill_a = |known: &[u32]| {
        let a_worker = v
            .workers()
            .into_iter()
            .find(|p| !known.contains(p))
            .expect("A's worker");
        // SAFETY: kill on a child process of the vgpud this test started.
        assert_eq!(unsafe { libc::kill(a_worker as i32, libc::SIGKILL) }, 0);
        std::thread::sleep(Duration::from_millis(100));
    };
    let b_worker = v.workers()[1];
    assert_eq!(fill_once(&a, 5), Ok(()));
    kill_a(&[b_worker]);
    // First death: the next client gets a new worker at once.
    assert_eq!(fill_once(&a, 5), Ok(()));
    kill_a(&[b_worker]);
    // Second death within the window: held back for 1 s.
    assert_eq!(
        fill_once(&a, 5),
        Err(Some(vgpu_guest::ErrorCode::EngineError))
    );
    assert_eq!(fill_once(&b, 5), Ok(()), "the neighbour is untouched");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(fill_once(&a, 5), Ok(()), "restarted once the wait was over");
    assert!(v.workers().contains(&b_worker));
}

#[test]
fn status_health_follows_the_worker_and_an_idle_vgpu_recovers_by_itself() {
    // A worker killed under an attached VM: `worker_down` until the VM's
    // reset (here: it leaves) starts a new one. Killed while no VM is
    // attached: the daemon replaces it by itself, the second time after
    // the 1 s back-off, `worker_down` meanwhile. The neighbour stays `ok`.
    let v = Vgpud::start(
        "cuda-health",
        "[catalog.parent.\"gpu0\"]\nengine = \"cuda\"\n",
        &[("VGPUD_CUDA_EMULATE", "1")],
    );
    let a = v.create("emulated-1c");
    let b = v.create("emulated-1c");
    let b_worker = v.workers()[1];
    let a_worker = |v: &Vgpud| {
        v.workers()
            .into_iter()
            .find(|p| *p != b_worker)
            .expect("A's worker")
    };
    let wait_for = |want: &str, within: Duration| {
        let t = std::time::Instant::now();
        while health(&v, &a) != want {
            assert!(t.elapsed() < within, "A not {want} within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        t.elapsed()
    };
    assert_eq!(health(&v, &a), "ok");
    let dev = attach(&a);
    // SAFETY: kill on a child process of the vgpud this test started.
    assert_eq!(unsafe { libc::kill(a_worker(&v) as i32, libc::SIGKILL) }, 0);
    wait_for("worker_down", Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(health(&v, &a), "worker_down", "attached: left to the VM");
    assert_eq!(health(&v, &b), "ok");
    drop(dev);
    wait_for("ok", Duration::from_secs(2));
    assert_eq!(fill_once(&a, 3), Ok(()));

    // Idle: the first restart in the window was the VM's, so this one is
    // held back 1 s, then done by the daemon with no client at all.
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(a_worker(&v) as i32, libc::SIGKILL) }, 0);
    wait_for("worker_down", Duration::from_secs(2));
    let back = wait_for("ok", Duration::from_secs(3));
    assert!(back > Duration::from_millis(300), "back-off kept: {back:?}");
    assert_eq!(health(&v, &b), "ok");
    assert_eq!(fill_once(&a, 4), Ok(()));
    assert!(v.workers().contains(&b_worker));
}
