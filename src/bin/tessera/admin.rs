//! Commands on the whole store: init, stats, verify, recover.

use serde_json::json;
use tessera::scan::ScannerStatus;
use tessera::{ChunkParams, Config, Store, VerifyReport};

use crate::ui::{self, BarProgress};
use crate::{CmdResult, Ctx, InitArgs, Status};

/// Tells the user what opening the store found, when it matters.
pub fn warn_open_report(ctx: &Ctx, store: &Store) {
    for (pack, why) in &store.open_report().damaged {
        ctx.ui.warn(format!(
            "pack {pack} is damaged ({why}); run `tessera verify`"
        ));
    }
}

pub fn init(ctx: &Ctx, a: InitArgs) -> CmdResult {
    let d = ChunkParams::default();
    let custom = a.chunk_min.is_some() || a.chunk_avg.is_some() || a.chunk_max.is_some();
    let chunking = ChunkParams {
        min_size: a.chunk_min.unwrap_or(d.min_size),
        avg_size: a.chunk_avg.unwrap_or(d.avg_size),
        max_size: a.chunk_max.unwrap_or(d.max_size),
    };
    let config = Config {
        chunking: custom.then_some(chunking),
        compression_level: a.compression,
        ..ctx.config()
    };
    // The engine checks everything before it creates anything, and refuses an existing store.
    let store = Store::create(&ctx.store_dir, config)?;
    let params = store.chunk_params();
    let level = store.compression_level();
    drop(store);
    if ctx.ui.json {
        ctx.ui.emit_json(&json!({
            "store": ctx.store_dir,
            "chunking": params,
            "compression_level": level,
        }))?;
    } else if !ctx.ui.quiet {
        ctx.ui.print(format!(
            "created a store in {} (chunks {}/{}/{} min/avg/max, zstd level {})",
            ctx.store_dir.display(),
            ui::size(params.min_size.into()),
            ui::size(params.avg_size.into()),
            ui::size(params.max_size.into()),
            level
        ))?;
    }
    Ok(Status::Ok)
}

pub fn stats(ctx: &Ctx) -> CmdResult {
    let store = Store::open_read_only(&ctx.store_dir, ctx.config())?;
    warn_open_report(ctx, &store);
    let s = store.stats()?;
    let physical = s.pack_bytes + s.index_bytes;
    // The scanner's version says which signatures checked the files (SPEC §4).
    let scanner = store.scanner_status();
    if ctx.ui.json {
        let mut v = serde_json::to_value(&s).expect("stats serialise");
        v["physical_bytes"] = physical.into();
        v["scanner"] = serde_json::to_value(&scanner).expect("scanner status serialises");
        ctx.ui.emit_json(&v)?;
        return Ok(Status::Ok);
    }
    let bytes = |n: u64| format!("{} ({n} bytes)", ui::size(n));
    ctx.ui.print(ui::fields(&[
        ("files", s.files.to_string()),
        ("versions", s.versions.to_string()),
        ("logical bytes", bytes(s.logical_bytes)),
        (
            "on disk",
            format!(
                "{}: packs {} + index {}",
                bytes(physical),
                ui::size(s.pack_bytes),
                ui::size(s.index_bytes)
            ),
        ),
        ("unique bytes", bytes(s.unique_bytes)),
        ("stored bytes", bytes(s.stored_bytes)),
        ("chunks", s.chunks.to_string()),
        ("packs", s.packs.to_string()),
        (
            "hot tier",
            format!(
                "{} chunks, {} stored, {} packs ({})",
                s.hot.chunks,
                ui::size(s.hot.stored_bytes),
                s.hot.packs,
                ui::size(s.hot.pack_bytes)
            ),
        ),
        (
            "cold tier",
            match &s.cold_tier {
                None => "none configured".to_string(),
                Some(t) => format!(
                    "{} chunks, {} stored, {} objects ({}) in {t}",
                    s.cold.chunks,
                    ui::size(s.cold.stored_bytes),
                    s.cold.packs,
                    ui::size(s.cold.pack_bytes)
                ),
            },
        ),
        ("dedup ratio", format!("{:.2}x", s.dedup_ratio)),
        ("total ratio", format!("{:.2}x", s.total_ratio)),
        (
            "chunk sizes",
            format!(
                "{} / {} / {} (min/avg/max)",
                ui::size(s.chunking.min_size.into()),
                ui::size(s.chunking.avg_size.into()),
                ui::size(s.chunking.max_size.into())
            ),
        ),
    ]))?;
    if let Some(status) = scanner {
        let line = match status {
            ScannerStatus::Ok { version } => version,
            ScannerStatus::Unavailable { error } => format!("unavailable ({error})"),
        };
        ctx.ui.print(ui::fields(&[("scanner", line)]))?;
    }
    Ok(Status::Ok)
}

fn verify_text(r: &VerifyReport) -> String {
    let mut out = vec![format!(
        "checked {} packs, {} records, {} chunks ({}), {} files, {} versions",
        r.packs,
        r.records,
        r.chunks,
        ui::size(r.bytes_checked),
        r.files,
        r.versions
    )];
    for d in &r.damaged_chunks {
        out.push(format!(
            "damaged chunk {} (pack {} offset {}): {}",
            d.chunk, d.pack, d.offset, d.error
        ));
        for f in &d.files {
            let name = f.key.clone().unwrap_or_else(|| "(no key)".into());
            out.push(format!(
                "  needed by {}/{} v{} (file {})",
                f.owner, name, f.version, f.id
            ));
        }
        if d.files.is_empty() {
            out.push("  needed by no file version".into());
        }
    }
    for g in &r.damaged_regions {
        out.push(format!(
            "damaged region in pack {} at offset {} ({} bytes): {}",
            g.pack, g.offset, g.len, g.error
        ));
    }
    for p in &r.problems {
        out.push(format!("problem: {p}"));
    }
    out.push(if r.is_ok() {
        "ok: no damage found".to_string()
    } else {
        format!(
            "DAMAGED: {} damaged chunk(s), {} damaged region(s), {} other problem(s)",
            r.damaged_chunks.len(),
            r.damaged_regions.len(),
            r.problems.len()
        )
    });
    out.join("\n")
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Also download every cold object and check it: its length and BLAKE3, and every record.
    #[arg(long)]
    cold: bool,
}

pub fn verify(ctx: &Ctx, a: &VerifyArgs) -> CmdResult {
    let store = Store::open_read_only(&ctx.store_dir, ctx.config())?;
    warn_open_report(ctx, &store);
    let report = store.verify(&BarProgress::new(&ctx.ui))?;
    let cold = if a.cold {
        Some(store.verify_cold()?)
    } else {
        None
    };
    let ok = report.is_ok() && cold.as_ref().is_none_or(|c| c.is_ok());
    if ctx.ui.json {
        let mut v = serde_json::to_value(&report).expect("report serialises");
        if let Some(c) = &cold {
            v["cold"] = serde_json::to_value(c).expect("report serialises");
        }
        v["ok"] = ok.into();
        ctx.ui.emit_json(&v)?;
    } else if !(ok && ctx.ui.quiet) {
        ctx.ui.print(verify_text(&report))?;
        if let Some(c) = &cold {
            ctx.ui.print(format!("cold tier: {}", verify_text(c)))?;
        }
    }
    Ok(if ok { Status::Ok } else { Status::Damaged })
}

pub fn recover(ctx: &Ctx) -> CmdResult {
    let report = tessera::recover(&ctx.store_dir, &ctx.config(), &BarProgress::new(&ctx.ui))?;
    if ctx.ui.json {
        ctx.ui.emit_json(&report)?;
        return Ok(Status::Ok);
    }
    if ctx.ui.quiet {
        return Ok(Status::Ok);
    }
    let mut out = vec![format!(
        "rebuilt the index from {} packs ({} records): {} files, {} versions, {} chunks, {} events",
        report.packs, report.records, report.files, report.versions, report.chunks, report.events
    )];
    out.push(format!(
        "accounts: {} users ({} account records replayed)",
        report.users, report.accounts
    ));
    if report.users_kept > 0 {
        out.push(format!(
            "copied {} users from the old index, which had not journaled them (the next \
             read-write open journals them)",
            report.users_kept
        ));
    }
    if report.revoked > 0 {
        out.push(format!(
            "skipped {} records of operations that never committed",
            report.revoked
        ));
    }
    for (pack, bytes) in &report.truncated {
        out.push(format!(
            "cut a torn tail of {} from pack {pack}",
            ui::size(*bytes)
        ));
    }
    for g in &report.damaged_regions {
        out.push(format!(
            "damaged region in pack {} at offset {} ({} bytes): {}",
            g.pack, g.offset, g.len, g.error
        ));
    }
    for (pack, why) in &report.skipped_packs {
        out.push(format!("skipped pack {pack}: {why}"));
    }
    for p in &report.problems {
        out.push(format!("problem: {p}"));
    }
    if report.missing_chunks > 0 {
        out.push(format!(
            "{} chunk references point at no stored chunk",
            report.missing_chunks
        ));
    }
    if let Some(old) = &report.old_index {
        out.push(format!("the previous index was kept as {}", old.display()));
    }
    if !report.damaged_regions.is_empty()
        || !report.problems.is_empty()
        || report.missing_chunks > 0
    {
        out.push("some data is damaged: run `tessera verify` to see which files".into());
    }
    ctx.ui.print(out.join("\n"))?;
    Ok(Status::Ok)
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// Report what would be done; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How long a chunk stays unreferenced before it is swept.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub grace: std::time::Duration,
    /// Garbage share of a pack (0..1) at which it is rewritten.
    #[arg(long, default_value_t = 0.2)]
    pub threshold: f64,
}

#[derive(Debug, clap::Args)]
pub struct PurgeArgs {
    /// Report what would be done; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Purge files deleted at least this long ago.
    #[arg(long, default_value = "30d", value_parser = parse_duration)]
    pub older_than: std::time::Duration,
}

pub fn gc(ctx: &Ctx, args: &GcArgs) -> CmdResult {
    let store = Store::open(&ctx.store_dir, ctx.config())?;
    warn_open_report(ctx, &store);
    let r = store.gc(&tessera::GcOptions {
        grace: args.grace,
        compact_threshold: args.threshold,
        dry_run: args.dry_run,
        ..Default::default()
    })?;
    if ctx.ui.json {
        ctx.ui.emit_json(&r)?;
        return Ok(Status::Ok);
    }
    let would = if r.dry_run { " (dry run)" } else { "" };
    ctx.ui.print(ui::fields(&[
        ("unreferenced chunks", r.candidates.to_string()),
        ("within grace", r.young.to_string()),
        ("in use by puts", r.pinned.to_string()),
        (
            "swept",
            format!(
                "{} chunks, {}{would}",
                r.swept_chunks,
                ui::size(r.swept_bytes)
            ),
        ),
        ("packs compacted", format!("{:?}{would}", r.packs_compacted)),
        ("packs busy", format!("{:?}", r.packs_busy)),
        ("bytes reclaimed", ui::size(r.bytes_reclaimed)),
    ]))?;
    for p in &r.problems {
        ctx.ui.print(format!("problem: {p}"))?;
    }
    Ok(Status::Ok)
}

pub fn purge(ctx: &Ctx, args: &PurgeArgs) -> CmdResult {
    let store = Store::open(&ctx.store_dir, ctx.config())?;
    warn_open_report(ctx, &store);
    let r = store.purge_deleted(args.older_than, args.dry_run)?;
    if ctx.ui.json {
        ctx.ui.emit_json(&r)?;
        return Ok(Status::Ok);
    }
    let would = if r.dry_run { " (dry run)" } else { "" };
    ctx.ui.print(ui::fields(&[
        ("files purged", format!("{}{would}", r.files)),
        ("versions", r.versions.to_string()),
        ("bytes", ui::size(r.bytes)),
        ("skipped", r.skipped.to_string()),
    ]))?;
    Ok(Status::Ok)
}
