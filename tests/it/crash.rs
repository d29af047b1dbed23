//! Crash safety with a real process: the `tessera` binary puts files from two threads and is
//! killed with SIGKILL at random moments. After every kill the store must open, pass `verify`,
//! and hold every put the child had acknowledged, byte for byte.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tessera::{Config, Store};

use crate::common::{TempStore, blake3_hex};

/// Kills per run; CI runs the default. `TESSERA_CRASH_KILLS` raises it for soak runs.
fn kills() -> u32 {
    std::env::var("TESSERA_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
}

struct Ack {
    key: String,
    version: u32,
    blake3: String,
    size: u64,
}

fn parse_ack(line: &str) -> Ack {
    let parts: Vec<&str> = line.split(' ').collect();
    assert!(
        parts.len() == 5 && parts[0] == "ACK",
        "unexpected child output {line:?}"
    );
    Ack {
        key: parts[1].to_string(),
        version: parts[2].parse().unwrap(),
        blake3: parts[3].to_string(),
        size: parts[4].parse().unwrap(),
    }
}

#[test]
fn sigkill_at_random_moments_never_loses_an_acknowledged_put() {
    crash_rounds(&[], kills());
}

/// The same with the collector at work: a thread of the child puts, deletes and purges files
/// that share content with the acknowledged ones and runs GC and compaction without grace, so
/// kills land inside sweeps and pack rewrites (at least 30 of them).
#[test]
fn sigkill_during_gc_and_compaction_never_loses_an_acknowledged_put() {
    crash_rounds(&["--gc"], (kills() * 3 / 5).max(30));
}

fn crash_rounds(extra: &[&str], kills: u32) {
    let t = TempStore::new();
    let seed: u64 = std::env::var("TESSERA_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("crash test seed {seed} (set TESSERA_CRASH_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // (key, version) -> (blake3, size), for every put that returned in some child.
    let mut acked: HashMap<(String, u32), (String, u64)> = HashMap::new();

    for round in 0..kills {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .arg("--store")
            .arg(t.path())
            .args([
                "debug-stress",
                "--threads",
                "2",
                "--max-size",
                "400000",
                "--seed",
            ])
            .arg((seed ^ round as u64).to_string())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tessera debug-stress");
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map(|l| l.unwrap())
                .collect::<Vec<String>>()
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(5..400)));
        child.kill().expect("SIGKILL the child");
        let status = child.wait().unwrap();
        let lines = reader.join().unwrap();
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "round {round}: child ended on its own: {status:?}\n{stderr}"
        );

        let round_acks: Vec<Ack> = lines.iter().map(|l| parse_ack(l)).collect();
        if !t.path().join("store.json").exists() {
            // Killed while creating the store: nothing can have been acknowledged.
            assert!(acked.is_empty() && round_acks.is_empty());
            continue;
        }
        // Read-only, as the CLI's read commands open it: after a kill the index needs repair, so
        // this also runs the repair-then-reopen path every round.
        let store = Store::open_read_only(t.path(), Config::default())
            .unwrap_or_else(|e| panic!("round {round}: store does not open after SIGKILL: {e}"));
        let report = store.verify(&()).unwrap();
        assert!(
            report.is_ok(),
            "round {round}: verify after SIGKILL: {report:#?}"
        );
        for a in &round_acks {
            let id = store.resolve_key("local", &a.key).unwrap();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut store.get_version(id, a.version).unwrap(), &mut data)
                .unwrap();
            assert_eq!(data.len() as u64, a.size);
            assert_eq!(
                blake3_hex(&data),
                a.blake3,
                "round {round}: {} v{}",
                a.key,
                a.version
            );
        }
        for a in round_acks {
            acked.insert((a.key, a.version), (a.blake3, a.size));
        }
        // Versions never go backwards: every key's latest is at least its newest ack.
        for (key, version) in acked.keys() {
            let id = store.resolve_key("local", key).unwrap();
            assert!(
                store.stat(id).unwrap().version >= *version,
                "round {round}: {key} lost v{version}"
            );
        }
    }

    assert!(
        acked.len() > 50,
        "only {} puts were acknowledged; the test did too little",
        acked.len()
    );
    let store = Store::open(t.path(), Config::default()).unwrap();
    for ((key, version), (hash, size)) in &acked {
        let id = store.resolve_key("local", key).unwrap();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut store.get_version(id, *version).unwrap(), &mut data)
            .unwrap();
        assert_eq!(
            (blake3_hex(&data), data.len() as u64),
            (hash.clone(), *size),
            "{key} v{version}"
        );
    }
    if extra.contains(&"--gc") {
        // What the killed collectors left — chunks of puts cut short, packs half compacted —
        // is reclaimed by the next run: afterwards there is nothing left to sweep or compact.
        store.purge_deleted(Duration::ZERO, false).unwrap();
        let no_grace = tessera::GcOptions {
            grace: Duration::ZERO,
            ..Default::default()
        };
        store.gc(&no_grace).unwrap();
        let left = store
            .gc(&tessera::GcOptions {
                dry_run: true,
                ..no_grace
            })
            .unwrap();
        assert_eq!(
            (left.candidates, left.packs_compacted.len()),
            (0, 0),
            "garbage left after a full collection: {left:#?}"
        );
        let report = store.verify(&()).unwrap();
        assert!(report.is_ok(), "verify after the collection: {report:#?}");
        // Nothing acknowledged was deleted (all of it read back above), so all of it stays.
        for ((key, version), (hash, _)) in &acked {
            let id = store.resolve_key("local", key).unwrap();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut store.get_version(id, *version).unwrap(), &mut data)
                .unwrap();
            assert_eq!(
                &blake3_hex(&data),
                hash,
                "{key} v{version} after the collection"
            );
        }
    }
}
