//! The vGPU type catalog and mdev control plane (filled by the control-plane issue).
