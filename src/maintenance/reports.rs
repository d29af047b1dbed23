//! Reports for administrators: files nobody has read for N days, files with identical content
//! (and what deduplication saves), storage by category, owner and tier.
//!
//! Each report reads one index snapshot and walks the tables it needs row by row; what it holds
//! is bounded by what it returns (a page of files, the top groups, one row per owner or
//! category), not by the size of the store. Their time is one pass over `files` (unread,
//! storage) or `content_files` (duplicates). See docs/design.md, "Reports".

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::id::FileId;
use crate::index::{FileRecord, ReadTx, day_of};
use crate::store::Store;

/// Meta key: when `recover` last rebuilt the index (ms). Last-read times are not journaled, so
/// reports treat every file as read then at the latest.
pub const READS_SINCE: &str = "reads_since_ms";

const DAY_MS: i64 = 86_400_000;
/// Files listed per duplicate group (all are counted).
const GROUP_MEMBERS: usize = 100;

/// The storage tiers of [`StorageReport::by_tier`]: local packs, and the cold tier (a row
/// only when the store has one or holds cold chunks). Files and versions are counted in the
/// hot row; the chunk figures split by where each chunk is.
pub const TIER_HOT: &str = "hot";
pub const TIER_COLD: &str = "cold";

/// Which files [`Store::report_unread`] lists.
#[derive(Debug, Clone, Default)]
pub struct UnreadQuery {
    /// Files not read (nor written) for at least this many whole days (UTC); at least 1.
    pub days: u32,
    /// Only this owner's files.
    pub owner: Option<String>,
    /// Continue after this file id (the previous page's `next`).
    pub after: Option<FileId>,
    /// Files per page, 1 to 10 000 (default 100).
    pub limit: Option<usize>,
}

/// A file nobody has read for the asked number of days.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnreadFile {
    pub id: FileId,
    pub owner: String,
    pub key: Option<String>,
    pub name: String,
    pub category: String,
    /// Size of the current version.
    pub size: u64,
    /// Last read (or write), day granularity; never earlier than the last `recover`.
    pub last_read_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnreadReport {
    pub days: u32,
    /// Files whose last read is before this instant are listed (the start of a UTC day).
    pub cutoff_ms: i64,
    /// When `recover` last rebuilt the index, losing last-read times (none if never).
    pub reads_since_ms: Option<i64>,
    pub files: Vec<UnreadFile>,
    /// Cursor of the next page (a file id), if there is one.
    pub next: Option<String>,
}

/// A file in a group of identical ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DuplicateFile {
    pub id: FileId,
    pub owner: String,
    pub key: Option<String>,
    pub name: String,
}

/// Live files whose current versions have the same content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DuplicateGroup {
    pub blake3: String,
    pub size: u64,
    /// Files in the group.
    pub count: u64,
    /// What storing the content once saves over storing it `count` times: `(count - 1) × size`.
    pub saved_bytes: u64,
    /// Up to 100 of the files, in id order.
    pub files: Vec<DuplicateFile>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DuplicatesReport {
    /// The groups that save the most bytes, largest first (at most the asked limit).
    pub groups: Vec<DuplicateGroup>,
    /// All groups of two or more live files.
    pub groups_total: u64,
    /// Files beyond the first of each group.
    pub duplicate_files: u64,
    /// Bytes whole-file dedup saves: the sum of every group's `saved_bytes`.
    pub file_level_saved_bytes: u64,
    /// All versions of all files (deleted ones until purged), as written.
    pub logical_bytes: u64,
    /// Plain bytes of the distinct chunks.
    pub unique_bytes: u64,
    /// Compressed bytes of the distinct chunks.
    pub stored_bytes: u64,
    /// `logical_bytes - unique_bytes`: what chunk-level dedup saves (whole files included).
    pub chunk_level_saved_bytes: u64,
    /// `unique_bytes - stored_bytes`: what compression saves on top.
    pub compression_saved_bytes: i64,
}

/// Counts and bytes of a set of files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Files not deleted.
    pub files: u64,
    /// Soft-deleted files, still stored until purged.
    pub deleted_files: u64,
    /// Versions of all these files.
    pub versions: u64,
    /// Sum of the sizes of all versions (before dedup and compression); sums to
    /// `StoreStats::logical_bytes` over the whole store.
    pub logical_bytes: u64,
    /// Sum of the sizes of the current versions of the files not deleted.
    pub current_bytes: u64,
}

impl Usage {
    fn add(&mut self, o: &Usage) {
        self.files += o.files;
        self.deleted_files += o.deleted_files;
        self.versions += o.versions;
        self.logical_bytes += o.logical_bytes;
        self.current_bytes += o.current_bytes;
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CategoryUsage {
    pub category: String,
    #[serde(flatten)]
    pub usage: Usage,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnerUsage {
    pub owner: String,
    /// The owner's account tier (free, pro...), when the owner is a user with one.
    pub account_tier: Option<String>,
    #[serde(flatten)]
    pub usage: Usage,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountTierUsage {
    /// The tier name; `none` for owners who are not users or have no tier.
    pub account_tier: String,
    pub owners: u64,
    #[serde(flatten)]
    pub usage: Usage,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TierUsage {
    /// `hot` (local packs); `cold` once a cold tier exists.
    pub tier: String,
    #[serde(flatten)]
    pub usage: Usage,
    /// Plain bytes of the distinct chunks kept in this tier.
    pub unique_bytes: u64,
    /// Compressed bytes of those chunks.
    pub stored_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StorageReport {
    pub totals: Usage,
    /// In category order.
    pub by_category: Vec<CategoryUsage>,
    /// In owner order.
    pub by_owner: Vec<OwnerUsage>,
    /// Storage tiers.
    pub by_tier: Vec<TierUsage>,
    /// Account tiers of the owners, in name order.
    pub by_account_tier: Vec<AccountTierUsage>,
}

impl Store {
    /// Files (not deleted) nobody has read or written for at least `q.days` whole days, by
    /// the store's clock, one page at a time in id order. Reads not yet written to the index
    /// count. After a `recover` no file counts as unread for longer than the time since.
    pub fn report_unread(&self, q: &UnreadQuery) -> Result<UnreadReport> {
        if q.days == 0 {
            return Err(Error::InvalidInput(
                "days must be at least 1 (files not read for N days)".into(),
            ));
        }
        let limit = q.limit.unwrap_or(100);
        if !(1..=10_000).contains(&limit) {
            return Err(Error::InvalidInput(format!(
                "limit {limit} is not in 1..=10000"
            )));
        }
        let now = self.inner.config.clock.now_ms();
        let cutoff_ms = (i64::from(day_of(now)) - i64::from(q.days) + 1) * DAY_MS;
        let r = self.inner.index.read()?;
        let reads_since_ms = reads_since(&r)?;
        let mut report = UnreadReport {
            days: q.days,
            cutoff_ms,
            reads_since_ms,
            files: Vec::new(),
            next: None,
        };
        if reads_since_ms.is_some_and(|s| s >= cutoff_ms) {
            return Ok(report);
        }
        // Only files noted since the last write can be here; a copy keeps the lock short.
        let pending = self.inner.touched.lock().unwrap().clone();
        let mut more = false;
        r.walk_files(q.after, |f| {
            if f.deleted_ms.is_some() || q.owner.as_deref().is_some_and(|o| o != f.owner) {
                return Ok(true);
            }
            let last_read = f
                .accessed_ms
                .max(pending.get(&f.id).copied().unwrap_or(i64::MIN))
                .max(reads_since_ms.unwrap_or(i64::MIN));
            if last_read >= cutoff_ms {
                return Ok(true);
            }
            if report.files.len() == limit {
                more = true;
                return Ok(false);
            }
            let v = current(&r, &f)?;
            report.files.push(UnreadFile {
                id: f.id,
                owner: f.owner,
                key: f.key,
                name: v.meta.display_name,
                category: f.category,
                size: v.meta.size,
                last_read_ms: last_read,
            });
            Ok(true)
        })?;
        if more {
            report.next = report.files.last().map(|f| f.id.to_string());
        }
        Ok(report)
    }

    /// Groups of live files whose current versions have identical content (the `limit` groups
    /// that save the most, 1 to 10 000, default 100), with what dedup saves at file level and
    /// at chunk level.
    pub fn report_duplicates(&self, limit: Option<usize>) -> Result<DuplicatesReport> {
        let limit = limit.unwrap_or(100);
        if !(1..=10_000).contains(&limit) {
            return Err(Error::InvalidInput(format!(
                "limit {limit} is not in 1..=10000"
            )));
        }
        let r = self.inner.index.read()?;
        let c = r.counters()?;
        let mut report = DuplicatesReport {
            groups: Vec::new(),
            groups_total: 0,
            duplicate_files: 0,
            file_level_saved_bytes: 0,
            logical_bytes: c.logical_bytes,
            unique_bytes: c.chunk_raw_bytes,
            stored_bytes: c.chunk_stored_bytes,
            chunk_level_saved_bytes: c.logical_bytes.saturating_sub(c.chunk_raw_bytes),
            compression_saved_bytes: c.chunk_raw_bytes as i64 - c.chunk_stored_bytes as i64,
        };
        // The top `limit` groups by saved bytes: a min-heap whose smallest is evicted.
        let mut top: BinaryHeap<Reverse<Ranked>> = BinaryHeap::new();
        let mut group: Option<([u8; 32], Vec<FileId>)> = None;
        let mut finish = |hash: [u8; 32], ids: Vec<FileId>, report: &mut DuplicatesReport| {
            if ids.len() < 2 {
                return Ok::<_, Error>(());
            }
            let Some(g) = duplicate_group(&r, hash, &ids)? else {
                return Ok(());
            };
            report.groups_total += 1;
            report.duplicate_files += g.count - 1;
            report.file_level_saved_bytes += g.saved_bytes;
            top.push(Reverse(Ranked(g)));
            if top.len() > limit {
                top.pop();
            }
            Ok(())
        };
        r.walk_contents(|hash, id| {
            match &mut group {
                Some((h, ids)) if *h == hash => ids.push(id),
                _ => {
                    if let Some((h, ids)) = group.replace((hash, vec![id])) {
                        finish(h, ids, &mut report)?;
                    }
                }
            }
            Ok(true)
        })?;
        if let Some((h, ids)) = group.take() {
            finish(h, ids, &mut report)?;
        }
        let mut groups: Vec<_> = top.into_iter().map(|Reverse(Ranked(g))| g).collect();
        groups.sort_by(|a, b| {
            b.saved_bytes
                .cmp(&a.saved_bytes)
                .then(a.blake3.cmp(&b.blake3))
        });
        report.groups = groups;
        Ok(report)
    }

    /// Files, versions and bytes by category, owner, storage tier and the owners' account
    /// tiers. The sums over categories (or owners) equal the store's totals in `stats`.
    pub fn report_storage(&self) -> Result<StorageReport> {
        let r = self.inner.index.read()?;
        let mut by_category: BTreeMap<String, Usage> = BTreeMap::new();
        let mut by_owner: BTreeMap<String, Usage> = BTreeMap::new();
        let mut totals = Usage::default();
        r.walk_files(None, |f| {
            let mut u = Usage::default();
            for v in r.versions(f.id)? {
                u.versions += 1;
                u.logical_bytes += v.meta.size;
                if v.meta.version == f.latest && f.deleted_ms.is_none() {
                    u.current_bytes = v.meta.size;
                }
            }
            if f.deleted_ms.is_some() {
                u.deleted_files = 1;
            } else {
                u.files = 1;
            }
            totals.add(&u);
            by_category.entry(f.category).or_default().add(&u);
            by_owner.entry(f.owner).or_default().add(&u);
            Ok(true)
        })?;
        let mut by_account_tier: BTreeMap<String, AccountTierUsage> = BTreeMap::new();
        let mut owners = Vec::with_capacity(by_owner.len());
        for (owner, usage) in by_owner {
            let account_tier = r.user(&owner)?.and_then(|u| u.tier);
            let name = account_tier.clone().unwrap_or_else(|| "none".into());
            let t = by_account_tier
                .entry(name.clone())
                .or_insert_with(|| AccountTierUsage {
                    account_tier: name,
                    owners: 0,
                    usage: Usage::default(),
                });
            t.owners += 1;
            t.usage.add(&usage);
            owners.push(OwnerUsage {
                owner,
                account_tier,
                usage,
            });
        }
        let c = r.counters()?;
        let cold = r.cold_counters()?;
        let mut by_tier = vec![TierUsage {
            tier: TIER_HOT.into(),
            usage: totals,
            unique_bytes: c.chunk_raw_bytes.saturating_sub(cold.raw_bytes),
            stored_bytes: c.chunk_stored_bytes.saturating_sub(cold.stored_bytes),
        }];
        if self.has_cold_tier() || cold.chunks > 0 {
            by_tier.push(TierUsage {
                tier: TIER_COLD.into(),
                usage: Usage::default(),
                unique_bytes: cold.raw_bytes,
                stored_bytes: cold.stored_bytes,
            });
        }
        Ok(StorageReport {
            totals,
            by_category: by_category
                .into_iter()
                .map(|(category, usage)| CategoryUsage { category, usage })
                .collect(),
            by_owner: owners,
            by_tier,
            by_account_tier: by_account_tier.into_values().collect(),
        })
    }
}

/// A group ordered by the bytes it saves (ties by hash, so the order is total).
struct Ranked(DuplicateGroup);

impl Ranked {
    fn key(&self) -> (u64, &str) {
        (self.0.saved_bytes, &self.0.blake3)
    }
}

impl PartialEq for Ranked {
    fn eq(&self, o: &Self) -> bool {
        self.key() == o.key()
    }
}

impl Eq for Ranked {}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for Ranked {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.key().cmp(&o.key())
    }
}

fn reads_since(r: &ReadTx) -> Result<Option<i64>> {
    Ok(r.meta(READS_SINCE)?
        .and_then(|b| b.try_into().ok().map(i64::from_le_bytes)))
}

fn current(r: &ReadTx, f: &FileRecord) -> Result<crate::index::VersionRecord> {
    r.version(f.id, f.latest)?.ok_or_else(|| {
        Error::corrupt(
            "index",
            format!("file {} has no version {}", f.id, f.latest),
        )
    })
}

/// The live members of one content group, if at least two.
fn duplicate_group(r: &ReadTx, hash: [u8; 32], ids: &[FileId]) -> Result<Option<DuplicateGroup>> {
    let mut size = None;
    let mut count = 0u64;
    let mut files = Vec::new();
    for &id in ids {
        let Some(f) = r.file(id)? else { continue };
        if f.deleted_ms.is_some() {
            continue;
        }
        count += 1;
        if files.len() < GROUP_MEMBERS {
            let v = current(r, &f)?;
            size.get_or_insert(v.meta.size);
            files.push(DuplicateFile {
                id,
                owner: f.owner,
                key: f.key,
                name: v.meta.display_name,
            });
        }
    }
    let size = size.unwrap_or(0);
    if count < 2 {
        return Ok(None);
    }
    Ok(Some(DuplicateGroup {
        blake3: blake3::Hash::from_bytes(hash).to_hex().to_string(),
        size,
        count,
        saved_bytes: (count - 1) * size,
        files,
    }))
}

#[cfg(test)]
mod tests {
    use crate::index::Index;
    use crate::store::{Config, PutOptions, Store, index_path};

    #[test]
    fn an_older_index_gets_content_files_on_its_first_read_write_open() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        let store = Store::create(&dir, Config::default()).unwrap();
        let same = vec![7u8; 3000];
        let a = store.put(&same[..], &PutOptions::key("a")).unwrap().file.id;
        store.put(&same[..], &PutOptions::key("b")).unwrap();
        store.put(&b"other"[..], &PutOptions::key("c")).unwrap();
        store.put(&same[..], &PutOptions::key("d")).unwrap();
        store.delete(a).unwrap();
        let before = store.report_duplicates(None).unwrap();
        assert_eq!((before.groups_total, before.duplicate_files), (1, 1));
        drop(store);
        Index::open(&index_path(&dir))
            .unwrap()
            .drop_content_files()
            .unwrap();

        // A read-only open cannot build it, and says how to get it.
        let ro = Store::open_read_only(&dir, Config::default()).unwrap();
        let err = ro.report_duplicates(None).unwrap_err();
        assert!(err.to_string().contains("read-write"), "{err}");
        drop(ro);

        let store = Store::open(&dir, Config::default()).unwrap();
        assert_eq!(store.report_duplicates(None).unwrap(), before);
        let v = store.verify(&()).unwrap();
        assert!(v.is_ok(), "{v:?}");

        // verify notices a file filed under content it does not have.
        store.inner.index.misfile_content(a).unwrap();
        let v = store.verify(&()).unwrap();
        assert!(!v.is_ok());
        assert!(
            v.problems
                .iter()
                .any(|p| p.contains(&a.to_string()) && p.contains("content")),
            "{:?}",
            v.problems
        );
    }
}
