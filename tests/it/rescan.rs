//! Rescans of stored files (`Store::rescan`, `tessera scan --rescan`,
//! `POST /api/admin/scan/rescan`). The signature update is real: a private clamd gets a new
//! `.ndb` signature and reloads its database, and content it called clean at put time is then
//! found. The fault paths use the fault-injecting fake scanner.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;
use tessera::config::ScanSettings;
use tessera::scan::{
    Clamd, FakeBehaviour, FakeScanner, ScanCategories, ScanConfig, ScanStamp, Scanner, Timeouts,
    Verdict,
};

use tessera::{Config, Error, FileId, GcOptions, PutOptions, RescanOptions, Store};

use crate::common::TestClock;
use crate::common::{TempStore, png_bytes, text_bytes};
use crate::http::Service;
use crate::scan::PrivateClamd;

/// Content clamd calls clean until the test adds the signature below.
const PATTERN: &[u8] = b"TESSERA-RESCAN-PATTERN-7Q";
const SIG: &str = "Tessera-Rescan-Pattern.UNOFFICIAL";

impl PrivateClamd {
    /// Adds an `.ndb` signature for [`PATTERN`] to this clamd's database and reloads it;
    /// returns once clamd detects the pattern.
    fn learn_the_rescan_pattern(&self) {
        let hex: String = PATTERN.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(
            format!("{}/db/rescan.ndb", self.dir),
            format!("Tessera-Rescan-Pattern:0:*:{hex}\n"),
        )
        .unwrap();
        let mut sock =
            std::net::TcpStream::connect(self.addr.to_string().trim_start_matches("tcp://"))
                .unwrap();
        sock.write_all(b"zRELOAD\0").unwrap();
        let mut reply = Vec::new();
        std::io::Read::read_to_end(&mut sock, &mut reply).unwrap();
        assert_eq!(
            reply,
            b"RELOADING\0",
            "{:?}",
            String::from_utf8_lossy(&reply)
        );
        // clamd loads the new database in the background; ask until it knows the pattern
        // (waiting for readiness, not asserting a duration).
        let clamd = Clamd::new(self.addr.clone(), Timeouts::default());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let verdict = clamd.start().and_then(|mut s| {
                s.feed(PATTERN)?;
                s.finish()
            });
            if matches!(&verdict, Ok(Verdict::Infected(name)) if name == SIG) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "clamd did not load the new signature: last verdict {verdict:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

fn doc_with_pattern(seed: u64) -> Vec<u8> {
    let mut v = text_bytes(seed, 20_000);
    v.extend_from_slice(PATTERN);
    v.extend_from_slice(&text_bytes(seed + 1, 5_000));
    v
}

fn put(store: &Store, key: &str, data: &[u8]) -> FileId {
    store
        .put(
            data,
            &PutOptions {
                name: Some(key.rsplit('/').next().unwrap().into()),
                ..PutOptions::key(key)
            },
        )
        .unwrap()
        .file
        .id
}

fn stamp(store: &Store, id: FileId, version: u32) -> Option<ScanStamp> {
    store.version_info(id, version).unwrap().scan
}

#[test]
fn a_signature_update_and_a_rescan_quarantine_stored_files_and_survive_recover() {
    let clamd = PrivateClamd::start();
    let tmp = TempStore::new();
    let config = || Config {
        scan: Some(ScanConfig {
            categories: ScanCategories::Only(["documents", "archives"].map(String::from).into()),
            ..ScanConfig::new(Arc::new(Clamd::new(
                clamd.addr.clone(),
                Timeouts::default(),
            )))
        }),
        ..Config::default()
    };
    let store = Store::create(tmp.path(), config()).unwrap();
    // notes.txt: one version, with the pattern. report.txt: the pattern in v1 only.
    // photo.png: not a scanned category (scanning narrowed). clean.txt: never matches.
    let notes = put(&store, "notes.txt", &doc_with_pattern(1));
    let report = put(&store, "report.txt", &doc_with_pattern(2));
    assert_eq!(put(&store, "report.txt", &text_bytes(3, 9_000)), report);
    put(&store, "photo.png", &png_bytes(4, 3_000));
    let clean = put(&store, "clean.txt", &text_bytes(5, 7_000));
    for (id, v) in [(notes, 1), (report, 1), (report, 2), (clean, 1)] {
        assert_eq!(stamp(&store, id, v), Some(ScanStamp::Clean));
    }

    clamd.learn_the_rescan_pattern();

    // A dry run finds both hits and changes nothing.
    let before = store.debug_index_dump().unwrap();
    let dry = store
        .rescan(&RescanOptions {
            dry_run: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(dry.scanned, 4, "{dry:?}");
    assert_eq!(
        dry.skipped, 1,
        "the image is not a scanned category: {dry:?}"
    );
    let mut hits: Vec<_> = dry
        .infected
        .iter()
        .map(|c| (c.file, c.version, c.current))
        .collect();
    hits.sort();
    let mut expected = vec![(notes, 1, true), (report, 1, false)];
    expected.sort();
    assert_eq!(hits, expected);
    assert_eq!(store.debug_index_dump().unwrap(), before);
    drop(store);

    // The rescan for real, through the CLI.
    let cfg = tmp.path().join("tessera.toml");
    std::fs::write(&cfg, format!("[scan]\nclamd = \"{}\"\n", clamd.addr)).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .arg("--store")
            .arg(tmp.path())
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .env_remove("TESSERA_STORE")
            .env_remove("TESSERA_OWNER")
            .env_remove("TESSERA_CONFIG")
            .output()
            .unwrap()
    };
    let out = run(&["--json", "scan", "--rescan"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["infected"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["infected"][0]["after"]["signature"], SIG, "{v}");
    let out = run(&["scan"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ClamAV "));
    let out = run(&["--json", "stats"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["scanner"]["status"], "ok", "{v}");
    assert!(
        v["scanner"]["version"]
            .as_str()
            .unwrap()
            .starts_with("ClamAV ")
    );

    let check = |store: &Store| {
        assert!(store.stat(notes).unwrap().quarantined);
        assert_eq!(
            stamp(store, notes, 1),
            Some(ScanStamp::Infected {
                signature: SIG.into()
            })
        );
        // report.txt's current version is clean, so the file is not quarantined, but its
        // first version is marked and is never served to users.
        assert!(!store.stat(report).unwrap().quarantined);
        assert!(store.version_info(report, 1).unwrap().infected());
        assert_eq!(stamp(store, report, 2), Some(ScanStamp::Clean));
        assert!(!store.stat(clean).unwrap().quarantined);
        let v = store.verify(&()).unwrap();
        assert!(v.is_ok(), "{v:?}");
    };
    let store = Store::open(tmp.path(), config()).unwrap();
    check(&store);
    // A second rescan finds nothing new: the hits are not rechecked.
    let again = store.rescan(&RescanOptions::default()).unwrap();
    assert!(
        again.infected.is_empty() && again.cleared.is_empty(),
        "{again:?}"
    );
    assert_eq!(again.scanned, 2);
    assert_eq!(again.skipped, 3);
    drop(store);

    // The verdicts are journaled: an index rebuilt from the packs has them.
    tessera::recover(tmp.path(), &config(), &()).unwrap();
    let store = Store::open(tmp.path(), config()).unwrap();
    check(&store);
    // Restoring the infected version quarantines the file again.
    assert!(store.restore(report, 1).unwrap().quarantined);
}

#[test]
fn rescans_give_unscanned_versions_a_verdict_release_only_on_request_and_stop_when_the_scanner_is_down()
 {
    let fake = Arc::new(FakeScanner::new(FakeBehaviour::Down));
    let tmp = TempStore::new();
    const T0: i64 = 1_800_000_000_000;
    let clock = Arc::new(TestClock(AtomicI64::new(T0)));
    let config = Config {
        clock: clock.clone(),
        scan: Some(ScanConfig {
            fail_open: true,
            categories: ScanCategories::All,
            ..ScanConfig::new(fake.clone())
        }),
        ..Config::default()
    };
    let store = Store::create(tmp.path(), config.clone()).unwrap();
    // Stored while the scanner was down: unscanned.
    let a = put(&store, "a.txt", &text_bytes(1, 4_000));
    assert!(matches!(
        stamp(&store, a, 1),
        Some(ScanStamp::Unscanned { .. })
    ));
    fake.set(FakeBehaviour::Scan {
        infected_marker: b"BAD-CONTENT".to_vec(),
        signature: "Fake.Bad".into(),
    });
    let b = match store.put(
        &b"some BAD-CONTENT here"[..],
        &PutOptions {
            name: Some("b.txt".into()),
            ..Default::default()
        },
    ) {
        Err(Error::Infected { file, .. }) => file,
        other => panic!("expected Infected, got {other:?}"),
    };
    assert!(store.stat(b).unwrap().quarantined);
    assert_eq!(store.stat(b).unwrap().quarantined_ms, Some(T0));
    let c = put(&store, "c.txt", b"LATE-HIT, clean for now");

    // The unscanned version gets its verdict; the infected one is left alone.
    let r = store.rescan(&RescanOptions::default()).unwrap();
    assert_eq!((r.scanned, r.skipped), (2, 1), "{r:?}");
    assert_eq!(r.cleared.len(), 1);
    assert_eq!(stamp(&store, a, 1), Some(ScanStamp::Clean));
    let r = store.rescan(&RescanOptions::default()).unwrap();
    assert!(r.cleared.is_empty() && r.infected.is_empty(), "{r:?}");

    // A day later the signatures change: c is found (quarantined from now), and b's signature
    // is withdrawn, but only a recheck of infected versions releases b.
    const T1: i64 = T0 + 86_400_000;
    clock.0.store(T1, Ordering::SeqCst);
    fake.set(FakeBehaviour::Scan {
        infected_marker: b"LATE-HIT".to_vec(),
        signature: "Fake.Late".into(),
    });
    let r = store.rescan(&RescanOptions::default()).unwrap();
    assert_eq!(r.infected.len(), 1, "{r:?}");
    assert_eq!(store.stat(c).unwrap().quarantined_ms, Some(T1));
    assert_eq!(store.stat(b).unwrap().quarantined_ms, Some(T0));
    let r = store
        .rescan(&RescanOptions {
            recheck_infected: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.cleared.len(), 1, "{r:?}");
    assert!(!store.stat(b).unwrap().quarantined);
    assert_eq!(store.stat(b).unwrap().quarantined_ms, None);
    assert_eq!(store.stat(c).unwrap().quarantined_ms, Some(T1));

    // Compaction of the pack that holds the scan events keeps them for recover.
    let junk = put(&store, "junk.txt", &text_bytes(9, 200_000));
    store.delete(junk).unwrap();
    store.purge_deleted(Duration::ZERO, false).unwrap();
    let gc = store
        .gc(&GcOptions {
            grace: Duration::ZERO,
            compact_threshold: 0.01,
            ..Default::default()
        })
        .unwrap();
    assert!(!gc.packs_compacted.is_empty(), "{gc:?}");
    drop(store);
    tessera::recover(tmp.path(), &config, &()).unwrap();
    let store = Store::open(tmp.path(), config.clone()).unwrap();
    assert_eq!(stamp(&store, a, 1), Some(ScanStamp::Clean));
    assert_eq!(stamp(&store, b, 1), Some(ScanStamp::Clean));
    assert!(!store.stat(b).unwrap().quarantined);
    assert_eq!(store.stat(c).unwrap().quarantined_ms, Some(T1));
    let v = store.verify(&()).unwrap();
    assert!(v.is_ok(), "{v:?}");

    // The scanner goes down: a clear error, nothing changed.
    fake.set(FakeBehaviour::Down);
    let before = store.debug_index_dump().unwrap();
    match store.rescan(&RescanOptions::default()) {
        Err(Error::ScanUnavailable(m)) => assert!(m.contains("rescan stopped"), "{m}"),
        other => panic!("expected ScanUnavailable, got {other:?}"),
    }
    assert_eq!(store.debug_index_dump().unwrap(), before);
    // Without a scanner at all, the same error says how to configure one.
    drop(store);
    let store = Store::open(tmp.path(), Config::default()).unwrap();
    match store.rescan(&RescanOptions::default()) {
        Err(Error::ScanUnavailable(m)) => assert!(m.contains("[scan]"), "{m}"),
        other => panic!("expected ScanUnavailable, got {other:?}"),
    }
}

#[test]
fn http_admins_rescan_and_a_new_hit_is_no_longer_served() {
    let clamd = PrivateClamd::start();
    let addr = clamd.addr.clone();
    let svc = Service::with(move |s| {
        s.scan = Some(ScanSettings {
            clamd: addr,
            ..Default::default()
        })
    });
    let id = svc.put(&svc.alice, "notes.txt", &doc_with_pattern(7));
    let path = format!("/api/files/{id}");
    assert_eq!(
        svc.get(&path, Some(&svc.alice)).send().unwrap().status(),
        StatusCode::OK
    );
    clamd.learn_the_rescan_pattern();

    let rescan = |token: &str, query: &str| {
        svc.http
            .post(format!("{}/api/admin/scan/rescan{query}", svc.url))
            .bearer_auth(token)
            .send()
            .unwrap()
    };
    assert_eq!(rescan(&svc.alice, "").status(), StatusCode::FORBIDDEN);
    assert_eq!(
        rescan(&svc.admin, "?bogus=1").status(),
        StatusCode::BAD_REQUEST
    );
    let r = rescan(&svc.admin, "");
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().unwrap();
    assert_eq!(v["infected"][0]["file"], id.as_str(), "{v}");
    assert_eq!(v["infected"][0]["after"]["signature"], SIG, "{v}");

    // Quarantined: gone for alice, listed for admins.
    assert_eq!(
        svc.get(&path, Some(&svc.alice)).send().unwrap().status(),
        StatusCode::NOT_FOUND
    );
    let q: Value = svc
        .get("/api/admin/quarantine", Some(&svc.admin))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(q["files"][0]["id"], id.as_str(), "{q}");
    assert_eq!(q["files"][0]["scan"]["signature"], SIG, "{q}");
}
