//! Probing: what an image is (format, dimensions after orientation, EXIF facts), decided with
//! bounded memory. The header is read first, so a decompression bomb is refused before any
//! pixel buffer exists; decoding then runs under `image::Limits`.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use serde::{Deserialize, Serialize};

use super::{MediaConfig, MediaError};

/// What a probe learned. Stored under `"image"` in the version's metadata; deliberately holds
/// no GPS coordinates, only whether the original carried them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageFacts {
    /// `jpeg`, `png`, `gif` or `webp`.
    pub format: String,
    /// As displayed: after the EXIF orientation is applied.
    pub width: u32,
    pub height: u32,
    /// The EXIF orientation (1–8; 1 when absent).
    pub orientation: u8,
    pub exif: bool,
    pub gps: bool,
    /// EXIF Make and Model, joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera: Option<String>,
    /// EXIF DateTimeOriginal as written by the camera (`YYYY:MM:DD HH:MM:SS`, no zone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_at: Option<String>,
}

/// Reads the facts and decodes the image (first frame of an animation), oriented.
pub fn probe(bytes: &[u8], cfg: &MediaConfig) -> Result<(ImageFacts, DynamicImage), MediaError> {
    let format = check_header(bytes, cfg)?;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(cfg.max_side);
    limits.max_image_height = Some(cfg.max_side);
    limits.max_alloc = Some(cfg.max_alloc);
    reader.limits(limits.clone());
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    // `into_decoder` (unlike `decode`) leaves the pixel buffer itself unchecked.
    limits
        .reserve(decoder.total_bytes())
        .map_err(decode_error)?;
    let orientation = decoder.orientation().map_err(decode_error)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    if format == ImageFormat::Jpeg && !has_jpeg_end(bytes) {
        // zune-jpeg fills a truncated scan with grey instead of failing; a cut-off upload is
        // still an invalid image.
        return Err(MediaError::Invalid(
            "the JPEG data is truncated (no end-of-image marker)".into(),
        ));
    }
    img.apply_orientation(orientation);
    let exif = read_exif(bytes);
    let facts = ImageFacts {
        format: format_name(format).to_string(),
        width: img.width(),
        height: img.height(),
        orientation: orientation_code(orientation),
        exif: exif.is_some(),
        gps: exif.as_ref().is_some_and(|e| {
            e.fields()
                .any(|f| f.ifd_num == exif::In::PRIMARY && is_gps(f.tag))
        }),
        camera: exif.as_ref().and_then(camera),
        taken_at: exif
            .as_ref()
            .and_then(|e| text(e, exif::Tag::DateTimeOriginal)),
    };
    Ok((facts, img))
}

/// The format and the declared dimensions, from the header alone: refuses what the limits
/// would refuse before a pixel is allocated.
pub fn check_header(bytes: &[u8], cfg: &MediaConfig) -> Result<ImageFormat, MediaError> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| MediaError::Invalid(e.to_string()))?;
    let format = match reader.format() {
        Some(f @ (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::Gif | ImageFormat::WebP)) => {
            f
        }
        Some(f) => {
            return Err(MediaError::Invalid(format!(
                "{f:?} images are not supported"
            )));
        }
        None => return Err(MediaError::Invalid("not a recognised image".into())),
    };
    let (w, h) = reader.into_dimensions().map_err(decode_error)?;
    let pixels = u64::from(w) * u64::from(h);
    if w > cfg.max_side || h > cfg.max_side || pixels > cfg.max_pixels {
        return Err(MediaError::TooLarge(format!(
            "{w}x{h} pixels; the limit is {} pixels, {} per side",
            cfg.max_pixels, cfg.max_side
        )));
    }
    if w == 0 || h == 0 {
        return Err(MediaError::Invalid(format!("{w}x{h} pixels")));
    }
    Ok(format)
}

fn decode_error(e: image::ImageError) -> MediaError {
    match e {
        image::ImageError::Limits(l) => MediaError::TooLarge(l.to_string()),
        other => MediaError::Invalid(other.to_string()),
    }
}

fn has_jpeg_end(bytes: &[u8]) -> bool {
    // Some cameras append data after the image; the marker sits near the end either way.
    let tail = &bytes[bytes.len().saturating_sub(64 << 10)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

fn format_name(f: ImageFormat) -> &'static str {
    match f {
        ImageFormat::Jpeg => "jpeg",
        ImageFormat::Png => "png",
        ImageFormat::Gif => "gif",
        ImageFormat::WebP => "webp",
        _ => "other",
    }
}

fn orientation_code(o: image::metadata::Orientation) -> u8 {
    use image::metadata::Orientation::*;
    match o {
        NoTransforms => 1,
        FlipHorizontal => 2,
        Rotate180 => 3,
        FlipVertical => 4,
        Rotate90FlipH => 5,
        Rotate90 => 6,
        Rotate270FlipH => 7,
        Rotate270 => 8,
    }
}

fn read_exif(bytes: &[u8]) -> Option<exif::Exif> {
    exif::Reader::new()
        .read_from_container(&mut Cursor::new(bytes))
        .ok()
}

fn is_gps(tag: exif::Tag) -> bool {
    tag.context() == exif::Context::Gps
}

fn text(e: &exif::Exif, tag: exif::Tag) -> Option<String> {
    let f = e.get_field(tag, exif::In::PRIMARY)?;
    match &f.value {
        exif::Value::Ascii(parts) => {
            let s: Vec<String> = parts
                .iter()
                .map(|p| String::from_utf8_lossy(p).trim().to_string())
                .filter(|p| !p.is_empty())
                .collect();
            (!s.is_empty()).then(|| s.join(" "))
        }
        _ => None,
    }
}

fn camera(e: &exif::Exif) -> Option<String> {
    let make = text(e, exif::Tag::Make);
    let model = text(e, exif::Tag::Model);
    match (make, model) {
        (Some(a), Some(b)) if b.starts_with(&a) => Some(b),
        (Some(a), Some(b)) => Some(format!("{a} {b}")),
        (a, b) => a.or(b),
    }
}

/// The original without its EXIF block, byte for byte otherwise (JPEG APP1 `Exif` segments,
/// PNG `eXIf` chunks). Other formats come back unchanged.
pub fn strip_exif(bytes: &[u8]) -> Vec<u8> {
    if bytes.starts_with(&[0xFF, 0xD8]) {
        strip_jpeg(bytes)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        strip_png(bytes)
    } else {
        bytes.to_vec()
    }
}

fn strip_jpeg(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&bytes[..2]);
    let mut i = 2;
    // Marker segments up to the start of scan; the rest is entropy-coded data, copied as is.
    while i + 4 <= bytes.len() && bytes[i] == 0xFF {
        let marker = bytes[i + 1];
        if marker == 0xDA {
            break;
        }
        let len = usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
        let end = (i + 2 + len).min(bytes.len());
        let exif_app1 = marker == 0xE1 && bytes[i + 4..end].starts_with(b"Exif\0");
        if !exif_app1 {
            out.extend_from_slice(&bytes[i..end]);
        }
        i = end;
    }
    out.extend_from_slice(&bytes[i.min(bytes.len())..]);
    out
}

fn strip_png(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&bytes[..8]);
    let mut i = 8;
    while i + 12 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[i..i + 4].try_into().expect("4 bytes")) as usize;
        let end = (i + 12 + len).min(bytes.len());
        if &bytes[i + 4..i + 8] != b"eXIf" {
            out.extend_from_slice(&bytes[i..end]);
        }
        i = end;
    }
    out.extend_from_slice(&bytes[i.min(bytes.len())..]);
    out
}
