#!/usr/bin/env bash
# The crash suite alone (tests/e2e/crash.rs): the real binary under sustained ingest, killed
# with SIGKILL at random moments and restarted, on the local directory and on S3.
#   scripts/crash.sh          50 kills per object store, as CI runs it (about 2 minutes)
#   scripts/crash.sh --long   500 kills per object store (about 20 minutes)
# TROVE_CRASH_KILLS sets any other number.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--long" ]; then
  export TROVE_CRASH_KILLS="${TROVE_CRASH_KILLS:-500}"
fi
if [ -z "${TROVE_TEST_S3_ENDPOINT:-}" ]; then
  eval "$(scripts/start-s3.sh)"
  trap 'scripts/start-s3.sh stop' EXIT
fi
cargo nextest run --locked --test e2e -E 'test(/^crash::/)' --no-capture
