#!/usr/bin/env bash
# bench-nested.sh [N]
#
# Nested-groups benchmark (a script, not a test; issue 17 item 6): N users (default 10,000)
# in 200 groups nested 5 deep (scripts/bench/nested-ldif.py), loaded into an OU of its own
# in the testbed's slapd (run scripts/test.sh first; it exports OPENLDAP_*, SCIM_VENV). For
# `sync.nested_groups = "direct"` and `"flatten"`, each against a scim2-server of its own on
# loopback: `sync --once --dry-run` (3 times), the first real pass, and a second pass over
# the unchanged directory (0 writes). Prints a table: each run's wall time and peak RSS
# (/usr/bin/time -v) with `direct` and with `flatten` side by side, and flatten/direct
# (issue 17's target: at most 1.25x, and at most 64 MiB).
# The OU is deleted and the SCIM servers stopped (by PID) at the end.
# IDRELAY_BIN=path uses that binary instead of `cargo build --release`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-10000}
ROOT_FLAG=""
if [ "$(id -u)" = 0 ]; then ROOT_FLAG="--allow-root"; fi
: "${OPENLDAP_URL:?run scripts/test.sh first (it exports the testbed coordinates)}"
BIN=${IDRELAY_BIN:-}
if [ -z "$BIN" ]; then
  (cd "$ROOT" && cargo build --release -q)
  BIN=$ROOT/target/release/idrelay
fi
WORK=$(mktemp -d)
NAME=nestbench-$$
OU="ou=$NAME,$OPENLDAP_BASE_DN"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  ldapdelete -x -r -H "$OPENLDAP_URL" -D "$OPENLDAP_ROOT_DN" -w "$OPENLDAP_ROOT_PW" "$OU" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
ldap() { "$@" -x -H "$OPENLDAP_URL" -D "$OPENLDAP_ROOT_DN" -w "$OPENLDAP_ROOT_PW" >/dev/null; }
printf 'dn: %s\nobjectClass: organizationalUnit\nou: %s\n' "$OU" "$NAME" | ldap ldapadd
python3 "$ROOT/scripts/bench/nested-ldif.py" "$OU" "$N" > "$WORK/data.ldif"
ldap ldapadd -f "$WORK/data.ldif"
TOKEN=bench-$$
printf '%s' "$TOKEN" > "$WORK/scim.token"
printf '%s\n' "$OPENLDAP_SYNC_PW" > "$WORK/ldap.secret"
chmod 600 "$WORK/scim.token" "$WORK/ldap.secret"
port=18940
for mode in direct flatten; do
  port=$((port + 1))
  "$SCIM_VENV/bin/scim2-server" --hostname 127.0.0.1 --port "$port" --bearer-token "$TOKEN" \
    > "$WORK/scim-$mode.log" 2>&1 &
  PIDS+=($!)
  mkdir -p "$WORK/state-$mode"
  cat > "$WORK/$mode.toml" <<TOML
[agent]
id = "bench-nested"
state_dir = "$WORK/state-$mode"
[directory]
url = "$OPENLDAP_URL"
bind_dn = "$OPENLDAP_SYNC_DN"
password_file = "$WORK/ldap.secret"
base_dn = "$OPENLDAP_BASE_DN"
[scope]
include = ["$OU"]
[scim]
url = "http://127.0.0.1:$port/v2"
token_file = "$WORK/scim.token"
[sync]
concurrency = 8
nested_groups = "$mode"
TOML
done
sleep 3
measure() { # label mode args...: one timed run; keeps "secs MiB" in $WORK/$label-$mode
  local label=$1 mode=$2; shift 2
  /usr/bin/time -v -o "$WORK/time" "$BIN" $ROOT_FLAG --config "$WORK/$mode.toml" --quiet "$@" \
    > "$WORK/out" 2> "$WORK/err" || { cat "$WORK/err" >&2; exit 1; }
  local secs kib cpu
  secs=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$WORK/time" \
    | awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; print s }')
  kib=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$WORK/time")
  cpu=$(sed -n 's/.*\(User\|System\) time (seconds): //p' "$WORK/time" | paste -sd+ | bc -l)
  echo "$secs $cpu $(echo "$kib/1024" | bc -l)" > "$WORK/$label-$mode"
  grep -h "deepest nesting" "$WORK/err" >> "$WORK/depth" || true
  tail -1 "$WORK/out" > "$WORK/$label-$mode.summary"
}
row() { # label: direct and flatten side by side, and their ratios (wall, agent CPU)
  local d dc dm f fc fm
  read -r d dc dm < "$WORK/$1-direct"
  read -r f fc fm < "$WORK/$1-flatten"
  printf '%-12s %7.2f s %6.2f s %5.1f MiB | %7.2f s %6.2f s %5.1f MiB | %5.2fx %5.2fx\n' \
    "$1" "$d" "$dc" "$dm" "$f" "$fc" "$fm" "$(echo "$f/$d" | bc -l)" "$(echo "$fc/$dc" | bc -l)"
}
echo "N=$N users, 200 groups nested 5 deep (wall time and peak RSS from /usr/bin/time -v)"
# Interleaved, so that a load change on the machine hits both modes alike.
for rep in 1 2 3; do
  for mode in direct flatten; do measure "dry-run-$rep" "$mode" sync --once --dry-run --json; done
done
for mode in direct flatten; do measure "first-pass" "$mode" sync --once; done
for mode in direct flatten; do measure "second-pass" "$mode" sync --once; done
# Wall time includes the endpoint's work (a flattened first pass sends ~11x the member
# values); the agent's own cost is its CPU time (user + system).
printf '%-12s %-29s| %-29s| %s\n' "" "direct: wall, CPU, peak RSS" "flatten: wall, CPU, peak RSS" \
  "flatten/direct: wall, CPU"
for label in dry-run-1 dry-run-2 dry-run-3 first-pass second-pass; do row "$label"; done
for mode in direct flatten; do echo "$mode second pass: $(cat "$WORK/second-pass-$mode.summary")"; done
tail -1 "$WORK/depth" 2>/dev/null || true
