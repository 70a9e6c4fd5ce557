#!/usr/bin/env bash
# API fuzzing (issue 6): schemathesis against /openapi.json of the real `trove` binary, with
# every check on: no 5xx, every error problem+json, every answer matching the documented
# status, content type, headers and schema, schema-valid requests accepted and invalid ones
# refused, and no route that ignores its credential. Each operation gets its role's
# credential (scripts/api-fuzz/hooks.py). Fails on any finding and on any panic in the
# server's log.
#
#   scripts/api-fuzz.sh            bounded run for CI (TROVE_API_FUZZ_EXAMPLES cases per operation)
#   scripts/api-fuzz.sh --long     many more cases per operation, at most 30 minutes
# Further arguments go to `st run` (e.g. --include-path-regex '^/api/pds/').
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
examples="${TROVE_API_FUZZ_EXAMPLES:-25}"
max_time=()
if [ "${1:-}" = "--long" ]; then
  shift
  examples="${TROVE_API_FUZZ_EXAMPLES:-500}"
  max_time=(--max-time 1800)
fi

# Run as `python3 -m` so it is the interpreter pip installed into (as for pyarrow in test.sh).
st() { python3 -m schemathesis.cli "$@"; }
if ! st --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"; then
  python3 -m pip install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" >&2
fi
# Built here too, so a stale binary is never fuzzed: the same selection as scripts/test.sh's
# build (a no-op after it; `--bin trove` alone resolves other features and rebuilds every
# dependency).
cargo build --locked --workspace --all-targets
trove="${CARGO_TARGET_DIR:-target}/debug/trove"

work="$(mktemp -d)"
server=""
# shellcheck disable=SC2317  # invoked by the EXIT trap below
cleanup() {
  local rc=$?
  if [ -n "$server" ]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
url="http://127.0.0.1:$port"
"$trove" demo --json --members 3 --data-dir "$work/data" >"$work/demo.json" 2>"$work/demo.log"
"$trove" serve --data-dir "$work/data" --listen "127.0.0.1:$port" >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do
  curl -fsS "$url/health" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { cat "$work/server.log" >&2; echo "api-fuzz: the server did not start" >&2; exit 1; }
  sleep 0.1
done

started=$(date +%s)
status=0
# One worker: hypothesis on several threads trips a CPython 3.11 `ast.parse` bug ("AST
# constructor recursion depth mismatch"). Run from the scratch directory, where schemathesis
# keeps its `.schemathesis/` crash files.
here="$PWD"
(cd "$work" && TROVE_API_FUZZ_DEMO="$work/demo.json" TROVE_API_FUZZ_URL="$url" \
  SCHEMATHESIS_HOOKS=hooks PYTHONPATH="$here/scripts/api-fuzz${PYTHONPATH:+:$PYTHONPATH}" \
  st --config-file "$here/scripts/api-fuzz/schemathesis.toml" run "$url/openapi.json" \
  --checks all --max-examples "$examples" "${max_time[@]}" --seed "${TROVE_API_FUZZ_SEED:-6}" \
  "$@" --workers 1 --no-color --generation-database none) 2>&1 | tee "$work/st.log" || status=$?
elapsed=$(( $(date +%s) - started ))

panics=$(grep -c "panicked" "$work/server.log" || true)
if [ "$panics" != 0 ]; then
  grep -B2 -A10 "panicked" "$work/server.log" >&2
  status=1
fi
operations=$(sed -n 's/^  Tested: \([0-9]*\).*/\1/p' "$work/st.log")
cases=$(sed -n 's/^  \([0-9]*\) generated.*/\1/p' "$work/st.log")
failures=$(sed -n 's/.* found \([0-9]*\) unique failure.*/\1/p' "$work/st.log")
errors=$(grep -c "^Runtime Error\|^Network Error" "$work/st.log" || true)
echo "api-fuzz: ${operations:-0} operations, ${cases:-0} cases, ${failures:-0} failures, $errors errors, $panics panics in ${elapsed}s (schemathesis $SCHEMATHESIS_VERSION, $examples examples an operation)"
exit "$status"
