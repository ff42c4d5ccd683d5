#!/usr/bin/env bash
# bench-wan.sh [--users N] [--groups G] [--rtt-ms MS] [--mbit M] [--concurrency C] [--loadgen-concurrency C1,C2] [--fixed F1,F2] [--only-off | --only-bulk | --second-pass R] [--keep]
#
# The WAN benchmark (a script, not a test; issue 15 item 6): one full pass of the agent over
# N users (default 5,000) and G groups (default N/50) of 50, to a fresh scim2-server each time, on
# loopback and through scripts/bench/wan-proxy.py, a loopback TCP proxy that adds MS ms of
# round-trip time (default 80; a new connection pays one more round trip) and caps each
# direction at M Mbit/s (default 20). Printed side by side, all measured in this run:
#   - idrelay on loopback and through the proxy, with `[sync] bulk = "auto"` (SCIM Bulk,
#     which scim2-server offers) and `bulk = "off"` (one request per object), at
#     `[sync] concurrency = C` (default 8);
#   - a second pass through the proxy over the unchanged directory (bulk auto), right
#     after the first (the base binary's too, after its own first pass);
#   - bench-load.py, the POST-only load generator, replaying the same SCIM bodies (from
#     `idrelay sync --once --dry-run --json`) through the proxy at each of C1,C2 (default 8,32)
#     requests in flight, and on loopback at C;
#   - bench-load.py --bulk 1000, the Bulk load generator, through the proxy and on
#     loopback at C (the generators replay the dry run's bodies: groups without members,
#     users without manager references, which the agent sends and the server must check);
# with the requests each run sent (from scim2-server's log), the agent's peak RSS
# (/usr/bin/time -v) and the issue's ratios (targets: WAN / loopback <= 1.5 and
# WAN / Bulk generator <= 1.5 with Bulk; bulk off / best POST-only generator <= 2). The
# agent with bulk off also runs through the proxy at each of C1,C2 above C.
# --fixed F1,F2 adds the agent with bulk off through the proxy at each Fi requests in
# flight with `adaptive_concurrency = false` (the fixed number, as before the window).
# IDRELAY_BIN_BASE=path adds that binary's rows (bulk auto; bulk off unless --only-bulk): a
# baseline measured in the same run, e.g. the commit before a change. --only-off runs only what concerns an
# endpoint without Bulk: the agent with bulk off through the proxy (at C and above) and
# the POST-only generator through the proxy. --only-bulk runs only the Bulk rows through the
# proxy: the agent's first and second pass with bulk auto and the Bulk generator (for a
# directory too large to also send one request per object, e.g. --users 100000 --groups 1000).
# --second-pass R (needs IDRELAY_BIN_BASE) measures only the second pass, the old binary
# against this one: one first pass (the base binary, bulk auto, on loopback) fills
# scim2-server and a state directory; each binary gets a copy of that state and one
# unmeasured second pass of its own (a binary that keeps more in its state fills it there);
# then R second passes each through the proxy, alternating base and new, all over the same
# unchanged directory and the same server. Printed: each run's wall time, the pass's own
# time from its summary line, user + system CPU and peak RSS (/usr/bin/time -v). With --keep,
# a later --second-pass run over the same N and G reuses that first pass and its server.
#
# Its servers are its own, never the test servers: slapd instance "openldap-wan" on
# 127.0.0.1:$IDRELAY_WAN_LDAP_PORT (3396; ldaps $IDRELAY_WAN_LDAPS_PORT, 3643), scim2-server
# "scim-wan" on :$IDRELAY_WAN_SCIM_PORT (8097) and the proxy on :$IDRELAY_WAN_PROXY_PORT
# (8098), all under $IDRELAY_TESTBED (IDRELAY_WAN_INSTANCE=x names them openldap-x, scim-x,
# bench-x instead: a second copy beside one running), stopped at the end unless --keep (the proxy always).
# The seeded directory is kept and reused while N and G stay the same.
# IDRELAY_BIN=path benchmarks that binary instead of building `cargo build --release`.
set -euo pipefail
ROOT_FLAG=""
if [ "$(id -u)" = 0 ]; then ROOT_FLAG="--allow-root"; fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TB=$ROOT/scripts/testbed
TB_NAME=bench-wan
# shellcheck source-path=SCRIPTDIR source=testbed/common.sh
. "$TB/common.sh"
export IDRELAY_TESTBED

USERS=5000
RTT_MS=80
MBIT=20
CONCURRENCY=8
LG_CONC=8,32
FIXED=""
KEEP=0
ONLY_OFF=0
ONLY_BULK=0
SECOND_RUNS=0
GROUPS_N=
while [ $# -gt 0 ]; do
  case "$1" in
    --users) USERS=${2:?}; shift ;;
    --rtt-ms) RTT_MS=${2:?}; shift ;;
    --mbit) MBIT=${2:?}; shift ;;
    --concurrency) CONCURRENCY=${2:?}; shift ;;
    --loadgen-concurrency) LG_CONC=${2:?}; shift ;;
    --fixed) FIXED=${2:?}; shift ;;
    --keep) KEEP=1 ;;
    --only-off) ONLY_OFF=1 ;;
    --only-bulk) ONLY_BULK=1 ;;
    --groups) GROUPS_N=${2:?}; shift ;;
    --second-pass) SECOND_RUNS=${2:?}; shift ;;
    -h | --help) sed -n '2,44p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
[ "$ONLY_OFF" = 0 ] || [ "$ONLY_BULK" = 0 ] || die "--only-off and --only-bulk exclude each other"
for v in "$USERS" "$SECOND_RUNS" ${GROUPS_N:+"$GROUPS_N"} "$RTT_MS" "$MBIT" "$CONCURRENCY" ${LG_CONC//,/ } ${FIXED//,/ }; do
  [[ $v =~ ^[0-9]+$ ]] || die "not a whole number: $v"
done
[ "$USERS" -ge 50 ] || die "--users must be >= 50"
[ "$SECOND_RUNS" = 0 ] || [ -n "${IDRELAY_BIN_BASE:-}" ] || die "--second-pass needs IDRELAY_BIN_BASE (the binary to compare with)"
GROUPS_N=${GROUPS_N:-$((USERS / 50))}

LDAP_PORT=${IDRELAY_WAN_LDAP_PORT:-3396}
LDAPS_PORT=${IDRELAY_WAN_LDAPS_PORT:-3643}
SCIM_PORT=${IDRELAY_WAN_SCIM_PORT:-8097}
PROXY_PORT=${IDRELAY_WAN_PROXY_PORT:-8098}
TOKEN=bench-token
WAN_NAME=${IDRELAY_WAN_INSTANCE:-wan}
B=$IDRELAY_TESTBED/bench-$WAN_NAME
SCOPE=("ou=people,dc=branch,dc=test" "ou=groups,dc=branch,dc=test")

ldap_tb() { IDRELAY_LDAP_INSTANCE=openldap-$WAN_NAME IDRELAY_LDAP_PORT=$LDAP_PORT IDRELAY_LDAPS_PORT=$LDAPS_PORT "$TB/openldap.sh" "$@"; }
scim_tb() { IDRELAY_SCIM_INSTANCE=scim-$WAN_NAME IDRELAY_SCIM_PORT=$SCIM_PORT IDRELAY_SCIM_TOKEN=$TOKEN "$TB/scim-server.sh" "$@"; }
url() { if [ "$1" = wan ]; then echo "http://127.0.0.1:$PROXY_PORT/v2"; else echo "http://127.0.0.1:$SCIM_PORT/v2"; fi; }

PROXY_PID=""
proxy_stop() { # prints the proxy's JSON stats line, if any
  [ -n "$PROXY_PID" ] || return 0
  kill "$PROXY_PID" 2>/dev/null || true
  wait "$PROXY_PID" 2>/dev/null || true
  PROXY_PID=""
  tail -n 1 "$B/proxy.out" 2>/dev/null || true
}
proxy_start() {
  port_busy "$PROXY_PORT" && die "127.0.0.1:$PROXY_PORT is already in use (set IDRELAY_WAN_PROXY_PORT)"
  python3 "$ROOT/scripts/bench/wan-proxy.py" --listen "$PROXY_PORT" --target "$SCIM_PORT" \
    --rtt-ms "$RTT_MS" --mbit "$MBIT" >"$B/proxy.out" 2>"$B/proxy.err" &
  PROXY_PID=$!

  for _ in $(seq 50); do
    port_busy "$PROXY_PORT" && return 0
    sleep 0.1
  done
  die "the WAN proxy did not start (see $B/proxy.err)"
}
cleanup() {
  local rc=$?
  proxy_stop >/dev/null
  if [ "$KEEP" = 0 ]; then
    scim_tb stop 2>/dev/null || true
    ldap_tb stop 2>/dev/null || true
  fi
  exit "$rc"
}
trap cleanup EXIT

# fresh : restart scim2-server with nothing in it; MARK is where its log stands.
fresh() {
  rm -f "$B/first-done"
  scim_tb stop 2>/dev/null || true
  scim_tb start >/dev/null
  MARK=$(wc -l <"$IDRELAY_TESTBED/scim-$WAN_NAME/scim2-server.log")
}
# requests : "N (POST /v2/Bulk 200: n, ...)" from scim2-server's log since `fresh`.
requests() {
  tail -n +"$((MARK + 1))" "$IDRELAY_TESTBED/scim-$WAN_NAME/scim2-server.log" |
    awk -F'"' 'NF >= 3 && $2 ~ / HTTP\// {
        split($2, r, " "); split(r[2], q, "?"); split(q[1], p, "/");
        k = r[1] " /" p[2] "/" p[3] (p[4] != "" ? "/ID" : ""); split($3, s, " ");
        n[k " " s[1]]++; t++ } END { d = ""; for (k in n) d = d (d ? ", " : "") k ": " n[k];
        printf "%d (%s)", t, d }'
}
secs_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }
ratio() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
jget() { python3 -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

T0=$(now)
log "WAN benchmark: $USERS users + $GROUPS_N groups; link ${RTT_MS} ms RTT, $MBIT Mbit/s; concurrency $CONCURRENCY"
log "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
ensure_pkgs slapd ldap-utils time curl
mkdir -p "$B"

cd "$ROOT"
if [ -n "${IDRELAY_BIN:-}" ]; then
  BIN=$IDRELAY_BIN
else
  cargo build --release -q || die "cargo build --release failed"
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/idrelay
fi
[ -x "$BIN" ] || die "no executable at $BIN"
AG_BIN=$BIN AG_CONC=$CONCURRENCY AG_TAG="" AG_ADAPT=true # what `agent` runs (the baseline rows change it)
VERSION=$("$BIN" version 2>/dev/null | head -n 1 || echo "idrelay (version unknown)")
[ -z "${IDRELAY_BIN_BASE:-}" ] || VERSION="$VERSION; base: $("$IDRELAY_BIN_BASE" version 2>/dev/null | head -n 1)"

LDAP_D=$IDRELAY_TESTBED/openldap-$WAN_NAME
if [ "$(cat "$LDAP_D/bench-seeded" 2>/dev/null)" != "$USERS $GROUPS_N" ]; then
  log "seeding $USERS users and $GROUPS_N groups into $LDAP_D"
  ldap_tb reset
  ldap_tb seed "$USERS" "$GROUPS_N"
  echo "$USERS $GROUPS_N" >"$LDAP_D/bench-seeded"
fi
eval "$(ldap_tb start)"
(
  umask 077
  printf '%s\n' "$OPENLDAP_SYNC_PW" >"$B/ldap.secret"
  printf '%s\n' "$TOKEN" >"$B/scim.token"
)

write_config() { # write_config TAG LINK BULK -> config path, with a fresh state dir
  local cfg=$B/idrelay-$1.toml state=$B/state-$1
  rm -rf "$state"
  mkdir -p "$state"
  cat >"$cfg" <<EOF
# written by scripts/bench-wan.sh
[agent]
id = "bench-wan-$1"
state_dir = "$state"
[directory]
url = "$OPENLDAP_URL"
starttls = false
bind_dn = "$OPENLDAP_SYNC_DN"
password_file = "$B/ldap.secret"
base_dn = "$OPENLDAP_BASE_DN"
[scope]
include = ["${SCOPE[0]}", "${SCOPE[1]}"]
[scim]
url = "$(url "$2")"
token_file = "$B/scim.token"
[sync]
concurrency = $AG_CONC
bulk = "$3"
$([ "$AG_ADAPT" = true ] || echo "adaptive_concurrency = false")
EOF
  chmod 600 "$cfg"
  echo "$cfg"
}

# --second-pass R: the second pass alone, base binary against this one (see the top).
second_pass() { # second_pass TAG BIN CFG [warm] : one second pass through the proxy
  local tag=$1 bin=$2 cfg=$3 t0 secs rc=0 rss cpu pass summary
  MARK=$(wc -l <"$IDRELAY_TESTBED/scim-$WAN_NAME/scim2-server.log")
  proxy_start
  t0=$(now)
  /usr/bin/time -v -o "$B/time-$tag.txt" "$bin" ${ROOT_FLAG:+"$ROOT_FLAG"} --config "$cfg" sync --once \
    >"$B/sync-$tag.out" 2>"$B/sync-$tag.err" || rc=$?
  secs=$(secs_since "$t0")
  proxy_stop >"$B/proxy-$tag.json"
  [ $rc -eq 0 ] || { log_tail "$B/sync-$tag.err"; die "[$tag] sync --once failed (exit $rc)"; }
  rss=$(awk -F: '/Maximum resident set size/ { gsub(/ /, "", $2); printf "%.1f", $2 / 1024 }' "$B/time-$tag.txt")
  cpu=$(awk -F: '/(User|System) time/ { t += $2 } END { printf "%.2f", t }' "$B/time-$tag.txt")
  summary=$(grep '^sync:' "$B/sync-$tag.out" | tail -n 1 || true)
  pass=$(sed -n 's/.*; \([0-9.]*\) s, [0-9]* objects\/s.*/\1/p' <<<"$summary")
  grep -q " 0 created, 0 updated, .* 0 failed; requests: 0 POST, 0 PUT, 0 PATCH" <<<"$summary" ||
    die "[$tag] not an unchanged second pass: ${summary:-(no summary line)}"
  log "[$tag] $secs s (pass ${pass:-?} s), CPU $cpu s, peak RSS $rss MiB"
  [ "${4:-}" = warm ] && return 0
  row "$tag" "$secs" "${pass:-?}" "$cpu" "$(requests | cut -d' ' -f1)" "$rss"
  SP[${tag%-*}]="${SP[${tag%-*}]:-} $secs"
  CP[${tag%-*}]="${CP[${tag%-*}]:-} $cpu"
}
# stats "a b c" : "a b c (median m)", sorted
stats() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -n | awk '{ a[NR] = $1; l = l (l ? ", " : "") $1 } END { printf "%s (median %s)", l, a[int((NR + 1) / 2)] }'; }
if [ "$SECOND_RUNS" -gt 0 ]; then
  ROWS=()
  declare -A SP CP
  row() { ROWS+=("$(printf '%-8s | %7s | %7s | %13s | %8s | %s' "$@")"); }
  if [ "$(cat "$B/first-done" 2>/dev/null)" = "$USERS $GROUPS_N" ] && scim_tb status >/dev/null 2>&1; then
    log "[first] reusing the first pass kept by --keep ($B/state-first, scim2-server running)"
  else
    fresh
    cfg=$(write_config first loop auto)
    log "[first] the base binary's first pass on loopback (fills scim2-server and the state)"
    t0=$(now)
    rc=0
    "$IDRELAY_BIN_BASE" ${ROOT_FLAG:+"$ROOT_FLAG"} --config "$cfg" sync --once >"$B/sync-first.out" 2>"$B/sync-first.err" || rc=$?
    [ $rc -eq 0 ] || { log_tail "$B/sync-first.err"; die "[first] sync --once failed (exit $rc)"; }
    log "[first] $(since "$t0") s: $(grep '^sync:' "$B/sync-first.out" | tail -n 1)"
    echo "$USERS $GROUPS_N" >"$B/first-done"
  fi
  for who in base new; do
    cfg=$(write_config "2-$who" wan auto)
    cp -a "$B/state-first/." "$B/state-2-$who/"
    bin=$BIN
    [ "$who" = base ] && bin=$IDRELAY_BIN_BASE
    second_pass "$who-warm" "$bin" "$cfg" warm
  done
  for i in $(seq "$SECOND_RUNS"); do
    second_pass "base-$i" "$IDRELAY_BIN_BASE" "$B/idrelay-2-base.toml"
    second_pass "new-$i" "$BIN" "$B/idrelay-2-new.toml"
  done
  cat <<EOF

== idrelay second pass: $USERS users + $GROUPS_N groups, unchanged, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)
   $VERSION
   link: ${RTT_MS} ms RTT, $MBIT Mbit/s each way; base and new alternating, each from its own copy of one first pass's state

run      |  wall s |  pass s | user+sys CPU s | requests | peak RSS MiB
---------+---------+---------+---------------+----------+-------------
EOF
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "  base: wall $(stats "${SP[base]}") s; CPU $(stats "${CP[base]}") s"
  echo "  new:  wall $(stats "${SP[new]}") s; CPU $(stats "${CP[new]}") s   (target <= 5 s)"
  echo "  (pass s: the agent's own summary line; wall adds start-up and loading the index)"
  echo "outputs: $B; total $(since "$T0") s"
  exit 0
fi

# The SCIM bodies the load generators replay.
fresh
cfg=$(write_config dry loop auto)
rc=0
"$BIN" ${ROOT_FLAG:+"$ROOT_FLAG"} --config "$cfg" sync --once --dry-run --json >"$B/writes.jsonl" 2>"$B/dry-run.err" || rc=$?
[ $rc -eq 0 ] || [ $rc -eq 3 ] || die "sync --once --dry-run failed (exit $rc; see $B/dry-run.err)"
WRITES=$(grep -c '^{' "$B/writes.jsonl" || true)
log "dry run: $WRITES writes"

ROWS=()
row() { ROWS+=("$(printf '%-44s | %8s | %-60s | %s' "$1" "$2" "$3" "$4")"); }
declare -A S

agent() { # agent TAG LINK BULK [second] : one pass; sets S[TAG]
  local tag=$1 link=$2 bulk=$3 cfg t0 secs rc=0 rss summary
  if [ "${4:-}" = second ]; then
    MARK=$(wc -l <"$IDRELAY_TESTBED/scim-$WAN_NAME/scim2-server.log")
    cfg=$B/idrelay-${tag%-2}.toml
  else
    fresh
    cfg=$(write_config "$tag" "$link" "$bulk")
  fi
  [ "$link" = wan ] && proxy_start
  log "[$tag] idrelay sync --once ($link, bulk $bulk${4:+, second pass})"
  t0=$(now)
  /usr/bin/time -v -o "$B/time-$tag.txt" "$AG_BIN" ${ROOT_FLAG:+"$ROOT_FLAG"} --config "$cfg" sync --once \
    >"$B/sync-$tag.out" 2>"$B/sync-$tag.err" || rc=$?
  secs=$(secs_since "$t0")
  [ "$link" = wan ] && proxy_stop >"$B/proxy-$tag.json"
  [ $rc -eq 0 ] || [ $rc -eq 3 ] || { log_tail "$B/sync-$tag.err"; die "[$tag] sync --once failed (exit $rc)"; }
  rss=$(awk -F: '/Maximum resident set size/ { gsub(/ /, "", $2); printf "%.1f", $2 / 1024 }' "$B/time-$tag.txt")
  summary=$(grep '^sync:' "$B/sync-$tag.out" | tail -n 1 | sed 's/^sync: //' || true)
  S[$tag]=$secs
  row "idrelay${AG_TAG} $link, bulk $bulk, c $AG_CONC${4:+, second pass}" "$secs" "$(requests)" "${rss} MiB; $summary"
  log "[$tag] $secs s, peak RSS $rss MiB"
}

loadgen() { # loadgen TAG LINK CONC [--bulk N]
  local tag=$1 link=$2 conc=$3 json
  shift 3
  fresh
  [ "$link" = wan ] && proxy_start
  log "[$tag] bench-load.py ${*:-POST-only} ($link, $conc in flight)"
  json=$(python3 "$ROOT/scripts/bench-load.py" --base "$(url "$link")" --token-file "$B/scim.token" \
    --concurrency "$conc" "$@" "$B/writes.jsonl" 2>"$B/loadgen-$tag.err") || true
  [ "$link" = wan ] && proxy_stop >"$B/proxy-$tag.json"
  [ -n "$json" ] || { cat "$B/loadgen-$tag.err" >&2; die "[$tag] bench-load.py produced no result"; }
  S[$tag]=$(jget "$json" seconds)
  row "${tag%%-*} load generator, $link, $conc in flight" "${S[$tag]}" "$(requests)" \
    "$(jget "$json" errors) errors, p50 $(jget "$json" p50_ms) ms"
}

if [ "$ONLY_BULK" = 1 ]; then
  agent wan-auto wan auto
  agent wan-auto-2 wan auto second
  LG_CONC=""
elif [ "$ONLY_OFF" = 0 ]; then
  agent loop-auto loop auto
  agent loop-off loop off
  agent wan-auto wan auto
  agent wan-auto-2 wan auto second
fi
[ "$ONLY_BULK" = 1 ] || agent wan-off wan off
for c in ${LG_CONC//,/ }; do
  [ "$c" -gt "$CONCURRENCY" ] || continue
  AG_CONC=$c
  agent "wan-off-$c" wan off
done
for c in ${FIXED//,/ }; do
  AG_CONC=$c AG_ADAPT=false AG_TAG=" (fixed)"
  agent "fixed-wan-off-$c" wan off
done
AG_ADAPT=true AG_TAG=""
if [ -n "${IDRELAY_BIN_BASE:-}" ]; then
  AG_BIN=$IDRELAY_BIN_BASE AG_TAG=" (base)" AG_CONC=$CONCURRENCY
  if [ "$ONLY_OFF" = 0 ]; then
    [ "$ONLY_BULK" = 1 ] || agent base-loop-auto loop auto
    agent base-wan-auto wan auto
    agent base-wan-auto-2 wan auto second
  fi
  [ "$ONLY_OFF" = 1 ] || [ "$ONLY_BULK" = 1 ] || agent base-loop-off loop off
  [ "$ONLY_BULK" = 1 ] || agent base-wan-off wan off
  for c in ${LG_CONC//,/ }; do
    [ "$c" -gt "$CONCURRENCY" ] || continue
    AG_CONC=$c
    agent "base-wan-off-$c" wan off
  done
fi
AG_BIN=$BIN AG_CONC=$CONCURRENCY AG_TAG=""
[ "$ONLY_OFF" = 1 ] || [ "$ONLY_BULK" = 1 ] || loadgen post-loop loop "$CONCURRENCY"
BEST_POST=""
BEST_C="-"
for c in ${LG_CONC//,/ }; do
  loadgen "post-wan-$c" wan "$c"
  if [ -z "$BEST_POST" ] || awk -v a="${S[post-wan-$c]}" -v b="$BEST_POST" 'BEGIN { exit !(a < b) }'; then
    BEST_POST=${S[post-wan-$c]}
    BEST_C=$c
  fi
done
if [ "$ONLY_OFF" = 0 ]; then
  loadgen bulk-wan wan "$CONCURRENCY" --bulk 1000
  [ "$ONLY_BULK" = 1 ] || loadgen bulk-loop loop "$CONCURRENCY" --bulk 1000
fi

cat <<EOF

== idrelay WAN benchmark: $USERS users + $GROUPS_N groups ($WRITES writes a first pass), $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores
   $VERSION; link: ${RTT_MS} ms RTT (+1 RTT a new connection), $MBIT Mbit/s each way (scripts/bench/wan-proxy.py)
   scim2-server fresh for each first pass; agent [sync] concurrency = $CONCURRENCY

run                                          |        s | requests (scim2-server log)                                  | notes
---------------------------------------------+----------+--------------------------------------------------------------+------
EOF
printf '%s\n' "${ROWS[@]}"
cat <<EOF

ratios (issue 15 targets)
  WAN bulk auto / loopback bulk auto:                 $(ratio "${S[wan-auto]:-}" "${S[loop-auto]:-}")   (target <= 1.5)
  WAN bulk auto / Bulk load generator on the WAN:     $(ratio "${S[wan-auto]:-}" "${S[bulk-wan]:-}")   (target <= 1.5)
  WAN bulk off / best POST-only generator ($BEST_C in flight): $(ratio "${S[wan-off]:-}" "$BEST_POST")   (target <= 2)
EOF
[ -z "${S[base-wan-auto]:-}" ] ||
  echo "  base: WAN bulk auto / Bulk load generator on the WAN: $(ratio "${S[base-wan-auto]}" "${S[bulk-wan]:-}")   (target <= 1.5)"
for t in wan-off fixed-wan-off base-wan-off; do
  for c in ${LG_CONC//,/ }; do
    [ -n "${S[$t-$c]:-}" ] || continue
    echo "  $t at c $c / best POST-only generator:  $(ratio "${S[$t-$c]}" "$BEST_POST")   (target <= 2)"
  done
done
[ -z "${S[base-wan-off]:-}" ] ||
  echo "  base-wan-off at c $CONCURRENCY / best POST-only generator:  $(ratio "${S[base-wan-off]}" "$BEST_POST")"
cat <<EOF
  loopback bulk auto / POST-only generator, loopback: $(ratio "${S[loop-auto]:-}" "${S[post-loop]:-}")   (target <= 1.0)
  loopback bulk auto / Bulk generator, loopback:      $(ratio "${S[loop-auto]:-}" "${S[bulk-loop]:-}")
  second pass on the WAN:                             ${S[wan-auto-2]:-} s   (target <= 5 s)${S[base-wan-auto-2]:+; base: ${S[base-wan-auto-2]} s}
outputs: $B; total $(since "$T0") s
EOF
