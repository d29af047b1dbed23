//! Table `image_jobs`: one background image job per (file, version), see docs/design.md
//! "Images".
//!
//! A job row is inserted by the commit that stores the image (`WriteTx::insert_image_job`,
//! called from `commit::apply`), so no crash can leave an image without its job. Like
//! `uploads`, the table is index-only: `recover` starts without jobs. A store made before this
//! table existed has none until the first image is stored; readers treat that as empty.

use redb::{ReadableTable, TableError};
use serde::{Deserialize, Serialize};

use super::schema::IMAGE_JOBS;
use super::{ReadTx, WriteTx, decode_json, ix};
use crate::error::Result;
use crate::id::FileId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Pending,
    Done,
    Failed,
}

/// A variant file made by a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantRef {
    /// `small`, `medium`, `large`, `optimised`, `jpeg`.
    pub name: String,
    pub file: FileId,
    pub version: u32,
    pub width: u32,
    pub height: u32,
    pub size: u64,
    pub mime: String,
    pub blake3: String,
}

/// The job of one image version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageJob {
    pub file: FileId,
    pub version: u32,
    pub status: JobStatus,
    /// Runs started so far (a run that crashed counts once it is retried).
    pub attempts: u32,
    /// The last failure.
    pub error: Option<String>,
    /// What the upload asked for (`media::ImageOptions`, opaque here).
    pub options: serde_json::Value,
    pub variants: Vec<VariantRef>,
    pub updated_ms: i64,
}

fn encode(j: &ImageJob) -> Vec<u8> {
    serde_json::to_vec(j).expect("image job serialises")
}

impl ReadTx {
    /// The job of `file` version `version`.
    pub fn image_job(&self, file: FileId, version: u32) -> Result<Option<ImageJob>> {
        let t = match self.tx.open_table(IMAGE_JOBS) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(ix("opening image_jobs")(e)),
        };
        t.get((file.0, version))
            .map_err(ix("reading an image job"))?
            .map(|v| decode_json(v.value(), "image job"))
            .transpose()
    }

    /// Every job of `file`, oldest version first.
    pub fn image_jobs_of(&self, file: FileId) -> Result<Vec<ImageJob>> {
        self.scan_image_jobs(Some(file), |_| true)
    }

    /// Every job, in (file, version) order.
    pub fn image_jobs(&self) -> Result<Vec<ImageJob>> {
        self.scan_image_jobs(None, |_| true)
    }

    /// Every job with `status`, in (file, version) order.
    pub fn image_jobs_with(&self, status: JobStatus) -> Result<Vec<ImageJob>> {
        self.scan_image_jobs(None, |j| j.status == status)
    }

    fn scan_image_jobs(
        &self,
        file: Option<FileId>,
        keep: impl Fn(&ImageJob) -> bool,
    ) -> Result<Vec<ImageJob>> {
        let t = match self.tx.open_table(IMAGE_JOBS) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(ix("opening image_jobs")(e)),
        };
        let rows = match file {
            Some(f) => t.range((f.0, 0)..=(f.0, u32::MAX)),
            None => t.iter(),
        }
        .map_err(ix("listing image jobs"))?;
        let mut out = Vec::new();
        for entry in rows {
            let (_, v) = entry.map_err(ix("listing image jobs"))?;
            let job: ImageJob = decode_json(v.value(), "image job")?;
            if keep(&job) {
                out.push(job);
            }
        }
        Ok(out)
    }
}

impl WriteTx {
    /// The job of `file` version `version`, as this transaction sees it.
    pub fn image_job(&self, file: FileId, version: u32) -> Result<Option<ImageJob>> {
        let t = self
            .tx
            .open_table(IMAGE_JOBS)
            .map_err(ix("opening image_jobs"))?;
        t.get((file.0, version))
            .map_err(ix("reading an image job"))?
            .map(|v| decode_json(v.value(), "image job"))
            .transpose()
    }

    /// Inserts or replaces a job.
    pub fn put_image_job(&mut self, j: &ImageJob) -> Result<()> {
        let mut t = self
            .tx
            .open_table(IMAGE_JOBS)
            .map_err(ix("opening image_jobs"))?;
        t.insert((j.file.0, j.version), encode(j).as_slice())
            .map_err(ix("writing an image job"))?;
        Ok(())
    }

    /// Removes every job of `file` (it was purged).
    pub fn remove_image_jobs(&mut self, file: FileId) -> Result<()> {
        let mut t = self
            .tx
            .open_table(IMAGE_JOBS)
            .map_err(ix("opening image_jobs"))?;
        t.retain_in((file.0, 0)..=(file.0, u32::MAX), |_, _| false)
            .map_err(ix("removing image jobs"))?;
        Ok(())
    }
}
