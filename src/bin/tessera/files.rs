//! Commands on files: put, get, cat, ls, stat, rm/undelete, versions, restore.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use serde_json::{Value, json};
use tessera::{FileId, FileInfo, FileReader, ListQuery, PutOptions, PutReport, Store};

use crate::ui::{self, Fail};
use crate::{
    CatArgs, CmdResult, Ctx, GetArgs, LsArgs, PutArgs, RestoreArgs, Status, Target, Targets, admin,
    usage_error,
};

/// Finds the file an `ID|KEY` argument names: a file id if it parses as one and exists,
/// otherwise a key of the owner (deleted files included).
pub fn resolve(store: &Store, owner: &str, arg: &str) -> Result<FileId, Fail> {
    if let Ok(id) = arg.parse::<FileId>() {
        match store.stat(id) {
            Ok(_) => return Ok(id),
            Err(tessera::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    match store.resolve_key(owner, arg) {
        Ok(id) => Ok(id),
        Err(tessera::Error::NotFound { .. }) => Err(Fail::new(
            "not_found",
            format!("no file with id or key {arg:?} (keys are looked up for owner {owner:?})"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// How a file is named in human output: its key, or its id and display name.
fn label(f: &FileInfo) -> String {
    match &f.key {
        Some(k) => k.clone(),
        None => format!("{} ({})", f.id, f.display_name),
    }
}

// ------------------------------------------------------------------------------------ put

enum Source {
    Stdin,
    Path(PathBuf),
}

struct Job {
    source: Source,
    key: String,
    name: Option<String>,
    len: Option<u64>,
}

fn utf8_name(path: &Path) -> Result<String, Fail> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| {
            Fail::new(
                "invalid_input",
                format!("{} has no UTF-8 file name to use as a key", path.display()),
            )
        })
}

/// Every regular file below `dir`, sorted, as (relative key, path, length). Symlinks are not
/// followed, so the walk cannot loop or leave `dir`.
fn walk(dir: &Path, ui: &ui::Ui) -> Result<Vec<(String, PathBuf, u64)>, Fail> {
    let meta = fs::metadata(dir).map_err(|e| Fail::io(format!("reading {}", dir.display()), e))?;
    if !meta.is_dir() {
        return Err(Fail::new(
            "invalid_input",
            format!("{} is not a directory", dir.display()),
        ));
    }
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, prefix)) = stack.pop() {
        let entries =
            fs::read_dir(&path).map_err(|e| Fail::io(format!("listing {}", path.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Fail::io(format!("listing {}", path.display()), e))?;
            let p = entry.path();
            let name = entry.file_name();
            let name = name.to_str().ok_or_else(|| {
                Fail::new(
                    "invalid_input",
                    format!("{} is not valid UTF-8 and cannot be a key", p.display()),
                )
            })?;
            let key = if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}/{name}")
            };
            let ft = entry
                .file_type()
                .map_err(|e| Fail::io(format!("reading {}", p.display()), e))?;
            if ft.is_dir() {
                stack.push((p, key));
            } else if ft.is_file() {
                let len = entry
                    .metadata()
                    .map_err(|e| Fail::io(format!("reading {}", p.display()), e))?
                    .len();
                out.push((key, p, len));
            } else {
                ui.note(format!("skipping {} (not a regular file)", p.display()));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn plan_put(ctx: &Ctx, a: &PutArgs) -> Result<Vec<Job>, Fail> {
    if a.key.is_some() && (a.files.len() != 1 || a.recursive.is_some()) {
        usage_error("--key needs exactly one FILE and no -r");
    }
    if a.files.iter().filter(|f| f.as_os_str() == "-").count() > 1 {
        usage_error("stdin (`-`) can be read only once");
    }
    let mut jobs = Vec::new();
    for f in &a.files {
        if f.as_os_str() == "-" {
            jobs.push(Job {
                source: Source::Stdin,
                key: a.key.clone().unwrap_or_else(|| "stdin".to_string()),
                name: None,
                len: None,
            });
            continue;
        }
        let meta = fs::metadata(f).map_err(|e| Fail::io(format!("reading {}", f.display()), e))?;
        if meta.is_dir() {
            return Err(Fail::new(
                "invalid_input",
                format!(
                    "{} is a directory (use -r DIR to store a tree)",
                    f.display()
                ),
            ));
        }
        let name = utf8_name(f)?;
        jobs.push(Job {
            source: Source::Path(f.clone()),
            key: a.key.clone().unwrap_or_else(|| name.clone()),
            name: Some(name),
            len: meta.is_file().then_some(meta.len()),
        });
    }
    if let Some(dir) = &a.recursive {
        for (key, path, len) in walk(dir, &ctx.ui)? {
            jobs.push(Job {
                source: Source::Path(path),
                name: Some(key.rsplit('/').next().unwrap_or(&key).to_string()),
                key,
                len: Some(len),
            });
        }
    }
    // Two inputs with one key would silently become versions of each other.
    let mut seen: HashMap<&str, &Job> = HashMap::new();
    for j in &jobs {
        if let Some(other) = seen.insert(&j.key, j) {
            let show = |j: &Job| match &j.source {
                Source::Stdin => "stdin".to_string(),
                Source::Path(p) => p.display().to_string(),
            };
            return Err(Fail::new(
                "invalid_input",
                format!(
                    "{} and {} would both get key {:?}; put them separately with --key",
                    show(other),
                    show(j),
                    j.key
                ),
            ));
        }
    }
    Ok(jobs)
}

/// Opens the store for a put, creating it with the defaults if there is none yet.
fn open_for_put(ctx: &Ctx) -> Result<Store, Fail> {
    let existed = ctx.store_dir.join("store.json").exists();
    let store = Store::open_or_create(&ctx.store_dir, ctx.config())?;
    if !existed {
        ctx.ui.note(format!(
            "created a new store in {}",
            ctx.store_dir.display()
        ));
    }
    admin::warn_open_report(ctx, &store);
    Ok(store)
}

/// Small files are committed in batches (one fsync pair per batch, not per file): at most
/// this many files...
const BATCH_FILES: usize = 128;
/// ...and this many bytes. Larger or unsized inputs (stdin) are put on their own.
const BATCH_BYTES: u64 = 32 << 20;

/// Splits the jobs into runs that are committed together.
fn batches(jobs: &[Job]) -> Vec<&[Job]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, j) in jobs.iter().enumerate() {
        let len = j.len.unwrap_or(u64::MAX);
        let full = i - start == BATCH_FILES || bytes + len.min(BATCH_BYTES) > BATCH_BYTES;
        if i > start && (full || len >= BATCH_BYTES) {
            out.push(&jobs[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += len.min(BATCH_BYTES);
    }
    if start < jobs.len() {
        out.push(&jobs[start..]);
    }
    out
}

pub fn put(ctx: &Ctx, a: PutArgs) -> CmdResult {
    let jobs = plan_put(ctx, &a)?;
    let store = open_for_put(ctx)?;
    let total = jobs.iter().map(|j| j.len).sum::<Option<u64>>();
    let bar = ctx.ui.bytes_bar(total, "storing");
    let mut done: Vec<PutReport> = Vec::new();
    let as_json = |done: &[PutReport]| serde_json::to_value(done).unwrap_or(Value::Null);
    let options = |job: &Job| PutOptions {
        owner: ctx.owner.clone(),
        key: Some(job.key.clone()),
        name: job.name.clone(),
        category: a.category.clone(),
        mime: a.mime.clone(),
        public: a.public,
        // A file's size is known up front: the quota is reserved before it is read (and,
        // with `local_category_limits`, one over its category's limit is refused unread).
        declared_size: job.len,
        // The store's owner: see `tessera put --help`.
        origin: tessera::Origin::Local,
        ..Default::default()
    };
    for batch in batches(&jobs) {
        let mut items: Vec<(Box<dyn Read + Send>, PutOptions)> = Vec::with_capacity(batch.len());
        for job in batch {
            let reader: Box<dyn Read + Send> = match &job.source {
                Source::Stdin => Box::new(bar.wrap_read(io::stdin())),
                Source::Path(p) => Box::new(bar.wrap_read(File::open(p).map_err(|e| {
                    Fail::io(format!("opening {}", p.display()), e).with_completed(as_json(&done))
                })?)),
            };
            items.push((reader, options(job)));
        }
        bar.set_message(match batch {
            [one] => one.key.clone(),
            many => format!("{} files", many.len()),
        });
        let results = match items.len() {
            1 => {
                let (reader, opts) = items.pop().expect("one item");
                vec![store.put(reader, &opts)]
            }
            _ => store.put_many(items),
        };
        let mut failed = None;
        for (job, result) in batch.iter().zip(results) {
            match result {
                Ok(report) => {
                    if ctx.ui.human() && !ctx.ui.quiet {
                        let line = put_line(&report);
                        bar.suspend(|| ctx.ui.print(line))?;
                    }
                    done.push(report);
                }
                Err(e) if failed.is_none() => {
                    let mut f = Fail::from(e);
                    f.message = format!("storing {:?}: {}", job.key, f.message);
                    failed = Some(f);
                }
                Err(e) => ctx.ui.warn(format!("storing {:?}: {e}", job.key)),
            }
        }
        if let Some(f) = failed {
            return Err(f.with_completed(as_json(&done)));
        }
    }
    bar.finish_and_clear();
    if ctx.ui.json {
        ctx.ui.emit_json(&json!({ "files": done }))?;
    } else if done.len() > 1 {
        let read: u64 = done.iter().map(|r| r.file.size).sum();
        let written: u64 = done.iter().map(|r| r.new_stored_bytes).sum();
        ctx.ui.note(format!(
            "{} files, {} read, {} of new data written",
            done.len(),
            ui::size(read),
            ui::size(written)
        ));
    } else if done.is_empty() {
        ctx.ui.note("no files to store");
    }
    Ok(Status::Ok)
}

fn put_line(r: &PutReport) -> String {
    format!(
        "{}  v{}  {}  {}  ({} of {} chunks new, {} written)",
        r.file.id,
        r.file.version,
        ui::size(r.file.size),
        label(&r.file),
        r.new_chunks,
        r.chunks,
        ui::size(r.new_stored_bytes)
    )
}

// ------------------------------------------------------------------------------------ reads

/// A reader of the whole version (current or `version`), with its expected BLAKE3.
fn open_version(
    store: &Store,
    id: FileId,
    version: Option<u32>,
) -> Result<(FileReader, FileInfo, String), Fail> {
    let info = store.stat(id)?;
    if info.deleted {
        return Err(Fail::new(
            "not_found",
            format!(
                "{} is deleted (run `tessera undelete {}` to read it)",
                label(&info),
                info.id
            ),
        ));
    }
    match version {
        None => {
            let b3 = info.blake3.clone();
            Ok((store.get(id)?, info, b3))
        }
        Some(n) => {
            let v = store.version_info(id, n)?;
            Ok((store.get_version(id, n)?, info, v.blake3))
        }
    }
}

/// Copies `reader` to `out`, advancing a bar, and returns the bytes copied and their BLAKE3.
fn copy_hashed(
    ctx: &Ctx,
    reader: &mut FileReader,
    out: &mut dyn Write,
    what: &str,
) -> Result<(u64, String), Fail> {
    let bar = ctx.ui.bytes_bar(Some(reader.len()), what.to_string());
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let got = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Fail::io(format!("reading {what}"), e)),
        };
        hasher.update(&buf[..got]);
        out.write_all(&buf[..got])
            .map_err(|e| Fail::io("writing", e))?;
        n += got as u64;
        bar.inc(got as u64);
    }
    out.flush().map_err(|e| Fail::io("writing", e))?;
    bar.finish_and_clear();
    Ok((n, hasher.finalize().to_hex().to_string()))
}

fn check_hash(what: &str, got: &str, want: &str) -> Result<(), Fail> {
    if got != want {
        return Err(Fail::new(
            "corrupt",
            format!(
                "{what}: content hash {got} does not match the stored {want}; run `tessera verify`"
            ),
        ));
    }
    Ok(())
}

/// Where `get` writes: `-o`, a directory given by `-o`, or the current directory; the file
/// name is the display name, which must be one plain path component.
fn output_path(out: Option<&Path>, display_name: &str) -> Result<PathBuf, Fail> {
    let plain = {
        let mut c = Path::new(display_name).components();
        matches!((c.next(), c.next()), (Some(Component::Normal(_)), None))
    };
    let named = || -> Result<PathBuf, Fail> {
        if plain {
            Ok(PathBuf::from(display_name))
        } else {
            Err(Fail::new(
                "invalid_input",
                format!("display name {display_name:?} is not a plain file name; use -o OUT"),
            ))
        }
    };
    match out {
        None => named(),
        Some(p) if p.as_os_str() == "-" => {
            usage_error("get writes to a file; use `tessera cat` for stdout")
        }
        Some(p) if p.is_dir() => Ok(p.join(named()?)),
        Some(p) => Ok(p.to_path_buf()),
    }
}

pub fn get(ctx: &Ctx, a: GetArgs) -> CmdResult {
    let store = Store::open_read_only(&ctx.store_dir, ctx.config())?;
    admin::warn_open_report(ctx, &store);
    let id = resolve(&store, &ctx.owner, &a.target)?;
    let (mut reader, info, want) = open_version(&store, id, a.version)?;
    let path = output_path(a.output.as_deref(), &info.display_name)?;
    if !a.force && fs::symlink_metadata(&path).is_ok() {
        return Err(Fail::new(
            "exists",
            format!(
                "{} already exists (use --force to overwrite)",
                path.display()
            ),
        ));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().ok_or_else(|| {
        Fail::new(
            "invalid_input",
            format!("{} does not name a file", path.display()),
        )
    })?;
    let tmp = dir.join(format!(
        ".{}.tessera-{}-{}.tmp",
        file_name.to_string_lossy(),
        std::process::id(),
        ui::now_ms()
    ));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Fail::io(format!("writing {}", path.display()), e))?;
        let (n, got) = copy_hashed(ctx, &mut reader, &mut f, &label(&info))?;
        check_hash(&label(&info), &got, &want)?;
        f.sync_all()
            .map_err(|e| Fail::io(format!("writing {}", path.display()), e))?;
        install(&tmp, &path, a.force)?;
        Ok(n)
    })();
    let n = match written {
        Ok(n) => n,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let version = reader.version();
    if ctx.ui.json {
        ctx.ui.emit_json(&json!({
            "id": info.id, "key": info.key, "owner": info.owner, "version": version,
            "path": path, "bytes": n, "blake3": want,
        }))?;
    } else if !ctx.ui.quiet {
        ctx.ui.print(format!(
            "wrote {} ({}, {} v{version})",
            path.display(),
            ui::size(n),
            label(&info)
        ))?;
    }
    Ok(Status::Ok)
}

/// Moves the finished temp file into place. Without `force` this never replaces a file that
/// appeared meanwhile: a hard link fails if the target exists.
fn install(tmp: &Path, path: &Path, force: bool) -> Result<(), Fail> {
    if !force {
        match fs::hard_link(tmp, path) {
            Ok(()) => {
                let _ = fs::remove_file(tmp);
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(Fail::new(
                    "exists",
                    format!(
                        "{} already exists (use --force to overwrite)",
                        path.display()
                    ),
                ));
            }
            // No hard links on this file system: check, then rename.
            Err(_) if fs::symlink_metadata(path).is_err() => {}
            Err(e) => return Err(Fail::io(format!("creating {}", path.display()), e)),
        }
    }
    fs::rename(tmp, path)
        .map_err(|e| Fail::io(format!("moving the download to {}", path.display()), e))
}

pub fn cat(ctx: &Ctx, a: CatArgs) -> CmdResult {
    if ctx.ui.json {
        usage_error(
            "cat writes the file's bytes to stdout and has no --json form (try `stat --json`)",
        );
    }
    let store = Store::open_read_only(&ctx.store_dir, ctx.config())?;
    admin::warn_open_report(ctx, &store);
    let id = resolve(&store, &ctx.owner, &a.target)?;
    let (mut reader, info, want) = open_version(&store, id, a.version)?;
    let whole = reader.len();
    if let Some((start, end)) = a.range {
        let end = end.unwrap_or(whole);
        if end > whole || start > end {
            return Err(Fail::new(
                "invalid_input",
                format!(
                    "range {start}-{end} is outside {}'s {whole} bytes",
                    label(&info)
                ),
            ));
        }
        reader = match a.version {
            None => store.get_range(id, start..end)?,
            Some(n) => store.get_version_range(id, n, start..end)?,
        };
    }
    let mut out = io::stdout().lock();
    let (_, got) = copy_hashed(ctx, &mut reader, &mut out, &label(&info))?;
    if a.range.is_none() {
        check_hash(&label(&info), &got, &want)?;
    }
    Ok(Status::Ok)
}

// ------------------------------------------------------------------------------------ listing

pub fn ls(ctx: &Ctx, a: LsArgs) -> CmdResult {
    let store = Store::open_read_only(&ctx.store_dir, ctx.config())?;
    admin::warn_open_report(ctx, &store);
    let by_owner = ctx.owner_explicit || a.prefix.is_some();
    let mut q = ListQuery {
        owner: by_owner.then(|| ctx.owner.clone()),
        prefix: a.prefix.clone(),
        category: a.category.clone(),
        include_deleted: a.deleted,
        quarantined_only: a.quarantined,
        after: a.after.clone(),
        limit: a.limit.map(|n| n as usize),
    };
    let mut files = Vec::new();
    let next = loop {
        let page = store.list(&q)?;
        files.extend(page.files);
        match page.next {
            Some(n) if a.all => q.after = Some(n),
            other => break other,
        }
    };
    if ctx.ui.json {
        ctx.ui.emit_json(&json!({ "files": files, "next": next }))?;
        return Ok(Status::Ok);
    }
    if !files.is_empty() {
        let mut rows = vec![
            vec!["ID", "VER", "SIZE", "UPDATED"]
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>(),
        ];
        if !by_owner {
            rows[0].push("OWNER".into());
        }
        rows[0].push("KEY".into());
        for f in &files {
            let mut row = vec![
                f.id.to_string(),
                f.version.to_string(),
                ui::size(f.size),
                ui::time(f.updated_ms),
            ];
            if !by_owner {
                row.push(f.owner.clone());
            }
            let mut name = label(f);
            if f.deleted {
                name.push_str("  [deleted]");
            }
            if let Some(tessera::scan::ScanStamp::Infected { signature }) = &f.scan {
                name.push_str(&format!("  [infected: {signature}]"));
            }
            row.push(name);
            rows.push(row);
        }
        ctx.ui.print(ui::table(&rows, &[1, 2]))?;
    }
    if let Some(n) = next {
        ctx.ui.note(format!(
            "more files: run again with --after {n} (or use --all)"
        ));
    }
    Ok(Status::Ok)
}

fn stat_text(f: &FileInfo) -> String {
    let mut flags = Vec::new();
    for (on, name) in [
        (f.public, "public"),
        (f.processed, "processed"),
        (f.quarantined, "quarantined"),
    ] {
        if on {
            flags.push(name.to_string());
        }
    }
    if let Some(ms) = f.deleted_ms {
        flags.push(format!("deleted {}", ui::time(ms)));
    }
    let mut pairs = vec![
        ("id", f.id.to_string()),
        ("owner", f.owner.clone()),
        ("key", f.key.clone().unwrap_or_else(|| "-".into())),
        ("name", f.display_name.clone()),
    ];
    if let Some(o) = &f.original_name {
        pairs.push(("original name", o.clone()));
    }
    if let Some(scan) = &f.scan {
        use tessera::scan::ScanStamp;
        pairs.push((
            "virus scan",
            match scan {
                ScanStamp::Clean => "clean".to_string(),
                ScanStamp::Infected { signature } => format!("infected: {signature}"),
                ScanStamp::Unscanned { reason } => format!("unscanned: {reason}"),
            },
        ));
    }
    pairs.extend([
        ("category", f.category.clone()),
        ("mime", f.mime.clone()),
        ("size", format!("{} ({} bytes)", ui::size(f.size), f.size)),
        ("version", f.version.to_string()),
        ("blake3", f.blake3.clone()),
        ("sha256", f.sha256.clone()),
        ("created", ui::time(f.created_ms)),
        ("updated", ui::time(f.updated_ms)),
        ("accessed", ui::time(f.accessed_ms)),
        (
            "flags",
            if flags.is_empty() {
                "-".into()
            } else {
                flags.join(", ")
            },
        ),
    ]);
    if !f.metadata.is_null() {
        pairs.push(("metadata", f.metadata.to_string()));
    }
    ui::fields(&pairs)
}

pub fn stat(ctx: &Ctx, a: Target) -> CmdResult {
    let store = Store::open_read_only(&ctx.store_dir, ctx.config())?;
    admin::warn_open_report(ctx, &store);
    let id = resolve(&store, &ctx.owner, &a.target)?;
    let info = store.stat(id)?;
    if ctx.ui.json {
        ctx.ui.emit_json(&info)?;
    } else {
        ctx.ui.print(stat_text(&info))?;
    }
    Ok(Status::Ok)
}

/// `rm` (or `undelete` when `undo`). Every argument is resolved before anything changes, so a
/// typo in one of them changes nothing.
pub fn rm(ctx: &Ctx, a: Targets, undo: bool) -> CmdResult {
    let store = Store::open(&ctx.store_dir, ctx.config())?;
    admin::warn_open_report(ctx, &store);
    let ids = a
        .targets
        .iter()
        .map(|t| resolve(&store, &ctx.owner, t))
        .collect::<Result<Vec<_>, _>>()?;
    let mut done: Vec<FileInfo> = Vec::new();
    for id in ids {
        let r = if undo {
            store.undelete(id)
        } else {
            store.delete(id)
        };
        let info = r.map_err(|e| {
            Fail::from(e).with_completed(serde_json::to_value(&done).unwrap_or(Value::Null))
        })?;
        if ctx.ui.human() && !ctx.ui.quiet {
            let verb = if undo { "undeleted" } else { "deleted" };
            ctx.ui
                .print(format!("{verb} {}  {}", info.id, label(&info)))?;
        }
        done.push(info);
    }
    if ctx.ui.json {
        ctx.ui.emit_json(&json!({ "files": done }))?;
    }
    Ok(Status::Ok)
}

pub fn versions(ctx: &Ctx, a: Target) -> CmdResult {
    let store = Store::open_read_only(&ctx.store_dir, ctx.config())?;
    admin::warn_open_report(ctx, &store);
    let id = resolve(&store, &ctx.owner, &a.target)?;
    let info = store.stat(id)?;
    let versions = store.versions(id)?;
    if ctx.ui.json {
        ctx.ui.emit_json(&json!({
            "id": info.id, "owner": info.owner, "key": info.key, "versions": versions,
        }))?;
        return Ok(Status::Ok);
    }
    let mut rows = vec![
        ["VER", "SIZE", "CREATED", "BLAKE3", "NOTE"]
            .map(String::from)
            .to_vec(),
    ];
    for v in &versions {
        let mut note = Vec::new();
        if v.current {
            note.push("current".to_string());
        }
        if let Some(from) = v.restored_from {
            note.push(format!("restored from v{from}"));
        }
        rows.push(vec![
            v.version.to_string(),
            ui::size(v.size),
            ui::time(v.created_ms),
            v.blake3.chars().take(16).collect(),
            note.join(", "),
        ]);
    }
    ctx.ui.print(ui::table(&rows, &[0, 1]))?;
    Ok(Status::Ok)
}

pub fn restore(ctx: &Ctx, a: RestoreArgs) -> CmdResult {
    let store = Store::open(&ctx.store_dir, ctx.config())?;
    admin::warn_open_report(ctx, &store);
    let id = resolve(&store, &ctx.owner, &a.target)?;
    let info = store.restore(id, a.version)?;
    if ctx.ui.json {
        ctx.ui.emit_json(&info)?;
    } else if !ctx.ui.quiet {
        ctx.ui.print(format!(
            "restored {} v{} as v{} ({})",
            label(&info),
            a.version,
            info.version,
            ui::size(info.size)
        ))?;
    }
    Ok(Status::Ok)
}
