//! The pieces of the vgpud daemon.
//!
//! * [`parent`]: a physical GPU shared by many vGPUs — an execution backend
//!   whose work is fed to it by the host scheduler under the parent's policy.
//! * [`demo`]: the built-in demo workload `vgpud` runs by default.

pub mod daemon;
pub mod demo;
pub mod parent;
pub mod vfio_user;
