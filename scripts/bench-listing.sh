#!/usr/bin/env bash
# bench-listing.sh [--agents N] [--per-group K] [--reps R] [--base REV]
#
# The operator listing at fleet scale (a script, not a test; issue 18, the dashboard's
# listing). One run, two hub binaries on the same machine one after the other: the hub
# before the paged listing (REV, default the parent of the commit that added
# src/hub/listing.rs) and this tree's. Each serves N configured agents (default 10,000) in
# groups of K (default 2), every one of which has sent a heartbeat (the example of
# docs/protocol.md, every 100th `degraded`) and one poll (scripts/bench/listing-load.py),
# so the listing shows alive, polling agents. Then each listing is fetched R times
# (default 20) on one keep-alive connection with the operator token and timed whole:
#   before: GET /v1/agents (every agent; what the dashboard fetched every refresh)
#   now:    GET /v1/agents (the same unpaged form), one page of 50 (first, middle, the
#           unhealthy filter, one group), GET /v1/groups (the summary per group)
# and the hub's RSS once the agents are known. Numbers are p50/p90/max ms and bytes.
#
# Hubs listen on free loopback ports with `storage = "memory"`; their config, tokens (0600)
# and logs are under $IDRELAY_TESTBED/listingbench; each is stopped by its PID. Builds with
# `cargo build --release --bin idrelay-hub` (the base from `git archive REV`, in the same
# target directory), unless IDRELAY_HUB_BIN and IDRELAY_BASE_HUB_BIN name the binaries.
# Delete target/release afterwards on a shared machine.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TB=$ROOT/scripts/testbed
TB_NAME=bench-listing
# shellcheck source-path=SCRIPTDIR source=testbed/common.sh
. "$TB/common.sh"

AGENTS=10000
PER=2
REPS=20
BASE=""
usage() { sed -n '2p' "$0" | sed 's/^# //' >&2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --agents) AGENTS=${2:?}; shift ;;
    --per-group) PER=${2:?}; shift ;;
    --reps) REPS=${2:?}; shift ;;
    --base) BASE=${2:?}; shift ;;
    -h | --help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) usage; die "unknown argument $1" ;;
  esac
  shift
done
for v in "agents $AGENTS" "per-group $PER" "reps $REPS"; do
  if ! [[ ${v#* } =~ ^[1-9][0-9]*$ ]]; then die "--${v%% *} must be a positive number"; fi
done
if [ "$AGENTS" -lt 100 ] || [ "$AGENTS" -gt 50000 ]; then die "--agents must be 100-50000"; fi
[ "$REPS" -le 1000 ] || die "--reps must be <= 1000"

B=$IDRELAY_TESTBED/listingbench
HUB_PID=""
stop_hub() {
  if [ -n "$HUB_PID" ] && kill -0 "$HUB_PID" 2>/dev/null; then
    kill -TERM "$HUB_PID" 2>/dev/null || true
    for _ in $(seq 1 25); do kill -0 "$HUB_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$HUB_PID" 2>/dev/null || true
    wait "$HUB_PID" 2>/dev/null || true
  fi
  HUB_PID=""
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_hub
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

kib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
vm() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

T0=$(now)
mkdir -p "$B"
chmod 700 "$B"
log "listing benchmark: $AGENTS agents in groups of $PER; machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"

# --- 1. the two hub binaries ------------------------------------------------------------
cd "$ROOT"
if [ -z "$BASE" ]; then
  added=$(git log --diff-filter=A --format=%H -- src/hub/listing.rs | tail -1)
  [ -n "$added" ] || die "cannot find the commit that added src/hub/listing.rs; pass --base REV"
  BASE="$added^"
fi
BASE_SHORT=$(git rev-parse --short=12 "$BASE") || die "--base $BASE is not a commit"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -n "${IDRELAY_HUB_BIN:-}" ] && [ -n "${IDRELAY_BASE_HUB_BIN:-}" ]; then
  NEW_BIN=$IDRELAY_HUB_BIN
  OLD_BIN=$IDRELAY_BASE_HUB_BIN
  log "using IDRELAY_HUB_BIN and IDRELAY_BASE_HUB_BIN (no build)"
else
  log "cargo build --release --bin idrelay-hub (this tree)"
  cargo build --release --locked --bin idrelay-hub || die "cargo build failed"
  NEW_BIN=$B/idrelay-hub-now
  cp "$TARGET/release/idrelay-hub" "$NEW_BIN"
  log "cargo build --release --bin idrelay-hub (base $BASE_SHORT, from git archive)"
  rm -rf "$B/base-src"
  mkdir -p "$B/base-src"
  git archive "$BASE" | tar -x -C "$B/base-src"
  (cd "$B/base-src" && CARGO_TARGET_DIR=$TARGET cargo build --release --locked --bin idrelay-hub) ||
    die "cargo build of the base failed"
  OLD_BIN=$B/idrelay-hub-before
  cp "$TARGET/release/idrelay-hub" "$OLD_BIN"
  rm -rf "$B/base-src"
fi

# --- 2. tokens, agents and config ----------------------------------------------------------
rm -rf "$B/tokens"
mkdir -m 700 "$B/tokens"
python3 - "$B" "$AGENTS" "$PER" <<'PY'
import json, os, secrets, sys
b, n, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def secret_file(path, token):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
secret_file(f"{b}/operator.token", secrets.token_hex(16))
lines = [
    "# written by scripts/bench-listing.sh",
    'listen = "127.0.0.1:PORT"',
    f'operator_token_file = "{b}/operator.token"',
    'storage = "memory"',
    "heartbeat_secs = 60",
    "lease_ttl_heartbeats = 100",
    "poll_wait_secs = 300",
    f"max_connections = {n + 1000}",
    f"max_connections_per_address = {n + 1000}",
]
with open(f"{b}/agents.jsonl", "w") as out:
    for i in range(n):
        aid, group = f"sim-{i:05d}", f"branch-{i // per:05d}"
        tok = secrets.token_hex(16)
        secret_file(f"{b}/tokens/{aid}", tok)
        lines += ["", "[[agent]]", f'id = "{aid}"', f'group = "{group}"',
                  f'token_file = "{b}/tokens/{aid}"']
        state = "degraded" if i % 100 == 7 else "following"
        out.write(json.dumps({"id": aid, "group": group, "token": tok, "state": state}) + "\n")
os.chmod(f"{b}/agents.jsonl", 0o600)
with open(f"{b}/hub.toml.in", "w") as f:
    f.write("\n".join(lines) + "\n")
PY
MID=$((AGENTS / 2))
MID_AGENT=$(printf 'sim-%05d' "$MID")
MID_GROUP=$(printf 'branch-%05d' $((MID / PER)))

# run LABEL BIN PATH... : starts the hub, makes every agent known, times PATHs, stops it.
run() {
  local label=$1 bin=$2 port setup rss
  shift 2
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  sed "s/PORT/$port/" "$B/hub.toml.in" >"$B/hub-$label.toml"
  chmod 600 "$B/hub-$label.toml"
  : >"$B/hub-$label.log"
  "$bin" --config "$B/hub-$label.toml" </dev/null >>"$B/hub-$label.log" 2>&1 &
  HUB_PID=$!
  wait_for 30 port_busy "$port" || { log_tail "$B/hub-$label.log"; die "$label hub did not listen"; }
  setup=$(python3 "$ROOT/scripts/bench/listing-load.py" setup --url "http://127.0.0.1:$port" \
    --agents "$B/agents.jsonl") || die "setup failed: $setup"
  rss=$(vm "$HUB_PID" VmRSS)
  log "$label: $setup; hub RSS $(kib "$rss") MiB"
  echo "RSS $label $(kib "$rss")" >>"$B/results"
  python3 "$ROOT/scripts/bench/listing-load.py" time --url "http://127.0.0.1:$port" \
    --operator-token-file "$B/operator.token" --reps "$REPS" "$@" |
    sed "s/^/$label /" >>"$B/results" || die "timing failed"
  stop_hub
}

: >"$B/results"
log "1/2 before ($BASE_SHORT): the full listing"
run before "$OLD_BIN" /v1/agents
log "2/2 now: the full listing, pages and the summary"
run now "$NEW_BIN" /v1/agents "/v1/agents?limit=50" \
  "/v1/agents?limit=50&cursor=after:$MID_GROUP/$MID_AGENT" \
  "/v1/agents?limit=50&unhealthy=true" "/v1/agents?group=$MID_GROUP" \
  "/v1/groups?limit=50" "/v1/groups?limit=50&unhealthy=true"

echo
echo "== idrelay operator listing: $AGENTS agents in groups of $PER, $REPS requests each ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg))"
echo "   before: $("$OLD_BIN" --version 2>/dev/null | head -1) (base $BASE_SHORT); now: $("$NEW_BIN" --version 2>/dev/null | head -1)"
python3 - "$B/results" <<'PY'
import json, sys
rows, rss = [], {}
for line in open(sys.argv[1]):
    label, rest = line.split(" ", 1)
    if label == "RSS":
        who, mib = rest.split()
        rss[who] = mib
        continue
    rows.append((label, json.loads(rest)))
print(f"{'hub':6} | {'request':62} | status | {'bytes':>9} | {'p50 ms':>8} | {'p90 ms':>8} | {'max ms':>8}")
print(f"{'-'*6} | {'-'*62} | ------ | {'-'*9} | {'-'*8} | {'-'*8} | {'-'*8}")
for label, r in rows:
    print(f"{label:6} | GET {r['path']:58} | {r['status']:6} | {r['bytes']:9} | {r['p50_ms']:8} | {r['p90_ms']:8} | {r['max_ms']:8}")
print("hub RSS with every agent known: " + ", ".join(f"{k} {v} MiB" for k, v in rss.items()))
PY
echo "total $(since "$T0") s"
