//! `tier move`: moves files between the hot tier (local packs) and the cold tier by hand, or
//! applies the lifecycle rules as the scheduler's `cold_move` job does; and `debug-tier-move`,
//! the workload of the tier crash test.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand, ValueEnum};
use tessera::tier::LocalDirTier;
use tessera::{Store, TierMoveOptions, TierMoveReport};

use crate::admin::warn_open_report;
use crate::files::resolve;
use crate::ui;
use crate::{CmdResult, Ctx, Status};

#[derive(Debug, Subcommand)]
pub enum TierCmd {
    /// Move files to the cold tier or back. A chunk goes cold only when every file version
    /// that references it is part of the move.
    Move(MoveArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Direction {
    Cold,
    Hot,
}

#[derive(Debug, Args)]
pub struct MoveArgs {
    /// Where the chunks go.
    #[arg(long, value_enum)]
    to: Direction,
    /// A file (id or key) to move, all its versions; repeatable.
    #[arg(long = "file", value_name = "ID|KEY")]
    files: Vec<String>,
    /// Every file of this category.
    #[arg(long, value_name = "C")]
    category: Option<String>,
    /// The files the lifecycle rules make cold-eligible (not read for their category's age).
    #[arg(long)]
    rules: bool,
    /// Every file (to cold), or every cold chunk (to hot).
    #[arg(long)]
    all: bool,
    /// Storage class of the objects written (to cold).
    #[arg(long, value_name = "CLASS")]
    storage_class: Option<String>,
    /// Report what would move; change nothing.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(ctx: &Ctx, cmd: TierCmd) -> CmdResult {
    match cmd {
        TierCmd::Move(a) => move_files(ctx, a),
    }
}

fn move_files(ctx: &Ctx, a: MoveArgs) -> CmdResult {
    let store = Store::open(&ctx.store_dir, ctx.config())?;
    warn_open_report(ctx, &store);
    let mut files = Vec::new();
    for f in &a.files {
        files.push(resolve(&store, &ctx.owner, f)?);
    }
    let opts = TierMoveOptions {
        files,
        category: a.category,
        rules: a.rules,
        all: a.all,
        storage_class: a.storage_class,
        dry_run: a.dry_run,
    };
    let report = match a.to {
        Direction::Cold => store.move_to_cold(&opts)?,
        Direction::Hot => store.move_to_hot(&opts)?,
    };
    if ctx.ui.json {
        ctx.ui.emit_json(&report)?;
    } else if !ctx.ui.quiet {
        ctx.ui.print(text(&report, a.to))?;
    }
    Ok(Status::Ok)
}

fn text(r: &TierMoveReport, to: Direction) -> String {
    let verb = match (r.dry_run, to) {
        (true, Direction::Cold) => "would move to cold",
        (false, Direction::Cold) => "moved to cold",
        (true, Direction::Hot) => "would move to hot",
        (false, Direction::Hot) => "moved to hot",
    };
    let mut out = vec![format!(
        "{verb}: {} chunks ({}) of {} files",
        r.chunks,
        ui::size(r.bytes),
        r.files
    )];
    if r.already > 0 {
        out.push(format!("{} chunks were there already", r.already));
    }
    if r.shared > 0 {
        out.push(format!(
            "{} chunks stay: files outside the move share them",
            r.shared
        ));
    }
    if !r.packs_written.is_empty() {
        out.push(format!("{} cold packs written", r.packs_written.len()));
    }
    if !r.packs_deleted.is_empty() {
        out.push(format!(
            "{} cold packs emptied and deleted",
            r.packs_deleted.len()
        ));
    }
    out.join("\n")
}

/// `debug-tier-move`: moves everything to one tier on a local-directory cold tier, with a
/// chosen pack size, and exits. Prints `START` once the store is open. The crash test kills
/// it at random moments.
#[derive(Debug, Args)]
pub struct DebugMoveArgs {
    #[arg(long, value_enum)]
    to: Direction,
    /// Target size of cold packs (and local packs).
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    pack_size: u64,
}

pub fn debug_move(ctx: &Ctx, a: DebugMoveArgs) -> CmdResult {
    let mut config = ctx.config();
    if config.cold_tier.is_none() {
        return Err(tessera::Error::InvalidInput("debug-tier-move needs --cold-dir".into()).into());
    }
    config.pack_target_size = a.pack_size;
    let store = Store::open(&ctx.store_dir, config)?;
    // The harness starts its random delay here, so kills land inside the move, not the open.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "START");
        let _ = out.flush();
    }
    let opts = TierMoveOptions {
        all: true,
        ..Default::default()
    };
    match a.to {
        Direction::Cold => store.move_to_cold(&opts)?,
        Direction::Hot => store.move_to_hot(&opts)?,
    };
    Ok(Status::Ok)
}

/// The cold tier `--cold-dir` names, if given.
pub fn cold_dir_tier(dir: &Option<PathBuf>) -> Option<Arc<dyn tessera::tier::ColdTier>> {
    let dir = dir.as_ref()?;
    match LocalDirTier::new(dir) {
        Ok(t) => Some(Arc::new(t)),
        Err(e) => crate::usage_error(format!("--cold-dir {}: {e}", dir.display())),
    }
}
