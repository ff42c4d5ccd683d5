#!/usr/bin/env bash
# bench-latency.sh [--changes K] [--rate R] [--poll-interval S] [--only slapd|samba|389ds] [--keep]
#
# Change-latency benchmark of `idrelay run` (a script, not a test): with the agent running,
# K changes (default 200) are applied to the directory at a steady rate (default 5/s), one
# ldapmodify each (`title` of one user set to a unique marker), and the time from
# "ldapmodify returned" to "the SCIM endpoint answered 2xx to the agent's write carrying
# that marker" is measured by a timestamping reverse proxy in front of scim2-server.
# Both directories in the same run, one after the other:
#   slapd     the benchmark's own slapd (syncrepl feed, `sync.feed = "auto"`);
#   Samba AD  the test bed's Samba AD DC (DirSync feed, `sync.feed = "dirsync"`, polling
#             every S seconds, default 5): the DC's AD_* variables when they are set
#             (`eval "$(scripts/testbed/samba-ad.sh env)"`), else scripts/testbed/samba-ad.sh
#             start. The benchmark adds an OU of its own there and deletes it at the end.
#   389-DS    the test bed's 389 Directory Server when DS389_URL is set (syncrepl through
#             the Content Synchronization plugin), in an OU of its own, deleted at the end.
# Baseline (same run, same clock): right after each ldapmodify returns, the script PUTs the
# same change to a SCIM user of its own through the same proxy; its latency is the floor of
# any pipeline here (one SCIM write to the same server). Prints one table:
#   directory | feed | K | rate | p50 | p95 | p99 | max | baseline p50/p99
# The benchmark's own servers, on loopback, under $IDRELAY_TESTBED (or $TESTBED_DIR):
# slapd instance "openldap-latency" on 127.0.0.1:$IDRELAY_LATENCY_LDAP_PORT (3392; ldaps
# $IDRELAY_LATENCY_LDAPS_PORT, 3639), scim2-server "scim-latency" on :$IDRELAY_LATENCY_SCIM_PORT
# (8094), the proxy on :$IDRELAY_LATENCY_PROXY_PORT (8093). They are stopped and their state
# removed at the end unless --keep. IDRELAY_BIN=path uses that binary instead of building
# `cargo build --release`. Exit 0 when every half ran; 1 on failure or lost changes; 3 when a
# half was skipped (e.g. the agent does not offer the feed, or no Samba DC answers).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TB=$ROOT/scripts/testbed
TB_NAME=latency
IDRELAY_TESTBED=${IDRELAY_TESTBED:-${TESTBED_DIR:-}}
# shellcheck source-path=SCRIPTDIR source=testbed/common.sh
. "$TB/common.sh"
export IDRELAY_TESTBED

CHANGES=200
RATE=5
POLL=5
ONLY=both
KEEP=0
usage() { sed -n '2p' "$0" | sed 's/^# //' >&2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --changes) CHANGES=${2:?}; shift ;;
    --rate) RATE=${2:?}; shift ;;
    --poll-interval) POLL=${2:?}; shift ;;
    --only) ONLY=${2:?}; shift ;;
    --keep) KEEP=1 ;;
    -h | --help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) usage; die "unknown argument $1" ;;
  esac
  shift
done
if ! [[ $CHANGES =~ ^[0-9]+$ ]] || [ "$CHANGES" -lt 1 ]; then die "--changes must be a number >= 1"; fi
if ! [[ $RATE =~ ^[0-9]+(\.[0-9]+)?$ ]] || ! awk -v r="$RATE" 'BEGIN { exit !(r > 0) }'; then die "--rate must be a number > 0"; fi
if ! [[ $POLL =~ ^[0-9]+$ ]] || [ "$POLL" -lt 1 ]; then die "--poll-interval must be a number >= 1"; fi
case "$ONLY" in both | slapd | samba | 389ds) ;; *) die "--only takes slapd, samba or 389ds" ;; esac

LDAP_PORT=${IDRELAY_LATENCY_LDAP_PORT:-3392}
LDAPS_PORT=${IDRELAY_LATENCY_LDAPS_PORT:-3639}
SCIM_PORT=${IDRELAY_LATENCY_SCIM_PORT:-8094}
PROXY_PORT=${IDRELAY_LATENCY_PROXY_PORT:-8093}
TOKEN=latency-token
ldap_tb() { IDRELAY_LDAP_INSTANCE=openldap-latency IDRELAY_LDAP_PORT=$LDAP_PORT IDRELAY_LDAPS_PORT=$LDAPS_PORT "$TB/openldap.sh" "$@"; }
scim_tb() { IDRELAY_SCIM_INSTANCE=scim-latency IDRELAY_SCIM_PORT=$SCIM_PORT IDRELAY_SCIM_TOKEN=$TOKEN "$TB/scim-server.sh" "$@"; }

W=""
STARTED_LDAP=0
STARTED_SCIM=0
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  local rc=$? f pid
  trap - EXIT INT TERM
  # Agents the Python driver left behind (it stops them itself unless it was killed).
  for f in "${W:-/nonexistent}"/agent-*.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    if pid_alive "$f" "$W/"; then
      log "stopping a leftover agent (pid $pid)"
      stop_pidfile "$f" "$W/" 2>/dev/null || true
    fi
  done
  if [ "$KEEP" = 0 ]; then
    [ "$STARTED_SCIM" = 1 ] && { scim_tb reset >/dev/null 2>&1 || true; }
    [ "$STARTED_LDAP" = 1 ] && { ldap_tb reset >/dev/null 2>&1 || true; }
    if [ -n "$W" ] && [ -d "$W" ]; then
      if [ "$rc" != 0 ] && compgen -G "$W/agent-*.log" >/dev/null; then
        log "kept configs, agent logs and per-change latencies-*.csv in $W"
      else
        rm -rf "$W"
      fi
    fi
  else
    log "--keep: servers left running; configs, agent logs and per-change latencies-*.csv in $W"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

T0=$(now)
log "latency benchmark: $CHANGES changes at $RATE/s per directory ($ONLY); machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
ensure_pkgs slapd ldap-utils curl
mkdir -p "$IDRELAY_TESTBED"
W=$(mktemp -d "$IDRELAY_TESTBED/latency.XXXXXX")
chmod 700 "$W"

# --- the binary ------------------------------------------------------------------------
cd "$ROOT"
if [ -n "${IDRELAY_BIN:-}" ]; then
  BIN=$IDRELAY_BIN
  log "using IDRELAY_BIN=$BIN (no build)"
else
  locked=()
  if [ -f Cargo.lock ]; then locked=(--locked); fi
  log "cargo build --release ${locked[*]} (a no-op when target/release is fresh)"
  t0=$(now)
  timeout 1800 cargo build --release "${locked[@]}" || die "cargo build --release failed"
  log "build step took $(since "$t0") s"
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/idrelay
fi
[ -x "$BIN" ] || die "no executable at $BIN"

# --- the servers -----------------------------------------------------------------------
if port_busy "$PROXY_PORT"; then die "127.0.0.1:$PROXY_PORT (the proxy's port) is in use; set IDRELAY_LATENCY_PROXY_PORT"; fi
STARTED_SCIM=1
scim_tb reset >/dev/null 2>&1 || true
scim_tb start >/dev/null || die "could not start scim2-server on 127.0.0.1:$SCIM_PORT"
printf '%s\n' "$TOKEN" >"$W/scim.token"
chmod 600 "$W/scim.token"

TARGETS=()
json() { python3 -c 'import json, sys; print(json.dumps(dict(a.split("=", 1) for a in sys.argv[1:])))' "$@"; }
# secret NAME VALUE : a file without trailing newline (ldap tools' -y take it verbatim; the agent strips one)
secret() { (umask 077 && printf '%s' "$2" >"$W/$1"); echo "$W/$1"; }
rand_tag() { python3 -c 'import random, string; print("'"$1"'" + "".join(random.choice(string.ascii_lowercase) for _ in range(4)))'; }

if [ "$ONLY" = both ] || [ "$ONLY" = slapd ]; then
  STARTED_LDAP=1
  ldap_tb reset >/dev/null 2>&1 || true
  eval "$(ldap_tb start)" || die "could not start the benchmark's slapd on 127.0.0.1:$LDAP_PORT"
  tag=$(rand_tag o)
  TARGETS+=(--target "$(json name=slapd label=slapd kind=openldap feed=syncrepl config_feed=auto tag="$tag" \
    url="$OPENLDAP_URL" base="$OPENLDAP_BASE_DN" ou="ou=latency-$tag,$OPENLDAP_BASE_DN" \
    admin_dn="$OPENLDAP_ROOT_DN" admin_pw_file="$(secret slapd-admin.pw "$OPENLDAP_ROOT_PW")" \
    bind_dn="$OPENLDAP_SYNC_DN" bind_pw_file="$(secret slapd-sync.pw "$OPENLDAP_SYNC_PW")")")
fi

SAMBA_NOTE=""
if [ "$ONLY" = both ] || [ "$ONLY" = samba ]; then
  if [ -z "${AD_LDAP_URL:-}" ]; then
    log "AD_LDAP_URL is not set: starting (or finding) the test bed's Samba AD DC with $TB/samba-ad.sh"
    if out=$("$TB/samba-ad.sh" start); then eval "$out"; else SAMBA_NOTE="scripts/testbed/samba-ad.sh start failed"; fi
  fi
  if [ -z "$SAMBA_NOTE" ] && ! timeout 20 ldapsearch -x -H "$AD_LDAP_URL" -D "$AD_BIND_DN" -w "$AD_PASSWORD" \
    -b '' -s base -LLL highestCommittedUSN >/dev/null 2>&1; then
    SAMBA_NOTE="the Samba AD DC at $AD_LDAP_URL does not answer a bind as $AD_BIND_DN"
  fi
  if [ -n "$SAMBA_NOTE" ]; then
    log "Samba AD half SKIPPED: $SAMBA_NOTE"
  else
    tag=$(rand_tag a)
    upn_suffix=${AD_BIND_UPN#*@}
    [ "$upn_suffix" != "${AD_BIND_UPN:-}" ] || upn_suffix=$(sed 's/[Dd][Cc]=//g; s/,/./g' <<<"$AD_BASE_DN" | tr '[:upper:]' '[:lower:]')
    TARGETS+=(--target "$(json name=samba label="Samba AD" kind=ad feed=dirsync config_feed=dirsync tag="$tag" \
      url="$AD_LDAP_URL" base="$AD_BASE_DN" ou="OU=latency-$tag,$AD_BASE_DN" upn_suffix="$upn_suffix" \
      admin_dn="$AD_BIND_DN" admin_pw_file="$(secret ad-admin.pw "$AD_PASSWORD")" \
      bind_dn="$AD_BIND_DN" bind_pw_file="$(secret ad-bind.pw "$AD_PASSWORD")")")
  fi
fi
# 389-DS: the test bed's instance (scripts/testbed/389ds.sh, started by scripts/test.sh) when
# its DS389_* variables are set; syncrepl through the Content Synchronization plugin.
if [ "$ONLY" = both ] || [ "$ONLY" = 389ds ]; then
  if [ -n "${DS389_URL:-}" ]; then
    tag=$(rand_tag d)
    TARGETS+=(--target "$(json name=389ds label=389-DS kind=openldap feed=syncrepl config_feed=auto tag="$tag" \
      url="$DS389_URL" base="$DS389_BASE_DN" ou="ou=latency-$tag,$DS389_BASE_DN" \
      admin_dn="$DS389_ROOT_DN" admin_pw_file="$(secret ds389-admin.pw "$DS389_ROOT_PW")" \
      bind_dn="$DS389_SYNC_DN" bind_pw_file="$(secret ds389-sync.pw "$DS389_SYNC_PW")")")
  else
    log "389-DS half skipped: DS389_URL is not set (run scripts/test.sh, or export its DS389_* variables)"
  fi
fi
[ ${#TARGETS[@]} -gt 0 ] || die "nothing to measure"

# --- the measurement (Python: proxy, driver and statistics on one clock) ---------------
log "servers ready after $(since "$T0") s; measuring"
rc=0
# --foreground: a Ctrl-C reaches the driver, which stops its agent and deletes its OU.
timeout --foreground -k 30 1200 python3 "$ROOT/scripts/bench-latency.py" --bin "$BIN" --work "$W" \
  --scim-port "$SCIM_PORT" --proxy-port "$PROXY_PORT" --token-file "$W/scim.token" \
  --changes "$CHANGES" --rate "$RATE" --poll-interval "$POLL" "${TARGETS[@]}" || rc=$?
if [ -n "$SAMBA_NOTE" ]; then
  printf '%-10s | %-22s | SKIPPED: %s\n' "Samba AD" dirsync "$SAMBA_NOTE"
  [ "$rc" = 0 ] && rc=3
fi
echo
echo "$("$BIN" version 2>/dev/null | head -n 1 || echo idrelay); total $(since "$T0") s"
exit "$rc"
