#!/usr/bin/env bash
# Fuzzing (issue 6): builds the cargo-fuzz targets of fuzz/ once, runs each for
# TROVE_FUZZ_SECONDS (default 15) on its seed corpus, and fails on any crash.
#
#   scripts/fuzz.sh                  # every target briefly (what CI runs)
#   scripts/fuzz.sh --long           # every target for 10 minutes (or TROVE_FUZZ_SECONDS)
#   scripts/fuzz.sh sql_front_door   # one target (any number may be named)
set -euo pipefail
cd "$(dirname "$0")/.."

long=0
targets=()
for arg in "$@"; do
  case "$arg" in
    --long) long=1 ;;
    -h | --help) sed -n '2,7p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $arg" >&2; exit 2 ;;
    *) targets+=("$arg") ;;
  esac
done
if [ "$long" = 1 ]; then seconds=${TROVE_FUZZ_SECONDS:-600}; else seconds=${TROVE_FUZZ_SECONDS:-15}; fi

cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked >&2
# libfuzzer-sys compiles libFuzzer, which is C++.
if ! command -v c++ >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || { echo "fuzz.sh: a C++ compiler is needed (apt-get install g++)" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends g++ >&2
fi
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)

# Stable Rust, so no sanitizer (AddressSanitizer needs nightly's -Zsanitizer): for safe
# Rust a panic is the finding, and libFuzzer's coverage instrumentation works on stable.
# Dev profile: the build instruments DataFusion from scratch; see the README for times.
flags=(--sanitizer none --dev)
# One build of every target, so the dependencies are compiled once.
cargo fuzz build "${flags[@]}"

failed=0
for target in "${targets[@]}"; do
  # Inputs libFuzzer finds go to a working corpus under fuzz/target (kept between runs,
  # never committed); the seeds in fuzz/corpus are only read.
  work="fuzz/target/corpus/$target"
  log="fuzz/target/fuzz-$target.log"
  mkdir -p "$work"
  status=0
  cargo fuzz run "${flags[@]}" "$target" "$work" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=30 -print_final_stats=1 >"$log" 2>&1 || status=$?
  runs=$(grep -o '^stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  if [ "$status" = 0 ]; then
    echo "fuzz $target: ${runs:-?} runs in $seconds s, 0 crashes"
  else
    failed=1
    runs=${runs:-$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')}
    echo "fuzz $target: ${runs:-?} runs, 1 crash (exit $status); the last lines of $log:"
    tail -n 40 "$log" | sed 's/^/    /'
  fi
done
exit "$failed"
