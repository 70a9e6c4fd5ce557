#!/usr/bin/env bash
# The load generator's standard runs against a fresh release server: the server on core 1,
# `trove-load` on core 0 (on a 2-core machine: "one server core"), durable acks (fsync per
# group commit), default flags otherwise. Prints one Markdown table and keeps every JSON
# report in the work directory.
#
#   benches/load.sh [SECONDS] [extra `trove serve` flags]      (default 20 s a run)
#
# Needs only the Rust toolchain and python3 (for the table).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}; shift $(( $# < 1 ? $# : 1 ))
work=${TROVE_LOAD_WORK:-/tmp/trove-load}
port=${TROVE_LOAD_PORT:-18091}
rm -rf "$work" && mkdir -p "$work"
cargo build --release -p trove -p trove-load
trove=target/release/trove
load=target/release/trove-load
server=(taskset -c 1); client=(taskset -c 0)
[ "$(nproc)" -ge 2 ] || { server=(); client=(); }

export TROVE_ADMIN_TOKEN="load-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
"${server[@]}" "$trove" serve --data-dir "$work/data" --listen "127.0.0.1:$port" "$@" > "$work/serve.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 300); do curl -sf "127.0.0.1:$port/health" > /dev/null && break; sleep 0.1; done

run() {  # name, then `trove-load` flags
  local name=$1; shift
  echo "== $name: trove-load $*" >&2
  "${client[@]}" "$load" --url "http://127.0.0.1:$port" --report "$work/$name.json" "$@" > "$work/$name.out"
  head -n -1 "$work/$name.out" >&2
}

# Members set up once per dataset, reused by the later runs of that dataset.
energy=(--setup-file "$work/energy-setup.json")
run energy-ndjson-100 --members 100 --duration "${secs}s" --connections 4 "${energy[@]}"
run energy-arrow-100 --members 100 --format arrow --duration "${secs}s" --connections 4 "${energy[@]}"
run energy-ndjson-100-at-200k --members 100 --rate 200000 --duration "${secs}s" --connections 4 "${energy[@]}"
run energy-ndjson-10000 --members 10000 --duration "${secs}s" --connections 4 --setup-file "$work/energy10k-setup.json"
run browsing-ndjson-1000 --workload browsing --members 1000 --duration "${secs}s" --connections 4
run bank-ndjson-1000 --workload bank --members 1000 --batch 500 --duration "${secs}s" --connections 4
# Its own members: the reads then see only this run's rows, not the earlier runs' cycles.
run mixed-ndjson-100 --workload mixed --members 100 --duration "${secs}s" --connections 4 --readers 2

python3 - "$work" <<'EOF'
import json, pathlib, sys
work = pathlib.Path(sys.argv[1])
print("\n| run | rows/s | MB/s | bytes/row | ack p50 / p99 / p99.9 ms | refused | server CPU (cores) | server RSS max | reads p50 / p99 ms |")
print("|---|---|---|---|---|---|---|---|---|")
for f in sorted(work.glob("*.json"), key=lambda p: p.stat().st_mtime):
    if f.name.endswith("setup.json"):
        continue
    r = json.loads(f.read_text())
    s = r.get("server") or {}
    a = r["ack_ms"]
    reads = "; ".join(f"{d} {v['ms']['p50']:.1f} / {v['ms']['p99']:.1f}" for d, v in (r.get("reads") or {}).items()) or "-"
    print(f"| {f.stem} | {r['rows_per_sec']:,.0f} | {r['mb_per_sec']:.1f} | {r['bytes_per_row']:.0f} | "
          f"{a['p50']:.1f} / {a['p99']:.1f} / {a['p999']:.1f} | {r['refused']} | {s.get('cores_busy', 0):.2f} | "
          f"{s.get('rss_max_bytes', 0) / 2**20:.0f} MiB | {reads} |")
EOF
echo "reports: $work/*.json; server log: $work/serve.log"
