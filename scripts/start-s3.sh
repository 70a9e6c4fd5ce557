#!/usr/bin/env bash
# Start (or reuse) a local S3-compatible server for tests: s3s-fs on 127.0.0.1.
#
#   scripts/start-s3.sh          start or reuse; prints ONLY `export` lines on stdout:
#                                eval "$(scripts/start-s3.sh)"
#   scripts/start-s3.sh stop     stop it
#
# s3s-fs honours SigV4 and PutMode::Create and keeps objects as plain files under
# $TROVE_S3_DIR/<bucket>/. It is installed from crates.io if missing (about 2 minutes);
# later versions need a newer Rust, so the version is pinned.
set -euo pipefail

PORT="${TROVE_S3_PORT:-59000}"
DIR="${TROVE_S3_DIR:-/tmp/trove-s3}"
BUCKET="${TROVE_S3_BUCKET:-trove-test}"
KEY=trove-test-key
SECRET=trove-test-secret
PIDFILE="$DIR.pid"

log() { echo "start-s3: $*" >&2; }

if [ "${1:-start}" = stop ]; then
  if [ -f "$PIDFILE" ]; then kill "$(cat "$PIDFILE")" 2>/dev/null || true; rm -f "$PIDFILE"; fi
  exit 0
fi

if ! command -v s3s-fs >/dev/null 2>&1; then
  log "installing s3s-fs 0.14.1 from crates.io"
  cargo install s3s-fs@0.14.1 --features binary --locked >&2
fi

mkdir -p "$DIR/$BUCKET"
if ! { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }; then
  log "starting s3s-fs on 127.0.0.1:$PORT, objects under $DIR"
  nohup s3s-fs --host 127.0.0.1 --port "$PORT" --access-key "$KEY" --secret-key "$SECRET" "$DIR" >"$DIR.log" 2>&1 &
  echo $! >"$PIDFILE"
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
    sleep 0.1
  done
fi

cat <<OUT
export TROVE_TEST_S3_ENDPOINT=http://127.0.0.1:$PORT
export TROVE_TEST_S3_BUCKET=$BUCKET
export TROVE_TEST_S3_KEY=$KEY
export TROVE_TEST_S3_SECRET=$SECRET
OUT
