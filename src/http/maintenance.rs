//! The maintenance scheduler inside the service: a task that wakes when the next job is due
//! (checking the store clock at least every [`POLL`], so a test clock or a stepped system clock
//! is noticed) and runs the due jobs on the blocking pool, one batch at a time.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use crate::maintenance::scheduler::Scheduler;

/// Longest sleep between two looks at the clock.
pub const POLL: Duration = Duration::from_secs(1);

/// Runs `scheduler` until `stop` turns true. A batch already running finishes first (its jobs
/// commit in steps; the scheduler starts no further job once the stop flag is set), so the
/// service never exits in the middle of an index transaction of a job.
pub async fn run(mut scheduler: Scheduler, mut stop: watch::Receiver<bool>) {
    for (job, interval, _) in scheduler.jobs() {
        tracing::info!(job, interval = %humantime::format_duration(interval), "maintenance job scheduled");
    }
    let flag = scheduler.stop_flag();
    loop {
        if *stop.borrow() {
            return;
        }
        let now = scheduler.now_ms();
        let wait = scheduler.next_due_ms().map_or(POLL, |due| {
            Duration::from_millis(due.saturating_sub(now).max(0) as u64).min(POLL)
        });
        if !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        // The scheduler goes to the pool and comes back; while it is away, a stop request
        // reaches it through its flag.
        let stopper = stop.clone();
        let watcher = tokio::spawn({
            let flag = flag.clone();
            let mut stopper = stopper;
            async move {
                while stopper.changed().await.is_ok() {
                    if *stopper.borrow() {
                        flag.store(true, Ordering::SeqCst);
                        return;
                    }
                }
            }
        });
        let joined = tokio::task::spawn_blocking(move || {
            scheduler.run_due();
            scheduler
        })
        .await;
        watcher.abort();
        match joined {
            Ok(s) => scheduler = s,
            Err(e) => {
                tracing::error!(error = %e, "the maintenance scheduler failed; maintenance stops");
                return;
            }
        }
    }
}
