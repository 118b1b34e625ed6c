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

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}
