//! What the daemon sends a worker, as any bytes, through the worker's
//! decoding (what decodes must encode back to the same frame) and the
//! emulated worker's handling of the messages that are not operations.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    engine_worker::fuzzing::daemon_to_worker(data);
});
