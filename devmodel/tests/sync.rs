//! The locking policy (`devmodel::sync`). Its own test binary: poisoning a
//! lock needs a panic, whose backtrace would disturb tests that count the
//! process's memory mappings.

use std::sync::Mutex;

use devmodel::sync::lock;

#[test]
fn a_panicked_holder_does_not_lock_out_the_others() {
    let m = Mutex::new(7);
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _g = m.lock().unwrap();
        panic!("holder dies");
    }));
    assert!(m.is_poisoned());
    assert_eq!(*lock(&m), 7);
}
