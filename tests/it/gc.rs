//! Garbage collection, compaction, purges and retention: space comes back, nothing live is
//! lost (also while puts race the collector), recover still works after compaction, and dry
//! runs change nothing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera::{Config, FileId, GcOptions, ListQuery, PutOptions, Store};

use crate::common::{TempStore, TestClock, random_bytes, text_bytes};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const HOUR: Duration = Duration::from_secs(60 * 60);

fn config(clock: &Arc<TestClock>) -> Config {
    Config {
        clock: clock.clone(),
        pack_target_size: 1 << 20,
        ..Config::default()
    }
}

fn new_clock() -> Arc<TestClock> {
    Arc::new(TestClock(AtomicI64::new(1_800_000_000_000)))
}

fn put(store: &Store, data: &[u8], key: &str) -> FileId {
    store.put(data, &PutOptions::key(key)).expect("put").file.id
}

/// Per file: deleted?, and (version, content) of every version.
type Snapshot = BTreeMap<FileId, (bool, Vec<(u32, Vec<u8>)>)>;

/// Every file (deleted ones too) with its flags and the content of every version.
fn snapshot(store: &Store) -> Snapshot {
    let mut out = BTreeMap::new();
    let mut q = ListQuery {
        include_deleted: true,
        limit: Some(1000),
        ..Default::default()
    };
    loop {
        let page = store.list(&q).unwrap();
        for f in &page.files {
            let mut versions = Vec::new();
            for v in store.versions(f.id).unwrap() {
                // Deleted files cannot be read; their versions' digests stand in.
                let mut data = v.blake3.clone().into_bytes();
                if !f.deleted {
                    data.clear();
                    std::io::Read::read_to_end(
                        &mut store.get_version(f.id, v.version).unwrap(),
                        &mut data,
                    )
                    .unwrap();
                }
                versions.push((v.version, data));
            }
            out.insert(f.id, (f.deleted, versions));
        }
        match page.next {
            Some(n) => q.after = Some(n),
            None => break,
        }
    }
    out
}

fn assert_verifies(store: &Store) {
    let v = store.verify(&()).unwrap();
    assert!(v.is_ok(), "verify: {v:#?}");
}

#[test]
fn delete_all_then_purge_and_gc_shrinks_to_an_empty_store() {
    let empty = {
        let t = TempStore::new();
        let clock = new_clock();
        let store = Store::create(t.path(), config(&clock)).unwrap();
        store.stats().unwrap().pack_bytes
    };
    let t = TempStore::new();
    let clock = new_clock();
    let store = Store::create(t.path(), config(&clock)).unwrap();
    let mut ids = Vec::new();
    for i in 0..12u64 {
        let key = format!("f{i}.bin");
        ids.push(put(
            &store,
            &random_bytes(i, 200_000 + i as usize * 1000),
            &key,
        ));
        // A second version sharing some chunks with the first.
        let mut v2 = random_bytes(i, 200_000 + i as usize * 1000);
        v2.extend_from_slice(&text_bytes(i, 50_000));
        put(&store, &v2, &key);
    }
    let full = store.stats().unwrap().pack_bytes;
    assert!(full > 2_000_000, "{full}");
    for id in &ids {
        store.delete(*id).unwrap();
    }
    // Within the 30-day grace nothing is purged; undelete is still possible.
    let early = store.purge_deleted(30 * DAY, false).unwrap();
    assert_eq!(early.files, 0);
    clock.advance(31 * DAY);
    let purged = store.purge_deleted(30 * DAY, false).unwrap();
    assert_eq!((purged.files, purged.versions), (12, 24));
    assert!(store.stat(ids[0]).is_err());

    // The chunks just reached zero: within the GC grace period nothing is swept.
    let young = store.gc(&GcOptions::default()).unwrap();
    assert_eq!(young.swept_chunks, 0);
    assert!(young.young > 0);
    clock.advance(2 * HOUR);
    let report = store.gc(&GcOptions::default()).unwrap();
    assert!(report.swept_chunks > 0, "{report:#?}");
    assert!(!report.packs_compacted.is_empty(), "{report:#?}");
    let after = store.stats().unwrap();
    assert_eq!((after.files, after.chunks), (0, 0));
    assert!(
        after.pack_bytes <= empty + 4096,
        "{} bytes left, an empty store has {empty}: {report:#?}",
        after.pack_bytes
    );
    assert_verifies(&store);
    drop(store);

    // Recover finds nothing to resurrect.
    let r = tessera::recover(t.path(), &config(&clock), &()).unwrap();
    assert_eq!((r.files, r.versions), (0, 0), "{r:#?}");
    let store = Store::open(t.path(), config(&clock)).unwrap();
    assert!(snapshot(&store).is_empty());
    assert_verifies(&store);
}

#[test]
fn dry_runs_change_nothing() {
    let t = TempStore::new();
    let clock = new_clock();
    let store = Store::create(t.path(), config(&clock)).unwrap();
    let keep = put(&store, &random_bytes(1, 300_000), "keep.bin");
    for v in 0..4 {
        put(&store, &random_bytes(100 + v, 100_000), "versions.bin");
    }
    let gone = put(&store, &random_bytes(2, 400_000), "gone.bin");
    store.delete(gone).unwrap();
    let doomed = put(&store, &random_bytes(3, 400_000), "doomed.bin");
    store.delete(doomed).unwrap();
    clock.advance(31 * DAY);
    // One purge for real, so GC has zero-ref chunks past their grace and packs over the
    // threshold; the other deleted file is left for the dry purge to find.
    store.undelete(gone).unwrap();
    store.purge_deleted(30 * DAY, false).unwrap();
    store.delete(gone).unwrap();
    clock.advance(31 * DAY);

    let before = store.debug_index_dump().unwrap();
    let files_before = snapshot(&store);
    let purge = store.purge_deleted(30 * DAY, true).unwrap();
    assert_eq!((purge.dry_run, purge.files), (true, 1), "{purge:#?}");
    let keep_last = store.keep_last(1, None, true).unwrap();
    assert_eq!(keep_last.versions, 3, "{keep_last:#?}");
    let gc = store
        .gc(&GcOptions {
            dry_run: true,
            ..Default::default()
        })
        .unwrap();
    assert!(
        gc.swept_chunks > 0 && !gc.packs_compacted.is_empty(),
        "{gc:#?}"
    );
    assert_eq!(store.debug_index_dump().unwrap(), before);
    assert_eq!(snapshot(&store), files_before);

    // The same jobs for real do change the index (so the comparison above can fail).
    store.keep_last(1, None, false).unwrap();
    store.gc(&GcOptions::default()).unwrap();
    assert_ne!(store.debug_index_dump().unwrap(), before);
    assert_eq!(store.read_all(keep).unwrap(), random_bytes(1, 300_000));
    assert_verifies(&store);
}

#[test]
fn recover_after_compaction_lists_the_same_files() {
    let t = TempStore::new();
    let clock = new_clock();
    let store = Store::create(t.path(), config(&clock)).unwrap();
    let a = put(&store, &text_bytes(1, 150_000), "a.txt");
    put(&store, &text_bytes(2, 160_000), "a.txt");
    let b = put(&store, &random_bytes(3, 120_000), "b.bin");
    store.delete(b).unwrap();
    let c = put(&store, &random_bytes(4, 90_000), "c.bin");
    store.delete(c).unwrap();
    store.undelete(c).unwrap();
    // Garbage: a big file, deleted and purged, fills most of the packs.
    for i in 0..3 {
        let big = put(
            &store,
            &random_bytes(50 + i, 700_000),
            &format!("big{i}.bin"),
        );
        store.delete(big).unwrap();
    }
    clock.advance(31 * DAY);
    store.undelete(b).unwrap();
    store.delete(b).unwrap();
    store.purge_deleted(30 * DAY, false).unwrap();
    assert!(
        store.stat(b).unwrap().deleted,
        "b was deleted again just now"
    );
    // Versions retention on a: only the newest stays.
    store.keep_last(1, None, false).unwrap();
    clock.advance(2 * HOUR);
    let report = store.gc(&GcOptions::default()).unwrap();
    assert!(report.packs_compacted.len() >= 2, "{report:#?}");
    assert!(report.records_copied > 0, "{report:#?}");
    // Files put after compaction land after the moved records.
    let d = put(&store, &random_bytes(5, 80_000), "d.bin");
    let before = snapshot(&store);
    assert_eq!(before.len(), 4);
    assert_eq!(before[&a].1.len(), 1);
    assert!(before.contains_key(&d));
    assert_verifies(&store);
    drop(store);

    let r = tessera::recover(t.path(), &config(&clock), &()).unwrap();
    assert!(r.problems.is_empty(), "{r:#?}");
    let store = Store::open(t.path(), config(&clock)).unwrap();
    assert_eq!(snapshot(&store), before);
    assert_verifies(&store);
    // And the collector still has nothing live to take.
    clock.advance(2 * HOUR);
    store.gc(&GcOptions::default()).unwrap();
    assert_eq!(snapshot(&store), before);
    assert_verifies(&store);
}

#[test]
fn keep_last_removes_old_versions_for_good() {
    let t = TempStore::new();
    let clock = new_clock();
    let store = Store::create(t.path(), config(&clock)).unwrap();
    let mut id = None;
    for v in 0..5 {
        id = Some(put(&store, &random_bytes(10 + v, 70_000), "doc.bin"));
    }
    let id = id.unwrap();
    let r = store.keep_last(2, None, false).unwrap();
    assert_eq!((r.files, r.versions), (1, 3), "{r:#?}");
    let versions: Vec<u32> = store
        .versions(id)
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(versions, vec![4, 5]);
    assert!(store.get_version(id, 1).is_err());
    // Other categories are not touched by a category rule.
    assert_eq!(
        store.keep_last(1, Some("images"), false).unwrap().versions,
        0
    );
    assert_verifies(&store);
    drop(store);
    tessera::recover(t.path(), &config(&clock), &()).unwrap();
    let store = Store::open(t.path(), config(&clock)).unwrap();
    let versions: Vec<u32> = store
        .versions(id)
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(versions, vec![4, 5]);
    assert_eq!(store.read_all(id).unwrap(), random_bytes(14, 70_000));
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

/// Puts that deduplicate against chunks the collector is freeing, while GC (no grace at all,
/// the most aggressive setting) and compaction run in a loop.
#[test]
fn racing_puts_never_lose_a_chunk_to_the_collector() {
    let t = TempStore::new();
    let store = Store::create(
        t.path(),
        Config {
            pack_target_size: 1 << 20,
            threads: 2,
            ..Config::default()
        },
    )
    .unwrap();
    // A small pool of contents: every put dedups against chunks others keep freeing.
    let pool: Vec<Vec<u8>> = (0..6).map(|i| random_bytes(900 + i, 150_000)).collect();
    let pool = Arc::new(pool);
    let stop = Arc::new(AtomicBool::new(false));
    let committed: Arc<Mutex<Vec<(FileId, usize)>>> = Arc::default();
    // (chunks swept, packs compacted, pinned chunks skipped) while the puts ran.
    let gc_work: Mutex<(u64, u64, u64)> = Mutex::default();
    let no_grace = GcOptions {
        grace: Duration::ZERO,
        batch: 16,
        ..Default::default()
    };

    std::thread::scope(|s| {
        // Churn: put, delete, purge — so chunks keep reaching zero references.
        for c in 0..2 {
            let (store, pool, stop) = (&store, &pool, &stop);
            s.spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let id = put(store, &pool[(n + c) % pool.len()], &format!("churn{c}.bin"));
                    store.delete(id).unwrap();
                    store.purge_deleted(Duration::ZERO, false).unwrap();
                    n += 1;
                }
            });
        }
        // The collector, in a loop.
        {
            let (store, stop, no_grace, work) = (&store, &stop, &no_grace, &gc_work);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let r = store.gc(no_grace).unwrap();
                    let mut w = work.lock().unwrap();
                    w.0 += r.swept_chunks;
                    w.1 += r.packs_compacted.len() as u64;
                    w.2 += r.pinned;
                }
            });
        }
        // Putters: most of what they put is read back, deleted and purged at once (so pool
        // contents keep cycling between referenced and free); at the end they keep one file
        // of every content. A put that lost a chunk to the sweep fails its commit or reads
        // back wrong.
        let putters: Vec<_> = (0..3)
            .map(|p| {
                let (store, pool, committed, stop) = (&store, &pool, &committed, &stop);
                s.spawn(move || {
                    // A failing putter must still stop the loops, or the scope never ends.
                    let _stop = StopOnDrop(stop);
                    for n in 0..60 {
                        let which = (p * 7 + n) % pool.len();
                        let id = put(store, &pool[which], &format!("tmp-{p}-{n}.bin"));
                        assert_eq!(&store.read_all(id).unwrap(), &pool[which]);
                        store.delete(id).unwrap();
                        store.purge_deleted(Duration::ZERO, false).unwrap();
                    }
                    for which in 0..pool.len() {
                        let id = put(store, &pool[which], &format!("keep-{p}-{which}.bin"));
                        committed.lock().unwrap().push((id, which));
                    }
                })
            })
            .collect();
        for p in putters {
            p.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });

    let (swept, compacted, pinned) = *gc_work.lock().unwrap();
    assert!(
        swept > 0 && compacted > 0,
        "the collector had nothing to race: {swept} {compacted}"
    );
    eprintln!("raced: {swept} chunks swept, {compacted} packs compacted, {pinned} pins honoured");
    let committed = committed.lock().unwrap().clone();
    assert_eq!(committed.len(), 18);
    for (id, which) in &committed {
        assert_eq!(&store.read_all(*id).unwrap(), &pool[*which], "file {id}");
    }
    assert_verifies(&store);
    // With everything quiet, one more pass frees the churn's leftovers and loses nothing.
    store.gc(&no_grace).unwrap();
    for (id, which) in &committed {
        assert_eq!(&store.read_all(*id).unwrap(), &pool[*which], "file {id}");
    }
    assert_verifies(&store);
    drop(store);
    let r = tessera::recover(t.path(), &Config::default(), &()).unwrap();
    assert!(r.problems.is_empty(), "{r:#?}");
    let store = Store::open(t.path(), Config::default()).unwrap();
    for (id, which) in &committed {
        assert_eq!(&store.read_all(*id).unwrap(), &pool[*which], "file {id}");
    }
}

/// Compaction never copies account events: it writes one snapshot of the accounts instead,
/// after every record it replaces. A pack holding a user's tokens and their revocation is
/// rewritten and deleted; `recover` then rebuilds the accounts from the snapshot and the
/// changes made after it, and the revoked token stays revoked.
#[test]
fn compaction_keeps_accounts_as_a_snapshot_and_revocations_hold() {
    use tessera::users::NewUser;
    let t = TempStore::new();
    let clock = new_clock();
    let store = Store::create(t.path(), config(&clock)).unwrap();
    let (_, alice) = store.user_add("alice", NewUser::default()).unwrap();
    let (_, bob_old) = store
        .user_add(
            "bob",
            NewUser {
                quota: Some(1 << 20),
                ..Default::default()
            },
        )
        .unwrap();
    store.user_revoke_tokens("bob").unwrap();
    let bob = store.user_new_token("bob").unwrap();
    store.org_quota_set("acme", Some(1 << 30)).unwrap();
    // Garbage around the account events, so their pack passes the threshold.
    let keep = put(&store, &random_bytes(1, 100_000), "keep.bin");
    let big = put(&store, &random_bytes(2, 800_000), "big.bin");
    store.delete(big).unwrap();
    clock.advance(31 * DAY);
    store.purge_deleted(30 * DAY, false).unwrap();
    clock.advance(2 * HOUR);
    let report = store.gc(&GcOptions::default()).unwrap();
    assert!(report.packs_compacted.contains(&1), "{report:#?}");
    assert!(!t.path().join("packs/00000001.pack").exists());
    assert_verifies(&store);
    // After the snapshot: more changes, replayed on top of it.
    store.user_revoke_tokens("alice").unwrap();
    let alice_new = store.user_new_token("alice").unwrap();
    let users = store.users().unwrap();
    drop(store);

    std::fs::remove_file(t.path().join("index.redb")).unwrap();
    let r = tessera::recover(t.path(), &config(&clock), &()).unwrap();
    assert!(r.problems.is_empty(), "{r:#?}");
    assert_eq!(r.accounts, 3, "the snapshot and the two changes after it");
    let store = Store::open(t.path(), config(&clock)).unwrap();
    assert_eq!(store.users().unwrap(), users);
    let who = |token: &str| store.authenticate(token).unwrap().map(|u| u.name);
    assert_eq!(who(&bob_old), None, "revoked before the compaction");
    assert_eq!(who(&alice), None, "revoked after the compaction");
    assert_eq!(who(&bob).as_deref(), Some("bob"));
    assert_eq!(who(&alice_new).as_deref(), Some("alice"));
    assert_eq!(store.user("bob").unwrap().quota, Some(1 << 20));
    let orgs = store.quota_orgs().unwrap();
    assert_eq!(
        orgs.iter().find(|o| o.org == "acme").and_then(|o| o.limit),
        Some(1 << 30)
    );
    assert_eq!(store.read_all(keep).unwrap(), random_bytes(1, 100_000));
    assert_verifies(&store);
}

/// The `pack_garbage` rows of the index, by pack.
fn pack_garbage(store: &Store) -> BTreeMap<u32, u64> {
    store
        .debug_index_dump()
        .unwrap()
        .lines()
        .filter_map(|l| {
            let mut it = l.strip_prefix("pack_garbage ")?.split(' ');
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .collect()
}

/// The journal keeps one live account snapshot: a compaction that writes a new one counts the
/// one it replaces as garbage of its pack (here a pack full of live data that is not rewritten),
/// and drops account events older than the latest snapshot without writing another. However
/// many cycles of changes and compactions, `recover` replays a snapshot and the few changes
/// after it.
#[test]
fn superseded_account_snapshots_are_garbage_and_the_journal_stays_small() {
    use tessera::users::NewUser;
    let t = TempStore::new();
    let clock = new_clock();
    let store = Store::create(t.path(), config(&clock)).unwrap();
    let no_grace = GcOptions {
        grace: Duration::ZERO,
        ..Default::default()
    };
    let churn = |i: u64| {
        let junk = put(&store, &random_bytes(100 + i, 400_000), "junk.bin");
        store.delete(junk).unwrap();
        store.purge_deleted(Duration::ZERO, false).unwrap();
        store.gc(&no_grace).unwrap()
    };
    store.user_add("alice", NewUser::default()).unwrap();
    let first = churn(0);
    assert_eq!(first.packs_compacted, vec![1], "{first:#?}");
    // The snapshot is in the active pack; live data fills it up behind it.
    let with_snapshot: u32 = std::fs::read_dir(t.path().join("packs"))
        .unwrap()
        .filter_map(|e| {
            e.unwrap()
                .file_name()
                .to_str()?
                .strip_suffix(".pack")?
                .parse()
                .ok()
        })
        .max()
        .unwrap();
    let keep = put(&store, &random_bytes(1, 1_500_000), "keep.bin");
    assert!(
        pack_garbage(&store).is_empty(),
        "{:?}",
        pack_garbage(&store)
    );

    for i in 1..12 {
        store
            .user_add(&format!("user{i}"), NewUser::default())
            .unwrap();
        let report = churn(i);
        assert!(!report.packs_compacted.is_empty(), "{report:#?}");
    }
    let garbage = pack_garbage(&store);
    let snapshot = garbage.get(&with_snapshot).copied().unwrap_or(0);
    assert!(
        snapshot > 0 && snapshot < 1000,
        "the first snapshot, in pack {with_snapshot}, counts as garbage: {garbage:?}"
    );
    let users = store.users().unwrap();
    drop(store);

    std::fs::remove_file(t.path().join("index.redb")).unwrap();
    let r = tessera::recover(t.path(), &config(&clock), &()).unwrap();
    assert!(r.problems.is_empty(), "{r:#?}");
    assert!(
        r.accounts <= 2,
        "a snapshot and at most the change after it: {r:#?}"
    );
    let store = Store::open(t.path(), config(&clock)).unwrap();
    assert_eq!(store.users().unwrap(), users);
    assert_eq!(store.read_all(keep).unwrap(), random_bytes(1, 1_500_000));
    assert_verifies(&store);
}
