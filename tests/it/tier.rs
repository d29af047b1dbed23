//! The cold tier, engine side, on the in-memory and local-directory tiers: moves both ways,
//! transparent reads (whole and by range), eligibility, lifecycle rules, the collector across
//! tiers, corrupt and unreachable objects, `verify_cold`, dry runs, rehydration on read, and a
//! real-process crash test of moves to cold.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tessera::tier::{ColdTier, FaultyTier, LocalDirTier, MemoryTier};
use tessera::{Config, FileId, GcOptions, PutOptions, Store, TierMoveOptions, TierRule, TierRules};

use crate::common::{TempStore, TestClock, random_bytes};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

fn config(tier: Arc<dyn ColdTier>) -> Config {
    Config {
        cold_tier: Some(tier),
        pack_target_size: 1 << 20,
        cold_read_block: 256 << 10,
        ..Config::default()
    }
}

fn put(store: &Store, data: &[u8], key: &str) -> FileId {
    store.put(data, &PutOptions::key(key)).expect("put").file.id
}

fn files(ids: &[FileId]) -> TierMoveOptions {
    TierMoveOptions {
        files: ids.to_vec(),
        ..Default::default()
    }
}

fn no_grace() -> GcOptions {
    GcOptions {
        grace: Duration::ZERO,
        ..GcOptions::default()
    }
}

fn range(store: &Store, id: FileId, r: std::ops::Range<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    store
        .get_range(id, r)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Keys of every object in the tier.
fn objects(tier: &dyn ColdTier) -> Vec<String> {
    tier.list("").unwrap().into_iter().map(|o| o.key).collect()
}

#[test]
fn a_file_moved_cold_reads_back_identical_frees_local_bytes_and_comes_back_hot() {
    let t = TempStore::new();
    let tier = Arc::new(MemoryTier::new());
    let store = Store::create(t.path(), config(tier.clone())).unwrap();
    let data = random_bytes(1, 3 << 20);
    let other = random_bytes(2, 300 << 10);
    let id = put(&store, &data, "big");
    let keep = put(&store, &other, "small");
    let before = store.stats().unwrap();

    let report = store.move_to_cold(&files(&[id])).unwrap();
    assert!(report.chunks > 20, "{report:?}");
    assert!(report.packs_written.len() >= 3, "1 MiB packs: {report:?}");
    assert_eq!(objects(&*tier).len(), report.packs_written.len());
    let stats = store.stats().unwrap();
    assert_eq!(stats.cold.chunks, report.chunks);
    assert_eq!(stats.cold.packs, report.packs_written.len() as u64);
    assert!(stats.cold.unique_bytes >= 3 << 20);
    assert_eq!(stats.hot.chunks + stats.cold.chunks, stats.chunks);

    // Transparent reads, whole and by range (inside a chunk, across chunks and packs).
    assert_eq!(store.read_all(id).unwrap(), data);
    for r in [
        0..1,
        100..70_000,
        1_000_000..2_200_000,
        (3 << 20) - 5..3 << 20,
    ] {
        assert_eq!(
            range(&store, id, r.clone()),
            &data[r.start as usize..r.end as usize]
        );
    }
    assert_eq!(store.read_all(keep).unwrap(), other);
    assert!(store.cold_gets() > 0);

    // The hot copy goes with the collector's compaction of the old packs.
    store.gc(&no_grace()).unwrap();
    let after = store.stats().unwrap();
    assert!(
        after.hot.pack_bytes + (5 << 20) / 2 < before.hot.pack_bytes,
        "local pack bytes {} -> {}",
        before.hot.pack_bytes,
        after.hot.pack_bytes
    );
    assert_eq!(store.read_all(id).unwrap(), data);
    assert!(store.verify(&()).unwrap().is_ok());
    let cold = store.verify_cold().unwrap();
    assert!(cold.is_ok(), "{cold:?}");
    assert_eq!(cold.chunks, report.chunks);

    // Back to hot: the objects go, the data stays.
    let back = store.move_to_hot(&files(&[id])).unwrap();
    assert_eq!(back.chunks, report.chunks);
    assert_eq!(back.packs_deleted.len(), report.packs_written.len());
    assert!(objects(&*tier).is_empty());
    let stats = store.stats().unwrap();
    assert_eq!(stats.cold.chunks, 0);
    assert_eq!(stats.cold.packs, 0);
    assert_eq!(store.read_all(id).unwrap(), data);
    assert!(store.verify(&()).unwrap().is_ok());

    // And all of it survives a reopen.
    drop(store);
    let store = Store::open(t.path(), config(tier.clone())).unwrap();
    assert_eq!(store.read_all(id).unwrap(), data);
    assert_eq!(store.read_all(keep).unwrap(), other);
}

#[test]
fn chunks_shared_with_files_outside_the_move_stay_hot() {
    let t = TempStore::new();
    let tier = Arc::new(MemoryTier::new());
    let store = Store::create(t.path(), config(tier.clone())).unwrap();
    let shared = random_bytes(3, 1 << 20);
    let a = [random_bytes(4, 300 << 10), shared.clone()].concat();
    let b = [shared.clone(), random_bytes(5, 300 << 10)].concat();
    let ida = put(&store, &a, "a");
    let idb = put(&store, &b, "b");

    let report = store.move_to_cold(&files(&[ida])).unwrap();
    assert!(report.shared > 5, "{report:?}");
    assert!(report.chunks > 0, "{report:?}");
    // Every chunk b needs is still hot: none of them is already cold.
    let dry = store
        .move_to_cold(&TierMoveOptions {
            dry_run: true,
            ..files(&[idb])
        })
        .unwrap();
    assert_eq!(dry.already, 0, "{dry:?}");
    assert_eq!(store.read_all(ida).unwrap(), a);
    assert_eq!(store.read_all(idb).unwrap(), b);

    // Moving both moves the shared chunks too.
    let both = store.move_to_cold(&files(&[ida, idb])).unwrap();
    assert_eq!(both.shared, 0, "{both:?}");
    assert_eq!(store.stats().unwrap().hot.chunks, 0);
    assert_eq!(store.read_all(idb).unwrap(), b);
}

#[test]
fn lifecycle_rules_move_files_unread_for_their_age_in_their_storage_class() {
    let t = TempStore::new();
    let tier = Arc::new(MemoryTier::new());
    let clock = Arc::new(TestClock(AtomicI64::new(1_800_000_000_000)));
    let rules: TierRules = BTreeMap::from([(
        "other".to_string(),
        TierRule {
            cold_after: 10 * DAY,
            storage_class: Some("STANDARD_IA".into()),
        },
    )]);
    let store = Store::create(
        t.path(),
        Config {
            clock: clock.clone(),
            tier_rules: rules,
            ..config(tier.clone())
        },
    )
    .unwrap();
    let old = random_bytes(6, 500 << 10);
    let read = random_bytes(7, 500 << 10);
    let id_old = put(&store, &old, "old");
    let id_read = put(&store, &read, "read");
    clock.advance(5 * DAY);
    let early = store
        .move_to_cold(&TierMoveOptions {
            rules: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!((early.files, early.chunks), (0, 0), "{early:?}");

    clock.advance(6 * DAY);
    assert_eq!(store.read_all(id_read).unwrap(), read);
    let report = store
        .move_to_cold(&TierMoveOptions {
            rules: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(report.files, 1, "{report:?}");
    assert!(report.chunks > 0);
    let keys = objects(&*tier);
    assert!(!keys.is_empty());
    for k in &keys {
        assert_eq!(tier.storage_class(k).as_deref(), Some("STANDARD_IA"));
    }
    let stats = store.stats().unwrap();
    assert_eq!(stats.cold.chunks, report.chunks);
    assert!(stats.hot.chunks > 0, "the file read recently stays hot");
    assert_eq!(store.read_all(id_old).unwrap(), old);

    // The scheduler's job runs the same rules.
    clock.advance(11 * DAY);
    let job = tessera::Job::ColdMove;
    job.run(&store, false).unwrap();
    assert_eq!(store.stats().unwrap().hot.chunks, 0);
}

#[test]
fn a_corrupt_object_is_an_error_never_data_and_verify_cold_names_it() {
    let t = TempStore::new();
    let dir = tempfile::tempdir().unwrap();
    let local: Arc<dyn ColdTier> = Arc::new(LocalDirTier::new(dir.path()).unwrap());
    let faulty = Arc::new(FaultyTier::new(local));
    let store = Store::create(t.path(), config(faulty.clone())).unwrap();
    let data = random_bytes(8, 1 << 20);
    let id = put(&store, &data, "f");
    store.move_to_cold(&files(&[id])).unwrap();

    faulty.set_corrupt_reads(true);
    let err = store.read_all(id).unwrap_err();
    assert!(err.is_corruption(), "{err}");
    faulty.set_corrupt_reads(false);
    // Nothing bad was kept in the cache.
    assert_eq!(store.read_all(id).unwrap(), data);

    // Damage one object on "disk": verify_cold finds it, reads of it fail.
    let obj = walk(dir.path()).into_iter().next().expect("an object");
    let mut bytes = std::fs::read(&obj).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&obj, &bytes).unwrap();
    drop(store);
    let store = Store::open(t.path(), config(faulty.clone())).unwrap();
    let report = store.verify_cold().unwrap();
    assert!(!report.is_ok());
    assert!(
        report.problems.iter().any(|p| p.contains("BLAKE3")),
        "{report:?}"
    );
    assert!(!report.damaged_chunks.is_empty(), "{report:?}");
    assert!(store.read_all(id).unwrap_err().is_corruption());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn an_unreachable_tier_is_a_temporary_error_and_reads_work_again_after() {
    let t = TempStore::new();
    let faulty = Arc::new(FaultyTier::new(Arc::new(MemoryTier::new())));
    let store = Store::create(t.path(), config(faulty.clone())).unwrap();
    let data = random_bytes(9, 1 << 20);
    let id = put(&store, &data, "f");
    let hot_only = put(&store, &random_bytes(10, 100_000), "g");

    // A move that cannot write changes nothing and says so.
    faulty.set_unavailable(true);
    let dump = store.debug_index_dump().unwrap();
    let err = store.move_to_cold(&files(&[id])).unwrap_err();
    assert!(err.is_temporary(), "{err}");
    assert_eq!(store.debug_index_dump().unwrap(), dump);
    faulty.set_unavailable(false);

    store.move_to_cold(&files(&[id])).unwrap();
    faulty.set_unavailable(true);
    let err = store.read_all(id).unwrap_err();
    assert!(err.is_temporary(), "{err}");
    assert!(matches!(err, tessera::Error::Unavailable { .. }));
    // Hot data does not care.
    store.read_all(hot_only).unwrap();
    faulty.set_unavailable(false);
    assert_eq!(store.read_all(id).unwrap(), data);
}

#[test]
fn dry_runs_change_nothing() {
    let t = TempStore::new();
    let tier = Arc::new(MemoryTier::new());
    let store = Store::create(t.path(), config(tier.clone())).unwrap();
    let id = put(&store, &random_bytes(11, 1 << 20), "f");
    let dump = store.debug_index_dump().unwrap();
    let dry = TierMoveOptions {
        dry_run: true,
        all: true,
        ..Default::default()
    };
    let report = store.move_to_cold(&dry).unwrap();
    assert!(report.chunks > 0);
    assert!(objects(&*tier).is_empty());
    assert_eq!(store.debug_index_dump().unwrap(), dump);

    store.move_to_cold(&files(&[id])).unwrap();
    let dump = store.debug_index_dump().unwrap();
    let keys = objects(&*tier);
    let back = store.move_to_hot(&dry).unwrap();
    assert_eq!(back.chunks, report.chunks);
    assert_eq!(store.debug_index_dump().unwrap(), dump);
    assert_eq!(objects(&*tier), keys);
}

#[test]
fn rehydration_on_read_brings_a_cold_file_back_hot() {
    let t = TempStore::new();
    let tier = Arc::new(MemoryTier::new());
    let store = Store::create(
        t.path(),
        Config {
            rehydrate_on_read: true,
            ..config(tier.clone())
        },
    )
    .unwrap();
    let data = random_bytes(12, 1 << 20);
    let id = put(&store, &data, "f");
    store.move_to_cold(&files(&[id])).unwrap();
    assert!(store.stats().unwrap().cold.chunks > 0);
    assert_eq!(store.read_all(id).unwrap(), data);
    // The move back runs on a thread of its own: wait for it (bounded).
    let mut waited = 0;
    while store.stats().unwrap().cold.chunks > 0 && waited < 600 {
        std::thread::sleep(Duration::from_millis(50));
        waited += 1;
    }
    assert_eq!(store.stats().unwrap().cold.chunks, 0);
    while !objects(&*tier).is_empty() && waited < 600 {
        std::thread::sleep(Duration::from_millis(50));
        waited += 1;
    }
    assert!(objects(&*tier).is_empty());
    assert_eq!(store.read_all(id).unwrap(), data);
}

#[test]
fn the_collector_rewrites_cold_packs_with_garbage_and_deletes_orphans() {
    let t = TempStore::new();
    let tier = Arc::new(MemoryTier::new());
    let store = Store::create(
        t.path(),
        Config {
            pack_target_size: 8 << 20,
            ..config(tier.clone())
        },
    )
    .unwrap();
    let a = random_bytes(13, 1 << 20);
    let b = random_bytes(14, 1 << 20);
    let ida = put(&store, &a, "a");
    let idb = put(&store, &b, "b");
    let moved = store.move_to_cold(&files(&[ida, idb])).unwrap();
    assert_eq!(moved.packs_written.len(), 1);
    let key = objects(&*tier).remove(0);
    let orphan = format!("{}ffffffff.pack", &key[..key.len() - 13]);
    tier.put(&orphan, b"left by a crash", &Default::default())
        .unwrap();

    store.delete(ida).unwrap();
    store.purge_deleted(Duration::ZERO, false).unwrap();
    let report = store.gc(&no_grace()).unwrap();
    let cold = report.cold.expect("a cold pass");
    assert_eq!(cold.packs_compacted, moved.packs_written, "{cold:?}");
    assert_eq!(cold.packs_deleted, moved.packs_written, "{cold:?}");
    assert_eq!(cold.orphans, vec![orphan]);
    assert!(cold.chunks_rehydrated > 0);
    assert!(objects(&*tier).is_empty());
    assert_eq!(store.stats().unwrap().cold.chunks, 0);
    assert_eq!(store.read_all(idb).unwrap(), b);
    assert!(store.verify(&()).unwrap().is_ok());
}

#[test]
fn the_read_cache_stays_within_its_bound() {
    let t = TempStore::new();
    let tier = Arc::new(MemoryTier::new());
    let store = Store::create(
        t.path(),
        Config {
            cold_cache_bytes: 1 << 20,
            ..config(tier.clone())
        },
    )
    .unwrap();
    let data = random_bytes(15, 4 << 20);
    let id = put(&store, &data, "f");
    store.move_to_cold(&files(&[id])).unwrap();
    assert_eq!(store.read_all(id).unwrap(), data);
    assert!(store.cold_cached_bytes() <= (1 << 20) + (256 << 10));
    // A sequential read costs about one GET per block, not one per chunk.
    let gets = store.cold_gets();
    assert!(gets <= 2 * ((4 << 20) / (256 << 10)) + 8, "{gets} GETs");
}

// ---------------------------------------------------------------- crash test

/// SIGKILLs `tessera debug-tier-move` at random moments of moves to cold and back, on a
/// local-directory tier. After every kill the store opens, passes `verify` and `verify_cold`,
/// no chunk points at a missing object, and every file reads back; a final run completes the
/// move, and the collector leaves no orphan.
#[test]
fn sigkill_during_moves_between_tiers_loses_nothing_and_a_rerun_completes() {
    let t = TempStore::new();
    let cold_dir = tempfile::tempdir().unwrap();
    let tier = || -> Arc<dyn ColdTier> { Arc::new(LocalDirTier::new(cold_dir.path()).unwrap()) };
    let seed: u64 = std::env::var("TESSERA_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("tier crash test seed {seed} (set TESSERA_CRASH_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut contents = Vec::new();
    {
        let store = Store::create(t.path(), config(tier())).unwrap();
        for i in 0..24u64 {
            let data = random_bytes(100 + i, 200_000 + (i as usize * 97_000) % 900_000);
            let id = put(&store, &data, &format!("f{i}"));
            contents.push((id, data));
        }
    }
    let kills = 24;
    let mut killed_mid_move = 0;
    let (mut progressed, mut last_cold) = (0, 0);
    for round in 0..kills {
        let to = if round % 2 == 1 { "hot" } else { "cold" };
        let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .arg("--store")
            .arg(t.path())
            .args(["debug-tier-move", "--to", to, "--pack-size", "1048576"])
            .arg("--cold-dir")
            .arg(cold_dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "START", "round {round}");
        std::thread::sleep(Duration::from_millis(rng.random_range(0..150)));
        let _ = child.kill();
        let status = child.wait().unwrap();
        let killed = status.signal().is_some();
        assert!(
            killed || status.success(),
            "round {round}: child failed: {status:?}"
        );
        killed_mid_move += killed as u32;

        let store = Store::open(t.path(), config(tier())).unwrap();
        let v = store.verify(&()).unwrap();
        assert!(v.is_ok(), "round {round}: {v:?}");
        let vc = store.verify_cold().unwrap();
        assert!(vc.is_ok(), "round {round}: {vc:?}");
        for (id, data) in &contents {
            assert_eq!(&store.read_all(*id).unwrap(), data, "round {round}");
        }
        let cold = store.stats().unwrap().cold.chunks;
        progressed += (cold != last_cold) as u32;
        last_cold = cold;
    }
    eprintln!(
        "{killed_mid_move} of {kills} runs killed before they finished, \
         {progressed} committed part of their move"
    );
    // A run to completion moves everything, and the collector leaves only referenced objects.
    // (Its cold compaction may bring back chunks of packs that interrupted moves to hot left
    // mostly garbage; the next run sends them cold again, densely packed.)
    let store = Store::open(t.path(), config(tier())).unwrap();
    let all = TierMoveOptions {
        all: true,
        ..Default::default()
    };
    store.move_to_cold(&all).unwrap();
    let report = store.gc(&no_grace()).unwrap();
    store.move_to_cold(&all).unwrap();
    let stats = store.stats().unwrap();
    assert_eq!(stats.hot.chunks, 0, "{report:?}");
    assert_eq!(stats.cold.chunks, stats.chunks);
    let tier = tier();
    assert_eq!(objects(&*tier).len() as u64, stats.cold.packs, "{report:?}");
    for (id, data) in &contents {
        assert_eq!(&store.read_all(*id).unwrap(), data);
    }
    assert!(store.verify(&()).unwrap().is_ok());
    assert!(store.verify_cold().unwrap().is_ok());
}

#[test]
fn recover_with_the_cold_tier_configured_finds_the_cold_chunks_again() {
    let t = TempStore::new();
    let tier = Arc::new(MemoryTier::new());
    let store = Store::create(t.path(), config(tier.clone())).unwrap();
    let data = random_bytes(16, 2 << 20);
    let hot = random_bytes(17, 200_000);
    let id = put(&store, &data, "cold");
    let idh = put(&store, &hot, "hot");
    let moved = store.move_to_cold(&files(&[id])).unwrap();
    store.gc(&no_grace()).unwrap(); // the hot copies are gone
    drop(store);

    let report = tessera::recover(t.path(), &config(tier.clone()), &()).unwrap();
    assert_eq!(report.cold_packs, moved.packs_written.len() as u64);
    assert_eq!(report.missing_chunks, 0, "{report:?}");
    let store = Store::open(t.path(), config(tier.clone())).unwrap();
    assert_eq!(store.read_all(id).unwrap(), data);
    assert_eq!(store.read_all(idh).unwrap(), hot);
    let stats = store.stats().unwrap();
    assert_eq!(stats.cold.chunks, moved.chunks);
    assert!(store.verify(&()).unwrap().is_ok());
    assert!(store.verify_cold().unwrap().is_ok());
    // Nothing left for the collector: every cold record is live.
    let gc = store.gc(&no_grace()).unwrap().cold.unwrap();
    assert!(
        gc.packs_deleted.is_empty() && gc.orphans.is_empty(),
        "{gc:?}"
    );
}

#[test]
fn the_cli_moves_files_between_tiers_and_shows_and_verifies_them() {
    let t = TempStore::new();
    let cold_dir = tempfile::tempdir().unwrap();
    let data = random_bytes(18, 700_000);
    let src = t.dir.path().join("input.bin");
    std::fs::write(&src, &data).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .arg("--store")
            .arg(t.path())
            .arg("--cold-dir")
            .arg(cold_dir.path())
            .args(args)
            .output()
            .unwrap();
        (out.status.code(), out.stdout)
    };
    let json = |args: &[&str]| {
        let (code, out) = run(args);
        assert_eq!(code, Some(0), "{args:?}: {}", String::from_utf8_lossy(&out));
        serde_json::from_slice::<serde_json::Value>(&out).unwrap()
    };
    run(&["init"]);
    json(&["put", "--key", "k", src.to_str().unwrap(), "--json"]);
    let dry = json(&[
        "tier",
        "move",
        "--to",
        "cold",
        "--file",
        "k",
        "--dry-run",
        "--json",
    ]);
    assert!(dry["chunks"].as_u64().unwrap() > 0);
    assert_eq!(json(&["stats", "--json"])["cold"]["chunks"], 0);
    let moved = json(&["tier", "move", "--to", "cold", "--file", "k", "--json"]);
    assert_eq!(moved["chunks"], dry["chunks"]);
    let stats = json(&["stats", "--json"]);
    assert_eq!(stats["cold"]["chunks"], moved["chunks"]);
    assert!(stats["cold_tier"].as_str().unwrap().starts_with("dir:"));
    let verified = json(&["verify", "--cold", "--json"]);
    assert_eq!(verified["ok"], true, "{verified}");
    let (code, out) = run(&["cat", "k"]);
    assert_eq!(code, Some(0));
    assert!(out == data, "cat of the cold file differs");

    // A damaged object: verify --cold exits 3.
    let obj = walk(cold_dir.path()).into_iter().next().unwrap();
    let mut bytes = std::fs::read(&obj).unwrap();
    bytes[200] ^= 1;
    std::fs::write(&obj, &bytes).unwrap();
    assert_eq!(run(&["verify", "--cold"]).0, Some(3));
    assert_eq!(
        run(&["verify"]).0,
        Some(0),
        "plain verify downloads nothing"
    );
}

#[test]
fn http_answers_503_with_retry_after_while_the_tier_is_down_and_shows_tiers_in_stats() {
    let faulty = Arc::new(FaultyTier::new(Arc::new(MemoryTier::new())));
    let tier: Arc<dyn ColdTier> = faulty.clone();
    let s = crate::http::Service::with_config(|_| {}, |c| c.cold_tier = Some(tier));
    let data = random_bytes(19, 600_000);
    let id = s.put(&s.alice, "blob.bin", &data);
    let fid: FileId = id.parse().unwrap();
    s.store.move_to_cold(&files(&[fid])).unwrap();
    let path = format!("/api/files/{id}");

    faulty.set_unavailable(true);
    for range in [None, Some("bytes=1000-1999")] {
        let mut req = s.get(&path, Some(&s.alice));
        if let Some(r) = range {
            req = req.header("range", r);
        }
        let r = req.send().unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()["retry-after"], "30");
        let v: serde_json::Value = r.json().unwrap();
        assert_eq!(v["error"], "unavailable", "{v}");
    }
    faulty.set_unavailable(false);
    let r = s.get(&path, Some(&s.alice)).send().unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    assert!(r.bytes().unwrap().as_ref() == data.as_slice());

    let v: serde_json::Value = s
        .get("/api/admin/storage/stats", Some(&s.admin))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(v["store"]["cold"]["chunks"].as_u64().unwrap() > 0, "{v}");
    assert!(v["store"]["hot"]["pack_bytes"].as_u64().is_some(), "{v}");
}
