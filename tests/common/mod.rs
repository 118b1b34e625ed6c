#![allow(dead_code)]

pub mod collector;
pub mod hostile;
pub mod target;
pub mod tls;

use std::path::PathBuf;

/// A fresh, empty directory under the system temp dir.
pub fn tempdir() -> PathBuf {
    let p = std::env::temp_dir().join(format!("vantage-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// A loopback port that is free now and that no other test in this process
/// is given (see `vantage::free_loopback_port`).
pub fn free_port() -> u16 {
    vantage::free_loopback_port().expect("pick a free loopback port")
}
