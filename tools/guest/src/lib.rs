//! The vgpud guest driver.
