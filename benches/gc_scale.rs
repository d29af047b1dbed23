//! GC + compaction at scale: wall time and peak RSS at two store sizes.
//!
//! For each size a store is built with the smallest chunk parameters FastCDC allows
//! (64/256/1024 bytes) from files of random data, so N chunks cost about N × 256 bytes; then
//! four files in five are deleted and purged, and the clock moves past the grace. The measured
//! phase — one `Store::gc` (sweep and compaction) — runs in a child process that opens the
//! store, resets the high-water mark (`echo 5 > /proc/self/clear_refs`), collects, and reads
//! `VmHWM` from `/proc/self/status`: a fresh process, so nothing the build left behind counts.
//!
//! `cargo bench --bench gc_scale` measures 250k and 1M chunks (`GC_SCALE_SIZES=a,b` changes
//! them); under `cargo test` it runs 4k and 16k chunks and checks the collector's work.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use tessera::clock::Clock;
use tessera::{ChunkParams, Config, GcOptions, PutOptions, Store};

struct FixedClock(AtomicI64);

impl Clock for FixedClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

const START_MS: i64 = 1_800_000_000_000;
const DAY_MS: i64 = 24 * 60 * 60 * 1000;
/// Past the 30-day purge grace and the 1 h GC grace.
const GC_AT_MS: i64 = START_MS + 31 * DAY_MS + 2 * 60 * 60 * 1000;
/// Bytes per file: about 256 chunks of 256 bytes.
const FILE_BYTES: usize = 64 << 10;
const CHILD_ENV: &str = "TESSERA_GC_SCALE_CHILD";

fn config(now_ms: i64) -> Config {
    Config {
        chunking: Some(ChunkParams {
            min_size: 64,
            avg_size: 256,
            max_size: 1024,
        }),
        // Random data does not compress; storing raw keeps the build fast.
        compression_level: Some(0),
        clock: Arc::new(FixedClock(AtomicI64::new(now_ms))),
        ..Config::default()
    }
}

fn random(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.finalize_xof().fill(&mut out);
    out
}

/// Builds a store of at least `chunks` chunks, deletes and purges four files in five.
fn build(dir: &std::path::Path, chunks: u64) -> (u64, f64) {
    let timer = Instant::now();
    let store = Store::create(dir, config(START_MS)).unwrap();
    let mut ids = Vec::new();
    let mut i = 0u64;
    while store.stats().unwrap().chunks < chunks {
        let batch: Vec<(Vec<u8>, PutOptions)> = (0..16)
            .map(|k| {
                let n = i + k;
                (random(n, FILE_BYTES), PutOptions::key(format!("f{n}.bin")))
            })
            .collect();
        i += batch.len() as u64;
        for r in store.put_many(batch.iter().map(|(d, o)| (&d[..], o.clone()))) {
            ids.push(r.unwrap().file.id);
        }
    }
    let total = store.stats().unwrap().chunks;
    for (n, id) in ids.iter().enumerate() {
        if n % 5 != 0 {
            store.delete(*id).unwrap();
        }
    }
    drop(store);
    let store = Store::open(dir, config(START_MS + 31 * DAY_MS)).unwrap();
    let purged = store
        .purge_deleted(Duration::from_secs(30 * 24 * 3600), false)
        .unwrap();
    assert_eq!(purged.files as usize, ids.len() - ids.len().div_ceil(5));
    (total, timer.elapsed().as_secs_f64())
}

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// The measured phase, in the child: prints one JSON line.
fn child(dir: &str) {
    let store = Store::open(dir, config(GC_AT_MS)).unwrap();
    let before = store.stats().unwrap();
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting VmHWM");
    let rss_start = status_kib("VmRSS:");
    // The sweep, then the compaction (a second run finds nothing left to sweep), each with
    // its own high-water mark; the phase's peak is the larger.
    let timer = Instant::now();
    let swept = store
        .gc(&GcOptions {
            compact: false,
            ..GcOptions::default()
        })
        .unwrap();
    let sweep_secs = timer.elapsed().as_secs_f64();
    let sweep_hwm = status_kib("VmHWM:");
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting VmHWM");
    let mut report = store.gc(&GcOptions::default()).unwrap();
    let secs = timer.elapsed().as_secs_f64();
    let compact_hwm = status_kib("VmHWM:");
    let hwm = sweep_hwm.max(compact_hwm);
    report.swept_chunks += swept.swept_chunks;
    let after = store.stats().unwrap();
    assert!(report.problems.is_empty(), "{report:#?}");
    let v = store.verify(&()).unwrap();
    assert!(v.is_ok(), "{v:#?}");
    println!(
        "{}",
        serde_json::json!({
            "chunks_before": before.chunks,
            "chunks_after": after.chunks,
            "swept": report.swept_chunks,
            "packs_compacted": report.packs_compacted.len(),
            "pack_bytes_before": before.pack_bytes,
            "pack_bytes_after": after.pack_bytes,
            "seconds": secs,
            "rss_start_kib": rss_start,
            "peak_rss_kib": hwm,
            "sweep_seconds": sweep_secs,
            "sweep_peak_rss_kib": sweep_hwm,
            "compact_peak_rss_kib": compact_hwm,
        })
    );
}

fn main() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        return child(&dir);
    }
    let measuring = std::env::args().any(|a| a == "--bench");
    let sizes: Vec<u64> = match std::env::var("GC_SCALE_SIZES") {
        Ok(s) => s.split(',').map(|n| n.trim().parse().unwrap()).collect(),
        Err(_) if measuring => vec![250_000, 1_000_000],
        Err(_) => vec![4_000, 16_000],
    };
    let mut rows = Vec::new();
    for &n in &sizes {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let (chunks, build_s) = build(&dir, n);
        let out = Command::new(std::env::current_exe().unwrap())
            .env(CHILD_ENV, &dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "measuring child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8(out.stdout).unwrap();
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        // The collector took the purged four fifths and rewrote the packs they were in.
        let swept = v["swept"].as_u64().unwrap();
        assert!(swept * 10 >= chunks * 7, "swept {swept} of {chunks}: {v}");
        assert!(v["packs_compacted"].as_u64().unwrap() > 0, "{v}");
        assert!(v["pack_bytes_after"].as_u64() < v["pack_bytes_before"].as_u64());
        println!(
            "gc_scale: {chunks} chunks (built in {build_s:.1} s): swept {swept}, compacted {} \
             packs, {} → {} pack bytes, GC + compaction {:.2} s (sweep {:.2} s), peak RSS {} MiB \
             (sweep {} MiB, compaction {} MiB; at start {} MiB)",
            v["packs_compacted"],
            v["pack_bytes_before"],
            v["pack_bytes_after"],
            v["seconds"].as_f64().unwrap(),
            v["sweep_seconds"].as_f64().unwrap(),
            v["peak_rss_kib"].as_u64().unwrap() / 1024,
            v["sweep_peak_rss_kib"].as_u64().unwrap() / 1024,
            v["compact_peak_rss_kib"].as_u64().unwrap() / 1024,
            v["rss_start_kib"].as_u64().unwrap() / 1024,
        );
        rows.push((chunks, v));
    }
    if let [(small_n, small), (large_n, large)] = &rows[..] {
        let (a, b) = (
            small["peak_rss_kib"].as_f64().unwrap(),
            large["peak_rss_kib"].as_f64().unwrap(),
        );
        println!(
            "gc_scale: {}x the chunks, {:.2}x the peak RSS",
            *large_n as f64 / *small_n as f64,
            b / a
        );
    }
}
