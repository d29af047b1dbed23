//! Format compatibility: `tests/fixtures/store-v1` was written by the code before accounts,
//! links and per-version visibility were journaled (see tests/fixtures/make-store-v1.sh).
//! Every later build must open it, read every file and version byte for byte, keep its users
//! and tokens (revoked ones stay revoked), and pass `verify`. The fixture is copied first: the
//! committed bytes are never opened for writing.

use std::fs;
use std::path::{Path, PathBuf};

use tessera::{Config, ListQuery, Store};

use crate::common::TempStore;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1")
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// A writable copy of the fixture.
fn copy_of_fixture() -> TempStore {
    let t = TempStore::new();
    copy_dir(&fixture(), &t.path());
    t
}

/// The fixture's bearer tokens by label (TOKENS: `label token` lines).
fn token(label: &str) -> String {
    let text = fs::read_to_string(fixture().join("TOKENS")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == label).then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no token {label} in the fixture"))
}

fn read(store: &Store, owner: &str, key: &str, version: Option<u32>) -> Vec<u8> {
    use std::io::Read;
    let id = store.resolve_key(owner, key).unwrap();
    let mut r = match version {
        Some(v) => store.get_version(id, v).unwrap(),
        None => store.get(id).unwrap(),
    };
    let mut out = Vec::new();
    r.read_to_end(&mut out).unwrap();
    out
}

/// Everything the fixture holds, checked on an open store.
fn check_contents(store: &Store) {
    assert_eq!(
        read(store, "local", "docs/report.txt", Some(1)),
        b"first version of the report\n"
    );
    assert_eq!(
        read(store, "local", "docs/report.txt", None),
        b"second version of the report, longer than the first\n"
    );
    let report = store.resolve_key("local", "docs/report.txt").unwrap();
    assert_eq!(store.versions(report).unwrap().len(), 2);
    assert_eq!(
        read(store, "local", "docs/big.txt", None),
        vec![b'x'; 300_000]
    );
    assert_eq!(
        read(store, "alice", "notes/a.txt", None),
        b"alice owns this\n"
    );
    let gone = store.resolve_key("local", "docs/gone.txt").unwrap();
    assert!(store.stat(gone).unwrap().deleted);

    let live = store
        .list(&ListQuery {
            owner: Some("local".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(live.files.len(), 2, "report and big; gone is deleted");

    let alice = store.user("alice").unwrap();
    assert_eq!(
        (alice.tier.as_deref(), alice.org.as_deref(), alice.quota),
        (Some("pro"), Some("acme"), Some(7 << 30))
    );
    assert!(store.user("ops").unwrap().admin);
    assert_eq!(store.user("bob").unwrap().quota, Some(5 << 20));
    let who = |label: &str| store.authenticate(&token(label)).unwrap().map(|u| u.name);
    assert_eq!(who("alice").as_deref(), Some("alice"));
    assert_eq!(who("ops").as_deref(), Some("ops"));
    assert_eq!(who("bob").as_deref(), Some("bob"));
    assert_eq!(who("bob_revoked"), None, "a revoked token stays revoked");
    assert_eq!(
        who("bob_revoked_too"),
        None,
        "a revoked token stays revoked"
    );
    assert!(store.verify(&()).unwrap().is_ok());
}

#[test]
fn store_v1_opens_reads_and_verifies() {
    let t = copy_of_fixture();
    let store = Store::open(t.path(), Config::default()).unwrap();
    check_contents(&store);
    // Written to by this build, then opened again: still the same contents.
    drop(store);
    let store = Store::open(t.path(), Config::default()).unwrap();
    check_contents(&store);
}

#[test]
fn store_v1_opens_read_only_without_writing() {
    let t = copy_of_fixture();
    let before = fs::read(t.path().join("index.redb")).unwrap();
    let store = Store::open_read_only(t.path(), Config::default()).unwrap();
    assert_eq!(
        read(&store, "local", "docs/report.txt", Some(1)),
        b"first version of the report\n"
    );
    drop(store);
    assert_eq!(fs::read(t.path().join("index.redb")).unwrap(), before);
}

/// The bytes of every pack of the store at `dir`, by file name.
fn pack_bytes(dir: &Path) -> Vec<(std::ffi::OsString, Vec<u8>)> {
    let mut out: Vec<_> = fs::read_dir(dir.join("packs"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name(), fs::read(e.path()).unwrap())
        })
        .collect();
    out.sort();
    out
}

/// The fixture's accounts lived only in its index. The first read-write open journals them
/// (once: a second open appends nothing), so after losing the index `recover` brings back
/// users, admin flag, tiers, organisation and its limit, quota overrides, valid tokens — and
/// revoked ones stay revoked.
#[test]
fn store_v1_accounts_survive_losing_the_index_after_one_read_write_open() {
    let t = copy_of_fixture();
    drop(Store::open(t.path(), Config::default()).unwrap());
    let journaled = pack_bytes(&t.path());
    assert_ne!(journaled, pack_bytes(&fixture()), "the first open journals");
    drop(Store::open(t.path(), Config::default()).unwrap());
    assert_eq!(pack_bytes(&t.path()), journaled, "once");

    fs::remove_file(t.path().join("index.redb")).unwrap();
    let report = tessera::recover(t.path(), &Config::default(), &()).unwrap();
    assert!(report.problems.is_empty(), "{report:#?}");
    assert_eq!(
        (report.accounts, report.users, report.users_kept),
        (1, 3, 0),
        "one snapshot, three users"
    );
    let store = Store::open(t.path(), Config::default()).unwrap();
    check_contents(&store);
    let acme = store.quota_orgs().unwrap();
    let acme = acme.iter().find(|o| o.org == "acme").unwrap();
    assert_eq!((acme.limit, acme.members), (Some(500_000_000_000), 1));
    assert!(!store.user("alice").unwrap().admin);
    assert!(!store.user("bob").unwrap().admin);
}

/// A read-only open journals nothing: packs and index stay byte for byte as they were.
#[test]
fn store_v1_read_only_open_writes_no_journal() {
    let t = copy_of_fixture();
    let store = Store::open_read_only(t.path(), Config::default()).unwrap();
    check_contents(&store);
    drop(store);
    assert_eq!(pack_bytes(&t.path()), pack_bytes(&fixture()));
    assert_eq!(
        fs::read(t.path().join("index.redb")).unwrap(),
        fs::read(fixture().join("index.redb")).unwrap()
    );
}

/// A crash after the snapshot of the accounts reached the pack but before the index commit
/// that marks them journaled (the fixture's own index put back over the journaled packs is
/// that state): `recover` replays the uncommitted snapshot, which holds exactly what the index
/// held; a normal open cuts it off and journals the accounts again, once.
#[test]
fn store_v1_migration_cut_before_its_commit_is_redone_once() {
    let t = copy_of_fixture();
    drop(Store::open(t.path(), Config::default()).unwrap());
    let original_index = fixture().join("index.redb");

    // Recover from that state, without the index.
    let crashed = copy_of_fixture();
    for (name, bytes) in pack_bytes(&t.path()) {
        fs::write(crashed.path().join("packs").join(name), bytes).unwrap();
    }
    fs::remove_file(crashed.path().join("index.redb")).unwrap();
    let report = tessera::recover(crashed.path(), &Config::default(), &()).unwrap();
    assert_eq!((report.accounts, report.users), (1, 3), "{report:#?}");
    check_contents(&Store::open(crashed.path(), Config::default()).unwrap());

    // Open from that state: the tail goes, the journaling is done again.
    fs::copy(&original_index, t.path().join("index.redb")).unwrap();
    let store = Store::open(t.path(), Config::default()).unwrap();
    assert_eq!(
        store.open_report().truncated.len(),
        1,
        "the snapshot is cut"
    );
    check_contents(&store);
    drop(store);
    fs::remove_file(t.path().join("index.redb")).unwrap();
    let report = tessera::recover(t.path(), &Config::default(), &()).unwrap();
    assert_eq!(
        (report.accounts, report.users),
        (1, 3),
        "exactly one snapshot: {report:#?}"
    );
    check_contents(&Store::open(t.path(), Config::default()).unwrap());
}
