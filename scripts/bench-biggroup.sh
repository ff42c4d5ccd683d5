#!/usr/bin/env bash
# bench-biggroup.sh [N] [--chunk C] [--change K] [--member-reads MODE] [--run [--baseline-bin PATH]] [--keep]
#
# Large-group benchmark (a script, not a test; issue 4, "Benchmark"): the first
# `idrelay sync --once` over N users (default 100,000) plus ONE group holding all of them,
# against a fast SCIM endpoint, then a second `sync --once` after 1% of the members were
# removed from the group in LDAP (--change K: K members instead). The agent reads the
# group's members as directory.member_reads = MODE says (default member_of: from the member
# side, in pages; entry: with the group entry, whole, the way before streamed reads; the
# seed writes each user's memberOf, which slapadd's missing overlay would not). Prints one table:
#   - the first sync: wall time, the part spent on the group, PATCH requests, peak RSS;
#   - baseline (a), same run: `ldapsearch` reading the group's `member` attribute (all
#     values, one base search as the agent's account): time and peak RSS, median of 3;
#   - baseline (b), same run: scripts/bench/biggroup.py sending as many PATCH requests (C
#     member values each, the agent's body shape) to the same endpoint, one at a time over
#     one keep-alive connection (the agent sends a group's chunks one after the other);
#     the ratio "agent PATCH stream / load generator" is the agent's overhead per chunk;
#   - the second sync: wall time, PATCH requests (expected ceil(removed / C)), peak RSS;
#   - a third run, `sync --once --dry-run` with the scope cut to the users' OU: what the N
#     users alone cost (anchor index, scope map, reading them), without the group;
#   - one line "members N: peak RSS ..." with the peaks, the group's own share (second sync
#     minus users alone) and that share per member, so runs at several N (100000, 300000,
#     1000000) show whether memory stays flat: the group should cost about its member ids
#     (and the LDAP entry holding the member DNs), nothing per member beyond that.
# Time spent on the group is read from the endpoint's access log ($msec, millisecond wall
# clock, the same clock as the script's): "group phase" = end of the last /Users request ->
# answer to the last group PATCH (reading the group entry from LDAP, resolving N member
# DNs, the lookup, the POST, every PATCH); "PATCH stream" = answer to the POST /Groups ->
# answer to the last PATCH. The agent's own log has only whole seconds.
# Users have no `manager` (gen-ldif.py --no-managers) so that their phase stays one round.
#
# --run: the agent as administrators run it, `idrelay run` (syncrepl feed), instead of the
# `sync --once` runs above. Twice in one invocation on the same directory, each with a fresh
# state directory: the baseline, then the candidate. Baseline: the binary at --baseline-bin
# PATH with the same settings (e.g. a build of the code before `run` read changed groups in
# pieces), or without it the same binary with member_reads = "entry" (the group read whole,
# in the first pass and in the feed). Each: start `run` under /usr/bin/time -v, wait for its
# first pass (the summary line and N confirmed members), note VmRSS, reset VmHWM
# (/proc/PID/clear_refs), remove K members in LDAP while it follows, and wait until the
# agent's confirmed list holds N - K. Prints per agent: first pass seconds, peak RSS over the
# whole run, RSS before the change, peak RSS from the change until in step (VmHWM after the
# reset), seconds from the ldapmodify to the confirmed list in step, PATCH requests in that
# time. The removed members are put back after each agent.
#
# The endpoint is Debian's nginx with scripts/bench/nginx.conf (the canned SCIM endpoint of
# scripts/bench.sh: POST gives a fresh id, lookups find nothing, PATCH answers 204), run as an
# own instance whose access log also has the time of each request. It keeps no state, so the
# benchmark checks the members through the agent's own record: state_dir/members must list
# exactly N (then N minus the removed) members after each run.
#
# Own servers, loopback only, under $IDRELAY_TESTBED: slapd instance "openldap-biggroup" on
# 127.0.0.1:$IDRELAY_BIGGROUP_LDAP_PORT (3393; ldaps $IDRELAY_BIGGROUP_LDAPS_PORT, 3640),
# nginx "nginx-biggroup" on :$IDRELAY_BIGGROUP_SCIM_PORT (8095). Stopped at the end unless
# --keep; the seeded directory is kept (the removed members are put back) and reused while N
# stays the same. IDRELAY_BIN=path uses that binary instead of `cargo build --release`.
# About 40 s at N = 100,000 on 2 cores once seeded (seeding: about 10 s more), plus the build.
# Needs root on first use (apt-get install slapd ldap-utils nginx time).
set -euo pipefail
ROOT_FLAG=""
if [ "$(id -u)" = 0 ]; then ROOT_FLAG="--allow-root"; fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TB=$ROOT/scripts/testbed
TB_NAME=bench-biggroup
# shellcheck source-path=SCRIPTDIR source=testbed/common.sh
. "$TB/common.sh"
export IDRELAY_TESTBED

N=100000
CHUNK=100
CHANGE=""
MEMBER_READS=member_of
KEEP=0
RUN_MODE=0
BASE_BIN=""
usage() { sed -n '2p' "$0" | sed 's/^# //' >&2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --chunk) CHUNK=${2:?}; shift ;;
    --change) CHANGE=${2:?}; shift ;;
    --member-reads) MEMBER_READS=${2:?}; shift ;;
    --keep) KEEP=1 ;;
    --run) RUN_MODE=1 ;;
    --baseline-bin) BASE_BIN=${2:?}; shift ;;
    -h | --help) sed -n '2,54p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    [0-9]*) N=$1 ;;
    *) usage; die "unknown argument $1" ;;
  esac
  shift
done
if ! [[ $N =~ ^[0-9]+$ ]] || [ "$N" -lt 100 ]; then die "N must be a number >= 100"; fi
if ! [[ $CHUNK =~ ^[0-9]+$ ]] || [ "$CHUNK" -lt 1 ]; then die "--chunk must be a number >= 1"; fi
CHANGE=${CHANGE:-$((N / 100))}
if ! [[ $CHANGE =~ ^[0-9]+$ ]] || [ "$CHANGE" -lt 1 ] || [ "$CHANGE" -gt "$N" ]; then die "--change must be 1 to N"; fi
case "$MEMBER_READS" in entry | member_of) ;; *) die "--member-reads must be entry or member_of" ;; esac

LDAP_PORT=${IDRELAY_BIGGROUP_LDAP_PORT:-3393}
LDAPS_PORT=${IDRELAY_BIGGROUP_LDAPS_PORT:-3640}
SCIM_PORT=${IDRELAY_BIGGROUP_SCIM_PORT:-8095}
TOKEN=bench-token
B=$IDRELAY_TESTBED/bench-biggroup # configs, secrets, outputs of this run
SUFFIX=dc=branch,dc=test
PEOPLE=ou=people,$SUFFIX
GROUP_DN=cn=all-staff,ou=groups,$SUFFIX
SCIM_URL=http://127.0.0.1:$SCIM_PORT/v2
# Time limits (seconds) of the steps, so that the run stays bounded.
T_SEED=$((300 + N / 2000))
T_AGENT=$((420 + N / 1000))
T_SMALL=120

ldap_tb() { IDRELAY_LDAP_INSTANCE=openldap-biggroup IDRELAY_LDAP_PORT=$LDAP_PORT IDRELAY_LDAPS_PORT=$LDAPS_PORT "$TB/openldap.sh" "$@"; }
LDAP_D=$IDRELAY_TESTBED/openldap-biggroup
SEEDED=$LDAP_D/biggroup-seeded # "N memberOf" when the directory holds N users and the whole group

# --- the endpoint: nginx.conf of scripts/bench, plus the time of each request in its log --
NG_D=$IDRELAY_TESTBED/nginx-biggroup
NG_CONF=$NG_D/nginx.conf
NG_PID=$NG_D/nginx.pid
NG_LOG=$NG_D/access.log
scim_up() { curl -fsS -o /dev/null -H "Authorization: Bearer $TOKEN" "$SCIM_URL/ServiceProviderConfig"; }
nginx_start() {
  pid_alive "$NG_PID" "$NG_CONF" && stop_pidfile "$NG_PID" "$NG_CONF" QUIT
  port_busy "$SCIM_PORT" && die "127.0.0.1:$SCIM_PORT is already in use (set IDRELAY_BIGGROUP_SCIM_PORT)"
  mkdir -p "$NG_D/tmp"
  sed -e "s|@PREFIX@|$NG_D|g" -e "s|@PORT@|$SCIM_PORT|g" -e "s|@TOKEN@|$TOKEN|g" \
    -e "s|log_format counted '|log_format counted '\$msec |" "$ROOT/scripts/bench/nginx.conf" >"$NG_CONF"
  grep -qF "log_format counted '\$msec \$request_method \$uri \$status'" "$NG_CONF" ||
    die "scripts/bench/nginx.conf changed its log_format; update bench-biggroup.sh"
  rm -f "$NG_LOG"
  nginx -t -q -p "$NG_D/" -c "$NG_CONF" -e "$NG_D/error.log" >"$NG_D/nginx.out" 2>&1 || {
    log_tail "$NG_D/nginx.out"
    die "nginx rejected $NG_CONF"
  }
  nginx -p "$NG_D/" -c "$NG_CONF" -e "$NG_D/error.log" >"$NG_D/nginx.out" 2>&1 || {
    log_tail "$NG_D/error.log"
    die "nginx failed to start"
  }
  wait_for 15 scim_up || {
    log_tail "$NG_D/error.log"
    stop_pidfile "$NG_PID" "$NG_CONF" QUIT
    die "nginx did not answer on $SCIM_URL within 15 s"
  }
  log "nginx (canned SCIM, pid $(cat "$NG_PID")) on $SCIM_URL"
}

RESTORE=0 # 1 while members are removed from the group in LDAP
cleanup() {
  local rc=$?
  if [ "$RESTORE" = 1 ]; then
    log "putting the removed members back into $GROUP_DN"
    if timeout "$T_SMALL" ldapmodify -x -H "$OPENLDAP_URL" -D "$OPENLDAP_ROOT_DN" -w "$OPENLDAP_ROOT_PW" \
      -f "$B/restore.ldif" >/dev/null 2>"$B/restore.err"; then
      echo "$N memberOf" >"$SEEDED"
    else
      log "could not put them back; the next run seeds a new directory"
    fi
  fi
  if [ "$KEEP" = 0 ]; then
    log "stopping the benchmark's servers (--keep leaves them running)"
    stop_pidfile "$NG_PID" "$NG_CONF" QUIT 2>/dev/null || true
    ldap_tb stop 2>/dev/null || true
  fi
  exit "$rc"
}
trap cleanup EXIT

secs_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }
jget() { python3 -c 'import json, sys
v = json.loads(sys.argv[1])
for k in sys.argv[2:]: v = v[k]
print("-" if v is None else json.dumps(v) if isinstance(v, (dict, list)) else v)' "$@"; }
rss_kib() { awk -F: '/Maximum resident set size/ { gsub(/ /, "", $2); print $2 }' "$1"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
minus() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-") print "-"; else printf "%.3f", a - b }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b <= 0) print "-"; else printf "%.2f", a / b }'; }
median3() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
members_stored() { # members_stored STATE_DIR : member ids in the agent's confirmed list
  local f
  f=$(find "$1/members" -name '*.members' | head -n 1)
  [ -n "$f" ] || {
    echo 0
    return
  }
  echo $(($(wc -l <"$f") - 1))
}

T0=$(now)
log "large-group benchmark: $N users + 1 group of $N members, chunk $CHUNK, member_reads $MEMBER_READS, change $CHANGE"
log "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
ensure_pkgs slapd ldap-utils nginx time curl
mkdir -p "$B"

# --- 1. the binary --------------------------------------------------------------------
cd "$ROOT"
if [ -n "${IDRELAY_BIN:-}" ]; then
  BIN=$IDRELAY_BIN
  log "using IDRELAY_BIN=$BIN (no build)"
else
  locked=()
  if [ -f Cargo.lock ]; then locked=(--locked); fi
  log "cargo build --release ${locked[*]}"
  cargo build --release "${locked[@]}" || die "cargo build --release failed"
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/idrelay
fi
[ -x "$BIN" ] || die "no executable at $BIN"
VERSION=$("$BIN" version 2>/dev/null | head -n 1 || echo "idrelay (version unknown)")

# --- 2. the directory: N users, no other groups, one group of all of them ------------
if [ "$(cat "$SEEDED" 2>/dev/null)" = "$N memberOf" ]; then
  log "reusing the seeded directory in $LDAP_D"
else
  log "seeding $N users and $GROUP_DN ($N members) into a new directory in $LDAP_D"
  t0=$(now)
  ldap_tb reset
  ldap_tb start >/dev/null # creates the base entries and the syncer account
  ldap_tb stop
  python3 "$ROOT/scripts/gen-ldif.py" openldap --no-ou --no-managers --count "$N" --groups 0 \
    --big-group all-staff --member-of >"$LDAP_D/seed.ldif"
  timeout "$T_SEED" slapadd -q -w -f "$LDAP_D/slapd.conf" -l "$LDAP_D/seed.ldif" >"$LDAP_D/slapadd.log" 2>&1 || {
    log_tail "$LDAP_D/slapadd.log"
    die "slapadd of the seed failed (or took over $T_SEED s)"
  }
  rm -f "$LDAP_D/seed.ldif"
  echo "$N memberOf" >"$SEEDED"
  log "seeded in $(since "$t0") s"
fi
eval "$(ldap_tb start)"

# --- 3. endpoint, secrets, config ------------------------------------------------------
nginx_start
(
  umask 077
  printf '%s\n' "$OPENLDAP_SYNC_PW" >"$B/ldap.secret"
  printf '%s' "$OPENLDAP_SYNC_PW" >"$B/ldap.secret.nonl" # ldapsearch -y takes it verbatim
  printf '%s\n' "$TOKEN" >"$B/scim.token"
)
STATE=$B/state
rm -rf "$STATE"
mkdir -p "$STATE"
CFG=$B/idrelay.toml
cat >"$CFG" <<EOF
# written by scripts/bench-biggroup.sh
[agent]
id = "bench-biggroup"
state_dir = "$STATE"
[directory]
url = "$OPENLDAP_URL"
starttls = false
bind_dn = "$OPENLDAP_SYNC_DN"
password_file = "$B/ldap.secret"
base_dn = "$OPENLDAP_BASE_DN"
kind = "auto"
member_reads = "$MEMBER_READS"
[scope]
include = ["$PEOPLE", "ou=groups,$SUFFIX"]
[scim]
url = "$SCIM_URL"
token_file = "$B/scim.token"
[sync]
concurrency = 8
member_chunk = $CHUNK
EOF
chmod 600 "$CFG"

# --- 3b. --run: `idrelay run`, baseline then candidate -----------------------------------
vm_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
# first_done LOG STATE : the first pass's summary line is logged and N members are confirmed
first_done() { grep -q "objects in step" "$1" && [ "$(members_stored "$2")" = "$N" ]; }
# in_step STATE : the agent's confirmed list holds N - REMOVED members
in_step() { [ "$(members_stored "$1")" = "$((N - REMOVED))" ]; }
# follow_agent NAME BIN MEMBER_READS : sets F_PASS F_RSS F_BEFORE F_CHANGE F_STEP F_PATCH
follow_agent() {
  local name=$1 bin=$2 reads=$3 cfg=$B/idrelay-$1.toml state=$B/state-$1 t0 tpid
  APID=""
  rm -rf "$state"
  mkdir -p "$state"
  sed -e "s|^state_dir = .*|state_dir = \"$state\"|" -e "s|^member_reads = .*|member_reads = \"$reads\"|" "$CFG" >"$cfg"
  chmod 600 "$cfg"
  : >"$NG_LOG"
  log "[$name] idrelay run ($bin, member_reads $reads)"
  t0=$EPOCHREALTIME
  /usr/bin/time -v -o "$B/time-run-$name.txt" "$bin" ${ROOT_FLAG:+"$ROOT_FLAG"} --config "$cfg" run \
    >"$B/run-$name.out" 2>"$B/run-$name.err" &
  tpid=$!
  for _ in $(seq 100); do
    APID=$(pgrep -P "$tpid" | head -n 1 || true)
    [ -n "$APID" ] && break
    sleep 0.1
  done
  [ -n "$APID" ] || die "[$name] the agent did not start"
  wait_for "$T_AGENT" first_done "$B/run-$name.err" "$state" || {
    log_tail "$B/run-$name.err"
    kill -TERM "$APID" 2>/dev/null || true
    die "[$name] the first pass did not bring $N members in step within $T_AGENT s"
  }
  F_PASS=$(secs_since "$t0")
  sleep 3 # the feed starts after the pass
  F_BEFORE=$(vm_kib "$APID" VmRSS)
  echo 5 >"/proc/$APID/clear_refs" # VmHWM := VmRSS
  : >"$NG_LOG"
  RESTORE=1
  t0=$EPOCHREALTIME
  timeout "$T_SMALL" ldapmodify -x -H "$OPENLDAP_URL" -D "$OPENLDAP_ROOT_DN" -w "$OPENLDAP_ROOT_PW" \
    -f "$B/remove.ldif" >/dev/null 2>"$B/remove.err" || die "ldapmodify removing $REMOVED members failed"
  wait_for "$T_AGENT" in_step "$state" || {
    log_tail "$B/run-$name.err"
    kill -TERM "$APID" 2>/dev/null || true
    die "[$name] the agent did not bring the change in step within $T_AGENT s"
  }
  F_STEP=$(secs_since "$t0")
  F_CHANGE=$(vm_kib "$APID" VmHWM)
  F_PATCH=$(grep -c ' PATCH /v2/Groups/' "$NG_LOG" || true)
  kill -TERM "$APID"
  wait "$tpid" || true
  F_RSS=$(rss_kib "$B/time-run-$name.txt")
  timeout "$T_SMALL" ldapmodify -x -H "$OPENLDAP_URL" -D "$OPENLDAP_ROOT_DN" -w "$OPENLDAP_ROOT_PW" \
    -f "$B/restore.ldif" >/dev/null 2>"$B/restore.err" || die "ldapmodify putting the members back failed"
  RESTORE=0
  log "[$name] first pass $F_PASS s; change in step after $F_STEP s, $F_PATCH PATCH; RSS before $F_BEFORE KiB, peak during the change $F_CHANGE KiB, whole run $F_RSS KiB"
}

if [ "$RUN_MODE" = 1 ]; then
  PCT=$(awk -v k="$CHANGE" -v n="$N" 'BEGIN { printf "%.6f", 100 * k / n }')
  python3 "$ROOT/scripts/bench/biggroup.py" removals --count "$N" --percent "$PCT" --people "$PEOPLE" --group "$GROUP_DN" >"$B/remove.ldif"
  python3 "$ROOT/scripts/bench/biggroup.py" removals --count "$N" --percent "$PCT" --people "$PEOPLE" --group "$GROUP_DN" --add >"$B/restore.ldif"
  REMOVED=$(grep -c '^member:' "$B/remove.ldif")
  if [ -n "$BASE_BIN" ]; then
    [ -x "$BASE_BIN" ] || die "no executable at --baseline-bin $BASE_BIN"
    BASE_NOTE="$("$BASE_BIN" version 2>/dev/null | head -n 1 || echo "$BASE_BIN"), member_reads $MEMBER_READS"
    follow_agent baseline "$BASE_BIN" "$MEMBER_READS"
  else
    BASE_NOTE="the same binary, member_reads entry"
    follow_agent baseline "$BIN" entry
  fi
  R0=("$F_PASS" "$F_RSS" "$F_BEFORE" "$F_CHANGE" "$F_STEP" "$F_PATCH")
  follow_agent candidate "$BIN" "$MEMBER_READS"
  R1=("$F_PASS" "$F_RSS" "$F_BEFORE" "$F_CHANGE" "$F_STEP" "$F_PATCH")
  rrow() { printf '%-10s | %10s | %12s | %10s | %14s | %9s | %6s\n' "$@"; }
  cat <<EOF

== idrelay large-group benchmark, run mode: $N users + 1 group of $N members; $REMOVED leave while \`idrelay run\` follows (syncrepl); member_chunk $CHUNK ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg))
   candidate: $VERSION, member_reads $MEMBER_READS; baseline: $BASE_NOTE
EOF
  rrow "agent" "first pass" "peak RSS MiB" "RSS before" "peak in change" "change s" "PATCH"
  rrow "----------" "----------" "------------" "----------" "--------------" "---------" "------"
  rrow baseline "${R0[0]}" "$(mib "${R0[1]}")" "$(mib "${R0[2]}")" "$(mib "${R0[3]}")" "${R0[4]}" "${R0[5]}"
  rrow candidate "${R1[0]}" "$(mib "${R1[1]}")" "$(mib "${R1[2]}")" "$(mib "${R1[3]}")" "${R1[4]}" "${R1[5]}"
  echo "(first pass: start -> summary line; change s: ldapmodify -> the agent's confirmed list holds $((N - REMOVED)); peak in change: VmHWM, reset after the first pass; logs in $B/run-*.err)"
  exit 0
fi

# run_agent RUN : one `sync --once` under /usr/bin/time; sets RUN_S, RUN_RSS, RUN_TL (timeline JSON)
run_agent() {
  local run=$1 t0 t1 rc=0
  : >"$NG_LOG"
  log "[$run] idrelay sync --once"
  t0=$EPOCHREALTIME
  /usr/bin/time -v -o "$B/time-$run.txt" timeout --kill-after=10 "$T_AGENT" \
    "$BIN" ${ROOT_FLAG:+"$ROOT_FLAG"} --config "$CFG" --quiet sync --once >"$B/sync-$run.out" 2>"$B/sync-$run.err" || rc=$?
  t1=$EPOCHREALTIME
  if [ $rc -ne 0 ]; then
    log_tail "$B/sync-$run.err"
    log_tail "$B/sync-$run.out" 5
    [ $rc -eq 124 ] && die "[$run] idrelay sync --once took over $T_AGENT s"
    die "[$run] idrelay sync --once failed (exit $rc)"
  fi
  RUN_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
  RUN_RSS=$(rss_kib "$B/time-$run.txt")
  RUN_TL=$(python3 "$ROOT/scripts/bench/biggroup.py" timeline --log "$NG_LOG" --start "$t0" --end "$t1")
  cp "$NG_LOG" "$B/access-$run.log"
  log "[$run] $RUN_S s, peak RSS $RUN_RSS KiB; $(grep '^sync' "$B/sync-$run.out" | tail -n 1)"
}

# --- 4. first sync ----------------------------------------------------------------------
run_agent first
S1=$RUN_S RSS1=$RUN_RSS TL1=$RUN_TL
P1=$(jget "$TL1" group_patches)
WANT1=$(((N + CHUNK - 1) / CHUNK))
M1=$(members_stored "$STATE")
SUMMARY1=$(grep '^sync' "$B/sync-first.out" | tail -n 1 || true)
CHECKS=()
[ "$P1" = "$WANT1" ] || CHECKS+=("first sync: $P1 group PATCH requests, expected $WANT1")
[ "$M1" = "$N" ] || CHECKS+=("first sync: the agent's confirmed list holds $M1 members, expected $N")
G_PHASE=$(minus "$(jget "$TL1" patch_last)" "$(jget "$TL1" users_end)")
G_STREAM=$(minus "$(jget "$TL1" patch_last)" "$(jget "$TL1" group_post)")

# --- 5. baselines -------------------------------------------------------------------------
LS_T=() LS_RSS=0
for _ in 1 2 3; do
  t0=$EPOCHREALTIME
  /usr/bin/time -v -o "$B/time-ldapsearch.txt" timeout "$T_SMALL" ldapsearch -x -H "$OPENLDAP_URL" \
    -D "$OPENLDAP_SYNC_DN" -y "$B/ldap.secret.nonl" -b "$GROUP_DN" -s base -o ldif-wrap=no -LLL \
    '(objectClass=*)' member >"$B/ldapsearch.ldif" || die "ldapsearch of $GROUP_DN failed"
  LS_T+=("$(secs_since "$t0")")
  r=$(rss_kib "$B/time-ldapsearch.txt")
  [ "$r" -gt "$LS_RSS" ] && LS_RSS=$r
done
LS_S=$(median3 "${LS_T[@]}")
LS_N=$(grep -c '^member:' "$B/ldapsearch.ldif" || true)
log "ldapsearch: $LS_N member values in $LS_S s (runs ${LS_T[*]}), peak RSS $LS_RSS KiB"

LG_T=() LG=""
for _ in 1 2 3; do
  : >"$NG_LOG"
  LG=$(timeout "$T_SMALL" python3 "$ROOT/scripts/bench/biggroup.py" patch --base "$SCIM_URL" \
    --token-file "$B/scim.token" --requests "$P1" --chunk "$CHUNK") || die "the load generator failed"
  [ "$(jget "$LG" errors)" = 0 ] || die "the load generator got $(jget "$LG" errors) errors"
  LG_T+=("$(jget "$LG" seconds)")
done
LG_S=$(median3 "${LG_T[@]}")
log "load generator: $P1 PATCH in $LG_S s (runs ${LG_T[*]})"

# --- 6. remove 1% of the members in LDAP, second sync ---------------------------------------
PCT=$(awk -v k="$CHANGE" -v n="$N" 'BEGIN { printf "%.6f", 100 * k / n }')
python3 "$ROOT/scripts/bench/biggroup.py" removals --count "$N" --percent "$PCT" --people "$PEOPLE" --group "$GROUP_DN" >"$B/remove.ldif"
python3 "$ROOT/scripts/bench/biggroup.py" removals --count "$N" --percent "$PCT" --people "$PEOPLE" --group "$GROUP_DN" --add >"$B/restore.ldif"
REMOVED=$(grep -c '^member:' "$B/remove.ldif")
echo "$N removing" >"$SEEDED"
RESTORE=1
t0=$EPOCHREALTIME
timeout "$T_SMALL" ldapmodify -x -H "$OPENLDAP_URL" -D "$OPENLDAP_ROOT_DN" -w "$OPENLDAP_ROOT_PW" \
  -f "$B/remove.ldif" >/dev/null 2>"$B/remove.err" || {
  log_tail "$B/remove.err"
  die "ldapmodify removing $REMOVED members failed"
}
MOD_S=$(secs_since "$t0")
log "removed $REMOVED members from $GROUP_DN in $MOD_S s"
run_agent second
S2=$RUN_S RSS2=$RUN_RSS TL2=$RUN_TL
P2=$(jget "$TL2" group_patches)
WANT2=$(((REMOVED + CHUNK - 1) / CHUNK))
M2=$(members_stored "$STATE")
SUMMARY2=$(grep '^sync' "$B/sync-second.out" | tail -n 1 || true)
[ "$P2" = "$WANT2" ] || CHECKS+=("second sync: $P2 group PATCH requests, expected $WANT2")
[ "$M2" = "$((N - REMOVED))" ] || CHECKS+=("second sync: the agent's confirmed list holds $M2 members, expected $((N - REMOVED))")
OTHER2=$(($(jget "$TL2" requests) - P2))
STREAM2=$(minus "$(jget "$TL2" patch_last)" "$(jget "$TL2" patch_first)")

# --- 6b. the users alone: a dry run with the scope cut to the users' OU --------------------
sed -e "s|^include = .*|include = [\"$PEOPLE\"]|" "$CFG" >"$B/idrelay-users.toml"
chmod 600 "$B/idrelay-users.toml"
log "[users alone] idrelay sync --once --dry-run, scope $PEOPLE"
rc=0
/usr/bin/time -v -o "$B/time-users.txt" timeout --kill-after=10 "$T_AGENT" \
  "$BIN" ${ROOT_FLAG:+"$ROOT_FLAG"} --config "$B/idrelay-users.toml" --quiet sync --once --dry-run --json \
  >"$B/sync-users.out" 2>"$B/sync-users.err" || rc=$?
RSS0=$(rss_kib "$B/time-users.txt")
[ -n "$RSS0" ] || RSS0=0
[ $rc -eq 0 ] || CHECKS+=("users-alone dry run exited $rc (see $B/sync-users.err)")
log "[users alone] peak RSS $RSS0 KiB"

# --- 7. report --------------------------------------------------------------------------------
row() { printf '%-46s | %9s | %8s | %8s | %s\n' "$@"; }
cat <<EOF

== idrelay large-group benchmark: $N users + 1 group of $N members, member_chunk $CHUNK, member_reads $MEMBER_READS ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg))
   $VERSION; local slapd (mdb) on 127.0.0.1:$LDAP_PORT; canned nginx SCIM endpoint on 127.0.0.1:$SCIM_PORT
EOF
row "what" "seconds" "requests" "RSS MiB" "notes"
row "----------------------------------------------" "---------" "--------" "--------" "-----"
row "first sync --once, whole" "$S1" "$(jget "$TL1" requests)" "$(mib "$RSS1")" "${SUMMARY1:-no summary line}"
row "  group phase (last /Users -> last PATCH)" "$G_PHASE" "$((P1 + 2))" "" "LDAP read + $N member DNs resolved + lookup + POST + PATCHes"
row "  PATCH stream (POST /Groups -> last PATCH)" "$G_STREAM" "$P1" "" "$(awk -v s="$G_STREAM" -v n="$P1" 'BEGIN { if (s == "-" || n == 0) print "-"; else printf "%.2f", 1000 * s / n }') ms/PATCH (expected $WANT1 PATCH)"
row "baseline (a) ldapsearch member, base search" "$LS_S" "1" "$(mib "$LS_RSS")" "$LS_N values; median of ${LS_T[*]}"
row "baseline (b) loadgen $P1 PATCH, conc 1" "$LG_S" "$P1" "" "$(jget "$LG" rps) req/s; median of ${LG_T[*]}"
row "ratio PATCH stream / loadgen" "$(ratio "$G_STREAM" "$LG_S")" "" "" "the agent's overhead per chunk"
row "ratio group phase / (ldapsearch + loadgen)" "$(ratio "$G_PHASE" "$(awk -v a="$LS_S" -v b="$LG_S" 'BEGIN { print a + b }')")" "" "" ""
row "ldapmodify: remove $REMOVED members" "$MOD_S" "" "" "1 modify, $REMOVED values"
row "second sync --once, whole" "$S2" "$(jget "$TL2" requests)" "$(mib "$RSS2")" "${SUMMARY2:-no summary line}"
row "  group PATCHes (first -> last)" "$STREAM2" "$P2" "" "expected $WANT2; other requests: $OTHER2"
cat <<EOF

first sync requests:  $(jget "$TL1" by_kind)
second sync requests: $(jget "$TL2" by_kind)
first sync on the run's clock (s): last /Users $(jget "$TL1" users_end), POST /Groups $(jget "$TL1" group_post), first PATCH $(jget "$TL1" patch_first), last PATCH $(jget "$TL1" patch_last), exit $S1
agent's confirmed members: $M1 after the first sync, $M2 after the second
members $N: peak RSS first sync $(mib "$RSS1") MiB, second sync $(mib "$RSS2") MiB, users alone $(mib "$RSS0") MiB; the group's own share (second - users alone) $(mib $((RSS2 - RSS0))) MiB = $(awk -v k="$((RSS2 - RSS0))" -v n="$N" 'BEGIN { printf "%.0f", k * 1024 / n }') bytes per member (first - users alone: $(awk -v k="$((RSS1 - RSS0))" -v n="$N" 'BEGIN { printf "%.0f", k * 1024 / n }'))
outputs: $B (sync-*.out/err, time-*.txt, access-*.log); total $(since "$T0") s
EOF
if [ ${#CHECKS[@]} -gt 0 ]; then
  printf 'CHECK FAILED: %s\n' "${CHECKS[@]}"
  exit 1
fi
echo "checks: PATCH counts and confirmed member counts as expected"
