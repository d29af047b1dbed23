//! One conformance suite for every [`ColdTier`]: the in-memory tier, the local-directory tier
//! and the S3 tier against a REAL Garage server (started by tests/garage/start.sh, which
//! prints the `TESSERA_TEST_S3_*` variables these tests read; `make unit` does it). Without
//! those variables the Garage tests fail, saying so: they never skip.
//!
//! The checks are the contracts written on [`ColdTier`]; each implementation runs the same
//! [`conformance`] function.

use std::time::Duration;

use tessera::tier::{
    ColdTier, LocalDirTier, MemoryTier, ObjectInfo, ObjectOptions, RetryBudget, S3Options, S3Tier,
    TierError,
};

use crate::common::random_bytes;

/// The S3 options of the test Garage (tests/garage/start.sh), parts at S3's 5 MiB minimum so a
/// 12 MiB object takes three.
pub fn garage_options(prefix: &str) -> S3Options {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: the S3 tests need the test Garage. Run `make unit`, or \
                 `env=$(tests/garage/start.sh); eval \"$env\"` first (and tests/garage/stop.sh \
                 after)"
            )
        })
    };
    let endpoint = var("TESSERA_TEST_S3_ENDPOINT");
    let mut o = S3Options::new(
        Some(endpoint),
        var("TESSERA_TEST_S3_BUCKET"),
        var("TESSERA_TEST_S3_REGION"),
        var("TESSERA_TEST_S3_ACCESS_KEY_ID"),
        var("TESSERA_TEST_S3_SECRET_ACCESS_KEY"),
    );
    o.allow_http = true;
    o.prefix = prefix.to_owned();
    o.part_size = 5 << 20;
    o
}

pub fn garage_tier(prefix: &str) -> S3Tier {
    S3Tier::new(garage_options(prefix)).expect("S3 tier for the test Garage")
}

/// A prefix no other run uses (the Garage bucket outlives test runs).
pub fn unique(name: &str) -> String {
    format!(
        "{name}-{}",
        ulid::Ulid::generate().to_string().to_lowercase()
    )
}

fn opts() -> ObjectOptions {
    ObjectOptions::default()
}

#[track_caller]
fn assert_failed<T: std::fmt::Debug>(r: Result<T, TierError>, what: &str) {
    match r {
        Err(TierError::Failed { .. }) => {}
        other => panic!("{what}: expected Failed, got {other:?}"),
    }
}

#[track_caller]
fn assert_not_found<T: std::fmt::Debug>(r: Result<T, TierError>, what: &str) {
    match r {
        Err(TierError::NotFound { .. }) => {}
        other => panic!("{what}: expected NotFound, got {other:?}"),
    }
}

fn keys(list: &[ObjectInfo]) -> Vec<&str> {
    list.iter().map(|o| o.key.as_str()).collect()
}

/// Every contract of [`ColdTier`], on keys under `root/` (which must hold nothing yet; the
/// suite leaves nothing behind).
pub fn conformance(tier: &dyn ColdTier, root: &str) {
    let k = |rest: &str| format!("{root}/{rest}");
    assert!(!tier.describe().is_empty());
    assert_eq!(tier.list(&k("")).unwrap(), vec![], "{root}/ starts empty");

    // Missing objects.
    let missing = k("missing");
    assert_eq!(tier.head(&missing).unwrap(), None);
    assert_not_found(tier.get_range(&missing, 0..1), "get of a missing object");
    assert_not_found(
        tier.get_range(&missing, 0..0),
        "empty get of a missing object",
    );
    tier.delete(&missing).expect("deleting a missing object");

    // Exact bytes, any range.
    let key = k("obj");
    let data = random_bytes(1, 100_000);
    let n = data.len() as u64;
    tier.put(&key, &data, &opts()).unwrap();
    assert_eq!(tier.head(&key).unwrap(), Some(n));
    assert_eq!(tier.get_range(&key, 0..n).unwrap(), data, "whole object");
    assert_eq!(
        tier.get_range(&key, 1234..56789).unwrap(),
        &data[1234..56789]
    );
    assert_eq!(
        tier.get_range(&key, n - 1..n).unwrap(),
        &data[n as usize - 1..]
    );
    assert_eq!(tier.get_range(&key, 0..1).unwrap(), &data[..1]);
    assert_eq!(tier.get_range(&key, 0..0).unwrap(), b"", "empty at 0");
    assert_eq!(tier.get_range(&key, 500..500).unwrap(), b"", "empty inside");
    assert_eq!(tier.get_range(&key, n..n).unwrap(), b"", "empty at the end");

    // Out of range is Failed, never short data.
    assert_failed(tier.get_range(&key, n - 10..n + 1), "range past the end");
    assert_failed(tier.get_range(&key, n..n + 1), "range starting at the end");
    assert_failed(tier.get_range(&key, n + 5..n + 10), "range beyond the end");
    assert_failed(
        tier.get_range(&key, n + 1..n + 1),
        "empty range beyond the end",
    );
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = 10..5;
    assert_failed(tier.get_range(&key, reversed), "reversed range");

    // A put replaces, whatever the sizes.
    let shorter = random_bytes(2, 777);
    tier.put(&key, &shorter, &opts()).unwrap();
    assert_eq!(tier.head(&key).unwrap(), Some(777));
    assert_eq!(tier.get_range(&key, 0..777).unwrap(), shorter);
    assert_failed(
        tier.get_range(&key, 0..778),
        "range of the old, longer object",
    );

    // An empty object.
    let empty = k("empty");
    tier.put(&empty, b"", &opts()).unwrap();
    assert_eq!(tier.head(&empty).unwrap(), Some(0));
    assert_eq!(tier.get_range(&empty, 0..0).unwrap(), b"");
    assert_failed(tier.get_range(&empty, 0..1), "a byte of an empty object");

    // Delete, and again.
    tier.delete(&key).unwrap();
    assert_eq!(tier.head(&key).unwrap(), None);
    assert_not_found(tier.get_range(&key, 0..1), "get after delete");
    tier.delete(&key).expect("delete is idempotent");
    tier.delete(&empty).unwrap();

    // Listing: string prefixes, sorted, exact, sizes; no neighbour that shares the prefix
    // string outside its segment, an object and the "directory" of the same name side by side.
    let layout = [
        ("l", 1),
        ("l/a", 2),
        ("l/ab", 3),
        ("l/b/c", 4),
        ("l/b/d", 5),
        ("l/b/e/f", 6),
        ("lx", 7),
        ("lx/a", 8),
        ("m", 9),
    ];
    // Written out of order: the listing sorts.
    for (name, size) in layout.iter().rev() {
        tier.put(&k(name), &random_bytes(*size, *size as usize), &opts())
            .unwrap();
    }
    let list = |p: &str| tier.list(&k(p)).unwrap();
    let expect = |names: &[&str]| names.iter().map(|n| k(n)).collect::<Vec<_>>();
    assert_eq!(
        keys(&list("l/")),
        expect(&["l/a", "l/ab", "l/b/c", "l/b/d", "l/b/e/f"])
    );
    assert_eq!(keys(&list("l/a")), expect(&["l/a", "l/ab"]));
    assert_eq!(keys(&list("l/b/")), expect(&["l/b/c", "l/b/d", "l/b/e/f"]));
    assert_eq!(keys(&list("l/b")), expect(&["l/b/c", "l/b/d", "l/b/e/f"]));
    assert_eq!(
        keys(&list("l")),
        expect(&[
            "l", "l/a", "l/ab", "l/b/c", "l/b/d", "l/b/e/f", "lx", "lx/a"
        ])
    );
    assert_eq!(keys(&list("lx")), expect(&["lx", "lx/a"]));
    assert_eq!(keys(&list("l/b/e/f")), expect(&["l/b/e/f"]));
    assert_eq!(list("l/c"), vec![]);
    assert_eq!(list("nothing/"), vec![]);
    let all = list("");
    assert_eq!(all.len(), layout.len());
    for (info, (name, size)) in all.iter().zip(layout.iter()) {
        assert_eq!((info.key.as_str(), info.size), (k(name).as_str(), *size));
    }
    // The object "l" and the objects under "l/" are independent.
    assert_eq!(tier.get_range(&k("l"), 0..1).unwrap(), random_bytes(1, 1));
    tier.delete(&k("l")).unwrap();
    assert_eq!(keys(&list("l/b/e")), expect(&["l/b/e/f"]));
    assert_eq!(tier.head(&k("l/a")).unwrap(), Some(2));

    // Deep keys.
    let deep = k("n/a/b/c/d/e.pack");
    tier.put(&deep, b"deep", &opts()).unwrap();
    assert_eq!(tier.get_range(&deep, 0..4).unwrap(), b"deep");

    // A large object: past any multipart threshold (12 MiB, three 5 MiB parts on S3), read
    // across the part boundaries.
    let big_key = k("big");
    let big = random_bytes(3, 12 << 20);
    let len = big.len() as u64;
    tier.put(&big_key, &big, &opts()).unwrap();
    assert_eq!(tier.head(&big_key).unwrap(), Some(len));
    assert!(
        tier.get_range(&big_key, 0..len).unwrap() == big,
        "12 MiB round trip"
    );
    let p = 5u64 << 20;
    for r in [p - 10..p + 10, 2 * p - 1..2 * p + 1, len - 3..len] {
        assert_eq!(
            tier.get_range(&big_key, r.clone()).unwrap(),
            &big[r.start as usize..r.end as usize],
            "{r:?}"
        );
    }
    assert_failed(
        tier.get_range(&big_key, len - 1..len + 1),
        "past a large object",
    );

    // A storage class is accepted (and kept where the tier can tell).
    let classed = k("classed");
    let class = ObjectOptions {
        storage_class: Some("STANDARD".into()),
    };
    tier.put(&classed, b"class", &class).unwrap();
    assert_eq!(tier.get_range(&classed, 0..5).unwrap(), b"class");

    // Invalid keys are Failed, on every tier alike.
    for bad in [
        "",
        "/abs",
        "a//b",
        "a/./b",
        "a/../b",
        "..",
        "a/",
        "with space",
        "tab\t",
        "é",
    ] {
        assert_failed(tier.put(bad, b"x", &opts()), &format!("put {bad:?}"));
        assert_failed(tier.head(bad), &format!("head {bad:?}"));
        assert_failed(tier.get_range(bad, 0..1), &format!("get {bad:?}"));
        assert_failed(tier.delete(bad), &format!("delete {bad:?}"));
    }

    // Calls from several threads at once.
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let k = &k;
            s.spawn(move || {
                let key = k(&format!("threads/{t}"));
                let data = random_bytes(100 + t, 300_000);
                tier.put(&key, &data, &opts()).unwrap();
                assert_eq!(tier.get_range(&key, 0..300_000).unwrap(), data);
            });
        }
    });
    assert_eq!(tier.list(&k("threads/")).unwrap().len(), 4);

    // Clean up: nothing left under root/.
    for o in tier.list(&k("")).unwrap() {
        tier.delete(&o.key).unwrap();
    }
    assert_eq!(tier.list(&k("")).unwrap(), vec![]);
}

#[test]
fn memory() {
    let tier = MemoryTier::new();
    conformance(&tier, "conformance");
    conformance(&tier, "second/run");
    tier.put(
        "c",
        b"x",
        &ObjectOptions {
            storage_class: Some("GLACIER_IR".into()),
        },
    )
    .unwrap();
    assert_eq!(tier.storage_class("c").as_deref(), Some("GLACIER_IR"));
}

#[test]
fn local_dir() {
    let dir = tempfile::tempdir().unwrap();
    let tier = LocalDirTier::new(dir.path().join("cold")).unwrap();
    conformance(&tier, "conformance");
    conformance(&tier, "second/run");
    // Objects outlive the tier value: another one on the same directory reads them.
    tier.put("keep/a", b"kept", &opts()).unwrap();
    drop(tier);
    let again = LocalDirTier::new(dir.path().join("cold")).unwrap();
    assert_eq!(again.get_range("keep/a", 0..4).unwrap(), b"kept");
    assert_eq!(keys(&again.list("").unwrap()), ["keep/a"]);
}

#[test]
fn garage() {
    let tier = garage_tier("");
    conformance(&tier, &unique("conformance"));
}

#[test]
fn garage_under_a_prefix() {
    let prefix = unique("prefixed");
    let tier = garage_tier(&format!("{prefix}/cold"));
    assert!(tier.describe().contains(&prefix), "{}", tier.describe());
    conformance(&tier, "c");
    // The keys really live under the prefix: the bucket's root sees them there.
    tier.put("x/y", b"xy", &opts()).unwrap();
    let root = garage_tier("");
    assert_eq!(
        keys(&root.list(&format!("{prefix}/")).unwrap()),
        [format!("{prefix}/cold/x/y")]
    );
    assert_eq!(tier.list("").unwrap().len(), 1);
    tier.delete("x/y").unwrap();
    assert_eq!(root.list(&format!("{prefix}/")).unwrap(), vec![]);
}

/// A dead endpoint (a port nothing listens on): every call is `Unavailable` once the retry
/// budget is spent — not a panic, not `Failed`, not a hang.
#[test]
fn s3_dead_endpoint_is_unavailable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut o = S3Options::new(
        Some(format!("http://127.0.0.1:{port}")),
        "bucket",
        "garage",
        "GKid",
        "secret",
    );
    o.allow_http = true;
    o.retry = RetryBudget {
        max_retries: 2,
        retry_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(2),
    };
    let tier = S3Tier::new(o).unwrap();
    let unavailable = |r: Result<(), TierError>, op: &str| match r {
        Err(e @ TierError::Unavailable { .. }) => {
            assert!(e.is_temporary());
            assert!(e.to_string().contains("unavailable"), "{e}");
        }
        other => panic!("{op} on a dead endpoint: expected Unavailable, got {other:?}"),
    };
    unavailable(tier.put("a/b", b"x", &opts()), "put");
    unavailable(
        tier.put("a/big", &random_bytes(1, 6 << 20), &opts()),
        "multipart put",
    );
    unavailable(tier.get_range("a/b", 0..1).map(drop), "get");
    unavailable(tier.head("a/b").map(drop), "head");
    unavailable(tier.delete("a/b"), "delete");
    unavailable(tier.list("a/").map(drop), "list");
}

/// `tessera serve` calls the engine from tokio's blocking pool, and may drop the store inside
/// a task: neither may panic ("cannot start a runtime from within a runtime", "cannot drop a
/// runtime in a context where blocking is not allowed").
#[test]
fn garage_from_inside_a_tokio_runtime() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let prefix = unique("tokio");
    let tier = std::sync::Arc::new(garage_tier(&prefix));
    rt.block_on(async {
        let t = tier.clone();
        tokio::task::spawn_blocking(move || {
            t.put("a", b"from the blocking pool", &opts()).unwrap();
            assert_eq!(t.get_range("a", 0..4).unwrap(), b"from");
        })
        .await
        .unwrap();
        // Straight from a task too (it blocks that worker, which is the caller's business).
        let t = tier.clone();
        tokio::spawn(async move {
            assert_eq!(t.head("a").unwrap(), Some(22));
            t.delete("a").unwrap();
        })
        .await
        .unwrap();
        // The last reference dropped inside a task.
        let own = garage_tier(&prefix);
        tokio::spawn(async move {
            assert_eq!(own.list("").unwrap(), vec![]);
            drop(own);
        })
        .await
        .unwrap();
    });
}
