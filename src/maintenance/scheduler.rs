//! The maintenance scheduler: runs each job (GC, purge of deleted files, retention, expiry,
//! quarantine purge) when its interval has passed on the store's clock.
//!
//! It is a plain library type driven by [`Scheduler::run_due`], so tests move the clock and
//! call it; `tessera serve` calls it from a task on the blocking pool (`http::maintenance`).
//! Jobs run one after another on the caller's thread, so one scheduler never runs two jobs —
//! and in particular two collections — at once; [`Store::gc`] itself also admits one
//! collector at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::Result;
use crate::maintenance::gc::{GcOptions, GcReport, PurgeReport};
use crate::maintenance::lifecycle::{ExpiryRules, RetentionRules};
use crate::maintenance::tiering::{TierMoveOptions, TierMoveReport};
use crate::store::Store;

/// One maintenance job and its parameters.
#[derive(Debug, Clone)]
pub enum Job {
    /// [`Store::gc`].
    Gc(GcOptions),
    /// [`Store::purge_deleted`] of files deleted at least this long ago.
    PurgeDeleted { older_than: Duration },
    /// [`Store::apply_retention`].
    Retention(RetentionRules),
    /// [`Store::expire`].
    Expiry(ExpiryRules),
    /// [`Store::purge_quarantined`] of files quarantined at least this long ago.
    QuarantinePurge { older_than: Duration },
    /// Moves to the cold tier what the store's lifecycle rules (`Config::tier_rules`) make
    /// eligible. Does nothing when the store has no cold tier.
    ColdMove,
}

impl Job {
    /// The job's name in logs and reports.
    pub fn name(&self) -> &'static str {
        match self {
            Job::Gc(_) => "gc",
            Job::PurgeDeleted { .. } => "purge",
            Job::Retention(_) => "retention",
            Job::Expiry(_) => "expiry",
            Job::QuarantinePurge { .. } => "quarantine_purge",
            Job::ColdMove => "cold_move",
        }
    }

    /// Runs the job once (for real, or dry).
    pub fn run(&self, store: &Store, dry_run: bool) -> Result<JobReport> {
        Ok(match self {
            Job::Gc(opts) => JobReport::Gc(store.gc(&GcOptions {
                dry_run,
                ..opts.clone()
            })?),
            Job::PurgeDeleted { older_than } => {
                JobReport::Purge(store.purge_deleted(*older_than, dry_run)?)
            }
            Job::Retention(rules) => JobReport::Purge(store.apply_retention(rules, dry_run)?),
            Job::Expiry(rules) => JobReport::Purge(store.expire(rules, dry_run)?),
            Job::QuarantinePurge { older_than } => {
                JobReport::Purge(store.purge_quarantined(*older_than, dry_run)?)
            }
            Job::ColdMove if !store.has_cold_tier() => JobReport::Tier(TierMoveReport {
                dry_run,
                ..Default::default()
            }),
            Job::ColdMove => JobReport::Tier(store.move_to_cold(&TierMoveOptions {
                rules: true,
                dry_run,
                ..Default::default()
            })?),
        })
    }
}

/// A job and how often it runs.
#[derive(Debug, Clone)]
pub struct Scheduled {
    pub job: Job,
    /// Time between the starts of two runs, on the store's clock. Zero: never.
    pub interval: Duration,
}

/// What a job reported.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum JobReport {
    Gc(GcReport),
    Purge(PurgeReport),
    Tier(TierMoveReport),
}

/// One run of one job.
#[derive(Debug)]
pub struct JobRun {
    pub job: &'static str,
    /// Store clock at the start of the run.
    pub started_ms: i64,
    pub elapsed: Duration,
    pub result: Result<JobReport>,
}

struct Entry {
    scheduled: Scheduled,
    next_ms: i64,
}

/// Runs each job whose interval has passed. See the module docs.
pub struct Scheduler {
    store: Store,
    entries: Vec<Entry>,
    stop: Arc<AtomicBool>,
}

impl Scheduler {
    /// A scheduler whose jobs first run one interval from now (store clock); jobs with a zero
    /// interval are left out. Not running everything at once at start-up keeps a restart loop
    /// from turning into a collection loop.
    pub fn new(store: Store, jobs: Vec<Scheduled>) -> Scheduler {
        let now = store.inner().config.clock.now_ms();
        let entries = jobs
            .into_iter()
            .filter(|s| !s.interval.is_zero())
            .map(|scheduled| Entry {
                next_ms: now.saturating_add(ms(scheduled.interval)),
                scheduled,
            })
            .collect();
        Scheduler {
            store,
            entries,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The scheduled jobs: name, interval, and when each next runs (store clock, ms).
    pub fn jobs(&self) -> Vec<(&'static str, Duration, i64)> {
        self.entries
            .iter()
            .map(|e| (e.scheduled.job.name(), e.scheduled.interval, e.next_ms))
            .collect()
    }

    /// When the next job is due (store clock, ms); `None` without jobs.
    pub fn next_due_ms(&self) -> Option<i64> {
        self.entries.iter().map(|e| e.next_ms).min()
    }

    /// The store clock now.
    pub fn now_ms(&self) -> i64 {
        self.store.inner().config.clock.now_ms()
    }

    /// A flag that, once set, makes [`Scheduler::run_due`] start no further job (the one
    /// running finishes: every job commits in steps, so stopping between jobs loses nothing).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Runs, in order, every job that is due, once each — however many intervals passed (a
    /// clock jump or a long outage never queues up catch-up runs); each next runs one interval
    /// after the start of this run. Every run is logged. A failing job is logged and retried
    /// at its next interval; the others run regardless.
    pub fn run_due(&mut self) -> Vec<JobRun> {
        let mut runs = Vec::new();
        for e in &mut self.entries {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let now = self.store.inner().config.clock.now_ms();
            if e.next_ms > now {
                continue;
            }
            let name = e.scheduled.job.name();
            let timer = Instant::now();
            let result = e.scheduled.job.run(&self.store, false);
            let elapsed = timer.elapsed();
            e.next_ms = now.saturating_add(ms(e.scheduled.interval));
            match &result {
                Ok(report) => tracing::info!(
                    job = name,
                    elapsed_ms = elapsed.as_millis() as u64,
                    report = %serde_json::to_string(report).unwrap_or_default(),
                    "maintenance job done"
                ),
                Err(err) => tracing::warn!(
                    job = name,
                    elapsed_ms = elapsed.as_millis() as u64,
                    error = %err,
                    "maintenance job failed; retried at its next interval"
                ),
            }
            runs.push(JobRun {
                job: name,
                started_ms: now,
                elapsed,
                result,
            });
        }
        runs
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
