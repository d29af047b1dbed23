//! The `tessera` command-line tool, run as a real process against stores in temp directories.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use tessera::ChunkParams;

use crate::common::{blake3_hex, random_bytes, text_bytes};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

/// A temp directory with a store path (`store/`, not created) and room for input files.
pub struct Cli {
    tmp: tempfile::TempDir,
}

impl Cli {
    pub fn new() -> Self {
        Cli {
            tmp: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn store(&self) -> PathBuf {
        self.tmp.path().join("store")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// A command in the temp directory, on this store, unaffected by the caller's environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--store")
            .arg(self.store())
            .args(args)
            .current_dir(self.tmp.path())
            .env_remove("TESSERA_STORE")
            .env_remove("TESSERA_OWNER")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run tessera")
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> Vec<u8> {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "tessera {args:?} failed ({:?}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn ok_text(&self, args: &[&str]) -> String {
        String::from_utf8(self.ok(args)).expect("utf-8 output")
    }

    /// Runs with `--json`, asserts success and that stdout is exactly one JSON document.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.ok(&all);
        parse_json(&out)
    }

    /// Runs and asserts exit code `code`; returns (stdout, stderr).
    fn fails(&self, args: &[&str], code: i32) -> (String, String) {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "tessera {args:?}: stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn write(&self, rel: &str, data: &[u8]) -> PathBuf {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
        p
    }
}

fn parse_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {}",
            String::from_utf8_lossy(bytes)
        )
    })
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The keys in an `ls --json` document.
fn keys(ls: &Value) -> BTreeSet<String> {
    ls["files"]
        .as_array()
        .expect("files array")
        .iter()
        .map(|f| f["key"].as_str().expect("key").to_string())
        .collect()
}

#[test]
fn put_get_round_trip_is_byte_identical() {
    let cli = Cli::new();
    let files = [
        ("notes.txt", text_bytes(1, 150_000)),
        ("random.bin", random_bytes(2, 700_000)),
        ("tiny.dat", b"x".to_vec()),
        ("empty.dat", Vec::new()),
    ];
    let mut args = vec!["put".to_string()];
    for (name, data) in &files {
        args.push(s(&cli.write(&format!("in/{name}"), data)).to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // No `init`: put creates the store on first use.
    cli.ok(&args);
    assert!(cli.store().join("store.json").exists());

    for (name, data) in &files {
        let out = cli.path(&format!("out-{name}"));
        cli.ok(&["get", name, "-o", s(&out)]);
        assert_eq!(&fs::read(&out).unwrap(), data, "{name}");
        assert_eq!(&cli.ok(&["cat", name]), data, "cat {name}");
    }
    // No temp files are left beside the outputs.
    let leftovers: Vec<_> = fs::read_dir(cli.tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn put_from_stdin_needs_no_file() {
    let cli = Cli::new();
    let data = random_bytes(3, 90_000);
    let mut child = cli
        .cmd(&["put", "-", "--key", "piped/data.bin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&data).unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    assert_eq!(cli.ok(&["cat", "piped/data.bin"]), data);

    // Without --key, stdin is stored under the key "stdin".
    let mut child = cli
        .cmd(&["put", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("stdin"));
    assert_eq!(cli.ok(&["cat", "stdin"]), b"from stdin");
}

#[test]
fn get_defaults_to_display_name_and_refuses_to_overwrite() {
    let cli = Cli::new();
    let first = text_bytes(4, 5000);
    let f = cli.write("src/report.txt", &first);
    // A hostile key: the display name is sanitised, and get must not write outside the cwd.
    cli.ok(&["put", s(&f), "--key", "../../escape/report.txt"]);
    cli.ok(&["get", "../../escape/report.txt"]);
    assert_eq!(fs::read(cli.path("report.txt")).unwrap(), first);
    assert!(!cli.tmp.path().parent().unwrap().join("escape").exists());

    // Refuses to overwrite, and leaves the existing file alone.
    fs::write(cli.path("report.txt"), b"mine").unwrap();
    let (_, err) = cli.fails(&["get", "../../escape/report.txt"], 1);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(fs::read(cli.path("report.txt")).unwrap(), b"mine");
    cli.ok(&["get", "../../escape/report.txt", "--force"]);
    assert_eq!(fs::read(cli.path("report.txt")).unwrap(), first);

    // `-o DIR` writes into the directory under the display name.
    fs::create_dir(cli.path("dl")).unwrap();
    cli.ok(&["get", "../../escape/report.txt", "-o", "dl"]);
    assert_eq!(fs::read(cli.path("dl/report.txt")).unwrap(), first);
}

#[test]
fn put_recursive_lists_every_relative_key() {
    let cli = Cli::new();
    let tree = [
        "a.txt",
        "docs/readme.md",
        "docs/deep/er/notes.txt",
        "img/x.svg",
        "img/y.svg",
    ];
    for (i, rel) in tree.iter().enumerate() {
        cli.write(
            &format!("tree/{rel}"),
            &text_bytes(10 + i as u64, 1000 + i * 37),
        );
    }
    cli.ok(&["put", "-r", s(&cli.path("tree"))]);
    let listed = keys(&cli.json(&["ls", "--all"]));
    let expected: BTreeSet<String> = tree.iter().map(|k| k.to_string()).collect();
    assert_eq!(listed, expected);
    // Contents went to the right keys.
    assert_eq!(
        cli.ok(&["cat", "docs/deep/er/notes.txt"]),
        fs::read(cli.path("tree/docs/deep/er/notes.txt")).unwrap()
    );
    // A prefix lists one subtree.
    let docs = keys(&cli.json(&["ls", "--prefix", "docs/"]));
    assert_eq!(
        docs,
        BTreeSet::from(["docs/readme.md".into(), "docs/deep/er/notes.txt".into()])
    );
    // Paging with --limit returns everything across pages, each key once.
    let page = cli.json(&["ls", "--limit", "2"]);
    assert_eq!(page["files"].as_array().unwrap().len(), 2);
    let next = page["next"].as_str().expect("a cursor").to_string();
    let rest = cli.json(&["ls", "--after", &next, "--all"]);
    let mut all = keys(&page);
    all.extend(keys(&rest));
    assert_eq!(all, expected);
}

#[test]
fn json_output_of_every_command_parses() {
    let cli = Cli::new();
    let init = cli.json(&["init"]);
    assert_eq!(init["chunking"]["avg_size"], 65536);
    let f = cli.write("one.txt", &text_bytes(20, 3000));
    let put = cli.json(&["put", s(&f)]);
    assert_eq!(put["files"][0]["file"]["key"], "one.txt");
    let id = put["files"][0]["file"]["id"].as_str().unwrap().to_string();
    cli.json(&["put", s(&f), "--key", "two.txt"]);

    assert_eq!(cli.json(&["stat", &id])["key"], "one.txt");
    assert_eq!(cli.json(&["stat", "one.txt"])["id"], id.as_str());
    assert_eq!(cli.json(&["ls"])["files"].as_array().unwrap().len(), 2);
    assert_eq!(
        cli.json(&["versions", "one.txt"])["versions"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let got = cli.json(&["get", "one.txt", "-o", s(&cli.path("got.txt"))]);
    assert_eq!(got["bytes"], 3000);
    assert_eq!(
        cli.json(&["restore", "one.txt", "--version", "1"])["version"],
        2
    );
    let stats = cli.json(&["stats"]);
    assert_eq!(stats["files"], 2);
    assert_eq!(
        stats["physical_bytes"].as_u64().unwrap(),
        stats["pack_bytes"].as_u64().unwrap() + stats["index_bytes"].as_u64().unwrap()
    );
    assert_eq!(cli.json(&["verify"])["ok"], true);
    assert_eq!(cli.json(&["rm", "two.txt"])["files"][0]["deleted"], true);
    assert_eq!(
        cli.json(&["undelete", "two.txt"])["files"][0]["deleted"],
        false
    );
    let rec = cli.json(&["recover"]);
    assert_eq!(rec["files"], 2);

    // A failure still prints one JSON document on stdout.
    let (out, err) = cli.fails(&["--json", "stat", "missing.txt"], 1);
    let doc = parse_json(out.as_bytes());
    assert_eq!(doc["error"]["kind"], "not_found");
    assert!(err.starts_with("error: "), "{err}");
    // cat writes raw bytes: --json is a usage error, not a corrupted stdout.
    cli.fails(&["--json", "cat", "one.txt"], 2);
}

#[test]
fn versions_and_restore() {
    let cli = Cli::new();
    let v1 = text_bytes(30, 40_000);
    let v2 = random_bytes(31, 60_000);
    cli.ok(&["put", s(&cli.write("v1", &v1)), "--key", "doc.txt"]);
    cli.ok(&["put", s(&cli.write("v2", &v2)), "--key", "doc.txt"]);

    let versions = cli.json(&["versions", "doc.txt"]);
    let list = versions["versions"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["blake3"], blake3_hex(&v1).as_str());
    assert_eq!(list[1]["current"], true);
    assert_eq!(cli.ok(&["cat", "doc.txt"]), v2);
    assert_eq!(cli.ok(&["cat", "doc.txt", "--version", "1"]), v1);

    let restored = cli.json(&["restore", "doc.txt", "--version", "1"]);
    assert_eq!(restored["version"], 3);
    assert_eq!(cli.ok(&["cat", "doc.txt"]), v1);
    let list = cli.json(&["versions", "doc.txt"])["versions"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(list.len(), 3);
    assert_eq!(list[2]["restored_from"], 1);
    assert_eq!(list[2]["current"], true);
    // The human listing names all three.
    let text = cli.ok_text(&["versions", "doc.txt"]);
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(text.contains("restored from v1"), "{text}");
}

#[test]
fn cat_reads_byte_ranges() {
    let cli = Cli::new();
    let v1 = random_bytes(40, 300_000);
    let v2 = random_bytes(41, 200_000);
    cli.ok(&["put", s(&cli.write("a", &v1)), "--key", "r.bin"]);
    cli.ok(&["put", s(&cli.write("b", &v2)), "--key", "r.bin"]);
    assert_eq!(cli.ok(&["cat", "r.bin", "--range", "10-20"]), &v2[10..20]);
    assert_eq!(
        cli.ok(&["cat", "r.bin", "--range", "100000-"]),
        &v2[100_000..]
    );
    assert_eq!(
        cli.ok(&["cat", "r.bin", "--version", "1", "--range", "70000-250001"]),
        &v1[70_000..250_001]
    );
    let (_, err) = cli.fails(&["cat", "r.bin", "--range", "10-200001"], 1);
    assert!(err.contains("range"), "{err}");
    cli.fails(&["cat", "r.bin", "--range", "20-10"], 2);
}

#[test]
fn rm_hides_a_file_and_undelete_brings_it_back() {
    let cli = Cli::new();
    let data = text_bytes(50, 20_000);
    cli.ok(&["put", s(&cli.write("gone.txt", &data))]);
    cli.ok(&["put", s(&cli.write("stays.txt", b"stay"))]);
    cli.ok(&["rm", "gone.txt"]);

    let (_, err) = cli.fails(&["get", "gone.txt", "-o", s(&cli.path("out"))], 1);
    assert!(err.contains("deleted"), "{err}");
    assert!(!cli.path("out").exists());
    assert_eq!(
        keys(&cli.json(&["ls"])),
        BTreeSet::from(["stays.txt".into()])
    );
    assert_eq!(keys(&cli.json(&["ls", "--deleted"])).len(), 2);

    // A typo in one argument changes nothing.
    cli.fails(&["rm", "stays.txt", "no-such-file"], 1);
    assert_eq!(cli.json(&["stat", "stays.txt"])["deleted"], false);

    cli.ok(&["undelete", "gone.txt"]);
    cli.ok(&["get", "gone.txt", "-o", s(&cli.path("out"))]);
    assert_eq!(fs::read(cli.path("out")).unwrap(), data);
}

#[test]
fn usage_errors_exit_2() {
    let cli = Cli::new();
    cli.fails(&["ls", "--no-such-flag"], 2);
    cli.fails(&["frobnicate"], 2);
    let a = cli.write("a", b"a");
    let b = cli.write("b", b"b");
    let (_, err) = cli.fails(&["put", s(&a), s(&b), "--key", "k"], 2);
    assert!(err.contains("--key"), "{err}");
    // Nothing was stored by the refused command.
    assert!(!cli.store().join("store.json").exists());
}

#[test]
fn stat_of_unknown_file_names_it() {
    let cli = Cli::new();
    cli.ok(&["put", s(&cli.write("known.txt", b"k"))]);
    let (out, err) = cli.fails(&["stat", "no/such/key.txt"], 1);
    assert!(out.is_empty());
    assert!(
        err.starts_with("error: ") && err.contains("no/such/key.txt"),
        "{err}"
    );
    let ulid = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    let (_, err) = cli.fails(&["stat", ulid], 1);
    assert!(err.contains(ulid), "{err}");
    // Keys belong to an owner.
    let (_, err) = cli.fails(&["--owner", "bob", "stat", "known.txt"], 1);
    assert!(err.contains("bob"), "{err}");
}

#[test]
fn ls_filters_by_owner_only_when_asked() {
    let cli = Cli::new();
    cli.ok(&["put", s(&cli.write("mine.txt", b"1"))]);
    cli.ok(&["--owner", "alice", "put", s(&cli.write("hers.txt", b"2"))]);
    assert_eq!(keys(&cli.json(&["ls"])).len(), 2);
    assert_eq!(
        keys(&cli.json(&["ls", "--owner", "alice"])),
        BTreeSet::from(["hers.txt".into()])
    );
    let out = cli
        .cmd(&["--json", "ls"])
        .env("TESSERA_OWNER", "local")
        .output()
        .unwrap();
    assert_eq!(
        keys(&parse_json(&out.stdout)),
        BTreeSet::from(["mine.txt".into()])
    );
    // --prefix lists the default owner's keys.
    assert_eq!(
        keys(&cli.json(&["ls", "--prefix", ""])),
        BTreeSet::from(["mine.txt".into()])
    );
}

#[test]
fn verify_exits_3_and_names_the_damaged_chunk_and_file() {
    let cli = Cli::new();
    let data = random_bytes(60, 100_000);
    cli.ok(&["put", s(&cli.write("precious.bin", &data))]);
    assert_eq!(cli.json(&["verify"])["ok"], true);
    assert!(cli.ok_text(&["verify"]).contains("ok"));

    let mut packs: Vec<PathBuf> = fs::read_dir(cli.store().join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .collect();
    packs.sort();
    let pack = &packs[0];
    let mut bytes = fs::read(pack).unwrap();
    bytes[64 + 52 + 10] ^= 0x5a;
    fs::write(pack, &bytes).unwrap();

    let (out, _) = cli.fails(&["--json", "verify"], 3);
    let report = parse_json(out.as_bytes());
    assert_eq!(report["ok"], false);
    let damaged = report["damaged_chunks"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{report}");
    assert_eq!(damaged[0]["chunk"].as_str().unwrap().len(), 64);
    assert_eq!(damaged[0]["files"][0]["key"], "precious.bin");

    let (text, _) = cli.fails(&["verify"], 3);
    let chunk = damaged[0]["chunk"].as_str().unwrap();
    assert!(
        text.contains(chunk) && text.contains("precious.bin"),
        "{text}"
    );
    // Reading the file fails instead of returning wrong bytes, and leaves no output.
    cli.fails(&["get", "precious.bin", "-o", s(&cli.path("out.bin"))], 1);
    assert!(!cli.path("out.bin").exists());
}

#[test]
fn recover_after_losing_the_index_restores_ls() {
    let cli = Cli::new();
    for i in 0..5u64 {
        cli.ok(&[
            "put",
            s(&cli.write(
                &format!("f{i}.txt"),
                &text_bytes(70 + i, 10_000 + i as usize),
            )),
        ]);
    }
    cli.ok(&[
        "put",
        s(&cli.write("f0-v2", &random_bytes(80, 50_000))),
        "--key",
        "f0.txt",
    ]);
    cli.ok(&["rm", "f3.txt"]);
    let summary = |ls: &Value| -> BTreeMap<String, (String, u64, String, bool)> {
        ls["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["id"].as_str().unwrap().to_string(),
                    (
                        f["key"].as_str().unwrap().to_string(),
                        f["version"].as_u64().unwrap(),
                        f["blake3"].as_str().unwrap().to_string(),
                        f["deleted"].as_bool().unwrap(),
                    ),
                )
            })
            .collect()
    };
    let before = summary(&cli.json(&["ls", "--deleted", "--all"]));
    assert_eq!(before.len(), 5);

    fs::remove_file(cli.store().join("index.redb")).unwrap();
    let (_, err) = cli.fails(&["ls"], 1);
    assert!(err.contains("recover"), "{err}");
    let report = cli.json(&["recover"]);
    assert_eq!(report["versions"], 6);
    let after = summary(&cli.json(&["ls", "--deleted", "--all"]));
    assert_eq!(after, before);
    assert_eq!(cli.json(&["verify"])["ok"], true);
}

#[test]
fn init_twice_fails_and_keeps_the_store() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    cli.ok(&["put", s(&cli.write("keep.txt", b"keep"))]);
    let (_, err) = cli.fails(&["init"], 1);
    assert!(err.contains("already"), "{err}");
    let (_, err) = cli.fails(&["init", "--chunk-avg", "32768"], 1);
    assert!(err.contains("already"), "{err}");
    assert_eq!(cli.ok(&["cat", "keep.txt"]), b"keep");
}

#[test]
fn chunk_params_chosen_at_init_are_used_by_later_commands() {
    let cli = Cli::new();
    cli.ok(&[
        "init",
        "--chunk-min",
        "8192",
        "--chunk-avg",
        "32768",
        "--chunk-max",
        "128KiB",
    ]);
    let data = random_bytes(90, 1 << 20);
    cli.ok(&["put", s(&cli.write("big.bin", &data))]);
    let stats = cli.json(&["stats"]);
    assert_eq!(stats["chunking"]["avg_size"], 32768);
    assert_eq!(stats["chunking"]["max_size"], 131072);
    let params = ChunkParams {
        min_size: 8192,
        avg_size: 32768,
        max_size: 131072,
    };
    assert_eq!(
        stats["chunks"].as_u64().unwrap(),
        params.cut_points(&data).len() as u64
    );
    assert_ne!(
        params.cut_points(&data).len(),
        ChunkParams::default().cut_points(&data).len()
    );
    assert_eq!(cli.ok(&["cat", "big.bin"]), data);
    // Bad parameters are refused before anything is created.
    let other = Cli::new();
    let (_, err) = other.fails(&["init", "--chunk-min", "300000", "--chunk-avg", "1000"], 1);
    assert!(err.contains("chunk"), "{err}");
    assert!(!other.store().exists());
}

#[test]
fn compression_level_chosen_at_init_is_kept() {
    let text = text_bytes(95, 400_000);
    let stored = |init: &[&str]| {
        let cli = Cli::new();
        cli.ok(init);
        cli.ok(&["put", s(&cli.write("t.txt", &text))]);
        let stats = cli.json(&["stats"]);
        assert_eq!(cli.ok(&["cat", "t.txt"]), text);
        (
            stats["stored_bytes"].as_u64().unwrap(),
            stats["unique_bytes"].as_u64().unwrap(),
        )
    };
    let (raw, unique) = stored(&["init", "--compression", "0"]);
    assert_eq!(raw, unique, "level 0 stores chunks raw");
    let (compressed, unique) = stored(&["init"]);
    assert!(compressed < unique / 2, "{compressed} of {unique}");
}

#[test]
fn no_progress_bars_when_stderr_is_not_a_terminal() {
    let cli = Cli::new();
    let f = cli.write("big.bin", &random_bytes(100, 3 << 20));
    let out = cli.run(&["put", s(&f)]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains('\r') && !err.contains("eta") && !err.contains('\u{1b}'),
        "{err:?}"
    );
    let out = cli.run(&["verify"]);
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    // --quiet: nothing at all on stderr for a successful put.
    let out = cli.run(&["-q", "put", s(&f), "--key", "again"]);
    assert!(out.status.success() && out.stderr.is_empty() && out.stdout.is_empty());
}

#[test]
fn debug_stress_acks_only_durable_puts() {
    let cli = Cli::new();
    let out = cli.ok_text(&[
        "debug-stress",
        "--seed",
        "11",
        "--threads",
        "3",
        "--count",
        "9",
        "--max-size",
        "150000",
    ]);
    let acks: Vec<Vec<&str>> = out.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(acks.len(), 27, "{out}");
    let mut seen = BTreeSet::new();
    for a in &acks {
        assert_eq!(a.len(), 5, "{a:?}");
        assert_eq!(a[0], "ACK");
        assert!(a[1].starts_with('t') && a[1].contains("/k"), "{a:?}");
        assert!(
            seen.insert((a[1].to_string(), a[2].to_string())),
            "duplicate {a:?}"
        );
        let got = cli.ok(&["cat", a[1], "--version", a[2]]);
        assert_eq!(blake3_hex(&got), a[3], "{a:?}");
        assert_eq!(got.len().to_string(), a[4]);
    }
    // 9 puts over 7 keys: two keys per thread reached version 2.
    assert_eq!(seen.iter().filter(|(_, v)| v == "2").count(), 6);
    // Deterministic: the same seed makes the same content.
    let again = Cli::new();
    let out2 = again.ok_text(&[
        "debug-stress",
        "--seed",
        "11",
        "--threads",
        "3",
        "--count",
        "9",
        "--max-size",
        "150000",
    ]);
    let hashes = |o: &str| {
        o.lines()
            .map(|l| l.split(' ').nth(3).unwrap().to_string())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(hashes(&out), hashes(&out2));
    // The dedup path ran: every third file shares half of the one before.
    let stats = cli.json(&["stats"]);
    assert!(stats["dedup_ratio"].as_f64().unwrap() > 1.0, "{stats}");
}

#[test]
fn put_recursive_commits_many_small_files_in_batches() {
    let cli = Cli::new();
    let mut expected = BTreeMap::new();
    for i in 0..300u64 {
        let key = format!("d{}/f{i:03}.txt", i % 4);
        // A few duplicates, so dedup across a batch is exercised too.
        let data = text_bytes(i % 250, 100 + i as usize);
        cli.write(&format!("many/{key}"), &data);
        expected.insert(key, blake3_hex(&data));
    }
    let put = cli.json(&["put", "-r", s(&cli.path("many"))]);
    assert_eq!(put["files"].as_array().unwrap().len(), 300);
    let ls = cli.json(&["ls", "--all", "--limit", "64"]);
    let listed: BTreeMap<String, String> = ls["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["key"].as_str().unwrap().to_string(),
                f["blake3"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(listed, expected);
    assert_eq!(cli.ok(&["cat", "d3/f299.txt"]), text_bytes(299 % 250, 399));
}

#[test]
fn a_failed_put_reports_what_was_stored() {
    let cli = Cli::new();
    cli.write("mixed/a.txt", b"a");
    cli.write("mixed/bad\u{7}name.txt", b"b");
    cli.write("mixed/c.txt", b"c");
    let (out, err) = cli.fails(&["--json", "put", "-r", s(&cli.path("mixed"))], 1);
    // The key is quoted, so the control character is shown escaped, not sent to the terminal.
    assert!(err.contains(r#"storing "bad\u{7}name.txt""#), "{err}");
    let doc = parse_json(out.as_bytes());
    assert_eq!(doc["error"]["kind"], "invalid_input");
    let completed: BTreeSet<&str> = doc["completed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["file"]["key"].as_str().unwrap())
        .collect();
    assert_eq!(completed, BTreeSet::from(["a.txt", "c.txt"]));
    assert_eq!(
        keys(&cli.json(&["ls"])),
        BTreeSet::from(["a.txt".into(), "c.txt".into()])
    );
}

#[test]
fn put_refuses_content_that_contradicts_its_name_in_one_line() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    // A Windows executable named like a photo.
    let mut exe = random_bytes(30, 2048);
    exe[..2].copy_from_slice(b"MZ");
    exe[0x3C..0x40].copy_from_slice(&0x80u32.to_le_bytes());
    exe[0x80..0x84].copy_from_slice(b"PE\0\0");
    exe[0x96..0x98].copy_from_slice(&0x0022u16.to_le_bytes());
    let f = cli.write("cat.jpg", &exe);
    let (out, err) = cli.fails(&["put", s(&f)], 1);
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: storing \"cat.jpg\": rejected (type_mismatch)")
            && err.contains("image/jpeg")
            && err.contains("portable-executable"),
        "{err}"
    );
    let (out, _) = cli.fails(&["--json", "put", s(&f)], 1);
    assert_eq!(parse_json(out.as_bytes())["error"]["kind"], "type_mismatch");
    // A category that does not take the extension.
    let t = cli.write("notes.txt", b"hello\n");
    let (out, _) = cli.fails(&["--json", "put", s(&t), "--category", "images"], 1);
    assert_eq!(
        parse_json(out.as_bytes())["error"]["kind"],
        "category_mismatch"
    );
    // Over the images limit (10 MB), with `local_category_limits`: the file's size refuses it
    // before it is read.
    let mut big = b"\x89PNG\r\n\x1a\n".to_vec();
    big.resize(10_000_001, 0);
    let b = cli.write("big.png", &big);
    let bound = cli.write("bound.toml", b"[uploads]\nlocal_category_limits = true\n");
    let (out, err) = cli.fails(&["--json", "--config", s(&bound), "put", s(&b)], 1);
    assert_eq!(
        parse_json(out.as_bytes())["error"]["kind"],
        "too_large",
        "{err}"
    );
    assert!(err.contains("too large") && err.contains("images"), "{err}");
    // Nothing of it was stored.
    assert!(
        cli.json(&["ls", "--all"])["files"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // Without it, the owner's put is not held to the category limit.
    let put = cli.json(&["put", s(&b)]);
    assert_eq!(put["files"][0]["file"]["category"], "images");
    assert_eq!(put["files"][0]["file"]["size"], 10_000_001);
    cli.ok(&["rm", "big.png"]);

    // This repository's sources (Rust, and whatever else lives there) go to `other`.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let put = cli.json(&["put", "-r", s(&src)]);
    let files = put["files"].as_array().unwrap();
    assert!(files.len() > 20, "{}", files.len());
    let mut rust = 0;
    for f in files {
        assert_eq!(f["file"]["category"], "other", "{f}");
        if f["file"]["key"].as_str().unwrap().ends_with(".rs") {
            assert_eq!(f["file"]["mime"], "text/x-rust", "{f}");
            rust += 1;
        }
    }
    assert!(rust > 20, "{rust}");
}

#[test]
fn purge_and_gc_reclaim_space_and_dry_runs_do_not() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    std::fs::write(cli.path("a.bin"), crate::common::random_bytes(7, 300_000)).unwrap();
    cli.ok(&["put", "a.bin"]);
    cli.ok(&["rm", "a.bin"]);
    let pack_bytes = |cli: &Cli| cli.json(&["stats"])["pack_bytes"].as_u64().unwrap();
    // Within the default 30 days nothing is purged.
    assert_eq!(cli.json(&["purge"])["files"], 0);
    let dry = cli.json(&["purge", "--older-than", "0s", "--dry-run"]);
    assert_eq!(
        (dry["files"].as_u64(), dry["dry_run"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(cli.json(&["purge", "--older-than", "0s"])["files"], 1);
    let full = pack_bytes(&cli);
    assert!(full > 300_000, "{full}");
    let dry = cli.json(&["gc", "--grace", "0s", "--dry-run"]);
    assert!(dry["swept_chunks"].as_u64().unwrap() > 0, "{dry}");
    assert_eq!(pack_bytes(&cli), full);
    let gc = cli.json(&["gc", "--grace", "0s"]);
    assert!(
        !gc["packs_compacted"].as_array().unwrap().is_empty(),
        "{gc}"
    );
    assert!(pack_bytes(&cli) < 1000, "{}", pack_bytes(&cli));
    cli.ok(&["verify"]);
}

/// The operator's path end to end, all through the binary: users, tokens, a revocation, quota
/// overrides and an organisation limit made with `tessera user` and `tessera quota`; the index
/// deleted; `tessera recover`; then `tessera serve` accepts the old tokens, refuses the
/// revoked one, and applies the same tiers, organisations and limits.
#[test]
fn accounts_made_with_the_cli_survive_recover_and_serve() {
    use crate::http::ServeProcess;
    use reqwest::blocking::Client;
    use reqwest::blocking::multipart::{Form, Part};

    let cli = Cli::new();
    cli.ok(&["init"]);
    let token = |args: &[&str]| cli.ok_text(args).trim().to_string();
    let alice = token(&["user", "add", "alice", "--tier", "pro", "--org", "acme"]);
    let ops = token(&["user", "add", "ops", "--admin"]);
    let bob_old = token(&["user", "add", "bob", "--quota", "1MiB"]);
    cli.ok(&["user", "revoke", "bob"]);
    let bob = token(&["user", "token", "bob"]);
    cli.ok(&["quota", "org", "set", "acme", "500GB"]);
    cli.ok(&["quota", "set", "alice", "7GiB"]);
    let views = || {
        (
            cli.json(&["user", "ls"]),
            cli.json(&["quota", "show", "alice"]),
            cli.json(&["quota", "show", "bob"]),
            cli.json(&["quota", "orgs"]),
        )
    };
    let before = views();

    fs::remove_file(cli.store().join("index.redb")).unwrap();
    let report = cli.json(&["recover"]);
    assert_eq!(report["users"], 3, "{report}");
    assert_eq!(report["accounts"], 7, "{report}");
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    assert_eq!(views(), before);
    assert_eq!(cli.json(&["verify"])["ok"], true);

    let server = ServeProcess::start(&cli.store(), Some(alice.clone()));
    let http = Client::new();
    let get = |path: &str, token: &str| {
        http.get(format!("{}{path}", server.url))
            .bearer_auth(token)
            .send()
            .unwrap()
    };
    assert_eq!(get("/api/files", &alice).status(), 200);
    assert_eq!(get("/api/files", &bob).status(), 200);
    assert_eq!(get("/api/files", &bob_old).status(), 401);
    assert_eq!(get("/api/admin/storage/stats", &ops).status(), 200);
    assert_eq!(get("/api/admin/storage/stats", &alice).status(), 403);
    let q: Value = get("/api/quota", &alice).json().unwrap();
    assert_eq!(
        (&q["tier"], &q["org"], &q["limit"], &q["org_limit"]),
        (
            &Value::from("pro"),
            &Value::from("acme"),
            &Value::from(7u64 << 30),
            &Value::from(500_000_000_000u64)
        )
    );
    // bob's override still binds: 2 MB do not fit in 1 MiB, and nothing is stored.
    let r = http
        .post(format!("{}/api/files", server.url))
        .bearer_auth(&bob)
        .multipart(Form::new().part(
            "file",
            Part::bytes(text_bytes(5, 2_000_000)).file_name("big.txt"),
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 413);
    let listed: Value = get("/api/files", &bob).json().unwrap();
    assert_eq!(listed["files"], serde_json::json!([]), "{listed}");
}

/// `tessera put` acts for the store's owner: a 430 MB backup is stored although `archives`
/// takes 100 MB from clients (issue 13). A sparse file, so the test writes no 430 MB.
#[test]
fn put_of_a_backup_over_the_archives_limit_succeeds_locally() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    // A POSIX tar header ("ustar" at 257), then holes.
    let mut header = vec![0u8; 512];
    header[..10].copy_from_slice(b"backup.sql");
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    let path = cli.write("backup.tar", &header);
    let len = 430_000_000u64;
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len)
        .unwrap();
    let put = cli.json(&["put", s(&path)]);
    let f = &put["files"][0]["file"];
    assert_eq!(f["category"], "archives", "{put}");
    assert_eq!(f["mime"], "application/x-tar", "{put}");
    assert_eq!(f["size"], len, "{put}");
    let st = cli.json(&["stat", "backup.tar"]);
    assert_eq!(st["size"], len, "{st}");
    // `--help` says so.
    let help = String::from_utf8(cli.ok(&["put", "--help"])).unwrap();
    assert!(
        help.contains("not bound by the categories' size")
            && help.contains("local_category_limits"),
        "{help}"
    );
}
