#!/usr/bin/env bash
# bench-hub-store.sh [--n N] [--clients C]
#
# The hub's store benchmark (a script, not a test): idrelay-hub with `storage = "memory"`
# (the baseline: nothing kept) and `storage = "sqlite"` (the default), measured in one run
# on this machine by the same client (scripts/bench/hub-store.py, an operator and a fake
# agent over plain HTTP on loopback, no real agent):
#   queue      N (5000) commands over C (4) connections, each answered 202 once stored;
#   drain      agent a1 polls (batches of 100) and answers each batch in one post;
#   heartbeat  N/10 heartbeats, one at a time;
#   RSS        the hub's peak resident memory (VmHWM) after the three;
#   restart    N commands queued, the hub killed (SIGKILL) and started again: time until
#              it listens, the commands it says it took back, and (postgres) a drain
#              after it: each delivered once, none lost.
# With IDRELAY_TEST_PG_URL (scripts/testbed/postgres.sh env: a server on loopback and an
# account that may create databases) `storage = "postgres"` gets a row and a restart too,
# on a database of its own (created here, dropped at the end).
# Binary: IDRELAY_HUB_BIN, else `cargo build --release --bin idrelay-hub`. Everything runs
# in a temporary directory, removed at the end; every process it starts is stopped by PID.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=5000
CLIENTS=4
while [ $# -gt 0 ]; do
  case "$1" in
    --n) N=${2:?}; shift ;;
    --clients) CLIENTS=${2:?}; shift ;;
    -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-hub-store.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[[ $N =~ ^[1-9][0-9]*$ ]] || { echo "--n must be a positive number" >&2; exit 2; }
if [ -z "${IDRELAY_HUB_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release --bin idrelay-hub >&2)
  IDRELAY_HUB_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/idrelay-hub
fi
B=$(mktemp -d)
HUB_PID=""
PG_DB=""
cleanup() {
  if [ -n "$HUB_PID" ]; then kill -KILL "$HUB_PID" 2>/dev/null || true; fi
  if [ -n "$PG_DB" ]; then
    psql "$IDRELAY_TEST_PG_URL" -qAtc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  rm -rf "$B"
}
trap cleanup EXIT
umask 077
head -c 24 /dev/urandom | base64 >"$B/op.token"
head -c 24 /dev/urandom | base64 >"$B/a1.token"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

STORES=(memory sqlite)
if [ -n "${IDRELAY_TEST_PG_URL:-}" ]; then
  PG_DB="bench_hub_$$"
  psql "$IDRELAY_TEST_PG_URL" -qAtc "CREATE DATABASE $PG_DB" >/dev/null
  printf '%s/%s\n' "${IDRELAY_TEST_PG_URL%/*}" "$PG_DB" >"$B/database-url"
  STORES+=(postgres)
fi
pg_reset() { # a fresh schema: the next hub start migrates it again
  [ -z "$PG_DB" ] || PGOPTIONS='-c client_min_messages=warning' psql "$(cat "$B/database-url")" -qAtc "DROP SCHEMA public CASCADE; CREATE SCHEMA public" >/dev/null
}

listening() { python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1',$PORT)))"; }
start_hub() { # start_hub STORAGE; sets HUB_PID, waits until it listens
  cat >"$B/hub.toml" <<CFG
listen = "127.0.0.1:$PORT"
operator_token_file = "$B/op.token"
storage = "$1"
state_dir = "$B/state"
$([ "$1" = postgres ] && echo "database_url_file = \"$B/database-url\"")
queue_limit = $((N + 100))
[[agent]]
id = "a1"
token_file = "$B/a1.token"
group = "g"
CFG
  "$IDRELAY_HUB_BIN" --config "$B/hub.toml" </dev/null >>"$B/hub-$1.log" 2>&1 &
  HUB_PID=$!
  for _ in $(seq 1 1000); do listening && return 0; sleep 0.01; done
  cat "$B/hub-$1.log" >&2
  echo "idrelay-hub did not listen" >&2
  exit 1
}
stop_hub() { kill -TERM "$HUB_PID"; wait "$HUB_PID" || true; HUB_PID=""; }
client() {
  python3 "$ROOT/scripts/bench/hub-store.py" --port "$PORT" --operator-token-file "$B/op.token" \
    --agent-token-file "$B/a1.token" --n "$N" --clients "$CLIENTS"
}
field() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(d$2)" "$1"; }

declare -A RES RSS
for storage in "${STORES[@]}"; do
  rm -rf "$B/state"
  pg_reset
  start_hub "$storage"
  RES[$storage]=$(client)
  RSS[$storage]=$(awk '/VmHWM/ {print $2}' "/proc/$HUB_PID/status")
  stop_hub
done

# Restart with N queued: queue only, kill, start again (then, on postgres, drain).
declare -A RESTART
restart() { # restart STORAGE
rm -rf "$B/state"
pg_reset
start_hub "$1"
python3 - "$PORT" "$B/op.token" "$N" <<'PY'
import http.client, json, sys
port, tok, n = int(sys.argv[1]), open(sys.argv[2]).read().strip(), int(sys.argv[3])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
for i in range(n):
    c.request("POST", "/v1/agents/a1/commands", body=json.dumps({"command": "resync"}),
              headers={"Authorization": "Bearer " + tok})
    r = c.getresponse(); r.read()
    assert r.status == 202, r.status
PY
kill -KILL "$HUB_PID"; wait "$HUB_PID" 2>/dev/null || true; HUB_PID=""
local t0 t1 took size drained=""
t0=$EPOCHREALTIME
start_hub "$1"
t1=$EPOCHREALTIME
took=$(grep -o '[0-9]* command(s) waiting' "$B/hub-$1.log" | tail -1)
if [ "$1" = postgres ]; then
  size="database $(psql "$(cat "$B/database-url")" -qAtc "SELECT pg_database_size(current_database()) / 1024") KiB"
  drained=$(python3 - "$PORT" "$B/a1.token" "$N" <<'PY'
import http.client, json, sys
port, tok, n = int(sys.argv[1]), open(sys.argv[2]).read().strip(), int(sys.argv[3])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
h = {"Authorization": "Bearer " + tok, "Content-Type": "application/json",
     "Idrelay-Protocol": "1", "Idrelay-Agent": "a1", "Idrelay-Instance": "bench-1"}
seen = {}
while True:
    c.request("POST", "/v1/agents/a1/poll", body=json.dumps({"wait_secs": 1}), headers=h)
    r = c.getresponse(); body = r.read()
    if r.status == 204:
        break
    assert r.status == 200, (r.status, body[:200])
    reqs = json.loads(body)["requests"]
    for e in reqs:
        seen[e["id"]] = seen.get(e["id"], 0) + 1
    out = [{"id": e["id"], "status": 202, "body": {"accepted": "resync"}} for e in reqs]
    c.request("POST", "/v1/agents/a1/responses", body=json.dumps({"responses": out}), headers=h)
    r = c.getresponse(); r.read()
    assert r.status == 204, r.status
twice = sum(1 for v in seen.values() if v > 1)
print(f"delivered after it {len(seen)} of {n}, twice {twice}")
PY
)
else
  size="state_dir $(du -k "$B/state" | cut -f1) KiB"
fi
stop_hub
RESTART[$1]=$(printf 'listening again after %.3f s; took back: %s; %s%s' \
  "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" "${took:-?}" "$size" "${drained:+; $drained}")
}
for storage in "${STORES[@]}"; do [ "$storage" = memory ] || restart "$storage"; done

row() { # row STORAGE
  local j=${RES[$1]}
  printf '%-8s | %7s / %7s / %7s | %8s | %7s / %7s | %9s | %8s / %7s | %6s | %s\n' "$1" \
    "$(field "$j" '["queue"]["p50_ms"]')" "$(field "$j" '["queue"]["p99_ms"]')" "$(field "$j" '["queue"]["max_ms"]')" \
    "$(field "$j" '["queue"]["per_s"]')" \
    "$(field "$j" '["drain"]["p50_ms"]')" "$(field "$j" '["drain"]["p99_ms"]')" "$(field "$j" '["drain"]["commands_per_s"]')" \
    "$(field "$j" '["heartbeat"]["p50_ms"]')" "$(field "$j" '["heartbeat"]["p99_ms"]')" \
    "$(field "$j" '["drain"]["delivered_twice"]')" "$((${RSS[$1]} / 1024)) MiB"
}
cat <<EOF

== idrelay-hub store benchmark: $N commands, $CLIENTS operator connections ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))
   $("$IDRELAY_HUB_BIN" --version); plain HTTP on loopback; ms per request

storage  | queue p50 / p99 / max ms | queue/s  | drain rt p50/p99 ms | drained/s | heartbeat p50 / p99 | twice  | hub RSS (peak)
---------+---------------------------+----------+---------------------+-----------+---------------------+--------+---------------
EOF
for storage in "${STORES[@]}"; do row "$storage"; done
echo
for storage in "${STORES[@]}"; do
  [ "$storage" = memory ] || printf 'restart (%s, %d commands queued, SIGKILL): %s\n' "$storage" "$N" "${RESTART[$storage]}"
done
