//! `link revoke` and `visibility`: the sharing commands (the engine side is `Store::revoke_links`
//! and `Store::set_public`; links themselves are minted by the HTTP service).

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use tessera::Store;

use crate::files::resolve;
use crate::{CmdResult, Ctx, Status, Target, admin};

#[derive(Debug, Subcommand)]
pub enum LinkCmd {
    /// Revoke every signed link of a file minted so far (journaled: survives `recover`).
    Revoke(Target),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Visibility {
    Public,
    Private,
}

#[derive(Debug, Args)]
pub struct VisibilityArgs {
    /// File id or key.
    #[arg(value_name = "ID|KEY")]
    target: String,
    /// What the current version becomes. Older versions keep theirs; private hides every
    /// version from others and revokes the file's links.
    #[arg(value_enum)]
    visibility: Visibility,
}

pub fn link(ctx: &Ctx, c: LinkCmd) -> CmdResult {
    let LinkCmd::Revoke(a) = c;
    let store = Store::open(&ctx.store_dir, ctx.config())?;
    admin::warn_open_report(ctx, &store);
    let id = resolve(&store, &ctx.owner, &a.target)?;
    let info = store.revoke_links(id)?;
    if ctx.ui.json {
        ctx.ui
            .emit_json(&json!({ "id": info.id, "links_revoked": true }))?;
    } else if !ctx.ui.quiet {
        ctx.ui.print(format!("revoked every link of {}", info.id))?;
    }
    Ok(Status::Ok)
}

pub fn visibility(ctx: &Ctx, a: VisibilityArgs) -> CmdResult {
    let store = Store::open(&ctx.store_dir, ctx.config())?;
    admin::warn_open_report(ctx, &store);
    let id = resolve(&store, &ctx.owner, &a.target)?;
    let public = matches!(a.visibility, Visibility::Public);
    let info = store.set_public(id, public)?;
    if ctx.ui.json {
        ctx.ui.emit_json(&info)?;
    } else if !ctx.ui.quiet {
        let what = if info.public { "public" } else { "private" };
        ctx.ui
            .print(format!("{} v{} is {what}", info.id, info.version))?;
    }
    Ok(Status::Ok)
}
