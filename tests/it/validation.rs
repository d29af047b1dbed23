//! Content validation through the public `Store` API: categories, magic bytes against names
//! and declared types, size limits before and while streaming (for a client's put, and for the
//! owner's when configured), and that a refused put commits nothing.

use std::io::{self, Read};
use std::sync::Arc;

use tessera::validate::policy::{CATEGORY_MISMATCH, TYPE_MISMATCH, TYPE_NOT_ALLOWED};
use tessera::validate::{CategoryRule, Policy};
use tessera::{Config, Error, ListQuery, Origin, PutOptions, Store};

use crate::common::{TempStore, random_bytes, text_bytes};

fn png(len: usize) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0".to_vec();
    v.extend_from_slice(&random_bytes(1, len.saturating_sub(v.len())));
    v
}

fn jpeg(len: usize) -> Vec<u8> {
    let mut v = b"\xFF\xD8\xFF\xE0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00".to_vec();
    v.extend_from_slice(&random_bytes(2, len.saturating_sub(v.len())));
    v
}

/// A Windows executable: DOS header pointing at a PE header.
fn exe() -> Vec<u8> {
    let mut v = random_bytes(3, 4096);
    v[..2].copy_from_slice(b"MZ");
    v[0x3C..0x40].copy_from_slice(&0x80u32.to_le_bytes());
    v[0x80..0x84].copy_from_slice(b"PE\0\0");
    v[0x84..0x86].copy_from_slice(&0x8664u16.to_le_bytes());
    v[0x96..0x98].copy_from_slice(&0x0022u16.to_le_bytes());
    v
}

fn named(name: &str) -> PutOptions {
    PutOptions {
        name: Some(name.into()),
        ..PutOptions::key(name)
    }
}

/// [`named`], as a put made for an untrusted client (held to the category limits).
fn client(name: &str) -> PutOptions {
    PutOptions {
        origin: Origin::Client,
        ..named(name)
    }
}

fn with_policy(t: &TempStore, policy: Policy) -> Store {
    Store::create(
        t.path(),
        Config {
            policy: Arc::new(policy),
            ..Config::default()
        },
    )
    .unwrap()
}

/// What a refused put must leave unchanged.
fn committed(store: &Store) -> (u64, u64, u64, u64) {
    let s = store.stats().unwrap();
    (s.files, s.versions, s.logical_bytes, s.chunks)
}

fn listed(store: &Store) -> usize {
    store
        .list(&ListQuery {
            include_deleted: true,
            ..Default::default()
        })
        .unwrap()
        .files
        .len()
}

fn code(e: Error) -> &'static str {
    match e {
        Error::Rejected { code, .. } => code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// A source that must not be read.
struct MustNotRead;

impl Read for MustNotRead {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        panic!("the put read its input although it should have been refused first")
    }
}

#[test]
fn an_executable_renamed_jpg_is_rejected_naming_both_types() {
    let t = TempStore::new();
    let store = t.create();
    store.put(&jpeg(5000)[..], &named("real.jpg")).unwrap();
    let before = committed(&store);
    let err = store.put(&exe()[..], &named("holiday.jpg")).unwrap_err();
    let msg = err.to_string();
    assert_eq!(code(err), TYPE_MISMATCH);
    assert!(
        msg.contains("image/jpeg") && msg.contains("portable-executable"),
        "{msg}"
    );
    assert_eq!(committed(&store), before);
    assert_eq!(listed(&store), 1);
    // Under a name that claims nothing, the same bytes are an executable in `other`.
    let ok = store.put(&exe()[..], &named("setup.exe")).unwrap();
    assert_eq!(ok.file.category, "other");
    assert_eq!(
        ok.file.mime,
        "application/vnd.microsoft.portable-executable"
    );
}

#[test]
fn a_png_declared_as_pdf_is_rejected() {
    let t = TempStore::new();
    let store = t.create();
    let declared_pdf = |name: &str, category: Option<&str>| PutOptions {
        mime: Some("application/pdf".into()),
        category: category.map(str::to_string),
        ..named(name)
    };
    // Where a PDF is allowed, the content gives the lie to the declared type.
    let err = store
        .put(&png(3000)[..], &declared_pdf("scan", Some("other")))
        .unwrap_err();
    let msg = err.to_string();
    assert_eq!(code(err), TYPE_MISMATCH);
    assert!(
        msg.contains("application/pdf") && msg.contains("image/png"),
        "{msg}"
    );
    let err = store
        .put(&png(3000)[..], &declared_pdf("scan.pdf", None))
        .unwrap_err();
    assert_eq!(code(err), TYPE_MISMATCH);
    // In `images` a PDF is not even allowed, and that is decided before reading.
    let err = store
        .put(MustNotRead, &declared_pdf("scan.png", None))
        .unwrap_err();
    assert_eq!(code(err), TYPE_NOT_ALLOWED);
    assert_eq!(committed(&store), (0, 0, 0, 0));
}

#[test]
fn a_declared_size_over_the_limit_is_refused_before_reading() {
    let t = TempStore::new();
    let store = t.create();
    let opts = PutOptions {
        declared_size: Some(10_000_001),
        ..client("huge.png")
    };
    match store.put(MustNotRead, &opts) {
        Err(Error::TooLarge { limit, what }) => {
            assert_eq!(limit, 10_000_000);
            assert!(what.contains("images"), "{what}");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // The same through put_many, next to an item that passes.
    let small = png(2000);
    let results = store.put_many(vec![
        (Box::new(MustNotRead) as Box<dyn Read>, opts.clone()),
        (Box::new(&small[..]) as Box<dyn Read>, named("small.png")),
    ]);
    assert!(matches!(results[0], Err(Error::TooLarge { .. })));
    assert_eq!(results[1].as_ref().unwrap().file.size, 2000);
    // A declared size within the limit reads as usual.
    let fine = PutOptions {
        declared_size: Some(2000),
        ..client("fine.png")
    };
    assert_eq!(store.put(&small[..], &fine).unwrap().file.mime, "image/png");
    // The store's owner is not held to the category limits: the same size is stored.
    let local = PutOptions {
        declared_size: Some(10_000_001),
        ..named("huge.png")
    };
    let f = store.put(&png(10_000_001)[..], &local).unwrap().file;
    assert_eq!((f.category.as_str(), f.size), ("images", 10_000_001));
}

#[test]
fn an_undeclared_oversize_input_fails_while_streaming_and_commits_nothing() {
    let t = TempStore::new();
    let mut policy = Policy::default();
    policy.categories.insert(
        "small".into(),
        CategoryRule {
            extensions: vec![],
            mime_types: vec![],
            max_size: 100_000,
        },
    );
    // `local_category_limits`: the owner's own puts are held to the limits too.
    let store = Store::create(
        t.path(),
        Config {
            policy: Arc::new(policy),
            local_category_limits: true,
            ..Config::default()
        },
    )
    .unwrap();
    store.put(&jpeg(3000)[..], &named("keep.jpg")).unwrap();
    let before = committed(&store);

    // Many chunks through the parallel pipeline: the default images limit is 10 MB.
    let big = jpeg(10_000_001 + 300_000);
    match store.put(&big[..], &named("big.jpg")) {
        Err(Error::TooLarge { limit, .. }) => assert_eq!(limit, 10_000_000),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(committed(&store), before);
    assert_eq!(listed(&store), 1);
    // Exactly the limit passes.
    let at_limit = store.put(&big[..10_000_000], &named("limit.jpg")).unwrap();
    assert_eq!(at_limit.file.size, 10_000_000);
    store.delete(at_limit.file.id).unwrap();
    let before = committed(&store);

    // One chunk (the inline path), past the prefix the guard reads first.
    let text = text_bytes(4, 150_000);
    let opts = PutOptions {
        category: Some("small".into()),
        ..named("notes.txt")
    };
    match store.put(&text[..], &opts) {
        Err(Error::TooLarge { limit, what }) => {
            assert_eq!(limit, 100_000);
            assert!(what.contains("small"), "{what}");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(committed(&store), before);
    assert_eq!(listed(&store), 2, "only keep.jpg and the deleted limit.jpg");
    for key in ["big.jpg", "notes.txt"] {
        assert!(matches!(
            store.resolve_key("local", key),
            Err(Error::NotFound { .. })
        ));
    }
    // The store is fine afterwards, and the data of the refused puts is not referenced.
    drop(store);
    let store = Store::open(t.path(), Config::default()).unwrap();
    assert!(store.verify(&()).unwrap().is_ok());
}

#[test]
fn categories_are_inferred_from_the_extension() {
    let t = TempStore::new();
    let store = t.create();
    let cat = |data: &[u8], name: &str| store.put(data, &named(name)).unwrap().file.category;
    assert_eq!(cat(&png(100), "a.png"), "images");
    assert_eq!(cat(&jpeg(100), "b.JPEG"), "images");
    assert_eq!(cat(&text_bytes(1, 500), "c.txt"), "documents");
    assert_eq!(
        cat(b"PK\x05\x06\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", "d.zip"),
        "archives"
    );
    assert_eq!(cat(&text_bytes(2, 500), "lib.rs"), "other");
    assert_eq!(cat(&text_bytes(3, 500), "Cargo.toml"), "other");
    assert_eq!(cat(&random_bytes(4, 500), "blob"), "other");
    // The owner's explicit category wins when it takes the file, and must exist.
    let explicit = PutOptions {
        category: Some("other".into()),
        ..named("e.png")
    };
    assert_eq!(
        store.put(&png(100)[..], &explicit).unwrap().file.category,
        "other"
    );
    let unknown = PutOptions {
        category: Some("photos".into()),
        ..named("f.png")
    };
    assert!(matches!(
        store.put(MustNotRead, &unknown),
        Err(Error::InvalidInput(_))
    ));
    let wrong = PutOptions {
        category: Some("images".into()),
        ..named("g.txt")
    };
    assert_eq!(
        code(store.put(MustNotRead, &wrong).unwrap_err()),
        CATEGORY_MISMATCH
    );
    // A client's `other` does not take a PNG out of images.
    let asked = PutOptions {
        category: Some("other".into()),
        ..client("h.png")
    };
    assert_eq!(
        store.put(&png(100)[..], &asked).unwrap().file.category,
        "images"
    );
    // Names that claim nothing are classified by their content.
    assert_eq!(cat(&png(100), "upload"), "images");
    let images = store
        .list(&ListQuery {
            category: Some("images".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(images.files.len(), 4);
}

#[test]
fn a_policy_without_other_refuses_unknown_extensions() {
    let t = TempStore::new();
    let mut policy = Policy::default();
    policy.categories.remove(tessera::store::DEFAULT_CATEGORY);
    let store = with_policy(&t, policy);
    // A name that decides it is refused before reading...
    let err = store.put(MustNotRead, &named("main.rs")).unwrap_err();
    assert_eq!(code(err), TYPE_NOT_ALLOWED);
    // ...names that claim nothing (`.exe` is octet-stream to mime_guess) once the content is
    // known.
    let err = store
        .put(&text_bytes(1, 500)[..], &named("README"))
        .unwrap_err();
    assert_eq!(code(err), TYPE_NOT_ALLOWED);
    let err = store.put(&exe()[..], &named("setup.exe")).unwrap_err();
    assert_eq!(code(err), TYPE_NOT_ALLOWED);
    assert!(matches!(
        store.put(&random_bytes(2, 500)[..], &PutOptions::default()),
        Err(Error::Rejected { .. })
    ));
    assert_eq!(
        store
            .put(&png(100)[..], &named("ok.png"))
            .unwrap()
            .file
            .category,
        "images"
    );
    assert_eq!(committed(&store).0, 1);
}

#[test]
fn stat_reports_the_validated_type() {
    let t = TempStore::new();
    let store = t.create();
    let mime = |data: &[u8], opts: PutOptions| {
        let id = store.put(data, &opts).unwrap().file.id;
        store.stat(id).unwrap().mime
    };
    // No name, nothing declared: the content says what it is.
    assert_eq!(mime(&png(500), PutOptions::key("upload-1")), "image/png");
    // An alias or parameters in the declared type become the canonical type.
    let declared = PutOptions {
        mime: Some("image/jpg; foo=bar".into()),
        ..named("p.jpg")
    };
    assert_eq!(mime(&jpeg(500), declared), "image/jpeg");
    // Text keeps its name's type, even when declared more loosely.
    let md = PutOptions {
        mime: Some("text/plain".into()),
        ..named("README.md")
    };
    assert_eq!(mime(&text_bytes(5, 800), md), "text/markdown");
    assert_eq!(
        mime(&random_bytes(6, 800), named("x.bin")),
        "application/octet-stream"
    );
    // Zero-length files are allowed and take their name's type.
    let empty = store.put(&b""[..], &named("empty.png")).unwrap();
    assert_eq!(
        (empty.file.size, empty.file.mime.as_str()),
        (0, "image/png")
    );
    // Versions of one key are checked one by one.
    let id = store.put(&png(300)[..], &named("v.png")).unwrap().file.id;
    let err = store.put(&exe()[..], &named("v.png")).unwrap_err();
    assert_eq!(code(err), TYPE_MISMATCH);
    assert_eq!(store.versions(id).unwrap().len(), 1);
}
