//! `tessera report unread|duplicates|storage`: the library's reports, as tables or JSON.

use tessera::{Store, UnreadQuery, Usage};

use crate::ui::{self, Fail};
use crate::{CmdResult, Ctx, Status};

#[derive(Debug, clap::Subcommand)]
pub enum ReportCmd {
    /// Files nobody has read (or written) for at least --days whole days (of every owner
    /// unless --owner is given).
    Unread(UnreadArgs),
    /// Files whose current content is identical, and what dedup saves at file and chunk level.
    Duplicates(DuplicatesArgs),
    /// Files, versions and bytes by category, owner, storage tier and account tier.
    Storage,
}

#[derive(Debug, clap::Args)]
pub struct UnreadArgs {
    /// Not read for at least this many days.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub days: u32,
    /// Files per page (1 to 10000) [default: 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub limit: Option<u64>,
    /// Start after this cursor (printed by the previous page).
    #[arg(long, value_name = "CURSOR")]
    pub after: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct DuplicatesArgs {
    /// Groups listed, those saving the most first (1 to 10000) [default: 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub limit: Option<u64>,
}

pub fn report(ctx: &Ctx, cmd: ReportCmd) -> CmdResult {
    let store = Store::open_read_only(&ctx.store_dir, ctx.config())?;
    crate::admin::warn_open_report(ctx, &store);
    match cmd {
        ReportCmd::Unread(a) => unread(ctx, &store, a),
        ReportCmd::Duplicates(a) => duplicates(ctx, &store, a),
        ReportCmd::Storage => storage(ctx, &store),
    }
}

fn unread(ctx: &Ctx, store: &Store, a: UnreadArgs) -> CmdResult {
    let after =
        match &a.after {
            Some(c) => Some(c.parse::<tessera::FileId>().map_err(|_| {
                Fail::new("invalid_input", format!("--after {c:?} is not a file id"))
            })?),
            None => None,
        };
    let r = store.report_unread(&UnreadQuery {
        days: a.days,
        owner: ctx.owner_explicit.then(|| ctx.owner.clone()),
        after,
        limit: a.limit.map(|n| n as usize),
    })?;
    if ctx.ui.json {
        ctx.ui.emit_json(&r)?;
        return Ok(Status::Ok);
    }
    if let Some(since) = r.reads_since_ms {
        ctx.ui.note(format!(
            "read times were reset by `recover` at {}: no file counts as unread before that",
            ui::time(since)
        ));
    }
    if r.files.is_empty() {
        let s = if r.days == 1 { "" } else { "s" };
        ctx.ui
            .note(format!("no file unread for {} day{s} or more", r.days));
    } else {
        let mut rows = vec![
            ["ID", "SIZE", "LAST READ", "OWNER", "NAME"]
                .map(String::from)
                .to_vec(),
        ];
        for f in &r.files {
            rows.push(vec![
                f.id.to_string(),
                ui::size(f.size),
                ui::time(f.last_read_ms),
                f.owner.clone(),
                f.key.clone().unwrap_or_else(|| f.name.clone()),
            ]);
        }
        ctx.ui.print(ui::table(&rows, &[1]))?;
    }
    if let Some(n) = r.next {
        ctx.ui
            .note(format!("more files: run again with --after {n}"));
    }
    Ok(Status::Ok)
}

fn duplicates(ctx: &Ctx, store: &Store, a: DuplicatesArgs) -> CmdResult {
    let r = store.report_duplicates(a.limit.map(|n| n as usize))?;
    if ctx.ui.json {
        ctx.ui.emit_json(&r)?;
        return Ok(Status::Ok);
    }
    let bytes = |n: u64| format!("{} ({n} bytes)", ui::size(n));
    let mut out = vec![ui::fields(&[
        ("groups of identical files", r.groups_total.to_string()),
        ("duplicate files", r.duplicate_files.to_string()),
        ("saved by file dedup", bytes(r.file_level_saved_bytes)),
        ("logical bytes", bytes(r.logical_bytes)),
        ("unique chunk bytes", bytes(r.unique_bytes)),
        ("saved by chunk dedup", bytes(r.chunk_level_saved_bytes)),
        ("stored bytes", bytes(r.stored_bytes)),
    ])];
    for g in &r.groups {
        out.push(String::new());
        out.push(format!(
            "{} × {}  saves {}  blake3 {}",
            g.count,
            ui::size(g.size),
            ui::size(g.saved_bytes),
            g.blake3
        ));
        let rows: Vec<Vec<String>> = g
            .files
            .iter()
            .map(|f| {
                vec![
                    format!("  {}", f.id),
                    f.owner.clone(),
                    f.key.clone().unwrap_or_else(|| f.name.clone()),
                ]
            })
            .collect();
        out.push(ui::table(&rows, &[]));
        if g.count as usize > g.files.len() {
            out.push(format!(
                "  ... and {} more",
                g.count as usize - g.files.len()
            ));
        }
    }
    ctx.ui.print(out.join("\n"))?;
    Ok(Status::Ok)
}

fn storage(ctx: &Ctx, store: &Store) -> CmdResult {
    let r = store.report_storage()?;
    if ctx.ui.json {
        ctx.ui.emit_json(&r)?;
        return Ok(Status::Ok);
    }
    let header = |first: &str| {
        [first, "FILES", "DELETED", "VERSIONS", "LOGICAL", "CURRENT"]
            .map(String::from)
            .to_vec()
    };
    let row = |name: String, u: &Usage| {
        vec![
            name,
            u.files.to_string(),
            u.deleted_files.to_string(),
            u.versions.to_string(),
            ui::size(u.logical_bytes),
            ui::size(u.current_bytes),
        ]
    };
    let right = [1, 2, 3, 4, 5];
    let mut out = Vec::new();
    let mut section = |first: &str, rows: Vec<Vec<String>>| {
        let mut all = vec![header(first)];
        all.extend(rows);
        all.push(row("total".into(), &r.totals));
        out.push(ui::table(&all, &right));
    };
    section(
        "CATEGORY",
        r.by_category
            .iter()
            .map(|c| row(c.category.clone(), &c.usage))
            .collect(),
    );
    section(
        "OWNER",
        r.by_owner
            .iter()
            .map(|o| {
                let name = match &o.account_tier {
                    Some(t) => format!("{} ({t})", o.owner),
                    None => o.owner.clone(),
                };
                row(name, &o.usage)
            })
            .collect(),
    );
    section(
        "ACCOUNT TIER",
        r.by_account_tier
            .iter()
            .map(|t| row(t.account_tier.clone(), &t.usage))
            .collect(),
    );
    let tiers: Vec<Vec<String>> = r
        .by_tier
        .iter()
        .map(|t| {
            vec![
                t.tier.clone(),
                t.usage.files.to_string(),
                ui::size(t.usage.logical_bytes),
                ui::size(t.unique_bytes),
                ui::size(t.stored_bytes),
            ]
        })
        .collect();
    let mut all = vec![
        ["STORAGE TIER", "FILES", "LOGICAL", "UNIQUE", "STORED"]
            .map(String::from)
            .to_vec(),
    ];
    all.extend(tiers);
    out.push(ui::table(&all, &[1, 2, 3, 4]));
    ctx.ui.print(out.join("\n\n"))?;
    Ok(Status::Ok)
}
