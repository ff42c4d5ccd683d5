# shellcheck shell=bash
# Helpers shared by the testbed scripts. Source it; do not run it.
#
# Owns: where testbed state lives, installing Debian packages without starting their
# services, the private test CA, pidfiles. Invariants: every server a testbed script
# starts binds to a loopback address only; every file it writes is under
# $IDRELAY_TESTBED (389ds.sh adds one symlink in /etc/dirsrv, which lib389 needs, and
# removes it at `reset`); a process is stopped by the PID in its pidfile, and only after its
# command line was checked, never by name.
IDRELAY_TESTBED=${IDRELAY_TESTBED:-${TMPDIR:-/tmp}/idrelay-testbed}
TB_NAME=${TB_NAME:-testbed}

log() { printf '[%s] %s\n' "$TB_NAME" "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

# now : wall clock in seconds with microseconds (bash 5).
now() { printf '%s' "$EPOCHREALTIME"; }
# since T0 : seconds elapsed since T0 (from `now`), one decimal.
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# log_tail FILE [N] : print the last N (20) lines of a server log to stderr, if it exists.
log_tail() {
  [ -f "$1" ] || {
    log "(no log file $1)"
    return 0
  }
  log "last ${2:-20} lines of $1:"
  tail -n "${2:-20}" "$1" >&2 || true
}

# apparmor_hint BINARY : explain a start failure caused by an enforced AppArmor profile
# (Ubuntu confines slapd and samba to their system paths, not $IDRELAY_TESTBED).
apparmor_hint() {
  local f=/sys/kernel/security/apparmor/profiles
  [ -r "$f" ] && grep -qF "$1 (enforce)" "$f" || return 0
  log "hint: AppArmor confines $1 here (enforce mode) and may deny it $IDRELAY_TESTBED;"
  log "      'aa-complain $1' (package apparmor-utils) lets it run, or see 'journalctl -k | grep DENIED'"
}

# ensure_pkgs PKG... : apt-get install the missing Debian packages, never starting their
# services: a temporary /usr/sbin/policy-rc.d answering 101 blocks the postinst starts
# (Debian's slapd, samba and nginx would otherwise listen on every interface). slapd is
# preseeded with slapd/no_configuration so that it builds no /etc/ldap/slapd.d database.
ensure_pkgs() {
  local p missing=() guard="" rc=0 aptlog
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "need root to apt-get install: ${missing[*]}"
  mkdir -p "$IDRELAY_TESTBED"
  aptlog=$IDRELAY_TESTBED/apt.log
  log "installing Debian packages (services blocked from starting): ${missing[*]}"
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    guard=1
  fi
  echo 'slapd slapd/no_configuration boolean true' | debconf-set-selections 2>/dev/null || true
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >"$aptlog" 2>&1; then
    log "install failed; running apt-get update and retrying"
    { apt-get update -q >>"$aptlog" 2>&1 &&
      apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$aptlog" 2>&1; } || rc=$?
  fi
  [ -n "$guard" ] && rm -f /usr/sbin/policy-rc.d
  if [ $rc -ne 0 ]; then
    log_tail "$aptlog"
    die "apt-get install ${missing[*]} failed (log: $aptlog)"
  fi
}

# ensure_ca [IP...] : a private CA plus one server certificate for every TLS listener of
# the testbed, SAN localhost, dc1.branch.test, 127.0.0.1, ::1 and the given extra IPs.
# Clients trust $IDRELAY_TESTBED/ca/ca.pem. The server certificate is re-issued (same CA)
# when an extra IP is missing from it.
ensure_ca() {
  local d=$IDRELAY_TESTBED/ca ip san='DNS:localhost,DNS:dc1.branch.test,IP:127.0.0.1,IP:::1'
  for ip in "$@"; do [ "$ip" = 127.0.0.1 ] || san="$san,IP:$ip"; done
  command -v openssl >/dev/null || ensure_pkgs openssl
  mkdir -p "$d"
  if [ ! -s "$d/ca.pem" ] || [ ! -s "$d/ca.key" ]; then
    log "creating the test CA in $d"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=idrelay testbed CA" \
      -addext 'keyUsage=critical,keyCertSign,cRLSign' -keyout "$d/ca.key" -out "$d/ca.pem" \
      >"$d/openssl.log" 2>&1 || die "openssl could not create the CA (log: $d/openssl.log)"
    rm -f "$d/server.pem"
  fi
  if [ -s "$d/server.pem" ] && [ -s "$d/server.key" ]; then
    local have
    have=$(openssl x509 -in "$d/server.pem" -noout -ext subjectAltName 2>/dev/null | tr -d ' \n')
    local missing_ip=""
    for ip in "$@"; do
      grep -qF "IPAddress:$ip," <<<"$have," || missing_ip=$ip
    done
    [ -z "$missing_ip" ] && return 0
    log "server certificate lacks IP $missing_ip; issuing a new one"
  fi
  log "issuing the server certificate (SAN $san)"
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$d/server.key" -out "$d/server.csr" >"$d/openssl.log" 2>&1 ||
    die "openssl could not create the server key (log: $d/openssl.log)"
  printf '%s\n' "subjectAltName=$san" 'basicConstraints=critical,CA:FALSE' \
    'keyUsage=critical,digitalSignature,keyEncipherment' 'extendedKeyUsage=serverAuth' >"$d/server.ext"
  openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
    -days 825 -extfile "$d/server.ext" -out "$d/server.pem" >>"$d/openssl.log" 2>&1 ||
    die "openssl could not sign the server certificate (log: $d/openssl.log)"
  chmod 600 "$d/ca.key" "$d/server.key"
  rm -f "$d/server.csr"
}

# pid_alive PIDFILE [WORD] : true when the pid in PIDFILE is alive and (given WORD) its
# command line contains WORD, so that a stale pidfile never points at someone else's process.
pid_alive() {
  [ -s "$1" ] || return 1
  local pid
  pid=$(cat "$1")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  [ -z "${2:-}" ] || tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$2"
}

# stop_pidfile PIDFILE [WORD] [SIGNAL] : send SIGNAL (TERM) to that one pid, wait up to
# 15 s, then KILL it. Never by name.
stop_pidfile() {
  local f=$1 word=${2:-} sig=${3:-TERM} pid
  if ! pid_alive "$f" "$word"; then
    log "not running"
    rm -f "$f"
    return 0
  fi
  pid=$(cat "$f")
  log "stopping pid $pid (SIG$sig)"
  kill "-$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid ignored SIG$sig for 15 s; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
  log "stopped"
}

# port_busy [IP] PORT : true when something listens on IP (127.0.0.1):PORT (tcp).
port_busy() {
  local ip=127.0.0.1
  [ $# -ge 2 ] && ip=$1 && shift
  (exec 3<>"/dev/tcp/$ip/$1") 2>/dev/null
}

# wait_for SECONDS CMD... : retry CMD every 0.2 s until it succeeds or SECONDS pass.
wait_for() {
  local end=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -ge "$end" ] && return 1
    sleep 0.2
  done
}
