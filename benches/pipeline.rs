//! The put pipeline as a whole, and small files.
//!
//! - `pipeline/*`: one 64 MiB put through the sequential path (`threads: 1`) and the parallel
//!   pipeline, on new compressible text, new random data (the adaptive skip of compression) and
//!   data already stored (the dedup path).
//! - `small_files/*`: durable 4 KiB puts per second — one thread putting one file at a time,
//!   16 threads sharing group commits, and `put_many` batches of 1000.
//!
//! Under `cargo test` every routine runs once on small inputs.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tessera::{Config, PutOptions, Store};

const MIB: usize = 1 << 20;

fn measuring() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Compressible: random words from a small vocabulary.
fn text(len: usize, seed: u64) -> Vec<u8> {
    let words = random(4096, 1);
    let picks = random(len / 4 + 8, seed);
    let mut out = Vec::with_capacity(len + 16);
    for p in picks.chunks(2) {
        let at = (p[0] as usize * 13) % 4000;
        out.extend_from_slice(&words[at..at + 3 + (p[1] % 6) as usize]);
        out.push(b' ');
        if out.len() >= len {
            break;
        }
    }
    out.truncate(len);
    // Letters only, so zstd sees text.
    for b in &mut out {
        if *b != b' ' {
            *b = b'a' + *b % 26;
        }
    }
    out
}

fn store(threads: usize) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::create(
        dir.path().join("s"),
        Config {
            threads,
            ..Default::default()
        },
    )
    .unwrap();
    (dir, s)
}

fn pipeline(c: &mut Criterion) {
    let size = if measuring() { 64 * MIB } else { 2 * MIB };
    let inputs = [("text", text(size, 7)), ("random", random(size, 8))];
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Bytes(size as u64))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6));
    let n = AtomicU64::new(0);
    for (threads, mode) in [(1, "sequential"), (2, "parallel")] {
        for (kind, data) in &inputs {
            g.bench_function(format!("{mode}/new_{kind}"), |b| {
                b.iter_batched(
                    || store(threads),
                    |(_d, s)| black_box(s.put(&data[..], &PutOptions::default()).unwrap()),
                    BatchSize::PerIteration,
                )
            });
        }
        let (_d, s) = store(threads);
        s.put(&inputs[1].1[..], &PutOptions::default()).unwrap();
        g.bench_function(format!("{mode}/known_random"), |b| {
            b.iter(|| {
                let key = format!("k{}", n.fetch_add(1, Ordering::Relaxed));
                black_box(s.put(&inputs[1].1[..], &PutOptions::key(key)).unwrap())
            })
        });
    }
    g.finish();
}

fn small_files(c: &mut Criterion) {
    let files: Vec<Vec<u8>> = (0..1000).map(|i| random(4096, 100 + i)).collect();
    let mut g = c.benchmark_group("small_files");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(if measuring() { 8 } else { 1 }));
    let seq = AtomicU64::new(0);
    let key = || format!("f{}", seq.fetch_add(1, Ordering::Relaxed));

    g.throughput(Throughput::Elements(50));
    let (_d, s) = store(2);
    g.bench_function("one_thread_4k", |b| {
        b.iter(|| {
            for f in &files[..50] {
                black_box(s.put(&f[..], &PutOptions::key(key())).unwrap());
            }
        })
    });

    g.throughput(Throughput::Elements(16 * 50));
    g.bench_function("16_threads_4k", |b| {
        b.iter(|| {
            std::thread::scope(|sc| {
                for t in 0..16 {
                    let (s, files, key) = (&s, &files, &key);
                    sc.spawn(move || {
                        for f in &files[t * 50..t * 50 + 50] {
                            black_box(s.put(&f[..], &PutOptions::key(key())).unwrap());
                        }
                    });
                }
            })
        })
    });

    g.throughput(Throughput::Elements(files.len() as u64));
    g.bench_function("put_many_1000x4k", |b| {
        b.iter(|| {
            let items = files.iter().map(|f| (&f[..], PutOptions::key(key())));
            let results = s.put_many(items);
            assert!(results.iter().all(|r| r.is_ok()));
            black_box(results)
        })
    });
    g.finish();
}

criterion_group!(benches, pipeline, small_files);
criterion_main!(benches);
