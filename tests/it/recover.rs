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

/// The account rows of an index (users, token hashes, organisation limits) and the quota rows
/// derived from them, as the index dump prints them.
fn account_rows(store: &Store) -> Vec<String> {
    store
        .debug_index_dump()
        .unwrap()
        .lines()
        .filter(|l| {
            [
                "users ",
                "tokens ",
                "org_limits ",
                "owner_usage ",
                "org_usage ",
                "quota_levels ",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .map(str::to_string)
        .collect()
}

/// Every account change is journaled: with the index deleted, `recover` brings back users,
/// admin flags, tiers, organisations, quota overrides, organisation limits (set, changed,
/// cleared) and tokens — revoked ones stay revoked, ones issued after the revocation work —
/// row for row, and `verify` finds index and journal agreeing.
#[test]
fn accounts_survive_losing_the_index() {
    use tessera::users::NewUser;
    let t = TempStore::new();
    let store = t.create();
    let (_, ops) = store
        .user_add(
            "ops",
            NewUser {
                admin: true,
                ..Default::default()
            },
        )
        .unwrap();
    let (_, alice) = store
        .user_add(
            "alice",
            NewUser {
                tier: Some("pro".into()),
                org: Some("acme".into()),
                ..Default::default()
            },
        )
        .unwrap();
    let (_, bob_old) = store
        .user_add(
            "bob",
            NewUser {
                quota: Some(5 << 20),
                ..Default::default()
            },
        )
        .unwrap();
    let bob_old_too = store.user_new_token("bob").unwrap();
    // Files before and after the changes: usage moves with the organisation.
    for (i, owner) in ["alice", "bob", "carol"].iter().enumerate() {
        store
            .put(
                &random_bytes(i as u64, 40_000)[..],
                &PutOptions {
                    owner: owner.to_string(),
                    ..PutOptions::key("a.bin")
                },
            )
            .unwrap();
    }
    assert_eq!(store.user_revoke_tokens("bob").unwrap(), 2);
    assert_eq!(
        store.user_revoke_tokens("bob").unwrap(),
        0,
        "nothing left to revoke"
    );
    let bob = store.user_new_token("bob").unwrap();
    store.quota_set("alice", Some(7 << 30)).unwrap();
    store.quota_set("bob", None).unwrap();
    store.org_quota_set("acme", Some(500_000_000_000)).unwrap();
    let (_, carol) = store
        .user_add(
            "carol",
            NewUser {
                org: Some("zeta".into()),
                ..Default::default()
            },
        )
        .unwrap();
    store.org_quota_set("zeta", Some(1)).unwrap();
    store.org_quota_set("zeta", None).unwrap();
    let mut c = store.user("carol").unwrap();
    c.org = Some("acme".into());
    c.tier = Some("basic".into());
    store.user_update(&c).unwrap();
    // A demoted admin stays demoted.
    let mut o = store.user("ops").unwrap();
    o.admin = false;
    store.user_update(&o).unwrap();
    let mut o = store.user("ops").unwrap();
    o.admin = true;
    store.user_update(&o).unwrap();
    o.admin = false;
    store.user_update(&o).unwrap();

    let users_before = store.users().unwrap();
    let rows_before = account_rows(&store);
    assert!(rows_before.iter().any(|l| l.starts_with("org_limits ")));
    assert!(store.verify(&()).unwrap().is_ok());
    drop(store);

    fs::remove_file(t.path().join("index.redb")).unwrap();
    let report = tessera::recover(t.path(), &Config::default(), &()).unwrap();
    assert!(report.problems.is_empty(), "{report:#?}");
    // 4 adds, 2 tokens, 1 revoke (the empty one journals nothing), 2 quota sets,
    // 3 org limits, 4 updates.
    assert_eq!(
        (report.accounts, report.users, report.users_kept),
        (16, 4, 0)
    );
    let store = t.open();
    assert_eq!(store.users().unwrap(), users_before);
    assert_eq!(account_rows(&store), rows_before);
    let who = |token: &str| store.authenticate(token).unwrap().map(|u| u.name);
    assert_eq!(who(&ops).as_deref(), Some("ops"));
    assert!(!store.user("ops").unwrap().admin);
    assert_eq!(who(&alice).as_deref(), Some("alice"));
    assert_eq!(who(&carol).as_deref(), Some("carol"));
    assert_eq!(who(&bob).as_deref(), Some("bob"));
    assert_eq!(who(&bob_old), None, "a revoked token stays revoked");
    assert_eq!(who(&bob_old_too), None, "a revoked token stays revoked");
    let alice_rec = store.user("alice").unwrap();
    assert_eq!(
        (
            alice_rec.tier.as_deref(),
            alice_rec.org.as_deref(),
            alice_rec.quota
        ),
        (Some("pro"), Some("acme"), Some(7 << 30))
    );
    assert_eq!(store.user("bob").unwrap().quota, None);
    let orgs = store.quota_orgs().unwrap();
    let acme = orgs.iter().find(|o| o.org == "acme").unwrap();
    assert_eq!(acme.limit, Some(500_000_000_000));
    assert_eq!(acme.used, 80_000, "alice's and carol's files");
    assert!(
        orgs.iter().all(|o| o.org != "zeta" || o.limit.is_none()),
        "a cleared limit stays cleared"
    );
    assert!(store.verify(&()).unwrap().is_ok());
}

/// `verify` compares the index's accounts with what the journal rebuilds, and names a user
/// the journal does not have. Two copies of one store each add a user of the same length at
/// the same instant; the index of one over the packs of the other is consistent in every other
/// way (same pack lengths, same files).
#[test]
fn verify_names_accounts_the_journal_does_not_have() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicI64;
    let clock = Arc::new(crate::common::TestClock(AtomicI64::new(1_800_000_000_000)));
    let config = || Config {
        clock: clock.clone(),
        ..Config::default()
    };
    let a = TempStore::new();
    let store = Store::create(a.path(), config()).unwrap();
    store
        .put(&random_bytes(1, 10_000)[..], &PutOptions::key("f.bin"))
        .unwrap();
    drop(store);
    let b = TempStore::new();
    fs::create_dir_all(b.path().join("packs")).unwrap();
    for f in ["store.json", "index.redb", "packs/00000001.pack"] {
        fs::copy(a.path().join(f), b.path().join(f)).unwrap();
    }
    for (t, name) in [(&a, "alice"), (&b, "carol")] {
        let store = Store::open(t.path(), config()).unwrap();
        store
            .user_add(name, tessera::users::NewUser::default())
            .unwrap();
        assert!(store.verify(&()).unwrap().is_ok());
    }
    fs::copy(b.path().join("index.redb"), a.path().join("index.redb")).unwrap();
    let store = Store::open(a.path(), config()).unwrap();
    assert_eq!(store.users().unwrap()[0].name, "carol");
    let report = store.verify(&()).unwrap();
    let mentions = |what: &str| report.problems.iter().any(|p| p.contains(what));
    assert!(
        mentions("user \"carol\"") && mentions("user \"alice\"") && mentions("a token of user"),
        "{report:#?}"
    );
    assert_eq!(report.damaged_regions.len(), 0, "{report:#?}");
}
