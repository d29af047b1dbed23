//! `debug-stress`: the workload of the real-process crash test.
//!
//! Contract with the test harness, which SIGKILLs this process at random moments: a line
//! `ACK <key> <version> <blake3-hex> <size>` is printed (and flushed) only after `Store::put`
//! returned `Ok`, so every ACKed (key, version) must read back with that hash after the crash.
//! Content is a pure function of (seed, thread, i), so a run can be replayed.
//!
//! With `--accounts` the threads change accounts instead of putting files. Each thread works on
//! users `a<seed>t<thread>u<n>` (tier `pro` for even n) and organisation `a<seed>t<thread>`,
//! cycling through: add (with a quota override), a second token, revoke, a third token, a new
//! quota, a new organisation limit. Before each change it prints `TRY <thread> <op> <user>`,
//! after it returned `ACCT <thread> <op> <user> [token|bytes]` — so every `ACCT` change must
//! be found after the crash, and the `TRY` without its `ACCT` is the one change in flight.

use std::io::Write;

use clap::Args;
use tessera::{PutOptions, Store};

use crate::ui::Fail;
use crate::{CmdResult, Ctx, Status};

#[derive(Debug, Args)]
pub struct StressArgs {
    /// Seed of the generated content.
    #[arg(long, value_name = "S")]
    seed: u64,
    /// Threads putting at once.
    #[arg(long, value_name = "T", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    threads: u32,
    /// Puts per thread (0 = until killed).
    #[arg(long, value_name = "N", default_value_t = 0)]
    count: u64,
    /// Files are 0 to BYTES-1 bytes long.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    max_size: u64,
    /// Also run the collector: a thread puts, deletes and purges files sharing content with
    /// the acknowledged ones and runs GC (no grace) with compaction, in a loop.
    #[arg(long)]
    gc: bool,
    /// The threads change accounts (users, tokens, revocations, quotas, organisation limits)
    /// instead of putting files.
    #[arg(long)]
    accounts: bool,
}

/// The key of the XOF that makes file `i` of `thread`.
fn file_key(seed: u64, thread: u32, i: u64) -> [u8; 32] {
    let mut material = Vec::with_capacity(20);
    material.extend_from_slice(&seed.to_le_bytes());
    material.extend_from_slice(&thread.to_le_bytes());
    material.extend_from_slice(&i.to_le_bytes());
    blake3::derive_key("tessera debug-stress 2026 file content", &material)
}

/// File `i` of `thread`. Every third file starts with the first half of the previous one, so
/// concurrent puts exercise the dedup paths.
pub fn content(seed: u64, thread: u32, i: u64, max_size: u64, prev: Option<&[u8]>) -> Vec<u8> {
    let key = file_key(seed, thread, i);
    let len = (u64::from_le_bytes(key[..8].try_into().unwrap()) % max_size) as usize;
    let mut out = Vec::with_capacity(len);
    if i % 3 == 2
        && let Some(prev) = prev
    {
        out.extend_from_slice(&prev[..(prev.len() / 2).min(len)]);
    }
    let fresh = len - out.len();
    let start = out.len();
    out.resize(len, 0);
    blake3::Hasher::new_keyed(&key)
        .finalize_xof()
        .fill(&mut out[start..start + fresh]);
    out
}

pub fn run(ctx: &Ctx, a: StressArgs) -> CmdResult {
    let store = Store::open_or_create(&ctx.store_dir, ctx.config())?;
    if a.gc {
        let store = store.clone();
        let owner = ctx.owner.clone();
        let (seed, max_size) = (a.seed, a.max_size);
        std::thread::spawn(move || {
            let no_grace = tessera::GcOptions {
                grace: std::time::Duration::ZERO,
                batch: 16,
                ..Default::default()
            };
            for n in 0u64.. {
                // A cycle of twelve contents of its own: each is freed by the purge, then put
                // again a few rounds later, deduplicating against chunks being swept.
                let data = content(seed, 1000, n % 12, max_size, None);
                let opts = PutOptions {
                    owner: owner.clone(),
                    ..PutOptions::key("gc-tmp")
                };
                let step = store
                    .put(&data[..], &opts)
                    .and_then(|r| store.delete(r.file.id))
                    .and_then(|_| store.purge_deleted(std::time::Duration::ZERO, false))
                    .and_then(|_| store.gc(&no_grace));
                if let Err(e) = step {
                    eprintln!("ERR gc {e}");
                    std::process::exit(1);
                }
            }
        });
    }
    if a.accounts {
        let handles: Vec<_> = (0..a.threads)
            .map(|t| {
                let store = store.clone();
                let seed = a.seed;
                std::thread::spawn(move || account_changes(&store, seed, t))
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| Fail::new("error", "a stress thread panicked"))?;
        }
        return Ok(Status::Ok);
    }
    let handles: Vec<_> = (0..a.threads)
        .map(|t| {
            let store = store.clone();
            let owner = ctx.owner.clone();
            let (seed, count, max_size) = (a.seed, a.count, a.max_size);
            std::thread::spawn(move || {
                let mut prev: Option<Vec<u8>> = None;
                let mut i = 0u64;
                while count == 0 || i < count {
                    let key = format!("t{t}/k{}", i % 7);
                    let data = content(seed, t, i, max_size, prev.as_deref());
                    let opts = PutOptions {
                        owner: owner.clone(),
                        ..PutOptions::key(key.clone())
                    };
                    match store.put(&data[..], &opts) {
                        Ok(report) => {
                            let line = format!(
                                "ACK {key} {} {} {}\n",
                                report.file.version,
                                blake3::hash(&data).to_hex(),
                                data.len()
                            );
                            let mut out = std::io::stdout().lock();
                            if out
                                .write_all(line.as_bytes())
                                .and_then(|()| out.flush())
                                .is_err()
                            {
                                std::process::exit(1);
                            }
                        }
                        Err(e) => {
                            eprintln!("ERR {key} {e}");
                            std::process::exit(1);
                        }
                    }
                    prev = Some(data);
                    i += 1;
                }
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| Fail::new("error", "a stress thread panicked"))?;
    }
    Ok(Status::Ok)
}

/// Prints a line and flushes it, or ends the process (the harness is gone).
fn say(line: String) {
    let mut out = std::io::stdout().lock();
    if out
        .write_all(line.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .is_err()
    {
        std::process::exit(1);
    }
}

/// The `--accounts` workload of thread `t` (see the module docs), until killed.
fn account_changes(store: &Store, seed: u64, t: u32) {
    let org = format!("a{seed}t{t}");
    for n in 0u64.. {
        let user = format!("a{seed}t{t}u{n}");
        for op in ["add", "token", "revoke", "token", "quota", "org"] {
            say(format!("TRY {t} {op} {user}"));
            let done = match op {
                "add" => store
                    .user_add(
                        &user,
                        tessera::users::NewUser {
                            tier: n.is_multiple_of(2).then(|| "pro".to_string()),
                            org: Some(org.clone()),
                            quota: Some(1000 + n),
                            admin: false,
                        },
                    )
                    .map(|(_, token)| token),
                "token" => store.user_new_token(&user),
                "revoke" => store.user_revoke_tokens(&user).map(|n| n.to_string()),
                "quota" => store
                    .quota_set(&user, Some(2000 + n))
                    .map(|_| (2000 + n).to_string()),
                _ => store
                    .org_quota_set(&org, Some(3000 + n))
                    .map(|_| (3000 + n).to_string()),
            };
            match done {
                Ok(what) => say(format!("ACCT {t} {op} {user} {what}")),
                Err(e) => {
                    eprintln!("ERR {op} {user} {e}");
                    std::process::exit(1);
                }
            }
        }
    }
}
