#!/usr/bin/env bash
# A day of smart-meter readings, settled: what an object store bills and keeps for it.
# MEMBERS meters (default 10,000) send 96 readings each, 15 minutes apart and ending now
# (1,000-row NDJSON bodies, durable acks, as fast as the server answers), to a fresh release
# server (core 1; `trove-load` on core 0) whose hot window is short enough for the day to
# settle within the run (`--hot-window 20s --compact-interval 5s`, so each flush round's hot
# file settles on its own: more per-member files than a 24 h window, whose hot files are
# merged before they settle). Waits until no hot file is left and compaction has been idle
# for three passes (and replaced objects are deleted), then prints one Markdown table row: members, rows, rows/s, seconds to
# settle, object-store requests per million rows by kind (PUT, GET, LIST, DELETE), objects
# left, files per member (mean and most), bytes per reading, the server's peak RSS (ingest or
# settling, whichever was higher).
#
#   benches/day.sh [MEMBERS]
#
# Extra `trove serve` flags go in TROVE_DAY_SERVE_FLAGS; TROVE_SWEEP_BIN_DIR runs binaries
# built elsewhere (an A/B) instead of building these.
set -euo pipefail
cd "$(dirname "$0")/.."
members=${1:-10000}
rows=$((members * 96))
. benches/lib.sh
bench_setup day 18094
# shellcheck disable=SC2086
"${server[@]}" "$bin/trove" serve --data-dir "$work/data" --listen "127.0.0.1:$port" --flush-age 10s \
  --hot-window 20s --compact-interval 5s --orphan-grace 1h ${TROVE_DAY_SERVE_FLAGS:-} > "$work/serve.log" 2>&1 &
pid=$!
trap 'kill -9 $pid 2>/dev/null || true' EXIT
wait_healthy

manifest() {  # sql: one value from the server's own catalog
  python3 -c 'import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute(sys.argv[2]).fetchone()[0] or 0)' \
    "$work/data/catalog.db" "$1"
}

"${client[@]}" "$bin/trove-load" --url "http://127.0.0.1:$port" --members "$members" --rows 1 \
  --setup-file "$work/setup.json" > /dev/null
before=$(for op in put get list delete; do requests "$op"; done | paste -sd ' ')
"${client[@]}" "$bin/trove-load" --url "http://127.0.0.1:$port" --members "$members" --connections 4 \
  --rows "$rows" --duration 1h --pool-mib 1024 --setup-file "$work/setup.json" --report "$work/run.json" \
  > "$work/run.out"
sent=$(date +%s)
# Settled: every row in the manifest, no hot file left, the manifest unchanged over three
# compaction passes, and the replaced objects deleted (after the 60 s grace).
last=""; same=0
for _ in $(seq 720); do
  sleep 5
  files=$(manifest "SELECT count(*) || '/' || sum(member_uid = 0) || '/' || sum(row_count) FROM parquet_files")
  state="$files/$(find "$work/data/objects" -name '*.parquet' | wc -l)"
  # (The setup's one row is in the manifest too.)
  if [ "$state" = "$last" ] && [ "$state" = "${files%%/*}/0/$((rows + 1))/${files%%/*}" ]; then same=$((same + 1)); else same=0; fi
  last=$state
  [ "$same" -ge 3 ] && break
done
[ "$same" -ge 3 ] || { echo "day.sh: not settled after an hour (files/hot/rows/objects: $last)" >&2; exit 1; }
settle=$(($(date +%s) - sent - 15))
after=$(for op in put get list delete; do requests "$op"; done | paste -sd ' ')
objects=${files%%/*}
per_member=$(manifest "SELECT printf('%.2f / %d', avg(n), max(n)) FROM (SELECT count(*) AS n FROM parquet_files GROUP BY dataset, member_uid)")
bytes=$(manifest "SELECT printf('%.1f', 1.0 * sum(size_bytes) / sum(row_count)) FROM parquet_files")
peak=$(awk '/^VmHWM/ { printf "%d MiB", $2 / 1024 }' "/proc/$pid/status")
kill -9 "$pid"; wait "$pid" 2>/dev/null || true
rm -rf "$work/data"
python3 - "$work/run.json" "$members" "$settle" "$before" "$after" "$objects" "$per_member" "$bytes" "$peak" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
members, settle = int(sys.argv[2]), int(sys.argv[3])
before, after = map(int, sys.argv[4].split()), map(int, sys.argv[5].split())
per_m = [(a - b) / r["rows"] * 1e6 for a, b in zip(after, before)]
print(f"| {members:,} | {r['rows']:,} | {r['rows_per_sec']:,.0f} | {settle} | "
      + " / ".join(f"{x:,.0f}" for x in per_m)
      + f" | {int(sys.argv[6]):,} | {sys.argv[7]} | {sys.argv[8]} | {sys.argv[9]} |")
PY
