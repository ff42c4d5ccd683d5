#!/usr/bin/env bash
# demo.sh — see idrelay keep a SCIM server in step with a small branch directory, on this
# machine, in a minute or two (Debian/Ubuntu; root the first time, to apt-get install slapd).
#
# What it does, every run from a clean slate (it can be run again at any time):
#   1. starts a private OpenLDAP slapd (ldap://127.0.0.1:3391) and loads demo/branch.ldif
#      (12 people with managers, 3 groups, one nested);
#   2. starts a fresh, empty scim2-server (http://127.0.0.1:8081/v2) with a random token;
#   3. writes a config plus secret files (mode 600) under $IDRELAY_TESTBED/demo;
#   4. cargo build --release, then `idrelay check`, `idrelay sync --once` (creates
#      everything), `idrelay sync --once` again (nothing to send);
#   5. shows what the SCIM server now holds, and how to look further.
# Both servers bind to 127.0.0.1 only and keep running afterwards; `scripts/demo.sh stop`
# stops them. State: $IDRELAY_TESTBED (default ${TMPDIR:-/tmp}/idrelay-testbed).
# Ports: IDRELAY_DEMO_LDAP_PORT (3391), IDRELAY_DEMO_LDAPS_PORT (3638), IDRELAY_DEMO_SCIM_PORT (8081).
# IDRELAY_BIN=path runs that binary instead of building one.
set -euo pipefail
# idrelay refuses to run as root unless told; test machines often are root.
ROOT_FLAG=""
if [ "$(id -u)" = 0 ]; then ROOT_FLAG="--allow-root"; fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TB=$ROOT/scripts/testbed
TB_NAME=demo
# shellcheck source-path=SCRIPTDIR source=testbed/common.sh
. "$TB/common.sh"

export IDRELAY_TESTBED
export IDRELAY_LDAP_INSTANCE=openldap-demo IDRELAY_SCIM_INSTANCE=scim-demo
export IDRELAY_LDAP_PORT=${IDRELAY_DEMO_LDAP_PORT:-3391}
export IDRELAY_LDAPS_PORT=${IDRELAY_DEMO_LDAPS_PORT:-3638}
export IDRELAY_SCIM_PORT=${IDRELAY_DEMO_SCIM_PORT:-8081}
DEMO=$IDRELAY_TESTBED/demo
CONFIG=$DEMO/idrelay.toml
BIN=${IDRELAY_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/idrelay}
PEOPLE=12
GROUPS_IN_LDIF=3

if [ -t 1 ]; then BOLD=$'\033[1m' PLAIN=$'\033[0m'; else BOLD='' PLAIN=''; fi
say() { printf '\n%s== %s%s\n' "$BOLD" "$*" "$PLAIN"; }
# show CMD... : print the command as a user would type it, then run it.
show() {
  printf '$ %s\n' "$*"
  "$@"
}

if [ "${1:-}" = stop ]; then
  "$TB/scim-server.sh" stop
  "$TB/openldap.sh" stop
  exit 0
elif [ $# -gt 0 ]; then
  echo "usage: $0 [stop]" >&2
  exit 2
fi

T0=$(now)
[ -n "${IDRELAY_BIN:-}" ] || command -v cargo >/dev/null || die "cargo is not on PATH: install the Rust toolchain (https://rustup.rs) first"

say "1/5 directory: OpenLDAP on 127.0.0.1:$IDRELAY_LDAP_PORT with demo/branch.ldif"
eval "$("$TB/openldap.sh" start)"
ROOT_AUTH=(-x -H "$OPENLDAP_URL" -D "$OPENLDAP_ROOT_DN" -w "$OPENLDAP_ROOT_PW")
mkdir -p "$DEMO"
# -c: entries left from an earlier run are "Already exists (68)"; anything missing is added.
ldapadd -c "${ROOT_AUTH[@]}" -f "$ROOT/demo/branch.ldif" >"$DEMO/ldapadd.log" 2>&1 || true
count() { ldapsearch "${ROOT_AUTH[@]}" -b "$1" -s one -LLL "$2" dn | grep -c '^dn:' || true; }
people=$(count "ou=people,$OPENLDAP_BASE_DN" '(objectClass=inetOrgPerson)')
groups=$(count "ou=groups,$OPENLDAP_BASE_DN" '(objectClass=groupOfNames)')
if [ "$people" -lt $PEOPLE ] || [ "$groups" -lt $GROUPS_IN_LDIF ]; then
  log_tail "$DEMO/ldapadd.log"
  die "demo/branch.ldif did not load: $people people, $groups groups in the directory"
fi
echo "directory holds $people people and $groups groups under $OPENLDAP_BASE_DN"

say "2/5 SCIM endpoint: a fresh scim2-server on 127.0.0.1:$IDRELAY_SCIM_PORT"
"$TB/scim-server.sh" stop 2>/dev/null || true # in-memory: a restart empties it
IDRELAY_SCIM_TOKEN=demo-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
export IDRELAY_SCIM_TOKEN
eval "$("$TB/scim-server.sh" start)"

say "3/5 configuration and secrets in $DEMO"
(
  umask 077
  printf '%s\n' "$OPENLDAP_SYNC_PW" >"$DEMO/ldap.secret"
  printf '%s\n' "$SCIM_TOKEN" >"$DEMO/scim.token"
)
chmod 600 "$DEMO/ldap.secret" "$DEMO/scim.token"
rm -rf "$DEMO/state" # the SCIM server is empty again, so is what the agent remembers
mkdir -m 700 "$DEMO/state"
sed -e "s|@STATE_DIR@|$DEMO/state|" -e "s|@LDAP_URL@|$OPENLDAP_URL|" \
  -e "s|@CA_FILE@|$OPENLDAP_CA_CERT|" -e "s|@SECRETS_DIR@|$DEMO|" -e "s|@SCIM_URL@|$SCIM_BASE_URL|" \
  "$ROOT/demo/idrelay.toml.in" >"$CONFIG"
chmod 600 "$CONFIG"
grep -v '^#' "$CONFIG" | sed '/^$/d'

say "4/5 build and run the agent"
cd "$ROOT"
locked=()
if [ -f Cargo.lock ]; then locked=(--locked); fi
if [ -n "${IDRELAY_BIN:-}" ]; then
  echo "using IDRELAY_BIN=$BIN (no build)"
else
  t0=$(now)
  show cargo build --release "${locked[@]}" || die "cargo build --release failed"
  echo "built in $(since "$t0") s: $BIN ($(stat -c %s "$BIN") bytes)"
fi
show "$BIN" ${ROOT_FLAG:+"$ROOT_FLAG"} --config "$CONFIG" check || die "idrelay check failed (exit $?): see above"
rc=0
show "$BIN" ${ROOT_FLAG:+"$ROOT_FLAG"} --config "$CONFIG" sync --once | tee "$DEMO/sync1.out" || rc=$?
[ $rc -eq 0 ] || die "the first sync failed (exit $rc; 3 = some objects failed): see above"
rc=0
show "$BIN" ${ROOT_FLAG:+"$ROOT_FLAG"} --config "$CONFIG" sync --once | tee "$DEMO/sync2.out" || rc=$?
[ $rc -eq 0 ] || die "the second sync failed (exit $rc): see above"
if grep -Eq 'requests: 0 POST, 0 PUT, 0 PATCH' "$DEMO/sync2.out"; then
  echo "second pass: nothing to send, the SCIM server is in step with the directory"
else
  log "note: the second pass still sent writes: $(tail -n 1 "$DEMO/sync2.out")"
fi

say "5/5 what the SCIM server holds now"
AUTH="Authorization: Bearer $SCIM_TOKEN"
echo "\$ curl -s -H 'Authorization: Bearer ...' '$SCIM_BASE_URL/Users?count=1&filter=userName%20eq%20%22jchen%22' | python3 -m json.tool"
curl -fsS -H "$AUTH" "$SCIM_BASE_URL/Users?count=1&filter=userName%20eq%20%22jchen%22" | python3 -m json.tool
echo
SCIM_BASE_URL=$SCIM_BASE_URL SCIM_TOKEN=$SCIM_TOKEN python3 - <<'EOF'
import json, os, urllib.request

base, token = os.environ["SCIM_BASE_URL"], os.environ["SCIM_TOKEN"]
ENT = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"

def get(path):
    req = urllib.request.Request(base + path, headers={"Authorization": "Bearer " + token})
    with urllib.request.urlopen(req) as r:
        return json.load(r)

users, groups = get("/Users?count=1000"), get("/Groups?count=1000")
by_id = {u["id"]: u.get("userName", "?") for u in users.get("Resources", [])}
by_id.update({g["id"]: g.get("displayName", "?") for g in groups.get("Resources", [])})
print(f"{users['totalResults']} users, {groups['totalResults']} groups\n")
print(f"{'userName':<11} {'displayName':<16} {'title':<30} {'active':<6} manager")
for u in sorted(users.get("Resources", []), key=lambda u: u.get("userName", "")):
    mgr = (u.get(ENT) or {}).get("manager") or {}
    mgr = by_id.get(mgr.get("value"), mgr.get("displayName", "")) if mgr else ""
    print(f"{u.get('userName', ''):<11} {u.get('displayName', ''):<16} "
          f"{u.get('title', ''):<30} {str(u.get('active', '')):<6} {mgr}")
print()
for g in sorted(groups.get("Resources", []), key=lambda g: g.get("displayName", "")):
    names = [by_id.get(m.get("value"), m.get("display", "?")) for m in g.get("members", [])]
    print(f"group {g.get('displayName', ''):<10} {len(names)} members: {', '.join(sorted(names))}")
EOF

cat <<EOF

== look further (done in $(since "$T0") s)
  config and secrets:  $DEMO   (idrelay.toml, ldap.secret, scim.token)
  what the agent would send for one entry:
    $BIN $ROOT_FLAG --config $CONFIG preview uid=lmuller,ou=people,dc=branch,dc=test
  ask the SCIM server yourself:
    curl -s -H "Authorization: Bearer \$(cat $DEMO/scim.token)" '$SCIM_BASE_URL/Groups' | python3 -m json.tool
  change the directory, then sync again (only the change is sent):
ldapmodify -x -H $OPENLDAP_URL -D '$OPENLDAP_ROOT_DN' -w $OPENLDAP_ROOT_PW <<'LDIF'
dn: uid=tnguyen,ou=people,dc=branch,dc=test
changetype: modify
replace: title
title: Senior Support Technician
LDIF
    $BIN $ROOT_FLAG --config $CONFIG sync --once
  run the demo again from a clean slate:  scripts/demo.sh
  stop the demo servers:                  scripts/demo.sh stop
EOF
