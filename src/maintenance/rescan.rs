//! Rescanning stored files with the virus scanner, after a signature update.
//!
//! A put stamps each version it scans with the scanner's verdict (see `crate::scan`). Which
//! versions a rescan looks at is decided as a put decides it: a version is scanned when
//! `scan.categories` covers its file's category or the category its content alone belongs to
//! (`Policy::content_category`, from the version's first bytes), so a file stored under a name
//! or a category that hid its type (before categories were the server's decision) is still
//! rescanned. Signatures arrive later than malware, so [`Store::rescan`] streams stored
//! versions to the scanner again and records what changed as a journaled `scan` event
//! (`FileEvent::Scan`), which `recover` replays: a new hit quarantines the file (when the
//! version is its current one) and is never served to users again; a version stored unscanned
//! (the scanner was down and the store fails open) gets its first real verdict.
//!
//! The walk pages through the files table and holds no read transaction while it scans, so its
//! memory does not grow with the store and puts go on meanwhile. Each hit is committed as soon
//! as it is found: a rescan stopped half way (the scanner went down) keeps what it found.

use std::io::Read;

use serde::Serialize;

use crate::commit::Change;
use crate::error::{Error, Result};
use crate::id::FileId;
use crate::index::ListFilter;
use crate::pack::manifest::ScanStamp;
use crate::scan::{ScanConfig, ScanError, Verdict};
use crate::store::Store;
use crate::validate::policy::PREFIX_LEN;

/// Files read from the index per page.
const PAGE: usize = 500;
/// Bytes fed to the scanner per call (clamd frames them again at 256 KiB).
const FEED: usize = 256 << 10;

/// What [`Store::rescan`] looks at.
#[derive(Debug, Clone, Default)]
pub struct RescanOptions {
    /// Scan and report, but record nothing.
    pub dry_run: bool,
    /// Every category, not only those `scan.categories` covers.
    pub all_categories: bool,
    /// Scan versions already found infected too: one the scanner now calls clean (a signature
    /// withdrawn as a false positive) is released. Off by default: an infected verdict is only
    /// ever replaced on purpose.
    pub recheck_infected: bool,
}

/// One version whose verdict the rescan changed (or, in a dry run, would change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RescanChange {
    pub file: FileId,
    pub version: u32,
    pub owner: String,
    pub name: String,
    /// Whether `version` is the file's current version (so the file's quarantine changed).
    pub current: bool,
    pub before: Option<ScanStamp>,
    pub after: ScanStamp,
}

/// What a rescan did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RescanReport {
    pub dry_run: bool,
    /// Versions streamed to the scanner, and their bytes.
    pub scanned: u64,
    pub bytes: u64,
    /// Versions found infected that were not before (quarantined unless `dry_run`).
    pub infected: Vec<RescanChange>,
    /// Versions whose verdict changed otherwise: an unscanned version found clean, or (with
    /// `recheck_infected`) an infected one released.
    pub cleared: Vec<RescanChange>,
    /// Versions over `scan.stream_max`, not scanned (refused at put time unless they predate
    /// the limit): listed so that nothing is passed silently.
    pub too_large: Vec<(FileId, u32)>,
    /// Versions neither whose category nor whose content is scanned, and infected versions
    /// not rechecked.
    pub skipped: u64,
}

impl Store {
    /// Streams stored versions of live files to the configured scanner and records every
    /// changed verdict. Fails with [`Error::ScanUnavailable`] when the store has no scanner or
    /// the scanner stops answering (the verdicts recorded until then stay recorded; the error
    /// says how far it got).
    pub fn rescan(&self, opts: &RescanOptions) -> Result<RescanReport> {
        let config = self.scan_config().cloned().ok_or_else(|| {
            Error::ScanUnavailable("no virus scanner is configured ([scan] clamd = ...)".into())
        })?;
        let mut report = RescanReport {
            dry_run: opts.dry_run,
            ..Default::default()
        };
        let mut cursor: Option<String> = None;
        loop {
            // Collect one page of work, then drop the read transaction before scanning.
            let mut work = Vec::new();
            let next = {
                let r = self.inner().index.read()?;
                let (files, next) = r.list(&ListFilter {
                    after: cursor.as_deref(),
                    limit: PAGE,
                    ..Default::default()
                })?;
                for f in files {
                    let by_category = opts.all_categories || config.categories.covers(&f.category);
                    for v in r.versions(f.id)? {
                        let infected = matches!(v.meta.scan, Some(ScanStamp::Infected { .. }));
                        if infected && !opts.recheck_infected {
                            report.skipped += 1;
                            continue;
                        }
                        work.push((f.id, f.latest, v.meta, by_category));
                    }
                }
                next
            };
            for (id, latest, meta, by_category) in work {
                if !by_category {
                    match self.scanned_by_content(&config, id, meta.version) {
                        Ok(true) => {}
                        Ok(false) => {
                            report.skipped += 1;
                            continue;
                        }
                        Err(Error::NotFound { .. }) => continue,
                        Err(e) => return Err(e),
                    }
                }
                if meta.size > config.stream_max {
                    report.too_large.push((id, meta.version));
                    continue;
                }
                let verdict = match self.scan_version(&config, id, meta.version) {
                    Ok(v) => v,
                    // Purged or deleted since the page was read: nothing to scan.
                    Err(Error::NotFound { .. }) => continue,
                    // The scanner's own limit is below `stream_max`.
                    Err(Error::TooLarge { .. }) => {
                        report.too_large.push((id, meta.version));
                        continue;
                    }
                    Err(e) => {
                        return Err(match e {
                            Error::ScanUnavailable(m) => Error::ScanUnavailable(format!(
                                "{m} (rescan stopped after {} versions; {} new hits recorded{})",
                                report.scanned,
                                report.infected.len(),
                                if opts.dry_run { " (dry run)" } else { "" }
                            )),
                            other => other,
                        });
                    }
                };
                report.scanned += 1;
                report.bytes += meta.size;
                let after = match verdict {
                    Verdict::Clean => ScanStamp::Clean,
                    Verdict::Infected(signature) => ScanStamp::Infected { signature },
                };
                let before = meta.scan.clone();
                let changed = match (&before, &after) {
                    (
                        Some(ScanStamp::Infected { signature: a }),
                        ScanStamp::Infected { signature: b },
                    ) => a != b,
                    (_, ScanStamp::Infected { .. }) => true,
                    // A clean verdict is worth an event only when it replaces something: no
                    // record per clean file of a large store.
                    (
                        Some(ScanStamp::Unscanned { .. } | ScanStamp::Infected { .. }),
                        ScanStamp::Clean,
                    ) => true,
                    _ => false,
                };
                if !changed {
                    continue;
                }
                let change = RescanChange {
                    file: id,
                    version: meta.version,
                    owner: meta.owner,
                    name: meta.display_name,
                    current: meta.version == latest,
                    before,
                    after: after.clone(),
                };
                if !opts.dry_run {
                    let committed = self.inner().committer.commit(
                        self.inner(),
                        Change::Scan {
                            id,
                            version: meta.version,
                            stamp: after.clone(),
                        },
                    );
                    match committed {
                        Ok(_) => {}
                        Err(Error::NotFound { .. }) => continue,
                        Err(e) => return Err(e),
                    }
                }
                match after {
                    ScanStamp::Infected { ref signature } => {
                        tracing::warn!(
                            file = %change.file,
                            version = change.version,
                            signature = %signature,
                            dry_run = opts.dry_run,
                            "rescan: infected"
                        );
                        report.infected.push(change);
                    }
                    _ => report.cleared.push(change),
                }
            }
            match next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        Ok(report)
    }

    /// Whether `config` covers the category the content of this version alone belongs to:
    /// reads its first bytes, as a put's guard does.
    fn scanned_by_content(&self, config: &ScanConfig, id: FileId, version: u32) -> Result<bool> {
        let reader = self.get_version_untracked(id, version)?;
        let mut prefix = Vec::new();
        reader
            .take(PREFIX_LEN as u64)
            .read_to_end(&mut prefix)
            .map_err(crate::store::io_to_error)?;
        Ok(self
            .inner()
            .config
            .policy
            .content_category(&prefix)
            .is_some_and(|c| config.categories.covers(c)))
    }

    /// Streams one stored version to the scanner.
    fn scan_version(&self, config: &ScanConfig, id: FileId, version: u32) -> Result<Verdict> {
        let mut reader = self.get_version_untracked(id, version)?;
        let unavailable = |e: ScanError| match e {
            ScanError::StreamLimit { .. } => Error::TooLarge {
                limit: config.stream_max,
                what: format!("version {version} of file {id}: {e}"),
            },
            e => Error::ScanUnavailable(e.to_string()),
        };
        let mut stream = config.scanner.start().map_err(unavailable)?;
        let mut buf = vec![0u8; FEED];
        loop {
            let n = reader.read(&mut buf).map_err(crate::store::io_to_error)?;
            if n == 0 {
                break;
            }
            stream.feed(&buf[..n]).map_err(unavailable)?;
        }
        stream.finish().map_err(unavailable)
    }
}
