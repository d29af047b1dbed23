//! Images (feature `media`): probing with bounded memory, variants made in the background,
//! optimisation to a size, watermarks. docs/design.md "Images" has the decisions.
//!
//! The upload path is [`Store::put_image`]: the content is decoded under limits before the
//! commit (a bomb or a corrupt image is refused and nothing is stored), the facts go into the
//! version's metadata under `"image"`, and the commit that stores the version also writes its
//! job row. Workers ([`Store::start_image_workers`]) make the variants: ordinary stored files
//! of the same owner at `_variants/<file>/v<version>/<name>.<ext>`, linked both ways.

pub mod jobs;
pub mod optimise;
pub mod probe;
pub mod variants;
pub mod watermark;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::{Inspect, PutOptions, PutReport, Store};

pub use jobs::{ImageStatus, ImageWorkers};
pub use optimise::{Encoding, Optimised};
pub use probe::ImageFacts;
pub use variants::Rendered;
pub use watermark::{Position, Watermark};

/// Limits and the worker pool. Also the `[media]` section of the configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// Most pixels an image may declare (default 40 MP); checked from the header.
    pub max_pixels: u64,
    /// Longest side an image may declare (default 20,000 px).
    pub max_side: u32,
    /// Most bytes the decoder may allocate for one image (default 512 MiB).
    pub max_alloc: u64,
    /// Largest image file taken into memory to probe (default 50 MB; the category's own
    /// limit usually binds first).
    pub max_bytes: u64,
    /// Store originals without their EXIF block (JPEG and PNG; GPS included). Default false:
    /// the original stays as uploaded; variants never carry EXIF either way.
    pub strip_original_exif: bool,
    /// Variant workers (default 2).
    pub workers: usize,
    /// Runs of a job before it is marked failed (default 3).
    pub max_attempts: u32,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            max_pixels: 40_000_000,
            max_side: 20_000,
            max_alloc: 512 << 20,
            max_bytes: 50_000_000,
            strip_original_exif: false,
            workers: 2,
            max_attempts: 3,
        }
    }
}

/// What an image upload asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageOptions {
    /// small 150, medium 300, large 600 (WebP).
    pub thumbnails: bool,
    /// The optimised original: longest side at most 4096, lossy WebP.
    pub optimise: bool,
    /// The JPEG fallback, same size as the optimised original.
    pub jpeg: bool,
    /// Optimise the optimised original to at most this many KiB (quality lowered step by step
    /// to a floor).
    pub max_kb: Option<u64>,
    /// Drawn on the large thumbnail, the optimised original and the JPEG fallback.
    pub watermark: Option<Watermark>,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            thumbnails: true,
            optimise: true,
            jpeg: true,
            max_kb: None,
            watermark: None,
        }
    }
}

/// The image layer's errors. Invalid and too-large images are the uploader's fault (422).
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("invalid image: {0}")]
    Invalid(String),
    #[error("image too large: {0}")]
    TooLarge(String),
    #[error("encoding a variant: {0}")]
    Encode(String),
}

impl From<MediaError> for Error {
    fn from(e: MediaError) -> Error {
        let code = match &e {
            MediaError::Invalid(_) => "image_invalid",
            MediaError::TooLarge(_) => "image_too_large",
            MediaError::Encode(_) => "image_encode_failed",
        };
        Error::Rejected {
            code,
            detail: e.to_string(),
        }
    }
}

/// The image upload's look at the content before it commits.
struct Intake<'a> {
    config: &'a MediaConfig,
    options: &'a ImageOptions,
}

impl Inspect for Intake<'_> {
    fn max_bytes(&self) -> u64 {
        self.config.max_bytes
    }

    fn inspect(
        &self,
        content: &mut Vec<u8>,
        metadata: &mut serde_json::Value,
    ) -> Result<Option<serde_json::Value>> {
        let (facts, _) = probe::probe(content, self.config)?;
        if self.config.strip_original_exif {
            *content = probe::strip_exif(content);
        }
        if metadata.is_null() {
            *metadata = serde_json::json!({});
        }
        let Some(map) = metadata.as_object_mut() else {
            return Err(Error::InvalidInput(
                "the metadata of an image must be a JSON object".into(),
            ));
        };
        map.insert(
            "image".into(),
            serde_json::to_value(&facts).expect("facts serialise"),
        );
        Ok(Some(
            serde_json::to_value(self.options).expect("options serialise"),
        ))
    }
}

impl crate::batch::Batch<'_> {
    /// Stages an image put, as [`Store::put_image`] stores one; its variants are scheduled
    /// once the batch commits.
    pub fn put_image(
        &mut self,
        source: impl std::io::Read,
        opts: &PutOptions,
        options: &ImageOptions,
    ) -> bool {
        let store = self.store();
        let intake = Intake {
            config: &store.inner.config.media,
            options,
        };
        self.stage(source, opts, Some(&intake))
    }
}

impl Store {
    /// Stores an image and schedules its variants. Like [`Store::put`], plus: the image is
    /// decoded under the `media` limits before anything commits (a bomb, a truncated or
    /// corrupt image → [`Error::Rejected`] `image_too_large` / `image_invalid`); its facts
    /// are stored under `"image"` in the metadata; the commit writes a pending job, which
    /// running workers pick up at once (or on their next start).
    pub fn put_image(
        &self,
        source: impl std::io::Read,
        opts: &PutOptions,
        options: &ImageOptions,
    ) -> Result<PutReport> {
        let intake = Intake {
            config: &self.inner.config.media,
            options,
        };
        let report = self.put_inspected(source, opts, crate::quota::Backing::Own, Some(&intake))?;
        self.inner
            .media
            .notify((report.file.id, report.file.version));
        Ok(report)
    }

    /// What an image is, without storing it.
    pub fn probe_image(&self, bytes: &[u8]) -> Result<ImageFacts> {
        Ok(probe::probe(bytes, &self.inner.config.media)?.0)
    }

    /// Encodes `bytes` (any supported image, oriented) as `encoding` in at most `max_kb` KiB,
    /// lowering the quality step by step down to [`optimise::QUALITY_FLOOR`]; the result says
    /// the quality used and whether the target was met.
    pub fn optimise_image(
        &self,
        bytes: &[u8],
        encoding: Encoding,
        max_kb: u64,
    ) -> Result<Optimised> {
        let (_, img) = probe::probe(bytes, &self.inner.config.media)?;
        Ok(optimise::to_size(
            &img,
            encoding,
            max_kb * 1024,
            optimise::QUALITY_FLOOR,
        )?)
    }
}
