#!/usr/bin/env bash
# bench-fleet.sh [--agents N] [--seconds S] [--rate C] [--ramp-secs R] [--hub-extra TOML]
#                [--replicas 2] [--first-retry-ms MS]
#
# The fleet benchmark (a script, not a test; issue 18 item 4): one idrelay-hub serving N
# simulated agents (default 10,000), each a light client (scripts/bench/fleet-load.py, not
# a full agent) that heartbeats every 60 s and long-polls 30 s on its own keep-alive
# connection, as `idrelay run` with [relay] does, and paces its retries exactly as the agent
# does (src/relay/link.rs: a broken poll is retried within RECONNECT_FIRST = 250 ms, then
# after 1 s doubling to 60 s, all jittered from 0; --first-retry-ms 0 gives the rule before
# it, 1 s doubling, for comparison). An operator sends C commands a second
# (default 20) to agents drawn at random for S seconds (default 60); each agent answers at
# once. Measured in one run, on the same hub process:
#   1. baseline: 10 agents connected, the same command rate: delivery latency (operator
#      sends -> the agent's poll answer carries it) p50/p95/p99/max, hub RSS;
#   2. N agents connected (spread over R seconds, default 30): the same figures, and what
#      the hub holds (RSS now and at its peak, VmHWM), CPU it used, and requests lost
#      (queued, never delivered) or delivered twice.
# Targets of issue 18: N = 10,000 on this 2-core machine, p99 delivery <= 1 s, hub RSS
# <= 256 MiB, none lost or delivered twice.
#
# --replicas 2: the hub on PostgreSQL (a fresh database on the server of
# IDRELAY_TEST_PG_URL, scripts/testbed/postgres.sh; dropped at the end), and a third run:
#   3. N agents spread over two replicas on that one database (agent i on replica i mod 2;
#      the operator's connections on both), replica B SIGKILLed half-way through the
#      command phase; its agents and operator connections move to replica A. Printed
#      beside runs 1 and 2 (the same database, replica A alone): delivery latency, lost,
#      delivered twice after an acknowledged answer, redelivered (answer lost with B),
#      RSS of A and of B (just before the kill); how soon B's agents polled again, the
#      commands queued while their agent was away, deliveries over 1 s, and connections a
#      full listen queue dropped meanwhile (the kernel's count). Each command's delivery
#      time, by when it was sent relative to the kill, is in $IDRELAY_TESTBED/fleetbench/
#      failover-trace.jsonl.
#
# --hub-extra adds TOML lines to the hub's config (for example 'storage = "memory"'; the
# default store is SQLite in $IDRELAY_TESTBED/fleetbench/state, emptied at every run). The hub listens on a free loopback port; its state, tokens (0600) and logs
# are under $IDRELAY_TESTBED/fleetbench; it is stopped at the end by its PID.
# IDRELAY_HUB_BIN=path uses that binary instead of `cargo build --release --bin idrelay-hub`.
# The simulated agents need N + 100 open files in this shell (the hard limit must allow it).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TB=$ROOT/scripts/testbed
TB_NAME=bench-fleet
# shellcheck source-path=SCRIPTDIR source=testbed/common.sh
. "$TB/common.sh"

AGENTS=10000
SECS=60
RATE=20
RAMP=30
HUB_EXTRA=""
REPLICAS=1
FIRST_RETRY_MS=250
usage() { sed -n '2p' "$0" | sed 's/^# //' >&2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --agents) AGENTS=${2:?}; shift ;;
    --seconds) SECS=${2:?}; shift ;;
    --rate) RATE=${2:?}; shift ;;
    --ramp-secs) RAMP=${2:?}; shift ;;
    --hub-extra) HUB_EXTRA=${2?}; shift ;;
    --replicas) REPLICAS=${2:?}; shift ;;
    --first-retry-ms) FIRST_RETRY_MS=${2:?}; shift ;;
    -h | --help) sed -n '2,39p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) usage; die "unknown argument $1" ;;
  esac
  shift
done
for v in "agents $AGENTS" "seconds $SECS" "rate $RATE" "ramp-secs $RAMP"; do
  if ! [[ ${v#* } =~ ^[1-9][0-9]*$ ]]; then die "--${v%% *} must be a positive number"; fi
done
[ "$AGENTS" -ge 10 ] || die "--agents must be >= 10"
[ "$AGENTS" -le 15000 ] || die "--agents must be <= 15000 (one socket each, in one process)"
[ "$SECS" -le 600 ] || die "--seconds must be <= 600"
case "$REPLICAS" in 1 | 2) ;; *) die "--replicas must be 1 or 2" ;; esac

need=$((AGENTS + 100))
ulimit -n "$need" 2>/dev/null || die "cannot raise the open-file limit to $need (hard limit $(ulimit -Hn))"

B=$IDRELAY_TESTBED/fleetbench
HUB_PID=""
HUB2_PID=""
PG_DB=""
stop_hub() { # PID
  if [ -n "$1" ] && kill -0 "$1" 2>/dev/null; then
    kill -TERM "$1" 2>/dev/null || true
    for _ in $(seq 1 25); do kill -0 "$1" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$1" 2>/dev/null || true
  fi
  [ -z "$1" ] || wait "$1" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_hub "$HUB_PID"
  stop_hub "$HUB2_PID"
  if [ -n "$PG_DB" ]; then
    psql "$IDRELAY_TEST_PG_URL" -qAtc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

jq1() { python3 -c 'import json, sys; v = json.loads(sys.argv[1]).get(sys.argv[2]); print("-" if v is None else v)' "$@"; }
kib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
vm() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
# The kernel's count of connections dropped because a listen queue was full (every process
# on the machine): each costs its client a SYN retransmission (1 s, then 3 s, 7 s ...).
overflows() {
  awk '$1 == "TcpExt:" { if (!h) { for (i = 2; i <= NF; i++) n[i] = $i; h = 1 }
    else for (i = 2; i <= NF; i++) if (n[i] == "ListenOverflows") print $i }' /proc/net/netstat 2>/dev/null || echo 0
}
CLK_TCK=$(getconf CLK_TCK)

T0=$(now)
log "fleet benchmark: $AGENTS simulated agents, $RATE commands/s for $SECS s"
log "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
mkdir -p "$B"
chmod 700 "$B"

# --- 1. the hub binary ----------------------------------------------------------------
cd "$ROOT"
if [ -n "${IDRELAY_HUB_BIN:-}" ]; then
  HUB_BIN=$IDRELAY_HUB_BIN
  log "using IDRELAY_HUB_BIN=$HUB_BIN (no build)"
else
  locked=()
  if [ -f Cargo.lock ]; then locked=(--locked); fi
  log "cargo build --release --bin idrelay-hub ${locked[*]}"
  cargo build --release --bin idrelay-hub "${locked[@]}" || die "cargo build failed"
  HUB_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/idrelay-hub
fi
VERSION=$("$HUB_BIN" --version 2>/dev/null | head -1 || echo "idrelay-hub (version unknown)")

# --- 2. tokens and config (one [[agent]] per simulated agent) --------------------------
rm -rf "$B/tokens" "$B/state"
mkdir -m 700 "$B/tokens" "$B/state"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
HUB_PORT=$(free_port)
if [ "$REPLICAS" = 2 ]; then
  [ -n "${IDRELAY_TEST_PG_URL:-}" ] ||
    die "--replicas 2 needs IDRELAY_TEST_PG_URL (eval \"\$(scripts/testbed/postgres.sh start)\")"
  command -v psql >/dev/null || die "--replicas 2 needs psql (Debian's postgresql-client)"
  PG_DB=fleetbench_$$
  psql "$IDRELAY_TEST_PG_URL" -qAtc "CREATE DATABASE $PG_DB" >/dev/null || die "cannot create database $PG_DB"
  (umask 077 && printf '%s/%s\n' "${IDRELAY_TEST_PG_URL%/*}" "$PG_DB" >"$B/database-url")
  HUB_EXTRA=$(printf 'storage = "postgres"\ndatabase_url_file = "%s"\n%s' "$B/database-url" "$HUB_EXTRA")
  log "store: PostgreSQL database $PG_DB (two replicas in run 3)"
fi
python3 - "$B" "$AGENTS" "$HUB_PORT" "$HUB_EXTRA" <<'PY'
import json, os, secrets, sys
b, n, port, extra = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def secret_file(path, token):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
secret_file(f"{b}/operator.token", secrets.token_hex(16))
lines = [
    "# written by scripts/bench-fleet.sh",
    f'listen = "127.0.0.1:{port}"',
    f'operator_token_file = "{b}/operator.token"',
    f'state_dir = "{b}/state"',
    "heartbeat_secs = 60",
    "poll_wait_secs = 30",
    f"max_connections = {n + 1000}",
    f"max_connections_per_address = {n + 1000}",
]
if extra:
    lines.append(extra)
with open(f"{b}/agents.jsonl", "w") as out:
    for i in range(n):
        aid = f"sim-{i:05d}"
        tok = secrets.token_hex(16)
        secret_file(f"{b}/tokens/{aid}", tok)
        lines += ["", "[[agent]]", f'id = "{aid}"', f'token_file = "{b}/tokens/{aid}"']
        out.write(json.dumps({"id": aid, "token": tok}) + "\n")
os.chmod(f"{b}/agents.jsonl", 0o600)
with open(f"{b}/hub.toml", "w") as f:
    f.write("\n".join(lines) + "\n")
os.chmod(f"{b}/hub.toml", 0o600)
PY
HUB_URL=http://127.0.0.1:$HUB_PORT

# --- 3. the hub -------------------------------------------------------------------------
: >"$B/hub.log"
"$HUB_BIN" --config "$B/hub.toml" </dev/null >>"$B/hub.log" 2>&1 &
HUB_PID=$!
if ! wait_for 30 port_busy "$HUB_PORT"; then
  log_tail "$B/hub.log"
  die "idrelay-hub did not listen on $HUB_URL within 30 s"
fi
log "hub: pid $HUB_PID on $HUB_URL, RSS $(kib "$(vm "$HUB_PID" VmRSS)") MiB with $AGENTS agents configured"

LOAD=(python3 "$ROOT/scripts/bench/fleet-load.py" --url "$HUB_URL" --agents "$B/agents.jsonl"
  --operator-token-file "$B/operator.token" --rate "$RATE" --seconds "$SECS"
  --first-retry-ms "$FIRST_RETRY_MS")
# run N RAMP : one load run; prints its JSON line.
run() {
  local out
  out=$("${LOAD[@]}" --count "$1" --ramp-secs "$2") || die "fleet-load.py failed: $out"
  printf '%s' "$out"
}

log "1/2 baseline: 10 agents, $RATE commands/s for $SECS s"
c0=$(ticks "$HUB_PID")
BASE=$(run 10 1)
BASE_RSS=$(vm "$HUB_PID" VmRSS)
BASE_CPU=$(( $(ticks "$HUB_PID") - c0 ))
log "baseline: $BASE"

log "2/2 $AGENTS agents (ramp $RAMP s), $RATE commands/s for $SECS s"
c0=$(ticks "$HUB_PID")
FULL=$(run "$AGENTS" "$RAMP")
FULL_RSS=$(vm "$HUB_PID" VmRSS)
FULL_CPU=$(( $(ticks "$HUB_PID") - c0 ))
HWM=$(vm "$HUB_PID" VmHWM)
log "fleet: $FULL"
kill -0 "$HUB_PID" 2>/dev/null || die "the hub died during the run (see $B/hub.log)"

if [ "$REPLICAS" = 2 ]; then
  # --- 4. a second replica on the same database; B killed half-way -----------------------
  HUB2_PORT=$(free_port)
  sed "s/^listen = .*/listen = \"127.0.0.1:$HUB2_PORT\"/" "$B/hub.toml" >"$B/hub2.toml"
  chmod 600 "$B/hub2.toml"
  : >"$B/hub2.log"
  "$HUB_BIN" --config "$B/hub2.toml" </dev/null >>"$B/hub2.log" 2>&1 &
  HUB2_PID=$!
  if ! wait_for 30 port_busy "$HUB2_PORT"; then
    log_tail "$B/hub2.log"
    die "replica B did not listen on 127.0.0.1:$HUB2_PORT within 30 s"
  fi
  log "3/3 $AGENTS agents over replicas A (pid $HUB_PID) and B (pid $HUB2_PID), B killed after $((SECS / 2)) s of commands"
  c0=$(ticks "$HUB_PID")
  o0=$(overflows)
  TWO=$("${LOAD[@]}" --url "$HUB_URL,http://127.0.0.1:$HUB2_PORT" --count "$AGENTS" --ramp-secs "$RAMP" \
    --kill-pid "$HUB2_PID" --kill-after-secs "$((SECS / 2))" --trace "$B/failover-trace.jsonl") ||
    die "fleet-load.py failed: $TWO"
  TWO_OVERFLOWS=$(( $(overflows) - o0 ))
  TWO_RSS=$(vm "$HUB_PID" VmRSS)
  TWO_CPU=$(( $(ticks "$HUB_PID") - c0 ))
  HWM=$(vm "$HUB_PID" VmHWM)
  wait "$HUB2_PID" 2>/dev/null || true
  HUB2_PID=""
  log "two replicas: $TWO"
  kill -0 "$HUB_PID" 2>/dev/null || die "replica A died during the run (see $B/hub.log)"
fi

row() { # LABEL JSON RSS_KIB CPU_TICKS
  printf '%-26s | %6s/%-6s | %6s | %9s | %4s | %4s | %8s | %8s | %8s | %8s | %7s | %5s\n' \
    "$1" "$(jq1 "$2" agents_up)" "$(jq1 "$2" agents)" "$(jq1 "$2" commands_queued)" \
    "$(jq1 "$2" delivered)" "$(jq1 "$2" lost)" "$(jq1 "$2" duplicates)" \
    "$(jq1 "$2" p50_ms)" "$(jq1 "$2" p95_ms)" "$(jq1 "$2" p99_ms)" "$(jq1 "$2" max_ms)" \
    "$(kib "$3")" "$(awk -v t="$4" -v h="$CLK_TCK" 'BEGIN { printf "%.1f", t / h }')"
}
echo
echo "== idrelay fleet benchmark: $AGENTS simulated agents, $RATE commands/s for $SECS s ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg))"
echo "   $VERSION; hub config extra: ${HUB_EXTRA:-none}" | tr '\n' ' '
echo
echo "agents                     |  up/configured | queued | delivered | lost | dup  |   p50 ms |   p95 ms |   p99 ms |   max ms | RSS MiB | CPU s"
echo "-------------------------- | -------------- | ------ | --------- | ---- | ---- | -------- | -------- | -------- | -------- | ------- | -----"
row "baseline: 10" "$BASE" "$BASE_RSS" "$BASE_CPU"
row "fleet: $AGENTS" "$FULL" "$FULL_RSS" "$FULL_CPU"
if [ "$REPLICAS" = 2 ]; then
  row "2 replicas, B killed: $AGENTS" "$TWO" "$TWO_RSS" "$TWO_CPU"
  echo "failover: $(jq1 "$TWO" links_broken) links broke; the poll out again after p50 $(jq1 "$TWO" reconnect_p50_ms) ms, p99 $(jq1 "$TWO" reconnect_p99_ms) ms, max $(jq1 "$TWO" reconnect_max_ms) ms; $(jq1 "$TWO" queued_while_down) commands queued while their agent's link was down: p50 $(jq1 "$TWO" queued_while_down_p50_ms) ms, max $(jq1 "$TWO" queued_while_down_max_ms) ms; $(jq1 "$TWO" over_1s) deliveries over 1 s (per command: $B/failover-trace.jsonl); connections dropped by a full listen queue during the run (machine-wide): $TWO_OVERFLOWS"
  echo "two replicas: RSS of A $(kib "$TWO_RSS") MiB, of B $(kib "$(jq1 "$TWO" killed_rss_kib)") MiB just before its SIGKILL; redelivered (answer lost with B) $(jq1 "$TWO" redelivered), clients moved to A $(jq1 "$TWO" moved); client errors: $(jq1 "$TWO" errors)"
fi
echo "hub peak RSS (VmHWM): $(kib "$HWM") MiB; polls $(jq1 "$FULL" polls), heartbeats $(jq1 "$FULL" heartbeats); client errors: $(jq1 "$FULL" errors)"
echo "targets (issue 18): p99 <= 1000 ms, hub RSS <= 256 MiB, lost 0, duplicates 0; total $(since "$T0") s"
