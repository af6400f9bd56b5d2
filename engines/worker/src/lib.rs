//! The process engine: a [`devmodel::Backend`] whose contexts are worker
//! processes, one per vGPU.
//!
//! * [`engine`]: the backend the daemon's parent uses; each vGPU's context
//!   is a worker process of its own.
//! * [`wire`]: the messages between the daemon and a worker.
//! * [`emulated`]: the worker's protocol served by the cpu engine, for
//!   testing the process side where there is no GPU.

pub mod emulated;
pub mod engine;
pub mod wire;
