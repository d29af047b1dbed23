//! `tessera serve` and `tessera user ...`: the HTTP service and its users.

use std::net::SocketAddr;

use clap::{Args, Subcommand};
use serde_json::json;
use tessera::Store;
use tessera::http::Server;
use tessera::users::NewUser;

use crate::ui::{self, Fail};
use crate::{CmdResult, Ctx, Status};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: server.listen of the configuration, 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Base URL clients reach the service at, for links and tus `Location` headers.
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// Log as JSON lines instead of text (logs go to stderr; RUST_LOG filters them).
    #[arg(long)]
    log_json: bool,
}

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Add a user; prints the new bearer token alone on stdout (shown once, stored hashed).
    Add(UserAddArgs),
    /// List users.
    Ls,
    /// Issue another token for a user (older tokens stay valid); prints it alone on stdout.
    Token { name: String },
    /// Revoke every token of a user.
    Revoke { name: String },
}

#[derive(Debug, Args)]
pub struct UserAddArgs {
    name: String,
    /// May use the admin endpoints and see every file.
    #[arg(long)]
    admin: bool,
    /// Storage tier (free, basic, pro, enterprise).
    #[arg(long, value_name = "T")]
    tier: Option<String>,
    /// Organisation the user belongs to.
    #[arg(long, value_name = "O")]
    org: Option<String>,
    /// A quota that overrides the tier's, e.g. 5MiB.
    #[arg(long, value_name = "SIZE", value_parser = ui::parse_size_u64)]
    quota: Option<u64>,
}

pub fn serve(ctx: &Ctx, a: ServeArgs) -> CmdResult {
    let mut settings = ctx.settings.clone();
    if let Some(l) = a.listen {
        settings.server.listen = l;
    }
    if a.public_url.is_some() {
        settings.server.public_url = a.public_url;
    }
    init_logging(a.log_json);
    let store = Store::open_or_create(&ctx.store_dir, ctx.config())?;
    if settings.auth.bootstrap_admin && store.user_count()? == 0 {
        let (user, token) = store.user_add(
            "admin",
            NewUser {
                admin: true,
                ..Default::default()
            },
        )?;
        // Shown once: only its hash is kept.
        if ctx.ui.json {
            ctx.ui
                .emit_json(&json!({ "user": user.name, "token": token }))?;
        } else {
            ctx.ui.print(format!("admin token: {token}"))?;
            eprintln!("(first start: created user \"admin\"; the token is not shown again)");
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Fail::io("starting the async runtime", e))?;
    runtime.block_on(async move {
        match &settings.scan {
            None => eprintln!(
                "tessera: warning: no [scan] section in the configuration: uploads are not \
                 virus-scanned"
            ),
            Some(scan) => eprintln!(
                "tessera: virus scanning with clamd at {} ({}; categories: {})",
                scan.clamd,
                if scan.fail_open {
                    "fail open"
                } else {
                    "fail closed"
                },
                scan.categories.join(", ")
            ),
        }
        let server = Server::bind(store, settings).await?;
        eprintln!(
            "tessera: serving {} on http://{}",
            ctx.store_dir.display(),
            server.local_addr()
        );
        server.run(shutdown_signal()).await?;
        Ok::<_, Fail>(())
    })?;
    Ok(Status::Ok)
}

/// Ctrl-C or SIGTERM: stop accepting, finish the requests in flight.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a person: log files and journald get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

pub fn user(ctx: &Ctx, cmd: UserCmd) -> CmdResult {
    match cmd {
        UserCmd::Add(a) => {
            let store = Store::open_or_create(&ctx.store_dir, ctx.config())?;
            let (user, token) = store.user_add(
                &a.name,
                NewUser {
                    admin: a.admin,
                    tier: a.tier,
                    org: a.org,
                    quota: a.quota,
                },
            )?;
            if ctx.ui.json {
                ctx.ui.emit_json(&json!({ "user": user, "token": token }))?;
            } else {
                ctx.ui.print(token)?;
            }
        }
        UserCmd::Ls => {
            let store = Store::open_read_only(&ctx.store_dir, ctx.config())?;
            let users = store.users()?;
            if ctx.ui.json {
                ctx.ui.emit_json(&json!({ "users": users }))?;
            } else {
                for u in users {
                    ctx.ui.print(format!(
                        "{}{}{}{}",
                        u.name,
                        if u.admin { " (admin)" } else { "" },
                        u.tier.map(|t| format!(" tier={t}")).unwrap_or_default(),
                        u.org.map(|o| format!(" org={o}")).unwrap_or_default(),
                    ))?;
                }
            }
        }
        UserCmd::Token { name } => {
            let store = Store::open(&ctx.store_dir, ctx.config())?;
            let token = store.user_new_token(&name)?;
            if ctx.ui.json {
                ctx.ui.emit_json(&json!({ "user": name, "token": token }))?;
            } else {
                ctx.ui.print(token)?;
            }
        }
        UserCmd::Revoke { name } => {
            let store = Store::open(&ctx.store_dir, ctx.config())?;
            store.user(&name)?;
            let n = store.user_revoke_tokens(&name)?;
            if ctx.ui.json {
                ctx.ui.emit_json(&json!({ "user": name, "revoked": n }))?;
            } else {
                ctx.ui.print(format!("revoked {n} token(s) of {name}"))?;
            }
        }
    }
    Ok(Status::Ok)
}
