//! The background image jobs: a bounded crossbeam worker pool over the `image_jobs` table.
//!
//! Exactly once: a job's row is written by the commit that stores the image, so it cannot be
//! lost; a run first counts the attempt durably, then makes each missing variant as an
//! ordinary put at a key derived from (file, version, variant) — a variant whose key already
//! exists was stored by an earlier, interrupted run and is reused, never stored again — and
//! finally marks the row done. A crash at any point leaves a pending row that the next start
//! resumes, and the rerun only adds what is missing.

use std::collections::HashSet;
use std::io::Read;
use std::sync::Mutex;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;

use super::{ImageOptions, probe, variants};
use crate::error::{Error, IoContext, Result};
use crate::id::FileId;
use crate::index::{ImageJob, JobStatus, VariantRef};
use crate::store::{PutOptions, Store};

/// A job's key: the image's file and version.
pub type JobKey = (FileId, u32);

/// The queue of the running workers, kept on the store so puts can hand them new jobs.
#[derive(Default)]
pub struct MediaState {
    queue: Mutex<Option<Sender<JobKey>>>,
    /// Jobs a worker is running now: a job queued twice (resumed at start and notified by its
    /// put) runs once.
    running: Mutex<HashSet<JobKey>>,
}

impl MediaState {
    /// Hands a new job to the workers, if they run; otherwise their next start finds it.
    pub(crate) fn notify(&self, key: JobKey) {
        if let Some(tx) = &*self.queue.lock().unwrap() {
            let _ = tx.send(key);
        }
    }
}

/// The status of an image's processing, with its variants.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageStatus {
    pub file: FileId,
    pub version: u32,
    pub status: JobStatus,
    pub attempts: u32,
    pub error: Option<String>,
    pub variants: Vec<VariantRef>,
}

impl From<ImageJob> for ImageStatus {
    fn from(j: ImageJob) -> Self {
        ImageStatus {
            file: j.file,
            version: j.version,
            status: j.status,
            attempts: j.attempts,
            error: j.error,
            variants: j.variants,
        }
    }
}

/// The running worker pool; dropping it stops the workers after their current job.
pub struct ImageWorkers {
    store: Store,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for ImageWorkers {
    fn drop(&mut self) {
        // The last sender goes with the store's queue; the workers then see the channel close.
        self.store.inner.media.queue.lock().unwrap().take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The key of a variant file: derived from the job, so a rerun finds what it stored.
pub fn variant_key(file: FileId, version: u32, name: &str, extension: &str) -> String {
    format!("_variants/{file}/v{version}/{name}.{extension}")
}

impl Store {
    /// Starts `media.workers` threads making variants, and queues every pending job (resuming
    /// what a stopped or crashed process left).
    pub fn start_image_workers(&self) -> Result<ImageWorkers> {
        let (tx, rx) = crossbeam_channel::unbounded::<JobKey>();
        for j in self.inner.index.read()?.image_jobs()? {
            self.variants_follow(j.file)?;
        }
        let pending = self
            .inner
            .index
            .read()?
            .image_jobs_with(JobStatus::Pending)?;
        for j in &pending {
            let _ = tx.send((j.file, j.version));
        }
        *self.inner.media.queue.lock().unwrap() = Some(tx);
        let threads = (0..self.inner.config.media.workers.max(1))
            .map(|i| {
                let store = self.clone();
                let rx: Receiver<JobKey> = rx.clone();
                std::thread::Builder::new()
                    .name(format!("tessera-image-{i}"))
                    .spawn(move || {
                        for (file, version) in rx {
                            if let Err(e) = store.run_image_job(file, version) {
                                tracing::warn!(%file, version, error = %e, "image job could not run");
                            }
                        }
                    })
                    .expect("spawning an image worker")
            })
            .collect();
        Ok(ImageWorkers {
            store: self.clone(),
            threads,
        })
    }

    /// Runs every pending job on this thread until none is left (failures are retried up to
    /// `media.max_attempts` runs). For tools and tests; servers use the workers.
    pub fn run_pending_image_jobs(&self) -> Result<Vec<ImageStatus>> {
        let mut out = Vec::new();
        loop {
            let pending = self
                .inner
                .index
                .read()?
                .image_jobs_with(JobStatus::Pending)?;
            if pending.is_empty() {
                return Ok(out);
            }
            for j in pending {
                out.push(self.run_image_job(j.file, j.version)?);
            }
        }
    }

    /// The processing status of `id`'s current version.
    pub fn image_status(&self, id: FileId) -> Result<ImageStatus> {
        let version = self.stat(id)?.version;
        self.image_status_of(id, version)
    }

    /// The processing status of one version.
    pub fn image_status_of(&self, id: FileId, version: u32) -> Result<ImageStatus> {
        self.inner
            .index
            .read()?
            .image_job(id, version)?
            .map(ImageStatus::from)
            .ok_or_else(|| Error::not_found(format!("image job of file {id} version {version}")))
    }

    /// Runs one job if it is pending and no other worker runs it; returns its state after.
    pub fn run_image_job(&self, file: FileId, version: u32) -> Result<ImageStatus> {
        let key = (file, version);
        if !self.inner.media.running.lock().unwrap().insert(key) {
            return self.image_status_of(file, version);
        }
        let result = self.run_claimed(file, version);
        self.inner.media.running.lock().unwrap().remove(&key);
        result
    }

    fn run_claimed(&self, file: FileId, version: u32) -> Result<ImageStatus> {
        let Some(job) = self.update_job(file, version, |j| {
            j.attempts += 1;
        })?
        else {
            return self.image_status_of(file, version);
        };
        let made = self.make_variants(&job);
        let max = self.inner.config.media.max_attempts;
        let after = self.update_job(file, version, |j| match &made {
            Ok(v) => {
                j.status = JobStatus::Done;
                j.variants = v.clone();
                j.error = None;
            }
            Err(e) => {
                j.error = Some(e.to_string());
                if j.attempts >= max {
                    j.status = JobStatus::Failed;
                }
            }
        })?;
        match &made {
            Ok(_) => tracing::info!(%file, version, "image variants made"),
            Err(e) => {
                tracing::warn!(%file, version, attempt = job.attempts, error = %e, "image job failed")
            }
        }
        if after
            .as_ref()
            .is_some_and(|j| j.status == JobStatus::Pending)
        {
            self.inner.media.notify(key_of(&job));
        }
        self.image_status_of(file, version)
    }

    /// Applies `change` to a pending job in its own durable transaction; `None` when the job
    /// is not pending (done or failed by an earlier run).
    fn update_job(
        &self,
        file: FileId,
        version: u32,
        change: impl FnOnce(&mut ImageJob),
    ) -> Result<Option<ImageJob>> {
        let mut w = self.inner.index.write()?;
        let Some(mut job) = w.image_job(file, version)? else {
            return Err(Error::not_found(format!(
                "image job of file {file} version {version}"
            )));
        };
        if job.status != JobStatus::Pending {
            return Ok(None);
        }
        change(&mut job);
        job.updated_ms = self.inner.config.clock.now_ms();
        w.put_image_job(&job)?;
        w.commit()?;
        Ok(Some(job))
    }

    /// Makes `file`'s variants deleted or live as `file` is; when `file` is purged, deletes
    /// them and forgets its jobs (the variants are then purged like any deleted file).
    pub(crate) fn variants_follow(&self, file: FileId) -> Result<()> {
        let jobs = self.inner.index.read()?.image_jobs_of(file)?;
        if jobs.is_empty() {
            return Ok(());
        }
        let original = match self.stat(file) {
            Ok(f) => Some(f),
            Err(Error::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        let deleted = original.as_ref().is_none_or(|f| f.deleted);
        for v in jobs.iter().flat_map(|j| &j.variants) {
            let current = match self.stat(v.file) {
                Ok(f) => f,
                Err(Error::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            if current.deleted != deleted {
                if deleted {
                    self.delete(v.file)?;
                } else {
                    self.undelete(v.file)?;
                }
            }
        }
        if original.is_none() {
            let mut w = self.inner.index.write()?;
            w.remove_image_jobs(file)?;
            w.commit()?;
        }
        Ok(())
    }

    fn make_variants(&self, job: &ImageJob) -> Result<Vec<VariantRef>> {
        let options: ImageOptions = serde_json::from_value(job.options.clone())
            .map_err(|e| Error::InvalidInput(format!("image job options: {e}")))?;
        let original = self.stat(job.file)?;
        let mut img = None;
        let mut out = Vec::new();
        for spec in variants::plan(&options) {
            let key = variant_key(job.file, job.version, spec.name, spec.encoding.extension());
            let stored = match self.resolve_key(&original.owner, &key) {
                Ok(id) => self.stat(id)?,
                Err(Error::NotFound { .. }) => {
                    if img.is_none() {
                        let mut bytes = Vec::new();
                        self.get_version(job.file, job.version)?
                            .read_to_end(&mut bytes)
                            .ctx(|| format!("reading image {}", job.file))?;
                        img = Some(probe::probe(&bytes, &self.inner.config.media)?.1);
                    }
                    let img = img.as_ref().expect("decoded above");
                    let r = variants::render(img, &spec, &options)?;
                    let opts = PutOptions {
                        owner: original.owner.clone(),
                        key: Some(key),
                        name: Some(variant_name(&original.display_name, spec.name, r.extension)),
                        category: Some(original.category.clone()),
                        mime: Some(r.mime.to_string()),
                        public: original.public,
                        metadata: serde_json::json!({
                            "variant_of": { "file": job.file, "version": job.version },
                            "variant": spec.name,
                            "width": r.width,
                            "height": r.height,
                            "quality": r.quality,
                            "target_met": r.target_met,
                        }),
                        declared_size: Some(r.bytes.len() as u64),
                        // Made here, from an original that passed a client's checks: the
                        // variant keeps the original's category.
                        origin: crate::validate::Origin::Local,
                    };
                    self.put(&r.bytes[..], &opts)?.file
                }
                Err(e) => return Err(e),
            };
            let dims =
                |k: &str| stored.metadata.get(k).and_then(|v| v.as_u64()).unwrap_or(0) as u32;
            out.push(VariantRef {
                name: spec.name.to_string(),
                file: stored.id,
                version: stored.version,
                width: dims("width"),
                height: dims("height"),
                size: stored.size,
                mime: stored.mime.clone(),
                blake3: stored.blake3.clone(),
            });
        }
        Ok(out)
    }
}

fn key_of(j: &ImageJob) -> JobKey {
    (j.file, j.version)
}

/// `photo.jpg` → `photo-small.webp`.
fn variant_name(display: &str, variant: &str, extension: &str) -> String {
    let stem = display.rsplit_once('.').map_or(display, |(s, _)| s);
    format!("{stem}-{variant}.{extension}")
}
