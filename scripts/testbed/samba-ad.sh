#!/usr/bin/env bash
# samba-ad.sh start|stop|status|env|reset — a throwaway Samba AD DC (realm BRANCH.TEST,
# domain BRANCH) bound to one loopback address only: $IDRELAY_SAMBA_IP (127.0.0.1).
# State: $IDRELAY_TESTBED/samba, with a private smb.conf (never /etc/samba).
# Ports are hard-coded in Samba (one DC per IP): LDAP 389, LDAPS 636, Global Catalog
# 3268/3269, Kerberos 88 and kpasswd 464. `server services = ldap, kdc` (no SMB, no DNS).
# Administrator password Branch-Admin-Pass1; password policy relaxed after provisioning;
# simple binds allowed on plain LDAP (`ldap server require strong auth = no`).
# Options: IDRELAY_SAMBA_BACKEND_STORE=mdb|tdb (mdb), IDRELAY_SAMBA_RECYCLE_BIN=1,
# IDRELAY_SAMBA_LDB_NOSYNC=false (fsync; default true), IDRELAY_SAMBA_LOG_LEVEL (1),
# IDRELAY_SAMBA_SERVICES ("ldap, kdc").
set -euo pipefail
TB_NAME=samba-ad
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$HERE/common.sh"

IP=${IDRELAY_SAMBA_IP:-127.0.0.1}
[[ $IP =~ ^127\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "IDRELAY_SAMBA_IP must be a loopback address (127.x.y.z), not $IP"
REALM=BRANCH.TEST
DOMAIN=BRANCH
PASS=Branch-Admin-Pass1
D=$IDRELAY_TESTBED/samba
CONF=$D/etc/smb.conf
PIDFILE=$D/run/samba.pid
LOGFILE=$D/log/samba.log
REALM_LC=$(tr '[:upper:]' '[:lower:]' <<<"$REALM")
BASE_DN=$(sed 's/^/DC=/; s/\./,DC=/g' <<<"$REALM_LC")
PORTS=(389 636 3268 3269 88 464)
# Samba binds only to addresses it finds on an interface: 127.0.0.1 is lo's own address;
# any other 127.x address must be given with its netmask ("user knows best"), else Samba
# logs "no network interfaces found" and listens nowhere.
IFACE=$IP
[ "$IP" = 127.0.0.1 ] || IFACE=$IP/8

ldap_up() { ldapsearch -x -H "ldap://$IP" -b '' -s base -LLL highestCommittedUSN; }

provision() {
  log "provisioning realm $REALM (domain $DOMAIN) on $IP in $D (takes 5-20 s)"
  rm -rf "$D"
  mkdir -p "$D"
  local t0
  t0=$(now)
  samba-tool domain provision --targetdir="$D" --realm="$REALM" --domain="$DOMAIN" \
    --server-role=dc --dns-backend=NONE --adminpass="$PASS" --host-name=dc1 \
    --backend-store="${IDRELAY_SAMBA_BACKEND_STORE:-mdb}" \
    --host-ip="$IP" --use-rfc2307 --option="interfaces=$IFACE" \
    --option="bind interfaces only=yes" >"$D/provision.log" 2>&1 || {
    log_tail "$D/provision.log"
    die "samba-tool domain provision failed (log: $D/provision.log)"
  }
  write_conf
  # Test-friendly password policy: any password, no history or age rules.
  samba-tool domain passwordsettings set --configfile="$CONF" --complexity=off \
    --min-pwd-length=0 --history-length=0 --min-pwd-age=0 --max-pwd-age=0 >>"$D/provision.log" 2>&1 || {
    log_tail "$D/provision.log"
    die "could not relax the password policy (log: $D/provision.log)"
  }
  if [ "${IDRELAY_SAMBA_RECYCLE_BIN:-0}" = 1 ]; then
    # Over LDAP even Administrator is refused; the local ldb is not.
    log "enabling the AD Recycle Bin"
    ldbmodify -H "$D/private/sam.ldb" >>"$D/provision.log" 2>&1 <<EOF || die "could not enable the Recycle Bin"
dn:
changetype: modify
add: enableOptionalFeature
enableOptionalFeature: CN=Partitions,CN=Configuration,$BASE_DN:766ddcd8-acd0-445e-f3b9-a7f9b6744f2a
EOF
  fi
  log "provisioned in $(since "$t0") s"
}

write_conf() {
  ensure_ca "$IP"
  mkdir -p "$D/etc" "$D/run" "$D/log" "$D/cache"
  local ca=$IDRELAY_TESTBED/ca
  cat >"$CONF" <<EOF
# written by samba-ad.sh at every start; edits are lost
[global]
	netbios name = DC1
	workgroup = $DOMAIN
	realm = $REALM
	server role = active directory domain controller
	server services = ${IDRELAY_SAMBA_SERVICES:-ldap, kdc}
	interfaces = $IFACE
	bind interfaces only = yes
	ldap server require strong auth = no
	idmap_ldb:use rfc2307 = yes
	private dir = $D/private
	state directory = $D/state
	cache directory = $D/cache
	lock directory = $D
	binddns dir = $D/bind-dns
	pid directory = $D/run
	ncalrpc dir = $D/run/ncalrpc
	winbindd socket directory = $D/run/winbindd
	log file = $LOGFILE
	logging = file
	log level = ${IDRELAY_SAMBA_LOG_LEVEL:-1}
	ldb:nosync = ${IDRELAY_SAMBA_LDB_NOSYNC:-true}
	tls enabled = yes
	tls keyfile = $ca/server.key
	tls certfile = $ca/server.pem
	tls cafile = $ca/ca.pem
[sysvol]
	path = $D/state/sysvol
	read only = No
[netlogon]
	path = $D/state/sysvol/$REALM_LC/scripts
	read only = No
EOF
}

start() {
  # samba-vfs-modules is required: provisioning fails without it.
  ensure_pkgs samba samba-dsdb-modules samba-vfs-modules samba-ad-provision ldb-tools ldap-utils
  if pid_alive "$PIDFILE" samba; then
    log "already running (pid $(cat "$PIDFILE")) on $IP"
    env_vars
    return 0
  fi
  local p
  for p in "${PORTS[@]}"; do
    port_busy "$IP" "$p" && die "$IP:$p is already in use (another Samba or slapd? set IDRELAY_SAMBA_IP)"
  done
  [ -f "$D/private/sam.ldb" ] || provision
  write_conf
  log "starting samba on $IP (LDAP 389, LDAPS 636, GC 3268/3269, KDC 88/464; state $D)"
  local t0
  t0=$(now)
  samba -D --configfile="$CONF" >"$D/run/samba.out" 2>&1 || {
    log_tail "$D/run/samba.out"
    log_tail "$LOGFILE"
    apparmor_hint /usr/sbin/samba
    die "samba failed to start"
  }
  if ! wait_for 60 ldap_up; then
    log_tail "$D/run/samba.out"
    log_tail "$LOGFILE"
    stop_pidfile "$PIDFILE" samba
    die "Samba's LDAP did not answer on $IP:389 within 60 s"
  fi
  log "running (pid $(cat "$PIDFILE")), LDAP answered after $(since "$t0") s"
  env_vars
}

env_vars() {
  cat <<EOF
export AD_LDAP_URL=ldap://$IP:389
export AD_LDAPS_URL=ldaps://$IP:636
export AD_BASE_DN='$BASE_DN'
export AD_BIND_DN='CN=Administrator,CN=Users,$BASE_DN'
export AD_BIND_UPN='Administrator@$REALM_LC'
export AD_PASSWORD='$PASS'
export AD_CA_CERT='$IDRELAY_TESTBED/ca/ca.pem'
export AD_SMB_CONF='$CONF'
EOF
}

status() {
  if pid_alive "$PIDFILE" samba && ldap_up >/dev/null 2>&1; then
    log "running (pid $(cat "$PIDFILE")) on $IP; $(ldap_up | grep highestCommittedUSN)"
  else
    log "not running (state $D)"
    exit 3
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop_pidfile "$PIDFILE" samba ;;
  status) status ;;
  env) env_vars ;;
  reset)
    stop_pidfile "$PIDFILE" samba
    rm -rf "$D"
    log "state $D removed; the next start provisions a new domain"
    ;;
  *)
    echo "usage: $0 start|stop|status|env|reset   (IDRELAY_TESTBED=$IDRELAY_TESTBED, IP $IP)" >&2
    exit 2
    ;;
esac
