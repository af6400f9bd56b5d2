//! Per-vGPU runlists and host scheduling policies (filled by the scheduler issue).
