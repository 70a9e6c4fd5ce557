# Shared by benches/sweep.sh, latency.sh and day.sh (sourced, not run): where a run works,
# which binaries it runs, and how it pins them.
#
#   bench_setup NAME PORT     sets work (TROVE_LOAD_WORK, else /tmp/trove-NAME, emptied),
#                             port (TROVE_LOAD_PORT, else PORT), bin (TROVE_SWEEP_BIN_DIR,
#                             else a release build of this checkout), server and client
#                             (taskset prefixes: core 1 and core 0), TROVE_ADMIN_TOKEN

bench_setup() {
  work=${TROVE_LOAD_WORK:-/tmp/trove-$1}; port=${TROVE_LOAD_PORT:-$2}
  bin=${TROVE_SWEEP_BIN_DIR:-}
  if [ -z "$bin" ]; then cargo build --release -p trove -p trove-load >&2; bin=target/release; fi
  server=(taskset -c 1); client=(taskset -c 0)
  [ "$(nproc)" -ge 2 ] || { server=(); client=(); }
  rm -rf "$work" && mkdir -p "$work"
  TROVE_ADMIN_TOKEN="$1-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  export TROVE_ADMIN_TOKEN
}

wait_healthy() {  # the server on $port answers /health (at most 30 s)
  for _ in $(seq 300); do curl -sf "127.0.0.1:$port/health" > /dev/null && return; sleep 0.1; done
}

wait_drained() {  # the server on $port has flushed every buffered row (at most 120 s)
  for _ in $(seq 240); do
    curl -sf "127.0.0.1:$port/metrics" | awk '$1 == "trove_ingest_buffer_bytes" && $2 == 0 { ok = 1 } END { exit !ok }' && return
    sleep 0.5
  done
}

requests() {  # op: object-store requests of that kind so far
  curl -sf "127.0.0.1:$port/metrics" |
    awk -v s="trove_object_store_requests_total{op=\"$1\"}" '$1 == s { n = $2 } END { printf "%d\n", n }'
}
