//! The HTTP service over loopback: an in-process server (tokio, 2 worker threads) and a
//! blocking reqwest client in the bench thread, sharing this machine's cores.
//!
//! - `http/upload_64MiB_new`: one multipart upload of 64 MiB of new random data (MB/s).
//! - `http/download_64MiB`: one 64 MiB download, body read to the end (MB/s).
//! - `http/upload_4KiB_new`: one small multipart upload per request (files/s).
//! - `http/download_4KiB`: small downloads (requests/s).
//!
//! Under `cargo test` every routine runs once on small inputs.

use std::hint::black_box;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use reqwest::blocking::Client;
use reqwest::blocking::multipart::{Form, Part};
use tessera::Store;
use tessera::config::Settings;
use tessera::http::Server;
use tessera::users::NewUser;

const MIB: usize = 1 << 20;

fn measuring() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

struct Bench {
    url: String,
    token: String,
    http: Client,
    _rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Bench {
    fn start() -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::default();
        settings.server.listen = "127.0.0.1:0".parse().unwrap();
        let store = Store::create(dir.path().join("store"), settings.store_config()).unwrap();
        let (_, token) = store.user_add("bench", NewUser::default()).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = rt.block_on(Server::bind(store, settings)).unwrap();
        let url = format!("http://{}", server.local_addr());
        rt.spawn(server.run(std::future::pending()));
        Bench {
            url,
            token,
            http: Client::builder().timeout(None).build().unwrap(),
            _rt: rt,
            _dir: dir,
        }
    }

    fn upload(&self, data: Vec<u8>, name: &str) -> String {
        let form = Form::new().part("file", Part::bytes(data).file_name(name.to_string()));
        let r = self
            .http
            .post(format!("{}/api/files", self.url))
            .bearer_auth(&self.token)
            .multipart(form)
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
        let v: serde_json::Value = r.json().unwrap();
        v["files"][0]["file"]["id"].as_str().unwrap().to_string()
    }

    fn download(&self, id: &str, buf: &mut [u8]) -> u64 {
        let mut r = self
            .http
            .get(format!("{}/api/files/{id}", self.url))
            .bearer_auth(&self.token)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        let mut n = 0u64;
        loop {
            let k = r.read(buf).unwrap();
            if k == 0 {
                return n;
            }
            n += k as u64;
        }
    }
}

fn http(c: &mut Criterion) {
    let b = Bench::start();
    let big = if measuring() { 64 * MIB } else { MIB };
    let seed = AtomicU64::new(1);
    let mut g = c.benchmark_group("http");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));

    g.throughput(Throughput::Bytes(big as u64));
    g.bench_function("upload_64MiB_new", |bn| {
        bn.iter_batched(
            || random(big, seed.fetch_add(1, Ordering::Relaxed)),
            |data| black_box(b.upload(data, "big.bin")),
            BatchSize::PerIteration,
        )
    });

    let id = b.upload(random(big, 0), "big.bin");
    let mut buf = vec![0u8; MIB];
    g.bench_function("download_64MiB", |bn| {
        bn.iter(|| assert_eq!(b.download(&id, &mut buf), big as u64))
    });

    g.sample_size(20);
    g.measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(1));
    g.bench_function("upload_4KiB_new", |bn| {
        bn.iter_batched(
            || random(4096, seed.fetch_add(1, Ordering::Relaxed)),
            |data| black_box(b.upload(data, "small.bin")),
            BatchSize::SmallInput,
        )
    });

    let small = b.upload(random(4096, u64::MAX), "small.bin");
    g.bench_function("download_4KiB", |bn| {
        bn.iter(|| assert_eq!(b.download(&small, &mut buf), 4096))
    });
    g.finish();
}

criterion_group!(benches, http);
criterion_main!(benches);
