#!/usr/bin/env python3
"""Side-by-side benchmark of Tessera against restic, borg and casync (issue 3).

One run, from a clean checkout:

  1. builds the dataset in --work (default /tmp/tessera-compare; reused when already built):
     successive openssl-src releases as plain .tar files, one ~500 MB stream of other crates'
     sources, and incompressible random files;
  2. installs restic, borgbackup, casync and GNU time from Debian when missing;
  3. builds Tessera (`cargo build --release`) and runs every tool on the same inputs, each with a
     fresh repository on the same filesystem;
  4. prints one table (rows = metrics, columns = tools) and writes it as TSV to
     benches/compare/results/latest.tsv (every repetition's raw value in latest-raw.tsv).

`--presets` measures Tessera's chunk-size presets on the releases instead (results/presets.tsv);
`--all` does both. Python 3 standard library only. Every failure is fatal: a missing tool, a
failed command or a restore that differs from its input ends the run with a message and exit 1.

Every tool goes through the same small interface (`Tool`): init a repository, store one file or
several, restore one file, run a no-op command. The measurement code never branches on the tool.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]  # the crate: benches/compare/ -> benches/ -> root
MB = 1_000_000
MIB = 1 << 20

# Ten successive openssl-src releases (OpenSSL 3.3.0 .. 3.5.4 as bundled by the crate). Each
# unpacks to a ~49 MB tar; together ~490 MB. Pinned so every run measures the same bytes.
DEFAULT_VERSIONS = [
    "300.3.0+3.3.0",
    "300.3.1+3.3.1",
    "300.3.2+3.3.2",
    "300.4.0+3.4.0",
    "300.4.1+3.4.0",
    "300.4.2+3.4.1",
    "300.5.0+3.5.0",
    "300.5.1+3.5.1",
    "300.5.2+3.5.2",
    "300.5.3+3.5.4",
]

# The stream: the unpacked sources (.crate gunzipped to .tar) of every crate in the dependency
# closure of these pinned crates, in the order of stream-deps.lock, concatenated and cut at
# --stream-mb. None of them is openssl-src, so the stream shares no content with the releases.
STREAM_DEPS = """\
aws-lc-sys = "=0.47.0"
aws-sdk-ec2 = "=1.274.0"
libgit2-sys = "=0.18.8"
libsqlite3-sys = { version = "=0.40.0", features = ["bundled"] }
tikv-jemalloc-sys = "=0.7.1"
wasmtime = "=48.0.8"
web-sys = "=0.3.107"
windows = "=0.62.2"
"""

# Tessera's chunk presets for --presets: (min, avg, max) in KiB.
PRESETS = [(8, 32, 128), (16, 64, 256), (32, 128, 512), (64, 256, 1024)]
DEFAULT_PRESET = (16, 64, 256)

CMD_TIMEOUT = 1800  # seconds; a command that hangs longer fails the run


class Fail(Exception):
    """A step failed: the run stops with this message and exit status 1."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Running commands


class Runner:
    """Runs commands with their output in log files; measures wall time and peak RSS.

    Timing contract: the clock starts after an os.sync() (so earlier dirty pages are not charged)
    and stops after the command has exited *and* a further os.sync() has returned. Tessera, restic
    and borg fsync their own writes; casync does not, and the closing sync makes every tool's
    output equally durable before the clock stops.
    """

    def __init__(self, logdir: Path):
        self.logdir = logdir
        logdir.mkdir(parents=True, exist_ok=True)
        self.n = 0
        self.time_bin = shutil.which("time", path="/usr/bin") or "/usr/bin/time"

    def run(self, cmd, *, env=None, cwd=None, check=True, capture=False, timed_rss=False):
        """Run one command. Returns (stdout text or None, peak RSS KiB or None)."""
        self.n += 1
        cmd = [str(c) for c in cmd]
        name = Path(cmd[0]).name
        out_path = self.logdir / f"{self.n:05d}-{name}.out"
        err_path = self.logdir / f"{self.n:05d}-{name}.err"
        rss_path = self.logdir / f"{self.n:05d}-{name}.rss"
        full = [self.time_bin, "-f", "%M", "-o", str(rss_path)] + cmd if timed_rss else cmd
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            try:
                p = subprocess.run(full, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                   env=full_env, cwd=cwd, timeout=CMD_TIMEOUT)
            except FileNotFoundError as e:
                raise Fail(f"cannot run {cmd[0]}: {e}") from e
            except subprocess.TimeoutExpired as e:
                raise Fail(f"timed out after {CMD_TIMEOUT}s: {' '.join(cmd)}") from e
        if check and p.returncode != 0:
            tail = err_path.read_text(errors="replace")[-3000:]
            tail_out = out_path.read_text(errors="replace")[-1500:]
            raise Fail(f"command failed with status {p.returncode}: {' '.join(cmd)}\n"
                       f"(cwd {cwd})\n--- stderr (tail) ---\n{tail}\n--- stdout (tail) ---\n"
                       f"{tail_out}")
        rss = None
        if timed_rss:
            try:
                rss = int(rss_path.read_text().strip().splitlines()[-1])
            except (OSError, ValueError, IndexError) as e:
                raise Fail(f"no peak RSS from {self.time_bin} for {' '.join(cmd)}") from e
        stdout = out_path.read_text(errors="replace") if capture else None
        return stdout, rss

    def timed(self, steps):
        """Run a sequence of (cmd, env, cwd) as one measured operation.

        Returns (seconds, peak RSS MiB over the steps)."""
        os.sync()
        t0 = time.monotonic()
        peak = 0
        for cmd, env, cwd in steps:
            _, rss = self.run(cmd, env=env, cwd=cwd, timed_rss=True)
            peak = max(peak, rss)
        os.sync()
        return time.monotonic() - t0, peak / 1024


def dir_bytes(path: Path) -> int:
    """Sum of the sizes of the regular files below path (`du --apparent-size -b` style)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                total += os.stat(p).st_size
    return total


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(4 * MIB)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def rmtree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


# ---------------------------------------------------------------------------------------------
# The dataset


def cargo_home() -> Path:
    return Path(os.environ.get("CARGO_HOME") or Path.home() / ".cargo")


def find_crate(name: str, version: str) -> Path:
    hits = sorted((cargo_home() / "registry" / "cache").glob(f"*/{name}-{version}.crate"))
    if not hits:
        raise Fail(f"{name}-{version}.crate not found under {cargo_home()}/registry/cache/*/ "
                   f"after cargo fetch")
    return hits[0]


def gunzip_to(src: Path, out, limit: int | None = None) -> int:
    """Append the gunzipped bytes of src to the open file out, at most limit bytes."""
    n = 0
    with gzip.open(src, "rb") as g:
        while limit is None or n < limit:
            want = 4 * MIB if limit is None else min(4 * MIB, limit - n)
            b = g.read(want)
            if not b:
                break
            out.write(b)
            n += len(b)
    return n


def write_fetch_project(proj: Path, name: str, deps: str) -> None:
    (proj / "src").mkdir(parents=True, exist_ok=True)
    (proj / "src" / "lib.rs").write_text("")
    (proj / "Cargo.toml").write_text(
        f'[package]\nname = "{name}"\nversion = "0.0.0"\nedition = "2021"\npublish = false\n\n'
        f'[lib]\npath = "src/lib.rs"\n\n[dependencies]\n{deps}')


def build_releases(r: Runner, work: Path, versions: list[str]) -> list[Path]:
    out = work / "data" / "releases"
    out.mkdir(parents=True, exist_ok=True)
    tars = []
    for v in versions:
        tar = out / f"openssl-src-{v}.tar"
        tars.append(tar)
        if tar.exists() and tar.stat().st_size > 0:
            continue
        # Cargo refuses two semver-compatible versions of one crate in one lockfile, so each
        # version gets its own throwaway project. `=X.Y.Z` (build metadata is ignored by cargo).
        proj = work / "fetch" / f"openssl-src-{v.replace('+', '_')}"
        write_fetch_project(proj, "fetch-openssl-src", f'openssl-src = "={v.split("+")[0]}"\n')
        log(f"fetching openssl-src {v}")
        r.run(["cargo", "fetch", "--quiet"], cwd=proj)
        crate = find_crate("openssl-src", v)
        tmp = tar.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            gunzip_to(crate, f)
        tmp.rename(tar)
    return tars


def build_flat_releases(work: Path, tars: list[Path]) -> list[Path]:
    out = work / "data" / "releases-flat"
    out.mkdir(parents=True, exist_ok=True)
    flats = []
    for tar in tars:
        flat = out / tar.name
        flats.append(flat)
        if not flat.exists() or flat.stat().st_mtime < tar.stat().st_mtime:
            flatten_release(tar, flat)
    return flats


def build_stream(r: Runner, work: Path, target: int) -> Path:
    path = work / "data" / "stream" / "stream.tar"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size == target:
        return path
    proj = work / "fetch" / "stream"
    write_fetch_project(proj, "tessera-compare-stream", STREAM_DEPS)
    shutil.copyfile(HERE / "stream-deps.lock", proj / "Cargo.lock")
    log("fetching the crates of the stream (cargo fetch --locked)")
    r.run(["cargo", "fetch", "--locked", "--quiet"], cwd=proj)
    lock = tomllib.loads((proj / "Cargo.lock").read_text())
    pkgs = [p for p in lock["package"] if "source" in p]
    if any(p["name"] == "openssl-src" for p in pkgs):
        raise Fail("the stream's crates must not include openssl-src (the releases)")
    tmp = path.with_suffix(".tmp")
    n = 0
    used = 0
    with open(tmp, "wb") as f:
        for p in pkgs:
            if n >= target:
                break
            n += gunzip_to(find_crate(p["name"], p["version"]), f, target - n)
            used += 1
    if n < target:
        raise Fail(f"the stream's crates give only {n} bytes, fewer than --stream-mb")
    tmp.rename(path)
    log(f"stream: {used} of {len(pkgs)} crates, cut at {n} bytes")
    return path


def flatten_release(src: Path, dst: Path) -> None:
    """Rewrite a crate tar with its members' leading `NAME-VERSION/` replaced by `openssl-src/`.

    Every member of a .crate tar is named `openssl-src-300.3.0+3.3.0/...`, and at ~13 KB per
    member every 64 KiB chunk holds several tar headers naming the version: across releases no
    chunk repeats, whatever the tool. With version-free names (as a tree backed up after each
    release would be, or `git archive --prefix=openssl-src/`) the unchanged files can dedup.
    Contents, modes and mtimes are kept; the headers are rewritten in GNU format."""
    import tarfile

    tmp = dst.with_suffix(".tmp")
    with tarfile.open(src, "r:") as i, tarfile.open(tmp, "w:", format=tarfile.GNU_FORMAT) as o:
        for m in i:
            _top, _, rest = m.name.partition("/")
            m.name = f"openssl-src/{rest}" if rest else "openssl-src"
            o.addfile(m, i.extractfile(m) if m.isreg() else None)
    tmp.rename(dst)


def build_random(work: Path, count: int, size: int) -> list[Path]:
    d = work / "data" / "random"
    d.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        p = d / f"rand-{i}.bin"
        files.append(p)
        if p.exists() and p.stat().st_size == size:
            continue
        tmp = p.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            left = size
            while left:
                n = min(8 * MIB, left)
                f.write(os.urandom(n))
                left -= n
        tmp.rename(p)
    return files


class Dataset:
    def __init__(self, releases, flats, stream, randoms, tiny):
        self.releases: list[Path] = releases
        self.flats: list[Path] = flats
        self.stream: Path = stream
        self.randoms: list[Path] = randoms
        self.tiny: Path = tiny
        self.stream_sha = None

    def describe(self, versions) -> str:
        rel = sum(p.stat().st_size for p in self.releases)
        return (f"releases: {len(self.releases)} successive openssl-src crate releases "
                f"{versions[0]} .. {versions[-1]} (.crate gunzipped to .tar), "
                f"{rel / MB:.1f} MB in total; releases, flat: the same tars with member "
                f"paths openssl-src/... instead of openssl-src-VERSION/... "
                f"({sum(p.stat().st_size for p in self.flats) / MB:.1f} MB); "
                f"stream: {self.stream.stat().st_size / MB:.1f} MB, the gunzipped .crate tars "
                f"of the dependency closure of aws-lc-sys, aws-sdk-ec2, libgit2-sys, "
                f"libsqlite3-sys, tikv-jemalloc-sys, wasmtime, web-sys, windows "
                f"(pinned by benches/compare/stream-deps.lock) concatenated and cut; "
                f"random: {len(self.randoms)} x {self.randoms[0].stat().st_size / MIB:.0f} MiB "
                f"from os.urandom")


def build_dataset(r: Runner, args) -> Dataset:
    work = args.work
    t0 = time.monotonic()
    releases = build_releases(r, work, args.versions)
    total = sum(p.stat().st_size for p in releases)
    if len(releases) < 10 or total < 300 * MB:
        raise Fail(f"releases: {len(releases)} files, {total / MB:.0f} MB; the benchmark needs "
                   f"10 or more and at least 300 MB")
    flats = build_flat_releases(work, releases)
    stream = build_stream(r, work, args.stream_mb * MB)
    randoms = build_random(work, args.random_files, args.random_mib * MIB)
    tiny = work / "data" / "tiny" / "tiny.bin"
    if not tiny.exists():
        tiny.parent.mkdir(parents=True, exist_ok=True)
        tiny.write_bytes(os.urandom(4096))
    ds = Dataset(releases, flats, stream, randoms, tiny)
    sha_file = stream.with_suffix(".sha256")
    if sha_file.exists() and sha_file.stat().st_mtime >= stream.stat().st_mtime:
        ds.stream_sha = sha_file.read_text().strip()
    else:
        ds.stream_sha = sha256_file(stream)
        sha_file.write_text(ds.stream_sha + "\n")
    log(f"dataset ready in {time.monotonic() - t0:.0f}s: {ds.describe(args.versions)}")
    return ds


# ---------------------------------------------------------------------------------------------
# Tools
#
# A Tool knows how to drive one program; a repository is a directory the caller creates fresh and
# deletes. Every method returns the commands to run as (argv, env, cwd) steps, so the caller alone
# times them. A store of several files is one command for tools that take a directory (restic,
# borg) and one command per file for those whose unit is a file (tessera, casync).


class Tool:
    name = "?"

    def version(self, r: Runner) -> str:
        raise NotImplementedError

    def init(self, repo: Path) -> list:
        """Commands creating an empty repository in repo (which does not exist yet)."""
        raise NotImplementedError

    def store_file(self, repo: Path, path: Path, tag: str) -> list:
        """Commands storing one file under the name tag."""
        raise NotImplementedError

    def store_files(self, repo: Path, paths: list[Path], tag: str, force_read=False) -> list:
        """Commands storing several files (all in one directory) under the name tag. force_read:
        re-read files the tool already knows unchanged (no files cache)."""
        raise NotImplementedError

    def restore(self, repo: Path, path: Path, tag: str, outdir: Path) -> tuple[list, Path]:
        """Commands writing the file stored as tag below outdir; and where it will be."""
        raise NotImplementedError

    def noop(self, repo: Path) -> list:
        """A command doing next to nothing on the repository (the fixed cost of a command)."""
        raise NotImplementedError


class Tessera(Tool):
    name = "tessera"

    def __init__(self, binary: Path, chunks=DEFAULT_PRESET):
        self.bin = binary
        self.chunks = chunks

    def version(self, r):
        out, _ = r.run([self.bin, "--version"], capture=True)
        return out.strip()

    def base(self, repo, owner=None):
        cmd = [self.bin, "--store", repo, "-q"]
        return cmd + (["--owner", owner] if owner else [])

    def init(self, repo):
        lo, avg, hi = self.chunks
        return [(self.base(repo) + ["init", "--chunk-min", f"{lo}KiB", "--chunk-avg",
                                    f"{avg}KiB", "--chunk-max", f"{hi}KiB"], None, None)]

    def store_file(self, repo, path, tag):
        return [(self.base(repo) + ["put", path, "--key", tag], None, None)]

    def store_files(self, repo, paths, tag, force_read=False):
        # Tessera keeps no files cache: a put always reads and hashes the file.
        return [(self.base(repo) + ["put", p, "--key", f"{tag}/{p.name}"], None, None)
                for p in paths]

    def restore(self, repo, path, tag, outdir):
        out = outdir / path.name
        return [(self.base(repo) + ["get", tag, "-o", out, "--force"], None, None)], out

    def noop(self, repo):
        return [(self.base(repo) + ["stats"], None, None)]


class Restic(Tool):
    name = "restic"

    def env(self, repo):
        # restic always encrypts; its local cache lives beside the repository, not in it.
        return {"RESTIC_PASSWORD": "tessera-compare", "RESTIC_REPOSITORY": str(repo),
                "RESTIC_CACHE_DIR": str(repo.parent / (repo.name + ".cache"))}

    def version(self, r):
        out, _ = r.run(["restic", "version"], capture=True)
        return out.strip().split(" compiled")[0]

    def init(self, repo):
        return [(["restic", "init"], self.env(repo), None)]

    def store_file(self, repo, path, tag):
        return [(["restic", "backup", "-q", "--tag", tag, path], self.env(repo), None)]

    def store_files(self, repo, paths, tag, force_read=False):
        cmd = ["restic", "backup", "-q", "--tag", tag] + (["--force"] if force_read else [])
        return [(cmd + [paths[0].parent], self.env(repo), None)]

    def restore(self, repo, path, tag, outdir):
        cmd = ["restic", "restore", "-q", "latest", "--tag", tag, "--target", outdir]
        # restic recreates the absolute path below the target.
        return [(cmd, self.env(repo), None)], outdir / str(path).lstrip("/")

    def noop(self, repo):
        return [(["restic", "snapshots", "-q"], self.env(repo), None)]


class Borg(Tool):
    def __init__(self, compression: str):
        self.compression = compression
        self.name = f"borg {compression}"

    def env(self, repo):
        # The files cache and security data live in BORG_BASE_DIR: one per repository, fresh.
        return {"BORG_BASE_DIR": str(repo.parent / (repo.name + ".base")),
                "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
                "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}

    def version(self, r):
        out, _ = r.run(["borg", "--version"], capture=True)
        return out.strip()

    def init(self, repo):
        return [(["borg", "init", "--encryption", "none", repo], self.env(repo), None)]

    def store_file(self, repo, path, tag):
        # Archived by its name relative to its directory (borg keeps the path as given).
        return [(["borg", "create", "--compression", self.compression, f"{repo}::{tag}",
                  path.name], self.env(repo), path.parent)]

    def store_files(self, repo, paths, tag, force_read=False):
        d = paths[0].parent
        cmd = ["borg", "create", "--compression", self.compression]
        cmd += ["--files-cache", "disabled"] if force_read else []
        return [(cmd + [f"{repo}::{tag}", d.name], self.env(repo), d.parent)]

    def restore(self, repo, path, tag, outdir):
        outdir.mkdir(parents=True, exist_ok=True)
        return ([(["borg", "extract", f"{repo}::{tag}", path.name], self.env(repo), outdir)],
                outdir / path.name)

    def noop(self, repo):
        return [(["borg", "list", repo], self.env(repo), None)]


class Casync(Tool):
    name = "casync"
    # The same chunk sizes as Tessera's default (min:avg:max bytes).
    CHUNKS = "--chunk-size=16384:65536:262144"

    def version(self, r):
        out, _ = r.run(["casync", "--version"], capture=True)
        return "casync " + out.strip().split()[-1]

    def store(self, repo):
        return f"--store={repo / 'default.castr'}"

    def init(self, repo):
        # No init command: the store appears on the first make. Index files go to repo/idx so
        # they count toward the stored bytes.
        return [(["mkdir", "-p", repo / "idx"], None, None)]

    def store_file(self, repo, path, tag):
        return [(["casync", "make", self.store(repo), self.CHUNKS, repo / "idx" / f"{tag}.caibx",
                  path], None, None)]

    def store_files(self, repo, paths, tag, force_read=False):
        return [s for p in paths for s in self.store_file(repo, p, f"{tag}-{p.name}")]

    def restore(self, repo, path, tag, outdir):
        outdir.mkdir(parents=True, exist_ok=True)
        out = outdir / path.name
        return [(["casync", "extract", self.store(repo), "--seed-output=no",
                  repo / "idx" / f"{tag}.caibx", out], None, None)], out

    def noop(self, repo):
        # casync has no repository to open: the closest no-op is storing a tiny file.
        return self.store_file(repo, self.tiny, f"noop-{time.monotonic_ns()}")


# ---------------------------------------------------------------------------------------------
# Measurements


ROWS = [
    ("ingest_first", "ingest, first release (MB/s)"),
    ("ingest_later", "ingest, later releases (MB/s, each its own command)"),
    ("stored_releases", "stored MB, releases"),
    ("ratio_releases", "stored-size ratio, releases (logical / on disk)"),
    ("ingest_first_flat", "flat releases: ingest, first (MB/s)"),
    ("ingest_later_flat", "flat releases: ingest, later (MB/s)"),
    ("stored_releases_flat", "flat releases: stored MB"),
    ("ratio_releases_flat", "flat releases: stored-size ratio"),
    ("ingest_stream", "ingest, one stream, new data (MB/s)"),
    ("stored_stream", "stored MB, stream"),
    ("rss_stream", "peak RSS, stream ingest (MiB)"),
    ("restore_stream", "restore, stream, to a file (MB/s)"),
    ("rss_restore", "peak RSS, stream restore (MiB)"),
    ("ingest_random", "ingest, random files, new (MB/s)"),
    ("ingest_random_again", "ingest, random files again, as usual (MB/s)"),
    ("ingest_random_forced", "ingest, random files again, re-read forced (MB/s)"),
    ("fixed_cost", "fixed cost per command (s, median)"),
    ("put_tiny", "store one 4 KiB file (s, median)"),
]

FMT = {"stored_releases": "{:.1f}", "stored_stream": "{:.1f}", "ratio_releases": "{:.2f}",
       "stored_releases_flat": "{:.1f}", "ratio_releases_flat": "{:.2f}",
       "fixed_cost": "{:.3f}", "put_tiny": "{:.3f}", "rss_stream": "{:.0f}",
       "rss_restore": "{:.0f}"}


def fmt(key, v) -> str:
    if v is None:
        return "-"
    return FMT.get(key, "{:.0f}").format(v)


def run_steps(r: Runner, steps):
    for cmd, env, cwd in steps:
        r.run(cmd, env=env, cwd=cwd)


def fresh(path: Path) -> Path:
    for p in path.parent.glob(path.name + "*"):  # the repo and its .cache / .base siblings
        rmtree(p)
    return path


def measure_releases(r: Runner, tool: Tool, repo: Path, files: list[Path], sfx="") -> dict:
    """The releases in order, each stored by its own command; sfx names the release set."""
    run_steps(r, tool.init(fresh(repo)))
    first, *later = files
    t_first, _ = r.timed(tool.store_file(repo, first, "rel-0"))
    t_later = 0.0
    for i, p in enumerate(later, 1):
        t, _ = r.timed(tool.store_file(repo, p, f"rel-{i}"))
        t_later += t
    logical = sum(p.stat().st_size for p in files)
    stored = dir_bytes(repo)
    return {"ingest_first" + sfx: first.stat().st_size / MB / t_first,
            "ingest_later" + sfx: sum(p.stat().st_size for p in later) / MB / t_later,
            "stored_releases" + sfx: stored / MB, "ratio_releases" + sfx: logical / stored,
            "_logical_releases" + sfx: logical}


def measure_stream(r: Runner, tool: Tool, repo: Path, outdir: Path, ds: Dataset) -> dict:
    run_steps(r, tool.init(fresh(repo)))
    size = ds.stream.stat().st_size
    t, rss = r.timed(tool.store_file(repo, ds.stream, "stream"))
    res = {"ingest_stream": size / MB / t, "rss_stream": rss, "stored_stream": dir_bytes(repo) / MB}
    rmtree(outdir)
    outdir.mkdir(parents=True)
    steps, out = tool.restore(repo, ds.stream, "stream", outdir)
    t, rss = r.timed(steps)
    if not out.exists() or out.stat().st_size != size or sha256_file(out) != ds.stream_sha:
        raise Fail(f"{tool.name}: the restored stream at {out} differs from {ds.stream}")
    res.update(restore_stream=size / MB / t, rss_restore=rss)
    rmtree(outdir)
    return res


def measure_random(r: Runner, tool: Tool, repo: Path, ds: Dataset) -> dict:
    run_steps(r, tool.init(fresh(repo)))
    size = sum(p.stat().st_size for p in ds.randoms) / MB
    t1, _ = r.timed(tool.store_files(repo, ds.randoms, "random"))
    t2, _ = r.timed(tool.store_files(repo, ds.randoms, "again"))
    t3, _ = r.timed(tool.store_files(repo, ds.randoms, "forced", force_read=True))
    return {"ingest_random": size / t1, "ingest_random_again": size / t2,
            "ingest_random_forced": size / t3}


def measure_fixed(r: Runner, tool: Tool, repo: Path, ds: Dataset, n: int) -> dict:
    run_steps(r, tool.init(fresh(repo)))
    run_steps(r, tool.store_file(repo, ds.tiny, "tiny"))
    noop, put = [], []
    for i in range(n):
        t0 = time.monotonic()
        run_steps(r, tool.noop(repo))
        noop.append(time.monotonic() - t0)
    for i in range(n):
        t, _ = r.timed(tool.store_file(repo, ds.tiny, f"tiny-{i}"))
        put.append(t)
    return {"_noop_all": noop, "_put_all": put}


def wait_for_load(args) -> float:
    load = os.getloadavg()[0]
    if args.wait_load <= 0 or load < args.wait_load:
        return load
    log(f"load {load:.2f} >= {args.wait_load}: waiting up to {args.wait_max}s")
    deadline = time.monotonic() + args.wait_max
    while time.monotonic() < deadline:
        time.sleep(10)
        load = os.getloadavg()[0]
        if load < args.wait_load:
            break
    return load


def run_compare(r: Runner, tools: list[Tool], ds: Dataset, args) -> tuple[dict, list, list]:
    """Every repetition runs every tool once, in turn, so background noise spreads over all."""
    raw = {t.name: {} for t in tools}  # tool -> key -> [values]
    loads = []
    scratch = args.work / "repos"
    for rep in range(args.reps):
        for tool in tools:
            load = wait_for_load(args)
            loads.append(f"rep {rep + 1} {tool.name}: {load:.2f}")
            log(f"rep {rep + 1}/{args.reps} {tool.name} (load {load:.2f})")
            slug = tool.name.replace(" ", "-").replace(",", "")
            res = {}
            for files, sfx in ((ds.releases, ""), (ds.flats, "_flat")):
                repo = scratch / f"{slug}-releases{sfx}"
                res.update(measure_releases(r, tool, repo, files, sfx))
                rmtree(repo)
            res.update(measure_stream(r, tool, scratch / f"{slug}-stream",
                                      scratch / f"{slug}-restore", ds))
            rmtree(scratch / f"{slug}-stream")
            res.update(measure_random(r, tool, scratch / f"{slug}-random", ds))
            per_rep = -(-args.fixed_n // args.reps)  # --fixed-n in total over the repetitions
            res.update(measure_fixed(r, tool, scratch / f"{slug}-small", ds, per_rep))
            for p in scratch.glob(f"{slug}-*"):
                rmtree(p)
            for k, v in res.items():
                raw[tool.name].setdefault(k, []).append(v)
            log(f"  {tool.name}: " + ", ".join(f"{k}={fmt(k, v)}" for k, v in res.items()
                                                 if not k.startswith("_")))
    table = {}
    for tool in tools:
        t = raw[tool.name]
        cells = {k: statistics.median(v) for k, v in t.items() if not k.startswith("_")}
        cells["fixed_cost"] = statistics.median([x for xs in t["_noop_all"] for x in xs])
        cells["put_tiny"] = statistics.median([x for xs in t["_put_all"] for x in xs])
        table[tool.name] = cells
    return table, raw, loads


PRESET_METRICS = [
    ("dedup_ratio", "dedup ratio (stats: logical / unique)", "{:.2f}"),
    ("ratio_releases", "stored-size ratio (logical / on disk)", "{:.2f}"),
    ("stored_releases", "stored MB (on disk)", "{:.1f}"),
    ("ingest_first", "ingest, first release (MB/s)", "{:.0f}"),
    ("ingest_later", "ingest, later releases (MB/s)", "{:.0f}"),
    ("ingest_all", "ingest, all releases (MB/s)", "{:.0f}"),
    ("index_mb", "index file size (MB)", "{:.2f}"),
    ("chunks", "chunks", "{:.0f}"),
]
PRESET_SETS = [("", "releases"), ("_flat", "flat releases")]
PRESET_ROWS = [(k + sfx, f"{label}: {m}") for sfx, label in PRESET_SETS
               for k, m, _ in PRESET_METRICS]
PRESET_FMT = {k + sfx: f for sfx, _ in PRESET_SETS for k, _, f in PRESET_METRICS}


def run_presets(r: Runner, binary: Path, ds: Dataset, args) -> dict:
    """Tessera alone, one fresh store per chunk preset, on both release sets."""
    table = {}
    for lo, avg, hi in PRESETS:
        name = f"{lo}/{avg}/{hi} KiB" + (" (default)" if (lo, avg, hi) == DEFAULT_PRESET else "")
        tool = Tessera(binary, (lo, avg, hi))
        runs = []
        for rep in range(args.reps):
            load = wait_for_load(args)
            log(f"presets rep {rep + 1}/{args.reps} {name} (load {load:.2f})")
            res = {}
            for files, sfx in ((ds.releases, ""), (ds.flats, "_flat")):
                repo = args.work / "repos" / f"preset-{lo}-{avg}-{hi}{sfx}"
                m = measure_releases(r, tool, repo, files, sfx)
                out, _ = r.run(tool.base(repo) + ["--json", "stats"], capture=True)
                try:
                    st = json.loads(out)
                    m["dedup_ratio" + sfx] = st["logical_bytes"] / st["unique_bytes"]
                    m["chunks" + sfx] = st["chunks"]
                except (ValueError, KeyError) as e:
                    raise Fail(f"tessera stats --json: no {e} in {out[:500]!r}") from e
                m["index_mb" + sfx] = (repo / "index.redb").stat().st_size / MB
                total = m["_logical_releases" + sfx] / MB
                first = files[0].stat().st_size / MB
                m["ingest_all" + sfx] = total / (first / m["ingest_first" + sfx]
                                                 + (total - first) / m["ingest_later" + sfx])
                rmtree(repo)
                res.update(m)
            log("  " + ", ".join(f"{k}={PRESET_FMT[k].format(v)}" for k, v in res.items()
                                 if k in PRESET_FMT))
            runs.append(res)
        table[name] = {k: statistics.median([x[k] for x in runs]) for k in runs[0]
                       if not k.startswith("_")}
    return table


# ---------------------------------------------------------------------------------------------
# Output


def render(rows, table, fmtf, first_col="") -> str:
    cols = list(table)
    body = [[label] + [fmtf(k, table[c].get(k)) for c in cols] for k, label in rows]
    head = [first_col] + cols
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    line = lambda row: "  ".join(  # noqa: E731
        cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row))
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(head), sep] + [line(r) for r in body])


def write_tsv(path: Path, header: list[str], rows, table, fmtf) -> None:
    cols = list(table)
    lines = [f"# {h}" for h in header]
    lines.append("\t".join(["metric"] + cols))
    for k, label in rows:
        lines.append("\t".join([label] + [fmtf(k, table[c].get(k)) for c in cols]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    return (f"nproc {os.cpu_count()}, {model}, {mem:.0f} GiB RAM, "
            f"{platform.system()} {platform.release()}")


# ---------------------------------------------------------------------------------------------
# Setup


def ensure_tools(r: Runner, need_peers: bool) -> None:
    wanted = {"time": "/usr/bin/time"}
    if need_peers:
        wanted.update(restic="restic", borgbackup="borg", casync="casync")
    missing = [pkg for pkg, exe in wanted.items() if not shutil.which(exe)]
    if missing:
        if os.geteuid() != 0:
            raise Fail(f"missing {', '.join(missing)} and not root: install them with "
                       f"apt-get install -y {' '.join(missing)}")
        log(f"installing from Debian: {' '.join(missing)}")
        r.run(["apt-get", "update"])
        r.run(["apt-get", "install", "-y", *missing],
              env={"DEBIAN_FRONTEND": "noninteractive"})
        still = [pkg for pkg, exe in wanted.items() if not shutil.which(exe)]
        if still:
            raise Fail(f"still missing after apt-get install: {', '.join(still)}")


def build_tessera(r: Runner, args) -> Path:
    if args.tessera:
        binary = Path(args.tessera).resolve()
    else:
        log("cargo build --release")
        r.run(["cargo", "build", "--release", "--bin", "tessera"], cwd=ROOT)
        target = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
        if not target.is_absolute():
            target = ROOT / target
        binary = target / "release" / "tessera"
    if not os.access(binary, os.X_OK):
        raise Fail(f"no tessera binary at {binary}")
    return binary


TOOL_NAMES = ["tessera", "restic", "borg-lz4", "borg-zstd", "casync"]


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/tessera-compare"),
                    help="work directory: dataset, repositories, logs (default %(default)s)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--presets", action="store_true",
                      help="measure Tessera's chunk presets on the releases instead")
    mode.add_argument("--all", action="store_true", help="the comparison, then the presets")
    ap.add_argument("--reps", type=int, default=3,
                    help="repetitions of every measurement; the table shows medians (default 3)")
    ap.add_argument("--fixed-n", type=int, default=10,
                    help="commands for each fixed-cost row, spread over the repetitions "
                    "(default 10)")
    ap.add_argument("--tools", default="tessera,restic,borg-lz4,borg-zstd,casync",
                    help="comma-separated subset of tessera,restic,borg-lz4,borg-zstd,casync")
    ap.add_argument("--versions", default=",".join(DEFAULT_VERSIONS),
                    help="openssl-src versions for the releases, comma-separated, oldest first")
    ap.add_argument("--stream-mb", type=int, default=500, help="stream size in MB (10^6 bytes)")
    ap.add_argument("--random-files", type=int, default=4)
    ap.add_argument("--random-mib", type=int, default=64)
    ap.add_argument("--tessera", help="use this tessera binary instead of cargo build --release")
    ap.add_argument("--wait-load", type=float, default=0.0,
                    help="before each tool's turn, wait until the 1-minute load is below this")
    ap.add_argument("--wait-max", type=int, default=120,
                    help="longest wait for --wait-load, seconds (then go on, noted)")
    ap.add_argument("--results", type=Path, default=HERE / "results",
                    help="where the TSV files go (default benches/compare/results)")
    args = ap.parse_args(argv)
    args.work = args.work.resolve()
    args.versions = [v.strip() for v in args.versions.split(",") if v.strip()]
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in args.tools if t not in TOOL_NAMES]
    if unknown or not args.tools:
        ap.error(f"unknown tools: {', '.join(unknown)} (known: {', '.join(TOOL_NAMES)})")
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    return args


def main(argv) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    start_date = datetime.datetime.now().astimezone()
    do_compare = not args.presets
    do_presets = args.presets or args.all
    r = Runner(args.work / "logs" / start_date.strftime("%Y%m%d-%H%M%S"))
    log(f"work directory {args.work}; command logs in {r.logdir}")

    peers_needed = do_compare and any(t != "tessera" for t in args.tools)
    ensure_tools(r, peers_needed)
    binary = build_tessera(r, args)
    ds = build_dataset(r, args)

    makers = {"tessera": lambda: Tessera(binary), "restic": Restic,
              "borg-lz4": lambda: Borg("lz4"), "borg-zstd": lambda: Borg("zstd,3"),
              "casync": Casync}
    tools = [makers[t]() for t in args.tools] if do_compare else [Tessera(binary)]
    for t in tools:
        t.tiny = ds.tiny
    versions = {t.name: t.version(r) for t in tools}
    for name, v in versions.items():
        log(f"{name}: {v}")
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True).stdout.strip() or "?"
    except OSError:
        rev = "?"

    header = [
        f"tessera benches/compare, {start_date.isoformat(timespec='seconds')}, "
        f"tessera at git {rev} (working tree as built)",
        f"machine: {machine()}",
        "versions: " + "; ".join(f"{n}: {v}" for n, v in versions.items()),
        f"dataset: {ds.describe(args.versions)}",
        f"method: medians of {args.reps} repetitions; MB = 10^6 bytes; warm page cache "
        "(inputs read once before, never dropped); each timed command starts after sync(2) and "
        "its time includes a closing sync(2) (tessera, restic, borg fsync their writes "
        "themselves; casync does not); start-up included; one fresh repository per "
        "tool and phase on the same filesystem as the inputs",
        "tools: tessera put per file with --key, default chunks 16/64/256 KiB, zstd 3; restic "
        "(encrypted, repo v2, compression auto) and borg (--encryption none, default chunker) "
        "back up the random files' directory in one command each time, tessera and casync "
        "store them one command per file; casync --chunk-size=16384:65536:262144, default "
        "zstd, stored bytes include its .caibx index files",
        "random again, as usual: restic and borg skip unchanged files via their files "
        "cache/parent snapshot; re-read forced: restic --force, borg --files-cache=disabled "
        "(tessera and casync have no such cache: both rows re-read)",
        "fixed cost: tessera stats, restic snapshots, borg list, casync make of a 4 KiB file "
        "(casync has no repository to open); store one 4 KiB file: put/backup/create/make",
    ]

    # Warm the page cache: every input is read once before anything is timed.
    for p in ds.releases + ds.flats + [ds.stream] + ds.randoms:
        with open(p, "rb") as f:
            while f.read(16 * MIB):
                pass

    out_parts = []
    if do_compare:
        table, raw, loads = run_compare(r, tools, ds, args)
        text = render(ROWS, table, fmt)
        hdr = header + [f"1-minute load at each tool's turn: {'; '.join(loads)}",
                        f"wall time of the run until this table: {time.monotonic() - started:.0f}s"]
        write_tsv(args.results / "latest.tsv", hdr, ROWS, table, fmt)
        raw_lines = ["\t".join(["tool", "metric", "values (one per repetition)"])]
        for tname, t in raw.items():
            for k, v in t.items():
                if k.startswith("_noop") or k.startswith("_put"):
                    v = [x for xs in v for x in xs]
                raw_lines.append("\t".join([tname, k] + [f"{x:.4g}" for x in v]))
        (args.results / "latest-raw.tsv").write_text(
            "\n".join(f"# {h}" for h in hdr) + "\n" + "\n".join(raw_lines) + "\n")
        out_parts.append(text)
    if do_presets:
        ptable = run_presets(r, binary, ds, args)
        pfmt = lambda k, v: "-" if v is None else PRESET_FMT[k].format(v)  # noqa: E731
        ptext = render(PRESET_ROWS, ptable, pfmt, "tessera chunk preset (min/avg/max)")
        hdr = header[:4] + [
            f"presets: tessera only, releases each put as its own command into a fresh store "
            f"made by tessera init --chunk-min/--chunk-avg/--chunk-max; medians of "
            f"{args.reps}; warm cache; times include a closing sync(2)",
            f"wall time of the run until this table: {time.monotonic() - started:.0f}s"]
        write_tsv(args.results / "presets.tsv", hdr, PRESET_ROWS, ptable, pfmt)
        out_parts.append(ptext)

    print()
    for h in header:
        print(f"# {h}")
    for part in out_parts:
        print()
        print(part)
    print(f"\nwall time of the run: {time.monotonic() - started:.0f}s; "
          f"TSV in {args.results}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Fail as e:
        print(f"\ncompare.py: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("\ncompare.py: interrupted", file=sys.stderr)
        sys.exit(130)
