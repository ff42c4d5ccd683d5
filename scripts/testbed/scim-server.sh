#!/usr/bin/env bash
# scim-server.sh start|stop|status|env|reset|tools — the python-scim project's reference
# SCIM 2.0 server (PyPI scim2-server: threaded wsgiref, HTTP/1.0, in-memory storage) on
# http://127.0.0.1:$IDRELAY_SCIM_PORT/v2 (8080) with a static bearer token
# ($IDRELAY_SCIM_TOKEN, default testbed-token).
# The venv ($IDRELAY_TESTBED/scim-venv, exported as SCIM_VENV) is shared by every instance,
# so tests can start private servers on free ports with "$SCIM_VENV/bin/scim2-server".
# State: $IDRELAY_TESTBED/$IDRELAY_SCIM_INSTANCE (default "scim"): pidfile and log.
# Data lives in memory only: a restart empties the server. `stop` sends SIGINT so that
# --dump-resources (IDRELAY_SCIM_DUMP_FILE) is written; nothing loads it back.
# The venv also holds scim2-tester ($IDRELAY_SCIM2_TESTER_VERSION, 0.5.2; compliance checks);
# `tools` adds scim2-cli (ad-hoc requests).
set -euo pipefail
TB_NAME=scim-server
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$HERE/common.sh"

INSTANCE=${IDRELAY_SCIM_INSTANCE:-scim}
TB_NAME=$INSTANCE
PORT=${IDRELAY_SCIM_PORT:-8080}
TOKEN=${IDRELAY_SCIM_TOKEN:-testbed-token}
VERSION=${IDRELAY_SCIM2_SERVER_VERSION:-0.8.3}
# scim2-tester (with its httpx2 engine) runs in tests/scim_tester_live.rs against the hub.
TESTER_VERSION=${IDRELAY_SCIM2_TESTER_VERSION:-0.5.2}
D=$IDRELAY_TESTBED/$INSTANCE
VENV=$IDRELAY_TESTBED/scim-venv
PIDFILE=$D/scim2-server.pid
LOGFILE=$D/scim2-server.log
BASE=http://127.0.0.1:$PORT/v2

ensure_venv() {
  if [ -x "$VENV/bin/scim2-server" ]; then
    ensure_tester
    return 0
  fi
  command -v python3 >/dev/null || ensure_pkgs python3
  # Debian's python3 needs python3-venv for `-m venv` (ensurepip); other builds carry it.
  python3 -c 'import ensurepip, venv' 2>/dev/null || ensure_pkgs python3-venv
  log "creating venv $VENV and installing scim2-server==$VERSION from PyPI"
  mkdir -p "$IDRELAY_TESTBED"
  local t0
  t0=$(now)
  python3 -m venv "$VENV" || die "python3 -m venv $VENV failed"
  "$VENV/bin/pip" install -q --disable-pip-version-check "scim2-server==$VERSION" >"$IDRELAY_TESTBED/pip.log" 2>&1 || {
    log_tail "$IDRELAY_TESTBED/pip.log"
    rm -rf "$VENV"
    die "pip install scim2-server==$VERSION failed (log: $IDRELAY_TESTBED/pip.log)"
  }
  log "venv ready in $(since "$t0") s"
  ensure_tester
}

# A venv made before the tester joined it gets it too; scim2-server stays as it is.
ensure_tester() {
  "$VENV/bin/python" -c 'import scim2_tester, httpx2' 2>/dev/null && return 0
  log "installing scim2-tester[httpx2]==$TESTER_VERSION into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "scim2-tester[httpx2]==$TESTER_VERSION" "scim2-server==$VERSION" >"$IDRELAY_TESTBED/pip.log" 2>&1 || {
    log_tail "$IDRELAY_TESTBED/pip.log"
    die "pip install scim2-tester[httpx2]==$TESTER_VERSION failed (log: $IDRELAY_TESTBED/pip.log)"
  }
}

scim_up() { curl -fsS -o /dev/null -H "Authorization: Bearer $TOKEN" "$BASE/ServiceProviderConfig"; }

start() {
  command -v curl >/dev/null || ensure_pkgs curl
  ensure_venv
  mkdir -p "$D"
  if pid_alive "$PIDFILE" scim2-server; then
    log "already running (pid $(cat "$PIDFILE")) on $BASE"
    env_vars
    return 0
  fi
  port_busy "$PORT" && die "127.0.0.1:$PORT is already in use (set IDRELAY_SCIM_PORT)"
  local args=(--hostname 127.0.0.1 --port "$PORT" --bearer-token "$TOKEN")
  [ -n "${IDRELAY_SCIM_DUMP_FILE:-}" ] && args+=(--dump-resources "$IDRELAY_SCIM_DUMP_FILE")
  log "starting scim2-server $VERSION on $BASE (state $D)"
  local t0
  t0=$(now)
  # Own session (setsid): a Ctrl-C in the calling shell does not reach it. SIGINT is
  # re-enabled (bash ignores it in background jobs) so that `stop` can end it cleanly.
  env --default-signal=INT setsid "$VENV/bin/scim2-server" "${args[@]}" >"$LOGFILE" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  if ! wait_for 30 scim_up; then
    log_tail "$LOGFILE"
    stop_pidfile "$PIDFILE" scim2-server
    die "scim2-server did not answer on $BASE within 30 s"
  fi
  log "running (pid $(cat "$PIDFILE")), answered after $(since "$t0") s"
  env_vars
}

stop() { # SIGINT = KeyboardInterrupt: a clean exit (and the dump, when asked for)
  stop_pidfile "$PIDFILE" scim2-server INT
}

status() {
  if pid_alive "$PIDFILE" scim2-server && scim_up; then
    log "running (pid $(cat "$PIDFILE")) on $BASE"
  else
    log "not running (state $D)"
    exit 3
  fi
}

tools() {
  ensure_venv
  log "installing scim2-tester and scim2-cli into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "scim2-tester[httpx2]==$TESTER_VERSION" scim2-cli >"$IDRELAY_TESTBED/pip.log" 2>&1 || {
    log_tail "$IDRELAY_TESTBED/pip.log"
    die "pip install scim2-tester scim2-cli failed"
  }
  log "installed: $VENV/bin/scim2 (scim2 --url URL -h 'Authorization: Bearer TOKEN' test)"
}

env_vars() {
  cat <<EOF
export SCIM_BASE_URL=$BASE
export SCIM_TOKEN='$TOKEN'
export SCIM_VENV='$VENV'
EOF
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) env_vars ;;
  reset)
    stop
    rm -rf "$D"
    log "state $D removed (the venv $VENV stays)"
    ;;
  tools) tools ;;
  *)
    echo "usage: $0 start|stop|status|env|reset|tools   (IDRELAY_TESTBED=$IDRELAY_TESTBED, instance $INSTANCE)" >&2
    exit 2
    ;;
esac
