#!/usr/bin/env bash
# Ingest throughput and ack latency with wrk: 1,000-row batches for 10,000 members, durable
# acks, the release server on core 1 and wrk on core 0 (the issue's setup). Until the load
# generator of the benchmarks issue lands, this is how the figures in the issue notes are
# made. Needs wrk (Debian) and pyarrow (PyPI).
#
#   benches/wrk/run.sh ndjson|arrow [SECONDS] [CONNECTIONS] [extra `trove serve` flags]
set -euo pipefail
cd "$(dirname "$0")/../.."
fmt=${1:-ndjson}; secs=${2:-20}; conns=${3:-2}; shift $(( $# < 3 ? $# : 3 ))
work=/tmp/trove-wrk
mkdir -p "$work"
[ -f target/release/trove ] || cargo build --release --bin trove
if [ ! -d "$work/template" ]; then
  target/release/trove demo --data-dir "$work/template" --members 10001 --json > "$work/creds.json"
  python3 benches/wrk/make_bodies.py "$work"
fi
rm -rf "$work/data" && cp -r "$work/template" "$work/data"
AUTH="$(python3 -c "import json; s=json.load(open('$work/creds.json'))['subscribers'][0]['connection']; print(f\"{s['nid']}:{s['key']}\")")"
taskset -c 1 target/release/trove serve --data-dir "$work/data" --listen 127.0.0.1:18090 "$@" > "$work/serve.log" 2>&1 &
pid=$!
trap 'kill -9 $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf 127.0.0.1:18090/health > /dev/null && break; sleep 0.1; done
ct=application/x-ndjson; [ "$fmt" = arrow ] && ct=application/vnd.apache.arrow.stream
AUTH=$AUTH BODY_DIR=$work BODY_EXT=$fmt CONTENT_TYPE=$ct taskset -c 0 \
  wrk -t1 -c"$conns" -d"${secs}s" --latency -s benches/wrk/post.lua http://127.0.0.1:18090/v1/ingest/ds_energy_consumption
echo "rows/s = requests/s x 1000; server $(grep VmRSS /proc/$pid/status)"
