//! Lifecycle jobs by hand: `retention`, `expire` and `quarantine purge`. Without rule options
//! they apply the configuration's `[maintenance]` rules, exactly as the scheduler in `serve`
//! does; every one takes `--dry-run` and `--json`.

use std::time::Duration;

use tessera::{Error, ExpiryRules, PurgeReport, RetentionRule, RetentionRules, Store};

use crate::admin::warn_open_report;
use crate::ui;
use crate::{CmdResult, Ctx, Status};

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

#[derive(Debug, clap::Args)]
pub struct RetentionArgs {
    /// Report what would be done; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Apply a rule to this category only, instead of the configuration's rules (needs
    /// --keep-last and/or --keep-within).
    #[arg(long, value_name = "C", requires = "rule")]
    pub category: Option<String>,
    /// Keep the newest N versions (the current one included).
    #[arg(long, value_name = "N", group = "rule", requires = "category",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_last: Option<u32>,
    /// Keep versions younger than this (e.g. 30d).
    #[arg(long, value_name = "AGE", group = "rule", requires = "category", value_parser = parse_duration)]
    pub keep_within: Option<Duration>,
}

#[derive(Debug, clap::Args)]
pub struct ExpireArgs {
    /// Report what would be done; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Expire files of this category only, instead of the configuration's rules (needs
    /// --older-than).
    #[arg(long, value_name = "C", requires = "older_than")]
    pub category: Option<String>,
    /// Soft-delete files whose current content is at least this old (e.g. 730d).
    #[arg(long, value_name = "AGE", requires = "category", value_parser = parse_duration)]
    pub older_than: Option<Duration>,
}

#[derive(Debug, clap::Args)]
pub struct QuarantinePurgeArgs {
    /// Report what would be done; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Purge files quarantined at least this long ago [default:
    /// maintenance.quarantine_purge_after, 7d].
    #[arg(long, value_name = "AGE", value_parser = parse_duration)]
    pub older_than: Option<Duration>,
}

/// Refuses a category the validation policy does not have.
fn known_category(ctx: &Ctx, c: &str) -> Result<(), Error> {
    let policy = ctx.settings.policy();
    if policy.categories.contains_key(c) {
        return Ok(());
    }
    Err(Error::InvalidInput(format!(
        "{c:?} is not a category (known: {})",
        policy
            .categories
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

pub fn retention(ctx: &Ctx, a: &RetentionArgs) -> CmdResult {
    let rules: RetentionRules = match &a.category {
        Some(c) => {
            known_category(ctx, c)?;
            [(
                c.clone(),
                RetentionRule {
                    keep_last: a.keep_last,
                    keep_within: a.keep_within,
                },
            )]
            .into()
        }
        None => ctx.settings.maintenance.retention_rules(),
    };
    if rules.is_empty() && !ctx.ui.json {
        ctx.ui.warn(
            "no retention rules: give --category with --keep-last/--keep-within, or add \
             [maintenance.retention.<category>] to the configuration",
        );
    }
    let store = Store::open(&ctx.store_dir, ctx.config())?;
    warn_open_report(ctx, &store);
    let r = store.apply_retention(&rules, a.dry_run)?;
    print_report(ctx, &r, "files trimmed", "versions removed")
}

pub fn expire(ctx: &Ctx, a: &ExpireArgs) -> CmdResult {
    let rules: ExpiryRules = match (&a.category, a.older_than) {
        (Some(c), Some(age)) => {
            known_category(ctx, c)?;
            [(c.clone(), age)].into()
        }
        _ => ctx
            .settings
            .maintenance
            .expiry_rules(&ctx.settings.policy()),
    };
    let store = Store::open(&ctx.store_dir, ctx.config())?;
    warn_open_report(ctx, &store);
    let r = store.expire(&rules, a.dry_run)?;
    print_report(ctx, &r, "files expired (deleted)", "their versions")
}

pub fn quarantine_purge(ctx: &Ctx, a: &QuarantinePurgeArgs) -> CmdResult {
    let older_than = a
        .older_than
        .unwrap_or(ctx.settings.maintenance.quarantine_purge_after);
    let store = Store::open(&ctx.store_dir, ctx.config())?;
    warn_open_report(ctx, &store);
    let r = store.purge_quarantined(older_than, a.dry_run)?;
    print_report(ctx, &r, "files purged", "versions")
}

fn print_report(ctx: &Ctx, r: &PurgeReport, files: &str, versions: &str) -> CmdResult {
    if ctx.ui.json {
        ctx.ui.emit_json(r)?;
        return Ok(Status::Ok);
    }
    let would = if r.dry_run { " (dry run)" } else { "" };
    ctx.ui.print(ui::fields(&[
        (files, format!("{}{would}", r.files)),
        (versions, r.versions.to_string()),
        ("bytes", ui::size(r.bytes)),
        ("skipped (changed meanwhile)", r.skipped.to_string()),
    ]))?;
    Ok(Status::Ok)
}
