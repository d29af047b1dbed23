//! Resumable uploads through the public API: sessions, offsets, checksums, broken sources,
//! reopening, expiry and the sweep, one writer per session, limits.

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::sync::mpsc;
use std::time::Duration;

use sha2::Digest;
use tessera::{Checksum, ChecksumAlgo, Config, Error, ListQuery, Store, UploadMeta, UploadSession};

use crate::common::{TempStore, TestClock, random_bytes};

fn meta(key: &str) -> UploadMeta {
    UploadMeta {
        key: Some(key.to_string()),
        name: Some("data.bin".into()),
        ..Default::default()
    }
}

fn part_path(t: &TempStore, s: &UploadSession) -> PathBuf {
    t.path().join("uploads").join(format!("{}.part", s.id))
}

fn part_len(t: &TempStore, s: &UploadSession) -> u64 {
    std::fs::metadata(part_path(t, s)).unwrap().len()
}

/// Yields `data`, then fails as a dropped connection would.
struct Broken {
    data: Vec<u8>,
    pos: usize,
}

impl Read for Broken {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.data.len() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "connection reset",
            ));
        }
        // Small reads, so the failure comes after several writes.
        let n = buf.len().min(self.data.len() - self.pos).min(10_000);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[test]
fn three_parts_then_finish_is_byte_identical() {
    let t = TempStore::new();
    let store = t.create();
    let data = random_bytes(1, 700_000);
    let mut m = meta("media/data.bin");
    m.extras
        .insert("filetype".into(), "application/octet-stream".into());
    let s = store
        .upload_create("alice", Some(data.len() as u64), m)
        .unwrap();
    assert_eq!((s.offset, s.length), (0, Some(700_000)));
    assert_eq!(s.id.len(), 26);
    let cuts = [0, 123_457, 500_000, data.len()];
    for w in cuts.windows(2) {
        let s2 = store
            .upload_append(&s.id, w[0] as u64, &data[w[0]..w[1]], None)
            .unwrap();
        assert_eq!(s2.offset, w[1] as u64);
        assert_eq!(store.upload_status(&s.id).unwrap().offset, w[1] as u64);
    }
    assert!(store.upload_status(&s.id).unwrap().is_complete());
    let report = store.upload_finish(&s.id).unwrap();
    assert_eq!(report.file.size, data.len() as u64);
    assert_eq!(report.file.owner, "alice");
    assert_eq!(report.file.key.as_deref(), Some("media/data.bin"));
    assert_eq!(report.file.display_name, "data.bin");
    assert_eq!(
        report.file.metadata["upload_metadata"]["filetype"],
        "application/octet-stream"
    );
    assert_eq!(store.read_all(report.file.id).unwrap(), data);
    assert!(matches!(
        store.upload_status(&s.id),
        Err(Error::NotFound { .. })
    ));
    assert!(!part_path(&t, &s).exists());
    assert!(store.list_uploads(None).unwrap().is_empty());
}

#[test]
fn wrong_offset_is_a_conflict_and_changes_nothing() {
    let t = TempStore::new();
    let store = t.create();
    let s = store.upload_create("alice", Some(100), meta("a")).unwrap();
    store.upload_append(&s.id, 0, &[1u8; 40][..], None).unwrap();
    for offset in [0, 39, 41, 100] {
        let err = store
            .upload_append(&s.id, offset, &[2u8; 10][..], None)
            .unwrap_err();
        assert!(matches!(err, Error::Conflict(_)), "{offset}: {err}");
    }
    assert_eq!(store.upload_status(&s.id).unwrap().offset, 40);
    assert_eq!(part_len(&t, &s), 40);
    store
        .upload_append(&s.id, 40, &[1u8; 60][..], None)
        .unwrap();
    let report = store.upload_finish(&s.id).unwrap();
    assert_eq!(store.read_all(report.file.id).unwrap(), vec![1u8; 100]);
}

#[test]
fn checksum_mismatch_discards_the_part() {
    let t = TempStore::new();
    let store = t.create();
    let s = store.upload_create("alice", Some(300), meta("a")).unwrap();
    store
        .upload_append(&s.id, 0, &[5u8; 100][..], None)
        .unwrap();
    let part = [6u8; 150];
    let wrong = Checksum {
        algo: ChecksumAlgo::Sha256,
        digest: sha2::Sha256::digest([7u8; 150]).to_vec(),
    };
    let err = store
        .upload_append(&s.id, 100, &part[..], Some(wrong))
        .unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch(_)), "{err}");
    assert_eq!(store.upload_status(&s.id).unwrap().offset, 100);
    assert_eq!(part_len(&t, &s), 100);
    // A digest of the wrong length is refused before any byte is read.
    let short = Checksum {
        algo: ChecksumAlgo::Sha1,
        digest: vec![0; 5],
    };
    let err = store
        .upload_append(&s.id, 100, &part[..], Some(short))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    assert_eq!(store.upload_status(&s.id).unwrap().offset, 100);
}

#[test]
fn sha1_and_sha256_checksums_are_accepted() {
    let t = TempStore::new();
    let store = t.create();
    let data = random_bytes(2, 300_000);
    let s = store
        .upload_create("alice", Some(data.len() as u64), meta("a"))
        .unwrap();
    let (a, b) = data.split_at(120_000);
    let sha1 = Checksum {
        algo: ChecksumAlgo::from_name("SHA1").unwrap(),
        digest: sha1::Sha1::digest(a).to_vec(),
    };
    assert_eq!(
        store.upload_append(&s.id, 0, a, Some(sha1)).unwrap().offset,
        120_000
    );
    let sha256 = Checksum {
        algo: ChecksumAlgo::from_name("sha256").unwrap(),
        digest: sha2::Sha256::digest(b).to_vec(),
    };
    let s2 = store
        .upload_append(&s.id, 120_000, b, Some(sha256))
        .unwrap();
    assert!(s2.is_complete());
    assert!(ChecksumAlgo::from_name("md5").is_none());
    let report = store.upload_finish(&s.id).unwrap();
    assert_eq!(store.read_all(report.file.id).unwrap(), data);
}

#[test]
fn a_broken_source_keeps_every_byte_received() {
    let t = TempStore::new();
    let store = t.create();
    let data = random_bytes(3, 200_000);
    let s = store
        .upload_create("alice", Some(data.len() as u64), meta("a"))
        .unwrap();
    let n = 77_777;
    let broken = Broken {
        data: data[..n].to_vec(),
        pos: 0,
    };
    let err = store.upload_append(&s.id, 0, broken, None).unwrap_err();
    assert!(
        matches!(&err, Error::Io { source, .. } if source.kind() == io::ErrorKind::ConnectionReset),
        "{err}"
    );
    assert_eq!(store.upload_status(&s.id).unwrap().offset, n as u64);
    assert_eq!(part_len(&t, &s), n as u64);
    // The client resumes from where the store says it is.
    store
        .upload_append(&s.id, n as u64, &data[n..], None)
        .unwrap();
    let report = store.upload_finish(&s.id).unwrap();
    assert_eq!(store.read_all(report.file.id).unwrap(), data);
}

#[test]
fn a_broken_source_with_a_checksum_keeps_nothing() {
    let t = TempStore::new();
    let store = t.create();
    let s = store
        .upload_create("alice", Some(50_000), meta("a"))
        .unwrap();
    let data = random_bytes(4, 50_000);
    let sum = Checksum {
        algo: ChecksumAlgo::Sha1,
        digest: sha1::Sha1::digest(&data).to_vec(),
    };
    let broken = Broken {
        data: data[..30_000].to_vec(),
        pos: 0,
    };
    let err = store
        .upload_append(&s.id, 0, broken, Some(sum))
        .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert_eq!(store.upload_status(&s.id).unwrap().offset, 0);
    assert_eq!(part_len(&t, &s), 0);
}

#[test]
fn sessions_and_offsets_survive_reopening() {
    let t = TempStore::new();
    let store = t.create();
    let data = random_bytes(5, 90_000);
    let s = store
        .upload_create("bob", Some(data.len() as u64), meta("b"))
        .unwrap();
    let other = store
        .upload_create("carol", None, UploadMeta::default())
        .unwrap();
    store
        .upload_append(&s.id, 0, &data[..33_000], None)
        .unwrap();
    drop(store);

    let store = t.open();
    let again = store.upload_status(&s.id).unwrap();
    assert_eq!(again.offset, 33_000);
    assert_eq!(again.meta, s.meta);
    assert_eq!(again.created_ms, s.created_ms);
    assert_eq!(store.list_uploads(None).unwrap().len(), 2);
    let bobs = store.list_uploads(Some("bob")).unwrap();
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0].id, s.id);
    assert_eq!(store.list_uploads(Some("carol")).unwrap()[0].id, other.id);
    store
        .upload_append(&s.id, 33_000, &data[33_000..], None)
        .unwrap();
    let report = store.upload_finish(&s.id).unwrap();
    assert_eq!(store.read_all(report.file.id).unwrap(), data);
}

#[test]
fn staged_bytes_past_the_recorded_offset_are_cut_back() {
    let t = TempStore::new();
    let store = t.create();
    let data = random_bytes(6, 4000);
    let s = store.upload_create("alice", Some(4000), meta("a")).unwrap();
    store.upload_append(&s.id, 0, &data[..1000], None).unwrap();
    drop(store);
    // A crash after writing more but before recording it.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(part_path(&t, &s))
            .unwrap();
        f.write_all(&[0xEE; 500]).unwrap();
    }
    assert_eq!(part_len(&t, &s), 1500);
    let store = t.open();
    assert_eq!(store.upload_status(&s.id).unwrap().offset, 1000);
    assert_eq!(part_len(&t, &s), 1000);
    store
        .upload_append(&s.id, 1000, &data[1000..], None)
        .unwrap();
    let report = store.upload_finish(&s.id).unwrap();
    assert_eq!(store.read_all(report.file.id).unwrap(), data);
}

#[test]
fn expired_sessions_are_refused_and_swept() {
    let t = TempStore::new();
    let clock = Arc::new(TestClock(AtomicI64::new(1_000_000_000_000)));
    let config = Config {
        clock: clock.clone(),
        upload_ttl: Duration::from_secs(3600),
        ..Default::default()
    };
    let store = Store::create(t.path(), config).unwrap();
    let old = store
        .upload_create("alice", Some(10_000), meta("a"))
        .unwrap();
    assert_eq!(old.expires_ms, old.created_ms + 3_600_000);
    store
        .upload_append(&old.id, 0, &[1u8; 6000][..], None)
        .unwrap();
    clock.advance(Duration::from_secs(1800));
    let fresh = store.upload_create("alice", Some(10), meta("b")).unwrap();
    store
        .upload_append(&fresh.id, 0, &[2u8; 4][..], None)
        .unwrap();
    // An orphan: staged data whose session is gone (a crash during terminate, say).
    let orphan_id = ulid::Ulid::generate().to_string();
    std::fs::write(
        t.path().join("uploads").join(format!("{orphan_id}.part")),
        [0u8; 123],
    )
    .unwrap();
    // Something the sweep did not name: left alone.
    let stranger = t.path().join("uploads").join("notes.txt");
    std::fs::write(&stranger, b"x").unwrap();

    clock.advance(Duration::from_secs(1800));
    for r in [
        store.upload_status(&old.id).map(|_| ()),
        store
            .upload_append(&old.id, 6000, &[1u8; 10][..], None)
            .map(|_| ()),
        store.upload_finish(&old.id).map(|_| ()),
    ] {
        assert!(matches!(r, Err(Error::Expired { .. })), "{r:?}");
    }
    // The append renewed the fresh session.
    assert_eq!(store.upload_status(&fresh.id).unwrap().offset, 4);

    let report = store.upload_sweep_expired().unwrap();
    assert_eq!(report.expired_sessions, 1);
    assert_eq!(report.orphan_files, 1);
    assert_eq!(report.bytes_freed, 6000 + 123);
    assert!(matches!(
        store.upload_status(&old.id),
        Err(Error::NotFound { .. })
    ));
    assert!(!part_path(&t, &old).exists());
    assert!(stranger.exists());
    assert_eq!(store.upload_status(&fresh.id).unwrap().offset, 4);
    assert_eq!(part_len(&t, &fresh), 4);
    assert_eq!(store.upload_sweep_expired().unwrap(), Default::default());
}

/// A source that says it has started, then waits for a go-ahead before yielding its data.
struct Gated {
    started: mpsc::Sender<()>,
    release: mpsc::Receiver<()>,
    data: Option<Vec<u8>>,
}

impl Read for Gated {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(data) = self.data.take() else {
            return Ok(0);
        };
        self.started.send(()).unwrap();
        self.release.recv().unwrap();
        buf[..data.len()].copy_from_slice(&data);
        Ok(data.len())
    }
}

#[test]
fn a_second_writer_is_busy() {
    let t = TempStore::new();
    let store = t.create();
    let s = store.upload_create("alice", Some(200), meta("a")).unwrap();
    let (started_tx, started) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let gated = Gated {
        started: started_tx,
        release: release_rx,
        data: Some(vec![9u8; 100]),
    };
    let first = {
        let store = store.clone();
        let id = s.id.clone();
        std::thread::spawn(move || store.upload_append(&id, 0, gated, None))
    };
    started.recv().unwrap();
    let err = store
        .upload_append(&s.id, 0, &[1u8; 10][..], None)
        .unwrap_err();
    assert!(matches!(err, Error::Busy(_)), "{err}");
    for r in [
        store.upload_terminate(&s.id).map(|_| ()),
        store.upload_declare_length(&s.id, 5).map(|_| ()),
        store.upload_finish(&s.id).map(|_| ()),
    ] {
        assert!(matches!(r, Err(Error::Busy(_))), "{r:?}");
    }
    // Reading the status during an append is fine.
    assert_eq!(store.upload_status(&s.id).unwrap().offset, 0);
    release.send(()).unwrap();
    assert_eq!(first.join().unwrap().unwrap().offset, 100);
    // The session is free again.
    assert_eq!(
        store
            .upload_append(&s.id, 100, &[9u8; 100][..], None)
            .unwrap()
            .offset,
        200
    );
}

#[test]
fn uploads_over_the_limit_are_too_large() {
    let t = TempStore::new();
    let config = Config {
        max_upload: 1000,
        ..Default::default()
    };
    let store = Store::create(t.path(), config).unwrap();
    let err = store
        .upload_create("alice", Some(1001), meta("a"))
        .unwrap_err();
    assert!(matches!(err, Error::TooLarge { limit: 1000, .. }), "{err}");
    assert!(store.list_uploads(None).unwrap().is_empty());
    store.upload_create("alice", Some(1000), meta("a")).unwrap();

    // Deferred length: the limit holds while streaming and when the length is declared.
    let d = store.upload_create("alice", None, meta("d")).unwrap();
    store
        .upload_append(&d.id, 0, &[1u8; 600][..], None)
        .unwrap();
    let err = store
        .upload_append(&d.id, 600, &[1u8; 401][..], None)
        .unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    assert_eq!(store.upload_status(&d.id).unwrap().offset, 600);
    assert_eq!(part_len(&t, &d), 600);
    let err = store.upload_declare_length(&d.id, 1001).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
}

#[test]
fn bytes_past_the_declared_length_are_refused() {
    let t = TempStore::new();
    let store = t.create();
    let s = store.upload_create("alice", Some(100), meta("a")).unwrap();
    store.upload_append(&s.id, 0, &[1u8; 50][..], None).unwrap();
    let err = store
        .upload_append(&s.id, 50, &[1u8; 51][..], None)
        .unwrap_err();
    assert!(matches!(err, Error::TooLarge { limit: 100, .. }), "{err}");
    assert_eq!(store.upload_status(&s.id).unwrap().offset, 50);
    assert_eq!(part_len(&t, &s), 50);
}

#[test]
fn finishing_before_the_last_byte_is_a_conflict() {
    let t = TempStore::new();
    let store = t.create();
    let s = store.upload_create("alice", Some(100), meta("a")).unwrap();
    store.upload_append(&s.id, 0, &[1u8; 99][..], None).unwrap();
    let err = store.upload_finish(&s.id).unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    // Deferred and not yet declared.
    let d = store.upload_create("alice", None, meta("d")).unwrap();
    let err = store.upload_finish(&d.id).unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    assert_eq!(store.stats().unwrap().files, 0);
    assert_eq!(store.upload_status(&s.id).unwrap().offset, 99);
}

#[test]
fn a_deferred_length_is_declared_once() {
    let t = TempStore::new();
    let store = t.create();
    let data = random_bytes(7, 70_000);
    let s = store.upload_create("alice", None, meta("a")).unwrap();
    assert_eq!(s.length, None);
    store
        .upload_append(&s.id, 0, &data[..40_000], None)
        .unwrap();
    let err = store.upload_declare_length(&s.id, 39_999).unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    let s2 = store.upload_declare_length(&s.id, 70_000).unwrap();
    assert_eq!(s2.length, Some(70_000));
    let err = store.upload_declare_length(&s.id, 70_000).unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    store
        .upload_append(&s.id, 40_000, &data[40_000..], None)
        .unwrap();
    let report = store.upload_finish(&s.id).unwrap();
    assert_eq!(store.read_all(report.file.id).unwrap(), data);
}

#[test]
fn terminate_removes_the_session_and_its_data() {
    let t = TempStore::new();
    let store = t.create();
    let s = store.upload_create("alice", Some(100), meta("a")).unwrap();
    store.upload_append(&s.id, 0, &[1u8; 70][..], None).unwrap();
    store.upload_terminate(&s.id).unwrap();
    assert!(!part_path(&t, &s).exists());
    for r in [
        store.upload_status(&s.id).map(|_| ()),
        store
            .upload_append(&s.id, 70, &[1u8; 30][..], None)
            .map(|_| ()),
        store.upload_terminate(&s.id),
    ] {
        assert!(matches!(r, Err(Error::NotFound { .. })), "{r:?}");
    }
}

#[test]
fn bad_ids_and_inputs_are_refused() {
    let t = TempStore::new();
    let store = t.create();
    for id in [
        "",
        "../../etc/passwd",
        "01ARZ3NDEKTSV4RRFFQ69G5FAV",
        &"x".repeat(10_000),
    ] {
        let err = store.upload_status(id).unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{id:?}: {err}");
    }
    assert!(matches!(
        store.upload_create("", Some(1), UploadMeta::default()),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        store.upload_create("alice", Some(1), meta("")),
        Err(Error::InvalidInput(_))
    ));
    let mut huge = UploadMeta::default();
    huge.extras.insert("k".into(), "v".repeat(100_000));
    assert!(matches!(
        store.upload_create("alice", Some(1), huge),
        Err(Error::InvalidInput(_))
    ));
    assert!(store.list_uploads(None).unwrap().is_empty());
}

#[test]
fn an_empty_upload_finishes_as_an_empty_file() {
    let t = TempStore::new();
    let store = t.create();
    let s = store
        .upload_create("alice", Some(0), UploadMeta::default())
        .unwrap();
    let report = store.upload_finish(&s.id).unwrap();
    assert_eq!(report.file.size, 0);
    let files = store.list(&ListQuery::default()).unwrap().files;
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].metadata["upload_session"], s.id.as_str());
}

#[test]
fn a_refused_finish_removes_the_session() {
    let t = TempStore::new();
    let store = t.create();
    // Not a PNG, whatever the name says: validation refuses it at finish.
    let data = random_bytes(8, 5000);
    let m = UploadMeta {
        name: Some("photo.png".into()),
        ..Default::default()
    };
    let s = store.upload_create("alice", Some(5000), m).unwrap();
    store.upload_append(&s.id, 0, &data[..], None).unwrap();
    let err = store.upload_finish(&s.id).unwrap_err();
    assert!(matches!(err, Error::Rejected { .. }), "{err}");
    assert!(matches!(
        store.upload_status(&s.id),
        Err(Error::NotFound { .. })
    ));
    assert!(!part_path(&t, &s).exists());
    assert_eq!(store.stats().unwrap().files, 0);
}

#[test]
fn the_category_rules_apply_at_creation() {
    let t = TempStore::new();
    let store = t.create();
    let photo = UploadMeta {
        name: Some("photo.png".into()),
        origin: tessera::Origin::Client,
        ..Default::default()
    };
    // A client's images are limited to 10 MB by default: refused before a byte is sent.
    let err = store
        .upload_create("alice", Some(11_000_000), photo.clone())
        .unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    assert!(store.list_uploads(None).unwrap().is_empty());
    store
        .upload_create("alice", Some(9_000_000), photo.clone())
        .unwrap();
    // A category that does not take the file is refused too.
    let named = UploadMeta {
        category: Some("documents".into()),
        ..photo.clone()
    };
    match store.upload_create("alice", Some(100), named) {
        Err(Error::Rejected { code, .. }) => assert_eq!(code, "category_mismatch"),
        other => panic!("{other:?}"),
    }
    // The store's owner is held to the limits only when configured.
    let local = UploadMeta {
        origin: tessera::Origin::Local,
        ..photo
    };
    store
        .upload_create("alice", Some(11_000_000), local)
        .unwrap();
    assert_eq!(store.list_uploads(None).unwrap().len(), 2);
}

#[test]
fn a_lost_staging_file_is_damage() {
    let t = TempStore::new();
    let store = t.create();
    let s = store.upload_create("alice", Some(100), meta("a")).unwrap();
    store.upload_append(&s.id, 0, &[1u8; 10][..], None).unwrap();
    std::fs::remove_file(part_path(&t, &s)).unwrap();
    let err = store.upload_status(&s.id).unwrap_err();
    assert!(err.is_corruption(), "{err}");
    let err = store
        .upload_append(&s.id, 10, &[1u8; 10][..], None)
        .unwrap_err();
    assert!(err.is_corruption(), "{err}");
    // Terminating it still works.
    store.upload_terminate(&s.id).unwrap();
}
