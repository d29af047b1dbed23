//! Damaged stores: flipped bytes, truncated and torn packs, missing files. Every case gets a
//! clear error or report, never a panic, and nothing undamaged is lost.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::PathBuf;

use tessera::{Error, PutOptions, Store};

use crate::common::{TempStore, random_bytes};

fn packs(t: &TempStore) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(t.path().join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .collect();
    v.sort();
    v
}

fn flip_byte(path: &PathBuf, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x40;
    fs::write(path, bytes).unwrap();
}

/// Payload of the first record of the first pack: after the 64-byte pack header and the
/// 52-byte record header.
const FIRST_PAYLOAD: u64 = 64 + 52;

#[test]
fn a_flipped_byte_is_named_by_verify_and_refused_by_get() {
    let t = TempStore::new();
    let store = t.create();
    let victim = store
        .put(
            &random_bytes(1, 300_000)[..],
            &PutOptions::key("victim.bin"),
        )
        .unwrap();
    let bystander = store
        .put(
            &random_bytes(2, 300_000)[..],
            &PutOptions::key("bystander.bin"),
        )
        .unwrap();
    drop(store);
    flip_byte(&packs(&t)[0], FIRST_PAYLOAD + 100);

    let store = t.open();
    let report = store.verify(&()).unwrap();
    assert!(!report.is_ok());
    assert_eq!(report.damaged_chunks.len(), 1, "{report:?}");
    let d = &report.damaged_chunks[0];
    assert_eq!(d.files.len(), 1);
    assert_eq!(d.files[0].id, victim.file.id);
    assert_eq!(d.files[0].key.as_deref(), Some("victim.bin"));

    let mut buf = Vec::new();
    let err = store
        .get(victim.file.id)
        .unwrap()
        .read_to_end(&mut buf)
        .unwrap_err();
    let err = err
        .downcast::<Error>()
        .expect("engine error inside io::Error");
    match &err {
        Error::Corrupt { chunk: Some(c), .. } => assert_eq!(c, &d.chunk),
        other => panic!("expected Corrupt naming the chunk, got {other}"),
    }
    assert_eq!(
        store.read_all(bystander.file.id).unwrap(),
        random_bytes(2, 300_000)
    );
}

#[test]
fn a_truncated_pack_is_reported_not_panicked_on() {
    let t = TempStore::new();
    let store = t.create();
    let a = store
        .put(&random_bytes(3, 400_000)[..], &PutOptions::key("a"))
        .unwrap();
    let b = store
        .put(&random_bytes(4, 400_000)[..], &PutOptions::key("b"))
        .unwrap();
    drop(store);
    let pack = &packs(&t)[0];
    let len = fs::metadata(pack).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(pack)
        .unwrap()
        .set_len(len - 200_000)
        .unwrap();

    let store = t.open();
    assert_eq!(
        store.open_report().damaged.len(),
        1,
        "{:?}",
        store.open_report()
    );
    let report = store.verify(&()).unwrap();
    assert!(!report.is_ok());
    assert!(
        report.problems.iter().any(|p| p.contains("truncated")),
        "{:?}",
        report.problems
    );
    assert!(
        report
            .damaged_chunks
            .iter()
            .any(|d| d.files.iter().any(|f| f.id == b.file.id))
    );
    // The file whose chunks are intact still reads; the other fails cleanly.
    assert_eq!(store.read_all(a.file.id).unwrap(), random_bytes(3, 400_000));
    let err = store.read_all(b.file.id).unwrap_err();
    assert!(err.is_corruption(), "{err}");
}

#[test]
fn a_torn_tail_is_truncated_on_open() {
    let t = TempStore::new();
    let store = t.create();
    let a = store
        .put(&random_bytes(5, 200_000)[..], &PutOptions::key("a"))
        .unwrap();
    drop(store);
    let pack = &packs(&t)[0];
    let committed = fs::metadata(pack).unwrap().len();
    // What a crash mid-append leaves: the start of a record and nothing after it.
    let mut f = OpenOptions::new().append(true).open(pack).unwrap();
    f.write_all(b"TREC\x01\x01\x00\x00partial-record-that-never-finished")
        .unwrap();
    drop(f);

    let store = t.open();
    assert_eq!(store.open_report().truncated.len(), 1);
    assert_eq!(fs::metadata(pack).unwrap().len(), committed);
    assert!(store.verify(&()).unwrap().is_ok());
    assert_eq!(store.read_all(a.file.id).unwrap(), random_bytes(5, 200_000));
    let b = store
        .put(&random_bytes(6, 1000)[..], &PutOptions::key("b"))
        .unwrap();
    assert_eq!(store.read_all(b.file.id).unwrap(), random_bytes(6, 1000));
}

#[test]
fn a_missing_index_or_pack_gets_a_clear_error() {
    let t = TempStore::new();
    let store = t.create();
    let a = store
        .put(&random_bytes(7, 100_000)[..], &PutOptions::key("a"))
        .unwrap();
    drop(store);

    let pack = packs(&t)[0].clone();
    let saved = fs::read(&pack).unwrap();
    fs::remove_file(&pack).unwrap();
    let store = t.open();
    assert!(store.open_report().damaged[0].1.contains("missing"));
    let err = store.read_all(a.file.id).unwrap_err();
    assert!(err.is_corruption(), "{err}");
    assert!(!store.verify(&()).unwrap().is_ok());
    drop(store);
    fs::write(&pack, saved).unwrap();

    fs::remove_file(t.path().join("index.redb")).unwrap();
    let err = Store::open(t.path(), tessera::Config::default()).unwrap_err();
    assert!(matches!(err, Error::NotAStore { .. }), "{err}");
    assert!(err.to_string().contains("recover"), "{err}");
}
