//! `recover`: the index rebuilt from packs alone lists every file and version as before.

use std::fs::{self, OpenOptions};
use std::io::Write;

use serde_json::Value;
use tessera::{Config, FileInfo, ListQuery, PutOptions, Store};

use crate::common::{TempStore, png_bytes, random_bytes, text_bytes};

/// Everything a user can list, minus access times (not logged in packs by design).
fn snapshot(store: &Store) -> Vec<(Value, Value)> {
    let page = store
        .list(&ListQuery {
            include_deleted: true,
            limit: Some(10_000),
            ..Default::default()
        })
        .unwrap();
    page.files
        .iter()
        .map(|f: &FileInfo| {
            let mut info = serde_json::to_value(f).unwrap();
            info.as_object_mut().unwrap().remove("accessed_ms");
            let versions = serde_json::to_value(store.versions(f.id).unwrap()).unwrap();
            (info, versions)
        })
        .collect()
}

fn populate(store: &Store) {
    for i in 0..12u64 {
        let opts = PutOptions {
            owner: ["ann", "bob", "cy"][i as usize % 3].into(),
            key: Some(format!("docs/{}.txt", i % 5)),
            category: Some(if i % 2 == 0 {
                "documents".into()
            } else {
                "images".into()
            }),
            metadata: serde_json::json!({ "i": i }),
            public: i % 4 == 0,
            // Images must be named and made like images (validation checks both).
            name: (i % 2 == 1).then(|| format!("photo{i}.png")),
            ..Default::default()
        };
        let len = 50_000 + i as usize * 10_000;
        // Odd files are incompressible, so the store spans several 1 MiB packs.
        let data = if i % 2 == 0 {
            text_bytes(i, len)
        } else {
            png_bytes(i, len * 3)
        };
        store.put(&data[..], &opts).unwrap();
    }
    // Files without keys, a deletion, an undeletion and a restore.
    let loose = store
        .put(&random_bytes(77, 400_000)[..], &PutOptions::default())
        .unwrap();
    store
        .put(
            &png_bytes(78, 10)[..],
            &PutOptions {
                name: Some("a b.PNG".into()),
                ..Default::default()
            },
        )
        .unwrap();
    store.delete(loose.file.id).unwrap();
    let ann = store.resolve_key("ann", "docs/0.txt").unwrap();
    store.restore(ann, 1).unwrap();
    let bob = store.resolve_key("bob", "docs/1.txt").unwrap();
    store.delete(bob).unwrap();
    store.undelete(bob).unwrap();
}

#[test]
fn recover_after_deleting_the_index_restores_every_listing() {
    let t = TempStore::new();
    let config = Config {
        pack_target_size: 1 << 20,
        ..Default::default()
    };
    let store = Store::create(t.path(), config.clone()).unwrap();
    populate(&store);
    let before = snapshot(&store);
    let stats_before = store.stats().unwrap();
    assert!(stats_before.packs > 1, "the test should span several packs");
    drop(store);

    fs::remove_file(t.path().join("index.redb")).unwrap();
    let report = tessera::recover(t.path(), &config, &()).unwrap();
    assert_eq!(report.versions, stats_before.versions);
    assert!(report.problems.is_empty(), "{:?}", report.problems);

    let store = Store::open(t.path(), config).unwrap();
    assert_eq!(snapshot(&store), before);
    let stats = store.stats().unwrap();
    assert_eq!(
        (
            stats.files,
            stats.versions,
            stats.logical_bytes,
            stats.chunks
        ),
        (
            stats_before.files,
            stats_before.versions,
            stats_before.logical_bytes,
            stats_before.chunks
        )
    );
    let report = store.verify(&()).unwrap();
    assert!(report.is_ok(), "{report:?}");
    let ann = store.resolve_key("ann", "docs/0.txt").unwrap();
    assert_eq!(store.read_all(ann).unwrap(), text_bytes(0, 50_000));
}

#[test]
fn recover_over_an_existing_index_keeps_a_backup_and_cuts_a_torn_tail() {
    let t = TempStore::new();
    let store = t.create();
    populate(&store);
    let (_, token) = store
        .user_add("alice", tessera::users::NewUser::default())
        .unwrap();
    let before = snapshot(&store);
    drop(store);
    let pack = t.path().join("packs/00000001.pack");
    let len = fs::metadata(&pack).unwrap().len();
    let mut f = OpenOptions::new().append(true).open(&pack).unwrap();
    f.write_all(b"TREC\x02\x00torn").unwrap();
    drop(f);

    let report = tessera::recover(t.path(), &Config::default(), &()).unwrap();
    assert_eq!(report.truncated, vec![(1, 10)]);
    assert_eq!(fs::metadata(&pack).unwrap().len(), len);
    let backup = report.old_index.expect("old index kept");
    assert!(backup.exists());
    let store = t.open();
    assert_eq!(snapshot(&store), before);
    assert!(store.verify(&()).unwrap().is_ok());
    // Users are journaled: replayed from the packs (not copied from the old index), tokens
    // still work.
    assert_eq!(
        (report.accounts, report.users, report.users_kept),
        (1, 1, 0)
    );
    assert_eq!(store.authenticate(&token).unwrap().unwrap().name, "alice");
}

#[test]
fn recover_refuses_while_the_store_is_open() {
    let t = TempStore::new();
    let store = t.create();
    let err = tessera::recover(t.path(), &Config::default(), &()).unwrap_err();
    assert!(matches!(err, tessera::Error::Locked { .. }), "{err}");
    drop(store);
}
