//! `tessera scan`: the virus scanner's status, and rescans of stored files.

use serde_json::json;
use tessera::{RescanOptions, Store};

use crate::admin::warn_open_report;
use crate::ui;
use crate::{CmdResult, Ctx, Status};

#[derive(Debug, clap::Args)]
pub struct ScanArgs {
    /// Stream stored versions to the scanner again (after a signature update): new hits are
    /// quarantined, versions stored unscanned get their verdict. Without it, print the
    /// scanner's version.
    #[arg(long)]
    pub rescan: bool,
    /// Scan and report; record nothing.
    #[arg(long, requires = "rescan")]
    pub dry_run: bool,
    /// Every category, not only those `[scan] categories` names.
    #[arg(long, requires = "rescan")]
    pub all_categories: bool,
    /// Scan infected versions too; one now found clean is released.
    #[arg(long, requires = "rescan")]
    pub recheck_infected: bool,
}

pub fn scan(ctx: &Ctx, args: &ScanArgs) -> CmdResult {
    let config = ctx.config();
    let Some(scan) = config.scan.clone() else {
        return Err(tessera::Error::ScanUnavailable(
            "no virus scanner is configured: add [scan] clamd = \"tcp://HOST:PORT\" (or \
             unix:/PATH) to the configuration file"
                .into(),
        )
        .into());
    };
    if !args.rescan {
        let version = scan
            .scanner
            .version()
            .map_err(|e| tessera::Error::ScanUnavailable(e.to_string()))?;
        if ctx.ui.json {
            ctx.ui
                .emit_json(&json!({ "scanner": { "status": "ok", "version": version } }))?;
        } else {
            ctx.ui.print(version)?;
        }
        return Ok(Status::Ok);
    }
    let store = if args.dry_run {
        Store::open_read_only(&ctx.store_dir, config)?
    } else {
        Store::open(&ctx.store_dir, config)?
    };
    warn_open_report(ctx, &store);
    let r = store.rescan(&RescanOptions {
        dry_run: args.dry_run,
        all_categories: args.all_categories,
        recheck_infected: args.recheck_infected,
    })?;
    if ctx.ui.json {
        ctx.ui.emit_json(&r)?;
        return Ok(Status::Ok);
    }
    let would = if r.dry_run { " (dry run)" } else { "" };
    ctx.ui.print(ui::fields(&[
        (
            "scanned",
            format!("{} versions, {}", r.scanned, ui::size(r.bytes)),
        ),
        ("newly infected", format!("{}{would}", r.infected.len())),
        ("verdicts cleared", format!("{}{would}", r.cleared.len())),
        ("too large to scan", r.too_large.len().to_string()),
        ("skipped", r.skipped.to_string()),
    ]))?;
    for c in &r.infected {
        if let tessera::scan::ScanStamp::Infected { signature } = &c.after {
            ctx.ui.print(format!(
                "infected: {} v{} ({}, owner {}): {signature}{}",
                c.file,
                c.version,
                c.name,
                c.owner,
                if c.current {
                    ", quarantined"
                } else {
                    ", an older version"
                }
            ))?;
        }
    }
    for (file, version) in &r.too_large {
        ctx.ui.print(format!(
            "not scanned (over the scanner's limit): {file} v{version}"
        ))?;
    }
    Ok(Status::Ok)
}
