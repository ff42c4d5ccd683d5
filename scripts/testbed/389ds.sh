#!/usr/bin/env bash
# 389ds.sh start|stop|status|env|reset — 389 Directory Server (Debian's 389-ds-base 2.3)
# serving dc=branch,dc=test on loopback only: ldap://127.0.0.1:$IDRELAY_DS389_PORT (3489),
# plus an ldapi:// socket. No TLS listener (the agent's TLS is tested against slapd/Samba).
# Plugins: Retro Changelog (recording nsUniqueId as targetUniqueId) and Content
# Synchronization, i.e. RFC 4533 syncrepl; entryUUID as the package enables it.
# State: $IDRELAY_TESTBED/$IDRELAY_DS389_INSTANCE (default "ds389"): database, logs, run
# files and the instance's config directory. lib389 (the only supported way to create an
# instance) reads an instance's config from /etc/dirsrv/slapd-NAME, so that path is a
# symlink to the config directory in the state directory (NAME = idrelay-INSTANCE); `reset`
# removes both.
# Accounts: cn=Directory Manager / dm-secret-389 (root); cn=syncer,dc=branch,dc=test /
# syncer-secret (read-only by an ACI, no size limit: the agent's tests use it).
#
# How it runs without systemd: dscreate and dsctl always call systemctl, so the instance is
# created with lib389's SetupDs (from Debian's python3, which has lib389) with systemd use
# patched off and nsslapd-listenhost 127.0.0.1 written into dse.ldif before its first start;
# then `ns-slapd -D CONFIG -i PIDFILE` runs by hand (it forks and drops to user dirsrv, so
# everything in the state directory belongs to dirsrv) and stops on TERM to that pid.
# Options: IDRELAY_DS389_RETROCL_UNIQUEID=0 leaves the Retro Changelog without
# targetUniqueId (then 389-DS cannot resume from a cookie: for tests that the agent notices);
# IDRELAY_DS389_ENTRYUUID=0|1 turns the entryUUID plugin off / on at creation.
set -euo pipefail
TB_NAME=ds389
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$HERE/common.sh"

INSTANCE=${IDRELAY_DS389_INSTANCE:-ds389}
TB_NAME=$INSTANCE
NAME=idrelay-$INSTANCE
PORT=${IDRELAY_DS389_PORT:-3489}
SUFFIX=dc=branch,dc=test
ROOT_DN="cn=Directory Manager"
ROOT_PW=dm-secret-389
SYNC_DN="cn=syncer,$SUFFIX"
SYNC_PW=syncer-secret
D=$IDRELAY_TESTBED/$INSTANCE
CONF=$D/config
ETC_LINK=/etc/dirsrv/slapd-$NAME
PIDFILE=$D/run/slapd.pid
SOCK=$D/run/slapd.socket
LDAPI="ldapi://${SOCK//\//%2F}"
URL=ldap://127.0.0.1:$PORT
PY=/usr/bin/python3

ldap_up() { ldapsearch -x -H "$URL" -D "$ROOT_DN" -w "$ROOT_PW" -b "" -s base -LLL vendorVersion; }

install() {
  [ "$(id -u)" -eq 0 ] || die "needs root (ns-slapd starts as root and drops to user dirsrv)"
  ensure_pkgs 389-ds-base ldap-utils
  "$PY" -c 'import lib389' 2>/dev/null || die "$PY cannot import lib389 (Debian package python3-lib389)"
}

# The link /etc/dirsrv/slapd-NAME -> $CONF, refusing one that belongs to another testbed.
link_config() {
  mkdir -p /etc/dirsrv
  if [ -L "$ETC_LINK" ]; then
    [ "$(readlink "$ETC_LINK")" = "$CONF" ] && return 0
    die "$ETC_LINK points to $(readlink "$ETC_LINK"), another testbed's instance (set IDRELAY_DS389_INSTANCE)"
  fi
  [ -e "$ETC_LINK" ] && die "$ETC_LINK exists and is not this testbed's (set IDRELAY_DS389_INSTANCE)"
  ln -s "$CONF" "$ETC_LINK"
}

write_inf() {
  cat >"$D/instance.inf" <<EOF
[general]
config_version = 2
full_machine_name = localhost
selinux = False
systemd = False
start = False
strict_host_checking = False

[slapd]
instance_name = $NAME
port = $PORT
secure_port = 0
self_sign_cert = False
root_dn = $ROOT_DN
root_password = $ROOT_PW
user = dirsrv
group = dirsrv
config_dir = $CONF
cert_dir = $CONF
schema_dir = $CONF/schema
initconfig_dir = $D/default
db_dir = $D/db
db_home_dir = $D/db
backup_dir = $D/bak
ldif_dir = $D/ldif
log_dir = $D/log
run_dir = $D/run
lock_dir = $D/lock
tmp_dir = $D/tmp
inst_dir = $D/inst
ldapi = $SOCK

[backend-userroot]
suffix = $SUFFIX
create_suffix_entry = True
sample_entries = no
EOF
}

# lib389's SetupDs, patched: no systemctl (ns-slapd is run directly with our pidfile), and
# nsslapd-listenhost 127.0.0.1 in dse.ldif before the first start (otherwise the instance
# listens on every interface while setup configures it).
create_instance() {
  log "creating instance $NAME (state $D)"
  rm -rf "$D"
  mkdir -p "$D"/{default,db,bak,ldif,log,run,lock,tmp,inst}
  write_inf
  chown -R dirsrv:dirsrv "$D"
  runuser -u dirsrv -- test -w "$D/run" ||
    die "user dirsrv cannot write to $D (a parent directory is closed to it; set IDRELAY_TESTBED)"
  link_config
  if ! PIDFILE="$PIDFILE" DSE="$CONF/dse.ldif" "$PY" - "$D/instance.inf" >"$D/create.log" 2>&1 <<'PY'; then
import logging, os, sys
import lib389
from lib389.instance.setup import SetupDs
pidfile, dse = os.environ["PIDFILE"], os.environ["DSE"]
orig_start = lib389.DirSrv.start
def start(self, *a, **kw):
    with open(dse) as f:
        text = f.read()
    if "nsslapd-listenhost:" not in text:
        head, sep, rest = text.partition("dn: cn=config\n")
        if not sep:
            sys.exit("dse.ldif has no cn=config entry")
        text = head + sep + "nsslapd-listenhost: 127.0.0.1\nnsslapd-securelistenhost: 127.0.0.1\n" + rest
        with open(dse, "w") as f:
            f.write(text)
    return orig_start(self, *a, **kw)
lib389.DirSrv.with_systemd = lambda self: False
lib389.DirSrv.pid_file = lambda self: pidfile
lib389.DirSrv.start = start
logging.basicConfig(level=logging.DEBUG)
ok = SetupDs(verbose=True, dryrun=False, log=logging.getLogger("ds389")).create_from_inf(sys.argv[1])
sys.exit(0 if ok else 1)
PY
    log_tail "$D/create.log"
    die "instance creation failed (log: $D/create.log)"
  fi
  grep -q '^nsslapd-listenhost: 127.0.0.1' "$CONF/dse.ldif" || die "$CONF/dse.ldif has no nsslapd-listenhost 127.0.0.1"
}

run_slapd() {
  pid_alive "$PIDFILE" "$PIDFILE" && return 0
  port_busy "$PORT" && die "127.0.0.1:$PORT is already in use (set IDRELAY_DS389_PORT)"
  rm -f "$PIDFILE"
  if ! /usr/sbin/ns-slapd -D "$CONF" -i "$PIDFILE" >"$D/ns-slapd.out" 2>&1; then
    log_tail "$D/ns-slapd.out"
    log_tail "$D/log/errors"
    die "ns-slapd failed to start"
  fi
  if ! wait_for 60 ldap_up; then
    log_tail "$D/log/errors"
    stop_pidfile "$PIDFILE" "$PIDFILE"
    die "389-DS did not answer on $URL within 60 s"
  fi
}

# Once, online: the sync plugins (they take effect at the restart that follows), ou=people,
# ou=groups and the agent's account.
#
# Content Synchronization answers a refresh from a cookie out of the Retro Changelog and
# needs the entry's nsUniqueId there: without nsuniqueid:targetUniqueId such a refresh
# returns nothing (errors log: "Retro Changelog does not provide nsuniquedid") and the
# server later refuses its own persist-phase cookies ("Invalid session cookie"), so no
# change made while the consumer was away would ever reach it.
configure() {
  local uniqueid="" entryuuid=""
  [ "${IDRELAY_DS389_RETROCL_UNIQUEID:-1}" = 1 ] && uniqueid="add: nsslapd-attribute
nsslapd-attribute: nsuniqueid:targetUniqueId
-"
  case "${IDRELAY_DS389_ENTRYUUID:-}" in
    0 | 1) entryuuid="dn: cn=entryuuid,cn=plugins,cn=config
changetype: modify
replace: nsslapd-pluginEnabled
nsslapd-pluginEnabled: $([ "$IDRELAY_DS389_ENTRYUUID" = 1 ] && echo on || echo off)
" ;;
  esac
  ldapmodify -x -H "$URL" -D "$ROOT_DN" -w "$ROOT_PW" >"$D/configure.log" 2>&1 <<EOF || {
dn: cn=Retro Changelog Plugin,cn=plugins,cn=config
changetype: modify
replace: nsslapd-pluginEnabled
nsslapd-pluginEnabled: on
-
$uniqueid

dn: cn=Content Synchronization,cn=plugins,cn=config
changetype: modify
replace: nsslapd-pluginEnabled
nsslapd-pluginEnabled: on

$entryuuid
dn: ou=people,$SUFFIX
changetype: add
objectClass: top
objectClass: organizationalUnit
ou: people

dn: ou=groups,$SUFFIX
changetype: add
objectClass: top
objectClass: organizationalUnit
ou: groups

dn: $SYNC_DN
changetype: add
objectClass: top
objectClass: person
cn: syncer
sn: syncer
description: idrelay read-only account
userPassword: $SYNC_PW
nsSizeLimit: -1
nsLookThroughLimit: -1

dn: $SUFFIX
changetype: modify
add: aci
aci: (targetattr != "userPassword || aci")(version 3.0; acl "idrelay syncer reads the branch"; allow (read, search, compare) userdn="ldap:///$SYNC_DN";)
EOF
    log_tail "$D/configure.log"
    die "configuring the instance failed"
  }
}

start() {
  install
  if pid_alive "$PIDFILE" "$PIDFILE"; then
    log "already running (pid $(cat "$PIDFILE")) on $URL"
    env_vars
    return 0
  fi
  local t0 fresh=0
  t0=$(now)
  if [ ! -f "$CONF/dse.ldif" ]; then
    port_busy "$PORT" && die "127.0.0.1:$PORT is already in use (set IDRELAY_DS389_PORT)"
    create_instance
    fresh=1
  fi
  link_config
  log "starting ns-slapd on $URL (state $D)"
  run_slapd
  if [ $fresh = 1 ]; then
    configure
    log "sync plugins configured; restarting for them to take effect"
    stop_pidfile "$PIDFILE" "$PIDFILE"
    run_slapd
  fi
  log "running (pid $(cat "$PIDFILE")), answered after $(since "$t0") s"
  env_vars
}

status() {
  if pid_alive "$PIDFILE" "$PIDFILE" && ldap_up >/dev/null 2>&1; then
    log "running (pid $(cat "$PIDFILE")) on $URL, state $D"
  else
    log "not running (state $D)"
    exit 3
  fi
}

env_vars() {
  cat <<EOF
export DS389_URL=$URL
export DS389_LDAPI_URL='$LDAPI'
export DS389_BASE_DN='$SUFFIX'
export DS389_ROOT_DN='$ROOT_DN'
export DS389_ROOT_PW='$ROOT_PW'
export DS389_SYNC_DN='$SYNC_DN'
export DS389_SYNC_PW='$SYNC_PW'
export DS389_ERRORS_LOG='$D/log/errors'
EOF
}

case "${1:-}" in
  start) start ;;
  stop) stop_pidfile "$PIDFILE" "$PIDFILE" ;;
  status) status ;;
  env) env_vars ;;
  reset)
    stop_pidfile "$PIDFILE" "$PIDFILE"
    if [ -L "$ETC_LINK" ] && [ "$(readlink "$ETC_LINK")" = "$CONF" ]; then rm -f "$ETC_LINK"; fi
    rm -rf "$D"
    log "state $D removed; the next start creates a new instance"
    ;;
  *)
    echo "usage: $0 start|stop|status|env|reset   (IDRELAY_TESTBED=$IDRELAY_TESTBED, instance $INSTANCE)" >&2
    exit 2
    ;;
esac
