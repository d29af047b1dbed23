//! Variants: the sizes an original is served in, and the pixels → bytes of each.

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, RgbImage, RgbaImage};
use serde::{Deserialize, Serialize};

use super::optimise::{self, Encoding};
use super::watermark;
use super::{ImageOptions, MediaError};

/// The thumbnails: name and the side of the square box they fit in.
pub const THUMBNAILS: [(&str, u32); 3] = [("small", 150), ("medium", 300), ("large", 600)];
/// The optimised original's longest side.
pub const OPTIMISED_MAX_SIDE: u32 = 4096;
/// WebP quality of thumbnails and of the optimised original when no size target is set.
pub const WEBP_QUALITY: f32 = 80.0;
/// Quality of the JPEG fallback.
pub const JPEG_QUALITY: u8 = 85;

/// One variant to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VariantSpec {
    pub name: &'static str,
    /// The box the variant fits in (never upscaled).
    pub max_side: u32,
    pub encoding: Encoding,
    /// Thumbnails under this side carry no watermark: it would cover them.
    pub watermarked: bool,
}

/// A made variant.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub mime: &'static str,
    pub extension: &'static str,
    /// The encoder quality used (the optimised original may lower it to meet a size target).
    pub quality: f32,
    /// False when a size target was asked for and the quality floor still missed it.
    pub target_met: bool,
}

/// The variants `options` ask for, in the order they are made.
pub fn plan(options: &ImageOptions) -> Vec<VariantSpec> {
    let mut out = Vec::new();
    if options.thumbnails {
        for (name, side) in THUMBNAILS {
            out.push(VariantSpec {
                name,
                max_side: side,
                encoding: Encoding::Webp,
                watermarked: side >= 600,
            });
        }
    }
    if options.optimise {
        out.push(VariantSpec {
            name: "optimised",
            max_side: OPTIMISED_MAX_SIDE,
            encoding: Encoding::Webp,
            watermarked: true,
        });
    }
    if options.jpeg {
        out.push(VariantSpec {
            name: "jpeg",
            max_side: OPTIMISED_MAX_SIDE,
            encoding: Encoding::Jpeg,
            watermarked: true,
        });
    }
    out
}

/// The size that fits `w`×`h` in a `side`×`side` box, keeping the aspect ratio; never larger
/// than the original.
pub fn fit(w: u32, h: u32, side: u32) -> (u32, u32) {
    if w <= side && h <= side {
        return (w, h);
    }
    let scale = f64::from(side) / f64::from(w.max(h));
    let fw = ((f64::from(w) * scale).round() as u32).clamp(1, side);
    let fh = ((f64::from(h) * scale).round() as u32).clamp(1, side);
    (fw, fh)
}

/// Resizes with fast_image_resize (Lanczos3), keeping alpha only when the image has it.
pub fn resize(img: &DynamicImage, w: u32, h: u32) -> Result<DynamicImage, MediaError> {
    if (w, h) == (img.width(), img.height()) {
        return Ok(img.clone());
    }
    let alpha = img.color().has_alpha();
    let (buf, pixel) = if alpha {
        (img.to_rgba8().into_raw(), PixelType::U8x4)
    } else {
        (img.to_rgb8().into_raw(), PixelType::U8x3)
    };
    let resize_err = |e: &dyn std::fmt::Display| MediaError::Encode(format!("resizing: {e}"));
    let src =
        Image::from_vec_u8(img.width(), img.height(), buf, pixel).map_err(|e| resize_err(&e))?;
    let mut dst = Image::new(w, h, pixel);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(|e| resize_err(&e))?;
    let out = dst.into_vec();
    let img = if alpha {
        RgbaImage::from_raw(w, h, out).map(DynamicImage::ImageRgba8)
    } else {
        RgbImage::from_raw(w, h, out).map(DynamicImage::ImageRgb8)
    };
    img.ok_or_else(|| MediaError::Encode("resizing: buffer size".into()))
}

/// Makes one variant of an oriented image. Re-encoding carries no EXIF (GPS included).
pub fn render(
    img: &DynamicImage,
    spec: &VariantSpec,
    options: &ImageOptions,
) -> Result<Rendered, MediaError> {
    let (w, h) = fit(img.width(), img.height(), spec.max_side);
    let mut sized = resize(img, w, h)?;
    if spec.watermarked
        && let Some(wm) = &options.watermark
    {
        sized = watermark::apply(&sized, wm);
    }
    let target = (spec.name == "optimised")
        .then_some(options.max_kb)
        .flatten();
    let (bytes, quality, target_met) = match target {
        Some(kb) => {
            let o = optimise::to_size(&sized, spec.encoding, kb * 1024, optimise::QUALITY_FLOOR)?;
            (o.bytes, o.quality, o.met)
        }
        None => {
            let q = match spec.encoding {
                Encoding::Webp => WEBP_QUALITY,
                Encoding::Jpeg => f32::from(JPEG_QUALITY),
            };
            (optimise::encode(&sized, spec.encoding, q)?, q, true)
        }
    };
    Ok(Rendered {
        name: spec.name,
        bytes,
        width: w,
        height: h,
        mime: spec.encoding.mime(),
        extension: spec.encoding.extension(),
        quality,
        target_met,
    })
}

/// Every variant `options` ask for.
pub fn render_all(img: &DynamicImage, options: &ImageOptions) -> Result<Vec<Rendered>, MediaError> {
    plan(options)
        .iter()
        .map(|s| render(img, s, options))
        .collect()
}
