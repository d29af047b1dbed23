//! The commit protocol, with group commit.
//!
//! Every change to the index — a new version, a delete, an undelete, a visibility change, a
//! links revocation, a change to the accounts — goes through [`Committer`]. Callers queue their
//! changes; whichever caller gets the leader lock takes the whole queue and commits it in one
//! index transaction: for each change it decides file id and version number, appends the
//! manifest or event record, and applies it to the transaction; then one `Packs::sync` makes all
//! of it (and every chunk the changes reference) durable, and one redb commit publishes it. Each
//! caller returns only after the commit that holds its change. So many small puts share one
//! fsync pair without any put returning before it is durable.
//!
//! Manifests and events are appended only by the leader, inside the write transaction, so their
//! order in the packs is the commit order `recover` replays.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crossbeam_channel::{Receiver, Sender};

use crate::error::{Error, Result};
use crate::id::{ChunkId, FileId};
use crate::index::{ChunkRow, FileRecord, ImageJob, JobStatus, WriteTx};
use crate::pack::manifest::{ChunkRef, FileEvent, Manifest, ScanStamp, VersionMeta, flags};
use crate::pack::record::{self, RecordKind};
use crate::pack::{Location, Packs};
use crate::store::{FileInfo, Inner};
use crate::users::{AccountChange, AccountDone, AccountPlan};

/// Most changes committed in one index transaction.
const MAX_GROUP: usize = 4096;

/// Which file a new version belongs to.
pub(crate) enum Target {
    /// The file at the manifest's (owner, key), or a new file when there is none (or no key).
    ByKey,
    /// This existing file.
    Existing(FileId),
}

/// One change to commit.
// Short-lived, one per put: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Change {
    Version {
        target: Target,
        /// Everything but file id, version number and times, which the leader decides.
        meta: VersionMeta,
        chunks: Vec<ChunkRef>,
        /// Rows of chunks the index may not have yet (written by this change's put).
        rows: HashMap<ChunkId, ChunkRow>,
        /// An image put's job options: the job row is written by the same transaction, so no
        /// crash leaves a stored image without its job.
        image_job: Option<serde_json::Value>,
    },
    Delete(FileId),
    Undelete(FileId),
    /// Remove a soft-deleted file for good, if it was deleted at or before `deleted_before`.
    Purge {
        id: FileId,
        deleted_before: i64,
    },
    /// Remove one version (never the latest) for good.
    DropVersion {
        id: FileId,
        version: u32,
    },
    /// Replace a version's scan verdict (a rescan).
    Scan {
        id: FileId,
        version: u32,
        stamp: ScanStamp,
    },
    /// Lifecycle expiry: soft-delete a live file whose current content was written at or
    /// before `updated_before` (a newer version meanwhile saves it). Journaled as `delete`.
    Expire {
        id: FileId,
        updated_before: i64,
    },
    /// Remove for good a file quarantined at or before `quarantined_before` (deleted or not).
    /// Journaled as `purge`.
    PurgeQuarantined {
        id: FileId,
        quarantined_before: i64,
    },
    /// Make a live file's current version public or private. Journaled as `visibility`;
    /// nothing is journaled when it already is.
    Visibility {
        id: FileId,
        public: bool,
    },
    /// End every signed link of the file. Journaled as `revoke_links`.
    RevokeLinks(FileId),
    /// A change to users, tokens or organisation limits (`users::AccountChange`).
    Account(AccountChange),
}

/// What a committed change answers.
// One per change, moved once through a channel: boxing the file info would buy nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Committed {
    File(FileInfo),
    Account(AccountDone),
}

struct Job {
    change: Change,
    reply: Sender<Result<Committed>>,
}

/// Serialises and batches commits.
pub(crate) struct Committer {
    queue: Mutex<Vec<Job>>,
    leader: Mutex<()>,
}

impl Committer {
    pub fn new() -> Self {
        Committer {
            queue: Mutex::new(Vec::new()),
            leader: Mutex::new(()),
        }
    }

    /// Commits `change`, possibly in one transaction with other threads' changes.
    pub fn commit(&self, inner: &Inner, change: Change) -> Result<FileInfo> {
        self.commit_all(inner, vec![change])
            .pop()
            .expect("one result per change")
    }

    /// Commits `changes` (in this order) and returns one result per change. A change that
    /// cannot apply (unknown file, say) fails alone; a failure of the commit itself fails every
    /// change in the group.
    pub fn commit_all(&self, inner: &Inner, changes: Vec<Change>) -> Vec<Result<FileInfo>> {
        self.commit_changes(inner, changes)
            .into_iter()
            .map(|r| match r? {
                Committed::File(info) => Ok(info),
                Committed::Account(_) => unreachable!("file changes answer with a file"),
            })
            .collect()
    }

    /// Commits one change to the accounts, journaled and grouped like file changes.
    pub fn commit_account(&self, inner: &Inner, change: AccountChange) -> Result<AccountDone> {
        match self
            .commit_changes(inner, vec![Change::Account(change)])
            .pop()
            .expect("one result per change")?
        {
            Committed::Account(done) => Ok(done),
            Committed::File(_) => unreachable!("account changes answer with an account"),
        }
    }

    fn commit_changes(&self, inner: &Inner, changes: Vec<Change>) -> Vec<Result<Committed>> {
        let mut receivers: Vec<Receiver<Result<Committed>>> = Vec::with_capacity(changes.len());
        {
            let mut q = self.queue.lock().unwrap();
            for change in changes {
                let (reply, rx) = crossbeam_channel::bounded(1);
                q.push(Job { change, reply });
                receivers.push(rx);
            }
        }
        {
            // Whoever holds the leader lock commits everything queued. Once we hold it, our jobs
            // are either done (a previous leader took them) or still queued for us.
            let _leader = self.leader.lock().unwrap();
            loop {
                // Done already (an earlier leader took our jobs): hand the lock on at once. A
                // caller whose jobs are still queued will take everything queued by then, so
                // commits stay large instead of a convoy of finished callers each committing
                // the one or two jobs that arrived meanwhile.
                if receivers.iter().all(|r| !r.is_empty()) {
                    break;
                }
                let batch: Vec<Job> = {
                    let mut q = self.queue.lock().unwrap();
                    let n = q.len().min(MAX_GROUP);
                    q.drain(..n).collect()
                };
                if batch.is_empty() {
                    break;
                }
                commit_group(inner, batch);
            }
        }
        receivers
            .into_iter()
            .map(|rx| rx.recv().expect("every job gets a reply"))
            .collect()
    }
}

/// A change checked against the transaction, ready to append and apply.
#[allow(clippy::large_enum_variant)]
enum Prepared {
    Version {
        meta: VersionMeta,
        chunks: Vec<ChunkRef>,
        rows: HashMap<ChunkId, ChunkRow>,
        image_job: Option<serde_json::Value>,
    },
    Event(FileEvent),
    /// A purge or dropped version: the file as it was before, for the reply.
    Removal(FileEvent, FileInfo),
    /// Nothing to do (deleting a deleted file); reply with the file as it is.
    Nothing(FileId),
    Account(AccountPlan),
}

fn commit_group(inner: &Inner, batch: Vec<Job>) {
    let mut w = match inner.index.write() {
        Ok(w) => w,
        Err(e) => return fail_all(batch.into_iter().map(|j| j.reply), &e),
    };
    let now = inner.config.clock.now_ms();
    let mut appended: Vec<Location> = Vec::new();
    let mut done: Vec<(Sender<Result<Committed>>, Committed)> = Vec::new();
    let mut fatal = None;
    for job in batch {
        if fatal.is_some() {
            let _ = job.reply.send(Err(Error::Index {
                context: "committing a group".into(),
                detail: "an earlier change in the group failed".into(),
            }));
            continue;
        }
        // Checks first: a change that cannot apply fails alone, before anything is written.
        let prepared = match prepare(&w, &inner.packs, now, job.change) {
            Ok(p) => p,
            Err(e) => {
                let _ = job.reply.send(Err(e));
                continue;
            }
        };
        match apply(inner, &mut w, prepared, &mut appended) {
            Ok(info) => done.push((job.reply, info)),
            Err(e) => {
                let _ = job.reply.send(Err(e.duplicate()));
                fatal = Some(e);
            }
        }
    }
    // Quota warning levels move in the same transaction as the usage they follow, so a
    // crossing is raised exactly once, and only if the commit happens.
    let mut events = Vec::new();
    let result = match fatal {
        Some(e) => Err(e),
        None => inner.quotas.settle(&mut w, now).and_then(|ev| {
            events = ev;
            finish(inner, w)
        }),
    };
    match result {
        Ok(()) => {
            for (reply, info) in done {
                let _ = reply.send(Ok(info));
            }
            inner.quotas.publish(events);
        }
        Err(e) => {
            for loc in appended {
                revoke(inner, loc);
            }
            fail_all(done.into_iter().map(|(r, _)| r), &e);
        }
    }
}

fn fail_all(replies: impl Iterator<Item = Sender<Result<Committed>>>, e: &Error) {
    for r in replies {
        let _ = r.send(Err(e.duplicate()));
    }
}

fn prepare(w: &WriteTx, packs: &Packs, now: i64, change: Change) -> Result<Prepared> {
    match change {
        Change::Version {
            target,
            mut meta,
            chunks,
            rows,
            image_job,
        } => {
            let existing = match target {
                Target::ByKey => match &meta.key {
                    Some(key) => w.file_by_key(&meta.owner, key)?,
                    None => None,
                },
                Target::Existing(id) => Some(
                    w.file(id)?
                        .ok_or_else(|| Error::not_found(format!("file {id}")))?,
                ),
            };
            match &existing {
                Some(f) => {
                    meta.file_id = f.id;
                    meta.version = f.latest + 1;
                    meta.file_created_ms = f.created_ms;
                    meta.category = f.category.clone();
                    // The clock may step back; versions must not.
                    meta.created_ms = now.max(f.updated_ms);
                }
                None => {
                    meta.file_id = FileId::new();
                    meta.version = 1;
                    meta.file_created_ms = now;
                    meta.created_ms = now;
                }
            }
            let mut checked = HashSet::new();
            for c in &chunks {
                // A chunk the index lost meanwhile is fine only if this put wrote (or shared)
                // it and its pack is still there (compaction removes packs no put in flight
                // writes to, but a shared row may come from an older put that failed).
                if checked.insert(c.id)
                    && w.chunk(&c.id)?.is_none()
                    && rows.get(&c.id).is_none_or(|r| !packs.has(r.loc.pack))
                {
                    return Err(Error::Corrupt {
                        location: "index".into(),
                        detail: "a chunk of the new version is not stored".into(),
                        chunk: Some(c.id.to_hex()),
                    });
                }
            }
            Ok(Prepared::Version {
                meta,
                chunks,
                rows,
                image_job,
            })
        }
        Change::Delete(id) => {
            let f = w
                .file(id)?
                .ok_or_else(|| Error::not_found(format!("file {id}")))?;
            Ok(match f.deleted_ms {
                None => Prepared::Event(FileEvent::Delete {
                    file_id: id,
                    at_ms: now,
                }),
                Some(_) => Prepared::Nothing(id),
            })
        }
        Change::Undelete(id) => {
            let f = w
                .file(id)?
                .ok_or_else(|| Error::not_found(format!("file {id}")))?;
            Ok(match f.deleted_ms {
                Some(_) => Prepared::Event(FileEvent::Undelete {
                    file_id: id,
                    at_ms: now,
                }),
                None => Prepared::Nothing(id),
            })
        }
        Change::Purge { id, deleted_before } => {
            let f = w
                .file(id)?
                .ok_or_else(|| Error::not_found(format!("file {id}")))?;
            if f.deleted_ms.is_none_or(|d| d > deleted_before) {
                return Err(Error::InvalidInput(format!(
                    "file {id} is not deleted, or was deleted too recently to purge"
                )));
            }
            purge(w, &f, now)
        }
        Change::Expire { id, updated_before } => {
            let f = w
                .file(id)?
                .ok_or_else(|| Error::not_found(format!("file {id}")))?;
            if f.deleted_ms.is_some() || f.updated_ms > updated_before {
                return Err(Error::InvalidInput(format!(
                    "file {id} is deleted or has a newer version: not expired"
                )));
            }
            Ok(Prepared::Event(FileEvent::Delete {
                file_id: id,
                at_ms: now,
            }))
        }
        Change::PurgeQuarantined {
            id,
            quarantined_before,
        } => {
            let f = w
                .file(id)?
                .ok_or_else(|| Error::not_found(format!("file {id}")))?;
            let since = crate::maintenance::lifecycle::quarantined_since(&f);
            if since.is_none_or(|s| s > quarantined_before) {
                return Err(Error::InvalidInput(format!(
                    "file {id} is not quarantined, or was quarantined too recently to purge"
                )));
            }
            purge(w, &f, now)
        }
        Change::DropVersion { id, version } => {
            let f = w
                .file(id)?
                .ok_or_else(|| Error::not_found(format!("file {id}")))?;
            if version == f.latest {
                return Err(Error::InvalidInput(format!(
                    "version {version} is the latest of file {id}"
                )));
            }
            let v = w
                .version(id, version)?
                .ok_or_else(|| Error::not_found(format!("version {version} of file {id}")))?;
            Ok(Prepared::Removal(
                FileEvent::DropVersion {
                    file_id: id,
                    version,
                    at_ms: now,
                    manifest: (v.manifest.pack, v.manifest.offset),
                },
                FileInfo::new(&f, &v.meta),
            ))
        }
        Change::Visibility { id, public } => {
            let f = w
                .file(id)?
                .filter(|f| f.deleted_ms.is_none())
                .ok_or_else(|| Error::not_found(format!("file {id}")))?;
            let v = w.version(id, f.latest)?.ok_or_else(|| {
                Error::corrupt("index", format!("file {id} has no version {}", f.latest))
            })?;
            if (v.meta.flags & flags::PUBLIC != 0) == public {
                return Ok(Prepared::Nothing(id));
            }
            Ok(Prepared::Event(FileEvent::Visibility {
                file_id: id,
                version: f.latest,
                public,
                at_ms: now,
                manifest: (v.manifest.pack, v.manifest.offset),
            }))
        }
        Change::RevokeLinks(id) => {
            w.file(id)?
                .ok_or_else(|| Error::not_found(format!("file {id}")))?;
            Ok(Prepared::Event(FileEvent::RevokeLinks {
                file_id: id,
                at_ms: now,
            }))
        }
        Change::Account(change) => Ok(Prepared::Account(crate::users::plan(w, now, change)?)),
        Change::Scan { id, version, stamp } => {
            let v = w
                .version(id, version)?
                .ok_or_else(|| Error::not_found(format!("version {version} of file {id}")))?;
            Ok(Prepared::Event(FileEvent::Scan {
                file_id: id,
                version,
                at_ms: now,
                manifest: (v.manifest.pack, v.manifest.offset),
                scan: stamp,
            }))
        }
    }
}

fn apply(
    inner: &Inner,
    w: &mut WriteTx,
    prepared: Prepared,
    appended: &mut Vec<Location>,
) -> Result<Committed> {
    let info = match prepared {
        Prepared::Version {
            meta,
            chunks,
            rows,
            image_job,
        } => {
            let manifest = Manifest { meta, chunks };
            let plain = manifest.encode();
            let loc = append(
                inner,
                RecordKind::Manifest,
                &plain,
                inner.compression_level(),
            )?;
            appended.push(loc);
            let (file, missing) = w.apply_version(&manifest.meta, &manifest.chunks, loc, |id| {
                rows.get(id).copied()
            })?;
            debug_assert!(missing.is_empty(), "prepare checked every chunk");
            if let Some(options) = image_job {
                w.put_image_job(&ImageJob {
                    file: file.id,
                    version: manifest.meta.version,
                    status: JobStatus::Pending,
                    attempts: 0,
                    error: None,
                    options,
                    variants: Vec::new(),
                    updated_ms: manifest.meta.created_ms,
                })?;
            }
            FileInfo::new(&file, &manifest.meta)
        }
        Prepared::Event(event) => {
            let loc = append(inner, RecordKind::Event, &event.encode(), 0)?;
            appended.push(loc);
            let file = w
                .apply_event(&event)?
                .expect("the events of live changes name a present file and change it");
            current_info(w, &file)?
        }
        Prepared::Removal(event, info) => {
            let loc = append(inner, RecordKind::Event, &event.encode(), 0)?;
            appended.push(loc);
            w.apply_event(&event)?;
            info
        }
        Prepared::Nothing(id) => {
            let file = w
                .file(id)?
                .ok_or_else(|| Error::not_found(format!("file {id}")))?;
            current_info(w, &file)?
        }
        Prepared::Account(plan) => return apply_account(inner, w, plan, appended),
    };
    Ok(Committed::File(info))
}

/// Journals an account change and applies it with the code `recover` replays it with.
fn apply_account(
    inner: &Inner,
    w: &mut WriteTx,
    plan: AccountPlan,
    appended: &mut Vec<Location>,
) -> Result<Committed> {
    let done = match plan {
        AccountPlan::Apply(change, done) => {
            let event = FileEvent::Account(change);
            let loc = append(inner, RecordKind::Event, &event.encode(), 0)?;
            appended.push(loc);
            w.apply_event(&event)?;
            done
        }
        AccountPlan::Journal(snapshot) => {
            // The index holds exactly this already; the journal catches up with it. A
            // snapshot can be large: compressed like chunks.
            if let Some(snapshot) = snapshot {
                let plain = FileEvent::Account(snapshot).encode();
                let loc = append(inner, RecordKind::Event, &plain, inner.compression_level())?;
                appended.push(loc);
                w.set_latest_account_snapshot(loc)?;
            }
            w.set_accounts_journaled()?;
            AccountDone::default()
        }
        AccountPlan::Nothing(done) => done,
    };
    Ok(Committed::Account(done))
}

/// The removal of `f` for good, whatever made it purgeable: a `purge` event naming where its
/// versions' manifests are.
fn purge(w: &WriteTx, f: &FileRecord, now: i64) -> Result<Prepared> {
    let info = current_info(w, f)?;
    let manifests = w
        .versions(f.id)?
        .iter()
        .map(|v| (v.manifest.pack, v.manifest.offset))
        .collect();
    Ok(Prepared::Removal(
        FileEvent::Purge {
            file_id: f.id,
            at_ms: now,
            manifests,
        },
        info,
    ))
}

fn current_info(w: &WriteTx, file: &FileRecord) -> Result<FileInfo> {
    let v = w.version(file.id, file.latest)?.ok_or_else(|| {
        Error::corrupt(
            "index",
            format!("file {} has no version {}", file.id, file.latest),
        )
    })?;
    Ok(FileInfo::new(file, &v.meta))
}

pub(crate) fn append(
    inner: &Inner,
    kind: RecordKind,
    plain: &[u8],
    level: i32,
) -> Result<Location> {
    // The codec refuses payloads past its limit; only a snapshot of a huge account table
    // could get there.
    if plain.len() > record::MAX_PAYLOAD as usize {
        return Err(Error::InvalidInput(format!(
            "a record of {} bytes is over the limit of {} bytes",
            plain.len(),
            record::MAX_PAYLOAD
        )));
    }
    let mut rec = Vec::with_capacity(plain.len() + record::OVERHEAD);
    record::encode_plain(kind, plain, &ChunkId::of(plain).0, level, &mut rec);
    inner.packs.append(&rec)
}

/// Makes the packs durable, records their state and access times, and commits.
fn finish(inner: &Inner, mut w: WriteTx) -> Result<()> {
    let states = inner.packs.sync()?;
    w.set_packs(&states)?;
    inner.write_access_times(&mut w)?;
    w.commit()?;
    inner.packs.committed(&states);
    Ok(())
}

/// Best effort: marks the record at `loc` as never committed, so `recover` skips it.
fn revoke(inner: &Inner, loc: Location) {
    let ev = FileEvent::Revoke {
        pack: loc.pack,
        offset: loc.offset,
    };
    let done = append(inner, RecordKind::Event, &ev.encode(), 0).and_then(|_| inner.packs.sync());
    if let Err(e) = done {
        tracing::error!(
            pack = loc.pack,
            offset = loc.offset,
            "could not revoke an uncommitted record ({e}); `recover` may replay it"
        );
    }
}
