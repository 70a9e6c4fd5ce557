#!/usr/bin/env bash
# Start (or reuse) a private, throwaway PostgreSQL cluster for tests.
#
#   scripts/start-postgres.sh          start or reuse; prints ONLY the URL on stdout
#   scripts/start-postgres.sh status   exit 0 if this cluster is running
#   scripts/start-postgres.sh stop     stop it (the directory is kept)
#
# Env: PGPORT_TEST (default 55432), TROVE_PG_DIR (default /tmp/trove-pg),
#      TROVE_SKIP_APT_UPDATE=1 when the caller already ran apt-get update.
# All logs go to stderr so that `URL=$(scripts/start-postgres.sh)` works.
set -euo pipefail

PORT="${PGPORT_TEST:-55432}"
DIR="${TROVE_PG_DIR:-/tmp/trove-pg}"
PGDATA="$DIR/data"
LOG="$DIR/postgres.log"
URL="postgres://postgres@127.0.0.1:$PORT/postgres"

log() { echo "start-postgres: $*" >&2; }

# Install Debian's PostgreSQL if missing (Debian 12 ships 15).
if [ ! -x /usr/lib/postgresql/15/bin/initdb ] && [ "${1:-start}" = start ]; then
  log "installing postgresql with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  [ "${TROVE_SKIP_APT_UPDATE:-}" = 1 ] || apt-get update -q >&2
  apt-get install -y -q --no-install-recommends postgresql postgresql-client >&2
fi

# Use the server binaries of the highest installed major version, not whatever
# `pg_ctl` happens to be first on PATH (/usr/local/bin may hold a symlink).
BIN="$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
if [ ! -x "$BIN/pg_ctl" ]; then
  case "${1:-start}" in stop) exit 0 ;; status) exit 3 ;; esac
  log "no PostgreSQL under /usr/lib/postgresql"; exit 1
fi

# The server refuses to run as root: run its tools as `postgres` then (from /,
# since postgres may not be allowed into the caller's working directory).
as_pg() {
  if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}
running() { [ -f "$PGDATA/PG_VERSION" ] && as_pg "$BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }

case "${1:-start}" in
  status) running; exit ;;
  stop)
    if running; then as_pg "$BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >&2; fi
    exit 0 ;;
  start) ;;
  *) log "usage: $0 [start|status|stop]"; exit 2 ;;
esac

if [ ! -f "$PGDATA/PG_VERSION" ]; then
  log "initdb in $PGDATA ($BIN)"
  mkdir -p "$PGDATA"
  [ "$(id -u)" != 0 ] || chown -R postgres:postgres "$DIR"
  chmod 700 "$PGDATA"
  as_pg "$BIN/initdb" -D "$PGDATA" --auth=trust -U postgres -E UTF8 --no-instructions >&2
  # TCP on loopback only; the socket lives in the data dir, so no /var/run access is
  # needed. fsync stays on: tests must see real durability behaviour. Parallel test
  # processes each open a pool, hence more connections than the default 100.
  cat >>"$PGDATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PGDATA'
fsync = on
max_connections = 200
CONF
fi

if running; then
  # Reuse, but only if it listens where the caller expects (line 4 of postmaster.pid).
  RUNNING_PORT="$(sed -n 4p "$PGDATA/postmaster.pid")"
  if [ "$RUNNING_PORT" != "$PORT" ]; then
    log "cluster in $PGDATA already runs on port $RUNNING_PORT, not $PORT"; exit 1
  fi
  log "reusing running cluster in $PGDATA"
else
  log "starting on 127.0.0.1:$PORT (log: $LOG)"
  touch "$LOG"; [ "$(id -u)" != 0 ] || chown postgres:postgres "$LOG"
  if ! as_pg "$BIN/pg_ctl" -D "$PGDATA" -l "$LOG" -o "-p $PORT" -w -t 30 start >&2; then
    log "start failed; last log lines:"; tail -n 20 "$LOG" >&2; exit 1
  fi
fi

# Wait (max ~30 s) until it accepts TCP connections at the URL we print.
for _ in $(seq 60); do
  if "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -U postgres; then
    echo "$URL"; exit 0
  fi
  sleep 0.5
done
log "PostgreSQL not ready on 127.0.0.1:$PORT after 30 s; last log lines:"
tail -n 20 "$LOG" >&2
exit 1
