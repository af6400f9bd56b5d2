//! vgpud's Kubernetes node agent.

pub mod proto;
