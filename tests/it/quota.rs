//! Quotas: admission by reservation (library, multipart and tus, in parallel), the streaming
//! check of undeclared uploads, organisation limits, warnings once per crossing, reports
//! cross-checked against the stored files, history, the webhook, and recovery of the counters.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use reqwest::blocking::multipart::{Form, Part};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tessera::quota::{Level, QuotaEvent};
use tessera::users::NewUser;
use tessera::{Config, Error, ListQuery, PutOptions, Store};

use crate::common::TestClock;
use crate::common::{TempStore, random_bytes};
use crate::http::Service;

const DAY: i64 = 86_400_000;

fn clocked() -> (TempStore, Store, Arc<TestClock>) {
    let tmp = TempStore::new();
    let clock = Arc::new(TestClock(AtomicI64::new(1_800_000_000_000)));
    let store = Store::create(
        tmp.path(),
        Config {
            clock: clock.clone(),
            ..Config::default()
        },
    )
    .unwrap();
    (tmp, store, clock)
}

fn user(store: &Store, name: &str, quota: Option<u64>, tier: Option<&str>, org: Option<&str>) {
    store
        .user_add(
            name,
            NewUser {
                tier: tier.map(str::to_string),
                org: org.map(str::to_string),
                quota,
                ..Default::default()
            },
        )
        .unwrap();
}

fn opts(owner: &str, name: &str, declared: Option<u64>) -> PutOptions {
    PutOptions {
        owner: owner.into(),
        name: Some(name.into()),
        declared_size: declared,
        ..Default::default()
    }
}

/// Sum of the sizes of every version of every file of `owner`, deleted ones included.
fn stored_bytes(store: &Store, owner: &str) -> u64 {
    let files = store
        .list(&ListQuery {
            owner: Some(owner.into()),
            include_deleted: true,
            limit: Some(10_000),
            ..Default::default()
        })
        .unwrap()
        .files;
    files
        .iter()
        .map(|f| {
            store
                .versions(f.id)
                .unwrap()
                .iter()
                .map(|v| v.size)
                .sum::<u64>()
        })
        .sum()
}

fn no_reservations(store: &Store) {
    let r = store.quota_reservations();
    assert_eq!((r.entries, r.bytes), (0, 0), "reservations left: {r:?}");
}

/// 20 puts of 100 kB at once against a 1 MB quota: exactly what fits commits, every other put
/// is refused with the figures, and nothing stays reserved. Declared and undeclared sizes.
#[test]
fn parallel_library_puts_never_pass_the_limit() {
    let (_tmp, store, _) = clocked();
    user(&store, "alice", Some(1_000_000), None, None);
    user(&store, "bob", Some(1_000_000), None, None);
    for (owner, declared) in [("alice", true), ("bob", false)] {
        let results: Vec<Result<u64, Error>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..20)
                .map(|i| {
                    let store = store.clone();
                    s.spawn(move || {
                        let data = random_bytes(i, 100_000);
                        let o = opts(owner, &format!("f{i}.bin"), declared.then_some(100_000));
                        store.put(&data[..], &o).map(|r| r.file.size)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ok: u64 = results.iter().filter_map(|r| r.as_ref().ok()).sum();
        for r in &results {
            match r {
                Ok(_) => {}
                Err(Error::QuotaExceeded(x)) => {
                    assert_eq!((x.name.as_str(), x.limit), (owner, 1_000_000));
                    assert!(x.used + x.reserved + x.requested > x.limit, "{x:?}");
                }
                Err(e) => panic!("{owner}: unexpected {e}"),
            }
        }
        assert!(ok <= 1_000_000, "{owner}: {ok} bytes committed");
        assert!(ok >= 100_000, "{owner}: nothing fitted");
        if declared {
            // Refusals are decided on reservations that all turn into usage: exactly 10 fit.
            assert_eq!(ok, 1_000_000);
        }
        let st = store.quota_status(owner).unwrap();
        assert_eq!(st.used, ok);
        assert_eq!(stored_bytes(&store, owner), ok);
        no_reservations(&store);
    }
    assert!(store.verify(&()).unwrap().is_ok());
}

/// An upload without a declared size is stopped as it streams, and commits nothing.
#[test]
fn undeclared_uploads_are_stopped_at_the_limit() {
    let (_tmp, store, _) = clocked();
    user(&store, "alice", Some(1_000_000), None, None);
    store
        .put(&random_bytes(1, 400_000)[..], &opts("alice", "a.bin", None))
        .unwrap();
    // 3 MB arriving in small reads, as from a socket.
    let big = random_bytes(2, 3_000_000);
    let reader = SlowReader(&big[..]);
    let err = store
        .put(reader, &opts("alice", "big.bin", None))
        .unwrap_err();
    let Error::QuotaExceeded(x) = err else {
        panic!("{err}")
    };
    assert_eq!((x.used, x.limit, x.percentage), (400_000, 1_000_000, 40.0));
    assert_eq!(store.quota_status("alice").unwrap().used, 400_000);
    assert_eq!(store.stats().unwrap().files, 1);
    no_reservations(&store);
    // A declared size that does not fit is refused before any byte is read.
    let err = store
        .put(FailReader, &opts("alice", "c.bin", Some(700_000)))
        .unwrap_err();
    assert!(matches!(err, Error::QuotaExceeded(_)), "{err}");
    // What fits still goes in.
    store
        .put(&random_bytes(3, 600_000)[..], &opts("alice", "d.bin", None))
        .unwrap();
    assert_eq!(store.quota_status("alice").unwrap().used, 1_000_000);
    no_reservations(&store);
    assert!(store.verify(&()).unwrap().is_ok());
}

struct SlowReader<'a>(&'a [u8]);

impl Read for SlowReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(16 << 10).min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

/// A source that must never be read.
struct FailReader;

impl Read for FailReader {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        panic!("the put read its source although the quota refused it")
    }
}

/// An upload must fit the user's limit and the organisation's; set at run time or in the
/// configuration; usage follows a user who changes organisation.
#[test]
fn organisation_limits() {
    let tmp = TempStore::new();
    let mut config = Config::default();
    config
        .quotas
        .orgs
        .insert("initech".into(), tessera::quota::Limit(Some(300_000)));
    let store = Store::create(tmp.path(), config).unwrap();
    user(&store, "alice", None, None, Some("acme"));
    user(&store, "carol", Some(10_000_000), None, Some("acme"));
    user(&store, "bob", None, None, None);
    user(&store, "dave", None, None, Some("initech"));
    store.org_quota_set("acme", Some(1_000_000)).unwrap();

    store
        .put(&random_bytes(1, 600_000)[..], &opts("alice", "a.bin", None))
        .unwrap();
    let err = store
        .put(
            &random_bytes(2, 500_000)[..],
            &opts("carol", "c.bin", Some(500_000)),
        )
        .unwrap_err();
    let Error::QuotaExceeded(x) = err else {
        panic!("{err}")
    };
    assert_eq!(x.scope, tessera::quota::Scope::Organisation);
    assert_eq!(
        (x.name.as_str(), x.used, x.limit),
        ("acme", 600_000, 1_000_000)
    );
    store
        .put(&random_bytes(3, 400_000)[..], &opts("carol", "c.bin", None))
        .unwrap();
    // bob is in no organisation and has no limit.
    store
        .put(&random_bytes(4, 2_000_000)[..], &opts("bob", "b.bin", None))
        .unwrap();
    // The configuration's limit for initech.
    assert!(matches!(
        store.put(&random_bytes(5, 400_000)[..], &opts("dave", "d.bin", None)),
        Err(Error::QuotaExceeded(_))
    ));
    let orgs: BTreeMap<String, _> = store
        .quota_orgs()
        .unwrap()
        .into_iter()
        .map(|o| (o.org.clone(), o))
        .collect();
    assert_eq!((orgs["acme"].used, orgs["acme"].members), (1_000_000, 2));
    assert_eq!(orgs["acme"].limit, Some(1_000_000));
    assert_eq!(
        (orgs["initech"].used, orgs["initech"].limit),
        (0, Some(300_000))
    );

    // carol moves to initech: her 400 kB go along, and initech is now over its limit.
    let mut carol = store.user("carol").unwrap();
    carol.org = Some("initech".into());
    store.user_update(&carol).unwrap();
    assert_eq!(store.quota_orgs().unwrap()[0].used, 600_000);
    assert!(matches!(
        store.put(&b"x"[..], &opts("dave", "e.bin", None)),
        Err(Error::QuotaExceeded(_))
    ));
    // Clearing acme's run-time limit leaves acme unlimited.
    store.org_quota_set("acme", None).unwrap();
    store
        .put(&random_bytes(6, 900_000)[..], &opts("alice", "f.bin", None))
        .unwrap();
    assert!(store.verify(&()).unwrap().is_ok());
}

fn drain(rx: &crossbeam_channel::Receiver<QuotaEvent>) -> Vec<(String, Level)> {
    rx.try_iter().map(|e| (e.owner, e.level)).collect()
}

/// Warnings: each threshold once per upward crossing, again after usage drops below and rises;
/// a restart does not raise them again; a jump over several raises each once.
#[test]
fn warnings_fire_once_per_crossing() {
    let (tmp, store, clock) = clocked();
    user(&store, "alice", Some(100_000), None, None);
    user(&store, "bob", Some(100_000), None, None);
    let rx = store.subscribe_quota_events();
    let put = |store: &Store, owner: &str, seed: u64, n: usize| {
        store
            .put(
                &random_bytes(seed, n)[..],
                &opts(owner, &format!("{seed}.bin"), None),
            )
            .unwrap()
            .file
            .id
    };
    put(&store, "alice", 1, 70_000);
    assert!(drain(&rx).is_empty());
    let a = put(&store, "alice", 2, 12_000); // 82 %
    assert_eq!(drain(&rx), [("alice".into(), Level::Medium)]);
    put(&store, "alice", 3, 3_000); // 85 %: still medium
    assert!(drain(&rx).is_empty());
    put(&store, "alice", 4, 6_000); // 91 %
    assert_eq!(drain(&rx), [("alice".into(), Level::High)]);

    // A restart raises nothing again, and a put that stays within the level raises nothing.
    drop(store);
    let store = Store::open(
        tmp.path(),
        Config {
            clock: clock.clone(),
            ..Config::default()
        },
    )
    .unwrap();
    let rx = store.subscribe_quota_events();
    put(&store, "alice", 5, 1_000); // 92 %
    assert!(drain(&rx).is_empty());

    // Down below 80 % (a purge), then up again: medium again, once.
    store.delete(a).unwrap();
    store.purge_deleted(Duration::ZERO, false).unwrap();
    assert_eq!(store.quota_status("alice").unwrap().used, 80_000);
    assert!(drain(&rx).is_empty());
    clock.0.fetch_add(1000, Ordering::SeqCst);
    let b = store
        .put(&random_bytes(6, 500)[..], &opts("alice", "6.bin", None))
        .unwrap();
    assert!(
        drain(&rx).is_empty(),
        "80.5 % is still medium, raised before"
    );
    store.delete(b.file.id).unwrap();
    store.purge_deleted(Duration::ZERO, false).unwrap();
    // Dropped to exactly 80 %: still medium, so the level did not move.
    let c = put(&store, "alice", 7, 1);
    store.delete(c).unwrap();
    let first = store
        .list(&ListQuery {
            owner: Some("alice".into()),
            ..Default::default()
        })
        .unwrap()
        .files[0]
        .id;
    store.delete(first).unwrap();
    store.purge_deleted(Duration::ZERO, false).unwrap();
    assert_eq!(store.quota_status("alice").unwrap().level, Level::None);
    put(&store, "alice", 8, 75_000);
    assert_eq!(drain(&rx), [("alice".into(), Level::Medium)]);

    // One jump over every threshold raises each once, in order; events carry the figures.
    let b = put(&store, "bob", 9, 96_000);
    let evs: Vec<QuotaEvent> = rx.try_iter().collect();
    assert_eq!(
        evs.iter().map(|e| e.level).collect::<Vec<_>>(),
        [Level::Medium, Level::High, Level::Critical]
    );
    assert!(evs.iter().all(|e| e.used == 96_000 && e.limit == 100_000));
    assert_eq!(evs[2].percentage, 96.0);
    // A lower limit can raise a warning too; a higher one lowers the level silently.
    store.quota_set("bob", Some(1_000_000)).unwrap();
    assert!(drain(&rx).is_empty());
    store.quota_set("bob", Some(110_000)).unwrap(); // 87 %
    assert_eq!(drain(&rx), [("bob".into(), Level::Medium)]);
    store.delete(b).unwrap();
    assert!(drain(&rx).is_empty(), "soft-deleted bytes still count");
    assert!(store.verify(&()).unwrap().is_ok());
}

/// The rows of the quota tables, for comparing an index before and after `recover`.
fn quota_rows(store: &Store) -> Vec<String> {
    store
        .debug_index_dump()
        .unwrap()
        .lines()
        .filter(|l| {
            [
                "owner_usage ",
                "org_usage ",
                "quota_levels ",
                "org_limits ",
                "usage_history ",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .map(str::to_string)
        .collect()
}

/// Usage counters, organisation totals, levels and history are derived: `recover` rebuilds
/// them equal, and `verify` checks them against a recount.
#[test]
fn recover_rebuilds_the_counters() {
    let (tmp, store, clock) = clocked();
    user(&store, "alice", Some(1_000_000), None, Some("acme"));
    user(&store, "bob", None, Some("pro"), Some("acme"));
    store.org_quota_set("acme", Some(5_000_000)).unwrap();
    let mut ids = Vec::new();
    for (i, owner) in ["alice", "bob", "local", "alice"].iter().enumerate() {
        let mut o = opts(owner, "v.bin", None);
        o.key = Some(format!("k{i}"));
        ids.push(
            store
                .put(&random_bytes(i as u64, 200_000 + i * 1000)[..], &o)
                .unwrap()
                .file
                .id,
        );
        clock.0.fetch_add(DAY, Ordering::SeqCst);
    }
    // Versions, a soft delete, a purge, a dropped version.
    let mut o = opts("alice", "v.bin", None);
    o.key = Some("k0".into());
    store.put(&random_bytes(10, 440_000)[..], &o).unwrap();
    store
        .put(&random_bytes(11, 1_000)[..], &opts("bob", "x.bin", None))
        .unwrap();
    store.delete(ids[1]).unwrap();
    store.delete(ids[2]).unwrap();
    store.purge_deleted(Duration::ZERO, false).unwrap();
    store.keep_last(1, None, false).unwrap();
    store
        .put(
            &random_bytes(13, 200_000)[..],
            &opts("alice", "y.bin", None),
        )
        .unwrap(); // 84.3 %
    store.delete(ids[3]).unwrap();
    assert_eq!(store.quota_status("alice").unwrap().level, Level::Medium);
    let before = quota_rows(&store);
    assert!(before.iter().any(|l| l.starts_with("usage_history ")));
    let statuses: Vec<_> = ["alice", "bob", "local"]
        .iter()
        .map(|o| serde_json::to_value(store.quota_status(o).unwrap()).unwrap())
        .collect();
    for o in ["alice", "bob", "local"] {
        assert_eq!(store.quota_status(o).unwrap().used, stored_bytes(&store, o));
    }
    assert!(store.verify(&()).unwrap().is_ok());
    drop(store);

    let config = Config {
        clock: clock.clone(),
        ..Config::default()
    };
    let report = tessera::recover(tmp.path(), &config, &()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let store = Store::open(tmp.path(), config).unwrap();
    let rx = store.subscribe_quota_events();
    assert_eq!(quota_rows(&store), before);
    let after: Vec<_> = ["alice", "bob", "local"]
        .iter()
        .map(|o| serde_json::to_value(store.quota_status(o).unwrap()).unwrap())
        .collect();
    assert_eq!(after, statuses);
    assert!(store.verify(&()).unwrap().is_ok());
    // The rebuilt level is the one raised before: nothing is raised again.
    let mut o = opts("alice", "v.bin", None);
    o.key = Some("k0".into());
    store.put(&random_bytes(12, 10)[..], &o).unwrap();
    assert!(rx.try_iter().next().is_none());
}

/// A resumable session with a declared length holds its reservation while it lives, across a
/// restart, until it is finished, terminated or swept.
#[test]
fn session_reservations_survive_a_restart_and_end_with_the_session() {
    let (tmp, store, clock) = clocked();
    user(&store, "alice", Some(1_000_000), None, None);
    let meta = tessera::UploadMeta {
        name: Some("s.bin".into()),
        ..Default::default()
    };
    let s1 = store
        .upload_create("alice", Some(600_000), meta.clone())
        .unwrap();
    let err = store
        .upload_create("alice", Some(500_000), meta.clone())
        .unwrap_err();
    assert!(matches!(err, Error::QuotaExceeded(_)), "{err}");
    drop(store);
    let config = Config {
        clock: clock.clone(),
        upload_ttl: Duration::from_secs(3600),
        sessions: tessera::SessionLimits {
            deferred_reservation: 100_000,
            ..Default::default()
        },
        ..Config::default()
    };
    let store = Store::open(tmp.path(), config.clone()).unwrap();
    assert_eq!(store.quota_reservations().by_owner["alice"], 600_000);
    assert!(matches!(
        store.put(&random_bytes(1, 500_000)[..], &opts("alice", "p.bin", None)),
        Err(Error::QuotaExceeded(_))
    ));
    // Finishing turns the reservation into usage (it is not counted twice meanwhile).
    let data = random_bytes(2, 600_000);
    store.upload_append(&s1.id, 0, &data[..], None).unwrap();
    let done = store.upload_finish(&s1.id).unwrap();
    assert_eq!(done.file.size, 600_000);
    assert_eq!(store.quota_status("alice").unwrap().used, 600_000);
    no_reservations(&store);

    // Terminated and expired sessions give theirs back; a deferred one holds its reservation
    // (`deferred_reservation`, as its name lists no category), or what arrived when more.
    let s2 = store
        .upload_create("alice", Some(300_000), meta.clone())
        .unwrap();
    store.upload_terminate(&s2.id).unwrap();
    no_reservations(&store);
    let s3 = store
        .upload_create("alice", Some(300_000), meta.clone())
        .unwrap();
    let s4 = store.upload_create("alice", None, meta.clone()).unwrap();
    assert_eq!(store.quota_reservations().bytes, 400_000);
    let err = store
        .upload_append(&s4.id, 0, &random_bytes(3, 200_000)[..], None)
        .unwrap_err();
    assert!(matches!(err, Error::QuotaExceeded(_)), "{err}");
    assert_eq!(store.upload_status(&s4.id).unwrap().offset, 0);
    assert_eq!(store.quota_reservations().bytes, 400_000);
    store
        .upload_append(&s4.id, 0, &random_bytes(3, 50_000)[..], None)
        .unwrap();
    assert_eq!(store.quota_reservations().bytes, 400_000);
    // Past its reservation, a deferred session grows into the quota; what does not fit is
    // refused and the reservation is back where it was.
    let err = store
        .upload_append(&s4.id, 50_000, &random_bytes(4, 60_000)[..], None)
        .unwrap_err();
    assert!(matches!(err, Error::QuotaExceeded(_)), "{err}");
    assert_eq!(store.quota_reservations().bytes, 400_000);
    assert!(matches!(
        store.upload_declare_length(&s4.id, 150_000),
        Err(Error::QuotaExceeded(_))
    ));
    clock.0.fetch_add(2 * 3600 * 1000, Ordering::SeqCst);
    let swept = store.upload_sweep_expired().unwrap();
    assert_eq!(swept.expired_sessions, 2);
    assert!(store.upload_status(&s3.id).is_err());
    no_reservations(&store);
}

/// History: one row per owner per day with a change; the window carries values forward; the
/// trend is the least-squares slope and the projection follows it 30 days on.
#[test]
fn history_trend_and_projection() {
    let (_tmp, store, clock) = clocked();
    user(&store, "alice", Some(10_000_000), None, None);
    let t0 = clock.0.load(Ordering::SeqCst);
    for day in 0..3u64 {
        clock.0.store(t0 + day as i64 * DAY, Ordering::SeqCst);
        store
            .put(
                &random_bytes(day, 100_000)[..],
                &opts("alice", &format!("{day}.bin"), None),
            )
            .unwrap();
    }
    let h = store.quota_history("alice", 3).unwrap();
    let used: Vec<u64> = h.days.iter().map(|d| d.used).collect();
    assert_eq!(used, [100_000, 200_000, 300_000]);
    assert!((h.trend_bytes_per_day - 100_000.0).abs() < 1e-6);
    assert_eq!(h.projected_30d, 3_300_000);
    assert!((h.days_to_limit.unwrap() - 97.0).abs() < 1e-6);
    // Two quiet days later: carried forward, trend flattening.
    clock.0.store(t0 + 4 * DAY, Ordering::SeqCst);
    let h = store.quota_history("alice", 7).unwrap();
    let used: Vec<u64> = h.days.iter().map(|d| d.used).collect();
    assert_eq!(used, [0, 0, 100_000, 200_000, 300_000, 300_000, 300_000]);
    assert_eq!(h.days[6].date.to_string().len(), 10);
    assert!(h.trend_bytes_per_day > 0.0 && h.trend_bytes_per_day < 100_000.0);
}

// ------------------------------------------------------------------------ over HTTP

fn json(r: reqwest::blocking::Response) -> (StatusCode, Value) {
    let status = r.status();
    (status, r.json().unwrap())
}

fn assert_quota_body(v: &Value, limit: u64) {
    assert_eq!(v["error"], "quota_exceeded", "{v}");
    assert_eq!(v["limit"], limit, "{v}");
    assert!(v["used"].as_u64().unwrap() <= limit, "{v}");
    let pct = v["percentage"].as_f64().unwrap();
    let expect = v["used"].as_u64().unwrap() as f64 / limit as f64 * 100.0;
    assert!((pct - expect).abs() < 0.01, "{v}");
}

/// 20 parallel multipart uploads and 20 parallel tus uploads against a 1 MB quota: at most the
/// limit commits, every refused one is a 413 with the figures, no reservation is left.
#[test]
fn parallel_http_uploads_never_pass_the_limit() {
    let s = Service::start();
    s.store.quota_set("alice", Some(1_000_000)).unwrap();
    s.store.quota_set("bob", Some(1_000_000)).unwrap();

    // Multipart: sizes are not declared, so they are checked as the bodies stream.
    let outcomes: Vec<(StatusCode, Value)> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..20)
            .map(|i| {
                let s = &s;
                sc.spawn(move || {
                    let form = Form::new().part(
                        "file",
                        Part::bytes(random_bytes(100 + i, 100_000)).file_name(format!("m{i}.bin")),
                    );
                    json(s.upload(&s.alice, form))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ok = 0u64;
    for (status, v) in &outcomes {
        match *status {
            StatusCode::CREATED => ok += v["files"][0]["file"]["size"].as_u64().unwrap(),
            StatusCode::PAYLOAD_TOO_LARGE => {
                assert_quota_body(v, 1_000_000);
                assert_eq!(v["files"][0]["error"], "quota_exceeded");
            }
            other => panic!("{other}: {v}"),
        }
    }
    assert!((100_000..=1_000_000).contains(&ok), "{ok}");
    assert_eq!(s.store.quota_status("alice").unwrap().used, ok);
    assert_eq!(stored_bytes(&s.store, "alice"), ok);
    no_reservations(&s.store);

    // tus: Upload-Length is reserved at creation.
    let outcomes: Vec<(StatusCode, Value)> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..20)
            .map(|i| {
                let s = &s;
                sc.spawn(move || tus_upload(s, &s.bob, &random_bytes(200 + i, 100_000)))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let stored = outcomes
        .iter()
        .filter(|(st, _)| *st == StatusCode::NO_CONTENT)
        .count() as u64;
    for (status, v) in &outcomes {
        if *status != StatusCode::NO_CONTENT {
            assert_eq!(*status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
            assert_quota_body(v, 1_000_000);
        }
    }
    assert_eq!(stored, 10, "every creation that was admitted fits");
    assert_eq!(s.store.quota_status("bob").unwrap().used, 1_000_000);
    assert_eq!(stored_bytes(&s.store, "bob"), 1_000_000);
    assert!(s.store.list_uploads(None).unwrap().is_empty());
    no_reservations(&s.store);
    assert!(s.store.verify(&()).unwrap().is_ok());
}

/// Creates a tus upload and sends all of `data`: the status of the creation if it failed
/// (with its body), else of the PATCH.
fn tus_upload(s: &Service, token: &str, data: &[u8]) -> (StatusCode, Value) {
    let r = s
        .http
        .request(Method::POST, format!("{}/api/uploads", s.url))
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", data.len().to_string())
        .bearer_auth(token)
        .send()
        .unwrap();
    if r.status() != StatusCode::CREATED {
        return json(r);
    }
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let r = s
        .http
        .request(Method::PATCH, loc)
        .header("Tus-Resumable", "1.0.0")
        .header("Content-Type", "application/offset+octet-stream")
        .header("Upload-Offset", "0")
        .bearer_auth(token)
        .body(data.to_vec())
        .send()
        .unwrap();
    (r.status(), Value::Null)
}

/// The reports agree with the files actually stored, through the library and over HTTP; a
/// user sees only their own quota; admins see the rest.
#[test]
fn reports_agree_with_the_stored_files() {
    let s = Service::start();
    let st = &s.store;
    user(st, "carol", None, Some("free"), Some("acme"));
    user(st, "dave", Some(300_000), None, Some("acme"));
    st.quota_set("alice", Some(500_000)).unwrap();
    let mut alice = st.user("alice").unwrap();
    alice.tier = Some("pro".into());
    st.user_update(&alice).unwrap();

    let a1 = s.put(&s.alice, "a1.bin", &random_bytes(1, 300_000));
    s.put(&s.alice, "a2.bin", &random_bytes(2, 120_000)); // 84 % of 500 kB
    s.put(&s.bob, "b1.bin", &random_bytes(3, 50_000));
    st.put(&random_bytes(4, 280_000)[..], &opts("dave", "d.bin", None))
        .unwrap(); // 93 %
    let mut o = opts("carol", "c.bin", None);
    o.key = Some("c".into());
    st.put(&random_bytes(5, 10_000)[..], &o).unwrap();
    st.put(&random_bytes(6, 20_000)[..], &o).unwrap(); // two versions
    st.put(&random_bytes(7, 5_000)[..], &opts("local", "l.bin", None))
        .unwrap();
    let r = s
        .http
        .delete(format!("{}/api/files/{a1}", s.url))
        .bearer_auth(&s.alice)
        .send()
        .unwrap();
    assert!(r.status().is_success());

    let owners = ["alice", "bob", "carol", "dave", "local", "root"];
    let truth: BTreeMap<&str, u64> = owners.iter().map(|o| (*o, stored_bytes(st, o))).collect();
    let rep = st.quota_report(3).unwrap();
    assert_eq!(rep.total_used, truth.values().sum::<u64>());
    assert_eq!(rep.owners, owners.len() as u64);
    assert_eq!(rep.users, 5);
    let tiers: BTreeMap<&str, (u64, u64)> = rep
        .tiers
        .iter()
        .map(|t| (t.tier.as_str(), (t.owners, t.used)))
        .collect();
    assert_eq!(tiers["pro"], (1, truth["alice"]));
    assert_eq!(tiers["free"], (1, truth["carol"]));
    assert_eq!(
        tiers["none"],
        (3, truth["bob"] + truth["dave"] + truth["root"])
    );
    assert_eq!(tiers["unregistered"], (1, truth["local"]));
    let top: Vec<&str> = rep.top.iter().map(|t| t.owner.as_str()).collect();
    assert_eq!(top, ["alice", "dave", "bob"]);
    let near: Vec<(&str, Level)> = rep
        .near_limit
        .iter()
        .map(|t| (t.owner.as_str(), t.level))
        .collect();
    assert_eq!(near, [("dave", Level::High), ("alice", Level::Medium)]);
    let acme = rep.orgs.iter().find(|o| o.org == "acme").unwrap();
    assert_eq!(acme.used, truth["carol"] + truth["dave"]);

    // Over HTTP: the same figures.
    let (status, v) = json(
        s.get("/api/admin/quota/report?top=3", Some(&s.admin))
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v, serde_json::to_value(&rep).unwrap());
    let (_, v) = json(s.get("/api/quota", Some(&s.alice)).send().unwrap());
    assert_eq!(v["used"], truth["alice"]);
    assert_eq!(
        (v["limit"].as_u64(), v["level"].as_str()),
        (Some(500_000), Some("medium"))
    );
    assert_eq!(v["percentage"], 84.0);
    let (_, v) = json(
        s.get("/api/admin/quota/alerts?threshold=0.9", Some(&s.admin))
            .send()
            .unwrap(),
    );
    let names: Vec<&str> = v["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["owner"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dave"]);
    let (_, v) = json(
        s.get("/api/admin/quota/orgs", Some(&s.admin))
            .send()
            .unwrap(),
    );
    assert_eq!(v["orgs"][0]["org"], "acme");
    assert_eq!(v["orgs"][0]["members"], 2);
    let (status, v) = json(
        s.get("/api/quota/history?days=5", Some(&s.alice))
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["days"].as_array().unwrap().len(), 5);
    assert_eq!(v["days"][4]["used"], truth["alice"]);

    // Users may not read the admin reports or another owner's history.
    for path in [
        "/api/admin/quota/report",
        "/api/admin/quota/alerts",
        "/api/admin/quota/orgs",
    ] {
        assert_eq!(
            s.get(path, Some(&s.bob)).send().unwrap().status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            s.get(path, None).send().unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let r = s
        .get("/api/quota/history?owner=alice", Some(&s.bob))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = s
        .get("/api/admin/quota/alerts?threshold=lots", Some(&s.admin))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

/// The configured webhook receives a POST per crossing, off the upload's path.
#[test]
fn warnings_reach_the_webhook() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook = format!("http://{}/hooks/quota", listener.local_addr().unwrap());
    let s = Service::with(|c| c.quotas.webhook = Some(hook.clone()));
    s.store.quota_set("alice", Some(100_000)).unwrap();
    s.put(&s.alice, "a.bin", &random_bytes(1, 91_000));
    // The receiver runs on its own thread, so a missing POST fails the test instead of
    // hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut c, _) = listener.accept().unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let mut len = 0;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h.trim_end().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            c.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                .unwrap();
            let _ = tx.send((line, body));
        }
    });
    let mut got = Vec::new();
    for _ in 0..2 {
        let (line, body) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("a webhook POST");
        assert_eq!(line.trim_end(), "POST /hooks/quota HTTP/1.1");
        got.push(serde_json::from_slice::<Value>(&body).unwrap());
    }
    assert!(
        got.iter()
            .all(|v| v["type"] == "quota_warning" && v["event"]["owner"] == "alice")
    );
    let levels: Vec<&str> = got
        .iter()
        .map(|v| v["event"]["level"].as_str().unwrap())
        .collect();
    assert_eq!(levels, ["medium", "high"]);
}

/// `tessera quota ...` as a process: set, show, org limits, report, alerts, history, each
/// with `--json`; an upload over the limit fails with kind `quota_exceeded`.
#[test]
fn cli_quota_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .arg("--store")
            .arg(&store)
            .args(args)
            .env_remove("TESSERA_OWNER")
            .env_remove("TESSERA_CONFIG")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let json = |args: &[&str]| -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = run(&a);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    json(&["user", "add", "alice", "--tier", "free", "--org", "acme"]);
    let out = run(&["user", "add", "eve", "--tier", "gold"]);
    assert!(!out.status.success(), "an unknown tier is refused");
    let v = json(&["quota", "set", "alice", "100KB"]);
    assert_eq!(
        (v["limit"].as_u64(), v["tier"].as_str()),
        (Some(100_000), Some("free"))
    );
    let file = tmp.path().join("a.bin");
    std::fs::write(&file, random_bytes(1, 85_000)).unwrap();
    json(&["--owner", "alice", "put", file.to_str().unwrap()]);
    let v = json(&["quota", "show", "alice"]);
    assert_eq!(
        (v["used"].as_u64(), v["level"].as_str()),
        (Some(85_000), Some("medium"))
    );
    assert_eq!(v["org"], "acme");
    let out = run(&[
        "--json",
        "--owner",
        "alice",
        "put",
        "--key",
        "b",
        file.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(err["error"]["kind"], "quota_exceeded", "{err}");
    let v = json(&["quota", "org", "set", "acme", "1MB"]);
    assert_eq!(
        (v["used"].as_u64(), v["limit"].as_u64()),
        (Some(85_000), Some(1_000_000))
    );
    let v = json(&["quota", "report"]);
    assert_eq!(v["total_used"], 85_000);
    assert_eq!(v["near_limit"][0]["owner"], "alice");
    let v = json(&["quota", "alerts", "--threshold", "0.9"]);
    assert!(v["users"].as_array().unwrap().is_empty());
    let v = json(&["quota", "history", "alice", "--days", "3"]);
    assert_eq!(v["days"].as_array().unwrap().len(), 3);
    assert_eq!(v["days"][2]["used"], 85_000);
    let v = json(&["quota", "clear", "alice"]);
    assert_eq!(
        v["limit"].as_u64(),
        Some(1_000_000_000),
        "back to the free tier"
    );
    let human = String::from_utf8(run(&["quota", "report"]).stdout).unwrap();
    assert!(human.contains("alice") && human.contains("acme"), "{human}");
    let out = run(&["verify"]);
    assert!(out.status.success());
}

/// `verify` catches a usage counter that disagrees with the versions; an index from before
/// the counters passes read-only and gets them, right, on its first read-write open.
#[test]
fn verify_checks_the_counters_and_old_indexes_get_them() {
    use redb::{ReadableDatabase, TableDefinition};
    const OWNER_USAGE: TableDefinition<&str, u64> = TableDefinition::new("owner_usage");
    let (tmp, store, _) = clocked();
    user(&store, "alice", None, None, Some("acme"));
    store
        .put(&random_bytes(1, 50_000)[..], &opts("alice", "a.bin", None))
        .unwrap();
    drop(store);
    let index = tmp.path().join("index.redb");
    {
        let db = redb::Database::open(&index).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(OWNER_USAGE)
            .unwrap()
            .insert("alice", 49_999)
            .unwrap();
        w.commit().unwrap();
    }
    let ro = Store::open_read_only(tmp.path(), Config::default()).unwrap();
    let report = ro.verify(&()).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("\"alice\"") && p.contains("49999")),
        "{:?}",
        report.problems
    );
    drop(ro);
    // An old index: no usage tables at all.
    {
        let db = redb::Database::open(&index).unwrap();
        let w = db.begin_write().unwrap();
        w.delete_table(OWNER_USAGE).unwrap();
        w.commit().unwrap();
        let r = db.begin_read().unwrap();
        assert!(r.open_table(OWNER_USAGE).is_err());
    }
    let ro = Store::open_read_only(tmp.path(), Config::default()).unwrap();
    assert!(ro.verify(&()).unwrap().is_ok());
    drop(ro);
    let store = Store::open(tmp.path(), Config::default()).unwrap();
    assert_eq!(store.quota_status("alice").unwrap().used, 50_000);
    assert!(store.verify(&()).unwrap().is_ok());
}

/// `Store::batch_reserving`: a request's declared length is reserved before any content (the
/// whole of it, or at least the length less its overhead, or a refusal); the batch's puts
/// draw on it in turn; nothing is visible before the commit, and a dropped batch stores
/// nothing and gives everything back.
#[test]
fn a_batch_reserves_up_front_and_commits_whole_or_not_at_all() {
    let (_tmp, store, _clock) = clocked();
    user(&store, "u", Some(3_000_000), None, None);
    const SLACK: u64 = 262_144;

    let mut b = store.batch_reserving("u", Some(2_500_000), SLACK).unwrap();
    assert_eq!(b.reserved_up_front(), 2_500_000);
    assert_eq!(store.quota_reservations().by_owner["u"], 2_500_000);
    // Another request: not even its least content (1,000,000 - 256 KiB) fits beside it.
    let refused = store
        .batch_reserving("u", Some(1_000_000), SLACK)
        .err()
        .unwrap();
    assert!(matches!(refused, Error::QuotaExceeded(_)), "{refused}");
    // A borderline one (600,000 does not fit, 600,000 - 256 KiB does): the lower bound.
    let border = store.batch_reserving("u", Some(600_000), SLACK).unwrap();
    assert_eq!(border.reserved_up_front(), 600_000 - SLACK);
    drop(border);

    assert!(b.put(&random_bytes(1, 1_000_000)[..], &opts("u", "a.bin", None)));
    assert!(b.put(&random_bytes(2, 1_200_000)[..], &opts("u", "b.bin", None)));
    // Drew on the request's reservation: nothing grew.
    assert_eq!(store.quota_reservations().by_owner["u"], 2_500_000);
    assert_eq!(stored_bytes(&store, "u"), 0, "staged puts are not visible");
    drop(b);
    assert_eq!(stored_bytes(&store, "u"), 0);
    assert_eq!(store.stats().unwrap().files, 0);
    no_reservations(&store);

    let mut b = store.batch_reserving("u", Some(2_500_000), SLACK).unwrap();
    assert!(b.put(&random_bytes(1, 1_000_000)[..], &opts("u", "a.bin", None)));
    assert!(b.put(&random_bytes(2, 1_200_000)[..], &opts("u", "b.bin", None)));
    // A type the policy refuses fails alone.
    assert!(!b.put(&b"MZ\x90\x00"[..], &opts("u", "c.jpg", None)));
    let results = b.commit();
    assert_eq!(results.len(), 3);
    assert!(results[0].is_ok() && results[1].is_ok() && results[2].is_err());
    assert_eq!(stored_bytes(&store, "u"), 2_200_000);
    no_reservations(&store);

    // No declared length: the reservation grows with the content, and stops at the limit.
    let mut b = store.batch_reserving("u", None, SLACK).unwrap();
    assert_eq!(b.reserved_up_front(), 0);
    assert!(b.put(&random_bytes(3, 500_000)[..], &opts("u", "d.bin", None)));
    assert!(!b.put(&random_bytes(4, 500_000)[..], &opts("u", "e.bin", None)));
    let results = b.commit();
    assert!(matches!(results[1], Err(Error::QuotaExceeded(_))));
    assert_eq!(stored_bytes(&store, "u"), 2_700_000);
    no_reservations(&store);
}
