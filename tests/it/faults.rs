//! Fault injection at the pack I/O seam: writes that fail with ENOSPC part-way (a torn write)
//! and syncs that fail. Each failure is a clear error, commits nothing, and leaves a store that
//! verifies, keeps working once the fault clears, and reopens intact — a compaction cut short
//! between its batches included.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};

use tessera::pack::FsPackStorage;
use tessera::pack::storage::{PackBytes, PackFile, PackStorage};
use tessera::{Config, Error, PutOptions, Store};

use crate::common::{TempStore, random_bytes};

/// Shared switches of the fault injector.
#[derive(Default)]
pub struct Faults {
    /// Bytes writes may still write before failing with ENOSPC; negative means no limit.
    pub write_budget: AtomicI64,
    /// This many upcoming syncs fail with EIO.
    pub failing_syncs: AtomicU32,
}

impl Faults {
    pub fn new() -> Arc<Self> {
        let f = Faults::default();
        f.write_budget.store(-1, Ordering::SeqCst);
        Arc::new(f)
    }
}

/// A `PackStorage` that passes everything to the real one unless a fault is armed.
pub struct FaultyStorage {
    inner: FsPackStorage,
    faults: Arc<Faults>,
}

impl FaultyStorage {
    /// The real storage of the store in `dir`, behind `faults`.
    pub fn new(dir: &std::path::Path, faults: Arc<Faults>) -> Self {
        FaultyStorage {
            inner: FsPackStorage::new(dir.join("packs")).unwrap(),
            faults,
        }
    }
}

struct FaultyFile {
    inner: Arc<dyn PackFile>,
    faults: Arc<Faults>,
}

impl PackStorage for FaultyStorage {
    fn list(&self) -> io::Result<Vec<u32>> {
        self.inner.list()
    }
    fn create(&self, id: u32) -> io::Result<Arc<dyn PackFile>> {
        let inner = self.inner.create(id)?;
        Ok(Arc::new(FaultyFile {
            inner,
            faults: self.faults.clone(),
        }))
    }
    fn open(&self, id: u32) -> io::Result<Arc<dyn PackFile>> {
        let inner = self.inner.open(id)?;
        Ok(Arc::new(FaultyFile {
            inner,
            faults: self.faults.clone(),
        }))
    }
    fn map(&self, id: u32) -> io::Result<PackBytes> {
        self.inner.map(id)
    }
    fn remove(&self, id: u32) -> io::Result<()> {
        self.inner.remove(id)
    }
    fn describe(&self, id: u32) -> String {
        self.inner.describe(id)
    }
}

impl PackFile for FaultyFile {
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let budget = self.faults.write_budget.load(Ordering::SeqCst);
        if budget >= 0 && buf.len() as i64 > budget {
            // A torn write: what fits goes to disk, then the disk is full.
            self.inner.write_at(offset, &buf[..budget as usize])?;
            self.faults.write_budget.store(0, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        if budget >= 0 {
            self.faults
                .write_budget
                .fetch_sub(buf.len() as i64, Ordering::SeqCst);
        }
        self.inner.write_at(offset, buf)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn sync(&self) -> io::Result<()> {
        let fail = self
            .faults
            .failing_syncs
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        self.inner.sync()
    }
    fn truncate(&self, len: u64) -> io::Result<()> {
        self.inner.truncate(len)
    }
}

fn open_faulty(t: &TempStore, config: Config) -> (Store, Arc<Faults>) {
    let faults = Faults::new();
    let storage = FaultyStorage::new(&t.path(), faults.clone());
    let store = Store::open_with_storage(t.path(), config, Arc::new(storage)).unwrap();
    (store, faults)
}

#[test]
fn enospc_during_a_put_is_a_clear_error_and_loses_nothing() {
    let t = TempStore::new();
    drop(t.create());
    let (store, faults) = open_faulty(&t, Config::default());
    let a = random_bytes(1, 500_000);
    let a_id = store.put(&a[..], &PutOptions::key("a")).unwrap().file.id;

    faults.write_budget.store(150_000, Ordering::SeqCst);
    let err = store
        .put(&random_bytes(2, 1_000_000)[..], &PutOptions::key("b"))
        .unwrap_err();
    assert!(err.is_disk_full(), "{err}");
    assert!(
        err.to_string().contains(".pack"),
        "error should name the pack: {err}"
    );
    assert!(matches!(
        store.resolve_key("local", "b"),
        Err(Error::NotFound { .. })
    ));
    assert_eq!(store.read_all(a_id).unwrap(), a);
    assert!(store.verify(&()).unwrap().is_ok());

    faults.write_budget.store(-1, Ordering::SeqCst);
    let c = random_bytes(3, 700_000);
    let c_id = store.put(&c[..], &PutOptions::key("c")).unwrap().file.id;
    drop(store);

    let store = t.open();
    let report = store.verify(&()).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(store.read_all(a_id).unwrap(), a);
    assert_eq!(store.read_all(c_id).unwrap(), c);
    assert!(matches!(
        store.resolve_key("local", "b"),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn a_write_failing_at_any_point_leaves_a_consistent_store() {
    let t = TempStore::new();
    let config = Config {
        pack_target_size: 1 << 20,
        ..Default::default()
    };
    drop(Store::create(t.path(), config.clone()).unwrap());
    let (store, faults) = open_faulty(&t, config.clone());
    let base = random_bytes(10, 300_000);
    let base_id = store
        .put(&base[..], &PutOptions::key("base"))
        .unwrap()
        .file
        .id;

    // Budgets from 0 up past the whole put (3 MiB over 1 MiB packs): failures land in chunk
    // records, pack headers after a roll, and the manifest.
    let data = random_bytes(11, 3 << 20);
    let mut failed = 0;
    for (n, budget) in (0..3_300_000i64)
        .step_by(137_017)
        .chain([0, 1, 63, 64, 65, 116])
        .enumerate()
    {
        faults.write_budget.store(budget, Ordering::SeqCst);
        let key = format!("try{n}");
        let outcome = store.put(&data[..], &PutOptions::key(&key));
        faults.write_budget.store(-1, Ordering::SeqCst);
        match outcome {
            Ok(r) => assert_eq!(store.read_all(r.file.id).unwrap(), data),
            Err(e) => {
                failed += 1;
                assert!(e.is_disk_full(), "budget {budget}: {e}");
                assert!(matches!(
                    store.resolve_key("local", &key),
                    Err(Error::NotFound { .. })
                ));
            }
        }
        let report = store.verify(&()).unwrap();
        assert!(report.is_ok(), "budget {budget}: {report:?}");
        assert_eq!(store.read_all(base_id).unwrap(), base);
    }
    assert!(failed > 10, "only {failed} puts failed");
    drop(store);
    let store = Store::open(t.path(), config).unwrap();
    assert!(store.verify(&()).unwrap().is_ok());
    assert_eq!(store.read_all(base_id).unwrap(), base);
}

#[test]
fn a_failed_sync_commits_nothing_and_recover_does_not_replay_it() {
    let t = TempStore::new();
    drop(t.create());
    let (store, faults) = open_faulty(&t, Config::default());
    let a = random_bytes(20, 200_000);
    let a_id = store.put(&a[..], &PutOptions::key("a")).unwrap().file.id;

    faults.failing_syncs.store(1, Ordering::SeqCst);
    let err = store
        .put(&random_bytes(21, 200_000)[..], &PutOptions::key("b"))
        .unwrap_err();
    assert!(err.to_string().contains("syncing"), "{err}");
    assert!(matches!(
        store.resolve_key("local", "b"),
        Err(Error::NotFound { .. })
    ));
    // A later commit makes the failed put's bytes part of the committed length; its manifest
    // must still never come back.
    let c = random_bytes(22, 100_000);
    store.put(&c[..], &PutOptions::key("c")).unwrap();
    assert!(store.verify(&()).unwrap().is_ok());
    drop(store);

    std::fs::remove_file(t.path().join("index.redb")).unwrap();
    let report = tessera::recover(t.path(), &Config::default(), &()).unwrap();
    assert_eq!(report.revoked, 1, "{report:?}");
    assert_eq!(report.versions, 2);
    let store = t.open();
    assert!(matches!(
        store.resolve_key("local", "b"),
        Err(Error::NotFound { .. })
    ));
    assert_eq!(store.read_all(a_id).unwrap(), a);
    assert!(store.verify(&()).unwrap().is_ok());
}

#[test]
fn a_compaction_cut_short_between_batches_is_consistent_and_the_next_run_finishes_it() {
    let t = TempStore::new();
    drop(t.create());
    let (store, faults) = open_faulty(&t, Config::default());
    let files: Vec<(tessera::FileId, Vec<u8>)> = (0..10)
        .map(|i| {
            let data = random_bytes(40 + i, 400_000);
            let id = store
                .put(&data[..], &PutOptions::key(format!("f{i}")))
                .unwrap()
                .file
                .id;
            (id, data)
        })
        .collect();
    for (id, _) in &files[..4] {
        store.delete(*id).unwrap();
    }
    store
        .purge_deleted(std::time::Duration::ZERO, false)
        .unwrap();
    let kept = &files[4..];
    let gc = tessera::GcOptions {
        grace: std::time::Duration::ZERO,
        batch: 4,
        ..Default::default()
    };

    // The disk fills half-way through copying the live chunks (about 2.4 MB, 4 chunks a
    // batch): several batches have committed when the append fails.
    faults.write_budget.store(1_200_000, Ordering::SeqCst);
    let err = store.gc(&gc).unwrap_err();
    assert!(err.to_string().contains("No space"), "{err}");
    faults.write_budget.store(-1, Ordering::SeqCst);
    assert!(store.verify(&()).unwrap().is_ok());
    for (id, data) in kept {
        assert_eq!(&store.read_all(*id).unwrap(), data);
    }
    // Some chunks live at their copies now and the old pack counts them as garbage: it is
    // still (more) due for compaction.
    let due = store
        .gc(&tessera::GcOptions {
            dry_run: true,
            ..gc.clone()
        })
        .unwrap();
    // (the first pack, where everything was written; packs are numbered from 1)
    assert_eq!(due.packs_compacted, vec![1], "{due:#?}");
    // The batches that committed are in the index: the new pack survives a reopen (copies
    // that never committed would be cut away).
    drop(store);
    let store = t.open();
    assert!(store.open_report().removed.is_empty());
    assert_eq!(store.stats().unwrap().packs, 2);

    // A store rebuilt from its packs now sees both copies of the moved chunks.
    let copy = tempfile::tempdir().unwrap();
    drop(store);
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(t.path())
        .arg(copy.path().join("s"))
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::remove_file(copy.path().join("s/index.redb")).unwrap();
    tessera::recover(copy.path().join("s"), &Config::default(), &()).unwrap();
    let rebuilt = Store::open(copy.path().join("s"), Config::default()).unwrap();
    assert!(rebuilt.verify(&()).unwrap().is_ok());
    for (id, data) in kept {
        assert_eq!(&rebuilt.read_all(*id).unwrap(), data);
    }
    drop(rebuilt);

    // The next run finishes the pack; afterwards nothing is left to do.
    let store = t.open();
    let done = store.gc(&gc).unwrap();
    assert_eq!(done.packs_compacted, vec![1], "{done:#?}");
    assert!(done.problems.is_empty(), "{done:#?}");
    let left = store
        .gc(&tessera::GcOptions {
            dry_run: true,
            ..gc.clone()
        })
        .unwrap();
    assert!(left.packs_compacted.is_empty(), "{left:#?}");
    assert!(store.verify(&()).unwrap().is_ok());
    for (id, data) in kept {
        assert_eq!(&store.read_all(*id).unwrap(), data);
    }
}

/// An account change whose commit fails (the pack sync fails) is not half-applied: it is not
/// there after the error, nor after a reopen, nor after `recover` (its record is revoked), nor
/// after compaction rewrote the pack that held it and its revocation; the changes that
/// returned are all there.
#[test]
fn a_failed_account_change_is_never_applied_nor_replayed() {
    use tessera::users::NewUser;
    let t = TempStore::new();
    drop(t.create());
    let (store, faults) = open_faulty(&t, Config::default());
    let (_, alice) = store.user_add("alice", NewUser::default()).unwrap();

    faults.failing_syncs.store(1, Ordering::SeqCst);
    let admin = NewUser {
        admin: true,
        ..Default::default()
    };
    let err = store.user_add("mallory", admin.clone()).unwrap_err();
    assert!(err.to_string().contains("syncing"), "{err}");
    faults.failing_syncs.store(1, Ordering::SeqCst);
    store.user_revoke_tokens("alice").unwrap_err();
    faults.failing_syncs.store(1, Ordering::SeqCst);
    store.quota_set("alice", Some(1)).unwrap_err();
    faults.failing_syncs.store(1, Ordering::SeqCst);
    store.org_quota_set("acme", Some(1)).unwrap_err();
    let mut promoted = store.user("alice").unwrap();
    promoted.admin = true;
    faults.failing_syncs.store(1, Ordering::SeqCst);
    store.user_update(&promoted).unwrap_err();

    let check = |store: &Store| {
        assert!(matches!(store.user("mallory"), Err(Error::NotFound { .. })));
        let a = store
            .authenticate(&alice)
            .unwrap()
            .expect("alice's token works");
        assert_eq!((a.name.as_str(), a.admin, a.quota), ("alice", false, None));
        assert!(
            store
                .quota_orgs()
                .unwrap()
                .iter()
                .all(|o| o.limit.is_none())
        );
        assert!(store.verify(&()).unwrap().is_ok());
    };
    check(&store);
    // A later commit makes the failed records part of the committed length.
    let bob = store.user_add("bob", NewUser::default()).unwrap().1;
    check(&store);
    drop(store);
    check(&t.open());

    std::fs::remove_file(t.path().join("index.redb")).unwrap();
    let report = tessera::recover(t.path(), &Config::default(), &()).unwrap();
    assert_eq!((report.revoked, report.accounts), (5, 2), "{report:#?}");
    let store = t.open();
    check(&store);
    assert_eq!(store.authenticate(&bob).unwrap().unwrap().name, "bob");

    // Compaction drops the pack with the failed records and their revocations.
    let big = store
        .put(&random_bytes(60, 2_000_000)[..], &PutOptions::key("big"))
        .unwrap()
        .file
        .id;
    store.delete(big).unwrap();
    store
        .purge_deleted(std::time::Duration::ZERO, false)
        .unwrap();
    let gc = store
        .gc(&tessera::GcOptions {
            grace: std::time::Duration::ZERO,
            ..Default::default()
        })
        .unwrap();
    assert!(gc.packs_compacted.contains(&1), "{gc:#?}");
    check(&store);
    drop(store);
    std::fs::remove_file(t.path().join("index.redb")).unwrap();
    let report = tessera::recover(t.path(), &Config::default(), &()).unwrap();
    assert_eq!(
        (report.revoked, report.accounts),
        (0, 1),
        "a snapshot: {report:#?}"
    );
    let store = t.open();
    check(&store);
    assert_eq!(store.authenticate(&bob).unwrap().unwrap().name, "bob");
}

/// A change whose commit failed is revoked in the journal. Compaction must not turn it back
/// into a committed one: it copies the record (its file still exists), so the revocation has to
/// follow it — else `recover` replays a delete (or a visibility change) the caller was told
/// had failed.
#[test]
fn a_failed_delete_stays_failed_after_compaction_and_recover() {
    let t = TempStore::new();
    let config = Config {
        pack_target_size: 1 << 20,
        ..Config::default()
    };
    drop(Store::create(t.path(), config.clone()).unwrap());
    let (store, faults) = open_faulty(&t, config.clone());
    let a = store
        .put(&b"keep me"[..], &PutOptions::key("a"))
        .unwrap()
        .file
        .id;
    let b = store
        .put(&random_bytes(1, 900_000)[..], &PutOptions::key("b"))
        .unwrap()
        .file
        .id;
    faults.failing_syncs.store(1, Ordering::SeqCst);
    assert!(store.delete(a).is_err(), "the delete's commit fails");
    assert!(!store.stat(a).unwrap().deleted);
    // Roll past the pack that holds the failed delete, then make that pack mostly garbage.
    store
        .put(&random_bytes(2, 1_500_000)[..], &PutOptions::key("c"))
        .unwrap();
    store.delete(b).unwrap();
    store
        .purge_deleted(std::time::Duration::ZERO, false)
        .unwrap();
    let gc = store
        .gc(&tessera::GcOptions {
            grace: std::time::Duration::ZERO,
            compact_threshold: 0.0,
            ..Default::default()
        })
        .unwrap();
    assert!(
        !gc.packs_compacted.is_empty(),
        "the pack with the failed delete is rewritten: {gc:?}"
    );
    assert!(!store.stat(a).unwrap().deleted);
    drop(store);

    std::fs::remove_file(t.path().join("index.redb")).unwrap();
    let report = tessera::recover(t.path(), &config, &()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let store = Store::open(t.path(), config).unwrap();
    assert!(
        !store.stat(a).unwrap().deleted,
        "recover replayed a delete whose commit had failed"
    );
    assert_eq!(store.read_all(a).unwrap(), b"keep me");
}
