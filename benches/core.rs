//! Throughput of the engine's core paths: chunking, hashing, the record codec, put and get.
//!
//! `cargo bench --bench core` runs on 64 MiB inputs (and 4 MiB for the codec, as 64 KiB chunks);
//! the whole run stays under about five minutes on a 2-core machine. Under `cargo test` (no
//! `--bench` argument) criterion runs each routine once, and the inputs shrink to 4 MiB so the
//! check stays quick.
//!
//! Data is seeded, so every run measures the same bytes. "random" is incompressible; "text" is
//! word-like text that zstd shrinks to about 40%, standing in for documents and logs.

use std::hint::black_box;
use std::io::{Read, Write};
use std::sync::OnceLock;
use std::time::Duration;

use criterion::{
    BatchSize, BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group,
    criterion_main, measurement::WallTime,
};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use sha2::Digest;
use tessera::pack::record::{RecordKind, decode_payload, decode_record, encode_plain};
use tessera::{ChunkId, ChunkParams, Config, FileId, PutOptions, Store};

const MIB: usize = 1 << 20;
/// Chunk size of the per-chunk benches: the default average chunk.
const CHUNK: usize = 64 * 1024;

/// Whether criterion is measuring (`cargo bench`) rather than smoke-testing (`cargo test`).
fn measuring() -> bool {
    static MEASURING: OnceLock<bool> = OnceLock::new();
    *MEASURING.get_or_init(|| std::env::args().any(|a| a == "--bench"))
}

/// Size of the large inputs: 64 MiB when measuring.
fn big() -> usize {
    if measuring() { 64 * MIB } else { 4 * MIB }
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Word-like text: a fixed vocabulary drawn with a skew toward short, common words, in lines
/// with the odd number, so that zstd finds repeats but not trivially long ones.
fn text_like(len: usize, seed: u64) -> Vec<u8> {
    let mut vocab_rng = StdRng::seed_from_u64(0x7e55e7a);
    let vocab: Vec<Vec<u8>> = (0..2048)
        .map(|i| {
            let n = 2 + (i % 11) + vocab_rng.random_range(0..3);
            (0..n)
                .map(|_| vocab_rng.random_range(b'a'..=b'z'))
                .collect()
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        let words = rng.random_range(4..16);
        for w in 0..words {
            if w > 0 {
                out.push(b' ');
            }
            // The product of two uniforms favours low indices: a crude Zipf.
            let i =
                rng.random_range(0..vocab.len()) * rng.random_range(0..vocab.len()) / vocab.len();
            out.extend_from_slice(&vocab[i]);
            if rng.random_ratio(1, 12) {
                write!(out, " {}", rng.random_range(0..100_000u32)).unwrap();
            }
        }
        out.extend_from_slice(b".\n");
    }
    out.truncate(len);
    out
}

fn shared_random() -> &'static [u8] {
    static DATA: OnceLock<Vec<u8>> = OnceLock::new();
    DATA.get_or_init(|| random_bytes(big(), 1))
}

fn shared_text() -> &'static [u8] {
    static DATA: OnceLock<Vec<u8>> = OnceLock::new();
    DATA.get_or_init(|| text_like(big(), 1))
}

/// Groups whose iterations take tenths of a second: few samples, one iteration each.
fn heavy<'a>(c: &'a mut Criterion, name: &str, bytes: usize) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Bytes(bytes as u64));
    g
}

fn chunking(c: &mut Criterion) {
    let data = shared_random();
    let params = ChunkParams::default();
    let mut g = heavy(c, "chunking", data.len());
    g.bench_function("fastcdc_cut_points", |b| {
        b.iter(|| params.cut_points(black_box(data)).len())
    });
    // The put path's form: a streaming chunker copying each chunk out of a reader.
    g.bench_function("fastcdc_streaming", |b| {
        b.iter(|| {
            params
                .chunker(black_box(data))
                .map(|c| c.unwrap().data.len())
                .sum::<usize>()
        })
    });
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let data = shared_random();
    let mut g = heavy(c, "hashing", data.len());
    g.bench_function("blake3_per_64KiB_chunk", |b| {
        b.iter(|| {
            data.chunks(CHUNK)
                .map(|chunk| ChunkId::of(black_box(chunk)).0[0])
                .fold(0u8, |a, x| a ^ x)
        })
    });
    g.bench_function("sha256_whole_buffer", |b| {
        b.iter(|| sha2::Sha256::digest(black_box(data)))
    });
    g.finish();
}

fn codec(c: &mut Criterion) {
    let len = 4 * MIB;
    let inputs = [
        ("text", &shared_text()[..len]),
        ("random", &shared_random()[..len]),
    ];
    let mut g = c.benchmark_group("codec");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Bytes(len as u64));
    for (name, data) in inputs {
        let chunks: Vec<(&[u8], [u8; 32])> =
            data.chunks(CHUNK).map(|c| (c, ChunkId::of(c).0)).collect();
        for level in [1, 3] {
            // Compression only: the keys are computed outside the loop. Random data is tried
            // with zstd and then stored raw, as the put path does.
            g.bench_function(format!("zstd{level}_compress_{name}"), |b| {
                let mut out = Vec::with_capacity(CHUNK + 1024);
                b.iter(|| {
                    let mut stored = 0;
                    for (plain, key) in &chunks {
                        out.clear();
                        encode_plain(RecordKind::Chunk, black_box(plain), key, level, &mut out);
                        stored += out.len();
                    }
                    stored
                })
            });
            // Decoding includes both CRCs and the BLAKE3 proof of the plain bytes: the read path.
            let records: Vec<Vec<u8>> = chunks
                .iter()
                .map(|(plain, key)| {
                    let mut out = Vec::new();
                    encode_plain(RecordKind::Chunk, plain, key, level, &mut out);
                    out
                })
                .collect();
            let stored: usize = records.iter().map(Vec::len).sum();
            eprintln!(
                "codec: {name} at zstd level {level} stores at {:.1}% of its size",
                100.0 * stored as f64 / len as f64
            );
            g.bench_function(format!("zstd{level}_decompress_{name}"), |b| {
                b.iter(|| {
                    let mut plain_len = 0;
                    for rec in &records {
                        let (header, stored) = decode_record(black_box(rec)).unwrap();
                        plain_len += decode_payload(&header, stored).unwrap().len();
                    }
                    plain_len
                })
            });
        }
    }
    g.finish();
}

fn new_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(dir.path().join("store"), Config::default()).unwrap();
    (dir, store)
}

fn put(c: &mut Criterion) {
    let len = big();
    let mut g = heavy(c, "put", len);
    // A put of 64 MiB takes about half a second: ten samples need more than the default time.
    g.measurement_time(Duration::from_secs(10));
    let opts = PutOptions::default();

    // Every iteration puts bytes the store has not seen (a fresh seed), so nothing dedups.
    let mut seed = 1000;
    let (_dir, store) = new_store();
    g.bench_function("new_random", |b| {
        b.iter_batched_ref(
            || {
                seed += 1;
                random_bytes(len, seed)
            },
            |data| store.put(&data[..], &opts).unwrap().new_chunks,
            BatchSize::PerIteration,
        )
    });
    drop(store);

    let (_dir, store) = new_store();
    g.bench_function("new_text", |b| {
        b.iter_batched_ref(
            || {
                seed += 1;
                text_like(len, seed)
            },
            |data| store.put(&data[..], &opts).unwrap().new_chunks,
            BatchSize::PerIteration,
        )
    });
    drop(store);

    // The same bytes again: chunk, hash and look up every chunk, write only a manifest.
    let (_dir, store) = new_store();
    let data = shared_random();
    store.put(data, &opts).unwrap();
    g.bench_function("dedup_random", |b| {
        b.iter(|| {
            let report = store.put(black_box(data), &opts).unwrap();
            assert_eq!(
                report.new_chunks, 0,
                "the second put of the same bytes stored chunks"
            );
            report.chunks
        })
    });
    g.finish();
}

fn get(c: &mut Criterion) {
    let (_dir, store) = new_store();
    let opts = PutOptions::default();
    let files: Vec<(&str, FileId)> = [("random", shared_random()), ("text", shared_text())]
        .into_iter()
        .map(|(name, data)| (name, store.put(data, &opts).unwrap().file.id))
        .collect();
    store.flush().unwrap();

    let len = big() as u64;
    let mut g = heavy(c, "get", big());
    for &(name, id) in &files {
        g.bench_function(format!("whole_{name}"), |b| {
            b.iter(|| {
                std::io::copy(&mut store.get(black_box(id)).unwrap(), &mut std::io::sink()).unwrap()
            })
        });
    }
    let range = len / 2..len / 2 + MIB as u64;
    g.throughput(Throughput::Bytes(MIB as u64))
        .sampling_mode(SamplingMode::Auto)
        .measurement_time(Duration::from_secs(2));
    for &(name, id) in &files {
        g.bench_function(format!("range_1MiB_{name}"), |b| {
            let mut buf = Vec::with_capacity(MIB);
            b.iter(|| {
                buf.clear();
                store
                    .get_range(black_box(id), range.clone())
                    .unwrap()
                    .read_to_end(&mut buf)
                    .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, chunking, hashing, codec, put, get);
criterion_main!(benches);
