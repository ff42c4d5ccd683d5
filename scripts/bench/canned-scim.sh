#!/usr/bin/env bash
# canned-scim.sh start|stop|status|env|requests|clear-log — Debian's nginx answering every SCIM request
# with a canned response (scripts/bench/nginx.conf): the benchmark's fast endpoint, where the
# agent's own cost shows. http://127.0.0.1:$IDRELAY_CANNED_SCIM_PORT/v2 (8091), bearer token
# $IDRELAY_SCIM_TOKEN (testbed-token). Loopback only; own prefix dir, pidfile and logs under
# $IDRELAY_TESTBED/$IDRELAY_CANNED_SCIM_INSTANCE (default "nginx-scim"); never /etc/nginx.
# `requests` prints how many requests it answered (per method, resource and status) since it
# started or since the last `clear-log`.
set -euo pipefail
TB_NAME=canned-scim
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR source=../testbed/common.sh
. "$HERE/../testbed/common.sh"

INSTANCE=${IDRELAY_CANNED_SCIM_INSTANCE:-nginx-scim}
TB_NAME=$INSTANCE
PORT=${IDRELAY_CANNED_SCIM_PORT:-8091}
TOKEN=${IDRELAY_SCIM_TOKEN:-testbed-token}
D=$IDRELAY_TESTBED/$INSTANCE
CONF=$D/nginx.conf
PIDFILE=$D/nginx.pid
BASE=http://127.0.0.1:$PORT/v2

scim_up() { curl -fsS -o /dev/null -H "Authorization: Bearer $TOKEN" "$BASE/ServiceProviderConfig"; }

start() {
  ensure_pkgs nginx curl
  if pid_alive "$PIDFILE" "$CONF"; then
    log "already running (pid $(cat "$PIDFILE")) on $BASE"
    env_vars
    return 0
  fi
  port_busy "$PORT" && die "127.0.0.1:$PORT is already in use (set IDRELAY_CANNED_SCIM_PORT)"
  [[ $TOKEN =~ ^[A-Za-z0-9._~+/=-]+$ ]] || die "the token must be a plain bearer token (RFC 6750 b64token)"
  mkdir -p "$D/tmp"
  sed -e "s|@PREFIX@|$D|g" -e "s|@PORT@|$PORT|g" -e "s|@TOKEN@|$TOKEN|g" "$HERE/nginx.conf" >"$CONF"
  rm -f "$D/access.log"
  nginx -t -q -p "$D/" -c "$CONF" -e "$D/error.log" >"$D/nginx.out" 2>&1 || {
    log_tail "$D/nginx.out"
    die "nginx rejected $CONF"
  }
  log "starting nginx (canned SCIM) on $BASE (state $D)"
  local t0
  t0=$(now)
  nginx -p "$D/" -c "$CONF" -e "$D/error.log" >"$D/nginx.out" 2>&1 || {
    log_tail "$D/nginx.out"
    log_tail "$D/error.log"
    die "nginx failed to start"
  }
  if ! wait_for 15 scim_up; then
    log_tail "$D/error.log"
    stop_pidfile "$PIDFILE" "$CONF" QUIT
    die "nginx did not answer on $BASE within 15 s"
  fi
  log "running (pid $(cat "$PIDFILE")), answered after $(since "$t0") s"
  env_vars
}

status() {
  if pid_alive "$PIDFILE" "$CONF" && scim_up; then
    log "running (pid $(cat "$PIDFILE")) on $BASE"
  else
    log "not running (state $D)"
    exit 3
  fi
}

requests() {
  [ -f "$D/access.log" ] || die "no access log in $D"
  # "POST /v2/Users/abc 204" -> "PATCH /v2/Users/ID 204"
  awk '{ split($2, p, "/"); k = $1 " /" p[2] "/" p[3] (p[4] != "" ? "/ID" : ""); n[k " " $3]++ }
       END { for (k in n) print n[k], k }' "$D/access.log" | sort -k2
}

env_vars() {
  cat <<EOF
export CANNED_SCIM_BASE_URL=$BASE
export SCIM_TOKEN='$TOKEN'
EOF
}

case "${1:-}" in
  start) start ;;
  stop) stop_pidfile "$PIDFILE" "$CONF" QUIT ;;
  status) status ;;
  env) env_vars ;;
  requests) requests ;;
  clear-log) : >"$D/access.log" ;;
  *)
    echo "usage: $0 start|stop|status|env|requests|clear-log   (IDRELAY_TESTBED=$IDRELAY_TESTBED, instance $INSTANCE)" >&2
    exit 2
    ;;
esac
