//! Cold reads through a real S3 server against hot reads of the same file.
//!
//! Stores one file of random (incompressible) bytes, reads it whole from the local packs
//! (hot), moves it to the cold tier (an [`S3Tier`] on the test Garage of
//! tests/garage/start.sh, which prints the `TESSERA_TEST_S3_*` variables this reads), and reads
//! it whole again through the cold read path, with the store's cold cache smaller than one
//! read so every run fetches the bytes from Garage. Prints MB/s (10^6 bytes per second) of
//! each, the median of the runs, and their ratio.
//!
//! `cargo bench --bench cold` (with Garage's variables set): a 500 MB file, 3 runs each
//! (`TESSERA_BENCH_MB`, `TESSERA_BENCH_RUNS` change them). Under `cargo test` it runs once on
//! 8 MB and checks the bytes. Without the variables it fails, saying so: it never skips.

use std::hint::black_box;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tessera::tier::{ColdTier, S3Options, S3Tier};
use tessera::{Config, FileId, PutOptions, Store, TierMoveOptions};

fn measuring() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        })
        .unwrap_or(default)
}

fn garage(prefix: &str) -> S3Tier {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: the cold benchmark reads through the test Garage. Run \
                 `env=$(tests/garage/start.sh); eval \"$env\"` first (tests/garage/stop.sh after)"
            )
        })
    };
    let mut o = S3Options::new(
        Some(var("TESSERA_TEST_S3_ENDPOINT")),
        var("TESSERA_TEST_S3_BUCKET"),
        var("TESSERA_TEST_S3_REGION"),
        var("TESSERA_TEST_S3_ACCESS_KEY_ID"),
        var("TESSERA_TEST_S3_SECRET_ACCESS_KEY"),
    );
    o.allow_http = true;
    o.prefix = prefix.to_owned();
    S3Tier::new(o).expect("S3 tier for the test Garage")
}

/// Reads file `id` whole through a 1 MiB buffer; returns the bytes read and the time taken.
fn read_whole(store: &Store, id: FileId, check: Option<&[u8]>) -> (u64, Duration) {
    let start = Instant::now();
    let mut reader = store.get(id).expect("get");
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let mut hasher = check.map(|_| blake3::Hasher::new());
    loop {
        let n = reader.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        if let Some(h) = hasher.as_mut() {
            h.update(&buf[..n]);
        }
        total += n as u64;
        black_box(&buf[..n]);
    }
    let took = start.elapsed();
    if let (Some(h), Some(want)) = (hasher, check) {
        assert_eq!(
            h.finalize(),
            blake3::hash(want),
            "read back different bytes"
        );
    }
    (total, took)
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let bench = measuring();
    let mb = if bench {
        env_num("TESSERA_BENCH_MB", 500)
    } else {
        8
    };
    let runs = if bench {
        env_num("TESSERA_BENCH_RUNS", 3).max(1)
    } else {
        1
    };
    let len = (mb * 1_000_000) as usize;

    let prefix = format!(
        "bench-{}",
        ulid::Ulid::generate().to_string().to_lowercase()
    );
    let tier: Arc<dyn ColdTier> = Arc::new(garage(&prefix));
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        cold_tier: Some(tier.clone()),
        // A cache far smaller than the file: every cold run fetches from Garage again.
        cold_cache_bytes: 16 << 20,
        ..Config::default()
    };
    let store = Store::create(dir.path().join("store"), config).unwrap();
    let mut data = vec![0u8; len];
    StdRng::seed_from_u64(7).fill_bytes(&mut data);
    let id = store
        .put(&data[..], &PutOptions::key("bench.bin"))
        .expect("put")
        .file
        .id;
    let check = (!bench).then_some(&data[..]);

    let hot: Vec<f64> = (0..runs)
        .map(|_| {
            let (n, d) = read_whole(&store, id, check);
            assert_eq!(n, len as u64);
            mb_per_s(n, d)
        })
        .collect();

    let moved = Instant::now();
    let report = store
        .move_to_cold(&TierMoveOptions {
            files: vec![id],
            ..Default::default()
        })
        .expect("move to cold");
    let move_took = moved.elapsed();
    assert!(report.chunks > 0, "{report:?}");

    let gets_before = store.cold_gets();
    let cold: Vec<f64> = (0..runs)
        .map(|_| {
            let (n, d) = read_whole(&store, id, check);
            assert_eq!(n, len as u64);
            mb_per_s(n, d)
        })
        .collect();
    assert!(
        store.cold_gets() > gets_before,
        "the cold reads went to the tier"
    );

    let (h, c) = (median(hot), median(cold));
    println!(
        "cold read benchmark: {mb} MB file, {runs} run(s) each, tier {}",
        tier.describe()
    );
    println!(
        "  move to cold: {:.1} MB/s ({} chunks, {} objects)",
        mb_per_s(len as u64, move_took),
        report.chunks,
        report.packs_written.len()
    );
    println!("  hot read  (median): {h:>8.1} MB/s");
    println!("  cold read (median): {c:>8.1} MB/s");
    println!("  cold / hot: {:.3} (hot is {:.1}x faster)", c / h, h / c);

    // Leave nothing in the bucket.
    drop(store);
    for o in tier.list("").unwrap() {
        tier.delete(&o.key).unwrap();
    }
}
