#!/usr/bin/env bash
# Ack latency with flush rounds inside the run: a fresh release server (`--flush-age 10s`,
# on core 1) and `trove-load` (core 0) offering RATE rows/s over 10,000 members for 40 s,
# 1,000-row NDJSON bodies, durable acks. Prints one Markdown table row: offered, label,
# rows/s, ack p50 / p99 / p99.9 ms, WAL group commits over 10 ms, Parquet files written.
#
#   benches/latency.sh RATE [LABEL]     RATE in rows/s, or N% of the maximum: then a 60 s
#                                       run as fast as the server answers comes first, on
#                                       the same server, and sets it (shared machines vary).
#                                       The maximum is what the server sustains with its
#                                       flushes: a shorter burst is partly absorbed by the
#                                       buffer (half of it fills before flushes leave the
#                                       low-priority lane), and 80 % of that is more than the
#                                       server keeps up with.
#
# Extra `trove serve` flags go in TROVE_LATENCY_SERVE_FLAGS (e.g. `--wal-dir /dev/shm/w`);
# TROVE_SWEEP_BIN_DIR runs binaries built elsewhere (an A/B) instead of building these.
set -euo pipefail
cd "$(dirname "$0")/.."
rate=$1; label=${2:-$(git rev-parse --short HEAD)}; max=""
. benches/lib.sh
bench_setup latency 18093
# shellcheck disable=SC2086
"${server[@]}" "$bin/trove" serve --data-dir "$work/data" --listen "127.0.0.1:$port" --flush-age 10s \
  ${TROVE_LATENCY_SERVE_FLAGS:-} > "$work/serve.log" 2>&1 &
pid=$!
trap 'kill -9 $pid 2>/dev/null || true' EXIT
wait_healthy
"${client[@]}" "$bin/trove-load" --url "http://127.0.0.1:$port" --members 10000 --rows 1 \
  --setup-file "$work/setup.json" > /dev/null
if [ "${rate%\%}" != "$rate" ]; then
  "${client[@]}" "$bin/trove-load" --url "http://127.0.0.1:$port" --members 10000 --connections 4 \
    --duration 60s --setup-file "$work/setup.json" --report "$work/max.json" > "$work/max.out" || true  # 429s at the maximum
  max=$(python3 -c 'import json, sys; print(round(json.load(open(sys.argv[1]))["rows_per_sec"]))' "$work/max.json")
  rate=$((max * ${rate%\%} / 100))
  wait_drained  # the measured run starts without the maximum's backlog
fi
"${client[@]}" "$bin/trove-load" --url "http://127.0.0.1:$port" --members 10000 --connections 4 --rate "$rate" \
  --duration 40s --setup-file "$work/setup.json" --report "$work/run.json" > "$work/run.out"
sleep 2
curl -sf "127.0.0.1:$port/metrics" > "$work/metrics.txt"
files=$(awk '$1 == "trove_ingest_files_written_total" { print $2 }' "$work/metrics.txt")
# Group commits (write + fdatasync) over 10 ms, over the whole life (both runs).
slow=$(awk '$1 == "trove_ingest_wal_append_duration_seconds_bucket{le=\"0.01\"}" { fast = $2 }
            $1 == "trove_ingest_wal_append_duration_seconds_count" { n = $2 } END { print n - fast }' "$work/metrics.txt")
# SIGKILL: the WAL holds the rows; the data goes with the work directory.
kill -9 "$pid"; wait "$pid" 2>/dev/null || true
rm -rf "$work/data"
python3 - "$work/run.json" "$rate" "$label" "${files:-0}" "$max" "${slow:-0}" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); a = r["ack_ms"]
offered = f"{int(sys.argv[2]):,}" + (f" (of {int(sys.argv[5]):,})" if sys.argv[5] else "")
print(f"| {offered} | {sys.argv[3]} | {r['rows_per_sec']:,.0f} | "
      f"{a['p50']:.1f} / {a['p99']:.1f} / {a['p999']:.1f} | {sys.argv[6]} | {sys.argv[4]} |")
PY
