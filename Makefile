# Task runner. `make test` is exactly what CI runs (.ci/run calls it).
#
# Every recipe line runs under `bash -euo pipefail`, and no line is prefixed with `-`: the first
# failing command stops make with a non-zero status.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

CARGO ?= cargo
# Seconds each fuzz target runs in `fuzz-smoke`.
FUZZ_SECONDS ?= 20
FUZZ_TARGETS := pack_record chunker manifest
CARGO_FUZZ_VERSION ?= 0.13.2
# cargo-fuzz needs nightly-only rustc flags (sanitizers, coverage passes); the toolchain here is
# stable, which accepts them under RUSTC_BOOTSTRAP. Set only for the fuzz commands, so the main
# crate's builds keep their fingerprints. `-a`: debug assertions on, overflow checks included.
FUZZ := cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz
FUZZ_BUILD_FLAGS := -a

.PHONY: test fmt fmt-check clippy build-minimal unit tus-deps clamd-install garage-install \
	fuzz-install fuzz-build fuzz-smoke fuzz-regressions fuzz-seeds bench

test: fmt-check clippy build-minimal unit fuzz-regressions fuzz-smoke
	@echo "make test: all checks passed"

fmt:
	$(CARGO) fmt --all
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml

fmt-check:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

# The engine alone, without the CLI's dependencies.
build-minimal:
	$(CARGO) build --no-default-features

# `--all-targets` runs lib, bin, integration tests and the benches once each in test mode, but
# not doctests: those need their own run. The tus test runs the reference client under Node.
# The scan tests talk to a real clamd: tests/clamd/start.sh starts a private one (loopback,
# custom signatures only) and prints TESSERA_CLAMD/TESSERA_CLAMD_UNIX for them. The S3 cold
# tier tests talk to a real Garage: tests/garage/start.sh starts a private single-node cluster
# (loopback, temporary directory, its own key and bucket) and prints TESSERA_TEST_S3_* for
# them. If either cannot start, it says why and the run fails. The traps stop them however the
# tests end.
unit: tus-deps clamd-install garage-install
	env=$$(tests/clamd/start.sh); eval "$$env"; \
	  trap 'tests/clamd/stop.sh' EXIT; \
	  genv=$$(tests/garage/start.sh); eval "$$genv"; \
	  trap 'tests/garage/stop.sh; tests/clamd/stop.sh' EXIT; \
	  $(CARGO) test --all-targets
	$(CARGO) test --doc

# clamd comes from Debian's clamav-daemon (.ci/run installs it when missing).
# Debian's clamav-daemon, installed when missing (as root, like .ci/run does), so `make test`
# works on a fresh machine; its packaged service is not used.
clamd-install:
	if ! command -v clamd >/dev/null && [[ ! -x /usr/sbin/clamd ]]; then \
	  if [[ $$(id -u) -ne 0 ]]; then \
	    echo "clamd is missing: apt-get install -y clamav-daemon as root (the scan tests need a real clamd)" >&2; \
	    exit 1; \
	  fi; \
	  echo "installing Debian's clamav-daemon"; \
	  apt-get update -qq && apt-get install -y -qq clamav-daemon; \
	fi
	/usr/sbin/clamd --version

# Garage, the S3-compatible server of the cold tier tests, pinned; built from crates.io
# (cargo install) only when no garage is on PATH or in ~/.cargo/bin. The build is the slowest
# step of a fresh machine, so it is cut to what a single-node test server needs: lmdb metadata
# (tests/garage/start.sh) and bundled C libraries (garage refuses to build without bundled-libs
# or system-libs); no sqlite, k2v or metrics; opt-level 1. Measured on the shared 2-core
# machine while another build ran (2026-11-29): 13 min, against 31 min for the default
# features at opt-level 3 under heavier load. GARAGE_INSTALL_FLAGS= and
# GARAGE_OPT_LEVEL=3 give the full build (what a benchmark through Garage should use).
GARAGE_VERSION ?= 2.5.0
CARGO_HOME_DIR := $(or $(CARGO_HOME),$(HOME)/.cargo)
# Looked up when used (after an install).
GARAGE_BIN = $(or $(shell command -v garage 2>/dev/null),$(CARGO_HOME_DIR)/bin/garage)
GARAGE_INSTALL_FLAGS ?= --no-default-features --features bundled-libs,lmdb
GARAGE_OPT_LEVEL ?= 1

garage-install:
	if ! command -v garage >/dev/null && [[ ! -x $(CARGO_HOME_DIR)/bin/garage ]]; then \
	  echo "installing garage $(GARAGE_VERSION) (cargo install; several minutes)"; \
	  CARGO_PROFILE_RELEASE_OPT_LEVEL=$(GARAGE_OPT_LEVEL) CARGO_PROFILE_RELEASE_DEBUG=false \
	    $(CARGO) install garage --locked --version $(GARAGE_VERSION) $(GARAGE_INSTALL_FLAGS); \
	fi
	$(GARAGE_BIN) --version


# The Node harness of the tus test (tests/tus: tus-js-client, pinned by package-lock.json),
# installed when node_modules is missing or older than the lock file.
TUS_DEPS := tests/tus/node_modules/.package-lock.json
tus-deps: $(TUS_DEPS)

$(TUS_DEPS): tests/tus/package.json tests/tus/package-lock.json
	command -v node >/dev/null || { echo "node is missing: install Node.js (and npm) for the tus test" >&2; exit 1; }
	command -v npm >/dev/null || { echo "npm is missing: install npm for the tus test" >&2; exit 1; }
	npm ci --prefix tests/tus --no-audit --no-fund
	touch $@

fuzz-install:
	if ! $(CARGO) fuzz --version >/dev/null 2>&1; then \
	  echo "installing cargo-fuzz $(CARGO_FUZZ_VERSION)"; \
	  $(CARGO) install cargo-fuzz --locked --version $(CARGO_FUZZ_VERSION); \
	fi
	$(CARGO) fuzz --version

fuzz-build: fuzz-install
	$(FUZZ) build $(FUZZ_BUILD_FLAGS)

# Each target for FUZZ_SECONDS, starting from the committed seeds (fuzz/seeds/<target>) and
# whatever corpus earlier runs left (fuzz/corpus/<target>, not committed). A crash or failed
# assertion stops here; the input is saved under fuzz/artifacts/<target>/.
fuzz-smoke: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
	  echo "== fuzz $$t for $(FUZZ_SECONDS)s"; \
	  mkdir -p fuzz/corpus/$$t; \
	  ( $(FUZZ) run $(FUZZ_BUILD_FLAGS) $$t corpus/$$t seeds/$$t -- \
	      -max_total_time=$(FUZZ_SECONDS) -timeout=10 -print_final_stats=1 ) \
	    || { echo "fuzz target $$t FAILED (input saved in fuzz/artifacts/$$t/)" >&2; exit 1; }; \
	done

# Runs each saved input of fuzz/regressions/<target>/ once, without fuzzing: inputs that once
# broke a contract (see fuzz/README.md).
fuzz-regressions: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
	  if [[ -d fuzz/regressions/$$t ]]; then \
	    echo "== fuzz regressions: $$t"; \
	    ( $(FUZZ) run $(FUZZ_BUILD_FLAGS) $$t regressions/$$t -- -runs=0 ) \
	      || { echo "fuzz regression input for $$t FAILED" >&2; exit 1; }; \
	  fi; \
	done

# Regenerates fuzz/seeds/ after a format change (commit the result; it is a few KB).
fuzz-seeds:
	cd fuzz && rm -rf seeds && $(CARGO) run --example seeds -- seeds

bench:
	$(CARGO) bench --bench core
