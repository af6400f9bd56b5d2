//! Several vGPUs of one vgpud share the real cpu engine through the
//! scheduler, each driven by the guest driver over its vfio-user socket
//! (the `vgpud --demo` workload); the shares are the engine time the
//! backend measured per vGPU, over wall time, while both tenants submit.
//!
//! On a busy host (a build beside the tests) the host may take time from
//! the daemon and the tenants: runnable work then waits for the daemon's
//! threads, a spin's worker wakes late, or a tenant's driver does not
//! submit in time. The demo measures both (`DemoReport::disturbance`).
//! A measurement where that is above [`DISTURBED`] says more about the host
//! than about the policy, so it is taken again, and the test says so, up
//! to [`ATTEMPTS`] times in all; the least disturbed one is asserted. (Beside
//! a `-j2` build on 2 cores, one measurement in two is disturbed, and one
//! retry was not always enough: a second measurement that lost 5 % of the
//! engine's time to the host failed the work-conserving bound, 1 run in 20.)

use devmodel::sync::lock;
use std::sync::{Arc, Mutex};

use scheduler::{Config, PolicyKind};
use vgpud::daemon::Daemon;
use vgpud::demo::DemoReport;

/// The measurements run one at a time so that they do not perturb each other.
static ENGINE: Mutex<()> = Mutex::new(());

/// Share of the measured wall time the host may take before a measurement
/// is taken again.
const DISTURBED: f64 = 0.02;

/// Measurements taken at most, while each is disturbed.
const ATTEMPTS: usize = 4;

fn measure(config: &Config, policy: Option<PolicyKind>) -> DemoReport {
    let dir =
        std::env::temp_dir().join(format!("vgpud-shares-{}-{:?}", std::process::id(), policy));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let daemon = Arc::new(Mutex::new(
        Daemon::new(&dir, None, config.clone(), &mdev_types::Catalog::default()).unwrap(),
    ));
    if let Some(p) = policy {
        daemon
            .lock()
            .unwrap()
            .policy_set(None, p.name(), None)
            .unwrap();
    }
    let r = vgpud::demo::run(&daemon, 2.0).expect("demo workload");
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "  engine idle: {:.4} empty, {:.4} held, {:.4} late; {:.4} stalled",
        r.idle_empty, r.idle_held, r.idle_late, r.stalled
    );
    for t in &r.tenants {
        eprintln!(
            "  {}: achieved {:.4}, {} slices, {} dry, {} commands, p99 {:.0} us",
            t.type_id, t.achieved, t.slices, t.slices_dry, t.load.completed, t.load.latency_p99_us
        );
        assert_eq!(t.checks_passed, t.checks, "{}: guest selftest", t.type_id);
        assert!(t.checks >= 20, "the selftest ran its checks");
    }
    r
}

/// The demo's shares under `policy`: measured again while the host disturbed
/// the measurement, at most [`ATTEMPTS`] times; the least disturbed.
fn shares(config: Config, policy: Option<PolicyKind>) -> DemoReport {
    let _one_at_a_time = lock(&ENGINE);
    let mut best = measure(&config, policy);
    for _ in 1..ATTEMPTS {
        if best.disturbance() <= DISTURBED {
            break;
        }
        eprintln!(
            "  the host took {:.1} % of the measured time (no work {:.4}, late {:.4}, stalled {:.4}): measuring again",
            best.disturbance() * 100.0,
            best.idle_empty,
            best.idle_late,
            best.stalled
        );
        let r = measure(&config, policy);
        if r.disturbance() < best.disturbance() {
            best = r;
        }
    }
    best
}

fn achieved(r: &DemoReport) -> Vec<f64> {
    r.tenants.iter().map(|t| t.achieved).collect()
}

#[test]
fn fixed_share_two_to_one_over_vfio_user() {
    // vgpud-4c (max 2 per parent) and vgpud-2c (max 4): shares 1/2 and 1/4.
    let r = shares(Config::default(), Some(PolicyKind::FixedShare));
    let s = achieved(&r);
    let ratio = s[0] / s[1];
    eprintln!("fixed_share: {:.4} / {:.4}, ratio {ratio:.4}", s[0], s[1]);
    assert!(
        (ratio / 2.0 - 1.0).abs() <= 0.03,
        "ratio {ratio} not within 3% of 2"
    );
    assert!((s[0] - 0.5).abs() <= 0.015, "4c share {}", s[0]);
    assert!((s[1] - 0.25).abs() <= 0.0075, "2c share {}", s[1]);
}

#[test]
fn best_effort_is_work_conserving_over_vfio_user() {
    let r = shares(Config::default(), Some(PolicyKind::BestEffort));
    let s = achieved(&r);
    eprintln!("best_effort: {:.4} / {:.4}", s[0], s[1]);
    // Strict fixed shares would leave 1/4 idle (total 0.75); work-conserving
    // best effort never holds the engine idle with work queued, and keeps it
    // busy but for dispatch overhead between items.
    assert!(
        r.idle_held < 1e-3,
        "best effort held the engine idle: {r:?}"
    );
    assert!(
        s[0] + s[1] > 0.85,
        "engine idle while both vGPUs had work: {s:?}"
    );
    assert!(
        (s[0] / s[1] - 1.0).abs() < 0.1,
        "round robin over equal work: {s:?}"
    );
}

#[test]
fn weighted_three_to_one_from_the_policy_file_on_one_channel_each() {
    let text = "[parent.\"cpu0\"]\npolicy = \"weighted\"\n[type.\"vgpud-2c\"]\nweight = 3\n";
    let config = Config::parse(text, "test.toml").expect("policy file");
    let r = shares(config, None);
    let s = achieved(&r);
    let ratio = s[1] / s[0];
    eprintln!("weighted: {:.4} / {:.4}, ratio {ratio:.4}", s[0], s[1]);
    assert!(
        (ratio / 3.0 - 1.0).abs() <= 0.05,
        "weight 3 vs 1 gave ratio {ratio}"
    );
    assert!(r.idle_held < 1e-3, "weighted held the engine idle: {r:?}");
    assert!(s[0] + s[1] > 0.85, "weighted is work-conserving: {s:?}");
}
