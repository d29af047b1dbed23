//! Everything the commands share about talking to the user: failures and how they are shown,
//! stdout/stderr discipline, progress bars, and the formats of sizes and times.

use std::fmt::Display;
use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytesize::ByteSize;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde_json::{Value, json};

/// A command failed: the message, the causes beneath it, and a machine-readable kind.
#[derive(Debug)]
pub struct Fail {
    pub kind: &'static str,
    pub message: String,
    pub causes: Vec<String>,
    /// What a multi-file command had already done when it failed, shown in the JSON error.
    pub completed: Option<Value>,
}

impl Fail {
    pub fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Fail {
            kind,
            message: message.into(),
            causes: Vec::new(),
            completed: None,
        }
    }

    /// An I/O failure of the CLI itself (not of the engine), with what it was doing.
    pub fn io(context: impl Display, e: io::Error) -> Self {
        // The engine's readers wrap its errors in io::Error; unwrap them to keep the kind.
        if e.get_ref().is_some_and(|i| i.is::<tessera::Error>()) {
            let inner = e.downcast::<tessera::Error>().expect("checked above");
            let mut f = Fail::from(inner);
            f.message = format!("{context}: {}", f.message);
            return f;
        }
        if e.kind() == io::ErrorKind::BrokenPipe {
            return Fail::new("broken_pipe", "broken pipe");
        }
        let mut f = Fail::new("io", format!("{context}: {e}"));
        f.causes = causes(&e, &f.message);
        f
    }

    pub fn with_completed(mut self, done: Value) -> Self {
        self.completed = Some(done);
        self
    }
}

/// The source chain of `e`, minus what `message` already says.
fn causes(e: &dyn std::error::Error, message: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !message.contains(&s) {
            out.push(s);
        }
        cur = c.source();
    }
    out
}

impl From<tessera::Error> for Fail {
    fn from(e: tessera::Error) -> Self {
        use tessera::Error as E;
        let kind = match &e {
            E::NotFound { .. } => "not_found",
            E::Locked { .. } => "locked",
            E::NotAStore { .. } => "not_a_store",
            E::ConfigMismatch(_) => "config_mismatch",
            // Bad input too: validation refused the file (kind = the rejection's code, such as
            // `type_mismatch`), or it is over its category's size limit.
            E::InvalidInput(_) => "invalid_input",
            E::Rejected { code, .. } => code,
            E::TooLarge { .. } => "too_large",
            E::AlreadyExists { .. } => "exists",
            E::Corrupt { .. } => "corrupt",
            E::Io { .. } => "io",
            E::Index { .. } => "index",
            E::Infected { .. } => "infected",
            E::ScanUnavailable(_) => "scanner_unavailable",
            E::QuotaExceeded(_) => "quota_exceeded",
            E::Unavailable { .. } => "unavailable",
            E::TooMany { code, .. } => code,
            _ => "error",
        };
        let message = e.to_string();
        Fail {
            kind,
            causes: causes(&e, &message),
            message,
            completed: None,
        }
    }
}

/// Where output goes and how much of it.
pub struct Ui {
    pub json: bool,
    pub quiet: bool,
    /// Bars are drawn only on a terminal, and never in `--json` or `--quiet` mode.
    bars: bool,
}

impl Ui {
    pub fn new(json: bool, quiet: bool) -> Self {
        Ui {
            json,
            quiet,
            bars: !json && !quiet && io::stderr().is_terminal(),
        }
    }

    /// Human output is wanted (not `--json`).
    pub fn human(&self) -> bool {
        !self.json
    }

    /// Prints the one JSON document of this command.
    pub fn emit_json<T: Serialize + ?Sized>(&self, v: &T) -> Result<(), Fail> {
        let mut out = io::stdout().lock();
        let text = serde_json::to_string_pretty(v)
            .map_err(|e| Fail::new("error", format!("encoding JSON: {e}")))?;
        writeln!(out, "{text}")
            .and_then(|()| out.flush())
            .map_err(|e| Fail::io("writing to stdout", e))
    }

    /// Prints human output on stdout.
    pub fn print(&self, text: impl Display) -> Result<(), Fail> {
        let mut out = io::stdout().lock();
        writeln!(out, "{text}")
            .and_then(|()| out.flush())
            .map_err(|e| Fail::io("writing to stdout", e))
    }

    /// A note on stderr for people: not in `--quiet` or `--json` mode.
    pub fn note(&self, text: impl Display) {
        if !self.quiet && !self.json {
            eprintln!("{text}");
        }
    }

    /// A warning on stderr: shown unless `--quiet`.
    pub fn warn(&self, text: impl Display) {
        if !self.quiet {
            eprintln!("warning: {text}");
        }
    }

    fn target(&self) -> ProgressDrawTarget {
        if self.bars {
            // Draws nothing when stderr is not a terminal, too.
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        }
    }

    /// A bar counting bytes; a spinner when the total is unknown.
    pub fn bytes_bar(&self, total: Option<u64>, message: impl Into<String>) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(total, self.target());
        let style = match total {
            Some(_) => ProgressStyle::with_template(
                "{msg:20!} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
            ),
            None => ProgressStyle::with_template("{spinner} {msg:20!} {binary_bytes} {binary_bytes_per_sec}"),
        }
        .expect("valid template")
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(message.into());
        bar
    }

    /// Shows a failure: `error: ...` on stderr, and in `--json` mode the error document on
    /// stdout. A closed stdout (`tessera ls | head`) ends the program quietly.
    pub fn report_failure(&self, fail: &Fail) -> ExitCode {
        if fail.kind == "broken_pipe" {
            return ExitCode::SUCCESS;
        }
        let mut text = format!("error: {}", fail.message);
        for c in &fail.causes {
            text.push_str(&format!("\n  caused by: {c}"));
        }
        eprintln!("{text}");
        if self.json {
            let mut doc = json!({
                "error": { "kind": fail.kind, "message": fail.message, "causes": fail.causes }
            });
            if let Some(done) = &fail.completed {
                doc["completed"] = done.clone();
            }
            let _ = self.emit_json(&doc);
        }
        ExitCode::FAILURE
    }
}

/// Reports the engine's long jobs (verify, recover) on an indicatif bar.
pub struct BarProgress<'u> {
    ui: &'u Ui,
    bar: Mutex<Option<ProgressBar>>,
}

impl<'u> BarProgress<'u> {
    pub fn new(ui: &'u Ui) -> Self {
        BarProgress {
            ui,
            bar: Mutex::new(None),
        }
    }
}

impl tessera::Progress for BarProgress<'_> {
    fn start(&self, phase: &str, total: u64) {
        // Unit-agnostic template: not every phase counts bytes.
        let bar = ProgressBar::with_draw_target((total > 0).then_some(total), self.ui.target());
        let template = if total > 0 {
            "{msg:24!} [{bar:30}] {percent:>3}% eta {eta}"
        } else {
            "{spinner} {msg:24!} {elapsed}"
        };
        bar.set_style(
            ProgressStyle::with_template(template)
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(phase.to_string());
        if let Some(old) = self.bar.lock().unwrap().replace(bar) {
            old.finish_and_clear();
        }
    }

    fn advance(&self, n: u64) {
        if let Some(bar) = self.bar.lock().unwrap().as_ref() {
            bar.inc(n);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.lock().unwrap().take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for BarProgress<'_> {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.get_mut().unwrap().take() {
            bar.finish_and_clear();
        }
    }
}

/// `1.5 MiB`.
pub fn size(n: u64) -> String {
    ByteSize(n).display().iec().to_string()
}

/// RFC 3339 (UTC, seconds) of a time in ms since the epoch.
pub fn time(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Lays out rows in columns separated by two spaces. Columns in `right` are right-aligned;
/// the last column is never padded.
pub fn table(rows: &[Vec<String>], right: &[usize]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut width = vec![0; cols];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            width[i] = width[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = width[i] - cell.chars().count();
            if right.contains(&i) {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else if i + 1 < row.len() {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.pop();
    out
}

/// Key/value lines with the values aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{k:w$}  {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A size in bytes: a plain number or a unit such as `64KiB`.
pub fn parse_size_u64(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) => Ok(n),
        Err(_) => Ok(s
            .trim()
            .parse::<ByteSize>()
            .map_err(|e| format!("not a size: {e}"))?
            .as_u64()),
    }
}

/// [`parse_size_u64`] for sizes that must fit 32 bits.
pub fn parse_size_u32(s: &str) -> Result<u32, String> {
    let n = parse_size_u64(s)?;
    u32::try_from(n).map_err(|_| format!("{n} bytes is too large"))
}

/// `START-END` (END exclusive) or `START-`.
pub fn parse_range(s: &str) -> Result<(u64, Option<u64>), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("expected START-END or START-, got {s:?}"))?;
    let start = a
        .trim()
        .parse::<u64>()
        .map_err(|e| format!("bad START {a:?}: {e}"))?;
    let end = if b.trim().is_empty() {
        None
    } else {
        Some(
            b.trim()
                .parse::<u64>()
                .map_err(|e| format!("bad END {b:?}: {e}"))?,
        )
    };
    if let Some(end) = end
        && end < start
    {
        return Err(format!("END {end} is before START {start}"));
    }
    Ok((start, end))
}
