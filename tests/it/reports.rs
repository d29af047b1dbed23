//! Reports and last-read tracking: reads move a file's last-read day (cheaply), the unread
//! report lists exactly the files not read for N days, the duplicates report's groups and
//! saved bytes match what was stored, the storage report sums to `stats`, and the admin
//! endpoints over a real socket (admins only, dry runs that change nothing).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tessera::users::NewUser;
use tessera::{Config, FileId, PutOptions, Store, UnreadQuery, UploadMeta};

use crate::common::TestClock;
use crate::common::{TempStore, random_bytes, text_bytes};
use crate::http::Service;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// Noon UTC, so moving by whole days never lands on a day boundary.
const START_MS: i64 = 1_800_000_000_000 - 1_800_000_000_000 % 86_400_000 + 43_200_000;

fn clock() -> Arc<TestClock> {
    Arc::new(TestClock(AtomicI64::new(START_MS)))
}

fn advance(c: &TestClock, d: Duration) {
    c.0.fetch_add(d.as_millis() as i64, Ordering::SeqCst);
}

fn config(c: &Arc<TestClock>) -> Config {
    Config {
        clock: c.clone(),
        ..Config::default()
    }
}

fn put_as(store: &Store, owner: &str, key: &str, data: &[u8]) -> FileId {
    let opts = PutOptions {
        owner: owner.into(),
        ..PutOptions::key(key)
    };
    store.put(data, &opts).expect("put").file.id
}

/// Every unread file for `days`, following the pages (of `page` files).
fn unread(store: &Store, days: u32, page: usize) -> BTreeSet<FileId> {
    let mut out = BTreeSet::new();
    let mut after = None;
    loop {
        let r = store
            .report_unread(&UnreadQuery {
                days,
                after,
                limit: Some(page),
                ..Default::default()
            })
            .unwrap();
        assert!(r.files.len() <= page);
        for f in &r.files {
            assert!(out.insert(f.id), "{} listed twice", f.id);
        }
        match r.next {
            Some(n) => after = Some(n.parse().unwrap()),
            None => return out,
        }
    }
}

#[test]
fn reads_move_last_read_a_day_at_a_time_without_writing_per_read() {
    let t = TempStore::new();
    let c = clock();
    let store = Store::create(
        t.path(),
        Config {
            access_flush_interval: Duration::from_secs(60),
            ..config(&c)
        },
    )
    .unwrap();
    let a = put_as(&store, "local", "a", &random_bytes(1, 5000));
    let b = put_as(&store, "local", "b", &random_bytes(2, 5000));
    assert_eq!(
        store.stat(a).unwrap().accessed_ms,
        START_MS,
        "last read starts at creation"
    );

    // The same day as the write: a read notes nothing and writes nothing.
    let before = store.debug_index_dump().unwrap();
    advance(&c, Duration::from_secs(3600));
    store.read_all(a).unwrap();
    store.flush().unwrap();
    assert_eq!(store.debug_index_dump().unwrap(), before);
    assert_eq!(store.stat(a).unwrap().accessed_ms, START_MS);

    // Three days later a read is noted in memory (and counts at once), not written.
    advance(&c, DAY * 3);
    let day3 = c.now();
    store.read_all(a).unwrap();
    assert_eq!(
        store.debug_index_dump().unwrap(),
        before,
        "a read opened a write"
    );
    assert_eq!(store.stat(a).unwrap().accessed_ms, day3);
    assert!(!unread(&store, 2, 10).contains(&a), "a noted read counts");
    advance(&c, Duration::from_secs(30));
    store.read_all(b).unwrap();
    assert_eq!(
        store.debug_index_dump().unwrap(),
        before,
        "a read opened a write"
    );

    // Once the oldest noted read is an interval old, the next read writes them all at once.
    advance(&c, Duration::from_secs(30));
    store.read_all(b).unwrap();
    let after = store.debug_index_dump().unwrap();
    assert_ne!(after, before, "the interval passed but nothing was written");
    // Further reads that day change nothing on disk.
    advance(&c, Duration::from_secs(3600));
    store.read_all(a).unwrap();
    store.read_all(b).unwrap();
    store.flush().unwrap();
    assert_eq!(store.debug_index_dump().unwrap(), after);
    drop(store);

    // Stored, day granularity: what the index has is the first read of that day.
    let store = Store::open(t.path(), config(&c)).unwrap();
    assert_eq!(store.stat(a).unwrap().accessed_ms, day3);
    assert_eq!(store.stat(b).unwrap().accessed_ms, day3 + 60_000);
    drop(store);

    // A read-only store records nothing.
    advance(&c, DAY * 2);
    let ro = Store::open_read_only(t.path(), config(&c)).unwrap();
    ro.read_all(a).unwrap();
    assert_eq!(ro.stat(a).unwrap().accessed_ms, day3);
    drop(ro);
    let store = Store::open(t.path(), config(&c)).unwrap();
    assert_eq!(store.stat(a).unwrap().accessed_ms, day3);
}

trait Now {
    fn now(&self) -> i64;
}

impl Now for TestClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[test]
fn unread_report_lists_exactly_the_files_not_read_for_n_days() {
    let t = TempStore::new();
    let c = clock();
    let store = Store::create(t.path(), config(&c)).unwrap();
    let ids: Vec<FileId> = (0..6)
        .map(|i| {
            let owner = if i % 2 == 0 { "alice" } else { "bob" };
            put_as(&store, owner, &format!("f{i}"), &random_bytes(i, 3000))
        })
        .collect();
    let [f0, f1, f2, f3, f4, f5] = ids[..] else {
        unreachable!()
    };
    advance(&c, DAY * 20);
    store.read_all(f0).unwrap();
    advance(&c, DAY * 40); // day 60
    store.read_all(f1).unwrap();
    advance(&c, DAY * 35); // day 95
    let young = put_as(&store, "alice", "young", &random_bytes(99, 3000));
    // A new version is a write: the file counts as read then.
    store
        .put(
            &random_bytes(98, 3000)[..],
            &PutOptions {
                owner: "bob".into(),
                ..PutOptions::key("f3")
            },
        )
        .unwrap();
    store.delete(f4).unwrap();
    advance(&c, DAY * 5); // day 100

    let all: BTreeSet<FileId> = [f0, f1, f2, f5].into();
    assert_eq!(
        unread(&store, 100, 100),
        [f2, f5].into(),
        "day 0 is 100 days ago"
    );
    assert_eq!(unread(&store, 101, 100), BTreeSet::new());
    assert_eq!(unread(&store, 90, 100), [f2, f5].into());
    assert_eq!(unread(&store, 80, 100), [f0, f2, f5].into());
    assert_eq!(unread(&store, 40, 100), all);
    assert_eq!(
        unread(&store, 40, 1),
        all,
        "pages of one give the same files"
    );
    assert_eq!(unread(&store, 5, 3), [f0, f1, f2, f3, f5, young].into());
    assert_eq!(
        unread(&store, 6, 3),
        all,
        "written on day 95: not unread for 6 days"
    );
    assert!(
        !unread(&store, 1, 100).contains(&f4),
        "deleted files are purge's business"
    );

    let bob = store
        .report_unread(&UnreadQuery {
            days: 40,
            owner: Some("bob".into()),
            ..Default::default()
        })
        .unwrap();
    let listed: Vec<FileId> = bob.files.iter().map(|f| f.id).collect();
    assert_eq!(listed, vec![f1, f5]);
    assert_eq!(bob.files[1].size, 3000);
    assert_eq!(bob.files[1].name, "f5");
    assert_eq!(bob.files[1].last_read_ms, START_MS);
    assert_eq!(
        bob.files[0].last_read_ms,
        START_MS + 60 * DAY.as_millis() as i64
    );

    let err = store.report_unread(&UnreadQuery::default()).unwrap_err();
    assert!(matches!(err, tessera::Error::InvalidInput(_)), "{err}");

    // Reads survive a reopen; recover loses them and restarts every file's clock.
    drop(store);
    let store = Store::open(t.path(), config(&c)).unwrap();
    assert_eq!(unread(&store, 80, 100), [f0, f2, f5].into());
    drop(store);
    tessera::recover(t.path(), &config(&c), &()).unwrap();
    let store = Store::open(t.path(), config(&c)).unwrap();
    let r = store
        .report_unread(&UnreadQuery {
            days: 1,
            ..Default::default()
        })
        .unwrap();
    assert!(r.files.is_empty(), "{r:?}");
    assert_eq!(r.reads_since_ms, Some(c.now()));
    advance(&c, DAY);
    let expected: BTreeSet<FileId> = [f0, f1, f2, f3, f5, young].into();
    assert_eq!(unread(&store, 1, 100), expected);
}

#[test]
fn duplicates_report_groups_identical_files_and_counts_what_dedup_saves() {
    let t = TempStore::new();
    let c = clock();
    let store = Store::create(t.path(), config(&c)).unwrap();
    // Each content is below the smallest chunk, so it is one chunk: unique bytes are exactly
    // the distinct contents.
    let a = random_bytes(1, 10_000);
    let b = random_bytes(2, 5_000);
    let u = random_bytes(3, 7_000);
    let d = random_bytes(4, 9_000);
    let a_ids = [
        put_as(&store, "alice", "a1", &a),
        put_as(&store, "bob", "a2", &a),
        put_as(&store, "bob", "a3", &a),
    ];
    let b_ids = [
        put_as(&store, "alice", "b1", &b),
        put_as(&store, "alice", "b2", &b),
    ];
    put_as(&store, "alice", "u", &u);
    // Was `a`, is `d` now: only the current version counts.
    put_as(&store, "carol", "moved", &a);
    put_as(&store, "carol", "moved", &d);

    let logical = (4 * a.len() + 2 * b.len() + u.len() + d.len()) as u64;
    let unique = (a.len() + b.len() + u.len() + d.len()) as u64;
    let check = |store: &Store| {
        let r = store.report_duplicates(None).unwrap();
        assert_eq!(r.groups_total, 2);
        assert_eq!(r.duplicate_files, 3);
        assert_eq!(
            r.file_level_saved_bytes,
            2 * a.len() as u64 + b.len() as u64
        );
        assert_eq!(r.logical_bytes, logical);
        assert_eq!(r.unique_bytes, unique);
        assert_eq!(r.chunk_level_saved_bytes, logical - unique);
        let s = store.stats().unwrap();
        assert_eq!(r.stored_bytes, s.stored_bytes);
        assert_eq!(
            r.compression_saved_bytes,
            s.unique_bytes as i64 - s.stored_bytes as i64
        );
        // Largest saving first.
        let g = &r.groups[0];
        assert_eq!(g.blake3, blake3::hash(&a).to_hex().to_string());
        assert_eq!((g.count, g.size), (3, a.len() as u64));
        assert_eq!(g.saved_bytes, 2 * a.len() as u64);
        let ids: Vec<FileId> = g.files.iter().map(|f| f.id).collect();
        let mut want = a_ids.to_vec();
        want.sort();
        let mut got = ids.clone();
        got.sort();
        assert_eq!(got, want);
        let g = &r.groups[1];
        assert_eq!((g.count, g.saved_bytes), (2, b.len() as u64));
        assert_eq!(
            g.files.iter().map(|f| f.id).collect::<BTreeSet<_>>(),
            b_ids.into()
        );
    };
    check(&store);

    let top = store.report_duplicates(Some(1)).unwrap();
    assert_eq!(top.groups.len(), 1);
    assert_eq!(top.groups[0].count, 3);
    assert_eq!(
        top.groups_total, 2,
        "the limit lists fewer groups, counts all"
    );
    assert!(store.report_duplicates(Some(0)).is_err());

    // The grouping is derived from the versions: recover rebuilds the same report.
    drop(store);
    tessera::recover(t.path(), &config(&c), &()).unwrap();
    let store = Store::open(t.path(), config(&c)).unwrap();
    check(&store);

    // A deleted copy leaves its group; a purged one leaves the table.
    store.delete(b_ids[0]).unwrap();
    let r = store.report_duplicates(None).unwrap();
    assert_eq!((r.groups_total, r.duplicate_files), (1, 2));
    advance(&c, DAY * 31);
    store.purge_deleted(DAY * 30, false).unwrap();
    store.delete(a_ids[2]).unwrap();
    let r = store.report_duplicates(None).unwrap();
    assert_eq!((r.groups_total, r.duplicate_files), (1, 1));
    assert_eq!(r.file_level_saved_bytes, a.len() as u64);
    store.undelete(a_ids[2]).unwrap();
    assert_eq!(store.report_duplicates(None).unwrap().duplicate_files, 2);
    // verify cross-checks the content table against every file's current version.
    let v = store.verify(&()).unwrap();
    assert!(v.is_ok(), "{v:?}");
}

#[test]
fn storage_report_sums_to_the_store_totals() {
    let t = TempStore::new();
    let c = clock();
    let store = Store::create(t.path(), config(&c)).unwrap();
    store
        .user_add(
            "alice",
            NewUser {
                tier: Some("pro".into()),
                ..Default::default()
            },
        )
        .unwrap();
    let doc = text_bytes(1, 20_000);
    put_as(&store, "alice", "notes.txt", &doc);
    put_as(&store, "alice", "notes.txt", &text_bytes(2, 30_000));
    put_as(&store, "alice", "blob", &random_bytes(3, 4_000));
    put_as(&store, "bob", "copy.txt", &doc);
    let gone = put_as(&store, "bob", "gone", &random_bytes(4, 6_000));
    store.delete(gone).unwrap();

    let r = store.report_storage().unwrap();
    let s = store.stats().unwrap();
    let sum = |it: &mut dyn Iterator<Item = tessera::Usage>| {
        it.fold((0, 0, 0, 0), |acc, u| {
            (
                acc.0 + u.files + u.deleted_files,
                acc.1 + u.versions,
                acc.2 + u.logical_bytes,
                acc.3 + u.current_bytes,
            )
        })
    };
    let totals = (
        s.files,
        s.versions,
        s.logical_bytes,
        30_000 + 4_000 + 20_000,
    );
    assert_eq!(sum(&mut r.by_category.iter().map(|c| c.usage)), totals);
    assert_eq!(sum(&mut r.by_owner.iter().map(|o| o.usage)), totals);
    assert_eq!(sum(&mut r.by_account_tier.iter().map(|t| t.usage)), totals);
    assert_eq!(sum(&mut r.by_tier.iter().map(|t| t.usage)), totals);
    assert_eq!(sum(&mut std::iter::once(r.totals)), totals);
    assert_eq!((s.files, s.versions), (4, 5));

    let alice = r.by_owner.iter().find(|o| o.owner == "alice").unwrap();
    assert_eq!(alice.account_tier.as_deref(), Some("pro"));
    assert_eq!(
        (
            alice.usage.files,
            alice.usage.versions,
            alice.usage.logical_bytes
        ),
        (2, 3, 54_000)
    );
    let bob = r.by_owner.iter().find(|o| o.owner == "bob").unwrap();
    assert_eq!(bob.account_tier, None);
    assert_eq!((bob.usage.files, bob.usage.deleted_files), (1, 1));
    assert_eq!(bob.usage.current_bytes, 20_000);
    let docs = r
        .by_category
        .iter()
        .find(|c| c.category == "documents")
        .unwrap();
    assert_eq!((docs.usage.files, docs.usage.logical_bytes), (2, 70_000));
    let tiers: Vec<&str> = r
        .by_account_tier
        .iter()
        .map(|t| t.account_tier.as_str())
        .collect();
    assert_eq!(tiers, ["none", "pro"]);
    assert_eq!(r.by_tier.len(), 1);
    assert_eq!(r.by_tier[0].tier, "hot");
    assert_eq!(r.by_tier[0].unique_bytes, s.unique_bytes);
    assert_eq!(r.by_tier[0].stored_bytes, s.stored_bytes);
}

// ---------------------------------------------------------------- admin endpoints

fn call(svc: &Service, method: &str, path: &str, token: Option<&str>) -> (StatusCode, Value) {
    let url = format!("{}{path}", svc.url);
    let r = match method {
        "GET" => svc.http.get(url),
        _ => svc.http.post(url),
    };
    let r = match token {
        Some(t) => r.bearer_auth(t),
        None => r,
    };
    let r = r.send().unwrap();
    let status = r.status();
    (status, r.json().unwrap_or(Value::Null))
}

const ENDPOINTS: [(&str, &str); 6] = [
    ("GET", "/api/admin/cleanup/orphaned?days=90"),
    ("GET", "/api/admin/cleanup/duplicates"),
    ("POST", "/api/admin/cleanup/deleted?days=30&dry_run=true"),
    ("POST", "/api/admin/cleanup/temp?dry_run=true"),
    ("POST", "/api/admin/gc?dry_run=true"),
    ("GET", "/api/admin/reports/storage"),
];

#[test]
fn admin_cleanup_endpoints_need_an_admin_and_dry_runs_change_nothing() {
    let svc = Service::start();
    let before = svc.store.debug_index_dump().unwrap();
    for (m, p) in ENDPOINTS {
        let (s, v) = call(&svc, m, p, Some(&svc.alice));
        assert_eq!(s, StatusCode::FORBIDDEN, "{m} {p}: {v}");
        assert_eq!(v["error"], "forbidden", "{v}");
        assert!(v["message"].is_string());
        let (s, _) = call(&svc, m, p, None);
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{m} {p}");
    }
    assert_eq!(svc.store.debug_index_dump().unwrap(), before);

    let data = random_bytes(7, 8_000);
    let one = svc.put(&svc.alice, "one.bin", &data);
    let two = svc.put(&svc.bob, "two.bin", &data);
    let three = svc.put(&svc.alice, "three.bin", &random_bytes(8, 6_000));

    // Orphaned: nothing is unread yet; 91 days later all three are.
    let (s, v) = call(&svc, "GET", ENDPOINTS[0].1, Some(&svc.admin));
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["files"].as_array().unwrap().len(), 0, "{v}");
    advance(&svc.clock, DAY * 91);
    let read = svc
        .get(&format!("/api/files/{three}"), Some(&svc.alice))
        .send()
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    read.bytes().unwrap();
    let (_, v) = call(&svc, "GET", ENDPOINTS[0].1, Some(&svc.admin));
    let ids: BTreeSet<&str> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [one.as_str(), two.as_str()].into(), "{v}");
    let (_, v) = call(
        &svc,
        "GET",
        "/api/admin/cleanup/orphaned?days=90&owner=bob",
        Some(&svc.admin),
    );
    assert_eq!(v["files"][0]["id"], two.as_str());
    assert_eq!(v["files"][0]["size"], 8_000);
    for bad in ["days=0", "days=ninety", "dayz=90", "limit=0", "after=nope"] {
        let (s, v) = call(
            &svc,
            "GET",
            &format!("/api/admin/cleanup/orphaned?{bad}"),
            Some(&svc.admin),
        );
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert!(v["error"].is_string() && v["message"].is_string(), "{v}");
    }

    // Duplicates.
    let (s, v) = call(&svc, "GET", ENDPOINTS[1].1, Some(&svc.admin));
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["groups_total"], 1);
    assert_eq!(v["file_level_saved_bytes"], 8_000);
    assert_eq!(v["groups"][0]["count"], 2);

    // Storage.
    let (s, v) = call(&svc, "GET", ENDPOINTS[5].1, Some(&svc.admin));
    assert_eq!(s, StatusCode::OK, "{v}");
    let stats = svc.store.stats().unwrap();
    assert_eq!(v["totals"]["logical_bytes"], stats.logical_bytes);
    assert_eq!(v["by_tier"][0]["tier"], "hot");
    let alice = v["by_owner"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["owner"] == "alice")
        .unwrap();
    assert_eq!(alice["files"], 2);

    // Deleted: a dry run reports the purge and changes nothing; the real one purges.
    svc.store.delete(one.parse().unwrap()).unwrap();
    advance(&svc.clock, DAY * 31);
    svc.store.flush().unwrap();
    let before = svc.store.debug_index_dump().unwrap();
    let (s, v) = call(&svc, "POST", ENDPOINTS[2].1, Some(&svc.admin));
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["dry_run"].as_bool(), v["files"].as_u64()),
        (Some(true), Some(1)),
        "{v}"
    );
    assert_eq!(svc.store.debug_index_dump().unwrap(), before);
    let (s, v) = call(
        &svc,
        "POST",
        "/api/admin/cleanup/deleted?days=32",
        Some(&svc.admin),
    );
    assert_eq!((s, v["files"].as_u64()), (StatusCode::OK, Some(0)), "{v}");
    let (s, v) = call(
        &svc,
        "POST",
        "/api/admin/cleanup/deleted?days=30",
        Some(&svc.admin),
    );
    assert_eq!((s, v["files"].as_u64()), (StatusCode::OK, Some(1)), "{v}");
    assert!(svc.store.stat(one.parse().unwrap()).is_err(), "purged");

    // GC: the purged file's chunks are garbage; a dry run sweeps nothing.
    let before = svc.store.debug_index_dump().unwrap();
    let (s, v) = call(
        &svc,
        "POST",
        "/api/admin/gc?dry_run=true&grace_s=0",
        Some(&svc.admin),
    );
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(svc.store.debug_index_dump().unwrap(), before);
    let (s, v) = call(&svc, "POST", "/api/admin/gc?threshold=2", Some(&svc.admin));
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = call(&svc, "POST", "/api/admin/gc?dry_rn=true", Some(&svc.admin));
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "a typo must not run the real job: {v}"
    );
    assert_eq!(svc.store.debug_index_dump().unwrap(), before);
}

#[test]
fn admin_gc_and_temp_cleanup_reclaim_what_their_dry_runs_report() {
    let svc = Service::start();
    // Garbage: a file deleted and purged through the library.
    let id = svc.put(&svc.alice, "big.bin", &random_bytes(9, 200_000));
    svc.store.delete(id.parse().unwrap()).unwrap();
    svc.store.purge_deleted(Duration::ZERO, false).unwrap();
    let before = svc.store.debug_index_dump().unwrap();
    let (s, dry) = call(
        &svc,
        "POST",
        "/api/admin/gc?dry_run=true&grace_s=0",
        Some(&svc.admin),
    );
    assert_eq!(s, StatusCode::OK, "{dry}");
    assert_eq!(dry["dry_run"], true);
    assert!(dry["swept_chunks"].as_u64().unwrap() > 0, "{dry}");
    assert_eq!(svc.store.debug_index_dump().unwrap(), before);
    let (s, real) = call(&svc, "POST", "/api/admin/gc?grace_s=0", Some(&svc.admin));
    assert_eq!(s, StatusCode::OK, "{real}");
    assert_eq!(real["swept_chunks"], dry["swept_chunks"], "{real}");
    assert_eq!(real["swept_bytes"], dry["swept_bytes"]);
    assert_ne!(svc.store.debug_index_dump().unwrap(), before);

    // Temp: one expired session with staged bytes, one live one, one orphan staging file.
    let meta = UploadMeta {
        key: Some("t".into()),
        ..Default::default()
    };
    let stale = svc.store.upload_create("alice", Some(1000), meta).unwrap();
    svc.store
        .upload_append(&stale.id, 0, &random_bytes(10, 400)[..], None)
        .unwrap();
    advance(&svc.clock, DAY * 2);
    let live = svc
        .store
        .upload_create("alice", Some(1000), UploadMeta::default())
        .unwrap();
    let uploads = svc.store.dir().join("uploads");
    let orphan = uploads.join(format!("{}.part", tessera::FileId::new()));
    std::fs::write(&orphan, vec![1u8; 300]).unwrap();
    let staged = |name: &str| uploads.join(format!("{name}.part")).exists();

    let before = svc.store.debug_index_dump().unwrap();
    let (s, v) = call(&svc, "POST", ENDPOINTS[3].1, Some(&svc.admin));
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["dry_run"], true);
    assert_eq!(
        (v["expired_sessions"].as_u64(), v["orphan_files"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    assert_eq!(v["bytes_freed"], 700);
    assert_eq!(svc.store.debug_index_dump().unwrap(), before);
    assert!(staged(&stale.id) && orphan.exists());

    let (s, v) = call(&svc, "POST", "/api/admin/cleanup/temp", Some(&svc.admin));
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["dry_run"].as_bool(), v["bytes_freed"].as_u64()),
        (Some(false), Some(700))
    );
    assert!(!staged(&stale.id) && !orphan.exists());
    assert!(staged(&live.id), "a live session is kept");
    assert_eq!(svc.store.list_uploads(None).unwrap().len(), 1);
}

// ---------------------------------------------------------------- CLI

fn tessera(store: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("TESSERA_STORE")
        .env_remove("TESSERA_OWNER")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run tessera")
}

fn tessera_json(store: &std::path::Path, args: &[&str]) -> Value {
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
fn cli_reports_as_json_and_tables() {
    let t = TempStore::new();
    let store = Store::create(t.path(), Config::default()).unwrap();
    let same = random_bytes(5, 12_000);
    put_as(&store, "alice", "x", &same);
    put_as(&store, "bob", "y", &same);
    put_as(&store, "bob", "z", &random_bytes(6, 3_000));
    drop(store);
    let dir = t.path();

    let d = tessera_json(&dir, &["report", "duplicates"]);
    assert_eq!(d["groups_total"], 1, "{d}");
    assert_eq!(d["file_level_saved_bytes"], 12_000);
    assert_eq!(d["groups"][0]["files"].as_array().unwrap().len(), 2);

    let s = tessera_json(&dir, &["report", "storage"]);
    let stats = tessera_json(&dir, &["stats"]);
    assert_eq!(s["totals"]["logical_bytes"], stats["logical_bytes"], "{s}");
    assert_eq!(s["by_owner"].as_array().unwrap().len(), 2);

    // Just written: nothing is unread for a day.
    let u = tessera_json(&dir, &["report", "unread", "--days", "1"]);
    assert_eq!(u["files"].as_array().unwrap().len(), 0, "{u}");
    let out = tessera(&dir, &["report", "unread", "--days", "0"]);
    assert_eq!(out.status.code(), Some(2), "days must be at least 1");

    let out = tessera(&dir, &["report", "storage"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("CATEGORY") && text.contains("alice") && text.contains("hot"),
        "{text}"
    );
    let out = tessera(&dir, &["report", "duplicates"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("2 × ") && text.contains(&blake3::hash(&same).to_hex().to_string()),
        "{text}"
    );
}
