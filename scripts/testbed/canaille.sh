#!/usr/bin/env bash
# canaille.sh start|stop|status|env|reset|reset-data — Canaille (PyPI canaille 0.3.6: a small
# IAM server with its own SCIM 2.0 service provider, SQLite storage, OAuth2 bearer tokens), a
# second SCIM server written independently of scim2-server, on
# http://127.0.0.1:$IDRELAY_CANAILLE_PORT/scim/v2 (8088).
#
# It is there for what scim2-server does not do: it ignores `filter`, never stores
# `externalId`, and holds accounts of its own before any test runs. Its quirks (checked by
# hand with curl, version-pinned) are listed in docs/testing.md, section "Canaille".
#
# Venv: $IDRELAY_TESTBED/canaille-venv, every package pinned by canaille-constraints.txt
# (scim2-models must be 0.10.0). State: $IDRELAY_CANAILLE_DIR (default
# $IDRELAY_TESTBED/canaille): config.toml, canaille.sqlite, the seed snapshot seed.sqlite,
# pidfile, log. The server runs in one process (hypercorn, --workers 0) through the wrapper
# $VENV/bin/canaille-testbed, which lets email-validator accept the .test TLD
# (email_validator.TEST_ENVIRONMENT = True).
#
# The first start provisions: `canaille install`, an OAuth2 client (client_credentials,
# client_secret_basic) and a long-lived bearer token of that client, made by the CLI; then,
# over SCIM, the seed accounts: users `admin` and `staff.owner`, group `staff` (member
# staff.owner); then copies the database to seed.sqlite. `reset-data` copies it back into
# the live database (SQLite backup API, the server keeps running, ~0.1 s): every resource a
# test made is gone, the seed accounts are back with the same ids, the token still works
# (tokens fetched from /oauth/token do not survive it). `reset` deletes the state; the next
# start provisions again.
#
# Port 8088: the benchmarks' private servers use 8090-8096.
#
# Measured (2 cores, other builds running): first start 36-44 s (venv + pip 23-32 s, with a
# cold or a warm pip cache alike; provisioning 11-14 s: three CLI calls at ~2 s each, server
# start ~2.5 s, seeding); a later start of a provisioned instance 2.3 s (it answers after
# 1.8-2.8 s); "already running" 0.03 s; reset-data 0.1-0.2 s; stop 2.5 s (graceful).
set -euo pipefail
TB_NAME=canaille
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$HERE/common.sh"

PORT=${IDRELAY_CANAILLE_PORT:-8088}
VERSION=0.3.6
# The token and the client secret are written into the database at provisioning: after
# changing them, `reset` (the next start provisions again).
TOKEN=${IDRELAY_CANAILLE_TOKEN:-canaille-testbed-token}
CLIENT_ID=idrelay-testbed
CLIENT_SECRET=${IDRELAY_CANAILLE_CLIENT_SECRET:-canaille-testbed-client-secret}
# The hub's own client: it asks /oauth/introspect about the agent's tokens (Canaille answers
# only a client in the token's audience, so the agent's client names this one as audience).
HUB_CLIENT_ID=idrelay-hub
HUB_CLIENT_SECRET=${IDRELAY_CANAILLE_HUB_SECRET:-canaille-testbed-hub-secret-0123456789}
ADMIN_PASSWORD=canaille-admin-pass
D=${IDRELAY_CANAILLE_DIR:-$IDRELAY_TESTBED/canaille}
VENV=$IDRELAY_TESTBED/canaille-venv
CONSTRAINTS=$HERE/canaille-constraints.txt
PIDFILE=$D/canaille.pid
LOGFILE=$D/canaille.log
DB=$D/canaille.sqlite
SEED=$D/seed.sqlite
WORD="canaille-testbed run"
ROOT_URL=http://127.0.0.1:$PORT
BASE=$ROOT_URL/scim/v2
export CANAILLE_CONFIG=$D/config.toml

ensure_venv() {
  # The marker holds the checksum of the constraints: a venv made from other pins is rebuilt.
  local want
  want=$(sha256sum "$CONSTRAINTS" | cut -d' ' -f1)
  if [ "$(cat "$VENV/.idrelay-constraints" 2>/dev/null)" != "$want" ] || [ ! -x "$VENV/bin/canaille" ]; then
    command -v python3 >/dev/null || ensure_pkgs python3
    python3 -c 'import ensurepip, venv' 2>/dev/null || ensure_pkgs python3-venv
    log "creating venv $VENV and installing canaille==$VERSION (pinned by canaille-constraints.txt)"
    mkdir -p "$IDRELAY_TESTBED"
    local t0 piplog=$IDRELAY_TESTBED/canaille-pip.log
    t0=$(now)
    rm -rf "$VENV"
    python3 -m venv "$VENV" || die "python3 -m venv $VENV failed"
    "$VENV/bin/pip" install -q --disable-pip-version-check -c "$CONSTRAINTS" \
      "canaille[scim,sqlite,oidc,server]==$VERSION" "scim2-models==0.10.0" >"$piplog" 2>&1 || {
      log_tail "$piplog"
      rm -rf "$VENV"
      die "pip install canaille==$VERSION failed (log: $piplog)"
    }
    echo "$want" >"$VENV/.idrelay-constraints"
    log "venv ready in $(since "$t0") s"
  fi
  # The wrapper is rewritten every time: cheap, and a changed script reaches old venvs.
  cat >"$VENV/bin/canaille-testbed" <<EOF
#!$VENV/bin/python
# canaille's CLI with email-validator's test mode on, so that addresses under
# special-use TLDs such as .test are accepted (written by scripts/testbed/canaille.sh).
import sys
import email_validator
email_validator.TEST_ENVIRONMENT = True
from canaille.commands import cli
sys.argv[0] = "canaille"
sys.exit(cli())
EOF
  chmod 755 "$VENV/bin/canaille-testbed"
}

cli() { "$VENV/bin/canaille-testbed" "$@" >>"$D/provision.log" 2>&1; }

# api METHOD PATH [BODY] : one SCIM request with the token; the body goes to $D/last.json,
# the status to stdout.
api() {
  local args=(-sS -o "$D/last.json" -w '%{http_code}' -X "$1" -H "Authorization: Bearer $TOKEN")
  [ $# -ge 3 ] && args+=(-H 'Content-Type: application/scim+json' --data-binary "$3")
  curl "${args[@]}" "$BASE$2"
}

scim_up() { [ "$(api GET /ServiceProviderConfig 2>/dev/null)" = 200 ]; }
up_or_gone() { scim_up || ! pid_alive "$PIDFILE" "$WORD"; }

write_config() {
  local secret
  secret=$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(32))')
  cat >"$CANAILLE_CONFIG" <<EOF
# Canaille testbed instance (scripts/testbed/canaille.sh); loopback only.
SECRET_KEY = "$secret"
# Tokens of the client_credentials grant live 60 s (Authlib's setting, passed through by
# Canaille), so that a test sees the agent replace them; the seed token is made by the CLI
# and lives ten years.
OAUTH2_TOKEN_EXPIRES_IN = { client_credentials = 60 }

[CANAILLE_SQL]
DATABASE_URI = "sqlite:///$DB"

[CANAILLE_SCIM]
ENABLE_SERVER = true
EOF
}

# The database, the client and the token, by Canaille's own CLI (the server is not running).
provision_db() {
  log "provisioning $D (canaille install, OAuth2 client, token)"
  rm -f "$DB" "$SEED" "$D/provision.log" "$D/hub-client.ok"
  write_config
  cli install || return 1
  hub_client || return 1
  cli create client --client-id "$CLIENT_ID" --client-secret "$CLIENT_SECRET" \
    --client-name "$CLIENT_ID" --grant-types client_credentials \
    --token-endpoint-auth-method client_secret_basic --scope openid \
    --audience "$HUB_CLIENT_ID" || return 1
  touch "$D/hub-client.ok"
  # Ten years; a client token (no subject) passes every SCIM permission check.
  cli create token --token-id testbed-token --access-token "$TOKEN" --client "$CLIENT_ID" \
    --type access_token --scope openid --lifetime 315360000 \
    --issue-date "$(date -u +%Y-%m-%dT%H:%M:%S+00:00)" || return 1
}

hub_client() {
  cli create client --client-id "$HUB_CLIENT_ID" --client-secret "$HUB_CLIENT_SECRET" \
    --client-name "$HUB_CLIENT_ID" --grant-types client_credentials \
    --token-endpoint-auth-method client_secret_basic --scope openid
}

# An instance provisioned before the hub client existed gets it in its seed snapshot (and
# so, at the next reset, in its database): the hub client, and the agent's client naming it
# as audience. Once; the marker says it is done.
ensure_hub_client() {
  [ -e "$D/hub-client.ok" ] && return 0
  [ -s "$SEED" ] || return 0
  log "adding the OAuth2 client $HUB_CLIENT_ID (token introspection) to the seed"
  local conf=$D/seed-config.toml
  sed "s#^DATABASE_URI = .*#DATABASE_URI = \"sqlite:///$SEED\"#" "$CANAILLE_CONFIG" >"$conf"
  if ! CANAILLE_CONFIG=$conf hub_client ||
    ! CANAILLE_CONFIG=$conf cli set client "$CLIENT_ID" --audience "$HUB_CLIENT_ID"; then
    rm -f "$conf"
    die "adding $HUB_CLIENT_ID failed (log: $D/provision.log)"
  fi
  rm -f "$conf"
  touch "$D/hub-client.ok"
}

# The accounts Canaille holds before any test: over SCIM, with the running server.
seed_accounts() {
  local s
  s=$(api POST /Users '{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User"],
    "userName":"admin","password":"'"$ADMIN_PASSWORD"'","active":true,"displayName":"Testbed Admin",
    "name":{"formatted":"Testbed Admin","familyName":"Admin","givenName":"Testbed"},
    "emails":[{"value":"admin@branch.test"}]}')
  [ "$s" = 201 ] || { log "POST admin: $s $(head -c 300 "$D/last.json")"; return 1; }
  s=$(api POST /Users '{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User",
    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"],
    "userName":"staff.owner","active":true,"displayName":"Staff Owner","title":"Pre-existing account",
    "name":{"formatted":"Staff Owner","familyName":"Owner","givenName":"Staff"},
    "emails":[{"value":"staff.owner@branch.test"}],"phoneNumbers":[{"value":"+1 555 0100"}],
    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User":{"employeeNumber":"E-0001","department":"Staff"}}')
  [ "$s" = 201 ] || { log "POST staff.owner: $s $(head -c 300 "$D/last.json")"; return 1; }
  # shellcheck disable=SC2016 # "$ref" is the SCIM attribute, not a shell variable
  s=$(api POST /Groups '{"schemas":["urn:ietf:params:scim:schemas:core:2.0:Group"],"displayName":"staff",
    "members":[{"value":"staff.owner","$ref":"'"$BASE"'/Users/staff.owner"}]}')
  [ "$s" = 201 ] || { log "POST group staff: $s $(head -c 300 "$D/last.json")"; return 1; }
}

# sqlite_copy FROM TO : SQLite's online backup (safe while the server has TO open).
sqlite_copy() {
  local py=python3
  [ -x "$VENV/bin/python" ] && py=$VENV/bin/python
  "$py" - "$1" "$2" <<'EOF'
import sqlite3, sys, time
src = sqlite3.connect(sys.argv[1])
dst = sqlite3.connect(sys.argv[2], timeout=10)
for attempt in range(50):
    try:
        src.backup(dst)
        break
    except sqlite3.OperationalError:
        if attempt == 49:
            raise
        time.sleep(0.2)
dst.close()
src.close()
EOF
}

launch() {
  log "starting canaille $VERSION on $BASE (state $D)"
  local t0
  t0=$(now)
  # Own session (setsid): a Ctrl-C in the calling shell does not reach it. SIGTERM stops it.
  setsid "$VENV/bin/canaille-testbed" run --workers 0 --bind "127.0.0.1:$PORT" >>"$LOGFILE" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  # Stop waiting as soon as it answers or dies (a bad config makes it exit at once).
  if ! wait_for 30 up_or_gone || ! scim_up; then
    local why="did not answer on $BASE within 30 s"
    pid_alive "$PIDFILE" "$WORD" || why="exited before answering on $BASE"
    log_tail "$LOGFILE"
    stop_pidfile "$PIDFILE" "$WORD"
    die "canaille $why (log: $LOGFILE)"
  fi
  log "running (pid $(cat "$PIDFILE")), answered after $(since "$t0") s"
}

start() {
  command -v curl >/dev/null || ensure_pkgs curl
  mkdir -p "$D"
  if pid_alive "$PIDFILE" "$WORD"; then
    log "already running (pid $(cat "$PIDFILE")) on $BASE"
    env_vars
    return 0
  fi
  ensure_venv
  port_busy "$PORT" && die "127.0.0.1:$PORT is already in use (set IDRELAY_CANAILLE_PORT)"
  : >"$LOGFILE"
  if [ -s "$SEED" ] && [ -s "$DB" ] && [ -s "$CANAILLE_CONFIG" ]; then
    launch
  else
    local t0
    t0=$(now)
    provision_db || {
      log_tail "$D/provision.log"
      rm -f "$DB"
      die "provisioning failed (log: $D/provision.log)"
    }
    launch
    seed_accounts || {
      stop_pidfile "$PIDFILE" "$WORD"
      rm -f "$DB"
      die "seeding the accounts failed (log: $LOGFILE)"
    }
    sqlite_copy "$DB" "$SEED" || die "could not write the seed snapshot $SEED"
    log "provisioned in $(since "$t0") s: users admin, staff.owner; group staff"
  fi
  env_vars
}

stop() { stop_pidfile "$PIDFILE" "$WORD"; }

status() {
  if pid_alive "$PIDFILE" "$WORD" && scim_up; then
    log "running (pid $(cat "$PIDFILE")) on $BASE"
  else
    log "not running (state $D)"
    exit 3
  fi
}

reset_data() {
  [ -s "$SEED" ] || die "no seed snapshot in $D: run '$0 start' first"
  local t0
  t0=$(now)
  ensure_hub_client
  sqlite_copy "$SEED" "$DB" || die "could not restore $SEED into $DB"
  if pid_alive "$PIDFILE" "$WORD"; then
    local s
    s=$(api GET /Users) || true
    [ "$s" = 200 ] || die "after the restore, GET /Users answers $s"
    grep -q '"totalResults":2[,}]' "$D/last.json" || die "after the restore, /Users is not the seed: $(head -c 300 "$D/last.json")"
  fi
  log "data reset to the seed (admin, staff.owner, group staff) in $(since "$t0") s"
}

env_vars() {
  cat <<EOF
export CANAILLE_SCIM_URL=$BASE
export CANAILLE_TOKEN='$TOKEN'
export CANAILLE_TOKEN_URL=$ROOT_URL/oauth/token
export CANAILLE_CLIENT_ID=$CLIENT_ID
export CANAILLE_CLIENT_SECRET='$CLIENT_SECRET'
export CANAILLE_INTROSPECT_URL=$ROOT_URL/oauth/introspect
export CANAILLE_HUB_CLIENT_ID=$HUB_CLIENT_ID
export CANAILLE_HUB_CLIENT_SECRET='$HUB_CLIENT_SECRET'
export CANAILLE_DIR='$D'
EOF
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) env_vars ;;
  reset-data) reset_data ;;
  reset)
    stop
    rm -rf "$D"
    log "state $D removed (the venv $VENV stays)"
    ;;
  *)
    echo "usage: $0 start|stop|status|env|reset|reset-data   (IDRELAY_TESTBED=$IDRELAY_TESTBED, port $PORT)" >&2
    exit 2
    ;;
esac
