#!/usr/bin/env bash
# A million members (issue 18): a release server (`--flush-age 10s`, on core 1) and
# `trove-load` (core 0) sending energy readings round-robin over 1,000,000 members in
# 1,000-row NDJSON bodies, durable acks, with the server's RSS, buffer and WAL sampled every
# 5 s. Prints the load generator's summary and the samples; the JSON report is left in the
# work directory.
#
#   benches/million.sh [RATE] [SECONDS]   RATE rows/s offered (default 300000; 0: as fast as
#                                         the server answers), for SECONDS (default 90)
#
# Members and their approvals are set up once through the API (about 7 minutes for a
# million) and the data directory kept in TROVE_MILLION_SEED (default
# /tmp/trove-million-seed-N); every run starts a copy of it. TROVE_MILLION_MEMBERS changes
# the member count (e.g. 100, the flatness baseline); TROVE_SWEEP_BIN_DIR runs binaries
# built elsewhere (an A/B). TROVE_MILLION_CHURN=S makes one more member revoke or approve
# its agreement with the loaded connection every S seconds during the run (members consent
# all day; each change is a new authorization generation). Extra `trove serve` flags go in
# TROVE_MILLION_SERVE_FLAGS.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
rate=${1:-300000}; secs=${2:-90}; members=${TROVE_MILLION_MEMBERS:-1000000}
seed=${TROVE_MILLION_SEED:-/tmp/trove-million-seed-$members}
bench_setup million 18093
export TROVE_ADMIN_TOKEN=million-bench-admin-token
pid=""
trap 'kill $pid 2>/dev/null || true' EXIT
if [ ! -f "$seed/setup.json" ]; then
  rm -rf "$seed" && mkdir -p "$seed"
  "${server[@]}" "$bin/trove" serve --data-dir "$seed/data" --listen "127.0.0.1:$port" > "$seed/serve.log" 2>&1 &
  pid=$!
  wait_healthy
  start=$(date +%s)
  "${client[@]}" "$bin/trove-load" --url "http://127.0.0.1:$port" --members "$members" --rows 1 \
    --setup-file "$seed/setup.json.part" > "$seed/setup.out"
  echo "setup of $members members: $(($(date +%s) - start)) s" >&2
  kill -TERM $pid && wait $pid || true
  mv "$seed/setup.json.part" "$seed/setup.json"
fi
cp -a "$seed/data" "$work/data"
# shellcheck disable=SC2086
"${server[@]}" "$bin/trove" serve --data-dir "$work/data" --listen "127.0.0.1:$port" --flush-age 10s \
  ${TROVE_MILLION_SERVE_FLAGS:-} > "$work/serve.log" 2>&1 &
pid=$!
wait_healthy
(t=0; while kill -0 $pid 2>/dev/null; do
  rss=$(awk '/VmRSS/ { print int($2 / 1024) }' /proc/$pid/status 2>/dev/null || true)
  buf=$(curl -sf "127.0.0.1:$port/metrics" | awk '$1 == "trove_ingest_buffer_bytes" { print int($2 / 1048576) }' || true)
  wal=$(du -sm "$work/data/wal" 2>/dev/null | cut -f1 || true)
  echo "t=${t}s rss=${rss}MiB buffer=${buf}MiB wal=${wal}MB"
  sleep 5; t=$((t + 5))
done) > "$work/samples.txt" &
churn=${TROVE_MILLION_CHURN:-}
if [ -n "$churn" ]; then
  api=("${client[@]}" curl -sf -H 'Content-Type: application/json')
  read -r uid secret < <("${api[@]}" -H "Authorization: Bearer $TROVE_ADMIN_TOKEN" "127.0.0.1:$port/v1/members" \
    -d "{\"mydexid\": \"churn$RANDOM$RANDOM\"}" | python3 -c 'import json, sys; m = json.load(sys.stdin); print(m["uid"], m["secret"])')
  connection=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["connection_id"])' "$seed/setup.json")
  (n=0; while kill -0 $pid 2>/dev/null; do
    action=$([ $((n % 2)) -eq 0 ] && echo approve || echo revoke)
    "${api[@]}" -X POST -H "Authorization: Bearer $secret" \
      "127.0.0.1:$port/v1/members/$uid/agreements/$connection/$action" > /dev/null && n=$((n + 1))
    sleep "$churn"
  done; echo "churn: $n changes" >&2) 2> "$work/churn.txt" &
fi
"${client[@]}" "$bin/trove-load" --url "http://127.0.0.1:$port" --members "$members" --rate "$rate" \
  --duration "${secs}s" --setup-file "$seed/setup.json" --server-pid $pid --report "$work/report.json" \
  > "$work/run.out" || true  # refusals and failures are in the summary
sleep 10
kill -TERM $pid && wait $pid || true
grep -v '^{' "$work/run.out"
cat "$work/samples.txt"
[ -z "$churn" ] || { sleep 1; cat "$work/churn.txt"; }
