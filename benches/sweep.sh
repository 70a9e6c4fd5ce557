#!/usr/bin/env bash
# The member sweep of the ingest-at-scale issue: the same energy readings (1,000-row NDJSON
# bodies, durable acks, as fast as the server answers) spread round-robin over more and more
# members, each count against a fresh release server (server on core 1, `trove-load` on
# core 0). Prints one Markdown table; every JSON report and server log stays in the work
# directory.
#
#   benches/sweep.sh [SECONDS] [MEMBER COUNTS...]      (default: 20 s; 100 10000 100000)
#
# Extra `trove serve` flags go in TROVE_SWEEP_SERVE_FLAGS. TROVE_SWEEP_BIN_DIR runs binaries
# built elsewhere (an A/B against another checkout) instead of building this one.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}; shift $(( $# < 1 ? $# : 1 ))
counts=("$@"); [ ${#counts[@]} -gt 0 ] || counts=(100 10000 100000)
. benches/lib.sh
bench_setup sweep 18092

for members in "${counts[@]}"; do
  data="$work/data-$members"
  # shellcheck disable=SC2086
  "${server[@]}" "$bin/trove" serve --data-dir "$data" --listen "127.0.0.1:$port" ${TROVE_SWEEP_SERVE_FLAGS:-} \
    > "$work/serve-$members.log" 2>&1 &
  pid=$!
  trap 'kill $pid 2>/dev/null || true' EXIT
  wait_healthy
  echo "== $members members" >&2
  start=$(date +%s.%N)
  "${client[@]}" "$bin/trove-load" --url "http://127.0.0.1:$port" --members "$members" --rows 1 \
    --setup-file "$work/setup-$members.json" > /dev/null
  setup=$(awk "BEGIN { print $(date +%s.%N) - $start }")
  before=("$(requests put)" "$(requests get)")
  "${client[@]}" "$bin/trove-load" --url "http://127.0.0.1:$port" --members "$members" --connections 4 \
    --duration "${secs}s" --setup-file "$work/setup-$members.json" --report "$work/run-$members.json" \
    > "$work/run-$members.out" || true  # refusals (429 when the buffer is full) are a column of the table
  # Let the last flush round land, so PUTs count every row of the run.
  sleep 3
  puts=$(($(requests put) - before[0])); gets=$(($(requests get) - before[1]))
  echo "{\"setup_seconds\": $setup, \"puts\": $puts, \"gets\": $gets}" > "$work/extra-$members.json"
  # SIGKILL, not a graceful stop: the WAL holds the rows, and a graceful stop would flush a
  # file per member (at a million members, about 12 GB of small files on this machine).
  kill -9 "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$data"
done

python3 - "$work" "${counts[@]}" <<'EOF'
import json, pathlib, sys
work = pathlib.Path(sys.argv[1])
print("\n| members | setup s | rows/s | ack p50 / p99 / p99.9 ms | refused | server CPU (cores) | server CPU µs a row | server RSS max | PUTs / GETs per million rows |")
print("|---|---|---|---|---|---|---|---|---|")
for m in sys.argv[2:]:
    r = json.loads((work / f"run-{m}.json").read_text())
    x = json.loads((work / f"extra-{m}.json").read_text())
    s = r.get("server") or {}
    a = r["ack_ms"]
    puts, gets = (x[k] / max(r["rows"], 1) * 1e6 for k in ("puts", "gets"))
    print(f"| {int(m):,} | {x['setup_seconds']:.1f} | {r['rows_per_sec']:,.0f} | "
          f"{a['p50']:.1f} / {a['p99']:.1f} / {a['p999']:.1f} | {r['refused']} | {s.get('cores_busy', 0):.2f} | "
          f"{s.get('cpu_seconds', 0) / max(r['rows'], 1) * 1e6:.2f} | "
          f"{s.get('rss_max_bytes', 0) / 2**20:.0f} MiB | {puts:,.1f} / {gets:,.1f} |")
EOF
