#!/usr/bin/env bash
# Setting members up (issue 18): a release server (core 1) on a fresh data directory, and
# `trove-load` (core 0) creating MEMBERS members through the operator's bulk path, then each
# member approving the loaded connection through the API with its own secret (16 in flight).
# Prints the load generator's setup lines (members created, then everything approved) and
# the server's CPU time over the whole setup (a second per 1,000 members is 1 ms each) and
# its resident memory when setup is done (what an ingest run after it starts from).
#
#   benches/approvals.sh [MEMBERS]   default 100,000; TROVE_SWEEP_BIN_DIR for an A/B
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
members=${1:-100000}
bench_setup approvals 18094
pid=""
trap 'kill $pid 2>/dev/null || true' EXIT
"${server[@]}" "$bin/trove" serve --data-dir "$work/data" --listen "127.0.0.1:$port" > "$work/serve.log" 2>&1 &
pid=$!
wait_healthy
"${client[@]}" "$bin/trove-load" --url "http://127.0.0.1:$port" --members "$members" --rows 1 \
  > "$work/run.out" 2> "$work/setup.err"
awk '{ print "server CPU: " ($14 + $15) / 100 " s" }' "/proc/$pid/stat"  # utime + stime, in ticks of 10 ms
awk '$1 == "VmRSS:" { r = $2 } $1 == "VmHWM:" { h = $2 } END { printf "server RSS: %d MiB (peak %d MiB)\n", r / 1024, h / 1024 }' "/proc/$pid/status"
grep '^setup:' "$work/setup.err" | grep -v 'agreements$'
