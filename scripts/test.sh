#!/usr/bin/env bash
# The ONE command that runs the whole test suite (locally and in CI).
# Without TROVE_TEST_POSTGRES_URL it starts a private PostgreSQL itself, so the
# PostgreSQL tests always run instead of being skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

stop_s3() { :; }
# shellcheck disable=SC2317  # invoked by the EXIT trap below
stop_services() {
  local rc=$?
  stop_s3 || true
  if [ -n "${STOP_PG:-}" ]; then scripts/start-postgres.sh stop || true; fi
  exit "$rc"
}
trap stop_services EXIT
if [ -z "${TROVE_TEST_POSTGRES_URL:-}" ]; then
  # Stop it on exit only if we started it (a developer's running cluster stays up).
  scripts/start-postgres.sh status 2>/dev/null || STOP_PG=1
  TROVE_TEST_POSTGRES_URL="$(scripts/start-postgres.sh)"
  export TROVE_TEST_POSTGRES_URL
fi
echo "test.sh: PostgreSQL at $TROVE_TEST_POSTGRES_URL" >&2

# The S3 path is tested against a real S3 server (s3s-fs, installed if missing).
if [ -z "${TROVE_TEST_S3_ENDPOINT:-}" ]; then
  eval "$(scripts/start-s3.sh)"
  stop_s3() { scripts/start-s3.sh stop; }
else
  stop_s3() { :; }
fi
echo "test.sh: S3 at $TROVE_TEST_S3_ENDPOINT" >&2

# pyarrow reads trove's Parquet files in the tests, independently of trove.
python3 -c "import pyarrow" 2>/dev/null || python3 -m pip install -q --disable-pip-version-check pyarrow >&2

# The house format (rustfmt.toml) and clippy's lints, warnings as errors: first, and fatal.
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt >&2
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy >&2
cargo fmt --all --check
(cd fuzz && cargo fmt --check)
cargo clippy --workspace --all-targets --locked -- -D warnings

# Compile every target, benches included (what `cargo bench --no-run` checks), so nothing
# rots unbuilt. Dev profile on purpose: the benches' release build would add minutes for
# what the dev build already checks (the load generator itself is run against the real
# server by tests/e2e/load.rs).
cargo build --workspace --all-targets --locked

# Run all suites even if one fails, then report failure. Doctests first (nextest does
# not run them), so the run closes on the main suite's summary.
failed=0
cargo test --workspace --doc --locked || failed=1
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast || failed=1
else
  cargo test --workspace --locked --no-fail-fast || failed=1
fi

# Fault injection (issue 6): the e2e binary again with the `failpoints` feature, running only
# the suite that sets them (the trove crates build twice; DataFusion is shared).
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --features failpoints --test e2e -E 'test(/^faults::/)' || failed=1
else
  cargo test --locked --features failpoints --test e2e faults:: || failed=1
fi

# API fuzzing (issue 6)
scripts/api-fuzz.sh || failed=1

# Fuzzing (issue 6). Its build is a second target directory of several GB: say what is left.
echo "test.sh: disk free before the fuzz build: $(df -h --output=avail . | tail -n 1 | tr -d ' ')" >&2
scripts/fuzz.sh || failed=1

exit "$failed"
