//! One check of a device test (the selftest's, the PTX test's): its name,
//! whether it passed, what it measured or why it failed, how long it took.

use std::fmt;
use std::time::Instant;

/// The outcome of one check.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    /// What was measured, or why it failed.
    pub detail: String,
    pub elapsed_us: u64,
}

impl Check {
    /// The check `name`, begun at `start`, that passed (`Ok`) or failed
    /// (`Err`) with what it says.
    pub fn finished(
        name: &str,
        start: Instant,
        outcome: std::result::Result<String, String>,
    ) -> Check {
        let (passed, detail) = match outcome {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        Check {
            name: name.into(),
            passed,
            detail,
            elapsed_us: start.elapsed().as_micros() as u64,
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:<34} {:>8}us  {}",
            if self.passed { "PASS" } else { "FAIL" },
            self.name,
            self.elapsed_us,
            self.detail
        )
    }
}
