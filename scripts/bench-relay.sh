#!/usr/bin/env bash
# bench-relay.sh [--users N] [--n N] [--seconds S] [--keep]
#
# The relay benchmark (a script, not a test): how fast the cloud reads the branch directory
# through the outbound-only channel, i.e. a SCIM request to idrelay-hub's per-agent endpoint
# (/agents/{id}/scim/v2/...), queued by the hub, handed to the agent's long-poll, answered
# by the agent from LDAP, posted back and returned. Measured in one run:
#   1. sequential GET /Users/{id} (ids at random from a list response), --n (300) requests:
#      p50/p95/p99/max;
#   2. the same with a list query `filter=userName eq "..."`;
#   3. throughput with 1, 4 and 16 clients for --seconds (15) each: requests/s, p50/p99;
#   4. baselines: the same lookups as one `ldapsearch` process per query (what a script on
#      the branch would pay), and GET /v1/agents (the hub alone, no agent involved);
#   5. reconnect: the hub is killed (SIGKILL, its PID) and restarted on the same port, 3
#      times; the time until a SCIM GET through it answers 200 again.
# Prints one table. Clients keep one HTTP/1.1 connection each (no TCP connect measured).
# The agent handles the requests of one poll answer concurrently (relay::link::CONCURRENCY,
# 8) and posts each reply when ready, so the 4- and 16-client rows measure that pipeline.
#
# Its servers are its own, never the test servers: slapd instance "openldap-relaybench" on
# 127.0.0.1:$IDRELAY_RELAYBENCH_LDAP_PORT (3394; ldaps $IDRELAY_RELAYBENCH_LDAPS_PORT, 3641)
# seeded with N (1000) users and N/50 groups; scim2-server "scim-relaybench" on
# :$IDRELAY_RELAYBENCH_SCIM_PORT (8096) for the agent's own export; idrelay-hub on a free
# loopback port; the agent (`idrelay run` with [relay]). All state under $IDRELAY_TESTBED;
# everything it started is stopped at the end (by PID) unless --keep (slapd, scim2-server).
# The seeded directory is reused while N stays the same.
# The hub keeps its state as configured by default (`storage = "sqlite"`, in the run's
# directory); IDRELAY_RELAYBENCH_HUB_STORAGE=memory measures it without (SCIM forwards are
# never stored; heartbeats are). Binaries: `cargo build --release --bins` once;
# IDRELAY_BIN and IDRELAY_HUB_BIN (both) skip the build. The run after the build is bounded by IDRELAY_RELAYBENCH_DEADLINE (420 s).
# Needs root on first use (apt-get install slapd ldap-utils curl).
set -euo pipefail
ROOT_FLAG=""
if [ "$(id -u)" = 0 ]; then ROOT_FLAG="--allow-root"; fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TB=$ROOT/scripts/testbed
TB_NAME=bench-relay
# shellcheck source-path=SCRIPTDIR source=testbed/common.sh
. "$TB/common.sh"
export IDRELAY_TESTBED

USERS=1000
N=300
HUB_STORAGE=${IDRELAY_RELAYBENCH_HUB_STORAGE:-sqlite}
SECS=15
KEEP=0
usage() { sed -n '2p' "$0" | sed 's/^# //' >&2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --users) USERS=${2:?}; shift ;;
    --n) N=${2:?}; shift ;;
    --seconds) SECS=${2:?}; shift ;;
    --keep) KEEP=1 ;;
    -h | --help) sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) usage; die "unknown argument $1" ;;
  esac
  shift
done
for v in "users $USERS" "n $N" "seconds $SECS"; do
  if ! [[ ${v#* } =~ ^[1-9][0-9]*$ ]]; then die "--${v%% *} must be a positive number"; fi
done
[ "$USERS" -ge 50 ] || die "--users must be >= 50"
[ "$SECS" -le 120 ] || die "--seconds must be <= 120"

LDAP_PORT=${IDRELAY_RELAYBENCH_LDAP_PORT:-3394}
LDAPS_PORT=${IDRELAY_RELAYBENCH_LDAPS_PORT:-3641}
SCIM_PORT=${IDRELAY_RELAYBENCH_SCIM_PORT:-8096}
DEADLINE=${IDRELAY_RELAYBENCH_DEADLINE:-420}
SCIM_TOKEN=relaybench-scim-token
AGENT_ID=relaybench
B=$IDRELAY_TESTBED/relaybench # configs, secrets, logs and outputs of this run
LOAD=(python3 "$ROOT/scripts/bench/relay-load.py")

ldap_tb() { IDRELAY_LDAP_INSTANCE=openldap-relaybench IDRELAY_LDAP_PORT=$LDAP_PORT IDRELAY_LDAPS_PORT=$LDAPS_PORT "$TB/openldap.sh" "$@"; }
scim_tb() { IDRELAY_SCIM_INSTANCE=scim-relaybench IDRELAY_SCIM_PORT=$SCIM_PORT IDRELAY_SCIM_TOKEN=$SCIM_TOKEN "$TB/scim-server.sh" "$@"; }

AGENT_PID=""
HUB_PID=""
WATCHDOG_PID=""
PROBE_PID=""
# stop_pid PID WHAT : TERM that one process (a child of this script), KILL after 5 s.
stop_pid() {
  local pid=$1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 25); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$2 (pid $pid) ignored SIGTERM for 5 s; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$WATCHDOG_PID" ]; then kill "$WATCHDOG_PID" 2>/dev/null || true; fi
  stop_pid "$PROBE_PID" probe
  stop_pid "$AGENT_PID" agent
  stop_pid "$HUB_PID" hub
  if [ "$KEEP" = 0 ]; then
    log "stopping the benchmark's slapd and scim2-server (--keep leaves them running)"
    scim_tb stop 2>/dev/null || true
    ldap_tb stop 2>/dev/null || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# jq1 JSON KEY : one field of a JSON object ("-" when missing or null).
jq1() { python3 -c 'import json, sys; v = json.loads(sys.argv[1]).get(sys.argv[2]); print("-" if v is None else v)' "$@"; }
ms() { awk -v x="$1" 'BEGIN { if (x == "-" || x == "") print "-"; else if (x < 10) printf "%.2f", x; else printf "%.1f", x }'; }
# ticks PID : CPU time (user + system, clock ticks) the process has used so far.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
CLK_TCK=$(getconf CLK_TCK)
secs_since() { awk -v a="$1" -v b="${2:-$EPOCHREALTIME}" 'BEGIN { printf "%.3f", b - a }'; }

T0=$(now)
log "relay benchmark: $USERS users, $N sequential requests, ${SECS} s per load step"
log "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
ensure_pkgs slapd ldap-utils curl
mkdir -p "$B"
chmod 700 "$B"

# --- 1. the binaries ------------------------------------------------------------------
cd "$ROOT"
if [ -n "${IDRELAY_BIN:-}" ] && [ -n "${IDRELAY_HUB_BIN:-}" ]; then
  BIN=$IDRELAY_BIN
  HUB_BIN=$IDRELAY_HUB_BIN
  log "using IDRELAY_BIN=$BIN and IDRELAY_HUB_BIN=$HUB_BIN (no build)"
else
  [ -z "${IDRELAY_BIN:-}${IDRELAY_HUB_BIN:-}" ] || die "set both IDRELAY_BIN and IDRELAY_HUB_BIN, or neither"
  locked=()
  if [ -f Cargo.lock ]; then locked=(--locked); fi
  log "cargo build --release --bins ${locked[*]}"
  t0=$(now)
  cargo build --release --bins "${locked[@]}" || die "cargo build --release --bins failed"
  log "built in $(since "$t0") s"
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/idrelay
  HUB_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/idrelay-hub
fi
[ -x "$BIN" ] || die "no executable at $BIN"
[ -x "$HUB_BIN" ] || die "no executable at $HUB_BIN"
VERSION=$("$BIN" version 2>/dev/null | head -n 1 || echo "idrelay (version unknown)")

# From here on the run is bounded: the watchdog TERMs this script (its own PID) at the
# deadline, and the EXIT trap stops everything it started.
(
  trap 'exit 0' TERM
  end=$((SECONDS + DEADLINE))
  while [ $SECONDS -lt $end ]; do sleep 1; done
  echo "[$TB_NAME] ERROR: deadline of $DEADLINE s passed (IDRELAY_RELAYBENCH_DEADLINE); stopping" >&2
  kill -TERM $$
) &
WATCHDOG_PID=$!

# --- 2. the directory and the agent's own SCIM endpoint -------------------------------
LDAP_D=$IDRELAY_TESTBED/openldap-relaybench
if [ "$(cat "$LDAP_D/relaybench-seeded" 2>/dev/null)" = "$USERS" ]; then
  log "reusing the seeded directory ($USERS users) in $LDAP_D"
else
  log "seeding $USERS users and $((USERS / 50)) groups into a new directory in $LDAP_D"
  ldap_tb reset
  ldap_tb seed "$USERS"
  echo "$USERS" >"$LDAP_D/relaybench-seeded"
fi
eval "$(ldap_tb start)"
scim_tb stop 2>/dev/null || true # a fresh (empty) one: the agent's full pass is quick
scim_tb start >/dev/null

# --- 3. configs and secrets -------------------------------------------------------------
HUB_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
HUB_URL=http://127.0.0.1:$HUB_PORT
STATE=$B/state
rm -rf "$STATE"
mkdir -p "$STATE"
(
  umask 077
  printf '%s\n' "$OPENLDAP_SYNC_PW" >"$B/ldap.secret"
  printf '%s' "$OPENLDAP_SYNC_PW" >"$B/ldap.secret.nonl" # ldapsearch -y takes it verbatim
  printf '%s\n' "$SCIM_TOKEN" >"$B/scim.token"
  printf 'relaybench-operator-%s\n' "$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')" >"$B/operator.token"
  printf 'relaybench-agent-%s\n' "$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')" >"$B/agent.token"
)
chmod 600 "$B"/*.secret "$B"/*.secret.nonl "$B"/*.token
cat >"$B/hub.toml" <<EOF
# written by scripts/bench-relay.sh
listen = "127.0.0.1:$HUB_PORT"
operator_token_file = "$B/operator.token"
storage = "$HUB_STORAGE"
state_dir = "$B/hub-state"
heartbeat_secs = 5
lease_ttl_heartbeats = 3
poll_wait_secs = 30
forward_timeout_secs = 10

[[agent]]
id = "$AGENT_ID"
token_file = "$B/agent.token"
EOF
cat >"$B/idrelay.toml" <<EOF
# written by scripts/bench-relay.sh
[agent]
id = "$AGENT_ID"
state_dir = "$STATE"
[directory]
url = "$OPENLDAP_URL"
starttls = false
bind_dn = "$OPENLDAP_SYNC_DN"
password_file = "$B/ldap.secret"
base_dn = "$OPENLDAP_BASE_DN"
kind = "auto"
[scope]
include = ["ou=people,$OPENLDAP_BASE_DN", "ou=groups,$OPENLDAP_BASE_DN"]
[scim]
url = "http://127.0.0.1:$SCIM_PORT/v2"
token_file = "$B/scim.token"
[relay]
url = "$HUB_URL"
token_file = "$B/agent.token"
heartbeat_secs = 5
poll_wait_secs = 30
EOF
chmod 600 "$B/hub.toml" "$B/idrelay.toml"

# --- 4. hub and agent -------------------------------------------------------------------
: >"$B/hub.log"
start_hub() { # sets HUB_PID; waits until it listens
  "$HUB_BIN" --config "$B/hub.toml" </dev/null >>"$B/hub.log" 2>&1 &
  HUB_PID=$!
  if ! wait_for 10 port_busy "$HUB_PORT"; then
    log_tail "$B/hub.log"
    die "idrelay-hub did not listen on $HUB_URL within 10 s"
  fi
}
"$HUB_BIN" --config "$B/hub.toml" --check >"$B/hub-check.out" 2>&1 || {
  cat "$B/hub-check.out" >&2
  die "idrelay-hub --check failed"
}
start_hub
log "hub: pid $HUB_PID on $HUB_URL"
"$BIN" ${ROOT_FLAG:+"$ROOT_FLAG"} --config "$B/idrelay.toml" check >"$B/check.out" 2>&1 || {
  cat "$B/check.out" >&2
  die "idrelay check failed"
}
"$BIN" ${ROOT_FLAG:+"$ROOT_FLAG"} -q --config "$B/idrelay.toml" run </dev/null >"$B/agent.log" 2>&1 &
AGENT_PID=$!
log "agent: pid $AGENT_PID; waiting until the hub says active and its full pass is done"
HUBARGS=(--url "$HUB_URL" --token-file "$B/operator.token")
t0=$(now)
if ! W=$(timeout 150 "${LOAD[@]}" wait-agent "${HUBARGS[@]}" --agent "$AGENT_ID" --state following --timeout 120); then
  log "wait-agent: $W"
  log_tail "$B/agent.log"
  log_tail "$B/hub.log"
  die "the agent did not become active and following within 120 s"
fi
log "agent active and following after $(since "$t0") s ($W)"

# --- 5. the ids -------------------------------------------------------------------------
timeout 60 "${LOAD[@]}" ids "${HUBARGS[@]}" --agent "$AGENT_ID" --limit "$USERS" >"$B/ids.jsonl" ||
  die "could not list the users through the hub"
NIDS=$(wc -l <"$B/ids.jsonl")
[ "$NIDS" -gt 0 ] || die "the list through the hub returned no users"
log "$NIDS user ids listed through the hub"

# --- 6. measurements --------------------------------------------------------------------
ROWS=()
NOTES=()
# row WHAT JSON [RPS] : one table row from a relay-load.py summary.
row() {
  local what=$1 j=$2 rps=${3:--} cpu=${4:-} err
  err=$(jq1 "$j" errors)
  ROWS+=("$(printf '%-44s | %6s | %8s | %8s | %8s | %8s | %6s | %6s' "$what" "$(jq1 "$j" n)" \
    "$(ms "$(jq1 "$j" p50)")" "$(ms "$(jq1 "$j" p95)")" "$(ms "$(jq1 "$j" p99)")" \
    "$(ms "$(jq1 "$j" max)")" "$rps" "$err")${cpu:+ | $cpu}")
  if [ "$err" != 0 ] && [ "$err" != - ]; then
    NOTES+=("$what: first error: $(jq1 "$j" first_error)")
  fi
}
run() { # run SECONDS SUBCOMMAND ARGS... : relay-load.py bounded by timeout; prints its JSON
  local t=$1 out
  shift
  out=$(timeout "$t" "${LOAD[@]}" "$@") || die "relay-load.py $1 failed or timed out (${t} s): $out"
  printf '%s' "$out"
}

log "1/5 sequential GET /Users/{id} through the hub, $N requests"
j=$(run 180 seq "${HUBARGS[@]}" --agent "$AGENT_ID" --ids "$B/ids.jsonl" --mode get --n "$N")
row "relay GET /Users/{id}, sequential" "$j"
log "2/5 sequential GET /Users?filter=userName eq, $N requests"
j=$(run 180 seq "${HUBARGS[@]}" --agent "$AGENT_ID" --ids "$B/ids.jsonl" --mode filter --n "$N")
row "relay GET /Users?filter=userName eq, seq." "$j"

log "3/5 throughput: 1, 4, 16 clients, ${SECS} s each (GET /Users/{id})"
SLAPD_PID=$(cat "$IDRELAY_TESTBED/openldap-relaybench/slapd.pid")
for c in 1 4 16; do
  c0=("$(ticks "$AGENT_PID")" "$(ticks "$HUB_PID")" "$(ticks "$SLAPD_PID")")
  t0=$EPOCHREALTIME
  j=$(run $((SECS + 60)) load "${HUBARGS[@]}" --agent "$AGENT_ID" --ids "$B/ids.jsonl" --mode get --concurrency "$c" --seconds "$SECS")
  el=$(secs_since "$t0")
  c1=("$(ticks "$AGENT_PID")" "$(ticks "$HUB_PID")" "$(ticks "$SLAPD_PID")")
  cpu=$(awk -v t="$CLK_TCK" -v s="$el" -v a="$((c1[0] - c0[0]))" -v h="$((c1[1] - c0[1]))" -v l="$((c1[2] - c0[2]))" \
    'BEGIN { printf "%.0f/%.0f/%.0f", a / t / s * 100, h / t / s * 100, l / t / s * 100 }')
  row "relay GET /Users/{id}, $c client(s), ${SECS} s" "$j" "$(awk -v x="$(jq1 "$j" rps)" 'BEGIN { printf "%.0f", x }')" "$cpu"
done

log "4/5 baselines: ldapsearch per query ($N each), hub alone (GET /v1/agents)"
LDAPARGS=(--ids "$B/ids.jsonl" --ldap-url "$OPENLDAP_URL" --bind-dn "$OPENLDAP_SYNC_DN" --pw-file "$B/ldap.secret.nonl" --base "ou=people,$OPENLDAP_BASE_DN" --n "$N")
j=$(run 180 ldap "${LDAPARGS[@]}" --mode get)
row "ldapsearch process, (entryUUID=id)" "$j"
j=$(run 180 ldap "${LDAPARGS[@]}" --mode filter)
row "ldapsearch process, (uid=userName)" "$j"
j=$(run 120 hub "${HUBARGS[@]}" --n "$N")
row "hub alone: GET /v1/agents, sequential" "$j"
# The same load generator against the hub alone: what it can drive without the relay.
j=$(run $((SECS + 60)) load "${HUBARGS[@]}" --agent "$AGENT_ID" --ids "$B/ids.jsonl" --mode hub --concurrency 16 --seconds "$SECS")
row "hub alone: GET /v1/agents, 16 clients, ${SECS} s" "$j" "$(awk -v x="$(jq1 "$j" rps)" 'BEGIN { printf "%.0f", x }')"

log "5/5 reconnect: SIGKILL the hub, restart it on the same port, time until a SCIM GET answers 200 (x3)"
RECONNECT=()
for i in 1 2 3; do
  sleep 2 # the agent's poll is held again
  # The probe runs across the kill: once told the kill's time, it waits for a 200 to a
  # request sent after it (a restart faster than its 20 ms probe interval is measured too).
  rm -f "$B/killed-$i"
  timeout 75 "${LOAD[@]}" wait-ok "${HUBARGS[@]}" --agent "$AGENT_ID" --ids "$B/ids.jsonl" \
    --killed-file "$B/killed-$i" --timeout 60 >"$B/reconnect-$i.json" &
  PROBE_PID=$!
  sleep 0.5
  backoffs_before=$(grep -c 'reconnecting in' "$B/agent.log" || true)
  t_kill=$EPOCHREALTIME
  kill -KILL "$HUB_PID"
  echo "$t_kill" >"$B/killed-$i.tmp" && mv "$B/killed-$i.tmp" "$B/killed-$i"
  wait "$HUB_PID" 2>/dev/null || true
  t_spawn=$EPOCHREALTIME
  "$HUB_BIN" --config "$B/hub.toml" </dev/null >>"$B/hub.log" 2>&1 &
  HUB_PID=$!
  for _ in $(seq 1 1000); do port_busy "$HUB_PORT" && break; sleep 0.01; done
  t_listen=$EPOCHREALTIME
  wait "$PROBE_PID" || {
    log_tail "$B/agent.log"
    die "restart $i: no SCIM GET answered 200 within 60 s: $(cat "$B/reconnect-$i.json")"
  }
  PROBE_PID=""
  j=$(cat "$B/reconnect-$i.json")
  t_ok=$(jq1 "$j" at)
  waits=$({ grep 'reconnecting in' "$B/agent.log" || true; } | tail -n +"$((backoffs_before + 1))" |
    sed -n 's/.*reconnecting in \([0-9.]*\) s.*/\1/p' | paste -sd, -)
  RECONNECT+=("$(printf 'restart %d: %s s after the kill (%s s after the new hub started; it listened after %s s); agent backoff waits (s): %s; probe answers %s' \
    "$i" "$(secs_since "$t_kill" "$t_ok")" "$(secs_since "$t_spawn" "$t_ok")" "$(secs_since "$t_spawn" "$t_listen")" \
    "${waits:-none (no poll failed)}" "$(jq1 "$j" statuses)")")
  log "${RECONNECT[-1]}"
done

# --- 7. report --------------------------------------------------------------------------
HANDLED=$(grep -c 'relay: request ' "$B/agent.log" || true)
cat <<EOF

== idrelay relay benchmark: $NIDS users ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))
   $VERSION; client -> idrelay-hub (plain HTTP, loopback) -> long-poll -> agent -> slapd (mdb)
   ms per request; relay rows keep one HTTP/1.1 connection per client; ldapsearch rows are
   one process per query (fork + exec + connect + bind + search). CPU %: of one core, during
   the load step (the load generator, python, uses the rest of the machine).

what                                         |      n |  p50 ms  |  p95 ms  |  p99 ms  |  max ms  |  req/s | errors | CPU % agent/hub/slapd
---------------------------------------------+--------+----------+----------+----------+----------+--------+--------+----------------------
EOF
printf '%s\n' "${ROWS[@]}"
echo
echo "reconnect: SIGKILL the hub, restart it on the same port, time until a SCIM GET through it answers 200"
echo "(the agent waits a jittered 0-1 s after a failed poll, then 0-2 s, ...; probe status 0 = connection refused):"
printf '  %s\n' "${RECONNECT[@]}"
if [ ${#NOTES[@]} -gt 0 ]; then
  echo
  printf '%s\n' "${NOTES[@]}"
fi
cat <<EOF

agent log: $HANDLED relay requests handled (one line each, info level); outputs in $B
total $(since "$T0") s
EOF
