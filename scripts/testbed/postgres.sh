#!/usr/bin/env bash
# postgres.sh start|stop|status|env|reset — Debian's PostgreSQL (package `postgresql`) as a
# private cluster for the hub's `storage = "postgres"` tests and benchmark, on loopback
# only: 127.0.0.1:$IDRELAY_PG_PORT (5433), its socket in the state directory, never the
# system's cluster (its service is not started).
# State: $IDRELAY_TESTBED/postgres (data/, run/, postgres.log). initdb and postgres refuse
# to run as root: as root they run as user `postgres` (created by the package), and the
# state directory belongs to it.
# Account: superuser `idrelay`, password in $D/password (scram-sha-256 over TCP). Tests
# create a database each (CREATE DATABASE) through IDRELAY_TEST_PG_URL.
# Options: IDRELAY_PG_PORT, IDRELAY_PG_MAX_CONNECTIONS (400).
set -euo pipefail
TB_NAME=postgres
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$HERE/common.sh"

PORT=${IDRELAY_PG_PORT:-5433}
D=$IDRELAY_TESTBED/postgres
DATA=$D/data
RUN=$D/run
LOGFILE=$D/postgres.log
PWFILE=$D/password
USER_NAME=idrelay
PASSWORD=idrelay-testbed-pg-secret

bindir() {
  local b="" d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && b=$d
  done
  [ -n "$b" ] || die "no /usr/lib/postgresql/*/bin: is the postgresql package installed?"
  printf '%s' "$b"
}

# as_pg CMD... : CMD as user postgres when root, else as ourselves.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

pg_up() { as_pg "$(bindir)/pg_isready" -q -h 127.0.0.1 -p "$PORT"; }

init_cluster() {
  log "creating the cluster in $DATA"
  mkdir -p "$D" "$RUN"
  printf '%s\n' "$PASSWORD" >"$PWFILE"
  chmod 600 "$PWFILE"
  [ "$(id -u)" -eq 0 ] && chown -R postgres: "$D"
  as_pg test -w "$D" || die "user postgres cannot write to $D (a parent directory is closed to it; set IDRELAY_TESTBED)"
  as_pg "$(bindir)/initdb" -D "$DATA" -U "$USER_NAME" --pwfile="$PWFILE" \
    --auth-host=scram-sha-256 --auth-local=trust -E UTF8 --locale=C.UTF-8 \
    >"$D/initdb.log" 2>&1 || {
    log_tail "$D/initdb.log"
    die "initdb failed"
  }
}

start() {
  ensure_pkgs postgresql
  if [ -s "$DATA/postmaster.pid" ] && pg_up; then
    log "already running (pid $(head -n 1 "$DATA/postmaster.pid")) on 127.0.0.1:$PORT"
    env_vars
    return 0
  fi
  port_busy "$PORT" && die "127.0.0.1:$PORT is already in use (set IDRELAY_PG_PORT)"
  [ -f "$DATA/PG_VERSION" ] || init_cluster
  log "starting PostgreSQL on 127.0.0.1:$PORT (state $D)"
  local t0
  t0=$(now)
  # No fsync: a test database; the hub's own crash safety is tested by killing the hub.
  as_pg "$(bindir)/pg_ctl" -D "$DATA" -l "$LOGFILE" -w -t 60 start -o \
    "-c listen_addresses=127.0.0.1 -p $PORT -c unix_socket_directories=$RUN \
     -c max_connections=${IDRELAY_PG_MAX_CONNECTIONS:-400} -c fsync=off \
     -c full_page_writes=off -c shared_buffers=64MB" >"$D/pg_ctl.log" 2>&1 || {
    log_tail "$D/pg_ctl.log"
    log_tail "$LOGFILE"
    die "PostgreSQL failed to start"
  }
  wait_for 30 pg_up || {
    log_tail "$LOGFILE"
    die "PostgreSQL did not answer on 127.0.0.1:$PORT within 30 s"
  }
  log "running (pid $(head -n 1 "$DATA/postmaster.pid")), answered after $(since "$t0") s"
  env_vars
}

stop() {
  if [ ! -s "$DATA/postmaster.pid" ]; then
    log "not running"
    return 0
  fi
  log "stopping pid $(head -n 1 "$DATA/postmaster.pid") (pg_ctl stop -m fast)"
  as_pg "$(bindir)/pg_ctl" -D "$DATA" -m fast -w -t 30 stop >"$D/pg_ctl.log" 2>&1 || {
    log_tail "$D/pg_ctl.log"
    die "pg_ctl stop failed"
  }
  log "stopped"
}

status() {
  if [ -s "$DATA/postmaster.pid" ] && pg_up; then
    log "running (pid $(head -n 1 "$DATA/postmaster.pid")) on 127.0.0.1:$PORT, state $D"
  else
    log "not running (state $D)"
    exit 3
  fi
}

env_vars() {
  cat <<EOV
export IDRELAY_TEST_PG_URL='postgresql://$USER_NAME:$PASSWORD@127.0.0.1:$PORT/postgres'
EOV
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) env_vars ;;
  reset)
    stop
    rm -rf "$D"
    log "state $D removed; the next start creates an empty cluster"
    ;;
  *)
    echo "usage: $0 start|stop|status|env|reset   (IDRELAY_TESTBED=$IDRELAY_TESTBED)" >&2
    exit 2
    ;;
esac
