#!/usr/bin/env bash
# bench-footprint.sh [--sizes 10000,50000,150000] [--idle-secs 20] [--concurrency 8] [--keep]
#
# The footprint benchmark (a script, not a test): how big the agent is and how much memory it
# holds, and whether that grows with the directory. Measures, in one run:
#   1. binary size: the static release binary (scripts/build-static.sh; IDRELAY_BIN=path to
#      measure another one without building);
#   2. idle: `idrelay run` after its first full pass of a tiny directory (100 users,
#      2 groups): peak (VmHWM) and steady RSS (VmRSS sampled every 0.5 s for --idle-secs);
#   3. full passes: `idrelay sync --once` with a fresh state dir against directories of each
#      --sizes users (+ users/50 groups of 50): wall time and peak RSS (/usr/bin/time -v,
#      "Maximum resident set size"); beside it, as a baseline measured in the same run,
#      ldapsearch dumping the same scope (paged, pr=1000, to /dev/null): its time and peak RSS.
# Targets (docs): idle <= 12 MiB, 150,000-user pass <= 48 MiB, flat in directory size.
#
# Its servers are its own, never the test servers or bench.sh's: slapd instance
# "openldap-footprint" on 127.0.0.1:$IDRELAY_FOOTPRINT_LDAP_PORT (3391; ldaps 3638) and the
# canned SCIM endpoint (scripts/bench/canned-scim.sh, nginx) "nginx-footprint" on
# 127.0.0.1:$IDRELAY_FOOTPRINT_CANNED_PORT (8092), so the pass measures the agent and not a
# SCIM server. The directory is rebuilt from scratch each run (slapadd, ~5 s per 100k users)
# and grown size by size; servers are stopped at the end unless --keep. State under
# $IDRELAY_TESTBED/footprint. Needs root on first use (apt-get install slapd ldap-utils nginx time curl).
set -euo pipefail
# idrelay refuses to run as root unless told; test machines often are root.
ROOT_FLAG=""
if [ "$(id -u)" = 0 ]; then ROOT_FLAG="--allow-root"; fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TB=$ROOT/scripts/testbed
TB_NAME=footprint
# shellcheck source-path=SCRIPTDIR source=testbed/common.sh
. "$TB/common.sh"
export IDRELAY_TESTBED

SIZES=10000,50000,150000
IDLE_SECS=20
CONCURRENCY=8
KEEP=0
TINY=100
while [ $# -gt 0 ]; do
  case "$1" in
    --sizes) SIZES=${2:?}; shift ;;
    --idle-secs) IDLE_SECS=${2:?}; shift ;;
    --concurrency) CONCURRENCY=${2:?}; shift ;;
    --keep) KEEP=1 ;;
    -h | --help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
mapfile -t SIZE_LIST < <(tr ',' '\n' <<<"$SIZES" | sed '/^$/d' | sort -n -u)
for n in "${SIZE_LIST[@]}"; do
  if ! [[ $n =~ ^[0-9]+$ ]] || [ "$n" -lt $((TINY + 50)) ]; then die "--sizes: each size must be a number >= $((TINY + 50))"; fi
done
[ "${#SIZE_LIST[@]}" -gt 0 ] || die "--sizes is empty"
if ! [[ $IDLE_SECS =~ ^[0-9]+$ ]] || [ "$IDLE_SECS" -lt 1 ]; then die "--idle-secs must be a number >= 1"; fi
if ! [[ $CONCURRENCY =~ ^[0-9]+$ ]] || [ "$CONCURRENCY" -lt 1 ]; then die "--concurrency must be a number >= 1"; fi

LDAP_PORT=${IDRELAY_FOOTPRINT_LDAP_PORT:-3391}
LDAPS_PORT=${IDRELAY_FOOTPRINT_LDAPS_PORT:-3638}
CANNED_PORT=${IDRELAY_FOOTPRINT_CANNED_PORT:-8092}
PASS_TIMEOUT=${IDRELAY_FOOTPRINT_TIMEOUT:-900} # seconds per full pass before giving up
TOKEN=footprint-token
B=$IDRELAY_TESTBED/footprint
SUFFIX=dc=branch,dc=test
SCOPE=("ou=people,$SUFFIX" "ou=groups,$SUFFIX")
FILTER='(|(objectClass=inetOrgPerson)(objectClass=groupOfNames))'

ldap_tb() { IDRELAY_LDAP_INSTANCE=openldap-footprint IDRELAY_LDAP_PORT=$LDAP_PORT IDRELAY_LDAPS_PORT=$LDAPS_PORT "$TB/openldap.sh" "$@"; }
canned_tb() { IDRELAY_CANNED_SCIM_INSTANCE=nginx-footprint IDRELAY_CANNED_SCIM_PORT=$CANNED_PORT IDRELAY_SCIM_TOKEN=$TOKEN "$ROOT/scripts/bench/canned-scim.sh" "$@"; }

AGENT_PID=
cleanup() {
  local rc=$?
  if [ -n "$AGENT_PID" ] && kill -0 "$AGENT_PID" 2>/dev/null; then kill -TERM "$AGENT_PID" 2>/dev/null || true; fi
  if [ "$KEEP" = 0 ]; then
    log "stopping the benchmark's servers (--keep leaves them running)"
    canned_tb stop 2>/dev/null || true
    ldap_tb stop 2>/dev/null || true
  fi
  exit "$rc"
}
trap cleanup EXIT

mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; } # KiB -> MiB
secs_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }
max_rss_kib() { awk -F: '/Maximum resident set size/ { gsub(/ /, "", $2); print $2 }' "$1"; }
status_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null; } # status_kib PID VmRSS

T0=$(now)
log "footprint: sizes ${SIZE_LIST[*]} users, idle ${IDLE_SECS} s, concurrency $CONCURRENCY"
log "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
ensure_pkgs slapd ldap-utils nginx time curl
mkdir -p "$B"

# --- 1. the binary ----------------------------------------------------------------------
if [ -n "${IDRELAY_BIN:-}" ]; then
  BIN=$IDRELAY_BIN
  log "using IDRELAY_BIN=$BIN (no build)"
else
  log "building the static release binary (scripts/build-static.sh)"
  BIN=$("$ROOT/scripts/build-static.sh" --print-path | tail -n 1)
fi
[ -x "$BIN" ] || die "no executable at $BIN"
SIZE=$(stat -c %s "$BIN")
LINKAGE=$(file -b "$BIN" | grep -Eo 'static-pie linked|statically linked|dynamically linked' || echo "?")
VERSION=$("$BIN" version 2>/dev/null || echo "idrelay (version unknown)")

# --- 2. servers, secrets, config ----------------------------------------------------------
log "a new directory in $IDRELAY_TESTBED/openldap-footprint: $TINY users (tiny, for the idle run)"
ldap_tb reset >/dev/null 2>&1
ldap_tb seed "$TINY"
eval "$(ldap_tb start)"
canned_tb start >/dev/null
SEEDED=$TINY
(
  umask 077
  printf '%s\n' "$OPENLDAP_SYNC_PW" >"$B/ldap.secret"
  printf '%s' "$OPENLDAP_SYNC_PW" >"$B/ldap.secret.nonl" # ldapsearch -y takes the file verbatim
  printf '%s\n' "$TOKEN" >"$B/scim.token"
  chmod 600 "$B/ldap.secret" "$B/ldap.secret.nonl" "$B/scim.token"
)
write_config() { # write_config NAME -> path of a config with a fresh state dir
  local cfg=$B/idrelay-$1.toml state=$B/state-$1
  rm -rf "$state"
  cat >"$cfg" <<EOF
# written by scripts/bench-footprint.sh
[agent]
id = "footprint-$1"
state_dir = "$state"
[directory]
url = "$OPENLDAP_URL"
bind_dn = "$OPENLDAP_SYNC_DN"
password_file = "$B/ldap.secret"
base_dn = "$OPENLDAP_BASE_DN"
kind = "openldap"
page_size = 1000
[scope]
include = ["${SCOPE[0]}", "${SCOPE[1]}"]
[scim]
url = "http://127.0.0.1:$CANNED_PORT/v2"
token_file = "$B/scim.token"
[sync]
concurrency = $CONCURRENCY
EOF
  chmod 600 "$cfg"
  echo "$cfg"
}

# --- 3. idle: `run` after its first pass of the tiny directory ------------------------------
cfg=$(write_config idle)
"$BIN" ${ROOT_FLAG:+"$ROOT_FLAG"} --config "$cfg" check >"$B/check.out" 2>&1 || {
  cat "$B/check.out" >&2
  die "idrelay check failed"
}
log "idle: idrelay run (first pass of $TINY users, then ${IDLE_SECS} s of sampling)"
"$BIN" ${ROOT_FLAG:+"$ROOT_FLAG"} --config "$cfg" --quiet run >"$B/run-idle.out" 2>"$B/run-idle.err" &
AGENT_PID=$!
first_pass_done() { grep -q 'sync: [0-9]* objects in step' "$B/run-idle.err"; } # the pass report
if ! wait_for 120 first_pass_done; then
  log_tail "$B/run-idle.err"
  die "idrelay run did not finish its first pass within 120 s"
fi
kill -0 "$AGENT_PID" 2>/dev/null || die "idrelay run exited (see $B/run-idle.err)"
sleep 1 # let the change feed settle into its persist phase
SAMPLES=()
end=$((SECONDS + IDLE_SECS))
while [ $SECONDS -lt "$end" ]; do
  s=$(status_kib "$AGENT_PID" VmRSS) || true
  [ -n "$s" ] || die "idrelay run exited while idle (see $B/run-idle.err)"
  SAMPLES+=("$s")
  sleep 0.5
done
IDLE_HWM=$(status_kib "$AGENT_PID" VmHWM)
IDLE_THREADS=$(status_kib "$AGENT_PID" Threads)
read -r IDLE_MIN IDLE_MED IDLE_MAX < <(printf '%s\n' "${SAMPLES[@]}" | sort -n |
  awk '{ v[NR] = $1 } END { print v[1], v[int((NR + 1) / 2)], v[NR] }')
kill -TERM "$AGENT_PID" 2>/dev/null || true
wait "$AGENT_PID" 2>/dev/null || true
AGENT_PID=
log "idle: VmHWM $(mib "$IDLE_HWM") MiB; VmRSS over ${#SAMPLES[@]} samples min/median/max $(mib "$IDLE_MIN")/$(mib "$IDLE_MED")/$(mib "$IDLE_MAX") MiB; $IDLE_THREADS threads"

# --- 4. full passes, size by size -----------------------------------------------------------
ROWS=()
# ldapsearch_scope N : the baseline, one paged ldapsearch per scope base to /dev/null under
# /usr/bin/time; sets LS_S (wall seconds, all bases) and LS_RSS (KiB, the largest peak).
ldapsearch_scope() {
  local base i=0 t0 r
  LS_RSS=0
  t0=$(now)
  for base in "${SCOPE[@]}"; do
    i=$((i + 1))
    /usr/bin/time -v -o "$B/time-ldapsearch-$1-$i.txt" ldapsearch -x -H "$OPENLDAP_URL" \
      -D "$OPENLDAP_SYNC_DN" -y "$B/ldap.secret.nonl" -b "$base" -E pr=1000/noprompt \
      -o ldif-wrap=no -LLL "$FILTER" '*' entryUUID >/dev/null || die "ldapsearch of $base failed"
    r=$(max_rss_kib "$B/time-ldapsearch-$1-$i.txt")
    [ "$r" -gt "$LS_RSS" ] && LS_RSS=$r
  done
  LS_S=$(secs_since "$t0")
}
GROUPS_SEEDED=$((TINY / 50))
for n in "${SIZE_LIST[@]}"; do
  add=$((n - SEEDED))
  log "growing the directory by $add users to $n"
  ldap_tb seed "$add"
  SEEDED=$n
  eval "$(ldap_tb start)"
  GROUPS_SEEDED=$((GROUPS_SEEDED + add / 50)) # what `openldap.sh seed` adds
  groups=$GROUPS_SEEDED

  # Baseline first (it also warms slapd's caches for the agent): ldapsearch of the scope.
  ldapsearch_scope "$n"
  log "ldapsearch baseline: $LS_S s, peak RSS $(mib "$LS_RSS") MiB"

  canned_tb clear-log
  cfg=$(write_config "pass-$n")
  log "full pass: idrelay sync --once over $n users + $groups groups"
  t0=$(now)
  rc=0
  timeout "$PASS_TIMEOUT" /usr/bin/time -v -o "$B/time-sync-$n.txt" "$BIN" ${ROOT_FLAG:+"$ROOT_FLAG"} --config "$cfg" --quiet sync --once \
    >"$B/sync-$n.out" 2>"$B/sync-$n.err" || rc=$?
  secs=$(secs_since "$t0")
  if [ $rc -ne 0 ] && [ $rc -ne 3 ]; then
    log_tail "$B/sync-$n.err"
    die "idrelay sync --once over $n users failed (exit $rc; 124 = over ${PASS_TIMEOUT} s)"
  fi
  rss=$(max_rss_kib "$B/time-sync-$n.txt")
  summary=$(grep '^sync:' "$B/sync-$n.out" | tail -n 1 || true)
  objs=$(sed -n 's/^sync: \([0-9]*\) objects.*/\1/p' <<<"$summary")
  reqs=$(canned_tb requests | awk '{ t += $1 } END { print t + 0 }')
  log "$n users: $secs s, peak RSS $(mib "$rss") MiB, exit $rc, $reqs SCIM requests; $summary"
  ROWS+=("$(printf '%9s | %7s | %9s | %9s | %8s | %7s | %12s | %13s | %s' \
    "$n" "$groups" "${objs:-?}" "$secs" "$(mib "$rss")" "$reqs" "$LS_S" "$(mib "$LS_RSS")" \
    "$([ $rc -eq 0 ] || echo "exit $rc")")")
done

# --- 5. report ------------------------------------------------------------------------------
cat <<EOF

== idrelay footprint ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))
   $VERSION
   directory: local slapd (mdb), users + users/50 groups of 50; SCIM: canned nginx endpoint;
   concurrency $CONCURRENCY; baseline: ldapsearch -E pr=1000 of the same scope to /dev/null

binary:  $SIZE bytes = $(awk -v b="$SIZE" 'BEGIN { printf "%.2f", b / 1048576 }') MiB ($LINKAGE)   target <= 4 MiB
idle:    \`run\` after a first pass of $TINY users: VmRSS over ${IDLE_SECS} s min/median/max $(mib "$IDLE_MIN")/$(mib "$IDLE_MED")/$(mib "$IDLE_MAX") MiB, peak (VmHWM) $(mib "$IDLE_HWM") MiB, $IDLE_THREADS threads   target <= 12 MiB

    users |  groups |   objects | agent s   | peak MiB | SCIM rq | ldapsearch s | ldapsearch MiB |
----------+---------+-----------+-----------+----------+---------+--------------+----------------+
EOF
printf '%s\n' "${ROWS[@]}"
cat <<EOF

target: peak RSS <= 48 MiB at 150,000 users, flat as the directory grows.
outputs: $B (sync-*.out/err, time-*.txt, run-idle.err); total $(since "$T0") s
EOF
