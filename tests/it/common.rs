//! Shared fixtures for the integration tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tessera::clock::Clock;

use tessera::{Config, Store};

/// A clock tests move by hand.
pub struct TestClock(pub AtomicI64);

impl Clock for TestClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl TestClock {
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_millis() as i64, Ordering::SeqCst);
    }
}

/// A temporary directory holding a store path (not yet created).
pub struct TempStore {
    pub dir: tempfile::TempDir,
}

impl TempStore {
    pub fn new() -> Self {
        TempStore {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn create(&self) -> Store {
        Store::create(self.path(), Config::default()).expect("create store")
    }

    pub fn open(&self) -> Store {
        Store::open(self.path(), Config::default()).expect("open store")
    }
}

/// Deterministic pseudo-random bytes (incompressible), from a seed.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.finalize_xof().fill(&mut out);
    out
}

/// Deterministic compressible text-like bytes, from a seed.
pub fn text_bytes(seed: u64, len: usize) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "tessera ", "chunk ", "pack ", "index ", "redb ", "blake3 ", "zstd ", "store ", "file ",
        "version ", "owner ", "quota ", "tier ", "cold ", "hot ", "\n",
    ];
    let noise = random_bytes(seed, len / 4 + 16);
    let mut out = Vec::with_capacity(len + 16);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(WORDS[(noise[i % noise.len()] & 15) as usize].as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

pub fn blake3_hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// Pseudo-random bytes behind a PNG signature: content validation takes them for an image.
pub fn png_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend_from_slice(&random_bytes(seed, len.saturating_sub(out.len())));
    out.truncate(len.max(8));
    out
}
