//! `tessera`: the command-line tool. Thin by design: parse the arguments, call the library, print.
//!
//! Output contract, which scripts rely on:
//! - With `--json`, every command prints exactly one JSON document on stdout and nothing else
//!   there (a failure prints `{"error": {...}}`); `cat` has no JSON form and refuses `--json`.
//! - Progress bars and notes go to stderr, never stdout; bars are drawn only when stderr is a
//!   terminal and neither `--json` nor `--quiet` is given.
//! - Exit codes: 0 ok, 1 failure (`error: ...` on stderr; refused input — invalid, rejected by
//!   validation, over a size limit — is a failure whose JSON `kind` says which), 2 usage, 3
//!   `verify` found damage.

mod admin;
mod files;
#[cfg(feature = "media")]
mod image;
mod lifecycle;
mod quota;
mod report;
mod scan;
#[cfg(feature = "server")]
mod serve;
mod sharing;
mod stress;
mod tier;
mod ui;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, CommandFactory, Parser, Subcommand};
use tessera::store::DEFAULT_OWNER;

use crate::ui::{Fail, Ui};

/// Help heading of the options every command takes.
const GLOBAL: &str = "Global options";

/// Exit code when `verify` found damage.
const EXIT_DAMAGED: u8 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "tessera",
    version,
    about = "Tessera: a file store with content-defined chunking, dedup and compression",
    after_help = "Exit codes: 0 ok, 1 failure, 2 usage error, 3 verify found damage.\n\
                  Files are named by id (a ULID) or by key; a key is looked up for the owner \
                  given by --owner (default \"local\")."
)]
struct Cli {
    /// The store directory.
    #[arg(long, global = true, help_heading = GLOBAL, env = "TESSERA_STORE", default_value = "./tessera-data", value_name = "DIR")]
    store: PathBuf,

    /// Owner whose keys are used (and who owns new files) [default: local].
    #[arg(long, global = true, help_heading = GLOBAL, env = "TESSERA_OWNER", value_name = "U")]
    owner: Option<String>,

    /// Configuration file (TOML): limits, categories, server settings. See `tessera::config`.
    #[arg(long, global = true, help_heading = GLOBAL, env = "TESSERA_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Print exactly one JSON document on stdout (for scripts).
    #[arg(long, global = true, help_heading = GLOBAL)]
    json: bool,

    /// No progress bars, notes or confirmations.
    #[arg(short, long, global = true, help_heading = GLOBAL)]
    quiet: bool,

    /// A directory to use as the cold tier (a local-directory tier: tests, or cold data on a
    /// cheaper mounted disk). The `[cold]` section of the configuration names an S3 one.
    #[arg(
        long,
        global = true,
        hide = true,
        env = "TESSERA_COLD_DIR",
        value_name = "DIR"
    )]
    cold_dir: Option<PathBuf>,

    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create a new, empty store.
    Init(InitArgs),
    /// Store files (creates the store if there is none yet).
    ///
    /// A local put acts for the store's owner: it is not bound by the categories' size
    /// limits (`max_size` of [categories.*]) unless the configuration sets
    /// `[uploads] local_category_limits = true`; quotas still apply. The content is still
    /// checked against the file's name (magic bytes), and virus-scanned when [scan] is
    /// configured (a file larger than scan.stream_max is then refused). Uploads through
    /// `tessera serve` are always held to the category limits.
    Put(PutArgs),
    /// Write a file's content to a local file.
    Get(GetArgs),
    /// Write a file's content (or a byte range of it) to stdout.
    Cat(CatArgs),
    /// List files.
    #[command(long_about = "List files.\n\n\
        Without --prefix, files of every owner are listed unless --owner (or TESSERA_OWNER) is \
        given explicitly. With --prefix, the keys of one owner are listed: --owner's, or \
        \"local\" by default.")]
    Ls(LsArgs),
    /// Show a file's metadata (touches no data).
    Stat(Target),
    /// Delete files (soft: `undelete` brings them back).
    Rm(Targets),
    /// Bring back deleted files.
    Undelete(Targets),
    /// List the versions of a file.
    Versions(Target),
    /// Make an old version current again, as a new version.
    Restore(RestoreArgs),
    /// Make a file's current version public or private.
    Visibility(sharing::VisibilityArgs),
    /// Signed links of the HTTP service: `link revoke ID|KEY` ends every link of a file.
    #[command(subcommand)]
    Link(sharing::LinkCmd),
    /// Store-wide figures: sizes, dedup and compression ratios.
    Stats,
    /// Re-read and re-hash everything; exit 3 when anything is damaged.
    Verify(admin::VerifyArgs),
    /// Collect garbage: sweep chunks unreferenced for longer than the grace period, then
    /// rewrite packs whose garbage share passes the threshold.
    Gc(admin::GcArgs),
    /// Remove for good the files deleted longer ago than --older-than.
    Purge(admin::PurgeArgs),
    /// Version retention: remove old versions the rules do not keep (the current version
    /// always stays). Default rules: [maintenance.retention] of the configuration.
    Retention(lifecycle::RetentionArgs),
    /// Lifecycle expiry: soft-delete files whose current content is older than their
    /// category's age. Default rules: [maintenance.expiry] over SPEC's (images 730d).
    Expire(lifecycle::ExpireArgs),
    /// Rebuild the index from the pack files (the store must not be in use).
    Recover,
    /// Reports: files unread for N days, identical files, storage by category/owner/tier.
    #[command(subcommand)]
    Report(report::ReportCmd),
    /// Images: probe a file or a stored image, show its variants, optimise to a size.
    #[cfg(feature = "media")]
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// Run the HTTP service on the store.
    Serve(serve::ServeArgs),
    /// Manage the users and tokens of the HTTP service.
    #[command(subcommand)]
    User(serve::UserCmd),
    /// Quotas: usage, limits, warnings, reports, history.
    #[command(subcommand)]
    Quota(quota::QuotaCmd),
    /// Files the virus scanner found infected: stored, flagged, never served to users.
    #[command(subcommand)]
    Quarantine(QuarantineCmd),
    /// The virus scanner: its version, or with --rescan a rescan of stored files.
    Scan(scan::ScanArgs),
    /// Concurrent puts that print `ACK <key> <version> <blake3> <size>` once each put returned
    /// (used by the crash-safety test).
    #[command(subcommand)]
    Tier(tier::TierCmd),
    #[command(hide = true)]
    DebugStress(stress::StressArgs),
    #[command(hide = true)]
    DebugTierMove(tier::DebugMoveArgs),
}

#[derive(Debug, Args)]
struct InitArgs {
    /// Smallest chunk (bytes, or a size such as 16KiB) [default: 16KiB].
    #[arg(long, value_name = "N", value_parser = ui::parse_size_u32)]
    chunk_min: Option<u32>,
    /// Average chunk [default: 64KiB].
    #[arg(long, value_name = "N", value_parser = ui::parse_size_u32)]
    chunk_avg: Option<u32>,
    /// Largest chunk [default: 256KiB].
    #[arg(long, value_name = "N", value_parser = ui::parse_size_u32)]
    chunk_max: Option<u32>,
    /// zstd level for new chunks, 0 (store raw) to 22 [default: 3]. Kept with the store.
    #[arg(long, value_name = "LEVEL", value_parser = clap::value_parser!(i32).range(0..=22))]
    compression: Option<i32>,
}

#[derive(Debug, Args)]
struct PutArgs {
    /// Files to store; `-` reads stdin. Without --key a file's key is its file name
    /// (stdin's is "stdin").
    #[arg(value_name = "FILE", required_unless_present = "recursive")]
    files: Vec<PathBuf>,
    /// Key of the file (only with exactly one FILE). A put to an existing key adds a version.
    #[arg(long, value_name = "K")]
    key: Option<String>,
    /// Category of the files; it must take each file's extension and detected type
    /// (else category_mismatch) [default: decided per file: the category that lists its
    /// extension (images, documents, videos, archives), else the one that lists its detected
    /// type, else other].
    #[arg(long, value_name = "C")]
    category: Option<String>,
    /// Declared MIME type; the content's magic bytes must agree with it [default: none, the
    /// type is detected and checked against the file's extension].
    #[arg(long, value_name = "M")]
    mime: Option<String>,
    /// Mark the files public.
    #[arg(long)]
    public: bool,
    /// Store every regular file below DIR, keyed by its path relative to DIR ('/'-separated).
    /// Symbolic links are not followed.
    #[arg(short = 'r', long = "recursive", value_name = "DIR")]
    recursive: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct GetArgs {
    /// File id or key.
    #[arg(value_name = "ID|KEY")]
    target: String,
    /// Where to write [default: the file's display name, in the current directory]. An
    /// existing directory receives the file under its display name.
    #[arg(short, long, value_name = "OUT")]
    output: Option<PathBuf>,
    /// Read this version instead of the current one.
    #[arg(long, value_name = "N")]
    version: Option<u32>,
    /// Overwrite OUT if it exists.
    #[arg(short, long)]
    force: bool,
}

#[derive(Debug, Args)]
struct CatArgs {
    /// File id or key.
    #[arg(value_name = "ID|KEY")]
    target: String,
    /// Read this version instead of the current one.
    #[arg(long, value_name = "N")]
    version: Option<u32>,
    /// Bytes START (inclusive) to END (exclusive); `START-` reads to the end.
    #[arg(long, value_name = "START-END", value_parser = ui::parse_range)]
    range: Option<(u64, Option<u64>)>,
}

#[derive(Debug, Args)]
struct LsArgs {
    /// Only keys starting with P (of --owner, default "local").
    #[arg(long, value_name = "P")]
    prefix: Option<String>,
    /// Only files of category C.
    #[arg(long, value_name = "C")]
    category: Option<String>,
    /// Include deleted files.
    #[arg(long)]
    deleted: bool,
    /// Files per page (1 to 10000) [default: 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    limit: Option<u64>,
    /// Start after this cursor (printed by the previous page).
    #[arg(long, value_name = "CURSOR")]
    after: Option<String>,
    /// Follow every page to the end.
    #[arg(long)]
    all: bool,
    /// Only quarantined files (set by `quarantine ls`).
    #[arg(skip)]
    quarantined: bool,
}

#[derive(Debug, Subcommand)]
enum QuarantineCmd {
    /// List quarantined files (of every owner unless --owner is given), with the signature the
    /// virus scanner found.
    Ls(LsArgs),
    /// Remove for good the files quarantined longer ago than --older-than.
    Purge(lifecycle::QuarantinePurgeArgs),
}

#[derive(Debug, Args)]
pub struct Target {
    /// File id or key.
    #[arg(value_name = "ID|KEY")]
    pub target: String,
}

#[derive(Debug, Args)]
struct Targets {
    /// File ids or keys.
    #[arg(value_name = "ID|KEY", required = true)]
    targets: Vec<String>,
}

#[derive(Debug, Args)]
struct RestoreArgs {
    /// File id or key.
    #[arg(value_name = "ID|KEY")]
    target: String,
    /// The version to make current again.
    #[arg(long, value_name = "N")]
    version: u32,
}

/// What every command needs besides its own arguments.
pub struct Ctx {
    pub store_dir: PathBuf,
    /// `--owner`, or the default owner.
    pub owner: String,
    /// True when the owner was given on the command line or in the environment.
    pub owner_explicit: bool,
    pub ui: Ui,
    /// The configuration file's settings (defaults without `--config`).
    pub settings: tessera::config::Settings,
    /// The cold tier: `--cold-dir`'s local directory, else the configuration's `[cold]`
    /// (built once per run: an S3 tier owns a client and its runtime).
    pub cold_tier: Option<Arc<dyn tessera::tier::ColdTier>>,
}

impl Ctx {
    /// The engine configuration for this run.
    pub fn config(&self) -> tessera::Config {
        let mut config = self.settings.store_config();
        config.cold_tier = self.cold_tier.clone();
        config
    }
}

/// Exits with clap's usage-error format and code 2.
pub fn usage_error(msg: impl std::fmt::Display) -> ! {
    let mut cmd = Cli::command();
    cmd.error(clap::error::ErrorKind::ArgumentConflict, msg)
        .exit()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ui = Ui::new(cli.json, cli.quiet);
    let settings = match &cli.config {
        Some(path) => match tessera::config::Settings::load(path) {
            Ok(s) => s,
            Err(e) => return ui.report_failure(&e.into()),
        },
        None => tessera::config::Settings::default(),
    };
    let cold_tier = match tier::cold_dir_tier(&cli.cold_dir) {
        Some(t) => Some(t),
        None => match settings.cold_tier() {
            Ok(t) => t,
            Err(e) => return ui.report_failure(&e.into()),
        },
    };
    let ctx = Ctx {
        settings,
        cold_tier,
        store_dir: cli.store,
        owner: cli
            .owner
            .clone()
            .unwrap_or_else(|| DEFAULT_OWNER.to_string()),
        owner_explicit: cli.owner.is_some(),
        ui,
    };
    let result = match cli.cmd {
        Cmd::Init(a) => admin::init(&ctx, a),
        Cmd::Put(a) => files::put(&ctx, a),
        Cmd::Get(a) => files::get(&ctx, a),
        Cmd::Cat(a) => files::cat(&ctx, a),
        Cmd::Ls(a) => files::ls(&ctx, a),
        Cmd::Stat(a) => files::stat(&ctx, a),
        Cmd::Rm(a) => files::rm(&ctx, a, false),
        Cmd::Undelete(a) => files::rm(&ctx, a, true),
        Cmd::Versions(a) => files::versions(&ctx, a),
        Cmd::Restore(a) => files::restore(&ctx, a),
        Cmd::Visibility(a) => sharing::visibility(&ctx, a),
        Cmd::Link(c) => sharing::link(&ctx, c),
        Cmd::Stats => admin::stats(&ctx),
        Cmd::Verify(a) => admin::verify(&ctx, &a),
        Cmd::Gc(args) => admin::gc(&ctx, &args),
        Cmd::Purge(args) => admin::purge(&ctx, &args),
        Cmd::Retention(a) => lifecycle::retention(&ctx, &a),
        Cmd::Expire(a) => lifecycle::expire(&ctx, &a),
        Cmd::Quarantine(QuarantineCmd::Purge(a)) => lifecycle::quarantine_purge(&ctx, &a),
        Cmd::Recover => admin::recover(&ctx),
        Cmd::Report(c) => report::report(&ctx, c),
        #[cfg(feature = "media")]
        Cmd::Image(c) => image::run(&ctx, c),
        Cmd::Serve(a) => serve::serve(&ctx, a),
        Cmd::User(c) => serve::user(&ctx, c),
        Cmd::Scan(a) => scan::scan(&ctx, &a),
        Cmd::Quota(c) => quota::run(&ctx, c),
        Cmd::Quarantine(QuarantineCmd::Ls(mut a)) => {
            a.quarantined = true;
            files::ls(&ctx, a)
        }
        Cmd::DebugStress(a) => stress::run(&ctx, a),
        Cmd::Tier(c) => tier::run(&ctx, c),
        Cmd::DebugTierMove(a) => tier::debug_move(&ctx, a),
    };
    match result {
        Ok(Status::Ok) => ExitCode::SUCCESS,
        Ok(Status::Damaged) => ExitCode::from(EXIT_DAMAGED),
        Err(fail) => ctx.ui.report_failure(&fail),
    }
}

/// How a command that did its job ended.
pub enum Status {
    Ok,
    /// `verify` found damage (exit 3).
    Damaged,
}

pub type CmdResult = Result<Status, Fail>;
