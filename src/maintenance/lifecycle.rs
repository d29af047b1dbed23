//! Lifecycle jobs: version retention and expiry per category, and the purge of quarantined
//! files (docs/design.md, "Lifecycle").
//!
//! Each job pages through the files it concerns and turns what it decides into journaled
//! changes through the committer — `drop_version`, `delete` and `purge` events, the same ones
//! the live paths write — so `recover` replays them. The commit re-checks each condition in its
//! own transaction (a new version saves a file from expiry, an undelete or a clean version
//! lifts a quarantine), so deciding from an older snapshot never removes the wrong thing.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::commit::Change;
use crate::error::Result;
use crate::index::{FileRecord, ListFilter};
use crate::maintenance::gc::PurgeReport;
use crate::pack::manifest::flags;
use crate::store::Store;
use crate::validate::Policy;

/// Which old versions of a file a category keeps. A version is kept when *any* set rule keeps
/// it; the current version is always kept; a rule with nothing set keeps everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionRule {
    /// Keep the newest N versions, the current one included (so 1 keeps only the current one).
    pub keep_last: Option<u32>,
    /// Keep versions written less than this long ago.
    pub keep_within: Option<Duration>,
}

impl RetentionRule {
    /// Whether the version `rank` places from the newest (0 = current), written at
    /// `created_ms`, is dropped at `now_ms`.
    pub fn drops(&self, rank: usize, created_ms: i64, now_ms: i64) -> bool {
        if rank == 0 || (self.keep_last.is_none() && self.keep_within.is_none()) {
            return false;
        }
        let kept_by_count = self.keep_last.is_some_and(|n| rank < n.max(1) as usize);
        let kept_by_age = self
            .keep_within
            .is_some_and(|d| created_ms > now_ms - d.as_millis() as i64);
        !(kept_by_count || kept_by_age)
    }
}

/// Retention rules by category name.
pub type RetentionRules = BTreeMap<String, RetentionRule>;

/// Expiry ages by category name: a file whose current content is older is soft-deleted.
pub type ExpiryRules = BTreeMap<String, Duration>;

/// SPEC §6's expiry defaults ("images expire after 730 d, temp after 1 d, backups after
/// 90 d"; documents never): name and age in days.
pub const SPEC_EXPIRY_DAYS: [(&str, u64); 3] = [("images", 730), ("temp", 1), ("backups", 90)];

/// The SPEC defaults for the categories `policy` has (a category that does not exist holds no
/// files, and naming it would only confuse a report).
pub fn default_expiry(policy: &Policy) -> ExpiryRules {
    SPEC_EXPIRY_DAYS
        .iter()
        .filter(|(c, _)| policy.categories.contains_key(*c))
        .map(|&(c, days)| (c.to_string(), Duration::from_secs(days * 24 * 60 * 60)))
        .collect()
}

/// When the file was quarantined, if it is: `quarantined_ms`, the time of the infected
/// version's put or restore, or of the rescan that found it. Quarantined files of indexes
/// older than that field have none; their current content's time stands in (`updated_ms`).
pub(crate) fn quarantined_since(f: &FileRecord) -> Option<i64> {
    (f.flags & flags::QUARANTINED != 0).then(|| f.quarantined_ms.unwrap_or(f.updated_ms))
}

impl Store {
    /// Version retention: in each category of `rules`, removes for good the versions its rule
    /// does not keep (never the current one), journaled as `drop_version` events. Deleted files
    /// are included: their versions would be kept only to be purged later.
    pub fn apply_retention(&self, rules: &RetentionRules, dry_run: bool) -> Result<PurgeReport> {
        let now = self.inner().config.clock.now_ms();
        let mut report = PurgeReport {
            dry_run,
            ..Default::default()
        };
        for (category, rule) in rules {
            let base = ListFilter {
                category: Some(category),
                include_deleted: true,
                ..Default::default()
            };
            let results = self.each_file_page_of(&base, |r, files| {
                let mut changes = Vec::new();
                for f in files {
                    let versions = r.versions(f.id)?;
                    let n = versions.len();
                    let mut dropped = false;
                    for (i, v) in versions.iter().enumerate() {
                        let rank = n - 1 - i;
                        if v.meta.version == f.latest || !rule.drops(rank, v.meta.created_ms, now) {
                            continue;
                        }
                        dropped = true;
                        if dry_run {
                            report.versions += 1;
                            report.bytes += v.meta.size;
                        } else {
                            changes.push(Change::DropVersion {
                                id: f.id,
                                version: v.meta.version,
                            });
                        }
                    }
                    if dry_run && dropped {
                        report.files += 1;
                    }
                }
                Ok(changes)
            })?;
            let mut last = None;
            for ((versions, bytes, file), ok) in results {
                if ok {
                    report.versions += versions;
                    report.bytes += bytes;
                    if last != Some(file) {
                        report.files += 1;
                        last = Some(file);
                    }
                } else {
                    report.skipped += 1;
                }
            }
        }
        Ok(report)
    }

    /// Lifecycle expiry: in each category of `rules`, soft-deletes the live files whose current
    /// content was written at least that long ago (journaled `delete` events). They can be
    /// undeleted until [`Store::purge_deleted`] takes them after its grace period; a file that
    /// gets a new version meanwhile is left alone (counted as skipped).
    pub fn expire(&self, rules: &ExpiryRules, dry_run: bool) -> Result<PurgeReport> {
        let now = self.inner().config.clock.now_ms();
        let mut report = PurgeReport {
            dry_run,
            ..Default::default()
        };
        for (category, age) in rules {
            let cutoff = now - age.as_millis() as i64;
            let base = ListFilter {
                category: Some(category),
                ..Default::default()
            };
            let results = self.each_file_page_of(&base, |r, files| {
                let mut changes = Vec::new();
                for f in files.iter().filter(|f| f.updated_ms <= cutoff) {
                    if dry_run {
                        let versions = r.versions(f.id)?;
                        report.files += 1;
                        report.versions += versions.len() as u64;
                        report.bytes += versions.iter().map(|v| v.meta.size).sum::<u64>();
                    } else {
                        changes.push(Change::Expire {
                            id: f.id,
                            updated_before: cutoff,
                        });
                    }
                }
                Ok(changes)
            })?;
            tally(&mut report, results);
        }
        Ok(report)
    }

    /// Removes for good (journaled `purge` events) the files quarantined at least `older_than`
    /// ago (default policy 7 days), deleted or not.
    pub fn purge_quarantined(&self, older_than: Duration, dry_run: bool) -> Result<PurgeReport> {
        let cutoff = self.inner().config.clock.now_ms() - older_than.as_millis() as i64;
        let mut report = PurgeReport {
            dry_run,
            ..Default::default()
        };
        let base = ListFilter {
            include_deleted: true,
            quarantined_only: true,
            ..Default::default()
        };
        let results = self.each_file_page_of(&base, |r, files| {
            let mut changes = Vec::new();
            for f in files {
                if quarantined_since(f).is_none_or(|s| s > cutoff) {
                    continue;
                }
                if dry_run {
                    let versions = r.versions(f.id)?;
                    report.files += 1;
                    report.versions += versions.len() as u64;
                    report.bytes += versions.iter().map(|v| v.meta.size).sum::<u64>();
                } else {
                    changes.push(Change::PurgeQuarantined {
                        id: f.id,
                        quarantined_before: cutoff,
                    });
                }
            }
            Ok(changes)
        })?;
        tally(&mut report, results);
        Ok(report)
    }
}

/// Adds per-file results of committed changes to a report.
fn tally(report: &mut PurgeReport, results: Vec<((u64, u64, crate::id::FileId), bool)>) {
    for ((versions, bytes, _), ok) in results {
        if ok {
            report.files += 1;
            report.versions += versions;
            report.bytes += bytes;
        } else {
            report.skipped += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: i64 = 24 * 60 * 60 * 1000;

    #[test]
    fn retention_keeps_what_any_rule_keeps_and_always_the_current_version() {
        let now = 100 * DAY_MS;
        let none = RetentionRule::default();
        assert!(!none.drops(5, 0, now), "an empty rule keeps everything");
        let last2 = RetentionRule {
            keep_last: Some(2),
            keep_within: None,
        };
        assert!(!last2.drops(0, 0, now) && !last2.drops(1, 0, now));
        assert!(
            last2.drops(2, now, now),
            "count alone drops even a new version"
        );
        let within = RetentionRule {
            keep_last: None,
            keep_within: Some(Duration::from_secs(10 * 24 * 3600)),
        };
        assert!(
            !within.drops(0, 0, now),
            "the current version is never dropped"
        );
        assert!(!within.drops(7, now - 9 * DAY_MS, now));
        assert!(within.drops(1, now - 10 * DAY_MS, now));
        let both = RetentionRule {
            keep_last: Some(1),
            keep_within: Some(Duration::from_secs(10 * 24 * 3600)),
        };
        assert!(!both.drops(3, now - DAY_MS, now), "young: kept by age");
        assert!(
            both.drops(1, now - 11 * DAY_MS, now),
            "old and past the count"
        );
        let zero = RetentionRule {
            keep_last: Some(0),
            keep_within: None,
        };
        assert!(!zero.drops(0, 0, now) && zero.drops(1, now, now));
    }

    #[test]
    fn expiry_defaults_only_for_categories_the_policy_has() {
        let d = default_expiry(&Policy::default());
        assert_eq!(
            d.into_iter().collect::<Vec<_>>(),
            vec![("images".to_string(), Duration::from_secs(730 * 86400))]
        );
        let mut p = Policy::default();
        p.categories
            .insert("temp".into(), p.categories["other"].clone());
        let d = default_expiry(&p);
        assert_eq!(d["temp"], Duration::from_secs(86400));
        assert!(!d.contains_key("documents") && !d.contains_key("backups"));
    }
}
