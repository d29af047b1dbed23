//! `tessera quota ...`: limits, usage, warnings and reports (the library's `quota_*` calls).

use clap::{Args, Subcommand};
use serde_json::json;
use tessera::Store;
use tessera::quota::{OrgStatus, QuotaStatus};

use crate::ui::{self, Fail};
use crate::{CmdResult, Ctx, Status};

#[derive(Debug, Subcommand)]
pub enum QuotaCmd {
    /// Give a user a quota of their own, overriding their tier's (e.g. 5MiB).
    Set {
        name: String,
        #[arg(value_name = "SIZE", value_parser = ui::parse_size_u64)]
        size: u64,
    },
    /// Remove a user's own quota: their tier's applies again.
    Clear { name: String },
    /// Organisation limits.
    #[command(subcommand)]
    Org(OrgCmd),
    /// One owner's usage, limit, level and organisation.
    Show { name: String },
    /// Totals, tier breakdown, top users, users near their limit, organisations.
    Report(ReportArgs),
    /// Owners at THRESHOLD of their limit or more.
    Alerts(AlertArgs),
    /// Organisation usage and limits.
    Orgs,
    /// An owner's daily usage, growth trend and 30-day projection.
    History(HistoryArgs),
}

#[derive(Debug, Subcommand)]
pub enum OrgCmd {
    /// Set an organisation's limit (overrides quotas.orgs of the configuration).
    Set {
        org: String,
        #[arg(value_name = "SIZE", value_parser = ui::parse_size_u64)]
        size: u64,
    },
    /// Remove the limit set with `quota org set`.
    Clear { org: String },
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// How many top users to list.
    #[arg(long, default_value_t = 10)]
    top: usize,
}

#[derive(Debug, Args)]
pub struct AlertArgs {
    /// A fraction of the limit.
    #[arg(long, default_value_t = 0.8)]
    threshold: f64,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    name: String,
    /// Days of history, today included.
    #[arg(long, default_value_t = 30)]
    days: u32,
}

fn limit(l: Option<u64>) -> String {
    l.map_or("unlimited".into(), ui::size)
}

fn pct(p: Option<f64>) -> String {
    p.map_or("-".into(), |p| format!("{p:.1} %"))
}

fn status_rows(list: &[QuotaStatus]) -> String {
    let mut rows = vec![vec![
        "OWNER".into(),
        "TIER".into(),
        "ORG".into(),
        "USED".into(),
        "LIMIT".into(),
        "USE".into(),
        "LEVEL".into(),
    ]];
    for s in list {
        rows.push(vec![
            s.owner.clone(),
            s.tier.clone().unwrap_or_else(|| "-".into()),
            s.org.clone().unwrap_or_else(|| "-".into()),
            ui::size(s.used),
            limit(s.limit),
            pct(s.percentage),
            format!("{:?}", s.level).to_lowercase(),
        ]);
    }
    ui::table(&rows, &[3, 4, 5])
}

fn org_rows(list: &[OrgStatus]) -> String {
    let mut rows = vec![vec![
        "ORG".into(),
        "MEMBERS".into(),
        "USED".into(),
        "LIMIT".into(),
        "USE".into(),
    ]];
    for o in list {
        rows.push(vec![
            o.org.clone(),
            o.members.to_string(),
            ui::size(o.used),
            limit(o.limit),
            pct(o.percentage),
        ]);
    }
    ui::table(&rows, &[1, 2, 3, 4])
}

fn show(ctx: &Ctx, s: &QuotaStatus) -> Result<(), Fail> {
    if ctx.ui.json {
        return ctx.ui.emit_json(s);
    }
    let mut f = vec![
        ("owner", s.owner.clone()),
        ("tier", s.tier.clone().unwrap_or_else(|| "-".into())),
        ("used", ui::size(s.used)),
        ("reserved", ui::size(s.reserved)),
        ("limit", limit(s.limit)),
        ("use", pct(s.percentage)),
        ("level", format!("{:?}", s.level).to_lowercase()),
    ];
    if let Some(org) = &s.org {
        f.push(("org", org.clone()));
        f.push(("org used", ui::size(s.org_used.unwrap_or(0))));
        f.push(("org limit", limit(s.org_limit)));
    }
    ctx.ui.print(ui::fields(&f))
}

pub fn run(ctx: &Ctx, cmd: QuotaCmd) -> CmdResult {
    let rw = || Store::open_or_create(&ctx.store_dir, ctx.config());
    // Reports read; a store whose index predates quotas gets its counters on the first
    // read-write open, so reading commands open read-write too (it costs one fsync).
    match cmd {
        QuotaCmd::Set { name, size } => show(ctx, &rw()?.quota_set(&name, Some(size))?)?,
        QuotaCmd::Clear { name } => show(ctx, &rw()?.quota_set(&name, None)?)?,
        QuotaCmd::Org(OrgCmd::Set { org, size }) => {
            let o = rw()?.org_quota_set(&org, Some(size))?;
            if ctx.ui.json {
                ctx.ui.emit_json(&o)?;
            } else {
                ctx.ui.print(org_rows(&[o]))?;
            }
        }
        QuotaCmd::Org(OrgCmd::Clear { org }) => {
            let o = rw()?.org_quota_set(&org, None)?;
            if ctx.ui.json {
                ctx.ui.emit_json(&o)?;
            } else {
                ctx.ui.print(org_rows(&[o]))?;
            }
        }
        QuotaCmd::Show { name } => show(ctx, &rw()?.quota_status(&name)?)?,
        QuotaCmd::Report(a) => {
            let r = rw()?.quota_report(a.top)?;
            if ctx.ui.json {
                ctx.ui.emit_json(&r)?;
            } else {
                let mut tiers = vec![vec![
                    "TIER".into(),
                    "OWNERS".into(),
                    "USED".into(),
                    "LIMITS".into(),
                ]];
                for t in &r.tiers {
                    tiers.push(vec![
                        t.tier.clone(),
                        t.owners.to_string(),
                        ui::size(t.used),
                        limit(t.limit),
                    ]);
                }
                ctx.ui.print(format!(
                    "{}\n\n{}\n\ntop users\n{}\n\nnear their limit\n{}\n\norganisations\n{}",
                    ui::fields(&[
                        ("owners", r.owners.to_string()),
                        ("users", r.users.to_string()),
                        ("used", ui::size(r.total_used)),
                        ("reserved", ui::size(r.total_reserved)),
                    ]),
                    ui::table(&tiers, &[1, 2, 3]),
                    status_rows(&r.top),
                    status_rows(&r.near_limit),
                    org_rows(&r.orgs),
                ))?;
            }
        }
        QuotaCmd::Alerts(a) => {
            let list = rw()?.quota_alerts(a.threshold)?;
            if ctx.ui.json {
                ctx.ui
                    .emit_json(&json!({ "threshold": a.threshold, "users": list }))?;
            } else {
                ctx.ui.print(status_rows(&list))?;
            }
        }
        QuotaCmd::Orgs => {
            let list = rw()?.quota_orgs()?;
            if ctx.ui.json {
                ctx.ui.emit_json(&json!({ "orgs": list }))?;
            } else {
                ctx.ui.print(org_rows(&list))?;
            }
        }
        QuotaCmd::History(a) => {
            let h = rw()?.quota_history(&a.name, a.days)?;
            if ctx.ui.json {
                ctx.ui.emit_json(&h)?;
            } else {
                let mut rows = vec![vec!["DATE".into(), "USED".into()]];
                for d in &h.days {
                    rows.push(vec![d.date.to_string(), ui::size(d.used)]);
                }
                let trend = if h.trend_bytes_per_day >= 0.0 {
                    format!("+{}/day", ui::size(h.trend_bytes_per_day as u64))
                } else {
                    format!("-{}/day", ui::size((-h.trend_bytes_per_day) as u64))
                };
                ctx.ui.print(format!(
                    "{}\n\n{}",
                    ui::table(&rows, &[1]),
                    ui::fields(&[
                        ("trend", trend),
                        ("in 30 days", ui::size(h.projected_30d)),
                        ("limit", limit(h.limit)),
                        (
                            "full in",
                            h.days_to_limit
                                .map_or("-".into(), |d| format!("{d:.0} days")),
                        ),
                    ])
                ))?;
            }
        }
    }
    Ok(Status::Ok)
}
