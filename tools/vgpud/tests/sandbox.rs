//! The worker sandbox, where CI runs: the CUDA engine's workers emulating
//! the GPU (`VGPUD_CUDA_EMULATE=1`), confined as a real one is
//! (engine_worker::sandbox, docs/reliability.md).

mod common;
use common::daemon::{fill_once, Vgpud};
use engine_worker::sandbox::{Escape, ESCAPE_ENV};
use std::time::{Duration, Instant};

const GPU_PARENT: &str = "[catalog.parent.\"gpu0\"]\nengine = \"cuda\"\n";

/// The user workers run as by default: `vgpud-worker` where it exists,
/// else 65534; a daemon that is not root keeps its own.
fn expected_uid() -> u32 {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        // SAFETY: as above.
        return unsafe { libc::geteuid() };
    }
    let out = std::process::Command::new("id")
        .args(["-u", "vgpud-worker"])
        .output()
        .expect("id(1)");
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    } else {
        65534
    }
}

/// `field:` of a `/proc/<pid>/status` text, split in words.
fn field<'a>(status: &'a str, name: &str) -> Vec<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .split_whitespace()
        .collect()
}

#[test]
fn workers_run_unprivileged_with_no_new_privileges_a_filter_and_no_capabilities() {
    let v = Vgpud::start("sandbox-status", GPU_PARENT, &[("VGPUD_CUDA_EMULATE", "1")]);
    let a = v.create("emulated-1c");
    // Guest work through the confined worker.
    assert_eq!(fill_once(&a, 0x1234_5678), Ok(()));
    let workers = v.workers();
    assert_eq!(workers.len(), 1, "{workers:?}");
    let uid = expected_uid().to_string();
    let root = v.dir.join("run/worker-root");
    for w in workers {
        // Every thread of the worker, not only its first.
        let tasks: Vec<String> = std::fs::read_dir(format!("/proc/{w}/task"))
            .unwrap()
            .map(|t| t.unwrap().path().join("status"))
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        assert!(tasks.len() >= 2, "the worker's threads: {}", tasks.len());
        for st in &tasks {
            assert_eq!(field(st, "Uid"), [&uid; 4], "real, effective, saved, fs");
            assert!(field(st, "Gid").iter().all(|g| *g != "0"), "{st}");
            assert_eq!(field(st, "NoNewPrivs"), ["1"]);
            assert_eq!(field(st, "Seccomp"), ["2"], "a filter is installed");
            for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
                assert_eq!(field(st, caps), ["0000000000000000"], "{caps}");
            }
        }
        let status = &tasks[0];
        eprintln!(
            "worker {w}: {}",
            status
                .lines()
                .filter(
                    |l| ["Uid", "Gid", "Groups", "NoNewPrivs", "Seccomp:", "CapEff"]
                        .iter()
                        .any(|k| l.starts_with(k))
                )
                .collect::<Vec<_>>()
                .join(" | ")
        );
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            // Every thread runs at the data path's priority, raised before
            // the worker gave up the right to (its threads submit and
            // complete every item).
            for t in std::fs::read_dir(format!("/proc/{w}/task")).unwrap() {
                let stat = std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap();
                // The fields after the command's closing parenthesis; nice is the 19th of the line.
                let after = &stat[stat.rfind(')').unwrap() + 2..];
                let nice: i32 = after.split_whitespace().nth(16).unwrap().parse().unwrap();
                assert_eq!(nice, devmodel::thread::DATA_PATH_NICE, "{stat}");
            }
            // Its root is the empty directory, and nothing else is reachable.
            let r = std::fs::read_link(format!("/proc/{w}/root")).unwrap();
            assert_eq!(r, root);
            assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
            assert_eq!(field(status, "Groups").len(), 0, "no supplementary groups");
        }
    }
}

/// Wait until vgpud's log holds `n` lines containing `what`.
fn wait_for_log(v: &Vgpud, what: &str, n: usize) -> String {
    let t = Instant::now();
    loop {
        let log = v.log();
        if log.matches(what).count() >= n {
            return log;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{n} times {what:?} not logged:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_worker_that_tries_to_escape_is_killed_and_only_its_vgpu_faults_until_reset() {
    // A worker taken over by its guest's input (here: the test-only escape,
    // asked for by a fill's pattern) tries to start a program, read
    // /etc/shadow, open an INET socket and trace the daemon. The filter
    // kills it at the call (SIGSYS); its vGPU's work fails with
    // ENGINE_ERROR, the neighbour's goes on, and the next client gets a new
    // worker and working vGPU. Each attempt on a vGPU of its own (restarts
    // of one vGPU back off).
    let v = Vgpud::start(
        "sandbox-escape",
        GPU_PARENT,
        &[("VGPUD_CUDA_EMULATE", "1"), (ESCAPE_ENV, "1")],
    );
    let neighbour = v.create("emulated-1c");
    assert_eq!(fill_once(&neighbour, 1), Ok(()));
    let attempts = [Escape::Execve, Escape::Shadow, Escape::Inet, Escape::Ptrace];
    for (i, e) in attempts.into_iter().enumerate() {
        let a = v.create("emulated-1c");
        assert_eq!(fill_once(&a, 7), Ok(()), "{e:?}: before");
        assert_eq!(
            fill_once(&a, e.pattern()),
            Err(Some(vgpu_guest::ErrorCode::EngineError)),
            "{e:?}: the worker is gone"
        );
        wait_for_log(&v, "killed by SIGSYS", i + 1);
        // The worker's stderr reaches the log on a thread of its own.
        let log = wait_for_log(&v, &format!("escape attempt {e:?}"), 1);
        assert!(!log.contains("SUCCEEDED"), "{log}");
        assert!(
            !log.contains(&format!("escape attempt {e:?} failed")),
            "{log}"
        );
        assert_eq!(
            fill_once(&neighbour, 2 + i as u32),
            Ok(()),
            "{e:?}: neighbour"
        );
        assert_eq!(fill_once(&a, 9), Ok(()), "{e:?}: recovered on reset");
    }
    // The daemon and every file are untouched by what the workers tried.
    let log = v.log();
    assert_eq!(log.matches("killed by SIGSYS").count(), 4, "{log}");
}

#[test]
fn a_worker_that_writes_garbage_into_its_ring_is_stopped_and_the_daemon_lives() {
    // A worker taken over by its guest's input scribbles on the ring it
    // shares with the daemon (here: the test-only hook, asked for by a
    // fill's pattern): a head far ahead or moved back, a record longer than
    // any, of an unknown kind, bytes that are no message, or a frame on the
    // socket that no record announced. The daemon
    // stops that worker as broken; its vGPU's work fails with ENGINE_ERROR,
    // the neighbour's goes on, and a reset gives the vGPU a new worker.
    use engine_worker::ring::Garbage;
    let v = Vgpud::start(
        "ring-garbage",
        GPU_PARENT,
        &[("VGPUD_CUDA_EMULATE", "1"), (ESCAPE_ENV, "1")],
    );
    let neighbour = v.create("emulated-1c");
    assert_eq!(fill_once(&neighbour, 1), Ok(()));
    for (i, g) in Garbage::ALL.into_iter().enumerate() {
        let a = v.create("emulated-1c");
        assert_eq!(fill_once(&a, 7), Ok(()), "{g:?}: before");
        assert_eq!(
            fill_once(&a, g.pattern()),
            Err(Some(vgpu_guest::ErrorCode::EngineError)),
            "{g:?}: the worker is stopped"
        );
        wait_for_log(&v, "worker broke the protocol: stopped", i + 1);
        // The worker's stderr reaches the log on a thread of its own.
        wait_for_log(&v, &format!("ring garbage {g:?}"), 1);
        assert_eq!(
            fill_once(&neighbour, 2 + i as u32),
            Ok(()),
            "{g:?}: neighbour"
        );
        assert_eq!(fill_once(&a, 9), Ok(()), "{g:?}: recovered on reset");
    }
    let log = v.log();
    assert_eq!(
        log.matches("worker broke the protocol: stopped").count(),
        Garbage::ALL.len(),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}
