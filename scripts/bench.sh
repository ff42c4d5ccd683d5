#!/usr/bin/env bash
# bench.sh [--users N] [--concurrency C] [--endpoints scim2-server,nginx] [--no-lookups] [--no-bulk] [--keep]
#
# The benchmark (a script, not a test): one full pass of the agent over N users (default
# 10,000) and N/50 groups of 50 in a local slapd, compared in the same run with
#   - ldapsearch: a paged dump (pr=1000) of the same scope, as the same account;
#   - bench-load.py: a raw HTTP load generator replaying the same SCIM bodies (taken from
#     `idrelay sync --once --dry-run --json`) at the same concurrency to the same kind of fresh
#     server: first the writes alone (the baseline the targets name), then, unless
#     --no-lookups, with the externalId lookup (GET ?filter=) the agent makes before each
#     create on a first pass, i.e. the agent's own request mix;
#   - on scim2-server (which offers SCIM Bulk), unless --no-bulk: the agent again with
#     `[sync] bulk = "off"` (one request per object), and bench-load.py --bulk 1000, a Bulk
#     load generator sending the same creates as /Bulk requests of 1,000 operations;
# against two SCIM endpoints:
#   scim2-server  a fresh private scim2-server (realistic, server-bound, ~300 writes/s here);
#   nginx         Debian's nginx answering every request with a canned response
#                 (scripts/bench/nginx.conf), so that the agent's own cost shows.
# Prints a table (agent s, objects/s, ldapsearch s, loadgen s, req/s, ratio
# agent / max(ldapsearch, loadgen); the target is <= 1.25), the requests each side made
# and the CPU seconds scim2-server spent on them,
# the stripped release binary's size and the agent's peak RSS (/usr/bin/time -v).
#
# The benchmark's servers are its own, never the test servers: slapd instance
# "openldap-bench" on 127.0.0.1:$IDRELAY_BENCH_LDAP_PORT (3390; ldaps $IDRELAY_BENCH_LDAPS_PORT, 3637),
# scim2-server "scim-bench" on :$IDRELAY_BENCH_SCIM_PORT (8090), nginx on
# :$IDRELAY_BENCH_CANNED_PORT (8091), all under $IDRELAY_TESTBED; they are stopped at the
# end unless --keep. The seeded directory is kept and reused while N stays the same.
# IDRELAY_BIN=path benchmarks that binary instead of building `cargo build --release`.
# IDRELAY_BIN_BASE=path adds, on scim2-server, that binary's pass (with its own defaults) as
# a baseline row measured in the same run (e.g. the commit before a change).
# Needs root on first use (apt-get install slapd ldap-utils nginx time curl).
set -euo pipefail
# idrelay refuses to run as root unless told; test machines often are root.
ROOT_FLAG=""
if [ "$(id -u)" = 0 ]; then ROOT_FLAG="--allow-root"; fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TB=$ROOT/scripts/testbed
TB_NAME=bench
# shellcheck source-path=SCRIPTDIR source=testbed/common.sh
. "$TB/common.sh"
export IDRELAY_TESTBED

USERS=10000
CONCURRENCY=8
ENDPOINTS=scim2-server,nginx
LOOKUPS=1
BULK_CMP=1
KEEP=0
usage() { sed -n '2,3p' "$0" | sed 's/^# //' >&2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --users) USERS=${2:?}; shift ;;
    --concurrency) CONCURRENCY=${2:?}; shift ;;
    --endpoints) ENDPOINTS=${2:?}; shift ;;
    --no-lookups) LOOKUPS=0 ;;
    --no-bulk) BULK_CMP=0 ;;
    --keep) KEEP=1 ;;
    -h | --help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) usage; die "unknown argument $1" ;;
  esac
  shift
done
if ! [[ $USERS =~ ^[0-9]+$ ]] || [ "$USERS" -lt 50 ]; then die "--users must be a number >= 50"; fi
if ! [[ $CONCURRENCY =~ ^[0-9]+$ ]] || [ "$CONCURRENCY" -lt 1 ]; then die "--concurrency must be a number >= 1"; fi
for e in ${ENDPOINTS//,/ }; do
  case "$e" in scim2-server | nginx) ;; *) die "unknown endpoint $e (scim2-server, nginx)" ;; esac
done
GROUPS_N=$((USERS / 50))

LDAP_PORT=${IDRELAY_BENCH_LDAP_PORT:-3390}
LDAPS_PORT=${IDRELAY_BENCH_LDAPS_PORT:-3637}
SCIM_PORT=${IDRELAY_BENCH_SCIM_PORT:-8090}
CANNED_PORT=${IDRELAY_BENCH_CANNED_PORT:-8091}
TOKEN=bench-token
B=$IDRELAY_TESTBED/bench # configs, secrets, outputs of this run
SUFFIX=dc=branch,dc=test
SCOPE=("ou=people,$SUFFIX" "ou=groups,$SUFFIX")
FILTER='(|(objectClass=inetOrgPerson)(objectClass=groupOfNames))'

# The benchmark's own server instances (never the test servers).
ldap_tb() { IDRELAY_LDAP_INSTANCE=openldap-bench IDRELAY_LDAP_PORT=$LDAP_PORT IDRELAY_LDAPS_PORT=$LDAPS_PORT "$TB/openldap.sh" "$@"; }
scim_tb() { IDRELAY_SCIM_INSTANCE=scim-bench IDRELAY_SCIM_PORT=$SCIM_PORT IDRELAY_SCIM_TOKEN=$TOKEN "$TB/scim-server.sh" "$@"; }
canned_tb() { IDRELAY_CANNED_SCIM_INSTANCE=nginx-bench IDRELAY_CANNED_SCIM_PORT=$CANNED_PORT IDRELAY_SCIM_TOKEN=$TOKEN "$ROOT/scripts/bench/canned-scim.sh" "$@"; }
scim_url() { if [ "$1" = nginx ]; then echo "http://127.0.0.1:$CANNED_PORT/v2"; else echo "http://127.0.0.1:$SCIM_PORT/v2"; fi; }

cleanup() {
  local rc=$?
  if [ "$KEEP" = 0 ]; then
    log "stopping the benchmark's servers (--keep leaves them running)"
    scim_tb stop 2>/dev/null || true
    canned_tb stop 2>/dev/null || true
    ldap_tb stop 2>/dev/null || true
  fi
  exit "$rc"
}
trap cleanup EXIT

# fresh ENDPOINT : (re)start the endpoint with nothing in it; sets MARK for count_requests.
fresh() {
  if [ "$1" = nginx ]; then
    canned_tb start >/dev/null
    canned_tb clear-log
  else
    scim_tb stop 2>/dev/null
    scim_tb start >/dev/null
    MARK=$(wc -l <"$IDRELAY_TESTBED/scim-bench/scim2-server.log")
    CPU0=$(server_cpu)
  fi
}
# server_cpu : CPU seconds scim2-server has used so far (user + system, all its threads).
server_cpu() { awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$(cat "$IDRELAY_TESTBED/scim-bench/scim2-server.pid")/stat" 2>/dev/null || echo 0; }
# cpu_note ENDPOINT : "; server CPU N s" since `fresh` (scim2-server only): how much of the
# endpoint's work a run caused, which the load of a shared machine moves far less than time.
cpu_note() { [ "$1" = nginx ] || awk -v a="$CPU0" -v b="$(server_cpu)" 'BEGIN { printf "; server CPU %.1f s", b - a }'; }

# count_requests ENDPOINT : "N requests (GET /v2/Users 200: n, ...)" since `fresh`.
count_requests() {
  local lines
  if [ "$1" = nginx ]; then
    lines=$(canned_tb requests)
  else
    # wsgiref: 127.0.0.1 - - [date] "POST /v2/Users HTTP/1.1" 201 367
    lines=$(tail -n +"$((MARK + 1))" "$IDRELAY_TESTBED/scim-bench/scim2-server.log" |
      awk -F'"' 'NF >= 3 && $2 ~ / HTTP\// {
          split($2, r, " "); split(r[2], q, "?"); split(q[1], p, "/");
          k = r[1] " /" p[2] "/" p[3] (p[4] != "" ? "/ID" : ""); split($3, s, " ");
          n[k " " s[1]]++ } END { for (k in n) print n[k], k }' | sort -k2)
  fi
  awk '{ t += $1; d = d (d ? ", " : "") $2 " " $3 " " $4 ": " $1 } END { printf "%d requests (%s)", t, d }' <<<"$lines"
}

secs_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }
mib() { awk -v b="$1" -v d="$2" 'BEGIN { printf "%.2f", b / d }'; } # mib N DIVISOR
jget() { python3 -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
fmt() { awk -v x="$1" -v f="${2:-%.2f}" 'BEGIN { printf f, x }'; }
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.0f", a / b; else print "-" }'; }

T0=$(now)
log "benchmark: $USERS users + $GROUPS_N groups, concurrency $CONCURRENCY, endpoints $ENDPOINTS"
log "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
ensure_pkgs slapd ldap-utils nginx time curl
mkdir -p "$B"

# --- 1. the binary ------------------------------------------------------------------
cd "$ROOT"
if [ -n "${IDRELAY_BIN:-}" ]; then
  BIN=$IDRELAY_BIN
  log "using IDRELAY_BIN=$BIN (no build)"
else
  locked=()
  if [ -f Cargo.lock ]; then locked=(--locked); fi
  log "cargo build --release ${locked[*]}"
  t0=$(now)
  cargo build --release "${locked[@]}" || die "cargo build --release failed"
  log "built in $(since "$t0") s"
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/idrelay
fi
[ -x "$BIN" ] || die "no executable at $BIN"
VERSION=$("$BIN" version 2>/dev/null | head -n 1 || echo "idrelay (version unknown)")
[ -z "${IDRELAY_BIN_BASE:-}" ] || VERSION="$VERSION; base: $("$IDRELAY_BIN_BASE" version 2>/dev/null | head -n 1)"
SIZE=$(stat -c %s "$BIN")
STRIPPED=$SIZE
if command -v strip >/dev/null && strip -o "$B/idrelay.stripped" "$BIN" 2>/dev/null; then
  STRIPPED=$(stat -c %s "$B/idrelay.stripped")
  rm -f "$B/idrelay.stripped"
fi

# --- 2. the directory ---------------------------------------------------------------
LDAP_D=$IDRELAY_TESTBED/openldap-bench
if [ "$(cat "$LDAP_D/bench-seeded" 2>/dev/null)" = "$USERS" ]; then
  log "reusing the seeded directory ($USERS users, $GROUPS_N groups) in $LDAP_D"
else
  log "seeding $USERS users and $GROUPS_N groups into a new directory in $LDAP_D"
  ldap_tb reset
  t0=$(now)
  ldap_tb seed "$USERS"
  echo "$USERS" >"$LDAP_D/bench-seeded"
  log "seeded in $(since "$t0") s"
fi
eval "$(ldap_tb start)"

# --- 3. configs and secrets -----------------------------------------------------------
(
  umask 077
  printf '%s\n' "$OPENLDAP_SYNC_PW" >"$B/ldap.secret"
  printf '%s\n' "$TOKEN" >"$B/scim.token"
  chmod 600 "$B/ldap.secret" "$B/scim.token"
)
write_config() { # write_config ENDPOINT -> path of a config with a fresh state dir
  local cfg=$B/idrelay-$1.toml state=$B/state-$1
  rm -rf "$state"
  mkdir -p "$state"
  cat >"$cfg" <<EOF
# written by scripts/bench.sh
[agent]
id = "bench-$1"
state_dir = "$state"
[directory]
url = "$OPENLDAP_URL"
starttls = false
bind_dn = "$OPENLDAP_SYNC_DN"
password_file = "$B/ldap.secret"
base_dn = "$OPENLDAP_BASE_DN"
kind = "auto"
[scope]
include = ["${SCOPE[0]}", "${SCOPE[1]}"]
[scim]
url = "$(scim_url "$1")"
token_file = "$B/scim.token"
[sync]
concurrency = $CONCURRENCY
EOF
  chmod 600 "$cfg"
  echo "$cfg"
}

# --- 4. the SCIM bodies (dry run; also warms the directory's caches) --------------------
first=${ENDPOINTS%%,*} # the dry run's lookups cost nothing on nginx: use it when it is there
case ",$ENDPOINTS," in *,nginx,*) first=nginx ;; esac
fresh "$first"
cfg=$(write_config "$first")
"$BIN" ${ROOT_FLAG:+"$ROOT_FLAG"} --config "$cfg" check >"$B/check.out" 2>&1 || {
  cat "$B/check.out" >&2
  die "idrelay check failed against $first"
}
log "dry run against a fresh $first: collecting the SCIM writes"
t0=$(now)
rc=0
"$BIN" ${ROOT_FLAG:+"$ROOT_FLAG"} --config "$cfg" sync --once --dry-run --json >"$B/writes.jsonl" 2>"$B/dry-run.err" || rc=$?
if [ $rc -ne 0 ] && [ $rc -ne 3 ]; then
  log_tail "$B/dry-run.err"
  die "idrelay sync --once --dry-run failed (exit $rc)"
fi
WRITES=$(grep -c '^{' "$B/writes.jsonl" || true)
log "dry run: $WRITES writes in $(since "$t0") s"
[ "$WRITES" -gt 0 ] || die "the dry run listed no writes (see $B/writes.jsonl, $B/dry-run.err)"

# --- 5. ldapsearch: paged dump of the same scope, median of 3 -------------------------
ldapsearch_once() {
  local base
  for base in "${SCOPE[@]}"; do
    ldapsearch -x -H "$OPENLDAP_URL" -D "$OPENLDAP_SYNC_DN" -y "$B/ldap.secret.nonl" -b "$base" \
      -E pr=1000/noprompt -o ldif-wrap=no -LLL "$FILTER" '*' entryUUID || return 1
  done >"$B/ldapsearch.ldif"
}
printf '%s' "$OPENLDAP_SYNC_PW" >"$B/ldap.secret.nonl" # -y takes the file verbatim
chmod 600 "$B/ldap.secret.nonl"
LS_TIMES=()
for _ in 1 2 3; do
  t0=$(now)
  ldapsearch_once || die "ldapsearch of the scope failed"
  LS_TIMES+=("$(secs_since "$t0")")
done
LS_S=$(printf '%s\n' "${LS_TIMES[@]}" | sort -n | sed -n 2p)
LS_N=$(grep -c '^dn:' "$B/ldapsearch.ldif" || true)
log "ldapsearch: $LS_N entries in $LS_S s (runs: ${LS_TIMES[*]})"

# --- 6. per endpoint: the agent, then the load generator ------------------------------
ROWS=()
NOTES=()
RSS_KB_MAX=0
run_agent() { # run_agent ENDPOINT [off|base] : `[sync] bulk = "off"`, or $IDRELAY_BIN_BASE
  local ep=$1 cfg t0 rc=0 secs rss summary objects reqs tag=$1 label=$1 bin=$BIN
  if [ "${2:-}" = off ]; then tag=$ep-bulk-off; label="$ep (bulk off)"; fi
  if [ "${2:-}" = base ]; then tag=$ep-base; label="$ep (base)" bin=$IDRELAY_BIN_BASE; fi
  fresh "$ep"
  cfg=$(write_config "$ep")
  [ "${2:-}" = off ] && echo 'bulk = "off"' >>"$cfg"
  log "[$label] agent: idrelay sync --once (fresh endpoint, fresh state)"
  t0=$(now)
  /usr/bin/time -v -o "$B/time-$tag.txt" "$bin" ${ROOT_FLAG:+"$ROOT_FLAG"} --config "$cfg" sync --once >"$B/sync-$tag.out" 2>"$B/sync-$tag.err" || rc=$?
  secs=$(secs_since "$t0")
  if [ $rc -ne 0 ] && [ $rc -ne 3 ]; then
    log_tail "$B/sync-$tag.err"
    log_tail "$B/sync-$tag.out" 5
    die "[$label] idrelay sync --once failed (exit $rc)"
  fi
  rss=$(awk -F: '/Maximum resident set size/ { gsub(/ /, "", $2); print $2 }' "$B/time-$tag.txt")
  [ -n "$rss" ] && [ "$rss" -gt "$RSS_KB_MAX" ] && RSS_KB_MAX=$rss
  summary=$(grep '^sync:' "$B/sync-$tag.out" | tail -n 1 || true)
  objects=$(sed -n 's/^sync: \([0-9]*\) objects.*/\1/p' <<<"$summary")
  objects=${objects:-$((USERS + GROUPS_N))}
  reqs="$(count_requests "$ep")$(cpu_note "$ep")"
  log "[$label] agent: $secs s, exit $rc, peak RSS ${rss:-?} KiB; $summary"
  NOTES+=("$label agent:   ${summary:-(no summary line)}; exit $rc; peak RSS $(mib "${rss:-0}" 1024) MiB" "$label agent:   $reqs")
  AGENT_S=$secs
  AGENT_OBJS=$objects
}
run_loadgen() { # run_loadgen ENDPOINT [--lookups] -> sets LG_JSON
  local ep=$1 mode=writes
  shift
  case "${1:-}" in --lookups) mode="lookups+writes" ;; --bulk) mode="bulk $2" ;; esac
  fresh "$ep"
  log "[$ep] load generator: $mode, concurrency $CONCURRENCY (fresh endpoint)"
  LG_JSON=$(python3 "$ROOT/scripts/bench-load.py" --base "$(scim_url "$ep")" --token-file "$B/scim.token" \
    --concurrency "$CONCURRENCY" "$@" "$B/writes.jsonl" 2>"$B/loadgen-$ep-${mode// /-}.err") || true
  cat "$B/loadgen-$ep-${mode// /-}.err" >&2
  [ -n "$LG_JSON" ] || die "[$ep] bench-load.py produced no result"
  [ "$(jget "$LG_JSON" writes)" = "$WRITES" ] ||
    log "WARNING: the load generator replayed $(jget "$LG_JSON" writes) of $WRITES writes"
  NOTES+=("$ep loadgen ($mode): $(count_requests "$ep")$(cpu_note "$ep")")
}
row() { # row ENDPOINT AGENT_S OBJS LOADGEN_JSON MIX
  local ep=$1 as=$2 objs=$3 lg=$4 mix=$5 ls lgs lgr ratio errs
  lgs=$(jget "$lg" seconds)
  lgr=$(jget "$lg" rps)
  errs=$(jget "$lg" errors)
  ls=$LS_S
  ratio=$(awk -v a="$as" -v l="$ls" -v g="$lgs" 'BEGIN { m = (l > g ? l : g); printf "%.2f", a / m }')
  ROWS+=("$(printf '%-26s| %8s | %11s | %12s | %14s | %-17s | %9s | %13s | %s%s' \
    "$ep" "$(fmt "$as")" "$(div "$objs" "$as")" "$(fmt "$ls" '%.3f')" "$(div "$LS_N" "$ls")" \
    "$mix $(jget "$lg" requests)" "$(fmt "$lgs")" "$(fmt "$lgr" '%.0f')" "$ratio" \
    "$([ "$errs" = 0 ] || echo " ($errs loadgen errors)")")")
}

for ep in ${ENDPOINTS//,/ }; do
  run_agent "$ep"
  A_S=$AGENT_S
  OFF_S=""
  if [ "$ep" = scim2-server ] && [ "$BULK_CMP" = 1 ]; then
    run_agent "$ep" off
    OFF_S=$AGENT_S
  fi
  BASE_S=""
  if [ "$ep" = scim2-server ] && [ -n "${IDRELAY_BIN_BASE:-}" ]; then
    run_agent "$ep" base
    BASE_S=$AGENT_S
  fi
  AGENT_S=$A_S
  run_loadgen "$ep"
  row "$ep" "$AGENT_S" "$AGENT_OBJS" "$LG_JSON" "writes"
  [ -z "$BASE_S" ] || row "$ep (base)" "$BASE_S" "$AGENT_OBJS" "$LG_JSON" "writes"
  if [ -n "$OFF_S" ]; then
    row "$ep (bulk off)" "$OFF_S" "$AGENT_OBJS" "$LG_JSON" "writes"
    run_loadgen "$ep" --bulk 1000
    row "$ep" "$AGENT_S" "$AGENT_OBJS" "$LG_JSON" "bulk"
    [ -z "$BASE_S" ] || row "$ep (base)" "$BASE_S" "$AGENT_OBJS" "$LG_JSON" "bulk"
    row "$ep (bulk off)" "$OFF_S" "$AGENT_OBJS" "$LG_JSON" "bulk"
  fi
  if [ "$LOOKUPS" = 1 ]; then
    run_loadgen "$ep" --lookups
    row "$ep" "$AGENT_S" "$AGENT_OBJS" "$LG_JSON" "GET+writes"
  fi
done

# --- 7. report ------------------------------------------------------------------------
cat <<EOF

== idrelay benchmark: $USERS users + $GROUPS_N groups, concurrency $CONCURRENCY ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores)
   $VERSION; directory: local slapd (mdb); $WRITES SCIM writes per full pass (dry run)
   ldapsearch: paged (pr=1000) dump of ${SCOPE[*]}, median of 3: ${LS_TIMES[*]} s
   ratio = agent s / max(ldapsearch s, loadgen s)   (target: <= 1.25)

endpoint (agent)          |  agent s | agent obj/s | ldapsearch s | ldap entries/s | loadgen requests  | loadgen s | loadgen req/s | ratio
--------------------------+----------+-------------+--------------+----------------+-------------------+-----------+---------------+------
EOF
printf '%s\n' "${ROWS[@]}"
echo
printf '%s\n' "${NOTES[@]}"
cat <<EOF

binary size: $(mib "$STRIPPED" 1048576) MiB stripped ($STRIPPED bytes; as built: $SIZE bytes; target <= 4 MiB)
peak RSS:    $(mib "$RSS_KB_MAX" 1024) MiB (agent, max over the runs above; target <= 48 MiB at 150,000 objects)
outputs:     $B (writes.jsonl, sync-*.out/err, time-*.txt, loadgen-*.err); total $(since "$T0") s
EOF
