#!/usr/bin/env bash
# trove next to what users would pick instead (benches/README.md, "What users would pick instead"), on this machine, in one run:
# one data set of energy readings, then, one after the other on the same cores,
#   - trove ingesting it over HTTP (`trove-load --input`, durable acks),
#   - PostgreSQL (Debian's, started here on loopback by scripts/start-postgres.sh) taking the
#     same rows by COPY into a logged table with the same columns, a commit per 1,000-row batch,
#     4 writers, with the btree (member_uid, ts) and without,
#   - pyarrow and DuckDB writing the same rows as Parquet partitioned by (member, day),
#   - the scoped reads Q1-Q3 (`cargo bench --bench reads`) by trove, DuckDB and PostgreSQL,
# and prints one table of ratios (above 1: trove did better), also written as Markdown.
#
#   benches/compare.sh [--quick] [--full] [--rows N] [--members M] [--work DIR] [--out FILE]
#                      [--no-reads] [--port P] [--pg-port P]
#
#   --rows N      rows of the data set (default 2,000,000; --quick: 200,000)
#   --members M   members they are spread over (default 100)
#   --quick       200,000 rows instead of 2,000,000 (to try it: partitioned Parquet writers
#                 take a minute or two for 2M rows)
#   --full        the reads' full run (200 iterations) instead of `-- --quick` (30)
#   --no-reads    skip the reads (which load 3.84M rows and take several minutes)
#   --work DIR    where the data and every raw result go (default /tmp/trove-compare)
#   --out FILE    the Markdown table (default DIR/compare-<date>.md)
#
# Needs the Rust toolchain and python3; installs pyarrow, duckdb and psycopg from PyPI and
# PostgreSQL from Debian when missing. trove's durability is its default (fsync per group
# commit) unless TROVE_DURABILITY is set. PostgreSQL runs from TROVE_PG_DIR (default
# /tmp/trove-compare-pg, outside the work dir so that the postgres user can reach it) on
# --pg-port (default 55433, not the tests' 55432); the script stops it, and the trove server
# it starts, on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

rows= members=100 work=/tmp/trove-compare out= quick=0 full=0 reads=1 port=18091 pg_port=55433
args="$*"
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) rows=$2; shift ;;
    --members) members=$2; shift ;;
    --quick) quick=1 ;;
    --full) full=1 ;;
    --no-reads) reads=0 ;;
    --work) work=$2; shift ;;
    --out) out=$2; shift ;;
    --port) port=$2; shift ;;
    --pg-port) pg_port=$2; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$rows" ] || rows=$([ "$quick" = 1 ] && echo 200000 || echo 2000000)
batch=1000 connections=4 writers=4
date=$(date -u +%Y-%m-%d)
mkdir -p "$work"
work=$(cd "$work" && pwd)
[ -n "$out" ] || out="$work/compare-$date.md"
export PGPORT_TEST=$pg_port TROVE_PG_DIR=${TROVE_PG_DIR:-/tmp/trove-compare-pg}
: > "$work/steps.tsv"

# Each step says what it does and how long it took (steps.tsv, for the report).
step_name= step_started=
step() {
  [ -z "$step_name" ] || step_done
  step_name=$1 step_started=$(date +%s.%N)
  echo
  echo "==> $step_name"
}
step_done() {
  local secs
  secs=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$step_started" "$(date +%s.%N)")
  printf '%s\t%s\n' "$step_name" "$secs" >> "$work/steps.tsv"
  echo "    ($step_name: $secs s)"
  step_name=
}

# What this script started, it stops: the trove server by its pid, PostgreSQL only if it was
# not already running.
trove_pid= pg_started=0
cleanup() {
  if [ -n "$trove_pid" ] && kill -0 "$trove_pid" 2>/dev/null; then
    kill "$trove_pid" 2>/dev/null || true
    wait "$trove_pid" 2>/dev/null || true
  fi
  if [ "$pg_started" = 1 ]; then
    echo "stopping PostgreSQL"
    scripts/start-postgres.sh stop || true
  fi
}
trap cleanup EXIT

# Records facts for the report in run.json (key=value pairs, numbers kept as numbers).
note() {
  python3 - "$work/run.json" "$@" <<'PY'
import json, sys
path = sys.argv[1]
try:
    d = json.load(open(path))
except (OSError, ValueError):
    d = {}
for kv in sys.argv[2:]:
    k, v = kv.split("=", 1)
    try:
        d[k] = json.loads(v)
    except ValueError:
        d[k] = v
json.dump(d, open(path, "w"), indent=1)
PY
}
rm -f "$work/run.json" "$work"/{trove-ingest,pg-ingest,parquet-pyarrow,parquet-duckdb,reads}.json
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
# Everything here shares the cores with whatever else runs: say so when something does.
load=$(cut -d' ' -f1 /proc/loadavg)
if python3 -c "import sys; sys.exit(float(sys.argv[1]) < 0.5)" "$load"; then
  echo "warning: the machine is busy (load average $load before starting): figures will be noisy" >&2
fi
note "date=$date" "commit=$commit" "args=$args" "batch=$batch" "connections=$connections" \
  "durability=${TROVE_DURABILITY:-fsync}" "rows=$rows" "members=$members" "load_before=$load"

step "install what is missing (PyPI: pyarrow, duckdb, psycopg; Debian: postgresql)"
for module in pyarrow duckdb psycopg; do
  if ! python3 -c "import $module" 2>/dev/null; then
    package=$module; [ "$module" = psycopg ] && package='psycopg[binary]'
    echo "pip install $package"
    python3 -m pip install -q "$package"
  fi
done
python3 -c 'import pyarrow, duckdb, psycopg; print(f"pyarrow {pyarrow.__version__}, duckdb {duckdb.__version__}, psycopg {psycopg.__version__}")'
if scripts/start-postgres.sh status; then
  echo "PostgreSQL already runs in $TROVE_PG_DIR: reusing it (and leaving it running)"
else
  pg_started=1
fi
pg_url=$(scripts/start-postgres.sh)
echo "PostgreSQL at $pg_url"

step "build the release binaries (cargo build --release -p trove -p trove-load)"
cargo build --release -p trove -p trove-load
if [ "$reads" = 1 ]; then
  echo "and the reads bench (cargo bench --bench reads --no-run)"
  if ! cargo bench --bench reads --no-run; then
    echo "the reads bench did not build: the reads are not measured"
    reads=0; note "reads_skipped=the reads bench did not build"
  fi
fi
trove=$root/target/release/trove
load=$root/target/release/trove-load

step "generate $rows rows for $members members (NDJSON and CSV in $work)"
python3 benches/compare/gen.py "$work" "$rows" "$members"

step "trove: serve on 127.0.0.1:$port, ingest over HTTP (trove-load, $connections connections, $batch-row bodies)"
if ! "$load" --help > /dev/null 2>&1; then
  echo "trove-load is not in this build: trove's ingest is not measured"
  note "trove_skipped=trove-load is not in this build"
else
  if python3 -c "import socket,sys; s=socket.socket(); s.connect(('127.0.0.1', int(sys.argv[1])))" "$port" 2>/dev/null; then
    echo "something already listens on 127.0.0.1:$port (use --port)" >&2; exit 1
  fi
  rm -rf "$work/trove-data" && mkdir -p "$work/trove-data"
  token=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
  TROVE_ADMIN_TOKEN=$token "$trove" serve --data-dir "$work/trove-data" --listen "127.0.0.1:$port" \
    > "$work/trove-serve.log" 2>&1 &
  trove_pid=$!
  for i in $(seq 600); do
    python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" \
      "http://127.0.0.1:$port/health" 2>/dev/null && break
    if ! kill -0 "$trove_pid" 2>/dev/null; then
      echo "trove serve exited; its log:" >&2; tail -n 20 "$work/trove-serve.log" >&2; exit 1
    fi
    [ "$i" -lt 600 ] || { echo "trove serve not healthy after 60 s" >&2; exit 1; }
    sleep 0.1
  done
  extra=()
  # The server's pid, for its RSS and CPU, if this build's load generator takes it.
  "$load" --help 2>/dev/null | grep -q -- --server-pid && extra+=(--server-pid "$trove_pid")
  if ! "$load" --url "http://127.0.0.1:$port" --admin-token "$token" --input "$work/data.ndjson" \
    --members "$members" --batch "$batch" --connections "$connections" --report "$work/trove-ingest.json" "${extra[@]}"; then
    echo "trove-load failed: trove's ingest is not in the table (server log: $work/trove-serve.log)"
    rm -f "$work/trove-ingest.json"
    note "trove_skipped=trove-load failed"
  fi
  kill "$trove_pid"
  wait "$trove_pid" 2>/dev/null || true
  trove_pid=
  # What it keeps on disk once stopped: Parquet (not yet compacted) and the write-ahead log.
  objects_bytes=$( (du -sb "$work/trove-data/objects" 2>/dev/null || echo 0) | cut -f1)
  objects_files=$( (find "$work/trove-data/objects" -type f -name '*.parquet' 2>/dev/null || true) | wc -l)
  wal_bytes=$( (du -sb "$work/trove-data/wal" 2>/dev/null || echo 0) | cut -f1)
  note "trove_objects_bytes=${objects_bytes:-0}" "trove_objects_files=$objects_files" "trove_wal_bytes=${wal_bytes:-0}"
fi

step "PostgreSQL: COPY, $writers writers, $batch-row batches, a commit each, with and without the btree"
python3 benches/compare/pg_ingest.py "$pg_url" "$work" "$work/pg-ingest.json" --writers "$writers" --batch "$batch"

step "pyarrow: write_dataset partitioned by (member, day)"
python3 benches/compare/parquet_write.py pyarrow "$work" "$work/parquet-pyarrow.json"

step "DuckDB: COPY ... PARTITION_BY (member_uid, day)"
python3 benches/compare/parquet_write.py duckdb "$work" "$work/parquet-duckdb.json"

if [ "$reads" = 1 ]; then
  bench_args=(--quick); [ "$full" = 1 ] && bench_args=()
  step "reads: cargo bench --bench reads ${bench_args[*]:+-- ${bench_args[*]}} (trove, DuckDB, PostgreSQL; loads 3.84M rows)"
  if ! TROVE_BENCH_POSTGRES_URL=$pg_url TROVE_BENCH_REPORT=$work/reads.json \
    cargo bench --bench reads -- "${bench_args[@]}" 2>&1 | tee "$work/reads.log"; then
    echo "the reads bench failed (log: $work/reads.log)"
    rm -f "$work/reads.json"; note "reads_skipped=the reads bench failed, see reads.log"
  fi
elif [ ! -f "$work/run.json" ] || ! grep -q reads_skipped "$work/run.json"; then
  note "reads_skipped=--no-reads"
fi
step_done

echo
python3 benches/compare/report.py "$work" "$out"
echo "written to $out"
