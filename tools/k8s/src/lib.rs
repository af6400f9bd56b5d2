//! vgpud's Kubernetes node agent: it offers a node's vGPUs to the kubelet
//! as a device plugin (pre-created vGPUs, one resource per type) and as a
//! DRA driver (vGPUs created per claim), writes their CDI specs, and
//! serves the KubeVirt domain hook that turns a mediated device into
//! QEMU's vfio-user device. It reaches vgpud through its control socket
//! only (docs/kubernetes.md).

pub mod cdi;
pub mod control;
pub mod device_plugin;
pub mod dra;
mod error;
pub mod grpc;
pub mod kubevirt;
pub mod layout;
pub mod names;
pub mod proto;
pub mod slices;
pub mod socket_dir;

pub use error::Error;
