//! What a worker sends the daemon — a worker runs guest-supplied code in
//! its GPU driver, so any bytes — through the daemon's decoding and its
//! handling of them with items and a VRAM access waiting. Nothing may
//! panic, hang or allocate past what a frame holds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    engine_worker::fuzzing::worker_to_daemon(data);
});
