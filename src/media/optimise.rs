//! Encoding, and "optimise to at most N KB": lower the quality step by step until the output
//! fits or the floor is reached.

use image::DynamicImage;
use image::codecs::jpeg::JpegEncoder;
use serde::{Deserialize, Serialize};

use super::MediaError;

/// Lowest quality the size search goes to: below it artefacts dominate.
pub const QUALITY_FLOOR: f32 = 30.0;
/// Where the size search starts, and its step.
pub const QUALITY_START: f32 = 90.0;
pub const QUALITY_STEP: f32 = 10.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Lossy WebP through libwebp (`image`'s own WebP encoder is lossless only).
    Webp,
    Jpeg,
}

impl Encoding {
    pub fn mime(self) -> &'static str {
        match self {
            Encoding::Webp => "image/webp",
            Encoding::Jpeg => "image/jpeg",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Encoding::Webp => "webp",
            Encoding::Jpeg => "jpg",
        }
    }
}

/// The result of [`to_size`].
#[derive(Debug, Clone)]
pub struct Optimised {
    pub bytes: Vec<u8>,
    /// The quality of `bytes`.
    pub quality: f32,
    /// `bytes` is at most the target; false means even the floor quality was too large (the
    /// floor's output is returned).
    pub met: bool,
}

/// Encodes at `quality` (0–100).
pub fn encode(img: &DynamicImage, encoding: Encoding, quality: f32) -> Result<Vec<u8>, MediaError> {
    let (w, h) = (img.width(), img.height());
    match encoding {
        Encoding::Webp => {
            let memory = if img.color().has_alpha() {
                let rgba = img.to_rgba8();
                webp::Encoder::from_rgba(&rgba, w, h).encode_simple(false, quality)
            } else {
                let rgb = img.to_rgb8();
                webp::Encoder::from_rgb(&rgb, w, h).encode_simple(false, quality)
            };
            memory
                .map(|m| m.to_vec())
                .map_err(|e| MediaError::Encode(format!("WebP: {e:?}")))
        }
        Encoding::Jpeg => {
            let mut out = Vec::new();
            let q = quality.clamp(1.0, 100.0) as u8;
            JpegEncoder::new_with_quality(&mut out, q)
                .encode_image(&DynamicImage::ImageRgb8(img.to_rgb8()))
                .map_err(|e| MediaError::Encode(format!("JPEG: {e}")))?;
            Ok(out)
        }
    }
}

/// The highest quality on the ladder (start, start − step, …, floor) whose output fits in
/// `max_bytes`.
pub fn to_size(
    img: &DynamicImage,
    encoding: Encoding,
    max_bytes: u64,
    floor: f32,
) -> Result<Optimised, MediaError> {
    let mut quality = QUALITY_START;
    loop {
        let bytes = encode(img, encoding, quality)?;
        let met = bytes.len() as u64 <= max_bytes;
        if met || quality <= floor {
            return Ok(Optimised {
                bytes,
                quality,
                met,
            });
        }
        quality = (quality - QUALITY_STEP).max(floor);
    }
}
