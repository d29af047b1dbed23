//! The storage core through the public API: round trips, dedup, versions, listing, metadata,
//! locking and bad input.

use std::io::{Read, Seek, SeekFrom};

use sha2::Digest;
use tessera::{ChunkParams, Config, Error, FileId, ListQuery, PutOptions, Store};

use crate::common::{TempStore, blake3_hex, png_bytes, random_bytes, text_bytes};

fn put(store: &Store, data: &[u8], key: &str) -> tessera::PutReport {
    store.put(data, &PutOptions::key(key)).expect("put")
}

#[test]
fn round_trips_sizes_around_chunk_boundaries() {
    let t = TempStore::new();
    let store = t.create();
    let p = store.chunk_params();
    for (i, len) in [
        0usize,
        1,
        4095,
        p.min_size as usize,
        p.max_size as usize,
        p.max_size as usize + 1,
        3 << 20,
    ]
    .into_iter()
    .enumerate()
    {
        let data = random_bytes(i as u64, len);
        let r = put(&store, &data, &format!("f{i}"));
        assert_eq!(r.file.size, len as u64);
        assert_eq!(r.file.blake3, blake3_hex(&data));
        assert_eq!(store.read_all(r.file.id).unwrap(), data, "length {len}");
    }
    let text = text_bytes(9, 2 << 20);
    let r = put(&store, &text, "text");
    assert!(
        r.new_stored_bytes < text.len() as u64 / 2,
        "text should compress"
    );
    assert_eq!(store.read_all(r.file.id).unwrap(), text);
    assert!(store.verify(&()).unwrap().is_ok());
}

#[test]
fn ranges_and_seeks_return_exact_slices() {
    let t = TempStore::new();
    let store = t.create();
    let data = random_bytes(7, 1_500_000);
    let id = put(&store, &data, "r").file.id;
    for (a, b) in [
        (0u64, 0u64),
        (0, 1),
        (65_000, 70_000),
        (123_456, 1_000_000),
        (1_499_999, 1_500_000),
        (0, 1_500_000),
    ] {
        let mut out = Vec::new();
        let mut r = store.get_range(id, a..b).unwrap();
        assert_eq!(r.len(), b - a);
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, &data[a as usize..b as usize], "range {a}..{b}");
    }
    let mut r = store.get(id).unwrap();
    r.seek(SeekFrom::Start(1_000_000)).unwrap();
    let mut buf = [0u8; 1000];
    r.read_exact(&mut buf).unwrap();
    assert_eq!(buf[..], data[1_000_000..1_001_000]);
    r.seek(SeekFrom::End(-10)).unwrap();
    let mut tail = Vec::new();
    r.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, &data[data.len() - 10..]);
    assert!(matches!(
        store.get_range(id, 10..2_000_000),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn storing_the_same_100_mib_twice_adds_under_one_percent() {
    let t = TempStore::new();
    let store = t.create();
    let data = random_bytes(42, 100 << 20);
    let first = put(&store, &data, "big-1");
    let before = store.stats().unwrap();
    let second = put(&store, &data, "big-2");
    let after = store.stats().unwrap();
    assert_eq!(second.new_chunks, 0);
    assert_eq!(second.new_stored_bytes, 0);
    let growth = after.pack_bytes - before.pack_bytes;
    assert!(
        (growth as f64) < 0.01 * before.pack_bytes as f64,
        "second copy grew packs by {growth} bytes of {}",
        before.pack_bytes
    );
    assert_eq!(after.logical_bytes, 2 * data.len() as u64);
    assert!(
        after.dedup_ratio > 1.99,
        "dedup ratio {}",
        after.dedup_ratio
    );
    assert_ne!(first.file.id, second.file.id);
    assert_eq!(store.read_all(second.file.id).unwrap(), data);
}

#[test]
fn one_byte_inserted_at_the_front_reuses_almost_every_chunk() {
    let t = TempStore::new();
    let store = t.create();
    let data = random_bytes(3, 32 << 20);
    let a = put(&store, &data, "a");
    let mut shifted = vec![0x5a];
    shifted.extend_from_slice(&data);
    let b = put(&store, &shifted, "b");
    assert!(a.chunks > 100, "{} chunks", a.chunks);
    // Content-defined cut points resynchronise right after the edit.
    assert!(
        b.new_chunks <= 3,
        "{} of {} chunks were new",
        b.new_chunks,
        b.chunks
    );
    assert!(
        (b.chunks - b.new_chunks) as f64 >= 0.97 * b.chunks as f64,
        "only {} of {} chunks reused",
        b.chunks - b.new_chunks,
        b.chunks
    );
    assert_eq!(store.read_all(b.file.id).unwrap(), shifted);
}

#[test]
fn versions_restore_and_history() {
    let t = TempStore::new();
    let store = t.create();
    let v1 = text_bytes(1, 300_000);
    let v2 = text_bytes(2, 200_000);
    let a = put(&store, &v1, "docs/report.txt");
    let b = put(&store, &v2, "docs/report.txt");
    assert_eq!(a.file.id, b.file.id);
    assert_eq!((a.file.version, b.file.version), (1, 2));
    assert_eq!(store.read_all(a.file.id).unwrap(), v2);
    let mut old = Vec::new();
    store
        .get_version(a.file.id, 1)
        .unwrap()
        .read_to_end(&mut old)
        .unwrap();
    assert_eq!(old, v1);

    let restored = store.restore(a.file.id, 1).unwrap();
    assert_eq!(restored.version, 3);
    assert_eq!(restored.size, v1.len() as u64);
    assert_eq!(store.read_all(a.file.id).unwrap(), v1);
    let versions = store.versions(a.file.id).unwrap();
    let nums: Vec<(u32, Option<u32>, bool)> = versions
        .iter()
        .map(|v| (v.version, v.restored_from, v.current))
        .collect();
    assert_eq!(
        nums,
        [(1, None, false), (2, None, false), (3, Some(1), true)]
    );
    assert!(matches!(
        store.get_version(a.file.id, 9),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        store.restore(a.file.id, 9),
        Err(Error::NotFound { .. })
    ));
    let report = store.verify(&()).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.versions, 3);
}

#[test]
fn soft_delete_hides_and_undelete_restores() {
    let t = TempStore::new();
    let store = t.create();
    let data = random_bytes(5, 10_000);
    let id = put(&store, &data, "gone").file.id;
    let deleted = store.delete(id).unwrap();
    assert!(deleted.deleted);
    assert!(matches!(store.get(id), Err(Error::NotFound { .. })));
    assert!(store.list(&ListQuery::default()).unwrap().files.is_empty());
    let with_deleted = store
        .list(&ListQuery {
            include_deleted: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(with_deleted.files.len(), 1);
    assert!(store.stat(id).unwrap().deleted);
    // Deleting twice is harmless.
    store.delete(id).unwrap();
    let back = store.undelete(id).unwrap();
    assert!(!back.deleted);
    assert_eq!(store.read_all(id).unwrap(), data);
    // A put to the key of a deleted file revives it with a new version.
    store.delete(id).unwrap();
    let again = put(&store, b"new life", "gone");
    assert_eq!(
        (again.file.id, again.file.version, again.file.deleted),
        (id, 2, false)
    );
}

#[test]
fn metadata_is_recorded_and_names_are_sanitised() {
    let t = TempStore::new();
    let store = t.create();
    let data = text_bytes(11, 50_000);
    let opts = PutOptions {
        owner: "alice".into(),
        key: Some("reports/q3.txt".into()),
        name: Some("../../etc/Evil\u{202e}Name.TXT".into()),
        category: Some("documents".into()),
        mime: None,
        public: true,
        metadata: serde_json::json!({"pages": 3, "tags": ["a", "b"]}),
        declared_size: Some(data.len() as u64),
        origin: tessera::Origin::Local,
    };
    let r = store.put(&data[..], &opts).unwrap();
    let f = store.stat(r.file.id).unwrap();
    assert_eq!(f.owner, "alice");
    assert_eq!(f.key.as_deref(), Some("reports/q3.txt"));
    assert_eq!(f.display_name, "EvilName.txt");
    assert_eq!(
        f.original_name.as_deref(),
        Some("../../etc/Evil\u{202e}Name.TXT")
    );
    assert_eq!(f.category, "documents");
    assert_eq!(f.mime, "text/plain");
    assert_eq!(f.size, data.len() as u64);
    assert_eq!(f.blake3, blake3_hex(&data));
    let sha: String = sha2::Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(f.sha256, sha);
    assert!(f.public && !f.deleted && !f.quarantined);
    assert_eq!(f.metadata["tags"][1], "b");
    assert!(f.created_ms > 0 && f.updated_ms >= f.created_ms);
    assert_eq!(store.resolve_key("alice", "reports/q3.txt").unwrap(), f.id);
    assert!(matches!(
        store.resolve_key("bob", "reports/q3.txt"),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn listing_pages_by_owner_prefix_and_category() {
    let t = TempStore::new();
    let store = t.create();
    for i in 0..25 {
        let opts = PutOptions {
            owner: if i % 2 == 0 {
                "even".into()
            } else {
                "odd".into()
            },
            key: Some(format!("dir{}/file{i:02}", i % 3)),
            // Categories check names and content: images are PNGs, documents text files.
            name: Some(format!("file{i:02}.{}", if i < 5 { "png" } else { "txt" })),
            category: Some(if i < 5 {
                "images".into()
            } else {
                "documents".into()
            }),
            ..Default::default()
        };
        let data = if i < 5 {
            png_bytes(i, 100)
        } else {
            text_bytes(i, 100)
        };
        store.put(&data[..], &opts).unwrap();
    }
    let mut all = Vec::new();
    let mut q = ListQuery {
        limit: Some(10),
        ..Default::default()
    };
    loop {
        let page = store.list(&q).unwrap();
        assert!(page.files.len() <= 10);
        all.extend(page.files.iter().map(|f| f.id));
        match page.next {
            Some(c) => q.after = Some(c),
            None => break,
        }
    }
    assert_eq!(all.len(), 25);
    let mut dedup = all.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), 25, "pages overlapped");
    assert_eq!(all, dedup, "ids list in creation order");

    let even = store
        .list(&ListQuery {
            owner: Some("even".into()),
            limit: Some(100),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(even.files.len(), 13);
    assert!(even.files.iter().all(|f| f.owner == "even"));

    let images = store
        .list(&ListQuery {
            category: Some("images".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(images.files.len(), 5);

    let mut keys = Vec::new();
    let mut q = ListQuery {
        owner: Some("odd".into()),
        prefix: Some("dir1/".into()),
        limit: Some(2),
        ..Default::default()
    };
    loop {
        let page = store.list(&q).unwrap();
        keys.extend(page.files.iter().map(|f| f.key.clone().unwrap()));
        match page.next {
            Some(c) => q.after = Some(c),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25)
        .filter(|i| i % 2 == 1 && i % 3 == 1)
        .map(|i| format!("dir1/file{i:02}"))
        .collect();
    assert_eq!(keys, expected);
    assert!(matches!(
        store.list(&ListQuery {
            prefix: Some("dir".into()),
            ..Default::default()
        }),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn a_second_opener_gets_a_clear_error() {
    let t = TempStore::new();
    let store = t.create();
    let err = Store::open(t.path(), Config::default()).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    assert!(err.to_string().contains("in use"), "{err}");
    drop(store);
    t.open();
}

#[test]
fn chunk_parameters_are_fixed_at_creation() {
    let t = TempStore::new();
    let custom = ChunkParams {
        min_size: 8192,
        avg_size: 32768,
        max_size: 131072,
    };
    let store = Store::create(
        t.path(),
        Config {
            chunking: Some(custom),
            ..Default::default()
        },
    )
    .unwrap();
    let id = put(&store, &random_bytes(1, 500_000), "x").file.id;
    drop(store);
    let err = Store::open(
        t.path(),
        Config {
            chunking: Some(ChunkParams::default()),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, Error::ConfigMismatch(_)), "{err}");
    assert!(err.to_string().contains("8192/32768/131072"), "{err}");
    let store = t.open();
    assert_eq!(store.chunk_params(), custom);
    assert_eq!(store.read_all(id).unwrap().len(), 500_000);
}

#[test]
fn unknown_ids_keys_and_bad_input_get_clear_errors() {
    let t = TempStore::new();
    let store = t.create();
    let nobody = FileId::new();
    for err in [
        store.stat(nobody).unwrap_err(),
        store.get(nobody).err().unwrap(),
        store.delete(nobody).unwrap_err(),
        store.versions(nobody).unwrap_err(),
    ] {
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
        assert!(err.to_string().contains(&nobody.to_string()), "{err}");
    }
    assert!(matches!(
        store.resolve_key("local", "nope"),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        store.put(&b"x"[..], &PutOptions::key("")),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        store.put(&b"x"[..], &PutOptions::key("a\0b")),
        Err(Error::InvalidInput(_))
    ));
    let bad_owner = PutOptions {
        owner: String::new(),
        ..Default::default()
    };
    assert!(matches!(
        store.put(&b"x"[..], &bad_owner),
        Err(Error::InvalidInput(_))
    ));
    assert!("zzz".parse::<FileId>().is_err());

    // Not a store at all.
    let empty = tempfile::tempdir().unwrap();
    let err = Store::open(empty.path(), Config::default()).unwrap_err();
    assert!(matches!(err, Error::NotAStore { .. }), "{err}");
    // Creating over an existing store is refused.
    drop(store);
    assert!(Store::create(t.path(), Config::default()).is_err());
}

#[test]
fn a_failing_reader_fails_the_put_and_stores_nothing() {
    struct Broken(usize);
    impl Read for Broken {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "client went away",
                ));
            }
            let n = buf.len().min(self.0).min(100_000);
            buf[..n].fill(7);
            self.0 -= n;
            Ok(n)
        }
    }
    let t = TempStore::new();
    let store = t.create();
    let err = store
        .put(Broken(1_000_000), &PutOptions::key("partial"))
        .unwrap_err();
    assert!(err.to_string().contains("client went away"), "{err}");
    assert!(matches!(
        store.resolve_key("local", "partial"),
        Err(Error::NotFound { .. })
    ));
    assert_eq!(store.stats().unwrap().files, 0);
    assert!(store.verify(&()).unwrap().is_ok());
}

#[test]
fn packs_roll_and_sealed_packs_read_back_after_reopen() {
    let t = TempStore::new();
    let config = Config {
        pack_target_size: 1 << 20,
        ..Default::default()
    };
    let store = Store::create(t.path(), config.clone()).unwrap();
    let data = random_bytes(8, 5 << 20);
    let id = put(&store, &data, "rolled").file.id;
    let stats = store.stats().unwrap();
    assert!(stats.packs >= 5, "{} packs", stats.packs);
    drop(store);
    let store = Store::open(t.path(), config).unwrap();
    assert_eq!(store.read_all(id).unwrap(), data);
    let small = put(&store, b"appended after reopen", "small");
    assert_eq!(
        store.read_all(small.file.id).unwrap(),
        b"appended after reopen"
    );
    assert!(store.verify(&()).unwrap().is_ok());
}

#[test]
fn reopening_keeps_appending_to_the_same_pack() {
    let t = TempStore::new();
    for i in 0..5u64 {
        let store = if i == 0 { t.create() } else { t.open() };
        put(&store, &random_bytes(i, 10_000), &format!("k{i}"));
    }
    let store = t.open();
    assert_eq!(store.stats().unwrap().packs, 1);
    for i in 0..5u64 {
        let id = store.resolve_key("local", &format!("k{i}")).unwrap();
        assert_eq!(store.read_all(id).unwrap(), random_bytes(i, 10_000));
    }
}

#[test]
fn many_threads_put_and_get_at_once() {
    let t = TempStore::new();
    let store = t.create();
    let shared = random_bytes(99, 600_000);
    std::thread::scope(|s| {
        for th in 0..4u64 {
            let store = store.clone();
            let shared = &shared;
            s.spawn(move || {
                for i in 0..12u64 {
                    // Half of each file is shared by every thread: concurrent dedup.
                    let mut data = shared[..300_000].to_vec();
                    data.extend_from_slice(&random_bytes(th * 1000 + i, 200_000 + i as usize));
                    let key = format!("t{th}/f{}", i % 4);
                    let r = put(&store, &data, &key);
                    assert_eq!(store.read_all(r.file.id).unwrap(), data);
                    let back = store.resolve_key("local", &key).unwrap();
                    assert_eq!(back, r.file.id);
                }
            });
        }
    });
    let report = store.verify(&()).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.files, 16);
    assert_eq!(report.versions, 48);
}

#[test]
fn read_only_opens_share_the_store_and_refuse_writes() {
    let t = TempStore::new();
    let store = t.create();
    let id = put(&store, &random_bytes(1, 300_000), "ro").file.id;
    // A writer keeps read-only openers out.
    assert!(matches!(
        Store::open_read_only(t.path(), Config::default()),
        Err(Error::Locked { .. })
    ));
    drop(store);

    let a = Store::open_read_only(t.path(), Config::default()).unwrap();
    let b = Store::open_read_only(t.path(), Config::default()).unwrap();
    assert_eq!(a.read_all(id).unwrap(), random_bytes(1, 300_000));
    assert_eq!(b.stat(id).unwrap().size, 300_000);
    assert!(b.verify(&()).unwrap().is_ok());
    let err = a.put(&b"no"[..], &PutOptions::key("no")).unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");
    assert!(a.delete(id).is_err());
    // Readers keep a writer out.
    assert!(matches!(
        Store::open(t.path(), Config::default()),
        Err(Error::Locked { .. })
    ));
    drop((a, b));
    let store = t.open();
    assert!(!store.stat(id).unwrap().deleted);
    put(&store, b"writable again", "rw");
}
