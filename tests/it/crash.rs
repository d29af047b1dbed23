//! Crash safety with a real process: the `tessera` binary puts files from two threads and is
//! killed with SIGKILL at random moments. After every kill the store must open, pass `verify`,
//! and hold every put the child had acknowledged, byte for byte.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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

/// What the account changes acknowledged so far say about one user.
#[derive(Debug, Clone)]
struct UserModel {
    tier: Option<String>,
    org: String,
    /// Possible quota overrides: one, or two while a change of it was in flight.
    quota: Vec<u64>,
    /// Tokens and whether they were revoked.
    tokens: Vec<(String, bool)>,
}

/// The account state the harness knows, and the changes in flight at the kill.
#[derive(Default)]
struct AccountModel {
    users: BTreeMap<String, UserModel>,
    /// Organisation → possible limits (none, or values).
    orgs: BTreeMap<String, Vec<Option<u64>>>,
    /// Users whose add was in flight: they may exist (with these fields) or not.
    maybe_users: BTreeMap<String, UserModel>,
    /// Users whose revocation was in flight: all of their tokens are valid, or none.
    revoking: BTreeSet<String>,
    acked: u64,
}

/// The user name's `n` (the `u<n>` suffix).
fn user_n(user: &str) -> u64 {
    user.rsplit_once('u').unwrap().1.parse().unwrap()
}

impl AccountModel {
    /// Takes in one child's output (`TRY`/`ACCT` lines, see `debug-stress --accounts`).
    fn feed(&mut self, lines: &[String]) {
        let mut in_flight: BTreeMap<String, (String, String)> = BTreeMap::new();
        for line in lines {
            let p: Vec<&str> = line.split(' ').collect();
            match p.as_slice() {
                ["TRY", t, op, user] => {
                    in_flight.insert(t.to_string(), (op.to_string(), user.to_string()));
                }
                ["ACCT", t, op, user, what] => {
                    in_flight.remove(*t);
                    self.acked += 1;
                    let n = user_n(user);
                    let org = user.rsplit_once('u').unwrap().0.to_string();
                    match *op {
                        "add" => {
                            self.users.insert(
                                user.to_string(),
                                UserModel {
                                    tier: n.is_multiple_of(2).then(|| "pro".to_string()),
                                    org: org.clone(),
                                    quota: vec![1000 + n],
                                    tokens: vec![(what.to_string(), false)],
                                },
                            );
                            self.orgs.entry(org).or_insert(vec![None]);
                        }
                        "token" => self
                            .users
                            .get_mut(*user)
                            .unwrap()
                            .tokens
                            .push((what.to_string(), false)),
                        "revoke" => {
                            for t in &mut self.users.get_mut(*user).unwrap().tokens {
                                t.1 = true;
                            }
                        }
                        "quota" => self.users.get_mut(*user).unwrap().quota = vec![2000 + n],
                        "org" => {
                            self.orgs.insert(org, vec![Some(3000 + n)]);
                        }
                        _ => panic!("unexpected child output {line:?}"),
                    }
                }
                _ => panic!("unexpected child output {line:?}"),
            }
        }
        for (op, user) in in_flight.into_values() {
            let n = user_n(&user);
            let org = user.rsplit_once('u').unwrap().0.to_string();
            match op.as_str() {
                "add" => {
                    self.maybe_users.insert(
                        user,
                        UserModel {
                            tier: n.is_multiple_of(2).then(|| "pro".to_string()),
                            org: org.clone(),
                            quota: vec![1000 + n],
                            tokens: Vec::new(),
                        },
                    );
                    self.orgs.entry(org).or_insert(vec![None]);
                }
                "revoke" => {
                    self.revoking.insert(user);
                }
                "quota" => self.users.get_mut(&user).unwrap().quota.push(2000 + n),
                "org" => self.orgs.get_mut(&org).unwrap().push(Some(3000 + n)),
                // An extra token nobody knows: it changes nothing the harness checks.
                _ => {}
            }
        }
    }

    /// Checks `store` against everything acknowledged: every acknowledged change is there, a
    /// change in flight is there whole or not at all.
    fn check(&self, store: &Store, what: &str) {
        for (name, m) in self.users.iter().chain(&self.maybe_users) {
            let u = match store.user(name) {
                Ok(u) => u,
                Err(_) if self.maybe_users.contains_key(name) => continue,
                Err(e) => panic!("{what}: acknowledged user {name} is gone: {e}"),
            };
            assert!(!u.admin, "{what}: {name} became an admin");
            assert_eq!(u.tier, m.tier, "{what}: {name}'s tier");
            assert_eq!(
                u.org.as_deref(),
                Some(m.org.as_str()),
                "{what}: {name}'s org"
            );
            assert!(
                u.quota.is_some_and(|q| m.quota.contains(&q)),
                "{what}: {name}'s quota {:?}, expected one of {:?}",
                u.quota,
                m.quota
            );
            let valid: Vec<bool> = m
                .tokens
                .iter()
                .map(|(t, _)| {
                    store
                        .authenticate(t)
                        .unwrap()
                        .is_some_and(|u| &u.name == name)
                })
                .collect();
            if self.revoking.contains(name) {
                let unrevoked: Vec<bool> = m.tokens.iter().filter(|t| !t.1).map(|_| true).collect();
                let now: Vec<bool> = m
                    .tokens
                    .iter()
                    .zip(&valid)
                    .filter(|((_, revoked), _)| !revoked)
                    .map(|(_, v)| *v)
                    .collect();
                assert!(
                    now == unrevoked || now.iter().all(|v| !v),
                    "{what}: {name}'s revocation in flight was half applied: {now:?}"
                );
            } else {
                for ((_, revoked), v) in m.tokens.iter().zip(&valid) {
                    assert_eq!(
                        *v, !revoked,
                        "{what}: a token of {name} (revoked: {revoked})"
                    );
                }
            }
        }
        let orgs = store.quota_orgs().unwrap();
        for (org, limits) in &self.orgs {
            let limit = orgs.iter().find(|o| &o.org == org).and_then(|o| o.limit);
            assert!(
                limits.contains(&limit),
                "{what}: organisation {org} has limit {limit:?}, expected one of {limits:?}"
            );
        }
    }

    /// After the checks: what the store says settles the changes that were in flight.
    fn settle(&mut self, store: &Store) {
        for (name, m) in std::mem::take(&mut self.maybe_users) {
            if store.user(&name).is_ok() {
                self.users.insert(name, m);
            }
        }
        for name in std::mem::take(&mut self.revoking) {
            let m = self.users.get_mut(&name).unwrap();
            let gone = m
                .tokens
                .iter()
                .all(|(t, _)| store.authenticate(t).unwrap().is_none());
            if gone {
                for t in &mut m.tokens {
                    t.1 = true;
                }
            }
        }
        for (name, m) in &mut self.users {
            m.quota = vec![store.user(name).unwrap().quota.unwrap()];
        }
        let orgs = store.quota_orgs().unwrap();
        for (org, limits) in &mut self.orgs {
            *limits = vec![orgs.iter().find(|o| &o.org == org).and_then(|o| o.limit)];
        }
    }
}

/// Account changes under SIGKILL, with the collector compacting the packs that hold them:
/// after every kill, every acknowledged change (a user with its tier, organisation and quota,
/// a token, a revocation, an organisation limit) is there, and the change in flight is there
/// whole or not at all — after a normal open, and after `recover` rebuilt the index of a copy
/// of the store from its packs alone (which also replays a change whose record was durable but
/// whose commit had not happened).
#[test]
fn sigkill_never_loses_an_acknowledged_account_change_nor_half_applies_one() {
    let t = TempStore::new();
    let seed: u64 = std::env::var("TESSERA_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("account crash test seed {seed} (set TESSERA_CRASH_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut model = AccountModel::default();
    let rounds = (kills() * 2 / 5).max(20);
    let mut last_replayed = 0;
    for round in 0..rounds {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .arg("--store")
            .arg(t.path())
            .args(["debug-stress", "--accounts", "--gc", "--threads", "2"])
            .args(["--max-size", "300000", "--seed"])
            .arg((seed ^ round as u64).to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tessera debug-stress --accounts");
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map(|l| l.unwrap())
                .collect::<Vec<String>>()
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(20..500)));
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
        if !t.path().join("store.json").exists() {
            assert!(lines.iter().all(|l| !l.starts_with("ACCT")));
            continue;
        }
        model.feed(&lines);

        // The packs alone, before anything cuts their uncommitted tails: a copy, recovered.
        let copy = tempfile::tempdir().unwrap();
        let copied = Command::new("cp")
            .arg("-a")
            .arg(t.path())
            .arg(copy.path().join("s"))
            .status()
            .unwrap();
        assert!(copied.success());
        std::fs::remove_file(copy.path().join("s/index.redb")).unwrap();
        let report = tessera::recover(copy.path().join("s"), &Config::default(), &())
            .unwrap_or_else(|e| panic!("round {round}: recover after SIGKILL: {e}"));
        assert!(
            report.problems.is_empty(),
            "round {round}: recover: {report:#?}"
        );
        last_replayed = report.accounts;
        let rebuilt = Store::open_read_only(copy.path().join("s"), Config::default()).unwrap();
        model.check(&rebuilt, &format!("round {round}, recovered"));
        let v = rebuilt.verify(&()).unwrap();
        assert!(
            v.is_ok(),
            "round {round}: verify of the recovered copy: {v:#?}"
        );
        drop(rebuilt);

        // Read-write: cuts what never committed, so the state settled below is the one the
        // next round starts from, whatever recover would make of the packs.
        let store = Store::open(t.path(), Config::default())
            .unwrap_or_else(|e| panic!("round {round}: store does not open after SIGKILL: {e}"));
        model.check(&store, &format!("round {round}, reopened"));
        let v = store.verify(&()).unwrap();
        assert!(v.is_ok(), "round {round}: verify after SIGKILL: {v:#?}");
        model.settle(&store);
    }
    eprintln!(
        "{} account changes acknowledged; {} users; the last recover replayed {} account \
         records (compaction writes snapshots in place of account events)",
        model.acked,
        model.users.len(),
        last_replayed
    );
    assert!(
        model.acked > 50,
        "only {} account changes were acknowledged; the test did too little",
        model.acked
    );
}
