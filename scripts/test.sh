#!/usr/bin/env bash
# test.sh [--stop] [-- CARGO_TEST_ARGS...] — the project's test command.
#
# Starts the test servers on loopback (OpenLDAP slapd, Samba AD DC, 389 Directory Server,
# scim2-server, Canaille, PostgreSQL; see scripts/testbed/), installing their Debian/PyPI
# packages on first use (needs root then), exports their variables (OPENLDAP_*, AD_*,
# DS389_*, SCIM_*, CANAILLE_*, IDRELAY_TEST_PG_URL), runs
#   cargo test --all-targets [--locked] [CARGO_TEST_ARGS...]
# and exits with cargo's status. The servers keep running afterwards (the next run starts
# in a second); --stop stops them at the end, whatever the outcome.
# Everything the servers write is under $IDRELAY_TESTBED (default ${TMPDIR:-/tmp}/idrelay-testbed),
# but for one symlink: /etc/dirsrv/slapd-idrelay-ds389 (see testbed/389ds.sh).
# Ports: IDRELAY_LDAP_PORT (3389), IDRELAY_LDAPS_PORT (3636), IDRELAY_DS389_PORT (3489),
# IDRELAY_SCIM_PORT (8080), IDRELAY_CANAILLE_PORT (8088), IDRELAY_PG_PORT (5433),
# IDRELAY_SAMBA_IP (127.0.0.1; Samba's ports 389/636/3268/3269/88/464 are fixed).
# shellcheck disable=SC2317 # functions below are called through `phase` and `trap`
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TB=$ROOT/scripts/testbed
TB_NAME=test.sh
# shellcheck source-path=SCRIPTDIR source=testbed/common.sh
. "$TB/common.sh"
export IDRELAY_TESTBED

stop_at_end=0
cargo_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --stop) stop_at_end=1 ;;
    --) shift; cargo_args=("$@"); break ;;
    -h | --help)
      sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *) die "unknown argument $1 (usage: $0 [--stop] [-- CARGO_TEST_ARGS...])" ;;
  esac
  shift
done

phases=()
# phase NAME CMD... : run CMD, record and print how long it took; a failure ends the run.
phase() {
  local name=$1 t0 rc=0
  shift
  log "== $name"
  t0=$(now)
  "$@" || rc=$?
  phases+=("$(printf '%-22s %6s s%s' "$name" "$(since "$t0")" "$([ $rc -eq 0 ] || echo "  (exit $rc)")")")
  log "== $name: $(since "$t0") s"
  return $rc
}

# start_server SCRIPT : start one testbed server and export the variables it prints.
start_server() {
  local out
  out=$("$TB/$1" start) || return 1
  eval "$out"
}

stop_servers() {
  log "== stopping the test servers (--stop)"
  "$TB/postgres.sh" stop || true
  "$TB/canaille.sh" stop || true
  "$TB/scim-server.sh" stop || true
  "$TB/389ds.sh" stop || true
  "$TB/samba-ad.sh" stop || true
  "$TB/openldap.sh" stop || true
}

summary() {
  log "== phases"
  printf '  %s\n' "${phases[@]}" >&2
}

finish() {
  local rc=$?
  [ "$stop_at_end" = 1 ] && stop_servers
  [ ${#phases[@]} -gt 0 ] && summary
  exit "$rc"
}
trap finish EXIT

T0=$(now)
log "testbed state in $IDRELAY_TESTBED"
phase "openldap start" start_server openldap.sh || die "OpenLDAP did not start (see above)"
phase "samba-ad start" start_server samba-ad.sh || die "Samba AD did not start (see above)"
phase "389ds start" start_server 389ds.sh || die "389 Directory Server did not start (see above)"
phase "scim-server start" start_server scim-server.sh || die "scim2-server did not start (see above)"
phase "canaille start" start_server canaille.sh || die "Canaille (second SCIM server) did not start (see above)"
phase "postgres start" start_server postgres.sh || die "PostgreSQL (the hub's shared store) did not start (see above)"
# Every server is up: from here a missing coordinate fails a test instead of skipping it.
export IDRELAY_TESTBED_REQUIRED=1

# Tools some tests drive besides the servers: a real HTTP proxy (proxy tests), libfaketime
# (the agent's clock alone jumps in the fault tests) and Chromium with its WebDriver (the
# hub dashboard's test). Tests that miss them say so and skip; as root they are installed
# here.
test_tools() {
  if [ "$(id -u)" -eq 0 ]; then
    ensure_pkgs tinyproxy-bin faketime chromium chromium-driver fonts-liberation
  else
    log "not root: tinyproxy-bin, faketime, chromium and chromium-driver are used if present (their tests skip otherwise)"
  fi
}
phase "test tools" test_tools || die "could not install the test tools (see above)"

cd "$ROOT"
locked=()
if [ -f Cargo.lock ]; then locked=(--locked); fi
# Every platform's crates in the local cache: tests/deps.rs runs `cargo tree --offline
# --target all`, which needs the sources of crates no build on this machine downloads.
phase "cargo fetch" cargo fetch "${locked[@]}" || die "cargo fetch failed (crates.io unreachable?)"
log "cargo test --all-targets ${locked[*]} ${cargo_args[*]}"
rc=0
phase "cargo test" cargo test --all-targets "${locked[@]}" "${cargo_args[@]}" || rc=$?
phases+=("$(printf '%-22s %6s s' total "$(since "$T0")")")
if [ $rc -eq 0 ]; then log "tests passed"; else log "cargo test failed (exit $rc)"; fi
exit $rc
