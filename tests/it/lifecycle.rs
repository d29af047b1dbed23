//! Lifecycle jobs and the scheduler: version retention per category, expiry as the clock
//! moves, the purge of quarantined files after their period, the scheduler running each due
//! job once per interval (as a library type and inside the service), dry runs that change
//! nothing, `verify` after each, and `recover` replaying what the jobs journaled.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use tessera::clock::Clock;
use tessera::maintenance::lifecycle::default_expiry;
use tessera::scan::{FakeScanner, ScanConfig};
use tessera::validate::Policy;
use tessera::{
    Config, Error, FileId, GcOptions, Job, JobReport, PutOptions, RetentionRule, Scheduled,
    Scheduler, Store,
};

use crate::common::{TempStore, TestClock, png_bytes, random_bytes, text_bytes};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const HOUR: Duration = Duration::from_secs(60 * 60);
const MINUTE: Duration = Duration::from_secs(60);

fn new_clock() -> Arc<TestClock> {
    Arc::new(TestClock(AtomicI64::new(1_800_000_000_000)))
}

/// The default policy plus a `temp` category (anything, 1 GB).
fn policy_with_temp() -> Policy {
    let mut p = Policy::default();
    let other = p.categories["other"].clone();
    p.categories.insert("temp".into(), other);
    p
}

fn config(clock: &Arc<TestClock>) -> Config {
    Config {
        clock: clock.clone(),
        pack_target_size: 1 << 20,
        policy: Arc::new(policy_with_temp()),
        ..Config::default()
    }
}

fn put(store: &Store, data: &[u8], key: &str) -> FileId {
    store.put(data, &PutOptions::key(key)).expect("put").file.id
}

fn put_in(store: &Store, data: &[u8], key: &str, category: &str) -> FileId {
    let opts = PutOptions {
        category: Some(category.into()),
        ..PutOptions::key(key)
    };
    store.put(data, &opts).expect("put").file.id
}

fn version_numbers(store: &Store, id: FileId) -> Vec<u32> {
    store
        .versions(id)
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect()
}

fn assert_verifies(store: &Store) {
    let v = store.verify(&()).unwrap();
    assert!(v.is_ok(), "verify: {v:#?}");
}

/// Runs `job` dry and asserts the index did not change; returns the dry report.
fn dry<T>(store: &Store, job: impl FnOnce(&Store) -> T) -> T {
    let before = store.debug_index_dump().unwrap();
    let out = job(store);
    assert_eq!(
        store.debug_index_dump().unwrap(),
        before,
        "a dry run changed the index"
    );
    out
}

#[test]
fn retention_keeps_exactly_what_each_category_rule_says() {
    let t = TempStore::new();
    let clock = new_clock();
    let store = Store::create(t.path(), config(&clock)).unwrap();
    // One version a day: documents v1..v6 (days 0..5), images v1..v4 (days 0..3), other
    // v1..v3 (days 0..2); a deleted document with v1..v3 (days 0..2).
    let (mut doc, mut img, mut bin, mut gone) = (None, None, None, None);
    for day in 0..6u64 {
        doc = Some(put(&store, &text_bytes(day, 40_000), "report.txt"));
        if day < 4 {
            img = Some(put(&store, &png_bytes(100 + day, 30_000), "photo.png"));
        }
        if day < 3 {
            bin = Some(put(&store, &random_bytes(200 + day, 30_000), "blob.bin"));
            gone = Some(put(&store, &text_bytes(300 + day, 20_000), "old.txt"));
        }
        clock.advance(DAY);
    }
    let (doc, img, bin, gone) = (doc.unwrap(), img.unwrap(), bin.unwrap(), gone.unwrap());
    store.delete(gone).unwrap();
    assert_eq!(store.stat(img).unwrap().category, "images");
    // Now is day 6. documents: the newest 2 (v5, v6) or younger than 3.5 days (v4: day 3)
    // → v4..v6. images: the newest 3 (v2..v4) or younger than 1 day (none) → v2..v4.
    let rules: tessera::RetentionRules = [
        (
            "documents".to_string(),
            RetentionRule {
                keep_last: Some(2),
                keep_within: Some(DAY * 7 / 2),
            },
        ),
        (
            "images".to_string(),
            RetentionRule {
                keep_last: Some(3),
                keep_within: Some(DAY),
            },
        ),
    ]
    .into();
    let preview = dry(&store, |s| s.apply_retention(&rules, true).unwrap());
    assert!(preview.dry_run);
    // documents: v1..v3 of report.txt, v1 of old.txt (v2 is among the newest 2); images: v1.
    assert_eq!((preview.files, preview.versions), (3, 5), "{preview:#?}");

    let r = store.apply_retention(&rules, false).unwrap();
    assert_eq!(
        (r.files, r.versions, r.bytes),
        (3, 5, preview.bytes),
        "{r:#?}"
    );
    assert_eq!(version_numbers(&store, doc), vec![4, 5, 6]);
    assert_eq!(version_numbers(&store, img), vec![2, 3, 4]);
    assert_eq!(
        version_numbers(&store, bin),
        vec![1, 2, 3],
        "no rule: all kept"
    );
    assert_eq!(
        version_numbers(&store, gone),
        vec![2, 3],
        "deleted files too"
    );
    assert!(matches!(
        store.get_version(doc, 3),
        Err(Error::NotFound { .. })
    ));
    assert_eq!(store.read_all(doc).unwrap(), text_bytes(5, 40_000));
    // Applying the same rules again finds nothing.
    assert_eq!(store.apply_retention(&rules, false).unwrap().versions, 0);
    assert_verifies(&store);

    // The drops were journaled: recover rebuilds the same versions.
    drop(store);
    tessera::recover(t.path(), &config(&clock), &()).unwrap();
    let store = Store::open(t.path(), config(&clock)).unwrap();
    assert_eq!(version_numbers(&store, doc), vec![4, 5, 6]);
    assert_eq!(version_numbers(&store, img), vec![2, 3, 4]);
    assert_verifies(&store);
}

#[test]
fn expiry_soft_deletes_by_category_as_the_clock_moves() {
    let t = TempStore::new();
    let clock = new_clock();
    let store = Store::create(t.path(), config(&clock)).unwrap();
    let rules = default_expiry(&policy_with_temp());
    assert_eq!(rules.len(), 2, "images and temp: {rules:?}");
    let tmp = put_in(&store, &random_bytes(1, 10_000), "scratch.dat", "temp");
    let img = put(&store, &png_bytes(2, 20_000), "photo.png");
    let doc = put(&store, &text_bytes(3, 20_000), "notes.txt");

    clock.advance(23 * HOUR);
    assert_eq!(store.expire(&rules, false).unwrap().files, 0, "too young");
    clock.advance(HOUR);
    let preview = dry(&store, |s| s.expire(&rules, true).unwrap());
    assert_eq!((preview.files, preview.versions), (1, 1));
    let r = store.expire(&rules, false).unwrap();
    assert_eq!((r.files, r.bytes), (1, 10_000), "{r:#?}");
    assert!(store.stat(tmp).unwrap().deleted);
    assert!(!store.stat(img).unwrap().deleted);
    // Soft: it can come back, and then expires again on the next run.
    store.undelete(tmp).unwrap();
    assert_eq!(store.expire(&rules, false).unwrap().files, 1);
    assert_verifies(&store);

    // A new version of the image on day 700 restarts its 730 days.
    clock.advance(699 * DAY);
    put(&store, &png_bytes(4, 20_000), "photo.png");
    clock.advance(31 * DAY); // day 731 since the first version
    assert_eq!(store.expire(&rules, false).unwrap().files, 0);
    clock.advance(700 * DAY);
    let r = store.expire(&rules, false).unwrap();
    assert_eq!((r.files, r.versions), (1, 2), "{r:#?}");
    assert!(store.stat(img).unwrap().deleted);
    assert!(!store.stat(doc).unwrap().deleted, "documents never expire");
    assert_verifies(&store);

    // Expired files follow the deleted files' grace, then are purged for good.
    assert_eq!(
        store.purge_deleted(30 * DAY, false).unwrap().files,
        1,
        "only temp"
    );
    clock.advance(30 * DAY);
    let purged = store.purge_deleted(30 * DAY, false).unwrap();
    assert_eq!(purged.files, 1, "{purged:#?}");
    assert!(store.stat(img).is_err() && store.stat(tmp).is_err());
    drop(store);
    let rec = tessera::recover(t.path(), &config(&clock), &()).unwrap();
    assert_eq!(rec.files, 1, "{rec:#?}");
    let store = Store::open(t.path(), config(&clock)).unwrap();
    assert!(!store.stat(doc).unwrap().deleted);
    assert_verifies(&store);
}

fn scanning_config(clock: &Arc<TestClock>) -> Config {
    let scanner = Arc::new(FakeScanner::detecting(b"EVIL", "Fake.Evil"));
    Config {
        scan: Some(ScanConfig::new(scanner)),
        ..config(clock)
    }
}

/// Puts `data` as a document and returns the file, quarantined or not.
fn put_scanned(store: &Store, data: &[u8], key: &str) -> FileId {
    match store.put(data, &PutOptions::key(key)) {
        Ok(r) => r.file.id,
        Err(Error::Infected { file, .. }) => file,
        Err(e) => panic!("put {key}: {e}"),
    }
}

fn infected(seed: u64) -> Vec<u8> {
    let mut d = text_bytes(seed, 30_000);
    d.extend_from_slice(b" EVIL ");
    d
}

#[test]
fn quarantined_files_are_purged_after_seven_days_and_not_before() {
    let t = TempStore::new();
    let clock = new_clock();
    let store = Store::create(t.path(), scanning_config(&clock)).unwrap();
    let bad = put_scanned(&store, &infected(1), "bad.txt");
    let good = put_scanned(&store, &text_bytes(2, 30_000), "good.txt");
    // Infected, then cured by a clean version: no longer quarantined, never purged.
    let cured = put_scanned(&store, &infected(3), "cured.txt");
    put_scanned(&store, &text_bytes(4, 30_000), "cured.txt");
    // Infected and deleted by an admin: purged all the same.
    let deleted = put_scanned(&store, &infected(5), "deleted.txt");
    store.delete(deleted).unwrap();
    clock.advance(2 * DAY);
    // Quarantined two days later: its week ends two days later too.
    let late = put_scanned(&store, &infected(6), "late.txt");
    assert!(store.stat(bad).unwrap().quarantined);
    assert!(!store.stat(cured).unwrap().quarantined);

    clock.advance(5 * DAY - MINUTE); // a minute short of 7 days for the first ones
    let r = store.purge_quarantined(7 * DAY, false).unwrap();
    assert_eq!(r.files, 0, "{r:#?}");
    clock.advance(MINUTE);
    let preview = dry(&store, |s| s.purge_quarantined(7 * DAY, true).unwrap());
    assert_eq!((preview.files, preview.versions), (2, 2), "{preview:#?}");
    let r = store.purge_quarantined(7 * DAY, false).unwrap();
    assert_eq!(
        (r.files, r.versions, r.bytes),
        (2, 2, preview.bytes),
        "{r:#?}"
    );
    for id in [bad, deleted] {
        assert!(matches!(store.stat(id), Err(Error::NotFound { .. })));
    }
    for id in [good, cured, late] {
        store.stat(id).unwrap();
    }
    assert_verifies(&store);
    clock.advance(2 * DAY);
    assert_eq!(store.purge_quarantined(7 * DAY, false).unwrap().files, 1);
    assert!(store.stat(late).is_err());

    // The infected content is unreferenced now; the collector takes it back.
    clock.advance(2 * HOUR);
    let gc = store.gc(&GcOptions::default()).unwrap();
    assert!(gc.swept_chunks >= 3, "{gc:#?}");
    assert_verifies(&store);
    drop(store);
    let rec = tessera::recover(t.path(), &scanning_config(&clock), &()).unwrap();
    assert_eq!(rec.files, 2, "{rec:#?}");
    let store = Store::open(t.path(), scanning_config(&clock)).unwrap();
    assert!(store.stat(bad).is_err() && store.stat(late).is_err());
    assert_eq!(store.read_all(cured).unwrap(), text_bytes(4, 30_000));
}

#[test]
fn a_file_found_by_a_rescan_gets_its_full_week_before_the_quarantine_purge() {
    let t = TempStore::new();
    let clock = new_clock();
    let scanner = Arc::new(FakeScanner::detecting(b"EVIL", "Fake.Evil"));
    let scanning = |s: &Arc<FakeScanner>| Config {
        scan: Some(ScanConfig::new(s.clone())),
        ..config(&clock)
    };
    let store = Store::create(t.path(), scanning(&scanner)).unwrap();
    // Clean by the signatures of its day.
    let old = put_scanned(&store, b"LATER-KNOWN, written long ago", "old.txt");
    clock.advance(30 * DAY);
    // A signature update, a rescan: quarantined from now, not from when it was written.
    scanner.set(tessera::scan::FakeBehaviour::Scan {
        infected_marker: b"LATER-KNOWN".to_vec(),
        signature: "Fake.Later".into(),
    });
    let found = store.rescan(&tessera::RescanOptions::default()).unwrap();
    assert_eq!(found.infected.len(), 1, "{found:#?}");
    assert_eq!(
        store.stat(old).unwrap().quarantined_ms,
        Some(clock.now_ms())
    );
    assert_eq!(store.purge_quarantined(7 * DAY, false).unwrap().files, 0);
    clock.advance(7 * DAY - MINUTE);
    assert_eq!(store.purge_quarantined(7 * DAY, false).unwrap().files, 0);
    drop(store);
    // The time is rebuilt by recover (it is the scan event's).
    tessera::recover(t.path(), &scanning(&scanner), &()).unwrap();
    let store = Store::open(t.path(), scanning(&scanner)).unwrap();
    assert_eq!(store.purge_quarantined(7 * DAY, false).unwrap().files, 0);
    clock.advance(MINUTE);
    assert_eq!(store.purge_quarantined(7 * DAY, false).unwrap().files, 1);
    assert!(store.stat(old).is_err());
    assert_verifies(&store);
}

fn names(runs: &[tessera::JobRun]) -> Vec<&'static str> {
    runs.iter().map(|r| r.job).collect()
}

#[test]
fn the_scheduler_runs_each_due_job_once_per_interval() {
    let t = TempStore::new();
    let clock = new_clock();
    let store = Store::create(t.path(), scanning_config(&clock)).unwrap();
    let doc = put_scanned(&store, &text_bytes(1, 50_000), "doc.txt");
    store.delete(doc).unwrap();
    let bad = put_scanned(&store, &infected(2), "bad.txt");
    let keep = put_scanned(&store, &text_bytes(3, 50_000), "keep.txt");
    let jobs = vec![
        Scheduled {
            job: Job::Gc(GcOptions::default()),
            interval: HOUR,
        },
        Scheduled {
            job: Job::PurgeDeleted {
                older_than: 30 * DAY,
            },
            interval: DAY,
        },
        Scheduled {
            job: Job::Retention(BTreeMap::new()),
            interval: Duration::ZERO, // off
        },
        Scheduled {
            job: Job::Expiry(BTreeMap::new()),
            interval: DAY,
        },
        Scheduled {
            job: Job::QuarantinePurge {
                older_than: 7 * DAY,
            },
            interval: 6 * HOUR,
        },
    ];
    let mut s = Scheduler::new(store.clone(), jobs);
    assert_eq!(s.jobs().len(), 4, "a zero interval is off");
    assert!(s.run_due().is_empty(), "nothing is due at start");
    clock.advance(HOUR - MINUTE);
    assert!(s.run_due().is_empty());
    clock.advance(MINUTE);
    assert_eq!(names(&s.run_due()), ["gc"]);
    assert!(s.run_due().is_empty(), "once per interval");
    clock.advance(5 * HOUR);
    assert_eq!(names(&s.run_due()), ["gc", "quarantine_purge"]);
    clock.advance(18 * HOUR);
    assert_eq!(
        names(&s.run_due()),
        ["gc", "purge", "expiry", "quarantine_purge"]
    );
    assert!(s.run_due().is_empty());
    assert!(store.stat(bad).is_ok() && store.stat(doc).is_ok());

    // Ten days at once: each due job runs once, no catch-up runs.
    clock.advance(10 * DAY);
    let runs = s.run_due();
    assert_eq!(names(&runs), ["gc", "purge", "expiry", "quarantine_purge"]);
    let purged = |r: &tessera::JobRun| match r.result.as_ref().unwrap() {
        JobReport::Purge(p) => p.files,
        _ => panic!("not a purge"),
    };
    assert_eq!(purged(&runs[3]), 1, "the quarantined file's week is over");
    assert_eq!(purged(&runs[1]), 0, "the deleted file's 30 days are not");
    assert!(store.stat(bad).is_err());
    assert_eq!(
        s.next_due_ms(),
        Some(runs[0].started_ms + HOUR.as_millis() as i64)
    );

    clock.advance(21 * DAY);
    let runs = s.run_due();
    assert_eq!(purged(&runs[1]), 1);
    assert!(store.stat(doc).is_err());
    // The collector runs first in a batch: the purged file's chunks are swept an hour later.
    clock.advance(2 * HOUR);
    let runs = s.run_due();
    assert_eq!(names(&runs), ["gc"]);
    match runs[0].result.as_ref().unwrap() {
        JobReport::Gc(g) => assert!(g.swept_chunks > 0, "{g:#?}"),
        _ => panic!("not a gc"),
    }
    assert_eq!(store.read_all(keep).unwrap(), text_bytes(3, 50_000));
    assert_verifies(&store);

    // Once stopped, nothing more starts.
    s.stop_flag().store(true, Ordering::SeqCst);
    clock.advance(30 * DAY);
    assert!(s.run_due().is_empty());
}

#[test]
fn the_service_runs_the_scheduler_on_the_store_clock_and_stops_it_on_shutdown() {
    let svc = crate::http::Service::with(|s| {
        s.maintenance.purge_interval = HOUR;
        s.maintenance.purge_after = DAY;
    });
    let id = svc.put(&svc.alice, "notes.txt", &text_bytes(1, 10_000));
    let id: FileId = id.parse().unwrap();
    svc.store.delete(id).unwrap();
    assert_eq!(svc.file_count("alice"), 1);
    // The purge runs within a poll once the store clock passes its interval and the grace.
    svc.clock
        .0
        .fetch_add(2 * DAY.as_millis() as i64, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    while svc.file_count("alice") == 1 {
        assert!(Instant::now() < deadline, "the scheduler never purged");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_verifies(&svc.store);
}

#[test]
fn the_maintenance_task_stops_when_asked() {
    let t = TempStore::new();
    let clock = new_clock();
    let store = Store::create(t.path(), config(&clock)).unwrap();
    let scheduler = Scheduler::new(
        store,
        vec![Scheduled {
            job: Job::Gc(GcOptions::default()),
            interval: HOUR,
        }],
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = rt.spawn(tessera::http::maintenance::run(scheduler, rx));
    tx.send(true).unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the task stops within one poll")
            .unwrap();
    });
}

/// Runs the real `tessera` binary on `store` with `args`.
fn tessera(store: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("TESSERA_STORE")
        .env_remove("TESSERA_OWNER")
        .env_remove("TESSERA_CONFIG")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run tessera")
}

fn tessera_json(store: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = tessera(store, &all);
    assert!(
        out.status.success(),
        "tessera {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

#[test]
fn cli_runs_each_lifecycle_job_by_hand_with_dry_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let doc = tmp.path().join("doc.txt");
    for v in 0..3 {
        std::fs::write(&doc, text_bytes(v, 5_000)).unwrap();
        tessera_json(&store, &["put", doc.to_str().unwrap(), "--key", "doc.txt"]);
    }
    let versions = |store: &std::path::Path| {
        tessera_json(store, &["versions", "doc.txt"])["versions"]
            .as_array()
            .map_or(0, |a| a.len())
    };
    assert_eq!(versions(&store), 3);

    let args = ["retention", "--category", "documents", "--keep-last", "1"];
    let dry = tessera_json(&store, &[&args[..], &["--dry-run"]].concat());
    assert_eq!(
        (dry["dry_run"].as_bool(), dry["versions"].as_u64()),
        (Some(true), Some(2))
    );
    assert_eq!(versions(&store), 3, "a dry run changes nothing");
    let done = tessera_json(&store, &args);
    assert_eq!(
        (done["files"].as_u64(), done["versions"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(versions(&store), 1);

    let args = ["expire", "--category", "documents", "--older-than", "0s"];
    let dry = tessera_json(&store, &[&args[..], &["--dry-run"]].concat());
    assert_eq!(dry["files"].as_u64(), Some(1));
    assert_eq!(tessera_json(&store, &["stat", "doc.txt"])["deleted"], false);
    assert_eq!(tessera_json(&store, &args)["files"].as_u64(), Some(1));
    assert_eq!(tessera_json(&store, &["stat", "doc.txt"])["deleted"], true);

    let q = tessera_json(&store, &["quarantine", "purge", "--dry-run"]);
    assert_eq!(
        (q["dry_run"].as_bool(), q["files"].as_u64()),
        (Some(true), Some(0))
    );
    assert!(tessera(&store, &["verify"]).status.success());

    // Bad input: an unknown category is a failure naming it; a rule without a category is
    // a usage error.
    let out = tessera(
        &store,
        &["expire", "--category", "pictures", "--older-than", "1d"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pictures"));
    let out = tessera(&store, &["retention", "--keep-last", "2"]);
    assert_eq!(out.status.code(), Some(2));
}
