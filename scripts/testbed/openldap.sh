#!/usr/bin/env bash
# openldap.sh start|stop|status|env|seed N [G]|reset — Debian's slapd (mdb) serving
# dc=branch,dc=test on loopback only, from a private slapd.conf (never /etc/ldap):
#   ldap://127.0.0.1:$IDRELAY_LDAP_PORT (3389), ldaps://127.0.0.1:$IDRELAY_LDAPS_PORT (3636),
#   and an ldapi:// socket.
# Overlays memberof (groupOfNames/member -> memberOf) then syncprov (RFC 4533).
# State: $IDRELAY_TESTBED/$IDRELAY_LDAP_INSTANCE (default "openldap"): a second instance
# (the benchmark's) is just another instance name plus other ports.
# Accounts: rootdn cn=admin / admin-secret; cn=syncer / syncer-secret (read-only, not root:
# the rootdn bypasses ACLs and limits, so the agent's tests use syncer).
# `seed N [G]` adds N users (every 10th manages the next 9) and G (default N/50) groups of 50 offline with
# slapadd (slapd is stopped and restarted; slapadd runs no overlays, so no memberOf there).
# Options: IDRELAY_LDAP_LOGLEVEL (none; "stats" logs every operation), IDRELAY_LDAP_DURABLE=1
# (fsync; default dbnosync), IDRELAY_LDAP_SESSIONLOG (100000), IDRELAY_LDAP_MAXSIZE (bytes).
set -euo pipefail
TB_NAME=openldap
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$HERE/common.sh"

INSTANCE=${IDRELAY_LDAP_INSTANCE:-openldap}
TB_NAME=$INSTANCE
PORT=${IDRELAY_LDAP_PORT:-3389}
TLS_PORT=${IDRELAY_LDAPS_PORT:-3636}
SUFFIX=dc=branch,dc=test
ROOT_DN="cn=admin,$SUFFIX"
ROOT_PW=admin-secret
SYNC_DN="cn=syncer,$SUFFIX"
SYNC_PW=syncer-secret
D=$IDRELAY_TESTBED/$INSTANCE
CONF=$D/slapd.conf
PIDFILE=$D/slapd.pid
LOGFILE=$D/slapd.log
SOCK=$D/ldapi
LDAPI="ldapi://${SOCK//\//%2F}"
GEN_LDIF=$HERE/../gen-ldif.py

ldap_up() {
  ldapsearch -x -H "ldap://127.0.0.1:$PORT" -D "$ROOT_DN" -w "$ROOT_PW" -b "$SUFFIX" -s base -LLL contextCSN
}

write_conf() {
  ensure_ca 127.0.0.1
  mkdir -p "$D/data"
  local ca=$IDRELAY_TESTBED/ca
  cat >"$CONF" <<EOF
# written by openldap.sh at every (re)start; edits are lost
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/nis.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload syncprov
moduleload memberof
pidfile $PIDFILE
argsfile $D/slapd.args
logfile $LOGFILE
loglevel ${IDRELAY_LDAP_LOGLEVEL:-none}
sizelimit unlimited
timelimit unlimited
TLSCACertificateFile $ca/ca.pem
TLSCertificateFile $ca/server.pem
TLSCertificateKeyFile $ca/server.key

database mdb
suffix "$SUFFIX"
rootdn "$ROOT_DN"
rootpw $ROOT_PW
directory $D/data
maxsize ${IDRELAY_LDAP_MAXSIZE:-4294967296}
$([ "${IDRELAY_LDAP_DURABLE:-0}" = 1 ] || echo dbnosync)
index objectClass eq
index entryCSN,entryUUID eq
index uid,cn,mail,employeeNumber eq
index member,memberOf,manager eq
access to attrs=userPassword by self write by anonymous auth by * none
access to * by dn.exact="$SYNC_DN" read by users read by * none
overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint TRUE
overlay syncprov
syncprov-checkpoint 100 10
syncprov-sessionlog ${IDRELAY_LDAP_SESSIONLOG:-100000}
EOF
  if ! slaptest -u -f "$CONF" >"$D/slaptest.log" 2>&1; then
    log_tail "$D/slaptest.log"
    die "slaptest rejected $CONF"
  fi
}

init_db() { # suffix, ou=people, ou=groups and the syncer account, loaded offline
  log "creating the database for $SUFFIX in $D/data"
  {
    python3 "$GEN_LDIF" openldap --count 0 --base-entries
    printf 'dn: %s\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: syncer\nuserPassword: %s\n\n' \
      "$SYNC_DN" "$SYNC_PW"
  } >"$D/base.ldif"
  slapadd -q -w -f "$CONF" -l "$D/base.ldif" >"$D/slapadd.log" 2>&1 || {
    log_tail "$D/slapadd.log"
    die "slapadd of the base entries failed"
  }
}

start() {
  ensure_pkgs slapd ldap-utils
  if pid_alive "$PIDFILE" "$CONF"; then
    log "already running (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT"
    env_vars
    return 0
  fi
  port_busy "$PORT" && die "127.0.0.1:$PORT is already in use (set IDRELAY_LDAP_PORT)"
  port_busy "$TLS_PORT" && die "127.0.0.1:$TLS_PORT is already in use (set IDRELAY_LDAPS_PORT)"
  write_conf
  [ -f "$D/data/data.mdb" ] || init_db
  log "starting slapd on ldap://127.0.0.1:$PORT ldaps://127.0.0.1:$TLS_PORT (state $D)"
  local t0
  t0=$(now)
  : >>"$LOGFILE"
  slapd -f "$CONF" -h "ldap://127.0.0.1:$PORT/ ldaps://127.0.0.1:$TLS_PORT/ $LDAPI" >"$D/slapd.out" 2>&1 || {
    log_tail "$D/slapd.out"
    log_tail "$LOGFILE"
    apparmor_hint /usr/sbin/slapd
    die "slapd failed to start"
  }
  if ! wait_for 30 ldap_up; then
    log_tail "$D/slapd.out"
    log_tail "$LOGFILE"
    stop_pidfile "$PIDFILE" "$CONF"
    apparmor_hint /usr/sbin/slapd
    die "slapd did not answer on 127.0.0.1:$PORT within 30 s"
  fi
  log "running (pid $(cat "$PIDFILE")), answered after $(since "$t0") s"
  env_vars
}

count_entries() { # count_entries FILTER : entries in the offline database
  slapcat -f "$CONF" -a "$1" 2>/dev/null | grep -c '^dn: ' || true
}

seed() {
  local n=${1:-} g=${2:-}
  [[ $n =~ ^[0-9]+$ ]] || die "usage: $0 seed N [G] (N users and G groups, default N/50)"
  g=${g:-$((n / 50))}
  [[ $g =~ ^[0-9]+$ ]] || die "usage: $0 seed N [G]: G is a whole number"
  local was_up=0
  if pid_alive "$PIDFILE" "$CONF"; then
    was_up=1
    stop_pidfile "$PIDFILE" "$CONF"
  fi
  ensure_pkgs slapd ldap-utils
  write_conf
  [ -f "$D/data/data.mdb" ] || init_db
  local users groups t0
  users=$(count_entries '(objectClass=inetOrgPerson)')
  groups=$(count_entries '(objectClass=groupOfNames)')
  log "generating $n users (from #$users) and $g groups (from #$groups)"
  t0=$(now)
  python3 "$GEN_LDIF" openldap --no-ou --start "$users" --group-start "$groups" --count "$n" --groups "$g" >"$D/seed.ldif"
  log "LDIF written in $(since "$t0") s; loading with slapadd"
  t0=$(now)
  slapadd -q -w -f "$CONF" -l "$D/seed.ldif" >"$D/slapadd.log" 2>&1 || {
    log_tail "$D/slapadd.log"
    die "slapadd of $D/seed.ldif failed"
  }
  log "slapadd of $n users took $(since "$t0") s"
  rm -f "$D/seed.ldif"
  if [ $was_up = 1 ]; then start >/dev/null; fi
  return 0
}

status() {
  if pid_alive "$PIDFILE" "$CONF" && ldap_up >/dev/null 2>&1; then
    log "running (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT, state $D"
  else
    log "not running (state $D)"
    exit 3
  fi
}

env_vars() {
  cat <<EOF
export OPENLDAP_URL=ldap://127.0.0.1:$PORT
export OPENLDAP_LDAPS_URL=ldaps://127.0.0.1:$TLS_PORT
export OPENLDAP_LDAPI_URL='$LDAPI'
export OPENLDAP_BASE_DN='$SUFFIX'
export OPENLDAP_ROOT_DN='$ROOT_DN'
export OPENLDAP_ROOT_PW='$ROOT_PW'
export OPENLDAP_SYNC_DN='$SYNC_DN'
export OPENLDAP_SYNC_PW='$SYNC_PW'
export OPENLDAP_CA_CERT='$IDRELAY_TESTBED/ca/ca.pem'
EOF
}

case "${1:-}" in
  start) start ;;
  stop) stop_pidfile "$PIDFILE" "$CONF" ;;
  status) status ;;
  env) env_vars ;;
  seed) seed "${2:-}" "${3:-}" ;;
  reset)
    stop_pidfile "$PIDFILE" "$CONF"
    rm -rf "$D"
    log "state $D removed; the next start creates an empty directory"
    ;;
  *)
    echo "usage: $0 start|stop|status|env|seed N [G]|reset   (IDRELAY_TESTBED=$IDRELAY_TESTBED, instance $INSTANCE)" >&2
    exit 2
    ;;
esac
