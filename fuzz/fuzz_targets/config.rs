//! The configuration file's parsers (policy and catalogue): any text gives
//! a configuration or an error with file, line and key; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = mdev_types::ConfigFile::parse(&text, "fuzz.toml") {
        assert!(e.to_string().starts_with("fuzz.toml"), "{e}");
    }
});
