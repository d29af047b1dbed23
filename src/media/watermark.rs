//! Text watermark, drawn with the DejaVu Sans font the crate ships (src/media/font, with its
//! licence).

use ab_glyph::{FontRef, PxScale};
use image::{DynamicImage, Rgba, RgbaImage};
use serde::{Deserialize, Serialize};

static FONT: &[u8] = include_bytes!("font/DejaVuSans.ttf");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Position {
    TopLeft,
    TopRight,
    BottomLeft,
    #[default]
    BottomRight,
    Center,
}

impl std::str::FromStr for Position {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
            format!(
                "unknown position {s:?} (top-left, top-right, bottom-left, bottom-right, center)"
            )
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Watermark {
    pub text: String,
    #[serde(default)]
    pub position: Position,
    /// 0 (invisible) to 1 (opaque).
    #[serde(default = "default_opacity")]
    pub opacity: f32,
}

fn default_opacity() -> f32 {
    0.5
}

impl Default for Watermark {
    fn default() -> Self {
        Watermark {
            text: String::new(),
            position: Position::default(),
            opacity: default_opacity(),
        }
    }
}

/// The font size for an image: a twentieth of its shorter side, at least 10 px, so the mark
/// keeps its proportion across variants.
pub fn font_px(w: u32, h: u32) -> f32 {
    (w.min(h) as f32 / 20.0).max(10.0)
}

/// The image with the watermark drawn on it.
pub fn apply(img: &DynamicImage, wm: &Watermark) -> DynamicImage {
    let font = FontRef::try_from_slice(FONT).expect("the shipped font parses");
    let mut canvas: RgbaImage = img.to_rgba8();
    let (w, h) = canvas.dimensions();
    let scale = PxScale::from(font_px(w, h));
    let (tw, th) = imageproc::drawing::text_size(scale, &font, &wm.text);
    let margin = (scale.y / 2.0) as i64;
    let (tw, th, w64, h64) = (i64::from(tw), i64::from(th), i64::from(w), i64::from(h));
    let (x, y) = match wm.position {
        Position::TopLeft => (margin, margin),
        Position::TopRight => (w64 - tw - margin, margin),
        Position::BottomLeft => (margin, h64 - th - margin),
        Position::BottomRight => (w64 - tw - margin, h64 - th - margin),
        Position::Center => ((w64 - tw) / 2, (h64 - th) / 2),
    };
    // draw_text_mut blends by glyph coverage only, so the text is drawn opaque on a copy and
    // the copy mixed back into the original by the opacity, over the text's box.
    let mut marked = canvas.clone();
    imageproc::drawing::draw_text_mut(
        &mut marked,
        Rgba([255, 255, 255, 255]),
        x as i32,
        y as i32,
        scale,
        &font,
        &wm.text,
    );
    let opacity = wm.opacity.clamp(0.0, 1.0);
    let (x0, y0) = (x.clamp(0, w64) as u32, y.clamp(0, h64) as u32);
    // Glyphs may reach a little past the measured box (descenders, side bearings).
    let (x1, y1) = (
        (x + tw + margin).clamp(0, w64) as u32,
        (y + th + margin).clamp(0, h64) as u32,
    );
    for py in y0..y1 {
        for px in x0..x1 {
            let m = marked.get_pixel(px, py).0;
            let p = canvas.get_pixel_mut(px, py);
            for (dst, src) in p.0.iter_mut().zip(m).take(3) {
                let (a, b) = (f32::from(*dst), f32::from(src));
                *dst = (a + (b - a) * opacity).round() as u8;
            }
        }
    }
    if img.color().has_alpha() {
        DynamicImage::ImageRgba8(canvas)
    } else {
        DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(canvas).to_rgb8())
    }
}
