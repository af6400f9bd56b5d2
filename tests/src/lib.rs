//! Cross-crate integration tests live in `tests/tests/`; the VM harness in `tests/vm/`.
