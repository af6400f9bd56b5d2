//! `equal_share` divides the engine among running vGPUs, those with a VM
//! (a vfio-user client) attached, as NVIDIA's does: a vGPU that exists
//! with no VM attached takes no share.

use std::time::{Duration, Instant};

use vgpu_guest::transport::vfio_user::VfioUserTransport;
use vgpud::daemon::Daemon;

fn configured(d: &Daemon, uuid: &str) -> Option<f64> {
    d.status(Some(uuid)).unwrap()[0].configured_share
}

/// Wait until `uuid`'s configured share is `want` (attach and detach are
/// seen by the server thread).
fn wait_share(d: &Daemon, uuid: &str, want: f64) {
    let t = Instant::now();
    while configured(d, uuid) != Some(want) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{uuid}: configured share {:?}, wanted {want}",
            configured(d, uuid)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn equal_share_counts_only_vgpus_with_a_vm_attached() {
    let dir = std::env::temp_dir().join(format!("vgpud-equal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut d = Daemon::new(
        &dir,
        None,
        scheduler::Config::default(),
        &mdev_types::Catalog::default(),
    )
    .unwrap();
    d.policy_set(None, "equal_share", None).unwrap();
    let a = d.create("vgpud-1c", None, None).unwrap();
    let b = d.create("vgpud-1c", None, None).unwrap();
    // One VM attached, one vGPU without a VM: the running one gets it all.
    let ta = VfioUserTransport::connect(&a.socket, 4 << 20).unwrap();
    wait_share(&d, &a.uuid, 1.0);
    // Both attached: half each.
    let tb = VfioUserTransport::connect(&b.socket, 4 << 20).unwrap();
    wait_share(&d, &a.uuid, 0.5);
    wait_share(&d, &b.uuid, 0.5);
    // The first VM leaves: the other has it all again.
    drop(ta);
    wait_share(&d, &b.uuid, 1.0);
    drop(tb);
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}
