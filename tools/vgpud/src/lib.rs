//! The pieces of the vgpud daemon.
//!
//! * [`parent`]: a physical GPU shared by many vGPUs — an execution backend
//!   whose work is fed to it by the host scheduler under the parent's policy.
//! * [`vfio_user`]: the vfio-user server that serves one vGPU on a socket.
//! * [`daemon`]: the parents and vGPUs the daemon hosts, and its control
//!   socket, metrics endpoint and mdev sysfs tree.
//! * `demo`: the demo workload `vgpud --demo` runs (feature `demo`).
//! * [`views`]: what `vgpuctl top` and `vgpuctl record` show: rates and
//!   shares between samples, the live table, the CSV and the chart.
//! * [`errno`]: the errno values operations fail with, by name and number.
//! * [`thread`]: starting threads; one that cannot start is an error.
//! * [`wait`]: blocking waits a stop signal can end.

pub mod daemon;
#[cfg(feature = "demo")]
pub mod demo;
pub mod errno;
pub mod parent;

pub mod vfio_user;
pub mod views;
pub mod wait;
