//! Image variants per second on a 12 MP photo (SPEC §3), for `benches/compare/images.sh`,
//! which runs ImageMagick's `convert -thumbnail` on the same file.
//!
//! The photo is `TESSERA_BENCH_IMAGE` (the compare script makes it: a real photo from
//! tests/images upscaled to 4000×3000 by ImageMagick); without it, the same photo upscaled here.
//! Each iteration decodes the JPEG (probe: header check, limits, orientation, EXIF) and then:
//! `all_five` makes the five variants of a default upload; `thumbnails` the three thumbnails;
//! `thumbnail_150` one 150 px WebP (one decode, one variant, like one `convert -thumbnail`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use tessera::media::variants::{self, VariantSpec};
use tessera::media::{Encoding, ImageOptions, MediaConfig, probe};

fn photo() -> Vec<u8> {
    if let Ok(p) = std::env::var("TESSERA_BENCH_IMAGE") {
        return std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"));
    }
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/images/branches.jpg");
    let (_, img) = probe::probe(&std::fs::read(src).unwrap(), &MediaConfig::default()).unwrap();
    let big = variants::resize(&img, 4000, 3000).unwrap();
    tessera::media::optimise::encode(&big, Encoding::Jpeg, 90.0).unwrap()
}

fn bench(c: &mut Criterion) {
    let bytes = photo();
    let cfg = MediaConfig::default();
    let (facts, _) = probe::probe(&bytes, &cfg).unwrap();
    eprintln!(
        "photo: {}x{} {}, {} bytes",
        facts.width,
        facts.height,
        facts.format,
        bytes.len()
    );
    let all = ImageOptions::default();
    let thumbs = ImageOptions {
        optimise: false,
        jpeg: false,
        ..Default::default()
    };
    let one = VariantSpec {
        name: "small",
        max_side: 150,
        encoding: Encoding::Webp,
        watermarked: false,
    };
    let mut g = c.benchmark_group("variants_12mp");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(20));
    g.bench_function("all_five", |b| {
        b.iter(|| {
            let (_, img) = probe::probe(black_box(&bytes), &cfg).unwrap();
            variants::render_all(&img, &all).unwrap()
        })
    });
    g.bench_function("thumbnails", |b| {
        b.iter(|| {
            let (_, img) = probe::probe(black_box(&bytes), &cfg).unwrap();
            variants::render_all(&img, &thumbs).unwrap()
        })
    });
    g.bench_function("thumbnail_150", |b| {
        b.iter(|| {
            let (_, img) = probe::probe(black_box(&bytes), &cfg).unwrap();
            variants::render(&img, &one, &all).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
