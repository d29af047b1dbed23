//! `tessera image probe|variants|optimize`.

use std::path::PathBuf;

use tessera::media::{Encoding, optimise, probe};
use tessera::{FileId, Store};

use crate::ui::{self, Fail};
use crate::{CmdResult, Ctx, Status};

#[derive(Debug, clap::Subcommand)]
pub enum ImageCmd {
    /// Format, dimensions (after orientation), orientation and EXIF facts of an image file,
    /// or of a stored file given by id.
    Probe {
        /// A path, or a file id.
        target: String,
    },
    /// Processing status and variants of a stored image.
    Variants {
        id: String,
        /// Run the image's pending job now, in this process (the store must not be in use).
        #[arg(long)]
        wait: bool,
    },
    /// Encode an image in at most --max-kb KiB, lowering the quality step by step to a floor.
    Optimize {
        input: PathBuf,
        #[arg(long, value_name = "N")]
        max_kb: u64,
        /// webp or jpeg.
        #[arg(long, default_value = "webp")]
        format: String,
        #[arg(long, short)]
        output: PathBuf,
    },
}

pub fn run(ctx: &Ctx, cmd: ImageCmd) -> CmdResult {
    let media = ctx.config().media;
    match cmd {
        ImageCmd::Probe { target } => {
            let bytes = match std::fs::read(&target) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let id = parse_id(&target)?;
                    let store = Store::open_read_only(&ctx.store_dir, ctx.config())?;
                    store.read_all(id)?
                }
                Err(e) => return Err(Fail::io(format!("reading {target}"), e)),
            };
            let (facts, _) = probe::probe(&bytes, &media).map_err(tessera::Error::from)?;
            if ctx.ui.json {
                ctx.ui.emit_json(&facts)?;
            } else {
                ctx.ui.print(ui::fields(&[
                    ("format", facts.format.clone()),
                    ("size", format!("{}x{}", facts.width, facts.height)),
                    ("orientation", facts.orientation.to_string()),
                    ("exif", facts.exif.to_string()),
                    ("gps", facts.gps.to_string()),
                    ("camera", facts.camera.clone().unwrap_or_default()),
                    ("taken at", facts.taken_at.clone().unwrap_or_default()),
                ]))?;
            }
        }
        ImageCmd::Variants { id, wait } => {
            let id = parse_id(&id)?;
            let status = if wait {
                let store = Store::open(&ctx.store_dir, ctx.config())?;
                let version = store.stat(id)?.version;
                store.run_image_job(id, version)?
            } else {
                Store::open_read_only(&ctx.store_dir, ctx.config())?.image_status(id)?
            };
            if ctx.ui.json {
                ctx.ui.emit_json(&status)?;
            } else {
                let mut text = format!(
                    "{} v{}: {:?}, {} attempt(s)",
                    status.file, status.version, status.status, status.attempts
                );
                if let Some(e) = &status.error {
                    text.push_str(&format!("; last error: {e}"));
                }
                let mut rows = vec![
                    ["NAME", "SIZE", "PIXELS", "TYPE", "FILE"]
                        .map(String::from)
                        .to_vec(),
                ];
                for v in &status.variants {
                    rows.push(vec![
                        v.name.clone(),
                        ui::size(v.size),
                        format!("{}x{}", v.width, v.height),
                        v.mime.clone(),
                        v.file.to_string(),
                    ]);
                }
                ctx.ui
                    .print(format!("{text}\n{}", ui::table(&rows, &[1])))?;
            }
        }
        ImageCmd::Optimize {
            input,
            max_kb,
            format,
            output,
        } => {
            let encoding = match format.as_str() {
                "webp" => Encoding::Webp,
                "jpeg" | "jpg" => Encoding::Jpeg,
                other => {
                    return Err(Fail::new(
                        "invalid_input",
                        format!("--format {other:?}: webp or jpeg"),
                    ));
                }
            };
            let bytes = std::fs::read(&input)
                .map_err(|e| Fail::io(format!("reading {}", input.display()), e))?;
            let (_, img) = probe::probe(&bytes, &media).map_err(tessera::Error::from)?;
            let o = optimise::to_size(&img, encoding, max_kb * 1024, optimise::QUALITY_FLOOR)
                .map_err(tessera::Error::from)?;
            std::fs::write(&output, &o.bytes)
                .map_err(|e| Fail::io(format!("writing {}", output.display()), e))?;
            let report = serde_json::json!({
                "output": output,
                "bytes": o.bytes.len(),
                "quality": o.quality,
                "target_met": o.met,
            });
            if ctx.ui.json {
                ctx.ui.emit_json(&report)?;
            } else {
                ctx.ui.print(format!(
                    "{}: {} at quality {}{}",
                    output.display(),
                    ui::size(o.bytes.len() as u64),
                    o.quality,
                    if o.met {
                        ""
                    } else {
                        " (over the target: quality floor reached)"
                    }
                ))?;
            }
        }
    }
    Ok(Status::Ok)
}

fn parse_id(raw: &str) -> Result<FileId, Fail> {
    raw.parse().map_err(|_| {
        Fail::new(
            "invalid_input",
            format!("{raw:?} is neither a file nor a file id"),
        )
    })
}
