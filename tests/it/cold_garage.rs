//! The engine's cold tier on a REAL Garage that goes away: a store whose file was moved cold
//! reads it through [`S3Tier`]; with Garage stopped the read is a clear temporary error (the
//! library's `Error::Unavailable`, HTTP 503 with `Retry-After`), never a panic or wrong
//! bytes; once Garage is back (same data directory) the reads are byte-identical again.
//!
//! Each test here starts a private Garage of its own with tests/garage/start.sh (stopping the
//! shared one would break the other S3 tests running in parallel), so they need the `garage`
//! binary, and fail, saying so, without it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tessera::config::{ColdBackend, ColdTierSettings};
use tessera::tier::{ColdTier, RetryBudget, S3Options, S3Tier};
use tessera::{Config, Error, PutOptions, Store, TierMoveOptions};

use crate::common::{TempStore, random_bytes};
use crate::http::Service;

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/garage")
        .join(name)
}

/// A Garage of this test's own, stopped and its directory removed on drop.
struct PrivateGarage {
    dir: String,
    env: BTreeMap<String, String>,
}

impl PrivateGarage {
    fn run(args: &[&str]) -> BTreeMap<String, String> {
        let out = Command::new(script("start.sh"))
            .args(args)
            .output()
            .expect("running tests/garage/start.sh");
        assert!(
            out.status.success(),
            "tests/garage/start.sh {args:?} failed (the Garage tests need `garage`: \
             make garage-install):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn start() -> Self {
        let env = Self::run(&[]);
        PrivateGarage {
            dir: env["TESSERA_GARAGE_DIR"].clone(),
            env,
        }
    }

    /// Stops the server, keeping its data.
    fn stop(&self) {
        let st = Command::new(script("stop.sh"))
            .args(["--keep", &self.dir])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Starts the server again on the same data and waits until it answers.
    fn resume(&self) {
        let again = Self::run(&["--resume", &self.dir]);
        assert_eq!(again, self.env, "the same endpoint and key");
    }

    /// Options with a short retry budget, so a dead Garage answers within a few seconds.
    fn options(&self, prefix: &str) -> S3Options {
        let mut o = S3Options::new(
            Some(self.env["TESSERA_TEST_S3_ENDPOINT"].clone()),
            self.env["TESSERA_TEST_S3_BUCKET"].clone(),
            self.env["TESSERA_TEST_S3_REGION"].clone(),
            self.env["TESSERA_TEST_S3_ACCESS_KEY_ID"].clone(),
            self.env["TESSERA_TEST_S3_SECRET_ACCESS_KEY"].clone(),
        );
        o.allow_http = true;
        o.prefix = prefix.to_owned();
        o.retry = RetryBudget {
            max_retries: 2,
            retry_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(10),
        };
        o
    }

    /// The same as `[cold]` settings, the way `tessera serve` gets them.
    fn settings(&self, prefix: &str) -> ColdTierSettings {
        let o = self.options(prefix);
        ColdTierSettings {
            backend: ColdBackend::S3,
            endpoint: o.endpoint,
            bucket: Some(o.bucket),
            region: Some(o.region),
            prefix: o.prefix,
            access_key_id: Some(o.access_key_id),
            secret_access_key: Some(o.secret_access_key),
            max_retries: o.retry.max_retries,
            retry_timeout: o.retry.retry_timeout,
            connect_timeout: o.retry.connect_timeout,
            request_timeout: o.retry.request_timeout,
            ..ColdTierSettings::default()
        }
    }
}

impl Drop for PrivateGarage {
    fn drop(&mut self) {
        let _ = Command::new(script("stop.sh")).arg(&self.dir).status();
    }
}

fn cold_config(tier: Arc<dyn ColdTier>) -> Config {
    Config {
        cold_tier: Some(tier),
        pack_target_size: 1 << 20,
        cold_read_block: 256 << 10,
        // Less than the file: a read after the stop must go to Garage.
        cold_cache_bytes: 512 << 10,
        ..Config::default()
    }
}

#[track_caller]
fn assert_unavailable<T: std::fmt::Debug>(r: tessera::Result<T>) {
    match r {
        Err(e @ Error::Unavailable { .. }) => {
            assert!(e.is_temporary());
            let text = e.to_string();
            assert!(text.contains("unavailable"), "{text}");
        }
        other => panic!("expected Error::Unavailable with Garage stopped, got {other:?}"),
    }
}

#[test]
fn garage_stopped_during_cold_reads_is_a_temporary_error_then_reads_come_back() {
    let g = PrivateGarage::start();
    let t = TempStore::new();
    let tier: Arc<dyn ColdTier> = Arc::new(S3Tier::new(g.options("store")).unwrap());
    let store = Store::create(t.path(), cold_config(tier.clone())).unwrap();
    let data = random_bytes(11, 3 << 20);
    let id = store
        .put(&data[..], &PutOptions::key("cold.bin"))
        .unwrap()
        .file
        .id;
    let report = store
        .move_to_cold(&TierMoveOptions {
            files: vec![id],
            ..Default::default()
        })
        .unwrap();
    assert!(
        report.chunks > 0 && !report.packs_written.is_empty(),
        "{report:?}"
    );
    assert!(
        !tier.list("").unwrap().is_empty(),
        "the objects are in Garage"
    );
    assert_eq!(store.read_all(id).unwrap(), data);

    g.stop();
    // Whole and ranged reads: a temporary error, every time (nothing cached wrongly).
    for _ in 0..2 {
        assert_unavailable(store.read_all(id));
        // A range read fails when it is opened or while it streams (an io::Error carrying
        // the library's error): either way, Unavailable.
        let ranged = store.get_range(id, (1 << 20)..(2 << 20)).and_then(|mut r| {
            let mut out = Vec::new();
            match std::io::Read::read_to_end(&mut r, &mut out) {
                Ok(_) => Ok(out),
                Err(e) => Err(*e
                    .into_inner()
                    .expect("the read error carries the cause")
                    .downcast::<Error>()
                    .expect("a tessera::Error")),
            }
        });
        assert_unavailable(ranged);
    }
    // Hot data of the same store still reads.
    let hot = random_bytes(12, 100_000);
    let hot_id = store
        .put(&hot[..], &PutOptions::key("hot.bin"))
        .unwrap()
        .file
        .id;
    assert_eq!(store.read_all(hot_id).unwrap(), hot);

    g.resume();
    assert_eq!(
        store.read_all(id).unwrap(),
        data,
        "byte-identical once Garage is back"
    );
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut store.get_range(id, 5..(3 << 20)).unwrap(), &mut out).unwrap();
    assert_eq!(out, &data[5..]);
    assert!(store.verify_cold().unwrap().is_ok());
}

/// The same through `tessera serve`'s HTTP API, the tier built from `[cold]` settings: the
/// engine runs on tokio's blocking pool there. Garage stopped → 503 with `Retry-After`; back
/// → 200 and the same bytes.
#[test]
fn garage_stopped_during_an_http_download_is_503_then_200() {
    let g = PrivateGarage::start();
    let cold = g.settings("serve");
    // As `tessera serve` does: the tier built once from the settings' `[cold]`.
    let tier = tessera::config::Settings {
        cold: Some(cold.clone()),
        ..Default::default()
    }
    .cold_tier()
    .unwrap();
    assert!(tier.is_some());
    let s = Service::with_config(
        |settings| {
            settings.cold = Some(cold);
            // Less cache than the file: a read after the stop must go to Garage.
            settings.tiers.cache = bytesize::ByteSize::kib(512);
            settings.tiers.read_block = bytesize::ByteSize::kib(256);
        },
        |c| c.cold_tier = tier,
    );
    let data = random_bytes(13, 2 << 20);
    let id = s.put(&s.alice, "cold.bin", &data);
    let file: tessera::FileId = id.parse().unwrap();
    s.store
        .move_to_cold(&TierMoveOptions {
            files: vec![file],
            ..Default::default()
        })
        .unwrap();
    let path = format!("/api/files/{id}");
    let r = s.get(&path, Some(&s.alice)).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap(), &data[..]);

    g.stop();
    let r = s.get(&path, Some(&s.alice)).send().unwrap();
    assert_eq!(r.status(), 503, "{:?}", r.text());
    assert!(r.headers().contains_key("retry-after"));

    g.resume();
    let r = s.get(&path, Some(&s.alice)).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap(), &data[..]);
}
